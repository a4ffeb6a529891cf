"""The CMR CRP grid as a resumable run (DESIGN.md section 3; ``est_cmr_crp.py``).

:class:`CmrGridSettings` holds everything the script's flags set, with the same defaults;
:func:`run_cmr_grid` computes the grid slice by slice (:mod:`icl_cmr.cmr.grid`), saving each
finished slice in a :class:`~icl_cmr.files.resume.RunFolder`, so a killed run resumes where it
stopped and gives bit-identical results. The caller writes the final files
(:mod:`icl_cmr.files.grids` names them) and then removes the partial folder.

Examples
--------
>>> from icl_cmr.experiments.cmr_grid import CmrGridSettings, run_cmr_grid
>>> settings = CmrGridSettings(n_beta=4, n_gamma=3, n_trials=100, workers=1)   # doctest: +SKIP
>>> grid = run_cmr_grid(settings, partial_dir="/tmp/grid.partial")              # doctest: +SKIP
>>> grid.mean.shape                                                             # doctest: +SKIP
(4, 5, 3, 17)
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
from tqdm.auto import tqdm

from icl_cmr.cmr.grid import GRID_QUANTITIES, GridSpec, grid_description, iterate_slices, slice_problem
from icl_cmr.cmr.model import CMRSettings
from icl_cmr.config import FIT_LAGS, HUMAN_FIT_LAGS
from icl_cmr.devices import check_worker_count
from icl_cmr.errors import BadFileError, InputError
from icl_cmr.files.memory import free_memory, memory_drivers, named_list
from icl_cmr.files.reading import load_json, load_npy
from icl_cmr.files.resume import REPLACE_REMEDY, RunFolder, refuse_other_settings
from icl_cmr.files.unpickling import human_bytes
from icl_cmr.files.writing import save_npy
from icl_cmr.fits.distance import CmrGrid, describe_grid_points, usable_grid_points

logger = logging.getLogger(__name__)

#: The partial folder's fingerprint file (the grid's :meth:`GridSpec.to_json`).
SPEC_FILE = "spec.json"

_CMR_DEFAULTS = CMRSettings()


def default_workers() -> int:
    """Worker processes by default: two, or fewer on a machine with fewer CPUs."""
    return min(2, os.cpu_count() or 1)


@dataclass(frozen=True)
class CmrGridSettings:
    """A CMR grid run, as ``est_cmr_crp.py``'s flags set it (same names, same defaults).

    Attributes
    ----------
    n_beta : int
        ``beta_enc = 1/n_beta .. 1`` (``n_beta`` values), ``beta_rec = 0 .. 1`` (``n_beta + 1``). [LI24]: 20.
    n_gamma : int
        ``gamma_ft = 0 .. 1`` in ``n_gamma`` values, at least 2. [LI24]: 11.
    n_trials, n_items, n_start, max_lag : int
        The simulation (:class:`icl_cmr.cmr.model.CMRSettings`; DESIGN.md section 3).
    max_draws : int, optional
        Draw cap; default 50 under [LI24]'s rule, ``n_items - 1`` (no cap) under the standard rule.
    seed : int
        Base seed of the per-point generators.
    quantity : {"crp", "conditional"}
        The paper's CRP or the conditional lag-CRP of the same recalls (:data:`GRID_QUANTITIES`).
    recall_rule : {"li24", "standard"}
        [LI24]'s recall rule (repeats, draw cap; the default) or the standard one (recalled items excluded,
        :mod:`icl_cmr.cmr.standard_rule`).
    stop_probability : float
        Standard rule only: probability of ending the recall before each draw (default 0).
    method : {"exact", "simulate", "authors"}, optional
        Default: ``"exact"`` for the CRP under [LI24]'s rule; ``"simulate"`` for the conditional lag-CRP and under
        the standard rule (they have no exact form).
    workers : int
        Worker processes; the results do not depend on it.
    """

    n_beta: int = 20
    n_gamma: int = 11
    n_trials: int = _CMR_DEFAULTS.n_trials
    max_draws: Optional[int] = None
    n_items: int = _CMR_DEFAULTS.n_items
    n_start: int = _CMR_DEFAULTS.n_start
    max_lag: int = _CMR_DEFAULTS.max_lag
    seed: int = 0
    quantity: str = "crp"
    method: Optional[str] = None
    recall_rule: str = _CMR_DEFAULTS.recall_rule
    stop_probability: float = _CMR_DEFAULTS.stop_probability
    workers: int = field(default_factory=default_workers)

    def cmr_settings(self) -> CMRSettings:
        """The simulation settings (:class:`CMRSettings` refuses, naming the parameters, those that cannot
        give a valid grid: a start at the last item, lags the list cannot hold, ...)."""
        return CMRSettings(n_items=self.n_items, n_trials=self.n_trials, max_draws=self.max_draws,
                           n_start=self.n_start, max_lag=self.max_lag, recall_rule=self.recall_rule,
                           stop_probability=self.stop_probability)

    def spec(self) -> GridSpec:
        """The grid's :class:`GridSpec`: every setting that decides its numbers (validated)."""
        if self.quantity not in GRID_QUANTITIES:
            raise InputError(f"`quantity` must be one of {', '.join(GRID_QUANTITIES)}, got {self.quantity!r}",
                             parameters=("quantity",))
        check_worker_count(self.workers, "workers")
        for name, low in (("n_beta", 1), ("n_gamma", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise InputError(f"`{name}` must be an integer >= {low}, got {value!r}", parameters=(name,))
        always_simulated = self.quantity == "conditional" or self.recall_rule != "li24"
        method = self.method or ("simulate" if always_simulated else "exact")
        return GridSpec.from_resolution(self.n_beta, self.n_gamma, self.cmr_settings(), seed=self.seed, method=method,
                                        quantity=self.quantity)


@dataclass
class CmrGridRun:
    """A finished grid and how it was made.

    Attributes
    ----------
    mean, sem : np.ndarray, shape [n_beta, n_beta + 1, n_gamma, 2 * max_lag + 1]
        The mean CRP and its SEM over start positions (or the conditional lag-CRP and its jackknife
        standard error, :data:`GRID_QUANTITIES`).
    spec : GridSpec
    n_resumed : int
        Slices taken from an earlier session.
    wall_seconds : float
        Seconds of computing over every session (this one alone when nothing was resumed).
    session_seconds : float
        Seconds of this session.
    """

    mean: np.ndarray
    sem: np.ndarray
    spec: GridSpec
    n_resumed: int
    wall_seconds: float
    session_seconds: float

    def metadata_fields(self, workers: int, files: Dict[str, str]) -> Dict[str, Any]:
        """What the grid's JSON sidecar records besides the spec: times, resumption, shape, axes, file names."""
        settings = self.spec.settings
        return dict(wall_time_s=round(self.wall_seconds, 3), wall_time_this_session_s=round(self.session_seconds, 3),
                    resumed=bool(self.n_resumed), workers=workers, resumed_slices=self.n_resumed,
                    n_slices=self.spec.n_slices, shape=list(self.mean.shape),
                    axes=["beta_enc", "beta_rec", "gamma_ft", f"lag -{settings.max_lag}..{settings.max_lag}"],
                    files=files, description=grid_description(self.spec.quantity, settings.recall_rule))


def unusable_points_problem(run: CmrGridRun) -> Optional[str]:
    """Why some points of a finished grid cannot be fitted, or None when every point can.

    A point is unusable when its curve is NaN or flat on the lags the fits read (-5..+5 for the CRP; -5..-1, +1..+5
    for the conditional lag-CRP, :func:`icl_cmr.fits.distance.usable_grid_points`): a start position of the paper's
    CRP without any transition, or no transition at those lags at all, which too few trials or a high stop
    probability give.

    Returns
    -------
    str or None
        A warning naming the count and the first points.

    Raises
    ------
    InputError
        When no point can be fitted: such a grid is not written (naming ``n_trials`` and ``stop_probability``).
    """
    spec, settings = run.spec, run.spec.settings
    fit_lags = HUMAN_FIT_LAGS if spec.quantity == "conditional" else FIT_LAGS
    grid = CmrGrid(mean=run.mean, beta_enc=spec.beta_enc, beta_rec=spec.beta_rec, gamma_ft=spec.gamma_ft,
                   lags=np.arange(-settings.max_lag, settings.max_lag + 1))
    unusable = ~usable_grid_points(grid, fit_lags)
    if not unusable.any():
        return None
    why = (("none of the recalls" if spec.quantity == "conditional" else "at some start position, none of its "
            f"{settings.n_trials} recalls") + " made a transition on those lags" +
           (f", recall stopping with probability {settings.stop_probability!r} before each draw"
            if settings.stop_probability else ""))
    where = f"NaN or flat on the fitting lags {fit_lags[0]}..{fit_lags[-1]}{'' if 0 in fit_lags else ' except 0'} ({why})"
    if unusable.all():
        raise InputError(f"every one of the {unusable.size} grid points is {where}, so no fit could use this grid; "
                         f"it was not written: raise `n_trials`" + (" or lower `stop_probability`"
                                                                   if settings.stop_probability else ""),
                         parameters=("n_trials", "stop_probability"))
    return (f"{int(unusable.sum())} of {unusable.size} grid points are {where}; fits skip them: "
            f"(beta_enc, beta_rec, gamma_ft) = {describe_grid_points(grid, unusable)}")



#: The settings that size the grid's memory (:func:`grid_memory`), in the order messages name them.
MEMORY_SETTINGS = ("n_beta", "n_gamma", "n_trials", "n_start", "max_draws", "n_items", "max_lag", "workers")


@dataclass(frozen=True)
class GridMemory:
    """The parts of a grid run's estimated peak memory (:meth:`GridSpec.memory_bytes`), from the settings alone.

    Attributes
    ----------
    busy_workers : int
        Workers with a grid point at once (at most one per slice).
    point_bytes : int
        One grid point's arrays (:meth:`GridSpec.point_memory_bytes`).
    grids_bytes : int
        The finished slices held by the parent and, at the end, two more copies of the mean and SEM grids.
    n_lags : int
        Lags of each CRP.
    """

    busy_workers: int
    point_bytes: int
    grids_bytes: int
    n_lags: int

    @property
    def total(self) -> int:
        return self.busy_workers * self.point_bytes + self.grids_bytes


def grid_memory(settings: CmrGridSettings) -> GridMemory:
    """The run's estimated peak memory, as :meth:`GridSpec.memory_bytes`, without building the grid's axes.

    ``n_beta`` = 10^9 would take minutes and 8 GB before any estimate. One grid point's arrays do not
    depend on the grid's size, only on whether the grid has points with an exact CRP and points to
    simulate, which a grid of at most 2 x 2 values has exactly when the full one has (``beta_rec`` =
    0, 1/n_beta, ..., 1: all exact at n_beta = 1, both kinds from 2 on).
    """
    small = dataclasses.replace(settings, n_beta=min(settings.n_beta, 2), n_gamma=2, workers=1).spec()
    n_slices, n_lags = settings.n_beta * settings.n_gamma, small.settings.n_lags
    mean_and_sem = 2 * n_slices * (settings.n_beta + 1) * n_lags * np.dtype(np.float64).itemsize
    return GridMemory(min(settings.workers, n_slices), small.point_memory_bytes(), 3 * mean_and_sem, n_lags)


def check_memory(settings: CmrGridSettings) -> None:
    """Refuse a grid whose arrays would not fit in the memory available now, in one line with the estimate and
    the settings that drive it (:func:`~icl_cmr.files.memory.memory_drivers`): the grid's size, one grid
    point's simulation, or the worker count.

    Raises
    ------
    InputError
        With the estimate, what it is made of, and the parameters that lower it.
    """
    memory, available = grid_memory(settings), free_memory("cpu")
    if available is None or memory.total <= available:
        return
    # An unset `max_draws` is not named and stays unset while the others are tried: its default is the
    # rule's (the standard rule's cap follows `n_items`, which is then the setting to name).
    s, defaults = (_draws_resolved(grid) for grid in (settings, CmrGridSettings(
        workers=1, recall_rule=settings.recall_rule, quantity=settings.quantity)))
    weighed = [name for name in MEMORY_SETTINGS if name != "max_draws" or settings.max_draws is not None]
    values = {name: int(getattr(s, name)) for name in weighed}
    modest = {name: min(values[name], int(getattr(defaults, name))) for name in weighed}
    drivers = memory_drivers(lambda changed: grid_memory(dataclasses.replace(settings, **changed)).total, values,
                             modest, available)
    raise InputError(f"this grid needs about {human_bytes(memory.total)} of memory ({memory.busy_workers} worker(s) x "
                     f"{human_bytes(memory.point_bytes)} per grid point: {s.n_trials} trials x {s.n_start} start "
                     f"positions x {s.max_draws} draws of {s.n_items} items; {human_bytes(memory.grids_bytes)} for "
                     f"the {s.n_beta} x {s.n_beta + 1} x {s.n_gamma} grid of {memory.n_lags} lags), but "
                     f"{human_bytes(available)} is available; lower {named_list(drivers)}", parameters=drivers)


def _draws_resolved(settings: CmrGridSettings) -> CmrGridSettings:
    """``settings`` with the draw cap its recall rule gives when ``max_draws`` is unset (a number to weigh)."""
    return dataclasses.replace(settings, max_draws=settings.cmr_settings().max_draws)


def grid_run_folder(spec: GridSpec, partial_dir: "str | Path") -> RunFolder:
    """The resumable folder of a grid's finished slices (fingerprint: the spec)."""
    return RunFolder(partial_dir, spec.to_json(), ["slice_*.npy"], settings_file=SPEC_FILE,
                     what="the unfinished run", piece="slice")


def slice_path(slice_dir: "str | Path", slice_id: int) -> Path:
    """File of one finished slice."""
    return Path(slice_dir) / f"slice_{slice_id:05d}.npy"


def _slice_index(path: Path) -> Optional[int]:
    try:
        return int(path.stem.split("_")[1])
    except (IndexError, ValueError):
        return None


def run_grid(spec: GridSpec, slice_dir: "str | Path", workers: int = 1, restart: bool = False,
             on_slice_done: Optional[Callable[[int, int], None]] = None,
             progress: bool = True) -> Tuple[np.ndarray, np.ndarray, int]:
    """Compute the whole grid, saving each finished slice atomically under ``slice_dir``.

    Parameters
    ----------
    spec : GridSpec
        What to compute.
    slice_dir : path-like
        Folder for per-slice results (created). Left in place; the caller removes it
        once the final files are written.
    workers : int
        Worker processes (1: compute in this process). Results do not depend on it.
    restart : bool
        Discard the slices of an unfinished run instead of resuming it. Without it, slices
        an earlier run with the same spec finished are verified and kept (damaged ones are
        recomputed, with a warning); an earlier run with a different spec is an error.
    on_slice_done : callable, optional
        ``on_slice_done(slice_id, n_done)`` after each slice is saved (progress hooks, tests).
    progress : bool
        Show a tqdm bar with an ETA.

    Returns
    -------
    mean : np.ndarray, shape [n_beta_enc, n_beta_rec, n_gamma_ft, 2 * max_lag + 1]
    sem : np.ndarray, same shape
        Mean CRP and its SEM over start positions.
    n_resumed : int
        Slices taken from an earlier run.

    Notes
    -----
    The wall time of every session is accumulated in ``slice_dir`` (:meth:`RunFolder.recorded_seconds`).
    """
    if workers < 1:
        raise InputError(f"`workers` must be a positive integer, got {workers}", parameters=("workers",))
    run = grid_run_folder(spec, slice_dir)
    run.open(restart)
    shape = (2, len(spec.beta_rec), spec.settings.n_lags)
    done: Dict[int, np.ndarray] = run.verified_pieces(
        "slice_*.npy", _slice_index, spec.n_slices, load=lambda path: load_npy(path, expected_shape=shape),
        problem=lambda _, array: slice_problem(spec, array))
    n_resumed = len(done)
    pending = [slice_id for slice_id in range(spec.n_slices) if slice_id not in done]
    if n_resumed:
        logger.info("resuming: %d of %d slices already done", n_resumed, spec.n_slices)
    session_start, before = time.perf_counter(), run.recorded_seconds()

    try:
        with tqdm(total=spec.n_slices, initial=n_resumed, desc="CMR grid slices", unit="slice",
                  disable=not progress, smoothing=0.05) as bar:
            for slice_id, result in iterate_slices(spec, pending, workers):
                save_npy(slice_path(run.folder, slice_id), result)
                run.record_seconds(before + time.perf_counter() - session_start)
                done[slice_id] = result
                bar.update(1)
                if on_slice_done is not None:
                    on_slice_done(slice_id, len(done))
    except BaseException:
        run.discard_if_empty()   # failed (a full disk) before the first slice: nothing to resume, no folder left
        raise

    run.record_seconds(before + time.perf_counter() - session_start)
    n_enc, n_rec, n_gamma = spec.shape
    stacked = np.stack([done[slice_id] for slice_id in range(spec.n_slices)])  # [slices, 2, rec, lags]
    stacked = stacked.reshape(n_enc, n_gamma, 2, n_rec, -1).transpose(2, 0, 3, 1, 4)
    return np.ascontiguousarray(stacked[0]), np.ascontiguousarray(stacked[1]), n_resumed


def check_cmr_grid(settings: CmrGridSettings, partial_dir: Optional["str | Path"] = None,
                   restart: bool = False) -> GridSpec:
    """Everything checked before any work: the settings, the memory, and a saved unfinished run's spec.

    Returns
    -------
    GridSpec
    """
    settings.cmr_settings()          # the simulation's own checks, named, before the estimate uses them
    dataclasses.replace(settings, n_beta=1, n_gamma=2).spec()   # quantity, method, workers: cheap to check
    check_memory(settings)           # before the axes are built (see grid_memory)
    spec = settings.spec()
    if partial_dir is not None and not restart:
        grid_run_folder(spec, partial_dir).check_settings()
    return spec


def check_finished_grid(spec: GridSpec, sidecar: "str | Path", restart: bool = False) -> None:
    """Refuse to replace a finished grid made with other settings (read-only; before any work).

    The finished grid's JSON sidecar (``cmr_crp_<n_beta>_<n_gamma>.json``, written by ``est_cmr_crp.py``) records
    the spec that made it under ``parameters``; a run with another spec would write its files under the same names.
    The same spec (the grid is recomputed bit for bit), no sidecar, or ``restart`` let the run go on.

    Raises
    ------
    InputError
        ``the finished grid in <sidecar> came from other settings (max_draws: 19 there, 50 now); rerun with those
        settings, or pass `restart` to replace it``; also when the sidecar is damaged or records no settings.
    """
    sidecar = Path(sidecar)
    if restart or not sidecar.is_file():
        return
    try:
        recorded = load_json(sidecar)
    except BadFileError as err:
        raise InputError(f"the finished grid's sidecar {sidecar} cannot be read ({err.problem}); pass `restart` to "
                         "replace the grid", parameters=("restart",)) from None
    saved = recorded.get("parameters") if isinstance(recorded, dict) else None
    if not isinstance(saved, dict):
        raise InputError(f"the finished grid's sidecar {sidecar} records no settings, so they cannot be compared "
                         "with this run's; pass `restart` to replace the grid", parameters=("restart",))
    refuse_other_settings(saved, spec.to_json(), sidecar, "the finished grid", remedy=REPLACE_REMEDY)


def run_cmr_grid(settings: CmrGridSettings, partial_dir: "str | Path", restart: bool = False,
                 progress: bool = True, on_slice_done: Optional[Callable[[int, int], None]] = None) -> CmrGridRun:
    """Compute a CMR grid, resuming the unfinished run in ``partial_dir`` when there is one.

    Parameters
    ----------
    settings : CmrGridSettings
    partial_dir : path-like
        Folder of finished slices (:func:`icl_cmr.files.grids.grid_partial_folder` names the script's).
    restart : bool
        Discard an unfinished run's slices instead of resuming them.
    progress : bool
        Show a progress bar.
    on_slice_done : callable, optional
        ``on_slice_done(slice_id, n_done)`` after each slice is saved.

    Returns
    -------
    CmrGridRun
    """
    spec = check_cmr_grid(settings, partial_dir, restart)
    started = time.perf_counter()
    mean, sem, n_resumed = run_grid(spec, partial_dir, workers=settings.workers, restart=restart,
                                    on_slice_done=on_slice_done, progress=progress)
    session = time.perf_counter() - started
    total = max(grid_run_folder(spec, partial_dir).recorded_seconds(), session) if n_resumed else session
    return CmrGridRun(mean, sem, spec, n_resumed, total, session)
