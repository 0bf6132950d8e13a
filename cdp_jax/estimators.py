"""Matrix-free estimates of a map's symmetric Jacobian: its largest eigenvalue and its Frobenius norm.

Nothing here knows about diffusion or flows: every function takes a map and the point(s) where
its Jacobian is meant. ``mu(x) = lambda_max(0.5 (J + J^T))`` is the largest *algebraic* eigenvalue
of the symmetric part of the Jacobian of a map ``R^d -> R^d`` (event dimensions flattened, so
action chunks ``(H, A)`` have ``d = H * A``); a flow ``dx/dtau = F(x)`` with ``mu <= -c``
everywhere brings any two trajectories together at rate ``c`` (identity metric).

* One point (``fn: R^d -> R^d``): :func:`max_sym_eigenvalue` (Lanczos, matrix-free) and its
  reference :func:`exact_max_sym_eigenvalue`; :func:`sym_jacobian_frobenius` (Hutchinson) and
  :func:`exact_sym_jacobian_frobenius`.
* A batch (``fn(x, *args) -> y`` acting on each sample alone, ``x (n, *event)``, every ``args``
  leaf with leading axis ``n``): the Frobenius penalty ``||sym J_b + shift I||_F^2 / n(d)`` of
  every sample at once, exactly (:func:`exact_frobenius_batch`) or unbiased without a Jacobian
  (:func:`hutchinson_frobenius_batch`, :func:`jvp_pairs_frobenius_batch`).

:mod:`cdp_jax.penalties` turns these into training penalties; :mod:`cdp_jax.contraction` (diffusion)
and :mod:`cdp_jax.flow` (flow matching) say which map is penalised.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

# ----------------------------------------------------------------------------- one point


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


# ----------------------------------------------------------------------------- a batch

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


def exact_frobenius_batch(fn: Callable, x: jax.Array, args=(), *, shift: float = 0.1,
                          scale: str = "dim", width_fn: Callable | None = None):
    """The exact Frobenius penalty ``||0.5 (J_b + J_b^T) + shift I||_F^2 / n(d)`` of every
    sample ``b`` of a batch, and ``||sym J_b||_F``.

    ``fn(x, *args)`` maps ``(n, *event)`` to ``(n, *event)``, each sample's output depending on
    its own input only (every denoiser and velocity field here), so its Jacobian is block
    diagonal: the Jacobians ``(n, d, d)`` come from one forward pass and ``d`` batched VJPs
    (``vmap`` over one-hot cotangents), the network running on its own batch (one matmul per
    layer for all samples and directions; 1.3x faster than a ``jacfwd`` per sample with the
    parameter gradient at d = 3, batch 256, CPU). Large batches of tangents go through in chunks
    (``lax.map`` over ``x`` and ``args``, see :data:`EXACT_CHUNK_FLOATS`; ``width_fn(x)``, default
    ``fn(x, *args)``, is traced to find the widest activation): the memory-bound elementwise work
    of the second-order pass then stays in cache.

    Returns:
      ``(values (n,), {"sym_jacobian_norm": (n,)})``.
    """
    n, d = x.shape[0], math.prod(x.shape[1:])

    def values_of(x, args):
        m_shape = x.shape
        m = m_shape[0]
        flat = lambda y: fn(y.reshape(m_shape), *args).reshape(m, d)
        out, vjp = jax.vjp(flat, x.reshape(m, d))
        eye = jnp.eye(d, dtype=out.dtype)
        rows = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, (m, d)))[0])(eye)  # rows[i, b] = J_b[i]
        jac = jnp.swapaxes(rows, 0, 1)  # (m, d, d): jac[b, i, j] = d out_i / d x_j
        sym = 0.5 * (jac + jnp.swapaxes(jac, 1, 2))
        mat = sym + shift * eye[None]
        values = jnp.sum(jnp.square(mat), axis=(1, 2)) / FROBENIUS_SCALES[scale](d)
        return values, jnp.sqrt(jnp.sum(jnp.square(sym), axis=(1, 2)))

    width = _widest_activation(width_fn or (lambda y: fn(y, *args)), x)
    chunk = _chunk_size(n, d * width)
    if chunk == n:
        values, norms = values_of(x, args)
    else:
        split = lambda a: a.reshape((n // chunk, chunk, *a.shape[1:]))
        values, norms = jax.lax.map(lambda xa: values_of(*xa),
                                    jax.tree_util.tree_map(split, (x, args)))
        values, norms = values.reshape(n), norms.reshape(n)
    return values, {"sym_jacobian_norm": norms}


def _linearised_batch(fn: Callable, x: jax.Array, args):
    """``(xf (n, d), jvp)``: the batch flattened per sample and the JVP of ``fn`` at it,
    ``v (n, d) -> (J_b v_b)_b``, from one ``jax.linearize`` (one forward pass)."""
    shape = x.shape
    n, d = shape[0], math.prod(shape[1:])
    xf = x.reshape(n, d)
    _, jvp = jax.linearize(lambda y: fn(y.reshape(shape), *args).reshape(n, d), xf)
    return xf, jvp


def hutchinson_frobenius_batch(fn: Callable, x: jax.Array, args, key: jax.Array, *,
                               shift: float = 0.1, scale: str = "dim", num_probes: int = 1):
    """Hutchinson estimates of the Frobenius penalty of every sample of a batch, matrix-free.

    Per sample ``b`` and Rademacher probe ``z`` (``E[z z^T] = I``): ``||M_b z||^2 / n(d)`` with
    ``M_b = 0.5 (J_b + J_b^T) + shift I``, averaged over ``num_probes`` probes; unbiased for
    ``||M_b||_F^2 / n(d)``, and so is its parameter gradient (the probes do not depend on the
    parameters). Cost: one linearisation and per probe one JVP and one VJP of ``fn`` on its
    batch, against ``d`` VJPs for the exact penalty; no ``d x d`` matrix is formed. Probes are
    drawn once, ``(num_probes, n, d)``, from ``key``. Returns ``(values (n,), {})``.
    """
    xf, jvp = _linearised_batch(fn, x, args)
    # The transpose of the same linearisation gives the VJP: no second forward pass (a separate
    # jax.vjp would run the network again; at a few samples a pass costs about what reading the
    # weights costs).
    vjp = jax.linear_transpose(jvp, xf)
    n, d = xf.shape
    probes = jax.random.rademacher(key, (num_probes, n, d), xf.dtype)

    def squared_norms(z):
        mz = 0.5 * (jvp(z) + vjp(z)[0]) + shift * z
        return jnp.sum(jnp.square(mz), axis=1)

    values = jnp.mean(jax.vmap(squared_norms)(probes), axis=0)
    return values / FROBENIUS_SCALES[scale](d), {}


def jvp_pairs_frobenius_batch(fn: Callable, x: jax.Array, args, key: jax.Array, *,
                              shift: float = 0.1, scale: str = "dim", num_probes: int = 1):
    """Forward-mode-only estimates of the Frobenius penalty of every sample of a batch.

    With ``S = 0.5 (J + J^T)``: ``||S + shift I||_F^2 = 0.5 ||J||_F^2 + 0.5 tr(J^2)
    + 2 shift tr(J) + shift^2 d``, and for independent Rademacher ``z, w``:
    ``E ||J z||^2 = ||J||_F^2``, ``E (z . J w)(w . J z) = tr(J^2)``, ``E z . J z = tr(J)``. So one
    pair of JVPs (``J z``, ``J w``: both tangents through one linearisation, one batched tangent
    pass) gives an unbiased estimate without the transposed product, which costs a second pass
    through the network and its own backward pass. Per-sample estimates can be negative (their
    mean is the penalty). Its spread per pair against Hutchinson's per probe depends on the
    Jacobian (docs/MATH.md measures both). ``num_probes`` pairs, averaged. Returns
    ``(values (n,), {})``.
    """
    xf, jvp = _linearised_batch(fn, x, args)
    n, d = xf.shape
    z, w = jax.random.rademacher(key, (2, num_probes, n, d), xf.dtype)
    jz, jw = jnp.split(jax.vmap(jvp)(jnp.concatenate([z, w])), 2)
    dot = lambda a, b: jnp.sum(a * b, axis=-1)
    values = (0.25 * (dot(jz, jz) + dot(jw, jw)) + 0.5 * dot(z, jw) * dot(w, jz)
              + shift * (dot(z, jz) + dot(w, jw)) + shift**2 * d)
    return jnp.mean(values, axis=0) / FROBENIUS_SCALES[scale](d), {}
