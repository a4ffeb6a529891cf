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
from dataclasses import fields
from pathlib import Path
from typing import Optional, Sequence, Tuple

from icl_cmr.cli.args import (OneLineErrorParser, UniqueItems, device_arg, float_range, given_options,
                              ignored_options, positive_int, refuse_options, run_cli, seed_int, setup_logging,
                              worker_count)
from icl_cmr.cli.flags import flag_errors
from icl_cmr.experiments.pattern_icl import (ABLATE_CHOICES, KNOCKOUT_KIND_CHOICES, METHOD_CHOICES,
                                             REFERENCE_CHOICES, PatternIclSettings, check_choices,
                                             check_pattern_icl, check_settings, run_pattern_icl)
from icl_cmr.figures.patterns import plot_accuracy_bars
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.outputs import PendingWrites, portable_path
from icl_cmr.files.writing import make_metadata
from icl_cmr.heads.models import DTYPES
from icl_cmr.interventions.pattern_tasks import prompts_to_json

logger = logging.getLogger("pattern_icl")

DEFAULTS = PatternIclSettings(model="")
#: Options that make the prompts; a prompts file brings its own.
PROMPT_OPTIONS = ("shots", "n_items", "seeds", "task_seed")
#: Options that choose the heads by score; ``--heads`` names them instead.
SCORE_OPTIONS = ("percentage", "scores_file", "scores_dir")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="registry name, Hugging Face id or local model folder")
    parser.add_argument("--tasks", default=",".join(DEFAULTS.tasks), help="comma-separated tasks")
    parser.add_argument("--shots", type=positive_int, default=DEFAULTS.shots,
                        help="demonstrations per prompt ([CS24]: 5)")
    parser.add_argument("--seeds", type=seed_int, nargs="+", action=UniqueItems, default=list(DEFAULTS.seeds),
                        help="demonstration seeds, each once ([CS24]: 3)")
    parser.add_argument("--n-items", type=positive_int, default=DEFAULTS.n_items,
                        help="queries per task (class-balanced)")
    parser.add_argument("--task-seed", type=seed_int, default=DEFAULTS.task_seed, help="seed of the queries")
    parser.add_argument("--prompts-file", type=Path, default=None,
                        help="reuse the prompts of an earlier run (its prompts.json) instead of generating; "
                             "not with --shots, --n-items, --seeds, --task-seed")
    parser.add_argument("--ablate", default=",".join(DEFAULTS.ablate),
                        help=f"comma-separated conditions: {', '.join(ABLATE_CHOICES)}")
    parser.add_argument("--method", default=",".join(DEFAULTS.method),
                        help=f"comma-separated interventions: {', '.join(METHOD_CHOICES)}")
    parser.add_argument("--percentage", type=float_range(0.0, 100.0, low_open=True), nargs="+", action=UniqueItems,
                        default=list(DEFAULTS.percentage),
                        help="top percentages of heads by prefix-matching score ([CS24]: 1 and 3)")
    parser.add_argument("--heads", default=None,
                        help="ablate these heads (e.g. L5H1,L6H9) instead of the top percentages; not with "
                             "--percentage, --scores-file, --scores-dir")
    parser.add_argument("--scores-file", type=Path, default=None,
                        help="head-score pickle with 'prefix_matching_score' [L, H] (default: found in --scores-dir)")
    parser.add_argument("--scores-dir", type=Path, default=DEFAULTS.scores_dir)
    parser.add_argument("--n-random-sets", type=positive_int, default=DEFAULTS.n_random_sets,
                        help="layer-matched random head draws")
    parser.add_argument("--random-seed", type=seed_int, default=DEFAULTS.random_seed,
                        help="seed of draw 0 (draw d: seed + d; a seed repeating an earlier set is skipped)")
    parser.add_argument("--reference-corpus", choices=REFERENCE_CHOICES, default=DEFAULTS.reference_corpus,
                        help="mean-ablation reference: fresh prompts of the same task (task), the evaluation "
                             "prompts themselves (eval), or fresh prompts of every selected task (all)")
    parser.add_argument("--n-reference", type=positive_int, default=DEFAULTS.n_reference,
                        help="reference prompts per task")
    parser.add_argument("--reference-seed", type=seed_int, default=DEFAULTS.reference_seed,
                        help="query seed of the reference prompts (differs from --task-seed)")
    parser.add_argument("--knockout-kind", choices=KNOCKOUT_KIND_CHOICES, default=DEFAULTS.knockout_kind,
                        help="same kind = same letter/word/separator/label (kind) or same word category (category)")
    parser.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None,
                        help="start every prompt with a BOS token (--bos) or not (--no-bos); default: the tokenizer's "
                             "own BOS token when it defines one, none otherwise")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    parser.add_argument("--threads", type=worker_count, default=DEFAULTS.threads,
                        help="torch CPU threads (default 1: on a busy 2-core machine 1 scored 4x faster than 2)")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    parser.add_argument("--dtype", default=DEFAULTS.dtype, choices=DTYPES)
    parser.add_argument("--out-dir", type=Path, default=Path("saved_ablation") / "pattern_icl",
                        help="results go to <out-dir>/<model name>/ (default: %(default)s/<model name>/)")
    parser.add_argument("--fig-dir", type=Path, default=Path("figs") / "pattern_icl")
    parser.add_argument("--verbose", action="store_true")
    return parser


