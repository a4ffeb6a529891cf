"""People against heads under each fitting method (issue 24): the likelihood fit on [LI24]'s scale, the methods'
correlations across people, the comparison run on the shipped tables, and the heads drawn against the converted
literature values."""
from __future__ import annotations

import json
import math
import shutil

import matplotlib
import numpy as np
import pandas as pd
import pytest

from icl_cmr.cmr.literature import LITERATURE_FITS, literature_ranges
from icl_cmr.errors import InputError
from icl_cmr.experiments.human_methods import MethodComparisonSettings, check_tables_agree, run_method_comparison
from icl_cmr.figures.fits import plot_selection_vs_human
from icl_cmr.fits.layers import HUMAN_FITS
from icl_cmr.humans.fits import (GroupComparisonConfig, likelihood_vs_heads_table, method_correlations,
                                 method_people_table)

matplotlib.use("Agg")


def heads_table(model, distance, beta_enc):
    return pd.DataFrame({"model": model, "cmr_distance": distance, "beta_enc": beta_enc})


# ----------------------------------------------------------------------------- likelihood fits against heads

def test_likelihood_people_are_compared_on_li24s_scale_with_cmr_like_heads_only():
    b_enc = np.array([0.6, 0.8, 0.9, 0.7, 0.5])
    people = pd.DataFrame({"subject": range(5), "B_enc": b_enc})
    heads = pd.concat([heads_table("a", [0.1, 0.2, 0.3, 0.9], [0.2, 0.3, 0.4, 0.99]),
                       heads_table("b", [0.05, 0.06], [0.6, 0.7])], ignore_index=True)
    table = likelihood_vs_heads_table(people, heads, threshold=0.5, config=GroupComparisonConfig(n_bootstrap=200))
    converted = [1 - math.sqrt(1 - b * b) for b in b_enc]      # same gradient: (1 - beta) = sqrt(1 - B^2)
    assert list(table["model"]) == ["a", "b"] and set(table["quantity"]) == {"beta_enc"}
    assert table["median_people"].tolist() == pytest.approx([np.median(converted)] * 2)
    assert table["median_heads"].tolist() == pytest.approx([0.3, 0.65])      # head 'a' at D 0.9 is not CMR-like
    assert table["n_heads"].tolist() == [3, 2] and table["n_people"].tolist() == [5, 5]
    assert table.loc[0, "median_difference"] == pytest.approx(np.median(converted) - 0.3)


def test_likelihood_comparison_needs_b_enc():
    with pytest.raises(InputError) as err:
        likelihood_vs_heads_table(pd.DataFrame({"beta_enc": [0.3]}), heads_table("a", [0.1], [0.2]), 0.5)
    assert err.value.parameters == ("likelihood", "heads")


# ----------------------------------------------------------------------------- correlations across methods

def test_method_correlations_rank_people_and_put_medians_on_li24s_scale():
    subjects = np.arange(6)
    rising = np.linspace(0.1, 0.6, 6)
    grid = pd.DataFrame({"subject": subjects, "beta_enc": rising, "beta_rec": rising, "gamma_ft": rising})
    standard = pd.DataFrame({"subject": subjects[::-1], "beta_enc": rising, "beta_rec": rising ** 2,
                             "gamma_ft": rising})    # listed backwards: people are matched by subject, not by row
    likelihood = pd.DataFrame({"subject": subjects, "B_enc": np.sqrt(rising), "B_rec": 1 - rising,
                               "Lfc": rising})
    table = method_correlations({"likelihood": likelihood, "grid_li24": grid, "grid_standard": standard})
    rows = table.set_index(["method_a", "method_b", "quantity"])
    assert list(dict.fromkeys(zip(table["method_a"], table["method_b"]))) == [
        ("grid_li24", "grid_standard"), ("grid_li24", "likelihood"), ("grid_standard", "likelihood")]
    assert rows.loc[("grid_li24", "grid_standard", "beta_enc"), "spearman_rho"] == pytest.approx(-1.0)
    assert rows.loc[("grid_li24", "likelihood", "beta_enc"), "spearman_rho"] == pytest.approx(1.0)
    assert rows.loc[("grid_li24", "likelihood", "beta_rec"), "spearman_rho"] == pytest.approx(-1.0)
    assert rows.loc[("grid_li24", "likelihood", "gamma_ft"), "column_b"] == "Lfc"
    b_enc_median = np.median(np.sqrt(rising))
    beta_enc = rows.loc[("grid_li24", "likelihood", "beta_enc")]
    assert beta_enc["median_b"] == pytest.approx(b_enc_median)
    assert beta_enc["median_b_li24"] == pytest.approx(1 - math.sqrt(1 - b_enc_median ** 2))
    assert math.isnan(rows.loc[("grid_li24", "likelihood", "beta_rec"), "median_b_li24"])   # no exact conversion
    assert beta_enc["median_a_li24"] == beta_enc["median_a"] == pytest.approx(np.median(rising))
    assert (table["n"] == 6).all()


