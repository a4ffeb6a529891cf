"""The command-line layer: argument types, one-line argparse errors, devices, OS errors, atomic writes.

Every script in ``src/*.py`` is covered: it builds its parser with ``OneLineErrorParser``, no
flag is a bare ``int``/``float``, every numeric flag refuses nan and inf, and ``--device`` is
checked while parsing. Bad input ends with exit code 2, exactly one ``error:`` line on stderr,
no traceback and nothing written.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from icl_cmr.cli import args as cli
from icl_cmr import devices
from icl_cmr.cli.args import OneLineErrorParser, comma_list, device_arg, float_range, int_range, run_cli, str2bool
from icl_cmr.errors import InputError
from icl_cmr.files.writing import atomic_write, save_json, save_npy, save_pickle

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(path.stem for path in (REPO_ROOT / "src").glob("*.py"))
#: Scripts that take ``--device`` (found by text so that collection imports nothing).
DEVICE_SCRIPTS = [s for s in SCRIPTS if '"--device"' in (REPO_ROOT / "src" / f"{s}.py").read_text(encoding="utf-8")]


def _rejects(arg_type, text) -> str:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        arg_type(text)
    return str(caught.value)


# ----------------------------------------------------------------------------- numeric types

FLOAT_TYPES = {"finite_float": cli.finite_float, "positive_float": cli.positive_float,
               "non_negative_float": cli.non_negative_float, "probability": cli.probability,
               "fraction": cli.fraction, "percent (0, 100]": float_range(0.0, 100.0, low_open=True)}
INT_TYPES = {"positive_int": cli.positive_int, "non_negative_int": cli.non_negative_int,
             "seed_int": cli.seed_int, "int_range(2)": int_range(2)}


@pytest.mark.parametrize("name", sorted({**FLOAT_TYPES, **INT_TYPES}))
@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "", "abc", "1,5", "0x10"])
def test_every_numeric_type_rejects_non_finite_and_garbage_text(name, text):
    message = _rejects({**FLOAT_TYPES, **INT_TYPES}[name], text)
    assert message.startswith("must be ") and ", got " in message


@pytest.mark.parametrize("text", ["1.5", "1e3", "2.0"])
def test_integer_types_reject_non_integer_numbers(text):
    assert _rejects(cli.positive_int, text) == f"must be a positive integer, got {text!r}"


@pytest.mark.parametrize("arg_type, accepted, rejected", [
    (cli.positive_int, ["1", "7", " 12 "], ["0", "-1"]),
    (cli.non_negative_int, ["0", "3"], ["-1"]),
    (cli.seed_int, ["0", str(2 ** 32 - 1)], ["-1", str(2 ** 32)]),
    (cli.positive_float, ["1e-12", "3.5", "1e300"], ["0", "-0.0", "-1e-12"]),
    (cli.non_negative_float, ["0", "0.5"], ["-1e-12", "-1"]),
    (cli.probability, ["0", "0.25", "1"], ["-0.01", "1.0000001"]),
    (cli.fraction, ["1e-9", "0.1", "1"], ["0", "1.5"]),
    (float_range(0.0, 0.5, high_open=True), ["0", "0.4999"], ["0.5", "-0.1"]),
    (int_range(2, 5), ["2", "5"], ["1", "6"]),
])
def test_bounds_are_inclusive_or_exclusive_as_declared(arg_type, accepted, rejected):
    for text in accepted:
        assert arg_type(text) == type(arg_type(text))(text.strip())
    for text in rejected:
        assert _rejects(arg_type, text) == f"must be {arg_type.description}, got {text}"


def test_types_return_python_numbers_of_their_kind():
    assert type(cli.positive_int("3")) is int and type(cli.positive_float("3")) is float


@pytest.mark.parametrize("arg_type, description", [
    (cli.positive_int, "a positive integer"), (cli.non_negative_int, "a non-negative integer"),
    (cli.positive_float, "a finite number > 0"), (cli.non_negative_float, "a finite number >= 0"),
    (cli.probability, "a number in [0, 1]"), (cli.fraction, "a number in (0, 1]"),
    (cli.finite_float, "a finite number"), (int_range(3), "an integer >= 3"),
    (float_range(0.0, 100.0, low_open=True), "a number in (0, 100]"),
    (float_range(0.0, 0.5, high_open=True), "a number in [0, 0.5)"),
])
def test_messages_say_what_is_accepted(arg_type, description):
    shown = "'nan'" if arg_type.kind is int else "nan"  # not even a number for an integer flag: quoted
    assert _rejects(arg_type, "nan") == f"must be {description}, got {shown}"


def test_an_empty_range_is_a_programming_error():
    with pytest.raises(ValueError):
        int_range(5, 2)


def test_comma_list_parses_and_checks_each_item():
    lengths = comma_list(int_range(3), increasing=True)
    assert lengths("16, 32,64") == (16, 32, 64)
    assert "must be strictly increasing" in _rejects(lengths, "32,16")
    assert "item '2'" in _rejects(lengths, "16,2") and "an integer >= 3" in _rejects(lengths, "16,2")
    assert "item 'nan'" in _rejects(lengths, "16,nan")
    assert "comma-separated" in _rejects(lengths, " , ")


@pytest.mark.parametrize("text, expected", [("True", True), ("yes", True), ("1", True), ("false", False),
                                            ("N", False), ("0", False)])
def test_str2bool_reads_both_spellings(text, expected):
    assert str2bool(text) is expected


def test_str2bool_rejects_other_words():
    assert _rejects(str2bool, "maybe").startswith("must be a boolean")


# ----------------------------------------------------------------------------- devices

@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend torch sees ``count`` CUDA GPUs (0: none)."""
    import torch

    def set_count(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return set_count


@pytest.mark.parametrize("text", ["tpu", "gpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0", ""])
def test_unknown_device_names_are_refused(text):
    assert "unknown device" in _rejects(device_arg, text)


def test_cpu_is_always_accepted_and_normalised():
    assert device_arg(" CPU ") == "cpu"


def test_cuda_without_a_gpu_says_it_is_not_available(fake_cuda):
    fake_cuda(0)
    for text in ("cuda", "cuda:0"):
        message = _rejects(device_arg, text)
        assert "CUDA is not available" in message and "use cpu" in message


def test_cuda_index_must_name_an_existing_gpu(fake_cuda):
    fake_cuda(2)
    assert device_arg("cuda") == "cuda"
    assert device_arg("cuda:01") == "cuda:1"
    message = _rejects(device_arg, "cuda:2")
    assert "does not exist" in message and "2 CUDA devices (cuda:0 .. cuda:1)" in message


def test_mps_without_apple_gpu_says_it_is_not_available(monkeypatch):
    import torch

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert "MPS is not available" in _rejects(device_arg, "mps")


def test_resolve_device_picks_cuda_only_when_available(fake_cuda):
    fake_cuda(0)
    assert devices.resolve_device(None) == "cpu"
    fake_cuda(1)
    assert devices.resolve_device(None) == "cuda"
    assert devices.resolve_device("cpu") == "cpu"
    with pytest.raises(InputError, match="unknown device"):
        devices.resolve_device("tpu")


# ----------------------------------------------------------------------------- the parser

def _tiny_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog="tool.py", description="A tool.")
    parser.add_argument("--n-prompts", type=cli.positive_int, default=3, help="prompts")
    parser.add_argument("--mode", choices=("a", "b"), default="a")
    parser.add_argument("--needed", required=True)
    return parser


