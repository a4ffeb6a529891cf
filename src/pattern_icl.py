"""Few-shot pattern matching under induction-head ablation ([CS24]; DESIGN.md section 6).

Asks a model the abstract pattern tasks of :mod:`icl_cmr.interventions.pattern_tasks` (5-shot, made-up
labels, scored by label log-likelihood) intact, with the top 1% / 3% induction heads (by
prefix-matching score) ablated, and with layer-matched random heads ablated; three
interventions: mean ablation of the heads' ``hook_z``, zero ablation, and attention knockout
of their induction edges only.

Example::

    python src/pattern_icl.py --model gpt2-small --tasks repetition,recursion,centre_embedding \\
        --shots 5 --ablate none,induction,random --method mean,knockout --percentage 1 3

Writes to ``<out-dir>/<model>/`` (default ``saved_ablation/pattern_icl/<model>/``):
``prompts.json`` (every prompt, reloadable with ``--prompts-file``), ``heads.json``,
``items.csv`` (one row per prompt and condition), ``results.csv`` (accuracy with Wilson 95%
interval per task x condition, demonstration seeds pooled; random draws one row each plus a
pooled row), ``results_by_seed.csv``, ``stats.csv`` (paired tests) and ``metadata.json``;
and the grouped bar chart ``<fig-dir>/<model>_accuracy.pdf`` (default ``figs/pattern_icl/``).
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from icl_cmr.cli.args import (OneLineErrorParser, UniqueItems, device_arg, float_range, given_options,
                              ignored_options, positive_int, refuse_options, run_cli, seed_int, setup_logging)
from icl_cmr.devices import resolve_device
from icl_cmr.errors import InputError
from icl_cmr.heads.models import DTYPES

logger = logging.getLogger("pattern_icl")

ABLATE_CHOICES = ("none", "induction", "random")
#: ``zero`` zeroes the heads' value vectors (head_ablation method "value", the [LI24] way).
METHOD_CHOICES = ("mean", "zero", "knockout")
REFERENCE_CHOICES = ("task", "eval", "all")


def _comma_list(text: str, accepted: Sequence[str], flag: str) -> List[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    if not values:
        raise InputError(f"{flag} is empty; accepted: {', '.join(accepted)}")
    unknown = [value for value in values if value not in accepted]
    if unknown:
        raise InputError(f"{flag}: unknown value(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    repeated = [value for index, value in enumerate(values) if value in values[:index]]
    if repeated:
        raise InputError(f"{flag} repeats {', '.join(dict.fromkeys(repeated))}; give each value once")
    return values


def build_parser() -> argparse.ArgumentParser:
    from icl_cmr.interventions.pattern_tasks import TASKS

    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="registry name, Hugging Face id or local model folder")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks")
    parser.add_argument("--shots", type=positive_int, default=5, help="demonstrations per prompt ([CS24]: 5)")
    parser.add_argument("--seeds", type=seed_int, nargs="+", action=UniqueItems, default=[0, 1, 2],
                        help="demonstration seeds, each once ([CS24]: 3)")
    parser.add_argument("--n-items", type=positive_int, default=50, help="queries per task (class-balanced)")
    parser.add_argument("--task-seed", type=seed_int, default=0, help="seed of the queries")
    parser.add_argument("--prompts-file", type=Path, default=None,
                        help="reuse the prompts of an earlier run (its prompts.json) instead of generating; "
                             "not with --shots, --n-items, --seeds, --task-seed")
    parser.add_argument("--ablate", default="none,induction,random",
                        help=f"comma-separated conditions: {', '.join(ABLATE_CHOICES)}")
    parser.add_argument("--method", default="mean,knockout",
                        help=f"comma-separated interventions: {', '.join(METHOD_CHOICES)}")
    parser.add_argument("--percentage", type=float_range(0.0, 100.0, low_open=True), nargs="+", action=UniqueItems,
                        default=[1.0, 3.0], help="top percentages of heads by prefix-matching score ([CS24]: 1 and 3)")
    parser.add_argument("--heads", default=None,
                        help="ablate these heads (e.g. L5H1,L6H9) instead of the top percentages; not with "
                             "--percentage, --scores-file, --scores-dir")
    parser.add_argument("--scores-file", type=Path, default=None,
                        help="head-score pickle with 'prefix_matching_score' [L, H] (default: found in --scores-dir)")
    parser.add_argument("--scores-dir", type=Path, default=Path("saved_scores"))
    parser.add_argument("--n-random-sets", type=positive_int, default=5, help="layer-matched random head draws")
    parser.add_argument("--random-seed", type=seed_int, default=0,
                        help="seed of draw 0 (draw d: seed + d; a seed repeating an earlier set is skipped)")
    parser.add_argument("--reference-corpus", choices=REFERENCE_CHOICES, default="task",
                        help="mean-ablation reference: fresh prompts of the same task (task), the evaluation "
                             "prompts themselves (eval), or fresh prompts of every selected task (all)")
    parser.add_argument("--n-reference", type=positive_int, default=64, help="reference prompts per task")
    parser.add_argument("--reference-seed", type=seed_int, default=1000,
                        help="query seed of the reference prompts (differs from --task-seed)")
    parser.add_argument("--knockout-kind", choices=("kind", "category"), default="kind",
                        help="same kind = same letter/word/separator/label (kind) or same word category (category)")
    parser.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None,
                        help="start every prompt with a BOS token (--bos) or not (--no-bos); default: the tokenizer's "
                             "own BOS token when it defines one, none otherwise")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads (default 1: on a busy 2-core machine 1 scored 4x faster than 2)")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--out-dir", type=Path, default=Path("saved_ablation") / "pattern_icl",
                        help="results go to <out-dir>/<model name>/ (default: %(default)s/<model name>/)")
    parser.add_argument("--fig-dir", type=Path, default=Path("figs") / "pattern_icl")
    parser.add_argument("--verbose", action="store_true")
    return parser


def _induction_scores(args, spec, n_layers: int, n_heads: int) -> Tuple[np.ndarray, Path]:
    """``prefix_matching_score`` [L, H] from ``--scores-file`` or the model's file in ``--scores-dir``, and its path.

    A file made for another model (its ``metadata["model"]``) is used with a warning naming both models.
    """
    from icl_cmr.files.scores import find_score_file, other_model_warning, read_head_scores

    path = args.scores_file if args.scores_file is not None else find_score_file(args.scores_dir, spec.name)
    scores = read_head_scores(path, required=("prefix_matching_score",))
    matrix = scores.prefix_matching_score
    if matrix.shape != (n_layers, n_heads):
        raise InputError(f"{path}: prefix_matching_score has shape {matrix.shape}, the model has "
                         f"{n_layers} x {n_heads} heads")
    warning = other_model_warning(scores.model, spec.name, f"--scores-file {path}")
    if warning:
        logger.warning(warning)
    logger.info("prefix-matching scores from %s", path)
    return matrix, Path(path)


def head_sets(args, spec, n_layers: int, n_heads: int, need_heads: bool) -> Tuple[Dict[str, dict], Optional[Path]]:
    """``{selection: {"induction": heads, "random": [heads per draw], "random_draws": RandomHeadSets}}``,
    and the head-score file the top heads came from (None with ``--heads`` or when no head is ablated).

    The random draws are pairwise distinct (:func:`icl_cmr.interventions.head_ablation.draw_random_head_sets`);
    when fewer layer-matched sets exist than ``--n-random-sets``, every one is used once and a
    warning says so. Needs only the model's shape, so it runs before the model loads.
    """
    from icl_cmr.interventions.head_ablation import draw_random_head_sets, format_heads, parse_heads, validate_heads
    from icl_cmr.interventions.pattern_eval import select_top_heads

    scores_file = None
    if not need_heads:
        return {}, scores_file
    if args.heads:
        chosen = {"heads": parse_heads(args.heads)}
        validate_heads(chosen["heads"], n_layers, n_heads)
    else:
        scores, scores_file = _induction_scores(args, spec, n_layers, n_heads)
        chosen = {f"top{p:g}%": select_top_heads(scores, p) for p in args.percentage}
        if len({tuple(heads) for heads in chosen.values()}) < len(chosen):
            logger.warning("some --percentage values select the same heads on this %d-head model: %s",
                           n_layers * n_heads, {name: len(heads) for name, heads in chosen.items()})
    sets = {}
    for name, heads in chosen.items():
        drawn = draw_random_head_sets(n_layers, n_heads, len(heads), args.n_random_sets, args.random_seed,
                                      exclude=heads, layer_matched_to=heads)
        if drawn.exhausted:
            logger.warning("%s: only %d distinct layer-matched random set(s) of %d heads exist outside %s; using "
                           "%s once, not %d draws (--n-random-sets)", name, drawn.n_possible, len(heads),
                           format_heads(heads), "it" if drawn.n_possible == 1 else "each", args.n_random_sets)
        sets[name] = {"induction": heads, "random": [list(draw) for draw in drawn.sets], "random_draws": drawn}
    return sets, scores_file


def conditions(ablate: Sequence[str], methods: Sequence[str], sets: Dict[str, dict]) -> List[dict]:
    """Every (method, selection, ablate, draw) to run, intact first."""
    out = []
    if "none" in ablate:
        out.append(dict(method="none", selection="none", ablate="none", draw=-1, heads=[]))
    for method in methods:
        for selection, heads in sets.items():
            if "induction" in ablate:
                out.append(dict(method=method, selection=selection, ablate="induction", draw=-1,
                                heads=heads["induction"]))
            if "random" in ablate:
                out.extend(dict(method=method, selection=selection, ablate="random", draw=draw, heads=drawn)
                           for draw, drawn in enumerate(heads["random"]))
    return out


def _prompts(args, task_names: Sequence[str]):
    from icl_cmr.interventions.pattern_tasks import PatternTaskConfig, generate_prompts
    from icl_cmr.files.results import read_pattern_prompts

    if args.prompts_file is not None:
        prompts, config = read_pattern_prompts(args.prompts_file)
        missing = [name for name in task_names if name not in prompts]
        if missing:
            raise InputError(f"{args.prompts_file} has no prompts for task(s) {', '.join(missing)}; "
                             f"it has {', '.join(prompts)}")
        return {name: prompts[name] for name in task_names}, config
    config = PatternTaskConfig(shots=args.shots, n_items=args.n_items, demo_seeds=tuple(args.seeds),
                               seed=args.task_seed)
    return {name: generate_prompts(name, config) for name in task_names}, config


def _reference_prompts(args, task_names, prompts, config):
    from icl_cmr.interventions.pattern_tasks import PatternTaskConfig, generate_prompts

    if args.reference_corpus == "eval":
        return dict(prompts)
    ref_config = PatternTaskConfig(shots=config.shots, n_items=args.n_reference, demo_seeds=(0,),
                                   seed=args.reference_seed)
    fresh = {name: generate_prompts(name, ref_config) for name in task_names}
    if args.reference_corpus == "all":
        pooled = [prompt for name in task_names for prompt in fresh[name]]
        return {name: pooled for name in task_names}
    return fresh


def _reference_layers(sets: Dict[str, dict]) -> List[int]:
    """Layers of every head any condition mean-ablates."""
    heads = [head for s in sets.values() for group in [s["induction"], *s["random"]] for head in group]
    return sorted({layer for layer, _ in heads})


#: Options that make the prompts; a prompts file brings its own.
PROMPT_OPTIONS = ("shots", "n_items", "seeds", "task_seed")
#: Options that choose the heads by score; ``--heads`` names them instead.
SCORE_OPTIONS = ("percentage", "scores_file", "scores_dir")


def check_option_groups(parser: argparse.ArgumentParser, args: argparse.Namespace, given: frozenset) -> None:
    """Options that other options make meaningless: refused when they contradict what was asked (prompt
    settings with a prompts file, score-based selection with explicit heads), else a warning (settings of
    a condition that does not run); either way the metadata records them as unused (None)."""
    if args.prompts_file is not None:
        refuse_options(parser, given, PROMPT_OPTIONS, "with --prompts-file (the prompts come from the file)")
    if args.heads is not None:
        refuse_options(parser, given, SCORE_OPTIONS, "with --heads (they pick heads by prefix-matching score)")
    if args.scores_file is not None:
        refuse_options(parser, given, ("scores_dir",), "with --scores-file (it locates the default scores file)")
    ablate = set(_comma_list(args.ablate, ABLATE_CHOICES, "--ablate"))
    methods = set(_comma_list(args.method, METHOD_CHOICES, "--method"))
    unused = []
    if not ablate & {"induction", "random"}:
        refuse_options(parser, given, ("heads", *SCORE_OPTIONS), "with --ablate none (no head is ablated)")
        unused.append(ignored_options(parser, given, ("method",), "with --ablate none (no head is ablated)"))
    if "random" not in ablate:  # --random-seed also seeds the permutation tests: always used
        unused.append(ignored_options(parser, given, ("n_random_sets",), "without random in --ablate"))
    if "mean" not in methods:
        unused.append(ignored_options(parser, given, ("reference_corpus", "n_reference", "reference_seed"),
                                      "without mean in --method"))
    elif args.reference_corpus == "eval":
        unused.append(ignored_options(parser, given, ("n_reference", "reference_seed"),
                                      "with --reference-corpus eval (the evaluation prompts are the reference)"))
    if "knockout" not in methods:
        unused.append(ignored_options(parser, given, ("knockout_kind",), "without knockout in --method"))
    for message in filter(None, unused):
        logger.warning("%s; ignored (recorded as unused in metadata.json)", message)


@dataclass
class Checked:
    """Everything :func:`check_arguments` validated before the model loads, for :func:`run`."""

    spec: object                 # icl_cmr.heads.models.ModelSpec
    shape: object                # icl_cmr.heads.models.ModelShape, from the model's config (no weights)
    task_names: List[str]
    ablate: List[str]
    methods: List[str]
    prompts: dict                # task -> list of PatternPrompt
    config: object               # PatternTaskConfig the prompts were made with (the file's with --prompts-file)
    sets: Dict[str, dict]        # head_sets()
    scores_file: Optional[Path]  # where the top heads came from (None: --heads, or no head ablated)


def check_arguments(args: argparse.Namespace) -> Checked:
    """Validate every argument, input file and output folder that can be checked without the weights.

    Raises
    ------
    InputError, FileNotFoundError
        On the first problem, before the model loads or anything is written.
    """
    from icl_cmr.interventions.head_ablation import parse_heads
    from icl_cmr.heads.models import read_model_shape, resolve_model
    from icl_cmr.files.folders import check_writable_dir
    from icl_cmr.interventions.pattern_tasks import TASKS

    task_names = _comma_list(args.tasks, list(TASKS), "--tasks")
    ablate = _comma_list(args.ablate, ABLATE_CHOICES, "--ablate")
    methods = _comma_list(args.method, METHOD_CHOICES, "--method")
    if args.prompts_file is None and args.n_items < 2:
        raise InputError("--n-items must be >= 2 so both classes are asked")
    need_heads = bool({"induction", "random"} & set(ablate))
    if args.heads and need_heads:
        parse_heads(args.heads)  # a label that is not L<layer>H<head>: before the model's config is read
    spec = resolve_model(args.model)
    check_writable_dir(args.out_dir / spec.name, "--out-dir")
    check_writable_dir(args.fig_dir, "--fig-dir")
    prompts, config = _prompts(args, task_names)
    shape = read_model_shape(spec)
    sets, scores_file = head_sets(args, spec, shape.n_layers, shape.n_heads, need_heads)
    return Checked(spec, shape, task_names, ablate, methods, prompts, config, sets, scores_file)


def _check_context(plans: Dict[str, object], reference_lengths: Dict[str, int], n_ctx: int, shots: int) -> None:
    """Every forward sequence (prompt + label tokens but the last) and reference prompt fits the context."""
    longest = {name: max(batch.tokens.shape[1] for batch in plan.batches) for name, plan in plans.items()}
    task = max(longest, key=longest.get)
    if longest[task] > n_ctx:
        raise InputError(f"prompts of up to {longest[task]} tokens ({task}, {shots} shots) exceed the model's "
                         f"context of {n_ctx}; use fewer demonstrations (--shots)")
    if reference_lengths and max(reference_lengths.values()) > n_ctx:
        task = max(reference_lengths, key=reference_lengths.get)
        raise InputError(f"mean-ablation reference prompts of up to {reference_lengths[task]} tokens ({task}) exceed "
                         f"the model's context of {n_ctx}; use fewer demonstrations (--shots)")


def run(args, checked: Optional[Checked] = None) -> Tuple[object, dict]:
    """Score every task under every condition; returns the per-item table and run info.

    Per task the prompts are tokenized and planned into batches once (:func:`plan_scoring`) and
    every condition reuses them; the mean-ablation reference of each distinct reference corpus
    is computed once (``--reference-corpus all``: once for every task). Prompt lengths are
    checked against the context after tokenizing, before the first forward pass.
    """
    import pandas as pd
    import torch

    from icl_cmr.interventions.head_ablation import ablation_hooks
    from icl_cmr.heads.models import choose_bos, load_model
    from icl_cmr.interventions.pattern_eval import (encode_prompts, label_log_likelihoods, plan_scoring,
                                                    reference_means, score_choices)

    checked = checked or check_arguments(args)
    spec, task_names, methods, prompts, config = (checked.spec, checked.task_names, checked.methods,
                                                  checked.prompts, checked.config)
    sets = checked.sets
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    model = load_model(spec, device=device, dtype=args.dtype,
                       require_hooks=("attn_scores", "pattern", "v", "z") if "knockout" in methods else ("pattern", "v", "z"))
    if getattr(model, "tokenizer", None) is None:
        raise InputError(f"model {spec.name} has no tokenizer; the pattern tasks are text")
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    if (n_layers, n_heads) != (checked.shape.n_layers, checked.shape.n_heads):
        raise InputError(f"{spec.name}: the loaded model has {n_layers} x {n_heads} heads, its config "
                         f"{checked.shape.n_layers} x {checked.shape.n_heads}; the heads were chosen for the config")
    todo = conditions(checked.ablate, methods, sets)
    bos_choice = choose_bos(model, args.bos, spec.trust_remote_code)
    bos = bos_choice.token_id
    encoded = {name: encode_prompts(model.tokenizer, prompts[name], bos, kind_level=args.knockout_kind)
               for name in task_names}
    plans = {name: plan_scoring(encoded[name], args.batch_size) for name in task_names}
    longest = {name: max(len(e.prompt_ids) + max(len(c) for c in e.continuation_ids) for e in encoded[name])
               for name in task_names}
    references = _reference_prompts(args, task_names, prompts, config) if "mean" in methods and sets else {}
    # One mean-ablation reference per distinct corpus (all tasks share one with --reference-corpus all),
    # long enough for every task that uses it, kept until the last of those tasks is done.
    corpus_of = {name: tuple(p.text for p in reference) for name, reference in references.items()}
    corpus_encoded = {}
    for name, key in corpus_of.items():
        if key not in corpus_encoded:
            corpus_encoded[key] = encode_prompts(model.tokenizer, references[name], bos)
    reference_lengths = {name: max(len(e.prompt_ids) for e in corpus_encoded[key]) for name, key in corpus_of.items()}
    _check_context(plans, reference_lengths, int(model.cfg.n_ctx), config.shots)  # before any forward pass
    corpus_length = {}
    for name, key in corpus_of.items():
        corpus_length[key] = max(corpus_length.get(key, 0), longest[name])
    last_user = {key: name for name, key in corpus_of.items()}
    corpus_means: Dict[Tuple[str, ...], tuple] = {}
    reference_info = {}
    tables = []
    for name in task_names:
        plan = plans[name]
        means = None
        if name in corpus_of:
            key = corpus_of[name]
            if key not in corpus_means:
                ref_encoded = corpus_encoded[key]
                corpus_means[key] = (*reference_means(model, ref_encoded, _reference_layers(sets), corpus_length[key],
                                                      args.batch_size), len(ref_encoded))
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
            if condition["method"] == "knockout":
                knockout = condition["heads"]
            elif condition["method"] in ("mean", "zero"):
                hooks = ablation_hooks(model, condition["heads"], "value" if condition["method"] == "zero" else "mean",
                                       means=means)
            log_likelihoods = label_log_likelihoods(model, plan, hooks=hooks, knockout_heads=knockout)
            predicted, correct, margin = score_choices(log_likelihoods, label_index)
            frame = pd.DataFrame({
                "task": name, "item": [p.item for p in prompts[name]],
                "demo_seed": [p.demo_seed for p in prompts[name]],
                "method": condition["method"], "selection": condition["selection"], "ablate": condition["ablate"],
                "draw": condition["draw"], "label": label_index, "predicted": predicted, "correct": correct,
                "margin": margin})
            for column, label in enumerate(labels):
                frame[f"ll_{label}"] = log_likelihoods[:, column]
            tables.append(frame)
            logger.info("%s %s/%s/%s%s: accuracy %.3f (%d prompts, %d sequences, %.1f s)", name, condition["method"],
                        condition["selection"], condition["ablate"],
                        "" if condition["draw"] < 0 else f"#{condition['draw']}", correct.mean(), len(correct),
                        plan.n_runs, time.monotonic() - start)
        if name in corpus_of and last_user[corpus_of[name]] == name:
            del corpus_means[corpus_of[name]], means
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    info = dict(spec=spec, config=config, prompts=prompts, sets=sets, reference=reference_info,
                n_layers=n_layers, n_heads=n_heads, bos=bos_choice.describe(), scores_file=checked.scores_file)
    return pd.concat(tables, ignore_index=True), info


def _accuracy_rows(items, keys: Sequence[str]):
    import pandas as pd

    from icl_cmr.interventions.pattern_eval import accuracy_with_ci
    from icl_cmr.interventions.pattern_tasks import get_task

    rows = []
    for key, group in items.groupby(list(keys), sort=False):
        accuracy, low, high = accuracy_with_ci(group["correct"].to_numpy())
        row = dict(zip(keys, key))
        row.update(n=len(group), n_correct=int(group["correct"].sum()), accuracy=accuracy, ci_low=low,
                   ci_high=high, chance=get_task(row["task"]).chance)
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(items):
    """Accuracy tables: pooled over demonstration seeds, and per seed; random draws also pooled.

    Returns
    -------
    results, results_by_seed : pandas.DataFrame
        Columns task, method, selection, ablate, draw ("pooled" for all random draws together),
        [demo_seed,] n, n_correct, accuracy, ci_low, ci_high, chance.
    """
    import pandas as pd

    keyed = items.assign(draw=items["draw"].astype(str).replace("-1", ""))
    pooled_random = keyed[keyed["ablate"] == "random"].assign(draw="pooled")
    both = pd.concat([keyed, pooled_random], ignore_index=True)
    keys = ["task", "method", "selection", "ablate", "draw"]
    return _accuracy_rows(both, keys), _accuracy_rows(both, keys + ["demo_seed"])


def paired_statistics(items, n_resamples: int = 10000, seed: int = 0):
    """Per task, method and selection: intact vs induction, intact vs random, induction vs random.

    Items are paired by (item, demonstration seed). Random-head correctness is averaged over
    draws per item. McNemar's exact test is given when both sides are single 0/1 outcomes
    (random with one draw counts); the sign-flip permutation test on per-item correctness
    always.

    Returns
    -------
    pandas.DataFrame
        Columns task, method, selection, comparison, n, accuracy_a, accuracy_b, difference,
        permutation_p, mcnemar_only_a, mcnemar_only_b, mcnemar_p, and permutation_q_bh (the
        permutation p-values adjusted by Benjamini-Hochberg over every row of the table).
    """
    import pandas as pd

    from icl_cmr.interventions.pattern_eval import mcnemar_exact, paired_permutation_test

    key = ["item", "demo_seed"]
    rows = []
    for task, task_items in items.groupby("task", sort=False):
        intact = task_items[task_items["ablate"] == "none"].set_index(key)["correct"].astype(float)
        ablated = task_items[task_items["ablate"] != "none"]
        for (method, selection), group in ablated.groupby(["method", "selection"], sort=False):
            sides = {}
            induction = group[group["ablate"] == "induction"]
            if len(induction):
                sides["induction"] = (induction.set_index(key)["correct"].astype(float), True)
            random = group[group["ablate"] == "random"]
            if len(random):
                n_draws = random["draw"].nunique()
                sides["random"] = (random.groupby(key)["correct"].mean(), n_draws == 1)
            if len(intact):
                sides["intact"] = (intact, True)
            for a, b in (("intact", "induction"), ("intact", "random"), ("random", "induction")):
                if a not in sides or b not in sides:
                    continue
                (x, x_binary), (y, y_binary) = sides[a], sides[b]
                y = y.reindex(x.index)
                if y.isna().any():
                    raise InputError(f"{task}: conditions {a} and {b} were not run on the same prompts")
                difference, p_perm = paired_permutation_test(x.to_numpy(), y.to_numpy(), n_resamples, seed)
                row = dict(task=task, method=method, selection=selection, comparison=f"{a} - {b}", n=len(x),
                           accuracy_a=float(x.mean()), accuracy_b=float(y.mean()), difference=difference,
                           permutation_p=p_perm, mcnemar_only_a=np.nan, mcnemar_only_b=np.nan, mcnemar_p=np.nan)
                if x_binary and y_binary:
                    only_a, only_b, p_mc = mcnemar_exact(x.to_numpy() > 0.5, y.to_numpy() > 0.5)
                    row.update(mcnemar_only_a=only_a, mcnemar_only_b=only_b, mcnemar_p=p_mc)
                rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        from scipy.stats import false_discovery_control

        # Many tasks x conditions are tested at once: Benjamini-Hochberg over the whole table.
        table["permutation_q_bh"] = false_discovery_control(table["permutation_p"].to_numpy())
    return table


def used_parameters(args: argparse.Namespace, checked: Checked) -> dict:
    """The run's parameters as metadata records them: what was used, None for what was not.

    The prompt settings are those the prompts were made with (a ``--prompts-file``'s own), the
    scores file is the one the top heads came from, and options that no condition used (the
    percentages with ``--heads``, the reference corpus without mean ablation, ...) are None.
    """
    from icl_cmr.files.outputs import portable_path

    parameters = {key: (portable_path(value) if isinstance(value, Path) else value)
                  for key, value in vars(args).items()}
    parameters["model"] = portable_path(args.model) if checked.spec.is_local else args.model
    config = checked.config
    parameters.update(shots=config.shots, n_items=config.n_items, seeds=list(config.demo_seeds),
                      task_seed=config.seed)
    parameters["scores_file"] = portable_path(checked.scores_file)
    need_heads = bool({"induction", "random"} & set(checked.ablate))
    if not need_heads or args.heads:
        parameters.update(percentage=None, scores_dir=None)
    if not need_heads:
        parameters.update(heads=None, method=None)
    if "random" not in checked.ablate:
        parameters["n_random_sets"] = None
    if "mean" not in checked.methods or not checked.sets:
        parameters.update(reference_corpus=None, n_reference=None, reference_seed=None)
    elif args.reference_corpus == "eval":
        parameters.update(n_reference=None, reference_seed=None)
    if "knockout" not in checked.methods or not checked.sets:
        parameters["knockout_kind"] = None
    return parameters


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    check_option_groups(parser, args, given_options(parser, argv))
    from icl_cmr.interventions.head_ablation import format_heads
    from icl_cmr.files.writing import make_metadata
    from icl_cmr.files.outputs import PendingWrites, portable_path
    from icl_cmr.interventions.pattern_eval import plot_accuracy_bars
    from icl_cmr.interventions.pattern_tasks import prompts_to_json

    started = time.monotonic()
    checked = check_arguments(args)  # everything checkable before the model loads
    items, info = run(args, checked)
    spec = info["spec"]
    out_dir, fig_dir = args.out_dir / spec.name, args.fig_dir
    results, results_by_seed = summarise(items)
    stats = paired_statistics(items, seed=args.random_seed)
    heads = {selection: {"induction": format_heads(s["induction"]),
                         "random": [format_heads(draw) for draw in s["random"]]}
             for selection, s in info["sets"].items()}
    # requested vs distinct: fewer distinct layer-matched sets may exist than --n-random-sets asks for
    random_sets = {selection: dict(requested=s["random_draws"].n_requested, distinct=len(s["random_draws"].sets),
                                   possible=s["random_draws"].n_possible, seeds=list(s["random_draws"].seeds))
                   for selection, s in info["sets"].items()}
    parameters = used_parameters(args, checked)
    figure_path = fig_dir / f"{spec.name}_accuracy.pdf"
    outputs = PendingWrites()  # written together, once everything above succeeded
    # compact: ~4 MB instead of 8.5 MB for the README's 7 tasks x 3 seeds x 50 items
    outputs.json(out_dir / "prompts.json", prompts_to_json(info["prompts"], info["config"]), compact=True)
    outputs.json(out_dir / "heads.json", heads)
    outputs.text(out_dir / "items.csv", items.to_csv(index=False))
    outputs.text(out_dir / "results.csv", results.to_csv(index=False))
    outputs.text(out_dir / "results_by_seed.csv", results_by_seed.to_csv(index=False))
    outputs.text(out_dir / "stats.csv", stats.to_csv(index=False))
    outputs.figure(figure_path, plot_accuracy_bars(results, title=spec.name))
    outputs.json(out_dir / "metadata.json", make_metadata(
        "pattern_icl.py", parameters, seed=checked.config.seed, model=portable_path(spec.source),
        n_layers=info["n_layers"],
        n_heads=info["n_heads"], mean_reference=info["reference"], random_sets=random_sets, bos=info["bos"],
        wall_time_s=round(time.monotonic() - started, 1)))
    outputs.commit()
    logger.info("wrote %s/{prompts.json,heads.json,items.csv,results.csv,results_by_seed.csv,stats.csv,"
                "metadata.json} and %s", out_dir, figure_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
