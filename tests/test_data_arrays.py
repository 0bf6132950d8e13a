"""Windows, episode selection, normalisers and device-resident batch sampling (no files)."""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax.data import buffer
from cdp_jax.data.dataset import (
    OfflineDataset,
    concat_episodes,
    episode_bounds,
    flatten_observation,
    select_episodes,
    subset_episodes,
    windows,
)
from cdp_jax.data.minari import Normalizer, fit_normalizers


def toy_dataset(lengths=(3, 1, 4)) -> OfflineDataset:
    """Episodes whose observation at step t of episode e is [100 e + t], action [-(100 e + t)]."""
    episodes = []
    for e, n in enumerate(lengths):
        values = 100.0 * e + np.arange(n + 1, dtype=np.float32)
        episodes.append({
            "obs": values[:, None], "actions": -values[:-1, None], "rewards": np.ones(n),
            "terminals": np.zeros(n), "timeouts": np.arange(n) == n - 1, "id": e,
        })
    return concat_episodes(episodes, dataset_id="toy", obs_keys=())


def test_concat_and_bounds():
    d = toy_dataset()
    assert len(d) == 8 and d.num_episodes == 3
    np.testing.assert_array_equal(d.episode_ids, [0, 0, 0, 1, 2, 2, 2, 2])
    start, end = episode_bounds(d.episode_ids)
    np.testing.assert_array_equal(start, [0, 0, 0, 3, 4, 4, 4, 4])
    np.testing.assert_array_equal(end, [2, 2, 2, 3, 7, 7, 7, 7])
    np.testing.assert_array_equal(d.episode_returns(), [3.0, 1.0, 4.0])
    np.testing.assert_array_equal(d.next_observations[:, 0], [1, 2, 3, 101, 201, 202, 203, 204])


def test_subset_episodes_keeps_whole_episodes_in_order():
    d = toy_dataset()
    sub = subset_episodes(d, np.array([2, 0]))
    np.testing.assert_array_equal(sub.episode_ids, [0, 0, 0, 2, 2, 2, 2])
    np.testing.assert_array_equal(sub.observations[:, 0], [0, 1, 2, 200, 201, 202, 203])
    assert sub.num_episodes == 2 and sub.dataset_id == "toy"


def test_windows_pad_at_episode_edges():
    d = toy_dataset()
    w = windows(d, obs_horizon=2, action_horizon=3)
    assert w["observations"].shape == (8, 2, 1) and w["actions"].shape == (8, 3, 1)
    obs, act = w["observations"][..., 0], -w["actions"][..., 0]
    # Left padding repeats the episode's first observation.
    np.testing.assert_array_equal(obs[0], [0, 0])
    np.testing.assert_array_equal(obs[1], [0, 1])
    np.testing.assert_array_equal(obs[3], [100, 100])  # one-step episode
    np.testing.assert_array_equal(obs[4], [200, 200])
    np.testing.assert_array_equal(obs[7], [202, 203])
    # Right padding repeats the episode's last action; never crosses into the next episode.
    np.testing.assert_array_equal(act[0], [0, 1, 2])
    np.testing.assert_array_equal(act[1], [1, 2, 2])
    np.testing.assert_array_equal(act[2], [2, 2, 2])
    np.testing.assert_array_equal(act[3], [100, 100, 100])
    np.testing.assert_array_equal(act[6], [202, 203, 203])
    # H = A = 1 is the plain transition data.
    w1 = windows(d, 1, 1)
    np.testing.assert_array_equal(w1["observations"][:, 0], d.observations)
    np.testing.assert_array_equal(w1["actions"][:, 0], d.actions)
    with pytest.raises(ValueError, match="obs_horizon must be an integer >= 1, got 0"):
        windows(d, 0, 4)


def test_concat_marks_cut_episodes_as_timeouts_and_keeps_terminals():
    episodes = [
        {"obs": np.zeros((3, 1)), "actions": np.zeros((2, 1)), "rewards": np.zeros(2),
         "terminals": [False, True], "timeouts": [False, True], "id": 0},  # both: terminal wins
        {"obs": np.zeros((3, 1)), "actions": np.zeros((2, 1)), "rewards": np.zeros(2),
         "terminals": [False, False], "timeouts": [False, False], "id": 1},  # neither: timeout
    ]
    d = concat_episodes(episodes, dataset_id="x", obs_keys=())
    np.testing.assert_array_equal(d.terminals, [0, 1, 0, 0])
    np.testing.assert_array_equal(d.timeouts, [0, 0, 0, 1])


def test_select_episodes():
    a = select_episodes(100, fraction=0.3, seed=0)
    assert a.size == 30 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, select_episodes(100, fraction=0.3, seed=0))
    assert not np.array_equal(a, select_episodes(100, fraction=0.3, seed=1))
    assert set(select_episodes(100, fraction=0.1, seed=0)) <= set(a)
    assert select_episodes(100, num_episodes=7, seed=0).size == 7
    assert select_episodes(3, fraction=0.01).size == 1  # never empty
    np.testing.assert_array_equal(select_episodes(5), np.arange(5))
    with pytest.raises(ValueError, match=r"num_episodes must be an integer in \[1, 5\]"):
        select_episodes(5, num_episodes=6)


