"""Benchmark: fit every head of every file in ../shared/official/saved_scores to the CMR grid.

Compares, in one process, :func:`icl_cmr.fits.distance.fit_heads` (all heads x all grid points at once)
with the straightforward per-head, per-grid-point loop of DESIGN.md section 4 (the authors'
``fit_head_cmr``). The loop is timed on a subset of heads and extrapolated to all heads (said in
the output); its results on that subset are checked against the engine's.

Usage::

    python bench/bench_fit.py [--official ../shared/official] [--loop-heads 20]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from icl_cmr.cli.args import OneLineErrorParser, positive_int  # noqa: E402
from icl_cmr.config import ATTN_CRP_LAGS, FIT_LAGS  # noqa: E402
from icl_cmr.fits.distance import cmr_fit_patterns, fit_heads, select_lags  # noqa: E402
from icl_cmr.files.grids import read_cmr_grid  # noqa: E402
from icl_cmr.files.scores import read_head_scores  # noqa: E402


def loop_fit(attn: np.ndarray, cmr: np.ndarray) -> tuple:
    """One head, the plain loop over grid points: (D, flat index, scale) of the first minimum."""
    attn_shift = attn - attn.min()
    best = (np.inf, -1, np.nan)
    for g in range(cmr.shape[0]):
        c_shift = cmr[g] - cmr[g].min()
        scale = attn_shift.max() / c_shift.max()
        distance = np.mean((scale * c_shift - attn_shift) ** 2 / np.var(attn_shift))
        if distance < best[0]:
            best = (distance, g, scale)
    return best


def main() -> int:
    parser = OneLineErrorParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "official")
    parser.add_argument("--loop-heads", type=positive_int, default=20, help="heads timed with the loop (default: 20)")
    args = parser.parse_args()
    files = sorted((args.official / "saved_scores").glob("*/*all_scores_*.pkl"))
    if not files:
        print(f"no score files under {args.official / 'saved_scores'}")
        return 1
    grid = read_cmr_grid(args.official / "saved_crps" / "cmr_crp_avg_20_11.npy")

    start = time.perf_counter()
    crps = [read_head_scores(path).crp.reshape(-1, ATTN_CRP_LAGS.size) for path in files]
    read_s = time.perf_counter() - start
    all_crp = np.concatenate(crps)
    n_heads = all_crp.shape[0]
    n_points = int(np.prod(grid.shape))

    start = time.perf_counter()
    fit = fit_heads(all_crp, grid)
    engine_s = time.perf_counter() - start

    rng = np.random.default_rng(0)
    subset = rng.choice(n_heads, size=min(args.loop_heads, n_heads), replace=False)
    cmr = cmr_fit_patterns(grid).reshape(-1, FIT_LAGS.size)
    attn = select_lags(all_crp, ATTN_CRP_LAGS, FIT_LAGS)
    start = time.perf_counter()
    loop = [loop_fit(attn[h], cmr) for h in subset]
    loop_s = time.perf_counter() - start
    loop_total = loop_s / subset.size * n_heads

    engine_flat = np.ravel_multi_index(fit.param_index[subset].T, grid.shape)
    same_index = all(engine_flat[i] == loop[i][1] for i in range(subset.size))
    max_diff = max(abs(fit.distance[h] - loop[i][0]) for i, h in enumerate(subset))

    print(f"files: {len(files)}; heads: {n_heads}; grid points: {n_points}; reading files: {read_s:.2f} s")
    print(f"engine fit_heads, all {n_heads} heads: {engine_s:.2f} s ({engine_s / n_heads * 1e3:.3f} ms/head)")
    print(f"plain loop, {subset.size} heads timed: {loop_s:.2f} s ({loop_s / subset.size:.3f} s/head); "
          f"extrapolated to {n_heads} heads: {loop_total:.0f} s")
    print(f"speed-up (extrapolated loop / engine): {loop_total / engine_s:.0f}x")
    print(f"loop vs engine on the timed heads: same grid point {same_index}, max |D difference| {max_diff:.2e}")
    print(f"engine + reading: {engine_s + read_s:.2f} s (target <= 10 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
