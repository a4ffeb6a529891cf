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
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from icl_cmr.toy_lm import lm as toy_lm
from icl_cmr.cli.args import OneLineErrorParser, int_range, positive_int, probability, run_cli, seed_int, setup_logging
from icl_cmr.errors import InputError
from icl_cmr.files.reading import load_json
from icl_cmr.files.writing import make_metadata, save_figure, save_json, save_text
from icl_cmr.files.outputs import PendingWrites, portable_path
from icl_cmr.files.folders import check_writable_dir

logger = logging.getLogger("train_toy_lm")

DEFAULT_SAVE_DIR = Path(__file__).resolve().parents[1] / "saved_models" / "toy_lm"

#: Prompts of the final matching-score check (ours; 32 prompts x 99 queries per head).
EVAL_PROMPTS = 32


def build_parser() -> argparse.ArgumentParser:
    defaults = toy_lm.ToyLMConfig()
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save_dir", type=Path, default=DEFAULT_SAVE_DIR,
                        help="output folder (default saved_models/toy_lm)")
    parser.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads; part of what makes a run reproducible (default 1, as the "
                             "shipped model; on a busy machine one thread also ran 2-4x faster than two)")
    parser.add_argument("--max_steps", type=positive_int, default=defaults.max_steps,
                        help=f"optimiser steps; the cosine schedule spans them (default {defaults.max_steps})")
    parser.add_argument("--eval_every", type=positive_int, default=defaults.eval_every,
                        help=f"log loss and matching score every N steps (default {defaults.eval_every})")
    parser.add_argument("--stop_score", type=probability, default=defaults.stop_score,
                        help="stop early once the best head's matching score is >= this at --stop_patience "
                             f"consecutive evaluations (default {defaults.stop_score})")
    parser.add_argument("--stop_patience", type=positive_int, default=defaults.stop_patience,
                        help=f"see --stop_score (default {defaults.stop_patience})")
    parser.add_argument("--no_early_stop", action="store_true", help="train all --max_steps steps")
    parser.add_argument("--stop_after_steps", type=positive_int, default=None,
                        help="halt after N steps; the learning-rate schedule still spans --max_steps "
                             "(reproduces a run that was cut short)")
    parser.add_argument("--snapshot_dir", type=Path, default=None,
                        help="after each evaluation, save the model so far and the log there "
                             "(for watching a long run; not needed to reproduce it)")
    smallest = defaults.smallest_n_ctx()
    parser.add_argument("--n_ctx", default=defaults.n_ctx,
                        type=int_range(smallest, description=f"an integer >= {smallest} (a training row holds a "
                                       f"copied span of up to {defaults.copy_span_max} tokens twice; a matching-"
                                       f"score prompt is BOS + 2 x {defaults.monitor_block_len} tokens)"),
                        help=f"context length = n_positions, at least {smallest} (default {defaults.n_ctx})")
    parser.add_argument("--icl_late_index", type=positive_int, default=None,
                        help="late position of the ICL score (default n_ctx - 6)")
    parser.add_argument("--vocab_size", default=defaults.vocab_size,
                        type=int_range(258, description="an integer >= 258 (256 bytes, the special token and at "
                                                        "least one merge)"),
                        help=f"BPE vocabulary size (default {defaults.vocab_size})")
    parser.add_argument("--batch_size", type=positive_int, default=defaults.batch_size)
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


