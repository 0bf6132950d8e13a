"""Parity with the official CDP code (PyTorch, on CleanDiffuser), number for number.

Golden outputs of the official code are in ``tests/fixtures/parity/*.npz``, written by
``tools/make_parity_fixtures.py`` (format: docs/FIXTURES-FORMAT.md). Network weights are not
stored: both sides regenerate them from a seeded rule. The ``paper`` / ``paper-il`` presets'
configurations are what is compared, so these tests also prove the presets reproduce the official
pipeline. Tolerances (relative to each array's largest magnitude): float64 1e-10, float32 1e-5.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import contraction, diffusion, networks, official, paper, samplers, schedules
from cdp_jax.agents import dbc, dql

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
GENERATOR_VERSION = 1
REGENERATE = ("python tools/make_parity_fixtures.py --official <checkout @ 5a39a66> "
              "--cleandiffuser <checkout @ 05f17fc> (setup in the script's docstring)")
RTOL64, RTOL32 = 1e-10, 1e-5


def load(name: str) -> dict:
    """A fixture as a dict of numpy arrays; a missing or foreign file fails, naming the fix."""
    path = FIXTURES / name
    if not path.exists():
        pytest.fail(f"parity fixture {path} is missing; regenerate it with {REGENERATE}")
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    version = int(out["generator_version"]) if "generator_version" in out else None
    if version != GENERATOR_VERSION:
        pytest.fail(f"parity fixture {path} comes from generator version {version}; these tests "
                    f"expect {GENERATOR_VERSION}. Regenerate it with {REGENERATE}")
    return out


def weights(data: dict, prefix: str) -> dict:
    """The deterministic official weights of model ``prefix`` (torch names -> arrays)."""
    names, shapes = data[f"{prefix}__names"], data[f"{prefix}__shapes"]
    scales, offsets = data[f"{prefix}__scales"], data[f"{prefix}__offsets"]
    seed = int(data[f"{prefix}__seed"])
    out = {}
    for i, (name, shape) in enumerate(zip(names, shapes, strict=True)):
        dims = tuple(int(n) for n in str(shape).split("x"))
        draw = np.random.default_rng([seed, i]).standard_normal(dims)
        out[str(name)] = offsets[i] + scales[i] * draw
    return out


def close(got, want, rtol, what=""):
    """Max |got - want| relative to max |want| is at most ``rtol`` (reported to the file named by
    ``$PARITY_REPORT`` when set: the tolerances reached)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300)
    if os.environ.get("PARITY_REPORT"):
        with open(os.environ["PARITY_REPORT"], "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]}\t{what}\t{err:.3g}\n")
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"
    return err


def close_tree(got: dict, want: dict, rtol, what=""):
    """Leaf by leaf, on torch names."""
    assert set(got) == set(want), f"{what}: names differ: {set(got) ^ set(want)}"
    return max(close(got[k], want[k], rtol, f"{what} {k}") for k in want)


def cast(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(
        jnp.asarray(x).dtype, jnp.floating) else jnp.asarray(x), tree)


# float32 runs of the costlier tests live behind the slow marker (the float32 samplers stay in
# the default run; the float64 runs are the exact checks).
SLOW_F32 = ["float64", pytest.param("float32", marks=pytest.mark.slow)]


