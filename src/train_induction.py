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
import math
import re
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from icl_cmr.synthetic import task
from icl_cmr.cli.args import (OneLineErrorParser, comma_list, device_arg, int_range, non_negative_int, positive_float,
                              positive_int, probability, run_cli, seed_int, setup_logging)
from icl_cmr.devices import resolve_device
from icl_cmr.errors import CorruptFileError, FileContentError, InputError
from icl_cmr.synthetic.mamba import InductionMambaConfig
from icl_cmr.synthetic.models import (ARCHITECTURES, INDUCTION_DTYPES, build_model, check_memory, fastest_method,
                                      forward_memory_estimate, load_induction_model, model_file_contents,
                                      snapshot_path)
from icl_cmr.files.writing import atomic_write, make_metadata
from icl_cmr.files.reading import load_torch
from icl_cmr.files.outputs import PendingWrites, log_written, portable_path
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.synthetic.transformer import POSITION_ENCODINGS, TinyTransformerConfig

logger = logging.getLogger("train_induction")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAVE_DIR = REPO_ROOT / "saved_models" / "induction_task"
DEFAULT_FIG_DIR = REPO_ROOT / "figs" / "induction_task"
CURVE_COLUMNS = ("step", "length", "train_loss", "train_accuracy", "val_accuracy", "wall_seconds")


#: Shortest sequence of the task: trigger, value, trigger (DESIGN.md section 7).
sequence_length = int_range(3)


