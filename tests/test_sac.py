"""SAC: the tanh-Gaussian log-density, the update under jit / scan, vectorised collection across
autoreset boundaries, the host loop and its outputs, and (slow) that it solves Pendulum-v1."""

import dataclasses
import json

import gymnasium as gym
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax.agents import sac, sac_train

SMALL = dict(hidden_dims=(32, 32), batch_size=32)
# One config (and Pendulum's shapes: obs 3, action 1, 2 envs x 25 steps = 50 updates per call) for
# the tests that run the jitted update, so they share a single compilation.
TINY = sac.default_config(**SMALL, num_envs=2, learning_starts=200, train_every=25)


def _batch(key, batch_size=16, obs_dim=3, action_dim=2):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {"observations": jax.random.normal(k1, (batch_size, obs_dim)),
            "actions": jax.random.uniform(k2, (batch_size, action_dim), minval=-1, maxval=1),
            "rewards": jax.random.normal(k3, (batch_size,)),
            "next_observations": jax.random.normal(k4, (batch_size, obs_dim)),
            "terminals": (jnp.arange(batch_size) % 5 == 0).astype(jnp.float32)}


def test_log_prob_is_the_change_of_variables_density():
    """``log pi(a) = log N(u; m, s) - sum log(1 - tanh(u)^2)``, checked against the direct formula
    in float64 numpy, and by integrating the density over a 1-D action grid (it must sum to 1)."""
    config = sac.default_config(**SMALL)
    state = sac.init(jax.random.PRNGKey(0), config, 3, 1)
    obs = jnp.ones((4, 3))
    key = jax.random.PRNGKey(1)
    mean, log_std = sac.TanhGaussianActor(1, (32, 32)).apply(state.actor_params, obs)
    a, logp = sac.sample_action(config, state.actor_params, obs, key, 1)
    m, ls = np.float64(mean), np.float64(log_std)
    u = m + np.exp(ls) * np.float64(jax.random.normal(key, mean.shape))
    np.testing.assert_allclose(a, np.tanh(u), rtol=1e-5, atol=1e-6)
    direct = (-0.5 * ((u - m) / np.exp(ls)) ** 2 - ls - 0.5 * np.log(2 * np.pi)
              - np.log(1 - np.tanh(u) ** 2))
    np.testing.assert_allclose(logp, direct[:, 0], rtol=1e-4, atol=1e-5)
    grid = np.linspace(-1 + 1e-9, 1 - 1e-9, 200_001)
    u = np.arctanh(grid)
    s = np.exp(ls[0, 0])
    density = np.exp(-0.5 * ((u - m[0, 0]) / s) ** 2) / (s * np.sqrt(2 * np.pi)) / (1 - grid ** 2)
    np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, atol=1e-3)


# Op by op (eager) compiles every primitive of the update separately: ~10 s of CPU, so slow.
@pytest.mark.parametrize("plain_update", [pytest.param(sac.update, marks=pytest.mark.slow,
                                                       id="eager"),
                                          pytest.param(jax.jit(sac.update), id="jit")])
def test_update_scan_matches_a_python_loop_of_plain_updates(plain_update):
    state = sac.init(jax.random.PRNGKey(0), TINY, 3, 1)
    num = TINY.num_envs * TINY.train_every
    batches = jax.vmap(lambda k: _batch(k, TINY.batch_size, 3, 1))(
        jax.random.split(jax.random.PRNGKey(1), num))
    scanned, scan_metrics = sac_train.update_many_jit(state, batches, jax.random.PRNGKey(2))
    keys = jax.random.split(jax.random.PRNGKey(2), num)
    looped = state
    for i in range(3):  # one update per call
        looped, metrics = plain_update(looped, jax.tree.map(lambda x, i=i: x[i], batches), keys[i])
    assert int(scanned.step) == num
    # The first plain updates reproduce the scan's per-step metrics.
    for name in ("critic/loss", "actor/loss", "alpha/value"):
        np.testing.assert_allclose(metrics[name], scan_metrics[name][2], rtol=1e-4, atol=1e-6)
    assert set(scan_metrics) >= {"critic/loss", "actor/loss", "alpha/loss", "alpha/value",
                                 "actor/entropy"}
    assert all(v.shape == (num,) and np.all(np.isfinite(v)) for v in scan_metrics.values())
    # Targets moved by Polyak averaging, temperature by its own optimiser.
    assert not np.allclose(jax.tree.leaves(scanned.target_critic_params)[0],
                           jax.tree.leaves(state.target_critic_params)[0])
    assert float(scanned.log_alpha) != float(state.log_alpha)


