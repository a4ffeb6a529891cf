"""Per-layer statistics and top-N head selection, including the authors' selection defects."""
from __future__ import annotations

import numpy as np
import pytest

from icl_cmr.errors import InputError
from icl_cmr.fits.layers import (HUMAN_FITS, gather_selected, percent_below_threshold, relative_layer_position,
                                 select_top_heads, summarize_by_layer)


def test_relative_layer_position_is_l_over_n_percent():
    np.testing.assert_allclose(relative_layer_position(4), [0, 25, 50, 75])
    with pytest.raises(InputError):
        relative_layer_position(0)


def test_percent_below_threshold_counts_only_finite_heads():
    distance = np.array([[0.1, 0.7, 0.4, np.nan],
                         [0.9, 0.8, 0.6, 0.55],
                         [np.nan, np.nan, np.nan, np.nan]])
    percent = percent_below_threshold(distance, 0.5)
    np.testing.assert_allclose(percent[:2], [200 / 3, 0.0])    # 2 of 3 finite heads; 0 of 4
    assert np.isnan(percent[2])
    # Strictly below: a head exactly at the threshold is not CMR-like.
    assert percent_below_threshold(np.array([[0.5, 0.1]]), 0.5)[0] == 50.0


def test_percent_below_threshold_keeps_leading_axes():
    distance = np.random.default_rng(0).random((5, 3, 4))
    percent = percent_below_threshold(distance, 0.5)
    assert percent.shape == (5, 3)
    np.testing.assert_allclose(percent, (distance < 0.5).mean(axis=-1) * 100)


def test_summarize_by_layer_hand_case():
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, np.nan]])
    mask = np.array([[True, False, True], [False, True, True]])
    summary = summarize_by_layer(values, mask)
    np.testing.assert_allclose(summary.mean, [2.0, 5.0])       # (1+3)/2 ; NaN head left out
    np.testing.assert_allclose(summary.minimum, [1.0, 5.0])
    np.testing.assert_allclose(summary.maximum, [3.0, 5.0])
    np.testing.assert_array_equal(summary.count, [2, 1])


def test_summarize_by_layer_with_parameters_and_a_fixed_mask_over_time():
    rng = np.random.default_rng(1)
    params = rng.random((4, 3, 5, 3))                          # [T, L, H, P]
    mask = rng.random((3, 5)) < 0.5                            # final-checkpoint mask [L, H]
    mask[2] = False                                            # a layer with no CMR-like head
    summary = summarize_by_layer(params, mask, n_trailing=1)
    assert summary.mean.shape == (4, 3, 3)
    for t in range(4):
        for layer in range(2):
            chosen = params[t, layer][mask[layer]]
            np.testing.assert_allclose(summary.mean[t, layer], chosen.mean(axis=0))
            np.testing.assert_allclose(summary.maximum[t, layer], chosen.max(axis=0))
    assert np.isnan(summary.mean[:, 2]).all()


def test_select_lowest_and_highest():
    values = {"a": np.array([[0.3, 0.1], [0.2, 0.9]])}
    lowest = select_top_heads(values, 2, largest=False)
    assert list(zip(lowest.layer, lowest.head)) == [(0, 1), (1, 0)]
    highest = select_top_heads(values, 2, largest=True)
    assert list(zip(highest.layer, highest.head)) == [(1, 1), (0, 0)]
    np.testing.assert_allclose(highest.value, [0.9, 0.3])


def test_nan_is_never_selected_as_highest():
    # The authors' argpartition puts NaN above every number, so NaN matching scores were "top".
    values = {"a": np.array([[np.nan, 0.2, 0.5], [np.nan, 0.1, np.nan]])}
    selection = select_top_heads(values, 2, largest=True)
    np.testing.assert_allclose(selection.value, [0.5, 0.2])
    assert np.isfinite(select_top_heads(values, 2, largest=False).value).all()


def test_fewer_finite_heads_than_requested_returns_what_exists():
    selection = select_top_heads({"a": np.array([[np.nan, 0.2], [0.1, np.nan]])}, 5, largest=True)
    assert len(selection) == 2 and selection.n_requested == 5


def test_pooled_selection_keeps_each_models_own_indices():
    # Two models of different shapes; the best heads sit in both.
    small = np.array([[0.9, 0.0], [0.0, 0.8]])                 # 2 x 2
    large = np.zeros((3, 4))
    large[2, 3] = 0.95
    large[0, 1] = 0.85
    selection = select_top_heads({"small": small, "large": large}, 4, largest=True)
    assert list(selection.model) == ["large", "small", "large", "small"]
    assert list(zip(selection.layer, selection.head)) == [(2, 3), (0, 0), (0, 1), (1, 1)]
    assert list(selection.labels) == ["large-L2H3", "small-L0H0", "large-L0H1", "small-L1H1"]
    assert selection.by_model() == {"large": ["L2H3", "L0H1"], "small": ["L0H0", "L1H1"]}
    # Values gathered from per-model arrays come from the right model (the authors indexed the
    # pooled positions into the last model's array only).
    over_time = {"small": np.stack([small, small * 2]), "large": np.stack([large, large * 2])}
    gathered = gather_selected(selection, over_time)
    np.testing.assert_allclose(gathered, [[0.95, 1.9], [0.9, 1.8], [0.85, 1.7], [0.8, 1.6]])


def test_gather_selected_with_parameters():
    params = {"m": np.arange(2 * 2 * 3 * 3, dtype=float).reshape(2, 2, 3, 3)}   # [T, L, H, 3]
    selection = select_top_heads({"m": np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])}, 2, largest=True)
    gathered = gather_selected(selection, params)
    assert gathered.shape == (2, 2, 3)
    np.testing.assert_array_equal(gathered[0], params["m"][:, 1, 2])
    np.testing.assert_array_equal(gathered[1], params["m"][:, 0, 1])


def test_ties_keep_pool_order():
    selection = select_top_heads({"a": np.array([[0.5, 0.5]]), "b": np.array([[0.5]])}, 3, largest=False)
    assert list(selection.labels) == ["a-L0H0", "a-L0H1", "b-L0H0"]


def test_bad_selection_inputs():
    with pytest.raises(InputError):
        select_top_heads({"a": np.zeros((2, 2))}, 0, largest=True)
    with pytest.raises(InputError):
        select_top_heads({"a": np.zeros(4)}, 1, largest=True)


def test_human_fits_are_the_seven_listed_in_design():
    assert len(HUMAN_FITS) == 7
    assert HUMAN_FITS["Sederberg 2008"] == (0.627, 0.627)
    assert HUMAN_FITS["Kahana 2002"] == (0.79, 0.59)
