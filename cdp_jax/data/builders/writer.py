"""Write episodes with Minari's own writer, atomically.

``minari.create_dataset_from_buffers`` writes straight into ``$MINARI_DATASETS_PATH/<id>``; an
interrupted build would leave a half-written dataset that later loads as garbage. So we point
``MINARI_DATASETS_PATH`` at a hidden scratch directory inside the datasets root (same filesystem, so
the final ``os.replace`` is atomic; hidden, so Minari's listings skip it), build there, and move the
finished directory into place. The scratch directory is removed whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

SCRATCH_PREFIX = ".cdp-build-"


@contextlib.contextmanager
def _datasets_root(path: Path) -> Iterator[None]:
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def episode_buffer(
    episode_id: int,
    observations,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminations: np.ndarray,
    truncations: np.ndarray,
    seed: int | None = None,
):
    """A ``minari.data_collector.EpisodeBuffer`` from whole-episode arrays.

    ``observations`` is ``(T + 1, ...)`` (or a dict of such arrays), the rest ``(T, ...)`` /
    ``(T,)``.
    """
    from minari.data_collector import EpisodeBuffer

    return EpisodeBuffer(
        id=episode_id,
        seed=seed,
        observations=observations,
        actions=np.asarray(actions),
        rewards=list(np.asarray(rewards, dtype=np.float64)),
        terminations=list(np.asarray(terminations, dtype=bool)),
        truncations=list(np.asarray(truncations, dtype=bool)),
    )


def check_target(dataset_id: str, overwrite: bool) -> Path:
    """Validate ``dataset_id`` and that it may be written; return its final path.

    Builders call this before collecting, so a clash fails in a second, not after the whole build.
    """
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.storage import get_dataset_path

    try:
        parse_dataset_id(dataset_id)
    except (ValueError, TypeError) as e:  # Minari raises TypeError when the version is missing
        raise ValueError(
            f"dataset_id {dataset_id!r} is malformed: Minari ids look like "
            "'namespace/name-v<version>', e.g. 'cdp/pointmaze/umaze-v0'"
        ) from e
    final = Path(get_dataset_path()) / dataset_id
    if final.exists() and not overwrite:
        raise FileExistsError(
            f"dataset {dataset_id!r} already exists at {final}; pass overwrite=True "
            "(CLI: --overwrite)"
        )
    return final


def write_dataset(
    dataset_id: str,
    episodes: Sequence,
    *,
    env,
    eval_env=None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    overwrite: bool = False,
    algorithm_name: str | None = None,
    description: str | None = None,
    author: str = "cdp_jax",
    code_permalink: str = "cdp_jax/data/builders",
) -> Path:
    """Write ``episodes`` (``EpisodeBuffer`` list) as Minari dataset ``dataset_id``; return its
    path.

    Args:
        dataset_id: ``(namespace/)name-v<version>``, Minari's id syntax.
        episodes: episode buffers, ids ``0..E-1`` in order.
        env: the collection env (``gym.Env``, id or ``EnvSpec``): recorded as the dataset's env
            spec.
        eval_env: the evaluation env (id, ``EnvSpec`` or env); defaults to ``env``.
        ref_min_score, ref_max_score: reference returns (both or neither) for normalised scores.
        overwrite: replace an existing dataset with that id (the old one is removed only after the
            new one is complete).
    """
    from minari import create_dataset_from_buffers
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.storage import get_dataset_path

    if (ref_min_score is None) != (ref_max_score is None):
        raise ValueError("pass both ref_min_score and ref_max_score, or neither")
    final = check_target(dataset_id, overwrite)
    namespace, _, _ = parse_dataset_id(dataset_id)
    root = Path(get_dataset_path())
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=root))
    try:
        with _datasets_root(scratch), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="minari")
            create_dataset_from_buffers(
                dataset_id,
                list(episodes),
                env=env,
                eval_env=eval_env,
                algorithm_name=algorithm_name,
                author=author,
                author_email="n/a",
                code_permalink=code_permalink,
                ref_min_score=ref_min_score,
                ref_max_score=ref_max_score,
                description=description,
            )
        # Namespace metadata files (one per level) that the real root does not have yet.
        if namespace is not None:
            parts = namespace.split("/")
            for i in range(1, len(parts) + 1):
                level = Path(*parts[:i]) / "namespace_metadata.json"
                if not (root / level).exists() and (scratch / level).exists():
                    (root / level).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(scratch / level, root / level)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            # Move the old dataset aside first so the id always names a complete dataset.
            os.replace(final, scratch / "previous")
        os.replace(scratch / dataset_id, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def directory_size(path: Path) -> int:
    """Total bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
