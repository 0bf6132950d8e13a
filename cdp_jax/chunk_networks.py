"""Denoisers over action chunks: a 1-D temporal UNet (Diffusion Policy) and a small DiT.

Both follow the denoiser convention of :mod:`cdp_jax.networks`:
``(x (B, P, A), t (B,), cond (B, ...)) -> (B, P, A)``, where ``P`` is the prediction horizon (chunk
length), ``A`` the action dimension, ``t`` integer step indices or float times, and ``cond`` the
observation history (flattened inside, e.g. ``(B, H, obs_dim)``). ``x`` of shape ``(B, A)`` is read
as a chunk of one. Flax linen used functionally: ``module.apply(params, x, t, cond)`` is pure,
jittable and vmappable, and every sample's output depends on that sample only (GroupNorm and
LayerNorm normalise within a sample), so the per-sample contraction targets of
:mod:`cdp_jax.contraction` (the "network" and "drift" maps on the flattened ``P * A`` chunk) and
all samplers can use them unchanged.

* :class:`ChunkUNet`: Chi et al. (2023)'s ``ConditionalUnet1D``. The chunk is a 1-D signal over
  time with ``A`` channels; each level has two residual blocks (Conv1d-GroupNorm-Mish twice) whose
  first activation is FiLM-modulated, ``h -> scale(c) * h + shift(c)``, by the global conditioning
  ``c = [time MLP(sinusoidal(t)), flatten(cond)]``; strided-conv downsampling, transposed-conv
  upsampling with skip connections. ``P`` is zero-padded to a multiple of ``2 ** (levels - 1)``
  and cropped back.
* :class:`ChunkDiT`: a Diffusion Transformer (Peebles & Xie 2023) over the ``P`` action tokens,
  sinusoidal positions, conditioned on ``c`` by adaptive LayerNorm with gates (adaLN).

:func:`make_chunk_actor` builds either from the ``(hidden_dim, depth, time_dim, activation)``
fields the agents' configs already have (same signature as :func:`cdp_jax.networks.make_actor`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cdp_jax.networks import SinusoidalEmbedding, get_activation


def _as_chunk(x: jax.Array) -> jax.Array:
    return x[:, None, :] if x.ndim == 2 else x


class TimeObsConditioning(nn.Module):
    """``c = [Dense(act(Dense_4d(sinusoidal_d(t)))), flatten(cond)]``: ``(B, time_dim + cond)``."""

    time_dim: int = 128
    activation: str = "mish"

    @nn.compact
    def __call__(self, t: jax.Array, cond: jax.Array | None) -> jax.Array:
        act = get_activation(self.activation)
        temb = SinusoidalEmbedding(self.time_dim)(t)
        temb = nn.Dense(self.time_dim)(act(nn.Dense(self.time_dim * 4)(temb)))
        if cond is None:
            return temb
        return jnp.concatenate([temb, cond.reshape(cond.shape[0], -1)], axis=-1)


class TemporalConv(nn.Module):
    """1-D convolution over the time axis of ``(B, L, C)``, "SAME" zero padding, as one matmul.

    The ``kernel_size`` shifted copies of the padded input are concatenated on the channel axis
    (im2col) and hit one ``Dense``: the same linear map as ``nn.Conv``, but XLA:CPU runs its
    convolution kernels for short sequences with many channels up to ~50x slower than the matmul
    (measured: ``(128, 4, 256)``, kernel 5: 477 ms vs 11 ms). ``stride`` keeps every
    ``stride``-th output (length ``ceil(L / stride)``).
    """

    features: int
    kernel_size: int = 5
    stride: int = 1

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        length, k = h.shape[1], self.kernel_size
        left = (k - 1) // 2
        padded = jnp.pad(h, ((0, 0), (left, k - 1 - left), (0, 0)))
        patches = jnp.concatenate(
            [padded[:, i:i + length:self.stride] for i in range(k)], axis=-1)
        return nn.Dense(self.features)(patches)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> activation on ``(B, L, C)``."""

    features: int
    kernel_size: int = 5
    num_groups: int = 8
    activation: str = "mish"

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        h = TemporalConv(self.features, self.kernel_size)(h)
        h = nn.GroupNorm(num_groups=self.num_groups)(h)
        return get_activation(self.activation)(h)


