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

``--no-figures`` writes the fit files only (for sweeps); a progress bar counts the per-layer pages
(``--no-progress`` hides it).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from icl_cmr.cli.args import (OneLineErrorParser, given_options, non_negative_int, plain_name, positive_float,
                              refuse_options, run_cli, setup_logging)
from icl_cmr.config import CMR_LIKE_STRICT_THRESHOLD
from icl_cmr.errors import InputError
from icl_cmr.fits.analyses import head_table
from icl_cmr.cli.fit_args import add_common_arguments, add_figure_arguments, grid_parameters, load_grid
from icl_cmr.fits.distance import check_fitted, fit_heads
from icl_cmr.files.writing import make_metadata
from icl_cmr.fits.layers import percent_below_threshold
from icl_cmr.files.outputs import PendingWrites, log_written, portable_path
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.score_format import plain_metadata
from icl_cmr.files.scores import DEFAULT_SCORES_DIR, fit_result_paths, load_model_scores, read_head_scores
from icl_cmr.heads.results import HeadScores

logger = logging.getLogger("fit_attn_score")

PRODUCER = "fit_attn_score.py"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Fit every attention head of a model to CMR (Fig 5, 6a).")
    parser.add_argument("-s", "--save_dir", type=plain_name, default=None,
                        help="name of the output sub-folders and files: <figs-dir>/fit_attn_score/<save_dir>/, "
                             "<fits-dir>/<save_dir>/cmr_fit_<save_dir>.pkl (default: the model name); a plain name, "
                             "no '/' or '..'")
    parser.add_argument("-f", "--all_head_scores", type=Path, default=None,
                        help="head-score file: a path, or a path relative to --scores-dir as in the paper's README")
    parser.add_argument("-m", "--model", type=plain_name, default="gpt2-small",
                        help="model to find in --scores-dir when --all_head_scores is not given (default: %(default)s)")
    parser.add_argument("--checkpoint", type=non_negative_int, default=None,
                        help="training checkpoint index K (files *_cp<K>.pkl; default: the trained model)")
    parser.add_argument("--fits-dir", "--fits_dir", type=Path, default=DEFAULT_SCORES_DIR,
                        help="fit results go to <fits-dir>/<save_dir>/cmr_fit_<save_dir>.pkl (default: %(default)s)")
    parser.add_argument("--strict-threshold", type=positive_float, default=CMR_LIKE_STRICT_THRESHOLD,
                        help="second threshold drawn in fit_against_layer.pdf (default: %(default)s, [LI24] supp.)")
    add_common_arguments(parser)
    add_figure_arguments(parser)
    return parser


def resolve_scores(args: argparse.Namespace) -> HeadScores:
    """The head scores named by ``--all_head_scores`` (path, or relative to --scores-dir) or ``--model``."""
    if args.all_head_scores is None:
        return load_model_scores(args.scores_dir, args.model, args.checkpoint)
    path = args.all_head_scores
    if not path.is_file() and not path.is_absolute() and (args.scores_dir / path).is_file():
        path = args.scores_dir / path
    if path.is_dir():
        raise InputError(f"--all_head_scores {path} is a folder; give a head-score file in it "
                         "(all_scores_<model>.pkl), or --model NAME --scores-dir FOLDER to find one")
    if not path.is_file():
        raise InputError(f"head-score file {args.all_head_scores} not found (also looked in {args.scores_dir})")
    logger.info("reading %s", path)
    return read_head_scores(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.all_head_scores is not None:
        refuse_options(parser, given_options(parser, argv), ("model", "checkpoint"),
                       "with --all_head_scores (the file names the scores)")
    setup_logging(args.verbose)
    scores = resolve_scores(args)
    grid = load_grid(args)
    name = args.save_dir or (args.model if args.all_head_scores is None else Path(scores.path).parent.name)
    if name in ("", ".", "..") or "/" in name or "\\" in name:  # a folder name taken from the score file's path
        raise InputError(f"cannot name the outputs after the folder of {scores.path}; give --save_dir NAME")
    out_dir = args.figs_dir / "fit_attn_score" / name
    if not args.no_figures:
        check_writable_dir(out_dir, "--figs-dir")
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
                      "fit_lags": fit.lags.tolist(), **grid_parameters(grid)},
                      model=scores.model)))  # the scores file's model (None for the authors' files)
    # Everything is computed and rendered before the first file is written.
    pending = PendingWrites()
    pending.pickle(fit_path, result)
    pending.text(table_path, head_table(scores, fit, args.threshold, name).to_csv(index=False))
    if not args.no_figures:
        from icl_cmr.figures.fit_sets import fit_summary_figures, head_fit_pages

        for layer, page in head_fit_pages(scores, fit, name, progress=not args.no_progress):
            pending.data(out_dir / f"head_fit_L{layer}.pdf", page)
        pending.figures(out_dir, fit_summary_figures(scores, fit, args.threshold, args.strict_threshold, name))
    log_written(logger, pending.commit())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
