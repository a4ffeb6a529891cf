"""The ablation experiment: head selection, combining batches, the script (resume, fit files), the authors' file."""
from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pandas as pd
import pytest

import ablation
from icl_cmr.experiments import ablation as ablation_experiment
from icl_cmr.experiments.ablation import batch_arrays, batch_from_arrays
from icl_cmr.interventions.icl_ablation import (AblationConfig, combine_batches, control_head_sets,
                                                summarise_losses, top_fraction_heads)
from icl_cmr.cli.args import run_cli
from icl_cmr.interventions.icl_score import ICLScoreConfig
from icl_cmr.files.reading import load_pickle

# ----------------------------------------------------------------------------- engine


def test_top_fraction_takes_the_lowest_distances_and_never_nan():
    distance = np.array([[0.3, np.nan, 0.1, 0.9],
                         [0.2, 0.05, np.nan, 0.4]])
    assert top_fraction_heads(distance, 0.25) == [(1, 1), (0, 2)]  # floor(0.25 * 8) = 2
    assert top_fraction_heads(distance, 0.75) == [(1, 1), (0, 2), (1, 0), (0, 0), (1, 3), (0, 3)]


def test_top_fraction_counts_match_the_authors_lists():
    # [LI24] ablation.py: GPT-2 (12 x 12) 14 heads, Pythia-70m (6 x 8) 4, Pythia-1b (16 x 8) 12
    for shape, count in (((12, 12), 14), ((6, 8), 4), ((16, 8), 12)):
        assert len(top_fraction_heads(np.random.default_rng(0).random(shape), 0.1)) == count


def test_control_sets_exclude_the_ablated_heads_unless_overlap_is_allowed():
    ablated = [(0, h) for h in range(4)]  # a whole layer of a 2 x 4 model
    sets, seeds = control_head_sets(2, 4, ablated, AblationConfig(n_random_sets=3, seed=10))
    assert seeds == [10]  # layer 1 is the only set left: drawn once, not three times
    assert sets == [[(1, 0), (1, 1), (1, 2), (1, 3)]]
    overlapping, _ = control_head_sets(2, 4, ablated, AblationConfig(n_random_sets=30, allow_overlap=True))
    assert any(layer == 0 for s in overlapping for layer, _ in s)


def test_combined_batches_equal_statistics_of_all_prompts_at_once():
    rng = np.random.default_rng(3)
    config = ICLScoreConfig(late_index=6, early_index=1)
    losses = {name: rng.random((7, 8)) for name in ("original", "ablated", "ablated_rand_0", "ablated_rand_1")}
    batches = [summarise_losses({k: v[i:i + 3] for k, v in losses.items()}, config) for i in (0, 3, 6)]
    batches = [batch_from_arrays(batch_arrays(b)) for b in batches]  # the on-disk round trip
    result = combine_batches(batches)
    random_mean = (losses["ablated_rand_0"] + losses["ablated_rand_1"]) / 2
    np.testing.assert_allclose(result.icl["ablated_rand"], random_mean[:, 6] - random_mean[:, 1])
    np.testing.assert_allclose(result.icl["original"], losses["original"][:, 6] - losses["original"][:, 1])
    np.testing.assert_allclose(result.loss_mean["ablated"], losses["ablated"].mean(0))
    np.testing.assert_allclose(result.loss_sem["ablated"], losses["ablated"].std(0, ddof=1) / np.sqrt(7))
    assert result.n_prompts == 7


# ----------------------------------------------------------------------------- the script on a tiny model

@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = random.Random(0)
    words = "memory context recall item drift attention head token order list the of and".split()
    path = tmp_path_factory.mktemp("texts") / "docs.jsonl"
    with open(path, "w") as handle:
        for _ in range(30):
            handle.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(5, 80)))}) + "\n")
    return path


def _args(model_dir, text_file, out, *extra):
    return ["--model_name", str(model_dir), "--data", str(text_file), "--seq-len", "48", "--late-index", "40",
            "--early-index", "5", "--n-eval", "10", "--batch-size", "3", "--n-random-sets", "2",
            "--out-dir", str(out / "saved"), "--figs-dir", str(out / "figs"), "--no-progress",
            "--n-bootstrap", "200", *extra]


