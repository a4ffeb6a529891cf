"""Fitting attention heads to CMR: the CMR distance and the grid search (DESIGN.md section 4).

For one head and one CMR grid point, on the fitting lags -5..+5 ([LI24] ``fit_attn_score``):

* ``a`` is the head's attention CRP (pre-softmax scores), ``c`` the grid point's CMR CRP cut to
  the same lags and renormalised to sum 1;
* both are shifted so that their minimum is 0: ``a~ = a - min a``, ``c~ = c - min c``;
* ``c~`` is scaled so that the maxima match, ``s = max a~ / max c~`` (reported as the inverse
  temperature 1/tau);
* the CMR distance is ``D = mean_k (s c~_k - a~_k)^2 / var(a~)`` (population variance, ddof 0).

A head's fit is the grid point with the smallest D, the first one in C order on ties (numpy's
``argmin``), exactly as the authors' loop picks it.

Everything here is pure: arrays in, arrays out. :func:`fit_heads` fits any number of heads
against every grid point at once. With ``c = c~ / max c~`` (maximum 1), the distance is
``D = (max(a~)^2 sum(c^2) - 2 max(a~) a~.c + sum(a~^2)) / (K var(a~))``, so for one head only
``max(a~) sum(c^2) - 2 a~.c`` changes between grid points: one matrix product per block of heads
ranks all grid points (rounding error far below 1e-12 in D, see :func:`fit_heads`). The direct
formula is then evaluated for the grid points within ``tie_tolerance`` of each head's best, so the
reported distance and the tie-breaking are exactly those of the direct formula.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icl_cmr.config import (ATTN_CRP_LAGS, BETA_ENC_GRID, BETA_REC_GRID, CMR_CRP_LAGS, FIT_LAGS, GAMMA_FT_GRID,
                            HUMAN_FIT_LAGS)
from icl_cmr.errors import InputError

logger = logging.getLogger(__name__)

#: Names of the three CMR parameters, in the order of the grid's axes (DESIGN.md section 3).
PARAMETER_NAMES = ("beta_enc", "beta_rec", "gamma_ft")

#: Simulation settings a grid records (its JSON sidecar): two grids are of the same simulator only
#: when these agree (:attr:`CmrGrid.simulation`).
SIMULATION_SETTINGS = ("n_items", "n_trials", "max_draws", "n_start", "max_lag", "seed")

#: Simulation settings a sidecar records only when they differ from their default (the default here): a grid
#: without the key was made with the default (every grid made before the setting existed).
OPTIONAL_SIMULATION_SETTINGS = {"stop_probability": 0.0}


@dataclass(frozen=True)
class CmrGrid:
    """A CMR CRP grid: the CRP for every (beta_enc, beta_rec, gamma_ft) grid point.

    Attributes
    ----------
    mean : ndarray, shape [A, B, C, n_lags]
        CRP per grid point (mean over start positions), lags ``lags``.
    beta_enc, beta_rec, gamma_ft : ndarray, shapes [A], [B], [C]
        Parameter value of each index along the first three axes.
    lags : ndarray, shape [n_lags]
        Lag of each entry of the last axis (default -8..+8).
    sem : ndarray, shape [A, B, C, n_lags], optional
        Standard error of ``mean`` (over start positions); None when unknown.
    source : str
        Where the grid came from (a path), for metadata.
    simulation : dict, optional
        The simulation settings the grid was made with (:data:`SIMULATION_SETTINGS`), when its
        file records them; None when unknown.
    """

    mean: np.ndarray
    beta_enc: np.ndarray = field(default_factory=lambda: BETA_ENC_GRID.copy())
    beta_rec: np.ndarray = field(default_factory=lambda: BETA_REC_GRID.copy())
    gamma_ft: np.ndarray = field(default_factory=lambda: GAMMA_FT_GRID.copy())
    lags: np.ndarray = field(default_factory=lambda: CMR_CRP_LAGS.copy())
    sem: np.ndarray | None = None
    source: str = ""
    simulation: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=float)
        if mean.ndim != 4:
            raise InputError(f"CMR grid must have 4 axes [beta_enc, beta_rec, gamma_ft, lag], got shape {mean.shape}")
        axes = tuple(np.asarray(getattr(self, name), dtype=float) for name in PARAMETER_NAMES)
        for name, values, size in zip(PARAMETER_NAMES, axes, mean.shape[:3]):
            if values.ndim != 1 or values.size != size:
                raise InputError(f"CMR grid axis {name} has {values.size} values but the grid has {size} "
                                 f"points on that axis (grid shape {mean.shape})")
        lags = np.asarray(self.lags)
        if lags.shape != (mean.shape[3],):
            raise InputError(f"CMR grid has {mean.shape[3]} lags but {lags.size} lag labels were given")
        if self.sem is not None and np.shape(self.sem) != mean.shape:
            raise InputError(f"CMR grid SEM has shape {np.shape(self.sem)}, expected {mean.shape}")
        object.__setattr__(self, "mean", mean)
        for name, values in zip(PARAMETER_NAMES, axes):
            object.__setattr__(self, name, values)
        object.__setattr__(self, "lags", lags)
        if self.sem is not None:
            object.__setattr__(self, "sem", np.asarray(self.sem, dtype=float))

    @property
    def shape(self) -> tuple:
        """Number of grid points along (beta_enc, beta_rec, gamma_ft)."""
        return tuple(self.mean.shape[:3])

    def describe(self) -> dict:
        """The grid's shape and axis values in JSON types, as the metadata of every fit records them.

        Returns
        -------
        dict
            ``grid_shape`` [A, B, C] and the values of ``beta_enc`` [A], ``beta_rec`` [B], ``gamma_ft`` [C]
            (where the grid came from is the writer's to add: :func:`icl_cmr.experiments.fits.grid_parameters`).
        """
        return {"grid_shape": list(self.shape), "beta_enc": self.beta_enc.tolist(), "beta_rec": self.beta_rec.tolist(),
                "gamma_ft": self.gamma_ft.tolist()}

    def parameters_at(self, index: np.ndarray) -> np.ndarray:
        """Parameter values at integer grid indices.

        Parameters
        ----------
        index : ndarray of int, shape [..., 3]
            Indices along (beta_enc, beta_rec, gamma_ft).

        Returns
        -------
        ndarray, shape [..., 3]
            (beta_enc, beta_rec, gamma_ft) values.
        """
        index = np.asarray(index)
        return np.stack([self.beta_enc[index[..., 0]], self.beta_rec[index[..., 1]],
                         self.gamma_ft[index[..., 2]]], axis=-1)

    def index_of(self, beta_enc: float, beta_rec: float, gamma_ft: float) -> tuple:
        """Grid indices of the point nearest to the given parameter values."""
        return tuple(int(np.argmin(np.abs(axis - value)))
                     for axis, value in zip((self.beta_enc, self.beta_rec, self.gamma_ft),
                                            (beta_enc, beta_rec, gamma_ft)))


@dataclass(frozen=True)
class CmrFit:
    """Best CMR fit of every head (DESIGN.md section 4). Head axes ``[...]`` are the input's.

    Attributes
    ----------
    distance : ndarray, shape [...]
        CMR distance D of the best grid point; NaN for heads that cannot be fitted (a NaN in
        their CRP, or a flat CRP, whose variance is 0).
    params : ndarray, shape [..., 3]
        Fitted (beta_enc, beta_rec, gamma_ft); NaN where ``distance`` is NaN.
    param_index : ndarray of int, shape [..., 3]
        Grid indices of the fit; -1 where ``distance`` is NaN.
    inverse_temperature : ndarray, shape [...]
        Scale s = max(a~) / max(c~) of the fit (1/tau).
    fitted_pattern : ndarray, shape [..., K]
        CMR CRP of the fit on the fitting lags, renormalised to sum 1 (``c``).
    fitted_pattern_scaled : ndarray, shape [..., K]
        ``s * (c - min c)``, on the scale of ``attn_scaled``.
    attn_scaled : ndarray, shape [..., K]
        The head's CRP shifted to minimum 0 (``a~``).
    lags : ndarray, shape [K]
        The fitting lags (-5..+5 by default).
    """

    distance: np.ndarray
    params: np.ndarray
    param_index: np.ndarray
    inverse_temperature: np.ndarray
    fitted_pattern: np.ndarray
    fitted_pattern_scaled: np.ndarray
    attn_scaled: np.ndarray
    lags: np.ndarray

    def as_authors_dict(self) -> dict[str, np.ndarray]:
        """The authors' ``fit()`` result keys ([LI24] ``fit_attn_score.fit``)."""
        return {
            "fitted_MSE": self.distance,
            "fitted_params": self.params,
            "fitted_patterns": self.fitted_pattern,
            "fitted_pattern_scaled": self.fitted_pattern_scaled,
            "attn_scaled": self.attn_scaled,
            "fitted_scale_factors": self.inverse_temperature,
        }


def lag_ranges(lags) -> str:
    """Lags as runs of consecutive values, for messages: ``[-9, -8, 8, 9, 11]`` -> ``"lags -9..-8, 8..9 and 11 are"``.

    A hundred out-of-range lags read as two ranges, not as a hundred numbers.
    """
    values = sorted({int(lag) for lag in lags})
    runs = []
    for lag in values:
        if runs and lag == runs[-1][1] + 1:
            runs[-1][1] = lag
        else:
            runs.append([lag, lag])
    parts = [f"{low}" if low == high else f"{low}..{high}" for low, high in runs]
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    plural = len(values) > 1
    return f"lag{'s' if plural else ''} {listed} {'are' if plural else 'is'}"


def select_lags(values: np.ndarray, lags: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Entries of ``values`` (last axis labelled by ``lags``) at the lags ``wanted``.

    Parameters
    ----------
    values : ndarray, shape [..., n_lags]
    lags : ndarray of int, shape [n_lags]
    wanted : ndarray of int, shape [K]

    Returns
    -------
    ndarray, shape [..., K]

    Raises
    ------
    InputError
        If a wanted lag is not among ``lags`` or the last axis does not match ``lags``.
    """
    values = np.asarray(values)
    lags = np.asarray(lags)
    if values.shape[-1] != lags.size:
        raise InputError(f"last axis has {values.shape[-1]} entries but {lags.size} lags were given")
    position = {int(lag): i for i, lag in enumerate(lags)}
    missing = [int(lag) for lag in wanted if int(lag) not in position]
    if missing:
        raise InputError(f"{lag_ranges(missing)} not available; available lags: {lags.min()}..{lags.max()}")
    return values[..., [position[int(lag)] for lag in wanted]]


def cmr_fit_patterns(grid: CmrGrid, fit_lags: np.ndarray = FIT_LAGS) -> np.ndarray:
    """The grid's CMR CRPs cut to ``fit_lags`` and renormalised to sum 1 (``c`` in section 4).

    Parameters
    ----------
    grid : CmrGrid
    fit_lags : ndarray of int, shape [K]

    Returns
    -------
    ndarray, shape [A, B, C, K]
    """
    cut = select_lags(grid.mean, grid.lags, fit_lags)
    with np.errstate(invalid="ignore", divide="ignore"):
        return cut / cut.sum(axis=-1, keepdims=True)


def usable_grid_points(grid: CmrGrid, fit_lags: np.ndarray = FIT_LAGS) -> np.ndarray:
    """Which grid points a fit can choose: a CRP finite and not flat on ``fit_lags`` once renormalised there.

    A point is NaN where the simulation counted no transition at those lags (the paper's CRP is normalised per start
    position, so one start without a transition makes the mean NaN; too few trials, or a high stop probability under
    the standard rule); a flat pattern has no scale (section 4's max c~ = 0).

    Parameters
    ----------
    grid : CmrGrid
    fit_lags : ndarray of int, shape [K]

    Returns
    -------
    ndarray of bool, shape [A, B, C]
    """
    cmr = cmr_fit_patterns(grid, fit_lags)
    spread = cmr.max(axis=-1) - cmr.min(axis=-1)
    return np.isfinite(spread) & (spread > 0)


def describe_grid_points(grid: CmrGrid, mask: np.ndarray, n_shown: int = 3) -> str:
    """The first ``n_shown`` points of ``mask`` [A, B, C] as ``(beta_enc, beta_rec, gamma_ft)`` values, for messages.

    Examples
    --------
    >>> grid = CmrGrid(mean=np.full((1, 2, 1, 17), 1 / 17), beta_enc=[0.5], beta_rec=[0, 1], gamma_ft=[0])
    >>> describe_grid_points(grid, np.array([[[True], [True]]]), n_shown=1)
    '(0.5, 0, 0), ...'
    """
    points = np.argwhere(mask)
    shown = [f"({grid.beta_enc[i]:g}, {grid.beta_rec[j]:g}, {grid.gamma_ft[k]:g})" for i, j, k in points[:n_shown]]
    return ", ".join(shown) + (", ..." if len(points) > n_shown else "")


def cmr_distance(attn: np.ndarray, cmr: np.ndarray) -> tuple:
    """CMR distance and scale between every head and every CMR pattern (direct formula).

    Parameters
    ----------
    attn : ndarray, shape [N, K]
        Heads' attention CRPs on the fitting lags.
    cmr : ndarray, shape [G, K]
        CMR CRPs on the same lags, each normalised to sum 1.

    Returns
    -------
    distance : ndarray, shape [N, G]
        ``mean_k (s c~_k - a~_k)^2 / var(a~)``.
    scale : ndarray, shape [N, G]
        ``s = max a~ / max c~`` (1/tau).

    Notes
    -----
    Memory is N x G x K floats; :func:`fit_heads` is the fast path for large inputs.
    """
    attn = np.asarray(attn, dtype=float)
    cmr = np.asarray(cmr, dtype=float)
    attn_shift = attn - attn.min(axis=-1, keepdims=True)
    cmr_shift = cmr - cmr.min(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = attn_shift.max(axis=-1)[:, None] / cmr_shift.max(axis=-1)[None, :]
        residual = scale[:, :, None] * cmr_shift[None, :, :] - attn_shift[:, None, :]
        distance = np.mean(residual ** 2 / np.var(attn_shift, axis=-1)[:, None, None], axis=-1)
    return distance, scale


def fit_heads(attn_crp: np.ndarray, grid: CmrGrid, attn_lags: np.ndarray = ATTN_CRP_LAGS,
              fit_lags: np.ndarray = FIT_LAGS, chunk_size: int = 512,
              tie_tolerance: float = 1e-9) -> CmrFit:
    """Fit every head to the CMR grid by minimising the CMR distance (DESIGN.md section 4).

    Parameters
    ----------
    attn_crp : ndarray, shape [..., n_attn_lags]
        Attention CRP of each head (pre-softmax scores, as in the score files), lags
        ``attn_lags`` (-8..+7 by default). Any leading shape: [L, H], [T, L, H], [N], ...
    grid : CmrGrid
        CMR CRPs to fit against.
    attn_lags : ndarray of int, shape [n_attn_lags]
        Lag of each entry of ``attn_crp``'s last axis.
    fit_lags : ndarray of int, shape [K]
        Lags used in the fit (-5..+5, [LI24]).
    chunk_size : int
        Heads per block (bounds memory at about ``chunk_size x n_grid_points`` floats).
    tie_tolerance : float
        Grid points whose fast-path distance lies within this of a head's minimum are
        re-evaluated with the direct formula; it must exceed the ranking's rounding error
        (below 1e-13 in D for K = 11: that error is at most a few K^2 machine epsilons because
        ``max(a~)^2 <= 2 K var(a~)`` when min(a~) = 0).

    Returns
    -------
    CmrFit
        Per head: distance, params, grid indices, 1/tau, fitted and scaled patterns.

    Raises
    ------
    InputError
        If no grid point has a usable pattern (all NaN or flat).
    """
    attn_crp = np.asarray(attn_crp, dtype=float)
    head_shape = attn_crp.shape[:-1]
    attn = select_lags(attn_crp, attn_lags, fit_lags).reshape(-1, len(fit_lags))
    n_heads, n_lags = attn.shape

    cmr = cmr_fit_patterns(grid, fit_lags).reshape(-1, n_lags)
    cmr_shift = cmr - cmr.min(axis=-1, keepdims=True)
    cmr_max = cmr_shift.max(axis=-1)
    # A flat or NaN CMR pattern has no scale (max c~ = 0): such grid points are never chosen.
    usable_points = np.isfinite(cmr_max) & (cmr_max > 0)
    if not usable_points.any():
        raise InputError("the CMR grid has no usable point (every pattern is NaN or flat on the fitting lags)")
    if not usable_points.all():
        logger.warning("%d of %d CMR grid points are NaN or flat on lags %s..%s and are skipped",
                       int((~usable_points).sum()), usable_points.size, fit_lags[0], fit_lags[-1])
    unit_cmr = np.zeros_like(cmr_shift)
    unit_cmr[usable_points] = cmr_shift[usable_points] / cmr_max[usable_points, None]  # max 1
    unit_cmr_sq = np.where(usable_points, (unit_cmr ** 2).sum(axis=-1), np.inf)            # [G]

    with np.errstate(invalid="ignore"):  # inf - inf in heads with an infinite value: never fitted
        attn_shift = attn - attn.min(axis=-1, keepdims=True)
        attn_max = attn_shift.max(axis=-1)
        attn_var = np.var(attn_shift, axis=-1)
    fittable = np.isfinite(attn_shift).all(axis=-1) & (attn_var > 0)

    # For one head, D at grid point g is (a_max^2 u_g - 2 a_max (a~ . c_g) + sum a~^2) / (K var)
    # with c_g = c~_g / max c~_g and u_g = sum c_g^2; only a_max u_g - 2 a~ . c_g varies with g, so
    # one matrix product [a~, a_max] @ [-2 c; u]^T ranks all grid points of a block of heads.
    ranking_matrix = np.concatenate([-2.0 * unit_cmr, unit_cmr_sq[:, None]], axis=1).T   # [K + 1, G]
    best_index = np.full(n_heads, -1, dtype=np.int64)
    best_distance = np.full(n_heads, np.nan)
    usable_heads = np.flatnonzero(fittable)
    # Blocks of heads bound memory; each block is one matrix product over all grid points.
    for start in range(0, usable_heads.size, chunk_size):
        heads = usable_heads[start:start + chunk_size]
        a_shift, a_max, a_var = attn_shift[heads], attn_max[heads], attn_var[heads]
        ranking = np.concatenate([a_shift, a_max[:, None]], axis=1) @ ranking_matrix   # [n, G], inf if unusable
        # A distance difference dD is a ranking difference a_max dR / (K var).
        slack = tie_tolerance * n_lags * a_var / a_max
        rows, cols = np.nonzero(ranking <= (ranking.min(axis=1) + slack)[:, None])   # row-major: cols ascend
        scale = a_max[rows] / cmr_max[cols]
        residual = scale[:, None] * cmr_shift[cols] - a_shift[rows]
        exact = np.mean(residual ** 2 / a_var[rows, None], axis=-1)
        order = np.lexsort((cols, exact, rows))                             # per row: min D, then first
        first = order[np.unique(rows[order], return_index=True)[1]]
        best_index[heads[rows[first]]] = cols[first]
        best_distance[heads[rows[first]]] = exact[first]

    found = best_index >= 0
    grid_index = np.full((n_heads, 3), -1, dtype=np.int64)
    grid_index[found] = np.stack(np.unravel_index(best_index[found], grid.shape), axis=-1)
    params = np.full((n_heads, 3), np.nan)
    params[found] = grid.parameters_at(grid_index[found])
    inverse_temperature = np.full(n_heads, np.nan)
    inverse_temperature[found] = attn_max[found] / cmr_max[best_index[found]]
    fitted_pattern = np.full((n_heads, n_lags), np.nan)
    fitted_pattern[found] = cmr[best_index[found]]
    fitted_scaled = np.full((n_heads, n_lags), np.nan)
    fitted_scaled[found] = inverse_temperature[found, None] * cmr_shift[best_index[found]]
    if (~fittable).any():  # the scripts report this per file (check_fitted); here only for debugging
        logger.debug("%d of %d heads have a NaN, infinite or flat CRP on the fitting lags: no fit (NaN)",
                     int((~fittable).sum()), n_heads)
    return CmrFit(
        distance=best_distance.reshape(head_shape),
        params=params.reshape(head_shape + (3,)),
        param_index=grid_index.reshape(head_shape + (3,)),
        inverse_temperature=inverse_temperature.reshape(head_shape),
        fitted_pattern=fitted_pattern.reshape(head_shape + (n_lags,)),
        fitted_pattern_scaled=fitted_scaled.reshape(head_shape + (n_lags,)),
        attn_scaled=attn_shift.reshape(head_shape + (n_lags,)),
        lags=np.asarray(fit_lags).copy(),
    )


def check_fitted(fit: CmrFit, source: str, index: tuple = ()) -> int:
    """Count the heads of one score file that could be fitted; refuse a file where none could.

    A head cannot be fitted when its attention CRP on the fitting lags holds a NaN or an infinite
    value, or is constant (variance 0, so D is undefined); :func:`fit_heads` gives it NaN.
    A file where no head can be fitted would give empty figures and "0 of N heads fitted", so it
    is an error; a file where only some can be fitted gives a warning with the count.

    Parameters
    ----------
    fit : CmrFit
        Result of :func:`fit_heads`, head axes [..., L, H].
    source : str
        The score file (or model) the heads come from, for the messages.
    index : tuple
        Leading index selecting one file's heads, e.g. ``(t,)`` for checkpoint t of a [T, L, H] fit.

    Returns
    -------
    int
        Number of heads with a finite CMR distance.

    Raises
    ------
    InputError
        If no head could be fitted, or the file holds no heads at all.
    """
    distance = np.asarray(fit.distance[index])
    attn = np.asarray(fit.attn_scaled[index])
    n_heads = int(distance.size)
    if n_heads == 0:
        raise InputError(f"{source}: holds no heads (head axes of shape {distance.shape}); nothing to fit")
    fitted = int(np.isfinite(distance).sum())
    if fitted == n_heads:
        return fitted
    non_finite = int((~np.isfinite(attn).all(axis=-1)).sum())
    flat = n_heads - fitted - non_finite
    reasons = ", ".join(part for part in (f"{non_finite} with a NaN or infinite value" if non_finite else "",
                                          f"{flat} constant" if flat else "") if part)
    lags = f"lags {int(fit.lags[0])}..{int(fit.lags[-1])}"
    if fitted == 0:
        raise InputError(f"{source}: none of its {n_heads} heads can be fitted to CMR: every attention CRP on "
                         f"{lags} is NaN, infinite or constant ({reasons})")
    logger.warning("%s: only %d of %d heads could be fitted to CMR; %d are left out (NaN) because their attention "
                   "CRP on %s is not usable (%s)", source, fitted, n_heads, n_heads - fitted, lags, reasons)
    return fitted


def conditional_grid_hint(recall_rule: str = "li24") -> str:
    """How to make the conditional grid of a recall rule, and the names it gets, for messages.

    Examples
    --------
    >>> conditional_grid_hint("standard")
    '`python src/est_cmr_crp.py --quantity conditional --recall_rule standard` (cmr_std_cond_crp_avg_*.npy)'
    """
    if recall_rule == "li24":
        return "`python src/est_cmr_crp.py --quantity conditional` (cmr_cond_crp_avg_*.npy)"
    return f"`python src/est_cmr_crp.py --quantity conditional --recall_rule {recall_rule}` (cmr_std_cond_crp_avg_*.npy)"


def check_conditional_grid(grid: CmrGrid, fit_lags: np.ndarray = HUMAN_FIT_LAGS, parameter: str | None = None,
                           recall_rule: str = "li24") -> None:
    """Raise :class:`InputError` unless ``grid`` holds conditional lag-CRPs on the fitting lags.

    ``fit_lags`` are the lags a person's fit reads (:data:`icl_cmr.config.HUMAN_FIT_LAGS`).
    A conditional lag-CRP is a probability per lag (values in [0, 1]) and lag 0 is never possible
    (NaN). A grid whose lag 0 is finite is the paper's lag histogram (``est_cmr_crp.py`` without
    ``--quantity conditional``), a different quantity. ``parameter`` (the caller's, named in messages) and
    ``recall_rule`` (the rule whose grid to make, :func:`conditional_grid_hint`) only shape the messages.
    """
    lags = np.asarray(grid.lags)
    where = f"`{parameter}` {grid.source}" if parameter else (grid.source or "the grid")
    if 0 in lags and np.isfinite(grid.mean[..., int(np.flatnonzero(lags == 0)[0])]).any():
        raise InputError(f"{where} holds the paper's CRP (a lag histogram: lag 0 is defined), not the conditional "
                         f"lag-CRP fitted here; make that with {conditional_grid_hint(recall_rule)}",
                         parameters=(parameter,) if parameter else ())
    missing = [int(lag) for lag in fit_lags if lag not in lags]
    if missing:
        raise InputError(f"{grid.source or 'the grid'} has no lags {missing}; a conditional grid needs lags "
                         f"{fit_lags[0]}..{fit_lags[-1]}")
    values = grid.mean[np.isfinite(grid.mean)]
    if values.size == 0 or values.min() < 0 or values.max() > 1:
        raise InputError(f"{grid.source or 'the grid'} is not a conditional lag-CRP grid: values must be "
                         "probabilities in [0, 1] (NaN where a lag was never possible)")

