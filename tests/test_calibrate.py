"""The bias-correction line fit on synthetic data with known a, b (no catalogue needed)."""

import numpy as np
import pytest

from catalog.calibrate import fit_line


def test_fit_line_recovers_a_and_b_within_their_errors():
    rng = np.random.default_rng(4)
    teff = rng.uniform(4000, 7000, 72)
    a, b, sigma = -0.096, 492.389, 60.0  # the paper's T_eff row of Table B.3
    residual = a * teff + b + sigma * rng.standard_normal(teff.size)
    fit = fit_line(teff, residual, np.full(teff.size, sigma))
    assert abs(fit.a - a) < 3 * fit.a_err and abs(fit.b - b) < 3 * fit.b_err
    assert 0.005 < fit.a_err < 0.05 and fit.n == 72
    assert fit.rms_after < fit.rms_before


def test_fit_line_needs_three_stars():
    with pytest.raises(ValueError, match="at least 3"):
        fit_line(np.array([5000.0, 6000.0, np.nan]), np.array([0.1, 0.2, 0.3]))
