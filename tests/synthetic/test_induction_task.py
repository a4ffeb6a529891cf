"""Specifications of the synthetic induction-heads task, its model and scripts (DESIGN.md section 7)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from icl_cmr.config import ATTN_CRP_LAGS
from icl_cmr.errors import InputError
from icl_cmr.experiments import induction_eval
from icl_cmr.files.induction_models import load_induction_model
from icl_cmr.files.induction_tables import file_sha256
from icl_cmr.synthetic import task
from icl_cmr.synthetic.transformer import (POSITION_ENCODINGS, TinyTransformer, TinyTransformerConfig, alibi_slopes,
                                           apply_rope, blocked_causal_attention)

TRIGGER = 15


# ----------------------------------------------------------------------------- generator

@pytest.mark.parametrize("length", [3, 4, 17, 256])
def test_trigger_appears_exactly_at_first_position_and_at_the_end(length):
    tokens, targets, positions = task.sample_induction_batch(np.random.default_rng(1), 500, length)
    assert tokens.shape == (500, length)
    assert np.all(tokens[:, -1] == TRIGGER)
    is_trigger = tokens == TRIGGER
    assert np.all(is_trigger.sum(axis=1) == 2)
    first = is_trigger.argmax(axis=1)
    np.testing.assert_array_equal(first, positions)
    assert positions.min() >= 0 and positions.max() <= length - 3


def test_target_is_the_token_after_the_first_trigger():
    tokens, targets, positions = task.sample_induction_batch(np.random.default_rng(2), 300, 40)
    for row, target, position in zip(tokens, targets, positions):
        trigger_at = [i for i, t in enumerate(row) if t == TRIGGER][0]
        assert trigger_at == position
        assert row[trigger_at + 1] == target
        assert target != TRIGGER


def test_trigger_position_is_uniform_on_zero_to_length_minus_three():
    length, n = 8, 60_000
    _, _, positions = task.sample_induction_batch(np.random.default_rng(3), n, length)
    counts = np.bincount(positions, minlength=length)
    assert counts[length - 2:].sum() == 0                       # never at L-2 or L-1
    expected = n / (length - 2)
    # 6 cells: every count within 5 binomial standard deviations of n/6.
    sd = math.sqrt(n * (1 / 6) * (5 / 6))
    assert np.all(np.abs(counts[:length - 2] - expected) < 5 * sd)


def test_filler_tokens_are_uniform_over_the_fifteen_non_trigger_ids():
    tokens, _, _ = task.sample_induction_batch(np.random.default_rng(4), 200, 300)
    filler = tokens[:, :-1][tokens[:, :-1] != TRIGGER]
    counts = np.bincount(filler, minlength=16)
    assert counts[TRIGGER] == 0
    expected = filler.size / 15
    sd = math.sqrt(filler.size * (1 / 15) * (14 / 15))
    assert np.all(np.abs(counts[:15] - expected) < 5 * sd)


def test_other_trigger_id_is_excluded_from_filler():
    tokens, targets, _ = task.sample_induction_batch(np.random.default_rng(5), 100, 50, trigger_token=0)
    assert np.all((tokens[:, :-1] == 0).sum(axis=1) == 1)
    assert tokens.max() == 15 and np.all(targets != 0)


def test_validation_set_is_fixed_prefix_stable_and_differs_by_length():
    a, ta, pa = task.validation_set(64, 10, seed=9)
    b, tb, pb = task.validation_set(64, 10, seed=9)
    np.testing.assert_array_equal(a, b)
    head, _, _ = task.validation_set(64, 4, seed=9)
    tail, _, _ = task.validation_set(64, 6, seed=9, start=4)
    np.testing.assert_array_equal(np.concatenate([head, tail]), a)
    batches = list(task.iter_validation_batches(64, 10, 3, seed=9))
    np.testing.assert_array_equal(np.concatenate([t for t, _, _ in batches]), a)
    other_seed, _, _ = task.validation_set(64, 10, seed=10)
    assert not np.array_equal(other_seed, a)
    longer, _, _ = task.validation_set(128, 10, seed=9)
    assert not np.array_equal(longer[:, :64], a)


@pytest.mark.parametrize("kwargs", [dict(length=2), dict(length=10, trigger_token=16),
                                    dict(length=10, vocab_size=2)])
def test_generator_rejects_bad_arguments(kwargs):
    length = kwargs.pop("length")
    with pytest.raises(InputError):
        task.sample_induction_batch(np.random.default_rng(0), 1, length, **kwargs)


# ----------------------------------------------------------------------------- statistics

def test_lag_attention_on_hand_built_patterns():
    # 1 layer, 2 prompts, 2 heads, 6 positions. Prompt 0: query 5, earlier 2; prompt 1: query 4, earlier 0.
    patterns = np.zeros((1, 2, 2, 6, 6))
    patterns[0, 0, 0, 5, 3] = 0.7    # head 0, lag +1
    patterns[0, 0, 0, 5, 1] = 0.2    # head 0, lag -1
    patterns[0, 1, 0, 4, 1] = 0.5    # head 0, lag +1
    patterns[0, 0, 1, 5, 2] = 1.0    # head 1, lag 0
    mean, sem, count = task.lag_attention(patterns, np.array([[5], [4]]), np.array([[2], [0]]),
                                          lags=[-1, 0, 1])
    # lag -1 exists only for prompt 0 (key 1); lags 0 and +1 for both.
    np.testing.assert_array_equal(count, [1, 2, 2])
    np.testing.assert_allclose(mean[0, 0], [0.2, 0.0, 0.6])
    np.testing.assert_allclose(mean[0, 1], [0.0, 0.5, 0.0])
    assert np.isnan(sem[0, 0, 0])
    assert sem[0, 0, 2] == pytest.approx(np.std([0.7, 0.5], ddof=1) / math.sqrt(2))


def test_lag_attention_ignores_keys_at_or_after_key_stop():
    patterns = np.ones((1, 1, 1, 4, 4))
    mean, _, count = task.lag_attention(patterns, np.array([[3]]), np.array([[1]]), lags=[0, 1, 2],
                                        key_stop=np.array([[2]]))
    np.testing.assert_array_equal(count, [1, 0, 0])
    assert mean[0, 0, 0] == 1 and np.isnan(mean[0, 0, 1])


def test_repeated_block_prompts_repeat_distinct_non_trigger_tokens():
    tokens, queries, earlier = task.repeated_block_prompts(np.random.default_rng(0), 5, 15)
    assert tokens.shape == (5, 30)
    np.testing.assert_array_equal(tokens[:, :15], tokens[:, 15:])
    for row in tokens:
        assert len(set(row[:15])) == 15 and TRIGGER not in row
    np.testing.assert_array_equal(tokens[np.arange(5)[:, None], queries],
                                  tokens[np.arange(5)[:, None], earlier])
    with pytest.raises(InputError):
        task.repeated_block_prompts(np.random.default_rng(0), 1, 16)


# ----------------------------------------------------------------------------- model

def _naive_causal_attention(q, k, v, slopes=None):
    """Slow reference: one query at a time, explicit softmax over keys 0..i."""
    batch, heads, length, d_head = q.shape
    out = torch.zeros_like(q)
    for i in range(length):
        scores = (k[:, :, :i + 1] @ q[:, :, i, :, None])[..., 0] / math.sqrt(d_head)   # [B, H, i+1]
        if slopes is not None:
            scores = scores - slopes.to(q.dtype)[None, :, None] * (i - torch.arange(i + 1)).to(q.dtype)
        out[:, :, i] = (torch.softmax(scores, dim=-1)[..., None] * v[:, :, :i + 1]).sum(dim=2)
    return out


@pytest.mark.parametrize("with_alibi", [False, True])
def test_blocked_kernel_equals_naive_attention(with_alibi):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (3 * torch.randn(2, 4, 53, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    slopes = alibi_slopes(4) if with_alibi else None
    expected = _naive_causal_attention(q, k, v, slopes)
    got = blocked_causal_attention(q, k, v, slopes=slopes, block_size=8, use_sdpa=False)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    if not with_alibi:
        torch.testing.assert_close(blocked_causal_attention(q, k, v), expected, atol=1e-10, rtol=0)


def test_alibi_slopes_for_eight_heads_are_powers_of_one_half():
    np.testing.assert_allclose(alibi_slopes(8).numpy(), [2.0 ** -(h + 1) for h in range(8)])


def test_rope_scores_depend_only_on_position_difference():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 1, 1, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 8, generator=gen, dtype=torch.float64)
    def score(i, j):
        return float(apply_rope(q, torch.tensor([i])) @ apply_rope(k, torch.tensor([j])).transpose(-1, -2))
    assert score(7, 3) == pytest.approx(score(1000, 996), abs=1e-9)
    assert score(0, 0) == pytest.approx(float(q @ k.transpose(-1, -2)), abs=1e-12)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-6)


def _random_model(encoding, scale=1.0, **overrides):
    torch.manual_seed(3)
    config = TinyTransformerConfig(position_encoding=encoding, n_trained_positions=64, **overrides)
    model = TinyTransformer(config).eval()
    with torch.no_grad():  # larger weights than the 0.02 init, so attention is far from uniform
        for name, param in model.named_parameters():
            if "ln" not in name:
                param.mul_(scale)
    return model


@pytest.mark.parametrize("encoding", POSITION_ENCODINGS)
def test_blocked_last_logits_equal_full_attention(encoding):
    model = _random_model(encoding, scale=10.0)
    tokens, _, _ = task.sample_induction_batch(np.random.default_rng(6), 3, 150)  # > 64 trained rows
    tokens = torch.from_numpy(tokens)
    with torch.no_grad():
        full = model(tokens)[:, -1]
        blocked = model.last_logits(tokens, method="blocked", block_size=16, mlp_chunk=40)
    assert full.abs().max() > 1.0
    torch.testing.assert_close(blocked, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("encoding", ["alibi", "none"])
def test_token_type_path_equals_full_attention(encoding):
    model = _random_model(encoding, scale=10.0)
    tokens, _, _ = task.sample_induction_batch(np.random.default_rng(7), 3, 150)
    tokens = torch.from_numpy(tokens)
    with torch.no_grad():
        full = model(tokens)[:, -1]
        fast = model.last_logits(tokens, method="token_types", mlp_chunk=40)
        # Chunked recurrence: the carried state across chunks must not change the result.
        chunked = model._first_layer_token_types(tokens, chunk=37)
        whole = model._first_layer_token_types(tokens, chunk=1000)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)


def test_token_type_path_refuses_position_dependent_encodings():
    model = _random_model("rope")
    with pytest.raises(InputError):
        model.last_logits(torch.zeros((1, 8), dtype=torch.long), method="token_types")


def test_absolute_positions_beyond_training_are_fixed_random_rows():
    model = _random_model("absolute")
    rows = model.position_rows(0, 10_000).detach()
    assert rows.shape == (10_000, 64)
    torch.testing.assert_close(rows[:64], model.pos_embed.weight)
    # The same row whatever range is asked for (seeded per block of rows).
    torch.testing.assert_close(model.position_rows(5000, 5003), rows[5000:5003])
    torch.testing.assert_close(_random_model("absolute").position_rows(9000, 9100), rows[9000:9100])
    # Drawn from the initialisation distribution N(0, 0.02^2).
    assert float(rows[64:].std()) == pytest.approx(0.02, rel=0.02)
    assert abs(float(rows[64:].mean())) < 1e-3


def test_attention_patterns_shape_and_rows_sum_to_one():
    model = _random_model("rope", scale=5.0)
    patterns = model.attention_patterns(torch.randint(0, 16, (2, 12)))
    assert patterns.shape == (2, 2, 8, 12, 12)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(2, 2, 8, 12))
    assert float(patterns.triu(1).abs().max()) == 0.0


def test_config_rejects_unknown_encoding():
    with pytest.raises(InputError):
        TinyTransformerConfig(position_encoding="sinusoidal")


# ----------------------------------------------------------------------------- scripts

def _train_args(save_dir, *extra):
    return ["--save_dir", str(save_dir), "--fig_dir", str(save_dir), "--no_progress", "--no_figure",
            *extra]


@pytest.mark.slow
def test_short_training_run_learns_the_task(tmp_path):
    """A small setting (length 16, d_model 32, 4 heads, batch 32) passes 90% within ~60 s."""
    import train_induction

    small = ["--train_length", "16", "--d_model", "32", "--n_heads", "4", "--d_mlp", "128",
             "--batch_size", "32", "--learning_rate", "3e-3", "--eval_every", "100", "--n_val", "256",
             "--target_accuracy", "0.9", "--max_steps", "1500"]
    assert train_induction.main(_train_args(tmp_path, *small)) == 0
    summary = json.loads((tmp_path / "absolute_training.json").read_text())
    assert summary["reached_target"] is True
    assert summary["final_val_accuracy"] > 0.9
    model = load_induction_model(tmp_path / "absolute.pt")
    # Independent check on unseen validation sequences.
    correct, _ = task.evaluate_accuracy(model, 16, 256, seed=12345, method="blocked")
    assert correct / 256 > 0.85


@pytest.mark.slow
def test_resume_from_checkpoint_equals_uninterrupted_training(tmp_path):
    import train_induction

    small = ["--train_length", "12", "--d_model", "16", "--n_heads", "2", "--d_mlp", "32",
             "--eval_every", "3", "--n_val", "8", "--position_encoding", "rope"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_induction.main(_train_args(straight, *small, "--max_steps", "9"))
    train_induction.main(_train_args(split, *small, "--max_steps", "6"))
    train_induction.main(_train_args(split, *small, "--max_steps", "9", "--resume"))
    a = torch.load(straight / "rope_checkpoint.pt", weights_only=True)
    b = torch.load(split / "rope_checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 9
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], atol=0, rtol=0)
    assert a["rng_state"] == b["rng_state"]
    assert [r["val_accuracy"] for r in a["curve"]] == [r["val_accuracy"] for r in b["curve"]]


def test_curriculum_trains_each_stage_at_its_length_and_stops_only_at_the_last(tmp_path):
    import train_induction

    # Target 0: every evaluation passes, so each stage lasts exactly one evaluation period.
    small = ["--train_length", "12", "--d_model", "16", "--n_heads", "2", "--d_mlp", "32",
             "--eval_every", "3", "--n_val", "8", "--target_accuracy", "0", "--max_steps", "50",
             "--curriculum", "6,9"]
    assert train_induction.main(_train_args(tmp_path, *small)) == 0
    saved = torch.load(tmp_path / "absolute_checkpoint.pt", weights_only=True)
    assert [(row["step"], row["length"]) for row in saved["curve"]] == [(3, 6), (6, 9), (9, 12)]
    summary = json.loads((tmp_path / "absolute_training.json").read_text())
    assert summary["reached_target"] is True and summary["steps"] == 9
    assert summary["final_val_length"] == 12
    assert summary["last_step_per_length"] == {"6": 3, "9": 6, "12": 9}


def test_curriculum_stage_that_fails_the_target_keeps_its_length(tmp_path):
    import train_induction

    small = ["--train_length", "12", "--d_model", "16", "--n_heads", "2", "--d_mlp", "32",
             "--eval_every", "2", "--n_val", "8", "--target_accuracy", "1", "--max_steps", "6",
             "--curriculum", "6"]
    assert train_induction.main(_train_args(tmp_path, *small)) == 0
    saved = torch.load(tmp_path / "absolute_checkpoint.pt", weights_only=True)
    accuracies = [row["val_accuracy"] for row in saved["curve"]]
    assert max(accuracies) < 1, "an untrained 2-step model should not be perfect on 8 sequences"
    assert [row["length"] for row in saved["curve"]] == [6, 6, 6]
    assert json.loads((tmp_path / "absolute_training.json").read_text())["reached_target"] is False


@pytest.mark.slow
def test_resume_mid_curriculum_equals_uninterrupted_training(tmp_path):
    import train_induction

    small = ["--train_length", "12", "--d_model", "16", "--n_heads", "2", "--d_mlp", "32",
             "--eval_every", "3", "--n_val", "8", "--target_accuracy", "0", "--curriculum", "6,9"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_induction.main(_train_args(straight, *small, "--max_steps", "50"))
    train_induction.main(_train_args(split, *small, "--max_steps", "3"))
    train_induction.main(_train_args(split, *small, "--max_steps", "50", "--resume"))
    a = torch.load(straight / "absolute_checkpoint.pt", weights_only=True)
    b = torch.load(split / "absolute_checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 9 and a["stage"] == b["stage"] == 2
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], atol=0, rtol=0)
    assert [r["length"] for r in a["curve"]] == [r["length"] for r in b["curve"]]


@pytest.mark.parametrize("curriculum, message", [("32,16", "increasing"), ("2", ">= 3"),
                                                  ("16,x", "integer"), ("16,256", "below --train_length")])
def test_bad_curriculum_is_a_one_line_error(tmp_path, capsys, curriculum, message):
    import train_induction
    from icl_cmr.cli.args import run_cli

    try:   # argparse exits with 2 on a malformed value; our own checks return 2 through run_cli
        code = run_cli(train_induction.main, _train_args(tmp_path, "--curriculum", curriculum, "--max_steps", "1"))
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "absolute_checkpoint.pt").exists()


TINY_TRAINING = ["--train_length", "12", "--d_model", "16", "--n_heads", "2", "--d_mlp", "32",
                 "--eval_every", "3", "--n_val", "8", "--position_encoding", "rope"]


def test_resume_without_a_checkpoint_trains_from_scratch(tmp_path):
    import train_induction

    train_induction.main(_train_args(tmp_path / "a", *TINY_TRAINING, "--resume", "--max_steps", "6"))
    train_induction.main(_train_args(tmp_path / "b", *TINY_TRAINING, "--max_steps", "6"))
    a = torch.load(tmp_path / "a" / "rope.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "rope.pt", weights_only=True)
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], atol=0, rtol=0)
    assert a["metadata"]["resumed"] is False


@pytest.mark.slow
def test_rerunning_resumes_by_default_and_records_it(tmp_path):
    import train_induction

    train_induction.main(_train_args(tmp_path, *TINY_TRAINING, "--max_steps", "6"))
    train_induction.main(_train_args(tmp_path, *TINY_TRAINING, "--max_steps", "9"))
    summary = json.loads((tmp_path / "rope_training.json").read_text())
    assert summary["resumed"] is True and summary["resumed_from_step"] == 6 and summary["steps"] == 9
    assert summary["wall_seconds"] >= summary["wall_time_this_session_s"] > 0
    train_induction.main(_train_args(tmp_path, *TINY_TRAINING, "--max_steps", "3", "--restart"))
    summary = json.loads((tmp_path / "rope_training.json").read_text())
    assert summary["resumed"] is False and summary["steps"] == 3


def test_resuming_with_other_settings_is_a_one_line_error(tmp_path, capsys):
    import train_induction
    from icl_cmr.cli.args import run_cli

    train_induction.main(_train_args(tmp_path, *TINY_TRAINING, "--max_steps", "3"))
    before = (tmp_path / "rope_checkpoint.pt").read_bytes()
    code = run_cli(train_induction.main, _train_args(tmp_path, *TINY_TRAINING, "--max_steps", "6",
                                                     "--learning_rate", "0.01"))
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith("error:")
    assert "learning_rate" in err and "--restart" in err and "Traceback" not in err
    assert (tmp_path / "rope_checkpoint.pt").read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "garble", "not_a_checkpoint"])
def test_a_damaged_checkpoint_is_set_aside_and_training_starts_over(tmp_path, capsys, damage):
    import train_induction

    train_induction.main(_train_args(tmp_path / "straight", *TINY_TRAINING, "--max_steps", "6"))
    split = tmp_path / "split"
    train_induction.main(_train_args(split, *TINY_TRAINING, "--max_steps", "3"))
    path = split / "rope_checkpoint.pt"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garble":
        path.write_bytes(data[:100] + bytes(len(data) - 100))
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    capsys.readouterr()
    assert train_induction.main(_train_args(split, *TINY_TRAINING, "--max_steps", "6")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1 and "is damaged" in warnings[0] and "training from scratch" in warnings[0]
    assert (split / "rope_checkpoint.pt.damaged").read_bytes() != (split / "rope_checkpoint.pt").read_bytes()
    a = torch.load(tmp_path / "straight" / "rope.pt", weights_only=True)
    b = torch.load(split / "rope.pt", weights_only=True)
    for name in a["model"]:  # started over: the same weights as a run that was never interrupted
        torch.testing.assert_close(a["model"][name], b["model"][name], atol=0, rtol=0)
    assert b["metadata"]["resumed"] is False


def test_an_unwritable_figure_folder_is_refused_before_training(tmp_path, capsys):
    import train_induction
    from icl_cmr.cli.args import run_cli

    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = run_cli(train_induction.main, ["--save_dir", str(tmp_path / "models"), "--fig_dir", str(blocker / "figs"),
                                          "--no_progress", *TINY_TRAINING, "--max_steps", "3"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == [f"error: output folder --fig_dir {blocker / 'figs'} cannot be "
                                                      f"made: {blocker} is a file"]
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_eval_script_writes_table_and_figures(tmp_path):
    import eval_induction
    import train_induction

    small = ["--train_length", "12", "--d_model", "16", "--n_heads", "2", "--d_mlp", "32",
             "--eval_every", "2", "--n_val", "8", "--max_steps", "2"]
    for encoding in ("absolute", "alibi"):
        train_induction.main(_train_args(tmp_path, *small, "--position_encoding", encoding))
    code = eval_induction.main(["--save_dir", str(tmp_path), "--fig_dir", str(tmp_path), "--min_log2", "4",
                                "--max_log2", "7", "--n_sequences", "4", "--full_max_log2", "5",
                                "--long_cpu_seconds", "0", "--lag_prompts", "3"])
    assert code == 0
    lines = (tmp_path / "accuracy_vs_length.csv").read_text().strip().splitlines()
    assert lines[0].startswith("model,length,")
    rows = [line.split(",") for line in lines[1:]]
    assert [(r[0], int(r[1])) for r in rows] == [(e, 2 ** k) for e in ("absolute", "alibi") for k in range(4, 8)]
    n_sequences = [int(r[3]) for r in rows]
    # Up to 2^5 all 4 sequences; beyond, with a zero time budget, one batch.
    assert n_sequences[:2] == [4, 4] and all(n >= 1 for n in n_sequences[2:4])
    for name in ("accuracy_vs_length.pdf", "training_curves.pdf", "lag_crp_layer2.pdf", "accuracy_vs_length_alibi.csv",
                 "lag_crp_layer2_alibi.pdf", "lag_crp_alibi.json"):
        assert (tmp_path / name).is_file(), name
    stats = json.loads((tmp_path / "lag_crp_alibi.json").read_text())
    assert {"task", "repeated", "value_query"} <= set(stats)
    model = load_induction_model(tmp_path / "alibi.pt")
    tokens, _, triggers = task.validation_set(12, 3, seed=task.InductionTaskConfig().val_seed + 1)
    first_layer = model.attention_patterns(torch.from_numpy(tokens))[0].numpy()      # [B, H, L, L]
    to_trigger = first_layer[np.arange(3), :, triggers + 1, triggers].mean(axis=0)   # value -> trigger
    lag_minus_one = np.asarray(stats["value_query"]["mean"])[0, :, stats["value_query"]["lags"].index(-1)]
    np.testing.assert_allclose(lag_minus_one, to_trigger, atol=1e-6)


@pytest.mark.slow
def test_eval_combines_a_table_written_before_mamba_and_devices(tmp_path):
    """An accuracy table with the old ``encoding`` column and no device/dtype is read as a CPU float32 run."""
    import eval_induction

    old_header = ("encoding,length,log2_length,n_sequences,correct,accuracy,wilson_low,wilson_high,method,"
                  "batch_size,seconds_per_sequence,cpu_seconds_per_sequence,peak_rss_gb")
    (tmp_path / "accuracy_vs_length_rope.csv").write_text(
        old_header + "\nrope,64,6,256,255,0.996094,0.978209,0.99931,blocked,512,0.002,0.0008,0.33\n")
    assert eval_induction.main(["--models", str(SHIPPED / "alibi.pt"), "--save_dir", str(tmp_path),
                                "--fig_dir", str(tmp_path), "--min_log2", "6", "--max_log2", "6",
                                "--n_sequences", "2", "--skip_lag_crp"]) == 0
    lines = (tmp_path / "accuracy_vs_length.csv").read_text().strip().splitlines()
    rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    assert [(r["model"], r["correct"], r["device"], r["dtype"]) for r in rows] == [
        ("rope", "255", "cpu", "float32"), ("alibi", rows[1]["correct"], "cpu", "float32")]


def test_eval_refuses_a_table_with_other_columns_before_any_work(tmp_path, capsys):
    import eval_induction
    from icl_cmr.cli.args import run_cli

    (tmp_path / "accuracy_vs_length_rope.csv").write_text("name,score\nrope,1\n")
    code = run_cli(eval_induction.main, ["--models", str(SHIPPED / "alibi.pt"), "--save_dir", str(tmp_path),
                                         "--fig_dir", str(tmp_path), "--max_log2", "6"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not have the columns" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy_vs_length_rope.csv"]


def test_a_checkpoint_from_before_mamba_and_devices_resumes(tmp_path):
    """Checkpoints written before --architecture/--device/--dtype existed are Transformer, CPU, float32 runs."""
    import train_induction

    train_induction.main(_train_args(tmp_path / "straight", *TINY_TRAINING, "--max_steps", "6"))
    split = tmp_path / "split"
    train_induction.main(_train_args(split, *TINY_TRAINING, "--max_steps", "3"))
    saved = torch.load(split / "rope_checkpoint.pt", weights_only=True)
    del saved["architecture"]
    for key in ("architecture", "device", "dtype", "min_steps"):
        del saved["parameters"][key]
    torch.save(saved, split / "rope_checkpoint.pt")
    train_induction.main(_train_args(split, *TINY_TRAINING, "--max_steps", "6"))
    a = torch.load(tmp_path / "straight" / "rope.pt", weights_only=True)
    b = torch.load(split / "rope.pt", weights_only=True)
    assert b["metadata"]["resumed"] is True
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], atol=0, rtol=0)


def test_min_steps_trains_past_the_target(tmp_path):
    import train_induction

    # Target 0: reached at the first evaluation, yet training goes on to step 9.
    args = _train_args(tmp_path, *TINY_TRAINING, "--target_accuracy", "0", "--min_steps", "8", "--max_steps", "50",
                       "--name", "rope_long")
    assert train_induction.main(args) == 0
    summary = json.loads((tmp_path / "rope_long_training.json").read_text())
    assert summary["steps"] == 9 and summary["reached_target"] is True and summary["first_step_at_target"] == 3
    assert (tmp_path / "rope_long.pt").is_file() and not (tmp_path / "rope.pt").exists()


def test_lag_attention_agrees_with_head_score_engine_on_repeated_blocks():
    """Our general lag statistic equals icl_cmr.heads.scores.attention_crp on its own prompt layout."""
    from icl_cmr.heads.scores import attention_crp

    rng = np.random.default_rng(8)
    patterns = rng.random((2, 3, 4, 30, 30))                    # [layer, batch, head, query, key]
    tokens, queries, earlier = task.repeated_block_prompts(rng, 3, 15)
    mean, sem, count = task.lag_attention(patterns, queries, earlier, key_stop=np.full(queries.shape, 15))
    for layer in range(2):
        reference = attention_crp(patterns[layer], block_len=15, offset=0)
        np.testing.assert_allclose(mean[layer], reference.mean, atol=1e-12)
        np.testing.assert_allclose(sem[layer], reference.sem, atol=1e-12)
        np.testing.assert_array_equal(count, reference.count)


# ----------------------------------------------------------------------------- the shipped models

SHIPPED = Path(__file__).resolve().parents[2] / "saved_models" / "induction_task"


@pytest.mark.slow
@pytest.mark.parametrize("encoding", POSITION_ENCODINGS)
def test_shipped_model_solves_the_task_at_the_training_length(encoding):
    model = load_induction_model(SHIPPED / f"{encoding}.pt")
    assert model.config.n_layers == 2 and model.config.n_heads == 8 and model.config.d_model == 64
    # 256 sequences from a seed the training never validated on.
    correct, _ = task.evaluate_accuracy(model, 256, 256, seed=424242, batch_size=128, method="blocked")
    assert correct / 256 >= 0.97


@pytest.mark.slow
def test_shipped_absolute_model_retrieves_the_value_at_lag_plus_one_in_layer_two():
    model = load_induction_model(SHIPPED / "absolute.pt")
    tokens, _, triggers = task.validation_set(256, 32, seed=31337)
    patterns = model.attention_patterns(torch.from_numpy(tokens)).numpy()
    mean, _, _ = task.lag_attention(patterns, np.full((32, 1), 255), triggers[:, None])
    lags = list(ATTN_CRP_LAGS)
    second_layer = mean[1]                                              # [head, lag]
    assert np.all(np.nanargmax(second_layer, axis=1) == lags.index(1))  # every head peaks at +1
    assert second_layer[:, lags.index(1)].mean() > 0.9


@pytest.mark.slow
def test_evaluating_some_lengths_keeps_the_other_rows_of_the_table(tmp_path):
    """A second run over 2^7..2^8 (e.g. on a GPU) replaces those rows and keeps 2^6 from the first run."""
    import eval_induction

    common = ["--models", str(SHIPPED / "alibi.pt"), "--save_dir", str(tmp_path), "--fig_dir", str(tmp_path),
              "--n_sequences", "2", "--skip_lag_crp"]
    assert eval_induction.main(common + ["--min_log2", "6", "--max_log2", "7"]) == 0
    first = (tmp_path / "accuracy_vs_length_alibi.csv").read_text().splitlines()
    assert eval_induction.main(common + ["--min_log2", "7", "--max_log2", "8", "--n_sequences", "3"]) == 0
    second = (tmp_path / "accuracy_vs_length_alibi.csv").read_text().splitlines()
    rows = [dict(zip(second[0].split(","), line.split(","))) for line in second[1:]]
    assert [(int(r["length"]), int(r["n_sequences"])) for r in rows] == [(64, 2), (128, 3), (256, 3)]
    assert second[1] == first[1]                                   # the 2^6 row untouched
    meta = json.loads((tmp_path / "accuracy_vs_length_alibi.json").read_text())
    assert meta["lengths_kept_from_earlier_runs"] == [64] and len(meta["rows"]) == 2


# ----------------------------------------------------------------------------- memory and divergence

def test_memory_estimate_adds_data_activations_and_alibi_attention():
    from icl_cmr.synthetic import models as im

    transformer = {"d_model": 64, "d_mlp": 256, "n_layers": 2, "n_heads": 8, "position_encoding": "rope"}
    positions = 8 * 256
    data = positions * im.DATA_BYTES_PER_POSITION
    assert im.forward_memory_estimate("transformer", transformer, 8, 256, training=True) == \
        data + positions * 2 * 320 * im.TRANSFORMER_TRAIN_BYTES
    assert im.forward_memory_estimate("transformer", transformer, 8, 256, training=False) == \
        data + positions * 2 * 320 * im.TRANSFORMER_EVAL_BYTES
    alibi = dict(transformer, position_encoding="alibi")
    assert im.forward_memory_estimate("transformer", alibi, 8, 256, training=True) == \
        data + positions * 2 * 320 * im.TRANSFORMER_TRAIN_BYTES + positions * 2 * 8 * 256 * im.ALIBI_TRAIN_BYTES_PER_KEY
    mamba = {"d_model": 64, "n_layers": 2, "expand": 2, "d_state": 16}
    assert im.forward_memory_estimate("mamba", mamba, 8, 256, training=True) == \
        data + positions * 2 * 2048 * im.MAMBA_TRAIN_BYTES
    # Evaluating, Mamba's activations are those of one chunk, whatever the length.
    long = 4 * im_chunk()
    assert im.forward_memory_estimate("mamba", mamba, 1, long, training=False) == \
        long * im.DATA_BYTES_PER_POSITION + im_chunk() * 2 * 2048 * im.MAMBA_EVAL_CHUNK_BYTES
    with pytest.raises(InputError):
        im.forward_memory_estimate("rnn", mamba, 1, 16, training=False)


def im_chunk():
    from icl_cmr.synthetic.mamba import DEFAULT_CHUNK

    return DEFAULT_CHUNK


def test_check_memory_refuses_more_than_is_free(monkeypatch):
    from icl_cmr.files import unpickling
    from icl_cmr.experiments.induction_train import check_memory

    monkeypatch.setattr(unpickling, "available_memory", lambda: 2 ** 30)
    check_memory(2 ** 30, "cpu", "this")
    with pytest.raises(InputError, match=r"this needs about 2.0 GiB of memory and cpu has 1.0 GiB free"):
        check_memory(2 ** 31, "cpu", "this")
    monkeypatch.setattr(unpickling, "available_memory", lambda: None)
    check_memory(2 ** 60, "cpu", "unknown free memory is not checked")


@pytest.mark.parametrize("extra, message", [
    (["--batch_size", "1000000000"], "training at --batch_size 1000000000 x --train_length 12 needs about"),
    (["--train_length", "10000000000"], "training at --batch_size 8 x --train_length 10000000000 needs about"),
    # d_model 16, d_mlp 32, 2 layers: training 8 sequences x (24 + 2 x 48 x 14) bytes (10.5 GiB at 10^6 tokens),
    # validation 64 x (24 + 2 x 48 x 5) (30.0 GiB)
    (["--n_val", "64", "--batch_size", "8", "--train_length", "1000000"],
     "validation at 64 sequences x --train_length 1000000 needs about"),
])
def test_training_that_cannot_fit_in_memory_is_refused_before_any_work(tmp_path, capsys, monkeypatch, extra,
                                                                       message):
    import train_induction
    from icl_cmr.files import unpickling
    from icl_cmr.cli.args import run_cli

    monkeypatch.setattr(unpickling, "available_memory", lambda: 16 * 2 ** 30)
    code = run_cli(train_induction.main, _train_args(tmp_path, *TINY_TRAINING, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and "16.0 GiB free" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_diverging_run_stops_with_one_line_and_writes_nothing_new(tmp_path, capsys):
    import train_induction
    from icl_cmr.cli.args import run_cli

    code = run_cli(train_induction.main, _train_args(tmp_path, *TINY_TRAINING, "--learning_rate", "1e30",
                                                     "--max_steps", "30"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: training diverged: the loss is nan at step ")
    assert "--learning_rate 1e+30" in err[0] and "--restart" in err[0]
    assert not (tmp_path / "rope.pt").exists() and not (tmp_path / "rope_training.json").exists()


def test_eval_refuses_a_longest_length_that_cannot_fit_before_evaluating(tmp_path, capsys, monkeypatch):
    import eval_induction
    import train_induction
    from icl_cmr.files import unpickling
    from icl_cmr.cli.args import run_cli

    assert train_induction.main(_train_args(tmp_path, *TINY_TRAINING, "--max_steps", "3")) == 0
    capsys.readouterr()
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(unpickling, "available_memory", lambda: 16 * 2 ** 30)
    code = run_cli(eval_induction.main, ["--save_dir", str(tmp_path), "--fig_dir", str(tmp_path / "figs"),
                                         "--max_log2", "40"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    # The first length that cannot fit is named: 2^26, at 24 + 2 x 48 x 5 bytes per token 31.5 GiB (2^25: 15.8)
    assert err[0] == ("error: rope at length 2^26 (batch 1) needs about 31.5 GiB of memory and cpu has 16.0 GiB free; "
                      "use a smaller batch or length")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ----------------------------------------------------------------------------- evaluation outputs

def _eval_common(tmp_path, model, *extra):
    return ["--models", str(model), "--save_dir", str(tmp_path / "out"), "--fig_dir", str(tmp_path / "figs"),
            "--n_sequences", "2", "--skip_lag_crp", *extra]


@pytest.mark.slow
def test_rows_of_another_model_file_with_the_same_name_are_replaced_not_combined(tmp_path, capsys):
    import shutil

    import eval_induction

    assert eval_induction.main(_eval_common(tmp_path, SHIPPED / "alibi.pt", "--min_log2", "6", "--max_log2", "7")) == 0
    other = tmp_path / "other" / "alibi.pt"          # same name, other weights
    other.parent.mkdir()
    shutil.copy(SHIPPED / "none.pt", other)
    assert eval_induction.main(_eval_common(tmp_path, other, "--min_log2", "8", "--max_log2", "8")) == 0
    table = (tmp_path / "out" / "accuracy_vs_length_alibi.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in table[1:]] == ["256"]
    assert "holds rows of another model file than alibi (SHA-256 differs)" in capsys.readouterr().err
    meta = json.loads((tmp_path / "out" / "accuracy_vs_length_alibi.json").read_text())
    assert meta["model_sha256"] == file_sha256(other) and meta["lengths_kept_from_earlier_runs"] == []


def test_shipped_tables_record_the_model_files_they_came_from():
    for table in sorted(SHIPPED.glob("accuracy_vs_length_*.json")):
        name = table.stem[len("accuracy_vs_length_"):]
        meta = json.loads(table.read_text())
        assert meta["model_sha256"] == file_sha256(SHIPPED / f"{name}.pt"), name


def test_an_interrupted_evaluation_writes_nothing(tmp_path, monkeypatch):
    import eval_induction

    calls = []

    def interrupted(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*args, **kwargs)

    original = induction_eval.evaluate_model
    monkeypatch.setattr(induction_eval, "evaluate_model", interrupted)
    argv = ["--models", str(SHIPPED / "alibi.pt"), str(SHIPPED / "none.pt"), "--save_dir", str(tmp_path / "out"),
            "--fig_dir", str(tmp_path / "figs"), "--n_sequences", "2", "--max_log2", "6", "--skip_lag_crp"]
    with pytest.raises(KeyboardInterrupt):
        eval_induction.main(argv)
    assert calls == [1]                                   # the first model was evaluated, then Ctrl-C
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "figs").exists() or list((tmp_path / "figs").iterdir()) == []


@pytest.mark.slow
def test_combining_alone_needs_no_model_and_draws_every_training_curve(tmp_path):
    import shutil

    import eval_induction

    out = tmp_path / "out"
    out.mkdir()
    for name in ("alibi", "none"):
        shutil.copy(SHIPPED / f"accuracy_vs_length_{name}.csv", out)
        shutil.copy(SHIPPED / f"{name}_training_curve.csv", out)
    assert eval_induction.main(["--save_dir", str(out), "--fig_dir", str(tmp_path / "figs"),
                                "--skip_accuracy", "--skip_lag_crp"]) == 0
    combined = (out / "accuracy_vs_length.csv").read_text().splitlines()
    shipped = (SHIPPED / "accuracy_vs_length.csv").read_text().splitlines()
    assert combined[0] == shipped[0]
    assert combined[1:] == [line for line in shipped[1:] if line.split(",")[0] in ("alibi", "none")]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["accuracy_vs_length.pdf", "training_curves.pdf"]


@pytest.mark.parametrize("extra, message", [
    (["--skip_accuracy", "--n_sequences", "5"], "--n_sequences set the accuracy table, which --skip_accuracy skips"),
    (["--skip_lag_crp", "--lag_prompts", "5", "--inside_log2", "10"],
     "--inside_log2, --lag_prompts set the looking-inside analyses, which --skip_lag_crp skips"),
    (["--inside_log2", "10", "--max_log2", "6"],
     "--inside_log2 sets an analysis of mamba models, and none is among the models evaluated"),
])
def test_flags_of_a_part_that_does_not_run_are_refused(tmp_path, capsys, extra, message):
    import eval_induction
    from icl_cmr.cli.args import run_cli

    code = run_cli(eval_induction.main, ["--models", str(SHIPPED / "alibi.pt"), "--save_dir", str(tmp_path / "out"),
                                         "--fig_dir", str(tmp_path / "figs"), *extra])
    assert code == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("extra, message", [
    (["--min_steps", "100", "--max_steps", "10"], "--min_steps (100) must be <= --max_steps (10)"),
    (["--name", "x.pt"], "argument --name: --name must be a file-name stem"),
])
def test_training_flags_that_contradict_are_refused(tmp_path, capsys, extra, message):
    import train_induction
    from icl_cmr.cli.args import run_cli

    try:   # argparse exits with 2 on a malformed value; our own checks return 2 through run_cli
        code = run_cli(train_induction.main, _train_args(tmp_path, *TINY_TRAINING, *extra))
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_second_damaged_checkpoint_does_not_overwrite_the_first(tmp_path):
    import train_induction

    for content in (b"first", b"second"):
        (tmp_path / "rope_checkpoint.pt").write_bytes(content)
        assert train_induction.main(_train_args(tmp_path, *TINY_TRAINING, "--max_steps", "3")) == 0
        (tmp_path / "rope_checkpoint.pt").unlink()
    assert (tmp_path / "rope_checkpoint.pt.damaged").read_bytes() == b"first"
    assert (tmp_path / "rope_checkpoint.pt.damaged.1").read_bytes() == b"second"
    meta = json.loads((tmp_path / "rope_training.json").read_text())
    assert meta["task"] == {"vocab_size": 16, "trigger_token": 15} and "task_config" not in meta


def test_files_that_hold_no_usable_model_are_named_in_one_line(tmp_path):
    from icl_cmr.errors import FileContentError
    from icl_cmr.files.induction_models import load_induction_model

    good = torch.load(SHIPPED / "alibi.pt", weights_only=True)
    cases = {
        "list": ([1, 2], "not an induction-task model (holds a list; expected a file written by train_induction.py)"),
        "keys": ({"x": 1}, "not an induction-task model (no 'model' or 'model_config'"),
        "arch": (dict(good, architecture="rnn"), "holds a model config that cannot be built: architecture must be"),
        "half": (dict(good, model=dict(list(good["model"].items())[1:])),
                 "its weights do not fit its model config (1 missing, 0 unexpected; first: embed.weight)"),
        "shape": (dict(good, model_config=dict(good["model_config"], d_model=32, n_heads=4)),
                  "its weights do not fit its model config (size mismatch for embed.weight"),
    }
    for name, (obj, message) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        with pytest.raises(FileContentError) as caught:
            load_induction_model(path)
        assert str(caught.value).startswith(f"{path}: {message}"), name
        assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


# ----------------------------------------------------------------------------- the engine, from Python

def test_the_experiments_have_the_command_lines_defaults():
    import eval_induction
    import train_induction
    from icl_cmr.experiments.induction_eval import InductionEvalSettings
    from icl_cmr.experiments.induction_train import InductionTrainSettings

    for settings, parser in ((InductionTrainSettings(), train_induction.build_parser()),
                             (InductionEvalSettings(), eval_induction.build_parser())):
        defaults = vars(parser.parse_args([]))
        for name, value in vars(settings).items():
            if name in defaults:
                assert defaults[name] == value, name


@pytest.mark.parametrize("changes, message, parameters", [
    (dict(min_steps=10, max_steps=3), "`min_steps` (10) must be <= `max_steps` (3)", {"min_steps", "max_steps"}),
    (dict(architecture="mamba", n_heads=4), "`n_heads` does not apply to `architecture` mamba",
     {"n_heads", "architecture"}),
    (dict(curriculum=(16, 256)), "`curriculum` lengths must be below `train_length` 256",
     {"curriculum", "train_length"}),
])
def test_training_settings_that_contradict_are_refused_naming_their_parameters(changes, message, parameters):
    from icl_cmr.experiments.induction_train import InductionTrainSettings

    with pytest.raises(InputError) as caught:
        InductionTrainSettings(**changes).resolved()
    assert str(caught.value).startswith(message) and set(caught.value.parameters) == parameters


def test_eval_settings_of_a_skipped_part_are_refused_naming_their_parameters():
    from icl_cmr.experiments.induction_eval import InductionEvalSettings

    with pytest.raises(InputError) as caught:
        InductionEvalSettings(n_sequences=5, skip_accuracy=True).resolved()
    assert str(caught.value) == "`n_sequences` set the accuracy table, which `skip_accuracy` skips"
    assert set(caught.value.parameters) == {"n_sequences", "skip_accuracy"}
    resolved = InductionEvalSettings(lag_prompts=3).resolved()
    assert resolved.n_sequences == 256 and resolved.given == {"lag_prompts"}
    assert resolved.resolved().given == {"lag_prompts"}          # resolving twice keeps what was given


def test_the_training_run_resumes_from_python_and_refuses_other_settings_naming_restart(tmp_path):
    from icl_cmr.experiments.induction_train import (InductionTrainSettings, check_induction_training,
                                                     run_induction_training)

    settings = InductionTrainSettings(position_encoding="rope", train_length=12, d_model=16, n_heads=2, d_mlp=32,
                                      eval_every=3, n_val=8, max_steps=3, save_dir=tmp_path, device="cpu")
    first = run_induction_training(settings, progress=False)
    assert first.steps == 3 and first.resumed_from_step is None and (tmp_path / "rope_checkpoint.pt").is_file()
    longer = dataclasses.replace(settings, max_steps=6)
    second = run_induction_training(longer, progress=False)
    assert second.steps == 6 and second.resumed_from_step == 3 and [r["step"] for r in second.curve] == [3, 6]
    with pytest.raises(InputError) as caught:
        check_induction_training(dataclasses.replace(longer, learning_rate=0.01))
    assert "learning_rate: 0.001 there, 0.01 now" in str(caught.value) and "`restart`" in str(caught.value)
    assert caught.value.parameters == ("restart",)
    assert check_induction_training(dataclasses.replace(longer, learning_rate=0.01), restart=True).saved is None
