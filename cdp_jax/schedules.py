"""Variance-preserving (VP) noise schedules.

Forward process: ``x_t = alpha_t * x_0 + sigma_t * eps`` with ``alpha_t**2 + sigma_t**2 = 1`` and
log-SNR ``lambda_t = log(alpha_t / sigma_t)``.

A schedule is a frozen, hashable pytree with no array leaves: every quantity is a closed-form
function of a few static numbers, so a schedule can be passed to (or closed over by) jitted code,
and sampler time grids are computed in float64 numpy at trace time.

Two time conventions, chosen by ``num_steps``:

* **continuous** (``num_steps=None``): ``t`` is a float in ``[t_min, t_max]``; ``t = 0`` is clean data.
* **discrete** (``num_steps=T``, as in DDPM / Diffusion-QL / EDP / the official CDP code): ``t`` is an
  integer step index in ``{0, ..., T-1}``. The index ``-1`` denotes clean data (``alpha = 1,
  sigma = 0``). Denoisers receive the integer index. Two discretisations (``discretization``):

  - ``"ddpm"`` (default): index ``i`` has ``alpha_bar_i = prod_{j<=i} (1 - beta_j)`` with the
    betas of the continuous schedule between ``i/T`` and ``(i+1)/T`` (iDDPM cosine with beta
    clipping; Diffusion-QL's linear ``vp_beta_schedule``).
  - ``"cleandiffuser"``: index ``i`` is the continuous schedule evaluated at
    ``t_i = linspace(t_min, 1, T)[i]`` (the cosine clips ``t`` at ``t_max = 0.9946``), with no
    beta products: CleanDiffuser's ``DiscreteDiffusionSDE``, which the official CDP code trains on.
    Cosine, T = 50: ``sigma_0 = 0.00643`` where ``"ddpm"`` gives 0.0418 (docs/PARITY.md).

Samplers never evaluate the denoiser at the clean point; they pass only ``t`` values in
``[t_min, t_max]`` (continuous) or ``{0, ..., T-1}`` (discrete), which ``alpha(t)``/``sigma(t)`` accept.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np
from flax import struct

from cdp_jax.configs import names

KINDS = names.SCHEDULE_KINDS
DISCRETIZATIONS = names.DISCRETIZATIONS
# "cleandiffuser": CleanDiffuser's sampling grid, integer levels floor(linspace(0, T-1, steps + 1))
# that end on level 0 instead of the clean point (discrete schedules only).
SPACINGS = names.SPACINGS

# sigma = 0 gives lambda = +inf; log-SNR is reported clipped to this value at the clean point.
_CLEAN_LOG_SNR = 1e4


def _xp(t):
    """numpy for concrete host values (trace-time grids, float64), jax.numpy otherwise."""
    if isinstance(t, (np.ndarray, np.generic, float, int)):
        return np
    return jnp


def _as_table(xp, table: np.ndarray):
    """The float64 host table as numpy, or as a jax array of the default float dtype (float32
    unless x64 is enabled; converting explicitly avoids JAX's truncation warning)."""
    return table if xp is np else jnp.asarray(table, dtype=jnp.result_type(float))


@struct.dataclass
class Schedule:
    """A VP noise schedule. Build it with :func:`linear` or :func:`cosine`.

    Attributes:
      kind: ``"linear"`` (linear beta) or ``"cosine"`` (Nichol & Dhariwal 2021).
      num_steps: ``T`` for the discrete form, ``None`` for continuous time.
      beta_min, beta_max: linear-beta endpoints of the continuous rate ``beta(t)``, t in [0, 1].
      cosine_s: the cosine schedule's offset ``s``.
      t_min, t_max: continuous sampling interval (ignored by the discrete form).
      max_beta: per-step beta clip of the discrete cosine schedule (as in iDDPM).
      discretization: ``"ddpm"`` or ``"cleandiffuser"`` (discrete form only; module docstring).
    """

    kind: str = struct.field(pytree_node=False, default="cosine")
    num_steps: int | None = struct.field(pytree_node=False, default=None)
    beta_min: float = struct.field(pytree_node=False, default=0.1)
    beta_max: float = struct.field(pytree_node=False, default=20.0)
    cosine_s: float = struct.field(pytree_node=False, default=0.008)
    t_min: float = struct.field(pytree_node=False, default=1e-3)
    t_max: float = struct.field(pytree_node=False, default=1.0)
    max_beta: float = struct.field(pytree_node=False, default=0.999)
    discretization: str = struct.field(pytree_node=False, default="ddpm")

    # ------------------------------------------------------------------ basic quantities
    @property
    def is_discrete(self) -> bool:
        return self.num_steps is not None

    def log_alpha(self, t):
        """``log alpha_t``; ``t`` as described in the module docstring (any shape)."""
        xp = _xp(t)
        if self.is_discrete:
            table = _discrete_log_alpha_table(self)  # entry 0 is the clean point (index -1)
            idx = xp.asarray(t).astype(np.int32) + 1
            return _as_table(xp, table)[idx]
        return self._continuous_log_alpha(t, xp)

    def alpha(self, t):
        """Signal scale ``alpha_t``."""
        return _xp(t).exp(self.log_alpha(t))

    def sigma(self, t):
        """Noise scale ``sigma_t = sqrt(1 - alpha_t**2)`` (computed stably near ``t = 0``)."""
        xp = _xp(t)
        return xp.sqrt(-xp.expm1(2.0 * self.log_alpha(t)))

    def log_snr(self, t):
        """``lambda_t = log(alpha_t / sigma_t)``, clipped to a large finite value at the clean point."""
        xp = _xp(t)
        la = self.log_alpha(t)
        log_sigma = 0.5 * xp.log(xp.maximum(-xp.expm1(2.0 * la), 1e-30))
        return xp.minimum(la - log_sigma, _CLEAN_LOG_SNR)

    def beta(self, t):
        """VP SDE rate ``beta(t) = -2 d log(alpha_t) / dt``: ``f(t) = -beta/2``, ``g(t)**2 = beta``.

        For the ``"ddpm"`` discrete form time is read as ``tau = (i + 1) / T``, so ``beta_i`` is the
        per-step DDPM beta times ``T`` (up to ``-log(1 - beta_i)`` vs ``beta_i``): the same rate the
        discrete chain approximates in the continuous limit. For ``"cleandiffuser"`` it is the
        continuous rate at the level's time ``t_i`` (0 where the cosine is clipped).
        """
        xp = _xp(t)
        if self.is_discrete and self.discretization == "cleandiffuser":
            rate = self._continuous_beta(_cleandiffuser_times(self), np)
            idx = xp.asarray(t).astype(np.int32)
            return _as_table(xp, rate)[idx]
        if self.is_discrete:
            table = _discrete_log_alpha_table(self)
            step_beta = -np.expm1(2.0 * (table[1:] - table[:-1]))  # 1 - alpha_bar_i/alpha_bar_{i-1}
            rate = -np.log1p(-step_beta) * self.num_steps
            idx = xp.asarray(t).astype(np.int32)
            return _as_table(xp, rate)[idx]
        return self._continuous_beta(t, xp)

    def _continuous_beta(self, t, xp):
        if self.kind == "linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        s = self.cosine_s
        angle = (t + s) / (1.0 + s) * (math.pi / 2)
        rate = math.pi / (1.0 + s) * xp.tan(angle)
        if self.discretization == "cleandiffuser":  # alpha is constant beyond the clip
            rate = xp.where(t > self.t_max, 0.0, rate)
        return rate

    def time_fraction(self, t):
        """Noise level as a fraction in (0, 1]: ``(i + 1) / T`` (discrete) or ``t / t_max``."""
        if self.is_discrete:
            return (_xp(t).asarray(t).astype(np.float32) + 1.0) / self.num_steps
        return t / self.t_max

    # ------------------------------------------------------------------ time grids
    @property
    def clean_time(self):
        """The ``t`` value that denotes clean data: ``-1`` (discrete) or ``0.0`` (continuous)."""
        return -1 if self.is_discrete else 0.0

    def time_grid(self, steps: int, spacing: str = "uniform") -> np.ndarray:
        """Sampling grid of ``steps + 1`` times, noisiest first, ending at the clean point.

        The first ``steps`` entries are where the denoiser is evaluated (``t_max`` first, then down
        to ``t_min`` / index 0); the last is :attr:`clean_time`. A solver's final step therefore
        lands on the Tweedie estimate ``x0_hat`` at the lowest noise level.

        ``spacing="cleandiffuser"`` (discrete schedules only) is CleanDiffuser's grid instead: the
        integer levels ``floor(linspace(0, T-1, steps + 1))``, noisiest first, ending on level 0 and
        not on the clean point. The denoiser is evaluated at the ``steps`` upper levels and the
        last solver step *lands* on level 0 (no Tweedie jump; the samplers detect this ending).
        With ``steps = T`` the two lowest levels coincide (a zero-length last step, as in
        CleanDiffuser).

        Args:
          steps: number of solver steps (>= 1; <= T for the discrete form).
          spacing: ``"uniform"`` in t, ``"quadratic"`` in t (denser at low noise), ``"logsnr"``
            (uniform in lambda, DPM-Solver's default) or ``"cleandiffuser"`` (above).

        Returns:
          float64 (continuous) or int32 (discrete) numpy array of shape ``(steps + 1,)``.
        """
        if not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}.")
        if spacing not in SPACINGS:
            raise ValueError(f"Unknown spacing {spacing!r}; expected one of {SPACINGS}.")
        if self.is_discrete and steps > self.num_steps:
            raise ValueError(
                f"steps={steps} exceeds the discrete schedule's num_steps={self.num_steps}; a "
                "discrete schedule can take at most one solver step per diffusion step."
            )
        if spacing == "cleandiffuser":
            if not self.is_discrete:
                raise ValueError("spacing='cleandiffuser' needs a discrete schedule (num_steps=T).")
            return cleandiffuser_levels(self.num_steps, steps)[::-1].copy()
        if self.is_discrete:
            lo, hi = 0.0, float(self.num_steps - 1)
        else:
            lo, hi = float(self.t_min), float(self.t_max)
        u = np.linspace(0.0, 1.0, steps)
        if steps == 1:
            times = np.array([hi])
        elif spacing == "uniform":
            times = hi + (lo - hi) * u
        elif spacing == "quadratic":
            times = lo + (hi - lo) * (1.0 - u) ** 2
        else:
            times = self._logsnr_spaced(lo, hi, u)
        if self.is_discrete:
            idx = np.round(times).astype(np.int32)
            if len(np.unique(idx)) != steps:
                raise ValueError(
                    f"spacing={spacing!r} with steps={steps} gives repeated step indices on a "
                    f"discrete schedule with T={self.num_steps}; use fewer steps or 'uniform'."
                )
            return np.append(idx, np.int32(-1)).astype(np.int32)
        return np.append(times, 0.0)

    def _logsnr_spaced(self, lo, hi, u):
        lam_hi = float(self.log_snr(np.float64(lo) if not self.is_discrete else np.int32(lo)))
        lam_lo = float(self.log_snr(np.float64(hi) if not self.is_discrete else np.int32(hi)))
        lam = lam_lo + (lam_hi - lam_lo) * u
        if self.is_discrete:
            table = self.log_snr(np.arange(self.num_steps, dtype=np.int32))  # decreasing in i
            return np.array([np.argmin(np.abs(table - v)) for v in lam], dtype=np.float64)
        return self._inverse_log_snr(lam)

    def _inverse_log_snr(self, lam):
        """t with ``lambda_t = lam`` for the continuous schedules (closed form)."""
        log_alpha2 = -np.logaddexp(0.0, -2.0 * lam)  # alpha^2 = sigmoid(2 lambda)
        if self.kind == "linear":
            b0, b1 = self.beta_min, self.beta_max
            # log alpha^2 = -(b1 - b0) t^2 / 2 - b0 t  =>  solve the quadratic for t >= 0.
            return (-b0 + np.sqrt(b0**2 - 2.0 * (b1 - b0) * log_alpha2)) / (b1 - b0)
        s = self.cosine_s
        c0 = math.cos(s / (1.0 + s) * math.pi / 2)
        return np.arccos(np.exp(0.5 * log_alpha2) * c0) * 2.0 / math.pi * (1.0 + s) - s

    def _continuous_log_alpha(self, t, xp):
        if self.kind == "linear":
            b0, b1 = self.beta_min, self.beta_max
            return -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
        s = self.cosine_s
        c0 = math.log(math.cos(s / (1.0 + s) * math.pi / 2))
        return xp.log(xp.cos((t + s) / (1.0 + s) * (math.pi / 2))) - c0


