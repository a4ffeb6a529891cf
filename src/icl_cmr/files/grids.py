"""CMR grid files: their names, reading and checking them, and the partial folder of an unfinished run.

``est_cmr_crp.py`` writes ``cmr_crp_{avg,sem}_<n_beta>_<n_gamma>.npy`` (the authors' names) and a JSON
sidecar ``cmr_crp_<n_beta>_<n_gamma>.json`` holding the axes and simulation settings; the conditional
lag-CRP grid is ``cmr_cond_crp_*`` (:data:`icl_cmr.cmr.grid.GRID_QUANTITIES`). Grids made under the standard recall
rule (:mod:`icl_cmr.cmr.standard_rule`) are ``cmr_std_crp_*`` and ``cmr_std_cond_crp_*`` (``cmr_std_stop<p>_*``
with a stop probability p); their sidecar records ``recall_rule`` (:func:`grid_recall_rule`). The readers return a
:class:`icl_cmr.fits.distance.CmrGrid` with its axes, lags and simulation settings, checked.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from icl_cmr.cmr.grid import GRID_QUANTITIES
from icl_cmr.cmr.model import RECALL_RULES
from icl_cmr.config import (BETA_ENC_GRID, BETA_REC_GRID, CMR_CRP_LAGS, CMR_GRID_MEAN_FILENAME, DEFAULT_GRID_PATH,
                            FIT_LAGS, GAMMA_FT_GRID, HUMAN_FIT_LAGS)
from icl_cmr.errors import FileContentError, InputError
from icl_cmr.files.checks import ArraySpec, check_array
from icl_cmr.files.outputs import searched_at
from icl_cmr.files.reading import load_json, load_npy
from icl_cmr.fits.distance import (OPTIONAL_SIMULATION_SETTINGS, SIMULATION_SETTINGS, CmrGrid, check_conditional_grid,
                                   conditional_grid_hint)

logger = logging.getLogger(__name__)

#: Suffix of the hidden folder holding an unfinished grid run's slices.
PARTIAL_SUFFIX = ".partial"


def stop_name(stop_probability: float) -> str:
    """``stop<p>``: a stop probability as output names spell it, exactly (``repr`` of the float: the shortest text
    that reads back as the same number, where ``%g`` would round 0.12345671 and 0.12345679 to one name).

    Examples
    --------
    >>> stop_name(0.1), stop_name(0.99999999)
    ('stop0.1', 'stop0.99999999')
    """
    return f"stop{float(stop_probability)!r}"


def grid_file_names(n_beta: int, n_gamma: int, quantity: str = "crp", recall_rule: str = "li24",
                    stop_probability: float = 0.0) -> Tuple[str, str, str]:
    """Names of the mean, SEM and metadata files (the authors' ``cmr_crp_avg_20_11.npy`` pattern;
    ``cmr_cond_crp_avg_20_11.npy`` ... for the conditional lag-CRP, :data:`GRID_QUANTITIES`; under the standard
    recall rule ``cmr_std_crp_avg_20_11.npy`` and ``cmr_std_cond_crp_avg_20_11.npy``, with ``_stop<p>`` after
    ``std`` when recall also stops with probability p per draw)."""
    if quantity not in GRID_QUANTITIES:
        raise InputError(f"quantity must be one of {', '.join(GRID_QUANTITIES)}, got {quantity!r}")
    if recall_rule not in RECALL_RULES:
        raise InputError(f"recall_rule must be one of {', '.join(RECALL_RULES)}, got {recall_rule!r}",
                         parameters=("recall_rule",))
    rule = "" if recall_rule == "li24" else "std_" + (stop_name(stop_probability) + "_" if stop_probability else "")
    stem = f"cmr_{rule}crp" if quantity == "crp" else f"cmr_{rule}cond_crp"
    return (f"{stem}_avg_{n_beta}_{n_gamma}.npy", f"{stem}_sem_{n_beta}_{n_gamma}.npy",
            f"{stem}_{n_beta}_{n_gamma}.json")


def load_cmr_grid(mean_path: "str | Path", sem_path: Optional["str | Path"] = None,
                  expected_shape: Optional[Tuple[int, ...]] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Load a CRP grid (ours or the authors'), checking shape and values.

    Parameters
    ----------
    mean_path, sem_path : path-like
        ``cmr_crp_avg_*.npy`` and (optionally) ``cmr_crp_sem_*.npy``.
    expected_shape : tuple, optional
        E.g. ``(20, 21, 11, 17)``; any 4-d shape is accepted when omitted.

    Returns
    -------
    mean : np.ndarray, shape [n_beta_enc, n_beta_rec, n_gamma_ft, n_lags]
    sem : np.ndarray or None, same shape

    Raises
    ------
    InputError
        Truncated/corrupt file, wrong shape, non-finite or negative values, or curves
        that do not sum to 1.
    """
    mean = load_npy(mean_path, expected_shape)
    if mean.ndim != 4:
        raise InputError(f"{mean_path} must be a 4-d grid [beta_enc, beta_rec, gamma_ft, lag], "
                         f"got shape {mean.shape}")
    if not np.all(np.isfinite(mean)) or np.any(mean < 0) or not np.allclose(mean.sum(axis=-1), 1.0, atol=1e-6):
        raise InputError(f"{mean_path} is not a CRP grid: values must be finite, non-negative "
                         "and sum to 1 over lags")
    sem = None
    if sem_path is not None:
        sem = load_npy(sem_path, mean.shape)
        if not np.all(np.isfinite(sem)) or np.any(sem < 0):
            raise InputError(f"{sem_path} must hold finite, non-negative standard errors")
    return mean, sem




