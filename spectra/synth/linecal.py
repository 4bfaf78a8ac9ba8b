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

from ..contracts.masks import MODEL_INVALID_BANDS_AIR, TELLURIC_BANDS_AIR, band_mask
from ..forward.degrade import gaussian_broaden, rebin
from ..wavegrid import HR_RESOLUTION, WavelengthGrid, hr_grid
from .linelists import LineListData

__all__ = ["GF_BOUND", "MIN_JACOBIAN", "RIDGE", "STRONG_DEPTH", "SUN", "VDW_BOUND",
           "VISIBLE_DEPTH", "Calibration", "calibrate_linelist", "calibrate_to_sun", "observed_on_hr",
           "parameter_groups", "recorded_gf_change", "refine_features", "residual_features"]

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
#: after the line-by-line pass, residual features deeper than this get a second pass (:func:`refine_features`)
FEATURE_THRESHOLD = 0.03
#: total change [dex] allowed in that pass to lines whose laboratory log gf is far off (beyond ``GF_BOUND``)
WIDE_BOUND = 1.5
#: a feature no line of the sources explains gets a pseudo-line (Fe I, 3.5 eV, Unsöld damping) whose log gf is
#: fitted within these limits, the practice of APOGEE/GALAH for unidentified solar lines
PSEUDO_LINE = {"species": "Fe 1", "excit": 3.5, "gflog": -2.0, "limits": (-6.0, 1.0),
               "reference": "pseudo-line: unidentified solar feature, log gf fitted to the UVES Sun (issue 20)"}
#: Å: a line within this of a feature's extremum is taken to make it
FEATURE_MATCH = 0.1
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
                   gaps: tuple[tuple[float, float], ...] = (), resolution: float = HR_RESOLUTION,
                   chromospheric_cores: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An observed normalised spectrum (air Å) degraded to R ``resolution`` on the HR pixels, and the mask of pixels
    it covers outside ``gaps``, the telluric bands and (unless ``chromospheric_cores``) the chromospheric line
    cores."""
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
    invalid = TELLURIC_BANDS_AIR if chromospheric_cores else MODEL_INVALID_BANDS_AIR
    usable &= ~band_mask(hr.wave, tuple(gaps) + invalid)
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
    """Per window (NaN for a window without usable pixels)."""
    return {name: float(np.sqrt(np.mean(resid[s][usable[s]] ** 2))) if usable[s].any() else float("nan")
            for name, s in zip(hr.window_names, hr.segments, strict=True)}


@dataclass
class _Fit:
    """Result of :func:`_gauss_newton`: the changes per line and the fit's bookkeeping."""

    gf: np.ndarray
    vdw: np.ndarray
    current: np.ndarray  # per parameter
    measured: np.ndarray  # per parameter: the pixels can measure it
    norms: np.ndarray  # per parameter: Jacobian column norm
    history: list[dict]
    rms_before: dict[str, float]
    rms_after: dict[str, float]


def _gauss_newton(lines: pd.DataFrame, params: list[tuple[int, str]], radius: np.ndarray, lower: np.ndarray,
                  upper: np.ndarray, ridge: np.ndarray, observed: np.ndarray, usable: np.ndarray, iterations: int,
                  workers: int, log: Callable[[str], None]) -> _Fit:
    """Bounded (``lower`` <= change <= ``upper`` per parameter), ridge-regularised (``ridge``: per-parameter weight of
    the pull towards no change) Gauss-Newton of ``params`` against ``observed`` on the ``usable`` pixels."""
    from scipy.optimize import lsq_linear
    from scipy.sparse import diags, vstack

    from ..wavegrid import vacuum_to_air

    hr = hr_grid()
    wave_air = vacuum_to_air(lines["wlcent"].to_numpy())
    groups = parameter_groups(np.array([wave_air[i] for i, _ in params]), radius)
    log(f"{len(params)} parameters in {len(groups)} groups")
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
                lower, upper = np.where(measured, lower, -1e-9), np.where(measured, upper, 1e-9)
                log(f"{int(measured.sum())} of {len(params)} parameters measurable (Jacobian norm >= {MIN_JACOBIAN})")
            resid = observed - base
            rms = _rms(-resid, usable, hr)
            rms_before = rms_before or rms
            scale = float(np.sqrt(np.mean(resid[usable] ** 2)))
            if it > 0:  # Huber weights: pixels no parameter explains (tellurics, missing lines) count less
                cut = 3.0 * 1.4826 * np.median(np.abs(resid[usable]))
                weights = usable * np.minimum(1.0, cut / np.maximum(np.abs(resid), 1e-12))
            w = diags(np.sqrt(weights))
            a = vstack([w @ jac, diags(ridge * scale)]).tocsr()
            b = np.concatenate([np.sqrt(weights) * resid, -ridge * scale * current])
            step = lsq_linear(a, b, bounds=(lower - current, upper - current), lsmr_tol="auto", max_iter=200).x
            current = current + step
            for p, (line, kind) in enumerate(params):
                (gf if kind == "gf" else vdw)[line] = current[p]
            at_bound = measured & ((current <= lower + 1e-6) | (current >= upper - 1e-6))
            history.append({"iteration": it, "rms": rms, "max_step": float(np.abs(step).max()),
                            "fitted": int(measured.sum()), "at_bound": int(at_bound.sum())})
            log(f"iteration {it}: rms {rms} -> step max {np.abs(step).max():.3f} dex")
        final = _synthesise(_apply(lines, gf, vdw))
    rms_after = _rms(final - observed, usable, hr)
    log(f"after: {rms_after}")
    return _Fit(gf, vdw, current, measured, norms, history, rms_before, rms_after)


