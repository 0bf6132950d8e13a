"""The fast CDP penalty: matrix-free probes (Hutchinson, or forward-mode pairs) on a random
subsample of the penalised samples.

The official objective is the mean over the penalised (in-window) samples of a batch of
``mean((J_sym + 0.1 I)^2)``. The fast estimate must be unbiased for that mean *and* for its
parameter gradient, and must never form a ``d x d`` Jacobian.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import contraction as C
from cdp_jax import paper, run_config, schedules

D, OBS, HIDDEN = 3, 2, 16
SCHEDULE = schedules.cosine(50, discretization="cleandiffuser")


def init_params(key, d=D, obs=OBS, hidden=HIDDEN):
    k = jax.random.split(key, 4)
    return {"wx": 1.5 * jax.random.normal(k[0], (d, hidden)) / np.sqrt(d),
            "wc": jax.random.normal(k[1], (obs, hidden)) / np.sqrt(obs),
            "wt": 0.1 * jax.random.normal(k[2], (1, hidden)),
            "wo": jax.random.normal(k[3], (hidden, d)) / np.sqrt(hidden)}


def denoiser_of(params):
    """A small conditioned tanh network ``(x (B, d), t (B,), cond (B, obs)) -> (B, d)``."""
    def denoiser(x, t, cond):
        h = jnp.tanh(x @ params["wx"] + cond @ params["wc"]
                     + t.astype(x.dtype)[:, None] @ params["wt"])
        return h @ params["wo"]
    return denoiser


def batch(key, size, d=D, obs=OBS):
    k = jax.random.split(key, 3)
    return (jax.random.normal(k[0], (size, d)), jax.random.randint(k[1], (size,), 0, 50),
            jax.random.normal(k[2], (size, obs)))


EXACT = {"il": dataclasses.replace(paper.PAPER_IL["contraction"], weight=1.0),
         "rl": dataclasses.replace(paper.PAPER_PENALTY, weight=1.0, num_penalised=1.0)}
# (batch size, subsample, probes): few samples per estimate, so that a wrong scale shows.
SETTINGS = {"il": (32, 4, 1), "rl": (96, 3, 2)}


def estimates(config, params, x, t, cond, keys):
    """Penalty and flat parameter gradient of :func:`contraction_regulariser`, one per key."""
    def one(key):
        (value, metrics), grads = jax.value_and_grad(
            lambda p: C.contraction_regulariser(config, denoiser_of(p), SCHEDULE, x, t, cond, key,
                                                prediction="x0"), has_aux=True)(params)
        flat = jnp.concatenate([jnp.ravel(g) for g in jax.tree_util.tree_leaves(grads)])
        return value, flat, metrics["contraction/num_in_window"]
    return jax.jit(jax.vmap(one))(keys)


def within_3_standard_errors(samples, exact) -> bool:
    """Whether the sample mean of ``samples`` ``(R, ...)`` lies within 3 standard errors of
    ``exact`` in every coordinate."""
    samples, exact = np.asarray(samples), np.asarray(exact)
    stderr = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    return bool(np.all(np.abs(samples.mean(axis=0) - exact) < 3 * stderr))


ESTIMATORS = ["hutchinson", "jvp_pairs"]


@pytest.mark.parametrize("kind,estimator", [
    ("il", "jvp_pairs"), ("rl", "jvp_pairs"), ("il", "hutchinson"),
    pytest.param("rl", "hutchinson", marks=pytest.mark.slow)])  # 4 CPU-s, mostly compilation
def test_fast_penalty_and_gradient_are_unbiased(kind, estimator, x64):
    size, m, probes = SETTINGS[kind]
    params = init_params(jax.random.key(0))
    x, t, cond = batch(jax.random.key(1), size)
    exact_config = EXACT[kind]
    (exact_value, _), exact_grad = jax.value_and_grad(
        lambda p: C.contraction_regulariser(exact_config, denoiser_of(p), SCHEDULE, x, t, cond,
                                            jax.random.key(2), prediction="x0"), has_aux=True)(params)
    exact_grad = jnp.concatenate([jnp.ravel(g) for g in jax.tree_util.tree_leaves(exact_grad)])
    fast = dataclasses.replace(exact_config, frobenius_estimator=estimator, num_penalised=m,
                               num_probes=probes)
    keys = jax.random.split(jax.random.key(3), 6000)
    values, grads, in_window = estimates(fast, params, x, t, cond, keys)
    n_window = int(in_window[0])
    assert n_window > m  # the subsample is a proper subset: its scaling is under test
    # The gradient in 4 fixed directions: the exact gradient's and three random ones.
    directions = jnp.concatenate([exact_grad[None] / jnp.linalg.norm(exact_grad),
                                  jax.random.normal(jax.random.key(4), (3, exact_grad.size))])
    projected = grads @ directions.T
    assert np.std(values) > 0.05 * exact_value  # the test has noise to see through
    assert within_3_standard_errors(values, exact_value)
    assert within_3_standard_errors(projected, directions @ exact_grad)

    # Wrongly scaled estimators fail the same test: the subsample's sum over the whole window
    # (dividing by n_window instead of m), and the mean over d rather than d^2 entries.
    shrink = m / n_window
    assert not within_3_standard_errors(values * shrink, exact_value)
    assert not within_3_standard_errors(projected * shrink, directions @ exact_grad)
    per_dim = dataclasses.replace(fast, frobenius_scale="dim")
    values_d, grads_d, _ = estimates(per_dim, params, x, t, cond, keys[:500])
    assert not within_3_standard_errors(values_d, exact_value)
    assert not within_3_standard_errors(grads_d @ directions.T, directions @ exact_grad)


def _shapes(jaxpr):
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield getattr(var.aval, "shape", ())
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(item, jax.extend.core.ClosedJaxpr):
                    yield from _shapes(item.jaxpr)
                elif isinstance(item, jax.extend.core.Jaxpr):
                    yield from _shapes(item)


@pytest.mark.parametrize("estimator,forms_jacobian",
                         [*((e, False) for e in ESTIMATORS), ("exact", True)])
def test_fast_path_forms_no_jacobian(estimator, forms_jacobian):
    """No value in the penalty's forward or backward pass has a ``(d, d)`` trailing shape (the
    exact penalty has: the check can fail)."""
    d, size = 5, 16
    params = init_params(jax.random.key(0), d=d, obs=4, hidden=12)
    x, t, cond = batch(jax.random.key(1), size, d=d, obs=4)
    config = dataclasses.replace(paper.PAPER_IL["contraction"], frobenius_estimator=estimator,
                                 num_penalised=3, num_probes=2)
    loss = lambda p: C.contraction_regulariser(config, denoiser_of(p), SCHEDULE, x, t, cond,
                                               jax.random.key(2), prediction="x0")[0]
    shapes = list(_shapes(jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr))
    assert any(s[-2:] == (d, d) for s in shapes) == forms_jacobian


def test_fast_presets_differ_from_the_paper_presets_only_in_the_estimator():
    for fast, base in (("paper-fast", "paper"), ("paper-il-fast", "paper-il")):
        dataset = {"paper": "cdp/hopper/medium-replay-v0", "paper-il": "cdp/fetch/push-v0"}[base]
        config_f, agent_f = run_config.preset(fast, dataset=dataset)
        config_b, agent_b = run_config.preset(base, dataset=dataset)
        assert dataclasses.replace(config_f, name=base) == config_b
        penalty_f, penalty_b = agent_f.contraction, agent_b.contraction
        assert penalty_f.frobenius_estimator == paper.FAST_ESTIMATOR != penalty_b.frobenius_estimator
        same = ("frobenius_estimator", "num_penalised", "num_probes")
        assert dataclasses.replace(penalty_f, **{f: getattr(penalty_b, f) for f in same}) == penalty_b
        assert dataclasses.replace(agent_f, contraction=penalty_b) == agent_b
    # The per-task row applies to paper-fast as to paper (hopper-medium-replay: eta 1, T 300).
    _, agent = run_config.preset("paper-fast", dataset="cdp/hopper/medium-replay-v0")
    assert (agent.eta, agent.candidate_temperature) == (1.0, 300.0)


def test_the_flow_penalty_of_the_fql_cdp_preset_is_unbiased(x64):
    """The fast flow penalty (`fql-cdp`: forward-mode pairs on a random subsample, target
    x1_hat = x + (1 - t) v, the whole path) against the exact penalty on every sample of the batch:
    unbiased for the value and for the parameter gradient, as for diffusion."""
    from cdp_jax import flow
    from cdp_jax.configs.fql import FLOW_RL_PENALTY

    params = init_params(jax.random.key(0))
    x, _, cond = batch(jax.random.key(1), 24)
    t = jax.random.uniform(jax.random.key(5), (24,), x.dtype)
    velocity_of = denoiser_of  # the same small network, read as a velocity field of t in [0, 1)
    fast = dataclasses.replace(FLOW_RL_PENALTY, weight=1.0, num_penalised=3)
    exact = dataclasses.replace(fast, frobenius_estimator="exact", num_penalised=1.0)

    def regulariser(config, p, key):
        return flow.contraction_regulariser(config, velocity_of(p), x, t, cond, key)

    (exact_value, _), exact_grad = jax.value_and_grad(
        lambda p: regulariser(exact, p, jax.random.key(2)), has_aux=True)(params)
    exact_grad = jnp.concatenate([jnp.ravel(g) for g in jax.tree_util.tree_leaves(exact_grad)])

    def one(key):
        value, grads = jax.value_and_grad(lambda p: regulariser(fast, p, key)[0])(params)
        return value, jnp.concatenate([jnp.ravel(g) for g in jax.tree_util.tree_leaves(grads)])

    values, grads = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(3), 1500))
    directions = jnp.concatenate([exact_grad[None] / jnp.linalg.norm(exact_grad),
                                  jax.random.normal(jax.random.key(4), (3, exact_grad.size))])
    assert np.std(values) > 0.05 * exact_value
    assert within_3_standard_errors(values, exact_value)
    assert within_3_standard_errors(grads @ directions.T, directions @ exact_grad)
    # the subsample's sum over the batch (a wrong scale) fails the same test
    assert not within_3_standard_errors(values * 3 / 24, exact_value)
