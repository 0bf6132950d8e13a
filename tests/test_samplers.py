"""Samplers against closed-form Gaussian and mixture targets, and their orders of accuracy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import diffusion, samplers, schedules

M, S = jnp.array([0.5, -1.0]), jnp.array([0.3, 0.8])

# Enough steps for each method's order to reach 3% on mean and std (see the module docstring).
SETTINGS = {
    "ddpm": dict(steps=400, spacing="quadratic"),
    "ddim": dict(steps=200, spacing="quadratic"),
    "dpm_solver_pp_1s": dict(steps=200, spacing="quadratic"),
    "dpm_solver_pp_2m": dict(steps=25, spacing="logsnr"),
    "euler_maruyama": dict(steps=200, spacing="quadratic"),
    "heun": dict(steps=25, spacing="uniform"),
}


def test_registry_is_complete_and_describes_itself():
    assert set(SETTINGS) == set(samplers.SAMPLERS)
    assert samplers.SAMPLERS["dpm_solver_pp_2m"].order == 2
    assert samplers.SAMPLERS["ddpm"].stochastic and not samplers.SAMPLERS["ddim"].stochastic


@pytest.mark.parametrize("method", sorted(SETTINGS))
@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_gaussian_moments(method, prediction):
    sch = schedules.cosine()
    den = diffusion.gaussian_denoiser(M, S, sch, prediction)
    run = jax.jit(lambda k: samplers.sample(den, sch, k, (8192, 2), method=method,
                                            prediction=prediction, **SETTINGS[method]))
    x = run(jax.random.PRNGKey(0))
    chex.assert_shape(x, (8192, 2))
    chex.assert_type(x, jnp.float32)
    np.testing.assert_allclose(x.mean(0), M, atol=0.03 * float(S.max()))
    np.testing.assert_allclose(x.std(0), S, rtol=0.03)


@pytest.mark.parametrize("method", ["ddpm", "dpm_solver_pp_2m",
                                    pytest.param("euler_maruyama", marks=pytest.mark.slow)])
def test_mixture_mode_weights(method):
    sch = schedules.linear()
    weights = jnp.array([0.3, 0.7])
    den = diffusion.gaussian_mixture_denoiser(weights, jnp.array([[-2.0], [2.0]]),
                                              jnp.array([0.3, 0.3]), sch, "eps")
    x = jax.jit(lambda k: samplers.sample(den, sch, k, (8192, 1), method=method,
                                          **SETTINGS[method]))(jax.random.PRNGKey(3))
    frac_right = float(jnp.mean(x[:, 0] > 0))
    assert abs(frac_right - 0.7) < 0.02  # 4 standard errors at n = 8192
    right = x[x[:, 0] > 0, 0]
    np.testing.assert_allclose(float(right.std()), 0.3, rtol=0.05)


def _exact_endpoint(sch, x_init):
    """The probability-flow ODE of Gaussian data maps standardised marginals to each other, so
    x(t_min) is known in closed form; the samplers end at x0_hat(x(t_min))."""
    a_T, s_T = sch.alpha(sch.t_max), sch.sigma(sch.t_max)
    a0, s0 = sch.alpha(sch.t_min), sch.sigma(sch.t_min)
    z = (x_init - a_T * M[None]) / jnp.sqrt(a_T**2 * S[None] ** 2 + s_T**2)
    x_min = a0 * M[None] + jnp.sqrt(a0**2 * S[None] ** 2 + s0**2) * z
    den = diffusion.gaussian_denoiser(M, S, sch, "x0")
    return den(x_min, jnp.full((x_init.shape[0],), sch.t_min))


@pytest.mark.parametrize("method,order", [("ddim", 1), ("dpm_solver_pp_1s", 1),
                                          ("dpm_solver_pp_2m", 2), ("heun", 2)])
def test_convergence_order(method, order, x64):
    sch = schedules.linear()
    den = diffusion.gaussian_denoiser(M, S, sch, "eps")
    x_init = jax.random.normal(jax.random.PRNGKey(1), (256, 2), jnp.float64)
    exact = _exact_endpoint(sch, x_init)
    intervals = np.array([16, 32, 64, 128])
    errors = []
    for n in intervals:
        x = samplers.sample(den, sch, jax.random.PRNGKey(0), (256, 2), method=method,
                            steps=int(n) + 1, spacing="logsnr", x_init=x_init, dtype=jnp.float64)
        errors.append(float(jnp.max(jnp.abs(x - exact))))
    slope = -np.polyfit(np.log(intervals), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.2, (errors, slope)


def test_dpm_solver_pp_1s_equals_ddim(x64):
    sch = schedules.cosine(50)
    den = diffusion.gaussian_denoiser(M, S, sch, "x0")
    kw = dict(steps=10, prediction="x0", dtype=jnp.float64)
    a = samplers.sample(den, sch, jax.random.PRNGKey(0), (64, 2), method="ddim", **kw)
    b = samplers.sample(den, sch, jax.random.PRNGKey(0), (64, 2), method="dpm_solver_pp_1s", **kw)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# dpm_solver_pp_1s is DDIM (test_dpm_solver_pp_1s_equals_ddim), euler_maruyama is stochastic like
# ddpm and heun deterministic like ddim: their eager (op by op) runs are slow-only.
@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow)
                                    if m in ("dpm_solver_pp_1s", "euler_maruyama", "heun") else m
                                    for m in sorted(SETTINGS)])
def test_jit_vmap_eager_agree_and_keys_are_deterministic(method):
    sch = schedules.cosine(50)
    den = diffusion.gaussian_mixture_denoiser(jnp.array([0.5, 0.5]), jnp.array([[-1.0, 0.0],
                                              [1.0, 0.5]]), jnp.array([0.2, 0.4]), sch, "eps")
    kw = dict(method=method, steps=8, clip_x0=(-1.0, 1.0))
    f = lambda k: samplers.sample(den, sch, k, (16, 2), **kw)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    eager = f(keys[0])
    jitted = jax.jit(f)
    np.testing.assert_allclose(jitted(keys[0]), eager, rtol=1e-5, atol=1e-6)
    vmapped = jax.jit(jax.vmap(f))(keys)
    np.testing.assert_allclose(vmapped[0], eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vmapped[1], jitted(keys[1]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(jitted(keys[0]), jitted(keys[0]))
    assert float(jnp.max(jnp.abs(vmapped))) <= 1.0 + 1e-6  # clipping reaches the final x0_hat
    if samplers.SAMPLERS[method].stochastic:
        assert not np.allclose(vmapped[0], vmapped[1])


def test_trajectory_and_conditioning_and_chunks():
    sch = schedules.cosine(50)
    seen = {}

    def den(x, t, cond):
        seen["t"] = t
        chex.assert_shape(cond["obs"], (4, 3))
        return jnp.zeros_like(x) + cond["obs"][:, :1, None]

    traj = samplers.sample(den, sch, jax.random.PRNGKey(0), (4, 6, 2), {"obs": jnp.ones((4, 3))},
                           method="dpm_solver_pp_2m", steps=5, prediction="x0",
                           return_trajectory=True)
    chex.assert_shape(traj, (6, 4, 6, 2))
    np.testing.assert_allclose(traj[-1], 1.0, rtol=1e-6)
    assert seen["t"].dtype == jnp.int32 and seen["t"].shape == (4,)


def test_temperature_scales_initial_noise():
    sch = schedules.cosine()
    traj = samplers.sample(lambda x, t, c: x, sch, jax.random.PRNGKey(0), (4096, 2), steps=3,
                           temperature=0.5, return_trajectory=True)
    np.testing.assert_allclose(float(traj[0].std()), 0.5, rtol=0.03)


def test_bad_inputs_raise_clear_errors():
    sch = schedules.cosine(50)
    den = diffusion.gaussian_denoiser(M, S, sch)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="Unknown sampler method 'dpm'.*'ddim'"):
        samplers.sample(den, sch, key, (4, 2), method="dpm")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        samplers.sample(den, sch, key, (4, 2), steps=0)
    with pytest.raises(ValueError, match="steps=60 exceeds the discrete schedule's num_steps=50"):
        samplers.sample(den, sch, key, (4, 2), steps=60)
    with pytest.raises(ValueError, match="cond leaves need leading dimension batch=4"):
        samplers.sample(den, sch, key, (4, 2), jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"returned shape \(4, 3\); expected the shape of x"):
        samplers.sample(lambda x, t, c: jnp.zeros((4, 3)), sch, key, (4, 2))
    with pytest.raises(ValueError, match="shape must be \\(batch, \\*event\\)"):
        samplers.sample(den, sch, key, (4,))
    with pytest.raises(ValueError, match="x_init has shape"):
        samplers.sample(den, sch, key, (4, 2), x_init=jnp.zeros((3, 2)))


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_each_call_evaluates_the_whole_batch_at_one_noise_level(method):
    """Agents rely on this (dql.sample_actions runs the time path once per call)."""
    sch = schedules.cosine(50)

    # x0_hat = x (deterministic methods: x stays 0 from x_init = 0) plus a term that is nonzero as
    # soon as t differs within the batch, at any step; stochastic methods add noise, so for them
    # x0_hat ignores x and only the last call is checked.
    keep_x = 0.0 if samplers.SAMPLERS[method].stochastic else 1.0

    def den(x, t, c):
        return keep_x * x + (t - t[0]).astype(x.dtype)[:, None]

    out = samplers.sample(den, sch, jax.random.PRNGKey(0), (8, 2), method=method, steps=6,
                          prediction="x0", x_init=jnp.zeros((8, 2)))
    np.testing.assert_array_equal(out, 0.0)


def _full_covariance_x0_denoiser(mean, cov, sch):
    """Exact ``x0_hat(x, t) = m + alpha C (alpha^2 C + sigma^2 I)^{-1} (x - alpha m)`` for data
    ``N(m, C)`` (``diffusion.gaussian_denoiser`` is diagonal), in the eigenbasis of ``C``."""
    lam, vecs = jnp.linalg.eigh(cov)

    def den(x, t, cond):
        a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
        z = (x - a * mean[None]) @ vecs / (a**2 * lam[None] + s**2)
        return mean[None] + a * (z * lam[None]) @ vecs.T

    return den


@pytest.mark.parametrize("num_steps, steps", [(1000, 200), (50, 10)])
def test_heun_at_least_as_accurate_as_ddim_on_discrete_cosine(num_steps, steps, x64):
    """The last index of a discrete cosine schedule has its beta clipped at 0.999, so the first
    step shrinks sigma/alpha by ~160x (T=1000, 200 steps); Heun's corrector must not amplify the
    error there. ODE samplers of Gaussian data are affine in ``x_T``: ``x0 = F x_T + b``, so the
    covariance of their samples is exactly ``F F^T`` (no Monte Carlo error)."""
    sch = schedules.cosine(num_steps)
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    cov = jnp.asarray(q @ np.diag([0.2, 1.0, 4.0]) @ q.T)
    den = _full_covariance_x0_denoiser(jnp.array([0.5, -1.0, 0.2]), cov, sch)
    x_init = jnp.concatenate([jnp.zeros((1, 3)), jnp.eye(3)], axis=0)  # b, then b + columns of F

    def cov_error(method):
        x = jax.jit(lambda x0: samplers.sample(den, sch, jax.random.PRNGKey(0), (4, 3),
                                               method=method, steps=steps, prediction="x0",
                                               x_init=x0, dtype=jnp.float64))(x_init)
        f = (x[1:] - x[:1]).T
        return float(jnp.linalg.norm(f @ f.T - cov) / jnp.linalg.norm(cov))

    errors = {m: cov_error(m) for m in ("ddim", "dpm_solver_pp_2m", "heun")}
    assert errors["heun"] <= errors["ddim"], errors
    assert errors["heun"] <= errors["dpm_solver_pp_2m"], errors
