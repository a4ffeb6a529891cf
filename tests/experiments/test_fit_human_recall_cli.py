"""fit_human_recall.py and est_cmr_crp.py --quantity conditional end to end (issue 16), and the experiment
behind the script (icl_cmr.experiments.human_recall) as a notebook calls it."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

import est_cmr_crp
import fit_human_recall
from icl_cmr.cli.args import run_cli
from icl_cmr.errors import InputError
from icl_cmr.experiments.human_recall import HumanRecallSettings, check_human_recall, run_human_recall
from icl_cmr.figures.humans import page_of_units
from icl_cmr.files.reading import load_pickle
from icl_cmr.files.results import read_cmr_fit

GRID_FLAGS = ["--n_beta", "4", "--n_gamma", "3", "--n_trials", "40", "--n_items", "40", "--max_draws", "15",
              "--n_start", "5", "--seed", "3", "--workers", "1", "--no_progress"]


def run(main, argv, capsys):
    """A script's main as ``python src/<script>.py`` runs it: exit code, stdout, stderr."""
    try:
        code = run_cli(main, argv)
    except SystemExit as exit_:  # argparse rejects a flag
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    """Both grids of one small simulation: the lag histogram (heads) and the conditional lag-CRP (people)."""
    folder = tmp_path_factory.mktemp("grids")
    for extra in ([], ["--quantity", "conditional"]):
        assert run_cli(est_cmr_crp.main, ["--save_dir", str(folder), *GRID_FLAGS, *extra]) == 0
    return {"people": folder / "cmr_cond_crp_avg_4_3.npy", "heads": folder / "cmr_crp_avg_4_3.npy",
            "folder": folder}


@pytest.mark.slow
def test_conditional_grid_files_and_metadata(grids):
    folder = grids["folder"]
    mean = np.load(folder / "cmr_cond_crp_avg_4_3.npy")
    meta = json.loads((folder / "cmr_cond_crp_4_3.json").read_text())
    assert mean.shape == (4, 5, 3, 17) and np.isnan(mean[..., 8]).all()
    assert meta["parameters"]["quantity"] == "conditional" and meta["parameters"]["method"] == "simulate"
    assert "jackknife" in meta["description"]
    assert not any(p.name.endswith(".partial") for p in folder.iterdir())


def test_conditional_grid_refuses_a_method_other_than_simulation(tmp_path, capsys):
    code, out, err = run(est_cmr_crp.main, ["--save_dir", str(tmp_path / "g"), "--quantity", "conditional",
                                            "--method", "exact", *GRID_FLAGS], capsys)
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert "simulate" in err and not (tmp_path / "g").exists()


def fit_flags(grids, tmp_path, *extra):
    return ["--crp-grid", str(grids["people"]), "--head-grid", str(grids["heads"]), "--out-dir",
            str(tmp_path / "out"), "--figs-dir", str(tmp_path / "figs"), "--n-bootstrap", "300", *extra]


@pytest.fixture(scope="module")
def morton_run(grids, tmp_path_factory):
    """One run on Morton 2013 (40 people) against the bundled model's heads, shared by the tests below."""
    folder = tmp_path_factory.mktemp("morton")
    assert run_cli(fit_human_recall.main, fit_flags(grids, folder, "--dataset", "morton2013")) == 0
    return folder


@pytest.mark.slow
def test_people_table_has_one_fitted_row_per_person(morton_run):
    people = pd.read_csv(morton_run / "out" / "morton2013_fits.csv")
    assert len(people) == 40 and people["cmr_distance"].notna().all()
    assert set(people["beta_enc"]) <= {0.25, 0.5, 0.75, 1.0}
    assert {"crp_lag+1", "fitted_crp_lag-1", "inverse_temperature", "n_lists",
            "gamma_ft_near_high"} <= set(people.columns)
    assert "crp_lag+0" not in people.columns                      # lag 0 is never a person's transition
    assert (people["n_lists"] == 48).all()