def _names(text: str) -> Tuple[str, ...]:
    """A comma-separated flag's values (empty entries dropped; the settings check the names)."""
    return tuple(value.strip() for value in text.split(",") if value.strip())


def settings_from_args(args: argparse.Namespace) -> PatternIclSettings:
    """The run's settings from the parsed flags (each setting is the flag of the same name)."""
    values = {item.name: getattr(args, item.name) for item in fields(PatternIclSettings)}
    values.update(tasks=_names(args.tasks), ablate=_names(args.ablate), method=_names(args.method),
                  seeds=tuple(args.seeds), percentage=tuple(args.percentage))
    return PatternIclSettings(**values)


def check_option_groups(parser: argparse.ArgumentParser, settings: PatternIclSettings, given: frozenset) -> None:
    """Options that other options make meaningless: refused when they contradict what was asked (prompt
    settings with a prompts file, score-based selection with explicit heads), else a warning (settings of
    a condition that does not run); either way the metadata records them as unused (None)."""
    if settings.prompts_file is not None:
        refuse_options(parser, given, PROMPT_OPTIONS, "with --prompts-file (the prompts come from the file)")
    if settings.heads is not None:
        refuse_options(parser, given, SCORE_OPTIONS, "with --heads (they pick heads by prefix-matching score)")
    if settings.scores_file is not None:
        refuse_options(parser, given, ("scores_dir",), "with --scores-file (it locates the default scores file)")
    ablate = set(check_choices(settings.ablate, ABLATE_CHOICES, "ablate"))
    methods = set(check_choices(settings.method, METHOD_CHOICES, "method"))
    unused = []
    if not ablate & {"induction", "random"}:
        refuse_options(parser, given, ("heads", *SCORE_OPTIONS), "with --ablate none (no head is ablated)")
        unused.append(ignored_options(parser, given, ("method",), "with --ablate none (no head is ablated)"))
    if "random" not in ablate:  # --random-seed also seeds the permutation tests: always used
        unused.append(ignored_options(parser, given, ("n_random_sets",), "without random in --ablate"))
    if "mean" not in methods:
        unused.append(ignored_options(parser, given, ("reference_corpus", "n_reference", "reference_seed"),
                                      "without mean in --method"))
    elif settings.reference_corpus == "eval":
        unused.append(ignored_options(parser, given, ("n_reference", "reference_seed"),
                                      "with --reference-corpus eval (the evaluation prompts are the reference)"))
    if "knockout" not in methods:
        unused.append(ignored_options(parser, given, ("knockout_kind",), "without knockout in --method"))
    for message in filter(None, unused):
        logger.warning("%s; ignored (recorded as unused in metadata.json)", message)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    settings = settings_from_args(args)
    started = time.monotonic()
    with flag_errors(parser, demo_seeds="--seeds"):
        check_option_groups(parser, settings, given_options(parser, argv))
        spec = check_settings(settings)  # names, numbers, head labels; the model's name files the outputs
        out_dir, fig_dir = args.out_dir / spec.name, args.fig_dir
        check_writable_dir(out_dir, "--out-dir")
        check_writable_dir(fig_dir, "--fig-dir")
        plan = check_pattern_icl(settings)  # prompts file, model config, heads, scores: before the model loads
        run = run_pattern_icl(settings, plan)
    figure_path = fig_dir / f"{spec.name}_accuracy.pdf"
    parameters = {**run.parameters, "out_dir": portable_path(args.out_dir), "fig_dir": portable_path(args.fig_dir),
                  "verbose": args.verbose}
    outputs = PendingWrites()  # written together, once everything above succeeded
    # compact: ~4 MB instead of 8.5 MB for the README's 7 tasks x 3 seeds x 50 items
    outputs.json(out_dir / "prompts.json", prompts_to_json(plan.prompts, plan.config), compact=True)
    outputs.json(out_dir / "heads.json", run.heads_json())
    outputs.text(out_dir / "items.csv", run.items.to_csv(index=False))
    outputs.text(out_dir / "results.csv", run.results.to_csv(index=False))
    outputs.text(out_dir / "results_by_seed.csv", run.results_by_seed.to_csv(index=False))
    outputs.text(out_dir / "stats.csv", run.stats.to_csv(index=False))
    outputs.figure(figure_path, plot_accuracy_bars(run.results, title=spec.name))
    outputs.json(out_dir / "metadata.json", make_metadata(
        "pattern_icl.py", parameters, seed=plan.config.seed, **run.metadata_fields(),
        wall_time_s=round(time.monotonic() - started, 1)))
    outputs.commit()
    logger.info("wrote %s/{prompts.json,heads.json,items.csv,results.csv,results_by_seed.csv,stats.csv,"
                "metadata.json} and %s", out_dir, figure_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
