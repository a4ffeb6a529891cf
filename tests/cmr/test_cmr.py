"""Specification tests of the CMR engine (DESIGN.md section 3).

Expected values come from code written here, independently of ``icl_cmr.cmr.model``:
a slow loop simulator that follows DESIGN.md line by line, closed forms derived
below, and brute-force enumeration of recall paths.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from icl_cmr.cmr.model import (CMRSettings, alias_tables, authors_closed_form_crp, cmr_crp, crp_from_draws,
                               encoding_matrix, exact_crp, mean_and_sem_over_starts, simulate_recall)
from icl_cmr.cmr.kernels import first_component_above, overlap_dot
from icl_cmr.errors import InputError

MAX_LAG = 8


# ----------------------------------------------------------------------------- reference model (slow, plain loops)

def reference_matrix(beta_enc, n_items):
    size = n_items + 1
    assoc = np.zeros((size, size))
    for i in range(size):
        for j in range(i + 1, size):
            assoc[i, j] = (1 - beta_enc) ** (j - i - 1)
    return assoc


def reference_context_input(assoc, item, gamma):
    onehot = np.zeros(assoc.shape[0])
    onehot[item] = 1.0
    vector = (1 - gamma) * onehot + gamma * assoc @ onehot
    return vector / np.linalg.norm(vector)


def reference_recall(beta_enc, beta_rec, gamma, s0, n_items, max_draws, rng):
    """One recall, DESIGN.md section 3 verbatim: returns the list of drawn items."""
    assoc = reference_matrix(beta_enc, n_items)
    context = np.zeros(n_items + 1)
    context[s0] = 1.0
    sequence = []
    while len(sequence) < max_draws:
        strengths = assoc.T @ context
        item = rng.choice(n_items + 1, p=strengths / strengths.sum())
        if item == n_items:
            break
        sequence.append(item)
        context = (1 - beta_rec) * context + beta_rec * reference_context_input(assoc, item, gamma)
        context = context / np.linalg.norm(context)
    return sequence


def reference_trial_curve(sequence, s0, max_lag=MAX_LAG):
    """Lag histogram of one recall divided by its number of draws (None for an empty recall)."""
    if not sequence:
        return None
    curve = np.zeros(2 * max_lag + 1)
    previous = s0
    for item in sequence:
        lag = item - previous
        previous = item
        if abs(lag) <= max_lag:
            curve[lag + max_lag] += 1
    return curve / len(sequence)


def per_trial_curves(sequences, s0):
    curves = [reference_trial_curve(seq, s0) for seq in sequences]
    return np.array([c for c in curves if c is not None])


def engine_sequences(draws_one_start):
    return [[int(x) for x in row if x >= 0] for row in draws_one_start]


def assert_within_combined_se(curves_a, curves_b, n_se=4.0):
    mean_a, mean_b = curves_a.mean(0), curves_b.mean(0)
    se = np.sqrt(curves_a.var(0, ddof=1) / len(curves_a) + curves_b.var(0, ddof=1) / len(curves_b))
    excess = np.abs(mean_a - mean_b) - n_se * se
    assert np.all(excess <= 1e-12), f"means differ by more than {n_se} SE: {mean_a - mean_b}, se {se}"


# ----------------------------------------------------------------------------- the model's pieces

def test_encoding_matrix_matches_the_inverse_formula():
    beta = 0.3
    size = 11
    shift = np.eye(size, k=1)
    expected = np.linalg.inv(np.eye(size) - (1 - beta) * shift) @ shift
    np.testing.assert_allclose(encoding_matrix(beta, 10), expected, atol=1e-14)
    np.testing.assert_allclose(encoding_matrix(1.0, 10), shift, atol=0)


def test_alias_tables_encode_exactly_the_row_distributions():
    rng = np.random.default_rng(3)
    weights = rng.random((6, 9)) * (rng.random((6, 9)) > 0.3)
    weights[0] = 0.0
    weights[0, 4] = 2.0
    prob, alias = alias_tables(weights)
    n = weights.shape[1]
    for row in range(weights.shape[0]):
        implied = prob[row] / n
        for column in range(n):
            implied[alias[row, column]] += (1 - prob[row, column]) / n
        np.testing.assert_allclose(implied, weights[row] / weights[row].sum(), atol=1e-12)


def test_crp_from_draws_on_a_hand_built_case():
    # start 2: recall 3, 4, 3 -> lags +1, +1, -1 over 3 draws; recall 12 -> lag +10 (outside) over 1 draw;
    # a recall with no draw is left out of the mean.
    draws = np.array([[[3, 4, 3], [12, -1, -1], [-1, -1, -1]]])
    curve = crp_from_draws(draws, np.array([2]), max_lag=2)
    # per-trial curves: [0, 1/3, 0, 2/3, 0] and [0, 0, 0, 0, 0]; mean [0, 1/6, 0, 1/3, 0]; normalised:
    np.testing.assert_allclose(curve[0], [0, 1 / 3, 0, 2 / 3, 0], atol=1e-15)


# ----------------------------------------------------------------------------- simulation vs the reference

@pytest.mark.slow
@pytest.mark.parametrize("beta_enc, beta_rec, gamma, n_items, max_draws, seed", [
    (0.3, 0.5, 0.4, 30, 20, 1),
    (0.6, 0.75, 0.3, 100, 50, 2),
    (0.1, 0.2, 1.0, 30, 25, 3),
    (0.9, 0.95, 0.0, 30, 20, 4),
    (0.05, 0.5, 0.5, 25, 30, 5),   # long jumps: many recalls reach the absorbing state
])
def test_vectorized_simulation_agrees_with_the_reference_loop(beta_enc, beta_rec, gamma, n_items, max_draws, seed):
    s0 = 1
    settings = CMRSettings(n_items=n_items, n_trials=3000, max_draws=max_draws, n_start=2)
    draws = simulate_recall(beta_enc, beta_rec, gamma, settings, np.random.default_rng(seed))
    ours = per_trial_curves(engine_sequences(draws[s0]), s0)
    rng = np.random.default_rng(1000 + seed)
    reference = per_trial_curves([reference_recall(beta_enc, beta_rec, gamma, s0, n_items, max_draws, rng)
                                  for _ in range(250)], s0)
    assert_within_combined_se(ours, reference)


def test_simulation_is_reproducible_with_the_same_seed():
    settings = CMRSettings(n_items=40, n_trials=50, max_draws=20, n_start=3)
    first = simulate_recall(0.4, 0.6, 0.5, settings, np.random.default_rng(7))
    second = simulate_recall(0.4, 0.6, 0.5, settings, np.random.default_rng(7))
    np.testing.assert_array_equal(first, second)
    assert first.shape == (3, 50, 20)


def test_draws_stop_at_max_draws_and_never_record_the_absorbing_state():
    settings = CMRSettings(n_items=12, n_trials=400, max_draws=6, n_start=2)
    draws = simulate_recall(0.2, 0.5, 0.5, settings, np.random.default_rng(0))
    assert draws.max() < 12 and draws.min() >= -1
    stopped = draws == -1
    # once stopped, a recall stays stopped
    assert np.all(stopped[:, :, 1:] >= stopped[:, :, :-1])
    assert stopped.any() and (~stopped).all(axis=2).any()


def test_simulated_crp_equals_crp_of_the_returned_draws_bit_for_bit():
    """cmr_crp's internal (draw-major) path and the public simulate_recall + crp_from_draws agree exactly."""
    settings = CMRSettings(n_items=40, n_trials=200, max_draws=30, n_start=4, max_lag=5)
    for point in [(0.3, 0.5, 0.4), (0.05, 0.8, 0.0), (1.0, 0.0, 0.5), (0.7, 1.0, 1.0)]:
        direct = cmr_crp(*point, settings, rng=np.random.default_rng(3), method="simulate")
        draws = simulate_recall(*point, settings, np.random.default_rng(3))
        np.testing.assert_array_equal(direct, crp_from_draws(draws, settings.start_positions, settings.max_lag))


