"""Top-N CMR-like and induction heads of models without training checkpoints ([LI24] Fig 7, extra models).

For each model separately (as the authors' ``select_fit_xtra.py``): the N heads with the lowest
CMR distance and the N heads with the highest matching score (NaN never picked), their fitted
D, parameters and 1/tau. Outputs:

* ``saved_top_heads/cmr_top_crp_fit_<model>.pkl`` and ``cmr_top_head_score_<model>.pkl``
  (same record layout as ``select_fit.py``, without the over-training arrays);
* ``figs/select_fit_xtra/selection_final_cmr.pdf`` and ``selection_final_induction.pdf``: bars of
  mean +- SEM per set, grouped by model; ``selection_vs_human.pdf`` (with ``--use_saved``:
  ``selection_*_saved.pdf``, so that redrawing never overwrites a fitting run's figures).

Example::

    python src/select_fit_xtra.py --models qwen-7b gpt2-small --scores-dir ../shared/official/saved_scores
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from icl_cmr.cli.args import OneLineErrorParser, UniqueItems, plain_name, positive_int, run_cli, setup_logging, str2bool
from icl_cmr.cli.fit_args import add_common_arguments, load_grid
from icl_cmr.cli.flags import flag_errors
from icl_cmr.experiments.fits import (DEFAULT_TOP_HEADS_DIR, TRAINED_MODEL, SelectionSettings, check_selection,
                                      queue_selection_outputs, run_selection)
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.outputs import PendingWrites
from icl_cmr.fits.analyses import XTRA_MODELS
from icl_cmr.fits.layers import DEFAULT_TOP_N

logger = logging.getLogger("select_fit_xtra")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Top-N CMR-like and induction heads per model (no checkpoints).")
    parser.add_argument("-m", "--models", type=plain_name, nargs="+", action=UniqueItems, default=list(XTRA_MODELS),
                        help="models; each names its saved selection files (default: %(default)s)")
    parser.add_argument("-t", "--n_top", type=positive_int, nargs="+", action=UniqueItems, default=list(DEFAULT_TOP_N),
                        help="set sizes N (default: %(default)s)")
    parser.add_argument("-u", "--use_saved", type=str2bool, nargs="?", const=True, default=False,
                        help="redraw from saved selections instead of fitting (--use_saved, or --use_saved True/False)")
    parser.add_argument("--top-heads-dir", type=Path, default=DEFAULT_TOP_HEADS_DIR,
                        help="folder of the saved selections (default: %(default)s)")
    add_common_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    out_dir = check_writable_dir(args.figs_dir / "select_fit_xtra", "--figs-dir")
    settings = SelectionSettings(models=tuple(args.models), n_top=tuple(args.n_top), checkpoints=TRAINED_MODEL,
                                 per_model=True, use_saved=args.use_saved, top_heads_dir=args.top_heads_dir,
                                 scores_dir=args.scores_dir)
    with flag_errors(parser):
        if not args.use_saved:
            check_writable_dir(args.top_heads_dir, "--top-heads-dir")
            check_selection(settings)  # before the grid is read: a size larger than a model's heads is refused
        result = run_selection(settings, None if args.use_saved else load_grid(args))
    pending = PendingWrites()
    queue_selection_outputs(pending, result, out_dir, "select_fit_xtra.py")
    logger.info("wrote %s", ", ".join(map(str, pending.commit())))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
