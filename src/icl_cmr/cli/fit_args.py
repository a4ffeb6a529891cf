"""The flags shared by the scripts that fit heads to CMR.

``fit_attn_score.py``, ``attn_over_size*.py``, ``attn_over_time.py`` and ``select_fit*.py`` read the
same inputs (head-score folder, CMR grid), write figures to the same root and use the same CMR-like
threshold. Scripts are leaves (no script imports another), so their shared flags live here, with
:func:`load_grid`, which reads the grid those flags name. What the scripts compute is
:mod:`icl_cmr.experiments.fits` and :mod:`icl_cmr.experiments.head_fits`.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from icl_cmr.cli.args import positive_float
from icl_cmr.cli.flags import flag_errors
from icl_cmr.config import CMR_LIKE_THRESHOLD
from icl_cmr.files.grids import read_cmr_grid
from icl_cmr.config import DEFAULT_GRID_PATH
from icl_cmr.files.scores import DEFAULT_SCORES_DIR
from icl_cmr.fits.distance import CmrGrid

logger = logging.getLogger(__name__)

#: Root folder of every script's figures (``figs/<script name>/...``).
DEFAULT_FIGS_DIR = Path("figs")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every fitting script shares: inputs (scores, grid), outputs (figures), threshold."""
    parser.add_argument("--scores-dir", "--scores_dir", type=Path, default=DEFAULT_SCORES_DIR,
                        help="root folder of head-score files, <root>/<model>/*all_scores_*.pkl (default: %(default)s)")
    parser.add_argument("--crp-grid", "--crp_grid", type=Path, default=DEFAULT_GRID_PATH,
                        help="CMR CRP grid .npy [A, B, C, 17] (default: %(default)s; axes from a .json sidecar "
                             "for non-default shapes)")
    parser.add_argument("--crp-sem", "--crp_sem", type=Path, default=None,
                        help="SEM file of the grid (optional; default: the *sem* file beside --crp-grid if present)")
    parser.add_argument("--figs-dir", "--figs_dir", type=Path, default=DEFAULT_FIGS_DIR,
                        help="root folder for figures (default: %(default)s)")
    parser.add_argument("--threshold", type=positive_float, default=CMR_LIKE_THRESHOLD,
                        help="CMR distance below which a head is CMR-like (default: %(default)s, [LI24] Fig 5/6)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_figure_arguments(parser: argparse.ArgumentParser) -> None:
    """``--no-figures`` (results only, for sweeps) and ``--no-progress`` (no progress bar over pages)."""
    parser.add_argument("--no-figures", "--no_figures", action="store_true",
                        help="write the result files only, no PDFs (fast, for sweeps)")
    parser.add_argument("--no-progress", "--no_progress", action="store_true",
                        help="hide the progress bar over figure pages")


def load_grid(args: argparse.Namespace) -> CmrGrid:
    """The CMR grid named by ``--crp-grid`` / ``--crp-sem``."""
    with flag_errors(crp_grid="--crp-grid"):
        grid = read_cmr_grid(args.crp_grid, args.crp_sem)
    logger.info("CMR grid %s: %s points%s", grid.source, "x".join(map(str, grid.shape)),
                "" if grid.sem is not None else " (no SEM file)")
    return grid