def _parse_exit(parser, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(argv)
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@pytest.mark.parametrize("argv, message", [
    (["--needed", "x", "--n-prompts", "0"], "argument --n-prompts: must be a positive integer, got 0"),
    (["--needed", "x", "--mode", "c"], "argument --mode: invalid choice: 'c'"),
    (["--needed", "x", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "the following arguments are required: --needed"),
    (["--needed"], "argument --needed: expected one argument"),
])
def test_argparse_errors_are_one_line_with_a_pointer_to_help(argv, message, capsys):
    code, out, err = _parse_exit(_tiny_parser(), argv, capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [err.rstrip("\n")]
    assert err.startswith(f"error: {message}") and err.rstrip().endswith("(see --help)")
    assert "usage:" not in err


def test_help_still_prints_the_full_help(capsys):
    code, out, _ = _parse_exit(_tiny_parser(), ["--help"], capsys)
    assert code == 0 and out.startswith("usage: tool.py") and "--n-prompts" in out and "A tool." in out


# ----------------------------------------------------------------------------- run_cli and OS errors

def _run(main, capsys):
    code = run_cli(main, [])
    out, err = capsys.readouterr()
    return code, out, err


def _raiser(error: BaseException):
    def main(argv=None):
        raise error
    return main


@pytest.mark.parametrize("error, line", [
    (OSError(errno.ENOSPC, "No space left on device", "out/scores.pkl"),
     "error: cannot write out/scores.pkl: no space left on device (the disk is full)"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/fig.pdf"), "error: cannot write /ro/fig.pdf: read-only file system"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "error: /root/x: permission denied"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "a.pkl"), "error: a.pkl: no such file or folder"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b"), "error: a -> b: Invalid cross-device link"),
    (FileNotFoundError("--heads-file h.txt does not exist"), "error: --heads-file h.txt does not exist"),
    (OSError("We couldn't connect to the hub.\nCheck your connection."),
     "error: We couldn't connect to the hub. Check your connection."),
    (InputError("two\nlines"), "error: two lines"),
    (MemoryError("Unable to allocate 2.00 GiB for an array with shape (268435456,) and data type int64"),
     "error: out of memory: Unable to allocate 2.00 GiB for an array with shape (268435456,) and data type int64; "
     "use smaller batches, lengths or models"),
    (MemoryError(), "error: out of memory; use smaller batches, lengths or models"),
    # torch's failed allocations are RuntimeErrors (issue 25): the same line
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 800000000000 bytes."),
     "error: out of memory: DefaultCPUAllocator: can't allocate memory: you tried to allocate 800000000000 bytes.; "
     "use smaller batches, lengths or models"),
    (type("OutOfMemoryError", (RuntimeError,), {})("CUDA error"),
     "error: out of memory: CUDA error; use smaller batches, lengths or models"),
])
def test_run_cli_turns_os_and_input_errors_into_one_line(error, line, capsys):
    code, out, err = _run(_raiser(error), capsys)
    assert code == 2 and out == "" and err == line + "\n"


def test_run_cli_lets_bugs_raise():
    with pytest.raises(ZeroDivisionError):
        run_cli(_raiser(ZeroDivisionError("bug")), [])
    with pytest.raises(RuntimeError, match="expected a tensor"):  # only an allocation failure is a user error
        run_cli(_raiser(RuntimeError("expected a tensor")), [])


def test_debug_variable_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("ICL_CMR_DEBUG", "1")
    with pytest.raises(OSError):
        run_cli(_raiser(OSError(errno.ENOSPC, "No space left on device", "x")), [])


# ----------------------------------------------------------------------------- atomic_write failures

def _leftovers(folder: Path, keep=()):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_atomic_write_removes_its_temp_file_when_the_disk_fills(tmp_path, monkeypatch, where):
    target = tmp_path / "result.json"
    target.write_text("old")

    def write(handle):
        handle.write(b"new content")
        if where == "write":
            raise OSError(errno.ENOSPC, "No space left on device")

    if where in ("fsync", "replace"):
        monkeypatch.setattr(os, where, _disk_full)
    with pytest.raises(OSError) as caught:
        atomic_write(target, write)
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert _leftovers(tmp_path) == ["result.json"] and target.read_text() == "old"


def test_atomic_write_names_the_path_when_torch_wraps_the_os_error(tmp_path):
    def write(handle):  # what torch.save raises on a full disk: RuntimeError with the OSError as context
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 704 vs 598")

    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "model.pt", write)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "model.pt")
    assert _leftovers(tmp_path) == []


