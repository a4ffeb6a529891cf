"""Where outputs go and when they are written: checks before work, all-or-nothing writes, reruns that
leave unchanged files alone.

The rule every script follows (issue 17, item 10): validate every argument and input, and check that
every output folder can be written, *before* loading a model or computing; write outputs only when the
whole result is valid. This module holds the pieces for it:

* :func:`check_writable_dir`: can this folder be created or written? (creates nothing);
* :func:`check_writable_file`: can this output file be written? (not a folder, parent creatable);
* :func:`check_output_files`: can these output files of one run be written? (creates nothing);
* :class:`PendingWrites`: results (pickles, tables, JSON, arrays, rendered figures) collected in memory
  and written together at the end, all or nothing (every file to a temporary name first, then all
  renamed into place);
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

import errno
import io
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from icl_cmr.errors import InputError
from icl_cmr.files.folders import check_writable_dir, record_new_folders
from icl_cmr.files.reading import load_pickle, to_numpy
from icl_cmr.files.writing import atomic_write, json_bytes, write_temporary

logger = logging.getLogger(__name__)

#: The repository root (three folders above ``src/icl_cmr/files/outputs.py``); metadata paths are relative to it.
REPO_ROOT = Path(__file__).resolve().parents[3]

#: Metadata fields that describe a run rather than its result: a rerun may change them without the
#: result changing. They are ignored when a new output is compared with the saved one.
VOLATILE_METADATA_KEYS = frozenset({
    "created_utc", "git_commit", "versions", "wall_time_s", "wall_seconds", "wall_time_this_session_s",
    "compute_time_all_sessions_s",
    "resumed", "resumed_slices", "resumed_batches", "resumed_from_step", "peak_gpu_memory_gib",
})

#: Date fields matplotlib writes into every PDF.
_PDF_DATES = re.compile(rb"/(CreationDate|ModDate) \(D:[^)]*\)")


# ----------------------------------------------------------------------------- checks before work

@dataclass(frozen=True)
class _Pending:
    """One queued output: ``fill(handle)`` writes its bytes, or ``write(path)`` creates the file itself."""

    path: Path
    fill: Optional[Callable[[BinaryIO], Any]] = None
    write: Optional[Callable[[Path], Any]] = None


class PendingWrites:
    """Outputs collected in memory and written together, all or nothing, once the whole result is valid.

    Figures are rendered to PDF bytes when added (and closed), and JSON is serialised when added, so
    memory holds bytes, not figures, and a value JSON cannot hold fails before anything is written.
    :meth:`commit` writes the set in two phases, so that a failure leaves either the whole new set or
    none of it (with every earlier file as it was):

    1. check every target (not a folder; its folder writable or creatable; no two outputs with the
       same path), create the missing folders, and write every file to a hidden temporary name in its
       target folder (``.<name>.<random>.tmp``, synced to disk);
    2. only when all are written, rename them into place. Each file that a rename will replace is
       first hard-linked (or copied) aside, so that if a rename fails midway, the files already
       renamed get their earlier content back (or are removed when new) and the error says so.

    On any failure every temporary file and every folder the commit created is removed.
    """

    def __init__(self) -> None:
        self._writes: List[_Pending] = []

    def __len__(self) -> int:
        return len(self._writes)

    @property
    def paths(self) -> List[Path]:
        """Target paths in the order they were added."""
        return [item.path for item in self._writes]

    def add(self, path: "str | os.PathLike[str]", write: Callable[[Path], Any]) -> None:
        """Queue ``write(p)``, a function that creates the file ``p`` (e.g. ``lambda p: torch_save(p, obj)``).

        At commit it is called with a temporary name in the target's folder, which is renamed onto
        ``path`` with the rest of the set.
        """
        self._writes.append(_Pending(Path(path), write=write))

    def stream(self, path: "str | os.PathLike[str]", fill: Callable[[BinaryIO], Any]) -> None:
        """Queue ``fill(handle)``, a function that writes the file's bytes into a binary handle."""
        self._writes.append(_Pending(Path(path), fill=fill))

    def pickle(self, path: "str | os.PathLike[str]", obj: Any) -> None:
        """Queue a pickle (protocol 4, as :func:`icl_cmr.files.writing.save_pickle`)."""
        self.stream(path, lambda handle: pickle.dump(obj, handle, protocol=4))

    def text(self, path: "str | os.PathLike[str]", text: str) -> None:
        """Queue a UTF-8 text file."""
        self.data(path, text.encode("utf-8"))

    def json(self, path: "str | os.PathLike[str]", obj: Any, compact: bool = False) -> None:
        """Queue a JSON file (``compact``: no whitespace, see :func:`icl_cmr.files.writing.json_bytes`)."""

        self.data(path, json_bytes(obj, compact))

    def npy(self, path: "str | os.PathLike[str]", array: np.ndarray) -> None:
        """Queue one numpy array in ``.npy`` format (no pickled objects, as :func:`icl_cmr.files.writing.save_npy`)."""
        array = np.asarray(array)
        if array.dtype.hasobject:
            raise InputError(f"refusing to save an object array to {path}")
        self.stream(path, lambda handle: np.save(handle, array, allow_pickle=False))

    def data(self, path: "str | os.PathLike[str]", data: bytes) -> None:
        """Queue a file of ready bytes (e.g. a PDF page rendered elsewhere)."""
        data = bytes(data)
        self.stream(path, lambda handle: handle.write(data))

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
        self.data(path, buffer.getvalue())

    def commit(self) -> List[Path]:
        """Write every queued file, all or nothing (see the class docstring); return the paths written.

        Raises
        ------
        InputError
            A target is a folder, two outputs share a path, a folder cannot be created or written,
            or a rename failed midway (the message says what was restored).
        OSError
            Writing a temporary file failed (a full disk, ...), naming the target; nothing was
            renamed into place.
        """
        items = list(self._writes)
        check_output_files([item.path for item in items])
        created = _make_folders(dict.fromkeys(item.path.parent for item in items))
        temporaries: List[Path] = []
        try:
            for item in items:
                temporaries.append(_write_temporary(item))
        except BaseException:
            _discard(temporaries, created)
            raise
        _rename_into_place([item.path for item in items], temporaries, created)
        self._writes.clear()
        return [item.path for item in items]