def linear(num_steps: int | None = None, *, beta_min: float = 0.1, beta_max: float = 20.0,
           t_min: float = 1e-3, t_max: float = 1.0, discretization: str = "ddpm") -> Schedule:
    """VP schedule with linear ``beta(t) = beta_min + t (beta_max - beta_min)`` on t in [0, 1].

    Continuous: ``log alpha_t = -(beta_max - beta_min) t^2 / 4 - beta_min t / 2`` (Song et al. 2021).
    Discrete (``num_steps=T``): ``alpha_bar_i = alpha^2((i + 1) / T)``, which is exactly
    Diffusion-QL's ``vp_beta_schedule`` (``beta_i = 1 - exp(-b_min/T - (b_max-b_min)(2i+1)/(2T^2))``).
    ``discretization="cleandiffuser"``: ``alpha_i = alpha(linspace(t_min, 1, T)[i])``.
    """
    _check_common(num_steps, t_min, t_max)
    _check_discretization(discretization)
    if not 0.0 <= beta_min < beta_max:
        raise ValueError(f"Need 0 <= beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}.")
    return Schedule(kind="linear", num_steps=num_steps, beta_min=float(beta_min),
                    beta_max=float(beta_max), t_min=float(t_min), t_max=float(t_max),
                    discretization=discretization)


