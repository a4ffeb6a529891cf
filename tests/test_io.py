"""Specification tests of icl_cmr.io: atomic writes, metadata, safe loading of pickles and arrays."""
from __future__ import annotations

import io
import json
import os
import pickle
import stat
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch

from icl_cmr import io as icl_io
from icl_cmr.errors import InputError
from icl_cmr.io import (atomic_write, ensure_writable_dir, load_json, load_npy, load_pickle, make_metadata, save_json,
                        save_npy, save_pickle, save_text, to_numpy)


# ----------------------------------------------------------------------------- atomic writes

def test_a_failed_write_leaves_neither_a_file_nor_a_temp_file(tmp_path):
    target = tmp_path / "out.bin"

    def write_then_fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, write_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_previous_version(tmp_path):
    target = tmp_path / "out.txt"
    save_text(target, "old")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda handle: (handle.write(b"new, incomplete"), (_ for _ in ()).throw(KeyboardInterrupt)))
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_written_files_get_ordinary_permissions(tmp_path):
    path = save_text(tmp_path / "table.csv", "a,b\n")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_atomic_write_creates_missing_folders(tmp_path):
    path = save_text(tmp_path / "a" / "b" / "c.txt", "x")
    assert path.read_text() == "x"


def test_an_output_folder_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="cannot create output folder"):
        ensure_writable_dir(blocker / "sub")
    with pytest.raises(InputError, match=str(blocker)):
        ensure_writable_dir(blocker)


# ----------------------------------------------------------------------------- arrays and JSON

def test_npy_round_trip_and_shape_check(tmp_path):
    array = np.arange(24, dtype=float).reshape(2, 3, 4)
    save_npy(tmp_path / "a.npy", array)
    np.testing.assert_array_equal(load_npy(tmp_path / "a.npy", expected_shape=(2, 3, 4)), array)
    with pytest.raises(InputError, match="expected"):
        load_npy(tmp_path / "a.npy", expected_shape=(3, 2, 4))


def test_a_truncated_npy_file_is_refused(tmp_path):
    save_npy(tmp_path / "a.npy", np.ones((50, 17)))
    raw = (tmp_path / "a.npy").read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 1):
        (tmp_path / "cut.npy").write_bytes(raw[:cut])
        with pytest.raises(InputError, match="truncated or corrupt"):
            load_npy(tmp_path / "cut.npy")


def test_object_arrays_are_neither_saved_nor_loaded(tmp_path):
    with pytest.raises(InputError):
        save_npy(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError):
        load_npy(tmp_path / "o.npy")


def test_missing_files_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_npy(tmp_path / "none.npy")
    with pytest.raises(FileNotFoundError):
        load_pickle(tmp_path / "none.pkl")


def test_json_converts_numpy_values_and_refuses_corrupt_files(tmp_path):
    save_json(tmp_path / "m.json", {"x": np.float64(0.5), "n": np.int64(3), "a": np.arange(3), "p": Path("/a/b")})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 0.5, "n": 3, "a": [0, 1, 2], "p": "/a/b"}
    (tmp_path / "bad.json").write_text('{"x": 1,')
    with pytest.raises(InputError, match="cannot parse"):
        load_json(tmp_path / "bad.json")


def test_metadata_records_producer_parameters_seed_and_versions():
    meta = make_metadata("est_cmr_crp.py", {"n_trials": 1000}, seed=7, wall_time_s=1.5)
    assert meta["producer"] == "est_cmr_crp.py"
    assert meta["parameters"] == {"n_trials": 1000}
    assert meta["seed"] == 7 and meta["wall_time_s"] == 1.5
    assert meta["versions"]["numpy"] == np.__version__
    assert meta["versions"]["icl_cmr"] == icl_io.PACKAGE_VERSION
    assert meta["created_utc"].endswith("+00:00")
    json.dumps(meta)  # serialisable as it is


def test_to_numpy_accepts_tensors_and_arrays():
    np.testing.assert_array_equal(to_numpy(torch.arange(3)), [0, 1, 2])
    np.testing.assert_array_equal(to_numpy([1.0, 2.0]), [1.0, 2.0])


# ----------------------------------------------------------------------------- pickles: ours and the authors'

