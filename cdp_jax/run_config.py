"""A run's configuration: :class:`TrainConfig`, the named presets, ``config.json`` and resuming.

:class:`TrainConfig` is everything about a run except the agent's hyperparameters (those live in
the agent's own config, ``cdp_jax.agents.CONFIGS``); :func:`preset` builds both from a named
preset (:data:`PRESETS`: ``quickstart``, ``full``, and the official pipeline as ``paper`` /
``paper-il``). :func:`cdp_jax.training.train` writes them to ``<run>/config.json``
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
import json
import os
from pathlib import Path

import jax

from cdp_jax import checkpoint, evaluation, paper, run_directory
from cdp_jax.agents import CONFIGS, get_agent
from cdp_jax.agents.common import (
    apply_overrides,
    check_finite_fields,
    config_from_dict,
    config_to_dict,
)
from cdp_jax.data import protocol
from cdp_jax.data.normalization import NORMALIZER_KINDS, Normalizer

# TrainConfig fields a resumed run may change (e.g. train longer, evaluate or checkpoint at another
# cadence); every other field, and the whole agent config, must equal the saved run's. The identity
# fields say which run and how to continue it, and are never compared.
RESUME_MAY_CHANGE = ("steps", "eval_every", "checkpoint_every", "keep_checkpoints", "progress",
                     "eval_vector")
RUN_IDENTITY = ("name", "run_dir", "resume", "resume_from")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything about a run except the agent's hyperparameters.

    ``resume`` continues the run in :attr:`path` from its latest checkpoint (``resume_from``: from
    that step; later checkpoints are moved to ``checkpoints/discarded/``). A resumed run must
    match its saved ``config.json`` except in :data:`RESUME_MAY_CHANGE`.
    """

    name: str = "quickstart"
    agent: str = "dql"
    dataset: str = "cdp/pointmaze/umaze-v0"
    fraction: float | None = None  # keep this fraction of the data (low-data regime)
    fraction_unit: str = "episodes"  # whole episodes, or "transitions" (rows; official RL)
    num_episodes: int | None = None
    seed: int = 0
    steps: int = 3000
    batch_size: int = 256
    updates_per_call: int = 250  # K: gradient steps per jitted call
    eval_every: int = 1000
    eval_episodes: int = 10
    eval_envs: int = 10
    eval_vector: str = "sync"
    running_average: int = 3
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    normalize_obs: bool = True
    obs_normalizer: str = "gaussian"  # data.normalization.NORMALIZER_KINDS; "minmax": official IL
    reward_normalization: str = "none"  # data.protocol.REWARD_NORMALIZATIONS, before scale/bias
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    max_episode_steps: int | None = None  # evaluation cap on top of the env's own time limit
    run_dir: str | None = None  # default runs/<name>
    resume: bool = False
    resume_from: int | None = None  # with resume: this checkpoint step instead of the latest
    progress: bool = True

    def validate(self) -> TrainConfig:
        check_finite_fields(self)
        if not self.name.strip() or self.name in (".", "..") or any(
                sep and sep in self.name for sep in (os.sep, os.altsep, "/")):
            raise ValueError(f"Invalid name={self.name!r}; must be a plain directory name under "
                             "runs/ (no path separator, not empty); use run_dir (--run-dir) for "
                             "a path.")
        if self.resume_from is not None and (self.resume_from < 0 or not self.resume):
            raise ValueError(f"Invalid resume_from={self.resume_from!r}; must be a checkpoint "
                             "step >= 0, with resume=True.")
        if self.agent not in CONFIGS:
            raise ValueError(f"Invalid agent={self.agent!r}; expected one of {sorted(CONFIGS)}.")
        for field in ("steps", "batch_size", "updates_per_call", "eval_episodes", "eval_envs",
                      "running_average", "keep_checkpoints"):
            if getattr(self, field) < 1:
                raise ValueError(f"Invalid {field}={getattr(self, field)!r}; must be >= 1.")
        for field in ("eval_every", "checkpoint_every"):
            value = getattr(self, field)
            if value < 0 or value % self.updates_per_call:
                raise ValueError(f"Invalid {field}={value}; must be >= 0 (0: only at the end) and "
                                 f"a multiple of updates_per_call={self.updates_per_call}.")
        if self.eval_vector not in evaluation.VECTOR_MODES:
            raise ValueError(f"Invalid eval_vector={self.eval_vector!r}; expected one of "
                             f"{evaluation.VECTOR_MODES}.")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"Invalid fraction={self.fraction}; must be in (0, 1].")
        if self.fraction_unit not in protocol.FRACTION_UNITS:
            raise ValueError(f"Invalid fraction_unit={self.fraction_unit!r}; expected one of "
                             f"{protocol.FRACTION_UNITS}.")
        if self.obs_normalizer not in NORMALIZER_KINDS:
            raise ValueError(f"Invalid obs_normalizer={self.obs_normalizer!r}; expected one of "
                             f"{NORMALIZER_KINDS}.")
        if self.reward_normalization not in protocol.REWARD_NORMALIZATIONS:
            raise ValueError(f"Invalid reward_normalization={self.reward_normalization!r}; "
                             f"expected one of {protocol.REWARD_NORMALIZATIONS}.")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(f"Invalid max_episode_steps={self.max_episode_steps}; must be >= 1.")
        return self

    @property
    def episode_fraction(self) -> float | None:
        """The fraction the episode loader keeps (``None`` when the fraction is by transitions)."""
        return self.fraction if self.fraction_unit == "episodes" else None

    @property
    def path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


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


