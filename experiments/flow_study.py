"""Flow-matching policies with and without CDP: FQL (offline RL) and flow BC (imitation).

Every cell is one ``experiments/train.py --preset <preset> --seeds ...`` call (all seeds of a cell
trained as one vmapped program), with the machinery of ``experiments/study_runner.py``: finished
cells are skipped, an interrupted cell continues from its last checkpoint (``--resume``), then
``results/flow/<study>.json``; runs under ``runs/flow_study/<study>/<cell>/``.

Studies (``--study``; they run in this order, their cells in the order of ``--tasks``):

* ``alpha``: FQL's distillation weight, tuned per offline-RL task before its main cells, by a
  rule fixed in advance (:func:`choose_alpha`). ``--preset fql --set alpha=A`` for A in 0.3, 1,
  3, 10, 30, seed 5 only (outside the main seeds 0-4), 10,000 gradient steps (``--alpha-steps``),
  evaluation and checkpoint every 2,000 steps on 10 episodes, the task's data fraction. The
  choice and every alpha's score are written under ``alpha_choice`` in ``alpha.json``.
* ``rl``: FQL (``--preset fql``, contraction weight 0) vs FQL + CDP (``--preset fql-cdp``, the
  penalty on the behaviour flow, weight 0.1), both with the task's chosen alpha, seeds 0-4,
  20,000 steps, evaluation every 4,000 steps on 10 episodes (checkpoints every 2,000), on Hopper
  medium-expert at 1 % of the transitions (``hopper-me1``) and medium-replay at 10 %
  (``hopper-mr10``). A task whose alpha cells are not all finished has no rl cells yet (the
  study prints which alpha cells are missing; ``rl.json`` lists them under ``withheld``).
* ``il``: flow BC (``--preset flow-bc``) vs flow BC + CDP (``--preset flow-bc-cdp``) on Fetch
  Push, 100 % and 10 % of the demonstrations (whole episodes), seeds 0-4, 5,000 steps
  (``--il-steps``), evaluation and checkpoint every 1,000 steps on 10 episodes. The data side is
  paper-il's (``paper_study.py --study il``): min-max observation normaliser, whole episodes, a
  history of 2 observations (``--set obs_horizon=2``), one action predicted and executed; the
  network, batch (256; paper-il 512) and optimiser are the flow-bc preset's.

The arms they are compared with are not rerun: EDP / CDP on Hopper medium-expert 1 %
(``rl_hopper-me_f1_edp/cdp``, ``results/paper/rl.json``) and on Push (``il_push_f100_edp/cdp``,
``il_push_f10_edp/cdp``, ``results/paper/il.json``); :func:`reference_cells` gives paper_study's
own cells for them, and each JSON names them with their file and command under
``reference_cells``.

Contraction diagnostics (``study_diagnostics.py``) are not computed: they follow a diffusion
sampler's trajectories (the agent's noise schedule and ``_actor``), which FQL and flow BC do
not have (see :data:`UNDIAGNOSED_AGENTS`).

    python experiments/make_dataset.py fetch --task push     # the il study's dataset
    python experiments/flow_study.py                         # alpha, rl, il, then the JSONs
    python experiments/flow_study.py --study alpha --tasks hopper-me1
    python experiments/flow_study.py --study rl --tasks hopper-me1
    python experiments/flow_study.py --collect-only          # rebuild the JSONs (keeps recorded cells)
    python experiments/flow_study.py --quick --runs-root /tmp/fs --out /tmp/fr --study il

``--task-dataset TASK=ID`` trains a task's cells on another dataset (smoke runs on a tiny local
dataset); the commands, and so the recorded cells, then differ from the study's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import paper_study  # noqa: E402
import study_runner as runner  # noqa: E402

from cdp_jax import cli, files  # noqa: E402
from cdp_jax.configs import fields  # noqa: E402
from cdp_jax.configs import flow_bc as flow_bc_config  # noqa: E402
from cdp_jax.configs import fql as fql_config  # noqa: E402

ROOT = runner.ROOT
STUDIES = ("alpha", "rl", "il")
# task -> (dataset id, fraction of the transitions); hopper-me1 first (the paper's low-data row).
RL_TASKS = {"hopper-me1": ("cdp/hopper/medium-expert-v0", 0.01),
            "hopper-mr10": ("cdp/hopper/medium-replay-v0", 0.1)}
IL_TASKS = {"push": "cdp/fetch/push-v0"}
IL_FRACTIONS = (None, 0.1)  # of the demonstrations (whole episodes)
# (arm = train.py preset, contraction weight): the -cdp presets' own weight, passed explicitly
RL_ARMS = (("fql", 0.0), ("fql-cdp", fql_config.FLOW_RL_PENALTY.weight))
IL_ARMS = (("flow-bc", 0.0), ("flow-bc-cdp", flow_bc_config.FLOW_IL_PENALTY.weight))
IL_DATA_ARGS = ("--fraction-unit", "episodes", "--obs-normalizer", "minmax")
IL_SETS = ("obs_horizon=2",)  # paper-il's history of 2 observations
ALPHAS = (0.3, 1.0, 3.0, 10.0, 30.0)
ALPHA_SEED = "5"  # outside the main seeds 0-4: the tuning does not see the seeds it is scored on
ALPHA_STEPS = 10_000
ALPHA_WINDOW = 3  # the running average over the last 3 evaluations (6k, 8k, 10k)
ALPHA_TIE = 1.0  # normalised-score points within which the larger alpha is preferred
ALPHA_RULE = ("the alpha with the highest mean normalised score over its last 3 evaluations "
              "(6k, 8k, 10k); among the alphas within 1.0 point of the highest, the largest "
              "(closer to behaviour cloning)")
RL_EVAL_FACTOR = 2  # Hopper's 1000-step episodes: evaluate every 2 x --eval-every = 4,000 steps
IL_STEPS = 5000
IL_EVAL_EVERY = 1000
# study_diagnostics follows a diffusion sampler (agent_config.schedule, diffusion_steps and the
# agent module's _actor); the flow agents have none of these, so it raises AttributeError on
# their run directories.
UNDIAGNOSED_AGENTS = ("fql", "flow_bc")
REFERENCE_RESULTS = {"rl": "results/paper/rl.json", "il": "results/paper/il.json"}
TITLES = {
    "alpha": "FQL's alpha, tuned on seed 5 (10,000 steps) before the main cells",
    "rl": "FQL vs FQL + CDP (alpha chosen per task by the alpha study); reference: EDP / CDP "
          "on Hopper medium-expert 1% (results/paper/rl.json)",
    "il": "Flow BC vs flow BC + CDP on Fetch Push; reference: EDP / CDP (results/paper/il.json)",
}


def _dataset(task: str, args) -> str:
    """The task's dataset id, or the one ``--task-dataset`` puts in its place."""
    default = RL_TASKS[task][0] if task in RL_TASKS else IL_TASKS[task]
    return dict(args.task_dataset).get(task, default)


