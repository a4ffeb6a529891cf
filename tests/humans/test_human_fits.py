"""People in CMR's parameter space (issue 16): recovery of a simulated subject, the fits, the statistics,
and the top CMR-like heads over training."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from icl_cmr.cmr.model import CMRSettings, simulate_recall
from icl_cmr.cmr.grid import GridSpec
from icl_cmr.experiments.cmr_grid import run_grid
from icl_cmr.config import CMR_GRID_MEAN_FILENAME
from icl_cmr.errors import InputError
from icl_cmr.fits.distance import CmrGrid, cmr_distance, cmr_fit_patterns, fit_heads
from icl_cmr.heads.results import HeadScores
from icl_cmr.humans.fits import (GroupComparisonConfig, compare_groups, fit_people, near_best_ranges, people_table,
                                 people_vs_heads_table, share_below, top_sets_over_training)
from icl_cmr.config import HUMAN_FIT_LAGS
from icl_cmr.files.grids import read_conditional_grid
from icl_cmr.humans.recall import UnitLagCrps, lag_crps_by_unit, simulated_recall_table

GRID_SETTINGS = CMRSettings(n_items=50, n_trials=200, max_draws=20, n_start=10)


@pytest.fixture(scope="module")
def small_conditional_grid(tmp_path_factory):
    """A 4 x 5 x 3 conditional grid (steps 0.25 in beta, 0.5 in gamma), simulated once."""
    spec = GridSpec.from_resolution(4, 3, settings=GRID_SETTINGS, seed=1, method="simulate", quantity="conditional")
    mean, se, _ = run_grid(spec, tmp_path_factory.mktemp("grid"), workers=1, progress=False)
    return CmrGrid(mean=mean, beta_enc=spec.beta_enc, beta_rec=spec.beta_rec, gamma_ft=spec.gamma_ft, sem=se)


@pytest.mark.slow
@pytest.mark.parametrize("truth", [(0.5, 0.5, 0.5), (0.75, 0.25, 0.0), (0.25, 0.75, 1.0)])
def test_a_simulated_subject_is_recovered_within_one_grid_step(small_conditional_grid, truth):
    """300 lists recalled by CMR at known parameters, analysed as human data (psifr), fitted back."""
    from psifr import fr

    subject = CMRSettings(n_items=50, n_trials=30, max_draws=20, n_start=10)
    draws = simulate_recall(*truth, subject, np.random.default_rng(2024))       # not the grid's generators
    crps = lag_crps_by_unit(fr.merge_free_recall(simulated_recall_table(draws, subject.start_positions, 50)))
    fit = fit_people(crps, small_conditional_grid)
    steps = np.array([0.25, 0.25, 0.5])
    assert np.all(np.abs(fit.params[0] - np.array(truth)) <= steps + 1e-9), fit.params[0]
    assert fit.distance[0] < 0.1


def test_a_curve_that_is_an_affine_copy_of_a_grid_point_fits_it_exactly(small_conditional_grid):
    grid = small_conditional_grid
    point = (1, 3, 1)
    lags = np.arange(-8, 9)
    curve = 0.05 + 0.7 * grid.mean[point]       # D is unchanged by shifting and scaling the person's curve
    crps = UnitLagCrps(units=pd.DataFrame({"subject": [7], "n_lists": [1], "n_transitions": [1]}), lags=lags,
                       actual=np.zeros((1, 17), int), possible=np.ones((1, 17), int), prob=curve[None],
                       dataset="made-up", by="subject")
    fit = fit_people(crps, grid)
    assert fit.distance[0] == pytest.approx(0.0, abs=1e-20)
    np.testing.assert_allclose(fit.params[0], grid.parameters_at(np.array(point)))
    np.testing.assert_array_equal(fit.lags, HUMAN_FIT_LAGS)
    table = people_table(crps, fit, threshold=0.5)
    observed = table[[f"crp_lag{lag:+d}" for lag in HUMAN_FIT_LAGS]].to_numpy()
    fitted = table[[f"fitted_crp_lag{lag:+d}" for lag in HUMAN_FIT_LAGS]].to_numpy()
    np.testing.assert_allclose(fitted, observed, atol=1e-12)
    assert table["cmr_like"].tolist() == [True] and table["subject"].tolist() == [7]


def test_people_are_never_fitted_to_the_lag_histogram_grid(repo_root):
    with pytest.raises(InputError, match="--quantity conditional"):
        read_conditional_grid(repo_root / "saved_crps" / CMR_GRID_MEAN_FILENAME)


def test_compare_groups_against_hand_counts():
    people = np.array([0.2, 0.4, 0.4, 0.9, np.nan])
    heads = np.array([0.1, 0.4, 0.5])
    out = compare_groups(people, heads, GroupComparisonConfig(n_bootstrap=2000, seed=1))
    assert out["n_people"] == 4 and out["n_heads"] == 3
    assert out["median_people"] == pytest.approx(0.4) and out["median_heads"] == pytest.approx(0.4)
    assert out["median_difference"] == pytest.approx(0.0)
    # U of the people: pairs (person > head) + 1/2 (tie), counted by hand over the 12 pairs
    u = sum(1.0 if p > h else 0.5 if p == h else 0.0 for p in people[:4] for h in heads)
    assert out["mannwhitney_u"] == pytest.approx(u)
    assert out["prob_people_greater"] == pytest.approx(u / 12)
    assert 0 < out["p_value"] <= 1
    # a difference of two medians of the data: between the extreme differences
    assert -0.3 <= out["ci_low"] <= out["median_difference"] <= out["ci_high"] <= 0.8
    assert out["iqr_people_low"] == pytest.approx(np.percentile(people[:4], 25))


def test_compare_groups_separated_samples():
    out = compare_groups(np.arange(10) + 10.0, np.arange(10.0))
    assert out["mannwhitney_u"] == 100.0 and out["prob_people_greater"] == 1.0
    assert out["median_difference"] == 10.0 and out["ci_low"] > 0
    assert out["p_value"] < 0.001


def test_compare_groups_too_small_gives_nan_interval():
    out = compare_groups(np.array([0.5]), np.array([0.2, 0.3]))
    assert np.isnan(out["ci_low"]) and np.isnan(out["ci_high"])
    assert out["median_difference"] == pytest.approx(0.25)


def test_share_below_with_wilson_interval():
    out = share_below(np.array([0.1, 0.6, 0.2, np.nan, 0.49, 0.5]), 0.5)
    assert (out["n_below"], out["n_fitted"]) == (3, 5) and out["share"] == pytest.approx(0.6)
    # Wilson interval by its formula, z = 1.959964
    z, n, p = 1.959963984540054, 5, 0.6
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert out["share_ci_low"] == pytest.approx(centre - half) and out["share_ci_high"] == pytest.approx(centre + half)


def test_people_vs_heads_compares_cmr_like_units_only():
    people = pd.DataFrame({"cmr_distance": [0.1, 0.2, 0.9], "beta_enc": [0.5, 0.7, 0.05],
                           "beta_rec": [0.5, 0.5, 0.0], "gamma_ft": [0.1, 0.3, 1.0]})
    heads = pd.DataFrame({"model": ["m"] * 3, "cmr_distance": [0.05, 0.3, np.nan], "beta_enc": [0.9, 0.8, np.nan],
                          "beta_rec": [1.0, 0.9, np.nan], "gamma_ft": [0.0, 0.0, np.nan]})
    table = people_vs_heads_table(people, heads, 0.5, GroupComparisonConfig(n_bootstrap=500))
    row = table.set_index("quantity").loc["beta_enc"]
    assert (row["n_people"], row["n_heads"]) == (2, 2)
    assert row["median_people"] == pytest.approx(0.6) and row["median_heads"] == pytest.approx(0.85)
    assert (row["people_n_below"], row["people_n_fitted"]) == (2, 3)
    assert (row["heads_n_below"], row["heads_n_fitted"]) == (2, 2)
    assert table["quantity"].tolist() == ["cmr_distance", "beta_enc", "beta_rec", "gamma_ft"]


def test_near_best_ranges_span_the_points_within_the_slack(small_conditional_grid):
    grid = small_conditional_grid
    lags = np.arange(-8, 9)
    curve = 0.02 + 0.5 * grid.mean[(2, 1, 2)]
    flat = np.full(17, 0.3)                                            # no fit: variance 0
    exact = near_best_ranges(np.stack([curve, flat]), lags, grid, HUMAN_FIT_LAGS, tolerance=0.0)
    assert exact["n_near"].tolist() == [1, 0]
    np.testing.assert_allclose(exact["low"][0], grid.parameters_at(np.array((2, 1, 2))))
    np.testing.assert_allclose(exact["high"][0], exact["low"][0])
    assert np.isnan(exact["low"][1]).all()
    everything = near_best_ranges(curve[None], lags, grid, HUMAN_FIT_LAGS, tolerance=1e9)
    assert everything["n_near"][0] == np.prod(grid.shape)
    np.testing.assert_allclose(everything["low"][0], [grid.beta_enc.min(), grid.beta_rec.min(), grid.gamma_ft.min()])
    np.testing.assert_allclose(everything["high"][0], [1.0, 1.0, 1.0])
    # a slack between: exactly the points a direct loop over the grid finds within it
    distances = np.array([cmr_distance(curve[None, [3, 4, 5, 6, 7, 9, 10, 11, 12, 13]], pattern[None])[0][0, 0]
                          for pattern in cmr_fit_patterns(grid, HUMAN_FIT_LAGS).reshape(-1, 10)])
    within = distances <= distances.min() + 0.05
    middle = near_best_ranges(curve[None], lags, grid, HUMAN_FIT_LAGS, tolerance=0.05)
    assert middle["n_near"][0] == within.sum()


# ----------------------------------------------------------------------------- heads over training

def _one_layer(*curves):
    """HeadScores of a one-layer model whose heads have the given attention CRPs at lags -8..+8."""
    crp = np.stack(curves)[None]                                                     # [1, H, 17]
    shape = crp.shape[:2]
    return HeadScores(matching_score=np.zeros(shape), copying_score=np.zeros(shape), crp=crp,
                      crp_sem=np.full(crp.shape, np.nan), labels=np.array([[f"L0H{h}" for h in range(shape[1])]]),
                      lags=np.arange(-8, 9))


@pytest.fixture(scope="module")
def two_models_over_training():
    """A random lag-histogram grid and two models at two checkpoints: model a's head 0 is an affine copy of a
    grid point at both (D = 0), its head 1 noise; model b's head 0 a noisy copy, its head 1 flat (never fitted)."""
    rng = np.random.default_rng(5)
    mean = rng.uniform(0.01, 1.0, (2, 3, 2, 17))
    mean /= mean.sum(axis=-1, keepdims=True)
    grid = CmrGrid(mean=mean, beta_enc=[0.5, 1.0], beta_rec=[0.0, 0.5, 1.0], gamma_ft=[0.0, 1.0])
    points = [(0, 1, 0), (1, 2, 1)]                                                 # head a0's point at each checkpoint
    series = {"a": [_one_layer(0.1 + 2 * mean[point], rng.uniform(size=17)) for point in points],
              "b": [_one_layer(mean[(1, 0, 0)] + rng.normal(0, 0.01, 17), np.full(17, 0.2)) for _ in points]}
    return grid, points, series