def test_atomic_write_explains_numpys_short_write(tmp_path):
    def write(handle):
        raise OSError("800000 requested and 8176 written")

    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "grid.npy", write)
    assert cli.describe_os_error(caught.value) == (f"{tmp_path / 'grid.npy'}: wrote only 8176 of 800000 bytes "
                                                   "(is the disk full?)")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [ValueError("bad content"), KeyboardInterrupt()])
def test_atomic_write_passes_other_errors_through_and_still_cleans_up(tmp_path, error):
    def write(handle):
        handle.write(b"partial")
        raise error

    with pytest.raises(type(error)):
        atomic_write(tmp_path / "x.bin", write)
    assert _leftovers(tmp_path) == []


def test_a_script_whose_disk_fills_ends_with_one_line_and_no_partial_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "fsync", _disk_full)

    def main(argv=None):
        save_json(tmp_path / "out" / "summary.json", {"a": 1})

    code, out, err = _run(main, capsys)
    monkeypatch.undo()
    assert code == 2 and out == ""
    assert err == f"error: cannot write {tmp_path / 'out' / 'summary.json'}: no space left on device (the disk is full)\n"
    assert not (tmp_path / "out").exists()  # the folder the failed run made is gone too (issue 25, item 5)


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 64 KiB tmpfs (needs root or CAP_SYS_ADMIN; skipped where mounting is not permitted)."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("mount/umount not found")
    folder = tmp_path / "tiny"
    folder.mkdir()
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run([umount, "-l", str(folder)], check=False)


