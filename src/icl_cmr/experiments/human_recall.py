"""People and attention heads fitted in one CMR space, and compared (issue 16; ``fit_human_recall.py``).

:class:`HumanRecallSettings` holds everything the script's flags set, with the same defaults;
:func:`check_human_recall` reads and checks every input before any work (the grids, the head-score
files); :func:`run_human_recall` fits each person's conditional lag-CRP (psifr's PEERS or Morton 2013)
to CMR's conditional grid, fits every head of each model to the paper's grid of the same simulator,
compares the CMR-like people with each model's CMR-like heads, and follows the top-N CMR-like heads
over training. It writes nothing: :func:`human_recall_figures` draws the figures of a result, and the
caller saves the tables, :meth:`HumanRecallResult.fit_record` and the figures.

The science lives in :mod:`icl_cmr.humans.fits` (fits, tables, statistics) and
:mod:`icl_cmr.humans.recall` (psifr's data and lag-CRPs); docs/human_recall.md describes the method.

Adding an option (a second CMR recall rule, another way of fitting people): give
:class:`HumanRecallSettings` a field whose default is today's behaviour, check its value in
:meth:`HumanRecallSettings.check`, branch in :func:`fit_people_units` (people) or :func:`fit_model_heads`
(heads), which return the same tables whatever the method, and record it in
:meth:`HumanRecallResult.metadata_parameters`.

Examples
--------
>>> from icl_cmr.experiments.human_recall import HumanRecallSettings, run_human_recall
>>> result = run_human_recall(HumanRecallSettings(dataset="morton2013"))          # doctest: +SKIP
>>> result.people[["cmr_distance", "beta_enc"]].median()                          # doctest: +SKIP
>>> figures = human_recall_figures(result)          # {file name: Figure}           # doctest: +SKIP
"""
from __future__ import annotations

import logging
import numbers
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd
from matplotlib.figure import Figure

import numpy as np

from icl_cmr.cmr.model import RECALL_RULES
from icl_cmr.config import CHECKPOINT_INDICES, CMR_LIKE_THRESHOLD, DEFAULT_GRID_PATH, FIT_LAGS, HUMAN_FIT_LAGS
from icl_cmr.errors import InputError, check_integer_setting, check_non_negative_real_setting
from icl_cmr.files.memory import check_memory
from icl_cmr.figures.humans import parameters_figure, training_reference_figure, unit_fits_figure
from icl_cmr.files.grids import (conditional_grid_path, grid_recall_rule, read_cmr_grid, read_conditional_grid,
                                 stop_name)
from icl_cmr.files.outputs import REPO_ROOT, portable_path
from icl_cmr.files.scores import DEFAULT_SCORES_DIR, find_score_file, load_checkpoint_series, read_head_scores
from icl_cmr.fits.distance import CmrFit, CmrGrid, describe_grid_points, fit_heads, usable_grid_points
from icl_cmr.fits.analyses import check_top_sizes
from icl_cmr.fits.layers import DEFAULT_TOP_N
from icl_cmr.heads.results import HeadScores, checkpoint_step
from icl_cmr.humans.fits import (COMPARED_QUANTITIES, NEAR_BEST_TOLERANCE, GroupComparisonConfig, TopSetsOverTraining,
                                 fit_people, head_table, near_best_ranges, people_table, people_vs_heads_table,
                                 same_simulation_problem, top_sets_over_training)
from icl_cmr.humans.recall import (RECALL_UNITS, UnitLagCrps, lag_crps_by_unit, load_recall_data,
                                   resolve_dataset)
from icl_cmr.stats import bootstrap_memory_bytes

logger = logging.getLogger(__name__)

#: The command line's name of psifr's PEERS study (psifr calls it ``peers_notask``).
_DATASET_ALIASES = {"peers_notask": "peers"}

#: Largest share of a grid's points that may be NaN or flat on the fitting lags: a grid search missing more than half
#: of its points no longer spans the parameter space, and its fits would only look like answers.
MAX_UNUSABLE_SHARE = 0.5

#: What the output names of a recall rule carry after the dataset (none for [LI24]'s rule: the shipped names).
RULE_STEMS = {"li24": "", "standard": "_std"}


