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
resumes where it stopped::

    python experiments/pointmaze_study.py                         # every study, then the JSON
    python experiments/pointmaze_study.py --study offline_rl --mazes umaze
    python experiments/pointmaze_study.py --collect-only          # rebuild the JSON (keeps recorded cells)
    python experiments/pointmaze_study.py --quick --runs-root /tmp/s --out /tmp/r   # smoke run

Figures and tables: ``python experiments/report_results.py``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from cdp_jax import cli

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"umaze": "cdp/pointmaze/umaze-v0", "medium": "cdp/pointmaze/medium-v0"}
STUDIES = ("offline_rl", "imitation", "ablations")
EVAL_SOLVER_STEPS = (5, 15, 50)
MAIN_WEIGHT = 0.1  # the paper's default, fixed for every main cell (not tuned here)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One grid cell: a train.py call over all seeds."""

    study: str
    name: str
    agent: str
    dataset: str
    fraction: float | None
    weight: float
    sets: tuple[str, ...] = ()
    group: str = ""  # the row a cell belongs to in the tables (e.g. "umaze 5%")
    arm: str = ""  # the column (e.g. "vanilla", "cdp", "weight=1")
    extra_args: tuple[str, ...] = ()  # further train.py flags (e.g. "--batch-size", "128")
    preset: str | None = None  # a train.py --preset the cell starts from (e.g. "paper")
    steps: int | None = None  # gradient steps of this cell (None: the study's --steps)
    eval_factor: int = 1  # evaluate every eval_factor x --eval-every steps (checkpoints: every)

    def command(self, args) -> list[str]:
        cmd = [sys.executable, str(ROOT / "experiments" / "train.py"), "--agent", self.agent,
               "--dataset", self.dataset, "--contraction-weight", str(self.weight),
               "--seeds", args.seeds, "--steps", str(self.steps or args.steps), "--eval-every",
               str(self.eval_factor * args.eval_every), "--checkpoint-every", str(args.eval_every),
               "--eval-episodes", str(args.eval_episodes), "--eval-envs",
               str(min(args.eval_episodes, 10)), "--updates-per-call",
               str(math.gcd(250, args.eval_every)), "--name", self.name, "--run-dir",
               str(self.run_dir(args)), "--no-progress"]
        if self.preset is not None:
            cmd += ["--preset", self.preset]
        if self.fraction is not None:
            cmd += ["--fraction", str(self.fraction)]
        for s in self.sets:
            cmd += ["--set", s]
        return cmd + list(self.extra_args)

    def run_dir(self, args) -> Path:
        return Path(args.runs_root) / self.study / self.name

    def log_path(self, args) -> Path:
        """The cell's training log, beside its run directory (``with_suffix`` would cut a name
        such as ``..._weight0.01`` at its dot)."""
        return self.run_dir(args).with_name(f"{self.name}.log")

    def display_command(self, args) -> str:
        """:meth:`command` as a reader would type it from the repository root."""
        def short(word: str) -> str:
            if word == sys.executable:
                return "python"
            if os.path.isabs(word) and Path(word).is_relative_to(ROOT):
                return os.path.relpath(word, ROOT)
            return word
        return shlex.join(short(w) for w in self.command(args))


def _pct(fraction: float | None) -> str:
    return "100%" if fraction is None else f"{round(fraction * 100)}%"


def cells_for(study: str, mazes: tuple[str, ...]) -> list[Cell]:
    """The grid of one study (see the module docstring)."""
    cells = []
    if study == "offline_rl":
        for maze in mazes:
            for fraction in (None, 0.4, 0.05):
                for arm, weight in (("vanilla", 0.0), ("cdp", MAIN_WEIGHT)):
                    tag = _pct(fraction).rstrip("%")
                    cells.append(Cell(study, f"dql_{maze}_f{tag}_{arm}", "dql", DATASETS[maze],
                                      fraction, weight, group=f"{maze} {_pct(fraction)}",
                                      arm=arm))
    elif study == "imitation":
        for fraction in (None, 0.5, 0.1, 0.05):
            for arm, weight in (("vanilla", 0.0), ("cdp", MAIN_WEIGHT)):
                tag = _pct(fraction).rstrip("%")
                # The official imitation-learning code penalises every noise level.
                cells.append(Cell(study, f"dbc_umaze_f{tag}_{arm}", "dbc", DATASETS["umaze"],
                                  fraction, weight, sets=("contraction.window=1.0",),
                                  group=f"umaze {_pct(fraction)}", arm=arm))
    elif study == "ablations":
        base = dict(agent="dql", dataset=DATASETS["umaze"], fraction=0.05, group="umaze 5%")
        # weight 0 and 0.1 are the offline_rl cells of umaze 5%, which the ablations reuse.
        for weight in (0.01, 1.0, 10.0):
            cells.append(Cell(study, f"weight_{weight:g}", weight=weight, arm=f"weight={weight:g}",
                              **base))
        cells.append(Cell(study, "target_drift", weight=MAIN_WEIGHT,
                          sets=("contraction.target=drift",), arm="target=drift", **base))
        cells.append(Cell(study, "penalty_frobenius", weight=MAIN_WEIGHT,
                          sets=("contraction.penalty=frobenius",), arm="penalty=frobenius",
                          **base))
        cells.append(Cell(study, "window_all", weight=MAIN_WEIGHT,
                          sets=("contraction.window=1.0",), arm="window=1.0", **base))
    else:
        raise ValueError(f"Unknown study {study!r}; expected one of {STUDIES}.")
    return cells


