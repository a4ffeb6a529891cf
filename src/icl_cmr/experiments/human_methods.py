"""People against heads under each way of fitting people (issue 24): one table per dataset.

Three methods put people on [LI24]'s parameter scale beside the heads (:data:`icl_cmr.humans.fits.METHODS`):

* ``grid_li24``: ``fit_human_recall.py`` (people on the conditional grid of [LI24]'s recall rule, heads on the
  paper's lag-histogram grid): ``<dataset>_fits.csv``, ``<dataset>_head_fits.csv``;
* ``grid_standard``: ``fit_human_recall.py --recall_rule standard`` (people and heads on the standard rule's
  conditional grid): ``<dataset>_std_fits.csv``, ``<dataset>_std_head_fits.csv``;
* ``likelihood``: standard CMR fitted to each person's recall sequences by maximum likelihood
  (:mod:`icl_cmr.experiments.human_likelihood`, ``<dataset>_likelihood_fits.csv``), B_enc converted exactly to
  [LI24]'s beta_enc (:func:`icl_cmr.cmr.scales.li24_encoding_rate`), against the heads of ``grid_li24``.

:func:`run_method_comparison` reads those tables (nothing is refitted), compares the CMR-like people with each
model's CMR-like heads under every method (:func:`icl_cmr.humans.fits.people_vs_heads_table`,
:func:`~icl_cmr.humans.fits.likelihood_vs_heads_table`; same bootstrap settings as ``fit_human_recall.py``, so the
grid rows equal its ``*_vs_heads.csv``) and correlates each person's parameters across methods
(:func:`~icl_cmr.humans.fits.method_correlations`), and lists each person's parameters under every method
(:func:`~icl_cmr.humans.fits.method_people_table`). :func:`method_comparison_outputs` queues
``<dataset>_methods_vs_heads.csv``, ``<dataset>_methods_correlations.csv``, ``<dataset>_methods_people.csv`` and
``<dataset>_methods_metadata.json``.

Examples
--------
>>> from icl_cmr.experiments.human_methods import MethodComparisonSettings, run_method_comparison
>>> result = run_method_comparison(MethodComparisonSettings(dataset="peers"))          # doctest: +SKIP
>>> result.vs_heads.query("quantity == 'beta_enc'")                                    # doctest: +SKIP
"""
from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import pandas as pd

from icl_cmr.config import CMR_LIKE_THRESHOLD
from icl_cmr.errors import InputError, check_integer_setting, check_non_negative_real_setting
from icl_cmr.experiments.human_recall import RULE_STEMS, dataset_name, stored_path
from icl_cmr.files.outputs import PendingWrites, searched_at
from icl_cmr.files.reading import load_json, read_text
from icl_cmr.files.score_format import plain_metadata
from icl_cmr.files.scores import DEFAULT_SCORES_DIR
from icl_cmr.files.writing import make_metadata
from icl_cmr.humans.fits import (METHODS, GroupComparisonConfig, likelihood_vs_heads_table, method_correlations,
                                 method_people_table, people_vs_heads_table)
from icl_cmr.humans.recall import resolve_dataset

logger = logging.getLogger(__name__)

PRODUCER = "icl_cmr.experiments.human_methods"

#: Largest seed (numpy's generators take seeds in [0, 2^32 - 1], as every ``--seed`` of the project).
MAX_SEED = 2 ** 32 - 1

#: Columns each table must have, and the range of the values in them (NaN allowed: a unit or head not fitted).
_GRID_COLUMNS = {"cmr_distance": (0.0, math.inf), "beta_enc": (0.0, 1.0), "beta_rec": (0.0, 1.0),
                 "gamma_ft": (0.0, 1.0)}
TABLE_COLUMNS: Dict[str, Dict[str, Tuple[float, float]]] = {
    "grid_li24_people": {"subject": (-math.inf, math.inf), **_GRID_COLUMNS},
    "grid_li24_heads": {"model": (), **_GRID_COLUMNS},
    "grid_standard_people": {"subject": (-math.inf, math.inf), **_GRID_COLUMNS},
    "grid_standard_heads": {"model": (), **_GRID_COLUMNS},
    "likelihood_people": {"subject": (-math.inf, math.inf), "B_enc": (0.0, 1.0), "B_rec": (0.0, 1.0),
                          "Lfc": (0.0, math.inf)},
}

#: The recall rule a grid method's tables must have been made under (their metadata's ``recall_rule``).
METHOD_RULES = {"grid_li24": "li24", "grid_standard": "standard"}


