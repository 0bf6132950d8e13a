"""Cost of the contraction penalty per training step for a chunk denoiser (temporal UNet).

One training step = x0-prediction denoising loss (discrete cosine, T = 50) + optional contraction
regulariser, its gradient and an Adam update, on :class:`cdp_jax.chunk_networks.ChunkUNet`
(``down_dims = (h, 2h, 4h)`` by default, FiLM on time and a 2 x 28 observation history, the Fetch
setting) for action chunks 16 x 4 (Fetch, d = 64) and 16 x 7 (a 7-DoF arm, d = 112). Rows:

* ``vanilla``: no penalty (``ContractionConfig(weight=0)``, which costs nothing);
* ``default``: ``ContractionConfig(weight=0.1)``: eigen, Lanczos K = 4, lowest 10% of noise levels,
  ``ceil(0.1 B)`` samples;
* ``eigen_K4_all_t``: K = 4, all noise levels, 10% of the batch;
* ``frobenius``: Hutchinson Frobenius form, one probe, all levels, 10% of the batch;
* ``exact_jacobian``: the same eigen penalty with the Jacobian materialised (``jax.jacfwd``, ``d``
  forward-mode passes, then ``eigvalsh``), 10% of the batch: what a matrix-free estimate avoids.

Every function is compiled first, then all variants are timed in ``--repeats`` interleaved rounds
(``jax.block_until_ready``); wall-time medians (and minima) and the median process CPU time (all
XLA threads; what a shared machine's contention distorts least); ratios are to ``vanilla`` at the
same chunk. ``--forward`` also times the
loss alone. Run ``python benchmarks/chunk_overhead.py [--batch 256 --hidden 64]``; writes
``benchmarks/results/chunk_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from cdp_jax.configs import fields
from cdp_jax.configs.contraction import ContractionConfig

OBS_SHAPE = (2, 28)  # Fetch: history 2 of [observation (25), desired_goal (3)]
CHUNKS = {"16x4": (16, 4), "16x7": (16, 7)}


def variants():
    """``name -> (ContractionConfig, exact)``; ``exact`` rows materialise the Jacobian
    (contraction_overhead's ``exact_regulariser``), the others call
    ``contraction.contraction_regulariser``."""
    cfg = lambda **kw: ContractionConfig(weight=0.1, **kw)
    return {
        "vanilla": (ContractionConfig(weight=0.0), False),
        "default": (cfg(), False),
        "eigen_K4_all_t": (cfg(num_iters=4, window=1.0, num_penalised=0.1), False),
        "frobenius": (cfg(penalty="frobenius", window=1.0, num_penalised=0.1), False),
        "exact_jacobian": (cfg(window=1.0, num_penalised=0.1), True),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=fields.positive_int, default=256)
    parser.add_argument("--hidden", type=fields.positive_int, default=64,
                        help="UNet base channels h (a multiple of 8: GroupNorm groups)")
    parser.add_argument("--depth", type=fields.positive_int, default=3,
                        help="UNet levels L: down_dims = (h, 2h, ..., 2^(L-1) h)")
    parser.add_argument("--repeats", type=fields.positive_int, default=5)
    parser.add_argument("--chunks", nargs="+", default=list(CHUNKS), choices=list(CHUNKS))
    parser.add_argument("--variants", nargs="+", default=list(variants()),
                        choices=list(variants()))
    parser.add_argument("--forward", action="store_true", help="also time the loss alone")
    parser.add_argument("--out", default="benchmarks/results/chunk_overhead.json")
    args = parser.parse_args(argv)
    if args.hidden % 8:
        parser.error(f"argument --hidden: {args.hidden} is not a multiple of 8 (GroupNorm groups)")
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad value are answered before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from contraction_overhead import exact_regulariser, make_step  # noqa: E402

from cdp_jax import chunk_networks, contraction, schedules  # noqa: E402


def timed(fn, args):
    """``(wall seconds, process CPU seconds)`` of one blocking call."""
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - wall, time.process_time() - cpu


def time_round_robin(fns: dict, args, repeats: int) -> dict:
    """Compile each function, then time them in ``repeats`` interleaved rounds.

    Interleaving spreads load drift on a shared machine over all variants alike; the process CPU
    time (all XLA threads) is reported next to wall time because it is what contention changes
    least. Returns ``{name: dict(wall_median, wall_min, cpu_median, compile_s)}``.
    """
    compile_s = {name: timed(fn, args)[0] for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(timed(fn, args))
    return {name: {"wall_median": float(np.median([w for w, _ in s])),
                   "wall_min": float(np.min([w for w, _ in s])),
                   "cpu_median": float(np.median([c for _, c in s])),
                   "compile_s": compile_s[name]} for name, s in samples.items()}


def main(args):
    schedule = schedules.cosine(50)
    optimiser = optax.adam(1e-4)
    model = chunk_networks.make_chunk_actor("unet", args.hidden, args.depth, 128)
    rows = []
    print(f"{'chunk':>5} {'variant':<15} {'step ms':>9} {'min ms':>9} {'x vanilla':>9}"
          f" {'cpu ms':>9} {'cpu x':>7} {'fwd ms':>9} {'compile s':>9}", flush=True)
    for chunk_name in args.chunks:
        chunk = CHUNKS[chunk_name]
        key = jax.random.key(0)
        x0 = jnp.clip(jax.random.normal(key, (args.batch, *chunk)), -1, 1)
        obs = jax.random.normal(jax.random.fold_in(key, 1), (args.batch, *OBS_SHAPE))
        params = jax.jit(model.init)(key, x0, jnp.zeros((args.batch,), jnp.int32), obs)
        opt_state = optimiser.init(params)
        steps, losses = {}, {}
        for name in args.variants:
            config, exact = variants()[name]
            regulariser = exact_regulariser if exact else contraction.contraction_regulariser
            steps[name], losses[name] = make_step(model, schedule, optimiser, config, regulariser)
        times = time_round_robin(steps, (params, opt_state, x0, obs, key), args.repeats)
        fwd = (time_round_robin(losses, (params, x0, obs, key), args.repeats) if args.forward
               else {})
        base = times.get("vanilla")
        for name in args.variants:
            t = times[name]
            config = variants()[name][0]
            ratio = t["wall_median"] / base["wall_median"] if base else None
            cpu_ratio = t["cpu_median"] / base["cpu_median"] if base else None
            fwd_ms = 1e3 * fwd[name]["wall_median"] if fwd else None
            rows.append({"chunk": chunk_name, "d": chunk[0] * chunk[1], "variant": name,
                         "step_ms_median": 1e3 * t["wall_median"],
                         "step_ms_min": 1e3 * t["wall_min"], "ratio_to_vanilla": ratio,
                         "cpu_ms_median": 1e3 * t["cpu_median"],
                         "cpu_ratio_to_vanilla": cpu_ratio, "forward_ms_median": fwd_ms,
                         "compile_s": t["compile_s"],
                         "num_penalised": config.penalised_count(args.batch) if config.weight
                         else 0})
            nan = float("nan")
            print(f"{chunk_name:>5} {name:<15} {1e3 * t['wall_median']:9.1f} "
                  f"{1e3 * t['wall_min']:9.1f} {ratio or nan:9.2f} {1e3 * t['cpu_median']:9.1f} "
                  f"{cpu_ratio or nan:7.2f} {fwd_ms or nan:9.1f} {t['compile_s']:9.1f}",
                  flush=True)
    out = {
        "benchmark": "chunk_overhead", "batch": args.batch, "unet_down_dims": list(model.down_dims),
        "num_params": chunk_networks.num_params(params), "obs_shape": list(OBS_SHAPE),
        "repeats": args.repeats, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "jax": jax.__version__,
        "load_average_1min": os.getloadavg()[0], "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(ARGS)
