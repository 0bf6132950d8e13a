"""Flow matching (cdp_jax.flow): the linear path and its loss against numpy float64, the samplers
against FQL's loop and their measured orders, and the closed-form Gaussian case: the exact
velocity field, its flow map, its Jacobians and the CDP penalty on them (docs/MATH.md,
"Contraction for flow-matching policies")."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import contraction, flow
from cdp_jax.configs import names
from cdp_jax.configs.contraction import ContractionConfig

M = np.array([0.5, -1.0, 0.2])
S = np.array([0.3, 0.8, 1.5])  # data std per coordinate: below and above the noise's 1
LAM = 0.1  # the official Frobenius shift


# ----------------------------------------------------------------------------- references
def gaussian_velocity(mean, std):
    """The exact (marginal) velocity of the linear path for ``N(mean, diag(std^2))`` data:
    ``v*(x, t) = E[x_1 - x_0 | x_t = x] = m + (t s^2 - (1 - t)) / sigma_t^2 (x - t m)`` with
    ``sigma_t^2 = (1 - t)^2 + t^2 s^2`` (x_t, x_0, x_1 jointly Gaussian; Cov(x_1, x_t) = t s^2,
    Cov(x_0, x_t) = 1 - t)."""
    mean, var = jnp.asarray(mean)[None], jnp.asarray(std)[None] ** 2

    def velocity(x, t, cond=None):
        tb = t[:, None]
        var_t = (1 - tb) ** 2 + tb**2 * var
        return mean + (tb * var - (1 - tb)) / var_t * (x - tb * mean)

    return velocity


def gaussian_conditioning(m, cov, t):
    """By generic Gaussian conditioning in float64 (independent of the closed forms): for
    ``z = (x_0, x_1) ~ N((0, m), diag(I, cov))``, the gain ``J_v = Cov(u, x_t) Cov(x_t)^-1`` of
    ``E[u | x_t]`` (``u = x_1 - x_0``), its offset, and ``Cov[x_1 | x_t]``."""
    d = len(m)
    eye, zero = np.eye(d), np.zeros((d, d))
    c_z = np.block([[eye, zero], [zero, cov]])
    mu_z = np.concatenate([np.zeros(d), m])
    a = np.hstack([(1 - t) * eye, t * eye])  # x_t = a z
    b = np.hstack([-eye, eye])  # u = b z
    e1 = np.hstack([zero, eye])  # x_1 = e1 z
    c_x_inv = np.linalg.inv(a @ c_z @ a.T)
    gain = b @ c_z @ a.T @ c_x_inv
    cov_x1 = cov - e1 @ c_z @ a.T @ c_x_inv @ a @ c_z @ e1.T
    return gain, b @ mu_z - gain @ (a @ mu_z), cov_x1


def closed_forms(t):
    """Per-coordinate diagonals at time ``t``: ``J_v`` and ``J_clean = t s^2 / sigma_t^2``."""
    var_t = (1 - t) ** 2 + t**2 * S**2
    return (t * S**2 - (1 - t)) / var_t, t * S**2 / var_t


def linear_velocity(w, b):
    """``v = (x @ w)(1 + t) + b + cond`` on the last axis; events ``(d,)`` or ``(H, d)``."""
    def velocity(x, t, cond):
        tb = t.reshape(t.shape + (1,) * (x.ndim - 1))
        return (x @ w) * (1 + tb) + jnp.reshape(b, (1,) * (x.ndim - 1) + (-1,)) + cond
    return velocity


def np_linear_velocity(w, b):
    return lambda x, t, cond: (x @ w) * (1 + t.reshape(-1, *([1] * (x.ndim - 1)))) + b + cond


# ----------------------------------------------------------------------------- path and loss
def test_registries_match_config_names():
    assert tuple(flow.FLOW_SAMPLERS) == names.FLOW_SAMPLERS
    assert tuple(flow.TARGETS) == names.FLOW_TARGETS
    assert [flow.FLOW_SAMPLERS[k].order for k in ("euler", "heun")] == [1, 2]


@pytest.mark.parametrize("event", [(3,), (4, 3)])
def test_path_target_and_loss_match_numpy(event, x64):
    rng = np.random.default_rng(0)
    batch = 5
    x0, x1 = rng.normal(size=(2, batch, *event))
    t, cond = rng.uniform(size=batch), rng.normal(size=(batch, *event))
    w, b = rng.normal(size=(3, 3)), rng.normal(size=3)
    tb = t.reshape(-1, *([1] * len(event)))
    x_t = (1 - tb) * x0 + tb * x1
    np.testing.assert_allclose(flow.interpolate(x0, x1, t), x_t, rtol=1e-14)
    np.testing.assert_allclose(flow.velocity_target(x0, x1), x1 - x0, rtol=1e-14)
    expected = np.mean((np_linear_velocity(w, b)(x_t, t, cond) - (x1 - x0)) ** 2)
    loss, aux = flow.flow_matching_loss_from_draws(linear_velocity(w, b), x1, x0, t, cond)
    np.testing.assert_allclose(loss, expected, rtol=1e-13)
    assert aux["flow/loss"] is loss
    np.testing.assert_allclose(aux["x_t"], x_t, rtol=1e-14)
    # The keyed loss draws x_0 ~ N(0, I), t ~ U[0, 1) from split(key), in x1's dtype.
    key = jax.random.PRNGKey(3)
    k0, kt = jax.random.split(key)
    x1j = jnp.asarray(x1)
    draws = (jax.random.normal(k0, x1.shape, x1j.dtype), jax.random.uniform(kt, (batch,), x1j.dtype))
    ref, _ = flow.flow_matching_loss_from_draws(linear_velocity(w, b), x1j, *draws, cond)
    assert float(flow.flow_matching_loss(linear_velocity(w, b), x1j, key, cond)[0]) == float(ref)


def test_clean_prediction_and_its_inverse(x64):
    rng = np.random.default_rng(1)
    x, v = rng.normal(size=(2, 4, 2, 3))
    t = rng.uniform(size=4)
    x1_hat = flow.clean_from_velocity(v, x, t)
    np.testing.assert_allclose(x1_hat, x + (1 - t[:, None, None]) * v, rtol=1e-14)
    np.testing.assert_allclose(flow.velocity_from_clean(x1_hat, x, t), v, rtol=1e-12)
    vel = gaussian_velocity(M, S)
    x3 = rng.normal(size=(4, 3))
    np.testing.assert_allclose(flow.clean_prediction(vel, x3, t),
                               x3 + (1 - t[:, None]) * vel(x3, t), rtol=1e-14)


def test_bad_arguments_are_refused():
    vel = gaussian_velocity(M, S)
    x0 = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"'rk4'.*\['euler', 'heun'\]"):
        flow.integrate(vel, x0, method="rk4")
    with pytest.raises(ValueError, match="steps"):
        flow.integrate(vel, x0, steps=0)
    with pytest.raises(ValueError, match="clip"):
        flow.integrate(vel, x0, clip=(-1.0,))
    with pytest.raises(ValueError, match="'network'"):
        flow.batched_target("network", vel)
    with pytest.raises(ValueError, match="expected"):
        flow.flow_matching_loss_from_draws(lambda x, t, c: x[:, :2], x0, x0, jnp.zeros(2))
    with pytest.raises(ValueError, match="leading dimension"):
        flow.sample(vel, jax.random.PRNGKey(0), (2, 3), cond=jnp.zeros((3, 1)))


# ----------------------------------------------------------------------------- samplers
def test_euler_is_fqls_compute_flow_actions_bit_for_bit():
    """float32, FQL's loop as written (t of shape (batch, 1) from i / flow_steps, v / flow_steps,
    clip at the end) against integrate under jit; and FQL's flow-matching loss."""
    rng = np.random.default_rng(2)
    w1 = jnp.asarray(rng.normal(size=(4 + 2 + 1, 16)) / 3, jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(16, 2)), jnp.float32)
    field = lambda obs, a, t: jnp.tanh(jnp.concatenate([obs, a, t], -1) @ w1) @ w2  # FQL's call
    obs = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    noises = jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)

    @jax.jit
    def fql(obs, noises):
        actions = noises
        for i in range(10):
            t = jnp.full((*obs.shape[:-1], 1), i / 10)
            actions = actions + field(obs, actions, t) / 10
        return jnp.clip(actions, -1, 1)

    velocity = lambda x, t, obs: field(obs, x, t[:, None])
    ours = jax.jit(lambda o, n: flow.integrate(velocity, n, o, steps=10, clip=(-1.0, 1.0)))
    np.testing.assert_array_equal(ours(obs, noises), fql(obs, noises))

    x1 = jnp.asarray(rng.uniform(-1, 1, size=(8, 2)), jnp.float32)
    t = jnp.asarray(rng.uniform(size=(8, 1)), jnp.float32)
    x_t = (1 - t) * noises + t * x1
    fql_loss = jnp.mean((field(obs, x_t, t) - (x1 - noises)) ** 2)
    loss, _ = flow.flow_matching_loss_from_draws(velocity, x1, noises, t[:, 0], obs)
    assert float(loss) == float(fql_loss)


