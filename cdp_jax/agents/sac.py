"""Soft Actor-Critic (Haarnoja et al. 2018, with learned temperature): the behaviour-policy agent.

The online agent that makes the locomotion datasets (D4RL's recipe: SAC policies at "medium" and
"expert" level). Losses, for a batch of transitions ``(s, a, r, s', d)``:

    y        = r + gamma (1 - d) [min_i Q'_i(s', a') - alpha log pi(a' | s')],   a' ~ pi(. | s')
    L_critic = sum_i mean (Q_i(s, a) - y)^2
    L_actor  = mean [alpha log pi(a~ | s) - min_i Q_i(s, a~)],                    a~ ~ pi(. | s)
    L_alpha  = -mean [log alpha (log pi(a~ | s) + H_target)]                      (H_target = -dim A)

``pi`` is a tanh-squashed Gaussian on ``[-1, 1]^action_dim`` (the train loop rescales to the env's
action box); ``d`` is 1 only for true terminations (time-limit truncations bootstrap). Targets are
Polyak-averaged every step.

Conventions as the other agents: a frozen :class:`SACConfig` (defaults at the bottom), pure
:func:`init`, :func:`update` and :func:`act` over a :class:`SACState` pytree, and :func:`update_many`
running ``K`` updates in one ``lax.scan``; :func:`explore` samples the actions of all envs of a
vector env in one call. The host loop that trains the agent online (envs, replay buffer,
evaluation, snapshots) is :mod:`cdp_jax.agents.sac_train`. Shapes: observations
``(B, obs_dim)``, actions ``(B, action_dim)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from cdp_jax.agents.common import ema_update, make_optimizer
from cdp_jax.configs.sac import SACConfig, default_config  # noqa: F401 (re-exported)

_LOG2 = float(np.log(2.0))


class TanhGaussianActor(nn.Module):
    """``obs (B, obs_dim) -> (mean (B, A), log_std (B, A))`` of the pre-tanh Gaussian (ReLU MLP)."""

    action_dim: int
    hidden_dims: Sequence[int] = (256, 256)
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = obs
        for width in self.hidden_dims:
            h = nn.relu(nn.Dense(width)(h))
        mean = nn.Dense(self.action_dim)(h)
        # Smooth squashing of log_std into [min, max] (no dead gradient as with clipping).
        raw = jnp.tanh(nn.Dense(self.action_dim)(h))
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (raw + 1.0)
        return mean, log_std


class _QHead(nn.Module):
    hidden_dims: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden_dims:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(1)(x)[:, 0]


class TwinQ(nn.Module):
    """Two independent ReLU MLP critics: ``(obs (B, O), action (B, A)) -> (2, B)``."""

    hidden_dims: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        twin = nn.vmap(_QHead, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=None, out_axes=0, axis_size=2)
        return twin(tuple(self.hidden_dims))(jnp.concatenate([obs, action], axis=-1))


class SACState(struct.PyTreeNode):
    """The whole agent state. ``config`` and the dimensions are static (not pytree leaves)."""

    actor_params: dict
    critic_params: dict
    target_critic_params: dict
    log_alpha: jax.Array  # float32 scalar: log of the entropy temperature
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    alpha_opt_state: optax.OptState
    step: jax.Array  # int32 scalar: gradient steps taken
    config: SACConfig = struct.field(pytree_node=False)
    obs_dim: int = struct.field(pytree_node=False)
    action_dim: int = struct.field(pytree_node=False)


def _actor(config: SACConfig, action_dim: int) -> TanhGaussianActor:
    return TanhGaussianActor(action_dim, tuple(config.hidden_dims), config.log_std_min,
                             config.log_std_max)


def _optimizers(config: SACConfig):
    return (make_optimizer(config.actor_lr, None, 0.0, None),
            make_optimizer(config.critic_lr, None, 0.0, None),
            make_optimizer(config.alpha_lr, None, 0.0, None))


def target_entropy(config: SACConfig, action_dim: int) -> float:
    return -float(action_dim) if config.target_entropy is None else config.target_entropy


def init(key: jax.Array, config: SACConfig, obs_dim: int, action_dim: int) -> SACState:
    """Fresh parameters, optimiser states, ``log_alpha = log(init_temperature)`` and step 0."""
    config.validate()
    key_actor, key_critic = jax.random.split(key)
    obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
    actor_params = _actor(config, action_dim).init(key_actor, obs)
    critic_params = TwinQ(tuple(config.hidden_dims)).init(key_critic, obs, act)
    log_alpha = jnp.asarray(np.log(config.init_temperature), jnp.float32)
    actor_opt, critic_opt, alpha_opt = _optimizers(config)
    return SACState(
        actor_params=actor_params, critic_params=critic_params,
        target_critic_params=critic_params, log_alpha=log_alpha,
        actor_opt_state=actor_opt.init(actor_params), critic_opt_state=critic_opt.init(critic_params),
        alpha_opt_state=alpha_opt.init(log_alpha), step=jnp.zeros((), jnp.int32), config=config,
        obs_dim=obs_dim, action_dim=action_dim)


def sample_action(config: SACConfig, actor_params, obs: jax.Array, key: jax.Array,
                  action_dim: int) -> tuple[jax.Array, jax.Array]:
    """``a = tanh(u)``, ``u ~ N(mean, std^2)``; returns ``(a (B, A), log pi(a | s) (B,))``.

    ``log pi(a) = log N(u) - sum_k log(1 - tanh(u_k)^2)``, with the stable form
    ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2 u))``.
    """
    mean, log_std = _actor(config, action_dim).apply(actor_params, obs)
    noise = jax.random.normal(key, mean.shape)
    u = mean + jnp.exp(log_std) * noise
    log_normal = -0.5 * jnp.square(noise) - log_std - 0.5 * np.log(2.0 * np.pi)
    log_det = 2.0 * (_LOG2 - u - jax.nn.softplus(-2.0 * u))
    return jnp.tanh(u), jnp.sum(log_normal - log_det, axis=-1)


def critic_loss(critic_params, state: SACState, batch: dict, key: jax.Array):
    """Soft TD regression of both critics. Returns ``(loss, metrics)``."""
    config, critic = state.config, TwinQ(tuple(state.config.hidden_dims))
    next_act, next_logp = sample_action(config, state.actor_params, batch["next_observations"],
                                        key, state.action_dim)
    next_q = critic.apply(state.target_critic_params, batch["next_observations"], next_act)
    alpha = jnp.exp(state.log_alpha)
    soft_v = next_q.min(axis=0) - alpha * next_logp
    target = batch["rewards"] + config.discount * (1.0 - batch["terminals"]) * soft_v
    target = jax.lax.stop_gradient(target)
    q = critic.apply(critic_params, batch["observations"], batch["actions"])  # (2, B)
    loss = jnp.mean(jnp.square(q - target[None, :])) * 2.0
    return loss, {"critic/loss": loss, "critic/q_mean": q.mean(), "critic/target_mean": target.mean()}


def actor_loss(actor_params, state: SACState, critic_params, batch: dict, key: jax.Array):
    """``mean(alpha log pi - min_i Q_i)``. Returns ``(loss, metrics)``; ``metrics["log_prob"]`` is
    used by the temperature loss."""
    config = state.config
    actions, logp = sample_action(config, actor_params, batch["observations"], key,
                                  state.action_dim)
    q = TwinQ(tuple(config.hidden_dims)).apply(critic_params, batch["observations"], actions)
    alpha = jnp.exp(state.log_alpha)
    loss = jnp.mean(alpha * logp - q.min(axis=0))
    return loss, {"actor/loss": loss, "actor/entropy": -logp.mean(), "log_prob": logp}


def temperature_loss(log_alpha, log_prob: jax.Array, entropy_target: float):
    """``-mean(log_alpha (log pi + H_target))`` with ``log pi`` held fixed."""
    loss = -jnp.mean(log_alpha * jax.lax.stop_gradient(log_prob + entropy_target))
    return loss, {"alpha/loss": loss, "alpha/value": jnp.exp(log_alpha)}


def update(state: SACState, batch: dict, key: jax.Array) -> tuple[SACState, dict]:
    """One step on the critics, then the actor, then the temperature, then Polyak targets.

    ``batch``: ``observations (B, O)``, ``actions (B, A)`` in ``[-1, 1]``, ``rewards (B,)``,
    ``next_observations (B, O)``, ``terminals (B,)`` (1.0 where the MDP terminated).
    """
    config = state.config
    actor_opt, critic_opt, alpha_opt = _optimizers(config)
    key_critic, key_actor = jax.random.split(key)

    grads, critic_metrics = jax.grad(critic_loss, has_aux=True)(
        state.critic_params, state, batch, key_critic)
    updates, critic_opt_state = critic_opt.update(grads, state.critic_opt_state)
    critic_params = optax.apply_updates(state.critic_params, updates)

    grads, actor_metrics = jax.grad(actor_loss, has_aux=True)(
        state.actor_params, state, critic_params, batch, key_actor)
    updates, actor_opt_state = actor_opt.update(grads, state.actor_opt_state)
    actor_params = optax.apply_updates(state.actor_params, updates)

    log_prob = actor_metrics.pop("log_prob")
    entropy_target = target_entropy(config, state.action_dim)
    grad, alpha_metrics = jax.grad(temperature_loss, has_aux=True)(
        state.log_alpha, log_prob, entropy_target)
    updates, alpha_opt_state = alpha_opt.update(grad, state.alpha_opt_state)
    log_alpha = optax.apply_updates(state.log_alpha, updates)

    target = ema_update(state.target_critic_params, critic_params, 1.0 - config.tau)
    new_state = state.replace(
        actor_params=actor_params, critic_params=critic_params, target_critic_params=target,
        log_alpha=log_alpha, actor_opt_state=actor_opt_state, critic_opt_state=critic_opt_state,
        alpha_opt_state=alpha_opt_state, step=state.step + 1)
    return new_state, {**critic_metrics, **actor_metrics, **alpha_metrics}


def update_many(state: SACState, batches: dict, key: jax.Array) -> tuple[SACState, dict]:
    """``K`` updates in one ``lax.scan``; ``batches`` leaves are ``(K, B, ...)``; metrics ``(K,)``."""
    num = jax.tree.leaves(batches)[0].shape[0]

    def step(carry, inputs):
        batch, k = inputs
        return update(carry, batch, k)

    return jax.lax.scan(step, state, (batches, jax.random.split(key, num)))


def act(state: SACState, obs: jax.Array, key: jax.Array, deterministic: bool = False):
    """Actions ``(B, A)`` in ``[-1, 1]``: sampled, or ``tanh(mean)`` when ``deterministic``."""
    if deterministic:
        mean, _ = _actor(state.config, state.action_dim).apply(state.actor_params, obs)
        return jnp.tanh(mean)
    return sample_action(state.config, state.actor_params, obs, key, state.action_dim)[0]


def explore(actor_params, obs: jax.Array, key: jax.Array, *, config: SACConfig,
            action_dim: int) -> tuple[jax.Array, jax.Array]:
    """Sampled actions ``(num_envs, A)`` in ``[-1, 1]`` for all envs of a vector env, and the key
    for the next call: ``key, k = split(key)``, actions from ``k``, as :func:`act` with that ``k``.

    The collection loop's one call per vector step: the split happens inside it (no host-side key
    split per step), and it takes only the actor's parameters (a short pytree to hand over).
    """
    key, sample_key = jax.random.split(key)
    return sample_action(config, actor_params, obs, sample_key, action_dim)[0], key


# ----------------------------------------------------------------------------- configuration


def updates_per_call(config: SACConfig) -> int:
    """Gradient steps per jitted :func:`update_many` call in :func:`sac_train.train`: ``num_envs *
    train_every * updates_per_step`` (a whole number, checked by :meth:`SACConfig.validate`)."""
    return int(round(config.num_envs * config.train_every * config.updates_per_step))
