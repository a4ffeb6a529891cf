"""Paired statistics: the project's one home for comparing conditions on the same items.

* Scores (the ablation experiment, [LI24] Fig 8): [LI24] compared ICL scores between conditions
  with paired t-tests (``scipy.stats.ttest_rel``). We report, per pair of conditions on the same
  prompts: the paired t-test, the Wilcoxon signed-rank test (no normality assumption), the mean
  difference with a seeded bootstrap 95% confidence interval, and Cohen's d for paired samples
  (d_z = mean difference / SD of the differences, ddof 1): :func:`paired_comparison`,
  :func:`comparison_table`.
* Correctness (the pattern tasks, [CS24]; DESIGN.md section 6): the exact McNemar test
  (:func:`mcnemar_exact`), the sign-flip permutation test (:func:`paired_permutation_test`) and
  the table of both over tasks and conditions with Benjamini-Hochberg q-values
  (:func:`accuracy_comparison_table`).
* :func:`wilson_interval` of a proportion, :func:`significance_stars`.

Every test is ``scipy.stats``'s own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats

from icl_cmr.config import MIN_PAIRS
from icl_cmr.errors import InputError


@dataclass(frozen=True)
class PairedStatsConfig:
    """Settings of :func:`paired_comparison`.

    Attributes
    ----------
    n_bootstrap : int
        Bootstrap resamples of the mean difference.
    confidence : float
        Confidence level of the interval.
    bootstrap_method : str
        ``scipy.stats.bootstrap`` method: ``"BCa"`` (default), ``"percentile"`` or ``"basic"``.
    seed : int
        Seed of the bootstrap generator (same seed, same interval).
    """

    n_bootstrap: int = 10_000
    confidence: float = 0.95
    bootstrap_method: str = "BCa"
    seed: int = 0


#: Resamples :func:`paired_comparison` draws at once (``scipy.stats.bootstrap``'s ``batch``): bounds memory at large n.
BOOTSTRAP_BATCH = 1000


def bootstrap_memory_bytes(n_bootstrap: int, n_samples: int, batch: Optional[int] = BOOTSTRAP_BATCH) -> int:
    """Estimated peak bytes of one ``scipy.stats.bootstrap`` interval over ``n_samples`` values, for refusing
    a resample count that cannot fit before any work.

    scipy keeps every resample's statistic (float64; with its sorted copy and the BCa temporaries, 4 x 8
    bytes each), draws ``batch`` resamples at a time (all at once when None) as indices and values
    ``[batch, n_samples]``, and BCa's jackknife holds ``[n_samples, n_samples - 1]``.

    Parameters
    ----------
    n_bootstrap : int
        Resamples.
    n_samples : int
        Values resampled (all samples together).
    batch : int or None
        Resamples drawn at once.

    Returns
    -------
    int
        Bytes.
    """
    at_once = int(n_bootstrap) if batch is None else min(int(batch), int(n_bootstrap))
    return 4 * 8 * int(n_bootstrap) + 2 * 8 * at_once * int(n_samples) + 8 * int(n_samples) ** 2


def significance_stars(p_value: float) -> str:
    """``"***"`` p < 0.001, ``"**"`` p < 0.01, ``"*"`` p < 0.05, else ``"n.s."``."""
    if not np.isfinite(p_value):
        return "n.s."
    for threshold, stars in ((0.001, "***"), (0.01, "**"), (0.05, "*")):
        if p_value < threshold:
            return stars
    return "n.s."


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval of a binomial proportion (``scipy.stats.binomtest``).

    Parameters
    ----------
    successes, trials : int
        Correct answers out of ``trials >= 1``.
    confidence : float
        Confidence level.

    Returns
    -------
    (low, high) : tuple of float
    """
    successes, trials = int(successes), int(trials)
    if trials < 1 or not 0 <= successes <= trials:
        raise InputError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    interval = stats.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def paired_comparison(a: np.ndarray, b: np.ndarray,
                      config: PairedStatsConfig = PairedStatsConfig()) -> Dict[str, float]:
    """Compare two paired samples (``a[i]`` and ``b[i]`` from the same prompt).

    Parameters
    ----------
    a, b : numpy.ndarray [n]
        Paired scores; pairs with a NaN in either are dropped.
    config : PairedStatsConfig

    Returns
    -------
    dict
        ``n``, ``mean_a``, ``mean_b``, ``sem_a``, ``sem_b``, ``mean_diff`` (a - b),
        ``ci_low``, ``ci_high`` (bootstrap CI of the mean difference), ``t``,
        ``df``, ``p_t`` (paired t-test, two-sided), ``w``, ``p_wilcoxon``
        (Wilcoxon signed-rank, two-sided, zero differences dropped),
        ``cohens_dz``, ``stars`` (from ``p_t``).

    Raises
    ------
    InputError
        Different lengths, or fewer than :data:`~icl_cmr.config.MIN_PAIRS` complete pairs.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"paired samples must be 1-D arrays of equal length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < MIN_PAIRS:
        raise InputError(f"a paired comparison needs at least {MIN_PAIRS} complete pairs, got {n}")
    diff = a - b
    sd_diff = diff.std(ddof=1)
    t_result = stats.ttest_rel(a, b)
    if np.any(diff != 0):
        w_result = stats.wilcoxon(a, b, zero_method="wilcox")
        w, p_w = float(w_result.statistic), float(w_result.pvalue)
    else:
        w, p_w = float("nan"), float("nan")
    if sd_diff > 0:
        ci = stats.bootstrap((diff,), np.mean, n_resamples=config.n_bootstrap, confidence_level=config.confidence,
                             method=config.bootstrap_method, batch=BOOTSTRAP_BATCH,
                             rng=np.random.default_rng(config.seed)).confidence_interval
        ci_low, ci_high = float(ci.low), float(ci.high)
    else:  # every difference equal: the interval collapses to that value
        ci_low = ci_high = float(diff[0])
    return {
        "n": n,
        "mean_a": float(a.mean()), "mean_b": float(b.mean()),
        "sem_a": float(stats.sem(a)), "sem_b": float(stats.sem(b)),
        "mean_diff": float(diff.mean()), "ci_low": ci_low, "ci_high": ci_high,
        "t": float(t_result.statistic), "df": int(n - 1), "p_t": float(t_result.pvalue),
        "w": w, "p_wilcoxon": p_w,
        "cohens_dz": float(diff.mean() / sd_diff) if sd_diff > 0 else float("nan"),
        "stars": significance_stars(float(t_result.pvalue)),
    }


def comparison_table(samples: Mapping[str, np.ndarray], pairs: Sequence[Tuple[str, str]],
                     config: PairedStatsConfig = PairedStatsConfig()):
    """Tidy table of paired comparisons, one row per pair.

    Parameters
    ----------
    samples : mapping of str -> numpy.ndarray [n]
        Condition name -> per-prompt scores (same prompts, same order).
    pairs : sequence of (str, str)
        Conditions to compare, ``(a, b)`` meaning a - b.
    config : PairedStatsConfig

    Returns
    -------
    pandas.DataFrame
        Columns ``a``, ``b`` and the keys of :func:`paired_comparison`.
    """
    rows = []
    for name_a, name_b in pairs:
        for name in (name_a, name_b):
            if name not in samples:
                raise InputError(f"no condition {name!r}; available: {', '.join(samples)}")
        rows.append({"a": name_a, "b": name_b, **paired_comparison(samples[name_a], samples[name_b], config)})
    return pd.DataFrame(rows)


def format_table(table, columns: Optional[Sequence[str]] = None) -> str:
    """The comparison table as fixed-width text for logs and ``.txt`` files.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`comparison_table`.
    columns : sequence of str, optional
        Columns to show (default: the usual summary).
    """
    columns = list(columns or ["a", "b", "n", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "t", "p_t",
                               "p_wilcoxon", "cohens_dz", "stars"])
    formatters = {name: "{:.3g}".format for name in ("p_t", "p_wilcoxon")}
    return table[columns].to_string(index=False, float_format=lambda value: f"{value:.4f}", formatters=formatters)


# ----------------------------------------------------------------------------- paired correctness ([CS24])

def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> Tuple[int, int, float]:
    """Exact McNemar test of paired correctness: a two-sided binomial test on the discordant items.

    Parameters
    ----------
    correct_a, correct_b : numpy.ndarray of bool, shape [n]
        The same items under two conditions.

    Returns
    -------
    only_a : int
        Items right under a and wrong under b.
    only_b : int
        Items right under b and wrong under a.
    p_value : float
        Two-sided ``scipy.stats.binomtest(only_a, only_a + only_b, 0.5)``; 1.0 when no item is discordant.

    Examples
    --------
    >>> mcnemar_exact(np.array([True, False, False]), np.array([False, True, True]))
    (1, 2, 1.0)
    """
    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise InputError(f"`correct_a` and `correct_b` differ in shape: {correct_a.shape} vs {correct_b.shape}",
                         parameters=("correct_a", "correct_b"))
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(correct_b & ~correct_a))
    if only_a + only_b == 0:
        return only_a, only_b, 1.0
    return only_a, only_b, float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_permutation_test(x: np.ndarray, y: np.ndarray, n_resamples: int = 10000,
                            seed: int = 0) -> Tuple[float, float]:
    """Sign-flip permutation test of the mean paired difference ``mean(x - y)``.

    ``scipy.stats.permutation_test`` with ``permutation_type="samples"``: exact (all ``2^n`` sign
    patterns) when ``2^n <= n_resamples``, else Monte Carlo drawn from ``numpy.random.default_rng(seed)``.
    The saved p-values of every run so far come from that generator's stream; another
    implementation (or another stream) would change the Monte Carlo ones.

    Parameters
    ----------
    x, y : numpy.ndarray of float, shape [n]
        Per-item values under two conditions (correctness 0/1, or a mean over random draws).
    n_resamples : int
        Most sign patterns drawn.
    seed : int
        Seed of the Monte Carlo draws.

    Returns
    -------
    (mean_difference, p_value) : tuple of float
        Two-sided p-value; 1.0 when every difference is 0.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise InputError(f"`x` and `y` must be 1-D and equal in shape: {x.shape} vs {y.shape}", parameters=("x", "y"))
    difference = float(np.mean(x - y))
    if not np.any(x != y):
        return difference, 1.0
    result = stats.permutation_test((x, y), lambda a, b, axis: np.mean(a - b, axis=axis), vectorized=True,
                                    permutation_type="samples", n_resamples=n_resamples, alternative="two-sided",
                                    random_state=np.random.default_rng(seed))
    return difference, float(result.pvalue)


