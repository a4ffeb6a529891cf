"""``src/sweep.py --backend slurm``: against a fake scheduler (seconds), and through a real SLURM cluster.

The tests marked ``slurm`` submit real jobs with sbatch and watch them with squeue/sacct/scontrol; they run
only where ``sinfo`` answers (``bash .ci/slurm.sh start`` starts a one-node cluster on Debian; ``.ci/run``
does it for CI) and are skipped with that reason elsewhere. Jobs are tiny local models (sweep_fixtures).
"Without accounting" is tested by putting a ``sacct`` first on the driver's PATH that answers as sacct does
on a cluster with ``AccountingStorageType=accounting_storage/none`` ("Slurm accounting storage is disabled",
exit 1); squeue, scancel and the jobs themselves are the real ones.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sweep
from icl_cmr.cli.args import run_cli
from icl_cmr.errors import InputError
from icl_cmr.sweeps.execute import JobResult
from icl_cmr.sweeps.jobs import Job
from icl_cmr.sweeps.manifest import build_manifest, read_manifest
from icl_cmr.sweeps.plan import DEFAULT_GROUPS, SlurmSettings, parse_plan
from icl_cmr.sweeps.slurm_backend import SlurmBackend
from icl_cmr.sweeps.slurm_queue import GONE, SlurmQueue, TaskState, parse_sacct, parse_squeue

pytest.register_assert_rewrite("sweep_fixtures")   # a plugin (below) imported by this module first
from sweep_fixtures import REPO_ROOT, full_extra, wait_for, write_plan

pytest_plugins = ("sweep_fixtures",)    # sweep_inputs, reference_run: built once per session
#: On the worker that runs tests/sweeps/test_sweep.py (--dist loadgroup): the reference sweep is built once, and the
#: jobs of one test never share the scheduler with another test's.
pytestmark = pytest.mark.xdist_group("sweeps")

#: What sacct prints (stderr, exit 1) on a cluster without accounting, as measured with .ci/slurm.sh --no-accounting.
NO_ACCOUNTING = "Slurm accounting storage is disabled"


def _sinfo_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


SLURM = _sinfo_answers()


def slurm_test(function):
    """Marks ``slurm`` and ``slow``; skipped with a reason where no cluster answers."""
    for mark in (pytest.mark.slurm, pytest.mark.slow,
                 pytest.mark.skipif(not SLURM, reason="no SLURM cluster answers sinfo (bash .ci/slurm.sh start "
                                                      "starts a one-node cluster)")):
        function = mark(function)
    return function


# ============================================================================= a fake scheduler

class FakeScheduler:
    """Answers squeue, sacct and scancel as SLURM 22.05 prints them (formats measured on .ci/slurm.sh's cluster).

    ``queue``: task -> (state, RestartCnt) that squeue lists; ``history``: task -> state that sacct knows.
    """

    def __init__(self, accounting: bool = True, answers: bool = True):
        self.accounting, self.answers = accounting, answers
        self.queue, self.history, self.calls = {}, {}, []

    def __call__(self, argv):
        argv = list(argv)
        self.calls.append(argv)
        done = lambda code, out="", err="": subprocess.CompletedProcess(argv, code, out, err)  # noqa: E731
        if not self.answers:
            return done(1, err="squeue: error: Unable to contact slurm controller (connect failure)")
        jobs = set(argv[argv.index("-j") + 1].split(",")) if "-j" in argv else set()
        if argv[0] == "sacct":
            if not self.accounting:
                return done(1, err=NO_ACCOUNTING + "\n")
            return done(0, "".join(f"{t}|{s}\n" for t, s in self.history.items() if t.split("_")[0] in jobs))
        if argv[0] == "squeue":
            lines = [f"{t}|{s}|{r}\n" for t, (s, r) in self.queue.items() if t.split("_")[0] in jobs]
            if not lines:
                return done(1, err="slurm_load_jobs error: Invalid job id specified\n")
            return done(0, "".join(lines))
        return done(0)   # scancel


def write_result(folder: Path, slurm_id: str, result) -> Path:
    """A submitit result file as a worker leaves it (``("success", JobResult)`` or ``("error", traceback)``)."""
    from submitit.core.utils import JobPaths, cloudpickle_dump

    path = JobPaths(folder, job_id=slurm_id, task_id=0).result_pickle
    path.parent.mkdir(parents=True, exist_ok=True)
    cloudpickle_dump(("success", result) if isinstance(result, JobResult) else ("error", result), path)
    return path


def job_result(returncode: int = 0, restarts: int = 0, error=None) -> JobResult:
    return JobResult(returncode=returncode, wall_s=1.0, peak_rss_mib=50.0, error=error,
                     started_utc="2026-01-01T00:00:00+00:00", ended_utc="2026-01-01T00:00:01+00:00", restarts=restarts)


def fake_backend(tmp_path, scheduler, grace_s: float = 0.0) -> SlurmBackend:
    return SlurmBackend(tmp_path / "submitit", DEFAULT_GROUPS, SlurmSettings(poll_s=0.0), tmp_path, tmp_path / "logs",
                        "p", queue=SlurmQueue(scheduler), gone_grace_s=grace_s)


def a_job(name: str, tmp_path: Path, depends=()) -> Job:
    return Job(id=f"scores/{name}", stage="scores", script="x.py", argv=(), model=name,
               depends_on=tuple(f"scores/{d}" for d in depends), outputs=(str(tmp_path / f"{name}.json"),))


def test_squeue_and_sacct_lines_are_read_as_slurm_prints_them():
    # squeue -h -r -t all -O JobArrayID:0|,State:0|,RestartCnt:0 and sacct -n -P -X -o JobID,State (SLURM 22.05)
    assert parse_squeue("7_1|PENDING|0\n7_0|RUNNING|1\n4|CANCELLED|0\n") == {
        "7_1": TaskState("PENDING", 0, "squeue"), "7_0": TaskState("RUNNING", 1, "squeue"),
        "4": TaskState("CANCELLED", 0, "squeue")}
    found = parse_sacct("4|CANCELLED by 0\n5_1|COMPLETED\n5_1.batch|COMPLETED\n2_[1-2,4%1]|PENDING\n")
    assert {task: state.state for task, state in found.items()} == {
        "4": "CANCELLED", "5_1": "COMPLETED", "2_1": "PENDING", "2_2": "PENDING", "2_4": "PENDING"}


def test_tasks_squeue_does_not_list_are_looked_up_in_sacct_and_else_gone():
    scheduler = FakeScheduler()
    scheduler.queue = {"7_0": ("RUNNING", 0)}
    scheduler.history = {"7_1": "COMPLETED"}
    found = SlurmQueue(scheduler).states(["7_0", "7_1", "8"])
    assert {task: state.state for task, state in found.items()} == {"7_0": "RUNNING", "7_1": "COMPLETED", "8": GONE}

    without = FakeScheduler(accounting=False)
    without.queue, without.history = scheduler.queue, scheduler.history
    queue = SlurmQueue(without)
    assert queue.accounting is False
    assert {t: s.state for t, s in queue.states(["7_0", "7_1"]).items()} == {"7_0": "RUNNING", "7_1": GONE}
    assert [call[0] for call in without.calls].count("sacct") == 1    # the probe at start, never again


def test_without_accounting_the_warning_is_logged_once_not_on_every_poll(tmp_path, caplog):
    scheduler = FakeScheduler(accounting=False)
    scheduler.queue = {"7_0": ("RUNNING", 0)}
    with caplog.at_level("WARNING"):
        backend = fake_backend(tmp_path, scheduler)
        backend._track("scores/a", "7_0")
        for _ in range(5):
            assert backend.wait(timeout=0.0) == []
    assert len(scheduler.calls) == 1 + 5                           # the probe, then one squeue per poll
    assert [r.getMessage() for r in caplog.records] == [         # said once, when the backend was made
        f"sacct does not answer ({NO_ACCOUNTING}): tracking SLURM jobs with squeue alone; a job that leaves the "
        "queue without a result counts as failed (cancelled or lost)"]


def test_a_scheduler_that_does_not_answer_means_unknown_never_gone(tmp_path):
    scheduler = FakeScheduler()
    backend = fake_backend(tmp_path, scheduler)
    backend._track("scores/a", "7_0")
    scheduler.answers = False
    assert backend.wait(timeout=0.0) == [] and "scores/a" in backend._tasks
    with pytest.raises(InputError, match="SLURM does not answer"):
        backend.reattach([(a_job("b", tmp_path), {"backend_id": "9_0", "slurm": {"job_id": "9_0"}})])


def test_reattach_tells_queued_finished_and_gone_jobs_apart(tmp_path):
    scheduler = FakeScheduler()
    scheduler.queue = {"7_0": ("PENDING", 0), "7_1": ("COMPLETED", 0)}
    backend = fake_backend(tmp_path, scheduler)
    write_result(tmp_path / "submitit", "7_1", job_result())
    found = backend.reattach([(a_job(name, tmp_path), {"backend_id": task, "slurm": {"job_id": task}})
                              for name, task in (("a", "7_0"), ("b", "7_1"), ("c", "7_2"))]
                             + [(a_job("d", tmp_path), {"backend_id": "7"})])   # submitit-local's id: not SLURM's
    assert {job: status for job, (status, _, _) in found.items()} == {
        "scores/a": "alive", "scores/b": "finished", "scores/c": "gone", "scores/d": "gone"}
    assert found["scores/b"][1].ok
    assert "cancelled by SLURM before it started" in found["scores/c"][2]    # 7_2 never wrote a worker log
    assert list(backend._tasks) == ["scores/a"]                              # followed from now on
    write_result(tmp_path / "submitit", "7_0", job_result())
    assert [(job, result.ok) for job, result in backend.wait(timeout=0.0)] == [("scores/a", True)]


def test_a_requeued_task_stays_tracked_and_its_earlier_failure_is_ignored(tmp_path):
    scheduler = FakeScheduler()
    scheduler.queue = {"7_0": ("RUNNING", 0)}
    backend = fake_backend(tmp_path, scheduler)
    backend._track("scores/a", "7_0")
    # The first run was killed while it wrote a failure; SLURM has queued it again (RestartCnt 1).
    write_result(tmp_path / "submitit", "7_0", job_result(returncode=-15, error="killed by SIGTERM"))
    scheduler.queue = {"7_0": ("PENDING", 1)}
    assert backend.wait(timeout=0.0) == []
    assert backend.updates() == {"scores/a": {
        "reason": "preempted or requeued by SLURM (attempt 2 of 4)", "backend_id": "7_0",
        "slurm": {"job_id": "7_0", "array_job_id": "7", "array_task_id": 0, "restarts": 1}}}
    assert backend.updates() == {}
    time.sleep(0.01)   # a new file, a new modification time
    write_result(tmp_path / "submitit", "7_0", job_result(restarts=1))
    [(job, result)] = backend.wait(timeout=0.0)
    assert job == "scores/a" and result.ok and result.restarts == 1


def test_a_task_ended_without_a_result_fails_after_the_grace_period_with_what_slurm_says(tmp_path):
    scheduler = FakeScheduler()
    scheduler.queue = {"7_0": ("CANCELLED", 0), "7_1": ("TIMEOUT", 2)}
    patient = fake_backend(tmp_path, scheduler, grace_s=60.0)
    patient._track("scores/a", "7_0")
    assert patient.wait(timeout=0.0) == []                            # maybe a result file still on its way
    backend = fake_backend(tmp_path, scheduler, grace_s=0.0)
    backend._track("scores/a", "7_0")
    backend._track("scores/b", "7_1", restarts=2)
    ended = dict(backend.wait(timeout=0.0))
    assert ended["scores/a"].error == "cancelled by SLURM (CANCELLED)" and not ended["scores/a"].ok
    assert ended["scores/b"].error == "time limit (TIMEOUT)" and ended["scores/b"].restarts == 2


def test_a_restarted_sweep_waits_for_queued_jobs_and_reruns_gone_ones_as_a_new_attempt(tmp_path):
    """run_sweep's reconciliation, on a backend that answers as SLURM would after the driver was killed."""
    from icl_cmr.sweeps.scheduler import run_sweep

    class Reattaching:
        name, log_dir = "slurm", tmp_path

        def __init__(self):
            self.submitted, self.running = [], []

        def capacity(self):
            return 100

        def reattach(self, submitted):
            self.running = ["scores/a"]
            return {"scores/a": ("alive", None, "SLURM job 7_0 still RUNNING: re-attached"),
                    "scores/b": ("gone", None, "SLURM job 7_1: cancelled by SLURM (CANCELLED)")}

        def submit(self, jobs):
            self.submitted += [job.id for job in jobs]
            self.running += [job.id for job in jobs]
            return {job.id: {"backend_id": "8_0"} for job in jobs}

        def wait(self, timeout):
            finished, self.running = self.running, []
            return [(job_id, job_result()) for job_id in finished]

        def interrupt(self):
            return []

    jobs = [a_job("a", tmp_path), a_job("b", tmp_path), a_job("c", tmp_path, depends=["a"])]
    plan = parse_plan({"name": "p", "stages": ["scores"], "models": [{"name": "gpt2-small"}],
                       "paths": {"scores_dir": str(tmp_path / "out")}}, "p.toml")
    killed = build_manifest("p", "p.toml", "slurm", jobs)
    for record, slurm_id in zip(killed["jobs"][:2], ("7_0", "7_1")):
        record.update(state="running", attempts=1, backend_id=slurm_id)
    backend = Reattaching()
    counts = run_sweep(plan, jobs, backend, killed, tmp_path / "manifest.json", progress=False, poll_s=0.0)
    saved = {r["id"]: r for r in read_manifest(tmp_path / "manifest.json")["jobs"]}
    assert backend.submitted == ["scores/b", "scores/c"]              # a was never submitted again
    assert {job: (r["state"], r["attempts"], r["backend_id"]) for job, r in saved.items()} == {
        "scores/a": ("done", 1, "7_0"), "scores/b": ("done", 2, "8_0"), "scores/c": ("done", 1, "8_0")}
    assert counts["ran"] == 2


def test_a_job_found_up_to_date_no_longer_shows_the_error_of_an_earlier_run(tmp_path):
    from icl_cmr.sweeps.scheduler import run_sweep

    job = a_job("a", tmp_path)
    Path(job.outputs[0]).write_text("{}")     # made since it failed (no metadata checks on this stand-in job)
    plan = parse_plan({"name": "p", "stages": ["scores"], "models": [{"name": "gpt2-small"}],
                       "paths": {"scores_dir": str(tmp_path / "out")}}, "p.toml")
    earlier = build_manifest("p", "p.toml", "slurm", [job])
    earlier["jobs"][0].update(state="failed", attempts=1, error="cancelled by SLURM (CANCELLED)")
    class NothingToRun:
        def capacity(self):
            return 1

    run_sweep(plan, [job], NothingToRun(), earlier, tmp_path / "manifest.json", progress=False)
    [record] = read_manifest(tmp_path / "manifest.json")["jobs"]
    assert (record["state"], record["error"]) == ("skipped", None)


def test_a_worker_past_the_attempt_limit_refuses_to_run(tmp_path, monkeypatch):
    from icl_cmr.sweeps.submitit_backend import MAX_ATTEMPTS, SweepTask

    marker = tmp_path / "ran"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", str(MAX_ATTEMPTS - 1))   # the last allowed run
    assert SweepTask()(command, str(tmp_path / "a.log"), str(REPO_ROOT / "src")).ok and marker.is_file()
    marker.unlink()
    monkeypatch.setenv("SLURM_RESTART_COUNT", str(MAX_ATTEMPTS))
    result = SweepTask()(command, str(tmp_path / "b.log"), str(REPO_ROOT / "src"))
    assert not result.ok and not marker.exists()
    assert result.error == f"requeued {MAX_ATTEMPTS} times (preempted, requeued or at its time limit): " \
                           f"not run again after {MAX_ATTEMPTS} attempts"


WORKER = """
import sys
from icl_cmr.sweeps.submitit_backend import SweepTask
result = SweepTask()([sys.executable, "-c", "import time; time.sleep(120)"], sys.argv[1], sys.argv[2])
print("RETURNED", result.returncode)
"""


@pytest.mark.slow
@pytest.mark.parametrize("whom", ["every process of the run", "the worker alone"])
def test_a_worker_stopped_by_sigterm_leaves_no_result(tmp_path, whom):
    """SLURM ends a run (requeue, preemption, scancel) with SIGTERM to every process of it; the worker must not
    report the killed script as a failed job (submitit writes whatever the task returns as its result)."""
    log = tmp_path / "job.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(log), str(REPO_ROOT / "src")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: log.is_file() and log.read_text().startswith("$ "), 60, "the job to start")
        time.sleep(0.5)
        if whom == "the worker alone":
            worker.send_signal(signal.SIGTERM)      # it passes SIGTERM on to the script
        else:
            os.killpg(worker.pid, signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert worker.returncode == 128 + signal.SIGTERM, output
    assert "RETURNED" not in output


# ----------------------------------------------------------------------------- limits, before anything runs

def test_a_time_limit_under_the_signal_delay_is_refused_naming_the_flag_or_plan_key(tmp_path, capsys):
    from submitit.slurm.slurm import _make_sbatch_string

    from icl_cmr.sweeps.submitit_backend import SIGNAL_DELAY_S, minimum_time_min

    assert "#SBATCH --signal=USR2@90" in _make_sbatch_string(command="x", folder=tmp_path)   # what submitit asks
    assert SIGNAL_DELAY_S == 90 and minimum_time_min() == 3      # 90 s + 60 s of SLURM's signal resolution < 180 s
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    plan = tmp_path / "p.toml"
    plan.write_text(f'name = "p"\nstages = ["scores", "fit"]\n[paths]\nscores_dir = "{tmp_path / "out"}"\n'
                    f'[[models]]\nname = "m"\nsource = "{model}"\n')
    for minutes in ("1", "2"):
        assert run_cli(sweep.main, [str(plan), "--backend", "slurm", "--time-min", minutes, "--dry-run"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: argument --time-min: must be at least 3 (minutes) with --backend slurm, "
                              f"got {minutes}: ") and "\n" not in err
    assert run_cli(sweep.main, [str(plan), "--backend", "slurm", "--time-min", "3", "--dry-run"]) == 0
    assert run_cli(sweep.main, [str(plan), "--time-min", "1", "--dry-run"]) == 0      # only SLURM sends the signal
    capsys.readouterr()
    plan.write_text(plan.read_text() + "[slurm.groups.cpu]\ntime_min = 2\n")
    assert run_cli(sweep.main, [str(plan), "--backend", "slurm", "--dry-run"]) == 2
    assert f"error: {plan}: [slurm.groups.cpu] time_min: must be at least 3" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dry_run_says_the_resource_flags_leave_the_cpu_group_alone(capsys):
    assert run_cli(sweep.main, ["paper-all", "--dry-run", "--backend", "slurm", "--cpus", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cpu = next(line for line in lines if line.startswith("  cpu: "))
    assert cpu.startswith("  cpu: 0 GPU, 16 GB, 2 CPU, 30 min  (fits and aggregation; "
                          "--gpus/--mem-gb/--time-min/--cpus do not change it: set [slurm.groups.cpu] in the plan")
    assert next(line for line in lines if line.startswith("  small: ")) == "  small: 1 GPU, 32 GB, 1 CPU, 60 min"


# ============================================================================= a real SLURM cluster

#: Resources that fit a small node: every job on 1 CPU and 2 GB, no GPU, 10 minutes; polls every second.
SLURM_TABLES = {"slurm": {"poll_s": 1},
                "slurm.groups.small": {"gpus": 0, "cpus": 1, "mem_gb": 2, "time_min": 10},
                "slurm.groups.cpu": {"cpus": 1, "mem_gb": 2, "time_min": 10}}


def slurm_plan(tmp_path: Path, name: str, models: list, stages: list, extra: dict = None, **slurm) -> Path:
    tables = {**(extra or {}), **{table: dict(settings) for table, settings in SLURM_TABLES.items()}}
    tables["slurm"].update(slurm)
    return write_plan(tmp_path / f"{name}.toml", name, tmp_path, models, stages, tables)


@pytest.fixture()
def cluster(tmp_path):
    """Runs the driver through the real scheduler; cancels whatever the test's plans left in the queue."""
    plans = []

    class Cluster:
        def __init__(self):
            self.bin = tmp_path / "no_accounting_bin"

        def env(self, accounting: bool = True) -> dict:
            env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "HF_HUB_OFFLINE": "1"}
            if not accounting:
                self.bin.mkdir(exist_ok=True)
                fake = self.bin / "sacct"
                fake.write_text(f"#!/bin/sh\necho '{NO_ACCOUNTING}' >&2\nexit 1\n")
                fake.chmod(0o755)
                env["PATH"] = f"{self.bin}{os.pathsep}{env['PATH']}"
            return env

        def start(self, plan: Path, log: Path, accounting: bool = True) -> subprocess.Popen:
            plans.append(plan.stem)
            with open(log, "a") as handle:
                return subprocess.Popen([sys.executable, str(REPO_ROOT / "src" / "sweep.py"), str(plan), "--backend",
                                         "slurm", "--no-progress"], cwd=REPO_ROOT, env=self.env(accounting),
                                        stdout=handle, stderr=subprocess.STDOUT)

        def run(self, plan: Path, log: Path, accounting: bool = True, act=None, timeout_s: float = 600) -> int:
            """The driver's exit status; ``act(driver)`` runs meanwhile (the fault to inject)."""
            driver = self.start(plan, log, accounting)
            try:
                if act is not None:
                    act(driver)
                return driver.wait(timeout=timeout_s)
            finally:   # a test that fails halfway leaves no driver behind
                if driver.poll() is None:
                    driver.kill()

    yield Cluster()
    for name in plans:
        for group in ("small", "cpu"):
            subprocess.run(["scancel", "--name", f"sweep-{name}-{group}"], capture_output=True, timeout=30)


def sweep_dir(tmp_path: Path, plan: str) -> Path:
    return tmp_path / "saved_scores" / "sweeps" / plan


def records(tmp_path: Path, plan: str) -> dict:
    manifest = read_manifest(sweep_dir(tmp_path, plan) / "manifest.json")
    return {r["id"]: r for r in manifest["jobs"]} if manifest else {}


def submitted_ids(tmp_path: Path, plan: str) -> dict:
    """job -> SLURM id, once every job the manifest calls running has one (else {})."""
    found = records(tmp_path, plan)
    running = {job: r["backend_id"] for job, r in found.items() if r["state"] == "running"}
    return running if running and all(running.values()) else {}


def running_task(tmp_path: Path, plan: str, job: str = "scores/tiny-gpt2") -> str:
    """The SLURM task of ``job``, once its script runs (the worker has created the job's log)."""
    task = wait_for(lambda: submitted_ids(tmp_path, plan), 120, "the job to be submitted")[job]
    wait_for((sweep_dir(tmp_path, plan) / "logs" / (job.replace("/", "__") + ".log")).is_file, 120,
             "the script to start")
    return task


def runs_started(tmp_path: Path, plan: str) -> int:
    """Runs of any task of the plan: submitit's worker logs one 'Starting with' line per run (append mode)."""
    return sum(log.read_text().count("Starting with JobEnvironment")
               for log in (sweep_dir(tmp_path, plan) / "submitit").glob("*_log.out"))


def submissions(tmp_path: Path, plan: str) -> list:
    """SLURM ids the plan's tasks were submitted under (submitit leaves one pickle per submitted task)."""
    pickles = (sweep_dir(tmp_path, plan) / "submitit").glob("*_submitted.pkl")
    return sorted(p.name[:-len("_submitted.pkl")] for p in pickles)


def squeue_states(ids) -> dict:
    jobs = ",".join(sorted({i.split("_")[0] for i in ids}))
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", jobs, "-o", "%i|%T"], capture_output=True, text=True,
                         timeout=30).stdout
    return dict(line.split("|") for line in out.split())


def sacct_rows(ids):
    """``[(task, state)]`` of every run (``-D``: requeued ones too) of SLURM jobs ``ids``; None without accounting."""
    done = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", ",".join(sorted({i.split("_")[0] for i in ids})),
                           "-o", "JobID,State"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return None
    return [tuple(line.split("|")) for line in done.stdout.split("\n") if line]


def same_content(a, b, where: str) -> None:
    """Equal numbers and structure, metadata (paths, times, versions) aside."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) - {"metadata"} == set(b) - {"metadata"}, where
        for key in set(a) - {"metadata"}:
            same_content(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)) and not isinstance(b, np.ndarray):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_content(x, y, f"{where}[{i}]")
    elif hasattr(a, "shape"):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), where
    else:
        assert a == b, where


def assert_same_file(a: Path, b: Path) -> None:
    from icl_cmr.files.reading import load_pickle

    if a.suffix == ".csv":
        pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b), obj=str(a))
    elif a.suffix == ".json":
        same_content(json.loads(a.read_text()), json.loads(b.read_text()), str(a))
    elif a.suffix == ".npy":
        np.testing.assert_array_equal(np.load(a), np.load(b), err_msg=str(a))
    else:
        same_content(load_pickle(a), load_pickle(b), str(a))


def outputs_of(root: Path) -> set:
    """Every output file but figures and the sweep's own files, relative to ``root``."""
    return {str(p.relative_to(root)) for top in ("saved_scores", "figs", "saved_top_heads")
            for p in (root / top).rglob("*") if p.is_file() and p.suffix not in (".pdf", ".png")
            and "sweeps" not in p.relative_to(root).parts}


@slurm_test
def test_a_slurm_sweep_equals_the_local_one_and_a_rerun_skips_every_job(cluster, reference_run, sweep_inputs,
                                                                       tmp_path):
    stages = ["scores", "fit", "aggregate"]
    # Named as the reference plan: select_fit files its top heads under the plan's name.
    plan = slurm_plan(tmp_path, "tiny", list(sweep_inputs["models"].values()), stages, full_extra(sweep_inputs, stages))
    started = time.monotonic()
    assert cluster.run(plan, tmp_path / "driver.log") == 0, (tmp_path / "driver.log").read_text()
    wall = time.monotonic() - started
    found = records(tmp_path, "tiny")
    assert len(found) == 12 and {r["state"] for r in found.values()} == {"done"}
    for record in found.values():    # each job's SLURM ids in the manifest: array job and task
        slurm = record["slurm"]
        assert record["backend_id"] == slurm["job_id"] and record["attempts"] == 1
        assert slurm["job_id"] == (f"{slurm['array_job_id']}_{slurm['array_task_id']}"
                                   if slurm["array_task_id"] is not None else slurm["array_job_id"])
    ours, theirs = outputs_of(tmp_path), outputs_of(reference_run["out"])
    ablation = {path for path in theirs if "ablation" in path}
    assert ours == theirs - ablation
    for path in sorted(ours):
        assert_same_file(tmp_path / path, reference_run["out"] / path)

    tasks = submissions(tmp_path, "tiny")
    assert cluster.run(plan, tmp_path / "rerun.log") == 0
    assert {r["state"] for r in records(tmp_path, "tiny").values()} == {"skipped"}
    assert submissions(tmp_path, "tiny") == tasks                   # nothing submitted again
    print(f"MEASURED e2e: {len(found)} jobs in {wall:.0f} s, {len(ours)} output files equal to the local run, "
          f"SLURM tasks {tasks}; rerun: {len(found)} skipped, 0 submitted")


@slurm_test
def test_a_killed_driver_reattaches_to_its_queued_jobs_and_no_job_runs_twice(cluster, sweep_inputs, tmp_path):
    models = [sweep_inputs["models"]["gpt2"], sweep_inputs["models"]["llama"]]
    # One task of an array at a time, so the second score job is still queued when the driver comes back.
    plan = slurm_plan(tmp_path, "kill", models, ["scores", "fit"], full_extra(sweep_inputs, ["fit"]),
                      array_parallelism=1)
    seen = {}

    def kill_once_submitted(driver):
        seen["ids"] = wait_for(lambda: submitted_ids(tmp_path, "kill"), 120, "the score jobs to be submitted")
        driver.send_signal(signal.SIGKILL)   # no clean-up at all: a lost login session, a rebooted login node

    code = cluster.run(plan, tmp_path / "driver.log", act=kill_once_submitted, timeout_s=30)
    ids = seen["ids"]
    at_kill = squeue_states(ids.values())
    assert sorted(ids) == ["scores/tiny-gpt2", "scores/tiny-llama"] and code == -signal.SIGKILL
    assert all(at_kill.get(i) in ("PENDING", "RUNNING") for i in ids.values()), at_kill

    started = time.monotonic()
    assert cluster.run(plan, tmp_path / "rerun.log") == 0, (tmp_path / "rerun.log").read_text()   # the lock is free
    wall = time.monotonic() - started
    rerun_log = (tmp_path / "rerun.log").read_text()
    found = records(tmp_path, "kill")
    assert {job: (r["state"], r["attempts"]) for job, r in found.items()} == {
        job: ("done", 1) for job in ("scores/tiny-gpt2", "scores/tiny-llama", "fit/tiny-gpt2", "fit/tiny-llama")}
    assert {job: found[job]["backend_id"] for job in ids} == ids     # the same SLURM tasks, followed to the end
    assert "re-attached" in rerun_log
    tasks = submissions(tmp_path, "kill")
    assert len(tasks) == 4 and runs_started(tmp_path, "kill") == 4   # each job submitted once and run once
    rows = sacct_rows(tasks)
    if rows is not None:     # with accounting: every run SLURM made, requeued ones included
        assert sorted(rows) == sorted((task, "COMPLETED") for task in tasks), rows
    print(f"MEASURED kill: SIGKILL with {ids} in {at_kill}; rerun exit 0 in {wall:.0f} s, "
          f"re-attached {rerun_log.count('re-attached')}; tasks {tasks}; worker runs {runs_started(tmp_path, 'kill')}; "
          f"sacct {rows}")


@slurm_test
def test_a_requeued_task_is_followed_until_it_really_ends(cluster, sweep_inputs, tmp_path):
    plan = slurm_plan(tmp_path, "requeue", [sweep_inputs["models"]["gpt2"]], ["scores"])
    seen = {}

    def requeue_while_running(driver):
        seen["task"] = running_task(tmp_path, "requeue")    # running: requeue sends it SIGTERM
        requeued = subprocess.run(["scontrol", "requeue", seen["task"]], capture_output=True, text=True, timeout=30)
        assert requeued.returncode == 0, requeued.stderr

    started = time.monotonic()
    code = cluster.run(plan, tmp_path / "driver.log", act=requeue_while_running, timeout_s=400)
    wall = time.monotonic() - started
    task = seen["task"]
    log = (tmp_path / "driver.log").read_text()
    assert code == 0, log
    [record] = records(tmp_path, "requeue").values()
    assert (record["state"], record["attempts"], record["requeues"], record["error"]) == ("done", 1, 1, None)
    assert record["slurm"]["restarts"] == 1 and record["backend_id"] == task
    assert "preempted or requeued by SLURM (attempt 2 of 4)" in log and "failed scores/" not in log
    assert runs_started(tmp_path, "requeue") == 2
    rows = sacct_rows([task])
    if rows is not None:
        assert rows == [(task, "REQUEUED"), (task, "COMPLETED")], rows
    print(f"MEASURED requeue: task {task} requeued while running; sweep exit {code} in {wall:.0f} s; "
          f"worker runs {runs_started(tmp_path, 'requeue')}; requeues {record['requeues']}; sacct {rows}")


@slurm_test
@pytest.mark.parametrize("accounting", [True, False], ids=["with accounting", "without accounting"])
def test_a_cancelled_pending_task_fails_as_cancelled_and_the_sweep_ends(accounting, cluster, sweep_inputs, tmp_path):
    if accounting and sacct_rows(["1"]) is None:
        pytest.skip("this cluster has no accounting (sacct does not answer; .ci/slurm.sh start has it)")
    models = [sweep_inputs["models"]["gpt2"], sweep_inputs["models"]["llama"]]
    name = "cancel" if accounting else "cancel-noacct"
    plan = slurm_plan(tmp_path, name, models, ["scores"], array_parallelism=1)   # the second task waits its turn
    seen = {}

    def cancel_the_pending_task(driver):
        seen["task"] = pending = wait_for(lambda: submitted_ids(tmp_path, name), 120, "the jobs to be submitted")[
            "scores/tiny-llama"]
        assert squeue_states([pending])[pending] == "PENDING"
        seen["at"] = time.monotonic()
        subprocess.run(["scancel", pending], check=True, timeout=30)

    code = cluster.run(plan, tmp_path / "driver.log", accounting, act=cancel_the_pending_task, timeout_s=300)
    settled_s, pending = time.monotonic() - seen["at"], seen["task"]
    log = (tmp_path / "driver.log").read_text()
    assert code == 1, log
    found = records(tmp_path, name)
    assert found["scores/tiny-gpt2"]["state"] == "done"
    assert found["scores/tiny-llama"]["state"] == "failed"
    # "before it started" when the task has left the queue; "(CANCELLED)" when squeue still lists the ended task at the
    # driver's poll (slurmctld keeps it for MinJobAge; seen once in CI without accounting): both say what happened
    assert found["scores/tiny-llama"]["error"].startswith(("cancelled by SLURM before it started",
                                                           "cancelled by SLURM (CANCELLED)"))
    warnings = [line for line in log.splitlines() if "sacct" in line or "Bypassing" in line]
    assert len(warnings) == (0 if accounting else 1), warnings      # once, not on every poll
    print(f"MEASURED cancel ({'with' if accounting else 'without'} accounting): scancel {pending} (PENDING); "
          f"sweep exit {code}, {settled_s:.0f} s after the scancel; error {found['scores/tiny-llama']['error']!r}; "
          f"sacct warnings in the driver log: {len(warnings)}")


@slurm_test
def test_a_running_task_cancelled_by_scancel_says_so(cluster, sweep_inputs, tmp_path):
    plan = slurm_plan(tmp_path, "scancel", [sweep_inputs["models"]["gpt2"]], ["scores", "fit"],
                      full_extra(sweep_inputs, ["fit"]))
    seen = {}

    def cancel_while_running(driver):
        seen["task"] = running_task(tmp_path, "scancel")
        subprocess.run(["scancel", seen["task"]], check=True, timeout=30)

    code = cluster.run(plan, tmp_path / "driver.log", act=cancel_while_running, timeout_s=300)
    task = seen["task"]
    found = records(tmp_path, "scancel")
    assert code == 1
    assert (found["scores/tiny-gpt2"]["state"], found["scores/tiny-gpt2"]["error"]) == (
        "failed", "cancelled by SLURM (CANCELLED)")
    assert (found["fit/tiny-gpt2"]["state"], found["fit/tiny-gpt2"]["reason"]) == (
        "blocked", "needs scores/tiny-gpt2 (failed)")
    print(f"MEASURED scancel of running task {task}: sweep exit {code}; error {found['scores/tiny-gpt2']['error']!r}")


@slurm_test
def test_time_min_1_is_refused_before_anything_is_submitted(sweep_inputs, tmp_path, capsys):
    plan = slurm_plan(tmp_path, "short", [sweep_inputs["models"]["gpt2"]], ["scores"])
    assert run_cli(sweep.main, [str(plan), "--backend", "slurm", "--time-min", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --time-min: must be at least 3 (minutes) with --backend slurm, got 1")
    assert err.count("\n") == 1
    assert not sweep_dir(tmp_path, "short").exists()
    queued = subprocess.run(["squeue", "-h", "-t", "all", "-n", "sweep-short-small"], capture_output=True, text=True,
                            timeout=30)
    assert queued.returncode == 0 and queued.stdout == ""
