"""Write golden ``.npz`` fixtures from FQL's OWN code (Park et al. 2025, seohongpark/fql) for parity tests.

What it does: imports ``agents/fql.py`` of github.com/seohongpark/fql (commit 719d044, the commit whose
``get_config`` defaults the issue pins), builds ``FQLAgent.create(seed, ex_observations, ex_actions, config)``
on Hopper-like shapes (obs 11, act 3) with small hidden sizes, and records, for a fixed random batch:

* every parameter before the update (critic ensemble, target critic, actor_bc_flow, actor_onestep_flow) under
  its flax path, ``params/modules_critic/value_net/Dense_0/kernel`` etc.;
* the batch, every PRNG key on the way (uint32[2] raw threefry keys) and EVERY random draw FQL makes inside
  ``total_loss`` (next-action noise of the critic target, x_0 and t of the BC flow loss, the distillation
  noise, the noise of the 'mse' metric), re-derived here with the same splits as FQL;
* FQL's ``total_loss`` and all its info entries, the gradient of the total loss w.r.t. every parameter,
  the parameters after one ``agent.update(batch)`` (Adam, then the Polyak target update) and after a second
  update on the same batch (with that step's draws and info), plus the ``grad/*`` info entries;
* ``compute_flow_actions(observations, noises)`` for recorded noises, and
  ``sample_actions(observations, seed)`` with the noise it draws;
* intermediate tensors (next actions, target Q, x_t, predicted velocity, distillation target, ...);
* the config actually used (JSON string), the overrides, FQL's commit and the jax/flax/optax/numpy versions.

Two cases are written: ``fql_default.npz`` (get_config() defaults, only hidden dims shrunk to 4 x 32) and
``fql_variant.npz`` (q_agg='min', normalize_q_loss=True, actor_layer_norm=True and other non-default values)
so both branches of every config switch are covered.

The generator checks itself before it writes anything (see ``check_case``): the draws re-derived here
reproduce FQL's losses when fed through FQL's own modules, an independent pure-jax re-implementation of the
networks/losses (written from the description in the FQL notes) reproduces FQL's losses and gradients, and a
hand-written Adam + Polyak update reproduces FQL's ``update``.

This is a developer tool. It is NOT a dependency of cdp_jax and CI never runs it; the tests only read its
committed output. Setup (CPU only, a few seconds of compute):

    # FQL's source outside the repo, at commit 719d044, e.g. via
    # ``git archive 719d044 | tar -x -C /work/fql_src``
    # and ``echo <full hash> > /work/fql_src/FQL_COMMIT``, or a git clone checked out at 719d044)
    python3 -m venv /work/fqlvenv && . /work/fqlvenv/bin/activate
    pip install jax==0.10.2 jaxlib==0.10.2 flax==0.12.8 optax==0.2.8 ml_collections numpy==2.4.6 distrax
    python tools/make_fql_fixtures.py --fql-src /work/fql_src            # writes tests/fixtures/fql/*.npz
    python tools/make_fql_fixtures.py --fql-src /work/fql_src --time     # FQL update steps/s, batch 256

(distrax is only imported by FQL's utils/networks.py for its Gaussian actor, which FQL's agent does not use.)
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

FIXTURE_VERSION = 1
EXPECTED_COMMIT = "719d04417cb0b206deddbc7d761b3e710c3d750c"
# sha256 of FQL's files at 719d044; a mismatch is reported (and fails unless --allow-other-source).
EXPECTED_SHA256 = {
    "agents/fql.py": "234c313d3acb3ba3d5d2cf1a08feb8a9cda23d47577687ff1daa9b29d425ed1f",
    "utils/networks.py": "3f38e3d413d573597348e31f2abb5431f54bf89e96fc76781a9471c72d6062aa",
    "utils/flax_utils.py": "5b6a8e9a919bf57dae0c1454f327ded4235385f9d9dcd1e62263fe4fad9fd484",
}

OBS_DIM, ACT_DIM = 11, 3  # Hopper shapes

# name -> (config overrides of get_config(), batch size, agent seed, data seed)
CASES = {
    "fql_default": (
        dict(actor_hidden_dims=(32, 32, 32, 32), value_hidden_dims=(32, 32, 32, 32)),
        16,
        0,
        1234,
    ),
    "fql_variant": (
        dict(
            actor_hidden_dims=(16, 16),
            value_hidden_dims=(16, 16),
            actor_layer_norm=True,
            layer_norm=True,
            q_agg="min",
            normalize_q_loss=True,
            alpha=3.0,
            flow_steps=4,
            discount=0.95,
            tau=0.1,
            lr=1e-3,
        ),
        8,
        7,
        4321,
    ),
}

jax = jnp = None  # imported in main()


# ------------------------------------------------------------------------------------------ helpers


def flatten(tree, prefix):
    """Flatten a nested dict of arrays into {'prefix/a/b/c': np.ndarray}."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}"
        if hasattr(v, "items"):
            out.update(flatten(v, key))
        else:
            out[key] = np.asarray(v)
    return out


