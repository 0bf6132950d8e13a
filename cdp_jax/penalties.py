"""CDP's training penalties on any batched map: which samples, which penalty, which estimator.

A *target* is the map whose Jacobian with respect to the noisy action is penalised, batched:
``target(x, t, cond) -> y`` with ``x, y`` of shape ``(batch, *event)``, ``t`` ``(batch,)`` and
``cond`` a pytree with leading axis ``batch`` (or ``None``), each sample's output depending on
its own input only. Diffusion builds it from a denoiser (:mod:`cdp_jax.contraction`: the network
output or the probability-flow drift), flow matching from a velocity field (:mod:`cdp_jax.flow`:
the implied clean action or the velocity); everything below is shared.

* :data:`PENALTIES`: ``"eigen"``, ``relu(mu + margin)^2`` with ``mu`` the largest eigenvalue of
  the symmetric Jacobian (Lanczos, :func:`cdp_jax.estimators.max_sym_eigenvalue`), the paper's
  hinge; ``"frobenius"``, ``||sym J + lambda I||_F^2 / n(d)``, the official code's penalty, by
  one of :data:`FROBENIUS_ESTIMATORS` (``exact``, ``hutchinson``, ``jvp_pairs``).
* :func:`select_in_window`: a fixed-size random subsample of the samples whose noise level lies
  in the penalised window (shapes stay static under ``jit``).
* :func:`regulariser`: the weighted penalty and its metrics, what an actor loss adds.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from cdp_jax import estimators
from cdp_jax.configs.contraction import ContractionConfig


def _frobenius_kwargs(config: ContractionConfig) -> dict:
    return {"shift": config.frobenius_lambda, "scale": config.frobenius_scale}


# Every penalty and estimator maps the selected samples ``(x (n, *event), t (n,), cond)`` to
# ``(values (n,), extras)`` with the same signature; ``key`` draws start vectors or probes.
FROBENIUS_ESTIMATORS = {
    "hutchinson": lambda config, target, x, t, cond, key: estimators.hutchinson_frobenius_batch(
        target, x, (t, cond), key, num_probes=config.num_probes, **_frobenius_kwargs(config)),
    "jvp_pairs": lambda config, target, x, t, cond, key: estimators.jvp_pairs_frobenius_batch(
        target, x, (t, cond), key, num_probes=config.num_probes, **_frobenius_kwargs(config)),
    "exact": lambda config, target, x, t, cond, key: estimators.exact_frobenius_batch(
        target, x, (t, cond), **_frobenius_kwargs(config)),
}


def _frobenius_batch(config, target, x, t, cond, key):
    return FROBENIUS_ESTIMATORS[config.frobenius_estimator](config, target, x, t, cond, key)


def per_sample(target: Callable, t: jax.Array, cond) -> Callable:
    """One sample's map ``x (*event) -> (*event)`` from a batched target: ``t`` a scalar, ``cond``
    that sample's conditioning *with* a leading batch dimension of 1 (or ``None``)."""
    return lambda x: target(x[None], t[None], cond)[0]


def _eigen_batch(config, target, x, t, cond, key):
    """``relu(mu + margin)^2`` per sample, ``mu`` by Lanczos on each sample's map, vmapped."""
    def one(x_i, t_i, cond_i, k):
        cond_b = None if cond_i is None else jax.tree_util.tree_map(lambda c: c[None], cond_i)
        mu = estimators.max_sym_eigenvalue(per_sample(target, t_i, cond_b), x_i, k,
                                           num_iters=config.num_iters)
        return jnp.square(jax.nn.relu(mu + config.margin)), {"mu": mu}

    return jax.vmap(one)(x, t, cond, jax.random.split(key, x.shape[0]))


PENALTIES = {"eigen": _eigen_batch, "frobenius": _frobenius_batch}


