"""A run's configuration: :class:`TrainConfig`, the named presets, ``config.json`` and resuming.

:class:`TrainConfig` is everything about a run except the agent's hyperparameters (those live in
the agent's own config, ``cdp_jax.configs.CONFIGS``); :func:`preset` builds both from a named
preset (:data:`PRESETS`: ``quickstart``, ``full``, and the official pipeline as ``paper`` /
``paper-il``). Those three live in :mod:`cdp_jax.configs.train`, without JAX, and are
re-exported here. :func:`cdp_jax.training.train` writes them to ``<run>/config.json``
(:func:`config_dict`); :func:`load_run_config` reads them back.

A resumed run keeps its saved configuration: only the fields in :data:`RESUME_MAY_CHANGE` may
differ (:func:`resume_configs` builds the configs of a resume from ``config.json`` plus
overrides; :func:`check_resume` refuses a mismatch naming every field). :func:`load_policy`
restores a trained run's state and observation normaliser for evaluation.

Example::

    from cdp_jax import run_config, training

    config, agent_config = run_config.preset("quickstart", steps=500, name="demo")
    training.train(config, agent_config)
    config, agent_config, state, norm, meta = run_config.load_policy("runs/demo")
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from cdp_jax import checkpoint, run_directory
from cdp_jax.agents import get_agent
from cdp_jax.configs.fields import (
    apply_overrides,
    check_finite_fields,
    config_to_dict,
)
from cdp_jax.configs.train import (  # noqa: F401 (re-exported: run_config.TrainConfig, ...)
    FITTED,
    PRESETS,
    RESUME_MAY_CHANGE,
    RUN_IDENTITY,
    TrainConfig,
    fit_updates_per_call,
    load_run_config,
    preset,
)
from cdp_jax.data.normalization import Normalizer


def resolve_agent_config(config: TrainConfig, agent_config, saved_agent=None):
    """Fill run-dependent defaults: the cosine learning-rate decay spans the whole run (a resumed
    run keeps the span it was started with, ``saved_agent``'s, even if ``steps`` grows)."""
    if agent_config.lr_decay_steps is None:
        span = config.steps
        if saved_agent is not None and saved_agent.lr_decay_steps is not None:
            span = saved_agent.lr_decay_steps
        agent_config = dataclasses.replace(agent_config, lr_decay_steps=span)
    check_finite_fields(agent_config)
    return agent_config.validate()


def config_dict(config: TrainConfig, agent_config) -> dict:
    return {"train": dataclasses.asdict(config), "agent": config_to_dict(agent_config)}


def resume_configs(run_dir, train_overrides: dict | None = None,
                   agent_overrides: list[str] | tuple = ()) -> tuple[TrainConfig, object]:
    """The configs that resume the run in ``run_dir``: its saved ``config.json`` with
    ``train_overrides`` (TrainConfig fields) and ``agent_overrides`` (``"field=value"``) applied.

    Only what is overridden can differ from the saved run; :func:`check_resume` (called by
    :func:`cdp_jax.training.train`) refuses overrides outside :data:`RESUME_MAY_CHANGE`, naming them.
    """
    saved, saved_agent = load_run_config(run_dir)
    overrides = {"resume_from": None, **(train_overrides or {})}
    overrides.update(run_dir=str(run_dir), resume=True)
    config = dataclasses.replace(saved, **overrides)
    if config.agent != saved.agent:
        raise ValueError(f"--resume: {run_dir} is a run of agent={saved.agent!r}, not "
                         f"{config.agent!r}; start a new run (another --name / --run-dir).")
    return config.validate(), apply_overrides(saved_agent, agent_overrides).validate()


def check_resume(config: TrainConfig, agent_config):
    """For ``config.resume``: the run in ``config.path`` must exist and have been trained with the
    same configuration up to :data:`RESUME_MAY_CHANGE`. Returns the saved agent config.

    Raises:
      FileNotFoundError: no run there.
      ValueError: the configurations differ; the message names each field with both values.
    """
    saved, saved_agent = load_run_config(config.path)
    requested = resolve_agent_config(config, agent_config, saved_agent)
    changes = run_directory.config_changes(saved, config, ignore=RESUME_MAY_CHANGE + RUN_IDENTITY)
    if saved.agent == config.agent:
        changes += run_directory.config_changes(saved_agent, requested, prefix="agent.")
    if changes:
        raise ValueError(
            f"--resume: {config.path} was trained with another configuration: "
            f"{'; '.join(changes)}. Drop these settings to continue with the saved ones, or start "
            f"a new run (another --name / --run-dir); a resume may change only "
            f"{', '.join(RESUME_MAY_CHANGE)}.")
    return saved_agent


def checkpoint_step(run_dir, step: int | str | None = None) -> int:
    """The step of ``run_dir``'s checkpoint ``step`` (a step, ``"best"``, ``None``: the latest);
    :class:`cdp_jax.checkpoint.CheckpointError` if there is no such checkpoint."""
    ckpt = checkpoint.CheckpointManager(Path(run_dir) / "checkpoints")
    steps = checkpoint.list_steps(ckpt.directory)
    if not steps:
        raise checkpoint.CheckpointError(f"no checkpoint under {ckpt.directory}.")
    if step == "best":
        if ckpt.best is None:
            raise checkpoint.CheckpointError(f"{ckpt.directory} has no best.json (no evaluated "
                                             f"checkpoint); checkpoints: {steps}.")
        step = ckpt.best["step"]
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise checkpoint.CheckpointError(f"no checkpoint for step {step} under {ckpt.directory}; "
                                         f"have {steps}.")
    return step


def load_policy(run_dir, step: int | str | None = None):
    """Restore a trained run for evaluation.

    Args:
      run_dir: the run directory (``runs/<name>``).
      step: a checkpoint step, ``"best"``, or ``None`` for the latest.

    Returns:
      ``(config, agent_config, state, normalizer, meta)``.
    """
    config, agent_config = load_run_config(run_dir)
    agent = get_agent(config.agent)
    ckpt = checkpoint.CheckpointManager(Path(run_dir) / "checkpoints")
    step = checkpoint_step(run_dir, step)
    meta = checkpoint.read_meta(ckpt.directory, step)
    dims = meta.get("dataset")
    if not isinstance(dims, dict) or not {"obs_dim", "action_dim"} <= set(dims):
        raise checkpoint.CheckpointError(
            f"checkpoint {checkpoint.step_dir(ckpt.directory, step)} is damaged: its meta.json "
            "lacks the dataset dimensions.")
    template = {"state": agent.init(jax.random.PRNGKey(0), agent_config, dims["obs_dim"],
                                    dims["action_dim"]), "rng": jax.random.PRNGKey(0)}
    tree, meta = ckpt.restore(template, step)
    return config, agent_config, tree["state"], Normalizer.from_dict(meta["normalizer"]), meta
