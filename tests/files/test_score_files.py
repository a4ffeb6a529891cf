"""Finding and reading head-score files (both layouts) and CMR grid files."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from icl_cmr.config import BETA_ENC_GRID
from icl_cmr.errors import CorruptFileError, FileContentError, InputError
from icl_cmr.files.scores import (find_score_file, load_checkpoint_series, normalise_model_name,
                                  parse_score_file_name, read_head_scores)
from icl_cmr.files.grids import read_cmr_grid
from icl_cmr.config import CHECKPOINT_INDICES, FINAL_CHECKPOINT
from icl_cmr.heads.results import checkpoint_step


def score_dict(n_layers=2, n_heads=3, seed=0, torch_tensors=False, extra=True):
    rng = np.random.default_rng(seed)
    matching = rng.random((n_layers, n_heads)).astype(np.float32)
    out = {
        "head_scores": torch.from_numpy(matching) if torch_tensors else matching,
        "copying_score": rng.uniform(-1, 1, (n_layers, n_heads)),
        "CRP_scores": rng.normal(size=(n_layers, n_heads, 16)),
        "CRP_scores_sem": rng.random((n_layers, n_heads, 16)),
        "labels": np.array([[f"L{l}H{h}" for h in range(n_heads)] for l in range(n_layers)]),
    }
    if extra:
        out["CRP_prob_scores"] = rng.random((n_layers, n_heads, 16))
        out["metadata"] = {"producer": "test"}
    return out


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)
    return path


def test_checkpoint_indices_are_the_papers_sixteen():
    assert CHECKPOINT_INDICES == (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 142)
    assert FINAL_CHECKPOINT == 142
    assert checkpoint_step(0) == 1000 and checkpoint_step(142) == 143000


@pytest.mark.parametrize("name, expected", [
    ("gpt2-small", "gpt2-small"), ("gpt2_small", "gpt2-small"), ("Pythia-70m-deduped-v0", "pythia-70m"),
    ("pythia_70m", "pythia-70m"), ("pythia-1.4b", "pythia-1-4b"), ("qwen-7b", "qwen-7b"),
    ("pythia-160m-deduped", "pythia-160m"), ("EleutherAI/pythia-70m", "eleutherai-pythia-70m"),
])
def test_model_names_are_normalised(name, expected):
    assert normalise_model_name(name) == expected


def test_pythia_14b_and_1b_stay_distinct():
    assert normalise_model_name("pythia-1.4b") != normalise_model_name("pythia-1b")
    assert normalise_model_name("pythia-1.4b") != normalise_model_name("pythia-14b")


@pytest.mark.parametrize("file_name, expected", [
    ("all_scores_gpt2_small.pkl", ("gpt2-small", None)),
    ("all_scores_pythia_70m_cp142.pkl", ("pythia-70m", 142)),
    ("induction_head_all_scores_pythia_410m_cp0.pkl", ("pythia-410m", 0)),
    ("induction_head_all_scores_qwen-7b.pkl", ("qwen-7b", None)),
    ("all_scores_pythia_1.4b_cp10.pkl", ("pythia-1-4b", 10)),
    ("fit_results.pkl", None),
])
def test_score_file_names_are_parsed(file_name, expected):
    assert parse_score_file_name(file_name) == expected


def test_both_layouts_are_found_by_model_name(tmp_path):
    ours = write(tmp_path / "gpt2-small" / "all_scores_gpt2-small.pkl", score_dict())
    theirs = write(tmp_path / "qwen-7b" / "induction_head_all_scores_qwen-7b.pkl", score_dict())
    assert find_score_file(tmp_path, "gpt2-small") == ours
    assert find_score_file(tmp_path, "GPT2_small") == ours
    assert find_score_file(tmp_path, "qwen-7b") == theirs


def test_checkpoints_and_final_fallback(tmp_path):
    folder = tmp_path / "pythia-70m-deduped-v0"
    files = {k: write(folder / f"all_scores_pythia_70m_cp{k}.pkl", score_dict(seed=k)) for k in (0, 10, 142)}
    assert find_score_file(tmp_path, "pythia-70m", 10) == files[10]
    assert find_score_file(tmp_path, "pythia-70m") == files[142]       # no plain file: the final checkpoint
    plain = write(tmp_path / "pythia-70m" / "all_scores_pythia-70m.pkl", score_dict())
    assert find_score_file(tmp_path, "pythia-70m") == plain            # the trained model's own file first


def test_missing_file_names_what_was_expected_where(tmp_path):
    write(tmp_path / "pythia-70m" / "all_scores_pythia-70m_cp0.pkl", score_dict())
    with pytest.raises(InputError) as info:
        find_score_file(tmp_path, "pythia-70m", 20)
    message = str(info.value)
    assert "checkpoint 20" in message and str(tmp_path) in message
    assert "all_scores_<pythia-70m>_cp20.pkl" in message and "induction_head_all_scores_" in message
    assert "checkpoints found for this model: 0" in message
    with pytest.raises(InputError, match="does not exist"):
        find_score_file(tmp_path / "nowhere", "gpt2-small")


def test_the_checkpoints_found_are_listed_in_numeric_order(tmp_path):
    for k in (142, 20, 0, 100, 10):
        write(tmp_path / "pythia-70m" / f"all_scores_pythia-70m_cp{k}.pkl", score_dict())
    with pytest.raises(InputError, match=r"checkpoints found for this model: 0, 10, 20, 100, 142$"):
        find_score_file(tmp_path, "pythia-70m", 30)


def test_two_files_for_one_model_are_ambiguous(tmp_path):
    write(tmp_path / "gpt2-small" / "all_scores_gpt2_small.pkl", score_dict())
    write(tmp_path / "gpt2-small" / "induction_head_all_scores_gpt2-small.pkl", score_dict())
    with pytest.raises(InputError, match="several score files"):
        find_score_file(tmp_path, "gpt2-small")


def test_reading_converts_tensors_and_ignores_unknown_keys(tmp_path):
    raw = score_dict(torch_tensors=True)
    scores = read_head_scores(write(tmp_path / "m" / "all_scores_m.pkl", raw))
    assert isinstance(scores.matching_score, np.ndarray) and scores.matching_score.dtype == np.float64
    np.testing.assert_array_equal(scores.matching_score, raw["head_scores"].numpy().astype(float))
    np.testing.assert_array_equal(scores.crp, raw["CRP_scores"])
    assert scores.labels[1, 2] == "L1H2" and (scores.n_layers, scores.n_heads) == (2, 3)


def test_missing_optional_keys_get_defaults(tmp_path):
    raw = score_dict(extra=False)
    del raw["CRP_scores_sem"], raw["labels"]
    scores = read_head_scores(write(tmp_path / "all_scores_m.pkl", raw))
    assert np.isnan(scores.crp_sem).all()
    assert scores.labels[0, 1] == "L0H1"


def test_missing_required_key_is_an_input_error(tmp_path):
    raw = score_dict()
    del raw["CRP_scores"]
    with pytest.raises(InputError, match="CRP_scores"):
        read_head_scores(write(tmp_path / "all_scores_m.pkl", raw))


def test_wrong_crp_shape_is_an_input_error(tmp_path):
    raw = score_dict()
    raw["CRP_scores"] = raw["CRP_scores"][..., :15]
    with pytest.raises(InputError, match="expected"):
        read_head_scores(write(tmp_path / "all_scores_m.pkl", raw))


def test_series_must_have_one_shape(tmp_path):
    write(tmp_path / "p" / "all_scores_p_cp0.pkl", score_dict(2, 3))
    write(tmp_path / "p" / "all_scores_p_cp10.pkl", score_dict(2, 4))
    with pytest.raises(InputError, match="different shapes"):
        load_checkpoint_series(tmp_path, "p", [0, 10])


# ----------------------------------------------------------------------------- grids

def test_default_shape_grid_gets_the_paper_axes_and_sem_beside_it(tmp_path):
    mean = np.random.default_rng(0).random((20, 21, 11, 17))
    mean /= mean.sum(axis=-1, keepdims=True)
    np.save(tmp_path / "cmr_crp_avg_20_11.npy", mean)
    np.save(tmp_path / "cmr_crp_sem_20_11.npy", mean / 10)
    grid = read_cmr_grid(tmp_path / "cmr_crp_avg_20_11.npy")
    np.testing.assert_array_equal(grid.beta_enc, BETA_ENC_GRID)
    assert grid.beta_rec[0] == 0.0 and grid.gamma_ft[-1] == 1.0
    np.testing.assert_array_equal(grid.sem, mean / 10)


def test_sem_is_optional(tmp_path):
    np.save(tmp_path / "g_avg.npy", np.full((20, 21, 11, 17), 1 / 17))
    assert read_cmr_grid(tmp_path / "g_avg.npy").sem is None


def test_custom_grid_reads_axes_from_sidecar(tmp_path):
    np.save(tmp_path / "small.npy", np.full((2, 3, 1, 17), 1 / 17))
    (tmp_path / "small.json").write_text(json.dumps({"axes": {"beta_enc": [0.5, 1.0], "beta_rec": [0, 0.5, 1],
                                                              "gamma_ft": [0.2]}}))
    grid = read_cmr_grid(tmp_path / "small.npy")
    np.testing.assert_array_equal(grid.beta_rec, [0, 0.5, 1])
    assert grid.parameters_at(np.array([1, 2, 0])).tolist() == [1.0, 1.0, 0.2]


def test_custom_grid_reads_axes_from_est_cmr_crp_metadata(tmp_path):
    # est_cmr_crp.py writes cmr_crp_avg_<n>_<m>.npy and cmr_crp_<n>_<m>.json, axes under "parameters".
    np.save(tmp_path / "cmr_crp_avg_4_3.npy", np.full((4, 5, 3, 17), 1 / 17))
    (tmp_path / "cmr_crp_4_3.json").write_text(json.dumps({"producer": "est_cmr_crp.py", "parameters": {
        "beta_enc": [0.25, 0.5, 0.75, 1.0], "beta_rec": [0, 0.25, 0.5, 0.75, 1.0], "gamma_ft": [0, 0.5, 1.0]}}))
    grid = read_cmr_grid(tmp_path / "cmr_crp_avg_4_3.npy")
    np.testing.assert_array_equal(grid.gamma_ft, [0, 0.5, 1.0])
    assert grid.shape == (4, 5, 3)


def test_grid_that_is_not_a_crp_is_an_input_error(tmp_path):
    np.save(tmp_path / "g.npy", np.ones((20, 21, 11, 17)))
    with pytest.raises(InputError, match="sum to 1"):
        read_cmr_grid(tmp_path / "g.npy")


def test_custom_grid_without_axes_is_an_input_error(tmp_path):
    np.save(tmp_path / "small.npy", np.full((2, 3, 1, 17), 1 / 17))
    with pytest.raises(InputError, match="small.json"):
        read_cmr_grid(tmp_path / "small.npy")


def test_grid_with_wrong_lag_axis_or_missing_file_is_an_input_error(tmp_path):
    np.save(tmp_path / "bad.npy", np.full((20, 21, 11, 16), 1 / 16))
    with pytest.raises(InputError, match="expected"):
        read_cmr_grid(tmp_path / "bad.npy")
    with pytest.raises(InputError, match="est_cmr_crp.py"):
        read_cmr_grid(tmp_path / "missing.npy")


# ----------------------------------------------------------------------------- authors' files

@pytest.mark.official
@pytest.mark.parametrize("model, checkpoint, expected", [
    ("gpt2-small", None, "gpt2-small/all_scores_gpt2_small.pkl"),
    ("pythia-70m", 0, "pythia-70m-deduped-v0/all_scores_pythia_70m_cp0.pkl"),
    ("pythia-70m-deduped-v0", None, "pythia-70m-deduped-v0/all_scores_pythia_70m_cp142.pkl"),
    ("pythia-410m", 130, "pythia-410m-deduped-v0/induction_head_all_scores_pythia_410m_cp130.pkl"),
    ("qwen-7b", None, "qwen-7b/induction_head_all_scores_qwen-7b.pkl"),
])
def test_authors_files_are_found(official_dir, model, checkpoint, expected):
    assert find_score_file(official_dir / "saved_scores", model, checkpoint) == official_dir / "saved_scores" / expected


@pytest.mark.official
def test_every_authors_checkpoint_is_found(official_dir):
    for model in ("pythia-70m", "pythia-410m"):
        series = load_checkpoint_series(official_dir / "saved_scores", model)
        assert len(series) == 16
    assert series[0].crp.shape == (24, 16, 16)


@pytest.mark.official
def test_authors_grid_loads_with_sem(official_dir):
    grid = read_cmr_grid(official_dir / "saved_crps" / "cmr_crp_avg_20_11.npy")
    assert grid.shape == (20, 21, 11) and grid.sem is not None


def test_files_written_by_score_format_are_found_and_read(tmp_path):
    from icl_cmr.files.writing import save_pickle
    from icl_cmr.files.score_format import assemble_score_dict, default_score_path

    rng = np.random.default_rng(3)
    shape = (2, 4)
    crp = rng.normal(size=shape + (16,))
    scores = assemble_score_dict(rng.random(shape), rng.uniform(-1, 1, shape), crp, np.abs(crp) / 10, rng.random(shape + (16,)),
                                 rng.random(shape + (16,)), rng.random(shape), metadata={"seed": 0})
    path = save_pickle(default_score_path("pythia-70m", 10, root=tmp_path), scores)
    assert find_score_file(tmp_path, "pythia-70m-deduped-v0", 10) == path
    read = read_head_scores(path)
    np.testing.assert_array_equal(read.crp, crp)
    np.testing.assert_array_equal(read.lags, np.arange(-8, 8))


def test_crp_lags_in_the_file_are_used(tmp_path):
    raw = score_dict(extra=False)
    raw["CRP_scores"] = raw["CRP_scores"][..., :13]
    raw["CRP_scores_sem"] = raw["CRP_scores_sem"][..., :13]
    raw["CRP_lags"] = np.arange(-6, 7)
    read = read_head_scores(write(tmp_path / "all_scores_m.pkl", raw))
    np.testing.assert_array_equal(read.lags, np.arange(-6, 7))


# ----------------------------------------------------------------------------- what a head-score file must hold

@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(CRP_scores=d["CRP_scores"].astype(str)), r"'CRP_scores' holds strings \(dtype <U\d+\), "
                                                                r"expected pre-softmax attention by lag"),
    (lambda d: d.update(copying_score=np.array([[{"a": 1}] * 3] * 2, dtype=object)), "'copying_score' holds Python objects"),
    (lambda d: d.update(CRP_scores=d["CRP_scores"][..., :0], CRP_scores_sem=d["CRP_scores_sem"][..., :0],
                        CRP_lags=np.arange(0)), r"'CRP_lags' has shape \(0,\): n_lags is 0"),
    (lambda d: d.update(head_scores=np.zeros((0, 3)), copying_score=np.zeros((0, 3))), "n_layers is 0"),
    (lambda d: d.update(copying_score=np.zeros((2, 4))),
     r"'copying_score' has shape \(2, 4\), expected \[n_layers=2, n_heads=3\] \(n_heads from 'head_scores'\)"),
    (lambda d: d["head_scores"].__setitem__((1, 2), 1.5), r"'head_scores' holds 1\.5 at index \(1, 2\), expected "
                                                          r"matching scores .* in \[0, 1\]"),
    (lambda d: d["CRP_scores"].__setitem__((0, 1, 3), np.inf), r"'CRP_scores' holds inf at index \(0, 1, 3\)"),
    (lambda d: d["CRP_scores_sem"].__setitem__((0, 0, 0), -0.1), "'CRP_scores_sem' holds -0.1"),
    (lambda d: d.update(CRP_lags=np.arange(16)[::-1]), "'CRP_lags' must be strictly increasing"),
    (lambda d: d.update(CRP_lags=np.arange(16) + 0.5), "'CRP_lags' holds 0.5 at index 0, expected whole numbers"),
    (lambda d: d.update(labels=np.zeros((2, 3))), "'labels' holds numbers"),
    (lambda d: d.pop("CRP_scores"), "missing 'CRP_scores': expected a head-score file"),
])
def test_a_head_score_file_with_the_wrong_arrays_names_the_key(tmp_path, change, message):
    raw = score_dict(extra=False)
    change(raw)
    path = write(tmp_path / "all_scores_m.pkl", raw)
    with pytest.raises(FileContentError, match=message) as caught:
        read_head_scores(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_unscored_heads_may_be_nan(tmp_path):
    raw = score_dict(extra=False)
    raw["copying_score"][:] = np.nan          # compute_head_scores.py --no-copying
    raw["CRP_scores"][1, 2] = np.nan
    read = read_head_scores(write(tmp_path / "all_scores_m.pkl", raw))
    assert np.isnan(read.copying_score).all() and np.isnan(read.crp[1, 2]).all()


def test_crp_lags_must_match_the_crp_when_the_file_has_none(tmp_path):
    raw = score_dict(extra=False)
    raw["CRP_scores"], raw["CRP_scores_sem"] = raw["CRP_scores"][..., :11], raw["CRP_scores_sem"][..., :11]
    with pytest.raises(FileContentError, match="'CRP_scores' has 11 lags but the file has no 'CRP_lags'"):
        read_head_scores(write(tmp_path / "all_scores_m.pkl", raw))


def test_a_fit_file_passed_as_head_scores_says_what_it_is(tmp_path):
    path = write(tmp_path / "all_scores_m.pkl", {"fitted_MSE": np.zeros((2, 3)), "head_scores": np.zeros((2, 3))})
    with pytest.raises(FileContentError, match="this is a CMR fit file"):
        read_head_scores(path)


def test_prefix_matching_scores_alone_are_enough_when_only_they_are_needed(tmp_path):
    scores = np.array([[0.1, 0.9], [0.0, 0.4]])
    read = read_head_scores(write(tmp_path / "s.pkl", {"prefix_matching_score": torch.as_tensor(scores)}),
                            required=("prefix_matching_score",))
    np.testing.assert_array_equal(read.prefix_matching_score, scores)
    with pytest.raises(FileContentError, match="missing 'head_scores'"):
        read_head_scores(tmp_path / "s.pkl")


def test_grid_axes_in_a_sidecar_must_match_the_grid(tmp_path):
    np.save(tmp_path / "small.npy", np.full((2, 3, 1, 17), 1 / 17))
    (tmp_path / "small.json").write_text(json.dumps({"beta_enc": [0.5, 1.0], "beta_rec": [0, 1], "gamma_ft": [0.2]}))
    with pytest.raises(FileContentError, match=r"small\.json: 'beta_rec' has shape \(2,\), expected \[n_beta_rec=3\]"):
        read_cmr_grid(tmp_path / "small.npy")
    (tmp_path / "small.json").write_text(json.dumps({"beta_enc": [0.5, 1.0], "beta_rec": [0, 0.5, "x"], "gamma_ft": [0.2]}))
    with pytest.raises(FileContentError, match=r"small\.json: 'beta_rec' holds strings"):
        read_cmr_grid(tmp_path / "small.npy")


def test_a_binary_grid_sidecar_is_corrupt(tmp_path):
    np.save(tmp_path / "small.npy", np.full((2, 3, 1, 17), 1 / 17))
    (tmp_path / "small.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(CorruptFileError, match=r"small\.json: not UTF-8 text"):
        read_cmr_grid(tmp_path / "small.npy")


@pytest.mark.official
def test_every_authors_score_file_passes_the_reader(official_dir):
    paths = sorted(official_dir.glob("saved_scores/*/*.pkl"))
    assert len(paths) == 1 + 16 + 16 + 1
    for path in paths:
        scores = read_head_scores(path)
        assert scores.crp.shape == scores.matching_score.shape + (16,)
        assert np.isfinite(scores.crp).all()
