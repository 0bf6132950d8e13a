"""Evaluation: episode accounting in vector envs (nothing added after an episode ends), chunked
policies, success detection (none where the environment reports none), reset seeds, standard
errors, and the eval.json record."""

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


class SeedEnv(gym.Env):
    """One step whose reward is the seed the episode was reset with; no success signal."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_ = seed
        return np.array([seed or 0], np.float32), {}

    def step(self, action):
        return np.array([0.0], np.float32), float(self.seed_), True, False, {}


def _zeros(obs, key):
    return np.zeros((obs.shape[0], 1), np.float32)


def test_no_success_signal_records_none(tmp_path):
    """An environment that never reports ``success`` has no success rate (its rewards are
    positive, which once counted as success: Hopper recorded 1.00), in the record and the
    printed lines."""
    envs = evaluation.make_vector_env(SeedEnv, 2)
    result = evaluation.evaluate(_zeros, envs, jax.random.PRNGKey(0), num_episodes=3, seed=1)
    envs.close()
    assert result["returns"] == [1.0, 2.0, 3.0]
    assert result["successes"] is None and result["success_rate"] is None
    record = evaluation.EvalRecord(tmp_path / "eval.json", average_last=2)
    for step in (1, 2):
        entry = record.add(step, result, {"episodes": 3})
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["evaluations"][0]["success_rate"] is None
    assert data["summary"]["running_average"]["success_rate"] is None
    assert evaluation.format_success(entry) == ""
    assert evaluation.format_success({"success_rate": 0.8}) == ", success rate 0.80"


def test_reset_seeds_choose_each_episodes_start():
    """Episode ``k`` resets with ``reset_seeds[k]`` (default ``seed + k``), whatever the number
    of envs; a last partial round's spare envs continue from the largest seed."""
    seen = []

    class Recorded(SeedEnv):
        def reset(self, *, seed=None, options=None):
            seen.append(seed)
            return super().reset(seed=seed, options=options)

    for num_envs in (1, 2):
        envs = evaluation.make_vector_env(Recorded, num_envs)
        seen.clear()
        result = evaluation.evaluate(_zeros, envs, jax.random.PRNGKey(0), num_episodes=3,
                                     reset_seeds=[7, 3, 11])
        assert result["returns"] == [7.0, 3.0, 11.0] and result["reset_seeds"] == [7, 3, 11]
        assert [s for s in seen if s is not None][:4] == [7, 3, 11, 12][:3 + (num_envs == 2)]
        result = evaluation.evaluate(_zeros, envs, jax.random.PRNGKey(0), num_episodes=3, seed=10)
        assert result["returns"] == [10.0, 11.0, 12.0] and result["reset_seeds"] == [10, 11, 12]
        envs.close()
    for bad, match in (([1, 2], "2 seeds for 3 episodes"), ([1, -2, 3], "integers >= 0")):
        with pytest.raises(ValueError, match=match):
            evaluation.check_reset_seeds(bad, 3)


def test_standard_error_of_each_mean():
    """``std(ddof=1) / sqrt(n)`` against a float64 reference; for the running average the
    evaluations' errors combine as independent: ``sqrt(sum sem_i^2) / n``."""
    x = np.array([3.0, 7.5, 1.25, 10.0, 4.0])
    assert evaluation.standard_error(x) == pytest.approx(
        np.sqrt(np.sum((x - x.mean()) ** 2) / 4) / np.sqrt(5), rel=1e-12)
    assert evaluation.standard_error([2.0]) is None
    summary = evaluation.normalized_summary(x)
    assert summary["normalized_score"] == pytest.approx(x.mean())
    assert summary["normalized_score_sem"] == evaluation.standard_error(x)
    envs = evaluation.make_vector_env(SeedEnv, 2)
    result = evaluation.evaluate(_zeros, envs, jax.random.PRNGKey(0), num_episodes=4,
                                 reset_seeds=[0, 2, 4, 10])
    envs.close()
    assert result["return_mean"] == 4.0
    assert result["return_sem"] == pytest.approx(np.std([0, 2, 4, 10], ddof=1) / 2.0)
    assert evaluation.format_score(result, "return_mean") == "4.0 ± 2.2 s.e."
    assert evaluation.format_score({"return_mean": 4.0}, "return_mean") == "4.0"
    record = evaluation.EvalRecord("unused.json", average_last=2)
    record.write = lambda: None
    for score, sem in ((10.0, 3.0), (20.0, 6.0), (30.0, 8.0)):
        record.add(0, {"normalized_score": score, "normalized_score_sem": sem,
                       "success_rate": 0.5}, {})
    running = record.summary()["running_average"]
    assert running["normalized_score"] == 25.0 and running["normalized_score_sem"] == 5.0
    assert running["success_rate"] == 0.5


def test_multi_seed_evaluation_plays_the_single_seed_episodes():
    """Each seed of a joint rollout starts its episodes where a run of that seed alone does
    (``100_000 seed + k``), a last partial round included, and records them."""
    from types import SimpleNamespace

    from cdp_jax import multi_seed, training

    seeds, per, episodes = (0, 3), 2, 3
    envs = evaluation.make_vector_env(SeedEnv, len(seeds) * per)
    states = SimpleNamespace(config=SimpleNamespace(obs_horizon=None, n_action=1))
    data = SimpleNamespace(obs_keys=(), ref_min_score=None, ref_max_score=None)
    norms = [SimpleNamespace(normalize=lambda x: x)] * len(seeds)
    config = SimpleNamespace(eval_envs=per, eval_episodes=episodes, max_episode_steps=None)
    act = lambda states, obs, keys: np.zeros(obs.shape[:2] + (1,), np.float32)
    results = multi_seed.evaluate_seeds(act, "dql", states, data, norms, envs, config, seeds, 0)
    envs.close()
    for seed, result in zip(seeds, results, strict=True):
        expected = training.eval_reset_seeds(seed, episodes)
        assert expected == [100_000 * seed + k for k in range(episodes)]
        assert result["reset_seeds"] == expected and result["returns"] == [float(s) for s in expected]
        assert result["success_rate"] is None and result["episodes"] == episodes


