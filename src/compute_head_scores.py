"""Head scores of every attention head of a Transformer language model (DESIGN.md section 2).

Loads a model through TransformerLens 4, runs seeded repeated-random-token prompts,
and saves, per head: induction-head matching score, attention CRP at lags -8..+7
(pre-softmax and softmax, mean and SEM across queries), copying score and [CS24]'s
prefix-matching score, in [LI24]'s file format (plus our extra keys and metadata):

    python src/compute_head_scores.py --model gpt2-small
    python src/compute_head_scores.py --model pythia-70m --checkpoint 143000
    python src/compute_head_scores.py --model saved_models/toy_lm --device cpu

Output: ``saved_scores/<model>/all_scores_<model>[_cp<K>].pkl`` (``--out`` overrides).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from icl_cmr.cli.args import (OneLineErrorParser, device_arg, float_range, int_range, non_negative_int, positive_int,
                              run_cli, seed_int, setup_logging)
from icl_cmr.cli.flags import flag_errors
from icl_cmr.experiments.head_scores import HeadScoreSettings, check_head_scores, run_head_scores
from icl_cmr.files.folders import check_writable_file
from icl_cmr.files.outputs import log_written
from icl_cmr.files.score_format import default_score_path
from icl_cmr.files.writing import save_pickle
from icl_cmr.heads.models import DTYPES
from icl_cmr.heads.registry import resolve_model
from icl_cmr.heads.prompts import FREQUENT_TOKEN_FILE, PromptConfig

logger = logging.getLogger("compute_head_scores")


def build_parser() -> argparse.ArgumentParser:
    defaults = PromptConfig()
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="registry name (gpt2-small, pythia-70m, ..., qwen-7b, mistral-7b, llama3-8b), "
                             "Hugging Face id, or local folder saved with save_pretrained")
    parser.add_argument("--checkpoint", type=non_negative_int, default=None,
                        help="training step of a Pythia checkpoint (e.g. 143000); the file gets _cp<index>")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda, cuda:N or mps; None: cuda when available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--n-prompts", type=positive_int, default=defaults.n_prompts,
                        help="repeated-random-token prompts")
    # Lower bounds as PromptConfig checks them: lag +1 needs two items; queries live in copies 2..
    parser.add_argument("--block-len", type=int_range(2), default=defaults.block_len,
                        help="distinct random tokens per repeat (prompt = [BOS] + block + block)")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="prompts per forward pass")
    parser.add_argument("--seed", type=seed_int, default=defaults.seed)
    parser.add_argument("--token-pool", type=Path, default=None,
                        help="JSON list of token ids (or dict with 'token_ids') to draw prompts from; default: "
                             f"{FREQUENT_TOKEN_FILE} in a local model folder if present, else every non-special id")
    parser.add_argument("--exclude-extreme-fraction", type=float_range(0.0, 0.5, high_open=True),
                        default=defaults.exclude_extreme_fraction,
                        help="drop this fraction of ids at each end of the BPE merge-rank order ([CS24])")
    parser.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None,
                        help="prepend a BOS token (--bos) or not (--no-bos); default: the tokenizer's own BOS token "
                             "when it defines one (GPT-2, Pythia, Llama, Mistral), none otherwise (Qwen2)")
    parser.add_argument("--prefix-block-len", type=int_range(2), default=defaults.prefix_block_len,
                        help="prefix-matching prompts: distinct tokens per copy ([CS24]: 50)")
    parser.add_argument("--prefix-copies", type=int_range(2), default=defaults.prefix_copies,
                        help="prefix-matching prompts: copies of the block ([CS24]: 4)")
    parser.add_argument("--prefix-n-prompts", type=positive_int, default=defaults.prefix_n_prompts,
                        help="prefix-matching prompts ([CS24]: 5)")
    parser.add_argument("--out", default=None,
                        help="output file (default saved_scores/<model>/all_scores_<model>[_cp<K>].pkl); "
                             "checked before the model loads")
    parser.add_argument("--no-copying", action="store_true",
                        help="skip the copying score (saved as NaN); it adds at most about 16%% of the weights' size "
                             "to peak memory (docs/head_scores.md)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--verbose", action="store_true")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.token_pool is not None and args.exclude_extreme_fraction > 0:
        parser.error("--exclude-extreme-fraction drops ids from the tokenizer's pool; it does not apply to a "
                     "--token-pool file (give one of the two)")
    return args


def settings_from(args: argparse.Namespace) -> HeadScoreSettings:
    """The run's settings from the parsed flags."""
    return HeadScoreSettings(model=args.model, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
                             n_prompts=args.n_prompts, block_len=args.block_len, batch_size=args.batch_size,
                             seed=args.seed, exclude_extreme_fraction=args.exclude_extreme_fraction,
                             prefix_block_len=args.prefix_block_len, prefix_copies=args.prefix_copies,
                             prefix_n_prompts=args.prefix_n_prompts, token_pool=args.token_pool, bos=args.bos,
                             copying=not args.no_copying)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parse_args(argv)
    setup_logging(args.verbose, progress=not args.no_progress)
    settings = settings_from(args)
    with flag_errors(parser):
        settings.prompt_config()
        spec = resolve_model(args.model, checkpoint=args.checkpoint)
        # Everything that can be checked without the weights is checked before they load.
        out = check_writable_file(args.out if args.out is not None else
                                  default_score_path(spec.name, spec.checkpoint_index), "--out")
        plan = check_head_scores(settings, spec)
        run = run_head_scores(settings, plan, progress=not args.no_progress)
    save_pickle(out, run.scores)
    log_written(logger, [out], f" ({run.wall_seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