def test_flatten_observation_nested_and_batched():
    obs = {
        "observation": np.ones((4, 3)),
        "desired_goal": {"a": np.zeros((4, 2)), "b": 2 * np.ones((4, 1))},
    }
    flat = flatten_observation(obs, ("observation", "desired_goal/b", "desired_goal/a"))
    assert flat.shape == (4, 6) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat[0], [1, 1, 1, 2, 0, 0])
    with pytest.raises(KeyError, match="observation key 'desired_goal/c' not found"):
        flatten_observation(obs, ("desired_goal/c",))
    np.testing.assert_array_equal(flatten_observation(np.arange(3), ()), [0, 1, 2])


@pytest.mark.parametrize("kind", ["gaussian", "minmax"])
def test_normalizer_round_trip_json_and_jit(kind):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, [1.0, 5.0, 0.1], size=(500, 3)).astype(np.float32)
    x[:, 2] = 7.0  # a constant feature must not divide by zero
    norm = Normalizer.fit(x, kind)
    y = norm.normalize(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32  # host data stays on the host
    assert np.all(np.isfinite(y))
    if kind == "gaussian":
        np.testing.assert_allclose(y[:, :2].mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(y[:, :2].std(0), 1.0, atol=1e-3)
    else:
        np.testing.assert_allclose(y[:, :2].min(0), -1.0, atol=1e-5)
        np.testing.assert_allclose(y[:, :2].max(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(norm.unnormalize(y)), x, rtol=1e-5, atol=1e-4)
    restored = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(restored.shift, norm.shift)
    assert restored.kind == kind
    # A pytree argument to jitted code, on (B, d) and (K, B, d) inputs (no rank promotion).
    f = jax.jit(lambda n, v: n.unnormalize(n.normalize(v)))
    np.testing.assert_allclose(f(restored, jnp.asarray(x)), x, rtol=1e-5, atol=1e-4)
    assert f(restored, jnp.zeros((2, 5, 3))).shape == (2, 5, 3)


def test_minmax_normalizer_follows_the_official_rule():
    """CleanDiffuser's MinMaxNormalizer (the official IL observation and action scaling), written out
    in float64: ``2 (x - min) / range - 1``, with a range of exactly 0 replaced by 1 (so a constant
    feature maps to -1 and a later deviation d to -1 + 2 d, not to d / eps)."""
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, [2.0, 0.01, 1.0], size=(300, 3)).astype(np.float32)
    x[:, 2] = 0.25
    lo, hi = x.astype(np.float64).min(0), x.astype(np.float64).max(0)
    width = np.where(hi - lo == 0, 1.0, hi - lo)
    official = lambda v: 2.0 * (np.asarray(v, np.float64) - lo) / width - 1.0
    norm = Normalizer.fit(x, "minmax")
    np.testing.assert_allclose(norm.normalize(x), official(x), atol=2e-6)
    assert np.all(norm.normalize(x)[:, 2] == -1.0)
    away = x[:5] + np.float32(0.125)  # unseen values, the constant feature included
    np.testing.assert_allclose(norm.normalize(away), official(away), atol=2e-6)
    np.testing.assert_allclose(norm.unnormalize(official(away)), away, atol=2e-6)


def test_normalizer_validation():
    with pytest.raises(ValueError, match="kind must be one of"):
        Normalizer.fit(np.zeros((3, 2)), "robust")
    with pytest.raises(ValueError, match="missing fields"):
        Normalizer.from_dict({"kind": "gaussian", "shift": [0.0]})
    with pytest.raises(ValueError, match="scale must be strictly positive"):
        Normalizer.from_dict({"kind": "gaussian", "shift": [0.0], "scale": [0.0]})
    norms = fit_normalizers(toy_dataset())
    assert norms["observations"].kind == "gaussian" and norms["actions"].kind == "minmax"


def test_sample_batch_rows_are_consistent_and_uniform():
    d = toy_dataset()
    arrays = buffer.to_device(d.transitions())
    assert all(isinstance(v, jax.Array) for v in arrays.values())
    batch = buffer.sample_batch(arrays, jax.random.key(0), 256)
    assert batch["observations"].shape == (256, 1) and batch["rewards"].shape == (256,)
    # Fields of one sampled row belong to the same transition.
    np.testing.assert_array_equal(batch["actions"], -batch["observations"])
    batches = buffer.sample_batches(arrays, jax.random.key(1), 50, 1000)
    assert batches["actions"].shape == (50, 1000, 1)
    counts = np.bincount(np.asarray(batches["episode_ids"]).ravel(), minlength=3)
    np.testing.assert_allclose(counts / counts.sum(), [3 / 8, 1 / 8, 4 / 8], atol=0.01)
    assert not np.array_equal(batches["observations"][0], batches["observations"][1])
    # Windows sample the same way.
    w = buffer.sample_batch(buffer.to_device(windows(d, 2, 4)), jax.random.key(2), 8)
    assert w["observations"].shape == (8, 2, 1) and w["actions"].shape == (8, 4, 1)
    with pytest.raises(ValueError, match="share the leading"):
        buffer.sample_batch({"a": jnp.zeros(3), "b": jnp.zeros(4)}, jax.random.key(0), 2)


def test_sampling_runs_on_device_inside_jit():
    arrays = buffer.to_device({"x": np.arange(100_000, dtype=np.float32)[:, None]})

    @jax.jit
    def mean_of_batches(arrays, key):
        return buffer.sample_batches(arrays, key, 4, 256)["x"].mean()

    mean_of_batches(arrays, jax.random.key(0)).block_until_ready()
    start = time.perf_counter()
    for i in range(20):
        out = mean_of_batches(arrays, jax.random.key(i))
    out.block_until_ready()
    # Generous bound for a loaded CI machine; the printed figure is microseconds per call.
    assert (time.perf_counter() - start) / 20 < 0.05
