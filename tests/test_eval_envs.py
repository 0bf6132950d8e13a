"""An evaluation never steps more environments than it has episodes: ``--eval-episodes 5`` under
``eval_envs=10`` plays its 5 episodes in 5 environments, with the results of ``eval_envs=5``,
single-seed and multi-seed alike (cdp_jax/training.py: ``eval_num_envs``)."""

from types import SimpleNamespace

import gymnasium as gym
import numpy as np

from cdp_jax import multi_seed, training


class CountdownEnv(gym.Env):
    """Reward 1 per step; terminates after ``3 + seed % 5`` steps. Counts the copies made."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    made = 0

    def __init__(self):
        CountdownEnv.made += 1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.length, self.t = 3 + (seed or 0) % 5, 0
        return np.array([self.t, self.length], np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.array([self.t, self.length], np.float32)
        return obs, 1.0, self.t >= self.length, False, {}


DATA = SimpleNamespace(make_env=lambda eval_env: CountdownEnv(), obs_keys=(), obs_dim=2, act_dim=1,
                       dataset_id="countdown", ref_min_score=None, ref_max_score=None)
STATE = SimpleNamespace(config=SimpleNamespace(obs_horizon=None, n_action=1))
NORM = SimpleNamespace(normalize=lambda x: x)


def _config(eval_envs, episodes, seed=0):
    return SimpleNamespace(eval_envs=eval_envs, eval_episodes=episodes, eval_vector="sync",
                           seed=seed, max_episode_steps=None)


def _evaluate(eval_envs, episodes):
    CountdownEnv.made = 0
    config = _config(eval_envs, episodes)
    envs = training.make_eval_envs(DATA, config)
    made = CountdownEnv.made
    act = lambda state, obs, key: np.zeros((obs.shape[0], 1), np.float32)
    try:
        return made, training.run_evaluation(act, "dql", STATE, DATA, NORM, envs, config, 0)
    finally:
        envs.close()


def test_single_seed_evaluation_makes_no_more_envs_than_episodes():
    made, capped = _evaluate(eval_envs=10, episodes=5)
    assert made == 5  # were 10, 5 of them stepped for nothing
    same, reference = _evaluate(eval_envs=5, episodes=5)
    assert same == 5
    for key in ("returns", "reset_seeds", "lengths"):
        assert capped[key] == reference[key]
    # one round of 5 envs until the longest episode (7 steps) ends
    assert capped["timing"]["env_steps"] == 5 * 7 == reference["timing"]["env_steps"]
    assert training.eval_protocol("dql", SimpleNamespace(noise_temperature=1.0, sampler="ddim",
                                                         sampler_steps=5),
                                  SimpleNamespace(**vars(_config(10, 5)), dataset="d"))[
        "num_envs"] == 5
    # fewer envs than episodes: unchanged (two rounds of 2, the last one half used)
    made, two = _evaluate(eval_envs=2, episodes=3)
    assert made == 2 and two["reset_seeds"] == [0, 1, 2] and two["episodes"] == 3


def test_seeds_evaluation_makes_no_more_envs_than_episodes():
    seeds = (0, 3)
    act = lambda states, obs, keys: np.zeros(obs.shape[:2] + (1,), np.float32)
    results = {}
    for eval_envs in (4, 2):
        CountdownEnv.made = 0
        config = _config(eval_envs, 2)
        envs = training.make_eval_envs(DATA, config, copies=len(seeds))
        assert CountdownEnv.made == 2 * len(seeds)  # 2 per seed, not 4
        results[eval_envs] = multi_seed.evaluate_seeds(act, "dql", STATE, DATA, [NORM] * 2, envs,
                                                       config, seeds, 0)
        envs.close()
    for capped, reference, seed in zip(results[4], results[2], seeds, strict=True):
        assert capped["reset_seeds"] == reference["reset_seeds"] == [seed * 100_000,
                                                                     seed * 100_000 + 1]
        assert capped["returns"] == reference["returns"]
        assert capped["timing"]["env_steps"] == reference["timing"]["env_steps"]
