"""Astrophysical log gf and van der Waals damping from the solar spectrum (issue 20), the way surveys tune lists.

Laboratory log gf and damping constants carry errors of 0.1-0.5 dex for many lines; a synthetic Sun made with them
differs from the observed one by 2-3 % rms at R 20 000, far above the noise a network learns to read. Surveys
(Gaia-ESO, GALAH, APOGEE) therefore adjust them, within bounds, until a synthesis of the Sun matches the solar
spectrum. This module does that by regularised, bounded Gauss-Newton on the 4MOST HR pixels:

* **Parameters**: Δlog gf of every line that is visible in the Sun (PySME central depth ≥ :data:`VISIBLE_DEPTH`)
  and Δlog γ_vdW of the strong ones (≥ :data:`STRONG_DEPTH`: Mg b, Ca I, the strong Fe I lines, whose wings
  measure log g). Each is bounded (:data:`GF_BOUND`, :data:`VDW_BOUND` dex) and pulled towards zero (Tikhonov,
  :data:`RIDGE`), so a line changes only as much as the spectrum demands; blends are fitted jointly.
* **Jacobian at the cost of a few dozen syntheses**: lines whose influence intervals (a few resolution elements,
  wider for strong lines' wings) do not overlap are perturbed together in one synthesis, and each pixel's change is
  credited to the one perturbed line it lies near.
* **Tellurics**: the O₂ γ band is masked; remaining telluric pixels (lines no parameter can explain) are
  down-weighted after the first pass by a robust (Huber) weight.

Every change is recorded (line, old and new value, the parameter's Jacobian norm), so the calibrated list is
reproducible from its inputs and auditable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .degrade import gaussian_broaden, rebin
from .linelists import LineListData
from .wavegrid import HR_RESOLUTION, WavelengthGrid, hr_grid

__all__ = ["GF_BOUND", "MIN_JACOBIAN", "RIDGE", "STRONG_DEPTH", "SUN", "TELLURIC_BANDS_AIR", "VDW_BOUND",
           "VISIBLE_DEPTH", "Calibration", "calibrate_linelist", "calibrate_to_sun", "observed_on_hr",
           "parameter_groups"]

#: lines at least this deep (PySME central depth in the Sun) get a log gf parameter
VISIBLE_DEPTH = 0.03
#: lines at least this deep also get a damping parameter (their wings are resolved at R 20 000)
STRONG_DEPTH = 0.6
GF_BOUND, VDW_BOUND = 0.5, 0.5  # dex
RIDGE = 0.3  # Tikhonov weight, in units of the residual rms per dex of change (see calibrate_to_sun)
#: a parameter is fitted only if a change of 1 dex moves the usable pixels by at least this (Jacobian column norm):
#: lines outside the observed pixels, or buried in a blend, stay as they are instead of drifting to a bound
MIN_JACOBIAN = 0.02
STEP = 0.1  # dex of the finite-difference perturbation
#: air wavelength bands dominated by telluric absorption in ground-based spectra (O2 gamma band)
TELLURIC_BANDS_AIR = ((6276.0, 6320.0),)
#: the Sun's labels for the synthesis: T_eff, log g, [Fe/H], v_mic, v_broad (rotation + macroturbulence)
SUN = (5772.0, 4.44, 0.0, 1.0, 3.5)
_RADIUS_WEAK, _RADIUS_STRONG = 0.8, 6.0  # Å of influence at R 20 000 (weak lines; strong lines' wings)


@dataclass
class Calibration:
    lines: pd.DataFrame  # the calibrated list (vacuum)
    changes: pd.DataFrame  # one row per changed parameter
    rms_before: dict[str, float]
    rms_after: dict[str, float]
    history: list[dict] = field(default_factory=list)


def observed_on_hr(wave_obs: np.ndarray, flux_obs: np.ndarray, hr: WavelengthGrid | None = None,
                   gaps: tuple[tuple[float, float], ...] = (), resolution: float = HR_RESOLUTION
                   ) -> tuple[np.ndarray, np.ndarray]:
    """An observed normalised spectrum (air Å) degraded to R ``resolution`` on the HR pixels, and the mask of pixels
    it covers outside ``gaps`` and the telluric bands."""
    hr = hr or hr_grid()
    flux = np.full(hr.wave.size, np.nan)
    covered = (hr.wave - hr.step > wave_obs[0] + 1.0) & (hr.wave + hr.step < wave_obs[-1] - 1.0)
    for s in hr.segments:
        pixels = np.flatnonzero(covered[s]) + s.start
        if pixels.size < 100:
            continue
        wave = hr.wave[pixels]
        k = (wave_obs > wave[0] - 3.0) & (wave_obs < wave[-1] + 3.0)
        smooth = gaussian_broaden(wave_obs[k], flux_obs[k], resolution, wave_obs[k])
        flux[pixels] = rebin(wave_obs[k], smooth, wave, hr.step)
    usable = np.isfinite(flux) & covered
    for lo, hi in (*gaps, *TELLURIC_BANDS_AIR):
        usable &= ~((hr.wave > lo - 1.0) & (hr.wave < hi + 1.0))
    return np.where(usable, flux, 1.0), usable


def _radius(depth: np.ndarray) -> np.ndarray:
    return np.where(depth >= STRONG_DEPTH, _RADIUS_STRONG, _RADIUS_WEAK)


def parameter_groups(wave_air: np.ndarray, radius: np.ndarray) -> list[np.ndarray]:
    """Split parameters into groups whose influence intervals [λ - r, λ + r] do not overlap (greedy, in wavelength
    order): one synthesis per group gives every member's derivative."""
    order = np.argsort(wave_air)
    ends: list[float] = []  # right edge of the last interval of each group
    members: list[list[int]] = []
    for i in order:
        left = wave_air[i] - radius[i]
        for g, end in enumerate(ends):
            if left > end:
                members[g].append(int(i))
                ends[g] = wave_air[i] + radius[i]
                break
        else:
            members.append([int(i)])
            ends.append(wave_air[i] + radius[i])
    return [np.array(m) for m in members]


