"""Pieces shared by the agents: optimisers, EMA, schedules, the behaviour-cloning loss; and, re-exported
from :mod:`cdp_jax.configs.fields` (where they live, without JAX), config validation and
config <-> JSON."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cdp_jax import contraction, diffusion, schedules
from cdp_jax.configs.fields import (  # noqa: F401 (re-exported: the agents' config helpers)
    apply_overrides,
    check_choice,
    check_finite_fields,
    check_positive,
    config_from_dict,
    config_to_dict,
    field_types,
    parse_field_value,
)

SCHEDULES = {"cosine": schedules.cosine, "linear": schedules.linear}


def make_schedule(kind: str, num_steps: int, discretization: str = "ddpm") -> schedules.Schedule:
    """A discrete VP schedule by name (``"cosine"`` or ``"linear"``) with ``num_steps`` steps and
    the given discretisation (``"ddpm"`` or ``"cleandiffuser"``, see :mod:`cdp_jax.schedules`)."""
    check_choice("schedule", kind, tuple(SCHEDULES))
    check_choice("schedule_discretization", discretization, schedules.DISCRETIZATIONS)
    return SCHEDULES[kind](num_steps, discretization=discretization)


def make_optimizer(lr: float, decay_steps: int | None, weight_decay: float,
                   max_grad_norm: float | None) -> optax.GradientTransformation:
    """Adam (``weight_decay = 0``) or AdamW, cosine-decayed over ``decay_steps`` if given."""
    schedule = lr if not decay_steps else optax.cosine_decay_schedule(lr, decay_steps)
    opt = optax.adamw(schedule, weight_decay=weight_decay) if weight_decay else optax.adam(schedule)
    if max_grad_norm:
        opt = optax.chain(optax.clip_by_global_norm(max_grad_norm), opt)
    return opt


def optimiser_step_with_ema(state, grads, optimizer, config):
    """One optimiser step of ``state.params`` and its EMA (a copy while ``state.step <
    config.ema_start``, ``config.ema_decay`` after), step + 1: the behaviour-cloning agents'
    update after their loss (``state`` has ``params``, ``ema_params``, ``opt_state``, ``step``)."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = ema_update(state.ema_params, params, config.ema_decay)
    ema = jax.tree.map(lambda p, e: jnp.where(state.step < config.ema_start, p, e), params, ema)
    return state.replace(params=params, ema_params=ema, opt_state=opt_state, step=state.step + 1)


def ema_update(ema, new, decay: float):
    """``decay * ema + (1 - decay) * new`` leaf by leaf."""
    return jax.tree.map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)


def bc_loss_from_draws(config, schedule, actor, params, batch: dict, draws: dict):
    """Diffusion behaviour cloning: ``L_bc + L_contraction`` on the same noisy actions.

    ``config`` has ``prediction`` and ``contraction`` (DBC's and IDQL's actor); ``actor`` is the
    denoiser module, applied as ``actor.apply(params, x, t, obs)``; ``draws`` holds the denoising
    draw ``t`` ``(B,)``, ``eps`` (the shape of the actions) and ``contraction_key``. Returns
    ``(loss, metrics)``; the penalty is exactly 0, and not computed, with weight 0.
    """
    denoiser = lambda x, t, c: actor.apply(params, x, t, c)
    obs, actions = batch["observations"], batch["actions"]
    bc_loss, aux = diffusion.denoising_loss_from_draws(
        denoiser, schedule, actions, obs, draws["t"], draws["eps"].astype(actions.dtype),
        prediction=config.prediction)
    reg, reg_metrics = contraction.contraction_regulariser(
        config.contraction, denoiser, schedule, aux["x_t"], aux["t"], obs,
        draws["contraction_key"], prediction=config.prediction)
    loss = bc_loss + reg
    return loss, {"actor/loss": loss, "actor/bc_loss": bc_loss, "actor/contraction_loss": reg,
                  **reg_metrics}


def bc_loss_with_contraction(config, actor, params, batch: dict, key: jax.Array):
    """:func:`bc_loss_from_draws` with the draws made from ``key`` (``config`` also has
    ``schedule`` and ``diffusion_steps``: the default discretisation)."""
    schedule = make_schedule(config.schedule, config.diffusion_steps)
    key_bc, key_reg = jax.random.split(key)
    key_t, key_eps = jax.random.split(key_bc)  # the split denoising_loss makes
    actions = batch["actions"]
    draws = {"t": diffusion.sample_time(schedule, key_t, actions.shape[0]),
             "eps": jax.random.normal(key_eps, actions.shape, actions.dtype),
             "contraction_key": key_reg}
    return bc_loss_from_draws(config, schedule, actor, params, batch, draws)