def test_fit_pickle_is_in_the_fit_format_with_metadata(morton_run):
    people = pd.read_csv(morton_run / "out" / "morton2013_fits.csv")
    fit = read_cmr_fit(morton_run / "out" / "morton2013_fits.pkl")   # [1, U], as the authors' fits of a head set
    assert fit.distance.shape == (1, 40)
    np.testing.assert_allclose(fit.distance[0], people["cmr_distance"])
    record = load_pickle(morton_run / "out" / "morton2013_fits.pkl")
    assert record["metadata"]["parameters"]["dataset"] == "morton2013"
    assert record["crp"].shape == (40, 17)
    meta = json.loads((morton_run / "out" / "morton2013_metadata.json").read_text())
    assert set(meta["files"]) == {"morton2013_fits.csv", "morton2013_fits.pkl", "morton2013_head_fits.csv",
                                  "morton2013_vs_heads.csv"}


def test_statistics_compare_cmr_like_people_with_cmr_like_heads(morton_run):
    people = pd.read_csv(morton_run / "out" / "morton2013_fits.csv")
    heads = pd.read_csv(morton_run / "out" / "morton2013_head_fits.csv")
    assert len(heads) == 8 and set(heads["model"]) == {"toy_lm"}
    stats = pd.read_csv(morton_run / "out" / "morton2013_vs_heads.csv")
    assert stats["quantity"].tolist() == ["cmr_distance", "beta_enc", "beta_rec", "gamma_ft"]
    assert (stats["n_people"] == people["cmr_like"].sum()).all()
    assert (stats["n_heads"] == heads["cmr_like"].sum()).all()
    like = people[people["cmr_like"]]
    row = stats.set_index("quantity").loc["beta_enc"]
    assert row["median_people"] == pytest.approx(like["beta_enc"].median())


def test_figures_are_written(morton_run):
    figs = morton_run / "figs" / "humans_vs_heads"
    assert (figs / "morton2013_parameters.pdf").stat().st_size > 0
    assert (figs / "morton2013_crp_fits.pdf").stat().st_size > 0


@pytest.mark.slow
def test_by_session_writes_its_own_files_without_statistics(grids, tmp_path, capsys):
    code, _, err = run(fit_human_recall.main, fit_flags(grids, tmp_path, "--dataset", "morton2013", "--by",
                                                        "session", "--models"), capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "out" / "morton2013_session_fits.csv")
    assert len(table) == 120 and set(table["session"]) == {1, 2, 3}
    assert not (tmp_path / "out" / "morton2013_session_vs_heads.csv").exists()


