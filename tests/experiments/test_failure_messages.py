"""What a failed run prints and leaves behind (issue 25, item 5).

A full disk ends a run with one ``error:`` line and nothing after it (no progress bar redrawn below it), and
leaves no empty output folder; a read-only file system is called that, not "permission denied".
"""
from __future__ import annotations

import errno
import gc
import os
import tempfile

import pytest

import est_cmr_crp
import plot_crp
import run_pipeline
import train_induction
from icl_cmr.cli.args import run_cli
from icl_cmr.experiments import pipeline
from icl_cmr.files import folders
from icl_cmr.files.writing import atomic_write

TINY_TRAINING = ["--train_length", "12", "--d_model", "16", "--n_heads", "2", "--d_mlp", "32", "--n_val", "8",
                 "--position_encoding", "rope", "--max_steps", "4", "--eval_every", "2", "--threads", "1",
                 "--device", "cpu", "--no_figure"]


@pytest.fixture(autouse=True)
def no_debug_tracebacks(monkeypatch):
    monkeypatch.delenv("ICL_CMR_DEBUG", raising=False)


@pytest.fixture()
def full_disk(monkeypatch):
    """Every file written fails as on a full disk, when it is synced; creating folders still works, as it does
    on a real full disk more often than not."""
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)


def test_a_full_disk_during_training_prints_no_progress_bar_after_the_error_line(tmp_path, capsys, full_disk):
    save_dir = tmp_path / "runs" / "models"
    code = run_cli(train_induction.main, ["--save_dir", str(save_dir), "--fig_dir", str(tmp_path / "figs"),
                                          *TINY_TRAINING])
    gc.collect()  # a bar left open redraws itself when it is collected (at the latest at exit): make that happen now
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    last = err.rstrip("\n").rsplit("\n", 1)[-1]
    assert last.startswith("error: cannot write ") and last.endswith("no space left on device (the disk is full)")
    assert err.endswith(last + "\n")  # nothing after it: the bar was closed (erased) before the line was printed
    assert "\r" not in err.split(last)[-1]
    assert not (tmp_path / "runs").exists()  # the folders the failed run made are gone


def test_a_full_disk_as_a_grid_starts_leaves_no_empty_folder(tmp_path, capsys, full_disk):
    save_dir = tmp_path / "grids" / "new"
    code = run_cli(est_cmr_crp.main, ["--save_dir", str(save_dir), "--n_beta", "1", "--n_gamma", "2", "--n_trials",
                                      "2", "--n_items", "8", "--n_start", "2", "--max_lag", "5", "--workers", "1",
                                      "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error: ") == 1 and "no space left on device" in err, err
    assert not (tmp_path / "grids").exists()


@pytest.mark.slow  # runs the three steps of the pipeline on the bundled model (about 10 s)
def test_a_pipeline_whose_disk_fills_leaves_no_empty_folder(tmp_path, capsys, monkeypatch):
    if not pipeline.BUNDLED_MODEL.is_dir() or not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs the bundled model and /proc/self/fd (to fill the disk under one folder only)")
    outputs = tmp_path / "outputs"
    real_fsync = os.fsync

    def full_under_outputs(fd):  # the held-out texts in the scratch folder are written; the outputs are not
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(outputs)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_under_outputs)
    code = run_cli(run_pipeline.main, ["--n-eval", "4", "--no-progress", "--scores-dir", str(outputs / "scores"),
                                       "--figs-dir", str(outputs / "figs"), "--ablation-dir", str(outputs / "ablation")])
    err = capsys.readouterr().err
    assert code == 2 and err.rstrip("\n").rsplit("\n", 1)[-1].startswith("error: cannot write "), err
    assert "no space left on device" in err
    assert not outputs.exists()


def test_a_folder_holding_earlier_files_is_kept_when_a_run_fails(tmp_path, capsys):
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "earlier.txt").write_text("an earlier result")

    def main(argv=None):
        folders.make_folders(kept / "new" / "deeper")
        folders.make_folders(tmp_path / "other")
        raise OSError(errno.ENOSPC, "No space left on device", str(kept / "new" / "deeper" / "x"))

    assert run_cli(main, []) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert sorted(p.name for p in kept.iterdir()) == ["earlier.txt"]


def test_a_read_only_file_system_is_called_read_only_not_permission_denied(tmp_path, capsys, monkeypatch):
    # What a read-only mount does, even for root: os.access says no and creating a file raises EROFS.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code = run_cli(plot_crp.main, ["--figs-dir", str(tmp_path / "figs")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"error: output folder --figs-dir {tmp_path / 'figs' / 'plot_crp'} cannot be created: {tmp_path} "
                   "is not writable (read-only file system)\n")


def test_writing_on_a_read_only_file_system_says_so(tmp_path, capsys, monkeypatch):
    def main(argv=None):
        def write(handle):
            raise OSError(errno.EROFS, "Read-only file system")

        atomic_write(tmp_path / "out.bin", write)

    assert run_cli(main, []) == 2
    assert capsys.readouterr().err == f"error: cannot write {tmp_path / 'out.bin'}: read-only file system\n"
