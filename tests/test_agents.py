"""Agents: weight 0 is exactly the vanilla algorithm; losses fall; DBC finds the modes; configs."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import contraction
from cdp_jax.agents import dbc, dql, idql

TINY_DQL = dict(actor_hidden_dim=32, critic_hidden_dim=32, time_dim=16, diffusion_steps=10,
                sampler_steps=3, ema_start=0)
TINY_DBC = dict(hidden_dim=32, depth=2, time_dim=16, diffusion_steps=10, sampler_steps=5,
                obs_horizon=2, action_horizon=3, n_action=2)


def _rl_batch(key, batch=64, obs_dim=4, act_dim=2):
    k1, k2 = jax.random.split(key)
    obs = jax.random.normal(k1, (batch, obs_dim))
    actions = jnp.tanh(obs[:, :act_dim] + 0.1 * jax.random.normal(k2, (batch, act_dim)))
    return {"observations": obs, "actions": actions, "rewards": -jnp.sum(actions**2, axis=1),
            "next_observations": obs[::-1], "terminals": jnp.zeros((batch,))}


def _tree_equal(a, b):
    return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                           strict=True))


ABSENT_CALLS = []


def _absent(*args, **kwargs):
    """The regulariser removed altogether: the vanilla algorithm."""
    ABSENT_CALLS.append(1)
    return 0.0, {}


def _jit_update(agent):
    # A fresh function object per call, so no trace cached under another patch state is reused.
    return jax.jit(lambda state, batch, key: agent.update(state, batch, key))


# The unpatched DQL update, compiled once for the two tests that run it (never called under a patch).
_DQL_UPDATE = jax.jit(dql.update)


TINY_IDQL = dict(actor_hidden_dim=32, critic_hidden_dim=32, time_dim=16, diffusion_steps=10,
                 sampler_steps=3, ema_start=0, num_candidates=4)


def _actor_grads(agent, state, batch, key):
    """Actor loss, metrics and gradients, jitted afresh (no trace reused across patches)."""
    if agent is dbc:
        draws = dbc.sample_draws(key, state.config, batch["actions"].shape[0], state.action_dim)
        fn = lambda p: dbc.loss_fn(p, state, batch, draws)
        params = state.params
    elif agent is dql:
        draws = dql.sample_draws(key, state.config, batch["actions"].shape[0], state.action_dim)
        fn = lambda p: dql.actor_loss(p, state, state.critic_params, batch, draws)
        params = state.actor_params
    else:
        fn = lambda p: idql.actor_loss(p, state, batch, key)
        params = state.actor_params
    return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)


@pytest.mark.parametrize("agent,overrides,make_batch", [
    # DQL: test_weight_zero_update_is_exactly_vanilla checks the whole update in the default run;
    # IDQL calls the regulariser as DQL does. DBC stays in the default run.
    pytest.param(dql, TINY_DQL, lambda k: _rl_batch(k), marks=pytest.mark.slow),
    pytest.param(idql, TINY_IDQL, lambda k: _rl_batch(k), marks=pytest.mark.slow),
    (dbc, TINY_DBC, lambda k: {"observations": jax.random.normal(k, (32, 2, 4)),
                               "actions": jnp.tanh(jax.random.normal(k, (32, 3, 2)))}),
])
def test_weight_zero_is_exactly_vanilla(monkeypatch, agent, overrides, make_batch):
    """Same actor loss and gradients as with the regulariser removed altogether."""
    key = jax.random.PRNGKey(0)
    state = agent.init(key, agent.default_config(**overrides), 4, 2)
    batch = make_batch(jax.random.PRNGKey(1))
    (loss_zero, m_zero), g_zero = _actor_grads(agent, state, batch, key)
    ABSENT_CALLS.clear()
    with monkeypatch.context() as m:
        m.setattr(contraction, "contraction_regulariser", _absent)
        (loss_vanilla, _), g_vanilla = _actor_grads(agent, state, batch, key)
    assert ABSENT_CALLS  # the vanilla variant was really traced
    assert loss_zero == loss_vanilla
    assert _tree_equal(g_zero, g_vanilla)
    assert float(m_zero["actor/contraction_loss"]) == 0.0


def test_weight_zero_update_is_exactly_vanilla(monkeypatch):
    """A whole DQL update (critic, actor, targets, EMA): bitwise the same state."""
    key = jax.random.PRNGKey(0)
    state = dql.init(key, dql.default_config(**TINY_DQL), 4, 2)
    batch = _rl_batch(jax.random.PRNGKey(1), batch=128)
    s_zero, m_zero = _DQL_UPDATE(state, batch, key)
    with monkeypatch.context() as m:
        m.setattr(contraction, "contraction_regulariser", _absent)
        s_vanilla, m_vanilla = _jit_update(dql)(state, batch, key)
    assert _tree_equal(s_zero, s_vanilla)
    assert m_zero["actor/loss"] == m_vanilla["actor/loss"]


@pytest.mark.slow  # the regulariser's own tests (test_contraction.py) check its gradient
def test_positive_weight_changes_the_actor_gradient():
    key = jax.random.PRNGKey(0)
    config = dql.default_config(**TINY_DQL)
    penalised = dataclasses.replace(config, contraction=contraction.ContractionConfig(
        weight=1.0, window=1.0, num_penalised=4, num_iters=2))
    state = dql.init(key, config, 4, 2)
    batch = _rl_batch(jax.random.PRNGKey(1))
    (_, m_zero), g_zero = _actor_grads(dql, state, batch, key)
    (_, m_pen), g_pen = _actor_grads(dql, state.replace(config=penalised), batch, key)
    assert float(m_pen["actor/contraction_loss"]) > 0.0
    assert "contraction/mu_mean" in m_pen
    assert m_pen["actor/bc_loss"] == m_zero["actor/bc_loss"]  # same draws, penalty added on top
    assert not _tree_equal(g_pen, g_zero)


def test_dql_update_shapes_and_losses_fall():
    key = jax.random.PRNGKey(0)
    config = dql.default_config(**TINY_DQL)
    state = dql.init(key, config, 4, 2)
    batch = _rl_batch(jax.random.PRNGKey(1), batch=128)
    history = []
    for k in jax.random.split(key, 150):  # the compiled update of the weight-zero test
        state, m = _DQL_UPDATE(state, batch, k)
        history.append(m)
    metrics = jax.tree.map(lambda *v: np.stack(v), *history)
    assert int(state.step) == 150
    bc = np.asarray(metrics["actor/bc_loss"])
    assert bc[-20:].mean() < 0.7 * bc[:20].mean()
    assert np.all(np.isfinite(np.asarray(metrics["critic/loss"])))
    actions = jax.jit(dql.act)(state, batch["observations"][:5], key)
    chex.assert_shape(actions, (5, 2))
    assert float(jnp.abs(actions).max()) <= 1.0


@pytest.mark.slow  # IDQL: the same losses and sampler as DQL with another critic
def test_idql_losses_fall_and_act_shapes():
    key = jax.random.PRNGKey(0)
    state = idql.init(key, idql.default_config(**TINY_IDQL), 4, 2)
    batch = _rl_batch(jax.random.PRNGKey(1), batch=128)
    step = lambda s, k: idql.update(s, batch, k)
    state, metrics = jax.jit(lambda s, k: jax.lax.scan(step, s, jax.random.split(k, 150)))(
        state, key)
    bc, v = np.asarray(metrics["actor/bc_loss"]), np.asarray(metrics["value/loss"])
    assert bc[-20:].mean() < 0.7 * bc[:20].mean()
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(np.asarray(metrics["critic/loss"])))
    actions = jax.jit(idql.act)(state, batch["observations"][:5], key)
    chex.assert_shape(actions, (5, 2))


def test_dql_candidate_resampling_picks_high_q():
    key = jax.random.PRNGKey(0)
    config = dql.default_config(**TINY_DQL, num_candidates=16, candidate_temperature=1e4)
    state = dql.init(key, config, 4, 2)
    obs = jax.random.normal(key, (3, 4))
    chosen = jax.jit(dql.act)(state, obs, key)
    chex.assert_shape(chosen, (3, 2))

    @jax.jit
    def reference(state, obs, key):  # the argmax of min-Q among the same 16 candidates
        obs_rep = jnp.repeat(obs, 16, axis=0)
        cands = dql.sample_actions(config, state.ema_params, obs_rep, jax.random.split(key)[0], 2)
        q = dql._critic(config).apply(state.target_critic_params, obs_rep, cands).min(0)
        return cands.reshape(3, 16, 2)[jnp.arange(3), jnp.argmax(q.reshape(3, 16), axis=1)]

    best = reference(state, obs, key)
    np.testing.assert_allclose(chosen, best, atol=1e-6)


@pytest.mark.slow  # DBC's update is parity-tested against the official one (test_parity.py)
def test_dbc_puts_samples_near_the_modes():
    """2-D toy: actions are one of two modes; after training, samples sit near a mode."""
    modes = jnp.array([[0.5, 0.5], [-0.5, -0.5]])
    config = dbc.default_config(hidden_dim=64, depth=2, expansion=4, time_dim=16, diffusion_steps=20,
                                sampler_steps=20, obs_horizon=1, action_horizon=1, n_action=1,
                                lr=3e-3, ema_decay=0.9)
    key = jax.random.PRNGKey(0)
    state = dbc.init(key, config, 1, 2)

    def step(state, key):
        k1, k2, k3 = jax.random.split(key, 3)
        which = jax.random.bernoulli(k1, 0.5, (256,)).astype(jnp.int32)
        actions = modes[which] + 0.02 * jax.random.normal(k2, (256, 2))
        batch = {"observations": jnp.zeros((256, 1, 1)), "actions": actions[:, None, :]}
        return dbc.update(state, batch, k3)

    state, metrics = jax.jit(lambda s, k: jax.lax.scan(step, s, jax.random.split(k, 600)))(
        state, key)
    loss = np.asarray(metrics["actor/bc_loss"])
    assert loss[-50:].mean() < 0.75 * loss[:50].mean()
    samples = jax.jit(dbc.act)(state, jnp.zeros((200, 1, 1)), jax.random.PRNGKey(3))[:, 0]
    dist = jnp.min(jnp.linalg.norm(samples[:, None, :] - modes[None], axis=-1), axis=1)
    assert float(jnp.mean(dist < 0.15)) > 0.9
    sides = samples[:, 0] > 0
    assert 0.2 < float(sides.mean()) < 0.8  # both modes, not their mean


@pytest.mark.parametrize("agent,field,value,match", [
    (dql, "sampler_steps", 60, "sampler_steps"),
    (dql, "eta", -1.0, "eta"),
    (dql, "sampler", "rk45", "sampler"),
    (dql, "prediction", "score", "prediction"),
    (dbc, "n_action", 5, "n_action"),
    (dbc, "actor_network", "no_such_net", "actor_network"),
])
def test_invalid_configs_name_the_field(agent, field, value, match):
    with pytest.raises(ValueError, match=match):
        agent.default_config(**{field: value})


def test_negative_contraction_weight_rejected():
    with pytest.raises(ValueError, match="weight"):
        contraction.ContractionConfig(weight=-0.1)


def test_configs_are_hashable_and_json_round_trip():
    from cdp_jax.agents import common

    for cls in (dql.DQLConfig, dbc.DBCConfig):
        config = cls(contraction=contraction.ContractionConfig(weight=0.5, num_penalised=0.2))
        hash(config)
        assert common.config_from_dict(cls, common.config_to_dict(config)) == config
    cfg = common.apply_overrides(dql.DQLConfig(), ["eta=2", "contraction.window=1.0",
                                                   "max_grad_norm=none", "action_approx=false"])
    assert (cfg.eta, cfg.contraction.window, cfg.max_grad_norm, cfg.action_approx) == (
        2.0, 1.0, None, False)
    with pytest.raises(ValueError, match="foo"):
        common.apply_overrides(dql.DQLConfig(), ["foo=1"])
