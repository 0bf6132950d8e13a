"""Flow behaviour-cloning hyperparameters, without JAX (the algorithm: :mod:`cdp_jax.agents.flow_bc`)."""

from __future__ import annotations

import dataclasses

from cdp_jax.configs import names
from cdp_jax.configs.contraction import ContractionConfig
from cdp_jax.configs.fields import check_choice, check_optimiser_fields, check_positive

# FQL's vector field (observation, action and raw t concatenated into an MLP) and every
# denoiser backbone of the diffusion agents (fed t scaled by ``time_scale``).
ACTOR_NETWORKS = ("fql_mlp", *names.ACTORS, *names.CHUNK_ACTORS)

# CDP on the flow policy, as the official imitation penalty (every noise level penalised) with
# the fast estimator of paper-il-fast (forward-mode probe pairs on 4 samples of the batch).
FLOW_IL_PENALTY = ContractionConfig(
    weight=0.1, penalty="frobenius", frobenius_lambda=0.1, frobenius_scale="dim_squared",
    frobenius_estimator="jvp_pairs", target="clean", window=1.0, num_penalised=4, num_probes=1)


@dataclasses.dataclass(frozen=True)
class FlowBCConfig:
    """Hyperparameters of flow-matching behaviour cloning (single actions or chunks).

    The policy is a velocity field ``v(x, t | obs)`` trained by flow matching on the linear path
    (``x_t = (1 - t) x_0 + t x_1``, noise at ``t = 0``, the action chunk at ``t = 1``; FQL's
    convention) and sampled by ``flow_steps`` steps of ``sampler`` from ``N(0, I)``, clipped to
    ``[-1, 1]`` at the end. Defaults: FQL's behaviour flow (4 x 512 GELU MLP, Adam 3e-4, 10 Euler
    steps), an EMA of the weights for acting, and DBC's windows (``obs_horizon`` observations,
    ``action_horizon`` actions predicted, ``n_action`` executed). ``contraction`` is CDP's penalty
    on the Jacobian of :data:`cdp_jax.flow.TARGETS` ``[contraction.target]`` (weight 0: plain
    flow BC).
    """

    obs_horizon: int = 1
    action_horizon: int = 1
    n_action: int = 1
    actor_network: str = "fql_mlp"
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)  # fql_mlp
    hidden_dim: int = 512  # the registry backbones (width, depth, time embedding)
    depth: int = 3
    time_dim: int = 128
    time_scale: float = 1000.0  # the backbones see t * time_scale (sinusoidal embeddings)
    activation: str = "gelu"
    layer_norm: bool = False
    sampler: str = "euler"
    flow_steps: int = 10
    noise_temperature: float = 1.0
    lr: float = 3e-4
    weight_decay: float = 0.0
    lr_decay_steps: int | None = 0  # 0: constant; None: cosine decay over the run
    max_grad_norm: float | None = None
    ema_decay: float = 0.995
    ema_start: int = 0
    # weight 0 (plain flow BC); a weight alone turns the documented penalty on
    contraction: ContractionConfig = dataclasses.replace(FLOW_IL_PENALTY, weight=0.0)

    def validate(self) -> FlowBCConfig:
        check_choice("actor_network", self.actor_network, ACTOR_NETWORKS)
        check_optimiser_fields(self)
        check_choice("activation", self.activation, names.ACTIVATIONS)
        check_choice("sampler", self.sampler, names.FLOW_SAMPLERS)
        check_choice("contraction.target", self.contraction.target, names.FLOW_TARGETS)
        if not self.hidden_dims or any(not isinstance(w, int) or w < 1 for w in self.hidden_dims):
            raise ValueError(f"Invalid hidden_dims={self.hidden_dims!r}; positive integer widths "
                             "expected.")
        for name in ("obs_horizon", "action_horizon", "n_action", "hidden_dim", "depth",
                     "time_dim", "flow_steps", "lr", "time_scale"):
            check_positive(name, getattr(self, name))
        for name in ("weight_decay", "ema_decay", "ema_start", "noise_temperature"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if self.n_action > self.action_horizon:
            raise ValueError(f"n_action={self.n_action} exceeds action_horizon="
                             f"{self.action_horizon}: cannot execute more actions than predicted.")
        return self

    @property
    def sampler_steps(self) -> int:
        """What evaluation records as the sampler's step count."""
        return self.flow_steps


FLOW_BC_TRAIN = {"steps": 200_000, "batch_size": 256, "updates_per_call": 1000,
                 "eval_every": 20_000, "checkpoint_every": 20_000, "eval_episodes": 10,
                 "eval_envs": 5, "obs_normalizer": "minmax"}


def default_config(**overrides) -> FlowBCConfig:
    """The default flow-BC setting with ``overrides``, validated."""
    return dataclasses.replace(FlowBCConfig(), **overrides).validate()
