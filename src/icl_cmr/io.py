"""Safe saving and loading of results: atomic writes, metadata, restricted unpickling.

Every output of the project goes through this module:

* writes are atomic (temporary file in the target folder, ``fsync``, ``os.replace``),
  so an interrupted run never leaves a half-written file under the final name;
* every output carries metadata (:func:`make_metadata`): what produced it, its
  parameters, the seed and package versions;
* every input is read by one reader per kind of file, which names the file and what is
  wrong with it (:mod:`icl_cmr.errors`: ``CorruptFileError``, ``UnsafeFileError``):
  :func:`read_text` (UTF-8 text), :func:`load_json`, :func:`iter_jsonl`, :func:`load_npy`,
  :func:`load_npz`, :func:`load_pickle` and :func:`load_torch`;
* pickles, ours and the authors' joblib pickles, are read by
  :class:`~icl_cmr.unpickling.RestrictedUnpickler`, which admits only plain containers,
  numpy arrays and torch tensors (loaded onto the CPU) and refuses arrays larger than the
  file can hold before allocating them. Anything else (``os.system``, ``builtins.eval``,
  ...) is refused with :class:`~icl_cmr.errors.UnsafeFileError`.

What a file holds (keys, dtypes, shapes) is checked by the format readers built on these:
:mod:`icl_cmr.score_files` (head scores, CMR grids) and :mod:`icl_cmr.result_files` (fits,
ablation results, top-head selections).
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import pickle
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
import struct
import zipfile
import zlib
from typing import Any, BinaryIO, Callable, Dict, Iterator, Mapping, NoReturn, Optional, Tuple

import numpy as np

from .errors import CorruptFileError, FileContentError, InputError, UnsafeFileError
from .unpickling import (AvailableMemoryError, BoundedReader, DeclaredSizeError, ReadBudget, RefusedGlobalError,
                         RestrictedUnpickler, check_torch_archive, declared_nbytes, human_bytes, weights_only_reason)

#: Version of this package, recorded in every output's metadata.
PACKAGE_VERSION = "0.1.0"


# ----------------------------------------------------------------------------- writing

def ensure_writable_dir(directory: "str | os.PathLike[str]") -> Path:
    """Create ``directory`` if needed and check that files can be written there.

    Raises
    ------
    InputError
        If the folder cannot be created or is not writable.
    """
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder {path}: {err.strerror or err}") from None
    if not path.is_dir():
        raise InputError(f"output path {path} exists and is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"output folder {path} is not writable")
    return path


def write_temporary(target: "str | os.PathLike[str]", write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write a new hidden temporary file beside ``target``, to be renamed onto it later.

    The first half of an atomic write (:func:`atomic_write`, :class:`icl_cmr.outputs.PendingWrites`):
    ``write(handle)`` fills ``.<name>.<random>.tmp`` in ``target``'s folder (which must exist), the
    data are flushed and synced, and the file gets the permissions a plain ``open()`` would give.

    Parameters
    ----------
    target : path-like
        The final file name; only its folder and name are used.
    write : callable
        Receives a binary file handle and writes the content.

    Returns
    -------
    Path
        The temporary file (the caller renames it onto ``target`` or removes it).

    Raises
    ------
    OSError
        When creating, writing or syncing fails, with ``filename`` set to ``target``, also when
        the writer reported the failure otherwise (torch raises RuntimeError). The temporary
        file is removed on every failure; other exceptions (and interrupts) pass through
        after the same clean-up.
    """
    target = Path(target)
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            # mkstemp creates the file 0600; give it the permissions a plain open() would.
            os.fchmod(handle.fileno(), 0o666 & ~_current_umask())
            os.fsync(handle.fileno())
    except BaseException as err:
        _fail_write(err, tmp_name, target)
    return Path(tmp_name)


