"""Specifications of the induction task's Mamba and its selective scan ([GD23]; DESIGN.md section 7)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from icl_cmr.synthetic import task
from icl_cmr.errors import InputError
from icl_cmr.files.induction_models import load_induction_model
from icl_cmr.synthetic.mamba import InductionMamba, build_mamba
from icl_cmr.synthetic.scan import selective_scan
from mamba_models import library_copy, perturbed_mamba


# ----------------------------------------------------------------------------- the scan

def _scan_inputs(batch=2, length=23, channels=5, states=4, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, channels, generator=gen, dtype=dtype)
    delta = torch.nn.functional.softplus(torch.randn(batch, length, channels, generator=gen, dtype=dtype))
    A = -torch.exp(torch.randn(channels, states, generator=gen, dtype=dtype))
    B = torch.randn(batch, length, states, generator=gen, dtype=dtype)
    C = torch.randn(batch, length, states, generator=gen, dtype=dtype)
    h0 = torch.randn(batch, channels, states, generator=gen, dtype=dtype)
    return u, delta, A, B, C, h0


def _reference_scan(u, delta, A, B, C, h0):
    """The recurrence of [GD23] eq. (2a)-(2b) with zero-order-hold A, one position at a time."""
    h = h0
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * B[:, t, None, :] * u[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1), h


@pytest.mark.parametrize("method", ["numba", "torch"])
def test_scan_equals_the_recurrence_in_float64(method):
    inputs = _scan_inputs(dtype=torch.float64)
    expected_y, expected_h = _reference_scan(*inputs)
    y, h = selective_scan(*inputs, method=method, chunk=8)   # float32 inside
    torch.testing.assert_close(y, expected_y.float(), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(h, expected_h.float(), atol=2e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["numba", "torch"])
def test_scan_gradients_equal_autograd_through_the_recurrence(method):
    inputs = [t.requires_grad_() for t in _scan_inputs(dtype=torch.float64)]
    weights_y = torch.randn(2, 23, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weights_h = torch.randn(2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected_y, expected_h = _reference_scan(*inputs)
    expected = torch.autograd.grad((expected_y * weights_y).sum() + (expected_h * weights_h).sum(), inputs)
    y, h = selective_scan(*inputs, method=method, chunk=8)
    got = torch.autograd.grad((y * weights_y.float()).sum() + (h * weights_h.float()).sum(), inputs)
    for name, g, e in zip(("u", "delta", "A", "B", "C", "h0"), got, expected):
        assert g.dtype == torch.float64, name            # autograd hands back the input's dtype
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4, msg=name)


def test_scan_in_two_blocks_equals_one_block():
    u, delta, A, B, C, h0 = _scan_inputs()
    whole_y, whole_h = selective_scan(u, delta, A, B, C, h0, method="numba")
    first_y, mid = selective_scan(u[:, :10], delta[:, :10], A, B[:, :10], C[:, :10], h0, method="numba")
    second_y, last = selective_scan(u[:, 10:], delta[:, 10:], A, B[:, 10:], C[:, 10:], mid, method="numba")
    torch.testing.assert_close(torch.cat([first_y, second_y], dim=1), whole_y, atol=1e-6, rtol=0)
    torch.testing.assert_close(last, whole_h, atol=1e-6, rtol=0)


def test_scan_refuses_bad_method_and_shapes():
    u, delta, A, B, C, h0 = _scan_inputs()
    with pytest.raises(InputError, match="method"):
        selective_scan(u, delta, A, B, C, method="cuda")
    with pytest.raises(InputError, match="shapes"):
        selective_scan(u, delta, A[:, :3], B, C)


# ----------------------------------------------------------------------------- the model vs the library

def test_default_model_is_a_two_layer_mamba_of_66k_parameters():
    model = build_mamba()
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert model.config.state_size == 16 and model.config.intermediate_size == 128
    assert model.lm_head.weight is model.backbone.embeddings.weight          # tied, as the library's default
    # embed 16x64; per layer: norm 64, in_proj 64x256, conv 128x4 + 128, x_proj 128x36, dt_proj 4x128 + 128,
    # A_log 128x16, D 128, out_proj 128x64; final norm 64.
    per_layer = 64 + 64 * 256 + 128 * 4 + 128 + 128 * 36 + 4 * 128 + 128 + 128 * 16 + 128 + 128 * 64
    assert sum(p.numel() for p in model.parameters()) == 16 * 64 + 2 * per_layer + 64 == 66_496


@pytest.mark.parametrize("config", [{}, {"norm": "layernorm", "initialization": "mamba_ssm"}],
                         ids=["shipped", "mamba_ssm_release"])
@pytest.mark.parametrize("method", ["numba", "torch"])
def test_last_logits_and_gradients_equal_the_library_forward(method, config):
    model = perturbed_mamba(**config).train()
    reference = library_copy(model).train()
    tokens = torch.from_numpy(task.sample_induction_batch(np.random.default_rng(3), 3, 40)[0])
    weights = torch.randn(3, 16, generator=torch.Generator().manual_seed(4))
    ours = model.last_logits(tokens, method=method)
    theirs = reference(tokens).logits[:, -1]
    assert theirs.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        scale = max(1.0, float(q.grad.abs().max()))
        torch.testing.assert_close(p.grad / scale, q.grad / scale, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunked_inference_equals_the_full_forward(chunk_size):
    model = perturbed_mamba(seed=5).eval()
    reference = library_copy(model).eval()
    tokens = torch.from_numpy(task.sample_induction_batch(np.random.default_rng(6), 2, 64)[0])
    with torch.no_grad():
        full = reference(tokens).logits[:, -1]
        chunked = model.last_logits(tokens, chunk_size=chunk_size)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)


def test_saved_state_loads_into_a_plain_library_model(tmp_path):
    from transformers import MambaConfig, MambaForCausalLM

    model = perturbed_mamba(seed=7, d_model=32)
    torch.save({"architecture": "mamba", "model": model.state_dict(),
                "model_config": model.induction_config.to_dict()}, tmp_path / "m.pt")
    loaded = load_induction_model(tmp_path / "m.pt")
    assert isinstance(loaded, InductionMamba) and not loaded.training
    plain = MambaForCausalLM(MambaConfig(**model.config.to_dict()))
    plain.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True)["model"])
    tokens = torch.randint(0, 15, (2, 30), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        torch.testing.assert_close(loaded.last_logits(tokens), plain.eval()(tokens).logits[:, -1], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- training and evaluation scripts

def _train_args(save_dir, *extra):
    return ["--save_dir", str(save_dir), "--fig_dir", str(save_dir), "--no_progress", "--no_figure", *extra]


@pytest.mark.slow
def test_short_mamba_training_run_learns_the_task(tmp_path):
    """Length 12, d_model 32, batch 32, lr 3e-3: 90% within 600 steps (about 150 measured, ~10 s)."""
    import train_induction

    small = ["--architecture", "mamba", "--train_length", "12", "--d_model", "32", "--batch_size", "32",
             "--learning_rate", "3e-3", "--eval_every", "50", "--n_val", "256", "--target_accuracy", "0.9",
             "--max_steps", "600"]
    assert train_induction.main(_train_args(tmp_path, *small)) == 0
    summary = json.loads((tmp_path / "mamba_training.json").read_text())
    assert summary["reached_target"] is True and summary["architecture"] == "mamba"
    model = load_induction_model(tmp_path / "mamba.pt")
    assert isinstance(model, InductionMamba)
    correct, _ = task.evaluate_accuracy(model, 12, 256, seed=12345)      # unseen sequences
    assert correct / 256 > 0.85                                           # chance: 1/15


TINY_MAMBA = ["--architecture", "mamba", "--train_length", "12", "--d_model", "16", "--d_state", "4",
              "--eval_every", "3", "--n_val", "8"]


@pytest.mark.slow
def test_mamba_resume_equals_uninterrupted_training(tmp_path):
    import train_induction

    straight, split = tmp_path / "straight", tmp_path / "split"
    train_induction.main(_train_args(straight, *TINY_MAMBA, "--max_steps", "9"))
    train_induction.main(_train_args(split, *TINY_MAMBA, "--max_steps", "6"))
    train_induction.main(_train_args(split, *TINY_MAMBA, "--max_steps", "9"))
    a = torch.load(straight / "mamba_checkpoint.pt", weights_only=True)
    b = torch.load(split / "mamba_checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 9 and a["architecture"] == "mamba"
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], atol=0, rtol=0)


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)


@pytest.mark.slow
def test_snapshots_hold_the_weights_after_every_n_steps_in_the_model_file_format(tmp_path):
    import train_induction

    run, short = tmp_path / "run", tmp_path / "short"
    assert train_induction.main(_train_args(run, *TINY_MAMBA, "--max_steps", "9", "--snapshot_every", "3")) == 0
    folder = run / "mamba_snapshots"
    assert sorted(p.name for p in folder.iterdir()) == [f"mamba_step00000{k}.pt" for k in (3, 6, 9)]
    for step in (3, 6, 9):
        saved = torch.load(folder / f"mamba_step00000{step}.pt", weights_only=True)
        assert saved["metadata"]["step"] == step and saved["metadata"]["run"] == "mamba"
        assert isinstance(load_induction_model(folder / f"mamba_step00000{step}.pt"), InductionMamba)
    # The last snapshot is the final model; the one at step 6 is what a 6-step run ends with.
    _assert_same_weights(_weights(folder / "mamba_step000009.pt"), _weights(run / "mamba.pt"))
    train_induction.main(_train_args(short, *TINY_MAMBA, "--max_steps", "6"))
    _assert_same_weights(_weights(folder / "mamba_step000006.pt"), _weights(short / "mamba.pt"))
    assert not (short / "mamba_snapshots").exists()         # none unless asked for


@pytest.mark.slow
def test_a_resumed_run_writes_the_same_snapshots_as_an_uninterrupted_one(tmp_path):
    """Snapshots every 2 steps, checkpoints every 3: the run is cut at step 5, between the two."""
    import train_induction

    straight, split = tmp_path / "straight", tmp_path / "split"
    train_induction.main(_train_args(straight, *TINY_MAMBA, "--max_steps", "9", "--snapshot_every", "2"))
    train_induction.main(_train_args(split, *TINY_MAMBA, "--max_steps", "5", "--snapshot_every", "2"))
    train_induction.main(_train_args(split, *TINY_MAMBA, "--max_steps", "9", "--snapshot_every", "2"))
    names = [f"mamba_step00000{k}.pt" for k in (2, 4, 6, 8)]
    assert sorted(p.name for p in (split / "mamba_snapshots").iterdir()) == names
    for name in names:
        _assert_same_weights(_weights(straight / "mamba_snapshots" / name), _weights(split / "mamba_snapshots" / name))


@pytest.mark.slow
def test_snapshots_may_be_asked_for_when_resuming_a_run_that_kept_none(tmp_path):
    import train_induction

    straight, split = tmp_path / "straight", tmp_path / "split"
    train_induction.main(_train_args(straight, *TINY_MAMBA, "--max_steps", "9", "--snapshot_every", "2"))
    train_induction.main(_train_args(split, *TINY_MAMBA, "--max_steps", "5"))
    assert train_induction.main(_train_args(split, *TINY_MAMBA, "--max_steps", "9", "--snapshot_every", "2")) == 0
    names = sorted(p.name for p in (split / "mamba_snapshots").iterdir())
    assert names == ["mamba_step000006.pt", "mamba_step000008.pt"]   # steps before the resume are not recreated
    for name in names:
        _assert_same_weights(_weights(straight / "mamba_snapshots" / name), _weights(split / "mamba_snapshots" / name))


@pytest.mark.parametrize("flags, message", [(["--n_heads", "4"], "--n_heads does not apply to --architecture mamba"),
                                            (["--position_encoding", "rope"], "--position_encoding does not apply"),
                                            (["--name", "x_checkpoint"], "--name")])
def test_transformer_flags_with_mamba_are_a_one_line_error(tmp_path, capsys, flags, message):
    import train_induction
    from icl_cmr.cli.args import run_cli

    try:
        code = run_cli(train_induction.main, _train_args(tmp_path, *TINY_MAMBA, "--max_steps", "3", *flags))
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_mamba_flags_with_a_transformer_are_a_one_line_error(tmp_path, capsys):
    import train_induction
    from icl_cmr.cli.args import run_cli

    code = run_cli(train_induction.main, _train_args(tmp_path, "--d_state", "8", "--max_steps", "3"))
    assert code == 2 and "--d_state does not apply to --architecture transformer" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_script_runs_mamba_beside_a_transformer_and_looks_inside(tmp_path):
    import eval_induction
    import train_induction

    train_induction.main(_train_args(tmp_path, *TINY_MAMBA, "--max_steps", "2"))
    train_induction.main(_train_args(tmp_path, "--train_length", "12", "--d_model", "16", "--n_heads", "2",
                                     "--d_mlp", "32", "--eval_every", "2", "--n_val", "8", "--max_steps", "2",
                                     "--position_encoding", "alibi"))
    code = eval_induction.main(["--save_dir", str(tmp_path), "--fig_dir", str(tmp_path), "--min_log2", "4",
                                "--max_log2", "6", "--n_sequences", "4", "--lag_prompts", "3",
                                "--inside_log2", "5,6", "--inside_sequences", "5"])
    assert code == 0
    lines = (tmp_path / "accuracy_vs_length.csv").read_text().strip().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert [(r["model"], int(r["length"])) for r in rows] == [(m, 2 ** k) for m in ("alibi", "mamba")
                                                              for k in range(4, 7)]
    assert {r["method"] for r in rows if r["model"] == "mamba"} == {"auto"}
    assert {r["device"] for r in rows} == {"cpu"} and {r["dtype"] for r in rows} == {"float32"}
    inside = json.loads((tmp_path / "distance_mamba.json").read_text())
    assert set(inside["by_length"]) == {"32", "64"}
    for length, res in inside["by_length"].items():
        assert len(res["distance"]) == 5
        assert all(2 <= d <= int(length) - 1 for d in res["distance"])
    assert (tmp_path / "accuracy_vs_distance_mamba.pdf").is_file()
    assert not (tmp_path / "lag_crp_mamba.json").exists()        # no attention to read
    assert (tmp_path / "lag_crp_alibi.json").is_file()


# ----------------------------------------------------------------------------- the shipped model

SHIPPED = Path(__file__).resolve().parents[2] / "saved_models" / "induction_task"


@pytest.mark.slow
def test_shipped_mamba_solves_the_task_at_the_training_length():
    model = load_induction_model(SHIPPED / "mamba.pt")
    assert isinstance(model, InductionMamba) and model.config.hidden_size == 64
    correct, _ = task.evaluate_accuracy(model, 256, 256, seed=424242, batch_size=128)   # never validated on
    assert correct / 256 >= 0.97
