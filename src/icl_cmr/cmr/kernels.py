"""Compiled inner loop of the CMR simulator: one draw for every held trial (numba).

:func:`icl_cmr.cmr.model._simulate_draw_major` keeps the loop over draws, the random
stream and the compaction of finished trials in numpy; :func:`draw_step` does what
a draw does to each trial in one compiled pass: pick a context component, draw an
item from that component's alias table, and update the context's scale and running
component weights. The O(draws so far) overlap sum of a trial is accumulated in
registers instead of being written out as a [draws, trials] array, which is what
makes this faster than the numpy version it replaced.

The floating-point operations and their order are those of that numpy version, so
the shipped grid is reproduced bit for bit (tests check it): products
``coef * overlap`` summed in the order of numpy's float64 ``einsum("ij,ij->i")``
kernel (:func:`overlap_dot`), and no fused multiply-add (numba does not contract
``a * b + c`` without ``fastmath``).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from icl_cmr.devices import CompiledKernels

#: Shape of the summation in numpy's float64 ``einsum("ij,ij->i")`` kernel (numpy's x86-64
#: baseline, ``einsum_sumprod.c.src``): 2 SIMD lanes, unrolled 4 vectors deep, multiply then add.
#: The grid was first shipped with that kernel; :func:`overlap_dot` replays its order.
EINSUM_LANES, EINSUM_UNROLL = 2, 4

#: How the context evolves between draws (``mode`` of :func:`draw_step`):
#: beta_rec = 0 (t = e_s0 forever), beta_rec = 1 (t = t_in of the last draw), 0 < beta_rec < 1.
CONTEXT_FIXED, CONTEXT_LAST_INPUT, CONTEXT_DRIFT = 0, 1, 2


@njit(cache=True, nogil=True)
def overlap_dot(coef, comp, overlap, trial, n_terms, base):
    """``sum_m coef[trial, m] * overlap[comp[trial, m] + base]`` over ``m < n_terms``, einsum order.

    numpy's float64 ``einsum`` row-dot kernel keeps ``EINSUM_LANES`` (2) partial sums,
    term ``m`` going to lane ``m % 2``; it adds each unrolled block of 8 terms last
    vector first, then the remaining vectors in order (a short last vector adds to
    lane 0 only), and finally adds the lanes.

    Parameters
    ----------
    coef : np.ndarray, shape [n_trials, width], float64
    comp : np.ndarray, shape [n_trials, width], int
    overlap : np.ndarray, shape [n_table], float64
    trial, n_terms, base : int

    Returns
    -------
    float
    """
    block = EINSUM_LANES * EINSUM_UNROLL
    lane0 = 0.0
    lane1 = 0.0
    n_blocked = n_terms - n_terms % block
    for start in range(0, n_blocked, block):
        for vector in range(EINSUM_UNROLL - 1, -1, -1):
            first = start + vector * EINSUM_LANES
            lane0 += coef[trial, first] * overlap[comp[trial, first] + base]
            lane1 += coef[trial, first + 1] * overlap[comp[trial, first + 1] + base]
    for first in range(n_blocked, n_terms, EINSUM_LANES):
        lane0 += coef[trial, first] * overlap[comp[trial, first] + base]
        if first + 1 < n_terms:
            lane1 += coef[trial, first + 1] * overlap[comp[trial, first + 1] + base]
    return lane0 + lane1


@njit(cache=True, nogil=True)
def first_component_above(cum_weight, k, trial, target):
    """First ``c`` in ``0 .. k`` with ``cum_weight[trial, c] > target``; ``k`` if none (NaN target included).

    The sums never decrease along a row, so that ``c`` is found walking down from
    ``k`` while the previous sum is still above the target: recent components carry
    most of the weight, so this reads few sums.

    Parameters
    ----------
    cum_weight : np.ndarray, shape [n_trials, width]
        Running sums of component weights (non-decreasing along each row).
    k, trial : int
    target : float

    Returns
    -------
    int
    """
    c = k
    while c > 0 and cum_weight[trial, c - 1] > target:
        c -= 1
    return c


@njit(cache=True, nogil=True)
def draw_step(k, mode, pick_uniform, item_uniform, comp, coef, cum_weight, scale, alive, row_ids, draws_row,
              strength, alias_prob, alias_index, overlap, size, n_components, absorbing,
              keep, drift, norm_offset, norm_slope):
    """Draw ``k`` (0-based) of every held trial, updating the trial state in place.

    Parameters
    ----------
    k : int
        Index of the trials' last context component.
    mode : int
        ``CONTEXT_FIXED``, ``CONTEXT_LAST_INPUT`` or ``CONTEXT_DRIFT``.
    pick_uniform, item_uniform : np.ndarray, shape [n_held]
        Uniforms in [0, 1): component pick and alias draw.
    comp : np.ndarray, shape [n_held, max_draws + 1], int
        Component ids in order (column ``m``: each trial's ``m``-th component); column
        ``k + 1`` is set to the drawn item.
    coef, cum_weight : np.ndarray, shape [n_held, max_draws + 1], float64
        Component coefficients and running weight sums; column ``k + 1`` is set (CONTEXT_DRIFT).
    scale : np.ndarray, shape [n_held], float64
        Common factor of each trial's coefficients; updated (CONTEXT_DRIFT).
    alive : np.ndarray, shape [n_held], bool
        Trials still recalling; a trial that draws the absorbing state is cleared.
    row_ids : np.ndarray, shape [n_held], int
        Column of each held trial in ``draws_row``.
    draws_row : np.ndarray, shape [n_start * n_trials], int
        Receives the drawn item, or -1 for a finished trial.
    strength : np.ndarray, shape [n_components]
        Total retrieval strength of each component.
    alias_prob, alias_index : np.ndarray, shape [n_components * size]
        Walker alias tables of each component's item distribution.
    overlap : np.ndarray, shape [size * n_components]
        ``t_in(x) . v_c`` at ``x * n_components + c``.
    size, n_components, absorbing : int
    keep, drift : float
        ``1 - beta_rec`` and ``beta_rec``.
    norm_offset, norm_slope : float
        ``|keep t + drift t_in|^2 = norm_offset + norm_slope * (t . t_in)`` for unit vectors.

    Returns
    -------
    int
        Number of trials alive after this draw.
    """
    n_alive = 0
    for r in range(alive.size):
        if mode == CONTEXT_FIXED:
            chosen = comp[r, 0]
        elif mode == CONTEXT_LAST_INPUT:
            chosen = comp[r, k]
        else:
            target = pick_uniform[r] * cum_weight[r, k]
            chosen = comp[r, first_component_above(cum_weight, k, r, target)]
        scaled = item_uniform[r] * size
        column = np.int64(scaled)
        if column > size - 1:
            column = size - 1
        flat = np.int64(chosen) * size + column
        item = column if scaled - column < alias_prob[flat] else alias_index[flat]
        drawn = alive[r] and item != absorbing
        draws_row[row_ids[r]] = item if drawn else -1
        alive[r] = drawn
        if drawn:
            n_alive += 1
        if mode == CONTEXT_DRIFT:
            # t . t_in(item) (a finished trial drew the absorbing state; its numbers are never used).
            dot = scale[r] * overlap_dot(coef, comp, overlap, r, k + 1, item * n_components)
            norm = math.sqrt(norm_offset + norm_slope * dot)
            keep_scale = keep * scale[r]
            new_coef = drift / keep_scale
            coef[r, k + 1] = new_coef
            scale[r] = keep_scale / norm
            cum_weight[r, k + 1] = cum_weight[r, k] + new_coef * strength[item]
        comp[r, k + 1] = item
    return n_alive


@njit(cache=True, nogil=True)
def conditional_lag_counts_kernel(draws, start_items, n_items, max_lag, actual, possible):
    """Actual and possible transitions by lag of every trial, psifr's rules (conditional lag-CRP).

    A trial's recall sequence is its start item followed by its draws (``-1`` ends it). A
    transition from position ``m`` to ``m + 1`` counts only when both items are first
    occurrences (psifr's ``transitions_masker``: repeats are neither a "from" nor a "to" item,
    and no transition bridges them). Its possible lags are those of every item not yet in the
    sequence (the "to" item included); the actual lag is ``to - from``.

    Parameters
    ----------
    draws : np.ndarray, shape [max_draws, n_trials], int
        Draw-major drawn items (the simulator's layout), ``-1`` after a trial stopped.
    start_items : np.ndarray, shape [n_trials], int
        Start item ``s0`` of each trial (its first "recall").
    n_items : int
        List length; items are ``0 .. n_items - 1``.
    max_lag : int
        Lags ``-max_lag .. max_lag`` are counted (column ``lag + max_lag``); lag 0 stays 0.
    actual, possible : np.ndarray, shape [n_trials, 2 * max_lag + 1], int32
        Zeroed on entry; filled in place.
    """
    n_draws, n_trials = draws.shape
    recalled_in = np.full(n_items, -1, dtype=np.int64)  # trial that last recalled each item
    for trial in range(n_trials):
        previous = start_items[trial]
        recalled_in[previous] = trial
        previous_first = True
        for m in range(n_draws):
            current = draws[m, trial]
            if current < 0:
                break
            current_first = recalled_in[current] != trial
            if previous_first and current_first:
                lag = current - previous
                if -max_lag <= lag <= max_lag:
                    actual[trial, lag + max_lag] += 1
                for lag in range(-max_lag, max_lag + 1):
                    item = previous + lag
                    if lag != 0 and 0 <= item < n_items and recalled_in[item] != trial:
                        possible[trial, lag + max_lag] += 1
            recalled_in[current] = trial
            previous = current
            previous_first = current_first


@njit(cache=True, nogil=True)
def standard_recall_kernel(start_items, assoc, inputs, retrieval, keep, drift, absorbing, item_uniforms,
                           stop_uniforms, stop_probability, draws):
    """Recall every trial under the standard rule (:mod:`icl_cmr.cmr.standard_rule`), one trial at a time.

    A trial keeps its context ``t`` and its retrieval strengths ``F = M^T t`` as explicit vectors, with ``F`` set
    to 0 on every item already in the sequence (``s0`` and the recalls). A draw takes the item whose running sum
    of ``F`` (in index order) first exceeds ``u * sum(F)``: an exact draw from ``F`` renormalised over the items
    not yet recalled plus the absorbing state. Zero-strength items are never taken; if rounding puts the target
    at the total, the last item with strength is taken. The drift ``t <- (keep t + drift t_in(j)) / norm`` updates
    ``F`` by the same linear step, ``F <- (keep F + drift M^T t_in(j)) / norm``, and ``norm`` comes from
    ``t . t_in(j)``. The running total of ``F`` is summed in index order, the order of the draw's running sums.

    Parameters
    ----------
    start_items : np.ndarray, shape [n_trials], int64
        Start item ``s0`` of each trial (its first "recall").
    assoc : np.ndarray, shape [size, size], float64
        ``M`` (row ``s0`` is ``M^T e_s0``, the strengths of the start context).
    inputs : np.ndarray, shape [size, size], float64
        Row ``j`` is the unit input context ``t_in(j)`` (zero for an item that can never be drawn).
    retrieval : np.ndarray, shape [size, size], float64
        Row ``j`` is ``M^T t_in(j)``.
    keep, drift : float
        ``1 - beta_rec`` and ``beta_rec``.
    absorbing : int
        Index of the absorbing state (never excluded; drawing it ends the trial).
    item_uniforms : np.ndarray, shape [max_draws, n_trials], float64
        Uniforms in [0, 1) of the item draws.
    stop_uniforms : np.ndarray, shape [max_draws, n_trials] (or any shape when ``stop_probability`` is 0)
        Uniforms of the stop decisions, drawn before each item draw.
    stop_probability : float
        Probability of ending the recall before each draw.
    draws : np.ndarray, shape [max_draws, n_trials], int
        Filled with ``-1`` on entry; receives the drawn items in order.
    """
    n_draws, n_trials = draws.shape
    size = assoc.shape[0]
    context = np.empty(size)
    strength = np.empty(size)
    recalled = np.zeros(size, dtype=np.uint8)
    for trial in range(n_trials):
        start = start_items[trial]
        for j in range(size):
            context[j] = 0.0
            strength[j] = assoc[start, j]
            recalled[j] = 0
        context[start] = 1.0
        recalled[start] = 1
        strength[start] = 0.0
        total = 0.0  # sum of strength in index order, the order of the running sums below (so they reach it)
        for j in range(size):
            total += strength[j]
        for m in range(n_draws):
            if stop_probability > 0.0 and stop_uniforms[m, trial] < stop_probability:
                break
            if not total > 0.0:
                break  # no support left: not even the absorbing state can be drawn
            target = item_uniforms[m, trial] * total
            running = 0.0
            chosen = -1
            last = -1
            for j in range(size):
                weight = strength[j]
                if weight > 0.0:
                    running += weight
                    last = j
                    if running > target:
                        chosen = j
                        break
            if chosen < 0:
                chosen = last
            if chosen == absorbing:
                break
            draws[m, trial] = chosen
            recalled[chosen] = 1
            if drift > 0.0:
                dot = 0.0
                for j in range(size):
                    dot += context[j] * inputs[chosen, j]
                inverse_norm = 1.0 / math.sqrt(keep * keep + drift * drift + 2.0 * keep * drift * dot)
                old_weight, new_weight = keep * inverse_norm, drift * inverse_norm
                total = 0.0
                for j in range(size):
                    context[j] = old_weight * context[j] + new_weight * inputs[chosen, j]
                    if recalled[j]:
                        strength[j] = 0.0
                    else:
                        strength[j] = old_weight * strength[j] + new_weight * retrieval[chosen, j]
                        total += strength[j]
            else:
                strength[chosen] = 0.0
                total = 0.0
                for j in range(size):
                    total += strength[j]


@njit(cache=True, nogil=True)
def first_recall_mask(draws, start_items, n_items, first):
    """Whether each draw is the first occurrence of its item in its trial's sequence (``s0`` counts as recalled).

    Parameters
    ----------
    draws : np.ndarray, shape [max_draws, n_trials], int
        Draw-major drawn items, ``-1`` after a trial stopped.
    start_items : np.ndarray, shape [n_trials], int
    n_items : int
    first : np.ndarray, shape [max_draws, n_trials], bool
        Zeroed on entry; set where a draw is an item's first occurrence (never where the trial has stopped).
    """
    n_draws, n_trials = draws.shape
    recalled_in = np.full(n_items, -1, dtype=np.int64)
    for trial in range(n_trials):
        recalled_in[start_items[trial]] = trial
        for m in range(n_draws):
            item = draws[m, trial]
            if item < 0:
                break
            if recalled_in[item] != trial:
                first[m, trial] = True
                recalled_in[item] = trial


#: The kernels as Python code calls them: a damaged on-disk cache is recompiled with a warning.
CACHED = CompiledKernels(__name__, overlap_dot, first_component_above, draw_step, conditional_lag_counts_kernel,
                         standard_recall_kernel, first_recall_mask)
