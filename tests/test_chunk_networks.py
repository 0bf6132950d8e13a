"""Chunk denoisers (temporal UNet, DiT): shapes, jit, per-sample independence, use by the samplers
and the contraction estimate against the exact Jacobian reference on a small chunk."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import chunk_networks, contraction, samplers, schedules

# Tiny sizes: these tests compile every network on a shared 2-core CPU.
TINY = {"unet": {"hidden_dim": 8, "depth": 2, "time_dim": 8},
        "dit": {"hidden_dim": 16, "depth": 1, "time_dim": 8}}
OBS = (2, 5)  # observation history H = 2 of 5-D observations


@functools.lru_cache  # tests asking for the same network share its initialisation (a compilation)
def _net_and_params(name, chunk, batch=3, seed=0):
    net = chunk_networks.make_chunk_actor(name, **TINY[name])
    kx, kc, kp = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, (batch, *chunk))
    cond = jax.random.normal(kc, (batch, *OBS))
    t = jnp.arange(batch, dtype=jnp.int32) * 7 + 1
    return net, jax.jit(net.init)(kp, x, t, cond), x, t, cond


@pytest.mark.slow  # test_samplers_run_chunk_denoiser and the contraction estimate run both nets
@pytest.mark.parametrize("name", sorted(chunk_networks.CHUNK_ACTORS))
def test_chunk_shapes_jit_and_per_sample(name):
    """A 16 x 7 chunk in, a 16 x 7 chunk out, under jit; one compilation per network."""
    net, params, x, t, cond = _net_and_params(name, (16, 7))
    apply = jax.jit(net.apply)
    out = apply(params, x, t, cond)
    chex.assert_shape(out, x.shape)
    chex.assert_tree_all_finite(out)
    # The contraction targets call the network on one sample at a time: a sample's output must
    # not depend on the rest of the batch (no batch statistics).
    changed = apply(params, x.at[0].set(5.0), t, cond)
    np.testing.assert_allclose(changed[1:], out[1:], rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(changed[0] - out[0]).max()) > 1e-4
    # Outputs move with t and with the conditioning (FiLM / adaLN are wired in).
    assert float(jnp.abs(apply(params, x, t + 20, cond) - out).max()) > 1e-4
    assert float(jnp.abs(apply(params, x, t, cond + 1.0) - out).max()) > 1e-4


# The UNet case (jacfwd + Lanczos through conv-transposes) is the costliest compilation of the
# default run (~20 s of CPU), so slow; the UNet's contraction gradients are also slow-tested below.
@pytest.mark.parametrize("name,target", [pytest.param("unet", "drift", marks=pytest.mark.slow),
                                         ("dit", "network")])
def test_contraction_estimate_matches_exact(name, target):
    """Matrix-free Lanczos estimate vs jacfwd + eigvalsh on a 3 x 2 chunk (d = 6; 3 is padded to 4
    inside the UNet), for the "drift" and the "network" targets; with K = d Lanczos steps the
    estimate equals the exact value up to rounding."""
    net, params, x, t, cond = _net_and_params(name, (3, 2), batch=2)
    schedule = schedules.cosine(50)
    denoiser = lambda xb, tb, cb: net.apply(params, xb, tb, cb)

    @jax.jit
    def estimate_and_exact(x_i, t_i, cond_i, key):
        fn = contraction.target_function(target, denoiser, schedule, t_i, cond_i[None], "x0")
        return (contraction.max_sym_eigenvalue(fn, x_i, key, num_iters=6),
                contraction.exact_max_sym_eigenvalue(fn, x_i))

    for i in range(x.shape[0]):  # two noise levels (t = 1 and 8 of 50)
        estimate, exact = estimate_and_exact(x[i], t[i], cond[i], jax.random.PRNGKey(i))
        np.testing.assert_allclose(estimate, exact, rtol=2e-4, atol=2e-4)
        assert abs(float(exact)) > 1e-3  # a non-trivial Jacobian, not zero at init


def test_samplers_run_chunk_denoiser():
    net, params, x, t, cond = _net_and_params("dit", (16, 7))
    denoiser = lambda xb, tb, cb: net.apply(params, xb, tb, cb)
    sample = jax.jit(lambda key: samplers.sample(denoiser, schedules.cosine(50), key, x.shape,
                                                 cond=cond, method="ddim", steps=3, prediction="x0",
                                                 clip_x0=(-1.0, 1.0)))
    out = sample(jax.random.PRNGKey(0))
    chex.assert_shape(out, x.shape)
    assert float(jnp.abs(out).max()) <= 1.0 + 1e-5


@pytest.mark.slow  # a few minutes of compilation on a loaded 2-core CPU
def test_contraction_regulariser_gradients_through_unet():
    net, params, x, t, cond = _net_and_params("unet", (4, 2), batch=4)
    schedule = schedules.cosine(50)
    config = contraction.ContractionConfig(weight=1.0, window=1.0, num_penalised=2, num_iters=3,
                                           target="drift")

    def loss(p):
        denoiser = lambda xb, tb, cb: net.apply(p, xb, tb, cb)
        return contraction.contraction_regulariser(config, denoiser, schedule, x, t, cond,
                                                   jax.random.PRNGKey(1), prediction="x0")[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value))
    chex.assert_tree_all_finite(grads)
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)) > 0


def test_make_chunk_actor_validates():
    with pytest.raises(ValueError, match="Unknown chunk network 'tcn'"):
        chunk_networks.make_chunk_actor("tcn", 64, 2, 32)
    with pytest.raises(ValueError, match="multiple of 8"):
        chunk_networks.make_chunk_actor("unet", 12, 2, 32)
    unet = chunk_networks.make_chunk_actor("unet", 256, 3, 128)
    assert tuple(unet.down_dims) == (256, 512, 1024)  # Diffusion Policy's default
    dit = chunk_networks.make_chunk_actor("dit", 384, 6, 128, "gelu")
    assert (dit.d_model, dit.depth, dit.num_heads) == (384, 6, 6)
