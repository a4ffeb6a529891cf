"""Reading inputs safely: one reader per kind of file, which names the file and what is wrong with it.

:func:`read_text` (UTF-8 text), :func:`load_json`, :func:`iter_jsonl`, :func:`load_npy`,
:func:`load_npz`, :func:`load_pickle` and :func:`load_torch` raise the errors of
:mod:`icl_cmr.errors` (``CorruptFileError``, ``UnsafeFileError``). Pickles, ours and the authors'
joblib pickles, are read by :class:`~icl_cmr.files.unpickling.RestrictedUnpickler`, which admits
only plain containers, numpy arrays and torch tensors (loaded onto the CPU) and refuses arrays
larger than the file can hold before allocating them. Anything else (``os.system``,
``builtins.eval``, ...) is refused with :class:`~icl_cmr.errors.UnsafeFileError`.

What a file holds (keys, dtypes, shapes) is checked by the format readers built on these:
:mod:`icl_cmr.files.scores` (head scores, CMR grids) and :mod:`icl_cmr.files.results` (fits,
ablation results, top-head selections).
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
import struct
import zipfile
import zlib
from typing import Any, BinaryIO, Dict, Iterator, Optional, Tuple

import numpy as np

from icl_cmr.errors import CorruptFileError, FileContentError, InputError, UnsafeFileError
from icl_cmr.files.unpickling import (AvailableMemoryError, BoundedReader, DeclaredSizeError, ReadBudget,
                                      RefusedGlobalError, RestrictedUnpickler, check_torch_archive, declared_nbytes,
                                      human_bytes, weights_only_reason)

#: Version of this package, recorded in every output's metadata.

# ----------------------------------------------------------------------------- reading text and JSON

def _position(data: bytes, offset: int) -> str:
    """``"offset N (line L)"`` of a byte offset."""
    line = data.count(b"\n", 0, offset) + 1
    return f"offset {offset} (line {line})"


def decode_text(data: bytes, path: "str | os.PathLike[str]") -> str:
    """UTF-8 bytes of ``path`` as text (a leading byte-order mark dropped).

    Raises
    ------
    CorruptFileError
        If the bytes are not UTF-8, or hold a NUL character (binary data).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorruptFileError(path, f"not UTF-8 text: byte 0x{data[err.start]:02x} at {_position(data, err.start)} "
                                     "cannot be decoded (a binary file?)") from None
    nul = text.find("\0")
    if nul >= 0:
        offset = len(text[:nul].encode("utf-8"))
        raise CorruptFileError(path, f"not text: NUL byte at {_position(data, offset)} (a binary file?)")
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: "str | os.PathLike[str]") -> str:
    """Read a UTF-8 text file; the one reader for every text input (head lists, documents, CSV, JSON).

    Raises
    ------
    FileNotFoundError, IsADirectoryError, PermissionError
        As ``open`` does (scripts report them in one line).
    CorruptFileError
        Not UTF-8, or binary (NUL bytes); the message gives the byte offset and line.
    """
    path = Path(path)
    return decode_text(path.read_bytes(), path)


def parse_json(text: str, path: "str | os.PathLike[str]") -> Any:
    """``json.loads(text)``; invalid JSON raises :class:`CorruptFileError` naming ``path``, line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CorruptFileError(path, f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except RecursionError:
        raise CorruptFileError(path, "not usable JSON: nested too deeply") from None


def load_json(path: "str | os.PathLike[str]") -> Any:
    """Read a JSON file (UTF-8).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    CorruptFileError
        Not UTF-8, or not valid JSON (with line and column).
    """
    path = Path(path)
    return parse_json(read_text(path), path)


def iter_jsonl(path: "str | os.PathLike[str]") -> Iterator[Tuple[int, Any]]:
    """``(line number, value)`` of every non-blank line of a JSON Lines file, streamed.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    CorruptFileError
        At the first line that is not UTF-8 or holds a NUL byte (with its byte offset), or is not
        valid JSON (with its column).
    """
    path = Path(path)
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise CorruptFileError(path, f"line {number} is not UTF-8 text: byte 0x{raw[err.start]:02x} at offset "
                                             f"{offset + err.start} cannot be decoded (a binary file?)") from None
            nul = raw.find(b"\0")
            if nul >= 0:
                raise CorruptFileError(path, f"line {number} is not text: NUL byte at offset {offset + nul} "
                                             "(a binary file?)")
            offset += len(raw)
            if number == 1 and line.startswith("\ufeff"):
                line = line[1:]
            if not line.strip():
                continue
            try:
                yield number, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                raise CorruptFileError(path, f"line {number} is not valid JSON: {err.msg} at column {err.colno}") from None
            except RecursionError:
                raise CorruptFileError(path, f"line {number} is not usable JSON: nested too deeply") from None


# ----------------------------------------------------------------------------- reading arrays

def _file_size(handle: BinaryIO) -> int:
    return os.fstat(handle.fileno()).st_size


def _refuse(path: Path, err: Exception) -> InputError:
    """The error to raise for a size refusal of the read budget."""
    if isinstance(err, AvailableMemoryError):
        return InputError(f"{path}: {err}")
    return CorruptFileError(path, str(err))


def _read_npy_header(handle: Any, path: "str | os.PathLike[str]") -> Tuple[Tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, read without touching the data."""
    from numpy.lib import format as npy_format

    try:
        version = npy_format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(handle)
        else:
            shape, _, dtype = npy_format._read_array_header(handle, version)  # 3.0: UTF-8 field names
    except (ValueError, EOFError, OSError, SyntaxError, TypeError, AttributeError) as err:
        raise CorruptFileError(path, f"truncated or corrupt .npy data (not a valid header: {str(err).splitlines()[0]})") \
            from None
    return shape, dtype


