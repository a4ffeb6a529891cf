"""The paper's CMR variant of free recall: vectorized simulation, exact CRPs, the authors' shortcuts.

DESIGN.md section 3 is the specification; [LI24]'s ``est_cmr_crp.py`` is the
model it describes. ``n`` items plus one absorbing state (index ``n``):

* encoding ``M = (I - (1 - beta_enc) T)^-1 T``, i.e. ``M[i, j] = (1 - beta_enc)^(j-i-1)``
  for ``j > i`` (:func:`encoding_matrix`);
* recall from start item ``s0``: context ``t = e_s0``; each draw picks item ``j``
  with probability ``(M^T t)_j / sum(M^T t)`` (repeats allowed) and the trial stops
  when the absorbing state is drawn or after ``max_draws`` item draws; after a
  draw the context drifts, ``t <- (1 - beta_rec) t + beta_rec t_in(j)``
  renormalised, with ``t_in(j) = (1 - gamma_ft) e_j + gamma_ft M e_j`` normalised;
* CRP of one trial: histogram of the lags between consecutive draws (the first
  lag from ``s0``) over ``-max_lag..max_lag`` divided by that trial's number of
  item draws (the absorbing draw is neither counted nor a transition); mean over
  trials with at least one draw; normalised to sum 1 over the lags.

Semantics fixed by the authors' code and confirmed against their saved grid
(the agreement is reported in the README): the absorbing draw ends the trial
and is not counted, lags beyond ``max_lag`` count in the divisor only.

Speed (DESIGN.md section 3): the simulator never forms the context vector.
``t`` is a non-negative combination of ``e_s0`` and the ``t_in(j)`` of past draws,
so ``M^T t`` is the same combination of precomputed rows ``M^T e_s0`` and
``M^T t_in(j)``; a draw is "pick a component by its weight, then an item from that
component's fixed distribution" (Walker alias table, O(1)). With a common per-trial
scale the component weights never change once added, so picking one is counting the
running sums below a uniform fraction of the total, and ``|t|`` follows from a
precomputed table of overlaps ``t_in(x) . v_c`` (O(draws so far) per draw). All trials
of all start positions advance together, stored component-major (one contiguous row
per component, trials along the row); the only Python loops are over the (sequential)
draws and, inside a draw, over the fixed summation order of the overlap sum
(:func:`_einsum_row_dots`), which keeps the shipped grid reproducible bit for bit.

Exact CRPs: at ``beta_rec = 0`` the context stays ``e_s0`` (draws are i.i.d.);
at ``beta_rec = 1`` it is ``t_in(last draw)`` (a Markov chain on items). For those
two cases :func:`exact_crp` computes the simulation's expectation exactly by a
forward-backward recursion. The authors' own closed forms at ``gamma_ft = 0``
(:func:`authors_closed_form_crp`) do not describe their simulated model
(DESIGN.md section 3) and are kept only for comparison.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .config import CMR_CRP_LAGS
from .errors import InputError

#: Largest |lag| of the CMR CRP (-8..+8, DESIGN.md section 3).
DEFAULT_MAX_LAG = int(CMR_CRP_LAGS.max())

#: Ways of obtaining a grid point's CRP (see :func:`cmr_crp`).
CRP_METHODS = ("simulate", "exact", "authors")


@dataclass(frozen=True)
class CMRSettings:
    """Simulation settings of the CMR CRP (DESIGN.md section 3).

    Attributes
    ----------
    n_items : int
        Studied items (the absorbing state is added as index ``n_items``). [LI24]: 100.
    n_trials : int
        Simulated recalls per start position. The issue's default: 1000 ([LI24]'s
        script default; their saved grid matches 500, DESIGN.md section 3).
    max_draws : int
        Most item draws per trial. 50 reproduces the authors' saved grid (DESIGN.md).
    n_start : int
        Start positions ``s0 = 0 .. n_start - 1``. [LI24]: 20.
    max_lag : int
        CRP lags ``-max_lag .. max_lag``. [LI24]: 8.
    """

    n_items: int = 100
    n_trials: int = 1000
    max_draws: int = 50
    n_start: int = 20
    max_lag: int = DEFAULT_MAX_LAG

    def __post_init__(self) -> None:
        for name in ("n_items", "n_trials", "max_draws", "n_start", "max_lag"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if self.n_items < 2:
            raise InputError(f"n_items must be at least 2, got {self.n_items}")
        if self.n_start > self.n_items:
            raise InputError(f"n_start must be at most n_items ({self.n_items}), got {self.n_start}")
        if self.n_start < 2:
            raise InputError(f"n_start must be at least 2 (the SEM is taken over start positions), "
                             f"got {self.n_start}")
        if self.max_draws > np.iinfo(np.int32).max:
            raise InputError(f"max_draws is too large: {self.max_draws}")

    @property
    def start_positions(self) -> np.ndarray:
        """Start items ``0 .. n_start - 1``, shape [n_start]."""
        return np.arange(self.n_start)

    @property
    def n_lags(self) -> int:
        """Number of CRP lags, ``2 * max_lag + 1``."""
        return 2 * self.max_lag + 1


def check_parameters(beta_enc: float, beta_rec: float, gamma_ft: float) -> None:
    """Raise :class:`InputError` unless ``0 < beta_enc <= 1`` and ``beta_rec, gamma_ft`` lie in [0, 1]."""
    for name, value, low_open in (("beta_enc", beta_enc, True), ("beta_rec", beta_rec, False),
                                  ("gamma_ft", gamma_ft, False)):
        if not np.isfinite(value) or value > 1 or value < 0 or (low_open and value == 0):
            accepted = "(0, 1]" if low_open else "[0, 1]"
            raise InputError(f"{name} must be in {accepted}, got {value!r}")


# ----------------------------------------------------------------------------- model pieces

def encoding_matrix(beta_enc: float, n_items: int = 100) -> np.ndarray:
    """The association matrix ``M = (I - (1 - beta_enc) T)^-1 T`` with an absorbing state.

    Parameters
    ----------
    beta_enc : float
        Encoding drift rate in (0, 1].
    n_items : int
        Number of items; the absorbing state is index ``n_items``.

    Returns
    -------
    np.ndarray, shape [n_items + 1, n_items + 1]
        ``M[i, j] = (1 - beta_enc)^(j - i - 1)`` for ``j > i``, else 0
        (``0^0 = 1``, so ``beta_enc = 1`` gives the shift matrix ``T``).
    """
    size = n_items + 1
    i, j = np.indices((size, size))
    distance = j - i - 1
    decay = 1.0 - beta_enc
    return np.where(distance >= 0, np.power(decay, np.maximum(distance, 0)), 0.0)


def context_inputs(assoc: np.ndarray, gamma_ft: float) -> np.ndarray:
    """Input contexts ``t_in(j) = ((1 - gamma) e_j + gamma M e_j) / norm`` for every item ``j``.

    Parameters
    ----------
    assoc : np.ndarray, shape [size, size]
        The matrix ``M`` of :func:`encoding_matrix`.
    gamma_ft : float
        Weight of the retrieved (pre-experimental) context, in [0, 1].

    Returns
    -------
    np.ndarray, shape [size, size]
        Row ``j`` is ``t_in(j)``. A zero vector (``j = 0`` at ``gamma_ft = 1``,
        an item that can never be drawn because column 0 of ``M`` is zero) stays zero.
    """
    size = assoc.shape[0]
    rows = (1.0 - gamma_ft) * np.eye(size) + gamma_ft * assoc.T  # row j = (1-g) e_j + g M[:, j]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


@dataclass(frozen=True)
class _ComponentTables:
    """Precomputed tables for one (beta_enc, gamma_ft): see the module docstring.

    Component ``c < size`` is ``t_in(c)``; component ``size + s`` is ``e_s`` (start item ``s``).
    """

    size: int
    n_components: int
    strength: np.ndarray     # [n_components]: sum over items of M^T v_c
    alias_prob: np.ndarray   # [n_components * size]: Walker alias tables of M^T v_c / strength
    alias_index: np.ndarray  # [n_components * size]
    overlap: np.ndarray      # [size * n_components]: t_in(x) . v_c at x * n_components + c


@functools.lru_cache(maxsize=4)
def _component_tables(beta_enc: float, gamma_ft: float, n_items: int, n_start: int) -> _ComponentTables:
    # Cached: a grid slice simulates every beta_rec with the same (beta_enc, gamma_ft) tables.
    assoc = encoding_matrix(beta_enc, n_items)
    size = assoc.shape[0]
    inputs = context_inputs(assoc, gamma_ft)
    vectors = np.vstack([inputs, np.eye(size)[:n_start]])  # [n_components, size]
    retrieval = vectors @ assoc  # row c: (M^T v_c)^T = v_c^T M, the item strengths
    strength = retrieval.sum(axis=1)
    alias_prob, alias_index = alias_tables(retrieval)
    # Row x holds t_in(x) . v_c for all c: the overlaps one trial needs after drawing x sit together.
    overlap = inputs @ vectors.T
    for table in (strength, alias_prob, alias_index, overlap):
        table.setflags(write=False)  # shared through the cache
    return _ComponentTables(size, vectors.shape[0], strength, alias_prob.ravel(), alias_index.ravel(),
                            overlap.ravel())


def alias_tables(weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias tables: O(1) draws from each row of ``weights``.

    Parameters
    ----------
    weights : np.ndarray, shape [n_rows, n_outcomes]
        Non-negative weights; a row of zeros gives a table that returns its own
        column (it must never be sampled).

    Returns
    -------
    prob : np.ndarray, shape [n_rows, n_outcomes]
        Keep probability of each column.
    alias : np.ndarray, shape [n_rows, n_outcomes], int64
        Outcome returned when the column is not kept. A draw is: pick column ``x``
        uniformly, keep it with probability ``prob[x]``, else return ``alias[x]``.
    """
    weights = np.asarray(weights, dtype=float)
    n_rows, n_out = weights.shape
    prob = np.ones((n_rows, n_out))
    alias = np.tile(np.arange(n_out), (n_rows, 1))
    totals = weights.sum(axis=1)
    for row in range(n_rows):  # Vose's method is sequential; ~100 cheap steps per row, once per table
        if totals[row] <= 0:
            continue
        scaled = (weights[row] * (n_out / totals[row])).tolist()
        small = [x for x, value in enumerate(scaled) if value < 1.0]
        large = [x for x, value in enumerate(scaled) if value >= 1.0]
        row_prob, row_alias = prob[row], alias[row]
        while small and large:
            low, high = small.pop(), large[-1]
            row_prob[low] = scaled[low]
            row_alias[low] = high
            scaled[high] -= 1.0 - scaled[low]
            if scaled[high] < 1.0:
                small.append(large.pop())
        # Leftovers are 1 up to rounding: always kept.
    return prob, alias


