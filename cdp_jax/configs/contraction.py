"""The contraction regulariser's settings, without JAX (the penalty: :mod:`cdp_jax.penalties`; its
targets: :mod:`cdp_jax.contraction` for diffusion, :mod:`cdp_jax.flow` for flows)."""

from __future__ import annotations

import dataclasses
import math

from cdp_jax.configs import names


def _check_choice(field, value, options):
    if value not in options:
        raise ValueError(f"Unknown {field} {value!r}; expected one of {tuple(options)}.")


@dataclasses.dataclass(frozen=True)
class ContractionConfig:
    """Contraction regulariser settings (hashable, so it can be a static argument).

    Attributes:
      weight: multiplier ``gamma`` of the penalty in the actor loss; 0 disables it (no compute).
      penalty: ``"eigen"`` (``relu(mu + margin)^2``, the paper's hinge squared) or ``"frobenius"``
        (``||sym J + frobenius_lambda I||_F^2 / n(d)``, the official code's default penalty; exact or
        by Hutchinson, see ``frobenius_estimator``).
      margin: the eigen penalty is zero once ``mu <= -margin``.
      frobenius_lambda: the Frobenius form's target ``sym J -> -frobenius_lambda I``.
      frobenius_scale: ``"dim"`` (mean squared eigenvalue, d-independent) or ``"dim_squared"``
        (the official code's mean over the d^2 entries).
      frobenius_estimator: ``"hutchinson"`` (``num_probes`` Rademacher probes per sample, one
        JVP and one VJP each, through one linearisation), ``"jvp_pairs"`` (``num_probes`` pairs
        of probes per sample, forward mode only: docs/MATH.md, "The fast penalty"); both
        unbiased for the value and its parameter gradient, and matrix-free; or ``"exact"`` (the
        whole Jacobian, ``d`` VJPs per sample; what the official code computes, by ``d``
        backward passes).
      target: for diffusion ``"network"`` or ``"drift"`` (the docstring of
        :mod:`cdp_jax.contraction`), for flow matching ``"clean"`` or ``"velocity"``
        (:mod:`cdp_jax.flow`); each agent accepts its own family.
      window: fraction of noise levels penalised, lowest first (``time_fraction(t) <= window``
        for diffusion; for a flow the fraction is ``1 - t``, so ``t >= 1 - window``); 0.1 is
        the official offline-RL default (t < 5 of 50), 1.0 penalises all (the flows' default).
      num_penalised: static number of samples penalised per batch: an int, a fraction of the batch
        in (0, 1], or ``None`` for ``ceil(window * batch)`` (the expected in-window count). Taken
        at random among the in-window samples, each equally likely, so the penalty is an unbiased
        estimate of the mean over all of them (exact when they fit).
      num_iters: Lanczos steps ``K`` for the eigen penalty.
      num_probes: probes (``"hutchinson"``) or probe pairs (``"jvp_pairs"``) per sample.
    """

    weight: float = 0.0
    penalty: str = "eigen"
    margin: float = 0.1
    frobenius_lambda: float = 0.1
    frobenius_scale: str = "dim"
    frobenius_estimator: str = "hutchinson"
    target: str = "network"
    window: float = 0.1
    num_penalised: int | float | None = None
    num_iters: int = 4
    num_probes: int = 1

    def __post_init__(self):
        _check_choice("penalty", self.penalty, names.PENALTIES)
        _check_choice("target", self.target, names.TARGETS + names.FLOW_TARGETS)
        _check_choice("frobenius_scale", self.frobenius_scale, names.FROBENIUS_SCALES)
        _check_choice("frobenius_estimator", self.frobenius_estimator, names.FROBENIUS_ESTIMATORS)
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {self.weight!r}.")
        if not math.isfinite(self.margin):
            raise ValueError(f"margin must be finite, got {self.margin!r}.")
        if not (math.isfinite(self.frobenius_lambda) and self.frobenius_lambda >= 0):
            raise ValueError(f"frobenius_lambda must be >= 0, got {self.frobenius_lambda!r}.")
        if not 0.0 < self.window <= 1.0:
            raise ValueError(
                f"window must be in (0, 1] (fraction of noise levels), got {self.window!r}.")
        n = self.num_penalised
        valid_int = isinstance(n, int) and not isinstance(n, bool) and n >= 1
        valid_frac = isinstance(n, float) and 0.0 < n <= 1.0
        if not (n is None or valid_int or valid_frac):
            raise ValueError("num_penalised must be None, an int >= 1 or a fraction in (0, 1], "
                             f"got {n!r}.")
        for field in ("num_iters", "num_probes"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be an integer >= 1, got {value!r}.")

    def penalised_count(self, batch: int) -> int:
        """The static number of samples penalised in a batch of ``batch``."""
        n = self.num_penalised
        if n is None:
            n = self.window
        if isinstance(n, float):
            n = math.ceil(n * batch - 1e-9)
        return max(1, min(int(n), batch))
