"""Output paths and names checked before any work: output files (check_writable_file), name flags that become
file names (plain_name), list flags that must not repeat (UniqueItems), options that go together (given_options)."""
from __future__ import annotations

import argparse
import os
import sys

import pytest

import attn_over_time
import fit_attn_score
import select_fit
import select_fit_xtra
from icl_cmr.cli.args import (OneLineErrorParser, UniqueItems, given_options, plain_name, positive_int,
                              refuse_options, run_cli, seed_int)
from icl_cmr.errors import InputError
from icl_cmr.files.folders import check_writable_file


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*")) if root.exists() else []


def _exit_code(main, argv):
    """run_cli's code, or argparse's own exit status when the error is raised while parsing."""
    try:
        return run_cli(main, argv)
    except SystemExit as exit_:
        return exit_.code


def _one_error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


# ----------------------------------------------------------------------------- check_writable_file

@pytest.mark.parametrize("text, message", [
    ("", "--out is empty"),
    ("   ", "--out is empty"),
    ("results/", "names a folder"),
    (".", "names a folder"),
    ("results/..", "names a folder"),
])
def test_an_output_file_name_that_names_no_file_is_refused(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=message):
        check_writable_file(text, "--out")
    assert _files(tmp_path) == []


def test_an_existing_folder_is_not_an_output_file(tmp_path):
    with pytest.raises(InputError, match="is an existing folder"):
        check_writable_file(str(tmp_path), "--out")


def test_a_device_is_not_replaced_by_an_output_file():
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null here")
    with pytest.raises(InputError, match="not a regular file"):
        check_writable_file("/dev/null", "--out")


def test_an_output_file_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(InputError, match=f"{blocker} is a file, not a folder"):
        check_writable_file(str(blocker / "sub" / "s.pkl"), "--out")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and /sys are Linux's")
@pytest.mark.parametrize("path", ["/proc/s.pkl", "/sys/s.pkl"])
def test_a_folder_where_no_file_can_be_created_is_refused_even_for_root(path):
    with pytest.raises(InputError, match="no file can be created in"):
        check_writable_file(path, "--out")


def test_a_writable_output_file_passes_and_nothing_is_left_behind(tmp_path):
    target = tmp_path / "new" / "deeper" / "s.pkl"
    assert check_writable_file(str(target), "--out") == target
    assert _files(tmp_path) == []  # neither the folders nor the probe file


# ----------------------------------------------------------------------------- plain_name

@pytest.mark.parametrize("text", ["gpt2-small", "EleutherAI__pythia-70m", "a..b", "toy_lm"])
def test_plain_names_pass_unchanged(text):
    assert plain_name(text) == text


@pytest.mark.parametrize("text", ["", " ", "../../escape", "a/b", "/abs", "a\\b", "..", ".", " x"])
def test_names_that_are_paths_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        plain_name(text)


def test_fit_attn_score_save_dir_cannot_write_outside_its_folders(tmp_path, capsys):
    argv = ["--save_dir", "../../escape", "--fits-dir", str(tmp_path / "R" / "fits"),
            "--figs-dir", str(tmp_path / "R" / "figs"), "--all_head_scores", str(tmp_path / "none.pkl")]
    assert _exit_code(fit_attn_score.main, argv) == 2
    assert "--save_dir: must be a plain name" in _one_error_line(capsys)
    assert _files(tmp_path) == []


def test_fit_attn_score_model_name_is_a_plain_name(tmp_path, capsys):
    assert _exit_code(fit_attn_score.main, ["--model", "../x", "--scores-dir", str(tmp_path)]) == 2
    assert "--model: must be a plain name" in _one_error_line(capsys)


def test_select_fit_tag_cannot_name_a_path(tmp_path, capsys):
    argv = ["--models", "pythia-70m", "--tag", "../../x", "--top-heads-dir", str(tmp_path / "T"),
            "--figs-dir", str(tmp_path / "F")]
    assert _exit_code(select_fit.main, argv) == 2
    assert "--tag: must be a plain name" in _one_error_line(capsys)
    assert _files(tmp_path) == []


