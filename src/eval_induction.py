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

Example::

    python src/eval_induction.py                        # all trained models, 2^6 .. 2^20
    python src/eval_induction.py --models saved_models/induction_task/absolute.pt --max_log2 12
    python src/eval_induction.py --models saved_models/induction_task/mamba.pt --device cuda
"""
from __future__ import annotations

import argparse
import csv
import hashlib
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

from icl_cmr.synthetic import task
from icl_cmr.cli.args import (OneLineErrorParser, comma_list, device_arg, int_range, non_negative_float,
                              non_negative_int, positive_float, positive_int, run_cli, seed_int, setup_logging)
from icl_cmr.config import ATTN_CRP_LAGS
from icl_cmr.devices import resolve_device
from icl_cmr.errors import InputError
from icl_cmr.synthetic.models import (INDUCTION_DTYPES, MODEL_NAMES, architecture_of, check_memory, fastest_method,
                                      forward_memory_estimate, linear_time, load_induction_model, model_config_dict,
                                      saved_train_length)
from icl_cmr.files.reading import load_json, read_text
from icl_cmr.files.writing import make_metadata
from icl_cmr.files.outputs import PendingWrites, log_written, portable_path
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.stats import wilson_interval

logger = logging.getLogger("eval_induction")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAVE_DIR = REPO_ROOT / "saved_models" / "induction_task"
DEFAULT_FIG_DIR = REPO_ROOT / "figs" / "induction_task"

RESULT_COLUMNS = ("model", "length", "log2_length", "n_sequences", "correct", "accuracy",
                  "wilson_low", "wilson_high", "method", "batch_size", "seconds_per_sequence",
                  "cpu_seconds_per_sequence", "peak_rss_gb", "device", "dtype", "peak_gpu_gb")
#: Columns of tables written before Mamba and devices existed, and what their rows were run with.
LEGACY_COLUMNS = {"encoding": "model"}
LEGACY_VALUES = {"device": "cpu", "dtype": "float32", "peak_gpu_gb": ""}
TABLE_PREFIX = "accuracy_vs_length_"


#: Defaults of the flags that apply to one part of the run only (a flag given for a part that does not
#: run is refused): the accuracy table, the Transformers' lag statistics, Mamba's distance analysis.
ACCURACY_DEFAULTS = {"min_log2": 6, "max_log2": 20, "n_sequences": 256, "full_max_log2": 14,
                     "long_cpu_seconds": 60.0, "max_cpu_seconds_per_sequence": 120.0}
LAG_CRP_DEFAULTS = {"lag_prompts": 64}
DISTANCE_DEFAULTS = {"inside_log2": (12, 16), "inside_sequences": 64}


def build_parser() -> argparse.ArgumentParser:
    defaults = task.InductionTaskConfig()
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, nargs="+", default=None,
                        help="model files (default: every NAME.pt in --save_dir)")
    parser.add_argument("--save_dir", type=Path, default=DEFAULT_SAVE_DIR,
                        help="results folder (default saved_models/induction_task)")
    parser.add_argument("--fig_dir", type=Path, default=DEFAULT_FIG_DIR,
                        help="figure folder (default figs/induction_task)")
    # k >= 2: a sequence needs at least 3 tokens (trigger, value, trigger)
    parser.add_argument("--min_log2", type=int_range(2), help="shortest length 2^k (default 6)")
    parser.add_argument("--max_log2", type=int_range(2), help="longest length 2^k (default 20)")
    parser.add_argument("--n_sequences", type=positive_int,
                        help="sequences per length up to --full_max_log2, and the cap beyond (default 256)")
    parser.add_argument("--full_max_log2", type=non_negative_int,
                        help="lengths up to 2^k get all --n_sequences (default 14, the issue's minimum)")
    parser.add_argument("--long_cpu_seconds", type=non_negative_float,
                        help="time budget per model and length beyond --full_max_log2 (CPU time on the CPU, "
                             "wall time on a GPU; default 60)")
    parser.add_argument("--max_cpu_seconds_per_sequence", type=positive_float,
                        help="skip a length if one sequence is estimated to need more time (default 120)")
    parser.add_argument("--tokens_per_batch", type=positive_int, default=2 ** 15,
                        help="batch size = max(1, this // length) (default 2^15)")
    parser.add_argument("--val_seed", type=seed_int, default=defaults.val_seed,
                        help=f"seed of the fixed validation sets (default {defaults.val_seed})")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=INDUCTION_DTYPES, default="float32",
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
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--title", default=None, help="title of accuracy_vs_length.pdf")
    parser.add_argument("--png_dir", type=Path, default=None, help="also save PNG copies of the figures here")
    parser.add_argument("--progress", action="store_true", help="show tqdm bars per length")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.given = {name for name in {**ACCURACY_DEFAULTS, **LAG_CRP_DEFAULTS, **DISTANCE_DEFAULTS}
                  if getattr(args, name) is not None}
    if args.skip_accuracy and args.given & set(ACCURACY_DEFAULTS):
        raise InputError(f"{_flags(args.given & set(ACCURACY_DEFAULTS))} set the accuracy table, which "
                         "--skip_accuracy skips")
    if args.skip_lag_crp and args.given & {*LAG_CRP_DEFAULTS, *DISTANCE_DEFAULTS}:
        raise InputError(f"{_flags(args.given & {*LAG_CRP_DEFAULTS, *DISTANCE_DEFAULTS})} set the looking-inside "
                         "analyses, which --skip_lag_crp skips")
    for name, value in {**ACCURACY_DEFAULTS, **LAG_CRP_DEFAULTS, **DISTANCE_DEFAULTS}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.min_log2 > args.max_log2:
        raise InputError(f"--min_log2 ({args.min_log2}) must be <= --max_log2 ({args.max_log2})")
    args.device = resolve_device(args.device)
    return args


def _flags(names) -> str:
    return ", ".join(f"--{name}" for name in sorted(names))


def check_unused_flags(args: argparse.Namespace, models: Dict[str, object]) -> None:
    """Refuse flags of an analysis that no given model gets (lag statistics: Transformers; distance: Mamba)."""
    if args.skip_lag_crp:
        return
    architectures = {architecture_of(model) for model in models.values()}
    for flags, architecture in ((set(LAG_CRP_DEFAULTS), "transformer"), (set(DISTANCE_DEFAULTS), "mamba")):
        if args.given & flags and architecture not in architectures:
            raise InputError(f"{_flags(args.given & flags)} set{'s' if len(args.given & flags) == 1 else ''} an "
                             f"analysis of {architecture} models, and none is among the models evaluated")


def _name_order(name: str) -> tuple:
    """Known model names first, in MODEL_NAMES order, then the rest alphabetically."""
    return (MODEL_NAMES.index(name) if name in MODEL_NAMES else len(MODEL_NAMES), name)


def _default_models(save_dir: Path) -> List[Path]:
    found = sorted((p for p in save_dir.glob("*.pt") if not p.stem.endswith("_checkpoint")),
                   key=lambda p: _name_order(p.stem))
    if not found:
        raise FileNotFoundError(f"no trained model (NAME.pt) in {save_dir}; run train_induction.py first")
    return found


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to /proc/self/clear_refs); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_gb() -> float:
    """Peak resident memory (GiB): since the last reset (Linux VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2 ** 20          # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss      # kB on Linux, bytes on macOS
    return peak / (2 ** 30 if sys.platform == "darwin" else 2 ** 20)


def evaluate_model(model, name: str, args: argparse.Namespace) -> List[dict]:
    """Accuracy rows (RESULT_COLUMNS) of one model over the requested lengths."""
    method = fastest_method(model)
    growth = 2 if linear_time(model) else 4          # time per doubling of the length
    on_cpu = args.device == "cpu"
    clock = time.process_time if on_cpu else time.perf_counter
    rows: List[dict] = []
    previous: Optional[float] = None
    for log2_length in range(args.min_log2, args.max_log2 + 1):
        length = 2 ** log2_length
        if previous is not None and previous * growth > args.max_cpu_seconds_per_sequence:
            logger.info("%s: skipping 2^%d and beyond (estimated %.0f s per sequence > %.0f s)",
                        name, log2_length, previous * growth, args.max_cpu_seconds_per_sequence)
            break
        batch_size = max(1, args.tokens_per_batch // length)
        full = log2_length <= args.full_max_log2
        correct, n_done, seconds, cpu_seconds = 0, 0, [], []
        _reset_peak_rss()
        if not on_cpu:
            torch.cuda.reset_peak_memory_stats(args.device)
        started = clock()
        # Batches until the count (or, beyond --full_max_log2, the time budget) is reached.
        scores = task.iter_validation_scores(model, length, args.n_sequences, args.val_seed, batch_size, method)
        for count, batch_correct, wall, cpu in tqdm(scores, total=-(-args.n_sequences // batch_size),
                                                    disable=not args.progress, desc=f"{name} 2^{log2_length}",
                                                    leave=False):
            correct += batch_correct
            n_done += count
            seconds.append(wall)
            cpu_seconds.append(cpu)
            if not full and clock() - started >= args.long_cpu_seconds:
                break
        low, high = wilson_interval(correct, n_done)
        per_sequence = float(np.sum(seconds) / n_done)
        cpu_per_sequence = float(np.sum(cpu_seconds) / n_done)
        previous = cpu_per_sequence if on_cpu else per_sequence
        peak_gpu = "" if on_cpu else round(torch.cuda.max_memory_allocated(args.device) / 2 ** 30, 4)
        rows.append({"model": name, "length": length, "log2_length": log2_length,
                     "n_sequences": n_done, "correct": correct, "accuracy": correct / n_done,
                     "wilson_low": low, "wilson_high": high, "method": method,
                     "batch_size": batch_size, "seconds_per_sequence": per_sequence,
                     "cpu_seconds_per_sequence": cpu_per_sequence, "peak_rss_gb": _peak_rss_gb(),
                     "device": args.device, "dtype": args.dtype, "peak_gpu_gb": peak_gpu})
        logger.info("%s 2^%d: %d/%d correct (%.1f%%, 95%% CI %.1f-%.1f), %.3g s wall / %.3g s CPU per sequence, "
                    "peak RSS %.2f GB%s", name, log2_length, correct, n_done, 100 * correct / n_done, 100 * low,
                    100 * high, per_sequence, cpu_per_sequence, rows[-1]["peak_rss_gb"],
                    "" if on_cpu else f", peak GPU {peak_gpu} GB")
    return rows


def lag_statistics(model, n_prompts: int, seed: int, train_length: int = 256) -> Dict[str, dict]:
    """Attention by lag -8..+7 on task prompts and repeated-block prompts (see module docstring).

    Repeated blocks go through the project's head-score engine
    (:func:`icl_cmr.heads.scores.attention_crp`, no BOS: offset 0); the task prompts,
    whose earlier occurrence sits at a different position in every prompt, through
    :func:`icl_cmr.synthetic.task.lag_attention`.
    """
    from icl_cmr.heads.scores import attention_crp

    device = model.device
    tokens, _, trigger_positions = task.validation_set(train_length, n_prompts, seed + 1)
    # [layer, B, H, L, L]
    patterns = model.attention_patterns(torch.from_numpy(tokens).to(device)).float().cpu().numpy()
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
    patterns = model.attention_patterns(torch.from_numpy(rep_tokens).to(device)).float().cpu().numpy()
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
    """Rows of an accuracy table; tables from before Mamba and devices (an ``encoding`` column, no
    ``device``/``dtype``) are read as CPU float32 runs."""
    rows = list(csv.DictReader(io.StringIO(read_text(path), newline="")))
    if not rows:
        return rows
    columns = {LEGACY_COLUMNS.get(c, c) for c in rows[0]}
    if not set(RESULT_COLUMNS) - set(LEGACY_VALUES) <= columns or not columns <= set(RESULT_COLUMNS):
        raise InputError(f"{path} does not have the columns {RESULT_COLUMNS}")
    return [{**LEGACY_VALUES, **{LEGACY_COLUMNS.get(k, k): v for k, v in row.items()}} for row in rows]


def _tables(save_dir: Path) -> Dict[str, Path]:
    """Per-model accuracy tables in ``save_dir``: ``{name: path}`` in display order."""
    found = {p.stem[len(TABLE_PREFIX):]: p for p in save_dir.glob(f"{TABLE_PREFIX}*.csv")}
    return {name: found[name] for name in sorted(found, key=_name_order)}


def check_outputs(args: argparse.Namespace) -> Dict[str, List[dict]]:
    """Before any work: output folders writable, and the saved per-model tables readable.

    Returns
    -------
    dict
        ``{model name: rows}`` of every ``accuracy_vs_length_NAME.csv`` in ``--save_dir``, in display
        order: combined with this run's rows, and the source of a re-evaluated model's earlier rows.
    """
    check_writable_dir(args.save_dir, "--save_dir")
    check_writable_dir(args.fig_dir, "--fig_dir")
    if args.png_dir is not None:
        check_writable_dir(args.png_dir, "--png_dir")
    return {name: _read_csv(path) for name, path in _tables(args.save_dir).items()}


def check_evaluation_memory(args: argparse.Namespace, models: Dict[str, object]) -> None:
    """Refuse, before any evaluation, a length whose batch cannot fit in memory (one line).

    Each length 2^k of the table runs batches of ``max(1, --tokens_per_batch // 2^k)`` sequences;
    Mamba's distance analysis those of 2^--inside_log2.
    """
    for name, model in models.items():
        architecture = architecture_of(model)
        log2_lengths = [] if args.skip_accuracy else list(range(args.min_log2, args.max_log2 + 1))
        if architecture == "mamba" and not args.skip_lag_crp:
            log2_lengths += list(args.inside_log2)
        for log2_length in log2_lengths:
            length = 2 ** log2_length
            batch_size = max(1, args.tokens_per_batch // length)
            needed = forward_memory_estimate(architecture, model_config_dict(model), batch_size, length,
                                             training=False)
            check_memory(needed, args.device, f"{name} at length 2^{log2_length} (batch {batch_size})")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex): which model file a table's rows came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _earlier_rows(args: argparse.Namespace, name: str, digest: str, saved_rows: List[dict]) -> List[dict]:
    """``saved_rows`` (``name``'s saved table) if they came from the same model file (same SHA-256), else none."""
    if not saved_rows:
        return []
    table_path = args.save_dir / f"{TABLE_PREFIX}{name}.csv"
    sidecar = table_path.with_suffix(".json")
    saved_digest = load_json(sidecar).get("model_sha256") if sidecar.is_file() else None
    if saved_digest != digest:
        logger.warning("%s holds rows of another model file than %s (%s); they are replaced, not combined",
                       table_path, name, "its model was not recorded" if saved_digest is None else "SHA-256 differs")
        return []
    return saved_rows


def _figure_writer(pending: PendingWrites, png_dir: Optional[Path]):
    """``add(fig, path)``: queue the PDF (and a PNG copy in ``png_dir``) in ``pending``."""
    def add(fig, path: Path) -> None:
        if png_dir is not None:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=80)
            pending.data(png_dir / path.with_suffix(".png").name, buffer.getvalue())
        pending.figure(path, fig)
    return add


def _training_curves(save_dir: Path, model_paths: Sequence[Path]) -> Dict[str, Dict[str, np.ndarray]]:
    """Every ``NAME_training_curve.csv`` in ``save_dir`` and beside the evaluated models, by name."""
    found: Dict[str, Path] = {}
    for folder in dict.fromkeys([save_dir] + [path.parent for path in model_paths]):
        for path in folder.glob("*_training_curve.csv"):
            found.setdefault(path.name[:-len("_training_curve.csv")], path)
    curves = {}
    for name in sorted(found, key=_name_order):
        table = np.genfromtxt(io.StringIO(read_text(found[name])), delimiter=",", names=True)
        curves[name] = {c: np.atleast_1d(table[c]) for c in table.dtype.names}
    return curves


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    import matplotlib
    matplotlib.use("Agg")

    tables = check_outputs(args)
    only_combine = args.skip_accuracy and args.skip_lag_crp
    paths = [Path(p) for p in (args.models or ([] if only_combine else _default_models(args.save_dir)))]
    names: Dict[str, Path] = {}
    for path in paths:
        name = path.stem[:-len("_checkpoint")] if path.stem.endswith("_checkpoint") else path.stem
        if name in names:
            raise InputError(f"two models named {name!r} ({names[name]} and {path}); model names are file stems")
        names[name] = path
    models = {name: (path, load_induction_model(path, args.device, args.dtype)) for name, path in names.items()}
    loaded = {name: model for name, (_, model) in models.items()}
    check_unused_flags(args, loaded)
    check_evaluation_memory(args, loaded)
    # Paths relative to the repository root: shipped files carry no machine paths.
    parameters = {k: (portable_path(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                  if k not in ("progress", "verbose", "given")}
    parameters["models"] = [portable_path(p) for p in paths]
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    transformers = [m for _, m in models.values() if architecture_of(m) == "transformer"]
    train_length = saved_train_length(transformers[0]) if transformers else task.InductionTaskConfig().train_length
    # Everything is written together at the end (all or nothing): an interrupted run leaves the folder as it was.
    pending = PendingWrites()
    add_figure = _figure_writer(pending, args.png_dir)

    if not args.skip_accuracy:
        for name, (path, model) in models.items():
            rows = evaluate_model(model, name, args)
            digest = file_sha256(path)
            # Lengths this run did not evaluate keep their earlier rows when they came from the same model
            # file (e.g. 2^6..2^14 from a CPU run beside 2^15..2^20 from a GPU run); each row names its
            # device and dtype.
            new_lengths = {int(row["length"]) for row in rows}
            kept = [row for row in _earlier_rows(args, name, digest, tables.get(name, []))
                    if int(row["length"]) not in new_lengths]
            tables[name] = sorted(kept + rows, key=lambda row: int(row["length"]))
            table_path = args.save_dir / f"{TABLE_PREFIX}{name}.csv"
            pending.text(table_path, _write_csv(tables[name]))
            pending.json(table_path.with_suffix(".json"),
                         make_metadata("eval_induction.py", parameters, seed=args.val_seed, threads=args.threads,
                                       model=name, model_file=portable_path(path), model_sha256=digest,
                                       architecture=architecture_of(model), device=args.device,
                                       device_name=device_name, dtype=args.dtype, rows=rows,
                                       lengths_kept_from_earlier_runs=sorted(int(r["length"]) for r in kept)))
            if kept:
                logger.info("%s: kept %d earlier rows of the same model file", name, len(kept))
    # The combined table and figure: every model with a per-model table in --save_dir, so models can be
    # evaluated by separate (parallel, or other-device) runs and combined by a last one.
    all_rows = [row for name in sorted(tables, key=_name_order) for row in tables[name]]
    if all_rows:
        pending.text(args.save_dir / "accuracy_vs_length.csv", _write_csv(all_rows))
        results = {}
        for name in dict.fromkeys(r["model"] for r in all_rows):
            mine = [r for r in all_rows if r["model"] == name]
            results[name] = {k: np.array([float(r[c]) for r in mine]) for k, c in
                             (("length", "length"), ("accuracy", "accuracy"),
                              ("low", "wilson_low"), ("high", "wilson_high"))}
        add_figure(task.plot_accuracy_vs_length(results, train_length, title=args.title),
                   args.fig_dir / "accuracy_vs_length.pdf")

    curves = _training_curves(args.save_dir, paths)
    if curves:
        add_figure(task.plot_training_curves(curves, train_length=train_length), args.fig_dir / "training_curves.pdf")

    if not args.skip_lag_crp:
        lag_column = {lag: column for column, lag in enumerate(ATTN_CRP_LAGS.tolist())}
        for name, (_, model) in models.items():
            if architecture_of(model) == "mamba":
                distance_analysis(model, name, args, parameters, pending, add_figure)
                continue
            stats = lag_statistics(model, args.lag_prompts, args.val_seed, model.config.n_trained_positions)
            pending.json(args.save_dir / f"lag_crp_{name}.json",
                         make_metadata("eval_induction.py", parameters, seed=args.val_seed, encoding=name,
                                       layout="mean/sem: [layer, head, lag]; count: [lag]", **stats))
            layer = model.config.n_layers - 1
            previous = stats["value_query"]["mean"][0, :, lag_column[-1]]
            logger.info("%s: layer 0 attention from the value to the trigger (lag -1) by head %s", name,
                        np.round(previous, 3))
            for kind in ("task", "repeated"):
                next_token = stats[kind]["mean"][layer, :, lag_column[1]]
                logger.info("%s, %s prompts: layer %d lag +1 attention by head %s (max head %d)", name,
                            kind, layer, np.round(next_token, 3), int(np.nanargmax(next_token)))
            plotted = {kind: stats[kind] for kind in ("task", "repeated")}
            add_figure(task.plot_lag_crp_panels(plotted, name, layer), args.fig_dir / f"lag_crp_layer2_{name}.pdf")
            if name == "absolute":   # the assignment's model: the figure without a suffix
                add_figure(task.plot_lag_crp_panels(plotted, name, layer), args.fig_dir / "lag_crp_layer2.pdf")
    log_written(logger, pending.commit())
    return 0


def distance_analysis(model, name: str, args: argparse.Namespace, parameters: dict, pending: PendingWrites,
                      add_figure) -> None:
    """Mamba's recall against distance (module docstring): ``distance_NAME.json`` and its figure, queued."""
    seed = args.val_seed + 2          # not the accuracy table's sequences
    scores, timing = {}, {}
    for log2_length in args.inside_log2:
        length = 2 ** log2_length
        started = time.perf_counter()
        scores[length] = task.score_by_distance(model, length, args.inside_sequences, seed,
                                                batch_size=max(1, args.tokens_per_batch // length),
                                                method=fastest_method(model))
        timing[length] = time.perf_counter() - started
        res = scores[length]
        far = res["distance"] > length // 2
        logger.info("%s at 2^%d: %d/%d correct; distance <= L/2: %d/%d, > L/2: %d/%d; median p(value) %.3f "
                    "(%.0f s)", name, log2_length, res["correct"].sum(), res["correct"].size,
                    res["correct"][~far].sum(), (~far).sum(), res["correct"][far].sum(), far.sum(),
                    float(np.median(res["p_value"])), timing[length])
    pending.json(args.save_dir / f"distance_{name}.json",
                 make_metadata("eval_induction.py", parameters, seed=seed, model=name, device=args.device,
                               dtype=args.dtype, wall_seconds={str(k): v for k, v in timing.items()},
                               by_length={str(k): v for k, v in scores.items()}))
    add_figure(task.plot_accuracy_vs_distance(scores, name), args.fig_dir / f"accuracy_vs_distance_{name}.pdf")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
