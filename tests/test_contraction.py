"""Matrix-free eigenvalue estimate, penalties, drift target and the regulariser (cdp_jax.contraction)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import contraction as C
from cdp_jax import diffusion, schedules


def designed_map(eigenvalues, seed=0, skew=0.5):
    """Linear map whose symmetric part has exactly ``eigenvalues`` (plus a random skew part)."""
    rng = np.random.default_rng(seed)
    d = len(eigenvalues)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s = rng.normal(size=(d, d))
    a = jnp.asarray(q @ np.diag(eigenvalues) @ q.T + skew * (s - s.T))
    return lambda x: a @ x


def mlp_params(key, sizes, scale=1.0):
    params = []
    layers = zip(sizes[:-1], sizes[1:], strict=True)
    for k, (m, n) in zip(jax.random.split(key, len(sizes) - 1), layers, strict=True):
        params.append((scale * jax.random.normal(k, (m, n)) / np.sqrt(m), jnp.zeros(n) + 0.1))
    return params


def mlp(params, h):
    """tanh MLP on ``(..., in)``; biases are broadcast explicitly (rank promotion raises)."""
    for i, (w, b) in enumerate(params):
        h = h @ w + b.reshape((1,) * (h.ndim - 1) + b.shape)
        h = jnp.tanh(h) if i < len(params) - 1 else h
    return h


# ----------------------------------------------------------------------------- estimator

# Lanczos steps K giving 1e-3 relative accuracy (full reorthogonalisation), per case.
SPECTRA = {
    "neg_dominant_{-5..0.3}_d10": (np.linspace(-5.0, 0.3, 10), 10),
    "neg_dominant_{-5..0.3}_d64": (np.linspace(-5.0, 0.3, 64), 40),
    "all_negative_d12": (np.linspace(-5.0, -0.2, 12), 12),
    "repeated_top_d8": (np.array([-4.0, -4.0, -1.0, 0.5, 0.5, 0.5, 2.0, 2.0]), 8),
    "identity_like_d6": (np.full(6, -2.0), 4),
}
SLOW_SPECTRA = ("all_negative_d12", "identity_like_d6")  # one compilation each: default run is CPU-bound


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SPECTRA
                                  else n for n in SPECTRA])
def test_designed_spectrum(name, x64):
    eigenvalues, k = SPECTRA[name]
    fn = designed_map(eigenvalues)
    x = jnp.ones(len(eigenvalues))
    est = jax.jit(lambda x, key: C.max_sym_eigenvalue(fn, x, key, num_iters=k))
    for seed in range(3):
        np.testing.assert_allclose(est(x, jax.random.key(seed)), eigenvalues.max(), rtol=1e-3)


def test_plain_call_and_exact_reference(x64):
    eigenvalues = np.linspace(-5.0, 0.3, 7)
    fn = designed_map(eigenvalues)
    x = jnp.ones(7)
    np.testing.assert_allclose(C.exact_max_sym_eigenvalue(fn, x), 0.3, rtol=1e-10)
    np.testing.assert_allclose(C.max_sym_eigenvalue(fn, x, jax.random.key(0), num_iters=7), 0.3,
                               rtol=1e-8)


def test_largest_algebraic_not_largest_magnitude(x64):
    # |-5| dominates; power iteration would report -5. Even K = 3 must be far above it.
    fn = designed_map(np.linspace(-5.0, 0.3, 10), skew=0.0)
    est = jax.jit(lambda x: C.max_sym_eigenvalue(fn, x, jax.random.key(0), num_iters=3))
    assert -1.0 < est(jnp.ones(10)) <= 0.3 + 1e-9


# d -> K giving 1e-3 relative accuracy on random tanh-MLP Jacobians (widths 32, 32).
MLP_CASES = {2: 2, 7: 7, 64: 48}


@pytest.mark.parametrize("d", [*(pytest.param(d, marks=pytest.mark.slow) for d in (2, 7)), 64])
def test_random_mlp_jacobians_vmap(d, x64):
    k = MLP_CASES[d]
    params = mlp_params(jax.random.key(d), [d, 32, 32, d], scale=1.5)
    fn = lambda x: mlp(params, x)

    @jax.jit
    def both(xs, keys):
        est = jax.vmap(lambda x, key: C.max_sym_eigenvalue(fn, x, key, num_iters=k))(xs, keys)
        return est, jax.vmap(lambda x: C.exact_max_sym_eigenvalue(fn, x))(xs)

    xs = jax.random.normal(jax.random.key(100 + d), (4, d))
    est, exact = both(xs, jax.random.split(jax.random.key(7), 4))
    np.testing.assert_allclose(est, exact, rtol=1e-3)


# K = d Lanczos steps, unrolled up to K = 16, so compile time grows with the chunk: 3 x 4 is slow.
@pytest.mark.parametrize("chunk", [(2, 3), pytest.param((3, 4), marks=pytest.mark.slow)])
def test_action_chunk_shape_flattened_float32(chunk):
    d = chunk[0] * chunk[1]
    params = mlp_params(jax.random.key(0), [d, 16, d])
    fn = lambda x: mlp(params, x.reshape(-1)).reshape(chunk)
    x = jax.random.normal(jax.random.key(1), chunk)

    @jax.jit
    def both(x):
        return (C.max_sym_eigenvalue(fn, x, jax.random.key(2), num_iters=d),
                C.exact_max_sym_eigenvalue(fn, x))

    est, exact = both(x)
    assert est.dtype == jnp.float32
    np.testing.assert_allclose(est, exact, rtol=1e-4)


@pytest.mark.parametrize("penalty_kind", ["eigen", "frobenius"])
def test_penalty_gradient_matches_exact(penalty_kind, x64):
    d = 5
    params = mlp_params(jax.random.key(3), [d, 16, d])
    x = jax.random.normal(jax.random.key(4), (d,))
    margin, shift = 0.5, 0.1

    if penalty_kind == "eigen":
        def est(p):
            mu = C.max_sym_eigenvalue(lambda y: mlp(p, y), x, jax.random.key(5), num_iters=d)
            return jnp.square(jax.nn.relu(mu + margin))

        def exact(p):
            mu = C.exact_max_sym_eigenvalue(lambda y: mlp(p, y), x)
            return jnp.square(jax.nn.relu(mu + margin))
        assert exact(params) > 0  # the hinge is active, so the gradient is not trivially zero
    else:
        # The Hutchinson gradient is unbiased; average enough probes for a deterministic check.
        def est(p):
            return C.sym_jacobian_frobenius(lambda y: mlp(p, y), x, jax.random.key(5),
                                            shift=shift, num_probes=4000)

        def exact(p):
            return C.exact_sym_jacobian_frobenius(lambda y: mlp(p, y), x, shift=shift)

    g_est, g_exact = jax.jit(jax.grad(est))(params), jax.jit(jax.grad(exact))(params)
    flat_est = jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(g_est)])
    flat_exact = jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(g_exact)])
    rel = jnp.linalg.norm(flat_est - flat_exact) / jnp.linalg.norm(flat_exact)
    assert rel < (1e-6 if penalty_kind == "eigen" else 0.05), rel


def test_eigen_gradient_costs_one_jvp_not_k():
    """The iteration sees frozen parameters: the backward pass has no loop in it."""
    d = 6
    params = mlp_params(jax.random.key(3), [d, 16, d])
    x = jnp.ones(d)

    def loss(p):
        return C.max_sym_eigenvalue(lambda y: mlp(p, y), x, jax.random.key(0), num_iters=5)

    # Forward: a while/scan for the Lanczos loop. Backward: none; it is one JVP transposed.
    text = str(jax.make_jaxpr(jax.grad(loss))(params))
    assert text.count("while[") + text.count("scan[") == 1


@pytest.mark.parametrize("scale", ["dim", pytest.param("dim_squared", marks=pytest.mark.slow)])
def test_hutchinson_frobenius_unbiased(scale, x64):
    d = 6
    params = mlp_params(jax.random.key(8), [d, 16, d], scale=2.0)
    fn = lambda y: mlp(params, y)
    x = jax.random.normal(jax.random.key(9), (d,))
    exact = C.exact_sym_jacobian_frobenius(fn, x, shift=0.3, scale=scale)
    keys = jax.random.split(jax.random.key(10), 4000)
    draws = jax.jit(jax.vmap(
        lambda k: C.sym_jacobian_frobenius(fn, x, k, shift=0.3, num_probes=1, scale=scale)))(keys)
    stderr = jnp.std(draws) / np.sqrt(len(keys))
    assert abs(jnp.mean(draws) - exact) < 4 * stderr, (jnp.mean(draws), exact, stderr)
    assert stderr > 0


# ----------------------------------------------------------------------------- drift target

SCHEDULES = {"continuous_linear": schedules.linear(), "discrete_cosine": schedules.cosine(50)}


def explicit_drift(raw, prediction, alpha, sigma, beta, x):
    """dx/dtau = 0.5 beta (x - eps/sigma), with eps written out per parameterisation by hand."""
    if prediction == "eps":
        return 0.5 * beta * (x - raw / sigma)
    if prediction == "x0":
        return 0.5 * beta * (x - (x - alpha * raw) / sigma**2)
    return 0.5 * beta * (x - (sigma * x + alpha * raw) / sigma)  # v = alpha eps - sigma x0


# Each parameterisation on one schedule in the default run; the other three pairs are slow.
@pytest.mark.parametrize("sched,prediction", [
    ("continuous_linear", "eps"), ("discrete_cosine", "x0"), ("continuous_linear", "v"),
    *(pytest.param(s, p, marks=pytest.mark.slow) for s, p in [
        ("discrete_cosine", "eps"), ("continuous_linear", "x0"), ("discrete_cosine", "v")])])
def test_drift_jacobian_matches_explicit(prediction, sched, x64):
    schedule = SCHEDULES[sched]
    d = 4
    params = mlp_params(jax.random.key(11), [d + 1, 32, d])
    t = jnp.asarray(3 if schedule.is_discrete else 0.05)

    def denoiser(x, t, cond):
        return mlp(params, jnp.concatenate([x, schedule.sigma(t)[:, None]], axis=-1))

    fn = C.target_function("drift", denoiser, schedule, t, None, prediction)
    explicit = lambda y: explicit_drift(denoiser(y[None], t[None], None)[0], prediction,
                                        schedule.alpha(t), schedule.sigma(t), schedule.beta(t), y)

    @jax.jit
    def compare(x):
        return (jax.jacfwd(fn)(x), jax.jacfwd(explicit)(x),
                C.max_sym_eigenvalue(fn, x, jax.random.key(0), num_iters=d),
                C.exact_max_sym_eigenvalue(explicit, x))

    jac, jac_explicit, mu, mu_explicit = compare(jax.random.normal(jax.random.key(12), (d,)))
    np.testing.assert_allclose(jac, jac_explicit, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mu, mu_explicit, rtol=1e-8)


@pytest.mark.parametrize("sched,prediction", [
    ("continuous_linear", "eps"), ("discrete_cosine", "x0"), ("continuous_linear", "v"),
    *(pytest.param(s, p, marks=pytest.mark.slow) for s, p in [
        ("discrete_cosine", "eps"), ("continuous_linear", "x0"), ("discrete_cosine", "v")])])
def test_drift_sign_on_gaussian_data(prediction, sched, x64):
    """N(m, s^2) data: the flow contracts in direction k iff s_k < 1; closed-form mu."""
    schedule = SCHEDULES[sched]
    std = jnp.array([0.2, 0.5, 1.7])
    denoiser = diffusion.gaussian_denoiser(jnp.array([0.3, -1.0, 0.0]), std, schedule, prediction)
    for t in ([0, 10, 40] if schedule.is_discrete else [0.01, 0.3, 0.9]):
        t = jnp.asarray(t)
        a2, s2 = schedule.alpha(t) ** 2, schedule.sigma(t) ** 2
        rates = 0.5 * schedule.beta(t) * (1.0 - 1.0 / (a2 * std**2 + s2))
        fn = C.target_function("drift", denoiser, schedule, t, None, prediction)
        np.testing.assert_allclose(C.exact_max_sym_eigenvalue(fn, jnp.zeros(3)), rates.max(),
                                   rtol=1e-8)
        assert rates[0] < 0 < rates[2]


# ----------------------------------------------------------------------------- regulariser


def scaled_denoiser(schedule):
    """eps_hat = c(t) x with c = 3 at high noise and -1 in the lowest 10% (known mu = c)."""

    def denoiser(x, t, cond):
        frac = schedule.time_fraction(t)
        c = jnp.where(frac <= 0.1 + 1e-6, -1.0, 3.0)
        return diffusion.expand_to(c, x) * x + 0.0 * jnp.sum(cond)

    return denoiser


def test_weight_zero_is_free():
    def denoiser(x, t, cond):
        raise AssertionError("the denoiser must not be called when weight == 0")

    x = jnp.ones((4, 2))
    loss, metrics = C.contraction_regulariser(C.ContractionConfig(weight=0.0), denoiser,
                                              schedules.cosine(50), x, jnp.zeros(4, jnp.int32),
                                              None, jax.random.key(0))
    assert float(loss) == 0.0 and metrics == {}


def test_window_and_static_subsample():
    schedule = schedules.cosine(50)
    denoiser = scaled_denoiser(schedule)
    t = jnp.array([0, 1, 30, 49, 4, 5, 20, 2], jnp.int32)  # 0, 1, 4, 2 lie in the window (t < 5)
    x = jax.random.normal(jax.random.key(0), (8, 3, 2))  # an action chunk (B, H, A)
    cond = jnp.ones((8, 5))
    config = C.ContractionConfig(weight=2.0, num_penalised=6, margin=1.5, num_iters=6)
    fn = jax.jit(lambda x, t, k: C.contraction_regulariser(config, denoiser, schedule, x, t, cond,
                                                           k))
    loss, metrics = fn(x, t, jax.random.key(1))
    # Four in window with mu = -1, two padding slots with weight 0: penalty relu(-1 + 1.5)^2.
    assert int(metrics["contraction/num_in_window"]) == 4
    assert float(metrics["contraction/num_penalised"]) == 4
    np.testing.assert_allclose(metrics["contraction/mu_mean"], -1.0, rtol=1e-5)
    np.testing.assert_allclose(loss, 2.0 * 0.25, rtol=1e-5)
    # Fewer slots than in-window samples: still only in-window samples, mean unchanged.
    config2 = C.ContractionConfig(weight=2.0, num_penalised=2, margin=1.5, num_iters=6)
    loss2, m2 = jax.jit(lambda x, t, k: C.contraction_regulariser(config2, denoiser, schedule, x,
                                                                  t, cond, k))(
        x, t, jax.random.key(2))
    np.testing.assert_allclose(loss2, 0.5, rtol=1e-5)
    assert float(m2["contraction/num_penalised"]) == 2


def test_nothing_in_window_gives_zero_and_finite_grads():
    schedule = schedules.linear()
    t = jnp.full((6,), 0.8)
    x = jnp.ones((6, 2))
    config = C.ContractionConfig(weight=1.0, target="drift")

    def loss(scale):
        den = lambda x, t, cond: scale * x
        return C.contraction_regulariser(config, den, schedule, x, t, None, jax.random.key(0))

    (value, metrics), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(2.0)
    assert float(value) == 0.0 and float(grad) == 0.0
    assert int(metrics["contraction/num_in_window"]) == 0
    assert all(np.isfinite(np.asarray(v)) for v in metrics.values())


@pytest.mark.parametrize(("penalty", "target"), [("eigen", "drift"), ("frobenius", "network")])
def test_regulariser_reuses_denoising_draws_with_flax_like_params(penalty, target):
    schedule = schedules.cosine(50)
    params = mlp_params(jax.random.key(0), [2 + 1 + 3, 32, 2])

    def denoiser(p):
        return lambda x, t, cond: mlp(p, jnp.concatenate(
            [x, schedule.time_fraction(t)[:, None], cond], axis=-1))

    x0 = jax.random.normal(jax.random.key(1), (64, 2))
    cond = jax.random.normal(jax.random.key(2), (64, 3))
    # A margin large enough that the eigen hinge is active for the (contracting) drift too.
    config = C.ContractionConfig(weight=0.1, penalty=penalty, target=target, window=0.2,
                                 margin=100.0)

    def total(p, key):
        k1, k2 = jax.random.split(key)
        loss, aux = diffusion.denoising_loss(denoiser(p), schedule, x0, cond, k1, prediction="x0")
        reg, metrics = C.contraction_regulariser(config, denoiser(p), schedule, aux["x_t"], aux["t"],
                                                 cond, k2, prediction="x0")
        return loss + reg, metrics

    (value, metrics), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params,
                                                                              jax.random.key(3))
    assert np.isfinite(float(value)) and float(metrics["contraction/penalty"]) > 0
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="penalty"):
        C.ContractionConfig(penalty="power")
    with pytest.raises(ValueError, match="target"):
        C.ContractionConfig(target="score")
    with pytest.raises(ValueError, match="window"):
        C.ContractionConfig(window=0.0)
    with pytest.raises(ValueError, match="num_penalised"):
        C.ContractionConfig(num_penalised=1.5)
    with pytest.raises(ValueError, match="num_iters"):
        C.ContractionConfig(num_iters=0)
    with pytest.raises(ValueError, match="weight"):
        C.ContractionConfig(weight=-1.0)
    assert C.ContractionConfig().penalised_count(256) == 26
    assert C.ContractionConfig(num_penalised=1.0).penalised_count(256) == 256
    assert C.ContractionConfig(num_penalised=300).penalised_count(256) == 256
    hash(C.ContractionConfig())
