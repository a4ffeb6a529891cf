"""The sweep manifest: one record per job with its state, time, peak memory and error line.

Written atomically (:func:`icl_cmr.files.writing.save_json`) after every change of state, at
``<scores_dir>/sweeps/<plan>/manifest.json``, so it is whole even when the sweep is killed.
A job found ``running`` in a manifest whose sweep is gone was cut off: on SLURM the next sweep asks
the queue about it (``backend_id``, ``slurm``: array job and task) and re-attaches to it while it
is queued or running; elsewhere it runs again.

States: ``pending`` (to run), ``running``, ``done`` (ran and succeeded), ``skipped`` (outputs
already current), ``failed`` (the error line says why; rerun only with ``--retry-failed``),
``blocked`` (a job it needs failed), ``interrupted`` (stopped by Ctrl-C; runs again next time).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional

from icl_cmr.errors import FileContentError, InputError
from icl_cmr.files.folders import ensure_writable_dir
from icl_cmr.files.reading import load_json
from icl_cmr.files.writing import save_json
from icl_cmr.sweeps.execute import utc_now
from icl_cmr.sweeps.jobs import Job

STATES = ("pending", "running", "done", "skipped", "failed", "blocked", "interrupted")
#: States whose outputs exist and are current.
FINISHED_OK = ("done", "skipped")
#: Manifest format version.
MANIFEST_VERSION = 1
#: Fields measured by a run, kept while a job is later found up to date.
_MEASURED = ("started_utc", "ended_utc", "wall_s", "peak_rss_mib", "peak_gpu_gib", "requeues")


def manifest_path(sweep_dir: "str | Path") -> Path:
    return Path(sweep_dir) / "manifest.json"


def read_manifest(path: "str | Path") -> Optional[Dict[str, Any]]:
    """The manifest at ``path``, or None when there is none yet."""
    path = Path(path)
    if not path.is_file():
        return None
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        raise FileContentError(f"{path}: not a sweep manifest (no 'jobs' list); move it away to start afresh")
    return data


def new_record(job: Job, previous: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """A job's record: its description now, with state and measurements carried over from ``previous``."""
    record: Dict[str, Any] = {
        "id": job.id, "stage": job.stage, "model": job.model, "step": job.step, "script": job.script,
        "argv": list(job.argv), "group": job.group, "outputs": list(job.outputs), "log": job.log_name,
        "state": "pending", "reason": None, "error": None, "attempts": 0, "backend_id": None,
        "slurm": None, "input_signatures": None, **{key: None for key in _MEASURED},
    }
    if previous:
        for key in ("state", "error", "attempts", "backend_id", "slurm", "input_signatures", *_MEASURED):
            record[key] = previous.get(key, record[key])
        if record["state"] not in STATES:
            record["state"] = "pending"
    return record


def build_manifest(plan_name: str, plan_path: str, backend: str, jobs: Iterable[Job],
                   previous: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The manifest for ``jobs``; records of jobs no longer in the plan are dropped."""
    old = {r["id"]: r for r in (previous or {}).get("jobs", []) if isinstance(r, dict) and "id" in r}
    return {"version": MANIFEST_VERSION, "plan": plan_name, "plan_file": plan_path, "backend": backend,
            "created_utc": (previous or {}).get("created_utc", utc_now()), "updated_utc": utc_now(),
            "jobs": [new_record(job, old.get(job.id)) for job in jobs]}


def save_manifest(path: "str | Path", manifest: Dict[str, Any]) -> Path:
    manifest["updated_utc"] = utc_now()
    return save_json(path, manifest)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}{unit}" if value < 1000 else f"{value:.0f}{unit}"
    return f"{value}{unit}"


def count_states(records: Iterable[Mapping[str, Any]]) -> Dict[str, int]:
    counts = {state: 0 for state in STATES}
    for record in records:
        counts[record["state"]] = counts.get(record["state"], 0) + 1
    return {state: n for state, n in counts.items() if n}


def status_table(manifest: Mapping[str, Any], width: int = 60) -> str:
    """The manifest as a text table: job, state, wall time, peak memory, attempts, error or reason."""
    records: List[Mapping[str, Any]] = manifest["jobs"]
    header = ("job", "state", "time", "peak RSS", "peak GPU", "runs", "error / note")
    rows = [header]
    for r in records:
        requeued = f"requeued {r['requeues']}x by SLURM" if r.get("requeues") else ""
        note = r.get("error") or r.get("reason") or requeued
        if len(note) > width:
            note = note[: width - 3] + "..."
        rows.append((r["id"], r["state"], _fmt(r.get("wall_s"), " s"), _fmt(r.get("peak_rss_mib"), " MiB"),
                     _fmt(r.get("peak_gpu_gib"), " GiB"), str(r.get("attempts", 0)), note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = ", ".join(f"{n} {state}" for state, n in count_states(records).items())
    total = sum(r.get("wall_s") or 0.0 for r in records if r["state"] in FINISHED_OK + ("failed",))
    lines.append("")
    lines.append(f"{manifest.get('plan')}: {len(records)} jobs: {counts}; recorded job time {total:.0f} s; "
                 f"updated {manifest.get('updated_utc')}")
    return "\n".join(lines)


@contextmanager
def sweep_lock(sweep_dir: "str | Path") -> Iterator[Path]:
    """Hold ``<sweep_dir>/.lock`` for the duration of a sweep, so two sweeps of one plan never mix.

    Raises
    ------
    InputError
        If another process holds it (the lock dies with its process, so a killed sweep frees it).
    """
    import fcntl  # POSIX only, and only a running sweep needs the lock

    path = ensure_writable_dir(sweep_dir) / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another sweep of this plan is running (it holds {path}); "
                             "wait for it or stop it first") from None
        try:
            yield path
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
