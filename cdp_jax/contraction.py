"""Contraction of diffusion-policy sampling: which Jacobian CDP penalises, and the penalty.

Conventions (VP, see :mod:`cdp_jax.diffusion`): ``x_t = alpha_t x0 + sigma_t eps``; a denoiser is
``denoiser(x, t, cond) -> pred`` with ``x`` of shape ``(batch, *event)``, ``t`` of shape
``(batch,)``. ``mu(x) = lambda_max(0.5 (J + J^T))``, the largest *algebraic* eigenvalue of the
symmetric part of a map's Jacobian (:mod:`cdp_jax.estimators`, re-exported here:
:func:`max_sym_eigenvalue`, :func:`exact_max_sym_eigenvalue`, :func:`sym_jacobian_frobenius`,
:func:`exact_sym_jacobian_frobenius`); the penalties and their estimators are shared with flow
matching (:mod:`cdp_jax.penalties`). This module says which map a diffusion policy's penalty
looks at, and adds the penalty to its loss (:func:`contraction_regulariser`).

Which Jacobian (``ContractionConfig.target``):

* ``"drift"``: the probability-flow ODE in the direction of integration (noise -> data),
  ``tau = -t``: ``F(x) = 0.5 beta(t) (x - eps_hat / sigma_t)``, from any parameterisation via
  :func:`cdp_jax.diffusion.to_eps`. ``J_F = 0.5 beta (I - J_eps / sigma)``, so ``mu_F < 0`` is
  exactly ``lambda_min(sym J_eps) > sigma_t`` (docs/MATH.md, "Signs"). Penalising ``mu_F`` makes the
  sampler forget early solver / score errors and seed perturbations (the theory's condition; the
  sign is checked numerically in the tests: a larger weight makes two nearby sampled flows end
  closer).
* ``"network"``: the raw network output w.r.t. the noisy action (what the official code
  penalises). With x0-prediction one DDIM / DPM-Solver++ step is
  ``x' = (sigma'/sigma) x + c x0_hat(x)``, ``c > 0``, so pushing ``d x0_hat / dx`` down makes each
  step contract, at the price of fighting Tweedie (``d x0_hat/dx = alpha/sigma^2 Cov[x0|x_t]`` is
  PSD): samples are pulled towards mode means. With eps-prediction, *lowering*
  ``lambda_max(sym J_eps)`` (the paper's theorem read literally) makes the sampling flow *less*
  contractive; use ``"drift"`` for eps- and v-models.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from cdp_jax import penalties
from cdp_jax.configs.contraction import ContractionConfig
from cdp_jax.diffusion import check_prediction, expand_to, to_eps
from cdp_jax.estimators import (  # noqa: F401 (re-exported: the public API)
    FROBENIUS_SCALES,
    exact_max_sym_eigenvalue,
    exact_sym_jacobian_frobenius,
    lanczos_top_eigenvector,
    max_sym_eigenvalue,
    sym_jacobian_frobenius,
)
from cdp_jax.penalties import FROBENIUS_ESTIMATORS, PENALTIES  # noqa: F401 (re-exported)
from cdp_jax.schedules import Schedule


def probability_flow_drift(pred: jax.Array, prediction: str, schedule: Schedule, x: jax.Array,
                           t: jax.Array) -> jax.Array:
    """Probability-flow ODE vector field in the direction of integration (noise -> data).

    With ``tau = -t`` (schedule time, as :meth:`Schedule.beta` reads it):
    ``dx/dtau = -(f x - 0.5 g^2 score) = 0.5 beta(t) (x - eps_hat / sigma_t)`` (VP: ``f = -beta/2``,
    ``g^2 = beta``). ``pred`` of kind ``prediction`` and ``x`` have shape ``(batch, *event)``, ``t``
    ``(batch,)``; scalar ``t`` with unbatched ``x`` also works.
    """
    alpha, sigma = expand_to(schedule.alpha(t), x), expand_to(schedule.sigma(t), x)
    eps = to_eps(pred, prediction, x, alpha, sigma)
    return 0.5 * expand_to(schedule.beta(t), x) * (x - eps / sigma)


def _network_target(denoiser, schedule, prediction):
    return denoiser


def _drift_target(denoiser, schedule, prediction):
    return lambda x, t, cond: probability_flow_drift(denoiser(x, t, cond), prediction, schedule,
                                                     x, t)


# Which map's Jacobian is penalised: name -> (denoiser, schedule, prediction) -> the batched
# target ``(x, t, cond) -> y`` of :mod:`cdp_jax.penalties`.
TARGETS = {"network": _network_target, "drift": _drift_target}


def _check_choice(field, value, options):
    if value not in options:
        raise ValueError(f"Unknown {field} {value!r}; expected one of {tuple(options)}.")


def batched_target(target: str, denoiser: Callable, schedule: Schedule,
                   prediction: str = "eps") -> Callable:
    """The batched map ``(x, t, cond) -> y`` whose Jacobian in ``x`` is penalised."""
    _check_choice("target", target, TARGETS)
    check_prediction(prediction)
    return TARGETS[target](denoiser, schedule, prediction)


def target_function(target: str, denoiser: Callable, schedule: Schedule, t: jax.Array, cond,
                    prediction: str = "eps") -> Callable:
    """The per-sample map ``x (*event) -> (*event)`` whose Jacobian is penalised.

    ``t`` is a scalar and ``cond`` one sample's conditioning *with* a leading batch dimension of 1
    (or ``None``): the denoiser is called on a batch of one.
    """
    return penalties.per_sample(batched_target(target, denoiser, schedule, prediction), t, cond)


def select_in_window(config: ContractionConfig, schedule: Schedule, t: jax.Array, key: jax.Array):
    """:func:`cdp_jax.penalties.select_in_window` with the noise levels of ``schedule``."""
    return penalties.select_in_window(config, schedule.time_fraction(t), key)


def contraction_regulariser(config: ContractionConfig, denoiser: Callable, schedule: Schedule,
                            x_t: jax.Array, t: jax.Array, cond, key: jax.Array, *,
                            prediction: str = "eps"):
    """The weighted contraction penalty to add to a diffusion actor loss.

    Penalises ``n = config.penalised_count(batch)`` of the in-window samples of the batch already
    drawn by :func:`cdp_jax.diffusion.denoising_loss` (reuse its ``aux["x_t"]``, ``aux["t"]``):
    ``weight * mean_{selected, in window} penalty(J_target(x_t, t, cond))``, the window being the
    lowest ``config.window`` of the schedule's noise levels. Out-of-window samples are never
    penalised; empty slots are evaluated at the lowest noise level; with none in the window the
    result is exactly 0 with finite gradients (:func:`cdp_jax.penalties.regulariser`).

    Args:
      config: settings; ``config.weight == 0`` returns ``(0.0, {})`` without any computation.
      denoiser: ``(x, t, cond) -> pred`` of kind ``prediction``.
      x_t: noisy samples ``(batch, *event)``; ``t``: ``(batch,)``; ``cond``: pytree with leading
        dimension ``batch`` or ``None``.
      key: PRNG key (subsample choice and estimator start vectors / probes).

    Returns:
      ``(weighted_loss, metrics)`` with ``contraction/penalty`` (unweighted), ``contraction/loss``,
      ``contraction/num_in_window``, ``contraction/num_penalised``, ``contraction/num_dropped``
      (in-window samples left out for lack of static slots) and, for the eigen penalty,
      ``contraction/mu_mean`` and ``contraction/mu_max`` over the penalised samples (0 if none).
    """
    if config.weight == 0:
        return jnp.zeros((), x_t.dtype), {}
    target = batched_target(config.target, denoiser, schedule, prediction)
    safe_t = 0 if schedule.is_discrete else schedule.t_min
    return penalties.regulariser(config, target, x_t, t, cond, key,
                                 fraction=schedule.time_fraction(t), safe_t=safe_t)
