"""Standard CMR fitted to each person by maximum likelihood, beside the grid fits (issue 24).

:class:`HumanLikelihoodSettings` holds the run's choices; :func:`run_human_likelihood` fits every person of
psifr's PEERS or Morton 2013 data (:mod:`icl_cmr.humans.likelihood_fits`, the model in
:mod:`icl_cmr.humans.likelihood`) and, when the grid fits of the same people are there
(``saved_scores/human/<dataset>_fits.csv``, made by ``fit_human_recall.py``), compares the two methods.
It writes nothing: :func:`likelihood_outputs` queues the tables and their metadata in a
:class:`~icl_cmr.files.outputs.PendingWrites` for the caller to commit. docs/human_recall.md, section
"Standard CMR fitted by likelihood", gives the commands and the results.

Examples
--------
>>> from icl_cmr.experiments.human_likelihood import HumanLikelihoodSettings, run_human_likelihood
>>> result = run_human_likelihood(HumanLikelihoodSettings(dataset="peers", n_subjects=3))    # doctest: +SKIP
>>> result.table[["subject", "B_enc", "beta_enc_li24", "neg_log_likelihood"]]                 # doctest: +SKIP
>>> likelihood_outputs(result, "saved_scores/human").commit()                                  # doctest: +SKIP
"""
from __future__ import annotations

import io
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import pandas as pd
from tqdm.auto import tqdm

from icl_cmr.errors import InputError
from icl_cmr.experiments.human_recall import dataset_name, stored_path
from icl_cmr.files.outputs import PendingWrites
from icl_cmr.files.reading import read_text
from icl_cmr.files.scores import DEFAULT_SCORES_DIR
from icl_cmr.files.score_format import plain_metadata
from icl_cmr.files.writing import make_metadata
from icl_cmr.humans.likelihood import MIN_STOP, MIN_SUPPORT, subject_recall_lists
from icl_cmr.humans.likelihood_fits import LikelihoodFitConfig, compare_methods, fit_row, fit_subject
from icl_cmr.humans.recall import load_recall_data, resolve_dataset

logger = logging.getLogger(__name__)

PRODUCER = "icl_cmr.experiments.human_likelihood"
_FIT_DEFAULTS = LikelihoodFitConfig()


@dataclass(frozen=True)
class HumanLikelihoodSettings:
    """A likelihood-fitting run.

    Attributes
    ----------
    dataset : str
        ``"peers"`` (126 subjects) or ``"morton2013"`` (40); psifr's names work too.
    n_subjects : int, optional
        Fit only the first ``n_subjects`` subjects in ascending subject number (None: all).
    free_lcf, free_primacy, popsize, maxiter, tol, atol, n_starts
        The search (:class:`icl_cmr.humans.likelihood_fits.LikelihoodFitConfig`, same defaults).
    seed : int
        Each person's searches are seeded with ``(seed, subject)``.
    grid_fits : Path, optional
        The grid fits of the same people to compare with; default ``saved_scores/human/<dataset>_fits.csv``
        (skipped with a warning when absent).
    """

    dataset: str = "peers"
    n_subjects: Optional[int] = None
    free_lcf: bool = _FIT_DEFAULTS.free_lcf
    free_primacy: bool = _FIT_DEFAULTS.free_primacy
    popsize: int = _FIT_DEFAULTS.popsize
    maxiter: int = _FIT_DEFAULTS.maxiter
    tol: float = _FIT_DEFAULTS.tol
    atol: float = _FIT_DEFAULTS.atol
    n_starts: int = _FIT_DEFAULTS.n_starts
    seed: int = 0
    grid_fits: Optional[Path] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", dataset_name(self.dataset))
        if self.grid_fits is None:
            object.__setattr__(self, "grid_fits", DEFAULT_SCORES_DIR / "human" / f"{self.dataset}_fits.csv")
        object.__setattr__(self, "grid_fits", Path(self.grid_fits))

    def fit_config(self) -> LikelihoodFitConfig:
        return LikelihoodFitConfig(free_lcf=self.free_lcf, free_primacy=self.free_primacy, popsize=self.popsize,
                                   maxiter=self.maxiter, tol=self.tol, atol=self.atol, n_starts=self.n_starts)

    def check(self) -> None:
        """Raise :class:`InputError`, naming the setting, for a value the run cannot use."""
        resolve_dataset(self.dataset)
        if self.n_subjects is not None and (isinstance(self.n_subjects, bool) or not isinstance(self.n_subjects, int)
                                            or self.n_subjects < 1):
            raise InputError(f"`n_subjects` must be a positive integer or None, got {self.n_subjects!r}",
                             parameters=("n_subjects",))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"`seed` must be an integer >= 0, got {self.seed!r}", parameters=("seed",))
        self.fit_config().check()

    @property
    def stem(self) -> str:
        """Start of the output names: ``peers_likelihood`` (``_first<N>`` for a subset, ``_free_lcf`` /
        ``_primacy`` for the variants)."""
        parts = [self.dataset, "likelihood"] + (["free_lcf"] if self.free_lcf else []) + \
            (["primacy"] if self.free_primacy else [])
        if self.n_subjects is not None:
            parts.append(f"first{self.n_subjects}")
        return "_".join(parts)


