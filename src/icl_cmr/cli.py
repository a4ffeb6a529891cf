"""Shared plumbing for the thin scripts in ``src/``: logging setup and one-line errors.

Every script defines ``main(argv=None)`` and ends with
``raise SystemExit(run_cli(main))`` so that bad input gives one line on stderr
and exit code 2, never a traceback (set ``ICL_CMR_DEBUG=1`` to see it).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Optional, Sequence

from .errors import InputError

#: Exit status for bad input, as argparse uses for bad flags.
EXIT_BAD_INPUT = 2

#: Errors that come from the user's input or environment, not from a bug.
USER_ERRORS = (InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def setup_logging(verbose: bool = False) -> None:
    """Log INFO (or DEBUG) lines to stderr in a short ``level: message`` format."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
        force=True,
    )


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]],
            argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; turn user errors into one stderr line and exit code 2.

    Parameters
    ----------
    main : callable
        The script's ``main(argv)``; returns an exit code or None (success).
    argv : sequence of str, optional
        Arguments; ``None`` means ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 on bad input, or whatever ``main`` returned.
    """
    try:
        code = main(argv)
    except USER_ERRORS as err:
        if os.environ.get("ICL_CMR_DEBUG"):
            raise
        message = str(err) if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def unit_interval_float(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value
