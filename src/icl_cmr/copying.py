"""Copying score of every attention head ([OL22]; Elhage et al. 2021; DESIGN.md section 2).

A head's full OV circuit maps a source token to logits: ``W_E W_V^h W_O^h W_U``
([vocab, vocab], row-vector convention as in TransformerLens). Its copying score is
``sum(Re lambda) / sum(|lambda|)`` over the eigenvalues lambda, in [-1, 1]: +1 for a
head whose output raises the logit of the token it attends to.

The vocab x vocab matrix is never formed. ``XY`` and ``YX`` share their non-zero
eigenvalues, so with ``X = W_V^h`` and ``Y = W_O^h W_U W_E`` the same spectrum comes
from the [d_head, d_head] matrix ``W_O^h (W_U W_E) W_V^h``; ``W_U W_E`` [d_model,
d_model] is computed once per model.

Grouped-query models: query head h reads the value vectors of kv head
``h // (n_heads // n_kv_heads)`` (the ``repeat_kv`` layout of Hugging Face Llama/Mistral).
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

from .errors import InputError

logger = logging.getLogger(__name__)


def kv_head_index(n_heads: int, n_kv_heads: int) -> np.ndarray:
    """The kv head each query head reads: ``h // (n_heads // n_kv_heads)``.

    Returns
    -------
    ndarray, shape [n_heads], int64
    """
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise InputError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
    return np.arange(n_heads) // (n_heads // n_kv_heads)


def eigenvalue_copying_ratio(eigenvalues) -> np.ndarray:
    """``sum(Re lambda) / sum(|lambda|)`` over the last axis; NaN when every eigenvalue is 0.

    Parameters
    ----------
    eigenvalues : complex ndarray or Tensor, shape [..., n]

    Returns
    -------
    ndarray, shape [...], float64
    """
    values = eigenvalues.cpu().numpy() if isinstance(eigenvalues, torch.Tensor) else np.asarray(eigenvalues)
    magnitude = np.abs(values).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(magnitude > 0, values.real.sum(-1) / magnitude, np.nan)


def copying_scores(W_E, W_V, W_O, W_U, n_heads: Optional[int] = None) -> np.ndarray:
    """Copying score of every head from the model's weights.

    Parameters
    ----------
    W_E : Tensor or ndarray, shape [vocab, d_model]
        Token embedding.
    W_V : Tensor or ndarray, shape [layer, n_kv_heads, d_model, d_head]
    W_O : Tensor or ndarray, shape [layer, n_heads, d_head, d_model]
    W_U : Tensor or ndarray, shape [d_model, vocab]
        Unembedding. Pass TransformerLens's processed weights (layer norms folded in)
        to match HookedTransformer, which [LI24] used.
    n_heads : int, optional
        Query heads (default ``W_O.shape[1]``).

    Returns
    -------
    ndarray, shape [layer, n_heads], float64
        In [-1, 1]; NaN for a head whose OV circuit is zero.
    """
    W_E, W_V, W_O, W_U = (torch.as_tensor(w) for w in (W_E, W_V, W_O, W_U))
    if W_V.ndim != 4 or W_O.ndim != 4 or W_E.ndim != 2 or W_U.ndim != 2:
        raise InputError("expected W_E [vocab, d_model], W_V [layer, kv_head, d_model, d_head], "
                         "W_O [layer, head, d_head, d_model], W_U [d_model, vocab]; got shapes "
                         f"{tuple(W_E.shape)}, {tuple(W_V.shape)}, {tuple(W_O.shape)}, {tuple(W_U.shape)}")
    n_layers, n_kv, d_model, d_head = W_V.shape
    n_heads = int(n_heads or W_O.shape[1])
    if W_O.shape != (n_layers, n_heads, d_head, d_model) or W_E.shape[1] != d_model or W_U.shape[0] != d_model:
        raise InputError(f"inconsistent OV weight shapes: W_V {tuple(W_V.shape)}, W_O {tuple(W_O.shape)}, "
                         f"W_E {tuple(W_E.shape)}, W_U {tuple(W_U.shape)}")
    if W_E.shape[0] != W_U.shape[1]:
        raise InputError(f"W_E has {W_E.shape[0]} tokens but W_U {W_U.shape[1]}")
    kv = torch.as_tensor(kv_head_index(n_heads, n_kv), device=W_V.device)
    work = torch.float32 if W_E.dtype in (torch.float16, torch.bfloat16) else W_E.dtype
    # [d_model, d_model]: the only vocab-sized product, done once.
    unembed_embed = W_U.to(work) @ W_E.to(work)
    scores = np.empty((n_layers, n_heads))
    # A loop over layers bounds memory: the stacked [layer, head, d_head, d_model] product
    # is n_layers times larger (2 GB for a 7B model); heads are batched inside.
    for layer in range(n_layers):
        reduced = W_O[layer].to(work) @ unembed_embed.to(W_O.device) @ W_V[layer, kv].to(work)  # [head, d_head, d_head]
        eigenvalues = torch.linalg.eigvals(reduced.to("cpu", torch.float64))
        scores[layer] = eigenvalue_copying_ratio(eigenvalues)
    return scores


def model_copying_scores(model) -> np.ndarray:
    """Copying scores of a TransformerLens model, in HookedTransformer's processed weights.

    Calls ``model.enable_compatibility_mode()`` (fold layer norms, centre writing
    weights and the unembedding: HookedTransformer's load-time defaults, which [LI24]
    used), which changes the model's weights in place without changing its outputs.
    That processing builds a processed copy of the state dict: on GPT-2 small (CPU,
    float32) peak memory rose by about 3.4x the weights' size while it ran.

    Parameters
    ----------
    model : transformer_lens.model_bridge.TransformerBridge

    Returns
    -------
    ndarray, shape [layer, head], float64
    """
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # weight processing builds a processed copy of the state dict
    if hasattr(model, "enable_compatibility_mode"):
        model.enable_compatibility_mode(disable_warnings=True)
    with torch.inference_mode():
        return copying_scores(model.W_E, model.W_V, model.W_O, model.W_U, n_heads=int(model.cfg.n_heads))
