"""Run one sweep job: ``python src/<script>.py <argv>`` in its own process.

A process per job (rather than calling the script's ``main`` in the sweep's process) keeps
jobs apart: a model's memory is returned to the system when its job ends, one job's crash or
out-of-memory kill fails only that job, logging and torch settings never leak from one job to
the next, ``--jobs N`` runs in parallel without the GIL, and each job's peak resident memory is
its own. The command is exactly what a user would type.

Peak memory: on Linux, the job process's ``VmHWM`` (``/proc/<pid>/status``, the high-water mark
of the program's own memory since ``exec``) sampled every :data:`PEAK_SAMPLE_S`; ``ru_maxrss``
from ``wait4`` would not do, as Linux carries the spawning process's (the sweep's) peak across
``exec`` into it. Elsewhere ``ru_maxrss`` is reported, an upper bound.

Only the standard library is used here: a SLURM worker imports this module to run its job.
"""
from __future__ import annotations

import datetime as _dt
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

#: Seconds between samples of a running job's memory high-water mark (it only grows, so a
#: sample taken after the peak reports it; a peak in the job's last interval can be missed).
PEAK_SAMPLE_S = 0.1


@dataclass(frozen=True)
class JobResult:
    """How one run of a job went.

    Attributes
    ----------
    returncode : int
        The script's exit status (negative: killed by that signal).
    wall_s : float
        Wall-clock seconds.
    peak_rss_mib : float or None
        Peak resident memory of the job's process (and any child it waited for), MiB.
    error : str or None
        The ``error: ... line the script printed, else the log's last line; None on success.
    started_utc, ended_utc : str
        ISO timestamps.
    restarts : int
        How often SLURM had requeued the job before this run (``SLURM_RESTART_COUNT``; 0 elsewhere).
    """

    returncode: int
    wall_s: float
    peak_rss_mib: Optional[float]
    error: Optional[str]
    started_utc: str
    ended_utc: str
    restarts: int = 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def result_without_run(error: str, returncode: int = 1, restarts: int = 0) -> JobResult:
    """A :class:`JobResult` for a job that ended with nothing measured (cancelled, lost, stopped)."""
    now = utc_now()
    return JobResult(returncode=returncode, wall_s=0.0, peak_rss_mib=None, error=error, started_utc=now,
                     ended_utc=now, restarts=restarts)


def error_line(log_text: str, returncode: int) -> str:
    """The one line that says why a job failed: its last ``error:`` line, else the log's last line."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1]
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by {name}" + (f" after: {lines[-1]}" if lines else "")
    if returncode == 130:
        return "interrupted"
    return lines[-1] if lines else f"exit code {returncode}"


def _high_water_kib(pid: int) -> Optional[int]:
    """``VmHWM`` of a running process, KiB (None where /proc does not tell)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def job_environment(src_dir: "str | Path") -> dict:
    """The job's environment: this one, figures without a display, the repository's ``src`` importable."""
    env = dict(os.environ)
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(src_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_command(command: Sequence[str], log_path: "str | Path", env: Optional[dict] = None,
                on_start: Optional[Callable[[subprocess.Popen], None]] = None) -> JobResult:
    """Run ``command`` with stdout and stderr in ``log_path``; wait for it and measure it.

    Parameters
    ----------
    command : sequence of str
        The command line.
    log_path : path
        Log file (replaced).
    env : dict, optional
        Environment (default: this process's).
    on_start : callable, optional
        Called with the ``Popen`` once the process runs (the sweep keeps it to forward Ctrl-C).

    Returns
    -------
    JobResult
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started, clock = utc_now(), time.monotonic()
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(command) + "\n").encode())
        log.flush()
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL)
        if on_start is not None:
            on_start(process)
        high_water_kib = 0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            high_water_kib = max(high_water_kib, _high_water_kib(process.pid) or 0)
            time.sleep(PEAK_SAMPLE_S)
        returncode = os.waitstatus_to_exitcode(status)
        process.returncode = returncode  # reaped here; keep Popen from waiting again
    wall = time.monotonic() - clock
    if sys.platform.startswith("linux"):
        peak = round(high_water_kib / 1024, 1) if high_water_kib else None
    else:  # ru_maxrss: bytes on macOS, KiB elsewhere
        scale = 1.0 / (1024 * 1024) if sys.platform == "darwin" else 1.0 / 1024
        peak = round(usage.ru_maxrss * scale, 1) if usage.ru_maxrss else None
    error = None
    if returncode != 0:
        error = error_line(log_path.read_text(errors="replace"), returncode)
    return JobResult(returncode=returncode, wall_s=round(wall, 2), peak_rss_mib=peak, error=error,
                     started_utc=started, ended_utc=utc_now())


def run_job_command(command: Sequence[str], log_path: str, src_dir: str,
                    on_start: Optional[Callable[[subprocess.Popen], None]] = None) -> JobResult:
    """What a SLURM (submitit) worker runs: :func:`run_command` with :func:`job_environment`."""
    return run_command(command, log_path, env=job_environment(src_dir), on_start=on_start)
