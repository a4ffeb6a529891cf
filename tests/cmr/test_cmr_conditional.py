"""The conditional lag-CRP of CMR's own recalls (issue 16): psifr's rules, pooling, the grid."""
from __future__ import annotations

import json

import numpy as np
import pytest

from icl_cmr.cmr.model import CMRSettings, crp_from_draws, mean_and_sem_over_starts, simulate_recall
from icl_cmr.cmr.conditional import (conditional_cmr_crp, conditional_lag_counts, crp_and_conditional_crp,
                                     pooled_conditional_crp)
from icl_cmr.cmr.grid import GridSpec, compute_point
from icl_cmr.experiments.cmr_grid import run_grid
from icl_cmr.files.grids import grid_file_names, load_cmr_grid
from icl_cmr.config import CMR_GRID_MEAN_FILENAME, CMR_GRID_SEM_FILENAME
from icl_cmr.errors import InputError
from icl_cmr.humans.recall import lag_crps_by_unit, simulated_recall_table

SMALL = CMRSettings(n_items=30, n_trials=20, max_draws=15, n_start=3)


def test_counts_follow_psifr_rules_on_a_hand_made_sequence():
    # Start item 1, then draws 2, 3, 1 (repeat of s0), 4, 0, 4 (repeat); list of 6 items; lags -4..4.
    #   1 -> 2: lag +1; items not yet recalled 0, 2, 3, 4, 5 -> possible -1, +1, +2, +3, +4
    #   2 -> 3: lag +1; not recalled 0, 3, 4, 5 -> possible -2, +1, +2, +3
    #   3 -> 1 (to a repeat) and 1 -> 4 (from a repeat): not counted, nothing bridges them
    #   4 -> 0: lag -4; not recalled 0, 5 -> possible -4, +1
    #   0 -> 4 (to a repeat): not counted
    draws = np.array([[[2, 3, 1, 4, 0, 4, -1, -1]]])
    actual, possible = conditional_lag_counts(draws, np.array([1]), n_items=6, max_lag=4)
    lags = np.arange(-4, 5)
    expected_actual = dict(zip(lags, [1, 0, 0, 0, 0, 2, 0, 0, 0]))
    expected_possible = dict(zip(lags, [1, 0, 1, 1, 0, 3, 2, 2, 1]))
    assert dict(zip(lags, actual[0, 0])) == expected_actual
    assert dict(zip(lags, possible[0, 0])) == expected_possible


def test_counts_equal_psifr_on_simulated_recalls_with_repeats():
    draws = simulate_recall(0.3, 0.5, 0.4, SMALL, np.random.default_rng(11))
    sequences = [[s] + [x for x in row if x >= 0] for s, rows in zip(SMALL.start_positions, draws) for row in rows]
    assert any(len(set(seq)) < len(seq) for seq in sequences), "the test needs recalls with repeats"
    actual, possible = conditional_lag_counts(draws, SMALL.start_positions, SMALL.n_items, max_lag=8)
    table = simulated_recall_table(draws, SMALL.start_positions, SMALL.n_items)
    from psifr import fr

    psifr_counts = fr.lag_crp(fr.merge_free_recall(table)).reset_index().set_index("lag")
    for column, ours in (("actual", actual), ("possible", possible)):
        theirs = psifr_counts[column].reindex(np.arange(-8, 9).astype(float)).fillna(0).to_numpy()
        np.testing.assert_array_equal(ours.sum(axis=(0, 1)), theirs)


def test_pooled_crp_and_jackknife_equal_a_leave_one_group_out_loop():
    rng = np.random.default_rng(3)
    possible = rng.integers(0, 6, size=(2, 9, 3))
    actual = rng.binomial(possible, 0.4)
    crp, se = pooled_conditional_crp(actual, possible, n_groups=3)
    expected_crp = actual.sum(axis=(0, 1)) / possible.sum(axis=(0, 1))
    np.testing.assert_allclose(crp, expected_crp)
    left_out = []
    for group in range(3):
        keep = [t for t in range(9) if t % 3 != group]
        left_out.append(actual[:, keep].sum(axis=(0, 1)) / possible[:, keep].sum(axis=(0, 1)))
    left_out = np.array(left_out)
    expected_se = np.sqrt(2 / 3 * ((left_out - left_out.mean(axis=0)) ** 2).sum(axis=0))
    np.testing.assert_allclose(se, expected_se)


def test_a_lag_never_possible_is_nan():
    actual = np.zeros((1, 4, 3), dtype=int)
    possible = np.zeros((1, 4, 3), dtype=int)
    possible[..., 2] = 1
    crp, se = pooled_conditional_crp(actual, possible, n_groups=2)
    assert np.isnan(crp[0]) and np.isnan(se[0]) and crp[2] == 0.0


def test_both_crps_come_from_the_same_recalls():
    histogram, conditional, se = crp_and_conditional_crp(0.4, 0.7, 0.3, SMALL, np.random.default_rng(5))
    draws = simulate_recall(0.4, 0.7, 0.3, SMALL, np.random.default_rng(5))
    np.testing.assert_array_equal(histogram, crp_from_draws(draws, SMALL.start_positions))
    expected, expected_se = pooled_conditional_crp(*conditional_lag_counts(draws, SMALL.start_positions,
                                                                           SMALL.n_items, SMALL.max_lag))
    np.testing.assert_array_equal(conditional, expected)
    np.testing.assert_array_equal(se, expected_se)
    assert np.isnan(conditional[SMALL.max_lag])                     # lag 0 is never a transition


