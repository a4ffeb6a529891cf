"""Compute the CMR CRP grid over beta_enc x beta_rec x gamma_ft (DESIGN.md section 3).

Writes ``<save_dir>/cmr_crp_avg_<n_beta>_<n_gamma>.npy`` and ``..._sem_...npy``
(shape [n_beta, n_beta + 1, n_gamma, 2 * max_lag + 1]: mean and SEM over start
positions, the layout of [LI24]'s files) and ``cmr_crp_<n_beta>_<n_gamma>.json``
(every parameter, seed, versions, wall time). Finished slices are kept in
``<save_dir>/.cmr_crp_<n_beta>_<n_gamma>.partial/`` until the run completes. Rerunning the same
command resumes an interrupted run (the default, as for every long job of this project) and gives
bit-identical files; each saved slice is verified first and a damaged one is recomputed with a
warning. ``--restart`` discards the saved slices; ``--resume`` is accepted and changes nothing.
A run with other parameters than the saved slices', or than a finished grid's of the same name (its sidecar), is
refused (add ``--restart`` to discard the slices or replace the grid).

``--recall_rule standard`` simulates the standard recall rule instead of [LI24]'s (recalled items excluded,
recall ending by itself; ``icl_cmr.cmr.standard_rule``) and writes ``cmr_std_crp_*`` / ``cmr_std_cond_crp_*``.

Example::

    python src/est_cmr_crp.py                      # the full default grid, 2 workers
    python src/est_cmr_crp.py --quantity conditional --recall_rule standard
    python src/est_cmr_crp.py --n_beta 4 --n_gamma 3 --n_trials 100 --save_dir /tmp/crps
"""
from __future__ import annotations

import argparse
import logging
import shutil
from typing import Optional, Sequence

from icl_cmr.cli.args import (OneLineErrorParser, float_range, int_range, positive_int, run_cli, seed_int,
                              setup_logging, worker_count)
from icl_cmr.cli.flags import flag_errors
from icl_cmr.cmr.grid import GRID_QUANTITIES
from icl_cmr.cmr.model import CRP_METHODS, LI24_MAX_DRAWS, RECALL_RULES
from icl_cmr.config import FIT_LAGS
from icl_cmr.errors import InputError
from icl_cmr.experiments.cmr_grid import (CmrGridSettings, check_cmr_grid, check_finished_grid, run_cmr_grid,
                                          unusable_points_problem)
from icl_cmr.files.grids import grid_file_names, grid_partial_folder
from icl_cmr.files.outputs import PendingWrites, check_output_files
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.writing import make_metadata

logger = logging.getLogger("est_cmr_crp")

