"""Score and fit files made for another model than the one loaded: a warning naming both, and the file recorded
in the output metadata (probe finding F11)."""
from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest

import ablation
import fit_attn_score
import pattern_icl
from icl_cmr.files.reading import load_json, load_pickle
from icl_cmr.files.writing import save_pickle
from icl_cmr.files.outputs import portable_path
from icl_cmr.files.results import read_cmr_fit
from icl_cmr.files.scores import other_model_warning, read_head_scores
from test_fit_scripts import dump, make_grid, scores


# ----------------------------------------------------------------------------- which model a file names

@pytest.mark.parametrize("recorded, loaded", [
    (None, "toy_lm"),                                   # the authors' files name no model
    ("toy_lm", "toy_lm"),
    ("pythia-70m", "EleutherAI__pythia-70m-deduped-v0"),  # registry name vs hub id of the same model
    ("Pythia_70m", "pythia-70m"),
])
def test_files_of_the_same_model_or_of_no_stated_model_give_no_warning(recorded, loaded):
    assert other_model_warning(recorded, loaded, "--fit-file f.pkl") is None


def test_a_file_of_another_model_gives_one_line_naming_both():
    warning = other_model_warning("gpt2-small", "toy_lm", "--fit-file f.pkl")
    assert warning == ("--fit-file f.pkl was made for model 'gpt2-small', but the model loaded is 'toy_lm'; its heads "
                       "are used as they are")


def test_readers_return_the_model_a_file_names(tmp_path):
    save_pickle(tmp_path / "fit.pkl", {"fitted_MSE": np.ones((2, 3)), "metadata": {"model": "m1"}})
    save_pickle(tmp_path / "authors_fit.pkl", {"fitted_MSE": np.ones((2, 3))})
    save_pickle(tmp_path / "scores.pkl", {"prefix_matching_score": np.zeros((2, 3)), "metadata": {"model": "m2"}})
    assert read_cmr_fit(tmp_path / "fit.pkl").model == "m1"
    assert read_cmr_fit(tmp_path / "authors_fit.pkl").model is None
    assert read_head_scores(tmp_path / "scores.pkl", required=("prefix_matching_score",)).model == "m2"


def test_fit_attn_score_records_the_model_of_its_score_file(tmp_path):
    mean = make_grid(tmp_path)
    content = scores(mean, 2, 3, 0, {(1, 2): (1, 2, 1)}, np.full((2, 3), 0.2))
    dump(tmp_path / "ours" / "all_scores_m1.pkl", {**content, "metadata": {"producer": "x", "model": "m1"}})
    dump(tmp_path / "authors" / "all_scores_m2.pkl", content)
    for folder, score_file, expected in (("ours", "all_scores_m1.pkl", "m1"), ("authors", "all_scores_m2.pkl", None)):
        assert fit_attn_score.main(["--all_head_scores", str(tmp_path / folder / score_file),
                                    "--crp-grid", str(tmp_path / "grid_avg.npy"), "--fits-dir", str(tmp_path / "fits"),
                                    "--save_dir", folder, "--no-figures"]) == 0
        assert load_pickle(tmp_path / "fits" / folder / f"cmr_fit_{folder}.pkl")["metadata"]["model"] == expected


# ----------------------------------------------------------------------------- the scripts that use such files

@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = random.Random(1)
    words = "memory context recall item drift attention head token order list the of and".split()
    path = tmp_path_factory.mktemp("texts") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(5, 80)))})
                            + "\n" for _ in range(12)))
    return path


def _fit_file(path, model):
    distance = np.array([[0.5, 0.1, 0.8, 0.7], [0.05, 0.9, 0.3, 0.2]])
    content = {"fitted_MSE": distance, **({"metadata": {"producer": "fit_attn_score.py", "model": model}}
                                         if model else {})}
    with open(path, "wb") as handle:
        pickle.dump(content, handle)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("model, warned", [("gpt2-small", True), (None, False)])
def test_ablation_warns_about_another_models_fit_file_and_records_it(tiny_model_dirs, text_file, tmp_path, capsys,
                                                                     model, warned):
    model_dir = tiny_model_dirs["gpt2"]
    fit = _fit_file(tmp_path / "cmr_fit_other.pkl", model)
    argv = ["--model_name", str(model_dir), "--data", str(text_file), "--seq-len", "48", "--late-index", "40",
            "--early-index", "5", "--n-eval", "3", "--batch-size", "3", "--n-random-sets", "1",
            "--fit-file", str(fit), "--fraction", "0.25", "--out-dir", str(tmp_path / "saved"),
            "--figs-dir", str(tmp_path / "figs"), "--no-progress", "--n-bootstrap", "20"]
    assert ablation.main(argv) is None
    warnings = [line for line in capsys.readouterr().err.splitlines() if "was made for model" in line]
    expected = (f"WARNING: the fit file {fit} was made for model 'gpt2-small', but the model loaded is "
                f"'{model_dir.name}'; its heads are used as they are")
    assert warnings == ([expected] if warned else [])
    parameters = load_pickle(tmp_path / "saved" / f"ablation_experiment_{model_dir.name}.pkl")["metadata"]["parameters"]
    assert parameters["fit_file"] == portable_path(fit)
    assert parameters["ablated_heads"] == "L1H0,L0H1"  # the fit file's two lowest distances


@pytest.mark.slow
def test_pattern_icl_warns_about_another_models_scores_file_and_records_it(tiny_model_dirs, tmp_path, capsys):
    model_dir = tiny_model_dirs["gpt2"]
    prefix = np.zeros((2, 4))
    prefix[1, 2] = 0.9
    save_pickle(tmp_path / "gpt2_scores.pkl", {"prefix_matching_score": prefix, "metadata": {"model": "gpt2-small"}})
    argv = ["--model", str(model_dir), "--tasks", "repetition", "--n-items", "2", "--seeds", "0",
            "--scores-file", str(tmp_path / "gpt2_scores.pkl"), "--percentage", "10", "--method", "zero",
            "--ablate", "none,induction", "--out-dir", str(tmp_path / "out"), "--fig-dir", str(tmp_path / "figs")]
    assert pattern_icl.main(argv) == 0
    err = capsys.readouterr().err
    assert (f"WARNING: the scores file {tmp_path / 'gpt2_scores.pkl'} was made for model 'gpt2-small', but the model "
            f"loaded is '{model_dir.name}'") in err
    meta = load_json(tmp_path / "out" / model_dir.name / "metadata.json")["parameters"]
    assert meta["scores_file"] == portable_path(tmp_path / "gpt2_scores.pkl") and meta["percentage"] == [10.0]
    assert load_json(tmp_path / "out" / model_dir.name / "heads.json")["top10%"]["induction"] == "L1H2"
