"""How far back a model recalls: the logistic fit of accuracy against log2 distance (issue 23)."""
from __future__ import annotations

import numpy as np
import pytest

from icl_cmr.errors import InputError
from icl_cmr.synthetic.recall_distance import fit_recall_distance

CHANCE = 1 / 15


def _simulated(midpoint, slope, n=40_000, seed=0):
    rng = np.random.default_rng(seed)
    distances = 2 ** rng.uniform(1, 20, n)
    recalled = 1 / (1 + np.exp(slope * (np.log2(distances) - midpoint)))
    return distances.astype(int) + 1, rng.random(n) < CHANCE + (1 - CHANCE) * recalled


@pytest.mark.parametrize("midpoint, slope", [(14.0, 1.0), (9.5, 2.5)])
def test_the_fit_recovers_a_known_curve_and_its_distances(midpoint, slope):
    fit = fit_recall_distance(*_simulated(midpoint, slope), chance=CHANCE)
    assert fit.midpoint_log2 == pytest.approx(midpoint, abs=0.1) and fit.slope == pytest.approx(slope, rel=0.08)
    # 50% accuracy: (1 - chance) / (1 + e^z) = 0.5 - chance
    expected_50 = midpoint + np.log((1 - CHANCE) / (0.5 - CHANCE) - 1) / slope
    assert fit.log2_distance_at(0.5) == pytest.approx(expected_50, abs=0.15)
    assert fit.log2_distance_at(0.99) < fit.log2_distance_at(0.5) < fit.log2_distance_at(0.2)
    assert fit.n_sequences == 40_000 and fit.max_log2_distance <= 20.0 + 1e-9


def test_bad_inputs_name_their_parameter():
    with pytest.raises(InputError, match="`distances` and `correct`"):
        fit_recall_distance(np.array([4, 8]), np.array([True]), CHANCE)
    with pytest.raises(InputError, match="`distances` must be >= 1"):
        fit_recall_distance(np.array([0, 8]), np.array([True, False]), CHANCE)
    with pytest.raises(InputError, match="`chance`"):
        fit_recall_distance(np.array([4, 8]), np.array([True, False]), 1.0)
    fit = fit_recall_distance(np.array([4, 8, 16]), np.array([True, True, False]), CHANCE)
    with pytest.raises(InputError, match="`accuracy`"):
        fit.log2_distance_at(CHANCE / 2)


def test_no_decline_with_distance_gives_no_distance():
    """Accuracy that does not fall with distance (here: wrong at short distances only) has no 50% distance."""
    distances = np.array([4, 5, 6, 8] * 8 + [40, 50, 60, 64] * 8)
    correct = np.array([False] * 32 + [True] * 32)
    fit = fit_recall_distance(distances, correct, CHANCE)
    assert np.isnan(fit.log2_distance_at(0.5)) and np.isnan(fit.log2_distance_at(0.99))
    flat = fit_recall_distance(distances, np.arange(64) % 2 == 0, CHANCE)        # half right at every distance
    assert np.isnan(flat.log2_distance_at(0.99)) and flat.accuracy_at(3.0) == pytest.approx(0.5, abs=0.05)
