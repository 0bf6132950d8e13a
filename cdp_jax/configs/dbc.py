"""Diffusion behaviour cloning hyperparameters, without JAX (the algorithm: :mod:`cdp_jax.agents.dbc`)."""

from __future__ import annotations

import dataclasses

from cdp_jax.configs import names
from cdp_jax.configs.contraction import ContractionConfig
from cdp_jax.configs.fields import check_choice, check_optimiser_fields, check_positive


@dataclasses.dataclass(frozen=True)
class DBCConfig:
    """Hyperparameters.

    Defaults: a 512-wide residual MLP, x0-prediction, T = 50 and 50 DPM-Solver++(2M) steps with x0
    clipped to [-1, 1], EMA every step, with cdp_jax's schedule, grid and time embedding. The
    official IL pipeline (the Pearce backbone, CleanDiffuser's schedule and grid, no clipping while
    sampling, AdamW weight decay 0.01, the exact penalty on every noise level of the BC draw) is
    ``experiments/train.py --preset paper-il``; docs/PARITY.md lists each field.
    """

    obs_horizon: int = 2
    action_horizon: int = 1
    n_action: int = 1  # actions executed per sampled chunk (receding horizon)
    actor_network: str = "lnresnet"
    hidden_dim: int = 512
    depth: int = 3
    # LN-ResNet block widening: 1 = a residual MLP of width 512, the official IL backbone's size
    # (IDQL's 4 makes a lift step ~4x the FLOPs: 19.8 vs ~5 GFLOP at batch 512).
    expansion: int = 1
    time_dim: int = 128
    activation: str = "gelu"
    time_embedding: str = "sinusoidal"  # networks.TIME_EMBEDDINGS; official: positional_integer_t
    param_init: str = "flax"  # names.INITS; official: "torch"
    schedule: str = "cosine"
    schedule_discretization: str = "ddpm"  # official: "cleandiffuser"
    diffusion_steps: int = 50
    prediction: str = "x0"
    sampler: str = "dpm_solver_pp_2m"
    sampler_steps: int = 50
    sampler_spacing: str = "uniform"  # official: "cleandiffuser"
    sampler_clip_x0: bool = True  # clip x0_hat at every sampler step (official IL: False)
    noise_temperature: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 1e-6
    lr_decay_steps: int | None = None
    max_grad_norm: float | None = None
    ema_decay: float = 0.995
    ema_start: int = 0
    contraction: ContractionConfig = ContractionConfig()

    def validate(self) -> DBCConfig:
        check_choice("actor_network", self.actor_network, (*names.ACTORS, *names.CHUNK_ACTORS))
        check_optimiser_fields(self)
        check_choice("activation", self.activation, names.ACTIVATIONS)
        check_choice("time_embedding", self.time_embedding, names.TIME_EMBEDDINGS)
        check_choice("param_init", self.param_init, names.INITS)
        check_choice("schedule", self.schedule, names.SCHEDULES)
        check_choice("schedule_discretization", self.schedule_discretization,
                     names.DISCRETIZATIONS)
        check_choice("sampler_spacing", self.sampler_spacing, names.SPACINGS)
        check_choice("prediction", self.prediction, names.PREDICTIONS)
        check_choice("sampler", self.sampler, names.SAMPLERS)
        check_choice("contraction.target", self.contraction.target, names.TARGETS)
        for name in ("obs_horizon", "action_horizon", "n_action", "hidden_dim", "depth", "expansion",
                     "time_dim", "diffusion_steps", "sampler_steps", "lr"):
            check_positive(name, getattr(self, name))
        for name in ("weight_decay", "ema_decay", "ema_start", "noise_temperature"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if self.n_action > self.action_horizon:
            raise ValueError(f"n_action={self.n_action} exceeds action_horizon="
                             f"{self.action_horizon}: cannot execute more actions than predicted.")
        if self.sampler_steps > self.diffusion_steps:
            raise ValueError(f"sampler_steps={self.sampler_steps} exceeds diffusion_steps="
                             f"{self.diffusion_steps}.")
        if self.contraction.weight < 0:
            raise ValueError(f"contraction.weight must be >= 0, got {self.contraction.weight}.")
        return self


def default_config(**overrides) -> DBCConfig:
    """The default IL setting with ``overrides`` applied and validated."""
    return dataclasses.replace(DBCConfig(), **overrides).validate()
