"""A run's configuration without JAX: :class:`TrainConfig` and the named presets.

:class:`TrainConfig` is everything about a run except the agent's hyperparameters (those live in
the agent's own config, :data:`cdp_jax.configs.CONFIGS`); :func:`preset` builds both from a named
preset (:data:`PRESETS`). Nothing here imports JAX, so a command line can build and validate
its configuration, and refuse a bad value, before JAX starts; :mod:`cdp_jax.run_config` re-exports
all of it beside ``config.json``, resuming and loading policies.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

from cdp_jax import paper
from cdp_jax.configs import CONFIGS, flow_bc, fql, names
from cdp_jax.configs.fields import apply_overrides, check_finite_fields, config_from_dict

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
    obs_normalizer: str = "gaussian"  # names.NORMALIZER_KINDS; "minmax": official IL
    reward_normalization: str = "none"  # data.names.REWARD_NORMALIZATIONS, before scale/bias
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
        if self.eval_vector not in names.VECTOR_MODES:
            raise ValueError(f"Invalid eval_vector={self.eval_vector!r}; expected one of "
                             f"{names.VECTOR_MODES}.")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"Invalid fraction={self.fraction}; must be in (0, 1].")
        if self.fraction_unit not in names.FRACTION_UNITS:
            raise ValueError(f"Invalid fraction_unit={self.fraction_unit!r}; expected one of "
                             f"{names.FRACTION_UNITS}.")
        if self.obs_normalizer not in names.NORMALIZER_KINDS:
            raise ValueError(f"Invalid obs_normalizer={self.obs_normalizer!r}; expected one of "
                             f"{names.NORMALIZER_KINDS}.")
        if self.reward_normalization not in names.REWARD_NORMALIZATIONS:
            raise ValueError(f"Invalid reward_normalization={self.reward_normalization!r}; "
                             f"expected one of {names.REWARD_NORMALIZATIONS}.")
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


# Presets: TrainConfig and per-agent overrides. "quickstart" is the README's main command (a few
# minutes on 2 CPU cores, contraction weight 0.1); "full" is a paper-scale protocol with cdp_jax's
# defaults (250k steps, evaluation every 20k steps on 50 episodes with 100 critic-resampled
# candidates at noise 0.5); "paper" and "paper-il" are the official pipeline (cdp_jax.paper), with
# per-task values from the dataset id; "paper-fast" and "paper-il-fast" the same pipelines with the
# official penalty estimated without a Jacobian (cdp_jax.paper.PAPER_FAST_PENALTY). "fql" is Flow
# Q-Learning with its published defaults and "flow-bc" flow-matching behaviour cloning; their
# "-cdp" twins add the contraction penalty on the behaviour flow (configs.fql.FLOW_RL_PENALTY,
# configs.flow_bc.FLOW_IL_PENALTY).
PRESETS = {
    "quickstart": {
        "train": {"steps": 3000, "eval_every": 1000, "checkpoint_every": 1000},
        "dql": {"sampler_steps": 5, "ema_start": 200, "contraction_weight": 0.1},
        "dbc": {"hidden_dim": 256, "sampler_steps": 10, "action_horizon": 4, "n_action": 2,
                "contraction_weight": 0.1},
        "idql": {"sampler_steps": 5, "ema_start": 200, "num_candidates": 16,
                 "contraction_weight": 0.1},
        "fql": {"contraction_weight": 0.1},
        "flow_bc": {"action_horizon": 4, "n_action": 2, "contraction_weight": 0.1},
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
    "fql": {"train": fql.FQL_TRAIN, "fql": {}},
    "fql-cdp": {"train": fql.FQL_TRAIN, "fql": {"contraction": fql.FLOW_RL_PENALTY}},
    "flow-bc": {"train": flow_bc.FLOW_BC_TRAIN, "flow_bc": {}},
    "flow-bc-cdp": {"train": flow_bc.FLOW_BC_TRAIN,
                    "flow_bc": {"contraction": flow_bc.FLOW_IL_PENALTY}},
}


def preset(preset_name: str, agent: str | None = None, agent_overrides=(),
           **train_overrides) -> tuple[TrainConfig, object]:
    """``(TrainConfig, agent config)`` of a named preset (see :data:`PRESETS`), validated.

    ``agent`` defaults to the preset's first agent (``dql``; ``dbc`` for ``paper-il[-fast]``).
    ``agent_overrides`` are ``"field=value"`` assignments (as ``--set``) applied last;
    ``train_overrides`` replace TrainConfig fields (``name`` defaults to the preset's name).

    A preset's ``updates_per_call`` (K, which sets only the speed: the updates do not depend on
    it) that does not divide ``steps``, ``eval_every`` or ``checkpoint_every`` is lowered to the
    largest K that does (:func:`fit_updates_per_call`), with a one-line note; a K passed in
    ``train_overrides`` is kept, and refused by :meth:`TrainConfig.validate` if it does not fit.

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
    fields = {**train_fields, **train_overrides}
    if "updates_per_call" not in train_overrides:  # the preset's K, fitted to the user's cadence
        fields["updates_per_call"], note = fit_updates_per_call(
            fields.get("updates_per_call", TrainConfig.updates_per_call),
            **{k: fields.get(k, getattr(TrainConfig, k)) for k in FITTED})
        if note is not None:
            print(f"note: {note}", flush=True)
    config = TrainConfig(**fields)
    agent_config = CONFIGS[agent]()
    weight = overrides.pop("contraction_weight", None)
    if weight is not None:
        overrides["contraction"] = dataclasses.replace(agent_config.contraction, weight=weight)
    agent_config = dataclasses.replace(agent_config, **overrides)
    agent_config = apply_overrides(agent_config, agent_overrides)
    return config.validate(), agent_config.validate()


# The cadences K must divide (``steps``: so that no last, shorter chunk compiles a second program).
FITTED = ("steps", "eval_every", "checkpoint_every")


def fit_updates_per_call(k: int, **cadences: int) -> tuple[int, str | None]:
    """The largest number of updates per jitted call ``<= k`` that divides every non-zero
    cadence (``steps=..., eval_every=...``), and a note saying what changed (``None`` if ``k``
    divides them all). The updates themselves do not depend on it: each step's batch and key
    come from the run's key and the step's index (:func:`cdp_jax.training.make_train_chunk`)."""
    values = [int(v) for v in cadences.values() if isinstance(v, int) and v > 0]
    common = math.gcd(*values) if values else k
    if common % k == 0:
        return k, None
    fitted = max(d for d in range(1, min(k, common) + 1) if common % d == 0)
    given = ", ".join(f"{name}={v}" for name, v in cadences.items() if v and v % k)
    return fitted, (f"updates_per_call {k} -> {fitted} (the preset's {k} does not divide "
                    f"{given}); results do not depend on it, only the speed does.")


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0-9"`` (inclusive range), ``"0,3,5"`` or a mix (``"0-2,7"``) -> distinct seeds."""
    seeds = []
    try:
        for part in str(text).split(","):
            lo, sep, hi = part.strip().partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise ValueError(f"Invalid seeds {text!r}; expected e.g. '0-9' or '0,3,5'.") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"Invalid seeds {text!r}: need distinct non-negative seeds, got {seeds}.")
    return tuple(seeds)


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