@pytest.mark.slow
def test_a_resumed_run_equals_an_uninterrupted_one(tiny_model_dirs, text_file, tmp_path):
    model_dir = tiny_model_dirs["neox"]
    fit_file = tmp_path / "fit_results.pkl"
    distance = np.array([[0.5, 0.1, np.nan, 0.7], [0.05, 0.9, 0.3, 0.2]])
    with open(fit_file, "wb") as handle:
        pickle.dump({"fitted_MSE": distance}, handle)
    common = ["--fit-file", str(fit_file), "--fraction", "0.25", "--method", "mean"]

    assert ablation.main(_args(model_dir, text_file, tmp_path / "whole", *common)) is None
    whole = load_pickle(tmp_path / "whole" / "saved" / f"ablation_experiment_{model_dir.name}.pkl")

    resumed_out = tmp_path / "resumed"
    ablation.main(_args(model_dir, text_file, resumed_out, *common, "--stop-after", "4"))
    partial = resumed_out / "saved" / f".ablation_experiment_{model_dir.name}.partial"
    assert sorted(p.name for p in partial.glob("batch_*.npz")) == ["batch_000000.npz", "batch_000001.npz"]
    assert not (resumed_out / "saved" / f"ablation_experiment_{model_dir.name}.pkl").exists()
    ablation.main(_args(model_dir, text_file, resumed_out, *common))
    resumed = load_pickle(resumed_out / "saved" / f"ablation_experiment_{model_dir.name}.pkl")
    assert not partial.exists()

    assert whole["ablated_heads"] == resumed["ablated_heads"] == ["L1H0", "L0H1"]  # the two lowest D
    assert whole["ablated_heads_cmr_distance"] == [0.05, 0.1]
    assert all(not set(s) & {"L1H0", "L0H1"} for s in whole["random_heads"])
    for key in ("original_icl_score", "ablated_icl_score", "ablated_rand_icl_score", "ablated_rand_icl_score_sets"):
        assert whole[key].shape == ((10,) if key != "ablated_rand_icl_score_sets" else (2, 10))
        np.testing.assert_array_equal(whole[key], resumed[key])
    for name in ("original", "ablated", "ablated_rand"):
        assert whole["loss_by_position"][name].shape == (47,)
        np.testing.assert_array_equal(whole["loss_by_position"][name], resumed["loss_by_position"][name])
    assert not np.allclose(whole["original_icl_score"], whole["ablated_icl_score"])
    assert (tmp_path / "whole" / "figs" / "ablation" / f"ablation_experiment_{model_dir.name}_icl_bars.pdf").is_file()
    assert whole["metadata"]["parameters"]["method"] == "mean"


@pytest.mark.slow
def test_resuming_with_other_settings_is_refused(tiny_model_dirs, text_file, tmp_path, capsys):
    model_dir = tiny_model_dirs["gpt2"]
    ablation.main(_args(model_dir, text_file, tmp_path, "--heads", "L1H0", "--stop-after", "3"))
    code = run_cli(ablation.main, _args(model_dir, text_file, tmp_path, "--heads", "L1H1"))
    assert code == 2 and "pass --restart to discard it" in capsys.readouterr().err
    assert ablation.main(_args(model_dir, text_file, tmp_path, "--heads", "L1H1", "--restart", "--stop-after", "3")) is None


@pytest.mark.parametrize("extra, message", [
    ((), "no heads given and no CMR fit at"),
    (("--heads", "L1H0", "--heads-file", "x.txt"), "at most one of --heads, --heads-file or --fit-file"),
    (("--heads", "L1H0", "--seq-len", "512", "--late-index", "500"), "exceeds the model's context of 256"),
    (("--heads", "L7H0"), "head L7H0 does not exist"),
])
def test_bad_input_is_one_line_and_exit_code_2(tiny_model_dirs, text_file, tmp_path, capsys, extra, message):
    code = run_cli(ablation.main, _args(tiny_model_dirs["gpt2"], text_file, tmp_path, *extra))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0]


# ----------------------------------------------------------------------------- the authors' file

@pytest.mark.slow
@pytest.mark.official
def test_reanalysis_of_the_authors_gpt2_file(official_dir, tmp_path, capsys):
    source = official_dir / "saved_ablation" / "ablation_experiment_gpt2-small.pkl"
    ablation.main(["--from-saved", str(source), "--out-dir", str(tmp_path), "--figs-dir", str(tmp_path / "figs"),
                   "--n-bootstrap", "1000"])
    table = pd.read_csv(tmp_path / "ablation_experiment_gpt2-small_stats.csv")
    first = table.iloc[0]
    assert (first["a"], first["b"], first["n"]) == ("original", "ablated", 5000)
    assert round(first["t"], 1) == -19.6
    assert (round(first["mean_a"], 2), round(first["mean_b"], 2)) == (-0.32, 1.00)
    assert round(table.iloc[1]["mean_b"], 2) == -0.17
    assert "-19.6" in capsys.readouterr().out
    assert (tmp_path / "figs" / "ablation" / "ablation_experiment_gpt2-small_icl_bars.pdf").is_file()