@dataclass
class HumanLikelihoodResult:
    """A finished run.

    Attributes
    ----------
    settings : HumanLikelihoodSettings
    table : pandas.DataFrame
        One row per person (:func:`icl_cmr.humans.likelihood_fits.fit_row`), with ``dataset``.
    comparison : pandas.DataFrame or None
        :func:`icl_cmr.humans.likelihood_fits.compare_methods` against the grid fits; None without them.
    n_items : int
    wall_seconds, cpu_seconds : float
        The fits' wall-clock and process CPU time.
    """

    settings: HumanLikelihoodSettings
    table: pd.DataFrame
    comparison: Optional[pd.DataFrame]
    n_items: int
    wall_seconds: float
    cpu_seconds: float

    def metadata_parameters(self) -> Dict[str, Any]:
        """The settings and the model's fixed choices, for the metadata."""
        config = self.settings.fit_config()
        settings = {**asdict(self.settings), "grid_fits": stored_path(self.settings.grid_fits)}
        return {**settings, "psifr_dataset": resolve_dataset(self.settings.dataset), "n_items": self.n_items,
                "free": list(config.free), "tied": {} if config.free_lcf else {"Lcf": "Lfc"},
                "fixed": {} if config.free_primacy else {"P1": 0.0, "P2": 0.0},
                "bounds": {name: list(config.bounds[name]) for name in config.free},
                "min_support": MIN_SUPPORT, "min_stop": MIN_STOP, "optimizer": "scipy.optimize.differential_evolution "
                "(vectorized, updating='deferred', polish=L-BFGS-B), choice and stop parts fitted separately",
                "subject_order": "ascending subject number", "scored_recalls": "first recalls of studied items "
                "(repeats and intrusions removed, as cymr's prepare_lists(clean=True))"}


def read_grid_fits(path: Path) -> pd.DataFrame:
    """The grid fits' table (``fit_human_recall.py``'s ``<dataset>_fits.csv``)."""
    try:
        return pd.read_csv(io.StringIO(read_text(path)))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"`grid_fits` {path} is not a readable CSV table: {err}", parameters=("grid_fits",)) from None


def run_human_likelihood(settings: HumanLikelihoodSettings, progress: bool = True) -> HumanLikelihoodResult:
    """Fit every person (or the first ``n_subjects``) by maximum likelihood and compare with the grid fits.

    Returns
    -------
    HumanLikelihoodResult
    """
    settings.check()
    grid = read_grid_fits(settings.grid_fits) if settings.grid_fits.is_file() else None
    if grid is None:
        logger.warning("no grid fits at %s: the methods are not compared", settings.grid_fits)
    lists = subject_recall_lists(load_recall_data(resolve_dataset(settings.dataset)))
    subjects = sorted(lists)[:settings.n_subjects]
    config = settings.fit_config()
    started, cpu_started = time.perf_counter(), time.process_time()
    rows = []
    for subject in tqdm(subjects, desc=f"{settings.dataset} likelihood fits", disable=not progress):
        # One person at a time: each search is vectorised over its population already.
        fit = fit_subject(lists[subject], config, seed=(settings.seed, int(subject)))
        rows.append(fit_row(subject, fit))
        logger.info("subject %s: B_enc %.3f (beta_enc %.3f), B_rec %.3f, Lfc %.3f, -logL %.2f, %.1f s%s", subject,
                    fit.parameters["B_enc"], rows[-1]["beta_enc_li24"], fit.parameters["B_rec"],
                    fit.parameters["Lfc"], fit.neg_log_likelihood, fit.seconds,
                    f", at bounds: {', '.join(fit.at_bounds)}" if fit.at_bounds else "")
    table = pd.DataFrame(rows)
    table.insert(0, "dataset", settings.dataset)
    comparison = compare_methods(table, grid) if grid is not None else None
    return HumanLikelihoodResult(settings, table, comparison, n_items=lists[subjects[0]].n_items,
                                 wall_seconds=time.perf_counter() - started,
                                 cpu_seconds=time.process_time() - cpu_started)


def likelihood_outputs(result: HumanLikelihoodResult, out_dir: "str | Path") -> PendingWrites:
    """Queue ``<stem>_fits.csv``, ``<stem>_vs_grid.csv`` (with grid fits) and ``<stem>_metadata.json`` in
    ``out_dir`` (e.g. ``peers_likelihood_fits.csv``); the caller commits them, all or nothing."""
    out_dir, stem = Path(out_dir), result.settings.stem
    pending = PendingWrites()
    pending.text(out_dir / f"{stem}_fits.csv", result.table.to_csv(index=False))
    if result.comparison is not None:
        pending.text(out_dir / f"{stem}_vs_grid.csv", result.comparison.to_csv(index=False))
    metadata = plain_metadata(make_metadata(PRODUCER, result.metadata_parameters(), seed=result.settings.seed,
                                            wall_time_s=round(result.wall_seconds, 1),
                                            cpu_time_s=round(result.cpu_seconds, 1)))
    pending.json(out_dir / f"{stem}_metadata.json", {**metadata, "files": [path.name for path in pending.paths]})
    return pending