def einsum_kernel_row_dot(first, second, lanes=2, unroll=4):
    """numpy's float64 einsum sum-of-products kernel (x86-64 baseline) as a plain loop: per-lane
    partial sums, each unrolled block added last vector first, then the remaining vectors, then the lanes."""
    lane_sums = [0.0] * lanes
    n_terms = len(first)
    n_blocked = n_terms - n_terms % (lanes * unroll)
    for start in range(0, n_blocked, lanes * unroll):
        for vector in reversed(range(unroll)):
            for lane in range(lanes):
                index = start + vector * lanes + lane
                lane_sums[lane] = first[index] * second[index] + lane_sums[lane]
    for start in range(n_blocked, n_terms, lanes):
        for lane in range(lanes):
            if start + lane < n_terms:
                lane_sums[lane] = first[start + lane] * second[start + lane] + lane_sums[lane]
    total = 0.0
    for value in lane_sums:
        total = total + value
    return total


@pytest.mark.parametrize("n_terms", [1, 2, 3, 7, 8, 9, 16, 17, 26, 51])
def test_overlap_sums_follow_the_einsum_kernel_order(n_terms):
    rng = np.random.default_rng(n_terms)
    first = rng.random((n_terms, 300)) * 10.0 ** rng.integers(-6, 6, (n_terms, 300))
    second = rng.random((n_terms, 300))
    coef = np.ascontiguousarray(first.T)                          # [trial, term]
    table = np.ascontiguousarray(second.T).ravel()                # overlap table: trial t's terms at t * n_terms
    comp = np.tile(np.arange(n_terms, dtype=np.int16), (300, 1))  # term m reads table[base + m]
    ours = [overlap_dot(coef, comp, table, trial, n_terms, trial * n_terms) for trial in range(300)]
    expected = [einsum_kernel_row_dot(first[:, trial], second[:, trial]) for trial in range(300)]
    np.testing.assert_array_equal(ours, expected)