def check_output_files(paths: Iterable["str | os.PathLike[str]"]) -> None:
    """Check output file paths before any work: none is a folder, their folders can be written or created,
    no two are the same file; create nothing (:meth:`PendingWrites.commit` runs the same checks first).

    Raises
    ------
    InputError
        Naming the first path that cannot be written.
    """
    paths = [Path(path) for path in paths]
    seen: Dict[str, Path] = {}
    for path in paths:
        key = os.path.normcase(os.path.abspath(path))
        if key in seen:
            raise InputError(f"two outputs of this run would be written to the same file {path}; nothing was written")
        seen[key] = path
        if path.is_dir():
            raise InputError(f"output {path} is a folder, not a file; nothing was written")
    for folder in dict.fromkeys(path.parent for path in paths):
        check_writable_dir(folder)


def _make_folders(folders: Iterable[Path]) -> List[Path]:
    """Create the missing folders (parents first); return those created, in creation order.

    Raises
    ------
    InputError
        When a folder cannot be created; the folders created before it are removed again.
    """
    created: List[Path] = []
    for folder in folders:
        missing = []
        probe = folder
        while not probe.exists() and probe.parent != probe:
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as err:
                _discard([], created)
                raise InputError(f"cannot create output folder {path}: {err.strerror or err}; nothing was "
                                 "written") from None
            created.append(path)
    record_new_folders(created)  # a run that fails later removes them again when they are empty
    return created


def _write_temporary(item: _Pending) -> Path:

    if item.fill is not None:
        return write_temporary(item.path, item.fill)
    # A writer that creates its file itself: give it a fresh name beside the target (mkstemp reserves it).
    placeholder = write_temporary(item.path, lambda handle: None)
    try:
        item.write(placeholder)
        if not placeholder.is_file():
            raise OSError(errno.ENOENT, "the writer did not create the file", str(item.path))
    except BaseException:
        _discard([placeholder], [])
        raise
    return placeholder


def _discard(temporaries: Sequence[Path], created_folders: Sequence[Path]) -> None:
    """Remove temporary files, then the folders a commit created (deepest first, only when empty)."""
    for path in temporaries:
        try:
            os.unlink(path)
        except OSError:
            pass  # already gone: nothing to clean
    for folder in reversed(created_folders):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (another process wrote there) or already gone: leave it


def _set_aside(path: Path) -> Optional[Path]:
    """A hidden hard link (or copy) of an existing file ``path`` beside it, or None when there is none."""
    if not os.path.lexists(path):
        return None
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent)
    os.close(fd)
    os.unlink(name)
    try:
        os.link(path, name, follow_symlinks=False)
    except OSError:  # a file system without hard links: copy instead
        shutil.copy2(path, name, follow_symlinks=False)
    return Path(name)