def _check_npy_data(path: Path, shape: Tuple[int, ...], dtype: np.dtype, data_bytes: int,
                    budget: ReadBudget, member: str = "") -> None:
    where = f" (member {member})" if member else ""
    if dtype.hasobject:
        raise UnsafeFileError(path, f"holds an array of Python objects{where}, which is a pickle; refused "
                                    "(only numeric and string arrays are loaded)")
    _, _, nbytes = declared_nbytes(shape, dtype)
    if nbytes > data_bytes:
        raise CorruptFileError(path, f"truncated or corrupt .npy data{where}: the header declares shape {shape} "
                                     f"{dtype} ({human_bytes(nbytes)}) but only {human_bytes(data_bytes)} follow")
    try:
        budget.claim(nbytes, f"an array of shape {shape} and dtype {dtype}")
    except (DeclaredSizeError, AvailableMemoryError) as err:
        raise _refuse(path, err) from None


def load_npy(path: "str | os.PathLike[str]", expected_shape: Optional[tuple] = None) -> np.ndarray:
    """Load a ``.npy`` array without pickled objects, optionally checking its shape.

    The header's shape and dtype are checked against the bytes that follow before the
    array is allocated, so a 100-byte file declaring 10^13 elements is refused at once.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    CorruptFileError
        If the file is truncated or corrupt (or declares more data than it holds).
    UnsafeFileError
        If it holds Python objects.
    FileContentError
        If its shape differs from ``expected_shape``.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        size = _file_size(handle)
        shape, dtype = _read_npy_header(handle, path)
        _check_npy_data(path, shape, dtype, size - handle.tell(), ReadBudget(size))
        handle.seek(0)
        try:
            array = np.load(handle, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise CorruptFileError(path, f"truncated or corrupt .npy file ({str(err).splitlines()[0]})") from None
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise FileContentError(path, f"shape {tuple(array.shape)}, expected {tuple(expected_shape)}")
    return array


#: Largest ratio of uncompressed to compressed size that DEFLATE can reach (RFC 1951: 258-byte
#: matches coded in 2 bits, about 1032:1); a zip member declaring more is not a valid deflate stream.
_MAX_DEFLATE_RATIO = 1032


def load_npz(path: "str | os.PathLike[str]") -> Dict[str, np.ndarray]:
    """Load every array of a ``.npz`` archive (``numpy.savez``), without pickled objects.

    Each member's declared size is checked against the archive before it is allocated,
    and each member's CRC is verified as numpy reads it, so a truncated or damaged partial
    result raises :class:`CorruptFileError` instead of loading wrong numbers.

    Returns
    -------
    dict of str -> ndarray
        Keyed by member name without ``.npy``, in archive order.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    CorruptFileError
        Not a zip archive, truncated, a failed CRC, or a member that is not a valid ``.npy``.
    UnsafeFileError
        A member holding Python objects.
    """
    from numpy.lib import format as npy_format

    path = Path(path)
    arrays: Dict[str, np.ndarray] = {}
    with open(path, "rb") as handle:
        size = _file_size(handle)
        budget = ReadBudget(size)
        try:
            with zipfile.ZipFile(handle) as archive:
                for info in archive.infolist():
                    if not info.filename.endswith(".npy"):
                        raise CorruptFileError(path, f"member {info.filename!r} is not a .npy array")
                    stored_limit = size if info.compress_type == zipfile.ZIP_STORED else \
                        info.compress_size * _MAX_DEFLATE_RATIO
                    if info.file_size > stored_limit:
                        raise CorruptFileError(path, f"member {info.filename!r} declares {human_bytes(info.file_size)}, "
                                                     "more than the archive can hold (truncated or corrupt)")
                    with archive.open(info) as member:
                        shape, dtype = _read_npy_header(member, path)
                        _check_npy_data(path, shape, dtype, info.file_size - member.tell(), budget, info.filename)
                        member.seek(0)
                        array = npy_format.read_array(member, allow_pickle=False)
                        if member.read(1):
                            raise CorruptFileError(path, f"member {info.filename!r} has data after its array")
                    arrays[info.filename[:-len(".npy")]] = array
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError, zlib.error) as err:
            if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
                raise
            raise CorruptFileError(path, f"truncated or corrupt .npz archive ({str(err).splitlines()[0] if str(err) else type(err).__name__})") \
                from None
    return arrays


# ----------------------------------------------------------------------------- reading pickles and torch files

#: First bytes of compressed joblib files, which we do not read.
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"ZF", b"BZh", b"\xfd7zXZ", b"\x5d\x00\x00", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18")

#: What a damaged pickle or torch file raises somewhere in pickle, joblib, numpy or torch.
_DECODE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
                  RuntimeError, struct.error, zipfile.BadZipFile, RecursionError)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def load_pickle(path: "str | os.PathLike[str]") -> Any:
    """Load a pickle (ours or the authors' joblib files) through :class:`RestrictedUnpickler`.

    Parameters
    ----------
    path : path-like
        File to read.

    Returns
    -------
    object
        Usually a dict of numpy arrays / torch tensors (on the CPU, wherever they were saved)
        / plain values.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    CorruptFileError
        If the file is truncated, corrupt or compressed, or declares more array data than a
        file of its size can hold (:data:`icl_cmr.files.unpickling.MAX_DECODED_BYTES_PER_FILE_BYTE`).
    UnsafeFileError
        If it references anything other than containers, numpy arrays and torch tensors.
    InputError
        If its arrays would not fit in the memory available.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        size = _file_size(handle)
        head = handle.read(6)
        if any(head.startswith(magic) for magic in _COMPRESSED_MAGIC):
            raise CorruptFileError(path, "a compressed joblib file; only uncompressed pickles are supported "
                                         "(re-save it with joblib.dump(..., compress=0))")
        handle.seek(0)
        try:
            return RestrictedUnpickler(str(path), BoundedReader(handle, size), ReadBudget(size)).load()
        except RefusedGlobalError as err:
            raise UnsafeFileError(path, f"refused: {err}") from None
        except (DeclaredSizeError, AvailableMemoryError) as err:
            raise _refuse(path, err) from None
        except _DECODE_ERRORS as err:
            raise CorruptFileError(path, f"truncated or corrupt pickle ({_first_line(err)})") from None


def load_torch(path: "str | os.PathLike[str]") -> Any:
    """Load a ``torch.save`` file (a checkpoint) safely: weights only, onto the CPU, size-checked.

    Declared storage sizes are checked against the file before anything is allocated; then
    ``torch.load(weights_only=True, map_location="cpu")`` builds only tensors and plain
    containers, so a crafted file cannot run code, and GPU-saved tensors load without a GPU.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    CorruptFileError
        Not a torch file, truncated, or declaring more data than it holds.
    UnsafeFileError
        It holds objects ``weights_only`` refuses (code, arbitrary classes); the message names them.
    InputError
        Its tensors would not fit in the memory available.
    """
    import torch

    path = Path(path)
    with open(path, "rb") as handle:
        size = _file_size(handle)
        try:
            check_torch_archive(BoundedReader(handle, size), size, ReadBudget(size), "it")
        except (DeclaredSizeError, AvailableMemoryError) as err:
            raise _refuse(path, err) from None
        except _DECODE_ERRORS:
            raise CorruptFileError(path, "not a PyTorch file (truncated or corrupt)") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            raise UnsafeFileError(path, f"refused: {weights_only_reason(err)}; only tensors and plain containers "
                                        "are loaded (torch.load weights_only)") from None
        raise CorruptFileError(path, f"truncated or corrupt PyTorch file ({_first_line(err)})") from None
    except _DECODE_ERRORS as err:
        raise CorruptFileError(path, f"truncated or corrupt PyTorch file ({_first_line(err)})") from None


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor or array-like as a numpy array (the authors mix both in one dict)."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)
