"""PointMaze evidence studies: does the contraction penalty help offline RL and imitation learning?

Runs the grid of the evidence issue on the locally built PointMaze datasets, every cell being one
``experiments/train.py --seeds ...`` call (all seeds of a cell trained as one vmapped program, the
same seeds and therefore the same data subsets for both arms), then collects the per-seed
evaluations, learning curves and contraction diagnostics into ``results/pointmaze/<study>.json``.

Studies (``--study``):

* ``offline_rl``: EDP + Diffusion-QL, weight 0 vs 0.1, fractions 100 / 40 / 5 % of the episodes, on
  ``cdp/pointmaze/umaze-v0`` and ``cdp/pointmaze/medium-v0`` (``--mazes``).
* ``imitation``: diffusion behaviour cloning (action chunks of 4, 2 executed), weight 0 vs 0.1 on
  all noise levels (window 1.0, as the official imitation-learning code), fractions 100 / 50 / 10 /
  5 % on umaze.
* ``ablations``: Diffusion-QL on umaze at 5 %: weight 0.01 / 0.1 / 1 / 10, target ``drift``,
  Frobenius penalty, window 1.0 (all noise levels); and both main arms re-evaluated with 5, 15 and
  50 solver steps.

Cells already finished (``seeds.json`` present) are skipped, and a cell interrupted in the middle
continues from its seeds' latest checkpoint (``train.py --resume``), so an interrupted study
resumes where it stopped (the machinery every study shares is ``experiments/study_runner.py``)::

    python experiments/pointmaze_study.py                         # every study, then the JSON
    python experiments/pointmaze_study.py --study offline_rl --mazes umaze
    python experiments/pointmaze_study.py --collect-only          # rebuild the JSON (keeps recorded cells)
    python experiments/pointmaze_study.py --quick --runs-root /tmp/s --out /tmp/r   # smoke run

Figures and tables: ``python experiments/report_results.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import study_runner as runner  # noqa: E402

from cdp_jax import cli  # noqa: E402

ROOT = runner.ROOT
DATASETS = {"umaze": "cdp/pointmaze/umaze-v0", "medium": "cdp/pointmaze/medium-v0"}
STUDIES = ("offline_rl", "imitation", "ablations")


def cells_for(study: str, mazes: tuple[str, ...]) -> list[runner.Cell]:
    """The grid of one study (see the module docstring)."""
    cells = []
    if study == "offline_rl":
        for maze in mazes:
            for fraction in (None, 0.4, 0.05):
                for arm, weight in (("vanilla", 0.0), ("cdp", runner.MAIN_WEIGHT)):
                    pct = runner.percent_label(fraction)
                    cells.append(runner.Cell(study, f"dql_{maze}_f{pct.rstrip('%')}_{arm}", "dql",
                                             DATASETS[maze], fraction, weight,
                                             group=f"{maze} {pct}", arm=arm))
    elif study == "imitation":
        for fraction in (None, 0.5, 0.1, 0.05):
            for arm, weight in (("vanilla", 0.0), ("cdp", runner.MAIN_WEIGHT)):
                pct = runner.percent_label(fraction)
                # The official imitation-learning code penalises every noise level.
                cells.append(runner.Cell(study, f"dbc_umaze_f{pct.rstrip('%')}_{arm}", "dbc",
                                         DATASETS["umaze"], fraction, weight,
                                         sets=("contraction.window=1.0",),
                                         group=f"umaze {pct}", arm=arm))
    elif study == "ablations":
        base = dict(study=study, agent="dql", dataset=DATASETS["umaze"], fraction=0.05,
                    group="umaze 5%")
        # weight 0 and 0.1 are the offline_rl cells of umaze 5%, which the ablations reuse.
        for weight in (0.01, 1.0, 10.0):
            cells.append(runner.Cell(name=f"weight_{weight:g}", weight=weight,
                                     arm=f"weight={weight:g}", **base))
        for name, setting in (("target_drift", "contraction.target=drift"),
                              ("penalty_frobenius", "contraction.penalty=frobenius"),
                              ("window_all", "contraction.window=1.0")):
            cells.append(runner.Cell(name=name, weight=runner.MAIN_WEIGHT, sets=(setting,),
                                     arm=setting.removeprefix("contraction."), **base))
    else:
        raise ValueError(f"Unknown study {study!r}; expected one of {STUDIES}.")
    return cells


def ablation_reference_cells() -> list[runner.Cell]:
    """The offline_rl cells (umaze 5 %, weight 0 and 0.1) the ablation table compares against."""
    return [c for c in cells_for("offline_rl", ("umaze",)) if c.fraction == 0.05]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=(*STUDIES, "all"), default="all")
    parser.add_argument("--mazes", nargs="+", choices=sorted(DATASETS), default=["umaze", "medium"],
                        help="mazes of the offline_rl study")
    parser.add_argument("--cells", nargs="+", default=None, metavar="NAME",
                        help="only these cells (names as in runs/study/<study>/)")
    runner.add_run_args(parser, out=str(ROOT / "results" / "pointmaze"), steps=2000,
                        eval_every=500, eval_episodes=10)
    return runner.parse_run_args(parser, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    studies = STUDIES if args.study == "all" else (args.study,)
    for study in studies:
        cells = cells_for(study, tuple(args.mazes))
        if study == "ablations":
            cells = ablation_reference_cells() + cells
        if args.cells is not None:
            cells = [c for c in cells if c.name in args.cells]
        if not args.collect_only:
            runner.run_cells(study, cells, args)
            if study == "ablations":
                print("[ablations] solver-step re-evaluations ...", flush=True)
                runner.run_solver_step_evals(
                    [c for c in cells if c in ablation_reference_cells()], args)
        runner.diagnose_finished(cells, args)
        print(f"{study}: {runner.collect(study, cells, args)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
