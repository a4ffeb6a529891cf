"""Head scores of every attention head of a model, as one run (DESIGN.md section 2; ``compute_head_scores.py``).

:class:`HeadScoreSettings` holds everything the script's flags set, with the same defaults.
:func:`check_head_scores` checks all that can be checked without the weights (the model's
config, the prompts against its context, a token-pool file); :func:`run_head_scores` loads the
model, runs the seeded repeated-random-token prompts and returns the score dict in [LI24]'s file
format (:func:`icl_cmr.files.score_format.assemble_score_dict`) with its metadata.

Examples
--------
>>> from icl_cmr.experiments.head_scores import HeadScoreSettings, run_head_scores
>>> run = run_head_scores(HeadScoreSettings(model="saved_models/toy_lm", device="cpu"))  # doctest: +SKIP
>>> run.scores["head_scores"].shape                                                     # doctest: +SKIP
torch.Size([2, 4])
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from icl_cmr.config import ATTN_CRP_LAGS
from icl_cmr.devices import pin_cpu_kernels, resolve_device
from icl_cmr.errors import InputError
from icl_cmr.files.memory import check_dataclass_memory, memory_drivers
from icl_cmr.files.outputs import portable_path
from icl_cmr.files.reading import load_json
from icl_cmr.files.score_format import assemble_score_dict
from icl_cmr.files.writing import make_metadata
from icl_cmr.heads.copying import model_copying_scores
from icl_cmr.heads.models import choose_bos, has_tokenizer, load_model, n_kv_heads, peak_gpu_memory_gib
from icl_cmr.heads.registry import ModelShape, ModelSpec, read_model_shape, resolve_model
from icl_cmr.heads.prompts import (FREQUENT_TOKEN_FILE, PROMPT_MEMORY_SETTINGS, PromptConfig, TokenPool,
                                   bpe_merge_ranks, default_token_pool, make_prompt_sets, parse_token_pool,
                                   pool_from_ids, prompt_memory_bytes, prompt_offset, special_token_ids, tokenizer_size)
from icl_cmr.heads.scores import stream_attention_scores

logger = logging.getLogger(__name__)

#: The producer recorded in the metadata (the script users run).
PRODUCER = "compute_head_scores.py"

_PROMPT_DEFAULTS = PromptConfig()


@dataclass(frozen=True)
class HeadScoreSettings:
    """A head-score run, as ``compute_head_scores.py``'s flags set it (same names, same defaults).

    Attributes
    ----------
    model : str
        Registry name, Hugging Face id or local folder.
    checkpoint : int, optional
        Training step of a Pythia checkpoint.
    device : str, optional
        ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; None: CUDA when available.
    dtype : str
    n_prompts, block_len, batch_size, seed, exclude_extreme_fraction, prefix_block_len, prefix_copies,
    prefix_n_prompts
        The prompts (:class:`icl_cmr.heads.prompts.PromptConfig`, DESIGN.md section 2).
    token_pool : Path, optional
        JSON list of token ids to draw prompts from; default: a local model folder's
        ``frequent_token_ids.json`` when present, else every non-special id of the tokenizer.
    bos : bool, optional
        Prepend a BOS token (True) or not (False); None: the tokenizer's own BOS token when it has one.
    copying : bool
        Compute the copying score (False: saved as NaN).
    """

    model: str
    checkpoint: Optional[int] = None
    device: Optional[str] = None
    dtype: str = "float32"
    n_prompts: int = _PROMPT_DEFAULTS.n_prompts
    block_len: int = _PROMPT_DEFAULTS.block_len
    batch_size: int = _PROMPT_DEFAULTS.batch_size
    seed: int = _PROMPT_DEFAULTS.seed
    exclude_extreme_fraction: float = _PROMPT_DEFAULTS.exclude_extreme_fraction
    prefix_block_len: int = _PROMPT_DEFAULTS.prefix_block_len
    prefix_copies: int = _PROMPT_DEFAULTS.prefix_copies
    prefix_n_prompts: int = _PROMPT_DEFAULTS.prefix_n_prompts
    token_pool: Optional[Path] = None
    bos: Optional[bool] = None
    copying: bool = True

    def prompt_config(self) -> PromptConfig:
        """The prompts' configuration (validated by :class:`PromptConfig`)."""
        return PromptConfig(block_len=self.block_len, n_prompts=self.n_prompts, batch_size=self.batch_size,
                            seed=self.seed, prepend_bos=self.bos is not False,
                            exclude_extreme_fraction=self.exclude_extreme_fraction,
                            prefix_block_len=self.prefix_block_len, prefix_copies=self.prefix_copies,
                            prefix_n_prompts=self.prefix_n_prompts)