def test_component_pick_is_the_number_of_running_sums_at_or_below_the_target():
    """Draw u * total, take the first component whose running sum exceeds it (the last if rounding
    puts u * total at the total; the last too for a NaN target from overflowed weights)."""
    rng = np.random.default_rng(5)
    n_trials, width = 2000, 12
    weights = rng.random((n_trials, width)) * (rng.random((n_trials, width)) < 0.7)  # ties from zero weights
    cum_weight = np.cumsum(weights, axis=1)
    for k in range(width):
        uniform = rng.random(n_trials)
        uniform[:5] = np.nextafter(1.0, 0.0)  # u * total may round up to the total
        target = uniform * cum_weight[:, k]
        target[5] = np.nan
        picked = [first_component_above(cum_weight, k, trial, target[trial]) for trial in range(n_trials)]
        expected = np.minimum((cum_weight[:, :k + 1] <= target[:, None]).sum(axis=1), k)
        expected[5] = k
        np.testing.assert_array_equal(picked, expected)


# ----------------------------------------------------------------------------- exact CRPs

def iid_expected_curve(beta_enc, s0, n_items, max_draws, max_lag=MAX_LAG):
    """beta_rec = 0: draws are i.i.d.; E[curve | K >= 1] in closed form (derived here)."""
    row = reference_matrix(beta_enc, n_items)[s0]
    p = row / row.sum()
    absorb = p[n_items]
    q = p[:n_items] / (1 - absorb)  # item distribution given "not absorbed"
    prob_k = np.array([(1 - absorb) ** k * absorb for k in range(1, max_draws)] + [(1 - absorb) ** max_draws])
    prob_k /= 1 - absorb
    ks = np.arange(1, max_draws + 1)
    curve = np.zeros(2 * max_lag + 1)
    for lag in range(-max_lag, max_lag + 1):
        first = q[s0 + lag] if 0 <= s0 + lag < n_items else 0.0
        pairs = sum(q[i] * q[i + lag] for i in range(n_items) if 0 <= i + lag < n_items)
        curve[lag + max_lag] = np.sum(prob_k * (first + (ks - 1) * pairs) / ks)
    return curve


def enumerated_markov_curve(beta_enc, gamma, s0, n_items, max_draws, max_lag=MAX_LAG):
    """beta_rec = 1: sum over every recall path of probability x its curve (brute force)."""
    assoc = reference_matrix(beta_enc, n_items)

    def next_distribution(context):
        strengths = assoc.T @ context
        return strengths / strengths.sum()

    start = np.zeros(n_items + 1)
    start[s0] = 1.0
    transition = {item: next_distribution(reference_context_input(assoc, item, gamma))
                  for item in range(1, n_items)}
    total = np.zeros(2 * max_lag + 1)
    prob_nonempty = 0.0
    for length in range(1, max_draws + 1):
        for path in itertools.product(range(n_items), repeat=length):
            prob, dist = 1.0, next_distribution(start)
            for item in path:
                prob *= dist[item]
                if prob == 0.0:
                    break
                dist = transition.get(item)
            if prob == 0.0:
                continue
            if length < max_draws:
                prob *= dist[n_items]  # the absorbing draw ends the recall
            total += prob * reference_trial_curve(list(path), s0, max_lag)
            prob_nonempty += prob
    return total / prob_nonempty


