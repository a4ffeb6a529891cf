"""Paired comparisons: t-test, Wilcoxon, bootstrap CI, Cohen's d_z, table; and of correctness ([CS24]): exact
McNemar, sign-flip permutation test, Benjamini-Hochberg, the table over tasks and conditions."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from icl_cmr.errors import InputError
from icl_cmr.stats import (PairedStatsConfig, accuracy_comparison_table, comparison_table, format_table,
                           mcnemar_exact, paired_comparison, paired_permutation_test, significance_stars,
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


# ----------------------------------------------------------------------------- paired correctness ([CS24])

def test_exact_mcnemar_on_a_hand_count():
    # 1 item only a gets right, 5 only b: two-sided binomial p = 2 (C(6,0) + C(6,1)) / 2^6 = 14/64
    a = np.array([1, 0, 0, 0, 0, 0, 1, 1, 0], dtype=bool)
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
    assert mcnemar_exact(a, b) == (1, 5, pytest.approx(14 / 64))
    assert mcnemar_exact(a, a) == (0, 0, 1.0)
    with pytest.raises(InputError) as caught:
        mcnemar_exact(a, b[:3])
    assert caught.value.parameters == ("correct_a", "correct_b")


def test_exact_paired_permutation_test_on_a_hand_count():
    # differences 1, 1, 1, 0: of the 16 sign patterns, 4 reach |mean| >= 0.75 -> p = 0.25
    difference, p = paired_permutation_test(np.array([1, 1, 1, 0.0]), np.zeros(4))
    assert difference == 0.75 and p == pytest.approx(0.25)
    assert paired_permutation_test(np.ones(3), np.ones(3)) == (0.0, 1.0)


def test_monte_carlo_permutation_p_is_scipys_with_the_seeded_generator():
    # 2^20 sign patterns > 10000 resamples: Monte Carlo, and the same stream as every saved stats.csv
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 2, 20).astype(float), rng.integers(0, 2, 20).astype(float)
    expected = scipy.stats.permutation_test((x, y), lambda a, b, axis: np.mean(a - b, axis=axis), vectorized=True,
                                            permutation_type="samples", n_resamples=10000,
                                            random_state=np.random.default_rng(7)).pvalue
    assert paired_permutation_test(x, y, seed=7) == (pytest.approx(np.mean(x - y)), expected)
    assert paired_permutation_test(x, y, seed=7) == paired_permutation_test(x, y, seed=7)


def _sign_flip_p(differences):
    """Reference: the exact two-sided sign-flip p-value, every sign pattern enumerated."""
    observed = abs(np.mean(differences))
    means = [abs(np.mean(np.array(signs) * differences))
             for signs in itertools.product((1, -1), repeat=len(differences))]
    return np.mean(np.array(means) >= observed - 1e-12)


def _benjamini_hochberg(p_values):
    """Reference: q_(i) = min over j >= i of p_(j) m / j, p sorted ascending, capped at 1."""
    p_values = np.asarray(p_values, dtype=float)
    order = np.argsort(p_values)
    m = len(p_values)
    ranked = p_values[order] * m / np.arange(1, m + 1)
    q = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    out = np.empty(m)
    out[order] = q
    return out


def test_accuracy_table_pairs_items_and_matches_hand_computed_tests():
    # one task, 8 items x 1 demonstration seed (2^8 sign patterns: exact), induction and two random draws
    intact = np.array([1, 1, 1, 1, 1, 0, 1, 1])
    induction = np.array([0, 0, 1, 0, 1, 0, 0, 1])
    draws = np.array([[1, 1, 0, 1, 1, 0, 1, 0], [1, 0, 1, 1, 1, 1, 1, 1]])
    rows = [dict(task="repetition", item=i, demo_seed=0, method="none", selection="none", ablate="none", draw=-1,
                 correct=bool(intact[i])) for i in range(8)]
    rows += [dict(task="repetition", item=i, demo_seed=0, method="zero", selection="heads", ablate="induction",
                  draw=-1, correct=bool(induction[i])) for i in range(8)]
    rows += [dict(task="repetition", item=i, demo_seed=0, method="zero", selection="heads", ablate="random", draw=d,
                  correct=bool(draws[d, i])) for d in range(2) for i in range(8)]
    items = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # pairing is by (item, seed), not by row order
    table = accuracy_comparison_table(items).set_index("comparison")
    random = draws.mean(axis=0)
    sides = {"intact": intact, "induction": induction, "random": random}
    for comparison in ("intact - induction", "intact - random", "random - induction"):
        a, b = (sides[name] for name in comparison.split(" - "))
        assert table.loc[comparison, "difference"] == pytest.approx(np.mean(a - b))
        assert table.loc[comparison, "permutation_p"] == pytest.approx(_sign_flip_p(a - b))
    # intact vs induction: 4 items only intact right, none only induction: p = 2 / 2^4
    assert tuple(table.loc["intact - induction", ["mcnemar_only_a", "mcnemar_only_b"]]) == (4, 0)
    assert table.loc["intact - induction", "mcnemar_p"] == pytest.approx(2 / 16)
    assert table[["mcnemar_p"]].drop("intact - induction").isna().all().all()  # two random draws: not 0/1
    np.testing.assert_allclose(table["permutation_q_bh"], _benjamini_hochberg(table["permutation_p"]))


def test_accuracy_table_refuses_conditions_run_on_other_prompts():
    items = pd.DataFrame([dict(task="repetition", item=0, demo_seed=0, method="none", selection="none", ablate="none",
                               draw=-1, correct=True),
                          dict(task="repetition", item=1, demo_seed=0, method="zero", selection="heads",
                               ablate="induction", draw=-1, correct=False)])
    with pytest.raises(InputError, match="not run on the same prompts"):
        accuracy_comparison_table(items)
