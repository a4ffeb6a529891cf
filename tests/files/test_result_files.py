"""The readers of fit files, ablation results, top-head selections and partial ablation batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_cmr.experiments.ablation import batch_arrays, batch_from_arrays
from icl_cmr.interventions.icl_ablation import BatchSummary
from icl_cmr.errors import FileContentError
from icl_cmr.files.writing import save_pickle
from icl_cmr.files.results import read_ablation_result, read_cmr_fit, read_pattern_prompts, read_top_heads


def fit_dict(n_layers=2, n_heads=3):
    rng = np.random.default_rng(1)
    return {"fitted_MSE": rng.random((n_layers, n_heads)), "fitted_params": rng.random((n_layers, n_heads, 3)),
            "fitted_scale_factors": rng.random((n_layers, n_heads)) * 10,
            "labels": np.array([[f"L{l}H{h}" for h in range(n_heads)] for l in range(n_layers)])}


def ablation_dict(n=6, n_positions=9):
    rng = np.random.default_rng(2)
    names = ("original", "ablated", "ablated_rand_0", "ablated_rand")
    return {"original_icl_score": rng.normal(size=n), "ablated_icl_score": rng.normal(size=n),
            "ablated_rand_icl_score": rng.normal(size=n), "ablated_rand_icl_score_sets": rng.normal(size=(1, n)),
            "loss_by_position": {k: rng.random(n_positions) + 1 for k in names},
            "loss_by_position_sem": {k: rng.random(n_positions) / 10 for k in names},
            "metadata": {"parameters": {"early_index": 2, "late_index": 7}}}


def selection_dict():
    rng = np.random.default_rng(3)

    def record(n):
        return {"MSE": rng.random(n), "params": rng.random((n, 3)), "scale_factors": rng.random(n) * 5,
                "labels": np.array([f"m-L0H{i}" for i in range(n)]), "checkpoints": np.array([0, 10, 142]),
                "MSE_over_training": rng.random((n, 3)), "params_over_training": rng.random((n, 3, 3)),
                "selection_name": f"top {n}"}

    return {"top2": record(2), "top4": record(4), "metadata": {"producer": "test"}}


# ----------------------------------------------------------------------------- fits

def test_a_fit_file_round_trips(tmp_path):
    raw = fit_dict()
    raw["fitted_MSE"][0, 1] = np.nan  # a head that could not be fitted
    fit = read_cmr_fit(save_pickle(tmp_path / "fit.pkl", raw))
    np.testing.assert_array_equal(fit.distance, raw["fitted_MSE"])
    assert fit.params.shape == (2, 3, 3) and fit.labels[1, 2] == "L1H2"


def test_a_fit_file_needs_only_the_distances(tmp_path):
    fit = read_cmr_fit(save_pickle(tmp_path / "fit.pkl", {"fitted_MSE": torch.zeros(2, 2)}))
    assert fit.distance.shape == (2, 2) and fit.params is None


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(fitted_MSE=d["fitted_MSE"].astype(str)), "'fitted_MSE' holds strings"),
    (lambda d: d.update(fitted_params=d["fitted_params"][..., :2]),
     r"'fitted_params' has shape \(2, 3, 2\), expected \[n_layers=2, n_heads=3, 3\]"),
    (lambda d: d["fitted_params"].__setitem__((0, 0, 1), 1.7), r"'fitted_params' holds 1\.7 at index \(0, 0, 1\)"),
    (lambda d: d["fitted_MSE"].__setitem__((1, 1), -2.0), r"'fitted_MSE' holds -2 .* in \[0, inf\]"),
    (lambda d: d.update(fitted_MSE=np.zeros(6)), r"'fitted_MSE' has shape \(6,\), expected 2 axes"),
])
def test_a_fit_file_with_the_wrong_arrays_names_the_key(tmp_path, change, message):
    raw = fit_dict()
    change(raw)
    with pytest.raises(FileContentError, match=message):
        read_cmr_fit(save_pickle(tmp_path / "fit.pkl", raw))


def test_a_head_score_file_passed_as_a_fit_says_what_it_is(tmp_path):
    path = save_pickle(tmp_path / "all_scores_m.pkl", {"head_scores": np.zeros((1, 1)), "CRP_scores": np.zeros((1, 1, 16))})
    with pytest.raises(FileContentError, match=r"missing 'fitted_MSE': expected a CMR fit file .*; this is a "
                                               r"head-score file"):
        read_cmr_fit(path)


# ----------------------------------------------------------------------------- ablation results

def test_an_ablation_result_round_trips_with_its_marked_indices(tmp_path):
    raw = ablation_dict()
    result = read_ablation_result(save_pickle(tmp_path / "a.pkl", raw))
    np.testing.assert_array_equal(result["original_icl_score"], raw["original_icl_score"])
    assert result["marked_indices"] == [2, 7]
    assert set(result["loss_by_position"]) == set(raw["loss_by_position"])


def test_the_authors_three_key_result_is_enough(tmp_path):
    raw = {k: v for k, v in ablation_dict().items() if k.endswith("_icl_score")}
    result = read_ablation_result(save_pickle(tmp_path / "a.pkl", raw))
    assert result["marked_indices"] == [] and "loss_by_position" not in result


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("loss_by_position_sem"), "has 'loss_by_position' but no 'loss_by_position_sem'"),
    (lambda d: d.update(loss_by_position=np.ones((4, 9))), "'loss_by_position' is a ndarray, expected a dict of condition"),
    (lambda d: d["loss_by_position_sem"].pop("ablated"), "'loss_by_position_sem' has no entry for 'ablated'"),
    (lambda d: d["loss_by_position"].update(ablated=np.ones(8)),
     r"'loss_by_position\['ablated'\]' has shape \(8,\), expected \[n_positions=9\]"),
    (lambda d: d.update(ablated_icl_score=np.array(["0.1"] * 6)), "'ablated_icl_score' holds strings"),
    (lambda d: d.update(ablated_icl_score=np.ones(5)),
     r"'ablated_icl_score' has shape \(5,\), expected \[n_prompts=6\] \(n_prompts from 'original_icl_score'\)"),
    (lambda d: d["original_icl_score"].__setitem__(3, np.nan), "'original_icl_score' holds NaN at index 3"),
    (lambda d: d["metadata"]["parameters"].update(late_index=7.5), "metadata parameter 'late_index' is 7.5"),
    (lambda d: d["metadata"]["parameters"].update(late_index=9), "'late_index' is 9, outside the 9 loss positions"),
    (lambda d: d.pop("original_icl_score"), "missing 'original_icl_score'"),
])
def test_an_ablation_result_with_the_wrong_content_names_the_key(tmp_path, change, message):
    raw = ablation_dict()
    change(raw)
    with pytest.raises(FileContentError, match=message):
        read_ablation_result(save_pickle(tmp_path / "a.pkl", raw))


@pytest.mark.official
def test_the_authors_ablation_result_passes_the_reader(official_dir):
    result = read_ablation_result(official_dir / "saved_ablation" / "ablation_experiment_gpt2-small.pkl")
    assert result["original_icl_score"].shape == (5000,)


# ----------------------------------------------------------------------------- top-head selections

def test_a_selection_file_round_trips(tmp_path):
    records = read_top_heads(save_pickle(tmp_path / "cmr_top_crp_fit_t.pkl", selection_dict()))
    assert list(records) == ["top2", "top4"]
    assert records["top4"]["params_over_training"].shape == (4, 3, 3)
    assert records["top2"]["selection_name"] == "top 2"


def test_a_head_score_file_passed_as_a_selection_says_what_it_is(tmp_path):
    path = save_pickle(tmp_path / "cmr_top_crp_fit_t.pkl", {"head_scores": np.zeros((1, 1)),
                                                            "CRP_scores": np.zeros((1, 1, 16))})
    with pytest.raises(FileContentError, match=r"is a head-score file \(all_scores_<model>\.pkl\), not a top-head "
                                               r"selection \(expected records 'top<N>'"):
        read_top_heads(path)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["top2"].update(labels=np.array([1, 2])), r"\[top2\]: 'labels' holds numbers"),
    (lambda d: d["top4"].update(params=np.ones((3, 3))),
     r"\[top4\]: 'params' has shape \(3, 3\), expected \[n=4, 3\] \(n from 'MSE'\)"),
    (lambda d: d["top4"].update(checkpoints=np.array([0, 142])),
     r"\[top4\]: 'checkpoints' has shape \(2,\), expected \[n_checkpoints=3\]"),
    (lambda d: d["top2"].pop("params"), r"\[top2\]: missing 'params'"),
])
def test_a_selection_with_the_wrong_content_names_the_record_and_key(tmp_path, change, message):
    raw = selection_dict()
    change(raw)
    with pytest.raises(FileContentError, match=message):
        read_top_heads(save_pickle(tmp_path / "cmr_top_crp_fit_t.pkl", raw))


@pytest.mark.official
def test_the_authors_selection_passes_the_reader(official_dir):
    records = read_top_heads(official_dir / "saved_top_heads" / "cmr_top_crp_fit_pythia.pkl")
    assert [len(records[k]["MSE"]) for k in records] == [20, 50, 100, 200]


# ----------------------------------------------------------------------------- partial ablation batches

def _batch():
    return BatchSummary(icl={"original": np.array([0.1, -0.2]), "ablated": np.array([0.3, 0.0])},
                        loss_sum={"original": np.ones(5), "ablated": np.ones(5) * 2},
                        loss_sq_sum={"original": np.ones(5), "ablated": np.ones(5) * 4}, n_prompts=2)


def test_a_batch_summary_round_trips():
    again = batch_from_arrays(batch_arrays(_batch()))
    assert again.n_prompts == 2
    np.testing.assert_array_equal(again.loss_sq_sum["ablated"], np.ones(5) * 4)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("n_prompts"), "missing 'n_prompts'"),
    (lambda a: a.update(n_prompts=np.asarray(0)), "'n_prompts' is 0, expected a positive whole number"),
    (lambda a: a.update({"icl/original": np.ones(3)}), r"'icl/original' has shape \(3,\), expected \[n_prompts=2\]"),
    (lambda a: a.update({"loss_sum/ablated": np.ones(4)}), r"'loss_sum/ablated' has shape \(4,\)"),
    (lambda a: a.pop("loss_sq_sum/ablated"), "conditions differ"),
    (lambda a: a.update({"other/x": np.ones(2)}), "unexpected key 'other/x'"),
])
def test_a_damaged_batch_summary_is_refused(change, message):
    arrays = batch_arrays(_batch())
    change(arrays)
    with pytest.raises(FileContentError, match=message):
        batch_from_arrays(arrays, source="batch_000003.npz")


# ----------------------------------------------------------------------------- pattern-task prompt files

def _prompt_file():
    from icl_cmr.interventions.pattern_tasks import PatternTaskConfig, generate_prompts, prompts_to_json

    config = PatternTaskConfig(n_items=2, demo_seeds=(0,))
    return prompts_to_json({"repetition": generate_prompts("repetition", config)}, config)


def test_a_prompt_file_round_trips(tmp_path):
    from icl_cmr.files.writing import save_json
    from icl_cmr.interventions.pattern_tasks import PatternTaskConfig, generate_prompts

    path = save_json(tmp_path / "prompts.json", _prompt_file())
    prompts, config = read_pattern_prompts(path)
    assert config == PatternTaskConfig(n_items=2, demo_seeds=(0,))
    assert prompts["repetition"] == generate_prompts("repetition", config)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="other"), "not a pattern-task prompt file"),
    (lambda d: d.update(tasks=[]), "'tasks' is a list, expected an object"),
    (lambda d: d["config"].update(shots="x"), "'config': 'shots' is 'x', expected a positive whole number"),
    (lambda d: d["config"].pop("seed"), "'config' has no seed"),
    (lambda d: d["tasks"]["repetition"][1].update(label_index=2),
     r"tasks\['repetition'\]\[1\]: 'label_index' is 2, expected an index into its 2 labels"),
    (lambda d: d["tasks"]["repetition"][0].update(query=5), "'query' must be a non-empty list of strings"),
    (lambda d: d["tasks"]["repetition"][0]["segments"][2].update(end=10 ** 6),
     r"tasks\['repetition'\]\[0\]\['segments'\]\[2\]: start .* must be character offsets"),
    (lambda d: d["tasks"]["repetition"][0].update(extra=1), "unknown extra"),
])
def test_a_prompt_file_with_the_wrong_content_names_the_place(tmp_path, change, message):
    from icl_cmr.files.writing import save_json

    data = _prompt_file()
    change(data)
    with pytest.raises(FileContentError, match=message):
        read_pattern_prompts(save_json(tmp_path / "prompts.json", data))
