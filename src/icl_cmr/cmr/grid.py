"""The CMR CRP grid over beta_enc x beta_rec x gamma_ft (DESIGN.md section 3).

* :class:`GridSpec` fixes the axes, the simulation settings, the base seed and
  the method; it is everything that determines the numbers.
* Each grid point ``(i, j, k)`` gets its own ``numpy.random.Generator`` from
  ``SeedSequence(seed, spawn_key=(flat_index,))`` (the same stream as
  ``SeedSequence(seed).spawn(n)[flat_index]``), ``flat_index`` being the C-order
  index of ``(i, j, k)``. Any point can be recomputed alone, and results do not
  depend on the number of workers or the order in which they finish.
* Work is split into slices, one per ``(beta_enc, gamma_ft)`` pair covering every
  ``beta_rec`` (the simulator's tables depend on ``beta_enc`` and ``gamma_ft`` only), computed
  in this process or in worker processes (:func:`iterate_slices`). The resumable run that saves
  each finished slice is :func:`icl_cmr.experiments.cmr_grid.run_grid`; :func:`slice_problem`
  says whether a saved slice can be this spec's.
"""
from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icl_cmr.cmr.conditional import JACKKNIFE_GROUPS, conditional_cmr_crp
from icl_cmr.cmr.model import (
    CRP_METHODS,
    CMRSettings,
    cmr_crp,
    has_exact_crp,
    mean_and_sem_over_starts,
    point_memory_bytes,
)
from icl_cmr.config import BETA_ENC_GRID, BETA_REC_GRID, GAMMA_FT_GRID
from icl_cmr.errors import InputError

logger = logging.getLogger(__name__)

#: What a grid holds (:attr:`GridSpec.quantity`). ``"crp"``: the paper's CRP, a normalised histogram of
#: transition lags (repeats allowed), mean and SEM over start positions (DESIGN.md section 3).
#: ``"conditional"``: the conditional lag-CRP of the same simulator's recalls, defined as psifr defines
#: it for people (transitions made / possible), pooled over trials, with a jackknife standard error
#: (:mod:`icl_cmr.cmr.conditional`; issue 16). Same axes, seeds and layout.
GRID_QUANTITIES = ("crp", "conditional")


