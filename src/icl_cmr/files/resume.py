"""Resumable runs: the one mechanism behind every long job that continues after an interruption.

A long run (the CMR grid's slices, an ablation's batches) keeps its finished pieces in a
hidden folder beside its final outputs, until those are whole:

* ``<folder>/<settings file>``: the fingerprint of the run, every setting that decides its
  numbers (JSON). It is written when the run starts and never changes.
* the pieces: files named by the run (``slice_00012.npy``, ``batch_000003.npz``), each written
  atomically, so a piece is either whole or absent.
* ``<folder>/elapsed.json``: seconds spent computing the pieces, summed over every session.

The same rules hold for every run, and :class:`RunFolder` is where they are written:

* the same settings: the run resumes, keeping each saved piece that passes the run's own check;
  a damaged piece (truncated, garbled, of the wrong shape) is discarded with a warning and
  computed again, so the final result equals an uninterrupted run's;
* other settings: refused, naming each setting that differs, before any work; ``restart``
  discards the saved pieces instead;
* a damaged settings file, or pieces without one: the saved pieces cannot be trusted, so they
  are discarded with a warning and the run starts over.

A training checkpoint is one file, not a folder of pieces, but it follows the same refusal
rule through :func:`refuse_other_settings`.
"""
from __future__ import annotations

import fnmatch
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, TypeVar

from icl_cmr.errors import BadFileError, FileContentError, InputError
from icl_cmr.files.folders import make_folders
from icl_cmr.files.reading import load_json
from icl_cmr.files.writing import save_json

logger = logging.getLogger(__name__)

Piece = TypeVar("Piece")

#: File of the summed computing time of a run's pieces.
ELAPSED_FILE = "elapsed.json"


def differing_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> List[str]:
    """Sorted keys whose values differ between a saved unfinished run's settings and this run's.

    A key present on one side only counts as differing.
    """
    return sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))


#: The way out of a refusal, for a saved unfinished run (resume it or discard it).
RESUME_REMEDY = "rerun with those settings to resume, or pass `restart` to discard it"

#: The way out of a refusal, for a finished output another run would replace.
REPLACE_REMEDY = "rerun with those settings, or pass `restart` to replace it"


def refuse_other_settings(saved: Mapping[str, Any], requested: Mapping[str, Any], where: "str | Path",
                          what: str = "the unfinished run", only_requested: bool = False,
                          remedy: str = RESUME_REMEDY) -> None:
    """Raise when a saved run's settings differ from the requested ones: the one refusal of every resumable run.

    Parameters
    ----------
    saved, requested : mapping
        Settings as JSON types (``requested`` is round-tripped through JSON before comparing).
    where : str or Path
        The folder or file holding the saved run, for the message.
    what : str
        What is saved there, e.g. ``"partial results"`` or ``"the checkpoint"``.
    only_requested : bool
        Compare only the keys of ``requested`` that ``saved`` has (a check made before every
        setting is known).
    remedy : str
        The end of the message: :data:`RESUME_REMEDY` (default) or :data:`REPLACE_REMEDY` for a finished output.

    Raises
    ------
    InputError
        ``<what> in <where> came from other settings (key: A there, B now; ...); rerun with
        those settings to resume, or pass restart to discard it``; its parameter is ``restart``.
    """
    requested = json.loads(json.dumps(dict(requested)))
    if only_requested:
        keys = [key for key in requested if key in saved and saved[key] != requested[key]]
    else:
        keys = differing_settings(saved, requested)
    if keys:
        changes = "; ".join(f"{key}: {saved.get(key, 'absent')} there, {requested.get(key, 'absent')} now"
                            for key in keys)
        raise InputError(f"{what} in {where} came from other settings ({changes}); {remedy}", parameters=("restart",))


