"""Flow Q-Learning hyperparameters, without JAX (the algorithm: :mod:`cdp_jax.agents.fql`)."""

from __future__ import annotations

import dataclasses

from cdp_jax.configs import names
from cdp_jax.configs.contraction import ContractionConfig
from cdp_jax.configs.fields import check_choice, check_positive

Q_AGGREGATIONS = ("mean", "min")

# CDP on the behaviour flow, as the official penalty on an x0-predicting denoiser (docs/MATH.md,
# "Contraction for flow-matching policies"): mean((sym J + 0.1 I)^2) over the d^2 entries of the
# implied clean action's Jacobian, I + (1 - t) J_v, weight 0.1, on the whole path (the diffusion
# default's lowest 10% of noise levels would be t >= 0.9, where the gradient carries a factor
# 1 - t <= 0.1); estimated without a Jacobian
# (forward-mode probe pairs) on 16 random samples of the batch, as paper-fast does. (For t >= 0.9
# that Jacobian is within (1 - t) ||J_v|| <= 0.1 ||J_v|| of I whatever the network.)
FLOW_RL_PENALTY = ContractionConfig(
    weight=0.1, penalty="frobenius", frobenius_lambda=0.1, frobenius_scale="dim_squared",
    frobenius_estimator="jvp_pairs", target="clean", window=1.0, num_penalised=16, num_probes=1)
# FQL's main.py: 1M offline steps, evaluation every 100k on 50 episodes, no observation or
# reward normalisation (its D4RL AntMaze rows subtract 1 from the rewards: reward_normalization
# minus_one).


@dataclasses.dataclass(frozen=True)
class FQLConfig:
    """Hyperparameters of Flow Q-Learning (Park, Li and Levine, 2025).

    The defaults are FQL's own (``agents/fql.py`` ``get_config`` of github.com/seohongpark/fql at
    commit 719d044): Adam at 3e-4 on every network, 4 x 512 GELU MLPs with FQL's initialisation,
    LayerNorm in the two-critic ensemble only, discount 0.99, Polyak rate 0.005, mean over the
    ensemble for the TD target, distillation weight ``alpha`` 10 (FQL's README: tune it per
    task), 10 Euler steps of the behaviour flow, Q loss not normalised. ``contraction`` adds
    CDP's penalty to the behaviour flow's loss, on the Jacobian of
    :data:`cdp_jax.flow.TARGETS` ``[contraction.target]`` (weight 0: FQL exactly).
    """

    actor_hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    value_hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    layer_norm: bool = True  # in the critics
    actor_layer_norm: bool = False
    lr: float = 3e-4
    lr_decay_steps: int | None = 0  # 0: constant (FQL); None: cosine decay over the run
    discount: float = 0.99
    tau: float = 0.005
    q_agg: str = "mean"  # over the two critics, in the TD target
    alpha: float = 10.0  # distillation weight of the one-step policy
    flow_steps: int = 10  # Euler steps of the behaviour flow (distillation target)
    normalize_q_loss: bool = False
    # weight 0 (FQL exactly); a weight alone (--contraction-weight) turns the documented penalty on
    contraction: ContractionConfig = dataclasses.replace(FLOW_RL_PENALTY, weight=0.0)

    def validate(self) -> FQLConfig:
        check_choice("q_agg", self.q_agg, Q_AGGREGATIONS)
        check_choice("contraction.target", self.contraction.target, names.FLOW_TARGETS)
        for name in ("actor_hidden_dims", "value_hidden_dims"):
            dims = getattr(self, name)
            if not dims or any(not isinstance(w, int) or w < 1 for w in dims):
                raise ValueError(f"Invalid {name}={dims!r}; positive integer widths expected.")
        for name in ("lr", "flow_steps"):
            check_positive(name, getattr(self, name))
        if self.lr_decay_steps is not None:
            check_positive("lr_decay_steps", self.lr_decay_steps, allow_zero=True)
        for name in ("layer_norm", "actor_layer_norm", "normalize_q_loss"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Invalid {name}={getattr(self, name)!r}; expected true or false.")
        for name in ("alpha", "tau", "discount"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if not (self.discount <= 1.0 and self.tau <= 1.0):
            raise ValueError(f"discount and tau must lie in [0, 1], got {self.discount}, "
                             f"{self.tau}.")
        return self

    # What evaluation records of every agent's policy: act() is FQL's one-step policy.
    sampler = "one-step policy"
    sampler_steps = 1
    noise_temperature = 1.0


FQL_TRAIN = {"steps": 1_000_000, "batch_size": 256, "updates_per_call": 1000,
             "eval_every": 100_000, "checkpoint_every": 100_000, "eval_episodes": 50,
             "eval_envs": 10, "normalize_obs": False}


def default_config(**overrides) -> FQLConfig:
    """FQL's defaults with ``overrides``, validated."""
    return dataclasses.replace(FQLConfig(), **overrides).validate()
