"""Human free-recall lag-CRP from ``psifr``'s bundled data (DESIGN.md section 8, [LI24] Fig 4a).

What this computes is the **conditional lag-CRP** of the free-recall literature: for each lag,
transitions actually made at that lag divided by transitions that were possible at that lag
(items not yet recalled), per subject, then averaged over subjects. It is *not* the quantity the
CMR grid holds: the paper's CMR "CRP" (:mod:`icl_cmr.fits.distance`) is a normalised histogram of the
lags between consecutive draws, repeats allowed. Figures label the two accordingly.

Datasets bundled with psifr 0.10: ``"peers_notask"`` (PEERS, 126 subjects x 28 lists of 16 words
in 7 sessions, the default: its curve is the paper's asymmetric contiguity, lag +1 above lag -1)
and ``"Morton2013"`` (40 subjects x 48 lists of 24 items in 3 sessions; mixed and pure category
lists). The command line calls them ``peers`` and ``morton2013`` (:func:`resolve_dataset`).

psifr's rules, which every function here follows (``psifr.maskers.transitions_masker``): a
transition from recall ``m`` to recall ``m + 1`` counts only when both are studied items recalled
for the first time; repeats and intrusions are neither a "from" nor a "to" item and no transition
bridges them; the transitions possible are those to every studied item not yet recalled (the
"to" item included). :mod:`icl_cmr.cmr.conditional` applies the same rules to CMR's recalls.
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import pandas as pd

from icl_cmr.errors import InputError

#: psifr's bundled studies (``psifr.fr.sample_data``).
HUMAN_DATASETS = ("peers_notask", "Morton2013")
DEFAULT_HUMAN_DATASET = "peers_notask"

#: Command-line names of the datasets (issue 16), and psifr's own names, to psifr's names.
DATASET_NAMES = {"peers": "peers_notask", "morton2013": "Morton2013", "peers_notask": "peers_notask"}

#: What one lag-CRP is computed over (:func:`lag_crps_by_unit`).
RECALL_UNITS = ("subject", "session", "all")


def resolve_dataset(name: str) -> str:
    """psifr's name of a dataset given as ``peers``, ``morton2013`` or psifr's own name (any case)."""
    key = str(name).lower()
    if key not in DATASET_NAMES:
        raise InputError(f"`dataset` must be one of peers, morton2013 (or psifr's names {', '.join(HUMAN_DATASETS)}), "
                         f"got {name!r}", parameters=("dataset",))
    return DATASET_NAMES[key]


@dataclass(frozen=True)
class UnitLagCrps:
    """Conditional lag-CRP of each unit (a subject, a subject's session, or everyone pooled).

    Attributes
    ----------
    units : pandas.DataFrame
        One row per unit, in the order of the arrays: ``subject`` (``"all"`` when pooled), ``session``
        (with ``by="session"``), ``n_lists``, ``n_transitions`` (counted transitions at any lag).
    lags : ndarray of int, shape [K]
        ``-max_lag .. max_lag``.
    actual, possible : ndarray of int, shape [U, K]
        Transitions made and possible at each lag, summed over the unit's lists (psifr's counts).
    prob : ndarray, shape [U, K]
        ``actual / possible``; NaN where nothing was possible (always at lag 0).
    dataset : str
    by : str
        ``"subject"``, ``"session"`` or ``"all"``.
    """

    units: pd.DataFrame
    lags: np.ndarray
    actual: np.ndarray
    possible: np.ndarray
    prob: np.ndarray
    dataset: str
    by: str

    @property
    def labels(self) -> np.ndarray:
        """A printable name per unit, shape [U]: ``"63"``, ``"63/s2"`` or ``"all"``."""
        if self.by == "session":
            return np.array([f"{s}/s{t}" for s, t in zip(self.units["subject"], self.units["session"])])
        return self.units["subject"].astype(str).to_numpy()


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
        psifr's merged table (one row per studied or recalled item), with the list's ``session``.
    """
    if dataset not in HUMAN_DATASETS:
        raise InputError(f"`dataset` must be one of {list(HUMAN_DATASETS)}, got {dataset!r}", parameters=("dataset",))
    from psifr import fr  # optional dependency, needed only to read the human data

    raw = fr.sample_data(dataset)
    return fr.merge_free_recall(raw, list_keys=[key for key in ("session",) if key in raw.columns])


