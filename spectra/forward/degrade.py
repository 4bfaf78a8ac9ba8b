"""Post-processing as in Ksoll et al. (2026, Sect. 2.1): broaden, resample, 4MOST-ify, add noise.

Chain for one synthetic spectrum (all wavelengths in air):

1. :func:`gaussian_broaden` to R = 80 000 and sample on the 0.025 Å working grid
   (:func:`to_working_grid`);
2. :func:`rotational_broaden` by v_broad with the limb-darkened kernel of Gray (2005, Eq. 18.14),
   linear limb darkening epsilon = 0.6;
3. :func:`fourmostify`: Gaussian line-spread function to R = 20 000, then flux-conserving
   :func:`rebin` onto the 4MOST HR pixel grid (0.05 Å);
4. :func:`add_noise` at a requested S/N **per Å** (paper Eq. 1: sigma_i proportional to f_i).

S/N per Å vs per pixel: the noise of a sum over 1 Å (1/Δλ pixels of width Δλ Å) grows as the
square root of the number of pixels, so S/N_Å = S/N_pix · sqrt(1 Å / Δλ). On 0.05 Å pixels
S/N_pix = S/N_Å · sqrt(0.05) = 0.2236 · S/N_Å; e.g. S/N 250 per Å is 55.9 per pixel. The noise
added to pixel i is sigma_i = f_i / S/N_pix (Eq. 1 with the per-pixel S/N).

Convolutions happen in velocity space: each window is resampled to a uniform ln(λ) grid
(``VELOCITY_STEP`` km/s), convolved with a kernel of fixed width in km/s, and interpolated back.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve

from ..wavegrid import HR_RESOLUTION, WORKING_RESOLUTION, WavelengthGrid

__all__ = [
    "C_KMS",
    "add_noise",
    "der_snr",
    "fourmostify",
    "gaussian_broaden",
    "measure_snr_per_angstrom",
    "noise_sigma",
    "rebin",
    "rotational_broaden",
    "snr_per_pixel",
    "to_working_grid",
]

C_KMS = 299_792.458
VELOCITY_STEP = 0.25  # km/s, ln(λ) sampling for convolutions
LIMB_DARKENING = 0.6


def _velocity_convolve(wave: np.ndarray, flux: np.ndarray, kernel: np.ndarray, out_wave: np.ndarray,
                       dv: float = VELOCITY_STEP) -> np.ndarray:
    """Convolve ``flux(wave)`` with ``kernel`` (sampled at ``dv`` km/s) in ln λ; evaluate at ``out_wave``."""
    lnw = np.arange(np.log(wave[0]), np.log(wave[-1]), dv / C_KMS)
    f = np.interp(lnw, np.log(wave), flux)
    half = kernel.size // 2
    padded = np.concatenate([np.full(half, f[0]), f, np.full(half, f[-1])])  # continuum-like edges
    conv = fftconvolve(padded, kernel / kernel.sum(), mode="valid")
    return np.interp(np.log(out_wave), lnw, conv)


def _gaussian_kernel(resolution: float, dv: float = VELOCITY_STEP) -> np.ndarray:
    sigma = C_KMS / resolution / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    x = np.arange(-int(np.ceil(5 * sigma / dv)), int(np.ceil(5 * sigma / dv)) + 1) * dv
    return np.exp(-0.5 * (x / sigma) ** 2)


def _rotation_kernel(vsini: float, epsilon: float = LIMB_DARKENING, dv: float = VELOCITY_STEP) -> np.ndarray:
    """Gray's rotation profile, averaged over each dv pixel (so small v sin i stays normalised)."""
    n = int(np.ceil(vsini / dv))
    sub = 20
    v = (np.arange(-(n + 1) * sub, (n + 1) * sub + 1) / sub) * dv
    x2 = np.clip(1.0 - (v / vsini) ** 2, 0.0, None)
    g = 2.0 * (1.0 - epsilon) * np.sqrt(x2) + 0.5 * np.pi * epsilon * x2
    # average consecutive sub-samples into dv-wide pixels centred on multiples of dv
    centres = np.arange(-(n + 1), n + 2) * dv
    idx = np.clip(np.round(v / dv).astype(int) + n + 1, 0, centres.size - 1)
    kernel = np.bincount(idx, weights=g, minlength=centres.size)
    return kernel if kernel.sum() > 0 else np.array([1.0])


def gaussian_broaden(wave: np.ndarray, flux: np.ndarray, resolution: float, out_wave: np.ndarray) -> np.ndarray:
    """Convolve with a Gaussian of FWHM λ/R (constant R) and evaluate at ``out_wave``."""
    return _velocity_convolve(wave, flux, _gaussian_kernel(resolution), out_wave)


def rotational_broaden(wave: np.ndarray, flux: np.ndarray, vsini: float,
                       epsilon: float = LIMB_DARKENING) -> np.ndarray:
    """Rotational broadening by ``vsini`` km/s (limb-darkened kernel), on the same grid."""
    if vsini <= 0:
        return np.array(flux, dtype=float, copy=True)
    return _velocity_convolve(wave, flux, _rotation_kernel(vsini, epsilon), wave)


