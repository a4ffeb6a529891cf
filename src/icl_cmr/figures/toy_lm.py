"""Figures of the toy model's training (DESIGN.md section 9). ``plot_*`` functions only: results in, Figure out.

The caller picks the backend, saves and closes the figure.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def plot_training_log(log: Sequence[Mapping[str, object]], title: str = "") -> Figure:
    """Training loss and best-head matching score against step (two panels).

    Parameters
    ----------
    log : sequence of dict
        :attr:`icl_cmr.toy_lm.training.TrainingResult.log` rows (``step``, ``train_loss`` and
        ``matching_L{l}H{h}`` for every head).
    title : str
        Figure title; none when empty.

    Returns
    -------
    matplotlib.figure.Figure
    """
    steps = np.array([row["step"] for row in log])
    loss = np.array([row["train_loss"] for row in log])
    head_keys = sorted(key for key in log[0] if key.startswith("matching_L"))
    fig, (ax_loss, ax_match) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(steps, loss, color="k")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (nats / token)")
    ax_loss.set_title("loss")
    for key in head_keys:
        layer = int(key.split("L")[1].split("H")[0])
        ax_match.plot(steps, [row[key] for row in log], label=key.replace("matching_", ""), lw=1,
                      ls="-" if layer % 2 else "--")
    ax_match.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax_match.set_xlabel("step")
    ax_match.set_ylabel("induction matching score")
    ax_match.set_ylim(0, 1)
    ax_match.set_title("matching score per head")
    ax_match.legend(fontsize=6, ncol=2, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_training_run(log: Sequence[Mapping[str, object]], seed: int, steps: int,
                      evaluation: Mapping[str, object]) -> Figure:
    """:func:`plot_training_log` titled with the run's seed, steps, best head and held-out ICL score.

    Parameters
    ----------
    log : sequence of dict
        The training log rows.
    seed, steps : int
        The run's seed and the optimiser steps it took.
    evaluation : mapping
        The final evaluation (:func:`icl_cmr.toy_lm.evaluation.evaluate_model_dir`): ``best_head``,
        ``best_matching_score``, ``icl_score_mean``.

    Returns
    -------
    matplotlib.figure.Figure
        The loss curve the script saves as ``loss_curve.pdf``.
    """
    return plot_training_log(log, title=(
        f"toy LM, seed {seed}: {steps} steps; best head {evaluation['best_head']} "
        f"{evaluation['best_matching_score']:.2f}; held-out ICL {evaluation['icl_score_mean']:.2f}"))
