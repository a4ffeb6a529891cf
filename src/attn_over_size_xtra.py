"""CMR fits of any models by relative layer position ([LI24] Fig 6c: Qwen-7B, Mistral-7B, Llama-3-8B).

Same outputs as ``attn_over_size.py`` (under ``figs/attn_over_size_xtra/``) for models given by
name, e.g. ``qwen-7b`` (the authors' ``induction_head_all_scores_qwen-7b.pkl``) or our own
``gpt2-small``, ``pythia-70m``.

Example::

    python src/attn_over_size_xtra.py --models qwen-7b gpt2-small --scores-dir ../shared/official/saved_scores
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
from icl_cmr.fits.analyses import XTRA_MODELS, log_cmr_like_counts

logger = logging.getLogger("attn_over_size_xtra")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="CMR fits of any models by relative layer position (Fig 6c).")
    parser.add_argument("-m", "--models", nargs="+", action=UniqueItems, default=list(XTRA_MODELS),
                        help="model names as in --scores-dir (default: %(default)s)")
    parser.add_argument("--checkpoint", type=non_negative_int, default=None,
                        help="checkpoint index K (default: the trained model)")
    parser.add_argument("--strict-threshold", type=positive_float, default=CMR_LIKE_STRICT_THRESHOLD,
                        help="second threshold (default: %(default)s)")
    add_common_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    grid = load_grid(args)
    out_dir = check_writable_dir(args.figs_dir / "attn_over_size_xtra", "--figs-dir")
    settings = OverSizeSettings(models=tuple(args.models), scores_dir=args.scores_dir, checkpoint=args.checkpoint,
                                threshold=args.threshold, strict_threshold=args.strict_threshold)
    with flag_errors(parser):
        result = run_over_size(settings, grid)
    pending = PendingWrites()
    queue_over_size_outputs(pending, result, out_dir, "attn_over_size_xtra.py", title="")
    pending.commit()
    log_cmr_like_counts(result.fits, args.threshold)
    logger.info("wrote figures and layer_summary.csv to %s", out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
