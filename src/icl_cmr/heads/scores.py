"""Lag statistics of attention on repeated-random-token prompts (DESIGN.md section 2).

Prompt layout (see :mod:`icl_cmr.heads.prompts`): ``offset`` leading tokens (1 for a BOS,
else 0), a block of ``block_len`` distinct ids at positions ``offset .. offset+n-1``,
then the same block again. A query at position ``i`` of the second repeat has its
token's first occurrence at ``j = i - n``; **lag k** is the key position ``j + k``.
Only keys inside the first repeat count, so each lag has its own set of queries
(lag -3 has no valid query for the first three items).

* :func:`induction_matching_score` - mean softmax attention on lag +1 ([OL22], [LI24]).
* :func:`attention_crp` - mean (and SEM across queries) of the attention at lags
  -8..+7; pass pre-softmax scores (``hook_attn_scores``, what [LI24]'s ``CRP_scores``
  hold) or probabilities (``hook_pattern``).
* :func:`prefix_matching_score` - [CS24]: for queries in copies 2.. of a block repeated
  several times, the summed attention on every earlier position holding the token
  that should come next.

These take one layer's attention ``[batch, head, query, key]`` from any model (numpy
or torch) and are vectorized over batch, heads, queries and lags.
:func:`stream_attention_scores` runs a TransformerLens model over prompt batches and
reduces every layer's attention to these statistics inside forward hooks, so no
layer's full pattern outlives its own hook call.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from icl_cmr.config import ATTN_CRP_LAGS
from icl_cmr.errors import InputError
from icl_cmr.heads.hooks import hook_name

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- index bookkeeping

def repeat_lag_indices(block_len: int, offset: int, lags: Sequence[int] = ATTN_CRP_LAGS
                       ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query positions, lag key positions and their validity for a two-repeat prompt.

    Parameters
    ----------
    block_len : int
        Items per repeat (n).
    offset : int
        Position of the first item (1 with a BOS token).
    lags : sequence of int
        Lags k; key position ``j + k`` with ``j = i - n``.

    Returns
    -------
    queries : ndarray, shape [n], int64
        Every position of the second repeat: ``offset + n .. offset + 2n - 1``.
    keys : ndarray, shape [n, n_lags], int64
        Key position per (query, lag), clipped into the first repeat where invalid.
    valid : ndarray, shape [n, n_lags], bool
        Whether ``j + k`` lies in the first repeat (the only keys that count).
    """
    if block_len < 1 or offset < 0:
        raise InputError(f"need block_len >= 1 and offset >= 0, got {block_len}, {offset}")
    lags = np.asarray(lags, dtype=np.int64)
    queries = offset + block_len + np.arange(block_len, dtype=np.int64)
    keys = (queries - block_len)[:, None] + lags[None, :]
    valid = (keys >= offset) & (keys < offset + block_len)
    return queries, np.clip(keys, offset, offset + block_len - 1), valid


def _as_tensor(array) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array
    array = np.asarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _check_attention(attn: torch.Tensor, min_len: int, what: str) -> None:
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        raise InputError(f"{what} must have shape [batch, head, query, key] with query == key length, "
                         f"got {tuple(attn.shape)}")
    if attn.shape[-1] < min_len:
        raise InputError(f"{what} covers {attn.shape[-1]} positions; the prompt layout needs {min_len}")


# ----------------------------------------------------------------------------- lag statistics

@dataclass(frozen=True)
class LagStatistics:
    """Mean and SEM across queries of attention at each lag.

    Attributes
    ----------
    mean : ndarray, shape [..., n_lags], float64
    sem : ndarray, shape [..., n_lags], float64
        Sample standard deviation (ddof 1) / sqrt(count); NaN where count < 2.
    count : ndarray, shape [n_lags], int64
        Queries (over all prompts) that had a valid key at each lag.
    lags : ndarray, shape [n_lags], int64
    """

    mean: np.ndarray
    sem: np.ndarray
    count: np.ndarray
    lags: np.ndarray

    def at_lag(self, lag: int) -> np.ndarray:
        """``mean[..., index of lag]``, shape ``mean.shape[:-1]``."""
        where = np.flatnonzero(self.lags == lag)
        if where.size == 0:
            raise InputError(f"lag {lag} is not among the computed lags {self.lags.tolist()}")
        return self.mean[..., where[0]]


