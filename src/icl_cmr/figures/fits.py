"""Figures of the CMR fits ([LI24] Fig 4-7). ``plot_*`` functions only: results in, Figure out.

Nothing here computes a statistic; every function takes arrays produced by
:mod:`icl_cmr.fits.distance`, :mod:`icl_cmr.fits.layers` or :mod:`icl_cmr.humans.recall` and returns a
``matplotlib.figure.Figure`` (the caller saves and closes it). Import with the Agg backend.
"""
from __future__ import annotations

import io
import logging
import math
from typing import Mapping, Optional, Sequence, Tuple

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from icl_cmr.figures.style import INVERSE_TEMPERATURE_LABEL as _INV_TEMP_LABEL
from icl_cmr.figures.style import PARAMETER_LABELS as _PARAM_LABELS
from icl_cmr.figures.style import SMALL_FONT_SIZE as _SMALL
from icl_cmr.figures.style import spaced_colors as _colors
from icl_cmr.figures.style import style_axes as _style
from icl_cmr.fits.layers import LayerSummary


# ----------------------------------------------------------------------------- Fig 5: one model

class LayerFitPages:
    """Pages of per-head fits, one page per layer, drawn fast on one reused figure ([LI24] Fig 5).

    Each head gets a panel: its attention CRP (pre-softmax scores, black, SEM bars) and its CMR
    fit on the same scale (red), with D and the fitted parameters in the panel title. All panels
    of a page live in **one** Axes: the curves of every head are two lines (NaN-separated), the
    error bars, panel frames and ticks one line collection each, so a page has a few artists and
    some text instead of H full Axes. The figure is built once and only its data change between
    pages, and :meth:`render` sets text in a PDF core font: a 32-head page renders in about 0.13 s
    of CPU instead of 2.7 s (``bench/bench_fit_figures.py``).
    Each panel's y axis spans nice round limits around its data, with 2-4 labelled ticks.

    Parameters
    ----------
    n_heads : int
        Panels per page (H).
    lags : ndarray, shape [K]
        The fitting lags (x axis of every panel).
    n_cols : int, optional
        Panels per row (default: about sqrt(2 H)).

    Examples
    --------
    >>> pages = LayerFitPages(n_heads=4, lags=np.arange(-5, 6))      # doctest: +SKIP
    >>> pdf_bytes = pages.render(labels, attn, attn_sem, fitted, distance, params, title="layer 0")
    """

    def __init__(self, n_heads: int, lags: np.ndarray, n_cols: Optional[int] = None) -> None:
        if n_heads < 1:
            raise ValueError(f"n_heads must be >= 1, got {n_heads}")
        self.lags = np.asarray(lags, dtype=float)
        self.n_heads = int(n_heads)
        self.n_cols = n_cols or max(1, math.ceil(math.sqrt(2 * n_heads)))
        self.n_rows = math.ceil(n_heads / self.n_cols)
        width, height = 2.0 * self.n_cols, 1.7 * self.n_rows + 0.6
        self.figure = Figure(figsize=(width, height))
        # Panel boxes in axes fractions; margins in inches so that text fits at any page size.
        left, right, bottom, top = 0.55 / width, 0.1 / width, 0.45 / height, 0.55 / height
        gap_x, gap_y = 0.45 / width, 0.5 / height
        self._panel_w = (1 - left - right - gap_x * (self.n_cols - 1)) / self.n_cols
        self._panel_h = (1 - bottom - top - gap_y * (self.n_rows - 1)) / self.n_rows
        index = np.arange(n_heads)
        self._x0 = left + (index % self.n_cols) * (self._panel_w + gap_x)
        self._y0 = 1 - top - (index // self.n_cols + 1) * self._panel_h - (index // self.n_cols) * gap_y
        self._ax = self.figure.add_axes((0, 0, 1, 1))
        self._ax.set_xlim(0, 1)
        self._ax.set_ylim(0, 1)
        self._ax.set_axis_off()
        self._frames = LineCollection([], colors="k", linewidths=0.6)
        self._zero = LineCollection([], colors="grey", linewidths=0.5, linestyles="--")
        self._errors = LineCollection([], colors="k", linewidths=0.6)
        for collection in (self._frames, self._zero, self._errors):
            self._ax.add_collection(collection)
        (self._attn,) = self._ax.plot([], [], color="k", marker="o", markersize=2, lw=1)
        (self._fit,) = self._ax.plot([], [], color="tab:red", marker="x", markersize=3, lw=1, alpha=0.8)
        self._texts: list = []
        self.figure.legend([Line2D([], [], color="k", marker="o", markersize=2, lw=1),
                            Line2D([], [], color="tab:red", marker="x", markersize=3, lw=1)],
                           ["head (SEM bars)", "CMR fit; panel titles: D and (beta_enc, beta_rec, gamma_ft)"],
                           fontsize=5.5, frameon=False, loc="upper left", ncol=1, borderaxespad=0.2)
        self.figure.text(0.08 / width, 0.5, "attention score", rotation=90, va="center", fontsize=_SMALL)
        self.figure.text(0.5, 0.05 / height, "lag", ha="center", va="bottom", fontsize=_SMALL)
        self._title = self.figure.text(0.5, 1 - 0.08 / height, "", ha="center", va="top", fontsize=9)

    def _x(self, panel: np.ndarray) -> np.ndarray:
        """Panel x coordinates of the lags, shape [n, K]."""
        span = self.lags[-1] - self.lags[0] if self.lags.size > 1 else 1.0
        inset = 0.04 * self._panel_w
        return (self._x0[panel, None] + inset + (self.lags[None, :] - self.lags[0]) / span
                * (self._panel_w - 2 * inset))

    def render(self, labels: Sequence[str], attn: np.ndarray, attn_sem: np.ndarray, fitted: np.ndarray,
               distance: np.ndarray, params: np.ndarray, title: str = "") -> bytes:
        """Draw one page (:meth:`draw`) and return it as PDF bytes.

        Text is set in the PDF core font Helvetica (not embedded, so ASCII text only), which
        renders about 4x faster than embedded DejaVu glyphs.
        """
        self.draw(labels, attn, attn_sem, fitted, distance, params, title)
        buffer = io.BytesIO()
        font_log = logging.getLogger("matplotlib.font_manager")
        level = font_log.level
        font_log.setLevel(logging.ERROR)  # "Helvetica: weight normal not found, using medium" on every page
        try:
            with matplotlib.rc_context({"pdf.use14corefonts": True}):
                self.figure.savefig(buffer, format="pdf")
        finally:
            font_log.setLevel(level)
        return buffer.getvalue()

    def draw(self, labels: Sequence[str], attn: np.ndarray, attn_sem: np.ndarray, fitted: np.ndarray,
             distance: np.ndarray, params: np.ndarray, title: str = "") -> None:
        """Put one layer's heads on the page (replacing the previous page's data).

        Parameters
        ----------
        labels : sequence of str, length H
        attn, attn_sem : ndarray, shape [H, K]
            Attention CRP (pre-softmax scores) and its SEM on the fitting lags (NaN SEM: no bars).
        fitted : ndarray, shape [H, K]
            The fitted CMR CRP mapped to the attention scale (``s c~ + min a``); NaN for no fit.
        distance : ndarray, shape [H]
        params : ndarray, shape [H, 3]
        title : str
        """
        attn, sem, fitted = (np.asarray(a, dtype=float) for a in (attn, attn_sem, fitted))
        if attn.shape != (self.n_heads, self.lags.size):
            raise ValueError(f"attn must have shape {(self.n_heads, self.lags.size)}, got {attn.shape}")
        for text in self._texts:
            text.remove()
        self._texts = []
        panels = np.arange(self.n_heads)
        x = self._x(panels)                                                          # [H, K]
        sem = np.where(np.isfinite(sem), sem, 0.0)
        stacked = np.concatenate([attn - sem, attn + sem, fitted], axis=1)
        finite = np.isfinite(stacked)
        lo = np.where(finite.any(axis=1), np.where(finite, stacked, np.inf).min(axis=1), 0.0)
        hi = np.where(finite.any(axis=1), np.where(finite, stacked, -np.inf).max(axis=1), 1.0)
        locator = MaxNLocator(nbins=3)
        frames, zero, y_low, y_span = [], [], np.empty(self.n_heads), np.empty(self.n_heads)
        # One loop over panels for tick values and text only (nice limits differ per panel); the
        # curves of all panels are built below in one vectorized step.
        for h in panels:
            ticks = locator.tick_values(lo[h], hi[h] if hi[h] > lo[h] else lo[h] + 1.0)
            y_low[h], y_span[h] = ticks[0], ticks[-1] - ticks[0]
            x0, y0, w = self._x0[h], self._y0[h], self._panel_w
            frames += [[(x0, y0), (x0, y0 + self._panel_h)], [(x0, y0), (x0 + w, y0)]]
            for tick in ticks:
                y = y0 + (tick - ticks[0]) / y_span[h] * self._panel_h
                frames.append([(x0 - 0.006, y), (x0, y)])
                self._texts.append(self._ax.text(x0 - 0.009, y, f"{tick:.4g}", ha="right", va="center",
                                                 fontsize=5))
            for lag, x_lag in zip(self.lags, x[h]):
                if lag == 0 or lag == self.lags[0] or lag == self.lags[-1]:
                    frames.append([(x_lag, y0), (x_lag, y0 - 0.006)])
                    if h + self.n_cols >= self.n_heads:  # bottom panel of its column
                        self._texts.append(self._ax.text(x_lag, y0 - 0.01, f"{lag:g}", ha="center", va="top",
                                                         fontsize=5))
                if lag == 0:
                    zero.append([(x_lag, y0), (x_lag, y0 + self._panel_h)])
            if np.isfinite(distance[h]):
                be, br, gf = params[h]
                text = f"{labels[h]}  D={distance[h]:.2g}\n({be:.2g}, {br:.2g}, {gf:.2g})"
            else:
                text = f"{labels[h]}  no fit"
            self._texts.append(self._ax.text(x0 + w / 2, y0 + self._panel_h + 0.004, text, ha="center",
                                             va="bottom", fontsize=5.5))
        to_y = lambda v: self._y0[:, None] + (v - y_low[:, None]) / y_span[:, None] * self._panel_h  # noqa: E731
        gap = np.full((self.n_heads, 1), np.nan)
        self._attn.set_data(np.hstack([x, gap]).ravel(), np.hstack([to_y(attn), gap]).ravel())
        self._fit.set_data(np.hstack([x, gap]).ravel(), np.hstack([to_y(fitted), gap]).ravel())
        bars = np.stack([np.stack([x, to_y(attn - sem)], -1), np.stack([x, to_y(attn + sem)], -1)], axis=2)
        bars = bars.reshape(-1, 2, 2)
        self._errors.set_segments(bars[np.isfinite(bars).all(axis=(1, 2)) & (bars[:, 0, 1] != bars[:, 1, 1])])
        self._frames.set_segments(frames)
        self._zero.set_segments(zero)
        self._title.set_text(title)


def plot_layer_fits(labels: Sequence[str], lags: np.ndarray, attn: np.ndarray, attn_sem: np.ndarray,
                    fitted: np.ndarray, distance: np.ndarray, params: np.ndarray,
                    title: str = "", n_cols: Optional[int] = None) -> Figure:
    """Each head of one layer: attention CRP (SEM bars) and its CMR fit on the same scale ([LI24] Fig 5).

    One page of :class:`LayerFitPages`, as a Figure (for notebooks; scripts drawing many layers use
    :class:`LayerFitPages` directly, which reuses one figure).

    Parameters
    ----------
    labels : sequence of str, length H
    lags : ndarray, shape [K]
    attn, attn_sem : ndarray, shape [H, K]
        Attention CRP (pre-softmax scores) and its SEM on the fitting lags.
    fitted : ndarray, shape [H, K]
        The fitted CMR CRP mapped to the attention scale (``s c~ + min a``).
    distance : ndarray, shape [H]
    params : ndarray, shape [H, 3]
    title : str
    n_cols : int, optional
        Panels per row (default: about sqrt(2 H)).
    """
    pages = LayerFitPages(len(labels), lags, n_cols)
    pages.draw(labels, attn, attn_sem, fitted, distance, params, title)
    return pages.figure


def plot_distance_vs_matching(distance: np.ndarray, matching: np.ndarray, copying: np.ndarray,
                              threshold: float, title: str = "") -> Figure:
    """CMR distance against matching score, coloured by copying-score sign, and a D histogram (Fig 5/6a).

    Parameters
    ----------
    distance, matching, copying : ndarray, shape [N]
        One entry per head (NaN distances are not drawn).
    threshold : float
        Drawn as a vertical line (D below it: CMR-like).
    """
    fig, axes = plt.subplots(2, 1, figsize=(3.4, 4.4), sharex=True)
    finite = np.isfinite(distance)
    positive = finite & (copying > 0)
    negative = finite & ~(copying > 0)
    axes[0].scatter(distance[positive], matching[positive], s=8, alpha=0.5, color="tab:blue", label="copying score > 0")
    axes[0].scatter(distance[negative], matching[negative], s=8, alpha=0.5, color="tab:red", label="copying score <= 0")
    axes[0].set_ylabel("induction-head\nmatching score", fontsize=_SMALL)
    axes[0].legend(fontsize=6, frameon=False)
    axes[1].hist(distance[finite], bins=25, color="grey")
    axes[1].set_xlabel("CMR distance D", fontsize=_SMALL)
    axes[1].set_ylabel("number of heads", fontsize=_SMALL)
    for ax in axes:
        ax.axvline(threshold, color="k", ls="--", lw=0.7)
        _style(ax)
    if title:
        axes[0].set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_inverse_temperature_vs_matching(inverse_temperature: np.ndarray, matching: np.ndarray,
                                         copying: np.ndarray, title: str = "") -> Figure:
    """Fitted 1/tau against matching score (coloured by copying-score sign) and its histogram.

    Parameters
    ----------
    inverse_temperature, matching, copying : ndarray, shape [N]
    """
    fig, axes = plt.subplots(2, 1, figsize=(3.4, 4.4), sharex=True)
    finite = np.isfinite(inverse_temperature)
    positive = finite & (copying > 0)
    negative = finite & ~(copying > 0)
    axes[0].scatter(inverse_temperature[positive], matching[positive], s=8, alpha=0.5, color="tab:blue",
                    label="copying score > 0")
    axes[0].scatter(inverse_temperature[negative], matching[negative], s=8, alpha=0.5, color="tab:red",
                    label="copying score <= 0")
    axes[0].set_ylabel("induction-head\nmatching score", fontsize=_SMALL)
    axes[0].legend(fontsize=6, frameon=False)
    axes[1].hist(inverse_temperature[finite], bins=25, color="grey")
    axes[1].set_xlabel(_INV_TEMP_LABEL, fontsize=_SMALL)
    axes[1].set_ylabel("number of heads", fontsize=_SMALL)
    for ax in axes:
        _style(ax)
    if title:
        axes[0].set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- Fig 6: by layer

def plot_percent_by_layer(positions: Mapping[str, np.ndarray], percents: Mapping[str, np.ndarray],
                          ylabel: str, title: str = "") -> Figure:
    """% CMR-like heads against relative layer position, one curve per entry ([LI24] Fig 6).

    Parameters
    ----------
    positions : mapping of name to ndarray, shape [L_name]
        Relative layer position (%) of each layer.
    percents : mapping of name to ndarray, shape [L_name]
        % of the layer's heads below the threshold.
    ylabel : str
        E.g. "% heads with D < 0.5".
    """
    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    colors = _colors(len(percents), "tab10" if len(percents) <= 10 else "viridis")
    for color, name in zip(colors, percents):
        ax.plot(positions[name], percents[name], marker="o", markersize=3, lw=1.2, color=color, label=name)
    ax.set_xlim(0, 100)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("relative layer position (%)", fontsize=_SMALL)
    ax.set_ylabel(ylabel, fontsize=_SMALL)
    ax.legend(fontsize=6, frameon=False, bbox_to_anchor=(1.01, 0.5), loc="center left")
    _style(ax)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_layer_summaries(positions: Mapping[str, np.ndarray], params: Mapping[str, LayerSummary],
                         inverse_temperature: Mapping[str, LayerSummary], threshold: float,
                         title: str = "") -> Figure:
    """Fitted parameters and 1/tau of CMR-like heads by relative layer position, one curve per model.

    Parameters
    ----------
    positions : mapping of name to ndarray, shape [L]
    params : mapping of name to LayerSummary with arrays of shape [L, 3]
    inverse_temperature : mapping of name to LayerSummary with arrays of shape [L]
    threshold : float
        The D threshold used for the mask (for the title).
    """
    fig, axes = plt.subplots(1, 4, figsize=(11, 2.6))
    colors = _colors(len(params), "tab10" if len(params) <= 10 else "viridis")
    for color, name in zip(colors, params):
        x = positions[name]
        for p in range(3):
            summary = params[name]
            axes[p].plot(x, summary.mean[:, p], color=color, lw=1.2, marker="o", markersize=2, label=name)
            axes[p].fill_between(x, summary.minimum[:, p], summary.maximum[:, p], color=color, alpha=0.15, lw=0)
        inv = inverse_temperature[name]
        axes[3].plot(x, inv.mean, color=color, lw=1.2, marker="o", markersize=2, label=name)
    for p, ax in enumerate(axes):
        ax.set_xlim(0, 100)
        ax.set_xlabel("relative layer position (%)", fontsize=_SMALL)
        ax.set_ylabel(("mean " + _PARAM_LABELS[p]) if p < 3 else "mean " + _INV_TEMP_LABEL, fontsize=_SMALL)
        if p < 3:
            ax.set_ylim(-0.02, 1.02)
        _style(ax)
    axes[3].legend(fontsize=6, frameon=False, bbox_to_anchor=(1.01, 0.5), loc="center left")
    fig.suptitle(title or f"heads with D < {threshold} (band: min-max)", fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- Fig 7: training

def plot_percent_over_training(steps: np.ndarray, percent: np.ndarray, ylabel: str, title: str = "") -> Figure:
    """% CMR-like heads of each layer over training checkpoints ([LI24] Fig 7, S2).

    Parameters
    ----------
    steps : ndarray, shape [T]
        Training step of each checkpoint.
    percent : ndarray, shape [T, L]
    """
    n_layers = percent.shape[1]
    fig, ax = plt.subplots(figsize=(4.6, 2.8))
    for layer, color in enumerate(_colors(n_layers, "plasma")):
        ax.plot(steps, percent[:, layer], color=color, lw=1.2, marker="o", markersize=2, label=f"L{layer}")
    ax.set_xscale("log")
    ax.set_xlabel("training step", fontsize=_SMALL)
    ax.set_ylabel(ylabel, fontsize=_SMALL)
    ax.legend(fontsize=6, frameon=False, ncol=max(1, n_layers // 12), bbox_to_anchor=(1.01, 0.5), loc="center left")
    _style(ax)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_layer_summary_over_training(steps: np.ndarray, params: LayerSummary, inverse_temperature: LayerSummary,
                                     title: str = "") -> Figure:
    """Mean fitted parameters and 1/tau of each layer's selected heads over training ([LI24] Fig 7b).

    Parameters
    ----------
    steps : ndarray, shape [T]
    params : LayerSummary with arrays of shape [T, L, 3]
    inverse_temperature : LayerSummary with arrays of shape [T, L]
    """
    n_layers = inverse_temperature.mean.shape[1]
    fig, axes = plt.subplots(1, 4, figsize=(11, 2.6))
    for layer, color in enumerate(_colors(n_layers, "plasma")):
        for p in range(3):
            axes[p].plot(steps, params.mean[:, layer, p], color=color, lw=1, marker="o", markersize=2)
        axes[3].plot(steps, inverse_temperature.mean[:, layer], color=color, lw=1, marker="o", markersize=2,
                     label=f"L{layer}")
    for p, ax in enumerate(axes):
        ax.set_xscale("log")
        ax.set_xlabel("training step", fontsize=_SMALL)
        ax.set_ylabel(("mean " + _PARAM_LABELS[p]) if p < 3 else "mean " + _INV_TEMP_LABEL, fontsize=_SMALL)
        if p < 3:
            ax.set_ylim(-0.02, 1.02)
        _style(ax)
    axes[3].legend(fontsize=6, frameon=False, ncol=max(1, n_layers // 12), bbox_to_anchor=(1.01, 0.5),
                   loc="center left")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_selection_over_training(steps: np.ndarray, series: Mapping[str, Mapping[str, Tuple[np.ndarray, np.ndarray]]],
                                 quantities: Sequence[str], title: str = "") -> Figure:
    """Mean (+- SEM) of quantities of top-N head sets over training ([LI24] Fig 7c-f).

    Parameters
    ----------
    steps : ndarray, shape [T]
    series : mapping row name -> mapping set name -> (mean [T, Q], sem [T, Q])
        Rows, e.g. "top CMR-like heads" and "top induction heads"; sets, e.g. "top 20".
    quantities : sequence of str, length Q
        Column titles (e.g. "CMR distance", beta_enc, ...).
    """
    rows = list(series)
    fig, axes = plt.subplots(len(rows), len(quantities), figsize=(2.4 * len(quantities), 2.2 * len(rows)),
                             squeeze=False, sharex=True)
    for r, row in enumerate(rows):
        sets = list(series[row])
        for color, name in zip(_colors(len(sets), "viridis"), sets):
            mean, sem = series[row][name]
            for q in range(len(quantities)):
                ax = axes[r, q]
                ax.plot(steps, mean[:, q], color=color, lw=1.2, label=name)
                ax.fill_between(steps, mean[:, q] - sem[:, q], mean[:, q] + sem[:, q], color=color, alpha=0.2, lw=0)
        axes[r, 0].set_title(row, fontsize=8, loc="left")
        axes[r, -1].legend(fontsize=6, frameon=False, bbox_to_anchor=(1.01, 0.5), loc="center left")
    for q, name in enumerate(quantities):
        for r in range(len(rows)):
            axes[r, q].set_ylabel(name, fontsize=_SMALL)
            axes[r, q].set_xscale("log")
            _style(axes[r, q])
        axes[-1, q].set_xlabel("training step", fontsize=_SMALL)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_selection_vs_human(points: Mapping[str, np.ndarray], human: Mapping[str, Tuple[float, float]],
                            title: str = "",
                            converted: Optional[Mapping[str, Tuple[float, float, float]]] = None) -> Figure:
    """Fitted (beta_enc, beta_rec) of selected heads beside human CMR fits ([LI24] Fig 7).

    Parameters
    ----------
    points : mapping of set name -> ndarray, shape [n, 2]
        (beta_enc, beta_rec) of each selected head; each set's mean is drawn as a diamond.
    human : mapping of study -> (beta_enc, beta_rec)
        The human fits as published (standard CMR's B_enc, B_rec), drawn as [LI24] draw them.
    title : str
    converted : mapping of study -> (beta_enc, beta_rec_low, beta_rec_high), optional
        The same fits on [LI24]'s scale (:func:`icl_cmr.cmr.literature.literature_ranges`): when given, a second
        panel draws the heads against them, beta_enc exact and beta_rec as the range a standard retrieval rate spans
        over the overlap ``t . t_in`` in [0, 1] (a bar; a star at ``t . t_in = 0``), and the first panel is titled
        as published. None: the published panel alone.
    """
    panels = [("as published ([LI24] Fig 7): standard CMR's\n"
               r"($B_{\rm enc}$, $B_{\rm rec}$) drawn on [LI24]'s axes", human, None)]
    if converted is not None:
        panels.append((r"converted to [LI24]'s scale: $\beta_{\rm enc} = 1 - \sqrt{1 - B_{\rm enc}^2}$;" "\n"
                       r"bar: $\beta_{\rm rec}$ of $B_{\rm rec}$ over $t \cdot t_{\rm in} \in [0, 1]$, star at 0",
                       {study: values[:2] for study, values in converted.items()}, converted))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1.4, 3.5), squeeze=False, sharey=True)
    colors = [matplotlib.colormaps["tab10"](i % 10) for i in range(len(points))]
    for ax, (panel_title, stars, ranges) in zip(axes[0], panels):
        rng = np.random.default_rng(0)  # jitter only, so heads on the same grid point stay visible
        for color, name in zip(colors, points):
            xy = np.asarray(points[name], dtype=float)
            xy = xy[np.isfinite(xy).all(axis=1)]
            jitter = rng.uniform(-0.01, 0.01, size=xy.shape)
            ax.scatter(xy[:, 0] + jitter[:, 0], xy[:, 1] + jitter[:, 1], s=9, alpha=0.45, color=color, label=name)
            if len(xy):
                ax.scatter([xy[:, 0].mean()], [xy[:, 1].mean()], s=60, marker="D", color=color, edgecolor="k",
                           lw=0.6, zorder=6)
        for study, (be, br) in stars.items():
            if ranges is not None:
                _, low, high = ranges[study]
                ax.plot([be, be], [low, high], color="tab:red", lw=1.2, zorder=4)
            ax.scatter([be], [br], marker="*", s=70, color="tab:red", edgecolor="k", lw=0.4, zorder=5)
            ax.annotate(study, (be, br), fontsize=5, xytext=(3, 3), textcoords="offset points")
        ax.set_xlim(0, 1.05)
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel(_PARAM_LABELS[0], fontsize=_SMALL + 1)
        if len(panels) > 1:
            ax.set_title(panel_title, fontsize=6)
        _style(ax)
    axes[0, 0].set_ylabel(_PARAM_LABELS[1], fontsize=_SMALL + 1)
    last = axes[0, -1]
    last.scatter([], [], s=60, marker="D", color="w", edgecolor="k", lw=0.6, label="set mean")
    last.scatter([], [], marker="*", s=70, color="tab:red", edgecolor="k", lw=0.4, label="human fits")
    last.legend(fontsize=6, frameon=False, bbox_to_anchor=(1.01, 0.5), loc="center left")
    if title and len(panels) > 1:
        fig.suptitle(title, fontsize=8)
    elif title:
        axes[0, 0].set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_selection_bars(groups: Mapping[str, Mapping[str, Tuple[np.ndarray, np.ndarray]]],
                        quantities: Sequence[str], title: str = "") -> Figure:
    """Bars of mean (+- SEM) per top-N set, grouped by model (models without checkpoints).

    Parameters
    ----------
    groups : mapping model -> mapping set name -> (mean [Q], sem [Q])
    quantities : sequence of str, length Q
    """
    models = list(groups)
    sets = list(dict.fromkeys(name for model in models for name in groups[model]))
    fig, axes = plt.subplots(1, len(quantities), figsize=(2.6 * len(quantities), 2.6), squeeze=False)
    width = 0.8 / max(len(sets), 1)
    x = np.arange(len(models))
    for s, (color, name) in enumerate(zip(_colors(len(sets), "viridis"), sets)):
        for q, ax in enumerate(axes[0]):
            mean = np.array([groups[m][name][0][q] if name in groups[m] else np.nan for m in models])
            sem = np.array([groups[m][name][1][q] if name in groups[m] else np.nan for m in models])
            ax.bar(x + (s - (len(sets) - 1) / 2) * width, mean, width=width, yerr=sem, color=color,
                   capsize=1.5, error_kw={"elinewidth": 0.6}, label=name)
    for q, ax in enumerate(axes[0]):
        ax.set_xticks(x, models, fontsize=6, rotation=20)
        ax.set_ylabel(quantities[q], fontsize=_SMALL)
        _style(ax)
    axes[0, -1].legend(fontsize=6, frameon=False, bbox_to_anchor=(1.01, 0.5), loc="center left")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- Fig 4: CRPs

def plot_reference_crps(lags: np.ndarray, cmr_curves: Mapping[str, Tuple[np.ndarray, Optional[np.ndarray]]],
                        human_lags: np.ndarray, human_mean: np.ndarray, human_sem: np.ndarray,
                        human_label: str) -> Figure:
    """CMR reference CRPs ([LI24] Fig 4b-e) beside the human conditional lag-CRP (Fig 4a).

    Parameters
    ----------
    lags : ndarray, shape [K]
    cmr_curves : mapping title -> (crp [K], sem [K] or None)
        CMR "CRP" = normalised histogram of transition lags (repeats allowed).
    human_lags, human_mean, human_sem : ndarray, shape [K_h]
        Conditional lag-CRP (transitions made / possible), mean and SEM over subjects.
    human_label : str
    """
    n = len(cmr_curves) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.1 * n, 2.3))
    axes[0].errorbar(human_lags, human_mean, yerr=human_sem, color="k", marker="o", markersize=2, lw=1, capsize=1)
    axes[0].set_title(human_label, fontsize=7)
    axes[0].set_ylabel("conditional lag-CRP\n(made / possible)", fontsize=_SMALL)
    for ax, (name, (crp, sem)) in zip(axes[1:], cmr_curves.items()):
        ax.errorbar(lags, crp, yerr=sem, color="k", marker="o", markersize=2, lw=1, capsize=1)
        ax.set_title(name, fontsize=7)
    axes[1].set_ylabel("CMR CRP\n(lag histogram, normalised)", fontsize=_SMALL)
    for ax in axes:
        ax.axvline(0, color="grey", lw=0.5, ls="--")
        ax.set_xlabel("lag", fontsize=_SMALL)
        ax.set_ylim(bottom=0)
        _style(ax)
    fig.tight_layout()
    return fig
