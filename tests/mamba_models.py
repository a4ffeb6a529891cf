"""Test Mambas: weights away from their initial values, and the library's own model with the same weights."""
from __future__ import annotations

import torch

from icl_cmr.synthetic.mamba import InductionMambaConfig, build_mamba


def perturbed_mamba(seed=0, **config):
    """A Mamba whose A, D and step sizes are away from their initial values (a generic test point)."""
    torch.manual_seed(seed)
    model = build_mamba(InductionMambaConfig(**config))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.backbone.layers:
            mixer = block.mixer
            mixer.A_log.add_(0.3 * torch.randn(mixer.A_log.shape, generator=gen))
            mixer.D.add_(0.3 * torch.randn(mixer.D.shape, generator=gen))
            mixer.dt_proj.bias.add_(torch.randn(mixer.dt_proj.bias.shape, generator=gen))
        for norm in [block.norm for block in model.backbone.layers] + [model.backbone.norm_f]:
            norm.weight.add_(0.2 * torch.randn(norm.weight.shape, generator=gen))
            if getattr(norm, "bias", None) is not None:                        # LayerNorm
                norm.bias.add_(0.2 * torch.randn(norm.bias.shape, generator=gen))
    return model


def library_copy(model):
    """``transformers``' own ``MambaForCausalLM`` with the same weights (and the same LayerNorms swapped in)."""
    from transformers import MambaForCausalLM

    reference = MambaForCausalLM(model.config)
    if model.induction_config.norm == "layernorm":
        eps = model.config.layer_norm_epsilon
        for block in reference.backbone.layers:
            block.norm = torch.nn.LayerNorm(model.config.hidden_size, eps=eps)
        reference.backbone.norm_f = torch.nn.LayerNorm(model.config.hidden_size, eps=eps)
    reference.load_state_dict(model.state_dict())
    return reference
