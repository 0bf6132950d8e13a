"""How noisy the fast CDP penalty is, per subsample size and probe count (the variance half of the
variance-versus-cost table; the cost half is ``train_throughput.py --only paper``).

The official penalty is the mean over a batch's penalised samples of ``mean((J_sym + 0.1 I)^2)``
(exact Jacobian of the x0 network). The fast estimate (``cdp_jax.paper.PAPER_FAST_PENALTY``) takes
``m`` of the penalised samples at random and ``p`` Hutchinson probes per sample. Both are unbiased
(tests/test_fast_penalty.py); this script measures their spread on the pipelines' own networks and
shapes, with ``R`` independent estimates of one fixed batch:

* ``value``: relative RMS error of the penalty, ``sqrt(E (P_hat - P)^2) / P``;
* ``grad``: relative RMS error of its parameter gradient, ``sqrt(E ||g_hat - g||^2) / ||g||``;
* ``vs SGD``: the noise the estimate adds to the actor's gradient at weight 0.1,
  ``0.1 sqrt(E ||g_hat - g||^2)``, over the noise the denoising loss's own (t, eps) draw already
  has on the same batch, ``sqrt(E ||g_bc - E g_bc||^2)``. Below 1, the estimate adds less noise
  than the draw every step already carries.

Settings: ``rl`` = the ``paper`` actor (Diffusion-QL MLP, hopper shapes: obs 11, action 3, batch
256, t uniform on 0..49, the lowest 10% of levels penalised: about 26 samples); ``il`` = the
``paper-il`` actor (Pearce MLP, lift shapes: obs 2 x 19, action 7, batch 512, every level
penalised). Each at initialisation and after ``--train`` updates of the preset on random data
(the Jacobian grows as the network fits; the data are random, so only the scale is realistic).

    python benchmarks/fast_penalty.py              # R = 200, both settings, both network states
    python benchmarks/fast_penalty.py --quick      # R = 40, no training

Writes ``benchmarks/results/fast_penalty.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from cdp_jax import paper
from cdp_jax.configs import fields

NUM_ROWS = 4096
# (m, p) pairs; m = None: every penalised sample (the exact penalty's own sample set).
GRID = {"rl": [(4, 1, "hutchinson"), (8, 1, "hutchinson"), (16, 1, "hutchinson"),
               (32, 1, "hutchinson"), (16, 2, "hutchinson"), (16, 4, "hutchinson"),
               (16, 1, "jvp_pairs"), (32, 1, "jvp_pairs")],
        "il": [(4, 1, "hutchinson"), (8, 1, "hutchinson"), (16, 1, "hutchinson"),
               (32, 1, "hutchinson"), (64, 1, "hutchinson"), (8, 2, "hutchinson"),
               (8, 4, "hutchinson"), (512, 1, "hutchinson"), (4, 1, "jvp_pairs"),
               (8, 1, "jvp_pairs"), (16, 1, "jvp_pairs")]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="R = 40 estimates, no training")
    parser.add_argument("--repeats", type=fields.positive_int, default=None,
                        help="R, estimates per cell (>= 2: the spreads are RMS over them)")
    parser.add_argument("--train", type=fields.positive_int, default=2000,
                        help="updates of the preset on random data before the second measurement")
    parser.add_argument("--settings", nargs="*", default=["rl", "il"], choices=["rl", "il"])
    estimators = sorted({row[2] for rows in GRID.values() for row in rows})
    parser.add_argument("--estimators", nargs="*", default=[], choices=estimators,
                        help="only these estimators (default: every row of GRID)")
    parser.add_argument("--states", nargs="*", type=fields.nonnegative_int, default=None,
                        help="training steps before each measurement (default: 0 and --train)")
    parser.add_argument("--out", default="benchmarks/results/fast_penalty.json")
    args = parser.parse_args(argv)
    if args.repeats == 1:
        parser.error("argument --repeats: 1 estimate has no spread; give R >= 2")
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad value are answered before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cdp_jax import contraction, diffusion, training  # noqa: E402
from cdp_jax.agents import dbc, dql  # noqa: E402


def setting(kind: str):
    """``(agent, config, obs shape, action shape, batch, params of a state, arrays builder)``."""
    if kind == "rl":
        task, _ = paper.rl_task_overrides(paper.TASKS["hopper-medium-replay"])
        config = dql.default_config(**{**paper.PAPER_RL, **task})
        return dql, config, (11,), (3,), 256, lambda s: s.actor_params
    config = dbc.default_config(**paper.PAPER_IL)
    return dbc, config, (2, 19), (1, 7), 512, lambda s: s.params


def arrays(key, obs_shape, action_shape):
    k = jax.random.split(key, 4)
    return {"observations": jax.random.normal(k[0], (NUM_ROWS, *obs_shape)),
            "actions": jax.random.uniform(k[1], (NUM_ROWS, *action_shape), minval=-1, maxval=1),
            "rewards": jax.random.normal(k[2], (NUM_ROWS,)),
            "next_observations": jax.random.normal(k[3], (NUM_ROWS, *obs_shape)),
            "terminals": jnp.zeros((NUM_ROWS,))}


def flat(tree):
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def measure(kind: str, train_steps: int, repeats: int, estimators=()) -> list[dict]:
    agent, config, obs_shape, action_shape, size, params_of = setting(kind)
    obs_dim, action_dim = obs_shape[-1], action_shape[-1]
    state = agent.init(jax.random.key(1), config, obs_dim, action_dim)
    data = arrays(jax.random.key(2), obs_shape, action_shape)
    if agent is dbc:  # imitation batches hold observation windows and actions only
        data = {"observations": data["observations"], "actions": data["actions"]}
    if train_steps:
        chunk = jax.jit(training.make_train_chunk(agent, train_steps, size))
        state = jax.block_until_ready(chunk(state, data, jax.random.key(3))[0])
    params = params_of(state)
    actor = agent._actor(config)
    schedule = agent._schedule(config)
    obs, actions = data["observations"][:size], data["actions"][:size]
    t = diffusion.sample_time(schedule, jax.random.key(4), size)
    eps = jax.random.normal(jax.random.key(5), actions.shape)
    alpha = diffusion.expand_to(schedule.alpha(t), actions)
    sigma = diffusion.expand_to(schedule.sigma(t), actions)
    x_t = alpha * actions + sigma * eps
    exact_config = dataclasses.replace(config.contraction, weight=1.0, num_penalised=1.0)

    def penalty(p, cfg, key):
        denoiser = lambda x, tt, c: actor.apply(p, x, tt, c)
        return contraction.contraction_regulariser(cfg, denoiser, schedule, x_t, t, obs, key,
                                                   prediction=config.prediction)

    (exact, metrics), exact_grad = jax.jit(jax.value_and_grad(
        lambda p: penalty(p, exact_config, jax.random.key(0)), has_aux=True))(params)
    exact_grad = flat(exact_grad)
    in_window = int(metrics["contraction/num_in_window"])

    # The denoising loss's own draw noise on this batch: fresh (t, eps) per key.
    def bc_grad(key):
        kt, ke = jax.random.split(key)
        tt = diffusion.sample_time(schedule, kt, size)
        ee = jax.random.normal(ke, actions.shape)
        denoise = lambda p: diffusion.denoising_loss_from_draws(
            lambda x, s, c: actor.apply(p, x, s, c), schedule, actions, obs, tt, ee,
            prediction=config.prediction)[0]
        return flat(jax.grad(denoise)(params))

    keys = jax.random.split(jax.random.key(6), repeats)
    bc = jax.lax.map(jax.jit(bc_grad), keys)
    bc_noise = float(jnp.sqrt(jnp.mean(jnp.sum(jnp.square(bc - bc.mean(0)), axis=1))))

    rows = []
    for m, probes, estimator in GRID[kind]:
        if estimators and estimator not in estimators:
            continue
        cfg = dataclasses.replace(exact_config, frobenius_estimator=estimator,
                                  num_penalised=m, num_probes=probes)
        one = jax.jit(lambda key, cfg=cfg: (lambda vg: (vg[0][0], flat(vg[1])))(
            jax.value_and_grad(lambda p: penalty(p, cfg, key), has_aux=True)(params)))
        start = time.perf_counter()
        values, grads = jax.lax.map(one, keys)
        values, grads = np.asarray(values), np.asarray(grads)
        grad_rms = float(np.sqrt(np.mean(np.sum(np.square(grads - np.asarray(exact_grad)), 1))))
        rows.append({
            "setting": kind, "trained_steps": train_steps, "estimator": estimator,
            "subsample": m, "probes": probes,
            "penalised_per_estimate": min(m, in_window), "in_window": in_window,
            "value_rel_rms": float(np.sqrt(np.mean(np.square(values - float(exact))))) / float(exact),
            "value_rel_bias": float(np.mean(values) / float(exact) - 1.0),
            "grad_rel_rms": grad_rms / float(jnp.linalg.norm(exact_grad)),
            "noise_vs_sgd_at_weight_0.1": 0.1 * grad_rms / bc_noise,
            "exact_penalty": float(exact), "seconds": time.perf_counter() - start})
    return rows


def main(args):
    repeats = args.repeats or (40 if args.quick else 200)
    states = args.states or ((0,) if args.quick else (0, args.train))
    rows = []
    print(f"{'setting':<8} {'trained':>7} {'estimator':>10} {'m':>4} {'p':>2} {'used':>4} {'value':>7} "
          f"{'bias':>7} {'grad':>7} {'vs SGD':>7}")
    for kind in args.settings:
        for steps in states:
            for r in measure(kind, steps, repeats, args.estimators):
                rows.append(r)
                print(f"{kind:<8} {steps:>7} {r['estimator']:>10} {r['subsample']:>4} {r['probes']:>2} "
                      f"{r['penalised_per_estimate']:>4} {r['value_rel_rms']:>7.3f} "
                      f"{r['value_rel_bias']:>+7.3f} {r['grad_rel_rms']:>7.3f} "
                      f"{r['noise_vs_sgd_at_weight_0.1']:>7.3f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"repeats": repeats, "jax": jax.__version__, "backend": jax.default_backend(),
            "note": "relative RMS errors over R estimates of one fixed batch; see the docstring"}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(ARGS)
