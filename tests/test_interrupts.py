"""Ctrl-C and SIGTERM: one line, exit status 130, nothing lost or half-written, for training
(one seed and several), evaluation, dataset builds and studies (cdp_jax/interrupts.py).

The scripts run through :func:`cdp_jax.cli.run` as ``python <script>`` does, in this process with
the device part and the rollouts replaced by cheap stand-ins; the signal is sent to this process
at a point the test chooses (after a given chunk, during an evaluation, during a checkpoint
save). A study's interrupt is forwarded to its ``train.py``, so that check runs two small
processes. ``test_real_train_script_*`` runs ``experiments/train.py`` itself, signalled when its
first checkpoint appears.
"""

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import checkpoint, cli, interrupts, multi_seed, run_config, training
from cdp_jax.data.builders import pointmaze, random_policy, writer

ROOT = Path(__file__).resolve().parents[1]
DATASET = "cdp/pointmaze/tiny-v0"
REAL_CALL_CHUNK = training.call_chunk
AGENT = ["--set", "actor_hidden_dim=32", "--set", "critic_hidden_dim=32", "--set", "time_dim=16",
         "--set", "diffusion_steps=10", "--set", "sampler_steps=3"]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_interrupts_{name}",
                                                  ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def datasets_path(minari_root):
    pointmaze.build("umaze", num_steps=2000, seed=0, dataset_id=DATASET, num_reference_episodes=2)
    return minari_root


