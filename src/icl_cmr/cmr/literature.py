"""Human CMR fits from the literature, with their sources, their scale, and their values on [LI24]'s scale.

[LI24] Fig 7 draws seven human (beta_enc, beta_rec) fits beside the heads' fits (their ``beta_cmp.py`` holds the
constants and, in comments, the paper each comes from). Every one was fitted with a model of the TCM/CMR family
whose context update is the normalised ``t_i = rho_i t_(i-1) + B t_i^IN``, not [LI24]'s linear mix, so the
published numbers sit on standard CMR's scale (:mod:`icl_cmr.cmr.scales`). Drawn unconverted on [LI24]'s axes,
as the paper does, an encoding rate ``B_enc`` of 0.79 reads as [LI24]'s 0.79 although the same gradient is
[LI24]'s 0.387.

What was checked, and how (issue 24; docs/cmr_grid.md#scales-li24s-parameters-are-not-standard-cmrs): for each
source, the context update of the code that implements its model. For TCM-A (Sederberg et al. 2008) only the
family's definition (Howard & Kahana 2002's TCM) could be read; for CMR (Polyn et al. 2009) the update of ``cymr`` (Morton & Polyn 2016's implementation,
``operations.pyx``: ``calc_rho``); for CMR2 (Lohnas et al. 2015) the Python port of the paper's MATLAB code
(``pyCMR2.advance_context``); for Zhang et al. (2023) the CMR code their group released, "modified from"
pyCMR2 (``advance_context``, the same normalised step). The numbers themselves are [LI24]'s; none could be
compared with the source paper's parameter table with the tools at hand ("value" below says so).

:func:`literature_points` gives the values on either scale: ``"published"`` (as [LI24] plot them) or ``"li24"``
(``beta_enc`` converted exactly, :func:`icl_cmr.cmr.scales.li24_encoding_rate`; ``beta_rec`` at a chosen overlap,
by default ``c = 0``, the lower end of the range :func:`literature_ranges` gives, because no constant conversion
of a retrieval rate exists).
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

from icl_cmr.cmr.scales import checked_rate, li24_encoding_rate, li24_retrieval_rate, li24_retrieval_rate_range
from icl_cmr.errors import InputError

#: Scales a literature value can be returned on.
SCALES = ("published", "li24")

_NORMALISED = "normalised: t_i = rho_i t_(i-1) + B t_i^IN, |t_i| = 1 (standard CMR scale)"
_VALUE_UNCHECKED = ("value: [LI24]'s constant (beta_cmp.py), not compared with the source's parameter table "
                    "(the paper's full text could not be read with our tools)")


@dataclass(frozen=True)
class LiteratureFit:
    """One human CMR fit drawn in [LI24] Fig 7.

    Attributes
    ----------
    label : str
        The name the figures and :data:`icl_cmr.fits.layers.HUMAN_FITS` use.
    fitted_by : str
        The paper that reports the fit.
    data : str
        The free-recall data it fitted.
    model : str
        The model variant.
    update_rule : str
        The context update the fit's rates belong to (its scale).
    checked : str
        What was checked of the update rule and of the value, and how.
    beta_enc, beta_rec : float
        The rates as published (and as [LI24] plot them): standard CMR's ``B_enc``, ``B_rec``.
    """

    label: str
    fitted_by: str
    data: str
    model: str
    update_rule: str
    checked: str
    beta_enc: float
    beta_rec: float

    @property
    def li24_beta_enc(self) -> float:
        """``beta_enc`` on [LI24]'s scale: the same encoding gradient, exactly (:mod:`icl_cmr.cmr.scales`)."""
        return float(li24_encoding_rate(self.beta_enc))

    @property
    def li24_beta_rec_range(self) -> Tuple[float, float]:
        """The [LI24] ``beta_rec`` values this ``B_rec`` equals over overlaps ``c = t . t_in`` in [0, 1]."""
        low, high = li24_retrieval_rate_range(self.beta_rec)
        return float(low), float(high)

    def on_scale(self, scale: str = "published", retrieval_overlap: float = 0.0) -> Tuple[float, float]:
        """``(beta_enc, beta_rec)`` on ``scale`` (:func:`literature_points`)."""
        if scale not in SCALES:
            raise InputError(f"`scale` must be one of {', '.join(SCALES)}, got {scale!r}", parameters=("scale",))
        if scale == "published":
            return self.beta_enc, self.beta_rec
        return self.li24_beta_enc, float(li24_retrieval_rate(self.beta_rec, retrieval_overlap))


def _cmr2(label: str, data: str, beta_enc: float, beta_rec: float) -> LiteratureFit:
    return LiteratureFit(
        label, "Lohnas, Polyn & Kahana (2015), Expanding the scope of memory search: modeling intralist and "
        "interlist effects in free recall, Psychological Review 122(2), 337-363", data, "CMR2", _NORMALISED,
        "rule: pyCMR2 (Python port of the paper's MATLAB code), advance_context: rho = sqrt(1 + B^2 ((c.c_in)^2 - "
        "1)) - B c.c_in; " + _VALUE_UNCHECKED, beta_enc, beta_rec)


