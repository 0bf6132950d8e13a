"""A training run's evaluations: the vector envs, the policy, the protocol recorded next to every
score, the start states and one evaluation (used by :mod:`cdp_jax.training`, ``--seeds`` runs and
``experiments/evaluate.py``; re-exported by :mod:`cdp_jax.training`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cdp_jax import evaluation
from cdp_jax.agents import DATA
from cdp_jax.data import dataset as dataset_lib
from cdp_jax.data import minari
from cdp_jax.run_config import TrainConfig


def eval_num_envs(config: TrainConfig) -> int:
    """The environments one evaluation steps together: ``eval_envs``, but never more than
    ``eval_episodes`` (an env without an episode to play would be stepped for nothing)."""
    return min(config.eval_envs, config.eval_episodes)


def make_eval_envs(data: dataset_lib.OfflineDataset, config: TrainConfig, copies: int = 1):
    """The dataset's evaluation env, :func:`eval_num_envs` copies (times ``copies``: one block per
    seed of a joint rollout); checks its dimensions against data."""
    envs = evaluation.make_vector_env(lambda: data.make_env(eval_env=True),
                                      eval_num_envs(config) * copies, config.eval_vector)
    obs, _ = envs.reset(seed=0)
    obs_dim = dataset_lib.flatten_observation(obs, data.obs_keys).shape[-1]
    act_shape = envs.single_action_space.shape
    if obs_dim != data.obs_dim or act_shape != (data.act_dim,):
        envs.close()
        raise ValueError(f"dataset {data.dataset_id!r} (obs_dim={data.obs_dim}, action_dim="
                         f"{data.act_dim}) does not match its environment (obs_dim={obs_dim}, "
                         f"action shape {act_shape}).")
    return envs


def make_policy(act_fn, state):
    """The batched policy ``(obs, key) -> actions`` for :func:`evaluation.evaluate`.

    ``act_fn`` is ``jax.jit(agent.act)``, made once per run so that evaluations reuse its compiled
    program (the state is an argument, not a closed-over constant).
    """
    return lambda obs, key: act_fn(state, jnp.asarray(obs, jnp.float32), key)


def eval_protocol(agent_name: str, agent_config, config: TrainConfig) -> dict:
    """The protocol stored next to every score in ``eval.json``."""
    return {
        "episodes": config.eval_episodes, "num_envs": eval_num_envs(config),
        "candidates": getattr(agent_config, "num_candidates", 1),
        "candidate_temperature": getattr(agent_config, "candidate_temperature", None),
        "noise_temperature": agent_config.noise_temperature, "sampler": agent_config.sampler,
        "sampler_steps": agent_config.sampler_steps, "dataset": config.dataset,
        "max_episode_steps": config.max_episode_steps,
    }


# A run of seed s resets its evaluation episode k with seed RESET_SEED_STRIDE * s + k, at every
# evaluation: its evaluations (and those of evaluate.py --seed s) share their start states, and
# seeds below 1000 with fewer than 100,000 episodes never share one.
RESET_SEED_STRIDE = 100_000


def eval_reset_seeds(seed: int, episodes: int) -> list[int]:
    """The reset seeds of a run's evaluation episodes: ``100_000 seed + k`` for episode ``k``."""
    return [RESET_SEED_STRIDE * seed + k for k in range(episodes)]


def run_evaluation(act_fn, agent_name, state, data, norm, envs, config: TrainConfig, step: int,
                   reset_seeds=None):
    """One evaluation at ``step``: returns, success rate (if defined) and normalised score (if
    defined), each mean with its standard error. Episode ``k`` starts from reset seed
    ``reset_seeds[k]`` (default :func:`eval_reset_seeds` of ``config.seed``); the policy's key is
    ``fold_in(PRNGKey(config.seed + 1_000_003), step)``."""
    agent_config = state.config
    windows = DATA[agent_name] == "windows"
    obs_fn = lambda o: np.asarray(
        norm.normalize(dataset_lib.flatten_observation(o, data.obs_keys)), np.float32)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1_000_003), step)
    if reset_seeds is None:
        reset_seeds = eval_reset_seeds(config.seed, config.eval_episodes)
    result = evaluation.evaluate(
        make_policy(act_fn, state), envs, key, num_episodes=config.eval_episodes,
        obs_fn=obs_fn, obs_horizon=agent_config.obs_horizon if windows else None,
        n_action=agent_config.n_action if windows else 1, reset_seeds=reset_seeds,
        max_episode_steps=config.max_episode_steps)
    if data.ref_min_score is not None and data.ref_max_score is not None:
        result.update(evaluation.normalized_summary(
            minari.normalized_score(data, result["returns"])))
    return result


# ----------------------------------------------------------------------------- host loop
