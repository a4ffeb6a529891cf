"""Fit every attention head of one model to CMR ([LI24] Fig 5 and 6a; DESIGN.md section 4).

Reads one head-score file (ours or the authors', either layout) and the CMR CRP grid, fits every
head by grid search on lags -5..+5, and writes under ``figs/fit_attn_score/<save_dir>/``:

* ``head_fit_L<l>.pdf``: each head's attention CRP (SEM bars) with its CMR fit, per layer;
* ``score_against_fit.pdf``: CMR distance against matching score (copying-score sign) + histogram;
* ``score_against_scale_factor.pdf``: fitted 1/tau against matching score + histogram;
* ``fit_against_layer.pdf``: % of heads with D < 0.5 and D < 0.1 by relative layer position;
and under ``<fits-dir>/<save_dir>/`` (default ``saved_scores/<model>/``, beside the scores):

* ``cmr_fit_<save_dir>.pkl`` (keys ``fitted_MSE``, ``fitted_params``, ``fitted_scale_factors``, ... and
  ``metadata``) and ``head_fits_<save_dir>.csv`` (one row per head).

Example::

    python src/fit_attn_score.py --save_dir gpt2-small --all_head_scores gpt2-small/all_scores_gpt2-small.pkl
    python src/fit_attn_score.py --model pythia-70m --checkpoint 142 --scores-dir ../shared/official/saved_scores

This module also holds the command-line pieces shared by the other fitting scripts.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from icl_cmr.cli import OneLineErrorParser, non_negative_int, positive_float, run_cli, setup_logging
from icl_cmr.cli import str2bool  # noqa: F401 - its former home; callers may import it from here
from icl_cmr.config import CMR_LIKE_STRICT_THRESHOLD, CMR_LIKE_THRESHOLD
from icl_cmr.errors import InputError
from icl_cmr.fitting import CmrFit, CmrGrid, check_fitted, fit_heads
from icl_cmr.io import make_metadata
from icl_cmr.layer_stats import percent_below_threshold, relative_layer_position
from icl_cmr.outputs import PendingWrites, check_writable_dir, portable_path
from icl_cmr.score_format import plain_metadata
from icl_cmr.score_files import (DEFAULT_GRID_PATH, DEFAULT_SCORES_DIR, HeadScores, fit_result_paths, read_cmr_grid,
                                 load_model_scores, read_head_scores)

logger = logging.getLogger("fit_attn_score")

PRODUCER = "fit_attn_score.py"


# ----------------------------------------------------------------------------- shared CLI pieces

def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every fitting script shares: inputs (scores, grid), outputs (figures), threshold."""
    parser.add_argument("--scores-dir", "--scores_dir", type=Path, default=DEFAULT_SCORES_DIR,
                        help="root folder of head-score files, <root>/<model>/*all_scores_*.pkl (default: %(default)s)")
    parser.add_argument("--crp-grid", "--crp_grid", type=Path, default=DEFAULT_GRID_PATH,
                        help="CMR CRP grid .npy [A, B, C, 17] (default: %(default)s; axes from a .json sidecar "
                             "for non-default shapes)")
    parser.add_argument("--crp-sem", "--crp_sem", type=Path, default=None,
                        help="SEM file of the grid (optional; default: the *sem* file beside --crp-grid if present)")
    parser.add_argument("--figs-dir", "--figs_dir", type=Path, default=Path("figs"),
                        help="root folder for figures (default: %(default)s)")
    parser.add_argument("--threshold", type=positive_float, default=CMR_LIKE_THRESHOLD,
                        help="CMR distance below which a head is CMR-like (default: %(default)s, [LI24] Fig 5/6)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def load_grid(args: argparse.Namespace) -> CmrGrid:
    """The CMR grid named by ``--crp-grid`` / ``--crp-sem``."""
    grid = read_cmr_grid(args.crp_grid, args.crp_sem)
    logger.info("CMR grid %s: %s points%s", grid.source, "x".join(map(str, grid.shape)),
                "" if grid.sem is not None else " (no SEM file)")
    return grid


def grid_parameters(grid: CmrGrid) -> dict:
    """Grid description for metadata (the grid's path relative to the repository root when inside it)."""
    return {"crp_grid": portable_path(grid.source) if grid.source else grid.source, "grid_shape": list(grid.shape),
            "beta_enc": grid.beta_enc.tolist(), "beta_rec": grid.beta_rec.tolist(), "gamma_ft": grid.gamma_ft.tolist()}


# ----------------------------------------------------------------------------- this script

def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Fit every attention head of a model to CMR (Fig 5, 6a).")
    parser.add_argument("-s", "--save_dir", type=str, default=None,
                        help="output sub-folder under <figs-dir>/fit_attn_score/ (default: the model name)")
    parser.add_argument("-f", "--all_head_scores", type=Path, default=None,
                        help="head-score file: a path, or a path relative to --scores-dir as in the paper's README")
    parser.add_argument("-m", "--model", type=str, default="gpt2-small",
                        help="model to find in --scores-dir when --all_head_scores is not given (default: %(default)s)")
    parser.add_argument("--checkpoint", type=non_negative_int, default=None,
                        help="training checkpoint index K (files *_cp<K>.pkl; default: the trained model)")
    parser.add_argument("--fits-dir", "--fits_dir", type=Path, default=DEFAULT_SCORES_DIR,
                        help="fit results go to <fits-dir>/<save_dir>/cmr_fit_<save_dir>.pkl (default: %(default)s)")
    parser.add_argument("--strict-threshold", type=positive_float, default=CMR_LIKE_STRICT_THRESHOLD,
                        help="second threshold drawn in fit_against_layer.pdf (default: %(default)s, [LI24] supp.)")
    parser.add_argument("--no-figures", action="store_true",
                        help="write the fit pickle and CSV only (sweeps fit hundreds of checkpoints)")
    add_common_arguments(parser)
    return parser


def resolve_scores(args: argparse.Namespace) -> HeadScores:
    """The head scores named by ``--all_head_scores`` (path, or relative to --scores-dir) or ``--model``."""
    if args.all_head_scores is None:
        return load_model_scores(args.scores_dir, args.model, args.checkpoint)
    path = args.all_head_scores
    if not path.is_file() and not path.is_absolute() and (args.scores_dir / path).is_file():
        path = args.scores_dir / path
    if not path.is_file():
        raise InputError(f"head-score file {args.all_head_scores} not found (also looked in {args.scores_dir})")
    logger.info("reading %s", path)
    return read_head_scores(path)


def head_table(scores: HeadScores, fit: CmrFit, threshold: float, model: str):
    """Tidy table, one row per head (pandas DataFrame)."""
    import pandas as pd

    layers, heads = np.meshgrid(np.arange(scores.n_layers), np.arange(scores.n_heads), indexing="ij")
    return pd.DataFrame({
        "model": model,
        "layer": layers.ravel(),
        "head": heads.ravel(),
        "label": scores.labels.ravel(),
        "matching_score": scores.matching_score.ravel(),
        "copying_score": scores.copying_score.ravel(),
        "cmr_distance": fit.distance.ravel(),
        "beta_enc": fit.params[..., 0].ravel(),
        "beta_rec": fit.params[..., 1].ravel(),
        "gamma_ft": fit.params[..., 2].ravel(),
        "inverse_temperature": fit.inverse_temperature.ravel(),
        "cmr_like": (fit.distance < threshold).ravel(),
    })


def queue_figures(pending: PendingWrites, out_dir: Path, scores: HeadScores, fit: CmrFit, threshold: float,
                  strict_threshold: float, name: str) -> None:
    """Render all figures of this script (written later, with the other outputs, by ``pending``)."""
    from icl_cmr import plotting
    from icl_cmr.fitting import select_lags

    attn = select_lags(scores.crp, scores.lags, fit.lags)
    attn_sem = select_lags(scores.crp_sem, scores.lags, fit.lags)
    fitted_on_attn_scale = fit.fitted_pattern_scaled + attn.min(axis=-1, keepdims=True)
    for layer in range(scores.n_layers):
        # Heads in descending matching score within the layer, as the authors' sorted_* arrays.
        order = np.argsort(-np.nan_to_num(scores.matching_score[layer], nan=-np.inf), kind="stable")
        fig = plotting.plot_layer_fits(scores.labels[layer, order], fit.lags, attn[layer, order],
                                       attn_sem[layer, order], fitted_on_attn_scale[layer, order],
                                       fit.distance[layer, order], fit.params[layer, order],
                                       title=f"{name}, layer {layer}")
        pending.figure(out_dir / f"head_fit_L{layer}.pdf", fig)
    pending.figure(out_dir / "score_against_fit.pdf",
                   plotting.plot_distance_vs_matching(fit.distance.ravel(), scores.matching_score.ravel(),
                                                      scores.copying_score.ravel(), threshold, title=name))
    pending.figure(out_dir / "score_against_scale_factor.pdf",
                   plotting.plot_inverse_temperature_vs_matching(fit.inverse_temperature.ravel(),
                                                                 scores.matching_score.ravel(),
                                                                 scores.copying_score.ravel(), title=name))
    position = relative_layer_position(scores.n_layers)
    curves = {f"D < {t}": percent_below_threshold(fit.distance, t) for t in (threshold, strict_threshold)}
    pending.figure(out_dir / "fit_against_layer.pdf",
                   plotting.plot_percent_by_layer({k: position for k in curves}, curves,
                                                  ylabel="% heads (CMR-like)", title=name))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    scores = resolve_scores(args)
    grid = load_grid(args)
    name = args.save_dir or (args.model if args.all_head_scores is None else Path(scores.path).parent.name)
    out_dir = None if args.no_figures else check_writable_dir(args.figs_dir / "fit_attn_score" / name, "--figs-dir")
    fit_path, table_path = fit_result_paths(args.fits_dir, name)
    check_writable_dir(fit_path.parent, "--fits-dir")

    fit = fit_heads(scores.crp, grid, attn_lags=scores.lags)
    n_fitted = check_fitted(fit, scores.path)
    n_like = int((fit.distance < args.threshold).sum())
    logger.info("%s: %d of %d heads fitted; %d with D < %g", name, n_fitted, fit.distance.size, n_like, args.threshold)
    logger.info("%% below %g by layer: %s", args.threshold,
                ", ".join(f"{p:.1f}" for p in percent_below_threshold(fit.distance, args.threshold)))

    result = dict(fit.as_authors_dict())
    result.update(labels=scores.labels, head_scores=scores.matching_score, copying_score=scores.copying_score,
                  fitted_param_index=fit.param_index, fit_lags=fit.lags,
                  metadata=plain_metadata(make_metadata(PRODUCER, {
                      "scores_file": portable_path(scores.path), "threshold": args.threshold,
                      "fit_lags": fit.lags.tolist(), **grid_parameters(grid)})))
    # Everything is computed and rendered before the first file is written.
    pending = PendingWrites()
    pending.pickle(fit_path, result)
    pending.text(table_path, head_table(scores, fit, args.threshold, name).to_csv(index=False))
    if out_dir is not None:
        queue_figures(pending, out_dir, scores, fit, args.threshold, args.strict_threshold, name)
    pending.commit()
    if out_dir is None:
        logger.info("wrote %s and %s (no figures)", fit_path, table_path)
        return 0
    logger.info("wrote %s, %s and figures to %s", fit_path, table_path, out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
