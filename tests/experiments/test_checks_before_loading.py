"""Every check that needs only the model's config runs before the weights load (probe findings F1, F2, F10, F12).

Each case: exit code 2, one ``error:`` line, no traceback, nothing written, and the model loader
(``TransformerBridge.boot_transformers``, which every script's ``load_model`` calls) never called.
"""
from __future__ import annotations

import json
import pickle
import random
import shutil
import sys

import numpy as np
import pytest

import ablation
import compute_head_scores
from icl_cmr.experiments.head_scores import check_prompt_lengths
import pattern_icl
from icl_cmr.cli.args import run_cli
from icl_cmr.errors import InputError
from icl_cmr.files.reading import load_json, load_pickle
from icl_cmr.files.writing import save_pickle
from icl_cmr.heads.prompts import PromptConfig
from tiny_models import N_CTX

SMALL_SCORES = ["--n-prompts", "2", "--block-len", "6", "--prefix-block-len", "4", "--prefix-n-prompts", "1",
                "--no-copying", "--no-progress", "--device", "cpu"]


@pytest.fixture()
def no_weights(monkeypatch):
    """Fail the test if any script gets as far as loading a model."""
    from transformer_lens.model_bridge import TransformerBridge

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", refuse)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _refused(main, argv, capsys):
    """The one error line of a run that must end with exit code 2 (argparse's own errors included)."""
    try:
        code = run_cli(main, argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ----------------------------------------------------------------------------- compute_head_scores.py

def _scores_argv(model_dir, out, *extra):
    return ["--model", str(model_dir), "--out", str(out), *SMALL_SCORES, *extra]


def test_head_score_prompts_longer_than_the_context_are_refused_before_loading(tiny_model_dirs, tmp_path, capsys,
                                                                                no_weights):
    line = _refused(compute_head_scores.main, _scores_argv(tiny_model_dirs["gpt2"], tmp_path / "s.pkl",
                                                           "--block-len", "200"), capsys)
    assert f"prompts of at least 400 tokens exceed the model's context of {N_CTX}" in line
    line = _refused(compute_head_scores.main, _scores_argv(tiny_model_dirs["gpt2"], tmp_path / "s.pkl",
                                                           "--block-len", str(N_CTX // 2), "--bos"), capsys)
    assert f"prompts of {N_CTX + 1} tokens exceed the model's context of {N_CTX}" in line  # BOS + 2 blocks
    assert _files(tmp_path) == []


def test_a_prompt_set_that_fills_the_context_exactly_is_accepted():
    config = PromptConfig(block_len=N_CTX // 2, prefix_block_len=N_CTX // 4, prefix_copies=4)
    check_prompt_lengths(config, 0, N_CTX)  # 256 tokens without BOS: fits
    with pytest.raises(InputError, match="257 tokens"):
        check_prompt_lengths(config, 1, N_CTX)


@pytest.mark.parametrize("content, message", [
    (b"[1, 2,", "not valid JSON"),
    (b"[]", "the token pool is empty"),
    (b"\xff\xfe[1]", "not UTF-8"),
    (b"[1.5, 2.0, 3.0]", "expected a JSON list of integer token ids"),
    (b"[true, false, true]", "expected a JSON list of integer token ids"),
    (b'{"ids": [1, 2, 3]}', "needs the key 'token_ids'"),
    (json.dumps(list(range(10, 30)) + [400]).encode(), "token ids must be in [0, "),
    (json.dumps(list(range(-3, 20))).encode(), "token ids must be in [0, "),
    (json.dumps([5, 6, 7, 5]).encode(), "has 3 distinct ids, fewer than the block length 6"),
])
def test_every_token_pool_error_is_found_before_loading(tiny_model_dirs, tmp_path, capsys, no_weights, content,
                                                         message):
    pool = tmp_path / "pool.json"
    pool.write_bytes(content)
    line = _refused(compute_head_scores.main, _scores_argv(tiny_model_dirs["gpt2"], tmp_path / "out" / "s.pkl",
                                                           "--token-pool", str(pool)), capsys)
    assert message in line and "pool.json" in line
    assert not (tmp_path / "out").exists()


def test_extreme_fraction_with_a_token_pool_is_refused_while_parsing(tiny_model_dirs, tmp_path, capsys, no_weights):
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(list(range(10, 40))))
    line = _refused(compute_head_scores.main, _scores_argv(tiny_model_dirs["gpt2"], tmp_path / "s.pkl", "--token-pool",
                                                           str(pool), "--exclude-extreme-fraction", "0.1"), capsys)
    assert line.startswith("error: --exclude-extreme-fraction drops ids from the tokenizer's pool")


def test_extreme_fraction_with_a_model_folders_frequent_ids_is_refused_before_loading(tiny_model_dirs, tmp_path,
                                                                                       capsys, no_weights):
    folder = tmp_path / "toy"
    shutil.copytree(tiny_model_dirs["gpt2"], folder)
    (folder / "frequent_token_ids.json").write_text(json.dumps({"token_ids": list(range(40, 80))}))
    line = _refused(compute_head_scores.main, _scores_argv(folder, tmp_path / "s.pkl",
                                                           "--exclude-extreme-fraction", "0.1"), capsys)
    assert "frequent_token_ids.json" in line and "--exclude-extreme-fraction" in line


@pytest.mark.parametrize("out, message", [
    ("", "--out is empty"),
    ("{tmp}", "is an existing folder"),
    ("{tmp}/new/", "names a folder"),
    ("{tmp}/blocker/s.pkl", "is a file, not a folder"),
    pytest.param("/proc/s.pkl", "no file can be created in /proc", marks=pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="Linux's /proc")),
    pytest.param("/sys/s.pkl", "no file can be created in /sys", marks=pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="Linux's /sys")),
])
def test_a_bad_output_file_is_found_before_loading(tiny_model_dirs, tmp_path, capsys, no_weights, out, message):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    line = _refused(compute_head_scores.main, _scores_argv(tiny_model_dirs["gpt2"], out.format(tmp=tmp_path)), capsys)
    assert message in line and "--out" in line
    assert _files(tmp_path) == [tmp_path.joinpath("blocker").relative_to(tmp_path)]


# ----------------------------------------------------------------------------- ablation.py

@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = random.Random(0)
    words = "memory context recall item drift attention head token order list the of and".split()
    path = tmp_path_factory.mktemp("texts") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(5, 80)))})
                            + "\n" for _ in range(20)))
    return path


