"""What a head-score file holds, as the fits and figures read it: :class:`HeadScores`.

The files themselves are read by :mod:`icl_cmr.files.scores`; the scores are computed by
:mod:`icl_cmr.heads.scores`. Pythia training checkpoints are named by their index K in
TransformerLens's list of the v0 checkpoints (:data:`icl_cmr.config.CHECKPOINT_INDICES`),
:func:`checkpoint_step` gives the training step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


def checkpoint_step(checkpoint: int) -> int:
    """Training step of Pythia v0 checkpoint index ``checkpoint``: 1000 (K + 1)."""
    return 1000 * (int(checkpoint) + 1)


@dataclass(frozen=True)
class HeadScores:
    """Head scores of one model (one checkpoint), in layer-major head order.

    Attributes
    ----------
    matching_score : ndarray, shape [L, H]
        Induction-head matching score (attention on lag +1), in [0, 1]; NaN for unscored heads.
    copying_score : ndarray, shape [L, H]
        Copying score in [-1, 1]; NaN where not computed.
    crp : ndarray, shape [L, H, n_lags]
        Attention CRP (pre-softmax scores) at lags ``lags`` (16 lags in every file so far).
    crp_sem : ndarray, shape [L, H, n_lags]
        Its standard error; NaN when the file has none.
    labels : ndarray of str, shape [L, H]
        ``"L{layer}H{head}"``.
    lags : ndarray of int, shape [n_lags]
        The file's ``CRP_lags`` when present, else -8..+7 (the authors' files); strictly increasing.
    path : str
        File read.
    prefix_matching_score : ndarray, shape [L, H], optional
        [CS24]'s prefix-matching score when the file has it (ours), else None.
    model : str, optional
        The model the file says it scored (``metadata["model"]``, ours); None for the authors' files.
    """

    matching_score: np.ndarray
    copying_score: np.ndarray
    crp: np.ndarray
    crp_sem: np.ndarray
    labels: np.ndarray
    lags: np.ndarray
    path: str = ""
    prefix_matching_score: Optional[np.ndarray] = None
    model: Optional[str] = None

    @property
    def n_layers(self) -> int:
        """Number of layers L."""
        return int(self.matching_score.shape[0])

    @property
    def n_heads(self) -> int:
        """Heads per layer H."""
        return int(self.matching_score.shape[1])