@pytest.mark.parametrize("event", [(3,), (4, 3)])
def test_samplers_equal_python_loops_in_float64(event, x64):
    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(3, 3)) / 2, rng.normal(size=3)
    x0, cond = rng.normal(size=(2, 5, *event))
    f = np_linear_velocity(w, b)
    n = 7
    euler, heun = x0.copy(), x0.copy()
    for i in range(n):
        t, s = np.full(5, i / n), np.full(5, (i + 1) / n)
        euler = euler + f(euler, t, cond) / n
        k1 = f(heun, t, cond)
        heun = heun + 0.5 / n * (k1 + f(heun + k1 / n, s, cond))
    for method, ref in (("euler", euler), ("heun", heun)):
        out = flow.integrate(linear_velocity(w, b), jnp.asarray(x0), cond, method=method,
                             steps=n, return_trajectory=True)
        chex.assert_shape(out, (n + 1, 5, *event))
        np.testing.assert_array_equal(out[0], x0)
        np.testing.assert_allclose(out[-1], ref, rtol=1e-12, atol=1e-12)
    # The step functions alone: one step from t_3.
    t3, s3 = jnp.full(5, 3 / n), jnp.full(5, 4 / n)
    np.testing.assert_allclose(flow.euler_step(linear_velocity(w, b), x0, t3, s3, cond, n),
                               x0 + f(x0, np.asarray(t3), cond) / n, rtol=1e-13)


