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

That is [LI24]'s recall rule (``CMRSettings.recall_rule = "li24"``, the default). Under the standard rule
(``"standard"``, :mod:`icl_cmr.cmr.standard_rule`) the start item and recalled items are excluded from later
draws and the recall ends by itself (no cap is needed); the encoding, drift and choice rule are the same.
The parameters are on [LI24]'s scale, not standard CMR's (:mod:`icl_cmr.cmr.scales`).

Semantics fixed by the authors' code and confirmed against their saved grid
(the agreement is reported in the README): the absorbing draw ends the trial
and is not counted, lags beyond ``max_lag`` count in the divisor only.

Speed (DESIGN.md section 3): the simulator never forms the context vector.
``t`` is a non-negative combination of ``e_s0`` and the ``t_in(j)`` of past draws,
so ``M^T t`` is the same combination of precomputed rows ``M^T e_s0`` and
``M^T t_in(j)``; a draw is "pick a component by its weight, then an item from that
component's fixed distribution" (Walker alias table, O(1)). With a common per-trial
scale the component weights never change once added, so picking one is finding the
first running sum above a uniform fraction of the total, and ``|t|`` follows from a
precomputed table of overlaps ``t_in(x) . v_c`` (O(draws so far) per draw). All trials
of all start positions advance together, stored trial-major (one contiguous row
per trial); the only Python loop is over the (sequential) draws. Each draw's
per-trial work is one compiled pass (numba, :mod:`icl_cmr.cmr.kernels`) that keeps
the floating-point order of the earlier all-numpy simulator, so the shipped grid
stays reproducible bit for bit.

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

from icl_cmr.cmr import kernels
from icl_cmr.cmr.standard_rule import simulate_standard_draw_major
from icl_cmr.config import CMR_CRP_LAGS, FIT_LAGS
from icl_cmr.errors import InputError

#: Largest |lag| of the CMR CRP (-8..+8, DESIGN.md section 3).
DEFAULT_MAX_LAG = int(CMR_CRP_LAGS.max())

#: Ways of obtaining a grid point's CRP (see :func:`cmr_crp`).
CRP_METHODS = ("simulate", "exact", "authors")

#: How a recall proceeds (:attr:`CMRSettings.recall_rule`). ``"li24"``: [LI24]'s rule, repeats allowed, recall
#: ending at the absorbing state or after ``max_draws`` draws (DESIGN.md section 3). ``"standard"``: standard
#: CMR's, the start item and recalled items excluded from later draws, recall ending at the absorbing state, when
#: nothing left has strength, or at a stop probability (:mod:`icl_cmr.cmr.standard_rule`).
RECALL_RULES = ("li24", "standard")