@pytest.fixture(params=["float64", "float32"])
def precision(request):
    """Run a test in float64 (tolerance 1e-10) and in float32 (1e-5)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", request.param == "float64")
    try:
        yield (jnp.float64, RTOL64) if request.param == "float64" else (jnp.float32, RTOL32)
    finally:
        jax.config.update("jax_enable_x64", previous)


# ------------------------------------------------------------------------- fixture handling


def test_missing_or_foreign_fixture_fails_naming_the_regeneration(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "FIXTURES", tmp_path)
    with pytest.raises(pytest.fail.Exception, match="missing.*make_parity_fixtures"):
        load("schedules.npz")
    np.savez(tmp_path / "schedules.npz", generator_version=np.int64(0))
    with pytest.raises(pytest.fail.Exception, match="version 0.*make_parity_fixtures"):
        load("schedules.npz")


# ------------------------------------------------------------------------- schedules, grids


def test_cleandiffuser_schedule_tables(x64):
    data = load("schedules.npz")
    for kind, make in (("cosine", schedules.cosine), ("linear", schedules.linear)):
        for T in (50, 100, 1000):
            sch = make(T, discretization="cleandiffuser")
            idx = np.arange(T)
            close(sch.alpha(idx), data[f"{kind}_T{T}_alpha"], RTOL64, f"{kind} T={T} alpha")
            close(sch.sigma(idx), data[f"{kind}_T{T}_sigma"], RTOL64, f"{kind} T={T} sigma")
            close(jax.jit(sch.sigma)(jnp.asarray(idx)), data[f"{kind}_T{T}_sigma"], RTOL64)
    # The documented headline numbers: sigma_0 is 6.5x smaller than the iDDPM-style table's.
    np.testing.assert_allclose(schedules.cosine(50, discretization="cleandiffuser").sigma(0),
                               0.00642528, rtol=1e-6)
    np.testing.assert_allclose(schedules.cosine(50).sigma(0), 0.0418, rtol=1e-3)


def test_cleandiffuser_sampling_grids():
    data = load("schedules.npz")
    keys = [k for k in data if k.startswith("grid_")]
    assert len(keys) == 9
    for key in keys:
        T, S = (int(part[1:]) for part in key.split("_")[1:])
        np.testing.assert_array_equal(schedules.cleandiffuser_levels(T, S), data[key], key)
        grid = schedules.cosine(T, discretization="cleandiffuser").time_grid(S, "cleandiffuser")
        np.testing.assert_array_equal(grid, data[key][::-1], key)


def test_positional_embedding(x64):
    data = load("schedules.npz")
    quirk = networks.PositionalEmbedding(64, integer_t=True)
    got = quirk.apply({}, jnp.asarray(data["emb_t_long"], jnp.int32))
    close(got, data["emb_out_long"], RTOL64, "integer-t embedding")
    # The float path: CleanDiffuser computes its frequencies in float32; ours are float64, which
    # moves the embedding by at most |t| * 1 ulp(float32) ~ 5e-7 at t = 49.
    got = networks.PositionalEmbedding(64).apply({}, jnp.asarray(data["emb_t_float"]))
    np.testing.assert_allclose(got, data["emb_out_float"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(data["emb_freqs"]),
                               (1e-4) ** (np.arange(32) / 32.0), rtol=1e-7)


# ------------------------------------------------------------------------- networks


@pytest.mark.slow  # the whole-step tests run the same networks against the same weights
def test_networks_forward(precision):
    dtype, rtol = precision
    data = load("networks.npz")
    actor = networks.DQLActor(time_embedding="positional_integer_t")
    params = cast(official.dqlmlp_params(weights(data, "dqlmlp")), dtype)
    out = actor.apply(params, jnp.asarray(data["dqlmlp_x"], dtype),
                      jnp.asarray(data["dqlmlp_t"], jnp.int32), jnp.asarray(data["dqlmlp_cond"], dtype))
    close(out, data["dqlmlp_out"], rtol, "DQLMlp")

    critic = networks.DoubleCritic((256,) * 3, layer_norm_eps=1e-5)
    q = critic.apply(cast(official.dql_critic_params(weights(data, "critic")), dtype),
                     jnp.asarray(data["critic_obs"], dtype), jnp.asarray(data["critic_act"], dtype))
    close(q, np.stack([data["critic_q1"][:, 0], data["critic_q2"][:, 0]]), rtol, "DQLCritic")

    pearce = networks.PearceActor(hidden_dim=512, emb_dim=128)
    out = pearce.apply(cast(official.pearce_params(weights(data, "pearce")), dtype),
                       jnp.asarray(data["pearce_x"], dtype), jnp.asarray(data["pearce_t"], jnp.int32),
                       jnp.asarray(data["pearce_obs"], dtype))
    close(out, data["pearce_out"], rtol, "PearceMlp")


# ------------------------------------------------------------------------- samplers

SOLVERS = {"2M": "dpm_solver_pp_2m", "ddim": "ddim", "pp1": "dpm_solver_pp_1s"}


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_rl_sampler_15_steps(precision, solver):
    dtype, rtol = precision
    data = load("samplers.npz")
    config = dql.default_config(**{**paper.PAPER_RL, "sampler": SOLVERS[solver]})
    params = cast(official.dqlmlp_params(weights(data, "actor")), dtype)
    obs = jnp.asarray(data["sampler_obs"], dtype)
    fn = jax.jit(lambda p, o, n, temp: dql.sample_actions(config, p, o, None, 3, temperature=temp,
                                                            noise=n))
    for temp in ("1.0", "0.5"):
        out = fn(params, obs, jnp.asarray(data[f"xT_{solver}_{temp}"], dtype), float(temp))
        close(out, data[f"out_{solver}_{temp}"], rtol, f"{solver} temperature {temp}")


def test_il_sampler_50_steps_unclipped(precision):
    dtype, rtol = precision
    data = load("samplers.npz")
    config = dbc.default_config(**paper.PAPER_IL)
    actor = networks.PearceActor(hidden_dim=512, emb_dim=128)
    params = cast(official.pearce_params(weights(data, "il_actor")), dtype)
    schedule = schedules.cosine(50, discretization="cleandiffuser")
    denoiser = lambda x, t, c: actor.apply(params, x, t, c)
    out = samplers.sample(denoiser, schedule, None, (16, 7), jnp.asarray(data["il_obs"], dtype),
                          method=config.sampler, steps=config.sampler_steps,
                          spacing=config.sampler_spacing, prediction="x0", clip_x0=None,
                          x_init=jnp.asarray(data["il_xT"], dtype), dtype=dtype)
    close(out, data["il_out"], rtol, "IL 50-step sample")


# ------------------------------------------------------------------------- IL loss pieces


def test_bc_loss_penalty_and_their_gradients(x64):
    data = load("losses.npz")
    torch_params = weights(data, "small")
    actor = networks.PearceActor(hidden_dim=64, emb_dim=16)
    schedule = schedules.cosine(50, discretization="cleandiffuser")
    x0, obs, t = jnp.asarray(data["x0"]), jnp.asarray(data["obs"]), jnp.asarray(data["t"], jnp.int32)
    eps = jnp.asarray(data["eps"])
    penalty_config = paper.PAPER_IL["contraction"]

    def pieces(tp):
        params = official.pearce_params(tp)
        denoiser = lambda x, tt, c: actor.apply(params, x, tt, c)
        bc, aux = diffusion.denoising_loss_from_draws(denoiser, schedule, x0, obs, t, eps,
                                                      prediction="x0")
        reg, metrics = contraction.contraction_regulariser(
            penalty_config, denoiser, schedule, aux["x_t"], aux["t"], obs, jax.random.PRNGKey(0),
            prediction="x0")
        return bc, reg / penalty_config.weight, metrics, aux["x_t"], denoiser

    bc, jac_loss, metrics, x_t = jax.jit(lambda tp: pieces(tp)[:4])(torch_params)
    denoiser = pieces(torch_params)[4]
    close(bc, data["bc_loss"], RTOL64, "bc_loss")
    close(jac_loss, data["jacobian_loss"], RTOL64, "jacobian_loss")
    close(metrics["contraction/sym_jacobian_norm_mean"], data["jacobian_norm"], RTOL64)
    close(bc + penalty_config.weight * jac_loss, data["loss"], RTOL64, "loss")
    jac = jax.jit(jax.vmap(lambda x, tt, c: jax.jacfwd(
        lambda y: denoiser(y[None], tt[None], c[None])[0])(x)))(x_t, t, obs)
    close(jac, data["jacobian"], RTOL64, "Jacobian")
    eig = jax.jit(jax.vmap(lambda x, tt, c: contraction.exact_max_sym_eigenvalue(
        lambda y: denoiser(y[None], tt[None], c[None])[0], x)))(x_t, t, obs)
    close(eig.mean(), data["eigen_max_exact"], RTOL64, "exact largest eigenvalue")

    grad_bc, grad_jac = jax.jit(lambda tp: (jax.grad(lambda p: pieces(p)[0])(tp),
                                             jax.grad(lambda p: pieces(p)[1])(tp)))(torch_params)
    close_tree(grad_bc, {k[len("grad_bc__"):]: v for k, v in data.items()
                         if k.startswith("grad_bc__")}, RTOL64, "d bc_loss")
    close_tree(grad_jac, {k[len("grad_jac__"):]: v for k, v in data.items()
                          if k.startswith("grad_jac__")}, RTOL64, "d jacobian_loss")


# ------------------------------------------------------------------------- whole training steps


def _after(data: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}


def _rl_state(data, config, obs_dim, action_dim, dtype):
    """A DQL state holding the official initial weights (EMA = actor, target = critic)."""
    state = dql.init(jax.random.PRNGKey(0), config, obs_dim, action_dim)
    actor = cast(official.dqlmlp_params(weights(data, "actor")), dtype)
    critic = cast(official.dql_critic_params(weights(data, "critic")), dtype)
    actor_opt, critic_opt = dql._optimizers(config)
    return state.replace(actor_params=actor, ema_params=actor, critic_params=critic,
                         target_critic_params=critic, actor_opt_state=actor_opt.init(actor),
                         critic_opt_state=critic_opt.init(critic))


def _rl_inputs(data, k, dtype):
    batch = {"observations": data[f"batch{k}_obs"], "actions": data[f"batch{k}_act"],
             "rewards": data[f"batch{k}_rew"][:, 0], "terminals": data[f"batch{k}_tml"][:, 0],
             "next_observations": data[f"batch{k}_next_obs"]}
    draws = {"next_noise": data[f"draw{k}_next_noise"],
             "bc_t": data[f"draw{k}_bc_t"].astype(np.int32), "bc_eps": data[f"draw{k}_bc_eps"],
             "edp_t": data[f"draw{k}_edp_t"].astype(np.int32), "edp_eps": data[f"draw{k}_edp_eps"],
             # The official code takes -Q1 / |Q2| when np.random.uniform() > 0.5.
             "q_index": np.int32(0 if data[f"draw{k}_q_uniform"] > 0.5 else 1),
             "chain_key": jax.random.PRNGKey(0), "contraction_key": jax.random.PRNGKey(k)}
    return cast(batch, dtype), cast(draws, dtype)


def to_torch_actor(params):
    return {k: np.asarray(v) for k, v in official.dqlmlp_state(params).items()}


def to_torch_critic(params):
    return {k: np.asarray(v) for k, v in official.dql_critic_state(params).items()}


def to_torch_pearce(params):
    return {k: np.asarray(v) for k, v in official.pearce_state(params).items()}


@pytest.mark.parametrize("precision", SLOW_F32, indirect=True)
def test_whole_rl_step_hopper(precision):
    """Two full official RL updates (critic, actor with EDP and the exact penalty, optimisers,
    learning-rate schedule, EMA and target updates) from the same weights, batches and draws."""
    dtype, rtol = precision
    data = load("rl_step.npz")
    config = dql.default_config(**{**paper.PAPER_RL, "critic_hidden_dim": 64,
                                   **paper.rl_task_overrides(paper.TASKS["hopper-medium-replay"])[0],
                                   "lr_decay_steps": 2})
    state = _rl_state(data, config, 11, 3, dtype)
    update = jax.jit(dql.update_with_draws)
    for k in (0, 1):
        batch, draws = _rl_inputs(data, k, dtype)
        state, metrics = update(state, batch, draws)
        close(metrics["critic/loss"], data[f"log{k}_critic_loss"], rtol, f"step {k} critic loss")
        close(metrics["critic/target_mean"], data[f"log{k}_target_q_mean"], rtol)
        close(metrics["actor/bc_loss"], data[f"log{k}_bc_loss"], rtol, f"step {k} bc loss")
        close(metrics["actor/q_loss"], data[f"log{k}_q_loss"], rtol, f"step {k} q loss")
        close(metrics["contraction/penalty"], data[f"log{k}_jacobian_loss"], rtol, f"step {k} penalty")
        close(metrics["contraction/sym_jacobian_norm_mean"], data[f"log{k}_jacobian_norm"], rtol)
        assert int(metrics["contraction/num_penalised"]) == int(data[f"draw{k}_edp_n_window"])
        if k == 0:
            close_tree(to_torch_critic(state.critic_params), _after(data, "after0__critic__"),
                       rtol, "critic after step 0")
            close_tree(to_torch_critic(state.target_critic_params),
                       _after(data, "after0__target__"), rtol, "target after step 0")
    close_tree(to_torch_actor(state.actor_params), _after(data, "after__actor__"), rtol, "actor")
    close_tree(to_torch_critic(state.critic_params), _after(data, "after__critic__"), rtol, "critic")
    close_tree(to_torch_critic(state.target_critic_params), _after(data, "after__target__"), rtol,
               "target critic")
    assert bool(data["ema_equals_initial"])  # the official EMA waits for step 1000 ...
    exact = 0.0 if dtype == jnp.float64 else 1e-7  # float32: only the initial cast
    close_tree(to_torch_actor(state.ema_params), weights(data, "actor"), exact, "EMA")  # ours too


@pytest.mark.slow  # the TD-target order itself is unit-tested in test_paper.py
@pytest.mark.parametrize("precision", ["float64", "float32"], indirect=True)
def test_whole_rl_step_antmaze_td_target(precision):
    """AntMaze: 10 next actions per state, per critic head the max, then the min over heads."""
    dtype, rtol = precision
    data = load("rl_step_antmaze.npz")
    config = dql.default_config(**{**paper.PAPER_RL, "critic_hidden_dim": 64,
                                   **paper.rl_task_overrides(paper.TASKS["antmaze-medium-play"])[0],
                                   "lr_decay_steps": 1})
    assert config.td_samples == 10 and config.td_target_order == "max_then_min"
    state = _rl_state(data, config, 29, 8, dtype)
    batch, draws = _rl_inputs(data, 0, dtype)
    state, metrics = jax.jit(dql.update_with_draws)(state, batch, draws)
    close(metrics["critic/loss"], data["log0_critic_loss"], rtol, "critic loss")
    close(metrics["critic/target_mean"], data["log0_target_q_mean"], rtol, "target mean")
    close(metrics["actor/q_loss"], data["log0_q_loss"], rtol, "q loss")
    close_tree(to_torch_critic(state.critic_params), _after(data, "after__critic__"), rtol, "critic")
    close_tree(to_torch_critic(state.target_critic_params), _after(data, "after__target__"), rtol,
               "target critic")


@pytest.mark.parametrize("precision", SLOW_F32, indirect=True)
def test_whole_il_step(precision):
    """Two official IL updates (BC loss + exact penalty on every noise level, AdamW with weight
    decay 0.01, EMA every step), through the ``paper-il`` configuration."""
    dtype, rtol = precision
    data = load("il_step.npz")
    config = dbc.default_config(**{**paper.PAPER_IL, "hidden_dim": 64, "time_dim": 16})
    state = dbc.init(jax.random.PRNGKey(0), config, 19, 7)
    params = cast(official.pearce_params(weights(data, "il")), dtype)
    state = state.replace(params=params, ema_params=params,
                          opt_state=dbc._optimizer(config).init(params))
    update = jax.jit(dbc.update_with_draws)
    for k in (0, 1):
        batch = cast({"observations": data[f"batch{k}_obs"],
                      "actions": data[f"batch{k}_action"][:, None, :]}, dtype)
        draws = {"t": jnp.asarray(data[f"draw{k}_t"], jnp.int32),
                 "eps": jnp.asarray(data[f"draw{k}_eps"][:, None, :], dtype),
                 "contraction_key": jax.random.PRNGKey(k)}
        state, metrics = update(state, batch, draws)
        close(metrics["actor/loss"], data[f"log{k}_loss"], rtol, f"step {k} loss")
        close(metrics["contraction/penalty"], data[f"log{k}_jacobian_loss"], rtol, f"step {k} penalty")
    close_tree(to_torch_pearce(state.params), _after(data, "after__model__"), rtol, "model")
    close_tree(to_torch_pearce(state.ema_params), _after(data, "after__ema__"), rtol, "EMA")
