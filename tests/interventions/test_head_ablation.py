"""Per-head ablation hooks: head labels, random controls, and what each hook does inside a real forward pass."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_cmr.errors import InputError
from icl_cmr.interventions.head_ablation import (ablation_hooks, format_heads, heads_to_mask, mean_ablation_hooks,
                                                 mean_head_activations, parse_heads, random_heads,
                                                 zero_ablation_hooks)
from icl_cmr.heads.hooks import hook_name
from icl_cmr.heads.models import load_model
from icl_cmr.heads.registry import resolve_model
from tiny_models import N_HEADS, N_KV_HEADS

ARCHS = ("gpt2", "neox", "llama_gqa")


@pytest.fixture(scope="module")
def tiny_models(tiny_model_dirs):
    return {arch: load_model(resolve_model(str(tiny_model_dirs[arch]))) for arch in ARCHS}


def _tokens(batch=3, length=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 250, (batch, length), generator=generator)


# ----------------------------------------------------------------------------- labels and masks

def test_parse_heads_reads_the_authors_labels():
    assert parse_heads("L5H1,L6H9") == [(5, 1), (6, 9)]
    assert parse_heads(" l0h3  L10H11") == [(0, 3), (10, 11)]
    assert format_heads(parse_heads("L5H1,L6H9")) == "L5H1,L6H9"


@pytest.mark.parametrize("text", ["L5", "5.1", "LxH1", ",", ""])
def test_parse_heads_rejects_malformed_labels(text):
    with pytest.raises(InputError, match="`heads`") as err:
        parse_heads(text)
    assert err.value.parameters == ("heads",)


@pytest.mark.parametrize("text", ["L1H0,L1H0", " l0h3  L10H11,L0H3 "])
def test_a_head_named_twice_is_refused_not_silently_dropped(text):
    """Repeats are refused (docs/conventions.md): one ablation, but counted twice in the head count."""
    with pytest.raises(InputError, match="names L[01]H[03] twice; give each head once"):
        parse_heads(text)


def test_heads_to_mask_marks_exactly_the_listed_heads():
    mask = heads_to_mask([(0, 1), (2, 3)], n_layers=3, n_heads=4)
    expected = np.zeros((3, 4), dtype=bool)
    expected[0, 1] = expected[2, 3] = True
    np.testing.assert_array_equal(mask, expected)


def test_heads_outside_the_model_are_rejected():
    with pytest.raises(InputError, match="L3H0 does not exist"):
        heads_to_mask([(3, 0)], n_layers=3, n_heads=4)


# ----------------------------------------------------------------------------- random controls

def test_random_heads_is_reproducible_and_distinct():
    first = random_heads(12, 12, 14, seed=3)
    assert first == random_heads(12, 12, 14, seed=3)
    assert first != random_heads(12, 12, 14, seed=4)
    assert len(set(first)) == 14 and all(0 <= l < 12 and 0 <= h < 12 for l, h in first)


def test_random_heads_never_draws_excluded_heads():
    excluded = [(layer, head) for layer in range(3) for head in range(4) if (layer + head) % 2 == 0]
    for seed in range(20):
        drawn = random_heads(3, 4, 6, seed=seed, exclude=excluded)
        assert not set(drawn) & set(excluded)
        assert len(set(drawn)) == 6
    with pytest.raises(InputError, match="only 6 heads are left"):
        random_heads(3, 4, 7, seed=0, exclude=excluded)


def test_layer_matched_random_heads_keep_the_per_layer_counts():
    target = [(0, 1), (0, 2), (2, 0)]
    for seed in range(10):
        drawn = random_heads(3, 4, 3, seed=seed, exclude=target, layer_matched_to=target)
        assert sorted(layer for layer, _ in drawn) == [0, 0, 2]
        assert not set(drawn) & set(target)


def test_random_heads_cover_every_head_over_many_seeds():
    seen = set()
    for seed in range(200):
        seen.update(random_heads(3, 4, 2, seed=seed))
    assert seen == {(layer, head) for layer in range(3) for head in range(4)}


# ----------------------------------------------------------------------------- hooks in a forward pass

def _run_and_capture_z(model, tokens, hooks, layer):
    captured = {}

    def capture(activation, hook=None):
        captured["z"] = activation.detach().clone()
        return activation

    with torch.inference_mode():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks) + [(hook_name(layer, "z"), capture)])
    return captured["z"], logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["value", "output", "mean"])
def test_ablating_a_head_sets_only_its_hook_z(tiny_models, arch, method):
    model = tiny_models[arch]
    tokens = _tokens()
    layer, head = 1, 2
    clean_z, clean_logits = _run_and_capture_z(model, tokens, [], layer)
    means = None
    if method == "mean":
        means = mean_head_activations(model, [_tokens(seed=1), _tokens(batch=2, seed=2)])
        expected = means[layer][: tokens.shape[1], head].expand(tokens.shape[0], -1, -1)
    else:
        expected = torch.zeros_like(clean_z[:, :, head])
    z, logits = _run_and_capture_z(model, tokens, ablation_hooks(model, [(layer, head)], method, means), layer)
    torch.testing.assert_close(z[:, :, head], expected, atol=1e-6, rtol=0)
    others = [h for h in range(N_HEADS) if h != head]
    torch.testing.assert_close(z[:, :, others], clean_z[:, :, others], atol=1e-6, rtol=0)
    assert not torch.allclose(logits, clean_logits)


def test_value_ablation_uses_hook_v_without_grouped_query_heads(tiny_models):
    assert [name for name, _ in zero_ablation_hooks(tiny_models["gpt2"], [(0, 1), (1, 0), (1, 3)])] == [
        hook_name(0, "v"), hook_name(1, "v")]
    # grouped-query: hook_v is shared by N_HEADS / N_KV_HEADS query heads, so one query head is cut at hook_z
    assert [name for name, _ in zero_ablation_hooks(tiny_models["llama_gqa"], [(1, 0)])] == [hook_name(1, "z")]
    assert [name for name, _ in zero_ablation_hooks(tiny_models["gpt2"], [(1, 0)], "output")] == [hook_name(1, "z")]


@pytest.mark.parametrize("arch", ARCHS)
def test_value_and_output_ablation_give_the_same_logits(tiny_models, arch):
    # v includes the value bias and attention rows sum to 1, so v_h = 0 <=> z_h = 0 (module docstring)
    model = tiny_models[arch]
    tokens = _tokens()
    heads = [(0, 3), (1, 1)]
    with torch.inference_mode():
        by_value = model.run_with_hooks(tokens, fwd_hooks=zero_ablation_hooks(model, heads, "value"))
        by_output = model.run_with_hooks(tokens, fwd_hooks=zero_ablation_hooks(model, heads, "output"))
    torch.testing.assert_close(by_value, by_output, atol=1e-5, rtol=0)


def test_unknown_method_is_a_clear_error(tiny_models):
    with pytest.raises(InputError, match="accepted: value, output, mean"):
        ablation_hooks(tiny_models["gpt2"], [(0, 0)], "zero")
    with pytest.raises(InputError, match="needs mean activations"):
        ablation_hooks(tiny_models["gpt2"], [(0, 0)], "mean")


# ----------------------------------------------------------------------------- against edited weights

def _randomise_biases(hf_model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in hf_model.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))


def _zero_value_weights(hf_model, arch, layer, kv_head):
    """Zero one value head's weights and bias directly in the Hugging Face module."""
    d_model = hf_model.config.hidden_size
    d_head = d_model // hf_model.config.num_attention_heads
    with torch.no_grad():
        if arch == "gpt2":  # Conv1D c_attn: weight [d_model, 3 d_model], columns q | k | v, head-major inside each
            attn = hf_model.transformer.h[layer].attn.c_attn
            cols = slice(2 * d_model + kv_head * d_head, 2 * d_model + (kv_head + 1) * d_head)
            attn.weight[:, cols] = 0
            attn.bias[cols] = 0
        elif arch == "neox":  # Linear qkv: rows grouped per head as [q | k | v] of d_head each
            qkv = hf_model.gpt_neox.layers[layer].attention.query_key_value
            rows = slice(kv_head * 3 * d_head + 2 * d_head, (kv_head + 1) * 3 * d_head)
            qkv.weight[rows] = 0
            qkv.bias[rows] = 0
        else:  # Llama v_proj: [n_kv_heads d_head, d_model], no bias
            v_proj = hf_model.model.layers[layer].self_attn.v_proj
            v_proj.weight[kv_head * d_head:(kv_head + 1) * d_head] = 0


