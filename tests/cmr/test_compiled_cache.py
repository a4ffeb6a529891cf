"""numba's on-disk cache of compiled kernels, cut short (a full disk, a killed job): recompiled with one warning.

Both families with cached kernels: the CMR simulator (icl_cmr.cmr.kernels) and Mamba's selective scan
(icl_cmr.synthetic.scan)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

#: One CMR grid point, printed: it compiles (or reads back) every kernel of icl_cmr.cmr.kernels.
SIMULATE = """
import logging, sys
import numpy as np
logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
from icl_cmr.cmr.conditional import conditional_cmr_crp
from icl_cmr.cmr.model import CMRSettings, cmr_crp
settings = CMRSettings(n_items=20, n_trials=50, n_start=3, max_lag=5)
print(cmr_crp(0.5, 0.5, 0.3, settings, rng=np.random.default_rng(0), method="simulate").round(12).tolist())
print(conditional_cmr_crp(0.5, 0.5, 0.3, settings, rng=np.random.default_rng(0)).round(12).tolist())
import torch
from icl_cmr.synthetic.scan import selective_scan
generator = torch.Generator().manual_seed(0)
u = torch.randn(2, 7, 3, generator=generator, requires_grad=True)
delta = torch.rand(2, 7, 3, generator=generator)
A = -torch.rand(3, 4, generator=generator)
B = torch.randn(2, 7, 4, generator=generator)
C = torch.randn(2, 7, 4, generator=generator)
y, h = selective_scan(u, delta, A, B, C, method="numba")
y.sum().backward()   # the backward kernel too
print(y.detach().numpy().round(6).tolist(), u.grad.numpy().round(6).tolist())
"""


def _run(src: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SIMULATE], cwd=src, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "HOME": str(src)})


@pytest.mark.slow
def test_a_truncated_kernel_cache_is_recompiled_with_one_warning(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("__pycache__"))
    first = _run(src)
    assert first.returncode == 0, first.stderr
    cached = sorted((src / "icl_cmr" / "cmr" / "__pycache__").glob("kernels.*.nbc"))
    cached += sorted((src / "icl_cmr" / "synthetic" / "__pycache__").glob("scan.*.nbc"))
    assert cached, "numba wrote no cache"
    for path in cached:  # what a full disk or a killed job leaves
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 3])
    damaged = _run(src)
    assert damaged.returncode == 0, damaged.stderr
    assert damaged.stdout == first.stdout
    warnings = [line for line in damaged.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 2, damaged.stderr
    assert "compiled-code cache of icl_cmr.cmr.kernels is damaged" in warnings[0]
    assert "compiled-code cache of icl_cmr.synthetic.scan is damaged" in warnings[1]
    assert "Traceback" not in damaged.stderr
    again = _run(src)   # the cache written while recompiling is sound
    assert again.returncode == 0 and again.stdout == first.stdout and "WARNING" not in again.stderr
