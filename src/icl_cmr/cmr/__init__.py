"""CMR, the Context Maintenance and Retrieval model of free recall as [LI24] simulate it (DESIGN.md section 3):
the model and its exact CRPs (:mod:`~icl_cmr.cmr.model`), the compiled draws (:mod:`~icl_cmr.cmr.kernels`),
the conditional lag-CRP (:mod:`~icl_cmr.cmr.conditional`), and the parameter grid (:mod:`~icl_cmr.cmr.grid`).

The model's main functions are importable from the package itself: ``from icl_cmr.cmr import cmr_crp``.
"""
from icl_cmr.cmr.model import (CMRSettings, check_parameters, cmr_crp, crp_from_draws, encoding_matrix, exact_crp,
                               mean_and_sem_over_starts, simulate_recall)

__all__ = ["CMRSettings", "check_parameters", "cmr_crp", "crp_from_draws", "encoding_matrix", "exact_crp",
           "mean_and_sem_over_starts", "simulate_recall"]