def model_file_name(text: str) -> str:
    """argparse type: a file-name stem of letters, digits, ``_``, ``-``, ``.`` (not ``*_checkpoint``, not ``*.pt``)."""
    if (not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text) or text.endswith("_checkpoint")
            or text.endswith(".pt")):
        raise argparse.ArgumentTypeError(f"--name must be a file-name stem: letters, digits, '_', '-' or '.' (not "
                                         f"ending in '_checkpoint' or '.pt'), got {text!r}")
    return text


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to ``NAME.damaged`` (``NAME.damaged.1``, ... when taken); the new path."""
    target = path.with_name(path.name + ".damaged")
    index = 0
    while target.exists():
        index += 1
        target = path.with_name(f"{path.name}.damaged.{index}")
    path.replace(target)
    return target


def build_parser() -> argparse.ArgumentParser:
    defaults = task.InductionTaskConfig()
    model_defaults = TinyTransformerConfig()
    mamba_defaults = InductionMambaConfig()
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="transformer",
                        help="transformer (default) or mamba")
    parser.add_argument("--position_encoding", choices=POSITION_ENCODINGS, default=None,
                        help="Transformer position encoding (default absolute, the assignment's)")
    parser.add_argument("--save_dir", type=Path, default=DEFAULT_SAVE_DIR,
                        help="checkpoints, final weights, curve (default saved_models/induction_task)")
    parser.add_argument("--fig_dir", type=Path, default=DEFAULT_FIG_DIR,
                        help="training-curve PDF folder (default figs/induction_task)")
    parser.add_argument("--restart", action="store_true",
                        help="discard ENC_checkpoint.pt in --save_dir and train from scratch (default: resume from it)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from ENC_checkpoint.pt (the default; accepted for compatibility)")
    parser.add_argument("--seed", type=seed_int, default=defaults.train_seed,
                        help=f"seed of the weights and the training stream (default {defaults.train_seed})")
    parser.add_argument("--val_seed", type=seed_int, default=defaults.val_seed,
                        help=f"seed of the fixed validation sets (default {defaults.val_seed})")
    parser.add_argument("--learning_rate", type=positive_float, default=defaults.learning_rate,
                        help=f"constant Adam learning rate (default {defaults.learning_rate})")
    parser.add_argument("--batch_size", type=positive_int, default=defaults.batch_size,
                        help=f"sequences per training step (default {defaults.batch_size})")
    parser.add_argument("--train_length", type=sequence_length, default=defaults.train_length,
                        help=f"training sequence length, the last curriculum stage (default {defaults.train_length})")
    parser.add_argument("--curriculum", type=comma_list(sequence_length, increasing=True), default=(),
                        help="shorter lengths to train on first, e.g. 16,32,64,128 (default: none); "
                             "each stage ends when its validation accuracy reaches --target_accuracy")
    parser.add_argument("--max_steps", type=positive_int, default=defaults.max_steps,
                        help=f"step budget (default {defaults.max_steps})")
    parser.add_argument("--min_steps", type=non_negative_int, default=0,
                        help="train at least this many steps before the target may stop the run (default 0)")
    parser.add_argument("--name", type=model_file_name, default=None,
                        help="file-name stem of the outputs (default: the position encoding, or mamba)")
    parser.add_argument("--snapshot_every", type=non_negative_int, default=0,
                        help="keep the weights every N steps in ENC_snapshots/ENC_stepSSSSSS.pt (default 0: none)")
    parser.add_argument("--eval_every", type=positive_int, default=defaults.eval_every,
                        help=f"validate and checkpoint every N steps (default {defaults.eval_every})")
    parser.add_argument("--n_val", type=positive_int, default=defaults.n_val_sequences,
                        help=f"validation sequences at the training length (default {defaults.n_val_sequences})")
    parser.add_argument("--target_accuracy", type=probability, default=defaults.target_accuracy,
                        help=f"stop at this validation accuracy (default {defaults.target_accuracy})")
    parser.add_argument("--d_model", type=positive_int, default=model_defaults.d_model,
                        help=f"residual width (default {model_defaults.d_model}, both architectures)")
    parser.add_argument("--n_layers", type=positive_int, default=model_defaults.n_layers,
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
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=INDUCTION_DTYPES, default="float32",
                        help="compute dtype of the forward pass (bfloat16: autocast, float32 weights; default float32)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads; results are reproducible for a fixed count (default 1)")
    parser.add_argument("--no_figure", action="store_true", help="skip the training-curve PDF")
    parser.add_argument("--no_progress", action="store_true", help="hide the tqdm bar")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.restart and args.resume:
        raise InputError("give --restart (train from scratch) or --resume (the default), not both")
    if args.min_steps > args.max_steps:
        raise InputError(f"--min_steps ({args.min_steps}) must be <= --max_steps ({args.max_steps})")
    if args.curriculum and args.curriculum[-1] >= args.train_length:
        raise InputError(f"--curriculum lengths must be below --train_length {args.train_length}, "
                         f"got {','.join(map(str, args.curriculum))}")
    args.curriculum = list(args.curriculum)
    mamba_only = ("d_state", "expand", "d_conv")
    transformer_only = ("position_encoding", "n_heads", "d_mlp")
    wrong = [f"--{name}" for name in (transformer_only if args.architecture == "mamba" else mamba_only)
             if getattr(args, name) is not None]
    if wrong:
        raise InputError(f"{', '.join(wrong)} do{'es' if len(wrong) == 1 else ''} not apply to "
                         f"--architecture {args.architecture}")
    if args.architecture == "transformer":
        model_defaults = TinyTransformerConfig()
        args.position_encoding = args.position_encoding or model_defaults.position_encoding
        args.n_heads = args.n_heads or model_defaults.n_heads
        args.d_mlp = args.d_mlp or model_defaults.d_mlp
        TinyTransformerConfig(d_model=args.d_model, n_heads=args.n_heads, position_encoding=args.position_encoding)
    else:
        mamba_defaults = InductionMambaConfig()
        args.d_state = args.d_state or mamba_defaults.d_state
        args.expand = args.expand or mamba_defaults.expand
        args.d_conv = args.d_conv or mamba_defaults.d_conv
    args.device = resolve_device(args.device)
    return args


def model_config_for(args: argparse.Namespace) -> dict:
    """The model config dict of the run (what the checkpoint and ENC.pt store)."""
    task_defaults = task.InductionTaskConfig()
    if args.architecture == "mamba":
        return InductionMambaConfig(vocab_size=task_defaults.vocab_size, d_model=args.d_model,
                                    n_layers=args.n_layers, d_state=args.d_state, expand=args.expand,
                                    d_conv=args.d_conv).to_dict()
    return TinyTransformerConfig(
        vocab_size=task_defaults.vocab_size, n_layers=args.n_layers, n_heads=args.n_heads,
        d_model=args.d_model, d_mlp=args.d_mlp, position_encoding=args.position_encoding,
        n_trained_positions=args.train_length, extra_position_seed=args.seed).to_dict()


def _torch_save(path: Path, obj: dict) -> Path:
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def load_model(path: "str | Path", device: str = "cpu", dtype: str = "float32"):
    """Load a model from ``ENC.pt`` or ``ENC_checkpoint.pt`` (:func:`icl_cmr.synthetic.models.load_induction_model`)."""
    return load_induction_model(path, device, dtype)


def _curve_csv(curve: Sequence[dict]) -> str:
    lines = [",".join(CURVE_COLUMNS)]
    lines += [",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in CURVE_COLUMNS)
              for row in curve]
    return "\n".join(lines) + "\n"


#: Arguments that may differ between a checkpoint and the run resuming it: the step budget, the thread
#: count and the device (results stay reproducible only for a fixed count and device; a warning says
#: so), and where things go (snapshots included: they do not change the training).
RESUMABLE_CHANGES = ("max_steps", "min_steps", "threads", "device", "name", "save_dir", "fig_dir", "snapshot_every")
#: Values of settings that checkpoints written before the setting existed were trained with.
LEGACY_SETTINGS = {"architecture": "transformer", "dtype": "float32"}
#: Keys every training checkpoint holds.
CHECKPOINT_KEYS = ("model", "optimizer", "rng_state", "step", "stage", "curve", "wall_seconds", "model_config",
                   "parameters")


class DamagedCheckpoint(FileContentError):
    """A checkpoint that cannot be read or does not hold a training state."""


def read_checkpoint(path: Path) -> dict:
    """Load a training checkpoint (:func:`icl_cmr.files.reading.load_torch`: weights only) and check that it holds a
    training state.

    Raises
    ------
    DamagedCheckpoint
        Truncated or garbled file, or one without the keys of a training state.
    icl_cmr.errors.UnsafeFileError
        A file that would run code when loaded: refused in one line, never discarded or overwritten
        silently (``--restart`` trains from scratch and replaces it).
    """
    try:
        saved = load_torch(path)
    except CorruptFileError as err:
        raise DamagedCheckpoint(path, err.problem) from None
    if not isinstance(saved, dict) or any(key not in saved for key in CHECKPOINT_KEYS):
        raise DamagedCheckpoint(path, f"not a training checkpoint (expected keys {', '.join(CHECKPOINT_KEYS)})")
    return saved


def _changed_settings(saved: dict, parameters: dict, model_config: dict) -> List[str]:
    """Names of the settings in which a checkpoint differs from this run (empty: it can be resumed)."""
    changed = ["model_config"] if saved["model_config"] != model_config else []
    stored = saved["parameters"] if isinstance(saved["parameters"], dict) else {}
    for key, value in parameters.items():
        if key not in RESUMABLE_CHANGES and stored.get(key, LEGACY_SETTINGS.get(key)) != value:
            changed.append(key)
    return changed


def check_training_memory(args: argparse.Namespace, model_config: dict) -> None:
    """Refuse, before any work, a training step or validation batch that cannot fit in memory (one line).

    The largest length is ``--train_length`` (the curriculum's stages are shorter); validation runs
    :func:`icl_cmr.synthetic.task.evaluate_accuracy` batches of at most
    :data:`icl_cmr.synthetic.task.VALIDATION_BATCH_SIZE` sequences.
    """
    length = args.train_length
    check_memory(forward_memory_estimate(args.architecture, model_config, args.batch_size, length, training=True),
                 args.device, f"training at --batch_size {args.batch_size} x --train_length {length}")
    validation_batch = min(args.n_val, task.VALIDATION_BATCH_SIZE)
    check_memory(forward_memory_estimate(args.architecture, model_config, validation_batch, length, training=False),
                 args.device, f"validation at {validation_batch} sequences x --train_length {length}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    check_writable_dir(args.save_dir, "--save_dir")
    if not args.no_figure:
        check_writable_dir(args.fig_dir, "--fig_dir")
    torch.set_num_threads(args.threads)
    enc = args.name or (args.position_encoding if args.architecture == "transformer" else "mamba")
    checkpoint_path = args.save_dir / f"{enc}_checkpoint.pt"
    task_defaults = task.InductionTaskConfig()
    model_config = model_config_for(args)
    compute_dtype = getattr(torch, args.dtype)
    check_training_memory(args, model_config)
    parameters = {k: (portable_path(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                  if k not in ("no_progress", "verbose", "no_figure", "resume", "restart") and v is not None}

    saved = None
    if checkpoint_path.is_file() and not args.restart:
        try:
            saved = read_checkpoint(checkpoint_path)
        except DamagedCheckpoint as err:
            damaged = set_aside(checkpoint_path)
            logger.warning("checkpoint %s is damaged (%s); nothing in it can be used: moved it to %s and training "
                           "from scratch", checkpoint_path, err.problem, damaged)
        else:
            changed = _changed_settings(saved, parameters, model_config)
            if changed:
                raise InputError(f"{checkpoint_path} was trained with other settings ({', '.join(changed)}); rerun "
                                 "with those to resume it, or add --restart to train from scratch")
    elif args.resume:
        logger.info("no checkpoint at %s: training from scratch", checkpoint_path)

    def fresh():
        torch.manual_seed(args.seed)
        # Built on the CPU, then moved: the same initial weights on every device.
        model = build_model(args.architecture, model_config).to(args.device)
        return model, torch.optim.Adam(model.parameters(), lr=args.learning_rate), \
            np.random.default_rng([args.seed, 7])  # the training stream; validation uses val_seed

    model, optimizer, rng = fresh()
    stages = args.curriculum + [args.train_length]
    step, stage, curve, wall_before, resumed_from = 0, 0, [], 0.0, None
    if saved is not None:
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            rng.bit_generator.state = saved["rng_state"]
            step, stage, curve = int(saved["step"]), int(saved["stage"]), list(saved["curve"])
            wall_before = float(saved["wall_seconds"])
            if not 0 <= stage < len(stages):
                raise ValueError(f"stage {stage} outside the curriculum")
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            damaged = set_aside(checkpoint_path)
            logger.warning("checkpoint %s does not fit this model (%s); moved it to %s and training from scratch",
                           checkpoint_path, err, damaged)
            model, optimizer, rng = fresh()
            step, stage, curve, wall_before = 0, 0, [], 0.0
        else:
            resumed_from = step
            for key in ("threads", "device"):
                before = saved["parameters"].get(key, "cpu" if key == "device" else None)
                if before != getattr(args, key):
                    logger.warning("resuming with %s %s; the checkpoint was trained with %s, so the weights may "
                                   "differ in the last digits from an uninterrupted run", key, getattr(args, key),
                                   before)
            logger.info("resumed %s from step %d (length %d)", checkpoint_path, step, stages[stage])

    def checkpoint(wall: float) -> None:
        _torch_save(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng_state": rng.bit_generator.state, "step": step, "stage": stage, "curve": curve,
            "wall_seconds": wall, "model_config": model_config, "architecture": args.architecture,
            "parameters": parameters})

    def snapshot() -> None:
        metadata = make_metadata("train_induction.py", parameters, seed=args.seed, run=enc, step=step,
                                 train_length=stages[stage], architecture=args.architecture)
        metadata.pop("versions")   # as in ENC.pt
        _torch_save(snapshot_path(args.save_dir, enc, step),
                    model_file_contents(model, args.architecture, model_config, metadata))

    reached = (bool(curve) and stage == len(stages) - 1 and curve[-1]["length"] == args.train_length
               and curve[-1]["val_accuracy"] >= args.target_accuracy)
    stop = reached and step >= args.min_steps
    # The Transformer validates on its blocked path (the one it trains on), Mamba on its chunked scan.
    validation_method = "blocked" if args.architecture == "transformer" else fastest_method(model)
    start = time.perf_counter()
    losses, accuracies = [], []
    model.train()
    bar = tqdm(total=args.max_steps, initial=step, disable=args.no_progress, desc=f"train {enc}")
    while step < args.max_steps and not stop:
        length = stages[stage]
        loss, accuracy = task.training_step(model, optimizer, rng, args.batch_size, length,
                                            task_defaults.vocab_size, task_defaults.trigger_token, compute_dtype)
        if not math.isfinite(loss):
            bar.close()
            kept = f"; {checkpoint_path} (step {curve[-1]['step']}) is kept" if curve else ""
            raise InputError(f"training diverged: the loss is {loss} at step {step + 1} (length {length}, "
                             f"--learning_rate {args.learning_rate:g}); nothing was written{kept}. Rerun with a "
                             "smaller --learning_rate and --restart")
        step += 1
        if args.snapshot_every and step % args.snapshot_every == 0:
            snapshot()
        losses.append(loss)
        accuracies.append(accuracy)
        bar.update(1)
        if step % args.eval_every == 0 or step == args.max_steps:
            model.eval()
            correct, _ = task.evaluate_accuracy(model, length, args.n_val, args.val_seed,
                                                method=validation_method, vocab_size=task_defaults.vocab_size,
                                                trigger_token=task_defaults.trigger_token,
                                                compute_dtype=compute_dtype)
            model.train()
            wall = wall_before + time.perf_counter() - start
            curve.append({"step": step, "length": length, "train_loss": float(np.mean(losses)),
                          "train_accuracy": float(np.mean(accuracies)),
                          "val_accuracy": correct / args.n_val, "wall_seconds": wall})
            losses, accuracies = [], []
            passed = curve[-1]["val_accuracy"] >= args.target_accuracy
            bar.set_postfix(L=length, loss=f"{curve[-1]['train_loss']:.3f}", val=f"{curve[-1]['val_accuracy']:.3f}")
            logger.info("step %d: train loss %.4f, train acc %.3f, val acc at %d: %.4f (%.0f s)", step,
                        curve[-1]["train_loss"], curve[-1]["train_accuracy"], length,
                        curve[-1]["val_accuracy"], wall)
            if passed and stage < len(stages) - 1:
                stage += 1
                logger.info("curriculum: length %d passed at step %d; now training at %d",
                            length, step, stages[stage])
            reached = passed and length == args.train_length
            stop = reached and step >= args.min_steps
            checkpoint(wall)
    bar.close()
    session = time.perf_counter() - start
    wall = wall_before + session
    if not curve or curve[-1]["step"] != step:  # e.g. resumed a finished run
        checkpoint(wall)

    final = curve[-1] if curve else {"val_accuracy": float("nan")}
    stage_steps = {int(row["length"]): int(row["step"]) for row in curve}  # last eval at each length
    first_at_target = next((int(row["step"]) for row in curve if row["length"] == args.train_length
                            and row["val_accuracy"] >= args.target_accuracy), None)
    metadata = make_metadata("train_induction.py", parameters, seed=args.seed, steps=step,
                             last_step_per_length=stage_steps, first_step_at_target=first_at_target,
                             wall_seconds=wall, wall_time_this_session_s=session, resumed=resumed_from is not None,
                             resumed_from_step=resumed_from, threads=args.threads, reached_target=reached,
                             final_val_accuracy=final["val_accuracy"],
                             final_val_length=final.get("length", args.train_length),
                             device=args.device, dtype=args.dtype, architecture=args.architecture,
                             model_config=model_config,
                             task={"vocab_size": task_defaults.vocab_size,
                                   "trigger_token": task_defaults.trigger_token})
    pending = PendingWrites()
    model_path = args.save_dir / f"{enc}.pt"
    final_state = model_file_contents(model, args.architecture, model_config,
                                      {k: v for k, v in metadata.items() if k != "versions"})
    pending.add(model_path, lambda p: _torch_save(p, final_state))
    pending.text(args.save_dir / f"{enc}_training_curve.csv", _curve_csv(curve))
    pending.json(args.save_dir / f"{enc}_training.json", metadata)
    if not args.no_figure and curve:
        import matplotlib
        matplotlib.use("Agg")

        fig = task.plot_training_curves(
            {enc: {c: np.array([row[c] for row in curve]) for c in CURVE_COLUMNS}}, args.target_accuracy,
            train_length=args.train_length)
        pending.figure(args.fig_dir / f"training_curve_{enc}.pdf", fig)
    log_written(logger, pending.commit())
    logger.info("%s: %d steps, %.0f s wall, val accuracy %.4f, target %s", enc, step, wall, final["val_accuracy"],
                "reached" if reached else "NOT reached")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