def _apply(lines: pd.DataFrame, gf: np.ndarray, vdw: np.ndarray) -> pd.DataFrame:
    """Lines with log gf + ``gf`` and van der Waals broadening scaled by 10^``vdw`` (log γ6 shifted, or the ABO
    cross-section σ of a ``σ.α`` entry scaled; a 0 entry, Unsöld's approximation, is left alone)."""
    out = lines.copy()
    out["gflog"] = lines["gflog"].to_numpy() + gf
    g = lines["gamvw"].to_numpy().copy()
    log_form, abo = g < 0, g > 20
    g[log_form] += vdw[log_form]
    sigma, alpha = np.floor(g[abo]), g[abo] - np.floor(g[abo])
    g[abo] = np.floor(sigma * 10 ** vdw[abo]) + alpha
    out["gamvw"] = g
    return out


def _synthesise(lines: pd.DataFrame) -> np.ndarray:
    """The Sun on the HR pixels with these lines (a worker job: one PySME synthesis)."""
    from .synthesis import PySMEEngine, SpectrumMaker, labels_from_values

    logging.getLogger("pysme").setLevel(logging.ERROR)
    maker = SpectrumMaker(PySMEEngine(linelist=LineListData(lines, "calibration")))
    return maker.hr_spectrum(labels_from_values(*SUN))[0]