@pytest.mark.parametrize("arch", ["gpt2", "neox"])
def test_zero_value_ablation_equals_a_model_with_that_heads_value_weights_zeroed(tiny_model_dirs, tmp_path, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tiny_model_dirs[arch]
    tokenizer = AutoTokenizer.from_pretrained(source)
    base = AutoModelForCausalLM.from_pretrained(source)
    _randomise_biases(base, seed=7)  # HF initialises biases to 0, which would hide a missed bias
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    layer, head = 1, 2
    _zero_value_weights(base, arch, layer, head)
    base.save_pretrained(tmp_path / "edited")
    tokenizer.save_pretrained(tmp_path / "edited")

    model = load_model(resolve_model(str(tmp_path / "base")))
    edited = load_model(resolve_model(str(tmp_path / "edited")))
    tokens = _tokens()
    with torch.inference_mode():
        ablated = model.run_with_hooks(tokens, fwd_hooks=zero_ablation_hooks(model, [(layer, head)], "value"))
        reference = edited(tokens)
        clean = model(tokens)
    torch.testing.assert_close(ablated, reference, atol=1e-5, rtol=0)
    assert (ablated - clean).abs().max() > 1e-3  # the ablation did something


def test_grouped_query_ablation_of_a_whole_group_equals_zeroed_shared_values(tiny_model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tiny_model_dirs["llama_gqa"]
    base = AutoModelForCausalLM.from_pretrained(source)
    group = N_HEADS // N_KV_HEADS
    layer, kv_head = 0, 1
    _zero_value_weights(base, "llama_gqa", layer, kv_head)
    base.save_pretrained(tmp_path / "edited")
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path / "edited")

    model = load_model(resolve_model(str(source)))
    edited = load_model(resolve_model(str(tmp_path / "edited")))
    query_heads = [(layer, kv_head * group + offset) for offset in range(group)]  # the query heads sharing it
    tokens = _tokens()
    with torch.inference_mode():
        ablated = model.run_with_hooks(tokens, fwd_hooks=zero_ablation_hooks(model, query_heads, "value"))
        reference = edited(tokens)
        one_head = model.run_with_hooks(tokens, fwd_hooks=zero_ablation_hooks(model, query_heads[:1], "value"))
    torch.testing.assert_close(ablated, reference, atol=1e-5, rtol=0)
    assert (one_head - reference).abs().max() > 1e-4  # one query head alone is a smaller ablation


# ----------------------------------------------------------------------------- mean activations

def test_mean_head_activations_average_over_prompts_that_reach_each_position(tiny_models):
    model = tiny_models["neox"]
    long_batch, short_batch = _tokens(batch=3, length=10, seed=4), _tokens(batch=2, length=6, seed=5)
    means = mean_head_activations(model, [long_batch, short_batch], layers=[1])
    assert list(means) == [1] and tuple(means[1].shape) == (10, N_HEADS, model.cfg.d_head)
    name = hook_name(1, "z")
    with torch.inference_mode():
        _, long_cache = model.run_with_cache(long_batch, names_filter=lambda n: n == name)
        _, short_cache = model.run_with_cache(short_batch, names_filter=lambda n: n == name)
    long_z, short_z = long_cache[name], short_cache[name]
    expected_head = (long_z[:, :6].sum(0) + short_z.sum(0)) / 5
    torch.testing.assert_close(means[1][:6], expected_head, atol=1e-6, rtol=0)
    torch.testing.assert_close(means[1][6:], long_z[:, 6:].mean(0), atol=1e-6, rtol=0)


def test_mean_ablation_rejects_prompts_longer_than_the_means(tiny_models):
    model = tiny_models["gpt2"]
    means = mean_head_activations(model, [_tokens(length=5)])
    hooks = mean_ablation_hooks(model, [(0, 0)], means)
    with pytest.raises(InputError, match="longer than the 5 positions"):
        with torch.inference_mode():
            model.run_with_hooks(_tokens(length=8), fwd_hooks=hooks)
    with pytest.raises(InputError, match="no mean activations for layer 1"):
        mean_ablation_hooks(model, [(1, 0)], {0: means[0]})
