"""The layout is the architecture: families as packages, dependencies pointing one way, thin leaf scripts.

Read from the source with ``ast`` (nothing is imported), so a test names the file and the import that break a rule.
The rules (README "Layout", docs/conventions.md):

* scripts (``src/*.py``) -> ``cli``, ``experiments`` -> ``figures``, ``files`` -> the science packages -> the base
  modules (``config``, ``errors``, ``stats``, ``devices``); ``sweeps`` runs the scripts as processes;
* the science never imports files, command-line, figure or experiment code; figures never read files;
* no import cycle, and every import of the project at the top of its module;
* at most six modules at the engine's top level; every script a leaf under 250 lines.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
ENGINE = SRC / "icl_cmr"

BASE = {"config", "errors", "stats", "devices", "_compat"}
SCIENCE = {"cmr", "heads", "fits", "humans", "interventions", "synthetic", "toy_lm"}
#: What each part may import (besides itself).
ALLOWED = {
    "base": {"base"},
    "science": {"science", "base"},
    "figures": {"science", "base"},
    "files": {"science", "base"},
    "cli": {"files", "science", "base"},
    "experiments": {"figures", "files", "science", "base"},
    "sweeps": {"cli", "files", "science", "base"},
    "face": {"experiments", "figures", "files", "science", "base"},
}
MAX_TOP_LEVEL_MODULES = 6
MAX_SCRIPT_LINES = 250


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """The layer of an engine module: ``base``, ``science``, ``figures``, ``files``, ``cli``, ... or ``face``."""
    pieces = module.split(".")
    if len(pieces) == 1:
        return "face"
    family = pieces[1]
    if family in BASE:
        return "base"
    if family in SCIENCE:
        return "science"
    return family


def imports(path: Path) -> List[Tuple[str, int, bool]]:
    """``(imported icl_cmr module, line, at module level)`` for every import of the project in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names = [base] if base != "icl_cmr" else [f"icl_cmr.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name == "icl_cmr" or name.startswith("icl_cmr."):
                found.append((name, node.lineno, id(node) in top))
    return found


def engine_files() -> List[Path]:
    return sorted(ENGINE.rglob("*.py"))


def scripts() -> List[Path]:
    return sorted(SRC.glob("*.py"))


def resolve(name: str, known: Set[str]) -> str:
    """The module an imported name refers to (``icl_cmr.cmr.model.cmr_crp`` is in ``icl_cmr.cmr.model``)."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_the_engine_has_at_most_six_modules_at_its_top_level():
    top = sorted(p.name for p in ENGINE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_every_family_is_a_package_the_layer_rules_know():
    families = {p.name for p in ENGINE.iterdir() if (p / "__init__.py").is_file()}
    assert families <= SCIENCE | set(ALLOWED), families - SCIENCE - set(ALLOWED)


@pytest.mark.parametrize("path", engine_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_dependencies_point_one_way(path):
    module = module_name(path)
    layer = part_of(module)
    known = {module_name(p) for p in engine_files()}
    wrong = []
    for name, line, _ in imports(path):
        target = resolve(name, known)
        target_layer = part_of(target)
        if target_layer != layer and target_layer not in ALLOWED[layer]:
            wrong.append(f"line {line}: {layer} imports {target} ({target_layer})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", engine_files() + scripts(), ids=lambda p: str(p.relative_to(SRC)))
def test_the_project_is_imported_at_the_top_of_each_module(path):
    inside = [f"line {line}: {name}" for name, line, at_top in imports(path) if not at_top]
    assert not inside, "\n".join(inside)


def test_the_engine_has_no_import_cycle():
    known = {module_name(p) for p in engine_files()}
    graph: Dict[str, Set[str]] = defaultdict(set)
    for path in engine_files():
        module = module_name(path)
        for name, _, _ in imports(path):
            target = resolve(name, known)
            if target != module and not module.startswith(target + "."):  # a package's own __init__ is no edge
                graph[module].add(target)
    state: Dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]) if nxt in trail else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(known):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("path", scripts(), ids=lambda p: p.name)
def test_every_script_is_short(path):
    assert len(path.read_text().splitlines()) < MAX_SCRIPT_LINES
