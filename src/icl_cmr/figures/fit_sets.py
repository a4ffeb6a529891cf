"""The figures of the fitting analyses ([LI24] Fig 4-7), built from fitted heads.

Each function takes results (:mod:`icl_cmr.fits.analyses`, :mod:`icl_cmr.fits.distance`, the human
curve of :mod:`icl_cmr.humans.recall`) and returns figures by file name
(``{"score_against_fit.pdf": Figure, ...}``) or, for the one-page-per-layer head fits, PDF bytes page
by page. Nothing here reads or writes a file: callers decide where files go (the fitting runs of
:mod:`icl_cmr.experiments.fits` under ``figs/<script>/``, ``paper_figures`` under ``figs/paper/`` with
the paper's figure numbers).
"""
from __future__ import annotations

import logging
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from icl_cmr.cmr.literature import literature_ranges
from icl_cmr.figures import fits as plotting
from icl_cmr.fits.analyses import QUANTITIES, finite_quantities, mean_sem, record_matrix
from icl_cmr.fits.distance import CmrFit, CmrGrid, select_lags
from icl_cmr.fits.layers import HUMAN_FITS, percent_below_threshold, relative_layer_position, summarize_by_layer
from icl_cmr.heads.results import HeadScores, checkpoint_step

logger = logging.getLogger(__name__)


#: The CMR points of [LI24] Fig 4 (the authors' ``plot_crp.py``): (beta_enc, beta_rec, gamma_ft).
FIG4_POINTS = ((1.0, 1.0, 0.0), (0.7, 0.7, 0.0), (0.7, 0.7, 0.5), (0.7, 0.7, 1.0))


def _point(values: Sequence[float]) -> str:
    return ", ".join(f"{float(v):.3g}" for v in values)


def reference_crp_figure(grid: CmrGrid, human, max_lag: int = 5):
    """[LI24] Fig 4: the grid's CMR CRP at :data:`FIG4_POINTS` beside the human conditional lag-CRP.

    Parameters
    ----------
    grid : CmrGrid
        SEM bars are drawn when the grid has its SEM.
    human : HumanLagCrp
        The human curve (:func:`icl_cmr.humans.recall.conditional_lag_crp`), lags [K'], with its
        ``dataset`` and ``n_subjects`` for the label.
    max_lag : int
        Largest |lag| of the CMR curves.

    Returns
    -------
    (Figure, dict)
        The figure, and ``{(beta_enc, beta_rec, gamma_ft) actually used: CMR CRP [2 max_lag + 1]}``.

    Notes
    -----
    A grid without one of the paper's points draws the nearest grid point, titled as such, with a
    warning; when two of the paper's points share a nearest grid point it is drawn once (never two
    panels with the same title), also with a warning.
    """
    lags = np.arange(-max_lag, max_lag + 1)
    curves, values, drawn = {}, {}, {}
    for point in FIG4_POINTS:
        index = grid.index_of(*point)
        actual = tuple(float(v) for v in grid.parameters_at(np.array(index)))
        if actual in drawn:  # two of the paper's points fall on one grid point: draw it once, say so
            logger.warning("the grid has no point (%s); its nearest, (%s), is already drawn for (%s), so it is drawn "
                           "once", _point(point), _point(actual), _point(drawn[actual]))
            continue
        drawn[actual] = point
        exact = np.allclose(actual, point, rtol=0, atol=1e-9)
        if not exact:
            logger.warning("the grid has no point (%s) of [LI24] Fig 4; drawing the nearest grid point, (%s)",
                           _point(point), _point(actual))
        crp = select_lags(grid.mean[index], grid.lags, lags)
        sem = select_lags(grid.sem[index], grid.lags, lags) if grid.sem is not None else None
        name = rf"CMR $\beta_{{enc}}$={actual[0]:.2g} $\beta_{{rec}}$={actual[1]:.2g} $\gamma$={actual[2]:.2g}"
        if not exact:
            name += f"\n(nearest to {_point(point)})"
        curves[name] = (crp, sem)
        values[actual] = crp
    label = f"human ({'PEERS' if human.dataset == 'peers_notask' else human.dataset}, n={human.n_subjects})"
    figure = plotting.plot_reference_crps(lags, curves, human.lags, human.mean, human.sem, label)
    return figure, values


