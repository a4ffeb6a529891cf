"""Sweep plans, job lists, manifests and the pieces of the sweep runner, without running a model."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import sweep
from icl_cmr.cli.args import run_cli
from icl_cmr.errors import InputError
from icl_cmr.sweeps.execute import error_line, run_command
from icl_cmr.sweeps.jobs import Job, MetadataCheck, build_jobs, stale_reason
from icl_cmr.sweeps.manifest import build_manifest, status_table, sweep_lock
from icl_cmr.sweeps.plan import load_plan

PAPER_INDICES = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 142]   # [LI24] Fig 7
PYTHIA_SIZES = ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")


@pytest.fixture()
def model_dir(tmp_path):
    """A folder that passes as a local model (the plan only checks for config.json)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def plan_text(tmp_path, model_dir, extra: str = "", models: str = None) -> Path:
    models = models if models is not None else f'[[models]]\nname = "m"\nsource = "{model_dir}"\n'
    path = tmp_path / "plan.toml"
    path.write_text(f'name = "p"\n{extra}\n[paths]\nscores_dir = "{tmp_path / "out"}"\n{models}')
    return path


# ----------------------------------------------------------------------------- bad plans

@pytest.mark.parametrize("extra, models, message", [
    ("[scores]\nn_prompts = 0", None, "[scores] n_prompts: must be a positive integer, got 0"),
    ("[scores]\nn_prompt = 5", None, "[scores]: unknown key 'n_prompt'"),
    ("[scores]\nbos = 1", None, "[scores] bos: must be true or false"),
    ("[scores]\ndevice = \"gpu\"", None, "[scores] device: must be cpu, cuda, cuda:N or mps"),
    ("[fit]\ncrp_grid = \"no/such/grid.npy\"", None, "[fit] crp_grid: file no/such/grid.npy does not exist"),
    ("stages = [\"scores\", \"plot\"]", None, "stages: must be a non-empty list of scores, fit, ablation, aggregate"),
    ("", '[[models]]\nname = "m"\ncheckpoint_dirs = { 1500 = "x" }\n', "step '1500' must be a positive multiple of 1000"),
    ("", '[[models]]\nname = "m"\ncheckpoint_dirs = { 1000 = "no/such/folder" }\n', "is not a model folder with a config.json"),
    ("", '[[models]]\nname = "m"\nsource = "/no/such/model"\n', "local model folder /no/such/model does not exist"),
    ("", '[[models]]\nname = "m"\nsource = "gpt2-small"\ngroup = "huge"\n', "unknown group 'huge'"),
    ("", '[[models]]\nname = "a b"\n', "name: must be a name of letters"),
    ("", "", "a plan needs at least one model"),
    ("stages = [\"scores\", \"ablation\"]\n[ablation]\nmodels = [\"other\"]", None, "'other' is not a model of this plan"),
    ("[slurm.groups.gpu2]\ngpus = 2", None, "a new group needs mem_gb, cpus, time_min"),
    ("name = ", None, "invalid TOML"),
])
def test_a_bad_plan_stops_with_one_error_line_before_anything_is_written(tmp_path, model_dir, capsys, extra,
                                                                         models, message):
    plan = plan_text(tmp_path, model_dir, extra, models)
    if extra.startswith("name = "):
        plan.write_text("name = \n")
    assert run_cli(sweep.main, [str(plan)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {plan}") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_two_models_whose_score_files_would_collide_are_refused(tmp_path, model_dir):
    plan = plan_text(tmp_path, model_dir, models=f'[[models]]\nname = "Tiny_A"\nsource = "{model_dir}"\n'
                                                 f'[[models]]\nname = "tiny-a"\nsource = "{model_dir}"\n')
    with pytest.raises(InputError, match="would share score files"):
        build_jobs(load_plan(plan))


def test_an_unknown_plan_name_lists_the_built_in_plans(capsys):
    assert run_cli(sweep.main, ["paper-everything"]) == 2
    err = capsys.readouterr().err
    assert "paper-all" in err and "paper-pythia-checkpoints" in err and err.count("\n") == 1


def test_jobs_flag_is_refused_with_the_slurm_backend(capsys):
    assert run_cli(sweep.main, ["paper-all", "--backend", "slurm", "--jobs", "4"]) == 2
    assert "--array-parallelism" in capsys.readouterr().err


def test_slurm_backend_without_sbatch_stops_before_writing(tmp_path, model_dir, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
    plan = plan_text(tmp_path, model_dir)
    assert run_cli(sweep.main, [str(plan), "--backend", "slurm"]) == 2
    assert "needs sbatch" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_status_before_any_run_says_so(tmp_path, model_dir, capsys):
    assert run_cli(sweep.main, [str(plan_text(tmp_path, model_dir)), "--status"]) == 0
    assert "not run yet" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the built-in plans

def test_paper_pythia_checkpoints_has_the_eight_sizes_at_the_papers_sixteen_checkpoints(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)   # the plan's output folders are relative to the working directory
    plan = load_plan(sweep.PLANS_DIR / "paper-pythia-checkpoints.toml")
    jobs = build_jobs(plan)
    scores = [job for job in jobs if job.stage == "scores"]
    assert len(scores) == 8 * 16 and len([j for j in jobs if j.stage == "fit"]) == 8 * 16
    assert sorted(j.id for j in jobs if j.stage == "aggregate") == sorted(
        ["aggregate/attn_over_size", "aggregate/select_fit"] + [f"aggregate/attn_over_time/pythia-{s}" for s in PYTHIA_SIZES])
    assert len(jobs) == 266
    seventy = [j for j in scores if j.model == "pythia-70m"]
    assert [j.id for j in seventy] == [f"scores/pythia-70m/cp{k}" for k in PAPER_INDICES]
    # hub revisions by training step: step1000 ... step143000
    assert [j.argv[j.argv.index("--checkpoint") + 1] for j in seventy] == [str(1000 * (k + 1)) for k in PAPER_INDICES]
    assert {j.group for j in scores if j.model == "pythia-12b"} == {"large"}


def test_paper_all_adds_gpt2_with_its_ablation_and_the_three_7b_models(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    jobs = build_jobs(load_plan(sweep.PLANS_DIR / "paper-all.toml"))
    by_stage = {}
    for job in jobs:
        by_stage[job.stage] = by_stage.get(job.stage, 0) + 1
    assert by_stage == {"scores": 128 + 4, "fit": 128 + 4, "ablation": 1, "aggregate": 12}
    assert [j.id for j in jobs if j.stage == "ablation"] == ["ablation/gpt2-small"]
    xtra = next(j for j in jobs if j.id == "aggregate/attn_over_size_xtra")
    assert list(xtra.argv[1:5]) == ["gpt2-small", "qwen-7b", "mistral-7b", "llama3-8b"]


def test_dry_run_lists_every_job_with_the_slurm_resources_and_writes_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["paper-all", "--dry-run", "--backend", "slurm", "--partition", "gpu", "--mem-gb", "200"]
    assert run_cli(sweep.main, argv) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("scores/", "fit/", "ablation/", "aggregate/"))]
    assert len(lines) == 277
    big = next(line for line in lines if line.startswith("scores/pythia-12b/cp142 "))
    assert "[large: 1 GPU, 200 GB, 8 CPU, 240 min]" in big            # --mem-gb overrides the GPU groups
    assert "python src/compute_head_scores.py --model pythia-12b --checkpoint 143000" in big
    fit = next(line for line in lines if line.startswith("fit/pythia-12b/cp142 "))
    assert "[cpu: 0 GPU, 16 GB, 2 CPU, 30 min]" in fit                 # ... but not the CPU group
    assert "'partition': 'gpu'" in out and "277 would run" in out
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- up to date?

def make_output(path: Path, metadata: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metadata": metadata}))
    return path


def test_a_job_is_up_to_date_only_with_matching_metadata_and_outputs_newer_than_inputs(tmp_path):
    source = tmp_path / "in.pkl"
    source.write_text("x")
    out = make_output(tmp_path / "out.json", {"producer": "x.py", "parameters": {"n": 3, "grid": str(tmp_path / "g")}})
    os.utime(source, ns=(1_000_000_000, 1_000_000_000))
    job = Job(id="a", stage="fit", script="x.py", argv=(), inputs=(str(source),), outputs=(str(out),),
              checks=(MetadataCheck(str(out), {"producer": "x.py", "parameters.n": 3,
                                               "parameters.grid": str(tmp_path / "." / "g")}, ("parameters.grid",)),))
    assert stale_reason(job) is None
    wrong = Job(**{**job.__dict__, "checks": (MetadataCheck(str(out), {"parameters.n": 4}),)})
    assert stale_reason(wrong) == f"{out}: parameters.n is 3, the plan wants 4"
    wrong_type = Job(**{**job.__dict__, "checks": (MetadataCheck(str(out), {"parameters.n": "3"}),)})
    assert stale_reason(wrong_type) is not None
    os.utime(source, None)            # the input changed after the output was made
    os.utime(out, ns=(1_000_000_000, 1_000_000_000))
    assert stale_reason(job) == f"{source} is newer than the outputs"
    out.unlink()
    assert stale_reason(job) == f"no {out}"


def test_recorded_input_signatures_decide_over_file_times(tmp_path):
    # A script may leave an output untouched when a rerun reproduces it: then the output stays older
    # than its input, and only what the manifest recorded when the job ran tells that nothing changed.
    from icl_cmr.sweeps.jobs import input_signatures

    source, out = tmp_path / "in.pkl", make_output(tmp_path / "out.json", {"producer": "x.py"})
    source.write_text("x")
    os.utime(out, ns=(1_000_000_000, 1_000_000_000))
    job = Job(id="a", stage="fit", script="x.py", argv=(), inputs=(str(source),), outputs=(str(out),),
              checks=(MetadataCheck(str(out), {"producer": "x.py"}),))
    recorded = input_signatures(job)
    assert recorded == {str(source): [source.stat().st_mtime_ns, 1]}
    assert stale_reason(job) == f"{source} is newer than the outputs"
    assert stale_reason(job, recorded) is None
    source.write_text("xy")
    assert stale_reason(job, recorded) == f"{source} changed since the job last ran"


# ----------------------------------------------------------------------------- running one job

@pytest.mark.slow
def test_run_command_reports_the_jobs_own_peak_memory_and_its_error_line(tmp_path):
    # 300 MiB touched page by page and held; the test process itself (torch imported) holds more than
    # a bare interpreter, which must not be counted for the small job (Linux keeps it across exec).
    allocate = "import time; b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.5)"
    big = run_command([sys.executable, "-c", allocate], tmp_path / "big.log")
    small = run_command([sys.executable, "-c", "import time; time.sleep(0.5)"], tmp_path / "small.log")
    assert big.ok and big.error is None
    assert 300 <= big.peak_rss_mib < 400
    assert small.peak_rss_mib < 50
    failed = run_command([sys.executable, "-c", "import sys; print('working'); "
                                                "sys.stderr.write('error: --x: bad\\n'); sys.exit(2)"], tmp_path / "f.log")
    assert failed.returncode == 2 and failed.error == "error: --x: bad"
    assert "working" in (tmp_path / "f.log").read_text()


def test_error_line_prefers_the_scripts_error_line_then_the_last_line():
    assert error_line("INFO: a\nerror: model x not found\nINFO: b\n", 2) == "error: model x not found"
    assert error_line("Traceback ...\nValueError: bad header\n", 1) == "ValueError: bad header"
    assert error_line("INFO: loading\n", -9) == "killed by SIGKILL after: INFO: loading"
    assert error_line("", 3) == "exit code 3"


# ----------------------------------------------------------------------------- manifest

def test_manifest_keeps_failures_and_measurements_and_drops_jobs_no_longer_planned():
    jobs = [Job(id="scores/a", stage="scores", script="x.py", argv=("--a",)),
            Job(id="fit/a", stage="fit", script="y.py", argv=())]
    previous = {"created_utc": "then", "jobs": [
        {"id": "scores/a", "state": "failed", "error": "error: boom", "attempts": 2, "wall_s": 3.5, "peak_rss_mib": 99.0},
        {"id": "gone/b", "state": "done"}]}
    manifest = build_manifest("p", "p.toml", "local", jobs, previous)
    assert [r["id"] for r in manifest["jobs"]] == ["scores/a", "fit/a"]
    first, second = manifest["jobs"]
    assert (first["state"], first["error"], first["attempts"], first["wall_s"]) == ("failed", "error: boom", 2, 3.5)
    assert (second["state"], second["attempts"]) == ("pending", 0)
    assert manifest["created_utc"] == "then"
    table = status_table(manifest)
    assert "scores/a  failed   3.5 s  99.0 MiB" in table and "error: boom" in table
    assert "2 jobs: 1 pending, 1 failed" in table


def test_a_second_sweep_of_the_same_plan_is_refused_while_the_first_runs(tmp_path):
    with sweep_lock(tmp_path / "sweep"):
        with pytest.raises(InputError, match="another sweep of this plan is running"):
            with sweep_lock(tmp_path / "sweep"):
                pass
    with sweep_lock(tmp_path / "sweep"):   # free again once the first is done
        pass


# ----------------------------------------------------------------------------- SLURM through submitit

def test_slurm_parameters_come_from_the_resource_group_and_the_plan():
    from icl_cmr.sweeps.plan import ResourceGroup, SlurmSettings
    from icl_cmr.sweeps.submitit_backend import executor_parameters

    group = ResourceGroup(gpus=1, mem_gb=128, cpus=8, time_min=240)
    settings = SlurmSettings(partition="gpu", account="lab", array_parallelism=16,
                             additional={"constraint": "a100"})
    params = executor_parameters("slurm", group, settings, ["module load cuda"], "sweep-x-large")
    assert params == {"time": 240, "mem": "128GB", "cpus_per_task": 8, "gpus_per_node": 1, "job_name": "sweep-x-large",
                      "setup": ["module load cuda"], "array_parallelism": 16, "partition": "gpu", "account": "lab",
                      "additional_parameters": {"constraint": "a100"}}
    import submitit
    assert set(params) <= submitit.SlurmExecutor._valid_parameters()   # names sbatch submission accepts


def test_a_preempted_job_is_requeued_with_the_same_command():
    from icl_cmr.sweeps.submitit_backend import SweepTask

    task = SweepTask()
    resubmission = task.checkpoint(["python", "src/x.py", "--a"], "log", "src")
    assert resubmission.function is task
    assert resubmission.args == (["python", "src/x.py", "--a"], "log", "src")


# ----------------------------------------------------------------------------- the scheduler, on stand-in scripts

MAKE_SCRIPT = """
import json, sys
from pathlib import Path
out, fail_flag = Path(sys.argv[1]), Path(sys.argv[2])
if fail_flag.exists():
    sys.stderr.write(f"error: {fail_flag.name} says fail\\n")
    raise SystemExit(2)
out.write_text(json.dumps({"metadata": {"producer": "make.py"}}))
"""


def stand_in_jobs(tmp_path):
    """a, b independent; c needs b, d needs a. Each writes <id>.json unless <id>.fail exists."""
    (tmp_path / "make.py").write_text(MAKE_SCRIPT)

    def job(name, depends=()):
        out = tmp_path / f"{name}.json"
        return Job(id=f"scores/{name}", stage="scores", script="make.py", argv=(str(out), str(tmp_path / f"{name}.fail")),
                   model=name, depends_on=tuple(f"scores/{d}" for d in depends), outputs=(str(out),),
                   checks=(MetadataCheck(str(out), {"producer": "make.py"}),))

    return [job("a"), job("b"), job("c", ["b"]), job("d", ["a"])]


def sweep_once(tmp_path, jobs, retry_failed=False, n_jobs=2):
    from icl_cmr.sweeps.manifest import manifest_path, read_manifest
    from icl_cmr.sweeps.plan import parse_plan
    from icl_cmr.sweeps.scheduler import LocalBackend, run_sweep

    plan = parse_plan({"name": "stand-in", "stages": ["scores"],
                       "models": [{"name": "gpt2-small"}], "paths": {"scores_dir": str(tmp_path / "out")}}, "x.toml")
    file = manifest_path(tmp_path / "sweep")
    manifest = build_manifest(plan.name, "x.toml", "local", jobs, read_manifest(file))
    backend = LocalBackend(n_jobs, tmp_path, tmp_path / "logs")
    try:
        counts = run_sweep(plan, jobs, backend, manifest, file, retry_failed=retry_failed, progress=False)
    finally:
        backend.close()
    saved = read_manifest(file)
    return counts, {r["id"].split("/")[1]: r for r in saved["jobs"]}


@pytest.mark.slow
def test_a_failure_blocks_only_its_dependents_and_is_retried_only_when_asked(tmp_path):
    jobs = stand_in_jobs(tmp_path)
    (tmp_path / "b.fail").touch()
    counts, records = sweep_once(tmp_path, jobs)
    assert {k: r["state"] for k, r in records.items()} == {"a": "done", "b": "failed", "c": "blocked", "d": "done"}
    assert records["b"]["error"] == "error: b.fail says fail"
    assert records["c"]["reason"] == "needs scores/b (failed)"
    assert counts["ran"] == 3

    counts, records = sweep_once(tmp_path, jobs)
    assert {k: r["state"] for k, r in records.items()} == {"a": "skipped", "b": "failed", "c": "blocked",
                                                           "d": "skipped"}
    assert counts["ran"] == 0 and records["b"]["error"] == "error: b.fail says fail"

    (tmp_path / "b.fail").unlink()
    counts, records = sweep_once(tmp_path, jobs, retry_failed=True)
    assert {k: r["state"] for k, r in records.items()} == {"a": "skipped", "b": "done", "c": "done", "d": "skipped"}
    assert counts["ran"] == 2 and records["b"]["attempts"] == 2 and records["a"]["attempts"] == 1


@pytest.mark.slow
def test_a_job_reruns_when_its_dependency_reran(tmp_path):
    jobs = stand_in_jobs(tmp_path)
    sweep_once(tmp_path, jobs)
    (tmp_path / "b.json").unlink()
    counts, records = sweep_once(tmp_path, jobs, n_jobs=1)
    assert {k: r["state"] for k, r in records.items()} == {"a": "skipped", "b": "done", "c": "done", "d": "skipped"}
    assert records["c"]["attempts"] == 2
