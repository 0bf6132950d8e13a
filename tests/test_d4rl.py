"""The D4RL HDF5 importer on small synthetic files in D4RL's layout (written by the tests)."""

import h5py
import numpy as np
import pytest

from cdp_jax.data import d4rl
from cdp_jax.data import minari as dm


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


# Episode lengths and how each ends: terminal, timeout, both flags (counts as terminal), terminal,
# and a last episode cut by the end of the recording (no flag).
LENGTHS = (5, 7, 3, 1, 4)
ENDS = ("terminal", "timeout", "both", "terminal", "none")


def write_d4rl(path, obs_dim=11, act_dim=3, next_obs=True, drop=(), infos=True):
    """A D4RL-layout file; step ``i`` has ``observations[i] = i + 0.01 * arange(obs_dim)``."""
    n = sum(LENGTHS)
    rng = np.random.default_rng(0)
    obs = (np.arange(n)[:, None] + 0.01 * np.arange(obs_dim)[None, :]).astype(np.float32)
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    end = -1
    for length, kind in zip(LENGTHS, ENDS, strict=True):
        end += length
        terminals[end] = kind in ("terminal", "both")
        timeouts[end] = kind in ("timeout", "both")
    arrays = {"observations": obs,
              "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
              "rewards": rng.normal(size=n).astype(np.float32),
              "terminals": terminals, "timeouts": timeouts}
    if next_obs:  # the next row within an episode; distinguishable from any observation at ends
        following = np.concatenate([obs[1:], obs[-1:]], axis=0)
        ended = (terminals | timeouts)[:, None] | (np.arange(n) == n - 1)[:, None]
        arrays["next_observations"] = np.where(ended, obs + 1000.0, following)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            if k not in drop:
                f.create_dataset(k, data=v)
        if infos:
            f.create_dataset("infos/qpos", data=np.zeros((n, 6), np.float32))
    return arrays


def test_reference_scores_match_d4rl_table():
    assert d4rl.reference_scores("hopper-medium-v2") == (-20.272305, 3234.3)
    assert d4rl.reference_scores("halfcheetah-medium-expert-v2") == (-280.178953, 12135.0)
    assert d4rl.reference_scores("walker2d_medium_replay-v2") == (1.629008, 4592.3)
    assert d4rl.reference_scores("antmaze-large-play-v2") == (0.0, 1.0)
    assert d4rl.reference_scores("ant-medium-v2") == (-325.6, 3879.7)
    assert d4rl.reference_scores("kitchen-complete-v0") == (0.0, 4.0)
    assert d4rl.reference_scores("maze2d-umaze-v1") == (23.85, 161.86)
    assert d4rl.reference_scores("maze2d-large-dense-v1")[0] == 30.569041
    with pytest.raises(ValueError, match="known task families"):
        d4rl.reference_scores("pong-v0")


def test_import_reproduces_episodes_exactly(tmp_path, minari_root):
    src = tmp_path / "hopper_medium-v2.hdf5"
    arrays = write_d4rl(src)
    summary = d4rl.import_file(src)
    assert summary["dataset_id"] == "cdp/d4rl/hopper-medium-v2"
    assert summary["env_id"] == "Hopper-v5"
    assert summary["num_episodes"] == len(LENGTHS)
    assert summary["num_steps"] == sum(LENGTHS)
    data = dm.load("cdp/d4rl/hopper-medium-v2")
    assert (data.ref_min_score, data.ref_max_score) == (-20.272305, 3234.3)
    np.testing.assert_allclose(dm.normalized_score(data, [3234.3, -20.272305]), [100.0, 0.0])
    # Transition arrays equal the file's, row for row (no step added or dropped).
    np.testing.assert_array_equal(data.observations, arrays["observations"])
    np.testing.assert_array_equal(data.actions, arrays["actions"])
    np.testing.assert_array_equal(data.rewards, arrays["rewards"])
    np.testing.assert_array_equal(data.next_observations, arrays["next_observations"])
    _, counts = np.unique(data.episode_ids, return_counts=True)
    assert tuple(counts) == LENGTHS
    ends = np.cumsum(LENGTHS) - 1
    expected_term = [kind in ("terminal", "both") for kind in ENDS]
    np.testing.assert_array_equal(data.terminals[ends], expected_term)
    np.testing.assert_array_equal(data.timeouts[ends], np.logical_not(expected_term))
    assert data.terminals.sum() + data.timeouts.sum() == len(LENGTHS)  # only at episode ends


def test_import_without_next_observations(tmp_path, minari_root):
    src = tmp_path / "kitchen_complete-v0.hdf5"
    arrays = write_d4rl(src, obs_dim=5, act_dim=2, next_obs=False)
    summary = d4rl.import_file(src, dataset_id="cdp/test/kitchen-v0")
    assert summary["env_id"] is None  # recorded with its spaces only
    data = dm.load("cdp/test/kitchen-v0")
    assert (data.ref_min_score, data.ref_max_score) == (0.0, 4.0)
    # Truncated episodes lose their last step (unknown final observation); a 1-step terminated
    # episode stays. Lengths: 5 (term), 7 -> 6 (timeout), 3 (both = term), 1 (term), 4 -> 3.
    _, counts = np.unique(data.episode_ids, return_counts=True)
    assert tuple(counts) == (5, 6, 3, 1, 3)
    # Every kept transition is exact: next obs of step i is the file's observation i + 1.
    starts = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]])
    kept = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts, strict=True)])
    np.testing.assert_array_equal(data.observations, arrays["observations"][kept])
    inner = np.flatnonzero(data.terminals == 0)
    np.testing.assert_array_equal(data.next_observations[inner],
                                  arrays["observations"][kept[inner] + 1])


@pytest.mark.parametrize("drop", [("timeouts",), ("terminals", "rewards")])
def test_missing_keys_are_named(tmp_path, minari_root, drop):
    src = tmp_path / "hopper_medium-v2.hdf5"
    write_d4rl(src, drop=drop)
    with pytest.raises(d4rl.D4RLFormatError, match="missing key") as err:
        d4rl.import_file(src)
    for key in drop:
        assert repr(key) in str(err.value)
    assert "has ['actions'" in str(err.value)  # lists what the file does hold


def test_inconsistent_lengths_and_unknown_task(tmp_path, minari_root):
    src = tmp_path / "hopper_medium-v2.hdf5"
    with h5py.File(src, "w") as f:
        f["observations"] = np.zeros((5, 11), np.float32)
        f["actions"] = np.zeros((5, 3), np.float32)
        f["rewards"] = np.zeros(4, np.float32)
        f["terminals"] = np.zeros(5, bool)
        f["timeouts"] = np.zeros(5, bool)
    with pytest.raises(d4rl.D4RLFormatError, match="different lengths"):
        d4rl.import_file(src)
    with pytest.raises(ValueError, match="No D4RL reference scores"):
        d4rl.import_file(src, task="pong-v0")
