"""The exception types for bad user input.

Engine functions raise :class:`InputError` (a ``ValueError``) with a message that
names the bad argument and the accepted values; scripts turn it into a one-line
message and exit code 2 (see :func:`icl_cmr.cli.args.run_cli`). The engine speaks in
parameters, between backticks (```late_index` (600) is beyond ...``), never in command-line
flags: an error lists the parameters its message names in :attr:`InputError.parameters`, and
the command-line layer (:func:`icl_cmr.cli.flags.flag_errors`) puts each script's flag in their place.

Files that exist but cannot be used raise a :class:`BadFileError` subclass, whose
message starts with the file's path:

* :class:`CorruptFileError`: the bytes cannot be decoded as the format promised:
  truncated, not UTF-8, invalid JSON / pickle / ``.npy`` / zip, or declaring more data
  than the file holds. A damaged partial result of an interrupted run raises this, so
  resume code can catch exactly it, discard the file and recompute.
* :class:`UnsafeFileError`: loading would run code (a pickle naming a function outside
  the allowed set, a checkpoint that ``torch.load(weights_only=True)`` refuses).
* :class:`FileContentError`: the file decodes but holds the wrong thing: missing keys,
  non-numeric arrays, shapes that disagree, values out of range.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence


class InputError(ValueError):
    """Invalid parameters, missing or corrupt input files, unwritable outputs.

    Parameters
    ----------
    message : str
        What is wrong and what is accepted, naming parameters by their Python names between
        backticks, e.g. ``"`late_index` (600) is beyond the last loss index 510"``.
    parameters : sequence of str, optional
        The parameter names the message uses, e.g. ``("late_index",)``: a script replaces each
        backticked name by its own flag, e.g. ``--late-index``.
    """

    def __init__(self, message: str = "", parameters: Sequence[str] = ()):
        super().__init__(message)
        self.parameters = tuple(parameters)


class BadFileError(InputError):
    """A file that exists but cannot be used; the message names it.

    Parameters
    ----------
    path : path-like
        The file.
    problem : str
        What is wrong, e.g. ``"is not UTF-8 text (byte 0xff at offset 12)"``.
    """

    def __init__(self, path: "str | os.PathLike[str]", problem: str):
        self.path: Optional[str] = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CorruptFileError(BadFileError):
    """Truncated, undecodable, or declaring more data than it holds."""


class UnsafeFileError(BadFileError):
    """Refused because loading it would run code."""


class FileContentError(BadFileError):
    """Decodes, but its keys, types, shapes or values are not what the reader needs."""
