"""Parameterisation conversions, forward noising and the denoising loss."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import diffusion, schedules

KINDS = ("eps", "x0", "v")


@pytest.mark.parametrize("src", KINDS)
@pytest.mark.parametrize("dst", KINDS + ("score",))
def test_conversions_round_trip(src, dst, x64):
    key = jax.random.PRNGKey(0)
    x0, eps = jax.random.normal(key, (2, 5, 3), jnp.float64)
    sch = schedules.cosine()
    t = jnp.linspace(0.01, 0.99, 5)
    a, s = diffusion.expand_to(sch.alpha(t), x0), diffusion.expand_to(sch.sigma(t), x0)
    x = a * x0 + s * eps
    pred = diffusion.from_x0_eps(x0, eps, src, a, s)
    out = diffusion.convert(pred, src, dst, x, a, s)
    expected = -eps / s if dst == "score" else diffusion.from_x0_eps(x0, eps, dst, a, s)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)
    if dst != "score":
        back = diffusion.convert(out, dst, src, x, a, s)
        np.testing.assert_allclose(back, pred, rtol=1e-10, atol=1e-10)


def test_unknown_prediction_is_rejected():
    with pytest.raises(ValueError, match="Unknown prediction 'noise'"):
        diffusion.check_prediction("noise")


def test_q_sample_shapes_and_chunks():
    sch = schedules.cosine(50)
    x0 = jnp.ones((4, 8, 2))
    t = jnp.array([0, 10, 20, 49])
    x = diffusion.q_sample(sch, x0, t, jnp.zeros_like(x0))
    chex.assert_shape(x, (4, 8, 2))
    np.testing.assert_allclose(x[:, 0, 0], sch.alpha(np.asarray(t)), rtol=1e-6)


@pytest.mark.parametrize("prediction", KINDS)
def test_exact_denoiser_minimises_the_loss(prediction):
    """The Gaussian's exact denoiser has lower DSM loss than a perturbed one (same draws)."""
    sch = schedules.linear()
    m, s = jnp.array([0.5, -1.0]), jnp.array([0.3, 0.8])
    x0 = m[None] + s[None] * jax.random.normal(jax.random.PRNGKey(1), (4096, 2))
    den = diffusion.gaussian_denoiser(m, s, sch, prediction)
    bad = diffusion.gaussian_denoiser(m + 0.1, s * 1.2, sch, prediction)
    key = jax.random.PRNGKey(2)
    loss, aux = jax.jit(lambda k: diffusion.denoising_loss(den, sch, x0, None, k,
                                                           prediction=prediction))(key)
    loss_bad, _ = diffusion.denoising_loss(bad, sch, x0, None, key, prediction=prediction)
    assert loss < loss_bad
    chex.assert_shape(aux["t"], (4096,))
    chex.assert_shape(aux["x_t"], (4096, 2))
    assert np.isfinite(loss)


def test_loss_shape_mismatch_is_reported():
    sch = schedules.cosine(50)
    with pytest.raises(ValueError, match=r"denoiser returned shape \(8, 3\), expected \(8, 2\)"):
        diffusion.denoising_loss(lambda x, t, c: jnp.zeros((8, 3)), sch, jnp.zeros((8, 2)), None,
                                 jax.random.PRNGKey(0))


def test_mixture_denoiser_reduces_to_gaussian():
    sch = schedules.cosine()
    m, s = jnp.array([[0.3, -0.2]]), jnp.array([0.7])
    mix = diffusion.gaussian_mixture_denoiser(jnp.array([1.0]), m, s, sch, "x0")
    gau = diffusion.gaussian_denoiser(m[0], jnp.full((2,), 0.7), sch, "x0")
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    t = jnp.linspace(0.01, 0.9, 16)
    np.testing.assert_allclose(mix(x, t), gau(x, t), rtol=1e-5, atol=1e-6)
