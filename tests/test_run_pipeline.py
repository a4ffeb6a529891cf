"""The main job, end to end on the bundled model, into temporary folders."""
from __future__ import annotations

import pytest

import run_pipeline
from icl_cmr.errors import InputError
from icl_cmr.io import load_pickle


def test_icl_positions_keep_the_papers_500_of_512_when_the_context_allows():
    assert run_pipeline.icl_positions(1024) == (512, 500)
    assert run_pipeline.icl_positions(512) == (512, 500)


def test_icl_positions_for_a_short_context_stay_inside_it():
    seq_len, late = run_pipeline.icl_positions(256)
    assert seq_len == 256 and 50 < late <= 256 - 2


def test_a_context_too_short_for_an_icl_score_is_refused():
    with pytest.raises(InputError, match="too short"):
        run_pipeline.icl_positions(55)


@pytest.mark.slow
def test_pipeline_runs_end_to_end_on_the_bundled_model(tmp_path, capsys):
    if not run_pipeline.BUNDLED_MODEL.is_dir():
        pytest.skip(f"bundled model not found at {run_pipeline.BUNDLED_MODEL}")
    code = run_pipeline.main(["--n-eval", "24", "--no-progress", "--scores-dir", str(tmp_path / "scores"),
                              "--figs-dir", str(tmp_path / "figs"), "--ablation-dir", str(tmp_path / "ablation")])
    assert code == 0
    out = capsys.readouterr().out
    assert "CMR-like heads (D < 0.5):" in out and "original vs ablated" in out
    result = load_pickle(tmp_path / "ablation" / "ablation_experiment_toy_lm.pkl")
    assert result["original_icl_score"].shape == (24,)
    assert (tmp_path / "scores" / "toy_lm" / "cmr_fit_toy_lm.pkl").is_file()
    assert (tmp_path / "figs" / "fit_attn_score" / "toy_lm" / "head_fit_L1.pdf").stat().st_size > 1000
    assert (tmp_path / "figs" / "ablation" / "ablation_experiment_toy_lm_icl_bars.pdf").is_file()
