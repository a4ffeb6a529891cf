"""Files: atomic writing with metadata, safe reading (restricted unpickling), the project's file formats
(head scores, CMR grids, fits, ablation results), all-or-nothing outputs and resumable runs.
"""