def test_update_many_equals_k_jitted_single_updates():
    """The whole state after ``K`` scanned updates is the state after ``K`` separate jitted
    :func:`sac.update` calls with the same batches and keys (parameters, optimiser moments, targets,
    temperature, step counter)."""
    state = sac.init(jax.random.PRNGKey(0), TINY, 3, 1)
    num = sac.updates_per_call(TINY)
    batches = jax.vmap(lambda k: _batch(k, TINY.batch_size, 3, 1))(
        jax.random.split(jax.random.PRNGKey(1), num))
    scanned, _ = sac_train.update_many_jit(state, batches, jax.random.PRNGKey(2))
    single = jax.jit(sac.update)
    looped = state
    for i, k in enumerate(jax.random.split(jax.random.PRNGKey(2), num)):
        looped, _ = single(looped, jax.tree.map(lambda x, i=i: x[i], batches), k)
    assert int(looped.step) == int(scanned.step) == num
    for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(looped), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_explore_is_act_with_the_key_split_inside():
    """``explore`` = ``key, k = split(key); act(state, obs, k)``, jitted or not; the returned key
    drives the next call."""
    state = sac.init(jax.random.PRNGKey(0), TINY, 3, 1)
    obs = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    key = jax.random.PRNGKey(2)
    a1, key1 = sac_train.explore_jit(state.actor_params, obs, key, config=TINY, action_dim=1)
    next_key, k = jax.random.split(key)
    np.testing.assert_array_equal(key1, next_key)
    np.testing.assert_allclose(a1, sac.act(state, obs, k), rtol=1e-6, atol=1e-7)
    a2, _ = sac.explore(state.actor_params, obs, key1, config=TINY, action_dim=1)
    assert a1.shape == (5, 1) and not np.allclose(a1, a2)


