"""Every figure of [LI24] that published data supports, from one data folder, with a summary of key numbers.

:func:`build_paper_figures` draws the figures into memory (file name -> Figure or PDF bytes) and
writes the text of ``SUMMARY.md``: CMR-like heads per model and per layer band, top-head parameter
means, ablation t statistics, the correction of Fig 7b / S2, and which figures could not be made
and why. It composes the fitting runs (:mod:`icl_cmr.experiments.fits`) with the figure sets
(:mod:`icl_cmr.figures.fit_sets`) under the paper's figure numbers. ``src/paper_figures.py`` decides
where the data comes from and writes the files.

Two sources (:class:`PaperSources`): the authors' published outputs (their ``saved_*`` layout) with
their CMR grid, or ours (``--ours``: our grid, our head-score files, our ablation results; the
bundled model is always there). Each figure uses what the source holds and says what is missing.
"""
from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
from tqdm.auto import tqdm

from icl_cmr.config import (CHECKPOINT_INDICES, CMR_LIKE_STRICT_THRESHOLD, CMR_LIKE_THRESHOLD, FINAL_CHECKPOINT,
                            MIN_PAIRS)
from icl_cmr.errors import InputError
from icl_cmr.experiments.fits import CMR_SELECTION_FILE, fit_models, fit_over_training, load_saved_selections
from icl_cmr.figures.ablation import plot_icl_score_bars
from icl_cmr.figures.fit_sets import (fit_summary_figures, over_training_figures, reference_crp_figure,
                                      selection_bar_figures, selection_figures, size_figures)
from icl_cmr.figures.fits import LayerFitPages
from icl_cmr.files.results import read_ablation_result
from icl_cmr.files.scores import (load_checkpoint_series, load_model_scores, normalise_model_name,
                                  parse_score_file_name)
from icl_cmr.fits.analyses import PYTHIA_MODELS, XTRA_MODELS, make_selections, mean_sem, record_matrix
from icl_cmr.fits.distance import CmrFit, CmrGrid, fit_heads, select_lags
from icl_cmr.fits.layers import DEFAULT_TOP_N, authors_sorted_position_mask, relative_layer_position, summarize_by_layer
from icl_cmr.heads.results import HeadScores, checkpoint_step
from icl_cmr.humans.recall import conditional_lag_crp, load_recall_data
from icl_cmr.stats import PairedStatsConfig, comparison_table

logger = logging.getLogger(__name__)

#: The GPT-2 model of [LI24] Fig 5 / 6a.
GPT2 = "gpt2-small"
#: The human free-recall study of Fig 4 (psifr's bundled PEERS data, as ``plot_crp.py``'s default).
HUMAN_DATASET = "peers_notask"
#: Heads drawn in Fig 5: the top induction heads by matching score.
FIG5_N_HEADS = 12
#: Relative layer position bands of the summary table (%, [lo, hi)).
LAYER_BANDS = (("early", 0.0, 100 / 3), ("middle", 100 / 3, 200 / 3), ("late", 200 / 3, 100.01))

#: Pythia sizes whose head scores (16 checkpoints each) the authors published.
PUBLISHED_PYTHIA = ("pythia-70m", "pythia-410m", "pythia-2.8b", "pythia-12b")

#: Figures of [LI24] that no published data supports, and why.
NOT_SUPPORTED = (
    ("Fig 1-3", "schematics and worked examples, not data"),
    ("Fig 7a", "ICL score over Pythia training: the authors published no loss data for it"),
)