def _rotation_velocity(x, t, cond=None):
    """``dx/dt = 2 cos(3t) x + 1.5 R x`` (R the 90-degree rotation): commuting parts, so
    ``x(1) = exp(2 sin(3) / 3) Rot(1.5) x(0)``; not a gradient field."""
    rot = jnp.stack([-x[:, 1], x[:, 0]], axis=-1)
    return 2 * jnp.cos(3 * t)[:, None] * x + 1.5 * rot


def _rotation_exact(x0):
    c, s = np.cos(1.5), np.sin(1.5)
    return np.exp(2 * np.sin(3) / 3) * x0 @ np.array([[c, s], [-s, c]])


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_measured_order(method, x64):
    x0 = np.random.default_rng(5).normal(size=(16, 3))
    problems = [(_rotation_velocity, x0[:, :2], _rotation_exact(x0[:, :2])),
                (gaussian_velocity(M, S), x0, M + S * x0)]  # the exact flow map (next test)
    steps = np.array([8, 16, 32, 64])
    for velocity, start, exact in problems:
        errors = [float(jnp.max(jnp.abs(flow.integrate(velocity, jnp.asarray(start),
                                                       method=method, steps=int(n)) - exact)))
                  for n in steps]
        slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
        assert abs(slope - flow.FLOW_SAMPLERS[method].order) < 0.15, (errors, slope)