def default_grids(recall_rule: str) -> Tuple[Path, Path]:
    """The shipped grids of a recall rule: (people's grid, heads' grid).

    Under [LI24]'s rule people are fitted to the conditional lag-CRP grid and heads, as in [LI24], to the paper's
    lag-histogram grid of the same simulator. Under the standard rule both are fitted to the standard rule's
    conditional grid: a head attends to every earlier token, so its attention at a lag is a choice among lags that
    are all available, the quantity a conditional lag-CRP measures, and no lag-histogram grid of the standard rule
    is shipped (docs/human_recall.md).
    """
    if recall_rule == "standard":
        return conditional_grid_path("standard"), conditional_grid_path("standard")
    return conditional_grid_path("li24"), DEFAULT_GRID_PATH


def dataset_name(name: str) -> str:
    """The name a dataset goes by in file names and labels: lower case, ``peers`` for psifr's ``peers_notask``.

    Examples
    --------
    >>> dataset_name("Morton2013"), dataset_name("peers_notask")
    ('morton2013', 'peers')
    """
    key = str(name).lower()
    return _DATASET_ALIASES.get(key, key)


def _as_sequence(value: Any) -> Sequence:
    """``value`` itself when it is a sequence, else a one-item tuple (a notebook's ``models="gpt2-small"``)."""
    return (value,) if isinstance(value, (str, os.PathLike, numbers.Number)) else value


def _unique_names(names: Any) -> Tuple[str, ...]:
    """Names in their first order, each once."""
    return tuple(dict.fromkeys(_as_sequence(names)))