def _grid_axes_from_sidecar(meta: Any, path: Path,
                            grid_shape: Tuple[int, ...]) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Axis values from a grid's JSON sidecar: keys at top level, under ``axes`` or ``parameters``.

    Returns None when the sidecar names no axes (e.g. other metadata); raises
    :class:`FileContentError` when it names them wrongly: values that are not numbers in
    [0, 1], or counts that differ from the grid's ``grid_shape`` [n_beta_enc, n_beta_rec, n_gamma_ft].
    """
    if not isinstance(meta, dict):
        return None
    for container in (meta, meta.get("axes", {}), meta.get("parameters", {})):
        if not isinstance(container, dict):
            continue
        found = {}
        for name in ("beta_enc", "beta_rec", "gamma_ft"):
            key = next((key for key in (name, f"{name}_grid", f"{name}_values") if key in container), None)
            if key is not None:
                found[name] = (key, container[key])
        if len(found) < 3:
            continue
        sizes = {"n_beta_enc": grid_shape[0], "n_beta_rec": grid_shape[1], "n_gamma_ft": grid_shape[2]}
        return tuple(check_array(value, str(path), key, ArraySpec((f"n_{name}",), low=0.0, high=1.0, nan=False,
                                                                  meaning="CMR parameter values"), sizes)
                     for name, (key, value) in found.items())  # type: ignore[return-value]
    return None


def grid_sidecar_candidates(path: Path) -> List[Path]:
    """JSON files that may hold a grid's axes: ``<stem>.json``, and the name ``est_cmr_crp.py`` writes
    beside ``cmr_crp_avg_<n>_<m>.npy``: ``cmr_crp_<n>_<m>.json`` (axes under ``parameters``)."""
    candidates = [path.with_suffix(".json")]
    if "_avg" in path.stem:
        candidates.append(path.with_name(path.stem.replace("_avg", "", 1) + ".json"))
    return candidates


def grid_lags(n_lags: int, path: "str | Path", sidecar: Any = None, sidecar_path: "str | Path | None" = None,
              needed: np.ndarray = FIT_LAGS) -> np.ndarray:
    """The lags of a CMR grid's last axis: ``-m..m`` for ``2 m + 1`` entries.

    ``est_cmr_crp.py --max_lag m`` writes ``2 m + 1`` lags ([LI24]: m = 8, 17 lags). Any ``m`` that
    reaches the lags a fit uses is accepted: the fits use lags -5..+5 only (DESIGN.md section 4), and a
    grid point's CRP cut to those lags and renormalised does not depend on ``m`` (lags beyond ``m``
    count only in each trial's number of draws, whatever ``m`` is).

    Parameters
    ----------
    n_lags : int
        Length of the grid's last axis.
    path : path-like
        The grid file, for messages.
    sidecar : dict, optional
        The grid's JSON sidecar; its ``max_lag`` (top level or under ``parameters``), when given,
        must equal ``m``.
    sidecar_path : path-like, optional
        The sidecar file, for messages.
    needed : ndarray of int
        Lags the caller needs (default the fitting lags -5..+5).

    Returns
    -------
    ndarray of int, shape [n_lags]

    Raises
    ------
    InputError
        An even length, or one too short for ``needed``; a sidecar whose ``max_lag`` disagrees.
    """
    reach = int(np.abs(needed).max())
    max_lag, odd = divmod(int(n_lags) - 1, 2)
    if odd or max_lag < reach:
        raise InputError(f"CMR grid {path} has {n_lags} lags on its last axis; expected 2 m + 1 lags -m..m with "
                         f"m >= {reach} (the fitting lags -{reach}..+{reach}; the paper's grid has "
                         f"{CMR_CRP_LAGS.size}, lags {CMR_CRP_LAGS[0]}..{CMR_CRP_LAGS[-1]})")
    if isinstance(sidecar, dict):
        for container in (sidecar, sidecar.get("parameters")):
            recorded = container.get("max_lag") if isinstance(container, dict) else None
            if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded != max_lag:
                raise FileContentError(sidecar_path or path, f"says max_lag {recorded}, but the grid {path} has "
                                                             f"{n_lags} lags (max_lag {max_lag})")
    if max_lag != int(CMR_CRP_LAGS.max()):
        logger.info("CMR grid %s has lags -%d..+%d, not the paper's %d..+%d: each start position's CRP is "
                    "normalised over its own lags before the mean over starts, so fits differ slightly from a "
                    "-8..+8 grid's (docs/cmr_grid.md)", path, max_lag, max_lag, CMR_CRP_LAGS[0], CMR_CRP_LAGS[-1])
    return np.arange(-max_lag, max_lag + 1)


def read_cmr_grid(path: "str | Path | None" = None, sem_path: "str | Path | None" = None,
                  parameter: str = "crp_grid") -> CmrGrid:
    """Read a CMR CRP grid file, its optional SEM file and its axis values, as a :class:`CmrGrid`.

    The arrays are read and validated by :func:`icl_cmr.files.grids.load_cmr_grid` (finite,
    non-negative, each CRP summing to 1).

    Parameters
    ----------
    path : path, optional
        ``.npy`` of shape [A, B, C, 2 m + 1] (lags -m..m; the paper's m = 8, and m >= 5 for the
        fitting lags, :func:`grid_lags`). Default ``saved_crps/cmr_crp_avg_20_11.npy``.
    sem_path : path, optional
        SEM file of the same shape. Default: the file beside ``path`` with ``avg`` replaced by
        ``sem`` in its name, when it exists (it is optional).
    parameter : str
        The caller's parameter that gave ``path``, named in the message when the file is missing.

    Returns
    -------
    CmrGrid

    Notes
    -----
    Axis values come from a JSON sidecar (:func:`grid_sidecar_candidates`; keys ``beta_enc``,
    ``beta_rec``, ``gamma_ft`` at top level or under ``axes`` or ``parameters``) when present;
    otherwise the paper's axes (config.py) are used when the first three axes are [20, 21, 11].

    Raises
    ------
    InputError
        Missing file, wrong shape or values, or a non-default shape without axes.
    """
    path = Path(path) if path is not None else DEFAULT_GRID_PATH
    if not path.is_file():
        raise InputError(f"CMR grid {path} does not exist{searched_at(path)}: run est_cmr_crp.py to make it, or pass `{parameter}` PATH "
                         f"(a [20, 21, 11, 17] .npy; the authors' is {CMR_GRID_MEAN_FILENAME})",
                         parameters=(parameter,))
    if sem_path is None:
        candidate = path.with_name(path.name.replace("avg", "sem")) if "avg" in path.name else None
        sem_path = candidate if candidate is not None and candidate.is_file() else None
    refuse_conditional_grid(path, parameter)
    mean, sem = load_cmr_grid(path, sem_path)
    axes, lags = grid_axes_and_lags(path, mean.shape)
    if axes is None:
        default_shape = (BETA_ENC_GRID.size, BETA_REC_GRID.size, GAMMA_FT_GRID.size)
        if mean.shape[:3] != default_shape:
            names = " or ".join(str(p) for p in grid_sidecar_candidates(path))
            raise InputError(f"CMR grid {path} has shape {mean.shape}: the axis values of a grid other than "
                             f"{list(default_shape)} x lags must be given in {names} "
                             f"(keys beta_enc, beta_rec, gamma_ft)")
        axes = (BETA_ENC_GRID, BETA_REC_GRID, GAMMA_FT_GRID)
    return CmrGrid(mean=mean, beta_enc=axes[0], beta_rec=axes[1], gamma_ft=axes[2], lags=lags, sem=sem,
                   source=str(path), simulation=grid_simulation_settings(path))


def refuse_conditional_grid(path: Path, parameter: str) -> None:
    """Raise :class:`InputError` naming ``parameter`` when ``path`` holds a conditional lag-CRP grid (its sidecar says
    ``quantity: conditional``, or its middle lag is NaN everywhere), where the paper's CRP is needed."""
    quantity = None
    for sidecar in grid_sidecar_candidates(path):
        if sidecar.is_file():
            meta = load_json(sidecar)
            parameters = meta.get("parameters", meta) if isinstance(meta, dict) else None
            quantity = parameters.get("quantity") if isinstance(parameters, dict) else None
            break
    if quantity is None:
        mean = load_npy(path)
        conditional = mean.ndim == 4 and mean.shape[3] % 2 == 1 and np.isnan(mean[..., mean.shape[3] // 2]).all()
        quantity = "conditional" if conditional and mean.size else None
    if quantity == "conditional":
        raise InputError(f"`{parameter}` {path} holds the conditional lag-CRP (lag 0 undefined), not the paper's CRP "
                         "(a lag histogram, cmr_crp_avg_*.npy, made by `python src/est_cmr_crp.py` without "
                         "--quantity conditional) that this fit needs", parameters=(parameter,))


def grid_axes_and_lags(path: Path, shape: Tuple[int, ...], needed: np.ndarray = FIT_LAGS
                       ) -> Tuple[Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]], np.ndarray]:
    """Axis values from a grid's JSON sidecar (None when it has none) and the lags of its last axis
    (:func:`grid_lags`, checked against the sidecar's ``max_lag``)."""
    axes, meta, meta_path = None, None, None
    for sidecar in grid_sidecar_candidates(path):
        if sidecar.is_file():
            content = load_json(sidecar)
            axes = _grid_axes_from_sidecar(content, sidecar, shape[:3])
            if axes is not None:
                logger.debug("grid axes from %s", sidecar)
                meta, meta_path = content, sidecar
                break
    return axes, grid_lags(shape[3], path, meta, meta_path, needed)