def head_fit_pages(scores: HeadScores, fit: CmrFit, name: str, layers: Optional[Sequence[int]] = None,
                   progress: bool = False) -> Iterator[Tuple[int, bytes]]:
    """Per-layer pages of head fits (attention CRP +- SEM with the CMR fit), as PDF bytes ([LI24] Fig 5).

    Heads appear in descending matching score within the layer (the authors' ``sorted_*`` order).
    One figure is reused for every page (:class:`icl_cmr.figures.fits.LayerFitPages`).

    Parameters
    ----------
    scores : HeadScores
        Attention CRPs [L, H, n_lags], SEMs, labels and matching scores.
    fit : CmrFit
        Fits of the same heads, arrays [L, H, ...].
    name : str
        Model name for the page titles.
    layers : sequence of int, optional
        Layers to draw (default: all).
    progress : bool
        Show a tqdm bar over pages.

    Yields
    ------
    (int, bytes)
        Layer index and its page as a PDF.
    """
    attn = select_lags(scores.crp, scores.lags, fit.lags)                     # [L, H, K]
    attn_sem = select_lags(scores.crp_sem, scores.lags, fit.lags)
    fitted_on_attn_scale = fit.fitted_pattern_scaled + attn.min(axis=-1, keepdims=True)
    order = np.argsort(-np.nan_to_num(scores.matching_score, nan=-np.inf), axis=1, kind="stable")   # [L, H]
    pages = plotting.LayerFitPages(scores.n_heads, fit.lags)
    layers = range(scores.n_layers) if layers is None else layers
    for layer in tqdm(layers, desc=f"{name}: head-fit pages", unit="page", disable=not progress):
        o = order[layer]
        yield layer, pages.render(scores.labels[layer, o], attn[layer, o], attn_sem[layer, o],
                                  fitted_on_attn_scale[layer, o], fit.distance[layer, o], fit.params[layer, o],
                                  title=f"{name}, layer {layer}")


def fit_summary_figures(scores: HeadScores, fit: CmrFit, threshold: float, strict_threshold: float,
                        name: str) -> Dict[str, object]:
    """The one-model summary figures of ``fit_attn_score.py`` ([LI24] Fig 5, 6a), by file name.

    ``score_against_fit.pdf`` (D against matching score, copying-score sign, D histogram),
    ``score_against_scale_factor.pdf`` (1/tau against matching score) and ``fit_against_layer.pdf``
    (% heads with D below each threshold by relative layer position).
    """
    position = relative_layer_position(scores.n_layers)
    curves = {f"D < {t}": percent_below_threshold(fit.distance, t) for t in (threshold, strict_threshold)}
    return {
        "score_against_fit.pdf": plotting.plot_distance_vs_matching(
            fit.distance.ravel(), scores.matching_score.ravel(), scores.copying_score.ravel(), threshold, title=name),
        "score_against_scale_factor.pdf": plotting.plot_inverse_temperature_vs_matching(
            fit.inverse_temperature.ravel(), scores.matching_score.ravel(), scores.copying_score.ravel(), title=name),
        "fit_against_layer.pdf": plotting.plot_percent_by_layer(
            {k: position for k in curves}, curves, ylabel="% heads (CMR-like)", title=name),
    }


def size_figures(fits: Mapping[str, Tuple[HeadScores, CmrFit]], threshold: float, strict_threshold: float,
                 title: str = "") -> Dict[str, object]:
    """Figures of ``attn_over_size*.py`` ([LI24] Fig 6b, c), by file name.

    ``fit_over_size_thres<t>.pdf`` for both thresholds (% CMR-like by relative layer position, one
    curve per model) and ``params_over_size_thres<threshold>.pdf`` (mean fitted parameters and 1/tau
    of the CMR-like heads, min-max bands).
    """
    out = {}
    positions = {m: relative_layer_position(s.n_layers) for m, (s, _) in fits.items()}
    for t in (threshold, strict_threshold):
        percents = {m: percent_below_threshold(f.distance, t) for m, (_, f) in fits.items()}
        out[f"fit_over_size_thres{t}.pdf"] = plotting.plot_percent_by_layer(
            positions, percents, ylabel=f"% heads with D < {t}", title=title)
    params = {m: summarize_by_layer(f.params, f.distance < threshold, n_trailing=1) for m, (_, f) in fits.items()}
    inv = {m: summarize_by_layer(f.inverse_temperature, f.distance < threshold) for m, (_, f) in fits.items()}
    out[f"params_over_size_thres{threshold}.pdf"] = plotting.plot_layer_summaries(positions, params, inv, threshold)
    return out


