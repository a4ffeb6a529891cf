"""Per-token language-model loss and the in-context-learning (ICL) score ([LI24] Fig 8, [OL22]).

The ICL score of one prompt is the loss at a late token index minus the loss at
an early one ([OL22] "in-context learning score"; [LI24] ``ablation.py``: index
500 minus index 50 on 512-token C4 documents). Negative means the model predicts
better late in the context, i.e. it learns in context.

Loss index convention (TransformerLens ``lm_cross_entropy_loss(per_token=True)``,
which the authors used): for a prompt of ``seq_len`` tokens, ``loss[i] =
-log p(token[i + 1] | token[0..i])`` for ``i = 0 .. seq_len - 2``; the BOS token,
when the model has one, is token 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Tuple

import numpy as np

from icl_cmr.errors import InputError

HookList = Sequence[Tuple[str, Callable]]


@dataclass(frozen=True)
class ICLScoreConfig:
    """Where the ICL score reads the loss.

    Attributes
    ----------
    late_index : int
        Loss index of the late token. [LI24] ``ablation.py`` ``idx1 = 500``.
    early_index : int
        Loss index of the early token. [LI24] ``idx2 = 50``.

    The prompt length (512 in [LI24]) belongs to the data:
    :class:`icl_cmr.interventions.texts.TextDataConfig`.
    """

    late_index: int = 500
    early_index: int = 50

    def validate(self, seq_len: int, n_ctx: Optional[int] = None) -> "ICLScoreConfig":
        """Check the indices against the prompt length and that against the model's context.

        Parameters
        ----------
        seq_len : int
            Tokens per prompt (BOS included).
        n_ctx : int, optional
            The model's context length (``model.cfg.n_ctx``).

        Returns
        -------
        ICLScoreConfig
            ``self``, for chaining.

        Raises
        ------
        InputError
            If ``0 <= early_index < late_index <= seq_len - 2`` fails, or
            ``seq_len > n_ctx``.
        """
        if seq_len < 3:
            raise InputError(f"`seq_len` must be at least 3 tokens, got {seq_len}", parameters=("seq_len",))
        if n_ctx is not None and seq_len > n_ctx:
            raise InputError(f"`seq_len` {seq_len} exceeds the model's context of {n_ctx} tokens; "
                             f"use `seq_len` <= {n_ctx} and a `late_index` below it (the paper's 500/50 needs "
                             "a context of at least 512)", parameters=("seq_len", "late_index"))
        if not 0 <= self.early_index < self.late_index:
            raise InputError(f"`early_index` {self.early_index} must be >= 0 and below `late_index` {self.late_index}",
                             parameters=("early_index", "late_index"))
        if self.late_index > seq_len - 2:
            raise InputError(f"`late_index` {self.late_index} is beyond the last loss index {seq_len - 2} of a "
                             f"{seq_len}-token prompt (loss i predicts token i + 1)", parameters=("late_index",))
        return self


def per_token_loss(logits, tokens):
    """Next-token cross-entropy at every position.

    Parameters
    ----------
    logits : torch.Tensor [batch, pos, vocab]
    tokens : torch.LongTensor [batch, pos]

    Returns
    -------
    torch.Tensor [batch, pos - 1], float32
        ``loss[b, i] = -log softmax(logits[b, i])[tokens[b, i + 1]]``, computed in float32
        whatever the model's dtype.
    """
    import torch

    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = tokens[:, 1:].to(log_probs.device)
    return -log_probs.gather(-1, targets[..., None])[..., 0]


def token_losses(model, tokens, hooks: HookList = (), batch_size: int = 8) -> np.ndarray:
    """Per-token loss of many prompts, in batches, optionally with hooks (ablations).

    Parameters
    ----------
    model : TransformerBridge
    tokens : torch.LongTensor or numpy.ndarray [n_prompts, seq_len]
        Equal-length prompts (no padding is used or needed).
    hooks : sequence of (hook_name, hook_fn)
        Forward hooks applied to every batch (e.g. from :mod:`icl_cmr.interventions.head_ablation`).
    batch_size : int
        Prompts per forward pass.

    Returns
    -------
    numpy.ndarray [n_prompts, seq_len - 1], float32
    """
    import torch

    if batch_size < 1:
        raise InputError(f"`batch_size` must be >= 1, got {batch_size}", parameters=("batch_size",))
    tokens = torch.as_tensor(np.asarray(tokens) if not torch.is_tensor(tokens) else tokens, dtype=torch.long)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise InputError(f"tokens must be [n_prompts, seq_len >= 2], got shape {tuple(tokens.shape)}")
    device = next(model.parameters()).device
    out = np.empty((tokens.shape[0], tokens.shape[1] - 1), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, tokens.shape[0], batch_size):  # loop over batches: memory bound by batch_size
            batch = tokens[start:start + batch_size].to(device)
            logits = model.run_with_hooks(batch, fwd_hooks=list(hooks)) if hooks else model(batch)
            out[start:start + batch.shape[0]] = per_token_loss(logits, batch).cpu().numpy()
    return out


def icl_scores(losses: np.ndarray, config: ICLScoreConfig = ICLScoreConfig()) -> np.ndarray:
    """ICL score per prompt: ``loss[:, late_index] - loss[:, early_index]``.

    Parameters
    ----------
    losses : numpy.ndarray [n_prompts, seq_len - 1]
        From :func:`token_losses`.
    config : ICLScoreConfig

    Returns
    -------
    numpy.ndarray [n_prompts], float64
    """
    losses = np.asarray(losses)
    if losses.ndim != 2 or losses.shape[1] <= config.late_index:
        raise InputError(f"losses of shape {losses.shape} have no loss index {config.late_index}")
    return losses[:, config.late_index].astype(np.float64) - losses[:, config.early_index].astype(np.float64)


def condition_losses(model, tokens, conditions: Mapping[str, HookList], batch_size: int = 8):
    """Per-token loss of the same prompts under several conditions (intact, ablated, ...).

    Parameters
    ----------
    model : TransformerBridge
    tokens : torch.LongTensor or numpy.ndarray [n_prompts, seq_len]
    conditions : mapping of str -> hook list
        Condition name -> forward hooks (an empty list is the intact model).
    batch_size : int

    Returns
    -------
    dict of str -> numpy.ndarray [n_prompts, seq_len - 1]
    """
    # one pass per condition: a condition changes the hooks, so the forward passes cannot be shared
    return {name: token_losses(model, tokens, hooks, batch_size) for name, hooks in conditions.items()}


# ----------------------------------------------------------------------------- memory of an ablation

#: Bytes per prompt token while the prompts are read: the token rows listed, then stacked (int64).
PROMPT_BYTES_PER_TOKEN = 2 * 8
#: Bytes per prompt and condition of the results: each batch's ICL scores, combined, and in the result (float64).
RESULT_BYTES_PER_PROMPT = 3 * 8
#: Bytes per loss position, batch and condition: the loss sum and sum of squares (float64) of every batch,
#: kept until the batches are combined.
LOSS_BYTES_PER_POSITION = 2 * 8
#: Bytes per logit and per attention weight of one batch's forward pass (float32, with the log-softmax and the
#: pattern beside the scores): the model's own memory comes on top, so the estimate is a lower bound.
LOGIT_BYTES = 3 * 4
ATTENTION_BYTES = 2 * 4
#: The settings that size an ablation's memory (:func:`ablation_memory_bytes`), in the order messages name them.
ABLATION_MEMORY_SETTINGS = ("n_eval", "seq_len", "batch_size", "n_random_sets")


def ablation_memory_bytes(values: Mapping[str, int], n_heads: int = 1, vocab_size: Optional[int] = None) -> int:
    """Estimated peak bytes of an ablation's evaluation (a lower bound: the weights and other activations come on
    top; the statistics' bootstrap is :func:`icl_cmr.stats.bootstrap_memory_bytes`).

    The prompts, every condition's per-prompt results and per-batch loss sums (the intact model, the ablated
    heads, each random set and their mean), and one batch's logits and attention
    (:mod:`icl_cmr.interventions.icl_ablation`).

    Parameters
    ----------
    values : mapping
        :data:`ABLATION_MEMORY_SETTINGS` -> value.
    n_heads, vocab_size : int
        The model's heads per layer and vocabulary (its config; 1 and None when unknown, as in a sweep plan).

    Returns
    -------
    int
        Bytes.
    """
    n, seq, batch_size = values["n_eval"], values["seq_len"], values["batch_size"]
    conditions = 3 + values["n_random_sets"]
    prompts = n * seq * PROMPT_BYTES_PER_TOKEN
    results = conditions * (n * RESULT_BYTES_PER_PROMPT + -(-n // batch_size) * (seq - 1) * LOSS_BYTES_PER_POSITION)
    batch = min(batch_size, n)
    forward = batch * seq * ((vocab_size or 0) * LOGIT_BYTES + n_heads * seq * ATTENTION_BYTES)
    return prompts + results + forward
