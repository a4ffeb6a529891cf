"""Fit the same CMR to human free recall and to attention heads, and compare them (issue 16).

Each person's conditional lag-CRP (psifr's, from its bundled PEERS or Morton 2013 data) is fitted to
the conditional lag-CRP of CMR's own simulated recalls (``saved_crps/cmr_cond_crp_avg_20_11.npy``,
made by ``est_cmr_crp.py --quantity conditional``); the heads of each model in ``--models`` are
fitted, as in [LI24], to the paper's CRP of the same simulator (``--head-grid``, the shipped
``saved_crps/cmr_crp_avg_20_11.npy``). Same CMR distance, same grid search, same parameter axes
(:mod:`icl_cmr.humans.fits`). ``--recall_rule standard`` fits both people and heads to the conditional grid of
the standard recall rule (``saved_crps/cmr_std_cond_crp_avg_20_11.npy``: recalled items excluded, no draw cap;
heads on the people's lags -5..-1, +1..+5) and names every output ``<dataset>_std_*`` (``peers_std_fits.csv``,
...), so [LI24]'s-rule outputs below are never overwritten; the metadata records ``recall_rule``.

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
import time
from pathlib import Path
from typing import Optional, Sequence

from icl_cmr.cli.args import (OneLineErrorParser, UniqueItems, non_negative_float, positive_float, positive_int,
                              run_cli, seed_int, setup_logging)
from icl_cmr.cli.flags import flag_errors
from icl_cmr.errors import InputError
from icl_cmr.cmr.model import RECALL_RULES
from icl_cmr.experiments.human_recall import (HumanRecallSettings, check_human_recall, dataset_name, default_grids,
                                              human_recall_figures, run_human_recall)
from icl_cmr.files.folders import check_writable_dir
from icl_cmr.files.outputs import PendingWrites
from icl_cmr.files.score_format import plain_metadata
from icl_cmr.files.scores import DEFAULT_SCORES_DIR
from icl_cmr.files.writing import make_metadata
from icl_cmr.humans.recall import RECALL_UNITS, resolve_dataset

logger = logging.getLogger("fit_human_recall")

PRODUCER = "fit_human_recall.py"

DEFAULTS = HumanRecallSettings()


def dataset_arg(text: str) -> str:
    """argparse type: ``peers`` or ``morton2013`` (any case; psifr's names work too), kept as given lower-cased."""
    try:
        resolve_dataset(text)
    except InputError:
        raise argparse.ArgumentTypeError(f"must be peers or morton2013, got {text!r}") from None
    return dataset_name(text)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Fit CMR to human free recall (psifr's PEERS / Morton 2013) and compare "
                                            "the people with CMR-like attention heads (issue 16).")
    parser.add_argument("--dataset", type=dataset_arg, default=DEFAULTS.dataset,
                        help="psifr's bundled study: peers (126 subjects) or morton2013 (40) (default: %(default)s)")
    parser.add_argument("--by", choices=RECALL_UNITS, default=DEFAULTS.by,
                        help="one CRP per subject, per (subject, session), or all lists pooled (default: %(default)s; "
                             "statistics need --by subject)")
    parser.add_argument("--recall_rule", "--recall-rule", choices=RECALL_RULES, default=DEFAULTS.recall_rule,
                        help="CMR recall rule of the grids: li24 (the paper's: repeats allowed, 50-draw cap) or "
                             "standard (recalled items excluded, recall ends by itself; people and heads both fitted "
                             "to its conditional grid, heads on lags -5..-1, +1..+5; outputs named <dataset>_std_*) "
                             "(default: %(default)s)")
    parser.add_argument("--crp-grid", "--crp_grid", type=Path, default=None,
                        help=f"conditional lag-CRP grid people are fitted to (default: {default_grids('li24')[0]}; "
                             f"{default_grids('standard')[0]} with --recall_rule standard; "
                             "est_cmr_crp.py --quantity conditional)")
    parser.add_argument("--head-grid", "--head_grid", type=Path, default=None,
                        help=f"grid of the same simulator heads are fitted to (default: the paper's CRP grid "
                             f"{default_grids('li24')[1]}; the people's grid with --recall_rule standard)")
    parser.add_argument("--models", nargs="*", action=UniqueItems, default=list(DEFAULTS.models),
                        help="models whose heads are compared, found in the --scores-dir folders "
                             "(default: %(default)s; none: people only)")
    parser.add_argument("--scores-dir", "--scores_dir", type=Path, action="append", default=None,
                        help=f"folder of head-score files; repeat it to search several, in order "
                             f"(default: {DEFAULT_SCORES_DIR})")
    parser.add_argument("--training-models", nargs="*", action=UniqueItems, default=[],
                        help="models with the 16 training checkpoints for the Fig 7 panels, e.g. pythia-70m "
                             "pythia-410m (default: none, no Fig 7 panels)")
    parser.add_argument("--n-top", "--n_top", type=positive_int, nargs="+", action=UniqueItems,
                        default=list(DEFAULTS.n_top),
                        help="top-N CMR-like head sets of the Fig 7 panels (default: %(default)s, [LI24])")
    parser.add_argument("--threshold", type=positive_float, default=DEFAULTS.threshold,
                        help="CMR distance below which a person or a head is CMR-like (default: %(default)s, [LI24])")
    parser.add_argument("--near-best", type=non_negative_float, default=DEFAULTS.near_best,
                        help="slack in D defining a fit's near-best grid points, whose parameter ranges the tables "
                             "report (<param>_near_low/_high: how tightly a curve pins a parameter down) "
                             "(default: %(default)s)")
    parser.add_argument("--n-bootstrap", type=positive_int, default=DEFAULTS.n_bootstrap,
                        help="bootstrap resamples of each difference of medians (default: %(default)s)")
    parser.add_argument("--seed", type=seed_int, default=DEFAULTS.seed, help="bootstrap seed (default: %(default)s)")
    parser.add_argument("--out-dir", "--out_dir", type=Path, default=DEFAULT_SCORES_DIR / "human",
                        help="folder of the tables and the fit pickle (default: %(default)s)")
    parser.add_argument("--figs-dir", "--figs_dir", type=Path, default=Path("figs"),
                        help="root folder for figures; they go to <figs-dir>/humans_vs_heads/ (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def settings_from(args: argparse.Namespace) -> HumanRecallSettings:
    """The run's settings from the parsed flags (no ``--scores-dir``: the default folder)."""
    return HumanRecallSettings(
        dataset=args.dataset, by=args.by, recall_rule=args.recall_rule, crp_grid=args.crp_grid,
        near_best=args.near_best, head_grid=args.head_grid,
        models=args.models, scores_dirs=args.scores_dir or [DEFAULT_SCORES_DIR], training_models=args.training_models,
        n_top=args.n_top, threshold=args.threshold, n_bootstrap=args.n_bootstrap, seed=args.seed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    settings = settings_from(args)
    with flag_errors(parser, scores_dirs="--scores-dir", scores_dir="--scores-dir"):
        inputs = check_human_recall(settings)   # every input read and checked, then the output folders
        out_dir = check_writable_dir(args.out_dir, "--out-dir")
        figs_dir = check_writable_dir(args.figs_dir / "humans_vs_heads", "--figs-dir")
        result = run_human_recall(settings, inputs)
    if result.heads is not None and result.comparison is None:
        logger.info("statistics compare one unit per person: skipped with --by %s", args.by)
    started = time.perf_counter()
    figures = human_recall_figures(result)
    seconds = result.wall_seconds + time.perf_counter() - started   # computing and drawing, as before the split
    metadata = plain_metadata(make_metadata(PRODUCER, result.metadata_parameters(), seed=settings.seed,
                                            wall_time_s=round(seconds, 3)))
    # Everything is computed and rendered before the first file is written; then all files or none.
    pending = PendingWrites()
    pending.figures(figs_dir, figures)
    pending.pickle(out_dir / f"{result.stem}_fits.pkl", result.fit_record(metadata))
    for name, table in result.tables().items():
        pending.text(out_dir / name, table.to_csv(index=False))
    written = [path.name for path in pending.paths if path.parent == out_dir]
    pending.json(out_dir / f"{result.stem}_metadata.json", {**metadata, "files": written, "figures": sorted(figures)})
    pending.commit()
    if result.comparison is not None:
        for model, rows in result.comparison.groupby("model", sort=False):
            logger.info("%s: %s", model, "; ".join(
                f"{r.quantity} people {r.median_people:.3g} vs heads {r.median_heads:.3g} (n={r.n_heads}), "
                f"diff {r.median_difference:+.3g} [{r.ci_low:+.3g}, {r.ci_high:+.3g}], p={r.p_value:.2g}"
                for r in rows.itertuples()))
    logger.info("wrote %s in %s and %d figure%s in %s", ", ".join(written + [f"{result.stem}_metadata.json"]), out_dir,
                len(figures), "" if len(figures) == 1 else "s", figs_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
