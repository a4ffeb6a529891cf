"""Specification tests of icl_cmr.files.writing: atomic writes, metadata, safe loading of pickles and arrays."""
from __future__ import annotations

import io
import json
import os
import pickle
import stat
import struct
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch

from icl_cmr.files import writing as icl_io
from icl_cmr.errors import CorruptFileError, InputError, UnsafeFileError
from icl_cmr.files.writing import atomic_write, make_metadata, save_json, save_npy, save_pickle, save_text
from icl_cmr.files.folders import ensure_writable_dir
from icl_cmr.files.reading import (iter_jsonl, load_json, load_npy, load_npz, load_pickle, load_torch, read_text,
                                   to_numpy)


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
    with pytest.raises(InputError, match="cannot be made: .* is a file"):
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
    with pytest.raises(InputError, match="not valid JSON"):
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


# ----------------------------------------------------------------------------- text and JSON that is not what it claims

def test_a_binary_file_read_as_text_names_the_byte_offset_and_line(tmp_path):
    (tmp_path / "heads.txt").write_bytes(b"L0H1\nL1\xff\xfeH2\n")
    with pytest.raises(CorruptFileError, match=r"heads\.txt: not UTF-8 text: byte 0xff at offset 7 \(line 2\)"):
        read_text(tmp_path / "heads.txt")


def test_text_with_nul_bytes_is_refused_as_binary(tmp_path):
    (tmp_path / "doc.txt").write_bytes(b"abc\n\x00\x00\x00")
    with pytest.raises(CorruptFileError, match=r"NUL byte at offset 4 \(line 2\)"):
        read_text(tmp_path / "doc.txt")


def test_a_utf8_byte_order_mark_is_dropped(tmp_path):
    (tmp_path / "pool.json").write_bytes("\ufeff[1, 2]".encode("utf-8"))
    assert load_json(tmp_path / "pool.json") == [1, 2]


def test_invalid_json_names_the_file_line_and_column(tmp_path):
    (tmp_path / "spec.json").write_text('{\n  "a": 1,\n  "b": }\n')
    with pytest.raises(CorruptFileError, match=r"spec\.json: not valid JSON: Expecting value at line 3, column 8"):
        load_json(tmp_path / "spec.json")


def test_binary_json_is_refused_as_not_utf8(tmp_path):
    (tmp_path / "state.json").write_bytes(bytes(range(128, 256)))
    with pytest.raises(CorruptFileError, match=r"state\.json: not UTF-8 text: byte 0x80 at offset 0"):
        load_json(tmp_path / "state.json")


def test_jsonl_lines_are_streamed_with_their_numbers(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert list(iter_jsonl(tmp_path / "d.jsonl")) == [(1, {"text": "a"}), (3, {"text": "b"})]


@pytest.mark.parametrize("content, message", [
    (b'{"text": "a"}\n{"text": \xff}\n', r"line 2 is not UTF-8 text: byte 0xff at offset 23"),
    (b'{"text": "a"}\n{"text": "b"\n', r"line 2 is not valid JSON: Expecting ',' delimiter at column 13"),
])
def test_a_bad_jsonl_line_is_named(tmp_path, content, message):
    (tmp_path / "d.jsonl").write_bytes(content)
    with pytest.raises(CorruptFileError, match=message):
        list(iter_jsonl(tmp_path / "d.jsonl"))


# ----------------------------------------------------------------------------- .npz archives

def test_npz_round_trip(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(5), **{"icl/original": np.ones(3)})
    loaded = load_npz(tmp_path / "a.npz")
    assert list(loaded) == ["x", "icl/original"]
    np.testing.assert_array_equal(loaded["x"], np.arange(5))


def test_a_truncated_npz_is_corrupt(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(1000.0))
    raw = (tmp_path / "a.npz").read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 5):
        (tmp_path / "cut.npz").write_bytes(raw[:cut])
        with pytest.raises(CorruptFileError, match="cut.npz: truncated or corrupt"):
            load_npz(tmp_path / "cut.npz")