def lag_crps_by_unit(merged: pd.DataFrame, by: str = "subject", max_lag: int = 8,
                     dataset: str = "") -> UnitLagCrps:
    """Conditional lag-CRP of each subject, each (subject, session), or of all lists pooled (``psifr.fr.lag_crp``).

    Parameters
    ----------
    merged : pandas.DataFrame
        A table from ``psifr.fr.merge_free_recall`` (with a ``session`` column for ``by="session"``).
    by : {"subject", "session", "all"}
        ``"all"`` pools every list of every subject as one unit (psifr's counts summed, the way a
        CMR grid point pools its simulated trials).
    max_lag : int
        Largest |lag| kept.
    dataset : str
        Name stored in the result.

    Returns
    -------
    UnitLagCrps
    """
    if by not in RECALL_UNITS:
        raise InputError(f"`by` must be one of {', '.join(RECALL_UNITS)}, got {by!r}", parameters=("by",))
    if max_lag < 1:
        raise InputError(f"`max_lag` must be >= 1, got {max_lag}", parameters=("max_lag",))
    from psifr import fr  # optional dependency, needed only to read the human data

    keys = ["subject", "session"] if by == "session" else ["subject"]
    if by == "session" and "session" not in merged.columns:
        raise InputError("`by`='session' needs a 'session' column in `merged`", parameters=("by", "merged"))
    groups = merged.groupby(keys, sort=True)
    units = groups["list"].nunique().rename("n_lists").reset_index()
    # psifr groups by its 'subject' column: give it the unit's number (the row of `units`).
    counts = fr.lag_crp(merged.assign(subject=groups.ngroup())).reset_index()
    lags = np.arange(-max_lag, max_lag + 1)
    grids = {name: counts.pivot_table(index="subject", columns="lag", values=name, aggfunc="sum")
             .reindex(index=np.arange(len(units)), columns=lags.astype(float)).fillna(0).to_numpy(dtype=np.int64)
             for name in ("actual", "possible")}
    transitions = counts.groupby("subject")["actual"].sum().reindex(np.arange(len(units))).fillna(0)
    units = units.assign(n_transitions=transitions.to_numpy(dtype=np.int64))
    actual, possible = grids["actual"], grids["possible"]
    if by == "all":
        units = pd.DataFrame({"subject": ["all"], "n_lists": [int(units["n_lists"].sum())],
                              "n_transitions": [int(units["n_transitions"].sum())]})
        actual, possible = actual.sum(axis=0, keepdims=True), possible.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        prob = np.where(possible > 0, actual / np.maximum(possible, 1), np.nan)
    return UnitLagCrps(units=units, lags=lags, actual=actual, possible=possible, prob=prob, dataset=dataset, by=by)


def simulated_recall_table(draws: np.ndarray, start_positions: np.ndarray, n_items: int,
                           subject: int = 1) -> pd.DataFrame:
    """Simulated CMR recalls as one subject's free-recall data in psifr's raw format.

    Each trial is a list of ``n_items`` studied items (serial positions 1..n_items); its recalls are
    the start item ``s0`` (the first recall, see :mod:`icl_cmr.cmr.conditional`) followed by the
    drawn items, repeats included.

    Parameters
    ----------
    draws : np.ndarray, shape [n_start, n_trials, max_draws], int
        From :func:`icl_cmr.cmr.model.simulate_recall` (``-1`` after a trial stopped).
    start_positions : np.ndarray, shape [n_start]
    n_items : int
    subject : int

    Returns
    -------
    pandas.DataFrame
        Columns ``subject, list, position, trial_type, item`` (``fr.merge_free_recall``'s input).
    """
    draws = np.asarray(draws)
    n_start, n_trials, _ = draws.shape
    rows = []
    for list_number, (start, trial) in enumerate(np.ndindex(n_start, n_trials), start=1):
        # Builds a test table, one row per event (psifr's format is a long table).
        recalls = [int(start_positions[start])] + [int(x) for x in draws[start, trial] if x >= 0]
        rows += [(subject, list_number, i + 1, "study", i + 1) for i in range(n_items)]
        rows += [(subject, list_number, m + 1, "recall", item + 1) for m, item in enumerate(recalls)]
    return pd.DataFrame(rows, columns=["subject", "list", "position", "trial_type", "item"])


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
    per_subject = lag_crps_by_unit(merged, "subject", max_lag, dataset)
    lags, values = per_subject.lags, per_subject.prob                  # [subjects, K]
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, values, 0.0).sum(axis=0) / counts             # NaN where no subject
        deviation = np.where(finite, values - mean, 0.0)
        sem = np.sqrt((deviation ** 2).sum(axis=0) / (counts - 1) / counts)
    mean = np.where(counts > 0, mean, np.nan)
    sem = np.where(counts > 1, sem, np.nan)
    return HumanLagCrp(lags=lags, mean=mean, sem=sem, n_subjects=int(values.shape[0]), dataset=dataset)