@dataclass
class HeadScorePlan:
    """What :func:`check_head_scores` found before any weights load.

    Attributes
    ----------
    spec : ModelSpec
    shape : ModelShape
        From the model's config.
    prompts : PromptConfig
    pool_file : Path, optional
        The token-pool file prompts are drawn from (``token_pool``, or a model folder's frequent ids).
    pool_ids : ndarray of int, optional
        Its ids, read and checked.
    """

    spec: ModelSpec
    shape: ModelShape
    prompts: PromptConfig
    pool_file: Optional[Path] = None
    pool_ids: Optional[np.ndarray] = None


@dataclass
class HeadScoreRun:
    """The scores of one model.

    Attributes
    ----------
    scores : dict
        The score dict in [LI24]'s file format plus our keys and ``metadata``
        (:func:`icl_cmr.files.score_format.assemble_score_dict`).
    spec : ModelSpec
    wall_seconds : float
        From loading the model to the last score.
    """

    scores: Dict[str, Any]
    spec: ModelSpec
    wall_seconds: float

    @property
    def matching_score(self) -> np.ndarray:
        """Induction-head matching score, [n_layers, n_heads]."""
        return np.asarray(self.scores["head_scores"], dtype=float)


def _pool_file(settings: HeadScoreSettings, spec: ModelSpec) -> Optional[Path]:
    """The token-pool file prompts are drawn from: ``token_pool``, else a local model folder's frequent ids."""
    if settings.token_pool is not None:
        if not Path(settings.token_pool).is_file():
            raise InputError(f"`token_pool` file {settings.token_pool} does not exist", parameters=("token_pool",))
        return Path(settings.token_pool)
    frequent = Path(spec.source) / FREQUENT_TOKEN_FILE if spec.is_local else None
    if frequent is None or not frequent.is_file():
        return None
    if settings.exclude_extreme_fraction > 0:
        raise InputError(f"`exclude_extreme_fraction` drops ids from the tokenizer's pool, but {spec.name} draws "
                         f"from its folder's {FREQUENT_TOKEN_FILE} (ids frequent in its training data); drop it",
                         parameters=("exclude_extreme_fraction",))
    return frequent


def check_prompt_lengths(config: PromptConfig, offset: int, n_ctx: int, bos_known: bool = True) -> None:
    """Both prompt sets fit the model's context (``offset``: 1 with a BOS token, else 0), or an error naming the
    settings that make the longer set too long."""
    repeat_len = offset + 2 * config.block_len
    prefix_len = offset + config.prefix_copies * config.prefix_block_len
    longest = max(repeat_len, prefix_len)
    if longest > n_ctx:
        named = ["block_len"] if repeat_len > n_ctx else []
        if prefix_len > n_ctx:
            # The prefix set's length is a product: name the factor(s) whose default would make it fit.
            values = {"prefix_block_len": config.prefix_block_len, "prefix_copies": config.prefix_copies}
            modest = {name: min(values[name], getattr(_PROMPT_DEFAULTS, name)) for name in values}
            named += memory_drivers(lambda v: offset + v["prefix_copies"] * v["prefix_block_len"], values, modest,
                                    n_ctx)
        listed = " / ".join(f"`{name}`" for name in named)
        raise InputError(f"prompts of {'' if bos_known else 'at least '}{longest} tokens exceed the model's context "
                         f"of {n_ctx}; lower {listed}", parameters=tuple(named))


def check_head_score_memory(config: PromptConfig, n_heads: int, device: str = "cpu") -> None:
    """Refuse prompts (and a batch's attention) that cannot fit in memory, naming the settings that drive it."""
    check_dataclass_memory(lambda changed: prompt_memory_bytes(changed, n_heads), config, PROMPT_MEMORY_SETTINGS,
                           _PROMPT_DEFAULTS, device, "drawing the prompts and scoring a batch ({values})")


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
                         f"length {needed}; lower `block_len` / `prefix_block_len` or pass a larger `token_pool`",
                         parameters=("block_len", "prefix_block_len", "token_pool"))


