"""The flow study's grid, its alpha rule and the cells it compares with; no training (each cell's
command is parsed by train.py's own configuration code, which runs no JAX)."""

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import flow_study  # noqa: E402
import paper_study  # noqa: E402
import study_runner  # noqa: E402
import train  # noqa: E402

from cdp_jax.configs import flow_bc, fql  # noqa: E402

ALL_TASKS = ("hopper-me1", "hopper-mr10", "push")


def _configs(cell, args):
    """``(train.py's parsed flags, TrainConfig, agent config)`` of a cell's command."""
    command = cell.command(args)
    assert command[1].endswith("experiments/train.py")
    flags = train.parse_args(command[2:])
    return (flags, *train.make_configs(flags))


def _grid(name, choices=None):
    args = flow_study.study_args(name, flow_study.parse_args(["--runs-root", "/r"]))
    return flow_study.cells_for(name, ALL_TASKS, args, choices), args


def test_alpha_cells():
    cells, args = _grid("alpha")
    assert [c.name for c in cells] == [f"alpha_{task}_a{a}" for task in ("hopper-me1", "hopper-mr10")
                                       for a in ("0.3", "1", "3", "10", "30")]
    for cell, alpha in zip(cells, flow_study.ALPHAS * 2, strict=True):
        flags, config, agent = _configs(cell, args)
        assert (flags.preset, flags.seeds, config.agent) == ("fql", "5", "fql")
        assert f"alpha={alpha:g}" in cell.display_command(args)
        assert agent.alpha == alpha and agent.contraction.weight == 0.0
        assert (config.steps, config.eval_every, config.checkpoint_every,
                config.eval_episodes) == (10_000, 2000, 2000, 10)
        main = cell.name.split("_")[1]  # the same data as the task's main cells
        assert (config.dataset, config.fraction) == flow_study.RL_TASKS[main]
        assert config.fraction_unit == "transitions"


def test_rl_cells_use_the_chosen_alpha():
    cells, args = _grid("rl", {"hopper-me1": 3.0, "hopper-mr10": 30.0})
    assert [c.name for c in cells] == ["rl_hopper-me1_fql", "rl_hopper-me1_fql-cdp",
                                       "rl_hopper-mr10_fql", "rl_hopper-mr10_fql-cdp"]
    expected = [("fql", 3.0, 0.01), ("fql-cdp", 3.0, 0.01), ("fql", 30.0, 0.1),
                ("fql-cdp", 30.0, 0.1)]
    for cell, (preset, alpha, fraction) in zip(cells, expected, strict=True):
        flags, config, agent = _configs(cell, args)
        assert (flags.preset, flags.seeds, agent.alpha, config.fraction) == (
            preset, "0-4", alpha, fraction)
        assert (config.steps, config.eval_every, config.checkpoint_every,
                config.eval_episodes, config.fraction_unit) == (20_000, 4000, 2000, 10,
                                                                "transitions")
        penalty = fql.FLOW_RL_PENALTY if preset == "fql-cdp" else fql.FQLConfig().contraction
        assert agent.contraction == penalty
    # a task without a chosen alpha has no rl cells
    assert [c.name for c in _grid("rl", {"hopper-me1": None, "hopper-mr10": 1.0})[0]] == [
        "rl_hopper-mr10_fql", "rl_hopper-mr10_fql-cdp"]
    assert _grid("rl")[0] == []