def test_plain_jit_and_vmap_agree():
    vel = gaussian_velocity(M, S)
    keys = jax.random.split(jax.random.PRNGKey(6), 3)
    run = functools.partial(flow.sample, vel, shape=(4, 3), method="heun", steps=5)
    plain = jnp.stack([run(k) for k in keys])
    np.testing.assert_allclose(jax.jit(jax.vmap(run))(keys), plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(run)(keys[0]), plain[0], rtol=1e-5, atol=1e-6)
    # vmap over an extra batch axis equals one call on the merged batch (samples independent).
    x0 = jax.random.normal(keys[0], (2, 4, 3))
    merged = flow.integrate(vel, x0.reshape(8, 3), steps=5).reshape(2, 4, 3)
    np.testing.assert_allclose(jax.vmap(lambda x: flow.integrate(vel, x, steps=5))(x0), merged,
                               rtol=1e-5, atol=1e-6)
    loss = lambda k: flow.flow_matching_loss(vel, jnp.ones((4, 3)), k)[0]
    np.testing.assert_allclose(jax.vmap(loss)(keys), jnp.stack([loss(k) for k in keys]),
                               rtol=1e-5)


# ----------------------------------------------------------------------------- Gaussian data
def test_gaussian_velocity_is_the_conditional_mean(x64):
    """The closed form equals E[x_1 - x_0 | x_t] by generic conditioning, and its clean prediction
    has Jacobian t / (1 - t)^2 Cov[x_1 | x_t] (PSD) for a full covariance too."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1, 3))
    a = rng.normal(size=(3, 3))
    full = a @ a.T + 0.1 * np.eye(3)
    for t in (0.0, 0.3, 0.8, 0.97):
        gain, offset, _ = gaussian_conditioning(M, np.diag(S**2), t)
        np.testing.assert_allclose(gaussian_velocity(M, S)(x, np.array([t]))[0],
                                   offset + gain @ x[0], rtol=1e-12, atol=1e-13)
        gain, _, cov_x1 = gaussian_conditioning(M, full, t)
        if t > 0:
            np.testing.assert_allclose(np.eye(3) + (1 - t) * gain, t / (1 - t) ** 2 * cov_x1,
                                       atol=1e-12)
        assert np.linalg.eigvalsh(np.eye(3) + (1 - t) * 0.5 * (gain + gain.T)).min() >= -1e-12


def test_gaussian_flow_map_is_the_affine_transport(x64):
    """x_t = t m + sigma_t x_0 solves dx/dt = v*(x, t), so x_1 = m + s x_0; Euler from N(0, I)
    reproduces the data's mean and std."""
    vel = gaussian_velocity(M, S)
    x0 = np.random.default_rng(8).normal(size=(6, 3))
    path = lambda t: t * M[None] + jnp.sqrt((1 - t) ** 2 + t**2 * S[None] ** 2) * x0
    for t in (0.1, 0.5, 0.9):
        x_t, dx_dt = jax.jvp(path, (jnp.asarray(t),), (jnp.asarray(1.0),))
        np.testing.assert_allclose(vel(x_t, jnp.full(6, t)), dx_dt, rtol=1e-12, atol=1e-12)
    out = flow.integrate(vel, jnp.asarray(x0), method="heun", steps=200)
    np.testing.assert_allclose(out, M + S * x0, atol=1e-4)  # 2e-5: Heun, the s = 0.3 turn near t = 0.92
    samples = flow.sample(vel, jax.random.PRNGKey(9), (8192, 3), steps=100)
    np.testing.assert_allclose(samples.mean(0), M, atol=0.03 * S.max())
    np.testing.assert_allclose(samples.std(0), S, rtol=0.03)


