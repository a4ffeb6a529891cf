"""[LI24]'s CMR rates against standard CMR's (icl_cmr.cmr.scales) and the literature table (icl_cmr.cmr.literature).

Expected values come from the two models' updates written out here with explicit vectors: standard CMR's
normalised step ``t <- rho t + B t_in`` (the rho of Howard & Kahana 2002 / cymr's ``calc_rho``) and [LI24]'s
renormalised linear mix, never from the conversion formulas themselves.
"""
from __future__ import annotations

import numpy as np
import pytest

from icl_cmr.cmr.literature import LITERATURE_FITS, literature_points, literature_ranges, literature_table
from icl_cmr.cmr.model import encoding_matrix
from icl_cmr.cmr.scales import (context_scaling, li24_encoding_rate, li24_retrieval_rate, li24_retrieval_rate_range,
                                standard_encoding_rate, standard_retrieval_rate)
from icl_cmr.errors import InputError
from icl_cmr.fits.layers import HUMAN_FITS


def standard_step(context, context_input, rate):
    """Standard CMR's update, written from its definition: rho chosen so that the result has unit length."""
    dot = float(context @ context_input)
    rho = np.sqrt(1 + rate ** 2 * (dot ** 2 - 1)) - rate * dot
    return rho * context + rate * context_input


def li24_step(context, context_input, rate):
    mixed = (1 - rate) * context + rate * context_input
    return mixed / np.linalg.norm(mixed)


def standard_study_contexts(rate, n_items):
    """Study a list with standard CMR: unit 0 is the start context, item i has its own unit i + 1 (orthonormal inputs).
    Returns the context before each item's input, [n_items, n_items + 1]."""
    context = np.zeros(n_items + 1)
    context[0] = 1.0
    before = []
    for item in range(n_items):
        before.append(context.copy())
        context = standard_step(context, np.eye(n_items + 1)[item + 1], rate)
    return np.array(before)


@pytest.mark.parametrize("beta_enc", [0.05, 0.1, 0.3, 0.7, 0.9, 1.0])
def test_converted_encoding_rate_gives_li24s_gradient(beta_enc):
    n_items = 12
    contexts = standard_study_contexts(standard_encoding_rate(beta_enc), n_items)
    # strength of item j cued by item i's unit: the overlap of e_i with item j's study context (j > i)
    standard = contexts[:, 1:].T                    # [cue item i, item j] = c_(j-1) . e_i
    li24 = encoding_matrix(beta_enc, n_items)[:n_items, :n_items]
    for cue in range(n_items - 2):
        forward = slice(cue + 1, n_items)
        np.testing.assert_allclose(standard[cue, forward] / standard[cue, cue + 1],
                                   li24[cue, forward] / li24[cue, cue + 1], rtol=1e-12, atol=1e-300)


def test_encoding_rates_quoted_in_the_issue():
    # sqrt(1 - 0.9^2) = sqrt(0.19); sqrt(1 - 0.3^2) = sqrt(0.91); sqrt(1 - 0.1^2) = sqrt(0.99); 1 - sqrt(1 - 0.79^2)
    np.testing.assert_allclose(standard_encoding_rate(np.array([0.1, 0.7, 0.9])),
                               np.sqrt([0.19, 0.91, 0.99]), rtol=1e-15)
    assert li24_encoding_rate(0.79) == pytest.approx(1 - np.sqrt(1 - 0.6241), abs=1e-15)
    assert round(li24_encoding_rate(0.79), 3) == 0.387


def test_encoding_conversions_invert_each_other():
    beta = np.linspace(0, 1, 101)
    np.testing.assert_allclose(li24_encoding_rate(standard_encoding_rate(beta)), beta, atol=1e-12)
    assert standard_encoding_rate(0.0) == 0.0 and standard_encoding_rate(1.0) == 1.0


def random_unit_pairs(seed, n=200, size=30):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        support = rng.random(size) < rng.uniform(0.1, 0.9)
        a, b = rng.random(size) * support, rng.random(size) * (rng.random(size) < 0.5)
        if not a.any() or not b.any():
            continue
        pairs.append((a / np.linalg.norm(a), b / np.linalg.norm(b)))
    return pairs


def test_standard_update_at_the_converted_rate_equals_li24s_update():
    for context, context_input in random_unit_pairs(1):
        overlap = float(context @ context_input)
        for rate in (0.05, 0.3, 0.5, 0.75, 0.99):
            np.testing.assert_allclose(standard_step(context, context_input,
                                                     standard_retrieval_rate(rate, overlap)),
                                       li24_step(context, context_input, rate), atol=1e-13)


def test_li24_update_at_the_converted_rate_equals_the_standard_update():
    for context, context_input in random_unit_pairs(2):
        overlap = float(context @ context_input)
        for rate in (0.1, 0.36, 0.627, 0.937):
            np.testing.assert_allclose(li24_step(context, context_input, li24_retrieval_rate(rate, overlap)),
                                       standard_step(context, context_input, rate), atol=1e-13)


def test_no_constant_retrieval_rate_reproduces_li24s_update_at_two_overlaps():
    pairs = random_unit_pairs(3)
    overlaps = np.array([float(a @ b) for a, b in pairs])
    low, high = pairs[int(np.argmin(overlaps))], pairs[int(np.argmax(overlaps))]
    assert overlaps.max() - overlaps.min() > 0.3
    rate = 0.5
    fitted_at_low = standard_retrieval_rate(rate, float(low[0] @ low[1]))
    error = np.abs(standard_step(*high, fitted_at_low) - li24_step(*high, rate)).max()
    assert error > 1e-3