BIG = np.zeros(200_000)  # 1.6 MB: far beyond the 64 KiB file system


@pytest.mark.parametrize("saver", ["pickle", "npy", "torch"])
def test_writing_into_a_full_file_system_leaves_nothing_behind(tiny_filesystem, saver):
    (tiny_filesystem / "kept.txt").write_text("earlier result")
    target = tiny_filesystem / f"result.{saver}"
    with pytest.raises(OSError) as caught:
        if saver == "pickle":
            save_pickle(target, BIG)
        elif saver == "npy":
            save_npy(target, BIG)
        else:
            import torch

            atomic_write(target, lambda handle: torch.save({"w": torch.from_numpy(BIG)}, handle))
    assert caught.value.filename == str(target)
    assert "disk" in cli.describe_os_error(caught.value)
    assert _leftovers(tiny_filesystem) == ["kept.txt"]
    assert (tiny_filesystem / "kept.txt").read_text() == "earlier result"


def test_a_script_writing_into_a_full_file_system_ends_with_one_line(tiny_filesystem, capsys):
    def main(argv=None):
        save_pickle(tiny_filesystem / "scores.pkl", BIG)

    code, out, err = _run(main, capsys)
    assert code == 2 and out == ""
    assert err == (f"error: cannot write {tiny_filesystem / 'scores.pkl'}: no space left on device "
                   "(the disk is full)\n")
    assert _leftovers(tiny_filesystem) == []


# ----------------------------------------------------------------------------- every script

#: Per script: flags it needs to parse at all, and flags that send every output into ``out``.
SCRIPT_ARGS = {
    "ablation": lambda out: ["--out-dir", str(out), "--figs-dir", str(out)],
    "attn_over_size": lambda out: ["--figs-dir", str(out)],
    "attn_over_size_xtra": lambda out: ["--figs-dir", str(out)],
    "attn_over_time": lambda out: ["--figs-dir", str(out)],
    "compute_head_scores": lambda out: ["--model", "gpt2-small", "--out", str(out / "scores.pkl")],
    "est_cmr_crp": lambda out: ["--save_dir", str(out)],
    "eval_induction": lambda out: ["--save_dir", str(out), "--fig_dir", str(out)],
    "fit_attn_score": lambda out: ["--figs-dir", str(out), "--fits-dir", str(out)],
    "induction_growth": lambda out: ["--snapshots", str(out / "snapshots"), "--save_dir", str(out), "--fig_dir", str(out)],
    "fit_human_recall": lambda out: ["--out-dir", str(out), "--figs-dir", str(out)],
    "paper_figures": lambda out: ["--out-dir", str(out), "--cache-dir", str(out / "cache")],
    "pattern_icl": lambda out: ["--model", "gpt2-small", "--out-dir", str(out), "--fig-dir", str(out)],
    "plot_crp": lambda out: ["--figs-dir", str(out)],
    "run_pipeline": lambda out: ["--scores-dir", str(out), "--figs-dir", str(out), "--ablation-dir", str(out)],
    "select_fit": lambda out: ["--figs-dir", str(out), "--top-heads-dir", str(out)],
    "select_fit_xtra": lambda out: ["--figs-dir", str(out), "--top-heads-dir", str(out)],
    "sweep": lambda out: ["paper-all", "--dry-run"],   # a dry run writes nothing
    "train_induction": lambda out: ["--save_dir", str(out), "--fig_dir", str(out)],
    "train_toy_lm": lambda out: ["--save_dir", str(out)],
}


def _parser(script: str) -> argparse.ArgumentParser:
    return importlib.import_module(script).build_parser()


