"""The batched pseudo-continuum (training batches, normalise-grid) equals the scalar one of ingestion."""

from __future__ import annotations

import numpy as np
import pytest

from spectra.forward.continuum import BATCH_TOLERANCE, BatchNormaliser, pseudo_continuum
from spectra.forward.degrade import add_noise
from spectra.forward.rotation import Rotator
from spectra.wavegrid import HR_PIXEL, hr_grid


def _spectra(n: int, seed: int) -> np.ndarray:
    """Noisy, rotated spectra with broad and narrow lines, S/N 10-1000 per Å (no shared data needed)."""
    grid = hr_grid()
    wave = grid.wave
    rng = np.random.default_rng(seed)
    flux = np.ones((n, wave.size))
    for i in range(n):
        for centre in rng.uniform(wave[0], wave[-1], 400):
            flux[i] *= 1 - rng.uniform(0, 0.6) * np.exp(-0.5 * ((wave - centre) / rng.uniform(0.05, 0.3)) ** 2)
        # a broad Balmer-like line that empties a knot interval in some rows
        flux[i] *= 1 - rng.uniform(0, 0.7) * np.exp(-np.abs(wave - 6562.8) / rng.uniform(1, 30))
        flux[i] *= 1 + 0.02 * np.sin((wave - wave[0]) / rng.uniform(50, 300))  # a sloping, wavy continuum
    flux = Rotator(grid)(flux, np.exp(rng.uniform(0, np.log(100), n)))
    return add_noise(flux, np.exp(rng.uniform(np.log(10), np.log(1000), n)), HR_PIXEL, rng)


def test_batched_continuum_equals_the_ingestion_fit():
    wave = hr_grid().wave
    noisy = _spectra(24, seed=3)
    reference = np.stack([pseudo_continuum(wave, f) for f in noisy])
    batched = BatchNormaliser(wave).continuum(noisy)
    assert np.max(np.abs(batched / reference - 1)) <= BATCH_TOLERANCE
    normalised = BatchNormaliser(wave)(noisy)
    assert np.allclose(normalised, noisy / reference, rtol=BATCH_TOLERANCE, atol=0)


def test_batched_continuum_drops_knots_like_the_scalar_fit():
    """A line broad enough to empty a 40 Å interval: the scalar fit drops the knot; so must the batched one
    (a fit in the full basis would differ by percent there)."""
    wave = hr_grid().wave
    flux = np.ones((2, wave.size))
    flux[0] *= 1 - 0.8 * np.exp(-np.abs(wave - 6562.8) / 25.0)
    flux[1] *= 1 - 0.8 * np.exp(-np.abs(wave - 5300.0) / 30.0)
    # noise: a noiseless pure continuum makes the clipping sigma ~1e-16 and both fits chaotic
    flux = add_noise(flux, 500.0, HR_PIXEL, np.random.default_rng(0))
    reference = np.stack([pseudo_continuum(wave, f) for f in flux])
    stretch = BatchNormaliser(wave).stretches[1]
    assert stretch.knots.size > 5
    assert np.max(np.abs(BatchNormaliser(wave).continuum(flux) / reference - 1)) <= BATCH_TOLERANCE


def test_rows_with_gaps_fall_back_to_the_scalar_fit():
    wave = hr_grid().wave
    noisy = _spectra(2, seed=5)
    noisy[1, 100:200] = np.nan
    batched = BatchNormaliser(wave).continuum(noisy)
    assert np.allclose(batched[1], pseudo_continuum(wave, noisy[1]), equal_nan=True)
    assert np.max(np.abs(batched[0] / pseudo_continuum(wave, noisy[0]) - 1)) <= BATCH_TOLERANCE


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match="flux must be"):
        BatchNormaliser(hr_grid().wave).continuum(np.ones((2, 10)))
