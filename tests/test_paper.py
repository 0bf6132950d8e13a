"""The official-pipeline options one by one, and the ``paper`` / ``paper-il`` presets.

The options' numbers against the official code itself are in tests/test_parity.py; here: preset
resolution, id matching, reward normalisation, transition fractions, the EMA warm-up, the landing
grid, the integer-t embedding quirk.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import diffusion, estimators, networks, paper, run_config, samplers, schedules
from cdp_jax.agents import dql
from cdp_jax.data import protocol
from cdp_jax.data.dataset import OfflineDataset

# ------------------------------------------------------------------------- presets


@pytest.mark.parametrize("dataset_id,task", [
    ("mujoco/hopper/medium-replay-v0", "hopper-medium-replay"),
    ("hopper-medium-replay-v2", "hopper-medium-replay"),
    ("cdp/d4rl/hopper-medium-replay-v2", "hopper-medium-replay"),
    ("cdp/hopper/medium-replay-v0", "hopper-medium-replay"),
    ("mujoco/halfcheetah/medium-expert-v0", "halfcheetah-medium-expert"),
    ("D4RL/antmaze/large-diverse-v1", "antmaze-large-diverse"),
    ("cdp/d4rl/antmaze-medium-play-v2", "antmaze-medium-play"),
    ("D4RL/kitchen/complete-v2", "kitchen-complete"),
    ("kitchen-partial-v0", "kitchen-partial"),
    ("cdp/pointmaze/umaze-v0", "pointmaze-umaze"),
    ("D4RL/pointmaze/large-v2", "pointmaze-large"),
])
def test_task_ids(dataset_id, task):
    assert paper.task_for_dataset(dataset_id) == task


def test_official_table_has_every_task_config_of_the_official_code():
    assert len(paper.TASKS) == 16
    assert paper.TASKS["hopper-medium-replay"] == paper.TaskRow(1.0, 300.0, 1000, "returns_range", 1)
    assert paper.TASKS["antmaze-large-play"] == paper.TaskRow(4.5, 5.0, 1000, "minus_one", 10)
    assert paper.TASKS["kitchen-mixed"] == paper.TaskRow(0.005, 5.0, 280, "none", 1)
    assert all(row.source == "official" for row in paper.TASKS.values())
    assert all(row.source.startswith("cdp_jax") for row in paper.PROJECT_ROWS.values())
    # PointMaze: AntMaze's eta, temperature and reward, one TD sample (see cdp_jax.paper)
    assert paper.PROJECT_ROWS["pointmaze-umaze"] == dataclasses.replace(
        paper.TASKS["antmaze-medium-play"], max_episode_steps=300, td_samples=1,
        source=paper.PROJECT_ROWS["pointmaze-umaze"].source)


def test_pointmaze_rows_cap_episodes_at_the_envs_own_time_limit():
    # The reference scores are measured on the registered env (pointmaze.reference_return), so
    # an evaluation cap below its time limit would normalise truncated returns by full ones.
    import gymnasium as gym

    from cdp_jax.data.builders import pointmaze

    pointmaze._register_robotics()
    for maze in ("umaze", "medium", "large"):
        limit = gym.spec(pointmaze.env_id(maze)).max_episode_steps
        assert paper.PROJECT_ROWS[f"pointmaze-{maze}"].max_episode_steps == limit
        config, _ = run_config.preset("paper", dataset=f"cdp/pointmaze/{maze}-v0")
        assert config.max_episode_steps == limit


def test_paper_preset_takes_the_task_row():
    config, agent = run_config.preset("paper", dataset="mujoco/hopper/medium-replay-v0")
    assert (agent.eta, agent.candidate_temperature, agent.td_samples) == (1.0, 300.0, 1)
    assert config.reward_normalization == "returns_range" and config.max_episode_steps == 1000
    assert config.fraction_unit == "transitions" and config.steps == 200_000
    assert agent.contraction == paper.PAPER_PENALTY and agent.num_candidates == 100
    assert agent.contraction.penalised_count(256) == 64  # room for every in-window sample
    # Explicit flags win over the row.
    config, agent = run_config.preset("paper", agent_overrides=["eta=2.5"],
                                    dataset="cdp/hopper/medium-v0", max_episode_steps=500)
    assert agent.eta == 2.5 and agent.candidate_temperature == 300.0
    assert config.max_episode_steps == 500


def test_paper_preset_unknown_dataset_needs_explicit_values():
    with pytest.raises(ValueError, match=r"no per-task row for dataset 'my/data-v0'.*hopper-medium"
                                         r".*--set eta=E --set candidate_temperature=C"):
        run_config.preset("paper", dataset="my/data-v0")
    with pytest.raises(ValueError, match="no per-task row"):
        run_config.preset("paper", agent_overrides=["eta=2"], dataset="my/data-v0")
    _, agent = run_config.preset("paper", agent_overrides=["eta=2", "candidate_temperature=7"],
                               dataset="my/data-v0")
    assert (agent.eta, agent.candidate_temperature) == (2.0, 7.0)


def test_paper_il_preset_and_agent_checks():
    config, agent = run_config.preset("paper-il")
    assert config.agent == "dbc" and agent.actor_network == "pearce"
    assert agent.contraction.window == 1.0 and not agent.sampler_clip_x0
    # Official IL scales observations by min-max (robomimic datasets); offline RL standardises.
    assert config.obs_normalizer == "minmax"
    assert run_config.preset("paper", dataset="cdp/hopper/medium-v0")[0].obs_normalizer == "gaussian"
    with pytest.raises(ValueError, match="Invalid obs_normalizer='robust'"):
        run_config.preset("paper-il", obs_normalizer="robust")
    with pytest.raises(ValueError, match="is for agent"):
        run_config.preset("paper", "dbc")


def test_defaults_are_not_the_quirks():
    """The defaults keep cdp_jax's corrected choices; each official quirk is one field away."""
    default = dql.DQLConfig()
    quirks = {"time_embedding": "positional_integer_t", "tau": 0.995, "ema_warmup": "initial",
              "edp_draw": "separate", "edp_clip": False}
    for field, official in quirks.items():
        assert getattr(default, field) != official
        assert paper.PAPER_RL[field] == official


