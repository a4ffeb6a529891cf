"""CMR fits across Pythia sizes by relative layer position ([LI24] Fig 6b; DESIGN.md section 5).

For each model: fit every head of its trained model (file without checkpoint, else ``_cp142``),
then plot, one curve per model, against relative layer position l / n_layers * 100:
% heads with D < threshold (``fit_over_size_thres<t>.pdf``, also for the strict 0.1), and the mean
fitted (beta_enc, beta_rec, gamma_ft) and 1/tau of the CMR-like heads with a min-max band
(``params_over_size_thres<t>.pdf``). A per-layer table goes to ``layer_summary.csv``.

Example::

    python src/attn_over_size.py --model_size 70m 410m --scores-dir ../shared/official/saved_scores
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from icl_cmr.cli.args import OneLineErrorParser, UniqueItems, non_negative_int, positive_float, run_cli, setup_logging
from icl_cmr.cli.fit_args import add_common_arguments, load_grid
from icl_cmr.cli.flags import flag_errors
from icl_cmr.config import CMR_LIKE_STRICT_THRESHOLD
from icl_cmr.experiments.fits import OverSizeSettings, queue_over_size_outputs, run_over_size
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.outputs import PendingWrites
from icl_cmr.fits.analyses import PYTHIA_SIZES, log_cmr_like_counts

logger = logging.getLogger("attn_over_size")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="CMR fits across Pythia sizes by relative layer position (Fig 6b).")
    parser.add_argument("-m", "--model_size", nargs="+", action=UniqueItems, default=list(PYTHIA_SIZES),
                        help="Pythia sizes, model pythia-<size> (default: the paper's eight: %(default)s)")
    parser.add_argument("--checkpoint", type=non_negative_int, default=None,
                        help="checkpoint index K (default: the trained model, _cp142 for Pythia v0 files)")
    parser.add_argument("--strict-threshold", type=positive_float, default=CMR_LIKE_STRICT_THRESHOLD,
                        help="second threshold (default: %(default)s)")
    add_common_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    grid = load_grid(args)
    out_dir = check_writable_dir(args.figs_dir / "attn_over_size", "--figs-dir")
    settings = OverSizeSettings(models=tuple(f"pythia-{size}" for size in args.model_size),
                                scores_dir=args.scores_dir, checkpoint=args.checkpoint, threshold=args.threshold,
                                strict_threshold=args.strict_threshold)
    with flag_errors(parser):
        result = run_over_size(settings, grid)
    pending = PendingWrites()
    queue_over_size_outputs(pending, result, out_dir, "attn_over_size.py", title="Pythia")
    pending.commit()
    log_cmr_like_counts(result.fits, args.threshold)
    logger.info("wrote figures and layer_summary.csv to %s", out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
