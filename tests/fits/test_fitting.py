"""CMR distance and grid fit (DESIGN.md section 4), checked against slow references written here."""
from __future__ import annotations

import numpy as np
import pytest

from icl_cmr.config import ATTN_CRP_LAGS, CMR_CRP_LAGS, FIT_LAGS
from icl_cmr.errors import InputError
from icl_cmr.fits.distance import CmrGrid, cmr_distance, cmr_fit_patterns, fit_heads, select_lags
from icl_cmr.files.reading import load_npy, load_pickle

FIT_COLUMNS_ATTN = slice(3, 14)   # lags -5..+5 within -8..+7
FIT_COLUMNS_CMR = slice(3, 14)    # lags -5..+5 within -8..+8


def reference_distance(attn_fit_lags, cmr_17_lags):
    """DESIGN.md section 4, one head and one grid point, written out step by step."""
    a = np.asarray(attn_fit_lags, dtype=float)
    c = np.asarray(cmr_17_lags, dtype=float)[FIT_COLUMNS_CMR]
    c = c / c.sum()
    a_shift = a - a.min()
    c_shift = c - c.min()
    scale = a_shift.max() / c_shift.max()
    distance = np.mean((scale * c_shift - a_shift) ** 2) / np.var(a_shift)
    return distance, scale


def reference_fit(attn_16_lags, grid_mean):
    """Loop over every grid point in C order; keep the first strict minimum."""
    best = (np.inf, None, None)
    a = np.asarray(attn_16_lags)[FIT_COLUMNS_ATTN]
    for i in range(grid_mean.shape[0]):
        for j in range(grid_mean.shape[1]):
            for k in range(grid_mean.shape[2]):
                distance, scale = reference_distance(a, grid_mean[i, j, k])
                if distance < best[0]:
                    best = (distance, (i, j, k), scale)
    return best


def small_grid(rng, shape=(3, 4, 2)):
    """A random positive grid on lags -8..+8 with a few distinct axis values."""
    mean = rng.random(shape + (17,)) + 0.01
    mean /= mean.sum(axis=-1, keepdims=True)
    return CmrGrid(mean=mean, beta_enc=np.linspace(0.2, 1.0, shape[0]), beta_rec=np.linspace(0, 1, shape[1]),
                   gamma_ft=np.linspace(0, 1, shape[2]))


def test_fit_matches_loop_reference_on_random_heads():
    rng = np.random.default_rng(1)
    grid = small_grid(rng)
    attn = rng.normal(size=(5, 4, 16)) * 3
    fit = fit_heads(attn, grid)
    for layer in range(5):
        for head in range(4):
            distance, index, scale = reference_fit(attn[layer, head], grid.mean)
            assert fit.distance[layer, head] == pytest.approx(distance, abs=1e-12)
            assert tuple(fit.param_index[layer, head]) == index
            assert fit.inverse_temperature[layer, head] == pytest.approx(scale, rel=1e-12)
            expected_params = (grid.beta_enc[index[0]], grid.beta_rec[index[1]], grid.gamma_ft[index[2]])
            np.testing.assert_array_equal(fit.params[layer, head], expected_params)


def test_head_that_is_an_affine_copy_of_a_grid_point_fits_it_exactly():
    rng = np.random.default_rng(2)
    grid = small_grid(rng)
    target = (1, 2, 1)
    c = grid.mean[target][FIT_COLUMNS_CMR]
    c = c / c.sum()
    attn = np.full(16, np.nan)
    attn[FIT_COLUMNS_ATTN] = 7.0 * (c - c.min()) - 3.0     # scale 7 on the shifted pattern, offset -3
    attn[:3] = attn[14:] = 0.0                            # outside the fitting lags: ignored
    fit = fit_heads(attn[None], grid)
    assert tuple(fit.param_index[0]) == target
    assert fit.distance[0] == pytest.approx(0.0, abs=1e-20)
    assert fit.inverse_temperature[0] == pytest.approx(7.0, rel=1e-12)
    np.testing.assert_allclose(fit.fitted_pattern_scaled[0], fit.attn_scaled[0], atol=1e-12)
    np.testing.assert_allclose(fit.fitted_pattern[0], c, rtol=1e-12)


