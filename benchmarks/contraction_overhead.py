"""Cost of the contraction penalty per training step, against a vanilla denoising step.

One training step = denoising score-matching loss (x0-prediction, discrete cosine T = 50, as the
official CDP code) + optional contraction regulariser, its gradient and an Adam update, batch 256,
on a Diffusion-QL-shaped MLP (sinusoidal time embedding 64 -> 128 -> 64 with Mish, then
[x, t_emb, obs(17)] -> 3 x 256 Mish -> action size). Rows:

* ``vanilla``: no penalty (``ContractionConfig(weight=0)``, which must cost nothing);
* ``default``: ``ContractionConfig(weight=0.1)`` (eigen, Lanczos K = 4, lowest 10% of noise levels,
  ``ceil(0.1 B)`` samples);
* ``eigen_K{k}_{frac}``: all noise levels in the window, ``frac`` of the batch penalised;
* ``frobenius_{frac}``: Hutchinson Frobenius form, one probe;
* ``exact_{frac}``: the materialised-Jacobian path (jacfwd + eigvalsh per sample).

Every function is compiled first; then all variants of one action size are timed round-robin
(``jax.block_until_ready``), ``--repeats`` rounds; medians and minima, and their ratios to
``vanilla`` at the same action size. Run:
``python benchmarks/contraction_overhead.py [--quick]``; writes
``benchmarks/results/contraction_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
from pathlib import Path

from cdp_jax.configs import fields
from cdp_jax.configs.contraction import ContractionConfig

OBS_DIM = 17
BATCH = 256
EVENT_SHAPES = {3: (3,), 7: (7,), 112: (16, 7), 224: (32, 7)}
FORWARD_TIMED = ("vanilla", "default", "exact_10%")


def variants(quick: bool) -> dict:
    """``name -> (ContractionConfig, exact)``; ``exact`` rows materialise the Jacobian
    (:func:`exact_regulariser`), the others call ``contraction.contraction_regulariser``.
    ``quick``: one row of each kind (a smoke run)."""
    cfg = lambda **kw: ContractionConfig(weight=0.1, **kw)
    rows = {"vanilla": (ContractionConfig(weight=0.0), False), "default": (cfg(), False)}
    fracs = (0.1,) if quick else (0.1, 1.0)
    for k in ([1] if quick else [1, 3, 5, 10]):
        for frac in fracs:
            rows[f"eigen_K{k}_{int(frac * 100)}%"] = (
                cfg(num_iters=k, window=1.0, num_penalised=frac), False)
    for frac in fracs:
        rows[f"frobenius_{int(frac * 100)}%"] = (
            cfg(penalty="frobenius", window=1.0, num_penalised=frac), False)
        rows[f"exact_{int(frac * 100)}%"] = (cfg(window=1.0, num_penalised=frac), True)
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (every code path, compiled once; timings not "
                             "meaningful): d = 112, one row of each kind (vanilla, default, "
                             "eigen_K1_10%%, frobenius_10%%, exact_10%%, vanilla/forward), "
                             "2 repeats")
    parser.add_argument("--repeats", type=fields.positive_int, default=None)
    parser.add_argument("--forward-all", action="store_true",
                        help="also time the forward pass (loss only) of every variant")
    parser.add_argument("--dims", type=int, nargs="+", choices=sorted(EVENT_SHAPES),
                        help="action sizes to run (default: all, or 112 with --quick)")
    names = list(variants(False))
    parser.add_argument("--skip", nargs="+", default=(), choices=names[1:], metavar="VARIANT",
                        help="variant names to leave out (e.g. exact_100% at d = 224: minutes); "
                             f"any of {' '.join(names[1:])} (vanilla is the baseline)"
                             .replace("%", "%%"))
    parser.add_argument("--out", default="benchmarks/results/contraction_overhead.json")
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad value are answered before JAX starts

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import timing  # noqa: E402

from cdp_jax import contraction, diffusion, schedules  # noqa: E402


def mish(x):
    return x * jnp.tanh(jax.nn.softplus(x))


class DiffusionQLMLP(nn.Module):
    """Diffusion-QL actor MLP for flat or chunked actions (event dims flattened in and out)."""

    event_shape: tuple[int, ...]

    @nn.compact
    def __call__(self, x, t, obs):
        half = 32
        freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half) / (half - 1))
        angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
        temb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
        temb = nn.Dense(64)(mish(nn.Dense(128)(temb)))
        h = jnp.concatenate([x.reshape(x.shape[0], -1), temb, obs], axis=-1)
        for _ in range(3):
            h = mish(nn.Dense(256)(h))
        return nn.Dense(int(np.prod(self.event_shape)))(h).reshape(x.shape)


def exact_regulariser(config, denoiser, schedule, x_t, t, cond, key, *, prediction):
    """The same eigen penalty with the Jacobian materialised (jacfwd) and eigvalsh."""
    n = config.penalised_count(x_t.shape[0])
    idx = jax.random.choice(key, x_t.shape[0], (n,), replace=False)

    def one(x, t_i, c):
        fn = contraction.target_function(config.target, denoiser, schedule, t_i, c[None],
                                         prediction)
        mu = contraction.exact_max_sym_eigenvalue(fn, x)
        return jnp.square(jax.nn.relu(mu + config.margin))

    return config.weight * jnp.mean(jax.vmap(one)(x_t[idx], t[idx], cond[idx])), {}


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


def time_interleaved(calls, repeats):
    """Median and min seconds per call, timed round-robin after a warm-up (see ``timing``)."""
    times = timing.time_interleaved(calls, repeats, warmup=True)
    return {name: (float(np.median(t)), float(np.min(t))) for name, t in times.items()}


def main(args):
    repeats = args.repeats or (2 if args.quick else 7)
    dims = args.dims or ([112] if args.quick else list(EVENT_SHAPES))
    forward_timed = ("vanilla",) if args.quick else FORWARD_TIMED
    schedule = schedules.cosine(50)
    optimiser = optax.adam(3e-4)
    results = []
    # Ratios of medians and of minima: on a shared CPU the minima are the steadier of the two.
    # "/forward" rows time the loss alone and compare with vanilla's forward.
    print(f"{'d':>4} {'variant':<24} {'ms':>10} {'min ms':>9} {'x vanilla':>9} {'min x':>9}")
    for d in dims:
        event = EVENT_SHAPES[d]
        model = DiffusionQLMLP(event)
        key = jax.random.key(d)
        x0 = jnp.clip(jax.random.normal(key, (BATCH,) + event), -1, 1)
        obs = jax.random.normal(jax.random.fold_in(key, 1), (BATCH, OBS_DIM))
        params = model.init(key, x0, jnp.zeros((BATCH,), jnp.int32), obs)
        opt_state = optimiser.init(params)
        calls = {}
        for name, (config, exact) in variants(args.quick).items():
            if name in args.skip:
                continue
            regulariser = exact_regulariser if exact else contraction.contraction_regulariser
            step, loss = make_step(model, schedule, optimiser, config, regulariser)
            calls[name] = (step, (params, opt_state, x0, obs, key))
            if name in forward_timed or args.forward_all:
                calls[f"{name}/forward"] = (loss, (params, x0, obs, key))
        timed = time_interleaved(calls, repeats)
        base, base_min = timed["vanilla"]
        base_fwd = timed["vanilla/forward"][0]
        for name, (med, best) in timed.items():
            fwd = name.endswith("/forward")
            ref, ref_min = (base_fwd, timed["vanilla/forward"][1]) if fwd else (base, base_min)
            results.append({"d": d, "event_shape": list(event), "variant": name,
                            "ms": 1e3 * med, "min_ms": 1e3 * best, "ratio_vs_vanilla": med / ref,
                            "min_ratio_vs_vanilla": best / ref_min})
            print(f"{d:>4} {name:<24} {1e3 * med:>10.2f} {1e3 * best:>9.2f} {med / ref:>9.2f}"
                  f" {best / ref_min:>9.2f}", flush=True)
    meta = {"batch": BATCH, "obs_dim": OBS_DIM, "repeats": repeats, "quick": args.quick,
            "jax": jax.__version__, "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "note": "shared, noisy 2-core CPU; ratios from one run"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(ARGS)
