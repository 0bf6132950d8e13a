"""Contraction diagnostics: ``mu`` along sampling trajectories, action spread, Lyapunov growth.

All three run a sampler with the :func:`cdp_jax.samplers.sample` signature
``sample(denoiser, schedule, key, shape, cond, *, steps, spacing, prediction, return_trajectory,
x_init, ...)`` (pass ``sampler=`` to use another one with that signature); extra keyword arguments
go to the sampler (``method``, ``clip_x0``, ``dtype``, ...). Time is schedule time ``tau`` as
:meth:`Schedule.beta` reads it: ``t`` (continuous) or ``(i + 1) / T`` (discrete), with the clean
point at 0; rates are per unit of that time, in the direction of integration (noise -> data), so a
negative rate means contraction.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cdp_jax.contraction import exact_max_sym_eigenvalue, max_sym_eigenvalue, target_function
from cdp_jax.schedules import Schedule


def _resolve(sampler):
    if sampler is not None:
        return sampler
    from cdp_jax.samplers import sample  # a sibling layer; imported on use only

    return sample


def schedule_time(schedule: Schedule, t) -> np.ndarray:
    """Schedule time ``tau`` of grid times: ``t`` (continuous) or ``(i + 1) / T`` (discrete)."""
    t = np.asarray(t)
    if schedule.is_discrete:
        return (t.astype(np.float64) + 1.0) / schedule.num_steps
    return t.astype(np.float64)


def mu_along_trajectory(denoiser: Callable, schedule: Schedule, key: jax.Array, shape, cond=None, *,
                        target: str = "drift", prediction: str = "eps", steps: int = 15,
                        spacing: str = "uniform", num_iters: int = 16, exact: bool = False,
                        sampler: Callable | None = None, **sample_kwargs):
    """``mu = lambda_max(sym J_target)`` at every state where a sampler evaluates the denoiser.

    Args:
      shape: ``(batch, *event)`` of the sampled batch; ``cond`` has leading dimension ``batch``.
      target: ``"drift"`` or ``"network"`` (see :mod:`cdp_jax.contraction`).
      num_iters: Lanczos steps of :func:`~cdp_jax.contraction.max_sym_eigenvalue`; ``exact=True``
        uses jacfwd + eigvalsh instead (small event sizes).

    Returns:
      dict with ``"t"`` ``(steps,)`` (grid times, noisiest first), ``"tau"`` ``(steps,)`` (schedule
      time), ``"mu"`` ``(steps, batch)`` and ``"samples"`` (the final states, ``shape``).
    """
    sample = _resolve(sampler)
    key_sample, key_mu = jax.random.split(key)
    traj = sample(denoiser, schedule, key_sample, shape, cond, steps=steps, spacing=spacing,
                  prediction=prediction, return_trajectory=True, **sample_kwargs)
    grid = schedule.time_grid(steps, spacing)[:steps]
    batch = shape[0]
    xs = traj[:steps].reshape((steps * batch,) + tuple(shape[1:]))  # step-major, batch-minor
    ts = jnp.repeat(jnp.asarray(grid), batch)
    conds = None if cond is None else jax.tree_util.tree_map(
        lambda c: jnp.tile(c, (steps,) + (1,) * (c.ndim - 1)), cond)

    def one(x, t, c, k):
        c = None if c is None else jax.tree_util.tree_map(lambda a: a[None], c)
        fn = target_function(target, denoiser, schedule, t, c, prediction)
        if exact:
            return exact_max_sym_eigenvalue(fn, x)
        return max_sym_eigenvalue(fn, x, k, num_iters=num_iters)

    # One compiled program instead of op-by-op dispatch of the vmapped estimator.
    mu = jax.jit(jax.vmap(one))(xs, ts, conds, jax.random.split(key_mu, steps * batch))
    return {"t": grid, "tau": schedule_time(schedule, grid), "mu": mu.reshape(steps, batch),
            "samples": traj[-1]}


def action_spread(denoiser: Callable, schedule: Schedule, key: jax.Array, event_shape, cond=None,
                  *, num_samples: int = 64, num_conditions: int | None = None,
                  sampler: Callable | None = None, **sample_kwargs):
    """Spread of ``num_samples`` actions sampled per observation.

    ``spread_o = sqrt(mean_n ||a_{o,n} - mean_n a_{o,n}||^2)`` (root of the trace of the sample
    covariance, biased 1/N form), per observation ``o``.

    Args:
      event_shape: one action's shape, ``(action_dim,)`` or ``(horizon, action_dim)``.
      cond: observations with leading dimension ``O`` (each repeated ``num_samples`` times), or
        ``None`` with ``num_conditions`` (default 1) unconditional groups.

    Returns:
      ``(spread, actions)``: ``spread`` ``(O,)`` and ``actions`` ``(O, num_samples, *event)``.
    """
    sample = _resolve(sampler)
    if cond is None:
        groups = 1 if num_conditions is None else int(num_conditions)
        rep = None
    else:
        groups = jax.tree_util.tree_leaves(cond)[0].shape[0]
        rep = jax.tree_util.tree_map(lambda c: jnp.repeat(c, num_samples, axis=0), cond)
    shape = (groups * num_samples,) + tuple(event_shape)
    actions = sample(denoiser, schedule, key, shape, rep, **sample_kwargs)
    actions = actions.reshape((groups, num_samples) + tuple(event_shape))
    flat = actions.reshape(groups, num_samples, -1)
    centred = flat - jnp.mean(flat, axis=1, keepdims=True)
    return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(centred), -1), -1)), actions


def finite_time_lyapunov(denoiser: Callable, schedule: Schedule, key: jax.Array, shape, cond=None,
                         *, epsilon: float = 1e-3, steps: int = 15, spacing: str = "uniform",
                         prediction: str = "eps", sampler: Callable | None = None,
                         **sample_kwargs):
    """Finite-time Lyapunov estimate: growth of the distance between two flows started close.

    Draws ``x_T ~ N(0, I)`` and ``x_T' = x_T + epsilon u`` (``u`` a random unit direction per
    sample), integrates both with the same sampler and the same key (synchronous coupling for
    stochastic samplers), and reports ``log(||x_0 - x_0'|| / epsilon)``. For a linear flow
    ``dx/dtau = A(tau) x`` with commuting ``A`` along ``u`` this is ``int mu dtau``; in general
    it is bounded above by ``int max_x mu dtau``. Negative means the sampler contracts.

    Returns:
      dict with ``"log_growth"`` ``(batch,)``, ``"rate"`` ``(batch,)`` (``log_growth`` per unit
      schedule time between the first grid time and the clean point), ``"distance"``
      ``(steps + 1, batch)`` along the trajectories, and ``"tau"`` ``(steps + 1,)``.
    """
    sample = _resolve(sampler)
    key_x, key_u, key_sample = jax.random.split(key, 3)
    dtype = sample_kwargs.get("dtype", jnp.float32)
    x0 = jax.random.normal(key_x, shape, dtype)
    u = jax.random.normal(key_u, shape, dtype)
    norms = jnp.linalg.norm(u.reshape(shape[0], -1), axis=-1)
    u = u / norms.reshape((-1,) + (1,) * (len(shape) - 1))
    run = lambda x: sample(denoiser, schedule, key_sample, shape, cond, steps=steps,
                           spacing=spacing, prediction=prediction, return_trajectory=True,
                           x_init=x, **sample_kwargs)
    diff = (run(x0 + epsilon * u) - run(x0)).reshape(steps + 1, shape[0], -1)
    distance = jnp.linalg.norm(diff, axis=-1)
    tau = schedule_time(schedule, schedule.time_grid(steps, spacing))
    log_growth = jnp.log(distance[-1] / epsilon)
    return {"log_growth": log_growth, "rate": log_growth / float(tau[0] - tau[-1]),
            "distance": distance, "tau": tau}
