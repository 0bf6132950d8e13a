"""Diffusion-QL (Wang et al. 2023) with EDP's action approximation (Kang et al. 2023): offline RL.

The official CDP offline-RL setting: a diffusion actor trained with

    L_actor = L_bc + eta * L_q + L_contraction,
    L_q = -Q_i(s, a_hat).mean() / stop_grad(|Q_j(s, a_hat)|.mean()),

(i, j) a random order of the two critics, where ``L_bc`` is the denoising loss (x0-prediction,
discrete cosine schedule, T = 50) and ``a_hat`` is either EDP's one-step estimate
``x0_hat(a_t, t, s)`` at the same random ``t`` (``action_approx=True``, cheap, what the official
code does) or a full reverse chain with gradients (``False``, Diffusion-QL). ``L_contraction`` is
:func:`cdp_jax.contraction.contraction_regulariser` on the same ``(a_t, t)`` draws; with weight 0
it is exactly 0 and costs nothing, so the agent is then vanilla EDP / Diffusion-QL.

The twin critic regresses on ``y = r + gamma (1 - done) min_i Q'_i(s', a')`` with ``a'`` sampled
by the EMA actor (DPM-Solver++ 2M, 15 steps by default; with ``td_samples > 1`` the max over
samples is taken, as on AntMaze). Targets are Polyak-averaged every ``target_every`` steps; the
EMA actor is a copy of the actor until ``ema_start`` and an exponential average every
``ema_every`` steps after.

Shapes: observations ``(B, obs_dim)``, actions ``(B, action_dim)`` in ``[-1, 1]``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import struct

from cdp_jax import contraction, diffusion, networks, samplers
from cdp_jax.agents.common import (
    check_choice,
    check_positive,
    ema_update,
    make_optimizer,
    make_schedule,
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
                               config.time_dim)


def _critic(config: DQLConfig):
    return networks.DoubleCritic(hidden_dims=(config.critic_hidden_dim,) * config.critic_depth)


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
                   action_dim: int, *, temperature: float = 1.0) -> jax.Array:
    """Actions ``(B, action_dim)`` from the diffusion actor by the configured sampler, clipped."""
    schedule = make_schedule(config.schedule, config.diffusion_steps)
    actor = _actor(config)
    # A sampler evaluates the whole batch at one noise level (samplers._make_model broadcasts a
    # scalar t): passing it as t (1,) lets the actor run its time path once, not on B equal rows.
    denoiser = lambda x, t, c: actor.apply(actor_params, x, t[:1], c)
    a = samplers.sample(denoiser, schedule, key, (obs.shape[0], action_dim), cond=obs,
                        method=config.sampler, steps=config.sampler_steps,
                        prediction=config.prediction, clip_x0=(-1.0, 1.0), temperature=temperature)
    return jnp.clip(a, -1.0, 1.0)


def critic_loss(critic_params, state: DQLState, batch: dict, key: jax.Array):
    """Twin-Q TD regression. Returns ``(loss, metrics)``."""
    config, critic = state.config, _critic(state.config)
    next_obs = batch["next_observations"]
    n, batch_size = config.td_samples, next_obs.shape[0]
    next_obs_rep = jnp.repeat(next_obs, n, axis=0)  # (B * n, obs_dim), sample-major per row
    next_act = sample_actions(config, state.ema_params, next_obs_rep, key, state.action_dim)
    next_q = critic.apply(state.target_critic_params, next_obs_rep, next_act).min(axis=0)
    next_q = next_q.reshape(batch_size, n).max(axis=1)
    target = batch["rewards"] + config.discount * (1.0 - batch["terminals"]) * next_q
    target = jax.lax.stop_gradient(target)
    q = critic.apply(critic_params, batch["observations"], batch["actions"])  # (2, B)
    loss = jnp.mean(jnp.square(q - target[None, :])) * 2.0  # mse(q1, y) + mse(q2, y)
    return loss, {"critic/loss": loss, "critic/q_mean": q.mean(), "critic/q_max": q.max(),
                  "critic/q_min": q.min(), "critic/target_mean": target.mean()}


def actor_loss(actor_params, state: DQLState, critic_params, batch: dict, key: jax.Array):
    """``L_bc + eta * L_q + L_contraction``. Returns ``(loss, metrics)``."""
    config = state.config
    schedule = make_schedule(config.schedule, config.diffusion_steps)
    actor, critic = _actor(config), _critic(config)
    denoiser = lambda x, t, c: actor.apply(actor_params, x, t, c)
    key_bc, key_chain, key_order, key_reg = jax.random.split(key, 4)
    obs, actions = batch["observations"], batch["actions"]

    bc_loss, aux = diffusion.denoising_loss(denoiser, schedule, actions, obs, key_bc,
                                            prediction=config.prediction)
    if config.action_approx:  # EDP: one-step Tweedie estimate at the sampled noise level
        alpha = diffusion.expand_to(schedule.alpha(aux["t"]), actions)
        sigma = diffusion.expand_to(schedule.sigma(aux["t"]), actions)
        new_actions = diffusion.to_x0(aux["pred"], config.prediction, aux["x_t"], alpha, sigma)
        new_actions = jnp.clip(new_actions, -1.0, 1.0)
    else:  # Diffusion-QL: the whole reverse chain, differentiated
        new_actions = sample_actions(config, actor_params, obs, key_chain, state.action_dim)
    # Q_i and Q_j head by head: the gradient then runs back through Q_i only (one critic head's
    # backward pass less than selecting from the (2, B) output of both heads).
    i = jax.random.bernoulli(key_order).astype(jnp.int32)
    q_i = networks.apply_critic_head(critic, critic_params, i, obs, new_actions)
    q_j = networks.apply_critic_head(critic, critic_params, 1 - i, obs,
                                   jax.lax.stop_gradient(new_actions))
    q_loss = -q_i.mean() / jax.lax.stop_gradient(jnp.abs(q_j).mean())

    reg, reg_metrics = contraction.contraction_regulariser(
        config.contraction, denoiser, schedule, aux["x_t"], aux["t"], obs, key_reg,
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
    config = state.config
    actor_opt, critic_opt = _optimizers(config)
    key_critic, key_actor = jax.random.split(key)

    grads, critic_metrics = jax.grad(critic_loss, has_aux=True)(
        state.critic_params, state, batch, key_critic)
    updates, critic_opt_state = critic_opt.update(grads, state.critic_opt_state,
                                                  state.critic_params)
    critic_params = optax.apply_updates(state.critic_params, updates)

    grads, actor_metrics = jax.grad(actor_loss, has_aux=True)(
        state.actor_params, state, critic_params, batch, key_actor)
    updates, actor_opt_state = actor_opt.update(grads, state.actor_opt_state, state.actor_params)
    actor_params = optax.apply_updates(state.actor_params, updates)

    step = state.step
    do_target = step % config.target_every == 0
    target = ema_update(state.target_critic_params, critic_params, 1.0 - config.tau)
    target = jax.tree.map(lambda a, b: jnp.where(do_target, a, b), target,
                          state.target_critic_params)
    do_ema = step % config.ema_every == 0
    ema = ema_update(state.ema_params, actor_params, config.ema_decay)
    ema = jax.tree.map(lambda c, e, old: jnp.where(do_ema, jnp.where(step < config.ema_start, c, e),
                                                   old), actor_params, ema, state.ema_params)
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


@dataclasses.dataclass(frozen=True)
class DQLConfig:
    """Hyperparameters (defaults: the official CDP offline-RL setting, REFERENCE.md)."""

    # actor and diffusion
    actor_network: str = "mlp"  # "mlp" (Diffusion-QL) or "lnresnet" (IDQL)
    actor_hidden_dim: int = 256
    actor_depth: int = 3
    time_dim: int = 64
    schedule: str = "cosine"  # discrete VP schedule: "cosine" or "linear"
    diffusion_steps: int = 50
    prediction: str = "x0"
    action_approx: bool = True  # EDP one-step x0 estimate in the Q loss
    sampler: str = "dpm_solver_pp_2m"
    sampler_steps: int = 15
    # critic
    critic_hidden_dim: int = 256
    critic_depth: int = 3
    discount: float = 0.99
    tau: float = 0.005
    target_every: int = 5
    td_samples: int = 1
    # losses and optimisation
    eta: float = 1.0
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    weight_decay: float = 0.01
    lr_decay_steps: int | None = None  # cosine decay horizon; None: constant learning rate
    max_grad_norm: float | None = None
    ema_decay: float = 0.995
    ema_every: int = 5
    ema_start: int = 1000
    contraction: contraction.ContractionConfig = contraction.ContractionConfig()
    # action selection (act)
    num_candidates: int = 1
    candidate_temperature: float = 1.0
    noise_temperature: float = 1.0

    def validate(self) -> DQLConfig:
        check_choice("actor_network", self.actor_network, tuple(networks.ACTORS))
        check_choice("schedule", self.schedule, ("cosine", "linear"))
        check_choice("prediction", self.prediction, diffusion.PREDICTIONS)
        check_choice("sampler", self.sampler, tuple(samplers.SAMPLERS))
        for name in ("actor_hidden_dim", "actor_depth", "time_dim", "diffusion_steps",
                     "sampler_steps", "critic_hidden_dim", "critic_depth", "target_every",
                     "td_samples", "ema_every", "num_candidates", "actor_lr", "critic_lr"):
            check_positive(name, getattr(self, name))
        for name in ("eta", "weight_decay", "ema_start", "tau", "discount", "ema_decay",
                     "candidate_temperature", "noise_temperature"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if self.sampler_steps > self.diffusion_steps:
            raise ValueError(f"sampler_steps={self.sampler_steps} exceeds diffusion_steps="
                             f"{self.diffusion_steps}; a discrete schedule allows at most one "
                             "solver step per diffusion step.")
        if not (self.discount <= 1.0 and self.tau <= 1.0 and self.ema_decay <= 1.0):
            raise ValueError("discount, tau and ema_decay must lie in [0, 1], got "
                             f"{self.discount}, {self.tau}, {self.ema_decay}.")
        if self.contraction.weight < 0:
            raise ValueError(f"contraction.weight must be >= 0, got {self.contraction.weight}.")
        return self


def default_config(**overrides) -> DQLConfig:
    """The official setting (EDP + Diffusion-QL critic) with ``overrides``, validated."""
    return dataclasses.replace(DQLConfig(), **overrides).validate()

