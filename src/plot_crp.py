"""CMR reference CRPs ([LI24] Fig 4b-e) beside the human lag-CRP from psifr's bundled data (Fig 4a).

Two different quantities, labelled as such (DESIGN.md section 8):

* human: the **conditional lag-CRP** (transitions made / transitions possible, per subject, then
  mean +- SEM over subjects), computed with ``psifr`` from its bundled PEERS data (default) or
  Morton 2013;
* CMR: the grid's CRP, a normalised histogram of transition lags with repeats allowed, at the
  paper's four example points (beta_enc, beta_rec, gamma_ft) = (1, 1, 0), (0.7, 0.7, 0),
  (0.7, 0.7, 0.5), (0.7, 0.7, 1), with SEM bars when the grid has a SEM file.

Writes ``figs/plot_crp/reference_crps.pdf`` and ``figs/plot_crp/human_lag_crp.csv``.

Example::

    python src/plot_crp.py --crp-grid ../shared/official/saved_crps/cmr_crp_avg_20_11.npy
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from icl_cmr.cli.args import OneLineErrorParser, positive_int, run_cli, setup_logging
from icl_cmr.cli.flags import flag_errors
from icl_cmr.figures.fit_sets import reference_crp_figure
from icl_cmr.errors import InputError
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.grids import read_cmr_grid
from icl_cmr.config import DEFAULT_GRID_PATH
from icl_cmr.files.outputs import PendingWrites
from icl_cmr.humans.recall import DEFAULT_HUMAN_DATASET, HUMAN_DATASETS, conditional_lag_crp, load_recall_data

logger = logging.getLogger("plot_crp")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="CMR reference CRPs and the human lag-CRP (Fig 4).")
    parser.add_argument("--crp-grid", "--crp_grid", type=Path, default=DEFAULT_GRID_PATH,
                        help="CMR CRP grid .npy (default: %(default)s)")
    parser.add_argument("--crp-sem", "--crp_sem", type=Path, default=None,
                        help="SEM file of the grid (optional; default: the *sem* file beside --crp-grid if present)")
    parser.add_argument("--dataset", choices=HUMAN_DATASETS, default=DEFAULT_HUMAN_DATASET,
                        help="psifr's bundled free-recall study (default: %(default)s = PEERS)")
    parser.add_argument("--max-lag", type=positive_int, default=5, help="largest |lag| drawn (default: %(default)s)")
    parser.add_argument("--figs-dir", "--figs_dir", type=Path, default=Path("figs"),
                        help="root folder for figures (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    out_dir = check_writable_dir(args.figs_dir / "plot_crp", "--figs-dir")
    with flag_errors(parser):
        grid = read_cmr_grid(args.crp_grid, args.crp_sem)
        grid_max_lag = int(np.max(np.abs(grid.lags)))
        if args.max_lag > grid_max_lag:  # before the people's lag-CRP is computed out to max_lag
            raise InputError(f"`max_lag` ({args.max_lag}) is beyond the grid's lags -{grid_max_lag}..{grid_max_lag} "
                             f"({grid.source}); give at most {grid_max_lag}", parameters=("max_lag",))
        human = conditional_lag_crp(load_recall_data(args.dataset), max_lag=args.max_lag, dataset=args.dataset)
        figure, _ = reference_crp_figure(grid, human, args.max_lag)
    pending = PendingWrites()
    pending.figure(out_dir / "reference_crps.pdf", figure)
    table = "lag,conditional_lag_crp_mean,sem\n" + "".join(
        f"{lag},{m:.6g},{s:.6g}\n" for lag, m, s in zip(human.lags, human.mean, human.sem))
    pending.text(out_dir / "human_lag_crp.csv", table)
    pending.commit()
    logger.info("human %s lag-CRP at -1 / +1: %.3f / %.3f (%d subjects)", args.dataset,
                human.mean[human.lags == -1][0], human.mean[human.lags == 1][0], human.n_subjects)
    logger.info("wrote %s", out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
