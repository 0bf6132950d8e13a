"""Flax (linen, used functionally) networks for diffusion policies and critics.

Every module is pure: ``module.apply(params, ...)`` is the function that ``jax.jvp``, ``jax.vmap``
and the samplers need. Shapes use ``B`` for the batch.

* :class:`SinusoidalEmbedding`: ``t (B,) -> (B, dim)`` (Transformer / DDPM positional embedding).
* :class:`DQLActor`: the Diffusion-QL denoiser (time MLP 64 -> 128 -> 64 with Mish, then
  ``[x, t_emb, obs] -> 3 x 256 Mish -> event``).
* :class:`LNResNetActor`: IDQL's LayerNorm residual MLP denoiser.
* :class:`DoubleCritic`: twin Q, ``(obs, action) -> (2, B)``; each head LN-Tanh then LN-Mish blocks.
* :class:`ValueNetwork`: ``obs -> (B,)``.

Denoisers take ``x`` of shape ``(B, *event)`` (``event = (action_dim,)`` or
``(horizon, action_dim)``, flattened inside and reshaped back), ``t`` of shape ``(B,)`` (integer
step indices or floats; the two actors here also accept ``(1,)``, one level shared by the batch)
and ``cond`` of shape ``(B, ...)`` (flattened), and return an array with the shape of ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# exp(20)^2 ~ 2e17 is finite in float32 and mish(x) == x to float32 precision beyond it.
_MISH_CUTOFF = 20.0


def mish(x: jax.Array) -> jax.Array:
    """Mish, ``x * tanh(softplus(x))``, with one exponential.

    ``tanh(log(1 + e)) = n / (n + 2)`` with ``e = exp(x)`` and ``n = e (e + 2)``: exact, and cheaper
    than composing ``tanh`` and ``softplus`` (two transcendental calls per element on CPU).
    """
    e = jnp.exp(jnp.minimum(x, _MISH_CUTOFF))
    n = e * (e + 2.0)
    return jnp.where(x > _MISH_CUTOFF, x, x * n / (n + 2.0))


ACTIVATIONS = {"mish": mish, "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu, "tanh": jnp.tanh}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


class SinusoidalEmbedding(nn.Module):
    """``t (B,) -> (B, dim)``: ``[sin(t w_k), cos(t w_k)]``, ``w_k = 10000^(-k / (dim/2 - 1))``."""

    dim: int

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        half = self.dim // 2
        scale = math.log(10000.0) / max(half - 1, 1)
        freqs = jnp.exp(-scale * jnp.arange(half, dtype=jnp.float32))
        args = t.astype(jnp.float32)[:, None] * freqs[None, :]
        return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def _flatten_batch(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


class ConcatDense(nn.Module):
    """``Dense([x, temb, cond])`` (parameters exactly those of ``nn.Dense``) where ``temb`` may have
    a batch of 1 (one noise level shared by the batch, as in every sampler step).

    With a shared ``temb`` its rows of the kernel are applied once and broadcast, instead of to
    ``B`` identical rows: in a 15-step TD-target sampler this and the time MLP run once per step
    are about a fifth of the Diffusion-QL actor's FLOPs.
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, cond: jax.Array) -> jax.Array:
        dx, dt = x.shape[-1], temb.shape[-1]
        width = dx + dt + cond.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (width, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))[None, :]
        if temb.shape[0] == x.shape[0]:  # per-sample noise levels: one matmul, as nn.Dense
            return jnp.dot(jnp.concatenate([x, temb, cond], axis=-1), kernel) + bias
        kernel_xc = jnp.concatenate([kernel[:dx], kernel[dx + dt:]], axis=0)
        shared = jnp.dot(temb, kernel[dx:dx + dt]) + bias  # (1, features)
        return jnp.dot(jnp.concatenate([x, cond], axis=-1), kernel_xc) + shared


class DQLActor(nn.Module):
    """Diffusion-QL denoiser: ``(x (B, *event), t (B,) or (1,), cond (B, ...)) -> (B, *event)``.

    ``t`` of shape ``(1,)`` is one noise level for the whole batch (what a sampler step uses); the
    time path then runs once instead of on ``B`` identical rows. Same parameters either way.
    """

    hidden_dim: int = 256
    num_layers: int = 3
    time_dim: int = 64
    activation: str = "mish"

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        temb = SinusoidalEmbedding(self.time_dim)(t)
        temb = nn.Dense(self.time_dim * 2)(temb)
        temb = nn.Dense(self.time_dim)(act(temb))
        # Named as the nn.Dense it replaces, so parameter trees (and checkpoints) are unchanged.
        h = act(ConcatDense(self.hidden_dim, name="Dense_2")(
            _flatten_batch(x), temb, _flatten_batch(cond)))
        for i in range(self.num_layers - 1):
            h = act(nn.Dense(self.hidden_dim, name=f"Dense_{3 + i}")(h))
        out = nn.Dense(math.prod(x.shape[1:]), name=f"Dense_{2 + self.num_layers}")(h)
        return out.reshape(x.shape)


