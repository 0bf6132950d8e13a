"""Flow Q-Learning (FQL; Park, Li and Levine, 2025): offline RL with a flow policy, plus CDP.

Three networks and a target (:mod:`cdp_jax.flow_networks`, FQL's own): a behaviour flow
``v(x, t | s)`` trained by flow matching on the data's actions; a one-step policy
``mu(s, z)``, ``z ~ N(0, I)``, that maximises Q while it is distilled from the flow; a
two-critic ensemble with LayerNorm and its Polyak target. One Adam step on

    L = L_critic + L_flow + alpha L_distill + L_Q (+ L_contraction)

    L_critic   = mean_k (Q_k(s, a) - r - gamma m agg_k Q'_k(s', clip(mu(s', z'))))^2
    L_flow     = mean || v(x_t, t | s) - (a - x_0) ||^2,  x_t = (1 - t) x_0 + t a
    L_distill  = mean || mu(s, z) - clip(Euler_N(v, z | s)) ||^2
    L_Q        = -mean_k Q_k(s, clip(mu(s, z)))   (times 1 / |Q| if normalize_q_loss)

``agg`` is ``q_agg`` (mean or min); ``m = 1 - terminal``. Gradients go where FQL sends them: the
TD target, the distillation target ``Euler_N`` and the critic inside ``L_Q`` are constants (the
step's current parameters); ``L_Q`` reaches the one-step policy through its actions only. The
target critic moves to ``tau Q + (1 - tau) Q'`` with the critic of *before* the step (as FQL's
``target_update``, which reads the agent's parameters, not the updated ones).

CDP: ``L_contraction`` is :func:`cdp_jax.flow.contraction_regulariser` on the behaviour flow at
the flow-matching draw ``(x_t, t)`` (weight 0: FQL exactly, no extra compute). Acting is FQL's
``sample_actions``: the one-step policy on fresh noise, clipped to ``[-1, 1]``.

Every random draw of a step comes from its key with FQL's own splits (:func:`sample_draws`), so
an update here and FQL's ``agent.update`` on the same batch, parameters and key agree
(tests/test_fql_parity.py; docs/PARITY.md, "Flow Q-Learning").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import struct

from cdp_jax import flow
from cdp_jax.agents.common import make_optimizer
from cdp_jax.configs.fql import FQLConfig, default_config  # noqa: F401 (re-exported)
from cdp_jax.flow_networks import CriticEnsemble, VectorField

TRAINED = ("critic", "actor_bc_flow", "actor_onestep_flow")


class FQLState(struct.PyTreeNode):
    """The whole agent state; ``config`` and dimensions are static."""

    params: dict  # {"critic", "actor_bc_flow", "actor_onestep_flow"}: FQL's module names
    target_critic_params: dict
    opt_state: optax.OptState
    step: jax.Array  # int32 scalar: gradient steps taken
    config: FQLConfig = struct.field(pytree_node=False)
    obs_dim: int = struct.field(pytree_node=False)
    action_dim: int = struct.field(pytree_node=False)


def _critic(config: FQLConfig) -> CriticEnsemble:
    return CriticEnsemble(config.value_hidden_dims, layer_norm=config.layer_norm)


def _field(config: FQLConfig, action_dim: int) -> VectorField:
    return VectorField(config.actor_hidden_dims, action_dim, layer_norm=config.actor_layer_norm)


def _optimizer(config: FQLConfig):
    return make_optimizer(config.lr, config.lr_decay_steps, 0.0, None)


@functools.partial(jax.jit, static_argnames=("config", "obs_dim", "action_dim"))
def init(key: jax.Array, config: FQLConfig, obs_dim: int, action_dim: int) -> FQLState:
    """Fresh parameters (the target critic a copy of the critic), Adam state and step 0."""
    config.validate()
    obs, act, t = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim)), jnp.zeros((1, 1))
    k_critic, k_flow, k_onestep = jax.random.split(key, 3)
    field = _field(config, action_dim)
    params = {"critic": _critic(config).init(k_critic, obs, act),
              "actor_bc_flow": field.init(k_flow, obs, act, t),
              "actor_onestep_flow": field.init(k_onestep, obs, act)}
    return FQLState(params=params, target_critic_params=params["critic"],
                    opt_state=_optimizer(config).init(params), step=jnp.zeros((), jnp.int32),
                    config=config, obs_dim=obs_dim, action_dim=action_dim)


def velocity_field(config: FQLConfig, params: dict, action_dim: int):
    """The behaviour flow as ``velocity(x, t, obs)`` (``t`` ``(batch,)``; :mod:`cdp_jax.flow`)."""
    field = _field(config, action_dim)
    return lambda x, t, obs: field.apply(params["actor_bc_flow"], obs, x, t[:, None])


def one_step_policy(config: FQLConfig, params: dict, obs, noise):
    """``mu(s, z)``, unclipped."""
    return _field(config, noise.shape[-1]).apply(params["actor_onestep_flow"], obs, noise)


def flow_actions(config: FQLConfig, params: dict, obs, noise):
    """FQL's ``compute_flow_actions``: ``flow_steps`` Euler steps of the behaviour flow from
    ``noise``, clipped to ``[-1, 1]`` at the end."""
    return flow.integrate(velocity_field(config, params, noise.shape[-1]), noise, obs,
                          method="euler", steps=config.flow_steps, clip=(-1.0, 1.0))


def sample_draws(key: jax.Array, batch_size: int, action_dim: int) -> dict:
    """Every random draw of one update, from ``key`` by FQL's own splits (``update`` passes
    ``total_loss`` the key that FQL's ``update`` makes with ``new_rng, rng = split(self.rng)``):
    ``next_noise`` (the TD target's next actions), ``x0`` and ``t`` (flow matching), ``noise``
    (distillation), ``mse_noise`` (the logged ``actor/mse``) and ``contraction_key``."""
    shape = (batch_size, action_dim)
    _, actor_rng, critic_rng = jax.random.split(key, 3)
    _, next_seed = jax.random.split(critic_rng)
    rng, x_rng, t_rng = jax.random.split(actor_rng, 3)
    rng, noise_rng = jax.random.split(rng)
    return {"next_noise": jax.random.normal(jax.random.split(next_seed)[0], shape),
            "x0": jax.random.normal(x_rng, shape),
            "t": jax.random.uniform(t_rng, (batch_size,)),
            "noise": jax.random.normal(noise_rng, shape),
            "mse_noise": jax.random.normal(jax.random.split(rng)[0], shape),
            "contraction_key": jax.random.fold_in(actor_rng, 0x0CD9)}


def critic_loss(config: FQLConfig, params: dict, frozen: dict, target_critic: dict, batch: dict,
                draws: dict):
    """The TD loss of the critic ensemble. ``frozen`` are the step's parameters behind
    ``stop_gradient`` (the next actions' policy)."""
    next_obs = batch["next_observations"]
    next_actions = jnp.clip(one_step_policy(config, frozen, next_obs, draws["next_noise"]),
                            -1.0, 1.0)
    next_qs = _critic(config).apply(target_critic, next_obs, next_actions)
    next_q = next_qs.min(axis=0) if config.q_agg == "min" else next_qs.mean(axis=0)
    masks = 1.0 - batch["terminals"]
    target_q = batch["rewards"] + config.discount * masks * next_q
    q = _critic(config).apply(params["critic"], batch["observations"], batch["actions"])
    loss = jnp.mean(jnp.square(q - target_q[None]))  # (ensemble, batch)
    return loss, {"critic/loss": loss, "critic/q_mean": q.mean(), "critic/q_max": q.max(),
                  "critic/q_min": q.min()}


def actor_loss(config: FQLConfig, params: dict, frozen: dict, batch: dict, draws: dict):
    """Flow matching, distillation, the Q term and (weight > 0) the contraction penalty."""
    obs, actions = batch["observations"], batch["actions"]
    velocity = velocity_field(config, params, actions.shape[-1])
    flow_loss, aux = flow.flow_matching_loss_from_draws(velocity, actions, draws["x0"],
                                                        draws["t"], obs)
    reg, reg_metrics = flow.contraction_regulariser(config.contraction, velocity, aux["x_t"],
                                                    aux["t"], obs, draws["contraction_key"])
    target = flow_actions(config, frozen, obs, draws["noise"])
    onestep = one_step_policy(config, params, obs, draws["noise"])
    distill_loss = jnp.mean(jnp.square(onestep - target))
    qs = _critic(config).apply(frozen["critic"], obs, jnp.clip(onestep, -1.0, 1.0))
    q = qs.mean(axis=0)
    q_loss = -q.mean()
    if config.normalize_q_loss:
        q_loss = jax.lax.stop_gradient(1.0 / jnp.abs(q).mean()) * q_loss
    loss = flow_loss + config.alpha * distill_loss + q_loss + reg
    sampled = jnp.clip(one_step_policy(config, frozen, obs, draws["mse_noise"]), -1.0, 1.0)
    return loss, {"actor/loss": loss, "actor/bc_flow_loss": flow_loss,
                  "actor/distill_loss": distill_loss, "actor/q_loss": q_loss, "actor/q": q.mean(),
                  "actor/mse": jnp.mean(jnp.square(sampled - actions)),
                  "actor/contraction_loss": reg, **reg_metrics}


def total_loss(params: dict, state: FQLState, batch: dict, draws: dict):
    """``critic_loss + actor_loss`` and their metrics (FQL's ``total_loss``)."""
    config = state.config
    frozen = jax.lax.stop_gradient(params)
    c_loss, c_info = critic_loss(config, params, frozen, state.target_critic_params, batch, draws)
    a_loss, a_info = actor_loss(config, params, frozen, batch, draws)
    return c_loss + a_loss, {**c_info, **a_info}


def update(state: FQLState, batch: dict, key: jax.Array) -> tuple[FQLState, dict]:
    """One Adam step on every network, then the target critic."""
    draws = sample_draws(key, batch["actions"].shape[0], state.action_dim)
    return update_with_draws(state, batch, draws)


def update_with_draws(state: FQLState, batch: dict, draws: dict) -> tuple[FQLState, dict]:
    """:func:`update` with its random draws given."""
    config = state.config
    grads, metrics = jax.grad(total_loss, has_aux=True)(state.params, state, batch, draws)
    updates, opt_state = _optimizer(config).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    target = jax.tree.map(lambda p, tp: config.tau * p + (1.0 - config.tau) * tp,
                          state.params["critic"], state.target_critic_params)
    return state.replace(params=params, target_critic_params=target, opt_state=opt_state,
                         step=state.step + 1), metrics


def act(state: FQLState, obs: jax.Array, key: jax.Array) -> jax.Array:
    """FQL's ``sample_actions``: the one-step policy on noise from ``split(key)[0]``, clipped."""
    noise = jax.random.normal(jax.random.split(key)[0], (*obs.shape[:-1], state.action_dim))
    return jnp.clip(one_step_policy(state.config, state.params, obs, noise), -1.0, 1.0)
