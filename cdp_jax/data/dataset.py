"""The in-memory offline dataset every reader produces, and what is built from it.

Readers (``cdp_jax.data.minari``, ``cdp_jax.data.robomimic``) return an :class:`OfflineDataset`:
flat float32 numpy arrays of transitions, row ``i`` being one environment step, episodes stored
contiguously and in order. From it come

* transitions for offline RL (:meth:`OfflineDataset.transitions`),
* windows for imitation learning (:func:`windows`: an observation history and an action chunk),
* episode subsets for the low-data regime (:func:`select_episodes`, :func:`subset_episodes`).

Conventions
-----------
* ``terminals[i]`` is True when step ``i`` ended the episode because the MDP terminated (no
  bootstrap); ``timeouts[i]`` is True when the episode was cut there (time limit, goal switch in a
  continuing task, end of recording): bootstrap from ``next_observations[i]``. The two are never
  both True; the last step of every episode has exactly one of them set.
* Dict observations are flattened by concatenating leaves in ``obs_keys`` order; nested keys are
  joined with ``/`` (``"desired_goal/microwave"``). ``obs_keys == ()`` means Box observations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TRANSITION_KEYS = (
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "terminals",
    "timeouts",
    "episode_ids",
)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not where the reader looked (the message says how to get it)."""


class DatasetCorruptError(OSError):
    """The dataset exists but its files cannot be read (truncated, corrupt, half-copied).

    Attributes: ``path``, the damaged file or folder as it is on disk (None when the reader could
    not tell which).
    """

    def __init__(self, message: str, *, path=None):
        super().__init__(message)
        self.path = path


class DatasetValueError(ValueError):
    """Values inside a dataset are unusable: NaN / inf anywhere, or actions out of range. The
    message names the array, the episode id and the step within that episode."""


class ObservationKeyError(KeyError):
    """An observation key asked for is not in the (dict) observations."""

    def __str__(self) -> str:  # KeyError would repr() the message, quoting it.
        return str(self.args[0])


@dataclasses.dataclass(frozen=True, eq=False)
class OfflineDataset:
    """Transitions of whole episodes, as float32 numpy arrays (``N`` steps in all).

    Attributes:
        observations: ``(N, obs_dim)`` float32, the observation before the action.
        actions: ``(N, act_dim)`` float32.
        rewards: ``(N,)`` float32.
        next_observations: ``(N, obs_dim)`` float32; equals ``observations[i + 1]`` within an
            episode.
        terminals: ``(N,)`` float32 in {0, 1}; true termination (do not bootstrap).
        timeouts: ``(N,)`` float32 in {0, 1}; truncation (bootstrap), never set together with
            terminals.
        episode_ids: ``(N,)`` int64, the source episode id of each row; each episode's rows are
            contiguous.
        dataset_id: the Minari id, or the file path for HDF5 readers.
        obs_keys: key order used to flatten dict observations; ``()`` for Box observations.
        num_episodes: number of episodes held.
        ref_min_score, ref_max_score: reference returns for normalised scores, or None.
        eval_env_spec: the evaluation environment's ``EnvSpec`` as JSON (gymnasium's
            ``to_json``), or None when the source records none.
        extras: other source metadata (robomimic: ``{"env_args": {...}}``), JSON-serialisable.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_ids: np.ndarray
    dataset_id: str
    obs_keys: tuple[str, ...]
    num_episodes: int
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    eval_env_spec: str | None = None
    extras: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def transitions(self) -> dict[str, np.ndarray]:
        """The row arrays as a dict (keys ``TRANSITION_KEYS``), ready for ``buffer.to_device``."""
        return {k: getattr(self, k) for k in TRANSITION_KEYS}

    def episode_returns(self) -> np.ndarray:
        """``(num_episodes,)`` undiscounted return of each episode, in storage order."""
        starts = np.flatnonzero(np.diff(self.episode_ids, prepend=self.episode_ids[:1] - 1))
        return np.add.reduceat(self.rewards.astype(np.float64), starts)

    def make_env(self, eval_env: bool = True, **kwargs):
        """Recover the evaluation environment (see ``cdp_jax.data.minari.make_env``)."""
        from cdp_jax.data.minari import make_env

        return make_env(self, eval_env=eval_env, **kwargs)


def flatten_observation(obs: Any, obs_keys: Sequence[str]) -> np.ndarray:
    """Flatten one observation, a batch of them, or a whole episode into a float32 array.

    Args:
        obs: a Box observation (array ``(..., obs_dim)``), or a (nested) dict of arrays whose leaves
            have shape ``(..., k)`` with the same leading dims, e.g. a vector env's ``(n_envs, k)``.
            Leaves of shape ``()`` or ``(n,)`` with ``n`` matching no feature axis are not guessed
            at: a scalar leaf must arrive as ``(..., 1)`` (single observations of shape ``()`` are
            allowed).
        obs_keys: the key order (``/`` joins nested keys); ``()`` for Box observations.

    Returns:
        ``(..., obs_dim)`` float32, leaves concatenated along the last axis in ``obs_keys`` order.

    Raises:
        ObservationKeyError: a key in ``obs_keys`` is missing from ``obs``; the message lists
            the available keys.
    """
    if not obs_keys:
        if isinstance(obs, Mapping):
            raise ValueError(
                f"obs_keys is empty (Box observations) but got a dict with keys {sorted(obs)}; "
                "pass the dataset's obs_keys"
            )
        return np.asarray(obs, dtype=np.float32)
    parts = []
    for key in obs_keys:
        leaf = obs
        for part in key.split("/"):
            if not isinstance(leaf, Mapping) or part not in leaf:
                raise ObservationKeyError(
                    f"observation key {key!r} not found; available keys: {leaf_keys(obs)}"
                )
            leaf = leaf[part]
        leaf = np.asarray(leaf, dtype=np.float32)
        parts.append(leaf[None] if leaf.ndim == 0 else leaf)
    return np.concatenate(parts, axis=-1)


def leaf_keys(obs: Any, prefix: str = "") -> list[str]:
    """All leaf keys of a nested dict, ``/``-joined, in the dict's own order."""
    if not isinstance(obs, Mapping):
        return [prefix] if prefix else []
    keys = []
    for k, v in obs.items():
        keys.extend(leaf_keys(v, f"{prefix}/{k}" if prefix else str(k)))
    return keys


