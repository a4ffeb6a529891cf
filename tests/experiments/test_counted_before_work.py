"""Inputs counted, read and checked before the first model runs or the first figure is drawn (issue 25, item 3).

An ablation compares its conditions over prompts in pairs (:data:`icl_cmr.config.MIN_PAIRS`): data that
yields fewer prompts is refused before any forward pass and leaves no ``.partial`` folder. ``paper_figures.py``
reads every file it will draw from before drawing the first figure.
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import ablation
import paper_figures
from icl_cmr.cli.args import run_cli
from icl_cmr.experiments import ablation as ablation_experiment
from icl_cmr.experiments import paper_figures as figures_experiment

REPO = Path(__file__).resolve().parents[2]


def _one_error_line(main, argv, capsys) -> str:
    code = run_cli(main, argv)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and out == "" and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _files_under(folder: Path):
    return sorted(p.relative_to(folder) for p in folder.rglob("*")) if folder.exists() else []


def _ablation_argv(model_dir, data, out):
    return ["--model_name", str(model_dir), "--heads", "L0H0", "--data", str(data), "--seq-len", "24",
            "--late-index", "20", "--early-index", "3", "--n-eval", "8", "--batch-size", "2", "--out-dir",
            str(out / "saved"), "--figs-dir", str(out / "figs"), "--no-progress", "--device", "cpu"]


def _documents(path: Path, lengths) -> Path:
    path.write_text("".join(json.dumps({"text": " ".join(["memory"] * n)}) + "\n" for n in lengths))
    return path


def test_data_of_one_document_is_refused_before_the_model_loads(tiny_model_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ablation_experiment, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    data = _documents(tmp_path / "one.jsonl", [80])
    line = _one_error_line(ablation.main, _ablation_argv(tiny_model_dirs["gpt2"], data, tmp_path / "out"), capsys)
    assert line == (f"error: --data {data} holds 1 document: the paired statistics compare the conditions over at "
                    "least 2 prompts, one per document")
    assert _files_under(tmp_path / "out") == []


@pytest.mark.slow  # loads the tiny model's tokenizer and weights (about 1.4 s)
def test_one_prompt_long_enough_is_refused_before_any_forward_pass_and_leaves_no_partial_folder(
        tiny_model_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ablation_experiment, "evaluate_batch", lambda *a, **k: pytest.fail("the model ran"))
    monkeypatch.setattr(ablation_experiment, "mean_head_activations", lambda *a, **k: pytest.fail("the model ran"))
    data = _documents(tmp_path / "docs.jsonl", [80, 3, 2])  # two documents, but one reaches --seq-len tokens
    line = _one_error_line(ablation.main, _ablation_argv(tiny_model_dirs["gpt2"], data, tmp_path / "out"), capsys)
    assert line.startswith("error: only 1 document of the data reaches ")
    assert line.endswith("tokens: the paired statistics compare the conditions over at least 2 prompts")
    assert _files_under(tmp_path / "out") == []


def test_n_eval_below_two_is_refused_while_parsing(tiny_model_dirs, tmp_path, capsys):
    data = _documents(tmp_path / "docs.jsonl", [80, 80])
    argv = [*_ablation_argv(tiny_model_dirs["gpt2"], data, tmp_path / "out"), "--n-eval", "1"]
    with pytest.raises(SystemExit) as caught:
        run_cli(ablation.main, argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert err == ("error: argument --n-eval: must be an integer >= 2 (the paired statistics need 2 prompts), got 1 "
                   "(see --help)\n")


# ----------------------------------------------------------------------------- paper_figures.py

@pytest.fixture()
def official(tmp_path):
    """The authors' layout made of our shipped files (the bundled model's scores as 'gpt2-small')."""
    root = tmp_path / "official"
    (root / "saved_scores" / "gpt2-small").mkdir(parents=True)
    shutil.copy(REPO / "saved_scores" / "toy_lm" / "all_scores_toy_lm.pkl",
                root / "saved_scores" / "gpt2-small" / "all_scores_gpt2_small.pkl")
    shutil.copytree(REPO / "saved_crps", root / "saved_crps")
    (root / "saved_ablation").mkdir()
    shutil.copy(REPO / "saved_ablation" / "ablation_experiment_toy_lm.pkl",
                root / "saved_ablation" / "ablation_experiment_gpt2-small.pkl")
    return root


@pytest.fixture()
def no_figure_drawn(monkeypatch):
    refusing = tuple((name, _refuse_to_draw) for name, _ in figures_experiment.FIGURES)
    monkeypatch.setattr(figures_experiment, "FIGURES", refusing)


def _refuse_to_draw(*args, **kwargs):
    pytest.fail("a figure was drawn before every input was checked")


def _paper_argv(official: Path, out: Path):
    return ["--official", str(official), "--out-dir", str(out), "--no-progress"]


def test_a_damaged_ablation_file_is_refused_before_the_first_figure(official, tmp_path, capsys, no_figure_drawn):
    damaged = official / "saved_ablation" / "ablation_experiment_gpt2-small.pkl"
    damaged.write_bytes(damaged.read_bytes()[:200])
    line = _one_error_line(paper_figures.main, _paper_argv(official, tmp_path / "paper"), capsys)
    assert str(damaged) in line
    assert not (tmp_path / "paper").exists()


def test_a_damaged_score_file_of_a_second_model_is_refused_before_the_first_figure(official, tmp_path, capsys,
                                                                                  no_figure_drawn):
    other = official / "saved_scores" / "pythia-70m"
    other.mkdir()
    damaged = other / "all_scores_pythia-70m.pkl"
    damaged.write_bytes(b"\x80\x04not a whole pickle")
    line = _one_error_line(paper_figures.main, _paper_argv(official, tmp_path / "paper"), capsys)
    assert str(damaged) in line
    assert not (tmp_path / "paper").exists()


def test_an_ablation_of_one_prompt_is_refused_before_the_first_figure(official, tmp_path, capsys, no_figure_drawn):
    path = official / "saved_ablation" / "ablation_experiment_gpt2-small.pkl"
    with open(path, "rb") as handle:
        result = pickle.load(handle)
    # every per-prompt array cut to its first prompt (the last axis of the random sets' scores)
    one = {key: (np.asarray(value)[..., :1] if "icl_score" in key else value) for key, value in result.items()}
    with open(path, "wb") as handle:
        pickle.dump(one, handle)
    line = _one_error_line(paper_figures.main, _paper_argv(official, tmp_path / "paper"), capsys)
    assert line == f"error: {path} holds 1 prompt: Fig 8's paired statistics need at least 2"
    assert not (tmp_path / "paper").exists()
