"""The evidence study scripts end to end on tiny datasets built locally: one real cell in CI (train
two vmapped seeds, diagnostics, JSON, tables and figures); every study's smoke run when slow."""

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import fetch_study  # noqa: E402
import paper_study  # noqa: E402
import pointmaze_study  # noqa: E402
import report_results  # noqa: E402
import study_runner  # noqa: E402


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    """A Minari root holding a small ``cdp/pointmaze/umaze-v0`` (the id the studies use)."""
    from cdp_jax.data.builders import pointmaze

    path = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(path))
        pointmaze.build("umaze", num_steps=4000, seed=0, dataset_id="cdp/pointmaze/umaze-v0",
                        num_reference_episodes=2)
    return path


def test_grids_match_the_issue():
    rl = pointmaze_study.cells_for("offline_rl", ("umaze", "medium"))
    assert len(rl) == 12 and {c.fraction for c in rl} == {None, 0.4, 0.05}
    assert {(c.arm, c.weight) for c in rl} == {("vanilla", 0.0), ("cdp", 0.1)}
    il = pointmaze_study.cells_for("imitation", ())
    assert {c.fraction for c in il} == {None, 0.5, 0.1, 0.05} and all(c.agent == "dbc" for c in il)
    abl = pointmaze_study.cells_for("ablations", ())
    assert {c.weight for c in abl} >= {0.01, 0.1, 1.0, 10.0}
    assert {s for c in abl for s in c.sets} == {"contraction.target=drift",
                                                "contraction.penalty=frobenius",
                                                "contraction.window=1.0"}
    fetch = fetch_study.cells(["push", "pickandplace"], ["mlp", "unet"], [1.0, 0.5, 0.1, 0.05])
    assert len(fetch) == 32 and len({c.name for c in fetch}) == 32
    fetch_abl = fetch_study.ablation_cells()
    assert fetch_abl[:2] == [c for c in fetch if c.group == "push unet 100%"]
    windows = [[s for s in c.sets if s.startswith("contraction.window=")] for c in fetch_abl]
    assert windows == [["contraction.window=1.0"]] * 3 + [["contraction.window=0.1"]]
    assert [c.weight for c in fetch_abl] == [0.0, 0.1, 0.01, 0.1]
    with pytest.raises(ValueError, match="Unknown study"):
        pointmaze_study.cells_for("bogus", ())


def _fake_subprocess_run(monkeypatch, fake) -> None:
    """The study runner's ``subprocess.run`` (and ``Popen``, with which it starts train.py)
    become ``fake``; only the runner's: patching the ``subprocess`` module itself would also
    catch the library's own calls (its git query)."""
    import subprocess
    import types

    class Popen:  # runs ``fake`` to its end at once
        def __init__(self, command, stdout, **kwargs):
            self.returncode = fake(command, stdout, **kwargs).returncode

        def wait(self):
            return self.returncode

        poll = wait

    monkeypatch.setattr(study_runner, "subprocess", types.SimpleNamespace(
        run=fake, Popen=Popen, STDOUT=subprocess.STDOUT,
        CompletedProcess=subprocess.CompletedProcess))


def _train_in_this_process(command, stdout, **kwargs):
    """``subprocess.run`` of ``python experiments/train.py ...`` as ``cli.run(train.main)`` here:
    the same code path without a second interpreter's start-up (the default run's CPU budget)."""
    import contextlib
    import importlib.util
    import subprocess

    from cdp_jax import cli

    assert Path(command[1]).name == "train.py"
    spec = importlib.util.spec_from_file_location("_study_train", command[1])
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stdout):
        code = cli.run(train.main, command[2:])
    return subprocess.CompletedProcess(command, code)


