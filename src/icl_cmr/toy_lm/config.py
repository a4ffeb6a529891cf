"""Every hyper-parameter of the bundled toy language model, in one dataclass (DESIGN.md section 9).

:class:`ToyLMConfig` is what the corpus split, the tokenizer, the model, the training loop and the
scores read; :func:`config_from_saved` rebuilds it from a saved ``training_log.json``'s parameters.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

from icl_cmr.errors import InputError


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
            raise InputError(f"`held_out_percent` must be in 1..99, got {self.held_out_percent}",
                             parameters=("held_out_percent",))
        if self.vocab_size < 258:
            raise InputError(f"`vocab_size` must be >= 258 (256 bytes + special token + 1 merge), got {self.vocab_size}",
                             parameters=("vocab_size",))
        if self.d_model % self.n_head:
            raise InputError(f"`d_model` ({self.d_model}) must be divisible by `n_head` ({self.n_head})",
                             parameters=("d_model", "n_head"))
        if not 1 <= self.copy_span_min <= self.copy_span_max:
            raise InputError(f"need 1 <= `copy_span_min` <= `copy_span_max`, got {self.copy_span_min}, "
                             f"{self.copy_span_max}", parameters=("copy_span_min", "copy_span_max"))
        if 2 * self.copy_span_max >= self.n_ctx:
            raise InputError(f"`copy_span_max` ({self.copy_span_max}) must be below `n_ctx` / 2 ({self.n_ctx / 2})",
                             parameters=("copy_span_max", "n_ctx"))
        if not 0.0 <= self.copy_row_fraction <= 1.0:
            raise InputError(f"`copy_row_fraction` must be in [0, 1], got {self.copy_row_fraction}",
                             parameters=("copy_row_fraction",))
        if 2 * self.monitor_block_len + 1 > self.n_ctx:
            raise InputError(f"`monitor_block_len` ({self.monitor_block_len}) needs 2n + 1 <= `n_ctx` ({self.n_ctx})",
                             parameters=("monitor_block_len", "n_ctx"))
        if not 0 <= self.icl_early_index < self.icl_late_index <= self.n_ctx - 2:
            raise InputError(f"need 0 <= `icl_early_index` < `icl_late_index` <= `n_ctx` - 2, got "
                             f"{self.icl_early_index}, {self.icl_late_index}",
                             parameters=("icl_early_index", "icl_late_index", "n_ctx"))

    def to_dict(self) -> Dict[str, object]:
        """Plain dict of all fields (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def smallest_n_ctx(self) -> int:
        """The shortest context these settings allow: a training row carries a copied span of up to
        ``copy_span_max`` tokens twice, a monitor prompt is BOS + 2 x ``monitor_block_len`` tokens, and the
        ICL score reads a loss after ``icl_early_index`` (the checks of ``__post_init__``)."""
        return max(2 * self.copy_span_max + 1, 2 * self.monitor_block_len + 1, self.icl_early_index + 3)


def config_from_saved(parameters: Mapping[str, object]) -> ToyLMConfig:
    """The :class:`ToyLMConfig` of a trained model, from the ``parameters`` its ``training_log.json`` records.

    Keys that are no field (added by other code) are ignored, fields the log lacks take today's
    defaults, and ``adam_betas`` comes back from JSON as a list, so it is made a tuple again.

    Parameters
    ----------
    parameters : mapping
        ``metadata["parameters"]`` of the saved log (:meth:`ToyLMConfig.to_dict` at training time).

    Returns
    -------
    ToyLMConfig
    """
    fields = {field.name for field in dataclasses.fields(ToyLMConfig)}
    values = {key: value for key, value in parameters.items() if key in fields}
    values["adam_betas"] = tuple(values.get("adam_betas", ToyLMConfig.adam_betas))
    return ToyLMConfig(**values)
