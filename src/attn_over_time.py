"""CMR fits of one Pythia model over its 16 training checkpoints ([LI24] Fig 7b, S2; DESIGN.md section 5).

Fits every head at every checkpoint (one vectorized fit over [T, L, H]) and writes under
``figs/attn_over_time/<model>/``:

* ``fit_over_time_thres<t>.pdf``: % of each layer's heads with D < t over training (t = 0.5, 0.1);
* ``params_over_time_thres<t>.pdf``: mean fitted (beta_enc, beta_rec, gamma_ft) and 1/tau of each
  layer's heads over training, the heads being those with D < t **at the final checkpoint** (the
  authors' mask), so each curve follows a fixed set of heads;
* ``layer_over_time.csv``: the same numbers, one row per (checkpoint, layer).

Example::

    python src/attn_over_time.py --model_name pythia-70m --scores-dir ../shared/official/saved_scores
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from icl_cmr.cli.args import (OneLineErrorParser, UniqueItems, non_negative_int, plain_name, positive_float, run_cli,
                              setup_logging)
from icl_cmr.cli.fit_args import add_common_arguments, load_grid
from icl_cmr.cli.flags import flag_errors
from icl_cmr.config import CHECKPOINT_INDICES, CMR_LIKE_STRICT_THRESHOLD
from icl_cmr.experiments.fits import OverTimeSettings, queue_over_time_outputs, run_over_time
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.outputs import PendingWrites

logger = logging.getLogger("attn_over_time")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="CMR fits of one model over training checkpoints (Fig 7b).")
    parser.add_argument("-m", "--model_name", type=plain_name, default="pythia-70m",
                        help="model name as in --scores-dir, e.g. pythia-70m or pythia-70m-deduped-v0 "
                             "(default: %(default)s)")
    parser.add_argument("--checkpoints", type=non_negative_int, nargs="+", action=UniqueItems,
                        default=list(CHECKPOINT_INDICES),
                        help="checkpoint indices K, training step 1000 (K + 1); the last one defines the mask "
                             "(default: the paper's 16: %(default)s)")
    parser.add_argument("--strict-threshold", type=positive_float, default=CMR_LIKE_STRICT_THRESHOLD,
                        help="second threshold (default: %(default)s)")
    add_common_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    grid = load_grid(args)
    out_dir = check_writable_dir(args.figs_dir / "attn_over_time" / args.model_name, "--figs-dir")
    settings = OverTimeSettings(model_name=args.model_name, checkpoints=tuple(args.checkpoints),
                                scores_dir=args.scores_dir, threshold=args.threshold,
                                strict_threshold=args.strict_threshold)
    with flag_errors(parser):
        result = run_over_time(settings, grid)
    pending = PendingWrites()
    queue_over_time_outputs(pending, result, out_dir, "attn_over_time.py")
    pending.commit()
    logger.info("%s: heads with D < %g by checkpoint: %s", args.model_name, args.threshold,
                ", ".join(str(int(n)) for n in (result.fit.distance < args.threshold).sum(axis=(1, 2))))
    logger.info("wrote figures and layer_over_time.csv to %s", out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