def cosine(num_steps: int | None = None, *, s: float = 0.008, t_min: float = 1e-3,
           t_max: float = 0.9946, max_beta: float = 0.999, discretization: str = "ddpm") -> Schedule:
    """Cosine schedule ``alpha_bar(t) = cos^2((t + s)/(1 + s) pi/2) / cos^2(s/(1 + s) pi/2)``.

    Discrete (``num_steps=T``), ``discretization="ddpm"``: betas
    ``1 - alpha_bar((i+1)/T) / alpha_bar(i/T)`` clipped at ``max_beta`` (iDDPM);
    ``"cleandiffuser"`` (the official CDP code, T = 50): ``alpha_i = alpha(min(t_i, t_max))`` at
    ``t_i = linspace(t_min, 1, T)[i]``. Continuous: ``t_max`` defaults to 0.9946 (DPM-Solver's
    choice), since ``alpha(1) = 0`` makes the endpoint singular.
    """
    _check_common(num_steps, t_min, t_max)
    _check_discretization(discretization)
    if s <= 0:
        raise ValueError(f"cosine schedule offset s must be > 0, got {s}.")
    if num_steps is None and t_max >= 1.0:
        raise ValueError(f"continuous cosine needs t_max < 1 (alpha(1) = 0), got t_max={t_max}.")
    return Schedule(kind="cosine", num_steps=num_steps, cosine_s=float(s), t_min=float(t_min),
                    t_max=float(t_max), max_beta=float(max_beta), discretization=discretization)


