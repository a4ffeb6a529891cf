"""Attention knockout of induction edges for selected heads ([CS24]; DESIGN.md section 6).

An induction head at a query token ``i`` looks back for an earlier token ``j`` of the same
kind and attends to what followed it, ``j + 1``. The knockout removes exactly those edges
for the selected heads and leaves the heads otherwise running:

    blocked[i, j + 1] = True   for every j < i with kind(j) == kind(i) (kind not None)

``j + 1 <= i`` always, so only causal edges are touched; key 0 (BOS, or the first token)
is never blocked, so no query loses all its keys. When ``j = i - 1`` the blocked key is
``i`` itself (a repeated kind right after itself, e.g. the Bs of ABBB): by the definition
that is what followed the earlier token, and it is blocked too.

Kinds come from the prompt's segments (:mod:`icl_cmr.interventions.pattern_tasks`): each token takes the
segment holding its first non-whitespace character (a whitespace-only token: its first
character), and its kind is ``"<segment kind>#<k>"`` with ``k`` its index among the tokens
of that segment, so the two halves of a word split into two tokens are different kinds and
equal words tokenized alike have equal kinds. Tokens of the instruction line (kind None)
are never queries of a blocked edge, though they can be keys of one.

The edit is made on ``hook_attn_scores`` ([batch, head, query, key], pre-softmax, already
scaled; TransformerLens 4 masks the future with the dtype's minimum, not -inf): blocked
entries are set to that same minimum, so their softmax weight is exactly 0 and the rest of
the row renormalises. ``tests/interventions/test_attention_knockout.py`` checks, on TransformerLens 4,
that this edit zeroes those entries of ``hook_pattern`` and changes the logits.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from icl_cmr.errors import InputError
from icl_cmr.heads.hooks import hook_name

Head = Tuple[int, int]
HookList = List[Tuple[str, Callable]]

#: Kind granularity: ``"kind"`` (same letter / same word / same separator / same label) or
#: ``"category"`` (words of the same category count as the same kind).
KIND_LEVELS = ("kind", "category")


def token_kinds(text: str, offsets: Sequence[Tuple[int, int]], segments: Sequence,
                level: str = "kind") -> List[Optional[str]]:
    """Kind of each token of ``text``, from its character offsets and the text's segments.

    Parameters
    ----------
    text : str
        The tokenized text.
    offsets : sequence of (int, int), length n_tokens
        Character span of each token (a fast tokenizer's ``offset_mapping``).
    segments : sequence of Segment
        Spans with ``start``, ``end``, ``kind`` and ``category`` (see
        :class:`icl_cmr.interventions.pattern_tasks.Segment`); characters outside every segment have no kind.
    level : {"kind", "category"}
        Which attribute of the segments to use.

    Returns
    -------
    list of str or None, length n_tokens
        ``"<kind>#<k>"``; None for tokens outside the segments or in a segment of kind None.
    """
    if level not in KIND_LEVELS:
        raise InputError(f"kind level {level!r} is not supported; accepted: {', '.join(KIND_LEVELS)}")
    owner = np.full(len(text), -1, dtype=np.int64)  # segment index of every character
    for index, segment in enumerate(segments):
        owner[segment.start:segment.end] = index
    kinds: List[Optional[str]] = []
    per_segment: Dict[int, int] = {}
    for start, end in offsets:
        if end <= start:  # special or empty token
            kinds.append(None)
            continue
        piece = text[start:end]
        stripped = len(piece) - len(piece.lstrip())
        anchor = start + (stripped if stripped < len(piece) else 0)
        segment_index = int(owner[anchor]) if anchor < len(owner) else -1
        kind = None if segment_index < 0 else getattr(segments[segment_index], level)
        if kind is None:
            kinds.append(None)
            continue
        k = per_segment.get(segment_index, 0)
        per_segment[segment_index] = k + 1
        kinds.append(f"{kind}#{k}")
    return kinds


def kind_codes(kinds: Sequence[Optional[str]]) -> np.ndarray:
    """Integer codes of ``kinds`` (equal kinds, equal codes; None -> -1).

    Returns
    -------
    numpy.ndarray of int64, shape [n_tokens]
    """
    table: Dict[str, int] = {}
    return np.array([-1 if kind is None else table.setdefault(kind, len(table)) for kind in kinds],
                    dtype=np.int64)


def knockout_mask(codes: np.ndarray) -> np.ndarray:
    """Blocked attention edges of one token sequence (module docstring).

    Parameters
    ----------
    codes : numpy.ndarray of int, shape [n_tokens]
        Kind codes (:func:`kind_codes`); negative means no kind.

    Returns
    -------
    numpy.ndarray of bool, shape [n_tokens (query), n_tokens (key)]
        True where the edge query -> key is cut: key = j + 1 for an earlier j of the query's kind.
    """
    codes = np.asarray(codes)
    n = codes.shape[0]
    same = (codes[:, None] == codes[None, :]) & (codes[:, None] >= 0)
    earlier = np.tril(np.ones((n, n), dtype=bool), k=-1)  # [query i, j] with j < i
    blocked = np.zeros((n, n), dtype=bool)
    blocked[:, 1:] = (same & earlier)[:, :-1]
    return blocked


def knockout_edges(codes: np.ndarray) -> List[Tuple[int, int]]:
    """The blocked edges ``(query, key)`` of :func:`knockout_mask`, in row-major order."""
    return [(int(q), int(k)) for q, k in zip(*np.nonzero(knockout_mask(codes)))]


def batch_knockout_mask(code_rows: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Stack the masks of several sequences, right-padded to ``length`` (padding never blocked).

    Returns
    -------
    numpy.ndarray of bool, shape [batch, length, length]
    """
    masks = np.zeros((len(code_rows), length, length), dtype=bool)
    for row, codes in enumerate(code_rows):  # per prompt: each has its own kinds and length
        n = len(codes)
        if n > length:
            raise InputError(f"sequence of {n} tokens does not fit the padded length {length}")
        masks[row, :n, :n] = knockout_mask(codes)
    return masks


def knockout_hooks(model, heads: Sequence[Head], blocked) -> HookList:
    """Hooks on ``hook_attn_scores`` that cut the ``blocked`` edges for ``heads`` only.

    Parameters
    ----------
    model : TransformerBridge
        Read for its size.
    heads : sequence of (layer, head)
    blocked : numpy.ndarray or torch.Tensor of bool, shape [batch, pos, pos]
        From :func:`batch_knockout_mask`; must match the batch the hooks will see.

    Returns
    -------
    list of (str, callable)
        One hook per affected layer.

    Raises
    ------
    InputError
        A head outside the model; at run time, a batch whose shape differs from ``blocked``.
    """
    import torch

    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    grouped: Dict[int, List[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise InputError(f"head L{layer}H{head} does not exist; the model has layers 0..{n_layers - 1} "
                             f"and heads 0..{n_heads - 1}")
        grouped.setdefault(int(layer), []).append(int(head))
    blocked = torch.as_tensor(np.asarray(blocked, dtype=bool))
    hooks: HookList = []
    for layer, head_indices in sorted(grouped.items()):
        selected = torch.zeros(n_heads, dtype=torch.bool)
        selected[sorted(set(head_indices))] = True

        def cut(scores, hook=None, selected=selected):
            # scores: [batch, head, query, key]
            if tuple(scores.shape[:1] + scores.shape[2:]) != tuple(blocked.shape):
                raise InputError(f"knockout mask of shape {tuple(blocked.shape)} does not match attention scores "
                                 f"{tuple(scores.shape)}")
            mask = (selected.to(scores.device)[None, :, None, None]
                    & blocked.to(scores.device)[:, None, :, :])
            return scores.masked_fill(mask, torch.finfo(scores.dtype).min)

        hooks.append((hook_name(layer, "attn_scores"), cut))
    return hooks
