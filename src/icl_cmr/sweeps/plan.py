"""Sweep plans: which models and checkpoints go through which stages, with which settings.

A plan is a small TOML file (``tomllib``, standard library from Python 3.11; ``tomli`` on 3.10)::

    name = "my-sweep"
    stages = ["scores", "fit", "aggregate"]          # also "ablation"

    [[models]]
    name = "pythia-70m"                              # outputs are filed under this name
    steps = "paper"                                  # "final" (default), "paper" (16 steps) or [1000, 143000]
    group = "small"                                  # SLURM resource group

    [[models]]
    name = "my-neox"
    checkpoint_dirs = { 1000 = "runs/neox/step1000", 143000 = "runs/neox/step143000" }

    [scores]                                         # compute_head_scores.py settings (flag names, _ for -)
    n_prompts = 100
    [fit]                                            # fit_attn_score.py (always without figures)
    crp_grid = "saved_crps/cmr_crp_avg_20_11.npy"
    [ablation]                                       # ablation.py, for the models listed
    models = ["gpt2-small"]
    [aggregate]                                      # attn_over_size*.py, attn_over_time.py, select_fit*.py
    n_top = [20, 50, 100, 200]
    [paths]                                          # output roots (default: the scripts' defaults)
    scores_dir = "saved_scores"
    [slurm]
    partition = "gpu"
    [slurm.groups.small]
    gpus = 1
    mem_gb = 32

Relative paths are relative to the working directory, as every script's flags are. Every value
is checked here, with the scripts' own argument types, so a bad plan stops before any job runs
(:class:`~icl_cmr.errors.InputError` naming the file, the table and the key).
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from icl_cmr.cli.args import (float_range, fraction, int_range, non_negative_int, paired_count, positive_float,
                              positive_int, seed_int)
from icl_cmr.errors import InputError
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.memory import memory_drivers
from icl_cmr.files.reading import read_text
from icl_cmr.heads.prompts import PROMPT_MEMORY_SETTINGS, PromptConfig, prompt_memory_bytes
from icl_cmr.heads.registry import resolve_model
from icl_cmr.interventions.icl_score import ABLATION_MEMORY_SETTINGS, ICLScoreConfig, ablation_memory_bytes
from icl_cmr.interventions.texts import TextDataConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

#: Stages in the order they run for one (model, checkpoint).
STAGES = ("scores", "fit", "ablation", "aggregate")
#: Stages a plan runs when it does not say.
DEFAULT_STAGES = ("scores", "fit", "aggregate")

#: Pythia v0 training steps of [LI24] Fig 7 / S4: 1000 (K + 1) for K = 0, 10, ..., 140, 142
#: (:data:`icl_cmr.config.CHECKPOINT_INDICES`; DESIGN.md section 5).
PAPER_STEPS = tuple(1000 * (k + 1) for k in (*range(0, 143, 10), 142))

#: Steps of local checkpoint folders map to file indices K = step / 1000 - 1, the Pythia v0
#: spacing every fitting script assumes (:func:`icl_cmr.heads.results.checkpoint_step`).
STEP_SPACING = 1000

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class ResourceGroup:
    """What one SLURM job of a group asks for.

    Attributes
    ----------
    gpus : int
        GPUs per job (0 for CPU-only stages).
    mem_gb : int
        Host memory per job, GB.
    cpus : int
        CPU cores per job.
    time_min : int
        Time limit per job, minutes (submitit requeues a job that reaches it, up to 3 times).
    """

    gpus: int
    mem_gb: int
    cpus: int
    time_min: int

    def describe(self) -> str:
        return f"{self.gpus} GPU, {self.mem_gb} GB, {self.cpus} CPU, {self.time_min} min"


#: Default resource groups. Our estimates, not measurements: float32 weights take 4 bytes per
#: parameter and loading briefly holds about two copies in host memory (Pythia-1.4B: 5.6 GB of
#: weights; 12B: 48 GB; the 7-8B models: 28-32 GB); times leave room for the hub download,
#: which dominates the score pass (README, "Running the paper's full sweep").
DEFAULT_GROUPS: Dict[str, ResourceGroup] = {
    "cpu": ResourceGroup(gpus=0, mem_gb=16, cpus=2, time_min=30),      # fits and aggregation
    "small": ResourceGroup(gpus=1, mem_gb=32, cpus=4, time_min=60),    # up to 1.4B parameters
    "medium": ResourceGroup(gpus=1, mem_gb=64, cpus=8, time_min=120),  # 2.8B, 6.9B
    "large": ResourceGroup(gpus=1, mem_gb=128, cpus=8, time_min=240),  # 7B-12B
}
#: The group of fit and aggregation jobs.
CPU_GROUP = "cpu"


@dataclass(frozen=True)
class ModelEntry:
    """One model of a plan.

    Attributes
    ----------
    name : str
        The name outputs are filed under: ``<scores_dir>/<name>/all_scores_<name>[_cp<K>].pkl``.
    source : str or None
        Registry name, Hugging Face id or local folder of the final model (default: ``name``);
        None for a model given only by ``checkpoint_dirs``.
    steps : tuple of (int or None)
        Training steps to score, ascending; None is the final model loaded without a checkpoint.
    checkpoint_dirs : dict
        step -> local folder standing in for that hub revision.
    checkpoint_indices : dict
        step -> index K of the ``_cp<K>`` file suffix.
    group : str
        Resource group of its score and ablation jobs.
    scores : dict
        compute_head_scores.py settings that override the plan's ``[scores]`` table.
    """

    name: str
    source: Optional[str]
    steps: Tuple[Optional[int], ...]
    checkpoint_dirs: Mapping[int, str] = field(default_factory=dict)
    checkpoint_indices: Mapping[int, int] = field(default_factory=dict)
    group: str = "small"
    scores: Mapping[str, Any] = field(default_factory=dict)

    @property
    def final_step(self) -> Optional[int]:
        """The step that stands for the trained model: the final model if scored, else the last step."""
        return None if None in self.steps else self.steps[-1]

    @property
    def is_series(self) -> bool:
        """Whether more than one training checkpoint is scored (an over-training analysis applies)."""
        return sum(step is not None for step in self.steps) > 1

    def checkpoint_index(self, step: Optional[int]) -> Optional[int]:
        return None if step is None else self.checkpoint_indices[step]


@dataclass(frozen=True)
class SlurmSettings:
    """Cluster-wide SLURM settings; per-job resources come from :attr:`Plan.groups`."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    array_parallelism: int = 64
    max_array_size: int = 1000
    poll_s: float = 30.0
    setup: Tuple[str, ...] = ()
    additional: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """A validated sweep plan (see the module docstring for the file format)."""

    name: str
    path: str
    stages: Tuple[str, ...]
    models: Tuple[ModelEntry, ...]
    scores: Mapping[str, Any]
    fit: Mapping[str, Any]
    ablation: Mapping[str, Any]
    ablation_models: Tuple[str, ...]
    aggregate: Mapping[str, Any]
    paths: Mapping[str, str]
    slurm: SlurmSettings
    groups: Mapping[str, ResourceGroup]
    fit_checkpoints: str = "all"
    description: str = ""

    def model(self, name: str) -> ModelEntry:
        return next(m for m in self.models if m.name == name)

    @property
    def sweep_dir(self) -> Path:
        """``<scores_dir>/sweeps/<plan name>/``: manifest, logs and submitit files."""
        return Path(self.paths["scores_dir"]) / "sweeps" / self.name


