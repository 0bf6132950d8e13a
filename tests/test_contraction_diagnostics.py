"""Contraction diagnostics on closed-form Gaussian flows, and the penalty's effect on a 2-D toy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cdp_jax import contraction as C
from cdp_jax import diffusion, schedules
from cdp_jax.contraction_diagnostics import (
    action_spread,
    finite_time_lyapunov,
    mu_along_trajectory,
    schedule_time,
)

samplers = pytest.importorskip("cdp_jax.samplers")


def gaussian_rates(schedule, t, std):
    """Closed-form Jacobian eigenvalues of the sampling drift for N(m, diag(std^2)) data."""
    a2, s2 = schedule.alpha(t) ** 2, schedule.sigma(t) ** 2
    return 0.5 * schedule.beta(t) * (1.0 - 1.0 / (a2 * std**2 + s2))


@pytest.mark.parametrize("schedule", [schedules.linear(), schedules.cosine(50)],
                         ids=["continuous_linear", "discrete_cosine"])
def test_mu_along_trajectory_matches_closed_form(schedule, x64):
    std = np.array([0.2, 0.5, 1.7])
    denoiser = diffusion.gaussian_denoiser(jnp.array([0.3, -1.0, 0.0]), jnp.asarray(std), schedule,
                                           "x0")
    out = mu_along_trajectory(denoiser, schedule, jax.random.key(0), (4, 3), prediction="x0",
                              steps=10, num_iters=3, dtype=jnp.float64)
    expected = np.stack([gaussian_rates(schedule, np.asarray(t), std).max() for t in out["t"]])
    assert out["mu"].shape == (10, 4)
    np.testing.assert_allclose(out["mu"], np.broadcast_to(expected[:, None], (10, 4)), rtol=1e-6)
    np.testing.assert_allclose(out["tau"], schedule_time(schedule, out["t"]))


def test_finite_time_lyapunov_recovers_gaussian_flow_rate(x64):
    """1-D N(m, s^2) data: the exact flow maps x_T to m + s z, so growth = s / sqrt(a^2 s^2 + sig^2)."""
    schedule = schedules.linear()
    s = 0.3
    denoiser = diffusion.gaussian_denoiser(jnp.array([0.5]), jnp.array([s]), schedule, "eps")
    out = finite_time_lyapunov(denoiser, schedule, jax.random.key(1), (8, 1), epsilon=1e-4,
                               steps=40, spacing="logsnr", method="dpm_solver_pp_2m",
                               dtype=jnp.float64)
    t_start = schedule.time_grid(40, "logsnr")[0]
    a2, s2 = schedule.alpha(t_start) ** 2, schedule.sigma(t_start) ** 2
    exact = np.log(s / np.sqrt(a2 * s**2 + s2))
    np.testing.assert_allclose(out["log_growth"], exact, atol=5e-3)
    np.testing.assert_allclose(out["rate"], exact / t_start, rtol=5e-3)
    # The same number from the rate: int mu dtau by the trapezoid rule on a fine grid.
    taus = np.linspace(schedule.t_min, t_start, 4001)
    integral = np.trapezoid(gaussian_rates(schedule, taus, s), taus)
    np.testing.assert_allclose(exact, integral, atol=2e-3)
    assert out["distance"].shape == (41, 8)


def test_action_spread_of_gaussian_policy(x64):
    schedule = schedules.cosine(50)
    std = jnp.array([0.2, 0.5])
    denoiser = diffusion.gaussian_denoiser(jnp.zeros(2), std, schedule, "eps")
    obs = jnp.arange(3.0)[:, None]
    spread, actions = action_spread(denoiser, schedule, jax.random.key(2), (2,), obs,
                                    num_samples=1500, steps=25, dtype=jnp.float64)
    assert spread.shape == (3,) and actions.shape == (3, 1500, 2)
    np.testing.assert_allclose(spread, np.sqrt(0.2**2 + 0.5**2), rtol=0.05)


# ----------------------------------------------------------------------------- training toy


def _init(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    layers = zip(sizes[:-1], sizes[1:], strict=True)
    return [(jax.random.normal(k, (m, n)) / np.sqrt(m), jnp.zeros(n))
            for k, (m, n) in zip(keys, layers, strict=True)]


def _denoiser(params):
    def denoiser(x, t, cond):
        h = jnp.concatenate([x, 2.0 * t[:, None] - 1.0, cond], axis=-1)
        for i, (w, b) in enumerate(params):
            h = h @ w + b[None]
            h = jax.nn.silu(h) if i < len(params) - 1 else h
        return h

    return denoiser


def _toy_data(key, n):
    """Per observation c in {-1, 1}: two modes at (+-0.6, 0.4 c), std 0.08."""
    k1, k2, k3 = jax.random.split(key, 3)
    c = 2.0 * jax.random.bernoulli(k1, 0.5, (n, 1)).astype(jnp.float32) - 1.0
    side = 2.0 * jax.random.bernoulli(k2, 0.5, (n, 1)).astype(jnp.float32) - 1.0
    return jnp.concatenate([0.6 * side, 0.4 * c], -1) + 0.08 * jax.random.normal(k3, (n, 2)), c


def _train_pair(config, weight, steps, width, batch):
    """Train weight 0 and weight ``weight`` side by side (one compile, vmapped over the weight)."""
    schedule = schedules.linear()
    optimiser = optax.adam(3e-3)

    def train(w):
        params = _init(jax.random.key(0), [4, width, width, 2])

        def loss(p, key):
            k1, k2, k3 = jax.random.split(key, 3)
            x0, c = _toy_data(k1, batch)
            dsm, aux = diffusion.denoising_loss(_denoiser(p), schedule, x0, c, k2)
            reg, _ = C.contraction_regulariser(config, _denoiser(p), schedule, aux["x_t"],
                                               aux["t"], c, k3)
            return dsm + w * reg  # config.weight = 1; w scales it (0 = vanilla gradient)

        def step(carry, key):
            p, opt_state = carry
            grads = jax.grad(loss)(p, key)
            updates, opt_state = optimiser.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), None

        keys = jax.random.split(jax.random.key(1), steps)
        (params, _), _ = jax.lax.scan(step, (params, optimiser.init(params)), keys)
        return params

    return schedule, jax.jit(jax.vmap(train))(jnp.array([0.0, weight]))


def _measure(schedule, params):
    """(mu of the drift at t = 0.05 on data, spread per observation, mean Lyapunov log-growth)."""
    denoiser = _denoiser(params)
    x0, c = _toy_data(jax.random.key(9), 64)
    t = jnp.full((64,), 0.05)
    x_t = diffusion.q_sample(schedule, x0, t, jax.random.normal(jax.random.key(10), (64, 2)))
    mu = jax.vmap(lambda x, ti, ci: C.exact_max_sym_eigenvalue(
        C.target_function("drift", denoiser, schedule, ti, ci[None]), x))(x_t, t, c)
    obs = jnp.array([[-1.0], [1.0]])
    spread, _ = action_spread(denoiser, schedule, jax.random.key(5), (2,), obs, num_samples=256)
    lyap = finite_time_lyapunov(denoiser, schedule, jax.random.key(11), (128, 2),
                                jnp.repeat(obs, 64, axis=0))
    return jnp.mean(mu), spread, jnp.mean(lyap["log_growth"])


def _check_penalty_works(steps, width, batch):
    # The drift target (sampling direction) in the official window (lowest 10% of noise levels),
    # with a margin beyond the natural low-noise contraction so that the hinge is active.
    config = C.ContractionConfig(weight=1.0, target="drift", margin=5.0, num_iters=2)
    schedule, params = _train_pair(config, 0.05, steps, width, batch)
    # Both models measured in one compiled program (vmapped over the stacked parameters).
    mu, spread, lyap = jax.jit(jax.vmap(lambda p: _measure(schedule, p)))(params)
    (mu0, mu1), (spread0, spread1), (lyap0, lyap1) = np.asarray(mu), np.asarray(spread), lyap
    assert mu1 < mu0 - 0.5, (mu0, mu1)  # lower mu at low noise
    assert np.all(spread1 < spread0), (spread0, spread1)  # less action spread per observation
    # The sign check (docs/MATH.md, "Signs"): two nearby sampled flows end closer.
    assert lyap1 < lyap0, (lyap0, lyap1)


def test_penalty_lowers_mu_spread_and_lyapunov_small():
    _check_penalty_works(steps=250, width=32, batch=128)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "Measured 2026-11-25: after 2000 steps the vanilla model is *more* contractive at t = 0.05 than "
    "the hinge-penalised one (drift mu -8.3 vs -5.1): the hinge (margin 5) stops acting once mu <= -5, "
    "while the better-fit vanilla model keeps sharpening its modes. The 250-step test holds; whether "
    "the penalty helps late in training is an open question for the evidence study."))
def test_penalty_lowers_mu_spread_and_lyapunov_long():
    _check_penalty_works(steps=2000, width=64, batch=256)
