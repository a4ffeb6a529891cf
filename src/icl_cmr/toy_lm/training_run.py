"""The toy model's training run as ``train_toy_lm.py`` makes it: settings in, corpus, tokenizer and model out.

:class:`ToyLMTrainingSettings` holds what the script's flags set, with the same names and
defaults, so ``ToyLMTrainingSettings()`` is the shipped model's run (DESIGN.md section 9). A run has
two steps, so that a caller can keep the tokenizer before the long training starts:
:func:`prepare_training_corpus` (split, checks, tokenizer, token stream, frequent ids) and
:func:`train_on_corpus` (the training loop). The caller saves the model and evaluates the saved
folder (:func:`icl_cmr.toy_lm.evaluation.evaluate_model_dir`).

Examples
--------
>>> settings = ToyLMTrainingSettings(max_steps=20, stdlib_dir="/tmp/small_stdlib")   # doctest: +SKIP
>>> config = settings.config()                                                        # doctest: +SKIP
>>> corpus = prepare_training_corpus(settings, config)                                # doctest: +SKIP
>>> result = train_on_corpus(settings, config, corpus, show_progress=False)           # doctest: +SKIP
>>> result.model.save_pretrained("/tmp/toy"); corpus.tokenizer.save_pretrained("/tmp/toy")  # doctest: +SKIP
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from icl_cmr.devices import check_worker_count
from icl_cmr.errors import InputError
from icl_cmr.toy_lm.config import ToyLMConfig
from icl_cmr.toy_lm.corpus import corpus_fingerprint, corpus_split, read_texts, stdlib_dir
from icl_cmr.toy_lm.tokenizer import SPECIAL_TOKEN, frequent_token_ids, tokenize_documents, train_tokenizer
from icl_cmr.toy_lm.training import TrainingResult, train

logger = logging.getLogger(__name__)

_DEFAULTS = ToyLMConfig()

#: ``icl_late_index`` when none is given: this far before the end of the context (250 of 256, the
#: shipped model's; DESIGN.md section 5 uses 500 vs 50 in a longer context).
ICL_LATE_MARGIN = 6


#: Bytes per parameter while training: float32 weights, their gradients and AdamW's two moments.
TRAINING_BYTES_PER_PARAMETER = 4 * 4
#: Bytes per logit of a training step (float32 logits, their softmax and its gradient).
LOGIT_BYTES = 3 * 4
#: Bytes per attention weight per layer (scores, pattern and their gradients, float32).
ATTENTION_BYTES = 4 * 4
#: Bytes per unit of width (d_model + d_mlp) per position and layer, forward and backward (float32).
WIDTH_BYTES = 8 * 4
#: The settings whose size the memory estimate weighs, in the order messages name them.
MEMORY_SETTINGS = ("n_ctx", "vocab_size", "batch_size")


def training_memory_bytes(config: ToyLMConfig) -> int:
    """Estimated peak bytes of a training step (a lower bound, for refusing before any work).

    The parameters with their gradients and AdamW state, and one batch's logits, attention and MLP
    activations (:class:`~icl_cmr.toy_lm.config.ToyLMConfig`: ``batch_size`` rows of ``n_ctx`` tokens).
    """
    d, layers = config.d_model, config.n_layer
    parameters = (config.vocab_size + config.n_ctx) * d + layers * (4 * d * d + 2 * d * config.d_mlp)
    positions = config.batch_size * config.n_ctx
    activations = positions * (config.vocab_size * LOGIT_BYTES
                               + layers * (config.n_head * config.n_ctx * ATTENTION_BYTES
                                           + (d + config.d_mlp) * WIDTH_BYTES))
    return parameters * TRAINING_BYTES_PER_PARAMETER + activations


@dataclass(frozen=True)
class ToyLMTrainingSettings:
    """A training run, as ``train_toy_lm.py``'s flags set it (same names, same defaults).

    Attributes
    ----------
    seed : int
        Seeds the weights, the training rows and the monitor prompts.
    threads : int
        torch CPU threads; part of what makes a run reproducible (the shipped model used 1).
    max_steps : int
        Optimiser steps; the cosine schedule spans them.
    eval_every : int
        Log loss and matching score every this many steps.
    stop_score : float or None
        Stop once the best head's matching score is >= this at ``stop_patience`` consecutive
        evaluations; None trains ``max_steps`` (the script's ``--no_early_stop``).
    stop_patience : int
    stop_after_steps : int or None
        Halt after this many steps while the learning-rate schedule still spans ``max_steps``.
    n_ctx : int
        Context length = n_positions.
    icl_late_index : int or None
        Late position of the ICL score; default ``n_ctx - 6``.
    vocab_size, batch_size : int
    stdlib_dir : path-like or None
        Standard-library folder to read; default this interpreter's.
    max_files : int or None
        Use only the first this many training files (smoke tests).
    """

    seed: int = 0
    threads: int = 1
    max_steps: int = _DEFAULTS.max_steps
    eval_every: int = _DEFAULTS.eval_every
    stop_score: Optional[float] = _DEFAULTS.stop_score
    stop_patience: int = _DEFAULTS.stop_patience
    stop_after_steps: Optional[int] = None
    n_ctx: int = _DEFAULTS.n_ctx
    icl_late_index: Optional[int] = None
    vocab_size: int = _DEFAULTS.vocab_size
    batch_size: int = _DEFAULTS.batch_size
    stdlib_dir: "str | Path | None" = None
    max_files: Optional[int] = None

    def config(self) -> ToyLMConfig:
        """The model's :class:`ToyLMConfig` for these settings (validated; the rest at its defaults).

        Raises
        ------
        InputError
            Naming ``icl_late_index`` and ``n_ctx`` when the late position is not after the early
            one (50) or past ``n_ctx - 2``; :class:`ToyLMConfig` names the parameters of its own checks.
        """
        check_worker_count(self.threads, "threads")
        late = self.icl_late_index if self.icl_late_index is not None else self.n_ctx - ICL_LATE_MARGIN
        early = _DEFAULTS.icl_early_index
        if not early < late <= self.n_ctx - 2:
            raise InputError(f"`icl_late_index` must be in ({early}, {self.n_ctx - 2}] (after the early index {early}, "
                             f"at most `n_ctx` - 2), got {late}", parameters=("icl_late_index", "n_ctx"))
        return ToyLMConfig(max_steps=self.max_steps, eval_every=self.eval_every, stop_score=self.stop_score,
                           stop_patience=self.stop_patience, stop_after_steps=self.stop_after_steps,
                           n_ctx=self.n_ctx, icl_late_index=late, vocab_size=self.vocab_size,
                           batch_size=self.batch_size)

    def corpus_root(self) -> Path:
        """The standard-library folder the run reads: ``stdlib_dir``, or this interpreter's."""
        return Path(self.stdlib_dir) if self.stdlib_dir is not None else stdlib_dir()


@dataclass
class TrainingCorpus:
    """What training reads, prepared by :func:`prepare_training_corpus`.

    Attributes
    ----------
    stdlib_dir : Path
        The folder the files come from.
    train_files, held_out_files : list of Path
        The split (``train_files`` cut to ``max_files``).
    tokenizer : transformers.PreTrainedTokenizerFast
        Trained on ``train_files``.
    token_stream : ndarray, shape [n_tokens], int64
        The training files' tokens, each file followed by the special token.
    frequent_ids : ndarray, shape [n_frequent]
        Ids seen at least ``frequent_min_count`` times (special token excluded): prompt tokens.
    token_counts : ndarray, shape [vocab_size]
        Count of every id in ``token_stream``.
    """

    stdlib_dir: Path
    train_files: List[Path]
    held_out_files: List[Path]
    tokenizer: object
    token_stream: np.ndarray
    frequent_ids: np.ndarray
    token_counts: np.ndarray

    @property
    def special_token_id(self) -> int:
        """The id of :data:`~icl_cmr.toy_lm.tokenizer.SPECIAL_TOKEN` (BOS, EOS and document separator)."""
        return self.tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)

    def held_out_texts(self) -> List[str]:
        """The held-out files' text, for the final evaluation."""
        return read_texts(self.held_out_files)


