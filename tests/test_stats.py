"""Paired comparisons: t-test, Wilcoxon, bootstrap CI, Cohen's d_z, table."""
from __future__ import annotations

import math

import numpy as np
import pytest

from icl_cmr.errors import InputError
from icl_cmr.stats import (PairedStatsConfig, comparison_table, format_table, paired_comparison, significance_stars,
                           wilson_interval)


def test_paired_t_and_cohens_d_follow_their_formulas():
    a = np.array([1.0, 2.0, 4.0, 7.0, 3.0])
    b = np.array([0.5, 2.5, 2.0, 5.0, 3.5])
    d = a - b  # 0.5, -0.5, 2, 2, -0.5: mean 0.7
    sd = math.sqrt(sum((x - 0.7) ** 2 for x in d) / 4)
    result = paired_comparison(a, b, PairedStatsConfig(n_bootstrap=2000))
    assert result["n"] == 5 and result["df"] == 4
    assert result["mean_diff"] == pytest.approx(0.7)
    assert result["t"] == pytest.approx(0.7 / (sd / math.sqrt(5)))
    assert result["cohens_dz"] == pytest.approx(0.7 / sd)
    assert result["ci_low"] <= 0.7 <= result["ci_high"]


def test_wilcoxon_exact_p_when_every_difference_is_positive():
    # all 6 signed ranks positive: exact two-sided p = 2 / 2^6
    a = np.arange(6, dtype=float) + 1.0
    b = a - np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert paired_comparison(a, b, PairedStatsConfig(n_bootstrap=1000))["p_wilcoxon"] == pytest.approx(2 / 64)


def test_bootstrap_interval_is_seeded_and_covers_a_known_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=400)
    b = a - 0.3 + 0.1 * rng.normal(size=400)
    first = paired_comparison(a, b, PairedStatsConfig(n_bootstrap=2000, seed=5))
    again = paired_comparison(a, b, PairedStatsConfig(n_bootstrap=2000, seed=5))
    assert (first["ci_low"], first["ci_high"]) == (again["ci_low"], again["ci_high"])
    assert first["ci_low"] < 0.3 < first["ci_high"] and first["ci_high"] - first["ci_low"] < 0.05


def test_incomplete_pairs_are_dropped():
    a = np.array([1.0, np.nan, 3.0, 4.0])
    b = np.array([0.0, 1.0, np.nan, 2.0])
    result = paired_comparison(a, b, PairedStatsConfig(n_bootstrap=500))
    assert result["n"] == 2 and result["mean_diff"] == pytest.approx(1.5)
    with pytest.raises(InputError, match="at least 2 complete pairs"):
        paired_comparison(a[:3], b[:3])


@pytest.mark.parametrize("p, stars", [(0.0005, "***"), (0.005, "**"), (0.03, "*"), (0.05, "n.s."), (np.nan, "n.s.")])
def test_significance_stars(p, stars):
    assert significance_stars(p) == stars


def test_table_has_one_row_per_pair_in_order():
    rng = np.random.default_rng(0)
    samples = {"x": rng.normal(size=30), "y": rng.normal(size=30), "z": rng.normal(size=30)}
    table = comparison_table(samples, [("x", "y"), ("y", "z")], PairedStatsConfig(n_bootstrap=500))
    assert list(table["a"]) == ["x", "y"] and list(table["b"]) == ["y", "z"]
    assert "cohens_dz" in format_table(table)
    with pytest.raises(InputError, match="no condition 'w'"):
        comparison_table(samples, [("x", "w")])


def test_wilson_interval_matches_closed_form():
    for k, n in [(0, 10), (3, 10), (256, 256), (250, 256), (1, 1)]:
        z = 1.959963984540054
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        low, high = wilson_interval(k, n)
        assert low == pytest.approx(centre - half, abs=1e-9)
        assert high == pytest.approx(centre + half, abs=1e-9)
