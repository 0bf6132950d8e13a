"""Forward noising, prediction parameterisations and the denoising score-matching loss.

Conventions (VP, see :mod:`cdp_jax.schedules`): ``x_t = alpha_t x0 + sigma_t eps``.
A denoiser is any callable ``denoiser(x, t, cond) -> prediction`` with ``x`` of shape
``(batch, *event)`` (``event`` is ``(action_dim,)`` or ``(horizon, action_dim)``), ``t`` of shape
``(batch,)`` and ``cond`` any pytree with leading dimension ``batch`` (or ``None``). The prediction has
the shape of ``x`` and is one of:

* ``"eps"``: the noise, ``eps_hat``;
* ``"x0"``: the clean sample (Tweedie's posterior mean), ``x0_hat``;
* ``"v"``: the velocity ``v = alpha_t eps - sigma_t x0`` (Salimans & Ho 2022).

The score is ``grad log p_t(x) = -eps_hat / sigma_t``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from cdp_jax.configs.names import PREDICTIONS
from cdp_jax.schedules import Schedule


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"Unknown prediction {prediction!r}; expected one of {PREDICTIONS}.")


def expand_to(a: jax.Array, x: jax.Array) -> jax.Array:
    """Reshape per-sample scalars ``a`` of shape ``(batch,)`` to broadcast against ``x``."""
    a = jnp.asarray(a, dtype=x.dtype)
    if a.ndim == 0:
        return a
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Forward noising ``x_t = alpha_t x0 + sigma_t eps``; ``t`` has shape ``(batch,)``."""
    return expand_to(schedule.alpha(t), x0) * x0 + expand_to(schedule.sigma(t), x0) * eps


def to_x0(pred, prediction: str, x, alpha, sigma):
    """Convert a prediction of kind ``prediction`` to ``x0_hat``. ``alpha``, ``sigma`` broadcast to x."""
    if prediction == "x0":
        return pred
    if prediction == "eps":
        return (x - sigma * pred) / alpha
    if prediction == "v":
        return alpha * x - sigma * pred
    check_prediction(prediction)


def to_eps(pred, prediction: str, x, alpha, sigma):
    """Convert a prediction of kind ``prediction`` to ``eps_hat``."""
    if prediction == "eps":
        return pred
    if prediction == "x0":
        return (x - alpha * pred) / sigma
    if prediction == "v":
        return sigma * x + alpha * pred
    check_prediction(prediction)


def from_x0_eps(x0, eps, prediction: str, alpha, sigma):
    """The ``prediction``-kind target for a known pair ``(x0, eps)``."""
    if prediction == "x0":
        return x0
    if prediction == "eps":
        return eps
    if prediction == "v":
        return alpha * eps - sigma * x0
    check_prediction(prediction)


def convert(pred, source: str, target: str, x, alpha, sigma):
    """Convert between ``"eps"``, ``"x0"``, ``"v"`` and ``"score"`` at noise level (alpha, sigma)."""
    if target == "score":
        return -to_eps(pred, source, x, alpha, sigma) / sigma
    x0 = to_x0(pred, source, x, alpha, sigma)
    eps = to_eps(pred, source, x, alpha, sigma)
    return from_x0_eps(x0, eps, target, alpha, sigma)


def sample_time(schedule: Schedule, key: jax.Array, batch: int) -> jax.Array:
    """Training times: integer indices uniform on ``{0..T-1}`` (discrete) or uniform on
    ``[t_min, t_max]`` (continuous). Shape ``(batch,)``."""
    if schedule.is_discrete:
        return jax.random.randint(key, (batch,), 0, schedule.num_steps)
    return jax.random.uniform(key, (batch,), minval=schedule.t_min, maxval=schedule.t_max)


def denoising_loss(
    denoiser: Callable,
    schedule: Schedule,
    x0: jax.Array,
    cond,
    key: jax.Array,
    *,
    prediction: str = "eps",
    weighting: Callable | None = None,
):
    """Denoising score-matching loss in the ``prediction`` parameterisation.

    ``L = mean_b w(t_b) * mean_event ||pred(x_t, t, cond) - target||^2`` with ``t`` from
    :func:`sample_time`, ``eps ~ N(0, I)`` and the target as given by :func:`from_x0_eps`.

    Args:
      denoiser: ``(x, t, cond) -> prediction``.
      x0: clean samples, shape ``(batch, *event)``.
      cond: conditioning pytree with leading dimension ``batch`` (or ``None``).
      key: PRNG key (split here into the time and noise draws).
      weighting: optional ``w(t) -> (batch,)`` per-sample weight.

    Returns:
      ``(loss, aux)`` where aux holds ``"diffusion/loss"`` and the draws (``t``, ``x_t``, ``eps``,
      ``pred``) so that regularisers can reuse them without another forward pass.
    """
    check_prediction(prediction)
    key_t, key_eps = jax.random.split(key)
    t = sample_time(schedule, key_t, x0.shape[0])
    eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
    return denoising_loss_from_draws(denoiser, schedule, x0, cond, t, eps, prediction=prediction,
                                     weighting=weighting)


