"""Train the bundled small language model on the Python standard library (DESIGN.md section 9).

Writes ``saved_models/toy_lm/`` (or ``--save_dir``): the Hugging Face model
(``config.json``, ``model.safetensors``), its byte-level BPE tokenizer, the
training log (CSV and JSON with all hyper-parameters, corpus fingerprint,
seed, thread count, wall time), ``frequent_token_ids.json`` (ids seen >= 100
times in training, for head-score prompts) and ``loss_curve.pdf``. The folder
is filled under a temporary name and renamed at the end, so an interrupted run
never leaves a half model under the final name.

Re-running with the same seed, ``--threads``, Python (hence stdlib) and
package versions reproduces the weights bit for bit.

Example::

    python src/train_toy_lm.py      # the shipped model: stops early at step 3350 of a 4000-step schedule
    python src/train_toy_lm.py --max_steps 20 --save_dir /tmp/toy   # smoke test
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import matplotlib
import numpy as np
import torch

from icl_cmr.cli.args import (OneLineErrorParser, int_range, positive_int, probability, run_cli, seed_int,
                              setup_logging, worker_count)
from icl_cmr.cli.flags import flag_errors
from icl_cmr.figures.toy_lm import plot_training_run
from icl_cmr.files.memory import check_dataclass_memory
from icl_cmr.files.folders import check_writable_dir, make_folders
from icl_cmr.files.outputs import PendingWrites, portable_path
from icl_cmr.files.reading import load_json
from icl_cmr.files.writing import make_metadata, save_figure, save_json, save_text
from icl_cmr.toy_lm.config import ToyLMConfig, config_from_saved
from icl_cmr.toy_lm.corpus import held_out_texts
from icl_cmr.toy_lm.evaluation import describe_evaluation, evaluate_model_dir
from icl_cmr.toy_lm.training_run import (MEMORY_SETTINGS, ToyLMTrainingSettings, prepare_training_corpus,
                                         train_on_corpus, training_memory_bytes, training_summary)

logger = logging.getLogger("train_toy_lm")

DEFAULT_SAVE_DIR = Path(__file__).resolve().parents[1] / "saved_models" / "toy_lm"

DEFAULTS = ToyLMTrainingSettings()


def build_parser() -> argparse.ArgumentParser:
    model_defaults = ToyLMConfig()  # the limits of --n_ctx come from the model's own settings
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save_dir", type=Path, default=DEFAULT_SAVE_DIR,
                        help="output folder (default saved_models/toy_lm)")
    parser.add_argument("--seed", type=seed_int, default=DEFAULTS.seed, help="random seed (default 0)")
    parser.add_argument("--threads", type=worker_count, default=DEFAULTS.threads,
                        help="torch CPU threads; part of what makes a run reproducible (default 1, as the "
                             "shipped model; on a busy machine one thread also ran 2-4x faster than two)")
    parser.add_argument("--max_steps", type=positive_int, default=DEFAULTS.max_steps,
                        help=f"optimiser steps; the cosine schedule spans them (default {DEFAULTS.max_steps})")
    parser.add_argument("--eval_every", type=positive_int, default=DEFAULTS.eval_every,
                        help=f"log loss and matching score every N steps (default {DEFAULTS.eval_every})")
    parser.add_argument("--stop_score", type=probability, default=DEFAULTS.stop_score,
                        help="stop early once the best head's matching score is >= this at --stop_patience "
                             f"consecutive evaluations (default {DEFAULTS.stop_score})")
    parser.add_argument("--stop_patience", type=positive_int, default=DEFAULTS.stop_patience,
                        help=f"see --stop_score (default {DEFAULTS.stop_patience})")
    parser.add_argument("--no_early_stop", action="store_true", help="train all --max_steps steps")
    parser.add_argument("--stop_after_steps", type=positive_int, default=None,
                        help="halt after N steps; the learning-rate schedule still spans --max_steps "
                             "(reproduces a run that was cut short)")
    parser.add_argument("--snapshot_dir", type=Path, default=None,
                        help="after each evaluation, save the model so far and the log there "
                             "(for watching a long run; not needed to reproduce it)")
    smallest = model_defaults.smallest_n_ctx()
    parser.add_argument("--n_ctx", default=DEFAULTS.n_ctx,
                        type=int_range(smallest, description=f"an integer >= {smallest} (a training row holds a "
                                       f"copied span of up to {model_defaults.copy_span_max} tokens twice; a matching-"
                                       f"score prompt is BOS + 2 x {model_defaults.monitor_block_len} tokens)"),
                        help=f"context length = n_positions, at least {smallest} (default {DEFAULTS.n_ctx})")
    parser.add_argument("--icl_late_index", type=positive_int, default=None,
                        help="late position of the ICL score (default n_ctx - 6)")
    parser.add_argument("--vocab_size", default=DEFAULTS.vocab_size,
                        type=int_range(258, description="an integer >= 258 (256 bytes, the special token and at "
                                                        "least one merge)"),
                        help=f"BPE vocabulary size (default {DEFAULTS.vocab_size})")
    parser.add_argument("--batch_size", type=positive_int, default=DEFAULTS.batch_size)
    parser.add_argument("--stdlib_dir", type=Path, default=None,
                        help="standard-library folder to read (default: this interpreter's)")
    parser.add_argument("--max_files", type=positive_int, default=None,
                        help="use only the first N training files (smoke tests)")
    parser.add_argument("--evaluate_only", action="store_true",
                        help="do not train: re-evaluate the model in --save_dir (ICL score, matching scores "
                             "through transformers and TransformerLens) and store it in its training_log.json")
    parser.add_argument("--no_progress", action="store_true", help="hide the tqdm bar")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _replace_dir(tmp_dir: Path, target: Path) -> None:
    """Move the finished temp folder to ``target``, replacing an older model there."""
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, backup)
    os.replace(tmp_dir, target)
    if backup is not None:
        shutil.rmtree(backup)


def _loss_curve(log: list, seed: int, steps: int, evaluation: dict):
    matplotlib.use("Agg")  # a file, never a window
    return plot_training_run(log, seed, steps, evaluation)


def evaluate_only(model_dir: Path, root: Optional[Path]) -> int:
    """Re-evaluate a saved model and store the result in its ``training_log.json`` (atomic rewrite)."""
    log_path = model_dir / "training_log.json"
    saved = load_json(log_path)
    metadata = saved["metadata"]
    config = config_from_saved(metadata["parameters"])
    frequent = np.asarray(load_json(model_dir / "frequent_token_ids.json")["token_ids"])
    held_texts = [text for _, text in held_out_texts(config, root)]
    evaluation = evaluate_model_dir(model_dir, config, metadata["seed"], held_texts, frequent)
    logger.info(describe_evaluation(evaluation, config))
    metadata["evaluation"] = evaluation
    outputs = PendingWrites()  # the log and its figure together, or neither
    outputs.json(log_path, saved)
    outputs.figure(model_dir / "loss_curve.pdf", _loss_curve(saved["log"], metadata["seed"],
                                                             metadata["summary"]["steps"], evaluation))
    outputs.commit()
    logger.info("wrote the evaluation into %s and redrew %s", log_path, model_dir / "loss_curve.pdf")
    return 0


def _settings(args: argparse.Namespace) -> ToyLMTrainingSettings:
    return ToyLMTrainingSettings(
        seed=args.seed, threads=args.threads, max_steps=args.max_steps, eval_every=args.eval_every,
        stop_score=None if args.no_early_stop else args.stop_score, stop_patience=args.stop_patience,
        stop_after_steps=args.stop_after_steps, n_ctx=args.n_ctx, icl_late_index=args.icl_late_index,
        vocab_size=args.vocab_size, batch_size=args.batch_size, stdlib_dir=args.stdlib_dir, max_files=args.max_files)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, progress=not args.no_progress)
    torch.set_num_threads(args.threads)
    save_dir = args.save_dir.resolve()
    settings = _settings(args)
    if args.evaluate_only:
        if not (save_dir / "training_log.json").is_file():
            raise FileNotFoundError(f"no trained model in {save_dir} (training_log.json missing)")
        return evaluate_only(save_dir, settings.corpus_root())

    with flag_errors(parser):
        config = settings.config()
        check_dataclass_memory(training_memory_bytes, config, MEMORY_SETTINGS, ToyLMConfig(), "cpu",
                               "a training step ({values})")
        check_writable_dir(save_dir.parent, "--save_dir")
        if args.snapshot_dir is not None:
            check_writable_dir(args.snapshot_dir, "--snapshot_dir")  # before the corpus and tokenizer work
        wall_start = time.perf_counter()
        corpus = prepare_training_corpus(settings, config)

    snapshot_rows: list = []
    if args.snapshot_dir is not None:
        corpus.tokenizer.save_pretrained(args.snapshot_dir)

    def snapshot(row: dict, model) -> None:
        snapshot_rows.append(row)
        if args.snapshot_dir is not None:
            model.save_pretrained(args.snapshot_dir, safe_serialization=True)
            save_json(Path(args.snapshot_dir) / "training_log_so_far.json", snapshot_rows)

    result = train_on_corpus(settings, config, corpus, progress=snapshot, show_progress=not args.no_progress)
    train_wall = time.perf_counter() - wall_start
    summary = training_summary(settings, config, corpus, result, train_wall)
    summary["stdlib_dir"] = portable_path(corpus.stdlib_dir)  # no machine path in a shipped file

    make_folders(save_dir.parent)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{save_dir.name}.tmp-", dir=save_dir.parent))
    try:
        result.model.save_pretrained(tmp_dir, safe_serialization=True)
        corpus.tokenizer.save_pretrained(tmp_dir)
        save_json(tmp_dir / "frequent_token_ids.json", {
            "min_count": config.frequent_min_count, "token_ids": corpus.frequent_ids.tolist(),
            "training_token_counts": corpus.token_counts.tolist(),
            "note": "ids seen >= min_count times in the training tokens (special token excluded); "
                    "draw head-score prompt tokens from token_ids",
        })
        evaluation = evaluate_model_dir(tmp_dir, config, args.seed, corpus.held_out_texts(), corpus.frequent_ids)
        logger.info(describe_evaluation(evaluation, config))
        metadata = make_metadata("train_toy_lm.py", config.to_dict(), seed=args.seed, summary=summary,
                                 evaluation=evaluation)
        save_json(tmp_dir / "training_log.json", {"metadata": metadata, "log": result.log})
        columns = list(result.log[0])
        lines = [",".join(columns)] + [",".join(str(row[c]) for c in columns) for row in result.log]
        save_text(tmp_dir / "training_log.csv", "\n".join(lines) + "\n")
        save_figure(_loss_curve(result.log, args.seed, result.steps, evaluation), tmp_dir / "loss_curve.pdf")
        os.chmod(tmp_dir, 0o755)
        _replace_dir(tmp_dir, save_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info("saved model, tokenizer, log and loss curve to %s (%.0f s of training, %d steps)",
                save_dir, train_wall, result.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