def test_rho_keeps_the_context_a_unit_vector():
    for context, context_input in random_unit_pairs(4, n=50):
        overlap = float(context @ context_input)
        for rate in (0.2, 0.8):
            rho = context_scaling(rate, overlap)
            assert np.linalg.norm(rho * context + rate * context_input) == pytest.approx(1.0, abs=1e-13)


def test_retrieval_rate_range_ends_and_closed_form_at_zero_overlap():
    rates = np.linspace(0.0, 1.0, 21)
    low, high = li24_retrieval_rate_range(rates)
    np.testing.assert_allclose(high, rates, atol=1e-15)
    # c = 0: rho = sqrt(1 - B^2), so b / (1 - b) = B / sqrt(1 - B^2)
    np.testing.assert_allclose(low, rates / (rates + np.sqrt(1 - rates ** 2)), atol=1e-15)
    for rate in rates[1:-1]:
        grid = np.linspace(0, 1, 51)
        values = li24_retrieval_rate(rate, grid)
        assert np.all(np.diff(values) > 0)            # more overlap, higher [LI24] rate
    for end in (0.0, 1.0):                              # the end points agree at every overlap
        np.testing.assert_allclose(li24_retrieval_rate(end, np.linspace(0, 1, 11)), end, atol=1e-15)
        np.testing.assert_allclose(standard_retrieval_rate(end, np.linspace(0, 1, 11)), end, atol=1e-15)


@pytest.mark.parametrize("function, name", [(standard_encoding_rate, "beta_enc"), (li24_encoding_rate,
                                                                                    "standard_beta_enc")])
def test_out_of_range_rates_name_the_parameter(function, name):
    with pytest.raises(InputError, match=name):
        function(1.2)


@pytest.mark.parametrize("rate", [1e-10, 1e-6, 1e-3, 0.01])
def test_tiny_encoding_rates_keep_their_digits(rate):
    # 1 - sqrt(1 - B^2) = B^2 / 2 + B^4 / 8 + B^6 / 16 + ... (the binomial series, written out here)
    series = rate ** 2 / 2 + rate ** 4 / 8 + rate ** 6 / 16 + 5 * rate ** 8 / 128
    assert li24_encoding_rate(rate) == pytest.approx(series, rel=1e-12)
    assert li24_encoding_rate(np.array([rate, 0.5]))[0] == pytest.approx(series, rel=1e-12)


@pytest.mark.parametrize("function, name", [(standard_encoding_rate, "beta_enc"), (li24_encoding_rate,
                                                                                    "standard_beta_enc")])
@pytest.mark.parametrize("value", ["0.5", True, np.bool_(False), 0.5 + 0j, np.array(["0.1", "0.2"]), None,
                                   [[0.1], [0.2, 0.3]]])
def test_values_that_are_not_real_numbers_are_refused_naming_the_parameter(function, name, value):
    with pytest.raises(InputError) as err:
        function(value)
    assert err.value.parameters == (name,) and str(err.value).startswith(f"`{name}` must be a")


def test_an_array_with_out_of_range_values_names_the_first_and_counts_them():
    rates = np.full((100, 50), 0.5)
    rates[3, 7], rates[60, 2] = 1.5, -0.1
    with pytest.raises(InputError) as err:
        li24_encoding_rate(rates)
    assert str(err.value) == ("`standard_beta_enc` must lie in [0, 1]: element [3, 7] is 1.5 (2 of 5000 values out "
                              "of range)")


# ----------------------------------------------------------------------------- the literature table

def test_published_points_are_li24s_constants_and_human_fits_keeps_them():
    assert HUMAN_FITS == literature_points("published", decimals=3)
    assert HUMAN_FITS["Sederberg 2008"] == (0.627, 0.627) and HUMAN_FITS["Kahana 2002"] == (0.79, 0.59)
    assert len(LITERATURE_FITS) == 7


def test_li24_scale_points_are_the_published_ones_converted():
    published, converted = literature_points("published"), literature_points("li24")
    ranges = literature_ranges()
    for label, (beta_enc, beta_rec) in published.items():
        assert converted[label][0] == pytest.approx(1 - np.sqrt(1 - beta_enc ** 2), abs=1e-15)
        assert converted[label][1] == pytest.approx(beta_rec / (beta_rec + np.sqrt(1 - beta_rec ** 2)), abs=1e-15)
        assert ranges[label][1] <= ranges[label][2] == pytest.approx(beta_rec)
    assert round(converted["Kahana 2002"][0], 3) == 0.387
    # on [LI24]'s scale the encoding rates are 0.02..0.39 (the issue's summary)
    assert 0.01 < min(a for a, _ in converted.values()) and max(a for a, _ in converted.values()) < 0.39


def test_every_literature_fit_names_its_source_model_and_what_was_checked():
    for row in literature_table():
        assert row["fitted_by"] and row["model"] and "normalised" in row["update_rule"]
        assert "rule:" in row["checked"] and "value:" in row["checked"]
    with pytest.raises(InputError, match="scale"):
        literature_points("other")


@pytest.mark.parametrize("kwargs, parameters, message", [
    (dict(scale="li24", retrieval_overlap=2.0), ("retrieval_overlap",), "`retrieval_overlap` must lie in [0, 1]"),
    (dict(scale="published", retrieval_overlap=0.5), ("retrieval_overlap", "scale"), "applies to `scale` li24 only"),
    (dict(decimals=-1), ("decimals",), "`decimals` must be an integer >= 0, got -1"),
    (dict(decimals=2.5), ("decimals",), "`decimals` must be an integer >= 0"),
    (dict(scale="cymr"), ("scale",), "`scale` must be one of"),
])
def test_literature_points_refuse_bad_arguments_by_name(kwargs, parameters, message):
    with pytest.raises(InputError) as err:
        literature_points(**kwargs)
    assert err.value.parameters == parameters and message in str(err.value)
