"""Training the toy model: the learning-rate schedule and the training loop with its matching-score monitor.

AdamW with linear warm-up and cosine decay, on rows that copy a span of their own text
(:func:`icl_cmr.toy_lm.training_rows.build_training_rows`); every ``eval_every`` steps the matching
score of every head is measured on a fixed batch of repeated-token prompts and logged with the loss,
and training may stop early once a head is clearly an induction head (DESIGN.md section 9).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from icl_cmr.toy_lm.config import ToyLMConfig
from icl_cmr.toy_lm.model import make_model
from icl_cmr.toy_lm.scoring import induction_matching_score_hf, repeated_random_prompts
from icl_cmr.toy_lm.training_rows import build_training_rows

logger = logging.getLogger(__name__)


def learning_rate_at(step: int, config: ToyLMConfig) -> float:
    """Linear warm-up to ``learning_rate``, then cosine decay to ``min_lr_ratio * learning_rate`` at ``max_steps``."""
    peak = config.learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    floor = config.min_lr_ratio * peak
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainingResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model : transformers.GPT2LMHeadModel
    log : list of dict
        One row per evaluation: step, tokens, lr, train_loss (mean since the
        previous row), elapsed_s, best_head, best_matching_score and
        ``matching_L{l}H{h}`` for every head.
    final_matching_scores : ndarray, shape [n_layer, n_head]
    steps : int
        Optimiser steps taken.
    stopped_early : bool
    """

    model: object
    log: List[Dict[str, object]] = field(default_factory=list)
    final_matching_scores: Optional[np.ndarray] = None
    steps: int = 0
    stopped_early: bool = False


def train(config: ToyLMConfig, token_stream: np.ndarray, vocab_size: int, special_token_id: int,
          monitor_ids: np.ndarray, seed: int, progress: Optional[Callable[[Dict[str, object], object], None]] = None,
          show_progress: bool = True) -> TrainingResult:
    """Train the toy model from scratch, deterministically for a given seed and thread count.

    Parameters
    ----------
    config : ToyLMConfig
    token_stream : ndarray, shape [n_tokens]
        Training tokens (documents separated by the special token).
    vocab_size, special_token_id : int
    monitor_ids : ndarray, shape [n_ids]
        Ids the matching-score monitor draws its prompts from (frequent tokens).
    seed : int
        Seeds the weights (``torch.manual_seed``), the rows and the monitor prompts.
    progress : callable, optional
        Called as ``progress(row, model)`` after each new log row (the script
        uses it to keep a snapshot of the model and the log so far).
    show_progress : bool
        Show a tqdm bar.

    Returns
    -------
    TrainingResult
    """
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    model = make_model(config, vocab_size, special_token_id)
    model.train()
    row_rng = np.random.default_rng([seed, 1])
    prompts = torch.from_numpy(repeated_random_prompts(
        monitor_ids, config.monitor_prompts, config.monitor_block_len, special_token_id,
        np.random.default_rng([seed, 2])))
    # Decay matrices only (nanoGPT's grouping): biases, LayerNorm gains stay undecayed.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config.learning_rate, betas=config.adam_betas)
    result = TrainingResult(model=model)
    loss_sum, loss_count, streak = 0.0, 0, 0
    start = time.perf_counter()
    n_steps = config.max_steps if config.stop_after_steps is None else min(config.max_steps, config.stop_after_steps)
    bar = tqdm(range(n_steps), desc="training toy LM", disable=not show_progress, mininterval=2.0)
    for step in bar:
        lr = learning_rate_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows, _ = build_training_rows(token_stream, config.batch_size, config.n_ctx, row_rng,
                                      config.copy_span_min, config.copy_span_max, config.copy_row_fraction)
        batch = torch.from_numpy(rows)
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        loss_sum += float(loss.detach())
        loss_count += 1
        done = step + 1
        if done % config.eval_every == 0 or done == n_steps:
            scores = induction_matching_score_hf(model, prompts, config.monitor_block_len, offset=1)
            best = np.unravel_index(np.argmax(scores), scores.shape)
            row: Dict[str, object] = {
                "step": done, "tokens": done * config.batch_size * config.n_ctx, "lr": lr,
                "train_loss": loss_sum / loss_count, "elapsed_s": round(time.perf_counter() - start, 2),
                "best_head": f"L{best[0]}H{best[1]}", "best_matching_score": float(scores[best]),
            }
            row.update({f"matching_L{l}H{h}": float(scores[l, h])
                        for l in range(scores.shape[0]) for h in range(scores.shape[1])})
            result.log.append(row)
            result.final_matching_scores = scores
            loss_sum, loss_count = 0.0, 0
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", match=f"{row['best_matching_score']:.3f}")
            logger.debug("step %d loss %.4f best head %s %.3f", done, row["train_loss"], row["best_head"],
                         row["best_matching_score"])
            if progress is not None:
                progress(row, model)
            streak = streak + 1 if config.stop_score is not None and scores[best] >= config.stop_score else 0
            if config.stop_score is not None and streak >= config.stop_patience:
                result.stopped_early = True
                result.steps = done
                break
        result.steps = done
    bar.close()
    return result
