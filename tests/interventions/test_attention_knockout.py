"""Attention knockout: the edges it cuts, and that the cut reaches hook_pattern and the output in TransformerLens 4."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_cmr.interventions.knockout import (batch_knockout_mask, kind_codes, knockout_edges, knockout_hooks,
                                            knockout_mask, token_kinds)
from icl_cmr.errors import InputError
from icl_cmr.heads.hooks import hook_name
from icl_cmr.heads.models import load_model
from icl_cmr.heads.registry import resolve_model
from icl_cmr.interventions.pattern_tasks import Segment




# A hand-made prompt "<bos> A B : A B : A" as kinds: BOS has none.
HAND_KINDS = [None, "A", "B", ":", "A", "B", ":", "A"]
# query i -> keys j + 1 for every earlier j of the same kind, worked out by hand:
#   4 (A): j=1 -> 2;  5 (B): j=2 -> 3;  6 (:): j=3 -> 4;  7 (A): j=1 -> 2, j=4 -> 5
HAND_EDGES = [(4, 2), (5, 3), (6, 4), (7, 2), (7, 5)]


def test_mask_blocks_exactly_the_listed_edges_of_a_hand_made_prompt():
    mask = knockout_mask(kind_codes(HAND_KINDS))
    expected = np.zeros((8, 8), dtype=bool)
    for query, key in HAND_EDGES:
        expected[query, key] = True
    np.testing.assert_array_equal(mask, expected)
    assert knockout_edges(kind_codes(HAND_KINDS)) == HAND_EDGES


def test_a_kind_repeated_right_after_itself_blocks_the_query_itself():
    # "A B B B": the third B's earlier Bs at 2 and 3 were followed by 3 and 4 (itself).
    assert knockout_edges(kind_codes([None, "A", "B", "B", "B"])) == [(3, 3), (4, 3), (4, 4)]


def test_tokens_without_kind_never_match():
    assert knockout_edges(kind_codes([None, None, "x", None, None])) == []


def test_batch_mask_pads_without_blocking():
    masks = batch_knockout_mask([kind_codes(HAND_KINDS), kind_codes(["a", "a"])], 9)
    assert masks.shape == (2, 9, 9)
    np.testing.assert_array_equal(masks[0, :8, :8], knockout_mask(kind_codes(HAND_KINDS)))
    assert masks[0, 8].sum() == masks[0, :, 8].sum() == 0
    assert masks[1].sum() == 1 and masks[1, 1, 1]


def test_tokens_take_the_kind_of_their_first_non_space_character():
    text = "Hi\n\nA B: Foo"
    segments = [Segment(0, 2, None, None), Segment(2, 4, "sep:newline", "sep:newline"),
                Segment(4, 5, "letter:A", "letter:A"), Segment(5, 6, "sep:space", "sep:space"),
                Segment(6, 7, "letter:B", "letter:B"), Segment(7, 8, "sep:colon", "sep:colon"),
                Segment(8, 9, "sep:space", "sep:space"), Segment(9, 12, "label:Foo", "label:Foo")]
    # tokens: "Hi" | "\n\n" | "A" | " B" | ":" | " F" | "oo"
    offsets = [(0, 2), (2, 4), (4, 5), (5, 7), (7, 8), (8, 10), (10, 12)]
    assert token_kinds(text, offsets, segments) == [None, "sep:newline#0", "letter:A#0", "letter:B#0",
                                                   "sep:colon#0", "label:Foo#0", "label:Foo#1"]
    # a whitespace-only token keeps the separator's kind; a special token (empty span) has none
    assert token_kinds(text, [(0, 0), (5, 6), (6, 7)], segments) == [None, "sep:space#0", "letter:B#0"]


def test_category_level_merges_words_of_one_category():
    text = "apple pear"
    segments = [Segment(0, 5, "word:apple", "category:fruit"), Segment(5, 6, "sep:space", "sep:space"),
                Segment(6, 10, "word:pear", "category:fruit")]
    offsets = [(0, 5), (5, 10)]
    assert token_kinds(text, offsets, segments, "kind") == ["word:apple#0", "word:pear#0"]
    assert token_kinds(text, offsets, segments, "category") == ["category:fruit#0", "category:fruit#0"]
    with pytest.raises(InputError, match="accepted: kind, category"):
        token_kinds(text, offsets, segments, "letter")


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama_gqa"])
def test_editing_attn_scores_cuts_pattern_for_the_selected_head_only(tiny_model_dirs, arch):
    model = load_model(resolve_model(str(tiny_model_dirs[arch])))
    tokens = torch.tensor([[0, 33, 34, 26, 33, 34, 26, 33], [0, 40, 41, 26, 40, 41, 26, 40]])
    blocked = batch_knockout_mask([kind_codes(HAND_KINDS)] * 2, 8)
    layer, head = 1, 2
    names = [hook_name(0, "pattern"), hook_name(1, "pattern")]
    with torch.inference_mode():
        clean_logits, clean = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        for name, fn in knockout_hooks(model, [(layer, head)], blocked):
            model.add_hook(name, fn)
        try:
            cut_logits, cut = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        finally:
            model.reset_hooks()
    before, after = clean[names[1]], cut[names[1]]
    mask = torch.as_tensor(blocked)
    # the listed edges carry no attention, and only in the selected head
    assert torch.all(after[:, head][mask] == 0)
    assert torch.all(before[:, head][mask] > 0)
    others = [h for h in range(model.cfg.n_heads) if h != head]
    torch.testing.assert_close(after[:, others], before[:, others], rtol=0, atol=0)
    torch.testing.assert_close(cut[names[0]], clean[names[0]], rtol=0, atol=0)  # earlier layer untouched
    # every other edge of the head keeps its share: the clean row renormalised over unblocked keys
    kept = before[:, head].masked_fill(mask, 0)
    torch.testing.assert_close(after[:, head], kept / kept.sum(-1, keepdim=True), rtol=1e-5, atol=1e-6)
    # and the model's output changes at the queries that lost edges, not before the first of them
    assert not torch.allclose(cut_logits[:, 4:], clean_logits[:, 4:])
    torch.testing.assert_close(cut_logits[:, :4], clean_logits[:, :4], rtol=0, atol=0)


def test_knockout_rejects_heads_outside_the_model_and_mismatched_batches(tiny_model_dirs):
    model = load_model(resolve_model(str(tiny_model_dirs["gpt2"])))
    with pytest.raises(InputError, match="does not exist"):
        knockout_hooks(model, [(5, 0)], np.zeros((1, 3, 3), dtype=bool))
    hooks = knockout_hooks(model, [(0, 1)], np.zeros((1, 3, 3), dtype=bool))
    with pytest.raises(InputError, match="does not match"), torch.inference_mode():
        model.run_with_hooks(torch.tensor([[0, 33, 34, 35]]), fwd_hooks=hooks)
    assert knockout_hooks(model, [], np.zeros((1, 3, 3), dtype=bool)) == []
