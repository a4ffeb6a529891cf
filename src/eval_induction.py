"""Evaluate induction-task models from 2^6 to 2^20 tokens and look inside them.

For every model (``saved_models/induction_task/NAME.pt``, written by
``train_induction.py``: the Transformers ``absolute``, ``rope``, ``alibi``, ``none`` and
``mamba``) and length 2^k:

* accuracy at the last position on the fixed validation set at that length, with a
  Wilson 95% interval; ``--n_sequences`` sequences (default 256) up to
  ``--full_max_log2`` (default 14, i.e. 2^14), and beyond that as many as
  ``--long_cpu_seconds`` allow per model and length (at least one batch, at most
  ``--n_sequences``); lengths whose sequences would need more than
  ``--max_cpu_seconds_per_sequence`` (estimated from the previous length: x2 on the
  linear paths, x4 on the quadratic one) are skipped and logged. On the CPU the budgets
  count CPU time, not wall time, because the machine may be shared; on a GPU, wall time;
* wall and CPU time per sequence, and the peak memory of that length alone: resident
  memory (Linux ``VmHWM``, reset before each length; elsewhere the process-wide
  ``ru_maxrss``) and, on CUDA, the peak memory torch allocated.

How each model runs long inputs: Transformers with ALiBi or no position encoding the
exact linear-time token-type path; absolute and RoPE the blocked path (memory linear,
time quadratic; ``scaled_dot_product_attention`` on every device); Mamba the chunked
recurrent scan (memory independent of length, time linear). See
:mod:`icl_cmr.synthetic.transformer` and :mod:`icl_cmr.synthetic.mamba`. ``--device``
(default: cuda when available) and ``--dtype`` (float32, or bfloat16 weights) choose
where; the validation sets are drawn on the CPU, the same on every device.

Looking inside. For each Transformer, its attention by lag (DESIGN.md section 2) on two
prompt kinds, the second layer (0-based layer 1) plotted, and a third view stored:

* ``task``: induction-task sequences of length 256; query = the final trigger,
  earlier occurrence = the first trigger, so lag +1 is the value to recall;
* ``repeated``: 15 distinct non-trigger tokens, then the same 15 again (the
  vocabulary has only 15 non-trigger ids, so no longer block of distinct tokens
  exists); queries = the second repeat, keys in the first repeat only;
* ``value_query`` (JSON and log only): the ``task`` sequences seen from the value
  (query = first trigger + 1, lag 0 = the value itself), so lag -1 is the trigger,
  where a first-layer previous-token head looks.

Mamba has no attention to read; for it, accuracy and the probability of the value against
the distance between the first trigger and the query
(:func:`icl_cmr.synthetic.task.score_by_distance`), ``--inside_sequences`` (64) sequences
at each of ``--inside_log2`` (2^12 and 2^16) from the validation seed + 2.

Writes ``--save_dir/accuracy_vs_length_NAME.csv`` (+ ``.json`` metadata of this run, with the
model file's SHA-256) per model; rows of lengths this run did not evaluate are kept from the
table already there when that table came from the same model file (same SHA-256), and replaced
with a warning otherwise. Every such table in ``--save_dir`` is combined into
``accuracy_vs_length.csv`` (so models can be evaluated by separate runs, on different devices,
and combined by ``--skip_accuracy --skip_lag_crp``, which needs no model file). Also
``--save_dir/lag_crp_NAME.json`` (Transformers), ``--save_dir/distance_NAME.json`` (Mamba)
and, in ``--fig_dir``, ``accuracy_vs_length.pdf`` (with [GD23]'s MHA-Abs and Mamba rows),
``training_curves.pdf`` (every ``NAME_training_curve.csv`` in ``--save_dir`` and beside the
models), ``lag_crp_layer2.pdf`` (the ``absolute`` model, when evaluated),
``lag_crp_layer2_NAME.pdf`` and ``accuracy_vs_distance_NAME.pdf``. All files are written
together when the run ends (an interrupted run leaves the folders as they were). Flags of a part
that does not run (e.g. ``--n_sequences`` with ``--skip_accuracy``, ``--inside_log2`` without a
Mamba model) are refused.

The evaluation itself is :mod:`icl_cmr.experiments.induction_eval` (callable from Python with these defaults).

Example::

    python src/eval_induction.py                        # all trained models, 2^6 .. 2^20
    python src/eval_induction.py --models saved_models/induction_task/absolute.pt --max_log2 12
    python src/eval_induction.py --models saved_models/induction_task/mamba.pt --device cuda
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

from icl_cmr.cli.args import (OneLineErrorParser, comma_list, device_arg, int_range, non_negative_float,
                              positive_float, positive_int, run_cli, seed_int, setup_logging, worker_count)
from icl_cmr.cli.flags import flag_errors
from icl_cmr.experiments.induction_eval import (MAX_LOG2_LENGTH, InductionEvalSettings, check_induction_eval,
                                                eval_outputs, run_induction_eval)
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.outputs import PendingWrites, log_written
from icl_cmr.synthetic.models import INDUCTION_DTYPES
from icl_cmr.synthetic.task import MAX_VALIDATION_SEQUENCES

logger = logging.getLogger("eval_induction")

DEFAULTS = InductionEvalSettings()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, nargs="+", default=None,
                        help="model files (default: every NAME.pt in --save_dir)")
    parser.add_argument("--save_dir", type=Path, default=DEFAULTS.save_dir,
                        help="results folder (default saved_models/induction_task)")
    parser.add_argument("--fig_dir", type=Path, default=DEFAULTS.fig_dir,
                        help="figure folder (default figs/induction_task)")
    # 2 <= k <= 62: a sequence needs 3 tokens (trigger, value, trigger); positions are int64
    parser.add_argument("--min_log2", type=int_range(2, MAX_LOG2_LENGTH), help="shortest length 2^k (default 6)")
    parser.add_argument("--max_log2", type=int_range(2, MAX_LOG2_LENGTH), help="longest length 2^k (default 20)")
    parser.add_argument("--n_sequences", type=int_range(1, MAX_VALIDATION_SEQUENCES),
                        help="sequences per length up to --full_max_log2, and the cap beyond (default 256)")
    parser.add_argument("--full_max_log2", type=int_range(0, MAX_LOG2_LENGTH),
                        help="lengths up to 2^k get all --n_sequences (default 14, the issue's minimum)")
    parser.add_argument("--long_cpu_seconds", type=non_negative_float,
                        help="time budget per model and length beyond --full_max_log2 (CPU time on the CPU, "
                             "wall time on a GPU; default 60)")
    parser.add_argument("--max_cpu_seconds_per_sequence", type=positive_float,
                        help="skip a length if one sequence is estimated to need more time (default 120)")
    parser.add_argument("--tokens_per_batch", type=positive_int, default=DEFAULTS.tokens_per_batch,
                        help="batch size = max(1, this // length) (default 2^15)")
    parser.add_argument("--val_seed", type=seed_int, default=DEFAULTS.val_seed,
                        help=f"seed of the fixed validation sets (default {DEFAULTS.val_seed})")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=INDUCTION_DTYPES, default=DEFAULTS.dtype,
                        help="weights and activations (default float32; Mamba's scan always runs in float32)")
    parser.add_argument("--lag_prompts", type=positive_int,
                        help="prompts per kind for the attention-by-lag statistics (default 64)")
    parser.add_argument("--inside_log2", type=comma_list(int_range(2, 30), increasing=True),
                        help="lengths 2^k of Mamba's recall-vs-distance analysis (default 12,16)")
    parser.add_argument("--inside_sequences", type=positive_int,
                        help="sequences per length of that analysis (default 64)")
    parser.add_argument("--skip_accuracy", action="store_true",
                        help="skip the accuracy evaluation (the combined table and figures are still rebuilt from "
                             "the per-model tables in --save_dir)")
    parser.add_argument("--skip_lag_crp", action="store_true",
                        help="skip the looking-inside analyses (with --skip_accuracy: only rebuild the combined "
                             "table and figures; no model file needed)")
    parser.add_argument("--threads", type=worker_count, default=DEFAULTS.threads,
                        help="torch CPU threads (default 1)")
    parser.add_argument("--title", default=None, help="title of accuracy_vs_length.pdf")
    parser.add_argument("--png_dir", type=Path, default=None, help="also save PNG copies of the figures here")
    parser.add_argument("--progress", action="store_true", help="show tqdm bars per length")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def settings_from(args: argparse.Namespace) -> InductionEvalSettings:
    """The run's settings from the parsed flags (flags of one part left None when not given)."""
    return InductionEvalSettings(
        models=None if args.models is None else tuple(args.models), save_dir=args.save_dir, fig_dir=args.fig_dir,
        min_log2=args.min_log2, max_log2=args.max_log2, n_sequences=args.n_sequences,
        full_max_log2=args.full_max_log2, long_cpu_seconds=args.long_cpu_seconds,
        max_cpu_seconds_per_sequence=args.max_cpu_seconds_per_sequence, tokens_per_batch=args.tokens_per_batch,
        val_seed=args.val_seed, device=args.device, dtype=args.dtype, lag_prompts=args.lag_prompts,
        inside_log2=args.inside_log2, inside_sequences=args.inside_sequences, skip_accuracy=args.skip_accuracy,
        skip_lag_crp=args.skip_lag_crp, threads=args.threads, title=args.title, png_dir=args.png_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with flag_errors(parser):
        settings = settings_from(args).resolved()
        setup_logging(args.verbose)
        matplotlib.use("Agg")
        check_writable_dir(args.save_dir, "--save_dir")
        check_writable_dir(args.fig_dir, "--fig_dir")
        if args.png_dir is not None:
            check_writable_dir(args.png_dir, "--png_dir")
        plan = check_induction_eval(settings)
        result = run_induction_eval(plan, progress=args.progress)
    # Everything is written together at the end (all or nothing): an interrupted run leaves the folders as they were.
    pending = PendingWrites()
    eval_outputs(result, pending)
    log_written(logger, pending.commit())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
