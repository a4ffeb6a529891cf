"""Causal tests of heads (DESIGN.md sections 5-6): head ablation and attention knockout, the ICL score and its
per-batch evaluation, and [CS24]'s pattern-matching tasks and their scoring.
"""
