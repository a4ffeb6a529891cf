"""The standard recall rule (icl_cmr.cmr.standard_rule): recalled items excluded, recall ending by itself.

The reference is a slow loop written here from the rule's equations (explicit context vector, explicit
strengths, the excluded items zeroed, ``rng.choice`` over the renormalised strengths), independent of the
compiled kernel; hand-built cases check the draws themselves, closed forms the stop probability.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from icl_cmr.cmr import kernels
from icl_cmr.cmr.conditional import (conditional_lag_counts, crp_and_conditional_crp, pooled_conditional_crp,
                                     recall_statistics)
from icl_cmr.cmr.grid import GridSpec, compute_point
from icl_cmr.cmr.model import CMRSettings, cmr_crp, crp_from_draws, exact_crp, point_memory_bytes, simulate_recall
from icl_cmr.errors import InputError
from icl_cmr.files.grids import (conditional_grid_path, grid_file_names, grid_partial_folder, grid_recall_rule,
                                 stop_name)

MAX_LAG = 8


# ----------------------------------------------------------------------------- reference (slow, plain loops)

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


def reference_standard_recall(beta_enc, beta_rec, gamma, s0, n_items, rng, stop_probability=0.0, max_draws=None,
                              overlaps=None):
    """One recall under the standard rule, from the equations: returns the drawn items (s0 not included)."""
    assoc = reference_matrix(beta_enc, n_items)
    context = np.zeros(n_items + 1)
    context[s0] = 1.0
    excluded = {s0}
    sequence = []
    limit = n_items - 1 if max_draws is None else max_draws
    while len(sequence) < limit:
        if stop_probability > 0 and rng.random() < stop_probability:
            break
        strengths = assoc.T @ context
        for item in excluded:
            strengths[item] = 0.0
        if strengths.sum() <= 0:
            break
        item = rng.choice(n_items + 1, p=strengths / strengths.sum())
        if item == n_items:
            break
        sequence.append(int(item))
        excluded.add(int(item))
        context_input = reference_context_input(assoc, item, gamma)
        if overlaps is not None:
            overlaps.append(float(context @ context_input))
        context = (1 - beta_rec) * context + beta_rec * context_input
        context = context / np.linalg.norm(context)
    return sequence


def trial_statistics(sequence, s0, n_items):
    """Per-trial numbers compared between the two implementations: the paper's lag curve (lags -8..8 divided by
    the number of draws), the number of draws, and the position of the first three recalls relative to s0."""
    curve = np.zeros(2 * MAX_LAG + 1)
    previous = s0
    for item in sequence:
        if abs(item - previous) <= MAX_LAG:
            curve[item - previous + MAX_LAG] += 1
        previous = item
    if sequence:
        curve /= len(sequence)
    firsts = [(sequence[k] - s0) if k < len(sequence) else 0.0 for k in range(3)]
    return np.concatenate([curve, [len(sequence)], firsts])


def z_scores(ours, reference):
    se = np.sqrt(ours.var(0, ddof=1) / len(ours) + reference.var(0, ddof=1) / len(reference))
    difference = ours.mean(0) - reference.mean(0)
    keep = se > 0
    assert np.all(np.abs(difference[~keep]) < 1e-12), "a statistic without variance differs"
    return difference[keep] / se[keep]


POINTS = [  # beta_enc, beta_rec, gamma_ft, n_items, stop_probability
    (0.7, 1.0, 1.0, 30, 0.0),     # the PEERS median fit: the just-recalled item would be the likeliest next recall
    (0.6, 0.75, 0.3, 30, 0.0),    # GPT-2's L5H1
    (0.05, 0.5, 0.5, 25, 0.0),    # long jumps, long recalls
    (0.3, 0.0, 0.4, 30, 0.0),     # no drift: draws without replacement from the start context
    (0.9, 0.95, 0.0, 30, 0.0),
    (0.4, 0.6, 0.2, 30, 0.1),     # with a stop probability
]


@pytest.mark.slow
def test_vectorized_standard_rule_agrees_with_the_reference_loop():
    z_all = []
    for index, (beta_enc, beta_rec, gamma, n_items, stop) in enumerate(POINTS):
        s0 = 2
        settings = CMRSettings(n_items=n_items, n_trials=3000, n_start=3, recall_rule="standard",
                               stop_probability=stop)
        draws = simulate_recall(beta_enc, beta_rec, gamma, settings, np.random.default_rng(index))
        ours = np.array([trial_statistics([int(x) for x in row if x >= 0], s0, n_items) for row in draws[s0]])
        rng = np.random.default_rng(100 + index)
        reference = np.array([trial_statistics(reference_standard_recall(beta_enc, beta_rec, gamma, s0, n_items, rng,
                                                                         stop), s0, n_items)
                              for _ in range(400)])
        z_all.append(z_scores(ours, reference))
    z_all = np.concatenate(z_all)
    assert z_all.size > 100
    assert np.max(np.abs(z_all)) < 4.5, np.round(z_all, 2)
    assert np.mean(z_all ** 2) < 1.6


def test_no_item_is_recalled_twice_and_s0_is_never_drawn():
    settings = CMRSettings(n_items=40, n_trials=500, n_start=5, recall_rule="standard")
    draws = simulate_recall(0.7, 1.0, 1.0, settings, np.random.default_rng(0))
    for s0, rows in zip(settings.start_positions, draws):
        for row in rows:
            recalled = row[row >= 0]
            assert len(set(recalled.tolist())) == recalled.size and s0 not in recalled
            assert np.all(row[recalled.size:] == -1)


def test_recall_ends_when_nothing_is_left_to_support():
    # beta_enc = 1, beta_rec = 0: the context stays e_s0, whose only support is s0 + 1; once recalled, nothing
    # (not even the absorbing state) has strength, so every recall is exactly [s0 + 1].
    settings = CMRSettings(n_items=20, n_trials=50, n_start=4, recall_rule="standard")
    draws = simulate_recall(1.0, 0.0, 0.3, settings, np.random.default_rng(1))
    for s0 in range(4):
        assert np.all(draws[s0, :, 0] == s0 + 1) and np.all(draws[s0, :, 1:] == -1)


def test_a_forward_chain_runs_to_the_end_of_the_list_without_a_cap():
    # beta_enc = 1, beta_rec = 1, gamma = 0: the context is the last recall, which supports only the next item;
    # the recall is s0 + 1, ..., n_items - 1 and then the absorbing state: n_items - 1 - s0 draws.
    settings = CMRSettings(n_items=20, n_trials=10, n_start=3, recall_rule="standard")
    assert settings.max_draws == 19
    draws = simulate_recall(1.0, 1.0, 0.0, settings, np.random.default_rng(2))
    for s0 in range(3):
        np.testing.assert_array_equal(draws[s0, :, :19 - s0], np.tile(np.arange(s0 + 1, 20), (10, 1)))
        assert np.all(draws[s0, :, 19 - s0:] == -1)


def test_stop_probability_gives_geometric_recall_lengths():
    # Same forward chain: each draw happens with probability 1 - p, up to the 19 - s0 items available.
    p, n_items = 0.2, 20
    settings = CMRSettings(n_items=n_items, n_trials=20000, n_start=2, recall_rule="standard", stop_probability=p)
    lengths = (simulate_recall(1.0, 1.0, 0.0, settings, np.random.default_rng(3)) >= 0).sum(axis=-1)
    for s0 in range(2):
        available = n_items - 1 - s0
        expected = sum((1 - p) ** k for k in range(1, available + 1))  # E[L] = sum_k P(L >= k)
        se = lengths[s0].std(ddof=1) / np.sqrt(lengths.shape[1])
        assert abs(lengths[s0].mean() - expected) < 4 * se


@pytest.mark.slow
def test_each_draw_is_the_inverse_transform_of_the_remaining_strengths():
    # Hand-built: 3 items + absorbing; s0 = 0 supports items 1, 2 and the absorbing state with 1, 2, 1.
    assoc = np.zeros((4, 4))
    assoc[0, 1:] = [1.0, 2.0, 1.0]
    inputs = np.eye(4)
    cases = [  # uniforms of the first two draws -> expected draws (beta_rec = 0: the strengths stay M[0])
        ((0.2, 0.9), [1, -1]),   # 0.2 * 4 = 0.8 < 1: item 1; then {2: 2, abs: 1}: 0.9 * 3 = 2.7 > 2: absorbing
        ((0.5, 0.6), [2, -1]),   # 2.0 falls in item 2's [1, 3); then {1: 1, abs: 1}: 1.2 >= 1: absorbing
        ((0.5, 0.4), [2, 1]),    # then 0.8 < 1: item 1
        ((0.9, 0.1), [-1, -1]),  # 3.6 >= 3: absorbing at once
    ]
    for uniforms, expected in cases:
        draws = np.full((2, 1), -1, dtype=np.int16)
        kernels.standard_recall_kernel(np.array([0]), assoc, inputs, inputs @ assoc, 1.0, 0.0, 3,
                                       np.array(uniforms).reshape(2, 1), np.zeros((1, 1)), 0.0, draws)
        assert draws[:, 0].tolist() == expected, uniforms


def test_context_and_retrieved_context_never_overlap_at_gamma_zero():
    """The premise of the exact retrieval-rate conversion at overlap 0 (icl_cmr.cmr.scales)."""
    rng = np.random.default_rng(4)
    overlaps = []
    for _ in range(30):
        reference_standard_recall(0.4, 0.6, 0.0, 3, 25, rng, overlaps=overlaps)
    assert len(overlaps) > 100 and max(overlaps) == 0.0
    with_gamma = []
    reference_standard_recall(0.4, 0.6, 0.5, 3, 25, rng, overlaps=with_gamma)
    assert max(with_gamma) > 0.0


def test_standard_rule_has_no_exact_form_and_is_simulated():
    settings = CMRSettings(n_items=30, n_trials=40, n_start=3, recall_rule="standard")
    with pytest.raises(InputError, match="recall rule"):
        exact_crp(0.3, 1.0, 0.0, settings)
    with pytest.raises(InputError, match="recall_rule"):
        cmr_crp(0.3, 1.0, 0.0, settings, np.random.default_rng(0), method="authors")
    exact_method = cmr_crp(0.3, 1.0, 0.2, settings, np.random.default_rng(5), method="exact")
    simulated = cmr_crp(0.3, 1.0, 0.2, settings, np.random.default_rng(5), method="simulate")
    np.testing.assert_array_equal(exact_method, simulated)
    draws = simulate_recall(0.3, 1.0, 0.2, settings, np.random.default_rng(5))
    np.testing.assert_array_equal(simulated, crp_from_draws(draws, settings.start_positions))


@pytest.mark.slow
def test_every_standard_rule_draw_is_a_counted_transition():
    settings = CMRSettings(n_items=30, n_trials=200, n_start=3, recall_rule="standard")
    draws = simulate_recall(0.5, 0.7, 0.6, settings, np.random.default_rng(6))
    actual, _ = conditional_lag_counts(draws, settings.start_positions, settings.n_items, max_lag=29)
    np.testing.assert_array_equal(actual.sum(axis=-1), (draws >= 0).sum(axis=-1))
    stats = recall_statistics(draws, settings.start_positions, settings.n_items, settings.max_draws)
    assert stats["repeat_share"] == 0.0
    assert stats["counted_transitions_per_trial"] == pytest.approx(stats["draws_per_trial"])
    _, conditional, _ = crp_and_conditional_crp(0.5, 0.7, 0.6, settings, np.random.default_rng(6))
    np.testing.assert_array_equal(conditional, pooled_conditional_crp(
        *conditional_lag_counts(draws, settings.start_positions, settings.n_items, settings.max_lag))[0])


def test_recall_statistics_on_a_hand_made_sequence():
    # s0 = 1; draws 2, 3, 1 (repeat of s0), 4, 4 (repeat), cap 6 reached? no: 5 draws of 6.
    draws = np.array([[[2, 3, 1, 4, 4, -1], [5, 0, 2, 3, 0, 0]]])
    stats = recall_statistics(draws, np.array([1]), n_items=6, max_draws=6)
    # trial 1: first occurrences 2, 3, 4 -> counted 1->2, 2->3 (3->1 and 1->4 bridge a repeat) = 2
    # trial 2: 5, 0, 2, 3 first, then 0, 0 repeats -> counted 1->5, 5->0, 0->2, 2->3 = 4
    assert stats["draws_per_trial"] == 5.5
    assert stats["repeat_share"] == pytest.approx(4 / 11)
    assert stats["counted_transitions_per_trial"] == 3.0
    assert stats["capped_share"] == 0.5


def test_settings_of_the_standard_rule():
    assert CMRSettings().max_draws == 50 and CMRSettings(recall_rule="standard").max_draws == 99
    assert CMRSettings(recall_rule="standard", max_draws=20).max_draws == 20
    for kwargs, names in [(dict(recall_rule="other"), "recall_rule"), (dict(stop_probability=0.1), "stop_probability"),
                          (dict(recall_rule="standard", stop_probability=1.0), "stop_probability"),
                          (dict(recall_rule="standard", max_draws=100), "max_draws")]:
        with pytest.raises(InputError) as error:
            CMRSettings(**kwargs)
        assert names in error.value.parameters


def test_memory_estimate_bounds_the_standard_rule_simulation():
    import tracemalloc

    settings = CMRSettings(n_items=60, n_trials=2000, n_start=5, recall_rule="standard", stop_probability=0.05)
    simulate_recall(0.3, 0.5, 0.5, CMRSettings(n_items=60, n_trials=2, n_start=5, recall_rule="standard"),
                    np.random.default_rng(0))  # compile and cache the tables outside the measurement
    tracemalloc.start()
    crp_and_conditional_crp(0.3, 0.5, 0.5, settings, np.random.default_rng(0))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    estimate = point_memory_bytes(settings, conditional=True)
    assert peak <= estimate <= 4 * peak


# ----------------------------------------------------------------------------- the grid

def test_grid_of_the_standard_rule_is_simulated_and_records_its_rule():
    settings = CMRSettings(n_items=30, n_trials=20, n_start=3, recall_rule="standard")
    with pytest.raises(InputError, match="simulate"):
        GridSpec.from_resolution(2, 2, settings=settings)
    spec = GridSpec.from_resolution(2, 2, settings=settings, method="simulate", quantity="conditional")
    assert spec.to_json()["recall_rule"] == "standard" and "stop_probability" not in spec.to_json()
    assert spec.to_json()["max_draws"] == 29
    stopped = CMRSettings(n_items=30, n_trials=20, n_start=3, recall_rule="standard", stop_probability=0.1)
    assert GridSpec.from_resolution(2, 2, settings=stopped, method="simulate").to_json()["stop_probability"] == 0.1
    assert "recall_rule" not in GridSpec.from_resolution().to_json()      # the paper's grid keeps its spec
    point = compute_point(spec, 1, 2, 0)
    expected = crp_and_conditional_crp(spec.beta_enc[1], spec.beta_rec[2], spec.gamma_ft[0], settings,
                                       spec.point_rng(1, 2, 0))
    np.testing.assert_array_equal(point, np.stack(expected[1:]))


def test_file_names_and_recorded_rule_of_standard_grids(tmp_path, repo_root):
    assert grid_file_names(20, 11) == ("cmr_crp_avg_20_11.npy", "cmr_crp_sem_20_11.npy", "cmr_crp_20_11.json")
    assert grid_file_names(20, 11, "conditional", "standard") == (
        "cmr_std_cond_crp_avg_20_11.npy", "cmr_std_cond_crp_sem_20_11.npy", "cmr_std_cond_crp_20_11.json")
    assert grid_file_names(20, 11, "crp", "standard", 0.05)[0] == "cmr_std_stop0.05_crp_avg_20_11.npy"
    assert grid_partial_folder(tmp_path, 20, 11, "conditional", "standard").name == ".cmr_std_cond_crp_20_11.partial"
    assert conditional_grid_path("standard").name == "cmr_std_cond_crp_avg_20_11.npy"
    with pytest.raises(InputError, match="recall_rule"):
        grid_file_names(20, 11, "crp", "other")
    # the shipped [LI24]-rule grids record no rule: they are li24
    assert grid_recall_rule(repo_root / "saved_crps" / "cmr_cond_crp_avg_20_11.npy") == "li24"
    (tmp_path / "cmr_std_cond_crp_2_2.json").write_text('{"parameters": {"recall_rule": "standard"}}')
    assert grid_recall_rule(tmp_path / "cmr_std_cond_crp_avg_2_2.npy") == "standard"


@pytest.mark.parametrize("first, second", [(0.12345671, 0.12345679), (0.99999999, 1 - 1e-9), (0.1, 0.1000001)])
def test_different_stop_probabilities_never_share_a_file_name(first, second):
    names = [grid_file_names(2, 2, "conditional", "standard", p) for p in (first, second)]
    assert set(names[0]).isdisjoint(names[1])
    assert [grid_partial_folder("d", 2, 2, "crp", "standard", p).name for p in (first, second)] == [
        f".cmr_std_stop{first!r}_crp_2_2.partial", f".cmr_std_stop{second!r}_crp_2_2.partial"]


def test_a_stop_probability_is_spelled_exactly_in_file_names():
    assert grid_file_names(2, 2, "crp", "standard", 0.99999999)[0] == "cmr_std_stop0.99999999_crp_avg_2_2.npy"
    assert grid_file_names(2, 2, "crp", "standard", 0.12345671)[0] == "cmr_std_stop0.12345671_crp_avg_2_2.npy"
    assert float(stop_name(0.12345679)[len("stop"):]) == 0.12345679   # reads back as the same number


@pytest.mark.slow
@pytest.mark.parametrize("point", [(7, 6, 8), (19, 0, 0), (0, 20, 10)])
def test_shipped_standard_rule_grid_points_are_reproduced_bit_for_bit(repo_root, point):
    """The shipped standard-rule conditional grid is complete and is this code's output: points recomputed from their
    own generators equal the file, and the sidecar records the settings that made it."""
    names = grid_file_names(20, 11, "conditional", "standard")
    shipped = np.load(repo_root / "saved_crps" / names[0])
    shipped_se = np.load(repo_root / "saved_crps" / names[1])
    assert shipped.shape == (20, 21, 11, 17)
    assert np.isnan(shipped[..., 8]).all() and np.isfinite(np.delete(shipped, 8, axis=-1)).all()
    spec = GridSpec.from_resolution(method="simulate", quantity="conditional",
                                    settings=CMRSettings(recall_rule="standard"))
    recomputed = compute_point(spec, *point)
    np.testing.assert_array_equal(recomputed[0], shipped[point])
    np.testing.assert_array_equal(recomputed[1], shipped_se[point])
    meta = json.loads((repo_root / "saved_crps" / names[2]).read_text())
    assert meta["parameters"] == spec.to_json() and meta["parameters"]["max_draws"] == 99
    assert grid_recall_rule(repo_root / "saved_crps" / names[0]) == "standard"
