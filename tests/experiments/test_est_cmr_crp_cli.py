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
from icl_cmr.cli.args import run_cli
from icl_cmr.cmr.model import CMRSettings
from icl_cmr.cmr.grid import GridSpec
from icl_cmr.errors import InputError
from icl_cmr.experiments.cmr_grid import run_grid

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
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"output folder --save_dir {blocker / 'crps'} cannot be made: {blocker} is a file" in err


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


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert code == 2 and err.strip().splitlines()[-1].startswith("error:") and "pass --restart to discard" in err
    assert "Traceback" not in err and not (tmp_path / "cmr_crp_avg_2_3.npy").exists()


def _grid_files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_finished_grid_made_with_other_settings_is_refused_before_work_and_kept(tmp_path, capsys):
    code, _, err = run_script(["--save_dir", str(tmp_path), *SMALL_FLAGS], capsys)
    assert code == 0, err
    finished = _grid_files(tmp_path)
    code, out, err = run_script(["--save_dir", str(tmp_path), *SMALL_FLAGS, "--max_draws", "13"], capsys)
    assert code == 2 and out == "" and err.strip().splitlines() == [
        f"error: the finished grid in {tmp_path / 'cmr_crp_2_3.json'} came from other settings (max_draws: 12 there, "
        "13 now); rerun with those settings, or pass --restart to replace it"]
    assert _grid_files(tmp_path) == finished   # nothing replaced, no partial folder made


@pytest.mark.slow
def test_restart_replaces_a_finished_grid_made_with_other_settings(tmp_path, capsys):
    code, _, err = run_script(["--save_dir", str(tmp_path), *SMALL_FLAGS], capsys)
    assert code == 0, err
    code, _, err = run_script(["--save_dir", str(tmp_path), *SMALL_FLAGS, "--max_draws", "13", "--restart"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "cmr_crp_2_3.json").read_text())["parameters"]["max_draws"] == 13


def test_resume_and_restart_together_are_refused(tmp_path, capsys):
    code, _, err = run_script(["--save_dir", str(tmp_path), "--resume", "--restart", *SMALL_FLAGS], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "error: give --restart (discard the finished slices) or --resume (the default), not both"]


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_script_reports_errors_without_a_traceback(tmp_path, repo_root):
    result = subprocess.run([sys.executable, str(repo_root / "src" / "est_cmr_crp.py"), "--n_start", "1",
                             "--save_dir", str(tmp_path / "out")],
                            cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: argument --n_start: must be an integer >= 2 (the SEM is taken over start positions), got 1 "
        "(see --help)"]
    assert not Path(tmp_path / "out").exists()


# ----------------------------------------------------------------------------- refused up front (probe F5)