def _jacobian(lines: pd.DataFrame, gf: np.ndarray, vdw: np.ndarray, params: list[tuple[int, str]],
              groups: list[np.ndarray], radius: np.ndarray, wave_air: np.ndarray, hr: WavelengthGrid,
              pool: ProcessPoolExecutor, log: Callable[[str], None]):
    """Base spectrum and the sparse Jacobian (pixels x parameters) at the current changes."""
    from scipy import sparse

    jobs = [_apply(lines, gf, vdw)]
    for group in groups:
        dgf, dvdw = gf.copy(), vdw.copy()
        for p in group:
            line, kind = params[p]
            (dgf if kind == "gf" else dvdw)[line] += STEP
        jobs.append(_apply(lines, dgf, dvdw))
    spectra = list(pool.map(_synthesise, jobs))
    base = spectra[0]
    rows, cols, values = [], [], []
    for group, flux in zip(groups, spectra[1:], strict=True):
        change = (flux - base) / STEP
        for p in group:
            line = params[p][0]
            near = np.flatnonzero(np.abs(hr.wave - wave_air[line]) <= radius[p])
            rows.append(near)
            cols.append(np.full(near.size, p))
            values.append(change[near])
    log(f"jacobian: {len(jobs)} syntheses")
    jac = sparse.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                            shape=(hr.wave.size, len(params)))
    return base, jac


def _rms(resid: np.ndarray, usable: np.ndarray, hr: WavelengthGrid) -> dict[str, float]:
    return {name: float(np.sqrt(np.mean(resid[s][usable[s]] ** 2)))
            for name, s in zip(hr.window_names, hr.segments, strict=True)}


def calibrate_to_sun(lines: pd.DataFrame, solar_depth: np.ndarray, observed: np.ndarray, usable: np.ndarray,
                     iterations: int = 3, workers: int = 2, log: Callable[[str], None] = print) -> Calibration:
    """Bounded, regularised Gauss-Newton of log gf and vdW damping against an observed solar spectrum.

    Arguments:
        lines: the line list (vacuum, :data:`spectra.linelists.COLUMNS`).
        solar_depth: PySME central depth of each line in the Sun (``linelist_survey.central_depths``).
        observed, usable: the solar spectrum on the HR pixels and its usable pixels (:func:`observed_on_hr`).
    """
    from scipy.optimize import lsq_linear
    from scipy.sparse import diags, vstack

    from .wavegrid import vacuum_to_air

    hr = hr_grid()
    lines = lines.reset_index(drop=True)
    wave_air = vacuum_to_air(lines["wlcent"].to_numpy())
    visible = np.flatnonzero(solar_depth >= VISIBLE_DEPTH)
    strong = np.flatnonzero((solar_depth >= STRONG_DEPTH) & ((lines["gamvw"].to_numpy() < 0)
                                                            | (lines["gamvw"].to_numpy() > 20)))
    params = [(int(i), "gf") for i in visible] + [(int(i), "vdw") for i in strong]
    radius = np.array([_radius(solar_depth[i : i + 1])[0] for i, _ in params])
    wave_params = np.array([wave_air[i] for i, _ in params])
    groups = parameter_groups(wave_params, radius)
    log(f"{len(visible)} log gf and {len(strong)} damping parameters in {len(groups)} groups")
    bound = np.array([GF_BOUND if k == "gf" else VDW_BOUND for _, k in params])
    gf, vdw = np.zeros(len(lines)), np.zeros(len(lines))
    weights = usable.astype(float)
    history, rms_before = [], None
    current = np.zeros(len(params))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for it in range(iterations):
            base, jac = _jacobian(lines, gf, vdw, params, groups, radius, wave_air, hr, pool, log)
            if it == 0:  # parameters the observed pixels cannot measure are held fixed
                norms = np.sqrt(np.asarray(jac[usable].power(2).sum(axis=0))).ravel()
                measured = norms >= MIN_JACOBIAN
                bound = np.where(measured, bound, 1e-9)
                log(f"{int(measured.sum())} of {len(params)} parameters measurable (Jacobian norm >= {MIN_JACOBIAN})")
            resid = observed - base
            rms = _rms(-resid, usable, hr)
            rms_before = rms_before or rms
            scale = float(np.sqrt(np.mean(resid[usable] ** 2)))
            if it > 0:  # Huber weights: pixels no parameter explains (tellurics, missing lines) count less
                cut = 3.0 * 1.4826 * np.median(np.abs(resid[usable]))
                weights = usable * np.minimum(1.0, cut / np.maximum(np.abs(resid), 1e-12))
            w = diags(np.sqrt(weights))
            ridge = diags(np.full(len(params), RIDGE * scale))
            a = vstack([w @ jac, ridge]).tocsr()
            b = np.concatenate([np.sqrt(weights) * resid, -RIDGE * scale * current])
            step = lsq_linear(a, b, bounds=(-bound - current, bound - current), lsmr_tol="auto", max_iter=200).x
            current = current + step
            for p, (line, kind) in enumerate(params):
                (gf if kind == "gf" else vdw)[line] = current[p]
            history.append({"iteration": it, "rms": rms, "max_step": float(np.abs(step).max()),
                            "fitted": int(measured.sum()),
                            "at_bound": int((measured & (np.abs(current) >= bound - 1e-6)).sum())})
            log(f"iteration {it}: rms {rms} -> step max {np.abs(step).max():.3f} dex")
        final = _synthesise(_apply(lines, gf, vdw))
    rms_after = _rms(final - observed, usable, hr)
    log(f"after: {rms_after}")
    calibrated = _apply(lines, gf, vdw)
    norms = np.sqrt(np.asarray(jac.power(2).sum(axis=0))).ravel()
    changes = pd.DataFrame([{
        "species": lines.at[i, "species"], "wlcent": lines.at[i, "wlcent"], "excit": lines.at[i, "excit"],
        "parameter": "log_gf" if kind == "gf" else "vdw_dex",
        "old": float(lines.at[i, "gflog"] if kind == "gf" else lines.at[i, "gamvw"]),
        "new": float(calibrated.at[i, "gflog"] if kind == "gf" else calibrated.at[i, "gamvw"]),
        "change_dex": float(current[p]), "jacobian_norm": float(norms[p]), "reference": lines.at[i, "reference"]}
        for p, (i, kind) in enumerate(params) if abs(current[p]) > 1e-3])
    return Calibration(calibrated, changes, rms_before, rms_after, history)



