"""The toy model itself: a 2-layer GPT-2 whose position embeddings start as sinusoids (DESIGN.md section 9).

It is a Hugging Face ``GPT2LMHeadModel``, so it loads through exactly the same TransformerLens path
(``TransformerBridge.boot_transformers(local_dir)``) as GPT-2 or Pythia.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from icl_cmr.toy_lm.config import ToyLMConfig


def sinusoidal_position_embeddings(n_positions: int, d_model: int, std: float) -> np.ndarray:
    """Transformer sinusoids (Vaswani et al. 2017, section 3.5) rescaled to standard deviation ``std``.

    Returns
    -------
    ndarray, shape [n_positions, d_model], float32
        ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(...)``, times
        ``std / PE.std()``.
    """
    position = np.arange(n_positions)[:, None]
    frequency = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2) / d_model)[None, :]
    table = np.zeros((n_positions, d_model))
    table[:, 0::2] = np.sin(position * frequency)
    table[:, 1::2] = np.cos(position * frequency[:, : d_model // 2])
    return (table * (std / table.std())).astype(np.float32)


def make_model(config: ToyLMConfig, vocab_size: int, special_token_id: int):
    """A freshly initialised ``GPT2LMHeadModel`` (eager attention, so attention weights can be returned).

    Call ``torch.manual_seed`` before it for reproducible weights.

    Parameters
    ----------
    config : ToyLMConfig
        Shape (``n_layer``, ``n_head``, ``d_model``, ``d_mlp``, ``n_ctx``), dropout and initial scales.
    vocab_size : int
        Rows of the (tied) token embedding: the tokenizer's ``len``.
    special_token_id : int
        BOS and EOS id.

    Returns
    -------
    transformers.GPT2LMHeadModel
        Position embeddings set to :func:`sinusoidal_position_embeddings` (``pos_init_std``).
    """
    # Heavy optional library (seconds to import): only building a model needs it.
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=vocab_size, n_positions=config.n_ctx, n_embd=config.d_model, n_layer=config.n_layer,
        n_head=config.n_head, n_inner=config.d_mlp, activation_function="gelu_new",
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        initializer_range=config.init_std, bos_token_id=special_token_id, eos_token_id=special_token_id,
        tie_word_embeddings=True,
    )
    hf_config._attn_implementation = "eager"
    model = GPT2LMHeadModel(hf_config)
    with torch.no_grad():
        model.transformer.wpe.weight.copy_(torch.from_numpy(
            sinusoidal_position_embeddings(config.n_ctx, config.d_model, config.pos_init_std)))
    return model
