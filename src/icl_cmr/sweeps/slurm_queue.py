"""What SLURM says about a sweep's tasks: ``squeue`` always, ``sacct`` where accounting answers.

The sweep tracks its own SLURM tasks (rather than through submitit's watcher, which asks only
``sacct`` and takes "no answer" for "still running"), so that it can

* re-attach to tasks still queued or running when a restarted driver finds them in its manifest;
* follow a task that SLURM requeues (``scontrol requeue``, preemption: the task is ``PENDING``
  again with a higher ``RestartCnt``) until it really ends;
* work without accounting: ``squeue -t all`` keeps a finished task for ``MinJobAge`` (300 s by
  default); a task neither ``squeue`` nor ``sacct`` knows has left the queue. SLURM 22.05 keeps no
  record at all of a pending array task cancelled on its own (``scancel 123_4``), with or without
  accounting, so "gone" is an answer in its own right.

Only the standard library is used; every command has a timeout, and a command that fails (the
controller restarting, a network hiccup) answers "unknown", never "gone".
"""
from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

logger = logging.getLogger(__name__)

#: States of a task that may still run or run again (``squeue -t all`` and ``sacct`` names).
ALIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
                          "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "SPECIAL_EXIT"})
#: State name for a task that neither squeue nor sacct knows.
GONE = "GONE"
#: Seconds any one SLURM command may take.
COMMAND_TIMEOUT_S = 30.0

#: How each final state is told in a job's error line (the state name follows in parentheses).
_ENDINGS = {
    "CANCELLED": "cancelled by SLURM",
    "TIMEOUT": "time limit",
    "DEADLINE": "time limit (deadline)",
    "PREEMPTED": "preempted by SLURM and not requeued",
    "OUT_OF_MEMORY": "out of memory",
    "NODE_FAIL": "node failure",
    "BOOT_FAIL": "node failed to boot",
    "FAILED": "failed without a result",
    "COMPLETED": "ended without a result",
}


@dataclass(frozen=True)
class TaskState:
    """One SLURM task as the scheduler sees it.

    Attributes
    ----------
    state : str
        SLURM's state name (``PENDING``, ``RUNNING``, ``COMPLETED``, ``CANCELLED``, ...), or
        :data:`GONE` when neither squeue nor sacct knows the task.
    restarts : int
        ``RestartCnt``: how often SLURM requeued it (squeue only; 0 where unknown).
    source : str
        ``squeue``, ``sacct`` or ``none``.
    """

    state: str
    restarts: int = 0
    source: str = "none"

    @property
    def alive(self) -> bool:
        return self.state in ALIVE_STATES


def describe_ending(state: str, started: bool, accounting: bool) -> str:
    """The error line of a task that ended in ``state`` without leaving a result.

    Parameters
    ----------
    state : str
        Its final SLURM state, or :data:`GONE`.
    started : bool
        Whether it ever started (its submitit log exists).
    accounting : bool
        Whether ``sacct`` answers (without it a purged record cannot be told apart from a cancellation).
    """
    if state == GONE:
        if not started:
            return ("cancelled by SLURM before it started (it left the queue; SLURM keeps no record of a cancelled "
                    "pending array task)")
        if accounting:
            return "left the SLURM queue without a result and without a record in sacct (cancelled or lost)"
        return "left the SLURM queue without a result (cancelled or lost; without accounting SLURM cannot tell which)"
    return f"{_ENDINGS.get(state, 'ended without a result')} ({state})"


def parse_squeue(text: str) -> Dict[str, TaskState]:
    """``squeue -h -r -t all -O JobArrayID:0|,State:0|,RestartCnt:0`` output -> ``{task id: TaskState}``."""
    out: Dict[str, TaskState] = {}
    for line in text.splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) < 3 or not parts[0]:
            continue
        restarts = int(parts[2]) if parts[2].isdigit() else 0
        out[parts[0]] = TaskState(parts[1].split()[0] if parts[1] else "UNKNOWN", restarts, "squeue")
    return out


