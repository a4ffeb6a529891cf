"""People and attention heads in one CMR parameter space (issue 16).

A person's conditional lag-CRP (:mod:`icl_cmr.humans.recall`, psifr's definition) is fitted to the
conditional lag-CRP of CMR's own recalls (:mod:`icl_cmr.cmr.conditional`); a head's attention CRP
is fitted, as in [LI24], to the paper's CRP (a normalised lag histogram) of the same simulator.
Both fits use the same CMR distance and grid search (:func:`icl_cmr.fits.distance.fit_heads`, DESIGN.md
section 4) on the same parameter axes, so each person and each head gets a CMR distance D,
(beta_enc, beta_rec, gamma_ft) and a scale 1/tau.

What differs, by definition of the two quantities:

* **fitting lags**: heads use [LI24]'s -5..+5; people -5..-1, +1..+5 (:data:`~icl_cmr.config.HUMAN_FIT_LAGS`), since
  lag 0 is never a transition in a conditional lag-CRP;
* **1/tau** is not on a common scale: a head's is pre-softmax attention score per unit of CMR
  probability, a person's is probability per unit of CMR probability. It is reported, never
  compared (:data:`COMPARED_QUANTITIES`).

Statistics (scipy.stats): per quantity, CMR-like people against the CMR-like heads of each model
(D below the threshold, [LI24]'s 0.5): the difference of medians with a bootstrap confidence
interval (independent resampling of both groups) and the Mann-Whitney U test (two-sided), plus the
share of people with D below the threshold and its Wilson interval.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from icl_cmr.cmr.scales import li24_encoding_rate
from icl_cmr.config import FIT_LAGS, HUMAN_FIT_LAGS
from icl_cmr.errors import InputError
from icl_cmr.fits.distance import (OPTIONAL_SIMULATION_SETTINGS, PARAMETER_NAMES, SIMULATION_SETTINGS, CmrFit, CmrGrid, check_conditional_grid,
                                   cmr_distance, cmr_fit_patterns, fit_heads, select_lags)
from icl_cmr.fits.layers import HeadSelection, gather_selected, select_top_heads
from icl_cmr.heads.results import HeadScores
from icl_cmr.humans.recall import UnitLagCrps
from icl_cmr.stats import wilson_interval

logger = logging.getLogger(__name__)

#: Quantities compared between people and heads: D and the three CMR parameters (1/tau is not
#: on a common scale, see the module docstring).
COMPARED_QUANTITIES = ("cmr_distance",) + PARAMETER_NAMES

#: Default slack in D of :func:`near_best_ranges` (ours: a quarter of the median PEERS person's best D, 0.081).
NEAR_BEST_TOLERANCE = 0.02

@dataclass(frozen=True)
class GroupComparisonConfig:
    """Settings of :func:`compare_groups`.

    Attributes
    ----------
    n_bootstrap : int
        Bootstrap resamples of the difference of medians.
    confidence : float
        Confidence level of the interval.
    bootstrap_method : str
        ``scipy.stats.bootstrap`` method. ``"percentile"`` (default): fitted values sit on a grid, so
        medians tie often and BCa's jackknife acceleration can be undefined.
    seed : int
        Seed of the bootstrap generator.
    """

    n_bootstrap: int = 10_000
    confidence: float = 0.95
    bootstrap_method: str = "percentile"
    seed: int = 0


# ----------------------------------------------------------------------------- grids

def same_simulation_problem(people_grid: CmrGrid, head_grid: CmrGrid) -> str | None:
    """Why two grids are not of the same simulator on the same axes, or None (settings unknown count as same;
    the caller warns about those)."""
    for name in PARAMETER_NAMES:
        a, b = getattr(people_grid, name), getattr(head_grid, name)
        if a.shape != b.shape or not np.allclose(a, b):
            return f"their {name} axes differ ({a.size} vs {b.size} values)"
    people, heads = people_grid.simulation, head_grid.simulation
    if people is None or heads is None:
        return None
    defaults = {**{key: None for key in SIMULATION_SETTINGS}, **OPTIONAL_SIMULATION_SETTINGS}
    differing = [f"{key} {people.get(key, default)} vs {heads.get(key, default)}" for key, default in defaults.items()
                 if people.get(key, default) != heads.get(key, default)]
    if differing:
        return f"they were simulated with different {', '.join(differing)}"
    return None


# ----------------------------------------------------------------------------- fits

def fit_people(crps: UnitLagCrps, grid: CmrGrid) -> CmrFit:
    """Fit every unit's conditional lag-CRP to a conditional grid on :data:`~icl_cmr.config.HUMAN_FIT_LAGS`.

    Parameters
    ----------
    crps : UnitLagCrps
        ``prob`` [U, K] at ``lags`` (must include :data:`~icl_cmr.config.HUMAN_FIT_LAGS`).
    grid : CmrGrid
        Conditional lag-CRP grid (:func:`read_conditional_grid`).

    Returns
    -------
    CmrFit
        Head axes [U]; NaN where a unit's curve has a NaN or is flat on the fitting lags.
    """
    check_conditional_grid(grid)
    return fit_heads(crps.prob, grid, attn_lags=crps.lags, fit_lags=HUMAN_FIT_LAGS)


def near_best_ranges(curves: np.ndarray, curve_lags: np.ndarray, grid: CmrGrid, fit_lags: np.ndarray,
                     tolerance: float = NEAR_BEST_TOLERANCE, chunk_size: int = 64) -> dict[str, np.ndarray]:
    """How tightly each curve pins the parameters down: their range over the near-best grid points.

    The near-best points of a curve are the grid points whose CMR distance is at most its best D plus
    ``tolerance``; a parameter that spans most of its axis over them is not determined by the curve.

    Parameters
    ----------
    curves : ndarray, shape [N, n_lags]
        Curves as given to :func:`icl_cmr.fits.distance.fit_heads` (any of its inputs, flattened).
    curve_lags : ndarray of int, shape [n_lags]
    grid : CmrGrid
    fit_lags : ndarray of int, shape [K]
        The lags of the fit (:data:`~icl_cmr.config.HUMAN_FIT_LAGS` for people, ``FIT_LAGS`` for heads).
    tolerance : float
        Slack in D (>= 0).
    chunk_size : int
        Curves per block (memory: ``chunk_size x grid points x K`` floats).

    Returns
    -------
    dict
        ``n_near`` [N] (int; 0 where the curve cannot be fitted), ``low`` and ``high`` [N, 3]: smallest
        and largest (beta_enc, beta_rec, gamma_ft) over the near-best points (NaN where not fitted).
    """
    if tolerance < 0 or not np.isfinite(tolerance):
        raise InputError(f"`tolerance` must be a finite number >= 0, got {tolerance}", parameters=("tolerance",))
    curves = select_lags(np.asarray(curves, dtype=float), curve_lags, fit_lags)
    patterns = cmr_fit_patterns(grid, fit_lags).reshape(-1, len(fit_lags))
    values = grid.parameters_at(np.stack(np.unravel_index(np.arange(patterns.shape[0]), grid.shape), axis=-1))
    n = curves.shape[0]
    n_near = np.zeros(n, dtype=np.int64)
    low, high = np.full((n, 3), np.nan), np.full((n, 3), np.nan)
    for start in range(0, n, chunk_size):  # blocks of curves bound memory; each block is vectorised
        with np.errstate(invalid="ignore", divide="ignore"):
            distance, _ = cmr_distance(curves[start:start + chunk_size], patterns)      # [n_block, G]
        best = np.nanmin(np.where(np.isfinite(distance), distance, np.nan), axis=1, initial=np.inf)
        near = np.isfinite(distance) & (distance <= best[:, None] + tolerance)           # [n_block, G]
        n_near[start:start + chunk_size] = near.sum(axis=1)
        masked = np.where(near[:, :, None], values[None], np.nan)                         # [n_block, G, 3]
        with np.errstate(invalid="ignore"):
            fitted = near.any(axis=1)
            low[start:start + chunk_size][fitted] = np.nanmin(masked[fitted], axis=1)
            high[start:start + chunk_size][fitted] = np.nanmax(masked[fitted], axis=1)
    return {"n_near": n_near, "low": low, "high": high}


def near_best_table(ranges: dict[str, np.ndarray]) -> pd.DataFrame:
    """Columns ``n_near_best`` and ``<parameter>_near_low`` / ``_near_high`` of :func:`near_best_ranges`."""
    columns = {"n_near_best": ranges["n_near"]}
    for i, name in enumerate(PARAMETER_NAMES):
        columns[f"{name}_near_low"] = ranges["low"][:, i]
        columns[f"{name}_near_high"] = ranges["high"][:, i]
    return pd.DataFrame(columns)


def fit_table(fit: CmrFit, threshold: float) -> pd.DataFrame:
    """Per fitted curve: ``cmr_distance``, the three parameters, ``inverse_temperature``, ``cmr_like``.

    Parameters
    ----------
    fit : CmrFit
        Any head shape; rows in C order.
    threshold : float
        ``cmr_like`` is ``cmr_distance < threshold`` (False where NaN).
    """
    params = fit.params.reshape(-1, 3)
    distance = fit.distance.ravel()
    return pd.DataFrame({"cmr_distance": distance, **{name: params[:, i] for i, name in enumerate(PARAMETER_NAMES)},
                         "inverse_temperature": fit.inverse_temperature.ravel(),
                         "cmr_like": distance < threshold})


def people_table(crps: UnitLagCrps, fit: CmrFit, threshold: float,
                 near: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per unit: its identity, the fit, the near-best ranges (when given), its CRP and the fitted
    CRP on the fitting lags.

    The fitted curve is on the person's scale, ``s (c - min c) + min a`` (DESIGN.md section 4).
    """
    columns = {"dataset": crps.dataset, "by": crps.by, **{k: crps.units[k].to_numpy() for k in crps.units.columns}}
    parts = [pd.DataFrame(columns), fit_table(fit, threshold)] + ([near_best_table(near)] if near else [])
    table = pd.concat(parts, axis=1)
    observed = crps.prob[:, np.searchsorted(crps.lags, fit.lags)]
    fitted = fit.fitted_pattern_scaled + np.nanmin(observed, axis=1, keepdims=True)
    for i, lag in enumerate(fit.lags):
        table[f"crp_lag{lag:+d}"] = observed[:, i]
    for i, lag in enumerate(fit.lags):
        table[f"fitted_crp_lag{lag:+d}"] = fitted[:, i]
    return table