def tree_map(f, *trees):
    return jax.tree_util.tree_map(f, *trees)


def max_abs_diff(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(la, lb, strict=True)
    )


def assert_close(name, a, b, atol, rtol=0.0, log=None):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b), name
    worst = 0.0
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape, (name, x.shape, y.shape)
        err = np.abs(x - y) - rtol * np.abs(y)
        worst = max(worst, float(np.max(np.abs(x - y))))
        if np.any(err > atol):
            raise AssertionError(
                f"{name}: max |diff| {np.max(np.abs(x - y)):.3g} > atol {atol} (+rtol {rtol})"
            )
    if log is not None:
        log.append(f"{name}: max|diff|={worst:.3g}")
    return worst


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fql_commit(src, given):
    if given:
        return given
    p = os.path.join(src, "FQL_COMMIT")
    if os.path.exists(p):
        return open(p).read().strip()
    try:
        return subprocess.check_output(["git", "-C", src, "rev-parse", "HEAD"], text=True).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def import_fql(src):
    sys.path.insert(0, os.path.abspath(src))
    from agents.fql import FQLAgent, get_config  # noqa: E402  (FQL's own code)

    return FQLAgent, get_config


def jsonable(x):
    if isinstance(x, (tuple, list)):
        return [jsonable(v) for v in x]
    if hasattr(x, "items"):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return x


# ------------------------------------------------------------------ independent re-implementation
# Written from the description in the FQL notes (not from FQL's modules): used only to check that the
# description (and the re-derived random draws) reproduce FQL's numbers.


def ref_layernorm(p, x, eps=1e-6):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.maximum(
        jnp.mean(jnp.square(x), axis=-1, keepdims=True) - jnp.square(mean), 0.0
    )  # flax fast var
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def ref_mlp(p, x, n_layers, layer_norm):
    """FQL's MLP (utils/networks.py:33-60): Dense -> gelu(tanh approx) -> [LayerNorm] for hidden layers."""
    for i in range(n_layers):
        d = p[f"Dense_{i}"]
        x = x @ d["kernel"] + d["bias"]
        if i + 1 < n_layers:
            x = jax.nn.gelu(x, approximate=True)
            if layer_norm:
                x = ref_layernorm(p[f"LayerNorm_{i}"], x)
    return x


