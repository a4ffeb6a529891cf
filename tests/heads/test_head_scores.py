"""Attention lag statistics, prompts, and a hand-built model with exact induction / duplicate-token heads.

Expected values come from explicit loops written here, closed forms (uniform attention),
or the construction of the hand-built model; never from the code under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icl_cmr.config import ATTN_CRP_LAGS
from icl_cmr.errors import InputError
from icl_cmr.heads.scores import (LagAccumulator, attention_crp, induction_matching_score, prefix_matching_score,
                                  repeat_lag_indices, stream_attention_scores)
from icl_cmr.heads.prompts import (PromptConfig, bpe_merge_ranks, default_token_pool, make_prompt_sets,
                                   parse_token_pool, pool_from_ids, repeated_random_prompts, special_token_ids)

LAGS = list(ATTN_CRP_LAGS)




def _random_attention(rng, n_batch, n_heads, n_pos, softmax):
    scores = rng.normal(0.0, 2.0, size=(n_batch, n_heads, n_pos, n_pos))
    scores = np.where(np.tril(np.ones((n_pos, n_pos), bool)), scores, -np.inf)
    if not softmax:
        return np.where(np.isinf(scores), -3.4e38, scores)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


def _loop_crp(attn, block_len, offset, lags=LAGS):
    """Slow reference: explicit loops over heads, lags, prompts and queries."""
    n_batch, n_heads = attn.shape[:2]
    mean = np.full((n_heads, len(lags)), np.nan)
    sem = np.full((n_heads, len(lags)), np.nan)
    for head in range(n_heads):
        for index, lag in enumerate(lags):
            values = [attn[b, head, i, i - block_len + lag]
                      for b in range(n_batch) for i in range(offset + block_len, offset + 2 * block_len)
                      if offset <= i - block_len + lag < offset + block_len]
            if values:
                mean[head, index] = np.mean(values)
            if len(values) > 1:
                sem[head, index] = np.std(values, ddof=1) / math.sqrt(len(values))
    return mean, sem


# ----------------------------------------------------------------------------- lag bookkeeping

def test_lag_indices_of_a_hand_written_prompt():
    # BOS a b c a b c: positions 0..6; queries 4, 5, 6 (first occurrences 1, 2, 3).
    queries, keys, valid = repeat_lag_indices(block_len=3, offset=1, lags=[-1, 0, 1])
    np.testing.assert_array_equal(queries, [4, 5, 6])
    np.testing.assert_array_equal(valid, [[False, True, True], [True, True, True], [True, True, False]])
    np.testing.assert_array_equal(keys[valid], [1, 2, 1, 2, 3, 2, 3])


def test_crp_of_scores_and_probabilities_matches_explicit_loops():
    rng = np.random.default_rng(0)
    for softmax in (False, True):
        attn = _random_attention(rng, n_batch=3, n_heads=2, n_pos=1 + 2 * 10, softmax=softmax)
        stats = attention_crp(attn, block_len=10, offset=1)
        mean, sem = _loop_crp(attn, 10, 1)
        np.testing.assert_allclose(stats.mean, mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(stats.sem, sem, rtol=1e-10, atol=1e-12)
        assert stats.count.tolist() == [3 * (10 - abs(lag)) if lag < 0 else 3 * (10 - lag) for lag in LAGS]


def test_streaming_over_batches_equals_one_pass():
    rng = np.random.default_rng(1)
    attn = _random_attention(rng, n_batch=5, n_heads=3, n_pos=2 * 12, softmax=False) + 50.0  # offset 0, large mean
    accumulator = LagAccumulator(block_len=12, offset=0)
    for start in (0, 2, 3):
        accumulator.update(torch.from_numpy(attn[start:start + {0: 2, 2: 1, 3: 2}[start]]))
    mean, sem = _loop_crp(attn, 12, 0)
    np.testing.assert_allclose(accumulator.result().mean, mean, rtol=1e-10)
    np.testing.assert_allclose(accumulator.result().sem, sem, rtol=1e-8)


def test_lags_beyond_a_short_block_have_no_queries_and_nan():
    attn = _random_attention(np.random.default_rng(2), 2, 1, 1 + 2 * 4, softmax=True)
    stats = attention_crp(attn, block_len=4, offset=1)
    assert stats.count[LAGS.index(-8)] == 0 and np.isnan(stats.mean[0, LAGS.index(-8)])
    assert stats.count[LAGS.index(3)] == 2 and np.isfinite(stats.sem[0, LAGS.index(3)])


def test_matching_score_of_uniform_causal_attention_is_the_mean_of_inverse_positions():
    n, offset, n_pos = 7, 1, 15
    pattern = np.tril(np.ones((n_pos, n_pos))) / np.arange(1, n_pos + 1)[:, None]
    pattern = np.broadcast_to(pattern, (2, 3, n_pos, n_pos))
    expected = np.mean([1.0 / (i + 1) for i in range(offset + n, offset + 2 * n - 1)])
    np.testing.assert_allclose(induction_matching_score(pattern, n, offset), expected, rtol=1e-12)


def test_matching_score_of_a_perfect_induction_pattern_is_one():
    n, offset = 5, 1
    pattern = np.zeros((1, 1, 1 + 2 * n, 1 + 2 * n))
    pattern[0, 0, np.arange(11), 0] = 1.0  # first repeat: attend to BOS
    for i in range(offset + n, offset + 2 * n):
        pattern[0, 0, i] = 0.0
        pattern[0, 0, i, i - n + 1] = 1.0
    assert induction_matching_score(pattern, n, offset)[0] == pytest.approx(1.0)


def test_shape_errors_name_the_expected_layout():
    with pytest.raises(InputError, match=r"\[batch, head, query, key\]"):
        attention_crp(np.zeros((3, 5, 5)), block_len=2)
    with pytest.raises(InputError, match="needs 21"):
        attention_crp(np.zeros((1, 1, 9, 9)), block_len=10, offset=1)


# ----------------------------------------------------------------------------- prefix matching

def _loop_prefix(pattern, tokens, block_len, offset):
    n_batch, n_heads, n_pos, _ = pattern.shape
    out = np.zeros(n_heads)
    for head in range(n_heads):
        values = []
        for b in range(n_batch):
            for i in range(offset + block_len, n_pos):
                following = tokens[b, i - block_len + 1]
                values.append(sum(pattern[b, head, i, k] for k in range(i) if tokens[b, k] == following))
        out[head] = np.mean(values)
    return out


def test_prefix_matching_matches_explicit_loops():
    rng = np.random.default_rng(3)
    tokens = repeated_random_prompts(np.arange(1, 40), n_prompts=2, block_len=6, n_copies=4, bos_id=0, rng=rng)
    pattern = _random_attention(rng, 2, 3, tokens.shape[1], softmax=True)
    np.testing.assert_allclose(prefix_matching_score(pattern, tokens, 6, 1), _loop_prefix(pattern, tokens, 6, 1),
                               rtol=1e-10)


def test_prefix_matching_of_an_ideal_induction_pattern_is_one():
    # Spread attention evenly over the positions right after every earlier occurrence.
    n, copies = 4, 4
    tokens = np.concatenate([[0], np.tile([5, 6, 7, 8], copies)])[None]
    n_pos = tokens.shape[1]
    pattern = np.zeros((1, 1, n_pos, n_pos))
    for i in range(n_pos):
        targets = [k + 1 for k in range(i) if tokens[0, k] == tokens[0, i] and k + 1 <= i]
        pattern[0, 0, i, targets or [0]] = 1.0 / max(len(targets), 1)
    assert prefix_matching_score(pattern, tokens, n, 1)[0] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- prompts and pools

def test_repeat_prompts_are_bos_plus_a_distinct_block_twice():
    prompts = repeated_random_prompts(np.arange(10, 60), 4, 20, 2, bos_id=3, rng=np.random.default_rng(0))
    assert prompts.shape == (4, 41) and prompts.dtype == np.int64
    assert (prompts[:, 0] == 3).all()
    np.testing.assert_array_equal(prompts[:, 1:21], prompts[:, 21:])
    assert all(len(set(row)) == 20 and set(row) <= set(range(10, 60)) for row in prompts[:, 1:21])
    assert repeated_random_prompts(np.arange(5), 1, 5, 2, None, np.random.default_rng(0)).shape == (1, 10)


def test_prompt_sets_are_deterministic_per_seed_and_independent_between_sets():
    pool = default_token_pool(500, special_ids=[0])
    a = make_prompt_sets(pool, 0, PromptConfig(block_len=30, n_prompts=3, seed=7))
    b = make_prompt_sets(pool, 0, PromptConfig(block_len=30, n_prompts=3, seed=7))
    c = make_prompt_sets(pool, 0, PromptConfig(block_len=30, n_prompts=3, seed=8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert a[1].shape == (5, 1 + 4 * 50)  # [CS24]: BOS + 4 x 50, 5 prompts
    assert not np.array_equal(a[0][:, 1:31], a[1][:3, 1:31])


def test_pool_too_small_for_the_block_is_a_clear_error():
    with pytest.raises(InputError, match="fewer than the block length"):
        repeated_random_prompts(np.arange(5), 1, 6, 2, None, np.random.default_rng(0))


def test_default_pool_excludes_special_ids_and_both_rank_extremes():
    pool = default_token_pool(10, special_ids=[0, 9])
    np.testing.assert_array_equal(pool.ids, np.arange(1, 9))
    assert pool.n_excluded_special == 2
    # Ranks reversed against ids: the most frequent (rank 0) is id 8, the rarest id 1.
    ranks = np.arange(10)[::-1].astype(float)
    trimmed = default_token_pool(10, special_ids=[0, 9], ranks=ranks, exclude_extreme_fraction=0.25)
    np.testing.assert_array_equal(trimmed.ids, [3, 4, 5, 6])
    assert trimmed.n_excluded_extreme == 4 and trimmed.rank_proxy == "bpe_merge_rank"


def test_bpe_merge_ranks_follow_the_merge_list(tiny_model_dirs):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["gpt2"])
    ranks = bpe_merge_ranks(tokenizer, len(tokenizer))
    vocab = tokenizer.get_vocab()
    import json

    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    first = "".join(merges[0]) if isinstance(merges[0], list) else merges[0].replace(" ", "")
    last = "".join(merges[-1]) if isinstance(merges[-1], list) else merges[-1].replace(" ", "")
    assert ranks[vocab[first]] == 0 and ranks[vocab[last]] == len(merges) - 1
    assert ranks[vocab["a"]] == -1  # base alphabet ranks before every merge
    assert special_token_ids(tokenizer).tolist() == [0]


def test_pool_files_accept_a_list_or_a_dict_with_token_ids():
    np.testing.assert_array_equal(parse_token_pool([4, 5, 6]), [4, 5, 6])
    np.testing.assert_array_equal(parse_token_pool({"min_count": 100, "token_ids": [7, 8]}), [7, 8])
    with pytest.raises(InputError, match="token_ids"):
        parse_token_pool({"ids": [1]})
    with pytest.raises(InputError, match="integer token ids"):
        parse_token_pool([1, "2"])
    pool = pool_from_ids(np.array([3, 3, 0, 5]), vocab_size=10, special_ids=[0])
    np.testing.assert_array_equal(pool.ids, [3, 5])
    with pytest.raises(InputError, match=r"\[0, 10\)"):
        pool_from_ids(np.array([3, 12]), vocab_size=10)


def test_prompt_config_rejects_bad_values():
    with pytest.raises(InputError, match="block_len"):
        PromptConfig(block_len=1)
    with pytest.raises(InputError, match="exclude_extreme_fraction"):
        PromptConfig(exclude_extreme_fraction=0.5)


# ----------------------------------------------------------------------------- a hand-built model

VOCAB, N_POS, D_MODEL, N_HEADS = 64, 64, 256, 2
D_HEAD = D_MODEL // N_HEADS
TOK, PREV, POS = 0, 64, 128  # residual subspaces: current token, previous token, position (one-hot each)
GAP = 40.0  # pre-softmax score of a matching key (non-matching keys score 0)
DUP_WRITE = 1e-3  # the duplicate-token head writes (almost) nothing, keeping the residual one-hot


def _identity_layer_norm(ln, n_ones: int) -> None:
    """LayerNorm weights that map any vector with exactly ``n_ones`` ones (rest 0) to itself."""
    mean = n_ones / D_MODEL
    std = math.sqrt(n_ones / D_MODEL - mean ** 2 + ln.eps)
    ln.weight.fill_(std)
    ln.bias.fill_(mean)


def _build_exact_model(directory):
    """2-layer GPT-2 with L0H0 previous-token, L0H1 duplicate-token (self excluded), L1H0 induction, L1H1 uniform.

    Residual stream: one-hot token (dims 0..63) + one-hot position (128..191); L0H0 writes
    the previous token's one-hot into dims 64..127, which L1H0's keys read. MLPs are zero.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"<bos>": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<bos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<bos>",
                                        unk_token="<bos>")
    config = GPT2Config(vocab_size=VOCAB, n_positions=N_POS, n_embd=D_MODEL, n_layer=2, n_head=N_HEADS,
                        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    q_scale = GAP * math.sqrt(D_HEAD)  # GPT-2 divides q.k by sqrt(d_head)
    tokens, positions = torch.arange(VOCAB), torch.arange(N_POS)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.transformer.wte.weight[tokens, TOK + tokens] = 1.0
        model.transformer.wpe.weight[positions, POS + positions] = 1.0
        model.transformer.ln_f.weight.fill_(1.0)
        block0, block1 = model.transformer.h
        _identity_layer_norm(block0.ln_1, 2)  # token + position
        _identity_layer_norm(block1.ln_1, 3)  # token + position + previous token
        for block in (block0, block1):
            block.ln_2.weight.fill_(1.0)
        Q, K, V = 0, D_MODEL, 2 * D_MODEL  # column offsets in GPT-2's fused c_attn (Conv1D: x @ W)
        h0, h1 = 0, D_HEAD  # column offsets of head 0 and head 1
        w0, o0 = block0.attn.c_attn.weight, block0.attn.c_proj.weight
        # L0H0 previous-token head: query at i matches key at i - 1 (positions only); copies the token to PREV.
        w0[POS + positions, Q + h0 + positions] = q_scale
        w0[POS + positions[:-1], K + h0 + positions[:-1] + 1] = 1.0
        w0[TOK + tokens, V + h0 + tokens] = 1.0
        o0[h0 + tokens, PREV + tokens] = 1.0
        # L0H1 duplicate-token head: same token scores +GAP, its own position -2 GAP (net -GAP).
        w0[TOK + tokens, Q + h1 + tokens] = q_scale
        w0[POS + positions, Q + h1 + VOCAB + positions] = -2.0 * q_scale
        w0[TOK + tokens, K + h1 + tokens] = 1.0
        w0[POS + positions, K + h1 + VOCAB + positions] = 1.0
        w0[TOK + tokens, V + h1 + tokens] = 1.0
        o0[h1 + tokens, TOK + tokens] = DUP_WRITE
        w1, o1 = block1.attn.c_attn.weight, block1.attn.c_proj.weight
        # L1H0 induction head: query token t matches keys whose previous token is t; copies the key's token.
        w1[TOK + tokens, Q + h0 + tokens] = q_scale
        w1[PREV + tokens, K + h0 + tokens] = 1.0
        w1[TOK + tokens, V + h0 + tokens] = 1.0
        o1[h0 + tokens, TOK + tokens] = 1.0
        # L1H1 uniform head: zero query/key weights; writes minus half the attended tokens.
        w1[TOK + tokens, V + h1 + tokens] = 1.0
        o1[h1 + tokens, TOK + tokens] = -0.5
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def exact_scores(tmp_path_factory):
    from icl_cmr.heads.models import load_model
    from icl_cmr.heads.registry import resolve_model

    folder = _build_exact_model(tmp_path_factory.mktemp("exact") / "exact_heads")
    model = load_model(resolve_model(str(folder)))
    pool = default_token_pool(VOCAB, special_ids=[0])
    config = PromptConfig(block_len=20, n_prompts=6, batch_size=4, prefix_block_len=10, prefix_n_prompts=3)
    repeat, prefix = make_prompt_sets(pool, 0, config)
    scores = stream_attention_scores(model, repeat, 20, 1, prefix, 10, batch_size=4, progress=False)
    return scores, model


def test_induction_head_attends_to_lag_plus_one(exact_scores):
    scores, _ = exact_scores
    assert scores.matching_score[1, 0] > 0.999
    assert np.argmax(scores.crp_probs.mean[1, 0]) == LAGS.index(1)
    assert np.argmax(scores.crp_scores.mean[1, 0]) == LAGS.index(1)
    assert scores.crp_scores.mean[1, 0, LAGS.index(1)] == pytest.approx(GAP, rel=0.01)
    assert scores.prefix_matching_score[1, 0] > 0.999


def test_duplicate_token_head_peaks_at_lag_zero_with_the_built_in_gap(exact_scores):
    scores, _ = exact_scores
    assert scores.crp_probs.mean[0, 1, LAGS.index(0)] > 0.999
    expected = np.zeros(len(LAGS))
    expected[LAGS.index(0)] = GAP  # layer 0 sees exact one-hot residuals: scores are exactly 0 or GAP
    np.testing.assert_allclose(scores.crp_scores.mean[0, 1], expected, atol=1e-4)
    np.testing.assert_allclose(scores.crp_scores.sem[0, 1], 0.0, atol=1e-4)
    assert scores.matching_score[0, 1] < 1e-6


def test_previous_token_head_never_attends_into_the_first_repeat(exact_scores):
    scores, _ = exact_scores
    assert scores.crp_probs.mean[0, 0].max() < 1e-6  # i - 1 lies in the second repeat for every query
    np.testing.assert_allclose(scores.crp_scores.mean[0, 0], 0.0, atol=1e-4)


def test_uniform_head_matches_the_closed_form(exact_scores):
    scores, _ = exact_scores
    n, offset = 20, 1
    expected = [np.mean([1.0 / (i + 1) for i in range(offset + n, offset + 2 * n)
                         if offset <= i - n + lag < offset + n]) for lag in LAGS]
    np.testing.assert_allclose(scores.crp_probs.mean[1, 1], expected, rtol=1e-5)
    np.testing.assert_allclose(scores.crp_scores.mean[1, 1], 0.0, atol=1e-6)
    assert scores.matching_score[1, 1] == pytest.approx(expected[LAGS.index(1)], rel=1e-5)


def test_copying_scores_of_the_hand_built_heads_have_the_built_in_signs(exact_scores):
    from icl_cmr.heads.copying import model_copying_scores

    _, model = exact_scores
    copying = model_copying_scores(model)
    assert copying[1, 0] > 0.9   # induction head copies the attended token
    assert copying[0, 1] > 0.9   # duplicate-token head writes a (tiny) copy of its token
    assert copying[1, 1] < -0.9  # uniform head writes minus the token
    assert np.isnan(copying[0, 0])  # writes only into PREV dims, which the unembedding never reads: OV = 0