def _ablation_argv(model_dir, text_file, out, *extra):
    return ["--model_name", str(model_dir), "--data", str(text_file), "--seq-len", "48", "--late-index", "40",
            "--early-index", "5", "--n-eval", "6", "--batch-size", "3", "--n-random-sets", "1",
            "--out-dir", str(out / "saved"), "--figs-dir", str(out / "figs"), "--no-progress",
            "--n-bootstrap", "50", *extra]


def _fit_file(path, shape):
    """An authors'-style fit file: distances rising in layer-major order, so the lowest are L0H0, L0H1, ..."""
    with open(path, "wb") as handle:
        pickle.dump({"fitted_MSE": np.linspace(0.05, 0.9, int(np.prod(shape))).reshape(shape)}, handle)
    return path


@pytest.mark.parametrize("extra, message", [
    (("--heads", "L1H0", "--seq-len", "512", "--late-index", "500"), f"exceeds the model's context of {N_CTX}"),
    (("--heads", "L9H9",), "head L9H9 does not exist; the model has layers 0..1 and heads 0..3"),
    (("--fit-file", "{fit_3x4}"), "is for a [3, 4] model, but the model has 2 layers x 4 heads"),
])
def test_ablation_checks_the_model_shape_before_loading(tiny_model_dirs, text_file, tmp_path, capsys, no_weights,
                                                        extra, message):
    fit = _fit_file(tmp_path / "fit_3x4.pkl", (3, 4))
    extra = [x.format(fit_3x4=fit) for x in extra]
    line = _refused(ablation.main, _ablation_argv(tiny_model_dirs["gpt2"], text_file, tmp_path / "run", *extra), capsys)
    assert message in line
    assert _files(tmp_path / "run") == []


