"""The [LI24] Fig 8 ablation experiment, engine side: which heads, which controls, how results combine.

The run (:mod:`icl_cmr.experiments.ablation`) streams prompts, runs :func:`evaluate_batch` per
batch (intact model, top CMR-like heads ablated, one or more random control sets
ablated), stores each batch's :class:`BatchSummary` (so a stopped run resumes), and
combines them with :func:`combine_batches` into the authors' result keys
(``original_icl_score``, ``ablated_icl_score``, ``ablated_rand_icl_score``) plus the
mean loss by position of every condition. Nothing here reads or writes files.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from icl_cmr.errors import InputError
from icl_cmr.interventions.head_ablation import Head, ablation_hooks, draw_random_head_sets
from icl_cmr.interventions.icl_score import ICLScoreConfig, icl_scores, token_losses

#: Condition names; random control sets are ``ablated_rand_<k>``, their per-prompt mean ``ablated_rand``
#: (the authors' key prefixes).
ORIGINAL, ABLATED, ABLATED_RAND = "original", "ablated", "ablated_rand"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AblationConfig:
    """Settings of the ablation experiment, with the paper's defaults.

    Attributes
    ----------
    fraction : float
        Fraction of all heads ablated, lowest CMR distance first. [LI24] Sec 5 / Fig 8: top 10%;
        their head lists have ``floor(0.1 L H)`` heads (GPT-2 14 of 144, Pythia-70m 4 of 48).
    method : str
        ``"value"`` (the paper's: zero value vectors), ``"output"`` or ``"mean"``
        (:mod:`icl_cmr.interventions.head_ablation`).
    n_random_sets : int
        Random control sets; ``ablated_rand`` is their per-prompt mean. [LI24]: 1.
    allow_overlap : bool
        Let random sets include ablated heads, as [LI24] did (their draw had no exclusion).
    seed : int
        Random set ``k`` is drawn with seed ``seed + k`` ([LI24] used no seed).
    n_eval : int
        Prompts. [LI24] ``ablation.py``: 1000 (their GPT-2 file has 5000).
    batch_size : int
        Prompts per forward pass ([LI24]: 1).
    """

    fraction: float = 0.1
    method: str = "value"
    n_random_sets: int = 1
    allow_overlap: bool = False
    seed: int = 0
    n_eval: int = 1000
    batch_size: int = 8

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise InputError(f"`fraction` must be in (0, 1], got {self.fraction}", parameters=("fraction",))
        if self.n_random_sets < 0:
            raise InputError(f"`n_random_sets` must be >= 0, got {self.n_random_sets}", parameters=("n_random_sets",))


def top_fraction_heads(distance: np.ndarray, fraction: float) -> List[Head]:
    """The ``fraction`` of heads with the lowest CMR distance D (NaN never picked).

    Parameters
    ----------
    distance : numpy.ndarray [n_layers, n_heads]
        CMR distance per head (``fitted_MSE`` of a fit file).
    fraction : float
        In (0, 1]; count = ``max(1, floor(fraction * n_layers * n_heads))`` as in [LI24]'s lists.

    Returns
    -------
    list of (layer, head)
        Lowest D first; ties keep layer-major order.

    Raises
    ------
    InputError
        If fewer heads than the count have a finite D.
    """
    distance = np.asarray(distance, dtype=np.float64)
    if distance.ndim != 2:
        raise InputError(f"CMR distances must be [n_layers, n_heads], got shape {distance.shape}")
    if not 0 < fraction <= 1:
        raise InputError(f"`fraction` must be in (0, 1], got {fraction}", parameters=("fraction",))
    count = max(1, int(np.floor(fraction * distance.size + 1e-9)))
    finite = np.isfinite(distance.ravel())
    if finite.sum() < count:
        raise InputError(f"only {int(finite.sum())} heads have a finite CMR distance; cannot pick {count}")
    order = np.argsort(np.where(finite, distance.ravel(), np.inf), kind="stable")[:count]
    n_heads = distance.shape[1]
    return [(int(flat // n_heads), int(flat % n_heads)) for flat in order]


def control_head_sets(n_layers: int, n_heads: int, ablated: Sequence[Head],
                      config: AblationConfig) -> Tuple[List[List[Head]], List[int]]:
    """Random control sets of ``len(ablated)`` heads each, seeded and pairwise distinct.

    Drawn by :func:`icl_cmr.interventions.head_ablation.draw_random_head_sets`: set ``k`` uses seed
    ``config.seed + k`` unless an earlier seed's draw repeated a set (then the seeds shift).
    When fewer distinct sets exist than ``config.n_random_sets``, all of them are used, each
    once, and a warning says so (the saved ``random_heads`` then has fewer entries).

    Returns
    -------
    sets : list of list of (layer, head)
        Up to ``config.n_random_sets`` distinct sets, each sorted.
    seeds : list of int
        Seed of each set.
    """
    if config.n_random_sets == 0:
        return [], []
    exclude = None if config.allow_overlap else list(ablated)
    drawn = draw_random_head_sets(n_layers, n_heads, len(ablated), config.n_random_sets, config.seed,
                                  exclude=exclude)
    if drawn.exhausted:
        logger.warning("only %d distinct random sets of %d heads exist%s; using those %d instead of the %d asked "
                       "for (`n_random_sets`), each once", drawn.n_possible, len(ablated),
                       "" if config.allow_overlap else " outside the ablated heads", len(drawn.sets),
                       config.n_random_sets)
    return [list(heads) for heads in drawn.sets], list(drawn.seeds)


def conditions(ablated: Sequence[Head], random_sets: Sequence[Sequence[Head]]) -> Dict[str, List[Head]]:
    """Condition name -> heads to ablate: ``original`` (none), ``ablated``, ``ablated_rand_<k>``."""
    named: Dict[str, List[Head]] = {ORIGINAL: [], ABLATED: list(ablated)}
    for k, heads in enumerate(random_sets):
        named[f"{ABLATED_RAND}_{k}"] = list(heads)
    return named


@dataclass
class BatchSummary:
    """What one batch contributes to the result (enough to resume and to combine exactly).

    Attributes
    ----------
    icl : dict of str -> numpy.ndarray [batch], float64
        ICL score per prompt, per condition (including the ``ablated_rand`` set mean).
    loss_sum, loss_sq_sum : dict of str -> numpy.ndarray [seq_len - 1], float64
        Sum over the batch's prompts of the per-position loss and of its square.
    n_prompts : int
    """

    icl: Dict[str, np.ndarray]
    loss_sum: Dict[str, np.ndarray]
    loss_sq_sum: Dict[str, np.ndarray]
    n_prompts: int


def summarise_losses(losses: Mapping[str, np.ndarray], icl_config: ICLScoreConfig) -> BatchSummary:
    """Per-prompt ICL scores and per-position loss sums of one batch.

    Parameters
    ----------
    losses : dict of str -> numpy.ndarray [batch, seq_len - 1]
        Per-token loss by condition (names from :func:`conditions`).
    icl_config : ICLScoreConfig

    Returns
    -------
    BatchSummary
        Adds ``ablated_rand``: the per-prompt mean over the random sets (loss and ICL score).
    """
    losses = {name: np.asarray(value, dtype=np.float64) for name, value in losses.items()}
    random_names = sorted((n for n in losses if n.startswith(ABLATED_RAND + "_")), key=lambda n: int(n.rsplit("_", 1)[1]))
    if random_names:
        losses[ABLATED_RAND] = np.mean([losses[name] for name in random_names], axis=0)
    n_prompts = next(iter(losses.values())).shape[0]
    return BatchSummary(icl={name: icl_scores(value, icl_config) for name, value in losses.items()},
                        loss_sum={name: value.sum(axis=0) for name, value in losses.items()},
                        loss_sq_sum={name: np.square(value).sum(axis=0) for name, value in losses.items()},
                        n_prompts=int(n_prompts))


def evaluate_batch(model, tokens, head_sets: Mapping[str, Sequence[Head]], method: str,
                   icl_config: ICLScoreConfig, batch_size: int, means=None) -> BatchSummary:
    """Run every condition on one batch of prompts and summarise it.

    Parameters
    ----------
    model : TransformerBridge
    tokens : numpy.ndarray or torch.LongTensor [batch, seq_len]
    head_sets : dict of str -> list of (layer, head)
        From :func:`conditions`; an empty list is the intact model.
    method : {"value", "output", "mean"}
    icl_config : ICLScoreConfig
    batch_size : int
        Prompts per forward pass.
    means : dict, optional
        Mean ``hook_z`` per layer (``"mean"`` only; :func:`icl_cmr.interventions.head_ablation.mean_head_activations`).

    Returns
    -------
    BatchSummary
    """
    losses = {}
    # one forward pass per condition: each condition needs its own hooks
    for name, heads in head_sets.items():
        hooks = ablation_hooks(model, heads, method, means) if heads else []
        losses[name] = token_losses(model, tokens, hooks, batch_size)
    return summarise_losses(losses, icl_config)


@dataclass
class AblationResult:
    """Combined result of all batches.

    Attributes
    ----------
    icl : dict of str -> numpy.ndarray [n_eval]
        ICL score per prompt per condition.
    loss_mean, loss_sem : dict of str -> numpy.ndarray [seq_len - 1]
        Mean per-position loss over prompts and its SEM (ddof 1).
    n_prompts : int
    """

    icl: Dict[str, np.ndarray]
    loss_mean: Dict[str, np.ndarray]
    loss_sem: Dict[str, np.ndarray]
    n_prompts: int


def combine_batches(batches: Sequence[BatchSummary]) -> AblationResult:
    """Concatenate per-prompt scores and pool the loss sums of every batch, in order.

    Returns
    -------
    AblationResult
    """
    if not batches:
        raise InputError("no evaluated batches to combine")
    names = list(batches[0].icl)
    n = sum(batch.n_prompts for batch in batches)
    icl = {name: np.concatenate([batch.icl[name] for batch in batches]) for name in names}
    loss_mean, loss_sem = {}, {}
    for name in names:
        total = np.sum([batch.loss_sum[name] for batch in batches], axis=0)
        total_sq = np.sum([batch.loss_sq_sum[name] for batch in batches], axis=0)
        mean = total / n
        variance = np.maximum(total_sq - n * mean ** 2, 0.0) / max(n - 1, 1)
        loss_mean[name], loss_sem[name] = mean, np.sqrt(variance / n)
    return AblationResult(icl=icl, loss_mean=loss_mean, loss_sem=loss_sem, n_prompts=n)