def _expand_sacct_id(job_id: str) -> List[str]:
    """``123_4`` -> [``123_4``]; a pending array's ``123_[1-3,5%2]`` -> [``123_1``, ..., ``123_5``]."""
    if "_[" not in job_id:
        return [job_id]
    base, rest = job_id.split("_[", 1)
    ranges = rest.rstrip("]").split("%")[0]
    ids = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit():
            continue
        ids += [f"{base}_{index}" for index in range(int(low), int(high or low) + 1)]
    return ids


def parse_sacct(text: str) -> Dict[str, TaskState]:
    """``sacct -n -P -X -o JobID,State`` output -> ``{task id: TaskState}`` (``CANCELLED by 0`` -> ``CANCELLED``)."""
    out: Dict[str, TaskState] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 2 or not parts[0] or "." in parts[0]:
            continue
        state = parts[1].split()[0] if parts[1].strip() else "UNKNOWN"
        for task in _expand_sacct_id(parts[0].strip()):
            out[task] = TaskState(state, 0, "sacct")
    return out


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
    """Run a SLURM client command; a missing binary or a timeout reads as a failed command."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        return subprocess.CompletedProcess(list(argv), 127, "", str(err))


class SlurmQueue:
    """Asks SLURM about tasks ``<array job>_<task>`` (or plain job ids).

    Parameters
    ----------
    runner : callable, optional
        Runs one command and returns a ``CompletedProcess`` (tests pass a fake scheduler).
    accounting : bool, optional
        Whether to ask ``sacct``; None: find out once with :meth:`probe_accounting`.
    """

    def __init__(self, runner: Runner = run_command, accounting: Optional[bool] = None):
        self._run = runner
        self.accounting = self.probe_accounting() if accounting is None else accounting

    def probe_accounting(self) -> bool:
        """Whether ``sacct`` answers (it exits 1 with "accounting storage is disabled" without slurmdbd)."""
        result = self._run(["sacct", "-n", "-P", "-X", "-o", "JobID", "-S", "now"])
        if result.returncode != 0:
            reason = " ".join((result.stderr or result.stdout or "").split())[:200] or f"exit code {result.returncode}"
            logger.warning("sacct does not answer (%s): tracking SLURM jobs with squeue alone; a job that leaves the "
                           "queue without a result counts as failed (cancelled or lost)", reason)
            return False
        return True

    def states(self, task_ids: Iterable[str]) -> Optional[Dict[str, TaskState]]:
        """``{task id: TaskState}`` for every id asked, or None when the scheduler did not answer.

        A task that squeue does not list is looked up in sacct (when accounting answers); one that
        neither knows is :data:`GONE`.
        """
        wanted = sorted(set(task_ids))
        if not wanted:
            return {}
        jobs = ",".join(sorted({task.split("_")[0] for task in wanted}))
        queue = self._run(["squeue", "-h", "-r", "-t", "all", "-j", jobs, "-O", "JobArrayID:0|,State:0|,RestartCnt:0"])
        if queue.returncode != 0 and "invalid job id" not in (queue.stderr or "").lower():
            logger.debug("squeue failed (%s): states unknown this time", " ".join((queue.stderr or "").split()))
            return None
        found = parse_squeue(queue.stdout if queue.returncode == 0 else "")
        missing = [task for task in wanted if task not in found]
        if missing and self.accounting:
            jobs = ",".join(sorted({task.split("_")[0] for task in missing}))
            record = self._run(["sacct", "-n", "-P", "-X", "-j", jobs, "-o", "JobID,State"])
            if record.returncode != 0:
                logger.debug("sacct failed (%s): states unknown this time", " ".join((record.stderr or "").split()))
                return None
            found.update({task: state for task, state in parse_sacct(record.stdout).items() if task in missing})
        return {task: found.get(task, TaskState(GONE)) for task in wanted}

    def cancel(self, task_ids: Sequence[str]) -> None:
        """``scancel`` the tasks (one command; failures are logged, not raised)."""
        if not task_ids:
            return
        result = self._run(["scancel", *task_ids])
        if result.returncode != 0:
            logger.warning("scancel %s failed: %s", " ".join(task_ids), " ".join((result.stderr or "").split()))
