"""Flax (linen, used functionally) networks for diffusion policies and critics.

Every module is pure: ``module.apply(params, ...)`` is the function that ``jax.jvp``, ``jax.vmap``
and the samplers need. Shapes use ``B`` for the batch.

* :class:`SinusoidalEmbedding`: ``t (B,) -> (B, dim)`` (Transformer / DDPM positional embedding).
* :class:`PositionalEmbedding`: CleanDiffuser's variant, with the official code's integer-t
  behaviour as a named option (see :data:`TIME_EMBEDDINGS`).
* :class:`DQLActor`: the Diffusion-QL denoiser (time MLP 64 -> 128 -> 64 with Mish, then
  ``[x, t_emb, obs] -> 3 x 256 Mish -> event``).
* :class:`LNResNetActor`: IDQL's LayerNorm residual MLP denoiser.
* :class:`PearceActor`: the official CDP imitation-learning backbone (CleanDiffuser's
  ``PearceMlp`` with its ``PearceObsCondition`` observation encoder).
* :class:`DoubleCritic`: twin Q, ``(obs, action) -> (2, B)``; each head LN-Tanh then LN-Mish blocks.
* :class:`ValueNetwork`: ``obs -> (B,)``.

Denoisers take ``x`` of shape ``(B, *event)`` (``event = (action_dim,)`` or
``(horizon, action_dim)``, flattened inside and reshaped back), ``t`` of shape ``(B,)`` (integer
step indices or floats; the two actors here also accept ``(1,)``, one level shared by the batch)
and ``cond`` of shape ``(B, ...)`` (flattened), and return an array with the shape of ``x``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cdp_jax.configs import names

# exp(20)^2 ~ 2e17 is finite in float32 and mish(x) == x to float32 precision beyond it.
_MISH_CUTOFF = 20.0


@jax.custom_jvp
def mish(x: jax.Array) -> jax.Array:
    """Mish, ``x * tanh(softplus(x))``, with one exponential.

    ``tanh(log(1 + e)) = n / (n + 2)`` with ``e = exp(x)`` and ``n = e (e + 2)``: exact, and cheaper
    than composing ``tanh`` and ``softplus`` (two transcendental calls per element on CPU).

    Its first and second derivatives are given in closed form (``custom_jvp``, see
    :func:`mish_slope`). The contraction penalties differentiate the network's Jacobian, i.e. take
    second derivatives of every activation: autodiff through the quotient costs 3-4x more there,
    and in float32 its second derivative is wrong near the cutoff (-160 at x = 19.998 where the
    true value is ~0).
    """
    e = jnp.exp(jnp.minimum(x, _MISH_CUTOFF))
    n = e * (e + 2.0)
    return jnp.where(x > _MISH_CUTOFF, x, x * n / (n + 2.0))


@mish.defjvp
def _mish_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return mish(x), mish_slope(x) * dx


@jax.custom_jvp
def mish_slope(x: jax.Array) -> jax.Array:
    """``mish'(x) = n / (n + 2) + 4 x e (1 + e) / (n + 2)^2`` (``e = exp(x)``, ``n = e (e + 2)``)."""
    e = jnp.exp(jnp.minimum(x, _MISH_CUTOFF))
    q = 1.0 / (e * (e + 2.0) + 2.0)
    return jnp.where(x > _MISH_CUTOFF, 1.0, 1.0 - 2.0 * q + 4.0 * x * e * (1.0 + e) * q * q)


@mish_slope.defjvp
def _mish_slope_jvp(primals, tangents):
    # mish''(x) = 4 e q^2 (2 (1 + e) + x (1 + 2 e) - 4 x e (1 + e)^2 q), q = 1 / (n + 2).
    (x,), (dx,) = primals, tangents
    e = jnp.exp(jnp.minimum(x, _MISH_CUTOFF))
    q = 1.0 / (e * (e + 2.0) + 2.0)
    curve = 4.0 * e * q * q * (2.0 * (1.0 + e) + x * (1.0 + 2.0 * e)
                               - 4.0 * x * e * (1.0 + e) ** 2 * q)
    return mish_slope(x), jnp.where(x > _MISH_CUTOFF, 0.0, curve) * dx


_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@jax.custom_jvp
def gelu_exact(x: jax.Array) -> jax.Array:
    """Exact GELU, ``x Phi(x)`` (PyTorch's ``nn.GELU()`` default), with closed-form first and
    second derivatives: ``Phi(x) + x phi(x)`` and ``phi(x) (2 - x^2)``. Same values as
    ``flax.linen.gelu(x, approximate=False)``; the penalties' second-order pass runs faster."""
    return 0.5 * x * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