@pytest.mark.parametrize("bad", [
    ["--dataset", "murdock"], ["--by", "list"], ["--threshold", "0"], ["--n-bootstrap", "0"], ["--seed", "-2"],
    ["--models", "no-such-model"], ["--by", "all", "--training-models", "pythia-70m"],
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(grids, tmp_path, capsys, bad):
    code, out, err = run(fit_human_recall.main, fit_flags(grids, tmp_path, *bad), capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "figs").exists()


def test_people_grid_must_be_the_conditional_one(grids, tmp_path, capsys):
    flags = fit_flags(grids, tmp_path)
    flags[flags.index("--crp-grid") + 1] = str(grids["heads"])
    code, _, err = run(fit_human_recall.main, flags, capsys)
    assert code == 2 and "--quantity conditional" in err and not (tmp_path / "out").exists()


def test_heads_need_a_grid_of_the_same_simulation(grids, tmp_path, capsys, repo_root):
    flags = fit_flags(grids, tmp_path)
    flags[flags.index("--head-grid") + 1] = str(repo_root / "saved_crps" / "cmr_crp_avg_20_11.npy")
    code, _, err = run(fit_human_recall.main, flags, capsys)
    assert code == 2 and "same simulator" in err and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.official
def test_authors_models_and_fig7_panels(grids, tmp_path, capsys, official_dir):
    flags = fit_flags(grids, tmp_path, "--models", "gpt2-small", "pythia-70m", "--scores-dir",
                      str(official_dir / "saved_scores"), "--training-models", "pythia-70m", "--n-top", "5", "20")
    code, _, err = run(fit_human_recall.main, flags, capsys)
    assert code == 0, err
    heads = pd.read_csv(tmp_path / "out" / "peers_head_fits.csv")
    assert heads.groupby("model").size().to_dict() == {"gpt2-small": 144, "pythia-70m": 48}
    assert (tmp_path / "figs" / "humans_vs_heads" / "peers_fig7_human_reference.pdf").stat().st_size > 0


@pytest.mark.slow
def test_shipped_people_fits_are_reproduced(repo_root, tmp_path, capsys):
    """The default command on the shipped grids gives the shipped PEERS table (people do not depend on heads)."""
    code, _, err = run(fit_human_recall.main, ["--models", "--out-dir", str(tmp_path / "out"), "--figs-dir",
                                               str(tmp_path / "figs")], capsys)
    assert code == 0, err
    rerun = pd.read_csv(tmp_path / "out" / "peers_fits.csv")
    shipped = pd.read_csv(repo_root / "saved_scores" / "human" / "peers_fits.csv")
    pd.testing.assert_frame_equal(rerun, shipped)


# ----------------------------------------------------------------------------- the experiment from Python

def test_the_settings_defaults_are_the_command_lines():
    args = fit_human_recall.build_parser().parse_args([])
    assert fit_human_recall.settings_from(args) == HumanRecallSettings()


@pytest.mark.slow
def test_a_notebook_run_gives_the_scripts_tables(grids, morton_run):
    """The same run from Python, settings as the script's flags set them, gives the files' tables."""
    result = run_human_recall(HumanRecallSettings(dataset="Morton2013", crp_grid=str(grids["people"]),
                                                  head_grid=grids["heads"], n_bootstrap=300))
    for name, table in result.tables().items():
        written = pd.read_csv(morton_run / "out" / name)
        pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(table.to_csv(index=False))), written)
    assert list(result.tables()) == ["morton2013_fits.csv", "morton2013_head_fits.csv", "morton2013_vs_heads.csv"]
    assert result.over_training is None


def test_engine_errors_name_parameters_and_the_script_names_its_flags(grids, tmp_path, capsys):
    settings = HumanRecallSettings(by="all", training_models=["pythia-70m"], crp_grid=grids["people"])
    with pytest.raises(InputError) as err:
        check_human_recall(settings)
    assert str(err.value) == "`training_models` draws the people's distribution: it needs `by` subject"
    assert err.value.parameters == ("training_models", "by")
    code, _, err_text = run(fit_human_recall.main, fit_flags(grids, tmp_path, "--by", "all", "--training-models",
                                                             "pythia-70m"), capsys)
    assert code == 2
    assert err_text == "error: --training-models draws the people's distribution: it needs --by subject\n"


@pytest.mark.parametrize("field, value", [("threshold", 0.0), ("near_best", float("inf")), ("n_bootstrap", 0),
                                          ("seed", -1), ("n_top", [0]), ("by", "list"), ("dataset", "murdock")])
def test_bad_settings_are_refused_by_name_before_any_input_is_read(field, value, tmp_path):
    settings = HumanRecallSettings(crp_grid=tmp_path / "missing.npy", **{field: value})
    with pytest.raises(InputError) as err:
        check_human_recall(settings)
    assert err.value.parameters == (field,) and field in str(err.value)


def test_a_page_of_units_spreads_over_the_ranks_of_the_distance():
    distance = np.array([0.5, np.nan, 0.1, 0.3, 0.2, 0.4])
    np.testing.assert_array_equal(page_of_units(distance, size=10), [2, 4, 3, 5, 0, 1])   # all, best first
    np.testing.assert_array_equal(page_of_units(distance, size=3), [2, 3, 1])      # ranks 0, 2.5 -> 2 (even), 5
