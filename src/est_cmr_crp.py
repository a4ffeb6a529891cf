"""Compute the CMR CRP grid over beta_enc x beta_rec x gamma_ft (DESIGN.md section 3).

Writes ``<save_dir>/cmr_crp_avg_<n_beta>_<n_gamma>.npy`` and ``..._sem_...npy``
(shape [n_beta, n_beta + 1, n_gamma, 2 * max_lag + 1]: mean and SEM over start
positions, the layout of [LI24]'s files) and ``cmr_crp_<n_beta>_<n_gamma>.json``
(every parameter, seed, versions, wall time). Finished slices are kept in
``<save_dir>/.cmr_crp_<n_beta>_<n_gamma>.partial/`` until the run completes. Rerunning the same
command resumes an interrupted run (the default, as for every long job of this project) and gives
bit-identical files; each saved slice is verified first and a damaged one is recomputed with a
warning. ``--restart`` discards the saved slices; ``--resume`` is accepted and changes nothing.
A run with other parameters than the saved slices' is refused (add ``--restart``).

Example::

    python src/est_cmr_crp.py                      # the full default grid, 2 workers
    python src/est_cmr_crp.py --n_beta 4 --n_gamma 3 --n_trials 100 --save_dir /tmp/crps
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from typing import Optional, Sequence

from icl_cmr.cli.args import OneLineErrorParser, int_range, positive_int, run_cli, seed_int, setup_logging
from icl_cmr.cmr.model import CRP_METHODS, CMRSettings
from icl_cmr.cmr.grid import (GRID_QUANTITIES, PARTIAL_SUFFIX, GridSpec, grid_description, grid_file_names,
                              recorded_wall_seconds, run_grid)
from icl_cmr.config import FIT_LAGS
from icl_cmr.errors import InputError
from icl_cmr.files.writing import make_metadata
from icl_cmr.files.outputs import PendingWrites, check_output_files, check_writable_dir
from icl_cmr.files.unpickling import available_memory, human_bytes

logger = logging.getLogger("est_cmr_crp")

DEFAULTS = CMRSettings()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        description="Simulate CMR free recall on a parameter grid and save its CRPs (DESIGN.md section 3).")
    parser.add_argument("--save_dir", default="saved_crps", help="output folder (default: saved_crps)")
    parser.add_argument("--n_beta", type=positive_int, default=20,
                        help="beta_enc = 1/n .. 1 (n values), beta_rec = 0 .. 1 (n + 1 values) (default: 20, [LI24])")
    parser.add_argument("--n_gamma", default=11,
                        type=int_range(2, description="an integer >= 2 (gamma_ft runs from 0 to 1)"),
                        help="gamma_ft = 0 .. 1 in n values, n >= 2 (default: 11, [LI24])")
    parser.add_argument("--n_trials", type=positive_int, default=DEFAULTS.n_trials,
                        help=f"simulated recalls per start position (default: {DEFAULTS.n_trials})")
    parser.add_argument("--max_draws", type=positive_int, default=DEFAULTS.max_draws,
                        help=f"most item draws per recall (default: {DEFAULTS.max_draws}, the setting that "
                             "reproduces the authors' saved grid; their script says 100)")
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
    parser.add_argument("--seed", type=seed_int, default=0, help="base random seed (default: 0)")
    parser.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1),
                        help="worker processes; results do not depend on it (default: min(2, CPUs))")
    parser.add_argument("--quantity", choices=GRID_QUANTITIES, default="crp",
                        help="crp: the paper's CRP, a normalised lag histogram (default); conditional: the "
                             "conditional lag-CRP of the same recalls, as psifr defines it for people "
                             "(fit_human_recall.py; written as cmr_cond_crp_*)")
    parser.add_argument("--method", choices=CRP_METHODS, default=None,
                        help="exact: exact CRP at beta_rec in {0, 1}, simulation elsewhere (default for crp); "
                             "simulate: simulation everywhere; authors: the authors' closed forms at "
                             "beta_rec in {0, 1}, gamma_ft = 0 (they do not match their model; comparison only); "
                             "--quantity conditional is always simulated")
    parser.add_argument("--restart", action="store_true",
                        help="discard the finished slices of an interrupted run and start over (default: resume it)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run (the default; accepted for compatibility)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def check_settings(args: argparse.Namespace) -> CMRSettings:
    """The simulation settings, refused in one line naming the flags when they cannot give a valid grid."""
    if args.n_start >= args.n_items:
        raise InputError(f"--n_start ({args.n_start}) must be below --n_items ({args.n_items}): a recall starting at "
                         "the last item can only draw the end state, so its CRP would be undefined (NaN)")
    if args.max_lag >= args.n_items:
        raise InputError(f"--n_items ({args.n_items}) must exceed --max_lag ({args.max_lag}): lags beyond "
                         f"{args.n_items - 1} can never occur; raise --n_items or lower --max_lag (at least "
                         f"{int(FIT_LAGS.max())})")
    try:
        return CMRSettings(n_items=args.n_items, n_trials=args.n_trials, max_draws=args.max_draws,
                           n_start=args.n_start, max_lag=args.max_lag)
    except InputError as err:
        raise InputError(f"--{err}") from None


def check_memory(spec: GridSpec, workers: int) -> None:
    """Refuse a grid whose largest arrays would not fit in the memory available now (one line with the estimate)."""
    needed, available = spec.memory_bytes(workers), available_memory()
    if available is None or needed <= available:
        return
    busy = min(workers, spec.n_slices)
    settings = spec.settings
    raise InputError(f"this grid needs about {human_bytes(needed)} of memory ({busy} worker(s) x "
                     f"{human_bytes(spec.point_memory_bytes())} per grid point: {settings.n_trials} trials x "
                     f"{settings.n_start} start positions x {settings.max_draws} draws), but "
                     f"{human_bytes(available)} is available; lower --n_trials, --n_start, --max_draws or --workers")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    if args.restart and args.resume:
        raise InputError("give --restart (discard the finished slices) or --resume (the default), not both")
    if args.n_gamma < 2:
        raise InputError(f"--n_gamma must be at least 2 (gamma_ft runs from 0 to 1), got {args.n_gamma}")
    settings = check_settings(args)
    method = args.method or ("simulate" if args.quantity == "conditional" else "exact")
    spec = GridSpec.from_resolution(args.n_beta, args.n_gamma, settings, seed=args.seed, method=method,
                                    quantity=args.quantity)
    check_memory(spec, args.workers)
    save_dir = check_writable_dir(args.save_dir, "--save_dir")
    mean_name, sem_name, meta_name = grid_file_names(args.n_beta, args.n_gamma, args.quantity)
    check_output_files([save_dir / mean_name, save_dir / sem_name, save_dir / meta_name])
    slice_dir = save_dir / f".{meta_name[:-len('.json')]}{PARTIAL_SUFFIX}"

    logger.info("CMR grid %s (%d points, %d slices), %d trials x %d starts, <= %d draws, method %s, "
                "seed %d, %d workers", "x".join(map(str, spec.shape)), spec.n_slices * len(spec.beta_rec),
                spec.n_slices, settings.n_trials, settings.n_start, settings.max_draws, spec.method,
                spec.seed, args.workers)
    started = time.perf_counter()
    mean, sem, n_resumed = run_grid(spec, slice_dir, workers=args.workers, restart=args.restart,
                                    progress=not args.no_progress)
    session_time = time.perf_counter() - started
    wall_time = max(recorded_wall_seconds(slice_dir), session_time) if n_resumed else session_time

    metadata = make_metadata(
        "est_cmr_crp.py", spec.to_json(), seed=spec.seed,
        wall_time_s=round(wall_time, 3), wall_time_this_session_s=round(session_time, 3), resumed=bool(n_resumed),
        workers=args.workers, resumed_slices=n_resumed,
        n_slices=spec.n_slices, shape=list(mean.shape),
        axes=["beta_enc", "beta_rec", "gamma_ft", f"lag -{settings.max_lag}..{settings.max_lag}"],
        files={"mean": mean_name, "sem": sem_name},
        description=grid_description(spec.quantity),
    )
    outputs = PendingWrites()  # the three files together or none of them
    outputs.npy(save_dir / mean_name, mean)
    outputs.npy(save_dir / sem_name, sem)
    outputs.json(save_dir / meta_name, metadata)
    outputs.commit()
    shutil.rmtree(slice_dir, ignore_errors=True)
    logger.info("wrote %s, %s and %s in %s (%.1f s%s)", mean_name, sem_name, meta_name, save_dir, wall_time,
                f" over all sessions, {n_resumed} slices resumed" if n_resumed else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
