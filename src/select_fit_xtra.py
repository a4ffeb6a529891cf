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
from typing import Dict, Optional, Sequence

import numpy as np

from icl_cmr.cli.args import OneLineErrorParser, UniqueItems, plain_name, positive_int, run_cli, setup_logging, str2bool
from icl_cmr.errors import InputError
from icl_cmr.fits.analyses import (CMR_SELECTION_FILE, INDUCTION_SELECTION_FILE, XTRA_MODELS, check_top_sizes,
                                   fit_over_training, make_selections)
from icl_cmr.cli.fit_args import add_common_arguments, grid_parameters, load_grid
from icl_cmr.files.writing import make_metadata
from icl_cmr.fits.layers import DEFAULT_TOP_N
from icl_cmr.files.outputs import PendingWrites, portable_path
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.results import read_top_heads
from icl_cmr.files.score_format import plain_metadata

logger = logging.getLogger("select_fit_xtra")

_OVER_TRAINING_KEYS = ("MSE_over_training", "params_over_training", "scale_factors_over_training",
                       "head_scores_over_training", "copy_scores_over_training", "checkpoints")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Top-N CMR-like and induction heads per model (no checkpoints).")
    parser.add_argument("-m", "--models", type=plain_name, nargs="+", action=UniqueItems, default=list(XTRA_MODELS),
                        help="models; each names its saved selection files (default: %(default)s)")
    parser.add_argument("-t", "--n_top", type=positive_int, nargs="+", action=UniqueItems, default=list(DEFAULT_TOP_N),
                        help="set sizes N (default: %(default)s)")
    parser.add_argument("-u", "--use_saved", type=str2bool, nargs="?", const=True, default=False,
                        help="redraw from saved selections instead of fitting (--use_saved, or --use_saved True/False)")
    parser.add_argument("--top-heads-dir", type=Path, default=Path("saved_top_heads"),
                        help="folder of the saved selections (default: %(default)s)")
    add_common_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    out_dir = check_writable_dir(args.figs_dir / "select_fit_xtra", "--figs-dir")
    per_model: Dict[str, Dict[str, Dict[str, dict]]] = {}
    pending = PendingWrites()
    if args.use_saved:
        for model in args.models:
            for kind, pattern in (("cmr", CMR_SELECTION_FILE), ("induction", INDUCTION_SELECTION_FILE)):
                path = args.top_heads_dir / pattern.format(tag=model)
                if path.is_file():
                    per_model.setdefault(model, {})[kind] = read_top_heads(path)
                else:
                    logger.warning("no saved selection %s", path)
        if not per_model:
            raise InputError(f"--use_saved: no saved selections for {args.models} in {args.top_heads_dir}")
        suffix = "_saved"  # never overwrite the figures of a fitting run
    else:
        top_dir = check_writable_dir(args.top_heads_dir, "--top-heads-dir")
        check_top_sizes(args.n_top, args.scores_dir, args.models, pooled=False)
        grid = load_grid(args)
        for model in args.models:  # selections are per model, as in the authors' script
            fits = fit_over_training(args.scores_dir, [model], [None], grid)
            selections = make_selections(fits, args.n_top, [None])
            for records in selections.values():
                for record in records.values():
                    for key in _OVER_TRAINING_KEYS:
                        record.pop(key)
            metadata = plain_metadata(make_metadata("select_fit_xtra.py", {
                "model": model, "n_top": sorted(set(args.n_top)), "scores_file": portable_path(fits[model]["files"][0]),
                **grid_parameters(grid)}))
            for kind, pattern in (("cmr", CMR_SELECTION_FILE), ("induction", INDUCTION_SELECTION_FILE)):
                pending.pickle(top_dir / pattern.format(tag=model), {**selections[kind], "metadata": metadata})
            for name, record in selections["cmr"].items():
                logger.info("%s %s: mean D %.4g CMR-like, %.4g induction", model, name, np.nanmean(record["MSE"]),
                            np.nanmean(selections["induction"][name]["MSE"]))
            per_model[model] = selections
        suffix = ""
    from icl_cmr.figures.fit_sets import selection_bar_figures

    pending.figures(out_dir, selection_bar_figures(per_model, suffix))
    logger.info("wrote %s", ", ".join(map(str, pending.commit())))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
