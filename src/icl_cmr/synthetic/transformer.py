"""A small decoder-only Transformer for the induction-heads task (DESIGN.md section 7).

2 layers, 8 heads, d_model 64 (d_head 8), GPT-2-style pre-LayerNorm blocks with a
4 x d_model GELU MLP, as [GD23]'s "2-layer Transformer" on the synthetic task. The
position encoding is one of

* ``"absolute"``: a learned table added to the token embeddings ([GD23] MHA-Abs, the
  course assignment). The model is trained with a 256-row table. Longer inputs see
  rows 256, 257, ... drawn from the initialisation distribution N(0, init_std^2)
  by a generator seeded per block of rows (:meth:`TinyTransformer.position_rows`).
  That is exactly what a model trained at 256 with a table sized to the longest
  test length would hold: rows that never receive a gradient are never moved by
  Adam (zero gradient, zero moment estimates, zero update).
* ``"rope"``: rotary embeddings on queries and keys (Su et al. 2021), base 10000.
* ``"alibi"``: linear attention biases -m_h (i - j), slopes m_h = 2^(-8 (h+1) / H)
  (Press et al. 2022).
* ``"none"``: no position information besides the causal mask (NoPE).

Three ways to run it, all equal up to float rounding (tests check 1e-5):

* :meth:`TinyTransformer.forward`: every position, the full attention matrix
  materialised. The plain reference; also what :meth:`attention_patterns` uses.
* :meth:`TinyTransformer.last_logits` with ``method="blocked"``: memory linear in
  length. Attention of the first layers runs in key/query blocks (PyTorch's
  ``scaled_dot_product_attention`` on CPU tiles keys and queries internally; ALiBi's
  bias goes through our own online-softmax blocks), the MLP runs in position
  chunks, and the last layer computes only the last query. Time is still
  quadratic in length (every position's first-layer output is needed as a key).
* ``method="token_types"`` (ALiBi and no position encoding only): exact and linear
  in time. The first layer's queries, keys and values depend on the token id alone,
  so its attention output at position i is
  ``sum_t w(tok_i, t) A_t(i) v_t / sum_t w(tok_i, t) A_t(i)`` over the 16 token ids
  t, with ``w = exp(q.k / sqrt(d_head))`` and ``A_t(i) = sum_{j <= i, tok_j = t}
  exp(-m (i - j))`` (m = 0 without position encoding: a prefix count). ``A`` obeys
  the recurrence ``A_t(i) = e^{-m} A_t(i-1) + [tok_i = t]``, a first-order linear
  filter (``scipy.signal.lfilter``). This is what makes 2^20 tokens affordable on a
  CPU for those two encodings.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import lfilter
from torch import nn

from icl_cmr.errors import InputError
from icl_cmr.synthetic.task import VOCAB_SIZE

#: Selectable position encodings.
POSITION_ENCODINGS = ("absolute", "rope", "alibi", "none")

#: Encodings whose first-layer queries, keys and values depend on the token id alone, so
#: ``last_logits(method="token_types")`` is exact and linear in time (module docstring).
TOKEN_TYPE_ENCODINGS = ("alibi", "none")

#: Rows of the beyond-training position table drawn per seeded block (see position_rows).
_EXTRA_POSITION_BLOCK = 4096


def fastest_exact_method(position_encoding: str) -> str:
    """The ``last_logits`` method for long inputs: ``"token_types"`` where it is exact, else ``"blocked"``."""
    return "token_types" if position_encoding in TOKEN_TYPE_ENCODINGS else "blocked"


@dataclass(frozen=True)
class TinyTransformerConfig:
    """Model hyper-parameters. Defaults: DESIGN.md section 7 / [GD23] section 4.1.2."""

    #: Token ids, trigger included: the induction task's vocabulary.
    vocab_size: int = VOCAB_SIZE
    #: 2 layers, 8 heads, d_model 64. DESIGN.md section 7 (course assignment after [GD23]).
    n_layers: int = 2
    n_heads: int = 8
    d_model: int = 64
    #: MLP width 4 x d_model, the GPT-2 convention ([GD23] does not state it).
    d_mlp: int = 256
    #: One of POSITION_ENCODINGS; "absolute" is the assignment's setting.
    position_encoding: str = "absolute"
    #: Rows of the learned position table = training length 2^8. [GD23].
    n_trained_positions: int = 256
    #: N(0, 0.02^2) initialisation of all weight matrices and embeddings (GPT-2).
    init_std: float = 0.02
    #: RoPE base (Su et al. 2021).
    rope_base: float = 10000.0
    #: Seed of the untrained position rows past n_trained_positions.
    extra_position_seed: int = 0

    def __post_init__(self) -> None:
        if self.position_encoding not in POSITION_ENCODINGS:
            raise InputError(f"position_encoding must be one of {POSITION_ENCODINGS}, "
                             f"got {self.position_encoding!r}")
        if self.d_model % self.n_heads:
            raise InputError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.position_encoding == "rope" and (self.d_model // self.n_heads) % 2:
            raise InputError("RoPE needs an even d_head")
        for name in ("vocab_size", "n_layers", "n_heads", "d_model", "d_mlp", "n_trained_positions"):
            if getattr(self, name) < 1:
                raise InputError(f"`{name}` must be >= 1, got {getattr(self, name)}", parameters=(name,))

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi slopes 2^(-8 (h+1) / H), h = 0..H-1 (Press et al. 2022, section 3). Shape [H]."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)], dtype=torch.float64)


# ----------------------------------------------------------------------------- attention kernels

def blocked_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             slopes: Optional[torch.Tensor] = None, block_size: int = 2048,
                             use_sdpa: bool = True) -> torch.Tensor:
    """Causal softmax attention with memory linear in length.

    Parameters
    ----------
    q, k, v : Tensor, shape [B, H, L, d_head]
        Queries, keys, values at positions 0..L-1 (RoPE already applied).
    slopes : Tensor, shape [H], optional
        ALiBi slopes; the score of query i on key j gets ``-slopes[h] * (i - j)``.
    block_size : int
        Query and key block length of our own kernel (memory ~ B H block^2).
    use_sdpa : bool
        Without ALiBi, call ``torch.nn.functional.scaled_dot_product_attention``
        (its CPU kernel tiles keys and queries itself). False forces our kernel.

    Returns
    -------
    Tensor, shape [B, H, L, d_head]
    """
    if slopes is None and use_sdpa:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    batch, heads, length, d_head = q.shape
    scale = 1.0 / math.sqrt(d_head)
    out = torch.empty_like(q)
    slope = None if slopes is None else slopes.to(device=q.device, dtype=q.dtype).view(1, heads, 1, 1)
    # Loops over blocks (not heads or batch): online softmax (Milakov & Gimelshein 2018)
    # keeps one [B, H, block, block] score tile alive at a time.
    for q_start in range(0, length, block_size):
        q_stop = min(length, q_start + block_size)
        q_block = q[:, :, q_start:q_stop] * scale
        q_pos = torch.arange(q_start, q_stop, device=q.device)
        running_max = torch.full((batch, heads, q_stop - q_start, 1), -math.inf, dtype=q.dtype, device=q.device)
        running_sum = torch.zeros_like(running_max)
        acc = torch.zeros_like(q_block)
        for k_start in range(0, q_stop, block_size):
            k_stop = min(q_stop, k_start + block_size)
            scores = q_block @ k[:, :, k_start:k_stop].transpose(-1, -2)
            distance = (q_pos[:, None] - torch.arange(k_start, k_stop, device=q.device)[None, :]).to(q.dtype)
            if slope is not None:
                scores = scores - slope * distance
            if k_stop > q_start:  # the diagonal tile: hide future keys
                scores = scores.masked_fill(distance < 0, -math.inf)
            new_max = torch.maximum(running_max, scores.amax(dim=-1, keepdim=True))
            weights = torch.exp(scores - new_max)
            correction = torch.exp(running_max - new_max)
            running_sum = running_sum * correction + weights.sum(dim=-1, keepdim=True)
            acc = acc * correction + weights @ v[:, :, k_start:k_stop]
            running_max = new_max
        out[:, :, q_start:q_stop] = acc / running_sum
    return out


def _rope_cos_sin(positions: torch.Tensor, d_head: int, base: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position x frequency, [n, d_head / 2], on ``positions``' device.

    Computed in float64 (2^20 * f loses ~0.06 rad in float32); on Apple MPS, which has no
    float64, on the CPU and then moved.
    """
    work = torch.device("cpu") if positions.device.type == "mps" else positions.device
    inv_freq = base ** (-torch.arange(0, d_head, 2, dtype=torch.float64, device=work) / d_head)
    angles = positions.to(device=work, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cos(angles).to(positions.device), torch.sin(angles).to(positions.device)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate pairs (x[..., f], x[..., f + d/2]) by angle position * base^(-2f/d) (GPT-NeoX layout).

    Parameters
    ----------
    x : Tensor, shape [B, H, n, d_head]
    positions : Tensor of int, shape [n]

    Returns
    -------
    Tensor, shape [B, H, n, d_head]
    """
    cos, sin = _rope_cos_sin(positions, x.shape[-1], base)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


# ----------------------------------------------------------------------------- model

class _Block(nn.Module):
    def __init__(self, config: TinyTransformerConfig):
        super().__init__()
        d = config.d_model
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp_in = nn.Linear(d, config.d_mlp)
        self.mlp_out = nn.Linear(config.d_mlp, d)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_out(F.gelu(self.mlp_in(self.ln2(x))))


class TinyTransformer(nn.Module):
    """Decoder-only Transformer with selectable position encoding (see module docstring)."""

    def __init__(self, config: TinyTransformerConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.embed = nn.Embedding(config.vocab_size, d)
        self.pos_embed = (nn.Embedding(config.n_trained_positions, d)
                          if config.position_encoding == "absolute" else None)
        self.blocks = nn.ModuleList([_Block(config) for _ in range(config.n_layers)])
        self.ln_final = nn.LayerNorm(d)
        self.unembed = nn.Linear(d, config.vocab_size)
        self.register_buffer("slopes", alibi_slopes(config.n_heads), persistent=False)
        self._extra_rows: Dict[Tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ pieces

    def position_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start..stop-1`` of the absolute position table, shape [stop - start, d_model].

        Rows below ``n_trained_positions`` are the trained parameters. Row r beyond
        is N(0, init_std^2), drawn in blocks of 4096 rows by a generator seeded with
        ``(extra_position_seed, block index)``: the same row whatever the length asked for,
        and on every device (drawn on the CPU, then moved to the model's device and dtype).
        """
        n_trained = self.config.n_trained_positions
        parts = []
        if start < n_trained:
            parts.append(self.pos_embed.weight[start:min(stop, n_trained)])
        if stop > n_trained:
            first = max(start, n_trained) - n_trained
            last = stop - n_trained
            for block in range(first // _EXTRA_POSITION_BLOCK, (last - 1) // _EXTRA_POSITION_BLOCK + 1):
                rows = self._extra_block(block)
                offset = block * _EXTRA_POSITION_BLOCK
                parts.append(rows[max(first, offset) - offset:min(last, offset + _EXTRA_POSITION_BLOCK) - offset])
        return torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]

    def _extra_block(self, block: int) -> torch.Tensor:
        weight = self.embed.weight
        key = (block, weight.device, weight.dtype)
        if key not in self._extra_rows:
            seed = int(np.random.SeedSequence([self.config.extra_position_seed, block]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(seed)
            rows = torch.randn(_EXTRA_POSITION_BLOCK, self.config.d_model, generator=generator)
            self._extra_rows[key] = (rows * self.config.init_std).to(device=weight.device, dtype=weight.dtype)
        return self._extra_rows[key]

    @property
    def device(self) -> torch.device:
        """Where the parameters live; every tensor the model creates is made there."""
        return self.embed.weight.device

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        if self.pos_embed is not None:
            x = x + self.position_rows(0, tokens.shape[1])[None]
        return x

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, _ = x.shape
        return x.view(batch, n, self.config.n_heads, self.config.d_head).transpose(1, 2)

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, n, _ = x.shape
        return x.transpose(1, 2).reshape(batch, n, self.config.d_model)

    def _qkv(self, block: _Block, x: torch.Tensor, positions: torch.Tensor
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values [B, H, n, d_head] of residual stream ``x`` [B, n, d] at ``positions``."""
        q, k, v = block.qkv(block.ln1(x)).split(self.config.d_model, dim=-1)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        if self.config.position_encoding == "rope":
            q = apply_rope(q, positions, self.config.rope_base)
            k = apply_rope(k, positions, self.config.rope_base)
        return q, k, v

    def _mlp_residual(self, block: _Block, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """x + MLP(x) in position chunks (the [B, L, d_mlp] hidden layer never exists whole)."""
        if x.shape[1] <= chunk:
            return x + block.mlp(x)
        return torch.cat([x[:, s:s + chunk] + block.mlp(x[:, s:s + chunk])
                          for s in range(0, x.shape[1], chunk)], dim=1)

    # ------------------------------------------------------------------ full reference

    def forward(self, tokens: torch.Tensor, return_patterns: bool = False):
        """Logits at every position, attention matrices materialised (the plain reference).

        Parameters
        ----------
        tokens : LongTensor, shape [B, L]
        return_patterns : bool
            Also return the attention probabilities.

        Returns
        -------
        logits : Tensor, shape [B, L, vocab]
        patterns : Tensor, shape [layer, B, H, L, L] (only with ``return_patterns``)
        """
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        x = self._embed(tokens)
        distance = (positions[:, None] - positions[None, :]).to(x.dtype)        # i - j
        bias = torch.zeros((self.config.n_heads, length, length), dtype=x.dtype, device=x.device)
        if self.config.position_encoding == "alibi":
            bias = -self.slopes.to(x.dtype)[:, None, None] * distance
        bias = bias.masked_fill(distance < 0, -math.inf)
        patterns = []
        for block in self.blocks:
            q, k, v = self._qkv(block, x, positions)
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.config.d_head) + bias
            probs = torch.softmax(scores, dim=-1)
            patterns.append(probs)
            x = x + block.out(self._merge_heads(probs @ v))
            x = x + block.mlp(x)
        logits = self.unembed(self.ln_final(x))
        if return_patterns:
            return logits, torch.stack(patterns)
        return logits

    @torch.no_grad()
    def attention_patterns(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention probabilities of every layer and head, shape [layer, B, H, L, L] (short inputs)."""
        return self.forward(tokens, return_patterns=True)[1]

    # ------------------------------------------------------------------ memory-linear paths

    def last_logits(self, tokens: torch.Tensor, method: str = "blocked", block_size: int = 2048,
                    mlp_chunk: int = 65536) -> torch.Tensor:
        """Logits at the last position only, memory linear in length.

        Parameters
        ----------
        tokens : LongTensor, shape [B, L]
        method : {"blocked", "token_types", "auto"}
            See the module docstring. ``"auto"`` picks ``"token_types"`` for ALiBi and
            no position encoding (no autograd) and ``"blocked"`` otherwise.
        block_size : int
            Block length of our own attention kernel (ALiBi, blocked method).
        mlp_chunk : int
            Positions per MLP chunk.

        Returns
        -------
        Tensor, shape [B, vocab]
        """
        encoding = self.config.position_encoding
        if method == "auto":
            method = fastest_exact_method(encoding)
        if method not in ("blocked", "token_types"):
            raise InputError(f"method must be 'blocked', 'token_types' or 'auto', got {method!r}")
        if method == "token_types" and encoding not in TOKEN_TYPE_ENCODINGS:
            raise InputError(f"method 'token_types' needs position_encoding 'alibi' or 'none', got {encoding!r}")
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        slopes = self.slopes if encoding == "alibi" else None
        blocks = list(self.blocks)
        if method == "token_types":
            x = self._first_layer_token_types(tokens)
            x = self._mlp_residual(blocks[0], x, mlp_chunk)
            blocks = blocks[1:]
        else:
            x = self._embed(tokens)
        for block in blocks[:-1]:
            q, k, v = self._qkv(block, x, positions)
            attn = blocked_causal_attention(q, k, v, slopes=slopes, block_size=block_size)
            del q, k, v
            x = x + block.out(self._merge_heads(attn))
            del attn
            x = self._mlp_residual(block, x, mlp_chunk)
        if not blocks:  # a 1-layer model on the token-type path
            return self.unembed(self.ln_final(x[:, -1]))
        return self._last_query_layer(blocks[-1], x, positions, slopes)

    def _last_query_layer(self, block: _Block, x: torch.Tensor, positions: torch.Tensor,
                          slopes: Optional[torch.Tensor]) -> torch.Tensor:
        """The last layer for the last query only; returns logits [B, vocab]."""
        _, k, v = self._qkv(block, x, positions)
        q, _, _ = self._qkv(block, x[:, -1:], positions[-1:])
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.config.d_head)       # [B, H, 1, L]
        if slopes is not None:
            distance = (positions[-1] - positions).to(x.dtype)
            scores = scores - slopes.to(x.dtype)[None, :, None, None] * distance
        attn = torch.softmax(scores, dim=-1) @ v
        last = x[:, -1:] + block.out(self._merge_heads(attn))
        last = last + block.mlp(last)
        return self.unembed(self.ln_final(last[:, 0]))

    @torch.no_grad()
    def _first_layer_token_types(self, tokens: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """Residual stream after the first attention layer via per-token-type sums, [B, L, d].

        Exact for ALiBi and no position encoding (module docstring); float64 inside.
        """
        config = self.config
        block = self.blocks[0]
        vocab, heads, d_head = config.vocab_size, config.n_heads, config.d_head
        table = self.embed.weight                                                 # [V, d]
        q, k, v = self._qkv(block, table[None], torch.arange(vocab, device=table.device))  # [1, H, V, dh]
        # The sums run in float64 numpy on the CPU (linear in length; moved back at the end).
        q, k, v = (t.detach().to(device="cpu", dtype=torch.float64) for t in (q, k, v))
        scores = (q[0] @ k[0].transpose(-1, -2) / math.sqrt(d_head)).numpy()      # [H, Vq, Vk]
        # exp(score - row max over all types): any per-row constant cancels in the softmax.
        type_weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        # Values with a column of ones: one matmul gives numerator and denominator.
        values = np.concatenate([v[0].numpy(), np.ones((heads, vocab, 1))], axis=-1)  # [H, V, dh+1]
        alibi = config.position_encoding == "alibi"
        decay = np.exp(-self.slopes.cpu().numpy()) if alibi else np.ones(heads)
        tokens_np = tokens.cpu().numpy()
        batch, length = tokens_np.shape
        out = np.empty((batch, length, heads, d_head))
        # Loops over sequences, position chunks and heads (each head has its own decay); the
        # work inside is vectorized over positions and token types.
        for b in range(batch):
            carry = np.zeros((heads, vocab))                                      # A[h, t] before the chunk
            for start in range(0, length, chunk):
                ids = tokens_np[b, start:start + chunk]
                onehot = np.zeros((ids.size, vocab))
                onehot[np.arange(ids.size), ids] = 1.0
                counts = None if alibi else np.cumsum(onehot, axis=0)             # same for every head
                for h in range(heads):
                    if alibi:   # A_t(i) = decay A_t(i-1) + [tok_i = t], carried across chunks
                        strength = lfilter([1.0], [1.0, -decay[h]], onehot, axis=0,
                                           zi=(decay[h] * carry[h])[None, :])[0]
                    else:
                        strength = counts + carry[h]
                    carry[h] = strength[-1]
                    weighted = type_weights[h][ids] * strength                    # [n, V]
                    summed = weighted @ values[h]                                 # [n, dh + 1]
                    underflow = ~(summed[:, -1] > 0)
                    if underflow.any():  # huge score gaps: take the max over present types only
                        present = strength[underflow] > 0                         # own type always is
                        logits = np.where(present, scores[h][ids[underflow]], -np.inf)
                        exact = np.exp(logits - logits.max(axis=-1, keepdims=True)) * strength[underflow]
                        summed[underflow] = exact @ values[h]
                    out[b, start:start + ids.size, h] = summed[:, :-1] / summed[:, -1:]
        attn_out = torch.from_numpy(out).to(device=table.device, dtype=table.dtype).reshape(batch, length,
                                                                                          config.d_model)
        return self.embed(tokens) + block.out(attn_out)