# ----------------------------------------------------------------------------- simulation

#: Shape of the summation in numpy's float64 ``einsum("ij,ij->i")`` kernel (numpy's x86-64
#: baseline, ``einsum_sumprod.c.src``): 2 SIMD lanes, unrolled 4 vectors deep, multiply then add
#: (no FMA). :func:`_einsum_row_dots` replays it so that the shipped grid stays bit for bit.
_EINSUM_LANES, _EINSUM_UNROLL = 2, 4

#: Drop finished trials from the arrays once fewer than this fraction of the rows is alive.
#: Part of the random stream (each draw consumes two uniforms per row still held).
_COMPACT_BELOW = 0.75


def simulate_recall(beta_enc: float, beta_rec: float, gamma_ft: float, settings: CMRSettings,
                    rng: np.random.Generator) -> np.ndarray:
    """Simulate free recall from every start position (DESIGN.md section 3).

    Parameters
    ----------
    beta_enc, beta_rec, gamma_ft : float
        CMR parameters: encoding drift in (0, 1], retrieval drift and retrieved-context
        weight in [0, 1].
    settings : CMRSettings
        Items, trials per start position, draw limit, start positions.
    rng : numpy.random.Generator
        Source of randomness (two uniforms per held trial and draw).

    Returns
    -------
    np.ndarray, shape [n_start, n_trials, max_draws], int16 (int32 for > 32766 items)
        Drawn item indices in order; ``-1`` after the trial stopped (absorbing
        state drawn). The absorbing draw itself is not recorded.
    """
    check_parameters(beta_enc, beta_rec, gamma_ft)
    draws = _simulate_draw_major(beta_enc, beta_rec, gamma_ft, settings, rng)
    return np.ascontiguousarray(draws.T).reshape(settings.n_start, settings.n_trials, settings.max_draws)