@pytest.mark.parametrize("extra, message", [
    (("--heads", "L1H0", "--fraction", "0.5"), "--fraction has no effect with --heads / --heads-file"),
    (("--heads-file", "{heads}", "--fraction", "0.5"), "--fraction has no effect with --heads / --heads-file"),
    (("--heads", "L1H0", "--fits-dir", "x"), "--fits-dir has no effect with --heads / --heads-file / --fit-file"),
    (("--fit-file", "{fit}", "--fits-dir", "x"), "--fits-dir has no effect with --heads / --heads-file / --fit-file"),
])
def test_ablation_refuses_flags_that_would_be_ignored(tiny_model_dirs, text_file, tmp_path, capsys, no_weights,
                                                      extra, message):
    (tmp_path / "heads.txt").write_text("L1H0\n")
    fit = _fit_file(tmp_path / "fit.pkl", (2, 4))
    extra = [x.format(heads=tmp_path / "heads.txt", fit=fit) for x in extra]
    line = _refused(ablation.main, _ablation_argv(tiny_model_dirs["gpt2"], text_file, tmp_path / "run", *extra), capsys)
    assert message in line
    assert _files(tmp_path / "run") == []


def test_ablation_from_saved_refuses_the_flags_of_a_model_run(tmp_path, capsys, no_weights):
    line = _refused(ablation.main, ["--from-saved", str(tmp_path / "x.pkl"), "--heads", "L1H0", "--n-eval", "5"],
                    capsys)
    assert "--heads, --n-eval have no effect with --from-saved" in line


@pytest.mark.slow
def test_ablation_records_the_fraction_only_when_it_chose_the_heads(tiny_model_dirs, text_file, tmp_path):
    model_dir = tiny_model_dirs["gpt2"]
    assert ablation.main(_ablation_argv(model_dir, text_file, tmp_path / "heads", "--heads", "L1H0")) is None
    parameters = _saved_parameters(tmp_path / "heads" / "saved" / f"ablation_experiment_{model_dir.name}.pkl")
    assert parameters["fraction"] is None and parameters["fit_file"] is None
    fit = _fit_file(tmp_path / "fit.pkl", (2, 4))
    assert ablation.main(_ablation_argv(model_dir, text_file, tmp_path / "fit", "--fit-file", str(fit),
                                        "--fraction", "0.25")) is None
    parameters = _saved_parameters(tmp_path / "fit" / "saved" / f"ablation_experiment_{model_dir.name}.pkl")
    assert parameters["fraction"] == 0.25 and parameters["fit_file"].endswith("fit.pkl")
    assert parameters["ablated_heads"] == "L0H0,L0H1"  # the two lowest distances of the linspace


def _saved_parameters(path):
    return load_pickle(path)["metadata"]["parameters"]


# ----------------------------------------------------------------------------- pattern_icl.py

def _pattern_argv(model_dir, tmp_path, *extra):
    return ["--model", str(model_dir), "--tasks", "repetition", "--out-dir", str(tmp_path / "out"),
            "--fig-dir", str(tmp_path / "figs"), *extra]


@pytest.mark.parametrize("extra, message", [
    (("--heads", "foo"), "--heads: cannot parse 'foo'"),
    (("--heads", "L1H0,L1H0"), "--heads names L1H0 twice; give each head once"),
    (("--heads", "L9H9"), "head L9H9 does not exist"),
    (("--scores-file", "{missing}"), "does not exist"),
    (("--scores-file", "{wrong_shape}"), "prefix_matching_score has shape (3, 4), the model has 2 x 4 heads"),
    (("--scores-dir", "{empty}"), "no head-score file for model"),
    (("--tasks", "repetition,repetition"), "--tasks repeats repetition"),
])
def test_pattern_icl_checks_heads_and_score_files_before_loading(tiny_model_dirs, tmp_path, capsys, no_weights,
                                                                 extra, message):
    save_pickle(tmp_path / "wrong.pkl", {"prefix_matching_score": np.zeros((3, 4))})
    (tmp_path / "empty").mkdir()
    extra = [x.format(missing=tmp_path / "none.pkl", wrong_shape=tmp_path / "wrong.pkl", empty=tmp_path / "empty")
             for x in extra]
    line = _refused(pattern_icl.main, _pattern_argv(tiny_model_dirs["gpt2"], tmp_path, *extra), capsys)
    assert message in line
    assert _files(tmp_path / "out") == [] and _files(tmp_path / "figs") == []


