"""icl_cmr.files.outputs: writable-folder checks, pending writes, portable paths, reruns that change nothing."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from icl_cmr.errors import InputError
from icl_cmr.files.reading import load_pickle
from icl_cmr.files.writing import make_metadata, save_pickle
from icl_cmr.files.outputs import REPO_ROOT, OutputGuard, PendingWrites, portable_path, portable_paths_in, same_result
from icl_cmr.files.folders import check_writable_dir


# ----------------------------------------------------------------------------- checks before work

def test_check_writable_dir_accepts_a_folder_that_can_be_created_and_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_writable_dir(target) == target
    assert not (tmp_path / "a").exists()


def test_check_writable_dir_refuses_a_path_below_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"--out output folder|cannot be made: .*file is a file"):
        check_writable_dir(tmp_path / "file" / "sub", "--out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_check_writable_dir_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            check_writable_dir(folder / "new")
    finally:
        folder.chmod(0o700)


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="no /sys here")
def test_check_writable_dir_tries_a_file_where_permission_bits_cannot_tell():
    with pytest.raises(InputError, match=r"^output folder --figs-dir /sys/x cannot be created: /sys is not writable"):
        check_writable_dir("/sys/x", "--figs-dir")
    assert not os.path.exists("/sys/x")


def test_pending_writes_write_nothing_until_commit(tmp_path):
    import matplotlib.pyplot as plt

    pending = PendingWrites()
    pending.text(tmp_path / "t" / "table.csv", "a,b\n1,2\n")
    pending.pickle(tmp_path / "r.pkl", {"x": np.arange(3)})
    fig, _ = plt.subplots()
    pending.figure(tmp_path / "f" / "fig.pdf", fig)
    assert list(tmp_path.iterdir()) == [] and len(pending) == 3
    written = pending.commit()
    assert written == [tmp_path / "t" / "table.csv", tmp_path / "r.pkl", tmp_path / "f" / "fig.pdf"]
    assert (tmp_path / "t" / "table.csv").read_text() == "a,b\n1,2\n"
    np.testing.assert_array_equal(load_pickle(tmp_path / "r.pkl")["x"], np.arange(3))
    assert (tmp_path / "f" / "fig.pdf").read_bytes().startswith(b"%PDF")


def test_pending_writes_check_every_folder_before_writing_any_file(tmp_path):
    (tmp_path / "blocker").write_text("x")
    pending = PendingWrites()
    pending.text(tmp_path / "first.txt", "1")
    pending.text(tmp_path / "blocker" / "second.txt", "2")
    with pytest.raises(InputError, match="is a file"):
        pending.commit()
    assert not (tmp_path / "first.txt").exists()


def _tree(folder):
    """Every file and folder under ``folder`` (relative POSIX paths), hidden ones included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _three_outputs(tmp_path):
    """An earlier result (old.txt) and a pending set that would replace it and add two files."""
    (tmp_path / "old.txt").write_text("earlier run")
    pending = PendingWrites()
    pending.text(tmp_path / "old.txt", "this run")
    pending.json(tmp_path / "new" / "table.json", {"a": 1})
    pending.pickle(tmp_path / "new" / "result.pkl", {"x": np.arange(3)})
    return pending


def test_pending_writes_refuse_a_target_that_is_a_folder_before_writing_anything(tmp_path):
    pending = _three_outputs(tmp_path)
    (tmp_path / "new" / "result.pkl").mkdir(parents=True)   # the probe's case: one output path is a folder
    with pytest.raises(InputError, match=r"result.pkl is a folder, not a file; nothing was written"):
        pending.commit()
    assert _tree(tmp_path) == ["new", "new/result.pkl", "old.txt"]
    assert (tmp_path / "old.txt").read_text() == "earlier run"


def test_pending_writes_leave_nothing_when_a_file_fails_to_write(tmp_path):
    import errno

    def disk_full(handle):
        handle.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    pending = _three_outputs(tmp_path)
    pending.stream(tmp_path / "new" / "last.bin", disk_full)
    with pytest.raises(OSError) as caught:
        pending.commit()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "new" / "last.bin")
    # no temporary file, no new file, no folder the commit created; the earlier file as it was
    assert _tree(tmp_path) == ["old.txt"] and (tmp_path / "old.txt").read_text() == "earlier run"


