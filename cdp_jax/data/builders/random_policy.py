"""A uniform-random-policy dataset for any gymnasium environment (D4RL's "random" recipe).

Actions are drawn with ``env.action_space.sample()`` from a space seeded with ``seed`` and the env
is reset with seeds drawn from the same generator, so the dataset is deterministic given the seed
(for deterministic simulators). Episodes end on the env's termination or truncation, and the
recording ends with a truncated episode. ``ref_min_score`` / ``ref_max_score`` are recorded only
when given.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from cdp_jax.data.builders.writer import (
    check_target,
    directory_size,
    episode_buffer,
    reported_interrupts,
    write_dataset,
)


def _stack(items: list):
    """List of observations (arrays or dicts of arrays) -> array or dict of stacked arrays."""
    if isinstance(items[0], dict):
        return {k: _stack([it[k] for it in items]) for k in items[0]}
    return np.asarray(items)


def collect(
    env_id: str,
    num_steps: int,
    seed: int = 0,
    *,
    max_episode_steps: int | None = None,
    env_kwargs: dict | None = None,
    progress: Callable[[int], None] | None = None,
):
    """Run uniform random actions for ``num_steps`` steps; return ``(env, episodes)``."""
    import gymnasium as gym

    from cdp_jax.data.minari import _register_robotics

    _register_robotics()
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    env = gym.make(env_id, max_episode_steps=max_episode_steps, **(env_kwargs or {}))
    rng = np.random.default_rng(seed)
    env.action_space.seed(int(rng.integers(2**31)))
    obs, _ = env.reset(seed=int(rng.integers(2**31)))
    episodes, ep = [], {"obs": [obs], "act": [], "rew": [], "term": [], "trunc": []}
    for step in range(num_steps):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        last = step == num_steps - 1
        for k, v in (("obs", obs), ("act", action), ("rew", reward), ("term", terminated),
                     ("trunc", (truncated or last) and not terminated)):
            ep[k].append(v)
        if terminated or truncated or last:
            episodes.append(episode_buffer(
                len(episodes), _stack(ep["obs"]), np.asarray(ep["act"]), np.asarray(ep["rew"]),
                np.asarray(ep["term"]), np.asarray(ep["trunc"]),
            ))
            if not last:
                obs, _ = env.reset(seed=int(rng.integers(2**31)))
                ep = {"obs": [obs], "act": [], "rew": [], "term": [], "trunc": []}
        if progress is not None and (step + 1) % 1000 == 0:
            progress(1000)
    if progress is not None and num_steps % 1000:
        progress(num_steps % 1000)
    return env, episodes


def build(
    env_id: str,
    num_steps: int = 100_000,
    seed: int = 0,
    dataset_id: str | None = None,
    *,
    max_episode_steps: int | None = None,
    env_kwargs: dict | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Collect and write a random-policy dataset; return a summary dict (as ``pointmaze.build``).

    ``dataset_id`` defaults to ``cdp/<env id without version, lower case>/random-v0``.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    if dataset_id is None:
        dataset_id = f"cdp/{env_id.split('-v')[0].lower()}/random-v0"
    check_target(dataset_id, overwrite)
    with reported_interrupts(dataset_id):  # one line, saying what was written
        env, episodes = collect(env_id, num_steps, seed, max_episode_steps=max_episode_steps,
                                env_kwargs=env_kwargs, progress=progress)
        path = write_dataset(
            dataset_id, episodes, env=env, eval_env=env.spec, ref_min_score=ref_min_score,
            ref_max_score=ref_max_score, overwrite=overwrite, algorithm_name="uniform random policy",
            description=f"{env_id}: {num_steps} steps of uniform random actions, seed {seed}. "
                        "Built by cdp_jax.",
        )
        env.close()
        return {
            "dataset_id": dataset_id, "path": str(path), "num_steps": num_steps,
            "num_episodes": len(episodes), "size_bytes": directory_size(path),
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - start_cpu,
        }
