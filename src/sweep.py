"""Every model and checkpoint of a plan through the experiment scripts, locally or on SLURM.

A plan (TOML file, or a built-in name: ``paper-pythia-checkpoints``, ``paper-all``; see
``plans/``) lists models, training checkpoints and stages. Per (model, checkpoint) the sweep runs
``compute_head_scores.py`` -> ``fit_attn_score.py --no-figures`` -> (optional) ``ablation.py``,
then the aggregation scripts (``attn_over_size*.py``, ``attn_over_time.py``, ``select_fit*.py``)
on whatever finished. Each job is the script's own command line in its own process; outputs go
to the usual ``saved_*`` / ``figs`` layout.

A job whose outputs exist with matching metadata is skipped, so a rerun continues a killed
sweep; a failed job keeps its error line and runs again only with ``--retry-failed``. The
manifest ``<scores_dir>/sweeps/<plan>/manifest.json`` holds every job's state, time and peak
memory (``--status`` prints it); job logs are beside it in ``logs/``.

On SLURM a rerun re-attaches to the jobs an earlier (killed) sweep left in the queue instead of
submitting them again, and a job that SLURM requeues (preemption, ``scontrol requeue``) is followed
until it really ends (docs/sweep.md, "SLURM").

Examples::

    python src/sweep.py paper-pythia-checkpoints --dry-run
    python src/sweep.py my_plan.toml --jobs 2
    python src/sweep.py paper-all --backend slurm --partition gpu --account mylab
    python src/sweep.py paper-all --status
"""
from __future__ import annotations

import argparse
import logging
import shutil
import signal
from pathlib import Path
from typing import List, Optional, Sequence

from icl_cmr.cli.args import OneLineErrorParser, non_negative_int, positive_int, run_cli, setup_logging, worker_count
from icl_cmr.errors import InputError
from icl_cmr.sweeps.jobs import build_jobs, stale_reason
from icl_cmr.sweeps.manifest import build_manifest, count_states, manifest_path, read_manifest, status_table, sweep_lock
from icl_cmr.sweeps.plan import CPU_GROUP, check_output_folders, find_plan, load_plan, override_slurm
from icl_cmr.sweeps.scheduler import LocalBackend, run_sweep
from icl_cmr.sweeps.slurm_backend import SlurmBackend
from icl_cmr.sweeps.submitit_backend import (SIGNAL_DELAY_S, SIGNAL_MARGIN_S, SubmititBackend, minimum_time_min,
                                             too_short_time_limits)

logger = logging.getLogger("sweep")

SRC_DIR = Path(__file__).resolve().parent
#: Built-in plans: ``plans/<name>.toml`` in the repository.
PLANS_DIR = SRC_DIR.parent / "plans"
BACKENDS = ("local", "slurm", "submitit-local")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Run a sweep plan: head scores, CMR fits, ablations and aggregate "
                                            "figures for many models and checkpoints.")
    parser.add_argument("plan", help="plan file (TOML) or built-in plan name: "
                                     + ", ".join(sorted(p.stem for p in PLANS_DIR.glob("*.toml"))))
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="local: job processes here; slurm: sbatch through submitit; submitit-local: the SLURM "
                             "code path with submitit's local executor, to check a plan here (default: %(default)s)")
    parser.add_argument("--jobs", type=worker_count, default=None,
                        help="jobs at once on this machine, at most 4 per CPU (local and submitit-local; default 1)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the jobs, whether each would run or is up to date, and (slurm) the resources it "
                             "would request; run nothing")
    parser.add_argument("--retry-failed", action="store_true", help="run again the jobs that failed before")
    parser.add_argument("--status", action="store_true", help="print the manifest as a table and exit")
    slurm = parser.add_argument_group("SLURM (override the plan's [slurm] table)")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--qos", default=None)
    slurm.add_argument("--array-parallelism", type=positive_int, default=None,
                       help="tasks of one job array running at once")
    slurm.add_argument("--gpus", type=non_negative_int, default=None, help="GPUs per score/ablation job")
    slurm.add_argument("--mem-gb", type=positive_int, default=None, help="host memory per score/ablation job, GB")
    slurm.add_argument("--time-min", type=positive_int, default=None,
                       help="time limit per score/ablation job, min (with --backend slurm at least 3: submitit's "
                            "requeue signal comes 90 s before the limit)")
    slurm.add_argument("--cpus", type=positive_int, default=None, help="CPU cores per score/ablation job")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def dry_run_table(plan, jobs, backend: str, manifest=None) -> str:
    """One line per job: id, run / up to date, group and resources (cluster backends), command, why it runs."""
    recorded = {r["id"]: r.get("input_signatures") for r in (manifest or {}).get("jobs", [])}

    will_run: set = set()
    lines: List[str] = []
    show_resources = backend != "local"
    for job in jobs:
        upstream = [d for d in (*job.depends_on, *job.after) if d in will_run]
        reason = f"after {upstream[0]}" if upstream else stale_reason(job, recorded.get(job.id))
        if reason is not None:
            will_run.add(job.id)
        state = "run" if reason is not None else "up to date"
        resources = f"  [{job.group}: {plan.groups[job.group].describe()}]" if show_resources else ""
        why = f"  # {reason}" if reason is not None else ""
        lines.append(f"{job.id:<44} {state:<10}{resources}  {' '.join(['python', 'src/' + job.script, *job.argv])}"
                     f"{why}")
    by_stage = {}
    for job in jobs:
        by_stage[job.stage] = by_stage.get(job.stage, 0) + 1
    lines += ["", f"{plan.name}: {len(jobs)} jobs ({', '.join(f'{n} {s}' for s, n in by_stage.items())}); "
                  f"{len(will_run)} would run, {len(jobs) - len(will_run)} up to date"]
    if show_resources:
        used = sorted({job.group for job in jobs})
        lines.append("resources per job (SLURM holds a job's CPUs and memory while it runs):")
        for group in used:
            note = f"  (fits and aggregation; --gpus/--mem-gb/--time-min/--cpus do not change it: set " \
                   f"[slurm.groups.{group}] in the plan, e.g. cpus = 1 where nodes have few cores)" \
                if group == CPU_GROUP else ""
            lines.append(f"  {group}: {plan.groups[group].describe()}{note}")
        extras = {k: v for k, v in (("partition", plan.slurm.partition), ("account", plan.slurm.account),
                                    ("qos", plan.slurm.qos)) if v}
        lines.append(f"slurm: {extras or 'cluster defaults'}; array parallelism {plan.slurm.array_parallelism}, "
                     f"at most {plan.slurm.max_array_size} tasks per array; requeue on preemption/timeout")
    return "\n".join(lines)


