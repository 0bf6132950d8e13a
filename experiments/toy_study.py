"""2-D toy study: does the contraction penalty change the sampling flows, and how?

Trains diffusion behaviour cloning (x0-prediction, discrete cosine T = 50, Diffusion-QL MLP) on a
small dataset from :mod:`cdp_jax.data.toy` (four modes rotating with a 1-D observation) with and
without the penalty, all seeds of an arm in one vmapped program, then measures on the EMA policy:

* support metrics (on-support rate, distance to the nearest mode, mode coverage, mode balance)
  for 1, 2, 5, 15 and 50 DPM-Solver++(2M) steps;
* ``mu`` (drift and network targets) along 15-step sampling trajectories;
* spread of actions per observation; finite-time Lyapunov growth of two flows started 1e-3 apart.

Writes ``results/toy/toy_study.json`` and figures under ``docs/figures/`` (flows, ``mu`` over sampling
time, on-support rate vs steps)::

    python experiments/toy_study.py                 # 5 seeds x 3 arms, 4000 steps
    python experiments/toy_study.py --quick         # a smoke run (used by the slow test)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from cdp_jax import cli
from cdp_jax.configs import fields, names


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=fields.positive_int, default=5)
    parser.add_argument("--steps", type=fields.positive_int, default=4000,
                        help="gradient steps per run")
    parser.add_argument("--num-data", type=fields.positive_int, default=256,
                        help="dataset size (low-data regime)")
    parser.add_argument("--batch-size", type=fields.positive_int, default=256)
    parser.add_argument("--weight", type=fields.nonnegative_float, default=0.1,
                        help="penalty weight gamma")
    parser.add_argument("--penalty", default="eigen", choices=sorted(names.PENALTIES))
    parser.add_argument("--window", type=fields.positive_float, default=1.0,
                        help="fraction of noise levels penalised")
    parser.add_argument("--num-obs", type=fields.positive_int, default=16)
    parser.add_argument("--num-samples", type=fields.positive_int, default=64)
    parser.add_argument("--out", default="results/toy/toy_study.json")
    parser.add_argument("--figures", default="docs/figures")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 200 steps, no figures")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.num_obs, args.num_samples = 2, 200, 4, 16
    if args.steps % min(500, args.steps):
        parser.error(f"--steps must be a multiple of {min(500, args.steps)}")
    if args.window > 1:
        parser.error(f"argument --window: {args.window} is not a fraction in (0, 1]")
    return args


if __name__ == "__main__":
    parse_args()  # --help and a bad value are answered before JAX starts


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from cdp_jax import contraction, contraction_diagnostics, files, samplers, stats, training  # noqa: E402,E501
from cdp_jax.agents import common, dbc  # noqa: E402
from cdp_jax.data import toy  # noqa: E402

STEP_GRID = (1, 2, 5, 15, 50)


def arm_configs(weight: float, penalty: str, window: float) -> dict:
    base = dbc.DBCConfig(obs_horizon=1, action_horizon=1, n_action=1, actor_network="mlp",
                         hidden_dim=256, depth=3, time_dim=64, activation="mish",
                         sampler_steps=15, lr=1e-3, ema_decay=0.995)
    arms = {"vanilla": base}
    for target in ("network", "drift"):
        c = contraction.ContractionConfig(weight=weight, penalty=penalty, target=target,
                                          window=window)
        arms[f"cdp_{target}"] = dataclasses.replace(base, contraction=c)
    return arms


def train_arm(config, data: dict, seeds: list[int], steps: int, chunk: int, batch_size: int):
    """Train one state per seed in a single vmapped program; returns the stacked states."""
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    state = training.init_seeds(dbc, keys, config, obs_dim=1, action_dim=2)
    run = jax.jit(jax.vmap(training.make_train_chunk(dbc, chunk, batch_size), in_axes=(0, 0, 0)))
    metrics = None
    for i in tqdm(range(steps // chunk), desc="train", leave=False):
        chunk_keys = jax.vmap(lambda k, i=i: jax.random.fold_in(k, 1000 + i))(keys)
        state, metrics = run(state, data, chunk_keys)
    return state, jax.tree.map(lambda m: np.asarray(m[:, -1]), metrics)


def evaluate_seed(config, params, key, num_obs: int, num_samples: int) -> dict:
    """All diagnostics of one seed's EMA policy, as arrays (jit with config and sizes static)."""
    schedule = common.make_schedule(config.schedule, config.diffusion_steps)
    actor = dbc._actor(config)
    denoiser = lambda x, t, c: actor.apply(params, x[:, None, :], t, c)[:, 0, :]
    obs = jnp.linspace(-0.9, 0.9, num_obs)
    cond = jnp.repeat(obs, num_samples)[:, None, None]
    out: dict = {}
    keys = jax.random.split(key, 6)
    for steps in STEP_GRID:
        a = samplers.sample(denoiser, schedule, keys[0], (num_obs * num_samples, 2), cond,
                            method="dpm_solver_pp_2m", steps=steps, prediction="x0",
                            clip_x0=(-1.0, 1.0))
        out[f"steps_{steps}"] = toy.support_metrics(obs, a.reshape(num_obs, num_samples, 2))
    spread, _ = contraction_diagnostics.action_spread(
        denoiser, schedule, keys[1], (2,), obs[:, None, None], num_samples=num_samples,
        steps=15, prediction="x0", clip_x0=(-1.0, 1.0))
    out["spread"] = jnp.mean(spread)
    small = (num_obs * 4, 2)
    cond_small = jnp.repeat(obs, 4)[:, None, None]
    for target in ("drift", "network"):
        mu = contraction_diagnostics.mu_along_trajectory(
            denoiser, schedule, keys[2], small, cond_small, target=target, prediction="x0",
            steps=15, exact=True, clip_x0=(-1.0, 1.0))
        out[f"mu_{target}"] = jnp.mean(mu["mu"], axis=1)
        out["mu_tau"] = jnp.asarray(mu["tau"])
    lyap = contraction_diagnostics.finite_time_lyapunov(
        denoiser, schedule, keys[3], small, cond_small, epsilon=1e-3, steps=15, prediction="x0")
    out["log_growth"] = jnp.mean(lyap["log_growth"])
    return out