def test_a_damaged_npz_member_fails_its_checksum(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros(1000))
    raw = bytearray((tmp_path / "a.npz").read_bytes())
    raw[400] ^= 0xFF  # inside x's data: the archive still opens, the CRC does not match
    (tmp_path / "a.npz").write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="CRC"):
        load_npz(tmp_path / "a.npz")


# ----------------------------------------------------------------------------- allocation bombs, built by hand

def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _long(value):
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


HUGE = 10 ** 13  # elements: 9.1 TiB as int8


def test_a_pickle_reconstructing_a_huge_array_is_refused_before_allocating(tmp_path):
    # numpy._reconstruct(ndarray, (10**13,), b'b') allocates its shape; numpy itself always passes (0,).
    bomb = (b"\x80\x04" + _global("numpy._core.multiarray", "_reconstruct") + b"(" + _global("numpy", "ndarray")
            + b"(" + _long(HUGE) + b"tC\x01bt" + b"R.")
    (tmp_path / "bomb.pkl").write_bytes(bomb)
    with pytest.raises(CorruptFileError, match=r"bomb\.pkl: declares an array of shape \(10000000000000,\) and dtype "
                                               r"int8 \(9\.1 TiB\), more than a file of \d+ bytes can hold"):
        load_pickle(tmp_path / "bomb.pkl")


def test_an_array_state_declaring_a_huge_object_array_is_refused(tmp_path):
    # ndarray.__setstate__ allocates shape x 8 bytes for an object array before reading its list.
    real = pickle.dumps(np.array([None, None], dtype=object), protocol=4)
    assert real.count(b"K\x02\x85") == 1  # the state's shape (2,): BININT1 2, TUPLE1
    (tmp_path / "ok.pkl").write_bytes(real)
    assert load_pickle(tmp_path / "ok.pkl").shape == (2,)
    (tmp_path / "bomb.pkl").write_bytes(real.replace(b"K\x02\x85", _long(HUGE) + b"\x85"))
    with pytest.raises(CorruptFileError, match=r"shape \(10000000000000,\) and dtype object"):
        load_pickle(tmp_path / "bomb.pkl")


def test_a_joblib_array_wrapper_declaring_a_huge_array_is_refused(tmp_path):
    from joblib.numpy_pickle import NumpyArrayWrapper

    wrapper = NumpyArrayWrapper(np.ndarray, (HUGE,), "C", np.dtype(np.uint8))
    (tmp_path / "bomb.pkl").write_bytes(pickle.dumps(wrapper, protocol=4) + b"\x00" * 64)
    with pytest.raises(CorruptFileError, match=r"shape \(10000000000000,\) and dtype uint8"):
        load_pickle(tmp_path / "bomb.pkl")


@pytest.mark.parametrize("opcode", [b"\x95", b"\x8e"])  # FRAME, BINBYTES8
def test_a_pickle_length_field_larger_than_the_file_reads_as_truncated(tmp_path, opcode):
    (tmp_path / "bomb.pkl").write_bytes(b"\x80\x04" + opcode + struct.pack("<Q", HUGE) + b"x.")
    with pytest.raises(CorruptFileError, match="truncated or corrupt pickle"):
        load_pickle(tmp_path / "bomb.pkl")


