"""Fitting heads to CMR (DESIGN.md sections 4-5): the CMR distance D, per-layer statistics and the analyses
behind Fig 5-7.
"""
