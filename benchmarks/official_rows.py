"""The official PyTorch side of ``benchmarks/side_by_side.py``: one measurement of one row.

Imports the official CDP code and CleanDiffuser from the checkouts given on the command line
(nothing of theirs is copied here), with the minimal stand-ins of ``install_stubs`` in
tools/make_parity_fixtures.py for what cannot be installed (d4rl, old gym, wandb, numba/zarr,
torchvision). Float32, ``torch.set_num_threads`` left at its default.

:func:`measure` returns seconds per unit (one training step, one call, one matmul) for each timed
repeat, after ``warmup`` untimed units.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OBS, ACT, RL_BATCH = 11, 3, 256  # D4RL hopper
IL_OBS, IL_ACT, IL_HORIZON, IL_BATCH = 19, 7, 2, 512  # Robomimic lift low-dim
MATMUL_N = 2048


def load(official: str, cleandiffuser: str):
    """The official modules as a namespace (torch, cd, closs, cdp, script)."""
    sys.path[:0] = [os.path.abspath(cleandiffuser), os.path.abspath(official)]
    spec = importlib.util.spec_from_file_location("make_parity_fixtures",
                                                  REPO / "tools" / "make_parity_fixtures.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    fixtures.install_stubs()
    import cleandiffuser.diffusion
    import cleandiffuser.nn_condition
    import cleandiffuser.nn_diffusion
    import source.contraction_loss as closs
    import source.contractive_diffusion as cdp
    import torch
    spec = importlib.util.spec_from_file_location(
        "cdp_rl", os.path.join(os.path.abspath(official), "scripts", "cdp_rl.py"))
    script = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(sys.stderr):
        spec.loader.exec_module(script)
    return types.SimpleNamespace(torch=torch, cd=cleandiffuser, closs=closs, cdp=cdp,
                                 script=script, official=os.path.abspath(official))


def time_units(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# ------------------------------------------------------------------------------------------ rows
def rl_step(m, weight: float, warmup: int, repeats: int) -> list[float]:
    """The real ``pipeline`` of scripts/cdp_rl.py (hopper-medium-replay-v2, critic hidden 256) on
    random batches; one Logger call per step (``log_interval=1``), and a step's time is the interval
    between two Logger calls: the whole loop body (critic update with the 15-step 2M EMA sample,
    ``actor.loss``, the EDP draw, ``compute_contractive_loss`` on t < 5 (computed at weight 0 too),
    AdamW/Adam, LR schedulers, target update, logging's ``.item()`` calls)."""
    from hydra import compose, initialize_config_dir
    torch, script = m.torch, m.script
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        obs, nxt = torch.randn(RL_BATCH, OBS, generator=gen), torch.randn(RL_BATCH, OBS, generator=gen)
        batches.append({"obs": {"state": obs}, "next_obs": {"state": nxt},
                        "act": torch.rand(RL_BATCH, ACT, generator=gen) * 2 - 1,
                        "rew": torch.randn(RL_BATCH, 1, generator=gen),
                        "tml": (torch.rand(RL_BATCH, 1, generator=gen) < 0.05).float()})
    stamps = []

    class Logger:  # source.utils.Logger is wandb; keep the time of each call
        def __init__(self, *a):
            pass

        def log(self, d, category):
            stamps.append(time.perf_counter())

    class FakeDataset:  # only o_dim, a_dim and len() are read
        o_dim, a_dim = OBS, ACT

        def __init__(self, *a):
            pass

        def __len__(self):
            return 10 ** 6

    script.__dict__.update(Logger=Logger, DataLoader=lambda ds, **kw: batches,
                           D4RLMuJoCoTDDataset=FakeDataset)
    log_dir = tempfile.mkdtemp()
    overrides = ["env_name=mujoco", "task=hopper-medium-replay-v2", f"batch_size={RL_BATCH}",
                 "hidden_dim=256", f"loss_weights.jacobian={weight}",
                 f"gradient_steps={warmup + repeats + 1}", "log_interval=1",
                 "eval_interval=1000000000", "save_interval=1000000000", "device=cpu",
                 "wandb_mode=disabled", f"log_dir={log_dir}"]
    with initialize_config_dir(config_dir=os.path.join(m.official, "configs/cdp-rl"),
                               version_base=None):
        cfg = compose(config_name="main", overrides=overrides)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the pipeline prints reports
            script.pipeline.__wrapped__(cfg)
    finally:
        shutil.rmtree(log_dir)
    return [b - a for a, b in itertools.pairwise(stamps)][warmup:]


def rl_actor(m):
    """The actor exactly as scripts/cdp_rl.py builds it (hopper dims)."""
    torch, cd = m.torch, m.cd
    return cd.diffusion.DiscreteDiffusionSDE(
        cd.nn_diffusion.DQLMlp(OBS, ACT, emb_dim=64, timestep_emb_type="positional"),
        cd.nn_condition.IdentityCondition(dropout=0.0), predict_noise=False,
        optim_params={"lr": 3e-4}, x_max=+1. * torch.ones((1, ACT)),
        x_min=-1. * torch.ones((1, ACT)), diffusion_steps=50, device="cpu")


def sample_2m(m, batch: int, warmup: int, repeats: int) -> list[float]:
    """``DiscreteDiffusionSDE.sample`` as source/sim_eval.py calls it (EMA, temperature 0.5)."""
    torch = m.torch
    actor = rl_actor(m)
    actor.eval()
    obs, prior = torch.randn(batch, OBS), torch.zeros(batch, ACT)
    return time_units(lambda: actor.sample(
        prior, solver="ode_dpmsolver++_2M", n_samples=batch, sample_steps=15, use_ema=True,
        temperature=0.5, condition_cfg=obs, w_cfg=1.0), warmup, repeats)


def penalty(m, dim: int, warmup: int, repeats: int) -> list[float]:
    """``compute_contractive_loss(loss_type="jacobian")`` on every sample of the batch (t uniform
    in 0..49), times the weight 0.1, then ``.backward()`` to every parameter (the condition
    network's too, for d = 7)."""
    torch, cd = m.torch, m.cd
    if dim == IL_ACT:
        diffusion = cd.nn_diffusion.PearceMlp(IL_ACT, To=IL_HORIZON, emb_dim=128, hidden_dim=512)
        condition = cd.nn_condition.PearceObsCondition(IL_OBS, emb_dim=128, dropout=0.0)
        batch, obs = IL_BATCH, torch.randn(IL_BATCH, IL_HORIZON, IL_OBS)
    else:
        diffusion = cd.nn_diffusion.DQLMlp(OBS, dim, emb_dim=64, timestep_emb_type="positional")
        condition = cd.nn_condition.IdentityCondition(dropout=0.0)
        batch, obs = RL_BATCH, torch.randn(RL_BATCH, OBS)
    nets = torch.nn.ModuleList([diffusion, condition]).train()
    x, t = torch.randn(batch, dim), torch.randint(50, (batch,))

    def call():
        nets.zero_grad(set_to_none=True)
        losses = m.closs.compute_contractive_loss(diffusion, x, t, condition(obs),
                                                  lambda_contr=0.1, loss_type="jacobian")
        (0.1 * losses["jacobian_loss"]).backward()

    return time_units(call, warmup, repeats)


def il_step(m, weight: float, warmup: int, repeats: int) -> list[float]:
    """``agent.update(action, obs)`` of the official IL agent (scripts/cdp_il_lowdim.py's
    ``pearce_mlp`` on lift): x0 loss, ``compute_contractive_loss`` (always, weight 0 included),
    AdamW step, EMA."""
    torch, cd = m.torch, m.cd
    agent = m.cdp.DiscreteDiffusionSDE(
        cd.nn_diffusion.PearceMlp(IL_ACT, To=IL_HORIZON, emb_dim=128, hidden_dim=512),
        cd.nn_condition.PearceObsCondition(IL_OBS, emb_dim=128, dropout=0.0), predict_noise=False,
        optim_params={"lr": 1e-3}, diffusion_steps=50, device="cpu", eigen_weight=0.0,
        lambda_contr=0.1, jacobian_weight=weight, loss_type="jacobian")
    action, obs = torch.rand(IL_BATCH, IL_ACT) * 2 - 1, torch.randn(IL_BATCH, IL_HORIZON, IL_OBS)
    return time_units(lambda: agent.update(action, obs), warmup, repeats)


def matmul(torch, warmup: int, repeats: int) -> list[float]:
    a = torch.randn(MATMUL_N, MATMUL_N)
    return time_units(lambda: a @ a, warmup, repeats)


def measure(row: str, official: str, cleandiffuser: str, warmup: int, repeats: int) -> dict:
    """``{"times_s": seconds per unit, "versions": ...}`` of the official code on ``row``."""
    if row == "matmul":  # needs torch only
        import torch
        times = matmul(torch, warmup, repeats)
    else:
        m = load(official, cleandiffuser)
        torch = m.torch
        family, arg = row.split("/")
        # "fast" rows: the official code has no fast penalty; its comparator is its own step
        # with the penalty it always computes (weight 0.1).
        weight = {"penalty": 0.1, "fast": 0.1, "off": 0.0}.get(arg)
        times = {"rl_step": lambda: rl_step(m, weight, warmup, repeats),
                 "il_step": lambda: il_step(m, weight, warmup, repeats),
                 "sample_2m": lambda: sample_2m(m, int(arg), warmup, repeats),
                 "penalty": lambda: penalty(m, int(arg), warmup, repeats)}[family]()
    return {"times_s": times, "versions": {"torch": torch.__version__,
                                           "torch_num_threads": torch.get_num_threads()}}
