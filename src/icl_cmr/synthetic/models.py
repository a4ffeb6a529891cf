"""The induction task's models side by side: build, run, and estimate the memory of each.

Two architectures share the task (DESIGN.md section 7): the Transformer of
:mod:`icl_cmr.synthetic.transformer` (named after its position encoding: ``absolute``,
``rope``, ``alibi``, ``none``) and the Mamba of :mod:`icl_cmr.synthetic.mamba`
(named ``mamba``). A model is rebuilt from its architecture and config dict
(:func:`build_model`); the model files that store them are :mod:`icl_cmr.files.induction_models`.
"""
from __future__ import annotations

import torch

from icl_cmr.errors import InputError
from icl_cmr.synthetic.mamba import DEFAULT_CHUNK, InductionMamba, InductionMambaConfig, build_mamba
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