def _rename_into_place(targets: Sequence[Path], temporaries: Sequence[Path], created: Sequence[Path]) -> None:
    """Phase 2: set aside every file that will be replaced, then rename each temporary onto its target.

    If a rename fails (or the run is interrupted) midway, the targets already renamed get their
    earlier content back (new ones are removed) and the error says what could not be restored.
    """
    backups: Dict[Path, Optional[Path]] = {}
    try:
        for target in targets:
            backups[target] = _set_aside(target)
    except BaseException as err:
        _discard([b for b in backups.values() if b is not None] + list(temporaries), created)
        if isinstance(err, OSError):
            raise InputError(f"cannot keep a copy of {target} while replacing it: {err.strerror or err}; "
                             "nothing was written") from None
        raise
    renamed: List[Path] = []
    try:
        for target, temporary in zip(targets, temporaries):
            os.replace(temporary, target)
            renamed.append(target)
    except BaseException as err:
        failed = targets[len(renamed)]
        not_restored = _restore(renamed, backups)
        _discard(list(temporaries[len(renamed):]) + [b for b in backups.values() if b is not None and b.exists()],
                 created if not not_restored else [])
        done = (f"the {len(renamed)} output(s) already in place were restored to their earlier state"
                if not not_restored else
                f"could not restore {', '.join(map(str, not_restored))} (they hold this run's version)")
        if isinstance(err, OSError):
            raise InputError(f"cannot put {failed} in place: {err.strerror or err}; {done}") from None
        logger.warning("writing outputs interrupted at %s; %s", failed, done)
        raise
    for backup in backups.values():
        if backup is not None:
            try:
                os.unlink(backup)
            except OSError:
                logger.warning("could not remove the earlier version kept at %s", backup)


def _restore(renamed: Sequence[Path], backups: Mapping[Path, Optional[Path]]) -> List[Path]:
    """Undo the renames of ``renamed``; return the targets that could not be restored."""
    failed = []
    for target in reversed(renamed):
        backup = backups.get(target)
        try:
            if backup is None:
                os.unlink(target)
            else:
                os.replace(backup, target)
        except OSError:
            failed.append(target)
    return failed


def _write_bytes(path: Path, data: bytes) -> Path:

    return atomic_write(path, lambda handle: handle.write(data))


#: ``extra`` key of a log record that announces written files (:func:`log_written`).
OUTPUT_FILES_KEY = "output_files"


def log_written(log: logging.Logger, paths: Iterable["str | os.PathLike[str]"], detail: str = "") -> None:
    """Log ``wrote <paths><detail>`` at INFO, marked so that a caller running the script as a step can hold
    the line back (:class:`HoldWrittenLines`) and report what really changed instead."""
    paths = [Path(path) for path in paths]
    log.info("wrote %s%s", ", ".join(map(str, paths)), detail, extra={OUTPUT_FILES_KEY: paths})


class HoldWrittenLines(logging.Filter):
    """A logging filter that holds back the lines of :func:`log_written` and keeps their paths.

    ``run_pipeline.py`` attaches it to its steps' loggers: inside an :class:`OutputGuard` a step's
    "wrote X" would be wrong when the guard then keeps the earlier X (same result); the pipeline reports
    the guard's verdict instead.

    Attributes
    ----------
    paths : list of Path
        The files the held lines announced, in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.paths: List[Path] = []

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102 - logging API
        paths = getattr(record, OUTPUT_FILES_KEY, None)
        if paths is None:
            return True
        self.paths.extend(paths)
        return False


# ----------------------------------------------------------------------------- portable metadata

def searched_at(path: "str | os.PathLike[str]") -> str:
    """What a message about a missing input adds after its path: for a relative path, the absolute path it was looked
    for at, and, when the working directory is not the repository root (whose folders the defaults name), that root;
    nothing for an absolute path.

    Examples
    --------
    >>> searched_at("/data/grid.npy")
    ''
    """
    path = Path(path)
    if path.is_absolute():
        return ""
    elsewhere = ("" if Path.cwd().resolve() == REPO_ROOT else
                 f"; the default paths are relative to the repository root, {REPO_ROOT}")
    return f" (looked for at {Path.cwd() / path}{elsewhere})"


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