class Ref:
    def __init__(self, cfg):
        self.cfg = cfg
        self.nv = len(cfg["value_hidden_dims"]) + 1
        self.na = len(cfg["actor_hidden_dims"]) + 1

    def critic(self, p, obs, act):  # -> (2, B)
        x = jnp.concatenate([obs, act], -1)
        return jax.vmap(lambda q: ref_mlp(q, x, self.nv, self.cfg["layer_norm"]))(p["value_net"])[..., 0]

    def bc_flow(self, p, obs, act, t):
        return ref_mlp(p["mlp"], jnp.concatenate([obs, act, t], -1), self.na, self.cfg["actor_layer_norm"])

    def onestep(self, p, obs, noise):
        return ref_mlp(p["mlp"], jnp.concatenate([obs, noise], -1), self.na, self.cfg["actor_layer_norm"])

    def flow_actions(self, p, obs, noises):
        a, n = noises, self.cfg["flow_steps"]
        for i in range(n):
            t = jnp.full((*obs.shape[:-1], 1), i / n)
            a = a + self.bc_flow(p, obs, a, t) / n
        return jnp.clip(a, -1, 1)

    def losses(self, params, batch, d):
        """Total loss from the recorded draws d; gradients flow as in FQL (stop_gradient elsewhere)."""
        cfg, sg = self.cfg, jax.lax.stop_gradient
        P = {k: sg(v) for k, v in params.items()}  # FQL's "self.network.params" (no gradient)
        out = {}
        # critic loss
        next_a = jnp.clip(
            self.onestep(P["modules_actor_onestep_flow"], batch["next_observations"], d["next_noise"]), -1, 1
        )
        next_qs = self.critic(P["modules_target_critic"], batch["next_observations"], next_a)
        next_q = next_qs.min(0) if cfg["q_agg"] == "min" else next_qs.mean(0)
        target_q = batch["rewards"] + cfg["discount"] * batch["masks"] * next_q
        q = self.critic(params["modules_critic"], batch["observations"], batch["actions"])
        critic_loss = jnp.mean(jnp.square(q - target_q))
        out.update(
            {
                "critic/critic_loss": critic_loss,
                "critic/q_mean": q.mean(),
                "critic/q_max": q.max(),
                "critic/q_min": q.min(),
            }
        )
        # actor loss
        x0, x1, t = d["x_0"], batch["actions"], d["t"]
        x_t = (1 - t) * x0 + t * x1
        pred = self.bc_flow(params["modules_actor_bc_flow"], batch["observations"], x_t, t)
        bc = jnp.mean((pred - (x1 - x0)) ** 2)
        target_flow = self.flow_actions(P["modules_actor_bc_flow"], batch["observations"], d["distill_noise"])
        actor_actions = self.onestep(
            params["modules_actor_onestep_flow"], batch["observations"], d["distill_noise"]
        )
        distill = jnp.mean((actor_actions - target_flow) ** 2)
        qs = self.critic(P["modules_critic"], batch["observations"], jnp.clip(actor_actions, -1, 1))
        qa = qs.mean(0)
        q_loss = -qa.mean()
        if cfg["normalize_q_loss"]:
            q_loss = sg(1 / jnp.abs(qa).mean()) * q_loss
        actor_loss = bc + cfg["alpha"] * distill + q_loss
        mse_actions = jnp.clip(
            self.onestep(P["modules_actor_onestep_flow"], batch["observations"], d["mse_noise"]), -1, 1
        )
        out.update(
            {
                "actor/actor_loss": actor_loss,
                "actor/bc_flow_loss": bc,
                "actor/distill_loss": distill,
                "actor/q_loss": q_loss,
                "actor/q": qa.mean(),
                "actor/mse": jnp.mean((mse_actions - batch["actions"]) ** 2),
            }
        )
        return critic_loss + actor_loss, out


# ------------------------------------------------------------------------------ random draws


def derive_draws(agent_rng, B, A):
    """Re-derive every random draw of one FQLAgent.update, following agents/fql.py exactly."""
    R = jax.random
    keys, draws = {}, {}
    new_rng, rng = R.split(agent_rng)  # update, fql.py:125
    keys["agent_rng"], keys["new_agent_rng"], keys["update_rng"] = agent_rng, new_rng, rng
    _, actor_rng, critic_rng = R.split(rng, 3)  # total_loss, fql.py:100
    keys["actor_rng"], keys["critic_rng"] = actor_rng, critic_rng
    # critic_loss, fql.py:24-25 -> sample_actions fql.py:143-150
    _, sample_rng = R.split(critic_rng)
    action_seed, _ = R.split(sample_rng)
    keys["critic_sample_rng"], keys["critic_action_seed"] = sample_rng, action_seed
    draws["next_noise"] = R.normal(action_seed, (B, A))
    # actor_loss, fql.py:49-63
    rest, x_rng, t_rng = R.split(actor_rng, 3)
    keys["x_rng"], keys["t_rng"] = x_rng, t_rng
    draws["x_0"] = R.normal(x_rng, (B, A))
    draws["t"] = R.uniform(t_rng, (B, 1))
    rest, noise_rng = R.split(rest)
    keys["noise_rng"] = noise_rng
    draws["distill_noise"] = R.normal(noise_rng, (B, A))
    # 'mse' metric, fql.py:82 -> sample_actions(seed=rest)
    mse_seed, _ = R.split(rest)
    keys["mse_sample_rng"], keys["mse_action_seed"] = rest, mse_seed
    draws["mse_noise"] = R.normal(mse_seed, (B, A))
    return keys, draws


