"""The flow-matching agents (fql, flow_bc): where FQL's gradients go, its target update, the CDP
penalty's switch, act, chunks and the registry backbones, and both agents through the training
loop (train, evaluate, checkpoint, exact resume) on a tiny PointMaze dataset.

Parity with FQL's own code on identical weights and draws: tests/test_fql_parity.py."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import run_config, training
from cdp_jax.agents import flow_bc, fql
from cdp_jax.configs.flow_bc import FLOW_IL_PENALTY
from cdp_jax.configs.fql import FLOW_RL_PENALTY
from cdp_jax.data.builders import pointmaze

DATASET = "cdp/pointmaze/flowtiny-v0"
SMALL_FQL = {"actor_hidden_dims": (16, 16), "value_hidden_dims": (16, 16), "flow_steps": 3}


def _batch(key, n=12, obs_dim=5, act_dim=3):
    k = jax.random.split(key, 4)
    return {"observations": jax.random.normal(k[0], (n, obs_dim)),
            "actions": jnp.tanh(jax.random.normal(k[1], (n, act_dim))),
            "rewards": jax.random.normal(k[2], (n,)),
            "next_observations": jax.random.normal(k[3], (n, obs_dim)),
            "terminals": (jnp.arange(n) % 5 == 0).astype(jnp.float32)}


def _tree_zero(tree):
    return all(not np.any(np.asarray(x)) for x in jax.tree.leaves(tree))


def test_fql_gradients_go_where_fqls_go():
    """The critic learns from the TD loss only; the one-step policy from distillation and Q; the
    behaviour flow from flow matching only (the distillation target is a constant)."""
    config = fql.default_config(**SMALL_FQL)
    state = fql.init(jax.random.PRNGKey(0), config, 5, 3)
    batch = _batch(jax.random.PRNGKey(1))
    draws = fql.sample_draws(jax.random.PRNGKey(2), 12, 3)
    frozen = jax.lax.stop_gradient(state.params)

    def grads(loss):
        return jax.jit(jax.grad(lambda p: loss(p)[0]))(state.params)

    g_actor = grads(lambda p: fql.actor_loss(config, p, frozen, batch, draws))
    assert _tree_zero(g_actor["critic"])
    assert not _tree_zero(g_actor["actor_bc_flow"]) and not _tree_zero(g_actor["actor_onestep_flow"])
    g_critic = grads(lambda p: fql.critic_loss(config, p, frozen, state.target_critic_params,
                                               batch, draws))
    assert _tree_zero(g_critic["actor_onestep_flow"]) and _tree_zero(g_critic["actor_bc_flow"])
    # with FQL's alpha = 10 the behaviour flow's gradient is still that of flow matching alone:
    # the distillation target (the flow's Euler actions) is a constant
    assert config.alpha == 10.0
    g_flow = jax.jit(jax.grad(lambda p: fql.flow.flow_matching_loss_from_draws(
        fql.velocity_field(config, p, 3), batch["actions"], draws["x0"], draws["t"],
        batch["observations"])[0]))(state.params)
    g_all = grads(lambda p: fql.actor_loss(config, p, frozen, batch, draws))
    for x, y in zip(jax.tree.leaves(g_flow["actor_bc_flow"]),
                    jax.tree.leaves(g_all["actor_bc_flow"]), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_fql_target_critic_moves_towards_the_critic_of_before_the_step():
    config = fql.default_config(**SMALL_FQL, tau=0.3)
    state = fql.init(jax.random.PRNGKey(0), config, 5, 3)
    state = state.replace(target_critic_params=jax.tree.map(jnp.zeros_like,
                                                            state.target_critic_params))
    new, metrics = jax.jit(fql.update)(state, _batch(jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    expected = jax.tree.map(lambda c: 0.3 * c, state.params["critic"])
    for x, y in zip(jax.tree.leaves(new.target_critic_params), jax.tree.leaves(expected),
                    strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    assert int(new.step) == 1 and "contraction/penalty" not in metrics
    assert float(metrics["actor/contraction_loss"]) == 0.0


def test_fql_penalty_on_and_off_and_act():
    config = fql.default_config(**SMALL_FQL, contraction=dataclasses.replace(
        FLOW_RL_PENALTY, window=1.0, num_penalised=4))
    state = fql.init(jax.random.PRNGKey(0), config, 5, 3)
    batch = _batch(jax.random.PRNGKey(1))
    _, metrics = jax.jit(fql.update)(state, batch, jax.random.PRNGKey(2))
    assert float(metrics["contraction/num_penalised"]) == 4
    assert float(metrics["contraction/penalty"]) > 0
    # the same draws at weight 0: the FQL losses are unchanged by the penalty's presence
    plain = state.replace(config=dataclasses.replace(
        config, contraction=dataclasses.replace(config.contraction, weight=0.0)))
    _, plain_metrics = jax.jit(fql.update)(plain, batch, jax.random.PRNGKey(2))
    for name in ("critic/loss", "actor/bc_flow_loss", "actor/distill_loss", "actor/q_loss"):
        assert float(plain_metrics[name]) == float(metrics[name])
    actions = fql.act(state, batch["observations"], jax.random.PRNGKey(3))
    assert actions.shape == (12, 3) and float(jnp.max(jnp.abs(actions))) <= 1.0


def test_fql_config_refuses_diffusion_targets_and_bad_values():
    from cdp_jax.configs.contraction import ContractionConfig

    with pytest.raises(ValueError, match="contraction.target"):
        fql.default_config(contraction=ContractionConfig(target="drift"))
    with pytest.raises(ValueError, match="q_agg"):
        fql.default_config(q_agg="max")
    with pytest.raises(ValueError, match="actor_hidden_dims"):
        fql.default_config(actor_hidden_dims=())


@pytest.mark.parametrize("network", ["fql_mlp", "mlp",
                                     pytest.param("unet", marks=pytest.mark.slow)])
def test_flow_bc_chunks_and_backbones(network):
    sizes = ({"hidden_dims": (16, 16)} if network == "fql_mlp"
             else {"hidden_dim": 16, "depth": 1, "time_dim": 8})
    config = flow_bc.default_config(actor_network=network, obs_horizon=2, action_horizon=4,
                                    n_action=2, flow_steps=3, contraction=FLOW_IL_PENALTY, **sizes)
    state = flow_bc.init(jax.random.PRNGKey(0), config, 5, 2)
    batch = {"observations": jax.random.normal(jax.random.PRNGKey(1), (8, 2, 5)),
             "actions": jnp.tanh(jax.random.normal(jax.random.PRNGKey(2), (8, 4, 2)))}
    new, metrics = jax.jit(flow_bc.update)(state, batch, jax.random.PRNGKey(3))
    assert np.isfinite(float(metrics["actor/loss"]))
    assert float(metrics["contraction/num_penalised"]) == 4
    chunk = flow_bc.act(new, batch["observations"], jax.random.PRNGKey(4))
    assert chunk.shape == (8, 4, 2) and float(jnp.max(jnp.abs(chunk))) <= 1.0


@pytest.fixture(scope="module")
def datasets_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(path))
        pointmaze.build("umaze", num_steps=2000, seed=0, dataset_id=DATASET,
                        num_reference_episodes=2)
        yield path


# fql through the loop is slow (its networks compile three ways); the loop is the same for every
# agent, and tests/test_fql_parity.py pins fql's update.
@pytest.mark.parametrize("agent", [pytest.param("fql", marks=pytest.mark.slow), "flow_bc"])
def test_flow_agents_train_evaluate_and_resume_exactly(agent, datasets_path, tmp_path,
                                                       monkeypatch):
    """Through the training loop with the presets' pipeline: 20 steps straight equal 10 steps,
    a resume from the checkpoint, and 10 more (every parameter, bit for bit)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(datasets_path))
    sizes = ["actor_hidden_dims=16,16", "value_hidden_dims=16,16", "flow_steps=2"] \
        if agent == "fql" else ["hidden_dims=16,16", "flow_steps=2", "obs_horizon=2"]
    preset = "fql-cdp" if agent == "fql" else "flow-bc-cdp"
    common = {"dataset": DATASET, "steps": 20, "batch_size": 16, "eval_every": 10,
              "checkpoint_every": 10, "eval_episodes": 2, "eval_envs": 2, "progress": False,
              "max_episode_steps": 20}
    config, agent_config = run_config.preset(preset, agent, ["contraction.window=1.0", *sizes],
                                             run_dir=str(tmp_path / "straight"), **common)
    assert config.updates_per_call == 10  # fitted to the cadence (the preset says 1000)
    straight = training.train(config, agent_config)
    assert straight["eval"]["last"]["gradient_step"] == 20

    half, _ = run_config.preset(preset, agent, ["contraction.window=1.0", *sizes],
                                run_dir=str(tmp_path / "resumed"), **{**common, "steps": 10})
    training.train(half, agent_config)
    resumed = dataclasses.replace(half, steps=20, resume=True)
    training.train(resumed, agent_config)
    a = run_config.load_policy(tmp_path / "straight")[2]
    b = run_config.load_policy(tmp_path / "resumed")[2]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
