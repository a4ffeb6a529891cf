"""The long runs of the project, one module each: a settings dataclass in, a result out, no argparse.
The scripts in ``src/`` parse flags into these settings; a notebook can call them directly.
"""
