"""Scoring pattern prompts by label log-likelihood ([CS24]; DESIGN.md section 6).

* :func:`encode_prompts`: token ids of each prompt (BOS prepended when the tokenizer has
  one) and of each label continuation, with every token's kind for the knockout.
* :func:`label_log_likelihoods`: multiple choice by the summed log-probability of each label
  continuation after the prompt (lm-evaluation-harness ``acc``), batched, under any set of
  hooks (zero/mean ablation from :mod:`icl_cmr.interventions.head_ablation`) and optionally an attention
  knockout (:mod:`icl_cmr.interventions.knockout`).
* :func:`reference_means`: the mean-ablation reference (``hook_z`` per position over a
  reference corpus), extended to any length.
* :func:`accuracy_with_ci` (Wilson 95% interval), :func:`select_top_heads`.

The paired tests of the results (McNemar, permutation, Benjamini-Hochberg) live in
:mod:`icl_cmr.stats`; the bar chart in :mod:`icl_cmr.figures.patterns`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from icl_cmr.errors import InputError
from icl_cmr.interventions.head_ablation import mean_head_activations
from icl_cmr.interventions.knockout import batch_knockout_mask, kind_codes, knockout_hooks, token_kinds
from icl_cmr.interventions.pattern_tasks import KIND_SPACE, PatternPrompt, Segment
from icl_cmr.stats import wilson_interval

logger = logging.getLogger(__name__)

Head = Tuple[int, int]
HookList = List[Tuple[str, Callable]]


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt as token ids, with its label continuations.

    Attributes
    ----------
    prompt_ids : numpy.ndarray of int64, shape [n_prompt_tokens]
        BOS (when the model has one) + the prompt's tokens.
    prompt_kinds : tuple of (str or None), length n_prompt_tokens
    continuation_ids : tuple of numpy.ndarray of int64, one per label, shape [n_label_tokens]
    continuation_kinds : tuple of tuple of (str or None), one per label
    label_index : int
        The correct label.
    """

    prompt_ids: np.ndarray
    prompt_kinds: Tuple[Optional[str], ...]
    continuation_ids: Tuple[np.ndarray, ...]
    continuation_kinds: Tuple[Tuple[Optional[str], ...], ...]
    label_index: int


def _tokenize_with_offsets(tokenizer, text: str) -> Tuple[List[int], List[Tuple[int, int]]]:
    """Token ids and character spans; slow (Python) tokenizers get spans by incremental decoding."""
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoding["input_ids"]), [tuple(span) for span in encoding["offset_mapping"]]
    except NotImplementedError:  # e.g. Qwen-7B's tiktoken tokenizer has no offset mapping
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    # Token k spans from the end of the decoded prefix ids[:k] to the end of ids[:k + 1]. Valid when
    # every decoded prefix is a prefix of the text, which is checked (ASCII prompts: always).
    offsets, previous = [], 0
    for k in range(len(ids)):
        decoded = tokenizer.decode(ids[:k + 1])
        if not text.startswith(decoded):
            raise InputError("cannot align the tokenizer's tokens with the prompt text (decoded prefix "
                             f"{decoded[-20:]!r} is not a prefix of it); a fast tokenizer is needed")
        offsets.append((previous, len(decoded)))
        previous = len(decoded)
    return ids, offsets


def _continuation_tokens(tokenizer, prompt_text: str,
                         continuation: str) -> Tuple[List[int], List[Tuple[int, int]], bool]:
    """A label continuation's tokens as the tokenizer makes them after the prompt.

    The joint text ``prompt_text + continuation`` is tokenized and the tokens starting at or after
    the join are the continuation's. A SentencePiece tokenizer with a dummy prefix (Llama-1/2,
    Mistral-7B-v0.1) encodes ``" Foo"`` alone as ``["▁", "▁Foo"]`` but ``"...: Foo"`` as
    ``[..., ":", "▁Foo"]``; only the latter is what the model sees. Where a token spans the join
    (e.g. a merge of the prompt's last character with the label's first), the continuation alone
    is tokenized instead, so the prompt's tokens stay those of the prompt alone.

    Returns
    -------
    ids : list of int
    offsets : list of (int, int)
        Character spans within ``continuation``.
    separate : bool
        True when the fallback (the continuation tokenized alone) was used.
    """
    join = len(prompt_text)
    joint_ids, joint_offsets = _tokenize_with_offsets(tokenizer, prompt_text + continuation)
    spans_join = any(start < join < end for start, end in joint_offsets)
    first = next((k for k, (start, end) in enumerate(joint_offsets) if start >= join and end > start), None)
    if not spans_join and first is not None:
        return (joint_ids[first:], [(max(0, start - join), max(0, end - join)) for start, end in joint_offsets[first:]],
                False)
    ids, offsets = _tokenize_with_offsets(tokenizer, continuation)
    return ids, offsets, True


