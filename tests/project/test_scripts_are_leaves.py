"""Scripts are leaves: no script in src/ imports another script (STYLE.md); what they share is in the engine."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

def imported_modules(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_script_imports_another_script():
    scripts = {path.stem: path for path in SRC.glob("*.py")}
    offenders = {}
    for name, path in scripts.items():
        others = (imported_modules(path) & set(scripts)) - {name}
        if others:
            offenders[path.name] = sorted(others)
    assert offenders == {}
