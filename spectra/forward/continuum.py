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

import contextlib
from dataclasses import asdict, dataclass

import numpy as np
from scipy.interpolate import LSQUnivariateSpline
from scipy.ndimage import uniform_filter1d

from ..contracts.conventions import KNOT_SPACING, PSEUDO_CONTINUUM

__all__ = ["BATCH_TOLERANCE", "BatchNormaliser", "ContinuumOptions", "normalise", "pseudo_continuum"]


@dataclass(frozen=True)
class ContinuumOptions:
    knot_spacing: float = KNOT_SPACING  # Å between spline knots
    smooth: float = 1.0  # Å running mean before fitting
    low: float = 1.5  # sigma below the fit that counts as a line
    high: float = 3.0  # sigma above the fit that counts as an outlier (cosmic, emission)
    iterations: int = 20
    max_gap: float = 2.0  # Å: wider gaps split the spectrum into separately fitted stretches

    def describe(self) -> str:
        return f"{PSEUDO_CONTINUUM} " + ", ".join(f"{k}={v}" for k, v in asdict(self).items())


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


class BatchNormaliser:
    """:func:`pseudo_continuum` for many spectra on one wavelength grid at once (training batches, whole grids).

    The scalar fit is a cubic least-squares spline with fixed interior knots whose points are reweighted
    (0 or 1) by the clipping; with the knots fixed, every iteration is a weighted linear least-squares problem
    in one B-spline basis for every spectrum. Products of overlapping basis functions are built once, so one
    iteration for a batch is two matrix products and a batch of small K x K solves. Rows converge independently:
    a row whose kept set stops changing keeps its fit, exactly as the scalar loop breaks.

    Where clipping empties a knot interval (a broad line) the scalar fit drops that knot (``_usable_knots``).
    Dropping knot t leaves the splines that are C3 at t (one cubic across it), a subspace of the full basis:
    here the same rule picks the knots per row, and rows with dropped knots are solved in the null space of the
    third-derivative jumps at those knots (the same least-squares problem, exactly).

    Equal to :func:`pseudo_continuum` within :data:`BATCH_TOLERANCE` on noisy spectra (float rounding; checked
    across the prior by ``tests/test_continuum.py``). Rows with non-finite flux, and rows whose kept points leave a
    singular system, fall back to the scalar fit. On *noiseless* spectra the clipping of the two fits can settle on
    different kept sets for a few rows in 64 (``spectra.stores.derived.normalise_grid`` therefore keeps the scalar fit).
    """

    def __init__(self, wave: np.ndarray, options: ContinuumOptions | None = None):
        self.options = opt = options or ContinuumOptions()
        self.wave = np.asarray(wave, dtype=float)
        breaks = np.flatnonzero(np.diff(self.wave) > opt.max_gap) + 1
        self.stretches = []
        for piece in np.split(np.arange(self.wave.size), breaks):
            if piece.size < 20:
                raise ValueError(f"a stretch of {piece.size} pixels is too short for a batched continuum fit")
            w = self.wave[piece]
            step = float(np.median(np.diff(w)))
            span = w[-1] - w[0]
            n_knots = max(int(span // opt.knot_spacing), 0)
            knots = w[0] + span * (np.arange(1, n_knots + 1) / (n_knots + 1)) if n_knots else np.array([])
            self.stretches.append(_Stretch(slice(int(piece[0]), int(piece[-1]) + 1), w,
                                           max(1, round(opt.smooth / step)), knots))

    def continuum(self, flux: np.ndarray) -> np.ndarray:
        """Pseudo-continuum (N, P) of spectra ``flux`` (N, P) on this grid."""
        flux = np.asarray(flux)
        if flux.ndim != 2 or flux.shape[1] != self.wave.size:
            raise ValueError(f"flux must be (N, {self.wave.size}), got {flux.shape}")
        out = np.empty(flux.shape, dtype=float)
        finite = np.all(np.isfinite(flux), axis=1)
        rows = np.flatnonzero(finite)
        if rows.size:
            for stretch in self.stretches:
                out[rows, stretch.part] = stretch.fit(flux[rows, stretch.part].astype(float), self.options)
        # rows with gaps, and rows whose clipping left a singular system (the scalar fit copes by its own rules)
        for i in np.flatnonzero(~finite | ~np.all(np.isfinite(out), axis=1)):
            out[i] = pseudo_continuum(self.wave, flux[i], self.options)
        return out

    def __call__(self, flux: np.ndarray) -> np.ndarray:
        """``flux`` (N, P) divided by its pseudo-continuum."""
        return np.asarray(flux, dtype=float) / self.continuum(flux)


BATCH_TOLERANCE = 5e-5  # max |batched / scalar - 1| of the continuum (tests/test_continuum.py; seen: 1.2e-5)


def _masked_median(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median of each row's ``values`` where ``mask`` (numpy's rule: mean of the two middle ones), (N, 1); +inf
    for a row with nothing kept.

    Row by row with ``np.median`` (a partition, O(P)): a full sort of the batch was half the cost of a training
    batch's continuum fits, and the rows have different kept counts, which one batched partition cannot take."""
    out = np.full((values.shape[0], 1), np.inf)
    for r in range(values.shape[0]):
        kept = values[r][mask[r]]
        if kept.size:
            out[r, 0] = np.median(kept)
    return out


class _Stretch:
    """One contiguous stretch of pixels: smoothing width, interior knots, basis, products and knot penalties."""

    def __init__(self, part: slice, wave: np.ndarray, width: int, knots: np.ndarray):
        from scipy.interpolate import BSpline

        self.part, self.wave, self.width, self.knots = part, wave, width, knots
        full = np.concatenate([[wave[0]] * 4, knots, [wave[-1]] * 4])
        self.basis = BSpline.design_matrix(wave, full, 3).toarray()  # (P, K)
        k = self.basis.shape[1]
        self.pairs = np.array([(a, b) for a in range(k) for b in range(a, min(k, a + 4))])
        self.products = np.ascontiguousarray(self.basis[:, self.pairs[:, 0]] * self.basis[:, self.pairs[:, 1]])
        # jump of each basis function's (piecewise constant) third derivative at each interior knot, unit rows
        edges = np.concatenate([[wave[0]], knots, [wave[-1]]])
        mids = 0.5 * (edges[:-1] + edges[1:])
        third = np.stack([BSpline(full, np.eye(k)[j], 3).derivative(3)(mids) for j in range(k)], axis=1)
        self.jumps = third[1:] - third[:-1]  # (n_knots, K)
        self._subspaces: dict[tuple[bool, ...], np.ndarray] = {}

    def usable_knots(self, keep: np.ndarray) -> np.ndarray:
        """(N, n_knots) bool: which knots the scalar rule (``_usable_knots`` on the kept pixels) keeps, per row."""
        n = keep.shape[0]
        if not self.knots.size:
            return np.ones((n, 0), dtype=bool)
        cum = np.cumsum(keep, axis=1)
        total = cum[:, -1]
        at_knot = cum[:, np.searchsorted(self.wave, self.knots, side="right") - 1]  # kept points with wave <= knot
        chosen = np.zeros((n, self.knots.size), dtype=bool)
        below_last = np.ones(n, dtype=int)  # points > x[0]: the first kept point itself is not counted
        for j in range(self.knots.size):
            ok = (at_knot[:, j] - below_last >= 6) & (total - at_knot[:, j] >= 6)
            chosen[:, j] = ok
            below_last = np.where(ok, at_knot[:, j], below_last)
        return chosen

    def subspace(self, dropped: tuple[bool, ...]) -> np.ndarray:
        """(K, K - d) orthonormal basis of the coefficients whose spline has no third-derivative jump at the d
        dropped knots: the spline space without those knots, in the full basis (cached per knot set)."""
        if dropped not in self._subspaces:
            from scipy.linalg import null_space

            self._subspaces[dropped] = null_space(self.jumps[np.array(dropped, dtype=bool)])
        return self._subspaces[dropped]

    def solve(self, smooth: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Weighted least-squares spline coefficients (N, K) of ``smooth`` on the kept pixels, knots by the rule;
        NaN for a row whose system is singular."""
        w = keep.astype(float)
        k = self.basis.shape[1]
        packed = w @ self.products
        normal = np.zeros((w.shape[0], k, k))
        normal[:, self.pairs[:, 0], self.pairs[:, 1]] = packed
        normal[:, self.pairs[:, 1], self.pairs[:, 0]] = packed
        rhs = (w * smooth) @ self.basis
        dropped = ~self.usable_knots(keep)
        out = np.full(rhs.shape, np.nan)
        patterns = {}
        for r, row in enumerate(map(tuple, dropped)):
            patterns.setdefault(row, []).append(r)
        for pattern, rows in patterns.items():
            rows = np.array(rows)
            if not any(pattern):
                a, b, sub = normal[rows], rhs[rows], None
            else:
                sub = self.subspace(pattern)
                a = np.einsum("ki,rkl,lj->rij", sub, normal[rows], sub)
                b = rhs[rows] @ sub
            try:
                coef = np.linalg.solve(a, b[..., None])[..., 0]
            except np.linalg.LinAlgError:  # row by row; a singular row stays NaN and is refitted by the caller
                coef = np.full(b.shape, np.nan)
                for m in range(b.shape[0]):
                    with contextlib.suppress(np.linalg.LinAlgError):
                        coef[m] = np.linalg.solve(a[m], b[m])
            out[rows] = coef if sub is None else coef @ sub.T
        return out

    def fit(self, flux: np.ndarray, opt: ContinuumOptions) -> np.ndarray:
        from scipy.ndimage import uniform_filter1d

        smooth = uniform_filter1d(flux, self.width, axis=1, mode="nearest")
        keep = np.ones(smooth.shape, dtype=bool)
        fit = np.empty(smooth.shape)
        active = np.arange(flux.shape[0])
        for _ in range(opt.iterations):
            fit[active] = self.solve(smooth[active], keep[active]) @ self.basis.T
            active = active[np.isfinite(fit[active, 0])]  # singular rows keep NaN: the caller refits them
            resid = smooth[active] - fit[active]
            kept = keep[active]
            centre = _masked_median(resid, kept)
            sigma = 1.4826 * _masked_median(np.abs(resid - centre), kept)
            new_keep = (resid > -opt.low * sigma) & (resid < opt.high * sigma)
            moving = (sigma[:, 0] > 0) & (new_keep.sum(axis=1) >= 10) & np.any(new_keep != kept, axis=1)
            keep[active[moving]] = new_keep[moving]
            active = active[moving]
            if active.size == 0:
                break
        return fit
