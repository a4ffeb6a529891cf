"""Length generalization over training: a run's snapshots evaluated at several lengths (issue 23, item 3;
``induction_growth.py``).

Each snapshot (a model file of ``train_induction.py --snapshot_every``, metadata ``step``; a final
``NAME.pt`` counts with its ``steps``) is scored at each length 2^k on the fixed validation set
(``val_seed``, the sets of ``eval_induction.py``), ``n_sequences`` sequences below 2^``long_from_log2`` and
``long_sequences`` from there on, by :func:`icl_cmr.synthetic.task.score_by_distance`: the argmax at the last
position against the value, as ``eval_induction.py`` scores (a test checks that both give the same counts),
and per sequence the recall distance and p(value), from which the final snapshot's errors against distance
are drawn. Wilson 95% intervals from :func:`icl_cmr.stats.wilson_interval`.

* :class:`InductionGrowthSettings` holds what the script's flags set, with the same names and defaults.
* :func:`check_induction_growth` checks everything before any evaluation (settings, snapshot files, memory
  of every length, the saved pieces' settings) and returns a :class:`GrowthPlan`.
* :func:`run_induction_growth` evaluates piece by piece, one piece per (snapshot, length), cheapest lengths
  first, and returns a :class:`GrowthResult` (the tidy table, :data:`~icl_cmr.files.induction_tables.GROWTH_COLUMNS`).
* :func:`memory_rows` measures, for a Mamba run, how long each snapshot's memory lasts
  (:mod:`icl_cmr.synthetic.mamba_memory`: the step sizes of the channels that write the value, on
  :data:`MEMORY_SEQUENCES` validation sequences of length 2^:data:`MEMORY_LOG2_LENGTH`; seconds per snapshot,
  recomputed on every run).
* :func:`recall_rows` fits each snapshot's accuracy against recall distance, pooled over its lengths
  (:mod:`icl_cmr.synthetic.recall_distance`): the distances recalled at 50% and 99%.
* :func:`growth_outputs` queues the table, its JSON sidecar, the two figures and the recall table (and, for
  Mamba, the memory table and its figure).

Resuming. Every finished piece is written atomically to ``save_dir/growth_NAME_pieces/`` (a
:class:`~icl_cmr.files.resume.RunFolder`), named by the SHA-256 of its model file, its length and its
sequence count, and holds its per-sequence answers, CPU and wall seconds and peak resident memory. A rerun
uses every piece it asks for that is already there, so a killed evaluation resumes, and a later run with more
snapshots (the training goes on) or more lengths computes only the new pieces. The folder's fingerprint is
what every piece shares: ``val_seed``, ``tokens_per_batch`` (the batches), ``dtype``; another value is refused
before any work (``restart`` discards the pieces). The device is recorded in each piece and row, as in
``eval_induction.py``'s tables.

Examples
--------
>>> settings = InductionGrowthSettings(snapshots=(Path("saved_models/induction_task/mamba_gd23_snapshots"),),
...                                    log2_lengths=(8, 12), n_sequences=64)              # doctest: +SKIP
>>> result = run_induction_growth(check_induction_growth(settings))                       # doctest: +SKIP
>>> [(row["step"], row["length"], row["accuracy"]) for row in result.rows]                # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from icl_cmr.devices import resolve_device
from icl_cmr.errors import InputError
from icl_cmr.experiments.induction_eval import peak_rss_gb, reset_peak_rss
from icl_cmr.experiments.induction_train import DEFAULT_FIG_DIR, DEFAULT_SAVE_DIR, check_memory
from icl_cmr.figures.synthetic import plot_accuracy_vs_distance, plot_accuracy_vs_step, plot_memory_horizon_vs_step
from icl_cmr.files.induction_models import (CHECKPOINT_SUFFIX, load_induction_model, model_file_metadata,
                                            model_file_step, model_name_of)
from icl_cmr.files.induction_tables import (file_sha256, growth_csv, growth_memory_path, growth_pieces_folder,
                                            growth_recall_path, growth_table_path, memory_csv, recall_csv)
from icl_cmr.files.outputs import PendingWrites, portable_path
from icl_cmr.files.reading import load_json
from icl_cmr.files.resume import RunFolder
from icl_cmr.files.writing import make_metadata, save_json
from icl_cmr.stats import wilson_interval
from icl_cmr.synthetic import task
from icl_cmr.synthetic.mamba_memory import DEFAULT_MIN_SELECTIVITY, channel_memory
from icl_cmr.synthetic.recall_distance import fit_recall_distance
from icl_cmr.synthetic.models import (INDUCTION_DTYPES, architecture_of, fastest_method, forward_memory_estimate,
                                      model_config_dict)

logger = logging.getLogger(__name__)

#: The producer recorded in the metadata (the script users run).
PRODUCER = "induction_growth.py"
#: The per-sequence answers a piece keeps (:func:`icl_cmr.synthetic.task.score_by_distance`).
SEQUENCE_KEYS = ("distance", "correct", "p_value", "predicted", "target")
#: The memory measurement's sequences: this many of the fixed validation set at length 2^MEMORY_LOG2_LENGTH
#: (65,000 filler positions; a few seconds per snapshot on one CPU thread). Our choice: long enough for the
#: rare large steps that set the horizon to be counted, short enough to run in one chunk.
MEMORY_SEQUENCES = 16
MEMORY_LOG2_LENGTH = 12
_PIECE_NAME = re.compile(r"piece_([0-9a-f]{64})_log2_(\d+)_n(\d+)\.json")


@dataclass(frozen=True)
class InductionGrowthSettings:
    """An evaluation of a run's snapshots, as ``induction_growth.py``'s flags set it (same names, defaults).

    Attributes
    ----------
    snapshots : tuple of Path
        Model files, or folders whose ``*.pt`` files (checkpoints excluded) are taken; ordered by step.
    name : str, optional
        Names the outputs ``growth_NAME.*`` (default: the run recorded in the snapshots' metadata, else the
        stem of a single file).
    log2_lengths : tuple of int
        Lengths 2^k, strictly increasing, k >= 2 (default 8, 12, 14, 16, 18, 20).
    n_sequences : int
        Sequences per length below 2^``long_from_log2`` (default 256).
    long_sequences : int
        Sequences per length from 2^``long_from_log2`` on (default 64).
    long_from_log2 : int
        Default 15.
    val_seed : int
        Seed of the fixed validation sets (``eval_induction.py``'s).
    tokens_per_batch : int
        Batch size = max(1, this // length) (default 2^15, ``eval_induction.py``'s).
    device : str, optional
        Default: CUDA when available, else the CPU.
    dtype : {"float32", "bfloat16"}
    threads : int
        Torch CPU threads.
    save_dir, fig_dir : Path
        The table and its pieces; the figures.
    """

    snapshots: Tuple[Path, ...] = ()
    name: Optional[str] = None
    log2_lengths: Tuple[int, ...] = (8, 12, 14, 16, 18, 20)
    n_sequences: int = 256
    long_sequences: int = 64
    long_from_log2: int = 15
    val_seed: int = task.InductionTaskConfig().val_seed
    tokens_per_batch: int = 2 ** 15
    device: Optional[str] = None
    dtype: str = "float32"
    threads: int = 1
    save_dir: Path = DEFAULT_SAVE_DIR
    fig_dir: Path = DEFAULT_FIG_DIR

    def count_at(self, log2_length: int) -> int:
        """Sequences evaluated at length 2^``log2_length``."""
        return self.n_sequences if log2_length < self.long_from_log2 else self.long_sequences

    def fingerprint(self) -> Dict[str, Any]:
        """What every saved piece shares (the pieces folder's settings; the module docstring says why these)."""
        return {"val_seed": self.val_seed, "tokens_per_batch": self.tokens_per_batch, "dtype": self.dtype}

    def resolved(self) -> "InductionGrowthSettings":
        """These settings checked, with the device filled in.

        Raises
        ------
        InputError
            No snapshot, lengths not strictly increasing or below 2^2, a count or batch below 1, an unknown
            dtype, a name that is no file stem, a device this machine lacks.
        """
        if not self.snapshots:
            raise InputError("`snapshots` is empty: give model files or folders of them", parameters=("snapshots",))
        lengths = tuple(self.log2_lengths)
        if not lengths or min(lengths) < 2 or any(b <= a for a, b in zip(lengths, lengths[1:])):
            raise InputError(f"`log2_lengths` must be strictly increasing integers >= 2, got {lengths}",
                             parameters=("log2_lengths",))
        for parameter in ("n_sequences", "long_sequences", "tokens_per_batch", "threads"):
            if getattr(self, parameter) < 1:
                raise InputError(f"`{parameter}` must be >= 1, got {getattr(self, parameter)}",
                                 parameters=(parameter,))
        if self.dtype not in INDUCTION_DTYPES:
            raise InputError(f"`dtype` must be one of {INDUCTION_DTYPES}, got {self.dtype!r}", parameters=("dtype",))
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise InputError(f"`name` must be a file stem (letters, digits, _ . -), got {self.name!r}",
                             parameters=("name",))
        return dataclasses.replace(self, log2_lengths=lengths, device=resolve_device(self.device))


# ----------------------------------------------------------------------------- checks before any evaluation

@dataclass
class Snapshot:
    """One model file to evaluate: its training step, file, SHA-256 and the loaded model."""

    step: int
    path: Path
    sha256: str
    model: torch.nn.Module


@dataclass
class GrowthPlan:
    """What :func:`check_induction_growth` found: resolved settings, the run's name, snapshots by step."""

    settings: InductionGrowthSettings
    name: str
    snapshots: List[Snapshot]

    @property
    def run_folder(self) -> RunFolder:
        """The folder of the finished pieces (fingerprint :meth:`InductionGrowthSettings.fingerprint`)."""
        return RunFolder(growth_pieces_folder(self.settings.save_dir, self.name), self.settings.fingerprint(),
                         ["piece_*.json"], what="the saved pieces", piece="piece")

    def pieces(self) -> List[Tuple[Snapshot, int]]:
        """Every (snapshot, log2 length) to evaluate, in the order computed: by length, then by step."""
        return [(snapshot, k) for k in self.settings.log2_lengths for snapshot in self.snapshots]


def snapshot_files(paths: Tuple[Path, ...]) -> List[Path]:
    """The model files given: files as they are, folders as their ``*.pt`` files without checkpoints.

    Raises
    ------
    InputError
        A path that does not exist, or a folder without model files (parameter ``snapshots``).
    """
    files: List[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.glob("*.pt") if not p.stem.endswith(CHECKPOINT_SUFFIX))
            if not found:
                raise InputError(f"`snapshots`: {path} holds no model file (*.pt)", parameters=("snapshots",))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"`snapshots`: {path} does not exist", parameters=("snapshots",))
    return list(dict.fromkeys(files))


def _run_name(settings: InductionGrowthSettings, files: List[Path]) -> str:
    """The given name; else the one run all snapshots record; else the stem of a single file."""
    if settings.name is not None:
        return settings.name
    runs = {}
    for path in files:
        metadata = model_file_metadata(path)
        runs[path] = metadata.get("run") or metadata.get("parameters", {}).get("name")
    if len(set(runs.values())) == 1 and None not in runs.values():
        return next(iter(runs.values()))
    if len(files) == 1:
        return model_name_of(files[0])
    raise InputError("the snapshots come from several runs (or record none); give `name` for the outputs",
                     parameters=("name",))


def check_induction_growth(settings: InductionGrowthSettings, restart: bool = False) -> GrowthPlan:
    """Everything checked before any evaluation: settings, snapshot files, memory, the saved pieces' settings.

    Raises
    ------
    InputError
        As :meth:`InductionGrowthSettings.resolved`; a missing snapshot; two snapshots at one step; several
        runs without ``name``; a length that cannot fit in memory; saved pieces with another fingerprint
        (unless ``restart``).
    FileContentError, CorruptFileError, UnsafeFileError
        A file that is no usable model file or records no step (the message names it).
    """
    settings = settings.resolved()
    files = snapshot_files(settings.snapshots)
    name = _run_name(settings, files)
    by_step: Dict[int, Snapshot] = {}
    for path in files:
        step, digest = model_file_step(path), file_sha256(path)
        if step in by_step:
            if by_step[step].sha256 == digest:      # e.g. the final NAME.pt beside its last snapshot
                logger.info("%s is the same model file as %s; evaluated once", path, by_step[step].path)
                continue
            raise InputError(f"`snapshots`: {by_step[step].path} and {path} are both at step {step}",
                             parameters=("snapshots",))
        by_step[step] = Snapshot(step, path, digest, load_induction_model(path, settings.device, settings.dtype))
    snapshots = [by_step[step] for step in sorted(by_step)]
    model = snapshots[0].model
    for k in settings.log2_lengths:
        batch = max(1, settings.tokens_per_batch // 2 ** k)
        needed = forward_memory_estimate(architecture_of(model), model_config_dict(model), batch, 2 ** k,
                                         training=False)
        check_memory(needed, settings.device, f"evaluation at length 2^{k} (batch {batch})",
                     parameters=("log2_lengths", "tokens_per_batch"))
    plan = GrowthPlan(settings, name, snapshots)
    if not restart:
        plan.run_folder.check_settings()
    return plan


# ----------------------------------------------------------------------------- the evaluation

def piece_name(sha256: str, log2_length: int, n_sequences: int) -> str:
    """File name of the piece of one model file (by SHA-256) at one length and sequence count."""
    return f"piece_{sha256}_log2_{log2_length:02d}_n{n_sequences:06d}.json"


def evaluate_piece(snapshot: Snapshot, log2_length: int, settings: InductionGrowthSettings) -> Dict[str, Any]:
    """One snapshot at one length: per-sequence answers, CPU and wall seconds, peak resident memory.

    The times cover :func:`icl_cmr.synthetic.task.score_by_distance` whole: the forward passes and drawing
    the validation sequences (a few ms per sequence at 2^20, against seconds of model). On a GPU the peak
    memory is torch's allocation (``peak_gpu_gb``) besides the process's resident memory.
    """
    length, n = 2 ** log2_length, settings.count_at(log2_length)
    batch_size = max(1, settings.tokens_per_batch // length)
    method = fastest_method(snapshot.model)
    on_cpu = settings.device == "cpu"
    reset_peak_rss()
    if not on_cpu:
        torch.cuda.reset_peak_memory_stats(settings.device)
    wall, cpu = time.perf_counter(), time.process_time()
    scores = task.score_by_distance(snapshot.model, length, n, settings.val_seed, batch_size=batch_size,
                                    method=method)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"model_sha256": snapshot.sha256, "step": snapshot.step, "snapshot": snapshot.path.name,
            "length": length, "log2_length": log2_length, "n_sequences": n, "val_seed": settings.val_seed,
            "batch_size": batch_size, "method": method, "device": settings.device, "dtype": settings.dtype,
            "cpu_seconds": cpu, "wall_seconds": wall, "peak_rss_gb": peak_rss_gb(),
            "peak_gpu_gb": None if on_cpu else torch.cuda.max_memory_allocated(settings.device) / 2 ** 30,
            **{key: scores[key].tolist() for key in SEQUENCE_KEYS}}


def _piece_problem(piece: Any, sha256: str, log2_length: int, n: int, val_seed: int) -> Optional[str]:
    """Why a loaded piece is not the one its name says, or None."""
    if not isinstance(piece, dict):
        return f"holds a {type(piece).__name__}, not a piece"
    expected = {"model_sha256": sha256, "log2_length": log2_length, "n_sequences": n, "val_seed": val_seed}
    wrong = [key for key, value in expected.items() if piece.get(key) != value]
    if wrong:
        return f"{', '.join(wrong)} differ from its name's"
    if any(not isinstance(piece.get(key), list) or len(piece[key]) != n for key in SEQUENCE_KEYS):
        return f"its per-sequence lists do not all have {n} entries"
    if not all(isinstance(piece.get(key), (int, float)) for key in ("cpu_seconds", "wall_seconds", "peak_rss_gb")):
        return "no CPU time or memory"
    return None


def table_row(name: str, piece: Dict[str, Any]) -> Dict[str, Any]:
    """The growth-table row of a piece (:data:`~icl_cmr.files.induction_tables.GROWTH_COLUMNS`)."""
    n, correct = piece["n_sequences"], int(np.sum(piece["correct"]))
    low, high = wilson_interval(correct, n)
    return {"run": name, "step": piece["step"], "snapshot": piece["snapshot"], "model_sha256": piece["model_sha256"],
            "length": piece["length"], "log2_length": piece["log2_length"], "n_sequences": n, "correct": correct,
            "accuracy": correct / n, "wilson_low": low, "wilson_high": high, "cpu_seconds": piece["cpu_seconds"],
            "cpu_seconds_per_sequence": piece["cpu_seconds"] / n, "wall_seconds": piece["wall_seconds"],
            "peak_rss_gb": piece["peak_rss_gb"], "batch_size": piece["batch_size"], "method": piece["method"],
            "device": piece["device"], "dtype": piece["dtype"]}


@dataclass
class GrowthResult:
    """What :func:`run_induction_growth` computed.

    Attributes
    ----------
    plan : GrowthPlan
    rows : list of dict
        The table: one row per (snapshot, length), by step then length.
    final : dict
        ``{length: {key: array [n_sequences]}}`` (:data:`SEQUENCE_KEYS`) of the last snapshot.
    memory : list of dict, optional
        :func:`memory_rows` of a Mamba run (empty when no channel is selective enough); None for Transformers.
    recall : list of dict
        :func:`recall_rows`.
    n_resumed : int
        Pieces found saved.
    session_seconds, recorded_seconds : float
        Wall seconds of this session; of every session's pieces so far.
    """

    plan: GrowthPlan
    rows: List[dict]
    final: Dict[int, Dict[str, np.ndarray]]
    n_resumed: int
    session_seconds: float
    recorded_seconds: float = field(default=0.0)
    memory: Optional[List[dict]] = None
    recall: List[dict] = field(default_factory=list)


def run_induction_growth(plan: GrowthPlan, restart: bool = False,
                         on_piece_done: Optional[Callable[[Dict[str, Any], int], None]] = None) -> GrowthResult:
    """Evaluate every (snapshot, length) not saved yet, saving each piece as it finishes.

    Parameters
    ----------
    plan : GrowthPlan
        From :func:`check_induction_growth`.
    restart : bool
        Discard the saved pieces (every one in the folder) first.
    on_piece_done : callable, optional
        ``on_piece_done(piece, n_done)`` after each piece is saved (tests, progress).

    Returns
    -------
    GrowthResult
    """
    settings = plan.settings
    torch.set_num_threads(settings.threads)
    run = plan.run_folder
    run.open(restart)
    wanted = plan.pieces()
    names = {piece_name(s.sha256, k, settings.count_at(k)): index for index, (s, k) in enumerate(wanted)}

    def problem(index: int, piece: Any) -> Optional[str]:
        snapshot, k = wanted[index]
        return _piece_problem(piece, snapshot.sha256, k, settings.count_at(k), settings.val_seed)

    done = run.verified_pieces("piece_*.json", lambda path: names.get(path.name), len(wanted), load_json, problem)
    n_resumed = len(done)
    if n_resumed:
        logger.info("%s: %d of %d pieces already saved in %s", plan.name, n_resumed, len(wanted), run.folder)
    started, before = time.perf_counter(), run.recorded_seconds()
    for index, (snapshot, k) in enumerate(wanted):
        if index in done:
            continue
        piece = evaluate_piece(snapshot, k, settings)
        save_json(run.path(piece_name(snapshot.sha256, k, settings.count_at(k))), piece)
        run.record_seconds(before + time.perf_counter() - started)
        done[index] = piece
        row = table_row(plan.name, piece)
        logger.info("%s step %d at 2^%d: %d/%d correct (%.1f%%, 95%% CI %.1f-%.1f), %.1f CPU s (%.3g per sequence), "
                    "peak RSS %.2f GB", plan.name, snapshot.step, k, row["correct"], row["n_sequences"],
                    100 * row["accuracy"], 100 * row["wilson_low"], 100 * row["wilson_high"], row["cpu_seconds"],
                    row["cpu_seconds_per_sequence"], row["peak_rss_gb"])
        if on_piece_done is not None:
            on_piece_done(piece, len(done))
    session = time.perf_counter() - started
    rows = sorted((table_row(plan.name, done[index]) for index in range(len(wanted))),
                  key=lambda row: (row["step"], row["length"]))
    last = plan.snapshots[-1]
    final = {2 ** k: {key: np.asarray(done[index][key]) for key in SEQUENCE_KEYS}
             for index, (snapshot, k) in enumerate(wanted) if snapshot is last}
    pieces = [(snapshot, done[index]) for index, (snapshot, _) in enumerate(wanted)]
    return GrowthResult(plan, rows, final, n_resumed, session, run.recorded_seconds(), memory_rows(plan),
                        recall_rows(plan.name, pieces))


def recall_rows(name: str, pieces: List[Tuple[Snapshot, Dict[str, Any]]]) -> List[dict]:
    """Each snapshot's recall-distance fit over the sequences of all its pieces
    (:data:`~icl_cmr.files.induction_tables.RECALL_COLUMNS`), by step."""
    by_step: Dict[int, Tuple[Snapshot, List[Dict[str, Any]]]] = {}
    for snapshot, piece in pieces:
        by_step.setdefault(snapshot.step, (snapshot, []))[1].append(piece)
    rows = []
    for step in sorted(by_step):
        snapshot, mine = by_step[step]
        fit = fit_recall_distance(np.concatenate([piece["distance"] for piece in mine]),
                                  np.concatenate([piece["correct"] for piece in mine]), 1 / task.N_VALUES)
        rows.append({"run": name, "step": step, "model_sha256": snapshot.sha256, "n_sequences": fit.n_sequences,
                     "n_correct": fit.n_correct, "midpoint_log2": fit.midpoint_log2, "slope": fit.slope,
                     "log2_distance_50": fit.log2_distance_at(0.5), "log2_distance_99": fit.log2_distance_at(0.99),
                     "max_log2_distance": fit.max_log2_distance})
    return rows


def memory_rows(plan: GrowthPlan) -> Optional[List[dict]]:
    """Every Mamba snapshot's memory channels (:data:`~icl_cmr.files.induction_tables.MEMORY_COLUMNS`), by step.

    None when no snapshot is a Mamba (a Transformer's memory is attention, not a decaying state).
    """
    if not any(architecture_of(snapshot.model) == "mamba" for snapshot in plan.snapshots):
        return None
    length = 2 ** MEMORY_LOG2_LENGTH
    tokens, _, first = task.validation_set(length, MEMORY_SEQUENCES, plan.settings.val_seed)
    rows = []
    for snapshot in plan.snapshots:
        if architecture_of(snapshot.model) != "mamba":
            continue
        memory = channel_memory(snapshot.model, torch.from_numpy(tokens), first)
        channels = memory.memory_channels()
        rows += [{"run": plan.name, "step": snapshot.step, "model_sha256": snapshot.sha256, "length": length,
                  "n_sequences": MEMORY_SEQUENCES, **channel} for channel in channels]
        if not channels:
            logger.info("%s step %d: no memory channel (none steps %g times more at the value than on fillers)",
                        plan.name, snapshot.step, DEFAULT_MIN_SELECTIVITY)
        else:
            logger.info("%s step %d: %d memory channels, the longest horizon %.3g tokens (layer %d channel %d)",
                        plan.name, snapshot.step, len(channels), channels[0]["horizon"], channels[0]["layer"],
                        channels[0]["channel"])
    return rows


# ----------------------------------------------------------------------------- outputs

def curves_by_length(rows: List[dict]) -> Dict[int, Dict[str, np.ndarray]]:
    """A growth table's rows as :func:`~icl_cmr.figures.synthetic.plot_accuracy_vs_step` takes them."""
    curves = {}
    for length in sorted({int(row["length"]) for row in rows}):
        mine = sorted((row for row in rows if int(row["length"]) == length), key=lambda row: int(row["step"]))
        curves[length] = {key: np.array([float(row[column]) for row in mine]) for key, column in
                          (("step", "step"), ("accuracy", "accuracy"), ("low", "wilson_low"),
                           ("high", "wilson_high"), ("n_sequences", "n_sequences"))}
    return curves


def growth_outputs(result: GrowthResult, pending: PendingWrites, train_length: int = 256) -> List[Path]:
    """Queue ``growth_NAME.csv`` + ``.json`` and the figures ``growth_NAME.pdf`` (accuracy against step) and
    ``growth_distance_NAME.pdf`` (the last snapshot's recall against distance at lengths above ``train_length``,
    or at every length when none is above), ``growth_recall_NAME.csv`` (:func:`recall_rows`); for a Mamba run
    also ``growth_memory_NAME.csv`` and, when it has rows, ``growth_memory_NAME.pdf`` (memory horizon and
    recall distances against step). Returns the paths queued."""
    plan, settings = result.plan, result.plan.settings
    table = growth_table_path(settings.save_dir, plan.name)
    last = plan.snapshots[-1]
    parameters = {**{f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)},
                  "snapshots": [portable_path(s.path) for s in plan.snapshots],
                  "save_dir": portable_path(settings.save_dir), "fig_dir": portable_path(settings.fig_dir),
                  "counts": {str(2 ** k): settings.count_at(k) for k in settings.log2_lengths}}
    pending.text(table, growth_csv(result.rows))
    pending.json(table.with_suffix(".json"), make_metadata(
        PRODUCER, parameters, seed=settings.val_seed, run=plan.name, threads=settings.threads,
        snapshots=[{"step": s.step, "file": portable_path(s.path), "sha256": s.sha256} for s in plan.snapshots],
        pieces_folder=portable_path(plan.run_folder.folder), resumed_pieces=result.n_resumed,
        wall_seconds_this_session=round(result.session_seconds, 3),
        wall_seconds_all_sessions=round(result.recorded_seconds, 3),
        final_step=last.step, final_by_length={str(k): v for k, v in result.final.items()}))
    figures = Path(settings.fig_dir)
    pending.figure(figures / f"growth_{plan.name}.pdf", plot_accuracy_vs_step(curves_by_length(result.rows), plan.name))
    shown = {k: v for k, v in result.final.items() if k > train_length} or result.final
    pending.figure(figures / f"growth_distance_{plan.name}.pdf",
                   plot_accuracy_vs_distance(shown, f"{plan.name} at step {last.step}", n_columns=3))
    written = [table, table.with_suffix(".json"), figures / f"growth_{plan.name}.pdf",
               figures / f"growth_distance_{plan.name}.pdf"]
    recall_table = growth_recall_path(settings.save_dir, plan.name)
    pending.text(recall_table, recall_csv(result.recall))
    written.append(recall_table)
    if result.memory is not None:
        memory_table = growth_memory_path(settings.save_dir, plan.name)
        pending.text(memory_table, memory_csv(result.memory))
        written.append(memory_table)
    if result.memory:
        pending.figure(figures / f"growth_memory_{plan.name}.pdf",
                       plot_memory_horizon_vs_step(result.memory, [2 ** k for k in settings.log2_lengths], plan.name,
                                                   recall=result.recall))
        written.append(figures / f"growth_memory_{plan.name}.pdf")
    return written
