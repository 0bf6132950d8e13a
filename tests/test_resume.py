"""Resuming and owning a run directory, through :func:`cdp_jax.training.train`'s host loop.

The device part (a real chunk of updates) and the rollouts are replaced by cheap stand-ins
(:func:`fast_loop`) so that each test costs about a second: what is tested here is the loop around
them: which configuration a resume uses, which checkpoint it restores, what it refuses, what the
logs (metrics.csv, TensorBoard through TensorBoard's own reader, eval.json) hold afterwards, and
that non-finite parameters are never checkpointed. Real training resumes are tested in
``tests/test_training.py``.
"""

import csv
import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cdp_jax import checkpoint, files, multi_seed, run_config, run_directory, training
from cdp_jax import logging as run_logging
from cdp_jax.agents import dql
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
        eval_every=20, eval_episodes=2, eval_envs=2, checkpoint_every=20, keep_checkpoints=3,
        run_dir=str(tmp_path / "run"), progress=False)
    agent_config = dql.default_config(actor_hidden_dim=32, critic_hidden_dim=32, time_dim=16,
                                      diffusion_steps=10, sampler_steps=3)
    return config, agent_config


@pytest.fixture
def fast_loop(monkeypatch):
    """Replace the chunk of updates and the evaluation by cheap deterministic stand-ins.

    The chunk moves the actor parameters and draws its "losses" from its key, so a resumed run
    reproduces the straight one only if the PRNG key and state were restored; it puts NaN in
    the actor parameters (not in the losses) from gradient step ``poison["at"]`` on.
    """
    poison = {"at": None}

    def make_chunk(agent, num_updates, batch_size, batch_sharding=None):
        def chunk(state, arrays, key):
            step = state.step + num_updates
            bad = jnp.asarray(poison["at"] is not None) & (step >= (poison["at"] or 0))
            params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p + 1e-3),
                                  state.actor_params)
            losses = jax.random.uniform(key, (num_updates,))
            return (state.replace(actor_params=params, step=step),
                    {"actor/loss": losses, "critic/loss": 2.0 * losses})
        return chunk

    def evaluate(act_fn, agent_name, state, data, norm, envs, config, step):
        score = float(jnp.sum(state.actor_params["params"]["Dense_0"]["bias"]))
        return {"returns": [score], "successes": [0.0], "return_mean": score,
                "return_std": 0.0, "success_rate": 0.0, "length_mean": 1.0, "episodes": 1}

    monkeypatch.setattr(training, "make_train_chunk", make_chunk)
    monkeypatch.setattr(training, "run_evaluation", evaluate)
    return poison


def _csv_steps(run):
    with open(run / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _tensorboard(run):
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def _die_after_save(monkeypatch, at_step):
    real_save = checkpoint.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        path = real_save(self, step, *args, **kwargs)
        if step == at_step:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(checkpoint.CheckpointManager, "save", save)


def _garble(step_dir):
    """Truncate the largest data file of a checkpoint."""
    data = max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:100])


def test_resume_of_a_missing_run_is_refused(tiny, tmp_path, monkeypatch):
    config, agent_config = tiny
    monkeypatch.setattr(training, "make_train_chunk", lambda *a: pytest.fail("compiled"))
    missing = tmp_path / "no_such_run"
    with pytest.raises(FileNotFoundError, match=f"{missing}.* does not exist"):
        training.train(dataclasses.replace(config, run_dir=str(missing), resume=True),
                       agent_config)
    assert not missing.exists()
    missing.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no run"):
        training.train(dataclasses.replace(config, run_dir=str(missing), resume=True),
                       agent_config)


