"""The architecture matrix: on every architecture we accept, the attention hooks hold what their names say.

For each tiny random model of tests/tiny_models.MATRIX_ARCHITECTURES (norm gains drawn
away from 1), loaded through ``icl_cmr.heads.models.load_model`` (TransformerLens 4's bridge):

* ``hook_attn_scores`` equals the softmax input Hugging Face itself computes: ``q . k``
  times the architecture's scale, after its rotary embedding (full, partial or
  adjacent-pair), soft-capped where the model soft-caps, plus its ALiBi bias, recorded by
  a reference attention function written here (registered with transformers'
  ``AttentionInterface``; checked against HF's own eager probabilities);
* ``hook_pattern`` equals HF's ``output_attentions``;
* the knockout (scores set to the dtype's minimum) changes the logits exactly as masking
  that edge inside HF's attention does;
* the head-score engine's lag-CRP equals a slow loop over the reference scores;
* no layer's attention pattern outlives its own forward;
* the streamed copying score equals the full vocab x vocab OV circuit of TransformerLens's
  processed weights, and of weights folded by hand from the HF checkpoint;
* an architecture whose scores cannot be read correctly (GPT-Neo) is refused in one line.

``python tests/heads/test_architectures.py`` prints the per-architecture maximum differences.
"""
from __future__ import annotations

import gc
import sys
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from icl_cmr.errors import InputError
from icl_cmr.heads.scores import repeat_lag_indices, stream_attention_scores
from icl_cmr.heads.hooks import hook_name
from icl_cmr.heads.models import load_model
from icl_cmr.heads.registry import resolve_model
from tiny_models import MATRIX_ARCHITECTURES, N_LAYERS, REFUSED_ARCHITECTURES

SCORED = tuple(arch for arch in MATRIX_ARCHITECTURES if arch not in REFUSED_ARCHITECTURES)
#: Architectures whose Hugging Face attention bypasses the AttentionInterface: the
#: reference scores are rebuilt by hand (Bloom's ALiBi) or only probabilities compared (Falcon).
HAND_REFERENCE = ("bloom", "falcon")
REFERENCE_NAME = "icl_cmr_test_reference"
#: float32 model vs float64 reference of the same weights.
ATOL = 1e-4


class ReferenceAttention:
    """HF-eager attention in float64 that records each layer's softmax input; optional edge knockout.

    ``edit``: {layer: (head, query, key)} set to -inf before the softmax.
    """

    def __init__(self, edit=None):
        self.scores = []
        self.edit = edit or {}

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                 **kwargs):
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        scores = (query.double() @ key.double().transpose(-1, -2)) * scaling
        if softcap:
            scores = softcap * torch.tanh(scores / softcap)
        if attention_mask is not None:
            scores = scores + attention_mask[..., : key.shape[-2]].double()
        layer = len(self.scores)
        if layer in self.edit:
            head, q, k = self.edit[layer]
            scores[:, head, q, k] = -torch.inf
        self.scores.append(scores)
        weights = torch.softmax(scores, dim=-1)
        return (weights.to(value.dtype) @ value).transpose(1, 2).contiguous(), weights.to(value.dtype)


_CURRENT = {}


def _dispatch(*args, **kwargs):
    return _CURRENT["attention"](*args, **kwargs)


def _hf_model(model_dir, implementation="eager"):
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if REFERENCE_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(REFERENCE_NAME, _dispatch)
        AttentionMaskInterface.register(REFERENCE_NAME, eager_mask)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    if implementation != "eager":
        model.set_attn_implementation(implementation)
    return model


def _bloom_reference_scores(hf_model, tokens):
    """Bloom's softmax input rebuilt from its weights: q . k / sqrt(d_head) + ALiBi slope x key position."""
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    captured = []
    handles = [block.self_attention.query_key_value.register_forward_hook(
        lambda module, inputs, output: captured.append(output)) for block in hf_model.transformer.h]
    with torch.inference_mode():
        hf_model(tokens)
    for handle in handles:
        handle.remove()
    scores = []
    n_pos = tokens.shape[1]
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool).tril()
    for block, fused in zip(hf_model.transformer.h, captured):
        attention = block.self_attention
        heads, d_head = attention.num_heads, attention.head_dim
        qkv = fused.double().view(tokens.shape[0], n_pos, heads, 3, d_head)
        query, key = qkv[..., 0, :].transpose(1, 2), qkv[..., 1, :].transpose(1, 2)
        slopes = _get_alibi_slopes(heads, tokens.device).double()
        layer = query @ key.transpose(-1, -2) / d_head ** 0.5 + slopes[None, :, None, None] * torch.arange(
            n_pos, dtype=torch.float64)
        scores.append(layer.masked_fill(~causal, -torch.inf))
    return scores


