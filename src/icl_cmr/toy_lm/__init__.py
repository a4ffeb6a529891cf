"""The bundled toy language model (DESIGN.md section 9): corpus, tokenizer, model, training and scoring.
"""
