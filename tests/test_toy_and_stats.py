"""The 2-D toy's closed-form support metrics and the seed-statistics helpers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdp_jax import stats
from cdp_jax.data import toy


def test_toy_samples_lie_on_support_and_cover_modes():
    data = toy.sample_dataset(jax.random.PRNGKey(0), 4096)
    assert data["observations"].shape == (4096, 1) and data["actions"].shape == (4096, 2)
    obs = jnp.linspace(-0.9, 0.9, 8)
    # 256 fresh samples per observation from the true distribution
    keys = jax.random.split(jax.random.PRNGKey(1), 8)
    centres = toy.mode_centres(obs)
    which = jax.vmap(lambda k: jax.random.randint(k, (256,), 0, 4))(keys)
    actions = jnp.take_along_axis(centres, which[..., None], axis=1) + 0.05 * jax.random.normal(
        jax.random.PRNGKey(2), (8, 256, 2))
    m = toy.support_metrics(obs, actions)
    assert float(m["on_support"]) > 0.98  # 3-sigma disc of a 2-D Gaussian holds 98.9%
    assert float(m["coverage"]) == 1.0
    assert float(m["mode_balance"]) > 0.9
    np.testing.assert_allclose(float(m["distance"]), 0.05 * math.sqrt(math.pi / 2), rtol=0.1)


def test_toy_collapsed_samples_are_off_support():
    obs = jnp.zeros((2,))
    m = toy.support_metrics(obs, jnp.zeros((2, 16, 2)))  # every action at the mean of the modes
    assert float(m["on_support"]) == 0.0 and float(m["coverage"]) == 0.0
    assert float(m["mode_balance"]) == 0.0
    np.testing.assert_allclose(float(m["distance"]), 0.6, rtol=1e-6)


def test_mean_ci95_matches_t_interval():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    s = stats.mean_ci95(x)
    assert s["mean"] == 3.0 and s["n"] == 5
    np.testing.assert_allclose(s["ci95"], 2.776 * np.std(x, ddof=1) / math.sqrt(5), rtol=1e-9)
    assert math.isnan(stats.mean_ci95([1.0])["ci95"])
    with pytest.raises(ValueError, match="at least one value"):
        stats.mean_ci95([])


def test_compare_reports_ties_when_intervals_overlap():
    assert stats.compare([10, 11, 12], [0, 1, 2]) == "A"
    assert stats.compare([0, 1, 2], [10, 11, 12]) == "B"
    assert stats.compare([0, 5, 10], [1, 6, 11]) == "tie"
    assert "± " in stats.format_cell([1.0, 2.0])


def test_paired_verdict_uses_the_interval_of_the_differences():
    a = [10.0, 20.0, 30.0, 40.0, 50.0]
    b = [11.1, 20.9, 31.0, 41.05, 50.95]  # b - a = 1.0 +- 0.098 (t, 4 dof): b wins, paired
    diff = [y - x for x, y in zip(a, b, strict=True)]
    assert stats.compare(a, b) == "tie"  # the arms' own intervals overlap
    assert stats.paired_verdict(diff) == "B"
    assert stats.paired_verdict([-d for d in diff]) == "A"
    assert stats.paired_verdict([1.0, -1.0, 2.0, -2.0]) == "tie"  # the interval holds 0
    assert stats.paired_verdict([3.0]) == "tie" and stats.paired_verdict(None) == "tie"


def test_equivalence_verdict_against_a_margin():
    # mean 1.0, 95% t-interval half-width 2.776 * 0.1 / sqrt(5) = 0.124 (4 dof)
    tight = [0.9, 1.0, 1.1, 0.95, 1.05]
    assert stats.equivalence_verdict(tight, margin=3.0) == "equivalent"  # inside, though != 0
    assert stats.equivalence_verdict(tight, margin=1.0) == "different"  # excludes 0, past 1
    assert stats.equivalence_verdict([-4.0, 4.0, -3.0, 3.0], margin=3.0) == "inconclusive"
    assert stats.equivalence_verdict([5.0, 6.0, 5.5, 6.5], margin=3.0) == "different"
    assert stats.equivalence_verdict([0.1, -0.1, 0.2, -0.2], margin=3.0) == "equivalent"
    assert stats.equivalence_verdict([1.0], margin=3.0) == "inconclusive"
    with pytest.raises(ValueError, match="margin"):
        stats.equivalence_verdict(tight, margin=0.0)


@pytest.mark.slow
def test_toy_study_quick_runs(tmp_path):
    from experiments import toy_study

    out = tmp_path / "toy.json"
    results = toy_study.main(["--quick", "--out", str(out)])
    assert out.exists()
    assert set(results["arms"]) == {"vanilla", "cdp_network", "cdp_drift"}
    for arm in results["arms"].values():
        assert len(arm["per_seed"]) == 2
        assert np.isfinite(arm["summary"]["log_growth"]["mean"])