def load_run_config(run_dir) -> tuple[TrainConfig, object]:
    """``(TrainConfig, agent config)`` from ``run_dir/config.json``.

    Raises:
      FileNotFoundError: ``run_dir`` holds no run (the message names the path).
      ValueError: ``config.json`` is unreadable.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        what = "does not exist" if not run_dir.exists() else "holds no run (no config.json)"
        seeds = sorted(p.name for p in run_dir.glob("seed_*") if (p / "config.json").is_file())
        hint = f"; it holds the seeds {seeds} of a --seeds run" if seeds else ""
        raise FileNotFoundError(f"run directory {run_dir.absolute()} {what}{hint}.")
    try:
        data = json.loads(path.read_text())
        config = config_from_dict(TrainConfig, data["train"])
        return config, config_from_dict(CONFIGS[config.agent], data["agent"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        copies = sorted(run_dir.glob("checkpoints/step_*/meta.json"))
        hint = (f" A copy of it is kept under \"config\" in every checkpoint's meta.json (e.g. "
                f"{copies[-1].absolute()}): restore it from there." if copies else "")
        raise ValueError(f"{path.absolute()} is unreadable ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:300]}).{hint}") from None


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


# Presets: TrainConfig and per-agent overrides. "quickstart" is the README's main command (a few
# minutes on 2 CPU cores, contraction weight 0.1); "full" is a paper-scale protocol with cdp_jax's
# defaults (250k steps, evaluation every 20k steps on 50 episodes with 100 critic-resampled
# candidates at noise 0.5); "paper" and "paper-il" are the official pipeline (cdp_jax.paper), with
# per-task values from the dataset id; "paper-fast" and "paper-il-fast" the same pipelines with the
# official penalty estimated without a Jacobian (cdp_jax.paper.PAPER_FAST_PENALTY).
PRESETS = {
    "quickstart": {
        "train": {"steps": 3000, "eval_every": 1000, "checkpoint_every": 1000},
        "dql": {"sampler_steps": 5, "ema_start": 200, "contraction_weight": 0.1},
        "dbc": {"hidden_dim": 256, "sampler_steps": 10, "action_horizon": 4, "n_action": 2,
                "contraction_weight": 0.1},
        "idql": {"sampler_steps": 5, "ema_start": 200, "num_candidates": 16,
                 "contraction_weight": 0.1},
    },
    "full": {
        "train": {"steps": 250_000, "eval_every": 20_000, "checkpoint_every": 20_000,
                  "updates_per_call": 1000, "eval_episodes": 50},
        "dql": {"num_candidates": 100, "noise_temperature": 0.5, "contraction_weight": 0.1},
        "dbc": {"contraction_weight": 0.1, "action_horizon": 1},
        "idql": {"num_candidates": 100, "noise_temperature": 0.5, "contraction_weight": 0.1},
    },
    "paper": {"train": paper.PAPER_RL_TRAIN, "dql": paper.PAPER_RL},
    "paper-il": {"train": paper.PAPER_IL_TRAIN, "dbc": paper.PAPER_IL},
    "paper-fast": {"train": paper.PAPER_RL_TRAIN, "dql": paper.PAPER_RL_FAST},
    "paper-il-fast": {"train": paper.PAPER_IL_TRAIN, "dbc": paper.PAPER_IL_FAST},
}


def preset(preset_name: str, agent: str | None = None, agent_overrides=(),
           **train_overrides) -> tuple[TrainConfig, object]:
    """``(TrainConfig, agent config)`` of a named preset (see :data:`PRESETS`), validated.

    ``agent`` defaults to the preset's first agent (``dql``; ``dbc`` for ``paper-il[-fast]``).
    ``agent_overrides`` are ``"field=value"`` assignments (as ``--set``) applied last;
    ``train_overrides`` replace TrainConfig fields (``name`` defaults to the preset's name).

    ``"paper"`` and ``"paper-fast"`` add the per-task values of ``train_overrides["dataset"]`` (or the default
    dataset) from :func:`cdp_jax.paper.task_row`; a dataset with no row raises ``ValueError``
    listing the known ones unless ``agent_overrides`` set ``eta`` and ``candidate_temperature``.
    """
    if preset_name not in PRESETS:
        raise ValueError(f"Unknown preset {preset_name!r}; expected one of {sorted(PRESETS)}.")
    spec = PRESETS[preset_name]
    agents = [k for k in spec if k != "train"]
    agent = agent or agents[0]
    if agent not in CONFIGS:
        raise ValueError(f"Invalid agent={agent!r}; expected one of {sorted(CONFIGS)}.")
    if agent not in spec:
        raise ValueError(f"Preset {preset_name!r} is for agent(s) {agents}, not {agent!r}.")
    train_fields = {"name": preset_name, "agent": agent, **spec["train"]}
    overrides = dict(spec[agent])
    if preset_name in paper.RL_PRESETS:
        dataset = train_overrides.get("dataset", TrainConfig.dataset)
        found = paper.task_row(dataset)
        explicit = {a.split("=", 1)[0].strip() for a in agent_overrides}
        if found is None and not {"eta", "candidate_temperature"} <= explicit:
            raise ValueError(paper.unknown_dataset_message(dataset))
        if found is not None:
            task_agent, task_train = paper.rl_task_overrides(found[1])
            overrides.update(task_agent)
            train_fields.update(task_train)
    config = TrainConfig(**{**train_fields, **train_overrides})
    agent_config = CONFIGS[agent]()
    weight = overrides.pop("contraction_weight", None)
    if weight is not None:
        overrides["contraction"] = dataclasses.replace(agent_config.contraction, weight=weight)
    agent_config = dataclasses.replace(agent_config, **overrides)
    agent_config = apply_overrides(agent_config, agent_overrides)
    return config.validate(), agent_config.validate()

