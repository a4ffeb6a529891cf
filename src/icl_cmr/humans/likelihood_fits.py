"""Standard CMR fitted to each person by maximum likelihood, and compared with the grid fits (issue 24).

The log-likelihood of :mod:`icl_cmr.humans.likelihood` is the sum of a choice part, which depends on
every parameter but the stop parameters (X1, X2), and a stop part, which depends only on X1, X2 and the
number of recalls of each list. Its maximum over all parameters is therefore the maximum of each part over
its own parameters: :func:`fit_subject` fits the two separately with ``scipy.optimize.differential_evolution``
(a seeded global search, the whole population evaluated in one vectorised call, then polished by
L-BFGS-B within the bounds) and adds them.

Free by default (:class:`LikelihoodFitConfig`): ``B_enc, B_start, B_rec, Lfc, T`` (the five of issue 24)
and ``X1, X2``; ``Lcf = Lfc`` (tied) and no primacy gradient (``P1 = 0``). Either can be freed.

:func:`compare_methods` sets the likelihood fits beside the grid fits of :mod:`icl_cmr.humans.fits`
(Spearman correlations across people, medians on both scales).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import pandas as pd
from scipy import optimize, stats

from icl_cmr.errors import InputError
from icl_cmr.humans.likelihood import (CHOICE_PARAMETERS, STOP_PARAMETERS, CmrParameters, RecallLists,
                                       choice_log_likelihood, li24_beta_enc, stop_log_likelihood)

#: Search bounds of each parameter. B's, Lfc, Lcf: their whole range; T: 0.001 (near-deterministic choice)
#: to 1 (support differences of 0.1 change odds by at most e^0.2); X1 a probability; X2 up to 5 per output.
DEFAULT_BOUNDS: Mapping[str, Tuple[float, float]] = {
    "B_enc": (0.0, 1.0), "B_start": (0.0, 1.0), "B_rec": (0.0, 1.0), "Lfc": (0.0, 1.0), "Lcf": (0.0, 1.0),
    "P1": (0.0, 10.0), "P2": (0.0, 10.0), "T": (0.001, 1.0), "X1": (0.0, 1.0), "X2": (0.0, 5.0),
}

#: (likelihood column, grid column) pairs compared by :func:`compare_methods`.
METHOD_PAIRS = (("beta_enc_li24", "beta_enc"), ("B_rec", "beta_rec"), ("Lfc", "gamma_ft"))


def li24_beta_rec(B_rec: "float | np.ndarray") -> "float | np.ndarray":
    """[LI24]'s ``beta_rec`` giving the same mix of old context and input as standard CMR's ``B_rec`` when the
    input is orthogonal to context: ``(1 - beta) / beta = sqrt(1 - B^2) / B``, so ``beta = B / (B + sqrt(1 - B^2))``.
    Only for orthogonal input (retrieved contexts overlap the current one), so medians, not people, are
    converted with it.

    Examples
    --------
    >>> round(float(li24_beta_rec(math.sqrt(0.5))), 6)
    0.5
    """
    B_rec = np.asarray(B_rec, dtype=float)
    return B_rec / (B_rec + np.sqrt(1.0 - B_rec ** 2))


@dataclass(frozen=True)
class LikelihoodFitConfig:
    """Which parameters are free and how the search runs.

    Attributes
    ----------
    free_lcf : bool
        Fit ``Lcf``; False (default): ``Lcf = Lfc``.
    free_primacy : bool
        Fit ``P1, P2``; False (default): ``P1 = 0`` (no primacy gradient; P2 then has no effect).
    bounds : mapping name -> (low, high)
    popsize : int
        Population per free parameter (scipy's ``popsize``).
    maxiter : int
        Most generations of each search.
    tol, atol : float
        Stop when the population's negative log-likelihoods have a standard deviation below
        ``atol + tol * |mean|`` (scipy's criterion).
    n_starts : int
        Independent searches (seeds) per part; the best is kept, the spread of their optima is reported.
    """

    free_lcf: bool = False
    free_primacy: bool = False
    bounds: Mapping[str, Tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_BOUNDS))
    popsize: int = 15
    maxiter: int = 1000
    tol: float = 0.0
    atol: float = 0.01
    n_starts: int = 2

    @property
    def free_choice(self) -> Tuple[str, ...]:
        """The free parameters of the choice part, in search order."""
        names = ["B_enc", "B_start", "B_rec", "Lfc"] + (["Lcf"] if self.free_lcf else []) + ["T"]
        return tuple(names + (["P1", "P2"] if self.free_primacy else []))

    @property
    def free(self) -> Tuple[str, ...]:
        """Every free parameter."""
        return self.free_choice + STOP_PARAMETERS

    def check(self) -> None:
        """Raise :class:`InputError`, naming the setting, for a value the search cannot use."""
        for name in self.free:
            low, high = self.bounds.get(name, (math.nan, math.nan))
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise InputError(f"`bounds` of {name} must be finite with low < high, got {self.bounds.get(name)}",
                                 parameters=("bounds",))
        if self.bounds["T"][0] <= 0:
            raise InputError("`bounds` of T must be > 0", parameters=("bounds",))
        for name in ("popsize", "maxiter", "n_starts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"`{name}` must be a positive integer, got {value!r}", parameters=(name,))
        if not (self.tol >= 0 and self.atol >= 0 and self.tol + self.atol > 0):
            raise InputError("`tol` and `atol` must be >= 0 and not both 0", parameters=("tol", "atol"))

    def parameters(self, values: Mapping[str, np.ndarray]) -> CmrParameters:
        """Full parameters from the free ones (arrays [P] or floats), ties and fixed values filled in."""
        full = {"X1": 0.01, "X2": 0.3, "P1": 0.0, "P2": 0.0}
        full.update(values)
        if not self.free_lcf:
            full["Lcf"] = full["Lfc"]
        return CmrParameters(**full)


@dataclass(frozen=True)
class PartFit:
    """One part's search (choice or stop): the best of ``n_starts`` differential evolutions.

    Attributes
    ----------
    values : dict name -> float
    neg_log_likelihood : float
    converged : bool
        scipy's ``success`` of the best search (the population met the tolerance before ``maxiter``).
    message : str
    n_objective_calls, n_generations : int
        Summed over the searches; one call evaluates a whole population (or one point while polishing).
    spread : float
        Largest minus smallest optimum over the searches (0 with one search).
    standard_errors : dict name -> float
        From the observed information (:func:`standard_errors`); NaN for a parameter at (or within two
        difference steps of) a bound, or for all when the information is not positive definite.
    """

    values: Dict[str, float]
    neg_log_likelihood: float
    converged: bool
    message: str
    n_objective_calls: int
    n_generations: int
    spread: float
    standard_errors: Dict[str, float]


@dataclass(frozen=True)
class SubjectLikelihoodFit:
    """A person's maximum-likelihood fit.

    Attributes
    ----------
    parameters : dict name -> float
        Every parameter of :class:`CmrParameters`, free or not.
    choice, stop : PartFit
    n_lists, n_recalls : int
        Lists, and scored recalls (first recalls of studied items); each list adds one stop event.
    at_bounds : tuple of str
        Free parameters within 1e-3 of the range of their bound (relative).
    seconds : float
    """

    parameters: Dict[str, float]
    choice: PartFit
    stop: PartFit
    n_lists: int
    n_recalls: int
    at_bounds: Tuple[str, ...]
    seconds: float

    @property
    def neg_log_likelihood(self) -> float:
        return self.choice.neg_log_likelihood + self.stop.neg_log_likelihood

    @property
    def n_events(self) -> int:
        """Scored events: every recall and every list's stop."""
        return self.n_recalls + self.n_lists


def standard_errors(objective, values: Mapping[str, float], bounds: Mapping[str, Tuple[float, float]],
                    relative_step: float = 1e-3) -> Dict[str, float]:
    """Standard errors of a maximum-likelihood estimate from the observed information.

    The Hessian H of the negative log-likelihood at the optimum is taken by central differences (step
    ``relative_step`` times the parameter's value, or times 1% of its range when the value is smaller, as
    X1 often is; every stencil point in one vectorised call), over the
    parameters at least two steps inside their bounds (the others are held at their value: a bound
    estimate has no symmetric sampling error); SE = sqrt(diag(H^-1)).

    Parameters
    ----------
    objective : callable
        ``objective(x [n, S]) -> [S]``, the negative log-likelihood of S parameter vectors.
    values : mapping name -> float
        The optimum, in the objective's order.
    bounds : mapping name -> (low, high)

    Returns
    -------
    dict name -> float
    """
    names = list(values)
    x0 = np.array([values[name] for name in names])
    step = np.array([relative_step * max(abs(x), 0.01 * (bounds[name][1] - bounds[name][0]))
                     for name, x in zip(names, x0)])
    interior = np.array([bounds[name][0] + 2 * h <= x <= bounds[name][1] - 2 * h
                         for name, x, h in zip(names, x0, step)])
    free = np.flatnonzero(interior)
    result = {name: math.nan for name in names}
    if free.size == 0:
        return result
    signs = np.array([(1, 1), (1, -1), (-1, 1), (-1, -1)])
    points = []
    for i in free:                       # builds the stencil: 4 points per pair, evaluated in one call below
        for j in free:
            for si, sj in signs:
                x = x0.copy()
                x[i] += si * step[i]
                x[j] += sj * step[j]
                points.append(x)
    f = np.asarray(objective(np.array(points).T)).reshape(free.size, free.size, 4)
    hessian = (f[..., 0] - f[..., 1] - f[..., 2] + f[..., 3]) / (4 * np.outer(step[free], step[free]))
    hessian = (hessian + hessian.T) / 2
    if not np.all(np.isfinite(hessian)) or np.any(np.linalg.eigvalsh(hessian) <= 0):
        return result
    errors = np.sqrt(np.diag(np.linalg.inv(hessian)))
    result.update({names[i]: float(error) for i, error in zip(free, errors)})
    return result


def _differential_evolution(objective, names: Tuple[str, ...], config: LikelihoodFitConfig,
                            rng: np.random.Generator) -> PartFit:
    """Minimise ``objective(values [n, S]) -> [S]`` over ``names`` within their bounds, ``n_starts`` times."""
    bounds = [config.bounds[name] for name in names]

    def negative(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        values = objective(x.reshape(len(names), -1))
        return values if x.ndim > 1 else float(values[0])      # polishing calls it with one point

    runs = []
    for _ in range(config.n_starts):   # a few independent searches; each is vectorised over its population
        runs.append(optimize.differential_evolution(
            negative, bounds, seed=rng, popsize=config.popsize, maxiter=config.maxiter, tol=config.tol,
            atol=config.atol, polish=True, vectorized=True, updating="deferred"))
    optima = np.array([run.fun for run in runs])
    best = runs[int(np.argmin(optima))]
    values = dict(zip(names, map(float, best.x)))
    errors = standard_errors(objective, values, config.bounds)
    return PartFit(values=values, neg_log_likelihood=float(best.fun), standard_errors=errors,
                   converged=bool(best.success), message=str(best.message),
                   n_objective_calls=int(sum(run.nfev for run in runs)),
                   n_generations=int(sum(run.nit for run in runs)),
                   spread=float(optima.max() - optima.min()))


def fit_choice(lists: RecallLists, config: LikelihoodFitConfig, rng: np.random.Generator) -> PartFit:
    """Maximise the choice part of the log-likelihood over ``config.free_choice``."""
    names = config.free_choice

    def objective(x: np.ndarray) -> np.ndarray:
        return -choice_log_likelihood(config.parameters(dict(zip(names, x))), lists)

    return _differential_evolution(objective, names, config, rng)


def fit_stop(n_recalled: np.ndarray, n_items: int, config: LikelihoodFitConfig,
             rng: np.random.Generator) -> PartFit:
    """Maximise the stop part of the log-likelihood over X1, X2, given each list's number of recalls [L]."""

    def objective(x: np.ndarray) -> np.ndarray:
        return -stop_log_likelihood(x[0], x[1], n_recalled, n_items)

    return _differential_evolution(objective, STOP_PARAMETERS, config, rng)


def fit_subject(lists: RecallLists, config: Optional[LikelihoodFitConfig] = None,
                seed: "int | Tuple[int, ...]" = 0) -> SubjectLikelihoodFit:
    """One person's maximum-likelihood parameters (module docstring).

    Parameters
    ----------
    lists : RecallLists
        The person's lists (:func:`icl_cmr.humans.likelihood.subject_recall_lists`).
    config : LikelihoodFitConfig, optional
    seed : int or tuple of int
        Seed of the searches (e.g. ``(run seed, subject)``, so a person's fit does not depend on who else is fitted).

    Returns
    -------
    SubjectLikelihoodFit
    """
    config = config or LikelihoodFitConfig()
    config.check()
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    choice = fit_choice(lists, config, rng)
    stop = fit_stop(lists.n_recalled, lists.n_items, config, rng)
    full = config.parameters({**choice.values, **stop.values}).arrays()
    parameters = {name: float(full[name][0]) for name in CHOICE_PARAMETERS + STOP_PARAMETERS}
    at_bounds = tuple(name for name in config.free
                      if min(abs(parameters[name] - bound) for bound in config.bounds[name])
                      <= 1e-3 * (config.bounds[name][1] - config.bounds[name][0]))
    return SubjectLikelihoodFit(parameters, choice, stop, lists.n_lists, int(lists.n_recalled.sum()), at_bounds,
                                seconds=time.perf_counter() - started)


def fit_row(subject: "int | str", fit: SubjectLikelihoodFit) -> Dict[str, object]:
    """One row of the per-person table (see :func:`compare_methods` for the columns it uses)."""
    return {"subject": subject, "n_lists": fit.n_lists, "n_recalls": fit.n_recalls, "n_events": fit.n_events,
            **fit.parameters, "beta_enc_li24": float(li24_beta_enc(fit.parameters["B_enc"])),
            **{f"{name}_se": error for part in (fit.choice, fit.stop) for name, error in part.standard_errors.items()},
            "neg_log_likelihood": fit.neg_log_likelihood, "choice_nll": fit.choice.neg_log_likelihood,
            "stop_nll": fit.stop.neg_log_likelihood, "converged": fit.choice.converged and fit.stop.converged,
            "choice_spread": fit.choice.spread, "stop_spread": fit.stop.spread, "at_bounds": ";".join(fit.at_bounds),
            "n_objective_calls": fit.choice.n_objective_calls + fit.stop.n_objective_calls,
            "n_generations": fit.choice.n_generations, "message": fit.choice.message, "seconds": fit.seconds}


def compare_methods(likelihood: pd.DataFrame, grid: pd.DataFrame) -> pd.DataFrame:
    """The likelihood fits beside the grid fits of the same people.

    Parameters
    ----------
    likelihood : pandas.DataFrame
        Rows of :func:`fit_row` (``subject``, ``B_enc``, ``beta_enc_li24``, ``B_rec``, ``Lfc``).
    grid : pandas.DataFrame
        :func:`icl_cmr.humans.fits.people_table` rows (``subject``, ``beta_enc``, ``beta_rec``, ``gamma_ft``).

    Returns
    -------
    pandas.DataFrame
        One row per pair of :data:`METHOD_PAIRS`: ``likelihood``, ``grid`` (column names), ``n`` (people in
        both), ``spearman_rho``, ``spearman_p`` (scipy.stats.spearmanr), ``median_likelihood``,
        ``median_likelihood_li24`` (on [LI24]'s scale: ``li24_beta_enc``, ``li24_beta_rec``; the same value for Lfc,
        which has no conversion), ``median_grid``; for B_enc only (the one conversion that holds person by
        person), ``median_difference_li24`` (median over people of likelihood minus grid on [LI24]'s scale) and
        ``wilcoxon_p`` (scipy.stats.wilcoxon, two-sided, paired); NaN for the others.
    """
    missing = [column for column in ("subject",) + tuple(p[0] for p in METHOD_PAIRS) if column not in likelihood]
    missing += [column for column in ("subject",) + tuple(p[1] for p in METHOD_PAIRS) if column not in grid]
    if missing:
        raise InputError(f"columns missing from the tables: {missing}", parameters=("likelihood", "grid"))
    both = likelihood.merge(grid, on="subject", suffixes=("", "_grid"))
    native = {"beta_enc_li24": "B_enc"}
    to_li24 = {"beta_enc_li24": li24_beta_enc, "B_rec": li24_beta_rec}
    rows = []
    for mine, theirs in METHOD_PAIRS:
        grid_column = theirs if theirs not in likelihood else f"{theirs}_grid"
        rho, p_value = stats.spearmanr(both[mine], both[grid_column])
        native_median = float(both[native.get(mine, mine)].median())
        li24_median = float(to_li24.get(mine, lambda x: x)(native_median)) if mine != "beta_enc_li24" else \
            float(both[mine].median())
        difference, wilcoxon_p = math.nan, math.nan
        if mine == "beta_enc_li24":
            difference = float((both[mine] - both[grid_column]).median())
            wilcoxon_p = float(stats.wilcoxon(both[mine], both[grid_column]).pvalue) if len(both) > 1 else math.nan
        rows.append({"likelihood": native.get(mine, mine), "grid": theirs, "n": len(both), "spearman_rho": float(rho),
                     "spearman_p": float(p_value), "median_likelihood": native_median,
                     "median_likelihood_li24": li24_median, "median_grid": float(both[grid_column].median()),
                     "median_difference_li24": difference, "wilcoxon_p": wilcoxon_p})
    return pd.DataFrame(rows)