def atomic_write(path: "str | os.PathLike[str]", write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write a file atomically: ``write(handle)`` fills a temp file that then replaces ``path``.

    Parameters
    ----------
    path : path-like
        Final file name. Its folder is created if missing.
    write : callable
        Receives a binary file handle and writes the content.

    Returns
    -------
    Path
        The final path.

    Raises
    ------
    OSError
        When creating, writing, syncing or renaming the file fails (a full disk, a
        read-only folder, ...), with ``filename`` set to ``path``, also when the writer
        reported the failure otherwise (torch raises RuntimeError). The temporary file is
        removed on every failure, and an existing file at ``path`` is left as it was.
    """
    target = Path(path)
    ensure_writable_dir(target.parent)
    tmp_name = write_temporary(target, write)
    try:
        os.replace(tmp_name, target)
    except BaseException as err:
        _fail_write(err, tmp_name, target)
    return target


def _fail_write(err: BaseException, tmp_name: "str | os.PathLike[str] | None", target: Path) -> NoReturn:
    """From inside ``except``: remove the temporary file, then raise ``err`` as an OSError naming ``target``
    (:func:`_as_write_error`), or re-raise it unchanged when it is not an OS error."""
    _remove_quietly(tmp_name)
    os_error = _as_write_error(err, target)
    if os_error is None:
        raise
    raise os_error from err


def _remove_quietly(path: "str | os.PathLike[str] | None") -> None:
    """Remove a temporary file; a failure here must not hide the error being reported."""
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass  # already gone, or the folder refuses even that: report the first error


def _as_write_error(err: BaseException, target: Path) -> Optional[OSError]:
    """An OSError naming ``target`` for a failed write, or None when ``err`` is not an OS error (re-raise it)."""
    os_error = _write_os_error(err) if isinstance(err, Exception) else None
    if os_error is None:
        return None
    return OSError(os_error.errno, _os_error_reason(os_error), str(target))


#: numpy's message for a short write to a real file (``ndarray.tofile``); it drops errno.
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")


def _write_os_error(err: Exception) -> Optional[OSError]:
    """The OSError behind a failed write: ``err`` itself, or the one torch.save wraps in a RuntimeError."""
    if isinstance(err, OSError):
        return err
    if isinstance(err, RuntimeError):
        for candidate in (err.__cause__, err.__context__):
            if isinstance(candidate, OSError):
                return candidate
    return None


def _os_error_reason(err: OSError) -> str:
    if err.strerror:
        return err.strerror
    short = _SHORT_WRITE.search(str(err))
    if short is not None:
        return f"wrote only {short.group(2)} of {short.group(1)} bytes (is the disk full?)"
    return str(err)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_pickle(path: "str | os.PathLike[str]", obj: Any) -> Path:
    """Pickle ``obj`` atomically (protocol 4, readable by joblib and plain pickle)."""
    return atomic_write(path, lambda handle: pickle.dump(obj, handle, protocol=4))


def save_npy(path: "str | os.PathLike[str]", array: np.ndarray) -> Path:
    """Save one numpy array atomically in ``.npy`` format (no pickled objects)."""
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise InputError(f"refusing to save an object array to {path}")
    return atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def json_bytes(obj: Any, compact: bool = False) -> bytes:
    """``obj`` as UTF-8 JSON ending in a newline (numpy scalars and arrays converted): indented, or
    ``compact`` (no whitespace; for large data files such as saved prompt sets).

    Raises
    ------
    TypeError
        If ``obj`` holds something JSON cannot represent.
    """
    layout = {"separators": (",", ":")} if compact else {"indent": 2}
    return (json.dumps(obj, sort_keys=False, default=_json_default, **layout) + "\n").encode("utf-8")


def save_json(path: "str | os.PathLike[str]", obj: Any, compact: bool = False) -> Path:
    """Write ``obj`` as JSON atomically (:func:`json_bytes`)."""
    data = json_bytes(obj, compact)
    return atomic_write(path, lambda handle: handle.write(data))


def save_text(path: "str | os.PathLike[str]", text: str) -> Path:
    """Write UTF-8 text atomically (CSV tables, logs)."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def save_figure(fig: Any, path: "str | os.PathLike[str]") -> Path:
    """Save a matplotlib figure as PDF atomically, then close it (the caller picks the backend)."""
    import matplotlib.pyplot as plt

    written = atomic_write(path, lambda handle: fig.savefig(handle, format="pdf"))
    plt.close(fig)
    return written


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ----------------------------------------------------------------------------- metadata

def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _installed_version(distribution: str) -> Optional[str]:
    """Installed version as a plain str (torch's own TorchVersion object would not unpickle safely)."""
    from importlib import metadata

    try:
        return str(metadata.version(distribution.replace("_", "-")))
    except metadata.PackageNotFoundError:
        return None


def package_versions() -> Dict[str, Optional[str]]:
    """Versions of the packages that shape our numbers (None when not importable)."""
    versions: Dict[str, Optional[str]] = {"python": platform.python_version(), "icl_cmr": PACKAGE_VERSION,
                                          "numpy": np.__version__}
    for name in ("scipy", "torch", "transformer_lens", "transformers", "pandas", "psifr"):
        module = sys.modules.get(name)
        versions[name] = _installed_version(name) if module is not None else None
    return versions


def make_metadata(producer: str, parameters: Mapping[str, Any], seed: Optional[int] = None,
                  **extra: Any) -> Dict[str, Any]:
    """Metadata stored with every output.

    Parameters
    ----------
    producer : str
        Script or function that made the output, e.g. ``"est_cmr_crp.py"``.
    parameters : mapping
        Every parameter that affects the numbers (JSON-serialisable values).
    seed : int, optional
        Base random seed.
    **extra
        Further fields (wall time, model name, ...).

    Returns
    -------
    dict
        ``producer``, ``parameters``, ``seed``, ``created_utc``, ``git_commit``,
        ``versions`` and the extra fields.
    """
    meta: Dict[str, Any] = {
        "producer": producer,
        "parameters": dict(parameters),
        "seed": seed,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "versions": package_versions(),
    }
    meta.update(extra)
    return meta


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
        file of its size can hold (:data:`icl_cmr.unpickling.MAX_DECODED_BYTES_PER_FILE_BYTE`).
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