def _change_rows(lines: pd.DataFrame, calibrated: pd.DataFrame, params: list[tuple[int, str]], fit: _Fit,
                 stage: str) -> list[dict]:
    """One record per changed parameter: line, old and new value, the Jacobian norm, the pass that changed it."""
    return [{"species": lines.at[i, "species"], "wlcent": lines.at[i, "wlcent"], "excit": lines.at[i, "excit"],
             "parameter": "log_gf" if kind == "gf" else "vdw_dex",
             "old": float(lines.at[i, "gflog"] if kind == "gf" else lines.at[i, "gamvw"]),
             "new": float(calibrated.at[i, "gflog"] if kind == "gf" else calibrated.at[i, "gamvw"]),
             "change_dex": float(fit.current[p]), "jacobian_norm": float(fit.norms[p]),
             "reference": lines.at[i, "reference"], "stage": stage}
            for p, (i, kind) in enumerate(params) if abs(fit.current[p]) > 1e-3]


def calibrate_to_sun(lines: pd.DataFrame, solar_depth: np.ndarray, observed: np.ndarray, usable: np.ndarray,
                     iterations: int = 3, workers: int = 2, log: Callable[[str], None] = print) -> Calibration:
    """Bounded, regularised Gauss-Newton of log gf and vdW damping against an observed solar spectrum.

    Arguments:
        lines: the line list (vacuum, :data:`spectra.synth.linelists.COLUMNS`).
        solar_depth: PySME central depth of each line in the Sun (``linelist_survey.central_depths``).
        observed, usable: the solar spectrum on the HR pixels and its usable pixels (:func:`observed_on_hr`).
    """
    lines = lines.reset_index(drop=True)
    visible = np.flatnonzero(solar_depth >= VISIBLE_DEPTH)
    strong = np.flatnonzero((solar_depth >= STRONG_DEPTH) & ((lines["gamvw"].to_numpy() < 0)
                                                            | (lines["gamvw"].to_numpy() > 20)))
    params = [(int(i), "gf") for i in visible] + [(int(i), "vdw") for i in strong]
    radius = np.array([_radius(solar_depth[i : i + 1])[0] for i, _ in params])
    bound = np.array([GF_BOUND if k == "gf" else VDW_BOUND for _, k in params])
    log(f"{len(visible)} log gf and {len(strong)} damping parameters")
    fit = _gauss_newton(lines, params, radius, -bound, bound, np.full(len(params), RIDGE), observed, usable,
                        iterations, workers, log)
    calibrated = _apply(lines, fit.gf, fit.vdw)
    changes = pd.DataFrame(_change_rows(lines, calibrated, params, fit, "lines"))
    return Calibration(calibrated, changes, fit.rms_before, fit.rms_after, fit.history)


def residual_features(resid: np.ndarray, usable: np.ndarray, wave: np.ndarray,
                      threshold: float = FEATURE_THRESHOLD) -> list[tuple[float, float]]:
    """(air λ of the extremum, residual there) of every run of usable pixels with |synthetic - observed| >
    ``threshold`` and one sign (adjacent runs closer than 0.3 Å are one feature)."""
    big = usable & (np.abs(resid) > threshold)
    features: list[tuple[float, float]] = []
    last_wave, last_sign = -np.inf, 0.0
    for j in np.flatnonzero(big):
        sign = np.sign(resid[j])
        if wave[j] - last_wave < 0.3 and sign == last_sign:
            if abs(resid[j]) > abs(features[-1][1]):
                features[-1] = (float(wave[j]), float(resid[j]))
        else:
            features.append((float(wave[j]), float(resid[j])))
        last_wave, last_sign = wave[j], sign
    return features


