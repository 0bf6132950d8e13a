"""Orbax checkpoints of the whole train state, with JSON metadata; nothing is pickled.

Layout under a checkpoint directory::

    step_000001000/state/     orbax (params, EMA, targets, optimiser states, step, PRNG key)
    step_000001000/meta.json  config, normalisation statistics, evaluation history, score, and
                              the size and SHA-256 of every file under state/
    best.json                 {"step": ..., "score": ...} of the best-scoring checkpoint
    discarded/step_*          checkpoints set aside by :meth:`CheckpointManager.discard_after`

A checkpoint is written to a hidden temporary directory and renamed into place only once both
parts are complete, so an interrupted save never leaves a half-written ``step_*`` directory and
never touches an earlier one. :func:`restore` checks every file against the recorded sizes and
hashes before orbax reads it, so a truncated or garbled file is reported by name (orbax alone
misses some and reports others through a cascade of asynchronous errors).
:class:`CheckpointManager` keeps the last ``keep`` checkpoints plus the best.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

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

    Raises :class:`CheckpointError` if a checkpoint for ``step`` already exists (never overwritten).
    """
    directory = Path(directory).absolute()
    final = step_dir(directory, step)
    if final.exists():
        raise CheckpointError(f"checkpoint {final} already exists; refusing to overwrite it.")
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp_step_{step:09d}"
    if tmp.exists():
        shutil.rmtree(tmp)  # debris of an interrupted save
    tmp.mkdir()
    state_dict = serialization.to_state_dict(jax.device_get(tree))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / "state", state_dict)
    checkpointer.wait_until_finished()
    checkpointer.close()
    _write_json(tmp / "meta.json", {"step": int(step), **meta, "files": _manifest(tmp / "state")})
    os.replace(tmp, final)
    return final


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
        if not file.is_file():
            problem = f"{file.relative_to(path)} is missing"
        elif file.stat().st_size != size:
            problem = (f"{file.relative_to(path)} has {file.stat().st_size} bytes where {size} "
                       "were written (truncated or overwritten)")
        elif _sha256(file) != digest:
            problem = f"{file.relative_to(path)} does not match its SHA-256 (garbled)"
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
    """After a failed orbax restore, drop the ``RuntimeError('Event loop is closed')`` that each
    abandoned tensorstore read raises when it completes on orbax's closed asyncio loop (they arrive
    as "unraisable" exceptions, dozens of tracebacks at interpreter exit, after the real error).
    Every other unraisable exception still reaches the previous hook."""
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
        path = self.directory / "best.json"
        return json.loads(path.read_text()) if path.exists() else None

    def latest_step(self) -> int | None:
        steps = list_steps(self.directory)
        return steps[-1] if steps else None

    def save(self, step: int, tree, meta: dict, score: float | None = None) -> Path:
        path = save(self.directory, step, tree, {**meta, "score": score})
        best = self.best
        if score is not None and np.isfinite(score) and (best is None or score > best["score"]):
            _write_json(self.directory / "best.json", {"step": int(step), "score": float(score)})
        self._prune()
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
            scored = []
            for s in list_steps(self.directory):
                try:
                    score = read_meta(self.directory, s).get("score")
                except CheckpointError:
                    continue
                if score is not None and np.isfinite(score):
                    scored.append((score, s))
            if scored:
                score, s = max(scored)
                _write_json(self.directory / "best.json", {"step": s, "score": float(score)})
            else:
                (self.directory / "best.json").unlink()
        return later

    def _prune(self):
        steps = list_steps(self.directory)
        best = self.best
        protected = set(steps[-self.keep:]) | ({best["step"]} if best else set())
        for s in steps:
            if s not in protected:
                shutil.rmtree(step_dir(self.directory, s))


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
