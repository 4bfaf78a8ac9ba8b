"""Pseudo-continuum normalisation: one function for observed and synthetic spectra alike.

Synthetic training spectra come normalised by their true continuum; an observed spectrum has no
true continuum, only an upper envelope that line blanketing and noise push around. To compare like
with like, :func:`pseudo_continuum` can be applied to both: the observed spectra at ingestion, the
synthetic ones as an option of the survey and grid tools (recorded in their provenance).

Method (per contiguous stretch of wavelengths, e.g. each HR window): smooth the flux with a running
mean over ``smooth`` Å (so that noise does not bias the envelope: at S/N 10 per Å the smoothed noise
is ~10 %, and the clipping below then biases the fit by < 0.5 %), fit a cubic least-squares spline with
knots every ``knot_spacing`` Å, reject points more than ``low`` sigma below or ``high`` sigma above
the fit (sigma = 1.4826 * MAD of the residuals of the points kept), refit, until no point changes or
``iterations`` is reached. The asymmetric clipping throws out absorption lines and keeps the envelope.

Known limits: broad features wider than the knot spacing (the wings of H-alpha in cool dwarfs, the
Mg b triplet region in metal-rich giants) are partly absorbed into the continuum; the benchmark
``benchmarks/normalisation.py`` measures what that does to the inferred parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.interpolate import LSQUnivariateSpline
from scipy.ndimage import uniform_filter1d

__all__ = ["ContinuumOptions", "normalise", "normalise_grid", "pseudo_continuum"]


@dataclass(frozen=True)
class ContinuumOptions:
    knot_spacing: float = 40.0  # Å between spline knots
    smooth: float = 1.0  # Å running mean before fitting
    low: float = 1.5  # sigma below the fit that counts as a line
    high: float = 3.0  # sigma above the fit that counts as an outlier (cosmic, emission)
    iterations: int = 20
    max_gap: float = 2.0  # Å: wider gaps split the spectrum into separately fitted stretches

    def describe(self) -> str:
        return "pseudo-continuum " + ", ".join(f"{k}={v}" for k, v in asdict(self).items())


def _usable_knots(x: np.ndarray, knots: np.ndarray, min_points: int = 6) -> np.ndarray:
    """Drop knots so that every knot interval holds enough fitted points (Schoenberg-Whitney): where the
    clipping removed nearly everything (a broad line), the spline simply gets fewer knots there."""
    chosen, last = [], x[0]
    for t in knots:
        if np.count_nonzero((x > last) & (x <= t)) >= min_points and np.count_nonzero(x > t) >= min_points:
            chosen.append(t)
            last = t
    return np.array(chosen)


def _fit_stretch(wave: np.ndarray, flux: np.ndarray, opt: ContinuumOptions) -> np.ndarray:
    good = np.isfinite(flux)
    if good.sum() < 20:
        return np.full(wave.size, np.nan)
    step = float(np.median(np.diff(wave)))
    width = max(1, round(opt.smooth / step))
    filled = np.interp(wave, wave[good], flux[good])
    smooth = uniform_filter1d(filled, width, mode="nearest")
    span = wave[-1] - wave[0]
    n_knots = max(int(span // opt.knot_spacing), 0)
    knots = wave[0] + span * (np.arange(1, n_knots + 1) / (n_knots + 1)) if n_knots else np.array([])
    keep = good.copy()
    fit = np.full(wave.size, np.nanmedian(smooth[good]))
    for _ in range(opt.iterations):
        x = wave[keep]
        spline = LSQUnivariateSpline(x, smooth[keep], _usable_knots(x, knots), k=3 if x.size > 8 else 1)
        fit = spline(wave)
        resid = smooth - fit
        sigma = 1.4826 * np.median(np.abs(resid[keep] - np.median(resid[keep])))
        if not sigma > 0:
            break
        new_keep = good & (resid > -opt.low * sigma) & (resid < opt.high * sigma)
        if new_keep.sum() < 10 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return fit


def pseudo_continuum(wave: np.ndarray, flux: np.ndarray, options: ContinuumOptions | None = None) -> np.ndarray:
    """The fitted pseudo-continuum at every pixel (NaN where a stretch has too little data)."""
    opt = options or ContinuumOptions()
    wave, flux = np.asarray(wave, dtype=float), np.asarray(flux, dtype=float)
    out = np.full(wave.size, np.nan)
    breaks = np.flatnonzero(np.diff(wave) > opt.max_gap) + 1
    for piece in np.split(np.arange(wave.size), breaks):
        if piece.size:
            out[piece] = _fit_stretch(wave[piece], flux[piece], opt)
    return out


def normalise(wave: np.ndarray, flux: np.ndarray, options: ContinuumOptions | None = None) -> np.ndarray:
    """``flux`` (P,) divided by its pseudo-continuum."""
    flux = np.asarray(flux, dtype=float)
    return flux / pseudo_continuum(wave, flux, options)


def _normalise_rows(args) -> tuple[np.ndarray, np.ndarray]:
    """(rows, normalised flux) for one block of a grid file (a worker of :func:`normalise_grid`)."""
    from .gridstore import GridReader
    from .wavegrid import hr_grid

    source, rows, opt = args
    wave = hr_grid().wave
    with GridReader(source) as reader:
        flux = reader.flux[np.asarray(rows), :].astype(float)
    return rows, np.stack([normalise(wave, f, opt) for f in flux])


def normalise_grid(source, out, options: ContinuumOptions | None = None, progress: bool = True, workers: int = 1):
    """Copy a grid file with every finished row divided by its pseudo-continuum (noiseless spectra).

    The copy's attributes record the normalisation (``continuum``) and the source grid; training on it
    makes the network expect pseudo-continuum normalised input, as ``spectra ingest`` delivers. ``workers``
    processes fit blocks of 64 rows at once (~0.1 s per spectrum each); this process writes them.
    """
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    from tqdm.auto import tqdm

    from .gridstore import GridReader, GridWriter
    from .wavegrid import hr_grid

    opt = options or ContinuumOptions()
    out = Path(out)
    grid = hr_grid()
    with GridReader(source) as reader:
        if reader.wavelength.size != grid.size:
            raise ValueError(f"{source}: {reader.wavelength.size} pixels; normalise-grid works on the HR grid")
        attrs = {k: v for k, v in reader.attrs.items() if k not in ("format", "n", "wavelength_sha256", "created")}
        attrs.update(continuum=opt.describe(), normalised_from=str(Path(source).resolve()))
        done, labels = reader.done, reader.labels
        methods, seconds = reader.atmosphere_method, reader.synthesis_seconds
    with GridWriter(out, done.size, grid, attrs) as writer:  # an interrupted copy is resumed
        todo = np.flatnonzero(done & ~writer.done)
        blocks = [(str(source), todo[a:a + 64], opt) for a in range(0, todo.size, 64)]
        bar = tqdm(total=todo.size, desc=f"normalise {out.name}", disable=not progress)
        with ProcessPoolExecutor(max(1, workers)) as pool:
            for rows, flux in (pool.map(_normalise_rows, blocks) if workers > 1 else map(_normalise_rows, blocks)):
                for i, f in zip(rows, flux, strict=True):
                    writer.write_row(int(i), f, labels[i], methods[i], float(seconds[i]))
                bar.update(len(rows))
        bar.close()
    return out
