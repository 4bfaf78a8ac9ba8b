"""Re-simulation at the MAP: does the model spectrum at the inferred parameters match the input? (paper Sect. 5)

The paper re-simulated 72 benchmark stars with Turbospectrum at their MAP (0.69 % median deviation). With a
spectral emulator in the bundle the same check costs milliseconds, so ``runtime process`` does it for every
star:

1. labels: the MAP of the cINN's parameters; the emulator's other inputs (abundances the cINN does not infer)
   from the prior's [Fe/H] trend recorded in the bundle (``emulator.fill``);
2. the emulator's unrotated spectrum, rotated by the MAP v_broad on its pixels
   (``spectra.forward.rotation.PixelRotator``, float32: the training spectra's rotation without its ln λ grid,
   within 3e-4 rms of it, where the per-pixel noise is 1.8e-2 at S/N 250 per Å and the emulator's own error 3e-3;
   ``Rotator`` at ``RESIM_DV`` only for pixels not uniform in λ); an emulator trained on grids stored with a
   wavelength margin outputs ``spectra.wavegrid.hr_grid(margin)`` (``emulator.margin`` in the bundle, ``export
   attach-emulator``): it is rotated on that grid, so that the window edges see real spectrum, and then cropped to
   the bundle's pixels, the HR ones (``hr_pixel_rotator``); for a pseudo-continuum bundle the model is brought to
   the input's continuum level by a smooth factor, the ratio input / model averaged over ``CONTINUUM_WINDOW`` Å
   with two 3-sigma clipping passes (:func:`match_continuum`): the input's pseudo-continuum differs from the
   model's true continuum only on the scale of the spline knots (``KNOT_SPACING``, 40 Å), and this costs 0.3 ms
   where refitting the model's pseudo-continuum costs 100 ms;
3. ``chi2_resim`` = mean over pixels of (input - model)^2 / sigma^2 with sigma^2 = (model / S/N_pix)^2 (the
   noise model of the training spectra, paper Eq. 1) + (model_error x model)^2 (the emulator's own error on
   held-out PySME spectra, recorded in the bundle), so that a good fit gives about 1 at any S/N;
   ``resim_rms`` = rms of input - model.

The pixels of the bundle's input mask (manifest ``input_mask``: telluric O₂, the Hα core, what the forward model
cannot make and the network never sees) are left out of both numbers and of the continuum match; a bundle without
the entry uses every pixel, bit for bit as before.

Cost per spectrum on one core (CPU time), in the runtime's batches of 16, 25 200 pixels, the default model: emulator
0.33-0.35 ms, rotation 0.19-0.25, continuum match 0.29-0.32, chi2 0.08, 0.89-1.0 ms in all, 2.5-2.6 times less than
with the ln λ rotation at 1 km/s and the per-pixel box filters this replaced (2.3-2.5 ms: 0.34-0.36, 0.83-0.95,
0.94-1.05, 0.17-0.19). Against
those, on 1024 MAPs drawn within the bundle's bounds at S/N 20, 50 and 250: chi2_resim moved by 5e-5 (median) and
1e-3 at most for good fits whose model stays above 0, by 3e-4 (median) for poor fits, and the POOR_FIT threshold
calibrated on 600 held-out spectra by 0-1.2 %. Where the emulator's model crosses 0 (4-7 % of such MAPs, none
physical), chi2 is set by the pixels where the model is near 0 (sigma ∝ model) and moves by any amount with any
change of the model or of the continuum match, the old ones included. Every number of a spectrum is the same bits
alone as in any batch (``tests/test_resim.py``): the rotation's method and blocks, the continuum's bins and the
sums all follow from the spectrum alone.

POOR_FIT is set above the threshold recorded in the bundle (``emulator.poor_fit_chi2``), calibrated on held-out
synthetic spectra by ``python -m export calibrate-poor-fit``. No torch here: the emulator is an ONNX graph, run in
fp32 (its model error was measured in fp32) by ONNX Runtime whatever engine samples the posterior
(``runtime.engines``): it is a few large matrix-vector products per star, limited by memory bandwidth, so it pays to
batch the stars of a chunk, and ONNX Runtime's CPU kernels give every row of a batch the same result as alone
(``tests/test_resim.py``), where OpenVINO's do not promise it and would have to be called one star at a time
(0.5 ms against 5 ms per star on an Ice Lake Xeon). The engine choice is about the flow, where the time goes.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from spectra.contracts.conventions import KNOT_SPACING

from .bundle import Bundle

if TYPE_CHECKING:
    from spectra.forward.rotation import PixelRotator, Rotator
    from spectra.wavegrid import WavelengthGrid

__all__ = ["CONTINUUM_WINDOW", "Resimulator", "match_continuum", "reduced_chi2"]

CONTINUUM_WINDOW = KNOT_SPACING  # Å: the input's pseudo-continuum follows the model's on this scale
#: km/s, the step of the rotation's ln λ grid for a bundle whose pixels are not uniform in λ (``Rotator``); the HR
#: grid of every bundle so far is uniform and rotated on its pixels (``PixelRotator``)
RESIM_DV = 1.0


def _grid_of(wavelength: np.ndarray) -> WavelengthGrid:
    """A ``spectra.wavegrid.WavelengthGrid`` for a bundle's pixel grid (windows split at gaps > 1 A)."""
    from spectra.wavegrid import WavelengthGrid

    breaks = np.flatnonzero(np.diff(wavelength) > 1.0) + 1
    edges = [0, *breaks.tolist(), wavelength.size]
    segments = tuple(slice(a, b) for a, b in itertools.pairwise(edges))
    return WavelengthGrid("bundle", np.asarray(wavelength, dtype=float), segments,
                          tuple(f"window{k}" for k in range(len(segments))),
                          float(np.median(np.diff(wavelength))), "the bundle's pixel grid")