def test_one_cell_end_to_end(minari_root, tmp_path, monkeypatch):
    """CI version: the 5% CDP cell of the offline-RL study, 2 seeds, 20 steps (train.py called in
    this process; the slow smoke runs start it as a subprocess)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    _fake_subprocess_run(monkeypatch, _train_in_this_process)
    runs, out, figs = tmp_path / "runs", tmp_path / "results", tmp_path / "figs"
    argv = ["--study", "offline_rl", "--mazes", "umaze", "--cells", "dql_umaze_f5_cdp",
            "--quick", "--runs-root", str(runs), "--out", str(out)]
    assert pointmaze_study.main(argv) == 0
    record = json.loads((out / "offline_rl.json").read_text())
    cell = record["cells"]["dql_umaze_f5_cdp"]
    assert set(cell["seeds"]) == {"0", "1"} and cell["cell"]["weight"] == 0.1
    assert cell["command"].startswith("python experiments/train.py --agent dql")
    assert cell["protocol"]["eval_every"] == 10
    assert cell["cost"]["train_s"] > 0 and cell["cost"]["eval_s"] > 0
    for seed in cell["seeds"].values():
        assert [p["step"] for p in seed["curve"]] == [10, 20]
        assert seed["last"]["gradient_step"] == 20
        diag = seed["diagnostics"]
        assert len(diag["mu_drift_curve"]) == len(diag["tau"]) == 5  # the run's 5 solver steps
        assert all(math.isfinite(diag[k]) for k in ("mu_network_lowest", "action_spread",
                                                    "distance_to_data_action"))
        assert diag["action_spread"] > 0
        assert "contraction/mu_mean" in seed["final_train_log"]
    # Resuming skips the finished cell (no retraining: the log is left as it was).
    log = runs / "offline_rl" / "dql_umaze_f5_cdp.log"
    stamp = log.stat().st_mtime_ns
    assert pointmaze_study.main(argv) == 0 and log.stat().st_mtime_ns == stamp
    assert report_results.main(["--results", str(out), "--figures", str(figs)]) == 0
    tables = (out / "tables.md").read_text()
    assert "dql_umaze_f5_cdp" in tables  # the diagnostics row (no vanilla arm: no pair table)
    assert "one arm only so far: umaze 5% (only cdp)" in tables and cell["command"] in tables
    assert "| dql_umaze_f5_cdp | 2 x 20 |" in tables and "**all 1 cells**" in tables


@pytest.mark.slow
def test_every_study_quick(minari_root, tmp_path, monkeypatch):
    """Every PointMaze study's smoke run (2 seeds, 20 steps per cell), then the report."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    out, figs = tmp_path / "results", tmp_path / "figs"
    argv = ["--quick", "--mazes", "umaze", "--runs-root", str(tmp_path / "runs"), "--out", str(out)]
    assert pointmaze_study.main(argv) == 0
    for study in ("offline_rl", "imitation", "ablations"):
        record = json.loads((out / f"{study}.json").read_text())
        assert record["missing"] == [] and record["cells"]
    abl = json.loads((out / "ablations.json").read_text())
    seed = abl["cells"]["dql_umaze_f5_vanilla"]["seeds"]["0"]
    assert set(seed["solver_steps"]) == {"5", "15", "50"}
    assert report_results.main(["--results", str(out), "--figures", str(figs)]) == 0
    assert {p.name for p in figs.glob("*.png")} >= {"pm_offline_rl_bars.png",
                                                    "pm_imitation_bars.png", "pm_ablations.png"}


@pytest.mark.slow
def test_fetch_study_quick(tmp_path, monkeypatch):
    """The manipulation study's smoke run on a 4-demonstration Push dataset: MLP and UNet, 2 arms."""
    from cdp_jax.data.builders import fetch

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    fetch.build("push", num_demos=4, dataset_id="cdp/fetch/push-v0", num_reference_episodes=1)
    out = tmp_path / "results"
    argv = ["--quick", "--tasks", "push", "--fractions", "1.0", "--runs-root",
            str(tmp_path / "runs"), "--out", str(out)]
    assert fetch_study.main(argv) == 0
    record = json.loads((out / "imitation.json").read_text())
    assert len(record["cells"]) == 4 and record["missing"] == []
    assert report_results.main(["--results", str(out), "--figures", str(tmp_path / "figs"),
                                "--prefix", "fetch", "--label", "Fetch"]) == 0