#: gaps of the UVES solar spectrum of the shared data (Å, air): no data there
UVES_GAPS = ((5759.0, 5828.0), (6066.0, 6074.0))
#: lines shallower than this in the Sun cannot change its spectrum: left out of the solar syntheses
_SOLAR_NEGLIGIBLE = 1e-3


def calibrate_linelist(lines: pd.DataFrame, solar_spectrum: str | Path, iterations: int = 3, workers: int = 2,
                       gaps: tuple[tuple[float, float], ...] = UVES_GAPS, log: Callable[[str], None] = print
                       ) -> Calibration:
    """The whole list with its solar-visible lines calibrated against ``solar_spectrum`` (two columns: air Å,
    normalised flux); lines too weak in the Sun keep their values (``Calibration.lines`` is the whole list)."""
    from .linelist_survey import central_depths
    from .validation import load_text_spectrum

    lines = lines.reset_index(drop=True)
    depth = central_depths(lines, SUN[:4])
    seen = depth >= _SOLAR_NEGLIGIBLE
    log(f"{int(seen.sum())} of {len(lines)} lines matter in the Sun (central depth >= {_SOLAR_NEGLIGIBLE:g})")
    wave, flux = load_text_spectrum(solar_spectrum)
    observed, usable = observed_on_hr(wave, flux, gaps=gaps)
    result = calibrate_to_sun(lines[seen], depth[seen], observed, usable, iterations, workers, log)
    whole = lines.copy()
    whole.loc[np.flatnonzero(seen), ["gflog", "gamvw"]] = result.lines[["gflog", "gamvw"]].to_numpy()
    result.lines = whole
    return result
