"""Training a model on [GD23]'s induction-heads task as one resumable run (DESIGN.md section 7; ``train_induction.py``).

* :class:`InductionTrainSettings` holds everything ``train_induction.py``'s flags set, with the same names and
  defaults; :meth:`~InductionTrainSettings.resolved` fills in the architecture's own defaults and checks them.
* :func:`check_induction_training` checks, before any work, that a training step and a validation batch fit in
  memory and that the run's checkpoint (if any) can be resumed with these settings.
* :func:`run_induction_training` trains, writing ``NAME_checkpoint.pt`` at every evaluation (and, with
  ``snapshot_every``, the weights every N steps), and returns an :class:`InductionTrainingRun`: the trained
  model, its curve and timings. A killed run resumes from its checkpoint and ends with the weights an
  uninterrupted run would have.
* :func:`training_outputs` queues the final files (``NAME.pt``, the curve, the metadata, the figure).

The resume rules (``train_induction.py``'s docstring): the checkpoint's settings must be this run's, except
:data:`RESUMABLE_CHANGES`; other settings are refused (:func:`icl_cmr.files.resume.refuse_other_settings`),
``restart`` trains from scratch instead. A checkpoint that cannot be read, or that does not fit the model, is
set aside as ``NAME_checkpoint.pt.damaged`` (``.damaged.1``, ...) with a warning, and training starts over.

Examples
--------
>>> settings = InductionTrainSettings(architecture="mamba", train_length=12, d_model=16, max_steps=30,
...                                   save_dir=Path("/tmp/induction"), name="tiny")       # doctest: +SKIP
>>> run = run_induction_training(settings)                                              # doctest: +SKIP
>>> run.curve[-1]["val_accuracy"], run.wall_seconds                                     # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from icl_cmr.devices import check_worker_count, resolve_device
from icl_cmr.errors import InputError
from icl_cmr.figures.synthetic import plot_training_curves
from icl_cmr.files.induction_models import (DamagedCheckpoint, checkpoint_contents, checkpoint_path,
                                            model_file_contents, model_path, read_checkpoint, save_torch, set_aside,
                                            snapshot_path)
from icl_cmr.files.induction_tables import (CURVE_COLUMNS, training_curve_csv, training_curve_path,
                                            training_summary_path)
from icl_cmr.files.outputs import REPO_ROOT, PendingWrites, portable_path
from icl_cmr.files.resume import refuse_other_settings
from icl_cmr.files.writing import make_metadata
from icl_cmr.files.memory import check_memory, free_memory, memory_drivers
from icl_cmr.synthetic import task
from icl_cmr.synthetic.mamba import InductionMambaConfig
from icl_cmr.synthetic.models import (ARCHITECTURES, INDUCTION_DTYPES, build_model, fastest_method,
                                      forward_memory_estimate)
from icl_cmr.synthetic.transformer import TinyTransformerConfig

logger = logging.getLogger(__name__)

#: The producer recorded in the metadata (the script users run).
PRODUCER = "train_induction.py"
#: The default output folders, in the repository.
DEFAULT_SAVE_DIR = REPO_ROOT / "saved_models" / "induction_task"
DEFAULT_FIG_DIR = REPO_ROOT / "figs" / "induction_task"
#: Settings that may differ between a checkpoint and the run resuming it: the step budget, the thread
#: count and the device (results stay reproducible only for a fixed count and device; a warning says
#: so), and where things go (snapshots included: they do not change the training).
RESUMABLE_CHANGES = ("max_steps", "min_steps", "threads", "device", "name", "save_dir", "fig_dir", "snapshot_every")
#: Values of settings that checkpoints written before the setting existed were trained with.
LEGACY_SETTINGS = {"architecture": "transformer", "dtype": "float32", "norm": "rmsnorm",
                   "initialization": "transformers"}
#: Model settings of one architecture only (None: that architecture's default).
TRANSFORMER_ONLY = ("position_encoding", "n_heads", "d_mlp")
MAMBA_ONLY = ("d_state", "expand", "d_conv", "norm", "initialization")
#: A run name: a file-name stem, not that of a checkpoint or a model file.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

_TASK, _TRANSFORMER, _MAMBA = task.InductionTaskConfig(), TinyTransformerConfig(), InductionMambaConfig()


def is_run_name(text: str) -> bool:
    """Whether ``text`` can name a run's files: letters, digits, ``_``, ``-``, ``.``; not ``*_checkpoint``/``*.pt``."""
    return bool(RUN_NAME.fullmatch(text)) and not text.endswith("_checkpoint") and not text.endswith(".pt")


