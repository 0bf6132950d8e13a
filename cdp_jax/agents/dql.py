"""Diffusion-QL (Wang et al. 2023) with EDP's action approximation (Kang et al. 2023): offline RL.

The CDP offline-RL agent: a diffusion actor trained with

    L_actor = L_bc + eta * L_q + L_contraction,
    L_q = -Q_i(s, a_hat).mean() / stop_grad(|Q_j(s, a_hat)|.mean()),

(i, j) a random order of the two critics, where ``L_bc`` is the denoising loss (x0-prediction,
discrete cosine schedule, T = 50) and ``a_hat`` is either EDP's one-step estimate
``x0_hat(a_t, t, s)`` (``action_approx=True``, cheap, what the official code does) or a full
reverse chain with gradients (``False``, Diffusion-QL). The EDP estimate uses the BC draw
``(t, eps)`` (``edp_draw="shared"``) or a second, independent one (``"separate"``, the official
code), clipped to ``[-1, 1]`` or not (``edp_clip``). ``L_contraction`` is
:func:`cdp_jax.contraction.contraction_regulariser` on the EDP draw's ``(a_t, t)``; with weight 0
it is exactly 0 and costs nothing, so the agent is then vanilla EDP / Diffusion-QL.

The twin critic regresses on ``y = r + gamma (1 - done) Q'(s', a')`` with ``a'`` sampled by the EMA
actor (DPM-Solver++ 2M, 15 steps by default). With ``td_samples = n > 1`` (AntMaze) ``n`` actions
are drawn per state and ``Q'`` is ``max_samples min_heads`` (``td_target_order="min_then_max"``) or
the official ``min_heads max_samples`` (``"max_then_min"``). Targets are updated every
``target_every`` steps as ``target <- (1 - tau) target + tau online`` (``tau = 0.995`` is
CleanDiffuser's formula, which keeps the target about ``target_every`` steps behind). The EMA
actor is updated every ``ema_every`` steps from ``ema_start`` on; before that it is a copy of the
actor (``ema_warmup="copy"``) or stays at the initial weights (``"initial"``, the official code).

Every random draw of an update is made by :func:`sample_draws` and consumed by
:func:`update_with_draws`, so a test can feed the official code's own draws (tests/test_parity.py).

Shapes: observations ``(B, obs_dim)``, actions ``(B, action_dim)`` in ``[-1, 1]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import struct

from cdp_jax import contraction, diffusion, networks, samplers, schedules
from cdp_jax.agents.common import (
    ema_update,
    make_optimizer,
    make_schedule,
)
from cdp_jax.configs.dql import (  # noqa: F401 (re-exported)
    EDP_DRAWS,
    EMA_WARMUPS,
    TD_TARGET_ORDERS,
    DQLConfig,
    default_config,
)


class DQLState(struct.PyTreeNode):
    """The whole agent state. ``config`` and the dimensions are static (not pytree leaves)."""

    actor_params: dict
    ema_params: dict
    critic_params: dict
    target_critic_params: dict
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    step: jax.Array  # int32 scalar: gradient steps taken
    config: DQLConfig = struct.field(pytree_node=False)
    obs_dim: int = struct.field(pytree_node=False)
    action_dim: int = struct.field(pytree_node=False)


def _actor(config: DQLConfig):
    return networks.make_actor(config.actor_network, config.actor_hidden_dim, config.actor_depth,
                               config.time_dim, time_embedding=config.time_embedding,
                               init=config.param_init)


def _critic(config: DQLConfig):
    return networks.DoubleCritic(hidden_dims=(config.critic_hidden_dim,) * config.critic_depth,
                                 layer_norm_eps=config.critic_layer_norm_eps,
                                 param_init=config.param_init)


def _schedule(config: DQLConfig) -> schedules.Schedule:
    return make_schedule(config.schedule, config.diffusion_steps, config.schedule_discretization)


# Jitted: flax/optax initialisation op by op costs seconds of dispatch on CPU.
@functools.partial(jax.jit, static_argnames=("config", "obs_dim", "action_dim"))
def init(key: jax.Array, config: DQLConfig, obs_dim: int, action_dim: int) -> DQLState:
    """Fresh parameters, optimiser states and step 0 for ``obs_dim``-d observations."""
    config.validate()
    key_actor, key_critic = jax.random.split(key)
    obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
    actor_params = _actor(config).init(key_actor, act, jnp.zeros((1,), jnp.int32), obs)
    critic_params = _critic(config).init(key_critic, obs, act)
    actor_opt, critic_opt = _optimizers(config)
    return DQLState(
        actor_params=actor_params, ema_params=actor_params, critic_params=critic_params,
        target_critic_params=critic_params, actor_opt_state=actor_opt.init(actor_params),
        critic_opt_state=critic_opt.init(critic_params), step=jnp.zeros((), jnp.int32),
        config=config, obs_dim=obs_dim, action_dim=action_dim)


def _optimizers(config: DQLConfig):
    actor = make_optimizer(config.actor_lr, config.lr_decay_steps, config.weight_decay,
                           config.max_grad_norm)
    critic = make_optimizer(config.critic_lr, config.lr_decay_steps, 0.0, config.max_grad_norm)
    return actor, critic


def sample_actions(config: DQLConfig, actor_params, obs: jax.Array, key: jax.Array,
                   action_dim: int, *, temperature: float = 1.0,
                   noise: jax.Array | None = None) -> jax.Array:
    """Actions ``(B, action_dim)`` from the diffusion actor by the configured sampler, clipped.

    ``noise`` (``(B, action_dim)``, standard normal) fixes the initial state
    ``x_T = temperature * noise``; otherwise it is drawn from ``key``.
    """
    schedule = _schedule(config)
    actor = _actor(config)
    # A sampler evaluates the whole batch at one noise level (samplers._make_model broadcasts a
    # scalar t): passing it as t (1,) lets the actor run its time path once, not on B equal rows.
    denoiser = lambda x, t, c: actor.apply(actor_params, x, t[:1], c)
    x_init = None if noise is None else temperature * noise
    a = samplers.sample(denoiser, schedule, key, (obs.shape[0], action_dim), cond=obs,
                        method=config.sampler, steps=config.sampler_steps,
                        spacing=config.sampler_spacing, prediction=config.prediction,
                        clip_x0=(-1.0, 1.0), temperature=temperature, x_init=x_init)
    return jnp.clip(a, -1.0, 1.0)


def sample_draws(key: jax.Array, config: DQLConfig, batch_size: int, action_dim: int) -> dict:
    """Every random draw of one :func:`update`, as a dict of arrays.

    ``next_noise`` ``(B * td_samples, action_dim)``: the TD-target sampler's initial noise (rows
    sample-major per state); ``bc_t`` ``(B,)`` and ``bc_eps`` ``(B, action_dim)``: the denoising
    loss's levels and noise; ``edp_t``, ``edp_eps`` (``edp_draw="separate"`` only): the EDP
    estimate's own draw; ``q_index``: which critic head carries the Q-loss gradient (0 or 1);
    ``chain_key`` (Diffusion-QL chain, ``action_approx=False``) and ``contraction_key``
    (subsample choice, estimator start vectors and probes).
    """
    schedule = _schedule(config)
    keys = jax.random.split(key, 8)
    shape = (batch_size, action_dim)
    draws = {
        "next_noise": jax.random.normal(keys[0], (batch_size * config.td_samples, action_dim)),
        "bc_t": diffusion.sample_time(schedule, keys[1], batch_size),
        "bc_eps": jax.random.normal(keys[2], shape),
        "q_index": jax.random.bernoulli(keys[3]).astype(jnp.int32),
        "chain_key": keys[4],
        "contraction_key": keys[5],
    }
    if config.edp_draw == "separate":
        draws["edp_t"] = diffusion.sample_time(schedule, keys[6], batch_size)
        draws["edp_eps"] = jax.random.normal(keys[7], shape)
    return draws


def critic_loss(critic_params, state: DQLState, batch: dict, next_noise: jax.Array):
    """Twin-Q TD regression; ``next_noise`` seeds the EMA actor's next actions. Returns
    ``(loss, metrics)``."""
    config, critic = state.config, _critic(state.config)
    next_obs = batch["next_observations"]
    n, batch_size = config.td_samples, next_obs.shape[0]
    next_obs_rep = jnp.repeat(next_obs, n, axis=0)  # (B * n, obs_dim), sample-major per row
    next_act = sample_actions(config, state.ema_params, next_obs_rep, None, state.action_dim,
                              noise=next_noise.astype(next_obs.dtype))
    next_q = critic.apply(state.target_critic_params, next_obs_rep, next_act)  # (2, B * n)
    next_q = reduce_next_q(next_q.reshape(2, batch_size, n), config.td_target_order)
    target = batch["rewards"] + config.discount * (1.0 - batch["terminals"]) * next_q
    target = jax.lax.stop_gradient(target)
    q = critic.apply(critic_params, batch["observations"], batch["actions"])  # (2, B)
    loss = jnp.mean(jnp.square(q - target[None, :])) * 2.0  # mse(q1, y) + mse(q2, y)
    return loss, {"critic/loss": loss, "critic/q_mean": q.mean(), "critic/q_max": q.max(),
                  "critic/q_min": q.min(), "critic/target_mean": target.mean()}


def reduce_next_q(next_q: jax.Array, order: str) -> jax.Array:
    """``(2 heads, B, n samples) -> (B,)``: ``"min_then_max"`` (min over heads, then max over
    samples) or ``"max_then_min"`` (per head the max over samples, then the min: the official
    AntMaze target). Equal for ``n = 1``."""
    if order == "max_then_min":
        return next_q.max(axis=2).min(axis=0)
    return next_q.min(axis=0).max(axis=1)


def ema_actor(ema_params, actor_params, step: jax.Array, config: DQLConfig):
    """The EMA actor after gradient step ``step`` (0-based): unchanged unless
    ``step % ema_every == 0``; before ``ema_start`` a copy of ``actor_params`` (``ema_warmup=
    "copy"``) or left as it is (``"initial"``: the initial weights, the official code); after,
    ``ema_decay * ema + (1 - ema_decay) * actor``."""
    do_ema = step % config.ema_every == 0
    warm = step < config.ema_start
    ema = ema_update(ema_params, actor_params, config.ema_decay)
    before = actor_params if config.ema_warmup == "copy" else ema_params
    return jax.tree.map(lambda b, e, old: jnp.where(do_ema, jnp.where(warm, b, e), old),
                        before, ema, ema_params)


def actor_loss(actor_params, state: DQLState, critic_params, batch: dict, draws: dict):
    """``L_bc + eta * L_q + L_contraction`` from the draws of :func:`sample_draws`. Returns
    ``(loss, metrics)``."""
    config = state.config
    schedule = _schedule(config)
    actor, critic = _actor(config), _critic(config)
    denoiser = lambda x, t, c: actor.apply(actor_params, x, t, c)
    obs, actions = batch["observations"], batch["actions"]

    bc_loss, aux = diffusion.denoising_loss_from_draws(
        denoiser, schedule, actions, obs, draws["bc_t"], draws["bc_eps"].astype(actions.dtype),
        prediction=config.prediction)
    if config.edp_draw == "separate":  # the official code's second, independent (t, eps) draw
        t_edp = draws["edp_t"]
        alpha = diffusion.expand_to(schedule.alpha(t_edp), actions)
        sigma = diffusion.expand_to(schedule.sigma(t_edp), actions)
        x_edp = alpha * actions + sigma * draws["edp_eps"].astype(actions.dtype)
        pred_edp = denoiser(x_edp, t_edp, obs)
    else:
        t_edp, x_edp, pred_edp = aux["t"], aux["x_t"], aux["pred"]
        alpha = diffusion.expand_to(schedule.alpha(t_edp), actions)
        sigma = diffusion.expand_to(schedule.sigma(t_edp), actions)
    if config.action_approx:  # EDP: one-step Tweedie estimate at the drawn noise level
        new_actions = diffusion.to_x0(pred_edp, config.prediction, x_edp, alpha, sigma)
        if config.edp_clip:
            new_actions = jnp.clip(new_actions, -1.0, 1.0)
    else:  # Diffusion-QL: the whole reverse chain, differentiated
        new_actions = sample_actions(config, actor_params, obs, draws["chain_key"],
                                     state.action_dim)
    # Q_i and Q_j head by head: the gradient then runs back through Q_i only (one critic head's
    # backward pass less than selecting from the (2, B) output of both heads).
    i = draws["q_index"]
    q_i = networks.apply_critic_head(critic, critic_params, i, obs, new_actions)
    q_j = networks.apply_critic_head(critic, critic_params, 1 - i, obs,
                                   jax.lax.stop_gradient(new_actions))
    q_loss = -q_i.mean() / jax.lax.stop_gradient(jnp.abs(q_j).mean())

    reg, reg_metrics = contraction.contraction_regulariser(
        config.contraction, denoiser, schedule, x_edp, t_edp, obs, draws["contraction_key"],
        prediction=config.prediction)
    loss = bc_loss + config.eta * q_loss + reg
    metrics = {"actor/loss": loss, "actor/bc_loss": bc_loss, "actor/q_loss": q_loss,
               "actor/contraction_loss": reg, **reg_metrics}
    return loss, metrics


def update(state: DQLState, batch: dict, key: jax.Array) -> tuple[DQLState, dict]:
    """One gradient step on the critic, then the actor, then targets and EMA.

    ``batch``: ``observations (B, obs_dim)``, ``actions (B, action_dim)``, ``rewards (B,)``,
    ``next_observations (B, obs_dim)``, ``terminals (B,)`` (1.0 where the episode truly ended).
    """
    draws = sample_draws(key, state.config, batch["actions"].shape[0], state.action_dim)
    return update_with_draws(state, batch, draws)


def update_with_draws(state: DQLState, batch: dict, draws: dict) -> tuple[DQLState, dict]:
    """:func:`update` with its random draws given (see :func:`sample_draws`)."""
    config = state.config
    actor_opt, critic_opt = _optimizers(config)

    grads, critic_metrics = jax.grad(critic_loss, has_aux=True)(
        state.critic_params, state, batch, draws["next_noise"])
    updates, critic_opt_state = critic_opt.update(grads, state.critic_opt_state,
                                                  state.critic_params)
    critic_params = optax.apply_updates(state.critic_params, updates)

    grads, actor_metrics = jax.grad(actor_loss, has_aux=True)(
        state.actor_params, state, critic_params, batch, draws)
    updates, actor_opt_state = actor_opt.update(grads, state.actor_opt_state, state.actor_params)
    actor_params = optax.apply_updates(state.actor_params, updates)

    step = state.step
    do_target = step % config.target_every == 0
    target = ema_update(state.target_critic_params, critic_params, 1.0 - config.tau)
    target = jax.tree.map(lambda a, b: jnp.where(do_target, a, b), target,
                          state.target_critic_params)
    ema = ema_actor(state.ema_params, actor_params, step, config)
    new_state = state.replace(
        actor_params=actor_params, ema_params=ema, critic_params=critic_params,
        target_critic_params=target, actor_opt_state=actor_opt_state,
        critic_opt_state=critic_opt_state, step=step + 1)
    return new_state, {**critic_metrics, **actor_metrics}


def act(state: DQLState, obs: jax.Array, key: jax.Array) -> jax.Array:
    """Actions ``(B, action_dim)`` for observations ``(B, obs_dim)`` from the EMA actor.

    With ``num_candidates = N > 1`` (IDQL / EDP / official CDP evaluation), ``N`` candidates are
    sampled per observation with initial-noise temperature ``noise_temperature`` and one is drawn
    from ``softmax(candidate_temperature * min_i Q'_i(s, a))`` of the target critic.
    """
    config = state.config
    n, batch_size = config.num_candidates, obs.shape[0]
    key_sample, key_pick = jax.random.split(key)
    obs_rep = jnp.repeat(obs, n, axis=0)
    actions = sample_actions(config, state.ema_params, obs_rep, key_sample, state.action_dim,
                             temperature=config.noise_temperature)
    if n == 1:
        return actions
    q = _critic(config).apply(state.target_critic_params, obs_rep, actions).min(axis=0)
    logits = config.candidate_temperature * q.reshape(batch_size, n)
    idx = jax.random.categorical(key_pick, logits, axis=-1)
    return actions.reshape(batch_size, n, state.action_dim)[jnp.arange(batch_size), idx]


# ----------------------------------------------------------------------------- configuration


