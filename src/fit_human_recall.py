"""Fit the same CMR to human free recall and to attention heads, and compare them (issue 16).

Each person's conditional lag-CRP (psifr's, from its bundled PEERS or Morton 2013 data) is fitted to
the conditional lag-CRP of CMR's own simulated recalls (``saved_crps/cmr_cond_crp_avg_20_11.npy``,
made by ``est_cmr_crp.py --quantity conditional``); the heads of each model in ``--models`` are
fitted, as in [LI24], to the paper's CRP of the same simulator (``--head-grid``, the shipped
``saved_crps/cmr_crp_avg_20_11.npy``). Same CMR distance, same grid search, same parameter axes
(:mod:`icl_cmr.humans.fits`).

Writes, in ``<out-dir>`` (default ``saved_scores/human/``), for ``--dataset peers``:

* ``peers_fits.csv``: one row per person (``--by subject``; ``peers_session_fits.csv`` /
  ``peers_all_fits.csv`` for ``--by session`` / ``all``): D, (beta_enc, beta_rec, gamma_ft), 1/tau,
  CMR-like, the person's CRP and the fitted CRP on the fitting lags;
* ``peers_fits.pkl``: the same in the fit format (``fitted_MSE``, ``fitted_params``, ... shape [1, U], as
  the authors' fits of a set of heads) with the units, the full CRPs and ``metadata``;
* ``peers_head_fits.csv``: every head of every model, fitted to ``--head-grid``;
* ``peers_metadata.json``: what made them (parameters, inputs, versions, files);
* ``peers_vs_heads.csv`` (``--by subject``): per model and quantity (D, beta_enc, beta_rec, gamma_ft),
  CMR-like people against that model's CMR-like heads (medians, difference with a bootstrap 95% CI,
  Mann-Whitney U) and the share of people with D < threshold;

and figures in ``<figs-dir>/humans_vs_heads/``: ``peers_parameters.pdf`` (distributions, people and
each model's CMR-like heads), ``peers_crp_fits.pdf`` (a page of people with their fits, spread over
the range of D), and with ``--training-models`` ``peers_fig7_human_reference.pdf`` ([LI24] Fig 7d-g:
top-N CMR-like heads over training, with the people's median and interquartile band).

Example::

    python src/fit_human_recall.py --dataset peers --models toy_lm gpt2-small pythia-70m pythia-410m qwen-7b \\
        --scores-dir saved_scores --scores-dir ../shared/official/saved_scores --training-models pythia-70m pythia-410m
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from icl_cmr.cli.args import (OneLineErrorParser, UniqueItems, non_negative_float, positive_float, positive_int,
                              run_cli, seed_int, setup_logging)
from icl_cmr.config import CMR_LIKE_THRESHOLD, FIT_LAGS
from icl_cmr.errors import InputError
from icl_cmr.fits.distance import CmrGrid, fit_heads
from icl_cmr.humans.fits import (COMPARED_QUANTITIES, HUMAN_FIT_LAGS, NEAR_BEST_TOLERANCE, GroupComparisonConfig,
                                 fit_people, head_table, near_best_ranges, people_table, people_vs_heads_table,
                                 same_simulation_problem, top_cmr_like_over_training)
from icl_cmr.files.grids import DEFAULT_CONDITIONAL_GRID_PATH, grid_simulation_settings, read_conditional_grid
from icl_cmr.humans.recall import RECALL_UNITS, lag_crps_by_unit, load_recall_data, resolve_dataset
from icl_cmr.files.writing import make_metadata
from icl_cmr.fits.layers import DEFAULT_TOP_N
from icl_cmr.files.outputs import REPO_ROOT, PendingWrites, portable_path
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.scores import DEFAULT_SCORES_DIR, find_score_file, load_checkpoint_series, read_head_scores
from icl_cmr.files.grids import DEFAULT_GRID_PATH, read_cmr_grid
from icl_cmr.config import CHECKPOINT_INDICES
from icl_cmr.heads.results import HeadScores, checkpoint_step
from icl_cmr.files.score_format import plain_metadata

logger = logging.getLogger("fit_human_recall")

PRODUCER = "fit_human_recall.py"

#: Units per page of the CRP-fit figure (6 x 5 panels).
PAGE_SIZE = 30


def dataset_arg(text: str) -> str:
    """argparse type: ``peers`` or ``morton2013`` (any case; psifr's names work too), kept as given lower-cased."""
    try:
        resolve_dataset(text)
    except InputError:
        raise argparse.ArgumentTypeError(f"must be peers or morton2013, got {text!r}") from None
    return {"peers_notask": "peers"}.get(text.lower(), text.lower())


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Fit CMR to human free recall (psifr's PEERS / Morton 2013) and compare "
                                            "the people with CMR-like attention heads (issue 16).")
    parser.add_argument("--dataset", type=dataset_arg, default="peers",
                        help="psifr's bundled study: peers (126 subjects) or morton2013 (40) (default: %(default)s)")
    parser.add_argument("--by", choices=RECALL_UNITS, default="subject",
                        help="one CRP per subject, per (subject, session), or all lists pooled (default: %(default)s; "
                             "statistics need --by subject)")
    parser.add_argument("--crp-grid", "--crp_grid", type=Path, default=DEFAULT_CONDITIONAL_GRID_PATH,
                        help="conditional lag-CRP grid people are fitted to (default: %(default)s; "
                             "est_cmr_crp.py --quantity conditional)")
    parser.add_argument("--head-grid", "--head_grid", type=Path, default=DEFAULT_GRID_PATH,
                        help="the paper's CRP grid of the same simulator, heads are fitted to (default: %(default)s)")
    parser.add_argument("--models", nargs="*", action=UniqueItems, default=["toy_lm"],
                        help="models whose heads are compared, found in the --scores-dir folders "
                             "(default: %(default)s; none: people only)")
    parser.add_argument("--scores-dir", "--scores_dir", type=Path, action="append", default=None,
                        help=f"folder of head-score files; repeat it to search several, in order "
                             f"(default: {DEFAULT_SCORES_DIR})")
    parser.add_argument("--training-models", nargs="*", action=UniqueItems, default=[],
                        help="models with the 16 training checkpoints for the Fig 7 panels, e.g. pythia-70m "
                             "pythia-410m (default: none, no Fig 7 panels)")
    parser.add_argument("--n-top", "--n_top", type=positive_int, nargs="+", action=UniqueItems,
                        default=list(DEFAULT_TOP_N),
                        help="top-N CMR-like head sets of the Fig 7 panels (default: %(default)s, [LI24])")
    parser.add_argument("--threshold", type=positive_float, default=CMR_LIKE_THRESHOLD,
                        help="CMR distance below which a person or a head is CMR-like (default: %(default)s, [LI24])")
    parser.add_argument("--near-best", type=non_negative_float, default=NEAR_BEST_TOLERANCE,
                        help="slack in D defining a fit's near-best grid points, whose parameter ranges the tables "
                             "report (<param>_near_low/_high: how tightly a curve pins a parameter down) "
                             "(default: %(default)s)")
    parser.add_argument("--n-bootstrap", type=positive_int, default=GroupComparisonConfig.n_bootstrap,
                        help="bootstrap resamples of each difference of medians (default: %(default)s)")
    parser.add_argument("--seed", type=seed_int, default=0, help="bootstrap seed (default: %(default)s)")
    parser.add_argument("--out-dir", "--out_dir", type=Path, default=DEFAULT_SCORES_DIR / "human",
                        help="folder of the tables and the fit pickle (default: %(default)s)")
    parser.add_argument("--figs-dir", "--figs_dir", type=Path, default=Path("figs"),
                        help="root folder for figures; they go to <figs-dir>/humans_vs_heads/ (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def find_scores(scores_dirs: Sequence[Path], model: str, checkpoint: Optional[int] = None) -> Path:
    """The score file of ``model`` in the first folder that has one."""
    problems = []
    for folder in scores_dirs:
        try:
            return find_score_file(folder, model, checkpoint)
        except InputError as err:
            problems.append(str(err))
    raise InputError(problems[0] if len(problems) == 1 else
                     f"no head-score file for model {model!r} in {', '.join(map(str, scores_dirs))}")


def load_inputs(args: argparse.Namespace) -> dict:
    """Read and check every input before any work or output: grids, score files, output folders."""
    if args.by != "subject" and args.training_models:
        raise InputError("--training-models draws the people's distribution: it needs --by subject")
    people_grid = read_conditional_grid(args.crp_grid)
    scores_dirs = args.scores_dir or [DEFAULT_SCORES_DIR]
    models = list(dict.fromkeys(args.models))
    head_grid: Optional[CmrGrid] = None
    if models or args.training_models:
        head_grid = read_cmr_grid(args.head_grid)
        problem = same_simulation_problem(people_grid, head_grid)
        if problem is not None:
            raise InputError(f"--head-grid {args.head_grid} and --crp-grid {args.crp_grid} are not grids of the "
                             f"same simulator: {problem}")
        if None in (grid_simulation_settings(args.crp_grid), grid_simulation_settings(args.head_grid)):
            logger.warning("cannot check that %s and %s come from the same simulation settings (no sidecar "
                           "metadata); their axes agree", args.crp_grid, args.head_grid)
    scores = {model: read_head_scores(find_scores(scores_dirs, model)) for model in models}
    training = {}
    for model in dict.fromkeys(args.training_models):
        folder = Path(find_scores(scores_dirs, model, CHECKPOINT_INDICES[-1])).parent.parent
        training[model] = load_checkpoint_series(folder, model, CHECKPOINT_INDICES)
    out_dir = check_writable_dir(args.out_dir, "--out-dir")
    figs_dir = check_writable_dir(args.figs_dir / "humans_vs_heads", "--figs-dir")
    return {"people_grid": people_grid, "head_grid": head_grid, "scores": scores, "training": training,
            "out_dir": out_dir, "figs_dir": figs_dir}


def stored_path(path: "str | Path | None") -> Optional[str]:
    """A path as metadata stores it: relative to the repository root, also when it lies beside the checkout
    (the authors' files in ``../shared/official``), so shipped files carry no machine paths."""
    if path is None:
        return None
    portable = portable_path(path)
    return portable if not Path(portable).is_absolute() else Path(os.path.relpath(portable, REPO_ROOT)).as_posix()


def output_stem(dataset: str, by: str) -> str:
    """``peers`` for one unit per subject, ``peers_session`` / ``peers_all`` otherwise."""
    return dataset if by == "subject" else f"{dataset}_{by}"


def page_of_units(distance: np.ndarray, size: int = PAGE_SIZE) -> np.ndarray:
    """Indices of up to ``size`` units evenly spread over the ranks of D (best fit first), so one page
    shows the whole range of fits; units without a fit come last."""
    order = np.argsort(np.where(np.isfinite(distance), distance, np.inf), kind="stable")
    if order.size <= size:
        return order
    return order[np.unique(np.round(np.linspace(0, order.size - 1, size)).astype(int))]


def model_head_table(model: str, scores: HeadScores, grid: CmrGrid, threshold: float,
                     tolerance: float) -> pd.DataFrame:
    """Every head of one model fitted as in [LI24] (lags -5..+5), with its near-best parameter ranges."""
    fit = fit_heads(scores.crp, grid, attn_lags=scores.lags)
    near = near_best_ranges(scores.crp.reshape(-1, scores.lags.size), scores.lags, grid, fit.lags, tolerance)
    return head_table(model, scores, fit, threshold, near).assign(scores_file=stored_path(scores.path))


def training_figure(training: Dict[str, List[HeadScores]], grid: CmrGrid, n_top: Sequence[int],
                    people: pd.DataFrame, dataset: str):
    """[LI24] Fig 7d-g with the people's median and interquartile band (people with D < threshold)."""
    from icl_cmr.figures import humans as human_plots

    quantities = list(COMPARED_QUANTITIES)
    series, final_points = {}, {}
    for n in sorted(set(n_top)):
        selection, distance, params = top_cmr_like_over_training(training, grid, n)
        if len(selection) < n:
            logger.warning("only %d heads with a finite CMR distance for top %d", len(selection), n)
        values = np.concatenate([distance[..., None], params], axis=-1)         # [n, T, Q]
        count = np.isfinite(values).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nanmean(values, axis=0) if len(selection) else np.full(values.shape[1:], np.nan)
            sem = np.nanstd(values, axis=0, ddof=1) / np.sqrt(count) if len(selection) > 1 else np.zeros_like(mean)
        series[f"top {n}"] = (mean, sem)
        final_points[f"top {n}"] = params[:, -1, :2]
    human = people[quantities].to_numpy(dtype=float)
    median = np.nanmedian(human, axis=0)
    iqr = np.nanpercentile(human, [25, 75], axis=0).T
    steps = np.array([checkpoint_step(k) for k in CHECKPOINT_INDICES])
    label = f"{dataset}: median, IQR (n={len(people)})"
    return human_plots.plot_training_with_human_band(
        steps, series, quantities, median, iqr, label, final_points, people[["beta_enc", "beta_rec"]].to_numpy(),
        title=f"top-N CMR-like heads of {', '.join(training)} over training; people of {dataset} with D < threshold")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    inputs = load_inputs(args)
    started = time.perf_counter()
    dataset = args.dataset
    crps = lag_crps_by_unit(load_recall_data(resolve_dataset(dataset)), args.by, dataset=dataset)
    people_fit = fit_people(crps, inputs["people_grid"])
    near = near_best_ranges(crps.prob, crps.lags, inputs["people_grid"], HUMAN_FIT_LAGS, args.near_best)
    people = people_table(crps, people_fit, args.threshold, near)
    n_like = int(people["cmr_like"].sum())
    logger.info("%s: %d units (%s); %d fitted, %d with D < %g; medians of those: D %.3f, beta_enc %.2f, "
                "beta_rec %.2f, gamma_ft %.2f", dataset, len(people), args.by,
                int(people["cmr_distance"].notna().sum()),
                n_like, args.threshold, *people.loc[people["cmr_like"], list(COMPARED_QUANTITIES)].median())

    heads = pd.concat([model_head_table(model, scores, inputs["head_grid"], args.threshold, args.near_best)
                       for model, scores in inputs["scores"].items()], ignore_index=True) if inputs["scores"] else None
    config = GroupComparisonConfig(n_bootstrap=args.n_bootstrap, seed=args.seed)
    comparison = None
    if heads is not None and args.by == "subject":
        comparison = people_vs_heads_table(people, heads, args.threshold, config)
    elif heads is not None:
        logger.info("statistics compare one unit per person: skipped with --by %s", args.by)

    stem = output_stem(dataset, args.by)
    figs_dir, out_dir = inputs["figs_dir"], inputs["out_dir"]
    from icl_cmr.figures import humans as human_plots

    figures = {}
    like = people[people["cmr_like"]]
    groups = {f"{dataset} people": {q: like[q].to_numpy() for q in COMPARED_QUANTITIES}}
    if heads is not None:
        for model, group in heads[heads["cmr_like"]].groupby("model", sort=False):
            groups[model] = {q: group[q].to_numpy() for q in COMPARED_QUANTITIES}
    if args.by != "all":
        figures[f"{stem}_parameters.pdf"] = human_plots.plot_parameter_distributions(
            groups, list(COMPARED_QUANTITIES), args.threshold,
            title=f"CMR fits with D < {args.threshold:g}: {dataset} people (conditional lag-CRP) and each model's "
                  "heads (the paper's lag-histogram CRP)")
    page = page_of_units(people_fit.distance)
    fitted_cols = [f"fitted_crp_lag{lag:+d}" for lag in people_fit.lags]
    observed_cols = [f"crp_lag{lag:+d}" for lag in people_fit.lags]
    figures[f"{stem}_crp_fits.pdf"] = human_plots.plot_unit_fits(
        crps.labels[page], people_fit.lags, people[observed_cols].to_numpy()[page],
        people[fitted_cols].to_numpy()[page], people_fit.distance[page], people_fit.params[page],
        title=f"{dataset}, by {args.by}: {len(page)} of {len(people)} units, spread over the ranks of D")
    if inputs["training"]:
        figures[f"{stem}_fig7_human_reference.pdf"] = training_figure(
            inputs["training"], inputs["head_grid"], args.n_top, like, dataset)

    parameters = {
        "dataset": dataset, "psifr_dataset": resolve_dataset(dataset), "by": args.by, "threshold": args.threshold,
        "people_grid": stored_path(args.crp_grid), "people_grid_settings": grid_simulation_settings(args.crp_grid),
        "people_fit_lags": people_fit.lags.tolist(),
        "head_grid": stored_path(args.head_grid) if inputs["head_grid"] is not None else None,
        "head_fit_lags": FIT_LAGS.tolist(),
        "models": {m: stored_path(s.path) for m, s in inputs["scores"].items()},
        "training_models": {m: [stored_path(s.path) for s in series] for m, series in inputs["training"].items()},
        "n_top": sorted(set(args.n_top)), "n_bootstrap": args.n_bootstrap, "near_best_tolerance": args.near_best,
        "bootstrap_method": config.bootstrap_method, "confidence": config.confidence,
    }
    metadata = plain_metadata(make_metadata(PRODUCER, parameters, seed=args.seed,
                                            wall_time_s=round(time.perf_counter() - started, 3)))
    # Everything is computed and rendered before the first file is written.
    pending = PendingWrites()
    for name, fig in figures.items():
        pending.figure(figs_dir / name, fig)
    record = {key: value[None] for key, value in people_fit.as_authors_dict().items()}   # [1, U, ...]
    record.update(labels=crps.labels[None], fit_lags=people_fit.lags, fitted_param_index=people_fit.param_index[None],
                  units=crps.units.to_dict(orient="list"), crp_lags=crps.lags, crp=crps.prob,
                  crp_actual=crps.actual, crp_possible=crps.possible, metadata=metadata)
    pending.pickle(out_dir / f"{stem}_fits.pkl", record)
    pending.text(out_dir / f"{stem}_fits.csv", people.to_csv(index=False))
    if heads is not None:
        pending.text(out_dir / f"{stem}_head_fits.csv", heads.to_csv(index=False))
    if comparison is not None:
        pending.text(out_dir / f"{stem}_vs_heads.csv", comparison.to_csv(index=False))
    written = [path.name for path in pending.paths if path.parent == out_dir]
    pending.json(out_dir / f"{stem}_metadata.json", {**metadata, "files": written, "figures": sorted(figures)})
    pending.commit()
    if comparison is not None:
        for model, rows in comparison.groupby("model", sort=False):
            logger.info("%s: %s", model, "; ".join(
                f"{r.quantity} people {r.median_people:.3g} vs heads {r.median_heads:.3g} (n={r.n_heads}), "
                f"diff {r.median_difference:+.3g} [{r.ci_low:+.3g}, {r.ci_high:+.3g}], p={r.p_value:.2g}"
                for r in rows.itertuples()))
    logger.info("wrote %s in %s and %d figures in %s", ", ".join(written), out_dir, len(figures), figs_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