DEFAULT_CONDITIONAL_GRID_PATH = Path("saved_crps") / grid_file_names(20, 11, "conditional")[0]

#: The shipped conditional lag-CRP grid of the standard recall rule (``est_cmr_crp.py --quantity conditional
#: --recall_rule standard``).
DEFAULT_STANDARD_CONDITIONAL_GRID_PATH = Path("saved_crps") / grid_file_names(20, 11, "conditional", "standard")[0]


def conditional_grid_path(recall_rule: str = "li24") -> Path:
    """The shipped conditional lag-CRP grid of a recall rule (:data:`icl_cmr.cmr.model.RECALL_RULES`)."""
    return Path("saved_crps") / grid_file_names(20, 11, "conditional", recall_rule)[0]


def grid_recall_rule(path: "str | Path") -> str:
    """The recall rule a grid was made with, from its JSON sidecar: its ``recall_rule`` (top level or under
    ``parameters``), ``"li24"`` when the sidecar names none (every grid made before the standard rule existed,
    and the authors' files, which have no sidecar)."""
    for sidecar in grid_sidecar_candidates(Path(path)):
        if sidecar.is_file():
            meta = load_json(sidecar)
            for container in (meta, meta.get("parameters") if isinstance(meta, dict) else None):
                if isinstance(container, dict) and "recall_rule" in container:
                    rule = container["recall_rule"]
                    if rule not in RECALL_RULES:
                        raise FileContentError(sidecar, f"says recall_rule {rule!r}; expected one of "
                                                        f"{', '.join(RECALL_RULES)}")
                    return rule
    return "li24"


