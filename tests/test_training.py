"""Training loop end to end on a tiny PointMaze dataset built locally: outputs, exact resume,
NaN stop, validation before compilation, vmapped seeds."""

import csv
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import checkpoint, multi_seed, parallel, run_config, training
from cdp_jax.agents import common, dbc, dql
from cdp_jax.data import minari
from cdp_jax.data.builders import pointmaze

DATASET = "cdp/pointmaze/tiny-v0"


@pytest.fixture(scope="module")
def datasets_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(path))
        pointmaze.build("umaze", num_steps=3000, seed=0, dataset_id=DATASET,
                        num_reference_episodes=2)
        yield path


@pytest.fixture
def tiny(datasets_path, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(datasets_path))
    config = run_config.TrainConfig(
        name="tiny", dataset=DATASET, steps=40, batch_size=32, updates_per_call=10,
        eval_every=20, eval_episodes=2, eval_envs=2, checkpoint_every=20, keep_checkpoints=2,
        run_dir=str(tmp_path / "run"), progress=False)
    agent_config = dql.default_config(actor_hidden_dim=32, critic_hidden_dim=32, time_dim=16,
                                      diffusion_steps=10, sampler_steps=3, ema_start=5,
                                      ema_every=2, target_every=2)
    return config, agent_config


def _rows(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_exact_resume_and_outputs(tiny, tmp_path, monkeypatch):
    config, agent_config = tiny
    straight = training.train(config, agent_config)
    run = tmp_path / "run"
    assert (run / "config.json").exists() and (run / "metrics.csv").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    assert checkpoint.list_steps(run / "checkpoints") == [20, 40]
    record = json.loads((run / "eval.json").read_text())
    assert [e["gradient_step"] for e in record["evaluations"]] == [20, 40]
    last = record["summary"]["last"]
    assert last["episodes"] == 2 and last["sampler"] == "dpm_solver_pp_2m"
    assert last["sampler_steps"] == 3 and last["candidates"] == 1
    assert np.isfinite(last["normalized_score"])
    assert straight["eval"]["last"]["gradient_step"] == 40

    # Interrupted run: killed right after its first checkpoint, then resumed with --resume.
    interrupted = dataclasses.replace(config, run_dir=str(tmp_path / "resumed"))
    real_save = checkpoint.CheckpointManager.save

    def save_then_die(self, step, *args, **kwargs):
        real_save(self, step, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.CheckpointManager, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        training.train(interrupted, agent_config)
    monkeypatch.setattr(checkpoint.CheckpointManager, "save", real_save)
    with pytest.raises(FileExistsError, match="--resume"):
        training.train(interrupted, agent_config)
    training.train(dataclasses.replace(interrupted, resume=True), agent_config)

    a = run_config.load_policy(run)
    b = run_config.load_policy(tmp_path / "resumed")
    assert int(a[2].step) == int(b[2].step) == 40
    assert _leaves_equal(a[2], b[2])  # bitwise: params, EMA, targets, optimiser states
    assert _rows(run / "metrics.csv") == _rows(tmp_path / "resumed" / "metrics.csv")
    eval_a, eval_b = (_evaluations(d / "eval.json") for d in (run, tmp_path / "resumed"))
    assert eval_a == eval_b
    # TensorBoard's reader: every step once, the resume step (20) included, the same values
    events_a, events_b = _tensorboard(run), _tensorboard(tmp_path / "resumed")
    assert [s for s, _ in events_b["critic/loss"]] == [10, 20, 30, 40]
    assert [s for s, _ in events_b["eval/normalized_score"]] == [20, 40]
    for tag in ("actor/loss", "critic/loss", "eval/normalized_score", "eval/success_rate"):
        assert events_a[tag] == events_b[tag]
    # The software of every attempt: the straight run one, the interrupted one two (0 and 20).
    (straight_env,) = json.loads((run / "environment.json").read_text())["attempts"]
    assert straight_env["from_step"] == 0 and straight_env["backend"] == jax.default_backend()
    assert straight_env["packages"]["jax"] == jax.__version__
    assert straight_env["packages"]["numpy"] == np.__version__
    attempts = json.loads((tmp_path / "resumed" / "environment.json").read_text())["attempts"]
    assert [a["from_step"] for a in attempts] == [0, 20]


def _tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny, monkeypatch):
    config, agent_config = tiny
    real_update = dql.update

    def poisoned(state, batch, key):
        state, metrics = real_update(state, batch, key)
        bad = jnp.where(state.step > 25, jnp.nan, 0.0)
        return state, {**metrics, "critic/loss": metrics["critic/loss"] + bad}

    monkeypatch.setattr(dql, "update", poisoned)
    with pytest.raises(training.TrainingDivergedError, match="critic/loss at gradient step 26"):
        training.train(config, agent_config)
    ckpt_dir = run_config.TrainConfig(run_dir=config.run_dir).path / "checkpoints"
    assert checkpoint.list_steps(ckpt_dir) == [20]
    tree, meta = checkpoint.restore(ckpt_dir, {"state": dql.init(jax.random.PRNGKey(0),
                                                                 run_config.resolve_agent_config(
                                                                     config, agent_config), 6, 2),
                                               "rng": jax.random.PRNGKey(0)})
    assert meta["step"] == 20


def test_invalid_configs_fail_before_compilation(tiny, monkeypatch):
    config, agent_config = tiny
    monkeypatch.setattr(training, "make_train_chunk", lambda *a: pytest.fail("compiled"))
    with pytest.raises(ValueError, match="Unknown preset"):
        run_config.preset("huge")
    with pytest.raises(ValueError, match="eval_every"):
        dataclasses.replace(config, eval_every=15).validate()
    with pytest.raises(ValueError, match="sampler_steps"):
        training.train(config, dataclasses.replace(agent_config, sampler_steps=11))
    data = minari.load(DATASET)
    wrong = dataclasses.replace(data, observations=data.observations[:, :4],
                                next_observations=data.next_observations[:, :4])
    with pytest.raises(ValueError, match="does not match its environment"):
        training.make_eval_envs(wrong, config)
    with pytest.raises(ValueError, match="agent"):
        run_config.TrainConfig(agent="sac").validate()


def test_names_non_finite_values_and_memory_fail_before_compilation(tiny, monkeypatch):
    config, agent_config = tiny
    monkeypatch.setattr(training, "make_train_chunk", lambda *a: pytest.fail("compiled"))
    for name in ("", "  ", "a/b", "..", "/abs"):
        with pytest.raises(ValueError, match="Invalid name="):
            dataclasses.replace(config, name=name, run_dir=None).validate()
    for field in ("reward_scale", "reward_bias", "fraction"):
        for value in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"Invalid {field}=.*must be a finite number"):
                dataclasses.replace(config, **{field: value}).validate()
    for bad, field in ((dataclasses.replace(agent_config, actor_lr=float("nan")), "actor_lr"),
                       (dataclasses.replace(agent_config, eta=float("-inf")), "eta"),
                       (dataclasses.replace(agent_config, tau=float("nan")), "tau")):
        with pytest.raises(ValueError, match=f"Invalid {field}=.*must be a finite number"):
            training.train(config, bad)
    with pytest.raises(ValueError, match="Invalid critic_lr=nan; must be a finite number"):
        common.apply_overrides(agent_config, ["critic_lr=nan"])
    with pytest.raises(ValueError, match="weight=inf"):
        common.apply_overrides(agent_config, ["contraction.weight=inf"])

    @dataclasses.dataclass(frozen=True)
    class Inner:
        values: tuple = (1.0, float("nan"))

    @dataclasses.dataclass(frozen=True)
    class Outer:
        lr: float = 1e-3
        inner: Inner = Inner()

    with pytest.raises(ValueError, match=r"Invalid inner.values=\(1.0, nan\)"):
        common.check_finite_fields(Outer())

    with pytest.raises(parallel.DeviceMemoryError,
                       match=r"batch_size=1000000000000 x updates_per_call=10 needs at least "
                             r".* TB for one call's batches"):
        training.train(dataclasses.replace(config, batch_size=10**12), agent_config)
    assert not os.path.exists(config.run_dir)

    def out_of_memory(*args):  # what XLA raises when the program does not fit
        def chunk(*a):
            raise jax.errors.JaxRuntimeError(
                "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 7.00TiB.")
        return chunk

    monkeypatch.setattr(training, "make_train_chunk", out_of_memory)
    with pytest.raises(parallel.DeviceMemoryError, match=r"batch_size=32, updates_per_call=10 "
                                                         r"does not fit in device memory"):
        training.train(config, agent_config)
    monkeypatch.setattr(multi_seed, "make_seeds_chunk", out_of_memory)  # the same for --seeds
    with pytest.raises(parallel.DeviceMemoryError, match=r"batch_size=32, updates_per_call=10 "
                                                         r"does not fit in device memory"):
        multi_seed.train_seeds(dataclasses.replace(config, run_dir=config.run_dir + "_seeds"),
                               agent_config, (0, 1))


