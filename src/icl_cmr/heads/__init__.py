"""Attention heads of Transformer language models (DESIGN.md section 2): loading a model, its attention hooks,
the repeated-random-token prompts, and the head scores (matching, copying, prefix matching, attention CRP).
"""