#: Simulation settings two grids must share to be "the same simulator" (their JSON sidecars).
SIMULATION_KEYS = SIMULATION_SETTINGS


def read_conditional_grid(path: "str | Path | None" = None, sem_path: "str | Path | None" = None,
                          parameter: str = "crp_grid", recall_rule: str = "li24") -> CmrGrid:
    """Read a conditional lag-CRP grid (``cmr_cond_crp_avg_*.npy``), its standard errors and axes.

    Parameters
    ----------
    path : path, optional
        ``.npy`` [n_beta_enc, n_beta_rec, n_gamma_ft, 2 m + 1] (lags -m..m with m >= 5, lag 0 NaN;
        the paper's m = 8, :func:`icl_cmr.files.grids.grid_lags`). Default
        :data:`DEFAULT_CONDITIONAL_GRID_PATH`.
    sem_path : path, optional
        Its standard errors; default the ``sem`` file beside it when present.
    parameter : str
        The caller's parameter that gave ``path``, named in the messages.
    recall_rule : str
        The rule whose grid the caller wants: the messages say how to make that one
        (:func:`icl_cmr.fits.distance.conditional_grid_hint`).

    Returns
    -------
    CmrGrid
        Axis values from the JSON sidecar ``est_cmr_crp.py`` writes (as
        :func:`icl_cmr.files.grids.read_cmr_grid`).

    Raises
    ------
    InputError
        Missing or damaged file, wrong shape, or not a conditional grid (:func:`check_conditional_grid`).
    """
    path = Path(path) if path is not None else DEFAULT_CONDITIONAL_GRID_PATH
    if not path.is_file():
        raise InputError(f"conditional CMR grid {path} (`{parameter}`) does not exist{searched_at(path)}: make it with "
                         f"{conditional_grid_hint(recall_rule)}, or pass `{parameter}` PATH", parameters=(parameter,))
    mean = load_npy(path)
    if mean.ndim != 4:
        raise InputError(f"{path} has shape {mean.shape}, expected [n_beta_enc, n_beta_rec, n_gamma_ft, n_lags] "
                         f"(lags -m..m; the paper's {CMR_CRP_LAGS[0]}..{CMR_CRP_LAGS[-1]})")
    if sem_path is None:
        candidate = path.with_name(path.name.replace("avg", "sem")) if "avg" in path.name else None
        sem_path = candidate if candidate is not None and candidate.is_file() else None
    sem = load_npy(sem_path, mean.shape) if sem_path is not None else None
    axes, lags = grid_axes_and_lags(path, mean.shape, needed=HUMAN_FIT_LAGS)
    if axes is None:
        raise InputError(f"{path}: no axis values found (expected the JSON sidecar est_cmr_crp.py writes: "
                         f"{' or '.join(str(p) for p in grid_sidecar_candidates(path))})")
    grid = CmrGrid(mean=mean, beta_enc=axes[0], beta_rec=axes[1], gamma_ft=axes[2], lags=lags, sem=sem,
                   source=str(path), simulation=grid_simulation_settings(path))
    check_conditional_grid(grid, parameter=parameter, recall_rule=recall_rule)
    return grid


