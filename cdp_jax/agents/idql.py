"""IDQL (Hansen-Estruch et al. 2023): an IQL critic plus a diffusion behaviour policy, with actions
selected by resampling ``N`` candidates by the critic. Offline RL.

Losses (IQL, Kostrikov et al. 2022), with ``Q'`` the Polyak target critic:

    L_V = E[ |tau - 1(u < 0)| u^2 ],  u = min_i Q'_i(s, a) - V(s)          (expectile tau)
    L_Q = sum_i E[ (r + gamma (1 - done) V(s') - Q_i(s, a))^2 ]
    L_actor = L_denoise + L_contraction                                  (pure behaviour cloning)

The actor never sees the critic during training; at run time ``num_candidates`` actions are sampled
per observation and one is drawn from ``softmax(candidate_temperature * min_i Q'_i(s, a))``
(``candidate_temperature = inf`` would be IDQL's greedy choice). The contraction regulariser
(:func:`cdp_jax.contraction.contraction_regulariser`, exactly 0 with weight 0) is added to the
actor loss as in the other agents.

Shapes: observations ``(B, obs_dim)``, actions ``(B, action_dim)`` in ``[-1, 1]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import struct

from cdp_jax import networks, samplers
from cdp_jax.agents.common import (
    bc_loss_with_contraction,
    ema_update,
    make_optimizer,
    make_schedule,
)
from cdp_jax.configs.idql import IDQLConfig, default_config  # noqa: F401 (re-exported)


class IDQLState(struct.PyTreeNode):
    """The whole agent state; ``config`` and the dimensions are static."""

    actor_params: dict
    ema_params: dict
    critic_params: dict
    target_critic_params: dict
    value_params: dict
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    value_opt_state: optax.OptState
    step: jax.Array
    config: IDQLConfig = struct.field(pytree_node=False)
    obs_dim: int = struct.field(pytree_node=False)
    action_dim: int = struct.field(pytree_node=False)


def _actor(config):
    return networks.make_actor(config.actor_network, config.actor_hidden_dim, config.actor_depth,
                               config.time_dim)


def _critic(config):
    return networks.DoubleCritic(hidden_dims=(config.critic_hidden_dim,) * config.critic_depth)


def _value(config):
    return networks.ValueNetwork(hidden_dims=(config.critic_hidden_dim,) * config.critic_depth)


def _optimizers(config):
    actor = make_optimizer(config.actor_lr, config.lr_decay_steps, config.weight_decay, None)
    critic = make_optimizer(config.critic_lr, config.lr_decay_steps, 0.0, None)
    value = make_optimizer(config.critic_lr, config.lr_decay_steps, 0.0, None)
    return actor, critic, value


@functools.partial(jax.jit, static_argnames=("config", "obs_dim", "action_dim"))
def init(key: jax.Array, config: IDQLConfig, obs_dim: int, action_dim: int) -> IDQLState:
    """Fresh parameters, optimiser states and step 0."""
    config.validate()
    k_actor, k_critic, k_value = jax.random.split(key, 3)
    obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
    actor_params = _actor(config).init(k_actor, act, jnp.zeros((1,), jnp.int32), obs)
    critic_params = _critic(config).init(k_critic, obs, act)
    value_params = _value(config).init(k_value, obs)
    actor_opt, critic_opt, value_opt = _optimizers(config)
    return IDQLState(
        actor_params=actor_params, ema_params=actor_params, critic_params=critic_params,
        target_critic_params=critic_params, value_params=value_params,
        actor_opt_state=actor_opt.init(actor_params), critic_opt_state=critic_opt.init(critic_params),
        value_opt_state=value_opt.init(value_params), step=jnp.zeros((), jnp.int32), config=config,
        obs_dim=obs_dim, action_dim=action_dim)


def value_loss(value_params, state: IDQLState, batch: dict):
    """Expectile regression of ``V(s)`` on ``min_i Q'_i(s, a)``. Returns ``(loss, metrics)``."""
    config = state.config
    q = _critic(config).apply(state.target_critic_params, batch["observations"],
                              batch["actions"]).min(axis=0)
    v = _value(config).apply(value_params, batch["observations"])
    u = q - v
    weight = jnp.where(u < 0, 1.0 - config.expectile, config.expectile)
    loss = jnp.mean(weight * jnp.square(u))
    return loss, {"value/loss": loss, "value/v_mean": v.mean(), "value/advantage_mean": u.mean()}