# ---------------------------------------------------------------------------------- fixtures


def make_batch(rng, B):
    masks = (rng.uniform(size=B) > 0.25).astype(np.float32)
    masks[0], masks[1] = 0.0, 1.0  # make sure both kinds are present
    return {
        "observations": rng.normal(size=(B, OBS_DIM)).astype(np.float32),
        "actions": rng.uniform(-0.99, 0.99, size=(B, ACT_DIM)).astype(np.float32),
        "rewards": rng.normal(size=B).astype(np.float32),
        "masks": masks,
        "next_observations": rng.normal(size=(B, OBS_DIM)).astype(np.float32),
    }


def adam_polyak(cfg, params, grads, mu, nu, count, old_params):
    """Hand-written optax.adam(lr) step + FQL's target_update (which reads the PRE-update critic params)."""
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, cfg["lr"]
    count = count + 1
    mu = tree_map(lambda m, g: b1 * m + (1 - b1) * g, mu, grads)
    nu = tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, nu, grads)
    new = tree_map(
        lambda p, m, v: p - lr * (m / (1 - b1**count)) / (jnp.sqrt(v / (1 - b2**count)) + eps), params, mu, nu
    )
    new = dict(new)
    new["modules_target_critic"] = tree_map(
        lambda p, tp: p * cfg["tau"] + tp * (1 - cfg["tau"]),
        old_params["modules_critic"],
        old_params["modules_target_critic"],
    )
    return new, mu, nu, count