def test_paper_study_grid():
    """The paper-protocol grid: both arms on the same rows, transitions for RL, episodes for IL,
    the sweep and quirk cells on Hopper medium-replay 10 % next to the rl cells they compare to."""
    rl = paper_study.cells_for("rl", ("umaze", "medium", "hopper-mr", "hopper-m"))
    assert len(rl) == 16 and len({c.name for c in rl}) == 16
    assert {c.preset for c in rl} == {"paper"} and {c.fraction for c in rl} == {None, 0.1}
    assert {(c.arm, c.weight) for c in rl} == {("edp", 0.0), ("cdp", 0.1)}
    il = paper_study.cells_for("il", ("umaze", "push", "hopper-m"), il_steps=300)
    assert len(il) == 8 and {c.preset for c in il} == {"paper-il"} and {c.steps for c in il} == {300}
    assert all("--fraction-unit" in c.extra_args for c in il)
    sweep = paper_study.cells_for("sweep", ())
    assert [c.weight for c in sweep] == [0.01, 1.0] and {c.fraction for c in sweep} == {0.1}
    assert "=" not in "".join(c.name for c in sweep)  # directory names
    quirks = paper_study.cells_for("quirks", ())
    assert [c.sets for c in quirks] == [("time_embedding=positional",), ("tau=0.005",),
                                        ("ema_warmup=copy",)]
    assert [c.name for c in paper_study.reference_cells("quirks")] == [
        "rl_hopper-mr_f10_edp", "rl_hopper-mr_f10_cdp"]
    args = paper_study.parse_args(["--runs-root", "/r"])
    command = rl[3].command(args)
    assert command[command.index("--preset") + 1] == "paper" and "--fraction" in command
    assert command[command.index("--steps") + 1] == "20000"
    assert command[command.index("--eval-every") + 1] == "2000"
    hopper = next(c for c in rl if c.dataset.startswith("cdp/hopper")).command(args)
    assert hopper[hopper.index("--eval-every") + 1] == "4000"
    assert hopper[hopper.index("--checkpoint-every") + 1] == "2000"
    with pytest.raises(ValueError, match="Unknown study"):
        paper_study.cells_for("bogus", ())
    # The fast study: the exact-penalty cells' commands with the fast preset, beside both
    # recorded arms of each row.
    fast = paper_study.cells_for("fast", ("push", "umaze"), il_steps=300)
    assert [c.name for c in fast] == ["il_push_f100_fast", "il_push_f10_fast",
                                      "il_umaze_f100_fast", "rl_umaze_f100_fast"]
    assert [c.preset for c in fast] == ["paper-il-fast"] * 3 + ["paper-fast"]
    references = paper_study.reference_cells("fast", ("push", "umaze"), il_steps=300)
    assert {c.arm for c in references} == {"edp", "cdp"} and len(references) == 8
    for cell in fast:
        exact = next(c for c in references if c.name == cell.name.replace("_fast", "_cdp"))
        words = lambda c: c.command(args)[:c.command(args).index("--name")]
        assert words(cell) == words(exact)  # the same run but for --preset (after --name)
        assert dataclasses.replace(cell, study=exact.study, name=exact.name, arm="cdp",
                                   preset=exact.preset) == exact
    # Hopper medium-expert (the paper's low-data claim): three arms at 10% and 100%, on the data
    # the shipped policies build, with Hopper's evaluation spacing.
    me = [c for study in ("rl", "fast") for c in paper_study.cells_for(study, ("hopper-me",))]
    assert sorted(c.name for c in me) == sorted(
        f"rl_hopper-me_f{pct}_{arm}" for pct in (1, 10, 100) for arm in ("edp", "cdp", "fast"))
    assert {c.dataset for c in me} == {"cdp/hopper/medium-expert-v0"}
    assert {(c.arm, c.preset, c.weight) for c in me} == {
        ("edp", "paper", 0.0), ("cdp", "paper", 0.1), ("fast", "paper-fast", 0.1)}
    assert "--policies results/behaviour/hopper" in paper_study.build_hint(
        "cdp/hopper/medium-expert-v0")
    command = me[0].command(args)
    assert command[command.index("--eval-every") + 1] == "4000"


