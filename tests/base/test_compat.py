"""The former flat module paths (the last release's notebook and docs) still import, with a DeprecationWarning."""
from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

from icl_cmr import _compat

ROOT = Path(__file__).resolve().parents[2]


def _fresh(name: str):
    sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(name)
    return module, caught


@pytest.mark.parametrize("former", sorted(_compat.FORMER_MODULES))
def test_every_former_module_points_at_modules_that_exist(former):
    for target in _compat.FORMER_MODULES[former]:
        assert importlib.util.find_spec(f"icl_cmr.{target}") is not None, f"icl_cmr.{former} -> icl_cmr.{target}"


def test_a_former_path_warns_once_and_names_the_new_home():
    module, caught = _fresh("icl_cmr.fitting")
    from icl_cmr.fits.distance import fit_heads

    assert module.fit_heads is fit_heads
    assert [str(w.message) for w in caught if w.category is DeprecationWarning] == [
        "icl_cmr.fitting is now icl_cmr.fits.distance; the old path goes in the release after next"]


def test_a_former_module_split_in_two_finds_names_in_both():
    module, _ = _fresh("icl_cmr.io")
    from icl_cmr.files.reading import load_json
    from icl_cmr.files.writing import save_json

    assert module.load_json is load_json and module.save_json is save_json
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        module.nonexistent


def test_the_previous_releases_notebook_imports_still_work():
    """Every ``from icl_cmr.X import a, b`` of the notebook as it was shipped before the layout by family."""
    notebook = (ROOT / "tests" / "data" / "demo_notebook_imports_0.1.txt").read_text()
    statements = [node for node in ast.parse(notebook).body if isinstance(node, ast.ImportFrom)]
    assert len(statements) == 12
    for statement in statements:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            imported = importlib.import_module(statement.module)
        for alias in statement.names:
            assert hasattr(imported, alias.name), f"{statement.module}.{alias.name}"


@pytest.mark.parametrize("package", ["cmr", "toy_lm", "cli"])
def test_no_former_path_names_a_package_that_exists(package):
    """A finder is consulted only for names that do not exist: an entry for a package would be dead."""
    assert package not in _compat.FORMER_MODULES
