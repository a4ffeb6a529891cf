"""Seeded repeated-random-token prompts for head scores (DESIGN.md section 2).

Two prompt sets, both drawn from one *token pool*:

* the **repeat set** ([LI24], [OL22]): BOS (when the tokenizer has one) + a block of
  ``block_len`` distinct random ids + the same block again. Matching score and
  attention CRPs are read from it.
* the **prefix-matching set** ([CS24]): BOS + 4 copies of 50 distinct random ids,
  5 prompts.

The token pool is every id the model's tokenizer knows, minus special tokens
(optionally minus the most and least frequent ids by BPE merge rank, as [CS24]
do), or an explicit list of ids (for a small model trained on a narrow corpus: the
ids it saw often enough to have trained embeddings, DESIGN.md section 9).

Everything here is pure: ids in, arrays out. Reading a pool file is the script's job
(:func:`parse_token_pool` takes the decoded JSON).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

from icl_cmr.errors import InputError

#: File a local model folder may carry with the ids to draw prompt tokens from
#: (written by ``train_toy_lm.py``: ids seen >= 100 times in training).
FREQUENT_TOKEN_FILE = "frequent_token_ids.json"


@dataclass(frozen=True)
class PromptConfig:
    """Design of both prompt sets; every field is a flag of ``compute_head_scores.py``.

    Attributes
    ----------
    block_len : int
        Distinct random ids per block of the repeat set. 100: [LI24] do not state it;
        100 matches the 100 items of their CMR simulation (DESIGN.md section 2).
    n_prompts : int
        Prompts in the repeat set. 100 (ours): 100 x 99 = 9,900 queries per lag, so the
        SEM of a lag-CRP entry is about 1% of the across-query spread.
    batch_size : int
        Prompts per forward pass (ours; 20 x 201 tokens is small even for a 7B model).
    seed : int
        Base seed; the two prompt sets use independent child streams of it.
    prepend_bos : bool
        Put the tokenizer's BOS id first when it has one ([OL22]/TransformerLens
        convention; it gives heads an attention sink, as in training).
    exclude_extreme_fraction : float
        Fraction of the pool dropped at *each* end of the BPE merge-rank order (most
        and least frequent ids, [CS24]'s choice). 0 (ours): [LI24] do not say they
        exclude any; only special tokens are always excluded.
    prefix_block_len, prefix_copies, prefix_n_prompts : int
        Prefix-matching set: 4 copies of 50 distinct ids, 5 seeded prompts ([CS24]).
    """

    block_len: int = 100
    n_prompts: int = 100
    batch_size: int = 20
    seed: int = 0
    prepend_bos: bool = True
    exclude_extreme_fraction: float = 0.0
    prefix_block_len: int = 50
    prefix_copies: int = 4
    prefix_n_prompts: int = 5

    def __post_init__(self) -> None:
        for name in ("block_len", "n_prompts", "batch_size", "prefix_block_len", "prefix_n_prompts"):
            if getattr(self, name) < 1:
                raise InputError(f"`{name}` must be a positive integer, got {getattr(self, name)}",
                                 parameters=(name,))
        if self.block_len < 2:
            raise InputError(f"`block_len` must be >= 2 (lag +1 needs two items), got {self.block_len}",
                             parameters=("block_len",))
        if self.prefix_block_len < 2:
            raise InputError(f"`prefix_block_len` must be >= 2, got {self.prefix_block_len}",
                             parameters=("prefix_block_len",))
        if self.prefix_copies < 2:
            raise InputError(f"`prefix_copies` must be >= 2 (queries live in copies 2..), got {self.prefix_copies}",
                             parameters=("prefix_copies",))
        if not 0.0 <= self.exclude_extreme_fraction < 0.5:
            raise InputError(f"`exclude_extreme_fraction` must be in [0, 0.5), got {self.exclude_extreme_fraction}",
                             parameters=("exclude_extreme_fraction",))

    def to_dict(self) -> Dict[str, Any]:
        """All fields as a plain dict (for metadata)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TokenPool:
    """The ids prompts are drawn from, and where they came from.

    Attributes
    ----------
    ids : ndarray, shape [n_ids], int64
        Sorted, unique, no special tokens.
    source : str
        ``"tokenizer"`` (all non-special ids), ``"file:<path>"`` or ``"range"`` (no tokenizer).
    n_excluded_special : int
        Ids dropped because they are special tokens.
    n_excluded_extreme : int
        Ids dropped as most/least frequent (``exclude_extreme_fraction``).
    rank_proxy : str or None
        Frequency proxy used for that exclusion (``"bpe_merge_rank"`` or ``"token_id"``).
    """

    ids: np.ndarray
    source: str
    n_excluded_special: int = 0
    n_excluded_extreme: int = 0
    rank_proxy: Optional[str] = None

    def describe(self) -> Dict[str, Any]:
        """Metadata: source, size, exclusions and a SHA-256 of the ids (the ids themselves can be 150k long)."""
        return {
            "source": self.source,
            "size": int(self.ids.size),
            "n_excluded_special": int(self.n_excluded_special),
            "n_excluded_extreme": int(self.n_excluded_extreme),
            "rank_proxy": self.rank_proxy,
            "min_id": int(self.ids.min()),
            "max_id": int(self.ids.max()),
            "sha256": hashlib.sha256(np.ascontiguousarray(self.ids, dtype="<i8").tobytes()).hexdigest(),
        }


# ----------------------------------------------------------------------------- tokenizer facts

def special_token_ids(tokenizer) -> np.ndarray:
    """Ids of the tokenizer's special and added-special tokens, sorted.

    Parameters
    ----------
    tokenizer : transformers tokenizer or None

    Returns
    -------
    ndarray, shape [n_special], int64
    """
    if tokenizer is None:
        return np.zeros(0, dtype=np.int64)
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, token in decoder.items() if getattr(token, "special", False))
    return np.array(sorted(i for i in ids if i is not None and i >= 0), dtype=np.int64)


