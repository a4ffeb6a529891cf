"""``--no-progress`` hides every progress bar, the Hugging Face libraries' ones included (probe F13)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _head_scores(repo_root, model_dir, out, *extra):
    return subprocess.run([sys.executable, str(repo_root / "src" / "compute_head_scores.py"), "--model", str(model_dir),
                           "--out", str(out), "--device", "cpu", "--n-prompts", "2", "--block-len", "6",
                           "--prefix-block-len", "4", "--prefix-n-prompts", "1", "--no-copying", *extra],
                          cwd=repo_root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_no_progress_also_hides_transformers_loading_weights_bar(repo_root, tiny_model_dirs, tmp_path):
    shown = _head_scores(repo_root, tiny_model_dirs["gpt2"], tmp_path / "a.pkl")
    assert shown.returncode == 0 and "Loading weights" in shown.stderr   # the bar this test is about exists
    hidden = _head_scores(repo_root, tiny_model_dirs["gpt2"], tmp_path / "b.pkl", "--no-progress")
    assert hidden.returncode == 0, hidden.stderr
    assert "Loading weights" not in hidden.stderr and "it/s]" not in hidden.stderr
