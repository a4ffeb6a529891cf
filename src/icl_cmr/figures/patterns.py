"""Figures of the pattern-matching experiment ([CS24]; DESIGN.md section 6). Results in, Figure out.

The caller saves and closes the figure; the accuracy table comes from
:func:`icl_cmr.experiments.pattern_icl.summarise` (``results.csv``).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def plot_accuracy_bars(results: pd.DataFrame, title: str = "") -> Figure:
    """Grouped bar chart: accuracy per task, one bar per condition, one panel per method.

    Parameters
    ----------
    results : pandas.DataFrame
        One row per task x condition: columns task, method, selection, ablate, draw,
        accuracy, ci_low, ci_high, chance. Random heads are drawn from their pooled row
        (``draw == "pooled"``).
    title : str

    Returns
    -------
    matplotlib.figure.Figure
        Bars with Wilson 95% intervals; a dashed line at each task's chance level.
    """
    rows = results[(results["ablate"] != "random") | (results["draw"] == "pooled")]
    tasks = list(dict.fromkeys(rows["task"]))
    intact = rows[rows["ablate"] == "none"]
    methods = [m for m in dict.fromkeys(rows["method"]) if m != "none"] or ["none"]
    fig, axes = plt.subplots(len(methods), 1, figsize=(max(7.0, 1.4 * len(tasks) + 3.5), 2.6 * len(methods)),
                             squeeze=False, sharex=True)
    for ax, method in zip(axes[:, 0], methods):
        panel = rows[rows["method"] == method] if method != "none" else rows.iloc[:0]
        series = [("intact", intact)] if len(intact) else []
        for selection in dict.fromkeys(panel["selection"]):
            for ablate in ("induction", "random"):
                chosen = panel[(panel["selection"] == selection) & (panel["ablate"] == ablate)]
                if len(chosen):
                    series.append((f"{selection} {ablate}", chosen))
        width = 0.8 / max(1, len(series))
        colors = plt.get_cmap("tab10").colors
        for index, (name, frame) in enumerate(series):
            frame = frame.set_index("task").reindex(tasks)
            x = np.arange(len(tasks)) - 0.4 + width * (index + 0.5)
            accuracy = frame["accuracy"].to_numpy(dtype=float)
            errors = np.vstack([accuracy - frame["ci_low"].to_numpy(dtype=float),
                                frame["ci_high"].to_numpy(dtype=float) - accuracy])
            ax.bar(x, accuracy, width, yerr=errors, capsize=2, label=name, color=colors[index % len(colors)])
        chance = rows.drop_duplicates("task").set_index("task").reindex(tasks)["chance"].to_numpy(dtype=float)
        for position, level in enumerate(chance):
            ax.hlines(level, position - 0.45, position + 0.45, colors="k", linestyles="--", linewidth=1,
                      label="chance" if position == 0 else None)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title} - {method} ablation" if method != "none" else title, fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[-1, 0].set_xticks(np.arange(len(tasks)))
    axes[-1, 0].set_xticklabels([t.replace("_", "\n", 1) for t in tasks], fontsize=8)
    fig.tight_layout()
    return fig