def select_in_window(config: ContractionConfig, fraction: jax.Array, key: jax.Array):
    """A fixed-size random subsample of the in-window samples.

    ``fraction`` ``(batch,)`` is each sample's noise level as a fraction of the path, 0 at the
    clean end and 1 at pure noise (:meth:`cdp_jax.schedules.Schedule.time_fraction` for
    diffusion, ``1 - t`` for a flow); a sample is in the window when ``fraction <= window``.
    Returns ``(idx, mask, in_window)``: ``idx`` ``(n,)`` int indices into the batch with
    ``n = config.penalised_count(batch)``; ``mask`` ``(n,)`` bool, False where fewer than ``n``
    samples lie in the window (those slots point at out-of-window samples and must get weight 0);
    ``in_window`` ``(batch,)`` bool.
    """
    in_window = fraction <= config.window + 1e-6
    scores = jnp.where(in_window, jax.random.uniform(key, fraction.shape), -1.0)
    _, idx = jax.lax.top_k(scores, config.penalised_count(fraction.shape[0]))
    return idx, in_window[idx], in_window


def regulariser(config: ContractionConfig, target: Callable, x_t: jax.Array, t: jax.Array,
                cond, key: jax.Array, *, fraction: jax.Array, safe_t):
    """The weighted contraction penalty to add to an actor loss.

    Penalises ``n = config.penalised_count(batch)`` of the in-window samples of a batch already
    drawn by the actor's own loss (its noisy actions ``x_t`` and times ``t``):
    ``weight * mean_{selected, in window} penalty(J_target(x_t, t, cond))``. Out-of-window
    samples are never penalised; if fewer than ``n`` lie in the window the remaining slots get
    weight 0 and are evaluated at ``safe_t`` (a time where the target is finite whatever the
    sample), and with none in the window the result is exactly 0 with finite gradients.

    Args:
      config: settings; ``config.weight == 0`` returns ``(0.0, {})`` without any computation.
      target: the batched map ``(x, t, cond) -> y`` whose Jacobian in ``x`` is penalised.
      x_t: noisy samples ``(batch, *event)``; ``t``: ``(batch,)``; ``cond``: pytree with leading
        dimension ``batch`` or ``None``.
      key: PRNG key (subsample choice and estimator start vectors / probes).
      fraction: ``(batch,)`` noise levels in ``[0, 1]`` for the window (:func:`select_in_window`).
      safe_t: the time given to empty slots.

    Returns:
      ``(weighted_loss, metrics)`` with ``contraction/penalty`` (unweighted), ``contraction/loss``,
      ``contraction/num_in_window``, ``contraction/num_penalised``, ``contraction/num_dropped``
      (in-window samples left out for lack of static slots) and the estimator's extras as
      ``contraction/<name>_mean`` and ``_max`` over the penalised samples (0 if none): ``mu``
      for the eigen penalty, ``sym_jacobian_norm`` for the exact Frobenius one.
    """
    if config.weight == 0:
        return jnp.zeros((), x_t.dtype), {}
    key_select, key_est = jax.random.split(key)
    idx, mask, in_window = select_in_window(config, fraction, key_select)
    t_sel = jnp.where(mask, t[idx], jnp.asarray(safe_t, t.dtype))
    x_sel = x_t[idx]
    cond_sel = None if cond is None else jax.tree_util.tree_map(lambda c: c[idx], cond)
    values, extras = PENALTIES[config.penalty](config, target, x_sel, t_sel, cond_sel, key_est)
    weights = mask.astype(x_t.dtype)
    count = jnp.sum(weights)
    penalty = jnp.sum(weights * values) / jnp.maximum(count, 1.0)
    loss = config.weight * penalty
    metrics = {
        "contraction/penalty": penalty,
        "contraction/loss": loss,
        "contraction/num_in_window": jnp.sum(in_window.astype(jnp.int32)),
        "contraction/num_penalised": count,
        # In-window samples beyond the static count (0 unless the window held more than
        # num_penalised samples; then the mean is over a random subset of them).
        "contraction/num_dropped": jnp.sum(in_window.astype(x_t.dtype)) - count,
    }
    for name, value in extras.items():
        value = jax.lax.stop_gradient(value)
        metrics[f"contraction/{name}_mean"] = jnp.sum(weights * value) / jnp.maximum(count, 1.0)
        # 0 (not -inf) when nothing was penalised, so running averages of the log stay finite.
        metrics[f"contraction/{name}_max"] = jnp.where(
            count > 0, jnp.max(jnp.where(mask, value, -jnp.inf)), 0.0)
    return loss, metrics
