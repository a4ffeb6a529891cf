"""Model loading: registry, local folders, offline failure, damaged model files, hook names."""
from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file

from icl_cmr.errors import CorruptFileError, InputError
from icl_cmr.heads.models import load_model, n_kv_heads
from icl_cmr.heads.registry import MODEL_REGISTRY, check_model_files, read_model_shape, resolve_model
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


# ----------------------------------------------------------------------------- damaged model files (issue 25, item 2)

@pytest.fixture()
def model_copy(tiny_model_dirs, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["gpt2"], folder)
    return folder


def test_an_intact_model_folder_passes_the_file_check(model_copy):
    check_model_files(model_copy)


@pytest.mark.parametrize("keep", [4, 100, "half", -1])
def test_a_safetensors_file_cut_anywhere_is_named_as_damaged(model_copy, keep):
    path = model_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep == "half" else keep])
    with pytest.raises(CorruptFileError, match="damaged or incomplete") as error:
        check_model_files(model_copy)
    assert error.value.path == str(path) and "\n" not in str(error.value)


def test_a_safetensors_file_with_bytes_beyond_its_tensors_is_damaged(model_copy):
    path = model_copy / "model.safetensors"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes() + b"\0" * 10)
    with pytest.raises(CorruptFileError, match=f"declares {size:,} bytes, the file holds {size + 10:,}"):
        check_model_files(model_copy)


def test_a_pytorch_bin_checkpoint_is_checked_intact_and_cut_short(model_copy):
    path = model_copy / "pytorch_model.bin"
    torch.save(load_file(model_copy / "model.safetensors"), path)
    (model_copy / "model.safetensors").unlink()
    check_model_files(model_copy)
    path.write_bytes(path.read_bytes()[:-100])  # only the end of the zip directory is gone
    with pytest.raises(CorruptFileError, match="pytorch_model.bin: damaged or incomplete"):
        check_model_files(model_copy)


def test_a_sharded_checkpoint_missing_a_shard_names_its_index(model_copy):
    index = model_copy / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(CorruptFileError, match=r"index.json: damaged or incomplete \(1 of its 2 shards missing, "
                                               r"e.g. model-00002-of-00002.safetensors\)"):
        check_model_files(model_copy)


def test_a_damaged_folder_is_refused_before_its_config_or_weights_are_read(model_copy):
    config = model_copy / "config.json"
    config.write_bytes(config.read_bytes()[:40])
    spec = resolve_model(str(model_copy))
    for read in (read_model_shape, load_model):
        with pytest.raises(CorruptFileError, match=f"{config}: damaged or incomplete \\(not valid JSON"):
            read(spec)
