"""FQL's own code (seohongpark/fql @ 719d044) and cdp_jax's FQL timed side by side, in one run.

Same shapes on both sides: Hopper's (obs 11, action 3), batch 256, FQL's default networks (4 x
512 GELU MLPs; ``--hidden`` to change both), 10 Euler steps of the behaviour flow, float32, on
the same ``--num-rows`` random transitions (drawn from a fixed NumPy seed in each worker; the
workers' checksums of the arrays are recorded). Rows:

* ``train/fql_code``: FQL's ``agent.update(batch)``, one jitted call per step as its ``main.py``
  runs it: a NumPy batch of 256 drawn on the host each step by FQL's own ``Dataset.sample`` (as
  its ``ReplayBuffer``) and copied in by the call, no blocking between steps (a timed unit is K
  such steps, then ``block_until_ready``); ``train/fql_code_device_batch``: the same with one
  batch already on the device, passed every step (no host sampling, no copy);
* ``train/cdp_jax_fql``: ``jax.jit(training.make_train_chunk(fql, K, 256))`` with the ``fql``
  preset, K updates per call, batches drawn on the device; ``train/cdp_jax_fql_cdp``: the same with
  the ``fql-cdp`` preset (its penalty :data:`cdp_jax.configs.fql.FLOW_RL_PENALTY`, the fast
  estimator); all four in updates/s;
* ``sample/fql_code/B``, ``sample/cdp_jax/B`` (B = 1, 1000): one-step sampling latency, FQL's
  ``agent.sample_actions(obs, seed=key)`` and ``jax.jit(fql.act)``, each call blocked on, in ms;
* ``matmul/fql_code``, ``matmul/cdp_jax`` (``--matmul``): a 2048^3 float32 matmul in each worker,
  GFLOP/s, to scale the figures to another machine.

Protocol: each side runs in its own fresh process (``--worker``; FQL's with ``--fql-python`` and
``--fql-src`` on its path), the sides alternating which goes first, for ``--rounds`` rounds. A
worker compiles every row first (the first call, untimed; a persistent compilation cache spares
recompiling in later rounds), then times its rows round-robin (``timing.time_interleaved``:
cdp_jax's two training rows see the same load), ``--repeats`` units each. A row's figure is the
median over rounds of each round's median, "best" its fastest unit; a ratio is taken per round
(row speed / reference speed) and its median over rounds shown. K (``--updates``) defaults to
1000 on an accelerator and 20 on a CPU, where an update takes tens of milliseconds.

    python benchmarks/fql_side_by_side.py --matmul           # both sides, 3 rounds (K 20 on a CPU)
    python benchmarks/fql_side_by_side.py --matmul --no-fql  # cdp_jax alone (K 1000 on a GPU)
    python benchmarks/fql_side_by_side.py --quick            # smoke run, not a measurement

FQL's side needs its code and a Python with its dependencies (by default /work/fqlvenv and
/work/fql_src when they exist):

    git clone https://github.com/seohongpark/fql fql && git -C fql checkout 719d044
    python -m venv fqlvenv && fqlvenv/bin/pip install jax flax optax ml_collections distrax
    python benchmarks/fql_side_by_side.py --fql-python fqlvenv/bin/python --fql-src fql --matmul

Without FQL's code (no ``--fql-python`` / ``--fql-src``, e.g. on the GPU machine) it says so in
one line and times cdp_jax's rows alone; the cdp / plain overhead still comes out. Writes
``benchmarks/results/fql_side_by_side.json`` (machine, load average before and after, versions,
settings, every unit of every row). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# JAX-free: the command line is checked before a worker imports JAX
from side_by_side import cpu_model, median_or_none, run_json_worker

from cdp_jax.configs import fields

REPO = Path(__file__).resolve().parent.parent
FQL_COMMIT = "719d044"
OBS_DIM, ACTION_DIM, BATCH = 11, 3, 256  # Hopper; FQL's get_config() batch_size
MATMUL_N = 2048
SIDES = ("fql_code", "cdp_jax")
CPU_UPDATES, ACCELERATOR_UPDATES = 20, 1000  # default K
QUICK = {"updates": 2, "repeats": 2, "rounds": 1, "num_rows": 10_000, "sample_calls": 5}
DEFAULTS = {"updates": None, "repeats": 5, "rounds": 3, "num_rows": 100_000, "sample_calls": 20}
UNITS = {"train": "updates/s", "sample": "ms", "matmul": "GFLOP/s"}


def row_names(side: str, sample_batches, matmul: bool) -> list[str]:
    train = (["train/fql_code", "train/fql_code_device_batch"] if side == "fql_code"
             else ["train/cdp_jax_fql", "train/cdp_jax_fql_cdp"])
    return [*train, *(f"sample/{side}/{b}" for b in sample_batches),
            *([f"matmul/{side}"] if matmul else [])]


def comparisons(sample_batches) -> dict[str, tuple[str, str]]:
    """``name -> (row, reference)``; the ratio is row speed / reference speed, per round."""
    out = {"ours / FQL's main.py loop": ("train/cdp_jax_fql", "train/fql_code"),
           "ours / FQL, device batch": ("train/cdp_jax_fql", "train/fql_code_device_batch"),
           "FQL device / host batch": ("train/fql_code_device_batch", "train/fql_code"),
           "fql-cdp / fql": ("train/cdp_jax_fql_cdp", "train/cdp_jax_fql")}
    out.update({f"sampling ours / FQL, batch {b}": (f"sample/cdp_jax/{b}", f"sample/fql_code/{b}")
                for b in sample_batches})
    out["matmul cdp_jax venv / FQL venv"] = ("matmul/cdp_jax", "matmul/fql_code")
    return out


def shown(unit: str, seconds: float) -> float:
    """A unit's seconds (per update, per call, per matmul) in the row's unit."""
    return {"updates/s": lambda s: 1.0 / s, "ms": lambda s: 1e3 * s,
            "GFLOP/s": lambda s: 2.0 * MATMUL_N**3 / s / 1e9}[unit](seconds)


def random_transitions(num_rows: int, seed: int = 0) -> dict:
    """The random "dataset" both sides train on (NumPy, float32; FQL's ``masks`` = 1 - terminals)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    f32 = np.float32
    terminals = (rng.random(num_rows) < 0.01).astype(f32)
    return {"observations": rng.standard_normal((num_rows, OBS_DIM), dtype=f32),
            "actions": rng.uniform(-1, 1, (num_rows, ACTION_DIM)).astype(f32),
            "rewards": rng.standard_normal(num_rows, dtype=f32),
            "next_observations": rng.standard_normal((num_rows, OBS_DIM), dtype=f32),
            "terminals": terminals, "masks": 1.0 - terminals}


# ------------------------------------------------------------------------------ the workers
def blocked_calls(fn, args, n: int):
    """One timed unit of a sampling row: ``n`` calls, each waited for (latency, not throughput)."""
    import jax

    def unit():
        for _ in range(n):
            out = jax.block_until_ready(fn(*args))
        return out

    return unit


def matmul_call():
    import jax

    a = jax.random.normal(jax.random.key(3), (MATMUL_N, MATMUL_N))
    return jax.jit(lambda a: a @ a), (a,), 1


def cdp_jax_calls(rows, data: dict, updates: int, hidden, sample_calls: int) -> dict:
    """``row -> (fn, args, units per call)`` of cdp_jax's FQL (presets ``fql`` and ``fql-cdp``)."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from cdp_jax import training
    from cdp_jax.agents import fql
    from cdp_jax.configs import train as train_config

    def config(name):
        base = train_config.preset(name, "fql")[1]
        return dataclasses.replace(base, actor_hidden_dims=tuple(hidden),
                                   value_hidden_dims=tuple(hidden)).validate()

    arrays = {k: jnp.asarray(v) for k, v in data.items() if k != "masks"}  # we read terminals
    plain = fql.init(jax.random.key(1), config("fql"), OBS_DIM, ACTION_DIM)
    calls = {}
    for row in rows:
        kind, _, arg = row.partition("/")
        if kind == "train":
            state = plain if row == "train/cdp_jax_fql" else fql.init(
                jax.random.key(1), config("fql-cdp"), OBS_DIM, ACTION_DIM)
            chunk = jax.jit(training.make_train_chunk(fql, updates, BATCH))
            calls[row] = chunk, (state, arrays, jax.random.key(0)), updates
        elif kind == "sample":
            obs = arrays["observations"][:int(arg.split("/")[1])]
            act, key = jax.jit(fql.act), jax.random.key(2)
            calls[row] = blocked_calls(act, (plain, obs, key), sample_calls), (), sample_calls
        else:
            calls[row] = matmul_call()
    return calls


def fql_code_calls(rows, data: dict, updates: int, hidden, sample_calls: int, fql_src: str):
    """``row -> (fn, args, units per call)`` of FQL's own agent, driven as its main.py does."""
    import jax
    import numpy as np

    sys.path.insert(0, os.path.abspath(fql_src))
    from agents.fql import FQLAgent, get_config  # FQL's code
    from utils.datasets import Dataset

    np.random.seed(0)  # main.py: the batch indices come from NumPy's global RNG
    dataset = Dataset.create(**data)
    cfg = get_config()
    cfg["actor_hidden_dims"] = cfg["value_hidden_dims"] = tuple(hidden)
    example = dataset.sample(1)
    agent = FQLAgent.create(0, example["observations"], example["actions"], cfg)
    device_batch = jax.device_put(dataset.sample(BATCH))

    def steps(next_batch):
        def unit():
            a = agent
            for _ in range(updates):
                a, info = a.update(next_batch())
            return a, info
        return unit

    calls = {}
    for row in rows:
        kind, _, arg = row.partition("/")
        if row == "train/fql_code":
            calls[row] = steps(lambda: dataset.sample(BATCH)), (), updates
        elif row == "train/fql_code_device_batch":
            calls[row] = steps(lambda: device_batch), (), updates
        elif kind == "sample":
            obs = jax.device_put(data["observations"][:int(arg.split("/")[1])])
            fn = lambda o, k: agent.sample_actions(o, seed=k)
            calls[row] = blocked_calls(fn, (obs, jax.random.PRNGKey(2)), sample_calls), (), \
                sample_calls
        else:
            calls[row] = matmul_call()
    return calls


def worker(args) -> None:
    import importlib.metadata
    import time

    import jax
    import numpy as np
    import timing  # benchmarks/timing.py: this script's folder is on sys.path

    load_before = os.getloadavg()
    if args.jax_cache:
        jax.config.update("jax_compilation_cache_dir", args.jax_cache)
    updates = args.updates or (CPU_UPDATES if jax.default_backend() == "cpu"
                               else ACCELERATOR_UPDATES)
    rows = [r for r in row_names(args.worker, args.sample_batches, args.matmul)
            if selected(r, args.only)]
    data = random_transitions(args.num_rows)
    build = cdp_jax_calls if args.worker == "cdp_jax" else (
        lambda *a: fql_code_calls(*a, args.fql_src))
    calls = build(rows, data, updates, args.hidden, args.sample_calls)
    compile_s = {}
    for row, (fn, fn_args, _) in calls.items():  # the first call compiles
        start = time.perf_counter()
        jax.block_until_ready(fn(*fn_args))
        compile_s[row] = time.perf_counter() - start
    times = timing.time_interleaved({r: c[:2] for r, c in calls.items()}, args.repeats)
    versions = {"python": sys.executable, "jax": jax.__version__,
                "jaxlib": importlib.metadata.version("jaxlib"),
                "flax": importlib.metadata.version("flax"),
                "optax": importlib.metadata.version("optax"), "numpy": np.__version__,
                "backend": jax.default_backend(), "device": str(jax.devices()[0])}
    out = {r: {"times_s": [t / calls[r][2] for t in times[r]], "units_per_call": calls[r][2],
               "compile_s": compile_s[r]} for r in calls}
    print(json.dumps({"side": args.worker, "rows": out, "updates": updates,
                      "data_checksum": float(sum(float(v.sum(dtype=np.float64))
                                                 for v in data.values())),
                      "versions": versions, "load_before": load_before,
                      "load_after": os.getloadavg()}), flush=True)


# ------------------------------------------------------------------------------- orchestration
def selected(row: str, only) -> bool:
    return not only or any(row.startswith(p) for p in only)


def fql_missing(args) -> str | None:
    """Why FQL's side cannot run, or None when it can."""
    if args.no_fql:
        return "--no-fql given"
    if not args.fql_python or not os.access(args.fql_python, os.X_OK):
        return f"no Python with FQL's dependencies at --fql-python {args.fql_python!r}"
    if not args.fql_src or not Path(args.fql_src, "agents", "fql.py").is_file():
        return f"no FQL checkout at --fql-src {args.fql_src!r} (agents/fql.py missing)"
    return None


def fql_commit(src: str | None) -> str:
    if src and Path(src, "FQL_COMMIT").is_file():  # a file copy of the tree
        return Path(src, "FQL_COMMIT").read_text().strip()
    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return f"unknown (the pinned commit is {FQL_COMMIT})"


def run_worker(side: str, args) -> dict:
    python = args.fql_python if side == "fql_code" else sys.executable
    cmd = [python, __file__, "--worker", side, "--repeats", str(args.repeats), "--num-rows",
           str(args.num_rows), "--sample-calls", str(args.sample_calls), "--jax-cache",
           args.jax_cache, "--hidden", *map(str, args.hidden),
           "--sample-batches", *map(str, args.sample_batches)]
    cmd += ["--updates", str(args.updates)] if args.updates else []
    cmd += ["--matmul"] if args.matmul else []
    cmd += ["--only", *args.only] if args.only else []
    cmd += ["--fql-src", str(Path(args.fql_src).resolve())] if side == "fql_code" else []
    return run_json_worker(cmd, args.worker_timeout)


def canonical_order(sample_batches) -> list[str]:
    """Every row, the training rows first, then sampling by batch, theirs before ours."""
    fql, ours = (row_names(s, sample_batches, True) for s in SIDES)
    pairs = zip(fql[2:], ours[2:], strict=True)
    return [*fql[:2], *ours[:2], *(name for pair in pairs for name in pair)]


def side_of(row: str) -> str:
    return "fql_code" if "fql_code" in row else "cdp_jax"


def combine(rounds: list[dict], sample_batches) -> tuple[dict, dict]:
    """Rows (median over rounds of each round's median, best unit, every unit) and comparisons
    (per-round speed ratios and their median) from ``rounds`` = ``[{side: worker output}]``."""
    found = {n for r in rounds for out in r.values() for n in out.get("rows", {})}
    names = [n for n in canonical_order(sample_batches) if n in found]
    rows = {}
    for name in names:
        unit, per_round = UNITS[name.split("/")[0]], [r.get(side_of(name), {}).get("rows", {})
                                                      .get(name) for r in rounds]
        times = [None if p is None else p["times_s"] for p in per_round]
        medians = [None if t is None else statistics.median(t) for t in times]
        best = min((min(t) for t in times if t), default=None)
        rows[name] = {"unit": unit, "side": side_of(name),
                      "median": None if median_or_none(medians) is None
                      else shown(unit, median_or_none(medians)),
                      "best": None if best is None else shown(unit, best),
                      "median_s_per_round": medians, "times_s": times,
                      "compile_s": [None if p is None else p["compile_s"] for p in per_round]}
    result = {}
    for label, (name, ref) in comparisons(sample_batches).items():
        if name not in rows or ref not in rows:
            continue
        per_round = [None if None in (a, b) else b / a
                     for a, b in zip(rows[name]["median_s_per_round"],
                                     rows[ref]["median_s_per_round"], strict=True)]
        result[label] = {"row": name, "reference": ref, "speed_ratio": median_or_none(per_round),
                         "speed_ratio_per_round": per_round}
        if "reference" not in rows[name]:
            rows[name].update(reference=ref, ratio=result[label]["speed_ratio"])
    return rows, result


def summarise(rows: dict, compared: dict) -> None:
    def fmt(v):
        return "-" if v is None else f"{v:.3g}" if v < 100 else f"{v:.0f}"

    print(f"{'row':<28} {'unit':>9} {'median':>8} {'best':>8}  ratio (row / reference speed)")
    for name, r in rows.items():
        ref = r.get("reference")
        tail = f"{fmt(r['ratio'])}x vs {ref}" if ref else ""
        print(f"{name:<28} {r['unit']:>9} {fmt(r['median']):>8} {fmt(r['best']):>8}  {tail}")
    for label, c in compared.items():
        rounds = " ".join(fmt(x) for x in c["speed_ratio_per_round"])
        line = f"{label:<34} {fmt(c['speed_ratio'])}x (per round: {rounds})"
        if label == "fql-cdp / fql" and c["speed_ratio"]:
            line += (f"; contraction overhead {100 * (1 / c['speed_ratio'] - 1):+.1f}% "
                     "(target: at most +10%)")
        print(line)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    found = {p: p if os.path.exists(p) else None for p in ("/work/fqlvenv/bin/python",
                                                           "/work/fql_src")}
    parser.add_argument("--fql-python", default=found["/work/fqlvenv/bin/python"],
                        help="Python with FQL's dependencies (jax, flax, optax, ml_collections, "
                             "distrax)")
    parser.add_argument("--fql-src", default=found["/work/fql_src"],
                        help=f"checkout of seohongpark/fql @ {FQL_COMMIT}")
    parser.add_argument("--no-fql", action="store_true", help="time cdp_jax's rows only")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                      for k, v in QUICK.items()))
    parser.add_argument("--updates", type=fields.positive_int, default=None,
                        help=f"K: updates per timed unit (default {ACCELERATOR_UPDATES} on an "
                             f"accelerator, {CPU_UPDATES} on a CPU)")
    parser.add_argument("--repeats", type=fields.positive_int, default=None,
                        help=f"timed units per row and worker (default {DEFAULTS['repeats']})")
    parser.add_argument("--rounds", type=fields.positive_int, default=None,
                        help=f"default {DEFAULTS['rounds']}")
    parser.add_argument("--num-rows", type=fields.positive_int, default=None,
                        help=f"transitions in the random dataset (default {DEFAULTS['num_rows']})")
    parser.add_argument("--hidden", nargs="+", type=fields.positive_int, default=[512] * 4,
                        metavar="WIDTH", help="hidden widths of every network (FQL: 512 x 4)")
    parser.add_argument("--sample-batches", nargs="*", type=fields.positive_int,
                        default=[1, 1000], metavar="B")
    parser.add_argument("--sample-calls", type=fields.positive_int, default=None,
                        help=f"sampling calls per timed unit (default {DEFAULTS['sample_calls']})")
    parser.add_argument("--matmul", action="store_true",
                        help=f"add a {MATMUL_N}^3 float32 matmul row to each side (GFLOP/s)")
    parser.add_argument("--only", nargs="*", default=None, metavar="PREFIX",
                        help="row-name prefixes to run (e.g. train sample/cdp_jax)")
    parser.add_argument("--jax-cache", default=os.path.join(tempfile.gettempdir(),
                                                            "cdp_jax_fql_side_by_side_cache"),
                        help="JAX persistent compilation cache ('' to disable)")
    parser.add_argument("--worker-timeout", type=fields.positive_float, default=3600.0,
                        help="seconds before a worker is stopped")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/fql_side_by_side.json"))
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    names = [r for s in SIDES for r in row_names(s, args.sample_batches, args.matmul)]
    unmatched = [p for p in args.only or () if not any(r.startswith(p) for r in names)]
    if unmatched:
        parser.error(f"argument --only: no row starts with {' '.join(map(repr, unmatched))}; "
                     f"rows: {' '.join(names)}")
    return args


