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
from icl_cmr.files.outputs import REPO_ROOT
from icl_cmr.files.reading import load_pickle
from icl_cmr.files.results import read_cmr_fit
from icl_cmr.files.scores import read_head_scores

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


# ----------------------------------------------------------------------------- --recall_rule (issue 24)

@pytest.fixture(scope="module")
def standard_grid(tmp_path_factory):
    """The conditional grid of the standard recall rule, same small simulation otherwise (no draw cap)."""
    folder = tmp_path_factory.mktemp("std_grid")
    flags = [flag for flag in GRID_FLAGS]
    del flags[flags.index("--max_draws"):flags.index("--max_draws") + 2]
    assert run_cli(est_cmr_crp.main, ["--save_dir", str(folder), *flags, "--quantity", "conditional",
                                      "--recall_rule", "standard"]) == 0
    return folder / "cmr_std_cond_crp_avg_4_3.npy"


def hand_cmr_distance(head_crp, head_lags, grid_crp, grid_lags, fit_lags):
    """DESIGN.md section 4 written out: CMR curve renormalised over the fitting lags, both shifted to minimum 0,
    CMR scaled to the head's maximum, mean squared gap over the head's variance."""
    a = np.array([head_crp[list(head_lags).index(lag)] for lag in fit_lags])
    c = np.array([grid_crp[list(grid_lags).index(lag)] for lag in fit_lags])
    c = c / c.sum()
    a, c = a - a.min(), c - c.min()
    return float(np.mean((c * a.max() / c.max() - a) ** 2) / np.var(a))


@pytest.mark.slow
def test_standard_rule_fits_people_and_heads_to_its_conditional_grid_under_its_own_names(standard_grid, grids,
                                                                                          tmp_path, capsys):
    code, _, err = run(fit_human_recall.main, ["--dataset", "morton2013", "--recall_rule", "standard",
                                               "--crp-grid", str(standard_grid), "--head-grid", str(standard_grid),
                                               "--out-dir", str(tmp_path / "out"), "--figs-dir", str(tmp_path / "figs"),
                                               "--n-bootstrap", "300"], capsys)
    assert code == 0, err
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [f"morton2013_std_{name}" for name in (
        "fits.csv", "fits.pkl", "head_fits.csv", "metadata.json", "vs_heads.csv")]
    assert sorted(p.name for p in (tmp_path / "figs" / "humans_vs_heads").iterdir()) == [
        "morton2013_std_crp_fits.pdf", "morton2013_std_parameters.pdf"]
    meta = json.loads((out / "morton2013_std_metadata.json").read_text())["parameters"]
    assert meta["recall_rule"] == "standard"
    assert meta["head_fit_lags"] == meta["people_fit_lags"] == [-5, -4, -3, -2, -1, 1, 2, 3, 4, 5]
    # Each head's D is the distance to the standard grid at its fitted point, on the people's lags (no lag 0).
    grid = np.load(standard_grid)
    axes = json.loads(standard_grid.with_name("cmr_std_cond_crp_4_3.json").read_text())["parameters"]
    heads = pd.read_csv(out / "morton2013_std_head_fits.csv")
    scores = read_head_scores(heads["scores_file"].iloc[0])       # the file the run read (relative to the root)
    for row in heads.head(3).itertuples():
        layer, head = int(row.label[1:row.label.index("H")]), int(row.label[row.label.index("H") + 1:])   # "L1H3"
        point = tuple(int(np.argmin(np.abs(np.asarray(axes[name]) - getattr(row, name))))
                      for name in ("beta_enc", "beta_rec", "gamma_ft"))
        expected = hand_cmr_distance(scores.crp[layer, head], scores.lags, grid[point], range(-8, 9),
                                     [-5, -4, -3, -2, -1, 1, 2, 3, 4, 5])
        assert row.cmr_distance == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("rule, people_grid", [("standard", "people"), ("li24", "standard")])
