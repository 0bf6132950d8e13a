"""The checks around a training run: resuming (which checkpoint, which schedule note), finite
losses and parameters before anything is evaluated or saved, and what a failed write or a
divergence says (used by :mod:`cdp_jax.training` and :mod:`cdp_jax.multi_seed`; re-exported by
:mod:`cdp_jax.training`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cdp_jax import checkpoint, files, parallel
from cdp_jax.run_config import TrainConfig


class TrainingDivergedError(FloatingPointError):
    """A loss, metric or parameter became NaN / inf; the message names the step and the last
    checkpoint."""


# ----------------------------------------------------------------------------- device part


def resume_step(config: TrainConfig, ckpt: checkpoint.CheckpointManager) -> int | None:
    """The checkpoint step a run continues from: ``resume_from`` or the latest (``None``: a new
    run, or a resumed one that wrote no checkpoint yet). Refuses ``steps`` below it."""
    if not config.resume:
        return None
    start = config.resume_from if config.resume_from is not None else ckpt.latest_step()
    if start is not None and start > config.steps:
        raise ValueError(f"Invalid steps={config.steps}: the run resumes from its checkpoint at "
                         f"step {start}; pass --steps >= {start}.")
    return start


def lr_schedule_note(config: TrainConfig, agent_config) -> str | None:
    """A warning when a resumed run trains past the end of its learning-rate decay."""
    span = agent_config.lr_decay_steps
    if config.resume and span and config.steps > span:
        return (f"note: the cosine learning-rate decay of this run ends at step {span} (the run "
                f"as started); the steps after it train with a learning rate of 0.")
    return None


def check_fresh_or_resume(config: TrainConfig, ckpt: checkpoint.CheckpointManager) -> None:
    if ckpt.latest_step() is not None and not config.resume:
        raise FileExistsError(f"{config.path} already holds checkpoints; pass --resume to "
                              "continue that run or choose another --name / --run-dir.")


def restore_for_resume(ckpt: checkpoint.CheckpointManager, target, step: int):
    """:meth:`CheckpointManager.restore`, with how to go on from an earlier checkpoint."""
    try:
        return ckpt.restore(target, step)
    except checkpoint.CheckpointError as err:
        earlier = [s for s in checkpoint.list_steps(ckpt.directory) if s < step]
        if not earlier:
            raise
        raise checkpoint.CheckpointError(
            f"{err} To continue from an earlier one: --resume --resume-from {earlier[-1]} (the "
            f"later checkpoints are moved to {ckpt.directory}/discarded/).") from None


def process_dir(run_dir: Path) -> Path:
    """Where this process logs: ``run_dir`` on process 0, ``run_dir/process_<i>`` on the other
    hosts of a multi-host run (they compute the same numbers; no two write one file)."""
    index = jax.process_index()
    return run_dir if index == 0 else run_dir / f"process_{index}"


def _check_finite(metrics: dict, step: int, ckpt: checkpoint.CheckpointManager) -> None:
    for name, values in sorted(metrics.items()):
        bad = ~np.isfinite(np.asarray(values))
        if bad.any():
            at = step + int(np.argmax(bad)) + 1
            raise TrainingDivergedError(
                f"non-finite {name} at gradient step {at}; training stopped. "
                f"{_last_checkpoint(ckpt)}")


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def check_state_finite(state, step: int, ckpt: checkpoint.CheckpointManager) -> None:
    """Raise :class:`TrainingDivergedError` naming the leaves (parameters, EMA, targets,
    optimiser state) of ``state`` that hold NaN / inf after gradient step ``step``."""
    if bool(_all_finite(state)):
        return
    flat, _ = jax.tree_util.tree_flatten_with_path(parallel.to_host(state))
    bad = [jax.tree_util.keystr(path) for path, x in flat
           if np.issubdtype(np.asarray(x).dtype, np.inexact) and not np.isfinite(x).all()]
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    raise TrainingDivergedError(
        f"non-finite values in {shown} after gradient step {step}; training stopped, no "
        f"checkpoint written for it. {_last_checkpoint(ckpt)}")


@contextlib.contextmanager
def explain_write_errors(ckpt: checkpoint.CheckpointManager, current_step):
    """A :class:`cdp_jax.files.WriteError` raised in the body (disk full, ...) says at which step
    ``current_step()`` training stopped, which checkpoint is kept, and to continue with
    ``--resume``, once the run has started (a checkpoint exists or a step was trained)."""
    try:
        yield
    except files.WriteError as err:
        if current_step() == 0 and ckpt.latest_step() is None:
            raise
        raise err.elaborate(f"Training stopped at step {current_step()}. {_last_checkpoint(ckpt)}",
                            "continue with --resume") from None


def _last_checkpoint(ckpt: checkpoint.CheckpointManager) -> str:
    """The last checkpoint, called good only if its save checked the state finite."""
    last = ckpt.latest_step()
    if last is None:
        return "No checkpoint was written."
    where = checkpoint.step_dir(ckpt.directory, last)
    try:
        checked = checkpoint.read_meta(ckpt.directory, last).get("finite") is True
    except checkpoint.CheckpointError:
        checked = False
    if checked:
        return f"Last good checkpoint (finite when saved): {where} (kept unchanged)."
    return f"Last checkpoint: {where} (kept unchanged; not checked for finite values)."
