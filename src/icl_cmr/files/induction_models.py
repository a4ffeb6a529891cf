"""Files of the induction task's models: model files, snapshots and training checkpoints (DESIGN.md section 7).

Every file is a ``torch.save`` dict of plain types and tensors, read back with weights-only
unpickling (:func:`icl_cmr.files.reading.load_torch`) and written atomically:

* a model file ``NAME.pt`` (and each snapshot ``NAME_snapshots/NAME_stepSSSSSS.pt``) holds
  ``{"architecture", "model": state dict, "model_config": dict, "metadata": dict}``
  (:func:`model_file_contents`); files without ``"architecture"`` are Transformers (written before
  Mamba existed);
* a training checkpoint ``NAME_checkpoint.pt`` holds the keys of :data:`CHECKPOINT_KEYS` (weights,
  Adam state, the data stream's RNG state, the curve so far, ...) and ``"architecture"``
  (:func:`checkpoint_contents`). One that cannot be read as such is set aside, never overwritten
  (:func:`set_aside`).

The models themselves are built by :mod:`icl_cmr.synthetic.models`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import torch

from icl_cmr.errors import CorruptFileError, FileContentError, InputError
from icl_cmr.files.reading import load_torch
from icl_cmr.files.writing import atomic_write
from icl_cmr.synthetic.models import INDUCTION_DTYPES, MODEL_NAMES, build_model

#: Keys every training checkpoint holds.
CHECKPOINT_KEYS = ("model", "optimizer", "rng_state", "step", "stage", "curve", "wall_seconds", "model_config",
                   "parameters")
#: Stem suffix of a training checkpoint (``NAME_checkpoint.pt``).
CHECKPOINT_SUFFIX = "_checkpoint"


class DamagedCheckpoint(FileContentError):
    """A checkpoint that cannot be read or does not hold a training state."""


# ----------------------------------------------------------------------------- names

def model_path(save_dir: "str | Path", name: str) -> Path:
    """``save_dir/NAME.pt``: the final weights of run ``name``."""
    return Path(save_dir) / f"{name}.pt"


def checkpoint_path(save_dir: "str | Path", name: str) -> Path:
    """``save_dir/NAME_checkpoint.pt``: the training state of run ``name``."""
    return Path(save_dir) / f"{name}{CHECKPOINT_SUFFIX}.pt"


def snapshot_path(save_dir: "str | Path", name: str, step: int) -> Path:
    """``save_dir/NAME_snapshots/NAME_stepSSSSSS.pt``: the weights of run ``name`` after ``step`` training steps.

    Each is a model file (:func:`model_file_contents`) whose stem is a model name of its own, so
    ``eval_induction.py --models`` can evaluate it; kept in a subfolder, so the default evaluation of
    ``save_dir/*.pt`` does not pick every snapshot up. Six digits of step sort in training order up to
    999,999 steps.
    """
    if step < 0:
        raise InputError(f"`step` must be >= 0, got {step}", parameters=("step",))
    return Path(save_dir) / f"{name}_snapshots" / f"{name}_step{step:06d}.pt"


def model_name_of(path: "str | Path") -> str:
    """The model name of a model file or checkpoint: its stem, without ``_checkpoint``."""
    stem = Path(path).stem
    return stem[:-len(CHECKPOINT_SUFFIX)] if stem.endswith(CHECKPOINT_SUFFIX) else stem


def name_order(name: str) -> tuple:
    """Sort key of model names: the known ones first, in :data:`MODEL_NAMES` order, then the rest alphabetically."""
    return (MODEL_NAMES.index(name) if name in MODEL_NAMES else len(MODEL_NAMES), name)


def model_files_in(save_dir: "str | Path") -> List[Path]:
    """Every model file ``NAME.pt`` in ``save_dir`` (checkpoints excluded), in :func:`name_order`.

    Raises
    ------
    FileNotFoundError
        When there is none.
    """
    found = sorted((p for p in Path(save_dir).glob("*.pt") if not p.stem.endswith(CHECKPOINT_SUFFIX)),
                   key=lambda p: name_order(p.stem))
    if not found:
        raise FileNotFoundError(f"no trained model (NAME.pt) in {save_dir}; run train_induction.py first")
    return found


# ----------------------------------------------------------------------------- model files

def save_torch(path: "str | Path", contents: Mapping[str, Any]) -> Path:
    """``torch.save`` of ``contents`` to ``path``, atomically (a killed run never leaves half a file)."""
    return atomic_write(path, lambda handle: torch.save(contents, handle))


def model_file_contents(model: torch.nn.Module, architecture: str, model_config: dict, metadata: dict) -> dict:
    """What a model file ``NAME.pt`` (or a snapshot of it) holds: read back by :func:`load_induction_model`.

    Parameters
    ----------
    model : TinyTransformer or InductionMamba
        Its state dict is stored (weights only, no optimiser state).
    architecture : {"transformer", "mamba"}
    model_config : dict
        The config that rebuilds the model (:func:`icl_cmr.synthetic.models.build_model`).
    metadata : dict
        What produced the weights (settings, step, ...).
    """
    return {"architecture": architecture, "model": model.state_dict(), "model_config": model_config,
            "metadata": metadata}


def load_induction_model(path: "str | Path", device: str = "cpu", dtype: str = "float32") -> torch.nn.Module:
    """Load ``NAME.pt`` or ``NAME_checkpoint.pt`` (weights only, safe unpickling), in eval mode.

    Parameters
    ----------
    path : str or Path
    device : str
        A validated torch device name (:func:`icl_cmr.devices.resolve_device`).
    dtype : {"float32", "bfloat16"}
        Compute dtype; the file holds float32 weights.

    Returns
    -------
    TinyTransformer or InductionMamba

    Raises
    ------
    FileContentError
        The file holds no induction-task model, a config that cannot be built, or weights that do
        not fit it (the message names the file).
    CorruptFileError, UnsafeFileError
        From :func:`icl_cmr.files.reading.load_torch`.
    InputError
        An unknown dtype.
    FileNotFoundError
    """
    if dtype not in INDUCTION_DTYPES:
        raise InputError(f"`dtype` must be one of {INDUCTION_DTYPES}, got {dtype!r}", parameters=("dtype",))
    path = Path(path)
    saved = load_torch(path)
    expected = "expected a file written by train_induction.py"
    if not isinstance(saved, dict):
        raise FileContentError(path, f"not an induction-task model (holds a {type(saved).__name__}; {expected})")
    missing = [key for key in ("model", "model_config") if key not in saved]
    if missing:
        raise FileContentError(path, f"not an induction-task model (no {' or '.join(map(repr, missing))}; {expected})")
    try:
        model = build_model(saved.get("architecture", "transformer"), saved["model_config"])
    except (InputError, TypeError, ValueError) as err:
        raise FileContentError(path, f"holds a model config that cannot be built: {err}") from None
    if not isinstance(saved["model"], dict):
        raise FileContentError(path, f"'model' holds a {type(saved['model']).__name__}, not a state dict")
    try:
        result = model.load_state_dict(saved["model"], strict=False)
    except RuntimeError as err:     # shapes that differ from the config's
        first = " ".join(str(err).split("\n\t")[1:2]) or str(err).splitlines()[0]
        raise FileContentError(path, f"its weights do not fit its model config ({first[:200]})") from None
    if result.missing_keys or result.unexpected_keys:
        raise FileContentError(path, f"its weights do not fit its model config ({len(result.missing_keys)} missing, "
                                     f"{len(result.unexpected_keys)} unexpected; first: "
                                     f"{(result.missing_keys + result.unexpected_keys)[0]})")
    model.eval()
    return model.to(device=device, dtype=getattr(torch, dtype))


def model_file_metadata(path: "str | Path") -> Dict[str, Any]:
    """The ``metadata`` dict of a model file (weights-only unpickling; {} when it records none).

    Raises
    ------
    CorruptFileError, UnsafeFileError
        From :func:`icl_cmr.files.reading.load_torch`.
    """
    saved = load_torch(path)
    metadata = saved.get("metadata") if isinstance(saved, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def model_file_step(path: "str | Path") -> int:
    """The training steps behind a model file: a snapshot's metadata ``step``, else a final ``NAME.pt``'s ``steps``.

    Raises
    ------
    FileContentError
        The file records neither (the message names the file).
    CorruptFileError, UnsafeFileError
        From :func:`icl_cmr.files.reading.load_torch`.
    """
    metadata = model_file_metadata(path)
    step = metadata.get("step", metadata.get("steps"))
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise FileContentError(Path(path), "records no training step (metadata 'step' of a snapshot, or 'steps' of "
                                           "a final model file written by train_induction.py)")
    return step


# ----------------------------------------------------------------------------- training checkpoints

def checkpoint_contents(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rng: np.random.Generator,
                        step: int, stage: int, curve: Sequence[dict], wall_seconds: float, model_config: dict,
                        architecture: str, parameters: Mapping[str, Any]) -> Dict[str, Any]:
    """What ``NAME_checkpoint.pt`` holds: everything a resumed run needs to continue bit for bit.

    Parameters
    ----------
    model, optimizer
        Their state dicts are stored.
    rng : numpy.random.Generator
        The training data stream; its bit generator's state is stored.
    step, stage : int
        Steps done and the curriculum stage reached.
    curve : sequence of dict
        The evaluations so far (``step``, ``length``, ``train_loss``, ...).
    wall_seconds : float
        Training time over every session so far.
    model_config : dict
        The config that rebuilds the model.
    architecture : {"transformer", "mamba"}
    parameters : mapping
        The run's settings (what a resumed run is compared with).
    """
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng_state": rng.bit_generator.state,
            "step": step, "stage": stage, "curve": list(curve), "wall_seconds": wall_seconds,
            "model_config": model_config, "architecture": architecture, "parameters": dict(parameters)}


def read_checkpoint(path: "str | Path") -> dict:
    """Load a training checkpoint (weights only) and check that it holds a training state.

    Raises
    ------
    DamagedCheckpoint
        Truncated or garbled file, or one without the keys of a training state.
    icl_cmr.errors.UnsafeFileError
        A file that would run code when loaded: refused in one line, never discarded or overwritten
        silently (a restart trains from scratch and replaces it).
    """
    try:
        saved = load_torch(path)
    except CorruptFileError as err:
        raise DamagedCheckpoint(path, err.problem) from None
    if not isinstance(saved, dict) or any(key not in saved for key in CHECKPOINT_KEYS):
        raise DamagedCheckpoint(path, f"not a training checkpoint (expected keys {', '.join(CHECKPOINT_KEYS)})")
    return saved


def set_aside(path: "str | Path") -> Path:
    """Rename a damaged checkpoint to ``NAME.damaged`` (``NAME.damaged.1``, ... when taken); the new path.

    Nothing is deleted: a checkpoint that cannot be used may still be worth a look.
    """
    path = Path(path)
    target = path.with_name(path.name + ".damaged")
    index = 0
    while target.exists():
        index += 1
        target = path.with_name(f"{path.name}.damaged.{index}")
    path.replace(target)
    return target