def _legacy_storage_bytes(numel, element_count_header, storage_type=None):
    """A legacy ``torch.save`` stream declaring one storage of ``numel`` elements (no real data)."""
    import torch.serialization as ts

    marker = object()

    class Declaring(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", storage_type or torch.FloatStorage, "k0", "cpu", numel, None) if obj is marker else None

    main = io.BytesIO()
    Declaring(main, protocol=2).dump(marker)
    info = {"protocol_version": ts.PROTOCOL_VERSION, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return (pickle.dumps(ts.MAGIC_NUMBER, protocol=2) + pickle.dumps(ts.PROTOCOL_VERSION, protocol=2)
            + pickle.dumps(info, protocol=2) + main.getvalue() + pickle.dumps(["k0"], protocol=2)
            + struct.pack("<q", element_count_header) + b"\x00" * 16)


class _StorageFromBytes:
    """Pickles as ``torch.storage._load_from_bytes(payload)``, as torch storages do."""

    def __init__(self, payload):
        self.payload = payload

    def __reduce__(self):
        import torch.storage

        return torch.storage._load_from_bytes, (self.payload,)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_legacy_storage_builder_makes_loadable_storages():
    # the crafted stream is a real torch stream: with honest sizes torch loads it
    payload = _legacy_storage_bytes(4, 4)
    storage = torch.load(io.BytesIO(payload), weights_only=True)
    assert storage.size() == 4


@pytest.mark.parametrize("numel, header", [(HUGE, HUGE), (4, HUGE)])
def test_a_torch_storage_declaring_more_than_the_file_holds_is_refused(tmp_path, numel, header):
    payload = _legacy_storage_bytes(numel, header)
    (tmp_path / "bomb.pkl").write_bytes(pickle.dumps({"t": _StorageFromBytes(payload)}, protocol=4))
    with pytest.raises(CorruptFileError, match=r"bomb\.pkl: declares .*torch storage"):
        load_pickle(tmp_path / "bomb.pkl")


def test_a_tensor_view_far_larger_than_its_storage_is_refused(tmp_path):
    # stride 0 lets 10^13 elements view one float; any numeric use would materialise 36 TiB
    storage = torch.zeros(1).storage()

    class HugeViewOf:
        def __reduce__(self):
            import collections
            import torch._utils

            return torch._utils._rebuild_tensor_v2, (storage, 0, (HUGE,), (0,), False, collections.OrderedDict())

    (tmp_path / "bomb.pkl").write_bytes(pickle.dumps(HugeViewOf(), protocol=4))
    with pytest.raises(CorruptFileError, match=r"a tensor of shape \(10000000000000,\)"):
        load_pickle(tmp_path / "bomb.pkl")


def test_a_lazy_range_cannot_be_expanded_into_a_set(tmp_path):
    bomb = b"\x80\x04" + _global("builtins", "set") + b"(" + _global("builtins", "range") + b"(" + _long(HUGE) + b"tRtR."
    (tmp_path / "bomb.pkl").write_bytes(bomb)
    with pytest.raises(CorruptFileError, match="set of a range is not allowed"):
        load_pickle(tmp_path / "bomb.pkl")


def test_a_npy_header_declaring_more_than_the_file_holds_is_refused(tmp_path):
    from numpy.lib import format as npy_format

    with open(tmp_path / "bomb.npy", "wb") as handle:
        npy_format.write_array_header_1_0(handle, {"descr": "|u1", "fortran_order": False, "shape": (HUGE,)})
        handle.write(b"\x00" * 16)
    with pytest.raises(CorruptFileError, match=r"bomb\.npy: truncated or corrupt \.npy data: the header declares "
                                               r"shape \(10000000000000,\) uint8 \(9\.1 TiB\) but only 16 bytes follow"):
        load_npy(tmp_path / "bomb.npy")


def test_a_npz_member_declaring_more_than_the_archive_holds_is_refused(tmp_path):
    from numpy.lib import format as npy_format

    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (HUGE,)})
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as archive:
        archive.writestr("x.npy", header.getvalue() + b"\x00" * 64)
    with pytest.raises(CorruptFileError, match=r"member x\.npy.*shape \(10000000000000,\) float64"):
        load_npz(tmp_path / "bomb.npz")


def test_the_size_bound_is_a_multiple_of_the_file_size():
    from icl_cmr.files.unpickling import MAX_DECODED_BYTES_PER_FILE_BYTE, DeclaredSizeError, ReadBudget

    budget = ReadBudget(1000, memory=10 ** 12)
    budget.claim(MAX_DECODED_BYTES_PER_FILE_BYTE * 1000, "everything")
    with pytest.raises(DeclaredSizeError, match="more than a file of 1000 bytes can hold"):
        budget.claim(1, "one byte more")


def test_arrays_beyond_the_available_memory_are_refused_in_one_line():
    from icl_cmr.files.unpickling import AvailableMemoryError, ReadBudget

    with pytest.raises(AvailableMemoryError, match="needs 2.0 KiB of memory for its arrays, but only 1000 bytes"):
        ReadBudget(10 ** 6, memory=1000).claim(2048, "an array")


