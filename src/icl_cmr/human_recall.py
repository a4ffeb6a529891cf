"""Human free-recall lag-CRP from ``psifr``'s bundled data (DESIGN.md section 8, [LI24] Fig 4a).

What this computes is the **conditional lag-CRP** of the free-recall literature: for each lag,
transitions actually made at that lag divided by transitions that were possible at that lag
(items not yet recalled), per subject, then averaged over subjects. It is *not* the quantity the
CMR grid holds: the paper's CMR "CRP" (:mod:`icl_cmr.fitting`) is a normalised histogram of the
lags between consecutive draws, repeats allowed. Figures label the two accordingly.

Datasets bundled with psifr 0.10: ``"peers_notask"`` (PEERS, 126 subjects, the default: its
curve is the paper's asymmetric contiguity, lag +1 above lag -1) and ``"Morton2013"`` (40
subjects; mixed and pure category lists).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import InputError

#: psifr's bundled studies (``psifr.fr.sample_data``).
HUMAN_DATASETS = ("peers_notask", "Morton2013")
DEFAULT_HUMAN_DATASET = "peers_notask"


@dataclass(frozen=True)
class HumanLagCrp:
    """Conditional lag-CRP averaged over subjects.

    Attributes
    ----------
    lags : ndarray of int, shape [K]
        -max_lag..+max_lag (lag 0 is NaN: it is never a transition).
    mean : ndarray, shape [K]
        Mean over subjects of each subject's conditional lag-CRP.
    sem : ndarray, shape [K]
        Standard error over subjects (ddof 1).
    n_subjects : int
    dataset : str
    """

    lags: np.ndarray
    mean: np.ndarray
    sem: np.ndarray
    n_subjects: int
    dataset: str


def load_recall_data(dataset: str = DEFAULT_HUMAN_DATASET) -> pd.DataFrame:
    """Study and recall events of one of psifr's bundled studies, merged by ``fr.merge_free_recall``.

    Parameters
    ----------
    dataset : str
        One of :data:`HUMAN_DATASETS`.

    Returns
    -------
    pandas.DataFrame
        psifr's merged table (one row per studied or recalled item).
    """
    if dataset not in HUMAN_DATASETS:
        raise InputError(f"dataset must be one of {list(HUMAN_DATASETS)}, got {dataset!r}")
    from psifr import fr

    return fr.merge_free_recall(fr.sample_data(dataset))


def conditional_lag_crp(merged: pd.DataFrame, max_lag: int = 5, dataset: str = "") -> HumanLagCrp:
    """Conditional lag-CRP per subject (``psifr.fr.lag_crp``), then mean and SEM over subjects.

    Parameters
    ----------
    merged : pandas.DataFrame
        A table from ``psifr.fr.merge_free_recall``.
    max_lag : int
        Largest |lag| kept.
    dataset : str
        Name stored in the result.

    Returns
    -------
    HumanLagCrp
    """
    if max_lag < 1:
        raise InputError(f"max_lag must be >= 1, got {max_lag}")
    from psifr import fr

    per_subject = fr.lag_crp(merged)  # columns: subject, lag, prob, actual, possible
    table = per_subject.reset_index().pivot_table(index="subject", columns="lag", values="prob", dropna=False)
    lags = np.arange(-max_lag, max_lag + 1)
    table = table.reindex(columns=lags.astype(float))
    values = table.to_numpy(dtype=float)                           # [subjects, K]
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, values, 0.0).sum(axis=0) / counts             # NaN where no subject
        deviation = np.where(finite, values - mean, 0.0)
        sem = np.sqrt((deviation ** 2).sum(axis=0) / (counts - 1) / counts)
    mean = np.where(counts > 0, mean, np.nan)
    sem = np.where(counts > 1, sem, np.nan)
    return HumanLagCrp(lags=lags, mean=mean, sem=sem, n_subjects=int(table.shape[0]), dataset=dataset)