def _cmr(label: str, data: str, beta_enc: float, beta_rec: float) -> LiteratureFit:
    return LiteratureFit(
        label, "Polyn, Norman & Kahana (2009), A context maintenance and retrieval model of organizational processes "
        "in free recall, Psychological Review 116(1), 129-156", data, "CMR", _NORMALISED,
        "rule: cymr (Morton & Polyn 2016's implementation of CMR), operations.pyx calc_rho / integrate_context; "
        + _VALUE_UNCHECKED, beta_enc, beta_rec)


#: The seven fits of [LI24] Fig 7, in their order, with [LI24]'s constants (``beta_cmp.py``).
LITERATURE_FITS: Tuple[LiteratureFit, ...] = (
    LiteratureFit(
        "Sederberg 2008", "Sederberg, Howard & Kahana (2008), A context-based theory of recency and contiguity in "
        "free recall, Psychological Review 115(4), 893-912", "not named by [LI24]", "TCM-A", _NORMALISED,
        "rule: TCM's update (Howard & Kahana 2002), which TCM-A keeps; not read in the paper itself. [LI24] plot "
        "one value for both rates; whether TCM-A has separate encoding and retrieval rates is unchecked; "
        + _VALUE_UNCHECKED, 0.62676, 0.62676),
    _cmr2("Lohnas 2015", "externalized free recall experiment ([LI24]'s note)", 0.481, 0.329),
    _cmr2("Jang & Huber 2008", "Jang & Huber (2008)", 0.182, 0.754),
    _cmr2("Loess 1967", "Loess (1967)", 0.635, 0.937),
    _cmr("Murdock 1962", "Murdock (1962)", 0.745, 0.36),
    _cmr("Murdock 1970", "Murdock & Okada (1970)", 0.621, 0.179),
    LiteratureFit(
        "Kahana 2002", "Zhang, Griffiths & Norman (2023), Optimal policies for free recall, Psychological Review "
        "130(4)", "Kahana, Howard, Zaromb & Wingfield (2002)", "CMR (CMR2-based, Luce choice rule)", _NORMALISED,
        "rule: the CMR code released by Zhang's group, 'modified from' pyCMR2, advance_context (same normalised "
        "step); " + _VALUE_UNCHECKED + "; pyCMR2's own example fit of the same data has B_enc 0.520, B_rec 0.628",
        0.79, 0.59),
)


def literature_points(scale: str = "published", retrieval_overlap: float = 0.0,
                      decimals: int | None = None) -> Dict[str, Tuple[float, float]]:
    """``{label: (beta_enc, beta_rec)}`` of the literature fits on one scale.

    Parameters
    ----------
    scale : {"published", "li24"}
        ``"published"``: standard CMR's rates as the sources report them (and as [LI24] Fig 7 draws them).
        ``"li24"``: ``beta_enc`` converted exactly; ``beta_rec`` converted at ``retrieval_overlap``.
    retrieval_overlap : float
        The overlap ``c = t . t_in`` for ``beta_rec`` on [LI24]'s scale, in [0, 1]. Default 0: the lower end of
        :func:`literature_ranges` (exact throughout a recall at ``gamma_ft = 0`` under the standard recall rule).
    decimals : int, optional
        Round the values to this many decimals (>= 0).

    Returns
    -------
    dict of str -> (float, float)

    Raises
    ------
    InputError
        An unknown ``scale``; ``retrieval_overlap`` outside [0, 1], or not 0 with ``scale="published"`` (which
        converts nothing); ``decimals`` not an integer >= 0.
    """
    if scale not in SCALES:
        raise InputError(f"`scale` must be one of {', '.join(SCALES)}, got {scale!r}", parameters=("scale",))
    overlap = float(checked_rate("retrieval_overlap", retrieval_overlap))
    if scale == "published" and overlap != 0:
        raise InputError(f"`retrieval_overlap` ({retrieval_overlap!r}) converts beta_rec to [LI24]'s scale: it applies "
                         "to `scale` li24 only", parameters=("retrieval_overlap", "scale"))
    if decimals is not None and (isinstance(decimals, bool) or not isinstance(decimals, numbers.Integral)
                                 or decimals < 0):
        raise InputError(f"`decimals` must be an integer >= 0, got {decimals!r}", parameters=("decimals",))
    points = {fit.label: fit.on_scale(scale, overlap) for fit in LITERATURE_FITS}
    if decimals is not None:
        points = {label: (round(a, decimals), round(b, decimals)) for label, (a, b) in points.items()}
    return points


def literature_ranges() -> Dict[str, Tuple[float, float, float]]:
    """``{label: (beta_enc, beta_rec_low, beta_rec_high)}`` on [LI24]'s scale: the exact encoding rate and the span
    of retrieval rates over overlaps ``c`` in [0, 1] (``c = 0`` gives the low end, ``c = 1`` the published value)."""
    return {fit.label: (fit.li24_beta_enc, *fit.li24_beta_rec_range) for fit in LITERATURE_FITS}


def literature_table() -> List[dict]:
    """One dict per fit: every field, plus the [LI24]-scale values (for tables and metadata)."""
    rows = []
    for fit in LITERATURE_FITS:
        low, high = fit.li24_beta_rec_range
        rows.append({**asdict(fit), "li24_beta_enc": fit.li24_beta_enc, "li24_beta_rec_low": low,
                     "li24_beta_rec_high": high})
    return rows


__all__ = ["SCALES", "LiteratureFit", "LITERATURE_FITS", "literature_points", "literature_ranges", "literature_table"]