def alpha_cell_name(task: str, alpha: float) -> str:
    return f"alpha_{task}_a{alpha:g}"


def alpha_cells(task: str, args) -> list[runner.Cell]:
    """The alpha cells of one offline-RL task (``args``: the alpha study's, :func:`study_args`)."""
    _, fraction = RL_TASKS[task]
    return [runner.Cell("alpha", alpha_cell_name(task, alpha), "fql", _dataset(task, args),
                        fraction, 0.0, sets=(f"alpha={alpha:g}",), group=task,
                        arm=f"alpha={alpha:g}", extra_args=("--fraction-unit", "transitions"),
                        preset="fql", steps=args.steps, eval_factor=1, seeds=ALPHA_SEED)
            for alpha in ALPHAS]


def rl_cells(task: str, alpha: float, args) -> list[runner.Cell]:
    """Both arms of one offline-RL task at the chosen ``alpha``."""
    _, fraction = RL_TASKS[task]
    return [runner.Cell("rl", f"rl_{task}_{arm}", "fql", _dataset(task, args), fraction, weight,
                        sets=(f"alpha={alpha:g}",), group=task, arm=arm,
                        extra_args=("--fraction-unit", "transitions"), preset=arm,
                        steps=args.steps, eval_factor=RL_EVAL_FACTOR, seeds=args.seeds)
            for arm, weight in RL_ARMS]