def grid_simulation_settings(path: "str | Path") -> Optional[Dict[str, object]]:
    """Simulation settings of a grid from its JSON sidecar (:data:`SIMULATION_KEYS`), None if it has none; with
    the settings of :data:`~icl_cmr.fits.distance.OPTIONAL_SIMULATION_SETTINGS` (``stop_probability``) that are not
    at their default, as the sidecar records them."""
    for sidecar in grid_sidecar_candidates(Path(path)):
        if sidecar.is_file():
            meta = load_json(sidecar)
            parameters = meta.get("parameters", meta) if isinstance(meta, dict) else {}
            if isinstance(parameters, dict) and all(key in parameters for key in SIMULATION_KEYS):
                settings = {key: parameters[key] for key in SIMULATION_KEYS}
                settings.update({key: parameters[key] for key, default in OPTIONAL_SIMULATION_SETTINGS.items()
                                 if parameters.get(key, default) != default})
                return settings
    return None


def grid_partial_folder(save_dir: "str | Path", n_beta: int, n_gamma: int, quantity: str = "crp",
                        recall_rule: str = "li24", stop_probability: float = 0.0) -> Path:
    """The hidden folder of an unfinished grid run's slices: ``<save_dir>/.cmr_crp_<n_beta>_<n_gamma>.partial``
    (the metadata file's stem, :func:`grid_file_names`)."""
    meta_name = grid_file_names(n_beta, n_gamma, quantity, recall_rule, stop_probability)[2]
    return Path(save_dir) / f".{meta_name[:-len('.json')]}{PARTIAL_SUFFIX}"
