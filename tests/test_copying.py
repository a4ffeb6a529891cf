"""Copying score: closed forms, the full vocab x vocab OV circuit, and grouped-query heads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_cmr.copying import copying_scores, eigenvalue_copying_ratio, kv_head_index, model_copying_scores
from icl_cmr.errors import InputError
from icl_cmr.models import hook_name, load_model, resolve_model




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


def test_model_scores_match_the_full_circuit_of_the_processed_weights(tiny_model_dirs):
    model = load_model(resolve_model(str(tiny_model_dirs["llama_gqa"])))
    scores = model_copying_scores(model)  # switches the bridge to processed (folded) weights
    W = [w.detach().double().numpy() for w in (model.W_E, model.W_V, model.W_O, model.W_U)]
    assert W[1].shape[1] == 2 and W[2].shape[1] == 4  # grouped-query: 2 kv heads for 4 query heads
    np.testing.assert_allclose(scores, _full_ov_reference(*W), atol=1e-5)
