"""The one place where engine parameter names become command-line flags.

Engine code raises :class:`~icl_cmr.errors.InputError` with messages in parameter names
(``late_index (600) is beyond ...) and lists those names in ``err.parameters``. A script
runs its engine calls inside :func:`flag_errors`, which rewrites each listed name, as a
whole word, into the flag that sets it (``--late-index (600) is beyond ...), so a notebook
user reads the parameters they passed and a command-line user the flags they typed.
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Dict, Iterator, Mapping, Optional

from icl_cmr.errors import InputError


def parser_flags(parser: argparse.ArgumentParser) -> Dict[str, str]:
    """``{dest: flag}`` for every option of ``parser``: its longest ``--`` spelling.

    Parameters
    ----------
    parser : argparse.ArgumentParser

    Returns
    -------
    dict of str -> str
        E.g. ``{"late_index": "--late-index", "n_top": "--n_top"}``.
    """
    flags: Dict[str, str] = {}
    for action in parser._actions:  # argparse keeps no public list of its actions
        long = [option for option in action.option_strings if option.startswith("--")]
        if long and action.dest not in flags:
            flags[action.dest] = long[0]
    return flags


def in_flags(message: str, parameters, flags: Mapping[str, str]) -> str:
    """``message`` with each backticked name of ``parameters`` that ``flags`` maps replaced by its flag.

    Examples
    --------
    >>> in_flags("`late_index` 600 is beyond seq_len", ("late_index",), {"late_index": "--late-index"})
    '--late-index 600 is beyond seq_len'
    """
    for name in parameters:
        if name in flags:
            message = message.replace(f"`{name}`", flags[name])
    return message


@contextmanager
def flag_errors(parser: Optional[argparse.ArgumentParser] = None, **renames: str) -> Iterator[None]:
    """Rewrite the parameter names of an :class:`InputError` raised inside into the script's flags.

    Parameters
    ----------
    parser : argparse.ArgumentParser, optional
        Its options give ``dest -> flag`` (:func:`parser_flags`).
    **renames : str
        Parameters whose flag has another name, e.g. ``n_prompts="--n-eval"``, or that no
        parser option sets.

    Examples
    --------
    >>> with flag_errors(parser):           # doctest: +SKIP
    ...     run_ablation(settings)
    """
    try:
        yield
    except InputError as err:
        if err.parameters:
            flags = {**(parser_flags(parser) if parser is not None else {}), **renames}
            err.args = (in_flags(str(err), err.parameters, flags),) + err.args[1:]
        raise