@pytest.mark.parametrize("t", [0.05, 0.5, 0.95])
def test_gaussian_jacobians_and_penalty_values(t, x64):
    """J_v and J_clean = I + (1 - t) J_v by jacfwd equal their closed forms; mu and the official
    Frobenius penalty of the clean prediction by the library's estimators equal theirs."""
    vel = gaussian_velocity(M, S)
    x = jnp.asarray(np.random.default_rng(10).normal(size=3))
    jv, jc = closed_forms(t)
    tt = jnp.asarray(t)
    fn_v = flow.target_function("velocity", vel, tt, None)
    fn_c = flow.target_function("clean", vel, tt, None)
    np.testing.assert_allclose(jax.jacfwd(fn_v)(x), np.diag(jv), atol=1e-13)
    np.testing.assert_allclose(jax.jacfwd(fn_c)(x), np.diag(jc), atol=1e-13)
    np.testing.assert_allclose(jc, 1 + (1 - t) * jv, rtol=1e-13)
    assert np.all(jc >= 0)  # PSD; above 1 (an expanding step) where t s^2 > 1 - t
    np.testing.assert_allclose(contraction.exact_max_sym_eigenvalue(fn_c, x), jc.max(), rtol=1e-12)
    np.testing.assert_allclose(contraction.max_sym_eigenvalue(fn_c, x, jax.random.PRNGKey(0), 3),
                               jc.max(), rtol=1e-10)
    official = np.sum((jc + LAM) ** 2) / 9  # mean((J_sym + 0.1 I)^2) over the d^2 entries
    np.testing.assert_allclose(contraction.exact_sym_jacobian_frobenius(
        fn_c, x, shift=LAM, scale="dim_squared"), official, rtol=1e-12)
    # In J_v's terms: (1 - t)^2 ||sym J_v + (1 + lambda) / (1 - t) I||_F^2 / d^2.
    np.testing.assert_allclose((1 - t) ** 2 * np.sum((jv + (1 + LAM) / (1 - t)) ** 2) / 9,
                               official, rtol=1e-12)


@pytest.mark.parametrize("target", ["clean", "velocity"])
def test_regulariser_on_the_gaussian_field(target, x64):
    """flow.contraction_regulariser routes the flow targets through the shared penalty: exact
    Frobenius values equal the closed form averaged over the in-window draws (t >= 1 - window)."""
    vel = gaussian_velocity(M, S)
    rng = np.random.default_rng(11)
    x_t, t = jnp.asarray(rng.normal(size=(12, 3))), jnp.asarray(rng.uniform(size=12))
    key = jax.random.PRNGKey(1)
    base = dict(weight=2.0, penalty="frobenius", frobenius_estimator="exact",
                frobenius_scale="dim_squared", target=target, num_penalised=1.0)
    per_sample = np.array([np.sum((closed_forms(float(ti))[target == "clean"] + LAM) ** 2) / 9
                           for ti in t])
    for window in (1.0, 0.4):
        loss, metrics = flow.contraction_regulariser(ContractionConfig(**base, window=window),
                                                     vel, x_t, t, None, key)
        inside = np.asarray(t) >= 1 - window
        assert int(metrics["contraction/num_in_window"]) == inside.sum()
        np.testing.assert_allclose(loss, 2.0 * per_sample[inside].mean(), rtol=1e-12)
    eigen = ContractionConfig(weight=1.0, target=target, window=1.0, num_penalised=1.0,
                              num_iters=3)
    _, metrics = flow.contraction_regulariser(eigen, vel, x_t, t, None, key)
    mu = [closed_forms(float(ti))[target == "clean"].max() for ti in t]
    np.testing.assert_allclose(metrics["contraction/mu_max"], max(mu), rtol=1e-10)
    assert flow.contraction_regulariser(ContractionConfig(target=target), vel, x_t, t, None,
                                        key) == (0.0, {})