def test_identical_grid_points_resolve_to_the_first_in_c_order():
    rng = np.random.default_rng(3)
    grid = small_grid(rng)
    mean = grid.mean.copy()
    mean[2, 3, 1] = mean[0, 1, 0]                      # a duplicate later in C order
    mean[1, 0, 1] = mean[0, 1, 0]                      # and another
    grid = CmrGrid(mean=mean, beta_enc=grid.beta_enc, beta_rec=grid.beta_rec, gamma_ft=grid.gamma_ft)
    c = mean[0, 1, 0][FIT_COLUMNS_CMR] / mean[0, 1, 0][FIT_COLUMNS_CMR].sum()
    attn = np.zeros(16)
    attn[FIT_COLUMNS_ATTN] = c + rng.normal(scale=1e-4, size=11)
    fit = fit_heads(attn[None], grid)
    assert tuple(fit.param_index[0]) == (0, 1, 0)


def test_flat_or_nan_heads_get_no_fit_and_do_not_disturb_others():
    rng = np.random.default_rng(4)
    grid = small_grid(rng)
    attn = rng.normal(size=(3, 16))
    attn[0] = 2.5                     # flat: variance 0
    attn[1, 8] = np.nan               # NaN at lag 0 (inside the fitting lags)
    fit = fit_heads(attn, grid)
    assert np.isnan(fit.distance[:2]).all() and np.isnan(fit.params[:2]).all()
    assert (fit.param_index[:2] == -1).all()
    distance, index, _ = reference_fit(attn[2], grid.mean)
    assert fit.distance[2] == pytest.approx(distance, abs=1e-12)
    assert tuple(fit.param_index[2]) == index


def test_nan_outside_fitting_lags_is_ignored():
    rng = np.random.default_rng(5)
    grid = small_grid(rng)
    attn = rng.normal(size=16)
    with_nan = attn.copy()
    with_nan[0] = np.nan              # lag -8
    assert fit_heads(with_nan[None], grid).distance[0] == fit_heads(attn[None], grid).distance[0]


def test_flat_grid_points_are_never_chosen():
    rng = np.random.default_rng(6)
    grid = small_grid(rng)
    mean = grid.mean.copy()
    mean[0, 0, 0] = 1.0 / 17          # flat CRP: no shape to scale
    grid = CmrGrid(mean=mean, beta_enc=grid.beta_enc, beta_rec=grid.beta_rec, gamma_ft=grid.gamma_ft)
    fit = fit_heads(np.ones((1, 16)) + np.eye(16)[9], grid)
    assert tuple(fit.param_index[0]) != (0, 0, 0)
    assert np.isfinite(fit.distance[0])


def test_all_flat_grid_is_an_input_error():
    grid = CmrGrid(mean=np.full((2, 2, 2, 17), 1 / 17), beta_enc=[0.5, 1], beta_rec=[0, 1], gamma_ft=[0, 1])
    with pytest.raises(InputError, match="no usable point"):
        fit_heads(np.random.default_rng(0).normal(size=(1, 16)), grid)


def test_cmr_distance_matches_reference_for_every_pair():
    rng = np.random.default_rng(7)
    grid = small_grid(rng, (2, 2, 2))
    attn = rng.normal(size=(3, 11))
    distance, scale = cmr_distance(attn, cmr_fit_patterns(grid).reshape(-1, 11))
    for h in range(3):
        for g, point in enumerate(grid.mean.reshape(-1, 17)):
            ref_d, ref_s = reference_distance(attn[h], point)
            assert distance[h, g] == pytest.approx(ref_d, rel=1e-12)
            assert scale[h, g] == pytest.approx(ref_s, rel=1e-12)


