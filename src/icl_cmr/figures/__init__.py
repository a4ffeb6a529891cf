"""Every figure of the project. Functions here take results (arrays, tables, dataclasses) and return
matplotlib figures; they never read files and never save.
"""