@dataclass(frozen=True)
class PaperSources:
    """Where every panel's data comes from.

    Attributes
    ----------
    label : str
        Said in SUMMARY.md ("the authors' published outputs in ...", "our outputs").
    scores_dir : Path
        Head-score files, ``<root>/<model>/*all_scores_*.pkl``.
    grid : CmrGrid
    ablation_dir : Path or None
        ``ablation_experiment_<model>.pkl`` files.
    top_heads_dir : Path or None
        Saved selections (the authors' ``cmr_top_crp_fit_<tag>.pkl``).
    ours : bool
    threshold, strict_threshold : float
        CMR-like thresholds ([LI24]: 0.5, and 0.1 in the supplement).
    """

    label: str
    scores_dir: Path
    grid: CmrGrid
    ablation_dir: Optional[Path] = None
    top_heads_dir: Optional[Path] = None
    ours: bool = False
    threshold: float = CMR_LIKE_THRESHOLD
    strict_threshold: float = CMR_LIKE_STRICT_THRESHOLD


@dataclass
class PaperFigures:
    """What :func:`build_paper_figures` made.

    Attributes
    ----------
    files : dict of str -> bytes
        File name (under the output folder) -> rendered PDF (builders may add Figures; they are
        rendered after each figure group).
    sections : list of str
        Markdown sections of SUMMARY.md, one per figure group.
    missing : list of (str, str)
        (figure, reason) for each figure that could not be made.
    """

    files: Dict[str, object] = field(default_factory=dict)
    sections: List[str] = field(default_factory=list)
    missing: List[Tuple[str, str]] = field(default_factory=list)


class Unavailable(Exception):
    """A figure's data is not in the source; the message says what is missing."""


# ----------------------------------------------------------------------------- what the source holds

def available_models(scores_dir: Path) -> Dict[str, List[Optional[int]]]:
    """Models with score files in ``scores_dir`` (and its sub-folders) and their checkpoints.

    Returns
    -------
    dict
        Normalised model name (:func:`icl_cmr.files.scores.normalise_model_name`) -> sorted
        checkpoint indices, ``None`` first for a file without checkpoint.
    """
    scores_dir = Path(scores_dir)
    if not scores_dir.is_dir():
        return {}
    out: Dict[str, set] = {}
    for path in sorted(scores_dir.glob("*all_scores_*.pkl")) + sorted(scores_dir.glob("*/*all_scores_*.pkl")):
        parsed = parse_score_file_name(path)
        if parsed is not None:
            out.setdefault(parsed[0], set()).add(parsed[1])
    return {m: sorted(cps, key=lambda c: -1 if c is None else c) for m, cps in sorted(out.items())}


def _display(model: str) -> str:
    """The paper's spelling of a normalised model name (``pythia-1-4b`` -> ``pythia-1.4b``)."""
    for name in PYTHIA_MODELS + XTRA_MODELS + (GPT2,):
        if normalise_model_name(name) == model:
            return name
    return model


def _is_pythia(model: str) -> bool:
    return model.startswith("pythia-")


def _has_trained(checkpoints: Sequence[Optional[int]]) -> bool:
    return None in checkpoints or FINAL_CHECKPOINT in checkpoints


def _fmt(value: float, digits: int = 3) -> str:
    return "NaN" if not np.isfinite(value) else f"{value:.{digits}g}"


# ----------------------------------------------------------------------------- summary tables

def layer_band_rows(name: str, scores: HeadScores, fit: CmrFit, threshold: float) -> str:
    """One markdown row: CMR-like heads of a model, in all and per relative-layer band."""
    like = fit.distance < threshold
    position = relative_layer_position(scores.n_layers)
    cells = [f"{int(like.sum())} / {int(np.isfinite(fit.distance).sum())}"]
    for _, low, high in LAYER_BANDS:
        layers = (position >= low) & (position < high)
        n_heads = int(np.isfinite(fit.distance[layers]).sum())
        cells.append(f"{100 * like[layers].sum() / n_heads:.1f}" if n_heads else "-")
    best = np.unravel_index(np.nanargmin(fit.distance), fit.distance.shape)
    params = ", ".join(f"{p:.2g}" for p in fit.params[best])
    cells.append(f"{scores.labels[best]} D = {fit.distance[best]:.4f} at ({params}), "
                 f"1/tau = {fit.inverse_temperature[best]:.1f}")
    return f"| {name} | {scores.n_layers} x {scores.n_heads} | " + " | ".join(cells) + " |"


