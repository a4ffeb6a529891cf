"""Benchmark: the per-layer head-fit pages of ``fit_attn_score.py`` on a 32 x 32 model.

Compares, in one process and on the same fitted heads, the former way of drawing a page (a new
figure per layer with one matplotlib Axes per head, ``tight_layout``, embedded DejaVu glyphs; copied
below as the baseline) with :class:`icl_cmr.figures.fits.LayerFitPages` (one reused figure, all panels
in one Axes, PDF core font). Then times the whole script, ``fit_attn_score.main``, in-process into a
temporary folder, with and without figures. CPU time (this process) and wall time are both given:
on a shared machine wall time depends on the other jobs.

Data: the authors' Qwen-7B file (32 layers x 32 heads) under ``--official`` when present, else a
synthetic 32 x 32 score file (random peaked attention CRPs) fitted to the shipped grid.

Usage::

    python bench/bench_fit_figures.py [--official ../shared/official] [--baseline-layers 8]
"""
from __future__ import annotations

import io
import math
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import fit_attn_score  # noqa: E402  (the script, timed whole in-process)
from icl_cmr.cli.args import OneLineErrorParser, positive_int, run_cli  # noqa: E402
from icl_cmr.figures.fit_sets import head_fit_pages  # noqa: E402
from icl_cmr.files.grids import read_cmr_grid
from icl_cmr.config import DEFAULT_GRID_PATH
from icl_cmr.files.scores import read_head_scores  # noqa: E402
from icl_cmr.fits.distance import fit_heads, select_lags  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def baseline_page(labels, lags, attn, attn_sem, fitted, distance, params, title) -> bytes:
    """The former ``plotting.plot_layer_fits`` + ``savefig``: one Axes per head, tight_layout."""
    n_heads = len(labels)
    n_cols = max(1, math.ceil(math.sqrt(2 * n_heads)))
    n_rows = math.ceil(n_heads / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.0 * n_cols, 1.7 * n_rows + 0.4), squeeze=False,
                             sharex=True)
    for index, ax in enumerate(axes.flat):
        if index >= n_heads:
            ax.axis("off")
            continue
        ax.errorbar(lags, attn[index], yerr=attn_sem[index], color="k", marker="o", markersize=2, lw=1,
                    capsize=1, label="head")
        ax.plot(lags, fitted[index], color="tab:red", marker="x", markersize=3, lw=1, alpha=0.8, label="CMR fit")
        ax.axvline(0, color="grey", lw=0.5, ls="--")
        ax.tick_params(axis="both", labelsize=7)
        ax.spines["top"].set_visible(False)
        ax.spines["right"].set_visible(False)
        be, br, gf = params[index]
        ax.set_title(f"{labels[index]}  D={distance[index]:.2g}\n"
                     rf"$\beta_{{enc}}$={be:.2g} $\beta_{{rec}}$={br:.2g} $\gamma$={gf:.2g}", fontsize=6)
        if index % n_cols == 0:
            ax.set_ylabel("attention score", fontsize=7)
        if index >= n_heads - n_cols:
            ax.set_xlabel("lag", fontsize=7)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=6, frameon=False, loc="upper right", ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="pdf")
    plt.close(fig)
    return buffer.getvalue()


def synthetic_scores(path: Path, n_layers: int = 32, n_heads: int = 32) -> None:
    """A 32 x 32 score file with peaked, noisy attention CRPs at lags -8..+7."""
    rng = np.random.default_rng(0)
    lags = np.arange(-8, 8)
    width = rng.uniform(0.5, 3, (n_layers, n_heads, 1))
    peak = rng.uniform(0, 6, (n_layers, n_heads, 1)) * np.exp(-np.abs(lags - 1) / width)
    crp = peak + rng.normal(0, 0.3, (n_layers, n_heads, lags.size))
    with open(path, "wb") as handle:
        pickle.dump({"head_scores": rng.uniform(0, 1, (n_layers, n_heads)),
                     "copying_score": rng.uniform(-1, 1, (n_layers, n_heads)),
                     "CRP_scores": crp, "CRP_scores_sem": np.full(crp.shape, 0.1)}, handle)


def timed(function):
    cpu, wall = time.process_time(), time.perf_counter()
    result = function()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def main(argv=None) -> int:
    parser = OneLineErrorParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=REPO.parent / "shared" / "official")
    parser.add_argument("--baseline-layers", type=positive_int, default=8,
                        help="layers drawn the former way (default: 8; its time per page is extrapolated to all)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        official = args.official / "saved_scores" / "qwen-7b" / "induction_head_all_scores_qwen-7b.pkl"
        if official.is_file():
            scores_path, grid_path = official, args.official / "saved_crps" / "cmr_crp_avg_20_11.npy"
        else:
            scores_path, grid_path = tmp / "all_scores_synthetic.pkl", REPO / DEFAULT_GRID_PATH
            synthetic_scores(scores_path)
        scores, grid = read_head_scores(scores_path), read_cmr_grid(grid_path)
        fit = fit_heads(scores.crp, grid, attn_lags=scores.lags)
        print(f"data: {scores_path} ({scores.n_layers} layers x {scores.n_heads} heads), grid {grid_path}")

        attn = select_lags(scores.crp, scores.lags, fit.lags)
        sem = select_lags(scores.crp_sem, scores.lags, fit.lags)
        fitted = fit.fitted_pattern_scaled + attn.min(axis=-1, keepdims=True)
        n_base = min(args.baseline_layers, scores.n_layers)
        _, base_cpu, base_wall = timed(lambda: [baseline_page(
            scores.labels[layer], fit.lags, attn[layer], sem[layer], fitted[layer], fit.distance[layer],
            fit.params[layer], f"layer {layer}") for layer in range(n_base)])
        pages, new_cpu, new_wall = timed(lambda: list(head_fit_pages(scores, fit, "bench")))
        n_new = len(pages)
        print(f"former pages : {n_base} pages, {base_cpu / n_base:.3f} s CPU / {base_wall / n_base:.3f} s wall per page"
              f" -> {base_cpu / n_base * n_new:.1f} s CPU for {n_new} pages"
              f"{' (extrapolated)' if n_base < n_new else ''}")
        print(f"LayerFitPages: {n_new} pages, {new_cpu / n_new:.3f} s CPU / {new_wall / n_new:.3f} s wall per page"
              f" -> {new_cpu:.1f} s CPU, {new_wall:.1f} s wall")
        print(f"speed-up per page: {base_cpu / n_base / (new_cpu / n_new):.1f}x CPU, "
              f"{base_wall / n_base / (new_wall / n_new):.1f}x wall")

        common = ["--all_head_scores", str(scores_path), "--crp-grid", str(grid_path), "--save_dir", "bench",
                  "--figs-dir", str(tmp / "figs"), "--fits-dir", str(tmp / "fits"), "--no-progress"]
        _, cpu, wall = timed(lambda: run_cli(fit_attn_score.main, common))
        print(f"fit_attn_score.main, all figures: {cpu:.1f} s CPU, {wall:.1f} s wall (in-process, imports done)")
        _, cpu, wall = timed(lambda: run_cli(fit_attn_score.main, common + ["--no-figures"]))
        print(f"fit_attn_score.main --no-figures: {cpu:.1f} s CPU, {wall:.1f} s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
