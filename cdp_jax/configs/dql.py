"""Diffusion-QL / EDP hyperparameters, without JAX (the algorithm: :mod:`cdp_jax.agents.dql`)."""

from __future__ import annotations

import dataclasses

from cdp_jax.configs import names
from cdp_jax.configs.contraction import ContractionConfig
from cdp_jax.configs.fields import check_choice, check_optimiser_fields, check_positive

EMA_WARMUPS = ("copy", "initial")
EDP_DRAWS = ("shared", "separate")
TD_TARGET_ORDERS = ("min_then_max", "max_then_min")


@dataclasses.dataclass(frozen=True)
class DQLConfig:
    """Hyperparameters.

    The defaults are the official code's architecture and numbers (T = 50, x0-prediction,
    15 DPM-Solver++(2M) steps, EMA 0.995 every 5 steps from step 1000, ...) with cdp_jax's
    corrected choices where the official pipeline has quirks: a float time embedding, standard
    Polyak targets (tau 0.005), the EMA warmed up by copying, the EDP estimate clipped on the BC
    draw, the eigenvalue-hinge penalty. ``experiments/train.py --preset paper`` switches every
    official behaviour on (:mod:`cdp_jax.paper`); docs/PARITY.md lists each field under both.
    """

    # actor and diffusion
    actor_network: str = "mlp"  # "mlp" (Diffusion-QL) or "lnresnet" (IDQL)
    actor_hidden_dim: int = 256
    actor_depth: int = 3
    time_dim: int = 64
    time_embedding: str = "sinusoidal"  # networks.TIME_EMBEDDINGS; official: positional_integer_t
    param_init: str = "flax"  # names.INITS; official: "torch"
    schedule: str = "cosine"  # discrete VP schedule: "cosine" or "linear"
    schedule_discretization: str = "ddpm"  # names.DISCRETIZATIONS; official: cleandiffuser
    diffusion_steps: int = 50
    prediction: str = "x0"
    action_approx: bool = True  # EDP one-step x0 estimate in the Q loss
    edp_draw: str = "shared"  # EDP estimate on the BC draw, or "separate" (official)
    edp_clip: bool = True  # clip the EDP estimate to [-1, 1] (official: False)
    sampler: str = "dpm_solver_pp_2m"
    sampler_steps: int = 15
    sampler_spacing: str = "uniform"  # names.SPACINGS; official: "cleandiffuser"
    # critic
    critic_hidden_dim: int = 256
    critic_depth: int = 3
    critic_layer_norm_eps: float = 1e-6  # official (PyTorch): 1e-5
    discount: float = 0.99
    tau: float = 0.005  # official (CleanDiffuser's formula): 0.995
    target_every: int = 5
    td_samples: int = 1
    td_target_order: str = "min_then_max"  # with td_samples > 1; official: "max_then_min"
    # losses and optimisation
    eta: float = 1.0
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    weight_decay: float = 0.01
    lr_decay_steps: int | None = None  # cosine decay horizon; None: the whole run; 0: constant
    max_grad_norm: float | None = None
    ema_decay: float = 0.995
    ema_every: int = 5
    ema_start: int = 1000
    ema_warmup: str = "copy"  # before ema_start; official: "initial"
    contraction: ContractionConfig = ContractionConfig()
    # action selection (act)
    num_candidates: int = 1
    candidate_temperature: float = 1.0
    noise_temperature: float = 1.0

    def validate(self) -> DQLConfig:
        check_choice("actor_network", self.actor_network, ("mlp", "lnresnet"))
        check_optimiser_fields(self)
        check_choice("time_embedding", self.time_embedding, names.TIME_EMBEDDINGS)
        check_choice("param_init", self.param_init, names.INITS)
        check_choice("schedule", self.schedule, names.SCHEDULES)
        check_choice("schedule_discretization", self.schedule_discretization,
                     names.DISCRETIZATIONS)
        check_choice("sampler_spacing", self.sampler_spacing, names.SPACINGS)
        check_choice("edp_draw", self.edp_draw, EDP_DRAWS)
        check_choice("td_target_order", self.td_target_order, TD_TARGET_ORDERS)
        check_choice("ema_warmup", self.ema_warmup, EMA_WARMUPS)
        check_choice("prediction", self.prediction, names.PREDICTIONS)
        check_choice("sampler", self.sampler, names.SAMPLERS)
        check_choice("contraction.target", self.contraction.target, names.TARGETS)
        for name in ("actor_hidden_dim", "actor_depth", "time_dim", "diffusion_steps",
                     "sampler_steps", "critic_hidden_dim", "critic_depth", "target_every",
                     "td_samples", "ema_every", "num_candidates", "actor_lr", "critic_lr"):
            check_positive(name, getattr(self, name))
        for name in ("eta", "weight_decay", "ema_start", "tau", "discount", "ema_decay",
                     "candidate_temperature", "noise_temperature", "critic_layer_norm_eps"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if self.sampler_steps > self.diffusion_steps:
            raise ValueError(f"sampler_steps={self.sampler_steps} exceeds diffusion_steps="
                             f"{self.diffusion_steps}; a discrete schedule allows at most one "
                             "solver step per diffusion step.")
        if not (self.discount <= 1.0 and self.tau <= 1.0 and self.ema_decay <= 1.0):
            raise ValueError("discount, tau and ema_decay must lie in [0, 1], got "
                             f"{self.discount}, {self.tau}, {self.ema_decay}.")
        if self.contraction.weight < 0:
            raise ValueError(f"contraction.weight must be >= 0, got {self.contraction.weight}.")
        return self


def default_config(**overrides) -> DQLConfig:
    """The default setting (EDP + Diffusion-QL critic) with ``overrides``, validated."""
    return dataclasses.replace(DQLConfig(), **overrides).validate()
