"""Paper constants shared by several modules, each defined once with its source.

Constants used by a single module live in that module's own config dataclass
(for example the CMR grid in :mod:`icl_cmr.cmr.grid`); the ones here are read
by more than one part of the engine and must agree everywhere.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: Lags of the attention CRP stored in head-score files: -8..+7 (16 values).
#: [LI24] authors' ``CRP_scores`` arrays have 16 entries; DESIGN.md section 2.
ATTN_CRP_LAGS: np.ndarray = np.arange(-8, 8)

#: Lags of the CMR CRP grid: -8..+8 (17 values). DESIGN.md section 3; the
#: authors' ``cmr_crp_avg_20_11.npy`` has 17 entries on its last axis.
CMR_CRP_LAGS: np.ndarray = np.arange(-8, 9)

#: Lags used when fitting a head to CMR: -5..+5. DESIGN.md section 4
#: ([LI24] ``fit_attn_score.py``).
FIT_LAGS: np.ndarray = np.arange(-5, 6)

#: Lags of a person's fit: [LI24]'s -5..+5 without lag 0, never a transition in a conditional lag-CRP.
HUMAN_FIT_LAGS: np.ndarray = FIT_LAGS[FIT_LAGS != 0]


#: A head is "CMR-like" when its CMR distance is below this. [LI24] Fig 5/6,
#: DESIGN.md section 4.
CMR_LIKE_THRESHOLD: float = 0.5

#: The stricter threshold of [LI24]'s supplementary figure. DESIGN.md section 4.
CMR_LIKE_STRICT_THRESHOLD: float = 0.1

#: Fewest pairs a paired comparison takes (the ablation's prompts, Fig 8): the paired t-test's standard
#: deviation of the differences has n - 1 degrees of freedom (:func:`icl_cmr.stats.paired_comparison`).
MIN_PAIRS: int = 2

#: CMR grid axes. DESIGN.md section 3: beta_enc in {0.05, ..., 1.0} (20),
#: beta_rec in {0, 0.05, ..., 1.0} (21), gamma_ft in {0, 0.1, ..., 1.0} (11).
#: Rounded so that grid values print and compare exactly (0.15, not 0.15000000000000002).
BETA_ENC_GRID: np.ndarray = np.round(np.arange(1, 21) * 0.05, 10)
BETA_REC_GRID: np.ndarray = np.round(np.arange(0, 21) * 0.05, 10)
GAMMA_FT_GRID: np.ndarray = np.round(np.arange(0, 11) * 0.1, 10)

#: File names of the CMR CRP grid (mean and SEM over start positions), the
#: authors' names, kept so their scripts and ours read the same files.
CMR_GRID_MEAN_FILENAME = "cmr_crp_avg_20_11.npy"
CMR_GRID_SEM_FILENAME = "cmr_crp_sem_20_11.npy"

#: The shipped grid, relative to the working directory (the repository root), as in [LI24].
DEFAULT_GRID_PATH = Path("saved_crps") / CMR_GRID_MEAN_FILENAME

#: Pythia training checkpoints analysed in [LI24] Fig 7: indices K into TransformerLens's list of
#: the v0 Pythia checkpoints (training step 1000 (K + 1)). Source: the authors'
#: ``attn_over_time.py`` (``cp_interv = 10``, ``n_cp = 143``: ``range(0, 143, 10) + [142]``).
CHECKPOINT_INDICES: tuple[int, ...] = tuple(range(0, 143, 10)) + (142,)

#: The final Pythia checkpoint (step 143000), used as "the trained model".
FINAL_CHECKPOINT: int = CHECKPOINT_INDICES[-1]