@dataclass(frozen=True)
class InductionTrainSettings:
    """A training run, as ``train_induction.py``'s flags set it (same names, same defaults).

    Attributes
    ----------
    architecture : {"transformer", "mamba"}
    position_encoding, n_heads, d_mlp : optional
        Transformer only (:class:`~icl_cmr.synthetic.transformer.TinyTransformerConfig`; None: its default,
        absolute positions, 8 heads, MLP 256).
    d_state, expand, d_conv : int, optional
        Mamba only (:class:`~icl_cmr.synthetic.mamba.InductionMambaConfig`; None: its default, 16, 2, 4).
    norm, initialization : str, optional
        Mamba only: ``"rmsnorm"`` or ``"layernorm"``, ``"transformers"`` or ``"mamba_ssm"`` (None: the
        shipped models' RMSNorm and ``transformers``' initialisation; the others are ``mamba_ssm``'s first release).
    d_model, n_layers : int
        Both architectures (64 and 2, DESIGN.md section 7).
    save_dir, fig_dir : Path
        Where the checkpoint, snapshots and final files go, and the training-curve figure.
    seed, val_seed : int
        Seeds of the weights and the training stream, and of the fixed validation sets.
    learning_rate, batch_size, train_length, max_steps, eval_every, n_val, target_accuracy
        As :class:`~icl_cmr.synthetic.task.InductionTaskConfig`.
    curriculum : tuple of int
        Shorter lengths trained on first, each until its validation accuracy reaches ``target_accuracy``.
    min_steps : int
        Train at least this many steps before the target may stop the run ([GD23]: a fixed 204,800).
    name : str, optional
        File-name stem of the outputs (default: the position encoding, or ``mamba``).
    snapshot_every : int
        Keep the weights every N steps (0: none).
    device : str, optional
        Default: CUDA when available, else the CPU.
    dtype : {"float32", "bfloat16"}
        Compute dtype of the forward pass (bfloat16: autocast; weights and Adam state stay float32).
    threads : int
        Torch CPU threads (results are reproducible for a fixed count).
    """

    architecture: str = "transformer"
    position_encoding: Optional[str] = None
    save_dir: Path = DEFAULT_SAVE_DIR
    fig_dir: Path = DEFAULT_FIG_DIR
    seed: int = _TASK.train_seed
    val_seed: int = _TASK.val_seed
    learning_rate: float = _TASK.learning_rate
    batch_size: int = _TASK.batch_size
    train_length: int = _TASK.train_length
    curriculum: Tuple[int, ...] = ()
    max_steps: int = _TASK.max_steps
    min_steps: int = 0
    name: Optional[str] = None
    snapshot_every: int = 0
    eval_every: int = _TASK.eval_every
    n_val: int = _TASK.n_val_sequences
    target_accuracy: float = _TASK.target_accuracy
    d_model: int = _TRANSFORMER.d_model
    n_layers: int = _TRANSFORMER.n_layers
    n_heads: Optional[int] = None
    d_mlp: Optional[int] = None
    d_state: Optional[int] = None
    expand: Optional[int] = None
    d_conv: Optional[int] = None
    norm: Optional[str] = None
    initialization: Optional[str] = None
    device: Optional[str] = None
    dtype: str = "float32"
    threads: int = 1

    def resolved(self) -> "InductionTrainSettings":
        """These settings checked, with the architecture's defaults and the device filled in.

        Raises
        ------
        InputError
            Contradicting settings (``min_steps`` above ``max_steps``, a curriculum stage not below
            ``train_length``, a model setting of the other architecture, a model that cannot be built),
            or a device this machine does not have.
        """
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"`architecture` must be one of {ARCHITECTURES}, got {self.architecture!r}",
                             parameters=("architecture",))
        if self.dtype not in INDUCTION_DTYPES:
            raise InputError(f"`dtype` must be one of {INDUCTION_DTYPES}, got {self.dtype!r}", parameters=("dtype",))
        if self.name is not None and not is_run_name(self.name):
            raise InputError(f"`name` must be a file-name stem: letters, digits, '_', '-' or '.' (not ending in "
                             f"'_checkpoint' or '.pt'), got {self.name!r}", parameters=("name",))
        check_worker_count(self.threads, "threads")
        if not 1 <= self.n_val <= task.MAX_VALIDATION_SEQUENCES:
            raise InputError(f"`n_val` must be in [1, {task.MAX_VALIDATION_SEQUENCES}] (each evaluation scores them "
                             f"all), got {self.n_val}", parameters=("n_val",))
        if self.min_steps > self.max_steps:
            raise InputError(f"`min_steps` ({self.min_steps}) must be <= `max_steps` ({self.max_steps})",
                             parameters=("min_steps", "max_steps"))
        curriculum = tuple(int(length) for length in self.curriculum)
        if list(curriculum) != sorted(set(curriculum)) or (curriculum and curriculum[0] < 3):
            raise InputError(f"`curriculum` must be increasing lengths >= 3, got {','.join(map(str, curriculum))}",
                             parameters=("curriculum",))
        if curriculum and curriculum[-1] >= self.train_length:
            raise InputError(f"`curriculum` lengths must be below `train_length` {self.train_length}, "
                             f"got {','.join(map(str, curriculum))}", parameters=("curriculum", "train_length"))
        other = TRANSFORMER_ONLY if self.architecture == "mamba" else MAMBA_ONLY
        wrong = [name for name in other if getattr(self, name) is not None]
        if wrong:
            raise InputError(f"{', '.join(f'`{name}`' for name in wrong)} do{'es' if len(wrong) == 1 else ''} not "
                             f"apply to `architecture` {self.architecture}", parameters=(*wrong, "architecture"))
        if self.architecture == "transformer":
            filled = dataclasses.replace(
                self, curriculum=curriculum,
                position_encoding=self.position_encoding or _TRANSFORMER.position_encoding,
                n_heads=self.n_heads or _TRANSFORMER.n_heads, d_mlp=self.d_mlp or _TRANSFORMER.d_mlp)
        else:
            filled = dataclasses.replace(self, curriculum=curriculum, d_state=self.d_state or _MAMBA.d_state,
                                         expand=self.expand or _MAMBA.expand, d_conv=self.d_conv or _MAMBA.d_conv,
                                         norm=self.norm or _MAMBA.norm,
                                         initialization=self.initialization or _MAMBA.initialization)
        filled.model_config()   # a model that cannot be built is refused here, naming its setting
        return dataclasses.replace(filled, device=resolve_device(self.device))

    @property
    def run_name(self) -> str:
        """The file-name stem of the run: ``name``, else the position encoding, or ``mamba``."""
        return self.name or (self.position_encoding if self.architecture == "transformer" else "mamba")

    @property
    def stages(self) -> List[int]:
        """Training lengths in order: the curriculum, then ``train_length``."""
        return list(self.curriculum) + [self.train_length]

    def model_config(self) -> dict:
        """The model config dict of the run (what the checkpoint and ``NAME.pt`` store); of resolved settings."""
        if self.architecture == "mamba":
            return InductionMambaConfig(vocab_size=_TASK.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                                        d_state=self.d_state, expand=self.expand, d_conv=self.d_conv,
                                        norm=self.norm, initialization=self.initialization).to_dict()
        return TinyTransformerConfig(
            vocab_size=_TASK.vocab_size, n_layers=self.n_layers, n_heads=self.n_heads, d_model=self.d_model,
            d_mlp=self.d_mlp, position_encoding=self.position_encoding, n_trained_positions=self.train_length,
            extra_position_seed=self.seed).to_dict()

    def parameters(self) -> Dict[str, Any]:
        """The settings as recorded in the checkpoint and the metadata: JSON types, portable paths, no None."""
        recorded = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Path):
                value = portable_path(value)
            elif isinstance(value, tuple):
                value = list(value)
            if value is not None:
                recorded[field.name] = value
        return recorded


