"""Fit every attention head of one model to CMR ([LI24] Fig 5, 6a; DESIGN.md section 4; ``fit_attn_score.py``).

:class:`HeadFitSettings` holds what ``fit_attn_score.py``'s flags set about the computation (same
defaults); :func:`run_head_fit` reads the score file, fits every head by grid search on lags -5..+5
and returns a :class:`HeadFit`; :func:`queue_head_fit_outputs` queues its files into a
:class:`~icl_cmr.files.outputs.PendingWrites` (the caller commits it, all or nothing):

* ``<fits_dir>/<name>/cmr_fit_<name>.pkl`` (:func:`fit_record`: the authors' keys ``fitted_MSE``,
  ``fitted_params``, ``fitted_scale_factors``, ... and ``metadata``) and ``head_fits_<name>.csv``
  (:func:`icl_cmr.fits.analyses.head_table`, one row per head), where ``ablation.py`` looks for them
  (:func:`icl_cmr.files.scores.fit_result_paths`);
* with figures, under ``<figs_dir>/fit_attn_score/<name>/``: ``head_fit_L<l>.pdf`` per layer and
  the summary figures (:func:`icl_cmr.figures.fit_sets.fit_summary_figures`).

In-process use (``run_pipeline.py``, a notebook), the steps of ``fit_attn_score.py`` in its order, so
that every check comes before the fit::

    settings = HeadFitSettings(scores_file=scores_file, save_dir=name)    # or model=..., scores_dir=...
    paths = head_fit_paths(output_name(settings), fits_dir, figs_dir)     # needs no file: check folders now
    check_writable_dir(paths.figures, "--figs-dir"); check_writable_dir(paths.fit.parent, "--fits-dir")
    grid = read_cmr_grid(crp_grid)
    result = run_head_fit(settings, grid)                                 # reads the scores, fits, logs counts
    pending = PendingWrites()
    queue_head_fit_outputs(pending, result, paths, figures=True, progress=False)
    log_written(logger, pending.commit())

The metadata names ``fit_attn_score.py`` as producer (:data:`PRODUCER`) whoever calls, so that a
pipeline's fit file equals the script's. Errors name parameters (``save_dir``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from icl_cmr.config import CMR_LIKE_STRICT_THRESHOLD, CMR_LIKE_THRESHOLD
from icl_cmr.errors import InputError
from icl_cmr.experiments.fits import grid_parameters
from icl_cmr.figures.fit_sets import fit_summary_figures, head_fit_pages
from icl_cmr.files.outputs import PendingWrites, portable_path
from icl_cmr.files.score_format import plain_metadata
from icl_cmr.files.scores import DEFAULT_SCORES_DIR, fit_result_paths, load_model_scores, read_head_scores
from icl_cmr.files.writing import make_metadata
from icl_cmr.fits.analyses import head_table
from icl_cmr.fits.distance import CmrFit, CmrGrid, check_fitted, fit_heads
from icl_cmr.fits.layers import percent_below_threshold
from icl_cmr.heads.results import HeadScores

logger = logging.getLogger(__name__)

#: The producer recorded in the fit file's metadata.
PRODUCER = "fit_attn_score.py"
#: The figures' folder under the figures root.
FIGURES_FOLDER = "fit_attn_score"


@dataclass(frozen=True)
class HeadFitSettings:
    """One model's head fits, as ``fit_attn_score.py``'s flags set them (same defaults).

    Attributes
    ----------
    scores_file : Path, optional
        The head-score file (``--all_head_scores``, once resolved). None: find the file of ``model``
        (at ``checkpoint``) in ``scores_dir``.
    model : str
        Model whose score file to find when ``scores_file`` is None.
    checkpoint : int, optional
        Training checkpoint index K (``*_cp<K>.pkl``); None: the trained model.
    scores_dir : Path
        Root of the head-score files.
    save_dir : str, optional
        Name of the outputs (a plain name); default: ``model``, or the score file's folder name.
    threshold : float
        CMR distance below which a head is CMR-like ([LI24]: 0.5).
    strict_threshold : float
        Second threshold drawn in ``fit_against_layer.pdf`` ([LI24] supplement: 0.1).
    """

    scores_file: Optional[Path] = None
    model: str = "gpt2-small"
    checkpoint: Optional[int] = None
    scores_dir: Path = DEFAULT_SCORES_DIR
    save_dir: Optional[str] = None
    threshold: float = CMR_LIKE_THRESHOLD
    strict_threshold: float = CMR_LIKE_STRICT_THRESHOLD


@dataclass(frozen=True)
class HeadFitPaths:
    """Where one model's fit goes: ``fit`` (pickle), ``table`` (CSV) and the ``figures`` folder."""

    fit: Path
    table: Path
    figures: Path


