"""Memory checked before work: is there room for what the settings ask, and which settings ask too much?

(Beside the files' readers because the free memory is read from ``/proc/meminfo``
(:func:`icl_cmr.files.unpickling.available_memory`, which also bounds what a file may declare), and because
both the experiments and the sweep plans check with it.)

Every experiment estimates, before any model loads or any work starts, the largest memory its
settings make it hold at once (its ``*_memory_bytes`` estimates, lower bounds where the model's own
memory is unknown), and refuses settings that cannot fit in the memory free now, in one line that
names the settings driving the estimate (:func:`check_memory`, :func:`memory_drivers`). A single huge
count or length thus stops at once with a message instead of growing for minutes towards a kill.

Examples
--------
>>> estimate = lambda s: s["n_prompts"] * s["length"] * 8
>>> memory_drivers(estimate, {"n_prompts": 10 ** 12, "length": 201}, {"n_prompts": 100, "length": 201}, 2 ** 30)
('n_prompts',)
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

from icl_cmr.errors import InputError
from icl_cmr.files import unpickling


def free_memory(device: str = "cpu") -> Optional[int]:
    """Bytes free on ``device`` now: Linux ``MemAvailable`` on the CPU, torch's count on CUDA; None if unknown."""
    if device.startswith("cuda"):
        import torch  # only a CUDA device needs torch here: the CMR grid and the sweep plans check without it

        return torch.cuda.mem_get_info(torch.device(device))[0]
    if device == "cpu":
        return unpickling.available_memory()
    return None


def named_list(parameters: Sequence[str]) -> str:
    """``"`a`, `b` or `c`"`` for a message (each name once, between backticks)."""
    names = [f"`{name}`" for name in dict.fromkeys(parameters)]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check_memory(needed_bytes: int, device: str, what: str, parameters: Sequence[str] = (),
                 mentioned: Sequence[str] = ()) -> None:
    """Refuse work that cannot fit in the memory free on ``device`` now (:func:`free_memory`).

    Parameters
    ----------
    needed_bytes : int
        The memory the work needs (an estimate).
    device : str
        A validated device name; where its free memory is unknown nothing is checked.
    what : str
        The work, for the message (e.g. ``"training at `batch_size` 8 x `train_length` 256"``).
    parameters : sequence of str
        The parameters that drive the estimate: the message ends "lower `a` or `b`"
        (:func:`memory_drivers` finds them); none: "use a smaller batch or length".
    mentioned : sequence of str
        Other parameters ``what`` names between backticks (so that a script shows them as flags).

    Raises
    ------
    InputError
        ``needed_bytes`` exceeds the free memory; naming ``parameters`` (backticked, so a script's
        :func:`~icl_cmr.cli.flags.flag_errors` shows its flags).
    """
    free = free_memory(device)
    if free is not None and needed_bytes > free:
        advice = f"lower {named_list(parameters)}" if parameters else "use a smaller batch or length"
        raise InputError(f"{what} needs about {needed_bytes / 2 ** 30:,.1f} GiB of memory and {device} has "
                         f"{free / 2 ** 30:,.1f} GiB free; {advice}", parameters=(*parameters, *mentioned))


def memory_drivers(estimate: Callable[[Mapping[str, int]], int], values: Mapping[str, int],
                   modest: Mapping[str, int], limit: int) -> Tuple[str, ...]:
    """The settings that make ``estimate(values)`` exceed ``limit``.

    Each setting is tried alone at its ``modest`` value (a default, or the smallest useful value):
    those that alone bring the estimate within ``limit`` are the drivers. When no single one does
    (two settings are both too large), every setting whose modest value lowers the estimate is named,
    the largest effect first.

    Parameters
    ----------
    estimate : callable
        Bytes for a mapping of settings (the same keys as ``values``).
    values : mapping of str -> int
        The settings asked for.
    modest : mapping of str -> int
        A modest value of each setting that may drive the estimate (a subset of ``values``' keys).
    limit : int
        The bytes available.

    Returns
    -------
    tuple of str
        Setting names, never empty when ``estimate(values) > limit`` (all of ``modest`` as a last resort).
    """
    needed = estimate(values)
    lowered = {}
    for name, small in modest.items():
        if values[name] > small:
            try:
                lowered[name] = estimate({**values, name: small})
            except InputError:  # settings that do not go together (a width the heads do not divide)
                continue
    alone = tuple(name for name, bytes_ in lowered.items() if bytes_ <= limit)
    if alone:
        return alone
    helping = sorted((name for name, bytes_ in lowered.items() if bytes_ < needed), key=lambda n: lowered[n])
    return tuple(helping) or tuple(lowered) or tuple(modest)


def check_settings_memory(estimate: Callable[[Mapping[str, int]], int], values: Mapping[str, int],
                          modest: Mapping[str, int], device: str, what: str) -> None:
    """:func:`check_memory` of ``estimate(values)``, naming the settings that drive it (:func:`memory_drivers`).

    Parameters
    ----------
    estimate, values, modest
        As :func:`memory_drivers`.
    device : str
    what : str
        The work, for the message; ``{values}`` in it is filled in with the drivers and their values
        (e.g. ``"1000000000000 `n_prompts`"``); without it they follow ``what`` in parentheses.

    Raises
    ------
    InputError
        The estimate exceeds the free memory.
    """
    free = free_memory(device)
    needed = estimate(values)
    if free is None or needed <= free:
        return
    drivers = memory_drivers(estimate, values, modest, free)
    shown = ", ".join(f"`{name}` {values[name]}" for name in drivers)
    text = what.replace("{values}", shown) if "{values}" in what else f"{what} ({shown})"
    check_memory(needed, device, text, drivers)


def check_dataclass_memory(estimate: Callable[[Any], int], settings: Any, names: Sequence[str], defaults: Any,
                           device: str, what: str) -> None:
    """:func:`check_settings_memory` for a settings dataclass: ``estimate(settings)`` bytes, the fields ``names``
    tried at their value in ``defaults`` (or their own value, when smaller) to find the drivers.

    Examples
    --------
    >>> check_dataclass_memory(training_memory_bytes, config, ("n_ctx", "batch_size"), ToyLMConfig(), "cpu",
    ...                        "training ({values})")                                            # doctest: +SKIP
    """
    values = {name: int(getattr(settings, name)) for name in names}
    modest = {name: min(values[name], int(getattr(defaults, name))) for name in names}
    check_settings_memory(lambda changed: estimate(_changed(settings, changed)), values, modest, device, what)


def _changed(settings: Any, changed: Mapping[str, int]) -> Any:
    """A copy of a (frozen) dataclass with some fields changed, without its checks: an estimate only reads sizes,
    and one size lowered alone may not fit the others (``icl_late_index`` beyond a smaller ``n_ctx``)."""
    clone = copy.copy(settings)
    for name, value in changed.items():
        object.__setattr__(clone, name, value)
    return clone