def test_study_cell_resumes_in_the_middle(tmp_path, monkeypatch):
    """A cell with a run under way (a seed's config.json) continues it with --resume and appends
    to its log; a fresh cell starts without; a finished one (seeds.json) is skipped."""
    calls = []

    def fake_run(command, stdout, **kwargs):
        calls.append(command)
        stdout.write("trained\n")
        return study_runner.subprocess.CompletedProcess(command, 0)

    _fake_subprocess_run(monkeypatch, fake_run)
    args = paper_study.parse_args(["--runs-root", str(tmp_path)])
    cell = paper_study.cells_for("rl", ("umaze",))[0]
    run_dir = cell.run_dir(args)
    assert study_runner.run_cell(cell, args) is not None and "--resume" not in calls[-1]
    (run_dir / "seed_0").mkdir(parents=True)
    (run_dir / "seed_0" / "config.json").write_text("{}")
    assert study_runner.run_cell(cell, args) is not None and calls[-1][-1] == "--resume"
    log = run_dir.with_suffix(".log").read_text()
    assert log.count("trained") == 2 and "--- resumed:" in log
    (run_dir / "seeds.json").write_text("{}")
    assert study_runner.run_cell(cell, args) is None and len(calls) == 2


def test_paper_study_skips_unbuilt_datasets(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "empty"))
    argv = ["--study", "sweep", "--runs-root", str(tmp_path / "runs"), "--out",
            str(tmp_path / "out"), "--no-diagnostics"]
    assert paper_study.main(argv) == 0
    out = capsys.readouterr().out
    assert "skipping rl_hopper-mr_f10_weight0.01: dataset cdp/hopper/medium-replay-v0" in out
    assert "make_dataset.py locomotion --env hopper --kind medium-replay" in out
    record = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert len(record["missing"]) == 4 and record["cells"] == {}
    assert record["title"].startswith("Penalty weight sweep: Hopper medium-replay")
    # A run of one task still lists (and would keep) every cell of the grid.
    argv = ["--study", "rl", "--tasks", "hopper-m", "--runs-root", str(tmp_path / "runs"),
            "--out", str(tmp_path / "out"), "--no-diagnostics"]
    assert paper_study.main(argv) == 0
    # 5 tasks x 2 fractions x 2 arms, and Hopper medium-expert's 1% row
    assert len(json.loads((tmp_path / "out" / "rl.json").read_text())["missing"]) == 22