@pytest.mark.parametrize("extra, message", [
    (("--seeds", "0", "0"), "--seeds: repeats 0; give each value once"),
    (("--percentage", "1", "3", "1.0"), "--percentage: repeats 1; give each value once"),
    (("--prompts-file", "{prompts}", "--shots", "3"), "--shots has no effect with --prompts-file"),
    (("--prompts-file", "{prompts}", "--n-items", "4", "--seeds", "1", "--task-seed", "2"),
     "--n-items, --seeds, --task-seed have no effect with --prompts-file"),
    (("--heads", "L1H0", "--percentage", "3"), "--percentage has no effect with --heads"),
    (("--heads", "L1H0", "--scores-file", "{prompts}"), "--scores-file has no effect with --heads"),
    (("--scores-file", "{prompts}", "--scores-dir", "x"), "--scores-dir has no effect with --scores-file"),
    (("--ablate", "none", "--heads", "L1H0"), "--heads has no effect with --ablate none"),
])
def test_pattern_icl_refuses_repeated_and_conflicting_flags_while_parsing(tiny_model_dirs, tmp_path, capsys,
                                                                          no_weights, extra, message):
    extra = [x.format(prompts=tmp_path / "prompts.json") for x in extra]
    line = _refused(pattern_icl.main, _pattern_argv(tiny_model_dirs["gpt2"], tmp_path, *extra), capsys)
    assert message in line and line.endswith("(see --help)")


@pytest.mark.slow
def test_pattern_prompts_longer_than_the_context_are_refused_before_any_forward_pass(tiny_model_dirs, tmp_path,
                                                                                     capsys, monkeypatch):
    import icl_cmr.interventions.pattern_eval

    def refuse(*args, **kwargs):
        raise AssertionError("a forward pass ran before the prompt length was checked")

    for name in ("label_log_likelihoods", "reference_means"):
        monkeypatch.setattr(icl_cmr.interventions.pattern_eval, name, refuse)
    argv = _pattern_argv(tiny_model_dirs["gpt2"], tmp_path, "--heads", "L1H3", "--n-items", "2", "--seeds", "0",
                         "--n-reference", "2", "--shots", "300")
    line = _refused(pattern_icl.main, argv, capsys)
    assert "exceed the model's context of 256" in line and "(repetition, 300 shots)" in line
    assert _files(tmp_path) == []


@pytest.mark.slow
def test_pattern_icl_metadata_records_only_what_was_used(tiny_model_dirs, tmp_path, capsys):
    model_dir = tiny_model_dirs["gpt2"]
    first = _pattern_argv(model_dir, tmp_path / "a", "--heads", "L1H0", "--method", "zero", "--shots", "2",
                          "--n-items", "2", "--seeds", "1", "--n-random-sets", "1", "--n-reference", "7")
    assert pattern_icl.main(first) == 0
    assert "--n-reference has no effect without mean in --method; ignored" in capsys.readouterr().err
    meta = load_json(tmp_path / "a" / "out" / model_dir.name / "metadata.json")["parameters"]
    assert meta["heads"] == "L1H0" and meta["percentage"] is None and meta["scores_file"] is None
    assert meta["scores_dir"] is None and meta["n_reference"] is None and meta["reference_corpus"] is None
    assert meta["knockout_kind"] is None and (meta["shots"], meta["seeds"]) == (2, [1])
    # rerun from the saved prompts: the settings recorded are the file's, not the flags' defaults (5 shots, 3 seeds)
    again = _pattern_argv(model_dir, tmp_path / "b", "--prompts-file",
                          str(tmp_path / "a" / "out" / model_dir.name / "prompts.json"), "--ablate", "none")
    assert pattern_icl.main(again) == 0
    meta = load_json(tmp_path / "b" / "out" / model_dir.name / "metadata.json")
    assert (meta["parameters"]["shots"], meta["parameters"]["n_items"], meta["parameters"]["seeds"]) == (2, 2, [1])
    assert meta["parameters"]["heads"] is None and meta["parameters"]["method"] is None
