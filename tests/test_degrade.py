import numpy as np
import pytest

from spectra.forward.degrade import (
    C_KMS,
    add_noise,
    der_snr,
    fourmostify,
    gaussian_broaden,
    measure_snr_per_angstrom,
    rebin,
    rotational_broaden,
    snr_per_pixel,
)
from spectra.stores.survey import PAPER_SNR
from spectra.wavegrid import hr_grid, working_grid

from conftest import line_spectrum


def _fwhm(wave, profile):
    depth = 1 - profile
    half = depth.max() / 2
    above = wave[depth >= half]
    return above[-1] - above[0]


def test_gaussian_broadening_reaches_the_requested_resolution_and_keeps_equivalent_width():
    wave = np.arange(5990.0, 6010.0, 0.002)
    line = 1 - 0.5 * np.exp(-0.5 * ((wave - 6000) / 0.012) ** 2)  # ~ thermal width of an Fe line
    out = gaussian_broaden(wave, line, 20_000, wave)
    assert abs(_fwhm(wave, out) - 6000 / 20_000) < 0.01
    assert np.isclose(np.trapezoid(1 - out, wave), np.trapezoid(1 - line, wave), rtol=1e-3)


def test_rotational_broadening_width_and_normalisation():
    wave = np.arange(5990.0, 6010.0, 0.002)
    line = 1 - 0.5 * np.exp(-0.5 * ((wave - 6000) / 0.012) ** 2)
    for vsini in (1.0, 10.0, 60.0):
        out = rotational_broaden(wave, line, vsini)
        assert np.isclose(np.trapezoid(1 - out, wave), np.trapezoid(1 - line, wave), rtol=2e-3)
        # half width of the profile ~ vsini (limb-darkened profile is a bit narrower at half depth)
        if vsini >= 10:
            assert 1.2 * vsini * 6000 / C_KMS < _fwhm(wave, out) < 2.05 * vsini * 6000 / C_KMS
    assert np.array_equal(rotational_broaden(wave, line, 0.0), line)


def test_rebin_conserves_flux():
    wave = np.arange(6000.0, 6010.0, 0.025)
    flux = line_spectrum(wave, seed=3, n_lines=20)
    out_wave = np.arange(6001.025, 6008.0, 0.05)
    out = rebin(wave, flux, out_wave, 0.05)
    sel = (wave > 6000.99) & (wave < 6008.01)  # the bins span exactly 6001.0 ... 6008.0
    assert np.isclose(out.sum() * 0.05, np.trapezoid(flux[sel], wave[sel]), rtol=1e-4)
    with pytest.raises(ValueError, match="does not cover"):
        rebin(wave, flux, np.array([5999.0]), 0.05)


def test_fourmostify_shapes_and_continuum():
    work, hr = working_grid(), hr_grid()
    out = fourmostify(np.ones(work.size), 20.0, work, hr)
    assert out.shape == (hr.size,)
    np.testing.assert_allclose(out, 1.0, atol=1e-9)
    with pytest.raises(ValueError, match="working flux has 10 pixels"):
        fourmostify(np.ones(10), 5.0, work, hr)


@pytest.mark.parametrize("snr", PAPER_SNR)
def test_snr_measured_back_matches_the_request(snr):
    hr = hr_grid()
    clean = line_spectrum(hr.wave, seed=7)
    rng = np.random.default_rng(snr)
    noisy = add_noise(clean, snr, hr.step, rng)
    measured = measure_snr_per_angstrom(noisy, clean, hr.step)
    assert abs(measured / snr - 1) < 0.05


def test_per_angstrom_to_per_pixel_convention():
    assert np.isclose(snr_per_pixel(250.0, 0.05), 250.0 * np.sqrt(0.05))
    rng = np.random.default_rng(0)
    flat = add_noise(np.ones(200_000), 100.0, 0.05, rng)
    assert abs(der_snr(flat) / (100.0 * np.sqrt(0.05)) - 1) < 0.05