def test_resume_reuses_the_saved_configuration(tiny, fast_loop, monkeypatch):
    config, agent_config = tiny
    _die_after_save(monkeypatch, 20)
    with pytest.raises(KeyboardInterrupt):
        training.train(config, agent_config)
    monkeypatch.undo()
    saved = json.loads((config.path / "config.json").read_text())

    resumed, resumed_agent = run_config.resume_configs(config.path)
    assert resumed == dataclasses.replace(config, resume=True)
    assert resumed_agent == run_config.resolve_agent_config(config, agent_config)
    longer, _ = run_config.resume_configs(config.path, {"steps": 80, "eval_every": 40})
    assert (longer.steps, longer.eval_every, longer.batch_size) == (80, 40, 32)

    # batch size, dataset and an agent field differ: refused, each named with both values
    other, other_agent = run_config.resume_configs(config.path, {"batch_size": 64,
                                                                "dataset": "cdp/other-v0"},
                                                 ["eta=2.0", "contraction.weight=0.5"])
    with pytest.raises(ValueError) as err:
        training.train(other, other_agent)
    for change in ("batch_size: saved 32, requested 64",
                   f"dataset: saved '{DATASET}', requested 'cdp/other-v0'",
                   "agent.eta: saved 1.0, requested 2.0",
                   "agent.contraction.weight: saved 0.0, requested 0.5"):
        assert change in str(err.value)
    assert json.loads((config.path / "config.json").read_text()) == saved  # not overwritten
    with pytest.raises(ValueError, match="agent='dql'"):
        run_config.resume_configs(config.path, {"agent": "dbc"})


def test_resumed_tensorboard_keeps_the_resume_step(tiny, fast_loop, monkeypatch):
    """Killed after its checkpoint at step 20, resumed: TensorBoard's reader shows every step
    once, the scalars and the evaluation at step 20 included, with the values of a straight run."""
    config, agent_config = tiny
    straight = dataclasses.replace(config, run_dir=str(config.path.parent / "straight"))
    training.train(straight, agent_config)

    real_save = checkpoint.CheckpointManager.save
    on_disk_at_save = {}

    def save_then_die(self, step, *args, **kwargs):
        on_disk_at_save.update(_tensorboard(config.path))  # flushed before the checkpoint
        real_save(self, step, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.CheckpointManager, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        training.train(config, agent_config)
    assert [s for s, _ in on_disk_at_save["eval/return_mean"]] == [20]
    assert [s for s, _ in on_disk_at_save["actor/loss"]] == [10, 20]
    monkeypatch.setattr(checkpoint.CheckpointManager, "save", real_save)
    training.train(dataclasses.replace(config, resume=True), agent_config)

    got, want = _tensorboard(config.path), _tensorboard(straight.path)
    assert [s for s, _ in got["actor/loss"]] == [10, 20, 30, 40]
    assert [s for s, _ in got["eval/return_mean"]] == [20, 40]
    for tag in ("actor/loss", "critic/loss", "eval/return_mean"):
        assert got[tag] == want[tag]
    assert _csv_steps(config.path) == [10, 20, 30, 40]


def test_tensorboard_purge_keeps_the_checkpoint_step(tmp_path):
    """The logger alone: the first writer logged up to step 30 (checkpoint at 20); the resumed
    one (from 20) hides step 30 of the first and keeps its step 20."""
    first = run_logging.RunLogger(tmp_path, 40, 0, progress=False)
    many = {f"extra/{i}": float(i) for i in range(50)}  # more than tensorboardX's queue holds
    for step in (10, 20, 30):
        first.log_train(step, {"loss": step, **many})
        if step == 20:
            first.log_eval(step, {"return_mean": 1.0})
            first.flush()  # what training does before a checkpoint: all of it on disk now
            on_disk = _tensorboard(tmp_path)
            assert on_disk["loss"] == [(10, 10.0), (20, 20.0)]
            assert on_disk["eval/return_mean"] == [(20, 1.0)]
            assert [s for s, _ in on_disk["extra/49"]] == [10, 20]
    first.close()
    resumed = run_logging.RunLogger(tmp_path, 40, 20, progress=False)
    for step in (30, 40):
        resumed.log_train(step, {"loss": step + 0.5})
    resumed.log_eval(40, {"return_mean": 2.0})
    resumed.close()
    got = _tensorboard(tmp_path)
    assert got["loss"] == [(10, 10.0), (20, 20.0), (30, 30.5), (40, 40.5)]
    assert got["eval/return_mean"] == [(20, 1.0), (40, 2.0)]
    assert _csv_steps(tmp_path) == [10, 20, 30, 40]


def test_resume_from_an_earlier_checkpoint_when_the_latest_is_damaged(tiny, fast_loop):
    config, agent_config = tiny
    straight = dataclasses.replace(config, run_dir=str(config.path.parent / "straight"))
    training.train(straight, agent_config)
    training.train(config, agent_config)
    ckpts = config.path / "checkpoints"
    assert checkpoint.list_steps(ckpts) == [20, 40]
    _garble(checkpoint.step_dir(ckpts, 40))

    resume = dataclasses.replace(config, resume=True)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"step_000000040 is damaged.*--resume-from 20"):
        training.train(resume, agent_config)
    with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint for step 30"):
        training.train(dataclasses.replace(resume, resume_from=30), agent_config)
    training.train(dataclasses.replace(resume, resume_from=20), agent_config)

    assert checkpoint.list_steps(ckpts) == [20, 40]
    assert (ckpts / "discarded" / "step_000000040" / "meta.json").exists()  # set aside, kept
    want, got = ([{k: v for k, v in e.items() if k != "timing"}  # not the wall-clock timing
                  for e in json.loads((c.path / "eval.json").read_text())["evaluations"]]
                 for c in (straight, config))
    assert [e["gradient_step"] for e in got] == [20, 40] and got == want
    assert _csv_steps(config.path) == [10, 20, 30, 40]
    got, want = _tensorboard(config.path), _tensorboard(straight.path)
    for tag in ("actor/loss", "critic/loss", "eval/return_mean"):
        assert got[tag] == want[tag]
    with pytest.raises(ValueError, match="resume_from"):
        dataclasses.replace(config, resume_from=20).validate()  # needs resume=True