# ----------------------------------------------------------------------------- tensors saved on a GPU

def _pickle_as_if_saved_on_cuda(obj, monkeypatch):
    """Pickle ``obj`` with every torch storage tagged ``cuda:0``, as a GPU machine writes it."""
    import torch.serialization

    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        return pickle.dumps(obj, protocol=4)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tensors_saved_on_a_gpu_load_onto_the_cpu(tmp_path, monkeypatch):
    values = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
    raw = _pickle_as_if_saved_on_cuda({"head_scores": values}, monkeypatch)
    assert b"cuda:0" in raw
    if not torch.cuda.is_available():  # the crafted file really needs a GPU without map_location
        with pytest.raises(RuntimeError, match="CUDA"):
            pickle.loads(raw)
    (tmp_path / "gpu.pkl").write_bytes(raw)
    loaded = load_pickle(tmp_path / "gpu.pkl")["head_scores"]
    assert loaded.device.type == "cpu"
    assert torch.equal(loaded, values)


def test_a_checkpoint_saved_on_a_gpu_loads_onto_the_cpu(tmp_path, monkeypatch):
    import torch.serialization

    values = {"model": {"w": torch.linspace(0, 1, 5)}, "step": 3}
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(values, tmp_path / "ckpt.pt")
    loaded = load_torch(tmp_path / "ckpt.pt")
    assert loaded["step"] == 3 and loaded["model"]["w"].device.type == "cpu"
    assert torch.equal(loaded["model"]["w"], values["model"]["w"])


# ----------------------------------------------------------------------------- torch checkpoints

def test_a_checkpoint_round_trips(tmp_path):
    torch.save({"model": {"w": torch.ones(2, 3)}, "config": {"d": 4}}, tmp_path / "m.pt")
    loaded = load_torch(tmp_path / "m.pt")
    assert loaded["config"] == {"d": 4} and torch.equal(loaded["model"]["w"], torch.ones(2, 3))


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": _CallsSystem(f"touch {marker}")}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileError) as caught:
        load_torch(tmp_path / "evil.pt")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'evil.pt'}: refused: ") and "system" in message
    assert "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", bytes(range(256)) * 4])
def test_a_file_that_is_not_a_checkpoint_is_corrupt(tmp_path, content):
    (tmp_path / "m.pt").write_bytes(content)
    with pytest.raises(CorruptFileError, match=r"m\.pt: "):
        load_torch(tmp_path / "m.pt")


def test_a_truncated_checkpoint_is_corrupt(tmp_path):
    torch.save({"w": torch.ones(100)}, tmp_path / "m.pt")
    raw = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError):
        load_torch(tmp_path / "m.pt")


def test_a_checkpoint_whose_zip_records_declare_more_than_the_file_is_refused(tmp_path):
    torch.save({"w": torch.ones(4)}, tmp_path / "m.pt")
    raw = bytearray((tmp_path / "m.pt").read_bytes())
    with zipfile.ZipFile(tmp_path / "m.pt") as archive:
        name = next(info.filename for info in archive.infolist() if info.filename.endswith("data/0"))
    # rewrite the central-directory uncompressed size of the data record to 2**31 bytes
    position = raw.find(b"PK\x01\x02")
    while position >= 0:
        name_length = struct.unpack_from("<H", raw, position + 28)[0]
        if raw[position + 46:position + 46 + name_length].decode() == name:
            struct.pack_into("<I", raw, position + 24, 2 ** 31)
            break
        position = raw.find(b"PK\x01\x02", position + 4)
    assert position >= 0
    (tmp_path / "m.pt").write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="zip records declare"):
        load_torch(tmp_path / "m.pt")


def test_a_jsonl_line_with_nul_bytes_is_refused_as_binary(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "a"}\n\x00\x01\x02\n')
    with pytest.raises(CorruptFileError, match=r"line 2 is not text: NUL byte at offset 14"):
        list(iter_jsonl(tmp_path / "d.jsonl"))