def make_backend(args: argparse.Namespace, plan):
    """The backend that runs the jobs: local processes, SLURM, or submitit's local executor."""
    log_dir = plan.sweep_dir / "logs"
    if args.backend == "local":
        return LocalBackend(args.jobs or 1, SRC_DIR, log_dir)

    if args.backend == "slurm":
        return SlurmBackend(plan.sweep_dir / "submitit", plan.groups, plan.slurm, SRC_DIR, log_dir, plan.name)
    return SubmititBackend("local", plan.sweep_dir / "submitit", plan.groups, plan.slurm, SRC_DIR, log_dir,
                           plan.name, n_jobs=args.jobs or 1)


def check_time_limits(args: argparse.Namespace, plan, jobs, plan_file: Path) -> None:
    """Refuse a SLURM time limit too short for submitit's requeue signal, naming the flag or plan key."""
    short = too_short_time_limits(plan.groups, {job.group for job in jobs})
    if short:
        group, minutes = short[0]
        where = "argument --time-min" if args.time_min is not None and group != CPU_GROUP \
            else f"{plan_file}: [slurm.groups.{group}] time_min"
        raise InputError(f"{where}: must be at least {minimum_time_min()} (minutes) with --backend slurm, got "
                         f"{minutes}: submitit asks SLURM for its requeue signal {SIGNAL_DELAY_S} s before the time "
                         f"limit and SLURM may send it up to {SIGNAL_MARGIN_S} s early, so a shorter job is requeued "
                         "before it can work")


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.jobs is not None and args.backend == "slurm":
        raise InputError("--jobs applies to --backend local and submitit-local; SLURM limits concurrency with "
                         "--array-parallelism")
    plan_file = find_plan(args.plan, PLANS_DIR)
    plan = load_plan(plan_file)
    manifest_file = manifest_path(plan.sweep_dir)
    if args.status:
        manifest = read_manifest(manifest_file)
        if manifest is None:
            print(f"{plan.name}: not run yet (no {manifest_file})")
        else:
            print(status_table(manifest))
        return 0
    plan = override_slurm(plan, partition=args.partition, account=args.account, qos=args.qos,
                          array_parallelism=args.array_parallelism, gpus=args.gpus, mem_gb=args.mem_gb,
                          time_min=args.time_min, cpus=args.cpus)
    jobs = build_jobs(plan)
    if args.backend == "slurm":
        check_time_limits(args, plan, jobs, plan_file)
    check_output_folders(plan)  # a dry run refuses what the real run would
    if args.dry_run:
        print(dry_run_table(plan, jobs, args.backend, read_manifest(manifest_file)))
        return 0
    if args.backend == "slurm" and shutil.which("sbatch") is None:
        raise InputError("--backend slurm needs sbatch on this machine (run the sweep on a login node), "
                         "or use --backend local / submitit-local")
    with sweep_lock(plan.sweep_dir):
        manifest = build_manifest(plan.name, str(plan_file), args.backend, jobs, read_manifest(manifest_file))
        backend = make_backend(args, plan)
        previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)  # scancel / kill: stop as Ctrl-C does
        try:
            counts = run_sweep(plan, jobs, backend, manifest, manifest_file, retry_failed=args.retry_failed,
                               progress=not args.no_progress,
                               poll_s=plan.slurm.poll_s if args.backend == "slurm" else 0.5)
        finally:
            signal.signal(signal.SIGTERM, previous_term)
            backend.close()
    ran = counts.pop("ran")
    summary = ", ".join(f"{n} {state}" for state, n in count_states(manifest["jobs"]).items())
    logger.info("%s: %d jobs: %s; %d ran in this run; manifest %s", plan.name, len(jobs), summary, ran, manifest_file)
    failed = counts.get("failed", 0) + counts.get("blocked", 0)
    if failed:
        logger.error("%d job(s) failed or blocked; see `python src/sweep.py %s --status` and the logs in %s",
                     failed, args.plan, plan.sweep_dir / "logs")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
