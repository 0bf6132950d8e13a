"""Fixed-step samplers for VP diffusion models, jittable end to end.

Every sampler integrates from noise (``t_max``) to data along ``schedule.time_grid(steps, spacing)``:
``steps + 1`` times ``t_0 > t_1 > ... > t_{steps-1} > clean``. The first ``steps - 1`` moves are
solver steps written as a ``jax.lax.scan`` over a step function; the last move, from the lowest
noise level ``t_{steps-1}`` to clean data, is the Tweedie estimate ``x0_hat(x, t_{steps-1})`` for every
method (this is what DDIM, DDPM and first-order DPM-Solver++ give exactly when ``sigma_next = 0``,
and it keeps ``lambda = +inf`` out of the coefficients). Each method evaluates the denoiser once per
step (Heun: twice per solver step, once at the end).

``spacing="cleandiffuser"`` (discrete schedules) is the grid of CleanDiffuser and the official CDP
code instead: it ends on level 0, not on the clean point, so all ``steps`` moves are solver steps
and the last one *lands* on level 0 (``sigma_0 > 0``, no Tweedie jump); callers then clip the
result to the action bounds as the official code does.

Step coefficients depend only on the static grid, so they are computed in float64 numpy at trace time
and enter the scan as constants; the jitted loop does only the network calls and axpy updates.

Conventions: ``x`` has shape ``(batch, *event)``; the denoiser is called as ``denoiser(x, t, cond)``
with ``t`` of shape ``(batch,)`` holding exactly the grid values (integer indices for discrete
schedules) and returns the ``prediction`` kind (``"eps"``, ``"x0"`` or ``"v"``). Stochastic methods
take their randomness from ``key`` only; the same key gives the same samples.

Methods (see :data:`SAMPLERS`), with the order of the global error on the ODE:

* ``ddpm``: ancestral sampling from the Gaussian posterior ``q(x_s | x_t, x0_hat)`` (reverse SDE).
* ``ddim``: DDIM with eta = 0, i.e. Euler on the probability-flow ODE in ``(x/alpha, sigma/alpha)``;
  first order.
* ``dpm_solver_pp_1s``: DPM-Solver++(1S), the exponential integrator in log-SNR with data
  prediction; first order (algebraically identical to DDIM, kept for the naming in the literature).
* ``dpm_solver_pp_2m``: DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), multistep second order.
* ``euler_maruyama``: Euler-Maruyama on the reverse VP SDE
  ``dx = [-beta x/2 - beta score] dt + sqrt(beta) dw`` with the per-step integral of ``beta``
  taken exactly from the schedule; weak order 1.
* ``heun``: Heun's method on the probability-flow ODE in ``(x/alpha, sigma/alpha)`` (Karras et al.
  2022, Alg. 1), keeping the Euler predictor on high-noise steps that shrink ``sigma/alpha`` by 3x or
  more (where the corrector would amplify the error; see :func:`heun`); second order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cdp_jax.diffusion import check_prediction, to_eps, to_x0
from cdp_jax.schedules import Schedule


# ----------------------------------------------------------------------------- denoiser wrapper
def _make_model(denoiser: Callable, cond, prediction: str, clip_x0, batch: int):
    """``model(x, t, alpha, sigma) -> (x0_hat, eps_hat)`` with optional x0 clipping.

    With clipping, ``eps_hat`` is re-derived from the clipped ``x0_hat`` (as DDPM does), so every
    solver sees one consistent pair.
    """

    def model(x, t, alpha, sigma):
        t_vec = jnp.full((batch,), t, dtype=t.dtype)
        pred = denoiser(x, t_vec, cond)
        if pred.shape != x.shape:
            raise ValueError(
                f"denoiser(x, t, cond) returned shape {pred.shape}; expected the shape of x, {x.shape}."
            )
        x0 = to_x0(pred, prediction, x, alpha, sigma)
        if clip_x0 is None:
            return x0, to_eps(pred, prediction, x, alpha, sigma)
        x0 = jnp.clip(x0, clip_x0[0], clip_x0[1])
        return x0, (x - alpha * x0) / sigma

    return model


def _grid(schedule: Schedule, steps: int, spacing: str):
    """Float64 grid quantities: times (steps+1,), alpha, sigma, log-SNR (clean entry last)."""
    times = schedule.time_grid(steps, spacing)
    alpha = np.asarray(schedule.alpha(times), np.float64)
    sigma = np.asarray(schedule.sigma(times), np.float64)
    log_snr = np.asarray(schedule.log_snr(times), np.float64)
    return times, alpha, sigma, log_snr


def _lands(times: np.ndarray) -> bool:
    """Whether a grid ends on a noise level (CleanDiffuser's ending) rather than the clean point."""
    clean = -1 if np.issubdtype(times.dtype, np.integer) else 0.0
    return bool(times[-1] != clean)


def _drive(step_fn, carry, inputs, model, x_dtype, times, alpha, sigma, *,
           return_trajectory: bool, unroll, extra=None):
    """Scan ``step_fn`` over the solver steps, then (Tweedie ending) jump to ``x0_hat``.

    Grids ending at the clean point: ``steps - 1`` solver steps, then ``x0_hat`` at the last level.
    Grids ending on a noise level (``spacing="cleandiffuser"``): all ``steps`` moves are solver
    steps and the last one lands on that level; no network call there.

    ``inputs`` is a dict of per-transition float64 numpy coefficient arrays of length ``steps``;
    the current/next grid times and (alpha, sigma) are added here; ``extra`` holds per-step
    arrays that enter as they are (PRNG keys, already of the scan's length). ``carry`` is a dict
    holding at least the state ``"x"``.
    """
    n = len(times) - 1  # = steps
    lands = _lands(times)
    m = n if lands else n - 1  # scanned solver steps
    x_start = carry["x"]
    t_dtype = jnp.int32 if np.issubdtype(times.dtype, np.integer) else x_dtype
    with np.errstate(divide="ignore", invalid="ignore"):
        per_step = {k: jnp.asarray(v[:m], x_dtype) for k, v in inputs.items()}
    per_step.update(
        t=jnp.asarray(times[:m], t_dtype), s=jnp.asarray(times[1:m + 1], t_dtype),
        a_t=jnp.asarray(alpha[:m], x_dtype), s_t=jnp.asarray(sigma[:m], x_dtype),
        a_s=jnp.asarray(alpha[1:m + 1], x_dtype), s_s=jnp.asarray(sigma[1:m + 1], x_dtype),
        **(extra or {}),
    )

    def body(c, inp):
        c = step_fn(c, inp)
        return c, (c["x"] if return_trajectory else None)

    if m > 0:
        carry, traj = jax.lax.scan(body, carry, per_step, unroll=unroll)
    else:
        traj = None
    if lands:
        x_end = carry["x"]
    else:
        a_last = jnp.asarray(alpha[n - 1], x_dtype)
        s_last = jnp.asarray(sigma[n - 1], x_dtype)
        x_end, _ = model(carry["x"], jnp.asarray(times[n - 1], t_dtype), a_last, s_last)
    if not return_trajectory:
        return x_end
    if lands:
        return jnp.concatenate([x_start[None], traj], axis=0)
    parts = [x_start[None]] + ([traj] if traj is not None else []) + [x_end[None]]
    return jnp.concatenate(parts, axis=0)


# ----------------------------------------------------------------------------- the samplers
def ddim(model, x, grid, key=None, **drive):
    """DDIM (eta = 0): ``x_s = alpha_s x0_hat + sigma_s eps_hat``. First order."""
    del key

    def step(c, p):
        x0, eps = model(c["x"], p["t"], p["a_t"], p["s_t"])
        return {**c, "x": p["a_s"] * x0 + p["s_s"] * eps}

    return _drive(step, {"x": x}, {}, model, x.dtype, *grid[:3], **drive)


def dpm_solver_pp_1s(model, x, grid, key=None, **drive):
    """DPM-Solver++(1S): ``x_s = (sigma_s/sigma_t) x - alpha_s (e^{-h} - 1) x0_hat``,
    ``h = lambda_s - lambda_t``."""
    del key
    _, alpha, sigma, lam = grid
    h = lam[1:] - lam[:-1]
    coef = {"c_x": sigma[1:] / sigma[:-1], "c_x0": -alpha[1:] * np.expm1(-h)}

    def step(c, p):
        x0, _ = model(c["x"], p["t"], p["a_t"], p["s_t"])
        return {**c, "x": p["c_x"] * c["x"] + p["c_x0"] * x0}

    return _drive(step, {"x": x}, coef, model, x.dtype, *grid[:3], **drive)


def dpm_solver_pp_2m(model, x, grid, key=None, **drive):
    """DPM-Solver++(2M): the 1S update with ``x0_hat`` replaced by the multistep extrapolation
    ``D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}``, ``r = h_{i-1} / h_i``; the first step is 1S."""
    del key
    _, alpha, sigma, lam = grid
    h = lam[1:] - lam[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        # First step: no history (r = inf, first order). A zero-length step (the repeated level 0
        # of CleanDiffuser's grid with steps = T) has r = inf and c_x0 = 0: x passes unchanged.
        r = np.concatenate([[np.inf], h[:-1] / h[1:]])
        c_x0 = -alpha[1:] * np.expm1(-h)
        # x_s = c_x x + c_x0 D with D's weights folded into the coefficients (fewer ops per step).
        coef = {"c_x": sigma[1:] / sigma[:-1], "c_cur": c_x0 * (1.0 + 0.5 / r),
                "c_prev": c_x0 * (-0.5 / r)}

    def step(c, p):
        x0, _ = model(c["x"], p["t"], p["a_t"], p["s_t"])
        x = p["c_x"] * c["x"] + p["c_cur"] * x0 + p["c_prev"] * c["x0_prev"]
        return {"x": x, "x0_prev": x0}

    carry = {"x": x, "x0_prev": jnp.zeros_like(x)}
    return _drive(step, carry, coef, model, x.dtype, *grid[:3], **drive)


def heun(model, x, grid, key=None, **drive):
    """Heun (trapezoidal predictor-corrector) on ``d(x/alpha) / d(sigma/alpha) = eps_hat``. Second order.

    With ``sb = sigma/alpha``, a step from ``sb_t`` to ``sb_s`` is the Euler (= DDIM) predictor
    ``xbar_pred = xbar + (sb_s - sb_t) eps_hat(x, t)`` and the corrector
    ``xbar_s = xbar + (sb_s - sb_t) (eps_hat(x, t) + eps_hat(x_pred, s)) / 2``, except on a step with
    ``sb_t >= 3 sb_s`` and ``sb_s >= 1``, which keeps the Euler predictor (see the comment below).
    """
    del key
    _, alpha, sigma, _ = grid
    sb = sigma / alpha
    # The corrector adds (h/2) * d eps/d xbar * (predictor error), h = sb_s - sb_t. At high noise
    # (sb >= 1, above the scale of [-1, 1] actions) eps_hat ~ (xbar - mean) / sb, so that factor is
    # about (sb_t/sb_s - 1)/2: from sb_t >= 3 sb_s on, the corrector amplifies the predictor's error
    # instead of cancelling it, while Euler is exact for that linear part. Such steps are not rare:
    # a discrete cosine schedule clips its last beta at max_beta = 0.999, so alpha_{T-1} is tiny
    # (T = 1000: sb jumps from 20291 at index 999 to 128 at 994, the first of 200 steps; the
    # corrector then missed a Gaussian's covariance by several percent, worse than DDIM, and by
    # orders of magnitude with ~10 steps). Continuous schedules refine to ratios near 1, so the
    # order stays 2.
    # One entry per transition of the grid (the scan takes as many as it runs: all of them on a
    # landing grid, all but the jump to the clean point otherwise).
    euler_only = (sb[:-1] >= 3.0 * sb[1:]) & (sb[1:] >= 1.0)
    coef = {"dsig": sb[1:] - sb[:-1], "w_corr": np.where(euler_only, 0.0, 0.5)}

    def step(c, p):
        xbar = c["x"] / p["a_t"]
        _, d1 = model(c["x"], p["t"], p["a_t"], p["s_t"])
        x_pred = p["a_s"] * (xbar + p["dsig"] * d1)
        _, d2 = model(x_pred, p["s"], p["a_s"], p["s_s"])
        d = d1 + p["w_corr"] * (d2 - d1)
        return {**c, "x": p["a_s"] * (xbar + p["dsig"] * d)}

    return _drive(step, {"x": x}, coef, model, x.dtype, *grid[:3], **drive)


def ddpm(model, x, grid, key=None, **drive):
    """Ancestral sampling: ``x_s ~ q(x_s | x_t, x0_hat)``, the DDPM posterior for any pair of levels.

    With ``a = alpha_t/alpha_s`` and ``v = sigma_t^2 - a^2 sigma_s^2``: mean
    ``(a sigma_s^2/sigma_t^2) x_t + (alpha_s v/sigma_t^2) x0_hat``, variance ``v sigma_s^2/sigma_t^2``.
    """
    _, alpha, sigma, _ = grid
    a = alpha[:-1] / alpha[1:]
    v = sigma[:-1] ** 2 - a**2 * sigma[1:] ** 2
    coef = {
        "c_x": a * sigma[1:] ** 2 / sigma[:-1] ** 2, "c_x0": alpha[1:] * v / sigma[:-1] ** 2,
        "std": np.sqrt(np.maximum(v, 0.0)) * sigma[1:] / sigma[:-1],
    }
    return _stochastic(model, x, grid, key, coef, drive, _ddpm_update)


def _ddpm_update(c, p, x0, eps, z):
    del eps
    return p["c_x"] * c["x"] + p["c_x0"] * x0 + p["std"] * z


def euler_maruyama(model, x, grid, key=None, **drive):
    """Euler-Maruyama on the reverse VP SDE: with ``b = int_s^t beta = 2 log(alpha_s / alpha_t)``,
    ``x_s = x + (b/2) x + b score + sqrt(b) z``, ``score = -eps_hat / sigma_t``. Weak order 1."""
    _, alpha, _, _ = grid
    b = 2.0 * (np.log(alpha[1:]) - np.log(alpha[:-1]))
    coef = {"b": b, "sqrt_b": np.sqrt(b)}
    return _stochastic(model, x, grid, key, coef, drive, _em_update)


def _em_update(c, p, x0, eps, z):
    del x0
    return c["x"] + 0.5 * p["b"] * c["x"] - p["b"] * eps / p["s_t"] + p["sqrt_b"] * z


def _stochastic(model, x, grid, key, coef, drive, update):
    if key is None:
        raise ValueError("This sampler is stochastic: pass a PRNG key.")
    n_steps = len(grid[0]) - 1
    m = n_steps if _lands(grid[0]) else n_steps - 1
    keys = jax.random.split(key, max(m, 1))[:m]  # one per solver step

    def step(c, p):
        x0, eps = model(c["x"], p["t"], p["a_t"], p["s_t"])
        z = jax.random.normal(p["key"], c["x"].shape, c["x"].dtype)
        return {**c, "x": update(c, p, x0, eps, z)}

    return _drive(step, {"x": x}, coef, model, x.dtype, *grid[:3],
                  extra={"key": keys}, **drive)


# ----------------------------------------------------------------------------- registry + entry
@dataclasses.dataclass(frozen=True)
class SamplerInfo:
    """A registered sampler: its function, ``kind`` ("ode" or "sde") and order of accuracy."""

    fn: Callable
    kind: str
    order: int
    evals_per_step: int
    stochastic: bool


SAMPLERS: dict[str, SamplerInfo] = {
    "ddpm": SamplerInfo(ddpm, "sde", 1, 1, True),
    "ddim": SamplerInfo(ddim, "ode", 1, 1, False),
    "dpm_solver_pp_1s": SamplerInfo(dpm_solver_pp_1s, "ode", 1, 1, False),
    "dpm_solver_pp_2m": SamplerInfo(dpm_solver_pp_2m, "ode", 2, 1, False),
    "euler_maruyama": SamplerInfo(euler_maruyama, "sde", 1, 1, True),
    "heun": SamplerInfo(heun, "ode", 2, 2, False),
}


def sample(
    denoiser: Callable,
    schedule: Schedule,
    key: jax.Array,
    shape: tuple[int, ...],
    cond=None,
    *,
    method: str = "dpm_solver_pp_2m",
    steps: int = 15,
    prediction: str = "eps",
    spacing: str = "uniform",
    clip_x0: tuple | None = None,
    temperature: float = 1.0,
    return_trajectory: bool = False,
    x_init: jax.Array | None = None,
    dtype=None,
    unroll: int | bool = 1,
):
    """Draw samples by integrating from ``x_T = temperature * N(0, I)`` to data.

    Args:
      denoiser: ``denoiser(x, t, cond) -> prediction`` (see module docstring).
      schedule: a :class:`~cdp_jax.schedules.Schedule`.
      key: PRNG key; split here into the initial noise and, for SDE methods, per-step noise.
        ``None`` is accepted for ODE methods started from ``x_init``.
      shape: ``(batch, *event)``, e.g. ``(B, action_dim)`` or ``(B, horizon, action_dim)``.
      cond: conditioning pytree whose leaves have leading dimension ``batch``, or ``None``.
      method: a key of :data:`SAMPLERS`.
      steps: number of denoiser evaluation levels (>= 1; <= T on a discrete schedule).
      prediction: what ``denoiser`` returns: ``"eps"``, ``"x0"`` or ``"v"``.
      spacing: grid spacing, ``"uniform"``, ``"quadratic"``, ``"logsnr"`` or ``"cleandiffuser"``
        (CleanDiffuser's integer levels, ending by a solver step that lands on level 0).
      clip_x0: ``(low, high)`` bounds applied to every ``x0_hat`` (e.g. ``(-1., 1.)`` for actions).
      temperature: scale of the initial noise (the official CDP evaluation uses 0.5).
      return_trajectory: if true return all ``steps + 1`` states, ``(steps + 1, batch, *event)``,
        from ``x_T`` to the final sample.
      x_init: explicit initial state of shape ``shape`` (then ``temperature`` is not applied).
      dtype: of the state; default ``x_init``'s dtype, else float32.
      unroll: passed to ``lax.scan`` (unrolling helps small batches on CPU).

    Returns:
      Samples of shape ``shape`` (or the trajectory, see ``return_trajectory``).
    """
    if method not in SAMPLERS:
        raise ValueError(f"Unknown sampler method {method!r}; expected one of {sorted(SAMPLERS)}.")
    check_prediction(prediction)
    shape = tuple(int(n) for n in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (batch, *event) with at least 2 dims, got {shape}.")
    for leaf in jax.tree_util.tree_leaves(cond):
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != shape[0]:
            raise ValueError(
                f"cond leaves need leading dimension batch={shape[0]}; got a leaf of shape "
                f"{jnp.shape(leaf)}."
            )
    if clip_x0 is not None and len(clip_x0) != 2:
        raise ValueError(f"clip_x0 must be None or a (low, high) pair, got {clip_x0!r}.")
    grid = _grid(schedule, steps, spacing)  # validates steps / spacing
    info = SAMPLERS[method]
    if key is None:  # allowed for a deterministic method from a given x_init
        if x_init is None or info.stochastic:
            raise ValueError(f"key=None needs x_init and a deterministic method; {method!r} "
                             f"{'is stochastic' if info.stochastic else 'got no x_init'}.")
        key_init = key_steps = None
    else:
        key_init, key_steps = jax.random.split(key)
    if dtype is None:
        dtype = jnp.float32 if x_init is None else jnp.asarray(x_init).dtype
    if x_init is None:
        x = temperature * jax.random.normal(key_init, shape, dtype)
    else:
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {shape}.")
        x = jnp.asarray(x_init, dtype)
    model = _make_model(denoiser, cond, prediction, clip_x0, shape[0])
    return info.fn(model, x, grid, key_steps if info.stochastic else None,
                   return_trajectory=return_trajectory, unroll=unroll)