class LagAccumulator:
    """Streaming mean/SEM of attention at lags -8..+7 over batches of two-repeat prompts.

    Sums are kept in float64 on the attention's device, shifted by the first batch's
    mean to avoid cancellation in the variance; only ``[head, n_lags]`` arrays persist.

    Parameters
    ----------
    block_len, offset : int
        Prompt layout (see :func:`repeat_lag_indices`).
    lags : sequence of int
    """

    def __init__(self, block_len: int, offset: int, lags: Sequence[int] = ATTN_CRP_LAGS):
        self.block_len, self.offset = int(block_len), int(offset)
        self.lags = np.asarray(lags, dtype=np.int64)
        queries, keys, valid = repeat_lag_indices(block_len, offset, self.lags)
        self._index_np = (queries, keys, valid)
        self._index: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self._shift = self._sum = self._sumsq = None
        self._count = np.zeros(self.lags.size, dtype=np.int64)

    def _indices(self, device: torch.device):
        if self._index is None or self._index[0].device != device:
            queries, keys, valid = self._index_np
            self._index = (torch.as_tensor(queries, device=device)[:, None], torch.as_tensor(keys, device=device),
                           torch.as_tensor(valid, device=device, dtype=torch.float64))
        return self._index

    def update(self, attn) -> None:
        """Add one batch.

        Parameters
        ----------
        attn : Tensor or ndarray, shape [batch, head, query, key]
            One layer's pre-softmax scores or probabilities on two-repeat prompts.
        """
        attn = _as_tensor(attn)
        _check_attention(attn, self.offset + 2 * self.block_len, "attention")
        queries, keys, weight = self._indices(attn.device)
        values = attn[:, :, queries, keys]  # [batch, head, query, lag]
        if attn.is_floating_point():
            masked = (values <= torch.finfo(attn.dtype).min / 2) & (weight > 0)
            if bool(masked.any()):
                raise InputError("the model masks keys at the lags being scored (sliding-window or local attention "
                                 "narrower than the prompt); lower `block_len`", parameters=("block_len",))
        values = values.to(torch.float64)
        if self._shift is None:
            # Any constant works as the shift; the first batch's mean keeps values near 0.
            self._shift = torch.einsum("bhql,ql->hl", values, weight) / (weight.sum(0) * values.shape[0]).clamp(min=1)
            self._sum = torch.zeros_like(self._shift)
            self._sumsq = torch.zeros_like(self._shift)
        centred = values - self._shift[None, :, None, :]
        self._sum += torch.einsum("bhql,ql->hl", centred, weight)
        self._sumsq += torch.einsum("bhql,ql->hl", centred * centred, weight)
        self._count += attn.shape[0] * self._index_np[2].sum(0)

    def result(self) -> LagStatistics:
        """Mean [head, n_lags], SEM [head, n_lags] and per-lag query counts so far."""
        if self._sum is None:
            raise InputError("no attention was accumulated (empty prompt set?)")
        count = self._count.astype(np.float64)
        total, total_sq, shift = (t.cpu().numpy() for t in (self._sum, self._sumsq, self._shift))
        with np.errstate(invalid="ignore", divide="ignore"):
            centred_mean = total / count
            variance = (total_sq - count * centred_mean ** 2) / (count - 1)
            sem = np.sqrt(np.clip(variance, 0.0, None) / count)
        sem = np.where(count >= 2, sem, np.nan)
        mean = np.where(count >= 1, centred_mean + shift, np.nan)
        return LagStatistics(mean=mean, sem=sem, count=self._count.copy(), lags=self.lags.copy())


def attention_crp(attn, block_len: int, offset: int = 1, lags: Sequence[int] = ATTN_CRP_LAGS) -> LagStatistics:
    """Attention CRP of every head: mean and SEM across queries at each lag ([LI24] Fig 5).

    Parameters
    ----------
    attn : Tensor or ndarray, shape [batch, head, query, key]
        Pre-softmax scores (``hook_attn_scores``) or probabilities (``hook_pattern``) of
        one layer on prompts ``[offset tokens] + block + block``.
    block_len : int
        Items per repeat.
    offset : int
        Position of the first item (1 with BOS).
    lags : sequence of int
        Default -8..+7 ([LI24]'s 16 lags).

    Returns
    -------
    LagStatistics
        ``mean``/``sem`` shape [head, n_lags]; queries pooled over the batch.

    Examples
    --------
    >>> import numpy as np
    >>> pattern = np.tril(np.ones((1, 1, 5, 5)))  # unnormalised, just to show indexing
    >>> attention_crp(pattern, block_len=2, offset=1, lags=[-1, 0, 1]).count.tolist()
    [1, 2, 1]
    """
    accumulator = LagAccumulator(block_len, offset, lags)
    accumulator.update(attn)
    return accumulator.result()