# ----------------------------------------------------------------------------- checks before any work

#: Bytes per parameter while training: float32 weights, their gradients and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 4 * 4
#: The model settings whose size the memory check weighs, with modest values to name the ones that drive it.
_MODEL_SIZE_SETTINGS = ("d_model", "n_layers", "n_heads", "d_mlp", "d_state", "expand", "d_conv")


def parameter_count(architecture: str, config: dict) -> int:
    """Parameters of the model ``config`` describes, counted on torch's meta device (nothing is allocated).

    Models of one and of two layers are built and the per-layer count extrapolated to ``n_layers``
    (every layer has the same shape), so that ``n_layers`` = 10^8 costs no more than 2. A model too
    large for torch to describe (a dimension past 2^63 elements) counts as 2^62.
    """
    try:
        one, two = (_meta_parameter_count(architecture, {**config, "n_layers": layers}) for layers in (1, 2))
    except (RuntimeError, ValueError, OverflowError, TypeError):
        return 2 ** 62
    return one + (int(config["n_layers"]) - 1) * (two - one)


def _meta_parameter_count(architecture: str, config: dict) -> int:
    """Parameters of ``build_model(architecture, config)`` built on the meta device."""
    with torch.device("meta"):
        model = build_model(architecture, config)
    return int(sum(parameter.numel() for parameter in model.parameters()))


