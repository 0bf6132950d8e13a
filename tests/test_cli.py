"""The scripts in ``experiments/`` as a user runs them: a mistake in the input ends in one
``error: ...`` line, last on stderr, with exit status 2, and no traceback. Checks that involve a
checkpoint library's threads or another process run the script as a subprocess; the others call
its ``main`` through :func:`cdp_jax.cli.run` in this process, what ``python <script>`` does (the
same code path, without a fresh interpreter and JAX start-up per check).

One tiny dataset and one saved run (``config.json`` and two checkpoints of an initialised agent,
no training) serve the whole module; every command fails before anything is compiled.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from cdp_jax import checkpoint, cli, run_config, run_directory, training
from cdp_jax.agents import dql
from cdp_jax.data import minari
from cdp_jax.data.builders import pointmaze

ROOT = Path(__file__).resolve().parents[1]
DATASET = "cdp/pointmaze/tiny-v0"


@pytest.fixture(scope="module")
def saved_run(minari_root, tmp_path_factory):
    """A run as train.py leaves it after 40 steps (checkpoints 20 and 40), minus the training."""
    pointmaze.build("umaze", num_steps=3000, seed=0, dataset_id=DATASET,
                    num_reference_episodes=2)
    run = tmp_path_factory.mktemp("runs") / "saved"
    config = run_config.TrainConfig(
        name="saved", dataset=DATASET, steps=40, batch_size=32, updates_per_call=10,
        eval_every=20, eval_episodes=2, eval_envs=2, checkpoint_every=20, run_dir=str(run),
        progress=False)
    agent_config = run_config.resolve_agent_config(config, dql.default_config(
        actor_hidden_dim=32, critic_hidden_dim=32, time_dim=16, diffusion_steps=10,
        sampler_steps=3))
    data = minari.load(DATASET)
    _, norm = training.prepare_arrays(data, "dql", agent_config, config)
    state = dql.init(jax.random.PRNGKey(0), agent_config, data.obs_dim, data.act_dim)
    run.mkdir()
    run_directory.write_json(run / "config.json", run_config.config_dict(config, agent_config))
    meta = {"config": run_config.config_dict(config, agent_config), "normalizer": norm.to_dict(),
            "dataset": {"id": DATASET, "obs_keys": list(data.obs_keys),
                        "obs_dim": data.obs_dim, "action_dim": data.act_dim},
            "eval_history": [], "finite": True}
    manager = checkpoint.CheckpointManager(run / "checkpoints")
    for step in (20, 40):
        manager.save(step, {"state": state, "rng": jax.random.PRNGKey(1)}, meta)
    return run


def _copy(run, tmp_path):
    return Path(shutil.copytree(run, tmp_path / run.name))


def _script(name, *args):
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{name}.py"), *args],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    return out.returncode, out.stderr.strip().splitlines()[-1], out.stderr


def _in_process(capsys, name, *args):
    """``_script``'s result from ``cli.run(<script>.main, args)`` in this process."""
    capsys.readouterr()  # drop earlier output
    code = cli.run(_load(name).main, list(args))
    stderr = capsys.readouterr().err.strip()
    return code, (stderr.splitlines() or [""])[-1], stderr


def _assert_error_line(result, *fragments):
    code, last, stderr = result
    assert code == cli.EXIT_USER_ERROR, stderr[-3000:]
    assert last.startswith("error: "), stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, last
    assert "Traceback" not in stderr and "Event loop is closed" not in stderr, stderr[-3000:]


def test_train_resume_without_a_run(saved_run, tmp_path, capsys):
    missing = tmp_path / "typo"
    _assert_error_line(_in_process(capsys, "train", "--resume", "--run-dir", str(missing)),
                       f"run directory {missing} does not exist")
    assert not missing.exists()


def test_train_resume_conflicts_name_each_field(saved_run, capsys):
    before = (saved_run / "config.json").read_text()
    _assert_error_line(
        _in_process(capsys, "train", "--resume", "--run-dir", str(saved_run), "--batch-size",
                    "64", "--dataset", "cdp/pointmaze/umaze-v0", "--set", "eta=2", "--steps", "80"),
        "batch_size: saved 32, requested 64",
        f"dataset: saved '{DATASET}', requested 'cdp/pointmaze/umaze-v0'",
        "agent.eta: saved 1.0, requested 2.0")
    assert (saved_run / "config.json").read_text() == before


def test_train_damaged_checkpoint_is_one_message(saved_run, tmp_path):
    run = _copy(saved_run, tmp_path)
    state = checkpoint.step_dir(run / "checkpoints", 40) / "state"
    data = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:100])
    _assert_error_line(_script("train", "--resume", "--run-dir", str(run)),
                       f"checkpoint {state.parent} is damaged", "Other checkpoints: [20]",
                       "--resume --resume-from 20")


