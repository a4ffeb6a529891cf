"""Run a sweep's jobs in dependency order on a backend, keeping the manifest current.

Backends share one small interface (``capacity``, ``submit``, ``wait``, ``interrupt``); a
backend whose jobs outlive the sweep also has ``reattach`` (what became of the jobs a killed
sweep submitted) and ``updates`` (manifest fields of running jobs that changed, e.g. a requeue):

* :class:`LocalBackend`: up to ``--jobs N`` job processes at once on this machine;
* :class:`~icl_cmr.sweeps.slurm_backend.SlurmBackend`: SLURM job arrays through ``submitit``,
  followed through ``squeue``/``sacct`` (requeue, preemption, cancellation, no accounting);
* :class:`~icl_cmr.sweeps.submitit_backend.SubmititBackend`: submitit's local executor.

The loop (:func:`run_sweep`) settles every job once: a job whose dependencies failed is
``blocked``; one whose outputs are current (and none of whose dependencies ran again) is ``skipped``; one that failed before stays
``failed`` unless ``retry_failed``; the rest run. Aggregation jobs wait until every score job
has settled and are rebuilt from the scores that finished. Ctrl-C (``KeyboardInterrupt``)
stops the running jobs, records them as ``interrupted`` and leaves a consistent manifest.
"""
from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from icl_cmr.sweeps.execute import JobResult, job_environment, run_command, utc_now
from icl_cmr.sweeps.jobs import Job, aggregate_jobs, input_signatures, read_metadata, score_path, stale_reason
from icl_cmr.sweeps.manifest import FINISHED_OK, save_manifest
from icl_cmr.sweeps.plan import Plan

logger = logging.getLogger(__name__)

#: Seconds running jobs get to stop after Ctrl-C before they are killed (our scripts stop at once;
#: a model halfway through loading may take a few seconds).
INTERRUPT_GRACE_S = 20.0
#: States after which a job is not looked at again in this run.
SETTLED = ("done", "skipped", "failed", "blocked")


class LocalBackend:
    """Job processes on this machine, at most ``n_jobs`` at once."""

    name = "local"

    def __init__(self, n_jobs: int, src_dir: Path, log_dir: Path, python: str = sys.executable):
        self.n_jobs, self.src_dir, self.log_dir, self.python = n_jobs, Path(src_dir), Path(log_dir), python
        self._pool = ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="sweep-job")
        self._futures: Dict[Future, str] = {}
        self._processes: Dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._env = job_environment(self.src_dir)

    def capacity(self) -> int:
        return self.n_jobs - len(self._futures)

    def _remember(self, job_id: str) -> Callable[[subprocess.Popen], None]:
        def remember(process: subprocess.Popen) -> None:
            with self._lock:
                self._processes[job_id] = process
        return remember

    def submit(self, jobs: Sequence[Job]) -> Dict[str, Dict[str, Any]]:
        """Start ``jobs``; ``{job id: fields for its manifest record}`` (none here)."""
        for job in jobs:
            future = self._pool.submit(run_command, job.command(self.src_dir, self.python),
                                       self.log_dir / job.log_name, self._env, self._remember(job.id))
            self._futures[future] = job.id
        return {job.id: {} for job in jobs}

    def wait(self, timeout: float) -> List[Tuple[str, JobResult]]:
        if not self._futures:
            return []
        finished, _ = wait(list(self._futures), timeout=timeout, return_when=FIRST_COMPLETED)
        out = []
        for future in finished:
            job_id = self._futures.pop(future)
            with self._lock:
                self._processes.pop(job_id, None)
            out.append((job_id, future.result()))
        return out

    def interrupt(self, grace_s: float = INTERRUPT_GRACE_S) -> List[Tuple[str, JobResult]]:
        """Send SIGINT to every running job (a terminal's Ctrl-C already did), wait, then kill."""
        with self._lock:
            processes = list(self._processes.values())
        for process in processes:
            if process.returncode is None:
                try:
                    process.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        results: List[Tuple[str, JobResult]] = []
        while self._futures and time.monotonic() < deadline:
            results += self.wait(timeout=0.2)
        with self._lock:
            left = list(self._processes.values())
        for process in left:
            if process.returncode is None:
                try:
                    process.kill()
                except ProcessLookupError:
                    pass
        while self._futures:
            results += self.wait(timeout=1.0)
        return results

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _finished_scores(plan: Plan, records: Mapping[str, Dict[str, Any]], jobs: Mapping[str, Job]
                     ) -> Dict[str, Set[Optional[int]]]:
    """(model -> steps) whose scores are there: from this sweep's score jobs, or files when not scoring."""
    finished: Dict[str, Set[Optional[int]]] = {m.name: set() for m in plan.models}
    for job_id, job in jobs.items():
        if job.stage == "scores" and records[job_id]["state"] in FINISHED_OK:
            finished[str(job.model)].add(job.step)
    if "scores" not in plan.stages:
        for m in plan.models:
            finished[m.name] = {s for s in m.steps if score_path(plan, m, s).is_file()}
    return finished