def check_corpus(stdlib_folder: Path, config: ToyLMConfig) -> Tuple[List[Path], List[Path]]:
    """The (train, held_out) files of the run's ``stdlib_dir``; one line when either split is empty.

    Parameters
    ----------
    stdlib_folder : Path
        :meth:`ToyLMTrainingSettings.corpus_root`.
    config : ToyLMConfig
        Supplies the split (``held_out_percent``, ``split_salt``).

    Returns
    -------
    (list of Path, list of Path)
        As :func:`icl_cmr.toy_lm.corpus.corpus_split`.

    Raises
    ------
    InputError
        Naming ``stdlib_dir`` when the folder holds no ``.py`` file, or so few that a split is empty.
    """
    train_files, held_files = corpus_split(config, stdlib_folder)
    if not train_files and not held_files:
        raise InputError(f"`stdlib_dir` {stdlib_folder} holds no .py files", parameters=("stdlib_dir",))
    if not train_files or not held_files:
        empty = "training" if not train_files else "held-out"
        raise InputError(f"`stdlib_dir` {stdlib_folder} holds only {len(train_files) + len(held_files)} .py file(s): "
                         f"the {empty} split ({config.held_out_percent}% of files are held out, by a hash of their "
                         "path) is empty; give a folder with more .py files", parameters=("stdlib_dir",))
    return train_files, held_files


