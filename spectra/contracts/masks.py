"""Wavelength bands the forward model cannot make: one definition for the calibration, the benchmarks and (next)
the bundle's pixel mask (issue 20).

* **Telluric**: the O₂ γ band (6276–6320 Å, air) lies in the red HR window; every ground-based spectrum carries it
  and no synthesis does. (Weak H₂O lines beyond ~6470 Å are not listed yet: the shared data hold no telluric line
  list, and their place in a star's rest frame moves with its barycentric and radial velocity.)
* **Chromospheric**: the Hα core forms in the chromosphere; in the Sun it is 20 % deeper than any 1D LTE
  photospheric synthesis (``benchmarks/results/linelist_sun.md``).

Bands are (start, end) in air Å; :func:`band_mask` pads each by ``pad`` Å (the R 20 000 line-spread function
reaches ~1 Å).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CHROMOSPHERIC_CORES_AIR", "MODEL_INVALID_BANDS_AIR", "TELLURIC_BANDS_AIR", "band_mask"]

#: air wavelength bands dominated by telluric absorption in ground-based spectra (O₂ γ band)
TELLURIC_BANDS_AIR: tuple[tuple[float, float], ...] = ((6276.0, 6320.0),)
#: air wavelength bands a 1D LTE photosphere cannot make (the Hα core)
CHROMOSPHERIC_CORES_AIR: tuple[tuple[float, float], ...] = ((6561.8, 6563.8),)
#: everything the forward model is not trusted to reproduce
MODEL_INVALID_BANDS_AIR = TELLURIC_BANDS_AIR + CHROMOSPHERIC_CORES_AIR


def band_mask(wave_air: np.ndarray, bands: tuple[tuple[float, float], ...] = MODEL_INVALID_BANDS_AIR,
              pad: float = 1.0) -> np.ndarray:
    """True for the pixels of ``wave_air`` within ``pad`` Å of one of ``bands``."""
    wave_air = np.asarray(wave_air, dtype=float)
    out = np.zeros(wave_air.shape, dtype=bool)
    for lo, hi in bands:
        out |= (wave_air > lo - pad) & (wave_air < hi + pad)
    return out
