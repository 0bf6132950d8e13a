"""Small statistics helpers for reporting results across seeds (host-side numpy)."""

from __future__ import annotations

import math

import numpy as np

# Two-sided 95% Student-t critical values for 1..30 degrees of freedom (then the normal 1.96).
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_ci95(values) -> dict:
    """Mean and half-width of the 95% t-interval of ``values`` (one per seed).

    Returns ``{"mean", "ci95", "n", "std"}``; ``ci95`` is NaN for a single seed.
    """
    x = np.asarray(values, np.float64).ravel()
    n = x.size
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value.")
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "ci95": math.nan, "n": 1, "std": math.nan}
    std = float(x.std(ddof=1))
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    return {"mean": mean, "ci95": t * std / math.sqrt(n), "n": n, "std": std}


def compare(a, b) -> str:
    """``"A"``, ``"B"`` or ``"tie"``: which has the higher mean, a tie when the 95% intervals overlap."""
    sa, sb = mean_ci95(a), mean_ci95(b)
    if math.isnan(sa["ci95"]) or math.isnan(sb["ci95"]):
        return "tie"
    lo_a, hi_a = sa["mean"] - sa["ci95"], sa["mean"] + sa["ci95"]
    lo_b, hi_b = sb["mean"] - sb["ci95"], sb["mean"] + sb["ci95"]
    if lo_a > hi_b:
        return "A"
    if lo_b > hi_a:
        return "B"
    return "tie"


def paired_verdict(differences) -> str:
    """``"A"``, ``"B"`` or ``"tie"`` from per-seed differences ``b - a`` (same seed in both arms):
    a tie when their 95% t-interval contains 0 (or there is a single seed), else the arm the
    mean difference favours. Sharper than :func:`compare` when the seeds are paired: seed-to-seed
    variation common to both arms cancels."""
    if differences is None or len(differences) == 0:
        return "tie"
    s = mean_ci95(differences)
    if math.isnan(s["ci95"]) or abs(s["mean"]) <= s["ci95"]:
        return "tie"
    return "B" if s["mean"] > 0 else "A"


def equivalence_verdict(differences, margin: float) -> str:
    """An equivalence test on per-seed differences ``b - a`` with a margin fixed in advance:
    ``"equivalent"`` when their whole 95% t-interval lies inside ``(-margin, margin)``,
    ``"different"`` when it excludes 0 (and is not inside the margin), ``"inconclusive"`` when it
    contains 0 but reaches past a margin (too few seeds or too much spread to tell), or there is
    a single seed."""
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin!r}.")
    if differences is None or len(differences) < 2:
        return "inconclusive"
    s = mean_ci95(differences)
    lo, hi = s["mean"] - s["ci95"], s["mean"] + s["ci95"]
    if -margin < lo and hi < margin:
        return "equivalent"
    return "different" if lo > 0 or hi < 0 else "inconclusive"


def format_cell(values, digits: int = 3) -> str:
    """``mean ± ci95 (n)`` for a table cell."""
    s = mean_ci95(values)
    ci = "n/a" if math.isnan(s["ci95"]) else f"{s['ci95']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {ci} (n={s['n']})"
