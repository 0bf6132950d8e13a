"""Contraction of diffusion-policy sampling: matrix-free eigenvalue estimates and CDP penalties.

Conventions (VP, see :mod:`cdp_jax.diffusion`): ``x_t = alpha_t x0 + sigma_t eps``; a denoiser is
``denoiser(x, t, cond) -> pred`` with ``x`` of shape ``(batch, *event)``, ``t`` of shape
``(batch,)``.
``mu(x) = lambda_max(0.5 (J + J^T))`` is the largest *algebraic* eigenvalue of the symmetric part of
the Jacobian of a map ``R^d -> R^d`` (event dimensions flattened, so action chunks ``(H, A)`` have
``d = H * A``). A flow ``dx/dtau = F(x)`` with ``mu <= -c`` everywhere brings any two trajectories
together at rate ``c`` (identity metric).

Which Jacobian (``ContractionConfig.target``):

* ``"drift"``: the probability-flow ODE in the direction of integration (noise -> data),
  ``tau = -t``: ``F(x) = 0.5 beta(t) (x - eps_hat / sigma_t)``, from any parameterisation via
  :func:`cdp_jax.diffusion.to_eps`. ``J_F = 0.5 beta (I - J_eps / sigma)``, so ``mu_F < 0`` is
  exactly ``lambda_min(sym J_eps) > sigma_t`` (docs/MATH.md, "Signs"). Penalising ``mu_F`` makes the
  sampler forget early solver / score errors and seed perturbations (the theory's condition; the
  sign is checked numerically in the tests: a larger weight makes two nearby sampled flows end
  closer).
* ``"network"``: the raw network output w.r.t. the noisy action (what the official code
  penalises). With x0-prediction one DDIM / DPM-Solver++ step is
  ``x' = (sigma'/sigma) x + c x0_hat(x)``, ``c > 0``, so pushing ``d x0_hat / dx`` down makes each
  step contract, at the price of fighting Tweedie (``d x0_hat/dx = alpha/sigma^2 Cov[x0|x_t]`` is
  PSD): samples are pulled towards mode means. With eps-prediction, *lowering*
  ``lambda_max(sym J_eps)`` (the paper's theorem read literally) makes the sampling flow *less*
  contractive; use ``"drift"`` for eps- and v-models.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from cdp_jax.configs.contraction import ContractionConfig  # noqa: F401 (contraction.ContractionConfig)
from cdp_jax.diffusion import check_prediction, expand_to, to_eps
from cdp_jax.schedules import Schedule

# ----------------------------------------------------------------------------- estimators


def _flat(fn: Callable, x: jax.Array):
    """``fn`` as a map on flat vectors, and the flattened point."""
    shape = x.shape
    return (lambda y: fn(y.reshape(shape)).reshape(-1)), x.reshape(-1)


def _frozen(fn: Callable, x: jax.Array) -> Callable:
    """``fn`` with every closed-over tracer (network parameters) behind ``stop_gradient``.

    The Lanczos iterations must carry no parameter tangents at all (not rely on dead-code
    elimination through a scan), so the backward pass of the estimate costs one JVP only.
    """
    converted, consts = jax.closure_convert(fn, x)
    consts = jax.lax.stop_gradient(consts)
    return lambda y: converted(y, *consts)


def _sym_matvec(fn: Callable, x: jax.Array) -> Callable:
    """``v -> 0.5 (J v + J^T v)`` at ``x``, linearising ``fn`` once (one forward pass)."""
    _, jvp_fn = jax.linearize(fn, x)
    vjp_fn = jax.linear_transpose(jvp_fn, x)
    return lambda v: 0.5 * (jvp_fn(v) + vjp_fn(v)[0])


def _orthogonalise(w, basis):
    # Classical Gram-Schmidt applied twice ("twice is enough"); unused rows of `basis` are zero.
    w = w - basis.T @ (basis @ w)
    return w - basis.T @ (basis @ w)


def lanczos_top_eigenvector(matvec: Callable, key: jax.Array, dim: int, num_iters: int,
                            dtype=jnp.float32):
    """Top Ritz pair of a symmetric operator by ``num_iters`` Lanczos steps, fully reorthogonalised.

    Args:
      matvec: symmetric linear map on vectors of shape ``(dim,)``.
      key: PRNG key for the random start vector and for restart vectors after an exact breakdown
        (invariant Krylov subspace, e.g. repeated eigenvalues): a restart continues with a random
        direction orthogonal to the basis, so the Ritz values stay those of ``V^T A V``.
      dim: ``d``, the vector size.
      num_iters: Krylov dimension ``K``; capped at ``d`` (with ``K = d`` the result is exact).
      dtype: vector dtype.

    Returns:
      ``(theta, v)``: the largest Ritz value (a lower bound on ``lambda_max``, the largest over
      the Krylov space) and its unit Ritz vector ``(d,)``.
    """
    d = int(dim)
    k = min(int(num_iters), d)
    tol = 100.0 * jnp.finfo(dtype).eps
    # One draw up front (start vector and restarts): threefry dominates CPU compile time.
    draws = jax.random.normal(key, (k + 1, d), dtype)
    restarts = draws[1:]

    def body(j, carry):
        basis, alphas, betas, v, v_prev, beta_prev, scale = carry
        basis = basis.at[j].set(v)
        w = matvec(v)
        a = jnp.vdot(v, w)
        w = _orthogonalise(w - a * v - beta_prev * v_prev, basis)
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(a) + b)
        restart = _orthogonalise(restarts[j], basis)
        broke = b <= tol * scale
        b = jnp.where(broke, 0.0, b)
        w = jnp.where(broke, restart, w)
        v_next = w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(dtype).tiny)
        return basis, alphas.at[j].set(a), betas.at[j].set(b), v_next, v, b, scale

    v = draws[0] / jnp.linalg.norm(draws[0])
    zero = jnp.zeros((), dtype)
    init = (jnp.zeros((k, d), dtype), jnp.zeros((k,), dtype), jnp.zeros((k,), dtype), v,
            jnp.zeros_like(v), zero, zero)
    # Unrolled for the small K used in training: XLA then fuses across steps (a rolled loop pays
    # per-iteration dispatch of many tiny kernels on CPU); large K (tests, diagnostics) stays rolled.
    basis, alphas, betas, *_ = jax.lax.fori_loop(0, k, body, init, unroll=k <= 16)
    off = betas[: k - 1]
    tri = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    evals, evecs = jnp.linalg.eigh(tri)
    ritz = basis.T @ evecs[:, -1]
    return evals[-1], ritz / jnp.linalg.norm(ritz)


def max_sym_eigenvalue(fn: Callable, x: jax.Array, key: jax.Array, num_iters: int = 8) -> jax.Array:
    """Matrix-free estimate of ``lambda_max(0.5 (J + J^T))`` of ``fn`` at one point ``x``.

    Method: symmetric Lanczos on ``v -> 0.5 (J v + J^T v)`` (one ``jax.linearize`` of ``fn`` at
    ``x``, then one JVP and one transposed JVP per step) from a random start, with full
    reorthogonalisation; then the Rayleigh quotient ``v^T J v`` at the top Ritz vector ``v``.

    Why Lanczos and not shifted power iteration: plain power iteration finds the eigenvalue of
    largest *magnitude*, which for a contracting map is the most negative one. A spectral shift
    ``J_sym + s I`` fixes the target but needs a norm estimate first and converges at the ratio
    ``(lambda_2 + s) / (lambda_1 + s)``, close to 1. The Lanczos Ritz value is the largest Rayleigh
    quotient over the whole Krylov space, so with the same K matvecs it is never worse than any
    (shifted) power iteration from the same start, needs no shift, and is exact at ``K = d``.
    Ritz values are lower bounds: an under-converged estimate under-reports expansion.

    Gradients: the iteration sees ``fn`` with its closed-over parameters behind ``stop_gradient``
    and the Ritz vector is held fixed, so the gradient of the result w.r.t. parameters closed over
    by ``fn`` is ``v^T (dJ) v`` (Hellmann-Feynman at convergence), costing one JVP.

    Args:
      fn: map from arrays of ``x.shape`` to arrays of ``x.shape`` (one point, not batched).
      x: the point, any shape (flattened to ``d = x.size``).
      key: PRNG key for the start vector.
      num_iters: Lanczos steps ``K`` (capped at ``d``; ``K = d`` is exact). For 1e-3 relative
        accuracy the tests needed ``K = 40`` on the spectrum linspace(-5, 0.3, 64) and ``K = 48``
        on random 64-d tanh-MLP Jacobians; the training penalty uses ``K = 4`` (it needs an
        expanding direction, not the exact value).

    Returns:
      Scalar estimate of ``mu``, dtype of ``x``. Vmappable over ``(x, key)``.
    """
    f, xf = _flat(fn, x)
    matvec = _sym_matvec(_frozen(f, xf), jax.lax.stop_gradient(xf))
    _, v = lanczos_top_eigenvector(matvec, key, xf.shape[0], num_iters, xf.dtype)
    v = jax.lax.stop_gradient(v)
    return jnp.vdot(v, jax.jvp(f, (xf,), (v,))[1])


def exact_max_sym_eigenvalue(fn: Callable, x: jax.Array) -> jax.Array:
    """Reference ``lambda_max(0.5 (J + J^T))`` by ``jax.jacfwd`` and ``eigvalsh`` (small ``d``)."""
    f, xf = _flat(fn, x)
    jac = jax.jacfwd(f)(xf)
    return jnp.linalg.eigvalsh(0.5 * (jac + jac.T))[-1]


FROBENIUS_SCALES = {"dim": lambda d: d, "dim_squared": lambda d: d * d}


def sym_jacobian_frobenius(fn: Callable, x: jax.Array, key: jax.Array, *, shift: float = 0.1,
                           num_probes: int = 1, scale: str = "dim") -> jax.Array:
    """Hutchinson estimate of ``||0.5 (J + J^T) + shift I||_F^2 / n(d)`` at one point ``x``.

    Unbiased: ``E_z ||M z||^2 = ||M||_F^2`` for Rademacher probes ``z`` (``E[z z^T] = I``);
    each probe costs one JVP and one VJP, and the result is differentiable w.r.t. parameters
    closed over by ``fn``. ``scale="dim"`` (``n = d``) is the mean squared eigenvalue of ``M``,
    independent of ``d``; ``"dim_squared"`` (``n = d^2``) is the official code's
    ``mean((J_sym + shift I)^2)`` over entries, whose scale falls like ``1/d``. Minimised at
    ``J_sym = -shift I``.
    """
    f, xf = _flat(fn, x)
    d = xf.shape[0]
    probes = jax.random.rademacher(key, (num_probes, d), xf.dtype)
    _, vjp_fn = jax.vjp(f, xf)

    def sq_norm(z):
        mz = 0.5 * (jax.jvp(f, (xf,), (z,))[1] + vjp_fn(z)[0]) + shift * z
        return jnp.sum(jnp.square(mz))

    return jnp.mean(jax.vmap(sq_norm)(probes)) / FROBENIUS_SCALES[scale](d)


def exact_sym_jacobian_frobenius(fn: Callable, x: jax.Array, *, shift: float = 0.1,
                                 scale: str = "dim") -> jax.Array:
    """Reference for :func:`sym_jacobian_frobenius` by ``jax.jacfwd``."""
    f, xf = _flat(fn, x)
    jac = jax.jacfwd(f)(xf)
    m = 0.5 * (jac + jac.T) + shift * jnp.eye(xf.shape[0], dtype=jac.dtype)
    return jnp.sum(jnp.square(m)) / FROBENIUS_SCALES[scale](xf.shape[0])


# ----------------------------------------------------------------------------- targets


def probability_flow_drift(pred: jax.Array, prediction: str, schedule: Schedule, x: jax.Array,
                           t: jax.Array) -> jax.Array:
    """Probability-flow ODE vector field in the direction of integration (noise -> data).

    With ``tau = -t`` (schedule time, as :meth:`Schedule.beta` reads it):
    ``dx/dtau = -(f x - 0.5 g^2 score) = 0.5 beta(t) (x - eps_hat / sigma_t)`` (VP: ``f = -beta/2``,
    ``g^2 = beta``). ``pred`` of kind ``prediction`` and ``x`` have shape ``(batch, *event)``, ``t``
    ``(batch,)``; scalar ``t`` with unbatched ``x`` also works.
    """
    alpha, sigma = expand_to(schedule.alpha(t), x), expand_to(schedule.sigma(t), x)
    eps = to_eps(pred, prediction, x, alpha, sigma)
    return 0.5 * expand_to(schedule.beta(t), x) * (x - eps / sigma)


def _network_target(denoiser, schedule, t, cond, prediction):
    return lambda x: denoiser(x[None], t[None], cond)[0]


def _drift_target(denoiser, schedule, t, cond, prediction):
    def drift(x):
        pred = denoiser(x[None], t[None], cond)[0]
        return probability_flow_drift(pred, prediction, schedule, x, t)

    return drift


TARGETS = {"network": _network_target, "drift": _drift_target}


def _check_choice(field, value, options):
    if value not in options:
        raise ValueError(f"Unknown {field} {value!r}; expected one of {tuple(options)}.")


def target_function(target: str, denoiser: Callable, schedule: Schedule, t: jax.Array, cond,
                    prediction: str = "eps") -> Callable:
    """The per-sample map ``x (*event) -> (*event)`` whose Jacobian is penalised.

    ``t`` is a scalar and ``cond`` one sample's conditioning *with* a leading batch dimension of 1
    (or ``None``): the denoiser is called on a batch of one.
    """
    _check_choice("target", target, TARGETS)
    check_prediction(prediction)
    return TARGETS[target](denoiser, schedule, t, cond, prediction)


# ----------------------------------------------------------------------------- penalties


# The exact penalty's tangents (samples x d x the network's widest activation) are pushed through
# the network in chunks of at most this many floats (1 MiB; ~L2-sized), when the whole batch's
# would be more than twice that. Measured with the parameter gradient (2-core CPU, float32):
# Pearce d = 7, batch 512: 300 -> 230 ms (chunks of 32); Diffusion-QL MLP d = 112, batch 256:
# 480 -> 300 ms (chunks of 4); d = 3 (0.2M floats) is not chunked: smaller chunks were slower.
EXACT_CHUNK_FLOATS = 2**17


def _widest_activation(fn, y) -> int:
    """Per-sample size of the largest intermediate of ``fn(y)`` that keeps the batch axis."""
    n = y.shape[0]
    eqns = jax.make_jaxpr(fn)(y).jaxpr.eqns
    sizes = [math.prod(v.aval.shape[1:]) for eqn in eqns for v in eqn.outvars
             if getattr(v.aval, "shape", ()) and v.aval.shape[0] == n]
    return max(sizes, default=y.shape[-1])


def _chunk_size(n: int, floats_per_sample: int) -> int:
    """``n`` if the whole batch is small enough, else the largest divisor of ``n`` whose chunk
    holds at most :data:`EXACT_CHUNK_FLOATS` (at least 1)."""
    if n * floats_per_sample <= 2 * EXACT_CHUNK_FLOATS:
        return n
    cap = max(1, EXACT_CHUNK_FLOATS // floats_per_sample)
    return max(c for c in range(1, min(cap, n) + 1) if n % c == 0)


def _batched_target(config, denoiser, schedule, t, cond, prediction) -> Callable:
    """The penalised map on a whole batch, ``(n, *event) -> (n, *event)``. Each sample's output
    depends on its own input only, so its Jacobian is block diagonal: one JVP (VJP) of it with a
    batch of tangents (cotangents) gives every sample's ``J_b v_b`` (``J_b^T v_b``) at once."""
    if config.target == "drift":
        return lambda y: probability_flow_drift(denoiser(y, t, cond), prediction, schedule, y, t)
    return lambda y: denoiser(y, t, cond)