DEFAULTS = CmrGridSettings()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        description="Simulate CMR free recall on a parameter grid and save its CRPs (DESIGN.md section 3).")
    parser.add_argument("--save_dir", default="saved_crps", help="output folder (default: saved_crps)")
    parser.add_argument("--n_beta", type=positive_int, default=DEFAULTS.n_beta,
                        help="beta_enc = 1/n .. 1 (n values), beta_rec = 0 .. 1 (n + 1 values) (default: 20, [LI24])")
    parser.add_argument("--n_gamma", default=DEFAULTS.n_gamma,
                        type=int_range(2, description="an integer >= 2 (gamma_ft runs from 0 to 1)"),
                        help="gamma_ft = 0 .. 1 in n values, n >= 2 (default: 11, [LI24])")
    parser.add_argument("--n_trials", type=positive_int, default=DEFAULTS.n_trials,
                        help=f"simulated recalls per start position (default: {DEFAULTS.n_trials})")
    parser.add_argument("--max_draws", type=positive_int, default=DEFAULTS.max_draws,
                        help=f"most item draws per recall (default: {LI24_MAX_DRAWS}, the setting that "
                             "reproduces the authors' saved grid; their script says 100; with --recall_rule standard "
                             "n_items - 1, the longest possible recall: no cap)")
    parser.add_argument("--n_items", type=int_range(2), default=DEFAULTS.n_items,
                        help=f"studied items (default: {DEFAULTS.n_items})")
    parser.add_argument("--n_start", default=DEFAULTS.n_start,
                        type=int_range(2, description="an integer >= 2 (the SEM is taken over start positions)"),
                        help=f"start positions s0 = 0 .. n-1, n >= 2 (default: {DEFAULTS.n_start})")
    parser.add_argument("--max_lag", default=DEFAULTS.max_lag,
                        type=int_range(int(FIT_LAGS.max()), description=f"an integer >= {int(FIT_LAGS.max())} (the "
                                       f"fitting lags are -{int(FIT_LAGS.max())}..+{int(FIT_LAGS.max())})"),
                        help=f"CRP lags -max_lag .. max_lag, below --n_items (default: {DEFAULTS.max_lag}, [LI24]); "
                             "the fitting scripts read any grid with max_lag >= 5 and fit on lags -5..+5, where the "
                             "CRP does not depend on max_lag")
    parser.add_argument("--seed", type=seed_int, default=DEFAULTS.seed, help="base random seed (default: 0)")
    parser.add_argument("--workers", type=worker_count, default=DEFAULTS.workers,
                        help="worker processes, at most 4 per CPU; results do not depend on it (default: min(2, CPUs))")
    parser.add_argument("--quantity", choices=GRID_QUANTITIES, default=DEFAULTS.quantity,
                        help="crp: the paper's CRP, a normalised lag histogram (default); conditional: the "
                             "conditional lag-CRP of the same recalls, as psifr defines it for people "
                             "(fit_human_recall.py; written as cmr_cond_crp_*)")
    parser.add_argument("--recall_rule", choices=RECALL_RULES, default=DEFAULTS.recall_rule,
                        help="li24: [LI24]'s rule, repeats allowed, recall ends at the absorbing state or after "
                             "--max_draws draws (default); standard: the start item and recalled items are excluded "
                             "from later draws and recall ends by itself (written as cmr_std_*)")
    parser.add_argument("--stop_probability", default=DEFAULTS.stop_probability,
                        type=float_range(0.0, 1.0, high_open=True, description="a number in [0, 1)"),
                        help="with --recall_rule standard: probability of ending recall before each draw "
                             "(default: 0, the absorbing state alone ends it)")
    parser.add_argument("--method", choices=CRP_METHODS, default=None,
                        help="exact: exact CRP at beta_rec in {0, 1}, simulation elsewhere (default for crp); "
                             "simulate: simulation everywhere; authors: the authors' closed forms at "
                             "beta_rec in {0, 1}, gamma_ft = 0 (they do not match their model; comparison only); "
                             "--quantity conditional and --recall_rule standard are always simulated")
    parser.add_argument("--restart", action="store_true",
                        help="discard the finished slices of an interrupted run and start over (default: resume it); also "
                             "replaces a finished grid of the same name made with other settings (refused without it)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run (the default; accepted for compatibility)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.restart and args.resume:
        raise InputError("give --restart (discard the finished slices) or --resume (the default), not both")
    settings = CmrGridSettings(n_beta=args.n_beta, n_gamma=args.n_gamma, n_trials=args.n_trials,
                               max_draws=args.max_draws, n_items=args.n_items, n_start=args.n_start,
                               max_lag=args.max_lag, seed=args.seed, quantity=args.quantity, method=args.method,
                               recall_rule=args.recall_rule, stop_probability=args.stop_probability,
                               workers=args.workers)
    with flag_errors(parser):
        spec = check_cmr_grid(settings)
        save_dir = check_writable_dir(args.save_dir, "--save_dir")
        names = (args.n_beta, args.n_gamma, args.quantity, args.recall_rule, args.stop_probability)
        mean_name, sem_name, meta_name = grid_file_names(*names)
        check_output_files([save_dir / mean_name, save_dir / sem_name, save_dir / meta_name])
        check_finished_grid(spec, save_dir / meta_name, restart=args.restart)  # never replaced silently
        slice_dir = grid_partial_folder(save_dir, *names)
        logger.info("CMR grid %s (%d points, %d slices), %d trials x %d starts, <= %d draws, method %s, %s"
                    "seed %d, %d workers", "x".join(map(str, spec.shape)), spec.n_slices * len(spec.beta_rec),
                    spec.n_slices, args.n_trials, args.n_start, spec.settings.max_draws, spec.method,
                    "" if args.recall_rule == "li24" else f"{args.recall_rule} recall rule, ", spec.seed, args.workers)
        grid = run_cmr_grid(settings, slice_dir, restart=args.restart, progress=not args.no_progress)
        try:
            nan_warning = unusable_points_problem(grid)
        except InputError:
            shutil.rmtree(slice_dir, ignore_errors=True)   # resuming would give the same unusable grid
            raise
    if nan_warning is not None:
        logger.warning("%s", nan_warning)

    metadata = make_metadata("est_cmr_crp.py", spec.to_json(), seed=spec.seed,
                             **grid.metadata_fields(args.workers, files={"mean": mean_name, "sem": sem_name}))
    outputs = PendingWrites()  # the three files together or none of them
    outputs.npy(save_dir / mean_name, grid.mean)
    outputs.npy(save_dir / sem_name, grid.sem)
    outputs.json(save_dir / meta_name, metadata)
    outputs.commit()
    shutil.rmtree(slice_dir, ignore_errors=True)
    logger.info("wrote %s, %s and %s in %s (%.1f s%s)", mean_name, sem_name, meta_name, save_dir, grid.wall_seconds,
                f" over all sessions, {grid.n_resumed} slices resumed" if grid.n_resumed else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