def reference_attention(arch, model_dir, tokens, edit=None):
    """(softmax inputs per layer or None, HF probabilities per layer, HF logits), all in float64/float32."""
    eager = _hf_model(model_dir)
    with torch.inference_mode():
        out = eager(tokens, output_attentions=True)
    probs = [p.double() for p in out.attentions]
    if arch == "bloom":
        return _bloom_reference_scores(eager, tokens), probs, out.logits
    if arch in HAND_REFERENCE:
        return None, probs, out.logits
    recorder = ReferenceAttention(edit)
    _CURRENT["attention"] = recorder
    with torch.inference_mode():
        logits = _hf_model(model_dir, REFERENCE_NAME)(tokens).logits
    return recorder.scores, probs, logits


def _tokens(n_prompts=2, n_pos=12, seed=0):
    return torch.randint(1, 300, (n_prompts, n_pos), generator=torch.Generator().manual_seed(seed))


def _bridge_attention(model, tokens, fwd_hooks=()):
    fired = {}

    def record(tensor, hook):
        fired[hook.name] = tensor.detach().double().clone()

    names = [hook_name(layer, kind) for layer in range(N_LAYERS) for kind in ("attn_scores", "pattern")]
    with torch.inference_mode():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks) + [(n, record) for n in names])
    return ([fired[hook_name(layer, "attn_scores")] for layer in range(N_LAYERS)],
            [fired[hook_name(layer, "pattern")] for layer in range(N_LAYERS)], logits)


def max_differences(arch, model_dir):
    """Largest |bridge - reference| of scores (causal entries), probabilities and knockout logits."""
    model = load_model(resolve_model(str(model_dir)))
    tokens = _tokens()
    scores, patterns, _ = _bridge_attention(model, tokens)
    ref_scores, ref_probs, _ = reference_attention(arch, model_dir, tokens)
    causal = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).tril()
    result = {"pattern": max((p - r).abs().max().item() for p, r in zip(patterns, ref_probs))}
    if ref_scores is not None:
        result["scores"] = max((s - r)[..., causal].abs().max().item() for s, r in zip(scores, ref_scores))
    # softmax of the hooked scores reproduces HF's probabilities (the scores feed that softmax)
    result["softmax(scores)"] = max((torch.softmax(s, -1) - r).abs().max().item() for s, r in zip(scores, ref_probs))
    return result


# ----------------------------------------------------------------------------- the matrix

