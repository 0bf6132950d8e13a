"""A dataset rebuilt with other content under the same id: a run records what it trained on
(``config.json``'s ``"dataset"``: id, episodes, transitions, SHA-256 of the arrays), ``--resume``
refuses a changed dataset with one ``error:`` line unless the change is accepted (recorded in
``environment.json``), a run from before the record resumes with a note, and ``evaluate.py``
warns (cdp_jax/data/fingerprint.py, cdp_jax/run_directory.py).

The scripts run through :func:`cdp_jax.cli.run` in this process with the device part and the
rollouts replaced by cheap stand-ins (what is tested is the bookkeeping around them).
"""

import dataclasses
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import cli, run_config, run_directory, training
from cdp_jax.data import dataset as dataset_lib
from cdp_jax.data import fingerprint, minari
from cdp_jax.data.builders import pointmaze

ROOT = Path(__file__).resolve().parents[1]
DATASET = "cdp/pointmaze/ident-v0"


def _episodes(values):
    return [{"obs": np.full((4, 2), v, np.float32) + np.arange(4)[:, None],
             "actions": np.zeros((3, 1)), "rewards": np.ones(3), "terminals": [0, 0, 1],
             "timeouts": [0, 0, 0], "id": i} for i, v in enumerate(values)]


def _data(values, obs_keys=()):
    return dataset_lib.concat_episodes(_episodes(values), dataset_id="x", obs_keys=obs_keys)


def test_fingerprint_follows_the_content():
    a = fingerprint.sha256(_data([0.0, 1.0]))
    assert a == fingerprint.sha256(_data([0.0, 1.0])) and len(a) == 64
    assert a != fingerprint.sha256(_data([0.0, 2.0]))  # one episode's observations
    assert a != fingerprint.sha256(_data([0.0, 1.0, 2.0]))  # one more episode
    assert a != fingerprint.sha256(_data([0.0, 1.0], obs_keys=("observation",)))
    data = _data([0.0, 1.0])
    last = data.next_observations.copy()
    last[-1] += 1.0  # the final next observation, in no other row
    assert a != fingerprint.sha256(dataclasses.replace(data, next_observations=last))
    record = fingerprint.record(data, files={})
    assert record == {"id": "x", "episodes": 2, "transitions": 6, "sha256": a, "files": {}}