def _peak_gpu(job: Job) -> Optional[float]:
    """Peak GPU memory a score job recorded in its output's metadata (None elsewhere or on CPU)."""
    if job.stage != "scores" or not job.checks:
        return None
    metadata = read_metadata(Path(job.checks[0].path))
    value = (metadata or {}).get("peak_gpu_memory_gib")
    return float(value) if isinstance(value, (int, float)) else None


def run_sweep(plan: Plan, jobs: Sequence[Job], backend: Any, manifest: Dict[str, Any], manifest_file: Path,
              retry_failed: bool = False, progress: bool = True, poll_s: float = 0.5) -> Dict[str, int]:
    """Settle every job of ``jobs`` on ``backend``; ``manifest`` is updated and saved at each change.

    Parameters
    ----------
    plan : Plan
    jobs : sequence of Job
        From :func:`icl_cmr.sweeps.jobs.build_jobs`, in run order; ``manifest["jobs"]`` has one
        record per job, in the same order.
    backend : LocalBackend, SlurmBackend or SubmititBackend
    manifest : dict
        From :func:`icl_cmr.sweeps.manifest.build_manifest` (previous states carried over).
    manifest_file : Path
        Where the manifest is saved (atomically).
    retry_failed : bool
        Run again the jobs that failed in an earlier run (otherwise they stay failed).
    progress : bool
        Show a progress bar over jobs (stderr).
    poll_s : float
        Longest wait between looks at the backend.

    Returns
    -------
    dict
        State -> number of jobs, plus ``"ran"``: jobs started in this run.

    Raises
    ------
    KeyboardInterrupt
        After Ctrl-C, once running jobs are stopped and recorded as ``interrupted``.
    """
    from tqdm import tqdm

    records = {r["id"]: r for r in manifest["jobs"]}
    by_id = {job.id: job for job in jobs}
    earlier_failure = {job_id for job_id, r in records.items() if r["state"] == "failed"}
    # Jobs a killed sweep left running: a backend whose jobs outlive it looks for them (SLURM); others run them again.
    submitted = [(by_id[job_id], dict(r)) for job_id, r in records.items() if r["state"] == "running"]
    for record in records.values():
        record["state"], record["reason"] = "pending", None
        if record["id"] not in earlier_failure:
            record["error"] = None
    unsettled = [job.id for job in jobs]
    running: Set[str] = set()
    ran_now: Set[str] = set()   # jobs that succeeded in this run: what needs them is stale whatever the clocks say
    started_with: Dict[str, Dict[str, Any]] = {}   # job -> its inputs' signatures when it started
    ran = 0

    def save() -> None:
        save_manifest(manifest_file, manifest)

    def settle(job_id: str, state: str, reason: Optional[str] = None) -> None:
        records[job_id]["state"], records[job_id]["reason"] = state, reason
        unsettled.remove(job_id)
        bar.update(1)

    def record_result(job_id: str, result: JobResult) -> None:
        record = records[job_id]
        running.discard(job_id)
        record.update(wall_s=result.wall_s, peak_rss_mib=result.peak_rss_mib, started_utc=result.started_utc,
                      ended_utc=result.ended_utc, error=result.error, requeues=result.restarts)
        if result.ok:
            record["peak_gpu_gib"] = _peak_gpu(by_id[job_id])
            record["input_signatures"] = started_with.get(job_id)
            ran_now.add(job_id)
            settle(job_id, "done")
            logger.info("done %s (%.1f s, peak %s MiB)", job_id, result.wall_s, result.peak_rss_mib)
        elif stopping:  # we stopped it: however it ended (130, a signal, an error while stopping), it did not fail
            record["state"] = "interrupted"
        else:
            settle(job_id, "failed")
            log = backend.log_dir / by_id[job_id].log_name
            logger.error("failed %s: %s%s", job_id, result.error, f" (log: {log})" if log.exists() else "")

    def reattach() -> None:
        """Settle what became of the jobs a killed sweep submitted, before anything is submitted again."""
        for job_id, (found, result, note) in backend.reattach(submitted).items():
            record = records[job_id]
            if found == "alive":
                record.update(state="running", reason=note)
                running.add(job_id)
                started_with[job_id] = input_signatures(by_id[job_id])   # its inputs were final when it was submitted
                logger.info("%s: %s", job_id, note)
            elif found == "finished" and result is not None:
                started_with[job_id] = input_signatures(by_id[job_id])
                logger.info("%s: %s", job_id, note)
                record_result(job_id, result)
            else:   # runs again below, if its outputs are not there; its first run counted as an attempt
                record.update(error=None)
                logger.warning("%s: %s; it runs again", job_id, note)

    stopping = False
    bar = tqdm(total=len(jobs), desc=f"sweep {plan.name}", unit="job", disable=not progress)
    try:
        if submitted and hasattr(backend, "reattach"):
            reattach()
        elif submitted:
            logger.warning("%d job(s) were running when the last sweep of this plan stopped; they run again",
                           len(submitted))
        save()
        while unsettled:
            before = len(unsettled)
            ready: List[Job] = []
            for job_id in list(unsettled):
                if job_id in running:
                    continue
                job = by_id[job_id]
                waits = [records[d]["state"] for d in (*job.depends_on, *job.after) if d in records]
                if any(state not in SETTLED for state in waits):
                    continue
                broken = [d for d in job.depends_on if d in records and records[d]["state"] in ("failed", "blocked")]
                if broken:
                    settle(job_id, "blocked", f"needs {broken[0]} ({records[broken[0]]['state']})")
                    continue
                if job.stage == "aggregate":
                    rebuilt = {j.id: j for j in aggregate_jobs(plan, _finished_scores(plan, records, by_id))}
                    if job_id not in rebuilt:
                        settle(job_id, "blocked", "none of its inputs finished")
                        continue
                    job = by_id[job_id] = rebuilt[job_id]
                    records[job_id]["argv"] = list(job.argv)
                reran = [d for d in job.depends_on if d in ran_now] + \
                    [d for d in sorted(ran_now) if set(by_id[d].outputs) & set(job.inputs)]
                recorded = records[job_id].get("input_signatures")
                reason = f"{reran[0]} ran again" if reran else stale_reason(job, recorded)
                if reason is None:
                    records[job_id].update(input_signatures=recorded or input_signatures(job), error=None)
                    settle(job_id, "skipped", "outputs up to date")
                    continue
                if job_id in earlier_failure and not retry_failed:
                    settle(job_id, "failed", "failed before; rerun with --retry-failed")
                    continue
                records[job_id]["reason"] = reason
                ready.append(job)
            free = backend.capacity()
            start = ready[:max(free, 0)]
            if len(unsettled) != before and not start:
                save()
            if start:
                for job in start:
                    started_with[job.id] = input_signatures(job)
                fields = backend.submit(start)
                for job in start:
                    record = records[job.id]
                    record.update(state="running", attempts=int(record.get("attempts") or 0) + 1, backend_id=None,
                                  slurm=None, requeues=0, error=None, started_utc=utc_now(), ended_utc=None)
                    record.update(fields.get(job.id, {}))
                    running.add(job.id)
                    ran += 1
                    logger.info("start %s: %s", job.id, record["reason"])
                save()
            if not running:
                if unsettled and not start and len(unsettled) == before:  # a dependency outside the plan
                    raise RuntimeError(f"sweep cannot progress: {unsettled[0]} waits on a job that never runs")
                continue
            finished = backend.wait(timeout=poll_s)
            for job_id, result in finished:
                record_result(job_id, result)
            updates = backend.updates() if hasattr(backend, "updates") else {}
            for job_id, changed in updates.items():
                if job_id in running:
                    records[job_id].update(changed)
            if finished or updates:
                save()
        save()
    except KeyboardInterrupt:
        stopping = True
        logger.warning("interrupted: stopping %d running job(s)", len(running))
        for job_id, result in backend.interrupt():
            record_result(job_id, result)
        for job_id in list(running):
            records[job_id]["state"] = "interrupted"
        for job_id in unsettled:
            if records[job_id]["state"] not in ("interrupted",):
                records[job_id]["state"], records[job_id]["reason"] = "pending", None
        save()
        raise
    finally:
        bar.close()
    counts: Dict[str, int] = {}
    for record in records.values():
        counts[record["state"]] = counts.get(record["state"], 0) + 1
    counts["ran"] = ran
    return counts