class FiLMResidualBlock(nn.Module):
    """Two :class:`Conv1dBlock` with FiLM (per-channel scale and shift from ``c``) after the
    first; 1x1 conv on the skip path when the channel count changes."""

    features: int
    kernel_size: int = 5
    num_groups: int = 8
    activation: str = "mish"

    @nn.compact
    def __call__(self, h: jax.Array, c: jax.Array) -> jax.Array:
        block = lambda: Conv1dBlock(self.features, self.kernel_size, self.num_groups,
                                    self.activation)
        out = block()(h)
        film = nn.Dense(2 * self.features)(get_activation(self.activation)(c))
        scale, shift = jnp.split(film[:, None, :], 2, axis=-1)
        out = block()(scale * out + shift)
        skip = h if h.shape[-1] == self.features else nn.Dense(self.features)(h)  # 1x1 conv
        return out + skip


class ChunkUNet(nn.Module):
    """1-D temporal conv UNet with FiLM conditioning (Diffusion Policy's ``ConditionalUnet1D``).

    ``(x (B, P, A), t (B,), cond (B, ...)) -> (B, P, A)``.

    Attributes:
      down_dims: channels per level (Diffusion Policy: ``(256, 512, 1024)``); ``len - 1``
        halvings of the time axis.
      kernel_size: temporal convolution width.
      num_groups: GroupNorm groups (every entry of ``down_dims`` must be divisible by it).
      time_dim: sinusoidal time-embedding width.
      activation: name in :data:`cdp_jax.networks.ACTIVATIONS` (Mish in Diffusion Policy).
    """

    down_dims: Sequence[int] = (64, 128, 256)
    kernel_size: int = 5
    num_groups: int = 8
    time_dim: int = 128
    activation: str = "mish"

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, cond: jax.Array | None) -> jax.Array:
        chunk = _as_chunk(x)
        horizon = chunk.shape[1]
        multiple = 2 ** (len(self.down_dims) - 1)
        padded = -(-horizon // multiple) * multiple
        h = jnp.pad(chunk, ((0, 0), (0, padded - horizon), (0, 0)))
        c = TimeObsConditioning(self.time_dim, self.activation)(t, cond)
        res = lambda features: FiLMResidualBlock(features, self.kernel_size, self.num_groups,
                                                 self.activation)
        skips = []
        for level, features in enumerate(self.down_dims):
            h = res(features)(h, c)
            h = res(features)(h, c)
            skips.append(h)
            if level < len(self.down_dims) - 1:
                h = TemporalConv(features, 3, stride=2)(h)
        for _ in range(2):
            h = res(self.down_dims[-1])(h, c)
        for level in reversed(range(len(self.down_dims) - 1)):
            features = self.down_dims[level]
            h = nn.ConvTranspose(features, (4,), strides=(2,), padding="SAME")(h)
            h = jnp.concatenate([h, skips[level]], axis=-1)
            h = res(features)(h, c)
            h = res(features)(h, c)
        h = Conv1dBlock(self.down_dims[0], self.kernel_size, self.num_groups, self.activation)(h)
        out = nn.Dense(chunk.shape[-1])(h)[:, :horizon]  # 1x1 conv
        return out.reshape(x.shape)


class DiTBlock(nn.Module):
    """Pre-LN Transformer block with adaLN: shift / scale / gate of both sublayers from ``c``."""

    num_heads: int
    mlp_ratio: int = 4
    activation: str = "gelu"

    @nn.compact
    def __call__(self, h: jax.Array, c: jax.Array) -> jax.Array:
        width = h.shape[-1]
        mod = nn.Dense(6 * width)(nn.silu(c))[:, None, :]
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
        y = nn.LayerNorm(use_bias=False, use_scale=False)(h) * (1.0 + scale1) + shift1
        h = h + gate1 * nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(y, y)
        y = nn.LayerNorm(use_bias=False, use_scale=False)(h) * (1.0 + scale2) + shift2
        y = nn.Dense(width)(get_activation(self.activation)(nn.Dense(self.mlp_ratio * width)(y)))
        return h + gate2 * y


class ChunkDiT(nn.Module):
    """Small Diffusion Transformer over the chunk's ``P`` tokens.

    ``(x (B, P, A), t (B,), cond (B, ...)) -> (B, P, A)``. Tokens are ``Dense(x_p)`` plus fixed
    sinusoidal position embeddings (any ``P``); ``c`` (time and observation history) enters every
    block by adaLN and the output head by a final adaptive LayerNorm.

    Attributes:
      d_model: token width; num_heads must divide it.
      depth: number of blocks.
      num_heads: attention heads.
      time_dim: sinusoidal time-embedding width.
      activation: the MLP's nonlinearity (GELU in DiT).
    """

    d_model: int = 128
    depth: int = 4
    num_heads: int = 4
    time_dim: int = 128
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, cond: jax.Array | None) -> jax.Array:
        chunk = _as_chunk(x)
        batch, horizon, action_dim = chunk.shape
        c = TimeObsConditioning(self.time_dim, "mish")(t, cond)
        c = nn.Dense(self.d_model)(c)
        positions = SinusoidalEmbedding(self.d_model)(jnp.arange(horizon))
        h = nn.Dense(self.d_model)(chunk) + positions[None]
        for _ in range(self.depth):
            h = DiTBlock(self.num_heads, activation=self.activation)(h, c)
        shift, scale = jnp.split(nn.Dense(2 * self.d_model)(nn.silu(c))[:, None, :], 2, axis=-1)
        h = nn.LayerNorm(use_bias=False, use_scale=False)(h) * (1.0 + scale) + shift
        return nn.Dense(action_dim)(h).reshape(x.shape)


