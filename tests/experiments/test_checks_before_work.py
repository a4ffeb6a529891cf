"""Scripts not covered elsewhere check their output folders before any expensive work (issue 17 item 10)."""
from __future__ import annotations

import pytest

import pattern_icl
import plot_crp
import train_toy_lm
from icl_cmr.cli.args import run_cli
from icl_cmr.toy_lm import training_run


def _one_error(main, argv, capsys):
    code = run_cli(main, argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err
    return code, errors


@pytest.fixture()
def blocker(tmp_path):
    path = tmp_path / "blocker"
    path.write_text("a file where a folder should be")
    return path


def test_pattern_icl_checks_its_output_folders_before_loading_the_model(tiny_model_dirs, blocker, capsys,
                                                                        monkeypatch):
    import icl_cmr.heads.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad output folder was reported")

    monkeypatch.setattr(icl_cmr.heads.models, "load_model", refuse)
    code, errors = _one_error(pattern_icl.main, ["--model", str(tiny_model_dirs["gpt2"]), "--heads", "L1H0",
                                                 "--out-dir", str(blocker / "out")], capsys)
    assert code == 2 and len(errors) == 1 and f"{blocker} is a file" in errors[0] and "--out-dir" in errors[0]


def test_plot_crp_checks_its_figure_folder_before_reading_any_data(blocker, capsys, monkeypatch):
    monkeypatch.setattr(plot_crp, "read_cmr_grid", lambda *a: pytest.fail("the grid was read first"))
    code, errors = _one_error(plot_crp.main, ["--figs-dir", str(blocker / "figs")], capsys)
    assert code == 2 and len(errors) == 1 and f"{blocker} is a file" in errors[0]


def test_train_toy_lm_checks_the_snapshot_folder_before_reading_the_corpus(tmp_path, blocker, capsys, monkeypatch):
    monkeypatch.setattr(training_run, "corpus_split", lambda *a: pytest.fail("the corpus was read first"))
    code, errors = _one_error(train_toy_lm.main, ["--save_dir", str(tmp_path / "model"),
                                                  "--snapshot_dir", str(blocker / "snapshots")], capsys)
    assert code == 2 and len(errors) == 1 and "--snapshot_dir" in errors[0]
    assert not (tmp_path / "model").exists()


def test_train_toy_lm_refuses_a_stdlib_folder_without_py_files_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(training_run, "train_tokenizer", lambda *a: pytest.fail("the tokenizer was trained"))
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "notes.txt").write_text("no Python here")
    code, errors = _one_error(train_toy_lm.main, ["--save_dir", str(tmp_path / "model"),
                                                  "--stdlib_dir", str(tmp_path / "lib")], capsys)
    assert code == 2 and errors == [f"error: --stdlib_dir {tmp_path / 'lib'} holds no .py files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib"]


def test_train_toy_lm_refuses_a_folder_whose_held_out_split_would_be_empty(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(training_run, "train_tokenizer", lambda *a: pytest.fail("the tokenizer was trained"))
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.py").write_text("x = 1\n")   # a.py hashes into the training split
    code, errors = _one_error(train_toy_lm.main, ["--save_dir", str(tmp_path / "model"),
                                                  "--stdlib_dir", str(tmp_path / "lib")], capsys)
    assert code == 2 and len(errors) == 1
    assert "holds only 1 .py file(s): the held-out split (10% of files are held out" in errors[0]


def test_train_toy_lm_context_too_short_names_the_users_flag(tmp_path, capsys):
    try:
        code = run_cli(train_toy_lm.main, ["--n_ctx", "1", "--save_dir", str(tmp_path / "model")])
    except SystemExit as exit_:   # argparse's own error: one line, exit 2
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines() == [
        "error: argument --n_ctx: must be an integer >= 201 (a training row holds a copied span of up to 100 tokens "
        "twice; a matching-score prompt is BOS + 2 x 100 tokens), got 1 (see --help)"]
    assert "copy_span_max" not in err and not (tmp_path / "model").exists()