@dataclass(frozen=True)
class HumanRecallSettings:
    """A people-vs-heads run, as ``fit_human_recall.py``'s flags set it (same defaults; each field is named as
    its flag, ``--scores-dir`` being ``scores_dirs``). The output folders are the script's: a run writes nothing.

    Sequences may be given as lists and paths as strings: they are stored as tuples and ``Path``;
    repeated models are kept once.

    Attributes
    ----------
    dataset : str
        psifr's bundled study: ``"peers"`` (126 subjects) or ``"morton2013"`` (40); psifr's names work too
        (:func:`icl_cmr.humans.recall.resolve_dataset`).
    by : {"subject", "session", "all"}
        One CRP per subject, per (subject, session), or every list pooled; the statistics and the
        over-training reference need ``"subject"``.
    recall_rule : {"li24", "standard"}
        The CMR recall rule of the grids (:data:`icl_cmr.cmr.model.RECALL_RULES`): ``"li24"`` (the paper's: repeats
        allowed, 50-draw cap) or ``"standard"`` (recalled items excluded, recall ending by itself). It picks the
        default grids (:func:`default_grids`), the heads' fitting lags (-5..+5 under ``"li24"``, as [LI24]; those of
        people, -5..-1, +1..+5, under ``"standard"``, whose heads' grid is conditional) and the output names
        (``peers_std_*`` under ``"standard"``); each grid's sidecar must record this rule.
    crp_grid : Path or None
        The conditional lag-CRP grid people are fitted to (``est_cmr_crp.py --quantity conditional``); None: the
        rule's shipped grid.
    near_best : float
        Slack in D defining a fit's near-best grid points, whose parameter ranges the tables report.
    head_grid : Path or None
        The grid heads are fitted to, of the same simulator (the paper's CRP grid under ``"li24"``, the conditional
        grid under ``"standard"``); None: the rule's shipped grid. Read only when there are heads.
    models : tuple of str
        Models whose heads are compared (empty: people only).
    scores_dirs : tuple of Path
        Folders of head-score files, searched in order.
    training_models : tuple of str
        Models with the 16 training checkpoints, for the over-training reference ([LI24] Fig 7d-g).
    n_top : tuple of int
        Sizes of the top-N CMR-like head sets followed over training ([LI24]).
    threshold : float
        CMR distance below which a person or a head is CMR-like ([LI24]: 0.5).
    n_bootstrap : int
        Bootstrap resamples of each difference of medians.
    seed : int
        Bootstrap seed.
    """

    # people: the recall data, its units and their fits
    dataset: str = "peers"
    by: str = "subject"
    recall_rule: str = "li24"
    crp_grid: Optional[Path] = None
    near_best: float = NEAR_BEST_TOLERANCE
    # heads: which models, where their scores are, and the grid they are fitted to
    head_grid: Optional[Path] = None
    models: Tuple[str, ...] = ("toy_lm",)
    scores_dirs: Tuple[Path, ...] = (DEFAULT_SCORES_DIR,)
    training_models: Tuple[str, ...] = ()
    n_top: Tuple[int, ...] = DEFAULT_TOP_N
    # comparison of the CMR-like people with the CMR-like heads
    threshold: float = CMR_LIKE_THRESHOLD
    n_bootstrap: int = GroupComparisonConfig.n_bootstrap
    seed: int = 0

    def __post_init__(self) -> None:
        # Normalised here so that a notebook's lists and strings give the same settings as the command line.
        object.__setattr__(self, "dataset", dataset_name(self.dataset))
        people_grid, head_grid = default_grids(self.recall_rule if self.recall_rule in RECALL_RULES else "li24")
        object.__setattr__(self, "crp_grid", Path(people_grid if self.crp_grid is None else self.crp_grid))
        object.__setattr__(self, "head_grid", Path(head_grid if self.head_grid is None else self.head_grid))
        object.__setattr__(self, "models", _unique_names(self.models))
        object.__setattr__(self, "scores_dirs", tuple(Path(folder) for folder in _as_sequence(self.scores_dirs)))
        object.__setattr__(self, "training_models", _unique_names(self.training_models))
        object.__setattr__(self, "n_top", tuple(_as_sequence(self.n_top)))

    def check(self) -> None:
        """Raise :class:`InputError`, naming the parameter, unless every value is one the run accepts."""
        resolve_dataset(self.dataset)
        if self.by not in RECALL_UNITS:
            raise InputError(f"`by` must be one of {', '.join(RECALL_UNITS)}, got {self.by!r}", parameters=("by",))
        if self.recall_rule not in RECALL_RULES:
            raise InputError(f"`recall_rule` must be one of {', '.join(RECALL_RULES)}, got {self.recall_rule!r}",
                             parameters=("recall_rule",))
        for name, inclusive in (("threshold", False), ("near_best", True)):
            check_non_negative_real_setting(getattr(self, name), name, zero_allowed=inclusive)
        for name, low in (("n_bootstrap", 1), ("seed", 0)):
            check_integer_setting(getattr(self, name), name, low)
        if not self.n_top or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1
                                 for n in self.n_top):
            raise InputError(f"`n_top` must be one or more positive integers, got {list(self.n_top)}",
                             parameters=("n_top",))
        if (self.models or self.training_models) and not self.scores_dirs:
            raise InputError("`scores_dirs` is empty: the heads' score files are searched there",
                             parameters=("scores_dirs",))
        if self.by != "subject" and self.training_models:
            raise InputError("`training_models` draws the people's distribution: it needs `by` subject",
                             parameters=("training_models", "by"))

    def comparison_config(self) -> GroupComparisonConfig:
        """The statistics' settings (:func:`icl_cmr.humans.fits.compare_groups`)."""
        return GroupComparisonConfig(n_bootstrap=self.n_bootstrap, seed=self.seed)

    @property
    def stem(self) -> str:
        """Start of every output name: ``peers`` for one unit per subject, ``peers_session`` / ``peers_all``;
        ``peers_std`` (``peers_std_session``, ...) under the standard recall rule (with grids of stop probability 0;
        :meth:`output_stem`)."""
        return self.output_stem()

    def output_stem(self, stop_probability: float = 0.0) -> str:
        """Start of every output name for grids simulated with ``stop_probability``: :attr:`stem`, with the grids'
        ``stop<p>`` after the rule when p is not 0 (``peers_std_stop0.1``, as the grid's own name,
        :func:`icl_cmr.files.grids.stop_name`), so their outputs never replace those of stop probability 0."""
        stem = self.dataset + RULE_STEMS[self.recall_rule] + (f"_{stop_name(stop_probability)}"
                                                               if stop_probability else "")
        return stem if self.by == "subject" else f"{stem}_{self.by}"

    @property
    def head_fit_lags(self) -> np.ndarray:
        """Lags of the heads' fits: [LI24]'s -5..+5 on the lag histogram; the people's on a conditional grid (whose
        lag 0 is never possible)."""
        return FIT_LAGS if self.recall_rule == "li24" else HUMAN_FIT_LAGS