@pytest.mark.slow  # three compilations (vmapped init, single and vmapped chunk): ~30 s on CPU
def test_vmapped_seeds_match_single_runs():
    """Several seeds in one program: vmap over the chunk equals each seed trained alone."""
    agent_config = dbc.default_config(hidden_dim=16, depth=1, time_dim=8, diffusion_steps=5,
                                      sampler_steps=2, obs_horizon=2, action_horizon=2,
                                      n_action=1)
    arrays = {"observations": jax.random.normal(jax.random.PRNGKey(1), (50, 2, 3)),
              "actions": jnp.tanh(jax.random.normal(jax.random.PRNGKey(2), (50, 2, 2)))}
    chunk = training.make_train_chunk(dbc, 3, 8)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    states = training.init_seeds(dbc, keys, agent_config, 3, 2)
    batched, metrics = jax.jit(jax.vmap(chunk, in_axes=(0, None, 0)))(states, arrays, keys)
    assert metrics["actor/loss"].shape == (2, 3)
    single, _ = jax.jit(chunk)(dbc.init(keys[1], agent_config, 3, 2), arrays, keys[1])
    for x, y in zip(jax.tree.leaves(single), jax.tree.leaves(batched), strict=True):
        np.testing.assert_allclose(x, y[1], rtol=2e-5, atol=2e-6)