@pytest.mark.parametrize("beta_enc, n_items, max_draws", [(0.3, 100, 50), (0.05, 30, 40), (1.0, 20, 10)])
def test_exact_crp_at_beta_rec_0_equals_the_iid_closed_form(beta_enc, n_items, max_draws):
    settings = CMRSettings(n_items=n_items, max_draws=max_draws, n_start=4)
    exact = exact_crp(beta_enc, 0.0, 0.4, settings, normalise=False)
    for s0 in range(4):
        np.testing.assert_allclose(exact[s0], iid_expected_curve(beta_enc, s0, n_items, max_draws), atol=1e-12)


@pytest.mark.parametrize("beta_enc, gamma", [(0.4, 0.0), (0.4, 0.5), (0.15, 1.0)])
def test_exact_crp_at_beta_rec_1_equals_path_enumeration(beta_enc, gamma):
    n_items, max_draws = 5, 4
    settings = CMRSettings(n_items=n_items, max_draws=max_draws, n_start=3, max_lag=3)
    exact = exact_crp(beta_enc, 1.0, gamma, settings, normalise=False)
    for s0 in range(3):
        expected = enumerated_markov_curve(beta_enc, gamma, s0, n_items, max_draws, max_lag=3)
        np.testing.assert_allclose(exact[s0], expected, atol=1e-12)


@pytest.mark.parametrize("beta_rec, gamma", [(0.0, 0.3), (1.0, 0.0), (1.0, 0.7)])
def test_exact_crp_agrees_with_simulation(beta_rec, gamma):
    settings = CMRSettings(n_items=40, n_trials=4000, max_draws=20, n_start=2)
    exact = exact_crp(0.25, beta_rec, gamma, settings, normalise=False)
    draws = simulate_recall(0.25, beta_rec, gamma, settings, np.random.default_rng(11))
    for s0 in range(2):
        curves = per_trial_curves(engine_sequences(draws[s0]), s0)
        se = curves.std(0, ddof=1) / np.sqrt(len(curves))
        assert np.all(np.abs(curves.mean(0) - exact[s0]) <= 4 * se + 1e-12)


def test_all_mass_on_lag_plus_one_at_beta_enc_1_beta_rec_1_gamma_0():
    settings = CMRSettings(n_trials=200)
    expected = np.zeros(2 * MAX_LAG + 1)
    expected[MAX_LAG + 1] = 1.0
    for method in ("exact", "simulate"):
        curves = cmr_crp(1.0, 1.0, 0.0, settings, np.random.default_rng(0), method=method)
        np.testing.assert_allclose(curves, np.tile(expected, (settings.n_start, 1)), atol=1e-15)


def test_beta_rec_0_is_symmetric_except_the_forward_first_lag():
    """E[curve(+d)] - E[curve(-d)] = E[1/K | K >= 1] q(s0 + d): only the first lag breaks symmetry."""
    n_items, max_draws, beta_enc = 100, 50, 0.2
    settings = CMRSettings(n_items=n_items, max_draws=max_draws, n_start=3)
    exact = exact_crp(beta_enc, 0.0, 0.0, settings, normalise=False)
    for s0 in range(3):
        row = reference_matrix(beta_enc, n_items)[s0]
        p = row / row.sum()
        absorb = p[n_items]
        q = p[:n_items] / (1 - absorb)
        prob_k = np.array([(1 - absorb) ** k * absorb for k in range(1, max_draws)]
                          + [(1 - absorb) ** max_draws]) / (1 - absorb)
        mean_inverse_k = np.sum(prob_k / np.arange(1, max_draws + 1))
        lags = np.arange(1, MAX_LAG + 1)
        asymmetry = exact[s0, MAX_LAG + lags] - exact[s0, MAX_LAG - lags]
        np.testing.assert_allclose(asymmetry, mean_inverse_k * q[s0 + lags], atol=1e-12)
        assert np.all(asymmetry > 0)
    # and gamma cannot matter when the context never drifts
    np.testing.assert_allclose(exact_crp(beta_enc, 0.0, 0.9, settings, normalise=False), exact, atol=1e-15)


