"""Evaluating induction-task models from 2^6 to 2^20 tokens and looking inside them (DESIGN.md section 7;
``eval_induction.py``, whose docstring describes what is measured and written).

* :class:`InductionEvalSettings` holds everything ``eval_induction.py``'s flags set, with the same names and
  defaults. The settings of one part of the run (the accuracy table, the Transformers' lag statistics,
  Mamba's distance analysis) default to None, "that part's default" (:data:`ACCURACY_DEFAULTS`, ...): one
  set for a part that does not run is refused rather than ignored.
* :func:`check_induction_eval` checks everything before any evaluation: the settings, the saved tables this
  run would extend, the model files (read and built), and the memory of every length; it returns an
  :class:`EvalPlan`.
* :func:`run_induction_eval` evaluates and returns an :class:`InductionEvalResult`: each model's accuracy
  table (rows of lengths not evaluated now kept from the saved table when it came from the same model file,
  by SHA-256), the lag statistics of each Transformer, Mamba's accuracy against distance.
* :func:`eval_outputs` queues the tables, the JSON files and the figures.

Examples
--------
>>> settings = InductionEvalSettings(models=(Path("saved_models/induction_task/alibi.pt"),), max_log2=9,
...                                  n_sequences=32, skip_lag_crp=True, save_dir=Path("/tmp/ind"))  # doctest: +SKIP
>>> result = run_induction_eval(check_induction_eval(settings))                                      # doctest: +SKIP
>>> result.tables["alibi"][0]["accuracy"]                                                             # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import io
import logging
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from icl_cmr.config import ATTN_CRP_LAGS
from icl_cmr.devices import check_worker_count, resolve_device
from icl_cmr.errors import InputError
from icl_cmr.experiments.induction_train import DEFAULT_FIG_DIR, DEFAULT_SAVE_DIR
from icl_cmr.files.memory import check_memory, free_memory
from icl_cmr.figures.synthetic import (plot_accuracy_vs_distance, plot_accuracy_vs_length, plot_lag_crp_panels,
                                       plot_training_curves)
from icl_cmr.files.induction_models import load_induction_model, model_files_in, model_name_of, name_order
from icl_cmr.files.induction_tables import (COMBINED_TABLE, accuracy_csv, accuracy_table_path, file_sha256,
                                            read_accuracy_tables, read_training_curves, table_model_sha256)
from icl_cmr.files.outputs import PendingWrites, portable_path
from icl_cmr.files.writing import make_metadata
from icl_cmr.heads.scores import attention_crp
from icl_cmr.stats import wilson_interval
from icl_cmr.synthetic import task
from icl_cmr.synthetic.models import (architecture_of, fastest_method, forward_memory_estimate, linear_time,
                                      model_config_dict, saved_train_length)

logger = logging.getLogger(__name__)

#: The producer recorded in the metadata (the script users run).
PRODUCER = "eval_induction.py"
#: Defaults of the settings that apply to one part of the run only (one set for a part that does not run is
#: refused): the accuracy table, the Transformers' lag statistics, Mamba's distance analysis.
ACCURACY_DEFAULTS = {"min_log2": 6, "max_log2": 20, "n_sequences": 256, "full_max_log2": 14,
                     "long_cpu_seconds": 60.0, "max_cpu_seconds_per_sequence": 120.0}
LAG_CRP_DEFAULTS = {"lag_prompts": 64}
DISTANCE_DEFAULTS = {"inside_log2": (12, 16), "inside_sequences": 64}
PART_DEFAULTS = {**ACCURACY_DEFAULTS, **LAG_CRP_DEFAULTS, **DISTANCE_DEFAULTS}
#: Longest length 2^k of a table: token positions are int64 (2^62 is already far past any memory).
MAX_LOG2_LENGTH = 62


def _named(names) -> str:
    return ", ".join(f"`{name}`" for name in sorted(names))


@dataclass(frozen=True)
class InductionEvalSettings:
    """An evaluation, as ``eval_induction.py``'s flags set it (same names, same defaults).

    Attributes
    ----------
    models : tuple of Path, optional
        Model files (default: every ``NAME.pt`` in ``save_dir``; none when both parts are skipped).
    save_dir, fig_dir : Path
        Results (and the saved tables they extend), figures.
    min_log2, max_log2 : int, optional
        Lengths 2^k evaluated (default 6 .. 20).
    n_sequences : int, optional
        Sequences per length up to 2^``full_max_log2`` (default 256, 14), and the cap beyond.
    long_cpu_seconds : float, optional
        Time budget per model and length beyond 2^``full_max_log2`` (CPU time on the CPU; default 60).
    max_cpu_seconds_per_sequence : float, optional
        Skip a length whose sequences are estimated to need more time each (default 120).
    tokens_per_batch : int
        Batch size = max(1, this // length).
    val_seed : int
        Seed of the fixed validation sets.
    device : str, optional
        Default: CUDA when available, else the CPU.
    dtype : {"float32", "bfloat16"}
    lag_prompts : int, optional
        Prompts per kind for the attention-by-lag statistics of Transformers (default 64).
    inside_log2 : tuple of int, optional
        Lengths 2^k of Mamba's recall-against-distance analysis (default 12, 16).
    inside_sequences : int, optional
        Sequences per length of that analysis (default 64).
    skip_accuracy, skip_lag_crp : bool
        Skip the accuracy evaluation, the looking-inside analyses.
    threads : int
        Torch CPU threads.
    title : str, optional
        Title of ``accuracy_vs_length.pdf``.
    png_dir : Path, optional
        Also save PNG copies of the figures there.
    """

    models: Optional[Tuple[Path, ...]] = None
    save_dir: Path = DEFAULT_SAVE_DIR
    fig_dir: Path = DEFAULT_FIG_DIR
    min_log2: Optional[int] = None
    max_log2: Optional[int] = None
    n_sequences: Optional[int] = None
    full_max_log2: Optional[int] = None
    long_cpu_seconds: Optional[float] = None
    max_cpu_seconds_per_sequence: Optional[float] = None
    tokens_per_batch: int = 2 ** 15
    val_seed: int = task.InductionTaskConfig().val_seed
    device: Optional[str] = None
    dtype: str = "float32"
    lag_prompts: Optional[int] = None
    inside_log2: Optional[Tuple[int, ...]] = None
    inside_sequences: Optional[int] = None
    skip_accuracy: bool = False
    skip_lag_crp: bool = False
    threads: int = 1
    title: Optional[str] = None
    png_dir: Optional[Path] = None
    #: Set by :meth:`resolved`: the part settings given before their defaults filled the others in.
    given_parts: Optional[FrozenSet[str]] = field(default=None, repr=False)

    @property
    def given(self) -> FrozenSet[str]:
        """The settings of one part (:data:`PART_DEFAULTS`) that were set (before :meth:`resolved`)."""
        if self.given_parts is not None:
            return self.given_parts
        return frozenset(name for name in PART_DEFAULTS if getattr(self, name) is not None)

    def resolved(self) -> "InductionEvalSettings":
        """These settings checked, with each part's defaults and the device filled in.

        Raises
        ------
        InputError
            A setting of a part that is skipped, ``min_log2`` above ``max_log2``, a device this machine lacks.
        """
        if self.skip_accuracy and self.given & set(ACCURACY_DEFAULTS):
            names = self.given & set(ACCURACY_DEFAULTS)
            raise InputError(f"{_named(names)} set the accuracy table, which `skip_accuracy` skips",
                             parameters=(*names, "skip_accuracy"))
        if self.skip_lag_crp and self.given & {*LAG_CRP_DEFAULTS, *DISTANCE_DEFAULTS}:
            names = self.given & {*LAG_CRP_DEFAULTS, *DISTANCE_DEFAULTS}
            raise InputError(f"{_named(names)} set the looking-inside analyses, which `skip_lag_crp` skips",
                             parameters=(*names, "skip_lag_crp"))
        filled = dataclasses.replace(self, given_parts=self.given, **{
            name: value for name, value in PART_DEFAULTS.items() if getattr(self, name) is None})
        check_worker_count(self.threads, "threads")
        for name in ("min_log2", "max_log2", "full_max_log2"):
            if not 0 <= getattr(filled, name) <= MAX_LOG2_LENGTH:
                raise InputError(f"`{name}` must be in [0, {MAX_LOG2_LENGTH}] (lengths 2^k, int64 positions), got "
                                 f"{getattr(filled, name)}", parameters=(name,))
        if not 1 <= filled.n_sequences <= task.MAX_VALIDATION_SEQUENCES:
            raise InputError(f"`n_sequences` must be in [1, {task.MAX_VALIDATION_SEQUENCES}] (every length up to "
                             f"2^`full_max_log2` scores them all), got {filled.n_sequences}",
                             parameters=("n_sequences",))
        if filled.min_log2 > filled.max_log2:
            raise InputError(f"`min_log2` ({filled.min_log2}) must be <= `max_log2` ({filled.max_log2})",
                             parameters=("min_log2", "max_log2"))
        return dataclasses.replace(filled, device=resolve_device(self.device))

    def parameters(self, model_paths: Sequence[Path]) -> Dict[str, Any]:
        """The settings as the metadata records them (of resolved settings): portable paths, the models evaluated."""
        recorded = {f.name: (portable_path(v) if isinstance(v, Path) else v)
                    for f in dataclasses.fields(self) if f.name != "given_parts" for v in [getattr(self, f.name)]}
        recorded["models"] = [portable_path(p) for p in model_paths]
        return recorded


# ----------------------------------------------------------------------------- checks before any evaluation

def check_analyses_apply(given: FrozenSet[str], skip_lag_crp: bool, architectures: Sequence[str]) -> None:
    """Refuse settings of an analysis that no given model gets (lag statistics: Transformers; distance: Mamba)."""
    if skip_lag_crp:
        return
    for names, architecture in ((set(LAG_CRP_DEFAULTS), "transformer"), (set(DISTANCE_DEFAULTS), "mamba")):
        if given & names and architecture not in architectures:
            raise InputError(f"{_named(given & names)} set{'s' if len(given & names) == 1 else ''} an analysis of "
                             f"{architecture} models, and none is among the models evaluated",
                             parameters=tuple(given & names))


#: Bytes per attention weight the lag statistics hold: the float32 patterns [layer, batch, head, query, key]
#: and the numpy copy made of them, with room for a temporary (:func:`lag_statistics`).
LAG_PATTERN_BYTES = 3 * 4
#: Bytes per sequence of the distance analysis's result columns (five 8-byte values, listed then concatenated).
DISTANCE_BYTES_PER_SEQUENCE = 2 * 5 * 8


def _length_drivers(forward, batch_size: int, length: int, tokens_per_batch: int, length_parameter: str,
                    free: int) -> List[str]:
    """Which settings make a batch at ``length`` too large: ``tokens_per_batch`` when the default batch would fit,
    the length's own setting (``max_log2``, ``inside_log2``) when even one sequence would not."""
    drivers = []
    default_batch = max(1, min(tokens_per_batch, InductionEvalSettings.tokens_per_batch) // length)
    if batch_size > default_batch and forward(default_batch, length) <= free:
        drivers.append("tokens_per_batch")
    if not drivers or forward(1, length) > free:
        drivers.append(length_parameter)
    return drivers


def check_evaluation_memory(settings: InductionEvalSettings, models: Dict[str, torch.nn.Module]) -> None:
    """Refuse settings whose work cannot fit in memory (of resolved settings), naming the settings that drive it.

    Each length 2^k of the table runs batches of ``max(1, tokens_per_batch // 2^k)`` sequences;
    Mamba's distance analysis those of 2^``inside_log2`` and keeps ``inside_sequences`` results; the
    Transformers' lag statistics hold the attention of ``lag_prompts`` prompts at once.
    """
    free = free_memory(settings.device)
    if free is None:
        return
    for name, model in models.items():
        architecture, config = architecture_of(model), model_config_dict(model)

        def forward(batch_size: int, length: int) -> int:
            return forward_memory_estimate(architecture, config, batch_size, length, training=False)

        lengths = [] if settings.skip_accuracy else [(k, "max_log2") for k in range(settings.min_log2,
                                                                                      settings.max_log2 + 1)]
        if architecture == "mamba" and not settings.skip_lag_crp:
            lengths += [(k, "inside_log2") for k in settings.inside_log2]
        for log2_length, parameter in lengths:
            length = 2 ** log2_length
            batch_size = max(1, settings.tokens_per_batch // length)
            needed = forward(batch_size, length)
            if needed > free:
                check_memory(needed, settings.device, f"{name} at length 2^{log2_length} (batch {batch_size})",
                             _length_drivers(forward, batch_size, length, settings.tokens_per_batch, parameter, free))
        if settings.skip_lag_crp:
            continue
        if architecture == "transformer":
            length = max(saved_train_length(model), 2 * model.config.vocab_size)
            needed = (settings.lag_prompts * config["n_layers"] * config["n_heads"] * length ** 2 * LAG_PATTERN_BYTES
                      + forward(settings.lag_prompts, length))
            check_memory(needed, settings.device, f"{name}'s lag statistics on `lag_prompts` {settings.lag_prompts} "
                                                  f"prompts of {length} tokens", ("lag_prompts",))
        else:
            check_memory(settings.inside_sequences * DISTANCE_BYTES_PER_SEQUENCE, settings.device,
                         f"{name}'s distance analysis of `inside_sequences` {settings.inside_sequences}",
                         ("inside_sequences",))


@dataclass
class EvalPlan:
    """What :func:`check_induction_eval` found.

    Attributes
    ----------
    settings : InductionEvalSettings
        Resolved.
    models : dict
        ``{name: (model file, model)}`` in the order given.
    saved_tables : dict
        ``{name: rows}`` of every per-model accuracy table in ``save_dir``, in display order.
    curves : dict
        ``{name: {column: array}}``: every training curve in ``save_dir`` and beside the models.
    train_length : int
        Drawn in the figures: the first Transformer's, else the task's default.
    """

    settings: InductionEvalSettings
    models: Dict[str, Tuple[Path, torch.nn.Module]]
    saved_tables: Dict[str, List[dict]]
    curves: Dict[str, Dict[str, np.ndarray]]
    train_length: int

    @property
    def model_paths(self) -> List[Path]:
        return [path for path, _ in self.models.values()]


def check_induction_eval(settings: InductionEvalSettings) -> EvalPlan:
    """Everything checked before any evaluation: the settings, the saved tables, the model files, the memory.

    Raises
    ------
    InputError
        As :meth:`InductionEvalSettings.resolved`; a saved table with other columns; two models of one name;
        a model file that holds no usable model; settings of an analysis no model gets; a length that cannot
        fit in memory.
    FileNotFoundError
        No model given and none in ``save_dir``.
    """
    settings = settings.resolved()
    given = settings.given
    saved_tables = read_accuracy_tables(settings.save_dir)
    only_combine = settings.skip_accuracy and settings.skip_lag_crp
    paths = [Path(p) for p in (settings.models or ([] if only_combine else model_files_in(settings.save_dir)))]
    names: Dict[str, Path] = {}
    for path in paths:
        name = model_name_of(path)
        if name in names and names[name].resolve() == path.resolve():
            raise InputError(f"`models` repeats {path}; give each model once", parameters=("models",))
        if name in names:
            raise InputError(f"two models named {name!r} ({names[name]} and {path}); model names are file stems")
        names[name] = path
    models = {name: (path, load_induction_model(path, settings.device, settings.dtype))
              for name, path in names.items()}
    loaded = {name: model for name, (_, model) in models.items()}
    check_analyses_apply(given, settings.skip_lag_crp, {architecture_of(model) for model in loaded.values()})
    check_evaluation_memory(settings, loaded)
    transformers = [model for model in loaded.values() if architecture_of(model) == "transformer"]
    train_length = saved_train_length(transformers[0]) if transformers else task.InductionTaskConfig().train_length
    curves = read_training_curves([settings.save_dir] + [path.parent for path in paths])
    return EvalPlan(settings, models, saved_tables, curves, train_length)


# ----------------------------------------------------------------------------- the evaluations

def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to /proc/self/clear_refs); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_gb() -> float:
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


def evaluate_model(model: torch.nn.Module, name: str, settings: InductionEvalSettings,
                   progress: bool = False) -> List[dict]:
    """Accuracy rows (:data:`icl_cmr.files.induction_tables.RESULT_COLUMNS`) of one model over the lengths.

    Parameters
    ----------
    model : TinyTransformer or InductionMamba
    name : str
        Its name, in the rows and the log.
    settings : InductionEvalSettings
        Resolved: lengths, sequences and time budgets (module docstring of ``eval_induction.py``).
    progress : bool
        Show a tqdm bar per length.

    Returns
    -------
    list of dict
        One row per length evaluated, in increasing length; lengths estimated to need more than
        ``max_cpu_seconds_per_sequence`` per sequence (and all longer ones) are skipped, with a log line.
    """
    method = fastest_method(model)
    growth = 2 if linear_time(model) else 4          # time per doubling of the length
    on_cpu = settings.device == "cpu"
    clock = time.process_time if on_cpu else time.perf_counter
    rows: List[dict] = []
    previous: Optional[float] = None
    for log2_length in range(settings.min_log2, settings.max_log2 + 1):
        length = 2 ** log2_length
        if previous is not None and previous * growth > settings.max_cpu_seconds_per_sequence:
            logger.info("%s: skipping 2^%d and beyond (estimated %.0f s per sequence > %.0f s)",
                        name, log2_length, previous * growth, settings.max_cpu_seconds_per_sequence)
            break
        batch_size = max(1, settings.tokens_per_batch // length)
        full = log2_length <= settings.full_max_log2
        correct, n_done, seconds, cpu_seconds = 0, 0, [], []
        reset_peak_rss()
        if not on_cpu:
            torch.cuda.reset_peak_memory_stats(settings.device)
        started = clock()
        # Batches until the count (or, beyond full_max_log2, the time budget) is reached.
        scores = task.iter_validation_scores(model, length, settings.n_sequences, settings.val_seed, batch_size,
                                             method)
        for count, batch_correct, wall, cpu in tqdm(scores, total=-(-settings.n_sequences // batch_size),
                                                    disable=not progress, desc=f"{name} 2^{log2_length}",
                                                    leave=False):
            correct += batch_correct
            n_done += count
            seconds.append(wall)
            cpu_seconds.append(cpu)
            if not full and clock() - started >= settings.long_cpu_seconds:
                break
        low, high = wilson_interval(correct, n_done)
        per_sequence = float(np.sum(seconds) / n_done)
        cpu_per_sequence = float(np.sum(cpu_seconds) / n_done)
        previous = cpu_per_sequence if on_cpu else per_sequence
        peak_gpu = "" if on_cpu else round(torch.cuda.max_memory_allocated(settings.device) / 2 ** 30, 4)
        rows.append({"model": name, "length": length, "log2_length": log2_length,
                     "n_sequences": n_done, "correct": correct, "accuracy": correct / n_done,
                     "wilson_low": low, "wilson_high": high, "method": method,
                     "batch_size": batch_size, "seconds_per_sequence": per_sequence,
                     "cpu_seconds_per_sequence": cpu_per_sequence, "peak_rss_gb": peak_rss_gb(),
                     "device": settings.device, "dtype": settings.dtype, "peak_gpu_gb": peak_gpu})
        logger.info("%s 2^%d: %d/%d correct (%.1f%%, 95%% CI %.1f-%.1f), %.3g s wall / %.3g s CPU per sequence, "
                    "peak RSS %.2f GB%s", name, log2_length, correct, n_done, 100 * correct / n_done, 100 * low,
                    100 * high, per_sequence, cpu_per_sequence, rows[-1]["peak_rss_gb"],
                    "" if on_cpu else f", peak GPU {peak_gpu} GB")
    return rows


def lag_statistics(model: torch.nn.Module, n_prompts: int, seed: int, train_length: int = 256) -> Dict[str, dict]:
    """Attention by lag -8..+7 on task prompts and repeated-block prompts (``eval_induction.py``'s docstring).

    Repeated blocks go through the project's head-score engine
    (:func:`icl_cmr.heads.scores.attention_crp`, no BOS: offset 0); the task prompts,
    whose earlier occurrence sits at a different position in every prompt, through
    :func:`icl_cmr.synthetic.task.lag_attention`.

    Returns
    -------
    dict
        ``{"task" | "value_query" | "repeated": {"lags": [n_lags], "mean": [layer, head, n_lags],
        "sem": [layer, head, n_lags], "count": [n_lags], "n_prompts", "prompt_length" | "block_length"}}``.
    """
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


def _log_lag_statistics(name: str, stats: Dict[str, dict], layer: int) -> None:
    lag_column = {lag: column for column, lag in enumerate(ATTN_CRP_LAGS.tolist())}
    previous = stats["value_query"]["mean"][0, :, lag_column[-1]]
    logger.info("%s: layer 0 attention from the value to the trigger (lag -1) by head %s", name, np.round(previous, 3))
    for kind in ("task", "repeated"):
        next_token = stats[kind]["mean"][layer, :, lag_column[1]]
        logger.info("%s, %s prompts: layer %d lag +1 attention by head %s (max head %d)", name, kind, layer,
                    np.round(next_token, 3), int(np.nanargmax(next_token)))


@dataclass
class DistanceAnalysis:
    """Mamba's recall against distance: ``{length: score_by_distance result}`` and seconds per length."""

    seed: int
    scores: Dict[int, Dict[str, np.ndarray]]
    seconds: Dict[int, float]


def distance_analysis(model: torch.nn.Module, name: str, settings: InductionEvalSettings) -> DistanceAnalysis:
    """Accuracy and p(value) against the recall distance at each length 2^``inside_log2`` (resolved settings).

    ``inside_sequences`` sequences per length from the validation seed + 2 (not the accuracy table's),
    scored by :func:`icl_cmr.synthetic.task.score_by_distance`.
    """
    seed = settings.val_seed + 2
    scores, timing = {}, {}
    for log2_length in settings.inside_log2:
        length = 2 ** log2_length
        started = time.perf_counter()
        scores[length] = task.score_by_distance(model, length, settings.inside_sequences, seed,
                                                batch_size=max(1, settings.tokens_per_batch // length),
                                                method=fastest_method(model))
        timing[length] = time.perf_counter() - started
        res = scores[length]
        far = res["distance"] > length // 2
        logger.info("%s at 2^%d: %d/%d correct; distance <= L/2: %d/%d, > L/2: %d/%d; median p(value) %.3f "
                    "(%.0f s)", name, log2_length, res["correct"].sum(), res["correct"].size,
                    res["correct"][~far].sum(), (~far).sum(), res["correct"][far].sum(), far.sum(),
                    float(np.median(res["p_value"])), timing[length])
    return DistanceAnalysis(seed, scores, timing)


@dataclass
class AccuracyTable:
    """One model's accuracy table after this run: its new rows, the rows kept from the saved table, and both."""

    name: str
    path: Path
    sha256: str
    architecture: str
    rows: List[dict]
    kept: List[dict]

    @property
    def merged(self) -> List[dict]:
        return sorted(self.kept + self.rows, key=lambda row: int(row["length"]))


@dataclass
class InductionEvalResult:
    """What :func:`run_induction_eval` computed.

    Attributes
    ----------
    plan : EvalPlan
    accuracy : dict
        ``{name: AccuracyTable}`` of the models evaluated now.
    tables : dict
        ``{name: rows}``: every model's table in ``save_dir`` after this run, in display order.
    lag_stats : dict
        ``{name: lag_statistics(...)}`` of the Transformers.
    distances : dict
        ``{name: DistanceAnalysis}`` of the Mamba models.
    device_name : str
    """

    plan: EvalPlan
    accuracy: Dict[str, AccuracyTable] = field(default_factory=dict)
    tables: Dict[str, List[dict]] = field(default_factory=dict)
    lag_stats: Dict[str, Dict[str, dict]] = field(default_factory=dict)
    distances: Dict[str, DistanceAnalysis] = field(default_factory=dict)
    device_name: str = "cpu"


def _earlier_rows(save_dir: Path, name: str, digest: str, saved_rows: List[dict]) -> List[dict]:
    """``saved_rows`` (``name``'s saved table) if they came from the same model file (same SHA-256), else none."""
    if not saved_rows:
        return []
    table_path = accuracy_table_path(save_dir, name)
    saved_digest = table_model_sha256(table_path)
    if saved_digest != digest:
        logger.warning("%s holds rows of another model file than %s (%s); they are replaced, not combined",
                       table_path, name, "its model was not recorded" if saved_digest is None else "SHA-256 differs")
        return []
    return saved_rows


def run_induction_eval(plan: EvalPlan, progress: bool = False) -> InductionEvalResult:
    """Evaluate the plan's models: the accuracy table, then the looking-inside analyses, as the settings ask.

    Parameters
    ----------
    plan : EvalPlan
        From :func:`check_induction_eval`.
    progress : bool
        Show a tqdm bar per length.

    Returns
    -------
    InductionEvalResult
    """
    settings = plan.settings
    torch.set_num_threads(settings.threads)
    device_name = torch.cuda.get_device_name(settings.device) if settings.device.startswith("cuda") else "cpu"
    result = InductionEvalResult(plan, tables=dict(plan.saved_tables), device_name=device_name)
    if not settings.skip_accuracy:
        for name, (path, model) in plan.models.items():
            rows = evaluate_model(model, name, settings, progress)
            digest = file_sha256(path)
            # Lengths this run did not evaluate keep their earlier rows when they came from the same model
            # file (e.g. 2^6..2^14 from a CPU run beside 2^15..2^20 from a GPU run); each row names its
            # device and dtype.
            new_lengths = {int(row["length"]) for row in rows}
            kept = [row for row in _earlier_rows(settings.save_dir, name, digest, plan.saved_tables.get(name, []))
                    if int(row["length"]) not in new_lengths]
            table = AccuracyTable(name, path, digest, architecture_of(model), rows, kept)
            result.accuracy[name] = table
            result.tables[name] = table.merged
            if kept:
                logger.info("%s: kept %d earlier rows of the same model file", name, len(kept))
    # Every model with a table in save_dir, so models can be evaluated by separate (parallel, or
    # other-device) runs and combined by a last one.
    result.tables = {name: result.tables[name] for name in sorted(result.tables, key=name_order)}
    if not settings.skip_lag_crp:
        for name, (_, model) in plan.models.items():
            if architecture_of(model) == "mamba":
                result.distances[name] = distance_analysis(model, name, settings)
                continue
            stats = lag_statistics(model, settings.lag_prompts, settings.val_seed, model.config.n_trained_positions)
            _log_lag_statistics(name, stats, model.config.n_layers - 1)
            result.lag_stats[name] = stats
    return result


# ----------------------------------------------------------------------------- outputs

def _figure_writer(pending: PendingWrites, png_dir: Optional[Path]) -> Callable[[Figure, Path], None]:
    """``add(fig, path)``: queue the PDF (and a PNG copy in ``png_dir``) in ``pending``."""
    def add(fig: Figure, path: Path) -> None:
        if png_dir is not None:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=80)
            pending.data(Path(png_dir) / path.with_suffix(".png").name, buffer.getvalue())
        pending.figure(path, fig)
    return add


def _accuracy_by_model(rows: List[dict]) -> Dict[str, Dict[str, np.ndarray]]:
    """The combined table's rows as :func:`~icl_cmr.figures.synthetic.plot_accuracy_vs_length` takes them."""
    results = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        results[name] = {k: np.array([float(r[c]) for r in mine]) for k, c in
                         (("length", "length"), ("accuracy", "accuracy"), ("low", "wilson_low"),
                          ("high", "wilson_high"))}
    return results


def eval_outputs(result: InductionEvalResult, pending: PendingWrites) -> None:
    """Queue every file of an evaluation in ``pending`` (``eval_induction.py``'s docstring lists them)."""
    plan, settings = result.plan, result.plan.settings
    parameters = settings.parameters(plan.model_paths)
    add_figure = _figure_writer(pending, settings.png_dir)
    fig_dir = Path(settings.fig_dir)
    for name, table in result.accuracy.items():
        table_path = accuracy_table_path(settings.save_dir, name)
        pending.text(table_path, accuracy_csv(table.merged))
        pending.json(table_path.with_suffix(".json"),
                     make_metadata(PRODUCER, parameters, seed=settings.val_seed, threads=settings.threads, model=name,
                                   model_file=portable_path(table.path), model_sha256=table.sha256,
                                   architecture=table.architecture, device=settings.device,
                                   device_name=result.device_name, dtype=settings.dtype, rows=table.rows,
                                   lengths_kept_from_earlier_runs=sorted(int(r["length"]) for r in table.kept)))
    all_rows = [row for rows in result.tables.values() for row in rows]
    if all_rows:
        pending.text(Path(settings.save_dir) / COMBINED_TABLE, accuracy_csv(all_rows))
        add_figure(plot_accuracy_vs_length(_accuracy_by_model(all_rows), plan.train_length, title=settings.title),
                   fig_dir / "accuracy_vs_length.pdf")
    if plan.curves:
        add_figure(plot_training_curves(plan.curves, train_length=plan.train_length), fig_dir / "training_curves.pdf")
    for name, (_, model) in plan.models.items():
        if name in result.distances:
            analysis = result.distances[name]
            pending.json(Path(settings.save_dir) / f"distance_{name}.json",
                         make_metadata(PRODUCER, parameters, seed=analysis.seed, model=name, device=settings.device,
                                       dtype=settings.dtype,
                                       wall_seconds={str(k): v for k, v in analysis.seconds.items()},
                                       by_length={str(k): v for k, v in analysis.scores.items()}))
            add_figure(plot_accuracy_vs_distance(analysis.scores, name), fig_dir / f"accuracy_vs_distance_{name}.pdf")
        elif name in result.lag_stats:
            stats = result.lag_stats[name]
            pending.json(Path(settings.save_dir) / f"lag_crp_{name}.json",
                         make_metadata(PRODUCER, parameters, seed=settings.val_seed, encoding=name,
                                       layout="mean/sem: [layer, head, lag]; count: [lag]", **stats))
            layer = model.config.n_layers - 1
            plotted = {kind: stats[kind] for kind in ("task", "repeated")}
            add_figure(plot_lag_crp_panels(plotted, name, layer), fig_dir / f"lag_crp_layer2_{name}.pdf")
            if name == "absolute":   # the assignment's model: the figure without a suffix
                add_figure(plot_lag_crp_panels(plotted, name, layer), fig_dir / "lag_crp_layer2.pdf")