def ablation_reference_cells() -> list[Cell]:
    """The offline_rl cells (umaze 5 %, weight 0 and 0.1) the ablation table compares against."""
    return [c for c in cells_for("offline_rl", ("umaze",)) if c.fraction == 0.05]


def started(run_dir: Path) -> bool:
    """Whether a cell's run has begun (a seed's ``config.json`` is written before training)."""
    return any(run_dir.glob("seed_*/config.json"))


def run_cell(cell: Cell, args) -> float | None:
    """Train one cell unless it has finished; returns the wall time or None when skipped.

    A cell that was interrupted continues from its seeds' latest checkpoint (``train.py
    --resume``, which refuses any change of configuration); its log is appended to.
    """
    run_dir = cell.run_dir(args)
    if (run_dir / "seeds.json").exists():
        return None
    command = cell.command(args)
    resume = started(run_dir)
    if resume:
        command.append("--resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log_path = cell.log_path(args)
    with open(log_path, "a" if resume else "w") as log:
        if resume:
            log.write(f"\n--- resumed: {' '.join(command)}\n")
            log.flush()
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"cell {cell.name} failed (exit {proc.returncode}); see {log_path}")
    return time.perf_counter() - start


def run_cells(label: str, cells: list[Cell], args) -> None:
    """Train every unfinished cell in order, printing progress. A cell that fails does not stop
    the others (a long unattended study keeps going); the failures are raised together at the
    end, each with its log."""
    failed = []
    for i, cell in enumerate(cells):
        print(f"[{label} {i + 1}/{len(cells)}] {cell.name} ...", flush=True)
        try:
            wall = run_cell(cell, args)
        except RuntimeError as err:
            print(f"  FAILED: {err}", flush=True)
            failed.append(str(err))
            continue
        print(f"  done in {wall:.0f} s" if wall is not None else "  already done", flush=True)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(cells)} {label} cells failed: " + "; ".join(failed))


def run_solver_step_evals(cells: list[Cell], args) -> None:
    """Re-evaluate every seed's final checkpoint with 5, 15 and 50 solver steps.

    One process for all of them (a compiled policy per step count, shared by the seeds), the run's
    own evaluation protocol and evaluation key, so the step counts see the same initial states.
    Writes ``seed_<k>/solver<steps>.json``.
    """
    import jax  # noqa: PLC0415

    from cdp_jax import run_config, training  # noqa: PLC0415
    from cdp_jax.data import minari  # noqa: PLC0415

    for cell in cells:
        act = jax.jit(training.get_agent(cell.agent).act)
        data = minari.load(cell.dataset, num_episodes=1)  # env spec and reference scores
        for seed_dir in sorted(cell.run_dir(args).glob("seed_*")):
            todo = [n for n in EVAL_SOLVER_STEPS if not (seed_dir / f"solver{n}.json").exists()]
            if not todo:
                continue
            config, agent_config, state, norm, meta = run_config.load_policy(seed_dir)
            envs = training.make_eval_envs(data, config)
            try:
                for n in todo:
                    policy = state.replace(config=dataclasses.replace(
                        agent_config, sampler_steps=n).validate())
                    result = training.run_evaluation(act, cell.agent, policy, data, norm, envs,
                                                     config, meta["step"])
                    record = {k: result[k] for k in ("normalized_score", "success_rate")}
                    record.update(gradient_step=meta["step"], sampler_steps=n,
                                  episodes=config.eval_episodes)
                    (seed_dir / f"solver{n}.json").write_text(json.dumps(record))
            finally:
                envs.close()
            print(f"  {seed_dir}: solver steps {todo} evaluated", flush=True)


