"""Re-simulation at the MAP: does the model spectrum at the inferred parameters match the input? (paper Sect. 5)

The paper re-simulated 72 benchmark stars with Turbospectrum at their MAP (0.69 % median deviation). With a
spectral emulator in the bundle the same check costs milliseconds, so ``runtime process`` does it for every
star:

1. labels: the MAP of the cINN's parameters; the emulator's other inputs (abundances the cINN does not infer)
   from the prior's [Fe/H] trend recorded in the bundle (``emulator.fill``);
2. the emulator's unrotated spectrum, rotated by the MAP v_broad (``spectra.forward.rotation.Rotator``); an
   emulator trained on grids stored with a wavelength margin outputs ``spectra.wavegrid.hr_grid(margin)``
   (``emulator.margin`` in the bundle, ``export attach-emulator``): it is rotated on that grid, so that the window
   edges see real spectrum, and then cropped to the bundle's pixels, the HR ones (``hr_rotator``); for a
   pseudo-continuum bundle the model is brought to the input's continuum level by a smooth factor, the ratio
   input / model averaged over ``CONTINUUM_WINDOW`` Å with two 3-sigma clipping passes (:func:`match_continuum`):
   the input's pseudo-continuum differs from the model's true continuum only on the scale of the spline knots
   (``KNOT_SPACING``, 40 Å), and this costs 1 ms where refitting the model's pseudo-continuum costs 100 ms;
3. ``chi2_resim`` = mean over pixels of (input - model)^2 / sigma^2 with sigma^2 = (model / S/N_pix)^2 (the
   noise model of the training spectra, paper Eq. 1) + (model_error x model)^2 (the emulator's own error on
   held-out PySME spectra, recorded in the bundle), so that a good fit gives about 1 at any S/N;
   ``resim_rms`` = rms of input - model.

The pixels of the bundle's input mask (manifest ``input_mask``: telluric O₂, the Hα core, what the forward model
cannot make and the network never sees) are left out of both numbers and of the continuum match; a bundle without
the entry uses every pixel, bit for bit as before.

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

import numpy as np

from spectra.contracts.conventions import KNOT_SPACING

from .bundle import Bundle

__all__ = ["CONTINUUM_WINDOW", "Resimulator", "match_continuum", "reduced_chi2"]

CONTINUUM_WINDOW = KNOT_SPACING  # Å: the input's pseudo-continuum follows the model's on this scale
#: km/s, the step of the rotation's ln λ grid here: twice the training spectra's 0.5 km/s. Against a 0.25 km/s
#: rotation of 64 emulated spectra (v_broad 1-100 km/s) the model differs by 6e-5 rms, 0.25 % at most, against
#: per-pixel noise of 1.8 % at S/N 250 per Å, and the rotation (the check's largest cost) takes half the time
#: (float32: 2.2 against 4.4 ms per spectrum on one AMX Xeon core)
RESIM_DV = 1.0


def _grid_of(wavelength: np.ndarray):
    """A ``spectra.wavegrid.WavelengthGrid`` for a bundle's pixel grid (windows split at gaps > 1 A)."""
    from spectra.wavegrid import WavelengthGrid

    breaks = np.flatnonzero(np.diff(wavelength) > 1.0) + 1
    edges = [0, *breaks.tolist(), wavelength.size]
    segments = tuple(slice(a, b) for a, b in itertools.pairwise(edges))
    return WavelengthGrid("bundle", np.asarray(wavelength, dtype=float), segments,
                          tuple(f"window{k}" for k in range(len(segments))),
                          float(np.median(np.diff(wavelength))), "the bundle's pixel grid")