class LNResNetActor(nn.Module):
    """IDQL's LN-ResNet denoiser: blocks ``h + Dense(act(Dense_{e h}(LN(h))))``, ``e = expansion``.

    ``expansion=4`` is IDQL's block; ``expansion=1`` is a plain residual MLP of width ``hidden_dim``
    (the size of the official CDP imitation-learning backbone, 4x fewer FLOPs).
    ``(x (B, *event), t (B,) or (1,), cond (B, ...)) -> (B, *event)`` (``(1,)``: one shared level).
    """

    hidden_dim: int = 256
    num_blocks: int = 3
    time_dim: int = 64
    activation: str = "mish"
    expansion: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        temb = SinusoidalEmbedding(self.time_dim)(t)
        temb = nn.Dense(self.time_dim)(act(nn.Dense(self.time_dim * 2)(temb)))
        temb = jnp.broadcast_to(temb, (x.shape[0], temb.shape[-1]))  # t (1,): shared level
        h = jnp.concatenate([_flatten_batch(x), temb, _flatten_batch(cond)], axis=-1)
        h = nn.Dense(self.hidden_dim)(h)
        for _ in range(self.num_blocks):
            r = nn.Dense(self.hidden_dim * self.expansion)(nn.LayerNorm()(h))
            h = h + nn.Dense(self.hidden_dim)(act(r))
        out = nn.Dense(math.prod(x.shape[1:]))(act(h))
        return out.reshape(x.shape)


ACTORS = {"mlp": DQLActor, "lnresnet": LNResNetActor}


def make_actor(name: str, hidden_dim: int, depth: int, time_dim: int,
               activation: str = "mish", expansion: int = 4) -> nn.Module:
    """Actor by registry name: ``"mlp"`` (:class:`DQLActor`), ``"lnresnet"`` (LN-ResNet, whose
    blocks widen by ``expansion``; ignored by the MLP)."""
    if name not in ACTORS:
        raise ValueError(f"Unknown actor network {name!r}; expected one of {sorted(ACTORS)}.")
    get_activation(activation)
    if name == "mlp":
        return DQLActor(hidden_dim=hidden_dim, num_layers=depth, time_dim=time_dim,
                        activation=activation)
    return LNResNetActor(hidden_dim=hidden_dim, num_blocks=depth, time_dim=time_dim,
                         activation=activation, expansion=expansion)


class QHead(nn.Module):
    """One Q network: ``[obs, act] -> Dense-LN-Tanh -> (Dense-LN-Mish) x (n-1) -> 1``."""

    hidden_dims: Sequence[int] = (256, 256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        h = jnp.concatenate([_flatten_batch(obs), _flatten_batch(action)], axis=-1)
        for i, width in enumerate(self.hidden_dims):
            h = nn.LayerNorm()(nn.Dense(width)(h))
            h = jnp.tanh(h) if i == 0 else mish(h)
        return nn.Dense(1)(h)[:, 0]


class DoubleCritic(nn.Module):
    """Twin Q: ``(obs (B, ...), action (B, ...)) -> (2, B)``; two heads, separate weights."""

    hidden_dims: Sequence[int] = (256, 256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        ensemble = nn.vmap(QHead, variable_axes={"params": 0}, split_rngs={"params": True},
                           in_axes=None, out_axes=0, axis_size=2)
        return ensemble(tuple(self.hidden_dims))(obs, action)


def apply_critic_head(critic: DoubleCritic, params: dict, index: jax.Array, obs: jax.Array,
                      action: jax.Array) -> jax.Array:
    """``Q_index(obs, action)``, ``(B,)``: one head (``index`` may be traced) of a DoubleCritic.

    Equals ``critic.apply(params, obs, action)[index]`` but runs, and differentiates, one head.
    """
    heads = params["params"]["VmapQHead_0"]
    one = jax.tree.map(lambda p: jax.lax.dynamic_index_in_dim(p, index, keepdims=False), heads)
    return QHead(tuple(critic.hidden_dims)).apply({"params": one}, obs, action)


class ValueNetwork(nn.Module):
    """State value ``V(obs)``: ``(B, ...) -> (B,)``, LayerNorm-Mish MLP."""

    hidden_dims: Sequence[int] = (256, 256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        h = _flatten_batch(obs)
        for width in self.hidden_dims:
            h = mish(nn.LayerNorm()(nn.Dense(width)(h)))
        return nn.Dense(1)(h)[:, 0]