def test_fit_patterns_are_cut_to_fit_lags_and_sum_to_one():
    grid = small_grid(np.random.default_rng(8), (2, 2, 2))
    patterns = cmr_fit_patterns(grid)
    assert patterns.shape == (2, 2, 2, 11)
    np.testing.assert_allclose(patterns.sum(axis=-1), 1.0)
    cut = grid.mean[..., 3:14]
    np.testing.assert_allclose(patterns, cut / cut.sum(axis=-1, keepdims=True))


def test_select_lags_rejects_missing_lags():
    with pytest.raises(InputError, match=r"lags \[8\]"):
        select_lags(np.zeros(16), ATTN_CRP_LAGS, np.array([7, 8]))
    np.testing.assert_array_equal(select_lags(np.arange(17), CMR_CRP_LAGS, FIT_LAGS), np.arange(3, 14))


def test_grid_axes_must_match_grid_shape():
    with pytest.raises(InputError, match="beta_rec"):
        CmrGrid(mean=np.ones((2, 3, 2, 17)), beta_enc=[0.5, 1], beta_rec=[0, 1], gamma_ft=[0, 1])


def test_grid_describes_its_shape_and_axes_in_json_types():
    grid = CmrGrid(mean=np.ones((2, 3, 2, 17)), beta_enc=[0.5, 1], beta_rec=[0, 0.5, 1], gamma_ft=[0, 1])
    description = grid.describe()
    assert description == {"grid_shape": [2, 3, 2], "beta_enc": [0.5, 1.0], "beta_rec": [0.0, 0.5, 1.0],
                           "gamma_ft": [0.0, 1.0]}
    assert all(type(v) is float for v in description["beta_rec"])


def test_any_leading_shape_is_kept():
    rng = np.random.default_rng(9)
    grid = small_grid(rng, (2, 2, 2))
    attn = rng.normal(size=(2, 3, 4, 16))
    fit = fit_heads(attn, grid)
    assert fit.distance.shape == (2, 3, 4) and fit.params.shape == (2, 3, 4, 3)
    flat = fit_heads(attn.reshape(-1, 16), grid)
    np.testing.assert_array_equal(fit.distance.ravel(), flat.distance)


# ----------------------------------------------------------------------------- authors' data

@pytest.fixture(scope="module")
def official_gpt2(official_dir):
    scores = load_pickle(official_dir / "saved_scores" / "gpt2-small" / "all_scores_gpt2_small.pkl")
    grid_mean = load_npy(official_dir / "saved_crps" / "cmr_crp_avg_20_11.npy", expected_shape=(20, 21, 11, 17))
    return np.asarray(scores["CRP_scores"], dtype=float), grid_mean


@pytest.mark.official
def test_official_gpt2_distances_equal_reference(official_gpt2):
    crp, grid_mean = official_gpt2
    grid = CmrGrid(mean=grid_mean)
    fit = fit_heads(crp, grid)
    # Reference: DESIGN.md section 4 per head, over all grid points with the direct formula
    # (broadcast over points; np.argmin keeps the first minimum in C order).
    c = grid_mean[..., 3:14].reshape(-1, 11)
    c = c / c.sum(axis=-1, keepdims=True)
    c_shift = c - c.min(axis=-1, keepdims=True)
    beta_enc, beta_rec, gamma_ft = np.meshgrid(np.arange(1, 21) * 0.05, np.arange(21) * 0.05,
                                               np.arange(11) * 0.1, indexing="ij")
    for layer in range(12):
        for head in range(12):
            a = crp[layer, head, 3:14]
            a_shift = a - a.min()
            scale = a_shift.max() / c_shift.max(axis=-1)
            distance = np.mean((scale[:, None] * c_shift - a_shift) ** 2 / np.var(a_shift), axis=-1)
            best = int(np.argmin(distance))
            assert abs(fit.distance[layer, head] - distance[best]) < 1e-9
            expected = (beta_enc.ravel()[best], beta_rec.ravel()[best], gamma_ft.ravel()[best])
            np.testing.assert_allclose(fit.params[layer, head], expected, atol=1e-12)
            assert fit.inverse_temperature[layer, head] == pytest.approx(scale[best], rel=1e-12)


