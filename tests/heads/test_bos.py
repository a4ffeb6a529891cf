"""Which BOS token prompts start with, and checkpoints saved without tokenizer files.

Rule (docs/head_scores.md, "BOS"): the tokenizer's own BOS token when it defines one, whatever
TransformerLens fills in; none when it defines none (Qwen2-style); ``--bos`` / ``--no-bos``
override; the choice is recorded in the output's metadata. The expected ids come from
the tokenizer files the test writes (and from ``tokenizer("text")`` where the
tokenizer adds a BOS itself), never from the code under test.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import compute_head_scores
from icl_cmr.cli.args import run_cli
from icl_cmr.errors import InputError
from icl_cmr.files.reading import load_pickle
from icl_cmr.heads.models import choose_bos, has_tokenizer, load_model
from icl_cmr.heads.registry import resolve_model
from tiny_models import BOS_TOKEN, make_tokenizer, tiny_config

SMALL = ["--n-prompts", "2", "--block-len", "6", "--batch-size", "2", "--prefix-block-len", "4",
         "--prefix-n-prompts", "1", "--no-progress", "--device", "cpu", "--no-copying"]


def _save_model(arch, directory, tokenizer=None, **config_overrides):
    import torch
    from transformers import AutoModelForCausalLM

    vocab = len(tokenizer) if tokenizer is not None else 300
    config = tiny_config(arch, vocab)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def _tokenizer_without_bos():
    """Qwen2-style: an EOS/pad token, no BOS token at all."""
    from transformers import PreTrainedTokenizerFast

    backend = make_tokenizer().backend_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=BOS_TOKEN, pad_token=BOS_TOKEN)


def _tokenizer_that_adds_its_bos():
    """Llama-style: a distinct ``<s>`` that ``tokenizer("text")`` prepends itself."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = make_tokenizer().backend_tokenizer
    backend.add_special_tokens(["<s>"])
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token=BOS_TOKEN)


@pytest.fixture(scope="module")
def qwen_like(tmp_path_factory):
    return _save_model("qwen2", tmp_path_factory.mktemp("qwen_like"), _tokenizer_without_bos(), bos_token_id=None)


@pytest.mark.slow
def test_tokenizer_that_defines_a_bos_gets_it(tiny_model_dirs):
    model = load_model(resolve_model(str(tiny_model_dirs["gpt2"])))
    choice = choose_bos(model)
    expected = json.loads((tiny_model_dirs["gpt2"] / "tokenizer.json").read_text())["added_tokens"][0]
    assert expected["content"] == BOS_TOKEN
    assert (choice.token_id, choice.rule) == (expected["id"], "tokenizer")


def test_tokenizer_without_bos_gets_none_although_transformer_lens_fills_one_in(qwen_like):
    model = load_model(resolve_model(str(qwen_like)))
    assert model.tokenizer.bos_token is not None  # TransformerLens's substitute (its EOS token) ...
    choice = choose_bos(model)
    assert choice.token_id is None and choice.rule == "none defined"  # ... is not used
    with pytest.raises(InputError, match="defines no BOS token"):
        choose_bos(model, requested=True)


def test_bos_that_the_tokenizer_adds_itself_is_the_one_prepended(tmp_path):
    tokenizer = _tokenizer_that_adds_its_bos()
    added = tokenizer("def x")["input_ids"][0]
    assert tokenizer.convert_ids_to_tokens(added) == "<s>"
    model = load_model(resolve_model(str(_save_model("llama_gqa", tmp_path / "llama_like", tokenizer))))
    assert choose_bos(model).token_id == added


def test_no_bos_flag_wins(tiny_model_dirs):
    model = load_model(resolve_model(str(tiny_model_dirs["gpt2"])))
    choice = choose_bos(model, requested=False)
    assert choice.token_id is None and choice.rule == "--no-bos"


def test_head_scores_without_a_bos_token_record_it(qwen_like, tmp_path):
    out = tmp_path / "qwen.pkl"
    assert run_cli(compute_head_scores.main, ["--model", str(qwen_like), "--out", str(out)] + SMALL) == 0
    saved = load_pickle(out)
    assert saved["prompts"].shape == (2, 12)  # no BOS column
    design = saved["metadata"]["prompt_design"]
    assert design["offset"] == 0 and design["bos"] == {"prepended": False, "token_id": None, "rule": "none defined"}


