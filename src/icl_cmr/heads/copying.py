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
from typing import Optional, Tuple

import numpy as np
import torch

from icl_cmr.errors import InputError

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


#: Vocabulary rows per step when forming ``W_U W_E``: two float32 slices of 8192 x 4096
#: (Llama-3-8B's d_model) are 256 MiB, small beside a 7B model's weights.
VOCAB_CHUNK = 8192


def norm_gain(norm: torch.nn.Module, d_model: int) -> Tuple[torch.Tensor, bool]:
    """The diagonal gain of a LayerNorm/RMSNorm-like module, and whether it centres its input.

    Read off the module itself, so every parametrisation is covered (LayerNorm's
    ``weight``, RMSNorm's ``weight``, Gemma's ``1 + weight``, OLMo's weightless
    LayerNorm): for ``v`` with mean 0 and unit RMS, ``n(v) = gain * v + bias`` for both
    kinds, so ``gain = (n(v) - n(-v)) / (2 v)``; a LayerNorm ignores a constant added to
    its input, an RMSNorm does not. The module is copied to float32 on the CPU first.

    Parameters
    ----------
    norm : torch.nn.Module
        Maps [..., d_model] to [..., d_model].
    d_model : int

    Returns
    -------
    gain : Tensor, shape [d_model], float64
    centres : bool
    """
    import copy

    probe_norm = copy.deepcopy(norm).to("cpu", torch.float32)
    v = torch.ones(d_model)
    v[1::2] = -1.0
    v = v - v.mean()  # an odd d_model leaves one entry at 1 - mean; still mean 0, no zero entry
    v = v / v.pow(2).mean().sqrt()
    with torch.inference_mode():
        plus, minus = probe_norm(v[None, None])[0, 0], probe_norm(-v[None, None])[0, 0]
        shifted = probe_norm((v + 1.0)[None, None])[0, 0]
    gain = ((plus - minus) / (2.0 * v)).double()
    centres = bool(torch.allclose(shifted, plus, rtol=1e-4, atol=1e-4 * float(plus.abs().max())))
    return gain, centres


def unembed_embed_product(W_E: torch.Tensor, W_U_rows: torch.Tensor, centre_vocab: bool,
                          chunk: int = VOCAB_CHUNK) -> torch.Tensor:
    """``W_U W_E`` [d_model, d_model] accumulated over vocabulary slices, optionally vocab-centred.

    Parameters
    ----------
    W_E : Tensor, shape [vocab, d_model]
        Token embedding (any dtype and device; slices are cast to float32).
    W_U_rows : Tensor, shape [vocab, d_model]
        The unembedding as stored by ``lm_head`` (``W_U`` transposed).
    centre_vocab : bool
        Subtract each logit direction's mean over the vocabulary first
        (HookedTransformer's ``center_unembed``): ``W_U C_V W_E = W_U W_E - (W_U 1)(1^T W_E) / vocab``.
    chunk : int
        Vocabulary rows per step.

    Returns
    -------
    Tensor, shape [d_model, d_model], float64, on the weights' device
    """
    vocab, d_model = W_E.shape
    if W_U_rows.shape != (vocab, d_model):
        raise InputError(f"embedding {tuple(W_E.shape)} and unembedding {tuple(W_U_rows.shape)} differ in shape")
    product = torch.zeros(d_model, d_model, dtype=torch.float64, device=W_E.device)
    sum_u = torch.zeros(d_model, dtype=torch.float64, device=W_E.device)
    sum_e = torch.zeros(d_model, dtype=torch.float64, device=W_E.device)
    for start in range(0, vocab, chunk):  # a loop over vocabulary slices bounds memory
        embed = W_E[start:start + chunk].to(torch.float32)
        unembed = W_U_rows[start:start + chunk].to(device=W_E.device, dtype=torch.float32)
        product += (unembed.T @ embed).double()
        sum_u += unembed.sum(0).double()
        sum_e += embed.sum(0).double()
    if centre_vocab:
        product -= torch.outer(sum_u, sum_e) / vocab
    return product


