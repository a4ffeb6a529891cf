"""A small GPT-2 language model trained offline on the Python standard library (DESIGN.md section 9).

The project ships this model so that every analysis runs on a real trained
transformer without downloading anything. It is a Hugging Face
``GPT2LMHeadModel``, so it loads through exactly the same TransformerLens path
(``TransformerBridge.boot_transformers(local_dir)``) as GPT-2 or Pythia.

Pieces, in the order training uses them:

* **Corpus** (:func:`stdlib_source_files`, :func:`split_corpus_files`,
  :func:`held_out_texts`): the ``.py`` files of the running interpreter's
  standard library (``sysconfig.get_paths()["stdlib"]``), without
  ``site-packages`` and without test suites. The train / held-out split is by
  file and depends only on the file's path relative to the stdlib folder (a
  SHA-256 hash), so it is deterministic, disjoint, and stable when files are
  added or removed.
* **Tokenizer** (:func:`train_tokenizer`): byte-level BPE from the
  ``tokenizers`` library, wrapped as ``PreTrainedTokenizerFast`` so that
  ``AutoTokenizer.from_pretrained(model_dir)`` loads it like a hub tokenizer.
* **Rows** (:func:`build_training_rows`): windows of the training token stream
  in which a 16-100 token span of the row's own text is copied later in the
  row, the signal that makes induction heads form quickly (DESIGN.md section 9).
* **Model and training** (:func:`make_model`, :func:`train`): 2 layers,
  d_model 128, 4 heads, sinusoidal initial position embeddings, AdamW with
  cosine decay, and a matching-score monitor
  (:func:`induction_matching_score_hf`) logged with the loss.
* **Evaluation** (:func:`icl_score`): loss at a late position minus loss at
  position 50 on held-out text.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from icl_cmr.errors import InputError

logger = logging.getLogger(__name__)

#: The one special token: document separator, BOS and EOS alike (GPT-2's convention).
SPECIAL_TOKEN = "<|endoftext|>"

#: Folder names whose files are left out of the corpus: installed packages and
#: test suites (the latter are a third of the stdlib's bytes and mostly
#: repetitive assertions).
EXCLUDED_DIR_NAMES = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})


@dataclass(frozen=True)
class ToyLMConfig:
    """Every hyper-parameter of the bundled model, with where it comes from.

    "Recipe" means DESIGN.md section 9 (measured on this machine before this
    module was written); "ours" marks a choice made here and documented in the
    README.
    """

    # --- corpus and split
    #: Share of stdlib files held out for evaluation (ours: 10 %, by file hash).
    held_out_percent: int = 10
    #: Salt of the split hash (ours); changing it gives another split.
    split_salt: str = "icl_cmr-toy-lm-split-v1"

    # --- tokenizer
    #: Byte-level BPE vocabulary size, including the 256 byte symbols and the
    #: special token (recipe: 512; 2048 formed no induction head in 15 minutes).
    vocab_size: int = 512
    #: Minimum pair frequency for a BPE merge (tokenizers' default is 0; ours: 2).
    bpe_min_frequency: int = 2

    # --- model (recipe)
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128
    d_mlp: int = 512
    #: Context length = n_positions (recipe: 256; holds BOS + 2 x 100 repeated ids).
    n_ctx: int = 256
    #: Standard deviation of the sinusoidal initial position embeddings (recipe).
    pos_init_std: float = 0.02
    #: Standard deviation of all other initial weights (GPT-2's initializer_range).
    init_std: float = 0.02
    #: Dropout everywhere (ours: 0; the model sees each token about once).
    dropout: float = 0.0

    # --- training rows (recipe: every row carries a 16-100 token span copied later)
    copy_span_min: int = 16
    copy_span_max: int = 100
    #: Share of rows that carry a copied span (recipe: every row).
    copy_row_fraction: float = 1.0

    # --- optimisation (recipe)
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 0.1
    adam_betas: Tuple[float, float] = (0.9, 0.95)  # ours (nanoGPT's GPT-2 values)
    #: Cosine decay from learning_rate to min_lr_ratio * learning_rate over max_steps (recipe: 0.3).
    min_lr_ratio: float = 0.3
    #: Linear warm-up steps (ours; short, the model is tiny).
    warmup_steps: int = 50
    #: Step budget (ours: about 15-20 minutes on 2 free cores, the recipe's 15 minutes; see README).
    max_steps: int = 4000
    #: Gradient clipping norm (ours, nanoGPT's value).
    grad_clip: float = 1.0

    # --- monitoring
    #: Evaluate the matching score and log every this many steps (ours).
    eval_every: int = 50
    #: Monitor batch: prompts of BOS + n distinct frequent ids + the same ids again
    #: (DESIGN.md section 2; n = 100 matches the paper's 100-item CMR simulation).
    monitor_prompts: int = 8
    monitor_block_len: int = 100
    #: Tokens seen at least this often in training are "frequent"; head scores
    #: draw prompt tokens from them (recipe: rare tokens' untrained embeddings
    #: drop the matching score to 0.1-0.2).
    frequent_min_count: int = 100
    #: Early stop (ours): stop once the best head's matching score has been >= stop_score
    #: at stop_patience consecutive evaluations (200 steps: "clearly past 0.5 and
    #: stable"); None trains max_steps. The shipped model stopped this way at step 3350.
    stop_score: Optional[float] = 0.55
    stop_patience: int = 4
    #: Optional hard stop (ours): halt after this many steps while the learning-rate
    #: schedule still spans max_steps, so a shortened run is itself reproducible.
    stop_after_steps: Optional[int] = None

    # --- ICL score (DESIGN.md section 5; [LI24] uses 500 vs 50, our context ends at 255)
    icl_early_index: int = 50
    icl_late_index: int = 250

    def __post_init__(self) -> None:
        if not 0 < self.held_out_percent < 100:
            raise InputError(f"held_out_percent must be in 1..99, got {self.held_out_percent}")
        if self.vocab_size < 258:
            raise InputError(f"vocab_size must be >= 258 (256 bytes + special token + 1 merge), got {self.vocab_size}")
        if self.d_model % self.n_head:
            raise InputError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if not 1 <= self.copy_span_min <= self.copy_span_max:
            raise InputError(f"need 1 <= copy_span_min <= copy_span_max, got {self.copy_span_min}, {self.copy_span_max}")
        if 2 * self.copy_span_max >= self.n_ctx:
            raise InputError(f"copy_span_max ({self.copy_span_max}) must be below n_ctx / 2 ({self.n_ctx / 2})")
        if not 0.0 <= self.copy_row_fraction <= 1.0:
            raise InputError(f"copy_row_fraction must be in [0, 1], got {self.copy_row_fraction}")
        if 2 * self.monitor_block_len + 1 > self.n_ctx:
            raise InputError(f"monitor_block_len ({self.monitor_block_len}) needs 2n + 1 <= n_ctx ({self.n_ctx})")
        if not 0 <= self.icl_early_index < self.icl_late_index <= self.n_ctx - 2:
            raise InputError(f"need 0 <= icl_early_index < icl_late_index <= n_ctx - 2, got "
                             f"{self.icl_early_index}, {self.icl_late_index}")

    def to_dict(self) -> Dict[str, object]:
        """Plain dict of all fields (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def smallest_n_ctx(self) -> int:
        """The shortest context these settings allow: a training row carries a copied span of up to
        ``copy_span_max`` tokens twice, a monitor prompt is BOS + 2 x ``monitor_block_len`` tokens, and the
        ICL score reads a loss after ``icl_early_index`` (the checks of ``__post_init__``)."""
        return max(2 * self.copy_span_max + 1, 2 * self.monitor_block_len + 1, self.icl_early_index + 3)


# ============================================================================ corpus

def stdlib_dir() -> Path:
    """The running interpreter's standard-library folder (``sysconfig``'s ``stdlib`` path)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_files(root: "str | Path | None" = None) -> List[Path]:
    """All ``.py`` files of the standard library, sorted by relative path.

    Parameters
    ----------
    root : path-like, optional
        Folder to scan; default :func:`stdlib_dir`.

    Returns
    -------
    list of Path
        Files whose relative path contains none of :data:`EXCLUDED_DIR_NAMES`,
        sorted by their POSIX relative path (so the order is machine-independent).
    """
    root = Path(root) if root is not None else stdlib_dir()
    if not root.is_dir():
        raise InputError(f"standard-library folder {root} not found")
    files = []
    for folder, subfolders, names in os.walk(root):
        # Prune in place: never descend into site-packages (tens of thousands of files).
        subfolders[:] = [name for name in subfolders if name not in EXCLUDED_DIR_NAMES]
        files.extend(Path(folder) / name for name in names if name.endswith(".py"))
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def is_held_out(relative_path: str, held_out_percent: int, salt: str) -> bool:
    """Whether a file belongs to the held-out split.

    The first 8 bytes of ``sha256(salt + "/" + relative_path)`` read as an
    unsigned integer, modulo 100, below ``held_out_percent``: a split that
    depends on nothing but the file's own relative path.
    """
    digest = hashlib.sha256(f"{salt}/{relative_path}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < held_out_percent


def split_corpus_files(files: Sequence[Path], root: "str | Path", held_out_percent: int = 10,
                       salt: str = ToyLMConfig.split_salt) -> Tuple[List[Path], List[Path]]:
    """Split files into (train, held_out) by :func:`is_held_out` on their relative path.

    Returns
    -------
    (list of Path, list of Path)
        Disjoint lists in the input order.
    """
    root = Path(root)
    train, held_out = [], []
    for path in files:
        relative = Path(path).relative_to(root).as_posix()
        (held_out if is_held_out(relative, held_out_percent, salt) else train).append(Path(path))
    return train, held_out


def read_texts(files: Sequence[Path]) -> List[str]:
    """File contents as UTF-8 text (undecodable bytes replaced; a few stdlib files are Latin-1)."""
    return [Path(path).read_text(encoding="utf-8", errors="replace") for path in files]


def corpus_split(config: ToyLMConfig = ToyLMConfig(), root: "str | Path | None" = None
                 ) -> Tuple[List[Path], List[Path]]:
    """The (train, held_out) stdlib files for ``config``'s split."""
    root = Path(root) if root is not None else stdlib_dir()
    return split_corpus_files(stdlib_source_files(root), root, config.held_out_percent, config.split_salt)


def held_out_texts(config: ToyLMConfig = ToyLMConfig(), root: "str | Path | None" = None
                   ) -> List[Tuple[str, str]]:
    """The held-out stdlib files' text, for evaluating the bundled model (ICL score, ablations).

    The bundled model never saw these files in training. The split is the one
    recorded in ``saved_models/toy_lm/training_log.json`` (``held_out_percent``,
    ``split_salt``), so pass the same config when the defaults have changed.

    Parameters
    ----------
    config : ToyLMConfig
        Supplies ``held_out_percent`` and ``split_salt``.
    root : path-like, optional
        Standard-library folder; default :func:`stdlib_dir`.

    Returns
    -------
    list of (str, str)
        ``(relative_path, text)`` pairs sorted by relative path.

    Examples
    --------
    >>> docs = held_out_texts()
    >>> name, text = docs[0]
    """
    root = Path(root) if root is not None else stdlib_dir()
    _, held_out = corpus_split(config, root)
    return [(path.relative_to(root).as_posix(), text) for path, text in zip(held_out, read_texts(held_out))]


def corpus_fingerprint(files: Sequence[Path], root: "str | Path") -> str:
    """SHA-256 over the relative paths and bytes of ``files``: identifies the exact corpus trained on."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(Path(path).relative_to(root).as_posix().encode("utf-8") + b"\0")
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


# ============================================================================ tokenizer

def train_tokenizer(texts: Sequence[str], vocab_size: int, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer and wrap it as a ``PreTrainedTokenizerFast``.

    Parameters
    ----------
    texts : sequence of str
        Training documents (the training split only).
    vocab_size : int
        Final vocabulary size: 256 byte symbols + :data:`SPECIAL_TOKEN` + merges.
    min_frequency : int
        Minimum count of a pair to be merged.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        GPT-2 conventions: :data:`SPECIAL_TOKEN` is BOS, EOS and UNK; no
        padding token (set one when batching variable-length text). Saved
        with ``save_pretrained`` it loads through ``AutoTokenizer``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=SPECIAL_TOKEN, eos_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN, model_max_length=None, clean_up_tokenization_spaces=False,
    )


def tokenize_documents(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """Token ids of all documents, each followed by the separator: shape ``[n_tokens]``, int64."""
    separator = tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    pieces = []
    for ids in encoded:  # one array per document; concatenated once
        pieces.append(np.asarray(ids, dtype=np.int64))
        pieces.append(np.array([separator], dtype=np.int64))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def frequent_token_ids(token_stream: np.ndarray, vocab_size: int, min_count: int,
                       exclude: Sequence[int] = ()) -> Tuple[np.ndarray, np.ndarray]:
    """Ids seen at least ``min_count`` times in the training stream.

    Parameters
    ----------
    token_stream : ndarray, shape [n_tokens]
    vocab_size : int
    min_count : int
    exclude : sequence of int
        Ids never returned (special tokens).

    Returns
    -------
    ids : ndarray, shape [n_frequent]
        Sorted ascending.
    counts : ndarray, shape [vocab_size]
        Count of every id.
    """
    counts = np.bincount(np.asarray(token_stream, dtype=np.int64), minlength=vocab_size)
    keep = counts >= min_count
    keep[list(exclude)] = False
    return np.flatnonzero(keep), counts


# ============================================================================ training rows

def build_training_rows(token_stream: np.ndarray, n_rows: int, n_ctx: int, rng: np.random.Generator,
                        span_min: int = 16, span_max: int = 100, copy_fraction: float = 1.0
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """Rows of ``n_ctx`` tokens in which a span of the row's own text is copied later in the row.

    For each row: draw a span length ``m`` in [span_min, span_max] (0 when the
    row does not copy, probability ``1 - copy_fraction``), a window of
    ``n_ctx - m`` consecutive stream tokens at a uniform offset, a source
    start ``s`` in [0, n_ctx - 2m] and an insertion point ``p`` in
    [s + m, n_ctx - m]. The row is ``window[:p] + window[s:s+m] + window[p:]``,
    so the copy follows its source (possibly immediately) and the row keeps
    ``n_ctx`` tokens of text in order around it (DESIGN.md section 9).

    Parameters
    ----------
    token_stream : ndarray, shape [n_tokens]
        Training tokens; needs ``n_tokens >= n_ctx``.
    n_rows, n_ctx : int
    rng : numpy.random.Generator
        The only source of randomness (reproducible rows).
    span_min, span_max : int
        Copied-span length range, inclusive; ``2 * span_max < n_ctx``.
    copy_fraction : float
        Share of rows with a copied span.

    Returns
    -------
    rows : ndarray, shape [n_rows, n_ctx], int64
    spans : ndarray, shape [n_rows, 3], int64
        ``(source_start, copy_start, length)`` per row, positions in the row;
        the copy occupies ``row[copy_start : copy_start + length]`` and equals
        ``row[source_start : source_start + length]``; length 0 for rows
        without a copy.
    """
    stream = np.asarray(token_stream, dtype=np.int64)
    if stream.ndim != 1 or stream.size < n_ctx:
        raise InputError(f"token_stream must be 1-D with at least n_ctx={n_ctx} tokens, got shape {stream.shape}")
    if not 1 <= span_min <= span_max or 2 * span_max >= n_ctx:
        raise InputError(f"need 1 <= span_min <= span_max < n_ctx / 2, got {span_min}, {span_max}, n_ctx={n_ctx}")
    lengths = rng.integers(span_min, span_max + 1, size=n_rows)
    lengths = np.where(rng.random(n_rows) < copy_fraction, lengths, 0)
    window_len = n_ctx - lengths                                         # [rows]
    offsets = np.floor(rng.random(n_rows) * (stream.size - window_len + 1)).astype(np.int64)
    source = np.floor(rng.random(n_rows) * (n_ctx - 2 * lengths + 1)).astype(np.int64)
    insert = source + lengths + np.floor(rng.random(n_rows) * (n_ctx - 2 * lengths - source + 1)).astype(np.int64)
    # Index of each row position inside its window: before the copy j, inside it
    # source + (j - insert), after it j - length.
    j = np.arange(n_ctx)[None, :]
    inside = (j >= insert[:, None]) & (j < (insert + lengths)[:, None])
    in_window = np.where(j < insert[:, None], j,
                         np.where(inside, source[:, None] + j - insert[:, None], j - lengths[:, None]))
    rows = stream[offsets[:, None] + in_window]
    return rows, np.stack([source, insert, lengths], axis=1)


# ============================================================================ model

def sinusoidal_position_embeddings(n_positions: int, d_model: int, std: float) -> np.ndarray:
    """Transformer sinusoids (Vaswani et al. 2017, section 3.5) rescaled to standard deviation ``std``.

    Returns
    -------
    ndarray, shape [n_positions, d_model], float32
        ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(...)``, times
        ``std / PE.std()``.
    """
    position = np.arange(n_positions)[:, None]
    frequency = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2) / d_model)[None, :]
    table = np.zeros((n_positions, d_model))
    table[:, 0::2] = np.sin(position * frequency)
    table[:, 1::2] = np.cos(position * frequency[:, : d_model // 2])
    return (table * (std / table.std())).astype(np.float32)


def make_model(config: ToyLMConfig, vocab_size: int, special_token_id: int):
    """A freshly initialised ``GPT2LMHeadModel`` (eager attention, so attention weights can be returned).

    Call ``torch.manual_seed`` before it for reproducible weights.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=vocab_size, n_positions=config.n_ctx, n_embd=config.d_model, n_layer=config.n_layer,
        n_head=config.n_head, n_inner=config.d_mlp, activation_function="gelu_new",
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        initializer_range=config.init_std, bos_token_id=special_token_id, eos_token_id=special_token_id,
        tie_word_embeddings=True,
    )
    hf_config._attn_implementation = "eager"
    model = GPT2LMHeadModel(hf_config)
    with torch.no_grad():
        model.transformer.wpe.weight.copy_(torch.from_numpy(
            sinusoidal_position_embeddings(config.n_ctx, config.d_model, config.pos_init_std)))
    return model


