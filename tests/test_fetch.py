"""Scripted Fetch demonstrations: the expert succeeds, the Minari dataset loads back as windows with
edge padding, its evaluation env reports success, and DBC with a chunk UNet trains on it."""

import dataclasses
import json

import numpy as np
import pytest

from cdp_jax import run_config, training
from cdp_jax.agents import dbc
from cdp_jax.data import dataset as dataset_lib
from cdp_jax.data import minari
from cdp_jax.data.builders import fetch


@pytest.fixture
def datasets_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    return tmp_path


@pytest.mark.parametrize("task", sorted(fetch.TASKS))
def test_noise_free_expert_succeeds(task):
    env = fetch.make_env(task)
    controller = fetch.WaypointController(task)
    episodes = [fetch.run_episode(env, controller, seed) for seed in range(4)]
    env.close()
    assert all(e["success"] and e["final_success"] for e in episodes)
    assert all(e["actions"].shape == (50, 4) and np.abs(e["actions"]).max() <= 1.0 for e in episodes)


def test_build_load_windows_edge_padding(datasets_root):
    summary = fetch.build("push", num_demos=3, seed=5, dataset_id="test/fetch/push-v0",
                          num_reference_episodes=2)
    assert summary["num_episodes"] == 3 and summary["num_steps"] == 150
    assert 0.0 <= summary["success_rate"] <= 1.0 and summary["attempts"] >= 3
    data = minari.load("test/fetch/push-v0")
    assert data.obs_keys == ("observation", "desired_goal")
    assert (data.obs_dim, data.act_dim, len(data), data.num_episodes) == (28, 4, 150, 3)
    assert data.ref_min_score == summary["ref_min_score"]
    # Dict observations were kept: the flattened rows are [observation, desired_goal].
    raw = next(iter(data_episodes("test/fetch/push-v0")))
    np.testing.assert_allclose(
        data.observations[:50],
        np.concatenate([raw.observations["observation"], raw.observations["desired_goal"]], -1)[:-1],
        rtol=1e-6)
    # Only successful episodes were written; each is 50 steps, truncated at the end.
    assert data.timeouts.reshape(3, 50)[:, -1].all() and data.timeouts.sum() == 3
    assert not data.terminals.any()

    H, P = 2, 16
    win = dataset_lib.windows(data, H, P)
    assert win["observations"].shape == (150, H, 28) and win["actions"].shape == (150, P, 4)
    for e in range(3):
        s, last = 50 * e, 50 * e + 49
        # Left padding: the first observation of each episode repeats; no earlier episode leaks.
        np.testing.assert_array_equal(win["observations"][s, 0], data.observations[s])
        np.testing.assert_array_equal(win["observations"][s, 1], data.observations[s])
        np.testing.assert_array_equal(win["observations"][s + 1], data.observations[s:s + 2])
        # Right padding: the last action of each episode repeats; no next episode leaks.
        np.testing.assert_array_equal(win["actions"][last], np.repeat(data.actions[last:last + 1],
                                                                      P, axis=0))
        np.testing.assert_array_equal(win["actions"][last - 3, :4], data.actions[last - 3:last + 1])
        np.testing.assert_array_equal(win["actions"][last - 3, 4:],
                                      np.repeat(data.actions[last:last + 1], P - 4, axis=0))
        np.testing.assert_array_equal(win["actions"][s], data.actions[s:s + P])

    # The recorded evaluation env rebuilds the success wrapper, vectorised too.
    envs = minari.make_env(data, num_envs=2)
    envs.reset(seed=0)
    *_, info = envs.step(np.zeros((2, 4), np.float32))
    envs.close()
    assert info["success"].shape == (2,) and info["success"].dtype == bool


def data_episodes(dataset_id):
    import minari as minari_lib

    return minari_lib.load_dataset(dataset_id).iterate_episodes()


def test_unknown_task_and_clash(datasets_root):
    with pytest.raises(ValueError, match="Unknown Fetch task 'slide'"):
        fetch.build("slide", num_demos=1)
    fetch.build("pickandplace", num_demos=1, dataset_id="test/fetch/pp-v0", num_reference_episodes=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        fetch.build("pickandplace", num_demos=1, dataset_id="test/fetch/pp-v0")


# DBC on the chunks: obs history 2, chunk 16 (8 executed), a small temporal UNet.
AGENT = dict(actor_network="unet", obs_horizon=2, action_horizon=16, n_action=8, time_dim=32,
             sampler_steps=10, lr=1e-3)


def _train(tmp_path, dataset_id, steps, eval_episodes, eval_envs, **agent):
    agent_config = dbc.default_config(**{**AGENT, **agent})
    config = run_config.TrainConfig(
        name="fetch", agent="dbc", dataset=dataset_id, steps=steps, batch_size=128,
        updates_per_call=min(steps, 250), eval_every=0, eval_episodes=eval_episodes,
        eval_envs=eval_envs, checkpoint_every=0, run_dir=str(tmp_path / "run"), progress=False)
    return training.train(config, agent_config)


@pytest.mark.slow  # the chunk networks' own tests and the study's one-cell run stay default
def test_dbc_unet_trains_and_evaluates_tiny(datasets_root):
    """CI version of the training run: the whole pipeline (windows, UNet denoiser, chunked
    receding-horizon evaluation on the vector env, success rate in eval.json)."""
    fetch.build("push", num_demos=2, dataset_id="test/fetch/push-v0", num_reference_episodes=1)
    out = _train(datasets_root, "test/fetch/push-v0", steps=4, eval_episodes=2, eval_envs=2,
                 hidden_dim=8, depth=1, sampler_steps=2)
    record = json.loads((datasets_root / "run" / "eval.json").read_text())
    last = record["summary"]["last"]
    assert out["steps"] == 4 and last["episodes"] == 2
    assert 0.0 <= last["success_rate"] <= 1.0 and len(record["evaluations"][0]["successes"]) == 2


@pytest.mark.slow
def test_dbc_unet_beats_random_on_push(datasets_root):
    """A short run on 100 scripted Push demonstrations beats the random policy's success rate
    (measured on the same env; the block sometimes starts inside the goal radius)."""
    summary = fetch.build("push", num_demos=100, dataset_id="test/fetch/push-v0",
                          num_reference_episodes=50)
    out = _train(datasets_root, "test/fetch/push-v0", steps=3000, eval_episodes=50, eval_envs=10,
                 hidden_dim=64, depth=2)
    success = out["eval"]["last"]["success_rate"]
    assert success > summary["random_success_rate"] + 0.1, (success, summary)


def test_agent_config_accepts_chunk_networks():
    config = dbc.default_config(**AGENT, hidden_dim=16, depth=2)
    assert dataclasses.replace(config, actor_network="dit").validate().actor_network == "dit"
    with pytest.raises(ValueError, match="actor_network"):
        dbc.default_config(actor_network="transformer")