def induction_matching_score(pattern, block_len: int, offset: int = 1) -> np.ndarray:
    """Induction-head matching score: mean softmax attention on lag +1 ([OL22]; DESIGN.md section 2).

    Averaged over every second-repeat query whose lag +1 key lies in the first repeat
    (``block_len - 1`` queries per prompt) and over prompts. In [0, 1].

    Parameters
    ----------
    pattern : Tensor or ndarray, shape [batch, head, query, key]
        Attention probabilities of one layer.
    block_len, offset : int
        Prompt layout.

    Returns
    -------
    ndarray, shape [head], float64
    """
    return attention_crp(pattern, block_len, offset, lags=[1]).mean[:, 0]


# ----------------------------------------------------------------------------- prefix matching

def prefix_target_mask(tokens, block_len: int, offset: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Which keys hold "the token that should come next" for each query ([CS24]).

    For a query at position ``i >= offset + block_len`` (copies 2..), the next token
    is the one that followed the token's previous occurrence: ``tokens[i - block_len + 1]``.
    Every earlier position (``k < i``) holding it is a target.

    Parameters
    ----------
    tokens : Tensor or ndarray, shape [batch, pos], int
        Prompts ``[offset tokens] + block * n_copies`` (distinct ids within a block).
    block_len, offset : int

    Returns
    -------
    mask : Tensor, shape [batch, query, key], bool
    query_valid : Tensor, shape [query], bool
        True for the scored queries (copies 2 and later).
    """
    tokens = _as_tensor(tokens)
    n_pos = tokens.shape[-1]
    if n_pos < offset + 2 * block_len:
        raise InputError(f"prefix prompts of {n_pos} tokens hold fewer than 2 copies of {block_len} after "
                         f"{offset} leading tokens")
    positions = torch.arange(n_pos, device=tokens.device)
    query_valid = positions >= offset + block_len
    next_token = tokens[:, (positions - block_len + 1).clamp(0, n_pos - 1)]  # [batch, query]
    earlier = positions[None, :] < positions[:, None]  # [query, key]
    mask = (tokens[:, None, :] == next_token[:, :, None]) & earlier[None] & query_valid[None, :, None]
    return mask, query_valid


def _prefix_sums(pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed target attention per head over batch and queries: [head], float64."""
    return torch.einsum("bhqk,bqk->h", pattern.to(torch.float64), mask.to(torch.float64))


def prefix_matching_score(pattern, tokens, block_len: int, offset: int = 1) -> np.ndarray:
    """[CS24] prefix-matching score of every head.

    Mean over queries in copies 2.. (and prompts) of the summed attention on every
    earlier position holding the token that should come next (DESIGN.md section 2).

    Parameters
    ----------
    pattern : Tensor or ndarray, shape [batch, head, query, key]
        Attention probabilities of one layer.
    tokens : Tensor or ndarray, shape [batch, pos]
        The prompts.
    block_len, offset : int

    Returns
    -------
    ndarray, shape [head], float64, in [0, 1]
    """
    pattern, tokens = _as_tensor(pattern), _as_tensor(tokens)
    _check_attention(pattern, tokens.shape[-1], "pattern")
    mask, query_valid = prefix_target_mask(tokens.to(pattern.device), block_len, offset)
    n_queries = pattern.shape[0] * int(query_valid.sum())
    return (_prefix_sums(pattern, mask) / n_queries).cpu().numpy()


# ----------------------------------------------------------------------------- streaming over a model

@dataclass(frozen=True)
class AttentionScores:
    """Every attention-based score of every head (layers x query heads).

    Attributes
    ----------
    matching_score : ndarray, shape [layer, head]
        Mean probability on lag +1.
    crp_scores : LagStatistics
        Pre-softmax attention by lag, mean/sem [layer, head, n_lags].
    crp_probs : LagStatistics
        Softmax attention by lag, mean/sem [layer, head, n_lags].
    prefix_matching_score : ndarray, shape [layer, head]
    """

    matching_score: np.ndarray
    crp_scores: LagStatistics
    crp_probs: LagStatistics
    prefix_matching_score: np.ndarray


def _stack(stats: List[LagStatistics]) -> LagStatistics:
    return LagStatistics(mean=np.stack([s.mean for s in stats]), sem=np.stack([s.sem for s in stats]),
                         count=stats[0].count, lags=stats[0].lags)


def _batches(prompts: np.ndarray, batch_size: int):
    for start in range(0, prompts.shape[0], batch_size):
        yield prompts[start:start + batch_size]


def stop_after_last_attention(attn_out, hook):  # noqa: ARG001 - TransformerLens hook signature
    """Hook that ends a forward pass once the last layer's attention has run.

    TransformerLens 4's ``stop_at_layer=n_layers`` runs the whole model, last MLP and
    unembedding included: a [batch, pos, vocab] logit tensor (0.8 GB for 20 GPT-2 prompts
    of 201 tokens, 2 GB for Llama-3's vocabulary in float32) that the scores never read.
    ``run_with_hooks`` catches this exception and returns.
    """
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    raise StopAtLayerException(attn_out)


def stream_attention_scores(model, repeat_prompts: np.ndarray, block_len: int, offset: int,
                            prefix_prompts: np.ndarray, prefix_block_len: int, batch_size: int,
                            lags: Sequence[int] = ATTN_CRP_LAGS, progress: bool = True) -> AttentionScores:
    """Matching score, attention CRPs and prefix-matching score of every head of a TransformerLens model.

    One forward pass per batch of prompts; hooks on each layer's ``hook_attn_scores``
    and ``hook_pattern`` reduce the [batch, head, query, key] tensor to lag sums on the
    spot, so memory holds one layer's attention at a time (plus the model). The passes
    stop after the last layer's attention (:func:`stop_after_last_attention`: no last MLP,
    no unembedding).

    Parameters
    ----------
    model : transformer_lens.model_bridge.TransformerBridge (or HookedTransformer)
    repeat_prompts : ndarray, shape [n_prompts, offset + 2 * block_len], int
    block_len, offset : int
        Layout of both prompt sets.
    prefix_prompts : ndarray, shape [n_prefix, offset + n_copies * prefix_block_len], int
    prefix_block_len : int
    batch_size : int
        Prompts per forward pass.
    lags : sequence of int
        Must include +1 (the matching score).
    progress : bool
        Show tqdm bars.

    Returns
    -------
    AttentionScores
    """
    from tqdm.auto import tqdm


    lags = np.asarray(lags, dtype=np.int64)
    if 1 not in lags:
        raise InputError(f"lags must include +1 for the matching score, got {lags.tolist()}")
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size}")
    n_layers = int(model.cfg.n_layers)
    device = next(model.parameters()).device

    score_acc = [LagAccumulator(block_len, offset, lags) for _ in range(n_layers)]
    prob_acc = [LagAccumulator(block_len, offset, lags) for _ in range(n_layers)]

    def reducer(accumulator: LagAccumulator) -> Callable:
        def hook(attn, hook):  # noqa: ARG001 - TransformerLens hook signature
            accumulator.update(attn)
        return hook

    repeat_hooks = ([(hook_name(layer, "attn_scores"), reducer(score_acc[layer])) for layer in range(n_layers)]
                    + [(hook_name(layer, "pattern"), reducer(prob_acc[layer])) for layer in range(n_layers)])

    stop = [(hook_name(n_layers - 1, "attn_out"), stop_after_last_attention)]

    def run(tokens: np.ndarray, hooks) -> None:
        batch = torch.as_tensor(tokens, dtype=torch.long, device=device)
        with torch.inference_mode():
            model.run_with_hooks(batch, fwd_hooks=hooks + stop, return_type=None)

    n_batches = -(-repeat_prompts.shape[0] // batch_size)
    for tokens in tqdm(_batches(repeat_prompts, batch_size), total=n_batches, desc="repeat prompts",
                       disable=not progress):
        run(tokens, repeat_hooks)
    crp_scores = _stack([acc.result() for acc in score_acc])
    crp_probs = _stack([acc.result() for acc in prob_acc])

    prefix_sums: List[Optional[torch.Tensor]] = [None] * n_layers
    current_mask: List[torch.Tensor] = []

    def prefix_reducer(layer: int) -> Callable:
        def hook(pattern, hook):  # noqa: ARG001
            sums = _prefix_sums(pattern, current_mask[0])
            prefix_sums[layer] = sums if prefix_sums[layer] is None else prefix_sums[layer] + sums
        return hook

    prefix_hooks = [(hook_name(layer, "pattern"), prefix_reducer(layer)) for layer in range(n_layers)]
    n_queries = 0
    n_batches = -(-prefix_prompts.shape[0] // batch_size)
    for tokens in tqdm(_batches(prefix_prompts, batch_size), total=n_batches, desc="prefix prompts",
                       disable=not progress):
        mask, query_valid = prefix_target_mask(torch.as_tensor(tokens, device=device), prefix_block_len, offset)
        current_mask[:] = [mask]  # read by the hooks during this batch's forward pass
        run(tokens, prefix_hooks)
        n_queries += tokens.shape[0] * int(query_valid.sum())
    prefix = np.stack([s.cpu().numpy() for s in prefix_sums]) / n_queries

    return AttentionScores(matching_score=crp_probs.mean[..., int(np.flatnonzero(lags == 1)[0])],
                           crp_scores=crp_scores, crp_probs=crp_probs, prefix_matching_score=prefix)
