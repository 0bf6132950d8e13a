"""The paper's protocol, measured: CDP vs EDP under the ``paper`` / ``paper-il`` presets.

Every cell is one ``experiments/train.py --preset paper[-il] --seeds ...`` call (all seeds of a
cell trained as one vmapped program: both arms of a row see the same seeds and therefore the same
data subsets), with the machinery of ``experiments/study_runner.py``: finished cells are
skipped, an interrupted cell continues from its last checkpoint (``--resume``), then contraction
diagnostics and ``results/paper/<study>.json``.

Studies (``--study``; they run in this order, their cells in the order of ``--tasks``):

* ``rl``: the official offline-RL pipeline (``--preset paper``: EDP + Diffusion-QL critic, the
  exact ``mean((J_sym + 0.1 I)^2)`` penalty, EMA actor, 100 candidates at noise temperature 0.5
  ranked by a softmax over the target critic's min-Q), weight 0 (EDP as the official code runs
  it) vs 0.1 (the paper's default), 100 % and 10 % of the *transitions* (the official low-data
  protocol), on PointMaze umaze and medium and Hopper medium-replay, medium and
  medium-expert (``--tasks``; medium-expert is where the paper's low-data gain was claimed,
  and gets a 1% row too: ``EXTRA_FRACTIONS``).
  PointMaze has no official row: eta 2, candidate temperature 10 and reward ``r - 1`` are
  antmaze-medium-play's, with 1 TD sample instead of its max over 10 (5x cheaper a step;
  ``cdp_jax.paper.PROJECT_ROWS``).
* ``il``: the official imitation pipeline (``--preset paper-il``: Pearce MLP, history 2, one
  action, penalty on every noise level) on PointMaze umaze and Fetch Push, 100 % and 10 % of the
  demonstrations (whole episodes), weight 0 vs 0.1.
* ``sweep``: Hopper medium-replay at 10 %, weight 0.01 and 1 (0 and 0.1 are the ``rl`` cells).
* ``fast``: the fast presets' arm (``paper-fast`` / ``paper-il-fast``) beside the exact-penalty
  and weight-0 cells of ``FAST_ROWS``, which are the ``rl`` / ``il`` studies' own cells.
* ``budget``: the paper's headline row at the paper's budget: Hopper medium-replay, 100 % of the
  transitions, weight 0 vs 0.1, **200,000 gradient steps** (``--budget-steps``), evaluated every
  10,000 steps (5 x ``--eval-every``), checkpointed every 2,000 (a run killed at any point
  loses at most 2,000 steps). About 4 wall hours per arm on a 2-core CPU.
* ``seeds``: ten more seeds (5-14) for both arms of Hopper medium-expert 1 %, same protocol as
  its ``rl`` cells (seeds 0-4); the row's verdict is taken on all 15.
* ``quirks``: Hopper medium-replay at 10 %, weight 0.1, with one of cdp_jax's corrected choices
  switched in: ``time_embedding=positional`` (float t instead of the integer-t quirk),
  ``tau=0.005`` (standard Polyak targets instead of CleanDiffuser's 0.995 formula),
  ``ema_warmup=copy`` (EMA warmed up by copying instead of staying at the initial weights).

Cells whose dataset is not built yet are listed with the command that builds it and skipped::

    python experiments/make_dataset.py pointmaze --maze medium --num-steps 1000000
    python experiments/make_dataset.py fetch --task push
    python experiments/paper_study.py                        # every study, then the JSON
    python experiments/paper_study.py --study rl --tasks umaze
    python experiments/paper_study.py --collect-only         # rebuild the JSON (keeps recorded cells)
    python experiments/paper_study.py --quick --runs-root /tmp/s --out /tmp/r --tasks umaze

Defaults: 5 seeds; offline RL 20,000 gradient steps per run (10 % of the paper's 200k: the floor
the study issue sets), evaluation and checkpoint every 2,000 steps on 10 episodes per seed (the
learning curve; the paper evaluates every 20k steps on 50; Hopper, whose 1000-step episodes make
an evaluation about 3x dearer: every 4,000); imitation 5,000 steps (``--il-steps``;
its whole-batch exact penalty is the dear part, see ``IL_STEPS``), every 1,000 steps.
Tables and figures: ``python experiments/report_results.py --results results/paper --layout paper
--prefix paper --label 'paper protocol'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import study_runner as runner  # noqa: E402

from cdp_jax import cli  # noqa: E402
from cdp_jax.configs import fields  # noqa: E402

ROOT = runner.ROOT
STUDIES = ("rl", "il", "sweep", "quirks", "fast", "budget", "seeds")
# task -> (dataset id, command that builds it)
RL_TASKS = {
    "umaze": ("cdp/pointmaze/umaze-v0", "make_dataset.py pointmaze --maze umaze"),
    "medium": ("cdp/pointmaze/medium-v0",
               "make_dataset.py pointmaze --maze medium --num-steps 1000000"),
    "hopper-mr": ("cdp/hopper/medium-replay-v0",
                  "make_dataset.py locomotion --env hopper --kind medium-replay --policy-dir DIR"),
    "hopper-m": ("cdp/hopper/medium-v0",
                 "make_dataset.py locomotion --env hopper --kind medium --policy-dir DIR"),
    # Built in minutes from the policies in git (results/behaviour/hopper): no SAC run needed.
    "hopper-me": ("cdp/hopper/medium-expert-v0",
                  "make_dataset.py locomotion --env hopper --kind medium-expert "
                  "--policies results/behaviour/hopper"),
}
IL_TASKS = {
    "umaze": RL_TASKS["umaze"],
    "push": ("cdp/fetch/push-v0", "make_dataset.py fetch --task push"),
}
FRACTIONS = (None, 0.1)
# Rows beyond 100% and 10%, per task: Hopper medium-expert at 10% reaches the expert's level by
# 12k steps under EDP (docs/RESULTS.md), leaving no room for a gain; 1% (20,000 transitions) is
# where its data is scarce.
EXTRA_FRACTIONS = {"hopper-me": (0.01,)}
ARMS = (("edp", 0.0), ("cdp", runner.MAIN_WEIGHT))
SWEEP_WEIGHTS = (0.01, 1.0)
QUIRKS = {"float_embedding": "time_embedding=positional", "polyak_targets": "tau=0.005",
          "ema_copy": "ema_warmup=copy"}
# With the exact penalty on every sample of every batch of 512, paper-il took 301 s for 500 steps
# of 5 seeds at d = 2 (PointMaze umaze, 2-core CPU; compilation and a 1-episode evaluation
# included), i.e. about 0.55 s per step: 20k steps
# would take 3 hours per cell, so the il cells train for fewer steps than the offline-RL ones.
IL_STEPS = 5000
ABLATION_TASK = "hopper-mr"  # the sweep and quirk cells: Hopper medium-replay at 10 %
# The fast study: the fast presets' arm beside the exact-penalty (cdp) and weight-0 (edp) cells of
# these rows, which are the rl / il studies' own cells (not rerun). (study, task, fraction).
# Hopper medium-replay at 10% is left out: its dataset came from a SAC run that cannot be rebuilt
# (docs/DATASETS.md), and a fast arm on another medium-replay dataset would not pair with the
# recorded arms.
# Hopper medium-expert (the paper's low-data claim) has all three arms at both fractions.
FAST_ROWS = (("il", "push", None), ("il", "push", 0.1), ("il", "umaze", None),
             ("rl", "umaze", None), ("rl", "hopper-me", 0.1), ("rl", "hopper-me", None),
             ("rl", "hopper-me", 0.01))
FAST_PRESETS = {"rl": "paper-fast", "il": "paper-il-fast"}
# The paper's budget (200k gradient steps) on its headline row, and the seeds added to the one row
# where CDP led on every seed (docs/RESULTS.md fixes both before their cells ran).
BUDGET_STEPS = 200_000
BUDGET_TASK = "hopper-mr"
BUDGET_EVAL_FACTOR = 5  # evaluate every 5 x --eval-every = 10,000 steps
SEEDS_ROW = ("hopper-me", 0.01)
MORE_SEEDS = "5-14"
TITLES = {
    "sweep": "Penalty weight sweep: Hopper medium-replay, 10% of the transitions (weights 0 and "
             "0.1: the rl cells)",
    "quirks": "Official quirks, one at a time: Hopper medium-replay, 10% of the transitions, "
              "weight 0.1 (reference: the rl cdp cell)",
    "fast": "The fast penalty (paper-fast / paper-il-fast) beside the exact one (cdp) and weight 0 "
            "(edp)",
    "budget": "The paper's budget: Hopper medium-replay, 100% of the transitions, 200,000 steps",
    "seeds": "Hopper medium-expert 1%: seeds 5-14 (seeds 0-4: the rl cells)",
}


def _rl_cell(study_name: str, task: str, fraction, arm: str, weight: float,
             sets: tuple[str, ...] = ()) -> runner.Cell:
    pct = runner.percent_label(fraction)
    name = f"rl_{task}_f{pct.rstrip('%')}_{arm.replace('=', '')}"
    # Hopper's 1000-step episodes with 100 candidates per step make an evaluation about 3x
    # PointMaze umaze's 300-step ones: evaluated half as often (checkpointed as often). PointMaze
    # medium's (600 steps, its env's time limit) are evaluated as often as umaze's.
    return runner.Cell(study_name, name, "dql", RL_TASKS[task][0],
                       fraction, weight, sets=sets, group=f"{task} {pct}", arm=arm,
                       preset="paper", eval_factor=2 if task.startswith("hopper") else 1)


def cells_for(name: str, tasks: tuple[str, ...], il_steps: int | None = None,
              il_eval_every: int = 1000, budget_steps: int = BUDGET_STEPS) -> list[runner.Cell]:
    """The grid of one study (see the module docstring)."""
    if name == "budget":
        if BUDGET_TASK not in tasks:
            return []
        return [dataclasses.replace(_rl_cell("budget", BUDGET_TASK, None, arm, weight),
                                    name=f"rl_{BUDGET_TASK}_f100_{arm}_200k", steps=budget_steps,
                                    group=f"{BUDGET_TASK} 100% 200k",
                                    eval_factor=BUDGET_EVAL_FACTOR)
                for arm, weight in ARMS]
    if name == "seeds":
        task, fraction = SEEDS_ROW
        if task not in tasks:
            return []
        return [dataclasses.replace(c, study="seeds", name=f"{c.name}_s{MORE_SEEDS}",
                                    seeds=MORE_SEEDS)
                for c in cells_for("rl", (task,)) if c.fraction == fraction]
    if name == "rl":
        return [_rl_cell("rl", task, fraction, arm, weight)
                for task in tasks if task in RL_TASKS
                for fraction in FRACTIONS + EXTRA_FRACTIONS.get(task, ()) for arm, weight in ARMS]
    if name == "il":
        out = []
        for task in (t for t in tasks if t in IL_TASKS):
            for fraction in FRACTIONS:
                pct = runner.percent_label(fraction)
                for arm, weight in ARMS:
                    out.append(runner.Cell(
                        "il", f"il_{task}_f{pct.rstrip('%')}_{arm}", "dbc", IL_TASKS[task][0],
                        fraction, weight, group=f"{task} {pct}", arm=arm, preset="paper-il",
                        extra_args=("--fraction-unit", "episodes", "--eval-every",
                                    str(il_eval_every), "--checkpoint-every",
                                    str(il_eval_every)), steps=il_steps))
        return out
    if name == "sweep":
        return [_rl_cell("sweep", ABLATION_TASK, 0.1, f"weight={w:g}", w) for w in SWEEP_WEIGHTS]
    if name == "fast":  # the exact-penalty cell of each row, re-labelled as the fast preset's
        out = []
        for kind, task, fraction in FAST_ROWS:
            if task not in tasks:
                continue
            exact = next(c for c in cells_for(kind, (task,), il_steps, il_eval_every)
                         if c.fraction == fraction and c.arm == "cdp")
            out.append(dataclasses.replace(exact, study="fast", arm="fast",
                                           name=exact.name.replace("_cdp", "_fast"),
                                           preset=FAST_PRESETS[kind]))
        return out
    if name == "quirks":
        return [_rl_cell("quirks", ABLATION_TASK, 0.1, quirk, runner.MAIN_WEIGHT, sets=(setting,))
                for quirk, setting in QUIRKS.items()]
    raise ValueError(f"Unknown study {name!r}; expected one of {STUDIES}.")


def reference_cells(name: str, tasks=(), il_steps: int | None = None,
                    il_eval_every: int = 1000) -> list[runner.Cell]:
    """The cells a study's table compares to: a sweep / quirk table the ``rl`` cells of Hopper
    medium-replay 10 % (both arms), the fast study both arms of each of its rows."""
    if name in ("sweep", "quirks"):
        return [c for c in cells_for("rl", (ABLATION_TASK,)) if c.fraction == 0.1]
    if name == "fast":
        return [c for kind, task, fraction in FAST_ROWS if task in tasks
                for c in cells_for(kind, (task,), il_steps, il_eval_every)
                if c.fraction == fraction]
    if name == "seeds" and SEEDS_ROW[0] in tasks:  # seeds 0-4 of the same row
        return [c for c in cells_for("rl", (SEEDS_ROW[0],)) if c.fraction == SEEDS_ROW[1]]
    return []


def study_cells(name: str, tasks, args) -> list[runner.Cell]:
    """The cells of study ``name`` on ``tasks``, after the cells it compares with."""
    il_eval_every = min(args.eval_every, 1000)
    return (reference_cells(name, tuple(tasks), args.il_steps, il_eval_every)
            + cells_for(name, tuple(tasks), args.il_steps, il_eval_every, args.budget_steps))


def dataset_missing(dataset_id: str) -> bool:
    from cdp_jax.data import minari  # noqa: PLC0415 (keep --help free of JAX start-up)

    return not Path(minari.dataset_path(dataset_id), "data").is_dir()


def build_hint(dataset_id: str) -> str:
    commands = {data: command for table in (RL_TASKS, IL_TASKS) for data, command in table.values()}
    return f"python experiments/{commands[dataset_id]}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=(*STUDIES, "all"), default="all")
    # Hopper (D4RL tasks in the paper's own table) before PointMaze medium (no official row).
    parser.add_argument("--tasks", nargs="+", default=["umaze", "hopper-mr", "hopper-m",
                                                        "hopper-me", "medium", "push"],
                        choices=sorted({*RL_TASKS, *IL_TASKS}),
                        help="tasks of the rl and il studies (the order cells run in)")
    parser.add_argument("--cells", nargs="+", default=None, metavar="NAME",
                        help="only these cells (names as in runs/paper_study/<study>/)")
    runner.add_run_args(parser, out=str(ROOT / "results" / "paper"), steps=20_000,
                        eval_every=2000, eval_episodes=10)
    parser.add_argument("--il-steps", type=fields.positive_int, default=IL_STEPS,
                        help="gradient steps of the il cells (--steps is the offline-RL cells')")
    parser.add_argument("--budget-steps", type=fields.positive_int, default=BUDGET_STEPS,
                        help="gradient steps of the budget cells (the paper's 200k)")
    parser.set_defaults(runs_root=str(ROOT / "runs" / "paper_study"))
    args = runner.parse_run_args(parser, argv)
    if args.quick:
        args.il_steps = args.budget_steps = args.steps
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    names = STUDIES if args.study == "all" else (args.study,)
    failures = []
    for name in names:
        # The whole grid is collected (a partial run must not drop finished cells from the
        # JSON); only the cells selected by --tasks / --cells run.
        grid = study_cells(name, RL_TASKS | IL_TASKS, args)
        cells = study_cells(name, args.tasks, args)
        if args.cells is not None:
            cells = [c for c in cells if c.name in args.cells]
        if not args.collect_only:
            ready = []
            for cell in cells:
                if runner.finished_elsewhere(cell, args):
                    print(f"[{name}] {cell.name}: recorded in {cell.study}.json, not rerun",
                          flush=True)
                elif dataset_missing(cell.dataset):
                    print(f"[{name}] skipping {cell.name}: dataset {cell.dataset} is not built; "
                          f"build it with: {build_hint(cell.dataset)}", flush=True)
                else:
                    ready.append(cell)
            try:  # failed cells are reported after every study has had its turn
                runner.run_cells(name, ready, args)
            except RuntimeError as err:
                failures.append(str(err))
        runner.diagnose_finished(cells, args)
        print(f"{name}: {runner.collect(name, grid, args, TITLES.get(name))}", flush=True)
    if failures:
        raise RuntimeError(" | ".join(failures))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