def il_cells(task: str, args) -> list[runner.Cell]:
    out = []
    for fraction in IL_FRACTIONS:
        pct = runner.percent_label(fraction)
        for arm, weight in IL_ARMS:
            out.append(runner.Cell(
                "il", f"il_{task}_f{pct.rstrip('%')}_{arm}", "flow_bc", _dataset(task, args),
                fraction, weight, sets=IL_SETS, group=f"{task} {pct}", arm=arm,
                extra_args=IL_DATA_ARGS, preset=arm, steps=args.steps, eval_factor=1,
                seeds=args.seeds))
    return out


# ----------------------------------------------------------------------------- alpha's rule


# What train.py's error line says when a loss turns non-finite (TrainingDivergedError).
DIVERGED_LINE = "; training stopped."


def diverged(cell: runner.Cell, args) -> bool:
    """Whether a cell's run stopped on a non-finite loss in its first run and again in the one
    resume the pre-registration allows (its log holds train.py's divergence line twice): then it
    is reported as diverged, and an alpha cell scores lowest instead of holding up the study."""
    log = cell.log_path(args)
    return log.exists() and log.read_text(errors="replace").count(DIVERGED_LINE) >= 2


def alpha_score(record: dict) -> tuple[float, list[int]]:
    """A finished alpha cell's score: the mean over its seeds of the mean normalised score of its
    last :data:`ALPHA_WINDOW` evaluations, and the steps of those evaluations (first seed's); a
    diverged cell (``{"diverged": True}``) scores ``-inf``."""
    if record.get("diverged"):
        return -math.inf, []
    per_seed, steps = [], None
    for seed in record["seeds"].values():
        last = seed["curve"][-ALPHA_WINDOW:]
        per_seed.append(sum(p["normalized_score"] for p in last) / len(last))
        steps = steps or [int(p["step"]) for p in last]
    return sum(per_seed) / len(per_seed), steps


def choose_alpha(records: Mapping[float, dict | None]) -> float | None:
    """The rule fixed before the main cells: the alpha whose score (:func:`alpha_score`) is the
    highest; among the alphas within :data:`ALPHA_TIE` points of the highest, the largest (the
    safer side: closer to behaviour cloning). ``None`` if any alpha's cell has no record yet.
    A non-finite score (a diverged run) counts as the lowest."""
    if not records or any(r is None for r in records.values()):
        return None
    scores = {}
    for alpha, record in records.items():
        score = alpha_score(record)[0]
        scores[alpha] = score if math.isfinite(score) else -math.inf
    best = max(scores.values())
    return max(a for a, s in scores.items() if s >= best - ALPHA_TIE)


def tuning_record(task: str, records: Mapping[float, dict | None]) -> dict:
    """What ``alpha.json`` records of one task's choice: the rule, each alpha's score and the
    evaluation steps it averages, the chosen alpha (``None`` until every alpha cell finished) and
    the names of the alpha cells still missing."""
    scores = {}
    for alpha, record in records.items():
        if record is not None and record.get("diverged"):
            scores[f"{alpha:g}"] = {"score": None, "diverged": True}
        elif record is not None:
            score, steps = alpha_score(record)
            scores[f"{alpha:g}"] = {"score": score, "steps": steps}
    return {"rule": ALPHA_RULE, "chosen": choose_alpha(records), "scores": scores,
            "missing": [alpha_cell_name(task, a) for a, r in records.items() if r is None]}


