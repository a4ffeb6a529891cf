"""Output folders and files, checked before any work: the one writable-folder check of the project.

Permission bits do not tell whether a file can be created (root passes ``os.access`` on ``/sys``
and on read-only mounts), so every check here creates and removes a hidden empty file in the
nearest existing folder (:func:`check_writable_dir`), and leaves nothing behind.
:func:`ensure_writable_dir` is the same check followed by creating the folder, for code that is
about to write into it. Folders are created through :func:`make_folders`, which records them, so that
a run that fails leaves no empty folder behind (:func:`removing_new_folders_on_failure`; ``run_cli`` runs
every script inside it).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from icl_cmr.errors import InputError


def _named(flag: str) -> Tuple[str, ...]:
    """The parameter a backticked ``flag`` names, for :attr:`InputError.parameters`."""
    return (flag.strip("`"),) if flag.startswith("`") and flag.endswith("`") else ()


def check_writable_dir(directory: "str | os.PathLike[str]", flag: str = "") -> Path:
    """Check that ``directory`` exists and is writable, or could be created; leave nothing behind.

    The nearest existing folder is tested by creating and removing a hidden empty file in it, since
    permission bits do not tell (root passes ``os.access`` on ``/sys`` and read-only mounts).

    Parameters
    ----------
    directory : path-like
        An output folder.
    flag : str
        What named it, for the message: a script's flag (``"--figs-dir"``), or in engine code a
        parameter between backticks (``"`figs_dir`"``), which the script's
        :func:`~icl_cmr.cli.flags.flag_errors` turns into its flag.

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
    existing = _nearest_existing(path)
    if existing.exists() and not existing.is_dir():
        raise InputError(f"output folder {named} cannot be made: {existing} is a file", parameters=_named(flag))
    # Probed, not os.access: it says no to a read-only file system without saying why ("permission denied").
    reason = _probe_write(existing)
    if reason is not None:
        what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise InputError(f"output folder {named} {what} ({reason})", parameters=_named(flag))
    return path


def _probe_write(folder: Path) -> Optional[str]:
    """Why a file cannot be created in ``folder`` (created and removed at once to find out), or None."""
    try:
        handle, name = tempfile.mkstemp(prefix=".icl_cmr_probe_", dir=folder)
    except OSError as err:
        return (err.strerror or str(err)).lower()
    os.close(handle)
    try:
        os.unlink(name)
    except OSError:
        pass  # a file we could create but not remove: the folder is writable all the same
    return None


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (the folder a new path would be created under)."""
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    return existing


def check_writable_file(path: "str | os.PathLike[str]", flag: str = "") -> Path:
    """Check that an output *file* path can be written, before any work; return it as a Path.

    Refused: an empty name, a name ending in a path separator or naming ``.``/``..``, an existing
    folder or non-regular file (a device such as ``/dev/null`` would be replaced by the atomic
    rename), a parent that is a file, and a folder in which no file can be created. The last is
    probed by creating and removing a hidden temporary file in the nearest existing folder: as
    root, ``os.access`` says yes to ``/proc`` and ``/sys``, where creating a file fails.

    Parameters
    ----------
    path : str or path-like
        The output file as the user gave it (a ``str`` keeps a trailing ``/`` that ``Path`` drops).
    flag : str
        What named it, for the message (see :func:`check_writable_dir`).

    Returns
    -------
    Path

    Raises
    ------
    InputError
        One line naming the flag, the path and what is wrong.
    """
    text = os.fspath(path)
    named = f"{flag} {text!r}" if flag else repr(text)
    if not text.strip():
        raise InputError(f"{flag or 'output file'} is empty; give a file name", parameters=_named(flag))
    target = Path(text)
    if text.endswith(("/", os.sep)) or target.name in ("", ".", ".."):
        raise InputError(f"{named} names a folder; give a file name", parameters=_named(flag))
    if target.is_dir():
        raise InputError(f"{named} is an existing folder; give a file name", parameters=_named(flag))
    if target.exists() and not target.is_file():
        raise InputError(f"{named} exists and is not a regular file (a device, pipe or socket)",
                         parameters=_named(flag))
    existing = _nearest_existing(target.parent if str(target.parent) else Path("."))
    if not existing.is_dir():
        raise InputError(f"{named} cannot be written: {existing} is a file, not a folder", parameters=_named(flag))
    reason = _probe_write(existing)
    if reason is not None:
        raise InputError(f"{named} cannot be written: no file can be created in {existing} ({reason})",
                         parameters=_named(flag))
    return target



def ensure_writable_dir(directory: "str | os.PathLike[str]", flag: str = "") -> Path:
    """Create ``directory`` (and its parents) after :func:`check_writable_dir` found it writable.

    Raises
    ------
    InputError
        As :func:`check_writable_dir`, or when the folder cannot be created.
    """
    path = check_writable_dir(directory, flag)
    try:
        make_folders(path)
    except OSError as err:
        raise InputError(f"{flag + ' ' if flag else ''}cannot create output folder {path}: {err.strerror or err}",
                         parameters=_named(flag)) from None
    return path


# ----------------------------------------------------------------------------- folders a failed run leaves

#: The folders :func:`make_folders` created in each open :func:`removing_new_folders_on_failure` block.
_scopes: List[List[Path]] = []


def make_folders(directory: "str | os.PathLike[str]") -> List[Path]:
    """``mkdir -p directory``; return the folders it created, parents first, and record them for the open
    :func:`removing_new_folders_on_failure` blocks.

    Raises
    ------
    OSError
        As :meth:`pathlib.Path.mkdir`; the folders created before the failure stay recorded.
    """
    path = Path(directory)
    missing = []
    probe = path
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    created = []
    try:
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            created.append(folder)
    finally:
        for scope in _scopes:
            scope.extend(created)
    return created


def record_new_folders(folders: "List[Path]") -> None:
    """Record folders created elsewhere (:class:`~icl_cmr.files.outputs.PendingWrites`) as :func:`make_folders` does."""
    for scope in _scopes:
        scope.extend(Path(folder) for folder in folders)


def remove_empty_folders(folders: "List[Path]") -> None:
    """Remove those of ``folders`` that are empty, deepest first (a folder with files stays, quietly)."""
    for folder in sorted(set(folders), key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (it holds this run's resumable progress, or another process wrote there) or gone


@contextmanager
def removing_new_folders_on_failure() -> Iterator[List[Path]]:
    """Run a block; if it raises (or is interrupted), remove the folders created inside it that are still empty.

    A run that fails on a full disk would otherwise leave the output folders it made, empty. Folders
    that hold files (a resumable run's saved progress) stay.

    Yields
    ------
    list of Path
        The folders created so far.
    """
    created: List[Path] = []
    _scopes.append(created)
    try:
        yield created
    except BaseException:
        remove_empty_folders(created)
        raise
    finally:
        # By identity: two scopes that created nothing hold equal (empty) lists.
        del _scopes[next(i for i, scope in enumerate(_scopes) if scope is created)]
