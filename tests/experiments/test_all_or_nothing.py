"""A failed write leaves no partial set of outputs (probe F3): ablation, fit_attn_score and pattern_icl on their own.

Each case makes one output path a folder, as the probe did: the script ends with one ``error:`` line and exit
code 2, no traceback, and none of its other outputs exists afterwards (PendingWrites.commit writes every file
to a temporary name first and renames only when all are written).
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

import ablation
from icl_cmr.experiments import ablation as ablation_experiment
import fit_attn_score
import pattern_icl
from icl_cmr.cli.args import run_cli
from test_fit_scripts import make_grid, scores, dump


def _visible_files(root):
    """Every file under ``root`` (hidden resume state excluded, since it is kept on purpose)."""
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _one_error(main, argv, capsys):
    code = run_cli(main, argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err, err
    assert code == 2 and len(errors) == 1, err
    return errors[0]


# ----------------------------------------------------------------------------- ablation.py

@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = random.Random(0)
    words = "memory context recall item drift attention head token order list the of and".split()
    path = tmp_path_factory.mktemp("texts") / "docs.jsonl"
    with open(path, "w") as handle:
        for _ in range(12):
            handle.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(40, 80)))}) + "\n")
    return path


def _ablation_args(model_dir, text_file, out, figs):
    return ["--model_name", str(model_dir), "--data", str(text_file), "--seq-len", "24", "--late-index", "20",
            "--early-index", "2", "--n-eval", "4", "--batch-size", "4", "--heads", "L1H0", "--out-dir", str(out),
            "--figs-dir", str(figs), "--no-progress", "--n-bootstrap", "50"]


@pytest.mark.slow
def test_ablation_with_a_figure_path_taken_by_a_folder_writes_no_table_and_no_result(tiny_model_dirs, text_file,
                                                                                     tmp_path, capsys):
    model_dir = tiny_model_dirs["gpt2"]
    out, figs = tmp_path / "saved", tmp_path / "figs"
    blocker = figs / "ablation" / f"ablation_experiment_{model_dir.name}_icl_bars.pdf"
    blocker.mkdir(parents=True)
    line = _one_error(ablation.main, _ablation_args(model_dir, text_file, out, figs), capsys)
    assert line == f"error: output {blocker} is a folder, not a file; nothing was written"
    assert _visible_files(out) == [] and _visible_files(figs) == []
    # the computed batches are kept for the next run (resume), under the hidden partial folder
    assert list((out / f".ablation_experiment_{model_dir.name}.partial").glob("batch_*.npz"))


def test_ablation_with_figures_under_sys_is_refused_before_the_model_loads(tiny_model_dirs, text_file, tmp_path,
                                                                           capsys, monkeypatch):
    """Permission bits do not tell (root passes os.access on /sys): the folder check tries a file."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the unwritable folder was reported")

    monkeypatch.setattr(ablation_experiment, "load_model", refuse)
    out = tmp_path / "saved"
    line = _one_error(ablation.main, _ablation_args(tiny_model_dirs["gpt2"], text_file, out, "/sys/x"), capsys)
    assert line.startswith("error: output folder --figs-dir /sys/x/ablation cannot be created: /sys is not writable")
    assert _visible_files(out) == [] and not out.exists()


# ----------------------------------------------------------------------------- fit_attn_score.py

@pytest.fixture()
def fit_inputs(tmp_path):
    mean = make_grid(tmp_path)
    scores_file = tmp_path / "scores" / "x" / "all_scores_x.pkl"
    dump(scores_file, scores(mean, 2, 3, 0, {(1, 2): (1, 2, 1)}, np.full((2, 3), 0.3)))
    return ["--all_head_scores", str(scores_file), "--save_dir", "x", "--crp-grid", str(tmp_path / "grid_avg.npy"),
            "--figs-dir", str(tmp_path / "figs"), "--fits-dir", str(tmp_path / "fits"), "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("blocked", ["figs/fit_attn_score/x/score_against_fit.pdf", "fits/x/head_fits_x.csv"])
def test_fit_attn_score_with_one_output_path_taken_by_a_folder_writes_nothing(fit_inputs, tmp_path, capsys, blocked):
    blocker = tmp_path / blocked
    blocker.mkdir(parents=True)
    line = _one_error(fit_attn_score.main, fit_inputs, capsys)
    assert line.startswith("error: ") and str(blocker) in line and "is a folder" in line
    assert _visible_files(tmp_path / "figs") == [] and _visible_files(tmp_path / "fits") == []


# ----------------------------------------------------------------------------- pattern_icl.py

@pytest.mark.slow
def test_pattern_icl_with_results_csv_taken_by_a_folder_writes_nothing(tiny_model_dirs, tmp_path, capsys):
    model_dir = tiny_model_dirs["neox"]
    out, figs = tmp_path / "out", tmp_path / "figs"
    blocker = out / model_dir.name / "results.csv"
    blocker.mkdir(parents=True)
    argv = ["--model", str(model_dir), "--tasks", "repetition", "--n-items", "2", "--seeds", "0",
            "--n-random-sets", "1", "--n-reference", "2", "--heads", "L1H0", "--method", "zero",
            "--out-dir", str(out), "--fig-dir", str(figs)]
    line = _one_error(pattern_icl.main, argv, capsys)
    assert line == f"error: output {blocker} is a folder, not a file; nothing was written"
    assert _visible_files(out) == [] and _visible_files(figs) == []
