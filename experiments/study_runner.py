"""The machinery every study script shares: cells, running them with resume, diagnostics,
collection into the results JSON, and the command-line flags.

A study script (``pointmaze_study.py``, ``paper_study.py``, ``fetch_study.py``) holds only its grid
and its ``main``: it builds a list of :class:`Cell` (one ``experiments/train.py --seeds ...`` call
each, all seeds of a cell trained as one vmapped program), then

* :func:`run_cells` trains every unfinished cell (``seeds.json`` absent); a cell interrupted in the
  middle continues from its seeds' latest checkpoint (``train.py --resume``), and a failed cell does
  not stop the others. An interrupt of the study (Ctrl-C, or SIGTERM sent to the study alone) is
  forwarded to the cell's ``train.py``, which checkpoints where it stands; then the study stops
  with one line naming the cell and the command that resumes the study (exit status 130);
* :func:`diagnose_finished` writes the contraction diagnostics of every finished cell
  (``study_diagnostics.py``);
* :func:`collect` writes ``<out>/<study>.json``: per-seed evaluations, learning curves, training
  logs, diagnostics, cost and each cell's command, keeping the recorded entry of a cell whose run
  directory is gone when its configuration is unchanged;
* :func:`add_run_args` / :func:`parse_run_args` give every script the same flags (seeds, length,
  evaluation, paths, ``--collect-only``, ``--no-diagnostics``, ``--quick``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import study_diagnostics

from cdp_jax import files, interrupts
from cdp_jax.configs import fields
from cdp_jax.configs import train as train_config

ROOT = Path(__file__).resolve().parents[1]
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
    seeds: str | None = None  # train.py --seeds of this cell (None: the study's --seeds)

    def command(self, args) -> list[str]:
        cmd = [sys.executable, str(ROOT / "experiments" / "train.py"), "--agent", self.agent,
               "--dataset", self.dataset, "--contraction-weight", str(self.weight),
               "--seeds", self.seeds or args.seeds, "--steps", str(self.steps or args.steps),
               "--eval-every", str(self.eval_factor * args.eval_every),
               "--checkpoint-every", str(args.eval_every),
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


def percent_label(fraction: float | None) -> str:
    """A data fraction as cell names and table rows write it: ``None`` is ``100%``, 0.05 ``5%``."""
    return "100%" if fraction is None else f"{round(fraction * 100)}%"


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
    signum = None
    with open(log_path, "a" if resume else "w") as log:
        if resume:
            log.write(f"\n--- resumed: {' '.join(command)}\n")
            log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            returncode = proc.wait()
        except KeyboardInterrupt as err:  # forwarded: train.py checkpoints where it stands
            signum = interrupts.signal_of(err)
            if proc.poll() is None:
                proc.send_signal(signum)
            returncode = proc.wait()  # repeated interrupts are ignored meanwhile
    if signum is not None or returncode == interrupts.EXIT_INTERRUPTED:
        raise interrupted_cell(cell, log_path, returncode, signum)
    if returncode != 0:
        raise RuntimeError(f"cell {cell.name} failed (exit {returncode}); see {log_path}")
    return time.perf_counter() - start


def interrupted_cell(cell: Cell, log_path: Path, returncode: int,
                     signum: int | None) -> interrupts.Interrupted:
    """The study's line for an interrupt during ``cell``: where its ``train.py`` stopped (the
    interrupt line it printed last in its log) and the study's own command to resume it all."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    said = next((line for line in reversed(lines) if line.startswith("interrupted at step")),
                None)
    if said is not None:
        detail = said.split("; resume with:")[0].removeprefix("interrupted ")
    else:
        detail = f"train.py stopped (exit status {returncode})"
    return interrupts.Interrupted(
        f"interrupted in cell {cell.name}: {detail}; log: {log_path}",
        signum=signum if signum is not None else interrupts.SIGNALS[0],
        then=interrupts.Then("resume the study with"))


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
                    # whole or not at all: an interrupted study skips what exists
                    files.write_json(seed_dir / f"solver{n}.json", record, indent=None)
            finally:
                envs.close()
            print(f"  {seed_dir}: solver steps {todo} evaluated", flush=True)