def test_non_finite_parameters_are_never_checkpointed(tiny, fast_loop):
    """The losses stay finite; the parameters after step 40 are NaN: no checkpoint of them, and
    the error names the leaf and the last checkpoint that was checked finite."""
    config, agent_config = tiny
    fast_loop["at"] = 40
    with pytest.raises(training.TrainingDivergedError) as err:
        training.train(config, agent_config)
    message = str(err.value)
    assert "actor_params" in message and "after gradient step 40" in message
    assert "Last good checkpoint (finite when saved)" in message
    assert "step_000000020" in message
    ckpts = config.path / "checkpoints"
    assert checkpoint.list_steps(ckpts) == [20]
    assert checkpoint.read_meta(ckpts, 20)["finite"] is True


@pytest.mark.parametrize("full_at", ["checkpoint", "eval.json", "metrics.csv"])
def test_disk_full_stops_training_and_keeps_what_was_written(tiny, fast_loop, monkeypatch,
                                                             full_at):
    """The disk fills at step 40 (the checkpoint, eval.json or a metrics.csv row): one error
    naming the file, the step and the checkpoint kept; the files written before are whole, and
    --resume then finishes the run as if nothing had happened."""
    config, agent_config = tiny
    full = {"on": True}
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    save, write_text, os_write = (checkpoint.ocp.StandardCheckpointer.save, Path.write_text,
                                  os.write)

    def save_unless_full(self, path, *args, **kwargs):
        if full["on"] and full_at == "checkpoint" and "step_000000040" in str(path):
            raise enospc
        return save(self, path, *args, **kwargs)

    def write_text_unless_full(self, text, *args, **kwargs):
        if (full["on"] and full_at == "eval.json" and self.name == "eval.json.tmp"
                and json.loads(text)["evaluations"][-1]["gradient_step"] == 40):
            write_text(self, text[:100], *args, **kwargs)
            raise enospc
        return write_text(self, text, *args, **kwargs)

    def write_unless_full(fd, data):  # metrics.csv's appends
        if full["on"] and full_at == "metrics.csv" and data.startswith(b"40,"):
            os_write(fd, data[:3])
            raise enospc
        return os_write(fd, data)

    monkeypatch.setattr(checkpoint.ocp.StandardCheckpointer, "save", save_unless_full)
    monkeypatch.setattr(Path, "write_text", write_text_unless_full)
    monkeypatch.setattr(run_logging, "os", types.SimpleNamespace(**{**vars(os),
                                                                   "write": write_unless_full}))
    with pytest.raises(files.WriteError) as info:
        training.train(config, agent_config)
    ckpts = config.path / "checkpoints"
    shown = {"checkpoint": checkpoint.step_dir(ckpts, 40), "eval.json": config.path / "eval.json",
             "metrics.csv": config.path / "metrics.csv"}[full_at]
    message = str(info.value)
    assert message.startswith(f"could not write {shown}: no space left on the device (ENOSPC).")
    assert (f"Training stopped at step 40. Last good checkpoint (finite when saved): "
            f"{checkpoint.step_dir(ckpts, 20)} (kept unchanged).") in message
    assert message.endswith("Free space on it, then continue with --resume.")
    assert checkpoint.list_steps(ckpts) == [20] and not list(ckpts.glob(".tmp*"))
    evaluations = json.loads((config.path / "eval.json").read_text())["evaluations"]
    assert [e["gradient_step"] for e in evaluations] == ([20] if full_at != "checkpoint"
                                                         else [20, 40])
    assert _csv_steps(config.path) == ([10, 20, 30] if full_at == "metrics.csv"
                                       else [10, 20, 30, 40])

    full["on"] = False  # space again
    training.train(dataclasses.replace(config, resume=True), agent_config)
    assert checkpoint.list_steps(ckpts) == [20, 40]
    evaluations = json.loads((config.path / "eval.json").read_text())["evaluations"]
    assert [e["gradient_step"] for e in evaluations] == [20, 40]
    assert _csv_steps(config.path) == [10, 20, 30, 40]