def test_pending_writes_leave_nothing_when_interrupted_while_writing(tmp_path):
    def interrupted(handle):
        raise KeyboardInterrupt

    pending = _three_outputs(tmp_path)
    pending.stream(tmp_path / "new" / "last.bin", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pending.commit()
    assert _tree(tmp_path) == ["old.txt"] and (tmp_path / "old.txt").read_text() == "earlier run"


def test_a_rename_failing_midway_restores_the_files_already_renamed(tmp_path, monkeypatch):
    import errno

    pending = _three_outputs(tmp_path)
    real_replace, calls = os.replace, []

    def replace_fails_on_the_third(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_fails_on_the_third)
    with pytest.raises(InputError) as caught:
        pending.commit()
    monkeypatch.undo()
    assert str(caught.value) == (f"cannot put {tmp_path / 'new' / 'result.pkl'} in place: Input/output error; "
                                 "the 2 output(s) already in place were restored to their earlier state")
    assert _tree(tmp_path) == ["old.txt"] and (tmp_path / "old.txt").read_text() == "earlier run"


def test_pending_writes_replace_earlier_files_and_leave_no_temporary_or_kept_copy(tmp_path):
    pending = _three_outputs(tmp_path)
    assert pending.commit() == [tmp_path / "old.txt", tmp_path / "new" / "table.json", tmp_path / "new" / "result.pkl"]
    assert _tree(tmp_path) == ["new", "new/result.pkl", "new/table.json", "old.txt"]
    assert (tmp_path / "old.txt").read_text() == "this run"
    assert json.loads((tmp_path / "new" / "table.json").read_text()) == {"a": 1}


def test_pending_writes_refuse_two_outputs_with_the_same_path(tmp_path):
    pending = PendingWrites()
    pending.text(tmp_path / "a.txt", "1")
    pending.text(tmp_path / "sub" / ".." / "a.txt", "2")
    with pytest.raises(InputError, match="same file"):
        pending.commit()
    assert _tree(tmp_path) == []


def test_pending_writes_call_a_path_writer_with_a_temporary_name_beside_the_target(tmp_path):
    seen = []

    def write(path):
        seen.append(path)
        path.write_bytes(b"written by the caller")

    pending = PendingWrites()
    pending.add(tmp_path / "model.pt", write)
    pending.commit()
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".model.pt.")
    assert _tree(tmp_path) == ["model.pt"] and (tmp_path / "model.pt").read_bytes() == b"written by the caller"


# ----------------------------------------------------------------------------- portable paths

def test_portable_path_is_relative_inside_the_repository():
    assert portable_path(REPO_ROOT / "saved_models" / "toy_lm") == "saved_models/toy_lm"
    assert portable_path(REPO_ROOT) == "."


def test_portable_path_outside_the_repository():
    assert portable_path(Path.home() / "data" / "x.jsonl") == "~/data/x.jsonl"
    assert portable_path("/nonexistent-root-dir/x") == "/nonexistent-root-dir/x"
    assert portable_path(None) is None


def test_portable_paths_in_rewrites_only_the_named_keys():
    meta = {"save_dir": "/old/root/saved", "note": "/old/root/keep", "inner": {"models": ["/old/root/a.pt", "b.pt"],
                                                                            "source": "file:/old/root/ids.json"}}
    fixed = portable_paths_in(meta, ("save_dir", "models", "source"), root="/old/root")
    assert fixed == {"save_dir": "saved", "note": "/old/root/keep",
                     "inner": {"models": ["a.pt", "b.pt"], "source": "file:ids.json"}}


# ----------------------------------------------------------------------------- same result

def _result(tmp_path, name, values, created="2026-01-01T00:00:00+00:00", wall=1.5, threshold=0.5):
    meta = make_metadata("test.py", {"threshold": threshold}, seed=0, wall_time_s=wall)
    meta["created_utc"] = created
    return save_pickle(tmp_path / name, {"values": np.asarray(values, dtype=float), "metadata": meta})


def test_pickles_differing_only_in_run_metadata_hold_the_same_result(tmp_path):
    a = _result(tmp_path, "a.pkl", [1.0, np.nan])
    b = _result(tmp_path, "b.pkl", [1.0, np.nan], created="2027-05-05T00:00:00+00:00", wall=99.0)
    assert a.read_bytes() != b.read_bytes() and same_result(a, b)


def test_a_last_bit_difference_or_a_parameter_change_is_a_different_result(tmp_path):
    a = _result(tmp_path, "a.pkl", [1.0, 2.0])
    assert not same_result(a, _result(tmp_path, "b.pkl", [1.0, np.nextafter(2.0, 3.0)]))
    assert not same_result(a, _result(tmp_path, "c.pkl", [1.0, 2.0], threshold=0.1))