def training_memory_bytes(settings: InductionTrainSettings) -> int:
    """Estimated peak bytes of training (of resolved settings): the weights, gradients and Adam state, and the
    larger of one training step and one validation batch at ``train_length``
    (:func:`~icl_cmr.synthetic.models.forward_memory_estimate`; validation runs batches of at most
    :data:`icl_cmr.synthetic.task.VALIDATION_BATCH_SIZE` sequences)."""
    config, length = settings.model_config(), settings.train_length
    weights = parameter_count(settings.architecture, config) * TRAINING_BYTES_PER_PARAMETER
    step = forward_memory_estimate(settings.architecture, config, settings.batch_size, length, training=True)
    batch = min(settings.n_val, task.VALIDATION_BATCH_SIZE)
    validation = forward_memory_estimate(settings.architecture, config, batch, length, training=False)
    return weights + max(step, validation)


def check_training_memory(settings: InductionTrainSettings) -> None:
    """Refuse training that cannot fit in memory (of resolved settings; :func:`training_memory_bytes`), naming the
    settings that drive the estimate: the batch and length, or the model's size."""
    model_sizes = [name for name in _MODEL_SIZE_SETTINGS if getattr(settings, name) is not None]
    values = {name: int(getattr(settings, name)) for name in ("batch_size", "train_length", *model_sizes)}
    defaults = dataclasses.replace(InductionTrainSettings(architecture=settings.architecture), device="cpu").resolved()
    modest = {name: min(values[name], int(getattr(defaults, name))) for name in values}

    def estimate(changed) -> int:
        return training_memory_bytes(dataclasses.replace(settings, **changed))

    free = free_memory(settings.device)
    if free is None or estimate(values) <= free:
        return
    drivers = memory_drivers(estimate, values, modest, free)
    config, length = settings.model_config(), settings.train_length
    batch = min(settings.n_val, task.VALIDATION_BATCH_SIZE)
    if (forward_memory_estimate(settings.architecture, config, batch, length, training=False)
            > forward_memory_estimate(settings.architecture, config, settings.batch_size, length, training=True)):
        what = f"validation at {batch} sequences x `train_length` {length}"
    else:
        what = f"training at `batch_size` {settings.batch_size} x `train_length` {length}"
    sizes = [name for name in drivers if name in _MODEL_SIZE_SETTINGS]
    if sizes:
        what += f" with a model of {', '.join(f'`{name}` {values[name]}' for name in sizes)}"
    check_memory(estimate(values), settings.device, what, drivers, mentioned=("batch_size", "train_length"))


@dataclass
class TrainingPlan:
    """What :func:`check_induction_training` found: resolved settings and the checkpoint to resume.

    Attributes
    ----------
    settings : InductionTrainSettings
        Resolved (:meth:`InductionTrainSettings.resolved`).
    checkpoint : Path
        ``NAME_checkpoint.pt`` of the run.
    saved : dict, optional
        Its contents, when it exists, holds a training state with these settings, and ``restart`` is off.
    damage : str, optional
        Why it cannot be read, when it cannot (the run sets it aside and starts over).
    """

    settings: InductionTrainSettings
    checkpoint: Path
    saved: Optional[dict] = None
    damage: Optional[str] = None


