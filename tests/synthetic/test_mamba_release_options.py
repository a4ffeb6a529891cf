"""The Mamba options of ``mamba_ssm``'s first release: LayerNorm and its weight initialisation (issue 23)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from icl_cmr.errors import InputError
from icl_cmr.files.induction_models import load_induction_model
from icl_cmr.synthetic.mamba import InductionMamba, InductionMambaConfig, build_mamba
from mamba_models import perturbed_mamba

TINY_MAMBA = ["--architecture", "mamba", "--train_length", "12", "--d_model", "16", "--d_state", "4",
              "--eval_every", "3", "--n_val", "8", "--no_progress", "--no_figure"]


def _layer_norm_mamba(seed=0):
    """A LayerNorm Mamba with every norm and step size away from its initial value."""
    return perturbed_mamba(seed, norm="layernorm", initialization="mamba_ssm")


def test_layer_norm_model_has_mamba_ssm_release_parameter_count():
    model = build_mamba(InductionMambaConfig(norm="layernorm"))
    norms = [block.norm for block in model.backbone.layers] + [model.backbone.norm_f]
    assert all(isinstance(norm, nn.LayerNorm) for norm in norms)
    # 66,496 with RMSNorm, plus a bias of 64 on each of the three norms: mamba_ssm's MambaLMHeadModel(64, 2, 16)
    assert sum(p.numel() for p in model.parameters()) == 66_496 + 3 * 64 == 66_688
    assert model.induction_config == InductionMambaConfig(norm="layernorm")


def test_mamba_ssm_initialisation_draws_each_weight_as_that_release():
    torch.manual_seed(0)
    model = build_mamba(InductionMambaConfig(initialization="mamba_ssm"))
    embedding = model.backbone.embeddings.weight
    assert model.lm_head.weight is embedding and abs(float(embedding.detach().std()) - 0.02) < 0.003
    for block in model.backbone.layers:
        mixer = block.mixer
        for linear, fan_in, scale in ((mixer.in_proj, 64, 1.0), (mixer.x_proj, 128, 1.0),
                                      (mixer.out_proj, 128, 1 / math.sqrt(2))):   # out_proj / sqrt(n_layers)
            bound = scale / math.sqrt(fan_in)                       # PyTorch's kaiming_uniform(a=sqrt(5))
            weight = linear.weight.detach()
            assert weight.abs().max() <= bound and weight.abs().max() > 0.95 * bound
            assert abs(float(weight.std()) - bound / math.sqrt(3)) < 0.05 * bound
        conv_bias = mixer.conv1d.bias.detach()                     # fan_in = d_conv = 4: U(-0.5, 0.5), not 0
        assert conv_bias.abs().max() <= 0.5 and conv_bias.std() > 0.2
        step = nn.functional.softplus(mixer.dt_proj.bias.detach())
        assert step.min() >= 1e-3 * 0.999 and step.max() <= 0.1 * 1.001
        torch.testing.assert_close(mixer.A_log.detach(), torch.log(torch.arange(1, 17.0)).expand(128, 16))
        assert torch.equal(mixer.D.detach(), torch.ones(128)) and torch.equal(block.norm.weight.detach(),
                                                                            torch.ones(64))


def test_default_initialisation_is_unchanged_transformers():
    torch.manual_seed(0)
    default = build_mamba()
    torch.manual_seed(0)
    explicit = build_mamba(InductionMambaConfig(norm="rmsnorm", initialization="transformers"))
    for (name, a), b in zip(default.state_dict().items(), explicit.state_dict().values()):
        assert torch.equal(a, b), name
    assert abs(float(default.backbone.embeddings.weight.detach().std()) - 0.1) < 0.01   # transformers: N(0, 0.1^2)
    assert float(default.backbone.layers[0].mixer.conv1d.bias.detach().abs().max()) == 0.0


def test_layer_norm_model_file_round_trips(tmp_path):
    model = _layer_norm_mamba(seed=2).eval()
    torch.save({"architecture": "mamba", "model": model.state_dict(),
                "model_config": model.induction_config.to_dict()}, tmp_path / "m.pt")
    loaded = load_induction_model(tmp_path / "m.pt")
    assert isinstance(loaded, InductionMamba) and loaded.induction_config.norm == "layernorm"
    tokens = torch.randint(0, 15, (2, 30), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        torch.testing.assert_close(loaded.last_logits(tokens), model.last_logits(tokens), atol=0, rtol=0)


@pytest.mark.parametrize("field, value", [("norm", "batchnorm"), ("initialization", "xavier")])
def test_unknown_norm_or_initialisation_is_refused_naming_it(field, value):
    with pytest.raises(InputError, match=f"`{field}` must be one of"):
        InductionMambaConfig(**{field: value})


@pytest.mark.slow
def test_training_records_the_options_and_a_checkpoint_from_before_them_still_resumes(tmp_path):
    """A checkpoint written before ``norm`` and ``initialization`` existed resumes as RMSNorm/transformers."""
    import train_induction

    release, old = tmp_path / "release", tmp_path / "old"
    assert train_induction.main(["--save_dir", str(release), "--fig_dir", str(release), *TINY_MAMBA,
                                 "--norm", "layernorm", "--initialization", "mamba_ssm", "--max_steps", "3"]) == 0
    saved = torch.load(release / "mamba_checkpoint.pt", weights_only=True)
    assert saved["model_config"]["norm"] == "layernorm" and saved["parameters"]["initialization"] == "mamba_ssm"
    assert isinstance(load_induction_model(release / "mamba.pt").backbone.norm_f, nn.LayerNorm)

    assert train_induction.main(["--save_dir", str(old), "--fig_dir", str(old), *TINY_MAMBA, "--max_steps", "3"]) == 0
    checkpoint = old / "mamba_checkpoint.pt"
    saved = torch.load(checkpoint, weights_only=True)
    for record in (saved["model_config"], saved["parameters"]):
        del record["norm"], record["initialization"]
    torch.save(saved, checkpoint)
    assert train_induction.main(["--save_dir", str(old), "--fig_dir", str(old), *TINY_MAMBA, "--max_steps", "6"]) == 0
    assert torch.load(checkpoint, weights_only=True)["step"] == 6


@pytest.mark.slow
def test_asking_another_norm_of_a_checkpoint_is_a_one_line_refusal(tmp_path, capsys):
    import train_induction
    from icl_cmr.cli.args import run_cli

    args = ["--save_dir", str(tmp_path), "--fig_dir", str(tmp_path), *TINY_MAMBA]
    assert train_induction.main([*args, "--max_steps", "3"]) == 0
    capsys.readouterr()
    assert run_cli(train_induction.main, [*args, "--max_steps", "6", "--norm", "layernorm"]) == 2
    err = capsys.readouterr().err
    assert "norm: rmsnorm there, layernorm now" in err and len(err.strip().splitlines()) == 1


def test_mamba_options_with_a_transformer_are_a_one_line_error(tmp_path, capsys):
    import train_induction
    from icl_cmr.cli.args import run_cli

    code = run_cli(train_induction.main, ["--save_dir", str(tmp_path), "--norm", "layernorm", "--max_steps", "3"])
    assert code == 2 and "--norm does not apply to --architecture transformer" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