@pytest.mark.slow
def test_paper_study_quick(minari_root, tmp_path, monkeypatch):
    """Smoke run of the paper-protocol study: one rl and one il cell (paper / paper-il presets),
    2 seeds, 20 steps, diagnostics and the JSON."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    out = tmp_path / "results"
    for study in ("rl", "il"):
        argv = ["--quick", "--study", study, "--tasks", "umaze", "--cells",
                f"{study}_umaze_f10_cdp", "--runs-root", str(tmp_path / "runs"), "--out", str(out)]
        assert paper_study.main(argv) == 0
        cell = json.loads((out / f"{study}.json").read_text())["cells"][f"{study}_umaze_f10_cdp"]
        assert set(cell["seeds"]) == {"0", "1"}
        assert all(s["diagnostics"] is not None for s in cell["seeds"].values())


def _fake_cell(name, group, arm, scores):
    """A collected cell as ``study_runner.collect_cell`` writes it (scores per seed)."""
    seeds = {}
    for k, score in enumerate(scores):
        point = {"normalized_score": score, "success_rate": score / 100.0}
        seeds[str(k)] = {"last": {**point, "gradient_step": 20}, "best": {**point, "gradient_step": 20},
                         "running_average": {**point, "gradient_steps": [10, 20]},
                         "curve": [{"step": s, **point} for s in (10, 20)], "diagnostics": None,
                         "solver_steps": {}, "final_train_log": {}}
    return name, {"cell": {"name": name, "group": group, "arm": arm}, "seeds": seeds}


def test_report_of_the_paper_layout(tmp_path):
    """``report_results --layout paper``: EDP is the baseline arm, verdicts come from the paired
    differences, Hopper has no success rows, the quirk cells (weight 0.1) compare with the rl CDP
    cell, cells not run yet and every cell's command are listed; figures are written."""
    edp = _fake_cell("rl_hopper-mr_f10_edp", "hopper-mr 10%", "edp", [10.0, 12.0, 11.0])
    cdp = _fake_cell("rl_hopper-mr_f10_cdp", "hopper-mr 10%", "cdp", [30.0, 31.0, 29.0])
    quirk = _fake_cell("rl_hopper-mr_f10_ema_copy", "hopper-mr 10%", "ema_copy", [11.0, 12.0, 10.0])
    # umaze: the arms' intervals overlap, but cdp is higher by 1.0 +- 0.1 on every seed
    um_edp = _fake_cell("rl_umaze_f100_edp", "umaze 100%", "edp", [10.0, 20.0, 30.0, 40.0, 50.0])
    um_cdp = _fake_cell("rl_umaze_f100_cdp", "umaze 100%", "cdp", [11.1, 20.9, 31.0, 41.05, 50.95])
    um_cdp[1]["command"] = "python experiments/train.py --name rl_umaze_f100_cdp"
    for _, cell in (um_edp, um_cdp):  # diagnostics: mu curves for the row
        for seed in cell["seeds"].values():
            seed["diagnostics"] = {"tau": [1.0, 0.5, 0.0], "mu_network_curve": [0.9, 0.5, 0.2],
                                   "mu_drift_curve": [-1.0, -2.0, -5.0], "mu_network_lowest": 0.2,
                                   "mu_drift_lowest": -5.0, "mu_drift_mean": -2.7,
                                   "action_spread": 0.1, "distance_to_data_action": 0.3}
    medium = _fake_cell("rl_medium_f100_edp", "medium 100%", "edp", [1.0, 2.0])
    for cell, train_s in ((um_edp[1], 5400.0), (um_cdp[1], 9000.0)):
        cell.update(steps=20_000, cost={"train_s": train_s, "eval_s": 1800.0})
    results = tmp_path / "results"
    results.mkdir()
    (results / "rl.json").write_text(json.dumps({
        "cells": dict([edp, cdp, um_edp, um_cdp, medium]), "missing": ["rl_medium_f100_cdp"]}))
    (results / "quirks.json").write_text(json.dumps({"cells": dict([edp, cdp, quirk]),
                                                     "title": "Quirks"}))
    figs = tmp_path / "figs"
    assert report_results.main(["--results", str(results), "--figures", str(figs), "--layout",
                                "paper", "--prefix", "paper"]) == 0
    tables = (results / "tables.md").read_text()
    assert "| data | metric | edp | cdp (w = 0.1) | verdict | paired cdp - edp |" in tables
    assert ("| hopper-mr 10% | score, running avg (last 2 evaluations) | 11.0" in tables
            and "**cdp**" in tables)
    assert "| hopper-mr 10% | success" not in tables  # Hopper has no success signal
    umaze = [row for row in tables.splitlines() if row.startswith("| umaze 100% | score, last")]
    assert umaze and "| **cdp** | 1.0 ± 0.1 (5) |" in umaze[0]
    assert "| umaze 100% | success, running avg" in tables
    assert "best (optimistic" in tables
    assert "Not run yet: rl_medium_f100_cdp." in tables
    assert "one arm only so far: medium 100% (only edp)" in tables
    assert "python experiments/train.py --name rl_umaze_f100_cdp" in tables
    assert "| rl_umaze_f100_cdp | 5 x 20,000 | 2.50 | 0.50 | 3.00 |" in tables
    assert "| **all 2 cells** | | 4.00 | 1.00 | **5.00** |" in tables
    quirks = tables[tables.index("### Quirks"):]
    assert "| ema_copy |" in quirks and "verdict vs cdp" in quirks and "success" not in quirks
    assert "| ema_copy | 11.0 ± 2.5 (3) | 11.0 ± 2.5 (3) | not measured | **cdp** | -19.0" in quirks
    assert {p.name for p in figs.glob("*.png")} >= {
        "paper_offline_rl_bars.png", "paper_offline_rl_curves.png", "paper_quirks.png",
        "paper_quirks_curves.png", "paper_mu_umaze100.png"}


