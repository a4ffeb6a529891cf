"""The analyses behind [LI24] Fig 5-7 on fitted heads: per-layer tables and top-N selections.

Arrays and fits in, tables and records out; nothing here reads or writes a file (the runs over
saved score files are :mod:`icl_cmr.experiments.fits`). DESIGN.md sections 4-5.

* :func:`head_table`, :func:`layer_table`, :func:`over_training_table`: tidy tables (pandas).
* :func:`make_selections`, :func:`selection_record`, :func:`final_values_only`, :func:`record_matrix`,
  :func:`mean_sem`: top-N CMR-like and induction heads, in the authors' record layout.
* :func:`check_top_sizes`: top-N sizes against the heads there are.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from icl_cmr.errors import InputError
from icl_cmr.fits.distance import CmrFit
from icl_cmr.fits.layers import (HeadSelection, gather_selected, percent_below_threshold, relative_layer_position,
                                 select_top_heads, summarize_by_layer)
from icl_cmr.heads.results import HeadScores

logger = logging.getLogger(__name__)

#: Pythia sizes of [LI24] Fig 6b-7 (the authors' ``attn_over_size.py`` / ``select_fit.py`` defaults).
PYTHIA_SIZES = ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
PYTHIA_MODELS = tuple(f"pythia-{size}" for size in PYTHIA_SIZES)

#: Models of [LI24] Fig 6c (the authors' ``attn_over_size_xtra.py`` / ``select_fit_xtra.py`` defaults).
XTRA_MODELS = ("qwen-7b", "mistral-7b", "llama3-8b")

#: Quantities drawn per selection: (name in the record, axis label).
QUANTITIES = (("MSE", "CMR distance D"), ("beta_enc", r"$\beta_{\rm enc}$"), ("beta_rec", r"$\beta_{\rm rec}$"),
              ("gamma_ft", r"$\gamma_{\rm FT}$"), ("scale_factors", r"$1/\tau$"), ("head_scores", "matching score"))

_PARAMETERS = ("beta_enc", "beta_rec", "gamma_ft")


# ----------------------------------------------------------------------------- checks and logs on fitted heads

def check_top_sizes(n_top: Sequence[int], head_counts: Mapping[str, int], pooled: bool = True) -> None:
    """Refuse top-N sizes larger than the heads there are (a "top500" set of 144 heads would be a
    mislabelled file).

    Parameters
    ----------
    n_top : sequence of int
        Requested set sizes.
    head_counts : mapping of str -> int
        Heads of each model (L * H), in the order the models were given.
    pooled : bool
        True: the sets are drawn from all models' heads together (``select_fit.py``); False: from each
        model's own heads (``select_fit_xtra.py``), so every model must have at least max(n_top).

    Raises
    ------
    InputError
        Naming the largest size (parameter ``n_top``) and the head counts.
    """
    largest = max(n_top)
    total = sum(head_counts.values())
    if pooled and largest > total:
        detail = ", ".join(f"{model} {count}" for model, count in head_counts.items())
        raise InputError(f"`n_top` {largest} is more than the {total} heads pooled over the models ({detail}); "
                         f"give sizes up to {total}", parameters=("n_top",))
    short = {model: count for model, count in head_counts.items() if count < largest}
    if not pooled and short:
        detail = ", ".join(f"{model} has {count}" for model, count in short.items())
        raise InputError(f"`n_top` {largest} is more than the heads of a model ({detail}); give sizes up to "
                         f"{min(short.values())} or leave that model out", parameters=("n_top",))


def log_cmr_like_counts(fits: Mapping[str, Tuple[HeadScores, CmrFit]], threshold: float) -> None:
    """Log, per model, how many heads have D < ``threshold``."""
    for model, (_, fit) in fits.items():
        logger.info("%s: %d of %d heads with D < %g", model, int((fit.distance < threshold).sum()),
                    fit.distance.size, threshold)


# ----------------------------------------------------------------------------- tables

def head_table(scores: HeadScores, fit: CmrFit, threshold: float, model: str):
    """Tidy table, one row per head (pandas DataFrame)."""
    layers, heads = np.meshgrid(np.arange(scores.n_layers), np.arange(scores.n_heads), indexing="ij")
    return pd.DataFrame({
        "model": model,
        "layer": layers.ravel(),
        "head": heads.ravel(),
        "label": scores.labels.ravel(),
        "matching_score": scores.matching_score.ravel(),
        "copying_score": scores.copying_score.ravel(),
        "cmr_distance": fit.distance.ravel(),
        "beta_enc": fit.params[..., 0].ravel(),
        "beta_rec": fit.params[..., 1].ravel(),
        "gamma_ft": fit.params[..., 2].ravel(),
        "inverse_temperature": fit.inverse_temperature.ravel(),
        "cmr_like": (fit.distance < threshold).ravel(),
    })


def layer_table(fits: Mapping[str, Tuple[HeadScores, CmrFit]], threshold: float, strict_threshold: float):
    """Per model and layer: % CMR-like (both thresholds) and mean params / 1/tau of CMR-like heads."""
    frames = []
    for model, (scores, fit) in fits.items():
        like = fit.distance < threshold
        params = summarize_by_layer(fit.params, like, n_trailing=1)
        inv = summarize_by_layer(fit.inverse_temperature, like)
        frames.append(pd.DataFrame({
            "model": model, "layer": np.arange(scores.n_layers), "n_layers": scores.n_layers,
            "relative_position": relative_layer_position(scores.n_layers),
            f"percent_D_below_{threshold}": percent_below_threshold(fit.distance, threshold),
            f"percent_D_below_{strict_threshold}": percent_below_threshold(fit.distance, strict_threshold),
            "n_cmr_like": inv.count,
            "mean_beta_enc": params.mean[:, 0], "mean_beta_rec": params.mean[:, 1], "mean_gamma_ft": params.mean[:, 2],
            "mean_inverse_temperature": inv.mean,
        }))
    return pd.concat(frames, ignore_index=True)


def over_training_table(fit: CmrFit, checkpoints: Sequence[int], steps: Sequence[int],
                        thresholds: Sequence[float]):
    """One row per (threshold, checkpoint, layer): % CMR-like and the means of the final-mask heads.

    The heads summarised at every checkpoint are those with D < threshold at the **last** checkpoint
    (the same heads throughout; [LI24] Fig 7b, S2 as intended).
    """
    n_layers = fit.distance.shape[1]
    rows = []
    for threshold in thresholds:
        percent = percent_below_threshold(fit.distance, threshold)              # [T, L]
        final_mask = fit.distance[-1] < threshold                               # [L, H]
        params = summarize_by_layer(fit.params, final_mask, n_trailing=1)       # [T, L, 3]
        inv = summarize_by_layer(fit.inverse_temperature, final_mask)           # [T, L]
        for i, (k, step) in enumerate(zip(checkpoints, steps)):
            rows.append(pd.DataFrame({
                "threshold": threshold, "checkpoint": k, "step": step, "layer": np.arange(n_layers),
                "percent_D_below": percent[i], "n_heads_in_final_mask": final_mask.sum(axis=1),
                "mean_beta_enc": params.mean[i, :, 0], "mean_beta_rec": params.mean[i, :, 1],
                "mean_gamma_ft": params.mean[i, :, 2], "mean_inverse_temperature": inv.mean[i]}))
    return pd.concat(rows, ignore_index=True)


# ----------------------------------------------------------------------------- top-N selections

def selection_record(selection: HeadSelection, per_model: Mapping[str, Mapping[str, np.ndarray]],
                     checkpoints: Sequence[Optional[int]]) -> dict:
    """One saved selection: final-checkpoint values (authors' keys) and the same over training."""
    over = {key: gather_selected(selection, {m: v[key] for m, v in per_model.items()})
            for key in ("MSE", "params", "scale_factors", "head_scores", "copy_scores")}   # [n, T(, 3)]
    return {
        "MSE": over["MSE"][:, -1], "params": over["params"][:, -1], "scale_factors": over["scale_factors"][:, -1],
        "head_scores": over["head_scores"][:, -1], "copy_scores": over["copy_scores"][:, -1],
        "labels": selection.labels, "selection": selection.by_model(),
        "selection_name": f"top {len(selection)}", "n_requested": selection.n_requested,
        "criterion": selection.criterion, "criterion_value": selection.value,
        "model": selection.model, "layer": selection.layer, "head": selection.head,
        "MSE_over_training": over["MSE"], "params_over_training": over["params"],
        "scale_factors_over_training": over["scale_factors"], "head_scores_over_training": over["head_scores"],
        "copy_scores_over_training": over["copy_scores"], "checkpoints": np.asarray(checkpoints),
    }


def make_selections(per_model: Mapping[str, Mapping[str, np.ndarray]], n_top: Sequence[int],
                    checkpoints: Sequence[Optional[int]]) -> Dict[str, Dict[str, dict]]:
    """Top-N CMR-like (lowest final D) and top-N induction heads (highest final matching score).

    Parameters
    ----------
    per_model : mapping of str -> dict
        Per model (:func:`icl_cmr.experiments.fits.fit_over_training`): ``MSE``, ``scale_factors``,
        ``head_scores``, ``copy_scores`` [T, L, H], ``params`` [T, L, H, 3], and ``files`` (the T score
        files, named in messages); the last of the T checkpoints is the one selected at.
    n_top : sequence of int
        Set sizes N.
    checkpoints : sequence of int or None
        The T checkpoint indices (``[None]``: the trained model only), stored in the records.

    Returns
    -------
    dict
        ``{"cmr": {"top20": record, ...}, "induction": {...}}`` (records: :func:`selection_record`).

    Raises
    ------
    InputError
        If no head of any model has a finite CMR distance (or matching score) at the final
        checkpoint, so that a selection would be empty.
    """
    final_distance = {m: v["MSE"][-1] for m, v in per_model.items()}
    final_matching = {m: v["head_scores"][-1] for m, v in per_model.items()}
    for criterion, values in (("CMR distance", final_distance), ("matching score", final_matching)):
        empty = [m for m, array in values.items() if not np.isfinite(array).any()]
        if len(empty) == len(values):
            others = " and the others" if len(empty) > 1 else ""
            raise InputError(f"nothing to select: no head of {', '.join(empty)} has a finite {criterion} at the final "
                             f"checkpoint ({per_model[empty[0]]['files'][-1]}{others})")
        for model in empty:
            logger.warning("%s: no head has a finite %s at the final checkpoint; it contributes no heads to the "
                           "top-N selections by that criterion", model, criterion)
    out: Dict[str, Dict[str, dict]] = {"cmr": {}, "induction": {}}
    for n in sorted(set(n_top)):
        cmr = select_top_heads(final_distance, n, largest=False, criterion="lowest cmr_distance")
        induction = select_top_heads(final_matching, n, largest=True, criterion="highest matching_score")
        for kind, selection in (("cmr", cmr), ("induction", induction)):
            if len(selection) < n:
                logger.warning("only %d heads with a finite %s for top %d", len(selection), selection.criterion, n)
            out[kind][f"top{n}"] = selection_record(selection, per_model, checkpoints)
    return out


#: Keys of a selection record that hold values over training (:func:`selection_record`).
OVER_TRAINING_KEYS = ("MSE_over_training", "params_over_training", "scale_factors_over_training",
                      "head_scores_over_training", "copy_scores_over_training", "checkpoints")


def final_values_only(selections: Mapping[str, Mapping[str, dict]]) -> Dict[str, Dict[str, dict]]:
    """The records of :func:`make_selections` without their over-training arrays (:data:`OVER_TRAINING_KEYS`),
    as saved for a model fitted at one checkpoint (``select_fit_xtra.py``)."""
    return {kind: {name: {key: value for key, value in record.items() if key not in OVER_TRAINING_KEYS}
                   for name, record in records.items()}
            for kind, records in selections.items()}


def mean_sem(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and SEM (ddof 1) over the first axis (heads), ignoring NaN; NaN where too few values."""
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, values, 0.0).sum(axis=0) / count
        deviation = np.where(finite, values - mean, 0.0)
        sem = np.sqrt((deviation ** 2).sum(axis=0) / (count - 1) / count)
    return np.where(count > 0, mean, np.nan), np.where(count > 1, sem, np.nan)


def record_matrix(record: Mapping[str, np.ndarray], over_training: bool) -> np.ndarray:
    """Quantities (:data:`QUANTITIES`) of a saved selection, shape [n, T, Q] (or [n, Q] for final values)."""
    suffix = "_over_training" if over_training else ""
    params = np.asarray(record["params" + suffix], dtype=float)
    columns = []
    for key, _ in QUANTITIES:
        if key in _PARAMETERS:
            columns.append(params[..., _PARAMETERS.index(key)])
        elif key + suffix in record:
            columns.append(np.asarray(record[key + suffix], dtype=float))
        else:  # the authors' CMR-like records have no matching scores
            columns.append(np.full(params.shape[:-1], np.nan))
    return np.stack(columns, axis=-1)


def finite_quantities(matrices: Sequence[np.ndarray]) -> List[int]:
    """Indices of the quantities (last axis) with at least one finite value in any matrix."""
    return [q for q in range(len(QUANTITIES)) if any(np.isfinite(m[..., q]).any() for m in matrices)]
