"""The README is a short front door; every script's --help names its doc page, and that page exists."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from icl_cmr.cli.args import SCRIPT_DOCS, OneLineErrorParser

REPO = Path(__file__).resolve().parents[2]


def test_every_script_has_a_doc_page_that_exists():
    scripts = sorted(path.name for path in (REPO / "src").glob("*.py"))
    assert [name for name in scripts if name not in SCRIPT_DOCS] == []
    assert [doc for doc in SCRIPT_DOCS.values() if not (REPO / doc).is_file()] == []


def test_help_ends_with_the_scripts_doc_page():
    text = " ".join(OneLineErrorParser(prog="attn_over_time.py").format_help().split())
    assert text.endswith("Documentation: docs/fitting.md (flags, defaults and why, formats, measured numbers).")
    assert OneLineErrorParser(prog="x.py", epilog="own").epilog == "own"


@pytest.mark.slow
def test_a_script_run_from_the_shell_prints_its_doc_page():
    result = subprocess.run([sys.executable, "src/plot_crp.py", "--help"], cwd=REPO, capture_output=True, text=True,
                            check=True)
    assert "Documentation: docs/fitting.md" in " ".join(result.stdout.split())


def test_readme_is_at_most_200_lines_and_its_links_exist():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links and [link for link in links if not (REPO / link).is_file()] == []


def test_every_doc_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    pages = sorted(path.relative_to(REPO).as_posix() for path in (REPO / "docs").glob("*.md"))
    assert [page for page in pages if f"]({page})" not in readme] == []