def over_training_figures(fit: CmrFit, steps: np.ndarray, thresholds: Sequence[float], name: str,
                          mask: Optional[np.ndarray] = None, title_suffix: str = "") -> Dict[str, object]:
    """Figures of ``attn_over_time.py`` ([LI24] Fig 7b, S2), by file name.

    ``fit_over_time_thres<t>.pdf``: % of each layer's heads with D < t at each checkpoint;
    ``params_over_time_thres<t>.pdf``: mean fitted parameters and 1/tau of each layer's heads over
    training, the heads being those with D < t at the final checkpoint (the same heads throughout).

    Parameters
    ----------
    fit : CmrFit
        Fits of shape [T, L, H].
    steps : ndarray, shape [T]
        Training step of each checkpoint.
    thresholds : sequence of float
    name : str
    mask : ndarray of bool, shape [T, L, H], optional
        Heads to summarise at each checkpoint instead of the final-checkpoint mask (used to draw the
        authors' published panel, :func:`icl_cmr.fits.layers.authors_sorted_position_mask`); only
        with a single threshold.
    title_suffix : str
        Appended to the parameter figure's title.
    """
    out = {}
    for t in thresholds:
        percent = percent_below_threshold(fit.distance, t)                       # [T, L]
        out[f"fit_over_time_thres{t}.pdf"] = plotting.plot_percent_over_training(
            steps, percent, ylabel=f"% heads with D < {t}", title=name)
        heads = fit.distance[-1] < t if mask is None else mask
        params = summarize_by_layer(fit.params, heads, n_trailing=1)            # [T, L, 3]
        inv = summarize_by_layer(fit.inverse_temperature, heads)                # [T, L]
        out[f"params_over_time_thres{t}.pdf"] = plotting.plot_layer_summary_over_training(
            steps, params, inv, title=f"{name}: heads with D < {t} at step {int(steps[-1])}{title_suffix}")
    return out


def selection_figures(selections: Mapping[str, Mapping[str, dict]], title: str,
                      suffix: str = "") -> Dict[str, object]:
    """Figures of ``select_fit.py`` ([LI24] Fig 7c-f and the human comparison), by file name.

    ``selection_over_training<suffix>.pdf`` (when the records hold values over training),
    ``selection_final<suffix>.pdf`` (bars at the final checkpoint) and
    ``selection_vs_human<suffix>.pdf`` (fitted (beta_enc, beta_rec) of the smallest sets beside
    human CMR fits). Quantities a record lacks (the authors' CMR-like records have no matching
    scores) are left out.
    """
    out = {}
    kinds = {"cmr": "CMR-like (lowest D)", "induction": "induction (highest match)"}
    over_training = all("MSE_over_training" in r for sel in selections.values() for r in sel.values())
    final = {k: {name: record_matrix(r, False) for name, r in sel.items()} for k, sel in selections.items()}
    keep = finite_quantities([m for sel in final.values() for m in sel.values()])
    labels = [QUANTITIES[q][1] for q in keep]
    if over_training:
        checkpoints = next(iter(next(iter(selections.values())).values()))["checkpoints"]
        steps = np.array([checkpoint_step(k) for k in checkpoints])
        series = {kinds[k]: {name: mean_sem(record_matrix(r, True)[..., keep]) for name, r in sel.items()}
                  for k, sel in selections.items()}
        out[f"selection_over_training{suffix}.pdf"] = plotting.plot_selection_over_training(
            steps, series, labels, title=title)
    bars = {kinds[k]: {name: mean_sem(m[..., keep]) for name, m in sel.items()} for k, sel in final.items()}
    out[f"selection_final{suffix}.pdf"] = plotting.plot_selection_bars(bars, labels, title=title)
    out[f"selection_vs_human{suffix}.pdf"] = plotting.plot_selection_vs_human(
        smallest_set_points(selections), HUMAN_FITS, title=title, converted=literature_ranges())
    return out


def smallest_set_points(selections: Mapping[str, Mapping[str, dict]], prefix: str = "") -> Dict[str, np.ndarray]:
    """(beta_enc, beta_rec) of the heads of the smallest set of each kind, ``{name: [n, 2]}``."""
    points = {}
    for kind, sel in selections.items():
        smallest = min(sel, key=lambda name: len(sel[name]["MSE"]))
        label = f"{prefix}{smallest} {'CMR-like' if kind == 'cmr' else 'induction'}"
        points[label] = np.asarray(sel[smallest]["params"])[:, :2]
    return points


def selection_bar_figures(per_model: Mapping[str, Mapping[str, Mapping[str, dict]]],
                          suffix: str = "") -> Dict[str, object]:
    """Figures of ``select_fit_xtra.py``: bars per set grouped by model, per kind, and the human comparison."""
    out = {}
    names = {"cmr": "top CMR-like heads (lowest D)", "induction": "top induction heads (highest matching score)"}
    for kind, title in names.items():
        final = {m: {name: record_matrix(r, False) for name, r in sel[kind].items()}
                 for m, sel in per_model.items() if kind in sel}
        if not final:
            continue
        keep = finite_quantities([x for sel in final.values() for x in sel.values()])
        groups = {m: {name: mean_sem(x[..., keep]) for name, x in sel.items()} for m, sel in final.items()}
        out[f"selection_final_{kind}{suffix}.pdf"] = plotting.plot_selection_bars(
            groups, [QUANTITIES[q][1] for q in keep], title=title)
    points = {}
    for model, sel in per_model.items():
        if "cmr" in sel:
            points.update(smallest_set_points({"cmr": sel["cmr"]}, prefix=f"{model} "))
    if points:
        out[f"selection_vs_human{suffix}.pdf"] = plotting.plot_selection_vs_human(points, HUMAN_FITS,
                                                                                   converted=literature_ranges())
    return out