def _rotator_for(grid: WavelengthGrid) -> PixelRotator | Rotator:
    """The rotation of the model on ``grid`` (float32: a model for a noisy spectrum): on its pixels
    (``spectra.forward.rotation.PixelRotator``) when each window is uniform in λ, else through a ln λ grid of
    ``RESIM_DV`` (``Rotator``)."""
    from spectra.forward.rotation import PixelRotator, Rotator

    try:
        return PixelRotator(grid, dtype=np.float32)
    except ValueError:
        return Rotator(grid, dv=RESIM_DV, dtype=np.float32)


def match_continuum(flux: np.ndarray, model: np.ndarray, segments, width: int,
                    exclude: np.ndarray | None = None) -> np.ndarray:
    """``model`` (N, P) times a smooth factor that brings it to the continuum level of ``flux``: per window, the
    ratio flux / model averaged over ``width`` pixels, twice more with pixels beyond 3 sigma of that average
    (lines the model gets wrong) left out (:func:`continuum_factor`). Pixels of ``exclude`` (P,) are left out from
    the start, like non-finite ratios (the factor there is interpolated from their neighbours, or 0 deep inside a
    band wider than ``width``)."""
    out = np.empty(model.shape, dtype=np.result_type(model, np.float32))  # float32 models stay float32
    covered = np.zeros(model.shape[1], dtype=bool)
    for segment in segments:
        np.multiply(model[:, segment], continuum_factor(flux[:, segment], model[:, segment], width,
                                                        None if exclude is None else exclude[segment]),
                    out=out[:, segment])
        covered[segment] = True
    out[:, ~covered] = model[:, ~covered]  # pixels in no window (none in a bundle's grid) as they are
    return out


