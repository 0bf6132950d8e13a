"""Device-resident datasets and batch sampling inside jitted code.

The whole dataset is put on the default device once (:func:`to_device`); batches are then gathered
on device from a PRNG key, so a training step never waits on a host-to-device copy.
:func:`sample_batches`
draws ``K`` batches at once, shaped ``(K, B, ...)``, to feed a ``lax.scan`` over ``K`` updates.

``arrays`` is any dict (or pytree) of arrays sharing a leading row dimension ``N``: transitions from
``OfflineDataset.transitions()`` or windows from ``cdp_jax.data.minari.windows``. Rows are drawn
uniformly with replacement.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def to_device(arrays: dict, device=None) -> dict:
    """Copy a dict of numpy arrays to ``device`` (default: JAX's default device) once.

    int64 arrays become int32 and float64 become float32 unless x64 is enabled (JAX's own dtype
    rules); everything else keeps its dtype.
    """
    return jax.tree_util.tree_map(
        lambda a: jax.device_put(jnp.asarray(np.asarray(a)), device), arrays
    )


def num_rows(arrays: dict) -> int:
    """The shared leading dimension ``N``; raises if the leaves disagree."""
    sizes = {path: leaf.shape[0] for path, leaf in jax.tree_util.tree_leaves_with_path(arrays)}
    if not sizes:
        raise ValueError("arrays is empty: nothing to sample from")
    if len(set(sizes.values())) != 1:
        listing = ", ".join(f"{jax.tree_util.keystr(p)}: {n}" for p, n in sizes.items())
        raise ValueError(f"all arrays must share the leading (row) dimension; got {listing}")
    return next(iter(sizes.values()))


@functools.partial(jax.jit, static_argnames=("batch_size",))
def sample_batch(arrays: dict, key: jax.Array, batch_size: int) -> dict:
    """``batch_size`` rows drawn uniformly with replacement: each leaf ``(N, ...) -> (B, ...)``."""
    idx = jax.random.randint(key, (batch_size,), 0, num_rows(arrays))
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), arrays)


@functools.partial(jax.jit, static_argnames=("num_batches", "batch_size"))
def sample_batches(arrays: dict, key: jax.Array, num_batches: int, batch_size: int) -> dict:
    """``num_batches`` independent batches: each leaf ``(N, ...) -> (K, B, ...)``.

    Feed the result to ``lax.scan`` over ``K`` updates; batch ``k`` is ``tree_map(lambda x: x[k])``.
    """
    idx = jax.random.randint(key, (num_batches, batch_size), 0, num_rows(arrays))
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), arrays)