@pytest.mark.slow
def test_main_command_reduced(datasets_path, tmp_path, monkeypatch):
    """The README main command (experiments/train.py), reduced: builds, trains, evaluates."""
    import subprocess
    import sys

    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "minari")}
    cmd = [sys.executable, "experiments/train.py", "--steps", "500", "--eval-every", "250",
           "--checkpoint-every", "250", "--eval-episodes", "4", "--eval-envs", "4",
           "--build-steps", "20000", "--run-dir", str(tmp_path / "run"), "--no-progress"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "normalized_score" in out.stdout and "run directory" in out.stdout
    assert (tmp_path / "run" / "eval.json").exists()
    assert checkpoint.list_steps(tmp_path / "run" / "checkpoints") == [250, 500]
    best = json.loads((tmp_path / "run" / "checkpoints" / "best.json").read_text())["step"]
    cmd = [sys.executable, "experiments/evaluate.py", str(tmp_path / "run"), "--checkpoint",
           "best", "--episodes", "2", "--envs", "2", "--candidates", "4", "--tag", "c4"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "run" / f"eval_{best}_c4.json").read_text())
    assert record["evaluations"][0]["candidates"] == 4
    assert record["evaluations"][0]["episodes"] == 2


@pytest.mark.slow
def test_kill_and_resume_in_a_fresh_process(datasets_path, tmp_path):
    """SIGKILL a training process after its first checkpoint, resume it in a new process: the
    final parameters and metrics equal those of an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(__file__))
    env = {**os.environ, "MINARI_DATASETS_PATH": str(datasets_path)}
    base = [sys.executable, "experiments/train.py", "--dataset", DATASET, "--steps", "400",
            "--updates-per-call", "50", "--eval-every", "200", "--checkpoint-every", "100",
            "--eval-episodes", "2", "--eval-envs", "2", "--batch-size", "32", "--no-progress",
            "--set", "actor_hidden_dim=32", "--set", "critic_hidden_dim=32",
            "--set", "sampler_steps=3"]
    straight = subprocess.run(base + ["--run-dir", str(tmp_path / "a")], env=env, cwd=root,
                              capture_output=True, text=True, timeout=900)
    assert straight.returncode == 0, straight.stderr[-3000:]

    proc = subprocess.Popen(base + ["--run-dir", str(tmp_path / "b")], env=env, cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = checkpoint.step_dir(tmp_path / "b" / "checkpoints", 100)
    deadline = time.time() + 600
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint.list_steps(tmp_path / "b" / "checkpoints")
    assert killed_at and killed_at[-1] < 400
    # no flag retyped: the saved config.json is the configuration of the resume
    resumed = subprocess.run([sys.executable, "experiments/train.py", "--run-dir",
                              str(tmp_path / "b"), "--resume"], env=env,
                             cwd=root, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = run_config.load_policy(tmp_path / "a"), run_config.load_policy(tmp_path / "b")
    assert _leaves_equal(a[2], b[2])
    assert _rows(tmp_path / "a" / "metrics.csv") == _rows(tmp_path / "b" / "metrics.csv")
    eval_a = json.loads((tmp_path / "a" / "eval.json").read_text())["evaluations"]
    eval_b = json.loads((tmp_path / "b" / "eval.json").read_text())["evaluations"]
    assert eval_a == eval_b
    events_a, events_b = _tensorboard(tmp_path / "a"), _tensorboard(tmp_path / "b")
    for tag in ("actor/loss", "critic/loss", "eval/normalized_score"):
        assert events_a[tag] == events_b[tag]


@pytest.mark.slow  # three training runs with evaluations: ~60 s on CPU
def test_resume_from_an_earlier_checkpoint_equals_a_straight_run(tiny, tmp_path):
    """The latest checkpoint is damaged; --resume-from the one before reproduces, bitwise, the
    parameters, metrics, evaluations and TensorBoard scalars of an uninterrupted run."""
    config, agent_config = tiny
    straight = dataclasses.replace(config, run_dir=str(tmp_path / "straight"))
    training.train(straight, agent_config)
    training.train(config, agent_config)
    ckpts = config.path / "checkpoints"
    state = checkpoint.step_dir(ckpts, 40) / "state"
    data = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError, match="--resume-from 20"):
        training.train(dataclasses.replace(config, resume=True), agent_config)
    training.train(dataclasses.replace(config, resume=True, resume_from=20), agent_config)

    a, b = run_config.load_policy(straight.path), run_config.load_policy(config.path)
    assert _leaves_equal(a[2], b[2])
    assert _rows(straight.path / "metrics.csv") == _rows(config.path / "metrics.csv")
    eval_a = json.loads((straight.path / "eval.json").read_text())["evaluations"]
    eval_b = json.loads((config.path / "eval.json").read_text())["evaluations"]
    assert eval_a == eval_b
    events_a, events_b = _tensorboard(straight.path), _tensorboard(config.path)
    for tag in ("actor/loss", "critic/loss", "eval/normalized_score"):
        assert events_a[tag] == events_b[tag]
    assert (ckpts / "discarded" / "step_000000040").is_dir()


def _evaluations(path):
    """``eval.json``'s evaluations without their wall-clock ``timing``."""
    return [{k: v for k, v in e.items() if k != "timing"}
            for e in json.loads(path.read_text())["evaluations"]]


