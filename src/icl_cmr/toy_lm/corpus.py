"""The toy model's corpus: the standard library's ``.py`` files and their train / held-out split.

The corpus is the running interpreter's standard library (``sysconfig.get_paths()["stdlib"]``),
without ``site-packages`` and without test suites. The train / held-out split is by file and
depends only on the file's path relative to the stdlib folder (a SHA-256 hash), so it is
deterministic, disjoint, and stable when files are added or removed (DESIGN.md section 9).
"""
from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path
from typing import List, Sequence, Tuple

from icl_cmr.errors import InputError
from icl_cmr.toy_lm.config import ToyLMConfig

#: Folder names whose files are left out of the corpus: installed packages and
#: test suites (the latter are a third of the stdlib's bytes and mostly
#: repetitive assertions).
EXCLUDED_DIR_NAMES = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})


def stdlib_dir() -> Path:
    """The running interpreter's standard-library folder (``sysconfig``'s ``stdlib`` path)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_files(root: "str | Path | None" = None) -> List[Path]:
    """All ``.py`` files of the standard library, sorted by relative path.

    Parameters
    ----------
    root : path-like, optional
        Folder to scan; default :func:`stdlib_dir`.

    Returns
    -------
    list of Path
        Files whose relative path contains none of :data:`EXCLUDED_DIR_NAMES`,
        sorted by their POSIX relative path (so the order is machine-independent).
    """
    root = Path(root) if root is not None else stdlib_dir()
    if not root.is_dir():
        raise InputError(f"standard-library folder {root} not found")
    files = []
    for folder, subfolders, names in os.walk(root):
        # Prune in place: never descend into site-packages (tens of thousands of files).
        subfolders[:] = [name for name in subfolders if name not in EXCLUDED_DIR_NAMES]
        files.extend(Path(folder) / name for name in names if name.endswith(".py"))
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def is_held_out(relative_path: str, held_out_percent: int, salt: str) -> bool:
    """Whether a file belongs to the held-out split.

    The first 8 bytes of ``sha256(salt + "/" + relative_path)`` read as an
    unsigned integer, modulo 100, below ``held_out_percent``: a split that
    depends on nothing but the file's own relative path.
    """
    digest = hashlib.sha256(f"{salt}/{relative_path}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < held_out_percent


def split_corpus_files(files: Sequence[Path], root: "str | Path", held_out_percent: int = 10,
                       salt: str = ToyLMConfig.split_salt) -> Tuple[List[Path], List[Path]]:
    """Split files into (train, held_out) by :func:`is_held_out` on their relative path.

    Returns
    -------
    (list of Path, list of Path)
        Disjoint lists in the input order.
    """
    root = Path(root)
    train, held_out = [], []
    for path in files:
        relative = Path(path).relative_to(root).as_posix()
        (held_out if is_held_out(relative, held_out_percent, salt) else train).append(Path(path))
    return train, held_out


def read_texts(files: Sequence[Path]) -> List[str]:
    """File contents as UTF-8 text (undecodable bytes replaced; a few stdlib files are Latin-1)."""
    return [Path(path).read_text(encoding="utf-8", errors="replace") for path in files]


def corpus_split(config: ToyLMConfig = ToyLMConfig(), root: "str | Path | None" = None
                 ) -> Tuple[List[Path], List[Path]]:
    """The (train, held_out) stdlib files for ``config``'s split."""
    root = Path(root) if root is not None else stdlib_dir()
    return split_corpus_files(stdlib_source_files(root), root, config.held_out_percent, config.split_salt)


def held_out_texts(config: ToyLMConfig = ToyLMConfig(), root: "str | Path | None" = None
                   ) -> List[Tuple[str, str]]:
    """The held-out stdlib files' text, for evaluating the bundled model (ICL score, ablations).

    The bundled model never saw these files in training. The split is the one
    recorded in ``saved_models/toy_lm/training_log.json`` (``held_out_percent``,
    ``split_salt``), so pass the same config when the defaults have changed.

    Parameters
    ----------
    config : ToyLMConfig
        Supplies ``held_out_percent`` and ``split_salt``.
    root : path-like, optional
        Standard-library folder; default :func:`stdlib_dir`.

    Returns
    -------
    list of (str, str)
        ``(relative_path, text)`` pairs sorted by relative path.

    Examples
    --------
    >>> docs = held_out_texts()
    >>> name, text = docs[0]
    """
    root = Path(root) if root is not None else stdlib_dir()
    _, held_out = corpus_split(config, root)
    return [(path.relative_to(root).as_posix(), text) for path, text in zip(held_out, read_texts(held_out))]


def corpus_fingerprint(files: Sequence[Path], root: "str | Path") -> str:
    """SHA-256 over the relative paths and bytes of ``files``: identifies the exact corpus trained on."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(Path(path).relative_to(root).as_posix().encode("utf-8") + b"\0")
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()