def diagnose_finished(cells: list[Cell], args) -> None:
    """Diagnostics of every finished cell (unless ``--no-diagnostics``)."""
    if args.no_diagnostics:
        return
    for cell in cells:
        if (cell.run_dir(args) / "seeds.json").exists():
            study_diagnostics.diagnose_cell(cell.run_dir(args), cell.agent)


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

    now = json.loads(json.dumps(dataclasses.asdict(cell)))
    # A field added to Cell since the record was written takes its default there.
    defaults = json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(Cell)
                                      if f.default is not dataclasses.MISSING}))
    recorded = record.get("cell") or {}
    same_fields = all(recorded.get(k, defaults.get(k)) == v for k, v in now.items())
    if "command" not in record:
        # Written before cells recorded their commands (the PointMaze and Fetch studies): judged
        # on the cell's fields and its steps. Dropping it would empty a committed results file
        # on a machine without its run directories.
        same = same_fields and record.get("steps") == (cell.steps or args.steps)
    else:
        same = same_fields and (configuration(record["command"]) ==
                                configuration(cell.display_command(args)))
    if not same:
        print(f"  {cell.name}: the recorded result is of another configuration; dropped "
              f"(recorded: {record.get('command')})", flush=True)
        return None
    return record


def own_record(cell: Cell, args) -> dict | None:
    """A cell's entry in its own study's ``<out>/<cell.study>.json`` (a table may hold cells of
    another study, e.g. the reference arms it compares with), or None."""
    return recorded_cells(Path(args.out) / f"{cell.study}.json").get(cell.name)


def recorded_cells(path: Path) -> dict:
    """The ``cells`` of a results JSON (``{}`` if there is none); ``ValueError`` naming the file
    if it cannot be read: nothing is written then, since cells recorded only there would be lost."""
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text())["cells"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path} is unreadable ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
            "nothing was written (cells recorded only there would be lost). Restore it "
            f"(`git checkout -- {path}` for committed results), then run again.") from None


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
    recorded = recorded_cells(out)
    results = {}
    for cell in cells:
        result = collect_cell(cell, args)
        if result is None:
            result = recorded_cell(recorded.get(cell.name) or own_record(cell, args), cell, args)
        if result is not None:
            results[cell.name] = result
    script = f"experiments/{Path(sys.argv[0]).name}"  # the study script that was run
    record = {"study": study, "command": " ".join(["python", script, *sys.argv[1:]]),
              "protocol": {"steps": args.steps, "eval_every": args.eval_every,
                           "eval_episodes_per_seed": args.eval_episodes, "seeds": args.seeds,
                           "main_weight": MAIN_WEIGHT},
              "cells": results, "missing": [c.name for c in cells if c.name not in results]}
    if title is not None:
        record["title"] = title
    files.write_json(out, record, indent=1)  # a failed write keeps the previous file
    return out


# ----------------------------------------------------------------------------- run arguments


def _seeds_arg(text: str) -> str:
    """``--seeds`` as train.py takes it (``0-4``, ``0,3,5``), checked here."""
    import argparse  # noqa: PLC0415

    try:
        train_config.parse_seeds(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def add_run_args(parser, *, out: str, steps: int, eval_every: int, eval_episodes: int) -> None:
    """The flags every study script shares (seeds, length, evaluation, paths, modes)."""
    parser.add_argument("--seeds", default="0-4", type=_seeds_arg,
                        help="seeds of every cell (train.py --seeds)")
    parser.add_argument("--steps", type=fields.positive_int, default=steps,
                        help="gradient steps per run")
    parser.add_argument("--eval-every", type=fields.positive_int, default=eval_every)
    parser.add_argument("--eval-episodes", type=fields.positive_int, default=eval_episodes,
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

