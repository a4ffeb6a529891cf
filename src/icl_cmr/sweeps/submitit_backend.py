"""Jobs through submitit: what a worker runs, the sbatch parameters, and submitit's local executor.

Each job is submitted as :class:`SweepTask`, a ``submitit.helpers.Checkpointable``: when a job
nears its time limit, submitit's USR2 handler requeues it with the same arguments (up to
:data:`MAX_REQUEUES` times) and the script starts again (``ablation.py`` resumes from its partial
files; the score pass is short). When SLURM itself ends a run with SIGTERM (``scontrol requeue``,
preemption, ``scancel``, the time limit) the worker leaves no result, so the driver reads what
happened from the queue (:mod:`.slurm_backend`) instead of taking the killed script's exit code for
a failure. Jobs that are ready together are submitted as one job array per resource group, at most
``max_array_size`` tasks per array and ``array_parallelism`` running. The worker runs the same
command line as the local backend (:mod:`.execute`).
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import submitit

from icl_cmr.sweeps.execute import JobResult, result_without_run, run_job_command
from icl_cmr.sweeps.jobs import Job
from icl_cmr.sweeps.plan import ResourceGroup, SlurmSettings

logger = logging.getLogger(__name__)

#: Times a job may be requeued (time limit, preemption, ``scontrol requeue``): submitit's
#: ``max_num_timeout`` and the worker's own limit on ``SLURM_RESTART_COUNT``.
MAX_REQUEUES = 3
#: Runs a job gets in all.
MAX_ATTEMPTS = MAX_REQUEUES + 1
#: Seconds before the time limit at which submitit asks SLURM for its requeue signal (USR2): the
#: default of submitit's ``signal_delay_s``, which the sweep does not change.
SIGNAL_DELAY_S = int(submitit.slurm.slurm._get_default_parameters()["signal_delay_s"])
#: SLURM may send that signal up to 60 s early ("due to the resolution of event handling",
#: sbatch ``--signal``), so a job must be given more than both to start and do any work.
SIGNAL_MARGIN_S = 60
#: Seconds the worker waits, after its script died of SIGTERM, for the SIGTERM that SLURM sends
#: every process of a run it ends (the two arrive together; the script may be reaped first).
_SIGTERM_WAIT_S = 2.0


def minimum_time_min() -> int:
    """Shortest time limit (whole minutes) that exceeds :data:`SIGNAL_DELAY_S` + :data:`SIGNAL_MARGIN_S`."""
    return (SIGNAL_DELAY_S + SIGNAL_MARGIN_S) // 60 + 1


def too_short_time_limits(groups: Mapping[str, ResourceGroup], used: Iterable[str]) -> List[Tuple[str, int]]:
    """``(group, time_min)`` of the ``used`` groups whose limit is below :func:`minimum_time_min`.

    Such a job would be sent submitit's requeue signal before it could start, requeued
    :data:`MAX_REQUEUES` times without doing its work, and end failed minutes later.
    """
    shortest = minimum_time_min()
    return [(name, groups[name].time_min) for name in sorted(set(used)) if groups[name].time_min < shortest]


def slurm_restart_count() -> int:
    """``SLURM_RESTART_COUNT`` of the running job (0 outside SLURM or before any requeue)."""
    text = os.environ.get("SLURM_RESTART_COUNT", "")
    return int(text) if text.isdigit() else 0


class SweepTask(submitit.helpers.Checkpointable):
    """What a worker runs: one job's command line.

    On submitit's time-limit signal, :meth:`checkpoint` (inherited) resubmits the same call. On
    SIGTERM (SLURM ending this run: requeue, preemption, cancellation) the script is stopped and the
    worker exits without a result. A run past :data:`MAX_ATTEMPTS` is refused with an error.
    """

    def __call__(self, command: Sequence[str], log_path: str, src_dir: str) -> JobResult:
        restarts = slurm_restart_count()
        if restarts >= MAX_ATTEMPTS:
            return result_without_run(f"requeued {restarts} times (preempted, requeued or at its time limit): "
                                       f"not run again after {MAX_ATTEMPTS} attempts", restarts=restarts)
        terminated = threading.Event()
        children: List[subprocess.Popen] = []

        def stop(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal handler signature
            terminated.set()
            for child in children:  # SLURM signals every process of the run; pass it on where it does not
                if child.returncode is None:   # os.kill: Popen.send_signal would reap what run_command waits for
                    try:
                        os.kill(child.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            result = run_job_command(command, log_path, src_dir, on_start=children.append)
        finally:
            signal.signal(signal.SIGTERM, previous)
        if result.returncode == -signal.SIGTERM:
            terminated.wait(_SIGTERM_WAIT_S)
        if terminated.is_set():
            # No result file: SLURM requeues the job (and it runs again) or it ends cancelled/preempted/timed
            # out, which the driver reads from the queue. SystemExit passes submitit's `except Exception`.
            raise SystemExit(128 + signal.SIGTERM)
        return replace(result, restarts=restarts)


def executor_parameters(cluster: str, group: ResourceGroup, settings: SlurmSettings, setup: Sequence[str],
                        name: str) -> Dict[str, Any]:
    """submitit ``update_parameters`` keywords for one resource group on ``cluster`` (``slurm`` or ``local``)."""
    if cluster == "local":
        return {"timeout_min": group.time_min, "gpus_per_node": group.gpus, "setup": list(setup)}
    params: Dict[str, Any] = {"time": group.time_min, "mem": f"{group.mem_gb}GB", "cpus_per_task": group.cpus,
                              "gpus_per_node": group.gpus, "job_name": name, "setup": list(setup),
                              "array_parallelism": settings.array_parallelism}
    for key in ("partition", "account", "qos"):
        value = getattr(settings, key)
        if value:
            params[key] = value
    if settings.additional:
        params["additional_parameters"] = dict(settings.additional)
    return params


def worker_error(trace: str) -> str:
    """The error line of a worker that raised (submitit's ``("error", traceback)`` result)."""
    if "timed-out too many times" in trace:
        return f"time limit: reached on each of {MAX_ATTEMPTS} attempts, not requeued again"
    # The traceback's last line; submitit's FailedJobError wraps it in dashes and a note on its log files.
    lines = [line.strip() for line in trace.splitlines() if line.strip() and set(line.strip()) != {"-"}]
    end = next((i for i, line in enumerate(lines) if line.startswith("You can check full logs")), len(lines))
    return "worker failed: " + (lines[end - 1][:300] if end else "no traceback")


def read_result_file(path: Path, restarts: int = 0) -> Optional[JobResult]:
    """The JobResult in a worker's submitit result file (``("success", JobResult)`` or ``("error",
    traceback)``), None while there is no file. Read directly rather than through submitit's job
    handle, which waits until the whole job (the local executor's controller, a SLURM task) ended."""
    from submitit.core.utils import pickle_load

    if not path.exists():
        return None
    try:
        outcome, value = pickle_load(path)
    except Exception as err:  # written atomically by submitit, so a bad file stays bad
        return result_without_run(f"unreadable submitit result {path}: {err}", restarts=restarts)
    if outcome == "success" and isinstance(value, JobResult):
        return value
    return result_without_run(worker_error(str(value)), restarts=restarts)


class SubmititBackend:
    """Jobs through a submitit executor: ``cluster="slurm"`` (sbatch; tracked by
    :class:`~icl_cmr.sweeps.slurm_backend.SlurmBackend`) or ``"local"`` (tests, checks)."""

    def __init__(self, cluster: str, folder: Path, groups: Mapping[str, ResourceGroup], settings: SlurmSettings,
                 src_dir: Path, log_dir: Path, plan_name: str, n_jobs: Optional[int] = None,
                 python: str = sys.executable):
        if cluster not in ("slurm", "local"):
            raise ValueError(f"cluster must be 'slurm' or 'local', got {cluster!r}")
        self.name = "slurm" if cluster == "slurm" else "submitit-local"
        self.cluster, self.groups, self.settings = cluster, groups, settings
        self.folder = Path(folder)
        self.src_dir, self.log_dir, self.python, self.plan_name = Path(src_dir), Path(log_dir), python, plan_name
        self.n_jobs = n_jobs
        self._executor_instance: Optional[submitit.Executor] = None
        # Workers import this package from the same checkout as the sweep.
        self._setup = [f"export PYTHONPATH={shlex.quote(str(self.src_dir))}${{PYTHONPATH:+:$PYTHONPATH}}",
                       *settings.setup]
        self._running: Dict[str, Any] = {}

    @property
    def _executor(self) -> submitit.Executor:
        # Made at the first submission: a sweep that only re-attaches or waits needs no srun here.
        if self._executor_instance is None:
            executor_class = submitit.SlurmExecutor if self.cluster == "slurm" else submitit.LocalExecutor
            self._executor_instance = executor_class(folder=str(self.folder), max_num_timeout=MAX_REQUEUES)
        return self._executor_instance

    def capacity(self) -> int:
        # SLURM queues everything (array_parallelism caps what runs); the local executor runs n_jobs at once.
        if self.n_jobs is None:
            return 1_000_000
        return self.n_jobs - len(self._running)

    def _submit_handles(self, jobs: Sequence[Job]) -> Dict[str, Any]:
        """Submit ``jobs`` (one array per resource group and chunk); ``{job id: submitit job}``."""
        by_group: Dict[str, List[Job]] = defaultdict(list)
        for job in jobs:
            by_group[job.group].append(job)
        handles: Dict[str, Any] = {}
        for group, members in by_group.items():
            self._executor.update_parameters(**executor_parameters(
                self.cluster, self.groups[group], self.settings, self._setup, f"sweep-{self.plan_name}-{group}"))
            size = self.settings.max_array_size
            for start in range(0, len(members), size):
                chunk = members[start:start + size]
                with self._executor.batch():
                    submitted = [self._executor.submit(SweepTask(), job.command(self.src_dir, self.python),
                                                       str(self.log_dir / job.log_name), str(self.src_dir))
                                 for job in chunk]
                handles.update({job.id: handle for job, handle in zip(chunk, submitted)})
                ids = [str(handles[job.id].job_id) for job in chunk]
                logger.info("submitted %d job(s) of group %s (%s): %s", len(chunk), group,
                            self.groups[group].describe(), ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else ""))
        return handles

    def submit(self, jobs: Sequence[Job]) -> Dict[str, Dict[str, Any]]:
        """Submit ``jobs``; ``{job id: fields for its manifest record}`` (its ``backend_id``)."""
        handles = self._submit_handles(jobs)
        self._running.update(handles)
        return {job_id: {"backend_id": str(handle.job_id)} for job_id, handle in handles.items()}

    def wait(self, timeout: float) -> List[Tuple[str, JobResult]]:
        deadline = time.monotonic() + timeout
        while True:  # the local executor's jobs are processes here: look every 0.2 s
            results = [(job_id, self._result(handle)) for job_id, handle in self._running.items()
                       if handle.paths.result_pickle.exists() or handle.done()]
            if results or time.monotonic() >= deadline:
                break
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        for job_id, _ in results:
            del self._running[job_id]
        return results

    @staticmethod
    def _result(handle: Any) -> JobResult:
        result = read_result_file(handle.paths.result_pickle)
        if result is not None:
            return result
        try:   # the job ended without a result file: submitit's handle says why
            return handle.result()
        except Exception as err:  # the worker died: out of memory, time limit after requeues, node failure
            return result_without_run(worker_error(str(err)))

    def interrupt(self, grace_s: float = 0.0) -> List[Tuple[str, JobResult]]:
        """Cancel every submitted job; they are recorded as interrupted and run again next time."""
        results = []
        for job_id, handle in list(self._running.items()):
            try:
                handle.cancel(check=False)
            except Exception as err:  # pragma: no cover - the process already gone
                logger.warning("could not cancel %s (%s): %s", job_id, handle.job_id, err)
            results.append((job_id, result_without_run("interrupted", returncode=130)))
        self._running.clear()
        return results

    def close(self) -> None:
        pass