def test_the_top_head_is_followed_back_from_the_last_checkpoint(two_models_over_training):
    grid, points, series = two_models_over_training
    sets = top_sets_over_training(series, grid, [1], steps=[1000, 2000])
    expected = np.array([[0.0, *grid.parameters_at(np.array(point))] for point in points])     # [T, Q]
    np.testing.assert_allclose(sets.mean["top 1"], expected, atol=1e-12)
    np.testing.assert_array_equal(sets.sem["top 1"], np.zeros((2, 4)))                  # one head: no spread
    np.testing.assert_allclose(sets.final_points["top 1"], expected[-1:, 1:3])
    assert sets.selections["top 1"].labels.tolist() == ["a-L0H0"]
    assert sets.steps.tolist() == [1000, 2000]
    assert sets.quantities == ("cmr_distance", "beta_enc", "beta_rec", "gamma_ft")


def test_a_top_set_larger_than_the_fitted_heads_averages_those_and_warns(two_models_over_training, caplog):
    grid, _, series = two_models_over_training
    with caplog.at_level(logging.WARNING):
        sets = top_sets_over_training(series, grid, [5, 5], steps=[1000, 2000])
    assert list(sets.mean) == ["top 5"] and len(sets.selections["top 5"]) == 3     # the flat head has no D
    assert "only 3 heads" in caplog.text
    # each of the three fitted heads fitted on its own, then averaged by hand
    values = np.array([[np.r_[fit.distance.ravel()[0], fit.params.reshape(3)]
                        for fit in (fit_heads(crp[None, None], grid, attn_lags=np.arange(-8, 9))
                                    for crp in (series["a"][t].crp[0, 0], series["a"][t].crp[0, 1],
                                                series["b"][t].crp[0, 0]))]
                       for t in range(2)])                                              # [T, 3 heads, Q]
    np.testing.assert_allclose(sets.mean["top 5"], values.mean(axis=1))
    np.testing.assert_allclose(sets.sem["top 5"], values.std(axis=1, ddof=1) / np.sqrt(3))


def test_top_sets_need_one_step_per_checkpoint(two_models_over_training):
    grid, _, series = two_models_over_training
    with pytest.raises(InputError, match="`steps` has 3 values for 2 checkpoints") as err:
        top_sets_over_training(series, grid, [1], steps=[1, 2, 3])
    assert err.value.parameters == ("steps",)
