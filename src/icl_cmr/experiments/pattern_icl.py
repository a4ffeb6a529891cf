"""Few-shot pattern matching under induction-head ablation as one run ([CS24]; DESIGN.md section 6).

:class:`PatternIclSettings` holds everything ``pattern_icl.py``'s flags set, with the same names and
defaults. :func:`check_settings` checks the settings alone and names the model (its outputs are
filed under that name); :func:`check_pattern_icl` checks everything else that can be checked
before the model loads (prompts file, model config, heads, scores file) and chooses the heads;
:func:`run_pattern_icl` loads the model, scores every task under every condition (intact, the top
induction heads ablated, layer-matched random heads ablated; mean, zero or knockout) and returns a
:class:`PatternIclRun`: the per-prompt table, the accuracy tables, the paired tests, the prompts and
heads, and the parameters the metadata records. Nothing is written: ``pattern_icl.py`` saves the files.

Examples
--------
>>> from icl_cmr.experiments.pattern_icl import PatternIclSettings, run_pattern_icl
>>> settings = PatternIclSettings(model="saved_models/toy_lm", n_items=8, seeds=(0,))   # doctest: +SKIP
>>> run = run_pattern_icl(settings)                                                    # doctest: +SKIP
>>> run.results[["task", "method", "ablate", "accuracy"]]                              # doctest: +SKIP
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from icl_cmr.devices import check_worker_count, resolve_device, validate_device
from icl_cmr.errors import InputError
from icl_cmr.files.memory import check_memory, check_settings_memory
from icl_cmr.files.outputs import portable_path
from icl_cmr.files.results import read_pattern_prompts
from icl_cmr.files.scores import find_score_file, other_model_warning, read_head_scores
# Loading and forward passes are called through their modules (models.load_model,
# pattern_eval.label_log_likelihoods, ...) so that a test can replace them to prove that the
# checks come first.
from icl_cmr.heads import models
from icl_cmr.heads.models import DTYPES, choose_bos
from icl_cmr.heads.registry import ModelShape, ModelSpec, read_model_shape, resolve_model
from icl_cmr.interventions import pattern_eval
from icl_cmr.interventions.head_ablation import (RandomHeadSets, ablation_hooks, draw_random_head_sets,
                                                 format_heads, parse_heads, validate_heads)
from icl_cmr.interventions.pattern_tasks import (TASKS, PatternPrompt, PatternTaskConfig, generate_prompts,
                                                 get_task)
from icl_cmr.stats import accuracy_comparison_table

logger = logging.getLogger(__name__)

Head = Tuple[int, int]

ABLATE_CHOICES = ("none", "induction", "random")
#: ``zero`` zeroes the heads' value vectors (head_ablation method "value", the [LI24] way).
METHOD_CHOICES = ("mean", "zero", "knockout")
REFERENCE_CHOICES = ("task", "eval", "all")
KNOCKOUT_KIND_CHOICES = ("kind", "category")


@dataclass(frozen=True)
class PatternIclSettings:
    """A pattern-matching run, as ``pattern_icl.py``'s flags set it (same names, same defaults).

    Attributes
    ----------
    model : str
        Registry name, Hugging Face id or local model folder.
    tasks : tuple of str
        Pattern tasks (:data:`icl_cmr.interventions.pattern_tasks.TASKS`), each once.
    shots : int
        Demonstrations per prompt ([CS24]: 5).
    seeds : tuple of int
        Demonstration seeds, each once ([CS24]: 3).
    n_items : int
        Queries per task (class-balanced), at least 2.
    task_seed : int
        Seed of the queries.
    prompts_file : Path, optional
        Reuse the prompts of an earlier run (its ``prompts.json``); ``shots``, ``n_items``, ``seeds``
        and ``task_seed`` are then the file's.
    ablate : tuple of {"none", "induction", "random"}
        Conditions: intact, the chosen heads ablated, layer-matched random heads ablated.
    method : tuple of {"mean", "zero", "knockout"}
        Interventions: mean ablation of ``hook_z``, zero ablation of the value vectors, attention
        knockout of the heads' induction edges.
    percentage : tuple of float
        Top percentages of heads by prefix-matching score, each in (0, 100] ([CS24]: 1 and 3).
    heads : str, optional
        Ablate these heads (labels such as ``"L5H1,L6H9"``) instead of the top percentages.
    scores_file : Path, optional
        Head-score pickle with ``prefix_matching_score`` [n_layers, n_heads] (default: the model's
        file in ``scores_dir``).
    scores_dir : Path
    n_random_sets : int
        Layer-matched random head draws (fewer when fewer distinct sets exist).
    random_seed : int
        Seed of draw 0 (draw d: seed + d; a seed repeating an earlier set is skipped); also the
        seed of the permutation tests.
    reference_corpus : {"task", "eval", "all"}
        Mean-ablation reference: fresh prompts of the same task, the evaluation prompts
        themselves, or fresh prompts of every selected task.
    n_reference : int
        Reference prompts per task.
    reference_seed : int
        Query seed of the reference prompts.
    knockout_kind : {"kind", "category"}
        Same kind = same letter/word/separator/label (kind) or same word category (category).
    bos : bool, optional
        Start every prompt with a BOS token (True) or not (False); None: the tokenizer's own BOS
        token when it defines one.
    batch_size, threads : int
        Sequences per forward pass; torch CPU threads.
    device : str, optional
        cpu, cuda, cuda:N or mps (None: cuda when available).
    dtype : {"float32", "bfloat16", "float16"}
    """

    model: str
    tasks: Tuple[str, ...] = tuple(TASKS)
    shots: int = 5
    seeds: Tuple[int, ...] = (0, 1, 2)
    n_items: int = 50
    task_seed: int = 0
    prompts_file: Optional[Path] = None
    ablate: Tuple[str, ...] = ABLATE_CHOICES
    method: Tuple[str, ...] = ("mean", "knockout")
    percentage: Tuple[float, ...] = (1.0, 3.0)
    heads: Optional[str] = None
    scores_file: Optional[Path] = None
    scores_dir: Path = Path("saved_scores")
    n_random_sets: int = 5
    random_seed: int = 0
    reference_corpus: str = "task"
    n_reference: int = 64
    reference_seed: int = 1000
    knockout_kind: str = "kind"
    bos: Optional[bool] = None
    batch_size: int = 16
    threads: int = 1
    device: Optional[str] = None
    dtype: str = "float32"

    @property
    def needs_heads(self) -> bool:
        """Whether any condition ablates heads."""
        return bool({"induction", "random"} & set(self.ablate))


@dataclass(frozen=True)
class HeadSelection:
    """Heads one selection ablates, and its layer-matched random controls.

    Attributes
    ----------
    induction : list of (layer, head)
        The chosen heads (top by prefix-matching score, or given).
    random_draws : RandomHeadSets
        Pairwise distinct layer-matched random sets, and how many were asked for and exist.
    """

    induction: List[Head]
    random_draws: RandomHeadSets

    @property
    def random(self) -> List[List[Head]]:
        """Each random draw's heads."""
        return [list(draw) for draw in self.random_draws.sets]


