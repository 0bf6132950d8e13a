"""Sampler throughput with a Diffusion-QL-shaped denoiser (obs 17, action 6, 3 x 256 Mish).

For each sampler and batch size: compile time (first call), then the median (and min) wall time of
``--repeats`` calls of the jitted sampler with ``jax.block_until_ready``; actions per second from the
median. Prints a table and writes JSON to ``benchmarks/results/sampler_throughput.json``.

    python benchmarks/sampler_throughput.py            # all samplers, batch 1 / 100 / 1000 / 10000
    python benchmarks/sampler_throughput.py --quick    # 2 samplers, fewer repeats

For a comparison with the official PyTorch sampler, run ``benchmarks/side_by_side.py`` (rows
``sample_2m/B``): it times both in the same run. History, not used by this script: issue 2 quoted
the official 15-step DPM-Solver++ 2M with this network on a 2-core CPU (load not recorded) at 5.1
ms per call (batch 1), 20 (100), 94 (1000) and 1161 (10000).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

from cdp_jax.configs import fields, names

DIFFUSION_STEPS = 50  # T of the discrete cosine schedule, as the official CDP code


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=sorted(names.SAMPLERS),
                        choices=sorted(names.SAMPLERS))
    parser.add_argument("--batches", nargs="*", type=fields.positive_int,
                        default=[1, 100, 1000, 10000])
    parser.add_argument("--steps", type=fields.positive_int, default=15,
                        help=f"sampler steps (at most T = {DIFFUSION_STEPS})")
    parser.add_argument("--unroll", type=fields.positive_int, default=1,
                        help="lax.scan unroll factor")
    parser.add_argument("--repeats", type=fields.positive_int, default=30)
    parser.add_argument("--quick", action="store_true",
                        help="--methods ddim dpm_solver_pp_2m --repeats 5")
    parser.add_argument("--out", default="benchmarks/results/sampler_throughput.json")
    args = parser.parse_args(argv)
    if args.steps > DIFFUSION_STEPS:
        parser.error(f"argument --steps: {args.steps} exceeds the schedule's T = {DIFFUSION_STEPS}")
    if args.quick:
        args.methods, args.repeats = ["ddim", "dpm_solver_pp_2m"], 5
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad value are answered before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import timing  # noqa: E402

from cdp_jax import samplers, schedules  # noqa: E402
from cdp_jax.networks import DQLActor  # noqa: E402


def time_calls(fn, *args, repeats: int):
    """``(compile_s, median_s, min_s)`` of ``fn(*args)``."""
    compile_s, times = timing.time_calls(fn, *args, repeats=repeats)
    return compile_s, statistics.median(times), min(times)


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """This machine's float32 XLA matmul rate right now (same run, same load as the samplers)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    _, med, _ = time_calls(f, a, repeats=repeats)
    return 2 * n**3 / med / 1e9


def call_flops(fn, *args) -> float | None:
    """XLA's FLOP count of one compiled call without loops (None where the backend does not
    report it)."""
    try:
        cost = fn.lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost["flops"])
    except Exception:  # noqa: BLE001 - cost analysis is best effort and backend dependent
        return None


def main(args):
    obs_dim, act_dim = 17, 6
    net = DQLActor()
    schedule = schedules.cosine(DIFFUSION_STEPS)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, act_dim)), jnp.zeros((1,), jnp.int32),
                      jnp.zeros((1, obs_dim)))

    rate = matmul_gflops()
    print(f"float32 matmul rate now: {rate:.1f} GFLOP/s (2048^2 @ 2048^2)", flush=True)
    rows = []
    for method in args.methods:
        for batch in args.batches:
            @jax.jit
            def draw(params, obs, key, method=method, batch=batch):
                # Every sampler call evaluates the batch at one level: run the time path once.
                denoiser = lambda x, t, c: net.apply(params, x, t[:1], c)
                return samplers.sample(denoiser, schedule, key, (batch, act_dim), obs, method=method,
                                       steps=args.steps, prediction="x0", clip_x0=(-1.0, 1.0),
                                       unroll=args.unroll)

            obs = jax.random.normal(jax.random.PRNGKey(1), (batch, obs_dim))
            reps = max(3, args.repeats // (10 if batch >= 10000 else 1))
            compile_s, med, best = time_calls(draw, params, obs, jax.random.PRNGKey(2), repeats=reps)
            # XLA counts a scan body once, so count one denoiser call and multiply by the evaluations.
            forward = jax.jit(lambda p, x, t, c: net.apply(p, x, t[:1], c))
            evals = args.steps * samplers.SAMPLERS[method].evals_per_step - (
                samplers.SAMPLERS[method].evals_per_step - 1)
            one = call_flops(forward, params, jnp.zeros((batch, act_dim)),
                             jnp.zeros((batch,), jnp.int32), obs)
            flops = None if one is None else one * evals
            row = dict(method=method, batch=batch, steps=args.steps, compile_s=compile_s,
                       median_ms=med * 1e3, min_ms=best * 1e3, actions_per_s=batch / med,
                       repeats=reps, gflop=None if flops is None else flops / 1e9,
                       fraction_of_matmul_rate=None if flops is None else flops / best / 1e9 / rate)
            rows.append(row)
            print(f"{method:18s} batch {batch:6d}  compile {compile_s:6.2f}s  median "
                  f"{med * 1e3:9.3f} ms  min {best * 1e3:9.3f} ms  {batch / med:12.0f} actions/s"
                  + (f"  {row['fraction_of_matmul_rate']:.0%} of matmul rate"
                     if row["fraction_of_matmul_rate"] is not None else ""), flush=True)

    meta = dict(backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
                jax=jax.__version__, cpu=platform.processor() or platform.machine(),
                network="DQLActor 3x256 mish, obs 17, act 6", schedule="cosine T=50",
                prediction="x0", unroll=args.unroll, matmul_gflops=rate)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(ARGS)