def learning_rate_at(step: int, config: ToyLMConfig) -> float:
    """Linear warm-up to ``learning_rate``, then cosine decay to ``min_lr_ratio * learning_rate`` at ``max_steps``."""
    peak = config.learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    floor = config.min_lr_ratio * peak
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


# ============================================================================ monitoring and evaluation

def repeated_random_prompts(candidate_ids: np.ndarray, n_prompts: int, block_len: int, bos_id: Optional[int],
                            rng: np.random.Generator) -> np.ndarray:
    """BOS + ``block_len`` distinct ids drawn from ``candidate_ids`` + the same block again (DESIGN.md section 2).

    Returns
    -------
    ndarray, shape [n_prompts, (bos_id is not None) + 2 * block_len], int64
    """
    candidate_ids = np.asarray(candidate_ids, dtype=np.int64)
    if candidate_ids.size < block_len:
        raise InputError(f"need at least block_len={block_len} candidate ids, got {candidate_ids.size}")
    # permuted() shuffles each row independently: distinct ids within a prompt.
    blocks = rng.permuted(np.broadcast_to(candidate_ids, (n_prompts, candidate_ids.size)), axis=1)[:, :block_len]
    parts = [blocks, blocks]
    if bos_id is not None:
        parts.insert(0, np.full((n_prompts, 1), bos_id, dtype=np.int64))
    return np.concatenate(parts, axis=1)


