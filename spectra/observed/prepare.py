"""Preparation steps that turn an observed spectrum into what the network was trained on.

Each step is a small function; ``spectra.observed.ingest`` chains them (air wavelengths → rest frame →
resolution → HR pixels → pseudo-continuum → S/N). See ``spectra.observed.rv`` for the radial velocity and
``spectra.forward.continuum`` for the normaliser.

Resolution: a training spectrum is a synthesis at R = 80 000 (the working grid) convolved with the
R = 20 000 line-spread function, so its Gaussian resolution is
``TRAINING_RESOLUTION`` = (1/80 000² + 1/20 000²)^-1/2 ≈ 19 403. An observed spectrum at R_in is
convolved with a Gaussian of R_k = (1/R_t² − 1/R_in²)^-1/2 (the quadrature difference) to reach it.
Spectra below ``MIN_RESOLUTION`` cannot be matched; they are flagged, never silently used.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..contracts.flags import MIN_RESOLUTION_FRACTION
from ..forward.degrade import gaussian_broaden
from ..wavegrid import HR_RESOLUTION, WORKING_RESOLUTION, WavelengthGrid

__all__ = [
    "MIN_RESOLUTION",
    "TRAINING_RESOLUTION",
    "contiguous",
    "match_resolution",
    "rebin_pixels",
    "resample_to_grid",
    "snr_per_angstrom",
]

TRAINING_RESOLUTION = float(1.0 / np.sqrt(1.0 / WORKING_RESOLUTION**2 + 1.0 / HR_RESOLUTION**2))
#: below this an input spectrum is flagged LOW_RESOLUTION (3 % under the 4MOST HR R = 20 000)
MIN_RESOLUTION = MIN_RESOLUTION_FRACTION * HR_RESOLUTION


def contiguous(wave: np.ndarray, max_gap: float = 1.0) -> list[slice]:
    """Slices of ``wave`` without a gap wider than ``max_gap`` Å (detector gaps, order gaps)."""
    breaks = np.flatnonzero(np.diff(wave) > max_gap) + 1
    edges = np.concatenate([[0], breaks, [wave.size]])
    return [slice(a, b) for a, b in itertools.pairwise(edges) if b - a > 1]


def match_resolution(wave: np.ndarray, flux: np.ndarray, resolution_in: float,
                     target: float = TRAINING_RESOLUTION) -> np.ndarray:
    """Convolve to the ``target`` resolving power (Gaussian of the quadrature difference), per stretch.

    An input at or below the target (within 0.1 %) is returned unchanged: it cannot be sharpened.
    NaN pixels are interpolated over for the convolution and set back to NaN afterwards.
    """
    flux = np.asarray(flux, dtype=float)
    if resolution_in <= target * 1.001:
        return flux.copy()
    kernel_r = 1.0 / np.sqrt(1.0 / target**2 - 1.0 / resolution_in**2)
    out = np.full(flux.size, np.nan)
    for s in contiguous(wave):
        w, f = wave[s], flux[s]
        good = np.isfinite(f)
        if good.sum() < 10:
            continue
        filled = np.interp(w, w[good], f[good])
        conv = gaussian_broaden(w, filled, kernel_r, w)
        conv[~good] = np.nan
        out[s] = conv
    return out


def rebin_pixels(wave: np.ndarray, flux: np.ndarray, wave_out: np.ndarray, width: float) -> np.ndarray:
    """Flux-conserving rebin that treats input pixels as bins (edges halfway between centres).

    Unlike ``degrade.rebin`` (made for finely sampled model spectra, which it integrates as a
    piecewise-linear function), this does not smooth data already on the output pixels: an
    identical grid is returned unchanged, a half-pixel shift averages two pixels. Output pixels not
    fully inside the input's span are NaN.
    """
    mid = 0.5 * (wave[1:] + wave[:-1])
    edges_in = np.concatenate([[wave[0] - (mid[0] - wave[0])], mid, [wave[-1] + (wave[-1] - mid[-1])]])
    cumulative = np.concatenate([[0.0], np.cumsum(flux * np.diff(edges_in))])
    lo, hi = wave_out - width / 2, wave_out + width / 2
    inside = (lo >= edges_in[0]) & (hi <= edges_in[-1])
    out = np.full(wave_out.size, np.nan)
    out[inside] = (np.interp(hi[inside], edges_in, cumulative) - np.interp(lo[inside], edges_in, cumulative)) / width
    return out


def resample_to_grid(wave: np.ndarray, flux: np.ndarray, grid: WavelengthGrid) -> np.ndarray:
    """:func:`rebin_pixels` onto ``grid``, per contiguous stretch; NaN where no data cover a pixel or
    where a pixel overlaps a NaN input pixel."""
    out = np.full(grid.size, np.nan)
    for s in contiguous(wave):
        w, f = wave[s], flux[s]
        good = np.isfinite(f)
        if good.sum() < 2:
            continue
        values = rebin_pixels(w, np.where(good, f, 0.0), grid.wave, grid.step)
        touched_bad = rebin_pixels(w, (~good).astype(float), grid.wave, grid.step)
        take = np.isfinite(values) & (touched_bad == 0)
        out[take] = values[take]
    return out


def snr_per_angstrom(wave: np.ndarray, flux: np.ndarray, error: np.ndarray | None,
                     windows: list[tuple[float, float]]) -> tuple[float, str]:
    """Median S/N per Å over ``windows`` and how it was obtained (``error`` column or ``DER_SNR``).

    Per-pixel S/N (f/σ, or the DER_SNR estimate of Stoehr et al. 2008 per stretch) times
    sqrt(1 Å / pixel width): the same per-Å convention as the training noise (``degrade``).
    DER_SNR assumes uncorrelated pixels; on resampled archive spectra it overestimates S/N.
    """
    from ..forward.degrade import der_snr

    inside = np.zeros(wave.size, dtype=bool)
    for lo, hi in windows:
        inside |= (wave >= lo) & (wave < hi)
    if inside.sum() < 20:
        return float("nan"), "none"
    pixel = float(np.median(np.diff(wave[inside])))
    if error is not None and np.isfinite(error[inside]).any() and np.nanmedian(error[inside]) > 0:
        ok = inside & np.isfinite(error) & (error > 0) & np.isfinite(flux)
        return float(np.median(flux[ok] / error[ok]) * np.sqrt(1.0 / pixel)), "error column"
    per_pixel = []
    for s in contiguous(wave):
        sel = inside[s]
        if sel.sum() > 50:
            per_pixel.append((der_snr(flux[s][sel]), sel.sum()))
    if not per_pixel:
        return float("nan"), "none"
    values = np.array([v for v, _ in per_pixel])
    weights = np.array([n for _, n in per_pixel], dtype=float)
    return float(np.average(values, weights=weights) * np.sqrt(1.0 / pixel)), "DER_SNR"
