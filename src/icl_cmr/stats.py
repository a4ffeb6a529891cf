"""Paired comparisons of per-prompt scores (ablation conditions) and a tidy results table.

[LI24] compared ICL scores between conditions with paired t-tests
(``scipy.stats.ttest_rel``). We report, per pair of conditions on the same prompts:
the paired t-test, the Wilcoxon signed-rank test (no normality assumption), the
mean difference with a seeded bootstrap 95% confidence interval, and Cohen's d for
paired samples (d_z = mean difference / SD of the differences, ddof 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

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
    from scipy.stats import binomtest

    successes, trials = int(successes), int(trials)
    if trials < 1 or not 0 <= successes <= trials:
        raise InputError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    interval = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
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
        Different lengths, or fewer than 2 complete pairs.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"paired samples must be 1-D arrays of equal length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 2:
        raise InputError(f"a paired comparison needs at least 2 complete pairs, got {n}")
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
                             method=config.bootstrap_method, batch=1000,  # batches bound memory at large n
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
    import pandas as pd

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
