"""Affine normalisers whose statistics travel with a run as JSON.

A :class:`Normalizer` maps ``x -> (x - shift) / scale`` feature-wise and back. Two kinds:

* ``"gaussian"``: ``shift = mean``, ``scale = std`` (floored at ``eps``): zero mean, unit variance;
  the usual choice for observations.
* ``"minmax"``: ``shift = (max + min) / 2``, ``scale = (max - min) / 2``: the data range maps onto
  ``[-1, 1]``; the usual choice for actions of a diffusion policy, whose samplers clip ``x0`` to
  ``[-1, 1]``, and the official imitation pipeline's choice for observations too. A feature whose
  range is exactly zero is given the range 1, so its value maps to ``-1`` and a later deviation
  ``d`` to ``-1 + 2 d`` (CleanDiffuser's ``MinMaxNormalizer`` rule), not to ``d / eps``; a
  nonzero range below ``2 eps`` is floored there (CleanDiffuser divides by it as it is).

The normaliser is a pytree (``shift`` and ``scale`` are leaves, ``kind`` is static), so it can be
passed into jitted code; ``normalize`` / ``unnormalize`` are pure and accept numpy or jax arrays of
shape ``(..., dim)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cdp_jax.configs.names import NORMALIZER_KINDS


@dataclasses.dataclass(frozen=True, eq=False)
class Normalizer:
    """Feature-wise affine map ``x_norm = (x - shift) / scale``.

    Attributes:
        shift: ``(dim,)`` float32.
        scale: ``(dim,)`` float32, strictly positive.
        kind: ``"gaussian"`` or ``"minmax"`` (how the statistics were computed; informational).
    """

    shift: Any
    scale: Any
    kind: str = "gaussian"

    @classmethod
    def fit(cls, x: np.ndarray, kind: str = "gaussian", eps: float = 1e-6) -> Normalizer:
        """Statistics of ``x`` ``(N, dim)`` (or ``(N, ..., dim)``: all leading axes are pooled)."""
        if kind not in NORMALIZER_KINDS:
            raise ValueError(f"kind must be one of {NORMALIZER_KINDS}, got {kind!r}")
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"x must have shape (N, ..., dim) with N >= 1, got {x.shape}")
        x = x.reshape(-1, x.shape[-1])
        if kind == "gaussian":
            shift, scale = x.mean(axis=0), x.std(axis=0)
            # A constant feature would divide by zero; a floored scale maps it to 0 instead.
            scale = np.maximum(scale, eps)
        else:
            lo, hi = x.min(axis=0), x.max(axis=0)
            width = np.where(hi > lo, hi - lo, 1.0)  # a constant feature: range 1, value -1
            shift, scale = lo + width / 2.0, np.maximum(width / 2.0, eps)
        return cls(shift=shift.astype(np.float32), scale=scale.astype(np.float32), kind=kind)

    @classmethod
    def identity(cls, dim: int) -> Normalizer:
        return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32), "gaussian")

    def _expand(self, x):
        # Explicit reshape: the tests forbid implicit rank promotion of (dim,) against (B, dim).
        # numpy in, numpy out: normalising a whole dataset on the host should not round-trip
        # through the device; jax arrays and tracers take the jnp path.
        xp = np if isinstance(x, np.ndarray) else jnp
        shape = (1,) * (xp.ndim(x) - 1) + (-1,)
        return xp.reshape(xp.asarray(self.shift), shape), xp.reshape(xp.asarray(self.scale), shape)

    def normalize(self, x):
        """``(..., dim) -> (..., dim)``: ``(x - shift) / scale``; numpy for numpy input."""
        shift, scale = self._expand(x)
        return (x - shift) / scale

    def unnormalize(self, x):
        """``(..., dim) -> (..., dim)``: ``x * scale + shift``, the inverse of :meth:`normalize`."""
        shift, scale = self._expand(x)
        return x * scale + shift

    def to_dict(self) -> dict:
        """JSON-serialisable form: ``{"kind", "shift", "scale"}`` with lists of floats."""
        return {
            "kind": self.kind,
            "shift": np.asarray(self.shift, dtype=np.float32).tolist(),
            "scale": np.asarray(self.scale, dtype=np.float32).tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        """Inverse of :meth:`to_dict`; validates the fields."""
        missing = {"kind", "shift", "scale"} - set(d)
        if missing:
            raise ValueError(
                f"normalizer dict is missing fields {sorted(missing)}; got {sorted(d)}"
            )
        if d["kind"] not in NORMALIZER_KINDS:
            raise ValueError(
                f"normalizer kind must be one of {NORMALIZER_KINDS}, got {d['kind']!r}"
            )
        shift = np.asarray(d["shift"], dtype=np.float32)
        scale = np.asarray(d["scale"], dtype=np.float32)
        if shift.ndim != 1 or shift.shape != scale.shape:
            raise ValueError(
                f"normalizer shift and scale must be 1-D of equal length, got {shift.shape} and "
                f"{scale.shape}"
            )
        if not np.all(scale > 0):
            raise ValueError("normalizer scale must be strictly positive")
        return cls(shift=shift, scale=scale, kind=d["kind"])


jax.tree_util.register_dataclass(Normalizer, data_fields=["shift", "scale"], meta_fields=["kind"])


def fit_normalizers(
    dataset, observations: str = "gaussian", actions: str = "minmax"
) -> dict[str, Normalizer]:
    """``{"observations": ..., "actions": ...}`` fitted on an ``OfflineDataset``'s rows.

    ``next_observations`` share the observation normaliser. Serialise with
    ``{k: v.to_dict() for k, v in normalizers.items()}``.
    """
    return {
        "observations": Normalizer.fit(dataset.observations, observations),
        "actions": Normalizer.fit(dataset.actions, actions),
    }