# ------------------------------------------------------------------------- data protocol


def _dataset(rewards, episode_ids):
    n = len(rewards)
    z = np.zeros((n, 2), np.float32)
    return OfflineDataset(z, z[:, :1], np.asarray(rewards, np.float32), z,
                          np.zeros(n, np.float32), np.zeros(n, np.float32),
                          np.asarray(episode_ids), "test", (), len(set(episode_ids)))


def test_reward_normalisations():
    data = _dataset([1.0, 2.0, 3.0, 10.0, 20.0], [0, 0, 0, 1, 1])  # returns 6 and 30
    np.testing.assert_allclose(protocol.normalize_rewards(data, "returns_range"),
                               np.array([1, 2, 3, 10, 20]) * 1000.0 / 24.0, rtol=1e-6)
    np.testing.assert_allclose(protocol.normalize_rewards(data, "minus_one"), [0, 1, 2, 9, 19])
    np.testing.assert_array_equal(protocol.normalize_rewards(data, "none"), data.rewards)
    with pytest.raises(ValueError, match="different returns"):
        protocol.normalize_rewards(_dataset([1.0, 1.0], [0, 1]), "returns_range")
    with pytest.raises(ValueError, match="Unknown reward_normalization"):
        protocol.normalize_rewards(data, "iql")