def test_train_invalid_value_is_one_message(saved_run, tmp_path, capsys):
    _assert_error_line(_in_process(capsys, "train", "--set", "actor_lr=nan", "--run-dir",
                                   str(tmp_path)),
                       "Invalid actor_lr=nan; must be a finite number.")


def test_train_on_a_run_another_process_owns(saved_run):
    with run_directory.own(saved_run):
        _assert_error_line(_script("train", "--resume", "--run-dir", str(saved_run)),
                           f"run directory {saved_run} is in use by another process "
                           f"(pid {os.getpid()}")


def test_evaluate_errors(saved_run, tmp_path, capsys):
    missing = tmp_path / "missing"
    _assert_error_line(_in_process(capsys, "evaluate", str(missing)),
                       f"run directory {missing} does not exist")

    run = _copy(saved_run, tmp_path)
    (checkpoint.step_dir(run / "checkpoints", 40) / "meta.json").write_text("{")
    _assert_error_line(_in_process(capsys, "evaluate", str(run)),
                       "step_000000040 is damaged: cannot read meta.json",
                       "Other checkpoints: [20]", "--checkpoint STEP")

    # an evaluation of checkpoint 20 with the default tag exists: never silently replaced
    existing = run / "eval_20_eval.json"
    existing.write_text("{}")
    _assert_error_line(_in_process(capsys, "evaluate", str(run), "--checkpoint", "20"),
                       f"{existing} exists", "--tag", "--overwrite")
    assert existing.read_text() == "{}"


def test_unreadable_files_are_one_message(saved_run, tmp_path, capsys):
    """A config.json, a D4RL file and a study's results file cut short: one line each, naming
    the file and how to get it back; nothing is written."""
    run = _copy(saved_run, tmp_path)
    (run / "config.json").write_text('{"train": {"name": "sav')
    _assert_error_line(_in_process(capsys, "evaluate", str(run)),
                       f"{run / 'config.json'} is unreadable (JSONDecodeError",
                       "step_000000040/meta.json): restore it from there")

    d4rl_file = tmp_path / "hopper_medium-v2.hdf5"
    d4rl_file.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    _assert_error_line(_in_process(capsys, "make_dataset", "d4rl", "--file", str(d4rl_file)),
                       f"D4RL file {d4rl_file} is unreadable (OSError: ",
                       "nothing was imported. To import it, download it again")

    results = tmp_path / "results"
    results.mkdir()
    (results / "offline_rl.json").write_text('{"cells": {"umaze')
    _assert_error_line(_in_process(capsys, "report_results", "--results", str(results),
                                   "--figures", str(tmp_path / "figures")),
                       f"{results / 'offline_rl.json'} is unreadable", "--collect-only")
    assert sorted(p.name for p in results.iterdir()) == ["offline_rl.json"]


def test_evaluate_checkpoint_flag_is_validated(capsys):
    evaluate = _load("evaluate")
    for bad in ("abc", "-5", "1.5"):
        with pytest.raises(SystemExit) as err:
            evaluate.parse_args(["runs/x", "--checkpoint", bad])
        assert err.value.code == 2
        assert f"invalid value {bad!r}" in capsys.readouterr().err
    assert evaluate.parse_args(["runs/x", "--checkpoint", "best"]).checkpoint == "best"
    assert evaluate.parse_args(["runs/x", "--checkpoint", "20"]).checkpoint == 20
    assert evaluate.parse_args(["runs/x"]).checkpoint is None


def test_train_help_documents_resume_from(capsys):
    train = _load("train")
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--resume-from STEP" in text and "--resume-from STEP" in train.__doc__
    for field in run_config.RESUME_MAY_CHANGE:
        assert field in text


def test_make_dataset_unknown_env_is_one_message(minari_root):
    _assert_error_line(_script("make_dataset", "random", "--env-id", "NoSuchEnv-v0",
                               "--num-steps", "10"), "NoSuchEnv")


def test_user_errors_and_bugs():
    """Only the project's checks become one line; the same type from elsewhere is a bug."""
    def main(argv):
        run_config.TrainConfig(name="").validate()

    assert cli.run(main) == cli.EXIT_USER_ERROR
    with pytest.raises(ValueError, match="reshape"):  # raised inside numpy: a bug
        cli.run(lambda argv: np.reshape(np.ones(3), (2,)))
    with pytest.raises(ValueError, match="invalid literal"):
        cli.run(lambda argv: int("x"))
    assert cli.run(lambda argv: None) == 0 and cli.run(lambda argv: {"a": 1}) == 0
    err = checkpoint.CheckpointError("damaged")
    assert cli.is_user_error(err)


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_cli_{name}", ROOT / "experiments" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
