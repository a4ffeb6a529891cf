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
  curve so far, written atomically at every evaluation; ``--resume`` continues
  from it and gives the same weights as an uninterrupted run;
* ``ENC.pt``: the final weights with their configs and metadata;
* ``ENC_training_curve.csv`` and ``ENC_training.json`` (steps, wall time, threads);
* ``figs/induction_task/training_curve_ENC.pdf``.

Example::

    python src/train_induction.py --position_encoding absolute
    python src/train_induction.py --position_encoding rope --resume
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from icl_cmr import induction_task as task
from icl_cmr.cli import (OneLineErrorParser, comma_list, int_range, positive_float, positive_int, probability, run_cli,
                         seed_int, setup_logging)
from icl_cmr.errors import InputError
from icl_cmr.io import atomic_write, load_torch, make_metadata, save_figure, save_json, save_text
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
    parser.add_argument("--resume", action="store_true", help="continue from ENC_checkpoint.pt in --save_dir")
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    enc = args.position_encoding
    checkpoint_path = args.save_dir / f"{enc}_checkpoint.pt"
    task_defaults = task.InductionTaskConfig()
    model_config = TinyTransformerConfig(
        vocab_size=task_defaults.vocab_size, n_layers=args.n_layers, n_heads=args.n_heads,
        d_model=args.d_model, d_mlp=args.d_mlp, position_encoding=enc,
        n_trained_positions=args.train_length, extra_position_seed=args.seed)
    parameters = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                  if k not in ("no_progress", "verbose", "no_figure", "resume")}

    torch.manual_seed(args.seed)
    model = TinyTransformer(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    rng = np.random.default_rng([args.seed, 7])  # the training stream; validation uses val_seed
    stages = args.curriculum + [args.train_length]
    step, stage, curve, wall_before = 0, 0, [], 0.0
    if args.resume:
        if not checkpoint_path.is_file():
            raise InputError(f"--resume: no checkpoint at {checkpoint_path}")
        saved = load_torch(checkpoint_path)
        if saved["model_config"] != model_config.to_dict():
            raise InputError(f"--resume: {checkpoint_path} was trained with {saved['model_config']}, "
                             f"not {model_config.to_dict()}")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["rng_state"]
        if saved["parameters"].get("curriculum", []) != args.curriculum:
            raise InputError(f"--resume: {checkpoint_path} was trained with curriculum "
                             f"{saved['parameters'].get('curriculum', [])}, not {args.curriculum}")
        step, curve, wall_before = saved["step"], list(saved["curve"]), saved["wall_seconds"]
        stage = saved.get("stage", 0)
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
    wall = wall_before + time.perf_counter() - start
    if not curve or curve[-1]["step"] != step:  # e.g. resumed a finished run
        checkpoint(wall)

    final = curve[-1] if curve else {"val_accuracy": float("nan")}
    stage_steps = {int(row["length"]): int(row["step"]) for row in curve}  # last eval at each length
    metadata = make_metadata("train_induction.py", parameters, seed=args.seed, steps=step,
                             last_step_per_length=stage_steps,
                             wall_seconds=wall, threads=args.threads, reached_target=reached,
                             final_val_accuracy=final["val_accuracy"],
                             final_val_length=final.get("length", args.train_length),
                             task_config=task_defaults.to_dict(), model_config=model_config.to_dict())
    model_path = _torch_save(args.save_dir / f"{enc}.pt", {
        "model": model.state_dict(), "model_config": model_config.to_dict(),
        "metadata": {k: v for k, v in metadata.items() if k != "versions"}})
    save_text(args.save_dir / f"{enc}_training_curve.csv", _curve_csv(curve))
    save_json(args.save_dir / f"{enc}_training.json", metadata)
    logger.info("%s: %d steps, %.0f s wall, val accuracy %.4f, target %s; wrote %s",
                enc, step, wall, final["val_accuracy"], "reached" if reached else "NOT reached", model_path)
    if not args.no_figure and curve:
        import matplotlib
        matplotlib.use("Agg")

        fig = task.plot_training_curves(
            {enc: {c: np.array([row[c] for row in curve]) for c in CURVE_COLUMNS}}, args.target_accuracy,
            train_length=args.train_length)
        fig_path = args.fig_dir / f"training_curve_{enc}.pdf"
        save_figure(fig, fig_path)
        logger.info("wrote %s", fig_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
