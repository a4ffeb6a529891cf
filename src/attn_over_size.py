"""CMR fits across Pythia sizes by relative layer position ([LI24] Fig 6b; DESIGN.md section 5).

For each model: fit every head of its trained model (file without checkpoint, else ``_cp142``),
then plot, one curve per model, against relative layer position l / n_layers * 100:
% heads with D < threshold (``fit_over_size_thres<t>.pdf``, also for the strict 0.1), and the mean
fitted (beta_enc, beta_rec, gamma_ft) and 1/tau of the CMR-like heads with a min-max band
(``params_over_size_thres<t>.pdf``). A per-layer table goes to ``layer_summary.csv``.

Example::

    python src/attn_over_size.py --model_size 70m 410m --scores-dir ../shared/official/saved_scores
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from fit_attn_score import add_common_arguments, grid_parameters, load_grid
from icl_cmr.cli import OneLineErrorParser, non_negative_int, positive_float, run_cli, setup_logging
from icl_cmr.config import CMR_LIKE_STRICT_THRESHOLD
from icl_cmr.fitting import CmrFit, CmrGrid, check_fitted, fit_heads
from icl_cmr.io import make_metadata
from icl_cmr.layer_stats import percent_below_threshold, relative_layer_position, summarize_by_layer
from icl_cmr.outputs import PendingWrites, check_writable_dir, portable_path
from icl_cmr.score_files import HeadScores, load_model_scores

logger = logging.getLogger("attn_over_size")

#: Pythia sizes of [LI24] Fig 6b (the authors' ``attn_over_size.py`` default).
PYTHIA_SIZES = ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")


def fit_models(scores_dir: Path, models: Sequence[str], grid: CmrGrid,
               checkpoint: Optional[int] = None) -> Dict[str, Tuple[HeadScores, CmrFit]]:
    """Read and fit every head of each model (trained model, or checkpoint ``checkpoint``).

    Raises
    ------
    InputError
        If a model's file has no head that can be fitted (:func:`icl_cmr.fitting.check_fitted`).
    """
    out = {}
    for model in models:  # one file per model; each fit is vectorized over all its heads
        scores = load_model_scores(scores_dir, model, checkpoint)
        fit = fit_heads(scores.crp, grid, attn_lags=scores.lags)
        check_fitted(fit, scores.path)
        out[model] = (scores, fit)
    return out


def layer_table(fits: Dict[str, Tuple[HeadScores, CmrFit]], threshold: float, strict_threshold: float):
    """Per model and layer: % CMR-like (both thresholds) and mean params / 1/tau of CMR-like heads."""
    import pandas as pd

    frames = []
    for model, (scores, fit) in fits.items():
        like = fit.distance < threshold
        params = summarize_by_layer(fit.params, like, n_trailing=1)
        inv = summarize_by_layer(fit.inverse_temperature, like)
        frames.append(pd.DataFrame({
            "model": model, "layer": np.arange(scores.n_layers), "n_layers": scores.n_layers,
            "relative_position": relative_layer_position(scores.n_layers),
            f"percent_D_below_{threshold}": percent_below_threshold(fit.distance, threshold),
            f"percent_D_below_{strict_threshold}": percent_below_threshold(fit.distance, strict_threshold),
            "n_cmr_like": inv.count,
            "mean_beta_enc": params.mean[:, 0], "mean_beta_rec": params.mean[:, 1], "mean_gamma_ft": params.mean[:, 2],
            "mean_inverse_temperature": inv.mean,
        }))
    return pd.concat(frames, ignore_index=True)


def write_outputs(fits: Dict[str, Tuple[HeadScores, CmrFit]], out_dir: Path, threshold: float,
                  strict_threshold: float, grid: CmrGrid, producer: str, title: str) -> None:
    """Figures, per-layer CSV and a metadata JSON for a set of fitted models (all rendered, then written)."""
    from icl_cmr import plotting

    pending = PendingWrites()
    positions = {m: relative_layer_position(s.n_layers) for m, (s, _) in fits.items()}
    for t in (threshold, strict_threshold):
        percents = {m: percent_below_threshold(f.distance, t) for m, (_, f) in fits.items()}
        pending.figure(out_dir / f"fit_over_size_thres{t}.pdf",
                       plotting.plot_percent_by_layer(positions, percents, ylabel=f"% heads with D < {t}", title=title))
    params = {m: summarize_by_layer(f.params, f.distance < threshold, n_trailing=1) for m, (_, f) in fits.items()}
    inv = {m: summarize_by_layer(f.inverse_temperature, f.distance < threshold) for m, (_, f) in fits.items()}
    pending.figure(out_dir / f"params_over_size_thres{threshold}.pdf",
                   plotting.plot_layer_summaries(positions, params, inv, threshold))
    table = layer_table(fits, threshold, strict_threshold)
    pending.text(out_dir / "layer_summary.csv", table.to_csv(index=False))
    pending.json(out_dir / "layer_summary.json", {"metadata": make_metadata(
        producer, {"models": list(fits), "scores_files": [portable_path(s.path) for s, _ in fits.values()],
                   "threshold": threshold, "strict_threshold": strict_threshold, **grid_parameters(grid)})})
    pending.commit()
    for model, (_, fit) in fits.items():
        logger.info("%s: %d of %d heads with D < %g", model, int((fit.distance < threshold).sum()),
                    fit.distance.size, threshold)
    logger.info("wrote figures and layer_summary.csv to %s", out_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="CMR fits across Pythia sizes by relative layer position (Fig 6b).")
    parser.add_argument("-m", "--model_size", nargs="+", default=list(PYTHIA_SIZES),
                        help="Pythia sizes, model pythia-<size> (default: the paper's eight: %(default)s)")
    parser.add_argument("--checkpoint", type=non_negative_int, default=None,
                        help="checkpoint index K (default: the trained model, _cp142 for Pythia v0 files)")
    parser.add_argument("--strict-threshold", type=positive_float, default=CMR_LIKE_STRICT_THRESHOLD,
                        help="second threshold (default: %(default)s)")
    add_common_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    grid = load_grid(args)
    out_dir = check_writable_dir(args.figs_dir / "attn_over_size", "--figs-dir")
    models = [f"pythia-{size}" for size in args.model_size]
    fits = fit_models(args.scores_dir, models, grid, args.checkpoint)
    write_outputs(fits, out_dir, args.threshold, args.strict_threshold, grid, "attn_over_size.py", "Pythia")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
