"""Copying score: closed forms, the full vocab x vocab OV circuit, and grouped-query heads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_cmr.heads.copying import (copying_scores, eigenvalue_copying_ratio, kv_head_index, model_copying_scores,
                                   norm_gain, unembed_embed_product)
from icl_cmr.errors import InputError
from icl_cmr.heads.hooks import hook_name
from icl_cmr.heads.models import load_model
from icl_cmr.heads.registry import resolve_model
from tiny_models import MATRIX_ARCHITECTURES




def _full_ov_reference(W_E, W_V, W_O, W_U):
    """Explicit eigenvalues of W_E W_V^h W_O^h W_U [vocab, vocab], one head at a time.

    torch rather than numpy linear algebra: it obeys the one-thread setting above.
    """
    W_E, W_V, W_O, W_U = (torch.as_tensor(np.asarray(w, dtype=np.float64)) for w in (W_E, W_V, W_O, W_U))
    n_layers, n_kv = W_V.shape[:2]
    n_heads = W_O.shape[1]
    scores = np.zeros((n_layers, n_heads))
    for layer in range(n_layers):
        for head in range(n_heads):
            kv_head = head * n_kv // n_heads  # contiguous groups of query heads share a kv head
            full = W_E @ W_V[layer, kv_head] @ W_O[layer, head] @ W_U
            eig = torch.linalg.eigvals(full)
            scores[layer, head] = float(eig.real.sum() / eig.abs().sum())
    return scores


def test_identity_ov_copies_and_negated_identity_anti_copies():
    d = 4
    W_E, W_U = np.eye(d), np.eye(d)
    W_V = np.stack([np.eye(d)[None], np.eye(d)[None]])  # [layer 2, kv 1, d_model, d_head]
    W_O = np.stack([np.eye(d)[None], -np.eye(d)[None]])
    np.testing.assert_allclose(copying_scores(W_E, W_V, W_O, W_U), [[1.0], [-1.0]], atol=1e-12)


def test_a_quarter_turn_has_score_zero():
    # Eigenvalues +i and -i: real parts sum to 0.
    rotation = np.array([[0.0, -1.0], [1.0, 0.0]])
    score = copying_scores(np.eye(2), np.eye(2)[None, None], rotation[None, None], np.eye(2))
    np.testing.assert_allclose(score, [[0.0]], atol=1e-12)
    np.testing.assert_allclose(eigenvalue_copying_ratio(np.array([2.0, -1.0, 1j, -1j])), 1.0 / 5.0)


def test_zero_ov_circuit_gives_nan():
    assert np.isnan(copying_scores(np.eye(3), np.zeros((1, 1, 3, 2)), np.ones((1, 1, 2, 3)), np.eye(3))[0, 0])


@pytest.mark.parametrize("n_heads, n_kv", [(4, 4), (4, 2), (6, 1)])
def test_random_weights_match_the_full_vocab_circuit(n_heads, n_kv):
    rng = np.random.default_rng(n_heads + n_kv)
    vocab, d_model, d_head, n_layers = 40, 12, 3, 2
    W_E = rng.normal(size=(vocab, d_model))
    W_U = rng.normal(size=(d_model, vocab))
    W_V = rng.normal(size=(n_layers, n_kv, d_model, d_head))
    W_O = rng.normal(size=(n_layers, n_heads, d_head, d_model))
    np.testing.assert_allclose(copying_scores(W_E, W_V, W_O, W_U), _full_ov_reference(W_E, W_V, W_O, W_U),
                               atol=1e-8)


def test_half_precision_weights_are_scored_in_float32():
    rng = np.random.default_rng(5)
    W = [rng.normal(size=s) for s in ((30, 8), (1, 2, 8, 2), (1, 2, 2, 8), (8, 30))]
    expected = _full_ov_reference(*W)
    bf16 = copying_scores(*(torch.tensor(w, dtype=torch.bfloat16) for w in W))
    np.testing.assert_allclose(bf16, expected, atol=0.05)  # bf16 rounding of the weights themselves


def test_kv_head_index_groups_contiguous_query_heads():
    np.testing.assert_array_equal(kv_head_index(8, 2), [0, 0, 0, 0, 1, 1, 1, 1])
    with pytest.raises(InputError, match="multiple"):
        kv_head_index(6, 4)


def test_grouped_query_model_uses_each_query_heads_own_kv_head(tiny_model_dirs):
    """hook_z of query head h is its pattern applied to the values of kv head kv_head_index(h)."""
    model = load_model(resolve_model(str(tiny_model_dirs["llama_gqa"])))
    tokens = torch.randint(1, 300, (2, 11), generator=torch.Generator().manual_seed(0))
    names = [hook_name(0, kind) for kind in ("pattern", "v", "z")]
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    pattern, values, z = (cache[name].double() for name in names)
    kv = kv_head_index(model.cfg.n_heads, values.shape[2])
    for head in range(model.cfg.n_heads):
        expected = torch.einsum("bqk,bkd->bqd", pattern[:, head], values[:, :, kv[head]])
        torch.testing.assert_close(z[:, :, head], expected, atol=1e-5, rtol=1e-5)


def _full_circuit_scores(full_ov_per_head):
    """Copying score of explicit [vocab, vocab] OV matrices: sum Re(lambda) / sum |lambda|."""
    scores = []
    for matrix in full_ov_per_head:
        eig = torch.linalg.eigvals(matrix)
        scores.append(float(eig.real.sum() / eig.abs().sum()))
    return np.array(scores)


def _hand_folded_scores(model_dir, arch):
    """Copying scores from the Hugging Face checkpoint, folded by hand as HookedTransformer's loading does.

    LayerNorm models (GPT-2): OV = (W_E C)(C diag(g_1) W_V)(W_O C)(C diag(g_f) W_U C_V);
    RMSNorm models (Llama): OV = W_E diag(g_1) W_V W_O diag(g_f) W_U C_V. C centres over
    d_model, C_V over the vocabulary.
    """
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir).double()
    W_E, W_U = hf.get_input_embeddings().weight.detach(), hf.get_output_embeddings().weight.detach().T
    vocab, d_model = W_E.shape
    C = torch.eye(d_model, dtype=torch.float64) - 1.0 / d_model
    C_V = torch.eye(vocab, dtype=torch.float64) - 1.0 / vocab
    heads = []
    if arch == "gpt2":
        n_heads = hf.config.n_head
        d_head = d_model // n_heads
        g_f = hf.transformer.ln_f.weight.detach()
        for block in hf.transformer.h:
            W_V = block.attn.c_attn.weight.detach()[:, 2 * d_model:]  # Conv1D: [in, out]
            W_O = block.attn.c_proj.weight.detach()
            g_1 = block.ln_1.weight.detach()
            for h in range(n_heads):
                cols = slice(h * d_head, (h + 1) * d_head)
                heads.append((W_E @ C) @ (C @ torch.diag(g_1) @ W_V[:, cols]) @ (W_O[cols] @ C)
                             @ (C @ torch.diag(g_f) @ W_U @ C_V))
    else:  # llama_gqa
        config = hf.config
        n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
        d_head = d_model // n_heads
        g_f = hf.model.norm.weight.detach()
        for layer in hf.model.layers:
            W_V = layer.self_attn.v_proj.weight.detach().T  # Linear: [out, in] -> [in, out]
            W_O = layer.self_attn.o_proj.weight.detach().T
            g_1 = layer.input_layernorm.weight.detach()
            for h in range(n_heads):
                kv = h // (n_heads // n_kv)
                heads.append(W_E @ torch.diag(g_1) @ W_V[:, kv * d_head:(kv + 1) * d_head]
                             @ W_O[h * d_head:(h + 1) * d_head] @ torch.diag(g_f) @ W_U @ C_V)
    return _full_circuit_scores(heads).reshape(-1, n_heads)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "llama_gqa"])
def test_streamed_scores_equal_the_checkpoint_folded_by_hand(arch, matrix_model_dir):
    model_dir = matrix_model_dir(arch)
    streamed = model_copying_scores(load_model(resolve_model(str(model_dir)), require_hooks=("pattern",)))
    np.testing.assert_allclose(streamed, _hand_folded_scores(model_dir, arch), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", MATRIX_ARCHITECTURES)
def test_streamed_scores_equal_the_full_circuit_of_transformer_lens_processed_weights(arch, matrix_model_dir):
    """Same numbers as enable_compatibility_mode() (HookedTransformer's processing), without its weight copies."""
    spec = resolve_model(str(matrix_model_dir(arch)))
    streamed = model_copying_scores(load_model(spec, require_hooks=("pattern",)))
    processed = load_model(spec, require_hooks=("pattern",))
    processed.enable_compatibility_mode(disable_warnings=True)
    with torch.inference_mode():
        W = [w.detach().double().numpy() for w in (processed.W_E, processed.W_V, processed.W_O, processed.W_U)]
    np.testing.assert_allclose(streamed, _full_ov_reference(*W), atol=1e-5)


def test_norm_gain_reads_layer_norm_rms_norm_and_gemma_norms():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    weight = 1.0 + torch.rand(7)
    layer_norm = torch.nn.LayerNorm(7)
    rms, gemma = LlamaRMSNorm(7), GemmaRMSNorm(7)
    with torch.no_grad():
        layer_norm.weight.copy_(weight)
        layer_norm.bias.copy_(torch.randn(7))
        rms.weight.copy_(weight)
        gemma.weight.copy_(weight - 1.0)  # Gemma scales by (1 + weight)
    for norm, centres in ((layer_norm, True), (rms, False), (gemma, False)):
        gain, found_centres = norm_gain(norm, 7)
        torch.testing.assert_close(gain, weight.double(), atol=1e-4, rtol=0)
        assert found_centres is centres
    gain, centres = norm_gain(torch.nn.LayerNorm(6, elementwise_affine=False), 6)  # OLMo's weightless norm
    torch.testing.assert_close(gain, torch.ones(6, dtype=torch.float64), atol=1e-4, rtol=0)
    assert centres


def test_unembed_embed_product_in_slices_equals_the_whole_product():
    rng = np.random.default_rng(3)
    W_E, W_U_rows = (torch.tensor(rng.normal(size=(37, 5))) for _ in range(2))
    C_V = torch.eye(37, dtype=torch.float64) - 1.0 / 37
    sliced = unembed_embed_product(W_E, W_U_rows, centre_vocab=True, chunk=8)
    torch.testing.assert_close(sliced, W_U_rows.T @ C_V @ W_E, atol=1e-5, rtol=0)
    torch.testing.assert_close(unembed_embed_product(W_E, W_U_rows, centre_vocab=False, chunk=8),
                               W_U_rows.T @ W_E, atol=1e-5, rtol=0)