def matching_score_from_patterns(patterns: np.ndarray, block_len: int, offset: int) -> np.ndarray:
    """Induction-head matching score from attention patterns on repeated-block prompts.

    For a query at position i in the second repeat whose token sits at
    j = i - block_len in the first repeat, the score is the attention on key
    j + 1 (lag +1), averaged over queries whose lag +1 key lies in the first
    repeat and over prompts (DESIGN.md section 2).

    Parameters
    ----------
    patterns : ndarray, shape [batch, layer, head, query_pos, key_pos]
        Softmax attention probabilities.
    block_len : int
        Length n of the repeated block.
    offset : int
        Position of the first block token (1 with BOS, else 0).

    Returns
    -------
    ndarray, shape [layer, head]
    """
    from icl_cmr.heads.scores import induction_matching_score

    patterns = np.asarray(patterns)
    # The toolkit's own score, layer by layer (a model here has 2 layers).
    return np.stack([induction_matching_score(patterns[:, layer], block_len, offset)
                     for layer in range(patterns.shape[1])])


def induction_matching_score_hf(model, prompts, block_len: int, offset: int) -> np.ndarray:
    """Matching score of every head of a Hugging Face model, from ``output_attentions=True``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        With eager attention.
    prompts : torch.LongTensor, shape [batch, offset + 2 * block_len]
    block_len, offset : int
        See :func:`matching_score_from_patterns`.

    Returns
    -------
    ndarray, shape [n_layer, n_head]
    """
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        attentions = model(prompts, output_attentions=True).attentions  # n_layer x [batch, head, q, k]
    model.train(was_training)
    patterns = torch.stack(attentions, dim=1).numpy()
    return matching_score_from_patterns(patterns, block_len, offset)


