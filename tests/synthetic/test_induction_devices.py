"""The induction task's models on any device, in float32 and bfloat16 (issue 13, section 1).

Device-agnostic: on a machine without a GPU these run on the CPU and on PyTorch's
``meta`` device, where mixing in a tensor made on the CPU fails and every factory call
is checked for the device it was given. With CUDA present, the same tests also run there.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from icl_cmr.synthetic import task
from icl_cmr.synthetic.mamba import InductionMambaConfig, build_mamba
from icl_cmr.synthetic.transformer import POSITION_ENCODINGS, TinyTransformer, TinyTransformerConfig

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHIPPED = Path(__file__).resolve().parents[2] / "saved_models" / "induction_task"

#: Functions that create a tensor from nothing: where it lands depends on their ``device`` argument.
FACTORIES = {torch.arange, torch.zeros, torch.ones, torch.full, torch.empty, torch.tensor, torch.randn,
             torch.rand, torch.randint, torch.eye, torch.linspace}


class CreatedOffDevice(TorchFunctionMode):
    """Records factory calls whose result is not on ``device`` (seeded draws with an explicit CPU
    generator excepted: the model draws its extra position rows on the CPU so that they are the
    same on every device, then moves them)."""

    def __init__(self, device):
        super().__init__()
        self.device = torch.device(device)
        self.offenders = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func in FACTORIES and isinstance(result, torch.Tensor) and result.device != self.device \
                and kwargs.get("generator") is None:
            self.offenders.append(func.__name__)
        return result


def _transformer(encoding, n_trained_positions=64, scale=10.0):
    torch.manual_seed(3)
    model = TinyTransformer(TinyTransformerConfig(position_encoding=encoding,
                                                  n_trained_positions=n_trained_positions)).eval()
    with torch.no_grad():  # weights far from the 0.02 init, so attention is far from uniform
        for name, param in model.named_parameters():
            if "ln" not in name:
                param.mul_(scale)
    return model


@pytest.mark.parametrize("encoding", POSITION_ENCODINGS)
def test_every_tensor_the_transformer_makes_is_on_its_device(encoding):
    model = _transformer(encoding).to("meta")
    tokens = torch.zeros((2, 100), dtype=torch.long, device="meta")          # > 64 trained positions
    with torch.no_grad(), CreatedOffDevice("meta") as mode:
        full = model(tokens)
        last = model.last_logits(tokens, method="blocked", block_size=16, mlp_chunk=40)
    assert full.device.type == last.device.type == "meta"
    assert mode.offenders == []


def test_every_tensor_mamba_makes_is_on_its_device():
    torch.manual_seed(0)
    model = build_mamba(InductionMambaConfig(d_model=16, d_state=4)).to("meta")
    tokens = torch.zeros((2, 40), dtype=torch.long, device="meta")
    with torch.no_grad(), CreatedOffDevice("meta") as mode:
        logits = model.last_logits(tokens, chunk_size=16)                     # "auto": the torch scan off the CPU
    assert logits.device.type == "meta" and logits.shape == (2, 16)
    assert mode.offenders == []


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("encoding", POSITION_ENCODINGS)
def test_blocked_path_on_each_device_equals_the_cpu_reference_at_2_to_the_10(device, encoding):
    """Logits of the memory-linear path on ``device`` vs the full-attention forward on the CPU, length 1024
    (rows past the 256 trained positions included), to 1e-5."""
    model = _transformer(encoding, n_trained_positions=256, scale=3.0)
    tokens = torch.from_numpy(task.sample_induction_batch(np.random.default_rng(9), 2, 1024)[0])
    with torch.no_grad():
        reference = model(tokens)[:, -1]
        on_device = model.to(device).last_logits(tokens.to(device), method="blocked").cpu()
    assert reference.abs().max() > 0.5
    torch.testing.assert_close(on_device, reference, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_mamba_torch_scan_on_each_device_equals_the_cpu_numba_path_at_2_to_the_10(device):
    torch.manual_seed(1)
    model = build_mamba().eval()
    tokens = torch.from_numpy(task.sample_induction_batch(np.random.default_rng(10), 2, 1024)[0])
    with torch.no_grad():
        reference = model.last_logits(tokens, method="numba")
        on_device = model.to(device).last_logits(tokens.to(device), method="torch").cpu()
    torch.testing.assert_close(on_device, reference, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["absolute", "mamba"])
def test_bfloat16_keeps_the_shipped_models_answers_at_the_training_length(name):
    from icl_cmr.files.induction_models import load_induction_model

    path = SHIPPED / f"{name}.pt"
    if not path.is_file():
        pytest.skip(f"{path} not shipped")
    full = load_induction_model(path, dtype="float32")
    half = load_induction_model(path, dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16
    tokens, targets, _ = task.validation_set(256, 64, seed=777)
    with torch.no_grad():
        a = full.last_logits(torch.from_numpy(tokens)).argmax(-1).numpy()
        b = half.last_logits(torch.from_numpy(tokens)).float().argmax(-1).numpy()
    assert (a == targets).mean() >= 0.95
    assert (a == b).mean() >= 0.95      # bfloat16 has 8 bits of mantissa: a few argmax flips allowed


def test_bfloat16_training_autocasts_and_keeps_float32_weights(tmp_path):
    import train_induction

    args = ["--save_dir", str(tmp_path), "--fig_dir", str(tmp_path), "--no_progress", "--no_figure",
            "--train_length", "12", "--d_model", "16", "--n_heads", "2", "--d_mlp", "32", "--eval_every", "3",
            "--n_val", "8", "--max_steps", "3", "--dtype", "bfloat16", "--device", "cpu"]
    assert train_induction.main(args) == 0
    saved = torch.load(tmp_path / "absolute.pt", weights_only=True)
    assert all(t.dtype == torch.float32 for t in saved["model"].values())
    summary = json.loads((tmp_path / "absolute_training.json").read_text())
    assert summary["dtype"] == "bfloat16" and summary["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("script", ["train_induction", "eval_induction"])
def test_cuda_asked_for_without_one_is_a_one_line_error_before_anything_is_written(tmp_path, capsys, script):
    import importlib

    from icl_cmr.cli.args import run_cli

    module = importlib.import_module(script)
    try:
        code = run_cli(module.main, ["--device", "cuda", "--save_dir", str(tmp_path / "out"),
                                     "--fig_dir", str(tmp_path / "figs")])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and "CUDA is not available" in err[0]
    assert list(tmp_path.iterdir()) == []