def grid_axes(n_beta: int = 20, n_gamma: int = 11) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paper's grid axes at a given resolution.

    Parameters
    ----------
    n_beta : int
        ``beta_enc = 1/n_beta, ..., 1`` (``n_beta`` values) and
        ``beta_rec = 0, 1/n_beta, ..., 1`` (``n_beta + 1`` values). [LI24]: 20.
    n_gamma : int
        ``gamma_ft = 0, 1/(n_gamma - 1), ..., 1`` (``n_gamma`` values, at least 2). [LI24]: 11.

    Returns
    -------
    beta_enc : np.ndarray, shape [n_beta]
    beta_rec : np.ndarray, shape [n_beta + 1]
    gamma_ft : np.ndarray, shape [n_gamma]
        Rounded to 10 decimals, as :mod:`icl_cmr.config` (defaults equal its grids).
    """
    if n_beta < 1:
        raise InputError(f"n_beta must be a positive integer, got {n_beta}")
    if n_gamma < 2:
        raise InputError(f"n_gamma must be at least 2 (gamma_ft runs from 0 to 1), got {n_gamma}")
    if (n_beta, n_gamma) == (len(BETA_ENC_GRID), len(GAMMA_FT_GRID)):
        return BETA_ENC_GRID.copy(), BETA_REC_GRID.copy(), GAMMA_FT_GRID.copy()
    beta_enc = np.round(np.arange(1, n_beta + 1) / n_beta, 10)
    beta_rec = np.round(np.arange(0, n_beta + 1) / n_beta, 10)
    gamma_ft = np.round(np.arange(n_gamma) / (n_gamma - 1), 10)
    return beta_enc, beta_rec, gamma_ft


@dataclass(frozen=True)
class GridSpec:
    """Everything that determines the CRP grid's numbers.

    Attributes
    ----------
    beta_enc, beta_rec, gamma_ft : tuple of float
        Grid axes (see :func:`grid_axes`).
    settings : CMRSettings
        Items, trials, draw limit, start positions, lags, and the recall rule (``settings.recall_rule``:
        [LI24]'s, the default, or the standard one, which has no exact form and so needs ``method="simulate"``).
    seed : int
        Base seed of the per-point generators.
    method : {"exact", "simulate", "authors"}
        See :func:`icl_cmr.cmr.model.cmr_crp`. Default ``"exact"``: the proven exact CRP at
        ``beta_rec`` in {0, 1}, simulation elsewhere. The conditional lag-CRP has no exact
        form: ``quantity="conditional"`` needs ``"simulate"``.
    quantity : {"crp", "conditional"}
        What the grid holds (:data:`GRID_QUANTITIES`). A point's generator does not depend on
        it, so at ``0 < beta_rec < 1`` both quantities come from the same simulated recalls.
    """

    beta_enc: tuple[float, ...]
    beta_rec: tuple[float, ...]
    gamma_ft: tuple[float, ...]
    settings: CMRSettings = field(default_factory=CMRSettings)
    seed: int = 0
    method: str = "exact"
    quantity: str = "crp"

    def __post_init__(self) -> None:
        if self.method not in CRP_METHODS:
            raise InputError(f"method must be one of {', '.join(CRP_METHODS)}, got {self.method!r}")
        if self.quantity not in GRID_QUANTITIES:
            raise InputError(f"quantity must be one of {', '.join(GRID_QUANTITIES)}, got {self.quantity!r}")
        if self.quantity == "conditional" and self.method != "simulate":
            raise InputError(f"the conditional lag-CRP is always simulated (it has no exact form): `method` must be "
                             f"'simulate', got {self.method!r}", parameters=("method", "quantity"))
        if self.settings.recall_rule != "li24" and self.method != "simulate":
            raise InputError(f"the {self.settings.recall_rule} recall rule is always simulated (it has no exact form): "
                             f"`method` must be 'simulate', got {self.method!r}", parameters=("method", "recall_rule"))
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in ("beta_enc", "beta_rec", "gamma_ft"):
            values = np.asarray(getattr(self, name), dtype=float)
            if values.ndim != 1 or values.size == 0:
                raise InputError(f"`{name}` must be a non-empty list of values", parameters=(name,))
            low_open = name == "beta_enc"
            if np.any(values > 1) or np.any(values < 0) or (low_open and np.any(values == 0)):
                raise InputError(f"`{name}` values must lie in {'(0, 1]' if low_open else '[0, 1]'}",
                                 parameters=(name,))
            object.__setattr__(self, name, tuple(float(v) for v in values))

    @classmethod
    def from_resolution(cls, n_beta: int = 20, n_gamma: int = 11, settings: CMRSettings | None = None,
                        seed: int = 0, method: str = "exact", quantity: str = "crp") -> GridSpec:
        """A spec on the paper's grid at resolution ``n_beta`` x ``n_gamma`` (see :func:`grid_axes`)."""
        beta_enc, beta_rec, gamma_ft = grid_axes(n_beta, n_gamma)
        return cls(tuple(beta_enc), tuple(beta_rec), tuple(gamma_ft),
                   settings if settings is not None else CMRSettings(), seed, method, quantity)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_beta_enc, n_beta_rec, n_gamma_ft)``."""
        return len(self.beta_enc), len(self.beta_rec), len(self.gamma_ft)

    @property
    def n_slices(self) -> int:
        """One slice per ``(beta_enc, gamma_ft)`` pair."""
        return len(self.beta_enc) * len(self.gamma_ft)

    def slice_position(self, slice_id: int) -> tuple[int, int]:
        """``(beta_enc index, gamma_ft index)`` of a slice."""
        if not 0 <= slice_id < self.n_slices:
            raise InputError(f"slice_id must be in [0, {self.n_slices}), got {slice_id}")
        return divmod(int(slice_id), len(self.gamma_ft))

    def point_rng(self, i_enc: int, j_rec: int, k_gamma: int) -> np.random.Generator:
        """The generator of grid point ``(i_enc, j_rec, k_gamma)``: keyed by its C-order flat index."""
        flat_index = int(np.ravel_multi_index((i_enc, j_rec, k_gamma), self.shape))
        return np.random.default_rng(np.random.SeedSequence(int(self.seed), spawn_key=(flat_index,)))

    def point_memory_bytes(self) -> int:
        """Estimated peak bytes of one grid point of this spec (:func:`icl_cmr.cmr.model.point_memory_bytes`)."""
        conditional = self.quantity == "conditional"
        rule = self.settings.recall_rule
        exact_only = self.method == "exact" and all(has_exact_crp(b, rule) for b in self.beta_rec)
        exact = not conditional and self.method == "exact" and any(has_exact_crp(b, rule) for b in self.beta_rec)
        return point_memory_bytes(self.settings, simulate=conditional or not exact_only, exact=exact,
                                  conditional=conditional)

    def memory_bytes(self, workers: int = 1) -> int:
        """Estimated peak bytes of :func:`run_grid` with ``workers`` processes.

        Each busy worker (at most one per slice) holds one grid point's arrays
        (:meth:`point_memory_bytes`); the parent holds the finished slices and, at the end, two
        more copies of the mean and SEM grids.
        """
        busy = min(max(int(workers), 1), self.n_slices)
        grid_bytes = 2 * self.n_slices * len(self.beta_rec) * self.settings.n_lags * 8
        return busy * self.point_memory_bytes() + 3 * grid_bytes

    def to_json(self) -> dict[str, Any]:
        """All parameters as JSON-friendly values (stored in metadata, compared on resume)."""
        s = self.settings
        return {
            "beta_enc": list(self.beta_enc), "beta_rec": list(self.beta_rec), "gamma_ft": list(self.gamma_ft),
            "n_items": int(s.n_items), "n_trials": int(s.n_trials), "max_draws": int(s.max_draws),
            "n_start": int(s.n_start), "max_lag": int(s.max_lag), "seed": int(self.seed), "method": self.method,
            # Only when not the default, so the paper's grid keeps its recorded spec.
            **({"quantity": self.quantity} if self.quantity != "crp" else {}),
            **({"recall_rule": s.recall_rule} if s.recall_rule != "li24" else {}),
            **({"stop_probability": s.stop_probability} if s.stop_probability != 0.0 else {}),
        }


def compute_point(spec: GridSpec, i_enc: int, j_rec: int, k_gamma: int) -> np.ndarray:
    """One grid point: per-start CRPs, shape [n_start, 2 * max_lag + 1] (quantity ``"crp"``), or the pooled
    conditional lag-CRP and its standard error, shape [2, 2 * max_lag + 1] (``"conditional"``)."""
    if spec.quantity == "conditional":
        return conditional_cmr_crp(spec.beta_enc[i_enc], spec.beta_rec[j_rec], spec.gamma_ft[k_gamma], spec.settings,
                                   rng=spec.point_rng(i_enc, j_rec, k_gamma))
    return cmr_crp(spec.beta_enc[i_enc], spec.beta_rec[j_rec], spec.gamma_ft[k_gamma], spec.settings,
                   rng=spec.point_rng(i_enc, j_rec, k_gamma), method=spec.method)


def compute_slice(spec: GridSpec, slice_id: int) -> np.ndarray:
    """Mean and SEM over start positions for every ``beta_rec`` of one slice.

    Returns
    -------
    np.ndarray, shape [2, n_beta_rec, 2 * max_lag + 1]
        ``[0]`` the mean CRP, ``[1]`` its SEM over start positions (quantity ``"crp"``); or ``[0]`` the
        pooled conditional lag-CRP, ``[1]`` its jackknife standard error (``"conditional"``).
    """
    i_enc, k_gamma = spec.slice_position(slice_id)
    curves = np.stack([compute_point(spec, i_enc, j_rec, k_gamma) for j_rec in range(len(spec.beta_rec))])
    if spec.quantity == "conditional":
        return np.ascontiguousarray(curves.transpose(1, 0, 2))
    return np.stack(mean_and_sem_over_starts(curves))


def _compute_slice_task(args: tuple[GridSpec, int]) -> tuple[int, np.ndarray]:
    spec, slice_id = args
    return slice_id, compute_slice(spec, slice_id)


def slice_problem(spec: GridSpec, array: np.ndarray) -> str | None:
    """Why a loaded slice cannot be this spec's, or None: the mean CRPs must be finite, non-negative and
    sum to 1 over lags; the SEMs finite and non-negative. A conditional lag-CRP slice holds probabilities
    in [0, 1], NaN at lag 0 (never possible) and wherever nothing was possible, and its standard errors
    are NaN at least there."""
    mean, sem = array[0], array[1]
    if spec.quantity == "conditional":
        if np.isinf(array).any() or not np.isnan(sem[np.isnan(mean)]).all():
            return "infinite values, or a standard error where the CRP is undefined"
        if not np.isnan(mean[..., spec.settings.max_lag]).all():
            return "lag 0 is not NaN"
        probabilities, errors = mean[np.isfinite(mean)], sem[np.isfinite(sem)]
        if (probabilities < 0).any() or (probabilities > 1).any() or (errors < 0).any():
            return "values outside [0, 1] or negative standard errors"
        return None
    if not (np.all(np.isfinite(array)) and np.all(array >= 0)):
        return "non-finite or negative values"
    if not np.allclose(mean.sum(axis=-1), 1.0, atol=1e-6):
        return "its CRPs do not sum to 1"
    return None


def iterate_slices(spec: GridSpec, pending: Iterable[int], workers: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """Compute slices, in this process (``workers=1``) or in worker processes, yielding each as it finishes.

    Parameters
    ----------
    spec : GridSpec
    pending : iterable of int
        Slice indices to compute.
    workers : int
        Worker processes; the results do not depend on it (one generator per grid point).

    Yields
    ------
    slice_id : int
    slice : np.ndarray, shape [2, n_beta_rec, 2 * max_lag + 1]
        :func:`compute_slice`'s result, in the order the slices finish.
    """
    if workers < 1:
        raise InputError(f"`workers` must be a positive integer, got {workers}", parameters=("workers",))
    pending = list(pending)
    if workers == 1 or len(pending) <= 1:
        for slice_id in pending:
            yield slice_id, compute_slice(spec, slice_id)
        return
    with multiprocessing.get_context().Pool(min(workers, len(pending)), initializer=ignore_interrupts) as pool:
        # Pool.__exit__ terminates the workers if the consumer stops early (error, interrupt).
        yield from pool.imap_unordered(_compute_slice_task, [(spec, slice_id) for slice_id in pending])


def ignore_interrupts() -> None:
    """Pool initializer: a worker ignores SIGINT, so Ctrl-C reaches only the parent.

    A terminal sends Ctrl-C to every process of the foreground group; without this each worker
    would print its own KeyboardInterrupt traceback. The parent stops the pool (its ``__exit__``
    terminates the workers), keeps the finished slices and reports one ``interrupted`` line
    (:func:`icl_cmr.cli.args.run_cli`).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def grid_description(quantity: str = "crp", recall_rule: str = "li24") -> str:
    """What a grid file holds, for its metadata (:data:`GRID_QUANTITIES`, :data:`icl_cmr.cmr.model.RECALL_RULES`)."""
    seeding = "per-point generators SeedSequence(seed, spawn_key=(C-order flat index,))"
    if recall_rule == "standard":
        rule = ("standard recall rule (s0 and recalled items excluded from later draws; recall ends at the absorbing "
                "state, when nothing left has strength, or at stop_probability per draw); ")
    else:
        rule = "[LI24]'s recall rule (repeats allowed, at most max_draws draws); "
    if quantity == "conditional":
        return ("conditional lag-CRP (transitions made / possible, psifr's rules: repeats neither start nor end a "
                "counted transition, s0 is the first recall) of the simulated recalls, pooled over all trials of "
                "start positions s0 = 0..n_start-1; lag 0 is NaN (never possible); SEM = delete-one-group "
                f"jackknife over {JACKKNIFE_GROUPS} groups of trials (trial index mod {JACKKNIFE_GROUPS}); "
                + (rule if recall_rule != "li24" else "") + seeding)
    return ("mean and SEM over start positions s0 = 0..n_start-1 of the normalised CMR CRP; "
            "SEM = std(ddof=1)/sqrt(n_start); " + (rule if recall_rule != "li24" else "") + seeding)
