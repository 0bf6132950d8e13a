"""Scaling of training: data parallelism over (simulated) devices and seeds as a vmapped batch axis.

Workload: EDP + Diffusion-QL with the contraction penalty (``cdp_jax.agents.dql``,
``ContractionConfig(weight=0.1)``: eigen, Lanczos K = 4, lowest 10% of noise levels) on D4RL hopper
shapes (obs 11, action 3, batch 256, MLP 3 x 256), random transitions on device.

Rows:

* ``devices=n`` (n = 1, 2, 4): one seed, :func:`cdp_jax.training.make_train_chunk` with each batch
  split over an ``n``-device mesh (``--parallel data``; ``n = 1``: no mesh), state replicated. Each
  ``n`` runs in its own process with ``XLA_FLAGS=--xla_force_host_platform_device_count=n``;
  ``speedup`` is steps/s over ``n = 1`` and ``efficiency = speedup / n``. Simulated CPU devices
  share the same cores, so on a CPU this measures the cost of the partitioning (collectives,
  smaller matmuls), not a real speedup; on ``n`` GPUs it is the usual strong-scaling efficiency.
* ``seeds=S`` (S = 1, 4, 16): :func:`cdp_jax.training.make_seeds_chunk` (``vmap`` over the train
  state and the keys, shared dataset) on one device; ``seed_steps/s = S x steps/s``, ``gain`` is
  seed-steps/s over ``S = 1`` (the baseline: seeds trained one after another) and
  ``efficiency = gain / S`` (1: a seed costs as little as when it was alone, the GPU ideal).

Every program is compiled first; ``--repeats`` calls of ``--updates`` steps each are timed with
``jax.block_until_ready`` (the seed rows round-robin); median and min. The load average is recorded
next to the numbers.

    python benchmarks/scaling.py            # K = 20 updates per call, 5 repeats
    python benchmarks/scaling.py --quick    # K = 4, 3 repeats

Writes ``benchmarks/results/scaling.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from cdp_jax.configs import fields

OBS_DIM, ACTION_DIM, BATCH, ROWS = 11, 3, 256, 100_000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 updates per call, 3 repeats")
    parser.add_argument("--updates", type=fields.positive_int, default=None,
                        help="K updates per jitted call")
    parser.add_argument("--repeats", type=fields.positive_int, default=None)
    parser.add_argument("--devices", type=fields.positive_int, nargs="*", default=[1, 2, 4],
                        help=f"(simulated) device counts, each a divisor of the batch {BATCH}")
    parser.add_argument("--seeds", type=fields.positive_int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--worker-devices", type=fields.positive_int, default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/scaling.json")
    args = parser.parse_args(argv)
    for flag, counts in (("--devices", args.devices), ("--worker-devices", [args.worker_devices])):
        for n in counts:
            if n is not None and BATCH % n:
                parser.error(f"argument {flag}: {n} does not divide the batch {BATCH}")
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad value are answered before JAX starts

import jax  # noqa: E402
import numpy as np  # noqa: E402
import timing  # noqa: E402

from cdp_jax import contraction, parallel, training  # noqa: E402
from cdp_jax.agents import dql  # noqa: E402


def workload():
    """Hopper-shaped EDP + contraction config and random transitions (host numpy)."""
    config = dql.default_config(contraction=contraction.ContractionConfig(weight=0.1))
    rng = np.random.default_rng(0)
    arrays = {"observations": rng.normal(size=(ROWS, OBS_DIM)).astype(np.float32),
              "actions": np.tanh(rng.normal(size=(ROWS, ACTION_DIM))).astype(np.float32),
              "rewards": rng.normal(size=ROWS).astype(np.float32),
              "next_observations": rng.normal(size=(ROWS, OBS_DIM)).astype(np.float32),
              "terminals": np.zeros(ROWS, np.float32)}
    return config, arrays


def time_calls(fn, args, updates: int, repeats: int) -> dict:
    """Compile (first call), then ``repeats`` timed calls; steps/s median and max (= min time)."""
    compile_s, times = timing.time_calls(fn, *args, repeats=repeats)
    return {"steps_per_s": updates / float(np.median(times)),
            "steps_per_s_best": updates / float(np.min(times)),
            "compile_and_first_call_s": compile_s, "times_s": times}


def time_devices(updates: int, repeats: int) -> dict:
    """One seed, batch split over all (simulated) devices of this process."""
    config, arrays = workload()
    state = dql.init(jax.random.PRNGKey(0), config, OBS_DIM, ACTION_DIM)
    key = jax.random.PRNGKey(1)
    n = jax.device_count()
    if n == 1:
        fn = jax.jit(training.make_train_chunk(dql, updates, BATCH))
        args = parallel.put((state, arrays, key), None)
    else:
        mesh = parallel.make_mesh("data")
        rep = parallel.replicated(mesh)
        fn = jax.jit(training.make_train_chunk(dql, updates, BATCH, parallel.batch_axis(mesh)),
                     out_shardings=rep)
        args = parallel.put((state, arrays, key), rep)
    return {"devices": n, "seeds": 1, **time_calls(fn, args, updates, repeats)}


def time_seeds(seed_counts, updates: int, repeats: int) -> list[dict]:
    """``S`` seeds vmapped on one device (shared dataset), for each ``S`` in ``seed_counts``: all
    compiled first, then timed round-robin so that every row sees the same background load."""
    config, arrays = workload()
    calls = []
    for num_seeds in seed_counts:
        keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
        states = training.init_seeds(dql, keys, config, OBS_DIM, ACTION_DIM)
        fn = jax.jit(training.make_seeds_chunk(dql, updates, BATCH, per_seed_data=False))
        args = parallel.put((states, arrays, np.int32(ROWS), keys), None)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        calls.append((fn, args, time.perf_counter() - t0))
    times = [[] for _ in calls]
    for _ in range(repeats):
        for i, (fn, args, _) in enumerate(calls):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[i].append(time.perf_counter() - t0)
    rows = []
    for num_seeds, (_, _, compile_s), t in zip(seed_counts, calls, times, strict=True):
        sps = updates / float(np.median(t))
        rows.append({"devices": 1, "seeds": num_seeds, "steps_per_s": sps,
                     "steps_per_s_best": updates / float(np.min(t)),
                     "compile_and_first_call_s": compile_s, "times_s": t,
                     "seed_steps_per_s": num_seeds * sps})
    return rows


def run_device_count(n: int, updates: int, repeats: int) -> dict:
    flags = os.environ.get("XLA_FLAGS", "")
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
           "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={n}".strip()}
    cmd = [sys.executable, __file__, "--worker-devices", str(n), "--updates", str(updates),
           "--repeats", str(repeats)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker for {n} devices failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(args):
    updates = args.updates or (4 if args.quick else 20)
    repeats = args.repeats or (3 if args.quick else 5)
    if args.worker_devices is not None:
        assert jax.device_count() == args.worker_devices, jax.devices()
        print(json.dumps(time_devices(updates, repeats)))
        return

    load_before = os.getloadavg()
    print(parallel.setup("auto"), flush=True)
    device_rows = [run_device_count(n, updates, repeats) for n in args.devices]
    seed_rows = time_seeds(args.seeds, updates, repeats) if args.seeds else []
    base = device_rows[0]["steps_per_s"] if device_rows else None
    for row in device_rows:
        row["speedup"] = row["steps_per_s"] / base
        row["efficiency"] = row["speedup"] / row["devices"]
    base = seed_rows[0]["seed_steps_per_s"] / seed_rows[0]["seeds"] if seed_rows else None
    for row in seed_rows:
        row["gain"] = row["seed_steps_per_s"] / base
        row["efficiency"] = row["gain"] / row["seeds"]
    result = {
        "workload": {"agent": "dql (EDP)", "contraction": "eigen, weight 0.1, K=4, lowest 10%",
                     "obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "batch": BATCH,
                     "hidden": "3 x 256"},
        "updates_per_call": updates, "repeats": repeats,
        "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "devices": device_rows, "seeds": seed_rows,
    }
    print(f"load average {load_before[0]:.1f} -> {result['load_average_after'][0]:.1f}; "
          f"K = {updates}, {repeats} repeats, backend {result['backend']}")
    print(f"{'row':<12}{'steps/s':>10}{'best':>10}{'seed-steps/s':>14}{'speedup/gain':>14}"
          f"{'efficiency':>12}")
    for row in device_rows:
        print(f"{'devices=' + str(row['devices']):<12}{row['steps_per_s']:>10.2f}"
              f"{row['steps_per_s_best']:>10.2f}{row['steps_per_s']:>14.2f}{row['speedup']:>14.2f}"
              f"{row['efficiency']:>12.2f}")
    for row in seed_rows:
        print(f"{'seeds=' + str(row['seeds']):<12}{row['steps_per_s']:>10.2f}"
              f"{row['steps_per_s_best']:>10.2f}{row['seed_steps_per_s']:>14.2f}"
              f"{row['gain']:>14.2f}{row['efficiency']:>12.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(ARGS)