@dataclass(frozen=True)
class Condition:
    """One condition to score: an intervention on a set of heads (none for intact)."""

    method: str       # "none" (intact) or one of METHOD_CHOICES
    selection: str    # "none", "heads" or "top<p>%"
    ablate: str       # one of ABLATE_CHOICES
    draw: int         # random draw, -1 for intact and induction
    heads: List[Head]


@dataclass
class PatternIclPlan:
    """What :func:`check_pattern_icl` checked and chose before the model loads, for :func:`run_pattern_icl`.

    Attributes
    ----------
    spec : ModelSpec
    shape : ModelShape
        From the model's config (no weights).
    tasks, ablate, methods : tuple of str
    prompts : dict of str -> list of PatternPrompt
    config : PatternTaskConfig
        The settings the prompts were made with (a prompts file's own).
    head_sets : dict of str -> HeadSelection
        Keyed by selection (``"heads"`` or ``"top<p>%"``); empty when no head is ablated.
    scores_file : Path, optional
        Where the top heads came from (None: ``heads`` given, or no head ablated).
    """

    spec: ModelSpec
    shape: ModelShape
    tasks: Tuple[str, ...]
    ablate: Tuple[str, ...]
    methods: Tuple[str, ...]
    prompts: Dict[str, List[PatternPrompt]]
    config: PatternTaskConfig
    head_sets: Dict[str, HeadSelection]
    scores_file: Optional[Path]


