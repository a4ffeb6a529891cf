"""Human conditional lag-CRP from psifr (DESIGN.md section 8)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from icl_cmr.errors import InputError
from icl_cmr.humans.recall import conditional_lag_crp, lag_crps_by_unit, load_recall_data, resolve_dataset


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


@pytest.mark.slow
def test_peers_shows_asymmetric_contiguity():
    crp = conditional_lag_crp(load_recall_data("peers_notask"), max_lag=5)
    at = dict(zip(crp.lags.tolist(), crp.mean))
    assert crp.n_subjects == 126
    assert at[1] > at[-1] > max(at[2], at[-2])          # forward asymmetry; contiguity
    assert at[-2] > at[-5] and at[2] > at[5]


def study_with_repeats_and_intrusions():
    """One subject, one list of 5 items A..E; recalls B C X(intrusion) D B(repeat) E A."""
    from psifr import fr

    rows = [(1, 1, p, "study", item) for p, item in enumerate("ABCDE", start=1)]
    rows += [(1, 1, p, "recall", item) for p, item in enumerate(["B", "C", "X", "D", "B", "E", "A"], start=1)]
    return fr.merge_free_recall(pd.DataFrame(rows, columns=["subject", "list", "position", "trial_type", "item"]))


def test_hand_loop_with_repeats_and_intrusions():
    # Serial positions B=2, C=3, D=4, E=5, A=1. Transitions counted (both items first recalls of studied items):
    #   B -> C: lag +1, possible from 2 to not-yet-recalled {1, 3, 4, 5}: -1, +1, +2, +3
    #   C -> X: intrusion, not counted; X -> D: from an intrusion, not counted
    #   D -> B: to a repeat, not counted; B -> E: from a repeat, not counted
    #   E -> A: lag -4, possible from 5 to {1}: -4
    crps = lag_crps_by_unit(study_with_repeats_and_intrusions(), max_lag=4)
    at = dict(zip(crps.lags.tolist(), crps.prob[0]))
    assert at[-4] == 1.0 and at[-1] == 0.0 and at[1] == 1.0 and at[2] == 0.0 and at[3] == 0.0
    assert np.isnan(at[-3]) and np.isnan(at[-2]) and np.isnan(at[0]) and np.isnan(at[4])
    assert dict(zip(crps.lags.tolist(), crps.actual[0])) == {-4: 1, -3: 0, -2: 0, -1: 0, 0: 0, 1: 1, 2: 0, 3: 0, 4: 0}
    assert crps.units["n_transitions"].tolist() == [2]


def test_pooling_all_lists_sums_the_subjects_counts():
    merged = tiny_study()
    per_subject = lag_crps_by_unit(merged, "subject", max_lag=3)
    pooled = lag_crps_by_unit(merged, "all", max_lag=3)
    np.testing.assert_array_equal(pooled.actual[0], per_subject.actual.sum(axis=0))
    np.testing.assert_array_equal(pooled.possible[0], per_subject.possible.sum(axis=0))
    # +1: 1 + 3 made of 2 + 3 possible
    assert pooled.prob[0][4] == pytest.approx(4 / 5)
    assert pooled.labels.tolist() == ["all"] and pooled.units["n_lists"].tolist() == [2]


@pytest.mark.slow
def test_units_by_session_are_subject_session_pairs():
    merged = load_recall_data("Morton2013")
    by_session = lag_crps_by_unit(merged, "session", max_lag=2)
    by_subject = lag_crps_by_unit(merged, "subject", max_lag=2)
    assert len(by_session.units) == 40 * 3 and by_session.units["n_lists"].sum() == 40 * 48
    # counts of a subject's sessions add up to the subject's
    summed = by_session.actual.reshape(40, 3, -1).sum(axis=1)
    np.testing.assert_array_equal(summed, by_subject.actual)
    assert by_session.labels[0] == f"{by_session.units['subject'][0]}/s{by_session.units['session'][0]}"


def test_dataset_names_of_the_command_line():
    assert resolve_dataset("PEERS") == "peers_notask"
    assert resolve_dataset("morton2013") == "Morton2013"
    with pytest.raises(InputError, match="peers, morton2013"):
        resolve_dataset("murdock")
