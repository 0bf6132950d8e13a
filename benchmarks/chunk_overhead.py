"""Cost of the contraction penalty per training step for a chunk denoiser (temporal UNet).

One training step = x0-prediction denoising loss (discrete cosine, T = 50) + optional contraction
regulariser, its gradient and an Adam update, on :class:`cdp_jax.chunk_networks.ChunkUNet`
(``down_dims = (h, 2h, 4h)``, FiLM on time and a 2 x 28 observation history, the Fetch setting)
for action chunks 16 x 4 (Fetch, d = 64) and 16 x 7 (a 7-DoF arm, d = 112). Rows:

* ``vanilla``: no penalty (``ContractionConfig(weight=0)``, which costs nothing);
* ``default``: ``ContractionConfig(weight=0.1)``: eigen, Lanczos K = 4, lowest 10% of noise levels,
  ``ceil(0.1 B)`` samples;
* ``eigen_K4_all_t``: K = 4, all noise levels, 10% of the batch;
* ``frobenius``: Hutchinson Frobenius form, one probe, all levels, 10% of the batch;
* ``exact_jacobian``: the same eigen penalty with the Jacobian materialised (``jax.jacfwd``, ``d``
  forward-mode passes, then ``eigvalsh``), 10% of the batch: what a matrix-free estimate avoids.

Every function is compiled first; times are medians (and minima) of ``--repeats`` runs of
``jax.block_until_ready``; ratios are to ``vanilla`` at the same chunk. ``--forward`` also times the
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

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cdp_jax import chunk_networks, contraction, diffusion, schedules

OBS_SHAPE = (2, 28)  # Fetch: history 2 of [observation (25), desired_goal (3)]
CHUNKS = {"16x4": (16, 4), "16x7": (16, 7)}


def exact_regulariser(config, denoiser, schedule, x_t, t, cond, key, *, prediction):
    """The eigen penalty with the Jacobian materialised (jacfwd) and eigvalsh, same sample count."""
    n = config.penalised_count(x_t.shape[0])
    idx = jax.random.choice(key, x_t.shape[0], (n,), replace=False)

    def one(x, t_i, c):
        fn = contraction.target_function(config.target, denoiser, schedule, t_i, c[None],
                                         prediction)
        mu = contraction.exact_max_sym_eigenvalue(fn, x)
        return jnp.square(jax.nn.relu(mu + config.margin))

    return config.weight * jnp.mean(jax.vmap(one)(x_t[idx], t[idx], cond[idx])), {}


def variants():
    reg = contraction.contraction_regulariser
    cfg = lambda **kw: contraction.ContractionConfig(weight=0.1, **kw)
    return {
        "vanilla": (contraction.ContractionConfig(weight=0.0), reg),
        "default": (cfg(), reg),
        "eigen_K4_all_t": (cfg(num_iters=4, window=1.0, num_penalised=0.1), reg),
        "frobenius": (cfg(penalty="frobenius", window=1.0, num_penalised=0.1), reg),
        "exact_jacobian": (cfg(window=1.0, num_penalised=0.1), exact_regulariser),
    }


def make_step(model, schedule, optimiser, config, regulariser):
    def loss_fn(params, x0, obs, key):
        denoiser = lambda x, t, c: model.apply(params, x, t, c)
        k1, k2 = jax.random.split(key)
        loss, aux = diffusion.denoising_loss(denoiser, schedule, x0, obs, k1, prediction="x0")
        reg, _ = regulariser(config, denoiser, schedule, aux["x_t"], aux["t"], obs, k2,
                             prediction="x0")
        return loss + reg

    @jax.jit
    def step(params, opt_state, x0, obs, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, x0, obs, key)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, jax.jit(loss_fn)


def time_call(fn, args, repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))  # compile + one run
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times)), compile_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=64, help="UNet base channels h")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunks", nargs="+", default=list(CHUNKS), choices=list(CHUNKS))
    parser.add_argument("--variants", nargs="+", default=list(variants()),
                        choices=list(variants()))
    parser.add_argument("--forward", action="store_true", help="also time the loss alone")
    parser.add_argument("--out", default="benchmarks/results/chunk_overhead.json")
    args = parser.parse_args()
    schedule = schedules.cosine(50)
    optimiser = optax.adam(1e-4)
    model = chunk_networks.make_chunk_actor("unet", args.hidden, 3, 128)
    rows = []
    print(f"{'chunk':>5} {'variant':<15} {'step ms':>9} {'min ms':>9} {'x vanilla':>9}"
          f" {'fwd ms':>9} {'compile s':>9}", flush=True)
    for chunk_name in args.chunks:
        chunk = CHUNKS[chunk_name]
        key = jax.random.key(0)
        x0 = jnp.clip(jax.random.normal(key, (args.batch, *chunk)), -1, 1)
        obs = jax.random.normal(jax.random.fold_in(key, 1), (args.batch, *OBS_SHAPE))
        params = jax.jit(model.init)(key, x0, jnp.zeros((args.batch,), jnp.int32), obs)
        opt_state = optimiser.init(params)
        base = None
        for name in args.variants:
            config, regulariser = variants()[name]
            step, loss = make_step(model, schedule, optimiser, config, regulariser)
            med, best, compile_s = time_call(step, (params, opt_state, x0, obs, key), args.repeats)
            fwd = time_call(loss, (params, x0, obs, key), args.repeats)[0] if args.forward else None
            base = med if name == "vanilla" else base
            ratio = med / base if base else None
            rows.append({"chunk": chunk_name, "d": chunk[0] * chunk[1], "variant": name,
                         "step_ms_median": 1e3 * med, "step_ms_min": 1e3 * best,
                         "ratio_to_vanilla": ratio, "forward_ms_median": fwd and 1e3 * fwd,
                         "compile_s": compile_s, "num_penalised": config.penalised_count(args.batch)
                         if config.weight else 0})
            print(f"{chunk_name:>5} {name:<15} {1e3 * med:9.1f} {1e3 * best:9.1f} "
                  f"{ratio if ratio else float('nan'):9.2f} "
                  f"{1e3 * fwd if fwd else float('nan'):9.1f} {compile_s:9.1f}", flush=True)
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
    main()