def encode_prompts(tokenizer, prompts: Sequence[PatternPrompt], bos_id: Optional[int],
                   kind_level: str = "kind") -> List[EncodedPrompt]:
    """Tokenize prompts and their label continuations as the model reads them.

    The prompt is tokenized alone; each label's tokens are those that follow the prompt in the
    tokenization of prompt + label (:func:`_continuation_tokens`), as lm-evaluation-harness
    does. For byte-level BPE (GPT-2, Pythia) this equals tokenizing the label alone; for
    SentencePiece tokenizers with a dummy prefix it drops the spurious ``"▁"`` piece the label
    alone would get. Continuations that had to be tokenized alone (a token spanning the join)
    are counted in a warning.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        Fast (character offsets) or slow (offsets by incremental decoding).
    prompts : sequence of PatternPrompt
    bos_id : int or None
        Prepended to every prompt when not None.
    kind_level : {"kind", "category"}
        Passed to :func:`icl_cmr.interventions.knockout.token_kinds`.

    Returns
    -------
    list of EncodedPrompt

    Raises
    ------
    InputError
        A label that tokenizes to nothing; a slow tokenizer whose decoding does not reproduce the text.
    """
    encoded = []
    n_separate = n_continuations = 0
    for prompt in prompts:
        ids, offsets = _tokenize_with_offsets(tokenizer, prompt.text)
        kinds = token_kinds(prompt.text, offsets, prompt.segments, kind_level)
        if bos_id is not None:
            ids, kinds = [int(bos_id)] + ids, [None] + kinds
        continuation_ids, continuation_kinds = [], []
        for label, text in zip(prompt.labels, prompt.continuations):
            label_ids, label_offsets, separate = _continuation_tokens(tokenizer, prompt.text, text)
            if not label_ids:
                raise InputError(f"label {label!r} tokenizes to nothing")
            n_separate += separate
            n_continuations += 1
            kind = f"label:{label}"
            segments = (Segment(0, 1, KIND_SPACE, KIND_SPACE), Segment(1, len(text), kind, kind))
            continuation_ids.append(np.asarray(label_ids, dtype=np.int64))
            continuation_kinds.append(tuple(token_kinds(text, label_offsets, segments, kind_level)))
        encoded.append(EncodedPrompt(prompt_ids=np.asarray(ids, dtype=np.int64), prompt_kinds=tuple(kinds),
                                     continuation_ids=tuple(continuation_ids),
                                     continuation_kinds=tuple(continuation_kinds),
                                     label_index=prompt.label_index))
    if n_separate:
        logger.warning("%d of %d label continuations share a token with the end of their prompt; those labels are "
                       "scored from their own tokenization", n_separate, n_continuations)
    return encoded


@dataclass(frozen=True)
class _Run:
    """One forward sequence and the log-probs to read from it."""

    prompt: int
    ids: np.ndarray              # [n_tokens]
    kinds: Tuple[Optional[str], ...]
    positions: np.ndarray        # [n_reads] positions whose next-token distribution is read
    targets: np.ndarray          # [n_reads] token ids read there
    labels: np.ndarray           # [n_reads] label each read adds to


