"""SAC hyperparameters (the behaviour policies of the locomotion datasets), without JAX (the
algorithm: :mod:`cdp_jax.agents.sac`)."""

from __future__ import annotations

import dataclasses

from cdp_jax.configs.fields import check_positive


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """Hyperparameters (defaults: Haarnoja et al. 2018 as in CleanRL / jaxrl, for MuJoCo)."""

    hidden_dims: tuple[int, ...] = (256, 256)
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    init_temperature: float = 1.0
    target_entropy: float | None = None  # None: -action_dim
    batch_size: int = 256
    # host loop (sac_train.train)
    num_envs: int = 1
    buffer_size: int = 1_000_000
    learning_starts: int = 5000  # env steps of uniform random actions before updates
    train_every: int = 50  # vector steps between jitted update calls (K = num_envs * this * utd)
    # Gradient steps per env step (the UTD ratio). Below 1 trades learning per env step for speed:
    # the update is the cost on a CPU (benchmarks/sac_throughput.py).
    updates_per_step: float = 1.0

    def validate(self) -> SACConfig:
        if not self.hidden_dims or any(int(w) <= 0 for w in self.hidden_dims):
            raise ValueError(f"Invalid hidden_dims={self.hidden_dims!r}; positive widths expected.")
        for name in ("actor_lr", "critic_lr", "alpha_lr", "init_temperature", "batch_size",
                     "num_envs", "buffer_size", "train_every", "updates_per_step"):
            check_positive(name, getattr(self, name))
        for name in ("tau", "discount", "learning_starts"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if not (self.discount <= 1.0 and self.tau <= 1.0):
            raise ValueError(f"discount and tau must lie in [0, 1], got {self.discount}, "
                             f"{self.tau}.")
        per_call = self.num_envs * self.train_every * self.updates_per_step
        if abs(per_call - round(per_call)) > 1e-9:
            raise ValueError(f"num_envs * train_every * updates_per_step = {self.num_envs} * "
                             f"{self.train_every} * {self.updates_per_step} = {per_call} must be a "
                             "whole number of updates per jitted call.")
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"log_std_min={self.log_std_min} must be < log_std_max="
                             f"{self.log_std_max}.")
        return self


def default_config(**overrides) -> SACConfig:
    """The default SAC setting with ``overrides``, validated."""
    return dataclasses.replace(SACConfig(), **overrides).validate()