def test_pdfs_differing_only_in_their_creation_date_hold_the_same_result(tmp_path):
    body = b"%PDF-1.4\n<< /Producer (Matplotlib) /CreationDate (D:20261122031633Z) >>\n"
    (tmp_path / "a.pdf").write_bytes(body)
    (tmp_path / "b.pdf").write_bytes(body.replace(b"20261122031633", b"20261130020617"))
    (tmp_path / "c.pdf").write_bytes(body.replace(b"Matplotlib", b"Matplotlin"))
    assert same_result(tmp_path / "a.pdf", tmp_path / "b.pdf")
    assert not same_result(tmp_path / "a.pdf", tmp_path / "c.pdf")


def test_json_metadata_files_compare_without_run_fields(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"producer": "x", "created_utc": "1", "git_commit": "abc", "parameters": {"n": 1}}))
    b.write_text(json.dumps({"producer": "x", "created_utc": "2", "git_commit": "def", "parameters": {"n": 1}}))
    assert same_result(a, b)
    b.write_text(json.dumps({"producer": "x", "created_utc": "2", "peak_gpu_memory_gib": 3.5, "parameters": {"n": 1}}))
    assert same_result(a, b)    # a run-describing field the older file lacks
    b.write_text(json.dumps({"producer": "x", "created_utc": "2", "parameters": {"n": 2}}))
    assert not same_result(a, b)


# ----------------------------------------------------------------------------- the guard

def test_guard_keeps_files_whose_result_did_not_change_and_keeps_new_results(tmp_path):
    old_same = _result(tmp_path, "same.pkl", [1.0]).read_bytes()
    _result(tmp_path, "changed.pkl", [1.0])
    with OutputGuard([tmp_path / "*.pkl"]) as guard:
        _result(tmp_path, "same.pkl", [1.0], created="2030-01-01T00:00:00+00:00")
        _result(tmp_path, "changed.pkl", [2.0])
        _result(tmp_path, "new.pkl", [3.0])
    assert (tmp_path / "same.pkl").read_bytes() == old_same
    assert load_pickle(tmp_path / "changed.pkl")["values"].tolist() == [2.0]
    assert [p.name for p in guard.unchanged] == ["same.pkl"]
    assert [p.name for p in guard.changed] == ["changed.pkl"] and [p.name for p in guard.created] == ["new.pkl"]


def test_guard_restores_everything_when_the_run_fails(tmp_path):
    before = _result(tmp_path, "old.pkl", [1.0]).read_bytes()
    with pytest.raises(RuntimeError):
        with OutputGuard([tmp_path / "*.pkl"]):
            _result(tmp_path, "old.pkl", [5.0])
            _result(tmp_path, "new.pkl", [3.0])
            raise RuntimeError("step 3 failed")
    assert (tmp_path / "old.pkl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.pkl"]


def test_guard_never_touches_hidden_files(tmp_path):
    hidden = tmp_path / ".partial"
    hidden.mkdir()
    (hidden / "batch.npz").write_bytes(b"resume state")
    with pytest.raises(KeyboardInterrupt):
        with OutputGuard([tmp_path / "*", hidden / "*"]):
            (tmp_path / ".state.json").write_text("{}")
            raise KeyboardInterrupt
    assert (hidden / "batch.npz").read_bytes() == b"resume state" and (tmp_path / ".state.json").exists()


# ----------------------------------------------------------------------------- the shipped files

def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


@pytest.mark.slow
def test_shipped_outputs_carry_no_machine_paths(repo_root):
    """Metadata paths are relative to the repository (or ``~/``); only a scratch folder under /tmp may remain."""
    import torch

    found = []
    for path in sorted(repo_root.glob("saved_*/**/*")):
        if path.suffix == ".json":
            content = json.loads(path.read_text())
        elif path.suffix == ".pkl":
            content = load_pickle(path).get("metadata", {})
        elif path.suffix == ".pt" and not path.name.endswith("_checkpoint.pt"):
            content = torch.load(path, map_location="cpu", weights_only=True).get("metadata", {})
        else:
            continue
        found += [f"{path.relative_to(repo_root)}: {text}" for text in _strings(content)
                  if text.removeprefix("file:").startswith("/") and not text.startswith("/tmp/")]
    assert found == []


def test_the_repository_root_is_the_folder_holding_readme_and_src():
    """Metadata paths are relative to it: a wrong root would record ../saved_scores/... in shipped files."""
    from icl_cmr.files.outputs import REPO_ROOT, portable_path

    assert (REPO_ROOT / "README.md").is_file() and (REPO_ROOT / "src" / "icl_cmr").is_dir()
    assert portable_path(REPO_ROOT / "saved_scores" / "toy_lm") == "saved_scores/toy_lm"