def tokenizer_size(tokenizer, model_vocab: int) -> int:
    """Ids that are real tokens: ``min(len(tokenizer), model_vocab)``.

    Embedding matrices are often padded past the tokenizer (Pythia: 50,304 rows for
    50,277 tokens); the padding rows were never trained and must not be drawn.
    """
    if tokenizer is None:
        return int(model_vocab)
    return int(min(len(tokenizer), model_vocab))


def bpe_merge_ranks(tokenizer, vocab_size: int) -> Optional[np.ndarray]:
    """Frequency proxy per id: the rank of the BPE merge that created the token.

    Byte-level BPE learns merges in order of pair frequency, so an early merge marks
    a frequent token ([CS24]'s proxy). Base-alphabet tokens (no merge) rank before
    every merge; added tokens rank after.

    Parameters
    ----------
    tokenizer : transformers fast tokenizer
    vocab_size : int
        Ids ``0..vocab_size-1`` get a rank.

    Returns
    -------
    ndarray, shape [vocab_size], float64, or None
        Smaller = more frequent; None when the tokenizer is not a fast BPE tokenizer.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    model = json.loads(backend.to_str()).get("model", {})
    if model.get("type") != "BPE":
        return None
    vocab: Dict[str, int] = model.get("vocab", {})
    ranks = np.full(vocab_size, np.inf)
    for token, token_id in vocab.items():
        if 0 <= token_id < vocab_size:
            ranks[token_id] = -1.0  # base alphabet unless a merge below produced it
    for rank, merge in enumerate(model.get("merges", [])):
        left, right = merge if isinstance(merge, (list, tuple)) else merge.split(" ", 1)
        token_id = vocab.get(left + right)
        if token_id is not None and 0 <= token_id < vocab_size and ranks[token_id] == -1.0:
            ranks[token_id] = float(rank)
    return ranks


# ----------------------------------------------------------------------------- token pools

def default_token_pool(vocab_size: int, special_ids: Iterable[int] = (), ranks: Optional[np.ndarray] = None,
                       exclude_extreme_fraction: float = 0.0, source: str = "tokenizer") -> TokenPool:
    """All ids below ``vocab_size`` except special tokens, optionally minus both frequency extremes.

    Parameters
    ----------
    vocab_size : int
        Number of real token ids (see :func:`tokenizer_size`).
    special_ids : iterable of int
        Ids never drawn.
    ranks : ndarray, shape [vocab_size], optional
        Frequency proxy (smaller = more frequent). None: token id order (BPE
        vocabularies are numbered by merge order, so ids approximate ranks).
    exclude_extreme_fraction : float
        Drop this fraction of the remaining ids at each end of the rank order ([CS24]).
    source : str
        Recorded in :attr:`TokenPool.source`.

    Returns
    -------
    TokenPool
    """
    if vocab_size < 1:
        raise InputError(f"`vocab_size` must be positive, got {vocab_size}", parameters=("vocab_size",))
    if not 0.0 <= exclude_extreme_fraction < 0.5:
        raise InputError(f"`exclude_extreme_fraction` must be in [0, 0.5), got {exclude_extreme_fraction}",
                         parameters=("exclude_extreme_fraction",))
    ids = np.arange(vocab_size, dtype=np.int64)
    special = np.unique(np.asarray(list(special_ids), dtype=np.int64))
    keep = ~np.isin(ids, special)
    ids = ids[keep]
    n_special = int(vocab_size - ids.size)
    n_extreme, proxy = 0, None
    if exclude_extreme_fraction > 0:
        proxy = "bpe_merge_rank" if ranks is not None else "token_id"
        order_key = ranks[ids] if ranks is not None else ids.astype(np.float64)
        order = np.argsort(order_key, kind="stable")
        cut = int(np.floor(exclude_extreme_fraction * ids.size))
        kept = order[cut:ids.size - cut]
        n_extreme = int(ids.size - kept.size)
        ids = np.sort(ids[kept])
    return TokenPool(ids=ids, source=source, n_excluded_special=n_special, n_excluded_extreme=n_extreme,
                     rank_proxy=proxy)


def parse_token_pool(obj: Any, what: str = "token pool") -> np.ndarray:
    """Token ids from decoded JSON: a list of ints, or a dict with key ``"token_ids"``.

    Parameters
    ----------
    obj : list or dict
        ``json.load`` output of a pool file (``frequent_token_ids.json`` is a dict).
    what : str
        Name used in error messages (the file path).

    Returns
    -------
    ndarray, shape [n_ids], int64 (file order, duplicates kept; see :func:`pool_from_ids`)
    """
    if isinstance(obj, dict):
        if "token_ids" not in obj:
            raise InputError(f"{what}: a dict pool needs the key 'token_ids'; found keys {sorted(obj)[:10]}")
        obj = obj["token_ids"]
    if not isinstance(obj, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in obj):
        raise InputError(f"{what}: expected a JSON list of integer token ids (or a dict with 'token_ids')")
    return np.asarray(obj, dtype=np.int64)


def pool_from_ids(ids: np.ndarray, vocab_size: int, special_ids: Iterable[int] = (),
                  source: str = "file") -> TokenPool:
    """Validate an explicit pool: ids in ``[0, vocab_size)``; duplicates and special ids dropped.

    Raises
    ------
    InputError
        If an id is out of range or nothing is left.
    """
    ids = np.asarray(ids, dtype=np.int64)
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
        raise InputError(f"{source}: token ids must be in [0, {vocab_size}); got {bad[:5].tolist()}")
    unique = np.unique(ids)
    special = np.asarray(list(special_ids), dtype=np.int64)
    kept = unique[~np.isin(unique, special)]
    if kept.size == 0:
        raise InputError(f"{source}: no usable token ids left after removing special tokens")
    return TokenPool(ids=kept, source=source, n_excluded_special=int(unique.size - kept.size))


# ----------------------------------------------------------------------------- prompts

def repeated_random_prompts(pool: np.ndarray, n_prompts: int, block_len: int, n_copies: int,
                            bos_id: Optional[int], rng: np.random.Generator) -> np.ndarray:
    """Prompts of ``[BOS] + block + block + ...`` with ``block_len`` distinct ids per block.

    Parameters
    ----------
    pool : ndarray, shape [n_ids], int
        Ids to draw from (distinct).
    n_prompts, block_len, n_copies : int
        Prompt count, distinct ids per block, copies of the block.
    bos_id : int or None
        Prepended when not None.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, shape [n_prompts, (bos_id is not None) + n_copies * block_len], int64
    """
    pool = np.asarray(pool, dtype=np.int64)
    if pool.size < block_len:
        raise InputError(f"the token pool has {pool.size} ids, fewer than the block length {block_len}; "
                         "lower `block_len` / `prefix_block_len` or pass a larger `token_pool`",
                         parameters=("block_len", "prefix_block_len", "token_pool"))
    # One draw per prompt (sampling without replacement from a pool of up to ~150k ids);
    # n_prompts is small and this runs once, so a loop is clearer than a permuted copy of the pool per row.
    blocks = np.stack([rng.choice(pool, size=block_len, replace=False) for _ in range(n_prompts)])
    parts = [blocks] * n_copies
    if bos_id is not None:
        parts = [np.full((n_prompts, 1), bos_id, dtype=np.int64)] + parts
    return np.concatenate(parts, axis=1)


#: Bytes per prompt token while the prompts are drawn: the per-prompt int64 rows and the stacked array.
PROMPT_BYTES_PER_TOKEN = 2 * 8
#: Bytes per drawn prompt besides its tokens (a numpy array object in the list that is stacked).
PROMPT_OVERHEAD_BYTES = 112
#: Bytes per attention weight of one layer's forward pass on a batch: the pre-softmax scores, the pattern and
#: the lag sums' temporaries, float32 (:func:`icl_cmr.heads.scores.stream_attention_scores`).
ATTENTION_BYTES = 3 * 4
#: The settings that size the prompts' memory (:func:`prompt_memory_bytes`), in the order messages name them.
PROMPT_MEMORY_SETTINGS = ("n_prompts", "block_len", "batch_size", "prefix_n_prompts", "prefix_block_len",
                          "prefix_copies")


def prompt_memory_bytes(config: PromptConfig, n_heads: int = 1) -> int:
    """Estimated peak bytes of both prompt sets and of one batch's attention, for refusing before any work.

    A lower bound: the weights and the model's other activations come on top (``n_heads=1`` when the
    model is not known, as a sweep plan's check).

    Parameters
    ----------
    config : PromptConfig
    n_heads : int
        Query heads per layer.

    Returns
    -------
    int
        Bytes.
    """
    offset = int(config.prepend_bos)
    sets = ((config.n_prompts, offset + 2 * config.block_len),
            (config.prefix_n_prompts, offset + config.prefix_copies * config.prefix_block_len))
    prompts = sum(n * (length * PROMPT_BYTES_PER_TOKEN + PROMPT_OVERHEAD_BYTES) for n, length in sets)
    batch = max(min(config.batch_size, n) * n_heads * length ** 2 * ATTENTION_BYTES for n, length in sets)
    return prompts + batch


def make_prompt_sets(pool: TokenPool, bos_id: Optional[int], config: PromptConfig) -> Tuple[np.ndarray, np.ndarray]:
    """The repeat set and the prefix-matching set for ``config`` (deterministic in ``config.seed``).

    Parameters
    ----------
    pool : TokenPool
    bos_id : int or None
        The tokenizer's BOS id; used only when ``config.prepend_bos``.
    config : PromptConfig

    Returns
    -------
    repeat_prompts : ndarray, shape [n_prompts, offset + 2 * block_len], int64
    prefix_prompts : ndarray, shape [prefix_n_prompts, offset + prefix_copies * prefix_block_len], int64
        ``offset`` is 1 with BOS, else 0 (see :func:`prompt_offset`).
    """
    bos = bos_id if config.prepend_bos else None
    repeat_seed, prefix_seed = np.random.SeedSequence(config.seed).spawn(2)
    repeat = repeated_random_prompts(pool.ids, config.n_prompts, config.block_len, 2, bos,
                                     np.random.default_rng(repeat_seed))
    prefix = repeated_random_prompts(pool.ids, config.prefix_n_prompts, config.prefix_block_len,
                                     config.prefix_copies, bos, np.random.default_rng(prefix_seed))
    return repeat, prefix


def prompt_offset(bos_id: Optional[int], config: PromptConfig) -> int:
    """Position of the first block token: 1 when a BOS is prepended, else 0."""
    return int(config.prepend_bos and bos_id is not None)
