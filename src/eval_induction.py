"""Evaluate induction-task models from 2^6 to 2^20 tokens and show their induction heads.

For every model (``saved_models/induction_task/ENC.pt``, written by
``train_induction.py``) and length 2^k:

* accuracy at the last position on the fixed validation set at that length, with a
  Wilson 95% interval; ``--n_sequences`` sequences (default 256) up to
  ``--full_max_log2`` (default 14, i.e. 2^14), and beyond that as many as
  ``--long_cpu_seconds`` of CPU time allow per model and length (at least one batch, at
  most ``--n_sequences``); lengths whose sequences would need more CPU time than
  ``--max_cpu_seconds_per_sequence`` (estimated from the previous length: x2 on the
  linear path, x4 on the quadratic one) are skipped and logged. Budgets count CPU
  time, not wall time, because the machine may be shared;
* wall and CPU time per sequence and the process's peak resident memory (``ru_maxrss``).

Models with ALiBi or no position encoding use the exact linear-time token-type
path; absolute and RoPE models the blocked path (memory linear, time quadratic),
see :mod:`icl_cmr.tiny_transformer`.

It also computes each model's attention by lag (DESIGN.md section 2) on two prompt
kinds and plots the second layer (0-based layer 1), and stores a third view:

* ``task``: induction-task sequences of length 256; query = the final trigger,
  earlier occurrence = the first trigger, so lag +1 is the value to recall;
* ``repeated``: 15 distinct non-trigger tokens, then the same 15 again (the
  vocabulary has only 15 non-trigger ids, so no longer block of distinct tokens
  exists); queries = the second repeat, keys in the first repeat only;
* ``value_query`` (JSON and log only): the ``task`` sequences seen from the value
  (query = first trigger + 1, lag 0 = the value itself), so lag -1 is the trigger,
  where a first-layer previous-token head looks.

Writes ``--save_dir/accuracy_vs_length_ENC.csv`` (+ ``.json`` metadata) per model, then
combines every such table in ``--save_dir`` into ``accuracy_vs_length.csv`` (so encodings
can be evaluated by parallel runs and combined by ``--skip_accuracy``),
``--save_dir/lag_crp_ENC.json`` and, in ``--fig_dir``, ``accuracy_vs_length.pdf``,
``training_curves.pdf``, ``lag_crp_layer2.pdf`` (the absolute model, or the first
one) and ``lag_crp_layer2_ENC.pdf``.

Example::

    python src/eval_induction.py                        # all trained models, 2^6 .. 2^20
    python src/eval_induction.py --models saved_models/induction_task/absolute.pt --max_log2 12
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from icl_cmr import induction_task as task
from icl_cmr.cli import (OneLineErrorParser, int_range, non_negative_float, non_negative_int, positive_float,
                         positive_int, run_cli, seed_int, setup_logging)
from icl_cmr.config import ATTN_CRP_LAGS
from icl_cmr.errors import InputError
from icl_cmr.io import make_metadata, read_text, save_figure, save_json, save_text
from icl_cmr.outputs import check_writable_dir, portable_path
from icl_cmr.stats import wilson_interval
from icl_cmr.tiny_transformer import POSITION_ENCODINGS, fastest_exact_method
from train_induction import DEFAULT_FIG_DIR, DEFAULT_SAVE_DIR, load_model

logger = logging.getLogger("eval_induction")

RESULT_COLUMNS = ("encoding", "length", "log2_length", "n_sequences", "correct", "accuracy",
                  "wilson_low", "wilson_high", "method", "batch_size", "seconds_per_sequence",
                  "cpu_seconds_per_sequence", "peak_rss_gb")


def build_parser() -> argparse.ArgumentParser:
    defaults = task.InductionTaskConfig()
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, nargs="+", default=None,
                        help="model files (default: saved_models/induction_task/ENC.pt for every ENC present)")
    parser.add_argument("--save_dir", type=Path, default=DEFAULT_SAVE_DIR,
                        help="results folder (default saved_models/induction_task)")
    parser.add_argument("--fig_dir", type=Path, default=DEFAULT_FIG_DIR,
                        help="figure folder (default figs/induction_task)")
    # k >= 2: a sequence needs at least 3 tokens (trigger, value, trigger)
    parser.add_argument("--min_log2", type=int_range(2), default=6, help="shortest length 2^k (default 6)")
    parser.add_argument("--max_log2", type=int_range(2), default=20, help="longest length 2^k (default 20)")
    parser.add_argument("--n_sequences", type=positive_int, default=256,
                        help="sequences per length up to --full_max_log2, and the cap beyond (default 256)")
    parser.add_argument("--full_max_log2", type=non_negative_int, default=14,
                        help="lengths up to 2^k get all --n_sequences (default 14, the issue's minimum)")
    parser.add_argument("--long_cpu_seconds", type=non_negative_float, default=60.0,
                        help="CPU-time budget per model and length beyond --full_max_log2 (default 60)")
    parser.add_argument("--max_cpu_seconds_per_sequence", type=positive_float, default=120.0,
                        help="skip a length if one sequence is estimated to need more CPU time (default 120)")
    parser.add_argument("--tokens_per_batch", type=positive_int, default=2 ** 15,
                        help="batch size = max(1, this // length) (default 2^15)")
    parser.add_argument("--val_seed", type=seed_int, default=defaults.val_seed,
                        help=f"seed of the fixed validation sets (default {defaults.val_seed})")
    parser.add_argument("--lag_prompts", type=positive_int, default=64,
                        help="prompts per kind for the attention-by-lag statistics (default 64)")
    parser.add_argument("--skip_accuracy", action="store_true", help="only the lag statistics")
    parser.add_argument("--skip_lag_crp", action="store_true", help="only the accuracy table")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--title", default=None, help="title of accuracy_vs_length.pdf")
    parser.add_argument("--png_dir", type=Path, default=None, help="also save PNG copies of the figures here")
    parser.add_argument("--progress", action="store_true", help="show tqdm bars per length")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.min_log2 > args.max_log2:
        raise InputError(f"--min_log2 ({args.min_log2}) must be <= --max_log2 ({args.max_log2})")
    return args


def _default_models(save_dir: Path) -> List[Path]:
    found = [save_dir / f"{enc}.pt" for enc in POSITION_ENCODINGS if (save_dir / f"{enc}.pt").is_file()]
    if not found:
        raise FileNotFoundError(f"no trained model (ENC.pt) in {save_dir}; run train_induction.py first")
    return found


def _peak_rss_gb() -> float:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2 ** 30 if sys.platform == "darwin" else 2 ** 20)


def evaluate_model(model, encoding: str, args: argparse.Namespace) -> List[dict]:
    """Accuracy rows (RESULT_COLUMNS) of one model over the requested lengths."""
    method = fastest_exact_method(encoding)
    rows: List[dict] = []
    previous_cpu: Optional[float] = None
    for log2_length in range(args.min_log2, args.max_log2 + 1):
        length = 2 ** log2_length
        if previous_cpu is not None:
            growth = 2 if method == "token_types" else 4   # linear vs quadratic time in length
            estimate = previous_cpu * growth
            if estimate > args.max_cpu_seconds_per_sequence:
                logger.info("%s: skipping 2^%d and beyond (estimated %.0f CPU s per sequence > %.0f s)",
                            encoding, log2_length, estimate, args.max_cpu_seconds_per_sequence)
                break
        batch_size = max(1, args.tokens_per_batch // length)
        full = log2_length <= args.full_max_log2
        correct, n_done, seconds, cpu_seconds = 0, 0, [], []
        started = time.process_time()
        # Batches until the count (or, beyond --full_max_log2, the time budget) is reached.
        scores = task.iter_validation_scores(model, length, args.n_sequences, args.val_seed, batch_size, method)
        for count, batch_correct, wall, cpu in tqdm(scores, total=-(-args.n_sequences // batch_size),
                                                    disable=not args.progress, desc=f"{encoding} 2^{log2_length}",
                                                    leave=False):
            correct += batch_correct
            n_done += count
            seconds.append(wall)
            cpu_seconds.append(cpu)
            if not full and time.process_time() - started >= args.long_cpu_seconds:
                break
        low, high = wilson_interval(correct, n_done)
        per_sequence = float(np.sum(seconds) / n_done)
        previous_cpu = float(np.sum(cpu_seconds) / n_done)
        rows.append({"encoding": encoding, "length": length, "log2_length": log2_length,
                     "n_sequences": n_done, "correct": correct, "accuracy": correct / n_done,
                     "wilson_low": low, "wilson_high": high, "method": method,
                     "batch_size": batch_size, "seconds_per_sequence": per_sequence,
                     "cpu_seconds_per_sequence": previous_cpu, "peak_rss_gb": _peak_rss_gb()})
        logger.info("%s 2^%d: %d/%d correct (%.1f%%, 95%% CI %.1f-%.1f), %.3g s wall / %.3g s CPU per sequence, "
                    "peak RSS %.2f GB", encoding, log2_length, correct, n_done, 100 * correct / n_done, 100 * low,
                    100 * high, per_sequence, previous_cpu, rows[-1]["peak_rss_gb"])
    return rows


def lag_statistics(model, n_prompts: int, seed: int, train_length: int = 256) -> Dict[str, dict]:
    """Attention by lag -8..+7 on task prompts and repeated-block prompts (see module docstring).

    Repeated blocks go through the project's head-score engine
    (:func:`icl_cmr.head_scores.attention_crp`, no BOS: offset 0); the task prompts,
    whose earlier occurrence sits at a different position in every prompt, through
    :func:`icl_cmr.induction_task.lag_attention`.
    """
    from icl_cmr.head_scores import attention_crp

    tokens, _, trigger_positions = task.validation_set(train_length, n_prompts, seed + 1)
    patterns = model.attention_patterns(torch.from_numpy(tokens)).numpy()     # [layer, B, H, L, L]
    mean, sem, count = task.lag_attention(patterns, np.full((n_prompts, 1), train_length - 1),
                                          trigger_positions[:, None], ATTN_CRP_LAGS)
    results = {"task": {"lags": ATTN_CRP_LAGS.tolist(), "mean": mean, "sem": sem, "count": count,
                        "n_prompts": n_prompts, "prompt_length": train_length}}
    # The same prompts seen from the value (query = trigger + 1, lag 0 = itself): lag -1 is the
    # trigger, where a previous-token head of the first layer looks.
    value_positions = trigger_positions[:, None] + 1
    mean, sem, count = task.lag_attention(patterns, value_positions, value_positions, ATTN_CRP_LAGS)
    results["value_query"] = {"lags": ATTN_CRP_LAGS.tolist(), "mean": mean, "sem": sem, "count": count,
                              "n_prompts": n_prompts, "prompt_length": train_length}
    rng = np.random.default_rng([seed, 2])
    block = model.config.vocab_size - 1          # every non-trigger id once per block
    rep_tokens, _, _ = task.repeated_block_prompts(rng, n_prompts, block, vocab_size=model.config.vocab_size)
    patterns = model.attention_patterns(torch.from_numpy(rep_tokens)).numpy()
    per_layer = [attention_crp(layer_pattern, block_len=block, offset=0, lags=ATTN_CRP_LAGS)
                 for layer_pattern in patterns]   # a handful of layers
    results["repeated"] = {"lags": ATTN_CRP_LAGS.tolist(), "mean": np.stack([s.mean for s in per_layer]),
                           "sem": np.stack([s.sem for s in per_layer]), "count": per_layer[0].count,
                           "n_prompts": n_prompts, "block_length": block}
    return results


def _write_csv(rows: List[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def _read_csv(path: Path) -> List[dict]:
    rows = list(csv.DictReader(io.StringIO(read_text(path), newline="")))
    if rows and set(rows[0]) != set(RESULT_COLUMNS):
        raise InputError(f"{path} does not have the columns {RESULT_COLUMNS}")
    return rows


def _save_figure(fig, path: Path, png_dir: Optional[Path] = None) -> None:
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(png_dir / path.with_suffix(".png").name, dpi=80)
    save_figure(fig, path)
    logger.info("wrote %s", path)


def check_outputs(args: argparse.Namespace, evaluated: Sequence[str] = ()) -> None:
    """Before any work: output folders writable, and the saved tables that will be combined with the new
    ones (encodings not in ``evaluated``) readable."""
    check_writable_dir(args.save_dir, "--save_dir")
    check_writable_dir(args.fig_dir, "--fig_dir")
    if args.png_dir is not None:
        check_writable_dir(args.png_dir, "--png_dir")
    for enc in POSITION_ENCODINGS:
        path = args.save_dir / f"accuracy_vs_length_{enc}.csv"
        if enc not in evaluated and path.is_file():
            _read_csv(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    import matplotlib
    matplotlib.use("Agg")

    check_writable_dir(args.save_dir, "--save_dir")
    paths = args.models or _default_models(args.save_dir)
    models = {}
    for path in paths:
        model = load_model(path)
        models[model.config.position_encoding] = (path, model)
    check_outputs(args, () if args.skip_accuracy else list(models))
    # Paths relative to the repository root: shipped files carry no machine paths.
    parameters = {k: (portable_path(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                  if k not in ("progress", "verbose")}
    parameters["models"] = [portable_path(p) for p in paths]
    train_length = next(iter(models.values()))[1].config.n_trained_positions

    if not args.skip_accuracy:
        for encoding, (_, model) in models.items():
            rows = evaluate_model(model, encoding, args)
            csv_path = save_text(args.save_dir / f"accuracy_vs_length_{encoding}.csv", _write_csv(rows))
            save_json(args.save_dir / f"accuracy_vs_length_{encoding}.json",
                      make_metadata("eval_induction.py", parameters, seed=args.val_seed,
                                    threads=args.threads, encoding=encoding, rows=rows))
            logger.info("wrote %s", csv_path)
    # The combined table and figure: every encoding with a per-encoding table in --save_dir, so
    # encodings can be evaluated by separate (parallel) runs and combined by a last one.
    tables = {enc: args.save_dir / f"accuracy_vs_length_{enc}.csv" for enc in POSITION_ENCODINGS}
    all_rows = [row for enc, path in tables.items() if path.is_file() for row in _read_csv(path)]
    if all_rows:
        csv_path = save_text(args.save_dir / "accuracy_vs_length.csv", _write_csv(all_rows))
        logger.info("wrote %s", csv_path)
        results = {}
        for encoding in dict.fromkeys(r["encoding"] for r in all_rows):
            mine = [r for r in all_rows if r["encoding"] == encoding]
            results[encoding] = {k: np.array([float(r[c]) for r in mine]) for k, c in
                                 (("length", "length"), ("accuracy", "accuracy"),
                                  ("low", "wilson_low"), ("high", "wilson_high"))}
        fig = task.plot_accuracy_vs_length(results, train_length, title=args.title)
        _save_figure(fig, args.fig_dir / "accuracy_vs_length.pdf", args.png_dir)

    curves = {}
    for encoding, (path, _) in models.items():
        curve_path = path.with_name(f"{encoding}_training_curve.csv")
        if curve_path.is_file():
            table = np.genfromtxt(io.StringIO(read_text(curve_path)), delimiter=",", names=True)
            curves[encoding] = {c: np.atleast_1d(table[c]) for c in table.dtype.names}
    if curves:
        _save_figure(task.plot_training_curves(curves, train_length=train_length),
                     args.fig_dir / "training_curves.pdf", args.png_dir)

    if not args.skip_lag_crp:
        first = "absolute" if "absolute" in models else next(iter(models))
        lag_column = {lag: column for column, lag in enumerate(ATTN_CRP_LAGS.tolist())}
        for encoding, (_, model) in models.items():
            stats = lag_statistics(model, args.lag_prompts, args.val_seed, model.config.n_trained_positions)
            save_json(args.save_dir / f"lag_crp_{encoding}.json",
                      make_metadata("eval_induction.py", parameters, seed=args.val_seed, encoding=encoding,
                                    layout="mean/sem: [layer, head, lag]; count: [lag]", **stats))
            layer = model.config.n_layers - 1
            previous = stats["value_query"]["mean"][0, :, lag_column[-1]]
            logger.info("%s: layer 0 attention from the value to the trigger (lag -1) by head %s", encoding,
                        np.round(previous, 3))
            for kind in ("task", "repeated"):
                next_token = stats[kind]["mean"][layer, :, lag_column[1]]
                logger.info("%s, %s prompts: layer %d lag +1 attention by head %s (max head %d)", encoding,
                            kind, layer, np.round(next_token, 3), int(np.nanargmax(next_token)))
            plotted = {kind: stats[kind] for kind in ("task", "repeated")}
            fig = task.plot_lag_crp_panels(plotted, encoding, layer)
            _save_figure(fig, args.fig_dir / f"lag_crp_layer2_{encoding}.pdf", args.png_dir)
            if encoding == first:
                fig = task.plot_lag_crp_panels(plotted, encoding, layer)
                _save_figure(fig, args.fig_dir / "lag_crp_layer2.pdf", args.png_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
