"""Top-N CMR-like heads and top-N induction heads over training ([LI24] Fig 7c-f, S3; DESIGN.md section 5).

At the final checkpoint, heads are pooled over the models given and two kinds of sets are picked
for each N in ``--n_top``: the N heads with the **lowest CMR distance** and the N heads with the
**highest matching score** (each set chosen by its own criterion; NaN never picked; every head
keeps its own model's layer and head index). The fits of those heads are then followed over the
training checkpoints. Outputs:

* ``saved_top_heads/cmr_top_crp_fit_<tag>.pkl`` and ``cmr_top_head_score_<tag>.pkl``: dicts
  ``{"top20": {...}, ...}`` with the authors' keys (``MSE``, ``params``, ``scale_factors``,
  ``labels``, ``selection``, ``selection_name``) plus ``model``/``layer``/``head``,
  ``head_scores``, ``copy_scores``, the same over training (``*_over_training``,
  ``checkpoints``) and ``metadata``;
* ``figs/select_fit/selection_over_training.pdf``: mean +- SEM over each set of D, the three
  parameters, 1/tau and the matching score, against training step;
* ``figs/select_fit/selection_vs_human.pdf``: fitted (beta_enc, beta_rec) of the top CMR-like and
  top induction heads at the final checkpoint beside human CMR fits.

``--use_saved`` (or ``--use_saved True``; ``False`` means False) redraws the figures from the
saved selections without refitting, also from the authors' ``cmr_top_crp_fit_pythia.pkl``; those
figures are named ``selection_*_saved_<tag>.pdf`` so that they never overwrite a fitting run's.

Example::

    python src/select_fit.py --models pythia-70m pythia-410m --n_top 20 50 100 200 \\
        --scores-dir ../shared/official/saved_scores
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from fit_attn_score import add_common_arguments, grid_parameters, load_grid
from icl_cmr.cli import OneLineErrorParser, non_negative_int, positive_int, run_cli, setup_logging, str2bool
from icl_cmr.errors import InputError
from icl_cmr.fitting import CmrGrid, check_fitted, fit_heads
from icl_cmr.io import make_metadata
from icl_cmr.outputs import PendingWrites, check_writable_dir, portable_path
from icl_cmr.result_files import read_top_heads
from icl_cmr.score_format import plain_metadata
from icl_cmr.layer_stats import DEFAULT_TOP_N, HUMAN_FITS, HeadSelection, gather_selected, select_top_heads
from icl_cmr.score_files import CHECKPOINT_INDICES, checkpoint_step, load_checkpoint_series

logger = logging.getLogger("select_fit")

#: Pythia models of [LI24] Fig 7c-f (the authors' ``select_fit.py`` default).
PYTHIA_MODELS = tuple(f"pythia-{s}" for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"))

#: File names of the saved selections (the authors' names), per tag.
CMR_SELECTION_FILE = "cmr_top_crp_fit_{tag}.pkl"
INDUCTION_SELECTION_FILE = "cmr_top_head_score_{tag}.pkl"

#: Quantities drawn per selection: (name in the record, axis label).
QUANTITIES = (("MSE", "CMR distance D"), ("beta_enc", r"$\beta_{\rm enc}$"), ("beta_rec", r"$\beta_{\rm rec}$"),
              ("gamma_ft", r"$\gamma_{\rm FT}$"), ("scale_factors", r"$1/\tau$"), ("head_scores", "matching score"))


def fit_over_training(scores_dir: Path, models: Sequence[str], checkpoints: Sequence[int],
                      grid: CmrGrid) -> Dict[str, Dict[str, np.ndarray]]:
    """Per model: scores and fits at every checkpoint, arrays [T, L, H] (params [T, L, H, 3]).

    Raises
    ------
    InputError
        If a score file has no head that can be fitted (:func:`icl_cmr.fitting.check_fitted`).
    """
    out = {}
    for model in models:  # one vectorized fit per model over all its checkpoints and heads
        series = load_checkpoint_series(scores_dir, model, checkpoints)
        fit = fit_heads(np.stack([s.crp for s in series]), grid, attn_lags=series[0].lags)
        for t, scores in enumerate(series):  # one check per file, for messages naming it
            check_fitted(fit, scores.path, index=(t,))
        out[model] = {"MSE": fit.distance, "params": fit.params, "scale_factors": fit.inverse_temperature,
                      "head_scores": np.stack([s.matching_score for s in series]),
                      "copy_scores": np.stack([s.copying_score for s in series]),
                      "files": [s.path for s in series]}
    return out


def selection_record(selection: HeadSelection, per_model: Mapping[str, Mapping[str, np.ndarray]],
                     checkpoints: Sequence[int]) -> dict:
    """One saved selection: final-checkpoint values (authors' keys) and the same over training."""
    over = {key: gather_selected(selection, {m: v[key] for m, v in per_model.items()})
            for key in ("MSE", "params", "scale_factors", "head_scores", "copy_scores")}   # [n, T(, 3)]
    return {
        "MSE": over["MSE"][:, -1], "params": over["params"][:, -1], "scale_factors": over["scale_factors"][:, -1],
        "head_scores": over["head_scores"][:, -1], "copy_scores": over["copy_scores"][:, -1],
        "labels": selection.labels, "selection": selection.by_model(),
        "selection_name": f"top {len(selection)}", "n_requested": selection.n_requested,
        "criterion": selection.criterion, "criterion_value": selection.value,
        "model": selection.model, "layer": selection.layer, "head": selection.head,
        "MSE_over_training": over["MSE"], "params_over_training": over["params"],
        "scale_factors_over_training": over["scale_factors"], "head_scores_over_training": over["head_scores"],
        "copy_scores_over_training": over["copy_scores"], "checkpoints": np.asarray(checkpoints),
    }


def make_selections(per_model: Mapping[str, Mapping[str, np.ndarray]], n_top: Sequence[int],
                    checkpoints: Sequence[int]) -> Dict[str, Dict[str, dict]]:
    """Top-N CMR-like (lowest final D) and top-N induction heads (highest final matching score).

    Raises
    ------
    InputError
        If no head of any model has a finite CMR distance (or matching score) at the final
        checkpoint, so that a selection would be empty.
    """
    final_distance = {m: v["MSE"][-1] for m, v in per_model.items()}
    final_matching = {m: v["head_scores"][-1] for m, v in per_model.items()}
    for criterion, values in (("CMR distance", final_distance), ("matching score", final_matching)):
        empty = [m for m, array in values.items() if not np.isfinite(array).any()]
        if len(empty) == len(values):
            raise InputError(f"nothing to select: no head of {', '.join(empty)} has a finite {criterion} at the final "
                             f"checkpoint ({per_model[empty[0]]['files'][-1]}{' and the others' if len(empty) > 1 else ''})")
        for model in empty:
            logger.warning("%s: no head has a finite %s at the final checkpoint; it contributes no heads to the "
                           "top-N selections by that criterion", model, criterion)
    out: Dict[str, Dict[str, dict]] = {"cmr": {}, "induction": {}}
    for n in sorted(set(n_top)):
        cmr = select_top_heads(final_distance, n, largest=False, criterion="lowest cmr_distance")
        induction = select_top_heads(final_matching, n, largest=True, criterion="highest matching_score")
        for kind, selection in (("cmr", cmr), ("induction", induction)):
            if len(selection) < n:
                logger.warning("only %d heads with a finite %s for top %d", len(selection), selection.criterion, n)
            out[kind][f"top{n}"] = selection_record(selection, per_model, checkpoints)
    return out


def _mean_sem(values: np.ndarray) -> tuple:
    """Mean and SEM over the first axis (heads), ignoring NaN."""
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, values, 0.0).sum(axis=0) / count
        deviation = np.where(finite, values - mean, 0.0)
        sem = np.sqrt((deviation ** 2).sum(axis=0) / (count - 1) / count)
    return np.where(count > 0, mean, np.nan), np.where(count > 1, sem, np.nan)


