"""Label tokens are those the model reads after the prompt (issue 12 item 5: SentencePiece dummy prefix)."""
from __future__ import annotations

import logging
import string

import numpy as np
import pytest
import torch

from icl_cmr.heads.models import load_model
from icl_cmr.heads.registry import resolve_model
from icl_cmr.interventions.pattern_eval import encode_prompts, label_log_likelihoods
from icl_cmr.interventions.pattern_tasks import LABELS, PatternTaskConfig, generate_prompts

#: Label pieces of the SentencePiece-style vocabulary, each built by three merges (e.g. ▁ F -> ▁F, o o -> oo).
LABEL_MERGES = {"Foo": [("▁", "F"), ("o", "o"), ("▁F", "oo")], "Bar": [("▁", "B"), ("a", "r"), ("▁B", "ar")],
                "Mur": [("▁", "M"), ("u", "r"), ("▁M", "ur")], "Res": [("▁", "R"), ("e", "s"), ("▁R", "es")]}


def sentencepiece_style_tokenizer(extra_merges=()):
    """A Llama-1/2 / Mistral-7B-v0.1 style ``tokenizer.json``: BPE over characters, with the
    normalizer ``Prepend("▁")`` + ``Replace(" ", "▁")`` (the dummy prefix), loaded as a generic
    ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    merges = list(extra_merges) + [pair for label in LABELS for pair in LABEL_MERGES[label]]  # first = applied first
    pieces = ["<unk>", "<s>", "▁"] + sorted(set(string.ascii_letters + string.digits + string.punctuation + "\n"))
    pieces += [left + right for left, right in merges if left + right not in pieces]
    tokenizer = Tokenizer(models.BPE(vocab={piece: i for i, piece in enumerate(pieces)}, merges=merges,
                                     unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def llama_with_sentencepiece(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = sentencepiece_style_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512, bos_token_id=1, eos_token_id=1))
    folder = tmp_path_factory.mktemp("llama_sp")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_model(resolve_model(str(folder))), tokenizer


def test_the_dummy_prefix_gives_a_label_alone_a_spurious_piece():
    # The fault being fixed, shown on the test tokenizer itself.
    tokenizer = sentencepiece_style_tokenizer()
    alone = tokenizer(" Foo", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(alone) == ["▁", "▁Foo"]


def test_sentencepiece_labels_are_the_single_pieces_read_after_the_prompt():
    tokenizer = sentencepiece_style_tokenizer()
    prompts = generate_prompts("category_pairs_4way_a", PatternTaskConfig(n_items=4, demo_seeds=(0,)))
    encoded = encode_prompts(tokenizer, prompts, bos_id=1)
    vocab = tokenizer.get_vocab()
    expected = [np.array([vocab["▁" + label]]) for label in LABELS]  # one piece each, from the vocabulary
    for item in encoded:
        assert [c.tolist() for c in item.continuation_ids] == [e.tolist() for e in expected]
        assert item.continuation_kinds == tuple((f"label:{label}#0",) for label in LABELS)


def test_sentencepiece_label_scores_have_no_log_p_of_the_spurious_piece(llama_with_sentencepiece):
    model, tokenizer = llama_with_sentencepiece
    prompts = generate_prompts("repetition", PatternTaskConfig(n_items=3, demo_seeds=(0,)))
    encoded = encode_prompts(tokenizer, prompts, bos_id=1)
    scores = label_log_likelihoods(model, encoded)
    vocab = tokenizer.get_vocab()
    for item, row in zip(encoded, scores):
        # Reference: log p(▁Foo | prompt) and log p(▁Bar | prompt) from the prompt's last position.
        with torch.inference_mode():
            logits = model(torch.as_tensor(item.prompt_ids)[None])[0, -1].double()
        log_probs = torch.log_softmax(logits, dim=-1)
        expected = [log_probs[vocab["▁Foo"]].item(), log_probs[vocab["▁Bar"]].item()]
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-5)


def test_a_token_spanning_the_join_falls_back_to_the_label_alone(caplog):
    # A first-priority merge of ":" with the label's "▁" makes the joint text's tokens straddle prompt and label.
    tokenizer = sentencepiece_style_tokenizer(extra_merges=[(":", "▁")])
    prompts = generate_prompts("recursion", PatternTaskConfig(n_items=2, demo_seeds=(0,)))
    with caplog.at_level(logging.WARNING, logger="icl_cmr.interventions.pattern_eval"):
        encoded = encode_prompts(tokenizer, prompts, bos_id=1)
    alone = tokenizer(" Foo", add_special_tokens=False)["input_ids"]
    assert encoded[0].continuation_ids[0].tolist() == alone
    assert "4 of 4 label continuations share a token with the end of their prompt" in caplog.text
    # The prompt keeps its own tokens, ending in ":" rather than the merged ":▁".
    assert tokenizer.convert_ids_to_tokens([int(encoded[0].prompt_ids[-1])]) == [":"]


def test_byte_level_bpe_labels_are_tokenized_as_before(tiny_model_dirs):
    # GPT-2-style byte-level BPE: the label in context is the label alone (no dummy prefix to drop).
    model = load_model(resolve_model(str(tiny_model_dirs["gpt2"])))
    prompts = generate_prompts("category_pairs_4way_b", PatternTaskConfig(n_items=3, demo_seeds=(0,)))
    encoded = encode_prompts(model.tokenizer, prompts, bos_id=0)
    for item in encoded:
        for label, cont in zip(LABELS, item.continuation_ids):
            assert cont.tolist() == model.tokenizer(" " + label, add_special_tokens=False)["input_ids"]
