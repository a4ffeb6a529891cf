"""The synthetic induction-heads task of [GD23] (Mamba, section 4.1.2, App. E.1); DESIGN.md section 7.

A sequence of ``length`` tokens from a vocabulary of 16 in which one id is reserved
as the *trigger*. Every other position holds a uniformly random non-trigger token.
The trigger appears exactly twice: once at a uniform position ``p`` in
``[0, length - 3]``, followed by the *value* at ``p + 1``, and once at the last
position ``length - 1``. The model must output the value at the last position;
loss and accuracy are taken there only.

This module holds the task's defaults (:class:`InductionTaskConfig`), the seeded
generator (:func:`sample_induction_batch`), the fixed validation sets
(:func:`validation_set`), accuracy on them (:func:`evaluate_accuracy`), the lag
statistics of attention used to show the induction mechanism
(:func:`lag_attention`), and the plots of the results
(``plot_*``; drawing only, no computing).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from icl_cmr.config import ATTN_CRP_LAGS
from icl_cmr.errors import InputError

#: [GD23] Table 11 ("Induction heads, attention models trained at 2^8"), the MHA-Abs
#: row: test accuracy (%) at lengths 2^6 .. 2^14; out of memory beyond 2^14 on their
#: 80 GB GPU. DESIGN.md section 7.
GD23_MHA_ABS_ACCURACY: Dict[int, float] = {
    2 ** 6: 100.0, 2 ** 7: 99.6, 2 ** 8: 100.0, 2 ** 9: 58.6, 2 ** 10: 26.6,
    2 ** 11: 18.8, 2 ** 12: 9.8, 2 ** 13: 10.9, 2 ** 14: 7.8,
}
#: The same table's Mamba row (2 layers, 74K parameters, trained at 2^8): 100% at every
#: length 2^6 .. 2^20. DESIGN.md section 7.
GD23_MAMBA_ACCURACY: Dict[int, float] = {2 ** k: 100.0 for k in range(6, 21)}
#: [GD23] rows drawn beside ours by default: label -> {length: accuracy %}.
GD23_REFERENCE_ROWS: Dict[str, Dict[int, float]] = {
    "[GD23] MHA-Abs (Table 11)": GD23_MHA_ABS_ACCURACY,
    "[GD23] Mamba (Table 11)": GD23_MAMBA_ACCURACY,
}


#: Vocabulary size, trigger included. [GD23] App. E.1; DESIGN.md section 7.
VOCAB_SIZE = 16
#: The reserved trigger id. Our choice (the last id); any id works.
TRIGGER_TOKEN = VOCAB_SIZE - 1
#: Sequences per forward pass of :func:`evaluate_accuracy` (training's validation): a batch that fits any
#: machine at the training length.
VALIDATION_BATCH_SIZE = 64


@dataclass(frozen=True)
class InductionTaskConfig:
    """Defaults of the task, its training and its evaluation.

    The model's own defaults (2 layers, 8 heads, d_model 64) live in
    :class:`icl_cmr.synthetic.transformer.TinyTransformerConfig`.
    """

    vocab_size: int = VOCAB_SIZE
    trigger_token: int = TRIGGER_TOKEN
    #: Training sequence length, 2^8. [GD23] section 4.1.2.
    train_length: int = 256
    #: Batch size. DESIGN.md section 7 (the course assignment).
    batch_size: int = 8
    #: Adam with a constant learning rate; DESIGN.md section 7 offers 2e-4 or 1e-3.
    #: We use 1e-3: it forms the induction circuit in fewer steps on a CPU.
    learning_rate: float = 1e-3
    #: Stop once validation accuracy at ``train_length`` reaches this (issue 7).
    target_accuracy: float = 0.99
    #: Step budget when the target is not reached. Our choice.
    max_steps: int = 30000
    #: Validate (and checkpoint) every this many steps. Our choice.
    eval_every: int = 250
    #: Sequences in the validation set used for the stopping rule. Our choice:
    #: at 99% accuracy the Wilson 95% interval of 512 sequences is about +-1%.
    n_val_sequences: int = 512
    #: Seeds of the training stream and of the fixed validation sets (distinct
    #: streams, so no validation sequence is ever a training sequence by construction).
    train_seed: int = 0
    val_seed: int = 1_000_003
    #: Test lengths 2^6 .. 2^20. [GD23] Table 11 / Fig. 4; DESIGN.md section 7.
    test_lengths: Tuple[int, ...] = field(default_factory=lambda: tuple(2 ** k for k in range(6, 21)))

    def to_dict(self) -> dict:
        """Plain-dict form for metadata."""
        return asdict(self)


# ----------------------------------------------------------------------------- data

def _check_task_arguments(length: int, vocab_size: int, trigger_token: int) -> None:
    if length < 3:
        raise InputError(f"length must be >= 3 (trigger, value, final trigger), got {length}")
    if vocab_size < 3:
        raise InputError(f"vocab_size must be >= 3, got {vocab_size}")
    if not 0 <= trigger_token < vocab_size:
        raise InputError(f"trigger_token must be in [0, {vocab_size - 1}], got {trigger_token}")


def sample_induction_batch(rng: np.random.Generator, batch_size: int, length: int,
                           vocab_size: int = VOCAB_SIZE, trigger_token: int = TRIGGER_TOKEN,
                           ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a batch of induction-task sequences.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (advanced by the call).
    batch_size : int
        Number of sequences B.
    length : int
        Sequence length L >= 3.
    vocab_size : int
        Vocabulary size V, trigger included.
    trigger_token : int
        The reserved trigger id in ``[0, V)``.

    Returns
    -------
    tokens : ndarray of int64, shape [B, L]
        Non-trigger tokens everywhere except at ``trigger_positions`` and ``L - 1``.
    targets : ndarray of int64, shape [B]
        The value to recall: ``tokens[b, trigger_positions[b] + 1]``.
    trigger_positions : ndarray of int64, shape [B]
        Position p of the first trigger, uniform in ``[0, L - 3]``.
    """
    _check_task_arguments(length, vocab_size, trigger_token)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    # Uniform over the V - 1 non-trigger ids: draw in [0, V - 1) and skip the trigger id.
    tokens = rng.integers(0, vocab_size - 1, size=(batch_size, length), dtype=np.int64)
    tokens += tokens >= trigger_token
    trigger_positions = rng.integers(0, length - 2, size=batch_size, dtype=np.int64)  # [0, L-3]
    rows = np.arange(batch_size)
    tokens[rows, trigger_positions] = trigger_token
    tokens[:, -1] = trigger_token
    targets = tokens[rows, trigger_positions + 1].copy()
    return tokens, targets, trigger_positions