def _changed_view(saved: dict, settings: InductionTrainSettings) -> Tuple[dict, dict]:
    """The checkpoint's settings and this run's, as :func:`refuse_other_settings` compares them.

    Every setting of this run except :data:`RESUMABLE_CHANGES`, and the model config; a setting the
    checkpoint predates counts with its :data:`LEGACY_SETTINGS` value, and so does a field its model
    config predates.
    """
    stored = saved["parameters"] if isinstance(saved["parameters"], dict) else {}
    requested = {key: value for key, value in settings.parameters().items() if key not in RESUMABLE_CHANGES}
    there = {key: stored.get(key, LEGACY_SETTINGS.get(key)) for key in requested}
    model_config = settings.model_config()
    saved_config = saved["model_config"]
    if isinstance(saved_config, dict):
        saved_config = {**saved_config, **{key: LEGACY_SETTINGS[key] for key in model_config
                                           if key in LEGACY_SETTINGS and key not in saved_config}}
    return {"model_config": saved_config, **there}, {"model_config": model_config, **requested}


def check_induction_training(settings: InductionTrainSettings, restart: bool = False) -> TrainingPlan:
    """Everything checked before any work: the settings, the memory, and the checkpoint to resume.

    Reads only: a damaged checkpoint is recorded in the plan (the run sets it aside).

    Raises
    ------
    InputError
        As :meth:`InductionTrainSettings.resolved`; work that cannot fit in memory; a checkpoint from other
        settings (``restart`` trains from scratch instead).
    icl_cmr.errors.UnsafeFileError
        A checkpoint that would run code when loaded (never discarded silently).
    """
    settings = settings.resolved()
    check_training_memory(settings)
    plan = TrainingPlan(settings, checkpoint_path(settings.save_dir, settings.run_name))
    if plan.checkpoint.is_file() and not restart:
        try:
            plan.saved = read_checkpoint(plan.checkpoint)
        except DamagedCheckpoint as err:
            plan.damage = err.problem
        else:
            saved_view, requested = _changed_view(plan.saved, settings)
            refuse_other_settings(saved_view, requested, plan.checkpoint, "the checkpoint")
    return plan


# ----------------------------------------------------------------------------- the run

@dataclass
class InductionTrainingRun:
    """A finished training run.

    Attributes
    ----------
    settings : InductionTrainSettings
        Resolved.
    model : TinyTransformer or InductionMamba
        The trained model (on ``settings.device``, float32 weights).
    curve : list of dict
        One row per evaluation: :data:`icl_cmr.files.induction_tables.CURVE_COLUMNS`.
    steps : int
        Steps trained, over every session.
    reached_target : bool
        Whether the last evaluation at ``train_length`` reached ``target_accuracy``.
    resumed_from_step : int, optional
        The checkpoint's step this session started from (None: from scratch).
    wall_seconds, session_seconds : float
        Training time over every session, and of this one.
    """

    settings: InductionTrainSettings
    model: torch.nn.Module
    curve: List[dict]
    steps: int
    reached_target: bool
    resumed_from_step: Optional[int]
    wall_seconds: float
    session_seconds: float

    def metadata(self) -> Dict[str, Any]:
        """``NAME_training.json``: the settings, the outcome and the timings."""
        settings = self.settings
        final = self.curve[-1] if self.curve else {"val_accuracy": float("nan")}
        stage_steps = {int(row["length"]): int(row["step"]) for row in self.curve}  # last eval at each length
        first_at_target = next((int(row["step"]) for row in self.curve if row["length"] == settings.train_length
                                and row["val_accuracy"] >= settings.target_accuracy), None)
        return make_metadata(
            PRODUCER, settings.parameters(), seed=settings.seed, steps=self.steps, last_step_per_length=stage_steps,
            first_step_at_target=first_at_target, wall_seconds=self.wall_seconds,
            wall_time_this_session_s=self.session_seconds, resumed=self.resumed_from_step is not None,
            resumed_from_step=self.resumed_from_step, threads=settings.threads, reached_target=self.reached_target,
            final_val_accuracy=final["val_accuracy"], final_val_length=final.get("length", settings.train_length),
            device=settings.device, dtype=settings.dtype, architecture=settings.architecture,
            model_config=settings.model_config(),
            task={"vocab_size": _TASK.vocab_size, "trigger_token": _TASK.trigger_token})

    def curve_arrays(self) -> Dict[str, np.ndarray]:
        """The curve by column: ``{column: array [n_evaluations]}``."""
        return {c: np.array([row[c] for row in self.curve]) for c in CURVE_COLUMNS}


