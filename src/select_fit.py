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

import numpy as np

from icl_cmr.cli.args import (OneLineErrorParser, UniqueItems, non_negative_int, plain_name, positive_int, run_cli,
                              setup_logging, str2bool)
from icl_cmr.fits.analyses import (CMR_SELECTION_FILE, INDUCTION_SELECTION_FILE, PYTHIA_MODELS, check_top_sizes,
                                   fit_over_training, load_saved_selections, make_selections)
from icl_cmr.cli.fit_args import add_common_arguments, grid_parameters, load_grid
from icl_cmr.files.writing import make_metadata
from icl_cmr.fits.layers import DEFAULT_TOP_N
from icl_cmr.files.outputs import PendingWrites, portable_path
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.config import CHECKPOINT_INDICES
from icl_cmr.heads.results import checkpoint_step
from icl_cmr.files.score_format import plain_metadata

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
    parser.add_argument("--top-heads-dir", type=Path, default=Path("saved_top_heads"),
                        help="folder of the saved selections (default: %(default)s)")
    add_common_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from icl_cmr.figures.fit_sets import selection_figures

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    out_dir = check_writable_dir(args.figs_dir / "select_fit", "--figs-dir")
    if args.use_saved:
        selections = load_saved_selections(args.top_heads_dir, args.tag)
        pending = PendingWrites()
        # Own names, so that redrawing saved selections never overwrites the figures of a fitting run.
        pending.figures(out_dir, selection_figures(selections, title=f"saved selections ({args.tag})",
                                                   suffix=f"_saved_{args.tag}"))
        logger.info("wrote %s", ", ".join(map(str, pending.commit())))
        return 0
    top_dir = check_writable_dir(args.top_heads_dir, "--top-heads-dir")
    checkpoints = sorted(set(args.checkpoints))
    check_top_sizes(args.n_top, args.scores_dir, args.models, checkpoints[-1], pooled=True)
    grid = load_grid(args)
    per_model = fit_over_training(args.scores_dir, args.models, checkpoints, grid)
    selections = make_selections(per_model, args.n_top, checkpoints)
    metadata = plain_metadata(make_metadata("select_fit.py", {
        "models": list(args.models), "n_top": sorted(set(args.n_top)), "checkpoints": checkpoints,
        "scores_files": {m: [portable_path(f) for f in v["files"]] for m, v in per_model.items()},
        **grid_parameters(grid)}))
    pending = PendingWrites()
    for kind, pattern in (("cmr", CMR_SELECTION_FILE), ("induction", INDUCTION_SELECTION_FILE)):
        pending.pickle(top_dir / pattern.format(tag=args.tag), {**selections[kind], "metadata": metadata})
    for name, record in selections["cmr"].items():
        logger.info("%s CMR-like: mean D %.4g at step %d; induction %s: mean D %.4g", name,
                    np.nanmean(record["MSE"]), checkpoint_step(checkpoints[-1]), name,
                    np.nanmean(selections["induction"][name]["MSE"]))
    pending.figures(out_dir, selection_figures(selections, title=", ".join(args.models)))
    logger.info("wrote %s", ", ".join(map(str, pending.commit())))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
