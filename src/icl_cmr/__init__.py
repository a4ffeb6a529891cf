"""icl_cmr: induction heads as episodic memory.

The engine behind the scripts in ``src/``, one package per family (README "Layout"):
``cmr`` (the model of free recall and its CRP grid), ``heads`` (head scores of Transformer
language models), ``fits`` (CMR distance and fits), ``humans`` (people's recall in the same
space), ``interventions`` (ablations, ICL scores, pattern tasks), ``synthetic`` ([GD23]'s task),
``toy_lm`` (the bundled model); ``experiments`` runs them (a settings dataclass in, a result out),
``figures`` draws results, ``files`` reads and writes, ``cli`` is the command line.

The names a notebook uses most are importable from here, e.g.::

    from icl_cmr import CMRSettings, cmr_crp, read_cmr_grid, fit_heads

Each is imported on first use, so ``import icl_cmr`` stays instant (torch, transformers and
matplotlib load only when a name that needs them is used).
"""
from __future__ import annotations

import importlib
from typing import Dict, List

from icl_cmr import _compat
from icl_cmr.files.writing import PACKAGE_VERSION as __version__

#: Public name -> the module that defines it.
PUBLIC_NAMES: Dict[str, str] = {
    # CMR and its grid (DESIGN.md section 3)
    "CMRSettings": "icl_cmr.cmr.model", "cmr_crp": "icl_cmr.cmr.model",
    "mean_and_sem_over_starts": "icl_cmr.cmr.model", "simulate_recall": "icl_cmr.cmr.model",
    "GridSpec": "icl_cmr.cmr.grid",
    # head scores (section 2)
    "resolve_model": "icl_cmr.heads.models", "load_model": "icl_cmr.heads.models", "choose_bos": "icl_cmr.heads.models",
    "attention_crp": "icl_cmr.heads.scores", "induction_matching_score": "icl_cmr.heads.scores",
    "prefix_matching_score": "icl_cmr.heads.scores", "stream_attention_scores": "icl_cmr.heads.scores",
    "model_copying_scores": "icl_cmr.heads.copying", "HeadScores": "icl_cmr.heads.results",
    # fits (sections 4-5)
    "CmrGrid": "icl_cmr.fits.distance", "cmr_distance": "icl_cmr.fits.distance", "fit_heads": "icl_cmr.fits.distance",
    "select_lags": "icl_cmr.fits.distance",
    # people (section 8)
    "load_recall_data": "icl_cmr.humans.recall", "conditional_lag_crp": "icl_cmr.humans.recall",
    # files
    "read_cmr_grid": "icl_cmr.files.grids", "read_conditional_grid": "icl_cmr.files.grids",
    "read_head_scores": "icl_cmr.files.scores", "load_model_scores": "icl_cmr.files.scores",
    # experiments: settings in, result out, the command line's defaults
    "CmrGridSettings": "icl_cmr.experiments.cmr_grid", "run_cmr_grid": "icl_cmr.experiments.cmr_grid",
    "HeadScoreSettings": "icl_cmr.experiments.head_scores", "run_head_scores": "icl_cmr.experiments.head_scores",
    "AblationSettings": "icl_cmr.experiments.ablation", "check_ablation": "icl_cmr.experiments.ablation",
    "run_ablation": "icl_cmr.experiments.ablation",
}

__all__ = ["__version__", *PUBLIC_NAMES]

_compat.install(__name__)


def __getattr__(name: str):
    """Import a public name's module on first use (PEP 562)."""
    module = PUBLIC_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(PUBLIC_NAMES))
