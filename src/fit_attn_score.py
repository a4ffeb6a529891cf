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
from icl_cmr.cli.fit_args import add_common_arguments, add_figure_arguments, load_grid
from icl_cmr.cli.flags import flag_errors
from icl_cmr.config import CMR_LIKE_STRICT_THRESHOLD
from icl_cmr.errors import InputError
from icl_cmr.experiments.head_fits import (HeadFitSettings, head_fit_paths, output_name, queue_head_fit_outputs,
                                           read_scores, run_head_fit)
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.outputs import PendingWrites, log_written
from icl_cmr.files.scores import DEFAULT_SCORES_DIR

logger = logging.getLogger("fit_attn_score")


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


def resolve_scores_file(args: argparse.Namespace) -> Optional[Path]:
    """The file ``--all_head_scores`` names (a path, or a path relative to --scores-dir), or None without it."""
    if args.all_head_scores is None:
        return None
    path = args.all_head_scores
    if not path.is_file() and not path.is_absolute() and (args.scores_dir / path).is_file():
        path = args.scores_dir / path
    if path.is_dir():
        raise InputError(f"--all_head_scores {path} is a folder; give a head-score file in it "
                         "(all_scores_<model>.pkl), or --model NAME --scores-dir FOLDER to find one")
    if not path.is_file():
        raise InputError(f"head-score file {args.all_head_scores} not found (also looked in {args.scores_dir})")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.all_head_scores is not None:
        refuse_options(parser, given_options(parser, argv), ("model", "checkpoint"),
                       "with --all_head_scores (the file names the scores)")
    setup_logging(args.verbose)
    settings = HeadFitSettings(scores_file=resolve_scores_file(args), model=args.model, checkpoint=args.checkpoint,
                               scores_dir=args.scores_dir, save_dir=args.save_dir, threshold=args.threshold,
                               strict_threshold=args.strict_threshold)
    with flag_errors(parser):
        scores = read_scores(settings)
        grid = load_grid(args)
        paths = head_fit_paths(output_name(settings), args.fits_dir, args.figs_dir)
        if not args.no_figures:
            check_writable_dir(paths.figures, "--figs-dir")
        check_writable_dir(paths.fit.parent, "--fits-dir")
        result = run_head_fit(settings, grid, scores)
    # Everything is computed and rendered before the first file is written.
    pending = PendingWrites()
    queue_head_fit_outputs(pending, result, paths, figures=not args.no_figures, progress=not args.no_progress)
    log_written(logger, pending.commit())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