@dataclass
class PatternIclRun:
    """A finished pattern-matching run.

    Attributes
    ----------
    items : pandas.DataFrame
        One row per prompt and condition: task, item, demo_seed, method, selection, ablate, draw,
        label, predicted, correct, margin, ``ll_<label>`` per label (``items.csv``).
    results, results_by_seed : pandas.DataFrame
        Accuracy with Wilson 95% intervals, demonstration seeds pooled or per seed (:func:`summarise`).
    stats : pandas.DataFrame
        Paired tests (:func:`icl_cmr.stats.accuracy_comparison_table`).
    plan : PatternIclPlan
        The model, prompts, prompt settings and heads.
    parameters : dict
        The settings as metadata records them (:func:`used_parameters`).
    n_layers, n_heads : int
    mean_reference : dict of str -> dict
        Per task with mean ablation: reference prompts, reference length, evaluation tokens beyond it.
    bos : dict
        The BOS rule applied (:meth:`icl_cmr.heads.models.BosChoice.describe`).
    """

    items: pd.DataFrame
    results: pd.DataFrame
    results_by_seed: pd.DataFrame
    stats: pd.DataFrame
    plan: PatternIclPlan
    parameters: Dict[str, Any]
    n_layers: int
    n_heads: int
    mean_reference: Dict[str, dict] = field(default_factory=dict)
    bos: Dict[str, Any] = field(default_factory=dict)

    def heads_json(self) -> Dict[str, dict]:
        """``{selection: {"induction": "L1H0,...", "random": ["L1H1,...", ...]}}`` (``heads.json``)."""
        return {selection: {"induction": format_heads(s.induction), "random": [format_heads(d) for d in s.random]}
                for selection, s in self.plan.head_sets.items()}

    def metadata_fields(self) -> Dict[str, Any]:
        """What ``metadata.json`` records besides the parameters: model, shape, reference, random sets, BOS."""
        # requested vs distinct: fewer distinct layer-matched sets may exist than n_random_sets asks for
        random_sets = {selection: dict(requested=s.random_draws.n_requested, distinct=len(s.random_draws.sets),
                                       possible=s.random_draws.n_possible, seeds=list(s.random_draws.seeds))
                       for selection, s in self.plan.head_sets.items()}
        return dict(model=portable_path(self.plan.spec.source), n_layers=self.n_layers, n_heads=self.n_heads,
                    mean_reference=self.mean_reference, random_sets=random_sets, bos=self.bos)


# ----------------------------------------------------------------------------- checks before the model loads

def check_choices(values: Sequence[str], accepted: Sequence[str], parameter: str) -> Tuple[str, ...]:
    """``values`` as a tuple when non-empty, known and each given once.

    Raises
    ------
    InputError
        Naming ``parameter`` and the accepted values.
    """
    if isinstance(values, str):
        raise InputError(f"`{parameter}` must be a sequence of names such as {tuple(accepted[:2])}, got the string "
                         f"{values!r}", parameters=(parameter,))
    values = tuple(values)
    if not values:
        raise InputError(f"`{parameter}` is empty; accepted: {', '.join(accepted)}", parameters=(parameter,))
    unknown = [value for value in values if value not in accepted]
    if unknown:
        raise InputError(f"`{parameter}`: unknown value(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}",
                         parameters=(parameter,))
    repeated = [value for index, value in enumerate(values) if value in values[:index]]
    if repeated:
        raise InputError(f"`{parameter}` repeats {', '.join(dict.fromkeys(repeated))}; give each value once",
                         parameters=(parameter,))
    return values