def test_exact_method_is_used_only_where_it_applies():
    settings = CMRSettings(n_trials=20, n_items=30, max_draws=10)
    with pytest.raises(InputError, match="beta_rec"):
        exact_crp(0.3, 0.5, 0.0, settings)
    # away from beta_rec in {0, 1} the "exact" method simulates: same numbers as "simulate"
    a = cmr_crp(0.3, 0.5, 0.2, settings, np.random.default_rng(4), method="exact")
    b = cmr_crp(0.3, 0.5, 0.2, settings, np.random.default_rng(4), method="simulate")
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- the authors' closed forms

def test_authors_closed_forms_have_their_documented_shapes():
    settings = CMRSettings(n_start=3)
    at_zero = authors_closed_form_crp(0.3, 0.0, settings)
    np.testing.assert_allclose(at_zero, at_zero[:, ::-1], atol=1e-15)  # symmetric, unlike the model
    p = reference_matrix(0.3, 100)[1]
    p = p / p.sum()
    unnormalised = [np.sum(p[:len(p) - abs(d)] * p[abs(d):]) for d in range(-MAX_LAG, MAX_LAG + 1)]
    np.testing.assert_allclose(at_zero[1], unnormalised / np.sum(unnormalised), atol=1e-14)
    at_one = authors_closed_form_crp(0.3, 1.0, settings)
    assert np.all(at_one[:, :MAX_LAG + 1] == 0)


@pytest.mark.slow
@pytest.mark.official
def test_authors_mode_reproduces_their_40_closed_form_points(official_dir):
    saved = np.load(official_dir / "saved_crps" / "cmr_crp_avg_20_11.npy")
    settings = CMRSettings()
    for i, beta_enc in enumerate(np.round(np.arange(1, 21) * 0.05, 10)):
        for j, beta_rec in ((0, 0.0), (20, 1.0)):
            mean, _ = mean_and_sem_over_starts(authors_closed_form_crp(beta_enc, beta_rec, settings))
            np.testing.assert_allclose(mean, saved[i, j, 0], atol=1e-10)


@pytest.mark.official
def test_simulation_matches_the_authors_grid_at_their_settings(official_dir):
    """500 trials, <= 50 draws reproduce their saved grid (DESIGN.md section 3): a few points here;
    the whole grid is checked on the shipped file in test_cmr_grid.py."""
    saved = np.load(official_dir / "saved_crps" / "cmr_crp_avg_20_11.npy")
    saved_sem = np.load(official_dir / "saved_crps" / "cmr_crp_sem_20_11.npy")
    settings = CMRSettings(n_trials=500, max_draws=50)
    for (i, j, k), seed in zip([(11, 15, 3), (1, 6, 4), (17, 7, 2)], (0, 1, 2)):
        beta_enc, beta_rec, gamma = (i + 1) * 0.05, j * 0.05, k * 0.1
        mean, sem = mean_and_sem_over_starts(
            cmr_crp(beta_enc, beta_rec, gamma, settings, np.random.default_rng(seed), method="simulate"))
        z = (mean - saved[i, j, k]) / np.sqrt(sem ** 2 + saved_sem[i, j, k] ** 2)
        assert np.max(np.abs(mean - saved[i, j, k])) < 0.008
        assert np.mean(z ** 2) < 3.0 and np.max(np.abs(z)) < 4.5


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("params", [(0.0, 0.5, 0.5), (1.2, 0.5, 0.5), (0.5, -0.1, 0.5), (0.5, 0.5, 1.5),
                                    (0.5, float("nan"), 0.5)])
def test_out_of_range_parameters_are_refused(params):
    with pytest.raises(InputError):
        cmr_crp(*params, CMRSettings(n_trials=2), np.random.default_rng(0))


@pytest.mark.parametrize("kwargs", [dict(n_trials=0), dict(max_draws=-3), dict(n_start=1), dict(n_start=200),
                                    dict(n_items=1), dict(n_trials=2.5)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(InputError):
        CMRSettings(**kwargs)
