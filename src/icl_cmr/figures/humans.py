"""Figures of people and heads in one CMR parameter space (issue 16): results in, Figure out.

The ``plot_*`` functions draw arrays; the ``*_figure`` functions above them compose one figure of
``fit_human_recall.py`` from the results of :mod:`icl_cmr.humans.fits` and :mod:`icl_cmr.humans.recall`
(which rows, which columns, the titles). Every function returns a ``matplotlib.figure.Figure`` (the
caller saves and closes it).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from icl_cmr.figures.style import PARAMETER_LABELS, SMALL_FONT_SIZE, spaced_colors, style_axes
from icl_cmr.fits.distance import CmrFit
from icl_cmr.humans.fits import COMPARED_QUANTITIES, TopSetsOverTraining
from icl_cmr.humans.recall import UnitLagCrps

#: Axis label of each quantity in :data:`icl_cmr.humans.fits.COMPARED_QUANTITIES` order.
QUANTITY_LABELS = {"cmr_distance": "CMR distance D", "beta_enc": PARAMETER_LABELS[0],
                   "beta_rec": PARAMETER_LABELS[1], "gamma_ft": PARAMETER_LABELS[2]}

#: Units per page of the CRP-fit figure (6 x 5 panels).
PAGE_SIZE = 30

_PEOPLE_COLOR = "k"


# ----------------------------------------------------------------------------- figures of results

def parameters_figure(people: pd.DataFrame, heads: Optional[pd.DataFrame], threshold: float,
                      dataset: str, recall_rule: str = "li24") -> Figure:
    """Each compared quantity of the CMR-like people and of each model's CMR-like heads.

    Parameters
    ----------
    people : pandas.DataFrame
        :func:`icl_cmr.humans.fits.people_table` (column ``cmr_like``).
    heads : pandas.DataFrame, optional
        :func:`icl_cmr.humans.fits.head_table` rows of one or more models (column ``model``); None: people only.
    threshold : float
        The CMR-like threshold on D (drawn on the D panel and named in the title).
    dataset : str
        The people's study, for labels.
    recall_rule : {"li24", "standard"}
        The CMR recall rule of the grids, for the title: under ``"standard"`` heads are fitted to the same
        conditional grid as people.
    """
    like = people[people["cmr_like"]]
    groups = {f"{dataset} people": {q: like[q].to_numpy() for q in COMPARED_QUANTITIES}}
    if heads is not None:
        for model, group in heads[heads["cmr_like"]].groupby("model", sort=False):
            groups[model] = {q: group[q].to_numpy() for q in COMPARED_QUANTITIES}
    title = (f"CMR fits with D < {threshold:g}: {dataset} people (conditional lag-CRP) and each model's "
             "heads (the paper's lag-histogram CRP)")
    if recall_rule != "li24":
        title = (f"CMR fits with D < {threshold:g}, {recall_rule} recall rule (no repeats, no draw cap): "
                 f"{dataset} people and each model's heads, both on CMR's conditional lag-CRP")
    return plot_parameter_distributions(groups, list(COMPARED_QUANTITIES), threshold, title=title)


def page_of_units(distance: np.ndarray, size: int = PAGE_SIZE) -> np.ndarray:
    """Indices of up to ``size`` units evenly spread over the ranks of D (best fit first), so one page
    shows the whole range of fits; units without a fit come last.

    Parameters
    ----------
    distance : ndarray, shape [U]
        Each unit's CMR distance (NaN: not fitted).
    size : int

    Returns
    -------
    ndarray of int, shape [min(U, size)]
    """
    order = np.argsort(np.where(np.isfinite(distance), distance, np.inf), kind="stable")
    if order.size <= size:
        return order
    return order[np.unique(np.round(np.linspace(0, order.size - 1, size)).astype(int))]


def unit_fits_figure(crps: UnitLagCrps, fit: CmrFit, people: pd.DataFrame, size: int = PAGE_SIZE,
                     recall_rule: str = "li24") -> Figure:
    """One page of units (:func:`page_of_units`) with their conditional lag-CRPs and CMR fits.

    Parameters
    ----------
    crps : UnitLagCrps
        The units' curves (their labels, dataset and kind of unit).
    fit : CmrFit
        Their fits, head axes [U].
    people : pandas.DataFrame
        :func:`icl_cmr.humans.fits.people_table` of the same units: the curves and fitted curves on the
        fitting lags.
    size : int
        Units on the page.
    recall_rule : {"li24", "standard"}
        The CMR recall rule of the grid, named in the title unless it is [LI24]'s.
    """
    page = page_of_units(fit.distance, size)
    fitted_cols = [f"fitted_crp_lag{lag:+d}" for lag in fit.lags]
    observed_cols = [f"crp_lag{lag:+d}" for lag in fit.lags]
    return plot_unit_fits(
        crps.labels[page], fit.lags, people[observed_cols].to_numpy()[page], people[fitted_cols].to_numpy()[page],
        fit.distance[page], fit.params[page],
        title=f"{crps.dataset}, by {crps.by}: {len(page)} of {len(people)} units, spread over the ranks of D"
              + ("" if recall_rule == "li24" else f" ({recall_rule} recall rule)"))


def training_reference_figure(top_sets: TopSetsOverTraining, like_people: pd.DataFrame, dataset: str,
                              models: Sequence[str], recall_rule: str = "li24") -> Figure:
    """[LI24] Fig 7d-g with the people's median and interquartile band (people with D < threshold).

    Parameters
    ----------
    top_sets : TopSetsOverTraining
        The top-N CMR-like head sets of ``models`` over training.
    like_people : pandas.DataFrame
        The CMR-like rows of :func:`icl_cmr.humans.fits.people_table`.
    dataset : str
        The people's study, for labels.
    models : sequence of str
        The models whose heads the sets hold, for the title.
    recall_rule : {"li24", "standard"}
        The CMR recall rule of the grids, named in the title unless it is [LI24]'s.
    """
    quantities = list(top_sets.quantities)
    human = like_people[quantities].to_numpy(dtype=float)
    median = np.nanmedian(human, axis=0)
    iqr = np.nanpercentile(human, [25, 75], axis=0).T
    series = {name: (top_sets.mean[name], top_sets.sem[name]) for name in top_sets.mean}
    return plot_training_with_human_band(
        top_sets.steps, series, quantities, median, iqr, f"{dataset}: median, IQR (n={len(like_people)})",
        top_sets.final_points, like_people[["beta_enc", "beta_rec"]].to_numpy(),
        title=f"top-N CMR-like heads of {', '.join(models)} over training; people of {dataset} with D < threshold"
              + ("" if recall_rule == "li24" else f"; {recall_rule} recall rule"))


# ----------------------------------------------------------------------------- plots of arrays


def _group_colors(names: Sequence[str]) -> list:
    """Black for the people (first group), a colour per model after it."""
    models = spaced_colors(max(len(names) - 1, 1), "tab10" if len(names) <= 11 else "viridis")
    return [_PEOPLE_COLOR] + models[: len(names) - 1]


def plot_parameter_distributions(groups: Mapping[str, Mapping[str, np.ndarray]], quantities: Sequence[str],
                                 threshold: Optional[float] = None, title: str = "") -> Figure:
    """Each quantity's values per group: jittered points, median and interquartile box.

    Parameters
    ----------
    groups : mapping group name -> mapping quantity -> ndarray [n_group]
        The first group is drawn in black (the people); NaN values are left out.
    quantities : sequence of str
        Keys of :data:`QUANTITY_LABELS` (one panel each).
    threshold : float, optional
        Drawn as a dashed line on the CMR-distance panel.
    """
    names = list(groups)
    colors = _group_colors(names)
    panel_width = max(2.3, 0.42 * len(names) + 0.6)
    fig, axes = plt.subplots(1, len(quantities), figsize=(panel_width * len(quantities) + 0.6, 3.1), squeeze=False)
    rng = np.random.default_rng(0)  # jitter only
    for ax, quantity in zip(axes[0], quantities):
        for x, (name, color) in enumerate(zip(names, colors)):
            values = np.asarray(groups[name][quantity], dtype=float)
            values = values[np.isfinite(values)]
            if not values.size:
                continue
            ax.scatter(x + rng.uniform(-0.22, 0.22, values.size), values, s=5, alpha=0.35, color=color, lw=0)
            low, median, high = np.percentile(values, [25, 50, 75])
            ax.add_patch(Rectangle((x - 0.3, low), 0.6, high - low, fill=False, edgecolor=color, lw=1.0))
            ax.plot([x - 0.3, x + 0.3], [median, median], color=color, lw=2.0)
        if quantity == "cmr_distance" and threshold is not None:
            ax.axhline(threshold, color="grey", lw=0.7, ls="--")
        ax.set_xticks(range(len(names)), [f"{n} (n={np.isfinite(np.asarray(groups[n][quantity], float)).sum()})"
                                           for n in names], fontsize=5.5, rotation=45, ha="right",
                      rotation_mode="anchor")
        ax.set_ylabel(QUANTITY_LABELS.get(quantity, quantity), fontsize=SMALL_FONT_SIZE)
        style_axes(ax)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def _plot_without_lag0(ax, lags: np.ndarray, values: np.ndarray, **style) -> None:
    """A curve over lags drawn as two pieces, so no line bridges lag 0 (never a transition)."""
    for side in (lags < 0, lags > 0):
        ax.plot(lags[side], values[side], **style)


def plot_unit_fits(labels: Sequence[str], lags: np.ndarray, observed: np.ndarray, fitted: np.ndarray,
                   distance: np.ndarray, params: np.ndarray, n_columns: int = 6, title: str = "") -> Figure:
    """A page of conditional lag-CRPs (black) with their CMR fits (red), one panel per unit.

    Parameters
    ----------
    labels : sequence of str, length U
    lags : ndarray of int, shape [K]
        The fitting lags (no lag 0).
    observed, fitted : ndarray, shape [U, K]
        The unit's curve and the fit on its scale (:func:`icl_cmr.humans.fits.people_table`).
    distance : ndarray, shape [U]
    params : ndarray, shape [U, 3]
    n_columns : int
    """
    n_units = len(labels)
    n_rows = max(1, math.ceil(n_units / n_columns))
    fig, axes = plt.subplots(n_rows, n_columns, figsize=(1.75 * n_columns, 1.45 * n_rows + 0.4), squeeze=False,
                             sharex=True)
    for i, ax in enumerate(axes.ravel()):
        if i >= n_units:
            ax.axis("off")
            continue
        _plot_without_lag0(ax, lags, observed[i], color="k", marker="o", markersize=1.8, lw=0.8)
        _plot_without_lag0(ax, lags, fitted[i], color="tab:red", lw=1.0)
        be, br, g = params[i]
        ax.set_title(f"{labels[i]}  D={distance[i]:.2f}\n({be:.2f}, {br:.2f}, {g:.1f})", fontsize=5.5, pad=2)
        ax.set_ylim(bottom=0)
        style_axes(ax)
        ax.tick_params(labelsize=5)
    for ax in axes[-1]:
        ax.set_xlabel("lag", fontsize=6)
    for ax in axes[:, 0]:
        ax.set_ylabel("CRP", fontsize=6)
    fig.suptitle(title + ("\n" if title else "") + r"black: conditional lag-CRP; red: CMR fit; "
                 r"title: unit, D, ($\beta_{\rm enc}$, $\beta_{\rm rec}$, $\gamma_{\rm FT}$)", fontsize=7)
    # Fixed margins: tight_layout over dozens of panels takes seconds and gives the same page.
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.35 / height, top=1 - 0.75 / height, wspace=0.3,
                        hspace=0.55)
    return fig


def plot_training_with_human_band(steps: np.ndarray, series: Mapping[str, Tuple[np.ndarray, np.ndarray]],
                                  quantities: Sequence[str], human_median: np.ndarray, human_iqr: np.ndarray,
                                  human_label: str, final_points: Mapping[str, np.ndarray],
                                  people_points: np.ndarray, title: str = "") -> Figure:
    """[LI24] Fig 7d-g with the human reference taken from fitted people instead of literature constants.

    Parameters
    ----------
    steps : ndarray, shape [T]
        Training steps.
    series : mapping set name -> (mean [T, Q], sem [T, Q])
        Top-N CMR-like head sets over training.
    quantities : sequence of str, length Q
        Keys of :data:`QUANTITY_LABELS`.
    human_median : ndarray, shape [Q]
    human_iqr : ndarray, shape [Q, 2]
        25th and 75th percentiles of the people's fitted values (drawn as a band).
    human_label : str
    final_points : mapping set name -> ndarray [n, 2]
        (beta_enc, beta_rec) of each set's heads at the last checkpoint (last panel).
    people_points : ndarray, shape [P, 2]
        (beta_enc, beta_rec) of the people (last panel).
    """
    n_q = len(quantities)
    fig, axes = plt.subplots(1, n_q + 1, figsize=(2.3 * (n_q + 1) + 1.2, 2.5), squeeze=False)
    colors = spaced_colors(len(series), "viridis")
    for q, (ax, quantity) in enumerate(zip(axes[0], quantities)):
        ax.axhspan(human_iqr[q, 0], human_iqr[q, 1], color="tab:red", alpha=0.15, lw=0)
        ax.axhline(human_median[q], color="tab:red", lw=1.0, ls="--")
        for color, (name, (mean, sem)) in zip(colors, series.items()):
            ax.plot(steps, mean[:, q], color=color, lw=1.2, label=name)
            ax.fill_between(steps, mean[:, q] - sem[:, q], mean[:, q] + sem[:, q], color=color, alpha=0.2, lw=0)
        ax.set_xscale("log")
        ax.set_xlabel("training step", fontsize=SMALL_FONT_SIZE)
        ax.set_ylabel(QUANTITY_LABELS.get(quantity, quantity), fontsize=SMALL_FONT_SIZE)
        style_axes(ax)
    plane = axes[0, -1]
    people_points = np.asarray(people_points, dtype=float)
    people_points = people_points[np.isfinite(people_points).all(axis=1)]
    rng = np.random.default_rng(0)  # jitter only: fits sit on grid points
    plane.scatter(people_points[:, 0] + rng.uniform(-0.012, 0.012, len(people_points)),
                  people_points[:, 1] + rng.uniform(-0.012, 0.012, len(people_points)),
                  s=7, color="tab:red", alpha=0.5, lw=0, zorder=5, label="people")
    be, br = quantities.index("beta_enc"), quantities.index("beta_rec")
    plane.add_patch(Rectangle((human_iqr[be, 0], human_iqr[br, 0]), human_iqr[be, 1] - human_iqr[be, 0],
                              human_iqr[br, 1] - human_iqr[br, 0], color="tab:red", alpha=0.15, lw=0))
    plane.scatter([human_median[be]], [human_median[br]], marker="*", s=80, color="tab:red", edgecolor="k", lw=0.4,
                  zorder=6, label=human_label)
    for color, (name, points) in zip(colors, final_points.items()):
        points = np.asarray(points, dtype=float)
        points = points[np.isfinite(points).all(axis=1)]
        plane.scatter(points[:, 0] + rng.uniform(-0.012, 0.012, len(points)),
                      points[:, 1] + rng.uniform(-0.012, 0.012, len(points)), s=8, color=color, alpha=0.6, lw=0)
        if len(points):
            plane.scatter([np.median(points[:, 0])], [np.median(points[:, 1])], marker="D", s=40, color=color,
                          edgecolor="k", lw=0.5, zorder=6, label=f"{name} (median)")
    plane.set_xlim(0, 1.05)
    plane.set_ylim(-0.02, 1.05)
    plane.set_xlabel(PARAMETER_LABELS[0], fontsize=SMALL_FONT_SIZE)
    plane.set_ylabel(PARAMETER_LABELS[1], fontsize=SMALL_FONT_SIZE)
    style_axes(plane)
    handles, names = plane.get_legend_handles_labels()
    line_handles, line_names = axes[0, 0].get_legend_handles_labels()
    fig.legend(line_handles + handles, line_names + names, fontsize=6, frameon=False, loc="center right")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    return fig