@pytest.fixture
def stand_ins(datasets_path, monkeypatch):
    """Cheap device part and rollouts. The chunk moves the actor parameters and draws its
    "losses" from ``fold_in(key, step)``, so a resumed run reproduces the straight one only if
    the state and key were restored; the evaluation scores the parameters."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(datasets_path))

    def make_chunk(agent, num_updates, batch_size, batch_sharding=None):
        def chunk(state, arrays, key, num_rows=None):
            losses = jax.random.uniform(jax.random.fold_in(key, state.step), (num_updates,))
            params = jax.tree.map(lambda p: p + 1e-3 * losses[0], state.actor_params)
            return (state.replace(actor_params=params, step=state.step + num_updates),
                    {"actor/loss": losses, "critic/loss": 2.0 * losses})
        return chunk

    def evaluate(act_fn, agent_name, state, data, norm, envs, config, step, reset_seeds=None):
        score = float(jnp.sum(state.actor_params["params"]["Dense_0"]["bias"]))
        return {"returns": [score], "successes": [False], "return_mean": score,
                "return_std": 0.0, "return_sem": None, "success_rate": 0.0, "length_mean": 1.0,
                "episodes": 1}

    monkeypatch.setattr(training, "make_train_chunk", make_chunk)
    monkeypatch.setattr(training, "run_evaluation", evaluate)


def _train_args(run, *extra):
    return ["--dataset", DATASET, "--steps", "40", "--batch-size", "32", "--updates-per-call",
            "10", "--eval-every", "20", "--checkpoint-every", "20", "--eval-episodes", "2",
            "--eval-envs", "2", "--run-dir", str(run), "--no-progress", *AGENT, *extra]


def _run(capsys, name, args):
    """``cli.run(<script>.main, args)``: exit status, stdout, stderr."""
    capsys.readouterr()
    code = cli.run(_load(name).main, list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _signal_after_chunk(monkeypatch, module, at_step, signum):
    """Send ``signum`` to this process when the chunk that reaches ``at_step`` returns (the
    interrupt then lands before the loop records that step)."""
    def call_chunk(chunk, args, config):
        out = REAL_CALL_CHUNK(chunk, args, config)
        if int(np.max(out[0].step)) == at_step:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(module, "call_chunk", call_chunk)


def _assert_interrupt_line(code, out, err, *fragments):
    assert code == interrupts.EXIT_INTERRUPTED, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    last = err.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last
    return last


def _rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if not k.startswith("time/")}
                for r in csv.DictReader(f)]


def _evaluations(run):
    return [{k: v for k, v in e.items() if k != "timing"}
            for e in json.loads((run / "eval.json").read_text())["evaluations"]]


def _tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def _assert_same_run(a, b):
    """Bitwise the same final parameters, metrics, evaluations and TensorBoard scalars."""
    pa, pb = run_config.load_policy(a)[2], run_config.load_policy(b)[2]
    assert int(pa.step) == int(pb.step)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert _rows(a) == _rows(b)
    assert _evaluations(a) == _evaluations(b)
    ta, tb = _tensorboard(a), _tensorboard(b)
    for tag in ("actor/loss", "critic/loss", "eval/return_mean"):
        assert ta[tag] == tb[tag], tag


def test_handler_defers_and_ignores_repeats():
    """SIGTERM raises Interrupted as SIGINT does; inside ``deferred`` it waits for the block's
    end; once raised, repeats are ignored; outside ``handled`` nothing changes."""
    before = signal.getsignal(signal.SIGTERM)
    with interrupts.handled():
        with pytest.raises(interrupts.Interrupted) as err:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # not reached: the handler raises at once
        assert err.value.signum == signal.SIGTERM
    with interrupts.handled():
        done = []
        with pytest.raises(interrupts.Interrupted):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("the block ran to its end")
            done.append("not reached")
        assert done == ["the block ran to its end"]
        os.kill(os.getpid(), signal.SIGINT)  # a repeat while the first is handled: ignored
    assert signal.getsignal(signal.SIGTERM) is before
    line = interrupts.Interrupted("stopped", then=interrupts.Then(extra=("--resume",))).line(
        "experiments/x.py", ["--name", "a b"])
    assert line == "stopped; resume with: python experiments/x.py --name 'a b' --resume"


def test_cli_prints_one_line_and_exits_130(capsys):
    def main(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        finally:
            raise RuntimeError("a cleanup that fails as the interrupt unwinds")

    assert cli.run(main, []) == interrupts.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err == "interrupted (SIGTERM)\n"


def test_train_interrupt_between_checkpoints_saves_and_resumes_exactly(stand_ins, tmp_path,
                                                                       monkeypatch, capsys):
    """Ctrl-C while the chunk after step 30 runs (checkpoints every 20): step 30 is checkpointed,
    the line says so, and --resume ends where an uninterrupted run ends, bitwise."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert _run(capsys, "train", _train_args(straight))[0] == 0
    _signal_after_chunk(monkeypatch, training, 40, signal.SIGINT)
    code, out, err = _run(capsys, "train", _train_args(run))
    line = _assert_interrupt_line(
        code, out, err, f"interrupted at step 30 of 40; last checkpoint kept: step 30 ({run}/"
        f"checkpoints); resume with: python experiments/train.py --run-dir {run} --resume")
    assert line.startswith("interrupted at step 30")
    assert checkpoint.list_steps(run / "checkpoints") == [20, 30]
    assert not list((run / "checkpoints").glob(".tmp*"))
    monkeypatch.setattr(training, "call_chunk", REAL_CALL_CHUNK)
    assert _run(capsys, "train", ["--run-dir", str(run), "--resume"])[0] == 0
    _assert_same_run(straight, run)


