"""IDQL hyperparameters, without JAX (the algorithm: :mod:`cdp_jax.agents.idql`)."""

from __future__ import annotations

import dataclasses

from cdp_jax.configs import names
from cdp_jax.configs.contraction import ContractionConfig
from cdp_jax.configs.fields import check_choice, check_optimiser_fields, check_positive


@dataclasses.dataclass(frozen=True)
class IDQLConfig:
    """Hyperparameters (IDQL's defaults where they apply; the DQL actor and schedule of CDP)."""

    actor_network: str = "lnresnet"
    actor_hidden_dim: int = 256
    actor_depth: int = 3
    time_dim: int = 64
    schedule: str = "cosine"
    diffusion_steps: int = 50
    prediction: str = "x0"
    sampler: str = "dpm_solver_pp_2m"
    sampler_steps: int = 15
    critic_hidden_dim: int = 256
    critic_depth: int = 2
    expectile: float = 0.7
    discount: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    weight_decay: float = 0.0
    lr_decay_steps: int | None = None
    ema_decay: float = 0.995
    ema_start: int = 1000
    contraction: ContractionConfig = ContractionConfig()
    num_candidates: int = 32
    candidate_temperature: float = 10.0
    noise_temperature: float = 1.0

    def validate(self) -> IDQLConfig:
        check_choice("actor_network", self.actor_network, names.ACTORS)
        check_optimiser_fields(self)
        check_choice("schedule", self.schedule, names.SCHEDULES)
        check_choice("prediction", self.prediction, names.PREDICTIONS)
        check_choice("sampler", self.sampler, names.SAMPLERS)
        check_choice("contraction.target", self.contraction.target, names.TARGETS)
        for name in ("actor_hidden_dim", "actor_depth", "time_dim", "diffusion_steps",
                     "sampler_steps", "critic_hidden_dim", "critic_depth", "num_candidates",
                     "actor_lr", "critic_lr"):
            check_positive(name, getattr(self, name))
        for name in ("weight_decay", "ema_start", "tau", "discount", "ema_decay",
                     "candidate_temperature", "noise_temperature"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if not 0.0 < self.expectile < 1.0:
            raise ValueError(f"Invalid expectile={self.expectile}; must be in (0, 1).")
        if self.sampler_steps > self.diffusion_steps:
            raise ValueError(f"sampler_steps={self.sampler_steps} exceeds diffusion_steps="
                             f"{self.diffusion_steps}.")
        return self


def default_config(**overrides) -> IDQLConfig:
    """IDQL defaults with ``overrides`` applied and validated."""
    return dataclasses.replace(IDQLConfig(), **overrides).validate()