def _check_common(num_steps, t_min, t_max):
    if num_steps is not None and (not isinstance(num_steps, (int, np.integer)) or num_steps < 1):
        raise ValueError(f"num_steps must be None (continuous) or an integer >= 1, got {num_steps!r}.")
    if not 0.0 < t_min < t_max <= 1.0:
        raise ValueError(f"Need 0 < t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}.")


def _check_discretization(discretization: str) -> None:
    if discretization not in DISCRETIZATIONS:
        raise ValueError(f"Unknown discretization {discretization!r}; expected one of "
                         f"{DISCRETIZATIONS}.")


def cleandiffuser_levels(num_steps: int, steps: int) -> np.ndarray:
    """CleanDiffuser's sampling levels ``linspace(0, T-1, steps + 1)`` truncated, increasing, int32.

    Not the exact ``floor(k (T-1) / steps)``: torch computes the ramp in float64 from both ends
    (``start + step k`` below the midpoint, ``end - step (n-1-k)`` above) and truncates, which
    rounds some exact integers down (e.g. T = 43, 38 steps: level 20 where 21 is exact). This
    reproduces torch's ``linspace(..., dtype=long)`` for every T <= 300 and steps <= T but eight
    midpoint entries at T = 257, and for T in {500, 999, 1000, 1001, 2000}; exactly at T = 50.
    """
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= num_steps:
        raise ValueError(f"steps must be an integer in [1, T={num_steps}], got {steps!r}.")
    n = steps + 1
    step = (num_steps - 1) / steps
    k = np.arange(n)
    ramp = np.where(k < n // 2, step * k, (num_steps - 1) - step * (n - 1 - k))
    return np.trunc(ramp).astype(np.int32)


def _cleandiffuser_times(schedule: Schedule) -> np.ndarray:
    """The continuous times ``linspace(t_min, 1, T)`` of the ``"cleandiffuser"`` levels."""
    return np.linspace(schedule.t_min, 1.0, schedule.num_steps, dtype=np.float64)


@functools.lru_cache(maxsize=64)
def _discrete_log_alpha_table(schedule: Schedule) -> np.ndarray:
    """float64 ``log alpha`` for indices ``-1..T-1`` (entry 0 is the clean point, log alpha = 0)."""
    T = schedule.num_steps
    if schedule.discretization == "cleandiffuser":
        t = _cleandiffuser_times(schedule)
        if schedule.kind == "cosine":
            t = np.minimum(t, schedule.t_max)
        return np.concatenate([[0.0], schedule._continuous_log_alpha(t, np)])
    taus = np.arange(T + 1, dtype=np.float64) / T  # tau_0 = 0 (clean), tau_{i+1} for index i
    if schedule.kind == "linear":
        b0, b1 = schedule.beta_min, schedule.beta_max
        log_alpha = -0.25 * taus**2 * (b1 - b0) - 0.5 * taus * b0
        return log_alpha
    s = schedule.cosine_s
    f = np.cos((taus + s) / (1.0 + s) * np.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = np.clip(1.0 - alpha_bar[1:] / np.maximum(alpha_bar[:-1], 1e-300), 0.0, schedule.max_beta)
    log_alpha_bar = np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])
    return 0.5 * log_alpha_bar