@dataclass(frozen=True)
class MethodComparisonSettings:
    """Which people's tables to compare, and the statistics' settings (``fit_human_recall.py``'s defaults).

    Attributes
    ----------
    dataset : str
        ``"peers"`` or ``"morton2013"`` (the tables' stem).
    human_dir : Path
        Folder of the tables (``fit_human_recall.py``'s ``--out-dir``, the likelihood fits' ``out_dir``).
    threshold : float
        CMR distance below which a person or a head is CMR-like ([LI24]: 0.5).
    n_bootstrap : int
        Bootstrap resamples of each difference of medians.
    seed : int
        Bootstrap seed.
    """

    dataset: str = "peers"
    human_dir: Path = DEFAULT_SCORES_DIR / "human"
    threshold: float = CMR_LIKE_THRESHOLD
    n_bootstrap: int = GroupComparisonConfig.n_bootstrap
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", dataset_name(self.dataset))
        object.__setattr__(self, "human_dir", Path(self.human_dir))

    def check(self) -> None:
        """Raise :class:`InputError`, naming the parameter, unless every value is one the comparison accepts."""
        resolve_dataset(self.dataset)
        check_non_negative_real_setting(self.threshold, "threshold", zero_allowed=False)
        for name, low, high in (("n_bootstrap", 1, None), ("seed", 0, MAX_SEED)):
            check_integer_setting(getattr(self, name), name, low, high)

    def table_paths(self) -> Dict[str, Path]:
        """``{role: path}`` of the tables a comparison reads."""
        folder, stem = self.human_dir, self.dataset
        return {"grid_li24_people": folder / f"{stem}{RULE_STEMS['li24']}_fits.csv",
                "grid_li24_heads": folder / f"{stem}{RULE_STEMS['li24']}_head_fits.csv",
                "grid_standard_people": folder / f"{stem}{RULE_STEMS['standard']}_fits.csv",
                "grid_standard_heads": folder / f"{stem}{RULE_STEMS['standard']}_head_fits.csv",
                "likelihood_people": folder / f"{stem}_likelihood_fits.csv"}


@dataclass
class MethodComparison:
    """A finished comparison.

    Attributes
    ----------
    settings : MethodComparisonSettings
    vs_heads : pandas.DataFrame
        Column ``method`` (:data:`~icl_cmr.humans.fits.METHODS`), then the columns of
        :func:`~icl_cmr.humans.fits.people_vs_heads_table` (the likelihood's rows: beta_enc only, no shares).
    correlations : pandas.DataFrame
        :func:`~icl_cmr.humans.fits.method_correlations` of every pair of methods.
    people : pandas.DataFrame
        :func:`~icl_cmr.humans.fits.method_people_table`: each person's parameters under every method.
    wall_seconds : float
    """

    settings: MethodComparisonSettings
    vs_heads: pd.DataFrame
    correlations: pd.DataFrame
    people: pd.DataFrame
    wall_seconds: float = 0.0


def read_table(path: Path, role: str) -> pd.DataFrame:
    """One CSV table the comparison reads; a missing or unreadable one is named with the run that makes it."""
    if not path.is_file():
        maker = ("fit_human_recall.py --recall_rule standard" if role.startswith("grid_standard") else
                 "fit_human_recall.py" if role.startswith("grid_li24") else
                 "icl_cmr.experiments.human_likelihood (docs/human_recall.md)")
        raise InputError(f"`human_dir` has no {path.name} ({role.replace('_', ' ')}){searched_at(path)}: make it "
                         f"with {maker}",
                         parameters=("human_dir",))
    try:
        return pd.read_csv(io.StringIO(read_text(path)))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"`human_dir`: {path} is not a readable CSV table: {err}", parameters=("human_dir",)) from None


def check_table(table: pd.DataFrame, path: Path, role: str) -> None:
    """Raise :class:`InputError` naming ``human_dir`` unless ``table`` has the columns of :data:`TABLE_COLUMNS`
    ``[role]`` with numbers in their ranges (NaN allowed) and at least one row."""
    columns = TABLE_COLUMNS[role]
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise InputError(f"`human_dir`: {path} ({role.replace('_', ' ')}) has no column {', '.join(missing)}",
                         parameters=("human_dir",))
    if table.empty:
        raise InputError(f"`human_dir`: {path} ({role.replace('_', ' ')}) has no rows", parameters=("human_dir",))
    for column, span in columns.items():
        if not span:   # names
            continue
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        not_number = table[column].notna().to_numpy() & np.isnan(values)
        outside = ~np.isnan(values) & ((values < span[0]) | (values > span[1]))
        if not_number.any() or outside.any():
            row = int(np.flatnonzero(not_number | outside)[0])
            raise InputError(f"`human_dir`: {path} column {column} row {row + 1} holds {table[column].tolist()[row]!r}; "
                             f"expected a number in [{span[0]:g}, {span[1]:g}] (or empty)", parameters=("human_dir",))


def recorded_rule(metadata_path: Path) -> Optional[str]:
    """The ``recall_rule`` a ``fit_human_recall.py`` run's metadata records: ``"li24"`` when it records none (runs
    before the standard rule existed), None when there is no metadata file."""
    if not metadata_path.is_file():
        return None
    meta = load_json(metadata_path)
    parameters = meta.get("parameters") if isinstance(meta, dict) else None
    return parameters.get("recall_rule", "li24") if isinstance(parameters, dict) else None