def _prompt_runs(index: int, item: EncodedPrompt) -> List[_Run]:
    """The fewest forward sequences that give every label's log-probabilities for one prompt.

    Label ``l`` with tokens ``c_0..c_{n-1}`` needs the next-token distributions after
    ``prompt + c_<t`` for ``t < n``. A run ``prompt + r`` gives those after ``prompt + r[:t]``
    for every ``t <= len(r)``, so it serves every label whose ``c[:-1]`` (tokens and their
    knockout kinds) is a prefix of ``r``. Runs are the longest inputs first, each label joining
    the first run it fits: one run when every label is a single token, one run for ``" Foo"``
    and ``" Mur"`` when only ``" Mur"`` has two tokens. Two multi-token labels never share a run:
    their first tokens are of different kinds (``label:Foo`` vs ``label:Mur``), which the
    knockout tells apart.
    """
    last = len(item.prompt_ids) - 1
    needed = [tuple(zip((int(t) for t in cont[:-1]), kinds[:-1]))
              for cont, kinds in zip(item.continuation_ids, item.continuation_kinds)]
    order = sorted(range(len(needed)), key=lambda label: -len(needed[label]))  # longest inputs first
    inputs: List[Tuple[Tuple[int, Optional[str]], ...]] = []
    served: List[List[int]] = []
    for label in order:
        for run, prefix in enumerate(inputs):
            if prefix[:len(needed[label])] == needed[label]:
                served[run].append(label)
                break
        else:
            inputs.append(needed[label])
            served.append([label])
    runs = []
    for prefix, labels in zip(inputs, served):
        labels = sorted(labels)
        positions = np.concatenate([last + np.arange(len(item.continuation_ids[label])) for label in labels])
        runs.append(_Run(index, np.concatenate([item.prompt_ids, np.asarray([t for t, _ in prefix], dtype=np.int64)]),
                         item.prompt_kinds + tuple(kind for _, kind in prefix), positions,
                         np.concatenate([item.continuation_ids[label] for label in labels]),
                         np.concatenate([np.full(len(item.continuation_ids[label]), label) for label in labels])))
    return runs


@dataclass(frozen=True)
class _Batch:
    """One forward pass: right-padded tokens and where to read each label token's log-probability."""

    tokens: np.ndarray                      # [batch, length] int64, right-padded with 0
    kind_codes: Tuple[np.ndarray, ...]      # per row, [n_tokens] (attention_knockout.kind_codes)
    rows: np.ndarray                        # [n_reads] batch row of each read
    positions: np.ndarray                   # [n_reads]
    targets: np.ndarray                     # [n_reads] token id read
    prompt_index: np.ndarray                # [n_reads]
    label_index: np.ndarray                 # [n_reads]


@dataclass(frozen=True)
class ScoringPlan:
    """The forward batches that score a set of prompts, built once and reused for every condition.

    Build it with :func:`plan_scoring`; pass it to :func:`label_log_likelihoods` in place of
    the encoded prompts so that tokenized batches are not rebuilt per condition.

    Attributes
    ----------
    n_prompts, n_labels : int
    n_runs : int
        Forward sequences in all (one per prompt when the labels share all but their last token).
    batches : tuple of _Batch
    """

    n_prompts: int
    n_labels: int
    n_runs: int
    batches: Tuple[_Batch, ...]


def plan_scoring(encoded: Sequence[EncodedPrompt], batch_size: int = 16) -> ScoringPlan:
    """Group the forward sequences of :func:`label_log_likelihoods` into batches.

    Each prompt needs the fewest sequences that contain every label's continuation but its last
    token (one when all labels are single tokens); sequences are sorted by length so that
    similar lengths share a batch, and right-padded (causal attention: padding after a token
    cannot change its logits, and positions stay aligned from 0 for mean ablation).

    Parameters
    ----------
    encoded : sequence of EncodedPrompt
        All with the same number of labels.
    batch_size : int
        Sequences per forward pass, >= 1.

    Returns
    -------
    ScoringPlan

    Raises
    ------
    InputError
        ``batch_size < 1``, no prompts, or prompts with different numbers of labels.
    """
    if batch_size < 1:
        raise InputError(f"`batch_size` must be >= 1, got {batch_size}", parameters=("batch_size",))
    if not encoded:
        raise InputError("no prompts to score")
    n_labels = {len(item.continuation_ids) for item in encoded}
    if len(n_labels) != 1:
        raise InputError(f"all prompts must have the same number of labels, got {sorted(n_labels)}")
    runs = [run for index, item in enumerate(encoded) for run in _prompt_runs(index, item)]
    order = sorted(range(len(runs)), key=lambda r: -len(runs[r].ids))  # similar lengths share a batch
    batches = []
    for start in range(0, len(order), batch_size):
        chosen = [runs[r] for r in order[start:start + batch_size]]
        tokens = np.zeros((len(chosen), max(len(run.ids) for run in chosen)), dtype=np.int64)
        for row, run in enumerate(chosen):
            tokens[row, :len(run.ids)] = run.ids
        batches.append(_Batch(
            tokens=tokens, kind_codes=tuple(kind_codes(run.kinds) for run in chosen),
            rows=np.concatenate([np.full(len(run.positions), row) for row, run in enumerate(chosen)]),
            positions=np.concatenate([run.positions for run in chosen]),
            targets=np.concatenate([run.targets for run in chosen]),
            prompt_index=np.concatenate([np.full(len(run.positions), run.prompt) for run in chosen]),
            label_index=np.concatenate([run.labels for run in chosen])))
    return ScoringPlan(n_prompts=len(encoded), n_labels=n_labels.pop(), n_runs=len(runs), batches=tuple(batches))