@dataclass
class HumanRecallInputs:
    """Every input of a run, read and checked (:func:`check_human_recall`).

    Attributes
    ----------
    settings : HumanRecallSettings
        The settings they were read for.
    people_grid : CmrGrid
        The conditional lag-CRP grid.
    head_grid : CmrGrid or None
        The paper's CRP grid; None when there are no heads (no models, no training models).
    scores : dict model -> HeadScores
        Each model's head scores.
    training : dict model -> list of HeadScores
        Each training model's scores at :data:`icl_cmr.config.CHECKPOINT_INDICES`, oldest first.
    """

    settings: HumanRecallSettings
    people_grid: CmrGrid
    head_grid: Optional[CmrGrid]
    scores: Dict[str, HeadScores]
    training: Dict[str, List[HeadScores]]

    @property
    def stop_probability(self) -> float:
        """The grids' stop probability (standard rule; the heads' grid, when read, has the same): 0 unless the
        people's grid records another (:data:`icl_cmr.fits.distance.OPTIONAL_SIMULATION_SETTINGS`)."""
        return float((self.people_grid.simulation or {}).get("stop_probability", 0.0))


@dataclass
class HumanRecallResult:
    """A finished run: the people's fits, the heads', their comparison and the heads over training.

    Attributes
    ----------
    settings : HumanRecallSettings
    inputs : HumanRecallInputs
        The grids and score files used (their paths go into the metadata).
    crps : UnitLagCrps
        Each unit's conditional lag-CRP, [U, K] at lags -8..+8.
    people_fit : CmrFit
        The units' fits, head axes [U], on :data:`icl_cmr.config.HUMAN_FIT_LAGS`.
    people : pandas.DataFrame
        :func:`icl_cmr.humans.fits.people_table`: one row per unit.
    heads : pandas.DataFrame or None
        :func:`icl_cmr.humans.fits.head_table` rows of every model, with ``scores_file``; None without models.
    comparison : pandas.DataFrame or None
        :func:`icl_cmr.humans.fits.people_vs_heads_table`; None without models, and unless ``by="subject"``
        (the statistics compare one unit per person).
    over_training : TopSetsOverTraining or None
        The top-N CMR-like heads of the training models over training; None without training models.
    wall_seconds : float
        Seconds of computing (inputs read before excluded).
    """

    settings: HumanRecallSettings
    inputs: HumanRecallInputs
    crps: UnitLagCrps
    people_fit: CmrFit
    people: pd.DataFrame
    heads: Optional[pd.DataFrame]
    comparison: Optional[pd.DataFrame]
    over_training: Optional[TopSetsOverTraining]
    wall_seconds: float = field(default=0.0)

    @property
    def stem(self) -> str:
        """Start of every output name (:meth:`HumanRecallSettings.output_stem` of the grids' stop probability)."""
        return self.settings.output_stem(self.inputs.stop_probability)

    @property
    def cmr_like_people(self) -> pd.DataFrame:
        """The rows of :attr:`people` with D below the threshold."""
        return self.people[self.people["cmr_like"]]

    def tables(self) -> Dict[str, pd.DataFrame]:
        """``{file name: table}`` of the CSV outputs, in the order they are listed in the metadata."""
        stem = self.stem
        tables = {f"{stem}_fits.csv": self.people}
        if self.heads is not None:
            tables[f"{stem}_head_fits.csv"] = self.heads
        if self.comparison is not None:
            tables[f"{stem}_vs_heads.csv"] = self.comparison
        return tables

    def metadata_parameters(self) -> Dict[str, Any]:
        """What the metadata records as the run's parameters: settings, inputs (as stored paths), fitting lags."""
        settings, inputs = self.settings, self.inputs
        config = settings.comparison_config()
        return {
            "dataset": settings.dataset, "psifr_dataset": resolve_dataset(settings.dataset), "by": settings.by,
            "recall_rule": settings.recall_rule,
            "threshold": settings.threshold, "people_grid": stored_path(settings.crp_grid),
            "people_grid_settings": inputs.people_grid.simulation, "people_fit_lags": self.people_fit.lags.tolist(),
            "head_grid": stored_path(settings.head_grid) if inputs.head_grid is not None else None,
            "head_fit_lags": settings.head_fit_lags.tolist(),
            "models": {model: stored_path(scores.path) for model, scores in inputs.scores.items()},
            "training_models": {model: [stored_path(scores.path) for scores in series]
                                for model, series in inputs.training.items()},
            "n_top": sorted(set(settings.n_top)), "n_bootstrap": settings.n_bootstrap,
            "near_best_tolerance": settings.near_best, "bootstrap_method": config.bootstrap_method,
            "confidence": config.confidence,
        }

    def fit_record(self, metadata: Dict[str, Any]) -> Dict[str, Any]:
        """The people's fits in the fit format of ``fit_attn_score.py`` (arrays [1, U, ...], as the authors'
        fits of one set of heads), with the units, their full CRPs and counts, and ``metadata``."""
        fit, crps = self.people_fit, self.crps
        record = {key: value[None] for key, value in fit.as_authors_dict().items()}   # [1, U, ...]
        record.update(labels=crps.labels[None], fit_lags=fit.lags, fitted_param_index=fit.param_index[None],
                      units=crps.units.to_dict(orient="list"), crp_lags=crps.lags, crp=crps.prob,
                      crp_actual=crps.actual, crp_possible=crps.possible, metadata=metadata)
        return record