def refine_features(lines: pd.DataFrame, solar_depth: np.ndarray, observed: np.ndarray, usable: np.ndarray,
                    prior_change: np.ndarray | None = None, iterations: int = 3, workers: int = 2,
                    log: Callable[[str], None] = print) -> Calibration:
    """Second pass on what the line-by-line pass leaves beyond :data:`FEATURE_THRESHOLD`.

    A feature where the synthesis is too deep, or too shallow with a visible line of the list at it, is a line whose
    laboratory log gf is off by more than :data:`GF_BOUND`: that line's log gf may move up to :data:`WIDE_BOUND` in
    total. A too-shallow feature with no line of the list at it is a line the sources lack: a
    :data:`PSEUDO_LINE` is added there and its log gf fitted. ``lines`` are the already calibrated list (vacuum),
    ``solar_depth`` their central depths in the Sun, ``prior_change`` the log gf change each line already had
    (counted against :data:`WIDE_BOUND`); the result's ``lines`` include the pseudo-lines.
    """
    from ..wavegrid import air_to_vacuum, vacuum_to_air

    lines = lines.reset_index(drop=True)
    hr = hr_grid()
    base = _synthesise(lines)
    features = residual_features(base - observed, usable, hr.wave)
    wave_air = vacuum_to_air(lines["wlcent"].to_numpy())
    visible = solar_depth >= VISIBLE_DEPTH
    prior_change = np.zeros(len(lines)) if prior_change is None else np.asarray(prior_change, dtype=float)
    chosen: dict[int, tuple[float, float]] = {}  # line -> (lower, upper) of its change in this pass
    pseudo = []
    for wave0, resid0 in features:
        near = np.flatnonzero(visible & (np.abs(wave_air - wave0) <= FEATURE_MATCH))
        if near.size:
            line = int(near[np.argmax(solar_depth[near])])
            chosen[line] = (-WIDE_BOUND - prior_change[line], WIDE_BOUND - prior_change[line])
        elif resid0 > 0:
            pseudo.append(wave0)
    log(f"{len(features)} features beyond {FEATURE_THRESHOLD:.0%}: {len(chosen)} lines of the list get up to "
        f"{WIDE_BOUND} dex, {len(pseudo)} pseudo-lines added")
    if pseudo:
        extra = pd.DataFrame({"species": PSEUDO_LINE["species"], "wlcent": air_to_vacuum(np.array(pseudo)),
                              "excit": PSEUDO_LINE["excit"], "gflog": PSEUDO_LINE["gflog"], "gamrad": 0.0,
                              "gamqst": 0.0, "gamvw": 0.0, "lande": 0.0, "depth": 0.0,
                              "reference": PSEUDO_LINE["reference"]})
        lines = pd.concat([lines, extra], ignore_index=True)
    first_pseudo = len(lines) - len(pseudo)
    params = [(i, "gf") for i in chosen] + [(first_pseudo + k, "gf") for k in range(len(pseudo))]
    low, high = PSEUDO_LINE["limits"]
    lower = np.array([chosen[i][0] for i in chosen] + [low - PSEUDO_LINE["gflog"]] * len(pseudo))
    upper = np.array([chosen[i][1] for i in chosen] + [high - PSEUDO_LINE["gflog"]] * len(pseudo))
    ridge = np.array([RIDGE] * len(chosen) + [0.0] * len(pseudo))  # a pseudo-line's start value means nothing
    radius = np.full(len(params), _RADIUS_WEAK)
    fit = _gauss_newton(lines, params, radius, lower, upper, ridge, observed, usable, iterations, workers, log)
    calibrated = _apply(lines, fit.gf, fit.vdw)
    rows = _change_rows(lines, calibrated, params, fit, "features")
    for row in rows:
        if row["reference"] == PSEUDO_LINE["reference"]:
            row.update(parameter="pseudo_line", old=float("nan"))
    # before = the input list's (the fit's first iteration already holds the pseudo-lines at their start value)
    return Calibration(calibrated, pd.DataFrame(rows), _rms(base - observed, usable, hr), fit.rms_after, fit.history)


