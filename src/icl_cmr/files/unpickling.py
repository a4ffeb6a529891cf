"""Restricted unpickling with a memory bound: what :func:`icl_cmr.files.reading.load_pickle` runs on a file.

A pickle is a program: loaded blindly it can call any function, and even a "data only"
pickle can declare an array of 10^13 elements in a few bytes, which numpy or torch then
try to allocate. :class:`RestrictedUnpickler` therefore

* resolves only the globals a result file needs (plain containers, numpy arrays and dtypes,
  torch tensors and storages, joblib's array wrapper); anything else is refused before it
  is called;
* counts the bytes of every array, tensor and storage the file declares **before** it is
  allocated, and refuses the file once the total exceeds what a well-formed file of its
  size can hold (:data:`MAX_DECODED_BYTES_PER_FILE_BYTE`) or the memory available now;
* reads through :class:`BoundedReader`, so a length field in the pickle stream (``FRAME``,
  ``BINBYTES8``, ...) can never make Python allocate more than the rest of the file;
* loads torch storages with ``torch.load(weights_only=True, map_location="cpu")``: no code
  runs, and tensors saved from a GPU load on a machine without one ([LI24]'s files were
  written on GPUs).

The same declared-size checks guard ``.pt`` files (:func:`check_torch_archive`), used by
:func:`icl_cmr.files.reading.load_torch`.
"""
from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Dict, Optional, Tuple

import numpy as np
from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler

#: Largest number of bytes of arrays a file may declare per byte of its own size.
#: Numeric data is stored raw in every format we read (numpy and joblib pickles, torch
#: storages, ``.npy``/``.npz``): 1 byte per byte. The densest well-formed case is an
#: object array, which holds one 8-byte pointer per element while each element costs at
#: least one pickle opcode byte (``NONE``): 8 bytes per byte. Twice that leaves room for
#: tensors that are views of one storage; a file declaring more cannot be well formed.
MAX_DECODED_BYTES_PER_FILE_BYTE = 16

#: numpy's maximum number of dimensions (``NPY_MAXDIMS`` in numpy 2).
_MAX_DIMS = 64

#: First bytes of a zip archive (``torch.save``'s default format since torch 1.6).
ZIP_MAGIC = b"PK\x03\x04"


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle names a function or class outside the allowed set (loading it would run code)."""


def weights_only_reason(err: BaseException) -> str:
    """The one informative line of torch's multi-paragraph ``weights_only`` refusal."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines[1:]:
        if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line:
            return line.rstrip(".")
    return "it holds objects other than tensors and plain containers"


class DeclaredSizeError(Exception):
    """A file declares more data than it can hold (truncated or crafted); raised before allocating."""


class AvailableMemoryError(Exception):
    """A file's arrays would not fit in the memory available now."""


def human_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover - loop always returns