def test_select_fit_xtra_models_name_files_so_they_are_plain_names(tmp_path, capsys):
    argv = ["--models", "../x", "--top-heads-dir", str(tmp_path / "T"), "--figs-dir", str(tmp_path / "F")]
    assert _exit_code(select_fit_xtra.main, argv) == 2
    assert "--models: must be a plain name" in _one_error_line(capsys)


def test_attn_over_time_model_name_is_a_plain_name(tmp_path, capsys):
    assert _exit_code(attn_over_time.main, ["--model_name", "a/b", "--figs-dir", str(tmp_path)]) == 2
    assert "--model_name: must be a plain name" in _one_error_line(capsys)
    assert _files(tmp_path) == []


def test_fit_attn_score_refuses_model_and_checkpoint_beside_a_score_file(tmp_path, capsys):
    argv = ["--all_head_scores", str(tmp_path / "s.pkl"), "--model", "gpt2-small", "--checkpoint", "3"]
    assert _exit_code(fit_attn_score.main, argv) == 2
    assert "--model, --checkpoint have no effect with --all_head_scores" in _one_error_line(capsys)


# ----------------------------------------------------------------------------- repeated list items

def _list_parser():
    parser = OneLineErrorParser()
    parser.add_argument("--seeds", type=seed_int, nargs="+", action=UniqueItems, default=[0, 1, 2])
    return parser


def test_a_repeated_list_item_is_refused_while_parsing(capsys):
    with pytest.raises(SystemExit) as exit_:
        _list_parser().parse_args(["--seeds", "0", "1", "0", "1", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: argument --seeds: repeats 0, 1; give each value once (see --help)\n"


def test_distinct_list_items_and_the_default_pass():
    assert _list_parser().parse_args(["--seeds", "2", "0"]).seeds == [2, 0]
    assert _list_parser().parse_args([]).seeds == [0, 1, 2]


@pytest.mark.parametrize("main, argv, flag", [
    (select_fit.main, ["--models", "pythia-70m", "pythia-70m"], "--model_name"),
    (select_fit.main, ["--n_top", "20", "20"], "--n_top"),
    (select_fit_xtra.main, ["--models", "qwen-7b", "qwen-7b"], "--models"),
    (attn_over_time.main, ["--checkpoints", "0", "0"], "--checkpoints"),
])
def test_scripts_refuse_repeated_models_and_sizes(tmp_path, capsys, main, argv, flag):
    assert _exit_code(main, argv + ["--figs-dir", str(tmp_path)]) == 2
    line = _one_error_line(capsys)
    assert f"{flag}: repeats" in line and "give each value once" in line


# ----------------------------------------------------------------------------- options that go together

def _group_parser():
    parser = OneLineErrorParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shots", type=positive_int, default=5)
    parser.add_argument("--name", default="x")
    parser.add_argument("--flag", action="store_true")
    parser.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[0])
    return parser


@pytest.mark.parametrize("argv, expected", [
    ([], set()),
    (["--shots", "5"], {"shots"}),               # given, even at its default value
    (["--no-bos", "--flag"], {"bos", "flag"}),
    (["--seeds", "3", "--name=x"], {"seeds", "name"}),
])
def test_given_options_are_those_on_the_command_line(argv, expected):
    assert given_options(_group_parser(), argv) == expected


def test_refused_options_are_named_in_one_line(capsys):
    parser = _group_parser()
    argv = ["--shots", "3", "--seeds", "1"]
    with pytest.raises(SystemExit):
        refuse_options(parser, given_options(parser, argv), ("shots", "seeds", "name"), "with --prompts-file")
    assert capsys.readouterr().err == ("error: --shots, --seeds have no effect with --prompts-file; drop them "
                                       "(see --help)\n")
    refuse_options(parser, given_options(parser, ["--flag"]), ("shots",), "never")  # not given: nothing happens
    assert capsys.readouterr().err == ""
