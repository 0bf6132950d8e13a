"""``experiments/report_results.py`` and what evaluations record: a task whose environment reports
no success (``success_rate`` None) gets no success rows, bars or curves; each evaluation's
standard error over its episodes stands beside the mean where the results hold it; the result
files already under ``results/`` (which predate both) still make the same tables."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import report_results  # noqa: E402


def _cell(name, group, arm, scores, success=None, sem=None, agent="dql"):
    """A collected cell (``collect_cell``'s layout): per seed a score, a success rate (None: the
    environment has none) and the evaluations' standard error (None: not recorded)."""
    seeds = {}
    for k, score in enumerate(scores):
        point = {"normalized_score": score, "success_rate": success}
        if sem is not None:
            point["normalized_score_sem"] = sem[k]
        seeds[str(k)] = {"last": {**point, "gradient_step": 20},
                         "best": {**point, "gradient_step": 20},
                         "running_average": {**point, "gradient_steps": [10, 20]},
                         "curve": [{"step": s, "normalized_score": score, "success_rate": success}
                                   for s in (10, 20)],
                         "diagnostics": None, "solver_steps": {}, "final_train_log": {}}
    return name, {"cell": {"name": name, "group": group, "arm": arm, "agent": agent},
                  "seeds": seeds}


def test_no_success_rows_and_evaluation_standard_errors(tmp_path, monkeypatch):
    cells = dict([
        _cell("walker_base", "walker 10%", "vanilla", [10.0, 12.0], sem=[3.0, 4.0]),
        _cell("walker_cdp", "walker 10%", "cdp", [20.0, 22.0], sem=[1.0, 7.0]),
        _cell("umaze_base", "umaze 10%", "vanilla", [30.0, 32.0], success=0.5),
        _cell("umaze_cdp", "umaze 10%", "cdp", [40.0, 42.0], success=0.75),
    ])
    results = tmp_path / "results"
    results.mkdir()
    for name in ("offline_rl", "imitation"):
        (results / f"{name}.json").write_text(json.dumps({"cells": cells}))
    (results / "ablations.json").write_text(json.dumps({"cells": dict(list(cells.items())[:2])}))
    plotted = []
    for fn in ("fraction_bars", "learning_curves"):
        real = getattr(report_results, fn)
        monkeypatch.setattr(report_results, fn, lambda rec, m, path, *a, _real=real, **k: (
            plotted.append((m, path.name)), _real(rec, m, path, *a, **k)))
    assert report_results.main(["--results", str(results), "--figures", str(tmp_path / "figs")]) == 0
    tables = (results / "tables.md").read_text()
    assert "| walker 10% | success" not in tables  # no success signal: no rows
    assert "| umaze 10% | success, running avg" in tables
    rms = lambda *x: np.sqrt(np.mean(np.square(x)))
    walker = next(r for r in tables.splitlines() if r.startswith("| walker 10% | score, last"))
    assert f"11.0 ± 12.7 (2) [s.e. {rms(3.0, 4.0):.1f}]" in walker
    assert f"21.0 ± 12.7 (2) [s.e. {rms(1.0, 7.0):.1f}]" in walker
    umaze = next(r for r in tables.splitlines() if r.startswith("| umaze 10% | score, last"))
    assert "s.e." not in umaze  # not recorded
    ablation = tables[tables.index("### Ablations"):]
    assert "success" not in ablation.split("\n\n")[1]  # its header: no success columns
    # the imitation figures plot success (this layout's metric): umaze only
    assert ("success_rate", "pm_imitation_curves.png") in plotted
    assert (tmp_path / "figs" / "pm_imitation_curves.png").exists()


def test_the_results_already_recorded_still_report(tmp_path):
    """Files written before ``success_rate`` could be None (Hopper's hold 1.0) and without
    standard errors: the paper layout still leaves Hopper's success out."""
    results = tmp_path / "paper"
    shutil.copytree(ROOT / "results" / "paper", results)
    assert report_results.main(["--results", str(results), "--figures", str(tmp_path / "figs"),
                                "--layout", "paper", "--prefix", "paper"]) == 0
    tables = (results / "tables.md").read_text()
    assert "| hopper" in tables and not any(
        r.startswith("| hopper") and "| success" in r for r in tables.splitlines())


def test_fast_table_judges_fast_against_exact_with_the_margin():
    """The fast study's table: fast - cdp by the equivalence rule, fast - edp by the paired
    rule; a row without all three arms is listed as left out, not judged."""
    cells = dict([
        _cell("a_edp", "push 100%", "edp", [50.0, 60.0, 70.0, 80.0, 90.0]),
        _cell("a_cdp", "push 100%", "cdp", [60.0, 70.0, 80.0, 90.0, 100.0]),
        _cell("a_fast", "push 100%", "fast", [60.5, 69.5, 80.2, 89.8, 100.0]),
        _cell("b_edp", "umaze 100%", "edp", [50.0, 60.0, 70.0, 80.0, 90.0]),
        _cell("b_cdp", "umaze 100%", "cdp", [50.0, 60.0, 70.0, 80.0, 90.0]),
        _cell("b_fast", "umaze 100%", "fast", [40.0, 51.0, 59.0, 70.5, 79.5]),
        # imitation on the same maze and fraction: the same group name, another row
        _cell("d_edp", "umaze 100%", "edp", [1.0, 2.0, 3.0, 4.0, 5.0], agent="dbc"),
        _cell("d_cdp", "umaze 100%", "cdp", [1.0, 2.0, 3.0, 4.0, 5.0], agent="dbc"),
        _cell("d_fast", "umaze 100%", "fast", [1.1, 2.0, 2.9, 4.0, 5.0], agent="dbc"),
        _cell("c_cdp", "push 10%", "cdp", [10.0, 20.0]),
    ])
    text = "\n".join(report_results.fast_table({"cells": cells}, margin=3.0))
    row = lambda name: [ln for ln in text.splitlines()
                        if ln.startswith(f"| {name} | score, running")]
    push, umaze, il_umaze = (row("offline RL, push 100%"), row("offline RL, umaze 100%"),
                             row("imitation, umaze 100%"))
    assert "| equivalent |" in push[0] and "**fast**" in push[0]  # +10 over edp on every seed
    assert "| different |" in umaze[0] and "**edp**" in umaze[0]  # 10 below both
    assert "| equivalent |" in il_umaze[0]
    assert "offline RL, push 10% (only cdp)" in text