def stored_path(path: "str | Path | None") -> Optional[str]:
    """A path as metadata stores it: relative to the repository root, also when it lies beside the checkout
    (the authors' files in ``../shared/official``), so shipped files carry no machine paths."""
    if path is None:
        return None
    portable = portable_path(path)
    return portable if not Path(portable).is_absolute() else Path(os.path.relpath(portable, REPO_ROOT)).as_posix()


def find_scores(scores_dirs: Sequence[Path], model: str, checkpoint: Optional[int] = None) -> Path:
    """The score file of ``model`` (at ``checkpoint``) in the first of ``scores_dirs`` that has one."""
    problems = []
    for folder in scores_dirs:
        try:
            return find_score_file(folder, model, checkpoint)
        except InputError as err:
            problems.append(err)
    if len(problems) == 1:
        raise InputError(str(problems[0]), parameters=problems[0].parameters)
    raise InputError(f"no head-score file for model {model!r} in {', '.join(map(str, scores_dirs))}")


def check_human_recall(settings: HumanRecallSettings) -> HumanRecallInputs:
    """Check the settings and read every input before any work: the grids, the head-score files.

    Returns
    -------
    HumanRecallInputs

    Raises
    ------
    InputError
        A bad setting (naming it), a missing or damaged grid or score file, or grids that are not of the
        same simulator.
    """
    settings.check()
    people_grid = read_conditional_grid(settings.crp_grid, recall_rule=settings.recall_rule)
    check_grid_rule(settings.crp_grid, settings.recall_rule, "crp_grid")
    check_grid_points(people_grid, HUMAN_FIT_LAGS, "crp_grid")
    head_grid: Optional[CmrGrid] = None
    if settings.models or settings.training_models:
        # [LI24] fit heads to the lag histogram; under the standard rule heads share the people's conditional grid.
        head_grid = (read_cmr_grid(settings.head_grid, parameter="head_grid") if settings.recall_rule == "li24" else
                     read_conditional_grid(settings.head_grid, parameter="head_grid", recall_rule=settings.recall_rule))
        check_grid_rule(settings.head_grid, settings.recall_rule, "head_grid")
        check_grid_points(head_grid, settings.head_fit_lags, "head_grid")
        problem = same_simulation_problem(people_grid, head_grid)
        if problem is not None:
            shipped = default_grids(settings.recall_rule)
            same = ("the same conditional grid" if settings.recall_rule == "standard" else
                    "its lag-histogram grid, cmr_crp_avg_*.npy")
            hint = (f"; `head_grid` is the shipped grid: pass `head_grid` too, the heads' grid of the same simulation "
                    f"as `crp_grid` ({same})" if settings.head_grid == shipped[1] and settings.crp_grid != shipped[0]
                    else "")
            raise InputError(f"`head_grid` {settings.head_grid} and `crp_grid` {settings.crp_grid} are not grids of "
                             f"the same simulator: {problem}{hint}", parameters=("head_grid", "crp_grid"))
        if None in (people_grid.simulation, head_grid.simulation):
            logger.warning("cannot check that %s and %s come from the same simulation settings (no sidecar "
                           "metadata); their axes agree", settings.crp_grid, settings.head_grid)
    scores = {model: read_head_scores(find_scores(settings.scores_dirs, model)) for model in settings.models}
    training = {}
    for model in settings.training_models:
        folder = Path(find_scores(settings.scores_dirs, model, CHECKPOINT_INDICES[-1])).parent.parent
        training[model] = load_checkpoint_series(folder, model, CHECKPOINT_INDICES)
    if training:  # top-N sets pooled over the training models' heads: at most as many as there are
        check_top_sizes(settings.n_top, {model: int(series[-1].matching_score.size) for model, series in
                                         training.items()})
    if scores and settings.by == "subject":
        # The people-vs-heads bootstrap resamples every head's value at once (the people's come on top).
        n_heads = sum(int(s.matching_score.size) for s in scores.values())
        check_memory(bootstrap_memory_bytes(settings.n_bootstrap, n_heads, batch=None), "cpu",
                     f"the bootstrap of `n_bootstrap` {settings.n_bootstrap} resamples of {n_heads} heads",
                     ("n_bootstrap",))
    return HumanRecallInputs(settings, people_grid, head_grid, scores, training)