def check_tables_agree(settings: MethodComparisonSettings, tables: Mapping[str, pd.DataFrame]) -> None:
    """Refuse a grid method's tables made under the other recall rule (their metadata's record) and heads tables of
    different models; warn when the people's tables cover different people.

    Raises
    ------
    InputError
        Naming ``human_dir``.
    """
    for method, rule in METHOD_RULES.items():
        meta_path = settings.human_dir / f"{settings.dataset}{RULE_STEMS[rule]}_metadata.json"
        made_with = recorded_rule(meta_path)
        if made_with not in (None, rule):
            raise InputError(f"`human_dir`: {meta_path} says its tables were made under the {made_with} recall rule, "
                             f"but method {method} reads them as the {rule} rule's", parameters=("human_dir",))
    models = {method: set(tables[f"{method}_heads"]["model"].astype(str)) for method in METHOD_RULES}
    if models["grid_li24"] != models["grid_standard"]:
        only = {method: sorted(found - models[other]) for (method, found), other in
                zip(models.items(), reversed(list(models)))}
        raise InputError("`human_dir`: the heads tables cover different models ("
                         + "; ".join(f"only in {method}: {', '.join(names)}" for method, names in only.items() if names)
                         + "), so the methods would compare people with different heads; rerun fit_human_recall.py "
                         "with the same models under both rules", parameters=("human_dir",))
    people = {method: set(tables[f"{method}_people"]["subject"]) for method in METHODS}
    everyone = set.union(*people.values())
    for method, found in people.items():
        if found != everyone:
            logger.warning("%s covers %d of the %d people of the three methods' tables: the comparisons and "
                           "correlations of %s use fewer people", method, len(found & everyone), len(everyone), method)


def run_method_comparison(settings: MethodComparisonSettings) -> MethodComparison:
    """Compare people with heads under every method and people across methods (module docstring).

    Raises
    ------
    InputError
        A bad setting (naming it); a table missing or unreadable (naming the run that makes it), without the columns
        the comparison reads or with values out of range; grid tables made under the other rule, or heads tables of
        different models (:func:`check_tables_agree`).
    """
    settings.check()
    started = time.perf_counter()
    paths = settings.table_paths()
    tables = {role: read_table(path, role) for role, path in paths.items()}
    for role, table in tables.items():
        check_table(table, paths[role], role)
    check_tables_agree(settings, tables)
    config = GroupComparisonConfig(n_bootstrap=settings.n_bootstrap, seed=settings.seed)
    parts = []
    for method in ("grid_li24", "grid_standard"):
        table = people_vs_heads_table(tables[f"{method}_people"], tables[f"{method}_heads"], settings.threshold,
                                      config)
        parts.append(table.assign(method=method))
    likelihood = likelihood_vs_heads_table(tables["likelihood_people"], tables["grid_li24_heads"],
                                           settings.threshold, config)
    parts.append(likelihood.assign(method="likelihood"))
    vs_heads = pd.concat(parts, ignore_index=True)
    vs_heads = vs_heads[["method"] + [c for c in vs_heads.columns if c != "method"]]
    people = {method: tables[f"{method}_people"] for method in METHODS}
    return MethodComparison(settings, vs_heads, method_correlations(people), method_people_table(people),
                            wall_seconds=time.perf_counter() - started)


def method_comparison_outputs(result: MethodComparison, out_dir: "str | Path") -> PendingWrites:
    """Queue ``<dataset>_methods_vs_heads.csv``, ``<dataset>_methods_correlations.csv``,
    ``<dataset>_methods_people.csv`` and ``<dataset>_methods_metadata.json`` in ``out_dir``; the caller commits them,
    all or nothing."""
    out_dir, stem = Path(out_dir), f"{result.settings.dataset}_methods"
    pending = PendingWrites()
    pending.text(out_dir / f"{stem}_vs_heads.csv", result.vs_heads.to_csv(index=False))
    pending.text(out_dir / f"{stem}_correlations.csv", result.correlations.to_csv(index=False))
    pending.text(out_dir / f"{stem}_people.csv", result.people.to_csv(index=False))
    parameters: Dict[str, Any] = {**asdict(result.settings), "human_dir": stored_path(result.settings.human_dir),
                                  "inputs": {role: stored_path(path)
                                             for role, path in result.settings.table_paths().items()},
                                  "methods": list(METHODS)}
    metadata = plain_metadata(make_metadata(PRODUCER, parameters, seed=result.settings.seed,
                                            wall_time_s=round(result.wall_seconds, 1)))
    pending.json(out_dir / f"{stem}_metadata.json", {**metadata, "files": [path.name for path in pending.paths]})
    return pending


__all__ = ["MethodComparisonSettings", "MethodComparison", "run_method_comparison", "method_comparison_outputs"]