def _run_script(script, argv, tmp_path, monkeypatch, capsys):
    """``python src/<script>.py argv`` in-process from an empty folder: (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "out"
    try:
        code = run_cli(importlib.import_module(script).main, SCRIPT_ARGS[script](out_dir) + list(argv))
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code, out, err, tmp_path, *fragments):
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    assert list(tmp_path.iterdir()) == [], "something was written"


def _numeric_flags(parser):
    """(flag, type) of every option whose values go through a NumberType (directly or per list item)."""
    return [(action.option_strings[-1], action.type) for action in parser._actions
            if isinstance(action.type, cli.NumberType)]


def test_every_script_has_a_row_here():
    assert sorted(SCRIPT_ARGS) == SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_builds_the_one_line_parser(script):
    assert isinstance(_parser(script), OneLineErrorParser)


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_flag_is_a_bare_int_or_float(script):
    bare = [action.option_strings for action in _parser(script)._actions if action.type in (int, float)]
    assert bare == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_flag_refuses_nan_and_inf_with_one_line(script, tmp_path, monkeypatch, capsys):
    flags = _numeric_flags(_parser(script))
    assert flags, f"{script} has no numeric flag"
    for flag, _ in flags:
        for bad in ("nan", "inf"):
            code, out, err = _run_script(script, [flag, bad], tmp_path, monkeypatch, capsys)
            _assert_one_line_error(code, out, err, tmp_path, "error: argument ", flag, "must be", bad, "(see --help)")


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_flag_refuses_a_value_below_its_range(script, tmp_path, monkeypatch, capsys):
    for flag, arg_type in _numeric_flags(_parser(script)):
        if arg_type.low is None:
            continue
        below = arg_type.low if arg_type.low_open else arg_type.low - 1
        code, out, err = _run_script(script, [flag, str(below)], tmp_path, monkeypatch, capsys)
        _assert_one_line_error(code, out, err, tmp_path, "error: argument ", f"{flag}: must be")


@pytest.mark.parametrize("script", SCRIPTS)
def test_device_scripts_are_found(script):
    assert ("--device" in _parser(script)._option_string_actions) == (script in DEVICE_SCRIPTS)


@pytest.mark.parametrize("script", DEVICE_SCRIPTS)
def test_every_device_flag_is_checked_while_parsing(script, tmp_path, monkeypatch, capsys, fake_cuda):
    assert _parser(script)._option_string_actions["--device"].type is device_arg
    fake_cuda(0)
    for bad, fragment in (("tpu", "unknown device 'tpu'"), ("cuda:1", "CUDA is not available")):
        code, out, err = _run_script(script, ["--device", bad], tmp_path, monkeypatch, capsys)
        _assert_one_line_error(code, out, err, tmp_path, "argument --device:", fragment)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_prints_full_help(script, capsys):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(script).main(["--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("usage:")


@pytest.mark.parametrize("script, argv, message", [
    # the inputs of issue 17 items 5, 6 and 12
    ("train_induction", ["--learning_rate", "nan"], "argument --learning_rate: must be a finite number > 0, got nan"),
    ("train_induction", ["--learning_rate", "0"], "argument --learning_rate: must be a finite number > 0, got 0"),
    ("fit_attn_score", ["--threshold", "nan"], "argument --threshold: must be a finite number > 0, got nan"),
    ("fit_attn_score", ["--threshold", "-1"], "argument --threshold: must be a finite number > 0, got -1"),
    ("fit_attn_score", ["--threshold", "inf"], "argument --threshold: must be a finite number > 0, got inf"),
    ("attn_over_time", ["--strict-threshold", "-0.1"], "argument --strict-threshold: must be a finite number > 0"),
    ("select_fit", ["--threshold", "nan"], "argument --threshold: must be a finite number > 0, got nan"),
    ("run_pipeline", ["--fraction", "0"], "argument --fraction: must be a number in (0, 1], got 0"),
    ("run_pipeline", ["--fraction", "2"], "argument --fraction: must be a number in (0, 1], got 2"),
    ("ablation", ["--fraction", "nan"], "argument --fraction: must be a number in (0, 1], got nan"),
    ("pattern_icl", ["--percentage", "1", "0"], "argument --percentage: must be a number in (0, 100], got 0"),
    ("compute_head_scores", ["--n-prompts", "0"], "argument --n-prompts: must be a positive integer, got 0"),
    ("compute_head_scores", ["--exclude-extreme-fraction", "0.5"],
     "argument --exclude-extreme-fraction: must be a number in [0, 0.5), got 0.5"),
    ("train_toy_lm", ["--stop_score", "1.5"], "argument --stop_score: must be a number in [0, 1], got 1.5"),
    ("eval_induction", ["--max_cpu_seconds_per_sequence", "0"],
     "argument --max_cpu_seconds_per_sequence: must be a finite number > 0, got 0"),
    ("est_cmr_crp", ["--seed", str(2 ** 32)], "argument --seed: must be an integer in [0, 4294967295]"),
    ("select_fit", ["--n_top", "20", "x"], "argument -t/--n_top: must be a positive integer, got 'x'"),
    ("ablation", ["--device", "tpu"], "argument --device: unknown device 'tpu'"),
    ("ablation", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_flags_of_the_issue_give_the_one_line_message(script, argv, message, tmp_path, monkeypatch, capsys):
    code, out, err = _run_script(script, argv, tmp_path, monkeypatch, capsys)
    _assert_one_line_error(code, out, err, tmp_path, f"error: {message}", "(see --help)")