#: [LI24]'s draw cap: 50 reproduces the authors' saved grid (DESIGN.md section 3).
LI24_MAX_DRAWS = 50


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
    max_draws : int, optional
        Most item draws per trial. Default (None): 50 under [LI24]'s rule, the value that reproduces the authors'
        saved grid (DESIGN.md); ``n_items - 1`` under the standard rule, where a recall can never be longer (no cap).
        Set to that default after construction.
    n_start : int
        Start positions ``s0 = 0 .. n_start - 1``. [LI24]: 20.
    max_lag : int
        CRP lags ``-max_lag .. max_lag``. [LI24]: 8.
    recall_rule : {"li24", "standard"}
        :data:`RECALL_RULES`. Default ``"li24"``, the paper's.
    stop_probability : float
        Standard rule only: probability of ending the recall before each draw, in [0, 1). Default 0 (the
        absorbing state alone ends it).
    """

    n_items: int = 100
    n_trials: int = 1000
    max_draws: Optional[int] = None
    n_start: int = 20
    max_lag: int = DEFAULT_MAX_LAG
    recall_rule: str = "li24"
    stop_probability: float = 0.0

    def __post_init__(self) -> None:
        if self.recall_rule not in RECALL_RULES:
            raise InputError(f"`recall_rule` must be one of {', '.join(RECALL_RULES)}, got {self.recall_rule!r}",
                             parameters=("recall_rule",))
        cap_from_items = self.max_draws is None and self.recall_rule == "standard"
        if self.max_draws is None:
            valid_items = isinstance(self.n_items, (int, np.integer)) and self.n_items >= 2
            # (an invalid n_items is refused below, by name)
            default = LI24_MAX_DRAWS if self.recall_rule == "li24" else (self.n_items - 1 if valid_items else 1)
            object.__setattr__(self, "max_draws", default)
        for name in ("n_items", "n_trials", "max_draws", "n_start", "max_lag"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise InputError(f"`{name}` must be a positive integer, got {value!r}", parameters=(name,))
        if self.n_items < 2:
            raise InputError(f"`n_items` must be at least 2, got {self.n_items}", parameters=("n_items",))
        if self.n_start >= self.n_items:
            # From the last item s0 = n_items - 1 only the absorbing state can be drawn: no trial has a
            # draw and that start's CRP is 0 / 0 (NaN).
            raise InputError(f"`n_start` ({self.n_start}) must be below `n_items` ({self.n_items}): a recall "
                             "starting at the last item can only draw the end state, so its CRP would be undefined (NaN)",
                             parameters=("n_start", "n_items"))
        if self.max_lag >= self.n_items:
            raise InputError(f"`n_items` ({self.n_items}) must exceed `max_lag` ({self.max_lag}): lags beyond "
                             f"{self.n_items - 1} can never occur; raise `n_items` or lower `max_lag` (at least "
                             f"{int(FIT_LAGS.max())})",
                             parameters=("n_items", "max_lag"))
        if self.n_start < 2:
            raise InputError(f"`n_start` must be at least 2 (the SEM is taken over start positions), "
                             f"got {self.n_start}", parameters=("n_start",))
        if self.max_draws > np.iinfo(np.int32).max:
            if cap_from_items:  # the user set n_items, not the cap: name what they gave
                raise InputError(f"`n_items` is too large: {self.n_items} (the standard rule draws up to `n_items` - 1 "
                                 f"items, at most {np.iinfo(np.int32).max})", parameters=("n_items",))
            raise InputError(f"`max_draws` is too large: {self.max_draws}", parameters=("max_draws",))
        stop = self.stop_probability
        if isinstance(stop, bool) or not isinstance(stop, (int, float, np.floating)) or not 0.0 <= stop < 1.0:
            raise InputError(f"`stop_probability` must be a number in [0, 1), got {stop!r}",
                             parameters=("stop_probability",))
        if stop > 0 and self.recall_rule == "li24":
            raise InputError("`stop_probability` applies to the standard recall rule only ([LI24]'s rule stops at "
                             "the absorbing state or the draw cap); set `recall_rule` to 'standard'",
                             parameters=("stop_probability", "recall_rule"))
        if self.recall_rule == "standard" and self.max_draws > self.n_items - 1:
            raise InputError(f"`max_draws` ({self.max_draws}) exceeds the longest possible recall under the standard "
                             f"rule: {self.n_items - 1} items can follow the start item (`n_items` - 1); leave "
                             "`max_draws` unset for no cap", parameters=("max_draws", "n_items"))
        object.__setattr__(self, "stop_probability", float(stop))

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
            raise InputError(f"`{name}` must be in {accepted}, got {value!r}", parameters=(name,))


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


@functools.lru_cache(maxsize=4)
def _standard_rule_tables(beta_enc: float, gamma_ft: float, n_items: int) -> Tuple[np.ndarray, np.ndarray]:
    # Cached like _component_tables: a grid slice simulates every beta_rec with the same tables.
    assoc = encoding_matrix(beta_enc, n_items)
    inputs = context_inputs(assoc, gamma_ft)
    for table in (assoc, inputs):
        table.setflags(write=False)
    return assoc, inputs


def _simulate_draw_major(beta_enc: float, beta_rec: float, gamma_ft: float, settings: CMRSettings,
                         rng: np.random.Generator) -> np.ndarray:
    """:func:`simulate_recall` with draws as rows: shape [max_draws, n_start * n_trials].

    Trial state is trial-major: row ``r`` of ``comp``, ``coef`` and ``cum_weight`` holds
    the context components of held trial ``r`` in order (shape [n_held, max_draws + 1]), so
    the compiled per-trial pass reads contiguous memory.
    The loop over draws, the random stream (two uniforms per held trial and draw) and
    the compaction of finished trials stay here; each draw's per-trial work is the
    compiled :func:`icl_cmr.cmr.kernels.draw_step`. Under the standard recall rule the whole simulation is
    :func:`icl_cmr.cmr.standard_rule.simulate_standard_draw_major`.
    """
    if settings.recall_rule == "standard":
        assoc, inputs = _standard_rule_tables(float(beta_enc), float(gamma_ft), int(settings.n_items))
        return simulate_standard_draw_major(assoc, inputs, settings.start_positions, settings.n_trials,
                                            settings.max_draws, beta_rec, settings.stop_probability, rng)
    tables = _component_tables(float(beta_enc), float(gamma_ft), int(settings.n_items), int(settings.n_start))
    size, absorbing, n_comp = tables.size, settings.n_items, tables.n_components
    n_rows, n_draws = settings.n_start * settings.n_trials, settings.max_draws
    index_dtype = np.int16 if size < np.iinfo(np.int16).max else np.int32
    draws = np.full((n_draws, n_rows), -1, dtype=index_dtype)

    # The true context is t = scale * sum_m coef[m] v_{comp[m]}; cum_weight[m] is the running
    # sum of coef * strength, the (unnormalised) probability mass of components 0..m.
    width = n_draws + 1
    comp = np.empty((n_rows, width), dtype=np.int16 if n_comp < np.iinfo(np.int16).max else np.int32)
    coef = np.empty((n_rows, width))
    cum_weight = np.empty((n_rows, width))
    comp[:, 0] = size + np.repeat(settings.start_positions, settings.n_trials)
    coef[:, 0] = 1.0
    cum_weight[:, 0] = tables.strength[comp[:, 0]]
    scale = np.ones(n_rows)
    row_ids = np.arange(n_rows)  # original row of each held trial
    alive = np.ones(n_rows, dtype=bool)
    uniform_buffer = np.empty(2 * n_rows)  # filled in place each draw: same stream, no allocation

    if beta_rec == 0.0:
        mode = kernels.CONTEXT_FIXED
    elif beta_rec == 1.0:
        mode = kernels.CONTEXT_LAST_INPUT
    else:
        mode = kernels.CONTEXT_DRIFT
    keep, drift = 1.0 - beta_rec, beta_rec
    # |(1-b) t + b t_in|^2 = (1-b)^2 + b^2 + 2 b (1-b) t . t_in, grouped as the original expression.
    norm_offset, norm_slope = keep * keep + drift * drift, 2.0 * drift * keep
    for k in range(n_draws):  # draws are sequential; all trials advance together
        n_held = row_ids.size
        uniforms = rng.random(out=uniform_buffer[:2 * n_held].reshape(2, n_held))
        n_alive = kernels.CACHED.call(kernels.draw_step, k, mode, uniforms[0], uniforms[1], comp, coef, cum_weight,
                                      scale, alive, row_ids, draws[k], tables.strength, tables.alias_prob,
                                      tables.alias_index, tables.overlap, size, n_comp, absorbing, keep, drift,
                                      norm_offset, norm_slope)
        if k + 1 == n_draws or n_alive == 0:
            break
        if n_alive < _COMPACT_BELOW * n_held:
            kept = np.flatnonzero(alive)
            row_ids, scale, alive = row_ids[kept], scale[kept], alive[kept]
            comp, coef, cum_weight = comp[kept], coef[kept], cum_weight[kept]
    return draws


def point_memory_bytes(settings: CMRSettings, simulate: bool = True, exact: bool = False,
                       conditional: bool = False) -> int:
    """Estimated peak bytes of the arrays one grid point allocates (an upper bound, for refusing early).

    Counts the largest arrays alive together, from the shapes in :func:`_simulate_draw_major`,
    :func:`_crp_from_draw_major`, :func:`exact_crp` and :mod:`icl_cmr.cmr.conditional`, with
    ``R = n_start * n_trials`` trials, ``D = max_draws``, ``L = 2 max_lag + 1`` lags and
    ``S = n_items + 1`` states:

    * simulation: draws ``[D, R]`` (int16), per-trial components, coefficients and running weights
      ``[R, D + 1]`` (int16 + 2 x float64), of which compacting finished trials copies up to 3/4; under the
      standard recall rule instead the draws and their uniforms ``[D, R]`` (float64, twice with a stop
      probability) and four tables ``[S, S]``;
    * the CRP of the draws: lags and masks ``[D, R]``, per-trial histograms ``[R, L]`` (float64, 3x);
    * the conditional lag-CRP (``conditional``): an int64 copy of the draws, int32 then int64
      counts made and possible ``[R, L]`` and their sums over start positions;
    * the exact CRP (``exact``): transition products ``[n_start, S, S]`` (float64, 3x) and the
      backward pass ``[D + 1, n_start, S]``;
    * with a simulation, building the component tables: up to 9 arrays ``[S + n_start, S]``;
    * 1 MiB for everything smaller.

    Parameters
    ----------
    settings : CMRSettings
    simulate, exact, conditional : bool
        Which computations the point may run (the peak is the largest of them).

    Returns
    -------
    int
        Bytes. Measured against ``tracemalloc`` peaks in the tests (within a factor 1-2.5).
    """
    trials = int(settings.n_start) * int(settings.n_trials)
    draws, lags, size = int(settings.max_draws), int(settings.n_lags), int(settings.n_items) + 1
    index_bytes = 2 if size < np.iinfo(np.int16).max else 4
    components = size + int(settings.n_start)
    peak = 0
    if simulate:
        if settings.recall_rule == "standard":
            uniforms = 2 if settings.stop_probability > 0 else 1
            simulation = trials * draws * (index_bytes + 8 * uniforms) + trials * 8
            tables = 4 * size * size * 8
        else:
            state = trials * (draws + 1) * (2 + 8 + 8)
            simulation = trials * draws * index_bytes + state * 7 // 4 + trials * 41
            tables = 9 * components * size * 8  # building the component tables
        histogram = trials * draws * (2 * index_bytes + 2) + trials * lags * (2 + 3 * 8)
        peak = max(simulation, histogram) + tables
        if conditional:
            peak = max(peak, trials * draws * (index_bytes + 8) + trials * lags * (4 + 4 + 8 + 8 + 8) + tables)
    if exact:
        peak = max(peak, 3 * int(settings.n_start) * size * size * 8 + (draws + 1) * int(settings.n_start) * size * 8
                   + 4 * size * size * 8)
    return int(peak) + _SMALL_ARRAYS_BYTES


#: Allowance for the small arrays of a grid point that :func:`point_memory_bytes` does not list.
_SMALL_ARRAYS_BYTES = 1 << 20


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

def has_exact_crp(beta_rec: float, recall_rule: str = "li24") -> bool:
    """Whether :func:`exact_crp` applies: [LI24]'s recall rule and ``beta_rec`` in {0, 1} (any ``beta_enc``,
    ``gamma_ft``). Under the standard rule the draws are never a Markov chain on items (which items remain
    depends on the whole recall), so there is no exact form."""
    return recall_rule == "li24" and (beta_rec == 0.0 or beta_rec == 1.0)


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
    if settings.recall_rule != "li24":
        raise InputError("exact CRPs exist only under [LI24]'s recall rule (repeats allowed), got recall_rule="
                         f"{settings.recall_rule!r}", parameters=("recall_rule",))
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
        ``"exact"``: :func:`exact_crp` where it applies (``beta_rec`` in {0, 1} under [LI24]'s
        recall rule), simulation elsewhere (everywhere under the standard rule).
        ``"simulate"``: simulation everywhere.
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
    if method == "authors" and settings.recall_rule != "li24":
        raise InputError("the authors' closed forms belong to [LI24]'s recall rule, got recall_rule="
                         f"{settings.recall_rule!r}", parameters=("method", "recall_rule"))
    if method == "exact" and has_exact_crp(beta_rec, settings.recall_rule):
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
