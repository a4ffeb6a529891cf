"""Per-head ablation hooks for TransformerLens 4 models, grouped-query models included.

[LI24] Fig 8 ablates the top CMR-like heads by zeroing their value vectors and
compares against the same number of random heads (DESIGN.md section 5); [CS24]
mean-ablates heads instead (DESIGN.md section 6). This module builds the hook
lists for ``model.run_with_hooks(tokens, fwd_hooks=hooks)``; it never runs a model
except in :func:`mean_head_activations`.

What each method does, and when two coincide
--------------------------------------------
Write ``z_h[i] = sum_j A_h[i, j] v_h[j]`` for head ``h`` at query ``i``
(``hook_z``, [batch, pos, head, d_head]) and ``v_h[j] = x[j] W_V[h] + b_V[h]``
(``hook_v``, value bias included). The attention block adds
``sum_h z_h W_O[h] + b_O`` to the residual stream.

* ``"value"`` (the paper's): zero head ``h``'s value vectors ``v_h`` at every
  position. For a model with one value head per query head (GPT-2, GPT-NeoX)
  this is done on ``hook_v`` exactly as the authors did. Because each row of
  ``A_h`` sums to 1 and ``v_h`` includes ``b_V``, ``v_h = 0`` gives ``z_h = 0``
  exactly: the same as zeroing ``hook_z`` for that head. For a grouped-query
  model (Mistral, Llama 3) ``hook_v`` holds one slice per *key/value* head,
  shared by several query heads, so zeroing it would ablate the whole group; we
  zero that query head's ``hook_z`` instead, which is what "that query head's
  value vectors alone are zero" means (DESIGN.md section 2).
* ``"output"``: zero the head's output ``z_h`` (``hook_z``), i.e. remove its
  whole write ``z_h W_O[h]`` to the residual stream. ``b_O`` is added once per
  layer, not per head, so it is left in place: no per-head share of it exists.
  Mathematically this is identical to ``"value"`` (above); the two differ only
  by floating-point rounding. Both are offered so that the paper's procedure is
  literally available and the per-head-output reading is explicit.
* ``"mean"``: replace ``z_h`` at each position by its mean over a reference
  set of prompts at that position (:func:`mean_head_activations`), the
  mean-ablation of [CS24] applied to the head output. Unlike zeroing, this
  keeps the average contribution of the head and removes only its
  prompt-specific part.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from icl_cmr.errors import InputError
from icl_cmr.heads.hooks import hook_name
from icl_cmr.heads.models import n_kv_heads

#: Accepted ablation methods (see the module docstring).
ABLATION_METHODS = ("value", "output", "mean")

Head = Tuple[int, int]
HookList = List[Tuple[str, Callable]]

_HEAD_LABEL = re.compile(r"^L(\d+)H(\d+)$", re.IGNORECASE)


def parse_heads(text: str) -> List[Head]:
    """Parse head labels like ``"L5H1,L6H9"`` (the authors' ``labels`` format).

    Parameters
    ----------
    text : str
        Comma- or whitespace-separated labels ``L<layer>H<head>`` (0-based).

    Returns
    -------
    list of (int, int)
        ``(layer, head)`` pairs in the order given.

    Raises
    ------
    InputError
        If a label does not match ``L<int>H<int>``, names a head twice (it would be ablated once
        but counted twice), or nothing is given.

    Examples
    --------
    >>> parse_heads("L5H1, L6H9")
    [(5, 1), (6, 9)]
    """
    heads: List[Head] = []
    for label in re.split(r"[,\s]+", text.strip()):
        if not label:
            continue
        match = _HEAD_LABEL.match(label)
        if match is None:
            raise InputError(f"`heads`: cannot parse {label!r}; expected labels like L5H1 (layer 5, head 1)",
                             parameters=("heads",))
        head = (int(match.group(1)), int(match.group(2)))
        if head in heads:
            raise InputError(f"`heads` names L{head[0]}H{head[1]} twice; give each head once", parameters=("heads",))
        heads.append(head)
    if not heads:
        raise InputError("`heads` is empty; give labels like L5H1,L6H9", parameters=("heads",))
    return heads


def format_heads(heads: Sequence[Head]) -> str:
    """``[(5, 1), (6, 9)]`` -> ``"L5H1,L6H9"`` (inverse of :func:`parse_heads`)."""
    return ",".join(f"L{layer}H{head}" for layer, head in heads)


def validate_heads(heads: Sequence[Head], n_layers: int, n_heads: int) -> None:
    """Raise :class:`InputError` if a head lies outside an ``n_layers`` x ``n_heads`` model."""
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise InputError(f"head L{layer}H{head} does not exist; the model has layers 0..{n_layers - 1} "
                             f"and heads 0..{n_heads - 1}")


def heads_to_mask(heads: Sequence[Head], n_layers: int, n_heads: int) -> np.ndarray:
    """Boolean mask of ``heads``.

    Parameters
    ----------
    heads : sequence of (layer, head)
    n_layers, n_heads : int
        Model size.

    Returns
    -------
    numpy.ndarray of bool, shape [n_layers, n_heads]
        True at each listed head.
    """
    validate_heads(heads, n_layers, n_heads)
    mask = np.zeros((n_layers, n_heads), dtype=bool)
    for layer, head in heads:
        mask[layer, head] = True
    return mask


def _heads_by_layer(heads: Sequence[Head]) -> Dict[int, List[int]]:
    grouped: Dict[int, List[int]] = {}
    for layer, head in heads:
        grouped.setdefault(int(layer), []).append(int(head))
    return {layer: sorted(set(hs)) for layer, hs in sorted(grouped.items())}


def _head_keep_factor(head_indices: Sequence[int], n_slices: int):
    """Float tensor [n_slices, 1]: 0 at ablated slices, 1 elsewhere (broadcasts over d_head)."""
    import torch

    keep = torch.ones(n_slices, 1)
    keep[list(head_indices)] = 0.0
    return keep


def zero_ablation_hooks(model, heads: Sequence[Head], method: str = "value") -> HookList:
    """Hooks that zero-ablate ``heads`` (one hook per affected layer).

    Parameters
    ----------
    model : TransformerBridge
        The model the hooks will run in (read for its size and key/value heads).
    heads : sequence of (layer, head)
        Query heads to ablate.
    method : {"value", "output"}
        ``"value"``: zero the heads' value vectors (``hook_v`` [batch, pos,
        head, d_head] for models with one value head per query head, the
        paper's way; ``hook_z`` of that query head for grouped-query models).
        ``"output"``: zero the heads' outputs ``hook_z`` [batch, pos, head,
        d_head]. Both give ``z_h = 0`` exactly (module docstring).

    Returns
    -------
    list of (str, callable)
        ``(hook_name, hook_fn)`` for ``model.run_with_hooks(..., fwd_hooks=...)``;
        empty when ``heads`` is empty.

    Raises
    ------
    InputError
        Unknown method, or a head outside the model.
    """
    if method not in ("value", "output"):
        raise InputError(f"zero ablation method {method!r} is not supported; accepted: value, output "
                         "(use mean_ablation_hooks for 'mean')")
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    validate_heads(heads, n_layers, n_heads)
    on_values = method == "value" and n_kv_heads(model) == n_heads
    kind = "v" if on_values else "z"
    hooks: HookList = []
    for layer, head_indices in _heads_by_layer(heads).items():
        keep = _head_keep_factor(head_indices, n_heads)

        def zero_heads(activation, hook=None, keep=keep):
            # activation: [batch, pos, head, d_head]; one multiply zeroes every listed head of the layer
            return activation * keep.to(device=activation.device, dtype=activation.dtype)

        hooks.append((hook_name(layer, kind), zero_heads))
    return hooks


def mean_head_activations(model, token_batches: Iterable, layers: Optional[Sequence[int]] = None):
    """Mean head output ``hook_z`` per position over a reference set of prompts.

    For each layer, position ``p``, head ``h`` and dimension ``d``: the mean over
    every prompt of every batch that has a token at ``p`` of ``hook_z[prompt, p,
    h, d]`` from an unablated forward pass. Prompts of different lengths are
    allowed; each position averages over the prompts long enough to reach it.
    Sums are accumulated in float64.

    Parameters
    ----------
    model : TransformerBridge
    token_batches : iterable of torch.LongTensor [batch, pos]
        The reference set (the evaluation set itself for [LI24]-style runs).
    layers : sequence of int, optional
        Layers to record (default: all).

    Returns
    -------
    dict of int -> torch.Tensor [max_pos, n_heads, d_head]
        In the model's dtype and on its device, one entry per layer.

    Raises
    ------
    InputError
        If ``token_batches`` is empty or a layer is out of range.
    """
    import torch

    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise InputError(f"layer {layer} does not exist; the model has layers 0..{n_layers - 1}")
    sums: Dict[int, "torch.Tensor"] = {}
    counts: Optional["torch.Tensor"] = None
    out_dtype = None

    def accumulate(activation, hook=None, layer=0):
        nonlocal out_dtype
        out_dtype = activation.dtype
        summed = activation.sum(dim=0, dtype=torch.float64)  # [pos, head, d_head]
        total = sums.get(layer)
        if total is None or total.shape[0] < summed.shape[0]:
            grown = torch.zeros(summed.shape, dtype=torch.float64, device=summed.device)
            if total is not None:
                grown[: total.shape[0]] += total
            total = grown
        total[: summed.shape[0]] += summed
        sums[layer] = total
        return activation

    hooks = [(hook_name(layer, "z"), lambda act, hook=None, layer=layer: accumulate(act, hook, layer))
             for layer in layers]
    with torch.inference_mode():
        for tokens in token_batches:
            batch, length = tokens.shape
            if counts is None or counts.shape[0] < length:
                grown = torch.zeros(length, dtype=torch.float64)
                if counts is not None:
                    grown[: counts.shape[0]] += counts
                counts = grown
            counts[:length] += batch
            model.run_with_hooks(tokens, fwd_hooks=hooks)
    if counts is None:
        raise InputError("mean_head_activations needs at least one batch of reference prompts")
    means = {}
    for layer in layers:
        total = sums[layer]
        means[layer] = (total / counts.to(total.device)[:, None, None]).to(out_dtype)
    return means


def mean_ablation_hooks(model, heads: Sequence[Head], means) -> HookList:
    """Hooks that replace each listed head's ``hook_z`` by its per-position mean.

    Parameters
    ----------
    model : TransformerBridge
    heads : sequence of (layer, head)
        Query heads to ablate.
    means : dict of int -> torch.Tensor [max_pos, n_heads, d_head]
        From :func:`mean_head_activations`; must cover every layer in ``heads``
        and at least as many positions as the prompts the hooks will see.

    Returns
    -------
    list of (str, callable)
        One ``hook_z`` hook per affected layer.

    Raises
    ------
    InputError
        A head outside the model or a layer missing from ``means``; at run time,
        a prompt longer than the means.
    """
    import torch

    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    validate_heads(heads, n_layers, n_heads)
    hooks: HookList = []
    for layer, head_indices in _heads_by_layer(heads).items():
        if layer not in means:
            raise InputError(f"no mean activations for layer {layer}; compute them with layers including {layer}")
        layer_mean = means[layer]
        replace = (_head_keep_factor(head_indices, n_heads) == 0).squeeze(1)  # [head] bool

        def mean_heads(activation, hook=None, layer_mean=layer_mean, replace=replace):
            length = activation.shape[1]
            if length > layer_mean.shape[0]:
                raise InputError(f"prompt of {length} tokens is longer than the {layer_mean.shape[0]} positions "
                                 "of the mean activations")
            mean = layer_mean[:length].to(device=activation.device, dtype=activation.dtype)
            mask = replace.to(activation.device)[None, None, :, None]  # broadcast over batch, pos, d_head
            return torch.where(mask, mean[None], activation)

        hooks.append((hook_name(layer, "z"), mean_heads))
    return hooks


def ablation_hooks(model, heads: Sequence[Head], method: str, means=None) -> HookList:
    """Dispatch to :func:`zero_ablation_hooks` or :func:`mean_ablation_hooks` by ``method``.

    Parameters
    ----------
    model : TransformerBridge
    heads : sequence of (layer, head)
    method : {"value", "output", "mean"}
    means : dict, optional
        Needed for ``"mean"`` (see :func:`mean_head_activations`).

    Returns
    -------
    list of (str, callable)
    """
    if method not in ABLATION_METHODS:
        raise InputError(f"`method` {method!r} is not supported; accepted: {', '.join(ABLATION_METHODS)}",
                         parameters=("method",))
    if method == "mean":
        if means is None:
            raise InputError("mean ablation needs mean activations (mean_head_activations)")
        return mean_ablation_hooks(model, heads, means)
    return zero_ablation_hooks(model, heads, method)


def random_heads(n_layers: int, n_heads: int, count: int, seed: int,
                 exclude: Optional[Sequence[Head]] = None,
                 layer_matched_to: Optional[Sequence[Head]] = None) -> List[Head]:
    """Draw random heads without replacement, reproducibly.

    Parameters
    ----------
    n_layers, n_heads : int
        Model size.
    count : int
        Number of heads to draw. With ``layer_matched_to`` it must equal its length.
    seed : int
        Seed of ``numpy.random.default_rng``; the same seed gives the same heads.
    exclude : sequence of (layer, head), optional
        Heads never drawn (e.g. the ablated set; [LI24] drew without excluding it).
    layer_matched_to : sequence of (layer, head), optional
        Draw, in each layer, as many heads as this set has there (the
        layer-matched control of [CS24]).

    Returns
    -------
    list of (int, int)
        Sorted by layer, then head.

    Raises
    ------
    InputError
        If fewer than ``count`` heads (per layer, when matched) are available.
    """
    rng = np.random.default_rng(seed)
    allowed = ~heads_to_mask(list(exclude or []), n_layers, n_heads)
    if layer_matched_to is not None:
        matched = list(layer_matched_to)
        if count != len(matched):
            raise InputError(f"count {count} differs from the {len(matched)} heads it should be layer-matched to")
        per_layer = heads_to_mask(matched, n_layers, n_heads).sum(axis=1)
        drawn: List[Head] = []
        for layer in range(n_layers):  # loop over layers: one small draw each, not a hot path
            if per_layer[layer] == 0:
                continue
            candidates = np.flatnonzero(allowed[layer])
            if candidates.size < per_layer[layer]:
                raise InputError(f"layer {layer} has {candidates.size} heads left after exclusions; "
                                 f"cannot draw {per_layer[layer]} layer-matched random heads")
            picked = rng.choice(candidates, size=int(per_layer[layer]), replace=False)
            drawn.extend((layer, int(head)) for head in picked)
        return sorted(drawn)
    if count < 0:
        raise InputError(f"count must be >= 0, got {count}")
    candidates = np.flatnonzero(allowed.ravel())
    if candidates.size < count:
        raise InputError(f"only {candidates.size} heads are left after exclusions; cannot draw {count} random heads "
                         "(allow overlap with the ablated set, or ablate fewer heads)")
    picked = rng.choice(candidates, size=count, replace=False)
    return sorted((int(flat // n_heads), int(flat % n_heads)) for flat in picked)


@dataclass(frozen=True)
class RandomHeadSets:
    """Distinct random head sets, and how many were asked for and exist.

    Attributes
    ----------
    sets : tuple of tuple of (int, int)
        Pairwise distinct sets, each sorted by layer, then head, in the order drawn.
    seeds : tuple of int
        The seed that drew each set (a seed whose draw repeated an earlier set is skipped).
    n_requested : int
    n_possible : int
        How many distinct sets exist under the constraints (exact, may be huge).
    """

    sets: Tuple[Tuple[Head, ...], ...]
    seeds: Tuple[int, ...]
    n_requested: int
    n_possible: int

    @property
    def exhausted(self) -> bool:
        """True when fewer distinct sets exist than were asked for (every one of them is used)."""
        return len(self.sets) < self.n_requested


def count_random_head_sets(n_layers: int, n_heads: int, count: int, exclude: Optional[Sequence[Head]] = None,
                           layer_matched_to: Optional[Sequence[Head]] = None) -> int:
    """Number of distinct head sets :func:`random_heads` can draw with these arguments.

    ``C(available, count)``; layer-matched, the product over layers of ``C(available in the layer,
    heads of the matched set in the layer)``. 0 when too few heads are available.
    """
    allowed = ~heads_to_mask(list(exclude or []), n_layers, n_heads)
    if layer_matched_to is None:
        return math.comb(int(allowed.sum()), count) if count >= 0 else 0
    per_layer = heads_to_mask(list(layer_matched_to), n_layers, n_heads).sum(axis=1)
    return math.prod(math.comb(int(available), int(k)) for available, k in zip(allowed.sum(axis=1), per_layer))


def draw_random_head_sets(n_layers: int, n_heads: int, count: int, n_sets: int, seed: int,
                          exclude: Optional[Sequence[Head]] = None,
                          layer_matched_to: Optional[Sequence[Head]] = None) -> RandomHeadSets:
    """Up to ``n_sets`` pairwise distinct random head sets: the controls of [LI24] Fig 8 and [CS24].

    Set ``k`` is :func:`random_heads` with the next seed of ``seed, seed + 1, ... whose draw
    differs from every set drawn before (a repeated draw is skipped, never counted twice: the
    same heads ablated again add no new data). When fewer than ``n_sets`` distinct sets exist
    (e.g. a layer-matched draw of 2 heads from a 4-head layer holding the 2 ablated heads: one
    set), all of them are returned and ``exhausted`` is True; the caller says so.

    Parameters
    ----------
    n_layers, n_heads : int
        Model size.
    count : int
        Heads per set (the length of ``layer_matched_to`` when given).
    n_sets : int
        Sets wanted, >= 1.
    seed : int
        First seed; with no repeated draw, set ``k`` uses ``seed + k``.
    exclude, layer_matched_to : sequence of (layer, head), optional
        As in :func:`random_heads`.

    Returns
    -------
    RandomHeadSets

    Raises
    ------
    InputError
        ``n_sets < 1``; too few heads for even one set (as :func:`random_heads`); or, with odds
        below ``e^-64`` per run, the draws did not find every set that exists within their budget.
    """
    if n_sets < 1:
        raise InputError(f"the number of random head sets must be >= 1, got {n_sets}")
    n_possible = count_random_head_sets(n_layers, n_heads, count, exclude, layer_matched_to)
    target = min(n_sets, n_possible)
    if target == 0:  # random_heads raises the informative error (too few heads left)
        random_heads(n_layers, n_heads, count, seed, exclude=exclude, layer_matched_to=layer_matched_to)
    # Every draw is uniform over the possible sets, so collecting all N of them takes about N ln N
    # draws; this budget fails with probability below N exp(-64) (coupon collector's tail bound).
    budget = 64 * target + 1024
    sets: List[Tuple[Head, ...]] = []
    seeds: List[int] = []
    seen = set()
    for offset in range(budget):  # loop over draws: each is one tiny rng call, not a hot path
        drawn = tuple(random_heads(n_layers, n_heads, count, seed + offset, exclude=exclude,
                                   layer_matched_to=layer_matched_to))
        if drawn in seen:
            continue
        seen.add(drawn)
        sets.append(drawn)
        seeds.append(seed + offset)
        if len(sets) == target:
            return RandomHeadSets(tuple(sets), tuple(seeds), n_requested=n_sets, n_possible=n_possible)
    raise InputError(f"{budget} random draws found only {len(sets)} of the {n_possible} distinct head sets; "
                     "ask for fewer random sets")