def check_case(name, FQLAgent, get_config, overrides, B, seed, data_seed, commit, src):
    log = []
    config = get_config()
    for k, v in overrides.items():
        config[k] = v
    rng = np.random.default_rng(data_seed)
    batch = make_batch(rng, B)
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}

    agent = FQLAgent.create(seed, batch["observations"][:1], batch["actions"][:1], config)
    cfg = dict(agent.config)
    ref = Ref(cfg)
    params0 = jax.device_get(agent.network.params)
    params0 = {k: jax.device_get(v) for k, v in params0.items()}
    assert set(params0) == {
        "modules_critic",
        "modules_target_critic",
        "modules_actor_bc_flow",
        "modules_actor_onestep_flow",
    }, params0.keys()
    assert max_abs_diff(params0["modules_critic"], params0["modules_target_critic"]) == 0.0

    out = {}
    out.update(flatten(params0, "params"))
    out.update(flatten(batch, "batch"))

    # ---- draws of update #1, and FQL's own loss / grads with the same key
    keys, draws = derive_draws(agent.rng, B, ACT_DIM)
    loss, info = agent.total_loss(jbatch, agent.network.params, rng=keys["update_rng"])
    grads = jax.grad(lambda p: agent.total_loss(jbatch, p, rng=keys["update_rng"])[0])(agent.network.params)
    grads = {k: jax.device_get(v) for k, v in grads.items()}
    c_loss, c_info = agent.critic_loss(jbatch, agent.network.params, keys["critic_rng"])
    a_loss, a_info = agent.actor_loss(jbatch, agent.network.params, keys["actor_rng"])
    assert_close(
        "critic_loss (direct) vs total_loss info", c_loss, info["critic/critic_loss"], 1e-6, 1e-6, log
    )
    assert_close("actor_loss (direct) vs total_loss info", a_loss, info["actor/actor_loss"], 1e-6, 1e-6, log)
    assert_close("total = critic + actor", loss, c_loss + a_loss, 1e-6, 1e-6, log)
    assert (
        float(
            np.max(
                np.abs(
                    np.concatenate(
                        [np.ravel(g) for g in jax.tree_util.tree_leaves(grads["modules_target_critic"])]
                    )
                )
            )
        )
        == 0.0
    ), "target critic must get no gradient"

    # ---- the same losses from the recorded draws through FQL's OWN modules
    net = agent.network
    next_a = jnp.clip(
        jnp.clip(net.select("actor_onestep_flow")(jbatch["next_observations"], draws["next_noise"]), -1, 1),
        -1,
        1,
    )
    next_qs = net.select("target_critic")(jbatch["next_observations"], actions=next_a)
    next_q = next_qs.min(0) if cfg["q_agg"] == "min" else next_qs.mean(0)
    target_q = jbatch["rewards"] + cfg["discount"] * jbatch["masks"] * next_q
    q = net.select("critic")(jbatch["observations"], actions=jbatch["actions"])
    x0, t = draws["x_0"], draws["t"]
    x_t = (1 - t) * x0 + t * jbatch["actions"]
    vel = jbatch["actions"] - x0
    pred = net.select("actor_bc_flow")(jbatch["observations"], x_t, t)
    target_flow = agent.compute_flow_actions(jbatch["observations"], noises=draws["distill_noise"])
    actor_actions = net.select("actor_onestep_flow")(jbatch["observations"], draws["distill_noise"])
    qs_pi = net.select("critic")(jbatch["observations"], actions=jnp.clip(actor_actions, -1, 1))
    q_pi = qs_pi.mean(0)
    q_loss = -q_pi.mean()
    lam = 1 / jnp.abs(q_pi).mean()
    if cfg["normalize_q_loss"]:
        q_loss = lam * q_loss
    mse_actions = agent.sample_actions(jbatch["observations"], seed=keys["mse_sample_rng"])
    mine = {
        "critic/critic_loss": jnp.square(q - target_q).mean(),
        "critic/q_mean": q.mean(),
        "critic/q_max": q.max(),
        "critic/q_min": q.min(),
        "actor/bc_flow_loss": jnp.mean((pred - vel) ** 2),
        "actor/distill_loss": jnp.mean((actor_actions - target_flow) ** 2),
        "actor/q_loss": q_loss,
        "actor/q": q_pi.mean(),
        "actor/mse": jnp.mean((mse_actions - jbatch["actions"]) ** 2),
    }
    mine["actor/actor_loss"] = mine["actor/bc_flow_loss"] + cfg["alpha"] * mine["actor/distill_loss"] + q_loss
    for k in info:
        assert_close(f"draws via FQL modules: {k}", mine[k], info[k], 1e-6, 1e-5, log)
    # sample_actions draws: critic target next actions and 'mse' actions
    assert_close(
        "sample_actions(next_obs, critic_sample_rng) vs recorded next_noise",
        agent.sample_actions(jbatch["next_observations"], seed=keys["critic_sample_rng"]),
        next_a,
        1e-6,
        1e-6,
        log,
    )

    # ---- independent re-implementation: losses and gradients
    ref_loss, ref_info = ref.losses(agent.network.params, jbatch, draws)
    assert_close("reimpl total loss", ref_loss, loss, 1e-5, 1e-5, log)
    for k in info:
        assert_close(f"reimpl {k}", ref_info[k], info[k], 1e-5, 1e-5, log)
    ref_grads = jax.grad(lambda p: ref.losses(p, jbatch, draws)[0])(agent.network.params)
    gscale = max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(grads))
    assert_close("reimpl grads", ref_grads, grads, 1e-5 * max(gscale, 1.0), 1e-4, log)

    # ---- update #1 through FQL, checked against hand-written Adam + Polyak
    agent1, upd_info = agent.update(jbatch)
    for k in info:
        assert_close(f"update#1 info {k} vs total_loss", upd_info[k], info[k], 1e-6, 1e-5, log)
    assert np.array_equal(np.asarray(agent1.rng), np.asarray(keys["new_agent_rng"])), "agent rng after update"
    zeros = tree_map(jnp.zeros_like, params0)
    hand1, mu, nu, cnt = adam_polyak(cfg, params0, grads, zeros, zeros, 0, params0)
    params1 = {k: jax.device_get(v) for k, v in agent1.network.params.items()}
    assert_close("update#1 params vs hand Adam+Polyak", hand1, params1, 1e-6, 1e-5, log)
    # optimizer state of FQL after update #1 vs hand state
    opt_mu = agent1.network.opt_state[0].mu
    opt_nu = agent1.network.opt_state[0].nu
    assert_close("update#1 adam mu", mu, opt_mu, 1e-7, 1e-5, log)
    assert_close("update#1 adam nu", nu, opt_nu, 1e-9, 1e-5, log)
    gmax = max(float(np.max(g)) for g in jax.tree_util.tree_leaves(grads))
    gmin = min(float(np.min(g)) for g in jax.tree_util.tree_leaves(grads))
    gnorm = sum(
        float(np.linalg.norm(g)) for g in jax.tree_util.tree_leaves(grads)
    )  # L1 over per-leaf L2 norms
    assert_close("grad/max", upd_info["grad/max"], gmax, 1e-7, 1e-6, log)
    assert_close("grad/min", upd_info["grad/min"], gmin, 1e-7, 1e-6, log)
    assert_close("grad/norm", upd_info["grad/norm"], gnorm, 1e-6, 1e-5, log)

    # ---- update #2 on the same batch (Adam bias correction at step 2, pre-update Polyak source)
    keys2, draws2 = derive_draws(agent1.rng, B, ACT_DIM)
    loss2_fql, info2_fql = agent1.total_loss(jbatch, agent1.network.params, rng=keys2["update_rng"])
    ref_loss2, ref_info2 = ref.losses(agent1.network.params, jbatch, draws2)
    assert_close("update#2 reimpl total loss", ref_loss2, loss2_fql, 1e-5, 1e-5, log)
    grads2 = jax.grad(lambda p: ref.losses(p, jbatch, draws2)[0])(agent1.network.params)
    agent2, upd_info2 = agent1.update(jbatch)
    hand2, _, _, _ = adam_polyak(cfg, params1, grads2, opt_mu, opt_nu, 1, params1)
    params2 = {k: jax.device_get(v) for k, v in agent2.network.params.items()}
    assert_close("update#2 params vs hand Adam+Polyak (reimpl grads)", hand2, params2, 2e-6, 1e-5, log)
    # target after update #2 must be tau*critic_after_1 + (1-tau)*target_after_1 (pre-update critic)
    wrong = tree_map(
        lambda p, tp: p * cfg["tau"] + tp * (1 - cfg["tau"]),
        params2["modules_critic"],
        params1["modules_target_critic"],
    )
    polyak_gap = max_abs_diff(wrong, params2["modules_target_critic"])
    log.append(f"target update with POST-update critic would differ by max {polyak_gap:.3g} after update #2")
    assert polyak_gap > 1e-6, "fixture cannot tell pre- from post-update Polyak source"

    # ---- compute_flow_actions and sample_actions
    flow_noises = rng.normal(size=(B, ACT_DIM)).astype(np.float32) * 1.5
    flow_out = agent.compute_flow_actions(jbatch["observations"], noises=jnp.asarray(flow_noises))
    assert_close(
        "reimpl compute_flow_actions",
        ref.flow_actions(agent.network.params["modules_actor_bc_flow"], jbatch["observations"], flow_noises),
        flow_out,
        1e-5,
        1e-5,
        log,
    )
    sample_seed = jax.random.PRNGKey(seed + 1000)
    sample_out = agent.sample_actions(jbatch["observations"], seed=sample_seed)
    sample_noise = jax.random.normal(jax.random.split(sample_seed)[0], (B, ACT_DIM))
    assert_close(
        "reimpl sample_actions",
        jnp.clip(
            ref.onestep(
                agent.network.params["modules_actor_onestep_flow"], jbatch["observations"], sample_noise
            ),
            -1,
            1,
        ),
        sample_out,
        1e-5,
        1e-5,
        log,
    )

    # ---- collect
    out.update({f"keys/{k}": np.asarray(v, dtype=np.uint32) for k, v in keys.items()})
    out.update({f"draws/{k}": np.asarray(v) for k, v in draws.items()})
    out["loss/total"] = np.asarray(loss)
    out.update({f"info/{k}": np.asarray(v) for k, v in info.items()})
    out.update({f"update_info/{k}": np.asarray(v) for k, v in upd_info.items()})
    out.update(flatten(grads, "grads"))
    out.update(flatten(params1, "params_after_1"))
    out.update({f"keys2/{k}": np.asarray(v, dtype=np.uint32) for k, v in keys2.items()})
    out.update({f"draws2/{k}": np.asarray(v) for k, v in draws2.items()})
    out["loss2/total"] = np.asarray(loss2_fql)
    out.update({f"info2/{k}": np.asarray(v) for k, v in info2_fql.items()})
    out.update({f"update_info2/{k}": np.asarray(v) for k, v in upd_info2.items()})
    out.update(flatten(params2, "params_after_2"))
    inter = {
        "next_actions": next_a,
        "next_qs": next_qs,
        "next_q": next_q,
        "target_q": target_q,
        "q": q,
        "x_t": x_t,
        "vel": vel,
        "bc_flow_pred": pred,
        "target_flow_actions": target_flow,
        "actor_actions_unclipped": actor_actions,
        "actor_qs": qs_pi,
        "actor_q": q_pi,
        "q_loss_lam": lam,
        "mse_actions": mse_actions,
    }
    out.update({f"inter/{k}": np.asarray(v) for k, v in inter.items()})
    out["flow/noises"] = flow_noises
    out["flow/actions"] = np.asarray(flow_out)
    out["sample/seed"] = np.asarray(sample_seed, dtype=np.uint32)
    out["sample/noise"] = np.asarray(sample_noise)
    out["sample/actions"] = np.asarray(sample_out)

    import flax
    import optax

    cfg_json = jsonable(cfg)
    meta = {
        "fixture_version": FIXTURE_VERSION,
        "case": name,
        "fql_repo": "github.com/seohongpark/fql",
        "fql_commit": commit,
        "fql_sha256": {p: sha256(os.path.join(src, p)) for p in EXPECTED_SHA256},
        "versions": {
            "jax": jax.__version__,
            "jaxlib": __import__("jaxlib").__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "jax_default_prng_impl": str(jax.config.jax_default_prng_impl),
        "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "backend": jax.default_backend(),
        "overrides_of_get_config": jsonable(overrides),
        "agent_seed": seed,
        "data_seed": data_seed,
        "batch_size": B,
        "obs_dim": OBS_DIM,
        "action_dim": ACT_DIM,
        "optimizer": {
            "name": "optax.adam",
            "lr": cfg["lr"],
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "eps_root": 0.0,
        },
        "n_updates_recorded": 2,
        "fraction_actor_actions_clipped": float(np.mean(np.abs(np.asarray(actor_actions)) > 1)),
        "checks": log,
        "key_doc": {
            "params/<flax path>": "agent.network.params before any update (target_critic == critic at init)",
            "batch/*": "the batch passed to update (float32)",
            "keys/*": "uint32[2] raw threefry keys of update #1 (agent_rng = agent.rng before it)",
            "draws/*": "random draws of update #1: next_noise (critic target, sample_actions on "
            "next_observations), "
            "x_0 and t (BC flow), distill_noise (distillation + Q loss), mse_noise ('mse' metric)",
            "loss/total, info/*": "FQL total_loss(batch, params, rng=keys/update_rng) and its info",
            "grads/<flax path>": "d total_loss / d params (params of update #1)",
            "update_info/*": "info returned by agent.update (adds grad/max, grad/min, grad/norm)",
            "params_after_1/*, params_after_2/*": "network params after 1 and 2 updates on the same batch",
            "keys2/*, draws2/*, loss2/total, info2/*, update_info2/*": "same for update #2",
            "inter/*": "intermediates of update #1 computed with FQL's modules and draws/*",
            "flow/*": "compute_flow_actions(batch/observations, flow/noises) with params/*",
            "sample/*": "sample_actions(batch/observations, seed=sample/seed) with params/*; sample/noise is "
            "normal(split(seed)[0], (B, act_dim))",
        },
    }
    out["meta_json"] = np.array(json.dumps(meta, indent=1, sort_keys=True))
    out["config_json"] = np.array(json.dumps(cfg_json, sort_keys=True))
    for k, v in out.items():
        assert v.dtype != object, k
    return out, meta


def run_timing(FQLAgent, get_config, steps, rounds):
    config = get_config()
    B = config["batch_size"]
    rng = np.random.default_rng(0)
    batches = [make_batch(rng, B) for _ in range(8)]
    agent = FQLAgent.create(0, batches[0]["observations"][:1], batches[0]["actions"][:1], config)
    print(
        f"FQL timing: backend={jax.default_backend()} devices={jax.devices()} batch={B} "
        f"actor={tuple(config['actor_hidden_dims'])} value={tuple(config['value_hidden_dims'])} "
        f"obs={OBS_DIM} act={ACT_DIM}"
    )
    for label, feed in (
        ("device batch (fixed jnp arrays)", [{k: jnp.asarray(v) for k, v in b.items()} for b in batches]),
        ("numpy batch each step (as main.py)", batches),
    ):
        t0 = time.perf_counter()
        agent, info = agent.update(feed[0])
        jax.block_until_ready((agent, info))
        compile_s = time.perf_counter() - t0
        rates = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for i in range(steps):
                agent, info = agent.update(feed[i % len(feed)])
            jax.block_until_ready((agent, info))
            rates.append(steps / (time.perf_counter() - t0))
        print(
            f"  {label}: first call (compile) {compile_s:.2f}s; "
            f"steps/s per round {[round(r, 2) for r in rates]}; "
            f"median {float(np.median(rates)):.2f} steps/s"
        )
    try:
        print("  load average:", os.getloadavg())
    except OSError:
        pass


def main():
    global jax, jnp
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fql-src", required=True, help="FQL source tree (at commit 719d044)")
    ap.add_argument(
        "--fql-commit", default=None, help="commit of --fql-src (default: FQL_COMMIT file or git)"
    )
    ap.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "fql"),
    )
    ap.add_argument(
        "--allow-other-source", action="store_true", help="do not fail on a FQL file hash mismatch"
    )
    ap.add_argument(
        "--time", action="store_true", help="only print FQL update steps/s (batch 256, default nets)"
    )
    ap.add_argument("--time-steps", type=int, default=50)
    ap.add_argument("--time-rounds", type=int, default=5)
    args = ap.parse_args()

    if not args.time:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # fixtures are CPU float32 numbers
    import jax as _jax

    jax = _jax
    jnp = _jax.numpy

    src = os.path.abspath(args.fql_src)
    bad = [p for p, h in EXPECTED_SHA256.items() if sha256(os.path.join(src, p)) != h]
    if bad:
        msg = f"FQL files differ from commit {EXPECTED_COMMIT[:7]}: {bad}"
        if not args.allow_other_source:
            raise SystemExit(msg + " (use --allow-other-source to go on)")
        print("WARNING:", msg)
    commit = fql_commit(src, args.fql_commit)
    FQLAgent, get_config = import_fql(src)

    if args.time:
        run_timing(FQLAgent, get_config, args.time_steps, args.time_rounds)
        return

    os.makedirs(args.out, exist_ok=True)
    for name, (overrides, B, seed, data_seed) in CASES.items():
        out, meta = check_case(name, FQLAgent, get_config, overrides, B, seed, data_seed, commit, src)
        path = os.path.join(args.out, f"{name}.npz")
        np.savez_compressed(path, **out)
        with np.load(path, allow_pickle=False) as z:  # round trip without pickle
            assert set(z.files) == set(out)
        print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes, {len(out)} arrays)")
        for line in meta["checks"]:
            print("   ", line)


if __name__ == "__main__":
    main()