def label_log_likelihoods(model, encoded: "Sequence[EncodedPrompt] | ScoringPlan", batch_size: int = 16,
                          hooks: Optional[HookList] = None, knockout_heads: Optional[Sequence[Head]] = None,
                          progress: bool = False) -> np.ndarray:
    """Log-likelihood of every label continuation after every prompt.

    Batched as :func:`plan_scoring` plans it; every batch runs under the same hooks.

    Parameters
    ----------
    model : TransformerBridge
    encoded : sequence of EncodedPrompt, or ScoringPlan
        All with the same number of labels; a plan built once is reused as is.
    batch_size : int
        Sequences per forward pass (ignored for a plan).
    hooks : list of (str, callable), optional
        Static forward hooks (e.g. ablation), applied to every batch.
    knockout_heads : sequence of (layer, head), optional
        Heads whose induction edges are cut (:mod:`icl_cmr.interventions.knockout`).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    numpy.ndarray of float64, shape [n_prompts, n_labels]
        Summed log-probability of each label's tokens.
    """
    plan = encoded if isinstance(encoded, ScoringPlan) else plan_scoring(encoded, batch_size)
    result = np.zeros((plan.n_prompts, plan.n_labels), dtype=np.float64)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in tqdm(plan.batches, disable=not progress, desc="scoring", leave=False):
            batch_hooks = list(hooks or [])
            if knockout_heads:
                blocked = batch_knockout_mask(batch.kind_codes, batch.tokens.shape[1])
                batch_hooks += knockout_hooks(model, knockout_heads, blocked)
            logits = model.run_with_hooks(torch.as_tensor(batch.tokens, device=device), fwd_hooks=batch_hooks)
            selected = logits[torch.as_tensor(batch.rows, device=logits.device),
                              torch.as_tensor(batch.positions, device=logits.device)].float()
            targets = torch.as_tensor(batch.targets, device=logits.device)
            log_probs = torch.log_softmax(selected, dim=-1).gather(1, targets[:, None])[:, 0].double().cpu().numpy()
            np.add.at(result, (batch.prompt_index, batch.label_index), log_probs)
    return result


