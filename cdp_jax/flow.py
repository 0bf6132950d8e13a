"""Flow matching on the linear (rectified-flow) path, in FQL's convention, and its CDP penalty.

Convention (github.com/seohongpark/fql, ``agents/fql.py``): time runs from noise to data,
``t = 0`` is noise ``x_0 ~ N(0, I)``, ``t = 1`` is data ``x_1``, and

    x_t = (1 - t) x_0 + t x_1,     target velocity  u = x_1 - x_0,     t ~ U[0, 1).

A velocity field is any callable ``velocity(x, t, cond) -> v`` with ``x`` and ``v`` of shape
``(batch, *event)`` (``event`` is ``(action_dim,)`` or a chunk ``(horizon, action_dim)``), ``t``
of shape ``(batch,)`` and ``cond`` a pytree with leading dimension ``batch`` (or ``None``). Per-
sample times are reshaped to ``(batch, 1, ...)`` here, never rank-promoted.

The implied clean action (the flow's analogue of an x0-predicting denoiser) is
``x1_hat(x, t) = x + (1 - t) v(x, t)``; its Jacobian ``I + (1 - t) J_v`` is what the ``"clean"``
contraction target penalises (docs/MATH.md, "Contraction for flow-matching policies"). Sampling
integrates ``dx/dt = v(x, t)`` from ``t = 0`` to ``1`` on the uniform grid ``t_i = i / steps``
(:data:`FLOW_SAMPLERS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cdp_jax import penalties
from cdp_jax.configs.contraction import ContractionConfig


def _per_sample(t: jax.Array, x: jax.Array) -> jax.Array:
    """Times ``(batch,)`` (or a scalar) reshaped to broadcast against ``x`` ``(batch, *event)``."""
    t = jnp.asarray(t, x.dtype)
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim)) if t.ndim else t


# ----------------------------------------------------------------------------- the path and loss
def interpolate(x0: jax.Array, x1: jax.Array, t: jax.Array) -> jax.Array:
    """``x_t = (1 - t) x_0 + t x_1``: ``x0``, ``x1`` ``(batch, *event)``, ``t`` ``(batch,)``."""
    tb = _per_sample(t, x1)
    return (1 - tb) * x0 + tb * x1


def velocity_target(x0: jax.Array, x1: jax.Array) -> jax.Array:
    """The conditional velocity of the linear path, ``d x_t / dt = x_1 - x_0`` (any shape)."""
    return x1 - x0


def flow_matching_loss_from_draws(velocity: Callable, x1: jax.Array, x0: jax.Array,
                                  t: jax.Array, cond=None):
    """Flow-matching loss with its draws given: ``mean((v(x_t, t, cond) - (x_1 - x_0))^2)``.

    The mean runs over batch and event (FQL's ``bc_flow_loss``). ``x1`` (data) and ``x0``
    (noise) have shape ``(batch, *event)``; ``t`` ``(batch,)`` in ``[0, 1]``.

    Returns:
      ``(loss, aux)``: ``aux`` holds the metric ``"flow/loss"`` and the draws ``x0``, ``t``,
      ``x_t`` and ``pred`` (the velocity output), so the contraction penalty can reuse them
      (:func:`contraction_regulariser`) without another draw.
    """
    x_t = interpolate(x0, x1, t)
    pred = velocity(x_t, t, cond)
    if pred.shape != x1.shape:
        raise ValueError(f"velocity returned shape {pred.shape}, expected {x1.shape} (that of x).")
    loss = jnp.mean(jnp.square(pred - velocity_target(x0, x1)))
    return loss, {"flow/loss": loss, "x0": x0, "t": t, "x_t": x_t, "pred": pred}


def flow_matching_loss(velocity: Callable, x1: jax.Array, key: jax.Array, cond=None):
    """:func:`flow_matching_loss_from_draws` with ``x_0 ~ N(0, I)`` and ``t ~ U[0, 1)`` drawn
    from ``key`` (``key_x0, key_t = jax.random.split(key)``), in the dtype of ``x1``."""
    key_x0, key_t = jax.random.split(key)
    x0 = jax.random.normal(key_x0, x1.shape, x1.dtype)
    t = jax.random.uniform(key_t, (x1.shape[0],), x1.dtype)
    return flow_matching_loss_from_draws(velocity, x1, x0, t, cond)


# ----------------------------------------------------------------------------- clean prediction
def clean_from_velocity(v: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    """``x1_hat = x + (1 - t) v``: where a straight line at velocity ``v`` from ``(x, t)`` is at
    ``t = 1``. For the exact field ``v* = E[x_1 - x_0 | x_t = x]`` this is ``E[x_1 | x_t = x]``."""
    return x + (1 - _per_sample(t, x)) * v


def velocity_from_clean(x1_hat: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    """Inverse of :func:`clean_from_velocity`: ``v = (x1_hat - x) / (1 - t)`` (``t < 1``)."""
    return (x1_hat - x) / (1 - _per_sample(t, x))


def clean_prediction(velocity: Callable, x: jax.Array, t: jax.Array, cond=None) -> jax.Array:
    """The implied clean action ``x1_hat(x, t) = x + (1 - t) v(x, t, cond)``, ``(batch, *event)``.

    Its Jacobian in ``x`` is ``I + (1 - t) J_v``; for the exact field it is
    ``t / (1 - t)^2 Cov[x_1 | x_t = x]``, positive semidefinite (the flow's Tweedie identity).
    """
    return clean_from_velocity(velocity(x, t, cond), x, t)


# ----------------------------------------------------------------------------- samplers
def euler_step(velocity: Callable, x: jax.Array, t: jax.Array, s: jax.Array, cond,
               steps: int) -> jax.Array:
    """One Euler step from ``t`` to ``s = t + 1/steps``: ``x + v(x, t) / steps`` (divided by the
    step count, as FQL's ``compute_flow_actions`` writes it, so float32 results agree bit for
    bit). ``t``, ``s``: ``(batch,)``. First order."""
    del s
    return x + velocity(x, t, cond) / steps


def heun_step(velocity: Callable, x: jax.Array, t: jax.Array, s: jax.Array, cond,
              steps: int) -> jax.Array:
    """One Heun step (explicit trapezoid) from ``t`` to ``s = t + 1/steps``: the Euler predictor
    ``x_p = x + v(x, t) / steps``, then ``x + (v(x, t) + v(x_p, s)) / (2 steps)``. Second order;
    two evaluations per step, the last at ``t = 1``."""
    k1 = velocity(x, t, cond)
    k2 = velocity(x + k1 / steps, s, cond)
    return x + (k1 + k2) / (2 * steps)


@dataclasses.dataclass(frozen=True)
class FlowSamplerInfo:
    """A registered flow sampler: its step function (signature of :func:`euler_step`), the
    order of its global error and its velocity evaluations per step."""

    step: Callable
    order: int
    evals_per_step: int


FLOW_SAMPLERS: dict[str, FlowSamplerInfo] = {
    "euler": FlowSamplerInfo(euler_step, 1, 1),
    "heun": FlowSamplerInfo(heun_step, 2, 2),
}


def integrate(velocity: Callable, x0: jax.Array, cond=None, *, method: str = "euler",
              steps: int = 10, clip: tuple[float, float] | None = None,
              return_trajectory: bool = False) -> jax.Array:
    """Integrate ``dx/dt = v(x, t, cond)`` from ``x0`` at ``t = 0`` to ``t = 1``.

    A ``lax.scan`` of ``steps`` steps of :data:`FLOW_SAMPLERS` ``[method]`` on the uniform grid
    ``t_i = i / steps`` (computed in float64, cast to the dtype of ``x0``; the velocity sees
    ``t`` as ``(batch,)``; the state keeps the dtype of ``x0``). ``method="euler"``,
    ``steps=10``, ``clip=(-1, 1)`` is FQL's ``compute_flow_actions``. Jittable end to end (wrap
    the call in ``jax.jit``) and vmappable over seeds and batches.

    Args:
      velocity: ``velocity(x, t, cond) -> v`` (module docstring).
      x0: the initial noise, ``(batch, *event)``.
      cond: pytree with leading dimension ``batch``, or ``None``.
      method: a key of :data:`FLOW_SAMPLERS`.
      steps: number of steps (>= 1).
      clip: ``(low, high)`` applied to the final state only, or ``None``.
      return_trajectory: return every state, ``(steps + 1, batch, *event)``, from ``x0`` to the
        final (clipped) sample.

    Returns:
      The samples at ``t = 1``, the shape of ``x0`` (or the trajectory).
    """
    if method not in FLOW_SAMPLERS:
        raise ValueError(f"Unknown flow sampler method {method!r}; expected one of "
                         f"{sorted(FLOW_SAMPLERS)}.")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}.")
    if clip is not None and len(clip) != 2:
        raise ValueError(f"clip must be None or a (low, high) pair, got {clip!r}.")
    steps = int(steps)
    step = FLOW_SAMPLERS[method].step
    batch = x0.shape[0]
    grid = np.arange(steps + 1, dtype=np.float64) / steps
    times = {"t": jnp.asarray(grid[:-1], x0.dtype), "s": jnp.asarray(grid[1:], x0.dtype)}

    def body(x, p):
        t, s = (jnp.broadcast_to(p[k], (batch,)) for k in ("t", "s"))
        x = step(velocity, x, t, s, cond, steps).astype(x0.dtype)  # the state keeps x0's dtype
        return x, (x if return_trajectory else None)

    x, traj = jax.lax.scan(body, x0, times)
    if clip is not None:
        x = jnp.clip(x, clip[0], clip[1])
    if not return_trajectory:
        return x
    return jnp.concatenate([x0[None], traj[:-1], x[None]], axis=0)


def sample(velocity: Callable, key: jax.Array, shape: tuple[int, ...], cond=None, *,
           method: str = "euler", steps: int = 10, clip: tuple[float, float] | None = None,
           temperature: float = 1.0, return_trajectory: bool = False, dtype=jnp.float32):
    """Draw ``x_0 = temperature * N(0, I)`` of ``shape`` ``(batch, *event)`` from ``key`` and
    :func:`integrate` it (same keyword arguments). Vmappable over keys."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (batch, *event) with at least 2 dims, got {shape}.")
    for leaf in jax.tree_util.tree_leaves(cond):
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != shape[0]:
            raise ValueError(f"cond leaves need leading dimension batch={shape[0]}; got a leaf "
                             f"of shape {jnp.shape(leaf)}.")
    x0 = temperature * jax.random.normal(key, shape, dtype)
    return integrate(velocity, x0, cond, method=method, steps=steps, clip=clip,
                     return_trajectory=return_trajectory)


