"""The one exception type for bad user input.

Engine functions raise :class:`InputError` (a ``ValueError``) with a message that
names the bad argument and the accepted values; scripts turn it into a one-line
message and exit code 2 (see :func:`icl_cmr.cli.run_cli`).
"""
from __future__ import annotations


class InputError(ValueError):
    """Invalid parameters, missing or corrupt input files, unwritable outputs."""