def record_matrix(record: dict, over_training: bool) -> np.ndarray:
    """Quantities of a saved selection, shape [n, T, Q] (or [n, Q] for final values only)."""
    suffix = "_over_training" if over_training else ""
    params = np.asarray(record["params" + suffix], dtype=float)
    columns = []
    for key, _ in QUANTITIES:
        if key in ("beta_enc", "beta_rec", "gamma_ft"):
            columns.append(params[..., ("beta_enc", "beta_rec", "gamma_ft").index(key)])
        elif key + suffix in record:
            columns.append(np.asarray(record[key + suffix], dtype=float))
        else:  # the authors' CMR-like records have no matching scores
            columns.append(np.full(params.shape[:-1], np.nan))
    return np.stack(columns, axis=-1)


def finite_quantities(matrices: Sequence[np.ndarray]) -> List[int]:
    """Indices of the quantities (last axis) with at least one finite value in any matrix."""
    return [q for q in range(len(QUANTITIES)) if any(np.isfinite(m[..., q]).any() for m in matrices)]


def load_saved(top_dir: Path, tag: str) -> Dict[str, Dict[str, dict]]:
    """Saved selections ``{"cmr": {...}, "induction": {...}}``; at least one file must exist."""
    out: Dict[str, Dict[str, dict]] = {}
    for kind, pattern in (("cmr", CMR_SELECTION_FILE), ("induction", INDUCTION_SELECTION_FILE)):
        path = top_dir / pattern.format(tag=tag)
        if path.is_file():
            out[kind] = read_top_heads(path)
            logger.info("read %s (%s)", path, ", ".join(out[kind]))
        else:
            logger.warning("no saved selection %s", path)
    if not out:
        raise InputError(f"--use_saved: no saved selections in {top_dir}: expected "
                         f"{CMR_SELECTION_FILE.format(tag=tag)} and/or {INDUCTION_SELECTION_FILE.format(tag=tag)}")
    return out