def _simulate_draw_major(beta_enc: float, beta_rec: float, gamma_ft: float, settings: CMRSettings,
                         rng: np.random.Generator) -> np.ndarray:
    """:func:`simulate_recall` with draws as rows: shape [max_draws, n_start * n_trials].

    Trial state is component-major: row ``m`` of ``comp``, ``coef`` and ``cum_weight``
    holds the ``m``-th context component of every held trial (shape [max_draws + 1, n_held]),
    so each draw appends one contiguous row and every sum over components runs along
    long contiguous rows instead of one short row per trial.
    """
    tables = _component_tables(float(beta_enc), float(gamma_ft), int(settings.n_items), int(settings.n_start))
    size, absorbing, n_comp = tables.size, settings.n_items, tables.n_components
    n_rows, n_draws = settings.n_start * settings.n_trials, settings.max_draws
    index_dtype = np.int16 if size < np.iinfo(np.int16).max else np.int32
    draws = np.full((n_draws, n_rows), -1, dtype=index_dtype)

    # The true context is t = scale * sum_m coef[m] v_{comp[m]}; cum_weight[m] is the running
    # sum of coef * strength, the (unnormalised) probability mass of components 0..m.
    width = n_draws + 1
    # Component ids and their flat overlap-table indices (< size * n_comp) in the smallest dtype:
    # the overlap sums move (draws so far) x (trials) of them every draw.
    flat_dtype = next(dtype for dtype in (np.int16, np.int32, np.int64)
                      if size * n_comp <= np.iinfo(dtype).max)
    comp = np.empty((width, n_rows), dtype=flat_dtype)
    coef = np.empty((width, n_rows))
    cum_weight = np.empty((width, n_rows))
    comp[0] = size + np.repeat(settings.start_positions, settings.n_trials)
    coef[0] = 1.0
    cum_weight[0] = tables.strength[comp[0]]
    scale = np.ones(n_rows)
    row_ids = np.arange(n_rows)  # original row of each held trial
    alive = np.ones(n_rows, dtype=bool)
    # Scratch for the overlap sums (flat, re-viewed as [k + 1, n_held]): no allocation per draw.
    # The gather indices are intp: ``take`` would otherwise cast a copy every draw.
    index_scratch = np.empty(width * n_rows, dtype=np.intp)
    product_scratch = np.empty(width * n_rows)
    below_scratch = np.empty(width * n_rows, dtype=bool)

    keep, drift = 1.0 - beta_rec, beta_rec
    # |(1-b) t + b t_in|^2 = (1-b)^2 + b^2 + 2 b (1-b) t . t_in, grouped as the original expression.
    norm_offset, norm_slope = keep * keep + drift * drift, 2.0 * drift * keep
    for k in range(n_draws):  # draws are sequential; all trials advance together
        n_held = row_ids.size
        uniforms = rng.random((2, n_held))
        if beta_rec == 0.0:
            chosen = comp[0]              # t = e_s0 forever
        elif beta_rec == 1.0:
            chosen = comp[k]              # t = t_in(last draw)
        else:
            chosen = _pick_component(cum_weight, comp, k, uniforms[0], below_scratch)
        item = _alias_draw(tables, chosen, uniforms[1])
        drawn = alive & (item != absorbing)
        recorded = np.where(drawn, item, -1)
        if n_held == n_rows:
            draws[k] = recorded
        else:
            draws[k, row_ids] = recorded
        alive &= drawn
        n_alive = int(np.count_nonzero(alive))
        if k + 1 == n_draws or n_alive == 0:
            break
        if 0.0 < beta_rec < 1.0:
            # t . t_in(item) from the overlap table (finished trials drew the absorbing
            # state here; their numbers are never used).
            index = index_scratch[:(k + 1) * n_held].reshape(k + 1, n_held)
            np.add(comp[:k + 1], item * n_comp, out=index)
            products = product_scratch[:(k + 1) * n_held].reshape(k + 1, n_held)
            tables.overlap.take(index, out=products, mode="clip")  # in range; "clip" writes out= unbuffered
            np.multiply(coef[:k + 1], products, out=products)
            dot = scale * _einsum_row_dots(products)
            norm = np.sqrt(norm_offset + norm_slope * dot)
            keep_scale = keep * scale
            np.divide(drift, keep_scale, out=coef[k + 1])
            scale = keep_scale / norm
            np.multiply(coef[k + 1], tables.strength.take(item), out=cum_weight[k + 1])
            np.add(cum_weight[k], cum_weight[k + 1], out=cum_weight[k + 1])
        comp[k + 1] = item
        if n_alive < _COMPACT_BELOW * n_held:
            kept = np.flatnonzero(alive)
            row_ids, scale, alive = row_ids[kept], scale[kept], alive[kept]
            filled = slice(0, k + 2)  # rows beyond k + 1 are not written yet
            comp, coef, cum_weight = (_compact_columns(table, filled, kept) for table in (comp, coef, cum_weight))
    return draws


