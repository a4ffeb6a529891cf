"""Train a 2-layer Transformer or Mamba on the synthetic induction-heads task (DESIGN.md section 7).

``--architecture transformer`` (default; ``--position_encoding`` picks the variant) or
``--architecture mamba`` (``transformers``' ``MambaForCausalLM``, d_model 64, state 16;
:mod:`icl_cmr.synthetic.mamba`). Both get the same data, loss position, optimiser and
curriculum options. Adam with a constant learning rate, batch 8, a fresh batch of length-256 sequences
every step, loss and accuracy at the last position only. Every ``--eval_every``
steps the model is scored on the fixed validation set at length 256; training
stops when that accuracy reaches ``--target_accuracy`` (default 0.99) or after
``--max_steps``. ``--min_steps N`` keeps training at the last stage until step N
before that rule may stop the run (to study training past the target; [GD23] train
for a fixed 204,800 steps).

``--curriculum 16,32,64,128`` trains on shorter sequences first: each stage's
batches have that stage's length, and the next stage starts once validation
accuracy at the stage's length reaches ``--target_accuracy``; the last stage is
always ``--train_length`` and only it can stop the run. Trained straight at 256
the default model stayed at chance for 30,000 steps (see the README), so the
shipped model uses this curriculum. The position table always has
``--train_length`` rows; rows past the current stage's length simply receive no
gradient yet.

``--device`` (default: cuda when available) and ``--dtype bfloat16`` (autocast; weights and
Adam state stay float32) choose where and how the forward pass runs; the data stream is
drawn on the CPU, so every device sees the same batches.

Writes into ``--save_dir`` (default ``saved_models/induction_task/``), for
the model name ENC (``--name``; default the position encoding, or ``mamba``):

* ``ENC_checkpoint.pt``: weights, Adam state, the data stream's RNG state and the
  curve so far, written atomically at every evaluation. Rerunning the same command
  continues from it (the default, as for every long job of this project) and gives the
  same weights as an uninterrupted run; ``--restart`` starts over, ``--resume`` is
  accepted and changes nothing. Settings other than the checkpoint's are refused
  (the step budget ``--max_steps`` / ``--min_steps``, ``--threads``, ``--device``, and ``--name`` and
  the output folders may change). A checkpoint that cannot be read or
  does not hold a training state (truncated, garbled) cannot be salvaged: it is moved
  to ``ENC_checkpoint.pt.damaged`` (``.damaged.1``, ... if taken) with a warning and training starts over;
* ``ENC.pt``: the final weights with their configs and metadata;
* with ``--snapshot_every N``, ``ENC_snapshots/ENC_stepSSSSSS.pt`` after every N steps: the weights at that
  step in ``ENC.pt``'s format (no optimiser state; metadata ``step``), written atomically before that step's
  checkpoint, so a resumed run never skips one and writes the same weights an uninterrupted run would.
  ``eval_induction.py --models`` evaluates them like any model (accuracy against training step);
* ``ENC_training_curve.csv`` and ``ENC_training.json`` (steps, wall time, threads);
* ``figs/induction_task/training_curve_ENC.pdf``.

The run itself is :mod:`icl_cmr.experiments.induction_train` (callable from Python with these defaults).

Example::

    python src/train_induction.py --position_encoding absolute
    python src/train_induction.py --position_encoding rope    # again: resumes where it stopped
    python src/train_induction.py --architecture mamba
    python src/train_induction.py --architecture mamba --name mamba_gd23 --max_steps 204800 --min_steps 204800 \
        --snapshot_every 4000      # [GD23]'s recipe: straight at 256, 204,800 steps, weights every 4,000
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

from icl_cmr.cli.args import (OneLineErrorParser, comma_list, device_arg, int_range, non_negative_int, positive_float,
                              positive_int, probability, run_cli, seed_int, setup_logging, worker_count)
from icl_cmr.cli.flags import flag_errors
from icl_cmr.errors import InputError
from icl_cmr.experiments.induction_train import (InductionTrainSettings, check_induction_training, is_run_name,
                                                 run_induction_training, training_outputs)
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.outputs import PendingWrites, log_written
from icl_cmr.synthetic.mamba import MAMBA_INITIALIZATIONS, MAMBA_NORMS, InductionMambaConfig
from icl_cmr.synthetic.models import ARCHITECTURES, INDUCTION_DTYPES
from icl_cmr.synthetic.task import MAX_VALIDATION_SEQUENCES
from icl_cmr.synthetic.transformer import POSITION_ENCODINGS, TinyTransformerConfig

logger = logging.getLogger("train_induction")

DEFAULTS = InductionTrainSettings()

#: Shortest sequence of the task: trigger, value, trigger (DESIGN.md section 7).
sequence_length = int_range(3)


def model_file_name(text: str) -> str:
    """argparse type: a file-name stem of letters, digits, ``_``, ``-``, ``.`` (not ``*_checkpoint``, not ``*.pt``)."""
    if not is_run_name(text):
        raise argparse.ArgumentTypeError(f"--name must be a file-name stem: letters, digits, '_', '-' or '.' (not "
                                         f"ending in '_checkpoint' or '.pt'), got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    model_defaults, mamba_defaults = TinyTransformerConfig(), InductionMambaConfig()
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", choices=ARCHITECTURES, default=DEFAULTS.architecture,
                        help="transformer (default) or mamba")
    parser.add_argument("--position_encoding", choices=POSITION_ENCODINGS, default=None,
                        help="Transformer position encoding (default absolute, the assignment's)")
    parser.add_argument("--save_dir", type=Path, default=DEFAULTS.save_dir,
                        help="checkpoints, final weights, curve (default saved_models/induction_task)")
    parser.add_argument("--fig_dir", type=Path, default=DEFAULTS.fig_dir,
                        help="training-curve PDF folder (default figs/induction_task)")
    parser.add_argument("--restart", action="store_true",
                        help="discard ENC_checkpoint.pt in --save_dir and train from scratch (default: resume from it)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from ENC_checkpoint.pt (the default; accepted for compatibility)")
    parser.add_argument("--seed", type=seed_int, default=DEFAULTS.seed,
                        help=f"seed of the weights and the training stream (default {DEFAULTS.seed})")
    parser.add_argument("--val_seed", type=seed_int, default=DEFAULTS.val_seed,
                        help=f"seed of the fixed validation sets (default {DEFAULTS.val_seed})")
    parser.add_argument("--learning_rate", type=positive_float, default=DEFAULTS.learning_rate,
                        help=f"constant Adam learning rate (default {DEFAULTS.learning_rate})")
    parser.add_argument("--batch_size", type=positive_int, default=DEFAULTS.batch_size,
                        help=f"sequences per training step (default {DEFAULTS.batch_size})")
    parser.add_argument("--train_length", type=sequence_length, default=DEFAULTS.train_length,
                        help=f"training sequence length, the last curriculum stage (default {DEFAULTS.train_length})")
    parser.add_argument("--curriculum", type=comma_list(sequence_length, increasing=True), default=DEFAULTS.curriculum,
                        help="shorter lengths to train on first, e.g. 16,32,64,128 (default: none); "
                             "each stage ends when its validation accuracy reaches --target_accuracy")
    parser.add_argument("--max_steps", type=positive_int, default=DEFAULTS.max_steps,
                        help=f"step budget (default {DEFAULTS.max_steps})")
    parser.add_argument("--min_steps", type=non_negative_int, default=DEFAULTS.min_steps,
                        help="train at least this many steps before the target may stop the run (default 0)")
    parser.add_argument("--name", type=model_file_name, default=None,
                        help="file-name stem of the outputs (default: the position encoding, or mamba)")
    parser.add_argument("--snapshot_every", type=non_negative_int, default=DEFAULTS.snapshot_every,
                        help="keep the weights every N steps in ENC_snapshots/ENC_stepSSSSSS.pt (default 0: none)")
    parser.add_argument("--eval_every", type=positive_int, default=DEFAULTS.eval_every,
                        help=f"validate and checkpoint every N steps (default {DEFAULTS.eval_every})")
    parser.add_argument("--n_val", type=int_range(1, MAX_VALIDATION_SEQUENCES), default=DEFAULTS.n_val,
                        help=f"validation sequences at the training length (default {DEFAULTS.n_val})")
    parser.add_argument("--target_accuracy", type=probability, default=DEFAULTS.target_accuracy,
                        help=f"stop at this validation accuracy (default {DEFAULTS.target_accuracy})")
    parser.add_argument("--d_model", type=positive_int, default=DEFAULTS.d_model,
                        help=f"residual width (default {model_defaults.d_model}, both architectures)")
    parser.add_argument("--n_layers", type=positive_int, default=DEFAULTS.n_layers,
                        help=f"layers (default {model_defaults.n_layers}, both architectures)")
    parser.add_argument("--n_heads", type=positive_int, default=None,
                        help=f"Transformer only (default {model_defaults.n_heads})")
    parser.add_argument("--d_mlp", type=positive_int, default=None,
                        help=f"Transformer only (default {model_defaults.d_mlp})")
    parser.add_argument("--d_state", type=positive_int, default=None,
                        help=f"Mamba only: SSM state size (default {mamba_defaults.d_state})")
    parser.add_argument("--expand", type=positive_int, default=None,
                        help=f"Mamba only: d_inner = expand x d_model (default {mamba_defaults.expand})")
    parser.add_argument("--d_conv", type=positive_int, default=None,
                        help=f"Mamba only: convolution width (default {mamba_defaults.d_conv})")
    parser.add_argument("--norm", choices=MAMBA_NORMS, default=None,
                        help=f"Mamba only: block and final norm (default {mamba_defaults.norm}; layernorm: "
                             f"mamba_ssm's first release, [GD23] section 3.4)")
    parser.add_argument("--initialization", choices=MAMBA_INITIALIZATIONS, default=None,
                        help=f"Mamba only: how fresh weights are drawn (default {mamba_defaults.initialization}; "
                             f"mamba_ssm: its first release's)")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=INDUCTION_DTYPES, default=DEFAULTS.dtype,
                        help="compute dtype of the forward pass (bfloat16: autocast, float32 weights; default float32)")
    parser.add_argument("--threads", type=worker_count, default=DEFAULTS.threads,
                        help="torch CPU threads; results are reproducible for a fixed count (default 1)")
    parser.add_argument("--no_figure", action="store_true", help="skip the training-curve PDF")
    parser.add_argument("--no_progress", action="store_true", help="hide the tqdm bar")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def settings_from(args: argparse.Namespace) -> InductionTrainSettings:
    """The run's settings from the parsed flags (architecture defaults still unresolved)."""
    return InductionTrainSettings(
        architecture=args.architecture, position_encoding=args.position_encoding, save_dir=args.save_dir,
        fig_dir=args.fig_dir, seed=args.seed, val_seed=args.val_seed, learning_rate=args.learning_rate,
        batch_size=args.batch_size, train_length=args.train_length, curriculum=tuple(args.curriculum),
        max_steps=args.max_steps, min_steps=args.min_steps, name=args.name, snapshot_every=args.snapshot_every,
        eval_every=args.eval_every, n_val=args.n_val, target_accuracy=args.target_accuracy, d_model=args.d_model,
        n_layers=args.n_layers, n_heads=args.n_heads, d_mlp=args.d_mlp, d_state=args.d_state, expand=args.expand,
        d_conv=args.d_conv, norm=args.norm, initialization=args.initialization, device=args.device, dtype=args.dtype,
        threads=args.threads)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with flag_errors(parser):
        if args.restart and args.resume:
            raise InputError("give --restart (train from scratch) or --resume (the default), not both")
        settings = settings_from(args).resolved()
        setup_logging(args.verbose)
        check_writable_dir(args.save_dir, "--save_dir")
        if not args.no_figure:
            check_writable_dir(args.fig_dir, "--fig_dir")
        plan = check_induction_training(settings, restart=args.restart)
        if args.resume and plan.saved is None and plan.damage is None:
            logger.info("no checkpoint at %s: training from scratch", plan.checkpoint)
        run = run_induction_training(plan, progress=not args.no_progress)
    matplotlib.use("Agg")
    pending = PendingWrites()
    training_outputs(run, pending, figure=not args.no_figure)
    log_written(logger, pending.commit())
    final = run.curve[-1]["val_accuracy"] if run.curve else float("nan")
    logger.info("%s: %d steps, %.0f s wall, val accuracy %.4f, target %s", settings.run_name, run.steps,
                run.wall_seconds, final, "reached" if run.reached_target else "NOT reached")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
