"""How long a trained Mamba's memory lasts: the step sizes of its channels on filler tokens (issue 23).

To answer the induction task, a channel must write the token after the first trigger into its SSM
state and keep it until the query. Channel c at position t multiplies its state n by
exp(delta[t, c] * A[c, n]) (A < 0) and adds delta[t, c] * B[t, n] * x[t, c]
(:meth:`icl_cmr.synthetic.mamba.InductionMamba.step_sizes`). Over the d filler positions between
the write and the query, the state n keeps the fraction exp(-|A[c, n]| * sum of delta over them), so a
channel's **decay per token** is its mean step size on fillers times its smallest |A[c, n]| (its
slowest state: an upper bound on how long the channel can keep anything), and its **horizon**
1 / decay is the distance at which even that state has kept only 1/e. The mean, not the median, sets
it: the sum over d fillers is about d times the mean, and rare filler contexts with large steps
dominate the mean.

A **memory channel** writes at the target: its mean step size there is at least ``min_selectivity``
times its mean on fillers (our choice of 10: the trained models' memory channels are 10-1000 times
more selective, the others about 2). The model's memory horizon is the longest horizon among them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch

from icl_cmr.errors import InputError

#: A memory channel's step size at the target is at least this many times its mean on fillers (module docstring).
DEFAULT_MIN_SELECTIVITY = 10.0


@dataclass(frozen=True)
class ChannelMemory:
    """Step-size statistics of every channel of every layer, on a set of induction sequences.

    Attributes (arrays of shape [n_layers, d_inner])
    ----------
    target_step : mean step size at the target (the position after the first trigger)
    filler_step_mean, filler_step_median : step sizes at the fillers (every position but the first
        trigger, the target and the query)
    slowest_rate : the channel's smallest |A[c, n]|
    """

    target_step: np.ndarray
    filler_step_mean: np.ndarray
    filler_step_median: np.ndarray
    slowest_rate: np.ndarray

    @property
    def selectivity(self) -> np.ndarray:
        """Target step over mean filler step, [n_layers, d_inner]."""
        return self.target_step / self.filler_step_mean

    @property
    def decay_per_token(self) -> np.ndarray:
        """Mean filler step times the slowest rate, [n_layers, d_inner]: the slowest state's forgetting per token."""
        return self.filler_step_mean * self.slowest_rate

    @property
    def horizon(self) -> np.ndarray:
        """1 / :attr:`decay_per_token`, in tokens, [n_layers, d_inner]."""
        return 1.0 / self.decay_per_token

    def memory_channels(self, min_selectivity: float = DEFAULT_MIN_SELECTIVITY) -> List[Dict[str, float]]:
        """The channels that write at the target, longest horizon first.

        Returns
        -------
        list of dict
            ``layer``, ``channel``, ``selectivity``, ``target_step``, ``filler_step_mean``,
            ``filler_step_median``, ``slowest_rate``, ``decay_per_token``, ``horizon``,
            ``median_horizon`` (1 / (median filler step x slowest rate): what the horizon would be
            without the rare large steps).
        """
        if not np.isfinite(min_selectivity) or min_selectivity <= 0:
            raise InputError(f"`min_selectivity` must be a positive number, got {min_selectivity}",
                             parameters=("min_selectivity",))
        layers, channels = np.nonzero(self.selectivity >= min_selectivity)
        rows = [{"layer": int(layer), "channel": int(channel),
                 "selectivity": float(self.selectivity[layer, channel]),
                 "target_step": float(self.target_step[layer, channel]),
                 "filler_step_mean": float(self.filler_step_mean[layer, channel]),
                 "filler_step_median": float(self.filler_step_median[layer, channel]),
                 "slowest_rate": float(self.slowest_rate[layer, channel]),
                 "decay_per_token": float(self.decay_per_token[layer, channel]),
                 "horizon": float(self.horizon[layer, channel]),
                 "median_horizon": float(1.0 / (self.filler_step_median[layer, channel]
                                                * self.slowest_rate[layer, channel]))}
                for layer, channel in zip(layers, channels)]
        return sorted(rows, key=lambda row: -row["horizon"])


def channel_memory(model, tokens: torch.Tensor, trigger_positions: np.ndarray) -> ChannelMemory:
    """Step-size statistics of a Mamba's channels on induction sequences.

    Parameters
    ----------
    model : icl_cmr.synthetic.mamba.InductionMamba
    tokens : LongTensor, shape [B, L]
        Induction sequences: the trigger at ``trigger_positions`` and again at L - 1.
    trigger_positions : ndarray of int, shape [B]
        The first trigger of each sequence, in [0, L - 3].

    Returns
    -------
    ChannelMemory
    """
    batch, length = tokens.shape
    first = np.asarray(trigger_positions, dtype=np.int64)
    if first.shape != (batch,) or first.min() < 0 or first.max() > length - 3:
        raise InputError(f"`trigger_positions` must hold one first-trigger position in [0, {length - 3}] per "
                         f"sequence ({batch}), got shape {first.shape}", parameters=("trigger_positions",))
    rows = torch.arange(batch)
    first_t = torch.from_numpy(first)
    fillers = torch.ones(batch, length, dtype=torch.bool)
    fillers[rows, first_t] = False
    fillers[rows, first_t + 1] = False
    fillers[:, -1] = False
    targets, means, medians, rates = [], [], [], []
    for delta, block in zip(model.step_sizes(tokens.to(next(model.parameters()).device)), model.backbone.layers):
        delta = delta.cpu()
        on_fillers = delta[fillers]                                            # [n_fillers, d_inner]
        targets.append(delta[rows, first_t + 1].mean(0))
        means.append(on_fillers.mean(0))
        medians.append(on_fillers.median(0).values)
        rates.append(torch.exp(block.mixer.A_log.detach().float().cpu()).min(1).values)
    return ChannelMemory(*(torch.stack(values).numpy().astype(np.float64) for values in (targets, means, medians,
                                                                                          rates)))