@gelu_exact.defjvp
def _gelu_exact_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return gelu_exact(x), gelu_exact_slope(x) * dx


@jax.custom_jvp
def gelu_exact_slope(x: jax.Array) -> jax.Array:
    """``GELU'(x) = Phi(x) + x phi(x)``."""
    return 0.5 * (1.0 + jax.lax.erf(x / math.sqrt(2.0))) + x * _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)


@gelu_exact_slope.defjvp
def _gelu_exact_slope_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    curve = _INV_SQRT_2PI * jnp.exp(-0.5 * x * x) * (2.0 - x * x)
    return gelu_exact_slope(x), curve * dx


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def group_standardize(x: jax.Array, num_groups: int, eps: float) -> jax.Array:
    """``(x - mean) / sqrt(var + eps)`` over groups of ``C / num_groups`` channels of ``x (B, C)``
    (biased variance, as PyTorch's and Flax's GroupNorm). The JVP is given in closed form,
    ``rstd (dx - mean(dx) - xhat mean(xhat dx))`` per group, which the penalties' second-order
    pass differentiates faster than the autodiff of the reductions."""
    xc, rstd = _group_stats(x, num_groups, eps)
    return (xc * rstd).reshape(x.shape)


def _group_stats(x, num_groups, eps):
    b, c = x.shape
    xg = x.reshape(b, num_groups, c // num_groups)
    xc = xg - xg.mean(-1, keepdims=True)
    return xc, jax.lax.rsqrt(jnp.mean(xc * xc, -1, keepdims=True) + eps)


@group_standardize.defjvp
def _group_standardize_jvp(num_groups, eps, primals, tangents):
    (x,), (dx,) = primals, tangents
    xc, rstd = _group_stats(x, num_groups, eps)
    xhat = xc * rstd
    dg = dx.reshape(xc.shape)
    dg = dg - dg.mean(-1, keepdims=True)
    dxhat = rstd * (dg - xhat * jnp.mean(xhat * dg, -1, keepdims=True))
    return xhat.reshape(x.shape), dxhat.reshape(x.shape)


class GroupNorm1d(nn.Module):
    """GroupNorm of ``(B, C)`` features, parameters ``scale``, ``bias`` as ``nn.GroupNorm``."""

    num_groups: int = 8
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm1d: {c} channels do not split into {self.num_groups} groups.")
        scale = self.param("scale", nn.initializers.ones_init(), (c,))
        bias = self.param("bias", nn.initializers.zeros_init(), (c,))
        return group_standardize(x, self.num_groups, self.epsilon) * scale[None] + bias[None]


ACTIVATIONS = {"mish": mish, "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu, "tanh": jnp.tanh}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def _float_dtype():
    """float64 when x64 is enabled (parity tests), else float32."""
    return jnp.result_type(float)


class SinusoidalEmbedding(nn.Module):
    """``t (B,) -> (B, dim)``: ``[sin(t w_k), cos(t w_k)]``, ``w_k = 10000^(-k / (dim/2 - 1))``."""

    dim: int

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        half = self.dim // 2
        scale = math.log(10000.0) / max(half - 1, 1)
        dtype = _float_dtype()
        freqs = jnp.exp(-scale * jnp.arange(half, dtype=dtype))
        args = t.astype(dtype)[:, None] * freqs[None, :]
        return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class PositionalEmbedding(nn.Module):
    """CleanDiffuser's ``PositionalEmbedding``: ``[cos(t f_k), sin(t f_k)]``, ``f_k = 10000^(-k/(dim/2))``.

    ``integer_t=True`` reproduces the official CDP code, which feeds integer (``long``) step
    indices: torch then casts the frequencies to integers, so ``f = [1, 0, ..., 0]`` and only
    ``cos t`` and ``sin t`` vary; levels ``t`` and ``t + 44`` (``44 ~ 7 * 2 pi``) look almost
    alike to the network. A quirk of the official code, kept only for parity (docs/PARITY.md).
    """

    dim: int
    integer_t: bool = False

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        half = self.dim // 2
        dtype = _float_dtype()
        freqs = (1.0 / 10000.0) ** (jnp.arange(half, dtype=dtype) / half)
        if self.integer_t:
            freqs = jnp.trunc(freqs)
        args = t.astype(dtype)[:, None] * freqs[None, :]
        return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


# name -> embedding module builder (dim -> module).
TIME_EMBEDDINGS = {
    "sinusoidal": SinusoidalEmbedding,
    "positional": lambda dim: PositionalEmbedding(dim),
    "positional_integer_t": lambda dim: PositionalEmbedding(dim, integer_t=True),
}


def time_embedding(name: str, dim: int) -> nn.Module:
    """The time embedding ``name`` (a key of :data:`TIME_EMBEDDINGS`) of width ``dim``."""
    if name not in TIME_EMBEDDINGS:
        raise ValueError(f"Unknown time_embedding {name!r}; expected one of "
                         f"{sorted(TIME_EMBEDDINGS)}.")
    return TIME_EMBEDDINGS[name](dim)


# Parameter initialisations. "flax": lecun-normal kernels, zero biases. "torch": PyTorch's
# nn.Linear default (kaiming-uniform with a = sqrt(5), i.e. U(+-1/sqrt(fan_in)) for the kernel and
# the bias), what the official code's networks start from.
INITS = names.INITS


def _torch_uniform(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def dense(features: int, fan_in: int, init: str = "flax", name: str | None = None,
          use_bias: bool = True) -> nn.Dense:
    """``nn.Dense`` with the ``init`` scheme of :data:`INITS` (``fan_in``: input width, for
    ``"torch"``)."""
    if init == "torch":
        return nn.Dense(features, kernel_init=_torch_uniform(fan_in),
                        bias_init=_torch_uniform(fan_in), use_bias=use_bias, name=name)
    return nn.Dense(features, use_bias=use_bias, name=name)


def _flatten_batch(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def _dense_params(module: nn.Module, width: int, features: int, init: str):
    """``(kernel (width, features), bias (features,))`` created as ``nn.Dense`` names and
    initialises them (``init`` of :data:`INITS`), for modules that apply one kernel by parts."""
    torch_init = init == "torch"
    kernel = module.param("kernel", _torch_uniform(width) if torch_init
                          else nn.initializers.lecun_normal(), (width, features))
    bias = module.param("bias", _torch_uniform(width) if torch_init
                        else nn.initializers.zeros_init(), (features,))
    return kernel, bias


class ConcatDense(nn.Module):
    """``Dense([x, temb, cond])`` (parameters exactly those of ``nn.Dense``) where ``temb`` may have
    a batch of 1 (one noise level shared by the batch, as in every sampler step).

    With a shared ``temb`` its rows of the kernel are applied once and broadcast, instead of to
    ``B`` identical rows: in a 15-step TD-target sampler this and the time MLP run once per step
    are about a fifth of the Diffusion-QL actor's FLOPs.
    """

    features: int
    param_init: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, cond: jax.Array) -> jax.Array:
        dx, dt = x.shape[-1], temb.shape[-1]
        kernel, bias = _dense_params(self, dx + dt + cond.shape[-1], self.features,
                                     self.param_init)
        bias = bias[None, :]
        if temb.shape[0] == x.shape[0]:  # per-sample noise levels: one matmul, as nn.Dense
            return jnp.dot(jnp.concatenate([x, temb, cond], axis=-1), kernel) + bias
        kernel_xc = jnp.concatenate([kernel[:dx], kernel[dx + dt:]], axis=0)
        shared = jnp.dot(temb, kernel[dx:dx + dt]) + bias  # (1, features)
        return jnp.dot(jnp.concatenate([x, cond], axis=-1), kernel_xc) + shared


class SplitDense(nn.Module):
    """``Dense(concatenate(parts, -1))`` computed as ``sum_i parts[i] @ kernel[rows_i] + bias``
    (parameters exactly those of ``nn.Dense`` over the concatenation).

    The same numbers, but a part that does not depend on the input being differentiated (the
    noise level, the observation) then adds nothing to a Jacobian-vector product: the exact
    contraction penalty pushes ``d`` tangents of the noisy action through the network, and with
    one concatenated matmul those tangents would be padded with zeros for every other part.
    """

    features: int
    param_init: str = "flax"

    @nn.compact
    def __call__(self, parts) -> jax.Array:
        widths = [p.shape[-1] for p in parts]
        kernel, bias = _dense_params(self, sum(widths), self.features, self.param_init)
        out, start = bias[None, :], 0
        for part, w in zip(parts, widths, strict=True):
            out = out + jnp.dot(part, kernel[start:start + w])
            start += w
        return out


class DQLActor(nn.Module):
    """Diffusion-QL denoiser: ``(x (B, *event), t (B,) or (1,), cond (B, ...)) -> (B, *event)``.

    ``t`` of shape ``(1,)`` is one noise level for the whole batch (what a sampler step uses); the
    time path then runs once instead of on ``B`` identical rows. Same parameters either way.
    """

    hidden_dim: int = 256
    num_layers: int = 3
    time_dim: int = 64
    activation: str = "mish"
    time_embedding: str = "sinusoidal"
    param_init: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        d, init = self.time_dim, self.param_init
        temb = time_embedding(self.time_embedding, d)(t)
        temb = dense(d * 2, d, init, name="Dense_0")(temb)
        temb = dense(d, d * 2, init, name="Dense_1")(act(temb))
        # Named as the nn.Dense it replaces, so parameter trees (and checkpoints) are unchanged.
        h = act(ConcatDense(self.hidden_dim, init, name="Dense_2")(
            _flatten_batch(x), temb, _flatten_batch(cond)))
        for i in range(self.num_layers - 1):
            h = act(dense(self.hidden_dim, self.hidden_dim, init, name=f"Dense_{3 + i}")(h))
        out = dense(math.prod(x.shape[1:]), self.hidden_dim, init,
                    name=f"Dense_{2 + self.num_layers}")(h)
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
    time_embedding: str = "sinusoidal"

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        temb = time_embedding(self.time_embedding, self.time_dim)(t)
        temb = nn.Dense(self.time_dim)(act(nn.Dense(self.time_dim * 2)(temb)))
        temb = jnp.broadcast_to(temb, (x.shape[0], temb.shape[-1]))  # t (1,): shared level
        h = jnp.concatenate([_flatten_batch(x), temb, _flatten_batch(cond)], axis=-1)
        h = nn.Dense(self.hidden_dim)(h)
        for _ in range(self.num_blocks):
            r = nn.Dense(self.hidden_dim * self.expansion)(nn.LayerNorm()(h))
            h = h + nn.Dense(self.hidden_dim)(act(r))
        out = nn.Dense(math.prod(x.shape[1:]))(act(h))
        return out.reshape(x.shape)


class PearceActor(nn.Module):
    """The official CDP imitation-learning denoiser: CleanDiffuser's ``PearceMlp`` conditioned on
    its ``PearceObsCondition`` encoder (Pearce et al. 2023), as one module.

    ``obs (B, To, obs_dim)`` -> per-frame MLP ``obs_dim -> emb -> emb`` (LeakyReLU); the action
    ``x (B, *event)`` (flattened) -> ``act -> emb -> emb`` (LeakyReLU); then
    ``h1 = FC([x_e, t_e, obs_e])`` and two residual blocks
    ``h_{k+1} = FC([h_k / 1.414, x, t]) + h_k / 1.414``, output ``Dense([h_3, x, t])``, where
    ``FC = Dense -> GroupNorm(8 groups, eps 1e-5) -> exact GELU`` and ``t`` enters both embedded
    and raw (as a float). Hidden 512, embedding 128 in the official scripts.
    """

    hidden_dim: int = 512
    emb_dim: int = 128
    time_embedding: str = "positional_integer_t"
    param_init: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
        e, h, init = self.emb_dim, self.hidden_dim, self.param_init
        b = x.shape[0]
        xf = _flatten_batch(x)
        act_dim = xf.shape[-1]
        if cond.ndim == 2:  # one observation frame
            cond = cond[:, None, :]
        obs_e = dense(e, cond.shape[-1], init, name="obs_in")(cond)
        obs_e = dense(e, e, init, name="obs_out")(nn.leaky_relu(obs_e)).reshape(b, -1)
        x_e = dense(e, act_dim, init, name="act_in")(xf)
        x_e = dense(e, e, init, name="act_out")(nn.leaky_relu(x_e))
        t_e = jnp.broadcast_to(time_embedding(self.time_embedding, e)(t), (b, e))
        t_raw = jnp.broadcast_to(t.astype(xf.dtype)[:, None], (b, 1))

        def block(parts, name):  # Dense over the concatenated parts (see SplitDense)
            y = SplitDense(h, init, name=name)(parts)
            y = GroupNorm1d(num_groups=min(8, h // 4), epsilon=1e-5, name=f"{name}_norm")(y)
            return gelu_exact(y)

        # the parts that depend on the action first, the others (time, observation) joined
        h1 = block([x_e, jnp.concatenate([t_e, obs_e], axis=-1)], "fc1")
        h2 = block([h1 / 1.414, xf, t_raw], "fc2") + h1 / 1.414
        h3 = block([h2 / 1.414, xf, t_raw], "fc3") + h2 / 1.414
        out = SplitDense(act_dim, init, name="fc_out")([h3, xf, t_raw])
        return out.reshape(x.shape)


ACTORS = {"mlp": DQLActor, "lnresnet": LNResNetActor, "pearce": PearceActor}


def make_actor(name: str, hidden_dim: int, depth: int, time_dim: int,
               activation: str = "mish", expansion: int = 4, *,
               time_embedding: str = "sinusoidal", init: str = "flax") -> nn.Module:
    """Actor by registry name: ``"mlp"`` (:class:`DQLActor`), ``"lnresnet"`` (LN-ResNet, whose
    blocks widen by ``expansion``; ignored by the MLP) or ``"pearce"`` (:class:`PearceActor`, the
    official IL backbone; ``time_dim`` is its embedding width, ``depth`` and ``activation`` are
    fixed by the architecture). ``init`` (``"flax"`` or ``"torch"``) applies to the MLP and Pearce
    actors."""
    if name not in ACTORS:
        raise ValueError(f"Unknown actor network {name!r}; expected one of {sorted(ACTORS)}.")
    if init not in INITS:
        raise ValueError(f"Unknown init {init!r}; expected one of {INITS}.")
    get_activation(activation)
    if time_embedding not in TIME_EMBEDDINGS:
        raise ValueError(f"Unknown time_embedding {time_embedding!r}; expected one of "
                         f"{sorted(TIME_EMBEDDINGS)}.")
    if name == "mlp":
        return DQLActor(hidden_dim=hidden_dim, num_layers=depth, time_dim=time_dim,
                        activation=activation, time_embedding=time_embedding, param_init=init)
    if name == "pearce":
        return PearceActor(hidden_dim=hidden_dim, emb_dim=time_dim, time_embedding=time_embedding,
                           param_init=init)
    return LNResNetActor(hidden_dim=hidden_dim, num_blocks=depth, time_dim=time_dim,
                         activation=activation, expansion=expansion,
                         time_embedding=time_embedding)


class QHead(nn.Module):
    """One Q network: ``[obs, act] -> Dense-LN-Tanh -> (Dense-LN-Mish) x (n-1) -> 1``.

    ``layer_norm_eps``: flax's 1e-6 by default; PyTorch's (and the official code's) is 1e-5.
    """

    hidden_dims: Sequence[int] = (256, 256, 256)
    layer_norm_eps: float = 1e-6
    param_init: str = "flax"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        h = jnp.concatenate([_flatten_batch(obs), _flatten_batch(action)], axis=-1)
        for i, width in enumerate(self.hidden_dims):
            h = dense(width, h.shape[-1], self.param_init, name=f"Dense_{i}")(h)
            h = nn.LayerNorm(epsilon=self.layer_norm_eps, name=f"LayerNorm_{i}")(h)
            h = jnp.tanh(h) if i == 0 else mish(h)
        return dense(1, h.shape[-1], self.param_init, name=f"Dense_{len(self.hidden_dims)}")(h)[:, 0]


class DoubleCritic(nn.Module):
    """Twin Q: ``(obs (B, ...), action (B, ...)) -> (2, B)``; two heads, separate weights."""

    hidden_dims: Sequence[int] = (256, 256, 256)
    layer_norm_eps: float = 1e-6
    param_init: str = "flax"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        ensemble = nn.vmap(QHead, variable_axes={"params": 0}, split_rngs={"params": True},
                           in_axes=None, out_axes=0, axis_size=2)
        return ensemble(tuple(self.hidden_dims), self.layer_norm_eps, self.param_init)(obs, action)


def apply_critic_head(critic: DoubleCritic, params: dict, index: jax.Array, obs: jax.Array,
                      action: jax.Array) -> jax.Array:
    """``Q_index(obs, action)``, ``(B,)``: one head (``index`` may be traced) of a DoubleCritic.

    Equals ``critic.apply(params, obs, action)[index]`` but runs, and differentiates, one head.
    """
    heads = params["params"]["VmapQHead_0"]
    one = jax.tree.map(lambda p: jax.lax.dynamic_index_in_dim(p, index, keepdims=False), heads)
    head = QHead(tuple(critic.hidden_dims), critic.layer_norm_eps, critic.param_init)
    return head.apply({"params": one}, obs, action)


class ValueNetwork(nn.Module):
    """State value ``V(obs)``: ``(B, ...) -> (B,)``, LayerNorm-Mish MLP."""

    hidden_dims: Sequence[int] = (256, 256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        h = _flatten_batch(obs)
        for width in self.hidden_dims:
            h = mish(nn.LayerNorm()(nn.Dense(width)(h)))
        return nn.Dense(1)(h)[:, 0]
