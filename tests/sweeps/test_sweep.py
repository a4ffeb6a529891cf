"""src/sweep.py end to end on tiny local models (GPT-2, GPT-NeoX with two "checkpoint" folders, Llama-GQA).

Every job is a real ``python src/<script>.py`` process, so these tests take a few minutes on a
busy 2-core machine; the plan keeps each job tiny (2 prompts of 6 tokens, a 2 x 3 x 2 CMR grid).
The inputs and the local reference sweep come from ``sweep_fixtures`` (session-scoped: built once for
this file and tests/sweeps/test_sweep_slurm.py, which compares the SLURM backend's outputs with them).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import attn_over_size_xtra
import attn_over_time
import select_fit
import select_fit_xtra
import sweep
from icl_cmr.cli.args import run_cli
from icl_cmr.files.reading import load_pickle
from icl_cmr.sweeps.manifest import read_manifest

pytest.register_assert_rewrite("sweep_fixtures")   # a plugin (below) imported by this module first
from sweep_fixtures import REPO_ROOT, assert_same_scores, full_extra, states, wait_for, write_plan

pytest_plugins = ("sweep_fixtures",)    # sweep_inputs, reference_run: built once per session
#: Real job processes (minutes). One xdist worker takes every sweep test (--dist loadgroup), so the local reference
#: sweep shared with tests/sweeps/test_sweep_slurm.py is built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sweeps")]


def test_local_sweep_runs_every_stage_and_records_time_and_peak_memory(reference_run):
    manifest = reference_run["manifest"]
    assert reference_run["code"] == 0
    assert states(manifest) == {
        **{f"scores/{m}": "done" for m in ("tiny-gpt2", "tiny-neox/cp0", "tiny-neox/cp142", "tiny-llama")},
        **{f"fit/{m}": "done" for m in ("tiny-gpt2", "tiny-neox/cp0", "tiny-neox/cp142", "tiny-llama")},
        "ablation/tiny-gpt2": "done",
        "aggregate/attn_over_size_xtra": "done", "aggregate/attn_over_time/tiny-neox": "done",
        "aggregate/select_fit": "done", "aggregate/select_fit_xtra": "done"}
    for record in manifest["jobs"]:
        assert record["attempts"] == 1 and record["error"] is None
        assert record["wall_s"] > 0
        # a Python process that imported numpy holds well over 20 MiB; the tiny models far less than 4 GiB
        assert 20 < record["peak_rss_mib"] < 4096, record
        for output in record["outputs"]:
            assert Path(output).is_file(), output


def test_outputs_follow_the_usual_layout(reference_run):
    scores = reference_run["out"] / "saved_scores"
    assert (scores / "tiny-neox" / "all_scores_tiny-neox_cp0.pkl").is_file()
    assert (scores / "tiny-neox" / "all_scores_tiny-neox_cp142.pkl").is_file()
    # the trained model's fit where ablation.py looks for it; other checkpoints' fits beside the scores
    assert (scores / "tiny-neox" / "cmr_fit_tiny-neox.pkl").is_file()
    assert (scores / "tiny-neox" / "checkpoint_fits" / "tiny-neox_cp0" / "cmr_fit_tiny-neox_cp0.pkl").is_file()
    assert not (reference_run["out"] / "figs" / "fit_attn_score").exists()  # fits run without figures
    assert (reference_run["out"] / "saved_ablation" / "ablation_experiment_gpt2.pkl").is_file()


def test_scores_equal_running_compute_head_scores_by_hand(reference_run, sweep_inputs, tmp_path):
    # As a user types it, in a fresh process: the script pins torch's CPU kernels before torch loads,
    # which an in-process call (torch already imported by the tests) cannot do.
    by_hand = tmp_path / "by_hand.pkl"
    argv = ["--model", sweep_inputs["models"]["gpt2"]["source"], "--out", str(by_hand), "--n-prompts", "2",
            "--block-len", "6", "--prefix-block-len", "4", "--prefix-n-prompts", "1", "--device", "cpu",
            "--no-progress"]
    subprocess.run([sys.executable, str(REPO_ROOT / "src" / "compute_head_scores.py"), *argv], check=True,
                   cwd=REPO_ROOT, capture_output=True)
    assert_same_scores(reference_run["out"] / "saved_scores" / "tiny-gpt2" / "all_scores_tiny-gpt2.pkl", by_hand)


def test_aggregated_outputs_equal_running_the_scripts_by_hand(reference_run, sweep_inputs, tmp_path):
    out = reference_run["out"]
    common = ["--scores-dir", str(out / "saved_scores"), "--crp-grid", str(sweep_inputs["grid"]),
              "--figs-dir", str(tmp_path / "figs")]
    top = ["--top-heads-dir", str(tmp_path / "top"), "--n_top", "2", "4"]
    assert run_cli(attn_over_size_xtra.main, ["--models", "tiny-gpt2", "tiny-neox", "tiny-llama", *common]) == 0
    assert run_cli(attn_over_time.main, ["--model_name", "tiny-neox", "--checkpoints", "0", "142", *common]) == 0
    assert run_cli(select_fit.main, ["--models", "tiny-neox", "--checkpoints", "0", "142", "--tag", "tiny",
                                     *top, *common]) == 0
    assert run_cli(select_fit_xtra.main, ["--models", "tiny-gpt2", "tiny-llama", *top, *common]) == 0
    for table in ("attn_over_size_xtra/layer_summary.csv", "attn_over_time/tiny-neox/layer_over_time.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / "figs" / table), pd.read_csv(tmp_path / "figs" / table))
    for name in ("cmr_top_crp_fit_tiny", "cmr_top_head_score_tiny", "cmr_top_crp_fit_tiny-gpt2",
                 "cmr_top_head_score_tiny-llama"):
        swept, by_hand = load_pickle(out / "saved_top_heads" / f"{name}.pkl"), load_pickle(tmp_path / "top" / f"{name}.pkl")
        assert sorted(swept) == sorted(by_hand)
        for size in ("top2", "top4"):
            for key in ("MSE", "params", "scale_factors", "head_scores"):
                np.testing.assert_array_equal(np.asarray(swept[size][key]), np.asarray(by_hand[size][key]))
            assert list(swept[size]["labels"]) == list(by_hand[size]["labels"])


def test_rerun_skips_every_job_and_rewrites_nothing(reference_run):
    out = reference_run["out"]
    outputs = [Path(o) for r in reference_run["manifest"]["jobs"] for o in r["outputs"]]
    before = {path: path.stat().st_mtime_ns for path in outputs}
    assert run_cli(sweep.main, [str(reference_run["plan"]), "--no-progress"]) == 0
    manifest = read_manifest(out / "saved_scores" / "sweeps" / "tiny" / "manifest.json")
    assert set(states(manifest).values()) == {"skipped"}
    assert all(r["attempts"] == 1 for r in manifest["jobs"])            # nothing started again
    assert {path: path.stat().st_mtime_ns for path in outputs} == before
    # what the first run measured stays in the manifest
    assert all(r["wall_s"] > 0 and r["peak_rss_mib"] > 0 for r in manifest["jobs"])


def test_status_prints_every_job_with_state_time_and_memory(reference_run, capsys):
    assert run_cli(sweep.main, [str(reference_run["plan"]), "--status"]) == 0
    text = capsys.readouterr().out
    for record in reference_run["manifest"]["jobs"]:
        line = next(line for line in text.splitlines() if line.startswith(record["id"] + " "))
        assert " MiB" in line and " s " in line
    assert "13 jobs" in text


def test_dry_run_says_up_to_date_until_the_plan_changes_then_reruns_dependents(reference_run, sweep_inputs,
                                                                               tmp_path, capsys):
    def dry_run(extra):
        plan = write_plan(tmp_path / "tiny.toml", "tiny", reference_run["out"],
                          list(sweep_inputs["models"].values()), ["scores", "fit", "ablation", "aggregate"], extra)
        assert run_cli(sweep.main, [str(plan), "--dry-run"]) == 0
        text = capsys.readouterr().out
        return text, {line.split()[0]: line.split()[1] for line in text.splitlines()
                      if line.startswith(("scores/", "fit/", "ablation/", "aggregate/"))}

    text, lines = dry_run(full_extra(sweep_inputs))
    assert set(lines.values()) == {"up"} and len(lines) == 13 and "0 would run, 13 up to date" in text
    text, lines = dry_run({**full_extra(sweep_inputs), "scores": {"seed": 1}})   # new prompts: everything downstream
    assert set(lines.values()) == {"run"} and len(lines) == 13
    scores_line = next(line for line in text.splitlines() if line.startswith("scores/tiny-gpt2 "))
    assert "# " in scores_line and "parameters.seed is 0, the plan wants 1" in scores_line
    fit_line = next(line for line in text.splitlines() if line.startswith("fit/tiny-gpt2 "))
    assert fit_line.endswith("# after scores/tiny-gpt2")


def test_submitit_local_executor_runs_every_kind_of_stage(reference_run, sweep_inputs, tmp_path):
    # The SLURM code path (SweepTask pickled to a submitit worker, one submission per resource group)
    # on one model, to keep the suite short: scores (group "small"), fit and aggregation (group "cpu").
    stages = ["scores", "fit", "aggregate"]
    plan = write_plan(tmp_path / "tiny-submitit.toml", "tiny-submitit", tmp_path, [sweep_inputs["models"]["gpt2"]],
                      stages, full_extra(sweep_inputs, stages))
    assert run_cli(sweep.main, [str(plan), "--backend", "submitit-local", "--jobs", "2", "--no-progress"]) == 0
    manifest = read_manifest(tmp_path / "saved_scores" / "sweeps" / "tiny-submitit" / "manifest.json")
    assert states(manifest) == {"scores/tiny-gpt2": "done", "fit/tiny-gpt2": "done",
                                "aggregate/attn_over_size_xtra": "done", "aggregate/select_fit_xtra": "done"}
    assert all(r["backend_id"] and r["peak_rss_mib"] > 20 for r in manifest["jobs"])
    assert list((tmp_path / "saved_scores" / "sweeps" / "tiny-submitit" / "submitit").glob("*_result.pkl"))
    ref = reference_run["out"]
    rel = "tiny-gpt2/all_scores_tiny-gpt2.pkl"
    assert_same_scores(tmp_path / "saved_scores" / rel, ref / "saved_scores" / rel)
    swept = load_pickle(tmp_path / "saved_top_heads" / "cmr_top_crp_fit_tiny-gpt2.pkl")
    expected = load_pickle(ref / "saved_top_heads" / "cmr_top_crp_fit_tiny-gpt2.pkl")
    np.testing.assert_array_equal(swept["top4"]["MSE"], expected["top4"]["MSE"])


def test_interrupted_sweep_resumes_only_unfinished_jobs(reference_run, sweep_inputs, tmp_path):
    models = [sweep_inputs["models"]["gpt2"], sweep_inputs["models"]["llama"]]
    plan = write_plan(tmp_path / "cut.toml", "cut", tmp_path, models, ["scores"], {})
    manifest_file = tmp_path / "saved_scores" / "sweeps" / "cut" / "manifest.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, str(REPO_ROOT / "src" / "sweep.py"), str(plan), "--no-progress"],
                                  cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: manifest_file.is_file() and "done" in states(read_manifest(manifest_file)).values(),
                     300, "the first job to finish")
            driver.send_signal(signal.SIGINT)      # to the sweep alone: it must stop its running job itself
            driver.wait(timeout=120)
        finally:
            if driver.poll() is None:
                driver.kill()
    assert driver.returncode == 130, (tmp_path / "driver.log").read_text()
    cut = read_manifest(manifest_file)
    assert set(states(cut).values()) <= {"done", "interrupted", "pending"}
    finished = {r["id"]: Path(r["outputs"][0]) for r in cut["jobs"] if r["state"] == "done"}
    assert 0 < len(finished) < len(cut["jobs"])
    kept = {job: path.read_bytes() for job, path in finished.items()}
    assert not [p for p in (tmp_path / "saved_scores").rglob("*") if p.name.endswith(".tmp")]

    assert run_cli(sweep.main, [str(plan), "--no-progress"]) == 0
    resumed = read_manifest(manifest_file)
    assert {r["id"] for r in resumed["jobs"] if r["state"] == "skipped"} == set(finished)
    assert {r["id"] for r in resumed["jobs"] if r["state"] == "done"} == set(states(cut)) - set(finished)
    for job, path in finished.items():
        assert path.read_bytes() == kept[job]
    for record in resumed["jobs"]:  # the same numbers as the uninterrupted reference run
        path = Path(record["outputs"][0])
        assert_same_scores(path, reference_run["out"] / "saved_scores" / path.parent.name / path.name)


def test_failed_job_is_recorded_does_not_stop_the_others_and_retry_failed_reruns_only_it(sweep_inputs, tmp_path,
                                                                                         capsys):
    good = Path(sweep_inputs["models"]["gpt2"]["source"])
    broken = tmp_path / "broken_model"
    shutil.copytree(good, broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 100)      # a truncated weights file
    models = [{"name": "broken", "source": str(broken)}, sweep_inputs["models"]["gpt2"]]
    plan = write_plan(tmp_path / "fail.toml", "fail", tmp_path, models, ["scores"], {})
    manifest_file = tmp_path / "saved_scores" / "sweeps" / "fail" / "manifest.json"

    assert run_cli(sweep.main, [str(plan), "--no-progress"]) == 1
    first = read_manifest(manifest_file)
    assert states(first) == {"scores/broken": "failed", "scores/tiny-gpt2": "done"}
    failed = next(r for r in first["jobs"] if r["id"] == "scores/broken")
    assert failed["error"] and "\n" not in failed["error"]
    assert (tmp_path / "saved_scores" / "sweeps" / "fail" / "logs" / "scores__broken.log").is_file()
    good_file = tmp_path / "saved_scores" / "tiny-gpt2" / "all_scores_tiny-gpt2.pkl"
    good_mtime = good_file.stat().st_mtime_ns

    assert run_cli(sweep.main, [str(plan), "--no-progress"]) == 1     # not retried without the flag
    again = read_manifest(manifest_file)
    assert states(again)["scores/broken"] == "failed"
    assert next(r for r in again["jobs"] if r["id"] == "scores/broken")["attempts"] == 1

    shutil.copy(good / "model.safetensors", broken / "model.safetensors")
    assert run_cli(sweep.main, [str(plan), "--no-progress", "--retry-failed"]) == 0
    retried = read_manifest(manifest_file)
    assert states(retried) == {"scores/broken": "done", "scores/tiny-gpt2": "skipped"}
    assert next(r for r in retried["jobs"] if r["id"] == "scores/broken")["attempts"] == 2
    assert good_file.stat().st_mtime_ns == good_mtime