# ----------------------------------------------------------------------------- collection


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(f)]


def cell_cost(metrics: list[dict], history: list[dict]) -> dict:
    """Wall seconds a cell's kept run took, from one seed's ``metrics.csv`` rows and ``eval.json``
    evaluations (the seeds train as one program, so every seed logs the same times): training as
    each logged chunk's steps over its rate (the first chunk of an attempt includes compilation),
    evaluation from the recorded timings. Steps an interrupted attempt lost after its last
    checkpoint are not counted (they were purged from the logs), nor are checkpoint writes."""
    train_s, prev = 0.0, 0.0
    for row in metrics:
        if rate := row.get("time/steps_per_s"):
            train_s += (row["step"] - prev) / rate
        prev = row["step"]
    eval_s = sum(h.get("timing", {}).get("wall_s", 0.0) for h in history)
    return {"train_s": train_s, "eval_s": eval_s}


def collect_cell(cell: Cell, args) -> dict | None:
    """Per-seed results of a finished cell: last / best / running average, curves, training logs."""
    run_dir = cell.run_dir(args)
    summary_path = run_dir / "seeds.json"
    if not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    seeds = {}
    for seed in summary["seeds"]:
        seed_dir = run_dir / f"seed_{seed}"
        ev = summary["eval"][str(seed)]
        history = json.loads((seed_dir / "eval.json").read_text())["evaluations"]
        metrics = _read_metrics(seed_dir / "metrics.csv")
        if not seeds:  # the first seed's logs time the whole cell
            cost = cell_cost(metrics, history)
        last_log = metrics[-1] if metrics else {}
        solver = {}
        for steps in EVAL_SOLVER_STEPS:
            path = seed_dir / f"solver{steps}.json"
            if path.exists():
                solver[str(steps)] = json.loads(path.read_text())
        diag_path = seed_dir / "diagnostics.json"
        seeds[str(seed)] = {
            "last": {k: ev["last"].get(k) for k in ("gradient_step", "normalized_score",
                                                     "normalized_score_sem", "success_rate")},
            "best": {k: ev["best"].get(k) for k in ("gradient_step", "normalized_score",
                                                     "normalized_score_sem", "success_rate")},
            "running_average": {k: ev["running_average"].get(k) for k in (
                "normalized_score", "normalized_score_sem", "success_rate", "gradient_steps")},
            "curve": [{"step": h["gradient_step"], "normalized_score": h["normalized_score"],
                       "success_rate": h["success_rate"]} for h in history],
            "final_train_log": {k: v for k, v in last_log.items()
                                if k.startswith(("actor/", "contraction/", "loss", "bc"))},
            "solver_steps": solver,
            "diagnostics": json.loads(diag_path.read_text()) if diag_path.exists() else None,
        }
    protocol = summary["eval"][str(summary["seeds"][0])]["last"]
    train = json.loads((run_dir / f"seed_{summary['seeds'][0]}" / "config.json").read_text())
    return {"cell": dataclasses.asdict(cell), "wall_time_s": summary["wall_time_s"],
            "steps": summary["steps"], "command": cell.display_command(args),
            "cost": cost,
            "protocol": {"eval_every": train["train"]["eval_every"], **{k: protocol[k] for k in (
                "episodes", "candidates", "sampler", "sampler_steps", "dataset")}},
            "seeds": seeds}


def recorded_cell(record: dict | None, cell: Cell, args) -> dict | None:
    """A finished cell's entry from an earlier ``<study>.json``, for a cell whose run directory
    is gone (the results JSON is committed; ``runs/`` lives on one machine only). Kept only if the
    cell and its command are the ones the grid holds now: a changed grid (other steps, weight or
    flags) drops the stale entry, which is then listed as missing and runs again."""
    if record is None:
        return None
    def configuration(command: str) -> list[str]:  # where a run is written is no setting
        words = shlex.split(command)
        if "--run-dir" in words:
            i = words.index("--run-dir")
            del words[i:i + 2]
        return words

    same = (record.get("cell") == json.loads(json.dumps(dataclasses.asdict(cell)))
            and configuration(record.get("command", "")) ==
            configuration(cell.display_command(args)))
    if not same:
        print(f"  {cell.name}: the recorded result is of another configuration; dropped "
              f"(recorded: {record.get('command')})", flush=True)
        return None
    return record