def default_obs_keys(obs: Any) -> tuple[str, ...]:
    """The flattening order used when none is given.

    Goal-conditioned dicts (``observation`` + ``desired_goal``, as PointMaze, AntMaze, Kitchen,
    Fetch) give ``observation`` then the ``desired_goal`` leaves: ``achieved_goal`` is a function of
    the state and would only duplicate features. Other dicts give all
    leaves; Box observations give ``()``.
    """
    if not isinstance(obs, Mapping):
        return ()
    keys = leaf_keys(obs)
    if "observation" in obs and "desired_goal" in obs:
        under = lambda name: [k for k in keys if k == name or k.startswith(name + "/")]
        return tuple(under("observation") + under("desired_goal"))
    return tuple(keys)


def episode_bounds(episode_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(start, end)`` row index of each row's episode, ``end`` inclusive; both ``(N,)`` int64.

    Episodes are the maximal runs of equal consecutive ``episode_ids``.
    """
    n = episode_ids.shape[0]
    is_start = np.ones(n, dtype=bool)
    is_start[1:] = episode_ids[1:] != episode_ids[:-1]
    starts = np.flatnonzero(is_start)
    ends = np.append(starts[1:] - 1, n - 1)
    run = np.cumsum(is_start) - 1
    return starts[run], ends[run]


def windows(
    dataset: OfflineDataset, obs_horizon: int, action_horizon: int
) -> dict[str, np.ndarray]:
    """Observation histories and action chunks, one per dataset row, never crossing episodes.

    For row ``t`` (in an episode spanning rows ``s..e``) the window is

    * ``observations[t] = obs[max(s, t - H + 1) ... t]``: the last ``H`` observations ending at
      ``t``; before the episode start the first observation ``obs[s]`` is repeated (left padding);
    * ``actions[t] = act[t ... min(e, t + A - 1)]``: the ``A`` actions starting at ``t``; past the
      episode end the last action ``act[e]`` is repeated (right edge padding).

    This is the Diffusion Policy convention: condition on ``obs[t-H+1..t]``, predict
    ``act[t..t+A-1]``.

    Args:
        dataset: any :class:`OfflineDataset` (Minari or robomimic).
        obs_horizon: ``H >= 1``.
        action_horizon: ``A >= 1``.

    Returns:
        ``dict(observations=(N, H, obs_dim), actions=(N, A, act_dim))``, float32.
    """
    for name, value in (("obs_horizon", obs_horizon), ("action_horizon", action_horizon)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    start, end = episode_bounds(dataset.episode_ids)
    t = np.arange(len(dataset))[:, None]
    obs_idx = np.maximum(t + np.arange(-obs_horizon + 1, 1)[None, :], start[:, None])
    act_idx = np.minimum(t + np.arange(action_horizon)[None, :], end[:, None])
    return {"observations": dataset.observations[obs_idx], "actions": dataset.actions[act_idx]}


def select_episodes(
    num_total: int,
    *,
    fraction: float | None = None,
    num_episodes: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Positions (sorted, int64) of the episodes to keep, drawn without replacement by ``seed``.

    At most one of ``fraction`` (in ``(0, 1]``; keeps ``max(1, round(fraction * num_total))``) and
    ``num_episodes`` (in ``[1, num_total]``) may be given; neither keeps everything. The same seed
    always keeps the same episodes, and a smaller fraction under the same seed keeps a subset of a
    larger one (both are prefixes of one permutation).
    """
    if fraction is not None and num_episodes is not None:
        raise ValueError("pass at most one of fraction and num_episodes, got both")
    if fraction is None and num_episodes is None:
        return np.arange(num_total)
    if fraction is not None:
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        count = max(1, int(round(float(fraction) * num_total)))
    else:
        if not isinstance(num_episodes, (int, np.integer)) or not 1 <= num_episodes <= num_total:
            raise ValueError(
                f"num_episodes must be an integer in [1, {num_total}] (the dataset's episode "
                f"count), got {num_episodes!r}"
            )
        count = int(num_episodes)
    order = np.random.default_rng(seed).permutation(num_total)
    return np.sort(order[:count])


def concat_episodes(
    episodes: Sequence[dict[str, np.ndarray]], **metadata: Any
) -> OfflineDataset:
    """Stack per-episode arrays into an :class:`OfflineDataset`.

    Each episode dict holds ``obs`` ``(T + 1, obs_dim)`` (the last entry is the final next
    observation), ``actions`` ``(T, act_dim)``, ``rewards``, ``terminals``, ``timeouts`` ``(T,)``
    and ``id`` (int). An episode whose last step is neither terminal nor timeout is marked timeout
    there (the recording stopped); a step flagged as both keeps only the terminal.

    Raises:
        DatasetValueError: a value is NaN / inf (see :func:`check_values`).
    """
    if not episodes:
        raise ValueError("no episodes to build a dataset from")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in TRANSITION_KEYS}
    for ep in episodes:
        obs = np.asarray(ep["obs"], dtype=np.float32)
        steps = obs.shape[0] - 1
        terminals = np.asarray(ep["terminals"], dtype=bool).reshape(steps)
        timeouts = np.asarray(ep["timeouts"], dtype=bool).reshape(steps) & ~terminals
        if steps and not (terminals[-1] or timeouts[-1]):
            timeouts[-1] = True
        cols["observations"].append(obs[:-1])
        cols["next_observations"].append(obs[1:])
        cols["actions"].append(np.asarray(ep["actions"], dtype=np.float32).reshape(steps, -1))
        cols["rewards"].append(np.asarray(ep["rewards"], dtype=np.float32).reshape(steps))
        cols["terminals"].append(terminals.astype(np.float32))
        cols["timeouts"].append(timeouts.astype(np.float32))
        cols["episode_ids"].append(np.full(steps, int(ep["id"]), dtype=np.int64))
    arrays = {k: np.concatenate(v, axis=0) for k, v in cols.items()}
    dataset = OfflineDataset(**arrays, num_episodes=len(episodes), **metadata)
    check_values(dataset)
    return dataset


