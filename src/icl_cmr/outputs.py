"""Where outputs go and when they are written: checks before work, all-or-nothing writes, reruns that
leave unchanged files alone.

The rule every script follows (issue 17, item 10): validate every argument and input, and check that
every output folder can be written, *before* loading a model or computing; write outputs only when the
whole result is valid. This module holds the pieces for it:

* :func:`check_writable_dir`: can this folder be created or written? (creates nothing);
* :class:`PendingWrites`: results (pickles, tables, JSON, rendered figures) collected in memory and
  written together at the end, each file atomically;
* :func:`portable_path`: how a path is stored in metadata (relative to the repository root, so
  shipped files carry no machine paths);
* :func:`same_result` and :class:`OutputGuard`: a rerun whose numbers equal the saved files' leaves
  those files untouched (only run-describing metadata such as timestamps, wall times, the git commit
  and package versions may differ), and a run that fails restores what was there before;
* :func:`pin_cpu_kernels`: PyTorch's CPU kernels pinned to AVX2 so that results do not depend on
  whether a CPU has AVX-512 (measured: the bundled model's attention CRP moves by up to 2e-8 between
  the two kernel sets, enough to rewrite every shipped file).
"""
from __future__ import annotations

import io
import json
import logging
import os
import pickle
import platform
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError

logger = logging.getLogger(__name__)

#: The repository root (``src/icl_cmr/outputs.py`` -> two levels up); metadata paths are relative to it.
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Metadata fields that describe a run rather than its result: a rerun may change them without the
#: result changing. They are ignored when a new output is compared with the saved one.
VOLATILE_METADATA_KEYS = frozenset({
    "created_utc", "git_commit", "versions", "wall_time_s", "wall_seconds", "wall_time_this_session_s",
    "resumed", "resumed_slices", "resumed_batches", "resumed_from_step", "peak_gpu_memory_gib",
})

#: torch CPU kernel set used for reproducible numbers (see :func:`pin_cpu_kernels`).
PINNED_CPU_CAPABILITY = "avx2"

#: Date fields matplotlib writes into every PDF.
_PDF_DATES = re.compile(rb"/(CreationDate|ModDate) \(D:[^)]*\)")


# ----------------------------------------------------------------------------- checks before work

def check_writable_dir(directory: "str | os.PathLike[str]", flag: str = "") -> Path:
    """Check that ``directory`` exists and is writable, or could be created; create nothing.

    Parameters
    ----------
    directory : path-like
        An output folder.
    flag : str
        The command-line flag that named it, for the message (e.g. ``"--figs-dir"``).

    Returns
    -------
    Path

    Raises
    ------
    InputError
        If the path (or the nearest existing folder above it) is a file or is not writable.
    """
    path = Path(directory)
    named = f"{flag} {path}" if flag else str(path)
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"output folder {named} cannot be made: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise InputError(f"output folder {named} {what}")
    return path