def test_bos_flag_on_a_tokenizer_without_one_is_one_line(qwen_like, tmp_path, capsys):
    out = tmp_path / "never.pkl"
    assert run_cli(compute_head_scores.main, ["--model", str(qwen_like), "--out", str(out), "--bos"] + SMALL) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "defines no BOS token" in errors[0]
    assert "Traceback" not in err and not out.exists()


def test_checkpoint_without_tokenizer_files_draws_from_the_model_vocabulary(tmp_path, capsys):
    folder = _save_model("gpt2", tmp_path / "bare", bos_token_id=7, eos_token_id=9)
    assert not (folder / "tokenizer.json").exists()
    model = load_model(resolve_model(str(folder)))
    assert not has_tokenizer(model)
    out = tmp_path / "bare.pkl"
    assert run_cli(compute_head_scores.main, ["--model", str(folder), "--out", str(out)] + SMALL) == 0
    assert any(line.startswith("WARNING:") and "no tokenizer files" in line
               for line in capsys.readouterr().err.splitlines())
    saved = load_pickle(out)
    pool = saved["metadata"]["token_pool"]
    assert pool["size"] == 300 - 2  # the model's 300 ids minus the config's BOS 7 and EOS 9
    assert (pool["min_id"], pool["max_id"]) == (0, 299)
    assert saved["metadata"]["prompt_design"]["bos"] == {"prepended": True, "token_id": 7, "rule": "model config"}
    assert (saved["prompts"][:, 0] == 7).all()
    assert not np.isin(saved["prompts"][:, 1:], [7, 9]).any()


@pytest.mark.slow
@pytest.mark.parametrize("flag, expected", [([], {"prepended": True, "token_id": 0, "rule": "tokenizer"}),
                                            (["--no-bos"], {"prepended": False, "token_id": None, "rule": "--no-bos"})])
def test_pattern_icl_follows_and_records_the_bos_rule(tiny_model_dirs, tmp_path, flag, expected):
    import pattern_icl

    argv = ["--model", str(tiny_model_dirs["gpt2"]), "--tasks", "repetition", "--n-items", "2", "--seeds", "0",
            "--ablate", "none", "--out-dir", str(tmp_path / "out"), "--fig-dir", str(tmp_path / "figs"), *flag]
    assert pattern_icl.main(argv) == 0
    metadata = json.loads((tmp_path / "out" / tiny_model_dirs["gpt2"].name / "metadata.json").read_text())
    assert metadata["bos"] == expected


@pytest.mark.slow
def test_ablation_follows_and_records_the_bos_rule(tiny_model_dirs, tmp_path):
    import ablation

    words = "memory context recall item drift attention head token order list".split()
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(words[(i + k) % len(words)] for k in range(60))}) + "\n"
                            for i in range(6)))
    found = {}
    for flag in ([], ["--no-bos"]):
        out = tmp_path / ("no_bos" if flag else "default")
        argv = ["--model_name", str(tiny_model_dirs["gpt2"]), "--data", str(data), "--seq-len", "32",
                "--late-index", "25", "--early-index", "5", "--n-eval", "4", "--batch-size", "2", "--heads", "L1H0",
                "--out-dir", str(out), "--figs-dir", str(out / "figs"), "--no-progress", "--n-bootstrap", "50", *flag]
        assert ablation.main(argv) is None
        found[bool(flag)] = load_pickle(out / f"ablation_experiment_{tiny_model_dirs['gpt2'].name}.pkl")["metadata"]
    assert found[False]["parameters"]["bos"] == {"prepended": True, "token_id": 0, "rule": "tokenizer"}
    assert found[True]["parameters"]["bos"] == {"prepended": False, "token_id": None, "rule": "--no-bos"}
    assert found[False]["parameters"]["tokens_sha256"] != found[True]["parameters"]["tokens_sha256"]