@pytest.mark.parametrize("arch", SCORED)
def test_reference_attention_reproduces_hugging_face_eager_probabilities(arch, matrix_model_dir):
    scores, probs, _ = reference_attention(arch, matrix_model_dir(arch), _tokens())
    if scores is None:
        pytest.skip(f"{arch}: no AttentionInterface; probabilities compared directly")
    for layer_scores, layer_probs in zip(scores, probs):
        torch.testing.assert_close(torch.softmax(layer_scores, -1), layer_probs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", SCORED)
def test_hook_attn_scores_are_the_models_softmax_input_and_hook_pattern_its_output(arch, matrix_model_dir):
    differences = max_differences(arch, matrix_model_dir(arch))
    assert differences["pattern"] < 1e-5, differences
    assert differences["softmax(scores)"] < 1e-5, differences
    if arch != "falcon":
        assert differences["scores"] < ATOL, differences


@pytest.mark.parametrize("arch", [a for a in SCORED if a not in HAND_REFERENCE])
def test_knockout_changes_the_logits_exactly_as_masking_the_edge_in_hugging_face(arch, matrix_model_dir):
    model_dir = matrix_model_dir(arch)
    model = load_model(resolve_model(str(model_dir)))
    tokens = _tokens()
    edit = {0: (1, 9, 4), 1: (2, 10, 7)}  # layer: (head, query, key)

    def cut(layer):
        head, query, key = edit[layer]

        def hook(scores, hook):  # noqa: ARG001
            scores[:, head, query, key] = torch.finfo(scores.dtype).min
            return scores
        return hook

    _, patterns, logits = _bridge_attention(model, tokens, [(hook_name(layer, "attn_scores"), cut(layer))
                                                           for layer in edit])
    _, _, intact_logits = _bridge_attention(model, tokens)
    _, _, reference_logits = reference_attention(arch, model_dir, tokens, edit=edit)
    for layer, (head, query, key) in edit.items():
        assert patterns[layer][:, head, query, key].abs().max() == 0
    assert (logits - intact_logits).abs().max() > 1e-6  # the edit is not a no-op ...
    torch.testing.assert_close(logits.double(), reference_logits.double(), atol=ATOL, rtol=0)  # ... and is HF's


@pytest.mark.parametrize("arch", ["falcon", "bloom"])
def test_knockout_reaches_the_logits_where_no_reference_attention_can_be_plugged_in(arch, matrix_model_dir):
    model = load_model(resolve_model(str(matrix_model_dir(arch))))
    tokens = _tokens()

    def cut(scores, hook):  # noqa: ARG001
        scores[:, :, 9, 4] = torch.finfo(scores.dtype).min
        return scores

    _, patterns, logits = _bridge_attention(model, tokens, [(hook_name(0, "attn_scores"), cut)])
    _, _, intact = _bridge_attention(model, tokens)
    assert patterns[0][:, :, 9, 4].abs().max() == 0
    assert (logits - intact).abs().max() > 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("arch", SCORED)
def test_streamed_attention_crp_equals_a_loop_over_the_reference_scores(arch, matrix_model_dir):
    model_dir = matrix_model_dir(arch)
    model = load_model(resolve_model(str(model_dir)))
    block_len, offset = 6, 1
    rng = np.random.default_rng(1)
    prompts = np.stack([np.concatenate([[0], block, block]) for block in
                        (rng.choice(np.arange(1, 300), block_len, replace=False) for _ in range(3))])
    prefix = np.stack([np.concatenate([[0]] + [rng.choice(np.arange(1, 300), 4, replace=False)] * 3)])
    result = stream_attention_scores(model, prompts, block_len, offset, prefix, 4, batch_size=2, progress=False)
    ref_scores, ref_probs, _ = reference_attention(arch, model_dir, torch.as_tensor(prompts))
    queries, keys, valid = repeat_lag_indices(block_len, offset)
    for layer in range(N_LAYERS):
        for source, engine in ((ref_probs, result.crp_probs), (ref_scores, result.crp_scores)):
            if source is None:
                continue
            expected = np.full(engine.mean.shape[1:], np.nan)
            for head in range(expected.shape[0]):
                for lag_index in range(expected.shape[1]):
                    values = [source[layer][p, head, queries[q], keys[q, lag_index]].item()
                              for p in range(prompts.shape[0]) for q in range(block_len) if valid[q, lag_index]]
                    expected[head, lag_index] = np.mean(values) if values else np.nan
            np.testing.assert_allclose(engine.mean[layer], expected, atol=ATOL, equal_nan=True)


@pytest.mark.slow
@pytest.mark.parametrize("arch", SCORED)
def test_no_layers_attention_pattern_outlives_its_forward(arch, matrix_model_dir):
    """Streaming holds one layer's [batch, head, query, key] tensors at a time (not one per layer)."""
    model = load_model(resolve_model(str(matrix_model_dir(arch))))
    alive = {}
    leaks = []

    def watch(layer):
        def hook(tensor, hook):  # noqa: ARG001
            gc.collect()
            leaks.extend(name for name, ref in alive.items() if ref() is not None and name[0] < layer)
            alive[(layer, hook.name)] = weakref.ref(tensor)
        return hook

    hooks = [(hook_name(layer, kind), watch(layer)) for layer in range(N_LAYERS) for kind in ("attn_scores", "pattern")]
    with torch.inference_mode():
        model.run_with_hooks(_tokens(), fwd_hooks=hooks, return_type=None, stop_at_layer=N_LAYERS)
    assert not leaks, f"patterns of earlier layers still alive: {sorted(set(leaks))}"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama_gqa", "gptj", "bloom"])
def test_live_activations_do_not_accumulate_across_layers(arch, tmp_path):
    """Bytes held by non-parameter tensors when layer 3's pattern fires equal those at layer 1 (4 layers)."""
    from tiny_models import make_tiny_model_dir

    model = load_model(resolve_model(str(make_tiny_model_dir(arch, tmp_path / arch, n_layers=4))))
    owned = {id(t) for t in list(model.parameters()) + list(model.buffers())}
    held = {}

    def measure(layer):
        def hook(pattern, hook):  # noqa: ARG001
            gc.collect()
            with warnings.catch_warnings():  # isinstance() on every object touches deprecated torch aliases
                warnings.simplefilter("ignore")
                held[layer] = sum(o.numel() * o.element_size() for o in gc.get_objects()
                                  if isinstance(o, torch.Tensor) and id(o) not in owned and o.device.type != "meta")
        return hook

    with torch.inference_mode():
        model.run_with_hooks(_tokens(4, 40), fwd_hooks=[(hook_name(layer, "pattern"), measure(layer))
                                                        for layer in range(4)])
    assert held[3] <= held[1], held


@pytest.mark.parametrize("arch", ["gpt2", "neox", "bloom"])
def test_the_streaming_pass_leaves_no_pattern_on_any_module(arch, matrix_model_dir):
    """Also when the pass stops inside the last attention module (no last MLP, no unembedding)."""
    model = load_model(resolve_model(str(matrix_model_dir(arch))))
    prompts = np.stack([np.concatenate([[0], block, block]) for block in (np.arange(1, 7), np.arange(11, 17))])
    stream_attention_scores(model, prompts, 6, 1, prompts, 6, batch_size=2, progress=False)
    held = [(layer, name) for layer in range(N_LAYERS) for name in ("_pattern", "_attn_scores")
            if getattr(model.blocks[layer].attn, name, None) is not None]
    assert not held


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "llama_gqa", "gptj", "opt"])
def test_bfloat16_models_pass_the_probe_and_score_close_to_float32(arch, matrix_model_dir):
    spec = resolve_model(str(matrix_model_dir(arch)))
    tokens = _tokens()
    full, _, _ = _bridge_attention(load_model(spec), tokens)
    half, _, _ = _bridge_attention(load_model(spec, dtype="bfloat16"), tokens)
    causal = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).tril()
    for layer in range(N_LAYERS):  # bfloat16 keeps 8 bits of mantissa; the tiny models' scores are O(0.1-1)
        assert (full[layer] - half[layer])[..., causal].abs().max() < 0.05