def check_values(dataset: OfflineDataset, action_bound: float | None = None) -> None:
    """Check that every array holds finite values and, with ``action_bound``, that every action has
    ``|a| <= action_bound`` (up to 1e-4).

    A check written as ``max(|a|) > bound`` would pass a dataset with one NaN action (the max is
    NaN, the comparison false), and the out-of-range rest would be clipped silently.

    Raises:
        DatasetValueError: naming the first bad array (in ``TRANSITION_KEYS`` order), the episode
            id, the step within that episode and the column, and how many episodes are affected.
    """
    for key in TRANSITION_KEYS[:-1]:
        values = getattr(dataset, key)
        bad = ~np.isfinite(values)
        what, fix = "NaN / inf", "the file is corrupt or was written wrong: rebuild it"
        if key == "actions" and action_bound is not None and not bad.any():
            bad = ~(np.abs(values) <= action_bound + 1e-4)
            what = f"|a| > {action_bound:g}"
            fix = (f"the diffusion policies sample in [-{action_bound:g}, {action_bound:g}]: "
                   "rescale the actions first")
        if not bad.any():
            continue
        rows = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))
        row = int(rows[0])
        step = row - int(episode_bounds(dataset.episode_ids)[0][row])
        col = int(np.flatnonzero(bad[row].reshape(-1))[0])
        where = f"step {step}" + ("" if values.ndim == 1 else f", column {col}")
        episodes = np.unique(dataset.episode_ids[rows])
        raise DatasetValueError(
            f"dataset {dataset.dataset_id!r}: {key} hold {what} in {episodes.size} episode(s) "
            f"({rows.size} row(s)); the first is episode {int(dataset.episode_ids[row])}, {where} "
            f"(value {values[row].reshape(-1)[col]}): {fix}."
        )


def subset_episodes(dataset: OfflineDataset, keep_ids: np.ndarray) -> OfflineDataset:
    """The rows of the episodes whose ids are in ``keep_ids`` (storage order kept)."""
    mask = np.isin(dataset.episode_ids, keep_ids)
    arrays = {k: v[mask] for k, v in dataset.transitions().items()}
    return dataclasses.replace(
        dataset, **arrays, num_episodes=int(np.unique(arrays["episode_ids"]).size)
    )