class RunFolder:
    """The folder of one resumable run's finished pieces (see the module docstring for the rules).

    Parameters
    ----------
    folder : path-like
        Where the pieces go (created by :meth:`open`).
    settings : mapping
        Every setting that decides the numbers (JSON types); a saved run with other settings is
        never mixed in.
    piece_patterns : sequence of str
        Glob patterns of the run's piece files (``"slice_*.npy"``): with the settings and elapsed
        files, the only files :meth:`discard` removes.
    settings_file : str
        Name of the fingerprint file.
    what : str
        What the folder holds, for messages (``"partial results"``).
    piece : str
        What one piece is, for messages (``"slice"``, ``"batch"``).

    Examples
    --------
    >>> run = RunFolder(out / ".grid.partial", {"seed": 0}, ["slice_*.npy"])   # doctest: +SKIP
    >>> run.open(restart=False)                                               # doctest: +SKIP
    >>> done = run.verified_pieces("slice_*.npy", index_of, n, load, check)    # doctest: +SKIP
    """

    def __init__(self, folder: "str | Path", settings: Mapping[str, Any], piece_patterns: Sequence[str],
                 settings_file: str = "settings.json", what: str = "the unfinished run", piece: str = "piece"):
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(dict(settings)))
        self.piece_patterns = tuple(piece_patterns)
        self.settings_file = settings_file
        self.what = what
        self.piece = piece

    # ------------------------------------------------------------------ opening and checking

    def saved_settings(self) -> Optional[dict]:
        """The saved fingerprint, or None when there is none.

        Raises
        ------
        icl_cmr.errors.BadFileError
            When the settings file is damaged or holds no settings.
        """
        path = self.folder / self.settings_file
        if not path.is_file():
            return None
        saved = load_json(path)
        if not isinstance(saved, dict):
            raise FileContentError(path, f"holds a {type(saved).__name__}, not the settings of a run")
        return saved

    def check_settings(self, requested: Optional[Mapping[str, Any]] = None) -> None:
        """Refuse other saved settings, reading only: the check made before any model loads or work starts.

        Parameters
        ----------
        requested : mapping, optional
            The settings known so far (default: all of :attr:`settings`); only their keys are compared.
            A damaged settings file is left to :meth:`open`, which discards it with a warning.
        """
        try:
            saved = self.saved_settings()
        except BadFileError:
            return
        if saved is not None:
            refuse_other_settings(saved, self.settings if requested is None else requested, self.folder,
                                  self.what, only_requested=requested is not None)

    def open(self, restart: bool) -> None:
        """Prepare the folder: discard it on ``restart``, refuse other settings, write the fingerprint.

        Raises
        ------
        InputError
            If the folder holds a run with other settings.
        """
        if restart:
            self.discard()
        try:
            saved = self.saved_settings()
        except BadFileError as err:
            logger.warning("the settings file of the %s in %s is damaged (%s); discarding them and starting over",
                           self.what, self.folder, err.problem)
            self.discard()
            saved = None
        if saved is not None:
            refuse_other_settings(saved, self.settings, self.folder, self.what)
        elif self.piece_paths():
            logger.warning("discarding %d files in %s: their settings file is missing, so their settings are "
                           "unknown", len(self.piece_paths()), self.folder)
            self.discard()
        make_folders(self.folder)
        if saved is None:
            save_json(self.folder / self.settings_file, self.settings)

    # ------------------------------------------------------------------ pieces

    def path(self, name: str) -> Path:
        """The path of a piece."""
        return self.folder / name

    def piece_paths(self) -> List[Path]:
        """Every piece file there is (any pattern), sorted."""
        if not self.folder.is_dir():
            return []
        return sorted(path for path in self.folder.iterdir()
                      if any(fnmatch.fnmatch(path.name, pattern) for pattern in self.piece_patterns))

    def verified_pieces(self, pattern: str, index_of: Callable[[Path], Optional[int]], n_pieces: int,
                        load: Callable[[Path], Piece], problem: Callable[[int, Piece], Optional[str]]
                        ) -> Dict[int, Piece]:
        """Load every saved piece matching ``pattern``; keep those that pass the run's check.

        Parameters
        ----------
        pattern : str
            Glob of the pieces, e.g. ``"slice_*.npy"``.
        index_of : callable
            The piece index from its path, or None for a name that is not a piece.
        n_pieces : int
            Pieces of the whole run; an index outside ``0 .. n_pieces - 1`` is ignored with a warning.
        load : callable
            Reads a piece; may raise :class:`~icl_cmr.errors.InputError` (e.g. ``BadFileError``).
        problem : callable
            ``problem(index, piece)``: why the loaded piece cannot be this run's, or None.

        Returns
        -------
        dict of int -> piece
            The verified pieces by index. Damaged ones are deleted with a warning, to be recomputed.
        """
        done: Dict[int, Piece] = {}
        for path in self.piece_paths():
            if not fnmatch.fnmatch(path.name, pattern):
                continue
            index = index_of(path)
            if index is None:
                continue
            if not 0 <= index < n_pieces:
                logger.warning("ignoring %s: this run has %d %ss", path, n_pieces, self.piece)
                continue
            try:
                piece = load(path)
                reason = problem(index, piece)
            except BadFileError as err:  # truncated or garbled
                reason = err.problem
            except InputError as err:    # a sound file of the wrong shape
                reason = str(err)
            if reason is not None:
                logger.warning("discarding damaged %s %s (%s); it will be recomputed", self.piece, path, reason)
                path.unlink()
                continue
            done[index] = piece
        return done

    # ------------------------------------------------------------------ time

    def recorded_seconds(self) -> float:
        """Seconds spent on this run's pieces over every session so far (0 when unknown)."""
        path = self.folder / ELAPSED_FILE
        if not path.is_file():
            return 0.0
        try:
            value = load_json(path)
            return float(value["wall_seconds"]) if isinstance(value, dict) else 0.0
        except (BadFileError, KeyError, TypeError, ValueError):
            logger.warning("%s is damaged; the recorded time of earlier sessions is lost", path)
            return 0.0

    def record_seconds(self, total: float) -> None:
        """Write the total seconds spent so far (atomically)."""
        save_json(self.folder / ELAPSED_FILE, {"wall_seconds": float(total)})

    # ------------------------------------------------------------------ the end

    def discard_if_empty(self) -> None:
        """Remove the folder when it holds no finished piece: a run that failed (a full disk) or was stopped
        before finishing one leaves nothing behind, not a folder holding only its settings."""
        if self.folder.is_dir() and not self.piece_paths():
            self.discard()

    def discard(self, names: Iterable[str] = ()) -> None:
        """Remove the run's files (its pieces, settings and elapsed files, and ``names``) and the folder.

        Files the run did not write are left, and so is the folder then, with a warning.
        """
        if not self.folder.is_dir():
            return
        own = {self.settings_file, ELAPSED_FILE, *names}
        for path in self.folder.iterdir():
            if path.name in own or any(fnmatch.fnmatch(path.name, pattern) for pattern in self.piece_patterns):
                path.unlink()
        try:
            self.folder.rmdir()
        except OSError:
            logger.warning("left %s in place: it holds files this run did not write", self.folder)