@dataclass
class HeadFit:
    """What :func:`run_head_fit` computed: the model's scores and fits, arrays [L, H], under ``name``."""

    settings: HeadFitSettings
    name: str
    scores: HeadScores
    fit: CmrFit
    grid: CmrGrid


def output_name(settings: HeadFitSettings) -> str:
    """The name of the outputs: ``save_dir``, else the model, else the score file's folder.

    Raises
    ------
    InputError
        The name would not be a plain folder name (parameter ``save_dir``).
    """
    from_folder = not settings.save_dir and settings.scores_file is not None
    name = settings.save_dir or (Path(settings.scores_file).parent.name if from_folder else settings.model)
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        if from_folder:  # a folder name taken from the score file's path
            raise InputError(f"cannot name the outputs after the folder of {settings.scores_file}; give `save_dir` "
                             "NAME", parameters=("save_dir",))
        raise InputError(f"cannot name the outputs {name!r}: give `save_dir` NAME, a plain name (no '/' or '..')",
                         parameters=("save_dir",))
    return name


def head_fit_paths(name: str, fits_dir: Path, figs_dir: Path) -> HeadFitPaths:
    """The output paths of the fit named ``name`` (:func:`output_name`) under the two roots."""
    fit_path, table_path = fit_result_paths(fits_dir, name)
    return HeadFitPaths(fit_path, table_path, Path(figs_dir) / FIGURES_FOLDER / name)


def read_scores(settings: HeadFitSettings) -> HeadScores:
    """The head scores of ``settings``: ``scores_file``, or the file of ``model`` in ``scores_dir``.

    Raises
    ------
    InputError
        No such file, or one that cannot be read (:mod:`icl_cmr.files.scores`).
    """
    if settings.scores_file is None:
        return load_model_scores(settings.scores_dir, settings.model, settings.checkpoint)
    logger.info("reading %s", settings.scores_file)
    return read_head_scores(settings.scores_file)


def run_head_fit(settings: HeadFitSettings, grid: CmrGrid, scores: Optional[HeadScores] = None) -> HeadFit:
    """Fit every head to ``grid`` (:func:`icl_cmr.fits.distance.fit_heads`) and log how many are CMR-like.

    Parameters
    ----------
    settings : HeadFitSettings
    grid : CmrGrid
    scores : HeadScores, optional
        Already read (:func:`read_scores`); default: read now.

    Raises
    ------
    InputError
        A bad name, a missing or bad score file, or a file of which no head can be fitted.
    """
    name = output_name(settings)
    scores = read_scores(settings) if scores is None else scores
    fit = fit_heads(scores.crp, grid, attn_lags=scores.lags)
    n_fitted = check_fitted(fit, scores.path)
    n_like = int((fit.distance < settings.threshold).sum())
    logger.info("%s: %d of %d heads fitted; %d with D < %g", name, n_fitted, fit.distance.size, n_like,
                settings.threshold)
    logger.info("%% below %g by layer: %s", settings.threshold,
                ", ".join(f"{p:.1f}" for p in percent_below_threshold(fit.distance, settings.threshold)))
    return HeadFit(settings, name, scores, fit, grid)


def fit_record(result: HeadFit) -> dict:
    """The fit file's content: the authors' ``fit()`` keys, the scores' labels and scores, metadata."""
    scores, fit = result.scores, result.fit
    record = dict(fit.as_authors_dict())
    record.update(labels=scores.labels, head_scores=scores.matching_score, copying_score=scores.copying_score,
                  fitted_param_index=fit.param_index, fit_lags=fit.lags,
                  metadata=plain_metadata(make_metadata(PRODUCER, {
                      "scores_file": portable_path(scores.path), "threshold": result.settings.threshold,
                      "fit_lags": fit.lags.tolist(), **grid_parameters(result.grid)},
                      model=scores.model)))  # the scores file's model (None for the authors' files)
    return record


def queue_head_fit_outputs(pending: PendingWrites, result: HeadFit, paths: HeadFitPaths, figures: bool = True,
                           progress: bool = False) -> None:
    """Queue the fit pickle, the head table CSV and (``figures``) every figure into ``pending``.

    ``progress`` shows a bar over the per-layer pages, which are rendered here.
    """
    settings = result.settings
    pending.pickle(paths.fit, fit_record(result))
    table = head_table(result.scores, result.fit, settings.threshold, result.name)
    pending.text(paths.table, table.to_csv(index=False))
    if figures:
        for layer, page in head_fit_pages(result.scores, result.fit, result.name, progress=progress):
            pending.data(paths.figures / f"head_fit_L{layer}.pdf", page)
        pending.figures(paths.figures, fit_summary_figures(result.scores, result.fit, settings.threshold,
                                                           settings.strict_threshold, result.name))