def test_train_sigterm_during_an_evaluation_keeps_the_step_before(stand_ins, tmp_path,
                                                                  monkeypatch, capsys):
    """SIGTERM during the evaluation at step 20: that step is not complete, so step 10 (its
    logs and evaluations complete) is checkpointed; the resume redoes step 20 and its
    evaluation and ends as the straight run."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert _run(capsys, "train", _train_args(straight))[0] == 0
    evaluate = training.run_evaluation

    def interrupted_evaluation(*args, **kwargs):
        if args[7] == 20:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "run_evaluation", interrupted_evaluation)
    code, out, err = _run(capsys, "train", _train_args(run))
    _assert_interrupt_line(code, out, err, "interrupted at step 10 of 40 (SIGTERM); last "
                           f"checkpoint kept: step 10 ({run}/checkpoints); resume with:")
    assert checkpoint.list_steps(run / "checkpoints") == [10]
    meta = checkpoint.read_meta(run / "checkpoints", 10)
    assert meta["eval_history"] == [] and meta["interrupted"] is True
    monkeypatch.setattr(training, "run_evaluation", evaluate)
    assert _run(capsys, "train", ["--run-dir", str(run), "--resume"])[0] == 0
    _assert_same_run(straight, run)


def test_train_interrupt_during_a_checkpoint_save_lets_it_finish(stand_ins, tmp_path,
                                                                 monkeypatch, capsys):
    """Ctrl-C while the checkpoint of step 20 is written: it is written whole first."""
    real_save = checkpoint.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 20:
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(checkpoint.CheckpointManager, "save", save)
    run = tmp_path / "run"
    code, out, err = _run(capsys, "train", _train_args(run))
    _assert_interrupt_line(code, out, err, "interrupted at step 20 of 40; last checkpoint kept: "
                           "step 20")
    assert checkpoint.list_steps(run / "checkpoints") == [20]
    checkpoint.verify(run / "checkpoints", 20)  # every file as written
    assert [e["gradient_step"] for e in _evaluations(run)] == [20]


def test_train_interrupt_before_the_first_checkpoint(stand_ins, tmp_path, monkeypatch, capsys):
    """Interrupted in the first chunk: no step completed, no checkpoint, and --resume starts
    over (config.json is there)."""
    _signal_after_chunk(monkeypatch, training, 10, signal.SIGINT)
    run = tmp_path / "run"
    code, out, err = _run(capsys, "train", _train_args(run))
    _assert_interrupt_line(code, out, err, "interrupted at step 0 of 40; no checkpoint was "
                           f"written; resume with: python experiments/train.py --run-dir {run} "
                           "--resume")
    assert checkpoint.list_steps(run / "checkpoints") == []


def test_seeds_interrupt_saves_every_seed_and_names_seeds_and_run_dir(stand_ins, tmp_path,
                                                                      monkeypatch, capsys):
    """``--seeds``: every seed checkpointed at the same step; the line's command has --seeds
    and --run-dir as given, and resumes to the uninterrupted result."""

    def evaluate_seeds(act_fn, agent_name, states, data, norms, envs, config, seeds, step):
        scores = np.asarray(jnp.sum(states.actor_params["params"]["Dense_0"]["bias"], axis=-1))
        return [{"returns": [float(x)], "successes": [False], "return_mean": float(x),
                 "return_std": 0.0, "return_sem": None, "success_rate": 0.0,
                 "length_mean": 1.0, "episodes": 1} for x in scores]

    def init_seeds(agent, keys, config, obs_dim, action_dim):  # vmap(init) compiles for ~7 s
        states = [agent.init(k, config, obs_dim, action_dim) for k in keys]
        return jax.tree.map(lambda *x: jnp.stack(x), *states)

    monkeypatch.setattr(multi_seed, "evaluate_seeds", evaluate_seeds)
    monkeypatch.setattr(multi_seed, "init_seeds", init_seeds)
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert _run(capsys, "train", _train_args(straight, "--seeds", "0-1"))[0] == 0
    _signal_after_chunk(monkeypatch, multi_seed, 40, signal.SIGINT)
    code, out, err = _run(capsys, "train", _train_args(run, "--seeds", "0-1"))
    _assert_interrupt_line(
        code, out, err, f"interrupted at step 30 of 40; last checkpoint kept: step 30 ({run}/"
        f"seed_*/checkpoints); resume with: python experiments/train.py --seeds 0-1 --run-dir "
        f"{run} --resume")
    for seed in (0, 1):
        assert checkpoint.list_steps(run / f"seed_{seed}" / "checkpoints") == [20, 30]
    monkeypatch.setattr(multi_seed, "call_chunk", REAL_CALL_CHUNK)
    assert _run(capsys, "train", ["--seeds", "0-1", "--run-dir", str(run), "--resume"])[0] == 0
    for seed in (0, 1):
        _assert_same_run(straight / f"seed_{seed}", run / f"seed_{seed}")


def test_evaluate_interrupt_writes_nothing(stand_ins, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert _run(capsys, "train", _train_args(run, "--steps", "20"))[0] == 0

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)

    monkeypatch.setattr(training, "run_evaluation", interrupted)
    code, out, err = _run(capsys, "evaluate", [str(run), "--tag", "x"])
    _assert_interrupt_line(code, out, err, f"interrupted while evaluating {run} (checkpoint "
                           f"step 20, 2 episodes): nothing was written ({run}/eval_20_x.json: "
                           "not written); run it again with: python experiments/evaluate.py")
    assert not list(run.glob("eval_20_x.json*"))


def test_dataset_build_interrupts_leave_nothing(minari_root, monkeypatch, capsys):
    """While collecting: nothing was written. While writing: the partial files are removed with
    the build's scratch directory. Either way no dataset, no scratch directory, one line."""
    args = ["random", "--env-id", "CartPole-v1", "--num-steps", "50", "--dataset-id",
            "cdp/test/interrupted-v0"]
    collect = random_policy.collect

    def interrupted_collect(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return collect(*a, **k)

    monkeypatch.setattr(random_policy, "collect", interrupted_collect)
    code, out, err = _run(capsys, "make_dataset", args)
    final = minari_root / "cdp/test/interrupted-v0"
    _assert_interrupt_line(code, out, err, "interrupted while building 'cdp/test/interrupted-v0':"
                           f" nothing was written (no dataset at {final}); run it again with: "
                           f"python experiments/make_dataset.py {' '.join(args)}")
    monkeypatch.setattr(random_policy, "collect", collect)

    import minari

    def write_half_then_interrupt(dataset_id, *a, **k):
        scratch = Path(os.environ["MINARI_DATASETS_PATH"])
        (scratch / "partial.hdf5").write_bytes(b"half an episode" * 100)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)

    monkeypatch.setattr(minari, "create_dataset_from_buffers", write_half_then_interrupt)
    code, out, err = _run(capsys, "make_dataset", args)
    _assert_interrupt_line(code, out, err, "interrupted while writing 'cdp/test/interrupted-v0':"
                           " nothing was written (its partial files were removed with "
                           f"{minari_root}/{writer.SCRATCH_PREFIX}")
    assert not final.exists() and not list(minari_root.glob(writer.SCRATCH_PREFIX + "*"))