def layer_band_table(rows: Sequence[str], threshold: float) -> str:
    head = (f"| model | layers x heads | heads with D < {threshold} | % of early-layer heads (0-33%) | "
            f"% middle (33-67%) | % late (67-100%) | lowest-D head |\n|---|---|---|---|---|---|---|\n")
    return head + "\n".join(rows)


def selection_table(selections: Dict[str, Dict[str, dict]], source: str) -> str:
    """Mean (+- SEM) of D, the three parameters and 1/tau of each top-N set (final checkpoint)."""
    lines = [f"Top-N sets ({source}); mean +- SEM over the set's heads:", "",
             "| set | heads | D | beta_enc | beta_rec | gamma_ft | 1/tau |", "|---|---|---|---|---|---|---|"]
    kinds = {"cmr": "CMR-like", "induction": "induction"}
    for kind, records in selections.items():
        for name, record in records.items():
            matrix = record_matrix(record, over_training=False)[:, :5]     # D, 3 params, 1/tau
            mean, sem = mean_sem(matrix)
            cells = " | ".join(f"{_fmt(m)} +- {_fmt(s, 2)}" for m, s in zip(mean, sem))
            lines.append(f"| {name} {kinds[kind]} | {len(record['MSE'])} | {cells} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the figures

def figure_4(src: PaperSources, models, out: PaperFigures) -> str:
    human = conditional_lag_crp(load_recall_data(HUMAN_DATASET), max_lag=5, dataset=HUMAN_DATASET)
    figure, values = reference_crp_figure(src.grid, human)
    out.files["fig4_cmr_crps.pdf"] = figure
    lags = np.arange(-5, 6)
    rows = [f"| CMR ({p[0]:.2g}, {p[1]:.2g}, {p[2]:.2g}) | {crp[lags == -1][0]:.3f} | {crp[lags == 1][0]:.3f} |"
            for p, crp in values.items()]
    rows.append(f"| human, PEERS (psifr, {human.n_subjects} subjects; conditional lag-CRP) | "
                f"{human.mean[human.lags == -1][0]:.3f} | {human.mean[human.lags == 1][0]:.3f} |")
    return ("## Fig 4: CMR CRPs and the human lag-CRP (`fig4_cmr_crps.pdf`)\n"
            "CMR curves: the grid's normalised lag histogram (repeats allowed) on lags -5..+5; human: the "
            "conditional lag-CRP (transitions made / possible), a different quantity (DESIGN.md section 8).\n\n"
            "| curve (beta_enc, beta_rec, gamma_ft) | lag -1 | lag +1 |\n|---|---|---|\n" + "\n".join(rows))


def _single_model(src: PaperSources, models) -> str:
    if normalise_model_name(GPT2) in models and _has_trained(models[normalise_model_name(GPT2)]):
        return normalise_model_name(GPT2)
    if src.ours:
        for model, checkpoints in models.items():
            if not _is_pythia(model) and _has_trained(checkpoints):
                return model
    raise Unavailable(f"no score file for {GPT2} in {src.scores_dir}")


def figures_5_6a(src: PaperSources, models, out: PaperFigures) -> str:
    model = _single_model(src, models)
    name = _display(model)
    (scores, fit), = fit_models(src.scores_dir, [model], src.grid).values()
    flat = np.argsort(-np.nan_to_num(scores.matching_score, nan=-np.inf).ravel(), kind="stable")
    top = flat[: min(FIG5_N_HEADS, flat.size)]
    attn = _fit_lags(scores.crp, scores, fit).reshape(-1, fit.lags.size)[top]
    sem = _fit_lags(scores.crp_sem, scores, fit).reshape(-1, fit.lags.size)[top]
    fitted = (fit.fitted_pattern_scaled.reshape(-1, fit.lags.size)[top]
              + attn.min(axis=-1, keepdims=True))
    pages = LayerFitPages(top.size, fit.lags)
    out.files[f"fig5_{name}_heads.pdf"] = pages.render(
        scores.labels.ravel()[top], attn, sem, fitted, fit.distance.ravel()[top], fit.params.reshape(-1, 3)[top],
        title=f"{name}: the {top.size} heads with the highest induction matching score, with their CMR fits")
    summary = fit_summary_figures(scores, fit, src.threshold, src.strict_threshold, name)
    out.files[f"fig6a_{name}_distance_vs_matching.pdf"] = summary["score_against_fit.pdf"]
    out.files[f"fig6a_{name}_cmr_like_by_layer.pdf"] = summary["fit_against_layer.pdf"]
    plt.close(summary["score_against_scale_factor.pdf"])
    percent = ", ".join(f"{p:.1f}" for p in 100 * (fit.distance < src.threshold).mean(axis=1))
    head = scores.labels.ravel()[top[0]]
    first = np.unravel_index(top[0], scores.labels.shape)
    return (f"## Fig 5, 6a: {name} (`fig5_{name}_heads.pdf`, `fig6a_{name}_*.pdf`)\n"
            f"{int((fit.distance < src.threshold).sum())} of {fit.distance.size} heads have D < {src.threshold} "
            f"({int((fit.distance < src.strict_threshold).sum())} below {src.strict_threshold}); "
            f"% per layer: {percent}. "
            f"Top induction head {head} (matching score {scores.matching_score[first]:.3f}): D = "
            f"{fit.distance[first]:.4f} at (beta_enc, beta_rec, gamma_ft) = "
            f"({', '.join(f'{p:.2g}' for p in fit.params[first])}), 1/tau = {fit.inverse_temperature[first]:.1f}.")


def _fit_lags(values, scores: HeadScores, fit: CmrFit):
    return select_lags(values, scores.lags, fit.lags)


def _size_panel(src: PaperSources, names: Sequence[str], prefix: str, title: str, out: PaperFigures,
                wanted: Sequence[str]) -> Tuple[str, list]:
    fits = fit_models(src.scores_dir, names, src.grid)
    fits = {_display(m): v for m, v in fits.items()}
    figures = size_figures(fits, src.threshold, src.strict_threshold, title)
    out.files[f"{prefix}.pdf"] = figures[f"fit_over_size_thres{src.threshold}.pdf"]
    out.files[f"{prefix}_thres{src.strict_threshold}.pdf"] = figures[f"fit_over_size_thres{src.strict_threshold}.pdf"]
    out.files[f"{prefix}_params.pdf"] = figures[f"params_over_size_thres{src.threshold}.pdf"]
    missing = [m for m in wanted if normalise_model_name(m) not in names]
    rows = [layer_band_rows(m, s, f, src.threshold) for m, (s, f) in fits.items()]
    return (f"drawn: {', '.join(fits)}" + (f"; not in the data: {', '.join(missing)}" if missing else "")), rows


def figure_6b(src: PaperSources, models, out: PaperFigures) -> str:
    names = [m for m, cps in models.items() if _is_pythia(m) and _has_trained(cps)]
    if not names:
        raise Unavailable(f"no Pythia score files in {src.scores_dir}")
    names.sort(key=lambda m: [normalise_model_name(p) for p in PYTHIA_MODELS].index(m)
               if m in [normalise_model_name(p) for p in PYTHIA_MODELS] else 99)
    said, rows = _size_panel(src, names, "fig6b_pythia_sizes", "Pythia (trained)", out,
                             [] if src.ours else PYTHIA_MODELS)
    return ("## Fig 6b: % CMR-like heads by relative layer position across Pythia sizes (`fig6b_pythia_sizes*.pdf`)\n"
            f"{said}.\n\n" + layer_band_table(rows, src.threshold))


def _models_without_checkpoints(src: PaperSources, models) -> List[str]:
    """The non-Pythia models of Fig 6c / S6: ours with a trained-model file, or the authors' XTRA_MODELS
    present in ``models``; :class:`Unavailable` when there is none."""
    if src.ours:
        names = [m for m, cps in models.items() if not _is_pythia(m) and _has_trained(cps)]
    else:
        names = [normalise_model_name(m) for m in XTRA_MODELS if normalise_model_name(m) in models]
    if not names:
        raise Unavailable(f"none of {', '.join(XTRA_MODELS)} has a score file in {src.scores_dir}")
    return names


def figure_6c(src: PaperSources, models, out: PaperFigures) -> str:
    names = _models_without_checkpoints(src, models)
    said, rows = _size_panel(src, names, "fig6c_models", "", out, [] if src.ours else XTRA_MODELS)
    return ("## Fig 6c: the same for other models (`fig6c_models*.pdf`)\n"
            f"{said}.\n\n" + layer_band_table(rows, src.threshold))


def _over_training_models(models) -> List[str]:
    return [m for m, cps in models.items() if _is_pythia(m) and all(k in cps for k in CHECKPOINT_INDICES)]


def figure_7b(src: PaperSources, models, out: PaperFigures) -> str:
    names = _over_training_models(models)
    if not names:
        raise Unavailable(f"no Pythia model with all {len(CHECKPOINT_INDICES)} training checkpoints in "
                          f"{src.scores_dir}")
    lines = ["## Fig 7b, S2: Pythia over training (`fig7b-S2_<model>_*.pdf`), corrected",
             "(`..._as_published.pdf` reproduces the published selection for comparison.)",
             "Each curve follows the heads with D < 0.5 at the final checkpoint through all 16 checkpoints. The "
             "authors' `attn_over_time.py` applies that final mask **by position** to each checkpoint's heads "
             "sorted by that checkpoint's matching score, so wherever the ranking changed during training the "
             "published curves average other heads. Largest difference, published minus corrected, over "
             "checkpoints and layers (NaN where a layer has no such head):", "",
             "| model | heads in the final mask | beta_enc | beta_rec | gamma_ft | 1/tau | layer-checkpoints whose "
             "published set differs |", "|---|---|---|---|---|---|---|"]
    steps = np.array([checkpoint_step(k) for k in CHECKPOINT_INDICES])
    for model in names:
        name = _display(model)
        series = load_checkpoint_series(src.scores_dir, model, CHECKPOINT_INDICES)
        fit = fit_heads(np.stack([s.crp for s in series]), src.grid, attn_lags=series[0].lags)
        matching = np.stack([s.matching_score for s in series])
        figures = over_training_figures(fit, steps, (src.threshold,), name)
        out.files[f"fig7b-S2_{name}_cmr_like_over_training.pdf"] = figures[f"fit_over_time_thres{src.threshold}.pdf"]
        out.files[f"fig7b-S2_{name}_params_over_training.pdf"] = figures[f"params_over_time_thres{src.threshold}.pdf"]
        final_mask = fit.distance[-1] < src.threshold
        published = authors_sorted_position_mask(fit.distance, matching, src.threshold)
        as_published = over_training_figures(fit, steps, (src.threshold,), name, mask=published,
                                             title_suffix=" - AS PUBLISHED (other heads at earlier steps)")
        out.files[f"fig7b-S2_{name}_params_over_training_as_published.pdf"] = as_published[
            f"params_over_time_thres{src.threshold}.pdf"]
        plt.close(as_published[f"fit_over_time_thres{src.threshold}.pdf"])  # the same as the corrected one
        corrected = np.broadcast_to(final_mask, published.shape)
        diffs = []
        for values, trailing in ((fit.params, 1), (fit.inverse_temperature, 0)):
            a = summarize_by_layer(values, published, n_trailing=trailing).mean
            b = summarize_by_layer(values, corrected, n_trailing=trailing).mean
            delta = np.abs(a - b)
            with warnings.catch_warnings():  # all-NaN: a layer without heads in the mask
                warnings.simplefilter("ignore", RuntimeWarning)
                diffs.append(np.nanmax(delta, axis=(0, 1)) if trailing else np.nanmax(delta))
        changed = int((published != corrected).any(axis=-1).sum())
        cells = [*(_fmt(d) for d in diffs[0]), _fmt(diffs[1])]
        lines.append(f"| {name} | {int(final_mask.sum())} | " + " | ".join(cells)
                     + f" | {changed} of {published.shape[0] * published.shape[1]} |")
    return "\n".join(lines)


def figure_7c_g(src: PaperSources, models, out: PaperFigures) -> str:
    names = _over_training_models(models)
    lines = ["## Fig 7c-g: top-N CMR-like and induction heads (`fig7c-f_*.pdf`, `fig7g_*.pdf`)"]
    if names:
        per_model = fit_over_training(src.scores_dir, names, list(CHECKPOINT_INDICES), src.grid)
        selections = make_selections(per_model, DEFAULT_TOP_N, list(CHECKPOINT_INDICES))
        title = f"pooled over {', '.join(_display(m) for m in names)}"
        figures = selection_figures(selections, title=title)
        out.files["fig7c-f_top_heads_over_training.pdf"] = figures["selection_over_training.pdf"]
        out.files["fig7c-f_top_heads_final.pdf"] = figures["selection_final.pdf"]
        missing = [m for m in PYTHIA_MODELS if normalise_model_name(m) not in names]
        pooled = ", ".join(map(_display, names))
        lines += [f"Over training: selected at the final checkpoint among the heads of {pooled}"
                  + (f" (the paper pools all eight Pythia sizes; {', '.join(missing)} have no published checkpoints)"
                     if missing and not src.ours else "") + ".", "", selection_table(selections, title)]
        human_source, human_selections, human_title = f"our selection ({title})", selections, title
    else:
        human_source, human_selections, human_title = None, None, ""
    saved = None if src.ours or src.top_heads_dir is None else Path(src.top_heads_dir)
    if saved is not None and (saved / CMR_SELECTION_FILE.format(tag="pythia")).is_file():
        human_selections = load_saved_selections(saved, "pythia")
        human_source = "the authors' saved selection `cmr_top_crp_fit_pythia.pkl` (all eight Pythia sizes)"
        human_title = "authors' saved top-N CMR-like heads (8 Pythia sizes)"
        lines += ["", selection_table(human_selections, human_source)]
    if human_selections is None:
        raise Unavailable(f"no Pythia model with all training checkpoints and no saved selection in {src.scores_dir}")
    out.files["fig7g_top_heads_vs_human.pdf"] = selection_figures(human_selections, title=human_title)[
        "selection_vs_human.pdf"]
    lines += ["", f"`fig7g_top_heads_vs_human.pdf`: fitted (beta_enc, beta_rec) of the top-20 sets of {human_source}, "
                  "beside the human CMR fits as published (standard CMR's B_enc, B_rec on [LI24]'s axes, DESIGN.md "
                  "section 5) and, in a second panel, against the same fits converted to [LI24]'s scale "
                  "(beta_enc exact; beta_rec as the range over t.t_in in [0, 1]; docs/cmr_grid.md, Scales)."]
    return "\n".join(lines)


#: File name prefix of an ablation result (``ablation_experiment_<model>.pkl``).
ABLATION_PREFIX = "ablation_experiment_"


def ablation_file(src: PaperSources) -> Optional[Path]:
    """The ablation result Fig 8 draws: GPT-2's when there is one, else the first; None when there is none."""
    folder = src.ablation_dir
    candidates = (sorted(Path(folder).glob(f"{ABLATION_PREFIX}*.pkl")) if folder is not None and Path(folder).is_dir()
                  else [])
    gpt2 = normalise_model_name(GPT2)
    preferred = [p for p in candidates if normalise_model_name(p.stem[len(ABLATION_PREFIX):]) == gpt2]
    return (preferred or candidates or [None])[0]


def figure_8(src: PaperSources, models, out: PaperFigures) -> str:
    path = ablation_file(src)
    if path is None:
        raise Unavailable(f"no ablation_experiment_<model>.pkl in {src.ablation_dir}")
    model = path.stem[len(ABLATION_PREFIX):]
    result = read_ablation_result(path)
    samples = {"original": np.asarray(result["original_icl_score"], dtype=float),
               "ablated": np.asarray(result["ablated_icl_score"], dtype=float),
               "ablated_rand": np.asarray(result["ablated_rand_icl_score"], dtype=float)}
    pairs = (("original", "ablated"), ("original", "ablated_rand"), ("ablated", "ablated_rand"))
    table = comparison_table(samples, pairs, PairedStatsConfig(n_bootstrap=2000))
    n = samples["original"].size
    means = {k: float(v.mean()) for k, v in samples.items()}
    sems = {k: float(v.std(ddof=1) / np.sqrt(v.size)) for k, v in samples.items()}
    out.files["fig8_ablation.pdf"] = plot_icl_score_bars(means, sems, [(r.a, r.b, r.stars) for r in table.itertuples()],
                                                         title=f"{model} (n = {n})")
    names = {"original": "intact", "ablated": "top CMR-like ablated", "ablated_rand": "random ablated"}
    rows = [f"| {names[r.a]} vs {names[r.b]} | {r.mean_a:.3f} | {r.mean_b:.3f} | {r.t:.2f} | {r.p_t:.3g} |"
            for r in table.itertuples()]
    return (f"## Fig 8: ablation (`fig8_ablation.pdf`, {path.name})\n"
            f"ICL score = loss late - loss early per prompt, n = {n}; paired t-tests.\n\n"
            "| comparison | mean a | mean b | t | p |\n|---|---|---|---|---|\n" + "\n".join(rows))


def figure_s6(src: PaperSources, models, out: PaperFigures) -> str:
    names = _models_without_checkpoints(src, models)
    per_model = {}
    lines = ["## Fig S6b-d: top-N heads per model without checkpoints (`figS6b-d_*.pdf`)",
             "The per-model panels of the authors' `select_fit_xtra.py` (our reading of Supplementary Fig S6b-d), "
             "selected at the trained model from the head scores:"]
    for model in names:
        fits = fit_over_training(src.scores_dir, [model], [None], src.grid)
        selections = make_selections(fits, DEFAULT_TOP_N, [None])
        per_model[_display(model)] = selections
        lines += ["", selection_table(selections, _display(model))]
    figures = selection_bar_figures(per_model)
    for name, figure in figures.items():
        out.files[f"figS6b-d_{name.replace('selection_', 'top_heads_')}"] = figure
    return "\n".join(lines)


#: (figure name, builder) in drawing order.
FIGURES: Tuple[Tuple[str, Callable], ...] = (
    ("Fig 4", figure_4), ("Fig 5, 6a", figures_5_6a), ("Fig 6b", figure_6b), ("Fig 6c", figure_6c),
    ("Fig 7b, S2", figure_7b), ("Fig 7c-g", figure_7c_g), ("Fig 8", figure_8), ("Fig S6b-d", figure_s6),
)


def build_paper_figures(src: PaperSources, progress: bool = False) -> PaperFigures:
    """Draw every supported figure from ``src`` (nothing is written).

    A figure whose data the source lacks is listed in ``missing`` with the reason; any other
    error (a damaged file, a file of the wrong kind) stops the whole build.

    Raises
    ------
    InputError
        From the validating readers, naming the file.
    """
    models = available_models(src.scores_dir)
    out = PaperFigures()
    for name, builder in tqdm(FIGURES, desc="paper figures", unit="figure", disable=not progress):
        try:
            out.sections.append(builder(src, models, out))
        except Unavailable as reason:
            out.missing.append((name, str(reason)))
            logger.info("%s not drawn: %s", name, reason)
        # Render now, so that at most one figure group is open at a time.
        out.files = {file: content if isinstance(content, bytes) else _pdf_bytes(content)
                     for file, content in out.files.items()}
    return out


def _pdf_bytes(figure) -> bytes:
    """A figure rendered to PDF bytes, then closed."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="pdf")
    finally:
        plt.close(figure)
    return buffer.getvalue()


def summary_markdown(src: PaperSources, result: PaperFigures, command: str) -> str:
    """SUMMARY.md: the source, each figure group's key numbers, and the figures not made."""
    lines = ["# [LI24] figures: summary", "",
             f"Made by `{command}` from {src.label}; CMR grid `{src.grid.source}`; CMR-like: D < {src.threshold} "
             f"(strict: {src.strict_threshold}). Every PDF is in this folder.", ""]
    for section in result.sections:
        lines += [section, ""]
    lines += ["## Not made", "", "| figure | why |", "|---|---|"]
    lines += [f"| {name} | {why} |" for name, why in NOT_SUPPORTED]
    lines += [f"| {name} | {why} |" for name, why in result.missing]
    if not src.ours:
        present = set(available_models(src.scores_dir))
        absent = [m for m in PYTHIA_MODELS if normalise_model_name(m) not in present]
        never = [m for m in absent if m not in PUBLISHED_PYTHIA]
        elsewhere = [m for m in absent if m in PUBLISHED_PYTHIA]
        if never:
            lines.append(f"| Fig 6b, 7b-f: {', '.join(never)} | the authors published no head scores for them "
                         "(their saved top-head selection of Fig 7g still covers all eight sizes) |")
        if elsewhere:
            lines.append(f"| Fig 6b, 7b-f: {', '.join(elsewhere)} | published in the authors' repository but not in "
                         "this data folder (the default download has them) |")
    return "\n".join(lines) + "\n"


def check_sources(src: PaperSources) -> None:
    """Read and check every input file the figures will use, before the first one is drawn.

    Every head-score file (each checkpoint series whole, as Fig 7 reads it), the ablation result of Fig 8
    (at least two prompts for its paired statistics) and the authors' saved top-head selection, through the
    same validating readers as the figures. A damaged file thus stops the run in seconds, not after most
    figure groups were drawn.

    Raises
    ------
    InputError
        No head-score file at all, or the first file that cannot be used (naming it).
    """
    models = available_models(src.scores_dir)
    if not models:
        raise InputError(f"no head-score files (*all_scores_*.pkl) in {src.scores_dir} or its sub-folders")
    series = _over_training_models(models)
    for model in series:
        load_checkpoint_series(src.scores_dir, model, CHECKPOINT_INDICES)
    for model, checkpoints in models.items():
        for checkpoint in checkpoints:
            if model not in series or checkpoint not in CHECKPOINT_INDICES:
                load_model_scores(src.scores_dir, model, checkpoint)
    path = ablation_file(src)
    if path is not None:
        n = len(read_ablation_result(path)["original_icl_score"])
        if n < MIN_PAIRS:
            raise InputError(f"{path} holds {n} prompt{'s' if n != 1 else ''}: Fig 8's paired statistics need at "
                             f"least {MIN_PAIRS}")
    saved = None if src.ours or src.top_heads_dir is None else Path(src.top_heads_dir)
    if saved is not None and (saved / CMR_SELECTION_FILE.format(tag="pythia")).is_file():
        load_saved_selections(saved, "pythia")
