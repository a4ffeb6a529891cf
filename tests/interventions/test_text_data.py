"""Evaluation text: local files, document filtering and truncation, offline C4."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from icl_cmr.errors import InputError
from icl_cmr.interventions.texts import TextDataConfig, iter_c4_texts, iter_prompts
from icl_cmr.files.texts import iter_local_texts


class WordTokenizer:
    """Stand-in tokenizer: one id per whitespace-separated word, id = int(word)."""

    def __call__(self, texts, add_special_tokens=False, verbose=False):
        assert add_special_tokens is False
        return {"input_ids": [[int(word) for word in text.split()] for text in texts]}


def _doc(length, start=1):
    return " ".join(str(start + i) for i in range(length))


def test_prompts_keep_long_documents_prepend_bos_and_truncate():
    docs = [_doc(3), _doc(5, start=10), _doc(9, start=20), _doc(4, start=40), _doc(6, start=50)]
    config = TextDataConfig(min_tokens=5, seq_len=4, encode_chunk=2)  # chunk 2: documents cross chunk borders
    prompts = list(iter_prompts(docs, WordTokenizer(), bos_token_id=0, config=config))
    # with BOS the lengths are 4, 6, 10, 5, 7: the first is dropped, the rest cut to 4 tokens
    expected = [[0, 10, 11, 12], [0, 20, 21, 22], [0, 40, 41, 42], [0, 50, 51, 52]]
    assert [p.tolist() for p in prompts] == expected
    assert all(p.dtype == np.int64 for p in prompts)


def test_without_bos_the_document_alone_must_reach_min_tokens():
    docs = [_doc(4), _doc(5, start=10)]
    config = TextDataConfig(min_tokens=5, seq_len=5)
    assert [p.tolist() for p in iter_prompts(docs, WordTokenizer(), None, config)] == [[10, 11, 12, 13, 14]]
    config = TextDataConfig(min_tokens=5, seq_len=5, prepend_bos=False)
    assert len(list(iter_prompts(docs, WordTokenizer(), 0, config))) == 1


def test_paper_lengths_and_their_validation():
    assert (TextDataConfig().min_tokens, TextDataConfig().seq_len) == (512, 512)
    with pytest.raises(InputError, match="--min-tokens 100 is below --seq-len 128"):
        TextDataConfig(min_tokens=100, seq_len=128)


def test_local_folder_is_read_in_sorted_path_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("third")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "first"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    (tmp_path / "notes.md").write_text("ignored")
    assert list(iter_local_texts(tmp_path)) == ["first", "second", "third"]
    assert list(iter_local_texts(tmp_path / "b" / "z.txt")) == ["third"]


def test_local_data_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="`data` .*missing.jsonl does not exist"):
        list(iter_local_texts(tmp_path / "missing.jsonl"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(InputError, match="unsupported file type '.csv'"):
        list(iter_local_texts(tmp_path / "x.csv"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(InputError, match="bad.jsonl: line 2 has no string field 'text'"):
        list(iter_local_texts(tmp_path / "bad.jsonl"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no .txt or .jsonl files"):
        list(iter_local_texts(empty))


def test_c4_fails_fast_with_one_line_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(InputError, match="pass `data` PATH with local"):
        next(iter_c4_texts())
    assert time.monotonic() - start < 10


def test_split_at_blank_lines_keeps_order_and_minimum_length():
    from icl_cmr.interventions.texts import split_at_blank_lines

    paragraphs = [f"para {i} " + "x" * (10 * (i % 3 + 1)) for i in range(12)]
    text = "\n\n".join(paragraphs)
    pieces = split_at_blank_lines(text, min_chars=40)
    assert all(len(piece) >= 40 - 2 for piece in pieces)
    joined = "\n\n".join(pieces)
    assert text.startswith(joined)
    # Only a remainder shorter than the minimum is dropped.
    assert len(text) - len(joined) < 40 + 2