def induction_matching_score_tl(bridge, prompts, block_len: int, offset: int) -> np.ndarray:
    """Matching score of every head through TransformerLens (hook ``blocks.{l}.attn.hook_pattern``).

    The path the rest of the toolkit uses; it must agree with
    :func:`induction_matching_score_hf` on the same prompts.

    Parameters
    ----------
    bridge : transformer_lens.model_bridge.TransformerBridge
    prompts : torch.LongTensor, shape [batch, offset + 2 * block_len]
    block_len, offset : int

    Returns
    -------
    ndarray, shape [n_layer, n_head]
    """
    import torch

    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(bridge.cfg.n_layers)]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(prompts, names_filter=lambda name: name in names)
    patterns = torch.stack([cache[name] for name in names], dim=1).numpy()  # [batch, layer, head, q, k]
    return matching_score_from_patterns(patterns, block_len, offset)


def held_out_windows(tokenizer, texts: Sequence[str], n_ctx: int) -> np.ndarray:
    """Non-overlapping evaluation windows: BOS + ``n_ctx - 1`` consecutive tokens of one held-out file.

    Every file contributes ``floor(len / (n_ctx - 1))`` windows (files shorter than
    that contribute none), so no window crosses a file boundary.

    Returns
    -------
    ndarray, shape [n_windows, n_ctx], int64
    """
    bos = tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    body = n_ctx - 1
    windows = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:  # one file at a time
        n_windows = len(ids) // body
        if n_windows:
            chunk = np.asarray(ids[: n_windows * body], dtype=np.int64).reshape(n_windows, body)
            windows.append(np.concatenate([np.full((n_windows, 1), bos, dtype=np.int64), chunk], axis=1))
    if not windows:
        raise InputError(f"no held-out text has {body} tokens")
    return np.concatenate(windows)