def evaluate_model_dir(model_dir: Path, config: toy_lm.ToyLMConfig, seed: int, held_texts: Sequence[str],
                       frequent: np.ndarray) -> dict:
    """Held-out ICL score and matching scores of a saved model, through transformers AND TransformerLens.

    The matching scores use a fresh batch of ``EVAL_PROMPTS`` repeated-token
    prompts (seed ``[seed, 3]``, ids from ``frequent``), scored once from
    Hugging Face ``output_attentions`` and once from TransformerLens's
    ``hook_pattern`` after ``TransformerBridge.boot_transformers(model_dir)``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens.model_bridge import TransformerBridge

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
    windows = toy_lm.held_out_windows(tokenizer, held_texts, config.n_ctx)
    losses = toy_lm.per_token_loss(model, windows)
    icl = toy_lm.icl_score(losses, config.icl_early_index, config.icl_late_index)
    prompts = torch.from_numpy(toy_lm.repeated_random_prompts(
        frequent, EVAL_PROMPTS, config.monitor_block_len, tokenizer.bos_token_id, np.random.default_rng([seed, 3])))
    hf_scores = toy_lm.induction_matching_score_hf(model, prompts, config.monitor_block_len, offset=1)
    bridge = TransformerBridge.boot_transformers(str(model_dir), device="cpu")
    tl_scores = toy_lm.induction_matching_score_tl(bridge, prompts, config.monitor_block_len, offset=1)
    best = np.unravel_index(np.argmax(tl_scores), tl_scores.shape)
    return {
        "eval_prompts": EVAL_PROMPTS, "eval_block_len": config.monitor_block_len,
        "matching_scores_transformer_lens": tl_scores.tolist(),
        "matching_scores_hf": hf_scores.tolist(),
        "max_abs_diff_tl_vs_hf": float(np.abs(tl_scores - hf_scores).max()),
        "best_head": f"L{best[0]}H{best[1]}", "best_matching_score": float(tl_scores[best]),
        "held_out_windows": int(windows.shape[0]),
        "held_out_mean_loss": float(losses.mean()),
        "icl_positions": [config.icl_early_index, config.icl_late_index],
        "icl_score_mean": float(icl.mean()),
        "icl_score_sem": float(icl.std(ddof=1) / np.sqrt(icl.size)) if icl.size > 1 else float("nan"),
        "icl_score_fraction_negative": float((icl < 0).mean()),
        "loss_at_early_mean": float(losses[:, config.icl_early_index].mean()),
        "loss_at_late_mean": float(losses[:, config.icl_late_index].mean()),
    }


def _log_evaluation(evaluation: dict, config: toy_lm.ToyLMConfig) -> None:
    logger.info("TransformerLens check: best head %s matching score %.3f (max |TL - HF| %.1e); held-out ICL "
                "score loss[%d] - loss[%d] = %.3f +- %.3f (SEM) over %d windows", evaluation["best_head"],
                evaluation["best_matching_score"], evaluation["max_abs_diff_tl_vs_hf"], config.icl_late_index,
                config.icl_early_index, evaluation["icl_score_mean"], evaluation["icl_score_sem"],
                evaluation["held_out_windows"])


def _config_from_saved(parameters: dict) -> toy_lm.ToyLMConfig:
    fields = {f.name for f in dataclasses.fields(toy_lm.ToyLMConfig)}
    values = {key: value for key, value in parameters.items() if key in fields}
    values["adam_betas"] = tuple(values.get("adam_betas", toy_lm.ToyLMConfig.adam_betas))
    return toy_lm.ToyLMConfig(**values)


def evaluate_only(model_dir: Path, root: Path) -> int:
    """Re-evaluate a saved model and store the result in its ``training_log.json`` (atomic rewrite)."""
    log_path = model_dir / "training_log.json"
    saved = load_json(log_path)
    metadata = saved["metadata"]
    config = _config_from_saved(metadata["parameters"])
    frequent = np.asarray(load_json(model_dir / "frequent_token_ids.json")["token_ids"])
    _, held_files = toy_lm.corpus_split(config, root)
    evaluation = evaluate_model_dir(model_dir, config, metadata["seed"],
                                                         toy_lm.read_texts(held_files), frequent)
    _log_evaluation(evaluation, config)
    metadata["evaluation"] = evaluation
    outputs = PendingWrites()  # the log and its figure together, or neither
    outputs.json(log_path, saved)
    outputs.figure(model_dir / "loss_curve.pdf", _loss_curve(saved["log"], metadata["seed"],
                                                             metadata["summary"]["steps"], evaluation))
    outputs.commit()
    logger.info("wrote the evaluation into %s and redrew %s", log_path, model_dir / "loss_curve.pdf")
    return 0


def _loss_curve(log: list, seed: int, steps: int, evaluation: dict):
    import matplotlib
    matplotlib.use("Agg")

    return toy_lm.plot_training_log(log, title=(
        f"toy LM, seed {seed}: {steps} steps; best head {evaluation['best_head']} "
        f"{evaluation['best_matching_score']:.2f}; held-out ICL {evaluation['icl_score_mean']:.2f}"))


def check_corpus(root: Path, config: toy_lm.ToyLMConfig) -> tuple:
    """(train files, held-out files) of ``--stdlib_dir``; one line when either split is empty."""
    train_files, held_files = toy_lm.corpus_split(config, root)
    if not train_files and not held_files:
        raise InputError(f"--stdlib_dir {root} holds no .py files")
    if not train_files or not held_files:
        empty = "training" if not train_files else "held-out"
        raise InputError(f"--stdlib_dir {root} holds only {len(train_files) + len(held_files)} .py file(s): the "
                         f"{empty} split ({config.held_out_percent}% of files are held out, by a hash of their path) "
                         "is empty; give a folder with more .py files")
    return train_files, held_files


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose, progress=not args.no_progress)
    import torch

    torch.set_num_threads(args.threads)
    save_dir = args.save_dir.resolve()
    root = Path(args.stdlib_dir) if args.stdlib_dir is not None else toy_lm.stdlib_dir()
    if args.evaluate_only:
        if not (save_dir / "training_log.json").is_file():
            raise FileNotFoundError(f"no trained model in {save_dir} (training_log.json missing)")
        return evaluate_only(save_dir, root)

    late = args.icl_late_index if args.icl_late_index is not None else args.n_ctx - 6
    early = toy_lm.ToyLMConfig.icl_early_index
    if not early < late <= args.n_ctx - 2:
        raise InputError(f"--icl_late_index must be in ({early}, {args.n_ctx - 2}] (after the early index {early}, "
                         f"at most --n_ctx - 2), got {late}")
    config = toy_lm.ToyLMConfig(
        max_steps=args.max_steps, eval_every=args.eval_every,
        stop_score=None if args.no_early_stop else args.stop_score,
        stop_patience=args.stop_patience, stop_after_steps=args.stop_after_steps, n_ctx=args.n_ctx, icl_late_index=late,
        vocab_size=args.vocab_size, batch_size=args.batch_size,
    )
    check_writable_dir(save_dir.parent, "--save_dir")
    if args.snapshot_dir is not None:
        check_writable_dir(args.snapshot_dir, "--snapshot_dir")  # before the corpus and tokenizer work
    wall_start = time.perf_counter()

    train_files, held_files = check_corpus(root, config)
    if args.max_files is not None:
        train_files = train_files[: args.max_files]
    logger.info("corpus: %d training and %d held-out files from %s", len(train_files), len(held_files), root)
    train_texts = toy_lm.read_texts(train_files)
    tokenizer = toy_lm.train_tokenizer(train_texts, config.vocab_size, config.bpe_min_frequency)
    special_id = tokenizer.convert_tokens_to_ids(toy_lm.SPECIAL_TOKEN)
    stream = toy_lm.tokenize_documents(tokenizer, train_texts)
    frequent, counts = toy_lm.frequent_token_ids(stream, len(tokenizer), config.frequent_min_count, [special_id])
    logger.info("tokenizer: vocab %d; %d training tokens; %d ids seen >= %d times",
                len(tokenizer), stream.size, frequent.size, config.frequent_min_count)
    if frequent.size < config.monitor_block_len:
        raise InputError(f"the corpus in --stdlib_dir {root} is too small: {frequent.size} token ids occur >= "
                         f"{config.frequent_min_count} times, and the matching-score prompts need "
                         f"{config.monitor_block_len} distinct ones; give more .py files")

    snapshot_rows: list = []
    if args.snapshot_dir is not None:
        tokenizer.save_pretrained(args.snapshot_dir)

    def snapshot(row: dict, model) -> None:
        snapshot_rows.append(row)
        if args.snapshot_dir is not None:
            model.save_pretrained(args.snapshot_dir, safe_serialization=True)
            save_json(Path(args.snapshot_dir) / "training_log_so_far.json", snapshot_rows)

    result = toy_lm.train(config, stream, len(tokenizer), special_id, frequent, args.seed, progress=snapshot,
                          show_progress=not args.no_progress)
    train_wall = time.perf_counter() - wall_start
    summary = {
        "steps": result.steps, "stopped_early": result.stopped_early,
        "tokens_seen": result.steps * config.batch_size * config.n_ctx,
        "wall_time_s": round(train_wall, 1), "torch_threads": args.threads,
        "n_train_files": len(train_files), "n_held_out_files": len(held_files),
        "n_train_tokens": int(stream.size),
        "train_corpus_sha256": toy_lm.corpus_fingerprint(train_files, root),
        "stdlib_dir": portable_path(root),
        "monitor_matching_scores": result.final_matching_scores.tolist(),
    }

    save_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{save_dir.name}.tmp-", dir=save_dir.parent))
    try:
        result.model.save_pretrained(tmp_dir, safe_serialization=True)
        tokenizer.save_pretrained(tmp_dir)
        save_json(tmp_dir / "frequent_token_ids.json", {
            "min_count": config.frequent_min_count, "token_ids": frequent.tolist(),
            "training_token_counts": counts.tolist(),
            "note": "ids seen >= min_count times in the training tokens (special token excluded); "
                    "draw head-score prompt tokens from token_ids",
        })
        evaluation = evaluate_model_dir(tmp_dir, config, args.seed, toy_lm.read_texts(held_files), frequent)
        _log_evaluation(evaluation, config)
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