@pytest.mark.parametrize("arch", REFUSED_ARCHITECTURES)
def test_architecture_whose_scores_cannot_be_read_is_refused_in_one_line(arch, matrix_model_dir):
    with pytest.raises(InputError, match=r"GPTNeoForCausalLM is not supported: .*hook_attn_scores") as error:
        load_model(resolve_model(str(matrix_model_dir(arch))))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("arch", REFUSED_ARCHITECTURES)
def test_refused_architecture_still_loads_for_value_ablation(arch, matrix_model_dir):
    model = load_model(resolve_model(str(matrix_model_dir(arch))), require_hooks=("pattern", "v", "z"))
    assert model.cfg.n_layers == N_LAYERS


if __name__ == "__main__":  # the per-architecture table for notes and the README
    import tempfile

    from tiny_models import make_tiny_model_dir

    root = Path(tempfile.mkdtemp())
    torch.set_num_threads(1)
    print(f"{'architecture':<12} {'max |scores - ref|':>20} {'max |pattern - ref|':>20} "
          f"{'max |softmax(scores) - ref|':>28}")
    for arch in SCORED:
        found = max_differences(arch, make_tiny_model_dir(arch, root / arch, random_norms=True))
        print(f"{arch:<12} {found.get('scores', float('nan')):>20.2e} {found['pattern']:>20.2e} "
              f"{found['softmax(scores)']:>28.2e}")
    sys.exit(0)