# A study of one cell whose train.py is a stand-in: it says it is ready, waits to be interrupted
# and then prints the line train.py prints. SIGTERM goes to the study alone, as a scheduler's
# `kill <pid>` would: the study forwards it.
STUDY = textwrap.dedent("""
    import sys, types
    sys.path.insert(0, {experiments!r})
    import study_runner
    from cdp_jax import cli

    CHILD = '''
    import sys, time
    from cdp_jax import cli, interrupts
    def main(argv):
        print("ready", flush=True)
        try:
            time.sleep(120)
        except KeyboardInterrupt as err:
            raise interrupts.Interrupted(
                "interrupted at step 3 of 10 (" + interrupts.describe_signal(err.signum)
                + "); last checkpoint kept: step 3 (x/checkpoints)",
                signum=err.signum, then=interrupts.Then(args=("--resume",))) from None
    sys.exit(cli.run(main))
    '''
    cell = study_runner.Cell("s", "c", "dql", "d", None, 0.1)
    study_runner.Cell.command = lambda self, args: [sys.executable, "-c", CHILD]
    args = types.SimpleNamespace(runs_root={runs!r})
    sys.exit(cli.run(lambda argv: study_runner.run_cells("grid", [cell], args), []))
""")


def test_study_forwards_the_interrupt_and_names_the_cell(tmp_path):
    script = STUDY.format(experiments=str(ROOT / "experiments"), runs=str(tmp_path))
    study = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
    log = tmp_path / "s" / "c.log"
    deadline = time.time() + 120
    while "ready" not in (log.read_text() if log.exists() else "") and time.time() < deadline:
        assert study.poll() is None, study.communicate()
        time.sleep(0.05)
    study.send_signal(signal.SIGTERM)
    out, err = study.communicate(timeout=120)
    assert study.returncode == interrupts.EXIT_INTERRUPTED, err
    assert "Traceback" not in out + err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("interrupted in cell c: at step 3 of 10 (SIGTERM); last checkpoint "
                          f"kept: step 3 (x/checkpoints); log: {log}; resume the study with: "
                          "python "), err
    assert "(SIGTERM)" in log.read_text()  # the child got the study's signal