def test_a_failed_cell_does_not_stop_the_others(tmp_path, monkeypatch):
    """An unattended study trains every cell it can; the failures are raised at the end, named."""
    calls = []

    def fake_run(command, stdout, **kwargs):
        name = command[command.index("--name") + 1]
        calls.append(name)
        return study_runner.subprocess.CompletedProcess(command, 1 if name.endswith("edp") else 0)

    _fake_subprocess_run(monkeypatch, fake_run)
    args = paper_study.parse_args(["--runs-root", str(tmp_path)])
    cells = paper_study.cells_for("rl", ("umaze",))
    with pytest.raises(RuntimeError, match=r"2 of 4 rl cells failed: cell rl_umaze_f100_edp"):
        study_runner.run_cells("rl", cells, args)
    assert calls == [c.name for c in cells]


def test_a_dotted_cell_name_keeps_its_whole_log_name(tmp_path, monkeypatch):
    """The sweep's ``rl_hopper-mr_f10_weight0.01`` logs to ``...weight0.01.log``, not
    ``...weight0.log``."""
    _fake_subprocess_run(monkeypatch, lambda command, stdout, **kwargs:
                         study_runner.subprocess.CompletedProcess(command, 0))
    args = paper_study.parse_args(["--runs-root", str(tmp_path)])
    cell = paper_study.cells_for("sweep", ())[0]
    assert cell.name == "rl_hopper-mr_f10_weight0.01"
    study_runner.run_cell(cell, args)
    assert [p.name for p in (tmp_path / "sweep").glob("*.log")] == [f"{cell.name}.log"]


def test_collect_keeps_recorded_cells_whose_runs_are_gone(tmp_path, capsys):
    """A study continued on a new machine (no runs/) keeps the finished cells of the committed
    JSON, wherever the runs were written; an entry of another configuration is dropped and the
    cell listed as missing again."""
    args = paper_study.parse_args(["--runs-root", str(tmp_path / "runs"), "--out",
                                   str(tmp_path / "out"), "--no-diagnostics"])
    grid = paper_study.cells_for("rl", ("umaze",))
    kept, stale = grid[0], grid[1]
    name, entry = _fake_cell(kept.name, kept.group, kept.arm, [1.0, 2.0])
    entry["cell"] = json.loads(json.dumps(dataclasses.asdict(kept)))
    # recorded on another machine, under another runs root
    entry["command"] = kept.display_command(args).replace(str(tmp_path / "runs"), "runs/elsewhere")
    _, old = _fake_cell(stale.name, stale.group, stale.arm, [3.0])
    old["cell"] = json.loads(json.dumps(dataclasses.asdict(stale)))
    old["command"] = stale.display_command(args).replace("--steps 20000", "--steps 2000")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "rl.json").write_text(json.dumps({"cells": {name: entry,
                                                                    stale.name: old}}))
    record = json.loads(study_runner.collect("rl", grid, args).read_text())
    assert record["cells"] == {name: entry}
    assert stale.name in record["missing"] and kept.name not in record["missing"]
    assert f"{stale.name}: the recorded result is of another configuration" in capsys.readouterr().out


