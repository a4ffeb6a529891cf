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

import math
import numbers
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


def check_integer_setting(value, name: str, low: int, high: Optional[int] = None) -> None:
    """Refuse ``value`` unless it is an integer (not a bool) in ``[low, high]`` (no upper bound when ``high`` is None).

    Raises
    ------
    InputError
        ``"`seed` must be an integer >= 0, got -1"`` (or ``in [low, high]``), naming ``name``.
    """
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low
            or (high is not None and value > high)):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InputError(f"`{name}` must be an integer {span}, got {value!r}", parameters=(name,))


def check_non_negative_real_setting(value, name: str, zero_allowed: bool) -> None:
    """Refuse ``value`` unless it is a finite real number (not a bool) > 0, or >= 0 when ``zero_allowed``.

    Raises
    ------
    InputError
        ``"`threshold` must be a finite number > 0, got nan"``, naming ``name``.
    """
    finite = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not finite or value < 0 or (value == 0 and not zero_allowed):
        raise InputError(f"`{name}` must be a finite number {'>=' if zero_allowed else '>'} 0, got {value!r}",
                         parameters=(name,))