class _CountingEnv(gym.Env):
    """Observation ``[env id, episode index, t]``; reward ``t``; terminates at ``t ==
    terminate_at`` (never if ``None``). Wrapped in a ``TimeLimit`` of ``limit`` steps."""

    def __init__(self, env_id: int, terminate_at: int | None):
        self.env_id, self.terminate_at, self.episode, self.t = env_id, terminate_at, -1, 0
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def _obs(self):
        return np.array([self.env_id, self.episode, self.t], np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(self.t), self.t == self.terminate_at, False, {}


def _counting_envs(mode=gym.vector.AutoresetMode.SAME_STEP):
    # env 0 terminates at t = 3; env 1 is truncated at t = 4; env 2 terminates at t = 4, the step
    # its time limit also truncates it (both flags: no bootstrap); env 3 runs on.
    specs = [(3, 10), (None, 4), (4, 4), (None, 100)]
    return gym.vector.SyncVectorEnv(
        [lambda i=i, t=t, n=n: gym.wrappers.TimeLimit(_CountingEnv(i, t), n)
         for i, (t, n) in enumerate(specs)], autoreset_mode=mode)


def test_vector_env_step_stores_final_observations_and_the_two_end_flags():
    envs = _counting_envs()
    obs, _ = envs.reset(seed=0)
    steps = []
    for _ in range(8):
        action = np.full((4, 1), 0.5)
        obs, transition = sac_train.vector_env_step(envs, obs, action)
        steps.append(transition | {"returned_obs": obs})
    envs.close()
    stack = {k: np.stack([s[k] for s in steps]) for k in steps[0]}
    term, trunc = stack["terminations"], stack["truncations"]
    np.testing.assert_array_equal(np.flatnonzero(term[:, 0]), [2, 5])  # t = 3 of each episode
    np.testing.assert_array_equal(np.flatnonzero(trunc[:, 1]), [3, 7])  # t = 4
    np.testing.assert_array_equal(np.flatnonzero(term[:, 1]), [])
    np.testing.assert_array_equal(np.flatnonzero(term[:, 2] & trunc[:, 2]), [3, 7])
    assert not term[:, 3].any() and not trunc[:, 3].any()
    for i, (length, ends) in enumerate(((3, [2, 5]), (4, [3, 7]), (4, [3, 7]), (None, []))):
        obs_i, next_i, ret_i = (stack[k][:, i] for k in ("observations", "next_observations",
                                                           "returned_obs"))
        assert np.all(obs_i[:, 0] == i) and np.all(next_i[:, 0] == i)
        for t in range(8):
            episode, t_in = (t // length, t % length) if length else (0, t)
            # (env id, episode, t) before the step; the final observation of the same episode.
            np.testing.assert_array_equal(obs_i[t], [i, episode, t_in])
            np.testing.assert_array_equal(next_i[t], [i, episode, t_in + 1])
            # The observation to act on next is the reset one where the episode ended.
            expected = [i, episode + 1, 0] if t in ends else [i, episode, t_in + 1]
            np.testing.assert_array_equal(ret_i[t], expected)
        np.testing.assert_array_equal(stack["rewards"][:, i], next_i[:, 2])
    np.testing.assert_array_equal(stack["actions"], np.full((8, 4, 1), 0.5))
    with pytest.raises(ValueError, match="SAME_STEP"):
        sac_train.vector_env_step(_counting_envs(gym.vector.AutoresetMode.NEXT_STEP), obs, action)


def test_replay_insert_keeps_terminations_apart_from_truncations_and_wraps():
    envs = _counting_envs()
    obs, _ = envs.reset(seed=0)
    capacity = 10
    buffer = {"observations": np.zeros((capacity, 3), np.float32),
              "actions": np.zeros((capacity, 1), np.float32),
              "rewards": np.zeros(capacity, np.float32),
              "next_observations": np.zeros((capacity, 3), np.float32),
              "terminals": np.zeros(capacity, np.float32)}
    cursor, rows = 0, []
    for t in range(8):
        policy_action = np.linspace(-1, 1, 4)[:, None] * (t + 1) / 8
        obs, transition = sac_train.vector_env_step(envs, obs, 2 * policy_action)
        cursor = sac_train.replay_insert(buffer, cursor, transition, policy_action)
        rows += [(transition["observations"][i], policy_action[i], transition["rewards"][i],
                  transition["next_observations"][i], transition["terminations"][i])
                 for i in range(4)]
    envs.close()
    assert cursor == 32 % capacity
    # The ring holds the last 10 of the 32 rows, row r at r % capacity.
    for r in range(32 - capacity, 32):
        o, a, rew, nxt, term = rows[r]
        np.testing.assert_array_equal(buffer["observations"][r % capacity], o)
        np.testing.assert_array_equal(buffer["actions"][r % capacity], a.astype(np.float32))
        assert buffer["rewards"][r % capacity] == rew
        np.testing.assert_array_equal(buffer["next_observations"][r % capacity], nxt)
        assert buffer["terminals"][r % capacity] == float(term)
    # Rows 28-31 are the last vector step: env 0 is mid-episode, env 1 was truncated (no
    # terminal), env 2 terminated and was truncated at once (terminal), env 3 runs on.
    np.testing.assert_array_equal(buffer["terminals"][[8, 9, 0, 1]], [0.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(buffer["next_observations"][[8, 9, 0, 1], 2], [2, 4, 4, 8])


@pytest.mark.slow
def test_fractional_updates_per_step():
    """``updates_per_step = 0.5``: half as many gradient steps as env steps after
    ``learning_starts``; a product that is not a whole number of updates per call is refused."""
    config = dataclasses.replace(TINY, updates_per_step=0.5).validate()
    assert sac.updates_per_call(config) == 25 and sac.updates_per_call(TINY) == 50
    state, _ = sac_train.train("Pendulum-v1", config, 600, seed=3, eval_every=600,
                               eval_episodes=1)
    assert int(state.step) == 200  # (600 - 200) env steps, half an update each
    with pytest.raises(ValueError, match="updates_per_step"):
        sac.default_config(num_envs=1, train_every=50, updates_per_step=0.33)


def test_terminal_cuts_the_bootstrap():
    """With discount 1 and a zero-temperature target, the TD target of a terminal transition is its
    reward alone."""
    config = sac.default_config(**SMALL, discount=1.0, init_temperature=1e-12)
    state = sac.init(jax.random.PRNGKey(0), config, 3, 2)
    batch = _batch(jax.random.PRNGKey(1))
    critic_loss = jax.jit(sac.critic_loss)  # one compilation, not one per primitive
    _, metrics = critic_loss(state.critic_params, state, batch, jax.random.PRNGKey(2))
    term = _batch(jax.random.PRNGKey(1)) | {"terminals": jnp.ones(16)}
    _, metrics_term = critic_loss(state.critic_params, state, term, jax.random.PRNGKey(2))
    np.testing.assert_allclose(metrics_term["critic/target_mean"], batch["rewards"].mean(),
                               rtol=1e-5)
    assert not np.isclose(metrics["critic/target_mean"], batch["rewards"].mean())


def test_act_is_bounded_and_deterministic_mode_is_the_mean():
    state = sac.init(jax.random.PRNGKey(0), sac.default_config(**SMALL), 3, 2)
    obs = jax.random.normal(jax.random.PRNGKey(1), (64, 3)) * 10
    a = jax.jit(sac.act)(state, obs, jax.random.PRNGKey(2))
    assert a.shape == (64, 2) and np.all(np.abs(a) <= 1.0)
    d1 = sac.act(state, obs, jax.random.PRNGKey(3), deterministic=True)
    d2 = sac.act(state, obs, jax.random.PRNGKey(4), deterministic=True)
    np.testing.assert_array_equal(d1, d2)
    # vmap over a batch of single observations gives the same deterministic actions.
    dv = jax.vmap(lambda o: sac.act(state, o[None], jax.random.PRNGKey(0), True)[0])(obs)
    np.testing.assert_allclose(dv, d1, rtol=1e-6, atol=1e-6)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="batch_size"):
        sac.default_config(batch_size=0)
    with pytest.raises(ValueError, match="discount"):
        sac.default_config(discount=1.5)
    with pytest.raises(ValueError, match="hidden_dims"):
        sac.default_config(hidden_dims=())
    with pytest.raises(ValueError, match="bounded Box"):
        sac_train.action_scaler(type("S", (), {"low": np.array([-np.inf]),
                                               "high": np.array([1.0])})())


def test_train_writes_snapshots_transitions_and_restores(tmp_path):
    """The tiny CI run: two vector envs on Pendulum-v1, snapshots, the transition record."""
    state, evals = sac_train.train("Pendulum-v1", TINY, 600, seed=3, out_dir=tmp_path,
                                   eval_every=300, eval_episodes=2, record_transitions=True)
    assert [e["env_steps"] for e in evals] == [300, 600]
    assert int(state.step) == 400  # (600 - 200) env steps, one update each
    assert all(np.isfinite(e["return_mean"]) for e in evals)
    saved = json.loads((tmp_path / "evaluations.json").read_text())
    assert [e["env_steps"] for e in saved] == [300, 600]
    restored, meta = sac_train.load_actor(tmp_path)
    assert meta["eval"]["env_steps"] == 600
    for a, b in zip(jax.tree.leaves(restored.actor_params), jax.tree.leaves(state.actor_params),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    early, _ = sac_train.load_actor(tmp_path, step=300)
    assert not np.array_equal(jax.tree.leaves(early.actor_params)[0],
                              jax.tree.leaves(state.actor_params)[0])
    with h5py.File(tmp_path / "transitions.h5") as f:
        assert f["observations"].shape == (300, 2, 3) and f["actions"].shape == (300, 2, 1)
        obs, nxt, trunc = f["observations"][:], f["next_observations"][:], f["truncations"][:]
        assert np.all(np.abs(f["actions"][:]) <= 2.0)  # the env's own action scale
    # Pendulum truncates at 200 steps: three episodes per env; within an episode next_obs is the
    # following observation, at its end the final observation (not the reset one).
    assert trunc.sum() == 2 * 1 and np.all(trunc[199])
    np.testing.assert_array_equal(nxt[:199], obs[1:200])
    assert not np.allclose(nxt[199], obs[200])


def test_resume_continues_a_run(tmp_path):
    sac_train.train("Pendulum-v1", TINY, 300, seed=3, out_dir=tmp_path, eval_every=300,
                    eval_episodes=1, record_transitions=True)
    with pytest.raises(ValueError, match="cannot resume"):
        sac_train.train("Pendulum-v1", sac.default_config(**SMALL), 600, seed=3,
                        out_dir=tmp_path, record_transitions=True, resume=True)
    ticks = []
    state, evals = sac_train.train("Pendulum-v1", TINY, 600, seed=3, out_dir=tmp_path,
                                   eval_every=300, eval_episodes=1, record_transitions=True,
                                   resume=True, progress=ticks.append)
    assert [e["env_steps"] for e in evals] == [300, 600]
    assert ticks[0] == 300 and sum(ticks) == 600  # the bar starts where the run stood
    assert evals[1]["seconds"] > evals[0]["seconds"]  # wall time counts across the resume
    assert int(state.step) == 400  # 100 before the checkpoint, 300 after
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_steps"] == 600 and saved["resumed_at"] == [300]  # replays need the resumes
    with h5py.File(tmp_path / "transitions.h5") as f:
        assert f["rewards"].shape == (300, 2)
        trunc = f["truncations"][:]
    assert np.all(trunc[149])  # the episodes cut by the interruption end there
    assert sac_train.load_actor(tmp_path)[1]["eval"]["env_steps"] == 600


def test_train_is_deterministic_given_the_seed():
    a, ea = sac_train.train("Pendulum-v1", TINY, 300, seed=5, eval_every=300, eval_episodes=1)
    b, eb = sac_train.train("Pendulum-v1", TINY, 300, seed=5, eval_every=300, eval_episodes=1)
    assert ea[0]["return_mean"] == eb[0]["return_mean"]
    for x, y in zip(jax.tree.leaves(a.actor_params), jax.tree.leaves(b.actor_params), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_sac_solves_pendulum():
    """Pendulum-v1 counts as solved around a return of -200 (-150 for the best agents); SAC with
    the default setting gets there within 10k env steps (measured: -127 at 10k, seed 0)."""
    config = sac.default_config(learning_starts=1000)
    _, evals = sac_train.train("Pendulum-v1", config, 10_000, seed=0, eval_every=2000,
                               eval_episodes=10)
    assert max(e["return_mean"] for e in evals) >= -200.0, evals