# ----------------------------------------------------------------------------- settings schemas

def _bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value
    return parse


def _device(value: Any) -> str:
    # The device is checked by the job on the machine it runs on; here only its form.
    if not isinstance(value, str) or not _DEVICE_RE.match(value):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or mps, got {value!r}")
    return value


def _existing_file(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise argparse.ArgumentTypeError(f"must be a file path, got {value!r}")
    if not Path(value).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"file {value} does not exist")
    return value


def _existing_path(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise argparse.ArgumentTypeError(f"must be a path, got {value!r}")
    if not Path(value).expanduser().exists():
        raise argparse.ArgumentTypeError(f"{value} does not exist")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise argparse.ArgumentTypeError(f"must be a non-empty string, got {value!r}")
    return value


def _safe_name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise argparse.ArgumentTypeError(f"must be a name of letters, digits, '.', '_' and '-', got {value!r}")
    return value


def _number(kind: Callable[[str], Any]) -> Callable[[Any], Any]:
    """An ``icl_cmr.cli.args`` number type applied to a TOML value (booleans are not numbers)."""
    def parse(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise argparse.ArgumentTypeError(f"must be a number, got {value!r}")
        return kind(str(value))
    return parse


def _once_each(values: Tuple[Any, ...]) -> Tuple[Any, ...]:
    """``values`` unless one repeats: a repeated set size or model would be computed or counted twice."""
    repeated = [value for index, value in enumerate(values) if value in values[:index]]
    if repeated:
        raise argparse.ArgumentTypeError(f"repeats {', '.join(map(str, dict.fromkeys(repeated)))}; give each value "
                                         "once")
    return values


def _int_list(kind: Callable[[str], Any]) -> Callable[[Any], Tuple[int, ...]]:
    def parse(value: Any) -> Tuple[int, ...]:
        if not isinstance(value, list) or not value:
            raise argparse.ArgumentTypeError(f"must be a non-empty list, got {value!r}")
        return _once_each(tuple(_number(kind)(item) for item in value))
    return parse


def _str_list(value: Any) -> Tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise argparse.ArgumentTypeError(f"must be a list of strings, got {value!r}")
    return tuple(value)


def _name_list(value: Any) -> Tuple[str, ...]:
    return _once_each(_str_list(value))


#: Plan key -> (script flag, type). Booleans map to ``--flag`` / ``--no-flag`` (see :func:`setting_argv`).
SCORES_SETTINGS: Dict[str, Tuple[str, Callable[[Any], Any]]] = {
    "n_prompts": ("--n-prompts", _number(positive_int)),
    "block_len": ("--block-len", _number(int_range(2))),
    "batch_size": ("--batch-size", _number(positive_int)),
    "seed": ("--seed", _number(seed_int)),
    "dtype": ("--dtype", _choice("float32", "bfloat16", "float16")),
    "bos": ("--bos", _bool),
    "exclude_extreme_fraction": ("--exclude-extreme-fraction", _number(float_range(0.0, 0.5, high_open=True))),
    "prefix_block_len": ("--prefix-block-len", _number(int_range(2))),
    "prefix_copies": ("--prefix-copies", _number(int_range(2))),
    "prefix_n_prompts": ("--prefix-n-prompts", _number(positive_int)),
    "copying": ("--no-copying", _bool),
    "token_pool": ("--token-pool", _existing_file),
    "device": ("--device", _device),
}
FIT_SETTINGS = {
    "crp_grid": ("--crp-grid", _existing_file),
    "crp_sem": ("--crp-sem", _existing_file),
    "threshold": ("--threshold", _number(positive_float)),
    "checkpoints": (None, _choice("all", "final")),
}
ABLATION_SETTINGS = {
    "models": (None, _name_list),
    "data": ("--data", _existing_path),
    "n_eval": ("--n-eval", _number(paired_count)),
    "fraction": ("--fraction", _number(fraction)),
    "method": ("--method", _choice("value", "output", "mean")),
    "n_random_sets": ("--n-random-sets", _number(positive_int)),
    "seed": ("--seed", _number(seed_int)),
    "batch_size": ("--batch-size", _number(positive_int)),
    "seq_len": ("--seq-len", _number(int_range(3))),
    "min_tokens": ("--min-tokens", _number(positive_int)),
    "late_index": ("--late-index", _number(positive_int)),
    "early_index": ("--early-index", _number(non_negative_int)),
    "dtype": ("--dtype", _choice("float32", "bfloat16", "float16")),
    "device": ("--device", _device),
}
AGGREGATE_SETTINGS = {
    "n_top": ("--n_top", _int_list(positive_int)),
    "tag": ("--tag", _safe_name),
    "threshold": ("--threshold", _number(positive_float)),
}
PATH_SETTINGS = {
    "scores_dir": (None, _text), "figs_dir": (None, _text),
    "top_heads_dir": (None, _text), "ablation_dir": (None, _text),
}
DEFAULT_PATHS = {"scores_dir": "saved_scores", "figs_dir": "figs", "top_heads_dir": "saved_top_heads",
                 "ablation_dir": "saved_ablation"}
GROUP_SETTINGS = {
    "gpus": (None, _number(non_negative_int)), "mem_gb": (None, _number(positive_int)),
    "cpus": (None, _number(positive_int)), "time_min": (None, _number(positive_int)),
}
SLURM_SETTINGS = {
    "partition": (None, _text), "account": (None, _text), "qos": (None, _text),
    "array_parallelism": (None, _number(positive_int)), "max_array_size": (None, _number(positive_int)),
    "poll_s": (None, _number(positive_float)), "setup": (None, _str_list),
}


def setting_argv(schema: Mapping[str, Tuple[Optional[str], Any]], settings: Mapping[str, Any]) -> List[str]:
    """Script flags for validated settings, in schema order (keys without a flag are left out)."""
    argv: List[str] = []
    for key, (flag, _) in schema.items():
        if key not in settings or flag is None:
            continue
        value = settings[key]
        if key == "copying":
            argv += [] if value else [flag]
        elif key == "bos":
            argv.append("--bos" if value else "--no-bos")
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


# ----------------------------------------------------------------------------- reading a plan

class _Reader:
    """Checks one plan file's tables; every error names the file, the table and the key."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, message: str) -> InputError:
        return InputError(f"{self.path}: {where}: {message}")

    def table(self, data: Mapping[str, Any], key: str, where: Optional[str] = None) -> Mapping[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(where or f"[{key}]", f"must be a table, got {type(value).__name__}")
        return value

    def settings(self, table: Mapping[str, Any], schema: Mapping[str, Tuple[Optional[str], Any]],
                 where: str) -> Dict[str, Any]:
        unknown = sorted(set(table) - set(schema))
        if unknown:
            raise self.fail(where, f"unknown key {unknown[0]!r}; accepted: {', '.join(schema)}")
        out = {}
        for key, value in table.items():
            try:
                out[key] = schema[key][1](value)
            except argparse.ArgumentTypeError as err:
                raise self.fail(f"{where} {key}", str(err)) from None
        return out


def _model_steps(reader: _Reader, entry: Mapping[str, Any], where: str) -> Tuple[Optional[int], ...]:
    steps = entry.get("steps", "final")
    if steps == "final":
        return (None,)
    if steps == "paper":
        return PAPER_STEPS
    if isinstance(steps, list) and steps:
        try:
            values = [_number(positive_int)(step) for step in steps]
        except argparse.ArgumentTypeError as err:
            raise reader.fail(f"{where} steps", str(err)) from None
        if len(set(values)) != len(values):
            raise reader.fail(f"{where} steps", f"repeats a step: {steps}")
        return tuple(sorted(values))
    raise reader.fail(f"{where} steps", f'must be "final", "paper" or a list of training steps, got {steps!r}')


def _checkpoint_dirs(reader: _Reader, table: Any, where: str) -> Dict[int, str]:
    if not isinstance(table, dict) or not table:
        raise reader.fail(where, "must be a table {step = \"folder\", ...}")
    out = {}
    for key, folder in table.items():
        if not str(key).isdigit() or int(key) < STEP_SPACING or int(key) % STEP_SPACING:
            raise reader.fail(where, f"step {key!r} must be a positive multiple of {STEP_SPACING} "
                                     "(file index K = step / 1000 - 1, as Pythia v0)")
        if not isinstance(folder, str) or not (Path(folder).expanduser() / "config.json").is_file():
            raise reader.fail(f"{where} {key}", f"{folder!r} is not a model folder with a config.json")
        out[int(key)] = folder
    return dict(sorted(out.items()))


def _read_model(reader: _Reader, entry: Any, number: int, scores_default: Mapping[str, Any],
                groups: Mapping[str, ResourceGroup]) -> ModelEntry:

    where = f"[[models]] #{number}"
    if not isinstance(entry, dict):
        raise reader.fail(where, "must be a table")
    accepted = ("name", "source", "steps", "checkpoint_dirs", "group", "scores")
    unknown = sorted(set(entry) - set(accepted))
    if unknown:
        raise reader.fail(where, f"unknown key {unknown[0]!r}; accepted: {', '.join(accepted)}")
    if "name" not in entry:
        raise reader.fail(where, "needs a name")
    try:
        name = _safe_name(entry["name"])
    except argparse.ArgumentTypeError as err:
        raise reader.fail(f"{where} name", str(err)) from None
    where = f"[[models]] {name!r}"
    group = entry.get("group", "small")
    if group not in groups:
        raise reader.fail(f"{where} group", f"unknown group {group!r}; defined: {', '.join(groups)}")
    scores = reader.settings(reader.table(entry, "scores", f"{where} scores"), SCORES_SETTINGS, f"{where} scores")
    if "checkpoint_dirs" in entry:
        if "steps" in entry:
            raise reader.fail(where, "give steps or checkpoint_dirs, not both")
        dirs = _checkpoint_dirs(reader, entry["checkpoint_dirs"], f"{where} checkpoint_dirs")
        source = entry.get("source")
        steps: Tuple[Optional[int], ...] = tuple(dirs)
        if source is not None:
            steps = (*steps, None)
        indices = {step: step // STEP_SPACING - 1 for step in dirs}
    else:
        source, dirs = entry.get("source", name), {}
        steps = _model_steps(reader, entry, where)
        indices = {}
    if source is not None:
        if not isinstance(source, str) or not source:
            raise reader.fail(f"{where} source", f"must be a model name, hub id or folder, got {source!r}")
        try:
            for step in steps:
                spec = resolve_model(source, checkpoint=step if not dirs else None)
                if step is not None and not dirs:
                    indices[step] = spec.checkpoint_index
        except InputError as err:
            raise reader.fail(where, str(err)) from None
    merged = {**scores_default, **scores}
    _check_scores_memory(reader, merged, where if set(scores) else "[scores]", group, groups[group])
    return ModelEntry(name=name, source=source, steps=steps, checkpoint_dirs=dirs, checkpoint_indices=indices,
                      group=group, scores=merged)


#: Bytes in the GB of a resource group's ``mem_gb``.
GIB = 2 ** 30
#: The smallest value of each setting that sizes a job's memory: a setting whose smallest value alone would
#: fit is named as the one to lower (:func:`icl_cmr.files.memory.memory_drivers`).
_SMALLEST = {"n_prompts": 1, "block_len": 2, "batch_size": 1, "prefix_n_prompts": 1, "prefix_block_len": 2,
             "prefix_copies": 2, "n_eval": 2, "seq_len": 3, "n_random_sets": 0}


def _refuse_over_memory(reader: _Reader, estimate: Callable[[Mapping[str, int]], int], values: Dict[str, int],
                        where: str, job: str, group_name: str, group: ResourceGroup) -> None:
    """The same memory estimate the job's script checks before work, against the memory a job of ``group`` has."""
    limit = group.mem_gb * GIB
    needed = estimate(values)
    if needed <= limit:
        return
    drivers = memory_drivers(estimate, values, {key: min(values[key], _SMALLEST[key]) for key in values}, limit)
    raise reader.fail(f"{where} {', '.join(drivers)}",
                      f"{job} would need about {needed / GIB:,.1f} GiB of memory, more than the {group.mem_gb} GB a "
                      f"job of group {group_name!r} has (mem_gb); lower {'it' if len(drivers) == 1 else 'them'}")


def _check_scores_memory(reader: _Reader, scores: Mapping[str, Any], where: str, group_name: str,
                         group: ResourceGroup) -> None:
    """A score job's prompts within its group's memory (``compute_head_scores.py``'s estimate for a one-head
    model: a lower bound, as the plan does not load the model's config)."""
    config = PromptConfig(prepend_bos=scores.get("bos", True) is not False,
                          **{key: scores[key] for key in PROMPT_MEMORY_SETTINGS if key in scores})
    values = {key: int(getattr(config, key)) for key in PROMPT_MEMORY_SETTINGS}
    _refuse_over_memory(reader, lambda changed: prompt_memory_bytes(replace(config, **changed)), values, where,
                        "a score job's prompts", group_name, group)


def _check_ablation_memory(reader: _Reader, ablation: Mapping[str, Any], models: Tuple[ModelEntry, ...],
                           groups: Mapping[str, ResourceGroup]) -> None:
    """Each ablation job's prompts and results within its group's memory (``ablation.py``'s estimate without
    the model's size and the statistics, with the smallest value of each setting the plan leaves unset: a
    lower bound)."""
    values = {key: int(ablation.get(key, _SMALLEST[key])) for key in ABLATION_MEMORY_SETTINGS}
    for entry in models:
        _refuse_over_memory(reader, ablation_memory_bytes, values, "[ablation]", f"the ablation of {entry.name!r}",
                            entry.group, groups[entry.group])


def _check_icl_indices(reader: _Reader, ablation: Mapping[str, Any]) -> None:
    """The ICL score's loss indices within the prompt (``ablation.py`` checks the same after parsing)."""
    defaults, keys = ICLScoreConfig(), ("late_index", "early_index", "seq_len")
    if not any(key in ablation for key in keys):
        return
    config = ICLScoreConfig(late_index=ablation.get("late_index", defaults.late_index),
                            early_index=ablation.get("early_index", defaults.early_index))
    try:
        config.validate(ablation.get("seq_len", TextDataConfig().seq_len))
    except InputError as err:
        message = str(err)
        for key in err.parameters:  # the engine's parameters are the plan's keys: named plainly, as elsewhere
            message = message.replace(f"`{key}`", key)
        raise reader.fail(f"[ablation] {', '.join(key for key in keys if key in ablation)}", message) from None


def _check_repeated_sources(reader: _Reader, models: Tuple[ModelEntry, ...]) -> None:
    """Refuse two models that would score the same model at the same step: the same work done twice, filed twice."""
    seen: Dict[Tuple[str, Optional[int]], str] = {}
    for entry in models:
        for step in entry.steps:
            folder = entry.checkpoint_dirs.get(step) if step is not None else None
            if folder is not None:
                key = (str(Path(folder).expanduser().resolve()), None)
            elif entry.source is not None:
                key = (resolve_model(entry.source).source, step)
            else:
                continue
            if key in seen and seen[key] != entry.name:
                at = "" if step is None else f" at step {step}"
                raise reader.fail(f"[[models]] {entry.name!r} {'checkpoint_dirs' if folder is not None else 'source'}",
                                  f"the same model{at} as [[models]] {seen[key]!r} ({key[0]}): its scores would be "
                                  "computed twice; list it once")
            seen.setdefault(key, entry.name)


def _read_groups(reader: _Reader, slurm: Mapping[str, Any]) -> Dict[str, ResourceGroup]:
    groups = dict(DEFAULT_GROUPS)
    table = reader.table(slurm, "groups", "[slurm.groups]")
    for name, values in table.items():
        where = f"[slurm.groups.{name}]"
        if not isinstance(values, dict):
            raise reader.fail(where, "must be a table")
        given = reader.settings(values, GROUP_SETTINGS, where)
        base = groups.get(name)
        if base is None:
            missing = [key for key in GROUP_SETTINGS if key not in given]
            if missing:
                raise reader.fail(where, f"a new group needs {', '.join(missing)}")
            groups[name] = ResourceGroup(**given)
        else:
            groups[name] = replace(base, **given)
    return groups


def parse_plan(data: Mapping[str, Any], path: str) -> Plan:
    """Validate a plan's parsed TOML ``data`` (``path`` only names the file in errors).

    Returns
    -------
    Plan

    Raises
    ------
    InputError
        For any unknown key, wrong type, value out of range, missing file or model folder,
        unknown model or group, or a checkpoint the model does not publish.
    """
    reader = _Reader(path)
    accepted = ("name", "description", "stages", "models", "scores", "fit", "ablation", "aggregate", "paths",
                "slurm")
    unknown = sorted(set(data) - set(accepted))
    if unknown:
        raise reader.fail("top level", f"unknown key {unknown[0]!r}; accepted: {', '.join(accepted)}")
    try:
        name = _safe_name(data.get("name", Path(path).stem))
    except argparse.ArgumentTypeError as err:
        raise reader.fail("name", str(err)) from None
    stages = data.get("stages", list(DEFAULT_STAGES))
    if not isinstance(stages, list) or not stages or any(s not in STAGES for s in stages):
        raise reader.fail("stages", f"must be a non-empty list of {', '.join(STAGES)}, got {stages!r}")
    slurm_table = reader.table(data, "slurm")
    groups = _read_groups(reader, slurm_table)
    slurm_values = reader.settings({k: v for k, v in slurm_table.items() if k not in ("groups", "additional")},
                                   SLURM_SETTINGS, "[slurm]")
    slurm = SlurmSettings(**{**slurm_values, "setup": tuple(slurm_values.get("setup", ())),
                             "additional": dict(reader.table(slurm_table, "additional", "[slurm.additional]"))})
    scores = reader.settings(reader.table(data, "scores"), SCORES_SETTINGS, "[scores]")
    fit = reader.settings(reader.table(data, "fit"), FIT_SETTINGS, "[fit]")
    ablation = reader.settings(reader.table(data, "ablation"), ABLATION_SETTINGS, "[ablation]")
    aggregate = reader.settings(reader.table(data, "aggregate"), AGGREGATE_SETTINGS, "[aggregate]")
    paths = {**DEFAULT_PATHS, **reader.settings(reader.table(data, "paths"), PATH_SETTINGS, "[paths]")}
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise reader.fail("[[models]]", "a plan needs at least one model")
    models = tuple(_read_model(reader, entry, i + 1, scores, groups) for i, entry in enumerate(entries))
    names = [m.name for m in models]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise reader.fail("[[models]]", f"model {repeated[0]!r} appears twice")
    _check_repeated_sources(reader, models)
    ablation_models: Tuple[str, ...] = ()
    if "ablation" in stages:
        ablation_models = tuple(ablation.pop("models", names))
        for model in ablation_models:
            if model not in names:
                raise reader.fail("[ablation] models", f"{model!r} is not a model of this plan")
            entry = next(m for m in models if m.name == model)
            if entry.source is None:
                raise reader.fail("[ablation] models", f"{model!r} has no source: ablation.py runs the final model; "
                                                       "give the model's source folder or name")
        _check_ablation_memory(reader, ablation, tuple(m for m in models if m.name in ablation_models), groups)
        _check_icl_indices(reader, ablation)
    return Plan(name=name, path=path, stages=tuple(s for s in STAGES if s in stages), models=models, scores=scores,
                fit={k: v for k, v in fit.items() if k != "checkpoints"}, fit_checkpoints=fit.get("checkpoints", "all"),
                ablation={k: v for k, v in ablation.items() if k != "models"}, ablation_models=ablation_models,
                aggregate=aggregate, paths=paths, slurm=slurm, groups=groups,
                description=str(data.get("description", "")))


def check_output_folders(plan: Plan) -> None:
    """Check, creating nothing, that the sweep's folder and every output root of ``[paths]`` can be written.

    ``sweep.py`` runs it before a dry run lists the jobs as before a real run starts them, so both refuse
    the same plans.

    Raises
    ------
    InputError
        Naming the plan file, the key and the folder.
    """
    for key, folder in (("scores_dir", plan.sweep_dir), *((key, Path(plan.paths[key])) for key in PATH_SETTINGS)):
        try:
            check_writable_dir(Path(folder).expanduser())
        except InputError as err:
            raise InputError(f"{plan.path}: [paths] {key}: {err}") from None


def load_plan(path: "str | Path") -> Plan:
    """Read and validate a plan file (TOML). See :func:`parse_plan`."""
    path = Path(path)
    text = read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: invalid TOML: {err}") from None
    return parse_plan(data, str(path))


def find_plan(name_or_path: str, builtin_dir: Path) -> Path:
    """A plan file: ``name_or_path`` if it is a file, else the built-in ``<builtin_dir>/<name>.toml``.

    Raises
    ------
    InputError
        If neither exists; the message lists the built-in plans.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    builtin = builtin_dir / f"{name_or_path}.toml"
    if _NAME_RE.match(name_or_path) and builtin.is_file():
        return builtin
    known = ", ".join(sorted(p.stem for p in builtin_dir.glob("*.toml"))) or "none"
    raise InputError(f"plan {name_or_path!r} is neither a file nor a built-in plan (built-in: {known})")


def override_slurm(plan: Plan, partition: Optional[str] = None, account: Optional[str] = None,
                   qos: Optional[str] = None, array_parallelism: Optional[int] = None,
                   gpus: Optional[int] = None, mem_gb: Optional[int] = None, time_min: Optional[int] = None,
                   cpus: Optional[int] = None) -> Plan:
    """The plan with command-line SLURM settings applied; resource flags apply to the GPU groups."""
    slurm = replace(plan.slurm, **{k: v for k, v in (("partition", partition), ("account", account), ("qos", qos),
                                                     ("array_parallelism", array_parallelism)) if v is not None})
    resources = {k: v for k, v in (("gpus", gpus), ("mem_gb", mem_gb), ("time_min", time_min), ("cpus", cpus))
                 if v is not None}
    groups = {name: (replace(group, **resources) if name != CPU_GROUP and resources else group)
              for name, group in plan.groups.items()}
    return replace(plan, slurm=slurm, groups=groups)