def main(argv=None) -> int | None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    missing = fql_missing(args)
    if missing:
        print(f"FQL's code unavailable ({missing}): timing cdp_jax's rows only.")
    sides = [s for s in (("cdp_jax",) if missing else SIDES)
             if any(selected(r, args.only) for r in row_names(s, args.sample_batches,
                                                              args.matmul))]
    if not sides:
        raise SystemExit(f"no row selected by --only {' '.join(args.only)} can run here")
    load_before = os.getloadavg()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)} "
          f"({os.cpu_count()} CPUs)", flush=True)
    rounds = []
    for rnd in range(args.rounds):
        order = sides if rnd % 2 == 0 else sides[::-1]
        rounds.append({side: run_worker(side, args) for side in order})
        for side, out in rounds[-1].items():
            status = out.get("error") or f"{len(out['rows'])} rows, K = {out['updates']}"
            print(f"round {rnd + 1}/{args.rounds} {side:<8} {status}", flush=True)
    load_after = os.getloadavg()
    rows, compared = combine(rounds, args.sample_batches)
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}; {args.rounds} "
          f"round(s), {args.repeats} repeats per row and worker, median over rounds")
    summarise(rows, compared)

    settings = {k: getattr(args, k) for k in ("updates", "repeats", "rounds", "num_rows",
                                              "hidden", "sample_batches", "sample_calls",
                                              "matmul", "only", "quick")}
    settings.update(obs_dim=OBS_DIM, action_dim=ACTION_DIM, batch=BATCH, flow_steps=10,
                    updates_per_unit={s: o.get("updates") for r in rounds for s, o in r.items()})
    meta = {"machine": platform.machine(), "processor": cpu_model(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "load_before": load_before,
            "load_after": load_after, "settings": settings, "fql_missing": missing,
            "fql_python": args.fql_python, "fql_src": args.fql_src,
            "fql_commit": None if missing else fql_commit(args.fql_src),
            "versions": {s: o.get("versions") for r in rounds for s, o in r.items()},
            "data_checksum": {s: o.get("data_checksum") for r in rounds for s, o in r.items()},
            "errors": [{s: o["error"] for s, o in r.items() if "error" in o} for r in rounds],
            "ratio": "row speed / reference speed per round (updates/s, 1/ms, GFLOP/s); "
                     "median over rounds"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows, "comparisons": compared}, indent=2))
    print(f"wrote {out}")
    return 1 if any(meta["errors"]) else 0  # a worker failed: its rows are missing


if __name__ == "__main__":
    sys.exit(main())
