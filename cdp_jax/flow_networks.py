"""FQL's networks in Flax linen: its MLP, the critic ensemble and the actor vector field.

Written to hold the same parameters under the same names as ``utils/networks.py`` of
github.com/seohongpark/fql (so FQL's weights load into them one to one, which the parity tests
do), used functionally (``module.apply(params, ...)``):

* :class:`MLP`: Dense layers with FQL's initialisation (variance scaling 1, fan average,
  uniform), GELU, and LayerNorm *after* each hidden activation when ``layer_norm``.
* :class:`CriticEnsemble`: ``num_ensembles`` MLPs on ``[obs, action]`` with one output each,
  vmapped over their parameters (leading axis of every weight), ``-> (num_ensembles, batch)``.
* :class:`VectorField`: an MLP on ``[obs, x, t]`` (``t`` of shape ``(batch, 1)``, raw, no
  embedding) or ``[obs, noise]`` without ``t`` (FQL's one-step policy), ``-> (batch, action_dim)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


def fql_init(scale: float = 1.0):
    """FQL's kernel initialiser: variance scaling ``scale``, fan average, uniform."""
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


class MLP(nn.Module):
    """``Dense -> GELU [-> LayerNorm]`` per hidden layer, a linear last layer."""

    hidden_dims: Sequence[int]
    activate_final: bool = False
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x):
        for i, size in enumerate(self.hidden_dims):
            x = nn.Dense(size, kernel_init=fql_init())(x)
            if i + 1 < len(self.hidden_dims) or self.activate_final:
                x = nn.gelu(x)
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
        return x


class CriticEnsemble(nn.Module):
    """``Q_k(obs, action)`` for ``k < num_ensembles``: ``(batch, obs), (batch, act) -> (K, batch)``."""

    hidden_dims: Sequence[int]
    layer_norm: bool = True
    num_ensembles: int = 2

    def setup(self):
        ensemble = nn.vmap(MLP, variable_axes={"params": 0}, split_rngs={"params": True},
                           in_axes=None, out_axes=0, axis_size=self.num_ensembles)
        self.value_net = ensemble((*self.hidden_dims, 1), activate_final=False,
                                  layer_norm=self.layer_norm)

    def __call__(self, observations, actions):
        inputs = jnp.concatenate([observations, actions], axis=-1)
        return self.value_net(inputs).squeeze(-1)


class VectorField(nn.Module):
    """``v(obs, x[, t])``: FQL's ``ActorVectorField`` (``t`` ``(batch, 1)`` concatenated raw)."""

    hidden_dims: Sequence[int]
    action_dim: int
    layer_norm: bool = False

    def setup(self):
        self.mlp = MLP((*self.hidden_dims, self.action_dim), activate_final=False,
                       layer_norm=self.layer_norm)

    def __call__(self, observations, actions, times=None):
        parts = [observations, actions] if times is None else [observations, actions, times]
        return self.mlp(jnp.concatenate(parts, axis=-1))