class PendingWrites:
    """Outputs collected in memory and written together once the whole result is known to be valid.

    Figures are rendered to PDF bytes when added (and closed), so memory holds bytes, not figures.
    :meth:`commit` checks every target folder first, then writes each file atomically
    (:func:`icl_cmr.io.atomic_write`).
    """

    def __init__(self) -> None:
        self._writes: List[Tuple[Path, Callable[[Path], Path]]] = []

    def __len__(self) -> int:
        return len(self._writes)

    @property
    def paths(self) -> List[Path]:
        """Target paths in the order they were added."""
        return [path for path, _ in self._writes]

    def add(self, path: "str | os.PathLike[str]", write: Callable[[Path], Path]) -> None:
        """Queue ``write(path)`` (e.g. ``lambda p: save_pickle(p, obj)``)."""
        self._writes.append((Path(path), write))

    def pickle(self, path: "str | os.PathLike[str]", obj: Any) -> None:
        """Queue a pickle (protocol 4, as :func:`icl_cmr.io.save_pickle`)."""
        from .io import save_pickle

        self.add(path, lambda p: save_pickle(p, obj))

    def text(self, path: "str | os.PathLike[str]", text: str) -> None:
        """Queue a UTF-8 text file."""
        from .io import save_text

        self.add(path, lambda p: save_text(p, text))

    def json(self, path: "str | os.PathLike[str]", obj: Any, compact: bool = False) -> None:
        """Queue a JSON file (``compact``: no whitespace, see :func:`icl_cmr.io.save_json`)."""
        from .io import save_json

        self.add(path, lambda p: save_json(p, obj, compact=compact))

    def data(self, path: "str | os.PathLike[str]", data: bytes) -> None:
        """Queue a file of ready bytes (e.g. a PDF page rendered elsewhere)."""
        data = bytes(data)
        self.add(path, lambda p: _write_bytes(p, data))

    def figures(self, folder: "str | os.PathLike[str]", figures: Mapping[str, Any]) -> None:
        """Render and queue ``{file name: figure}`` into ``folder`` (:meth:`figure` for each)."""
        for name, fig in figures.items():
            self.figure(Path(folder) / name, fig)

    def figure(self, path: "str | os.PathLike[str]", fig: Any) -> None:
        """Render a matplotlib figure to PDF bytes now (then close it) and queue the bytes."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        try:
            fig.savefig(buffer, format="pdf")
        finally:
            plt.close(fig)
        data = buffer.getvalue()
        self.add(path, lambda p: _write_bytes(p, data))

    def commit(self) -> List[Path]:
        """Check every target folder, then write every queued file; return the paths written."""
        for folder in dict.fromkeys(path.parent for path, _ in self._writes):
            check_writable_dir(folder)
        written = [write(path) for path, write in self._writes]
        self._writes.clear()
        return written


def _write_bytes(path: Path, data: bytes) -> Path:
    from .io import atomic_write

    return atomic_write(path, lambda handle: handle.write(data))


# ----------------------------------------------------------------------------- portable metadata

def portable_path(path: "str | os.PathLike[str] | None", root: "str | os.PathLike[str] | None" = None) -> Optional[str]:
    """A path as stored in metadata: no machine-specific prefix.

    Parameters
    ----------
    path : path-like or None
    root : path-like, optional
        The repository root (default :data:`REPO_ROOT`).

    Returns
    -------
    str or None
        POSIX path relative to ``root`` when ``path`` lies inside it (``saved_models/toy_lm``);
        ``~/...`` when it lies in the user's home folder; else the absolute path. None stays None.
    """
    if path is None:
        return None
    root = Path(root) if root is not None else REPO_ROOT
    absolute = Path(os.path.abspath(Path(path).expanduser()))
    for base, prefix in ((Path(os.path.abspath(root)), ""), (Path(os.path.abspath(Path.home())), "~/")):
        try:
            relative = absolute.relative_to(base)
        except ValueError:
            continue
        text = relative.as_posix()
        return (prefix + text) if prefix else (text or ".")
    return absolute.as_posix()


def portable_paths_in(value: Any, keys: Iterable[str], root: "str | os.PathLike[str] | None" = None) -> Any:
    """A copy of a metadata structure whose values under ``keys`` (at any depth) are portable paths.

    String values are converted; lists of strings element-wise; ``file:`` prefixes are kept.
    Used to repair files written before paths were stored portably.
    """
    keys = set(keys)

    def convert(text: str) -> str:
        prefix = "file:" if text.startswith("file:") else ""
        body = text[len(prefix):]
        return prefix + portable_path(body, root) if os.path.isabs(body) else text

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, item in node.items():
                if key in keys and isinstance(item, str):
                    out[key] = convert(item)
                elif key in keys and isinstance(item, list) and all(isinstance(v, str) for v in item):
                    out[key] = [convert(v) for v in item]
                else:
                    out[key] = walk(item)
            return out
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(value)


# ----------------------------------------------------------------------------- reproducible numbers

def pin_cpu_kernels() -> Optional[str]:
    """Pin PyTorch's CPU kernels to AVX2 on x86-64 (unless ``ATEN_CPU_CAPABILITY`` is already set).

    PyTorch picks vectorised kernels by the CPU's instruction set the first time a kernel runs;
    AVX-512 and AVX2 kernels round reductions differently. Measured on the bundled model:
    the attention CRP differs by up to 2.0e-8 between them, and the shipped files were made with
    AVX2, which every x86-64 CPU of the last decade has. Call before the first tensor operation.

    Returns
    -------
    str or None
        The kernel set in effect (``torch.backends.cpu.get_cpu_capability()``), or None on other
        architectures. When torch already ran kernels the pin cannot take effect; a debug line says so.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    os.environ.setdefault("ATEN_CPU_CAPABILITY", PINNED_CPU_CAPABILITY)
    import torch

    capability = str(torch.backends.cpu.get_cpu_capability())
    if capability.lower() != os.environ["ATEN_CPU_CAPABILITY"].lower():
        logger.debug("torch CPU kernels are %s (ATEN_CPU_CAPABILITY=%s could not apply: kernels already chosen "
                     "or not supported); results may differ from the shipped files in the last digits",
                     capability, os.environ["ATEN_CPU_CAPABILITY"])
    return capability


# ----------------------------------------------------------------------------- reruns that change nothing

def _without_volatile(value: Any) -> Any:
    """``value`` with the run-describing fields of every metadata dict (one with a ``producer``) dropped."""
    if isinstance(value, Mapping):
        is_metadata = "producer" in value
        return {key: _without_volatile(item) for key, item in value.items()
                if not (is_metadata and key in VOLATILE_METADATA_KEYS)}
    if isinstance(value, (list, tuple)):
        return [_without_volatile(item) for item in value]
    return value


