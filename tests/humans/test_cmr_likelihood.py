"""Standard CMR's likelihood of free-recall sequences and its maximum-likelihood fits (issue 24).

The expected values come from a slow reference written here from the equations (explicit weight
matrices, the general context update, plain loops), from enumerating every possible sequence of a short
list, and from data simulated at known parameters.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from icl_cmr.errors import InputError
from icl_cmr.experiments.human_likelihood import (HumanLikelihoodSettings, likelihood_outputs,
                                                  run_human_likelihood)
from icl_cmr.humans.likelihood import (CmrParameters, RecallLists, choice_log_probabilities, li24_beta_enc,
                                       log_likelihood, outcome_probabilities, simulate_recalls, standard_b_enc,
                                       stop_probabilities, study_contexts, subject_recall_lists)
from icl_cmr.humans.likelihood_fits import (LikelihoodFitConfig, compare_methods, fit_stop, fit_subject,
                                            li24_beta_rec, standard_errors)

# Every parameter away from its special values (primacy on, Lcf != Lfc) so that each one is exercised.
PARAMETERS = dict(B_enc=0.65, B_start=0.35, B_rec=0.8, Lfc=0.4, Lcf=0.55, T=0.2, X1=0.05, X2=0.4, P1=0.7, P2=0.5)
SEQUENCES = [[4, 3, 0], [], [2], [0, 1, 2, 3, 4], [1, 3]]
N_ITEMS = 5


def reference_list_log_likelihood(sequence, n_items, B_enc, B_start, B_rec, Lfc, Lcf, T, X1, X2, P1, P2):
    """log P(sequence, then stop) from the equations of Polyn, Norman & Kahana (2009) and Morton & Polyn
    (2016) as cymr runs them: full matrices, the general update, one loop per event."""
    start = n_items
    size = n_items + 1
    fc = np.zeros((size, size))
    cf = np.zeros((size, size))
    for i in range(n_items):
        fc[i, i] = 1 - Lfc
        cf[i, i] = 1 - Lcf
    fc[start, start] = cf[start, start] = 1.0

    def integrate(context, unit, B):
        context_in = fc[unit] / np.linalg.norm(fc[unit])
        dot = float(context @ context_in)
        rho = math.sqrt(1 + B * B * (dot * dot - 1)) - B * dot
        return rho * context + B * context_in

    def p_stop(k):
        return 1.0 if k == n_items else min(max(X1 * math.exp(X2 * k), 1e-6), 1 - 1e-6)

    context = integrate(np.zeros(size), start, 1.0)        # the start unit's context replaces everything
    for i in range(n_items):
        context = integrate(context, i, B_enc)
        fc[i] += Lfc * context
        cf[i] += (Lcf + P1 * math.exp(-P2 * i)) * context
    context = integrate(context, start, B_start)
    total, recalled = 0.0, []
    for k, item in enumerate(sequence):
        strength = {j: math.exp(2 * max(float(cf[j] @ context), 1e-6) / T) for j in range(n_items)
                    if j not in recalled}
        total += math.log((1 - p_stop(k)) * strength[item] / sum(strength.values()))
        recalled.append(item)
        context = integrate(context, item, B_rec)
    return total + math.log(p_stop(len(sequence)))


def test_likelihood_matches_a_slow_reference_on_a_hand_made_case():
    lists = RecallLists.from_sequences(SEQUENCES, N_ITEMS)
    expected = sum(reference_list_log_likelihood(s, N_ITEMS, **PARAMETERS) for s in SEQUENCES)
    assert log_likelihood(CmrParameters(**PARAMETERS), lists)[0] == pytest.approx(expected, rel=1e-12)


def test_likelihood_of_several_parameter_sets_at_once_matches_each_alone():
    lists = RecallLists.from_sequences(SEQUENCES, N_ITEMS)
    sets = [dict(PARAMETERS), dict(PARAMETERS, B_enc=1.0, Lfc=0.0, P1=0.0), dict(PARAMETERS, B_rec=0.0, B_start=1.0)]
    batch = CmrParameters(**{name: np.array([s[name] for s in sets]) for name in PARAMETERS})
    expected = [sum(reference_list_log_likelihood(seq, N_ITEMS, **s) for seq in SEQUENCES) for s in sets]
    np.testing.assert_allclose(log_likelihood(batch, lists), expected, rtol=1e-12)


def test_each_recall_gets_its_reference_probability():
    lists = RecallLists.from_sequences(SEQUENCES, N_ITEMS)
    per_recall = choice_log_probabilities(CmrParameters(**PARAMETERS), lists)[0]        # [L, K]
    stop_free = dict(PARAMETERS, X1=0.0, X2=0.0)   # p_stop = 1e-6 at every output: the choice part alone
    for row, sequence in enumerate(SEQUENCES):
        for k in range(len(sequence)):
            with_k = reference_list_log_likelihood(sequence[:k + 1], N_ITEMS, **stop_free)
            before = reference_list_log_likelihood(sequence[:k], N_ITEMS, **stop_free)
            stop_terms = math.log(1 - 1e-6) + math.log(1e-6 if k + 1 < N_ITEMS else 1.0) - math.log(1e-6)
            assert per_recall[row, k] == pytest.approx(with_k - before - stop_terms, abs=1e-9)


def test_each_steps_outcome_probabilities_sum_to_one():
    lists = RecallLists.from_sequences(SEQUENCES, N_ITEMS)
    outcomes = outcome_probabilities(CmrParameters(**PARAMETERS), lists)[0]            # [L, K + 1, N + 1]
    defined = ~np.isnan(outcomes[..., 0])
    assert defined.sum() == sum(len(s) + 1 for s in SEQUENCES)          # every recall and every stop
    np.testing.assert_allclose(outcomes[defined].sum(axis=-1), 1.0, rtol=1e-12)
    assert np.all(outcomes[defined] >= 0)


def test_likelihood_is_the_product_of_the_chosen_outcomes():
    lists = RecallLists.from_sequences(SEQUENCES, N_ITEMS)
    outcomes = outcome_probabilities(CmrParameters(**PARAMETERS), lists)[0]
    chosen = [outcomes[row, k, item] for row, s in enumerate(SEQUENCES) for k, item in enumerate(s)]
    stops = [outcomes[row, len(s), N_ITEMS] for row, s in enumerate(SEQUENCES)]
    assert np.log(chosen).sum() + np.log(stops).sum() == pytest.approx(
        log_likelihood(CmrParameters(**PARAMETERS), lists)[0], rel=1e-12)
    assert stops[3] == 1.0                                              # all five recalled: stop is certain


def test_every_possible_sequence_of_a_short_list_has_total_probability_one():
    n_items = 3
    sequences = [list(p) for n in range(n_items + 1) for p in itertools.permutations(range(n_items), n)]
    lists = RecallLists.from_sequences(sequences, n_items)
    per_list = [log_likelihood(CmrParameters(**PARAMETERS), RecallLists.from_sequences([s], n_items))[0]
                for s in sequences]
    assert np.exp(per_list).sum() == pytest.approx(1.0, rel=1e-12)
    assert np.sum(per_list) == pytest.approx(log_likelihood(CmrParameters(**PARAMETERS), lists)[0], rel=1e-12)


def test_the_sampler_draws_sequences_with_their_likelihood():
    n_items, n_lists = 3, 20_000
    drawn = simulate_recalls(CmrParameters(**PARAMETERS), n_items, n_lists, np.random.default_rng(5))
    keys = [tuple(int(x) for x in row if x >= 0) for row in drawn.recalls]
    counts = pd.Series(keys).value_counts()
    sequences = [p for n in range(n_items + 1) for p in itertools.permutations(range(n_items), n)]
    expected = np.array([np.exp(log_likelihood(CmrParameters(**PARAMETERS),
                                               RecallLists.from_sequences([list(s)], n_items))[0]) for s in sequences])
    observed = np.array([counts.get(s, 0) for s in sequences])
    assert observed.sum() == n_lists
    # Each sequence's count within 4 binomial standard deviations of its expectation.
    sd = np.sqrt(n_lists * expected * (1 - expected))
    assert np.all(np.abs(observed - n_lists * expected) <= 4 * sd + 1)


def test_stop_probability_grows_exponentially_and_is_certain_after_the_last_item():
    p_stop = stop_probabilities(np.array([0.02, 0.5]), np.array([0.3, 2.0]), 4)
    np.testing.assert_allclose(p_stop[0, :4], 0.02 * np.exp(0.3 * np.arange(4)))
    np.testing.assert_allclose(p_stop[1], [0.5, 1 - 1e-6, 1 - 1e-6, 1 - 1e-6, 1.0])
    assert stop_probabilities(0.0, 0.0, 2)[0].tolist() == [1e-6, 1e-6, 1.0]


def test_study_context_has_unit_length_and_the_li24_gradient():
    B_enc = np.array([0.3, 0.858, 1.0])
    contexts = study_contexts(B_enc, 6)                                  # [P, N, N + 1]
    np.testing.assert_allclose(np.linalg.norm(contexts, axis=2), 1.0, rtol=1e-12)
    # Item j's share of the context after item 5 shrinks by (1 - beta_enc) per step back, [LI24]'s gradient.
    last = contexts[:, 5, :6]
    ratio = last[:2, :5] / last[:2, 1:6]
    np.testing.assert_allclose(ratio, np.repeat((1 - li24_beta_enc(B_enc[:2]))[:, None], 5, axis=1), rtol=1e-12)


def test_the_conversion_to_li24s_beta_enc_on_values():
    assert li24_beta_enc(0.858) == pytest.approx(1 - math.sqrt(1 - 0.858 ** 2))
    assert li24_beta_enc(0.858) == pytest.approx(0.486, abs=5e-4)         # issue 24: "0.49 on [LI24]'s scale"
    assert li24_beta_enc(0.6) == pytest.approx(0.2) and li24_beta_enc(0.8) == pytest.approx(0.4)
    assert li24_beta_enc(0.0) == 0.0 and li24_beta_enc(1.0) == 1.0
    np.testing.assert_allclose(standard_b_enc([0.1, 0.7]), [0.43589, 0.95394], atol=1e-5)   # DESIGN.md section 5
    np.testing.assert_allclose(li24_beta_enc(standard_b_enc(np.linspace(0, 1, 11))), np.linspace(0, 1, 11),
                               atol=1e-12)
    assert li24_beta_rec(0.6) == pytest.approx(0.6 / 1.4)


def test_recall_lists_refuse_repeats_and_gaps_naming_the_parameter():
    with pytest.raises(InputError, match="repeats") as err:
        RecallLists.from_sequences([[1, 2, 1]], 4)
    assert err.value.parameters == ("recalls",)
    with pytest.raises(InputError, match="padding"):
        RecallLists(np.array([[0, -1, 2]]), 4)
    with pytest.raises(InputError, match="serial positions"):
        RecallLists.from_sequences([[4]], 4)
    with pytest.raises(InputError, match="B_rec"):
        CmrParameters(**dict(PARAMETERS, B_rec=1.2)).check()


def test_psifr_data_become_first_recalls_without_repeats_or_intrusions():
    from psifr import fr  # optional dependency of the human data

    rows = [(1, 1, "study", name, pos) for pos, name in enumerate("ABCD", start=1)]
    rows += [(1, 1, "recall", name, pos) for pos, name in enumerate(["C", "X", "B", "C", "D"], start=1)]
    rows += [(1, 2, "study", name, pos) for pos, name in enumerate("EFGH", start=1)]      # nothing recalled
    rows += [(2, 1, "study", name, pos) for pos, name in enumerate("IJKL", start=1)]
    rows += [(2, 1, "recall", "L", 1)]
    raw = pd.DataFrame(rows, columns=["subject", "list", "trial_type", "item", "position"])
    lists = subject_recall_lists(fr.merge_free_recall(raw))
    assert list(lists) == [1, 2] and lists[1].n_items == 4 and lists[1].recalls.tolist() == [[2, 1, 3], [-1, -1, -1]]
    assert lists[2].recalls.tolist() == [[3]]


def test_stop_parameters_are_recovered_from_simulated_list_lengths():
    rng = np.random.default_rng(3)
    p_stop = stop_probabilities(0.03, 0.35, 16)[0]
    n_recalled = np.array([np.argmax(rng.random(17) < p_stop) for _ in range(3000)])
    fit = fit_stop(n_recalled, 16, LikelihoodFitConfig(n_starts=1), np.random.default_rng(0))
    assert fit.values["X1"] == pytest.approx(0.03, rel=0.2)
    assert fit.values["X2"] == pytest.approx(0.35, abs=0.03)


def test_standard_errors_of_a_quadratic_are_those_of_its_covariance():
    covariance = np.array([[0.04, 0.01, 0.0], [0.01, 0.09, 0.0], [0.0, 0.0, 0.25]])
    precision = np.linalg.inv(covariance)
    centre = np.array([0.5, 0.4, 0.3])

    def quadratic(x):                                   # x [3, S] -> [S]
        d = x - centre[:, None]
        return 0.5 * np.einsum("is,ij,js->s", d, precision, d)

    bounds = {"a": (0.0, 1.0), "b": (0.0, 1.0), "c": (0.3, 1.0)}
    errors = standard_errors(quadratic, dict(zip("abc", centre)), bounds)
    # c sits on its bound: held there, so a and b get the errors of their conditional (2 x 2) precision.
    expected = np.sqrt(np.diag(np.linalg.inv(precision[:2, :2])))
    assert errors["a"] == pytest.approx(expected[0], rel=1e-6) and errors["b"] == pytest.approx(expected[1], rel=1e-6)
    assert math.isnan(errors["c"])


@pytest.mark.slow
def test_parameters_are_recovered_from_data_simulated_at_known_values():
    truth = dict(B_enc=0.7, B_start=0.6, B_rec=0.8, Lfc=0.6, Lcf=0.6, T=0.3, X1=0.02, X2=0.25)
    lists = simulate_recalls(CmrParameters(**truth), 16, 400, np.random.default_rng(11))
    fit = fit_subject(lists, LikelihoodFitConfig(n_starts=1), seed=0)
    # 400 lists of 16 (about 14 PEERS subjects' data). The optimum is at least as likely as the truth, and the
    # truth lies inside the likelihood-ratio 99.9% region of the 7 free parameters (chi2(7) = 24.3).
    truth_nll = -log_likelihood(CmrParameters(**truth), lists)[0]
    assert fit.neg_log_likelihood <= truth_nll + 1e-6
    assert 2 * (truth_nll - fit.neg_log_likelihood) < 24.3
    # Each parameter within about 3 standard errors at this point (observed information at the truth, measured
    # once: B_enc 0.015, B_start 0.092, B_rec 0.022, Lfc 0.096, T 0.048, X1 0.0021, X2 0.011; B_start, Lfc and T
    # are correlated at |r| 0.94-0.99, so they trade off along one ridge).
    tolerance = dict(B_enc=0.05, B_start=0.3, B_rec=0.07, Lfc=0.3, T=0.15, X1=0.0065, X2=0.035)
    for name, allowed in tolerance.items():
        assert fit.parameters[name] == pytest.approx(truth[name], abs=allowed), name
    assert fit.parameters["Lcf"] == fit.parameters["Lfc"] and fit.parameters["P1"] == 0.0
    # The reported standard errors are those of this data set's information (same order as at the truth).
    assert fit.choice.standard_errors["B_enc"] == pytest.approx(0.015, rel=0.5)


def test_methods_are_compared_by_rank_and_median():
    likelihood = pd.DataFrame({"subject": [1, 2, 3, 4], "B_enc": [0.6, 0.8, 0.9, 0.7], "B_rec": [0.1, 0.2, 0.3, 0.4],
                               "Lfc": [0.9, 0.1, 0.5, 0.3]})
    likelihood["beta_enc_li24"] = li24_beta_enc(likelihood["B_enc"])
    grid = pd.DataFrame({"subject": [4, 3, 2, 1, 9], "beta_enc": [0.5, 0.7, 0.6, 0.4, 1.0],
                         "beta_rec": [0.1, 0.2, 0.3, 0.4, 0.0], "gamma_ft": [0.0, 0.0, 1.0, 1.0, 1.0]})
    table = compare_methods(likelihood, grid).set_index("likelihood")
    assert table.loc["B_enc", "spearman_rho"] == pytest.approx(1.0) and table.loc["B_enc", "n"] == 4
    assert table.loc["B_rec", "spearman_rho"] == pytest.approx(-1.0)
    assert table.loc["B_enc", "median_likelihood"] == pytest.approx(0.75)
    assert table.loc["B_enc", "median_likelihood_li24"] == pytest.approx(np.median(li24_beta_enc([0.6, 0.8, 0.9, 0.7])))
    assert table.loc["B_enc", "median_grid"] == pytest.approx(0.55)
    differences = li24_beta_enc(np.array([0.6, 0.8, 0.9, 0.7])) - np.array([0.4, 0.6, 0.7, 0.5])
    assert table.loc["B_enc", "median_difference_li24"] == pytest.approx(np.median(differences))
    assert math.isnan(table.loc["B_rec", "wilcoxon_p"])
    assert table.loc["Lfc", "median_likelihood_li24"] == table.loc["Lfc", "median_likelihood"] == pytest.approx(0.4)


def test_a_short_run_fits_the_first_subject_and_writes_its_tables(tmp_path):
    grid = tmp_path / "grid.csv"
    pd.DataFrame({"subject": [63, 64], "beta_enc": [0.5, 0.6], "beta_rec": [1.0, 0.5],
                  "gamma_ft": [0.0, 1.0]}).to_csv(grid, index=False)
    settings = HumanLikelihoodSettings(dataset="peers", n_subjects=2, popsize=2, maxiter=3, n_starts=1,
                                       grid_fits=grid)
    result = run_human_likelihood(settings, progress=False)
    assert result.table["subject"].tolist() == [63, 64] and result.table["n_lists"].tolist() == [28, 28]
    assert (result.table["n_events"] == result.table["n_recalls"] + 28).all()
    assert result.comparison["n"].tolist() == [2, 2, 2]
    written = likelihood_outputs(result, tmp_path / "out").commit()
    assert sorted(p.name for p in written) == ["peers_likelihood_first2_fits.csv",
                                               "peers_likelihood_first2_metadata.json",
                                               "peers_likelihood_first2_vs_grid.csv"]
    assert pd.read_csv(written[0])["B_enc"].between(0, 1).all()


def test_settings_errors_name_the_parameter():
    with pytest.raises(InputError) as err:
        HumanLikelihoodSettings(n_subjects=0).check()
    assert err.value.parameters == ("n_subjects",)
    with pytest.raises(InputError) as err:
        HumanLikelihoodSettings(n_starts=0).check()
    assert err.value.parameters == ("n_starts",)
