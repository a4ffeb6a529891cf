"""A value given twice in a list is refused, not silently dropped or computed twice (issue 25, item 4).

(``--heads`` and the space-separated lists are tested with their scripts; sweep plans in tests/sweeps.)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import eval_induction
from icl_cmr.cli.args import comma_list, positive_int, run_cli
from icl_cmr.experiments import induction_eval as experiment

REPO = Path(__file__).resolve().parents[2]


def test_a_comma_list_refuses_a_repeated_value_naming_it_once():
    parse = comma_list(positive_int)
    assert parse("16,32,64") == (16, 32, 64)
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        parse("16,32,16,64,32,16")
    assert str(caught.value) == "repeats 16, 32 in '16,32,16,64,32,16'; give each value once"


def test_the_same_model_file_twice_is_refused_before_any_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(experiment, "load_induction_model", lambda *a, **k: pytest.fail("a model was loaded"))
    model = REPO / "saved_models" / "induction_task" / "absolute.pt"
    same = model.parent / "." / model.name
    code = run_cli(eval_induction.main, ["--models", str(model), str(same), "--save_dir", str(tmp_path / "out"),
                                         "--fig_dir", str(tmp_path / "figs"), "--max_log2", "7"])
    assert code == 2
    assert capsys.readouterr().err == f"error: --models repeats {same}; give each model once\n"
    assert list(tmp_path.iterdir()) == []