def test_multi_seed_evaluation_caps_episodes_and_reports_timing():
    """All seeds' joint rollout applies the run's ``max_episode_steps`` as a single-seed
    evaluation does (it once ignored it), and reports how long the evaluation took."""
    from types import SimpleNamespace

    from cdp_jax import multi_seed

    seeds, per = (0, 1), 2
    envs = evaluation.make_vector_env(CountdownEnv, 2 * per)
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


def _evaluate_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("_evaluate_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_reset_seeds_flag(capsys):
    script = _evaluate_script()
    assert script.parse_args(["runs/x", "--reset-seeds", "0-2,9"]).reset_seeds == (0, 1, 2, 9)
    assert script.parse_args(["runs/x", "--reset-seeds", "4,5", "--episodes", "2"]).episodes == 2
    assert script.parse_args(["runs/x"]).reset_seeds is None
    for bad in (["--reset-seeds", "0-2", "--episodes", "5"], ["--reset-seeds", "a"],
                ["--reset-seeds", "1,1"], ["--reset-seeds", "-3"]):
        with pytest.raises(SystemExit):
            script.parse_args(["runs/x", *bad])
    assert script.describe_seeds([0, 1, 2]) == "0-2" and script.describe_seeds([4, 2]) == "4,2"
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    assert "100000 SEED + k" in " ".join(capsys.readouterr().out.split())


def test_evaluate_script_compares_runs_on_the_same_starts(minari_root, tmp_path, capsys):
    """``evaluate.py`` by default replays the run's own start states (``100000 seed + k``);
    ``--reset-seeds`` names others, recorded per episode; the score is printed ± its standard
    error, with the success rate (PointMaze reports success)."""
    from cdp_jax import checkpoint, run_config, run_directory, training
    from cdp_jax.agents import dql
    from cdp_jax.data import minari
    from cdp_jax.data.builders import pointmaze

    dataset = "cdp/pointmaze/evaltiny-v0"
    pointmaze.build("umaze", num_steps=1500, seed=0, dataset_id=dataset, num_reference_episodes=2)
    run = tmp_path / "run"
    config = run_config.TrainConfig(name="run", dataset=dataset, seed=2, steps=10,
                                    updates_per_call=10, eval_every=10, checkpoint_every=10,
                                    eval_episodes=2, eval_envs=2, max_episode_steps=5,
                                    run_dir=str(run), progress=False)
    agent_config = run_config.resolve_agent_config(config, dql.default_config(
        actor_hidden_dim=16, critic_hidden_dim=16, time_dim=8, diffusion_steps=5,
        sampler_steps=2))
    data = minari.load(dataset)
    _, norm = training.prepare_arrays(data, "dql", agent_config, config)
    state = dql.init(jax.random.PRNGKey(0), agent_config, data.obs_dim, data.act_dim)
    run.mkdir()
    run_directory.write_json(run / "config.json", run_config.config_dict(config, agent_config))
    meta = {"config": run_config.config_dict(config, agent_config), "normalizer": norm.to_dict(),
            "dataset": {"id": dataset, "obs_keys": list(data.obs_keys), "obs_dim": data.obs_dim,
                        "action_dim": data.act_dim}, "eval_history": [], "finite": True}
    checkpoint.CheckpointManager(run / "checkpoints").save(
        10, {"state": state, "rng": jax.random.PRNGKey(1)}, meta)

    script = _evaluate_script()
    assert script.main([str(run), "--tag", "own"]) == 0
    own = json.loads((run / "eval_10_own.json").read_text())["evaluations"][0]
    assert own["reset_seeds"] == [200_000, 200_001]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"normalized_score: {own['normalized_score']:.1f} ± " in line
    assert "s.e.  success rate " in line and "2 episodes from reset seeds 200000-200001" in line
    assert own["normalized_score_sem"] == evaluation.standard_error(own["normalized_scores"])
    assert script.main([str(run), "--tag", "same", "--reset-seeds", "200000,200001"]) == 0
    same = json.loads((run / "eval_10_same.json").read_text())["evaluations"][0]
    assert same["returns"] == own["returns"] and same["reset_seeds"] == own["reset_seeds"]
    assert script.main([str(run), "--tag", "other", "--reset-seeds", "7,3,5"]) == 0
    other = json.loads((run / "eval_10_other.json").read_text())["evaluations"][0]
    assert other["reset_seeds"] == [7, 3, 5] and other["episodes"] == 3


def test_the_documented_reset_seeds_are_the_codes():
    """docs/EVALUATION.md and the scripts' ``--help`` state the reset seeds the code uses."""
    from pathlib import Path

    from cdp_jax import training

    root = Path(__file__).resolve().parents[1]
    stride = training.RESET_SEED_STRIDE
    assert training.eval_reset_seeds(3, 2) == [3 * stride, 3 * stride + 1]
    doc = (root / "docs" / "EVALUATION.md").read_text()
    assert f"`{stride} S + k`" in doc and "--reset-seeds" in doc
    train_doc = " ".join((root / "experiments" / "train.py").read_text().split())
    assert f"``{stride} S + k``" in train_doc
    assert f"{stride} SEED + k" in " ".join(_evaluate_script().__doc__.split())
