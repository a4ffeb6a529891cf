"""The est_cmr_crp.py script: one-line errors for bad input, outputs, and resuming after kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import est_cmr_crp
from icl_cmr.cli import run_cli
from icl_cmr.cmr import CMRSettings
from icl_cmr.cmr_grid import GridSpec, run_grid

SMALL_FLAGS = ["--n_beta", "2", "--n_gamma", "3", "--n_trials", "30", "--n_items", "30", "--max_draws", "12",
               "--n_start", "3", "--seed", "4", "--no_progress"]


def run_script(argv, capsys):
    """Run the script's main as ``python est_cmr_crp.py`` would: exit code, stdout, stderr."""
    try:
        code = run_cli(est_cmr_crp.main, argv)
    except SystemExit as exit_:  # argparse rejects a flag
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("bad_flags", [
    ["--n_trials", "0"], ["--n_trials", "many"], ["--max_draws", "-5"], ["--n_start", "1"],
    ["--n_start", "500"], ["--n_gamma", "1"], ["--n_beta", "0"], ["--workers", "0"], ["--seed", "-1"],
    ["--method", "closed"], ["--n_items", "1"],
])
def test_bad_input_gives_one_line_error_exit_2_and_no_output(tmp_path, capsys, bad_flags):
    save_dir = tmp_path / "out"
    code, out, err = run_script(["--save_dir", str(save_dir), "--no_progress", *bad_flags], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err and out == ""
    assert not save_dir.exists() or not any(save_dir.rglob("*"))


def test_an_unwritable_output_folder_gives_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_script(["--save_dir", str(blocker / "crps"), *SMALL_FLAGS], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot create output folder" in err


def test_writes_the_grid_files_and_metadata(tmp_path, capsys):
    code, _, err = run_script(["--save_dir", str(tmp_path), *SMALL_FLAGS], capsys)
    assert code == 0, err
    mean = np.load(tmp_path / "cmr_crp_avg_2_3.npy")
    sem = np.load(tmp_path / "cmr_crp_sem_2_3.npy")
    assert mean.shape == sem.shape == (2, 3, 3, 17)
    np.testing.assert_allclose(mean.sum(-1), 1.0, atol=1e-12)
    meta = json.loads((tmp_path / "cmr_crp_2_3.json").read_text())
    assert meta["producer"] == "est_cmr_crp.py" and meta["seed"] == 4
    assert meta["parameters"]["n_trials"] == 30 and meta["parameters"]["max_draws"] == 12
    assert meta["parameters"]["beta_rec"] == [0.0, 0.5, 1.0] and meta["parameters"]["method"] == "exact"
    assert meta["wall_time_s"] > 0 and "numpy" in meta["versions"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmr_crp_2_3.json", "cmr_crp_avg_2_3.npy",
                                                          "cmr_crp_sem_2_3.npy"]  # no partial folder left


def _interrupt_after_one_slice(tmp_path):
    spec = GridSpec.from_resolution(2, 3, CMRSettings(n_items=30, n_trials=30, max_draws=12, n_start=3), seed=4)
    slice_dir = tmp_path / ".cmr_crp_2_3.partial"

    def stop(slice_id, n_done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_grid(spec, slice_dir, workers=1, progress=False, on_slice_done=stop)
    return slice_dir


def test_a_truncated_slice_is_recomputed_and_the_grid_equals_an_uninterrupted_one(tmp_path, capsys):
    code, _, err = run_script(["--save_dir", str(tmp_path / "whole"), *SMALL_FLAGS], capsys)
    assert code == 0, err
    slice_dir = _interrupt_after_one_slice(tmp_path / "cut")
    (slice_file,) = slice_dir.glob("slice_*.npy")
    slice_file.write_bytes(slice_file.read_bytes()[:60])
    code, _, err = run_script(["--save_dir", str(tmp_path / "cut"), *SMALL_FLAGS], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1 and "discarding damaged slice" in warnings[0] and slice_file.name in warnings[0]
    for name in ("cmr_crp_avg_2_3.npy", "cmr_crp_sem_2_3.npy"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_resuming_is_the_default_and_restart_discards(tmp_path, capsys):
    slice_dir = _interrupt_after_one_slice(tmp_path)
    code, _, err = run_script(["--save_dir", str(tmp_path), *SMALL_FLAGS], capsys)
    assert code == 0 and "1 slices resumed" in err
    meta = json.loads((tmp_path / "cmr_crp_2_3.json").read_text())
    assert meta["resumed"] is True and meta["resumed_slices"] == 1
    assert meta["wall_time_s"] >= meta["wall_time_this_session_s"] > 0

    _interrupt_after_one_slice(tmp_path)
    code, _, err = run_script(["--save_dir", str(tmp_path), "--restart", *SMALL_FLAGS], capsys)
    assert code == 0 and "resumed" not in err
    assert json.loads((tmp_path / "cmr_crp_2_3.json").read_text())["resumed"] is False
    assert not slice_dir.exists()


def test_other_settings_than_the_saved_slices_are_refused_in_one_line(tmp_path, capsys):
    _interrupt_after_one_slice(tmp_path)
    other = [flag if flag != "4" else "5" for flag in SMALL_FLAGS]  # --seed 5
    code, out, err = run_script(["--save_dir", str(tmp_path), *other], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error:") and "add --restart" in err
    assert "Traceback" not in err and not (tmp_path / "cmr_crp_avg_2_3.npy").exists()


def test_resume_and_restart_together_are_refused(tmp_path, capsys):
    code, _, err = run_script(["--save_dir", str(tmp_path), "--resume", "--restart", *SMALL_FLAGS], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "error: give --restart (discard the finished slices) or --resume (the default), not both"]


def test_resume_after_kill_9_gives_bit_identical_files(tmp_path, capsys, repo_root):
    flags = ["--n_beta", "2", "--n_gamma", "4", "--n_trials", "400", "--n_items", "60", "--max_draws", "30",
             "--n_start", "3", "--seed", "11", "--workers", "1", "--no_progress"]
    code, _, err = run_script(["--save_dir", str(tmp_path / "whole"), *flags], capsys)
    assert code == 0, err

    killed_dir = tmp_path / "killed"
    slice_dir = killed_dir / ".cmr_crp_2_4.partial"
    process = subprocess.Popen([sys.executable, str(repo_root / "src" / "est_cmr_crp.py"),
                                "--save_dir", str(killed_dir), *flags],
                               cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(slice_dir.glob("slice_*.npy")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    n_saved = len(list(slice_dir.glob("slice_*.npy")))
    assert 1 <= n_saved < 8
    assert not (killed_dir / "cmr_crp_avg_2_4.npy").exists()  # nothing that looks complete

    code, _, err = run_script(["--save_dir", str(killed_dir), "--resume", *flags], capsys)  # --resume: a no-op alias
    assert code == 0, err
    assert f"{n_saved} slices resumed" in err
    for name in ("cmr_crp_avg_2_4.npy", "cmr_crp_sem_2_4.npy"):
        assert (killed_dir / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_the_script_reports_errors_without_a_traceback(tmp_path, repo_root):
    result = subprocess.run([sys.executable, str(repo_root / "src" / "est_cmr_crp.py"), "--n_start", "1",
                             "--save_dir", str(tmp_path / "out")],
                            cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: argument --n_start: must be an integer >= 2 (the SEM is taken over start positions), got 1 "
        "(see --help)"]
    assert not Path(tmp_path / "out").exists()
