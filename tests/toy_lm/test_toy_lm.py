"""Specification of the bundled small language model (icl_cmr.toy_lm, src/train_toy_lm.py)."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import shutil
from pathlib import Path

import matplotlib.pyplot
import numpy as np
import pytest
import torch

from icl_cmr.errors import InputError
from icl_cmr.figures.toy_lm import plot_training_run
from icl_cmr.toy_lm.config import ToyLMConfig, config_from_saved
from icl_cmr.toy_lm.corpus import (corpus_split, held_out_texts, read_texts, split_corpus_files, stdlib_dir,
                                   stdlib_source_files)
from icl_cmr.toy_lm.tokenizer import SPECIAL_TOKEN, frequent_token_ids, tokenize_documents, train_tokenizer
from icl_cmr.toy_lm.training_rows import build_training_rows
from icl_cmr.toy_lm.model import make_model, sinusoidal_position_embeddings
from icl_cmr.toy_lm.scoring import held_out_windows, icl_score, matching_score_from_patterns, repeated_random_prompts
from icl_cmr.toy_lm.training import learning_rate_at, train
from icl_cmr.toy_lm.training_run import ToyLMTrainingSettings, check_corpus

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "saved_models" / "toy_lm"


# ----------------------------------------------------------------------------- helpers

def _fake_stdlib(root: Path) -> Path:
    """A small folder shaped like a stdlib: modules, a package, a test suite, site-packages."""
    files = {
        "abc.py": "x = 1\n", "os.py": "y = 2\n", "json/__init__.py": "z = 3\n", "json/decoder.py": "w = 4\n",
        "test/test_os.py": "assert True\n", "unittest/test/test_case.py": "pass\n",
        "site-packages/pkg/mod.py": "pass\n", "idlelib/idle_test/t.py": "pass\n", "notes.txt": "not python\n",
    }
    files.update({f"mod{i:03d}.py": f"value_{i} = {i}\n" for i in range(200)})
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@functools.lru_cache(maxsize=None)
def _small_texts(n_files: int = 6) -> tuple:
    train_files, _ = corpus_split()
    return tuple(read_texts(train_files[:n_files]))


def _tiny_config(**overrides) -> ToyLMConfig:
    values = dict(vocab_size=300, n_layer=2, n_head=2, d_model=32, d_mlp=64, n_ctx=64, copy_span_min=4,
                  copy_span_max=20, batch_size=8, max_steps=20, warmup_steps=2, eval_every=5,
                  monitor_prompts=2, monitor_block_len=20, frequent_min_count=5, icl_early_index=5,
                  icl_late_index=60, stop_score=None)
    values.update(overrides)
    return ToyLMConfig(**values)


@pytest.fixture(scope="module")
def small_tokenizer():
    return train_tokenizer(_small_texts(), vocab_size=300, min_frequency=2)


# ----------------------------------------------------------------------------- corpus and split

def test_corpus_skips_tests_and_site_packages(tmp_path):
    root = _fake_stdlib(tmp_path)
    names = [p.relative_to(root).as_posix() for p in stdlib_source_files(root)]
    assert "json/decoder.py" in names and "abc.py" in names
    assert not any(part in name for name in names for part in ("test/", "site-packages", "idle_test", ".txt"))
    assert names == sorted(names)


def test_split_is_deterministic_disjoint_and_complete(tmp_path):
    root = _fake_stdlib(tmp_path)
    files = stdlib_source_files(root)
    train_files, held = split_corpus_files(files, root, held_out_percent=10, salt="s")
    train2, held2 = split_corpus_files(list(reversed(files)), root, held_out_percent=10, salt="s")
    assert set(train_files) == set(train2) and set(held) == set(held2)
    assert not set(train_files) & set(held)
    assert set(train_files) | set(held) == set(files)
    assert 0 < len(held) < len(files) / 4  # about 10 % of ~204 files
    # The rule, written out independently: sha256("s/<relative path>") first 8 bytes mod 100 < 10.
    expected = {p for p in files if int.from_bytes(hashlib.sha256(
        f"s/{p.relative_to(root).as_posix()}".encode()).digest()[:8], "big") % 100 < 10}
    assert set(held) == expected


def test_split_of_a_file_does_not_depend_on_other_files(tmp_path):
    root = _fake_stdlib(tmp_path)
    files = stdlib_source_files(root)
    _, held_all = split_corpus_files(files, root, 10, "s")
    _, held_half = split_corpus_files(files[::2], root, 10, "s")
    assert set(held_half) == set(held_all) & set(files[::2])


def test_held_out_texts_are_the_real_held_out_files():
    train_files, held = corpus_split()
    texts = held_out_texts()
    root = stdlib_dir()
    assert [name for name, _ in texts] == [p.relative_to(root).as_posix() for p in held]
    train_names = {p.relative_to(root).as_posix() for p in train_files}
    assert not train_names & {name for name, _ in texts}
    name, text = texts[0]
    assert text == (root / name).read_text(encoding="utf-8", errors="replace") and len(text) > 0


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_round_trips_text(small_tokenizer):
    text = "def f(x):\n    return {'a': x ** 2}  # ünïcødé ✓\n\tpass\n"
    ids = small_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert small_tokenizer.decode(ids) == text
    assert len(small_tokenizer) == 300
    assert small_tokenizer.bos_token == small_tokenizer.eos_token == SPECIAL_TOKEN
    assert max(ids) < 300 and len(ids) < len(text.encode())  # merges compress the bytes


def test_tokenizer_saves_and_loads_through_auto_tokenizer(small_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    small_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "import os\nprint(os.getcwd())\n"
    assert loaded(text)["input_ids"] == small_tokenizer(text)["input_ids"]
    assert loaded.bos_token_id == small_tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)


def test_tokenize_documents_separates_documents(small_tokenizer):
    stream = tokenize_documents(small_tokenizer, ["a = 1", "b = 2"])
    sep = small_tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    assert np.flatnonzero(stream == sep).tolist() == [len(small_tokenizer("a = 1")["input_ids"]), stream.size - 1]
    assert small_tokenizer.decode(stream[:-1]) == "a = 1" + SPECIAL_TOKEN + "b = 2"


def test_frequent_token_ids_counts_and_excludes():
    ids, counts = frequent_token_ids(np.array([0, 1, 1, 2, 2, 2, 0, 0]), vocab_size=5, min_count=2,
                                            exclude=[0])
    assert counts.tolist() == [3, 2, 3, 0, 0]
    assert ids.tolist() == [1, 2]


# ----------------------------------------------------------------------------- training rows

def test_rows_copy_a_span_of_their_own_text_later():
    stream = np.arange(10_000) * 7  # every stream token distinct: positions can be traced back
    rows, spans = build_training_rows(stream, 500, 256, np.random.default_rng(1), 16, 100)
    assert rows.shape == (500, 256)
    for row, (source, copy, length) in zip(rows, spans):
        assert 16 <= length <= 100
        assert source + length <= copy and copy + length <= 256  # the copy comes later, inside the row
        np.testing.assert_array_equal(row[copy: copy + length], row[source: source + length])
        rest = np.concatenate([row[:copy], row[copy + length:]])
        assert rest.size == 256 - length
        np.testing.assert_array_equal(np.diff(rest), 7)  # outside the copy: consecutive stream text
    assert spans[:, 2].min() == 16 and spans[:, 2].max() == 100  # both ends of the range are drawn


def test_rows_without_copies_are_plain_windows():
    stream = np.arange(5_000)
    rows, spans = build_training_rows(stream, 50, 64, np.random.default_rng(0), 4, 20, copy_fraction=0.0)
    assert (spans[:, 2] == 0).all()
    np.testing.assert_array_equal(np.diff(rows, axis=1), 1)


def test_rows_are_reproducible_from_the_generator_seed():
    stream = np.arange(3_000)
    a = build_training_rows(stream, 8, 64, np.random.default_rng(5), 4, 20)
    b = build_training_rows(stream, 8, 64, np.random.default_rng(5), 4, 20)
    c = build_training_rows(stream, 8, 64, np.random.default_rng(6), 4, 20)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_rows_reject_spans_that_do_not_fit():
    with pytest.raises(InputError, match="span_max"):
        build_training_rows(np.arange(1000), 2, 64, np.random.default_rng(0), 16, 40)


# ----------------------------------------------------------------------------- model pieces

def test_sinusoidal_position_embeddings_closed_form():
    table = sinusoidal_position_embeddings(256, 128, std=0.02)
    assert table.shape == (256, 128)
    assert table.std() == pytest.approx(0.02, rel=1e-5)
    scale = table[0, 1]  # raw PE[0, 1] = cos(0) = 1, so this is the rescaling factor
    p, i = 37, 5  # PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)
    assert table[p, 2 * i] / scale == pytest.approx(math.sin(p / 10000 ** (2 * i / 128)), abs=1e-5)
    assert table[p, 2 * i + 1] / scale == pytest.approx(math.cos(p / 10000 ** (2 * i / 128)), abs=1e-5)


def test_learning_rate_schedule_endpoints():
    config = ToyLMConfig(max_steps=1000, warmup_steps=10, learning_rate=3e-3, min_lr_ratio=0.3)
    assert learning_rate_at(0, config) == pytest.approx(3e-4)
    assert learning_rate_at(10, config) == pytest.approx(3e-3)
    assert learning_rate_at(505, config) == pytest.approx(0.3 * 3e-3 + 0.5 * 0.7 * 3e-3)  # half-way
    assert learning_rate_at(1000, config) == pytest.approx(0.9e-3)


def test_repeated_prompts_have_distinct_ids_repeated_once():
    prompts = repeated_random_prompts(np.arange(10, 60), 4, 20, bos_id=0, rng=np.random.default_rng(0))
    assert prompts.shape == (4, 41)
    assert (prompts[:, 0] == 0).all()
    np.testing.assert_array_equal(prompts[:, 1:21], prompts[:, 21:])
    assert all(len(set(row[1:21])) == 20 and set(row[1:21]) <= set(range(10, 60)) for row in prompts)


def test_matching_score_reads_lag_plus_one_attention():
    n, offset = 5, 1
    seq = offset + 2 * n
    patterns = np.zeros((2, 1, 3, seq, seq))
    # head 0: causal uniform; head 1: all attention on lag +1 (query i -> key i - n + 1); head 2: on lag 0.
    for q in range(seq):
        patterns[:, 0, 0, q, : q + 1] = 1.0 / (q + 1)
        patterns[:, 0, 1, q, max(q - n + 1, 0)] = 1.0
        patterns[:, 0, 2, q, max(q - n, 0)] = 1.0
    scores = matching_score_from_patterns(patterns, n, offset)
    queries = range(offset + n, offset + 2 * n - 1)  # lag +1 key inside the first repeat
    assert scores[0, 0] == pytest.approx(np.mean([1.0 / (q + 1) for q in queries]))
    assert scores[0, 1] == pytest.approx(1.0)
    assert scores[0, 2] == pytest.approx(0.0)


def test_icl_score_is_late_minus_early_loss():
    losses = np.array([[3.0, 2.0, 1.5], [4.0, 4.0, 5.0]])
    np.testing.assert_allclose(icl_score(losses, 0, 2), [-1.5, 1.0])
    with pytest.raises(InputError):
        icl_score(losses, 2, 3)


def test_held_out_windows_start_with_bos_and_stay_in_one_file(small_tokenizer):
    texts = ["x = 1\n" * 40, "short", "y = 2\n" * 40]
    windows = held_out_windows(small_tokenizer, texts, n_ctx=16)
    bos = small_tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    n_first = len(small_tokenizer(texts[0])["input_ids"]) // 15
    n_last = len(small_tokenizer(texts[2])["input_ids"]) // 15
    assert windows.shape == (n_first + n_last, 16)
    assert (windows[:, 0] == bos).all() and not (windows[:, 1:] == bos).any()
    np.testing.assert_array_equal(windows[0, 1:], small_tokenizer(texts[0])["input_ids"][:15])


# ----------------------------------------------------------------------------- training

def _train_tiny(small_tokenizer, seed: int, **overrides):
    config = _tiny_config(**overrides)
    stream = tokenize_documents(small_tokenizer, _small_texts())
    special = small_tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    frequent, _ = frequent_token_ids(stream, len(small_tokenizer), config.frequent_min_count, [special])
    torch.set_num_threads(1)
    return config, train(config, stream, len(small_tokenizer), special, frequent, seed,
                                show_progress=False)


@pytest.mark.slow
def test_twenty_training_steps_lower_the_loss(small_tokenizer):
    config, result = _train_tiny(small_tokenizer, seed=0)
    assert result.steps == 20 and [row["step"] for row in result.log] == [5, 10, 15, 20]
    assert result.log[-1]["train_loss"] < result.log[0]["train_loss"] - 0.5
    assert result.log[0]["train_loss"] < math.log(300) + 0.5  # starts near chance, log(vocab)
    assert result.final_matching_scores.shape == (2, 2)
    assert ((result.final_matching_scores >= 0) & (result.final_matching_scores <= 1)).all()


@pytest.mark.slow
def test_training_is_bit_for_bit_reproducible(small_tokenizer):
    _, first = _train_tiny(small_tokenizer, seed=3, max_steps=6)
    _, second = _train_tiny(small_tokenizer, seed=3, max_steps=6)
    _, other = _train_tiny(small_tokenizer, seed=4, max_steps=6)
    for (name, a), (_, b), (_, c) in zip(first.model.state_dict().items(), second.model.state_dict().items(),
                                         other.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.model.transformer.h[0].attn.c_attn.weight,
                           other.model.transformer.h[0].attn.c_attn.weight)


@pytest.mark.slow
def test_stop_after_steps_equals_the_first_steps_of_the_full_run(small_tokenizer):
    config = _tiny_config()
    stream = tokenize_documents(small_tokenizer, _small_texts())
    special = small_tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    frequent, _ = frequent_token_ids(stream, len(small_tokenizer), config.frequent_min_count, [special])
    seen = {}

    def keep_step_ten(row, model):
        if row["step"] == 10:
            seen.update({name: value.clone() for name, value in model.state_dict().items()})

    torch.set_num_threads(1)
    train(config, stream, len(small_tokenizer), special, frequent, 1, progress=keep_step_ten,
                 show_progress=False)
    short = train(dataclasses.replace(config, stop_after_steps=10), stream, len(small_tokenizer), special,
                         frequent, 1, show_progress=False)
    assert short.steps == 10
    assert short.log[-1]["lr"] == learning_rate_at(9, config)  # schedule still spans max_steps=20
    for name, value in short.model.state_dict().items():
        assert torch.equal(value, seen[name]), name


def test_early_stop_after_patience(small_tokenizer):
    _, result = _train_tiny(small_tokenizer, seed=0, stop_score=0.0, stop_patience=2)
    assert result.stopped_early and result.steps == 10


def test_model_has_sinusoidal_positions_and_recipe_shape():
    config = ToyLMConfig()
    model = make_model(config, vocab_size=512, special_token_id=0)
    assert model.config.n_layer == 2 and model.config.n_head == 4 and model.config.n_embd == 128
    assert model.config.n_inner == 512 and model.config.n_positions == 256
    np.testing.assert_allclose(model.transformer.wpe.weight.detach().numpy(),
                               sinusoidal_position_embeddings(256, 128, 0.02))


# ----------------------------------------------------------------------------- the training run (engine)

def test_default_training_settings_give_the_shipped_config():
    # The script's defaults: late ICL index n_ctx - 6 = 250 of a 256-token context, everything else ToyLMConfig's.
    assert ToyLMTrainingSettings().config() == ToyLMConfig()
    assert ToyLMTrainingSettings(n_ctx=300).config().icl_late_index == 294


def test_training_settings_name_the_late_index_parameter():
    with pytest.raises(InputError) as caught:
        ToyLMTrainingSettings(icl_late_index=255).config()
    assert str(caught.value) == ("`icl_late_index` must be in (50, 254] (after the early index 50, at most `n_ctx` - 2), "
                                 "got 255")
    assert set(caught.value.parameters) == {"icl_late_index", "n_ctx"}


def test_check_corpus_names_the_stdlib_dir_parameter(tmp_path):
    (tmp_path / "notes.txt").write_text("no Python here")
    with pytest.raises(InputError) as caught:
        check_corpus(tmp_path, ToyLMConfig())
    assert str(caught.value) == f"`stdlib_dir` {tmp_path} holds no .py files"
    assert caught.value.parameters == ("stdlib_dir",)


def test_config_from_saved_reads_back_a_json_round_trip():
    config = ToyLMConfig(n_ctx=300, icl_late_index=290, vocab_size=600)
    parameters = json.loads(json.dumps({**config.to_dict(), "added_by_other_code": 1}))
    assert isinstance(parameters["adam_betas"], list)   # JSON has no tuples
    assert config_from_saved(parameters) == config


def test_loss_curve_title_names_the_run():
    log = [{"step": step, "train_loss": 6.0 - step, "matching_L0H0": 0.1, "matching_L1H0": 0.2 * step}
           for step in (1, 2, 3)]
    evaluation = {"best_head": "L1H0", "best_matching_score": 0.6, "icl_score_mean": -0.25}
    figure = plot_training_run(log, seed=7, steps=3, evaluation=evaluation)
    assert figure.get_suptitle() == "toy LM, seed 7: 3 steps; best head L1H0 0.60; held-out ICL -0.25"
    assert len(figure.axes) == 2
    matplotlib.pyplot.close(figure)


# ----------------------------------------------------------------------------- the script and its folder

@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """Run the real script on a small copy of the stdlib (same relative paths, so the same split)."""
    import train_toy_lm

    root = stdlib_dir()
    train_files, held = corpus_split()
    small_root = tmp_path_factory.mktemp("stdlib")
    for path in train_files[:10] + held[:2]:
        target = small_root / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    out = tmp_path_factory.mktemp("model") / "toy"
    code = train_toy_lm.main(["--save_dir", str(out), "--stdlib_dir", str(small_root), "--max_steps", "3",
                              "--eval_every", "1", "--batch_size", "2", "--threads", "1", "--no_progress"])
    assert code == 0
    return out


@pytest.mark.slow
def test_script_writes_a_complete_model_folder(trained_dir):
    names = {p.name for p in trained_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_log.csv",
            "training_log.json", "frequent_token_ids.json", "loss_curve.pdf"} <= names
    assert not any(p.name.startswith(".") for p in trained_dir.parent.iterdir())  # no temp folder left
    log = json.loads((trained_dir / "training_log.json").read_text())
    assert log["metadata"]["summary"]["steps"] == 3 and len(log["log"]) == 3
    assert log["metadata"]["evaluation"]["max_abs_diff_tl_vs_hf"] < 1e-4
    assert (trained_dir / "training_log.csv").read_text().count("\n") == 4  # header + 3 rows


@pytest.mark.slow
def test_saved_folder_loads_with_transformers_and_transformer_lens_offline(trained_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens.model_bridge import TransformerBridge

    tokenizer = AutoTokenizer.from_pretrained(trained_dir)
    model = AutoModelForCausalLM.from_pretrained(trained_dir)
    bridge = TransformerBridge.boot_transformers(str(trained_dir), device="cpu")
    tokens = bridge.to_tokens("def add(a, b):\n    return a + b\n")
    assert tokens[0, 0].item() == tokenizer.bos_token_id  # TransformerLens prepends BOS
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), model(tokens).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_evaluate_only_recomputes_the_same_evaluation(trained_dir):
    import train_toy_lm

    log_path = trained_dir / "training_log.json"
    before = json.loads(log_path.read_text())
    small_root = Path(before["metadata"]["summary"]["stdlib_dir"])
    assert train_toy_lm.main(["--evaluate_only", "--save_dir", str(trained_dir), "--stdlib_dir", str(small_root),
                              "--threads", "1"]) == 0
    after = json.loads(log_path.read_text())
    assert after["metadata"]["evaluation"] == before["metadata"]["evaluation"]  # deterministic evaluation
    assert after["log"] == before["log"]


def test_script_rejects_a_missing_model_for_evaluate_only(tmp_path):
    import train_toy_lm
    from icl_cmr.cli.args import run_cli

    assert run_cli(train_toy_lm.main, ["--evaluate_only", "--save_dir", str(tmp_path / "none")]) == 2


# ----------------------------------------------------------------------------- the shipped model

@pytest.fixture(scope="module")
def shipped():
    if not (SHIPPED_DIR / "training_log.json").is_file():
        pytest.skip(f"no shipped model at {SHIPPED_DIR} (run python src/train_toy_lm.py)")
    return json.loads((SHIPPED_DIR / "training_log.json").read_text())


def test_shipped_model_is_small_enough_to_commit(shipped):
    total = sum(p.stat().st_size for p in SHIPPED_DIR.iterdir() if p.is_file())
    assert total <= 20 * 2 ** 20


def test_shipped_model_has_an_induction_head_through_transformer_lens(shipped):
    """Recomputed here, independently of the saved log: at least one head with matching score >= 0.5."""
    from transformer_lens.model_bridge import TransformerBridge

    frequent = np.asarray(json.loads((SHIPPED_DIR / "frequent_token_ids.json").read_text())["token_ids"])
    bridge = TransformerBridge.boot_transformers(str(SHIPPED_DIR), device="cpu")
    n = 100
    prompts = repeated_random_prompts(frequent, 8, n, bridge.tokenizer.bos_token_id,
                                             np.random.default_rng(2024))
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(bridge.cfg.n_layers)]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(torch.from_numpy(prompts), names_filter=lambda name: name in names)
    # Slow reference: loop over queries of the second repeat, attention on the key after the first occurrence.
    best = 0.0
    for layer, name in enumerate(names):
        pattern = cache[name].numpy()  # [batch, head, q, k]
        for head in range(pattern.shape[1]):
            values = [pattern[b, head, q, q - n + 1] for b in range(prompts.shape[0])
                      for q in range(1 + n, 2 * n) if prompts[b, q - n + 1] == prompts[b, q + 1]]
            best = max(best, float(np.mean(values)))
    assert best >= 0.5
    assert best == pytest.approx(shipped["metadata"]["evaluation"]["best_matching_score"], abs=0.05)


def test_shipped_model_icl_score_is_negative(shipped):
    evaluation = shipped["metadata"]["evaluation"]
    assert evaluation["icl_score_mean"] + 3 * evaluation["icl_score_sem"] < 0
