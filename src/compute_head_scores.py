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
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from icl_cmr.cli.args import (OneLineErrorParser, device_arg, float_range, int_range, non_negative_int, positive_int,
                              run_cli, seed_int, setup_logging)
from icl_cmr.config import ATTN_CRP_LAGS
from icl_cmr.heads.copying import model_copying_scores
from icl_cmr.devices import resolve_device
from icl_cmr.errors import InputError
from icl_cmr.heads.scores import stream_attention_scores
from icl_cmr.files.reading import load_json
from icl_cmr.files.writing import make_metadata, save_pickle
from icl_cmr.heads.models import (DTYPES, choose_bos, has_tokenizer, load_model, n_kv_heads, peak_gpu_memory_gib,
                                  read_model_shape, resolve_model)
from icl_cmr.files.outputs import log_written, portable_path
from icl_cmr.files.folders import check_writable_file
from icl_cmr.devices import pin_cpu_kernels
from icl_cmr.heads.prompts import (FREQUENT_TOKEN_FILE, PromptConfig, bpe_merge_ranks, default_token_pool,
                                   make_prompt_sets, parse_token_pool, pool_from_ids, prompt_offset,
                                   special_token_ids, tokenizer_size)
from icl_cmr.files.score_format import assemble_score_dict, default_score_path

logger = logging.getLogger("compute_head_scores")

PRODUCER = "compute_head_scores.py"


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


def _pool_file(args: argparse.Namespace, spec) -> Optional[Path]:
    """The token-pool file prompts are drawn from: ``--token-pool``, else a local model folder's frequent ids."""
    if args.token_pool is not None:
        if not args.token_pool.is_file():
            raise FileNotFoundError(f"--token-pool file {args.token_pool} does not exist")
        return args.token_pool
    frequent = Path(spec.source) / FREQUENT_TOKEN_FILE if spec.is_local else None
    if frequent is None or not frequent.is_file():
        return None
    if args.exclude_extreme_fraction > 0:
        raise InputError(f"--exclude-extreme-fraction drops ids from the tokenizer's pool, but {spec.name} draws "
                         f"from its folder's {FREQUENT_TOKEN_FILE} (ids frequent in its training data); drop the flag")
    return frequent


def _check_prompt_lengths(config: PromptConfig, offset: int, n_ctx: int, bos_known: bool = True) -> None:
    """Both prompt sets fit the model's context (``offset``: 1 with a BOS token, else 0)."""
    longest = offset + max(2 * config.block_len, config.prefix_copies * config.prefix_block_len)
    if longest > n_ctx:
        raise InputError(f"prompts of {'' if bos_known else 'at least '}{longest} tokens exceed the model's context "
                         f"of {n_ctx}; lower --block-len / --prefix-block-len / --prefix-copies")


def _check_pool_ids(ids: np.ndarray, config: PromptConfig, vocab_size: Optional[int], source: str) -> None:
    """A pool file's ids against the model's vocabulary and the block lengths, before the model loads.

    The tokenizer's special ids (and a tokenizer smaller than the embedding) are known only once the
    model is loaded; :func:`icl_cmr.heads.prompts.pool_from_ids` checks them then.
    """
    if ids.size == 0:
        raise InputError(f"{source}: the token pool is empty")
    if vocab_size is not None:
        pool_from_ids(ids, vocab_size, source=source)
    needed = max(config.block_len, config.prefix_block_len)
    if np.unique(ids).size < needed:
        raise InputError(f"the token pool {source} has {np.unique(ids).size} distinct ids, fewer than the block "
                         f"length {needed}; lower --block-len / --prefix-block-len or pass a larger --token-pool")