def own_record(cell: Cell, args) -> dict | None:
    """A cell's entry in its own study's ``<out>/<cell.study>.json`` (a table may hold cells of
    another study, e.g. the reference arms it compares with), or None."""
    path = Path(args.out) / f"{cell.study}.json"
    return json.loads(path.read_text())["cells"].get(cell.name) if path.exists() else None


def finished_elsewhere(cell: Cell, args) -> bool:
    """Whether a cell whose run directory is gone (or never was here) has a result recorded in
    its own study's JSON under the grid's current configuration: then it is not run again."""
    if started(cell.run_dir(args)):
        return False
    record = own_record(cell, args)
    return record is not None and recorded_cell(record, cell, args) is not None


def collect(study: str, cells: list[Cell], args, title: str | None = None) -> Path:
    """Write ``<out>/<study>.json`` from the finished cells of ``cells`` (pass the whole grid: a
    cell left out is neither reported nor listed as missing); ``title`` names an ablation table.
    A cell whose run directory is gone keeps its entry from the previous ``<study>.json``
    (:func:`recorded_cell`), so a study continued on a new machine does not lose finished cells.
    ``protocol`` holds the study's defaults; each cell records its own steps, evaluation interval
    and command."""
    out = Path(args.out) / f"{study}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    recorded = json.loads(out.read_text())["cells"] if out.exists() else {}
    results = {}
    for cell in cells:
        result = collect_cell(cell, args)
        if result is None:
            result = recorded_cell(recorded.get(cell.name) or own_record(cell, args), cell, args)
        if result is not None:
            results[cell.name] = result
    script = f"experiments/{Path(sys.argv[0]).name}"  # pointmaze_study.py or fetch_study.py
    record = {"study": study, "command": " ".join(["python", script, *sys.argv[1:]]),
              "protocol": {"steps": args.steps, "eval_every": args.eval_every,
                           "eval_episodes_per_seed": args.eval_episodes, "seeds": args.seeds,
                           "main_weight": MAIN_WEIGHT},
              "cells": results, "missing": [c.name for c in cells if c.name not in results]}
    if title is not None:
        record["title"] = title
    out.write_text(json.dumps(record, indent=1))
    return out


# ----------------------------------------------------------------------------- diagnostics

DIAG_OBS = 64  # dataset observations the diagnostics condition on (the same for every run)
DIAG_SAMPLES = 32  # actions sampled per observation for the spread


@functools.cache
def _diagnostics_fn(agent_name: str, agent_config):
    """Jitted ``(ema_params, obs, actions, key) -> dict`` for one agent configuration.

    Cached per configuration so that the seeds and cells of a study share one compiled program.
    """
    import jax  # noqa: PLC0415 (keep ``--help`` and the runner free of JAX start-up)
    import jax.numpy as jnp  # noqa: PLC0415

    from cdp_jax import contraction_diagnostics as cd  # noqa: PLC0415
    from cdp_jax import training  # noqa: PLC0415
    from cdp_jax.agents import common  # noqa: PLC0415

    module = training.get_agent(agent_name)
    actor = module._actor(agent_config)
    # the agent's own schedule, grid and clipping (the paper presets: CleanDiffuser's, unclipped IL)
    option = lambda name, default: getattr(agent_config, name, default)
    schedule = common.make_schedule(agent_config.schedule, agent_config.diffusion_steps,
                                    option("schedule_discretization", "ddpm"))
    clip = option("sampler_clip_x0", True)
    kw = dict(method=agent_config.sampler, prediction=agent_config.prediction,
              steps=agent_config.sampler_steps, spacing=option("sampler_spacing", "uniform"),
              clip_x0=(-1.0, 1.0) if clip else None)

    def run(params, obs, actions, key):
        denoiser = lambda x, t, c: actor.apply(params, x, t, c)
        shape = actions.shape
        k1, k2, k3 = jax.random.split(key, 3)
        out = {}
        for target, k in (("drift", k1), ("network", k2)):
            traj = cd.mu_along_trajectory(denoiser, schedule, k, shape, obs, target=target,
                                          num_iters=8, **kw)
            out[f"mu_{target}_mean"] = jnp.mean(traj["mu"])
            out[f"mu_{target}_lowest"] = jnp.mean(traj["mu"][-1])
            out[f"mu_{target}_curve"] = jnp.mean(traj["mu"], axis=1)
            out["tau"] = traj["tau"]
        spread, samples = cd.action_spread(denoiser, schedule, k3, shape[1:], obs,
                                           num_samples=DIAG_SAMPLES, **kw)
        samples = jnp.clip(samples, -1.0, 1.0)
        dist = jnp.linalg.norm((samples - actions[:, None]).reshape(
            samples.shape[0], samples.shape[1], -1), axis=-1)
        out["action_spread"] = jnp.mean(spread)
        out["distance_to_data_action"] = jnp.mean(dist)
        return out

    return jax.jit(run)


