"""Top-N CMR-like heads and top-N induction heads over training ([LI24] Fig 7c-f, S3; DESIGN.md section 5).

At the final checkpoint, heads are pooled over the models given and two kinds of sets are picked
for each N in ``--n_top``: the N heads with the **lowest CMR distance** and the N heads with the
**highest matching score** (each set chosen by its own criterion; NaN never picked; every head
keeps its own model's layer and head index). The fits of those heads are then followed over the
training checkpoints. Outputs:

* ``saved_top_heads/cmr_top_crp_fit_<tag>.pkl`` and ``cmr_top_head_score_<tag>.pkl``: dicts
  ``{"top20": {...}, ...}`` with the authors' keys (``MSE``, ``params``, ``scale_factors``,
  ``labels``, ``selection``, ``selection_name``) plus ``model``/``layer``/``head``,
  ``head_scores``, ``copy_scores``, the same over training (``*_over_training``,
  ``checkpoints``) and ``metadata``;
* ``figs/select_fit/selection_over_training.pdf``: mean +- SEM over each set of D, the three
  parameters, 1/tau and the matching score, against training step;
* ``figs/select_fit/selection_vs_human.pdf``: fitted (beta_enc, beta_rec) of the top CMR-like and
  top induction heads at the final checkpoint beside human CMR fits.

``--use_saved`` (or ``--use_saved True``; ``False`` means False) redraws the figures from the
saved selections without refitting, also from the authors' ``cmr_top_crp_fit_pythia.pkl``; those
figures are named ``selection_*_saved_<tag>.pdf`` so that they never overwrite a fitting run's.

Example::

    python src/select_fit.py --models pythia-70m pythia-410m --n_top 20 50 100 200 \\
        --scores-dir ../shared/official/saved_scores
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from icl_cmr.cli.args import (OneLineErrorParser, UniqueItems, non_negative_int, plain_name, positive_int, run_cli,
                              setup_logging, str2bool)
from icl_cmr.cli.fit_args import add_common_arguments, load_grid
from icl_cmr.cli.flags import flag_errors
from icl_cmr.config import CHECKPOINT_INDICES
from icl_cmr.experiments.fits import (DEFAULT_TOP_HEADS_DIR, SelectionSettings, check_selection,
                                      queue_selection_outputs, run_selection)
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.outputs import PendingWrites
from icl_cmr.fits.analyses import PYTHIA_MODELS
from icl_cmr.fits.layers import DEFAULT_TOP_N

logger = logging.getLogger("select_fit")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Top-N CMR-like and induction heads over training (Fig 7c-f).")
    parser.add_argument("-m", "--models", "--model_name", nargs="+", action=UniqueItems, default=list(PYTHIA_MODELS),
                        help="models to pool (default: the paper's eight Pythia models)")
    parser.add_argument("-t", "--n_top", type=positive_int, nargs="+", action=UniqueItems, default=list(DEFAULT_TOP_N),
                        help="set sizes N (default: %(default)s)")
    parser.add_argument("-u", "--use_saved", type=str2bool, nargs="?", const=True, default=False,
                        help="redraw from saved selections instead of fitting (--use_saved, or --use_saved True/False)")
    parser.add_argument("--checkpoints", type=non_negative_int, nargs="+", action=UniqueItems,
                        default=list(CHECKPOINT_INDICES),
                        help="checkpoint indices K; selection at the last one (default: the paper's 16)")
    parser.add_argument("--tag", type=plain_name, default="pythia",
                        help="name in the saved files, a plain name (default: %(default)s)")
    parser.add_argument("--top-heads-dir", type=Path, default=DEFAULT_TOP_HEADS_DIR,
                        help="folder of the saved selections (default: %(default)s)")
    add_common_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    out_dir = check_writable_dir(args.figs_dir / "select_fit", "--figs-dir")
    settings = SelectionSettings(models=tuple(args.models), n_top=tuple(args.n_top),
                                 checkpoints=tuple(args.checkpoints), tag=args.tag, use_saved=args.use_saved,
                                 top_heads_dir=args.top_heads_dir, scores_dir=args.scores_dir)
    with flag_errors(parser):
        if not args.use_saved:
            check_writable_dir(args.top_heads_dir, "--top-heads-dir")
            check_selection(settings)  # before the grid is read: a size larger than the heads pooled is refused
        result = run_selection(settings, None if args.use_saved else load_grid(args))
    pending = PendingWrites()
    queue_selection_outputs(pending, result, out_dir, "select_fit.py")
    logger.info("wrote %s", ", ".join(map(str, pending.commit())))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
