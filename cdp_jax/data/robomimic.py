"""Read robomimic-format HDF5 demonstrations into an :class:`OfflineDataset`.

Layout read (robomimic's ``hdf5`` convention)::

    data/                       attrs: env_args (JSON, optional)
      demo_<i>/
        obs/<key>               (T, ...) per observation key
        next_obs/<key>          (T, ...) optional
        actions                 (T, act_dim)
        rewards                 (T,) optional (zeros if absent)
        dones                   (T,) optional (success at the last step in robomimic)
    mask/<filter_key>           optional: names of the demos in a split, e.g. "train" / "valid"

Demos are ordered by their integer suffix (``demo_2`` before ``demo_10``). Without ``next_obs``, the
next observation of the last step repeats its observation (and that step is marked timeout unless
``dones`` says it terminated). ``dones`` become ``terminals``; the last step of a demo that is not
done is a ``timeout``. Windows come from :func:`cdp_jax.data.dataset.windows`, as for Minari data.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

import numpy as np

from cdp_jax import files
from cdp_jax.data.dataset import (
    DatasetCorruptError,
    DatasetNotFoundError,
    ObservationKeyError,
    OfflineDataset,
    concat_episodes,
    select_episodes,
    windows,
)

__all__ = ["load", "windows"]


def _demo_names(data, mask, filter_key: str | None, path: str) -> list[str]:
    names = [n for n in data.keys() if re.fullmatch(r"demo_\d+", n)]
    if filter_key is not None:
        if mask is None or filter_key not in mask:
            available = sorted(mask.keys()) if mask is not None else []
            raise ValueError(
                f"filter_key {filter_key!r} not in {path}: mask/ holds {available}"
            )
        wanted = {n.decode() if isinstance(n, bytes) else str(n) for n in mask[filter_key][()]}
        names = [n for n in names if n in wanted]
    if not names:
        raise ValueError(f"{path} holds no demos (expected groups data/demo_<i>)")
    return sorted(names, key=lambda n: int(n.split("_")[1]))


def load(
    path: str | os.PathLike,
    obs_keys: Sequence[str],
    *,
    filter_key: str | None = None,
    fraction: float | None = None,
    num_episodes: int | None = None,
    seed: int = 0,
) -> OfflineDataset:
    """Load robomimic demos as transitions (one episode per demo).

    Args:
        path: the ``.hdf5`` file.
        obs_keys: observation keys to concatenate, in order (e.g. ``("robot0_eef_pos",
            "robot0_eef_quat", "robot0_gripper_qpos", "object")``); image keys are not supported.
        filter_key: keep only the demos listed under ``mask/<filter_key>``.
        fraction, num_episodes, seed: keep a subset of whole demos, as in ``minari.load``.

    Returns:
        An :class:`OfflineDataset` with ``episode_ids`` the demo numbers, ``dataset_id`` the path.
    """
    import h5py

    path = os.fspath(path)
    obs_keys = tuple(obs_keys)
    if not obs_keys:
        raise ValueError("obs_keys must name at least one key under data/demo_<i>/obs/")
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"robomimic file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise ValueError(f"{path} is not a robomimic file: no top-level 'data' group")
            names = _demo_names(f["data"], f.get("mask"), filter_key, path)
            keep = select_episodes(len(names), fraction=fraction, num_episodes=num_episodes,
                                   seed=seed)
            episodes = [_read_demo(f["data"][names[i]], names[i], obs_keys) for i in keep]
            env_args = f["data"].attrs.get("env_args")
    except ObservationKeyError:
        raise
    except (OSError, KeyError) as e:
        todo = files.disk_cause(e) or "download it again (a truncated download is the usual cause)"
        raise DatasetCorruptError(
            f"robomimic file {path} is unreadable ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:300]}); to read it, {todo}"
        ) from e
    extras = {}
    if env_args is not None:
        try:  # robosuite's env description, not a gymnasium EnvSpec
            extras["env_args"] = json.loads(env_args)
        except (TypeError, ValueError):
            pass
    return concat_episodes(episodes, dataset_id=path, obs_keys=obs_keys, extras=extras)


def _read_demo(demo, name: str, obs_keys: tuple[str, ...]) -> dict:
    available = sorted(demo["obs"].keys())
    for key in obs_keys:
        if key not in demo["obs"]:
            raise ObservationKeyError(
                f"observation key {key!r} not in {name}/obs; available keys: {available}"
            )
    flat = lambda group: np.concatenate(
        [np.asarray(group[k], dtype=np.float32).reshape(group[k].shape[0], -1) for k in obs_keys],
        axis=-1,
    )
    obs = flat(demo["obs"])
    steps = obs.shape[0]
    actions = np.asarray(demo["actions"], dtype=np.float32).reshape(steps, -1)
    rewards = np.asarray(demo["rewards"]) if "rewards" in demo else np.zeros(steps)
    dones = np.asarray(demo["dones"]).astype(bool) if "dones" in demo else np.zeros(steps, bool)
    if "next_obs" in demo:
        last_next = flat(demo["next_obs"])[-1:]
    else:
        last_next = obs[-1:]
    return {
        "obs": np.concatenate([obs, last_next], axis=0),
        "actions": actions,
        "rewards": rewards,
        # Only a done at the final step ends the MDP; robomimic may flag several trailing steps.
        "terminals": np.arange(steps) == steps - 1 if dones[-1] else np.zeros(steps, bool),
        "timeouts": np.zeros(steps, bool),
        "id": int(name.split("_")[1]),
    }
