"""Safe saving and loading of results: atomic writes, metadata, restricted unpickling.

Every output of the project goes through this module:

* writes are atomic (temporary file in the target folder, ``fsync``, ``os.replace``),
  so an interrupted run never leaves a half-written file under the final name;
* every output carries metadata (:func:`make_metadata`): what produced it, its
  parameters, the seed and package versions;
* pickles, ours and the authors' joblib pickles, are read by
  :class:`RestrictedUnpickler`, which admits only plain containers, numpy arrays
  and torch tensors. Anything else (``os.system``, ``builtins.eval``, ...) is
  refused with :class:`~icl_cmr.errors.InputError`.
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
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np
from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler

from .errors import InputError

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
    folder = ensure_writable_dir(target.parent)
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            # mkstemp creates the file 0600; give it the permissions a plain open() would.
            os.fchmod(handle.fileno(), 0o666 & ~_current_umask())
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as err:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass  # already gone, or the folder refuses even that: report the first error
        os_error = _write_os_error(err) if isinstance(err, Exception) else None
        if os_error is None:
            raise
        raise OSError(os_error.errno, _os_error_reason(os_error), str(target)) from err
    return target


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


def save_json(path: "str | os.PathLike[str]", obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars and arrays converted)."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default)
    return atomic_write(path, lambda handle: handle.write((text + "\n").encode("utf-8")))


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


# ----------------------------------------------------------------------------- loading

def _safe_load_from_bytes(data: bytes) -> Any:
    """Replacement for ``torch.storage._load_from_bytes`` that never runs arbitrary code."""
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


class _NoObjectArrayWrapper(NumpyArrayWrapper):
    """joblib array wrapper that refuses arrays of Python objects (nested pickles)."""

    def read_array(self, unpickler, ensure_native_byte_order):  # noqa: D102 - joblib API
        if self.dtype.hasobject:
            raise pickle.UnpicklingError("object arrays are not allowed")
        return super().read_array(unpickler, ensure_native_byte_order)


def _allowed_globals() -> Dict[tuple, Any]:
    import collections

    table: Dict[tuple, Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("builtins", "complex"): complex,
        ("builtins", "range"): range,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("joblib.numpy_pickle", "NumpyArrayWrapper"): _NoObjectArrayWrapper,
    }
    from numpy._core import multiarray as _multiarray  # numpy >= 2; numpy 1.x pickles say numpy.core

    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(core, "_reconstruct")] = _multiarray._reconstruct
        table[(core, "scalar")] = _multiarray.scalar
    return table


def _numpy_dtype_class(module: str, name: str) -> Optional[Any]:
    """numpy >= 2 pickles dtypes as ``numpy.dtypes.Float64DType`` etc.: allow exactly those."""
    if module != "numpy.dtypes":
        return None
    import numpy.dtypes as dtypes

    candidate = getattr(dtypes, name, None)
    if isinstance(candidate, type) and issubclass(candidate, np.dtype):
        return candidate
    return None


def _torch_global(module: str, name: str) -> Optional[Any]:
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
        import torch._utils

        return getattr(torch._utils, name)
    if module == "torch.storage" and name == "_load_from_bytes":
        return _safe_load_from_bytes
    if module == "torch" and name == "Size":
        import torch

        return torch.Size
    return None


class RestrictedUnpickler(NumpyUnpickler):
    """joblib/pickle reader that admits only containers, numpy arrays and torch tensors.

    It reads plain pickles and uncompressed joblib pickles alike (joblib's
    unpickler is a superset of pickle's). Torch storages are rebuilt by
    ``torch.load(..., weights_only=True)`` instead of the unrestricted loader
    that ``torch.storage._load_from_bytes`` would call.
    """

    def __init__(self, filename: str, file_handle: Any):
        super().__init__(filename, file_handle, ensure_native_byte_order=True, mmap_mode=None)
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle API
        found = self._allowed.get((module, name))
        if found is None:
            found = _numpy_dtype_class(module, name) or _torch_global(module, name)
        if found is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return found


#: First bytes of compressed joblib files, which we do not read.
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"ZF", b"BZh", b"\xfd7zXZ", b"\x5d\x00\x00", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18")


def load_pickle(path: "str | os.PathLike[str]") -> Any:
    """Load a pickle (ours or the authors' joblib files) through :class:`RestrictedUnpickler`.

    Parameters
    ----------
    path : path-like
        File to read.

    Returns
    -------
    object
        Usually a dict of numpy arrays / torch tensors / plain values.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    InputError
        If the file is truncated, corrupt, compressed, or references anything
        other than containers, numpy arrays and torch tensors.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(6)
        if any(head.startswith(magic) for magic in _COMPRESSED_MAGIC):
            raise InputError(f"{path} is a compressed joblib file; only uncompressed pickles are supported")
        handle.seek(0)
        try:
            return RestrictedUnpickler(str(path), handle).load()
        except pickle.UnpicklingError as err:
            raise InputError(f"cannot load {path}: {err}") from None
        except (EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError, RuntimeError) as err:
            raise InputError(f"cannot load {path}: truncated or corrupt pickle ({type(err).__name__})") from None


def load_npy(path: "str | os.PathLike[str]", expected_shape: Optional[tuple] = None) -> np.ndarray:
    """Load a ``.npy`` array without pickled objects, optionally checking its shape.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    InputError
        If the file is truncated or corrupt, or its shape differs from ``expected_shape``.
    """
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"cannot load {path}: truncated or corrupt .npy file ({err})") from None
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise InputError(f"{path} has shape {tuple(array.shape)}, expected {tuple(expected_shape)}")
    return array


def load_json(path: "str | os.PathLike[str]") -> Any:
    """Read a JSON file; a corrupt file raises :class:`InputError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"cannot parse {path}: {err}") from None


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor or array-like as a numpy array (the authors mix both in one dict)."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)