# ----------------------------------------------------------------------------- damaged resume state

def _result_arrays(path):
    result = load_pickle(path)
    return {key: result[key] for key in ("original_icl_score", "ablated_icl_score", "ablated_rand_icl_score",
                                         "ablated_rand_icl_score_sets")}, result


def _damage(path, how):
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garble":  # same length, bytes in the middle flipped: the zip CRC-32 no longer matches
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 16]) + data[middle + 16:])
    else:  # a valid file with the wrong content
        np.savez(path, n_prompts=np.asarray(3))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "garble", "wrong_content"])
def test_a_damaged_partial_batch_is_recomputed_and_the_result_equals_an_uninterrupted_run(
        tiny_model_dirs, text_file, tmp_path, capsys, how):
    model_dir = tiny_model_dirs["gpt2"]
    common = ("--heads", "L1H0,L0H2")
    ablation.main(_args(model_dir, text_file, tmp_path / "whole", *common))
    whole, _ = _result_arrays(tmp_path / "whole" / "saved" / f"ablation_experiment_{model_dir.name}.pkl")

    out = tmp_path / "resumed"
    ablation.main(_args(model_dir, text_file, out, *common, "--stop-after", "6"))
    partial = out / "saved" / f".ablation_experiment_{model_dir.name}.partial"
    victim = partial / "batch_000001.npz"
    _damage(victim, how)
    capsys.readouterr()
    assert run_cli(ablation.main, _args(model_dir, text_file, out, *common)) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1 and "discarding damaged partial result" in warnings[0] and victim.name in warnings[0]
    resumed, result = _result_arrays(out / "saved" / f"ablation_experiment_{model_dir.name}.pkl")
    for key, value in whole.items():
        np.testing.assert_array_equal(value, resumed[key])
    meta = result["metadata"]
    assert meta["resumed"] is True and meta["resumed_batches"] == 1   # batch 0 kept, batch 1 recomputed
    # the evaluation time of both sessions (batch 0 from the first) and this session's whole time, named apart
    assert "wall_time_s" not in meta
    assert meta["compute_time_all_sessions_s"] > 0 and meta["wall_time_this_session_s"] > 0
    assert not partial.exists()


