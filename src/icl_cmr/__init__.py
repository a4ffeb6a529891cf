"""icl_cmr: induction heads as episodic memory.

The engine behind the scripts in ``src/``: head scores of Transformer attention
heads, the CMR model of human free recall and its CRP grid, CMR-distance fits,
ablations and in-context-learning scores. See README.md and DESIGN.md.
"""
from icl_cmr.files.writing import PACKAGE_VERSION as __version__

__all__ = ["__version__"]