def _finished_record(cell: runner.Cell, args) -> dict | None:
    """A cell's result: from its run directory, else as recorded in its study's JSON."""
    return (runner.collect_cell(cell, args)
            or runner.recorded_cell(runner.own_record(cell, args), cell, args))


def alpha_records(task: str, args) -> dict[float, dict | None]:
    """Each alpha's finished record for ``task`` (``None`` where its cell has not finished;
    ``{"diverged": True}`` where it diverged twice, see :func:`diverged`)."""
    alpha_args = study_args("alpha", args)
    records = {}
    for alpha, cell in zip(ALPHAS, alpha_cells(task, alpha_args), strict=True):
        record = _finished_record(cell, alpha_args)
        if record is None and diverged(cell, alpha_args):
            record = {"diverged": True}
        records[alpha] = record
    return records


# ----------------------------------------------------------------------------- the grids


def study_args(name: str, args) -> argparse.Namespace:
    """``args`` as study ``name``'s cells and JSON see them: its own length, evaluation interval
    and seeds (the alpha study: seed 5; the il study: every 1,000 steps)."""
    steps = {"alpha": args.alpha_steps, "rl": args.steps, "il": args.il_steps}[name]
    eval_every = min(args.eval_every, IL_EVAL_EVERY) if name == "il" else args.eval_every
    seeds = ALPHA_SEED if name == "alpha" else args.seeds
    return argparse.Namespace(**{**vars(args), "steps": steps, "eval_every": eval_every,
                                 "seeds": seeds})


def cells_for(name: str, tasks, args, choices: Mapping[str, float | None] | None = None
              ) -> list[runner.Cell]:
    """The grid of one study on ``tasks`` (``args``: the study's own, :func:`study_args`). The rl
    cells of a task exist only once its alpha is chosen (``choices[task]`` not None)."""
    if name == "alpha":
        return [c for task in tasks if task in RL_TASKS for c in alpha_cells(task, args)]
    if name == "rl":
        choices = choices or {}
        return [c for task in tasks if task in RL_TASKS and choices.get(task) is not None
                for c in rl_cells(task, choices[task], args)]
    if name == "il":
        return [c for task in tasks if task in IL_TASKS for c in il_cells(task, args)]
    raise ValueError(f"Unknown study {name!r}; expected one of {STUDIES}.")


def reference_cells(study: str) -> list[runner.Cell]:
    """paper_study's own cells that a study's table compares with (recorded in
    :data:`REFERENCE_RESULTS`, never rerun here): EDP / CDP on Hopper medium-expert 1 % for rl,
    on Push 100 % and 10 % for il."""
    if study == "rl":
        return [c for c in paper_study.cells_for("rl", ("hopper-me",)) if c.fraction == 0.01]
    if study == "il":  # as paper_study's defaults build them: --il-steps 5000, every 1,000 steps
        return paper_study.cells_for("il", ("push",), paper_study.IL_STEPS, IL_EVAL_EVERY)
    return []


def reference_record(study: str) -> dict:
    """``{cell name: {"results": file, "command": its command}}`` for :func:`reference_cells`,
    the commands as paper_study runs them (its default flags)."""
    paper_args = paper_study.parse_args([])
    return {c.name: {"results": REFERENCE_RESULTS[study], "command": c.display_command(paper_args)}
            for c in reference_cells(study)}


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=(*STUDIES, "all"), default="all")
    parser.add_argument("--tasks", nargs="+", default=[*RL_TASKS, *IL_TASKS],
                        choices=[*RL_TASKS, *IL_TASKS],
                        help="tasks of the studies (the order cells run in)")
    parser.add_argument("--cells", nargs="+", default=None, metavar="NAME",
                        help="only these cells (names as in runs/flow_study/<study>/)")
    runner.add_run_args(parser, out=str(ROOT / "results" / "flow"), steps=20_000,
                        eval_every=2000, eval_episodes=10)
    parser.add_argument("--alpha-steps", type=fields.positive_int, default=ALPHA_STEPS,
                        help="gradient steps of the alpha cells (--steps is the rl cells')")
    parser.add_argument("--il-steps", type=fields.positive_int, default=IL_STEPS,
                        help="gradient steps of the il cells")
    parser.add_argument("--task-dataset", action="append", default=[], type=_task_dataset,
                        metavar="TASK=ID", help="train TASK's cells on dataset ID (smoke runs)")
    parser.set_defaults(runs_root=str(ROOT / "runs" / "flow_study"))
    args = runner.parse_run_args(parser, argv)
    if args.quick:
        args.alpha_steps = args.il_steps = args.steps
    return args