def test_a_grid_made_under_the_other_rule_is_refused_before_any_work(grids, standard_grid, tmp_path, capsys, rule,
                                                                     people_grid):
    path = standard_grid if people_grid == "standard" else grids[people_grid]
    code, _, err = run(fit_human_recall.main, ["--recall_rule", rule, "--crp-grid", str(path), "--models",
                                               "--out-dir", str(tmp_path / "out"), "--figs-dir",
                                               str(tmp_path / "figs")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--crp-grid" in err and "--recall_rule" in err and "recall rule" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "figs").exists()


def test_each_rule_defaults_to_its_shipped_grids():
    li24, standard = HumanRecallSettings(), HumanRecallSettings(recall_rule="standard")
    assert (li24.crp_grid.name, li24.head_grid.name) == ("cmr_cond_crp_avg_20_11.npy", "cmr_crp_avg_20_11.npy")
    assert standard.crp_grid.name == standard.head_grid.name == "cmr_std_cond_crp_avg_20_11.npy"
    assert (li24.stem, standard.stem, HumanRecallSettings(recall_rule="standard", by="session").stem) == (
        "peers", "peers_std", "peers_std_session")
    args = fit_human_recall.build_parser().parse_args(["--recall_rule", "standard"])
    assert fit_human_recall.settings_from(args) == standard


def test_an_unknown_recall_rule_is_refused_by_name(tmp_path):
    with pytest.raises(InputError) as err:
        check_human_recall(HumanRecallSettings(recall_rule="cymr", crp_grid=tmp_path / "missing.npy"))
    assert err.value.parameters == ("recall_rule",) and "li24, standard" in str(err.value)


@pytest.mark.slow
def test_shipped_standard_rule_people_fits_are_reproduced(repo_root, tmp_path, capsys):
    code, _, err = run(fit_human_recall.main, ["--recall_rule", "standard", "--models", "--out-dir",
                                               str(tmp_path / "out"), "--figs-dir", str(tmp_path / "figs")], capsys)
    assert code == 0, err
    shipped = repo_root / "saved_scores" / "human" / "peers_std_fits.csv"
    assert (tmp_path / "out" / "peers_std_fits.csv").read_bytes() == shipped.read_bytes()


# ----------------------------------------------------------------------------- a stop probability (issue 24 review)

@pytest.fixture(scope="module")
def stop_grid(standard_grid, tmp_path_factory):
    """The standard grid's files as a grid of stop probability 0.1 would be named and recorded (its numbers are not
    what p = 0.1 gives: only the names and the sidecar matter here)."""
    folder = tmp_path_factory.mktemp("stop_grid")
    for kind in ("avg", "sem"):
        (folder / f"cmr_std_stop0.1_cond_crp_{kind}_4_3.npy").write_bytes(
            standard_grid.with_name(f"cmr_std_cond_crp_{kind}_4_3.npy").read_bytes())
    meta = json.loads(standard_grid.with_name("cmr_std_cond_crp_4_3.json").read_text())
    meta["parameters"]["stop_probability"] = 0.1
    (folder / "cmr_std_stop0.1_cond_crp_4_3.json").write_text(json.dumps(meta))
    return folder / "cmr_std_stop0.1_cond_crp_avg_4_3.npy"


def test_grids_of_different_stop_probabilities_are_refused_as_different_simulators(stop_grid, standard_grid, tmp_path,
                                                                                   capsys):
    settings = HumanRecallSettings(recall_rule="standard", crp_grid=stop_grid, head_grid=standard_grid)
    with pytest.raises(InputError) as err:
        check_human_recall(settings)
    assert "not grids of the same simulator: they were simulated with different stop_probability 0.1 vs 0.0" in str(
        err.value)
    assert err.value.parameters == ("head_grid", "crp_grid")
    code, _, text = run(fit_human_recall.main, ["--recall_rule", "standard", "--crp-grid", str(stop_grid),
                                                "--head-grid", str(standard_grid), "--out-dir", str(tmp_path / "out"),
                                                "--figs-dir", str(tmp_path / "figs")], capsys)
    assert code == 2 and len(text.strip().splitlines()) == 1 and text.startswith(f"error: --head-grid {standard_grid}")
    assert not (tmp_path / "out").exists()


def test_a_stop_probability_goes_into_the_output_names():
    standard = HumanRecallSettings(recall_rule="standard")
    assert standard.output_stem(0.1) == "peers_std_stop0.1" and standard.output_stem(0.0) == standard.stem
    assert HumanRecallSettings(recall_rule="standard", by="session").output_stem(0.25) == "peers_std_stop0.25_session"


@pytest.mark.slow
def test_a_grid_with_a_stop_probability_writes_its_own_names_and_records_it(stop_grid, tmp_path, capsys):
    code, _, err = run(fit_human_recall.main, ["--dataset", "morton2013", "--recall_rule", "standard", "--models",
                                               "--crp-grid", str(stop_grid), "--out-dir", str(tmp_path / "out"),
                                               "--figs-dir", str(tmp_path / "figs")], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "morton2013_std_stop0.1_fits.csv", "morton2013_std_stop0.1_fits.pkl", "morton2013_std_stop0.1_metadata.json"]
    meta = json.loads((tmp_path / "out" / "morton2013_std_stop0.1_metadata.json").read_text())["parameters"]
    assert meta["people_grid_settings"]["stop_probability"] == 0.1


def _grid_with_nan_points(grids, folder, share):
    """The small conditional grid's axes with a hand-made curve at every point (0.5 / (1 + |lag|), NaN at lag 0) and
    the first ``share`` of its points NaN."""
    (folder / "cmr_cond_crp_4_3.json").write_bytes((grids["folder"] / "cmr_cond_crp_4_3.json").read_bytes())
    lags = np.arange(-8, 9)
    curve = np.where(lags == 0, np.nan, 0.5 / (1 + np.abs(lags)))
    mean = np.broadcast_to(curve, (4, 5, 3, 17)).copy()
    flat = mean.reshape(-1, 17)
    flat[:int(share * len(flat))] = np.nan
    np.save(folder / "cmr_cond_crp_avg_4_3.npy", mean)
    return folder / "cmr_cond_crp_avg_4_3.npy"


def test_a_grid_mostly_of_nan_points_is_refused_naming_the_flag(grids, tmp_path, capsys):
    path = _grid_with_nan_points(grids, tmp_path, share=0.6)   # 36 of 60 points
    with pytest.raises(InputError) as err:
        check_human_recall(HumanRecallSettings(crp_grid=path, models=()))
    assert str(err.value).startswith(f"36 of 60 points of `crp_grid` {path} are NaN or flat on the fitting lags -5..5 except 0 "
                                     "((beta_enc, beta_rec, gamma_ft) = (0.25, 0, 0), (0.25, 0, 0.5), (0.25, 0, 1), ...)")
    assert err.value.parameters == ("crp_grid",) and "60% of its grid" in str(err.value)
    code, _, text = run(fit_human_recall.main, ["--crp-grid", str(path), "--models", "--out-dir",
                                                str(tmp_path / "out"), "--figs-dir", str(tmp_path / "figs")], capsys)
    assert code == 2 and text.startswith(f"error: 36 of 60 points of --crp-grid {path}") and not (tmp_path / "out").exists()


def test_a_grid_with_half_its_points_nan_is_still_used(grids, tmp_path):
    path = _grid_with_nan_points(grids, tmp_path, share=0.5)   # 30 of 60 points: the fits skip them, with a warning
    assert check_human_recall(HumanRecallSettings(crp_grid=path, models=())).people_grid.source == str(path)


@pytest.mark.slow
def test_the_success_line_lists_every_file_written_and_counts_figures_in_words(grids, tmp_path, capsys):
    code, _, err = run(fit_human_recall.main, fit_flags(grids, tmp_path, "--dataset", "morton2013", "--by", "all",
                                                        "--models"), capsys)
    assert code == 0, err
    (line,) = [line for line in err.splitlines() if line.startswith("INFO: wrote ")]
    assert line == (f"INFO: wrote morton2013_all_fits.pkl, morton2013_all_fits.csv, morton2013_all_metadata.json in "
                    f"{tmp_path / 'out'} and 1 figure in {tmp_path / 'figs' / 'humans_vs_heads'}")


# ----------------------------------------------------------------------------- messages name the rule's grid and flag

def _one_error(argv, tmp_path, capsys):
    code, out, err = run(fit_human_recall.main, [*argv, "--out-dir", str(tmp_path / "out"), "--figs-dir",
                                                 str(tmp_path / "figs")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and not (tmp_path / "out").exists(), err
    return lines[0]


STANDARD_HINT = ("`python src/est_cmr_crp.py --quantity conditional --recall_rule standard` "
                 "(cmr_std_cond_crp_avg_*.npy)")


def test_a_missing_grid_under_the_standard_rule_says_how_to_make_that_rules_grid(tmp_path, capsys):
    line = _one_error(["--recall_rule", "standard", "--crp-grid", str(tmp_path / "none.npy")], tmp_path, capsys)
    assert line == (f"error: conditional CMR grid {tmp_path / 'none.npy'} (--crp-grid) does not exist: make it with "
                    f"{STANDARD_HINT}, or pass --crp-grid PATH")


def test_a_lag_histogram_as_the_standard_rules_people_grid_names_the_flag_and_the_rules_grid(grids, tmp_path, capsys):
    line = _one_error(["--recall_rule", "standard", "--crp-grid", str(grids["heads"])], tmp_path, capsys)
    assert line == (f"error: --crp-grid {grids['heads']} holds the paper's CRP (a lag histogram: lag 0 is defined), "
                    f"not the conditional lag-CRP fitted here; make that with {STANDARD_HINT}")


def test_a_conditional_grid_as_the_li24_head_grid_is_named_as_such(grids, tmp_path, capsys):
    line = _one_error(["--crp-grid", str(grids["people"]), "--head-grid", str(grids["people"])], tmp_path, capsys)
    assert line.startswith(f"error: --head-grid {grids['people']} holds the conditional lag-CRP (lag 0 undefined), "
                           "not the paper's CRP (a lag histogram, cmr_crp_avg_*.npy")


@pytest.mark.parametrize("rule, other", [("li24", "standard"), ("standard", "li24")])
def test_a_grid_of_the_other_rule_suggests_that_rule(grids, standard_grid, tmp_path, capsys, rule, other):
    path = standard_grid if other == "standard" else grids["people"]
    line = _one_error(["--recall_rule", rule, "--crp-grid", str(path), "--models"], tmp_path, capsys)
    assert line == (f"error: --crp-grid {path} was made under the {other} recall rule, but --recall_rule is {rule}: "
                    f"pass --recall_rule {other} to fit with this grid, or a grid of the {rule} rule")


def test_only_a_people_grid_under_the_standard_rule_suggests_passing_the_head_grid_too(standard_grid, tmp_path, capsys):
    line = _one_error(["--recall_rule", "standard", "--crp-grid", str(standard_grid)], tmp_path, capsys)
    assert line.startswith(f"error: --head-grid saved_crps/cmr_std_cond_crp_avg_20_11.npy and --crp-grid {standard_grid} "
                           "are not grids of the same simulator")
    assert line.endswith("; --head-grid is the shipped grid: pass --head-grid too, the heads' grid of the same "
                         "simulation as --crp-grid (the same conditional grid)")


# ----------------------------------------------------------------------------- default paths from another folder

def test_default_grids_missing_from_another_working_folder_show_where_they_were_looked_for(tmp_path, capsys,
                                                                                             monkeypatch, repo_root):
    monkeypatch.chdir(tmp_path)
    line = _one_error([], tmp_path, capsys)
    assert line.startswith("error: conditional CMR grid saved_crps/cmr_cond_crp_avg_20_11.npy (--crp-grid) does not "
                           f"exist (looked for at {tmp_path / 'saved_crps' / 'cmr_cond_crp_avg_20_11.npy'}; the "
                           f"default paths are relative to the repository root, {repo_root.resolve()}): make it with")


def test_the_default_scores_folder_missing_from_another_working_folder_names_the_flag_and_the_place(
        grids, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _one_error(["--crp-grid", str(grids["people"]), "--head-grid", str(grids["heads"])], tmp_path, capsys)
    assert line == (f"error: scores folder saved_scores does not exist (looked for at {tmp_path / 'saved_scores'}; "
                    f"the default paths are relative to the repository root, {REPO_ROOT}) "
                    "(pass --scores-dir)")