def test_fraction_of_transitions():
    arrays = {"a": np.arange(1000), "b": np.arange(1000) * 2}
    kept = protocol.keep_fraction_of_rows(arrays, 0.1, seed=3)
    assert kept["a"].size == 100 and np.array_equal(kept["b"], kept["a"] * 2)
    assert np.all(np.diff(kept["a"]) > 0)
    small = protocol.keep_fraction_of_rows(arrays, 0.05, seed=3)
    assert set(small["a"]) <= set(kept["a"])  # nested subsets under one seed
    assert not np.array_equal(protocol.keep_fraction_of_rows(arrays, 0.1, seed=4)["a"], kept["a"])
    assert protocol.keep_fraction_of_rows(arrays, 0.0001, seed=0)["a"].size == 1


# ------------------------------------------------------------------------- agent options


def _tiny(**overrides):
    return dql.default_config(actor_hidden_dim=16, critic_hidden_dim=16, time_dim=8,
                              diffusion_steps=10, sampler_steps=3, **overrides)


def _batch(key, b=8, obs_dim=3, act_dim=2):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"observations": jax.random.normal(k1, (b, obs_dim)),
            "actions": jnp.tanh(jax.random.normal(k2, (b, act_dim))),
            "rewards": jax.random.normal(k3, (b,)), "terminals": jnp.zeros((b,)),
            "next_observations": jax.random.normal(k1, (b, obs_dim))}


@pytest.mark.parametrize("warmup", ["copy", "initial"])
def test_ema_warmup(warmup):
    """Before ema_start: a copy of the actor ("copy") or the untouched initial weights ("initial",
    the official code); from ema_start on, decay from whatever the EMA held; only every
    ema_every steps."""
    config = _tiny(ema_start=4, ema_every=2, ema_decay=0.5, ema_warmup=warmup)
    init = {"w": jnp.zeros(3)}
    ema, history = init, []
    for step in range(8):
        actor = {"w": jnp.full(3, float(step + 1))}
        before = ema
        ema = dql.ema_actor(ema, actor, jnp.asarray(step), config)
        history.append((before, actor, ema))
    for step, (before, actor, ema) in enumerate(history):
        if step % 2:
            want = before["w"]
        elif step < 4:
            want = actor["w"] if warmup == "copy" else init["w"]
        else:
            want = 0.5 * before["w"] + 0.5 * actor["w"]
        np.testing.assert_allclose(ema["w"], want, err_msg=f"step {step}")
    assert float(history[-1][2]["w"][0]) == (5.5 if warmup == "copy" else 4.75)


def test_separate_edp_draw_is_used():
    state = dql.init(jax.random.PRNGKey(0), _tiny(edp_draw="separate", edp_clip=False), 3, 2)
    batch = _batch(jax.random.PRNGKey(1))
    draws = dql.sample_draws(jax.random.PRNGKey(2), state.config, 8, 2)
    assert {"edp_t", "edp_eps"} <= set(draws)
    q_loss = jax.jit(lambda d: dql.actor_loss(state.actor_params, state, state.critic_params,
                                              batch, d)[1]["actor/q_loss"])
    assert q_loss({**draws, "edp_eps": draws["edp_eps"] + 1.0}) != q_loss(draws)
    assert "edp_t" not in dql.sample_draws(jax.random.PRNGKey(2), _tiny(), 8, 2)


def test_td_target_orders():
    next_q = jnp.array([[[1.0, 5.0]], [[4.0, 2.0]]])  # (heads, B=1, n=2)
    assert float(dql.reduce_next_q(next_q, "min_then_max")[0]) == 2.0
    assert float(dql.reduce_next_q(next_q, "max_then_min")[0]) == 4.0  # official AntMaze
    one = next_q[:, :, :1]
    assert float(dql.reduce_next_q(one, "min_then_max")[0]) == float(
        dql.reduce_next_q(one, "max_then_min")[0])


# ------------------------------------------------------------------------- grid and embedding


