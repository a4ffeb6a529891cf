"""What a result file must hold: one declarative check for the arrays of every file format we read.

Each format reader (:mod:`icl_cmr.files.scores`, :mod:`icl_cmr.files.results`) describes its
keys once as :class:`ArraySpec` entries (named axes, value range, whether NaN may occur)
and calls :func:`check_arrays`. The checks run before any number is used, and every
failure is a :class:`~icl_cmr.errors.FileContentError` whose one line names the file,
the key and what was expected, e.g.::

    scores.pkl: 'CRP_scores' holds strings (dtype <U3), expected numbers [n_layers, n_heads, n_lags]
    fit.pkl: 'fitted_params' has shape (2, 4, 2), expected [n_layers=2, n_heads=4, 3]

Named axes tie keys together: the first key that has an axis fixes its size, and every
later key must agree, so ``copying_score`` of another model cannot slip in beside
``head_scores``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from icl_cmr.errors import FileContentError
from icl_cmr.files.reading import to_numpy

#: Slack on value ranges: saved scores are float32 means of probabilities, whose rounding can
#: put a true 1.0 at 1 + 6e-8; a value outside the range by more than this is not rounding.
RANGE_TOLERANCE = 1e-6

Axis = Union[str, int]


@dataclass(frozen=True)
class ArraySpec:
    """What one key of a file must hold.

    Attributes
    ----------
    axes : tuple of str or int
        Axis names (sizes shared across keys of one file) or fixed sizes, e.g.
        ``("n_layers", "n_heads", 3)``. Every named axis must have at least one entry.
    low, high : float, optional
        Inclusive value range (with :data:`RANGE_TOLERANCE`).
    nan : bool
        Whether NaN may occur (a head that could not be scored or fitted).
    integer : bool
        Values must be whole numbers; returned as int64.
    strings : bool
        An array of text (labels) instead of numbers.
    meaning : str
        What the values are, for messages (``"CMR distances"``).
    """

    axes: Tuple[Axis, ...]
    low: Optional[float] = None
    high: Optional[float] = None
    nan: bool = True
    integer: bool = False
    strings: bool = False
    meaning: str = ""


def _axes_text(axes: Sequence[Axis], sizes: Mapping[str, int]) -> str:
    parts = [str(a) if isinstance(a, int) else (f"{a}={sizes[a]}" if a in sizes else a) for a in axes]
    return "[" + ", ".join(parts) + "]"


def _index_text(array: np.ndarray, flat: int) -> str:
    index = np.unravel_index(flat, array.shape)
    return str(tuple(int(i) for i in index)) if array.ndim > 1 else str(int(index[0]))


def _expected(spec: ArraySpec, sizes: Mapping[str, int]) -> str:
    what = spec.meaning or ("text" if spec.strings else "integers" if spec.integer else "numbers")
    return f"{what} {_axes_text(spec.axes, sizes)}"


def _kind_of_values(array: np.ndarray) -> Optional[str]:
    """Why an array cannot hold numbers, or None when it can."""
    kind = array.dtype.kind
    if kind in "iuf":
        return None
    return {"U": "strings", "S": "bytes", "O": "Python objects", "b": "booleans", "c": "complex numbers",
            "M": "dates", "m": "time spans", "V": "raw records"}.get(kind, f"values of dtype {array.dtype}")


def check_array(value: Any, source: str, key: str, spec: ArraySpec, sizes: Dict[str, int],
                first_key: Optional[Dict[str, str]] = None) -> np.ndarray:
    """Validate one value against ``spec``; bind its named axes in ``sizes``.

    Parameters
    ----------
    value : array-like or torch tensor
    source : str
        File name for messages.
    key : str
        Key name for messages.
    spec : ArraySpec
    sizes : dict of str -> int
        Axis sizes bound so far (updated).
    first_key : dict of str -> str, optional
        Which key bound each axis (updated; named in mismatch messages).

    Returns
    -------
    ndarray
        float64 (int64 with ``spec.integer``; str with ``spec.strings``).

    Raises
    ------
    FileContentError
        Not an array, wrong kind of values, wrong shape, NaN/inf where not allowed, out of range.
    """
    first_key = {} if first_key is None else first_key
    if isinstance(value, (dict, str, bytes)) or value is None:
        raise FileContentError(source, f"'{key}' is a {type(value).__name__}, expected {_expected(spec, sizes)}")
    try:
        array = to_numpy(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise FileContentError(source, f"'{key}' is not an array ({err}), expected {_expected(spec, sizes)}") from None
    if array.dtype.kind == "O" and array.size:
        # lists of numbers or of str pickle as object arrays only when ragged; try the plain conversion
        try:
            array = np.array(array.tolist())
        except (TypeError, ValueError):
            pass
    if spec.strings:
        if array.dtype.kind not in "US" and not (array.dtype.kind == "O" and all(isinstance(v, str) for v in array.ravel())):
            raise FileContentError(source, f"'{key}' holds {_kind_of_values(array) or 'numbers'} (dtype {array.dtype}), "
                                           f"expected {_expected(spec, sizes)}")
        array = array.astype(str)
    else:
        problem = _kind_of_values(array)
        if problem is not None:
            raise FileContentError(source, f"'{key}' holds {problem} (dtype {array.dtype}), expected {_expected(spec, sizes)}")
    if array.ndim != len(spec.axes):
        raise FileContentError(source, f"'{key}' has shape {array.shape}, expected {len(spec.axes)} axes "
                                       f"{_axes_text(spec.axes, sizes)}")
    for axis, size in zip(spec.axes, array.shape):
        if isinstance(axis, int):
            if size != axis:
                raise FileContentError(source, f"'{key}' has shape {array.shape}, expected {_axes_text(spec.axes, sizes)}")
        elif axis in sizes:
            if size != sizes[axis]:
                origin = f" ({axis} from '{first_key[axis]}')" if axis in first_key else ""
                raise FileContentError(source, f"'{key}' has shape {array.shape}, expected "
                                               f"{_axes_text(spec.axes, sizes)}{origin}")
        else:
            if size < 1:
                raise FileContentError(source, f"'{key}' has shape {array.shape}: {axis} is 0, expected at least one "
                                               f"entry {_axes_text(spec.axes, sizes)}")
            sizes[axis] = int(size)
            first_key[axis] = key
    if spec.strings:
        return array
    values = array.astype(np.float64)
    nan = np.isnan(values)
    if nan.any() and not spec.nan:
        raise FileContentError(source, f"'{key}' holds NaN at index {_index_text(values, int(np.argmax(nan)))}, "
                                       f"expected {_expected(spec, sizes)} without NaN")
    infinite = np.isinf(values)
    if infinite.any():
        raise FileContentError(source, f"'{key}' holds {values.flat[int(np.argmax(infinite))]:g} at index "
                                       f"{_index_text(values, int(np.argmax(infinite)))}, expected finite {_expected(spec, sizes)}")
    for bound, outside in ((spec.low, lambda v: v < spec.low - RANGE_TOLERANCE),
                           (spec.high, lambda v: v > spec.high + RANGE_TOLERANCE)):
        if bound is None:
            continue
        with np.errstate(invalid="ignore"):
            bad = outside(values) & ~nan
        if bad.any():
            flat = int(np.argmax(bad))
            low = "-inf" if spec.low is None else f"{spec.low:g}"
            high = "inf" if spec.high is None else f"{spec.high:g}"
            raise FileContentError(source, f"'{key}' holds {values.flat[flat]:g} at index {_index_text(values, flat)}, "
                                           f"expected {_expected(spec, sizes)} in [{low}, {high}]")
    if spec.integer:
        fractional = (values != np.round(values)) & ~nan
        if fractional.any():
            flat = int(np.argmax(fractional))
            raise FileContentError(source, f"'{key}' holds {values.flat[flat]:g} at index {_index_text(values, flat)}, "
                                           f"expected whole numbers {_axes_text(spec.axes, sizes)}")
        return values.astype(np.int64)
    return values


def describe_content(content: Any) -> Optional[str]:
    """What kind of our files ``content`` looks like, for "this is X, not Y" messages; None if unknown."""
    if not isinstance(content, dict):
        return None
    keys = set(content)
    if "fitted_MSE" in keys:
        return "a CMR fit file (fit_attn_score.py's cmr_fit_<model>.pkl)"
    if {"head_scores", "CRP_scores"} <= keys:
        return "a head-score file (all_scores_<model>.pkl)"
    if "original_icl_score" in keys:
        return "an ablation result (ablation_experiment_<model>.pkl)"
    if any(str(k).startswith("top") and isinstance(v, dict) and "MSE" in v for k, v in content.items()):
        return "a top-head selection (cmr_top_*.pkl)"
    if content.get("format") == "icl_cmr.pattern_tasks/1":
        return "a pattern-task prompt file"
    return None


def recorded_model(content: Any) -> Optional[str]:
    """The model a file of ours says it was made for (``metadata["model"]``), or None (the authors' files)."""
    metadata = content.get("metadata") if isinstance(content, dict) else None
    model = metadata.get("model") if isinstance(metadata, dict) else None
    return model if isinstance(model, str) and model else None


def require_dict(content: Any, source: str, kind: str) -> dict:
    """``content`` if it is a dict, else a :class:`FileContentError` saying what it is instead."""
    if not isinstance(content, dict):
        raise FileContentError(source, f"holds a {type(content).__name__}, expected {kind} (a dict)")
    return content


def check_arrays(content: Any, source: str, kind: str, specs: Mapping[str, ArraySpec],
                 required: Sequence[str], sizes: Optional[Dict[str, int]] = None) -> Dict[str, np.ndarray]:
    """Validate the keys ``specs`` names in a file's dict; the required ones must be present.

    Parameters
    ----------
    content : object
        What the file holds.
    source : str
        File name for messages.
    kind : str
        What the file should be, e.g. ``"a head-score file"``.
    specs : mapping of key -> ArraySpec
        Checked in this order (so the first keys fix the axis sizes).
    required : sequence of str
        Keys that must be present; the others are checked when present.
    sizes : dict, optional
        Axis sizes already known (updated).

    Returns
    -------
    dict of key -> ndarray
        The present keys, converted.

    Raises
    ------
    FileContentError
        Not a dict, a required key missing (saying what the file looks like instead), or
        any :func:`check_array` failure.
    """
    content = require_dict(content, source, kind)
    missing = [key for key in required if key not in content]
    if missing:
        actual = describe_content(content)
        if actual is not None and not actual.startswith(kind):
            seen = f"; this is {actual}"
        else:
            seen = f" (keys found: {', '.join(repr(k) for k in sorted(map(str, content))[:12]) or 'none'})"
        raise FileContentError(source, f"missing {', '.join(repr(k) for k in missing)}: expected {kind} with keys "
                                       f"{', '.join(repr(k) for k in required)}{seen}")
    sizes = {} if sizes is None else sizes
    first_key: Dict[str, str] = {}
    return {key: check_array(content[key], source, key, spec, sizes, first_key)
            for key, spec in specs.items() if key in content}
