"""Figures of [GD23]'s synthetic induction-heads task (DESIGN.md section 7): results in, Figure out.

Accuracy against length beside [GD23]'s Table 11 rows (:func:`plot_accuracy_vs_length`), training
curves (:func:`plot_training_curves`), attention by lag of one layer's heads (:func:`plot_lag_crp_panels`),
recall against distance (:func:`plot_accuracy_vs_distance`) and accuracy against training step, one line per
length (:func:`plot_accuracy_vs_step`). Each takes what :mod:`icl_cmr.experiments.induction_train` /
:mod:`icl_cmr.experiments.induction_eval` / :mod:`icl_cmr.experiments.induction_growth` compute; the caller
saves and closes the figure.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from icl_cmr.stats import wilson_interval
from icl_cmr.synthetic.task import GD23_REFERENCE_ROWS, VOCAB_SIZE


def plot_accuracy_vs_length(results: "Dict[str, Dict[str, np.ndarray]]", train_length: int = 256,
                            reference: Optional[Dict[str, Dict[int, float]]] = None, ax=None,
                            title: Optional[str] = None) -> Figure:
    """Accuracy with Wilson intervals against log2 length, one line per model.

    Parameters
    ----------
    results : dict
        ``{model name: {"length": [n], "accuracy": [n], "low": [n], "high": [n]}}``.
    train_length : int
        Drawn as a vertical mark.
    reference : dict, optional
        ``{label: {length: accuracy %}}``, drawn as dashed reference lines (default:
        :data:`GD23_REFERENCE_ROWS`, [GD23]'s MHA-Abs and Mamba rows, trained at 2^8).
    title : str, optional
        Figure title (default names the task).

    Returns
    -------
    matplotlib.figure.Figure
    """
    reference = GD23_REFERENCE_ROWS if reference is None else reference
    if ax is None:
        fig, ax = plt.subplots(figsize=(8.0, 4.0))
    else:
        fig = ax.figure
    for name, res in results.items():
        x = np.log2(np.asarray(res["length"], dtype=float))
        acc = 100 * np.asarray(res["accuracy"], dtype=float)
        err = np.vstack([acc - 100 * np.asarray(res["low"]), 100 * np.asarray(res["high"]) - acc])
        ax.errorbar(x, acc, yerr=err, marker="o", ms=3.5, capsize=2.5, lw=1.3, label=f"ours, {name}")
    for (label, row), style in zip(reference.items(), ("k--", "k:", "k-.")):
        lengths = sorted(row)
        ax.plot(np.log2(np.array(lengths, dtype=float)), [row[k] for k in lengths], style, marker="x", lw=1.0,
                label=label)
    ax.axvline(np.log2(train_length), color="grey", lw=0.8, ls=":")
    ax.text(np.log2(train_length) + 0.1, 50, f"train length {train_length}", rotation=90,
            va="center", fontsize=8, color="grey")
    ax.set_xlabel("log2 sequence length")
    ax.set_ylabel("accuracy at last position (%)")
    ax.set_ylim(-3, 103)
    n_values = VOCAB_SIZE - 1   # chance: a uniform guess among the non-trigger ids
    ax.axhline(100 / n_values, color="grey", lw=0.6, ls="-.")
    ax.text(ax.get_xlim()[1], 100 / n_values + 1.5, f"chance 1/{n_values}", ha="right", fontsize=7, color="grey")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # outside: no data hidden
    ax.set_title(title or "Induction-heads task: length generalization (2 layers, d_model 64)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_training_curves(curves: "Dict[str, Dict[str, np.ndarray]]", target_accuracy: float = 0.99,
                         train_length: int = 256) -> Figure:
    """Training loss and validation accuracy at the training length against step.

    Parameters
    ----------
    curves : dict
        ``{encoding: {"step": [n], "train_loss": [n], "val_accuracy": [n]}}``, optionally with
        ``"length": [n]``, the training length at each evaluation (a curriculum); its stage
        changes are marked and the accuracy is at that length.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, curve in curves.items():
        ax_loss.plot(curve["step"], curve["train_loss"], lw=1.0, label=name)
        line, = ax_acc.plot(curve["step"], 100 * np.asarray(curve["val_accuracy"]), lw=1.0, label=name)
        lengths = np.asarray(curve.get("length", []))
        for index in np.flatnonzero(lengths[1:] != lengths[:-1]) + 1:   # curriculum stage starts
            step = curve["step"][index - 1]
            for ax in (ax_loss, ax_acc):
                ax.axvline(step, color=line.get_color(), lw=0.6, ls="--", alpha=0.6)
            # x in data, y in axes coordinates: the label stays inside whatever the accuracy range.
            ax_acc.text(step, 0.02, f" L={int(lengths[index])}", fontsize=6, color=line.get_color(), rotation=90,
                        transform=ax_acc.get_xaxis_transform(),
                        va="bottom")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("train loss (mean since last eval)")
    ax_loss.set_yscale("log")
    n_values = VOCAB_SIZE - 1   # chance: uniform over the non-trigger ids
    ax_loss.axhline(np.log(n_values), color="grey", lw=0.8, ls=":")
    ax_loss.text(ax_loss.get_xlim()[0], np.log(n_values), f" chance: ln {n_values}", va="bottom", fontsize=7,
                 color="grey")
    ax_acc.axhline(100 * target_accuracy, color="grey", lw=0.8, ls=":")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel(f"validation accuracy (%), at {train_length}\nor the curriculum stage's length")
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_lag_crp_panels(stats: "Dict[str, dict]", encoding: str, layer: int = 1) -> Figure:
    """Attention by lag of every head of one layer, one panel per prompt kind.

    Parameters
    ----------
    stats : dict
        ``{kind: {"lags": [n_lags], "mean": [layer, head, n_lags], "sem": same}}`` from
        :func:`lag_attention`; kinds drawn in the dict's order.
    encoding : str
        For the title.
    layer : int
        0-based layer to draw (1 = the second layer).

    Returns
    -------
    matplotlib.figure.Figure
    """
    titles = {"task": "task prompts: query = final trigger,\nlag 0 = first trigger, +1 = the value",
              "repeated": "15 distinct tokens repeated: queries in\nthe 2nd repeat, keys in the 1st"}
    fig, axes = plt.subplots(1, len(stats), figsize=(4.6 * len(stats), 3.6), squeeze=False)
    for ax, (kind, res) in zip(axes[0], stats.items()):
        lags = np.asarray(res["lags"])
        mean, sem = np.asarray(res["mean"]), np.asarray(res["sem"])
        for head in range(mean.shape[1]):
            ax.errorbar(lags, mean[layer, head], yerr=np.nan_to_num(sem[layer, head]), marker="o", ms=3,
                        lw=1.0, capsize=2, label=f"L{layer}H{head}")
        ax.axvline(1, color="grey", lw=0.6, ls=":")
        ax.set_xlabel("lag (key position - earlier occurrence)")
        ax.set_ylabel("attention probability")
        ax.set_title(titles.get(kind, kind), fontsize=8)
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{encoding} model, layer {layer} (0-based): attention by lag", fontsize=9)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_distance(scores: "Dict[int, Dict[str, np.ndarray]]", name: str, n_bins: int = 6,
                              n_columns: Optional[int] = None) -> Figure:
    """Probability of the value against recall distance, one panel per sequence length.

    Parameters
    ----------
    scores : dict
        ``{length: score_by_distance(...) result}``.
    name : str
        The model's name, for the title.
    n_bins : int
        Equal-width bins of log2 distance for the binned accuracy (Wilson 95% intervals).
    n_columns : int, optional
        Panels per row (default: all in one row).

    Returns
    -------
    matplotlib.figure.Figure
    """
    n_columns = min(n_columns or len(scores), len(scores))
    n_rows = -(-len(scores) // n_columns)
    fig, axes = plt.subplots(n_rows, n_columns, figsize=(4.6 * n_columns, 3.6 * n_rows), squeeze=False)
    for ax in axes.flat[len(scores):]:     # a last row not filled
        ax.set_visible(False)
    for ax, (length, res) in zip(axes.flat, scores.items()):
        distance = np.asarray(res["distance"], dtype=float)
        correct = np.asarray(res["correct"], dtype=bool)
        p_value = np.asarray(res["p_value"], dtype=float)
        ax.scatter(distance[correct], 100 * p_value[correct], s=12, color="tab:blue", alpha=0.7,
                   label=f"correct ({correct.sum()})")
        ax.scatter(distance[~correct], 100 * p_value[~correct], s=14, color="tab:red", marker="x",
                   label=f"wrong ({(~correct).sum()})")
        edges = np.linspace(1.0, np.log2(length), n_bins + 1)
        which = np.clip(np.digitize(np.log2(distance), edges) - 1, 0, n_bins - 1)
        centres, accuracy, low, high = [], [], [], []
        for b in range(n_bins):
            members = which == b
            if members.any():
                lo, hi = wilson_interval(int(correct[members].sum()), int(members.sum()))
                centres.append(2 ** ((edges[b] + edges[b + 1]) / 2))
                accuracy.append(100 * correct[members].mean())
                low.append(100 * lo)
                high.append(100 * hi)
        accuracy = np.asarray(accuracy)
        ax.errorbar(centres, accuracy, yerr=[accuracy - np.asarray(low), np.asarray(high) - accuracy], color="k",
                    marker="s", ms=4, lw=1.0, capsize=2.5, label="accuracy per bin (Wilson 95%)")
        ax.set_xscale("log", base=2)
        ax.set_ylim(-3, 103)
        ax.axhline(100 / (VOCAB_SIZE - 1), color="grey", lw=0.6, ls="-.")
        ax.set_xlabel("distance from the first trigger to the query (tokens)")
        ax.set_ylabel("p(value) at the query (%); accuracy (%)")
        ax.set_title(f"length {length} (2^{int(np.log2(length))}), {len(distance)} sequences", fontsize=8)
        ax.legend(fontsize=6, loc="lower left")
    fig.suptitle(f"{name}: recall against distance", fontsize=9)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_step(curves: "Dict[int, Dict[str, np.ndarray]]", name: str = "",
                          log_steps: Optional[bool] = None, title: Optional[str] = None) -> Figure:
    """Accuracy against training step, one line per evaluation length, with Wilson 95% bands.

    Parameters
    ----------
    curves : dict
        ``{length: {"step": [n], "accuracy": [n], "low": [n], "high": [n], "n_sequences": [n]}}``
        (fractions; one entry per snapshot), drawn in increasing length.
    name : str
        The run's name, for the title.
    log_steps : bool, optional
        Logarithmic step axis (default: when every step is positive and they span a factor of 16 or more).
    title : str, optional
        Figure title (default names the run).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, max(len(curves), 1)))
    all_steps = []
    for colour, length in zip(colours, sorted(curves)):
        res = curves[length]
        order = np.argsort(np.asarray(res["step"], dtype=float))
        steps = np.asarray(res["step"], dtype=float)[order]
        acc, low, high = (100 * np.asarray(res[key], dtype=float)[order] for key in ("accuracy", "low", "high"))
        counts = np.asarray(res["n_sequences"], dtype=int)
        n_text = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"
        ax.plot(steps, acc, marker="o", ms=3.5, lw=1.3, color=colour,
                label=f"2^{int(round(np.log2(length)))} (n = {n_text})")
        ax.fill_between(steps, low, high, color=colour, alpha=0.15, lw=0)
        all_steps.extend(steps)
    all_steps = np.asarray(all_steps)
    if log_steps is None:
        log_steps = all_steps.size > 0 and all_steps.min() > 0 and all_steps.max() >= 16 * all_steps.min()
    if log_steps:
        ax.set_xscale("log", base=2)
    n_values = VOCAB_SIZE - 1   # chance: a uniform guess among the non-trigger ids
    ax.axhline(100 / n_values, color="grey", lw=0.6, ls="-.")
    ax.text(0.99, 100 / n_values + 1.5, f"chance 1/{n_values}", ha="right", fontsize=7, color="grey",
            transform=ax.get_yaxis_transform())
    ax.set_ylim(-3, 103)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy at last position (%)")
    ax.legend(title="length", fontsize=7, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title or f"{name}: length generalization over training (Wilson 95% bands)".lstrip(": "), fontsize=9)
    fig.tight_layout()
    return fig


def plot_memory_horizon_vs_step(rows: "List[dict]", lengths: "List[int]", name: str = "",
                                recall: "Optional[List[dict]]" = None) -> Figure:
    """How long a Mamba's memory lasts against training step (:mod:`icl_cmr.synthetic.mamba_memory`).

    Parameters
    ----------
    rows : list of dict
        One per (snapshot, memory channel): ``step``, ``layer``, ``channel``, ``horizon``, ``median_horizon``
        (tokens).
    lengths : list of int
        Evaluation lengths, drawn as horizontal lines to compare with.
    name : str
        The run's name, for the title.
    recall : list of dict, optional
        One per snapshot: ``step``, ``log2_distance_50``, ``log2_distance_99``
        (:mod:`icl_cmr.synthetic.recall_distance`), drawn as the distances the model recalls at 50% and 99%.

    Returns
    -------
    matplotlib.figure.Figure
        Every memory channel's horizon (dots), the longest at each step (line), and the longest horizon the
        median filler step would give (dashed): what the rare large steps on fillers cost.
    """
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    steps = np.array(sorted({int(row["step"]) for row in rows}))
    ax.scatter([row["step"] for row in rows], [row["horizon"] for row in rows], s=9, color="0.6", zorder=2,
               label="each memory channel (mean step on fillers)")
    longest = [max(row["horizon"] for row in rows if row["step"] == step) for step in steps]
    longest_median = [max(row["median_horizon"] for row in rows if row["step"] == step) for step in steps]
    ax.plot(steps, longest, marker="o", ms=4, lw=1.5, color="C0", zorder=3, label="the longest")
    ax.plot(steps, longest_median, marker="s", ms=3, lw=1.0, ls="--", color="C1", zorder=3,
            label="the longest from the median step (no rare large steps)")
    for key, accuracy, colour in (("log2_distance_50", 50, "C2"), ("log2_distance_99", 99, "C3")):
        if recall:
            ax.plot([row["step"] for row in recall], [2.0 ** row[key] for row in recall], marker="^", ms=4,
                    lw=1.2, color=colour, zorder=3, label=f"distance recalled at {accuracy}% (fit)")
    for length in lengths:
        ax.axhline(length, color="grey", lw=0.5, ls=":")
        ax.text(1.0, length, f" 2^{int(round(np.log2(length)))}", fontsize=7, color="grey", va="center",
                transform=ax.get_yaxis_transform())
    ax.set_yscale("log", base=2)
    ax.set_xlabel("training step")
    ax.set_ylabel("tokens")
    what = "how far back it recalls, and how long each channel keeps the value"
    ax.set_title(f"{name}: {what}" if name else what, fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    return fig