def prepare_training_corpus(settings: ToyLMTrainingSettings, config: ToyLMConfig) -> TrainingCorpus:
    """Split the corpus, train the tokenizer, tokenize the training files and find the frequent ids.

    Parameters
    ----------
    settings : ToyLMTrainingSettings
        Supplies ``stdlib_dir`` and ``max_files``.
    config : ToyLMConfig
        ``settings.config()``.

    Returns
    -------
    TrainingCorpus

    Raises
    ------
    InputError
        Naming ``stdlib_dir``: a split is empty (:func:`check_corpus`), or the training files give
        fewer frequent ids than a matching-score prompt needs (``monitor_block_len``).
    """
    root = settings.corpus_root()
    train_files, held_files = check_corpus(root, config)
    if settings.max_files is not None:
        train_files = train_files[: settings.max_files]
    logger.info("corpus: %d training and %d held-out files from %s", len(train_files), len(held_files), root)
    train_texts = read_texts(train_files)
    tokenizer = train_tokenizer(train_texts, config.vocab_size, config.bpe_min_frequency)
    special_id = tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    stream = tokenize_documents(tokenizer, train_texts)
    frequent, counts = frequent_token_ids(stream, len(tokenizer), config.frequent_min_count, [special_id])
    logger.info("tokenizer: vocab %d; %d training tokens; %d ids seen >= %d times",
                len(tokenizer), stream.size, frequent.size, config.frequent_min_count)
    if frequent.size < config.monitor_block_len:
        raise InputError(f"the corpus in `stdlib_dir` {root} is too small: {frequent.size} token ids occur >= "
                         f"{config.frequent_min_count} times, and the matching-score prompts need "
                         f"{config.monitor_block_len} distinct ones; give more .py files", parameters=("stdlib_dir",))
    return TrainingCorpus(stdlib_dir=root, train_files=train_files, held_out_files=held_files, tokenizer=tokenizer,
                          token_stream=stream, frequent_ids=frequent, token_counts=counts)


def train_on_corpus(settings: ToyLMTrainingSettings, config: ToyLMConfig, corpus: TrainingCorpus,
                    progress: Optional[Callable[[Dict[str, object], object], None]] = None,
                    show_progress: bool = True) -> TrainingResult:
    """Train the model from scratch on ``corpus`` with ``settings.threads`` torch threads.

    Parameters
    ----------
    settings : ToyLMTrainingSettings
        Supplies ``seed`` and ``threads``.
    config : ToyLMConfig
        ``settings.config()``.
    corpus : TrainingCorpus
        From :func:`prepare_training_corpus`.
    progress : callable, optional
        ``progress(row, model)`` after each log row (:func:`icl_cmr.toy_lm.training.train`).
    show_progress : bool
        Show a tqdm bar.

    Returns
    -------
    TrainingResult
    """
    torch.set_num_threads(settings.threads)  # the thread count is part of what makes the weights reproducible
    return train(config, corpus.token_stream, len(corpus.tokenizer), corpus.special_token_id, corpus.frequent_ids,
                 settings.seed, progress=progress, show_progress=show_progress)


def training_summary(settings: ToyLMTrainingSettings, config: ToyLMConfig, corpus: TrainingCorpus,
                     result: TrainingResult, wall_seconds: float) -> Dict[str, object]:
    """What ``training_log.json`` records about a finished run (its ``summary``).

    Parameters
    ----------
    settings, config, corpus, result
        The run.
    wall_seconds : float
        Seconds from the corpus work to the end of training.

    Returns
    -------
    dict
        JSON-ready; ``stdlib_dir`` is the folder as given (a caller writing a file may shorten it),
        ``train_corpus_sha256`` identifies the exact training files.
    """
    return {
        "steps": result.steps, "stopped_early": result.stopped_early,
        "tokens_seen": result.steps * config.batch_size * config.n_ctx,
        "wall_time_s": round(wall_seconds, 1), "torch_threads": settings.threads,
        "n_train_files": len(corpus.train_files), "n_held_out_files": len(corpus.held_out_files),
        "n_train_tokens": int(corpus.token_stream.size),
        "train_corpus_sha256": corpus_fingerprint(corpus.train_files, corpus.stdlib_dir),
        "stdlib_dir": str(corpus.stdlib_dir),
        "monitor_matching_scores": result.final_matching_scores.tolist(),
    }
