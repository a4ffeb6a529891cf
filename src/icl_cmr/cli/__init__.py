"""The command-line layer shared by the scripts in ``src/``: argument types, one-line errors, and the
fitting scripts' common flags.
"""