def _task_dataset(text: str) -> tuple[str, str]:
    task, sep, dataset_id = text.partition("=")
    if not sep or task not in {*RL_TASKS, *IL_TASKS} or not dataset_id:
        raise argparse.ArgumentTypeError(
            f"invalid --task-dataset {text!r}; expected TASK=ID with TASK one of "
            f"{[*RL_TASKS, *IL_TASKS]}")
    return task, dataset_id


def _build_hint(dataset_id: str) -> str:
    try:
        return paper_study.build_hint(dataset_id)
    except KeyError:  # a --task-dataset id
        return "(no recipe here: experiments/make_dataset.py --help)"


def tunings(args) -> dict[str, dict]:
    """:func:`tuning_record` of every offline-RL task, from the alpha cells finished so far."""
    return {task: tuning_record(task, alpha_records(task, args)) for task in RL_TASKS}


def run_study(name: str, args) -> str | None:
    """Run the selected unfinished cells of one study, then write its JSON; returns the failure
    message of its failed cells, if any."""
    sargs = study_args(name, args)
    extra = {}
    choices = None
    if name == "rl":
        tuned = tunings(args)
        choices = {task: t["chosen"] for task, t in tuned.items()}
        withheld = {task: t["missing"] for task, t in tuned.items() if t["chosen"] is None}
        extra.update(alpha=choices, withheld=withheld)
    if name in REFERENCE_RESULTS:
        extra["reference_cells"] = reference_record(name)
    # The whole grid is collected (a partial run must not drop finished cells from the JSON);
    # only the cells selected by --tasks / --cells run.
    grid = cells_for(name, [*RL_TASKS, *IL_TASKS], sargs, choices)
    cells = cells_for(name, args.tasks, sargs, choices)
    if args.cells is not None:
        cells = [c for c in cells if c.name in args.cells]
    failure = None
    if not args.collect_only:
        for task in (t for t in args.tasks if name == "rl" and t in withheld):
            print(f"[rl] {task}: not run until its alpha is chosen; alpha cells not finished: "
                  f"{', '.join(withheld[task])}", flush=True)
        ready = []
        for cell in cells:
            if runner.finished_elsewhere(cell, sargs):
                print(f"[{name}] {cell.name}: recorded in {cell.study}.json, not rerun",
                      flush=True)
            elif paper_study.dataset_missing(cell.dataset):
                print(f"[{name}] skipping {cell.name}: dataset {cell.dataset} is not built; "
                      f"build it with: {_build_hint(cell.dataset)}", flush=True)
            else:
                ready.append(cell)
        try:
            runner.run_cells(name, ready, sargs)
        except RuntimeError as err:
            failure = str(err)
    runner.diagnose_finished([c for c in cells if c.agent not in UNDIAGNOSED_AGENTS], sargs)
    path = runner.collect(name, grid, sargs, TITLES[name])
    if name == "alpha":  # the choice as the cells just finished make it
        extra["alpha_choice"] = tunings(args)
    record = json.loads(path.read_text())
    files.write_json(path, {**record, **extra}, indent=1)
    print(f"{name}: {path}", flush=True)
    return failure


def main(argv=None) -> int:
    args = parse_args(argv)
    names = STUDIES if args.study == "all" else (args.study,)
    failures = [f for name in names if (f := run_study(name, args)) is not None]
    if failures:  # failed cells are reported after every study has had its turn
        raise RuntimeError(" | ".join(failures))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
