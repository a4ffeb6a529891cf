"""How far back a model recalls: accuracy against the distance from the first trigger to the query (issue 23).

An induction model answers from the token after the first trigger, d positions before the query. Its
errors grow with d, not with the sequence length (docs/induction_task.md, "Length generalization over
training"), so one curve over d summarises a snapshot across every evaluated length. We fit

    P(correct | d) = chance + (1 - chance) / (1 + exp(slope * (log2 d - midpoint)))

by maximum likelihood to every scored sequence (pooled over lengths), and report the distances at which
the fitted accuracy is 50% and 99%: ``log2_distance_50`` and ``log2_distance_99``. These summarise the
data only where it has sequences; beyond the longest distance scored they are extrapolations of the fit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from icl_cmr.errors import InputError

#: Starting point of the fit: midpoint 2^12 (between the training length and the longest lengths we score)
#: and slope 1 per doubling. Our choice; the likelihood is smooth, so the start only needs to be in range.
START_MIDPOINT_LOG2 = 12.0
START_SLOPE = 1.0
#: Below this slope (per doubling of the distance) the fitted accuracy changes by less than 1% of its range over
#: a doubling: the data show no decline with distance (e.g. a model failing at short lengths only), so the
#: distances at an accuracy are not defined and are reported as NaN. Our choice.
MIN_SLOPE = 0.01


@dataclass(frozen=True)
class RecallDistanceFit:
    """The fitted accuracy-against-distance curve of one snapshot.

    Attributes
    ----------
    midpoint_log2, slope : float
        The logistic's centre (log2 tokens) and steepness (per doubling of the distance).
    chance : float
        The floor (1/15 for the task's 15 values).
    n_sequences, n_correct : int
    min_log2_distance, max_log2_distance : float
        The shortest and longest distances scored: the fit is an extrapolation beyond them.
    """

    midpoint_log2: float
    slope: float
    chance: float
    n_sequences: int
    n_correct: int
    min_log2_distance: float
    max_log2_distance: float

    def accuracy_at(self, log2_distance: float) -> float:
        """The fitted accuracy at a log2 distance."""
        return self.chance + (1 - self.chance) / (1 + float(np.exp(np.clip(
            self.slope * (log2_distance - self.midpoint_log2), -50, 50))))

    def log2_distance_at(self, accuracy: float) -> float:
        """The log2 distance where the fitted accuracy falls to ``accuracy`` (in (chance, 1)); NaN when the fit
        shows no decline with distance (slope below :data:`MIN_SLOPE`) or is already below ``accuracy`` at the
        shortest distance scored (the model fails at every distance, so there is no distance it recalls to)."""
        if not self.chance < accuracy < 1:
            raise InputError(f"`accuracy` must lie between chance ({self.chance:.3g}) and 1, got {accuracy}",
                             parameters=("accuracy",))
        if self.slope < MIN_SLOPE or self.accuracy_at(self.min_log2_distance) < accuracy:
            return float("nan")
        above_chance = (accuracy - self.chance) / (1 - self.chance)
        return self.midpoint_log2 + float(np.log((1 - above_chance) / above_chance)) / self.slope


def fit_recall_distance(distances: np.ndarray, correct: np.ndarray, chance: float) -> RecallDistanceFit:
    """Maximum-likelihood fit of the logistic in log2 distance (module docstring).

    Parameters
    ----------
    distances : ndarray of int, shape [n]
        Query position minus first-trigger position of each scored sequence (>= 2).
    correct : ndarray of bool, shape [n]
    chance : float
        Accuracy of a uniform guess, in (0, 1).

    Returns
    -------
    RecallDistanceFit
    """
    distances = np.asarray(distances, dtype=float)
    correct = np.asarray(correct, dtype=float)
    if distances.ndim != 1 or distances.shape != correct.shape or distances.size == 0:
        raise InputError(f"`distances` and `correct` must be equal-length non-empty vectors, got shapes "
                         f"{distances.shape} and {correct.shape}", parameters=("distances", "correct"))
    if distances.min() < 1:
        raise InputError(f"`distances` must be >= 1, got {distances.min():g}", parameters=("distances",))
    if not 0 < chance < 1:
        raise InputError(f"`chance` must lie in (0, 1), got {chance}", parameters=("chance",))
    log2_distance = np.log2(distances)

    def negative_log_likelihood(theta: np.ndarray) -> float:
        midpoint, log_slope = theta
        recalled = 1.0 / (1.0 + np.exp(np.clip(np.exp(log_slope) * (log2_distance - midpoint), -50, 50)))
        p = np.clip(chance + (1 - chance) * recalled, 1e-12, 1 - 1e-12)
        return float(-(correct * np.log(p) + (1 - correct) * np.log1p(-p)).sum())

    # The slope is fitted on a log scale so that it stays positive (accuracy falls with distance).
    fit = optimize.minimize(negative_log_likelihood, [START_MIDPOINT_LOG2, np.log(START_SLOPE)], method="Nelder-Mead",
                            options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000})
    return RecallDistanceFit(float(fit.x[0]), float(np.exp(fit.x[1])), float(chance), int(distances.size),
                             int(correct.sum()), float(log2_distance.min()), float(log2_distance.max()))
