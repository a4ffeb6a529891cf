"""The induction task's models side by side: build, save-format, load, and how to run each.

Two architectures share the task (DESIGN.md section 7): the Transformer of
:mod:`icl_cmr.synthetic.transformer` (named after its position encoding: ``absolute``,
``rope``, ``alibi``, ``none``) and the Mamba of :mod:`icl_cmr.synthetic.mamba`
(named ``mamba``). A model file ``NAME.pt`` (or a training checkpoint) holds
``{"architecture", "model": state dict, "model_config": dict, ...}``; files without
``"architecture"`` are Transformers (written before Mamba existed).
"""
from __future__ import annotations

from pathlib import Path
import torch

from icl_cmr.errors import FileContentError, InputError
from icl_cmr.files.reading import load_torch
from icl_cmr.synthetic.transformer import (POSITION_ENCODINGS, TinyTransformer, TinyTransformerConfig,
                                           fastest_exact_method)

#: Architectures of the task.
ARCHITECTURES = ("transformer", "mamba")
#: Model names: the Transformer's position encodings, and "mamba".
MODEL_NAMES = tuple(POSITION_ENCODINGS) + ("mamba",)
#: Compute dtypes the scripts accept ("float32" is the reference; "bfloat16" for GPUs).
INDUCTION_DTYPES = ("float32", "bfloat16")
#: Bytes per position of the int64 token batch and the temporaries drawing it makes
#: (:func:`icl_cmr.synthetic.task.sample_induction_batch`, :func:`~icl_cmr.synthetic.task.validation_set`).
DATA_BYTES_PER_POSITION = 3 * 8
#: Peak bytes per position, per layer and per unit of width, measured on the CPU in float32
#: (``bench/bench_induction_memory.py``: peak resident memory of one training step / one
#: validation batch above the model's, default widths, batches of 2,000 x 16 to 2 x 16,384), rounded
#: up. Transformers: width d_model + d_mlp (measured 13.8 per training position at length 256 with
#: RoPE, 4.5 evaluating); Mamba: width d_inner x d_state, the states its backward pass keeps (12.6).
TRANSFORMER_TRAIN_BYTES = 14
TRANSFORMER_EVAL_BYTES = 5
MAMBA_TRAIN_BYTES = 13
#: Mamba evaluates in chunks (:data:`icl_cmr.synthetic.mamba.DEFAULT_CHUNK` positions): bytes per chunk
#: position, per layer and per unit of d_inner x d_state (measured 1.5 at chunks of 2^14).
MAMBA_EVAL_CHUNK_BYTES = 2
#: ALiBi trains through our own online-softmax blocks, which keep a score and a weight (float32) per
#: head, query and key: 8 bytes per head, layer and key (measured 130 per position and key at 8 heads,
#: 2 layers, lengths 16 to 1,024).
ALIBI_TRAIN_BYTES_PER_KEY = 8


def architecture_of(model) -> str:
    """``"transformer"`` or ``"mamba"``."""
    from icl_cmr.synthetic.mamba import InductionMamba

    if isinstance(model, InductionMamba):
        return "mamba"
    if isinstance(model, TinyTransformer):
        return "transformer"
    raise InputError(f"not an induction-task model: {type(model).__name__}")


def model_name(model) -> str:
    """The name used in file names and tables: the position encoding, or ``"mamba"``."""
    return "mamba" if architecture_of(model) == "mamba" else model.config.position_encoding


def model_config_dict(model) -> dict:
    """The config dict stored with the weights (rebuilds the model with :func:`build_model`)."""
    if architecture_of(model) == "mamba":
        return model.induction_config.to_dict()
    return model.config.to_dict()


def build_model(architecture: str, config: dict):
    """A freshly initialised model (seed torch first for reproducible weights), on the CPU in float32."""
    if architecture == "transformer":
        return TinyTransformer(TinyTransformerConfig(**config))
    if architecture == "mamba":
        from icl_cmr.synthetic.mamba import InductionMambaConfig, build_mamba

        return build_mamba(InductionMambaConfig(**config))
    raise InputError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")


def fastest_method(model) -> str:
    """The exact ``last_logits`` method for long inputs (see each model's ``last_logits``)."""
    if architecture_of(model) == "mamba":
        return "auto"
    return fastest_exact_method(model.config.position_encoding)


def linear_time(model) -> bool:
    """Whether :func:`fastest_method` takes time linear in length (else quadratic)."""
    return architecture_of(model) == "mamba" or fastest_method(model) == "token_types"


def model_device(model) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


