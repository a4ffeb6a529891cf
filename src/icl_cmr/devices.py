"""Where and how compiled code runs: torch devices, torch's CPU kernels, numba's cached kernels.

Scripts take ``--device cpu | cuda | cuda:N | mps`` (:func:`icl_cmr.cli.args.device_arg`
checks it while parsing, before any model loads); without the flag they run on
:func:`resolve_device`'s choice, CUDA when available, else the CPU.
"""
from __future__ import annotations

import logging
import numbers
import os
import platform
import re
from typing import Optional

from icl_cmr.errors import InputError

logger = logging.getLogger(__name__)

#: Device names the scripts accept, as shown in messages.
DEVICE_NAMES = ("cpu", "cuda", "cuda:N", "mps")

_CUDA = re.compile(r"cuda(?::(\d+))?")


def validate_device(name: str) -> str:
    """Check that ``name`` is a torch device that exists on this machine.

    Parameters
    ----------
    name : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (case and surrounding spaces ignored).

    Returns
    -------
    str
        The normalised name (``"cuda:1"`` for ``" CUDA:01 "``).

    Raises
    ------
    InputError
        If the name is none of those, if CUDA (or MPS) is asked for and this torch build
        or machine has none, or if ``cuda:N`` names a GPU that does not exist.
    """
    text = str(name).strip().lower()
    if text == "cpu":
        return text
    match = _CUDA.fullmatch(text)
    if match is not None:
        import torch

        if not torch.cuda.is_available():
            build = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU was found"
            raise InputError(f"{name!r} asked for, but CUDA is not available here ({build}); use cpu")
        if match.group(1) is None:
            return "cuda"
        index, count = int(match.group(1)), torch.cuda.device_count()
        if index >= count:
            raise InputError(f"{name!r} does not exist: this machine has {count} CUDA "
                             f"device{'s' if count != 1 else ''} (cuda:0{f' .. cuda:{count - 1}' if count > 1 else ''})")
        return f"cuda:{index}"
    if text == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise InputError(f"{name!r} asked for, but Apple MPS is not available here; use cpu")
        return text
    raise InputError(f"unknown device {name!r}: expected {', '.join(DEVICE_NAMES[:-1])} or {DEVICE_NAMES[-1]}")


#: Most worker processes or threads per usable CPU (:func:`max_workers`): past one per CPU they only
#: share cores, and a few more cover waiting on the disk; 100,000 workers would start 100,000 processes.
WORKERS_PER_CPU = 4


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the system has one, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity masks (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def max_workers() -> int:
    """The most worker processes or threads a script starts here: :data:`WORKERS_PER_CPU` per usable CPU."""
    return WORKERS_PER_CPU * usable_cpus()


def check_worker_count(value: int, parameter: str) -> int:
    """Refuse a worker (process or thread) count outside ``[1, max_workers()]``, naming ``parameter``.

    Parameters
    ----------
    value : int
        The count asked for.
    parameter : str
        Its setting's name (``"workers"``, ``"threads"``), backticked in the message.

    Returns
    -------
    int

    Raises
    ------
    InputError
        ``"`workers` (100000) is more than this machine can run: at most 8 (4 per usable CPU, 2 CPUs)"``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"`{parameter}` must be a positive integer, got {value!r}", parameters=(parameter,))
    if value > max_workers():
        raise InputError(f"`{parameter}` ({value}) is more than this machine can run: at most {max_workers()} "
                         f"({WORKERS_PER_CPU} per usable CPU, {usable_cpus()} CPU{'s' if usable_cpus() != 1 else ''})",
                         parameters=(parameter,))
    return int(value)


def resolve_device(name: Optional[str] = None) -> str:
    """The device to run on: ``name`` checked by :func:`validate_device`, or the default.

    Parameters
    ----------
    name : str, optional
        A device name; ``None`` picks ``"cuda"`` when a CUDA GPU is available, else ``"cpu"``.

    Returns
    -------
    str
        A device name torch accepts.

    Raises
    ------
    InputError
        As :func:`validate_device`.
    """
    if name is not None:
        return validate_device(name)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: torch CPU kernel set used for reproducible numbers (see :func:`pin_cpu_kernels`).
PINNED_CPU_CAPABILITY = "avx2"


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



class CompiledKernels:
    """Calls a module's numba kernels (compiled with ``cache=True``), surviving a damaged on-disk cache.

    numba keeps compiled kernels in ``__pycache__`` and reads them back with ``pickle``; a file cut
    short (a full disk, a killed job, a copied tree) makes every later first call fail with an
    ``UnpicklingError`` until someone deletes the cache by hand. :meth:`call` catches exactly the
    errors that come from numba's cache reader, empties the cache of every kernel of the module (a
    kernel's cache also holds what it inlines from the others), logs one warning, and calls again,
    which compiles afresh and writes a sound cache.

    Parameters
    ----------
    module : str
        The kernels' module, for the warning.
    *kernels : numba dispatchers
        Every cached kernel of that module.
    """

    def __init__(self, module: str, *kernels):
        self.module = module
        self.kernels = kernels

    def call(self, kernel, *args):
        """``kernel(*args)``, recompiling once if the compiled-code cache cannot be read back."""
        try:
            return kernel(*args)
        except Exception as err:  # only the errors raised inside numba's cache reader are handled below
            if not _raised_by_numba_cache(err):
                raise
            logger.warning("the compiled-code cache of %s is damaged (%s: %s); recompiling", self.module,
                           type(err).__name__, err)
            for cached in self.kernels:
                cached._cache.flush()  # numba's own API for a stale cache: the index is emptied
            return kernel(*args)


def _raised_by_numba_cache(err: BaseException) -> bool:
    """Whether an exception was raised while numba read a cached kernel back (its ``caching`` module)."""
    frame = err.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename.replace("\\", "/").endswith("numba/core/caching.py"):
            return True
        frame = frame.tb_next
    return False