def per_token_loss(model, windows, batch_size: int = 32) -> np.ndarray:
    """Next-token cross-entropy at every position of every window.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    windows : ndarray, shape [n_windows, seq]
    batch_size : int

    Returns
    -------
    ndarray, shape [n_windows, seq - 1]
        Entry ``[w, i]`` is the loss of predicting token i + 1 from tokens 0..i.
    """
    import torch

    windows = torch.as_tensor(np.asarray(windows), dtype=torch.long)
    was_training = model.training
    model.eval()
    out = []
    from icl_cmr.interventions.icl_score import per_token_loss as loss_from_logits

    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):  # batches bound the memory
            batch = windows[start: start + batch_size]
            out.append(loss_from_logits(model(batch).logits, batch).numpy())
    model.train(was_training)
    return np.concatenate(out)


def icl_score(losses: np.ndarray, early_index: int, late_index: int) -> np.ndarray:
    """In-context-learning score per window: loss at ``late_index`` minus loss at ``early_index``.

    [LI24] section 5 / Fig 8 and [OL22]: ``loss[500] - loss[50]``; negative
    means later tokens are predicted better thanks to the context.

    Parameters
    ----------
    losses : ndarray, shape [n_windows, n_positions]
        From :func:`per_token_loss`.

    Returns
    -------
    ndarray, shape [n_windows]
    """
    from icl_cmr.interventions.icl_score import ICLScoreConfig, icl_scores

    losses = np.asarray(losses)
    if not 0 <= early_index < late_index < losses.shape[1]:
        raise InputError(f"need 0 <= early_index < late_index < {losses.shape[1]}, got {early_index}, {late_index}")
    return icl_scores(losses, ICLScoreConfig(late_index=late_index, early_index=early_index))


