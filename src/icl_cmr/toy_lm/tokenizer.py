"""The toy model's tokenizer: byte-level BPE trained on the training split, and the token stream it makes.

The tokenizer comes from the ``tokenizers`` library, wrapped as ``PreTrainedTokenizerFast`` so
that ``AutoTokenizer.from_pretrained(model_dir)`` loads it like a hub tokenizer (DESIGN.md section 9).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

#: The one special token: document separator, BOS and EOS alike (GPT-2's convention).
SPECIAL_TOKEN = "<|endoftext|>"


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
    # Heavy optional libraries (transformers takes seconds to import): only training a tokenizer needs them.
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
