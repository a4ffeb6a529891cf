"""The load-time probe checks TransformerLens's bridge against the Hugging Face model it wraps (issue 25, item 6).

An adapter that drops or reinterprets a config option makes every score and loss wrong without a warning
(GPT-2 with ``scale_attn_weights=False``: TransformerLens 4.3 still divides q.k by sqrt(d_head)).
``icl_cmr.heads.hooks.prepare_attention_hooks`` runs the wrapped Hugging Face model's own forward pass
(its modules put back for one pass, same weights) on the probe's 8 tokens and refuses the model in one
line when the logits or the last layer's attention pattern differ beyond the dtype's tolerance.

Each case below is a config option that adapters are known to drop or to treat differently, on a tiny
random model whose weights are large enough (std 0.3) that attention is far from uniform. Verdicts:

* ``HONOURED``: the model loads, its bridge logits equal those of a Hugging Face model loaded separately
  here, and the option is not a no-op on this input (Hugging Face with the option reset differs);
* ``DIFFERS``: refused by the check, in one line naming the model type and the differences;
* ``FAILS_TO_LOAD`` / ``FAILS_TO_RUN``: TransformerLens's adapter raises while loading the configuration, or
  on its first forward pass; refused in one line naming the model type and the adapter's error.

``python tests/test_bridge_fidelity.py`` prints the table (verdict, differences, the option's effect).
"""
from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from icl_cmr.errors import InputError
from icl_cmr.heads.hooks import PROBE_TOKENS, compare_with_hugging_face, hugging_face_modules
from icl_cmr.heads.models import load_model
from icl_cmr.heads.registry import resolve_model
from tiny_models import make_tokenizer, tiny_config

HONOURED, DIFFERS, FAILS_TO_LOAD, FAILS_TO_RUN = "honoured", "differs", "no load", "no forward"
#: Where a refusal of each failure kind says it happened.
FAILURE_WORDS = {FAILS_TO_LOAD: "cannot be loaded by TransformerLens 4.", FAILS_TO_RUN: "its forward pass fails on a probe"}
#: Weight scale of the test models: large enough that attention is far from uniform, so that an
#: ignored scale or mask changes the output by much more than float32 rounding.
WEIGHT_STD = 0.3

_ROPE = {"rope_theta": 10000.0}
#: (architecture, config options, verdict with TransformerLens 4.3.0).
CASES = [
    ("gpt2", {"scale_attn_weights": False}, DIFFERS),
    ("gpt2", {"scale_attn_weights": False, "scale_attn_by_inverse_layer_idx": True}, DIFFERS),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, HONOURED),
    ("gpt2", {"activation_function": "relu"}, HONOURED),
    ("neox", {"use_parallel_residual": False}, HONOURED),
    # transformers 5 keeps GPT-NeoX's rotary_pct and rotary_emb_base in rope_parameters
    ("neox", {"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 1.0, **_ROPE}}, HONOURED),
    ("neox", {"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 1.0, "rope_theta": 100.0}},
     HONOURED),
    ("neox", {"attention_bias": False}, FAILS_TO_LOAD),
    ("llama_gqa", {"attention_bias": True}, HONOURED),
    ("llama_gqa", {"mlp_bias": True}, HONOURED),
    ("llama_gqa", {"rope_parameters": {"rope_type": "linear", "factor": 4.0, **_ROPE}}, HONOURED),
    ("llama_gqa", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64, **_ROPE}},
     HONOURED),
    ("llama_gqa", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                       **_ROPE}}, HONOURED),
    ("llama_gqa", {"head_dim": 16}, HONOURED),
    ("mistral", {"sliding_window": 4}, HONOURED),
    # transformers 5 reads Qwen2's windows from layer_types, set from use_sliding_window when the config is built
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "layer_types": ["sliding_attention"] * 2}, HONOURED),
    ("gemma2", {"attn_logit_softcapping": 1.0}, HONOURED),
    ("gemma2", {"final_logit_softcapping": 1.0}, HONOURED),
    ("gemma2", {"query_pre_attn_scalar": 64}, HONOURED),
    ("gemma2", {"sliding_window": 4}, HONOURED),
    ("phi", {"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 1.0, **_ROPE}}, HONOURED),
    ("phi", {"qk_layernorm": True}, FAILS_TO_LOAD),
    ("stablelm", {"qk_layernorm": True}, HONOURED),
    ("stablelm", {"use_parallel_residual": True}, HONOURED),
    ("opt", {"do_layer_norm_before": False}, FAILS_TO_RUN),
    ("bloom", {"apply_residual_connection_post_layernorm": True}, HONOURED),
    ("falcon", {"parallel_attn": False}, HONOURED),
    ("falcon", {"alibi": True}, HONOURED),
    ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}, FAILS_TO_LOAD),
]
#: Hugging Face model_type of each test architecture, which refusals name.
MODEL_TYPES = {"gpt2": "gpt2", "neox": "gpt_neox", "llama_gqa": "llama", "mistral": "mistral", "qwen2": "qwen2",
               "gemma2": "gemma2", "phi": "phi", "stablelm": "stablelm", "opt": "opt", "bloom": "bloom",
               "falcon": "falcon"}