# ============================================================================ training

@dataclass
class TrainingResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model : transformers.GPT2LMHeadModel
    log : list of dict
        One row per evaluation: step, tokens, lr, train_loss (mean since the
        previous row), elapsed_s, best_head, best_matching_score and
        ``matching_L{l}H{h}`` for every head.
    final_matching_scores : ndarray, shape [n_layer, n_head]
    steps : int
        Optimiser steps taken.
    stopped_early : bool
    """

    model: object
    log: List[Dict[str, object]] = field(default_factory=list)
    final_matching_scores: Optional[np.ndarray] = None
    steps: int = 0
    stopped_early: bool = False


def train(config: ToyLMConfig, token_stream: np.ndarray, vocab_size: int, special_token_id: int,
          monitor_ids: np.ndarray, seed: int, progress: Optional[Callable[[Dict[str, object], object], None]] = None,
          show_progress: bool = True) -> TrainingResult:
    """Train the toy model from scratch, deterministically for a given seed and thread count.

    Parameters
    ----------
    config : ToyLMConfig
    token_stream : ndarray, shape [n_tokens]
        Training tokens (documents separated by the special token).
    vocab_size, special_token_id : int
    monitor_ids : ndarray, shape [n_ids]
        Ids the matching-score monitor draws its prompts from (frequent tokens).
    seed : int
        Seeds the weights (``torch.manual_seed``), the rows and the monitor prompts.
    progress : callable, optional
        Called as ``progress(row, model)`` after each new log row (the script
        uses it to keep a snapshot of the model and the log so far).
    show_progress : bool
        Show a tqdm bar.

    Returns
    -------
    TrainingResult
    """
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    model = make_model(config, vocab_size, special_token_id)
    model.train()
    row_rng = np.random.default_rng([seed, 1])
    prompts = torch.from_numpy(repeated_random_prompts(
        monitor_ids, config.monitor_prompts, config.monitor_block_len, special_token_id,
        np.random.default_rng([seed, 2])))
    # Decay matrices only (nanoGPT's grouping): biases, LayerNorm gains stay undecayed.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config.learning_rate, betas=config.adam_betas)
    result = TrainingResult(model=model)
    loss_sum, loss_count, streak = 0.0, 0, 0
    start = time.perf_counter()
    n_steps = config.max_steps if config.stop_after_steps is None else min(config.max_steps, config.stop_after_steps)
    bar = tqdm(range(n_steps), desc="training toy LM", disable=not show_progress, mininterval=2.0)
    for step in bar:
        lr = learning_rate_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows, _ = build_training_rows(token_stream, config.batch_size, config.n_ctx, row_rng,
                                      config.copy_span_min, config.copy_span_max, config.copy_row_fraction)
        batch = torch.from_numpy(rows)
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        loss_sum += float(loss.detach())
        loss_count += 1
        done = step + 1
        if done % config.eval_every == 0 or done == n_steps:
            scores = induction_matching_score_hf(model, prompts, config.monitor_block_len, offset=1)
            best = np.unravel_index(np.argmax(scores), scores.shape)
            row: Dict[str, object] = {
                "step": done, "tokens": done * config.batch_size * config.n_ctx, "lr": lr,
                "train_loss": loss_sum / loss_count, "elapsed_s": round(time.perf_counter() - start, 2),
                "best_head": f"L{best[0]}H{best[1]}", "best_matching_score": float(scores[best]),
            }
            row.update({f"matching_L{l}H{h}": float(scores[l, h])
                        for l in range(scores.shape[0]) for h in range(scores.shape[1])})
            result.log.append(row)
            result.final_matching_scores = scores
            loss_sum, loss_count = 0.0, 0
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", match=f"{row['best_matching_score']:.3f}")
            logger.debug("step %d loss %.4f best head %s %.3f", done, row["train_loss"], row["best_head"],
                         row["best_matching_score"])
            if progress is not None:
                progress(row, model)
            streak = streak + 1 if config.stop_score is not None and scores[best] >= config.stop_score else 0
            if config.stop_score is not None and streak >= config.stop_patience:
                result.stopped_early = True
                result.steps = done
                break
        result.steps = done
    bar.close()
    return result


# ============================================================================ plotting

def plot_training_log(log: Sequence[Dict[str, object]], title: str = ""):
    """Training loss and best-head matching score against step (two panels).

    Parameters
    ----------
    log : sequence of dict
        :attr:`TrainingResult.log` rows.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    steps = np.array([row["step"] for row in log])
    loss = np.array([row["train_loss"] for row in log])
    head_keys = sorted(key for key in log[0] if key.startswith("matching_L"))
    fig, (ax_loss, ax_match) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(steps, loss, color="k")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (nats / token)")
    ax_loss.set_title("loss")
    for key in head_keys:
        layer = int(key.split("L")[1].split("H")[0])
        ax_match.plot(steps, [row[key] for row in log], label=key.replace("matching_", ""), lw=1,
                      ls="-" if layer % 2 else "--")
    ax_match.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax_match.set_xlabel("step")
    ax_match.set_ylabel("induction matching score")
    ax_match.set_ylim(0, 1)
    ax_match.set_title("matching score per head")
    ax_match.legend(fontsize=6, ncol=2, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