def test_check_dataset_unchanged_changed_accepted_and_old(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recorded = fingerprint.record(_data([0.0, 1.0]), files={})
    now = fingerprint.record(_data([0.0, 2.0, 3.0]), files={})
    run_directory.write_json(run / "config.json", {"train": {}, "agent": {}})
    note, change = run_directory.check_dataset(run, recorded)
    assert note.startswith(f"note: {run}/config.json records no fingerprint of its dataset")
    assert change is None
    run_directory.write_json(run / "config.json", {"train": {}, "dataset": recorded})
    assert run_directory.check_dataset(run, recorded) == (None, None)
    with pytest.raises(run_directory.DatasetChangedError) as err:
        run_directory.check_dataset(run, now)
    assert str(err.value) == (
        f"the dataset x changed since the run in {run} started (recorded: 2 episodes, 6 "
        f"transitions, sha256 {recorded['sha256'][:12]}; now: 3 episodes, 9 transitions, sha256 "
        f"{now['sha256'][:12]}): start a new run (another --name / --run-dir), or pass "
        "--accept-changed-data to continue on the new data (recorded in the run's "
        "environment.json).")
    note, change = run_directory.check_dataset(run, now, accept_changed=True)
    assert "continuing on the new data as --accept-changed-data asks" in note
    assert change["dataset_changed"]["accepted"] is True
    assert change["dataset_changed"]["recorded"]["sha256"] == recorded["sha256"]
    assert change["dataset_changed"]["now"]["transitions"] == 9


@pytest.fixture(scope="module")
def built(minari_root):
    _build(seed=0)


@pytest.fixture
def stand_ins(built, monkeypatch):
    def make_chunk(agent, num_updates, batch_size, batch_sharding=None):
        def chunk(state, arrays, key, num_rows=None):
            params = jax.tree.map(lambda p: p + 1e-3, state.actor_params)
            return (state.replace(actor_params=params, step=state.step + num_updates),
                    {"actor/loss": jnp.zeros(num_updates)})
        return chunk

    def evaluate(act_fn, agent_name, state, data, norm, envs, config, step, reset_seeds=None):
        return {"returns": [1.0], "successes": [False], "return_mean": 1.0, "return_std": 0.0,
                "return_sem": None, "success_rate": 0.0, "length_mean": 1.0, "episodes": 1,
                "reset_seeds": [0]}

    monkeypatch.setattr(training, "make_train_chunk", make_chunk)
    monkeypatch.setattr(training, "run_evaluation", evaluate)


def _build(seed):
    pointmaze.build("umaze", num_steps=1000, seed=seed, dataset_id=DATASET,
                    num_reference_episodes=2, overwrite=True)


def _run(capsys, name, args):
    spec = importlib.util.spec_from_file_location(f"_ident_{name}",
                                                  ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    code = cli.run(module.main, list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _attempts(run):
    return json.loads((run / "environment.json").read_text())["attempts"]


def test_resume_refuses_changed_data_until_accepted(stand_ins, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ["--dataset", DATASET, "--steps", "10", "--updates-per-call", "10", "--eval-every",
            "10", "--checkpoint-every", "10", "--eval-episodes", "1", "--eval-envs", "1",
            "--batch-size", "8", "--run-dir", str(run), "--no-progress", "--set",
            "actor_hidden_dim=16", "--set", "critic_hidden_dim=16", "--set", "time_dim=8"]
    assert _run(capsys, "train", args)[0] == 0
    recorded = json.loads((run / "config.json").read_text())["dataset"]
    data = minari.load(DATASET)
    assert recorded["sha256"] == fingerprint.sha256(data) and recorded["id"] == DATASET
    assert (recorded["transitions"], recorded["episodes"]) == (len(data), data.num_episodes)

    # unchanged: resumes without a word about the data; evaluate.py needs no full load
    code, out, err = _run(capsys, "train", ["--run-dir", str(run), "--resume", "--steps", "20"])
    assert code == 0 and "dataset" not in out + err, out + err
    loads = []
    load = minari.load
    monkeypatch.setattr(minari, "load", lambda *a, **k: loads.append(k) or load(*a, **k))
    code, out, err = _run(capsys, "evaluate", [str(run), "--tag", "same"])
    assert code == 0 and "warning" not in err and loads == [{"num_episodes": 1}], err

    # rebuilt with another seed: evaluate.py warns, a resume is refused with one error line
    _build(seed=1)
    new = fingerprint.record(minari.load(DATASET))
    assert new["sha256"] != recorded["sha256"]
    code, out, err = _run(capsys, "evaluate", [str(run), "--tag", "changed"])
    assert code == 0, err
    assert err.strip().splitlines()[0] == (
        f"warning: the dataset {DATASET} changed since {run} was trained on it (recorded: "
        f"{run_directory.describe_dataset(recorded)}; now: "
        f"{run_directory.describe_dataset(new)}): the policy is evaluated as trained, but "
        "normalised scores use the new dataset's reference scores.")
    before = (run / "config.json").read_text()
    code, out, err = _run(capsys, "train", ["--run-dir", str(run), "--resume", "--steps", "30"])
    assert code == cli.EXIT_USER_ERROR and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: the dataset {DATASET} changed since the run in {run} started (recorded: "
        f"{recorded['episodes']} episodes, {recorded['transitions']} transitions, sha256 "
        f"{recorded['sha256'][:12]}; now: {new['episodes']} episodes, {new['transitions']} "
        f"transitions, sha256 {new['sha256'][:12]}): start a new run (another --name / "
        "--run-dir), or pass --accept-changed-data to continue on the new data (recorded in "
        "the run's environment.json).")
    assert (run / "config.json").read_text() == before and len(_attempts(run)) == 2

    # accepted: trains on, the acceptance in environment.json, the new content in config.json
    if "--accept-changed-data" in (ROOT / "experiments" / "train.py").read_text():
        code, out, err = _run(capsys, "train", ["--run-dir", str(run), "--resume", "--steps",
                                                "30", "--accept-changed-data"])
        assert code == 0, err
        assert "continuing on the new data as --accept-changed-data asks" in out
    else:  # until train.py has the flag: the library call it makes
        config, agent_config = run_config.resume_configs(run, {"steps": 30})
        training.train(config, agent_config, accept_changed_data=True)
    change = _attempts(run)[-1]["dataset_changed"]
    assert change["accepted"] is True and change["now"]["sha256"] == new["sha256"]
    assert change["recorded"]["sha256"] == recorded["sha256"]
    assert json.loads((run / "config.json").read_text())["dataset"]["sha256"] == new["sha256"]
    assert "dataset_changed" not in _attempts(run)[0]


def test_a_run_without_a_record_resumes_with_a_note(stand_ins, tmp_path, capsys):
    run = tmp_path / "old"
    args = ["--dataset", DATASET, "--steps", "10", "--updates-per-call", "10", "--eval-every",
            "10", "--checkpoint-every", "10", "--eval-episodes", "1", "--eval-envs", "1",
            "--batch-size", "8", "--run-dir", str(run), "--no-progress", "--set",
            "actor_hidden_dim=16", "--set", "critic_hidden_dim=16", "--set", "time_dim=8"]
    assert _run(capsys, "train", args)[0] == 0
    saved = json.loads((run / "config.json").read_text())
    del saved["dataset"]  # as a run started before runs recorded their data
    run_directory.write_json(run / "config.json", saved)
    code, out, err = _run(capsys, "train", ["--run-dir", str(run), "--resume", "--steps", "20"])
    assert code == 0, err
    notes = [line for line in out.splitlines() if "fingerprint" in line]
    assert notes == [f"note: {run}/config.json records no fingerprint of its dataset (the run "
                     f"started before runs recorded one), so a change of {DATASET} cannot be "
                     "detected; recording the current one ("
                     f"{run_directory.describe_dataset(fingerprint.record(minari.load(DATASET)))}"
                     ")."]
    assert "sha256" in json.loads((run / "config.json").read_text())["dataset"]