def test_each_person_gets_one_row_with_every_methods_parameters():
    grid = pd.DataFrame({"subject": [3, 1], "cmr_distance": [0.1, 0.2], "beta_enc": [0.7, 0.5], "beta_rec": [1.0, 0.5],
                         "gamma_ft": [1.0, 0.0]})
    likelihood = pd.DataFrame({"subject": [1, 2], "B_enc": [0.8, np.nan], "B_rec": [0.9, 0.8], "Lfc": [0.1, 0.2]})
    table = method_people_table({"likelihood": likelihood, "grid_li24": grid})
    assert table["subject"].tolist() == [1, 2, 3]                  # everyone in any table, by subject
    assert list(table.columns[:5]) == ["subject", "cmr_distance_grid_li24", "beta_enc_grid_li24",
                                       "beta_rec_grid_li24", "gamma_ft_grid_li24"]
    row = table.set_index("subject")
    assert row.loc[1, "beta_enc_grid_li24"] == 0.5 and row.loc[1, "B_enc"] == 0.8
    assert row.loc[1, "beta_enc_likelihood"] == pytest.approx(0.4)      # 1 - sqrt(1 - 0.64)
    assert math.isnan(row.loc[2, "beta_enc_likelihood"]) and math.isnan(row.loc[3, "B_enc"])


# ----------------------------------------------------------------------------- the comparison on shipped tables

@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["peers", "morton2013"])
def test_grid_rows_of_the_methods_table_are_fit_human_recalls_statistics(repo_root, dataset):
    """The shipped comparison's grid rows equal what fit_human_recall.py wrote for each rule (same bootstrap)."""
    human = repo_root / "saved_scores" / "human"
    result = run_method_comparison(MethodComparisonSettings(dataset=dataset, human_dir=human))
    for method, stem in (("grid_li24", dataset), ("grid_standard", f"{dataset}_std")):
        rows = result.vs_heads[result.vs_heads["method"] == method].drop(columns="method").dropna(axis=1, how="all")
        written = pd.read_csv(human / f"{stem}_vs_heads.csv").dropna(axis=1, how="all")
        pd.testing.assert_frame_equal(rows.reset_index(drop=True), written[rows.columns], check_dtype=False)
    likelihood = result.vs_heads[result.vs_heads["method"] == "likelihood"]
    b_enc = pd.read_csv(human / f"{dataset}_likelihood_fits.csv")["B_enc"]
    assert likelihood["median_people"].iloc[0] == pytest.approx(np.median(1 - np.sqrt(1 - b_enc ** 2)))
    for table, name in ((result.vs_heads, "vs_heads"), (result.correlations, "correlations"), (result.people, "people")):
        shipped = pd.read_csv(human / f"{dataset}_methods_{name}.csv")
        pd.testing.assert_frame_equal(table.reset_index(drop=True), shipped, check_dtype=False)


def test_a_missing_table_is_named_with_the_run_that_makes_it(tmp_path):
    with pytest.raises(InputError) as err:
        run_method_comparison(MethodComparisonSettings(dataset="peers", human_dir=tmp_path))
    assert err.value.parameters == ("human_dir",)
    assert "peers_fits.csv" in str(err.value) and "fit_human_recall.py" in str(err.value)


# ----------------------------------------------------------------------------- heads against converted values

def test_heads_are_drawn_against_the_converted_literature_values_beside_the_published_panel():
    heads = {"top20 CMR-like": np.array([[0.6, 0.9], [0.7, 0.8]])}
    fig = plot_selection_vs_human(heads, HUMAN_FITS, title="t", converted=literature_ranges())
    published, converted = fig.axes[:2]
    assert "as published" in published.get_title() and "converted" in converted.get_title()
    assert not published.lines            # the published panel is as [LI24] drew it: stars only, no bars
    bars = {round(line.get_xdata()[0], 9): sorted(line.get_ydata()) for line in converted.lines}
    assert len(bars) == len(LITERATURE_FITS) == 7
    for fit in LITERATURE_FITS:
        b_enc, b_rec = fit.beta_enc, fit.beta_rec
        x = 1 - math.sqrt(1 - b_enc ** 2)
        low = b_rec / (b_rec + math.sqrt(1 - b_rec ** 2))    # overlap 0: the input orthogonal to the context
        assert bars[round(x, 9)] == pytest.approx([low, b_rec])   # overlap 1: beta_rec equals B_rec
    # The heads are the same points in both panels.
    for ax in (published, converted):
        assert any(np.allclose(np.sort(c.get_offsets()[:, 0]), [0.6, 0.7], atol=0.011) for c in ax.collections)


