"""The fitting scripts end to end on small hand-built score files and a small CMR grid."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import attn_over_size_xtra
import attn_over_time
import fit_attn_score
import plot_crp
import select_fit
import select_fit_xtra
import icl_cmr.experiments.fits
from icl_cmr.cli.args import run_cli, str2bool
from icl_cmr.errors import InputError
from icl_cmr.experiments.fits import SelectionSettings, run_selection
from icl_cmr.experiments.head_fits import (HeadFitSettings, head_fit_paths, output_name, queue_head_fit_outputs,
                                           run_head_fit)
from icl_cmr.files.grids import read_cmr_grid
from icl_cmr.files.outputs import PendingWrites
from icl_cmr.files.reading import load_pickle
from icl_cmr.fits.analyses import check_top_sizes

GRID_SHAPE = (2, 3, 2)
AXES = {"beta_enc": [0.5, 1.0], "beta_rec": [0.0, 0.5, 1.0], "gamma_ft": [0.0, 1.0]}
CHECKPOINTS = ["0", "10"]


def make_grid(folder):
    rng = np.random.default_rng(0)
    mean = rng.random(GRID_SHAPE + (17,)) + 0.05
    mean[..., 9] += np.arange(12).reshape(GRID_SHAPE)      # distinct lag +1 peaks
    mean /= mean.sum(axis=-1, keepdims=True)
    np.save(folder / "grid_avg.npy", mean)
    np.save(folder / "grid_sem.npy", mean / 20)
    (folder / "grid_avg.json").write_text(json.dumps(AXES))
    return mean


def copy_of_grid_point(mean, index, scale, offset):
    """A 16-lag attention CRP whose lags -5..+5 are an affine copy of a grid point (D = 0)."""
    c = mean[index][3:14] / mean[index][3:14].sum()
    crp = np.full(16, offset)
    crp[3:14] = scale * (c - c.min()) + offset
    return crp


def scores(mean, n_layers, n_heads, seed, exact, matching):
    rng = np.random.default_rng(seed)
    crp = rng.normal(size=(n_layers, n_heads, 16)) * 2
    for (layer, head), index in exact.items():
        crp[layer, head] = copy_of_grid_point(mean, index, scale=5.0 + layer, offset=-1.0)
    return {"head_scores": np.asarray(matching, dtype=np.float32), "copying_score": rng.uniform(-1, 1, (n_layers, n_heads)),
            "CRP_scores": crp, "CRP_scores_sem": np.full((n_layers, n_heads, 16), 0.1),
            "labels": np.array([[f"L{l}H{h}" for h in range(n_heads)] for l in range(n_layers)]),
            "unknown_extra_key": 1}


def dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


@pytest.fixture()
def workspace(tmp_path):
    mean = make_grid(tmp_path)
    root = tmp_path / "scores"
    # Model "toy-a": our layout, 2 x 3 heads; model "toy-b": the authors' induction_head_ layout, 3 x 2.
    matching_a = np.array([[0.10, np.nan, 0.30], [0.05, 0.60, 0.20]])
    matching_b = np.array([[0.50, 0.01], [np.nan, 0.40], [0.02, 0.03]])
    for k in (0, 10):
        dump(root / "toy-a" / f"all_scores_toy-a_cp{k}.pkl",
             scores(mean, 2, 3, k, {(1, 2): (1, 2, 1)}, matching_a * (k + 1) / 11))
        dump(root / "toy-b-deduped-v0" / f"induction_head_all_scores_toy_b_cp{k}.pkl",
             scores(mean, 3, 2, 100 + k, {(2, 0): (0, 1, 0)}, matching_b * (k + 1) / 11))
    dump(root / "toy-a" / "all_scores_toy-a.pkl", scores(mean, 2, 3, 7, {(0, 0): (1, 0, 1)}, matching_a))
    return {"tmp": tmp_path, "mean": mean, "root": root,
            "common": ["--scores-dir", str(root), "--crp-grid", str(tmp_path / "grid_avg.npy"),
                       "--figs-dir", str(tmp_path / "figs")]}


@pytest.mark.parametrize("text, expected", [("False", False), ("false", False), ("0", False), ("no", False),
                                            ("True", True), ("yes", True), ("1", True)])
def test_str2bool_reads_false_as_false(text, expected):
    assert str2bool(text) is expected


@pytest.mark.parametrize("argv, expected", [([], False), (["--use_saved"], True), (["--use_saved", "False"], False),
                                            (["--use_saved", "True"], True), (["-u", "false"], False)])
def test_use_saved_flag(argv, expected):
    assert select_fit.build_parser().parse_args(argv).use_saved is expected
    assert select_fit_xtra.build_parser().parse_args(argv).use_saved is expected


@pytest.mark.slow
def test_fit_attn_score_outputs(workspace):
    out = workspace["tmp"] / "figs" / "fit_attn_score" / "toy"
    assert fit_attn_score.main(["--all_head_scores", "toy-a/all_scores_toy-a.pkl", "--save_dir", "toy",
                                "--fits-dir", str(workspace["tmp"] / "fits")] + workspace["common"]) == 0
    result = load_pickle(workspace["tmp"] / "fits" / "toy" / "cmr_fit_toy.pkl")
    assert {"fitted_MSE", "fitted_params", "fitted_scale_factors", "metadata"} <= set(result)
    assert result["fitted_MSE"].shape == (2, 3) and result["fitted_params"].shape == (2, 3, 3)
    # Head L0H0 is an exact copy of grid point (1, 0, 1) = (1.0, 0.0, 1.0) at scale 5.
    assert result["fitted_MSE"][0, 0] == pytest.approx(0.0, abs=1e-20)
    np.testing.assert_array_equal(result["fitted_params"][0, 0], [1.0, 0.0, 1.0])
    assert result["fitted_scale_factors"][0, 0] == pytest.approx(5.0)
    table = pd.read_csv(workspace["tmp"] / "fits" / "toy" / "head_fits_toy.csv")
    assert len(table) == 6 and list(table["label"][:2]) == ["L0H0", "L0H1"]
    assert table.loc[0, "beta_enc"] == 1.0 and bool(table.loc[0, "cmr_like"])
    for name in ("head_fit_L0.pdf", "head_fit_L1.pdf", "score_against_fit.pdf", "score_against_scale_factor.pdf",
                 "fit_against_layer.pdf"):
        assert (out / name).stat().st_size > 1000


def test_fit_attn_score_no_figures_writes_the_fits_and_no_pdf(workspace):
    assert fit_attn_score.main(["--all_head_scores", "toy-a/all_scores_toy-a.pkl", "--save_dir", "toy", "--no-figures",
                                "--fits-dir", str(workspace["tmp"] / "fits")] + workspace["common"]) == 0
    assert (workspace["tmp"] / "fits" / "toy" / "cmr_fit_toy.pkl").is_file()
    assert not (workspace["tmp"] / "figs").exists()


def test_layer_fit_pages_draw_every_head_on_one_reused_figure():
    from icl_cmr.figures.fits import LayerFitPages

    lags = np.arange(-5, 6)
    rng = np.random.default_rng(0)
    pages = LayerFitPages(n_heads=5, lags=lags)
    figure = pages.figure
    for page in range(2):
        attn = rng.normal(size=(5, lags.size))
        fitted = attn + 0.1
        fitted[4] = np.nan                                              # a head without a fit
        pdf = pages.render([f"L{page}H{h}" for h in range(5)], attn, np.full_like(attn, 0.1), fitted,
                           np.array([0.1, 0.2, 0.3, 0.4, np.nan]), np.full((5, 3), 0.5), title=f"layer {page}")
        assert pdf.startswith(b"%PDF")
        assert pages.figure is figure                                   # the same figure, new data
        x, y = pages._attn.get_data()
        assert np.isfinite(y).sum() == 5 * lags.size                    # every head's every lag
        assert np.isfinite(pages._fit.get_data()[1]).sum() == 4 * lags.size
        assert len(pages._errors.get_segments()) == 5 * lags.size
        # Each panel's curve stays inside its own box.
        for h in range(5):
            inside = y[h * (lags.size + 1):(h + 1) * (lags.size + 1) - 1]
            assert (inside >= pages._y0[h] - 1e-9).all() and (inside <= pages._y0[h] + pages._panel_h + 1e-9).all()


def test_missing_score_file_is_one_line_and_exit_2(workspace, capsys):
    code = run_cli(fit_attn_score.main, ["--model", "toy-c"] + workspace["common"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: no head-score file for model 'toy-c'") and "all_scores_<toy-c>.pkl" in err[0]


@pytest.mark.slow
def test_over_size_xtra_reads_both_layouts(workspace):
    # toy-b exists only in the authors' induction_head_ layout and only as checkpoints: cp10 is not
    # the final 142, so ask for checkpoint 10 explicitly.
    assert attn_over_size_xtra.main(["--models", "toy-a", "toy-b", "--checkpoint", "10"] + workspace["common"]) == 0
    table = pd.read_csv(workspace["tmp"] / "figs" / "attn_over_size_xtra" / "layer_summary.csv")
    assert sorted(set(table["model"])) == ["toy-a", "toy-b"]
    assert list(table.loc[table["model"] == "toy-b", "relative_position"]) == pytest.approx([0, 100 / 3, 200 / 3])


@pytest.mark.slow
def test_over_time(workspace):
    assert attn_over_time.main(["--model_name", "toy-b", "--checkpoints", *CHECKPOINTS] + workspace["common"]) == 0
    out = workspace["tmp"] / "figs" / "attn_over_time" / "toy-b"
    table = pd.read_csv(out / "layer_over_time.csv")
    assert len(table) == 2 * 2 * 3                     # thresholds x checkpoints x layers
    # L2H0 is an exact copy at both checkpoints: layer 2 has at least 1 of 2 heads CMR-like.
    assert (table.loc[(table["layer"] == 2), "percent_D_below"] >= 50).all()
    for name in ("fit_over_time_thres0.5.pdf", "params_over_time_thres0.5.pdf"):
        assert (out / name).is_file()


@pytest.mark.slow
def test_select_fit_selects_by_each_criterion_with_own_indices(workspace):
    top_dir = workspace["tmp"] / "top"
    argv = ["--models", "toy-a", "toy-b", "--n_top", "1", "3", "--checkpoints", *CHECKPOINTS,
            "--top-heads-dir", str(top_dir), "--use_saved", "False"] + workspace["common"]
    assert select_fit.main(argv) == 0
    induction = load_pickle(top_dir / "cmr_top_head_score_pythia.pkl")
    cmr = load_pickle(top_dir / "cmr_top_crp_fit_pythia.pkl")
    # Final checkpoint (cp10) matching scores are matching * 11/11: highest finite ones across both
    # models are toy-a L1H1 0.60, toy-b L0H0 0.50, toy-b L1H1 0.40 (NaNs never picked).
    assert list(induction["top3"]["labels"]) == ["toy-a-L1H1", "toy-b-L0H0", "toy-b-L1H1"]
    assert list(induction["top1"]["labels"]) == ["toy-a-L1H1"]
    np.testing.assert_allclose(induction["top3"]["head_scores"], [0.6, 0.5, 0.4], rtol=1e-6)
    # Lowest CMR distance: the two exact copies (D = 0) come first, in pool order.
    assert list(cmr["top3"]["labels"][:2]) == ["toy-a-L1H2", "toy-b-L2H0"]
    np.testing.assert_allclose(cmr["top3"]["MSE"][:2], 0.0, atol=1e-20)
    np.testing.assert_array_equal(cmr["top3"]["params"][1], [0.5, 0.5, 0.0])   # grid point (0, 1, 0)
    assert cmr["top3"]["MSE_over_training"].shape == (3, 2)
    # Values come from each head's own model: toy-b L1H1's matching score over training.
    toy_b = [load_pickle(workspace["root"] / "toy-b-deduped-v0" / f"induction_head_all_scores_toy_b_cp{k}.pkl")
             for k in (0, 10)]
    np.testing.assert_allclose(induction["top3"]["head_scores_over_training"][2],
                               [float(f["head_scores"][1, 1]) for f in toy_b])
    assert (workspace["tmp"] / "figs" / "select_fit" / "selection_over_training.pdf").is_file()

    # Redraw from the saved selections without any score file or grid.
    redraw = ["--use_saved", "True", "--top-heads-dir", str(top_dir), "--figs-dir", str(workspace["tmp"] / "again"),
              "--crp-grid", str(workspace["tmp"] / "no-grid.npy")]
    assert select_fit.main(redraw) == 0
    assert (workspace["tmp"] / "again" / "select_fit" / "selection_vs_human_saved_pythia.pdf").is_file()


@pytest.mark.slow
def test_select_fit_xtra_per_model(workspace):
    top_dir = workspace["tmp"] / "top"
    assert select_fit_xtra.main(["--models", "toy-a", "--n_top", "2", "--top-heads-dir", str(top_dir)]
                                + workspace["common"]) == 0
    induction = load_pickle(top_dir / "cmr_top_head_score_toy-a.pkl")
    assert list(induction["top2"]["labels"]) == ["toy-a-L1H1", "toy-a-L0H2"]   # 0.60, 0.30; NaN skipped
    assert select_fit_xtra.main(["--models", "toy-a", "--use_saved", "--top-heads-dir", str(top_dir),
                                 "--figs-dir", str(workspace["tmp"] / "again")]) == 0
    assert (workspace["tmp"] / "again" / "select_fit_xtra" / "selection_final_cmr_saved.pdf").is_file()


def test_use_saved_without_files_is_an_input_error(workspace, capsys):
    figs = workspace["tmp"] / "figs-none"
    code = run_cli(select_fit.main, ["--use_saved", "--top-heads-dir", str(workspace["tmp"] / "empty"),
                                     "--figs-dir", str(figs)])
    assert code == 2 and "cmr_top_crp_fit_pythia.pkl" in capsys.readouterr().err
    assert not figs.exists()                            # nothing written on bad input


@pytest.mark.slow
def test_plot_crp(workspace):
    rng = np.random.default_rng(0)
    mean = rng.random((20, 21, 11, 17))
    np.save(workspace["tmp"] / "cmr_crp_avg_20_11.npy", mean / mean.sum(axis=-1, keepdims=True))
    assert plot_crp.main(["--crp-grid", str(workspace["tmp"] / "cmr_crp_avg_20_11.npy"),
                          "--figs-dir", str(workspace["tmp"] / "figs")]) == 0
    out = workspace["tmp"] / "figs" / "plot_crp"
    table = pd.read_csv(out / "human_lag_crp.csv")
    assert list(table["lag"]) == list(range(-5, 6))
    assert (out / "reference_crps.pdf").is_file()


# ----------------------------------------------------------------------------- inputs that cannot be fitted

def _run(main, argv, capsys):
    """Exit code, stderr lines starting ``error:`` / ``WARNING:``, and whether a traceback was printed."""
    code = run_cli(main, argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    return (code, [l for l in lines if l.startswith("error:")], [l for l in lines if l.startswith("WARNING:")],
            "Traceback" in err)


def _files_under(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


UNFITTABLE = {"all_nan": np.nan, "infinite": np.inf, "constant": 0.25}


def _unfittable_scores(workspace, kind, model="bad", checkpoint=None):
    """A score file (2 x 3 heads) whose every attention CRP is NaN, infinite or constant."""
    data = scores(workspace["mean"], 2, 3, 0, {}, np.full((2, 3), 0.2))
    crp = np.full((2, 3, 16), UNFITTABLE[kind])
    if kind == "infinite":
        crp[..., ::2] = 1.0   # finite elsewhere: one inf per lag pair is enough to make D undefined
    data["CRP_scores"] = crp
    suffix = "" if checkpoint is None else f"_cp{checkpoint}"
    path = workspace["root"] / model / f"all_scores_{model}{suffix}.pkl"
    dump(path, data)
    return path


@pytest.mark.parametrize("kind", sorted(UNFITTABLE))
def test_fit_attn_score_refuses_a_file_where_no_head_can_be_fitted(workspace, capsys, kind):
    path = _unfittable_scores(workspace, kind)
    fits = workspace["tmp"] / "fits"
    code, errors, _, traceback = _run(fit_attn_score.main, ["--model", "bad", "--fits-dir", str(fits)]
                                      + workspace["common"], capsys)
    assert code == 2 and not traceback and len(errors) == 1 and str(path) in errors[0]
    # infinite values are refused already by the score-file reader, NaN and constant CRPs by the fit
    assert ("holds inf" if kind == "infinite" else "none of its 6 heads can be fitted") in errors[0]
    assert _files_under(fits) == [] and _files_under(workspace["tmp"] / "figs") == []


@pytest.mark.slow
def test_fit_attn_score_warns_with_the_count_when_some_heads_cannot_be_fitted(workspace, capsys):
    data = scores(workspace["mean"], 2, 3, 0, {(1, 2): (1, 2, 1)}, np.full((2, 3), 0.2))
    data["CRP_scores"][0, 0] = np.nan
    data["CRP_scores"][0, 1] = 3.0                      # constant
    dump(workspace["root"] / "part" / "all_scores_part.pkl", data)
    code, errors, warnings, _ = _run(fit_attn_score.main, ["--model", "part", "--fits-dir",
                                                            str(workspace["tmp"] / "fits")] + workspace["common"], capsys)
    assert code == 0 and errors == []
    assert len(warnings) == 1 and "only 4 of 6 heads could be fitted" in warnings[0]
    assert "1 with a NaN or infinite value, 1 constant" in warnings[0]
    fit = load_pickle(workspace["tmp"] / "fits" / "part" / "cmr_fit_part.pkl")
    assert np.isnan(fit["fitted_MSE"][0, :2]).all() and np.isfinite(fit["fitted_MSE"][1]).all()


def test_fit_attn_score_on_a_file_with_zero_heads_writes_nothing(workspace, capsys):
    data = scores(workspace["mean"], 2, 3, 0, {}, np.zeros((2, 3)))
    data.update(head_scores=np.zeros((0, 3)), copying_score=np.zeros((0, 3)), CRP_scores=np.zeros((0, 3, 16)),
                CRP_scores_sem=np.zeros((0, 3, 16)), labels=np.zeros((0, 3), dtype=str))
    path = workspace["root"] / "empty" / "all_scores_empty.pkl"
    dump(path, data)
    fits = workspace["tmp"] / "fits"
    code, errors, _, traceback = _run(fit_attn_score.main, ["--model", "empty", "--fits-dir", str(fits)]
                                      + workspace["common"], capsys)
    # refused by the score-file reader ("n_layers is 0"); fitting.check_fitted would say "holds no heads"
    assert code == 2 and not traceback and len(errors) == 1 and str(path) in errors[0]
    assert _files_under(fits) == [] and _files_under(workspace["tmp"] / "figs") == []


def test_fit_attn_score_checks_the_figure_folder_before_fitting(workspace, capsys):
    blocker = workspace["tmp"] / "blocker"
    blocker.write_text("x")
    fits = workspace["tmp"] / "fits"
    argv = ["--model", "toy-a", "--fits-dir", str(fits), "--scores-dir", str(workspace["root"]),
            "--crp-grid", str(workspace["tmp"] / "grid_avg.npy"), "--figs-dir", str(blocker / "figs")]
    code, errors, _, _ = _run(fit_attn_score.main, argv, capsys)
    assert code == 2 and errors == [f"error: output folder --figs-dir {blocker / 'figs' / 'fit_attn_score' / 'toy-a'} "
                                    f"cannot be made: {blocker} is a file"]
    assert _files_under(fits) == []


def test_attn_over_size_refuses_a_model_whose_heads_cannot_be_fitted(workspace, capsys):
    path = _unfittable_scores(workspace, "all_nan", model="qwen-bad")
    code, errors, _, traceback = _run(attn_over_size_xtra.main, ["--models", "toy-a", "qwen-bad"]
                                      + workspace["common"], capsys)
    assert code == 2 and not traceback and len(errors) == 1 and str(path) in errors[0]
    assert _files_under(workspace["tmp"] / "figs") == []


def test_attn_over_time_refuses_a_checkpoint_whose_heads_cannot_be_fitted(workspace, capsys):
    bad = _unfittable_scores(workspace, "constant", model="toy-c", checkpoint=10)
    good = scores(workspace["mean"], 2, 3, 0, {(0, 0): (1, 0, 1)}, np.full((2, 3), 0.2))
    dump(workspace["root"] / "toy-c" / "all_scores_toy-c_cp0.pkl", good)
    code, errors, _, traceback = _run(attn_over_time.main, ["--model_name", "toy-c", "--checkpoints", *CHECKPOINTS]
                                      + workspace["common"], capsys)
    assert code == 2 and not traceback and len(errors) == 1 and str(bad) in errors[0]
    assert _files_under(workspace["tmp"] / "figs") == []


def test_select_fit_xtra_on_all_nan_fits_names_the_file_instead_of_stopping(workspace, capsys):
    path = _unfittable_scores(workspace, "all_nan", model="nan-model")
    top_dir = workspace["tmp"] / "top"
    code, errors, _, traceback = _run(select_fit_xtra.main, ["--models", "nan-model", "--n_top", "2",
                                                             "--top-heads-dir", str(top_dir)] + workspace["common"],
                                      capsys)
    assert code == 2 and not traceback and len(errors) == 1
    assert str(path) in errors[0] and "can be fitted" in errors[0]
    assert _files_under(top_dir) == [] and _files_under(workspace["tmp"] / "figs") == []


def test_select_fit_with_no_finite_matching_score_says_what_was_empty(workspace, capsys):
    for k in (0, 10):
        data = scores(workspace["mean"], 2, 3, k, {(0, 1): (1, 2, 1)}, np.full((2, 3), np.nan))
        dump(workspace["root"] / "nomatch" / f"all_scores_nomatch_cp{k}.pkl", data)
    top_dir = workspace["tmp"] / "top"
    code, errors, _, traceback = _run(select_fit.main, ["--models", "nomatch", "--n_top", "2", "--checkpoints",
                                                        *CHECKPOINTS, "--top-heads-dir", str(top_dir)]
                                      + workspace["common"], capsys)
    assert code == 2 and not traceback and len(errors) == 1
    assert "nothing to select" in errors[0] and "finite matching score" in errors[0] and "nomatch" in errors[0]
    assert _files_under(top_dir) == [] and _files_under(workspace["tmp"] / "figs") == []


@pytest.mark.slow
def test_use_saved_figures_never_overwrite_a_fitting_runs_figures(workspace):
    top_dir = workspace["tmp"] / "top"
    assert select_fit_xtra.main(["--models", "toy-a", "--n_top", "2", "--top-heads-dir", str(top_dir)]
                                + workspace["common"]) == 0
    out = workspace["tmp"] / "figs" / "select_fit_xtra"
    fitted = {p.name: p.read_bytes() for p in out.iterdir()}
    assert select_fit_xtra.main(["--models", "toy-a", "--use_saved", "--top-heads-dir", str(top_dir),
                                 "--figs-dir", str(workspace["tmp"] / "figs")]) == 0
    assert {name: (out / name).read_bytes() for name in fitted} == fitted
    assert sorted(p.name for p in out.iterdir() if p.name not in fitted) == [
        "selection_final_cmr_saved.pdf", "selection_final_induction_saved.pdf", "selection_vs_human_saved.pdf"]


def test_select_fit_refuses_more_top_heads_than_the_models_pool_before_fitting(workspace, capsys, monkeypatch):
    monkeypatch.setattr(icl_cmr.experiments.fits, "fit_over_training", lambda *a: pytest.fail("fitted before the check"))
    top_dir = workspace["tmp"] / "top"
    code, errors, _, traceback = _run(select_fit.main, ["--models", "toy-a", "toy-b", "--n_top", "3", "100000",
                                                        "--checkpoints", *CHECKPOINTS, "--top-heads-dir", str(top_dir)]
                                      + workspace["common"], capsys)
    assert code == 2 and not traceback
    assert errors == ["error: --n_top 100000 is more than the 12 heads pooled over the models (toy-a 6, toy-b 6); "
                      "give sizes up to 12"]
    assert _files_under(top_dir) == [] and _files_under(workspace["tmp"] / "figs") == []


def test_select_fit_xtra_refuses_more_top_heads_than_a_model_has(workspace, capsys):
    top_dir = workspace["tmp"] / "top"
    code, errors, _, traceback = _run(select_fit_xtra.main, ["--models", "toy-a", "--n_top", "7",
                                                             "--top-heads-dir", str(top_dir)] + workspace["common"],
                                      capsys)
    assert code == 2 and not traceback
    assert errors == ["error: --n_top 7 is more than the heads of a model (toy-a has 6); give sizes up to 6 or leave "
                      "that model out"]


def test_fit_attn_score_says_when_the_score_file_is_a_folder(workspace, capsys):
    folder = workspace["root"] / "toy-a"
    code, errors, _, traceback = _run(fit_attn_score.main, ["--all_head_scores", str(folder), "--save_dir", "toy"]
                                      + workspace["common"], capsys)
    assert code == 2 and not traceback and len(errors) == 1
    assert errors[0].startswith(f"error: --all_head_scores {folder} is a folder; give a head-score file in it")


def test_fig4_on_a_coarse_grid_warns_names_the_nearest_points_and_draws_each_once(workspace, caplog):
    import logging

    import matplotlib.pyplot as plt

    from icl_cmr.figures.fit_sets import reference_crp_figure
    from icl_cmr.files.grids import read_cmr_grid
    from icl_cmr.humans.recall import HumanLagCrp

    grid = read_cmr_grid(workspace["tmp"] / "grid_avg.npy")   # beta_enc 0.5, 1; beta_rec 0, 0.5, 1; gamma 0, 1
    lags = np.arange(-5, 6)
    human = HumanLagCrp(lags=lags, mean=np.where(lags == 0, np.nan, 0.1), sem=np.full(11, 0.01), n_subjects=3,
                        dataset="peers_notask")
    with caplog.at_level(logging.WARNING):
        figure, values = reference_crp_figure(grid, human)
    titles = [ax.get_title() for ax in figure.axes[1:]]
    plt.close(figure)
    # (1, 1, 0) is on the grid; (0.7, 0.7, 0) -> (0.5, 0.5, 0); (0.7, 0.7, 0.5) -> the same point (gamma tie: 0);
    # (0.7, 0.7, 1) -> (0.5, 0.5, 1)
    assert sorted(values) == [(0.5, 0.5, 0.0), (0.5, 0.5, 1.0), (1.0, 1.0, 0.0)]
    assert len(titles) == 3 and len(set(titles)) == 3
    assert [("nearest to" in title) for title in titles] == [False, True, True]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == ["the grid has no point (0.7, 0.7, 0) of [LI24] Fig 4; drawing the nearest grid point, "
                        "(0.5, 0.5, 0)",
                        "the grid has no point (0.7, 0.7, 0.5); its nearest, (0.5, 0.5, 0), is already drawn for "
                        "(0.7, 0.7, 0), so it is drawn once",
                        "the grid has no point (0.7, 0.7, 1) of [LI24] Fig 4; drawing the nearest grid point, "
                        "(0.5, 0.5, 1)"]


# ----------------------------------------------------------------------------- the engine, called from Python

def test_top_size_error_of_the_engine_names_the_parameter():
    with pytest.raises(InputError) as raised:
        check_top_sizes([2, 7], {"toy-a": 6, "toy-b": 9}, pooled=False)
    assert raised.value.parameters == ("n_top",)
    assert str(raised.value) == ("`n_top` 7 is more than the heads of a model (toy-a has 6); give sizes up to 6 or "
                                 "leave that model out")
    with pytest.raises(InputError, match=r"^`n_top` 16 is more than the 15 heads pooled over the models \(toy-a 6, "
                                         r"toy-b 9\)") as raised:
        check_top_sizes([16], {"toy-a": 6, "toy-b": 9}, pooled=True)
    assert raised.value.parameters == ("n_top",)


@pytest.mark.parametrize("per_model", [False, True])
def test_use_saved_without_files_names_the_parameter(tmp_path, per_model):
    settings = SelectionSettings(models=("toy-a",), use_saved=True, per_model=per_model, top_heads_dir=tmp_path)
    with pytest.raises(InputError, match="^`use_saved`: no saved selections") as raised:
        run_selection(settings)
    assert raised.value.parameters == ("use_saved",)


def test_output_name_from_a_folderless_path_names_save_dir():
    with pytest.raises(InputError, match="give `save_dir` NAME") as raised:
        output_name(HeadFitSettings(scores_file=Path("/all_scores_x.pkl")))
    assert raised.value.parameters == ("save_dir",)
    assert output_name(HeadFitSettings(scores_file=Path("/a/toy-a/all_scores_x.pkl"))) == "toy-a"
    assert output_name(HeadFitSettings(model="m", save_dir="s")) == "s"


def test_head_fit_in_process_writes_what_the_script_writes(workspace):
    """The API run_pipeline calls in-process: settings -> run_head_fit -> queue_head_fit_outputs."""
    score_file = workspace["root"] / "toy-a" / "all_scores_toy-a.pkl"
    assert fit_attn_score.main(["--all_head_scores", str(score_file), "--save_dir", "toy", "--no-figures",
                                "--fits-dir", str(workspace["tmp"] / "script")] + workspace["common"]) == 0
    settings = HeadFitSettings(scores_file=score_file, save_dir="toy")
    result = run_head_fit(settings, read_cmr_grid(workspace["tmp"] / "grid_avg.npy"))
    paths = head_fit_paths(output_name(settings), workspace["tmp"] / "engine", workspace["tmp"] / "figs-engine")
    pending = PendingWrites()
    queue_head_fit_outputs(pending, result, paths, figures=False)
    assert pending.commit() == [paths.fit, paths.table]
    assert paths.fit == workspace["tmp"] / "engine" / "toy" / "cmr_fit_toy.pkl"
    ours, script = load_pickle(paths.fit), load_pickle(workspace["tmp"] / "script" / "toy" / "cmr_fit_toy.pkl")
    # L0H0 is an exact copy of grid point (1, 0, 1) = (1.0, 0.0, 1.0) at scale 5.
    np.testing.assert_array_equal(ours["fitted_params"][0, 0], [1.0, 0.0, 1.0])
    assert ours["fitted_scale_factors"][0, 0] == pytest.approx(5.0)
    for key in ("fitted_MSE", "fitted_params", "fitted_scale_factors", "labels", "head_scores"):
        np.testing.assert_array_equal(ours[key], script[key])
    assert ours["metadata"]["producer"] == "fit_attn_score.py"
    assert paths.table.read_text() == (workspace["tmp"] / "script" / "toy" / "head_fits_toy.csv").read_text()
    assert not paths.figures.exists()
