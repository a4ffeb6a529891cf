"""Human conditional lag-CRP from psifr (DESIGN.md section 8)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from icl_cmr.errors import InputError
from icl_cmr.human_recall import conditional_lag_crp, load_recall_data


def tiny_study():
    """Two subjects, one list of 4 items each, recalls written out by hand."""
    from psifr import fr

    rows = []
    for subject, recalls in ((1, ["B", "C", "A"]), (2, ["A", "B", "C", "D"])):
        for position, item in enumerate("ABCD", start=1):
            rows.append((subject, 1, position, "study", item))
        for position, item in enumerate(recalls, start=1):
            rows.append((subject, 1, position, "recall", item))
    raw = pd.DataFrame(rows, columns=["subject", "list", "position", "trial_type", "item"])
    return fr.merge_free_recall(raw)


def test_conditional_lag_crp_hand_case():
    # Subject 1 recalls B, C, A: B->C is lag +1 (possible -1, +1, +2), C->A is lag -2 (possible -2, +1).
    #   CRP: -2: 1/1, -1: 0/1, +1: 1/2, +2: 0/1.
    # Subject 2 recalls A, B, C, D: three +1 transitions (possible +1 x3, +2 x2, +3 x1).
    #   CRP: +1: 3/3, +2: 0/2, +3: 0/1; negative lags never possible (NaN).
    crp = conditional_lag_crp(tiny_study(), max_lag=3)
    np.testing.assert_array_equal(crp.lags, [-3, -2, -1, 0, 1, 2, 3])
    expected_mean = [np.nan, 1.0, 0.0, np.nan, 0.75, 0.0, 0.0]
    np.testing.assert_allclose(crp.mean, expected_mean, equal_nan=True)
    # SEM over subjects (ddof 1) where two subjects have a value: +1: std(0.5, 1)/sqrt(2) = 0.25.
    assert crp.sem[4] == pytest.approx(0.25)
    assert crp.sem[5] == 0.0
    assert np.isnan(crp.sem[1])          # one subject only
    assert crp.n_subjects == 2


def test_max_lag_must_be_positive():
    with pytest.raises(InputError):
        conditional_lag_crp(tiny_study(), max_lag=0)


def test_unknown_dataset_is_an_input_error():
    with pytest.raises(InputError, match="peers_notask"):
        load_recall_data("nope")


def test_peers_shows_asymmetric_contiguity():
    crp = conditional_lag_crp(load_recall_data("peers_notask"), max_lag=5)
    at = dict(zip(crp.lags.tolist(), crp.mean))
    assert crp.n_subjects == 126
    assert at[1] > at[-1] > max(at[2], at[-2])          # forward asymmetry; contiguity
    assert at[-2] > at[-5] and at[2] > at[5]
