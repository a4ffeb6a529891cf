"""Bad input files through the scripts: exit code 2, one ``error:`` line naming the file (and key), nothing written.

Issue 17 items 1-4 and 9, issue 12 item 6: files that are binary where text is expected,
pickles holding the wrong arrays, allocation bombs, selection files of the wrong kind,
crafted checkpoints, and score files saved on a GPU (which must load on the CPU). Issue 25 item 2: model,
config, tokenizer and checkpoint files cut in half.
Each script runs in-process through ``run_cli``, as ``python src/<script>.py`` does.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ablation
import compute_head_scores
import eval_induction
import est_cmr_crp
import fit_attn_score
import pattern_icl
import select_fit
import select_fit_xtra
import train_induction
import train_toy_lm
from icl_cmr.cli.args import run_cli
from icl_cmr.files.reading import load_pickle

BINARY = bytes(range(256)) * 4  # not UTF-8 from byte 0x80 (offset 128) on
HUGE = 10 ** 13


@pytest.fixture(autouse=True)
def no_debug_tracebacks(monkeypatch):
    monkeypatch.delenv("ICL_CMR_DEBUG", raising=False)


def fails_in_one_line(capsys, script, argv, *fragments):
    """Run ``script.main(argv)`` through ``run_cli``; check exit 2 and one ``error:`` line holding ``fragments``."""
    code = run_cli(script.main, argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def files_under(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


# ----------------------------------------------------------------------------- fitting scripts

AXES = {"beta_enc": [0.5, 1.0], "beta_rec": [0.0, 0.5, 1.0], "gamma_ft": [0.0, 1.0]}


def head_scores(n_layers=2, n_heads=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"head_scores": rng.random((n_layers, n_heads)).astype(np.float32),
            "copying_score": rng.uniform(-1, 1, (n_layers, n_heads)),
            "CRP_scores": rng.normal(size=(n_layers, n_heads, 16)),
            "CRP_scores_sem": np.full((n_layers, n_heads, 16), 0.1)}


@pytest.fixture()
def fit_inputs(tmp_path):
    """A small CMR grid with its axes, and the output folders (which must stay empty on bad input)."""
    rng = np.random.default_rng(0)
    mean = rng.random((2, 3, 2, 17)) + 0.05
    mean /= mean.sum(axis=-1, keepdims=True)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    np.save(inputs / "grid_avg.npy", mean)
    (inputs / "grid_avg.json").write_text(json.dumps(AXES))
    out = tmp_path / "out"
    argv = ["--save_dir", "m", "--crp-grid", str(inputs / "grid_avg.npy"), "--figs-dir", str(out / "figs"),
            "--fits-dir", str(out / "fits"), "--scores-dir", str(inputs)]
    return {"inputs": inputs, "out": out, "argv": argv}


@pytest.mark.parametrize("change, fragments", [
    (lambda d: d.update(CRP_scores=d["CRP_scores"].astype(str)), ["'CRP_scores' holds strings"]),
    (lambda d: d.update(CRP_scores=d["CRP_scores"][..., :0], CRP_scores_sem=d["CRP_scores_sem"][..., :0],
                        CRP_lags=np.arange(0)), ["'CRP_lags'", "n_lags is 0"]),
    (lambda d: d.update(head_scores=np.zeros((0, 3), np.float32), copying_score=np.zeros((0, 3)),
                        CRP_scores=np.zeros((0, 3, 16)), CRP_scores_sem=np.zeros((0, 3, 16))), ["n_layers is 0"]),
    (lambda d: d.pop("copying_score"), ["missing 'copying_score'"]),
])
def test_fit_attn_score_refuses_score_files_with_the_wrong_arrays(capsys, fit_inputs, change, fragments):
    scores = head_scores()
    change(scores)
    path = dump(fit_inputs["inputs"] / "all_scores_m.pkl", scores)
    fails_in_one_line(capsys, fit_attn_score, ["--all_head_scores", str(path)] + fit_inputs["argv"], str(path),
                      *fragments)
    assert files_under(fit_inputs["out"]) == []


def test_fit_attn_score_refuses_an_allocation_bomb(capsys, fit_inputs):
    path = fit_inputs["inputs"] / "all_scores_m.pkl"
    path.write_bytes(b"\x80\x04cnumpy._core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(\x8a\x06\x00\xa0\x72\x4e\x18\x09tC\x01btR.")
    fails_in_one_line(capsys, fit_attn_score, ["--all_head_scores", str(path)] + fit_inputs["argv"], str(path),
                      "shape (10000000000000,)", "more than a file of")
    assert files_under(fit_inputs["out"]) == []


def test_fit_attn_score_refuses_a_grid_declaring_more_than_it_holds(capsys, fit_inputs):
    from numpy.lib import format as npy_format

    dump(fit_inputs["inputs"] / "all_scores_m.pkl", head_scores())
    grid = fit_inputs["inputs"] / "grid_avg.npy"
    with open(grid, "wb") as handle:
        npy_format.write_array_header_1_0(handle, {"descr": "<f8", "fortran_order": False, "shape": (HUGE, 3, 2, 17)})
    fails_in_one_line(capsys, fit_attn_score, ["--all_head_scores", str(fit_inputs["inputs"] / "all_scores_m.pkl")]
                      + fit_inputs["argv"], str(grid), "truncated or corrupt .npy data")
    assert files_under(fit_inputs["out"]) == []


def test_fit_attn_score_refuses_a_binary_grid_sidecar(capsys, fit_inputs):
    path = dump(fit_inputs["inputs"] / "all_scores_m.pkl", head_scores())
    (fit_inputs["inputs"] / "grid_avg.json").write_bytes(BINARY)
    fails_in_one_line(capsys, fit_attn_score, ["--all_head_scores", str(path)] + fit_inputs["argv"],
                      str(fit_inputs["inputs"] / "grid_avg.json"), "not UTF-8 text: byte 0x80 at offset 128")
    assert files_under(fit_inputs["out"]) == []


@pytest.mark.slow
def test_fit_attn_score_reads_scores_saved_on_a_gpu(fit_inputs, monkeypatch):
    import torch.serialization

    scores = head_scores()
    scores["head_scores"] = torch.from_numpy(scores["head_scores"])   # a tensor, as in the authors' files
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        raw = pickle.dumps(scores, protocol=4)
    assert b"cuda:0" in raw
    path = fit_inputs["inputs"] / "all_scores_m.pkl"
    path.write_bytes(raw)
    assert run_cli(fit_attn_score.main, ["--all_head_scores", str(path)] + fit_inputs["argv"]) == 0
    saved = load_pickle(fit_inputs["out"] / "fits" / "m" / "cmr_fit_m.pkl")
    np.testing.assert_allclose(saved["head_scores"], scores["head_scores"].numpy())


# ----------------------------------------------------------------------------- select_fit --use_saved

@pytest.mark.parametrize("script, tag", [(select_fit, "pythia"), (select_fit_xtra, "m")])
def test_use_saved_with_a_file_of_the_wrong_kind_says_what_it_is(capsys, tmp_path, script, tag):
    top = tmp_path / "top"
    path = dump(top / f"cmr_top_crp_fit_{tag}.pkl", head_scores())
    argv = ["--use_saved", "--top-heads-dir", str(top), "--figs-dir", str(tmp_path / "figs")]
    if script is select_fit_xtra:
        argv += ["--models", tag]
    fails_in_one_line(capsys, script, argv, str(path), "is a head-score file", "not a top-head selection")
    assert files_under(tmp_path / "figs") == []


# ----------------------------------------------------------------------------- ablation.py --from-saved

def ablation_result(n=5, n_positions=12):
    rng = np.random.default_rng(4)
    names = ("original", "ablated", "ablated_rand")
    return {"original_icl_score": rng.normal(size=n), "ablated_icl_score": rng.normal(size=n) + 1,
            "ablated_rand_icl_score": rng.normal(size=n),
            "loss_by_position": {k: rng.random(n_positions) + 1 for k in names},
            "loss_by_position_sem": {k: rng.random(n_positions) / 10 for k in names},
            "metadata": {"parameters": {"early_index": 2, "late_index": 10}}}


@pytest.mark.parametrize("change, fragments", [
    (lambda d: d.pop("loss_by_position_sem"), ["no 'loss_by_position_sem'"]),
    (lambda d: d.update(loss_by_position=np.ones((3, 12))), ["'loss_by_position' is a ndarray, expected a dict"]),
    (lambda d: d.update(ablated_icl_score=np.array(["x"] * 5)), ["'ablated_icl_score' holds strings"]),
    (lambda d: d["metadata"]["parameters"].update(late_index="500"), ["'late_index' is '500'"]),
])
def test_from_saved_refuses_a_damaged_result_before_writing_anything(capsys, tmp_path, change, fragments):
    result = ablation_result()
    change(result)
    path = dump(tmp_path / "in" / "ablation_experiment_m.pkl", result)
    out = tmp_path / "out"
    fails_in_one_line(capsys, ablation, ["--from-saved", str(path), "--out-dir", str(out / "saved"),
                                         "--figs-dir", str(out / "figs")], str(path), *fragments)
    assert files_under(out) == []


@pytest.mark.slow
def test_from_saved_still_reads_a_good_result(tmp_path):
    path = dump(tmp_path / "in" / "ablation_experiment_m.pkl", ablation_result())
    out = tmp_path / "out"
    assert run_cli(ablation.main, ["--from-saved", str(path), "--out-dir", str(out / "saved"), "--figs-dir",
                                   str(out / "figs"), "--n-bootstrap", "50"]) == 0
    assert (out / "figs" / "ablation" / "ablation_experiment_m_loss_by_position.pdf").is_file()


# ----------------------------------------------------------------------------- scripts on a tiny model

@pytest.fixture()
def ablation_argv(tiny_model_dirs, tmp_path):
    def argv(*extra):
        return ["--model_name", str(tiny_model_dirs["gpt2"]), "--seq-len", "24", "--late-index", "20",
                "--early-index", "3", "--n-eval", "2", "--batch-size", "2", "--out-dir", str(tmp_path / "out" / "saved"),
                "--figs-dir", str(tmp_path / "out" / "figs"), "--no-progress", "--device", "cpu", *extra]
    return argv


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.txt"])
def test_ablation_refuses_binary_data(capsys, tmp_path, ablation_argv, name):
    data = tmp_path / name
    data.write_bytes(b'{"text": "ok"}\n' + BINARY if name.endswith(".jsonl") else BINARY)
    fails_in_one_line(capsys, ablation, ablation_argv("--heads", "L0H0", "--data", str(data)), str(data),
                      "(a binary file?)")
    assert files_under(tmp_path / "out") == []


def test_ablation_refuses_a_binary_heads_file(capsys, tmp_path, ablation_argv):
    heads = tmp_path / "heads.txt"
    heads.write_bytes(b"L0H1\n" + BINARY)
    fails_in_one_line(capsys, ablation, ablation_argv("--heads-file", str(heads), "--data", str(heads)), str(heads),
                      "not UTF-8 text: byte 0x80 at offset 133 (line 3)")


def test_ablation_refuses_a_fit_file_with_strings(capsys, tmp_path, ablation_argv):
    fit = dump(tmp_path / "fit.pkl", {"fitted_MSE": np.array([["0.1"] * 4] * 2)})
    data = tmp_path / "docs.txt"
    data.write_text("word " * 100)
    fails_in_one_line(capsys, ablation, ablation_argv("--fit-file", str(fit), "--data", str(data)), str(fit),
                      "'fitted_MSE' holds strings")


def test_pattern_icl_refuses_a_binary_prompts_file(capsys, tmp_path, tiny_model_dirs):
    prompts = tmp_path / "prompts.json"
    prompts.write_bytes(BINARY)
    fails_in_one_line(capsys, pattern_icl, ["--model", str(tiny_model_dirs["gpt2"]), "--prompts-file", str(prompts),
                                            "--heads", "L0H0", "--out-dir", str(tmp_path / "out"),
                                            "--fig-dir", str(tmp_path / "figs")], str(prompts), "not UTF-8 text")
    assert files_under(tmp_path / "out") == [] and files_under(tmp_path / "figs") == []


def test_pattern_icl_refuses_prefix_scores_of_the_wrong_kind(capsys, tmp_path, tiny_model_dirs):
    scores = dump(tmp_path / "scores.pkl", {"prefix_matching_score": np.array([["a"] * 4] * 2)})
    fails_in_one_line(capsys, pattern_icl, ["--model", str(tiny_model_dirs["gpt2"]), "--scores-file", str(scores),
                                            "--out-dir", str(tmp_path / "out"), "--fig-dir", str(tmp_path / "figs")],
                      str(scores), "'prefix_matching_score' holds strings")
    assert files_under(tmp_path / "out") == []


def test_compute_head_scores_refuses_a_binary_token_pool(capsys, tmp_path, tiny_model_dirs):
    pool = tmp_path / "pool.json"
    pool.write_bytes(BINARY)
    out = tmp_path / "out" / "scores.pkl"
    fails_in_one_line(capsys, compute_head_scores, ["--model", str(tiny_model_dirs["gpt2"]), "--token-pool", str(pool),
                                                    "--out", str(out), "--n-prompts", "2", "--block-len", "8",
                                                    "--no-progress", "--device", "cpu"], str(pool), "not UTF-8 text")
    assert not out.exists()


# ----------------------------------------------------------------------------- CMR grid resume state

@pytest.mark.slow
def test_est_cmr_crp_resume_over_a_binary_spec_file_starts_over_with_a_warning(capsys, tmp_path):
    """A damaged resume state is recovery's business (issue 17 item 8): one warning naming it, no traceback."""
    partial = tmp_path / ".cmr_crp_2_2.partial"
    partial.mkdir()
    (partial / "spec.json").write_bytes(BINARY)
    code = run_cli(est_cmr_crp.main, ["--n_beta", "2", "--n_gamma", "2", "--n_trials", "5", "--save_dir", str(tmp_path),
                                      "--resume", "--no_progress", "--workers", "1"])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("WARNING:")]
    assert code == 0 and "Traceback" not in err
    assert len(warnings) == 1 and "damaged" in warnings[0] and "not UTF-8 text" in warnings[0]
    assert (tmp_path / "cmr_crp_avg_2_2.npy").is_file() and not partial.exists()