def available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation now (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo", "rb") as handle:
            for line in handle:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


class ReadBudget:
    """Bytes of arrays one file may still declare.

    Parameters
    ----------
    file_size : int
        Size of the file in bytes; the budget is :data:`MAX_DECODED_BYTES_PER_FILE_BYTE` times it.
    memory : int, optional
        Memory available now; default :func:`available_memory`.
    """

    def __init__(self, file_size: int, memory: Optional[int] = None):
        self.file_size = int(file_size)
        self.limit = MAX_DECODED_BYTES_PER_FILE_BYTE * self.file_size
        self.memory = available_memory() if memory is None else memory
        self.used = 0

    def claim(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` more; raise before the caller allocates them when over the bound.

        Raises
        ------
        DeclaredSizeError
            If the total exceeds the bound for the file's size.
        AvailableMemoryError
            If the total exceeds the memory available.
        """
        self.used += int(nbytes)
        if self.used > self.limit:
            raise DeclaredSizeError(
                f"declares {what} ({human_bytes(nbytes)}), more than a file of {human_bytes(self.file_size)} "
                f"can hold (at most {MAX_DECODED_BYTES_PER_FILE_BYTE} x its size); it is truncated or not a "
                "valid file")
        if self.memory is not None and self.used > self.memory:
            raise AvailableMemoryError(
                f"needs {human_bytes(self.used)} of memory for its arrays, but only {human_bytes(self.memory)} "
                "is available")


def declared_nbytes(shape: Any, dtype: Any) -> Tuple[Tuple[int, ...], np.dtype, int]:
    """Validated (shape, dtype, bytes) of an array a file declares, computed without allocating.

    Raises
    ------
    pickle.UnpicklingError
        If the shape is not a short tuple of non-negative integers or the dtype is not a dtype.
    """
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if (not isinstance(shape, (tuple, list)) or len(shape) > _MAX_DIMS
            or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise pickle.UnpicklingError(f"an array shape must be a tuple of non-negative integers, got {shape!r:.80}")
    try:
        dtype = np.dtype(dtype)
    except (TypeError, ValueError):
        raise pickle.UnpicklingError(f"not an array dtype: {dtype!r:.80}") from None
    shape = tuple(int(n) for n in shape)
    return shape, dtype, math.prod(shape) * dtype.itemsize


def _describe_array(shape: Tuple[int, ...], dtype: Any) -> str:
    return f"an array of shape {shape} and dtype {dtype}"


class BoundedReader:
    """Read-only view of a binary file whose reads never ask for more than the rest of the file.

    ``file.read(n)`` allocates ``n`` bytes up front; a pickle length field of 10^13 would
    make that a 9 TiB allocation. Reads here are capped at the bytes left, so a bogus length
    only leads to a short read, which the unpickler reports as a truncated file.
    """

    def __init__(self, handle: BinaryIO, size: int):
        self._handle = handle
        self._size = int(size)
        self.name = getattr(handle, "name", "<stream>")

    def _left(self) -> int:
        return max(self._size - self._handle.tell(), 0)

    def read(self, n: int = -1) -> bytes:
        left = self._left()
        return self._handle.read(left if n is None or n < 0 else min(int(n), left))

    def readline(self, limit: int = -1) -> bytes:
        left = self._left()
        return self._handle.readline(left if limit is None or limit < 0 else min(int(limit), left))

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)
        return self._handle.readinto(view[: self._left()])

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)


# ----------------------------------------------------------------------------- torch payloads

class _Inert:
    """Stand-in for every object of a torch pickle while its declared storage sizes are read."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageType:
    """A torch storage class named in a pickle, with its element size."""

    def __init__(self, name: str, element_size: int):
        self.name, self.element_size = name, element_size


def _storage_element_size(name: str) -> int:
    """Element size of ``torch.<name>`` (``FloatStorage`` -> 4); 1 for untyped, 16 when unknown."""
    import torch

    if name == "UntypedStorage":
        return 1
    dtype = getattr(getattr(torch, name, None), "_dtype", None)  # ``.dtype`` warns that TypedStorage is deprecated
    return int(dtype.itemsize) if isinstance(dtype, torch.dtype) else 16


class _StorageDeclarationReader(pickle._Unpickler):
    """Reads a torch pickle without building anything, recording the storages it declares.

    Every global resolves to an inert placeholder (nothing runs); ``persistent_load``
    records ``("storage", type, key, location, numel, view)`` ids as torch writes them.
    """

    def __init__(self, file: Any):
        super().__init__(file)
        self.storages: Dict[Any, Tuple[int, int]] = {}  # key -> (element count, element size)

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle API
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name, _storage_element_size(name))
        return _Inert

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102 - pickle API
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage"):
            storage_type, key, numel = pid[1], pid[2], pid[4]
            if not isinstance(numel, int) or numel < 0:
                raise pickle.UnpicklingError(f"storage size must be a non-negative integer, got {numel!r:.40}")
            size = storage_type.element_size if isinstance(storage_type, _StorageType) else 16
            try:
                hash(key)
            except TypeError:
                raise pickle.UnpicklingError("storage key is not hashable") from None
            self.storages[key] = (numel, size)
        return _Inert()


def _check_legacy_torch(stream: Any, size: int, budget: ReadBudget, what: str) -> None:
    """Declared storages of a legacy ``torch.save`` stream (magic, version, info, object, keys, data).

    Each storage's bytes follow the pickles, preceded by its element count (int64), so the
    declared sizes must fit in the bytes after the pickles.
    """
    start = stream.tell()
    for _ in range(3):  # magic number, protocol version, system info
        _StorageDeclarationReader(stream).load()
    reader = _StorageDeclarationReader(stream)
    reader.load()
    keys = _StorageDeclarationReader(stream).load()
    if not isinstance(keys, list):
        raise pickle.UnpicklingError("the storage key list is missing")
    total = sum(numel * size for numel, size in reader.storages.values())
    budget.claim(total, f"{len(reader.storages)} torch storage(s) in {what}")
    data_left = size - (stream.tell() - start)
    if total + 8 * len(keys) > data_left:
        raise DeclaredSizeError(f"declares torch storages of {human_bytes(total)} in {what}, but only "
                                f"{human_bytes(max(data_left, 0))} of data follow; it is truncated or not a valid file")
    for key in keys:
        header = stream.read(8)
        if len(header) < 8:
            raise pickle.UnpicklingError("torch storage data ends early")
        (count,) = struct.unpack("<q", header)
        element_size = reader.storages[key][1] if key in reader.storages else 16
        if count < 0 or count * element_size > size - (stream.tell() - start):
            raise DeclaredSizeError(f"declares a torch storage of {count} elements in {what}, more than the "
                                    "file holds; it is truncated or not a valid file")
        stream.seek(count * element_size, 1)


def _check_zip_torch(stream: Any, size: int, budget: ReadBudget, what: str) -> None:
    """Declared record sizes of a zip ``torch.save`` archive: torch stores records uncompressed."""
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise pickle.UnpicklingError(f"not a valid zip archive ({err})") from None
    with archive:
        infos = archive.infolist()
    total = sum(info.file_size for info in infos)
    if any(info.file_size > size for info in infos) or total > size:
        raise DeclaredSizeError(f"its zip records declare {human_bytes(total)}, more than the "
                                f"{human_bytes(size)} archive can hold (torch stores them uncompressed); it is "
                                "truncated or not a valid file")
    budget.claim(total, f"{len(infos)} zip record(s) in {what}")


def check_torch_archive(stream: Any, size: int, budget: ReadBudget, what: str = "the torch data") -> None:
    """Refuse a ``torch.save`` stream whose declared storage sizes exceed ``size`` or ``budget``.

    Reads only the pickles and headers (nothing is built, no storage allocated) and leaves
    the stream where it started.

    Parameters
    ----------
    stream : binary file object, seekable
        Positioned at the start of the torch data.
    size : int
        Bytes of torch data from the current position.
    budget : ReadBudget
        Charged with the declared storage bytes.
    what : str
        Name for messages.

    Raises
    ------
    DeclaredSizeError, AvailableMemoryError
        Declared sizes too large for the data or the memory.
    pickle.UnpicklingError, EOFError, ValueError
        Not a torch stream (the caller reports it as corrupt).
    """
    start = stream.tell()
    try:
        head = stream.read(4)
        stream.seek(start)
        if head == ZIP_MAGIC:
            _check_zip_torch(stream, size, budget, what)
        else:
            _check_legacy_torch(stream, size, budget, what)
    finally:
        stream.seek(start)


# ----------------------------------------------------------------------------- the unpickler

class _NoObjectArrayWrapper(NumpyArrayWrapper):
    """joblib array wrapper that refuses arrays of Python objects and arrays larger than the budget."""

    def read_array(self, unpickler, ensure_native_byte_order):  # noqa: D102 - joblib API
        shape, dtype, nbytes = declared_nbytes(getattr(self, "shape", None), getattr(self, "dtype", None))
        if dtype.hasobject:
            raise pickle.UnpicklingError("object arrays are not allowed")
        if getattr(self, "order", "C") not in ("C", "F"):
            raise pickle.UnpicklingError(f"array order must be 'C' or 'F', got {self.order!r:.20}")
        self.shape, self.dtype = shape, dtype
        unpickler.budget.claim(nbytes, _describe_array(shape, dtype))
        return super().read_array(unpickler, ensure_native_byte_order)


def _materialised(value: Any, what: str) -> Any:
    """Refuse lazy iterables (``range(10**13)``) where a constructor would expand them."""
    if value is None or isinstance(value, (list, tuple, dict, set, frozenset)):
        return value
    raise pickle.UnpicklingError(f"{what} of a {type(value).__name__} is not allowed")


def _safe_set(items: Any = ()) -> set:
    return set(_materialised(items, "set"))


def _safe_frozenset(items: Any = ()) -> frozenset:
    return frozenset(_materialised(items, "frozenset"))


def _safe_ordered_dict(items: Any = None) -> "collections.OrderedDict":
    items = _materialised(items, "OrderedDict")
    return collections.OrderedDict(items if items is not None else ())


def _numpy_dtype_class(module: str, name: str) -> Optional[Any]:
    """numpy >= 2 pickles dtypes as ``numpy.dtypes.Float64DType`` etc.: allow exactly those."""
    if module != "numpy.dtypes":
        return None
    import numpy.dtypes as dtypes

    candidate = getattr(dtypes, name, None)
    if isinstance(candidate, type) and issubclass(candidate, np.dtype):
        return candidate
    return None


class RestrictedUnpickler(NumpyUnpickler):
    """joblib/pickle reader that admits only containers, numpy arrays and torch tensors, within a memory bound.

    It reads plain pickles and uncompressed joblib pickles alike (joblib's unpickler is a
    superset of pickle's). Torch storages are rebuilt by ``torch.load(..., weights_only=True,
    map_location="cpu")`` instead of the unrestricted loader that
    ``torch.storage._load_from_bytes`` would call.

    Parameters
    ----------
    filename : str
        For joblib's messages.
    file_handle : binary file
        Ideally a :class:`BoundedReader`.
    budget : ReadBudget
        Charged with every array, tensor and storage before it is allocated.

    Raises (from ``load``)
    ----------------------
    pickle.UnpicklingError
        A global outside the allowed set, or a malformed array declaration.
    DeclaredSizeError, AvailableMemoryError
        Arrays larger than the file can hold or than the memory available.
    """

    def __init__(self, filename: str, file_handle: Any, budget: ReadBudget):
        super().__init__(filename, file_handle, ensure_native_byte_order=True, mmap_mode=None)
        self.budget = budget
        self._allowed = self._allowed_globals()

    # -- globals

    def _allowed_globals(self) -> Dict[tuple, Any]:
        from numpy._core import multiarray as _multiarray  # numpy >= 2; numpy 1.x pickles say numpy.core

        table: Dict[tuple, Any] = {
            ("collections", "OrderedDict"): _safe_ordered_dict,
            ("builtins", "set"): _safe_set,
            ("builtins", "frozenset"): _safe_frozenset,
            ("builtins", "slice"): slice,
            ("builtins", "complex"): complex,
            ("builtins", "range"): range,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("joblib.numpy_pickle", "NumpyArrayWrapper"): _NoObjectArrayWrapper,
        }
        for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
            table[(core, "_reconstruct")] = self._reconstruct
            table[(core, "scalar")] = _multiarray.scalar
        return table

    def _torch_global(self, module: str, name: str) -> Optional[Any]:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild_tensor_v2 if name == "_rebuild_tensor_v2" else self._rebuild_tensor
        if module == "torch.storage" and name == "_load_from_bytes":
            return self._load_storage_from_bytes
        if module == "torch" and name == "Size":
            import torch

            return lambda sizes=(): torch.Size(_materialised(sizes, "torch.Size"))
        return None

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle API
        found = self._allowed.get((module, name))
        if found is None:
            found = _numpy_dtype_class(module, name) or self._torch_global(module, name)
        if found is None:
            raise RefusedGlobalError(f"it references {module}.{name}, which a data file may not contain "
                                     "(only containers, numpy arrays and torch tensors are loaded)")
        return found

    # -- numpy

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        """numpy's ``_reconstruct``, which allocates ``shape`` (numpy itself always passes ``(0,)``)."""
        from numpy._core import multiarray as _multiarray

        shape, dtype, nbytes = declared_nbytes(shape, dtype)
        self.budget.claim(nbytes, _describe_array(shape, dtype))
        return _multiarray._reconstruct(subtype, shape, dtype)

    def load_build(self) -> None:
        """``BUILD``: size-check ``ndarray.__setstate__`` (which allocates the declared shape) first."""
        if len(self.stack) >= 2 and isinstance(self.stack[-2], np.ndarray):
            state = self.stack[-1]
            if isinstance(state, tuple) and len(state) in (4, 5):
                shape, dtype, nbytes = declared_nbytes(state[-4], state[-3])
                self.budget.claim(nbytes, _describe_array(shape, dtype))
        NumpyUnpickler.load_build(self)

    dispatch = dict(NumpyUnpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build

    # -- torch

    def _load_storage_from_bytes(self, data: Any) -> Any:
        """Replacement for ``torch.storage._load_from_bytes``: size-checked, weights only, onto the CPU."""
        import torch

        if not isinstance(data, (bytes, bytearray)):
            raise pickle.UnpicklingError("a torch storage must be given as bytes")
        stream = io.BytesIO(bytes(data))
        check_torch_archive(stream, len(data), self.budget, "a torch storage")
        try:
            return torch.load(stream, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as err:
            if "weights only load failed" in str(err).lower():
                raise RefusedGlobalError(f"a torch storage in it: {weights_only_reason(err)}") from None
            raise

    def _check_tensor(self, storage: Any, size: Any) -> None:
        import torch

        dtype = getattr(storage, "dtype", None)
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError("a tensor must be built on a torch storage")
        shape, _, _ = declared_nbytes(tuple(size) if isinstance(size, (tuple, list)) else size, np.uint8)
        # A view can be far larger than its storage (stride 0); any numeric use materialises it.
        self.budget.claim(math.prod(shape) * dtype.itemsize, f"a tensor of shape {shape} and dtype {dtype}")

    def _rebuild_tensor_v2(self, storage: Any, storage_offset: Any, size: Any, stride: Any, *args: Any) -> Any:
        import torch._utils

        self._check_tensor(storage, size)
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, *args)

    def _rebuild_tensor(self, storage: Any, storage_offset: Any, size: Any, stride: Any) -> Any:
        import torch._utils

        self._check_tensor(storage, size)
        return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)
