"""Tables of the induction task: accuracy against length per model, and training curves (DESIGN.md section 7).

* ``accuracy_vs_length_NAME.csv`` (columns :data:`RESULT_COLUMNS`, one row per length) with a JSON
  sidecar ``accuracy_vs_length_NAME.json`` that records, among the run's metadata, the SHA-256 of the
  model file the rows came from (:func:`file_sha256`); every such table of a folder is combined into
  ``accuracy_vs_length.csv``. Tables written before Mamba and devices existed (an ``encoding``
  column, no ``device``/``dtype``) are read as CPU float32 runs.
* ``NAME_training_curve.csv`` (columns :data:`CURVE_COLUMNS`, one row per evaluation during training)
  beside ``NAME_training.json``.
* ``growth_NAME.csv`` (columns :data:`GROWTH_COLUMNS`, one row per snapshot and length: accuracy against
  training step, ``induction_growth.py``) with a JSON sidecar ``growth_NAME.json``; its finished pieces are
  kept in ``growth_NAME_pieces/`` (:mod:`icl_cmr.experiments.induction_growth`). For a Mamba run,
  ``growth_memory_NAME.csv`` (columns :data:`MEMORY_COLUMNS`, one row per snapshot and memory channel:
  :mod:`icl_cmr.synthetic.mamba_memory`); for every run ``growth_recall_NAME.csv`` (columns
  :data:`RECALL_COLUMNS`, one row per snapshot: :mod:`icl_cmr.synthetic.recall_distance`).
"""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from icl_cmr.errors import InputError
from icl_cmr.files.induction_models import name_order
from icl_cmr.files.reading import load_json, read_text

#: Columns of an accuracy table, in order.
RESULT_COLUMNS = ("model", "length", "log2_length", "n_sequences", "correct", "accuracy",
                  "wilson_low", "wilson_high", "method", "batch_size", "seconds_per_sequence",
                  "cpu_seconds_per_sequence", "peak_rss_gb", "device", "dtype", "peak_gpu_gb")
#: Columns of tables written before Mamba and devices existed, and what their rows were run with.
LEGACY_COLUMNS = {"encoding": "model"}
LEGACY_VALUES = {"device": "cpu", "dtype": "float32", "peak_gpu_gb": ""}
#: Stem prefix of the per-model accuracy tables.
TABLE_PREFIX = "accuracy_vs_length_"
#: The combined table of every model.
COMBINED_TABLE = "accuracy_vs_length.csv"
#: Columns of a training curve, in order.
CURVE_COLUMNS = ("step", "length", "train_loss", "train_accuracy", "val_accuracy", "wall_seconds")
#: File-name ending of a training curve (``NAME_training_curve.csv``).
CURVE_SUFFIX = "_training_curve.csv"


# ----------------------------------------------------------------------------- accuracy tables

def accuracy_table_path(save_dir: "str | Path", name: str) -> Path:
    """``save_dir/accuracy_vs_length_NAME.csv`` (its sidecar: the same with ``.json``)."""
    return Path(save_dir) / f"{TABLE_PREFIX}{name}.csv"


def _cell(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else value


def accuracy_csv(rows: Sequence[Mapping[str, object]]) -> str:
    """The text of an accuracy table: a header of :data:`RESULT_COLUMNS`, floats to 6 significant digits."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buffer.getvalue()


def read_accuracy_table(path: "str | Path") -> List[dict]:
    """Rows of an accuracy table (values as text); old tables read as CPU float32 runs (module docstring).

    Raises
    ------
    InputError
        A table whose columns are not :data:`RESULT_COLUMNS` (or the old ones).
    """
    rows = list(csv.DictReader(io.StringIO(read_text(path), newline="")))
    if not rows:
        return rows
    columns = {LEGACY_COLUMNS.get(c, c) for c in rows[0]}
    if not set(RESULT_COLUMNS) - set(LEGACY_VALUES) <= columns or not columns <= set(RESULT_COLUMNS):
        raise InputError(f"{path} does not have the columns {RESULT_COLUMNS}")
    return [{**LEGACY_VALUES, **{LEGACY_COLUMNS.get(k, k): v for k, v in row.items()}} for row in rows]


def read_accuracy_tables(save_dir: "str | Path") -> Dict[str, List[dict]]:
    """``{model name: rows}`` of every ``accuracy_vs_length_NAME.csv`` in ``save_dir``, in :func:`name_order`."""
    found = {p.stem[len(TABLE_PREFIX):]: p for p in Path(save_dir).glob(f"{TABLE_PREFIX}*.csv")}
    return {name: read_accuracy_table(found[name]) for name in sorted(found, key=name_order)}


def table_model_sha256(table_path: "str | Path") -> Optional[str]:
    """The SHA-256 of the model file an accuracy table's rows came from (its sidecar's), or None if not recorded."""
    sidecar = Path(table_path).with_suffix(".json")
    return load_json(sidecar).get("model_sha256") if sidecar.is_file() else None


def file_sha256(path: "str | Path") -> str:
    """SHA-256 of a file's bytes (hex): which model file a table's rows came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- accuracy against training step

#: Columns of a growth table (accuracy of a run's snapshots against training step), in order.
GROWTH_COLUMNS = ("run", "step", "snapshot", "model_sha256", "length", "log2_length", "n_sequences", "correct",
                  "accuracy", "wilson_low", "wilson_high", "cpu_seconds", "cpu_seconds_per_sequence", "wall_seconds",
                  "peak_rss_gb", "batch_size", "method", "device", "dtype")