def _fresh(settings: InductionTrainSettings):
    """A model, its Adam optimiser and the training stream, as at step 0."""
    torch.manual_seed(settings.seed)
    # Built on the CPU, then moved: the same initial weights on every device.
    model = build_model(settings.architecture, settings.model_config()).to(settings.device)
    return (model, torch.optim.Adam(model.parameters(), lr=settings.learning_rate),
            np.random.default_rng([settings.seed, 7]))  # the training stream; validation uses val_seed


def _restore(plan: TrainingPlan, model, optimizer, rng) -> Optional[Tuple[int, int, list, float]]:
    """Load the checkpoint into the fresh state: ``(step, stage, curve, wall seconds)``, or None to start over.

    The one place where a checkpoint that cannot be resumed (unreadable, or not fitting this model) is set
    aside, with a warning.
    """
    why = None
    if plan.damage is not None:
        why = f"is damaged ({plan.damage}); nothing in it can be used:"
    elif plan.saved is not None:
        saved = plan.saved
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            rng.bit_generator.state = saved["rng_state"]
            restored = int(saved["step"]), int(saved["stage"]), list(saved["curve"]), float(saved["wall_seconds"])
            if not 0 <= restored[1] < len(plan.settings.stages):
                raise ValueError(f"stage {restored[1]} outside the curriculum")
            return restored
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            why = f"does not fit this model ({err});"
    if why is not None:
        damaged = set_aside(plan.checkpoint)
        logger.warning("checkpoint %s %s moved it to %s and training from scratch", plan.checkpoint, why, damaged)
    return None


def _warn_changed_machine(saved: dict, settings: InductionTrainSettings) -> None:
    for key in ("threads", "device"):
        before = saved["parameters"].get(key, "cpu" if key == "device" else None)
        if before != getattr(settings, key):
            logger.warning("resuming with %s %s; the checkpoint was trained with %s, so the weights may differ in the "
                           "last digits from an uninterrupted run", key, getattr(settings, key), before)


