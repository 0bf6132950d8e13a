"""Write golden ``.npz`` fixtures from the OFFICIAL PyTorch CDP code for the JAX parity tests.

What it does: imports the official Contractive Diffusion Policy code (aminabyaneh/contractive-diffusion-policy
at commit 5a39a66) and CleanDiffuser (CleanDiffuserTeam/CleanDiffuser at commit 05f17fc), runs noise
schedules, networks, samplers, the IL loss pieces, the real ``scripts/cdp_rl.py`` training ``pipeline``
(2 steps hopper-like, 1 step antmaze-like) and two IL ``agent.update`` calls in float64, and writes
``schedules.npz``, ``networks.npz``, ``samplers.npz``, ``losses.npz``, ``rl_step.npz``,
``rl_step_antmaze.npz`` and ``il_step.npz``.  The key layout and the deterministic-weight rule are in
docs/FIXTURES-FORMAT.md.

This is a developer tool.  It is NOT a package dependency and CI never runs it; the tests only read its
committed output.  Setup (CPU only, a few seconds of compute):

    git clone https://github.com/aminabyaneh/contractive-diffusion-policy off && git -C off checkout 5a39a66
    git clone https://github.com/CleanDiffuserTeam/CleanDiffuser cd && git -C cd checkout 05f17fc
    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    pip install einops hydra-core omegaconf        # imported by the official code / CleanDiffuser
    python tools/make_parity_fixtures.py --official off --cleandiffuser cd --out tests/fixtures/parity

Everything that cannot be installed or used here is replaced by a minimal fake (see ``install_stubs``):
d4rl, old ``gym``, wandb, the CleanDiffuser video wrapper (gym/dill/av), CleanDiffuser's dataset_utils
(numba/zarr) and torchvision (only CleanDiffuser's image conditions use it).
"""

import argparse
import copy
import importlib.util
import os
import shutil
import sys
import tempfile
import types

import numpy as np

VERSION, OFFICIAL_COMMIT, CD_COMMIT = 1, "5a39a66", "05f17fc"
torch = None  # imported in main() after the stubs are installed


