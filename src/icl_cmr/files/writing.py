"""Writing results: atomic writes and the metadata every output carries.

* writes are atomic (temporary file in the target folder, ``fsync``, ``os.replace``),
  so an interrupted run never leaves a half-written file under the final name;
* every output carries metadata (:func:`make_metadata`): what produced it, its
  parameters, the seed and package versions.

All-or-nothing groups of outputs are :class:`icl_cmr.files.outputs.PendingWrites`; reading is
:mod:`icl_cmr.files.reading`.
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
from typing import Any, Callable, Dict, Mapping, NoReturn, Optional

import numpy as np

from icl_cmr.errors import InputError
from icl_cmr.files.folders import ensure_writable_dir

#: Version of this package, recorded in every output's metadata.
PACKAGE_VERSION = "0.1.0"


# ----------------------------------------------------------------------------- writing

def write_temporary(target: "str | os.PathLike[str]", write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write a new hidden temporary file beside ``target``, to be renamed onto it later.

    The first half of an atomic write (:func:`atomic_write`, :class:`icl_cmr.files.outputs.PendingWrites`):
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
