"""The final check of a trained toy model, read back from its saved folder (DESIGN.md section 9).

:func:`evaluate_model_dir` loads the folder exactly as every analysis does (transformers, and
TransformerLens's ``TransformerBridge.boot_transformers``), so it checks what was saved, not the
model in memory: the held-out ICL score and the matching score of every head, measured twice (Hugging
Face attentions and TransformerLens ``hook_pattern``), which must agree.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch

from icl_cmr.heads.registry import check_model_files
from icl_cmr.toy_lm.config import ToyLMConfig
from icl_cmr.toy_lm.scoring import (held_out_windows, icl_score, induction_matching_score_hf,
                                    induction_matching_score_tl, per_token_loss, repeated_random_prompts)

#: Prompts of the final matching-score check (ours; 32 prompts x 99 queries per head).
EVAL_PROMPTS = 32


def evaluate_model_dir(model_dir: "str | Path", config: ToyLMConfig, seed: int, held_texts: Sequence[str],
                       frequent: np.ndarray) -> Dict[str, object]:
    """Held-out ICL score and matching scores of a saved model, through transformers AND TransformerLens.

    The matching scores use a fresh batch of :data:`EVAL_PROMPTS` repeated-token prompts (seed
    ``[seed, 3]``, ids from ``frequent``), scored once from Hugging Face ``output_attentions`` and once
    from TransformerLens's ``hook_pattern`` after ``TransformerBridge.boot_transformers(model_dir)``.

    Parameters
    ----------
    model_dir : path-like
        A folder written by ``save_pretrained`` (model and tokenizer).
    config : ToyLMConfig
        Supplies ``n_ctx``, ``monitor_block_len`` and the ICL positions.
    seed : int
        The training seed; the prompts are drawn with ``[seed, 3]``.
    held_texts : sequence of str
        The held-out files' text (:func:`icl_cmr.toy_lm.corpus.held_out_texts`).
    frequent : ndarray, shape [n_ids]
        Token ids the prompts draw from (seen often in training).

    Returns
    -------
    dict
        JSON-ready: both score tables ``[n_layer][n_head]`` and their largest difference, the best
        head (TransformerLens), the mean held-out loss and the ICL score's mean, SEM and share of
        negative windows, the losses at both positions. Stored as ``evaluation`` in ``training_log.json``.

    Raises
    ------
    CorruptFileError
        A model, config or tokenizer file of ``model_dir`` cut short or damaged (named, before loading).
    """
    # Heavy optional libraries (seconds to import): only reading a saved model back needs them.
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens.model_bridge import TransformerBridge

    model_dir = Path(model_dir)
    check_model_files(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
    windows = held_out_windows(tokenizer, held_texts, config.n_ctx)
    losses = per_token_loss(model, windows)
    icl = icl_score(losses, config.icl_early_index, config.icl_late_index)
    prompts = torch.from_numpy(repeated_random_prompts(
        frequent, EVAL_PROMPTS, config.monitor_block_len, tokenizer.bos_token_id, np.random.default_rng([seed, 3])))
    hf_scores = induction_matching_score_hf(model, prompts, config.monitor_block_len, offset=1)
    bridge = TransformerBridge.boot_transformers(str(model_dir), device="cpu")
    tl_scores = induction_matching_score_tl(bridge, prompts, config.monitor_block_len, offset=1)
    best = np.unravel_index(np.argmax(tl_scores), tl_scores.shape)
    return {
        "eval_prompts": EVAL_PROMPTS, "eval_block_len": config.monitor_block_len,
        "matching_scores_transformer_lens": tl_scores.tolist(),
        "matching_scores_hf": hf_scores.tolist(),
        "max_abs_diff_tl_vs_hf": float(np.abs(tl_scores - hf_scores).max()),
        "best_head": f"L{best[0]}H{best[1]}", "best_matching_score": float(tl_scores[best]),
        "held_out_windows": int(windows.shape[0]),
        "held_out_mean_loss": float(losses.mean()),
        "icl_positions": [config.icl_early_index, config.icl_late_index],
        "icl_score_mean": float(icl.mean()),
        "icl_score_sem": float(icl.std(ddof=1) / np.sqrt(icl.size)) if icl.size > 1 else float("nan"),
        "icl_score_fraction_negative": float((icl < 0).mean()),
        "loss_at_early_mean": float(losses[:, config.icl_early_index].mean()),
        "loss_at_late_mean": float(losses[:, config.icl_late_index].mean()),
    }


def describe_evaluation(evaluation: Dict[str, object], config: ToyLMConfig) -> str:
    """One line for the log: the best head by TransformerLens, its agreement with Hugging Face, the ICL score.

    Parameters
    ----------
    evaluation : dict
        From :func:`evaluate_model_dir`.
    config : ToyLMConfig
        Supplies the ICL positions.

    Returns
    -------
    str
    """
    return ("TransformerLens check: best head %s matching score %.3f (max |TL - HF| %.1e); held-out ICL "
            "score loss[%d] - loss[%d] = %.3f +- %.3f (SEM) over %d windows") % (
        evaluation["best_head"], evaluation["best_matching_score"], evaluation["max_abs_diff_tl_vs_hf"],
        config.icl_late_index, config.icl_early_index, evaluation["icl_score_mean"], evaluation["icl_score_sem"],
        evaluation["held_out_windows"])