#: The comparisons of :func:`accuracy_comparison_table`, ``(a, b)`` meaning a - b.
ACCURACY_COMPARISONS = (("intact", "induction"), ("intact", "random"), ("random", "induction"))


def accuracy_comparison_table(items: pd.DataFrame, n_resamples: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Per task, method and selection: intact vs induction, intact vs random, induction vs random.

    Items are paired by (item, demonstration seed). Random-head correctness is averaged over
    draws per item. McNemar's exact test is given when both sides are single 0/1 outcomes
    (random with one draw counts); the sign-flip permutation test on per-item correctness
    always.

    Parameters
    ----------
    items : pandas.DataFrame
        One row per prompt and condition (``pattern_icl.py``'s ``items.csv``): columns task, item,
        demo_seed, method, selection, ablate (``"none"``, ``"induction"`` or ``"random"``), draw, correct.
    n_resamples, seed : int
        Of :func:`paired_permutation_test`.

    Returns
    -------
    pandas.DataFrame
        Columns task, method, selection, comparison, n, accuracy_a, accuracy_b, difference,
        permutation_p, mcnemar_only_a, mcnemar_only_b, mcnemar_p, and permutation_q_bh (the
        permutation p-values adjusted by Benjamini-Hochberg, ``scipy.stats.false_discovery_control``,
        over every row of the table).

    Raises
    ------
    InputError
        Two conditions of a task that were not run on the same prompts.
    """
    key = ["item", "demo_seed"]
    rows = []
    for task, task_items in items.groupby("task", sort=False):
        intact = task_items[task_items["ablate"] == "none"].set_index(key)["correct"].astype(float)
        ablated = task_items[task_items["ablate"] != "none"]
        for (method, selection), group in ablated.groupby(["method", "selection"], sort=False):
            sides = {}
            induction = group[group["ablate"] == "induction"]
            if len(induction):
                sides["induction"] = (induction.set_index(key)["correct"].astype(float), True)
            random = group[group["ablate"] == "random"]
            if len(random):
                n_draws = random["draw"].nunique()
                sides["random"] = (random.groupby(key)["correct"].mean(), n_draws == 1)
            if len(intact):
                sides["intact"] = (intact, True)
            for a, b in ACCURACY_COMPARISONS:
                if a not in sides or b not in sides:
                    continue
                (x, x_binary), (y, y_binary) = sides[a], sides[b]
                y = y.reindex(x.index)
                if y.isna().any():
                    raise InputError(f"{task}: conditions {a} and {b} were not run on the same prompts")
                difference, p_perm = paired_permutation_test(x.to_numpy(), y.to_numpy(), n_resamples, seed)
                row = dict(task=task, method=method, selection=selection, comparison=f"{a} - {b}", n=len(x),
                           accuracy_a=float(x.mean()), accuracy_b=float(y.mean()), difference=difference,
                           permutation_p=p_perm, mcnemar_only_a=np.nan, mcnemar_only_b=np.nan, mcnemar_p=np.nan)
                if x_binary and y_binary:
                    only_a, only_b, p_mc = mcnemar_exact(x.to_numpy() > 0.5, y.to_numpy() > 0.5)
                    row.update(mcnemar_only_a=only_a, mcnemar_only_b=only_b, mcnemar_p=p_mc)
                rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        # Many tasks x conditions are tested at once: Benjamini-Hochberg over the whole table.
        table["permutation_q_bh"] = stats.false_discovery_control(table["permutation_p"].to_numpy())
    return table
