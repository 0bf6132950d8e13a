"""Evaluation: episode accounting in vector envs (nothing added after an episode ends), chunked
policies, success detection, and the eval.json record."""

import json

import gymnasium as gym
import jax
import numpy as np
import pytest

from cdp_jax import evaluation


class CountdownEnv(gym.Env):
    """Reward 1 per step; terminates after ``3 + seed % 5`` steps, reports success at the end.

    Stepping a finished episode without reset would keep paying rewards, so any accounting that
    adds rewards after the end shows up as a wrong return.
    """

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.length = 3 + (seed or 0) % 5
        self.t = 0
        return np.array([self.t, self.length], np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        obs = np.array([self.t, self.length], np.float32)
        return obs, 1.0, done, False, {"success": bool(done and self.length % 2 == 1)}


def _expected(seeds):
    lengths = np.array([3 + s % 5 for s in seeds], float)
    return lengths, lengths % 2 == 1


@pytest.mark.parametrize("mode", ["sync", pytest.param("async", marks=pytest.mark.slow)])
def test_returns_stop_at_episode_end(mode):
    envs = evaluation.make_vector_env(CountdownEnv, 3, mode)
    calls = []

    def policy(obs, key):
        calls.append(obs.shape)
        return np.zeros((obs.shape[0], 1), np.float32)

    result = evaluation.evaluate(policy, envs, jax.random.PRNGKey(0), num_episodes=5, seed=10)
    envs.close()
    lengths, success = _expected(range(10, 15))
    np.testing.assert_array_equal(result["returns"], lengths)
    np.testing.assert_array_equal(result["lengths"], lengths)
    np.testing.assert_array_equal(result["successes"], success)
    assert result["episodes"] == 5
    assert result["success_rate"] == pytest.approx(success.mean())
    assert all(shape == (3, 2) for shape in calls)  # one batched call per env step


def test_chunked_policy_history_and_receding_horizon():
    envs = evaluation.make_vector_env(CountdownEnv, 2)
    seen = []

    def policy(obs, key):
        seen.append(np.array(obs))
        return np.zeros((obs.shape[0], 4, 1), np.float32)  # chunks of 4, execute 2

    result = evaluation.evaluate(policy, envs, jax.random.PRNGKey(0), num_episodes=2, seed=0,
                                 obs_horizon=2, n_action=2)
    envs.close()
    lengths, _ = _expected([0, 1])
    np.testing.assert_array_equal(result["returns"], lengths)
    assert seen[0].shape == (2, 2, 2)
    np.testing.assert_array_equal(seen[0][:, 0], seen[0][:, 1])  # first obs repeated at start
    np.testing.assert_array_equal(seen[1][:, :, 0], [[1, 2], [1, 2]])  # t after 2 executed steps
    assert len(seen) == int(np.ceil(lengths.max() / 2))


def test_max_episode_steps_cap():
    envs = evaluation.make_vector_env(CountdownEnv, 2)
    result = evaluation.evaluate(lambda o, k: np.zeros((2, 1), np.float32), envs,
                                 jax.random.PRNGKey(0), num_episodes=2, seed=4,
                                 max_episode_steps=4)
    envs.close()
    np.testing.assert_array_equal(result["returns"], [4.0, 3.0])


def test_eval_record_summary(tmp_path):
    record = evaluation.EvalRecord(tmp_path / "eval.json", average_last=2)
    protocol = {"episodes": 4, "candidates": 1, "sampler": "ddim", "sampler_steps": 5}
    for step, score in [(100, 10.0), (200, 30.0), (300, 20.0)]:
        record.add(step, {"returns": [1.0], "return_mean": 1.0, "success_rate": 0.5,
                          "normalized_score": score}, protocol)
    data = json.loads((tmp_path / "eval.json").read_text())
    summary = data["summary"]
    assert summary["last"]["gradient_step"] == 300 and summary["last"]["sampler"] == "ddim"
    assert summary["best"]["gradient_step"] == 200
    assert summary["running_average"]["normalized_score"] == pytest.approx(25.0)
    assert summary["running_average"]["gradient_steps"] == [200, 300]
    assert all(e["episodes"] == 4 and e["candidates"] == 1 for e in data["evaluations"])


def test_bad_vector_mode():
    with pytest.raises(ValueError, match="vector env mode"):
        evaluation.make_vector_env(CountdownEnv, 2, "threads")


def test_multi_seed_evaluation_caps_episodes_and_reports_timing():
    """All seeds' joint rollout applies the run's ``max_episode_steps`` as a single-seed
    evaluation does (it once ignored it), and reports how long the evaluation took."""
    from types import SimpleNamespace

    from cdp_jax import multi_seed

    seeds, per = (0, 1), 2
    envs = multi_seed.SeedBlockResets(evaluation.make_vector_env(CountdownEnv, 4), seeds, per)
    states = SimpleNamespace(config=SimpleNamespace(obs_horizon=None, n_action=1))
    data = SimpleNamespace(obs_keys=(), ref_min_score=None, ref_max_score=None)
    norms = [SimpleNamespace(normalize=lambda x: x)] * len(seeds)
    config = SimpleNamespace(eval_envs=per, eval_episodes=2, max_episode_steps=3)
    act = lambda states, obs, keys: np.zeros(obs.shape[:2] + (1,), np.float32)
    results = multi_seed.evaluate_seeds(act, "dql", states, data, norms, envs, config, seeds, 0)
    envs.close()
    for seed, result in zip(seeds, results, strict=True):
        natural = np.array([3 + (seed * 100_000 + i) % 5 for i in range(per)], float)
        assert natural.max() > 3
        np.testing.assert_array_equal(result["returns"], np.minimum(natural, 3.0))
        timing = result["timing"]
        assert timing["seeds"] == 2 and timing["wall_s"] >= timing["policy_s"] > 0
        assert timing["env_steps"] == 4 * timing["policy_calls"] == 4 * 3  # 4 envs, capped at 3
