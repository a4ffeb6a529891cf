"""The head-score dict in [LI24]'s file format, plus our extra keys.

The authors' files (``../shared/official/README.md``) are joblib pickles of a dict:

==========================  ===================  =================================================
key                         type, shape          content
==========================  ===================  =================================================
``head_scores``             torch float32 [L,H]  induction-head matching score
``copying_score``           ndarray [L,H]        OV-circuit eigenvalue copying score
``CRP_scores``              ndarray [L,H,16]     mean pre-softmax attention at lags -8..+7
``CRP_scores_sem``          ndarray [L,H,16]     its SEM across queries
``labels``                  ndarray str [L,H]    ``"L{l}H{h}"``
``sort_ind``                ndarray int64 [L,H]  per layer, heads by descending matching score
``sorted_<key>``            as ``<key>``         ``<key>`` permuted by ``sort_ind`` within layers
==========================  ===================  =================================================

Our extra keys: ``CRP_prob_scores`` / ``CRP_prob_scores_sem`` (softmax attention by lag),
``prefix_matching_score`` [L,H], ``CRP_lags`` [16], the token ids of both prompt sets
(``prompts`` [n_prompts, pos], ``prefix_prompts`` [n_prefix, pos]; int64) and ``metadata`` (a dict).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

from icl_cmr.config import ATTN_CRP_LAGS
from icl_cmr.errors import InputError

#: Keys of the authors' files, in their order.
AUTHOR_KEYS = ("head_scores", "sorted_head_scores", "CRP_scores", "sorted_CRP_scores", "CRP_scores_sem",
               "sorted_CRP_scores_sem", "copying_score", "sorted_copying_score", "labels", "sorted_labels",
               "sort_ind")

#: Our additions.
EXTRA_KEYS = ("CRP_prob_scores", "CRP_prob_scores_sem", "prefix_matching_score", "CRP_lags", "prompts",
              "prefix_prompts", "metadata")


def head_labels(n_layers: int, n_heads: int) -> np.ndarray:
    """``"L{l}H{h}"`` for every head; ndarray of str, shape [layer, head]."""
    return np.array([[f"L{layer}H{head}" for head in range(n_heads)] for layer in range(n_layers)])


def sort_heads_by_score(scores: np.ndarray) -> np.ndarray:
    """Per layer, head indices by descending score (stable; NaN last).

    Parameters
    ----------
    scores : ndarray, shape [layer, head]

    Returns
    -------
    ndarray, shape [layer, head], int64
    """
    scores = np.asarray(scores, dtype=np.float64)
    return np.argsort(-scores, axis=1, kind="stable").astype(np.int64)


def _sorted(values: np.ndarray, sort_ind: np.ndarray) -> np.ndarray:
    index = sort_ind if values.ndim == 2 else sort_ind[..., None]
    return np.take_along_axis(values, index, axis=1)


def assemble_score_dict(matching_score: np.ndarray, copying_score: np.ndarray, crp_scores: np.ndarray,
                        crp_scores_sem: np.ndarray, crp_prob_scores: np.ndarray, crp_prob_scores_sem: np.ndarray,
                        prefix_matching_score: np.ndarray, metadata: Optional[Mapping[str, Any]] = None,
                        lags: np.ndarray = ATTN_CRP_LAGS, prompts: Optional[np.ndarray] = None,
                        prefix_prompts: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """The authors' dict (same keys, types and shapes) with our extra keys.

    Parameters
    ----------
    matching_score, copying_score, prefix_matching_score : ndarray, shape [layer, head]
    crp_scores, crp_scores_sem, crp_prob_scores, crp_prob_scores_sem : ndarray, shape [layer, head, n_lags]
    metadata : mapping, optional
    lags : ndarray, shape [n_lags]
    prompts, prefix_prompts : ndarray, shape [n, pos], optional
        Token ids of the two prompt sets (stored as int64; omitted when None).

    Returns
    -------
    dict
        ``head_scores`` is a torch float32 tensor as in the authors' files; the rest are
        numpy arrays (float64, ``sorted_head_scores`` float32 like theirs).
    """
    import torch  # heavy; only writing a score file needs it (the authors stored head_scores as a tensor)

    matching = np.asarray(matching_score, dtype=np.float32)
    n_layers, n_heads = matching.shape
    per_head = {"copying_score": copying_score, "prefix_matching_score": prefix_matching_score}
    per_lag = {"CRP_scores": crp_scores, "CRP_scores_sem": crp_scores_sem, "CRP_prob_scores": crp_prob_scores,
               "CRP_prob_scores_sem": crp_prob_scores_sem}
    arrays: Dict[str, np.ndarray] = {}
    for key, value in per_head.items():
        arrays[key] = np.asarray(value, dtype=np.float64)
        if arrays[key].shape != (n_layers, n_heads):
            raise InputError(f"{key} has shape {arrays[key].shape}, expected {(n_layers, n_heads)}")
    for key, value in per_lag.items():
        arrays[key] = np.asarray(value, dtype=np.float64)
        if arrays[key].shape != (n_layers, n_heads, len(lags)):
            raise InputError(f"{key} has shape {arrays[key].shape}, expected {(n_layers, n_heads, len(lags))}")
    labels = head_labels(n_layers, n_heads)
    sort_ind = sort_heads_by_score(matching)
    result: Dict[str, Any] = {
        "head_scores": torch.from_numpy(matching.copy()),
        "sorted_head_scores": _sorted(matching, sort_ind),
        "CRP_scores": arrays["CRP_scores"],
        "sorted_CRP_scores": _sorted(arrays["CRP_scores"], sort_ind),
        "CRP_scores_sem": arrays["CRP_scores_sem"],
        "sorted_CRP_scores_sem": _sorted(arrays["CRP_scores_sem"], sort_ind),
        "copying_score": arrays["copying_score"],
        "sorted_copying_score": _sorted(arrays["copying_score"], sort_ind),
        "labels": labels,
        "sorted_labels": _sorted(labels, sort_ind),
        "sort_ind": sort_ind,
        "CRP_prob_scores": arrays["CRP_prob_scores"],
        "CRP_prob_scores_sem": arrays["CRP_prob_scores_sem"],
        "prefix_matching_score": arrays["prefix_matching_score"],
        "CRP_lags": np.asarray(lags, dtype=np.int64),
    }
    for key, value in (("prompts", prompts), ("prefix_prompts", prefix_prompts)):
        if value is not None:
            result[key] = np.asarray(value, dtype=np.int64)
    result["metadata"] = plain_metadata(dict(metadata or {}))
    return result


def plain_metadata(value: Any) -> Any:
    """``value`` with only builtin types (dict, list, str, int, float, bool, None).

    Subclasses of builtins (``torch.torch_version.TorchVersion`` is a ``str``) and numpy
    scalars would otherwise pickle as globals that the restricted loader refuses.
    """
    if isinstance(value, Mapping):
        return {str(k): plain_metadata(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_metadata(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain_metadata(value.tolist())
    if value is None or type(value) in (bool, int, float, str):
        return value
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def score_file_name(model_name: str, checkpoint_index: Optional[int] = None) -> str:
    """``all_scores_<model>[_cp<K>].pkl`` (the authors' naming for GPT-2 and Pythia-70m)."""
    suffix = f"_cp{checkpoint_index}" if checkpoint_index is not None else ""
    return f"all_scores_{model_name}{suffix}.pkl"


def default_score_path(model_name: str, checkpoint_index: Optional[int] = None,
                       root: "str | Path" = "saved_scores") -> Path:
    """``<root>/<model>/all_scores_<model>[_cp<K>].pkl``."""
    return Path(root) / model_name / score_file_name(model_name, checkpoint_index)