def test_collect_keeps_entries_recorded_before_commands_were(tmp_path, capsys):
    """The PointMaze and Fetch results were written before cells recorded their commands (and
    before Cell had its later fields): such an entry is judged on its cell's fields and steps,
    so a --collect-only on a machine without runs/ keeps it; one of another weight is dropped."""
    args = pointmaze_study.parse_args(["--runs-root", str(tmp_path / "runs"), "--out",
                                       str(tmp_path / "out"), "--no-diagnostics"])
    grid = pointmaze_study.cells_for("offline_rl", ("umaze",))
    kept, stale = grid[0], grid[1]
    entries = {}
    for cell, weight in ((kept, kept.weight), (stale, stale.weight + 1.0)):
        name, entry = _fake_cell(cell.name, cell.group, cell.arm, [1.0, 2.0])
        old_fields = {k: v for k, v in dataclasses.asdict(cell).items()
                      if k not in ("preset", "steps", "eval_factor")}
        entry["cell"] = json.loads(json.dumps({**old_fields, "weight": weight}))
        entry["steps"] = args.steps
        entries[name] = entry
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "offline_rl.json").write_text(json.dumps({"cells": entries}))
    record = json.loads(study_runner.collect("offline_rl", grid, args).read_text())
    assert record["cells"] == {kept.name: entries[kept.name]}
    assert stale.name in record["missing"]
    assert f"{stale.name}: the recorded result is of another configuration" in capsys.readouterr().out


def test_collect_never_loses_the_recorded_results(tmp_path, monkeypatch):
    """A results JSON cut short stops the collection with one message (nothing written: cells
    recorded only there would be lost); a disk that fills while writing keeps the old file."""
    import errno
    import os

    from cdp_jax import files

    args = paper_study.parse_args(["--runs-root", str(tmp_path / "runs"), "--out",
                                   str(tmp_path / "out"), "--no-diagnostics"])
    grid = paper_study.cells_for("rl", ("umaze",))
    out = tmp_path / "out" / "rl.json"
    out.parent.mkdir()
    out.write_text('{"cells": {"umaze')
    with pytest.raises(ValueError, match=f"{out} is unreadable .JSONDecodeError.*nothing was "
                                         "written.*git checkout"):
        study_runner.collect("rl", grid, args)
    assert out.read_text() == '{"cells": {"umaze'

    out.write_text(json.dumps({"cells": {}}))
    write_text = Path.write_text

    def full(self, text, *a, **k):
        write_text(self, text[:10], *a, **k)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(files.WriteError, match="The previous rl.json is unchanged"):
        study_runner.collect("rl", grid, args)
    monkeypatch.undo()
    assert json.loads(out.read_text()) == {"cells": {}}


@pytest.mark.parametrize("layout,metric", [("paper", "normalized_score"),
                                           ("pointmaze", "success_rate")])
def test_imitation_figures_plot_the_layouts_metric(tmp_path, monkeypatch, layout, metric):
    """The paper layout's imitation figures plot the score (its verdicts' metric; umaze reaches
    success 1.00 in both arms), the older layouts keep success."""
    name, base = {"paper": ("il", "edp"), "pointmaze": ("imitation", "vanilla")}[layout]
    results = tmp_path / "results"
    results.mkdir()
    cells = dict([_fake_cell("il_push_f100_base", "push 100%", base, [70.0, 80.0, 75.0]),
                  _fake_cell("il_push_f100_cdp", "push 100%", "cdp", [78.0, 88.0, 84.0])])
    (results / f"{name}.json").write_text(json.dumps({"cells": cells}))
    plotted = []
    for fn in ("fraction_bars", "learning_curves"):
        real = getattr(report_results, fn)
        monkeypatch.setattr(report_results, fn,
                            lambda rec, m, path, *a, _real=real, **k: (plotted.append(m),
                                                                       _real(rec, m, path, *a, **k)))
    assert report_results.main(["--results", str(results), "--figures", str(tmp_path / "figs"),
                                "--layout", layout, "--prefix", "x"]) == 0
    assert plotted == [metric, metric]
    assert {p.name for p in (tmp_path / "figs").glob("*.png")} >= {"x_imitation_bars.png",
                                                                  "x_imitation_curves.png"}