def head_table(model: str, scores: HeadScores, fit: CmrFit, threshold: float,
               near: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per head of one model: label, matching score, the fit (:func:`fit_table`), near-best ranges."""
    identity = pd.DataFrame({"model": model, "label": scores.labels.ravel(),
                             "matching_score": scores.matching_score.ravel()})
    return pd.concat([identity, fit_table(fit, threshold)] + ([near_best_table(near)] if near else []), axis=1)


# ----------------------------------------------------------------------------- statistics

def compare_groups(people: np.ndarray, heads: np.ndarray,
                   config: GroupComparisonConfig = GroupComparisonConfig()) -> dict[str, float]:
    """People against heads on one quantity: medians, their difference with a bootstrap CI, Mann-Whitney U.

    Parameters
    ----------
    people, heads : ndarray, shape [n] and [m]
        Values of each group; NaN dropped.
    config : GroupComparisonConfig

    Returns
    -------
    dict
        ``n_people``, ``n_heads``, ``median_people``, ``median_heads``, ``iqr_people_low/high``,
        ``iqr_heads_low/high`` (25th/75th percentiles), ``median_difference`` (people - heads),
        ``ci_low``, ``ci_high`` (bootstrap of the difference of medians, both groups resampled
        independently; NaN when a group has fewer than 2 values), ``mannwhitney_u`` (U of the people),
        ``p_value`` (two-sided; NaN when a group is empty) and ``prob_people_greater``
        (U / (n m): the chance that a random person's value exceeds a random head's, ties counting 1/2).
    """
    from scipy import stats  # heavy to import and needed only here (icl_cmr.stats does the same)

    people = np.asarray(people, dtype=float)
    heads = np.asarray(heads, dtype=float)
    people, heads = people[np.isfinite(people)], heads[np.isfinite(heads)]
    n, m = people.size, heads.size
    out = {"n_people": n, "n_heads": m}
    for name, values in (("people", people), ("heads", heads)):
        low, median, high = np.percentile(values, [25, 50, 75]) if values.size else (np.nan,) * 3
        out.update({f"median_{name}": float(median), f"iqr_{name}_low": float(low), f"iqr_{name}_high": float(high)})
    out["median_difference"] = out["median_people"] - out["median_heads"]
    out["ci_low"] = out["ci_high"] = float("nan")
    if n >= 2 and m >= 2:
        if np.ptp(people) == 0 and np.ptp(heads) == 0:  # every resample gives the same difference
            out["ci_low"] = out["ci_high"] = out["median_difference"]
        else:
            interval = stats.bootstrap(
                (people, heads), lambda x, y, axis: np.median(x, axis=axis) - np.median(y, axis=axis),
                paired=False, vectorized=True, n_resamples=config.n_bootstrap, confidence_level=config.confidence,
                method=config.bootstrap_method, rng=np.random.default_rng(config.seed)).confidence_interval
            out["ci_low"], out["ci_high"] = float(interval.low), float(interval.high)
    out["mannwhitney_u"] = out["p_value"] = out["prob_people_greater"] = float("nan")
    if n and m:
        test = stats.mannwhitneyu(people, heads, alternative="two-sided")
        out.update(mannwhitney_u=float(test.statistic), p_value=float(test.pvalue),
                   prob_people_greater=float(test.statistic) / (n * m))
    return out


def share_below(distance: np.ndarray, threshold: float, confidence: float = 0.95) -> dict[str, float]:
    """How many fitted curves have D below ``threshold``, with a Wilson interval of the share.

    Returns
    -------
    dict
        ``n_below``, ``n_fitted`` (finite D), ``share``, ``share_ci_low``, ``share_ci_high``.
    """
    distance = np.asarray(distance, dtype=float)
    fitted = distance[np.isfinite(distance)]
    below = int((fitted < threshold).sum())
    if fitted.size == 0:
        return {"n_below": 0, "n_fitted": 0, "share": float("nan"), "share_ci_low": float("nan"),
                "share_ci_high": float("nan")}
    low, high = wilson_interval(below, int(fitted.size), confidence)
    return {"n_below": below, "n_fitted": int(fitted.size), "share": below / fitted.size,
            "share_ci_low": low, "share_ci_high": high}


def people_vs_heads_table(people: pd.DataFrame, heads: pd.DataFrame, threshold: float,
                          config: GroupComparisonConfig = GroupComparisonConfig()) -> pd.DataFrame:
    """Per model and compared quantity: CMR-like people against that model's CMR-like heads.

    Parameters
    ----------
    people : pandas.DataFrame
        :func:`people_table` (one row per person).
    heads : pandas.DataFrame
        :func:`head_table` rows of one or more models (column ``model``).
    threshold : float
        CMR-like means ``cmr_distance < threshold`` for both groups.
    config : GroupComparisonConfig

    Returns
    -------
    pandas.DataFrame
        Columns ``model``, ``quantity``, ``threshold``, then :func:`compare_groups`'s keys, then the
        people's :func:`share_below` and the model's (``heads_n_below``, ``heads_n_fitted``), and for the
        three parameters, when both tables have :func:`near_best_table` columns, the median width of the
        near-best range in each group (``near_range_people``, ``near_range_heads``; NaN for D).
    """
    like_people = people[people["cmr_distance"] < threshold]
    people_share = share_below(people["cmr_distance"].to_numpy(), threshold, config.confidence)
    rows = []
    for model, group in heads.groupby("model", sort=False):
        like_heads = group[group["cmr_distance"] < threshold]
        head_share = share_below(group["cmr_distance"].to_numpy(), threshold, config.confidence)
        for quantity in COMPARED_QUANTITIES:
            widths = {f"near_range_{name}": float(np.nanmedian(group_[f"{quantity}_near_high"]
                                                                - group_[f"{quantity}_near_low"]))
                      if f"{quantity}_near_low" in group_ and len(group_) else float("nan")
                      for name, group_ in (("people", like_people), ("heads", like_heads))}
            rows.append({"model": model, "quantity": quantity, "threshold": threshold,
                         **compare_groups(like_people[quantity].to_numpy(), like_heads[quantity].to_numpy(), config),
                         **{f"people_{k}": v for k, v in people_share.items()},
                         "heads_n_below": head_share["n_below"], "heads_n_fitted": head_share["n_fitted"], **widths})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- methods (issue 24)

#: The ways people are put on [LI24]'s scale beside the heads, in table order: the grid fit under [LI24]'s recall
#: rule, the grid fit under the standard rule (heads fitted to the same grid), and standard CMR fitted by likelihood
#: (:mod:`icl_cmr.humans.likelihood_fits`) with B_enc converted to [LI24]'s beta_enc (heads: [LI24]'s grid fits).
METHODS = ("grid_li24", "grid_standard", "likelihood")

#: Pairs of per-person parameters compared across methods: (quantity of the first method, of the second). A
#: likelihood fit has no grid quantities: its B_enc (ranks unchanged by the conversion), B_rec and Lfc stand for
#: beta_enc, beta_rec and gamma_ft.
LIKELIHOOD_STAND_INS = {"beta_enc": "B_enc", "beta_rec": "B_rec", "gamma_ft": "Lfc"}


def likelihood_vs_heads_table(likelihood: pd.DataFrame, heads: pd.DataFrame, threshold: float,
                              config: GroupComparisonConfig = GroupComparisonConfig()) -> pd.DataFrame:
    """People fitted by likelihood (standard CMR) against each model's CMR-like heads, on [LI24]'s beta_enc.

    Each person's ``B_enc`` is converted exactly (:func:`icl_cmr.cmr.scales.li24_encoding_rate`: the same encoding
    gradient); only beta_enc is compared, because a retrieval rate has no constant conversion
    (:mod:`icl_cmr.cmr.scales`) and Lfc none at all. Every fitted person counts (a likelihood fit has no CMR
    distance); heads are those with ``cmr_distance < threshold``, with their grid beta_enc.

    Parameters
    ----------
    likelihood : pandas.DataFrame
        :func:`icl_cmr.humans.likelihood_fits.fit_row` rows (column ``B_enc``), one per person.
    heads : pandas.DataFrame
        :func:`head_table` rows of one or more models (columns ``model``, ``cmr_distance``, ``beta_enc``).
    threshold : float
    config : GroupComparisonConfig

    Returns
    -------
    pandas.DataFrame
        Columns ``model``, ``quantity`` (``"beta_enc"``), ``threshold``, then :func:`compare_groups`'s keys.
    """
    if "B_enc" not in likelihood or not {"model", "cmr_distance", "beta_enc"} <= set(heads.columns):
        raise InputError("`likelihood` needs column B_enc and `heads` columns model, cmr_distance, beta_enc",
                         parameters=("likelihood", "heads"))
    b_enc = likelihood["B_enc"].to_numpy(dtype=float)
    people = li24_encoding_rate(b_enc[np.isfinite(b_enc)])
    rows = []
    for model, group in heads.groupby("model", sort=False):
        like_heads = group[group["cmr_distance"] < threshold]
        rows.append({"model": model, "quantity": "beta_enc", "threshold": threshold,
                     **compare_groups(people, like_heads["beta_enc"].to_numpy(), config)})
    return pd.DataFrame(rows)


def method_people_table(fits: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per person with the parameters under every method, side by side.

    Parameters
    ----------
    fits : mapping method -> pandas.DataFrame
        As :func:`method_correlations`: :func:`people_table` rows for a grid method (``subject``, ``cmr_distance``,
        the three parameters), likelihood rows (``subject``, ``B_enc``, ``B_rec``, ``Lfc``) for ``"likelihood"``.

    Returns
    -------
    pandas.DataFrame
        ``subject``, then for each grid method ``<quantity>_<method>`` (``cmr_distance`` and the three parameters),
        and for ``"likelihood"`` ``B_enc``, ``B_rec``, ``Lfc`` and ``beta_enc_likelihood`` (B_enc on [LI24]'s scale,
        :func:`icl_cmr.cmr.scales.li24_encoding_rate`); people in any table, ordered by subject.
    """
    table = None
    for method in [m for m in METHODS if m in fits] + [m for m in fits if m not in METHODS]:
        if method == "likelihood":
            part = fits[method][["subject", "B_enc", "B_rec", "Lfc"]].copy()
            b_enc = part["B_enc"].to_numpy(dtype=float)
            converted = np.full(b_enc.shape, np.nan)
            finite = np.isfinite(b_enc)
            converted[finite] = li24_encoding_rate(b_enc[finite])
            part["beta_enc_likelihood"] = converted
        else:
            columns = ("cmr_distance",) + PARAMETER_NAMES
            part = fits[method][["subject", *columns]].rename(columns={c: f"{c}_{method}" for c in columns})
        table = part if table is None else table.merge(part, on="subject", how="outer")
    return table.sort_values("subject", kind="stable").reset_index(drop=True)