def _per_segment(grid: WavelengthGrid, func, *arrays):
    return np.concatenate([func(grid.wave[s], *(a[s] for a in arrays)) for s in grid.segments])


def to_working_grid(segments: list[tuple[np.ndarray, np.ndarray]], working: WavelengthGrid,
                    resolution: float = WORKING_RESOLUTION) -> np.ndarray:
    """Synthetic spectrum (list of (air wave, flux) per window) -> R = 80 000 on the working grid."""
    if len(segments) != len(working.segments):
        raise ValueError(f"expected {len(working.segments)} synthesis windows, got {len(segments)}")
    out = []
    for (wave, flux), s in zip(segments, working.segments, strict=True):
        target = working.wave[s]
        if wave[0] > target[0] or wave[-1] < target[-1]:
            raise ValueError(
                f"synthesis covers {wave[0]:.2f}-{wave[-1]:.2f} A but the working window needs "
                f"{target[0]:.2f}-{target[-1]:.2f} A"
            )
        out.append(gaussian_broaden(wave, flux, resolution, target))
    return np.concatenate(out)


def rebin(wave_in: np.ndarray, flux_in: np.ndarray, wave_out: np.ndarray, width: float) -> np.ndarray:
    """Flux-conserving rebinning: mean of the (linearly interpolated) input over each output pixel.

    ``wave_out`` are pixel centres of width ``width``; the input must cover every output pixel.
    """
    if wave_out[0] - width / 2 < wave_in[0] - 1e-9 or wave_out[-1] + width / 2 > wave_in[-1] + 1e-9:
        raise ValueError("rebin: the input spectrum does not cover the output pixels")
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (flux_in[1:] + flux_in[:-1]) * np.diff(wave_in))])
    edges = np.concatenate([wave_out - width / 2, [wave_out[-1] + width / 2]])
    return np.diff(np.interp(edges, wave_in, cumulative)) / width


def fourmostify(working_flux: np.ndarray, vbroad: float, working: WavelengthGrid, hr: WavelengthGrid,
                resolution: float = HR_RESOLUTION) -> np.ndarray:
    """Working-grid spectrum -> rotational broadening -> R = 20 000 -> 4MOST HR pixels (noiseless)."""
    if working_flux.shape != working.wave.shape:
        raise ValueError(f"working flux has {working_flux.size} pixels; the working grid has {working.size}")
    rotated = _per_segment(working, lambda w, f: rotational_broaden(w, f, vbroad), working_flux)
    kernel = _gaussian_kernel(resolution)
    out = []
    for s_work, s_hr in zip(working.segments, hr.segments, strict=True):
        w = working.wave[s_work]
        lsf = _velocity_convolve(w, rotated[s_work], kernel, w)
        out.append(rebin(w, lsf, hr.wave[s_hr], hr.step))
    return np.concatenate(out)


def snr_per_pixel(snr_per_angstrom: np.ndarray | float, pixel_width: float) -> np.ndarray:
    """S/N per pixel of ``pixel_width`` Å for a given S/N per Å (see the module docstring)."""
    return np.asarray(snr_per_angstrom, dtype=float) * np.sqrt(pixel_width)


def noise_sigma(flux: np.ndarray, snr_per_angstrom: np.ndarray | float, pixel_width: float) -> np.ndarray:
    """Per-pixel noise sigma of paper Eq. 1 for flux array(s) ``flux`` (..., P) and S/N per Å (...,)."""
    snr_pix = snr_per_pixel(snr_per_angstrom, pixel_width)
    if snr_pix.ndim:
        snr_pix = snr_pix[..., None]
    return np.abs(flux) / snr_pix


def add_noise(flux: np.ndarray, snr_per_angstrom: np.ndarray | float, pixel_width: float,
              rng: np.random.Generator) -> np.ndarray:
    """Noisy copy of ``flux`` at S/N per Å (Eq. 1: Gaussian, sigma_i = f_i / S/N_pix)."""
    sigma = noise_sigma(flux, snr_per_angstrom, pixel_width)
    return flux + sigma * rng.standard_normal(np.shape(flux))


def measure_snr_per_angstrom(noisy: np.ndarray, noiseless: np.ndarray, pixel_width: float) -> float:
    """S/N per Å measured back from a noisy spectrum and its noiseless version."""
    rel = (noisy - noiseless) / noiseless
    return float(1.0 / np.std(rel) / np.sqrt(pixel_width))


def der_snr(flux: np.ndarray) -> float:
    """DER_SNR per-pixel S/N estimate from the data alone (Stoehr et al. 2008, ADASS XVII)."""
    f = np.asarray(flux, dtype=float)
    f = f[np.isfinite(f)]
    if f.size < 5:
        return float("nan")
    noise = 0.6052697 * np.median(np.abs(2.0 * f[2:-2] - f[:-4] - f[4:]))
    return float(np.median(f) / noise) if noise > 0 else float("inf")
