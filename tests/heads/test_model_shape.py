"""A model's shape read from its config alone (icl_cmr.heads.registry.read_model_shape), before any weights load."""
from __future__ import annotations

import json

import pytest

from icl_cmr.errors import InputError
from icl_cmr.heads.models import load_model
from icl_cmr.heads.registry import model_shape_from_config, read_model_shape, resolve_model
from tiny_models import ARCHITECTURES, MATRIX_ARCHITECTURES, N_HEADS, N_KV_HEADS, N_LAYERS, tiny_config


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shape_from_the_config_is_the_loaded_models_shape(tiny_model_dirs, arch):
    spec = resolve_model(str(tiny_model_dirs[arch]))
    shape = read_model_shape(spec)
    cfg = load_model(spec).cfg  # TransformerLens builds cfg from the same config, by its own code
    assert (shape.n_layers, shape.n_heads, shape.n_ctx, shape.vocab_size) == \
        (cfg.n_layers, cfg.n_heads, cfg.n_ctx, cfg.d_vocab)
    assert (shape.n_layers, shape.n_heads) == (N_LAYERS, N_HEADS)
    assert shape.n_kv_heads == (N_KV_HEADS if arch == "llama_gqa" else N_HEADS)


@pytest.mark.parametrize("arch", MATRIX_ARCHITECTURES)
def test_every_bridged_architecture_maps_as_transformer_lens_maps_it(arch):
    from transformer_lens.model_bridge.sources._hf_format import map_default_transformer_lens_config

    config = tiny_config(arch, 400)
    reference = map_default_transformer_lens_config(config)
    shape = model_shape_from_config(config)
    assert (shape.n_layers, shape.n_heads, shape.n_ctx, shape.vocab_size) == \
        (reference.n_layers, reference.n_heads, reference.n_ctx, reference.d_vocab)


@pytest.mark.parametrize("arch, kv_heads", [("llama_gqa", 2), ("gemma", 1), ("falcon", 1), ("gpt2", 4)])
def test_key_value_heads_follow_the_attention_design(arch, kv_heads):
    # grouped-query (Llama 2 kv heads), multi-query (Gemma num_key_value_heads=1; Falcon multi_query), plain MHA
    assert model_shape_from_config(tiny_config(arch, 400)).n_kv_heads == kv_heads


def test_reading_the_shape_loads_no_weights(tiny_model_dirs, monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", refuse)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    assert read_model_shape(resolve_model(str(tiny_model_dirs["gpt2"]))).n_layers == N_LAYERS


def test_an_uncached_hub_model_offline_gives_the_hub_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="the Hugging Face hub is unreachable and the model is not in the local "
                                         "cache; pass a local checkpoint folder"):
        read_model_shape(resolve_model("no-such-owner/no-such-model"))


def test_a_config_that_cannot_be_read_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{not json")  # named as damaged (issue 25, item 2)
    with pytest.raises(InputError, match=r"config.json: damaged or incomplete \(not valid JSON"):
        read_model_shape(resolve_model(str(tmp_path)))


def test_a_config_that_transformers_refuses_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_head": None}))
    with pytest.raises(InputError, match="cannot read the configuration of .*n_head"):
        read_model_shape(resolve_model(str(tmp_path)))


def test_a_config_without_layers_or_heads_is_refused():
    from transformers import PretrainedConfig

    with pytest.raises(InputError, match="names no layer or head count"):
        model_shape_from_config(PretrainedConfig(), "bare")
