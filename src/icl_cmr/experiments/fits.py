"""The fitting runs over saved head-score files ([LI24] Fig 6-7; DESIGN.md sections 4-5).

Each family of the paper's fitting scripts is one settings dataclass (the scripts' flags, with the
same defaults), one function that reads the score files and fits them, returning a result, and one
function that queues the outputs into a :class:`~icl_cmr.files.outputs.PendingWrites` (the caller
commits it, all or nothing):

* Fig 6b, 6c, CMR-like heads by relative layer position, one curve per model (``attn_over_size.py``:
  Pythia sizes; ``attn_over_size_xtra.py``: any models): :class:`OverSizeSettings` ->
  :func:`run_over_size` -> :class:`OverSize` -> :func:`queue_over_size_outputs`;
* Fig 7b, S2, one model over its training checkpoints (``attn_over_time.py``): :class:`OverTimeSettings`
  -> :func:`run_over_time` -> :class:`OverTime` -> :func:`queue_over_time_outputs`;
* Fig 7c-g, top-N CMR-like and induction heads (``select_fit.py``: pooled over models, followed over
  training; ``select_fit_xtra.py``: per model, at the trained model): :class:`SelectionSettings` ->
  :func:`check_selection` (before the grid is read), :func:`run_selection` -> :class:`TopHeadSelections`
  -> :func:`queue_selection_outputs`.

The readers-and-fitters they share (:func:`fit_models`, :func:`fit_over_training`, :func:`count_heads`,
:func:`load_saved_selections`) also serve ``paper_figures``. Errors name parameters
(``n_top``, ``use_saved``); scripts map them to flags with :func:`icl_cmr.cli.flags.flag_errors`.

Examples
--------
>>> from icl_cmr.experiments.fits import OverSizeSettings, run_over_size, queue_over_size_outputs
>>> from icl_cmr.files.grids import DEFAULT_GRID_PATH, read_cmr_grid
>>> grid = read_cmr_grid(DEFAULT_GRID_PATH)                                               # doctest: +SKIP
>>> result = run_over_size(OverSizeSettings(models=("pythia-70m", "pythia-410m")), grid)   # doctest: +SKIP
>>> pending = PendingWrites()                                                             # doctest: +SKIP
>>> queue_over_size_outputs(pending, result, Path("figs/attn_over_size"), "notebook")     # doctest: +SKIP
>>> pending.commit()                                                                      # doctest: +SKIP
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from icl_cmr.config import CHECKPOINT_INDICES, CMR_LIKE_STRICT_THRESHOLD, CMR_LIKE_THRESHOLD
from icl_cmr.errors import InputError
from icl_cmr.figures.fit_sets import over_training_figures, selection_bar_figures, selection_figures, size_figures
from icl_cmr.files.outputs import PendingWrites, portable_path
from icl_cmr.files.results import read_top_heads
from icl_cmr.files.score_format import plain_metadata
from icl_cmr.files.scores import DEFAULT_SCORES_DIR, load_checkpoint_series, load_model_scores
from icl_cmr.files.writing import make_metadata
from icl_cmr.fits.analyses import (PYTHIA_MODELS, check_top_sizes, final_values_only, layer_table, make_selections,
                                   over_training_table)
from icl_cmr.fits.distance import CmrFit, CmrGrid, check_fitted, fit_heads
from icl_cmr.fits.layers import DEFAULT_TOP_N
from icl_cmr.heads.results import HeadScores, checkpoint_step

logger = logging.getLogger(__name__)

#: File names of the saved selections (the authors' names), per tag.
CMR_SELECTION_FILE = "cmr_top_crp_fit_{tag}.pkl"
INDUCTION_SELECTION_FILE = "cmr_top_head_score_{tag}.pkl"
SELECTION_FILES = (("cmr", CMR_SELECTION_FILE), ("induction", INDUCTION_SELECTION_FILE))

#: Where the selections are saved by default (relative to the working directory, as in [LI24]).
DEFAULT_TOP_HEADS_DIR = Path("saved_top_heads")

#: ``checkpoints`` of a run on the trained model only (models without training checkpoints).
TRAINED_MODEL: Tuple[None] = (None,)


def grid_parameters(grid: CmrGrid) -> dict:
    """The grid as the metadata of every fit records it: its path (relative to the repository root when
    inside it) and :meth:`CmrGrid.describe <icl_cmr.fits.distance.CmrGrid.describe>`."""
    return {"crp_grid": portable_path(grid.source) if grid.source else grid.source, **grid.describe()}


# ----------------------------------------------------------------------------- fitting score files

def fit_models(scores_dir: Path, models: Sequence[str], grid: CmrGrid,
               checkpoint: Optional[int] = None) -> Dict[str, Tuple[HeadScores, CmrFit]]:
    """Read and fit every head of each model (trained model, or checkpoint ``checkpoint``).

    Returns
    -------
    dict of str -> (HeadScores, CmrFit)
        Per model its scores and fits, arrays [L, H].

    Raises
    ------
    InputError
        A model without a score file, or whose file has no head that can be fitted
        (:func:`icl_cmr.fits.distance.check_fitted`).
    """
    out = {}
    for model in models:  # one file per model; each fit is vectorized over all its heads
        scores = load_model_scores(scores_dir, model, checkpoint)
        fit = fit_heads(scores.crp, grid, attn_lags=scores.lags)
        check_fitted(fit, scores.path)
        out[model] = (scores, fit)
    return out


def fit_checkpoints(scores_dir: Path, model: str, checkpoints: Sequence[Optional[int]],
                    grid: CmrGrid) -> Tuple[List[HeadScores], CmrFit]:
    """The scores of ``model`` at each checkpoint and one vectorized fit of all of them, arrays [T, L, H].

    Raises
    ------
    InputError
        A missing score file, shapes that change between checkpoints, or a file whose heads cannot
        be fitted (the message names that file).
    """
    series = load_checkpoint_series(scores_dir, model, checkpoints)
    fit = fit_heads(np.stack([s.crp for s in series]), grid, attn_lags=series[0].lags)   # [T, L, H]
    for t, scores in enumerate(series):  # one check per file (16 at most), for messages naming the file
        check_fitted(fit, scores.path, index=(t,))
    return series, fit


def fit_over_training(scores_dir: Path, models: Sequence[str], checkpoints: Sequence[Optional[int]],
                      grid: CmrGrid) -> Dict[str, Dict[str, np.ndarray]]:
    """Per model: scores and fits at every checkpoint, arrays [T, L, H] (params [T, L, H, 3]).

    ``checkpoints`` may be ``[None]`` for a model without training checkpoints (the trained model).

    Returns
    -------
    dict of str -> dict
        Per model ``MSE``, ``params``, ``scale_factors``, ``head_scores``, ``copy_scores`` and ``files``
        (the input of :func:`icl_cmr.fits.analyses.make_selections`).

    Raises
    ------
    InputError
        If a score file is missing or has no head that can be fitted.
    """
    out = {}
    for model in models:  # one vectorized fit per model over all its checkpoints and heads
        series, fit = fit_checkpoints(scores_dir, model, checkpoints, grid)
        out[model] = {"MSE": fit.distance, "params": fit.params, "scale_factors": fit.inverse_temperature,
                      "head_scores": np.stack([s.matching_score for s in series]),
                      "copy_scores": np.stack([s.copying_score for s in series]),
                      "files": [s.path for s in series]}
    return out


def count_heads(scores_dir: Path, models: Sequence[str], checkpoint: Optional[int] = None) -> Dict[str, int]:
    """Heads (L * H) of each model, from its score file at ``checkpoint`` (None: the trained model)."""
    return {model: int(load_model_scores(scores_dir, model, checkpoint).matching_score.size) for model in models}


def load_saved_selections(top_dir: Path, tag: str) -> Dict[str, Dict[str, dict]]:
    """Saved selections ``{"cmr": {...}, "induction": {...}}`` of ``tag``, each kind whose file exists
    (:data:`SELECTION_FILES`; a missing one is a warning); empty when neither does."""
    out: Dict[str, Dict[str, dict]] = {}
    for kind, pattern in SELECTION_FILES:
        path = Path(top_dir) / pattern.format(tag=tag)
        if path.is_file():
            out[kind] = read_top_heads(path)
            logger.info("read %s (%s)", path, ", ".join(out[kind]))
        else:
            logger.warning("no saved selection %s", path)
    return out


# ----------------------------------------------------------------------------- Fig 6b, 6c: over model sizes

@dataclass(frozen=True)
class OverSizeSettings:
    """CMR fits of several models compared by relative layer position (``attn_over_size*.py``'s flags).

    Attributes
    ----------
    models : tuple of str
        Model names as in ``scores_dir`` ([LI24] Fig 6b: the eight Pythia sizes; Fig 6c: Qwen-7B,
        Mistral-7B, Llama-3-8B, :data:`icl_cmr.fits.analyses.XTRA_MODELS`).
    scores_dir : Path
        Root of the head-score files.
    checkpoint : int, optional
        Checkpoint index K (default: the trained model, ``_cp142`` for Pythia v0 files).
    threshold, strict_threshold : float
        CMR distance below which a head is CMR-like ([LI24]: 0.5, and 0.1 in the supplement).
    """

    models: Tuple[str, ...] = PYTHIA_MODELS
    scores_dir: Path = DEFAULT_SCORES_DIR
    checkpoint: Optional[int] = None
    threshold: float = CMR_LIKE_THRESHOLD
    strict_threshold: float = CMR_LIKE_STRICT_THRESHOLD


@dataclass
class OverSize:
    """What :func:`run_over_size` fitted: ``fits[model] = (HeadScores, CmrFit)``, arrays [L, H]."""

    settings: OverSizeSettings
    grid: CmrGrid
    fits: Dict[str, Tuple[HeadScores, CmrFit]]


def run_over_size(settings: OverSizeSettings, grid: CmrGrid) -> OverSize:
    """Fit every head of each model of ``settings`` to ``grid`` ([LI24] Fig 6b, 6c).

    Raises
    ------
    InputError
        A model without a score file, or with no head that can be fitted.
    """
    return OverSize(settings, grid, fit_models(settings.scores_dir, settings.models, grid, settings.checkpoint))


def queue_over_size_outputs(pending: PendingWrites, result: OverSize, out_dir: Path, producer: str,
                            title: str = "") -> None:
    """Queue the figures (:func:`icl_cmr.figures.fit_sets.size_figures`), ``layer_summary.csv``
    (:func:`icl_cmr.fits.analyses.layer_table`) and ``layer_summary.json`` (metadata: ``producer``, models,
    score files, thresholds, grid) into ``pending``, under ``out_dir``."""
    settings, fits = result.settings, result.fits
    out_dir = Path(out_dir)
    pending.figures(out_dir, size_figures(fits, settings.threshold, settings.strict_threshold, title))
    table = layer_table(fits, settings.threshold, settings.strict_threshold)
    pending.text(out_dir / "layer_summary.csv", table.to_csv(index=False))
    pending.json(out_dir / "layer_summary.json", {"metadata": make_metadata(
        producer, {"models": list(fits), "scores_files": [portable_path(s.path) for s, _ in fits.values()],
                   "threshold": settings.threshold, "strict_threshold": settings.strict_threshold,
                   **grid_parameters(result.grid)})})


# ----------------------------------------------------------------------------- Fig 7b, S2: over training

@dataclass(frozen=True)
class OverTimeSettings:
    """CMR fits of one model over its training checkpoints (``attn_over_time.py``'s flags).

    Attributes
    ----------
    model_name : str
        Model name as in ``scores_dir``, e.g. ``pythia-70m``.
    checkpoints : tuple of int
        Checkpoint indices K (training step 1000 (K + 1)); the last one defines the mask of the
        parameter figures. Default: the paper's 16.
    scores_dir : Path
    threshold, strict_threshold : float
    """

    model_name: str = "pythia-70m"
    checkpoints: Tuple[int, ...] = CHECKPOINT_INDICES
    scores_dir: Path = DEFAULT_SCORES_DIR
    threshold: float = CMR_LIKE_THRESHOLD
    strict_threshold: float = CMR_LIKE_STRICT_THRESHOLD


@dataclass
class OverTime:
    """What :func:`run_over_time` fitted.

    Attributes
    ----------
    checkpoints : list of int
        The checkpoints in training order (T).
    steps : ndarray of int, shape [T]
        Their training steps.
    fit : CmrFit
        Fits of shape [T, L, H].
    files : list
        The score file of each checkpoint.
    """

    settings: OverTimeSettings
    grid: CmrGrid
    checkpoints: List[int]
    steps: np.ndarray
    fit: CmrFit
    files: list = field(default_factory=list)


def run_over_time(settings: OverTimeSettings, grid: CmrGrid) -> OverTime:
    """Fit every head of ``settings.model_name`` at every checkpoint (one vectorized fit over [T, L, H]).

    Raises
    ------
    InputError
        A missing checkpoint file, or one whose heads cannot be fitted (named).
    """
    checkpoints = sorted(set(settings.checkpoints))
    series, fit = fit_checkpoints(settings.scores_dir, settings.model_name, checkpoints, grid)
    steps = np.array([checkpoint_step(k) for k in checkpoints])
    return OverTime(settings, grid, checkpoints, steps, fit, [s.path for s in series])


def queue_over_time_outputs(pending: PendingWrites, result: OverTime, out_dir: Path, producer: str) -> None:
    """Queue the figures (:func:`icl_cmr.figures.fit_sets.over_training_figures`), ``layer_over_time.csv``
    (:func:`icl_cmr.fits.analyses.over_training_table`) and ``layer_over_time.json`` (metadata) into
    ``pending``, under ``out_dir``."""
    settings = result.settings
    out_dir = Path(out_dir)
    thresholds = (settings.threshold, settings.strict_threshold)
    pending.figures(out_dir, over_training_figures(result.fit, result.steps, thresholds, settings.model_name))
    table = over_training_table(result.fit, result.checkpoints, result.steps, thresholds)
    pending.text(out_dir / "layer_over_time.csv", table.to_csv(index=False))
    pending.json(out_dir / "layer_over_time.json", {"metadata": make_metadata(
        producer, {"model": settings.model_name, "checkpoints": result.checkpoints,
                   "scores_files": [portable_path(path) for path in result.files], "threshold": settings.threshold,
                   "strict_threshold": settings.strict_threshold, **grid_parameters(result.grid)})})


# ----------------------------------------------------------------------------- Fig 7c-g: top-N selections

@dataclass(frozen=True)
class SelectionSettings:
    """Top-N CMR-like and top-N induction heads (``select_fit.py``'s and ``select_fit_xtra.py``'s flags).

    Attributes
    ----------
    models : tuple of str
        Models whose heads are selected from.
    n_top : tuple of int
        Set sizes N ([LI24]: 20, 50, 100, 200).
    checkpoints : tuple of int, or :data:`TRAINED_MODEL`
        Checkpoints fitted; the sets are chosen at the last one and followed over the others.
        ``(None,)`` (:data:`TRAINED_MODEL`): the trained model only, and the records hold final values
        only (``select_fit_xtra.py``). Integers are sorted.
    per_model : bool
        False (``select_fit.py``): the sets are drawn from all models' heads pooled and saved under
        ``tag``; True (``select_fit_xtra.py``): from each model's own heads, saved under its name.
    tag : str
        Name in the saved files of a pooled selection.
    use_saved : bool
        Draw the selections saved in ``top_heads_dir`` instead of fitting.
    top_heads_dir : Path
        Folder of the saved selections (:data:`SELECTION_FILES`).
    scores_dir : Path
        Root of the head-score files.

    Examples
    --------
    >>> SelectionSettings(models=("qwen-7b",), per_model=True, checkpoints=TRAINED_MODEL).tags
    ['qwen-7b']
    """

    models: Tuple[str, ...] = PYTHIA_MODELS
    n_top: Tuple[int, ...] = DEFAULT_TOP_N
    checkpoints: Tuple[Optional[int], ...] = CHECKPOINT_INDICES
    per_model: bool = False
    tag: str = "pythia"
    use_saved: bool = False
    top_heads_dir: Path = DEFAULT_TOP_HEADS_DIR
    scores_dir: Path = DEFAULT_SCORES_DIR

    def __post_init__(self) -> None:
        checkpoints = tuple(self.checkpoints)
        if None not in checkpoints:
            checkpoints = tuple(sorted(set(checkpoints)))
        object.__setattr__(self, "checkpoints", checkpoints)
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "n_top", tuple(self.n_top))

    @property
    def tags(self) -> List[str]:
        """The names the selections are saved under: ``tag``, or each model's name."""
        return list(self.models) if self.per_model else [self.tag]


@dataclass
class TopHeadSelections:
    """What :func:`run_selection` selected (or read, with ``use_saved``).

    Attributes
    ----------
    selections : dict
        ``{tag: {"cmr": {"top20": record, ...}, "induction": {...}}}`` (records:
        :func:`icl_cmr.fits.analyses.selection_record`; a saved selection may lack a kind).
    scores_files : dict of str -> list
        The score files fitted, per model (empty with ``use_saved``).
    grid : CmrGrid or None
        The grid fitted to (None with ``use_saved``).
    """

    settings: SelectionSettings
    selections: Dict[str, Dict[str, Dict[str, dict]]]
    scores_files: Dict[str, list] = field(default_factory=dict)
    grid: Optional[CmrGrid] = None


def check_selection(settings: SelectionSettings) -> None:
    """Refuse set sizes larger than the heads there are, before any fit (reads each model's score file
    at the last checkpoint; nothing to check with ``use_saved``).

    Raises
    ------
    InputError
        Naming ``n_top`` (:func:`icl_cmr.fits.analyses.check_top_sizes`), or a missing score file.
    """
    if not settings.use_saved:
        counts = count_heads(settings.scores_dir, settings.models, settings.checkpoints[-1])
        check_top_sizes(settings.n_top, counts, pooled=not settings.per_model)


def run_selection(settings: SelectionSettings, grid: Optional[CmrGrid] = None) -> TopHeadSelections:
    """Fit the models' heads over ``settings.checkpoints`` and select the top-N sets ([LI24] Fig 7c-g).

    Call :func:`check_selection` first to refuse impossible sizes before reading the grid; the sizes
    are checked again here against the heads fitted. With ``use_saved``, the saved selections are read
    instead and ``grid`` is not needed.

    Raises
    ------
    InputError
        ``use_saved`` without any saved selection; a missing or unfittable score file; nothing to select.
    """
    if settings.use_saved:
        return TopHeadSelections(settings, _saved_selections(settings))
    if grid is None:
        raise InputError("run_selection needs the CMR grid unless `use_saved` is set", parameters=("use_saved",))
    checkpoints = list(settings.checkpoints)
    groups = [[model] for model in settings.models] if settings.per_model else [list(settings.models)]
    selections, files = {}, {}
    for tag, models in zip(settings.tags, groups):  # per model: one selection each, as the authors' script
        per_model = fit_over_training(settings.scores_dir, models, checkpoints, grid)
        check_top_sizes(settings.n_top, {m: int(v["MSE"][-1].size) for m, v in per_model.items()},
                        pooled=not settings.per_model)
        chosen = make_selections(per_model, settings.n_top, checkpoints)
        selections[tag] = final_values_only(chosen) if checkpoints == list(TRAINED_MODEL) else chosen
        files.update({m: list(v["files"]) for m, v in per_model.items()})
        if settings.per_model:
            for name, record in chosen["cmr"].items():
                logger.info("%s %s: mean D %.4g CMR-like, %.4g induction", tag, name, np.nanmean(record["MSE"]),
                            np.nanmean(chosen["induction"][name]["MSE"]))
    if not settings.per_model:
        chosen = selections[settings.tag]
        for name, record in chosen["cmr"].items():
            logger.info("%s CMR-like: mean D %.4g at step %d; induction %s: mean D %.4g", name,
                        np.nanmean(record["MSE"]), checkpoint_step(checkpoints[-1]), name,
                        np.nanmean(chosen["induction"][name]["MSE"]))
    return TopHeadSelections(settings, selections, files, grid)


def _saved_selections(settings: SelectionSettings) -> Dict[str, Dict[str, Dict[str, dict]]]:
    """``{tag: saved selections}`` from ``settings.top_heads_dir``; :class:`InputError` when there is none."""
    if not settings.per_model:
        saved = load_saved_selections(settings.top_heads_dir, settings.tag)
        if not saved:
            names = " and/or ".join(pattern.format(tag=settings.tag) for _, pattern in SELECTION_FILES)
            raise InputError(f"`use_saved`: no saved selections in {settings.top_heads_dir}: expected {names}",
                             parameters=("use_saved",))
        return {settings.tag: saved}
    out: Dict[str, Dict[str, Dict[str, dict]]] = {}
    for model in settings.models:  # the per-model files say nothing when read, as the authors' script
        for kind, pattern in SELECTION_FILES:
            path = Path(settings.top_heads_dir) / pattern.format(tag=model)
            if path.is_file():
                out.setdefault(model, {})[kind] = read_top_heads(path)
            else:
                logger.warning("no saved selection %s", path)
    if not out:
        raise InputError(f"`use_saved`: no saved selections for {list(settings.models)} in {settings.top_heads_dir}",
                         parameters=("use_saved",))
    return out


def queue_selection_outputs(pending: PendingWrites, result: TopHeadSelections, out_dir: Path,
                            producer: str) -> None:
    """Queue the saved selections (unless read from them) and the figures into ``pending``.

    The selections go to ``settings.top_heads_dir`` (:data:`SELECTION_FILES`, one pair per tag, with
    metadata naming ``producer``); the figures under ``out_dir``: pooled,
    :func:`icl_cmr.figures.fit_sets.selection_figures`; per model,
    :func:`icl_cmr.figures.fit_sets.selection_bar_figures`. Figures of saved selections get their own
    names (``_saved_<tag>``, or ``_saved`` per model), so that redrawing never overwrites a fitting run's.
    """
    settings = result.settings
    out_dir = Path(out_dir)
    if settings.use_saved:
        if settings.per_model:
            figures = selection_bar_figures(result.selections, "_saved")
        else:
            figures = selection_figures(result.selections[settings.tag], title=f"saved selections ({settings.tag})",
                                        suffix=f"_saved_{settings.tag}")
        pending.figures(out_dir, figures)
        return
    for tag, selections in result.selections.items():
        metadata = plain_metadata(make_metadata(producer, _selection_parameters(result, tag)))
        for kind, pattern in SELECTION_FILES:
            pending.pickle(Path(settings.top_heads_dir) / pattern.format(tag=tag),
                           {**selections[kind], "metadata": metadata})
    if settings.per_model:
        figures = selection_bar_figures(result.selections, "")
    else:
        figures = selection_figures(result.selections[settings.tag], title=", ".join(settings.models))
    pending.figures(out_dir, figures)


def _selection_parameters(result: TopHeadSelections, tag: str) -> dict:
    """The parameters recorded with the selection saved under ``tag``."""
    settings = result.settings
    n_top = sorted(set(settings.n_top))
    if settings.per_model:
        return {"model": tag, "n_top": n_top, "scores_file": portable_path(result.scores_files[tag][0]),
                **grid_parameters(result.grid)}
    return {"models": list(settings.models), "n_top": n_top, "checkpoints": list(settings.checkpoints),
            "scores_files": {m: [portable_path(f) for f in files] for m, files in result.scores_files.items()},
            **grid_parameters(result.grid)}
