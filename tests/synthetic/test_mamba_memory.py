"""How long a Mamba's memory lasts: step sizes on fillers and at the value (issue 23)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from icl_cmr.errors import InputError
from icl_cmr.synthetic import task
from icl_cmr.synthetic.mamba import InductionMambaConfig, build_mamba
from icl_cmr.synthetic.mamba_memory import channel_memory


def _tiny_mamba(seed=0):
    torch.manual_seed(seed)
    return build_mamba(InductionMambaConfig(d_model=16, d_state=4)).eval()


def test_step_sizes_of_the_first_layer_are_softplus_of_its_projections():
    model = _tiny_mamba()
    tokens = torch.from_numpy(task.sample_induction_batch(np.random.default_rng(1), 2, 20)[0])
    mixer, block = model.backbone.layers[0].mixer, model.backbone.layers[0]
    with torch.no_grad():
        x = mixer.in_proj(block.norm(model.backbone.embeddings(tokens))).chunk(2, dim=-1)[0]      # [B, L, d_inner]
        x = F.silu(F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), mixer.conv1d.weight, mixer.conv1d.bias,
                            groups=x.shape[-1])).transpose(1, 2)
        expected = F.softplus(mixer.dt_proj(mixer.x_proj(x)[..., :mixer.time_step_rank]))
    steps = model.step_sizes(tokens)
    assert len(steps) == 2 and steps[1].shape == (2, 20, 32)
    torch.testing.assert_close(steps[0], expected, atol=1e-6, rtol=0)


def test_channel_statistics_on_hand_made_step_sizes(monkeypatch):
    """One channel writes at the value (step 2.0) and keeps (1e-3) except for one large step (0.5) on a filler."""
    model = _tiny_mamba()
    batch, length, first = 2, 10, np.array([2, 5])
    steps = [torch.full((batch, length, 32), 0.01), torch.full((batch, length, 32), 0.01)]
    steps[1][:, :, 7] = 1e-3
    steps[1][np.arange(batch), first + 1, 7] = 2.0                 # the value's position: first trigger + 1
    steps[1][0, 8, 7] = 0.5                                        # one rare large step on a filler
    steps[1][:, -1, 7] = 9.0                                       # the query is not a filler
    steps[1][np.arange(batch), first, 7] = 9.0                     # nor the first trigger
    monkeypatch.setattr(model, "step_sizes", lambda tokens: steps)
    with torch.no_grad():
        model.backbone.layers[1].mixer.A_log[7] = torch.log(torch.tensor([0.5, 1.0, 2.0, 3.0]))
    memory = channel_memory(model, torch.zeros(batch, length, dtype=torch.long), first)
    fillers = np.full(2 * 7, 1e-3)
    fillers[0] = 0.5
    assert memory.target_step.shape == (2, 32)
    assert memory.filler_step_mean[1, 7] == pytest.approx(fillers.mean())
    assert memory.filler_step_median[1, 7] == pytest.approx(1e-3)
    assert memory.slowest_rate[1, 7] == pytest.approx(0.5)
    assert memory.horizon[1, 7] == pytest.approx(1 / (0.5 * fillers.mean()))
    channels = memory.memory_channels()
    assert [(row["layer"], row["channel"]) for row in channels] == [(1, 7)]          # every other one: ratio 1
    assert channels[0]["selectivity"] == pytest.approx(2.0 / fillers.mean())
    assert channels[0]["median_horizon"] == pytest.approx(1 / (0.5 * 1e-3))
    every = [row["horizon"] for row in memory.memory_channels(min_selectivity=1.0)]   # every channel: ratio >= 1
    assert len(every) == 2 * 32 and every == sorted(every, reverse=True)             # the longest first
    with pytest.raises(InputError, match="min_selectivity"):
        memory.memory_channels(min_selectivity=0)


def test_trigger_positions_outside_the_sequence_are_refused():
    model = _tiny_mamba()
    with pytest.raises(InputError, match="trigger_positions"):
        channel_memory(model, torch.zeros(2, 10, dtype=torch.long), np.array([1, 8]))
    with pytest.raises(InputError, match="trigger_positions"):
        channel_memory(model, torch.zeros(2, 10, dtype=torch.long), np.array([1]))


def test_memory_figure_draws_every_channel_and_the_longest():
    import matplotlib

    matplotlib.use("Agg")
    from icl_cmr.figures.synthetic import plot_memory_horizon_vs_step

    rows = [{"step": step, "layer": 1, "channel": c, "horizon": h * step, "median_horizon": 10 * h * step}
            for step in (1000, 2000) for c, h in ((3, 1.0), (5, 2.0))]
    fig = plot_memory_horizon_vs_step(rows, [256, 4096], "run")
    ax = fig.axes[0]
    longest = [line for line in ax.get_lines() if line.get_label() == "the longest"][0]
    assert list(longest.get_ydata()) == [2000.0, 4000.0]
    assert ax.collections[0].get_offsets().shape == (4, 2) and ax.get_yscale() == "log"