def run_induction_training(settings: "InductionTrainSettings | TrainingPlan", restart: bool = False,
                           progress: bool = True) -> InductionTrainingRun:
    """Train (or resume training) a model on the induction task.

    Parameters
    ----------
    settings : InductionTrainSettings or TrainingPlan
        The run, or what :func:`check_induction_training` made of it (``restart`` then applied already).
    restart : bool
        Train from scratch, replacing the run's checkpoint, instead of resuming it.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    InductionTrainingRun

    Raises
    ------
    InputError
        As :func:`check_induction_training`, before any work; and a loss that is not finite (the run
        diverged: the last checkpoint is kept).

    Notes
    -----
    ``NAME_checkpoint.pt`` (:func:`icl_cmr.files.induction_models.checkpoint_contents`) is written atomically
    at every evaluation; with ``snapshot_every`` N, ``NAME_snapshots/NAME_stepSSSSSS.pt`` after every N steps,
    before that step's checkpoint, so a resumed run never skips one.
    """
    plan = settings if isinstance(settings, TrainingPlan) else check_induction_training(settings, restart)
    settings = plan.settings
    torch.set_num_threads(settings.threads)
    parameters, model_config, stages = settings.parameters(), settings.model_config(), settings.stages
    name, compute_dtype = settings.run_name, getattr(torch, settings.dtype)
    model, optimizer, rng = _fresh(settings)
    step, stage, curve, wall_before, resumed_from = 0, 0, [], 0.0, None
    restored = _restore(plan, model, optimizer, rng)
    if restored is not None:
        step, stage, curve, wall_before = restored
        resumed_from = step
        _warn_changed_machine(plan.saved, settings)
        logger.info("resumed %s from step %d (length %d)", plan.checkpoint, step, stages[stage])
    elif plan.saved is not None:     # set aside: start over from freshly built weights
        model, optimizer, rng = _fresh(settings)

    def checkpoint(wall: float) -> None:
        save_torch(plan.checkpoint, checkpoint_contents(model, optimizer, rng, step, stage, curve, wall, model_config,
                                                        settings.architecture, parameters))

    def snapshot() -> None:
        metadata = make_metadata(PRODUCER, parameters, seed=settings.seed, run=name, step=step,
                                 train_length=stages[stage], architecture=settings.architecture)
        metadata.pop("versions")   # as in NAME.pt
        save_torch(snapshot_path(settings.save_dir, name, step),
                   model_file_contents(model, settings.architecture, model_config, metadata))

    reached = (bool(curve) and stage == len(stages) - 1 and curve[-1]["length"] == settings.train_length
               and curve[-1]["val_accuracy"] >= settings.target_accuracy)
    stop = reached and step >= settings.min_steps
    # The Transformer validates on its blocked path (the one it trains on), Mamba on its chunked scan.
    validation_method = "blocked" if settings.architecture == "transformer" else fastest_method(model)
    start = time.perf_counter()
    losses, accuracies = [], []
    model.train()
    bar = tqdm(total=settings.max_steps, initial=step, disable=not progress, desc=f"train {name}")
    try:
        while step < settings.max_steps and not stop:
            length = stages[stage]
            loss, accuracy = task.training_step(model, optimizer, rng, settings.batch_size, length, _TASK.vocab_size,
                                                _TASK.trigger_token, compute_dtype)
            if not math.isfinite(loss):
                kept = f"; {plan.checkpoint} (step {curve[-1]['step']}) is kept" if curve else ""
                raise InputError(f"training diverged: the loss is {loss} at step {step + 1} (length {length}, "
                                 f"`learning_rate` {settings.learning_rate:g}); nothing was written{kept}. Rerun "
                                 "with a smaller `learning_rate` and `restart`",
                                 parameters=("learning_rate", "restart"))
            step += 1
            if settings.snapshot_every and step % settings.snapshot_every == 0:
                snapshot()
            losses.append(loss)
            accuracies.append(accuracy)
            bar.update(1)
            if step % settings.eval_every == 0 or step == settings.max_steps:
                model.eval()
                correct, _ = task.evaluate_accuracy(model, length, settings.n_val, settings.val_seed,
                                                    method=validation_method, vocab_size=_TASK.vocab_size,
                                                    trigger_token=_TASK.trigger_token, compute_dtype=compute_dtype)
                model.train()
                wall = wall_before + time.perf_counter() - start
                curve.append({"step": step, "length": length, "train_loss": float(np.mean(losses)),
                              "train_accuracy": float(np.mean(accuracies)),
                              "val_accuracy": correct / settings.n_val, "wall_seconds": wall})
                losses, accuracies = [], []
                passed = curve[-1]["val_accuracy"] >= settings.target_accuracy
                row = curve[-1]
                bar.set_postfix(L=length, loss=f"{row['train_loss']:.3f}", val=f"{row['val_accuracy']:.3f}")
                logger.info("step %d: train loss %.4f, train acc %.3f, val acc at %d: %.4f (%.0f s)", step,
                            row["train_loss"], row["train_accuracy"], length, row["val_accuracy"], wall)
                if passed and stage < len(stages) - 1:
                    stage += 1
                    logger.info("curriculum: length %d passed at step %d; now training at %d", length, step,
                                stages[stage])
                reached = passed and length == settings.train_length
                stop = reached and step >= settings.min_steps
                checkpoint(wall)
    finally:  # also when a write fails: no bar redrawn after the error line
        bar.close()
    session = time.perf_counter() - start
    if not curve or curve[-1]["step"] != step:  # e.g. resumed a finished run
        checkpoint(wall_before + session)
    return InductionTrainingRun(settings, model, curve, step, reached, resumed_from, wall_before + session, session)


def training_outputs(run: InductionTrainingRun, pending: PendingWrites, figure: bool = True) -> Dict[str, Any]:
    """Queue the final files of a run in ``pending``: ``NAME.pt``, the curve, the metadata and (``figure``) the PDF.

    Returns
    -------
    dict
        The metadata (``NAME_training.json``; ``NAME.pt`` holds it without the package versions).
    """
    settings, name = run.settings, run.settings.run_name
    metadata = run.metadata()
    contents = model_file_contents(run.model, settings.architecture, settings.model_config(),
                                   {k: v for k, v in metadata.items() if k != "versions"})
    pending.add(model_path(settings.save_dir, name), lambda path: save_torch(path, contents))
    pending.text(training_curve_path(settings.save_dir, name), training_curve_csv(run.curve))
    pending.json(training_summary_path(settings.save_dir, name), metadata)
    if figure and run.curve:
        fig = plot_training_curves({name: run.curve_arrays()}, settings.target_accuracy,
                                   train_length=settings.train_length)
        pending.figure(Path(settings.fig_dir) / f"training_curve_{name}.pdf", fig)
    return metadata