def critic_loss(critic_params, state: IDQLState, value_params, batch: dict):
    """TD regression of both Q heads on ``r + gamma (1 - done) V(s')``."""
    config = state.config
    next_v = _value(config).apply(value_params, batch["next_observations"])
    target = batch["rewards"] + config.discount * (1.0 - batch["terminals"]) * next_v
    target = jax.lax.stop_gradient(target)
    q = _critic(config).apply(critic_params, batch["observations"], batch["actions"])
    loss = jnp.mean(jnp.square(q - target[None, :])) * 2.0
    return loss, {"critic/loss": loss, "critic/q_mean": q.mean(), "critic/q_max": q.max(),
                  "critic/q_min": q.min(), "critic/target_mean": target.mean()}


def actor_loss(actor_params, state: IDQLState, batch: dict, key: jax.Array):
    """Denoising loss plus contraction penalty (behaviour cloning)."""
    return bc_loss_with_contraction(state.config, _actor(state.config), actor_params, batch, key)


def update(state: IDQLState, batch: dict, key: jax.Array) -> tuple[IDQLState, dict]:
    """One step on V, then Q (on the new V), then the actor; Polyak target and actor EMA."""
    config = state.config
    actor_opt, critic_opt, value_opt = _optimizers(config)

    grads, v_metrics = jax.grad(value_loss, has_aux=True)(state.value_params, state, batch)
    updates, value_opt_state = value_opt.update(grads, state.value_opt_state, state.value_params)
    value_params = optax.apply_updates(state.value_params, updates)

    grads, q_metrics = jax.grad(critic_loss, has_aux=True)(state.critic_params, state,
                                                           value_params, batch)
    updates, critic_opt_state = critic_opt.update(grads, state.critic_opt_state,
                                                  state.critic_params)
    critic_params = optax.apply_updates(state.critic_params, updates)

    grads, a_metrics = jax.grad(actor_loss, has_aux=True)(state.actor_params, state, batch, key)
    updates, actor_opt_state = actor_opt.update(grads, state.actor_opt_state, state.actor_params)
    actor_params = optax.apply_updates(state.actor_params, updates)

    target = ema_update(state.target_critic_params, critic_params, 1.0 - config.tau)
    ema = ema_update(state.ema_params, actor_params, config.ema_decay)
    ema = jax.tree.map(lambda p, e: jnp.where(state.step < config.ema_start, p, e),
                       actor_params, ema)
    new_state = state.replace(
        actor_params=actor_params, ema_params=ema, critic_params=critic_params,
        target_critic_params=target, value_params=value_params, actor_opt_state=actor_opt_state,
        critic_opt_state=critic_opt_state, value_opt_state=value_opt_state, step=state.step + 1)
    return new_state, {**v_metrics, **q_metrics, **a_metrics}


def act(state: IDQLState, obs: jax.Array, key: jax.Array) -> jax.Array:
    """``(B, obs_dim) -> (B, action_dim)``: ``num_candidates`` EMA-actor samples per observation,
    one drawn from ``softmax(candidate_temperature * min_i Q'_i)``."""
    config = state.config
    n, batch_size = config.num_candidates, obs.shape[0]
    key_sample, key_pick = jax.random.split(key)
    schedule = make_schedule(config.schedule, config.diffusion_steps)
    actor = _actor(config)
    denoiser = lambda x, t, c: actor.apply(state.ema_params, x, t, c)
    obs_rep = jnp.repeat(obs, n, axis=0)
    actions = samplers.sample(denoiser, schedule, key_sample, (batch_size * n, state.action_dim),
                              cond=obs_rep, method=config.sampler, steps=config.sampler_steps,
                              prediction=config.prediction, clip_x0=(-1.0, 1.0),
                              temperature=config.noise_temperature)
    actions = jnp.clip(actions, -1.0, 1.0)
    if n == 1:
        return actions
    q = _critic(config).apply(state.target_critic_params, obs_rep, actions).min(axis=0)
    idx = jax.random.categorical(key_pick, config.candidate_temperature * q.reshape(batch_size, n),
                                 axis=-1)
    return actions.reshape(batch_size, n, state.action_dim)[jnp.arange(batch_size), idx]


# ----------------------------------------------------------------------------- configuration