@pytest.mark.parametrize("steps", [50, pytest.param(15, marks=pytest.mark.slow)])
def test_landing_grid_on_exact_gaussian(x64, steps):
    """CleanDiffuser's grid (ends by landing on level 0, sigma_0 = 0.0064) with an exact denoiser
    reproduces the data up to the coarse T = 50 schedule's discretisation error (DPM-Solver++(2M):
    std 0.214 for 0.2 at 50 steps, the same on cdp_jax's own grid with this discretisation);
    steps = T has a zero-length last step and stays finite."""
    schedule = schedules.cosine(50, discretization="cleandiffuser")
    denoiser = diffusion.gaussian_denoiser(jnp.array([0.3, -0.2]), jnp.array([0.5, 0.2]),
                                           schedule, prediction="x0")
    x = samplers.sample(denoiser, schedule, jax.random.PRNGKey(0), (8_000, 2), method="dpm_solver_pp_2m",
                        steps=steps, spacing="cleandiffuser", prediction="x0", dtype=jnp.float64)
    assert np.all(np.isfinite(np.asarray(x)))
    np.testing.assert_allclose(np.std(np.asarray(x), axis=0), [0.5, 0.2], rtol=0.1)
    uniform = samplers.sample(denoiser, schedule, jax.random.PRNGKey(0), (8_000, 2),
                              steps=steps, prediction="x0", dtype=jnp.float64)
    np.testing.assert_allclose(np.std(np.asarray(x), axis=0), np.std(np.asarray(uniform), axis=0),
                               rtol=0.04)
    np.testing.assert_allclose(np.mean(np.asarray(x), axis=0), [0.3, -0.2], atol=0.03)
    traj = samplers.sample(denoiser, schedule, jax.random.PRNGKey(0), (4, 2), steps=steps,
                           spacing="cleandiffuser", prediction="x0", return_trajectory=True,
                           dtype=jnp.float64)
    assert traj.shape == (steps + 1, 4, 2)


def test_cleandiffuser_spacing_needs_a_discrete_schedule():
    with pytest.raises(ValueError, match="discrete schedule"):
        schedules.cosine().time_grid(5, "cleandiffuser")


def test_integer_t_embedding_quirk():
    """The official embedding of integer t sees only cos t and sin t: t and t + 44 are close."""
    quirk = networks.PositionalEmbedding(64, integer_t=True)
    emb = quirk.apply({}, jnp.array([3, 47]))
    assert float(jnp.max(jnp.abs(emb[0] - emb[1]))) < 0.05
    fixed = networks.PositionalEmbedding(64).apply({}, jnp.array([3, 47]))
    assert float(jnp.max(jnp.abs(fixed[0] - fixed[1]))) > 0.5


def test_torch_init_bounds():
    actor = networks.DQLActor(param_init="torch")
    params = jax.jit(actor.init)(jax.random.PRNGKey(0), jnp.zeros((1, 3)),
                                 jnp.zeros((1,), jnp.int32), jnp.zeros((1, 11)))["params"]
    kernel = params["Dense_3"]["kernel"]
    bound = 1.0 / np.sqrt(256)
    assert float(jnp.max(jnp.abs(kernel))) <= bound and float(jnp.std(kernel)) > 0.5 * bound / np.sqrt(3)
    assert float(jnp.max(jnp.abs(params["Dense_3"]["bias"]))) > 0.0  # torch biases are not zero


def test_replace_keeps_presets_frozen():
    assert dataclasses.is_dataclass(paper.PAPER_PENALTY)
    assert paper.PAPER_IL["contraction"].window == 1.0 and paper.PAPER_PENALTY.window == 0.1


@pytest.mark.parametrize("target,chunked", [  # the drift target's pair is slow-only
    ("network", False), ("network", True), *(pytest.param("drift", c, marks=pytest.mark.slow)
                                              for c in (False, True))])