def diagnose_cell(run_dir: Path, agent_name: str) -> None:
    """Write ``seed_<k>/diagnostics.json`` for every seed of a finished cell (skips done ones).

    On the final EMA actor, with the run's sampler and solver steps, conditioned on ``DIAG_OBS``
    dataset observations (fixed draw, normalised as in training):

    * ``mu`` of the drift and of the network (Lanczos, 8 steps) along the sampling trajectories,
      averaged over the trajectory and at the lowest noise level;
    * the spread of ``DIAG_SAMPLES`` actions per observation (root trace of their covariance);
    * the mean distance of those actions to the dataset's action at the same observation.
    """
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from cdp_jax import run_config, training  # noqa: PLC0415

    for seed_dir in sorted(run_dir.glob("seed_*")):
        out = seed_dir / "diagnostics.json"
        if out.exists():
            continue
        config, agent_config, state, norm, meta = run_config.load_policy(seed_dir)
        data = _load_dataset(config.dataset)
        arrays, _ = training.prepare_arrays(data, agent_name, agent_config, config, norm)
        idx = np.random.default_rng(0).choice(len(arrays["actions"]), DIAG_OBS, replace=False)
        fn = _diagnostics_fn(agent_name, agent_config)
        result = fn(state.ema_params, arrays["observations"][idx], arrays["actions"][idx],
                    jax.random.PRNGKey(0))
        record = {k: np.asarray(v).tolist() for k, v in result.items()}
        record.update(step=meta["step"], num_obs=DIAG_OBS, samples_per_obs=DIAG_SAMPLES)
        out.write_text(json.dumps(record))


@functools.lru_cache(maxsize=4)
def _load_dataset(dataset_id: str):
    from cdp_jax.data import minari  # noqa: PLC0415

    return minari.load(dataset_id)


# ----------------------------------------------------------------------------- main


def add_run_args(parser, *, out: str, steps: int, eval_every: int, eval_episodes: int) -> None:
    """The flags every study script shares (seeds, length, evaluation, paths, modes)."""
    parser.add_argument("--seeds", default="0-4", help="seeds of every cell (train.py --seeds)")
    parser.add_argument("--steps", type=int, default=steps, help="gradient steps per run")
    parser.add_argument("--eval-every", type=int, default=eval_every)
    parser.add_argument("--eval-episodes", type=int, default=eval_episodes,
                        help="per seed and evaluation")
    parser.add_argument("--runs-root", default=str(ROOT / "runs" / "study"))
    parser.add_argument("--out", default=out)
    parser.add_argument("--collect-only", action="store_true", help="only rebuild the JSON")
    parser.add_argument("--no-diagnostics", action="store_true",
                        help="skip the contraction diagnostics of finished cells")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: seeds 0-1, 20 steps, 2 episodes (overrides those flags)")


def parse_run_args(parser, argv):
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.eval_every, args.eval_episodes = "0-1", 20, 10, 2
    return args


def diagnose_finished(cells: list[Cell], args) -> None:
    """Diagnostics of every finished cell (unless ``--no-diagnostics``)."""
    if args.no_diagnostics:
        return
    for cell in cells:
        if (cell.run_dir(args) / "seeds.json").exists():
            diagnose_cell(cell.run_dir(args), cell.agent)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=(*STUDIES, "all"), default="all")
    parser.add_argument("--mazes", nargs="+", choices=sorted(DATASETS), default=["umaze", "medium"],
                        help="mazes of the offline_rl study")
    parser.add_argument("--cells", nargs="+", default=None, metavar="NAME",
                        help="only these cells (names as in runs/study/<study>/)")
    add_run_args(parser, out=str(ROOT / "results" / "pointmaze"), steps=2000, eval_every=500,
                 eval_episodes=10)
    return parse_run_args(parser, argv)


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
            run_cells(study, cells, args)
            if study == "ablations":
                print("[ablations] solver-step re-evaluations ...", flush=True)
                run_solver_step_evals([c for c in cells if c in ablation_reference_cells()],
                                      args)
        diagnose_finished(cells, args)
        print(f"{study}: {collect(study, cells, args)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
