"""Example observed-like files made from synthetic spectra (no real 4MOST data exist yet).

:func:`fourmost_l1_from_grid` writes grid rows as a 4MOST L1-style FITS file (``readers.write_fourmost_l1``):
noise at a given S/N per Å with its ``ERR_FLUX``, an optional Doppler shift, and a smooth non-flat
continuum (a 6000 K blackbody shape times a slow ripple), so that ingestion has real work to do:
find the RV, normalise, estimate nothing it was told. The noise of grid row r is drawn from its noise stream
``SeedSequence([seed, r, NOISE])`` (``spectra.contracts.streams``), the same stream ``spectra survey`` would use for a
spectrum with source_id r, and never the stream of the posterior's latent draws.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contracts.streams import NOISE, check_seed, stream_rng
from ..forward.degrade import C_KMS, add_noise, noise_sigma
from ..stores.gridstore import GridReader
from .prepare import TRAINING_RESOLUTION
from .readers import write_fourmost_l1

__all__ = ["fourmost_l1_from_grid", "smooth_continuum"]


def smooth_continuum(wave: np.ndarray, temperature: float = 6000.0) -> np.ndarray:
    """A blackbody shape (normalised at 6000 Å) times a 3 % ripple of 150 Å period: a 'raw' continuum."""
    hc_k = 1.4387769e8  # Å K
    planck = wave**-5 / np.expm1(hc_k / (wave * temperature))
    ref = 6000.0**-5 / np.expm1(hc_k / (6000.0 * temperature))
    return planck / ref * (1.0 + 0.03 * np.sin(2 * np.pi * wave / 150.0))


def fourmost_l1_from_grid(grid_path: str | Path, rows: list[int], out: str | Path, snr: float = 100.0,
                          seed: int = 0, rv_kms: float | list[float] = 0.0, raw_continuum: bool = True) -> Path:
    """Grid rows → noisy 4MOST L1-style file (one table row per spectrum, resolving power stated as the
    grid's own, ``prepare.TRAINING_RESOLUTION``, so that ingestion does not broaden them again)."""
    seed = check_seed(seed, "--seed")
    rvs = np.broadcast_to(np.asarray(rv_kms, dtype=float), (len(rows),))
    spectra = []
    with GridReader(grid_path) as grid:
        wave = grid.wavelength
        pixel = float(np.median(np.diff(wave)))
        for i, row in enumerate(rows):
            clean = grid.flux[row, :].astype(float)
            noisy = add_noise(clean, snr, pixel, stream_rng(seed, row, NOISE))
            error = noise_sigma(clean, snr, pixel)
            scale = smooth_continuum(wave) if raw_continuum else np.ones_like(wave)
            observed_wave = wave * (1.0 + rvs[i] / C_KMS)
            spectra.append({"wave": observed_wave, "flux": noisy * scale, "error": error * scale,
                            "name": f"grid{row}", "target_id": int(row)})
    return write_fourmost_l1(out, spectra, resolution=TRAINING_RESOLUTION)