def model_copying_scores(model) -> np.ndarray:
    """Copying scores of a TransformerLens 4 model in HookedTransformer's processed weights, streamed.

    [LI24] used HookedTransformer, whose loading folds each LayerNorm into the weights
    that read from it, centres the weights that write to the residual stream (LayerNorm
    models), and centres the unembedding over the vocabulary (not when the logits are
    soft-capped). The copying score needs only
    ``W_O^h C diag(g_f) (W_U C_V W_E) C diag(g_1) W_V^h`` per head ([d_head, d_head];
    ``C`` centres over d_model for LayerNorm models, ``g_f`` / ``g_1`` are the gains of
    the final and the layer's pre-attention norm, :func:`norm_gain`), so those
    corrections are applied algebraically: the model's weights are read in place and
    never copied, ``W_U W_E`` is accumulated over vocabulary slices
    (:func:`unembed_embed_product`), and the rest goes layer by layer. Equal to the
    scores of TransformerLens's ``enable_compatibility_mode()`` weights (tested);
    post-attention norms (Gemma-2) are not part of the OV circuit there either.

    Parameters
    ----------
    model : transformer_lens.model_bridge.TransformerBridge

    Returns
    -------
    ndarray, shape [layer, head], float64

    Raises
    ------
    InputError
        When the embedding width differs from d_model (e.g. OPT-350m's projected
        embeddings) or a layer has no pre-attention norm module to read.
    """
    d_model, n_heads, n_layers = int(model.cfg.d_model), int(model.cfg.n_heads), int(model.cfg.n_layers)
    with torch.inference_mode():
        W_E = model.embed.original_component.weight
        W_U_rows = model.unembed.original_component.weight
        if W_E.shape[-1] != d_model or W_U_rows.shape[-1] != d_model:
            raise InputError(f"embedding width {W_E.shape[-1]} / unembedding width {W_U_rows.shape[-1]} differ from "
                             f"d_model {d_model}; the copying score needs the projections between them")
        soft_cap = float(getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0)
        unembed_embed = unembed_embed_product(W_E, W_U_rows, centre_vocab=soft_cap <= 0)
        final_gain, final_centres = norm_gain(model.ln_final.original_component, d_model)
        # Left factor C diag(g_f): scale rows, then centre over d_model (mean over rows removed).
        left = final_gain.to(unembed_embed.device)[:, None] * unembed_embed
        if final_centres:
            left = left - left.mean(0, keepdim=True)
        left = left.to(torch.float32)
        scores = np.empty((n_layers, n_heads))
        for layer in range(n_layers):  # layer by layer: one layer's W_V, W_O in working precision at a time
            block = model.blocks[layer]
            if not hasattr(block, "ln1"):
                raise InputError(f"layer {layer} has no pre-attention norm module (ln1) to fold into W_V")
            gain, centres = norm_gain(block.ln1.original_component, d_model)
            W_V = block.attn.W_V.to(torch.float32)  # [kv_head, d_model, d_head]
            W_O = block.attn.W_O.to(torch.float32)  # [head, d_head, d_model]
            # Right factor C diag(g_1) W_V: scale the rows of W_V, then centre them over d_model.
            values = gain.to(W_V.device, torch.float32)[None, :, None] * W_V
            if centres:
                values = values - values.mean(1, keepdim=True)
            read = left.to(W_V.device) @ values  # [kv_head, d_model, d_head]
            kv = torch.as_tensor(kv_head_index(n_heads, W_V.shape[0]), device=W_V.device)
            reduced = W_O @ read[kv]  # [head, d_head, d_head]
            scores[layer] = eigenvalue_copying_ratio(torch.linalg.eigvals(reduced.to("cpu", torch.float64)))
    return scores
