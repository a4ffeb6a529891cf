"""Distinct random control head sets ([LI24] Fig 8, [CS24]): never the same set twice, never counted twice."""
from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

from icl_cmr.interventions.icl_ablation import AblationConfig, control_head_sets
from icl_cmr.errors import InputError
from icl_cmr.interventions.head_ablation import count_random_head_sets, draw_random_head_sets, random_heads


def _all_heads(n_layers, n_heads, exclude=()):
    return [(layer, head) for layer in range(n_layers) for head in range(n_heads) if (layer, head) not in exclude]


def _brute_force_sets(n_layers, n_heads, count, exclude=(), layer_matched_to=None):
    """Every possible set, enumerated with itertools (the reference for counting and exhaustion)."""
    available = _all_heads(n_layers, n_heads, exclude)
    if layer_matched_to is None:
        return {tuple(sorted(c)) for c in itertools.combinations(available, count)}
    per_layer = [sum(1 for layer, _ in layer_matched_to if layer == target) for target in range(n_layers)]
    choices = [itertools.combinations([h for h in available if h[0] == layer], k) for layer, k in enumerate(per_layer)]
    return {tuple(sorted(sum(parts, ()))) for parts in itertools.product(*choices)}


@pytest.mark.parametrize("count, exclude, matched", [
    (2, (), None),
    (3, ((0, 1), (2, 2)), None),
    (3, ((0, 1), (0, 2), (2, 0)), ((0, 1), (0, 2), (2, 0))),
    (2, ((1, 3), (1, 0)), ((1, 3), (1, 0))),
])
def test_count_of_possible_sets_matches_enumeration(count, exclude, matched):
    expected = len(_brute_force_sets(3, 4, count, exclude, matched))
    assert count_random_head_sets(3, 4, count, exclude=exclude, layer_matched_to=matched) == expected


def test_without_repeats_set_k_is_the_draw_of_seed_plus_k():
    drawn = draw_random_head_sets(12, 12, 14, n_sets=5, seed=7)
    assert drawn.seeds == (7, 8, 9, 10, 11)
    assert drawn.sets == tuple(tuple(random_heads(12, 12, 14, seed=7 + k)) for k in range(5))
    assert not drawn.exhausted


def test_a_repeated_draw_is_skipped_and_the_next_seed_used():
    # 4 heads, 2 per set: 6 possible sets, so seeded draws repeat early. The reference walks the
    # seeds by hand and keeps each set at its first appearance.
    expected_sets, expected_seeds = [], []
    for seed in itertools.count(0):
        drawn = tuple(random_heads(1, 4, 2, seed=seed))
        if drawn not in expected_sets:
            expected_sets.append(drawn)
            expected_seeds.append(seed)
        if len(expected_sets) == 5:
            break
    assert expected_seeds[-1] > 4  # the case really has a repeat among the first five seeds
    drawn = draw_random_head_sets(1, 4, 2, n_sets=5, seed=0)
    assert drawn.sets == tuple(expected_sets) and drawn.seeds == tuple(expected_seeds)
    assert len(set(drawn.sets)) == 5


def test_the_bundled_model_case_has_one_layer_matched_set_and_says_so():
    # 2 layers x 4 heads, ablating L1H3 and L1H0: the only layer-matched set is L1H1, L1H2.
    ablated = [(1, 3), (1, 0)]
    drawn = draw_random_head_sets(2, 4, 2, n_sets=5, seed=0, exclude=ablated, layer_matched_to=ablated)
    assert drawn.sets == (((1, 1), (1, 2)),)
    assert drawn.n_possible == 1 and drawn.n_requested == 5 and drawn.exhausted


def test_when_fewer_sets_exist_than_asked_every_one_is_returned_once():
    drawn = draw_random_head_sets(2, 3, 2, n_sets=50, seed=3, exclude=[(0, 0), (1, 1)])
    assert set(drawn.sets) == _brute_force_sets(2, 3, 2, exclude=((0, 0), (1, 1)))
    assert len(drawn.sets) == 6 == drawn.n_possible and drawn.exhausted
    assert len(set(drawn.seeds)) == len(drawn.seeds)


def test_too_few_heads_for_one_set_is_an_input_error():
    with pytest.raises(InputError, match="cannot draw"):
        draw_random_head_sets(2, 4, 3, n_sets=2, seed=0, exclude=[(1, 0), (1, 1), (1, 2)],
                              layer_matched_to=[(1, 0), (1, 1), (1, 2)])
    with pytest.raises(InputError, match=">= 1"):
        draw_random_head_sets(2, 4, 1, n_sets=0, seed=0)


def test_ablation_controls_are_distinct_and_the_shortfall_is_warned(caplog):
    # 1 layer x 4 heads, 2 ablated: the 2 heads left make the only possible control set of 2.
    config = AblationConfig(n_random_sets=3, seed=0)
    with caplog.at_level(logging.WARNING, logger="icl_cmr.interventions.icl_ablation"):
        sets, seeds = control_head_sets(1, 4, [(0, 0), (0, 3)], config)
    assert sets == [[(0, 1), (0, 2)]] and len(seeds) == 1
    assert "only 1 distinct random sets of 2 heads exist outside the ablated heads" in caplog.text
    many, many_seeds = control_head_sets(12, 12, [(0, 0), (5, 5)], AblationConfig(n_random_sets=4, seed=2))
    assert many_seeds == [2, 3, 4, 5] and len({tuple(s) for s in many}) == 4


@pytest.mark.slow
def test_ablation_script_runs_each_distinct_control_once_and_records_the_request(tiny_model_dirs, tmp_path, capsys):
    import json

    import ablation
    from icl_cmr.files.reading import load_pickle

    # Layer 1 of a 2 x 4 model ablated: the 4 heads of layer 0 are the only control set of 4.
    data = tmp_path / "docs.jsonl"
    words = "memory context recall item drift attention head token order list the of and".split()
    rng = np.random.default_rng(0)
    data.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, 60))}) + "\n" for _ in range(6)))
    model_dir = tiny_model_dirs["gpt2"]
    ablation.main(["--model_name", str(model_dir), "--data", str(data), "--seq-len", "32", "--late-index", "25",
                   "--early-index", "5", "--n-eval", "4", "--batch-size", "2", "--heads", "L1H0,L1H1,L1H2,L1H3",
                   "--n-random-sets", "3", "--out-dir", str(tmp_path / "saved"), "--figs-dir", str(tmp_path / "figs"),
                   "--no-progress", "--n-bootstrap", "100"])
    assert "only 1 distinct random sets of 4 heads exist outside the ablated heads" in capsys.readouterr().err
    result = load_pickle(tmp_path / "saved" / f"ablation_experiment_{model_dir.name}.pkl")
    assert result["random_heads"] == [["L0H0", "L0H1", "L0H2", "L0H3"]]
    assert result["ablated_rand_icl_score_sets"].shape == (1, 4)
    assert result["metadata"]["parameters"]["n_random_sets_requested"] == 3