def check_grid_rule(path: Path, recall_rule: str, parameter: str) -> None:
    """Raise :class:`InputError` naming ``parameter`` unless the grid at ``path`` was made under ``recall_rule``
    (its sidecar's record, :func:`icl_cmr.files.grids.grid_recall_rule`)."""
    made_with = grid_recall_rule(path)
    if made_with != recall_rule:
        raise InputError(f"`{parameter}` {path} was made under the {made_with} recall rule, but `recall_rule` is "
                         f"{recall_rule}: pass `recall_rule` {made_with} to fit with this grid, or a grid of the "
                         f"{recall_rule} rule", parameters=(parameter, "recall_rule"))


def check_grid_points(grid: CmrGrid, fit_lags: np.ndarray, parameter: str) -> None:
    """Refuse a grid of which more than :data:`MAX_UNUSABLE_SHARE` of the points are NaN or flat on ``fit_lags``
    (:func:`icl_cmr.fits.distance.usable_grid_points`), naming ``parameter``. Fewer are left to the fits, which skip
    them with a warning (:func:`icl_cmr.fits.distance.fit_heads`).

    Raises
    ------
    InputError
        With the count, the first such points and why they are NaN.
    """
    unusable = ~usable_grid_points(grid, fit_lags)
    share = unusable.mean()
    if share <= MAX_UNUSABLE_SHARE:
        return
    problem = (f"{int(unusable.sum())} of {unusable.size} points of `{parameter}` {grid.source} are NaN or flat on the "
               f"fitting lags {fit_lags[0]}..{fit_lags[-1]}{'' if 0 in fit_lags else ' except 0'} ((beta_enc, beta_rec, gamma_ft) = "
               f"{describe_grid_points(grid, unusable)}): no simulated recall made a transition there")
    raise InputError(f"{problem}; a grid search without {share:.0%} of its grid cannot be trusted: remake the "
                     "grid with more trials or a lower stop probability (est_cmr_crp.py --n_trials, "
                     "--stop_probability)", parameters=(parameter,))