evaluate_seed_jit = jax.jit(evaluate_seed, static_argnums=(0, 3, 4))


def to_python(tree):
    """Arrays -> floats / lists for JSON."""
    return jax.tree.map(lambda a: np.asarray(a).tolist(), tree)


def flows(config, params, key, obs_value: float, num: int = 48):
    schedule = common.make_schedule(config.schedule, config.diffusion_steps)
    actor = dbc._actor(config)
    denoiser = lambda x, t, c: actor.apply(params, x[:, None, :], t, c)[:, 0, :]
    cond = jnp.full((num, 1, 1), obs_value)
    return np.asarray(samplers.sample(denoiser, schedule, key, (num, 2), cond,
                                      method="dpm_solver_pp_2m", steps=15, prediction="x0",
                                      clip_x0=(-1.0, 1.0), return_trajectory=True))


def summarise(per_seed: list[dict]) -> dict:
    summary = {}
    for key in ("spread", "log_growth"):
        summary[key] = stats.mean_ci95([r[key] for r in per_seed])
    for steps in STEP_GRID:
        for metric in per_seed[0][f"steps_{steps}"]:
            summary[f"steps_{steps}/{metric}"] = stats.mean_ci95(
                [r[f"steps_{steps}"][metric] for r in per_seed])
    for target in ("drift", "network"):
        mu = np.array([r[f"mu_{target}"] for r in per_seed])
        summary[f"mu_{target}_lowest_noise"] = stats.mean_ci95(mu[:, -1])
        summary[f"mu_{target}_mean"] = stats.mean_ci95(mu.mean(axis=1))
    return summary


