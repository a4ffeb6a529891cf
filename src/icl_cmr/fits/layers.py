"""Statistics of fitted heads by layer, and top-N head selection (DESIGN.md sections 4-5).

* :func:`percent_below_threshold`: % of a layer's heads with CMR distance below a threshold
  ("CMR-like"), plotted against :func:`relative_layer_position` ([LI24] Fig 6).
* :func:`summarize_by_layer`: mean / min / max of fitted parameters or 1/tau over a layer's heads
  selected by a mask (the authors mask by D < 0.5, at the final checkpoint for Fig 7).
* :func:`select_top_heads`: top-N heads pooled over several models, lowest D or highest matching
  score; NaN is never picked and every head keeps its own model's (layer, head) index.
* :func:`gather_selected`: the selected heads' values from per-model arrays (e.g. over training).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Tuple

import numpy as np

from icl_cmr.cmr.literature import literature_points
from icl_cmr.errors import InputError

#: Human CMR fits (beta_enc, beta_rec) shown beside the heads' fits in [LI24] Fig 7, as the paper draws them:
#: standard CMR's rates (normalised context update), NOT on the scale of [LI24]'s model. Sources, scales and the
#: values on [LI24]'s scale: :mod:`icl_cmr.cmr.literature` (``literature_points("li24")``, ``literature_ranges()``).
HUMAN_FITS: Dict[str, Tuple[float, float]] = literature_points("published", decimals=3)

#: Top-N sizes of [LI24] Fig 7c-f.
DEFAULT_TOP_N = (20, 50, 100, 200)


def relative_layer_position(n_layers: int) -> np.ndarray:
    """Relative position of each layer in percent, ``l / n_layers * 100`` ([LI24] Fig 6).

    Returns
    -------
    ndarray, shape [n_layers]
    """
    if n_layers < 1:
        raise InputError(f"`n_layers` must be >= 1, got {n_layers}", parameters=("n_layers",))
    return np.arange(n_layers) / n_layers * 100.0


def percent_below_threshold(distance: np.ndarray, threshold: float) -> np.ndarray:
    """Percent of each layer's heads whose CMR distance is below ``threshold``.

    Parameters
    ----------
    distance : ndarray, shape [..., L, H]
        CMR distances; NaN heads (no fit, or padding) are left out of the count.
    threshold : float

    Returns
    -------
    ndarray, shape [..., L]
        NaN for a layer without any finite distance.
    """
    distance = np.asarray(distance, dtype=float)
    finite = np.isfinite(distance)
    n_finite = finite.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        below = (np.where(finite, distance, np.inf) < threshold).sum(axis=-1)
        return np.where(n_finite > 0, below / n_finite * 100.0, np.nan)


@dataclass(frozen=True)
class LayerSummary:
    """Mean, minimum and maximum of a per-head quantity over the selected heads of each layer.

    Attributes
    ----------
    mean, minimum, maximum : ndarray, shape [..., L, *rest]
        NaN for a layer without selected heads.
    count : ndarray of int, shape [..., L, *rest]
        Number of selected heads with finite values.
    """

    mean: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    count: np.ndarray


def summarize_by_layer(values: np.ndarray, mask: np.ndarray, n_trailing: int = 0) -> LayerSummary:
    """Summarise ``values`` over the heads of each layer where ``mask`` holds.

    Parameters
    ----------
    values : ndarray, shape [..., L, H, *rest]
        Per-head values: e.g. 1/tau [L, H], or fitted parameters [T, L, H, 3].
    mask : ndarray of bool, broadcastable to [..., L, H]
        Heads to include (e.g. ``distance < 0.5``; for Fig 7 the final checkpoint's mask,
        shape [L, H], applied to every checkpoint). Non-finite values are left out too.
    n_trailing : int
        Number of axes after the head axis (``len(rest)``; 1 for parameters).

    Returns
    -------
    LayerSummary
        ``mean``/``minimum``/``maximum`` of shape [..., L, *rest]; ``count`` of shape [..., L, *rest].
    """
    values = np.asarray(values, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    head_axis = values.ndim - 1 - n_trailing
    if head_axis < 1:
        raise InputError(f"`values` of shape {values.shape} have no [layer, head] axes before {n_trailing} trailing axes",
                         parameters=("values", "n_trailing"))
    full_mask = mask.reshape(mask.shape + (1,) * n_trailing)
    try:
        full_mask = np.broadcast_to(full_mask, values.shape) & np.isfinite(values)
    except ValueError:
        raise InputError(f"`mask` of shape {mask.shape} does not match `values` of shape {values.shape}",
                         parameters=("mask", "values")) from None
    count = full_mask.sum(axis=head_axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(full_mask, values, 0.0).sum(axis=head_axis) / count
        minimum = np.where(full_mask, values, np.inf).min(axis=head_axis)
        maximum = np.where(full_mask, values, -np.inf).max(axis=head_axis)
    empty = count == 0
    return LayerSummary(mean=np.where(empty, np.nan, mean), minimum=np.where(empty, np.nan, minimum),
                        maximum=np.where(empty, np.nan, maximum), count=count)


@dataclass(frozen=True)
class HeadSelection:
    """Heads selected from a pool of models, best first.

    Attributes
    ----------
    model : ndarray of str, shape [n]
        Model of each selected head.
    layer, head : ndarray of int, shape [n]
        Index of the head within its own model.
    value : ndarray, shape [n]
        The criterion's value (D, or matching score).
    criterion : str
        ``"lowest cmr_distance"`` or ``"highest matching_score"``, for labels.
    n_requested : int
        N asked for; ``len(model)`` is smaller when fewer finite values exist.
    """

    model: np.ndarray
    layer: np.ndarray
    head: np.ndarray
    value: np.ndarray
    criterion: str
    n_requested: int

    def __len__(self) -> int:
        return int(self.model.size)

    @property
    def labels(self) -> np.ndarray:
        """``"<model>-L{layer}H{head}"`` per selected head (the authors' label format)."""
        return np.array([f"{m}-L{l}H{h}" for m, l, h in zip(self.model, self.layer, self.head)])

    def by_model(self) -> Dict[str, list]:
        """``{model: ["L{l}H{h}", ...]}``, the authors' ``selection`` dict."""
        out: Dict[str, list] = {}
        for m, l, h in zip(self.model, self.layer, self.head):
            out.setdefault(str(m), []).append(f"L{l}H{h}")
        return out


def select_top_heads(values: Mapping[str, np.ndarray], n: int, largest: bool,
                     criterion: str = "") -> HeadSelection:
    """Top-``n`` heads pooled over models by a per-head criterion; NaN is never picked.

    Parameters
    ----------
    values : mapping of str to ndarray, each shape [L_m, H_m]
        Per-model criterion (CMR distance, or matching score). Models may differ in shape.
    n : int
        Number of heads wanted (fewer are returned when fewer finite values exist).
    largest : bool
        True: highest values first (induction heads); False: lowest first (CMR-like heads).
    criterion : str
        Name stored in the selection.

    Returns
    -------
    HeadSelection
        Best first; ties keep pool order (models in the given order, layer-major heads).
    """
    if n < 1:
        raise InputError(f"`n` must be >= 1, got {n}", parameters=("n",))
    if not values:
        raise InputError("no models to select heads from")
    models, layers, heads, pooled = [], [], [], []
    for model, array in values.items():
        array = np.asarray(array, dtype=float)
        if array.ndim != 2:
            raise InputError(f"`values` of model {model!r} must be [n_layers, n_heads], got shape {array.shape}",
                             parameters=("values",))
        layer_index, head_index = np.unravel_index(np.arange(array.size), array.shape)
        models.append(np.full(array.size, model, dtype=object))
        layers.append(layer_index)
        heads.append(head_index)
        pooled.append(array.ravel())
    pooled_values = np.concatenate(pooled)
    finite = np.isfinite(pooled_values)
    key = np.where(finite, -pooled_values if largest else pooled_values, np.inf)
    order = np.argsort(key, kind="stable")[: min(n, int(finite.sum()))]
    name = criterion or ("highest value" if largest else "lowest value")
    return HeadSelection(model=np.concatenate(models)[order].astype(str), layer=np.concatenate(layers)[order],
                         head=np.concatenate(heads)[order], value=pooled_values[order],
                         criterion=name, n_requested=int(n))


def gather_selected(selection: HeadSelection, per_model: Mapping[str, np.ndarray]) -> np.ndarray:
    """Values of the selected heads, each read from its own model's array.

    Parameters
    ----------
    selection : HeadSelection
    per_model : mapping of str to ndarray, each shape [T, L_m, H_m, *rest]
        E.g. CMR distance over T checkpoints ([T, L, H]) or fitted parameters ([T, L, H, 3]).
        ``T`` and ``rest`` must agree across models.

    Returns
    -------
    ndarray, shape [n, T, *rest]
        Row i belongs to selected head i (n = 0 for an empty selection).

    Raises
    ------
    InputError
        If a selected model has no values, or ``per_model`` is empty.
    """
    missing = sorted(set(selection.model) - set(per_model))
    if missing:
        raise InputError(f"no values for selected models {missing}")
    if not per_model:
        raise InputError("no per-model values to gather the selected heads from")
    first = np.asarray(next(iter(per_model.values())))
    out = np.full((len(selection), first.shape[0]) + first.shape[3:], np.nan)
    # One fancy-indexing gather per model (a handful of models), not per head.
    for model, array in per_model.items():
        rows = np.flatnonzero(selection.model == model)
        if rows.size:
            array = np.asarray(array, dtype=float)
            out[rows] = np.moveaxis(array[:, selection.layer[rows], selection.head[rows]], 1, 0)
    return out


def authors_sorted_position_mask(distance: np.ndarray, matching: np.ndarray, threshold: float) -> np.ndarray:
    """Heads the authors' ``attn_over_time.py`` averages at each checkpoint for [LI24] Fig 7b / S2.

    Their script fits each checkpoint's ``sorted_CRP_scores`` (each layer's heads sorted by that
    checkpoint's matching score, descending), then applies the final checkpoint's mask
    ``D < threshold`` **by position in that sorted order** to every checkpoint. At an earlier
    checkpoint the sorted positions belong to other heads whenever the ranking changed, so the
    published curves average different heads at different checkpoints. This reproduces that
    selection, in head order, so the published panel can be compared with the intended one
    (the final mask applied to the same heads throughout, ``distance[-1] < threshold``).

    Parameters
    ----------
    distance : ndarray, shape [T, L, H]
        CMR distance per checkpoint, in head order.
    matching : ndarray, shape [T, L, H]
        Matching score per checkpoint; NaN sorts last (a stable sort, as the authors' per-layer order).
    threshold : float

    Returns
    -------
    ndarray of bool, shape [T, L, H]
        True for the heads the published panel averages at checkpoint t.
    """
    distance = np.asarray(distance, dtype=float)
    matching = np.asarray(matching, dtype=float)
    if distance.ndim != 3 or distance.shape != matching.shape:
        raise InputError(f"`distance` and `matching` must both be [T, L, H], got {distance.shape} and {matching.shape}",
                         parameters=("distance", "matching"))
    order = np.argsort(-np.nan_to_num(matching, nan=-np.inf), axis=-1, kind="stable")        # [T, L, H]
    final_sorted_mask = np.take_along_axis(distance[-1], order[-1], axis=-1) < threshold      # [L, H] by position
    mask = np.zeros(distance.shape, dtype=bool)
    # Position j at checkpoint t holds head order[t, l, j]; it is included when position j is in the final mask.
    np.put_along_axis(mask, order, np.broadcast_to(final_sorted_mask, distance.shape), axis=-1)
    return mask