def _compact_columns(table: np.ndarray, filled: slice, kept: np.ndarray) -> np.ndarray:
    """A fresh [rows, kept.size] table holding columns ``kept`` of ``table[filled]`` (other rows unset)."""
    compacted = np.empty((table.shape[0], kept.size), dtype=table.dtype)
    np.take(table[filled], kept, axis=1, out=compacted[filled])
    return compacted


def _einsum_row_dots(products: np.ndarray) -> np.ndarray:
    """Column sums of ``products`` rounded exactly as ``np.einsum("ij,ij->i", a, b)`` sums rows.

    The simulator used ``einsum`` over trial-major arrays; its float64 kernel keeps
    ``_EINSUM_LANES`` partial sums (element ``j`` goes to lane ``j % lanes``), adds each
    unrolled block of ``lanes * unroll`` elements last vector first, then the remaining
    vectors in order, and finally adds the lanes. Replaying that order column-wise
    gives the same doubles with long contiguous operations.

    Parameters
    ----------
    products : np.ndarray, shape [n_terms, n_trials]
        Non-negative products ``a[i, j] * b[i, j]`` laid out as ``[j, i]``.

    Returns
    -------
    np.ndarray, shape [n_trials]
    """
    n_terms, n_trials = products.shape
    lanes, block = _EINSUM_LANES, _EINSUM_LANES * _EINSUM_UNROLL
    lane_sums = np.zeros((lanes, n_trials))
    n_blocked = n_terms - n_terms % block
    for start in range(0, n_blocked, block):  # sequential by definition: this is the summation order
        for vector in range(_EINSUM_UNROLL - 1, -1, -1):
            first = start + vector * lanes
            lane_sums += products[first:first + lanes]
    for first in range(n_blocked, n_terms, lanes):  # remaining vectors; a short one adds 0 to the rest
        last = min(first + lanes, n_terms)
        lane_sums[:last - first] += products[first:last]
    total = lane_sums[0]
    for lane in range(1, lanes):
        total += lane_sums[lane]
    return total