def test_our_pickles_round_trip_with_arrays_tensors_and_containers(tmp_path):
    obj = {"scores": np.arange(6.0).reshape(2, 3), "tensor": torch.tensor([[1.0, 2.0]]),
           "labels": np.array(["L0H0", "L0H1"]), "nested": [1, (2, 3.5), {"a": None}], "flag": True}
    save_pickle(tmp_path / "ours.pkl", obj)
    loaded = load_pickle(tmp_path / "ours.pkl")
    np.testing.assert_array_equal(loaded["scores"], obj["scores"])
    assert torch.equal(loaded["tensor"], obj["tensor"])
    np.testing.assert_array_equal(loaded["labels"], obj["labels"])
    assert loaded["nested"] == obj["nested"] and loaded["flag"] is True


def test_joblib_pickles_load(tmp_path):
    joblib.dump({"a": np.ones((3, 4)), "t": torch.zeros(2)}, tmp_path / "j.pkl")
    loaded = load_pickle(tmp_path / "j.pkl")
    np.testing.assert_array_equal(loaded["a"], np.ones((3, 4)))
    assert torch.equal(loaded["t"], torch.zeros(2))


class _CallsSystem:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _CallsEval:
    def __reduce__(self):
        import builtins

        return builtins.eval, ("__import__('os').system('true')",)


@pytest.mark.parametrize("payload_factory, refused", [
    (lambda marker: {"x": _CallsSystem(f"touch {marker}")}, "system"),
    (lambda marker: [1, _CallsEval()], "eval"),
])
def test_a_pickle_that_calls_code_is_refused_and_never_runs(tmp_path, payload_factory, refused):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(payload_factory(marker), protocol=4))
    with pytest.raises(InputError, match=refused):
        load_pickle(tmp_path / "evil.pkl")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_smuggling_code_inside_a_torch_storage_is_refused(tmp_path):
    # torch.storage._load_from_bytes would call torch.load without weights_only; ours must not.
    inner = io.BytesIO()
    pickle.dump(_CallsSystem(f"touch {tmp_path / 'pwned'}"), inner, protocol=4)

    class FakeStorage:
        def __reduce__(self):
            import torch.storage

            return torch.storage._load_from_bytes, (inner.getvalue(),)

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"t": FakeStorage()}, protocol=4))
    with pytest.raises(InputError):
        load_pickle(tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned").exists()


def test_a_truncated_pickle_is_refused(tmp_path):
    save_pickle(tmp_path / "ok.pkl", {"a": np.ones(100), "b": list(range(50))})
    raw = (tmp_path / "ok.pkl").read_bytes()
    for cut in (1, len(raw) // 3, len(raw) - 1):
        (tmp_path / "cut.pkl").write_bytes(raw[:cut])
        with pytest.raises(InputError):
            load_pickle(tmp_path / "cut.pkl")


def test_a_compressed_joblib_file_is_refused_with_a_clear_message(tmp_path):
    joblib.dump({"a": np.ones(3)}, tmp_path / "c.pkl", compress=3)
    with pytest.raises(InputError, match="compressed"):
        load_pickle(tmp_path / "c.pkl")


@pytest.mark.official
def test_the_authors_pickles_load_through_the_restricted_unpickler(official_dir):
    scores = load_pickle(official_dir / "saved_scores" / "gpt2-small" / "all_scores_gpt2_small.pkl")
    assert isinstance(scores["head_scores"], torch.Tensor) and tuple(scores["head_scores"].shape) == (12, 12)
    assert scores["CRP_scores"].shape == (12, 12, 16) and scores["CRP_scores_sem"].shape == (12, 12, 16)
    assert scores["labels"][5, 1] == "L5H1"
    ablation = load_pickle(official_dir / "saved_ablation" / "ablation_experiment_gpt2-small.pkl")
    assert {k: v.shape for k, v in ablation.items()} == {
        "original_icl_score": (5000,), "ablated_icl_score": (5000,), "ablated_rand_icl_score": (5000,)}
    for path in sorted(official_dir.glob("saved_scores/*/*.pkl")) + sorted(official_dir.glob("saved_top_heads/*.pkl")):
        assert load_pickle(path) is not None