#: Stem prefix of a growth table.
GROWTH_PREFIX = "growth_"
#: Integer columns of a growth table (the others but text ones are floats).
_GROWTH_INTEGERS = ("step", "length", "log2_length", "n_sequences", "correct", "batch_size")
_GROWTH_TEXT = ("run", "snapshot", "model_sha256", "method", "device", "dtype")


def growth_table_path(save_dir: "str | Path", name: str) -> Path:
    """``save_dir/growth_NAME.csv`` (its sidecar: the same with ``.json``)."""
    return Path(save_dir) / f"{GROWTH_PREFIX}{name}.csv"


def growth_pieces_folder(save_dir: "str | Path", name: str) -> Path:
    """``save_dir/growth_NAME_pieces/``: the finished (snapshot, length) pieces of a growth table."""
    return Path(save_dir) / f"{GROWTH_PREFIX}{name}_pieces"


def growth_csv(rows: Sequence[Mapping[str, object]]) -> str:
    """The text of a growth table: a header of :data:`GROWTH_COLUMNS`, floats to 6 significant digits."""
    return _columns_csv(rows, GROWTH_COLUMNS)


def _columns_csv(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """CSV text with a header of ``columns``, each row's values in that order, floats to 6 significant digits."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row[k]) for k in columns})
    return buffer.getvalue()


#: Columns of a memory table (a Mamba run's memory channels per snapshot,
#: :meth:`icl_cmr.synthetic.mamba_memory.ChannelMemory.memory_channels`), in order.
MEMORY_COLUMNS = ("run", "step", "model_sha256", "length", "n_sequences", "layer", "channel", "selectivity",
                  "target_step", "filler_step_mean", "filler_step_median", "slowest_rate", "decay_per_token",
                  "horizon", "median_horizon")


def growth_memory_path(save_dir: "str | Path", name: str) -> Path:
    """``save_dir/growth_memory_NAME.csv``: the memory channels of a Mamba run's snapshots."""
    return Path(save_dir) / f"{GROWTH_PREFIX}memory_{name}.csv"


#: Columns of a recall-distance table (one row per snapshot: the fit of
#: :func:`icl_cmr.synthetic.recall_distance.fit_recall_distance` to every sequence it scored), in order.
RECALL_COLUMNS = ("run", "step", "model_sha256", "n_sequences", "n_correct", "midpoint_log2", "slope",
                  "log2_distance_50", "log2_distance_99", "max_log2_distance")


def growth_recall_path(save_dir: "str | Path", name: str) -> Path:
    """``save_dir/growth_recall_NAME.csv``: how far back each snapshot of a run recalls."""
    return Path(save_dir) / f"{GROWTH_PREFIX}recall_{name}.csv"


def recall_csv(rows: Sequence[Mapping[str, object]]) -> str:
    """The text of a recall-distance table: a header of :data:`RECALL_COLUMNS`, floats to 6 significant digits."""
    return _columns_csv(rows, RECALL_COLUMNS)


def memory_csv(rows: Sequence[Mapping[str, object]]) -> str:
    """The text of a memory table: a header of :data:`MEMORY_COLUMNS`, floats to 6 significant digits."""
    return _columns_csv(rows, MEMORY_COLUMNS)


def read_growth_table(path: "str | Path") -> List[dict]:
    """Rows of a growth table, integers and floats as numbers.

    Raises
    ------
    InputError
        A table whose columns are not :data:`GROWTH_COLUMNS`.
    """
    rows = list(csv.DictReader(io.StringIO(read_text(path), newline="")))
    if rows and tuple(rows[0]) != GROWTH_COLUMNS:
        raise InputError(f"{path} does not have the columns {GROWTH_COLUMNS}")
    return [{k: (v if k in _GROWTH_TEXT else int(v) if k in _GROWTH_INTEGERS else float(v)) for k, v in row.items()}
            for row in rows]


# ----------------------------------------------------------------------------- training curves

def training_curve_path(save_dir: "str | Path", name: str) -> Path:
    """``save_dir/NAME_training_curve.csv``."""
    return Path(save_dir) / f"{name}{CURVE_SUFFIX}"


def training_summary_path(save_dir: "str | Path", name: str) -> Path:
    """``save_dir/NAME_training.json``: the metadata of a training run."""
    return Path(save_dir) / f"{name}_training.json"


def training_curve_csv(curve: Sequence[Mapping[str, object]]) -> str:
    """The text of a training curve: a header of :data:`CURVE_COLUMNS`, floats to 6 significant digits."""
    lines = [",".join(CURVE_COLUMNS)]
    lines += [",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in CURVE_COLUMNS)
              for row in curve]
    return "\n".join(lines) + "\n"


def read_training_curves(folders: Iterable["str | Path"]) -> Dict[str, Dict[str, np.ndarray]]:
    """Every ``NAME_training_curve.csv`` in ``folders``, by name (the first folder holding a name wins).

    Returns
    -------
    dict
        ``{name: {column: array [n_evaluations]}}`` in :func:`name_order`.
    """
    found: Dict[str, Path] = {}
    for folder in dict.fromkeys(Path(f) for f in folders):
        for path in folder.glob(f"*{CURVE_SUFFIX}"):
            found.setdefault(path.name[:-len(CURVE_SUFFIX)], path)
    curves = {}
    for name in sorted(found, key=name_order):
        table = np.genfromtxt(io.StringIO(read_text(found[name])), delimiter=",", names=True)
        curves[name] = {c: np.atleast_1d(table[c]) for c in table.dtype.names}
    return curves
