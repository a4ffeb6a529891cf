"""compute_head_scores.py end to end on tiny GPT-2 / GPT-NeoX / Llama-GQA models, against a slow reference.

The reference re-runs each saved prompt set through ``run_with_cache`` (every layer's
full patterns kept) and computes every score with explicit loops over layers, heads,
prompts, queries and lags, and the copying score from the eigenvalues of the full
vocab x vocab OV circuit.
"""
from __future__ import annotations

import json
import shutil

import joblib
import numpy as np
import pytest
import torch

import compute_head_scores
from icl_cmr.cli.args import run_cli
from icl_cmr.config import ATTN_CRP_LAGS
from icl_cmr.files.reading import load_pickle
from icl_cmr.heads.hooks import hook_name
from icl_cmr.heads.models import load_model
from icl_cmr.heads.registry import resolve_model
from icl_cmr.files.score_format import AUTHOR_KEYS, EXTRA_KEYS
from tiny_models import N_HEADS, N_LAYERS

BLOCK_LEN, N_PROMPTS, BATCH = 12, 5, 2
PREFIX_BLOCK, PREFIX_COPIES, PREFIX_PROMPTS = 8, 4, 3
SMALL_ARGS = ["--n-prompts", str(N_PROMPTS), "--block-len", str(BLOCK_LEN), "--batch-size", str(BATCH),
              "--prefix-block-len", str(PREFIX_BLOCK), "--prefix-copies", str(PREFIX_COPIES),
              "--prefix-n-prompts", str(PREFIX_PROMPTS), "--seed", "3", "--no-progress", "--device", "cpu"]




@pytest.fixture(scope="module")
def scored(one_torch_thread, tiny_model_dirs, tmp_path_factory):
    """``{arch: (saved dict, output path)}`` after one script run per tiny model."""
    out_dir = tmp_path_factory.mktemp("scores")
    results = {}
    for arch, folder in tiny_model_dirs.items():
        out = out_dir / f"{arch}.pkl"
        assert run_cli(compute_head_scores.main, ["--model", str(folder), "--out", str(out)] + SMALL_ARGS) == 0
        results[arch] = (load_pickle(out), out)
    return results


def _cache(model, tokens, kinds):
    names = [hook_name(layer, kind) for layer in range(model.cfg.n_layers) for kind in kinds]
    with torch.inference_mode():
        _, cache = model.run_with_cache(torch.as_tensor(tokens), names_filter=lambda n: n in names)
    return {(layer, kind): cache[hook_name(layer, kind)].double().numpy()
            for layer in range(model.cfg.n_layers) for kind in kinds}


def _reference_crp(attn, block_len, offset):
    """Loops: mean and SEM (ddof 1) per head and lag over (prompt, query) with the key in the first repeat."""
    n_batch, n_heads = attn.shape[:2]
    mean = np.full((n_heads, len(ATTN_CRP_LAGS)), np.nan)
    sem = np.full_like(mean, np.nan)
    for head in range(n_heads):
        for index, lag in enumerate(ATTN_CRP_LAGS):
            values = []
            for b in range(n_batch):
                for query in range(offset + block_len, offset + 2 * block_len):
                    key = query - block_len + lag
                    if offset <= key < offset + block_len:
                        values.append(attn[b, head, query, key])
            if values:
                mean[head, index] = np.mean(values)
            if len(values) > 1:
                sem[head, index] = np.std(values, ddof=1) / np.sqrt(len(values))
    return mean, sem


def _reference_prefix(pattern, tokens, block_len, offset):
    n_batch, n_heads, n_pos, _ = pattern.shape
    scores = np.zeros(n_heads)
    for head in range(n_heads):
        total, count = 0.0, 0
        for b in range(n_batch):
            for query in range(offset + block_len, n_pos):
                following = tokens[b, query - block_len + 1]
                total += sum(pattern[b, head, query, key] for key in range(query) if tokens[b, key] == following)
                count += 1
        scores[head] = total / count
    return scores