@pytest.mark.official
def test_official_gpt2_loop_reference_on_l5h1(official_gpt2):
    crp, grid_mean = official_gpt2
    distance, index, scale = reference_fit(crp[5, 1], grid_mean)
    fit = fit_heads(crp[5:6, 1:2], CmrGrid(mean=grid_mean))
    assert fit.distance[0, 0] == pytest.approx(distance, abs=1e-12)
    assert tuple(fit.param_index[0, 0]) == index


@pytest.mark.official
def test_official_gpt2_paper_numbers(official_gpt2):
    crp, grid_mean = official_gpt2
    fit = fit_heads(crp, CmrGrid(mean=grid_mean))
    assert int((fit.distance < 0.5).sum()) == 68
    percent = (fit.distance < 0.5).mean(axis=1) * 100
    np.testing.assert_allclose(np.round(percent, 1), [25, 16.7, 8.3, 16.7, 33.3, 50, 41.7, 58.3, 75, 83.3, 83.3, 75])
    assert round(float(fit.distance[5, 1]), 4) == 0.0061
    np.testing.assert_allclose(fit.params[5, 1], (0.6, 0.75, 0.3), atol=1e-12)
    assert round(float(fit.inverse_temperature[5, 1]), 1) == 44.3


# ----------------------------------------------------------------------------- heads that cannot be fitted

def _small_grid():
    rng = np.random.default_rng(1)
    mean = rng.random((2, 2, 2, 17)) + 0.1
    return CmrGrid(mean / mean.sum(axis=-1, keepdims=True), beta_enc=[0.5, 1.0], beta_rec=[0.0, 1.0],
                   gamma_ft=[0.0, 1.0])


def test_check_fitted_counts_fitted_heads_and_warns_about_the_rest(caplog):
    from icl_cmr.fits.distance import check_fitted

    crp = np.random.default_rng(2).normal(size=(2, 3, 16))
    crp[0, 0] = np.nan
    crp[1, 2] = 7.0                                   # constant: variance 0
    fit = fit_heads(crp, _small_grid())
    with caplog.at_level("WARNING"):
        assert check_fitted(fit, "f.pkl") == 4
    (record,) = caplog.records
    assert "f.pkl: only 4 of 6 heads" in record.getMessage()
    assert "1 with a NaN or infinite value, 1 constant" in record.getMessage()


@pytest.mark.parametrize("crp", [np.full((2, 3, 16), np.nan), np.full((2, 3, 16), 0.5), np.zeros((0, 3, 16))])
def test_check_fitted_refuses_a_file_where_no_head_can_be_fitted(crp):
    from icl_cmr.fits.distance import check_fitted

    fit = fit_heads(crp, _small_grid())
    with pytest.raises(InputError, match=r"^f\.pkl: (none of its 6 heads can be fitted|holds no heads)"):
        check_fitted(fit, "f.pkl")


def test_check_fitted_looks_at_one_checkpoint_of_a_series():
    from icl_cmr.fits.distance import check_fitted

    crp = np.random.default_rng(3).normal(size=(2, 2, 3, 16))
    crp[1] = np.nan                                   # the second checkpoint is unusable
    fit = fit_heads(crp, _small_grid())
    assert check_fitted(fit, "cp0.pkl", index=(0,)) == 6
    with pytest.raises(InputError, match="cp10.pkl: none of its 6 heads"):
        check_fitted(fit, "cp10.pkl", index=(1,))