def fit_people_units(settings: HumanRecallSettings, crps: UnitLagCrps,
                     grid: CmrGrid) -> Tuple[CmrFit, pd.DataFrame]:
    """Fit every unit's conditional lag-CRP to the conditional grid (CMR distance, grid search).

    Returns
    -------
    fit : CmrFit
        Head axes [U].
    table : pandas.DataFrame
        :func:`icl_cmr.humans.fits.people_table`, with the near-best ranges.
    """
    fit = fit_people(crps, grid)
    near = near_best_ranges(crps.prob, crps.lags, grid, HUMAN_FIT_LAGS, settings.near_best)
    return fit, people_table(crps, fit, settings.threshold, near)


def fit_model_heads(settings: HumanRecallSettings, model: str, scores: HeadScores, grid: CmrGrid) -> pd.DataFrame:
    """Every head of one model fitted as in [LI24] (lags -5..+5; under the standard rule the people's lags), with
    its near-best ranges and score file."""
    fit = fit_heads(scores.crp, grid, attn_lags=scores.lags, fit_lags=settings.head_fit_lags)
    near = near_best_ranges(scores.crp.reshape(-1, scores.lags.size), scores.lags, grid, fit.lags,
                            settings.near_best)
    return head_table(model, scores, fit, settings.threshold, near).assign(scores_file=stored_path(scores.path))


def run_human_recall(settings: HumanRecallSettings, inputs: Optional[HumanRecallInputs] = None) -> HumanRecallResult:
    """Fit people and heads in one CMR space and compare them.

    Parameters
    ----------
    settings : HumanRecallSettings
    inputs : HumanRecallInputs, optional
        From :func:`check_human_recall` with the same settings; read here when not given.

    Returns
    -------
    HumanRecallResult
    """
    if inputs is None:
        inputs = check_human_recall(settings)
    elif inputs.settings != settings:
        raise ValueError("inputs were read for other settings: pass check_human_recall(settings)")
    started = time.perf_counter()
    crps = lag_crps_by_unit(load_recall_data(resolve_dataset(settings.dataset)), settings.by,
                            dataset=settings.dataset)
    people_fit, people = fit_people_units(settings, crps, inputs.people_grid)
    logger.info("%s: %d units (%s); %d fitted, %d with D < %g; medians of those: D %.3f, beta_enc %.2f, "
                "beta_rec %.2f, gamma_ft %.2f", settings.dataset, len(people), settings.by,
                int(people["cmr_distance"].notna().sum()), int(people["cmr_like"].sum()), settings.threshold,
                *people.loc[people["cmr_like"], list(COMPARED_QUANTITIES)].median())

    heads = pd.concat([fit_model_heads(settings, model, scores, inputs.head_grid)
                       for model, scores in inputs.scores.items()], ignore_index=True) if inputs.scores else None
    comparison = None
    if heads is not None and settings.by == "subject":
        comparison = people_vs_heads_table(people, heads, settings.threshold, settings.comparison_config())
    over_training = None
    if inputs.training:
        over_training = top_sets_over_training(inputs.training, inputs.head_grid, settings.n_top,
                                               steps=[checkpoint_step(k) for k in CHECKPOINT_INDICES],
                                               fit_lags=settings.head_fit_lags)
    return HumanRecallResult(settings, inputs, crps, people_fit, people, heads, comparison, over_training,
                             wall_seconds=time.perf_counter() - started)


def human_recall_figures(result: HumanRecallResult) -> Dict[str, Figure]:
    """The run's figures, ``{file name: Figure}``: the parameter distributions (not with ``by="all"``: one
    unit), a page of units with their fits, and the over-training reference when there are training models."""
    settings, stem = result.settings, result.stem
    figures = {}
    if settings.by != "all":
        figures[f"{stem}_parameters.pdf"] = parameters_figure(
            result.people, result.heads, settings.threshold, settings.dataset, settings.recall_rule)
    figures[f"{stem}_crp_fits.pdf"] = unit_fits_figure(result.crps, result.people_fit, result.people,
                                                                recall_rule=settings.recall_rule)
    if result.over_training is not None:
        figures[f"{stem}_fig7_human_reference.pdf"] = training_reference_figure(
            result.over_training, result.cmr_like_people, settings.dataset, list(result.inputs.training),
            settings.recall_rule)
    return figures
