"""Figures of the ablation experiment ([LI24] Fig 8). ``plot_*`` functions only: results in, Figure out.

The caller saves and closes the figure. Statistics come from :mod:`icl_cmr.stats`.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure  # noqa: E402

#: Display names and colours of the conditions.
CONDITION_LABELS = {"original": "Intact", "ablated": "Top CMR-like\nablated", "ablated_rand": "Random\nablated"}
CONDITION_COLORS = {"original": "0.55", "ablated": "tab:red", "ablated_rand": "tab:blue"}


def _style(ax) -> None:
    ax.tick_params(axis="both", labelsize=8)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def plot_icl_score_bars(means: Mapping[str, float], sems: Mapping[str, float],
                        brackets: Sequence[tuple] = (), title: str = "",
                        labels: Optional[Mapping[str, str]] = None) -> Figure:
    """Mean ICL score per condition with SEM bars and significance brackets.

    Parameters
    ----------
    means, sems : mapping of condition -> float
        Bars in the mapping's order.
    brackets : sequence of (condition_a, condition_b, stars)
        Pairs to mark (stars from :func:`icl_cmr.stats.significance_stars`).
    title : str
    labels : mapping of condition -> str, optional
        Tick labels (default :data:`CONDITION_LABELS`, else the condition name).
    """
    labels = {**CONDITION_LABELS, **(labels or {})}
    names = list(means)
    x = np.arange(len(names))
    heights = np.array([means[n] for n in names])
    errors = np.array([sems[n] for n in names])
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 1.2, 3.2))
    ax.bar(x, heights, yerr=errors, capsize=4, width=0.65,
           color=[CONDITION_COLORS.get(n, "0.7") for n in names], edgecolor="black", linewidth=0.6)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(x, [labels.get(n, n) for n in names])
    ax.set_ylabel("ICL score (loss late - loss early)", fontsize=8)
    top = float(np.max(np.maximum(heights + errors, 0)))
    low = float(np.min(np.minimum(heights - errors, 0)))
    step = 0.09 * max(top - low, 1e-6)
    level = top + step
    # short brackets first, so longer ones stack above them
    for name_a, name_b, stars in sorted(brackets, key=lambda b: abs(names.index(b[0]) - names.index(b[1]))):
        xa, xb = sorted((names.index(name_a), names.index(name_b)))
        ax.plot([xa, xa, xb, xb], [level - step * 0.3, level, level, level - step * 0.3], color="black", linewidth=0.8)
        ax.text((xa + xb) / 2, level, stars, ha="center", va="bottom", fontsize=9)
        level += step * 1.4
    ax.set_ylim(low - step * 0.5, level + step * 0.3)
    if title:
        ax.set_title(title, fontsize=9)
    _style(ax)
    fig.tight_layout()
    return fig


def plot_loss_by_position(loss_mean: Mapping[str, np.ndarray], loss_sem: Mapping[str, np.ndarray],
                          marked_indices: Sequence[int] = (), title: str = "",
                          labels: Optional[Mapping[str, str]] = None) -> Figure:
    """Mean next-token loss by token index for each condition, with SEM bands.

    Parameters
    ----------
    loss_mean, loss_sem : mapping of condition -> numpy.ndarray [seq_len - 1]
    marked_indices : sequence of int
        Loss indices to mark with dashed lines (the ICL score's early and late index).
        Index 0 is not drawn (logarithmic x axis).
    title : str
    labels : mapping of condition -> str, optional
    """
    labels = {**{k: v.replace("\n", " ") for k, v in CONDITION_LABELS.items()}, **(labels or {})}
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for name, mean in loss_mean.items():
        # index 0 (predicted from BOS alone) is left out: the x axis is logarithmic, as in [OL22]
        index = np.arange(1, mean.size)
        color = CONDITION_COLORS.get(name)
        ax.plot(index, mean[1:], color=color, linewidth=1.0, label=labels.get(name, name))
        sem = loss_sem.get(name)
        if sem is not None:
            ax.fill_between(index, mean[1:] - sem[1:], mean[1:] + sem[1:], color=color or "0.5", alpha=0.25,
                            linewidth=0)
    for index in marked_indices:
        ax.axvline(index, color="black", linestyle="--", linewidth=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("token index (loss of predicting the next token)", fontsize=8)
    ax.set_ylabel("mean loss (nats)", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    _style(ax)
    fig.tight_layout()
    return fig