def test_exact_frobenius_batch_matches_per_sample_reference(x64, target, chunked, monkeypatch):
    """The batched exact penalty (one forward, d VJPs) equals the per-sample jacfwd reference,
    averaged over the in-window samples only (static-shape mask); also when the batch's tangents
    go through in chunks (``lax.map``), with the same parameter gradient."""
    from cdp_jax import contraction

    if chunked:  # 12 samples x d = 4 x width 16 floats: chunks of 3 samples
        monkeypatch.setattr(estimators, "EXACT_CHUNK_FLOATS", 3 * 4 * 16)

    schedule = schedules.cosine(10, discretization="cleandiffuser")
    actor = networks.DQLActor(hidden_dim=16, time_dim=8)
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (12, 2, 2), jnp.float64)  # chunks: d = 4
    t = jnp.arange(12) % 10
    cond = jax.random.normal(jax.random.PRNGKey(1), (12, 3), jnp.float64)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), actor.init(key, x, t, cond))
    den = lambda xx, tt, cc: actor.apply(params, xx, tt, cc)
    config = contraction.ContractionConfig(weight=2.0, penalty="frobenius", frobenius_scale="dim_squared",
                                           frobenius_estimator="exact", target=target, window=0.3,
                                           num_penalised=1.0)
    loss, metrics = jax.jit(lambda: contraction.contraction_regulariser(
        config, den, schedule, x, t, cond, key, prediction="x0"))()
    ref = jax.jit(jax.vmap(lambda xi, ti, ci: contraction.exact_sym_jacobian_frobenius(
        contraction.target_function(target, den, schedule, ti, ci[None], "x0"), xi,
        shift=0.1, scale="dim_squared")))(x, t, cond)
    in_window = np.asarray((t + 1) / 10 <= 0.3 + 1e-6)
    assert int(metrics["contraction/num_penalised"]) == in_window.sum() == 5  # levels 0,1,2,0,1
    np.testing.assert_allclose(loss, 2.0 * np.mean(np.asarray(ref)[in_window]), rtol=1e-12)
    width = estimators._widest_activation(lambda y: den(y, t, cond), x)
    assert width == 16 and estimators._chunk_size(12, 4 * width) == (3 if chunked else 12)

    def penalty_of(p, exact_reference):
        den_p = lambda xx, tt, cc: actor.apply(p, xx, tt, cc)
        if not exact_reference:
            return contraction.contraction_regulariser(config, den_p, schedule, x, t, cond, key,
                                                       prediction="x0")[0]
        values = jax.vmap(lambda xi, ti, ci: contraction.exact_sym_jacobian_frobenius(
            contraction.target_function(target, den_p, schedule, ti, ci[None], "x0"), xi,
            shift=0.1, scale="dim_squared"))(x, t, cond)
        return 2.0 * jnp.sum(jnp.where(in_window, values, 0.0)) / in_window.sum()

    grads = [jax.jit(jax.grad(penalty_of), static_argnums=1)(params, r) for r in (False, True)]
    for ours, reference in zip(*map(jax.tree_util.tree_leaves, grads), strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("method", sorted(samplers.SAMPLERS))
def test_every_sampler_runs_on_the_landing_grid(method):
    """Every method takes one coefficient per transition, so it also runs on CleanDiffuser's grid,
    whose last step lands on level 0 (a Heun regression: its coefficients once assumed the
    Tweedie ending)."""
    schedule = schedules.cosine(50, discretization="cleandiffuser")
    denoiser = diffusion.gaussian_denoiser(jnp.array([0.3, -0.2]), jnp.array([0.5, 0.2]),
                                           schedule, prediction="x0")
    x = samplers.sample(denoiser, schedule, jax.random.PRNGKey(0), (256, 2), method=method,
                        steps=15, spacing="cleandiffuser", prediction="x0")
    assert x.shape == (256, 2) and bool(jnp.all(jnp.isfinite(x)))
    np.testing.assert_allclose(np.mean(np.asarray(x), axis=0), [0.3, -0.2], atol=0.1)