def _equal(a: Any, b: Any) -> bool:
    """Exact equality of nested containers of arrays, tensors and plain values (NaN equals NaN)."""
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or set(a) != set(b):
            return False
        return all(_equal(a[key], b[key]) for key in a)
    if hasattr(a, "detach") or hasattr(b, "detach") or isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        from .io import to_numpy

        x, y = to_numpy(a), to_numpy(b)
        if x.shape != y.shape or x.dtype != y.dtype or type(a) is not type(b):
            return False
        return bool(np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return type(a) is type(b) and a == b


def same_result(old: "str | os.PathLike[str]", new: "str | os.PathLike[str]") -> bool:
    """Do two output files hold the same result, apart from run-describing metadata?

    ``.pkl``: equal content (arrays bit for bit) once :data:`VOLATILE_METADATA_KEYS` are dropped from
    every metadata dict; ``.json``: the same on the parsed JSON; ``.pdf``: equal bytes once
    matplotlib's creation date is removed; anything else: equal bytes. A file that cannot be read
    counts as different.
    """
    old, new = Path(old), Path(new)
    old_bytes, new_bytes = old.read_bytes(), new.read_bytes()
    if old_bytes == new_bytes:
        return True
    suffix = new.suffix.lower()
    if suffix == ".pdf":
        return _PDF_DATES.sub(b"", old_bytes) == _PDF_DATES.sub(b"", new_bytes)
    try:
        if suffix == ".json":
            return _equal(_without_volatile(json.loads(old_bytes)), _without_volatile(json.loads(new_bytes)))
        if suffix == ".pkl":
            from .io import load_pickle

            return _equal(_without_volatile(load_pickle(old)), _without_volatile(load_pickle(new)))
    except (InputError, ValueError, OSError, pickle.UnpicklingError):
        return False
    return False


class OutputGuard:
    """Keep a set of output files unchanged unless their result changed; undo everything on failure.

    On entry, every existing file matching ``patterns`` (glob patterns; hidden files and folders are
    never matched) is copied aside. On a normal exit, a file that was rewritten with the same result
    (:func:`same_result`) gets its old bytes back, so a rerun leaves a clean checkout; files whose
    result changed, and new files, stay. On an exception (or interrupt), every matched file gets its
    old bytes back and files that did not exist before are removed, then the exception propagates.

    Parameters
    ----------
    patterns : sequence of path-like
        E.g. ``saved_scores/toy_lm/*``, ``figs/ablation/ablation_experiment_toy_lm_*``.

    Attributes
    ----------
    unchanged, changed, created : list of Path
        After a normal exit: files kept as they were, files with a new result, new files.
    """

    def __init__(self, patterns: Sequence["str | os.PathLike[str]"]):
        self.patterns = [Path(p) for p in patterns]
        self.unchanged: List[Path] = []
        self.changed: List[Path] = []
        self.created: List[Path] = []
        self._saved: Dict[Path, Path] = {}
        self._scratch: Optional[str] = None

    def _matches(self) -> List[Path]:
        found = set()
        for pattern in self.patterns:
            for path in Path(pattern.parent).glob(pattern.name) if pattern.parent.is_dir() else ():
                if path.is_file() and not path.name.startswith("."):
                    found.add(path)
        return sorted(found)

    def __enter__(self) -> "OutputGuard":
        self._scratch = tempfile.mkdtemp(prefix="icl_cmr_outputs_")
        for index, path in enumerate(self._matches()):
            copy = Path(self._scratch) / f"{index:06d}{path.suffix}"
            shutil.copyfile(path, copy)
            self._saved[path] = copy
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._settle()
            else:
                self._undo()
        finally:
            shutil.rmtree(self._scratch, ignore_errors=True)
        return False

    def _settle(self) -> None:
        for path in self._matches():
            copy = self._saved.get(path)
            if copy is None:
                self.created.append(path)
            elif copy.read_bytes() == path.read_bytes():
                self.unchanged.append(path)
            elif same_result(copy, path):
                _write_bytes(path, copy.read_bytes())
                self.unchanged.append(path)
            else:
                self.changed.append(path)
        if self.unchanged:
            logger.info("unchanged (same result as the saved files, kept as they were): %s",
                        ", ".join(str(p) for p in self.unchanged))

    def _undo(self) -> None:
        for path in self._matches():
            if path not in self._saved:
                path.unlink()
        for path, copy in self._saved.items():
            if not path.is_file() or path.read_bytes() != copy.read_bytes():
                _write_bytes(path, copy.read_bytes())
        logger.warning("the run failed: outputs restored to their state before it")