def _median_on_li24_scale(column: str, method: str, median: float) -> float:
    """A median on [LI24]'s scale: a grid's as it is, a likelihood B_enc converted, NaN for B_rec and Lfc."""
    if method != "likelihood":
        return median
    return float(li24_encoding_rate(median)) if column == "B_enc" and np.isfinite(median) else float("nan")


def method_correlations(fits: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Each person's parameters under two methods: Spearman's rank correlation across people and the medians.

    Parameters
    ----------
    fits : mapping method -> pandas.DataFrame
        Per-person tables with column ``subject``: :func:`people_table` rows for a grid method, likelihood rows
        (``B_enc``, ``B_rec``, ``Lfc``) for ``"likelihood"``. Every pair of methods present is compared.

    Returns
    -------
    pandas.DataFrame
        One row per pair and grid quantity (beta_enc, beta_rec, gamma_ft; a likelihood fit's stand-ins,
        :data:`LIKELIHOOD_STAND_INS`): ``method_a``, ``method_b``, ``quantity``, ``column_a``, ``column_b``, ``n``
        (people in both, finite), ``spearman_rho``, ``spearman_p`` (scipy.stats.spearmanr), ``median_a``,
        ``median_b`` (each on its method's own scale), ``median_a_li24``, ``median_b_li24`` (on [LI24]'s scale: a
        likelihood B_enc converted exactly, NaN for the stand-ins without an exact conversion, a grid's own value).
    """
    from scipy import stats  # heavy to import and needed only here (compare_groups does the same)

    methods = [m for m in METHODS if m in fits] + [m for m in fits if m not in METHODS]
    rows = []
    for i, first in enumerate(methods):
        for second in methods[i + 1:]:
            for quantity in PARAMETER_NAMES:
                column_a = LIKELIHOOD_STAND_INS[quantity] if first == "likelihood" else quantity
                column_b = LIKELIHOOD_STAND_INS[quantity] if second == "likelihood" else quantity
                both = fits[first][["subject", column_a]].merge(fits[second][["subject", column_b]], on="subject",
                                                                suffixes=("_a", "_b"))
                a = both[column_a if column_a != column_b else f"{column_a}_a"].to_numpy(dtype=float)
                b = both[column_b if column_a != column_b else f"{column_b}_b"].to_numpy(dtype=float)
                keep = np.isfinite(a) & np.isfinite(b)
                rho, p_value = stats.spearmanr(a[keep], b[keep]) if keep.sum() > 2 else (np.nan, np.nan)
                medians = [float(np.median(x[keep])) if keep.any() else float("nan") for x in (a, b)]
                rows.append({"method_a": first, "method_b": second, "quantity": quantity, "column_a": column_a,
                             "column_b": column_b, "n": int(keep.sum()), "spearman_rho": float(rho),
                             "spearman_p": float(p_value), "median_a": medians[0], "median_b": medians[1],
                             "median_a_li24": _median_on_li24_scale(column_a, first, medians[0]),
                             "median_b_li24": _median_on_li24_scale(column_b, second, medians[1])})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- heads over training

def top_cmr_like_over_training(series: Mapping[str, Sequence[HeadScores]], grid: CmrGrid, n_top: int,
                               fit_lags: np.ndarray = FIT_LAGS) -> tuple[HeadSelection, np.ndarray, np.ndarray]:
    """The ``n_top`` heads with the lowest D at the last checkpoint (pooled over models), followed back.

    [LI24] Fig 7: heads picked at the final checkpoint, their fits at every checkpoint.

    Parameters
    ----------
    series : mapping model -> sequence of HeadScores
        Each model's scores at the same T checkpoints, oldest first.
    grid : CmrGrid
        The grid heads are fitted to (the lag histogram under [LI24]'s recall rule).
    n_top : int
    fit_lags : ndarray of int, shape [K]
        Lags of the fits ([LI24]'s -5..+5; :data:`~icl_cmr.config.HUMAN_FIT_LAGS` on a conditional grid).

    Returns
    -------
    selection : HeadSelection
    distance : ndarray, shape [n, T]
    params : ndarray, shape [n, T, 3]
    """
    if not series:
        raise InputError("`series` has no models to follow over training", parameters=("series",))
    lengths = {len(s) for s in series.values()}
    if len(lengths) != 1:
        raise InputError(f"the models of `series` have different numbers of checkpoints: {sorted(lengths)}",
                         parameters=("series",))
    # One vectorised fit per model over all its checkpoints and heads.
    fits = {model: fit_heads(np.stack([s.crp for s in scores]), grid, attn_lags=scores[0].lags, fit_lags=fit_lags)
            for model, scores in series.items()}
    selection = select_top_heads({m: f.distance[-1] for m, f in fits.items()}, n_top, largest=False,
                                 criterion="lowest cmr_distance at the last checkpoint")
    distance = gather_selected(selection, {m: f.distance for m, f in fits.items()})
    params = gather_selected(selection, {m: f.params for m, f in fits.items()})
    return selection, distance, params


@dataclass(frozen=True)
class TopSetsOverTraining:
    """Top-N CMR-like head sets followed over training ([LI24] Fig 7d-g), one set per N.

    Each set is named ``"top N"``; T is the number of checkpoints, Q = len(:data:`COMPARED_QUANTITIES`).

    Attributes
    ----------
    steps : ndarray of int, shape [T]
        Training step of each checkpoint.
    quantities : tuple of str, length Q
        :data:`COMPARED_QUANTITIES`: D then (beta_enc, beta_rec, gamma_ft).
    mean, sem : dict set name -> ndarray, shape [T, Q]
        Mean over the set's heads of each quantity at each checkpoint, and its standard error (ddof 1,
        NaN-aware; 0 for a set of one head, NaN for an empty set's mean).
    final_points : dict set name -> ndarray, shape [n, 2]
        (beta_enc, beta_rec) of each of the set's n heads at the last checkpoint.
    selections : dict set name -> HeadSelection
        Which heads each set holds.
    """

    steps: np.ndarray
    quantities: tuple
    mean: dict
    sem: dict
    final_points: dict
    selections: dict


def top_sets_over_training(series: Mapping[str, Sequence[HeadScores]], grid: CmrGrid, n_top: Sequence[int],
                           steps: Sequence[int], fit_lags: np.ndarray = FIT_LAGS) -> TopSetsOverTraining:
    """Mean D and parameters of the top-N CMR-like heads at every checkpoint, for each N ([LI24] Fig 7d-g).

    Parameters
    ----------
    series : mapping model -> sequence of HeadScores
        Each model's scores at the same T checkpoints, oldest first (:func:`top_cmr_like_over_training`).
    grid : CmrGrid
        The (lag-histogram) grid heads are fitted to.
    n_top : sequence of int
        Set sizes; repeats are dropped and sets are kept in increasing size.
    steps : sequence of int, length T
        Training step of each checkpoint.
    fit_lags : ndarray of int, shape [K]
        Lags of the heads' fits (:func:`top_cmr_like_over_training`).

    Returns
    -------
    TopSetsOverTraining
    """
    steps = np.asarray(steps)
    lengths = {len(scores) for scores in series.values()}
    if len(lengths) == 1 and lengths != {steps.size}:
        raise InputError(f"`steps` has {steps.size} values for {lengths.pop()} checkpoints", parameters=("steps",))
    quantities = tuple(COMPARED_QUANTITIES)
    mean_of, sem_of, final_points, selections = {}, {}, {}, {}
    for n in sorted(set(n_top)):
        selection, distance, params = top_cmr_like_over_training(series, grid, n, fit_lags)
        if len(selection) < n:
            logger.warning("only %d heads with a finite CMR distance for top %d", len(selection), n)
        values = np.concatenate([distance[..., None], params], axis=-1)         # [n, T, Q]
        count = np.isfinite(values).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nanmean(values, axis=0) if len(selection) else np.full(values.shape[1:], np.nan)
            sem = np.nanstd(values, axis=0, ddof=1) / np.sqrt(count) if len(selection) > 1 else np.zeros_like(mean)
        name = f"top {n}"
        mean_of[name], sem_of[name] = mean, sem
        final_points[name] = params[:, -1, :2]
        selections[name] = selection
    return TopSetsOverTraining(steps=steps, quantities=quantities, mean=mean_of, sem=sem_of,
                               final_points=final_points, selections=selections)