def _reference_copying(model):
    """Eigenvalues of the full [vocab, vocab] OV circuit, one head at a time, processed weights."""
    model.enable_compatibility_mode(disable_warnings=True)
    W_E, W_U = model.W_E.detach().double(), model.W_U.detach().double()
    W_V, W_O = model.W_V.detach().double(), model.W_O.detach().double()
    n_heads, n_kv = model.cfg.n_heads, W_V.shape[1]
    scores = np.zeros((model.cfg.n_layers, n_heads))
    for layer in range(model.cfg.n_layers):
        for head in range(n_heads):
            kv_head = head // (n_heads // n_kv)
            full = W_E @ W_V[layer, kv_head] @ W_O[layer, head] @ W_U
            eig = torch.linalg.eigvals(full)
            scores[layer, head] = float(eig.real.sum() / eig.abs().sum())
    return scores


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama_gqa"])
def test_every_saved_score_matches_the_slow_reference(scored, tiny_model_dirs, arch):
    saved, _ = scored[arch]
    model = load_model(resolve_model(str(tiny_model_dirs[arch])))
    offset = 1  # the tiny tokenizers have a BOS token
    repeat = _cache(model, saved["prompts"], ("attn_scores", "pattern"))
    prefix = _cache(model, saved["prefix_prompts"], ("pattern",))
    for layer in range(N_LAYERS):
        mean, sem = _reference_crp(repeat[layer, "attn_scores"], BLOCK_LEN, offset)
        np.testing.assert_allclose(saved["CRP_scores"][layer], mean, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(saved["CRP_scores_sem"][layer], sem, atol=1e-5, rtol=1e-5)
        prob_mean, prob_sem = _reference_crp(repeat[layer, "pattern"], BLOCK_LEN, offset)
        np.testing.assert_allclose(saved["CRP_prob_scores"][layer], prob_mean, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(saved["CRP_prob_scores_sem"][layer], prob_sem, atol=1e-5, rtol=1e-5)
        lag_plus_one = list(ATTN_CRP_LAGS).index(1)
        np.testing.assert_allclose(saved["head_scores"].numpy()[layer], prob_mean[:, lag_plus_one], atol=1e-5)
        np.testing.assert_allclose(saved["prefix_matching_score"][layer],
                                   _reference_prefix(prefix[layer, "pattern"], saved["prefix_prompts"],
                                                     PREFIX_BLOCK, offset), atol=1e-5)
    np.testing.assert_allclose(saved["copying_score"], _reference_copying(model), atol=1e-5)


def test_prompts_follow_the_documented_design(scored):
    saved, _ = scored["gpt2"]
    prompts, prefix = saved["prompts"], saved["prefix_prompts"]
    assert prompts.shape == (N_PROMPTS, 1 + 2 * BLOCK_LEN)
    assert prefix.shape == (PREFIX_PROMPTS, 1 + PREFIX_COPIES * PREFIX_BLOCK)
    assert (prompts[:, 0] == 0).all() and (prefix[:, 0] == 0).all()  # BOS id 0
    block = prompts[:, 1:1 + BLOCK_LEN]
    np.testing.assert_array_equal(prompts[:, 1 + BLOCK_LEN:], block)
    assert all(len(set(row)) == BLOCK_LEN for row in block)
    assert not np.isin(prompts[:, 1:], [0]).any()  # the special token never appears inside a block
    for copy in range(1, PREFIX_COPIES):
        np.testing.assert_array_equal(prefix[:, 1 + copy * PREFIX_BLOCK:1 + (copy + 1) * PREFIX_BLOCK],
                                      prefix[:, 1:1 + PREFIX_BLOCK])


def test_same_seed_gives_identical_files_and_another_seed_differs(scored, tiny_model_dirs, tmp_path):
    saved, _ = scored["neox"]
    again = tmp_path / "again.pkl"
    assert run_cli(compute_head_scores.main, ["--model", str(tiny_model_dirs["neox"]), "--out", str(again)]
                   + SMALL_ARGS) == 0
    repeat = load_pickle(again)
    np.testing.assert_array_equal(repeat["prompts"], saved["prompts"])
    np.testing.assert_array_equal(repeat["CRP_scores"], saved["CRP_scores"])
    other = tmp_path / "other.pkl"
    args = SMALL_ARGS.copy()
    args[args.index("--seed") + 1] = "4"
    assert run_cli(compute_head_scores.main, ["--model", str(tiny_model_dirs["neox"]), "--out", str(other)]
                   + args) == 0
    assert not np.array_equal(load_pickle(other)["prompts"], saved["prompts"])


def test_saved_file_has_the_authors_keys_types_and_shapes(scored):
    saved, path = scored["llama_gqa"]
    plain = joblib.load(path)
    assert set(plain) == set(saved) == set(AUTHOR_KEYS) | set(EXTRA_KEYS)
    assert isinstance(saved["head_scores"], torch.Tensor) and saved["head_scores"].dtype == torch.float32
    assert tuple(saved["head_scores"].shape) == (N_LAYERS, N_HEADS)
    for key in ("CRP_scores", "CRP_scores_sem", "CRP_prob_scores", "CRP_prob_scores_sem"):
        assert saved[key].shape == (N_LAYERS, N_HEADS, 16)
    for key in ("copying_score", "prefix_matching_score", "labels", "sort_ind", "sorted_head_scores"):
        assert saved[key].shape == (N_LAYERS, N_HEADS)
    assert saved["labels"][1, 3] == "L1H3"
    order = saved["sort_ind"]
    scores = saved["head_scores"].numpy()
    for layer in range(N_LAYERS):
        assert (np.diff(scores[layer, order[layer]]) <= 0).all()
        np.testing.assert_array_equal(saved["sorted_labels"][layer], saved["labels"][layer, order[layer]])
        np.testing.assert_array_equal(saved["sorted_CRP_scores"][layer], saved["CRP_scores"][layer, order[layer]])
    meta = saved["metadata"]
    assert meta["producer"] == "compute_head_scores.py" and meta["seed"] == 3
    assert meta["n_kv_heads"] == 2 and meta["token_pool"]["source"] == "tokenizer"
    assert meta["parameters"]["block_len"] == BLOCK_LEN and meta["prompt_design"]["offset"] == 1


@pytest.mark.official
def test_key_set_and_types_match_the_authors_file(scored, official_dir):
    theirs = load_pickle(official_dir / "saved_scores" / "gpt2-small" / "all_scores_gpt2_small.pkl")
    ours, _ = scored["gpt2"]
    assert set(theirs) <= set(ours)
    for key, value in theirs.items():
        assert type(ours[key]) is type(value), key
        assert ours[key].ndim == value.ndim, key
        assert ours[key].shape[-1] == value.shape[-1] or value.ndim == 2, key


def test_frequent_token_file_in_a_model_folder_is_used_as_the_pool(tiny_model_dirs, tmp_path):
    folder = tmp_path / "toy"
    shutil.copytree(tiny_model_dirs["gpt2"], folder)
    frequent = list(range(40, 80))
    (folder / "frequent_token_ids.json").write_text(json.dumps({"min_count": 100, "token_ids": frequent}))
    out = tmp_path / "toy.pkl"
    assert run_cli(compute_head_scores.main, ["--model", str(folder), "--out", str(out)] + SMALL_ARGS) == 0
    saved = load_pickle(out)
    assert np.isin(saved["prompts"][:, 1:], frequent).all()
    assert np.isin(saved["prefix_prompts"][:, 1:], frequent).all()
    assert saved["metadata"]["token_pool"]["source"].endswith("frequent_token_ids.json")
    assert saved["metadata"]["token_pool"]["size"] == len(frequent)


def test_explicit_token_pool_list_is_used(tiny_model_dirs, tmp_path):
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(list(range(100, 130))))
    out = tmp_path / "pool.pkl"
    assert run_cli(compute_head_scores.main, ["--model", str(tiny_model_dirs["gpt2"]), "--out", str(out),
                                              "--token-pool", str(pool)] + SMALL_ARGS) == 0
    assert np.isin(load_pickle(out)["prompts"][:, 1:], np.arange(100, 130)).all()


def test_no_bos_extreme_exclusion_and_no_copying_flags_reach_the_prompts_and_metadata(tiny_model_dirs, tmp_path):
    out = tmp_path / "flags.pkl"
    assert run_cli(compute_head_scores.main, ["--model", str(tiny_model_dirs["gpt2"]), "--out", str(out), "--no-bos",
                                              "--exclude-extreme-fraction", "0.1", "--no-copying"] + SMALL_ARGS) == 0
    saved = load_pickle(out)
    assert np.isnan(saved["copying_score"]).all() and saved["metadata"]["parameters"]["copying"] is False
    assert saved["prompts"].shape == (N_PROMPTS, 2 * BLOCK_LEN)  # no BOS column
    assert saved["metadata"]["prompt_design"]["offset"] == 0
    pool = saved["metadata"]["token_pool"]
    assert pool["rank_proxy"] == "bpe_merge_rank" and pool["n_excluded_extreme"] == 2 * int(0.1 * 374)


@pytest.mark.parametrize("extra, message", [
    (["--block-len", "200"], "exceed the model's context"),
    (["--token-pool", "{pool}"], "fewer than the block length"),
    (["--token-pool", "{missing}"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_code_2(tiny_model_dirs, tmp_path, capsys, extra, message):
    small_pool = tmp_path / "small.json"
    small_pool.write_text(json.dumps([5, 6, 7]))
    extra = [x.format(pool=small_pool, missing=tmp_path / "nope.json") for x in extra]
    args = ["--model", str(tiny_model_dirs["gpt2"]), "--out", str(tmp_path / "x.pkl")] + SMALL_ARGS + extra
    assert run_cli(compute_head_scores.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and message in err[-1]
    assert not (tmp_path / "x.pkl").exists()


def test_unreachable_hub_fails_fast_with_a_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_cli(compute_head_scores.main, ["--model", "gpt2-small", "--out", str(tmp_path / "x.pkl")]) == 2
    assert "local checkpoint folder" in capsys.readouterr().err
