"""Orbax checkpoints of the whole train state, with JSON metadata; nothing is pickled.

Layout under a checkpoint directory::

    step_000001000/state/     orbax (params, EMA, targets, optimiser states, step, PRNG key)
    step_000001000/meta.json  config, normalisation statistics, evaluation history, score, and
                              the size and SHA-256 of every file under state/
    best.json                 {"step": ..., "score": ...} of the best-scoring checkpoint
    discarded/step_*          checkpoints set aside by :meth:`CheckpointManager.discard_after`

A checkpoint is written to a hidden temporary directory and renamed into place only once both
parts are complete, so an interrupted save never leaves a half-written ``step_*`` directory and
never touches an earlier one; a save the file system refuses (disk full, read-only, no
permission) removes its temporary directory and raises :class:`cdp_jax.files.WriteError`, one
message in place of orbax's threads' tracebacks. :func:`restore` checks every file against the
recorded sizes and hashes before orbax reads it, so a truncated or garbled file is reported by
name (orbax alone misses some and reports others through a cascade of asynchronous errors).
:class:`CheckpointManager` keeps the last ``keep`` checkpoints plus the best; a damaged
``best.json`` is rebuilt from the scores recorded in the checkpoints' ``meta.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from cdp_jax import files

_STEP_DIR = re.compile(r"^step_(\d{9})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unreadable."""


def step_dir(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"step_{step:09d}"


def list_steps(directory: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints under ``directory``, ascending."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _STEP_DIR.match(p.name)))


def save(directory: str | os.PathLike, step: int, tree, meta: dict) -> Path:
    """Write ``tree`` (any pytree of arrays, e.g. ``{"state": state, "rng": key}``) and ``meta``.

    Raises :class:`CheckpointError` if a checkpoint for ``step`` already exists (never
    overwritten), :class:`cdp_jax.files.WriteError` if the file system refuses the write (nothing
    of the new checkpoint is left; the earlier ones are untouched).
    """
    directory = Path(directory).absolute()
    final = step_dir(directory, step)
    if final.exists():
        raise CheckpointError(f"checkpoint {final} already exists; refusing to overwrite it.")
    tmp = directory / f".tmp_step_{step:09d}"
    state_dict = serialization.to_state_dict(jax.device_get(tree))
    _silence_abandoned_reads()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # debris of an interrupted save
        tmp.mkdir()
        with _orbax_logs_held():
            checkpointer = ocp.StandardCheckpointer()
            try:
                checkpointer.save(tmp / "state", state_dict)
                checkpointer.wait_until_finished()
            finally:
                checkpointer.close()
        (tmp / "meta.json").write_text(json.dumps(
            {"step": int(step), **meta, "files": _manifest(tmp / "state")}, indent=2,
            sort_keys=True))
        os.replace(tmp, final)
    except BaseException as err:  # an interrupt too: never a half-written checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, Exception) or not files.is_disk_error(err):
            raise
        earlier = list_steps(directory)
        kept = (f"No partial checkpoint was left; the earlier checkpoints {earlier} are "
                "unchanged." if earlier else "No partial checkpoint was left.")
        raise files.write_error(final, err, kept) from None
    return final


@contextlib.contextmanager
def _orbax_logs_held():
    """Hold orbax's log records (the ``absl`` logger) for the body: re-emitted if it succeeds,
    dropped if it raises. A failed save makes each of orbax's threads log the error with its
    traceback, pages of them; the exception raised says it once."""
    logger = logging.getLogger("absl")
    held = []

    def hold(record):
        held.append(record)
        return False

    logger.addFilter(hold)
    try:
        yield
    finally:
        logger.removeFilter(hold)
    for record in held:
        logger.handle(record)


def read_meta(directory: str | os.PathLike, step: int) -> dict:
    """``meta.json`` of the checkpoint at ``step``; :class:`CheckpointError` if it is missing or
    unreadable (the message names the file and the other checkpoints)."""
    path = step_dir(directory, step).absolute() / "meta.json"
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path.parent} is damaged: cannot read {path.name} "
                              f"({type(err).__name__}: {err}).{_others(directory, step)}") from None
    return meta


def verify(directory: str | os.PathLike, step: int, meta: dict | None = None) -> None:
    """Check the files of the checkpoint at ``step`` against the sizes and SHA-256 hashes recorded
    when it was written; :class:`CheckpointError` names the first file that differs. Checkpoints
    written before hashes were recorded pass unchecked."""
    path = step_dir(directory, step).absolute()
    meta = read_meta(directory, step) if meta is None else meta
    for name, (size, digest) in sorted(meta.get("files", {}).items()):
        file = path / "state" / name
        problem = None
        try:
            if not file.is_file():
                problem = f"{file.relative_to(path)} is missing"
            elif file.stat().st_size != size:
                problem = (f"{file.relative_to(path)} has {file.stat().st_size} bytes where "
                           f"{size} were written (truncated or overwritten)")
            elif _sha256(file) != digest:
                problem = f"{file.relative_to(path)} does not match its SHA-256 (garbled)"
        except OSError as err:
            cause, remedy = files.CAUSES.get(err.errno, (err.strerror or str(err), "check it"))
            raise CheckpointError(f"checkpoint {path}: cannot read {file.relative_to(path)}: "
                                  f"{cause}; {remedy}.{_others(directory, step)}") from None
        if problem:
            raise CheckpointError(f"checkpoint {path} is damaged: {problem}."
                                  f"{_others(directory, step)}")


