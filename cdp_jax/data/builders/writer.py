"""Write episodes with Minari's own writer, atomically.

``minari.create_dataset_from_buffers`` writes straight into ``$MINARI_DATASETS_PATH/<id>``; an
interrupted build would leave a half-written dataset that later loads as garbage. So we point
``MINARI_DATASETS_PATH`` at a hidden scratch directory inside the datasets root (same filesystem, so
the final ``os.replace`` is atomic; hidden, so Minari's listings skip it), build there, and move the
finished directory into place. The scratch directory is removed whatever happens to the build,
short of the process itself being killed (SIGKILL, out of memory, power loss). A running build holds
an exclusive lock on ``build.lock`` in its scratch directory, which the system releases when the
process dies, so the next build (:func:`check_target`) can tell a killed build's scratch directory
from a running one's: it removes the killed ones and says so (:func:`remove_stale_scratch`).

A build that will not fit (estimated from the arrays before anything is written: h5py crashes the
interpreter when a write fails for want of space) or that the file system refuses raises
:class:`cdp_jax.files.WriteError`; nothing is left under the datasets root, and a dataset being
replaced stays as it was.

An interrupt (Ctrl-C, SIGTERM: :mod:`cdp_jax.interrupts`) is reported in the same terms: a builder
runs its work inside :func:`reported_interrupts`, which raises a
:class:`cdp_jax.interrupts.Interrupted` saying that nothing was written (and which partial files
were removed), or, if it came once the dataset was in place, that the dataset is complete; the
moves that put a dataset in place are never cut in two.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from cdp_jax import files, interrupts

try:
    import fcntl
except ImportError:  # no flock (Windows): only scratch directories without a lock file are removed
    fcntl = None

SCRATCH_PREFIX = ".cdp-build-"
LOCK_NAME = "build.lock"
# A scratch directory without a lock file (a build killed between creating the directory and its
# lock, or one from before the lock existed) counts as stale once it is this old: a running build
# writes its lock file a moment after creating the directory.
UNLOCKED_STALE_AFTER_S = 600.0


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


@contextlib.contextmanager
def _scratch_directory(root: Path, dataset_id: str) -> Iterator[Path]:
    """A fresh hidden scratch directory under ``root``, locked while the build runs and removed
    after it, whatever happens (a killed process leaves it for :func:`remove_stale_scratch`)."""
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=root))
    try:
        with open(scratch / LOCK_NAME, "w") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: never contended
            json.dump({"dataset_id": dataset_id, "pid": os.getpid()}, lock)
            lock.flush()
            try:
                yield scratch
            finally:  # removed while still locked: no other build takes it for a killed one's
                shutil.rmtree(scratch, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _builder_gone(scratch: Path) -> bool:
    """Whether no running process owns ``scratch``: its lock can be taken (the owner died and the
    system released it), or, without a lock to test, the directory is old."""
    lock_path = scratch / LOCK_NAME
    if not lock_path.is_file():
        return time.time() - scratch.stat().st_mtime > UNLOCKED_STALE_AFTER_S
    if fcntl is None:  # no way to tell a running build from a killed one: leave it
        return False
    with open(lock_path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a build is running (in this or another process)
            return False
        fcntl.flock(lock, fcntl.LOCK_UN)
    return True


def remove_stale_scratch(root: Path) -> list[str]:
    """Remove the scratch directories that killed builds left under the datasets root ``root``;
    return one line per directory saying what was removed (or restored).

    Only directories whose build is not running are touched (see :func:`_builder_gone`). A build
    killed while replacing a dataset (``--overwrite``), between moving the old dataset aside and
    moving the new one in, leaves the old one in ``previous``: it is moved back when its id is free.
    """
    lines = []
    for scratch in sorted(Path(root).glob(SCRATCH_PREFIX + "*")):
        try:
            if not scratch.is_dir() or not _builder_gone(scratch):
                continue
            owner = _read_owner(scratch)
            dataset_id = owner.get("dataset_id") if isinstance(owner.get("dataset_id"), str) else None
            restored = ""
            previous = scratch / "previous"
            final = Path(root) / dataset_id if dataset_id else None
            if final is not None and previous.is_dir() and not final.exists():
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(previous, final)
                restored = f"; restored the previous {dataset_id!r} it held"
            size = directory_size(scratch) / 2**20
            shutil.rmtree(scratch)
        except OSError as e:  # vanished meanwhile (another build cleaned it), or unremovable
            if scratch.exists():
                lines.append(f"could not remove {scratch}, left by an interrupted dataset build "
                             f"({type(e).__name__}: {e}); delete it by hand")
            continue
        what = f"building {dataset_id!r}" if dataset_id else "unknown dataset"
        lines.append(f"removed {scratch} ({size:.1f} MiB), left by an interrupted dataset build "
                     f"({what}, process {owner.get('pid', '?')}){restored}")
    return lines


def _read_owner(scratch: Path) -> dict:
    try:
        owner = json.loads((scratch / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


@contextlib.contextmanager
def reported_interrupts(dataset_id: str) -> Iterator[None]:
    """Run a build of ``dataset_id`` (call :func:`check_target` first): an interrupt in the body
    becomes an :class:`cdp_jax.interrupts.Interrupted` whose line says what is on disk (nothing
    new, unless the dataset was already moved into place) and to run the build again."""
    from minari.storage import get_dataset_path

    final = Path(get_dataset_path()) / dataset_id
    before = _identity(final)
    try:
        yield
    except KeyboardInterrupt as err:
        if isinstance(err, interrupts.Interrupted) and err.message:
            raise
        signum = interrupts.signal_of(err)
        if _identity(final) not in (None, before):
            raise interrupts.Interrupted(
                f"interrupted once {dataset_id!r} was written whole ({final}); what the build "
                "still had to do afterwards was not done", signum=signum) from None
        raise interrupts.Interrupted(
            f"interrupted while building {dataset_id!r}: nothing was written "
            f"({'the existing dataset is unchanged' if before else 'no dataset at ' + str(final)})",
            signum=signum, then=interrupts.Then("run it again with")) from None


def _identity(path: Path) -> tuple | None:
    """What tells a directory replaced by another apart (inode and change time), or ``None``."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_ctime_ns


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
    It first removes what killed builds left under the datasets root (:func:`remove_stale_scratch`),
    printing a ``note:`` line for each to stderr.
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
    try:
        root = Path(get_dataset_path())  # creates the datasets root if missing
    except OSError as e:
        raise files.write_error(e.filename or "the Minari datasets root", e,
                                "Nothing was written.") from None
    for line in remove_stale_scratch(root):
        print(f"note: {line}", file=sys.stderr, flush=True)
    final = root / dataset_id
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
    kept = ("Nothing was written; the existing dataset is unchanged." if final.exists()
            else "Nothing was written.")
    episodes = list(episodes)
    _check_free_space(root, final, episodes, kept)
    partial = None
    try:
        with _scratch_directory(root, dataset_id) as scratch:
            partial = scratch
            with _datasets_root(scratch), warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning, module="minari")
                create_dataset_from_buffers(
                    dataset_id,
                    episodes,
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
                        files.write_text(root / level, (scratch / level).read_text())
            final.parent.mkdir(parents=True, exist_ok=True)
            with interrupts.deferred():  # both moves or neither
                if final.exists():
                    # Move the old dataset aside first so the id always names a complete dataset.
                    os.replace(final, scratch / "previous")
                    try:
                        os.replace(scratch / dataset_id, final)
                    except BaseException:
                        os.replace(scratch / "previous", final)  # back, before scratch goes
                        raise
                else:
                    os.replace(scratch / dataset_id, final)
                partial = None
    except KeyboardInterrupt as err:
        if partial is None or (isinstance(err, interrupts.Interrupted) and err.message):
            raise  # in place (or not begun): reported_interrupts says so
        raise interrupts.Interrupted(
            f"interrupted while writing {dataset_id!r}: nothing was written (its partial files "
            f"were removed with {partial}; "
            f"{'the existing dataset is unchanged' if final.exists() else 'no dataset at ' + str(final)})",
            signum=interrupts.signal_of(err), then=interrupts.Then("run it again with")) from None
    except files.WriteError as e:
        raise files.write_error(final, e, kept) from None
    except Exception as e:
        if not files.is_disk_error(e):
            raise
        raise files.write_error(final, e, kept) from None
    return final


def _nbytes(value) -> int:
    if value is None:
        return 0
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
        return sum(_nbytes(v) for v in value)
    return np.asarray(value).nbytes


def _check_free_space(root: Path, final: Path, episodes: Sequence, kept: str) -> None:
    """Refuse a build that cannot fit under ``root``. Checked before writing because h5py kills
    the interpreter (segmentation fault) when it closes a file whose write failed for want of
    space: the error would never reach Python."""
    needed = sum(_nbytes(getattr(ep, name)) for ep in episodes
                 for name in ("observations", "actions", "rewards", "terminations", "truncations",
                              "infos"))
    # HDF5's layout: about 15-30 KiB of headers per episode (measured), plus the metadata.
    needed = int(needed * 1.1) + 48 * 2**10 * len(episodes) + 2**20
    free = shutil.disk_usage(root).free
    if needed > free:
        raise files.WriteError(
            final, f"not enough free space (the dataset needs about {needed / 2**20:.1f} MiB; "
            f"{root} has {free / 2**20:.1f} MiB free)", kept,
            "free space there, or set MINARI_DATASETS_PATH to a directory on a larger disk")


def directory_size(path: Path) -> int:
    """Total bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