def test_a_run_directory_has_one_owner(tiny, fast_loop, tmp_path):
    config, agent_config = tiny
    with run_directory.own(config.path):
        with pytest.raises(run_directory.RunLockedError,
                           match=f"{config.path} is in use by another process \\(pid {os.getpid()}"):
            training.train(config, agent_config)
    assert not (config.path / "config.json").exists()  # the refused process wrote nothing

    # a holder killed with SIGKILL leaves the lock file, not the lock
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from cdp_jax import run_directory\n"
         f"with run_directory.own({str(config.path)!r}):\n"
         "    print('owned', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "owned"
    with pytest.raises(run_directory.RunLockedError, match=f"pid {holder.pid}"):
        training.train(config, agent_config)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (config.path / run_directory.LOCK_FILE).exists()
    summary = training.train(config, agent_config)
    assert summary["steps"] == 40 and _csv_steps(config.path) == [10, 20, 30, 40]


def test_resume_may_change_the_documented_fields_only(tiny, fast_loop, capsys):
    config, agent_config = tiny
    training.train(config, agent_config)
    longer = dataclasses.replace(config, resume=True, steps=60, eval_every=30,
                                 checkpoint_every=30, keep_checkpoints=4, progress=True)
    summary = training.train(longer, agent_config)  # lr_decay_steps stays the saved 40
    assert summary["steps"] == 60
    assert "decay of this run ends at step 40" in capsys.readouterr().out
    saved_train, saved_agent = run_config.load_run_config(config.path)
    assert saved_train.steps == 60 and saved_agent.lr_decay_steps == 40
    assert checkpoint.list_steps(config.path / "checkpoints") == [20, 40, 60]
    with pytest.raises(ValueError, match="seed: saved 0, requested 1"):
        training.train(dataclasses.replace(longer, seed=1), agent_config)
    with pytest.raises(ValueError, match="resumes from its checkpoint at step 60"):
        training.train(dataclasses.replace(longer, steps=40), agent_config)


def test_environment_record_appends_and_sets_a_damaged_one_aside(tmp_path):
    first = run_directory.record_environment(tmp_path, 0)
    assert first["packages"]["jax"] == jax.__version__
    assert first["devices"] == [str(d) for d in jax.devices()]
    git = first["git"]  # this checkout is a git repository: its commit, 40 hex digits
    assert git is None or (len(git["commit"]) == 40 and isinstance(git["package_modified"], bool))
    run_directory.record_environment(tmp_path, 20, {**first, "host": "other"})
    path = tmp_path / run_directory.ENVIRONMENT_FILE
    attempts = json.loads(path.read_text())["attempts"]
    assert [(a["from_step"], a["host"]) for a in attempts] == [(0, first["host"]), (20, "other")]
    path.write_text("{not json")
    run_directory.record_environment(tmp_path, 40)
    assert (tmp_path / "environment.json.damaged").read_text() == "{not json"
    assert [a["from_step"] for a in json.loads(path.read_text())["attempts"]] == [40]


