"""Train the 2-layer Transformer on the synthetic induction-heads task (DESIGN.md section 7).

Adam with a constant learning rate, batch 8, a fresh batch of length-256 sequences
every step, loss and accuracy at the last position only. Every ``--eval_every``
steps the model is scored on the fixed validation set at length 256; training
stops when that accuracy reaches ``--target_accuracy`` (default 0.99) or after
``--max_steps``.

``--curriculum 16,32,64,128`` trains on shorter sequences first: each stage's
batches have that stage's length, and the next stage starts once validation
accuracy at the stage's length reaches ``--target_accuracy``; the last stage is
always ``--train_length`` and only it can stop the run. Trained straight at 256
the default model stayed at chance for 30,000 steps (see the README), so the
shipped model uses this curriculum. The position table always has
``--train_length`` rows; rows past the current stage's length simply receive no
gradient yet.

Writes into ``--save_dir`` (default ``saved_models/induction_task/``), for
encoding ENC:

* ``ENC_checkpoint.pt``: weights, Adam state, the data stream's RNG state and the
  curve so far, written atomically at every evaluation. Rerunning the same command
  continues from it (the default, as for every long job of this project) and gives the
  same weights as an uninterrupted run; ``--restart`` starts over, ``--resume`` is
  accepted and changes nothing. Settings other than the checkpoint's are refused
  (``--max_steps`` and ``--threads`` may change). A checkpoint that cannot be read or
  does not hold a training state (truncated, garbled) cannot be salvaged: it is moved
  to ``ENC_checkpoint.pt.damaged`` with a warning and training starts over;
* ``ENC.pt``: the final weights with their configs and metadata;
* ``ENC_training_curve.csv`` and ``ENC_training.json`` (steps, wall time, threads);
* ``figs/induction_task/training_curve_ENC.pdf``.

Example::

    python src/train_induction.py --position_encoding absolute
    python src/train_induction.py --position_encoding rope    # again: resumes where it stopped
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from icl_cmr import induction_task as task
from icl_cmr.cli import (OneLineErrorParser, comma_list, int_range, positive_float, positive_int, probability, run_cli,
                         seed_int, setup_logging)
from icl_cmr.errors import CorruptFileError, FileContentError, InputError
from icl_cmr.io import atomic_write, load_torch, make_metadata
from icl_cmr.outputs import PendingWrites, check_writable_dir, portable_path
from icl_cmr.tiny_transformer import POSITION_ENCODINGS, TinyTransformer, TinyTransformerConfig

logger = logging.getLogger("train_induction")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAVE_DIR = REPO_ROOT / "saved_models" / "induction_task"
DEFAULT_FIG_DIR = REPO_ROOT / "figs" / "induction_task"
CURVE_COLUMNS = ("step", "length", "train_loss", "train_accuracy", "val_accuracy", "wall_seconds")


#: Shortest sequence of the task: trigger, value, trigger (DESIGN.md section 7).
sequence_length = int_range(3)


def build_parser() -> argparse.ArgumentParser:
    defaults = task.InductionTaskConfig()
    model_defaults = TinyTransformerConfig()
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--position_encoding", choices=POSITION_ENCODINGS, default="absolute",
                        help="position encoding (default absolute, the assignment's)")
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
    parser.add_argument("--batch_size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--train_length", type=sequence_length, default=defaults.train_length)
    parser.add_argument("--curriculum", type=comma_list(sequence_length, increasing=True), default=(),
                        help="shorter lengths to train on first, e.g. 16,32,64,128 (default: none); "
                             "each stage ends when its validation accuracy reaches --target_accuracy")
    parser.add_argument("--max_steps", type=positive_int, default=defaults.max_steps,
                        help=f"step budget (default {defaults.max_steps})")
    parser.add_argument("--eval_every", type=positive_int, default=defaults.eval_every,
                        help=f"validate and checkpoint every N steps (default {defaults.eval_every})")
    parser.add_argument("--n_val", type=positive_int, default=defaults.n_val_sequences,
                        help=f"validation sequences at the training length (default {defaults.n_val_sequences})")
    parser.add_argument("--target_accuracy", type=probability, default=defaults.target_accuracy,
                        help=f"stop at this validation accuracy (default {defaults.target_accuracy})")
    parser.add_argument("--d_model", type=positive_int, default=model_defaults.d_model)
    parser.add_argument("--n_heads", type=positive_int, default=model_defaults.n_heads)
    parser.add_argument("--n_layers", type=positive_int, default=model_defaults.n_layers)
    parser.add_argument("--d_mlp", type=positive_int, default=model_defaults.d_mlp)
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
    if args.curriculum and args.curriculum[-1] >= args.train_length:
        raise InputError(f"--curriculum lengths must be below --train_length {args.train_length}, "
                         f"got {','.join(map(str, args.curriculum))}")
    args.curriculum = list(args.curriculum)
    return args


def _torch_save(path: Path, obj: dict) -> Path:
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def load_model(path: "str | Path") -> TinyTransformer:
    """Load a model from ``ENC.pt`` or ``ENC_checkpoint.pt`` (weights only, safe unpickling)."""
    path = Path(path)
    try:
        saved = load_torch(path)
        model = TinyTransformer(TinyTransformerConfig(**saved["model_config"]))
        model.load_state_dict(saved["model"])
    except (FileNotFoundError, InputError):
        raise
    except (KeyError, TypeError, RuntimeError, EOFError, ValueError) as err:
        raise InputError(f"cannot load an induction-task model from {path}: {err}") from None
    model.eval()
    return model


def _curve_csv(curve: Sequence[dict]) -> str:
    lines = [",".join(CURVE_COLUMNS)]
    lines += [",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in CURVE_COLUMNS)
              for row in curve]
    return "\n".join(lines) + "\n"


#: Arguments that may differ between a checkpoint and the run resuming it: the step budget, the thread
#: count (results stay reproducible only for a fixed count; a warning says so), and where things go.
RESUMABLE_CHANGES = ("max_steps", "threads", "save_dir", "fig_dir")
#: Keys every training checkpoint holds.
CHECKPOINT_KEYS = ("model", "optimizer", "rng_state", "step", "stage", "curve", "wall_seconds", "model_config",
                   "parameters")


class DamagedCheckpoint(FileContentError):
    """A checkpoint that cannot be read or does not hold a training state."""


def read_checkpoint(path: Path) -> dict:
    """Load a training checkpoint (:func:`icl_cmr.io.load_torch`: weights only) and check that it holds a
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
        if key not in RESUMABLE_CHANGES and stored.get(key) != value:
            changed.append(key)
    return changed


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    check_writable_dir(args.save_dir, "--save_dir")
    if not args.no_figure:
        check_writable_dir(args.fig_dir, "--fig_dir")
    torch.set_num_threads(args.threads)
    enc = args.position_encoding
    checkpoint_path = args.save_dir / f"{enc}_checkpoint.pt"
    task_defaults = task.InductionTaskConfig()
    model_config = TinyTransformerConfig(
        vocab_size=task_defaults.vocab_size, n_layers=args.n_layers, n_heads=args.n_heads,
        d_model=args.d_model, d_mlp=args.d_mlp, position_encoding=enc,
        n_trained_positions=args.train_length, extra_position_seed=args.seed)
    parameters = {k: (portable_path(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                  if k not in ("no_progress", "verbose", "no_figure", "resume", "restart")}

    saved = None
    if checkpoint_path.is_file() and not args.restart:
        try:
            saved = read_checkpoint(checkpoint_path)
        except DamagedCheckpoint as err:
            damaged = checkpoint_path.with_name(checkpoint_path.name + ".damaged")
            checkpoint_path.replace(damaged)
            logger.warning("checkpoint %s is damaged (%s); nothing in it can be used: moved it to %s and training "
                           "from scratch", checkpoint_path, err.problem, damaged)
        else:
            changed = _changed_settings(saved, parameters, model_config.to_dict())
            if changed:
                raise InputError(f"{checkpoint_path} was trained with other settings ({', '.join(changed)}); rerun "
                                 "with those to resume it, or add --restart to train from scratch")
    elif args.resume:
        logger.info("no checkpoint at %s: training from scratch", checkpoint_path)

    def fresh():
        torch.manual_seed(args.seed)
        model = TinyTransformer(model_config)
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
            damaged = checkpoint_path.with_name(checkpoint_path.name + ".damaged")
            checkpoint_path.replace(damaged)
            logger.warning("checkpoint %s does not fit this model (%s); moved it to %s and training from scratch",
                           checkpoint_path, err, damaged)
            model, optimizer, rng = fresh()
            step, stage, curve, wall_before = 0, 0, [], 0.0
        else:
            resumed_from = step
            if saved["parameters"].get("threads") != args.threads:
                logger.warning("resuming with %d threads; the checkpoint was trained with %s, so the weights may "
                               "differ in the last digits from an uninterrupted run", args.threads,
                               saved["parameters"].get("threads"))
            logger.info("resumed %s from step %d (length %d)", checkpoint_path, step, stages[stage])

    def checkpoint(wall: float) -> None:
        _torch_save(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng_state": rng.bit_generator.state, "step": step, "stage": stage, "curve": curve,
            "wall_seconds": wall, "model_config": model_config.to_dict(), "parameters": parameters})

    reached = (bool(curve) and stage == len(stages) - 1 and curve[-1]["length"] == args.train_length
               and curve[-1]["val_accuracy"] >= args.target_accuracy)
    start = time.perf_counter()
    losses, accuracies = [], []
    model.train()
    bar = tqdm(total=args.max_steps, initial=step, disable=args.no_progress, desc=f"train {enc}")
    while step < args.max_steps and not reached:
        length = stages[stage]
        loss, accuracy = task.training_step(model, optimizer, rng, args.batch_size, length,
                                            task_defaults.vocab_size, task_defaults.trigger_token)
        step += 1
        losses.append(loss)
        accuracies.append(accuracy)
        bar.update(1)
        if step % args.eval_every == 0 or step == args.max_steps:
            model.eval()
            correct, _ = task.evaluate_accuracy(model, length, args.n_val, args.val_seed,
                                                method="blocked", vocab_size=task_defaults.vocab_size,
                                                trigger_token=task_defaults.trigger_token)
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
            checkpoint(wall)
    bar.close()
    session = time.perf_counter() - start
    wall = wall_before + session
    if not curve or curve[-1]["step"] != step:  # e.g. resumed a finished run
        checkpoint(wall)

    final = curve[-1] if curve else {"val_accuracy": float("nan")}
    stage_steps = {int(row["length"]): int(row["step"]) for row in curve}  # last eval at each length
    metadata = make_metadata("train_induction.py", parameters, seed=args.seed, steps=step,
                             last_step_per_length=stage_steps,
                             wall_seconds=wall, wall_time_this_session_s=session, resumed=resumed_from is not None,
                             resumed_from_step=resumed_from, threads=args.threads, reached_target=reached,
                             final_val_accuracy=final["val_accuracy"],
                             final_val_length=final.get("length", args.train_length),
                             task_config=task_defaults.to_dict(), model_config=model_config.to_dict())
    pending = PendingWrites()
    model_path = args.save_dir / f"{enc}.pt"
    final_state = {"model": model.state_dict(), "model_config": model_config.to_dict(),
                   "metadata": {k: v for k, v in metadata.items() if k != "versions"}}
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
    for path in pending.commit():
        logger.info("wrote %s", path)
    logger.info("%s: %d steps, %.0f s wall, val accuracy %.4f, target %s", enc, step, wall, final["val_accuracy"],
                "reached" if reached else "NOT reached")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
