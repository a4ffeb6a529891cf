"""Shared test fixtures: offline mode, the authors' reference data, temp folders."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the Hugging Face hub (DEVELOPERS.md: no model downloads here).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The authors' published outputs, beside the checkout (never committed).
OFFICIAL_DIR = Path(os.environ.get("ICL_CMR_OFFICIAL_DIR", REPO_ROOT.parent / "shared" / "official"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """``../shared/official``; skips the test with a clear reason when it is absent."""
    if not OFFICIAL_DIR.is_dir():
        pytest.skip(f"authors' reference outputs not found at {OFFICIAL_DIR} "
                    "(set ICL_CMR_OFFICIAL_DIR to point elsewhere)")
    return OFFICIAL_DIR


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """``{arch: folder}`` of tiny randomly initialised GPT-2, GPT-NeoX and Llama-GQA models (built once)."""
    from tiny_models import ARCHITECTURES, make_tiny_model_dir

    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: make_tiny_model_dir(arch, root / arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op torch thread for the whole suite.

    The test models are tiny; on a 2-core machine that also runs other work, two threads
    per small op or LAPACK call were measured 10-40x slower than one.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def matrix_model_dir(tmp_path_factory):
    """``matrix_model_dir(arch)``: folder of a tiny random model of ``arch`` (tiny_models.MATRIX_ARCHITECTURES),
    norm gains drawn away from 1; built once per session on first use."""
    from tiny_models import make_tiny_model_dir

    root = tmp_path_factory.mktemp("matrix_models")
    built = {}

    def get(arch: str):
        if arch not in built:
            built[arch] = make_tiny_model_dir(arch, root / arch, random_norms=True)
        return built[arch]

    return get
