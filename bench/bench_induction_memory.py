"""Benchmark: the induction task's memory estimate against the measured peak.

For each case (model, training step or evaluation batch, batch x length), a fresh process builds
the default-width model, warms it up on a tiny batch (numba compilation, Adam state), then runs
one training step or one validation batch and reports the peak resident memory above the
warmed-up process (Linux ``VmHWM``, reset before the measured call). Printed beside it:
:func:`icl_cmr.synthetic.models.forward_memory_estimate` and the ratio estimate / measured, the
number the scripts' refusal rests on (the constants in ``icl_cmr.synthetic.models`` were set from
this table, rounded up). Linux only. Usage::

    python bench/bench_induction_memory.py
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

#: (model name, mode, batch, length): both training paths at short and training lengths, ALiBi's
#: quadratic training attention, and evaluation below and above Mamba's chunk.
CASES = (
    ("absolute", "train", 2000, 16), ("absolute", "train", 200, 256), ("rope", "train", 200, 256),
    ("none", "train", 200, 256), ("alibi", "train", 2000, 16), ("alibi", "train", 200, 256),
    ("alibi", "train", 50, 1024), ("mamba", "train", 2000, 16), ("mamba", "train", 200, 256),
    ("absolute", "eval", 64, 4096), ("absolute", "eval", 2, 16384), ("mamba", "eval", 64, 4096),
    ("mamba", "eval", 4, 16384), ("mamba", "eval", 1, 65536),
)

CHILD = r"""
import sys
import numpy as np
import torch
sys.path.insert(0, {src!r})
from icl_cmr.synthetic import task
from icl_cmr.synthetic.models import build_model, fastest_method, forward_memory_estimate
from icl_cmr.synthetic.mamba import InductionMambaConfig
from icl_cmr.synthetic.transformer import TinyTransformerConfig

name, mode, batch, length = {name!r}, {mode!r}, {batch}, {length}
torch.set_num_threads(1)

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

architecture = "mamba" if name == "mamba" else "transformer"
if architecture == "mamba":
    config = InductionMambaConfig().to_dict()
else:
    config = TinyTransformerConfig(position_encoding=name, n_trained_positions=max(length, 256)).to_dict()
model = build_model(architecture, config)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
rng = np.random.default_rng(0)
method = fastest_method(model) if mode == "eval" else ("auto" if architecture == "mamba" else "blocked")
task.training_step(model, optimizer, rng, 2, min(length, 64), task.VOCAB_SIZE, task.TRIGGER_TOKEN)
task.evaluate_accuracy(model, min(length, 64), 2, 1, batch_size=2, method=method)
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
if mode == "train":
    task.training_step(model, optimizer, rng, batch, length, task.VOCAB_SIZE, task.TRIGGER_TOKEN)
else:
    model.eval()
    task.evaluate_accuracy(model, length, batch, 1, batch_size=batch, method=method)
measured = status("VmHWM") - base
estimate = forward_memory_estimate(architecture, config, batch, length, training=mode == "train")
print(measured, estimate)
"""


def main() -> int:
    print(f"{'model':<9} {'mode':<6} {'batch x length':>15} {'measured MiB':>13} {'estimate MiB':>13} {'ratio':>6}")
    for name, mode, batch, length in CASES:
        code = CHILD.format(src=str(SRC), name=name, mode=mode, batch=batch, length=length)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        measured, estimate = map(int, result.stdout.split()[-2:])
        print(f"{name:<9} {mode:<6} {f'{batch} x {length}':>15} {measured / 2 ** 20:13.0f} {estimate / 2 ** 20:13.0f} "
              f"{estimate / measured:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
