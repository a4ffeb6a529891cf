"""Scores of the toy model: the induction matching score (DESIGN.md section 2) and the ICL score (section 5).

The matching score runs on prompts of BOS + n distinct frequent ids + the same ids again
(:func:`repeated_random_prompts`), read from Hugging Face ``output_attentions`` (the training
monitor) or from TransformerLens's ``hook_pattern`` (the path the rest of the toolkit uses); both go
through the toolkit's :func:`icl_cmr.heads.scores.induction_matching_score`. The ICL score is the
loss at a late position minus the loss at position 50 on held-out text (:func:`held_out_windows`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from icl_cmr.errors import InputError
from icl_cmr.heads.scores import induction_matching_score
from icl_cmr.interventions.icl_score import ICLScoreConfig, icl_scores
from icl_cmr.interventions.icl_score import per_token_loss as loss_from_logits
from icl_cmr.toy_lm.tokenizer import SPECIAL_TOKEN


def repeated_random_prompts(candidate_ids: np.ndarray, n_prompts: int, block_len: int, bos_id: Optional[int],
                            rng: np.random.Generator) -> np.ndarray:
    """BOS + ``block_len`` distinct ids drawn from ``candidate_ids`` + the same block again (DESIGN.md section 2).

    Returns
    -------
    ndarray, shape [n_prompts, (bos_id is not None) + 2 * block_len], int64
    """
    candidate_ids = np.asarray(candidate_ids, dtype=np.int64)
    if candidate_ids.size < block_len:
        raise InputError(f"need at least `block_len`={block_len} candidate ids, got {candidate_ids.size}",
                         parameters=("block_len", "candidate_ids"))
    # permuted() shuffles each row independently: distinct ids within a prompt.
    blocks = rng.permuted(np.broadcast_to(candidate_ids, (n_prompts, candidate_ids.size)), axis=1)[:, :block_len]
    parts = [blocks, blocks]
    if bos_id is not None:
        parts.insert(0, np.full((n_prompts, 1), bos_id, dtype=np.int64))
    return np.concatenate(parts, axis=1)


def matching_score_from_patterns(patterns: np.ndarray, block_len: int, offset: int) -> np.ndarray:
    """Induction-head matching score from attention patterns on repeated-block prompts.

    For a query at position i in the second repeat whose token sits at
    j = i - block_len in the first repeat, the score is the attention on key
    j + 1 (lag +1), averaged over queries whose lag +1 key lies in the first
    repeat and over prompts (DESIGN.md section 2).

    Parameters
    ----------
    patterns : ndarray, shape [batch, layer, head, query_pos, key_pos]
        Softmax attention probabilities.
    block_len : int
        Length n of the repeated block.
    offset : int
        Position of the first block token (1 with BOS, else 0).

    Returns
    -------
    ndarray, shape [layer, head]
    """
    patterns = np.asarray(patterns)
    # The toolkit's own score, layer by layer (a model here has 2 layers).
    return np.stack([induction_matching_score(patterns[:, layer], block_len, offset)
                     for layer in range(patterns.shape[1])])


def induction_matching_score_hf(model, prompts, block_len: int, offset: int) -> np.ndarray:
    """Matching score of every head of a Hugging Face model, from ``output_attentions=True``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        With eager attention.
    prompts : torch.LongTensor, shape [batch, offset + 2 * block_len]
    block_len, offset : int
        See :func:`matching_score_from_patterns`.

    Returns
    -------
    ndarray, shape [n_layer, n_head]
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        attentions = model(prompts, output_attentions=True).attentions  # n_layer x [batch, head, q, k]
    model.train(was_training)
    patterns = torch.stack(attentions, dim=1).numpy()
    return matching_score_from_patterns(patterns, block_len, offset)


def induction_matching_score_tl(bridge, prompts, block_len: int, offset: int) -> np.ndarray:
    """Matching score of every head through TransformerLens (hook ``blocks.{l}.attn.hook_pattern``).

    The path the rest of the toolkit uses; it must agree with
    :func:`induction_matching_score_hf` on the same prompts.

    Parameters
    ----------
    bridge : transformer_lens.model_bridge.TransformerBridge
    prompts : torch.LongTensor, shape [batch, offset + 2 * block_len]
    block_len, offset : int

    Returns
    -------
    ndarray, shape [n_layer, n_head]
    """
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(bridge.cfg.n_layers)]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(prompts, names_filter=lambda name: name in names)
    patterns = torch.stack([cache[name] for name in names], dim=1).numpy()  # [batch, layer, head, q, k]
    return matching_score_from_patterns(patterns, block_len, offset)


def held_out_windows(tokenizer, texts: Sequence[str], n_ctx: int) -> np.ndarray:
    """Non-overlapping evaluation windows: BOS + ``n_ctx - 1`` consecutive tokens of one held-out file.

    Every file contributes ``floor(len / (n_ctx - 1))`` windows (files shorter than
    that contribute none), so no window crosses a file boundary.

    Returns
    -------
    ndarray, shape [n_windows, n_ctx], int64
    """
    bos = tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    body = n_ctx - 1
    windows = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:  # one file at a time
        n_windows = len(ids) // body
        if n_windows:
            chunk = np.asarray(ids[: n_windows * body], dtype=np.int64).reshape(n_windows, body)
            windows.append(np.concatenate([np.full((n_windows, 1), bos, dtype=np.int64), chunk], axis=1))
    if not windows:
        raise InputError(f"no held-out text has {body} tokens")
    return np.concatenate(windows)


def per_token_loss(model, windows, batch_size: int = 32) -> np.ndarray:
    """Next-token cross-entropy at every position of every window.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    windows : ndarray, shape [n_windows, seq]
    batch_size : int

    Returns
    -------
    ndarray, shape [n_windows, seq - 1]
        Entry ``[w, i]`` is the loss of predicting token i + 1 from tokens 0..i.
    """
    windows = torch.as_tensor(np.asarray(windows), dtype=torch.long)
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):  # batches bound the memory
            batch = windows[start: start + batch_size]
            out.append(loss_from_logits(model(batch).logits, batch).numpy())
    model.train(was_training)
    return np.concatenate(out)


def icl_score(losses: np.ndarray, early_index: int, late_index: int) -> np.ndarray:
    """In-context-learning score per window: loss at ``late_index`` minus loss at ``early_index``.

    [LI24] section 5 / Fig 8 and [OL22]: ``loss[500] - loss[50]``; negative
    means later tokens are predicted better thanks to the context.

    Parameters
    ----------
    losses : ndarray, shape [n_windows, n_positions]
        From :func:`per_token_loss`.

    Returns
    -------
    ndarray, shape [n_windows]
    """
    losses = np.asarray(losses)
    if not 0 <= early_index < late_index < losses.shape[1]:
        raise InputError(f"need 0 <= `early_index` < `late_index` < {losses.shape[1]}, got {early_index}, {late_index}",
                         parameters=("early_index", "late_index"))
    return icl_scores(losses, ICLScoreConfig(late_index=late_index, early_index=early_index))