def _exact_frobenius_batch(config, denoiser, schedule, x, t, cond, prediction, key=None):
    """The exact Frobenius penalty of every sample of a batch at once.

    The Jacobians ``(n, d, d)`` come from one forward pass of the batched target and ``d`` batched
    VJPs (``vmap`` over one-hot cotangents), instead of a ``jacfwd`` of a batch-of-one function per
    sample: the network then runs on its own batch (one matmul per layer for all samples and
    directions), 1.3x faster for the penalty with its parameter gradient at d = 3, batch 256 (CPU).
    Large batches of tangents go through in chunks (``lax.map``, see :data:`EXACT_CHUNK_FLOATS`):
    the memory-bound elementwise work of the second-order pass then stays in cache.
    Exact for maps that act on each sample independently (every denoiser here).
    """
    shape = x.shape
    n, d = shape[0], math.prod(shape[1:])

    def values_of(x, t, cond):
        m_shape = x.shape
        fn = _batched_target(config, denoiser, schedule, t, cond, prediction)
        m = m_shape[0]
        flat = lambda y: fn(y.reshape(m_shape)).reshape(m, d)
        out, vjp = jax.vjp(flat, x.reshape(m, d))
        eye = jnp.eye(d, dtype=out.dtype)
        rows = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, (m, d)))[0])(eye)  # rows[i, b] = J_b[i]
        jac = jnp.swapaxes(rows, 0, 1)  # (m, d, d): jac[b, i, j] = d out_i / d x_j
        sym = 0.5 * (jac + jnp.swapaxes(jac, 1, 2))
        mat = sym + config.frobenius_lambda * eye[None]
        values = jnp.sum(jnp.square(mat), axis=(1, 2)) / FROBENIUS_SCALES[config.frobenius_scale](d)
        return values, jnp.sqrt(jnp.sum(jnp.square(sym), axis=(1, 2)))

    width = _widest_activation(lambda y: denoiser(y, t, cond), x)
    chunk = _chunk_size(n, d * width)
    if chunk == n:
        values, norms = values_of(x, t, cond)
    else:
        split = lambda a: a.reshape((n // chunk, chunk, *a.shape[1:]))
        values, norms = jax.lax.map(lambda args: values_of(*args),
                                    jax.tree_util.tree_map(split, (x, t, cond)))
        values, norms = values.reshape(n), norms.reshape(n)
    return values, {"sym_jacobian_norm": norms}


def _linearised_batch(config, denoiser, schedule, x, t, cond, prediction):
    """``(xf (n, d), jvp)``: the batch flattened per sample and the JVP of the batched target at
    it, ``v (n, d) -> (J_b v_b)_b``, from one ``jax.linearize`` (one forward pass)."""
    shape = x.shape
    n, d = shape[0], math.prod(shape[1:])
    fn = _batched_target(config, denoiser, schedule, t, cond, prediction)
    xf = x.reshape(n, d)
    _, jvp = jax.linearize(lambda y: fn(y.reshape(shape)).reshape(n, d), xf)
    return xf, jvp


def _hutchinson_frobenius_batch(config, denoiser, schedule, x, t, cond, prediction, key):
    """Hutchinson estimates of the Frobenius penalty of every sample of a batch, matrix-free.

    Per sample ``b`` and Rademacher probe ``z`` (``E[z z^T] = I``): ``||M_b z||^2 / n(d)`` with
    ``M_b = 0.5 (J_b + J_b^T) + shift I``, averaged over ``config.num_probes`` probes; unbiased for
    ``||M_b||_F^2 / n(d)``, and so is its parameter gradient (the probes do not depend on the
    parameters). Cost: one linearisation and per probe one JVP and one VJP of the batched target
    (the network on its own batch, see :func:`_batched_target`), against ``d`` VJPs for the exact
    penalty; no ``d x d`` matrix is formed. Probes are drawn once, ``(num_probes, n, d)``, from ``key``.
    """
    xf, jvp = _linearised_batch(config, denoiser, schedule, x, t, cond, prediction)
    # The transpose of the same linearisation gives the VJP: no second forward pass (a separate
    # jax.vjp would run the network again; at a few samples a pass costs about what reading the
    # weights costs).
    vjp = jax.linear_transpose(jvp, xf)
    n, d = xf.shape
    probes = jax.random.rademacher(key, (config.num_probes, n, d), xf.dtype)

    def squared_norms(z):
        mz = 0.5 * (jvp(z) + vjp(z)[0]) + config.frobenius_lambda * z
        return jnp.sum(jnp.square(mz), axis=1)

    values = jnp.mean(jax.vmap(squared_norms)(probes), axis=0)
    return values / FROBENIUS_SCALES[config.frobenius_scale](d), {}


def _jvp_pairs_frobenius_batch(config, denoiser, schedule, x, t, cond, prediction, key):
    """Forward-mode-only estimates of the Frobenius penalty of every sample of a batch.

    With ``S = 0.5 (J + J^T)``: ``||S + shift I||_F^2 = 0.5 ||J||_F^2 + 0.5 tr(J^2)
    + 2 shift tr(J) + shift^2 d``, and for independent Rademacher ``z, w``:
    ``E ||J z||^2 = ||J||_F^2``, ``E (z . J w)(w . J z) = tr(J^2)``, ``E z . J z = tr(J)``. So one
    pair of JVPs (``J z``, ``J w``: both tangents through one linearisation, one batched tangent
    pass) gives an unbiased estimate without the transposed product, which costs a second pass
    through the network and its own backward pass. Per-sample estimates can be negative (their
    mean is the penalty). Its spread per pair against Hutchinson's per probe depends on the
    Jacobian (docs/MATH.md measures both: lower on the imitation network, higher on the
    offline-RL one). ``config.num_probes`` pairs, averaged.
    """
    xf, jvp = _linearised_batch(config, denoiser, schedule, x, t, cond, prediction)
    n, d = xf.shape
    z, w = jax.random.rademacher(key, (2, config.num_probes, n, d), xf.dtype)
    jz, jw = jnp.split(jax.vmap(jvp)(jnp.concatenate([z, w])), 2)
    dot = lambda a, b: jnp.sum(a * b, axis=-1)
    shift = config.frobenius_lambda
    values = (0.25 * (dot(jz, jz) + dot(jw, jw)) + 0.5 * dot(z, jw) * dot(w, jz)
              + shift * (dot(z, jz) + dot(w, jw)) + shift**2 * d)
    return jnp.mean(values, axis=0) / FROBENIUS_SCALES[config.frobenius_scale](d), {}


# Every penalty and estimator maps the selected samples ``(x (n, *event), t (n,), cond)`` to
# ``(values (n,), extras)`` with the same signature; ``key`` draws start vectors or probes.
FROBENIUS_ESTIMATORS = {"hutchinson": _hutchinson_frobenius_batch,
                        "jvp_pairs": _jvp_pairs_frobenius_batch, "exact": _exact_frobenius_batch}


def _frobenius_batch(config, denoiser, schedule, x, t, cond, prediction, key):
    return FROBENIUS_ESTIMATORS[config.frobenius_estimator](config, denoiser, schedule, x, t,
                                                            cond, prediction, key)


def _eigen_batch(config, denoiser, schedule, x, t, cond, prediction, key):
    """``relu(mu + margin)^2`` per sample, ``mu`` by Lanczos (:func:`max_sym_eigenvalue`) on the
    target of each sample (a batch of one), vmapped."""
    def per_sample(x_i, t_i, cond_i, k):
        cond_b = None if cond_i is None else jax.tree_util.tree_map(lambda c: c[None], cond_i)
        fn = target_function(config.target, denoiser, schedule, t_i, cond_b, prediction)
        mu = max_sym_eigenvalue(fn, x_i, k, num_iters=config.num_iters)
        return jnp.square(jax.nn.relu(mu + config.margin)), {"mu": mu}

    return jax.vmap(per_sample)(x, t, cond, jax.random.split(key, x.shape[0]))


PENALTIES = {"eigen": _eigen_batch, "frobenius": _frobenius_batch}


def select_in_window(config: ContractionConfig, schedule: Schedule, t: jax.Array, key: jax.Array):
    """A fixed-size random subsample of the in-window samples.

    Returns ``(idx, mask, in_window)``: ``idx`` ``(n,)`` int indices into the batch with
    ``n = config.penalised_count(batch)``; ``mask`` ``(n,)`` bool, False where fewer than ``n``
    samples lie in the window (those slots point at out-of-window samples and must get weight 0);
    ``in_window`` ``(batch,)`` bool.
    """
    in_window = schedule.time_fraction(t) <= config.window + 1e-6
    scores = jnp.where(in_window, jax.random.uniform(key, t.shape), -1.0)
    _, idx = jax.lax.top_k(scores, config.penalised_count(t.shape[0]))
    return idx, in_window[idx], in_window


def contraction_regulariser(config: ContractionConfig, denoiser: Callable, schedule: Schedule,
                            x_t: jax.Array, t: jax.Array, cond, key: jax.Array, *,
                            prediction: str = "eps"):
    """The weighted contraction penalty to add to a diffusion actor loss.

    Penalises ``n = config.penalised_count(batch)`` of the in-window samples of the batch already
    drawn by :func:`cdp_jax.diffusion.denoising_loss` (reuse its ``aux["x_t"]``, ``aux["t"]``):
    ``weight * mean_{selected, in window} penalty(J_target(x_t, t, cond))``. Out-of-window samples
    are never penalised; if fewer than ``n`` lie in the window the remaining slots get weight 0 (and
    are evaluated at the lowest noise level so that nothing can overflow), and with none in the
    window the result is exactly 0 with finite gradients.

    Args:
      config: settings; ``config.weight == 0`` returns ``(0.0, {})`` without any computation.
      denoiser: ``(x, t, cond) -> pred`` of kind ``prediction``.
      x_t: noisy samples ``(batch, *event)``; ``t``: ``(batch,)``; ``cond``: pytree with leading
        dimension ``batch`` or ``None``.
      key: PRNG key (subsample choice and estimator start vectors / probes).

    Returns:
      ``(weighted_loss, metrics)`` with ``contraction/penalty`` (unweighted), ``contraction/loss``,
      ``contraction/num_in_window``, ``contraction/num_penalised``, ``contraction/num_dropped``
      (in-window samples left out for lack of static slots) and, for the eigen penalty,
      ``contraction/mu_mean`` and ``contraction/mu_max`` over the penalised samples (0 if none).
    """
    if config.weight == 0:
        return jnp.zeros((), x_t.dtype), {}
    check_prediction(prediction)
    key_select, key_est = jax.random.split(key)
    idx, mask, in_window = select_in_window(config, schedule, t, key_select)
    t_low = 0 if schedule.is_discrete else schedule.t_min
    t_sel = jnp.where(mask, t[idx], jnp.asarray(t_low, t.dtype))
    x_sel = x_t[idx]
    cond_sel = None if cond is None else jax.tree_util.tree_map(lambda c: c[idx], cond)
    values, extras = PENALTIES[config.penalty](config, denoiser, schedule, x_sel, t_sel, cond_sel,
                                              prediction, key_est)
    weights = mask.astype(x_t.dtype)
    count = jnp.sum(weights)
    penalty = jnp.sum(weights * values) / jnp.maximum(count, 1.0)
    loss = config.weight * penalty
    metrics = {
        "contraction/penalty": penalty,
        "contraction/loss": loss,
        "contraction/num_in_window": jnp.sum(in_window.astype(jnp.int32)),
        "contraction/num_penalised": count,
        # In-window samples beyond the static count (0 unless the window held more than
        # num_penalised samples; then the mean is over a random subset of them).
        "contraction/num_dropped": jnp.sum(in_window.astype(x_t.dtype)) - count,
    }
    for name, value in extras.items():
        value = jax.lax.stop_gradient(value)
        metrics[f"contraction/{name}_mean"] = jnp.sum(weights * value) / jnp.maximum(count, 1.0)
        # 0 (not -inf) when nothing was penalised, so running averages of the log stay finite.
        metrics[f"contraction/{name}_max"] = jnp.where(
            count > 0, jnp.max(jnp.where(mask, value, -jnp.inf)), 0.0)
    return loss, metrics