def test_il_cells_match_paper_il_on_the_data_side():
    cells, args = _grid("il")
    assert [c.name for c in cells] == ["il_push_f100_flow-bc", "il_push_f100_flow-bc-cdp",
                                       "il_push_f10_flow-bc", "il_push_f10_flow-bc-cdp"]
    paper_args = paper_study.parse_args([])
    paper = {c.name: c for c in flow_study.reference_cells("il")}
    for cell in cells:
        flags, config, agent = _configs(cell, args)
        _, paper_config, paper_agent = _configs(
            paper[cell.name.replace("_flow-bc-cdp", "_cdp").replace("_flow-bc", "_edp")],
            paper_args)
        assert (flags.preset, flags.seeds, config.agent) == (cell.arm, "0-4", "flow_bc")
        for field in ("dataset", "fraction", "fraction_unit", "obs_normalizer", "steps",
                      "eval_every", "checkpoint_every", "eval_episodes"):
            assert getattr(config, field) == getattr(paper_config, field), field
        for field in ("obs_horizon", "action_horizon", "n_action"):
            assert getattr(agent, field) == getattr(paper_agent, field), field
        assert agent.hidden_dims == flow_bc.FlowBCConfig().hidden_dims  # the preset's network
        penalty = (flow_bc.FLOW_IL_PENALTY if cell.arm == "flow-bc-cdp"
                   else flow_bc.FlowBCConfig().contraction)
        assert agent.contraction == penalty
    with pytest.raises(ValueError, match="Unknown study"):
        flow_study.cells_for("bogus", ALL_TASKS, args)


def _record(scores, seed="5"):
    """A collected alpha cell with evaluations every 2,000 steps."""
    curve = [{"step": 2000 * (i + 1), "normalized_score": s, "success_rate": None}
             for i, s in enumerate(scores)]
    return {"seeds": {seed: {"curve": curve}}}


def _records(last3_means, early=0.0):
    return {a: _record([early, early, m, m, m]) for a, m in zip(flow_study.ALPHAS, last3_means, strict=True)}


def test_choose_alpha_takes_the_highest_running_average():
    assert flow_study.choose_alpha(_records([50, 60, 70, 55, 40])) == 3.0
    # only the last three evaluations count: a high start does not
    records = _records([50, 60, 70, 55, 40])
    records[30.0] = _record([99, 99, 10, 10, 10])
    assert flow_study.choose_alpha(records) == 3.0
    score, steps = flow_study.alpha_score(_record([0, 0, 1, 2, 6]))
    assert (score, steps) == (3.0, [6000, 8000, 10000])
    # a diverged alpha counts as the lowest
    assert flow_study.choose_alpha(_records([math.nan, 1, 2, 3, math.nan])) == 10.0


def test_choose_alpha_breaks_ties_within_one_point_towards_the_larger_alpha():
    assert flow_study.choose_alpha(_records([50, 60, 70, 69.5, 68.5])) == 10.0
    assert flow_study.choose_alpha(_records([70.5, 60, 70, 69.5, 69.5])) == 30.0
    assert flow_study.choose_alpha(_records([71.2, 60, 70, 69.5, 69.5])) == 0.3


def test_an_alpha_cell_that_diverged_twice_scores_lowest(tmp_path):
    """train.py's divergence line twice in a cell's log (its run and the one allowed resume):
    the cell is reported as diverged and the choice goes on without it."""
    args = flow_study.parse_args(["--runs-root", str(tmp_path), "--out", str(tmp_path / "out")])
    alpha_args = flow_study.study_args("alpha", args)
    cells = flow_study.alpha_cells("hopper-me1", alpha_args)
    line = "error: non-finite critic/loss at gradient step 812; training stopped. ...\n"
    log = cells[0].log_path(alpha_args)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(line)
    assert not flow_study.diverged(cells[0], alpha_args)  # once: it is resumed first
    log.write_text(line + "--- resumed ...\n" + line)
    assert flow_study.diverged(cells[0], alpha_args)
    records = flow_study.alpha_records("hopper-me1", args)
    assert records[flow_study.ALPHAS[0]] == {"diverged": True}
    records.update({a: _record([m] * 5) for a, m in zip(flow_study.ALPHAS[1:], [10, 20, 30, 5],
                                                         strict=True)})
    assert flow_study.choose_alpha(records) == 10.0


def test_missing_alpha_cells_choose_nothing_and_are_named():
    records = _records([50, 60, 70, 55, 40])
    records[1.0] = records[30.0] = None
    assert flow_study.choose_alpha(records) is None
    tuning = flow_study.tuning_record("hopper-mr10", records)
    assert tuning["chosen"] is None
    assert tuning["missing"] == ["alpha_hopper-mr10_a1", "alpha_hopper-mr10_a30"]
    assert set(tuning["scores"]) == {"0.3", "3", "10"}
    complete = flow_study.tuning_record("hopper-mr10", _records([50, 60, 70, 55, 40]))
    assert (complete["chosen"], complete["missing"]) == (3.0, [])
    assert complete["scores"]["3"] == {"score": 70.0, "steps": [6000, 8000, 10000]}