def _check_numbers(settings: PatternIclSettings) -> None:
    """The settings the command line's argument types check, for a caller from Python."""
    for name in ("shots", "n_items", "n_random_sets", "n_reference", "batch_size", "threads"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"`{name}` must be a positive integer, got {value!r}", parameters=(name,))
    check_worker_count(settings.threads, "threads")
    for name in ("task_seed", "random_seed", "reference_seed"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InputError(f"`{name}` must be a non-negative integer, got {value!r}", parameters=(name,))
    for name, values in (("seeds", settings.seeds), ("percentage", settings.percentage)):
        if not values or len(set(values)) < len(values):
            raise InputError(f"`{name}` must hold at least one value, each once, got {tuple(values)}",
                             parameters=(name,))
    if any(seed < 0 for seed in settings.seeds):
        raise InputError(f"`seeds` must be non-negative, got {tuple(settings.seeds)}", parameters=("seeds",))
    if not all(0 < p <= 100 for p in settings.percentage):
        raise InputError(f"`percentage` must be in (0, 100], got {tuple(settings.percentage)}",
                         parameters=("percentage",))
    for name, accepted in (("reference_corpus", REFERENCE_CHOICES), ("knockout_kind", KNOCKOUT_KIND_CHOICES),
                           ("dtype", DTYPES)):
        if getattr(settings, name) not in accepted:
            raise InputError(f"`{name}` must be one of {', '.join(accepted)}, got {getattr(settings, name)!r}",
                             parameters=(name,))
    if settings.device is not None:
        validate_device(settings.device)


def _induction_scores(settings: PatternIclSettings, spec: ModelSpec, shape: ModelShape) -> Tuple[np.ndarray, Path]:
    """``prefix_matching_score`` [n_layers, n_heads] from ``scores_file`` or the model's file in ``scores_dir``,
    and its path.

    A file made for another model (its ``metadata["model"]``) is used with a warning naming both models.
    """
    path = settings.scores_file if settings.scores_file is not None else find_score_file(settings.scores_dir,
                                                                                         spec.name)
    scores = read_head_scores(path, required=("prefix_matching_score",))
    matrix = scores.prefix_matching_score
    if matrix.shape != (shape.n_layers, shape.n_heads):
        raise InputError(f"{path}: prefix_matching_score has shape {matrix.shape}, the model has "
                         f"{shape.n_layers} x {shape.n_heads} heads")
    warning = other_model_warning(scores.model, spec.name, f"the scores file {path}")
    if warning:
        logger.warning(warning)
    logger.info("prefix-matching scores from %s", path)
    return matrix, Path(path)


def choose_head_sets(settings: PatternIclSettings, spec: ModelSpec,
                     shape: ModelShape) -> Tuple[Dict[str, HeadSelection], Optional[Path]]:
    """The heads of every selection and their random controls, and the score file the top heads came from.

    Selections: ``"heads"`` (``settings.heads``) or one ``"top<p>%"`` per percentage. The random
    draws are pairwise distinct (:func:`icl_cmr.interventions.head_ablation.draw_random_head_sets`);
    when fewer layer-matched sets exist than ``n_random_sets``, every one is used once and a
    warning says so. Needs only the model's shape, so it runs before the model loads.

    Returns
    -------
    head_sets : dict of str -> HeadSelection
        Empty when no condition ablates heads.
    scores_file : Path or None
        None with ``heads`` or when no head is ablated.
    """
    if not settings.needs_heads:
        return {}, None
    scores_file = None
    if settings.heads:
        chosen = {"heads": parse_heads(settings.heads)}
        validate_heads(chosen["heads"], shape.n_layers, shape.n_heads)
    else:
        scores, scores_file = _induction_scores(settings, spec, shape)
        chosen = {f"top{p:g}%": pattern_eval.select_top_heads(scores, p) for p in settings.percentage}
        if len({tuple(heads) for heads in chosen.values()}) < len(chosen):
            logger.warning("some `percentage` values select the same heads on this %d-head model: %s",
                           shape.n_layers * shape.n_heads, {name: len(heads) for name, heads in chosen.items()})
    sets = {}
    for name, heads in chosen.items():
        drawn = draw_random_head_sets(shape.n_layers, shape.n_heads, len(heads), settings.n_random_sets,
                                      settings.random_seed, exclude=heads, layer_matched_to=heads)
        if drawn.exhausted:
            logger.warning("%s: only %d distinct layer-matched random set(s) of %d heads exist outside %s; using "
                           "%s once, not %d draws (`n_random_sets`)", name, drawn.n_possible, len(heads),
                           format_heads(heads), "it" if drawn.n_possible == 1 else "each", settings.n_random_sets)
        sets[name] = HeadSelection(induction=heads, random_draws=drawn)
    return sets, scores_file


def pattern_prompts(settings: PatternIclSettings,
                    tasks: Sequence[str]) -> Tuple[Dict[str, List[PatternPrompt]], PatternTaskConfig]:
    """The prompts of every task, from ``prompts_file`` or generated, and the settings they were made with."""
    if settings.prompts_file is not None:
        prompts, config = read_pattern_prompts(settings.prompts_file)
        missing = [name for name in tasks if name not in prompts]
        if missing:
            raise InputError(f"{settings.prompts_file} has no prompts for task(s) {', '.join(missing)}; "
                             f"it has {', '.join(prompts)}")
        return {name: prompts[name] for name in tasks}, config
    config = PatternTaskConfig(shots=settings.shots, n_items=settings.n_items, demo_seeds=tuple(settings.seeds),
                               seed=settings.task_seed)
    return {name: generate_prompts(name, config) for name in tasks}, config


def check_settings(settings: PatternIclSettings) -> ModelSpec:
    """Check the settings alone (names, numbers, head labels) and resolve the model's name; reads no input file.

    A caller that files outputs under the model's name checks its output folders between this and
    :func:`check_pattern_icl`, which repeats it.

    Returns
    -------
    ModelSpec

    Raises
    ------
    InputError
        Naming the setting.
    """
    check_choices(settings.tasks, list(TASKS), "tasks")
    check_choices(settings.ablate, ABLATE_CHOICES, "ablate")
    check_choices(settings.method, METHOD_CHOICES, "method")
    if settings.prompts_file is None and settings.n_items < 2:
        raise InputError("`n_items` must be >= 2 so both classes are asked", parameters=("n_items",))
    _check_numbers(settings)
    if settings.heads and settings.needs_heads:
        parse_heads(settings.heads)  # a label that is not L<layer>H<head>: before the model's config is read
    return resolve_model(settings.model)


#: Bytes of one demonstration (or query) of a prompt held in memory: its text and its share of the prompt's
#: Python objects; a lower bound (measured: 60-200 per demonstration, by task).
PROMPT_BYTES_PER_EXAMPLE = 48
#: Bytes of one row of the per-prompt results table (``items.csv``: a dozen columns in pandas).
ITEM_ROW_BYTES = 200
#: Bytes per logit of one forward batch (float32 logits, their log-softmax and a gather), model memory apart.
LOGIT_BYTES = 3 * 4
#: The settings that size a run's memory before the model loads, in the order messages name them.
MEMORY_SETTINGS = ("n_items", "shots", "n_reference", "n_random_sets")


def pattern_memory_bytes(values: Mapping[str, int], n_tasks: int, n_seeds: int, n_selections: int,
                         n_methods: int) -> int:
    """Estimated bytes of the prompts, the reference prompts and the per-prompt results table (a lower bound).

    Every task has ``n_items`` x ``n_seeds`` prompts of ``shots`` + 1 examples and ``n_reference`` reference
    prompts; each prompt is scored intact and under every method, selection and random draw.
    """
    examples = values["shots"] + 1
    prompts = n_tasks * (values["n_items"] * n_seeds + values["n_reference"]) * examples * PROMPT_BYTES_PER_EXAMPLE
    conditions = 1 + n_methods * n_selections * (1 + values["n_random_sets"])
    return prompts + n_tasks * values["n_items"] * n_seeds * conditions * ITEM_ROW_BYTES


def check_pattern_memory(settings: PatternIclSettings) -> None:
    """Refuse prompts and results that cannot fit in memory (:func:`pattern_memory_bytes`), naming what drives it;
    before the prompts are generated and the random head sets drawn."""
    generated = settings.prompts_file is None
    values = {"n_items": settings.n_items if generated else 1, "shots": settings.shots if generated else 1,
              "n_reference": settings.n_reference if "mean" in settings.method else 0,
              "n_random_sets": settings.n_random_sets if "random" in settings.ablate else 0}
    defaults = PatternIclSettings(model="")
    modest = {name: min(values[name], int(getattr(defaults, name))) for name in MEMORY_SETTINGS}
    n_selections = (1 if settings.heads else len(settings.percentage)) if settings.needs_heads else 0

    def estimate(changed: Mapping[str, int]) -> int:
        return pattern_memory_bytes(changed, len(settings.tasks), len(settings.seeds) if generated else 1,
                                    n_selections, len(settings.method))

    check_settings_memory(estimate, values, modest, "cpu", "holding the prompts and their results ({values})")


def check_shots_fit(settings: PatternIclSettings, n_ctx: int) -> None:
    """Refuse more demonstrations than the model's context can hold (each takes at least one token), before the
    prompts are generated."""
    if settings.prompts_file is None and settings.shots >= n_ctx:
        raise InputError(f"`shots` ({settings.shots}) cannot fit the model's context of {n_ctx} tokens: every "
                         "demonstration takes at least one token, and the query one more", parameters=("shots",))


def _check_batch_memory(plans: Dict[str, pattern_eval.ScoringPlan], vocab_size: int, device: str) -> None:
    """Refuse a forward batch whose logits cannot fit in memory (after tokenizing, before any forward pass)."""
    largest = max((batch.tokens.shape for plan in plans.values() for batch in plan.batches),
                  key=lambda shape: shape[0] * shape[1], default=None)
    if largest is None:  # nothing to score
        return
    memory_device = device if device.startswith("cuda") else "cpu"
    check_memory(largest[0] * largest[1] * vocab_size * LOGIT_BYTES, memory_device,
                 f"scoring a batch of {largest[0]} prompts of {largest[1]} tokens (`batch_size` {largest[0]})",
                 ("batch_size",))


def check_pattern_icl(settings: PatternIclSettings) -> PatternIclPlan:
    """Validate every setting and input file that can be checked without the weights, and choose the heads.

    :func:`check_settings`, then the prompts (``prompts_file`` read, or generated), the model's
    config, and the heads (``heads``, or the top percentages of the scores file). Output folders
    are the caller's to check.

    Returns
    -------
    PatternIclPlan

    Raises
    ------
    InputError, FileNotFoundError
        On the first problem, before the model loads; engine messages name the settings.
    """
    spec = check_settings(settings)
    check_pattern_memory(settings)
    shape = read_model_shape(spec)
    check_shots_fit(settings, shape.n_ctx)
    prompts, config = pattern_prompts(settings, settings.tasks)
    head_sets, scores_file = choose_head_sets(settings, spec, shape)
    return PatternIclPlan(spec, shape, tuple(settings.tasks), tuple(settings.ablate), tuple(settings.method),
                          prompts, config, head_sets, scores_file)


# ----------------------------------------------------------------------------- the run

def conditions(ablate: Sequence[str], methods: Sequence[str], head_sets: Dict[str, HeadSelection]) -> List[Condition]:
    """Every (method, selection, ablate, draw) to run, intact first."""
    out = []
    if "none" in ablate:
        out.append(Condition(method="none", selection="none", ablate="none", draw=-1, heads=[]))
    for method in methods:
        for selection, heads in head_sets.items():
            if "induction" in ablate:
                out.append(Condition(method=method, selection=selection, ablate="induction", draw=-1,
                                     heads=heads.induction))
            if "random" in ablate:
                out.extend(Condition(method=method, selection=selection, ablate="random", draw=draw, heads=drawn)
                           for draw, drawn in enumerate(heads.random))
    return out


def reference_prompts(settings: PatternIclSettings, tasks: Sequence[str], prompts: Dict[str, List[PatternPrompt]],
                      config: PatternTaskConfig) -> Dict[str, List[PatternPrompt]]:
    """The mean-ablation reference prompts of every task (``reference_corpus``)."""
    if settings.reference_corpus == "eval":
        return dict(prompts)
    ref_config = PatternTaskConfig(shots=config.shots, n_items=settings.n_reference, demo_seeds=(0,),
                                   seed=settings.reference_seed)
    fresh = {name: generate_prompts(name, ref_config) for name in tasks}
    if settings.reference_corpus == "all":
        pooled = [prompt for name in tasks for prompt in fresh[name]]
        return {name: pooled for name in tasks}
    return fresh


def _reference_layers(head_sets: Dict[str, HeadSelection]) -> List[int]:
    """Layers of every head any condition mean-ablates."""
    heads = [head for s in head_sets.values() for group in [s.induction, *s.random] for head in group]
    return sorted({layer for layer, _ in heads})


def _check_context(plans: Dict[str, pattern_eval.ScoringPlan], reference_lengths: Dict[str, int], n_ctx: int,
                   shots: int) -> None:
    """Every forward sequence (prompt + label tokens but the last) and reference prompt fits the context."""
    longest = {name: max(batch.tokens.shape[1] for batch in plan.batches) for name, plan in plans.items()}
    task = max(longest, key=longest.get)
    if longest[task] > n_ctx:
        raise InputError(f"prompts of up to {longest[task]} tokens ({task}, {shots} shots) exceed the model's "
                         f"context of {n_ctx}; use fewer demonstrations (`shots`)", parameters=("shots",))
    if reference_lengths and max(reference_lengths.values()) > n_ctx:
        task = max(reference_lengths, key=reference_lengths.get)
        raise InputError(f"mean-ablation reference prompts of up to {reference_lengths[task]} tokens ({task}) exceed "
                         f"the model's context of {n_ctx}; use fewer demonstrations (`shots`)", parameters=("shots",))


def _accuracy_rows(items: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    rows = []
    for key, group in items.groupby(list(keys), sort=False):
        accuracy, low, high = pattern_eval.accuracy_with_ci(group["correct"].to_numpy())
        row = dict(zip(keys, key))
        row.update(n=len(group), n_correct=int(group["correct"].sum()), accuracy=accuracy, ci_low=low,
                   ci_high=high, chance=get_task(row["task"]).chance)
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(items: pd.DataFrame) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Accuracy tables: pooled over demonstration seeds, and per seed; random draws also pooled.

    Returns
    -------
    results, results_by_seed : pandas.DataFrame
        Columns task, method, selection, ablate, draw ("pooled" for all random draws together),
        [demo_seed,] n, n_correct, accuracy, ci_low, ci_high, chance.
    """
    keyed = items.assign(draw=items["draw"].astype(str).replace("-1", ""))
    pooled_random = keyed[keyed["ablate"] == "random"].assign(draw="pooled")
    both = pd.concat([keyed, pooled_random], ignore_index=True)
    keys = ["task", "method", "selection", "ablate", "draw"]
    return _accuracy_rows(both, keys), _accuracy_rows(both, keys + ["demo_seed"])


def used_parameters(settings: PatternIclSettings, plan: PatternIclPlan) -> Dict[str, Any]:
    """The run's parameters as metadata records them: what was used, None for what was not.

    The prompt settings are those the prompts were made with (a ``prompts_file``'s own), the
    scores file is the one the top heads came from, and settings that no condition used (the
    percentages with ``heads``, the reference corpus without mean ablation, ...) are None. Paths
    are portable (:func:`icl_cmr.files.outputs.portable_path`); lists of names are comma-joined.
    """
    parameters: Dict[str, Any] = {item.name: getattr(settings, item.name) for item in fields(settings)}
    parameters.update(model=portable_path(settings.model) if plan.spec.is_local else settings.model,
                      tasks=",".join(settings.tasks), ablate=",".join(settings.ablate),
                      method=",".join(settings.method), percentage=list(settings.percentage),
                      prompts_file=portable_path(settings.prompts_file), scores_dir=portable_path(settings.scores_dir))
    config = plan.config
    parameters.update(shots=config.shots, n_items=config.n_items, seeds=list(config.demo_seeds),
                      task_seed=config.seed)
    parameters["scores_file"] = portable_path(plan.scores_file)
    if not settings.needs_heads or settings.heads:
        parameters.update(percentage=None, scores_dir=None)
    if not settings.needs_heads:
        parameters.update(heads=None, method=None)
    if "random" not in plan.ablate:
        parameters["n_random_sets"] = None
    if "mean" not in plan.methods or not plan.head_sets:
        parameters.update(reference_corpus=None, n_reference=None, reference_seed=None)
    elif settings.reference_corpus == "eval":
        parameters.update(n_reference=None, reference_seed=None)
    if "knockout" not in plan.methods or not plan.head_sets:
        parameters["knockout_kind"] = None
    return parameters


def run_pattern_icl(settings: PatternIclSettings, plan: Optional[PatternIclPlan] = None) -> PatternIclRun:
    """Score every task under every condition, then summarise and test.

    Per task the prompts are tokenized and planned into batches once
    (:func:`icl_cmr.interventions.pattern_eval.plan_scoring`) and every condition reuses them; the
    mean-ablation reference of each distinct reference corpus is computed once (``reference_corpus
    "all"``: once for every task). Prompt lengths are checked against the context after tokenizing,
    before the first forward pass.

    Parameters
    ----------
    settings : PatternIclSettings
    plan : PatternIclPlan, optional
        From :func:`check_pattern_icl` (checked here when not given).

    Returns
    -------
    PatternIclRun

    Raises
    ------
    InputError
        A model without a tokenizer, prompts longer than its context, or any problem
        :func:`check_pattern_icl` finds.
    """
    plan = plan or check_pattern_icl(settings)
    spec, tasks, methods, prompts, config = plan.spec, plan.tasks, plan.methods, plan.prompts, plan.config
    head_sets = plan.head_sets
    device = resolve_device(settings.device)
    torch.set_num_threads(settings.threads)
    hooks_needed = ("attn_scores", "pattern", "v", "z") if "knockout" in methods else ("pattern", "v", "z")
    model = models.load_model(spec, device=device, dtype=settings.dtype, require_hooks=hooks_needed)
    if getattr(model, "tokenizer", None) is None:
        raise InputError(f"model {spec.name} has no tokenizer; the pattern tasks are text")
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    if (n_layers, n_heads) != (plan.shape.n_layers, plan.shape.n_heads):
        raise InputError(f"{spec.name}: the loaded model has {n_layers} x {n_heads} heads, its config "
                         f"{plan.shape.n_layers} x {plan.shape.n_heads}; the heads were chosen for the config")
    todo = conditions(plan.ablate, methods, head_sets)
    bos_choice = choose_bos(model, settings.bos, spec.trust_remote_code)
    bos = bos_choice.token_id
    encoded = {name: pattern_eval.encode_prompts(model.tokenizer, prompts[name], bos, kind_level=settings.knockout_kind)
               for name in tasks}
    plans = {name: pattern_eval.plan_scoring(encoded[name], settings.batch_size) for name in tasks}
    longest = {name: max(len(e.prompt_ids) + max(len(c) for c in e.continuation_ids) for e in encoded[name])
               for name in tasks}
    references = reference_prompts(settings, tasks, prompts, config) if "mean" in methods and head_sets else {}
    # One mean-ablation reference per distinct corpus (all tasks share one with reference_corpus "all"),
    # long enough for every task that uses it, kept until the last of those tasks is done.
    corpus_of = {name: tuple(p.text for p in reference) for name, reference in references.items()}
    corpus_encoded = {}
    for name, key in corpus_of.items():
        if key not in corpus_encoded:
            corpus_encoded[key] = pattern_eval.encode_prompts(model.tokenizer, references[name], bos)
    reference_lengths = {name: max(len(e.prompt_ids) for e in corpus_encoded[key]) for name, key in corpus_of.items()}
    _check_context(plans, reference_lengths, int(model.cfg.n_ctx), config.shots)  # before any forward pass
    _check_batch_memory(plans, int(model.cfg.d_vocab), device)
    corpus_length: Dict[Tuple[str, ...], int] = {}
    for name, key in corpus_of.items():
        corpus_length[key] = max(corpus_length.get(key, 0), longest[name])
    last_user = {key: name for name, key in corpus_of.items()}
    corpus_means: Dict[Tuple[str, ...], tuple] = {}
    reference_info = {}
    tables = []
    for name in tasks:
        plan_of_task = plans[name]
        means = None
        if name in corpus_of:
            key = corpus_of[name]
            if key not in corpus_means:
                ref_encoded = corpus_encoded[key]
                corpus_means[key] = (*pattern_eval.reference_means(model, ref_encoded, _reference_layers(head_sets),
                                                                   corpus_length[key], settings.batch_size),
                                     len(ref_encoded))
            means, ref_length, n_reference = corpus_means[key]
            beyond = sum(max(0, len(e.prompt_ids) - ref_length) for e in encoded[name])
            reference_info[name] = dict(reference_prompts=n_reference, reference_length=ref_length,
                                        eval_prompt_tokens_beyond_reference=beyond)
            if beyond:
                logger.info("%s: %d evaluation prompt tokens lie beyond the %d reference positions (pooled mean used)",
                            name, beyond, ref_length)
        label_index = np.array([e.label_index for e in encoded[name]])
        labels = prompts[name][0].labels
        for condition in todo:
            start = time.monotonic()
            hooks, knockout = [], None
            if condition.method == "knockout":
                knockout = condition.heads
            elif condition.method in ("mean", "zero"):
                hooks = ablation_hooks(model, condition.heads, "value" if condition.method == "zero" else "mean",
                                       means=means)
            log_likelihoods = pattern_eval.label_log_likelihoods(model, plan_of_task, hooks=hooks,
                                                                 knockout_heads=knockout)
            predicted, correct, margin = pattern_eval.score_choices(log_likelihoods, label_index)
            frame = pd.DataFrame({
                "task": name, "item": [p.item for p in prompts[name]],
                "demo_seed": [p.demo_seed for p in prompts[name]],
                "method": condition.method, "selection": condition.selection, "ablate": condition.ablate,
                "draw": condition.draw, "label": label_index, "predicted": predicted, "correct": correct,
                "margin": margin})
            for column, label in enumerate(labels):
                frame[f"ll_{label}"] = log_likelihoods[:, column]
            tables.append(frame)
            logger.info("%s %s/%s/%s%s: accuracy %.3f (%d prompts, %d sequences, %.1f s)", name, condition.method,
                        condition.selection, condition.ablate, "" if condition.draw < 0 else f"#{condition.draw}",
                        correct.mean(), len(correct), plan_of_task.n_runs, time.monotonic() - start)
        if name in corpus_of and last_user[corpus_of[name]] == name:
            del corpus_means[corpus_of[name]], means
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    items = pd.concat(tables, ignore_index=True)
    results, results_by_seed = summarise(items)
    stats = accuracy_comparison_table(items, seed=settings.random_seed)
    return PatternIclRun(items=items, results=results, results_by_seed=results_by_seed, stats=stats, plan=plan,
                         parameters=used_parameters(settings, plan), n_layers=n_layers, n_heads=n_heads,
                         mean_reference=reference_info, bos=bos_choice.describe())