#: match_continuum: the box sums are taken at every CONTINUUM_BIN-th pixel (from sums over bins of that many
#: pixels) and interpolated linearly between: the factor is smooth on ``width`` (800 pixels). 8 (40) makes the whole
#: check 9 % slower (2 % faster) and follows the per-pixel filter slightly closer (less close) on poor fits
CONTINUUM_BIN = 20
#: match_continuum: the scatter of every SCATTER_STRIDE-th pixel (a divisor or multiple of CONTINUUM_BIN): every
#: 4th, as before; every 16th moved a poor fit's chi2 by 16 % (its clipping depends on sigma)
SCATTER_STRIDE = 4


def continuum_factor(flux: np.ndarray, model: np.ndarray, width: int,
                     exclude: np.ndarray | None = None) -> np.ndarray:
    """The smooth factor (N, P) float32 of :func:`match_continuum` for one window: the mean of flux / model over
    the ``width`` pixels around each pixel (``scipy.ndimage.uniform_filter1d``'s box, its ``mode="nearest"`` edges:
    the edge pixel repeated), the pixels of ``exclude`` (P,) and non-finite ratios left out, then twice more with
    the pixels beyond 3 sigma of that mean left out too (sigma: 1.4826 x the lower median absolute deviation of
    every ``SCATTER_STRIDE``-th pixel still in).

    Computed on sums over bins of ``CONTINUUM_BIN`` pixels instead of per pixel: the box is a whole number of bins
    wide, so its sums at every bin edge are the per-pixel ones, and the mean in between is interpolated linearly
    (it moves by 1/``width`` of a pixel's scatter per pixel; :func:`_interpolate_mean`); the clipping compares each
    pixel with the mean at its bin's centre. Against the per-pixel box filter it replaces, the factor differs by a
    tenth of the box mean's own noise (rms; half of it at most, ``tests/test_resim.py``), at less than a third of the
    cost."""
    p = flux.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.divide(flux, model, dtype=np.float32)  # a smooth factor to ~1e-7: float32 halves the time
    good = np.isfinite(ratio)
    if exclude is not None:
        good &= ~exclude
    np.copyto(ratio, 0.0, where=~good)
    bins = -(-p // CONTINUUM_BIN)
    ratio_t, good_t = _bin_major(ratio, bins), _bin_major(good, bins)
    half = max(1, round(min(width, p) / (2 * CONTINUUM_BIN)))  # the box: 2 half bins
    inside = good_t  # still in the mean: good and not clipped
    ends = (slice(None), 0, 0), (slice(None), (p - 1) % CONTINUUM_BIN, (p - 1) // CONTINUUM_BIN)
    kept = ratio_t  # ratio where inside, 0 elsewhere (ratio is 0 where not good)
    for clip in (True, True, False):
        # per bin: float32 sums of CONTINUUM_BIN ratios, uint8 counts, each bin from its pixels alone
        sums = kept.sum(axis=1), inside.view(np.uint8).sum(axis=1, dtype=np.uint8)
        edges = [(kept[end], inside[end]) for end in ends]
        total, weight = _box_sums(*sums, half, *edges)
        if not clip:
            break
        # the mean at each bin's centre: sums halfway between its edges
        centre = (total[:, 1:] + total[:, :-1]) / np.maximum(weight[:, 1:] + weight[:, :-1], 1e-9)
        inside = inside & ~_outliers(ratio_t, inside, centre.astype(np.float32))
        kept = ratio_t * inside
    return _interpolate_mean(total, weight, p)


def _bin_major(values: np.ndarray, bins: int) -> np.ndarray:
    """(N, P) -> (N, CONTINUUM_BIN, bins) with [n, r, b] = values[n, b x CONTINUUM_BIN + r] (0 past P): bin sums
    and per-bin comparisons become operations on long contiguous rows instead of CONTINUUM_BIN-element ones."""
    n, p = values.shape
    if p < bins * CONTINUUM_BIN:
        values = np.concatenate([values, np.zeros((n, bins * CONTINUUM_BIN - p), dtype=values.dtype)], axis=1)
    return np.ascontiguousarray(values.reshape(n, bins, CONTINUUM_BIN).transpose(0, 2, 1))


def _box_sums(sum_ratio: np.ndarray, sum_weight: np.ndarray, half: int, first: tuple[np.ndarray, np.ndarray],
              last: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(sum of ratio x weight, sum of weight), each (N, bins + 1), over the 2 ``half`` bins around each bin edge,
    from the bin sums (N, bins); beyond the window's ends, bins of CONTINUUM_BIN copies of its first and last pixel
    (``first``/``last``: their (ratio x weight, weight)), as ``uniform_filter1d(mode="nearest")``."""
    n, bins = sum_ratio.shape
    pair = np.empty((n, bins + 2 * half + 1, 2))  # [..., 0]: ratio x weight, [..., 1]: weight
    pair[:, 0] = 0.0
    for k in range(2):
        pair[:, 1:half + 1, k] = CONTINUUM_BIN * first[k][:, None]
        pair[:, half + 1:half + 1 + bins, k] = (sum_ratio, sum_weight)[k]
        pair[:, half + 1 + bins:, k] = CONTINUUM_BIN * last[k][:, None]
    # both prefix sums in one complex cumsum: numpy's is bound by the latency of each addition, and a complex one
    # makes two at a time (half the time of two real ones)
    both = pair.view(np.complex128)[..., 0]
    np.cumsum(both, axis=1, out=both)
    box = pair[:, 2 * half:2 * half + bins + 1] - pair[:, :bins + 1]
    return box[..., 0], box[..., 1]


def _outliers(ratio_t: np.ndarray, inside: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The pixels of ``inside`` (bin-major, as ``ratio_t``) beyond 3 sigma of ``centre`` (N, bins), the box mean at
    their bin's centre; sigma from every ``SCATTER_STRIDE``-th pixel of ``inside`` (none: +inf, nothing clipped)."""
    n = ratio_t.shape[0]
    if SCATTER_STRIDE <= CONTINUUM_BIN:  # every SCATTER_STRIDE-th pixel of every bin
        offsets, columns = slice(None, None, SCATTER_STRIDE), slice(None)
    else:  # the first pixel of every (SCATTER_STRIDE / CONTINUUM_BIN)-th bin
        offsets, columns = slice(0, 1), slice(None, None, SCATTER_STRIDE // CONTINUUM_BIN)
    deviation = np.abs(ratio_t[:, offsets, columns] - centre[:, None, columns]).reshape(n, -1)
    sigma = 1.4826 * _lower_median(deviation, inside[:, offsets, columns].reshape(n, -1))
    limit = (3.0 * sigma).astype(np.float32)[:, None]
    out = ratio_t > (centre + limit)[:, None, :]
    out |= ratio_t < (centre - limit)[:, None, :]
    out &= inside
    return out


def _lower_median(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row of ``values`` (N, S), the lower median of its ``valid`` entries; +inf for a row with none."""
    ranked = np.where(valid, values, np.float32(np.inf))  # the invalid ones sort last
    middle = (np.count_nonzero(valid, axis=1) - 1) // 2
    out = np.full(values.shape[0], np.inf)
    for i, k in enumerate(middle.tolist()):
        if k >= 0:
            ranked[i].partition(k)
            out[i] = ranked[i, k]
    return out


def _interpolate_mean(total: np.ndarray, weight: np.ndarray, p: int) -> np.ndarray:
    """The box means (N, P) at every pixel from their sums ``total`` and ``weight`` (N, bins + 1) at every
    CONTINUUM_BIN-th pixel: the means interpolated linearly, except in the bins where the weight halves or more
    between their edges (beside a stretch of pixels all left out: a masked band, a region a poor fit loses to the
    clipping, where an edge's mean is 0), which interpolate the sums and divide. Built bin-major, on long rows,
    then transposed: faster than rows of CONTINUUM_BIN elements."""
    n, bins = total.shape[0], total.shape[1] - 1
    fraction = np.arange(CONTINUUM_BIN, dtype=np.float32) / CONTINUUM_BIN
    knots = (total / np.maximum(weight, 1e-9)).astype(np.float32)  # 0 where no weight is left
    out = np.empty((n, CONTINUUM_BIN, bins), dtype=np.float32)
    np.multiply((knots[:, 1:] - knots[:, :-1])[:, None, :], fraction[None, :, None], out=out)
    out += knots[:, None, :-1]
    low, high = np.minimum(weight[:, :-1], weight[:, 1:]), np.maximum(weight[:, :-1], weight[:, 1:])
    row, col = np.nonzero(low < 0.5 * high)
    if row.size:
        sums = [(s[row, col, None] + (s[row, col + 1] - s[row, col])[:, None] * fraction).astype(np.float32)
                for s in (total, weight)]
        out[row, :, col] = sums[0] / np.maximum(sums[1], np.float32(1e-9))
    return out.transpose(0, 2, 1).reshape(n, bins * CONTINUUM_BIN)[:, :p]


def reduced_chi2(flux: np.ndarray, model: np.ndarray, snr_per_pixel: np.ndarray, model_error: float = 0.0,
                 exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(chi2 per spectrum, rms per spectrum) of ``flux`` against ``model`` (N, P) with per-pixel S/N (N,), over the
    pixels not in ``exclude`` (P,) (the bundle's input mask; None: every pixel) where (flux - model) / model is
    finite (model 0 or non-finite flux or model: left out)."""
    # sigma^2 = model^2 (1/snr^2 + model_error^2): a factor per spectrum times model^2, so chi2 is a sum of squared
    # relative residuals (float32 arrays masked in place, pairwise float32 sums of each row, to ~1e-6 like the
    # float32 catalogue columns: 0.08 against 0.19 ms per spectrum for float64 sums of fresh arrays)
    variance = 1.0 / np.asarray(snr_per_pixel, dtype=float) ** 2 + model_error**2
    model = np.asarray(model, dtype=np.float32)
    residual = np.subtract(flux, model, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.divide(residual, model)
    good = np.isfinite(relative)
    if exclude is not None:
        good &= ~exclude
    good &= (variance > 0)[:, None]
    bad = ~good
    np.copyto(residual, 0.0, where=bad)
    np.copyto(relative, 0.0, where=bad)
    n = np.maximum([np.count_nonzero(row) for row in good], 1)  # row by row: 6x faster than axis=1
    chi2 = _sum_of_squares(relative) / n / np.where(variance > 0, variance, np.inf)
    rms = np.sqrt(_sum_of_squares(residual) / n)
    return chi2, rms


def _sum_of_squares(values: np.ndarray) -> np.ndarray:
    """Per row of (N, P) float32 ``values`` (overwritten), the sum of squares as float64 (a pairwise float32 sum
    of each row alone: the same bits whatever the batch)."""
    np.multiply(values, values, out=values)
    return values.sum(axis=1).astype(np.float64)


class Resimulator:
    """The bundle's emulator in an ONNX Runtime session, plus rotation and (for pseudo-continuum bundles)
    normalisation; see the module docstring."""

    def __init__(self, bundle: Bundle, threads: int = 0):
        from spectra.forward.rotation import hr_pixel_rotator
        from spectra.wavegrid import hr_grid, wavelength_sha256

        entry = bundle.emulator
        if not entry:
            raise ValueError(f"{bundle.path}: the bundle carries no emulator (export attach-emulator)")
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(bundle.path / entry["file"]), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs: list[str] = entry["inputs"]
        self.fill: dict[str, list[float]] = entry.get("fill", {})
        self.model_error = float(entry["model_error"])
        self.threshold = entry.get("poor_fit_chi2")
        self.names = bundle.manifest.names
        missing = [n for n in self.inputs if n not in self.names and n not in self.fill]
        if missing:
            raise ValueError(f"{bundle.path}: emulator inputs {missing} are neither inferred nor in emulator.fill")
        self.pseudo = bundle.manifest.continuum == "pseudo"
        self.wavelength = bundle.wavelength
        grid = _grid_of(bundle.wavelength)
        #: the emulator's output pixels: the bundle's, or the HR grid with ``emulator.margin`` around them
        self.margin = float(entry.get("margin", 0.0))
        self.rotator: PixelRotator | Rotator
        if self.margin:
            # rotate on the margin, return the HR pixels
            self.rotator = hr_pixel_rotator(hr_grid(self.margin).wave, dtype=np.float32)
            if wavelength_sha256(self.rotator.wave) != wavelength_sha256(bundle.wavelength):
                raise ValueError(f"{bundle.path}: emulator.margin = {self.margin:g} A, but the bundle's pixel grid is "
                                 "not the 4MOST HR grid such an emulator's output is cropped to")
        else:
            self.rotator = _rotator_for(grid)
        self.n_output = self.rotator.grid.size
        self.segments = grid.segments
        self.window = max(3, round(CONTINUUM_WINDOW / grid.step))
        self.per_pixel = float(bundle.manifest.raw["snr_convention"]["per_pixel_factor"])
        #: (P,) pixels left out of chi2, rms and the continuum match: the bundle's input mask, or None
        self.exclude = bundle.input_mask

    def labels(self, params: np.ndarray) -> np.ndarray:
        """Emulator inputs (N, K) for physical cINN parameters (N, D): inferred ones copied, others filled."""
        feh = params[:, self.names.index("fe_h")]
        out = np.empty((params.shape[0], len(self.inputs)), dtype=np.float32)
        for k, name in enumerate(self.inputs):
            if name in self.names:
                out[:, k] = params[:, self.names.index(name)]
            else:
                slope, offset, low, high = self.fill[name]
                out[:, k] = np.clip(slope * feh + offset, low, high)
        return out

    def model_flux(self, params: np.ndarray) -> np.ndarray:
        """Model spectra (N, P) on the bundle's pixels at physical parameters (N, D): emulated and rotated (true
        continuum); an emulator with a margin is rotated on its whole output, then cropped."""
        labels = self.labels(params)
        flux = self.session.run(None, {"labels": labels})[0]
        vbroad = params[:, self.names.index("vbroad")] if "vbroad" in self.names else np.zeros(len(params))
        return self.rotator(flux, np.clip(vbroad, 0.0, None))  # float32: a model for a noisy spectrum

    def expected_flux(self, flux: np.ndarray, params: np.ndarray) -> np.ndarray:
        """The model (N, P) at physical parameters (N, D), brought to the continuum level of ``flux`` (N, P) for
        pseudo-continuum bundles (:func:`match_continuum`): what the input would show at those parameters, without
        noise. NaN pixels of ``flux`` (no data) count as matching the model (ratio 1), so inside a gap the factor
        blends into the model's own continuum: left out instead, a gap wider than the box would get a factor of 0,
        a model of zeros (the UVES solar atlas has such gaps)."""
        model = self.model_flux(params)
        if self.pseudo:
            flux = np.asarray(flux, dtype=np.float32)
            reference = np.where(np.isfinite(flux), flux, model)
            model = match_continuum(reference, model, self.segments, self.window, self.exclude)
        return model

    def check(self, flux: np.ndarray, snr: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chi2_resim, resim_rms) for input spectra (N, P) at S/N per A (N,) and their MAPs (N, D); NaN pixels of
        ``flux`` (no data) are left out, like the input mask's."""
        flux = np.asarray(flux, dtype=np.float32)
        return reduced_chi2(flux, self.expected_flux(flux, params), np.asarray(snr, dtype=float) * self.per_pixel,
                            self.model_error, self.exclude)
