"""The conditional lag-CRP of CMR's own simulated recalls, defined as for people (issue 16).

The paper's CMR "CRP" (:mod:`icl_cmr.cmr.model`, DESIGN.md section 3) is a normalised histogram of the
lags between consecutive draws, repeats allowed. The free-recall literature's lag-CRP, which
``psifr`` computes for the human data (:mod:`icl_cmr.humans.recall`, DESIGN.md section 8), is a
conditional probability: for each lag, transitions made at that lag divided by transitions that
were possible at that lag, given the items not yet recalled. To fit people and heads with the same
model, this module computes the second quantity from the same simulator's recalls, so that a
person's curve is compared with the same quantity of the model.

How a simulated trial maps onto psifr's definition:

* **the recall sequence** is the start item ``s0`` followed by the drawn items. ``s0`` plays the
  first recall: the paper's context starts as ``e_s0`` and its histogram takes the first lag from
  ``s0``, and a person's first recall likewise starts the first transition;
* **repeats** (under [LI24]'s recall rule CMR's draws may return an item already in the sequence, ``s0``
  included) are handled as psifr handles people's repeats: a transition counts only when both its items are
  first occurrences; a repeat is neither a "from" nor a "to" item and no transition bridges it (recalls
  ``A B A C``: only ``A -> B`` counts). Under that rule most draws can be repeats and the curve rests on few
  transitions per trial (:func:`recall_statistics`; docs/cmr_grid.md); under the standard recall rule
  (:mod:`icl_cmr.cmr.standard_rule`) there are none and every draw is a counted transition;
* **possible lags** of a counted transition from item ``i`` are ``j - i`` for every item ``j`` of
  the list (``0 <= j < n_items``) not yet in the sequence, the actual "to" item included;
* **the absorbing stop** ends the sequence and is not a transition (psifr: the end of a recall
  period); a trial cut at ``max_draws`` simply ends. CMR makes no intrusions;
* **pooling**: transitions made and possible are summed over all trials of all start positions
  (psifr pools one subject's lists the same way), then divided. Lag 0 is never possible (NaN).

The standard error stored beside the pooled curve is a delete-one-group jackknife over
:data:`JACKKNIFE_GROUPS` groups of trials (trial index modulo the number of groups, each group
holding every start position): the simulation noise of the pooled ratio.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from icl_cmr.cmr import kernels
from icl_cmr.cmr.model import CMRSettings, _crp_from_draw_major, _simulate_draw_major, check_parameters
from icl_cmr.errors import InputError

#: Groups of the delete-one-group jackknife of the pooled conditional lag-CRP (ours; 20 groups of
#: 50 trials per start position at the default 1000 trials).
JACKKNIFE_GROUPS = 20


def conditional_lag_counts(draws: np.ndarray, start_positions: np.ndarray, n_items: int,
                           max_lag: int) -> Tuple[np.ndarray, np.ndarray]:
    """Transitions made and possible by lag for every simulated trial (psifr's rules; module docstring).

    Parameters
    ----------
    draws : np.ndarray, shape [n_start, n_trials, max_draws], int
        Drawn items in order, ``-1`` after a trial stopped (:func:`icl_cmr.cmr.model.simulate_recall`).
    start_positions : np.ndarray, shape [n_start]
        Start item ``s0`` of each row.
    n_items : int
        List length (items ``0 .. n_items - 1``).
    max_lag : int
        Lags ``-max_lag .. max_lag``.

    Returns
    -------
    actual, possible : np.ndarray, shape [n_start, n_trials, 2 * max_lag + 1], int32
        Per trial: transitions made at each lag, and transitions possible at each lag. Lag 0 is
        always 0.

    Raises
    ------
    InputError
        Draws of the wrong shape, items outside ``-1 .. n_items - 1`` or start items outside the list.
    """
    draws = np.asarray(draws)
    if draws.ndim != 3:
        raise InputError(f"draws must have shape [n_start, n_trials, max_draws], got {draws.shape}")
    n_start, n_trials, n_draws = draws.shape
    starts = np.asarray(start_positions, dtype=np.int64)
    if starts.shape != (n_start,):
        raise InputError(f"start_positions must have shape [{n_start}], got {starts.shape}")
    if n_items < 1 or max_lag < 1:
        raise InputError(f"n_items and max_lag must be positive, got {n_items} and {max_lag}")
    if draws.size and (draws.min() < -1 or draws.max() >= n_items):
        raise InputError(f"draws must hold items 0..{n_items - 1} or -1, got values {draws.min()}..{draws.max()}")
    if starts.min() < 0 or starts.max() >= n_items:
        raise InputError(f"start positions must be items 0..{n_items - 1}, got {starts.min()}..{starts.max()}")
    draw_major = np.ascontiguousarray(draws.reshape(n_start * n_trials, n_draws).T.astype(np.int64))
    return _counts_draw_major(draw_major, starts, n_trials, n_items, max_lag)


def _counts_draw_major(draws: np.ndarray, start_positions: np.ndarray, n_trials: int, n_items: int,
                       max_lag: int) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`conditional_lag_counts` of draws laid out as [max_draws, n_start * n_trials] (start-major)."""
    n_curves = draws.shape[1]
    n_start = n_curves // n_trials
    actual = np.zeros((n_curves, 2 * max_lag + 1), dtype=np.int32)
    possible = np.zeros_like(actual)
    kernels.CACHED.call(kernels.conditional_lag_counts_kernel, draws,
                        np.repeat(start_positions.astype(np.int64), n_trials), n_items, max_lag, actual, possible)
    shape = (n_start, n_trials, 2 * max_lag + 1)
    return actual.reshape(shape), possible.reshape(shape)


def pooled_conditional_crp(actual: np.ndarray, possible: np.ndarray,
                           n_groups: int = JACKKNIFE_GROUPS) -> Tuple[np.ndarray, np.ndarray]:
    """Pooled conditional lag-CRP and its delete-one-group jackknife standard error.

    Parameters
    ----------
    actual, possible : np.ndarray, shape [n_start, n_trials, n_lags]
        Per-trial counts (:func:`conditional_lag_counts`).
    n_groups : int
        Jackknife groups; trial ``t`` of every start position belongs to group ``t % n_groups``
        (at most ``n_trials`` groups are used).

    Returns
    -------
    crp : np.ndarray, shape [n_lags]
        ``sum actual / sum possible`` over all trials; NaN where nothing was possible.
    se : np.ndarray, shape [n_lags]
        ``sqrt((G - 1) / G * sum_g (crp_(g) - mean_g crp_(g))^2)``, ``crp_(g)`` the pooled curve
        without group ``g``; NaN where some ``crp_(g)`` is undefined or fewer than 2 groups exist.
    """
    actual = np.asarray(actual, dtype=np.int64)
    possible = np.asarray(possible, dtype=np.int64)
    if actual.shape != possible.shape or actual.ndim != 3:
        raise InputError(f"actual and possible must both have shape [n_start, n_trials, n_lags], "
                         f"got {actual.shape} and {possible.shape}")
    n_trials = actual.shape[1]
    n_groups = min(int(n_groups), n_trials)
    if n_groups < 1:
        raise InputError(f"n_groups must be positive, got {n_groups}")
    group_of_trial = np.arange(n_trials) % n_groups
    # [G, n_lags]: counts of each group, summed over start positions and the group's trials.
    group_actual = np.zeros((n_groups, actual.shape[2]), dtype=np.int64)
    group_possible = np.zeros_like(group_actual)
    np.add.at(group_actual, group_of_trial, actual.sum(axis=0))
    np.add.at(group_possible, group_of_trial, possible.sum(axis=0))
    total_actual, total_possible = group_actual.sum(axis=0), group_possible.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        crp = np.where(total_possible > 0, total_actual / np.maximum(total_possible, 1), np.nan)
        left_out_possible = total_possible - group_possible
        left_out = np.where(left_out_possible > 0, (total_actual - group_actual) / np.maximum(left_out_possible, 1),
                            np.nan)
        spread = ((left_out - left_out.mean(axis=0)) ** 2).sum(axis=0)
        se = np.sqrt((n_groups - 1) / n_groups * spread) if n_groups > 1 else np.full_like(crp, np.nan)
    return crp, se


def crp_and_conditional_crp(beta_enc: float, beta_rec: float, gamma_ft: float, settings: CMRSettings,
                            rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both CRPs of the same simulated recalls at one parameter point.

    Parameters
    ----------
    beta_enc, beta_rec, gamma_ft : float
        CMR parameters (:func:`icl_cmr.cmr.model.check_parameters`).
    settings : CMRSettings
        Items, trials per start position, draw limit, start positions, lags.
    rng : numpy.random.Generator
        The simulation's generator (a grid point's own, :meth:`icl_cmr.cmr.grid.GridSpec.point_rng`).

    Returns
    -------
    histogram : np.ndarray, shape [n_start, 2 * max_lag + 1]
        The paper's per-start CRP (:func:`icl_cmr.cmr.model.crp_from_draws`) of these recalls; with a grid
        point's generator at ``0 < beta_rec < 1`` it is bit for bit the simulated grid's value.
    conditional : np.ndarray, shape [2 * max_lag + 1]
        Pooled conditional lag-CRP of the same recalls (:func:`pooled_conditional_crp`).
    conditional_se : np.ndarray, shape [2 * max_lag + 1]
        Its jackknife standard error.
    """
    check_parameters(beta_enc, beta_rec, gamma_ft)
    draws = _simulate_draw_major(beta_enc, beta_rec, gamma_ft, settings, rng)
    histogram = _crp_from_draw_major(draws, settings.start_positions, settings.n_trials, settings.max_lag)
    actual, possible = _counts_draw_major(draws.astype(np.int64), settings.start_positions, settings.n_trials,
                                          settings.n_items, settings.max_lag)
    conditional, conditional_se = pooled_conditional_crp(actual, possible)
    return histogram, conditional, conditional_se


def recall_statistics(draws: np.ndarray, start_positions: np.ndarray, n_items: int,
                      max_draws: int) -> Dict[str, float]:
    """How much of a simulation's recalls the conditional lag-CRP uses, and how often the draw cap ends them.

    Parameters
    ----------
    draws : np.ndarray, shape [n_start, n_trials, max_draws], int
        Drawn items, ``-1`` after a trial stopped (:func:`icl_cmr.cmr.model.simulate_recall`).
    start_positions : np.ndarray, shape [n_start]
    n_items : int
    max_draws : int
        The cap the draws were simulated with.

    Returns
    -------
    dict
        ``draws_per_trial``: mean item draws per trial; ``repeat_share``: share of all draws that repeat an item
        already in the sequence (``s0`` included); ``counted_transitions_per_trial``: mean transitions per trial
        between two first occurrences, the ones the conditional lag-CRP counts (psifr's rules, every lag);
        ``capped_share``: share of trials that made all ``max_draws`` draws (ended by the cap, not by themselves).
    """
    draws = np.asarray(draws)
    n_start, n_trials, n_draws = draws.shape
    if n_draws != max_draws:
        raise InputError(f"draws have {n_draws} draws per trial, but max_draws is {max_draws}",
                         parameters=("max_draws",))
    draw_major = np.ascontiguousarray(draws.reshape(n_start * n_trials, n_draws).T.astype(np.int64))
    first = np.zeros(draw_major.shape, dtype=np.bool_)
    kernels.CACHED.call(kernels.first_recall_mask, draw_major,
                        np.repeat(np.asarray(start_positions, dtype=np.int64), n_trials), int(n_items), first)
    valid = draw_major >= 0
    # A counted transition ends at a first occurrence whose predecessor (s0 for the first draw) is one too.
    counted = first[0].sum() + (first[1:] & first[:-1]).sum()
    n_rows = n_start * n_trials
    total_draws = valid.sum()
    return {"draws_per_trial": float(total_draws / n_rows),
            "repeat_share": float(1.0 - first.sum() / total_draws) if total_draws else float("nan"),
            "counted_transitions_per_trial": float(counted / n_rows),
            "capped_share": float(valid[-1].sum() / n_rows)}


def conditional_cmr_crp(beta_enc: float, beta_rec: float, gamma_ft: float, settings: CMRSettings,
                        rng: np.random.Generator) -> np.ndarray:
    """Pooled conditional lag-CRP of simulated recalls at one point, with its standard error.

    Always simulated (there is no exact form: whether a lag is possible depends on every earlier
    recall). Parameters as :func:`crp_and_conditional_crp`.

    Returns
    -------
    np.ndarray, shape [2, 2 * max_lag + 1]
        ``[0]`` the pooled conditional lag-CRP (lag 0 NaN), ``[1]`` its jackknife standard error.
    """
    _, conditional, conditional_se = crp_and_conditional_crp(beta_enc, beta_rec, gamma_ft, settings, rng)
    return np.stack([conditional, conditional_se])


__all__ = ["JACKKNIFE_GROUPS", "conditional_lag_counts", "pooled_conditional_crp", "crp_and_conditional_crp",
           "recall_statistics", "conditional_cmr_crp"]