def _one_error_nothing_written(tmp_path, capsys, flags):
    save_dir = tmp_path / "C"
    code, out, err = run_script(["--save_dir", str(save_dir), "--workers", "1", "--no_progress", *flags], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and not save_dir.exists()  # no spec.json, not even the folder
    return lines[0]


@pytest.mark.parametrize("n_trials", ["1000000000", "1000000000000"])
def test_a_grid_too_large_for_memory_is_refused_with_the_estimate(tmp_path, capsys, n_trials):
    from icl_cmr.files.unpickling import human_bytes

    line = _one_error_nothing_written(tmp_path, capsys, ["--n_beta", "2", "--n_gamma", "2", "--n_start", "2",
                                                         "--n_trials", n_trials])
    settings = CMRSettings(n_trials=int(n_trials), n_start=2)
    # the draws array alone, [max_draws, n_start * n_trials] int16, exceeds any machine's memory
    assert settings.max_draws * settings.n_start * settings.n_trials * 2 > 100 * 2 ** 30
    needed = GridSpec.from_resolution(2, 2, settings).memory_bytes(1)
    assert line.startswith(f"error: this grid needs about {human_bytes(needed)} of memory (1 worker(s) x ")
    assert line.endswith("lower --n_trials")  # the setting that drives the estimate, not every factor of it


def test_start_positions_reaching_the_last_item_are_refused_instead_of_a_nan_grid(tmp_path, capsys):
    line = _one_error_nothing_written(tmp_path, capsys, ["--n_items", "2", "--n_start", "2", "--max_lag", "5"])
    assert line == ("error: --n_start (2) must be below --n_items (2): a recall starting at the last item can only "
                    "draw the end state, so its CRP would be undefined (NaN)")


def test_the_engine_refuses_a_start_at_the_last_item_and_lags_beyond_the_list():
    from icl_cmr.errors import InputError

    with pytest.raises(InputError, match=r"`n_start` \(3\) must be below `n_items` \(3\)"):
        CMRSettings(n_items=3, n_start=3, max_lag=2)
    with pytest.raises(InputError, match=r"`n_items` \(8\) must exceed `max_lag` \(8\)"):
        CMRSettings(n_items=8, n_start=2, max_lag=8)


@pytest.mark.parametrize("flags, message", [
    (["--max_lag", "200"], "error: --n_items (100) must exceed --max_lag (200): lags beyond 99 can never occur; "
                           "raise --n_items or lower --max_lag (at least 5)"),
    (["--max_lag", "4"], "error: argument --max_lag: must be an integer >= 5 (the fitting lags are -5..+5), got 4 "
                         "(see --help)"),
])
def test_max_lag_outside_what_a_grid_can_hold_or_the_fits_need_is_refused(tmp_path, capsys, flags, message):
    assert _one_error_nothing_written(tmp_path, capsys, flags) == message


@pytest.mark.slow
def test_a_grid_with_another_max_lag_is_read_by_the_fitting_code_and_fits_nearly_the_same(tmp_path, capsys):
    """Each start's CRP is normalised over its own 2 max_lag + 1 lags before the mean over starts, so the
    cut CRP depends on max_lag only through those per-start weights: a small difference, not none."""
    from icl_cmr.fits.distance import cmr_fit_patterns, fit_heads
    from icl_cmr.files.grids import read_cmr_grid

    grids = {}
    for max_lag in (6, 8):
        code, _, err = run_script(["--save_dir", str(tmp_path / str(max_lag)), *SMALL_FLAGS, "--max_lag",
                                   str(max_lag)], capsys)
        assert code == 0, err
        grids[max_lag] = read_cmr_grid(tmp_path / str(max_lag) / "cmr_crp_avg_2_3.npy")
    assert grids[6].lags.tolist() == list(range(-6, 7)) and grids[8].lags.tolist() == list(range(-8, 9))
    attn = np.random.default_rng(0).normal(size=(3, 4, 16))
    fits = {max_lag: fit_heads(attn, grid) for max_lag, grid in grids.items()}
    difference = np.abs(cmr_fit_patterns(grids[6]) - cmr_fit_patterns(grids[8]))
    assert 0 < difference.max() < 1e-3
    np.testing.assert_allclose(fits[6].distance, fits[8].distance, rtol=1e-2)


def test_a_grid_whose_lags_do_not_reach_the_fitting_lags_is_refused_by_the_reader(tmp_path):
    from icl_cmr.errors import InputError
    from icl_cmr.files.grids import read_cmr_grid

    mean = np.full((20, 21, 11, 9), 1 / 9)   # lags -4..+4
    np.save(tmp_path / "grid_avg.npy", mean)
    with pytest.raises(InputError, match=r"has 9 lags on its last axis; expected 2 m \+ 1 lags -m..m with m >= 5"):
        read_cmr_grid(tmp_path / "grid_avg.npy")


@pytest.mark.slow
@pytest.mark.parametrize("settings, method", [
    (CMRSettings(n_items=100, n_trials=1000, max_draws=50, n_start=20), "simulate"),
    (CMRSettings(n_items=100, n_trials=20000, max_draws=50, n_start=2), "simulate"),
    (CMRSettings(n_items=30, n_trials=5000, max_draws=15, n_start=3, max_lag=20), "conditional"),
    (CMRSettings(n_items=400, n_trials=200, max_draws=50, n_start=20), "exact"),
])
def test_the_memory_estimate_bounds_the_measured_peak_of_a_grid_point(settings, method):
    import tracemalloc

    from icl_cmr.cmr.model import _component_tables, cmr_crp, point_memory_bytes
    from icl_cmr.cmr.conditional import conditional_cmr_crp

    def compute(beta_enc):
        rng = np.random.default_rng(0)
        if method == "conditional":
            return conditional_cmr_crp(beta_enc, 0.5, 0.4, settings, rng)
        return cmr_crp(beta_enc, 1.0 if method == "exact" else 0.5, 0.4, settings, rng, method=method)

    compute(0.3)                      # compile the kernels outside the measurement
    peaks = []
    for beta_enc in (0.05, 0.3, 0.95):  # long recalls (many draws held) to short ones
        _component_tables.cache_clear()
        tracemalloc.start()
        compute(beta_enc)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    estimate = point_memory_bytes(settings, simulate=method != "exact", exact=method == "exact",
                                  conditional=method == "conditional")
    assert max(peaks) <= estimate <= 2.5 * max(peaks)


# ----------------------------------------------------------------------------- Ctrl-C with worker processes (F6)

@pytest.mark.slow
def test_ctrl_c_with_two_workers_prints_one_line_and_keeps_the_finished_slices(tmp_path, repo_root):
    flags = ["--save_dir", str(tmp_path), "--n_beta", "4", "--n_gamma", "3", "--n_trials", "2000", "--n_items", "60",
             "--n_start", "5", "--workers", "2", "--no_progress"]
    slice_dir = tmp_path / ".cmr_crp_4_3.partial"
    # A terminal sends Ctrl-C (SIGINT) to the whole foreground process group: parent and workers.
    # A suite started in the background by a shell (`... &`) inherits SIGINT as ignored, and so would the script;
    # a terminal's foreground process has the default, which the child gets back here.
    process = subprocess.Popen([sys.executable, str(repo_root / "src" / "est_cmr_crp.py"), *flags], cwd=repo_root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not list(slice_dir.glob("slice_*.npy")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, "the grid finished before it could be interrupted: make it longer"
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "ForkPoolWorker" not in err
    n_saved = len(list(slice_dir.glob("slice_*.npy")))
    assert 1 <= n_saved < 12 and not (tmp_path / "cmr_crp_avg_4_3.npy").exists()
    resumed = subprocess.run([sys.executable, str(repo_root / "src" / "est_cmr_crp.py"), *flags], cwd=repo_root,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "slices resumed" in resumed.stderr


# ----------------------------------------------------------------------------- the standard recall rule (issue 24)

def test_standard_rule_writes_its_own_files_and_records_its_rule(tmp_path, capsys):
    flags = [flag for flag in SMALL_FLAGS]
    flags[flags.index("--max_draws"):flags.index("--max_draws") + 2] = []  # the rule's default: n_items - 1
    code, _, err = run_script(["--save_dir", str(tmp_path), "--quantity", "conditional", "--recall_rule", "standard",
                               *flags], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmr_std_cond_crp_2_3.json", "cmr_std_cond_crp_avg_2_3.npy",
                                                          "cmr_std_cond_crp_sem_2_3.npy"]
    meta = json.loads((tmp_path / "cmr_std_cond_crp_2_3.json").read_text())
    assert meta["parameters"]["recall_rule"] == "standard" and meta["parameters"]["max_draws"] == 29
    assert meta["parameters"]["method"] == "simulate" and "standard recall rule" in meta["description"]
    mean = np.load(tmp_path / "cmr_std_cond_crp_avg_2_3.npy")
    assert mean.shape == (2, 3, 3, 17) and np.isnan(mean[..., 8]).all()


def test_li24_rule_output_names_and_spec_are_unchanged(tmp_path, capsys):
    code, _, err = run_script(["--save_dir", str(tmp_path), "--recall_rule", "li24", *SMALL_FLAGS], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "cmr_crp_2_3.json").read_text())
    assert "recall_rule" not in meta["parameters"] and "stop_probability" not in meta["parameters"]


@pytest.mark.parametrize("flags, message", [
    (["--stop_probability", "0.1"], "error: --stop_probability applies to the standard recall rule only"),
    (["--recall_rule", "standard", "--max_draws", "30", "--n_items", "30"],
     "error: --max_draws (30) exceeds the longest possible recall under the standard rule"),
    (["--recall_rule", "standard", "--method", "exact"], "error: the standard recall rule is always simulated"),
    (["--recall_rule", "standard", "--stop_probability", "1"], "error: argument --stop_probability: must be"),
])
def test_standard_rule_flags_are_checked_before_work(tmp_path, capsys, flags, message):
    line = _one_error_nothing_written(tmp_path, capsys, ["--n_beta", "2", "--n_gamma", "2", *flags])
    assert line.startswith(message), line


def test_a_grid_of_nan_points_only_is_refused_and_nothing_is_left(tmp_path, capsys):
    code, out, err = run_script(["--save_dir", str(tmp_path), "--recall_rule", "standard", "--stop_probability", "0.99",
                                 "--n_beta", "2", "--n_gamma", "2", "--n_trials", "20", "--n_items", "30", "--n_start",
                                 "3", "--workers", "1", "--no_progress"], capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1] == (
        "error: every one of the 12 grid points is NaN or flat on the fitting lags -5..5 (at some start position, none "
        "of its 20 recalls made a transition on those lags, recall stopping with probability 0.99 before each draw), "
        "so no fit could use this grid; it was not written: raise --n_trials or lower --stop_probability")
    assert list(tmp_path.iterdir()) == []   # no grid files, no partial folder


@pytest.mark.parametrize("flags", [["--recall_rule", "standard"], ["--quantity", "conditional"]])
def test_a_method_other_than_simulation_is_refused_naming_the_method_flag(tmp_path, capsys, flags):
    line = _one_error_nothing_written(tmp_path, capsys, ["--n_beta", "2", "--n_gamma", "2", "--method", "exact", *flags])
    assert line.endswith("(it has no exact form): --method must be 'simulate', got 'exact'"), line


def test_the_engine_names_the_method_parameter_when_it_cannot_be_exact():
    with pytest.raises(InputError) as err:
        GridSpec.from_resolution(2, 2, CMRSettings(recall_rule="standard"), method="exact")
    assert "`method` must be 'simulate'" in str(err.value) and err.value.parameters == ("method", "recall_rule")
    with pytest.raises(InputError) as err:
        GridSpec.from_resolution(2, 2, CMRSettings(), method="exact", quantity="conditional")
    assert "`method` must be 'simulate'" in str(err.value) and err.value.parameters == ("method", "quantity")
