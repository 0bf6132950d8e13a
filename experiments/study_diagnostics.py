"""Contraction diagnostics of a finished study cell's final EMA actors.

``study_runner.diagnose_finished`` writes them beside each seed (``seed_<k>/diagnostics.json``)
and ``study_runner.collect_cell`` records them: ``mu`` of the drift and of the network along the
sampling trajectories, the spread of sampled actions and their distance to the dataset's actions.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

DIAG_OBS = 64  # dataset observations the diagnostics condition on (the same for every run)
DIAG_SAMPLES = 32  # actions sampled per observation for the spread


@functools.cache
def _diagnostics_fn(agent_name: str, agent_config):
    """Jitted ``(ema_params, obs, actions, key) -> dict`` for one agent configuration.

    Cached per configuration so that the seeds and cells of a study share one compiled program.
    """
    import jax  # noqa: PLC0415 (keep ``--help`` and the runner free of JAX start-up)
    import jax.numpy as jnp  # noqa: PLC0415

    from cdp_jax import contraction_diagnostics as cd  # noqa: PLC0415
    from cdp_jax import training  # noqa: PLC0415
    from cdp_jax.agents import common  # noqa: PLC0415

    module = training.get_agent(agent_name)
    actor = module._actor(agent_config)
    # the agent's own schedule, grid and clipping (the paper presets: CleanDiffuser's, unclipped IL)
    option = lambda name, default: getattr(agent_config, name, default)
    schedule = common.make_schedule(agent_config.schedule, agent_config.diffusion_steps,
                                    option("schedule_discretization", "ddpm"))
    clip = option("sampler_clip_x0", True)
    kw = dict(method=agent_config.sampler, prediction=agent_config.prediction,
              steps=agent_config.sampler_steps, spacing=option("sampler_spacing", "uniform"),
              clip_x0=(-1.0, 1.0) if clip else None)

    def run(params, obs, actions, key):
        denoiser = lambda x, t, c: actor.apply(params, x, t, c)
        shape = actions.shape
        k1, k2, k3 = jax.random.split(key, 3)
        out = {}
        for target, k in (("drift", k1), ("network", k2)):
            traj = cd.mu_along_trajectory(denoiser, schedule, k, shape, obs, target=target,
                                          num_iters=8, **kw)
            out[f"mu_{target}_mean"] = jnp.mean(traj["mu"])
            out[f"mu_{target}_lowest"] = jnp.mean(traj["mu"][-1])
            out[f"mu_{target}_curve"] = jnp.mean(traj["mu"], axis=1)
            out["tau"] = traj["tau"]
        spread, samples = cd.action_spread(denoiser, schedule, k3, shape[1:], obs,
                                           num_samples=DIAG_SAMPLES, **kw)
        samples = jnp.clip(samples, -1.0, 1.0)
        dist = jnp.linalg.norm((samples - actions[:, None]).reshape(
            samples.shape[0], samples.shape[1], -1), axis=-1)
        out["action_spread"] = jnp.mean(spread)
        out["distance_to_data_action"] = jnp.mean(dist)
        return out

    return jax.jit(run)


def diagnose_cell(run_dir: Path, agent_name: str) -> None:
    """Write ``seed_<k>/diagnostics.json`` for every seed of a finished cell (skips done ones).

    On the final EMA actor, with the run's sampler and solver steps, conditioned on ``DIAG_OBS``
    dataset observations (fixed draw, normalised as in training):

    * ``mu`` of the drift and of the network (Lanczos, 8 steps) along the sampling trajectories,
      averaged over the trajectory and at the lowest noise level;
    * the spread of ``DIAG_SAMPLES`` actions per observation (root trace of their covariance);
    * the mean distance of those actions to the dataset's action at the same observation.
    """
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from cdp_jax import run_config, training  # noqa: PLC0415

    for seed_dir in sorted(run_dir.glob("seed_*")):
        out = seed_dir / "diagnostics.json"
        if out.exists():
            continue
        config, agent_config, state, norm, meta = run_config.load_policy(seed_dir)
        data = _load_dataset(config.dataset)
        arrays, _ = training.prepare_arrays(data, agent_name, agent_config, config, norm)
        idx = np.random.default_rng(0).choice(len(arrays["actions"]), DIAG_OBS, replace=False)
        fn = _diagnostics_fn(agent_name, agent_config)
        result = fn(state.ema_params, arrays["observations"][idx], arrays["actions"][idx],
                    jax.random.PRNGKey(0))
        record = {k: np.asarray(v).tolist() for k, v in result.items()}
        record.update(step=meta["step"], num_obs=DIAG_OBS, samples_per_obs=DIAG_SAMPLES)
        out.write_text(json.dumps(record))


@functools.lru_cache(maxsize=4)
def _load_dataset(dataset_id: str):
    from cdp_jax.data import minari  # noqa: PLC0415

    return minari.load(dataset_id)