def validation_sequence(length: int, index: int, seed: int, vocab_size: int = VOCAB_SIZE,
                        trigger_token: int = TRIGGER_TOKEN) -> Tuple[np.ndarray, int, int]:
    """Sequence ``index`` of the fixed validation set at ``length``.

    Each sequence has its own seed ``(seed, length, index)``, so the set at a length
    is the same whatever the batch size, and asking for more sequences only appends.

    Returns
    -------
    tokens : ndarray of int64, shape [L]
    target : int
    trigger_position : int
    """
    rng = np.random.default_rng([seed, length, index])
    tokens, targets, positions = sample_induction_batch(rng, 1, length, vocab_size, trigger_token)
    return tokens[0], int(targets[0]), int(positions[0])


def validation_set(length: int, n_sequences: int, seed: int, vocab_size: int = VOCAB_SIZE,
                   trigger_token: int = TRIGGER_TOKEN, start: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequences ``start .. start + n_sequences - 1`` of the fixed validation set at ``length``.

    Returns
    -------
    tokens : ndarray of int64, shape [n_sequences, L]
    targets : ndarray of int64, shape [n_sequences]
    trigger_positions : ndarray of int64, shape [n_sequences]
    """
    if n_sequences < 1:
        raise InputError(f"n_sequences must be >= 1, got {n_sequences}")
    # One generator per sequence (see validation_sequence); a loop over sequences is the
    # price of that prefix property and costs microseconds next to the model.
    items = [validation_sequence(length, start + i, seed, vocab_size, trigger_token)
             for i in range(n_sequences)]
    tokens = np.stack([item[0] for item in items])
    targets = np.array([item[1] for item in items], dtype=np.int64)
    positions = np.array([item[2] for item in items], dtype=np.int64)
    return tokens, targets, positions


def iter_validation_batches(length: int, n_sequences: int, batch_size: int, seed: int,
                            vocab_size: int = VOCAB_SIZE, trigger_token: int = TRIGGER_TOKEN,
                            ) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(tokens [b, L], targets [b], trigger_positions [b])`` batches covering the validation set in order
    (:func:`validation_set` of each slice)."""
    for start in range(0, n_sequences, batch_size):
        count = min(batch_size, n_sequences - start)
        yield validation_set(length, count, seed, vocab_size, trigger_token, start=start)


# ----------------------------------------------------------------------------- statistics

def lag_attention(patterns: np.ndarray, query_positions: np.ndarray, earlier_positions: np.ndarray,
                  lags: Sequence[int] = tuple(ATTN_CRP_LAGS), key_stop: Optional[np.ndarray] = None,
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attention by lag relative to the earlier occurrence of the query's token (DESIGN.md section 2).

    For a query at position i whose token occurred earlier at position j, lag k is
    the key position ``j + k``; lag +1 is the token that followed the earlier
    occurrence, the one an induction head attends to. Keys outside
    ``[0, key_stop)`` do not count (NaN for that query and lag), so the statistics
    use only the queries for which the lag exists.

    Parameters
    ----------
    patterns : ndarray, shape [layer, batch, head, query, key]
        Attention probabilities (or pre-softmax scores).
    query_positions : ndarray of int, shape [batch, n_queries]
        Query positions i per prompt.
    earlier_positions : ndarray of int, shape [batch, n_queries]
        Position j of the earlier occurrence of the token at i.
    lags : sequence of int
        Lags k (default -8..+7, the authors' ``CRP_scores`` range).
    key_stop : ndarray of int, shape [batch, n_queries], optional
        Only keys before this position count (e.g. the end of the first repeat).
        Default: the query position itself (causal).

    Returns
    -------
    mean : ndarray, shape [layer, head, n_lags]
        Mean over prompts and queries.
    sem : ndarray, shape [layer, head, n_lags]
        Standard error of that mean across queries (ddof 1; NaN with < 2 queries).
    count : ndarray of int, shape [n_lags]
        Queries that have each lag.
    """
    patterns = np.asarray(patterns)
    if patterns.ndim != 5:
        raise InputError(f"patterns must be [layer, batch, head, query, key], got shape {patterns.shape}")
    query_positions = np.asarray(query_positions)
    earlier_positions = np.asarray(earlier_positions)
    if query_positions.shape != earlier_positions.shape or query_positions.ndim != 2:
        raise InputError("query_positions and earlier_positions must both be [batch, n_queries]")
    if query_positions.shape[0] != patterns.shape[1]:
        raise InputError(f"{query_positions.shape[0]} prompts of positions for {patterns.shape[1]} patterns")
    stop = query_positions + 1 if key_stop is None else np.asarray(key_stop)
    lags = np.asarray(lags, dtype=np.int64)
    keys = earlier_positions[..., None] + lags                                  # [batch, q, lag]
    valid = (keys >= 0) & (keys < stop[..., None]) & (keys < patterns.shape[-1])
    safe_keys = np.where(valid, keys, 0)
    batch_index = np.arange(patterns.shape[1])[:, None, None]
    query_index = np.broadcast_to(query_positions[..., None], keys.shape)
    by_position = np.moveaxis(patterns, (1, 3, 4), (0, 1, 2))                   # [batch, query, key, layer, head]
    picked = by_position[batch_index, query_index, safe_keys]                    # [batch, q, lag, layer, head]
    picked = picked.transpose(3, 4, 0, 1, 2)                                     # [layer, head, batch, q, lag]
    picked = np.where(valid, picked, np.nan).reshape(patterns.shape[0], patterns.shape[2], -1, len(lags))
    count = valid.reshape(-1, len(lags)).sum(axis=0)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # lags no query has: NaN by design
        mean = np.nanmean(picked, axis=2)
        sem = np.nanstd(picked, axis=2, ddof=1) / np.sqrt(count)
    sem = np.where(count >= 2, sem, np.nan)
    return mean, sem, count


def repeated_block_prompts(rng: np.random.Generator, n_prompts: int, block_length: int,
                           vocab_size: int = VOCAB_SIZE, trigger_token: int = TRIGGER_TOKEN,
                           ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Repeated random blocks of distinct non-trigger tokens (DESIGN.md section 2, no BOS).

    With 15 non-trigger ids a block holds at most 15 distinct tokens.

    Returns
    -------
    tokens : ndarray of int64, shape [n_prompts, 2 * block_length]
    query_positions : ndarray of int64, shape [n_prompts, block_length]
        The second repeat.
    earlier_positions : ndarray of int64, shape [n_prompts, block_length]
        The same token's position in the first repeat (``query - block_length``).
    """
    if not 1 <= block_length <= vocab_size - 1:
        raise InputError(f"block_length must be in [1, {vocab_size - 1}] (distinct non-trigger ids), "
                         f"got {block_length}")
    values = np.array([t for t in range(vocab_size) if t != trigger_token], dtype=np.int64)
    blocks = np.stack([rng.permutation(values)[:block_length] for _ in range(n_prompts)])
    tokens = np.concatenate([blocks, blocks], axis=1)
    queries = np.broadcast_to(np.arange(block_length, 2 * block_length), (n_prompts, block_length)).copy()
    return tokens, queries, queries - block_length


# ----------------------------------------------------------------------------- plots

def plot_accuracy_vs_length(results: "Dict[str, Dict[str, np.ndarray]]", train_length: int = 256,
                            reference: Optional[Dict[str, Dict[int, float]]] = None, ax=None,
                            title: Optional[str] = None):
    """Accuracy with Wilson intervals against log2 length, one line per model.

    Parameters
    ----------
    results : dict
        ``{model name: {"length": [n], "accuracy": [n], "low": [n], "high": [n]}}``.
    train_length : int
        Drawn as a vertical mark.
    reference : dict, optional
        ``{label: {length: accuracy %}}``, drawn as dashed reference lines (default:
        :data:`GD23_REFERENCE_ROWS`, [GD23]'s MHA-Abs and Mamba rows, trained at 2^8).
    title : str, optional
        Figure title (default names the task).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    reference = GD23_REFERENCE_ROWS if reference is None else reference
    if ax is None:
        fig, ax = plt.subplots(figsize=(8.0, 4.0))
    else:
        fig = ax.figure
    for name, res in results.items():
        x = np.log2(np.asarray(res["length"], dtype=float))
        acc = 100 * np.asarray(res["accuracy"], dtype=float)
        err = np.vstack([acc - 100 * np.asarray(res["low"]), 100 * np.asarray(res["high"]) - acc])
        ax.errorbar(x, acc, yerr=err, marker="o", ms=3.5, capsize=2.5, lw=1.3, label=f"ours, {name}")
    for (label, row), style in zip(reference.items(), ("k--", "k:", "k-.")):
        lengths = sorted(row)
        ax.plot(np.log2(np.array(lengths, dtype=float)), [row[k] for k in lengths], style, marker="x", lw=1.0,
                label=label)
    ax.axvline(np.log2(train_length), color="grey", lw=0.8, ls=":")
    ax.text(np.log2(train_length) + 0.1, 50, f"train length {train_length}", rotation=90,
            va="center", fontsize=8, color="grey")
    ax.set_xlabel("log2 sequence length")
    ax.set_ylabel("accuracy at last position (%)")
    ax.set_ylim(-3, 103)
    n_values = VOCAB_SIZE - 1   # chance: a uniform guess among the non-trigger ids
    ax.axhline(100 / n_values, color="grey", lw=0.6, ls="-.")
    ax.text(ax.get_xlim()[1], 100 / n_values + 1.5, f"chance 1/{n_values}", ha="right", fontsize=7, color="grey")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # outside: no data hidden
    ax.set_title(title or "Induction-heads task: length generalization (2 layers, d_model 64)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_training_curves(curves: "Dict[str, Dict[str, np.ndarray]]", target_accuracy: float = 0.99,
                         train_length: int = 256):
    """Training loss and validation accuracy at the training length against step.

    Parameters
    ----------
    curves : dict
        ``{encoding: {"step": [n], "train_loss": [n], "val_accuracy": [n]}}``, optionally with
        ``"length": [n]``, the training length at each evaluation (a curriculum); its stage
        changes are marked and the accuracy is at that length.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, curve in curves.items():
        ax_loss.plot(curve["step"], curve["train_loss"], lw=1.0, label=name)
        line, = ax_acc.plot(curve["step"], 100 * np.asarray(curve["val_accuracy"]), lw=1.0, label=name)
        lengths = np.asarray(curve.get("length", []))
        for index in np.flatnonzero(lengths[1:] != lengths[:-1]) + 1:   # curriculum stage starts
            step = curve["step"][index - 1]
            for ax in (ax_loss, ax_acc):
                ax.axvline(step, color=line.get_color(), lw=0.6, ls="--", alpha=0.6)
            # x in data, y in axes coordinates: the label stays inside whatever the accuracy range.
            ax_acc.text(step, 0.02, f" L={int(lengths[index])}", fontsize=6, color=line.get_color(), rotation=90,
                        transform=ax_acc.get_xaxis_transform(),
                        va="bottom")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("train loss (mean since last eval)")
    ax_loss.set_yscale("log")
    n_values = VOCAB_SIZE - 1   # chance: uniform over the non-trigger ids
    ax_loss.axhline(np.log(n_values), color="grey", lw=0.8, ls=":")
    ax_loss.text(ax_loss.get_xlim()[0], np.log(n_values), f" chance: ln {n_values}", va="bottom", fontsize=7,
                 color="grey")
    ax_acc.axhline(100 * target_accuracy, color="grey", lw=0.8, ls=":")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel(f"validation accuracy (%), at {train_length}\nor the curriculum stage's length")
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_lag_crp_panels(stats: "Dict[str, dict]", encoding: str, layer: int = 1):
    """Attention by lag of every head of one layer, one panel per prompt kind.

    Parameters
    ----------
    stats : dict
        ``{kind: {"lags": [n_lags], "mean": [layer, head, n_lags], "sem": same}}`` from
        :func:`lag_attention`; kinds drawn in the dict's order.
    encoding : str
        For the title.
    layer : int
        0-based layer to draw (1 = the second layer).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    titles = {"task": "task prompts: query = final trigger,\nlag 0 = first trigger, +1 = the value",
              "repeated": "15 distinct tokens repeated: queries in\nthe 2nd repeat, keys in the 1st"}
    fig, axes = plt.subplots(1, len(stats), figsize=(4.6 * len(stats), 3.6), squeeze=False)
    for ax, (kind, res) in zip(axes[0], stats.items()):
        lags = np.asarray(res["lags"])
        mean, sem = np.asarray(res["mean"]), np.asarray(res["sem"])
        for head in range(mean.shape[1]):
            ax.errorbar(lags, mean[layer, head], yerr=np.nan_to_num(sem[layer, head]), marker="o", ms=3,
                        lw=1.0, capsize=2, label=f"L{layer}H{head}")
        ax.axvline(1, color="grey", lw=0.6, ls=":")
        ax.set_xlabel("lag (key position - earlier occurrence)")
        ax.set_ylabel("attention probability")
        ax.set_title(titles.get(kind, kind), fontsize=8)
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{encoding} model, layer {layer} (0-based): attention by lag", fontsize=9)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_distance(scores: "Dict[int, Dict[str, np.ndarray]]", name: str, n_bins: int = 6):
    """Probability of the value against recall distance, one panel per sequence length.

    Parameters
    ----------
    scores : dict
        ``{length: score_by_distance(...) result}``.
    name : str
        The model's name, for the title.
    n_bins : int
        Equal-width bins of log2 distance for the binned accuracy (Wilson 95% intervals).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from icl_cmr.stats import wilson_interval

    fig, axes = plt.subplots(1, len(scores), figsize=(4.6 * len(scores), 3.6), squeeze=False)
    for ax, (length, res) in zip(axes[0], scores.items()):
        distance = np.asarray(res["distance"], dtype=float)
        correct = np.asarray(res["correct"], dtype=bool)
        p_value = np.asarray(res["p_value"], dtype=float)
        ax.scatter(distance[correct], 100 * p_value[correct], s=12, color="tab:blue", alpha=0.7,
                   label=f"correct ({correct.sum()})")
        ax.scatter(distance[~correct], 100 * p_value[~correct], s=14, color="tab:red", marker="x",
                   label=f"wrong ({(~correct).sum()})")
        edges = np.linspace(1.0, np.log2(length), n_bins + 1)
        which = np.clip(np.digitize(np.log2(distance), edges) - 1, 0, n_bins - 1)
        centres, accuracy, low, high = [], [], [], []
        for b in range(n_bins):
            members = which == b
            if members.any():
                lo, hi = wilson_interval(int(correct[members].sum()), int(members.sum()))
                centres.append(2 ** ((edges[b] + edges[b + 1]) / 2))
                accuracy.append(100 * correct[members].mean())
                low.append(100 * lo)
                high.append(100 * hi)
        accuracy = np.asarray(accuracy)
        ax.errorbar(centres, accuracy, yerr=[accuracy - np.asarray(low), np.asarray(high) - accuracy], color="k",
                    marker="s", ms=4, lw=1.0, capsize=2.5, label="accuracy per bin (Wilson 95%)")
        ax.set_xscale("log", base=2)
        ax.set_ylim(-3, 103)
        ax.axhline(100 / (VOCAB_SIZE - 1), color="grey", lw=0.6, ls="-.")
        ax.set_xlabel("distance from the first trigger to the query (tokens)")
        ax.set_ylabel("p(value) at the query (%); accuracy (%)")
        ax.set_title(f"length {length} (2^{int(np.log2(length))}), {len(distance)} sequences", fontsize=8)
        ax.legend(fontsize=6, loc="lower left")
    fig.suptitle(f"{name}: recall against distance", fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- training and evaluation

def _device_of(model):
    return next(model.parameters()).device


def _autocast(device, dtype):
    """bfloat16 autocast on ``device`` (weights and optimiser stay float32); a no-op for float32."""
    import torch

    enabled = dtype is not None and dtype != torch.float32
    return torch.autocast(device_type=device.type, dtype=dtype if enabled else torch.bfloat16, enabled=enabled)


def training_step(model, optimizer, rng: np.random.Generator, batch_size: int, length: int,
                  vocab_size: int = VOCAB_SIZE, trigger_token: int = TRIGGER_TOKEN,
                  compute_dtype=None) -> Tuple[float, float]:
    """One Adam step on a fresh batch; loss and accuracy at the last position only.

    Parameters
    ----------
    model : TinyTransformer or InductionMamba
        Anything with ``last_logits(tokens [B, L]) -> [B, vocab]``; the batch is moved to its device.
    optimizer : torch.optim.Optimizer
    rng : numpy.random.Generator
        The training stream (advanced by one batch; drawn on the CPU, so the same on every device).
    compute_dtype : torch.dtype, optional
        ``torch.bfloat16`` runs the forward pass under autocast; default float32.

    Returns
    -------
    loss : float
        Mean cross-entropy at the last position.
    accuracy : float
        Fraction of the batch whose argmax at the last position is the value.
    """
    import torch
    import torch.nn.functional as F

    device = _device_of(model)
    tokens, targets, _ = sample_induction_batch(rng, batch_size, length, vocab_size, trigger_token)
    targets_t = torch.from_numpy(targets).to(device)
    with _autocast(device, compute_dtype):
        logits = model.last_logits(torch.from_numpy(tokens).to(device))
    loss = F.cross_entropy(logits.float(), targets_t)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    accuracy = (logits.argmax(dim=-1) == targets_t).float().mean()
    return float(loss.detach()), float(accuracy)


def iter_validation_scores(model, length: int, n_sequences: int, seed: int, batch_size: int,
                           method: str = "auto", vocab_size: int = VOCAB_SIZE, trigger_token: int = TRIGGER_TOKEN,
                           compute_dtype=None) -> Iterator[Tuple[int, int, float, float]]:
    """Score the fixed validation set at ``length`` batch by batch, in order.

    Parameters
    ----------
    model : TinyTransformer or InductionMamba
        Batches are moved to its device.
    length, n_sequences, seed : int
        Which validation set (see :func:`validation_set`) and how much of it.
    batch_size : int
        Sequences per forward pass.
    method : str
        Passed to ``model.last_logits``.
    compute_dtype : torch.dtype, optional
        ``torch.bfloat16``: autocast (for a float32 model); default: the model's own dtype.

    Yields
    ------
    (n_sequences, n_correct, wall_seconds, cpu_seconds) : tuple
        One batch: its size, the sequences answered correctly at the last position,
        and the forward pass's wall and CPU time (wall time includes waiting for the GPU).
    """
    import time

    import torch

    device = _device_of(model)
    for tokens, targets, _ in iter_validation_batches(length, n_sequences, batch_size, seed, vocab_size,
                                                      trigger_token):
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad(), _autocast(device, compute_dtype):
            logits = model.last_logits(torch.from_numpy(tokens).to(device), method=method)
        predicted = logits.argmax(dim=-1).cpu().numpy()         # waits for the device
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        yield len(targets), int((predicted == targets).sum()), wall, cpu


def score_by_distance(model, length: int, n_sequences: int, seed: int, batch_size: int = 1,
                      method: str = "auto", vocab_size: int = VOCAB_SIZE, trigger_token: int = TRIGGER_TOKEN,
                      ) -> Dict[str, np.ndarray]:
    """Per-sequence answers on the fixed validation set at ``length``, with the recall distance.

    The distance is how far back the model must look: from the query (the final
    trigger, position L - 1) to the first trigger p, ``L - 1 - p`` in ``[2, L - 1]``
    (uniform, since p is). Used to see whether errors grow with distance (a memory
    that fades) or not (interference from the filler).

    Parameters
    ----------
    model : TinyTransformer or InductionMamba
    length, n_sequences, seed : int
        Which validation set (see :func:`validation_set`) and how much of it.
    batch_size : int
        Sequences per forward pass.
    method : str
        Passed to ``model.last_logits``.

    Returns
    -------
    dict of ndarray, each shape [n_sequences]
        ``distance`` (int), ``correct`` (bool), ``p_value`` (softmax probability of the
        value), ``predicted`` (int, argmax), ``target`` (int).
    """
    import torch

    device = _device_of(model)
    columns: Dict[str, list] = {"distance": [], "correct": [], "p_value": [], "predicted": [], "target": []}
    for tokens, targets, positions in iter_validation_batches(length, n_sequences, batch_size, seed, vocab_size,
                                                              trigger_token):
        with torch.no_grad():
            logits = model.last_logits(torch.from_numpy(tokens).to(device), method=method).float().cpu()
        probs = torch.softmax(logits, dim=-1).numpy()
        predicted = probs.argmax(axis=-1)
        columns["distance"].append(length - 1 - positions)
        columns["correct"].append(predicted == targets)
        columns["p_value"].append(probs[np.arange(len(targets)), targets])
        columns["predicted"].append(predicted)
        columns["target"].append(targets)
    return {key: np.concatenate(values) for key, values in columns.items()}


def evaluate_accuracy(model, length: int, n_sequences: int, seed: int, batch_size: int = VALIDATION_BATCH_SIZE,
                      method: str = "auto", vocab_size: int = VOCAB_SIZE, trigger_token: int = TRIGGER_TOKEN,
                      progress: bool = False, compute_dtype=None) -> Tuple[int, np.ndarray]:
    """Accuracy at the last position on the fixed validation set at ``length``.

    Parameters
    ----------
    model : TinyTransformer or InductionMamba
    length, n_sequences, seed : int
        Which validation set (see :func:`validation_set`) and how much of it.
    batch_size : int
        Sequences per forward pass.
    method : str
        Passed to ``model.last_logits``.
    compute_dtype : torch.dtype, optional
        As :func:`iter_validation_scores`.

    Returns
    -------
    correct : int
        Sequences answered correctly.
    seconds : ndarray, shape [n_batches]
        Wall time of each forward pass (divide by its batch size for per-sequence time).
    """
    from tqdm.auto import tqdm

    scores = iter_validation_scores(model, length, n_sequences, seed, batch_size, method, vocab_size, trigger_token,
                                    compute_dtype)
    correct, seconds = 0, []
    for _, batch_correct, wall, _ in tqdm(scores, total=-(-n_sequences // batch_size), disable=not progress,
                                          desc=f"L={length}", leave=False):
        correct += batch_correct
        seconds.append(wall)
    return correct, np.asarray(seconds)
