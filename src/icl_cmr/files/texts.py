"""Local text files for ICL scores: a ``.txt`` file (one document), a ``.jsonl`` file (one per line), or a
folder of them, read in a reproducible order (sorted paths, line order). The C4 stream and the prompts
made from any text source are :mod:`icl_cmr.interventions.texts`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from icl_cmr.errors import FileContentError, InputError
from icl_cmr.files.reading import iter_jsonl, read_text


#: Local file types read by :func:`iter_local_texts`.
LOCAL_SUFFIXES = (".txt", ".jsonl")


def iter_local_texts(path: "str | Path", field: str = "text") -> Iterator[str]:
    """Documents from a ``.txt`` file (one document), a ``.jsonl`` file (one per line), or a folder of them.

    Parameters
    ----------
    path : path-like
        A file, or a folder searched recursively for ``*.txt`` and ``*.jsonl``
        (sorted by path, so the order is reproducible).
    field : str
        JSONL field holding the text.

    Yields
    ------
    str

    Raises
    ------
    InputError
        A path that does not exist, an unsupported file type, or a folder without such files.
    CorruptFileError
        A file that is not UTF-8 text, or a JSONL line that is not valid JSON.
    FileContentError
        A JSONL line that is not an object with a string ``field``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"`data` {path} does not exist", parameters=("data",))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
        if not files:
            raise InputError(f"`data` folder {path} holds no {' or '.join(LOCAL_SUFFIXES)} files", parameters=("data",))
    else:
        if path.suffix not in LOCAL_SUFFIXES:
            raise InputError(f"`data` {path}: unsupported file type {path.suffix!r}; accepted: "
                             f"{', '.join(LOCAL_SUFFIXES)} (or a folder of them)", parameters=("data",))
        files = [path]
    for file in files:
        if file.suffix == ".txt":
            yield read_text(file)
            continue
        for number, record in iter_jsonl(file):
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise FileContentError(file, f"line {number} has no string field {field!r}")
            yield record[field]