def score_choices(log_likelihoods: np.ndarray, label_index: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prediction, correctness and margin of each multiple-choice item.

    Parameters
    ----------
    log_likelihoods : numpy.ndarray, shape [n_items, n_labels]
    label_index : numpy.ndarray of int, shape [n_items]

    Returns
    -------
    predicted : numpy.ndarray of int, shape [n_items]
        Label with the highest log-likelihood (the first on exact ties).
    correct : numpy.ndarray of bool, shape [n_items]
    margin : numpy.ndarray of float, shape [n_items]
        Log-likelihood of the correct label minus the best other label (> 0 iff correct).
    """
    log_likelihoods = np.asarray(log_likelihoods, dtype=np.float64)
    label_index = np.asarray(label_index, dtype=np.int64)
    rows = np.arange(len(label_index))
    predicted = np.argmax(log_likelihoods, axis=1)
    others = log_likelihoods.copy()
    others[rows, label_index] = -np.inf
    margin = log_likelihoods[rows, label_index] - others.max(axis=1)
    return predicted, predicted == label_index, margin


# ----------------------------------------------------------------------------- mean-ablation reference

def reference_means(model, reference: Sequence[EncodedPrompt], layers: Sequence[int], length: int,
                    batch_size: int = 16):
    """Mean ``hook_z`` per position over reference prompts, extended to ``length`` positions.

    Positions ``0..L_ref-1`` (``L_ref``: the longest reference prompt) hold
    :func:`icl_cmr.interventions.head_ablation.mean_head_activations` of the reference prompts (each position
    averaged over the prompts that reach it; prompts are batched by equal length so no padding
    enters the mean). Positions ``L_ref..length-1`` (longer evaluation prompts, label
    continuations, and right-padding) hold the head's mean over every reference token except
    position 0 (BOS), weighted by how many prompts reach each position.

    Parameters
    ----------
    model : TransformerBridge
    reference : sequence of EncodedPrompt
        Only ``prompt_ids`` are used.
    layers : sequence of int
    length : int
        Number of positions to cover.
    batch_size : int

    Returns
    -------
    means : dict of int -> torch.Tensor [max(length, L_ref), n_heads, d_head]
    reference_length : int
        ``L_ref``.
    """
    if not reference:
        raise InputError("the mean-ablation reference corpus is empty")
    device = next(model.parameters()).device
    by_length: Dict[int, List[np.ndarray]] = {}
    for item in reference:
        by_length.setdefault(len(item.prompt_ids), []).append(item.prompt_ids)
    batches = [torch.as_tensor(np.stack(group[start:start + batch_size]), device=device)
               for _, group in sorted(by_length.items()) for start in range(0, len(group), batch_size)]
    means = mean_head_activations(model, batches, layers=list(layers))
    reference_length = max(by_length)
    counts = np.zeros(reference_length)
    for n_tokens, group in by_length.items():
        counts[:n_tokens] += len(group)
    if length > reference_length:
        weights = torch.as_tensor(counts[1:] / counts[1:].sum())
        for layer, mean in means.items():
            pooled = (mean[1:].double() * weights.to(mean.device)[:, None, None]).sum(0).to(mean.dtype)
            means[layer] = torch.cat([mean, pooled[None].expand(length - reference_length, *pooled.shape)])
    return means, reference_length


# ----------------------------------------------------------------------------- head selection

def select_top_heads(scores: np.ndarray, percentage: float) -> List[Head]:
    """The top ``percentage`` % of heads by score (e.g. [CS24]'s prefix-matching score).

    Count: ``max(1, round(percentage / 100 * n_layers * n_heads))``; NaN scores are never
    picked; ties keep layer-major order.

    Parameters
    ----------
    scores : numpy.ndarray, shape [n_layers, n_heads]
    percentage : float
        In (0, 100].

    Returns
    -------
    list of (int, int)
        Sorted by descending score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise InputError(f"`scores` must be [n_layers, n_heads], got shape {scores.shape}", parameters=("scores",))
    if not 0 < percentage <= 100:
        raise InputError(f"`percentage` must be in (0, 100], got {percentage}", parameters=("percentage",))
    count = max(1, int(round(percentage / 100.0 * scores.size)))
    finite = np.isfinite(scores.ravel())
    if finite.sum() < count:
        raise InputError(f"only {int(finite.sum())} heads have a finite score; cannot pick {count}")
    order = np.argsort(np.where(finite, -scores.ravel(), np.inf), kind="stable")[:count]
    n_heads = scores.shape[1]
    return [(int(flat // n_heads), int(flat % n_heads)) for flat in order]


# ----------------------------------------------------------------------------- accuracy

def accuracy_with_ci(correct: np.ndarray, confidence: float = 0.95) -> Tuple[float, float, float]:
    """Accuracy and its Wilson score interval.

    Parameters
    ----------
    correct : numpy.ndarray of bool, shape [n]

    Returns
    -------
    (accuracy, low, high) : tuple of float
    """
    correct = np.asarray(correct, dtype=bool)
    if correct.size == 0:
        raise InputError("`correct` is empty: the accuracy of zero items is undefined", parameters=("correct",))
    k, n = int(correct.sum()), int(correct.size)
    return (k / n, *wilson_interval(k, n, confidence))
