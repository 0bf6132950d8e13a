"""Flow-matching behaviour cloning: imitation with a flow policy, single actions or chunks, plus CDP.

The policy is a velocity field ``v(x, t | obs)`` over action chunks ``(action_horizon,
action_dim)``, conditioned on ``obs_horizon`` observations, trained by flow matching on the
linear path (:func:`cdp_jax.flow.flow_matching_loss_from_draws`: ``x_t = (1 - t) x_0 + t a``,
target ``a - x_0``, ``t ~ U[0, 1]``, noise at ``t = 0``) and sampled by ``flow_steps`` steps of
:data:`cdp_jax.flow.FLOW_SAMPLERS` ``[sampler]`` from ``N(0, temperature^2 I)``, clipped to
``[-1, 1]`` at the end. The loss is

    L = L_flow + L_contraction

with ``L_contraction`` :func:`cdp_jax.flow.contraction_regulariser` on the same ``(x_t, t)``
(weight 0: plain flow BC, no extra compute). Acting uses an EMA of the weights; the caller
executes the first ``n_action`` actions of each chunk (:func:`cdp_jax.evaluation.evaluate`).

Networks: ``fql_mlp`` is FQL's vector field (observations, flattened chunk and raw ``t``
concatenated into a GELU MLP, :class:`cdp_jax.flow_networks.VectorField`); the diffusion agents'
backbones (``mlp``, ``lnresnet``, ``pearce``, ``unet``, ``dit``) work too, fed ``t *
time_scale`` (their sinusoidal embeddings resolve integer-scale times).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import struct

from cdp_jax import chunk_networks, flow, networks
from cdp_jax.agents.common import make_optimizer, optimiser_step_with_ema
from cdp_jax.configs.flow_bc import FlowBCConfig, default_config  # noqa: F401 (re-exported)
from cdp_jax.flow_networks import VectorField


class FlowBCState(struct.PyTreeNode):
    """The whole agent state; ``config`` and dimensions are static."""

    params: dict
    ema_params: dict
    opt_state: optax.OptState
    step: jax.Array  # int32 scalar
    config: FlowBCConfig = struct.field(pytree_node=False)
    obs_dim: int = struct.field(pytree_node=False)
    action_dim: int = struct.field(pytree_node=False)


def _network(config: FlowBCConfig, action_dim: int):
    if config.actor_network == "fql_mlp":
        return VectorField(config.hidden_dims, config.action_horizon * action_dim,
                           layer_norm=config.layer_norm)
    if config.actor_network in chunk_networks.CHUNK_ACTORS:
        return chunk_networks.make_chunk_actor(config.actor_network, config.hidden_dim,
                                               config.depth, config.time_dim, config.activation)
    return networks.make_actor(config.actor_network, config.hidden_dim, config.depth,
                               config.time_dim, config.activation)


def velocity_field(config: FlowBCConfig, params, action_dim: int):
    """The policy as ``velocity(x, t, obs)``: ``x`` ``(B, action_horizon, action_dim)``, ``t``
    ``(B,)`` in ``[0, 1]``, ``obs`` ``(B, obs_horizon, obs_dim)``."""
    net = _network(config, action_dim)
    if config.actor_network == "fql_mlp":
        def velocity(x, t, obs):
            b = x.shape[0]
            out = net.apply(params, obs.reshape(b, -1), x.reshape(b, -1), t[:, None])
            return out.reshape(x.shape)
        return velocity
    return lambda x, t, obs: net.apply(params, x, t * config.time_scale, obs)


def _optimizer(config: FlowBCConfig):
    return make_optimizer(config.lr, config.lr_decay_steps, config.weight_decay,
                          config.max_grad_norm)


@functools.partial(jax.jit, static_argnames=("config", "obs_dim", "action_dim"))
def init(key: jax.Array, config: FlowBCConfig, obs_dim: int, action_dim: int) -> FlowBCState:
    """Fresh parameters, optimiser state and step 0."""
    config.validate()
    x = jnp.zeros((1, config.action_horizon, action_dim))
    obs = jnp.zeros((1, config.obs_horizon, obs_dim))
    net = _network(config, action_dim)
    if config.actor_network == "fql_mlp":
        params = net.init(key, obs.reshape(1, -1), x.reshape(1, -1), jnp.zeros((1, 1)))
    else:
        params = net.init(key, x, jnp.zeros((1,)), obs)
    return FlowBCState(params=params, ema_params=params, opt_state=_optimizer(config).init(params),
                       step=jnp.zeros((), jnp.int32), config=config, obs_dim=obs_dim,
                       action_dim=action_dim)


def sample_draws(key: jax.Array, config: FlowBCConfig, batch_size: int, action_dim: int) -> dict:
    """Every random draw of one update: noise ``x0`` ``(B, action_horizon, action_dim)``, times
    ``t`` ``(B,)`` (the flow-matching draw, which the penalty reuses) and ``contraction_key``."""
    key_x, key_t, key_reg = jax.random.split(key, 3)
    return {"x0": jax.random.normal(key_x, (batch_size, config.action_horizon, action_dim)),
            "t": jax.random.uniform(key_t, (batch_size,)), "contraction_key": key_reg}


def loss_fn(params, state: FlowBCState, batch: dict, draws: dict):
    """Flow-matching loss plus contraction penalty on the draws of :func:`sample_draws`."""
    config = state.config
    obs, actions = batch["observations"], batch["actions"]
    velocity = velocity_field(config, params, state.action_dim)
    flow_loss, aux = flow.flow_matching_loss_from_draws(velocity, actions, draws["x0"], draws["t"],
                                                        obs)
    reg, reg_metrics = flow.contraction_regulariser(config.contraction, velocity, aux["x_t"],
                                                    aux["t"], obs, draws["contraction_key"])
    loss = flow_loss + reg
    return loss, {"actor/loss": loss, "actor/bc_loss": flow_loss, "actor/contraction_loss": reg,
                  **reg_metrics}


def update(state: FlowBCState, batch: dict, key: jax.Array) -> tuple[FlowBCState, dict]:
    """One optimiser step and an EMA update (a copy before ``ema_start``)."""
    draws = sample_draws(key, state.config, batch["actions"].shape[0], state.action_dim)
    return update_with_draws(state, batch, draws)


def update_with_draws(state: FlowBCState, batch: dict, draws: dict) -> tuple[FlowBCState, dict]:
    """:func:`update` with its random draws given."""
    config = state.config
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, state, batch, draws)
    return optimiser_step_with_ema(state, grads, _optimizer(config), config), metrics


def act(state: FlowBCState, obs: jax.Array, key: jax.Array) -> jax.Array:
    """Action chunks ``(B, action_horizon, action_dim)`` for ``obs (B, obs_horizon, obs_dim)``."""
    config = state.config
    shape = (obs.shape[0], config.action_horizon, state.action_dim)
    x0 = config.noise_temperature * jax.random.normal(key, shape)
    velocity = velocity_field(config, state.ema_params, state.action_dim)
    return flow.integrate(velocity, x0, obs, method=config.sampler, steps=config.flow_steps,
                          clip=(-1.0, 1.0))