def denoising_loss_from_draws(
    denoiser: Callable,
    schedule: Schedule,
    x0: jax.Array,
    cond,
    t: jax.Array,
    eps: jax.Array,
    *,
    prediction: str = "eps",
    weighting: Callable | None = None,
):
    """:func:`denoising_loss` with its draws given: levels ``t`` ``(batch,)`` and noise ``eps``
    (the shape of ``x0``). With x0-prediction and no weighting this is the official code's loss,
    ``mean((net(x_t, t, cond) - x0)^2)`` over batch and event."""
    check_prediction(prediction)
    alpha, sigma = expand_to(schedule.alpha(t), x0), expand_to(schedule.sigma(t), x0)
    x_t = alpha * x0 + sigma * eps
    pred = denoiser(x_t, t, cond)
    if pred.shape != x0.shape:
        raise ValueError(f"denoiser returned shape {pred.shape}, expected {x0.shape} (same as x).")
    target = from_x0_eps(x0, eps, prediction, alpha, sigma)
    per_sample = jnp.mean(jnp.square(pred - target).reshape(x0.shape[0], -1), axis=-1)
    if weighting is not None:
        per_sample = per_sample * weighting(t)
    loss = jnp.mean(per_sample)
    aux = {"diffusion/loss": loss, "t": t, "x_t": x_t, "eps": eps, "pred": pred}
    return loss, aux


def gaussian_denoiser(mean, std, schedule: Schedule, prediction: str = "eps"):
    """Exact denoiser of ``N(mean, diag(std**2))`` data (closed form), for tests and examples.

    ``E[x0 | x_t] = mean + alpha std^2 / (alpha^2 std^2 + sigma^2) (x_t - alpha mean)``.
    ``mean`` and ``std`` have the event shape; the returned callable ignores ``cond``.
    """
    check_prediction(prediction)
    mean, std = jnp.asarray(mean)[None], jnp.asarray(std)[None]  # leading batch axis

    def denoiser(x, t, cond=None):
        alpha, sigma = expand_to(schedule.alpha(t), x), expand_to(schedule.sigma(t), x)
        var = std**2
        x0 = mean + alpha * var / (alpha**2 * var + sigma**2) * (x - alpha * mean)
        eps = (x - alpha * x0) / sigma
        return from_x0_eps(x0, eps, prediction, alpha, sigma)

    return denoiser


def gaussian_mixture_denoiser(weights, means, stds, schedule: Schedule, prediction: str = "eps"):
    """Exact denoiser of a mixture of isotropic Gaussians, ``sum_k w_k N(m_k, s_k^2 I)``.

    ``weights``: ``(K,)``; ``means``: ``(K, d)``; ``stds``: ``(K,)``. Inputs ``x`` are ``(batch, d)``.
    """
    check_prediction(prediction)
    log_w = jnp.log(jnp.asarray(weights))
    means, stds = jnp.asarray(means), jnp.asarray(stds)

    def denoiser(x, t, cond=None):
        alpha = schedule.alpha(t)[:, None, None]  # (B, 1, 1) against (B, K, d)
        sigma = schedule.sigma(t)[:, None, None]
        var_t = alpha**2 * stds[None, :, None] ** 2 + sigma**2  # (B, K, 1)
        diff = x[:, None, :] - alpha * means[None]  # (B, K, d)
        d = x.shape[-1]
        log_lik = -0.5 * jnp.sum(diff**2 / var_t, -1) - 0.5 * d * jnp.log(var_t[..., 0])
        resp = jax.nn.softmax(log_w[None] + log_lik, axis=-1)[..., None]  # (B, K, 1)
        x0_k = means[None] + alpha * stds[None, :, None] ** 2 / var_t * diff
        x0 = jnp.sum(resp * x0_k, axis=1)
        a, s = alpha[:, 0], sigma[:, 0]
        eps = (x - a * x0) / s
        return from_x0_eps(x0, eps, prediction, a, s)

    return denoiser