def test_rl_cells_are_withheld_until_alpha_is_chosen(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(study_runner, "run_cells", lambda label, cells, args: ran.extend(cells))
    monkeypatch.setattr(paper_study, "dataset_missing", lambda dataset_id: False)
    argv = ["--study", "rl", "--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert flow_study.main(argv) == 0
    assert ran == []
    out = capsys.readouterr().out
    assert "hopper-me1: not run until its alpha is chosen" in out and "alpha_hopper-me1_a30" in out
    recorded = json.loads((tmp_path / "out" / "rl.json").read_text())
    assert recorded["withheld"]["hopper-me1"][0] == "alpha_hopper-me1_a0.3"
    assert recorded["cells"] == {} and recorded["missing"] == []
    assert set(recorded["reference_cells"]) == {"rl_hopper-me_f1_edp", "rl_hopper-me_f1_cdp"}

    # hopper-me1's five alpha cells recorded (as collect writes them): its two cells run
    args = flow_study.parse_args(argv)
    alpha_args = flow_study.study_args("alpha", args)
    cells = {}
    for cell, mean in zip(flow_study.alpha_cells("hopper-me1", alpha_args), [5, 6, 7, 6.5, 1],
                          strict=True):
        cells[cell.name] = {"cell": dataclasses.asdict(cell),
                            "command": cell.display_command(alpha_args),
                            **_record([0, 0, mean, mean, mean])}
    (tmp_path / "out" / "alpha.json").write_text(json.dumps({"cells": cells}))
    assert flow_study.main(argv) == 0
    assert [c.name for c in ran] == ["rl_hopper-me1_fql", "rl_hopper-me1_fql-cdp"]
    assert all(c.sets == ("alpha=10",) for c in ran)  # 6.5 is within 1 point of 7
    recorded = json.loads((tmp_path / "out" / "rl.json").read_text())
    assert recorded["alpha"] == {"hopper-me1": 10.0, "hopper-mr10": None}
    assert list(recorded["withheld"]) == ["hopper-mr10"]
    assert recorded["missing"] == ["rl_hopper-me1_fql", "rl_hopper-me1_fql-cdp"]


def test_reference_cells_are_paper_studys_own():
    paper_args = paper_study.parse_args([])
    for study, paper_tasks, names in (
            ("rl", ("hopper-me",), ["rl_hopper-me_f1_edp", "rl_hopper-me_f1_cdp"]),
            ("il", ("push",), ["il_push_f100_edp", "il_push_f100_cdp", "il_push_f10_edp",
                               "il_push_f10_cdp"])):
        references = flow_study.reference_cells(study)
        assert [c.name for c in references] == names
        paper = {c.name: c for c in paper_study.study_cells(study, paper_tasks, paper_args)}
        assert all(c == paper[c.name] for c in references)
        commands = flow_study.reference_record(study)
        assert all(commands[c.name]["command"] == paper[c.name].display_command(paper_args)
                   for c in references)
        results = ROOT / flow_study.REFERENCE_RESULTS[study]
        if results.exists():  # the commands those results were recorded with
            recorded = json.loads(results.read_text())["cells"]
            assert all(recorded[name]["command"] == commands[name]["command"] for name in names)
    assert flow_study.reference_cells("alpha") == []


def test_quick_shortens_every_study():
    args = flow_study.parse_args(["--quick", "--task-dataset", "push=cdp/pointmaze/umaze-v0"])
    assert {flow_study.study_args(n, args).steps for n in flow_study.STUDIES} == {20}
    assert flow_study.study_args("il", args).eval_every == 10
    assert flow_study.study_args("alpha", args).seeds == "5"
    il = flow_study.cells_for("il", ["push"], flow_study.study_args("il", args))
    assert {c.dataset for c in il} == {"cdp/pointmaze/umaze-v0"}
    with pytest.raises(SystemExit):
        flow_study.parse_args(["--task-dataset", "nowhere=x/y-v0"])
