"""Batched label scoring equals one unbatched forward per prompt and label, under every intervention."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_cmr.errors import InputError
from icl_cmr.heads.models import choose_bos, load_model
from icl_cmr.heads.registry import resolve_model
from icl_cmr.interventions.head_ablation import ablation_hooks
from icl_cmr.interventions.knockout import kind_codes, knockout_hooks, knockout_mask
from icl_cmr.interventions.pattern_eval import (EncodedPrompt, accuracy_with_ci, encode_prompts,
                                                label_log_likelihoods, plan_scoring, reference_means, score_choices,
                                                select_top_heads)
from icl_cmr.interventions.pattern_tasks import PatternTaskConfig, generate_prompts

ARCHS = ("gpt2", "neox", "llama_gqa")
HEADS = [(1, 2), (0, 1)]
#: Batched and unbatched float32 forwards differ by rounding only.
TOLERANCE = dict(rtol=0, atol=1e-5)  # measured differences: <= 1.1e-6


@pytest.fixture(scope="module")
def tiny_models(tiny_model_dirs):
    return {arch: load_model(resolve_model(str(tiny_model_dirs[arch]))) for arch in ARCHS}


def unbatched_reference(model, encoded, method, means=None):
    """One forward of prompt + whole label per (prompt, label), log-probs summed by hand."""
    result = np.zeros((len(encoded), len(encoded[0].continuation_ids)))
    for index, item in enumerate(encoded):
        for label, (cont, cont_kinds) in enumerate(zip(item.continuation_ids, item.continuation_kinds)):
            ids = np.concatenate([item.prompt_ids, cont])
            if method == "knockout":
                hooks = knockout_hooks(model, HEADS, knockout_mask(kind_codes(item.prompt_kinds + cont_kinds))[None])
            elif method in ("mean", "value"):
                hooks = ablation_hooks(model, HEADS, method, means=means)
            else:
                hooks = []
            with torch.inference_mode():
                logits = model.run_with_hooks(torch.as_tensor(ids)[None], fwd_hooks=hooks)[0].double()
            log_probs = torch.log_softmax(logits, dim=-1)
            last = len(item.prompt_ids) - 1
            result[index, label] = sum(log_probs[last + k, int(token)].item() for k, token in enumerate(cont))
    return result


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["none", "value", "mean", "knockout"])
def test_batched_scores_equal_unbatched_forwards(tiny_models, arch, method):
    model = tiny_models[arch]
    prompts = generate_prompts("category_pairs_4way_b", PatternTaskConfig(n_items=5, demo_seeds=(0,)))
    encoded = encode_prompts(model.tokenizer, prompts, choose_bos(model).token_id)
    assert len({len(e.prompt_ids) for e in encoded}) > 1  # padding is exercised
    means = None
    if method == "mean":
        longest = max(len(e.prompt_ids) + max(map(len, e.continuation_ids)) for e in encoded)
        means, _ = reference_means(model, encoded[:3], [0, 1], longest)
    hooks = ablation_hooks(model, HEADS, method, means=means) if method in ("mean", "value") else []
    plan = plan_scoring(encoded, batch_size=3)
    batched = label_log_likelihoods(model, plan, hooks=hooks, knockout_heads=HEADS if method == "knockout" else None)
    expected = unbatched_reference(model, encoded, method, means)
    np.testing.assert_allclose(batched, expected, **TOLERANCE)
    label_index = np.array([e.label_index for e in encoded])
    np.testing.assert_array_equal(score_choices(batched, label_index)[1], score_choices(expected, label_index)[1])


def _hand_prompt(length, continuations, labels=("Foo", "Bar", "Mur")):
    kinds = tuple(tuple(f"label:{label}#{k}" for k in range(len(cont))) for label, cont in zip(labels, continuations))
    rng = np.random.default_rng(length)
    return EncodedPrompt(prompt_ids=np.r_[0, rng.integers(1, 200, length)],
                         prompt_kinds=(None,) + tuple(f"letter:{t}#0" for t in rng.integers(0, 5, length)),
                         continuation_ids=tuple(np.asarray(c) for c in continuations), continuation_kinds=kinds,
                         label_index=0)


def test_single_token_labels_ride_on_a_multi_token_labels_run(tiny_models):
    # " Foo" and " Res" one token, " Mur" two: one sequence (prompt + Mur's first token) serves all three.
    model = tiny_models["gpt2"]
    encoded = [_hand_prompt(n, ([33], [34, 35], [36])) for n in (7, 11, 5)]
    plan = plan_scoring(encoded, batch_size=2)
    assert plan.n_runs == 3
    for method in ("none", "knockout"):
        batched = label_log_likelihoods(model, plan, knockout_heads=HEADS if method == "knockout" else None)
        np.testing.assert_allclose(batched, unbatched_reference(model, encoded, method), **TOLERANCE)


def test_labels_that_differ_before_their_last_token_get_a_sequence_each(tiny_models):
    # Equal first tokens, but of different labels: the knockout tells them apart, so no sharing.
    encoded = [_hand_prompt(6, ([40, 41], [40, 42], [43]))]
    plan = plan_scoring(encoded)
    assert plan.n_runs == 2
    batched = label_log_likelihoods(tiny_models["neox"], plan, knockout_heads=HEADS)
    np.testing.assert_allclose(batched, unbatched_reference(tiny_models["neox"], encoded, "knockout"), **TOLERANCE)


def test_a_plan_reused_across_conditions_gives_what_a_fresh_one_gives(tiny_models):
    model = tiny_models["llama_gqa"]
    prompts = generate_prompts("recursion", PatternTaskConfig(n_items=4, demo_seeds=(0,)))
    encoded = encode_prompts(model.tokenizer, prompts, choose_bos(model).token_id)
    plan = plan_scoring(encoded, batch_size=4)
    zeroed = ablation_hooks(model, HEADS, "value")
    first = label_log_likelihoods(model, plan, hooks=zeroed)
    label_log_likelihoods(model, plan, knockout_heads=HEADS)
    np.testing.assert_array_equal(label_log_likelihoods(model, plan, hooks=zeroed), first)
    np.testing.assert_array_equal(label_log_likelihoods(model, encoded, batch_size=4, hooks=zeroed), first)


def test_bad_scoring_and_selection_arguments_name_their_parameters():
    for call, parameter in ((lambda: plan_scoring([_hand_prompt(3, ([33], [34]), ("Foo", "Bar"))], batch_size=0),
                             "batch_size"),
                            (lambda: select_top_heads(np.zeros((2, 4)), 120.0), "percentage"),
                            (lambda: select_top_heads(np.zeros(8), 10.0), "scores"),
                            (lambda: accuracy_with_ci(np.array([], dtype=bool)), "correct")):
        with pytest.raises(InputError) as caught:
            call()
        assert caught.value.parameters == (parameter,) and str(caught.value).startswith(f"`{parameter}`")
