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

import numpy as np

from icl_cmr.cli.args import (OneLineErrorParser, UniqueItems, non_negative_int, plain_name, positive_float, run_cli,
                              setup_logging)
from icl_cmr.config import CMR_LIKE_STRICT_THRESHOLD
from icl_cmr.fits.analyses import over_training_table
from icl_cmr.cli.fit_args import add_common_arguments, grid_parameters, load_grid
from icl_cmr.fits.distance import check_fitted, fit_heads
from icl_cmr.files.writing import make_metadata
from icl_cmr.files.outputs import PendingWrites, portable_path
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.scores import load_checkpoint_series
from icl_cmr.config import CHECKPOINT_INDICES
from icl_cmr.heads.results import checkpoint_step

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
    from icl_cmr.figures.fit_sets import over_training_figures

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    grid = load_grid(args)
    out_dir = check_writable_dir(args.figs_dir / "attn_over_time" / args.model_name, "--figs-dir")
    checkpoints = sorted(set(args.checkpoints))
    series = load_checkpoint_series(args.scores_dir, args.model_name, checkpoints)
    crp = np.stack([s.crp for s in series])                              # [T, L, H, 16]
    fit = fit_heads(crp, grid, attn_lags=series[0].lags)
    for t, scores in enumerate(series):  # one check per file (16 at most), for messages naming the file
        check_fitted(fit, scores.path, index=(t,))
    steps = np.array([checkpoint_step(k) for k in checkpoints])
    thresholds = (args.threshold, args.strict_threshold)

    pending = PendingWrites()
    pending.figures(out_dir, over_training_figures(fit, steps, thresholds, args.model_name))
    table = over_training_table(fit, checkpoints, steps, thresholds)
    pending.text(out_dir / "layer_over_time.csv", table.to_csv(index=False))
    pending.json(out_dir / "layer_over_time.json", {"metadata": make_metadata(
        "attn_over_time.py", {"model": args.model_name, "checkpoints": checkpoints,
                              "scores_files": [portable_path(s.path) for s in series], "threshold": args.threshold,
                              "strict_threshold": args.strict_threshold, **grid_parameters(grid)})})
    pending.commit()
    logger.info("%s: heads with D < %g by checkpoint: %s", args.model_name, args.threshold,
                ", ".join(str(int(n)) for n in (fit.distance < args.threshold).sum(axis=(1, 2))))
    logger.info("wrote figures and layer_over_time.csv to %s", out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