def draw(selections: Dict[str, Dict[str, dict]], out_dir: Path, pending: PendingWrites, title: str,
         suffix: str = "") -> None:
    """Render the figures of a set of selections (over training when the records have it) into ``pending``."""
    from icl_cmr import plotting

    kinds = {"cmr": "CMR-like (lowest D)", "induction": "induction (highest match)"}
    over_training = all("MSE_over_training" in r for sel in selections.values() for r in sel.values())
    final = {k: {name: record_matrix(r, False) for name, r in sel.items()} for k, sel in selections.items()}
    # Quantities a record lacks (the authors' CMR-like records have no matching scores) are left out.
    keep = finite_quantities([m for sel in final.values() for m in sel.values()])
    labels = [QUANTITIES[q][1] for q in keep]
    if over_training:
        checkpoints = next(iter(next(iter(selections.values())).values()))["checkpoints"]
        steps = np.array([checkpoint_step(k) for k in checkpoints])
        series = {kinds[k]: {name: _mean_sem(record_matrix(r, True)[..., keep]) for name, r in sel.items()}
                  for k, sel in selections.items()}
        pending.figure(out_dir / f"selection_over_training{suffix}.pdf",
                       plotting.plot_selection_over_training(steps, series, labels, title=title))
    bars = {kinds[k]: {name: _mean_sem(m[..., keep]) for name, m in sel.items()} for k, sel in final.items()}
    pending.figure(out_dir / f"selection_final{suffix}.pdf", plotting.plot_selection_bars(bars, labels, title=title))
    points = {}
    for kind, sel in selections.items():
        smallest = min(sel, key=lambda name: len(sel[name]["MSE"]))
        points[f"{smallest} {'CMR-like' if kind == 'cmr' else 'induction'}"] = np.asarray(sel[smallest]["params"])[:, :2]
    pending.figure(out_dir / f"selection_vs_human{suffix}.pdf", plotting.plot_selection_vs_human(points, HUMAN_FITS, title=title))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Top-N CMR-like and induction heads over training (Fig 7c-f).")
    parser.add_argument("-m", "--models", "--model_name", nargs="+", default=list(PYTHIA_MODELS),
                        help="models to pool (default: the paper's eight Pythia models)")
    parser.add_argument("-t", "--n_top", type=positive_int, nargs="+", default=list(DEFAULT_TOP_N),
                        help="set sizes N (default: %(default)s)")
    parser.add_argument("-u", "--use_saved", type=str2bool, nargs="?", const=True, default=False,
                        help="redraw from saved selections instead of fitting (--use_saved, or --use_saved True/False)")
    parser.add_argument("--checkpoints", type=non_negative_int, nargs="+", default=list(CHECKPOINT_INDICES),
                        help="checkpoint indices K; selection at the last one (default: the paper's 16)")
    parser.add_argument("--tag", default="pythia", help="name in the saved files (default: %(default)s)")
    parser.add_argument("--top-heads-dir", type=Path, default=Path("saved_top_heads"),
                        help="folder of the saved selections (default: %(default)s)")
    add_common_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    out_dir = check_writable_dir(args.figs_dir / "select_fit", "--figs-dir")
    if args.use_saved:
        selections = load_saved(args.top_heads_dir, args.tag)
        pending = PendingWrites()
        # Own names, so that redrawing saved selections never overwrites the figures of a fitting run.
        draw(selections, out_dir, pending, title=f"saved selections ({args.tag})", suffix=f"_saved_{args.tag}")
        logger.info("wrote %s", ", ".join(map(str, pending.commit())))
        return 0
    top_dir = check_writable_dir(args.top_heads_dir, "--top-heads-dir")
    grid = load_grid(args)
    checkpoints = sorted(set(args.checkpoints))
    per_model = fit_over_training(args.scores_dir, args.models, checkpoints, grid)
    selections = make_selections(per_model, args.n_top, checkpoints)
    metadata = plain_metadata(make_metadata("select_fit.py", {
        "models": list(args.models), "n_top": sorted(set(args.n_top)), "checkpoints": checkpoints,
        "scores_files": {m: [portable_path(f) for f in v["files"]] for m, v in per_model.items()},
        **grid_parameters(grid)}))
    pending = PendingWrites()
    for kind, pattern in (("cmr", CMR_SELECTION_FILE), ("induction", INDUCTION_SELECTION_FILE)):
        pending.pickle(top_dir / pattern.format(tag=args.tag), {**selections[kind], "metadata": metadata})
    for name, record in selections["cmr"].items():
        logger.info("%s CMR-like: mean D %.4g at step %d; induction %s: mean D %.4g", name,
                    np.nanmean(record["MSE"]), checkpoint_step(checkpoints[-1]), name,
                    np.nanmean(selections["induction"][name]["MSE"]))
    draw(selections, out_dir, pending, title=", ".join(args.models))
    logger.info("wrote %s", ", ".join(map(str, pending.commit())))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