def restore(directory: str | os.PathLike, target, step: int | None = None):
    """Restore the checkpoint at ``step`` (default: the latest) into the structure of ``target``.

    Args:
      directory: the checkpoint directory (holding ``step_*``).
      target: a pytree with the structure, shapes and dtypes of the saved one (e.g. a freshly
        initialised state); its values are not used.
      step: which checkpoint; ``None`` for the latest.

    Returns:
      ``(tree, meta)``.

    Raises:
      CheckpointError: no checkpoint, or the requested one is incomplete / corrupted (the message
        names the path and lists the other available steps).
    """
    steps = list_steps(directory)
    if not steps:
        raise CheckpointError(f"no checkpoint found under {Path(directory).absolute()}.")
    step = steps[-1] if step is None else step
    path = step_dir(directory, step).absolute()
    if step not in steps:
        raise CheckpointError(f"no checkpoint for step {step} under {directory}; have {steps}.")
    meta = read_meta(directory, step)
    verify(directory, step, meta)
    try:
        template = serialization.to_state_dict(target)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                                template)
        checkpointer = ocp.StandardCheckpointer()
        restored = checkpointer.restore(path / "state", abstract)
        checkpointer.close()
        tree = serialization.from_state_dict(target, restored)
        _check_same_structure(target, tree, path)
    except CheckpointError:
        raise
    except Exception as err:  # orbax raises many types; report one clear error
        _silence_abandoned_reads()
        raise CheckpointError(
            f"checkpoint {path} is corrupted or incompatible with this configuration "
            f"({type(err).__name__}: {str(err)[:300]}).{_others(directory, step)}") from None
    return tree, meta


def _others(directory, step: int) -> str:
    others = [s for s in list_steps(directory) if s != step]
    return f" Other checkpoints: {others}." if others else " No other checkpoint."


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _manifest(directory: Path) -> dict:
    """``{relative path: [size, sha256]}`` of every file under ``directory``."""
    return {str(p.relative_to(directory)): [p.stat().st_size, _sha256(p)]
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _silence_abandoned_reads() -> None:
    """From a save, or after a failed orbax restore, on: drop the ``RuntimeError('Event loop is
    closed')`` that each tensorstore operation abandoned by a failed save or restore raises when it
    completes on orbax's closed asyncio loop (they arrive as "unraisable" exceptions, dozens of
    tracebacks, after the real error). Every other unraisable exception still reaches the previous
    hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop", False):
        return

    def hook(unraisable):
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            previous(unraisable)

    hook._drops_closed_loop = True
    sys.unraisablehook = hook


def _check_same_structure(target, tree, path):
    ts, rs = jax.tree.structure(target), jax.tree.structure(tree)
    if ts != rs:
        raise CheckpointError(f"checkpoint {path} has a different structure than expected.")
    for a, b in zip(jax.tree.leaves(target), jax.tree.leaves(tree), strict=True):
        if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype:
            raise CheckpointError(f"checkpoint {path}: leaf {np.shape(b)} {np.asarray(b).dtype} "
                                  f"where {np.shape(a)} {np.asarray(a).dtype} was expected.")


class CheckpointManager:
    """Keep the last ``keep`` checkpoints plus the best-scoring one (higher score is better)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}.")
        self.directory = Path(directory).absolute()
        self.keep = keep

    @property
    def best(self) -> dict | None:
        """``{"step": ..., "score": ...}`` of the best-scoring checkpoint, from ``best.json``
        (``None``: no checkpoint was scored); if that file is damaged, the best of the scores the
        checkpoints' ``meta.json`` record (the next save rewrites it)."""
        path = self.directory / "best.json"
        if not path.exists():
            return None
        try:
            best = json.loads(path.read_text())
            return {"step": int(best["step"]), "score": float(best["score"])}
        except (OSError, ValueError, KeyError, TypeError):
            return self._best_of_scores()

    def _best_of_scores(self) -> dict | None:
        scored = []
        for s in list_steps(self.directory):
            try:
                score = read_meta(self.directory, s).get("score")
            except CheckpointError:
                continue
            if score is not None and np.isfinite(score):
                scored.append((score, s))
        if not scored:
            return None
        score, s = max(scored)
        return {"step": s, "score": float(score)}

    def latest_step(self) -> int | None:
        steps = list_steps(self.directory)
        return steps[-1] if steps else None

    def save(self, step: int, tree, meta: dict, score: float | None = None) -> Path:
        path = save(self.directory, step, tree, {**meta, "score": score})
        best = self.best
        if score is not None and np.isfinite(score) and (best is None or score > best["score"]):
            best = {"step": int(step), "score": float(score)}
        if best is not None:
            files.write_json(self.directory / "best.json", best, sort_keys=True)
        self._prune(best)
        return path

    def restore(self, target, step: int | None = None):
        return restore(self.directory, target, step)

    def discard_after(self, step: int) -> list[int]:
        """Move the checkpoints after ``step`` to ``discarded/`` (kept, never deleted) so that a
        run resumed from ``step`` can write its own; ``best.json`` is recomputed from the
        remaining checkpoints' scores. Returns the steps moved."""
        later = [s for s in list_steps(self.directory) if s > step]
        for s in later:
            target = self.directory / "discarded" / step_dir(self.directory, s).name
            n = 0
            while target.exists():
                n += 1
                target = target.with_name(f"{step_dir(self.directory, s).name}.{n}")
            target.parent.mkdir(exist_ok=True)
            os.replace(step_dir(self.directory, s), target)
        best = self.best
        if later and best is not None and best["step"] > step:
            best = self._best_of_scores()
            if best is not None:
                files.write_json(self.directory / "best.json", best, sort_keys=True)
            else:
                (self.directory / "best.json").unlink()
        return later

    def _prune(self, best: dict | None):
        steps = list_steps(self.directory)
        protected = set(steps[-self.keep:]) | ({best["step"]} if best else set())
        for s in steps:
            if s not in protected:
                shutil.rmtree(step_dir(self.directory, s))