def check_head_scores(settings: HeadScoreSettings, spec: Optional[ModelSpec] = None) -> HeadScorePlan:
    """Everything checked without the weights: the model's config, the prompts against its context, the pool.

    Parameters
    ----------
    settings : HeadScoreSettings
    spec : ModelSpec, optional
        The resolved model (default: ``resolve_model(settings.model, checkpoint=settings.checkpoint)``).

    Returns
    -------
    HeadScorePlan

    Raises
    ------
    InputError
        Naming the parameter at fault.
    """
    prompts = settings.prompt_config()
    spec = spec or resolve_model(settings.model, checkpoint=settings.checkpoint)
    pool_file = _pool_file(settings, spec)
    pool_ids = None if pool_file is None else parse_token_pool(load_json(pool_file), what=str(pool_file))
    shape = read_model_shape(spec)
    # The BOS token is known once the tokenizer loads; before, only bos=True makes it certain.
    check_prompt_lengths(prompts, int(settings.bos is True), shape.n_ctx, bos_known=settings.bos is not None)
    check_head_score_memory(prompts, shape.n_heads)  # host memory: the prompts are drawn there
    if pool_ids is not None:
        _check_pool_ids(pool_ids, prompts, shape.vocab_size, str(pool_file))
    return HeadScorePlan(spec, shape, prompts, pool_file, pool_ids)


def _token_pool(settings: HeadScoreSettings, plan: HeadScorePlan, model) -> TokenPool:
    """The pool prompts are drawn from (explicit file, model folder's frequent ids, or the tokenizer's ids).

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
        if settings.token_pool is None:
            logger.warning("%s has no tokenizer files: drawing prompt tokens from all %d ids of the model's "
                           "vocabulary except the config's special ids %s; pass a token pool to choose them",
                           plan.spec.name, vocab, special.tolist())
    if plan.pool_file is not None:
        if settings.token_pool is None:
            logger.info("using the model folder's %s as the token pool (ids frequent in its training data)",
                        FREQUENT_TOKEN_FILE)
        return pool_from_ids(plan.pool_ids, vocab, special, source=f"file:{portable_path(plan.pool_file)}")
    ranks = None
    if settings.exclude_extreme_fraction > 0 and tokenizer is not None:
        ranks = bpe_merge_ranks(tokenizer, vocab)
        if ranks is None:
            logger.info("tokenizer has no BPE merge list; ranking ids by id for exclude_extreme_fraction")
    return default_token_pool(vocab, special, ranks, settings.exclude_extreme_fraction,
                              source="tokenizer" if tokenizer is not None else "model vocabulary (no tokenizer files)")


def run_head_scores(settings: HeadScoreSettings, plan: Optional[HeadScorePlan] = None,
                    progress: bool = True) -> HeadScoreRun:
    """Load the model, score every head, and return the score dict with its metadata.

    Parameters
    ----------
    settings : HeadScoreSettings
    plan : HeadScorePlan, optional
        :func:`check_head_scores`'s result (computed here when None).
    progress : bool
        Show progress bars.

    Returns
    -------
    HeadScoreRun
    """
    plan = plan or check_head_scores(settings)
    spec, config = plan.spec, plan.prompts
    device = resolve_device(settings.device)
    pin_cpu_kernels()  # the same numbers on CPUs with and without AVX-512

    start = time.monotonic()
    model = load_model(spec, device=device, dtype=settings.dtype, require_hooks=("attn_scores", "pattern"))
    bos_choice = choose_bos(model, settings.bos, spec.trust_remote_code)
    bos = bos_choice.token_id
    offset = prompt_offset(bos, config)
    repeat_len = offset + 2 * config.block_len
    prefix_len = offset + config.prefix_copies * config.prefix_block_len
    check_prompt_lengths(config, offset, int(model.cfg.n_ctx))  # the BOS token is known now
    pool = _token_pool(settings, plan, model)
    repeat_prompts, prefix_prompts = make_prompt_sets(pool, bos, config)
    logger.info("%s: %d layers x %d heads; %d prompts of %d tokens (BOS %s), %d prefix prompts of %d; "
                "token pool %d ids (%s)", spec.name, model.cfg.n_layers, model.cfg.n_heads, config.n_prompts,
                repeat_len, bos if offset else "none", config.prefix_n_prompts, prefix_len, pool.ids.size,
                pool.source)

    attention = stream_attention_scores(model, repeat_prompts, config.block_len, offset, prefix_prompts,
                                        config.prefix_block_len, config.batch_size, ATTN_CRP_LAGS,
                                        progress=progress)
    copying_error = None
    try:
        if not settings.copying:
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
        {**config.to_dict(), "device": device, "dtype": settings.dtype, "lags": ATTN_CRP_LAGS.tolist(),
         "copying": settings.copying},
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
    best = np.unravel_index(np.nanargmax(attention.matching_score), attention.matching_score.shape)
    logger.info("best induction head L%dH%d: matching score %.3f; %d of %d heads above 0.5",
                best[0], best[1], attention.matching_score[best], int((attention.matching_score > 0.5).sum()),
                attention.matching_score.size)
    return HeadScoreRun(scores, spec, wall)
