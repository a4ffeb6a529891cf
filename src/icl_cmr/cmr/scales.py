"""[LI24]'s CMR parameters on standard CMR's scale, and back (issue 24; the section "Scales" of docs/cmr_grid.md,
``docs/cmr_grid.md#scales-li24s-parameters-are-not-standard-cmrs``).

[LI24]'s CMR (DESIGN.md section 3, :mod:`icl_cmr.cmr.model`) and standard CMR (Howard & Kahana 2002's TCM;
Polyn, Norman & Kahana 2009; Lohnas, Polyn & Kahana 2015; Morton & Polyn 2016's ``cymr``) name their drift rates
alike, but the numbers live on different scales. This module converts them where an exact relation exists and
says where none does. Notation: ``beta`` for [LI24]'s rates, ``B`` for standard CMR's.

Encoding: an exact relation
---------------------------
[LI24] store items with ``M = (I - (1 - beta_enc) T)^-1 T``, i.e. ``M[i, j] = (1 - beta_enc)^(j - i - 1)`` for
``j > i``: item ``j`` is bound to the context ``c_j = sum_(i < j) (1 - beta_enc)^(j - 1 - i) e_i`` that the
unnormalised linear update ``c_(j+1) = (1 - beta_enc) c_j + e_j`` builds. Cued by ``e_i``, item ``j > i`` gets
strength ``(1 - beta_enc)^(j - i - 1)``: each further item is weaker by the factor ``1 - beta_enc``.

Standard CMR updates context with a normalised step ``c_i = rho_i c_(i-1) + B_enc c_i^IN``,
``rho_i = sqrt(1 + B_enc^2 ((c_(i-1) . c_i^IN)^2 - 1)) - B_enc (c_(i-1) . c_i^IN)``, which keeps ``|c| = 1``.
When each studied item's input is a new unit vector orthogonal to the context so far (a list of new items, no
semantic overlap in the item-to-context associations), ``c_(i-1) . c_i^IN = 0`` and ``rho = sqrt(1 - B_enc^2)``
for every item, so ``c_j = rho^j c_0 + B_enc sum_(i <= j) rho^(j - i) e_i``. Item ``j`` is bound to ``c_(j-1)``
(TCM) or ``c_j`` (CMR, which adds a self-association ``B_enc e_j``); either way the cue ``e_i`` gives item
``j > i`` strength ``B_enc rho^(j - 1 - i)`` (or ``B_enc rho^(j - i)``), a geometric gradient with ratio ``rho``.
The common factor cancels in any choice rule that depends on ratios of strengths, so the two models have the same
gradient exactly when ``1 - beta_enc = sqrt(1 - B_enc^2)``:

    B_enc = sqrt(1 - (1 - beta_enc)^2) = sqrt(beta_enc (2 - beta_enc)),    beta_enc = 1 - sqrt(1 - B_enc^2).

(beta_enc 0.1 -> B_enc 0.436, 0.7 -> 0.954, 0.9 -> 0.995; B_enc 0.79 -> beta_enc 0.387.) This is exact for the
encoding gradient; it assumes, as [LI24]'s model does, no other drift between items (a distractor between items
multiplies the per-item decay by its own factor), no primacy scaling of the learning rate (CMR's ``phi_s``,
``phi_d`` scale each item's associations as a whole) and no pre-experimental overlap between items.

Retrieval: coincidence with a state-dependent rate, no constant mapping
-----------------------------------------------------------------------
[LI24] drift at recall by a renormalised linear mix, ``t' = u / |u|`` with ``u = (1 - beta_rec) t + beta_rec t_in``
(``t``, ``t_in`` unit vectors; both models' vectors are non-negative, so the overlap ``c = t . t_in`` lies in
[0, 1]). Since ``|u|^2 = 1 - 2 beta_rec (1 - beta_rec) (1 - c)``, [LI24]'s update is ``t' = alpha t + B t_in``
with ``alpha = (1 - beta_rec) / |u|`` and ``B = beta_rec / |u|``. Standard CMR with rate ``B`` gives
``t' = rho t + B t_in`` with ``rho`` the non-negative root of ``|rho t + B t_in| = 1``, i.e. of
``rho^2 + 2 B c rho + B^2 - 1 = 0``. The two roots multiply to ``B^2 - 1 <= 0``, so for ``B < 1`` only one is
non-negative; [LI24]'s ``alpha >= 0`` solves the same equation (``t'`` is a unit vector), hence ``alpha = rho``.
The two updates therefore coincide exactly when

    B_rec = beta_rec / sqrt(1 - 2 beta_rec (1 - beta_rec) (1 - c)),    beta_rec = B_rec / (B_rec + rho(B_rec, c)),

the second from ``beta_rec / (1 - beta_rec) = B / alpha = B / rho``. The rate depends on ``c``, which depends on
the recall's history, so **no constant mapping exists in general**. What holds:

* the end points agree for every ``c``: ``beta_rec = 0 <-> B_rec = 0`` and ``beta_rec = 1 <-> B_rec = 1``;
* ``B_rec`` falls as ``c`` grows (``d rho / d c < 0``), so over ``c`` in [0, 1] a [LI24] ``beta_rec`` is a standard
  ``B_rec`` between ``beta_rec`` (``c = 1``) and ``beta_rec / sqrt(beta_rec^2 + (1 - beta_rec)^2)`` (``c = 0``),
  and a published ``B_rec`` is a [LI24] ``beta_rec`` between ``B_rec / (B_rec + sqrt(1 - B_rec^2))`` and ``B_rec``
  (:func:`li24_retrieval_rate_range`);
* ``c = 0`` at every recall, so the mapping at ``c = 0`` is exact throughout, when ``gamma_ft = 0`` and recalled
  items are never recalled again (the standard recall rule, :mod:`icl_cmr.cmr.standard_rule`): ``t_in = e_j`` for
  an item ``j`` that is not yet in the context. With repeats ([LI24]'s rule) or ``gamma_ft > 0``, ``c > 0``.
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np

from icl_cmr.errors import InputError

ArrayLike = Union[float, np.ndarray]


def checked_rate(name: str, value: ArrayLike) -> np.ndarray:
    """``value`` as a float array, refused unless every element is a real number in [0, 1].

    Parameters
    ----------
    name : str
        The caller's parameter, named in the message.
    value : float or array-like, any shape
        Integers and floats; strings, booleans, complex numbers and objects are refused (a ``True`` would read as 1).

    Returns
    -------
    np.ndarray, same shape, float

    Raises
    ------
    InputError
        Naming ``name``; for an array, the first element out of range (its index and value) and how many are.
    """
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError):   # ragged lists
        raise InputError(f"`{name}` must be a number or an array of numbers in [0, 1], got {value!r}",
                         parameters=(name,)) from None
    if raw.dtype.kind not in "iuf":
        raise InputError(f"`{name}` must be a real number or an array of them in [0, 1], got "
                         f"{value!r:.80} (dtype {raw.dtype})", parameters=(name,))
    array = raw.astype(float)
    bad = ~(np.isfinite(array) & (array >= 0) & (array <= 1))
    if bad.any():
        if array.ndim == 0:
            raise InputError(f"`{name}` must lie in [0, 1], got {value!r}", parameters=(name,))
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"`{name}` must lie in [0, 1]: element {list(first)} is {float(array[first])!r} ({int(bad.sum())} "
                         f"of {array.size} values out of range)", parameters=(name,))
    return array



def _result(array: np.ndarray) -> ArrayLike:
    return float(array) if array.ndim == 0 else array


def standard_encoding_rate(beta_enc: ArrayLike) -> ArrayLike:
    """Standard CMR's ``B_enc`` with the same encoding gradient as [LI24]'s ``beta_enc`` (module docstring).

    Parameters
    ----------
    beta_enc : float or np.ndarray, any shape
        [LI24]'s encoding rate, in [0, 1].

    Returns
    -------
    float or np.ndarray, same shape
        ``sqrt(1 - (1 - beta_enc)^2)``.
    """
    beta = checked_rate("beta_enc", beta_enc)
    return _result(np.sqrt(beta * (2.0 - beta)))


#: Below this ``B_enc``, :func:`li24_encoding_rate` uses the form without cancellation (``1 - sqrt(1 - B^2)`` keeps
#: about 16 + log10(B^2 / 2) digits: 10 at 1e-3).
SMALL_RATE = 1e-3


def li24_encoding_rate(standard_beta_enc: ArrayLike) -> ArrayLike:
    """[LI24]'s ``beta_enc`` with the same encoding gradient as standard CMR's ``B_enc`` (module docstring).

    Parameters
    ----------
    standard_beta_enc : float or np.ndarray, any shape
        Standard CMR's ``B_enc`` (normalised update), in [0, 1].

    Returns
    -------
    float or np.ndarray, same shape
        ``1 - sqrt(1 - B_enc^2)``; below ``B_enc`` = :data:`SMALL_RATE` as ``B_enc^2 / (1 + sqrt(1 - B_enc^2))``, the
        same number without the cancellation that makes the first form lose digits there (all of them below about
        1e-8, where it gives 0 instead of about ``B_enc^2 / 2``).
    """
    rate = checked_rate("standard_beta_enc", standard_beta_enc)
    root = np.sqrt(1.0 - rate * rate)
    # The direct form above SMALL_RATE (at least 10 correct digits there) keeps every shipped table bit for bit.
    return _result(np.where(rate < SMALL_RATE, rate * rate / (1.0 + root), 1.0 - root))


def context_scaling(standard_beta: ArrayLike, overlap: ArrayLike) -> ArrayLike:
    """Standard CMR's ``rho = sqrt(1 + B^2 (c^2 - 1)) - B c``: the weight of the old context in the normalised update.

    Parameters
    ----------
    standard_beta : float or np.ndarray
        ``B`` in [0, 1].
    overlap : float or np.ndarray, broadcastable
        ``c = t . t_in`` in [0, 1] (unit, non-negative vectors).

    Returns
    -------
    float or np.ndarray
        ``rho``, with ``|rho t + B t_in| = 1``.
    """
    rate = checked_rate("standard_beta", standard_beta)
    dot = checked_rate("overlap", overlap)
    return _result(np.sqrt(1.0 + rate * rate * (dot * dot - 1.0)) - rate * dot)


def standard_retrieval_rate(beta_rec: ArrayLike, overlap: ArrayLike) -> ArrayLike:
    """The standard ``B_rec`` whose update equals [LI24]'s at the overlap ``c = t . t_in`` (module docstring).

    Parameters
    ----------
    beta_rec : float or np.ndarray
        [LI24]'s retrieval rate, in [0, 1].
    overlap : float or np.ndarray, broadcastable
        ``c`` in [0, 1]: the current context's overlap with the retrieved context.

    Returns
    -------
    float or np.ndarray
        ``beta_rec / sqrt(1 - 2 beta_rec (1 - beta_rec) (1 - c))``.
    """
    beta = checked_rate("beta_rec", beta_rec)
    dot = checked_rate("overlap", overlap)
    return _result(beta / np.sqrt(1.0 - 2.0 * beta * (1.0 - beta) * (1.0 - dot)))


def li24_retrieval_rate(standard_beta_rec: ArrayLike, overlap: ArrayLike) -> ArrayLike:
    """[LI24]'s ``beta_rec`` whose update equals standard CMR's ``B_rec`` at the overlap ``c`` (module docstring).

    Parameters
    ----------
    standard_beta_rec : float or np.ndarray
        Standard CMR's ``B_rec``, in [0, 1].
    overlap : float or np.ndarray, broadcastable
        ``c = t . t_in`` in [0, 1].

    Returns
    -------
    float or np.ndarray
        ``B_rec / (B_rec + rho(B_rec, c))``.
    """
    rate = checked_rate("standard_beta_rec", standard_beta_rec)
    rho = np.asarray(context_scaling(rate, overlap))
    with np.errstate(invalid="ignore", divide="ignore"):
        # B = 0 gives 0 / (0 + 1); B + rho > 0 otherwise (rho >= 0, B > 0).
        return _result(np.where(rate > 0, rate / np.maximum(rate + rho, np.finfo(float).tiny), 0.0))


def li24_retrieval_rate_range(standard_beta_rec: ArrayLike) -> Tuple[ArrayLike, ArrayLike]:
    """The [LI24] ``beta_rec`` values a standard ``B_rec`` spans over overlaps ``c`` in [0, 1].

    Parameters
    ----------
    standard_beta_rec : float or np.ndarray
        Standard CMR's ``B_rec``, in [0, 1].

    Returns
    -------
    low, high : float or np.ndarray
        ``B / (B + sqrt(1 - B^2))`` (``c = 0``; exact throughout a recall at ``gamma_ft = 0`` under the standard rule)
        and ``B`` itself (``c = 1``).
    """
    return li24_retrieval_rate(standard_beta_rec, 0.0), li24_retrieval_rate(standard_beta_rec, 1.0)


__all__ = ["checked_rate", "standard_encoding_rate", "li24_encoding_rate", "context_scaling", "standard_retrieval_rate",
           "li24_retrieval_rate", "li24_retrieval_rate_range"]