def match_continuum(flux: np.ndarray, model: np.ndarray, segments, width: int,
                    exclude: np.ndarray | None = None) -> np.ndarray:
    """``model`` (N, P) times a smooth factor that brings it to the continuum level of ``flux``: per window, the
    ratio flux / model averaged over ``width`` pixels, twice more with pixels beyond 3 sigma of that average
    (lines the model gets wrong) left out. Sigma is the robust scatter (1.4826 x median absolute deviation) of the
    pixels still in, taken on every ``SCATTER_STRIDE``-th pixel: a few thousand pixels per window give it to ~2 %,
    at a quarter of the cost. Pixels of ``exclude`` (P,) are left out from the start, like non-finite ratios (the
    factor there is interpolated from their neighbours, or 0 deep inside a band wider than ``width``)."""
    from scipy.ndimage import uniform_filter1d

    out = np.array(model, dtype=np.result_type(model, np.float32))  # float32 models stay float32
    for segment in segments:
        f, m = flux[:, segment], model[:, segment]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (f / m).astype(np.float32)  # a smooth factor to ~1e-7: float32 halves the time
        weight = np.isfinite(ratio).astype(np.float32)
        if exclude is not None:
            weight[:, exclude[segment]] = 0.0
        ratio[weight == 0] = 0.0
        size = min(width, f.shape[1])
        for _ in range(3):
            norm = uniform_filter1d(weight, size, axis=1, mode="nearest")
            smooth = uniform_filter1d(ratio * weight, size, axis=1, mode="nearest") / np.maximum(norm, 1e-9)
            deviation = np.abs(ratio - smooth)
            sample = np.where(weight[:, ::SCATTER_STRIDE] > 0, deviation[:, ::SCATTER_STRIDE], np.nan)
            scatter = 1.4826 * np.array([_median_of_finite(row) for row in sample])[:, None]
            weight *= deviation <= 3.0 * scatter
        out[:, segment] = m * smooth
    return out


SCATTER_STRIDE = 4  # match_continuum: the scatter of every 4th pixel


def _median_of_finite(values: np.ndarray) -> float:
    """The median of the finite values, +inf when there are none (then nothing is clipped)."""
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else np.inf


def reduced_chi2(flux: np.ndarray, model: np.ndarray, snr_per_pixel: np.ndarray, model_error: float = 0.0,
                 exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(chi2 per spectrum, rms per spectrum) of ``flux`` against ``model`` (N, P) with per-pixel S/N (N,), over the
    finite pixels not in ``exclude`` (P,) (the bundle's input mask; None: every pixel)."""
    # sigma^2 = model^2 (1/snr^2 + model_error^2): a factor per spectrum times model^2, so chi2 is a sum of squared
    # relative residuals (float32 arrays, float64 sums: a third of the float64 version's time)
    variance = 1.0 / np.asarray(snr_per_pixel, dtype=float) ** 2 + model_error**2
    model = np.asarray(model, dtype=np.float32)
    residual = np.asarray(flux, dtype=np.float32) - model
    good = np.isfinite(residual) & (model != 0) & (variance[:, None] > 0)
    if exclude is not None:
        good &= ~exclude
    n = np.maximum(good.sum(axis=1), 1)
    residual[~good] = 0.0
    square = residual * residual
    relative = square / np.where(good, model * model, 1.0)  # 0 wherever not good
    chi2 = relative.sum(axis=1, dtype=np.float64) / n / np.where(variance > 0, variance, np.inf)
    rms = np.sqrt(square.sum(axis=1, dtype=np.float64) / n)
    return chi2, rms


class Resimulator:
    """The bundle's emulator in an ONNX Runtime session, plus rotation and (for pseudo-continuum bundles)
    normalisation; see the module docstring."""

    def __init__(self, bundle: Bundle, threads: int = 0):
        from spectra.forward.rotation import Rotator, hr_rotator
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
        if self.margin:
            # rotate on the margin, return the HR pixels
            self.rotator = hr_rotator(hr_grid(self.margin).wave, dv=RESIM_DV, dtype=np.float32)
            if wavelength_sha256(self.rotator.wave) != wavelength_sha256(bundle.wavelength):
                raise ValueError(f"{bundle.path}: emulator.margin = {self.margin:g} A, but the bundle's pixel grid is "
                                 "not the 4MOST HR grid such an emulator's output is cropped to")
        else:
            self.rotator = Rotator(grid, dv=RESIM_DV, dtype=np.float32)  # a model for a noisy spectrum
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

    def check(self, flux: np.ndarray, snr: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chi2_resim, resim_rms) for input spectra (N, P) at S/N per A (N,) and their MAPs (N, D)."""
        model = self.model_flux(params)
        flux = np.asarray(flux, dtype=np.float32)
        if self.pseudo:
            model = match_continuum(flux, model, self.segments, self.window, self.exclude)
        return reduced_chi2(flux, model, np.asarray(snr, dtype=float) * self.per_pixel, self.model_error,
                            self.exclude)
