"""Evaluation text for ICL scores: C4 English validation (the paper's) or local files.

[LI24] ``ablation.py`` streams ``allenai/c4`` ("en", validation split) in its
published order, tokenizes each document as TransformerLens ``to_tokens`` does
(BOS prepended), keeps those of at least 512 tokens and truncates them to 512.
:func:`iter_prompts` does the same for any text source; :func:`iter_c4_texts`
and :func:`icl_cmr.files.texts.iter_local_texts` are the two sources. Order is deterministic: the
stream's order, or sorted file paths and line order for local files.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional

import numpy as np

from icl_cmr.errors import InputError
from icl_cmr.heads.registry import hub_reachable

logger = logging.getLogger(__name__)

#: [LI24] ablation.py: ``load_dataset("allenai/c4", "en", streaming=True)["validation"]``.
C4_DATASET, C4_CONFIG, C4_SPLIT = "allenai/c4", "en", "validation"

@dataclass(frozen=True)
class TextDataConfig:
    """Which documents become prompts.

    Attributes
    ----------
    min_tokens : int
        Keep documents with at least this many tokens (BOS included). [LI24] ``min_len = 512``.
    seq_len : int
        Truncate kept documents to this many tokens; at most ``min_tokens`` so every
        prompt has the same length. [LI24]: 512.
    prepend_bos : bool
        Put the tokenizer's BOS id first when it has one (TransformerLens ``to_tokens`` default).
    encode_chunk : int
        Documents tokenized per tokenizer call (speed only).
    """

    min_tokens: int = 512
    seq_len: int = 512
    prepend_bos: bool = True
    encode_chunk: int = 64

    def __post_init__(self):
        if self.seq_len < 2:
            raise InputError(f"`seq_len` must be at least 2, got {self.seq_len}", parameters=("seq_len",))
        if self.min_tokens < self.seq_len:
            raise InputError(f"`min_tokens` {self.min_tokens} is below `seq_len` {self.seq_len}; every kept "
                             "document must reach the prompt length", parameters=("min_tokens", "seq_len"))


def check_c4_reachable() -> None:
    """Raise :class:`InputError` (within seconds, no retry loop) when C4 cannot be streamed from the hub.

    Called before any work by scripts that will stream C4 (``run_pipeline.py`` without ``--data``), and
    by :func:`iter_c4_texts` itself.
    """
    if not hub_reachable():
        raise InputError(f"cannot stream {C4_DATASET} ({C4_CONFIG}, {C4_SPLIT}): the Hugging Face hub is "
                         "unreachable; pass `data` PATH with local .txt/.jsonl files instead", parameters=("data",))


def iter_c4_texts() -> Iterator[str]:
    """Stream the documents of C4 English validation in the dataset's order.

    Yields
    ------
    str

    Raises
    ------
    InputError
        Within seconds, when the Hugging Face hub cannot be reached (:func:`check_c4_reachable`).
    """
    check_c4_reachable()
    from datasets import load_dataset

    try:
        stream = load_dataset(C4_DATASET, C4_CONFIG, split=C4_SPLIT, streaming=True)
        for record in stream:
            yield record["text"]
    except (ConnectionError, OSError) as err:
        raise InputError(f"streaming {C4_DATASET} failed: {str(err).splitlines()[0] if str(err) else err}") from None


def _chunks(texts: Iterable[str], size: int) -> Iterator[List[str]]:
    chunk: List[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def iter_prompts(texts: Iterable[str], tokenizer, bos_token_id: Optional[int],
                 config: TextDataConfig = TextDataConfig()) -> Iterator[np.ndarray]:
    """Token prompts from documents: BOS + tokens, kept if ``>= min_tokens``, cut to ``seq_len``.

    Parameters
    ----------
    texts : iterable of str
        Documents in order.
    tokenizer : transformers tokenizer
        Called as ``tokenizer(list_of_texts, add_special_tokens=False)["input_ids"]``.
    bos_token_id : int or None
        Prepended when ``config.prepend_bos`` and not None (counts toward the length).
    config : TextDataConfig

    Yields
    ------
    numpy.ndarray [seq_len], int64
        One per kept document, in document order.
    """
    prefix = [int(bos_token_id)] if (config.prepend_bos and bos_token_id is not None) else []
    for chunk in _chunks(texts, config.encode_chunk):
        for ids in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
            if len(prefix) + len(ids) >= config.min_tokens:
                yield np.asarray(prefix + list(ids[: config.seq_len - len(prefix)]), dtype=np.int64)


def split_at_blank_lines(text: str, min_chars: int) -> List[str]:
    """Cut one long document into consecutive pieces of at least ``min_chars`` characters.

    Pieces end at blank lines (paragraph or function boundaries in source code), so each
    piece is a natural stretch of the original text; the last, shorter remainder is
    dropped. Used to get more than one ICL prompt out of each held-out source file of the
    bundled model, whose held-out split has only about 70 files.

    Parameters
    ----------
    text : str
        The document.
    min_chars : int
        Smallest piece length in characters (> 0).

    Returns
    -------
    list of str
        Pieces in document order; joined with blank lines they give a prefix of ``text``.
    """
    if min_chars < 1:
        raise InputError(f"min_chars must be positive, got {min_chars}")
    pieces, current, size = [], [], 0
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= min_chars:
            pieces.append("\n\n".join(current))
            current, size = [], 0
    return pieces