# ----------------------------------------------------------------------------- crafted checkpoints

class _CallsSystem:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_train_induction_refuses_a_crafted_checkpoint_in_one_line(capsys, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": _CallsSystem(f"touch {marker}")}, tmp_path / "absolute_checkpoint.pt")
    line = fails_in_one_line(capsys, train_induction, ["--save_dir", str(tmp_path), "--fig_dir", str(tmp_path / "figs"),
                                                       "--resume", "--max_steps", "1", "--no_progress"],
                             str(tmp_path / "absolute_checkpoint.pt"), "refused", "system")
    assert "weights_only" in line and not marker.exists()
    assert files_under(tmp_path / "figs") == []


def test_eval_induction_refuses_a_checkpoint_that_is_not_one(capsys, tmp_path):
    fake = tmp_path / "absolute.pt"
    fake.write_bytes(BINARY)
    fails_in_one_line(capsys, eval_induction, ["--models", str(fake), "--save_dir", str(tmp_path / "out"),
                                               "--fig_dir", str(tmp_path / "figs"), "--max_log2", "6"],
                      str(fake), "not a PyTorch file")
    assert files_under(tmp_path / "out") == []


def test_eval_induction_refuses_a_checkpoint_declaring_huge_storages(capsys, tmp_path):
    torch.save({"w": torch.ones(4)}, tmp_path / "absolute.pt")
    raw = bytearray((tmp_path / "absolute.pt").read_bytes())
    position = raw.find(b"PK\x01\x02")  # every central-directory entry: claim 2 GiB uncompressed
    while position >= 0:
        struct.pack_into("<I", raw, position + 24, 2 ** 31)
        position = raw.find(b"PK\x01\x02", position + 4)
    (tmp_path / "absolute.pt").write_bytes(bytes(raw))
    fails_in_one_line(capsys, eval_induction, ["--models", str(tmp_path / "absolute.pt"), "--save_dir",
                                               str(tmp_path / "out"), "--fig_dir", str(tmp_path / "figs")],
                      str(tmp_path / "absolute.pt"), "zip records declare")
    assert files_under(tmp_path / "out") == []



# ----------------------------------------------------------------------------- model files cut short (issue 25, item 2)

def cut_in_half(path):
    """Keep the first half of a file's bytes, as an interrupted save, copy or download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture()
def damaged_model(tiny_model_dirs, tmp_path):
    """``damaged_model(name)``: a copy of the tiny GPT-2 folder with file ``name`` cut in half."""
    def make(name, weights_as_bin=False):
        folder = tmp_path / "model"
        shutil.copytree(tiny_model_dirs["gpt2"], folder)
        if weights_as_bin:  # the pre-safetensors format: a torch zip archive of the state dict
            torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
            (folder / "model.safetensors").unlink()
        return cut_in_half(folder / name)
    return make


@pytest.mark.parametrize("name, weights_as_bin", [("model.safetensors", False), ("pytorch_model.bin", True),
                                                  ("config.json", False), ("tokenizer.json", False)])
def test_compute_head_scores_names_a_model_file_cut_in_half(capsys, tmp_path, damaged_model, name, weights_as_bin):
    damaged = damaged_model(name, weights_as_bin)
    out = tmp_path / "out" / "scores.pkl"
    fails_in_one_line(capsys, compute_head_scores, ["--model", str(damaged.parent), "--out", str(out),
                                                    "--n-prompts", "2", "--block-len", "8", "--no-progress",
                                                    "--device", "cpu"],
                      f"{damaged}: damaged or incomplete", "save or download the model again")
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize("name, weights_as_bin", [("model.safetensors", False), ("pytorch_model.bin", True)])
def test_ablation_names_a_weight_file_cut_in_half(capsys, tmp_path, damaged_model, name, weights_as_bin):
    damaged = damaged_model(name, weights_as_bin)
    data = tmp_path / "docs.txt"
    data.write_text("word " * 100)
    fails_in_one_line(capsys, ablation, ["--model_name", str(damaged.parent), "--heads", "L0H0", "--data", str(data),
                                         "--seq-len", "24", "--late-index", "20", "--early-index", "3", "--n-eval", "2",
                                         "--out-dir", str(tmp_path / "out" / "saved"), "--figs-dir",
                                         str(tmp_path / "out" / "figs"), "--no-progress", "--device", "cpu"],
                      f"{damaged}: damaged or incomplete")
    assert files_under(tmp_path / "out") == []


def test_toy_lm_evaluate_only_names_its_weights_cut_in_half_and_changes_nothing(capsys, tmp_path, repo_root):
    folder = tmp_path / "toy_lm"
    shutil.copytree(repo_root / "saved_models" / "toy_lm", folder)
    damaged = cut_in_half(folder / "model.safetensors")
    before = {path: path.read_bytes() for path in files_under(folder)}
    fails_in_one_line(capsys, train_toy_lm, ["--evaluate_only", "--save_dir", str(folder), "--no_progress"],
                      f"{damaged}: damaged or incomplete")
    assert {path: path.read_bytes() for path in files_under(folder)} == before


def test_eval_induction_names_a_checkpoint_cut_in_half(capsys, tmp_path, repo_root):
    shutil.copy(repo_root / "saved_models" / "induction_task" / "absolute.pt", tmp_path / "absolute.pt")
    damaged = cut_in_half(tmp_path / "absolute.pt")
    fails_in_one_line(capsys, eval_induction, ["--models", str(damaged), "--save_dir", str(tmp_path / "out"),
                                               "--fig_dir", str(tmp_path / "figs"), "--max_log2", "6"],
                      str(damaged), "truncated")
    assert files_under(tmp_path / "out") == [] and files_under(tmp_path / "figs") == []
