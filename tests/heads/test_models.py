"""Model loading: registry, local folders, offline failure, hook names."""
from __future__ import annotations

import time

import pytest
import torch

from icl_cmr.errors import InputError
from icl_cmr.heads.models import load_model, n_kv_heads
from icl_cmr.heads.registry import MODEL_REGISTRY, resolve_model
from icl_cmr.heads.hooks import hook_name
from tiny_models import N_HEADS, N_KV_HEADS, N_LAYERS


def test_registry_maps_paper_names_to_hub_ids():
    assert MODEL_REGISTRY["gpt2-small"] == "gpt2"
    assert MODEL_REGISTRY["pythia-410m"] == "EleutherAI/pythia-410m-deduped-v0"
    assert resolve_model("pythia-1.4b").source == "EleutherAI/pythia-1.4b-deduped-v0"


def test_pythia_checkpoint_step_maps_to_the_authors_index():
    # Authors' cpK = index K in the v0 checkpoint list, step 1000 (K + 1) (official/README.md).
    spec = resolve_model("pythia-70m", checkpoint=143000)
    assert spec.checkpoint_index == 142
    assert resolve_model("pythia-70m", checkpoint=11000).checkpoint_index == 10


def test_unknown_checkpoint_step_is_a_clear_error():
    with pytest.raises(InputError, match="not a training step"):
        resolve_model("pythia-70m", checkpoint=1234)
    with pytest.raises(InputError, match="no published training checkpoints"):
        resolve_model("gpt2-small", checkpoint=1000)


def test_hub_ids_are_filed_without_slashes():
    assert resolve_model("EleutherAI/pythia-70m").name == "EleutherAI__pythia-70m"


def test_missing_local_folder_is_a_clear_error():
    with pytest.raises(InputError, match="does not exist"):
        resolve_model("./no/such/model")


def test_offline_hub_model_fails_fast_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(InputError, match="local checkpoint folder"):
        load_model(resolve_model("gpt2-small"))
    assert time.monotonic() - start < 30  # generous: the point is no retry loop of minutes


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama_gqa"])
def test_local_tiny_models_load_with_per_query_head_hooks(tiny_model_dirs, arch):
    model = load_model(resolve_model(str(tiny_model_dirs[arch])))
    assert model.cfg.n_layers == N_LAYERS and model.cfg.n_heads == N_HEADS
    assert n_kv_heads(model) == (N_KV_HEADS if arch == "llama_gqa" else N_HEADS)
    tokens = torch.randint(1, 100, (2, 7))
    names = [hook_name(0, "pattern"), hook_name(0, "z"), hook_name(0, "v")]
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    assert tuple(cache[names[0]].shape) == (2, N_HEADS, 7, 7)
    assert tuple(cache[names[1]].shape) == (2, 7, N_HEADS, model.cfg.d_head)
    assert tuple(cache[names[2]].shape) == (2, 7, n_kv_heads(model), model.cfg.d_head)