# ----------------------------------------------------------------------------- settings and tables checked first

@pytest.mark.parametrize("field, value", [("threshold", 0.0), ("threshold", float("nan")), ("threshold", True),
                                          ("n_bootstrap", 0), ("n_bootstrap", 2.5), ("n_bootstrap", True),
                                          ("seed", -1), ("seed", 2 ** 32), ("dataset", "murdock")])
def test_bad_settings_are_refused_by_name_before_any_table_is_read(field, value, tmp_path):
    with pytest.raises(InputError) as err:
        run_method_comparison(MethodComparisonSettings(human_dir=tmp_path, **{field: value}))   # no tables there
    assert err.value.parameters == (field,) and f"`{field}`" in str(err.value)


@pytest.fixture
def morton_tables(repo_root, tmp_path):
    """The shipped Morton 2013 tables (and the grid runs' metadata), copied to be spoiled one at a time."""
    for path in (repo_root / "saved_scores" / "human").glob("morton2013_*"):
        if not path.name.startswith("morton2013_methods"):
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


def _spoil(folder, name, change):
    change(pd.read_csv(folder / name)).to_csv(folder / name, index=False)


def _refusal(folder):
    with pytest.raises(InputError) as err:
        run_method_comparison(MethodComparisonSettings(dataset="morton2013", human_dir=folder))
    assert err.value.parameters == ("human_dir",)
    return str(err.value)


def test_a_table_without_a_column_the_comparison_reads_is_refused(morton_tables):
    _spoil(morton_tables, "morton2013_likelihood_fits.csv", lambda t: t.drop(columns="B_enc"))
    assert _refusal(morton_tables) == (f"`human_dir`: {morton_tables / 'morton2013_likelihood_fits.csv'} (likelihood "
                                       "people) has no column B_enc")


def test_a_value_out_of_range_is_refused_naming_its_column_and_row(morton_tables):
    _spoil(morton_tables, "morton2013_std_fits.csv", lambda t: t.assign(beta_enc=t["beta_enc"].where(t.index != 2, 1.5)))
    assert _refusal(morton_tables) == (f"`human_dir`: {morton_tables / 'morton2013_std_fits.csv'} column beta_enc row "
                                       "3 holds 1.5; expected a number in [0, 1] (or empty)")


def test_standard_tables_recorded_under_the_other_rule_are_refused(morton_tables):
    meta_path = morton_tables / "morton2013_std_metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["parameters"]["recall_rule"] = "li24"
    meta_path.write_text(json.dumps(meta))
    assert _refusal(morton_tables) == (f"`human_dir`: {meta_path} says its tables were made under the li24 recall "
                                       "rule, but method grid_standard reads them as the standard rule's")


def test_heads_tables_of_different_models_are_refused_naming_the_models(morton_tables):
    _spoil(morton_tables, "morton2013_std_head_fits.csv", lambda t: t[t["model"] != "qwen-7b"])
    assert _refusal(morton_tables).startswith("`human_dir`: the heads tables cover different models (only in "
                                              "grid_li24: qwen-7b), so")


def test_a_people_table_covering_fewer_people_gets_a_warning(caplog):
    grid = pd.DataFrame({"subject": [1, 2, 3], "model": "m"})
    tables = {"grid_li24_people": grid, "grid_standard_people": grid, "likelihood_people": grid.iloc[:2],
              "grid_li24_heads": grid, "grid_standard_heads": grid}
    check_tables_agree(MethodComparisonSettings(dataset="morton2013", human_dir="/nonexistent"), tables)
    (warning,) = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warning.startswith("likelihood covers 2 of the 3 people of the three methods' tables")


def test_a_missing_table_under_a_relative_folder_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as err:
        run_method_comparison(MethodComparisonSettings(dataset="peers"))   # the default saved_scores/human
    assert str(err.value).startswith("`human_dir` has no peers_fits.csv (grid li24 people) (looked for at "
                                     f"{tmp_path / 'saved_scores' / 'human' / 'peers_fits.csv'}; the default paths are "
                                     "relative to the repository root")
