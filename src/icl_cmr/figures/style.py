"""The look shared by the figures of fits ([LI24] Fig 4-7) and of people vs heads: labels, font size, axes, colours.

One home for what :mod:`icl_cmr.figures.fits` and :mod:`icl_cmr.figures.humans` draw alike, so a label or
a font size changes in one place.
"""
from __future__ import annotations

import matplotlib

#: Axis labels of the CMR parameters (beta_enc, beta_rec, gamma_ft), in
#: :data:`icl_cmr.fits.distance.PARAMETER_NAMES` order.
PARAMETER_LABELS = (r"$\beta_{\rm enc}$", r"$\beta_{\rm rec}$", r"$\gamma_{\rm FT}$")

#: Axis label of a fit's scale s, the inverse temperature 1/tau (DESIGN.md section 4).
INVERSE_TEMPERATURE_LABEL = r"$1/\tau$"

#: Font size (points) of tick labels and axis labels.
SMALL_FONT_SIZE = 7


def style_axes(ax) -> None:
    """Small tick labels and no top or right spine."""
    ax.tick_params(axis="both", labelsize=SMALL_FONT_SIZE)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def spaced_colors(n: int, cmap: str = "viridis") -> list:
    """``n`` colours evenly spread over the first 90% of ``cmap``, first to last.

    Parameters
    ----------
    n : int
        Number of colours.
    cmap : str
        A matplotlib colormap name.

    Returns
    -------
    list of RGBA tuples, length n
    """
    return [matplotlib.colormaps[cmap](i / max(n - 1, 1) * 0.9) for i in range(n)]
