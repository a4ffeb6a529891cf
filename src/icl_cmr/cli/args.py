"""Shared plumbing for the thin scripts in ``src/``: the parser, argument types, logging, one-line errors.

Every script builds its parser with :class:`OneLineErrorParser`, gives every numeric
flag one of the types below, defines ``main(argv=None)`` and ends with
``raise SystemExit(run_cli(main))``. Bad input then gives one ``error: ... line on
stderr and exit code 2, never a usage block or a traceback (set ``ICL_CMR_DEBUG=1``
to see the traceback of an error ``run_cli`` caught).

Argument types (each a callable for ``add_argument(type=...)``; all reject nan and inf):

==========================  ==========================================
``positive_int``            integer >= 1 (counts, sizes)
``non_negative_int``        integer >= 0 (indices)
``seed_int``                integer in [0, 2**32 - 1]
``int_range(lo, hi)``       integer within bounds, e.g. ``int_range(2)``
``finite_float``            any finite number
``positive_float``          finite number > 0 (learning rates, thresholds)
``non_negative_float``      finite number >= 0 (time budgets)
``probability``             number in [0, 1]
``fraction``                number in (0, 1] (a share of heads)
``float_range(lo, hi)``     number within bounds, open or closed
``comma_list(item_type)``   ``"16,32,64"`` -> tuple of items, each once
``worker_count``            integer in [1, 4 x usable CPUs] (worker processes, threads)
``paired_count``            integer >= 2 (samples compared in pairs)
``str2bool``                ``true/false``, ``yes/no``, ``1/0``
``device_arg``              ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` that exists here
``plain_name``              a name used inside file names: no ``/``, ``\\``; not ``., ``..
==========================  ==========================================

List flags (``nargs="+"``) whose repeated values would be computed or counted twice take
``action=UniqueItems``: a repeated value is refused while parsing.
"""
from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import sys
from typing import Any, Callable, NoReturn, Optional, Sequence, Tuple, Union

from tqdm import tqdm

from icl_cmr.config import MIN_PAIRS
from icl_cmr.devices import WORKERS_PER_CPU, max_workers, usable_cpus, validate_device
from icl_cmr.errors import InputError
from icl_cmr.files.folders import removing_new_folders_on_failure

#: Exit status for bad input, as argparse uses for bad flags.
EXIT_BAD_INPUT = 2

#: Errors that come from the user's input or environment, not from a bug. Every
#: ``OSError`` counts (missing files, permissions, a full disk, a read-only folder).
USER_ERRORS = (InputError, OSError)

#: Largest seed: 32 bits, the portable range (numpy's legacy ``RandomState`` takes no
#: more; ``torch.manual_seed`` fails with a traceback beyond 2**64 - 1), which leaves room
#: for the offsets scripts add (``seed + k``).
MAX_SEED = 2 ** 32 - 1

#: Plain words for the OS errors users meet when writing results.
_OS_ERROR_REASONS = {
    errno.ENOSPC: "no space left on device (the disk is full)",
    getattr(errno, "EDQUOT", -1): "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EIO: "input/output error (the disk or network file system failed)",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
}


# ----------------------------------------------------------------------------- the parser

#: The documentation page of each script (``docs/<experiment>.md``), named at the end of its ``--help``.
SCRIPT_DOCS = {
    "run_pipeline.py": "docs/pipeline.md",
    "paper_figures.py": "docs/paper_figures.md",
    "est_cmr_crp.py": "docs/cmr_grid.md",
    "compute_head_scores.py": "docs/head_scores.md",
    "fit_attn_score.py": "docs/fitting.md",
    "attn_over_size.py": "docs/fitting.md",
    "attn_over_size_xtra.py": "docs/fitting.md",
    "attn_over_time.py": "docs/fitting.md",
    "select_fit.py": "docs/fitting.md",
    "select_fit_xtra.py": "docs/fitting.md",
    "plot_crp.py": "docs/fitting.md",
    "fit_human_recall.py": "docs/human_recall.md",
    "ablation.py": "docs/ablation.md",
    "pattern_icl.py": "docs/pattern_icl.md",
    "train_induction.py": "docs/induction_task.md",
    "eval_induction.py": "docs/induction_task.md",
    "induction_growth.py": "docs/induction_task.md",
    "train_toy_lm.py": "docs/toy_lm.md",
    "sweep.py": "docs/sweep.md",
}


def docs_epilog(script: str) -> Optional[str]:
    """The ``--help`` epilog naming the doc page of ``script`` (a file name such as ``fit_attn_score.py``)."""
    doc = SCRIPT_DOCS.get(os.path.basename(script))
    return None if doc is None else f"Documentation: {doc} (flags, defaults and why, formats, measured numbers)."


class OneLineErrorParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line: ``error: <message> (see --help)``, exit 2.

    argparse itself prints the whole usage block before its message; the scripts promise
    one line for every kind of bad input. ``--help`` still prints the full help, ending with
    the script's documentation page (:data:`SCRIPT_DOCS`) unless an ``epilog`` is given.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.epilog is None:
            self.epilog = docs_epilog(self.prog)

    def error(self, message: str) -> NoReturn:  # noqa: D102 - argparse API
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see --help)\n")


# ----------------------------------------------------------------------------- flags that go together

def given_options(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> frozenset:
    """Destinations (``args`` attribute names) of the options named on the command line.

    argparse fills defaults only into attributes the namespace does not have yet; parsing into a
    namespace pre-filled with a marker leaves the marker exactly where no option was given.
    Call after ``parser.parse_args(argv)`` has accepted ``argv`` (this parses it again).
    """
    unset = object()
    namespace = argparse.Namespace(**{action.dest: unset for action in parser._actions
                                      if action.dest is not argparse.SUPPRESS})
    parsed = parser.parse_args(argv, namespace)
    return frozenset(dest for dest, value in vars(parsed).items() if value is not unset)


def option_name(parser: argparse.ArgumentParser, dest: str) -> str:
    """The ``--long`` spelling of the option stored in ``dest`` (for messages)."""
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
    return "--" + dest.replace("_", "-")


def ignored_options(parser: argparse.ArgumentParser, given: frozenset, dests: Sequence[str],
                    reason: str) -> Optional[str]:
    """``"--a, --b have no effect <reason>"`` for the options of ``dests`` that were given, or None."""
    named = [option_name(parser, dest) for dest in dests if dest in given]
    if not named:
        return None
    return f"{', '.join(named)} {'has' if len(named) == 1 else 'have'} no effect {reason}"


def refuse_options(parser: argparse.ArgumentParser, given: frozenset, dests: Sequence[str], reason: str) -> None:
    """One ``error:`` line (exit 2) when any option of ``dests`` was given: it would be ignored ``reason``.

    Example: ``refuse_options(parser, given, ["shots", "seeds"], "with --prompts-file (the prompts come
    from the file)")`` -> ``error: --shots, --seeds have no effect with --prompts-file (...); drop them``.
    """
    message = ignored_options(parser, given, dests, reason)
    if message:
        parser.error(f"{message}; drop {'them' if sum(dest in given for dest in dests) > 1 else 'it'}")


# ----------------------------------------------------------------------------- numbers

Number = Union[int, float]


def _format_bound(value: Number) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(value: Any) -> str:
    """A list item as messages show it (``1.0`` as ``1``)."""
    return _format_bound(value) if isinstance(value, (int, float)) else str(value)


class NumberType:
    """argparse type: an ``int`` or a finite ``float`` within optional bounds.

    Parameters
    ----------
    kind : type
        ``int`` or ``float``.
    low, high : number, optional
        Bounds; ``None`` means unbounded on that side.
    low_open, high_open : bool
        Exclude the bound itself (``(0, 1]`` is ``low=0, high=1, low_open=True``).
    description : str, optional
        How messages name the accepted values, e.g. ``"a positive integer"``; built from
        the bounds when omitted.

    Raises
    ------
    argparse.ArgumentTypeError
        When called on text that is not a number of that kind, is nan or infinite, or is
        out of bounds; argparse turns it into ``argument --flag: must be ..., got ....
    """

    def __init__(self, kind: type, low: Optional[Number] = None, high: Optional[Number] = None, *,
                 low_open: bool = False, high_open: bool = False, description: Optional[str] = None):
        if kind not in (int, float):
            raise TypeError(f"kind must be int or float, got {kind!r}")
        if low is not None and high is not None and low > high:
            raise ValueError(f"empty range: low {low} > high {high}")
        self.kind, self.low, self.high = kind, low, high
        self.low_open, self.high_open = low_open, high_open
        self.description = description or self._describe()
        # argparse names a type by __name__ in some messages; make it readable.
        self.__name__ = self.description

    def _describe(self) -> str:
        noun = "integer" if self.kind is int else "number"
        if self.low is not None and self.high is not None:
            return (f"a{'n' if self.kind is int else ''} {noun} in {'(' if self.low_open else '['}"
                    f"{_format_bound(self.low)}, {_format_bound(self.high)}{')' if self.high_open else ']'}")
        # Half-open or unbounded floats say "finite": inf is >= 0 but never accepted.
        article_noun = "an integer" if self.kind is int else "a finite number"
        if self.low is not None:
            return f"{article_noun} {'>' if self.low_open else '>='} {_format_bound(self.low)}"
        if self.high is not None:
            return f"{article_noun} {'<' if self.high_open else '<='} {_format_bound(self.high)}"
        return article_noun

    def _fail(self, text: str, quoted: bool = False) -> NoReturn:
        shown = repr(text) if quoted else text
        raise argparse.ArgumentTypeError(f"must be {self.description}, got {shown}")

    def __call__(self, text: str) -> Number:
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            self._fail(text, quoted=True)
        if self.kind is float and not math.isfinite(value):
            self._fail(text)
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            self._fail(text)
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            self._fail(text)
        return value

    def __repr__(self) -> str:
        return f"NumberType({self.description})"


def int_range(low: Optional[int] = None, high: Optional[int] = None, *,
              description: Optional[str] = None) -> NumberType:
    """argparse type: an integer in ``[low, high]`` (either bound may be None)."""
    return NumberType(int, low, high, description=description)


def float_range(low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
                high_open: bool = False, description: Optional[str] = None) -> NumberType:
    """argparse type: a finite float between ``low`` and ``high``, each bound closed unless ``*_open``."""
    return NumberType(float, low, high, low_open=low_open, high_open=high_open, description=description)


positive_int = int_range(1, description="a positive integer")
non_negative_int = int_range(0, description="a non-negative integer")
seed_int = int_range(0, MAX_SEED)
finite_float = float_range()
positive_float = float_range(0.0, low_open=True, description="a finite number > 0")
non_negative_float = float_range(0.0, description="a finite number >= 0")
probability = float_range(0.0, 1.0)
fraction = float_range(0.0, 1.0, low_open=True)
#: Samples compared in pairs (the ablation's prompts): the paired statistics need two.
paired_count = int_range(MIN_PAIRS, description=f"an integer >= {MIN_PAIRS} (the paired statistics need {MIN_PAIRS} "
                                                 "prompts)")
#: Former name of :data:`probability`, kept for callers that import it.
unit_interval_float = probability


#: Worker processes or threads, from 1 to what this machine can run (:func:`icl_cmr.devices.max_workers`: 4 per
#: usable CPU); 100,000 would start 100,000 of them.
worker_count = int_range(1, max_workers(), description=f"an integer in [1, {max_workers()}] ({WORKERS_PER_CPU} per "
                                                       f"usable CPU; this machine has {usable_cpus()})")


def comma_list(item_type: Callable[[str], Any], *, increasing: bool = False,
               unique: bool = True) -> Callable[[str], Tuple[Any, ...]]:
    """argparse type: ``"a,b,c"`` -> a tuple of ``item_type`` values (empty items ignored).

    Parameters
    ----------
    item_type : callable
        Type of each item, e.g. ``int_range(3)``.
    increasing : bool
        Require strictly increasing items.
    unique : bool
        Refuse a value given twice (the default: a repeat would be computed or counted twice), as
        :class:`UniqueItems` does for space-separated lists.

    Returns
    -------
    callable
        The argparse type; its errors name the bad item.
    """

    def parse(text: str) -> Tuple[Any, ...]:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list, got {text!r}")
        items = []
        for part in parts:
            try:
                items.append(item_type(part))
            except argparse.ArgumentTypeError as err:
                raise argparse.ArgumentTypeError(f"item {part!r} of {text!r} {err}") from None
        if increasing and any(b <= a for a, b in zip(items, items[1:])):
            raise argparse.ArgumentTypeError(f"must be strictly increasing, got {text!r}")
        repeated = [item for index, item in enumerate(items) if item in items[:index]]
        if unique and repeated:
            raise argparse.ArgumentTypeError(f"repeats {', '.join(dict.fromkeys(map(_shown, repeated)))} in "
                                             f"{text!r}; give each value once")
        return tuple(items)

    parse.__name__ = "comma-separated list"
    return parse


def plain_name(text: str) -> str:
    """argparse type for a flag whose value becomes part of a file or folder name (``--save_dir``, ``--tag``).

    Refuses an empty name, ``/`` and ``\\`` (the value would name a path, possibly outside the
    output folder), and the names ``. and ``..; a model on the hub is filed as ``owner__name``.
    """
    name = str(text)
    if not name.strip():
        raise argparse.ArgumentTypeError("must be a non-empty name")
    if "/" in name or "\\" in name or name in (".", "..") or name.strip() != name or "\0" in name:
        raise argparse.ArgumentTypeError(
            f"must be a plain name (no '/' or '\\', not '.' or '..', no surrounding spaces; hub ids are filed as "
            f"owner__name), got {name!r}")
    return name


class UniqueItems(argparse.Action):
    """argparse action for list flags (``nargs``): refuse a value given twice.

    Used where a repeated value would be computed twice and counted as new data (a demonstration
    seed, a percentage of heads, a model pooled into a selection).
    """

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102 - argparse API
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        repeated = [value for index, value in enumerate(values) if value in values[:index]]
        if repeated:
            shown = ", ".join(dict.fromkeys(map(_shown, repeated)))
            raise argparse.ArgumentError(self, f"repeats {shown}; give each value once")
        setattr(namespace, self.dest, values)


def str2bool(text: str) -> bool:
    """argparse type for the authors' ``--use_saved True/False`` (their ``type=bool`` read "False" as True)."""
    value = str(text).strip().lower()
    if value in ("true", "t", "yes", "y", "1", "on"):
        return True
    if value in ("false", "f", "no", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"must be a boolean (true/false, yes/no, 1/0), got {text!r}")


def device_arg(text: str) -> str:
    """argparse type: a torch device that exists here (see :func:`icl_cmr.devices.validate_device`)."""
    try:
        return validate_device(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# ----------------------------------------------------------------------------- running a script

def setup_logging(verbose: bool = False, progress: bool = True) -> None:
    """Log INFO (or DEBUG) lines to stderr in a short ``level: message`` format.

    ``progress=False`` (a script's ``--no-progress``) also hides the progress bars of the Hugging Face
    libraries (:func:`hide_library_progress_bars`), e.g. transformers' "Loading weights" bar.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
        force=True,
    )
    if not progress:
        hide_library_progress_bars()


def hide_library_progress_bars() -> None:
    """Hide the progress bars of huggingface_hub and transformers (and datasets, once imported) in this process.

    transformers takes huggingface_hub's setting when it is imported, so switching the hub's bars off
    (a light import) covers a transformers imported later; one already imported is switched off
    directly. No environment variable is set, so processes started later are not affected.
    """
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def describe_os_error(err: OSError) -> str:
    """One line for an ``OSError``: the path(s) involved and what went wrong, in plain words.

    Examples
    --------
    >>> describe_os_error(OSError(28, "No space left on device", "out/scores.pkl"))
    'cannot write out/scores.pkl: no space left on device (the disk is full)'
    """
    reason = _OS_ERROR_REASONS.get(err.errno) if err.errno is not None else None
    if reason is None:
        reason = err.strerror if err.strerror else " ".join(str(err).split())
    paths = [os.fsdecode(p) for p in (err.filename, err.filename2) if p not in (None, "")]
    if not paths:
        return reason
    where = " -> ".join(paths)
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EROFS):
        return f"cannot write {where}: {reason}"
    return f"{where}: {reason}"


#: How torch words a failed allocation (``DefaultCPUAllocator: can't allocate memory``, ``CUDA out of memory``).
_OUT_OF_MEMORY_WORDS = ("can't allocate memory", "out of memory")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is torch's report of a failed allocation (a ``RuntimeError``, not a ``MemoryError``)."""
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(err).__mro__):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(words in text for words in _OUT_OF_MEMORY_WORDS)


def close_progress_bars() -> None:
    """Close every tqdm bar still open, erasing it, so that nothing is printed after the error line.

    A bar the failing code left open would otherwise redraw itself when it is garbage-collected, at
    the latest when the interpreter exits, after ``run_cli``'s one ``error:`` line.
    """
    for bar in list(getattr(tqdm, "_instances", ())):  # tqdm's registry of open bars (a WeakSet)
        try:
            bar.leave = False
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error being reported
            pass


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
        0 on success, 2 on bad input or an OS error (missing file, permission denied,
        disk full, ...) or when memory runs out (``MemoryError``, or torch's allocation failure: an
        allocation that a size estimate let through), 130 on Ctrl-C, or whatever ``main`` returned.
        Open progress bars are closed first and empty folders the failed run created are removed.
    """
    try:
        with removing_new_folders_on_failure():  # a failed run leaves no empty output folder behind
            code = main(argv)
    except USER_ERRORS as err:
        if os.environ.get("ICL_CMR_DEBUG"):
            raise
        close_progress_bars()
        if isinstance(err, InputError):
            message = " ".join(str(err).split())
        else:
            message = describe_os_error(err)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (MemoryError, RuntimeError) as err:
        # torch reports a failed allocation as a RuntimeError (OutOfMemoryError on CUDA): the same line
        if os.environ.get("ICL_CMR_DEBUG") or not (isinstance(err, MemoryError) or is_out_of_memory(err)):
            raise
        close_progress_bars()
        detail = " ".join(str(err).split())
        print(f"error: out of memory{': ' + detail if detail else ''}; use smaller batches, lengths or models",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        close_progress_bars()
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