@pytest.mark.slow
def test_a_damaged_state_file_discards_the_partial_results_with_a_warning(tiny_model_dirs, text_file, tmp_path,
                                                                          capsys):
    model_dir = tiny_model_dirs["gpt2"]
    out = tmp_path / "out"
    ablation.main(_args(model_dir, text_file, out, "--heads", "L1H0", "--stop-after", "3"))
    partial = out / "saved" / f".ablation_experiment_{model_dir.name}.partial"
    (partial / "state.json").write_bytes(b'{"model_name": "tr')
    capsys.readouterr()
    assert run_cli(ablation.main, _args(model_dir, text_file, out, "--heads", "L1H0")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1 and "settings file" in warnings[0] and "starting over" in warnings[0]
    result = load_pickle(out / "saved" / f"ablation_experiment_{model_dir.name}.pkl")
    assert result["metadata"]["resumed"] is False and result["original_icl_score"].shape == (10,)


@pytest.mark.slow
def test_a_damaged_means_file_is_recomputed(tiny_model_dirs, text_file, tmp_path, capsys):
    model_dir = tiny_model_dirs["gpt2"]
    common = ("--heads", "L1H0", "--method", "mean")
    ablation.main(_args(model_dir, text_file, tmp_path / "whole", *common))
    whole, _ = _result_arrays(tmp_path / "whole" / "saved" / f"ablation_experiment_{model_dir.name}.pkl")
    out = tmp_path / "out"
    ablation.main(_args(model_dir, text_file, out, *common, "--stop-after", "3"))
    means = out / "saved" / f".ablation_experiment_{model_dir.name}.partial" / "means.npz"
    _damage(means, "truncate")
    capsys.readouterr()
    assert run_cli(ablation.main, _args(model_dir, text_file, out, *common)) == 0
    assert "discarding damaged partial result" in capsys.readouterr().err
    resumed, _ = _result_arrays(out / "saved" / f"ablation_experiment_{model_dir.name}.pkl")
    for key, value in whole.items():
        np.testing.assert_array_equal(value, resumed[key])


# ----------------------------------------------------------------------------- checks before the model loads

@pytest.fixture()
def no_model(monkeypatch):
    """Fail the test if the script gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(ablation_experiment, "load_model", refuse)


def _outputs(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.parametrize("extra, message", [
    (("--heads", "L1X0"), "L1X0"),
    (("--heads-file", "missing_heads.txt"), "--heads-file missing_heads.txt does not exist"),
    (("--fit-file", "missing_fit.pkl"), "--fit-file missing_fit.pkl does not exist"),
    (("--heads", "L1H0", "--fraction", "0"), "--fraction: must be a number in (0, 1], got 0"),
    (("--heads", "L1H0", "--fraction", "2"), "--fraction: must be a number in (0, 1], got 2"),
    (("--heads", "L1H0", "--late-index", "60"), "--late-index 60 is beyond the last loss index"),
    (("--heads", "L1H0", "--restart", "--resume"), "not both"),
])
def test_bad_heads_and_settings_are_reported_before_the_model_loads(tiny_model_dirs, text_file, tmp_path, capsys,
                                                                    no_model, extra, message):
    try:  # argparse's own errors exit from inside main (one line, status 2)
        code = run_cli(ablation.main, _args(tiny_model_dirs["gpt2"], text_file, tmp_path, *extra))
    except SystemExit as exit_:
        code = exit_.code
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0]
    assert _outputs(tmp_path) == []


def test_a_missing_data_file_is_reported_before_the_model_loads(tiny_model_dirs, tmp_path, capsys, no_model):
    code = run_cli(ablation.main, _args(tiny_model_dirs["gpt2"], tmp_path / "nothing.jsonl", tmp_path, "--heads", "L1H0"))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "nothing.jsonl does not exist" in errors[0]
    assert _outputs(tmp_path) == []


def test_an_unwritable_figure_folder_is_reported_before_the_model_loads(tiny_model_dirs, text_file, tmp_path, capsys,
                                                                        no_model):
    blocker = tmp_path / "figs"
    blocker.write_text("not a folder")
    argv = _args(tiny_model_dirs["gpt2"], text_file, tmp_path, "--heads", "L1H0")
    code = run_cli(ablation.main, argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and errors == [f"error: output folder --figs-dir {blocker / 'ablation'} cannot be made: "
                                    f"{blocker} is a file"]
    assert _outputs(tmp_path) == [blocker.relative_to(tmp_path)]


def test_from_saved_with_a_missing_key_writes_nothing(tmp_path, capsys):
    rng = np.random.default_rng(0)
    result = {key: rng.normal(size=20) for key in ablation_experiment.AUTHORS_KEYS}
    result["loss_by_position"] = {name: rng.random(9) for name in ("original", "ablated", "ablated_rand")}
    path = tmp_path / "ablation_experiment_x.pkl"   # loss_by_position_sem missing
    with open(path, "wb") as handle:
        pickle.dump(result, handle)
    out, figs = tmp_path / "out", tmp_path / "figs"
    code = run_cli(ablation.main, ["--from-saved", str(path), "--out-dir", str(out), "--figs-dir", str(figs)])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "loss_by_position_sem" in errors[0] and str(path) in errors[0]
    assert "Traceback" not in captured.err and _outputs(out) == [] and _outputs(figs) == []


def test_a_partial_run_with_other_settings_is_refused_before_the_model_loads(tiny_model_dirs, text_file, tmp_path,
                                                                             capsys, monkeypatch):
    model_dir = tiny_model_dirs["gpt2"]
    ablation.main(_args(model_dir, text_file, tmp_path, "--heads", "L1H0", "--stop-after", "3"))
    capsys.readouterr()

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were compared")

    monkeypatch.setattr(ablation_experiment, "load_model", refuse)
    code = run_cli(ablation.main, _args(model_dir, text_file, tmp_path, "--heads", "L1H0", "--method", "mean",
                                        "--seq-len", "40", "--late-index", "30"))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    partial = tmp_path / "saved" / f".ablation_experiment_{model_dir.name}.partial"
    assert code == 2 and errors == [
        f"error: partial results in {partial} came from other settings (method: value there, mean now; seq_len: "
        "48 there, 40 now; min_tokens: 48 there, 40 now; late_index: 40 there, 30 now); rerun with those settings to "
        "resume, or pass --restart to discard it"]


def test_streaming_c4_offline_is_reported_before_the_model_loads(tiny_model_dirs, tmp_path, capsys, no_model):
    argv = _args(tiny_model_dirs["gpt2"], "unused", tmp_path, "--heads", "L1H0")
    argv = argv[:2] + argv[4:]   # drop "--data unused": C4 would be streamed (the tests run with HF_HUB_OFFLINE=1)
    code = run_cli(ablation.main, argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and errors == ["error: cannot stream allenai/c4 (en, validation): the Hugging Face hub is "
                                    "unreachable; pass --data PATH with local .txt/.jsonl files instead"]
    assert _outputs(tmp_path) == []
