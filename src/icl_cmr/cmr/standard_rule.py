"""The standard recall rule for [LI24]'s CMR: recalled items excluded, recall ending by itself (issue 24).

[LI24]'s rule (DESIGN.md section 3, :mod:`icl_cmr.cmr.model`) lets any item be drawn again and ends a recall only
at the absorbing state or at a cap of ``max_draws`` draws. Standard CMR (Polyn, Norman & Kahana 2009; Morton &
Polyn 2016's ``cymr``) excludes the items already recalled and ends recall by itself. This module simulates
[LI24]'s model (same encoding, context drift, linear Luce choice and absorbing state) under that rule:

* the sequence starts with ``s0``, which plays the first recall (as in the conditional lag-CRP,
  :mod:`icl_cmr.cmr.conditional`), so ``s0`` and every item drawn are excluded from later draws;
* each draw picks item ``j`` with probability ``F_j / sum_k F_k`` over the items not yet in the sequence plus
  the absorbing state, ``F = M^T t`` the retrieval strengths of the current context;
* the recall ends when the absorbing state is drawn, when nothing left has any strength (no item and not the
  absorbing state: e.g. ``beta_enc = 1``, ``beta_rec = 0``, where only ``s0 + 1`` is ever supported), or, before
  any draw, with probability ``stop_probability`` (0 by default: the absorbing state alone stops the recall);
* the context drifts after each draw exactly as under [LI24]'s rule.

No cap is needed: at most ``n_items - 1`` items can follow ``s0``, and that is the default number of draws
(:class:`icl_cmr.cmr.model.CMRSettings`); a smaller ``max_draws`` is a cap, as under [LI24]'s rule.

Exactness: the compiled kernel (:func:`icl_cmr.cmr.kernels.standard_recall_kernel`) keeps each trial's ``t`` and
``F`` as vectors, with ``F`` zeroed on the excluded items, and draws by inverse transform (the first running sum
of ``F`` above ``u * sum F``), one uniform per draw: an exact draw from the renormalised distribution, with no
rejection loop (so no fallback is needed however little strength the remaining items keep). Tests check it
against a slow loop written from these equations (``tests/test_cmr_standard_rule.py``). Cost: O(n_items) per
draw and trial, against O(draws so far) for [LI24]'s rule, whose component trick does not survive exclusion.
"""
from __future__ import annotations

import numpy as np

from icl_cmr.cmr import kernels
from icl_cmr.errors import InputError


def simulate_standard_draw_major(assoc: np.ndarray, inputs: np.ndarray, start_positions: np.ndarray, n_trials: int,
                                 max_draws: int, beta_rec: float, stop_probability: float,
                                 rng: np.random.Generator) -> np.ndarray:
    """Simulate recalls under the standard rule, draws as rows (the simulator's layout).

    Parameters
    ----------
    assoc : np.ndarray, shape [size, size]
        ``M`` of :func:`icl_cmr.cmr.model.encoding_matrix` (``size = n_items + 1``, the absorbing state last).
    inputs : np.ndarray, shape [size, size]
        ``t_in(j)`` as rows (:func:`icl_cmr.cmr.model.context_inputs`).
    start_positions : np.ndarray, shape [n_start]
        Start items; trials are start-major (``n_trials`` per start).
    n_trials, max_draws : int
    beta_rec : float
        Retrieval drift in [0, 1].
    stop_probability : float
        Probability of ending the recall before each draw, in [0, 1).
    rng : numpy.random.Generator
        Draws ``max_draws * n_start * n_trials`` uniforms for the items, then as many for the stop decisions
        when ``stop_probability > 0``.

    Returns
    -------
    np.ndarray, shape [max_draws, n_start * n_trials], int16 (int32 for > 32766 items)
        Drawn items; ``-1`` after the trial ended.
    """
    if not 0.0 <= stop_probability < 1.0:
        raise InputError(f"`stop_probability` must be in [0, 1), got {stop_probability!r}",
                         parameters=("stop_probability",))
    size = assoc.shape[0]
    starts = np.repeat(np.asarray(start_positions, dtype=np.int64), n_trials)
    index_dtype = np.int16 if size < np.iinfo(np.int16).max else np.int32
    draws = np.full((max_draws, starts.size), -1, dtype=index_dtype)
    item_uniforms = rng.random((max_draws, starts.size))
    stop_uniforms = rng.random((max_draws, starts.size)) if stop_probability > 0 else np.zeros((1, 1))
    retrieval = np.ascontiguousarray(inputs @ assoc)  # row j: (M^T t_in(j))^T
    kernels.CACHED.call(kernels.standard_recall_kernel, starts, np.ascontiguousarray(assoc),
                        np.ascontiguousarray(inputs), retrieval, 1.0 - beta_rec, float(beta_rec), size - 1,
                        item_uniforms, stop_uniforms, float(stop_probability), draws)
    return draws


__all__ = ["simulate_standard_draw_major"]
