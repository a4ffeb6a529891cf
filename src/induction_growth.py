"""Length generalization over training: evaluate a run's snapshots at several lengths (issue 23, item 3).

Every snapshot given (``train_induction.py --snapshot_every N`` writes
``saved_models/induction_task/NAME_snapshots/NAME_stepSSSSSS.pt``; a final ``NAME.pt`` may be added) is scored
at each length 2^k of ``--log2_lengths`` on ``eval_induction.py``'s fixed validation sets (``--val_seed``, same
scoring: argmax at the last position), ``--n_sequences`` sequences below 2^``--long_from_log2`` and
``--long_sequences`` from there on, with Wilson 95% intervals, the CPU and wall seconds and the peak resident
memory of each (snapshot, length).

Writes ``--save_dir/growth_NAME.csv`` (one row per snapshot and length: run, step, snapshot, model_sha256,
length, log2_length, n_sequences, correct, accuracy, wilson_low, wilson_high, cpu_seconds,
cpu_seconds_per_sequence, wall_seconds, peak_rss_gb, batch_size, method, device, dtype) and ``growth_NAME.json``
(settings, each snapshot's SHA-256, the last snapshot's per-sequence answers and recall distances by length),
and in ``--fig_dir`` ``growth_NAME.pdf`` (accuracy against training step, one line per length, Wilson bands,
chance) and ``growth_distance_NAME.pdf`` (the last snapshot's recall against distance at each length above 256).
``growth_recall_NAME.csv`` fits each snapshot's accuracy against the distance from the first trigger (pooled over
its lengths): the distances it recalls at 50% and 99%. For a Mamba run also ``growth_memory_NAME.csv`` and
``growth_memory_NAME.pdf``: how long each snapshot's state keeps the value, from the step sizes of the channels
that write it (16 validation sequences of 2^12). All are written together at the end.

Resuming: each finished (snapshot, length) is kept in ``--save_dir/growth_NAME_pieces/`` at once, named by its
model file's SHA-256, length and count. Rerunning the same command after an interruption computes only what is
missing; rerunning it when more snapshots exist (or with more lengths) computes only the new pieces. Pieces made
with another ``--val_seed``, ``--tokens_per_batch`` or ``--dtype`` are refused before any work (``--restart``
discards every saved piece). Lengths are computed cheapest first, all snapshots at one length before the next.

The evaluation itself is :mod:`icl_cmr.experiments.induction_growth` (callable from Python with these defaults).

Examples::

    # every snapshot of a run at the issue's lengths (256 sequences below 2^15, 64 from there on)
    python src/induction_growth.py --snapshots saved_models/induction_task/mamba_gd23_snapshots
    # the cheap part first: the same pieces are reused when 18,20 are added later
    python src/induction_growth.py --snapshots saved_models/induction_task/mamba_gd23_snapshots --log2_lengths 8,12,14,16
    # one model at every length 2^6 .. 2^20 (the final table row, with time and memory per length)
    python src/induction_growth.py --snapshots saved_models/induction_task/mamba_long.pt \\
        --log2_lengths 6,7,8,9,10,11,12,13,14,15,16,17,18,19,20
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

from icl_cmr.cli.args import (OneLineErrorParser, comma_list, device_arg, int_range, positive_int, run_cli, seed_int,
                              setup_logging, worker_count)
from icl_cmr.cli.flags import flag_errors
from icl_cmr.experiments.induction_growth import (InductionGrowthSettings, check_induction_growth, growth_outputs,
                                                  run_induction_growth)
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.outputs import PendingWrites, log_written
from icl_cmr.synthetic.models import INDUCTION_DTYPES
from icl_cmr.synthetic.task import MAX_VALIDATION_SEQUENCES

logger = logging.getLogger("induction_growth")

DEFAULTS = InductionGrowthSettings()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshots", type=Path, nargs="+", required=True,
                        help="model files, or folders whose *.pt files (checkpoints excluded) are taken")
    parser.add_argument("--name", default=None,
                        help="names the outputs growth_NAME.* (default: the run the snapshots record)")
    parser.add_argument("--log2_lengths", type=comma_list(int_range(2, 30), increasing=True),
                        default=DEFAULTS.log2_lengths, help="lengths 2^k, comma-separated (default 8,12,14,16,18,20)")
    parser.add_argument("--n_sequences", type=int_range(1, MAX_VALIDATION_SEQUENCES), default=DEFAULTS.n_sequences,
                        help=f"sequences per length below 2^--long_from_log2 (default {DEFAULTS.n_sequences})")
    parser.add_argument("--long_sequences", type=int_range(1, MAX_VALIDATION_SEQUENCES), default=DEFAULTS.long_sequences,
                        help=f"sequences per length from 2^--long_from_log2 on (default {DEFAULTS.long_sequences})")
    parser.add_argument("--long_from_log2", type=int_range(2), default=DEFAULTS.long_from_log2,
                        help=f"first k that gets --long_sequences (default {DEFAULTS.long_from_log2})")
    parser.add_argument("--val_seed", type=seed_int, default=DEFAULTS.val_seed,
                        help=f"seed of the fixed validation sets (default {DEFAULTS.val_seed}, eval_induction.py's)")
    parser.add_argument("--tokens_per_batch", type=positive_int, default=DEFAULTS.tokens_per_batch,
                        help="batch size = max(1, this // length) (default 2^15, eval_induction.py's)")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=INDUCTION_DTYPES, default=DEFAULTS.dtype,
                        help="weights (default float32; Mamba's scan always runs in float32)")
    parser.add_argument("--threads", type=worker_count, default=DEFAULTS.threads, help="torch CPU threads (default 1)")
    parser.add_argument("--save_dir", type=Path, default=DEFAULTS.save_dir,
                        help="table and pieces folder (default saved_models/induction_task)")
    parser.add_argument("--fig_dir", type=Path, default=DEFAULTS.fig_dir,
                        help="figure folder (default figs/induction_task)")
    parser.add_argument("--restart", action="store_true", help="discard every saved piece of growth_NAME first")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def settings_from(args: argparse.Namespace) -> InductionGrowthSettings:
    """The run's settings from the parsed flags."""
    return InductionGrowthSettings(
        snapshots=tuple(args.snapshots), name=args.name, log2_lengths=args.log2_lengths, n_sequences=args.n_sequences,
        long_sequences=args.long_sequences, long_from_log2=args.long_from_log2, val_seed=args.val_seed,
        tokens_per_batch=args.tokens_per_batch, device=args.device, dtype=args.dtype, threads=args.threads,
        save_dir=args.save_dir, fig_dir=args.fig_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    matplotlib.use("Agg")
    with flag_errors(parser):
        check_writable_dir(args.save_dir, "--save_dir")
        check_writable_dir(args.fig_dir, "--fig_dir")
        plan = check_induction_growth(settings_from(args), restart=args.restart)
        logger.info("%s: %d snapshots (steps %s) x lengths 2^%s on %s", plan.name, len(plan.snapshots),
                    ", ".join(str(s.step) for s in plan.snapshots), ",".join(map(str, plan.settings.log2_lengths)),
                    plan.settings.device)
        result = run_induction_growth(plan, restart=args.restart)
    pending = PendingWrites()     # the table, its metadata and both figures together
    growth_outputs(result, pending)
    log_written(logger, pending.commit(), f" ({result.n_resumed} of {len(result.rows)} pieces resumed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