def _script(*args, env=None):
    return subprocess.Popen([sys.executable, str(ROOT / "experiments" / "train.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env)


def _signal_at_first_checkpoint(proc, run, signum):
    """Send ``signum`` once ``run``'s first checkpoint exists."""
    deadline = time.time() + 600
    while not checkpoint.list_steps(run / "checkpoints") and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    return proc.communicate(timeout=600)


def _real_args(run, steps):
    # Long enough that the signal arrives mid-run; the learning-rate decay fixed so that a run
    # resumed with fewer --steps trains as a run that was started with them.
    return _train_args(run, "--steps", str(steps), "--set", "lr_decay_steps=1000",
                       "--max-episode-steps", "10")


def test_real_train_script_sigterm_before_training(datasets_path, tmp_path):
    """``experiments/train.py`` itself, sent SIGTERM as soon as it prints its first line (before
    anything is compiled): exit status 130, one line, no traceback."""
    env = {**os.environ, "MINARI_DATASETS_PATH": str(datasets_path)}
    run = tmp_path / "run"
    proc = _script(*_real_args(run, 100), env=env)
    first = proc.stdout.readline()
    assert first.startswith("JAX backend:"), first + proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    last = _assert_interrupt_line(proc.returncode, out, err, "interrupted ", "(SIGTERM)")
    assert len(err.strip().splitlines()) == 1, err
    assert checkpoint.list_steps(run / "checkpoints") == []
    assert last.startswith(("interrupted (SIGTERM)", "interrupted at step 0 of 100 (SIGTERM); "
                            "no checkpoint was written; ")), last


@pytest.mark.slow
def test_real_train_script_sigterm_resume(datasets_path, tmp_path):
    """``experiments/train.py`` itself, stopped by SIGTERM once its first checkpoint exists:
    exit status 130, one line, no traceback, and --resume finishes."""
    env = {**os.environ, "MINARI_DATASETS_PATH": str(datasets_path)}
    run = tmp_path / "run"
    out, err = _signal_at_first_checkpoint(_script(*_real_args(run, 100_000), env=env), run,
                                           signal.SIGTERM)
    last = _assert_interrupt_line(interrupts.EXIT_INTERRUPTED, out, err, "(SIGTERM); last "
                                  "checkpoint kept: step ", "; resume with: python "
                                  f"experiments/train.py --run-dir {run} --resume")
    stopped = int(last.split()[3])
    assert checkpoint.list_steps(run / "checkpoints")[-1] == stopped >= 20
    resumed = subprocess.run([sys.executable, "experiments/train.py", "--run-dir", str(run),
                              "--resume", "--steps", str(stopped + 10)], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert checkpoint.list_steps(run / "checkpoints")[-1] == stopped + 10


@pytest.mark.slow
def test_real_train_script_sigint_resumes_to_the_uninterrupted_run(datasets_path, tmp_path):
    """Ctrl-C (SIGINT) to ``experiments/train.py`` once its first checkpoint exists, then
    ``--resume``: the final parameters, metrics, evaluations and TensorBoard scalars equal an
    uninterrupted run's."""
    env = {**os.environ, "MINARI_DATASETS_PATH": str(datasets_path)}
    straight, run, steps = tmp_path / "straight", tmp_path / "run", 200
    done = subprocess.run([sys.executable, "experiments/train.py", *_real_args(straight, steps)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out, err = _signal_at_first_checkpoint(_script(*_real_args(run, 100_000), env=env), run,
                                           signal.SIGINT)
    last = _assert_interrupt_line(interrupts.EXIT_INTERRUPTED, out, err, "; resume with: python "
                                  f"experiments/train.py --run-dir {run} --resume")
    assert int(last.split()[3]) < steps, last
    resumed = subprocess.run([sys.executable, "experiments/train.py", "--run-dir", str(run),
                              "--resume", "--steps", str(steps)], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(straight, run)
