"""The main job: the whole analysis on one model, by default the bundled toy language model.

Runs, in order, the experiments a user would run by hand with ``compute_head_scores.py``,
``fit_attn_score.py`` and ``ablation.py``, through their engine functions
(:mod:`icl_cmr.experiments.pipeline`):

1. head scores: matching / copying / prefix-matching scores and the attention CRP;
2. CMR fits: every head fitted to CMR with the shipped grid, per-model figures;
3. ablation: ICL scores intact, top-10% CMR-like heads ablated, random heads ablated;

then prints a summary table. Every step's arguments and inputs (the grid, ``--data``, ``--fraction``,
the output folders) are checked before the first step runs. Outputs are written by the steps, but
the run as a whole is all or nothing: if a step fails, every output file gets back its content
from before the run. A rerun whose results equal the saved files' (numbers bit for bit; only
timestamps, wall times, the git commit and package versions may differ) leaves those files
untouched, so the quick start does not dirty a checkout. PyTorch's CPU kernels are pinned to AVX2
so that the numbers do not depend on whether the CPU has AVX-512.

With no arguments it runs offline on ``saved_models/toy_lm``
(a 256-token-context model, so the ICL score reads the loss at index 246 instead of the
paper's 500; see README) and evaluates ICL on the held-out standard-library files the model
never saw in training. ``--model gpt2-small`` (or any name or folder) runs the same on
another model, with C4 as the paper's ICL data unless ``--data`` is given.

Example::

    python src/run_pipeline.py
    python src/run_pipeline.py --model gpt2-small --device cuda
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from icl_cmr.cli.args import (OneLineErrorParser, device_arg, fraction, paired_count, positive_int, run_cli,
                              setup_logging)
from icl_cmr.cli.flags import flag_errors
from icl_cmr.config import CMR_LIKE_THRESHOLD
from icl_cmr.errors import InputError
from icl_cmr.experiments.pipeline import PipelineSettings, run_pipeline, summary_text

logger = logging.getLogger("run_pipeline")

DEFAULTS = PipelineSettings()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Head scores, CMR fits and ablation on one model, with a summary.")
    parser.add_argument("--model", default=DEFAULTS.model,
                        help="registry name, Hugging Face id or local folder (default: the bundled toy LM)")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    parser.add_argument("--data", type=Path, default=None,
                        help="ICL text: a .txt file (one document), a .jsonl file (one document per line, field "
                             "'text') or a folder of them (default: held-out stdlib files for the bundled model, C4 "
                             "English validation otherwise)")
    parser.add_argument("--n-eval", type=paired_count, default=DEFAULTS.n_eval,
                        help="prompts for the ablation (default: %(default)s, the paper's)")
    parser.add_argument("--fraction", type=fraction, default=DEFAULTS.fraction,
                        help="share of heads ablated, lowest CMR distance first (default: %(default)s, the paper's)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size, help="prompts per forward pass")
    parser.add_argument("--crp-grid", type=Path, default=DEFAULTS.crp_grid, help="CMR CRP grid (default: shipped)")
    parser.add_argument("--scores-dir", type=Path, default=DEFAULTS.scores_dir)
    parser.add_argument("--figs-dir", type=Path, default=DEFAULTS.figs_dir)
    parser.add_argument("--ablation-dir", type=Path, default=DEFAULTS.ablation_dir)
    parser.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None,
                        help="BOS token on head-score and ICL prompts (--bos) or not (--no-bos); default: the "
                             "tokenizer's own BOS token when it defines one")
    parser.add_argument("--restart", action="store_true", help="redo the ablation instead of resuming it")
    parser.add_argument("--resume", action="store_true",
                        help="resume an interrupted ablation (the default; accepted for uniformity)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, progress=not args.no_progress)
    if args.restart and args.resume:
        raise InputError("give --restart (redo the ablation) or --resume (the default), not both")
    settings = PipelineSettings(model=args.model, device=args.device, data=args.data, n_eval=args.n_eval,
                                fraction=args.fraction, batch_size=args.batch_size, crp_grid=args.crp_grid,
                                scores_dir=args.scores_dir, figs_dir=args.figs_dir, ablation_dir=args.ablation_dir,
                                bos=args.bos, restart=args.restart)
    with flag_errors(parser):
        result = run_pipeline(settings, progress=not args.no_progress)
    for verb, paths in (("updated", result.changed), ("new", result.created)):
        if paths:
            logger.info("%s: %s", verb, ", ".join(map(str, paths)))
    logger.info("outputs: %d unchanged, %d updated, %d new", len(result.unchanged), len(result.changed),
                len(result.created))
    print()
    print(summary_text(result.fit_table, result.stats, CMR_LIKE_THRESHOLD))
    logger.info("pipeline finished in %.0f s; figures in %s", result.wall_seconds, args.figs_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
