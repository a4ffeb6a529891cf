"""CMR, the Context Maintenance and Retrieval model of free recall as [LI24] simulate it (DESIGN.md section 3):
the model and its exact CRPs (:mod:`~icl_cmr.cmr.model`), the compiled draws (:mod:`~icl_cmr.cmr.kernels`),
the standard recall rule (:mod:`~icl_cmr.cmr.standard_rule`), the conditional lag-CRP
(:mod:`~icl_cmr.cmr.conditional`), the parameter grid (:mod:`~icl_cmr.cmr.grid`), the conversion between
[LI24]'s parameters and standard CMR's (:mod:`~icl_cmr.cmr.scales`) and the literature's human fits
(:mod:`~icl_cmr.cmr.literature`).

The model's main functions are importable from the package itself: ``from icl_cmr.cmr import cmr_crp``. They are
imported on first use (PEP 562), so that ``icl_cmr.cmr.scales`` and ``icl_cmr.cmr.literature`` (read by figure
code) do not load numba.
"""
from __future__ import annotations

import importlib
from typing import List

__all__ = ["CMRSettings", "check_parameters", "cmr_crp", "crp_from_draws", "encoding_matrix", "exact_crp",
           "mean_and_sem_over_starts", "simulate_recall"]


def __getattr__(name: str):
    """Import the model's public names on first use (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("icl_cmr.cmr.model"), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
