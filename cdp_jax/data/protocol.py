"""Offline-RL data protocol choices: reward normalisation and low-data subsets by transitions.

* :func:`normalize_rewards`: ``"none"``; ``"returns_range"``, ``r * 1000 / (max R - min R)`` over
  the dataset's episode returns ``R`` (the official CDP code's MuJoCo setting, CleanDiffuser's
  ``modify_reward``); ``"minus_one"``, ``r - 1`` (the official AntMaze setting, IQL's).
* :func:`keep_fraction_of_rows`: a random ``int(fraction * N)`` of the ``N`` training rows
  (transitions, or windows for imitation), what the official code's ``data_portion`` does, as
  opposed to keeping whole episodes (:func:`cdp_jax.data.dataset.select_episodes`).
"""

from __future__ import annotations

import numpy as np

from cdp_jax.configs.names import FRACTION_UNITS, REWARD_NORMALIZATIONS  # noqa: F401 (re-exported)
from cdp_jax.data.dataset import OfflineDataset

# The scale returns_range maps the episode-return range onto (CleanDiffuser: max episode steps).
RETURNS_RANGE_SCALE = 1000.0


def normalize_rewards(data: OfflineDataset, mode: str) -> np.ndarray:
    """The dataset's rewards ``(N,)`` under reward normalisation ``mode`` (float32).

    ``"returns_range"`` uses the returns of the dataset's episodes as stored (true episode
    boundaries). D4RL files read through CleanDiffuser split episodes at terminals and every 1000
    transitions instead; the two agree wherever episodes end at a terminal or at 1000 steps.
    """
    if mode not in REWARD_NORMALIZATIONS:
        raise ValueError(f"Unknown reward_normalization {mode!r}; expected one of "
                         f"{REWARD_NORMALIZATIONS}.")
    rewards = data.rewards.astype(np.float64)
    if mode == "returns_range":
        returns = data.episode_returns()
        spread = float(returns.max() - returns.min())
        if not spread > 0:
            raise ValueError(f"reward_normalization='returns_range' needs episodes with different "
                             f"returns; dataset {data.dataset_id!r} has {returns.size} episode(s) "
                             f"all returning {returns.max():.6g}.")
        rewards = rewards * (RETURNS_RANGE_SCALE / spread)
    elif mode == "minus_one":
        rewards = rewards - 1.0
    return rewards.astype(np.float32)


def keep_fraction_of_rows(arrays: dict, fraction: float, seed: int) -> dict:
    """A random ``int(fraction * N)`` rows (at least 1) of every array in ``arrays`` (same rows
    for all; ``N`` the common leading size), drawn without replacement by ``seed``, in their
    original order. A smaller fraction under the same seed keeps a subset of a larger one's rows.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}.")
    sizes = {k: len(v) for k, v in arrays.items()}
    n = next(iter(sizes.values()))
    if any(size != n for size in sizes.values()):
        raise ValueError(f"arrays of different lengths: {sizes}.")
    count = max(1, int(fraction * n))
    order = np.random.default_rng(seed).permutation(n)
    keep = np.sort(order[:count])
    return {k: v[keep] for k, v in arrays.items()}