def _alias_draw(tables: _ComponentTables, chosen: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """One item per trial from component ``chosen``'s distribution (alias method, one uniform).

    Parameters
    ----------
    tables : _ComponentTables
    chosen : np.ndarray, shape [n_trials], int
        Component of each trial.
    uniform : np.ndarray, shape [n_trials]
        Uniforms in [0, 1).

    Returns
    -------
    np.ndarray, shape [n_trials], int64
    """
    scaled = uniform * tables.size
    column = scaled.astype(np.int64)
    np.minimum(column, tables.size - 1, out=column)
    flat = chosen.astype(np.int64) * tables.size
    flat += column
    kept = scaled - column < tables.alias_prob.take(flat)
    return np.where(kept, column, tables.alias_index.take(flat))


def _pick_component(cum_weight: np.ndarray, comp: np.ndarray, k: int, uniform: np.ndarray,
                    scratch: np.ndarray) -> np.ndarray:
    """Component ids drawn with probability proportional to their weight.

    Parameters
    ----------
    cum_weight : np.ndarray, shape [width, n_trials]
        Row ``m`` is each trial's running sum of component weights up to component ``m``
        (rows ``0 .. k`` are set).
    comp : np.ndarray, shape [width, n_trials], int
        Component ids, same layout.
    k : int
        Index of the trials' last component.
    uniform : np.ndarray, shape [n_trials]
        Uniforms in [0, 1).
    scratch : np.ndarray, shape [>= (k + 1) * n_trials], bool
        Work space (no allocation per draw).

    Returns
    -------
    np.ndarray, shape [n_trials]
        ``comp[c, r]`` for the first ``c <= k`` with ``cum_weight[c, r] > u * cum_weight[k, r]``
        (``c = k`` if none, which needs ``u * total`` to round up to the total).
        The running sums never decrease, so that ``c`` is the number of sums ``<= u * total``
        (a vectorized count instead of a per-trial search). A NaN target (overflowed weights)
        falls back to the binary search that the count replaced, which gives the same ``c``
        whenever there is no NaN.
    """
    target = uniform * cum_weight[k]
    n_trials = target.size
    if np.isnan(target).any():
        position = _bisect_components(cum_weight, k, target)
    else:
        below = np.less_equal(cum_weight[:k + 1], target, out=scratch[:(k + 1) * n_trials].reshape(k + 1, n_trials))
        count_dtype = np.min_scalar_type(k + 1)
        position = below.view(np.uint8).sum(axis=0, dtype=count_dtype).astype(np.int64)
        np.minimum(position, k, out=position)
    position *= n_trials
    position += np.arange(n_trials)
    return comp.reshape(-1).take(position)


def _bisect_components(cum_weight: np.ndarray, k: int, target: np.ndarray) -> np.ndarray:
    """First ``c`` in ``0 .. k`` with ``cum_weight[c, r] > target[r]`` by bisection (``k`` if none); shape [n_trials]."""
    n_trials = target.size
    trial = np.arange(n_trials)
    flat_weight = cum_weight.reshape(-1)
    low = np.zeros(n_trials, dtype=np.int64)
    high = np.full(n_trials, k, dtype=np.int64)
    for _ in range(int(k).bit_length()):  # ceil(log2(k + 1)) halvings, each over all trials
        mid = (low + high) >> 1
        left = flat_weight.take(mid * n_trials + trial) > target
        high = np.where(left, mid, high)
        low = np.where(left, low, mid + 1)
    return np.minimum(low, k)


def crp_from_draws(draws: np.ndarray, start_positions: np.ndarray,
                   max_lag: int = DEFAULT_MAX_LAG) -> np.ndarray:
    """Per-start CRP of simulated recalls, as [LI24]'s ``estimateCRP`` + normalisation.

    Parameters
    ----------
    draws : np.ndarray, shape [n_start, n_trials, max_draws]
        Drawn items, ``-1`` after a trial stopped (from :func:`simulate_recall`).
    start_positions : np.ndarray, shape [n_start]
        The start item of each row.
    max_lag : int
        Lags ``-max_lag .. max_lag``.

    Returns
    -------
    np.ndarray, shape [n_start, 2 * max_lag + 1]
        For each start: per-trial lag histogram divided by that trial's number of
        draws (the first lag from ``s0``), averaged over trials with >= 1 draw,
        then normalised to sum 1. NaN for a start whose trials all have no draw.
    """
    draws = np.asarray(draws)
    n_start, n_trials, n_draws = draws.shape
    draw_major = np.ascontiguousarray(draws.reshape(n_start * n_trials, n_draws).T)
    return _crp_from_draw_major(draw_major, np.asarray(start_positions), n_trials, max_lag)


def _crp_from_draw_major(draws: np.ndarray, start_positions: np.ndarray, n_trials: int,
                         max_lag: int) -> np.ndarray:
    """:func:`crp_from_draws` of draws laid out as [max_draws, n_start * n_trials] (start-major trials).

    The draw-major layout (the simulator's own) makes every step one operation along
    long contiguous rows; the averaging over trials is the original expression on the
    original [n_start, n_trials, n_lags] array, so the result is the same to the last bit.
    """
    n_draws, n_curves = draws.shape
    n_start = n_curves // n_trials
    # Item indices are >= -1, so their differences fit a signed type of the same width.
    lags = np.empty((n_draws, n_curves), dtype=np.promote_types(draws.dtype, np.int16))
    np.subtract(draws[0], np.repeat(start_positions, n_trials), out=lags[0])
    np.subtract(draws[1:], draws[:-1], out=lags[1:])
    valid = draws >= 0
    per_trial_draws = valid.sum(axis=0).reshape(n_start, n_trials)
    np.putmask(lags, ~valid, max_lag + 1)  # a lag that is never counted
    # Lag histogram per trial, one lag at a time: each count is a sum down the draws (a short
    # loop over the 2 * max_lag + 1 lags, every step over all trials).
    count_dtype = np.min_scalar_type(n_draws)
    histogram = np.stack([(lags == lag).view(np.uint8).sum(axis=0, dtype=count_dtype)
                          for lag in range(-max_lag, max_lag + 1)], axis=1)
    histogram = histogram.reshape(n_start, n_trials, 2 * max_lag + 1)
    has_draws = per_trial_draws > 0
    per_trial = histogram / np.where(has_draws, per_trial_draws, 1)[:, :, None]
    n_used = has_draws.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (per_trial * has_draws[:, :, None]).sum(axis=1) / n_used[:, None]
        return mean / mean.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- exact CRPs

def has_exact_crp(beta_rec: float) -> bool:
    """Whether :func:`exact_crp` applies: ``beta_rec`` in {0, 1} (any ``beta_enc``, ``gamma_ft``)."""
    return beta_rec == 0.0 or beta_rec == 1.0


def _transition_matrices(beta_enc: float, beta_rec: float, gamma_ft: float,
                         settings: CMRSettings) -> Tuple[np.ndarray, np.ndarray]:
    """Start distributions [n_start, size] and item-to-item transitions [n_start, size, size]."""
    assoc = encoding_matrix(beta_enc, settings.n_items)
    starts = settings.start_positions
    start_rows = assoc[starts]
    start_dist = start_rows / start_rows.sum(axis=1, keepdims=True)
    if beta_rec == 0.0:
        # Context stays e_s0: every draw comes from the start distribution.
        transition = np.broadcast_to(start_dist[:, None, :], (starts.size,) + assoc.shape)
    else:
        strengths = context_inputs(assoc, gamma_ft) @ assoc  # row j: M^T t_in(j)
        totals = strengths.sum(axis=1, keepdims=True)
        step = np.divide(strengths, totals, out=np.zeros_like(strengths), where=totals > 0)
        transition = np.broadcast_to(step, (starts.size,) + assoc.shape)
    return start_dist, transition


def exact_crp(beta_enc: float, beta_rec: float, gamma_ft: float, settings: CMRSettings,
              normalise: bool = True) -> np.ndarray:
    """The simulation's expected per-start CRP at ``beta_rec`` in {0, 1}, computed exactly.

    At these values the drawn items form a Markov chain (i.i.d. draws from
    ``M[s0] / sum`` at ``beta_rec = 0``; transitions ``M^T t_in(j) / sum`` at
    ``beta_rec = 1``). With ``K`` the number of item draws, the expected per-trial
    curve is ``E[(1/K) sum_m 1{lag_m = d} | K >= 1]``: a forward pass carries the
    probability of being at item ``i`` after ``m - 1`` draws, a backward pass
    ``E[1/K | m-th draw at j]``, and their product on each transition ``i -> i + d``
    is summed over ``m``.

    Parameters
    ----------
    beta_enc, beta_rec, gamma_ft : float
        CMR parameters; ``beta_rec`` must be 0 or 1.
    settings : CMRSettings
        ``n_items``, ``max_draws``, ``n_start``, ``max_lag`` are used (``n_trials`` is not).
    normalise : bool
        Normalise each curve over the lags (the CRP); False returns the expectation itself.

    Returns
    -------
    np.ndarray, shape [n_start, 2 * max_lag + 1]
    """
    check_parameters(beta_enc, beta_rec, gamma_ft)
    if not has_exact_crp(beta_rec):
        raise InputError(f"exact CRPs exist only for beta_rec in {{0, 1}}, got beta_rec={beta_rec!r}")
    start_dist, transition = _transition_matrices(beta_enc, beta_rec, gamma_ft, settings)
    n_start, size = start_dist.shape
    absorbing = settings.n_items
    n_draws, max_lag = settings.max_draws, settings.max_lag
    items = slice(0, absorbing)

    # Backward: expected 1/K given that the m-th draw is item j (not absorbing), m = n_draws .. 1.
    inverse_count = np.empty((n_draws + 1, n_start, size))
    inverse_count[n_draws] = 1.0 / n_draws
    for m in range(n_draws - 1, 0, -1):
        inverse_count[m] = (transition[:, :, absorbing] / m
                            + np.einsum("sij,sj->si", transition[:, :, items], inverse_count[m + 1][:, items]))

    # Forward: joint weight of each transition i -> j (j an item) summed over draw numbers m.
    weighted = np.zeros((n_start, size, size))
    weighted[np.arange(n_start), settings.start_positions, :absorbing] = (
        start_dist[:, items] * inverse_count[1][:, items])
    occupancy = np.zeros((n_start, size))
    occupancy[:, items] = start_dist[:, items]
    for m in range(2, n_draws + 1):
        step = occupancy[:, :, None] * transition
        weighted[:, :, items] += step[:, :, items] * inverse_count[m][:, None, items]
        occupancy = np.zeros((n_start, size))
        occupancy[:, items] = step[:, :, items].sum(axis=1)

    expected = np.stack([np.trace(weighted, offset=lag, axis1=1, axis2=2)
                         for lag in range(-max_lag, max_lag + 1)], axis=1)
    expected /= (1.0 - start_dist[:, absorbing])[:, None]  # condition on K >= 1
    if normalise:
        expected = expected / expected.sum(axis=1, keepdims=True)
    return expected


def authors_closed_form_crp(beta_enc: float, beta_rec: float, settings: CMRSettings) -> np.ndarray:
    """[LI24]'s closed forms at ``gamma_ft = 0``, ``beta_rec`` in {0, 1} (for comparison only).

    Reproduces ``getCRP`` of the authors' ``est_cmr_crp.py``. These formulas do
    **not** equal their simulated model's CRP (DESIGN.md section 3): at
    ``beta_rec = 1`` lag ``d`` gets ``sum_j (M^d)[s0, j] / sum * M[j, j + d] / sum_k M[j, k]``,
    at ``beta_rec = 0`` the curve is the autocorrelation of ``M[s0] / sum``
    (symmetric, although the first lag from ``s0`` is always forward).

    Returns
    -------
    np.ndarray, shape [n_start, 2 * max_lag + 1]
        Normalised over the lags.
    """
    check_parameters(beta_enc, beta_rec, 0.0)
    if not has_exact_crp(beta_rec):
        raise InputError(f"the authors' closed forms exist only for beta_rec in {{0, 1}}, got {beta_rec!r}")
    assoc = encoding_matrix(beta_enc, settings.n_items)
    size, max_lag = assoc.shape[0], settings.max_lag
    starts = settings.start_positions
    curves = np.zeros((starts.size, 2 * max_lag + 1))
    if beta_rec == 1.0:
        power = np.eye(size)
        with np.errstate(invalid="ignore", divide="ignore"):
            row_sums = assoc.sum(axis=1)  # 0 for the absorbing state: NaN terms that nansum drops
            for lag in range(1, max_lag + 1):
                power = power @ assoc
                first = power[starts] / power[starts].sum(axis=1, keepdims=True)
                second = np.append(np.diagonal(assoc, offset=lag), np.zeros(lag)) / row_sums
                curves[:, lag + max_lag] = np.nansum(first * second, axis=1)
    else:
        first = assoc[starts] / assoc[starts].sum(axis=1, keepdims=True)
        curves[:, max_lag] = np.square(first).sum(axis=1)
        for lag in range(1, min(settings.n_items, max_lag + 1)):
            product = (first[:, :-lag] * first[:, lag:]).sum(axis=1)
            curves[:, max_lag + lag] = product
            curves[:, max_lag - lag] = product
    return curves / curves.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- one grid point

def cmr_crp(beta_enc: float, beta_rec: float, gamma_ft: float, settings: CMRSettings,
            rng: Optional[np.random.Generator] = None, method: str = "exact") -> np.ndarray:
    """Per-start CRPs at one parameter point.

    Parameters
    ----------
    beta_enc, beta_rec, gamma_ft : float
        CMR parameters.
    settings : CMRSettings
        Simulation settings.
    rng : numpy.random.Generator, optional
        Needed whenever the point is simulated.
    method : {"exact", "simulate", "authors"}
        ``"exact"``: :func:`exact_crp` where it applies (``beta_rec`` in {0, 1}),
        simulation elsewhere. ``"simulate"``: simulation everywhere.
        ``"authors"``: the authors' closed forms where they used them
        (``beta_rec`` in {0, 1} and ``gamma_ft = 0``), simulation elsewhere.

    Returns
    -------
    np.ndarray, shape [n_start, 2 * max_lag + 1]
        One normalised CRP per start position.
    """
    if method not in CRP_METHODS:
        raise InputError(f"method must be one of {', '.join(CRP_METHODS)}, got {method!r}")
    check_parameters(beta_enc, beta_rec, gamma_ft)
    if method == "exact" and has_exact_crp(beta_rec):
        return exact_crp(beta_enc, beta_rec, gamma_ft, settings)
    if method == "authors" and has_exact_crp(beta_rec) and gamma_ft == 0.0:
        return authors_closed_form_crp(beta_enc, beta_rec, settings)
    if rng is None:
        raise InputError("rng is required to simulate a grid point")
    draws = _simulate_draw_major(beta_enc, beta_rec, gamma_ft, settings, rng)
    return _crp_from_draw_major(draws, settings.start_positions, settings.n_trials, settings.max_lag)


def mean_and_sem_over_starts(curves: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and standard error (ddof 1, as ``scipy.stats.sem``) over start positions.

    Parameters
    ----------
    curves : np.ndarray, shape [..., n_start, n_lags]

    Returns
    -------
    mean, sem : np.ndarray, shape [..., n_lags]
    """
    curves = np.asarray(curves)
    n_start = curves.shape[-2]
    return curves.mean(axis=-2), curves.std(axis=-2, ddof=1) / np.sqrt(n_start)
