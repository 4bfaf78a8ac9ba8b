"""The vectorised posterior quantiles equal numpy's nanquantile over the valid samples, exactly."""

import warnings

import numpy as np
import pytest

from runtime.posterior import QUANTILES, summarize, valid_quantiles


@pytest.mark.parametrize(("n", "s", "d"), [(40, 16, 13), (6, 4096, 13), (30, 7, 3)])
def test_valid_quantiles_equal_nanquantile(n, s, d):
    rng = np.random.default_rng(n + s)
    x = rng.normal(size=(n, s, d)) * 3 + 1
    valid = rng.random((n, s)) > 0.3
    valid[0] = False  # no valid sample
    valid[1] = False
    valid[1, 2] = True  # exactly one
    got = valid_quantiles(x, valid, valid.sum(axis=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        ref = np.moveaxis(np.nanquantile(np.where(valid[..., None], x, np.nan), QUANTILES, axis=1), 0, 1)
    np.testing.assert_array_equal(got, ref)
    assert np.isnan(got[0]).all() and (got[1] == x[1, 2]).all()


def test_summary_map_is_the_densest_valid_sample():
    x = np.array([[[0.5], [2.0], [0.7]]])
    log_density = np.array([[1.0, 9.0, 3.0]])  # the densest sample is out of bounds
    summary = summarize(x, log_density, np.array([0.0]), np.array([1.0]))
    assert summary.map[0, 0] == 0.7 and summary.n_valid[0] == 2 and summary.f_reject[0] == pytest.approx(1 / 3)
