"""The official PyTorch CDP code and cdp_jax timed side by side, on the same shapes, in one run.

Every figure comes from this run: each (row, framework) is measured in its own fresh process
(``--worker torch`` / ``--worker jax``, one JSON line each), the two frameworks alternating which
goes first, for ``--rounds`` rounds. A round's ratio is official seconds over cdp_jax seconds
(> 1: cdp_jax is faster); the table shows its median over rounds and every round's figure. No
timing from another day enters a ratio.

Rows (float32; the official code as its scripts run it, cdp_jax with the ``paper`` / ``paper-il``
configurations of :mod:`cdp_jax.paper`):

* ``rl_step/penalty``, ``rl_step/off``: one offline-RL training step at hopper shapes (obs 11,
  action 3, batch 256, critic hidden 256). Official: the real ``pipeline`` of scripts/cdp_rl.py
  run on random batches (dataset, DataLoader, wandb logger and d4rl replaced by stand-ins; see
  benchmarks/official_rows.py), ``loss_weights.jacobian`` 0.1 or 0 (at 0 it still computes the
  Jacobian and backpropagates through it). cdp_jax: ``jax.jit(training.make_train_chunk(dql, K,
  256))`` with ``paper.PAPER_RL`` (hopper-medium-replay's task row), contraction weight 0.1 or 0.
* ``sample_2m/B`` (B = 1, 100, 1000, 10000): ``DiscreteDiffusionSDE.sample(solver=
  "ode_dpmsolver++_2M", sample_steps=15, use_ema=True, temperature=0.5)`` with ``DQLMlp(11, 3,
  emb_dim=64)`` vs jitted ``dql.sample_actions`` (PAPER_RL), ms per call.
* ``penalty/d`` (d = 3, 7, 112): the exact official penalty on every sample of the batch (t
  uniform in 0..49) and its parameter gradient. Official: ``compute_contractive_loss(loss_type=
  "jacobian")`` then ``.backward()``; cdp_jax: ``jax.value_and_grad`` of
  ``contraction.contraction_regulariser`` with ``paper.PAPER_IL["contraction"]``. d = 3:
  DQLMlp(11, 3), batch 256; d = 7: PearceMlp(7, To=2, emb 128, hidden 512) and
  PearceObsCondition(19), batch 512; d = 112: DQLMlp(11, 112) (a 16 x 7 chunk flattened), 256.
* ``rl_step/fast``, ``il_step/fast``: cdp_jax's ``paper-fast`` / ``paper-il-fast`` step (the
  official penalty by Hutchinson probes on a subsample, :data:`cdp_jax.paper.PAPER_FAST_PENALTY`)
  against the official step with its penalty at weight 0.1 (it has no fast variant).
* ``il_step/penalty``, ``il_step/off``: one IL update on lift shapes (obs (512, 2, 19), action
  (512, 7)). Official: ``agent.update(action, obs)`` of source/contractive_diffusion's
  ``DiscreteDiffusionSDE`` with the Pearce networks, ``jacobian_weight`` 0.1 or 0 (the Jacobian is
  computed at 0 too: its known fault, timed as it is); cdp_jax: ``make_train_chunk(dbc, K, 512)``
  with ``paper.PAPER_IL``, weight 0.1 or 0.
* ``matmul`` (always run): 2048^3 float32 in each framework, GFLOP/s: how fast this machine was
  in this run.

Protocol: PyTorch with ``torch.set_num_threads`` at its default, ``--warmup`` untimed units, then
``--repeats`` timed ones; JAX compiled first (the first call, untimed; a persistent compilation
cache spares recompiling in later rounds), ``jax.block_until_ready``, ``--repeats`` calls (K =
``--updates`` steps per call for training rows). A worker's figure is its median.

Setup (CPU):

    git clone https://github.com/aminabyaneh/contractive-diffusion-policy off && git -C off checkout 5a39a66
    git clone https://github.com/CleanDiffuserTeam/CleanDiffuser cd && git -C cd checkout 05f17fc
    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    pip install einops hydra-core omegaconf

    python benchmarks/side_by_side.py --official off --cleandiffuser cd           # every row, 3 rounds
    python benchmarks/side_by_side.py --official off --cleandiffuser cd --rounds 1 --repeats 3 \\
        --rows sample_2m/1 penalty/3 matmul                                         # quick look
    python benchmarks/side_by_side.py                 # no official code: cdp_jax alone, no ratios

Writes ``benchmarks/results/side_by_side.json`` (machine, load average before and after, versions,
every worker's per-repeat times). Run it on a quiet machine: the load average is recorded because
other processes change both frameworks' timings, and not by the same factor.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# JAX-free: the command line is checked before a worker imports JAX or torch
from cdp_jax.configs import fields

REPO = Path(__file__).resolve().parent.parent
MATMUL_N = 2048
NUM_ROWS = 4096  # rows of the random "dataset" cdp_jax's training rows draw batches from
# name -> unit; the unit says how a worker's seconds per unit are shown
ROWS = {"rl_step/penalty": "steps/s", "rl_step/fast": "steps/s", "rl_step/off": "steps/s",
        **{f"sample_2m/{b}": "ms" for b in (1, 100, 1000, 10000)},
        **{f"penalty/{d}": "ms" for d in (3, 7, 112)},
        "il_step/penalty": "steps/s", "il_step/fast": "steps/s", "il_step/off": "steps/s",
        "matmul": "GFLOP/s"}
PINNED = {"official": "5a39a66", "cleandiffuser": "05f17fc"}


def shown(unit: str, seconds: float) -> float:
    return {"steps/s": lambda s: 1.0 / s, "ms": lambda s: 1e3 * s,
            "GFLOP/s": lambda s: 2.0 * MATMUL_N**3 / s / 1e9}[unit](seconds)


# ------------------------------------------------------------------------------ the JAX worker
def jax_call(row: str, updates: int):
    """``(jitted fn, args, units per call)`` of cdp_jax on ``row``."""
    import jax

    from cdp_jax import contraction, diffusion, paper, training
    from cdp_jax.agents import dbc, dql

    normal, key = jax.random.normal, jax.random.key

    def rl_config(weight, fast=False):
        task, _ = paper.rl_task_overrides(paper.TASKS["hopper-medium-replay"])
        preset = paper.PAPER_RL_FAST if fast else paper.PAPER_RL
        penalty = dataclasses.replace(preset["contraction"], weight=weight)
        return dql.default_config(**{**preset, **task, "contraction": penalty})

    def il_config(weight, fast=False):
        preset = paper.PAPER_IL_FAST if fast else paper.PAPER_IL
        penalty = dataclasses.replace(preset["contraction"], weight=weight)
        return dbc.default_config(**{**preset, "contraction": penalty})

    family, _, arg = row.partition("/")
    weight, fast = {"penalty": 0.1, "fast": 0.1, "off": 0.0}.get(arg), arg == "fast"
    if row == "matmul":
        return jax.jit(lambda a: a @ a), (normal(key(3), (MATMUL_N, MATMUL_N)),), 1
    if family == "rl_step":
        config = rl_config(weight, fast)
        k = jax.random.split(key(2), 5)
        arrays = {"observations": normal(k[0], (NUM_ROWS, 11)),
                  "actions": jax.random.uniform(k[1], (NUM_ROWS, 3), minval=-1, maxval=1),
                  "rewards": normal(k[2], (NUM_ROWS,)),
                  "next_observations": normal(k[3], (NUM_ROWS, 11)),
                  "terminals": (jax.random.uniform(k[4], (NUM_ROWS,)) < 0.05).astype("float32")}
        state = dql.init(key(1), config, 11, 3)
        return jax.jit(training.make_train_chunk(dql, updates, 256)), (state, arrays, key(0)), updates
    if family == "il_step":
        config = il_config(weight, fast)
        arrays = {"observations": normal(key(4), (NUM_ROWS, 2, 19)),
                  "actions": jax.random.uniform(key(5), (NUM_ROWS, 1, 7), minval=-1, maxval=1)}
        state = dbc.init(key(1), config, 19, 7)
        return jax.jit(training.make_train_chunk(dbc, updates, 512)), (state, arrays, key(0)), updates
    if family == "sample_2m":
        config, batch = rl_config(0.1), int(arg)
        params = dql.init(key(1), config, 11, 3).ema_params
        fn = jax.jit(lambda p, obs, k: dql.sample_actions(config, p, obs, k, 3, temperature=0.5))
        return fn, (params, normal(key(6), (batch, 11)), key(7)), 1
    if family == "penalty":
        dim = int(arg)
        if dim == 7:  # the IL agent's Pearce network on lift shapes
            agent, config, batch = dbc, il_config(0.1), 512
            params = dbc.init(key(1), config, 19, 7).params
            obs, x = normal(key(6), (batch, 2, 19)), normal(key(7), (batch, 1, 7))
        else:  # the RL agent's DQL MLP with a dim-d action
            agent, config, batch = dql, rl_config(0.1), 256
            params = dql.init(key(1), config, 11, dim).actor_params
            obs, x = normal(key(6), (batch, 11)), normal(key(7), (batch, dim))
        actor, schedule = agent._actor(config), agent._schedule(config)  # the agent's own
        t = diffusion.sample_time(schedule, key(8), batch)

        def penalty(p, x, t, obs, k):
            denoiser = lambda x, t, c: actor.apply(p, x, t, c)
            return contraction.contraction_regulariser(paper.PAPER_IL["contraction"], denoiser,
                                                       schedule, x, t, obs, k, prediction="x0")[0]

        return jax.jit(jax.value_and_grad(penalty)), (params, x, t, obs, key(9)), 1
    raise ValueError(f"unknown row {row!r}; rows: {sorted(ROWS)}")


def measure_jax(row: str, warmup: int, repeats: int, updates: int, cache_dir: str) -> dict:
    import jax
    import timing  # benchmarks/timing.py: this script's folder is on sys.path

    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
    fn, fn_args, units = jax_call(row, updates)
    untimed = max(warmup, 1)  # the first call compiles
    compile_s, times = timing.time_calls(fn, *fn_args, repeats=untimed - 1 + repeats)
    times = times[untimed - 1:]
    import cdp_jax
    versions = {"jax": jax.__version__, "jaxlib": importlib.metadata.version("jaxlib"),
                "backend": jax.default_backend(), "device": str(jax.devices()[0]),
                "cdp_jax": str(Path(cdp_jax.__file__).parent)}
    return {"times_s": [t / units for t in times], "compile_s": compile_s,
            "units_per_call": units, "versions": versions}


def worker(args) -> None:
    load_before = os.getloadavg()
    if args.worker == "jax":
        out = measure_jax(args.row, args.warmup, args.repeats, args.updates, args.jax_cache)
    else:
        import official_rows  # benchmarks/official_rows.py
        out = official_rows.measure(args.row, args.official, args.cleandiffuser, args.warmup,
                                    args.repeats)
    times = out["times_s"]
    print(json.dumps({"framework": args.worker, "row": args.row, **out,
                      "median_s": statistics.median(times), "min_s": min(times),
                      "load_before": load_before, "load_after": os.getloadavg()}), flush=True)


# ------------------------------------------------------------------------------- orchestration
def official_missing(args) -> str | None:
    """Why the official side cannot run, or None when it can."""
    if not args.official or not args.cleandiffuser:
        return "no --official / --cleandiffuser given"
    if not Path(args.official, "source", "contraction_loss.py").is_file():
        return f"no official CDP code at {args.official!r} (source/contraction_loss.py missing)"
    if not Path(args.cleandiffuser, "cleandiffuser", "diffusion").is_dir():
        return f"no CleanDiffuser at {args.cleandiffuser!r} (cleandiffuser/diffusion missing)"
    if importlib.util.find_spec("torch") is None:
        return f"torch is not importable by {sys.executable}"
    return None


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def commit(path: str | None, name: str) -> str:
    try:
        if not Path(path, ".git").exists():  # not the enclosing repository's commit
            raise FileNotFoundError(path)
        return subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError, TypeError):
        return f"unknown (not a git checkout; the pinned commit is {PINNED[name]})"


def run_worker(framework: str, row: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", framework, "--row", row, "--warmup",
           str(args.warmup), "--repeats", str(args.repeats), "--updates", str(args.updates),
           "--jax-cache", args.jax_cache]
    if framework == "torch":
        cmd += ["--official", args.official, "--cleandiffuser", args.cleandiffuser]
    return run_json_worker(cmd, args.worker_timeout)


def run_json_worker(cmd: list[str], timeout: float) -> dict:
    """Run a worker process (``cmd``) with this checkout's cdp_jax first on its path, whatever
    else is installed; its result is the last JSON line it prints, or ``{"error": ...}``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-2000:]}"}
    return json.loads(lines[-1])


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(rows: dict, with_official: bool) -> None:
    def fmt(v):
        return "-" if v is None else f"{v:.3g}" if v < 100 else f"{v:.0f}"

    head = f"{'row':<16} {'unit':>7} {'cdp_jax':>8}"
    if with_official:
        head += f" {'official':>8} {'speedup':>8}  per round (official s / cdp_jax s)"
    print(head)
    for name, r in rows.items():
        line = f"{name:<16} {r['unit']:>7} {fmt(r['cdp_jax']):>8}"
        if with_official:
            rounds = " ".join(fmt(s) for s in r["speedup_per_round"])
            line += f" {fmt(r['official']):>8} {fmt(r['speedup']):>7}x  {rounds}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", help="checkout of contractive-diffusion-policy @ 5a39a66")
    parser.add_argument("--cleandiffuser", help="checkout of CleanDiffuser @ 05f17fc")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), metavar="ROW",
                        help=f"rows to run (default all; matmul is always added): {' '.join(ROWS)}")
    parser.add_argument("--rounds", type=fields.positive_int, default=3)
    parser.add_argument("--repeats", type=fields.positive_int, default=10,
                        help="timed units (calls) per worker")
    parser.add_argument("--warmup", type=fields.nonnegative_int, default=2,
                        help="untimed units per worker first")
    parser.add_argument("--updates", type=fields.positive_int, default=10,
                        help="K: cdp_jax training steps per jitted call")
    parser.add_argument("--jax-cache", default=os.path.join(tempfile.gettempdir(),
                                                            "cdp_jax_side_by_side_cache"),
                        help="JAX persistent compilation cache ('' to disable)")
    parser.add_argument("--worker-timeout", type=fields.positive_float, default=3600.0,
                        help="seconds before a worker is stopped")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/side_by_side.json"))
    parser.add_argument("--worker", choices=("torch", "jax"), help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown or (args.worker and args.row not in ROWS):
        parser.error(f"unknown row(s) {unknown or [args.row]}; rows: {' '.join(ROWS)}")
    if args.worker:
        return worker(args)
    args.rows = list(dict.fromkeys([*args.rows, "matmul"]))  # this run's speed of the machine

    missing = official_missing(args)
    if missing:
        print(f"official code unavailable: {missing}.\nTiming cdp_jax alone; no ratio is printed.")
    frameworks = ("jax",) if missing else ("torch", "jax")
    load_before = os.getloadavg()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)} "
          f"({os.cpu_count()} CPUs)", flush=True)
    runs = {row: [] for row in args.rows}
    for rnd in range(args.rounds):
        for i, row in enumerate(args.rows):
            order = frameworks if (rnd + i) % 2 == 0 else frameworks[::-1]
            runs[row].append({fw: run_worker(fw, row, args) for fw in order})
            for fw, out in runs[row][-1].items():
                status = out.get("error") or f"median {out['median_s']:.4g} s"
                print(f"round {rnd + 1}/{args.rounds} {row:<16} {fw:<5} {status}", flush=True)
    load_after = os.getloadavg()

    rows, versions = {}, {}
    for row, rounds in runs.items():
        unit, per = ROWS[row], {"jax": [], "torch": [], "speedup": []}
        for r in rounds:
            for fw in frameworks:
                per[fw].append(r[fw].get("median_s"))
                versions.update({f"{fw}/{k}": v for k, v in r[fw].get("versions", {}).items()})
            both = not missing and None not in (per["jax"][-1], per["torch"][-1])
            per["speedup"].append(per["torch"][-1] / per["jax"][-1] if both else None)
        ours, theirs = median_or_none(per["jax"]), median_or_none(per["torch"])
        rows[row] = {"unit": unit, "cdp_jax": None if ours is None else shown(unit, ours),
                     "official": None if theirs is None else shown(unit, theirs),
                     "speedup": median_or_none(per["speedup"]),
                     "speedup_per_round": per["speedup"], "rounds": rounds}
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"{args.rounds} round(s), {args.repeats} repeats per worker, median over rounds")
    summarise(rows, with_official=not missing)

    meta = {"machine": platform.machine(), "processor": cpu_model(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "load_before": load_before,
            "load_after": load_after, "rounds": args.rounds, "repeats": args.repeats,
            "warmup": args.warmup, "updates_per_call": args.updates,
            "official": args.official, "official_commit": commit(args.official, "official"),
            "cleandiffuser": args.cleandiffuser,
            "cleandiffuser_commit": commit(args.cleandiffuser, "cleandiffuser"),
            "official_missing": missing, "versions": versions,
            "speedup": "official seconds / cdp_jax seconds per unit, per round; median over rounds"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
