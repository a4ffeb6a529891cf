"""Training rows of the toy model: windows of the token stream that copy a span of their own text later.

Every row carrying a 16-100 token span of its own text copied later in the row is the signal that
makes induction heads form within minutes on a 2-core CPU (DESIGN.md section 9).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from icl_cmr.errors import InputError


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
        raise InputError(f"`token_stream` must be 1-D with at least `n_ctx`={n_ctx} tokens, got shape {stream.shape}",
                         parameters=("token_stream", "n_ctx"))
    if not 1 <= span_min <= span_max or 2 * span_max >= n_ctx:
        raise InputError(f"need 1 <= `span_min` <= `span_max` < `n_ctx` / 2, got {span_min}, {span_max}, `n_ctx`={n_ctx}",
                         parameters=("span_min", "span_max", "n_ctx"))
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
