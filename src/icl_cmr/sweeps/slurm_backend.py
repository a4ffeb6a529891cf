"""SLURM as a sweep backend: submit through submitit, track every task through the queue.

A task is followed by two things: its submitit result file (written by the worker when the
script ends: the job's :class:`~icl_cmr.sweeps.execute.JobResult`) and what SLURM says about it
(:class:`~icl_cmr.sweeps.slurm_queue.SlurmQueue`, asked once per ``poll_s``):

* a result file: the job is done or failed, as the script ended;
* queued or running, whatever it went through (``scontrol requeue`` and preemption put it back
  to ``PENDING`` with a higher ``RestartCnt``; the manifest notes "preempted or requeued (attempt 2
  of 4)"): keep waiting;
* ended or gone without a result, and still so after :data:`GONE_GRACE_S` (a result file may
  appear late on a shared file system): failed, with what SLURM says (``cancelled by SLURM
  (CANCELLED)``, ``time limit (TIMEOUT)``, ...).

A failed result is checked against the queue before it counts: one from a run that SLURM has since
requeued (the task queued again with a higher ``RestartCnt`` than the run that wrote it) is the
past, and the next run's result replaces it.

A restarted driver first re-attaches (:meth:`SlurmBackend.reattach`) to the tasks its manifest
records as submitted, so no job already in the queue is submitted twice.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from submitit.core.utils import JobPaths

from icl_cmr.errors import InputError
from icl_cmr.sweeps.execute import JobResult, result_without_run
from icl_cmr.sweeps.jobs import Job
from icl_cmr.sweeps.plan import ResourceGroup, SlurmSettings
from icl_cmr.sweeps.slurm_queue import SlurmQueue, TaskState, describe_ending
from icl_cmr.sweeps.submitit_backend import MAX_ATTEMPTS, SubmititBackend, read_result_file

logger = logging.getLogger(__name__)

#: Seconds a task may be ended or gone from the queue without a result before it counts as failed.
GONE_GRACE_S = 15.0
#: Seconds between looks for result files while waiting (a file test each; the queue is asked once per poll_s).
RESULT_CHECK_S = 1.0


@dataclass
class _Task:
    """One submitted SLURM task of a sweep job."""

    job_id: str
    slurm_id: str
    paths: JobPaths
    restarts: int = 0
    gone_since: Optional[float] = None
    stale_result: Optional[int] = None   # mtime of a failed run's result file that SLURM has since requeued

    def record_fields(self) -> Dict[str, Any]:
        array_job, _, task = self.slurm_id.partition("_")
        return {"backend_id": self.slurm_id,
                "slurm": {"job_id": self.slurm_id, "array_job_id": array_job,
                          "array_task_id": int(task) if task.isdigit() else None, "restarts": self.restarts}}


def requeue_note(restarts: int) -> str:
    return f"preempted or requeued by SLURM (attempt {restarts + 1} of {MAX_ATTEMPTS})"


class SlurmBackend(SubmititBackend):
    """Jobs as SLURM job arrays (sbatch through submitit), followed through ``squeue`` / ``sacct``.

    Parameters
    ----------
    folder : Path
        submitit's folder (submission scripts, pickles, worker logs); on a file system the nodes share.
    groups, settings : resource groups and ``[slurm]`` settings of the plan.
    src_dir, log_dir : Path
        The repository's ``src`` (what the jobs run) and the folder of the job logs.
    plan_name : str
        Names the SLURM jobs (``sweep-<plan>-<group>``).
    queue : SlurmQueue, optional
        Default: one that asks this machine's SLURM (and finds out whether ``sacct`` answers).
    gone_grace_s : float
        See :data:`GONE_GRACE_S`.
    """

    def __init__(self, folder: Path, groups: Mapping[str, ResourceGroup], settings: SlurmSettings, src_dir: Path,
                 log_dir: Path, plan_name: str, python: str = sys.executable, queue: Optional[SlurmQueue] = None,
                 gone_grace_s: float = GONE_GRACE_S):
        super().__init__("slurm", folder, groups, settings, src_dir, log_dir, plan_name, python=python)
        self.queue = queue if queue is not None else SlurmQueue()
        self.poll_s, self.gone_grace_s = settings.poll_s, gone_grace_s
        self._tasks: Dict[str, _Task] = {}
        self._updates: Dict[str, Dict[str, Any]] = {}
        self._last_query = float("-inf")

    def _track(self, job_id: str, slurm_id: str, restarts: int = 0) -> _Task:
        task = _Task(job_id, slurm_id, JobPaths(self.folder, job_id=slurm_id, task_id=0), restarts)
        self._tasks[job_id] = task
        return task

    def submit(self, jobs: Sequence[Job]) -> Dict[str, Dict[str, Any]]:
        handles = self._submit_handles(jobs)
        return {job_id: self._track(job_id, str(handle.job_id)).record_fields() for job_id, handle in handles.items()}

    # ------------------------------------------------------------------ results and queue states

    def _read_result(self, task: _Task) -> Optional[JobResult]:
        """The task's result file, as a JobResult; None while there is none (or only a stale one)."""
        path = task.paths.result_pickle
        try:
            if path.stat().st_mtime_ns == task.stale_result:
                return None
        except OSError:
            return None
        return read_result_file(path, restarts=task.restarts)

    def _ending(self, task: _Task, state: TaskState) -> JobResult:
        started = task.paths.stdout.exists()   # SLURM creates the worker's log when the task starts
        return result_without_run(describe_ending(state.state, started, self.queue.accounting), restarts=task.restarts)

    def _note_restarts(self, task: _Task, state: TaskState) -> None:
        if state.restarts > task.restarts:
            task.restarts = state.restarts
            note = requeue_note(state.restarts)
            logger.warning("%s: SLURM job %s %s", task.job_id, task.slurm_id, note)
            self._updates[task.job_id] = {"reason": note, **task.record_fields()}

    def _is_stale(self, task: _Task, result: JobResult, state: Optional[TaskState]) -> bool:
        """Whether ``result`` failed in a run that SLURM has requeued since (then it is ignored from now on)."""
        if result.ok or state is None or not state.alive or state.restarts <= result.restarts:
            return False
        try:
            task.stale_result = task.paths.result_pickle.stat().st_mtime_ns
        except OSError:
            pass
        self._note_restarts(task, state)
        logger.info("%s: ignoring the failure of SLURM job %s's run %d: it was requeued (%s)", task.job_id,
                    task.slurm_id, result.restarts + 1, result.error)
        return True

    def _collect_results(self) -> List[Tuple[str, JobResult]]:
        """Results written since the last look; failures only once the queue confirms them."""
        found = [(task, result) for task in self._tasks.values() if (result := self._read_result(task)) is not None]
        failed = [task.slurm_id for task, result in found if not result.ok]
        states = self.queue.states(failed) if failed else {}
        results = []
        for task, result in found:
            if not result.ok and (states is None or self._is_stale(task, result, states[task.slurm_id])):
                continue   # no answer from SLURM: confirm at the next look
            del self._tasks[task.job_id]
            results.append((task.job_id, result))
        return results

    def _poll_queue(self) -> List[Tuple[str, JobResult]]:
        """Ask SLURM once; tasks ended or gone for longer than the grace period end as failed."""
        self._last_query = now = time.monotonic()
        states = self.queue.states(task.slurm_id for task in self._tasks.values())
        if states is None:
            return []
        results = []
        for job_id, task in list(self._tasks.items()):
            state = states[task.slurm_id]
            if state.alive:
                task.gone_since = None
                self._note_restarts(task, state)
                continue
            if task.gone_since is None:
                task.gone_since = now
            if now - task.gone_since < self.gone_grace_s:
                continue
            del self._tasks[job_id]
            results.append((job_id, self._read_result(task) or self._ending(task, state)))
        return results

    def wait(self, timeout: float) -> List[Tuple[str, JobResult]]:
        deadline = time.monotonic() + timeout
        while True:
            results = self._collect_results()
            if not results and self._tasks and time.monotonic() - self._last_query >= self.poll_s:
                results = self._poll_queue()
            left = deadline - time.monotonic()
            if results or left <= 0 or not self._tasks:
                return results
            time.sleep(min(RESULT_CHECK_S, left))

    def updates(self) -> Dict[str, Dict[str, Any]]:
        """Manifest fields that changed for jobs still running (requeues), since the last call."""
        updates, self._updates = self._updates, {}
        return updates

    # ------------------------------------------------------------------ a restarted driver

    def reattach(self, submitted: Sequence[Tuple[Job, Mapping[str, Any]]]
                 ) -> Dict[str, Tuple[str, Optional[JobResult], str]]:
        """Find out what became of jobs an earlier driver submitted (manifest state ``running``).

        Returns
        -------
        dict
            job id -> (``"alive"``, None, note): still queued or running, now tracked again (never
            submitted twice); (``"finished"``, JobResult, note): its result file is there; (``"gone"``,
            None, why): it ended without a result, to run again.

        Raises
        ------
        InputError
            If SLURM does not answer: rather than risk running a job twice, the sweep stops.
        """
        out: Dict[str, Tuple[str, Optional[JobResult], str]] = {}
        tasks = []
        for job, record in submitted:
            slurm = record.get("slurm") or {}   # only what this backend submitted: another's ids are no SLURM jobs
            if not slurm.get("job_id"):
                out[job.id] = ("gone", None, "no SLURM job recorded for it (run by another backend)")
                continue
            slurm_id = str(slurm["job_id"])
            tasks.append(_Task(job.id, slurm_id, JobPaths(self.folder, job_id=slurm_id, task_id=0),
                               int(slurm.get("restarts") or 0)))
        states = self.queue.states(task.slurm_id for task in tasks)
        if states is None and tasks:
            raise InputError(f"SLURM does not answer (squeue{'/sacct' if self.queue.accounting else ''}): cannot tell "
                             f"whether the {len(tasks)} job(s) the last sweep submitted ({tasks[0].slurm_id}, ...) are "
                             "still queued; run the sweep again when the controller answers")
        for task in tasks:
            result = self._read_result(task)
            state = (states or {})[task.slurm_id]
            if result is not None and self._is_stale(task, result, state):
                result = None
            if result is not None:
                out[task.job_id] = ("finished", result, f"SLURM job {task.slurm_id} finished while no sweep ran")
            elif state.alive:
                self._tasks[task.job_id] = task
                self._note_restarts(task, state)
                out[task.job_id] = ("alive", None, f"SLURM job {task.slurm_id} still {state.state}: re-attached")
            else:
                out[task.job_id] = ("gone", None, f"SLURM job {task.slurm_id}: {self._ending(task, state).error}")
        return out

    def interrupt(self, grace_s: float = 0.0) -> List[Tuple[str, JobResult]]:
        """``scancel`` every tracked task; they are recorded as interrupted and run again next time."""
        self.queue.cancel([task.slurm_id for task in self._tasks.values()])
        results = [(job_id, result_without_run("interrupted", returncode=130)) for job_id in self._tasks]
        self._tasks.clear()
        return results