# ----------------------------------------------------------------------------- contraction
def _clean_target(velocity: Callable) -> Callable:
    return lambda x, t, cond: clean_prediction(velocity, x, t, cond)


def _velocity_target(velocity: Callable) -> Callable:
    return velocity


# Which map's Jacobian a flow policy's penalty looks at (docs/MATH.md, "Contraction for
# flow-matching policies"): name -> velocity -> the batched target of :mod:`cdp_jax.penalties`.
# "clean": x1_hat = x + (1 - t) v, Jacobian I + (1 - t) J_v (the official x0-denoiser penalty's
# object; the default); "velocity": v itself, J_v (the sampling ODE's own contraction rate).
TARGETS = {"clean": _clean_target, "velocity": _velocity_target}


def batched_target(target: str, velocity: Callable) -> Callable:
    """The batched map ``(x, t, cond) -> y`` whose Jacobian in ``x`` is penalised."""
    if target not in TARGETS:
        raise ValueError(f"Unknown flow contraction target {target!r}; expected one of "
                         f"{tuple(TARGETS)}.")
    return TARGETS[target](velocity)


def target_function(target: str, velocity: Callable, t: jax.Array, cond) -> Callable:
    """One sample's map ``x (*event) -> (*event)``: ``t`` a scalar, ``cond`` that sample's
    conditioning with a leading batch dimension of 1 (or ``None``)."""
    return penalties.per_sample(batched_target(target, velocity), t, cond)


def contraction_regulariser(config: ContractionConfig, velocity: Callable, x_t: jax.Array,
                            t: jax.Array, cond, key: jax.Array):
    """The weighted CDP penalty for a flow policy, on the flow-matching draw ``(x_t, t)``.

    :func:`cdp_jax.penalties.regulariser` on :data:`TARGETS` ``[config.target]`` with the noise
    fraction ``1 - t`` (a sample is in the window when ``t >= 1 - config.window``; the default
    for flows is the whole path, ``window = 1``, see docs/MATH.md) and empty slots evaluated at
    ``t = 0``. Reuse ``aux["x_t"]``, ``aux["t"]`` of :func:`flow_matching_loss_from_draws`.
    Returns ``(weighted_loss, metrics)`` with the ``contraction/...`` metrics; ``(0, {})``
    without computation at weight 0.
    """
    if config.weight == 0:
        return jnp.zeros((), x_t.dtype), {}
    return penalties.regulariser(config, batched_target(config.target, velocity), x_t, t, cond,
                                 key, fraction=1 - t, safe_t=0.0)
