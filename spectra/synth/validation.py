"""Checks of the synthetic spectra against observations and against themselves.

Used by the tests and by ``benchmarks/synthesis_validation.py`` (which writes the committed
report), so both measure exactly the same thing:

* :func:`compare_with_observed`: an observed, continuum-normalised spectrum (air) degraded the
  same way as ours (Gaussian LSF to R = 20 000, rebinned to the HR pixels) vs a synthetic HR
  spectrum: rms per window over the pixels the observation covers.
* :func:`leave_one_out`: remove a MARCS T_eff column around a grid model, interpolate the
  atmosphere at the model's parameters across the doubled gap, synthesise with both, compare at
  R = 20 000.
* :func:`metallicity_scan`: HR spectra along [M/H] at fixed (T_eff, log g) through the coverage
  gaps, and the rms step between neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..forward.degrade import gaussian_broaden, rebin
from ..wavegrid import HR_RESOLUTION, WavelengthGrid
from .atmospheres import AtmosphereGrid
from .synthesis import PySMEEngine, SpectrumMaker, labels_from_values

__all__ = ["compare_with_observed", "leave_one_out", "load_text_spectrum", "metallicity_scan"]


def load_text_spectrum(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.loadtxt(path, comments="#")
    return data[:, 0], data[:, 1]


def compare_with_observed(hr_flux: np.ndarray, hr: WavelengthGrid, wave_obs: np.ndarray, flux_obs: np.ndarray,
                          gaps: list[tuple[float, float]] = (), resolution: float = HR_RESOLUTION
                          ) -> dict[str, dict[str, float]]:
    """rms and mean of (synthetic - observed) per HR window, where the observation has data."""
    out = {}
    for name, s in zip(hr.window_names, hr.segments, strict=True):
        wave = hr.wave[s]
        sel = (wave - hr.step > wave_obs[0] + 1.0) & (wave + hr.step < wave_obs[-1] - 1.0)
        for lo, hi in gaps:
            sel &= ~((wave > lo - 1.0) & (wave < hi + 1.0))
        if sel.sum() < 100:
            continue
        used = wave[sel]
        k = (wave_obs > used[0] - 3.0) & (wave_obs < used[-1] + 3.0)
        smooth = gaussian_broaden(wave_obs[k], flux_obs[k], resolution, wave_obs[k])
        observed = rebin(wave_obs[k], smooth, used, hr.step)
        resid = hr_flux[s][sel] - observed
        out[name] = {"rms": float(np.sqrt(np.mean(resid**2))), "mean": float(resid.mean()),
                     "pixels": int(sel.sum()), "from": float(used[0]), "to": float(used[-1])}
    return out


@dataclass
class LeaveOneOut:
    teff: float
    logg: float
    monh: float
    geometry: str
    rms: float
    max_abs: float
    method: str


def leave_one_out(grid: AtmosphereGrid, points: list[tuple[float, float, float]], vbroad: float = 2.0,
                  linelist=None) -> list[LeaveOneOut]:
    """For each grid model (T_eff, log g, [M/H]): synthesis from the true model vs from neighbours."""
    results = []
    for teff, logg, monh in points:
        geometry = grid.geometry_for(logg)
        same_column = (grid.geometry == geometry) & (grid.params[:, 0] == teff) & (grid.params[:, 2] == monh)
        if not same_column.any():
            raise ValueError(f"no {geometry} grid model at T_eff = {teff}, [M/H] = {monh}")
        reduced = grid.subset(~same_column)
        labels = labels_from_values(teff, logg, monh, 1.0, vbroad)
        true_flux, _ = SpectrumMaker(PySMEEngine(grid, linelist)).hr_spectrum(labels)
        interp_flux, syn = SpectrumMaker(PySMEEngine(reduced, linelist)).hr_spectrum(labels)
        diff = interp_flux - true_flux
        results.append(LeaveOneOut(teff, logg, monh, geometry, float(np.sqrt(np.mean(diff**2))),
                                   float(np.max(np.abs(diff))), syn.atmosphere_method))
    return results


def metallicity_scan(teff: float, logg: float, fehs: np.ndarray, vbroad: float = 3.0,
                     maker: SpectrumMaker | None = None) -> dict[str, object]:
    """HR spectra along [Fe/H] = [M/H]; rms step between neighbours and the atmosphere methods used."""
    maker = maker or SpectrumMaker()
    fluxes, methods = [], []
    for feh in fehs:
        flux, syn = maker.hr_spectrum(labels_from_values(teff, logg, float(feh), 1.0, vbroad))
        fluxes.append(flux)
        methods.append(syn.atmosphere_method)
    fluxes = np.array(fluxes)
    steps = np.sqrt(np.mean(np.diff(fluxes, axis=0) ** 2, axis=1))
    return {"feh": np.asarray(fehs), "steps": steps, "methods": methods,
            "max_over_median": float(steps.max() / np.median(steps)), "fluxes": fluxes}
