"""Benchmark: CMR CRP grid points per second, our vectorized engine vs a plain loop, same process.

The loop baseline simulates one recall at a time with the dense context vector, as
[LI24]'s ``est_cmr_crp.py`` does (``F = M^T t``, cumulative-sum draw, update, renormalise).
It is run on ``--ref_trials`` recalls of one start position and extrapolated to a full
grid point (``n_start x n_trials`` recalls); our engine runs full grid points.
CPU time (``time.process_time``) is reported beside wall time because shared machines
make wall time noisy. The full-grid projection assumes ``--workers`` idle cores.

    python bench/bench_cmr.py                 # 6 random grid points, defaults of est_cmr_crp.py
    python bench/bench_cmr.py --points 3 --ref_trials 10
    python bench/bench_cmr.py --recall_rule standard   # the standard recall rule (every grid point simulated)
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# One core per grid worker: idle BLAS threads spinning after the few 101 x 101 products would
# otherwise be counted as CPU time of the simulation. Set before numpy loads.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from icl_cmr.cmr.model import (RECALL_RULES, CMRSettings, _component_tables, _standard_rule_tables,  # noqa: E402
                               cmr_crp, encoding_matrix, exact_crp)
from icl_cmr.cli.args import OneLineErrorParser, positive_int, seed_int  # noqa: E402
from icl_cmr.cmr.grid import grid_axes  # noqa: E402


def loop_recall_draw_steps(beta_enc, beta_rec, gamma, s0, n_items, n_trials, max_draws, rng, exclude=False):
    """The baseline: one recall at a time, dense context; returns the number of draws made. ``exclude``: the
    standard recall rule (s0 and recalled items get no strength; recall ends when nothing has any)."""
    assoc = encoding_matrix(beta_enc, n_items)
    identity = np.eye(n_items + 1)
    steps = 0
    for _ in range(n_trials):  # the baseline is deliberately the plain loop
        context = identity[s0].copy()
        recalled = [s0]
        for _ in range(max_draws):
            strengths = assoc.T @ context
            if exclude:
                strengths[recalled] = 0.0
                if strengths.sum() <= 0:
                    break
            item = int(np.argmax(rng.random() <= np.cumsum(strengths / strengths.sum())))
            recalled.append(item)
            steps += 1
            if item == n_items:
                break
            inp = (1 - gamma) * identity[item] + gamma * assoc @ identity[item]
            inp /= np.linalg.norm(inp)
            context = (1 - beta_rec) * context + beta_rec * inp
            context /= np.linalg.norm(context)
    return steps


def timed(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    parser = OneLineErrorParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=positive_int, default=6, help="random simulated grid points (default 6)")
    parser.add_argument("--n_trials", type=positive_int, default=1000, help="recalls per start position (default 1000)")
    parser.add_argument("--max_draws", type=positive_int, default=None,
                        help="draw limit (default 50; n_items - 1 with --recall_rule standard)")
    parser.add_argument("--recall_rule", choices=RECALL_RULES, default="li24",
                        help="li24 (default) or standard (recalled items excluded; every grid point simulated)")
    parser.add_argument("--ref_trials", type=positive_int, default=20,
                        help="recalls timed for the loop baseline (default 20)")
    parser.add_argument("--workers", type=positive_int, default=2, help="cores assumed for the full-grid projection")
    parser.add_argument("--seed", type=seed_int, default=0)
    args = parser.parse_args(argv)

    settings = CMRSettings(n_trials=args.n_trials, max_draws=args.max_draws, recall_rule=args.recall_rule)
    standard = args.recall_rule == "standard"
    beta_enc, beta_rec, gamma = grid_axes()
    rng = np.random.default_rng(args.seed)
    simulated_rec = beta_rec[(beta_rec > 0) & (beta_rec < 1)]
    points = [(rng.choice(beta_enc), rng.choice(simulated_rec), rng.choice(gamma)) for _ in range(args.points)]
    recalls_per_point = settings.n_start * settings.n_trials

    # Compile (or load from numba's cache) the simulator's kernels before anything is timed.
    cmr_crp(*points[0], CMRSettings(n_trials=2, max_draws=3, recall_rule=args.recall_rule), np.random.default_rng(0),
            method="simulate")
    ours_wall, ours_cpu, table_cpu, loop_wall, loop_cpu = [], [], [], [], []
    print(f"{'beta_enc':>8} {'beta_rec':>8} {'gamma':>6} | {'ours s/pt':>10} {'cpu':>7} | "
          f"{'loop s/pt (extrap.)':>20} {'cpu':>8} | {'ratio (cpu)':>11}")
    for point in points:
        # The grid builds each (beta_enc, gamma_ft) point's tables once per slice of len(beta_rec)
        # points (cached); time that apart and amortise it in the projection.
        if standard:
            table_args = (float(point[0]), float(point[2]), settings.n_items)
            table_cpu.append(timed(_standard_rule_tables.__wrapped__, *table_args)[2])
            _standard_rule_tables(*table_args)
        else:
            table_args = (float(point[0]), float(point[2]), settings.n_items, settings.n_start)
            table_cpu.append(timed(_component_tables.__wrapped__, *table_args)[2])
            _component_tables(*table_args)
        _, wall, cpu = timed(cmr_crp, *point, settings, np.random.default_rng(1), method="simulate")
        ours_wall.append(wall)
        ours_cpu.append(cpu)
        _, wall_ref, cpu_ref = timed(loop_recall_draw_steps, *point, 0, settings.n_items, args.ref_trials,
                                     settings.max_draws, np.random.default_rng(2), exclude=standard)
        scale = recalls_per_point / args.ref_trials
        loop_wall.append(wall_ref * scale)
        loop_cpu.append(cpu_ref * scale)
        print(f"{point[0]:8.2f} {point[1]:8.2f} {point[2]:6.1f} | {ours_wall[-1]:10.3f} {ours_cpu[-1]:7.3f} | "
              f"{loop_wall[-1]:20.1f} {loop_cpu[-1]:8.1f} | {loop_cpu[-1] / ours_cpu[-1]:11.0f}")

    _, exact_wall, exact_cpu = timed(exact_crp, 0.5, 1.0, 0.5, CMRSettings(n_trials=args.n_trials))
    n_points = len(beta_enc) * len(beta_rec) * len(gamma)
    n_exact = 0 if standard else len(beta_enc) * 2 * len(gamma)  # the standard rule has no exact form
    mean_cpu = float(np.mean(ours_cpu))
    mean_table_cpu = float(np.mean(table_cpu))
    n_slices = len(beta_enc) * len(gamma)
    projected = ((n_points - n_exact) * mean_cpu + n_exact * exact_cpu + n_slices * mean_table_cpu) / args.workers
    print(f"\nours: {np.mean(ours_wall):.3f} s wall, {mean_cpu:.3f} s CPU per simulated grid point "
          f"({args.n_trials} trials x {settings.n_start} starts, <= {settings.max_draws} draws, "
          f"{args.recall_rule} recall rule); "
          f"{1 / mean_cpu:.2f} points per CPU-second")
    print(f"loop baseline: {np.mean(loop_wall):.1f} s wall, {np.mean(loop_cpu):.1f} s CPU per grid point "
          f"(extrapolated from {args.ref_trials} recalls); {1 / np.mean(loop_cpu):.4f} points per CPU-second")
    print(f"speed-up (CPU time): {np.mean(loop_cpu) / mean_cpu:.0f}x")
    print(f"tables per (beta_enc, gamma_ft) slice: {mean_table_cpu:.3f} s CPU, built {n_slices} times")
    if not standard:
        print(f"exact CRP (beta_rec in {{0, 1}}): {exact_wall:.3f} s wall, {exact_cpu:.3f} s CPU per point")
    print(f"projected full default grid ({n_points - n_exact} simulated + {n_exact} exact points) on "
          f"{args.workers} idle cores: {projected / 60:.1f} min")


if __name__ == "__main__":
    main()
