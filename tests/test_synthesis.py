"""PySME synthesis checks (slow: each synthesis takes seconds). The full report with all figures is
benchmarks/results/synthesis_validation.md, made by benchmarks/synthesis_validation.py."""

import numpy as np
import pytest

from spectra.synth.atmospheres import default_grid
from spectra.synth.synthesis import SpectrumMaker, labels_from_values
from spectra.synth.validation import compare_with_observed, leave_one_out, load_text_spectrum, metallicity_scan

from conftest import shared_file

pytest.importorskip("pysme")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def maker():
    return SpectrumMaker()


def test_solar_spectrum_matches_uves(maker):
    wave, flux = load_text_spectrum(shared_file("spectra", "UVES_Sun-1_cleaned_norm.txt"))
    hr_flux, syn = maker.hr_spectrum(labels_from_values(5772, 4.44, 0.0, 1.0, 3.5))
    assert syn.atmosphere_method == "interpolated"
    result = compare_with_observed(hr_flux, maker.hr, wave, flux, gaps=[(5759, 5828), (6066, 6074)])
    assert set(result) == {"green", "red"}
    for window, stats in result.items():
        assert stats["rms"] <= 0.025, (window, stats)


def test_leave_one_out_atmosphere_interpolation():
    points = [(5500, 4.0, 0.0), (6000, 4.5, 0.0), (5250, 2.5, 0.0), (5000, 4.5, -2.0), (4500, 1.5, -2.5)]
    results = leave_one_out(default_grid(), points)
    for r in results:
        assert r.method == "interpolated"
        assert r.rms <= 0.01, r


def test_flux_is_smooth_along_metallicity_through_the_gaps():
    scan = metallicity_scan(4500, 2.0, np.arange(-2.5, 0.51, 0.25))
    assert "metallicity_transfer" in scan["methods"]
    assert scan["max_over_median"] <= 3.0, scan["steps"]


def test_abundances_change_their_lines(maker):
    base = labels_from_values(5000, 2.5, -0.5, 1.2, 2.0)
    rich = labels_from_values(5000, 2.5, -0.5, 1.2, 2.0, {"Li": 2.5, "Mg": 0.4})
    f0, _ = maker.hr_spectrum(base)
    f1, _ = maker.hr_spectrum(rich)
    wave = maker.hr.wave
    li = np.abs(wave - 6707.8) < 0.3
    assert f1[li].min() < f0[li].min() - 0.05        # Li 6707 appears
    mgb = np.abs(wave - 5528.4) < 0.3                 # Mg I 5528
    assert f1[mgb].min() < f0[mgb].min() - 0.01