# ------------------------------------------------------------------------------------------ stubs
def install_stubs():
    def stub(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    # d4rl and old gym are not installable with current Python; the pipeline only calls gym.make and
    # d4rl.qlearning_dataset, whose result goes into the (replaced) dataset class.
    stub("d4rl", qlearning_dataset=lambda env: {})
    stub("gym", make=lambda name: types.SimpleNamespace(name=name), spaces=None, Env=object, Wrapper=object)
    # wandb is only used by source.utils.Logger, which the RL run replaces by a capturing fake.
    video = stub("wandb.sdk.data_types.video", util=None)
    dtypes = stub("wandb.sdk.data_types", video=video)
    stub("wandb", sdk=stub("wandb.sdk", data_types=dtypes), init=None, log=None)
    # source.utils imports VideoRecordingWrapper (needs gym, dill, av); only used for evaluation videos.
    stub("cleandiffuser.env.wrapper", VideoRecordingWrapper=type("VideoRecordingWrapper", (), {}))
    # CleanDiffuser's dataset_utils needs numba and zarr; the RL script only takes loop_dataloader from it.
    def loop_dataloader(dl):
        while True:
            yield from dl
    stub("cleandiffuser.dataset.dataset_utils", loop_dataloader=loop_dataloader)
    # torchvision is imported by cleandiffuser.nn_condition's image encoders, which are never built here.
    functional = stub("torchvision.transforms.functional")
    stub("torchvision", models=None, transforms=stub("torchvision.transforms", functional=functional))


# ------------------------------------------------------------------------------------ RNG recorder
class Recorder:
    """Wraps torch.randn_like/randint/randn/rand and np.random.uniform; keeps their outputs in call order."""

    def __init__(self):
        self.calls = []
        for name in ("randn_like", "randint", "randn", "rand"):
            setattr(torch, name, self._wrap(getattr(torch, name), name))
        np.random.uniform = self._wrap(np.random.uniform, "np.random.uniform")

    def _wrap(self, fn, name):
        def wrapped(*a, **k):
            out = fn(*a, **k)
            val = out.detach().clone().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
            self.calls.append((name, val))
            return out
        return wrapped

    def take(self, expect=None):
        calls, self.calls = self.calls, []
        if expect is not None:
            assert [c[0] for c in calls] == expect, [c[0] for c in calls]
        return calls


def describe(calls):
    return np.array([f"{n}:{'x'.join(map(str, v.shape))}" for n, v in calls])


# ------------------------------------------------------------------------------ weight spec / utils
def spec_values(name, shape, seed, i):
    if len(shape) == 2:
        off, sc = 0.0, 1.0 / np.sqrt(shape[1])
    elif len(shape) == 1:
        off, sc = (1.0, 0.1) if name.endswith("weight") else (0.0, 0.1)
    else:
        raise ValueError(f"no spec for {name} {shape}")
    return off + sc * np.random.default_rng([seed, i]).standard_normal(shape), off, sc


def load_spec(module, seed, prefix, out, copies=()):
    """Overwrite every parameter of ``module`` (and of the same-structured ``copies``) from the spec."""
    rows = []
    with torch.no_grad():
        for i, (name, p) in enumerate(module.named_parameters()):
            assert p.dtype == torch.float64, (name, p.dtype)
            v, off, sc = spec_values(name, tuple(p.shape), seed, i)
            p.copy_(torch.from_numpy(v))
            for c in copies:
                dict(c.named_parameters())[name].copy_(torch.from_numpy(v))
            rows.append((name, "x".join(map(str, p.shape)), sc, off))
    out[f"{prefix}__names"] = np.array([r[0] for r in rows])
    out[f"{prefix}__shapes"] = np.array([r[1] for r in rows])
    out[f"{prefix}__scales"] = np.array([r[2] for r in rows], dtype=np.float64)
    out[f"{prefix}__offsets"] = np.array([r[3] for r in rows], dtype=np.float64)
    out[f"{prefix}__seed"] = np.int64(seed)


def dump_params(module, prefix, out):
    for name, p in module.named_parameters():
        out[f"{prefix}__{name}"] = p.detach().numpy().copy()


def T(a):
    return torch.from_numpy(np.asarray(a))


def N(x):
    return x.detach().numpy().copy()


def save(out_dir, fname, d):
    d = {"generator_version": np.int64(VERSION), "official_commit": np.array(OFFICIAL_COMMIT),
         "cleandiffuser_commit": np.array(CD_COMMIT), **d}
    for k, v in d.items():
        v = np.asarray(v)
        assert v.dtype.kind in "iUb" or v.dtype == np.float64, (fname, k, v.dtype)
        assert v.dtype.kind != "i" or v.dtype == np.int64, (fname, k, v.dtype)
    np.savez_compressed(os.path.join(out_dir, fname), **d)


# ---------------------------------------------------------------------------------------- sections
def make_schedules(cd):
    out = {}
    for kind in ("cosine", "linear"):
        for steps in (50, 100, 1000):
            sde = cd.diffusion.DiscreteDiffusionSDE(cd.nn_diffusion.DQLMlp(1, 1, emb_dim=2), None,
                                                    diffusion_steps=steps, noise_schedule=kind)
            out[f"{kind}_T{steps}_alpha"], out[f"{kind}_T{steps}_sigma"] = N(sde.alpha), N(sde.sigma)
    for steps, s in ((50, 15), (50, 50), (50, 5), (50, 1), (100, 10), (100, 100), (1000, 15),
                     (1000, 1000), (7, 3)):
        out[f"grid_T{steps}_S{s}"] = N(cd.utils.uniform_sampling_step_schedule(steps, s))
    emb = cd.utils.PositionalEmbedding(64)
    out["emb_freqs"] = N((1 / emb.max_positions) ** (torch.arange(0, 32, dtype=torch.float32) / 32)).astype(
        np.float64)  # the float32 frequencies forward() computes, as it computes them
    out["emb_t_float"] = np.array([0, 0.25, 1, 3, 17.5, 44, 49], dtype=np.float64)
    out["emb_out_float"] = N(emb(T(out["emb_t_float"])))
    out["emb_t_long"] = np.array([0, 1, 2, 3, 5, 44, 49], dtype=np.int64)
    out["emb_out_long"] = N(emb(T(out["emb_t_long"])))
    return out


def pearce(cd, emb_dim=128, hidden_dim=512):
    """The IL backbone as scripts/cdp_il_lowdim.py builds it (``nn: pearce_mlp``, lift: obs 19, act 7)."""
    return (cd.nn_diffusion.PearceMlp(act_dim=7, To=2, emb_dim=emb_dim, hidden_dim=hidden_dim),
            cd.nn_condition.PearceObsCondition(obs_dim=19, emb_dim=emb_dim, dropout=0.0))


def make_networks(cd):
    out, rng = {}, np.random.default_rng(1001)
    net = cd.nn_diffusion.DQLMlp(obs_dim=11, act_dim=3, emb_dim=64, timestep_emb_type="positional")
    load_spec(net, 101, "dqlmlp", out)
    out["dqlmlp_x"], out["dqlmlp_t"] = rng.standard_normal((32, 3)), rng.integers(0, 50, 32)
    out["dqlmlp_cond"] = rng.standard_normal((32, 11))
    out["dqlmlp_out"] = N(net(T(out["dqlmlp_x"]), T(out["dqlmlp_t"]), T(out["dqlmlp_cond"])))

    critic = cd.utils.DQLCritic(11, 3, hidden_dim=256)
    load_spec(critic, 102, "critic", out)
    out["critic_obs"], out["critic_act"] = rng.standard_normal((32, 11)), rng.uniform(-1, 1, (32, 3))
    out["critic_q1"], out["critic_q2"] = map(N, critic(T(out["critic_obs"]), T(out["critic_act"])))

    diffusion, condition = pearce(cd)
    m = torch.nn.ModuleDict({"diffusion": diffusion, "condition": condition}).eval()
    load_spec(m, 103, "pearce", out)
    out["pearce_x"], out["pearce_t"] = rng.standard_normal((32, 7)), rng.integers(0, 50, 32)
    out["pearce_obs"] = rng.standard_normal((32, 2, 19))
    cond = m["condition"](T(out["pearce_obs"]))
    out["pearce_out"] = N(m["diffusion"](T(out["pearce_x"]), T(out["pearce_t"]), cond))
    return out


SOLVER_KEYS = {"ode_dpmsolver++_2M": "2M", "ddim": "ddim", "ode_dpmsolver++_1": "pp1"}


def make_samplers(cd, cdp, rec):
    out, rng = {}, np.random.default_rng(2001)
    actor = cd.diffusion.DiscreteDiffusionSDE(   # as scripts/cdp_rl.py builds it (hopper dims)
        cd.nn_diffusion.DQLMlp(11, 3, emb_dim=64, timestep_emb_type="positional"),
        cd.nn_condition.IdentityCondition(dropout=0.0), predict_noise=False, optim_params={"lr": 3e-4},
        x_max=+1. * torch.ones((1, 3)), x_min=-1. * torch.ones((1, 3)), diffusion_steps=50, device="cpu")
    load_spec(actor.model, 201, "actor", out, copies=[actor.model_ema])
    out["sampler_obs"] = rng.standard_normal((64, 11))
    rec.take()
    obs = T(out["sampler_obs"])
    for solver, sk in SOLVER_KEYS.items():
        for temp in (1.0, 0.5):
            x, _ = actor.sample(torch.zeros(64, 3), solver=solver, n_samples=64, sample_steps=15,
                                use_ema=True, temperature=temp, condition_cfg=obs, w_cfg=1.0)
            (_, out[f"xT_{sk}_{temp}"]), = rec.take(expect=["randn_like"])
            out[f"out_{sk}_{temp}"] = N(x)

    il = cdp.DiscreteDiffusionSDE(*pearce(cd), predict_noise=False, optim_params={"lr": 1e-3},
                                  diffusion_steps=50, device="cpu", eigen_weight=0.0, lambda_contr=0.1,
                                  jacobian_weight=0.0, loss_type="jacobian")
    load_spec(il.model, 202, "il_actor", out, copies=[il.model_ema])
    out["il_obs"] = rng.standard_normal((16, 2, 19))
    x, _ = il.sample(torch.zeros(16, 7), solver="ode_dpmsolver++_2M", n_samples=16, sample_steps=50,
                     use_ema=True, condition_cfg=T(out["il_obs"]), w_cfg=1.0)
    (_, out["il_xT"]), = rec.take(expect=["randn_like"])
    out["il_out"] = N(x)
    return out


def make_losses(cd, cdp, closs, rec):
    out, rng = {}, np.random.default_rng(3001)
    agent = cdp.DiscreteDiffusionSDE(*pearce(cd, 16, 64), predict_noise=False, optim_params={"lr": 1e-3},
                                     diffusion_steps=50, device="cpu", eigen_weight=0.0, lambda_contr=0.1,
                                     jacobian_weight=0.1, loss_type="jacobian")
    load_spec(agent.model, 301, "small", out, copies=[agent.model_ema])
    out["x0"], out["obs"] = rng.standard_normal((32, 7)), rng.standard_normal((32, 2, 19))
    x0, obs = T(out["x0"]), T(out["obs"])
    rec.take()
    total = agent.loss(x0, obs)  # model in train mode, as in training
    calls = rec.take(expect=["randint", "randn_like", "rand"])  # rand = condition dropout mask
    out["t"], out["eps"] = calls[0][1], calls[1][1]
    jl = agent.jacobian_losses
    # the x0-MSE term alone, recomputed with the recorded draws
    xt, t, _ = agent.add_noise(x0, T(out["t"]), T(out["eps"]))
    cond = agent.model["condition"](obs)
    rec.take(expect=["rand"])
    bc = ((agent.model["diffusion"](xt, t, cond) - x0) ** 2).mean()
    assert torch.allclose(total, bc + 0.1 * jl["jacobian_loss"], rtol=1e-13, atol=0)
    out["bc_loss"], out["loss"] = N(bc), N(total)
    out["jacobian_loss"], out["jacobian_norm"] = N(jl["jacobian_loss"]), N(jl["jacobian_norm"])
    jac = closs.compute_jacobian(agent.model["diffusion"], xt, t, cond)
    out["jacobian"] = N(jac)
    out["eigen_max_exact"] = N(closs.leading_eigenvalue_exact(0.5 * (jac + jac.transpose(-2, -1))))
    named = list(agent.model.named_parameters())
    for tag, val in (("bc", bc), ("jac", jl["jacobian_loss"])):
        grads = torch.autograd.grad(val, [p for _, p in named], retain_graph=True, allow_unused=True)
        for (n, p), g in zip(named, grads, strict=True):  # unused parameter -> zero gradient
            out[f"grad_{tag}__{n}"] = N(g) if g is not None else np.zeros(tuple(p.shape))
    return out


def rl_batches(rng, n, obs_dim, act_dim, batch):
    out, batches = {}, []
    for k in range(n):
        b = {"obs": rng.standard_normal((batch, obs_dim)), "act": rng.uniform(-1, 1, (batch, act_dim)),
             "rew": rng.standard_normal((batch, 1)), "next_obs": rng.standard_normal((batch, obs_dim)),
             "tml": (rng.random((batch, 1)) < 0.05).astype(np.float64)}
        out.update({f"batch{k}_{n_}": v for n_, v in b.items()})
        batches.append({"obs": {"state": T(b["obs"])}, "next_obs": {"state": T(b["next_obs"])},
                        "act": T(b["act"]), "rew": T(b["rew"]), "tml": T(b["tml"])})
    return out, batches


def run_rl(script, official, rec, env, task, obs_dim, act_dim, batch, steps, seeds, store_actor):
    """Run scripts/cdp_rl.py's real ``pipeline`` on fixed batches, capturing draws, logs and parameters."""
    from hydra import compose, initialize_config_dir
    out, refs, snaps, logs, draws = {}, {}, [], [], []
    data, batches = rl_batches(np.random.default_rng(seeds[2]), steps, obs_dim, act_dim, batch)
    out.update(data)
    orig_sde, orig_critic, orig_deepcopy = script.DiscreteDiffusionSDE, script.DQLCritic, copy.deepcopy

    def sde(*a, **k):  # the real constructor, then the spec weights into model and model_ema
        refs["actor"] = orig_sde(*a, **k)
        load_spec(refs["actor"].model, seeds[0], "actor", out, copies=[refs["actor"].model_ema])
        refs["init"] = {n: N(p) for n, p in refs["actor"].model.named_parameters()}
        return refs["actor"]

    def critic(*a, **k):
        refs["critic"] = orig_critic(*a, **k)
        load_spec(refs["critic"], seeds[1], "critic", out)
        return refs["critic"]

    def deepcopy(x):  # the script's `critic_target = deepcopy(critic)`
        y = orig_deepcopy(x)
        if x is refs.get("critic"):
            refs["target"] = y
        return y

    class Loader(list):  # replaces DataLoader(num_workers=4, shuffle=True): the fixed batches in order
        def __iter__(self):
            rec.take(expect=[])  # nothing random happens between set_seed and the first batch
            return list.__iter__(self)

    class Logger:  # replaces source.utils.Logger (wandb); snapshots everything after each logged step
        def __init__(self, *a):
            pass

        def log(self, d, category):
            assert category == "train"
            logs.append(dict(d))
            draws.append(rec.take())
            snaps.append({"actor": refs["actor"].model, "ema": refs["actor"].model_ema,
                          "critic": refs["critic"], "target": refs["target"]})
            snaps[-1] = {k: {n: N(p) for n, p in m.named_parameters()} for k, m in snaps[-1].items()}

    class FakeDataset:  # replaces the D4RL*TDDataset classes: only o_dim, a_dim and len() are used
        o_dim, a_dim = obs_dim, act_dim

        def __init__(self, *a):
            pass

        def __len__(self):
            return 10 ** 6

    script.__dict__.update(DiscreteDiffusionSDE=sde, DQLCritic=critic, deepcopy=deepcopy, Logger=Logger,
                           DataLoader=lambda ds, **kw: Loader(batches), D4RLMuJoCoTDDataset=FakeDataset,
                           D4RLAntmazeTDDataset=FakeDataset)
    log_dir = tempfile.mkdtemp()  # the pipeline creates its save_path folder there
    overrides = [f"env_name={env}", f"task={task}", f"batch_size={batch}", "hidden_dim=64",
                 "diffusion_steps=50", "sampling_steps=15", "solver=ode_dpmsolver++_2M",
                 "predict_noise=False", "diffusion_type=discrete", "contraction_threshold=0.1",
                 "lambda_contr=0.1", "loss_type=jacobian", "loss_weights.jacobian=0.1",
                 f"gradient_steps={steps}", "log_interval=1", "eval_interval=1000000000",
                 "save_interval=1000000000", "device=cpu", "seed=1", "wandb_mode=disabled",
                 f"log_dir={log_dir}"]
    with initialize_config_dir(config_dir=os.path.join(official, "configs/cdp-rl"), version_base=None):
        cfg = compose(config_name="main", overrides=overrides)
    rec.take()
    script.pipeline.__wrapped__(cfg)
    shutil.rmtree(log_dir)
    assert len(logs) == steps
    nxt = batch * (10 if env == "antmaze" else 1)
    # next-action noise | bc t, eps, condition mask | edp t, eps, condition mask | q-loss branch
    names = ["randn_like", "randint", "randn_like", "rand", "randint", "randn_like", "rand",
             "np.random.uniform"]
    for k in range(steps):
        calls = draws[k]
        assert [c[0] for c in calls] == names and calls[0][1].shape == (nxt, act_dim), describe(calls)
        out[f"draw{k}_calls"] = describe(calls)
        picks = {"next_noise": 0, "bc_t": 1, "bc_eps": 2, "edp_t": 4, "edp_eps": 5, "q_uniform": 7}
        for n, i in picks.items():
            out[f"draw{k}_{n}"] = calls[i][1].astype(np.float64) if n == "q_uniform" else calls[i][1]
        n_win = int((out[f"draw{k}_edp_t"] < int(50 * 0.1)).sum())
        assert n_win > 0, "no EDP t < 5: the official loop would use a stale/undefined loss_dict"
        out[f"draw{k}_edp_n_window"] = np.int64(n_win)
        for name, v in logs[k].items():
            if name != "time":  # wall clock, not reproducible
                out[f"log{k}_{name}"] = np.array(v, dtype=np.int64 if name == "step" else np.float64)
    # The actor EMA only starts at step 1000: it must still hold the initial (spec) weights, so it is
    # asserted here and not stored (1.4 MB of regenerable numbers).
    out["ema_equals_initial"] = np.bool_(all(np.array_equal(refs["init"][n], v)
                                             for n, v in snaps[-1]["ema"].items()))
    assert out["ema_equals_initial"]
    stored = [("after", "actor")] * store_actor + [("after", "critic"), ("after", "target")]
    stored += [("after0", "critic"), ("after0", "target")] * (steps > 1)
    for tag, part in stored:
        snap = snaps[-1] if tag == "after" else snaps[0]
        out.update({f"{tag}__{part}__{n}": v for n, v in snap[part].items()})
    script.__dict__.update(DiscreteDiffusionSDE=orig_sde, DQLCritic=orig_critic, deepcopy=orig_deepcopy)
    return out


def make_il_step(cd, cdp, rec):
    out, rng = {}, np.random.default_rng(6001)
    agent = cdp.DiscreteDiffusionSDE(*pearce(cd, 16, 64), predict_noise=False, optim_params={"lr": 1e-3},
                                     diffusion_steps=50, device="cpu", eigen_weight=0.0, lambda_contr=0.1,
                                     jacobian_weight=0.1, loss_type="jacobian")
    load_spec(agent.model, 601, "il", out, copies=[agent.model_ema])
    rec.take()
    for k in range(2):
        out[f"batch{k}_action"], out[f"batch{k}_obs"] = rng.standard_normal((64, 7)), rng.standard_normal(
            (64, 2, 19))
        log = agent.update(T(out[f"batch{k}_action"]), T(out[f"batch{k}_obs"]))
        calls = rec.take(expect=["randint", "randn_like", "rand"])
        out[f"draw{k}_t"], out[f"draw{k}_eps"] = calls[0][1], calls[1][1]
        out[f"draw{k}_calls"] = describe(calls)
        out[f"log{k}_loss"] = np.float64(log["loss"])
        out[f"log{k}_jacobian_loss"] = np.float64(agent.contraction_losses["jacobian_loss"].item())
    dump_params(agent.model, "after__model", out)
    dump_params(agent.model_ema, "after__ema", out)
    return out


def main():
    global torch
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="checkout of contractive-diffusion-policy @ 5a39a66")
    ap.add_argument("--cleandiffuser", required=True, help="checkout of CleanDiffuser @ 05f17fc")
    ap.add_argument("--out", default="tests/fixtures/parity")
    args = ap.parse_args()
    official, cdroot = os.path.abspath(args.official), os.path.abspath(args.cleandiffuser)
    sys.path[:0] = [cdroot, official]
    install_stubs()
    import torch as _torch
    torch = _torch
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    import cleandiffuser.diffusion
    import cleandiffuser.nn_condition
    import cleandiffuser.nn_diffusion
    import cleandiffuser.utils
    import source.contraction_loss as closs
    import source.contractive_diffusion as cdp
    cd = cleandiffuser
    spec = importlib.util.spec_from_file_location("cdp_rl", os.path.join(official, "scripts/cdp_rl.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rec = Recorder()
    os.makedirs(args.out, exist_ok=True)

    jobs = [
        ("schedules.npz", lambda: make_schedules(cd)),
        ("networks.npz", lambda: make_networks(cd)),
        ("samplers.npz", lambda: make_samplers(cd, cdp, rec)),
        ("losses.npz", lambda: make_losses(cd, cdp, closs, rec)),
        ("rl_step.npz", lambda: run_rl(script, official, rec, "mujoco", "hopper-medium-replay-v2", 11, 3, 256,
                                       2, (401, 402, 4001), True)),
        ("rl_step_antmaze.npz", lambda: run_rl(script, official, rec, "antmaze", "antmaze-medium-play-v2", 29,
                                               8, 64, 1, (501, 502, 5001), False)),
        ("il_step.npz", lambda: make_il_step(cd, cdp, rec)),
    ]
    total = 0
    for fname, job in jobs:
        torch.manual_seed(0)
        np.random.seed(0)
        save(args.out, fname, job())
        size = os.path.getsize(os.path.join(args.out, fname))
        total += size
        print(f"{fname:22s} {size / 1024:8.1f} KiB")
    print(f"{'total':22s} {total / 1024:8.1f} KiB")


if __name__ == "__main__":
    main()
