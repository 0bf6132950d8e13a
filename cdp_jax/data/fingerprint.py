"""What identifies the content of a dataset as a run loads it: a SHA-256 over its arrays.

A run records :func:`record` of the data it trains on (``config.json``, key ``"dataset"``) so
that a resume can tell a dataset rebuilt under the same id with other content
(:func:`cdp_jax.run_directory.check_dataset`). The hash covers the arrays a run trains on, in
order, with their dtypes and shapes: ``observations``, ``actions``, ``rewards``, ``terminals``,
``timeouts``, ``episode_ids``, and ``next_observations`` where an episode ends (inside an episode
it is the next row's observation, :class:`cdp_jax.data.dataset.OfflineDataset`), plus the order
in which dict observations were flattened. So it works for any dataset, whoever built it, and
costs one pass over about 30 bytes per transition and observation dimension (a 2M-transition
Hopper dataset: some 200 MB).

``files`` (size and modification time of each file of a Minari dataset's ``data/``) lets a reader
that has not loaded the arrays (``experiments/evaluate.py``) skip the load when nothing on disk
changed: :func:`files_unchanged`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cdp_jax.data.dataset import OfflineDataset

HASHED = ("observations", "actions", "rewards", "terminals", "timeouts", "episode_ids")


def sha256(data: OfflineDataset) -> str:
    """The hex SHA-256 of ``data``'s content (see the module doc)."""
    digest = hashlib.sha256()
    digest.update(repr(tuple(data.obs_keys)).encode())
    ends = np.flatnonzero(np.diff(data.episode_ids, append=data.episode_ids[-1:] + 1))
    arrays = [getattr(data, name) for name in HASHED] + [data.next_observations[ends]]
    for name, array in zip(HASHED + ("next_observations at episode ends",), arrays, strict=True):
        array = np.ascontiguousarray(array)
        digest.update(f"{name} {array.dtype.str} {array.shape}".encode())
        digest.update(memoryview(array).cast("B"))  # hashlib releases the GIL for large blocks
    return digest.hexdigest()


def dataset_files(dataset_id: str) -> dict | None:
    """``{name: [size, mtime_ns]}`` of the files under a local Minari dataset's ``data/``, or
    ``None`` when there is no such directory."""
    from cdp_jax.data import minari  # noqa: PLC0415 (minari's storage module, on demand)

    directory = Path(minari.dataset_path(dataset_id)) / "data"
    if not directory.is_dir():
        return None
    stats = {}
    for path in sorted(directory.iterdir()):
        if path.is_file():
            stat = path.stat()
            stats[path.name] = [stat.st_size, stat.st_mtime_ns]
    return stats


def record(data: OfflineDataset, files: dict | None = None) -> dict:
    """What a run records of the data it trains on: the id, the episodes and transitions
    loaded (after a ``fraction`` / ``num_episodes`` selection), :func:`sha256`, and ``files``
    (default :func:`dataset_files` of the id)."""
    files = dataset_files(data.dataset_id) if files is None else files
    return {"id": data.dataset_id, "episodes": int(data.num_episodes),
            "transitions": len(data), "sha256": sha256(data), "files": files}


def files_unchanged(recorded: dict) -> bool:
    """Whether the files of the recorded dataset are on disk as they were when it was recorded
    (same names, sizes and modification times): then its content is the recorded one."""
    files = recorded.get("files")
    return bool(files) and dataset_files(recorded["id"]) == files


def changed(recorded: dict, load) -> dict | None:
    """The :func:`record` of the dataset now if its content differs from ``recorded``, else
    ``None``. ``load()`` loads it as the run did (the same fraction and seed); it is called only
    when the files on disk are not the recorded ones (:func:`files_unchanged`)."""
    if files_unchanged(recorded):
        return None
    now = record(load())
    return None if now["sha256"] == recorded.get("sha256") else now