def _token_pool(args: argparse.Namespace, spec, model, pool_file: Optional[Path], pool_ids: Optional[np.ndarray]):
    """The pool prompts are drawn from (explicit file, model folder's frequent ids, or the tokenizer's ids).

    ``pool_file`` and its parsed ``pool_ids`` come from :func:`_pool_file` (read before the model loads).
    A checkpoint saved without tokenizer files gets a placeholder tokenizer of one token:
    the pool is then the model's whole vocabulary minus the config's special ids.
    """
    tokenizer = getattr(model, "tokenizer", None) if has_tokenizer(model) else None
    vocab = tokenizer_size(tokenizer, int(model.cfg.d_vocab))
    special = special_token_ids(tokenizer)
    if tokenizer is None:
        config = getattr(getattr(model, "original_model", None), "config", None)
        special = np.array(sorted({int(i) for i in (getattr(config, name, None) for name in
                                                     ("bos_token_id", "eos_token_id", "pad_token_id"))
                                   if isinstance(i, int) and 0 <= i < vocab}), dtype=np.int64)
        if args.token_pool is None:
            logger.warning("%s has no tokenizer files: drawing prompt tokens from all %d ids of the model's "
                           "vocabulary except the config's special ids %s; pass --token-pool to choose them",
                           spec.name, vocab, special.tolist())
    if pool_file is not None:
        if args.token_pool is None:
            logger.info("using the model folder's %s as the token pool (ids frequent in its training data)",
                        FREQUENT_TOKEN_FILE)
        return pool_from_ids(pool_ids, vocab, special, source=f"file:{portable_path(pool_file)}")
    ranks = None
    if args.exclude_extreme_fraction > 0 and tokenizer is not None:
        ranks = bpe_merge_ranks(tokenizer, vocab)
        if ranks is None:
            logger.info("tokenizer has no BPE merge list; ranking ids by id for --exclude-extreme-fraction")
    return default_token_pool(vocab, special, ranks, args.exclude_extreme_fraction,
                              source="tokenizer" if tokenizer is not None else "model vocabulary (no tokenizer files)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose, progress=not args.no_progress)
    config = PromptConfig(block_len=args.block_len, n_prompts=args.n_prompts, batch_size=args.batch_size,
                          seed=args.seed, prepend_bos=args.bos is not False,
                          exclude_extreme_fraction=args.exclude_extreme_fraction,
                          prefix_block_len=args.prefix_block_len, prefix_copies=args.prefix_copies,
                          prefix_n_prompts=args.prefix_n_prompts)
    spec = resolve_model(args.model, checkpoint=args.checkpoint)
    # Everything that can be checked without the weights is checked before they load (issue 17, item 10).
    out = check_writable_file(args.out if args.out is not None else
                              default_score_path(spec.name, spec.checkpoint_index), "--out")
    pool_file = _pool_file(args, spec)
    pool_ids = None if pool_file is None else parse_token_pool(load_json(pool_file), what=str(pool_file))
    shape = read_model_shape(spec)
    # The BOS token is known once the tokenizer loads; before, only --bos makes it certain.
    _check_prompt_lengths(config, int(args.bos is True), shape.n_ctx, bos_known=args.bos is not None)
    if pool_ids is not None:
        _check_pool_ids(pool_ids, config, shape.vocab_size, str(pool_file))
    device = resolve_device(args.device)
    pin_cpu_kernels()  # the same numbers on CPUs with and without AVX-512

    start = time.monotonic()
    model = load_model(spec, device=device, dtype=args.dtype, require_hooks=("attn_scores", "pattern"))
    bos_choice = choose_bos(model, args.bos, spec.trust_remote_code)
    bos = bos_choice.token_id
    offset = prompt_offset(bos, config)
    repeat_len = offset + 2 * config.block_len
    prefix_len = offset + config.prefix_copies * config.prefix_block_len
    _check_prompt_lengths(config, offset, int(model.cfg.n_ctx))  # the BOS token is known now
    pool = _token_pool(args, spec, model, pool_file, pool_ids)
    repeat_prompts, prefix_prompts = make_prompt_sets(pool, bos, config)
    logger.info("%s: %d layers x %d heads; %d prompts of %d tokens (BOS %s), %d prefix prompts of %d; "
                "token pool %d ids (%s)", spec.name, model.cfg.n_layers, model.cfg.n_heads, config.n_prompts,
                repeat_len, bos if offset else "none", config.prefix_n_prompts, prefix_len, pool.ids.size,
                pool.source)

    attention = stream_attention_scores(model, repeat_prompts, config.block_len, offset, prefix_prompts,
                                        config.prefix_block_len, config.batch_size, ATTN_CRP_LAGS,
                                        progress=not args.no_progress)
    copying_error = None
    try:
        if args.no_copying:
            copying_error = "skipped (--no-copying)"
            copying = np.full(attention.matching_score.shape, np.nan)
        else:
            copying = model_copying_scores(model)
    except Exception as err:  # keep the attention scores of a long run; say loudly what is missing
        copying_error = f"{type(err).__name__}: {err}"
        logger.error("copying score failed (%s); saving NaN copying scores", copying_error)
        copying = np.full(attention.matching_score.shape, np.nan)
    wall = time.monotonic() - start
    peak_gpu = peak_gpu_memory_gib(device)
    if peak_gpu is not None:
        logger.info("peak GPU memory allocated by torch: %.2f GiB", peak_gpu)

    metadata = make_metadata(
        PRODUCER,
        {**config.to_dict(), "device": device, "dtype": args.dtype, "lags": ATTN_CRP_LAGS.tolist(),
         "copying": not args.no_copying},
        seed=config.seed,
        model=spec.name, source=portable_path(spec.source) if spec.is_local else spec.source, is_local=spec.is_local,
        checkpoint_step=spec.checkpoint_step, checkpoint_index=spec.checkpoint_index,
        n_layers=int(model.cfg.n_layers), n_heads=int(model.cfg.n_heads), n_kv_heads=n_kv_heads(model),
        prompt_design={
            "repeat_set": f"[BOS] + {config.block_len} distinct random ids + the same ids again",
            "prefix_set": f"[BOS] + {config.prefix_copies} copies of {config.prefix_block_len} distinct random ids",
            "bos_token_id": bos if offset else None,
            "bos": bos_choice.describe(),
            "offset": offset, "repeat_prompt_len": repeat_len, "prefix_prompt_len": prefix_len,
            "queries_per_lag": attention.crp_scores.count.tolist(),
            "sem": "sample std (ddof 1) across all (prompt, query) pairs / sqrt(count)",
            "copying_weights": "HookedTransformer's processed weights (fold_ln, center_writing_weights, "
                               "center_unembed), applied algebraically per layer (icl_cmr.heads.copying)",
        },
        token_pool=pool.describe(),
        copying_score_error=copying_error,
        wall_time_s=round(wall, 2),
        peak_gpu_memory_gib=peak_gpu,
    )
    scores = assemble_score_dict(attention.matching_score, copying, attention.crp_scores.mean,
                                 attention.crp_scores.sem, attention.crp_probs.mean, attention.crp_probs.sem,
                                 attention.prefix_matching_score, metadata, ATTN_CRP_LAGS,
                                 prompts=repeat_prompts, prefix_prompts=prefix_prompts)
    save_pickle(out, scores)
    best = np.unravel_index(np.nanargmax(attention.matching_score), attention.matching_score.shape)
    logger.info("best induction head L%dH%d: matching score %.3f; %d of %d heads above 0.5",
                best[0], best[1], attention.matching_score[best], int((attention.matching_score > 0.5).sum()),
                attention.matching_score.size)
    log_written(logger, [out], f" ({wall:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