def test_check_state_finite_names_leaves():
    state = {"a": np.ones(3, np.float32), "b": {"c": np.array([1.0, np.inf], np.float32)},
             "n": np.arange(3)}
    training.check_state_finite(jax.tree.map(jnp.asarray, {k: state[k] for k in ("a", "n")}),
                                5, checkpoint.CheckpointManager("/nonexistent"))
    with pytest.raises(training.TrainingDivergedError, match=r"\['b'\]\['c'\] after gradient "
                                                             r"step 5.*No checkpoint was written"):
        training.check_state_finite(state, 5, checkpoint.CheckpointManager("/nonexistent"))


def test_seeds_resume_with_the_same_rules(tiny, monkeypatch):
    """``train_seeds`` (one vmapped program, ``<run>/seed_<k>/``): conflicts refused by name,
    --resume-from after a damaged checkpoint, one owner per seed directory."""
    config, agent_config = tiny

    def make_seeds_chunk(agent, num_updates, batch_size, per_seed_data, batch_sharding=None):
        def one(state, key):
            key, key_chunk = jax.random.split(key)
            losses = jax.random.uniform(key_chunk, (num_updates,))
            return state.replace(step=state.step + num_updates), key, {"actor/loss": losses}
        return lambda states, arrays, num_rows, keys: jax.vmap(one)(states, keys)

    def evaluate_seeds(act_fn, agent_name, states, data, norms, envs, config, seeds, step):
        return [{"returns": [1.0], "successes": [0.0], "return_mean": 1.0, "return_std": 0.0,
                 "success_rate": 0.0, "length_mean": 1.0, "episodes": 1} for _ in seeds]

    def init_seeds(agent, keys, config, obs_dim, action_dim):  # vmap(init) compiles for ~7 s
        states = [agent.init(k, config, obs_dim, action_dim) for k in keys]
        return jax.tree.map(lambda *x: jnp.stack(x), *states)

    monkeypatch.setattr(multi_seed, "make_seeds_chunk", make_seeds_chunk)
    monkeypatch.setattr(multi_seed, "evaluate_seeds", evaluate_seeds)
    monkeypatch.setattr(multi_seed, "init_seeds", init_seeds)
    multi_seed.train_seeds(config, agent_config, (0, 1))
    seed_dirs = [config.path / f"seed_{s}" for s in (0, 1)]
    resume = dataclasses.replace(config, resume=True)
    with pytest.raises(ValueError, match="batch_size: saved 32, requested 64"):
        multi_seed.train_seeds(dataclasses.replace(resume, batch_size=64), agent_config, (0, 1))
    with pytest.raises(FileNotFoundError, match="seed_7 does not exist"):
        multi_seed.train_seeds(resume, agent_config, (0, 7))
    _garble(checkpoint.step_dir(seed_dirs[1] / "checkpoints", 40))
    with pytest.raises(checkpoint.CheckpointError, match="--resume-from 20"):
        multi_seed.train_seeds(resume, agent_config, (0, 1))
    with run_directory.own(seed_dirs[1]):
        with pytest.raises(run_directory.RunLockedError, match="seed_1 is in use"):
            multi_seed.train_seeds(dataclasses.replace(resume, resume_from=20), agent_config,
                                   (0, 1))
    multi_seed.train_seeds(dataclasses.replace(resume, resume_from=20), agent_config, (0, 1))
    for run in seed_dirs:
        assert checkpoint.list_steps(run / "checkpoints") == [20, 40]
        assert (run / "checkpoints" / "discarded" / "step_000000040").is_dir()
        assert _csv_steps(run) == [10, 20, 30, 40]
        # One software record per attempt that trained (the refused ones wrote none).
        attempts = json.loads((run / "environment.json").read_text())["attempts"]
        assert [a["from_step"] for a in attempts] == [0, 20]
