"""SLURM (and submitit's local executor) as a sweep backend.

Each job is submitted as :class:`SweepTask`, a ``submitit.helpers.Checkpointable``: when SLURM
preempts a job or it reaches its time limit, submitit requeues it with the same arguments
(up to 3 times), and the script starts again (``ablation.py`` resumes from its partial files;
the score pass is short). Jobs that are ready together are submitted as one job array per
resource group, at most ``max_array_size`` tasks per array and ``array_parallelism`` running.
The worker runs the same command line as the local backend (:mod:`.execute`).
"""
from __future__ import annotations

import logging
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import submitit

from icl_cmr.sweeps.execute import JobResult, run_job_command, utc_now
from icl_cmr.sweeps.jobs import Job
from icl_cmr.sweeps.plan import ResourceGroup, SlurmSettings

logger = logging.getLogger(__name__)

#: Times submitit requeues a job that reached its time limit or was preempted.
MAX_REQUEUES = 3


class SweepTask(submitit.helpers.Checkpointable):
    """What a worker runs: one job's command line. On preemption or timeout, submitit calls
    :meth:`checkpoint` (inherited), which resubmits the same call."""

    def __call__(self, command: Sequence[str], log_path: str, src_dir: str) -> JobResult:
        return run_job_command(command, log_path, src_dir)


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


class SubmititBackend:
    """Jobs through a submitit executor: ``cluster="slurm"`` (sbatch) or ``"local"`` (tests, checks)."""

    def __init__(self, cluster: str, folder: Path, groups: Mapping[str, ResourceGroup], settings: SlurmSettings,
                 src_dir: Path, log_dir: Path, plan_name: str, n_jobs: Optional[int] = None,
                 python: str = sys.executable):
        if cluster not in ("slurm", "local"):
            raise ValueError(f"cluster must be 'slurm' or 'local', got {cluster!r}")
        self.name = "slurm" if cluster == "slurm" else "submitit-local"
        self.cluster, self.groups, self.settings = cluster, groups, settings
        self.src_dir, self.log_dir, self.python, self.plan_name = Path(src_dir), Path(log_dir), python, plan_name
        self.n_jobs = n_jobs
        executor_class = submitit.SlurmExecutor if cluster == "slurm" else submitit.LocalExecutor
        self._executor = executor_class(folder=str(folder), max_num_timeout=MAX_REQUEUES)
        # Workers import this package from the same checkout as the sweep.
        self._setup = [f"export PYTHONPATH={shlex.quote(str(self.src_dir))}${{PYTHONPATH:+:$PYTHONPATH}}",
                       *settings.setup]
        self._running: Dict[str, Any] = {}
        self._last_poll = 0.0

    def capacity(self) -> int:
        # SLURM queues everything (array_parallelism caps what runs); the local executor runs all at once.
        if self.n_jobs is None:
            return 1_000_000
        return self.n_jobs - len(self._running)

    def submit(self, jobs: Sequence[Job]) -> Dict[str, Optional[str]]:
        by_group: Dict[str, List[Job]] = defaultdict(list)
        for job in jobs:
            by_group[job.group].append(job)
        ids: Dict[str, Optional[str]] = {}
        for group, members in by_group.items():
            self._executor.update_parameters(**executor_parameters(
                self.cluster, self.groups[group], self.settings, self._setup, f"sweep-{self.plan_name}-{group}"))
            size = self.settings.max_array_size
            for start in range(0, len(members), size):
                chunk = members[start:start + size]
                with self._executor.batch():
                    handles = [self._executor.submit(SweepTask(), job.command(self.src_dir, self.python),
                                                     str(self.log_dir / job.log_name), str(self.src_dir))
                               for job in chunk]
                for job, handle in zip(chunk, handles):
                    self._running[job.id] = handle
                    ids[job.id] = str(handle.job_id)
                logger.info("submitted %d job(s) of group %s (%s): %s", len(chunk), group,
                            self.groups[group].describe(), ", ".join(ids[j.id] for j in chunk[:3]) +
                            (", ..." if len(chunk) > 3 else ""))
        return ids

    def wait(self, timeout: float) -> List[Tuple[str, JobResult]]:
        deadline = time.monotonic() + timeout
        # The local executor's jobs are processes here; SLURM's states come from sacct, asked once per poll.
        interval = 0.2 if self.cluster == "local" else timeout
        while True:
            done = [(job_id, handle) for job_id, handle in self._running.items() if handle.done()]
            if done or time.monotonic() >= deadline:
                break
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        results = []
        for job_id, handle in done:
            del self._running[job_id]
            results.append((job_id, self._result(handle)))
        return results

    @staticmethod
    def _result(handle: Any) -> JobResult:
        try:
            return handle.result()
        except Exception as err:  # the worker died: out of memory, time limit after requeues, node failure
            line = " ".join(str(err).split())[:300]
            now = utc_now()
            return JobResult(returncode=1, wall_s=0.0, peak_rss_mib=None, error=f"worker failed: {line}",
                             started_utc=now, ended_utc=now)

    def interrupt(self, grace_s: float = 0.0) -> List[Tuple[str, JobResult]]:
        """Cancel every submitted job; they are recorded as interrupted and run again next time."""
        results = []
        now = utc_now()
        for job_id, handle in list(self._running.items()):
            try:
                handle.cancel(check=False)
            except Exception as err:  # pragma: no cover - scancel missing or refusing
                logger.warning("could not cancel %s (%s): %s", job_id, handle.job_id, err)
            results.append((job_id, JobResult(returncode=130, wall_s=0.0, peak_rss_mib=None, error="interrupted",
                                              started_utc=now, ended_utc=now)))
        self._running.clear()
        return results

    def close(self) -> None:
        pass