def test_updates_per_call_changes_only_the_speed():
    """The same 6 updates as one chunk of 6 and as 2 + 4 give the same parameters and metrics
    (every step draws from fold_in(run key, step)), so a preset's K can be fitted to the user's
    cadence without changing the results."""
    agent_config = dbc.default_config(hidden_dim=16, depth=1, time_dim=8, diffusion_steps=5,
                                      sampler_steps=2, obs_horizon=1, action_horizon=1)
    arrays = {"observations": jax.random.normal(jax.random.PRNGKey(1), (40, 1, 3)),
              "actions": jnp.tanh(jax.random.normal(jax.random.PRNGKey(2), (40, 1, 2)))}
    key = jax.random.PRNGKey(7)
    init = dbc.init(jax.random.PRNGKey(0), agent_config, 3, 2)
    runs = {}
    for split in ((6,), (2, 4)):
        state, losses = init, []
        for k in split:
            state, metrics = jax.jit(training.make_train_chunk(dbc, k, 8))(state, arrays, key)
            losses.append(metrics["actor/loss"])
        runs[split] = (state, jnp.concatenate(losses))
    reference = runs[(6,)]
    for split, (state, losses) in runs.items():
        assert int(state.step) == 6
        np.testing.assert_array_equal(losses, reference[1], err_msg=str(split))
        for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(reference[0]), strict=True):
            np.testing.assert_array_equal(x, y, err_msg=str(split))
