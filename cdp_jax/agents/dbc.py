"""Diffusion behaviour cloning (DBC / Diffusion Policy, Chi et al. 2023): imitation learning.

The actor denoises an action chunk ``(action_horizon, action_dim)`` conditioned on the last
``obs_horizon`` observations; at run time the first ``n_action`` actions of each sampled chunk are
executed before sampling again (receding horizon). The loss is

    L = L_denoise(x0 | eps | v prediction) + L_contraction,

``L_contraction`` being :func:`cdp_jax.contraction.contraction_regulariser` on the same noisy
chunks (exactly 0, and not computed, with weight 0: plain DBC). The EMA of the parameters (every
step, as the official IL code) is the policy that acts. :func:`sample_draws` makes every random
draw of an update and :func:`update_with_draws` consumes them (the parity tests feed the official
code's draws). ``experiments/train.py --preset paper-il`` selects the official IL pipeline
(:mod:`cdp_jax.paper`).

Shapes: ``observations (B, obs_horizon, obs_dim)``, ``actions (B, action_horizon, action_dim)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import struct

from cdp_jax import chunk_networks, diffusion, networks, samplers, schedules
from cdp_jax.agents.common import (
    bc_loss_from_draws,
    make_optimizer,
    make_schedule,
    optimiser_step_with_ema,
)
from cdp_jax.configs.dbc import DBCConfig, default_config  # noqa: F401 (re-exported)


class DBCState(struct.PyTreeNode):
    """The whole agent state; ``config`` and dimensions are static."""

    params: dict
    ema_params: dict
    opt_state: optax.OptState
    step: jax.Array  # int32 scalar
    config: DBCConfig = struct.field(pytree_node=False)
    obs_dim: int = struct.field(pytree_node=False)
    action_dim: int = struct.field(pytree_node=False)


# MLP-style denoisers (flattened chunk) and chunk backbones (temporal UNet, DiT) by name.
ACTOR_NETWORKS = (*networks.ACTORS, *chunk_networks.CHUNK_ACTORS)


def _actor(config: DBCConfig):
    if config.actor_network in chunk_networks.CHUNK_ACTORS:
        return chunk_networks.make_chunk_actor(config.actor_network, config.hidden_dim, config.depth,
                                               config.time_dim, config.activation)
    return networks.make_actor(config.actor_network, config.hidden_dim, config.depth,
                               config.time_dim, config.activation, config.expansion,
                               time_embedding=config.time_embedding, init=config.param_init)


def _schedule(config: DBCConfig) -> schedules.Schedule:
    return make_schedule(config.schedule, config.diffusion_steps, config.schedule_discretization)


def _optimizer(config: DBCConfig):
    return make_optimizer(config.lr, config.lr_decay_steps, config.weight_decay,
                          config.max_grad_norm)


# Jitted: flax/optax initialisation op by op costs seconds of dispatch on CPU.
@functools.partial(jax.jit, static_argnames=("config", "obs_dim", "action_dim"))
def init(key: jax.Array, config: DBCConfig, obs_dim: int, action_dim: int) -> DBCState:
    """Fresh parameters, optimiser state and step 0."""
    config.validate()
    x = jnp.zeros((1, config.action_horizon, action_dim))
    obs = jnp.zeros((1, config.obs_horizon, obs_dim))
    params = _actor(config).init(key, x, jnp.zeros((1,), jnp.int32), obs)
    return DBCState(params=params, ema_params=params, opt_state=_optimizer(config).init(params),
                    step=jnp.zeros((), jnp.int32), config=config, obs_dim=obs_dim,
                    action_dim=action_dim)


def sample_draws(key: jax.Array, config: DBCConfig, batch_size: int, action_dim: int) -> dict:
    """Every random draw of one update: ``t`` ``(B,)``, ``eps`` ``(B, action_horizon, action_dim)``
    (the denoising draw, which the penalty reuses) and ``contraction_key``."""
    key_t, key_eps, key_reg = jax.random.split(key, 3)
    return {"t": diffusion.sample_time(_schedule(config), key_t, batch_size),
            "eps": jax.random.normal(key_eps, (batch_size, config.action_horizon, action_dim)),
            "contraction_key": key_reg}


def loss_fn(params, state: DBCState, batch: dict, draws: dict):
    """Denoising loss plus contraction penalty on the draws of :func:`sample_draws`. Returns
    ``(loss, metrics)``."""
    config = state.config
    return bc_loss_from_draws(config, _schedule(config), _actor(config), params, batch, draws)


def update(state: DBCState, batch: dict, key: jax.Array) -> tuple[DBCState, dict]:
    """One AdamW step and an EMA update (a copy before ``ema_start``)."""
    draws = sample_draws(key, state.config, batch["actions"].shape[0], state.action_dim)
    return update_with_draws(state, batch, draws)


def update_with_draws(state: DBCState, batch: dict, draws: dict) -> tuple[DBCState, dict]:
    """:func:`update` with its random draws given."""
    config = state.config
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, state, batch, draws)
    return optimiser_step_with_ema(state, grads, _optimizer(config), config), metrics


def act(state: DBCState, obs: jax.Array, key: jax.Array) -> jax.Array:
    """Action chunks ``(B, action_horizon, action_dim)`` for ``obs (B, obs_horizon, obs_dim)``.

    The caller executes the first ``config.n_action`` of each chunk (see
    :func:`cdp_jax.evaluation.evaluate`).
    """
    config = state.config
    actor = _actor(config)
    denoiser = lambda x, t, c: actor.apply(state.ema_params, x, t, c)
    shape = (obs.shape[0], config.action_horizon, state.action_dim)
    a = samplers.sample(denoiser, _schedule(config), key, shape, cond=obs, method=config.sampler,
                        steps=config.sampler_steps, spacing=config.sampler_spacing,
                        prediction=config.prediction,
                        clip_x0=(-1.0, 1.0) if config.sampler_clip_x0 else None,
                        temperature=config.noise_temperature)
    return jnp.clip(a, -1.0, 1.0)


# ----------------------------------------------------------------------------- configuration