def test_without_repeats_every_draw_is_a_counted_transition():
    # beta_rec = 1, gamma_ft = 0: the context is the last item, which retrieves only later items, so a
    # recall is strictly increasing; every draw's lag is counted (the lag histogram's transitions).
    draws = simulate_recall(0.5, 1.0, 0.0, SMALL, np.random.default_rng(2))
    actual, _ = conditional_lag_counts(draws, SMALL.start_positions, SMALL.n_items, max_lag=SMALL.n_items - 1)
    np.testing.assert_array_equal(actual.sum(axis=-1), (draws >= 0).sum(axis=-1))


@pytest.mark.slow
@pytest.mark.parametrize("point", [(5, 4, 3), (0, 13, 6)])
def test_histogram_of_the_conditional_grids_recalls_is_the_shipped_grid(repo_root, point):
    """The conditional grid point comes from the very recalls behind the shipped lag-histogram grid point."""
    mean, sem = load_cmr_grid(repo_root / "saved_crps" / CMR_GRID_MEAN_FILENAME,
                              repo_root / "saved_crps" / CMR_GRID_SEM_FILENAME, (20, 21, 11, 17))
    spec = GridSpec.from_resolution(method="simulate", quantity="conditional")
    histogram, conditional, se = crp_and_conditional_crp(spec.beta_enc[point[0]], spec.beta_rec[point[1]],
                                                         spec.gamma_ft[point[2]], spec.settings,
                                                         spec.point_rng(*point))
    recomputed_mean, recomputed_sem = mean_and_sem_over_starts(histogram)
    np.testing.assert_array_equal(recomputed_mean, mean[point])
    np.testing.assert_array_equal(recomputed_sem, sem[point])
    np.testing.assert_array_equal(compute_point(spec, *point), np.stack([conditional, se]))


@pytest.mark.parametrize("point", [(5, 4, 3), (19, 20, 10), (9, 0, 0)])
def test_shipped_conditional_grid_points_are_reproduced_bit_for_bit(repo_root, point):
    names = grid_file_names(20, 11, "conditional")
    shipped = np.load(repo_root / "saved_crps" / names[0])
    shipped_se = np.load(repo_root / "saved_crps" / names[1])
    spec = GridSpec.from_resolution(method="simulate", quantity="conditional")
    recomputed = compute_point(spec, *point)
    np.testing.assert_array_equal(recomputed[0], shipped[point])
    np.testing.assert_array_equal(recomputed[1], shipped_se[point])
    meta = json.loads((repo_root / "saved_crps" / names[2]).read_text())
    assert meta["parameters"] == spec.to_json()


def test_conditional_grid_runs_in_slices_with_lag_zero_nan(tmp_path):
    spec = GridSpec.from_resolution(2, 2, settings=SMALL, seed=4, method="simulate", quantity="conditional")
    mean, se, _ = run_grid(spec, tmp_path / "slices", workers=1, progress=False)
    assert mean.shape == (2, 3, 2, 17)
    assert np.isnan(mean[..., 8]).all()
    np.testing.assert_array_equal(mean[1, 2, 0], conditional_cmr_crp(
        spec.beta_enc[1], spec.beta_rec[2], spec.gamma_ft[0], SMALL, spec.point_rng(1, 2, 0))[0])


def test_the_conditional_grid_is_always_simulated_and_recorded_as_such():
    with pytest.raises(InputError, match="simulate"):
        GridSpec.from_resolution(2, 2, quantity="conditional")
    with pytest.raises(InputError, match="quantity"):
        GridSpec.from_resolution(2, 2, quantity="other")
    assert "quantity" not in GridSpec.from_resolution().to_json()          # the paper's grid keeps its spec
    assert GridSpec.from_resolution(method="simulate", quantity="conditional").to_json()["quantity"] == "conditional"
    assert grid_file_names(20, 11, "conditional")[0] == "cmr_cond_crp_avg_20_11.npy"


def test_human_and_model_counts_agree_through_the_human_path():
    """A simulated subject written as psifr data gives, per lag, the grid's pooled conditional CRP."""
    rng = np.random.default_rng(8)
    draws = simulate_recall(0.6, 0.6, 0.2, SMALL, rng)
    from psifr import fr

    person = lag_crps_by_unit(fr.merge_free_recall(simulated_recall_table(draws, SMALL.start_positions,
                                                                          SMALL.n_items)), max_lag=8)
    model, _ = pooled_conditional_crp(*conditional_lag_counts(draws, SMALL.start_positions, SMALL.n_items, 8))
    np.testing.assert_allclose(person.prob[0], model, equal_nan=True)


def test_counts_refuse_draws_outside_the_list():
    with pytest.raises(InputError, match="items 0..5"):
        conditional_lag_counts(np.array([[[7]]]), np.array([0]), n_items=6, max_lag=2)


def test_an_interrupted_conditional_grid_resumes_bit_identically(tmp_path):
    spec = GridSpec.from_resolution(2, 2, settings=SMALL, seed=6, method="simulate", quantity="conditional")
    full_mean, full_se, _ = run_grid(spec, tmp_path / "full", workers=1, progress=False)

    class Interrupted(Exception):
        pass

    def stop_after_two(slice_id, n_done):
        if n_done == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_grid(spec, tmp_path / "cut", workers=1, progress=False, on_slice_done=stop_after_two)
    mean, se, n_resumed = run_grid(spec, tmp_path / "cut", workers=1, progress=False)
    assert n_resumed == 2                                   # the saved slices were kept, not found damaged
    np.testing.assert_array_equal(mean, full_mean)
    np.testing.assert_array_equal(se, full_se)
