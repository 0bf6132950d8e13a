"""Networks: shapes, dtypes, the one-exponential Mish against its definition."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import networks


def test_mish_matches_definition(x64):
    x = jnp.linspace(-40.0, 40.0, 4001)
    reference = x * jnp.tanh(jax.nn.softplus(x))
    np.testing.assert_allclose(networks.mish(x), reference, rtol=1e-12, atol=1e-12)
    g = jax.jit(jax.vmap(jax.grad(networks.mish)))(x)
    g_ref = jax.jit(jax.vmap(jax.grad(lambda v: v * jnp.tanh(jax.nn.softplus(v)))))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-9, atol=1e-9)
    h = jax.jit(jax.vmap(jax.grad(jax.grad(networks.mish))))(x)
    h_ref = jax.jit(jax.vmap(jax.grad(jax.grad(lambda v: v * jnp.tanh(jax.nn.softplus(v))))))(x)
    np.testing.assert_allclose(h, h_ref, rtol=1e-8, atol=1e-9)
    h3 = jax.jit(jax.vmap(jax.grad(jax.grad(jax.grad(networks.mish)))))(x)
    h3_ref = jax.jit(jax.vmap(jax.grad(jax.grad(jax.grad(
        lambda v: v * jnp.tanh(jax.nn.softplus(v)))))))(x)
    np.testing.assert_allclose(h3, h3_ref, rtol=1e-8, atol=1e-9)


def test_mish_second_derivative_in_float32():
    """The penalties differentiate Jacobians, i.e. second derivatives of Mish: they must hold in
    float32 too, where autodiff of the quotient formula gave -160 near the cutoff (true ~0)."""
    x = jnp.linspace(-30.0, 30.0, 6001, dtype=jnp.float32)
    h = np.asarray(jax.vmap(jax.grad(jax.grad(networks.mish)))(x), np.float64)
    xd = np.asarray(x, np.float64)
    e, sp = np.exp(xd), np.log1p(np.exp(xd))
    sech2, sig = 1.0 / np.cosh(sp) ** 2, e / (1.0 + e)
    # d/dx [tanh(sp) + x sech^2(sp) sig] with d sp/dx = sig, d sig/dx = sig (1 - sig)
    h_ref = (2 * sech2 * sig - 2 * xd * sech2 * np.tanh(sp) * sig**2 + xd * sech2 * sig * (1 - sig))
    np.testing.assert_allclose(h, h_ref, atol=2e-6)


def test_sinusoidal_embedding_shape():
    emb = networks.SinusoidalEmbedding(16)
    out = emb.apply({}, jnp.arange(5))
    chex.assert_shape(out, (5, 16))
    chex.assert_type(out, jnp.float32)


@pytest.mark.parametrize("name,event", [
    ("mlp", (3,)), ("lnresnet", (3,)), ("mlp", (4, 2)),
    *(pytest.param(n, e, marks=pytest.mark.slow) for n, e in [
        ("pearce", (3,)), ("pearce", (4, 2)), ("lnresnet", (4, 2))])])
def test_actor_shapes(name, event):
    actor = networks.make_actor(name, hidden_dim=32, depth=2, time_dim=16)
    x = jnp.ones((5, *event))
    t = jnp.arange(5, dtype=jnp.int32)
    cond = jnp.ones((5, 2, 7))
    params = actor.init(jax.random.PRNGKey(0), x, t, cond)
    out = actor.apply(params, x, t, cond)
    chex.assert_shape(out, (5, *event))
    chex.assert_type(out, jnp.float32)
    # jit and vmap (over a leading axis of batches) give the same values
    out_jit = jax.jit(actor.apply)(params, x, t, cond)
    out_vmap = jax.vmap(actor.apply, in_axes=(None, 0, 0, 0))(params, x[None], t[None], cond[None])
    np.testing.assert_allclose(out_jit, out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_vmap[0], out, rtol=1e-5, atol=1e-6)


def test_double_critic_two_independent_heads():
    critic = networks.DoubleCritic(hidden_dims=(32, 32))
    obs, act = jax.random.normal(jax.random.PRNGKey(1), (6, 5)), jnp.zeros((6, 2))
    params = critic.init(jax.random.PRNGKey(0), obs, act)
    q = critic.apply(params, obs, act)
    chex.assert_shape(q, (2, 6))
    assert not np.allclose(q[0], q[1])  # separately initialised heads


def test_value_network_shape():
    value = networks.ValueNetwork(hidden_dims=(32,))
    obs = jnp.ones((4, 3))
    out = value.apply(value.init(jax.random.PRNGKey(0), obs), obs)
    chex.assert_shape(out, (4,))


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="actor network"):
        networks.make_actor("transformer", 8, 1, 8)
    with pytest.raises(ValueError, match="activation"):
        networks.get_activation("swish2")


def test_gelu_exact_and_group_standardize_derivatives(x64):
    """The closed-form derivatives agree with autodiff of the definitions to third order (GELU)
    and second order (GroupNorm), so the penalties' gradients are unchanged."""
    import flax.linen as nn

    x = jnp.linspace(-8.0, 8.0, 801)
    ref = lambda v: 0.5 * v * (1.0 + jax.scipy.special.erf(v / np.sqrt(2.0)))
    np.testing.assert_allclose(networks.gelu_exact(x), nn.gelu(x, approximate=False), atol=1e-15)
    for order in range(1, 4):
        f, g = networks.gelu_exact, ref
        for _ in range(order):
            f, g = jax.grad(f), jax.grad(g)
        np.testing.assert_allclose(jax.jit(jax.vmap(f))(x), jax.jit(jax.vmap(g))(x), rtol=1e-9,
                                   atol=1e-12)
    y = jax.random.normal(jax.random.PRNGKey(0), (3, 32), jnp.float64) * 2.0 + 0.5
    gn = lambda v: nn.GroupNorm(num_groups=4, epsilon=1e-5, use_scale=False, use_bias=False).apply({}, v)
    ours = lambda v: networks.group_standardize(v, 4, 1e-5)
    np.testing.assert_allclose(ours(y), gn(y), atol=1e-13)
    loss = lambda fn: (lambda v: jnp.sum(jnp.sin(fn(v)) * jnp.arange(32.0)[None]))
    np.testing.assert_allclose(jax.jit(jax.grad(loss(ours)))(y), jax.jit(jax.grad(loss(gn)))(y),
                               atol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.hessian(loss(ours)))(y[:1]),
                               jax.jit(jax.hessian(loss(gn)))(y[:1]), atol=1e-11)