def make_figures(results: dict, trajectories: dict, fig_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    arms = list(trajectories)
    fig, axes = plt.subplots(1, len(arms), figsize=(4 * len(arms), 4), squeeze=False)
    centres = np.asarray(toy.mode_centres(jnp.array([0.0])))[0]
    for ax, arm in zip(axes[0], arms, strict=True):
        traj = trajectories[arm]
        for i in range(traj.shape[1]):
            ax.plot(traj[:, i, 0], traj[:, i, 1], lw=0.6, alpha=0.6, color="tab:blue")
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=8, color="tab:red", zorder=3)
        ax.scatter(centres[:, 0], centres[:, 1], marker="x", s=80, color="k", zorder=4)
        ax.set_xlim(-2.5, 2.5), ax.set_ylim(-2.5, 2.5), ax.set_aspect("equal")
        ax.set_title(f"{arm}: flows at o = 0")
    fig.tight_layout()
    path = fig_dir / "toy_flows.png"
    fig.savefig(path, dpi=110), plt.close(fig)
    written.append(str(path))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, target in zip(axes, ("drift", "network"), strict=True):
        for arm, r in results["arms"].items():
            mu = np.array([s[f"mu_{target}"] for s in r["per_seed"]])
            tau = r["per_seed"][0]["mu_tau"]
            ax.errorbar(tau, mu.mean(0), yerr=mu.std(0), label=arm, capsize=2)
        ax.set_xlabel("schedule time tau (noise -> data: right to left)")
        ax.set_ylabel(f"mu ({target} target)"), ax.set_xscale("log"), ax.legend()
        ax.set_title(f"lambda_max(sym J_{target}) along sampling")
    fig.tight_layout()
    path = fig_dir / "toy_mu.png"
    fig.savefig(path, dpi=110), plt.close(fig)
    written.append(str(path))

    fig, ax = plt.subplots(figsize=(5, 4))
    for arm, r in results["arms"].items():
        vals = [r["summary"][f"steps_{s}/on_support"] for s in STEP_GRID]
        ax.errorbar(STEP_GRID, [v["mean"] for v in vals], yerr=[v["ci95"] for v in vals],
                    label=arm, marker="o", capsize=3)
    ax.set_xscale("log"), ax.set_xlabel("DPM-Solver++(2M) steps"), ax.set_ylabel("on-support rate")
    ax.legend(), ax.set_title("robustness to solver steps (95% CI)")
    fig.tight_layout()
    path = fig_dir / "toy_steps.png"
    fig.savefig(path, dpi=110), plt.close(fig)
    written.append(str(path))
    return written


def main(argv=None):
    args = parse_args(argv)
    chunk = min(500, args.steps)

    seeds = list(range(args.seeds))
    data = jax.vmap(lambda k: toy.sample_dataset(k, args.num_data))(
        jnp.stack([jax.random.PRNGKey(10_000 + s) for s in seeds]))
    data = {"observations": data["observations"][:, :, None, :],  # (S, N, H=1, 1)
            "actions": data["actions"][:, :, None, :]}  # (S, N, A=1, 2)
    results = {"protocol": dict(vars(args), sampler="dpm_solver_pp_2m", prediction="x0",
                                schedule="cosine T=50", network="DQL MLP 3x256 mish",
                                backend=jax.default_backend()), "arms": {}}
    trajectories = {}
    for arm, config in arm_configs(args.weight, args.penalty, args.window).items():
        t0 = time.perf_counter()
        states, last = train_arm(config, data, seeds, args.steps, chunk, args.batch_size)
        train_s = time.perf_counter() - t0
        per_seed = []
        for i in tqdm(seeds, desc=f"eval {arm}", leave=False):
            params = jax.tree.map(lambda p, i=i: p[i], states.ema_params)
            per_seed.append(to_python(evaluate_seed_jit(config, params, jax.random.PRNGKey(77 + i),
                                                        args.num_obs, args.num_samples)))
        params0 = jax.tree.map(lambda p: p[0], states.ema_params)
        trajectories[arm] = flows(config, params0, jax.random.PRNGKey(5), 0.0)
        results["arms"][arm] = {
            "config": common.config_to_dict(config), "train_seconds": train_s,
            "final_metrics": {k: v.tolist() for k, v in last.items()},
            "per_seed": per_seed, "summary": summarise(per_seed)}
        s = results["arms"][arm]["summary"]
        print(f"{arm:12s} train {train_s:6.1f}s  on-support@15 "
              f"{stats.format_cell([r['steps_15']['on_support'] for r in per_seed])}  "
              f"spread {s['spread']['mean']:.3f}  log-growth {s['log_growth']['mean']:.2f}  "
              f"mu_drift(low) {s['mu_drift_lowest_noise']['mean']:.2f}  "
              f"mu_net(low) {s['mu_network_lowest_noise']['mean']:.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    files.write_json(out, results, indent=1)
    print(f"wrote {out}")
    if not args.quick:
        for path in make_figures(results, trajectories, Path(args.figures)):
            print(f"wrote {path}")
    return results


if __name__ == "__main__":
    sys.exit(cli.run(main))
