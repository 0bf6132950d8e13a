"""Manipulation imitation study: DBC with action chunks on the scripted Fetch demonstrations.

Diffusion behaviour cloning (observation history 2, chunks of 16 actions, 8 executed, 10
DPM-Solver++(2M) steps) with a temporal UNet or an MLP over the flattened chunk, with and without
the contraction penalty (eigen, weight 0.1, ``network`` target, all noise levels; for the UNet
on 16 samples of each batch of 128), on
``cdp/fetch/push-v0`` and ``cdp/fetch/pickandplace-v0`` with 100 / 50 / 10 / 5 % of the 200
demonstrations. Each cell is one ``experiments/train.py --seeds ...`` call (the machinery of
``experiments/study_runner.py``: finished cells are skipped, diagnostics and the JSON follow)::

    python experiments/make_dataset.py fetch --task push          # once per task
    python experiments/make_dataset.py fetch --task pickandplace
    python experiments/fetch_study.py                             # the whole grid
    python experiments/fetch_study.py --tasks push --backbones mlp --fractions 1.0 0.1
    python experiments/fetch_study.py --collect-only
    python experiments/fetch_study.py --ablations                 # the UNet ablation below

Writes ``results/fetch/imitation.json``; tables with ``python experiments/report_results.py
--results results/fetch``.

``--ablations`` varies the UNet's penalty on Push with all demonstrations, the cell where it
lowered success: weight 0.01 instead of 0.1, and the lowest 10 % of noise levels (window 0.1, the
offline-RL default) instead of all. Its table compares them with that cell's vanilla and CDP arms
(``results/fetch/ablations.json``).
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
TASKS = {"push": "cdp/fetch/push-v0", "pickandplace": "cdp/fetch/pickandplace-v0"}
# The piloted chunk setting (tests/test_fetch.py): history 2, horizon 16, 8 executed, 10 steps.
CHUNK = ("obs_horizon=2", "action_horizon=16", "n_action=8", "time_dim=32", "sampler_steps=10",
         "lr=0.001", "contraction.window=1.0")
# The UNet's penalty is estimated on 16 of the 128 samples of each batch (noise levels drawn over
# the whole range): with every sample penalised a UNet step costs about 6x an unpenalised one on
# CPU, against 3x for the MLP (measured: 5 seeds, 250 steps, Push).
BACKBONES = {"mlp": ("actor_network=mlp", "hidden_dim=256", "depth=3"),
             "unet": ("actor_network=unet", "hidden_dim=16", "depth=2",
                      "contraction.num_penalised=16")}


def cells(tasks, backbones, fractions) -> list[runner.Cell]:
    out = []
    for task in tasks:
        for backbone in backbones:
            for fraction in fractions:
                frac = None if fraction >= 1.0 else fraction
                pct = runner.percent_label(frac)
                for arm, weight in (("vanilla", 0.0), ("cdp", runner.MAIN_WEIGHT)):
                    out.append(runner.Cell(
                        "fetch", f"dbc_{backbone}_{task}_f{pct.rstrip('%')}_{arm}", "dbc",
                        TASKS[task], frac, weight, sets=CHUNK + BACKBONES[backbone],
                        group=f"{task} {backbone} {pct}", arm=arm,
                        extra_args=("--batch-size", "128")))
    return out


def ablation_cells() -> list[runner.Cell]:
    """The UNet ablation on Push 100 %: the grid's two arms first, then the two variants."""
    reference = cells(["push"], ["unet"], [1.0])
    cdp = reference[1]
    variant = lambda name, arm, **kw: dataclasses.replace(
        cdp, study="fetch_ablations", name=f"dbc_unet_push_f100_{name}", arm=arm, **kw)
    window_sets = tuple(s for s in cdp.sets if not s.startswith("contraction.window="))
    return reference + [
        variant("weight0.01", "weight=0.01", weight=0.01),
        variant("window0.1", "window=0.1", sets=window_sets + ("contraction.window=0.1",)),
    ]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--backbones", nargs="+", choices=sorted(BACKBONES),
                        default=["mlp", "unet"])
    parser.add_argument("--fractions", nargs="+", type=fields.positive_float,
                        default=[1.0, 0.5, 0.1, 0.05])
    parser.add_argument("--ablations", action="store_true",
                        help="run the UNet penalty ablation (Push, 100%%) instead of the grid")
    runner.add_run_args(parser, out=str(ROOT / "results" / "fetch"), steps=3000, eval_every=1000,
                        eval_episodes=20)
    return runner.parse_run_args(parser, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ablations:
        name, grid = "ablations", ablation_cells()
        title = "Ablations (DBC, temporal UNet, Push, 100% of the demonstrations)"
    else:
        name, grid, title = "imitation", cells(args.tasks, args.backbones, args.fractions), None
    if not args.collect_only:
        runner.run_cells(f"fetch {name}", grid, args)
    runner.diagnose_finished(grid, args)
    print(f"{name}: {runner.collect(name, grid, args, title=title)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