CHUNK_ACTORS = {"unet": ChunkUNet, "dit": ChunkDiT}


def make_chunk_actor(name: str, hidden_dim: int, depth: int, time_dim: int,
                     activation: str = "mish") -> nn.Module:
    """A chunk denoiser by registry name, sized by the agents' generic fields.

    * ``"unet"``: :class:`ChunkUNet` with ``down_dims = (hidden_dim, 2 hidden_dim, ...,
      2 ** (depth - 1) hidden_dim)`` (Diffusion Policy: ``hidden_dim=256, depth=3``);
      ``hidden_dim`` must be a multiple of 8 (GroupNorm groups).
    * ``"dit"``: :class:`ChunkDiT` with ``d_model = hidden_dim``, ``depth`` blocks and
      ``max(1, hidden_dim // 64)`` heads (``hidden_dim`` must then be divisible by the heads).
    """
    if name not in CHUNK_ACTORS:
        raise ValueError(f"Unknown chunk network {name!r}; expected one of {sorted(CHUNK_ACTORS)}.")
    get_activation(activation)
    if not (isinstance(depth, int) and depth >= 1):
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}.")
    if name == "unet":
        if hidden_dim % 8:
            raise ValueError(f"unet hidden_dim must be a multiple of 8 (GroupNorm groups), got "
                             f"{hidden_dim}.")
        return ChunkUNet(down_dims=tuple(hidden_dim * 2**i for i in range(depth)),
                         time_dim=time_dim, activation=activation)
    heads = max(1, hidden_dim // 64)
    if hidden_dim % heads:
        raise ValueError(f"dit hidden_dim={hidden_dim} is not divisible by its {heads} heads.")
    return ChunkDiT(d_model=hidden_dim, depth=depth, num_heads=heads, time_dim=time_dim,
                    activation=activation)


def num_params(params) -> int:
    """Total number of parameters in a params pytree."""
    return sum(math.prod(p.shape) for p in jax.tree.leaves(params))