#: gaps of the UVES solar spectrum of the shared data (Å, air): no data there
UVES_GAPS = ((5759.0, 5828.0), (6066.0, 6074.0))
#: lines shallower than this in the Sun cannot change its spectrum: left out of the solar syntheses
_SOLAR_NEGLIGIBLE = 1e-3


def recorded_gf_change(lines: pd.DataFrame, changes_csv: str | Path) -> np.ndarray:
    """Per line of ``lines``, the log gf change recorded in an earlier calibration's ``.changes.csv`` (0 where none):
    the ``prior_change`` of :func:`calibrate_linelist` when only its ``"features"`` stage runs on that output."""
    changes = pd.read_csv(changes_csv)
    gf = changes[changes["parameter"] == "log_gf"]
    key = dict(zip(zip(gf["species"], gf["wlcent"].round(4), strict=True), gf["change_dex"], strict=True))
    return np.array([key.get((sp, round(w, 4)), 0.0) for sp, w in zip(lines["species"], lines["wlcent"],
                                                                        strict=True)])


def calibrate_linelist(lines: pd.DataFrame, solar_spectrum: str | Path, iterations: int = 3, workers: int = 2,
                       gaps: tuple[tuple[float, float], ...] = UVES_GAPS, log: Callable[[str], None] = print,
                       stages: tuple[str, ...] = ("lines", "features"), feature_passes: int = 2,
                       prior_change: np.ndarray | None = None) -> Calibration:
    """The whole list with its solar-visible lines calibrated against ``solar_spectrum`` (two columns: air Å,
    normalised flux); lines too weak in the Sun keep their values (``Calibration.lines`` is the whole list).

    ``stages``: ``"lines"``, the line-by-line pass (:func:`calibrate_to_sun`), then ``"features"``,
    ``feature_passes`` rounds of :func:`refine_features` on what it leaves. ``prior_change``: per line, the log gf
    change an earlier ``"lines"`` pass made (when only ``"features"`` runs on its output).
    """
    from .linelist_survey import central_depths
    from .validation import load_text_spectrum

    unknown = set(stages) - {"lines", "features"}
    if unknown:
        raise ValueError(f"unknown calibration stage(s) {sorted(unknown)}; expected 'lines' and/or 'features'")
    lines = lines.reset_index(drop=True)
    depth = central_depths(lines, SUN[:4])
    seen = np.flatnonzero(depth >= _SOLAR_NEGLIGIBLE)
    log(f"{seen.size} of {len(lines)} lines matter in the Sun (central depth >= {_SOLAR_NEGLIGIBLE:g})")
    wave, flux = load_text_spectrum(solar_spectrum)
    observed, usable = observed_on_hr(wave, flux, gaps=gaps)
    sun_lines, sun_depth = lines.iloc[seen].reset_index(drop=True), depth[seen]
    change = np.zeros(seen.size) if prior_change is None else np.asarray(prior_change, dtype=float)[seen]
    parts, history, rms_before, rms_after = [], [], None, {}
    if "lines" in stages:
        result = calibrate_to_sun(sun_lines, sun_depth, observed, usable, iterations, workers, log)
        change = change + result.lines["gflog"].to_numpy() - sun_lines["gflog"].to_numpy()
        sun_lines, rms_before, rms_after = result.lines, result.rms_before, result.rms_after
        parts.append(result.changes)
        history += result.history
    for k in range(feature_passes if "features" in stages else 0):
        result = refine_features(sun_lines, sun_depth, observed, usable, change, iterations, workers, log)
        added = len(result.lines) - len(sun_lines)
        change = np.concatenate([change + result.lines["gflog"].to_numpy()[: len(change)]
                                 - sun_lines["gflog"].to_numpy(), np.zeros(added)])
        sun_depth = np.concatenate([sun_depth, central_depths(result.lines.iloc[len(sun_lines):], SUN[:4])
                                    if added else np.zeros(0)])
        sun_lines, rms_after = result.lines, result.rms_after
        rms_before = rms_before or result.rms_before
        parts.append(result.changes)
        history += [{**h, "stage": f"features {k + 1}"} for h in result.history]
    whole = lines.copy()
    whole.loc[seen, ["gflog", "gamvw"]] = sun_lines.iloc[: seen.size][["gflog", "gamvw"]].to_numpy()
    whole = pd.concat([whole, sun_lines.iloc[seen.size:]], ignore_index=True)
    changes = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) \
        else pd.DataFrame()
    return Calibration(whole, changes, rms_before or {}, rms_after, history)