def case_id(case) -> str:
    arch, options, _ = case
    def show(value):
        if isinstance(value, dict):
            return ",".join(f"{key}={item}" for key, item in value.items() if key != "rope_type")
        return f"[{value[0]} x {len(value)}]" if isinstance(value, list) else value
    return f"{arch}-" + "-".join(f"{name}={show(value)}" for name, value in options.items())


def make_variant_dir(arch: str, options: dict, folder: Path, seed: int = 0) -> Path:
    """A tiny random ``arch`` model with config ``options``, weights N(0, 0.3^2), norm gains and biases 1 +- 0.5."""
    tokenizer = make_tokenizer()
    config = tiny_config(arch, len(tokenizer))
    for name, value in options.items():
        setattr(config, name, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.copy_(1.0 + 0.5 * torch.randn_like(parameter))
            else:
                parameter.normal_(0.0, WEIGHT_STD)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def hugging_face_logits(folder: Path, tokens: torch.Tensor, **config_changes) -> torch.Tensor:
    """Logits of a Hugging Face model loaded here on its own (eager attention), config changed as given."""
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", **config_changes).eval()
    with torch.inference_mode():
        return model(tokens).logits.float()


def default_options(arch: str, options: dict) -> dict:
    """Loading arguments that reset ``options`` to the test architecture's own values.

    An option that changes parameter shapes (``head_dim``) leaves those weights freshly drawn.
    """
    default = tiny_config(arch, 400)
    return {"ignore_mismatched_sizes": True, **{name: getattr(default, name, None) for name in options}}


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


@pytest.fixture()
def variant_dir(tmp_path):
    return lambda arch, options: make_variant_dir(arch, options, tmp_path / "model")


@pytest.mark.parametrize("case", [case for case in CASES if case[2] == HONOURED], ids=case_id)
def test_an_option_the_bridge_honours_loads_and_agrees_with_hugging_face(case, variant_dir):
    arch, options, _ = case
    folder = variant_dir(arch, options)
    model = load_model(resolve_model(str(folder)))
    tokens = torch.randint(0, int(model.cfg.d_vocab), (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        bridge = model(tokens, return_type="logits").float()
    reference = hugging_face_logits(folder, tokens)
    assert relative_gap(bridge, reference) < 1e-4
    # not vacuous: on this input the option changes Hugging Face's own output
    with _quiet():
        reset = hugging_face_logits(folder, tokens, **default_options(arch, options))
    assert relative_gap(reset, reference) > 1e-3


@pytest.mark.parametrize("case", [case for case in CASES if case[2] == DIFFERS], ids=case_id)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_an_option_the_bridge_ignores_is_refused_in_one_line(case, dtype, variant_dir):
    arch, options, _ = case
    folder = variant_dir(arch, options)
    with pytest.raises(InputError) as error:
        load_model(resolve_model(str(folder)), dtype=dtype)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{MODEL_TYPES[arch]} (") and "is not supported by TransformerLens" in message
    assert re.search(r"its logits differ from the Hugging Face model's own by [0-9.e-]+ .*layer 1's attention "
                     rf"pattern by [0-9.e-]+ \({dtype} tolerance", message), message
    assert "the config sets scale_attn_weights=False, which TransformerLens ignores" in message


@pytest.mark.parametrize("case", [case for case in CASES if case[2] in FAILURE_WORDS], ids=case_id)
def test_an_option_the_bridge_cannot_load_or_run_is_refused_in_one_line(case, variant_dir):
    arch, options, verdict = case
    with pytest.raises(InputError) as error:
        load_model(resolve_model(str(variant_dir(arch, options))))
    message = str(error.value)
    assert "\n" not in message
    assert f"({MODEL_TYPES[arch]}) cannot be loaded" in message or message.startswith(f"{MODEL_TYPES[arch]} ("), message
    assert FAILURE_WORDS[verdict] in message, message


@pytest.mark.parametrize("arch", ["gpt2", "llama_gqa", "gptj", "bloom"])
def test_the_hugging_face_pass_reuses_the_bridges_weights_and_gives_them_back(arch, variant_dir):
    """Inside the context no bridge component is left in the Hugging Face model, no parameter is copied,
    and its forward equals a separately loaded Hugging Face model's; afterwards the bridge is whole again."""
    folder = variant_dir(arch, {})
    model = load_model(resolve_model(str(folder)))
    hf_model = model.original_model
    before = [(name, id(module)) for name, module in hf_model.named_modules()]
    parameters = {id(parameter) for parameter in model.parameters()}
    tokens = torch.randint(0, int(model.cfg.d_vocab), (1, PROBE_TOKENS), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode(), hugging_face_modules(hf_model):
        assert not any("_original_component" in module._modules for module in hf_model.modules())
        assert {id(parameter) for parameter in hf_model.parameters()} <= parameters
        logits = hf_model(tokens).logits.float()
    assert [(name, id(module)) for name, module in hf_model.named_modules()] == before
    assert relative_gap(logits, hugging_face_logits(folder, tokens)) < 1e-6
    assert compare_with_hugging_face(model).agrees


def test_an_error_raised_outside_the_libraries_is_not_reported_as_an_unsupported_model(tiny_model_dirs,
                                                                                      monkeypatch):
    """Only what TransformerLens, transformers or torch raise becomes a one-line refusal; a caller's own
    failure (here a test's stand-in for loading) keeps its type and traceback."""
    def fail(*args, **kwargs):
        raise AssertionError("raised by the caller")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", fail)
    with pytest.raises(AssertionError, match="raised by the caller"):
        load_model(resolve_model(str(tiny_model_dirs["gpt2"])))


class _quiet:
    """Silence transformers' report of weights a reset option leaves unused (an expected mismatch here)."""

    def __enter__(self):
        self.level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc):
        hf_logging.set_verbosity(self.level)


if __name__ == "__main__":  # the table for the issue and docs/head_scores.md
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    print(f"{'case':<62} {'verdict':<10} {'logits (rel.)':>13} {'pattern':>9} {'option effect':>14}")
    for number, (arch, options, expected) in enumerate(CASES):
        folder = make_variant_dir(arch, options, root / str(number))
        found, logit, pattern = HONOURED, "", ""
        try:
            model = load_model(resolve_model(str(folder)))
            agreement = compare_with_hugging_face(model)
        except InputError as err:
            found = next((kind for kind, words in FAILURE_WORDS.items() if words in str(err)), DIFFERS)
            match = re.search(r"\(([0-9.]+%) of the largest\).*pattern by ([0-9.e-]+)", str(err))
            logit, pattern = match.groups() if match else ("", "")
        else:
            logit = f"{agreement.logit_gap / agreement.largest_logit:.1e}"
            pattern = f"{agreement.pattern_gap:.1e}" if agreement.pattern_gap is not None else "-"
        tokens = torch.randint(0, 400, (2, 12), generator=torch.Generator().manual_seed(1))
        with _quiet():
            effect = relative_gap(hugging_face_logits(folder, tokens, **default_options(arch, options)),
                                  hugging_face_logits(folder, tokens)) if found not in FAILURE_WORDS else float("nan")
        flag = "" if found == expected else f"  (expected {expected})"
        print(f"{case_id((arch, options, expected)):<62} {found:<10} {logit:>13} {pattern:>9} {effect:>14.2g}{flag}")
        shutil.rmtree(folder)
    sys.exit(0)