def load_induction_model(path: "str | Path", device: str = "cpu", dtype: str = "float32"):
    """Load ``NAME.pt`` or ``NAME_checkpoint.pt`` (weights only, safe unpickling), in eval mode.

    Parameters
    ----------
    path : str or Path
    device : str
        A validated torch device name (:func:`icl_cmr.devices.resolve_device`).
    dtype : {"float32", "bfloat16"}
        Compute dtype; the file holds float32 weights.

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
        raise InputError(f"dtype must be one of {INDUCTION_DTYPES}, got {dtype!r}")
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


def model_file_contents(model, architecture: str, model_config: dict, metadata: dict) -> dict:
    """What a model file ``NAME.pt`` (or a snapshot of it) holds: read back by :func:`load_induction_model`.

    Parameters
    ----------
    model : TinyTransformer or InductionMamba
        Its state dict is stored (weights only, no optimiser state).
    architecture : {"transformer", "mamba"}
    model_config : dict
        The config that rebuilds the model (:func:`build_model`).
    metadata : dict
        What produced the weights (settings, step, ...).
    """
    return {"architecture": architecture, "model": model.state_dict(), "model_config": model_config,
            "metadata": metadata}


def snapshot_path(save_dir: "str | Path", name: str, step: int) -> Path:
    """``save_dir/NAME_snapshots/NAME_stepSSSSSS.pt``: the weights of run ``name`` after ``step`` training steps.

    Each is a model file (:func:`model_file_contents`) whose stem is a model name of its own, so
    ``eval_induction.py --models`` can evaluate it; kept in a subfolder, so the default evaluation of
    ``save_dir/*.pt`` does not pick every snapshot up. Six digits of step sort in training order up to
    999,999 steps.
    """
    if step < 0:
        raise InputError(f"step must be >= 0, got {step}")
    return Path(save_dir) / f"{name}_snapshots" / f"{name}_step{step:06d}.pt"


def saved_train_length(model, default: int = 256) -> int:
    """The training length: the Transformer's position-table size; Mamba has none, so ``default``."""
    if architecture_of(model) == "transformer":
        return model.config.n_trained_positions
    return default


def forward_memory_estimate(architecture: str, config: dict, batch_size: int, length: int,
                            training: bool) -> int:
    """Estimated peak bytes of one training step or one evaluation batch of ``[batch_size, length]``.

    The data (:data:`DATA_BYTES_PER_POSITION`) plus the activations, with the per-layer constants
    measured on this project's models (module constants; ``bench/bench_induction_memory.py`` prints
    measured against estimated). Transformers: linear in ``length``, plus a quadratic attention term
    when ALiBi trains; Mamba evaluating: the chunk's activations only (its state has a fixed size).

    Parameters
    ----------
    architecture : {"transformer", "mamba"}
    config : dict
        The model config (:func:`model_config_dict`).
    batch_size, length : int
        The batch shape.
    training : bool
        A training step (forward and backward) rather than an evaluation batch.

    Returns
    -------
    int
        Bytes (an estimate within tens of percent, not a bound).
    """
    from icl_cmr.synthetic.mamba import DEFAULT_CHUNK

    if architecture not in ARCHITECTURES:
        raise InputError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    positions = int(batch_size) * int(length)
    total = positions * DATA_BYTES_PER_POSITION
    layers = config["n_layers"]
    if architecture == "transformer":
        width = config["d_model"] + config["d_mlp"]
        total += positions * layers * width * (TRANSFORMER_TRAIN_BYTES if training else TRANSFORMER_EVAL_BYTES)
        if training and config.get("position_encoding") == "alibi":
            total += positions * layers * config["n_heads"] * int(length) * ALIBI_TRAIN_BYTES_PER_KEY
    else:
        state_width = config["expand"] * config["d_model"] * config["d_state"]
        if training:
            total += positions * layers * state_width * MAMBA_TRAIN_BYTES
        else:
            total += int(batch_size) * min(int(length), DEFAULT_CHUNK) * layers * state_width * MAMBA_EVAL_CHUNK_BYTES
    return total


def check_memory(needed_bytes: int, device: str, what: str) -> None:
    """Refuse work that cannot fit in the memory free on ``device`` now.

    Parameters
    ----------
    needed_bytes : int
        The memory the work needs (:func:`forward_memory_estimate`).
    device : str
        A validated device name; ``"cpu"`` reads Linux ``MemAvailable``, CUDA devices the free
        memory torch reports. Where neither is known nothing is checked.
    what : str
        The work, for the message (e.g. ``"training at batch 8 x length 256"``).

    Raises
    ------
    InputError
        ``needed_bytes`` exceeds the free memory.
    """
    from icl_cmr.files.unpickling import available_memory

    if device.startswith("cuda"):
        free = torch.cuda.mem_get_info(torch.device(device))[0]
    elif device == "cpu":
        free = available_memory()
    else:
        free = None
    if free is not None and needed_bytes > free:
        raise InputError(f"{what} needs about {needed_bytes / 2 ** 30:,.1f} GiB of memory and {device} has "
                         f"{free / 2 ** 30:,.1f} GiB free; use a smaller batch or length")
