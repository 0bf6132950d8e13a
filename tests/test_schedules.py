"""Schedules against closed forms and their float64 numpy evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import schedules

ALL = [schedules.linear(), schedules.cosine(), schedules.linear(50), schedules.cosine(50),
       schedules.linear(1000)]


@pytest.mark.parametrize("sch", ALL, ids=lambda s: f"{s.kind}-{s.num_steps}")
def test_variance_preserving_and_monotone(sch):
    t = sch.time_grid(min(40, sch.num_steps or 40), "uniform")
    a, s = sch.alpha(t), sch.sigma(t)
    np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-12)
    assert np.all(np.diff(a) > 0), "alpha must increase from noise to data along the grid"
    assert a[-1] == 1.0 and s[-1] == 0.0  # the clean point
    lam = sch.log_snr(t)
    assert np.all(np.diff(lam) > 0)
    np.testing.assert_allclose(lam[:-1], np.log(a[:-1] / s[:-1]), rtol=1e-10)


@pytest.mark.parametrize("sch", ALL, ids=lambda s: f"{s.kind}-{s.num_steps}")
def test_jax_path_matches_numpy_path(sch):
    t = sch.time_grid(min(20, sch.num_steps or 20), "uniform")[:-1]
    for fn in ("alpha", "sigma", "log_snr", "beta"):
        ref = getattr(sch, fn)(t)
        got = jax.jit(getattr(sch, fn))(jnp.asarray(t))
        np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-5, err_msg=fn)


def test_discrete_linear_is_diffusion_ql_vp_schedule():
    T = 5
    i = np.arange(1, T + 1)
    betas = 1 - np.exp(-0.1 / T - 0.5 * (20.0 - 0.1) * (2 * i - 1) / T**2)
    np.testing.assert_allclose(schedules.linear(T).alpha(np.arange(T)) ** 2, np.cumprod(1 - betas),
                               rtol=1e-12)


def test_discrete_cosine_matches_iddpm_formula():
    T, s = 50, 0.008
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.clip(1 - f(np.arange(1, T + 1) / T) / f(np.arange(T) / T), 0, 0.999)
    np.testing.assert_allclose(schedules.cosine(T).alpha(np.arange(T)) ** 2, np.cumprod(1 - betas),
                               rtol=1e-10)


@pytest.mark.parametrize("sch", [schedules.linear(), schedules.cosine()], ids=["linear", "cosine"])
def test_beta_is_minus_twice_dlogalpha_dt(sch):
    t = np.linspace(0.05, 0.95, 7)
    h = 1e-6
    fd = -2 * (sch.log_alpha(t + h) - sch.log_alpha(t - h)) / (2 * h)
    np.testing.assert_allclose(sch.beta(t), fd, rtol=1e-6)


@pytest.mark.parametrize("sch", [schedules.linear(), schedules.cosine()], ids=["linear", "cosine"])
def test_logsnr_grid_is_uniform_in_lambda(sch):
    lam = sch.log_snr(sch.time_grid(12, "logsnr")[:-1])
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-8)


def test_grid_errors_are_clear():
    with pytest.raises(ValueError, match="exceeds the discrete schedule's num_steps=50"):
        schedules.cosine(50).time_grid(51)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        schedules.cosine().time_grid(0)
    with pytest.raises(ValueError, match="Unknown spacing 'log'"):
        schedules.cosine().time_grid(5, "log")
    with pytest.raises(ValueError, match="t_max < 1"):
        schedules.cosine(t_max=1.0)


def test_schedules_are_hashable_static_pytrees():
    sch = schedules.cosine(50)
    assert hash(sch) == hash(schedules.cosine(50))
    assert jax.tree_util.tree_leaves(sch) == []
    out = jax.jit(lambda s, t: s.alpha(t))(sch, jnp.arange(3))
    np.testing.assert_allclose(out, sch.alpha(np.arange(3)), rtol=1e-6)
