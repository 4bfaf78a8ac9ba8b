"""Wavelength bands the forward model cannot make, and the network's input mask built from them (issue 20).

One definition for the solar calibration, the benchmarks, training and the model bundle.

**What is masked.**

* **Telluric**: the O₂ γ band (6276–6320 Å, air) lies in the red HR window; every ground-based spectrum carries it
  and no synthesis does. Fed to the network it reads as stellar absorption.
* **Chromospheric**: the Hα core forms in the chromosphere; in the Sun it is 20 % deeper than any 1D LTE
  photospheric synthesis (``benchmarks/results/linelist_sun.md``).

**What is not masked.** Telluric H₂O: its lines (weak in the green window, denser beyond ~6470 Å in the red one) are
not listed, because the shared data hold no telluric line list (``shared/data/README.md``: stellar line lists,
atmospheres, physics tables, stellar spectra) and line positions are not invented here. Nor are the weaker O₂ lines
outside the γ band, sky emission, or instrument artefacts; ``spectra ingest`` fills pixels without data with 1.

**The input mask** (:func:`input_mask`, name ``"model-invalid"``, the training config's default ``input_mask``):
the pixels of those bands, each padded by its own margin, are set to a constant fill, 1.0 (the normalised continuum),
before the network sees a spectrum: in training (the grid's noisy copies and the fresh emulated stream alike) and in
inference (``runtime``), and inside the exported feature graph itself. A masked pixel then carries no information
whatever the spectrum holds there. The pad:

* telluric bands sit still in the observatory's frame, and observed spectra reach the network shifted to the star's
  rest frame (``spectra.observed.rv.doppler_to_rest``: λ_rest = λ / (1 + v/c), v the RV measured in the frame the
  spectrum was delivered in); a telluric band then moves by -v_topo λ / c, v_topo = v_rad - v_bary the star's velocity
  relative to the observatory. The pad covers |v_topo| <= :data:`TELLURIC_VELOCITY_KMS` = 150 km/s (3.2 Å at the
  band's red edge, 6320 Å): every star with |v_rad| <= 120 km/s whatever the barycentric correction (<= 30 km/s).
  Beyond that (halo stars; ``spectra ingest`` accepts up to 400 km/s) the band's edge leaks into the unmasked
  pixels by (|v_topo| - 150 km/s) λ / c;
* plus :data:`LSF_REACH` = 1 Å, how far the R 20 000 line-spread function carries a line beyond the band's edge
  (FWHM 0.3 Å at 6300 Å);
* the Hα core is stellar, at rest already: it is padded by the line-spread function only.

So :data:`TELLURIC_PAD` = ceil(6320 Å x 150 / c + 1 Å, 0.1 Å) = 4.2 Å; on the 4MOST HR pixels the mask covers
1128 of 25 200 pixels (6271.8–6324.2 Å and 6560.8–6564.8 Å).

**Recorded with the data.** :func:`input_mask` returns, with the mask, the description a model bundle's manifest
records (``input_mask``: the bands with their pads, the fill rule, the pixel count, the number of masked pixels and
the sha256 of the mask); :func:`mask_from_record` recomputes the mask from such a record on a bundle's pixels and
refuses, in one line, a record that does not describe them. The runtime applies exactly what the manifest records;
a bundle without the entry has no mask.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["CHROMOSPHERIC_CORES_AIR", "FILL_RULE", "INPUT_FILL", "INPUT_MASKS", "LSF_REACH", "MODEL_INVALID_BANDS_AIR",
           "NO_DATA_FILL", "NO_DATA_MIN_RUN", "TELLURIC_BANDS_AIR", "TELLURIC_PAD", "TELLURIC_VELOCITY_KMS", "MaskBand",
           "band_mask", "fill_masked", "input_mask", "mask_from_record", "mask_sha256", "no_data_pixels"]

#: air wavelength bands dominated by telluric absorption in ground-based spectra (O₂ γ band)
TELLURIC_BANDS_AIR: tuple[tuple[float, float], ...] = ((6276.0, 6320.0),)
#: air wavelength bands a 1D LTE photosphere cannot make (the Hα core)
CHROMOSPHERIC_CORES_AIR: tuple[tuple[float, float], ...] = ((6561.8, 6563.8),)
#: everything the forward model is not trusted to reproduce
MODEL_INVALID_BANDS_AIR = TELLURIC_BANDS_AIR + CHROMOSPHERIC_CORES_AIR

_C_KMS = 299_792.458
#: Å: how far the R 20 000 line-spread function carries a band's edge
LSF_REACH = 1.0
#: km/s: the largest velocity between the observatory and the star's rest frame the telluric pad covers
TELLURIC_VELOCITY_KMS = 150.0
#: Å each side of a telluric band: its shift at TELLURIC_VELOCITY_KMS at its red edge plus LSF_REACH, up to 0.1 Å
TELLURIC_PAD = math.ceil(10.0 * (max(hi for _, hi in TELLURIC_BANDS_AIR) * TELLURIC_VELOCITY_KMS / _C_KMS
                                 + LSF_REACH)) / 10.0
#: the value a masked pixel is given: the normalised continuum
INPUT_FILL = 1.0
#: how masked pixels are filled (the only rule so far): every masked pixel gets the same value
FILL_RULE = "constant"
#: what ``spectra ingest`` writes where a spectrum has no data (detector and order gaps, window edges beyond the
#: spectrum): the normalised continuum, exactly; and what :func:`no_data_pixels` reads back as no data
NO_DATA_FILL = 1.0
#: fewest consecutive pixels exactly equal to NO_DATA_FILL that read as no data. Measured data never repeat a value
#: exactly: one float32 pixel of a noisy normalised spectrum equals 1.0 with a probability of ~1e-5 (at S/N 1000 per
#: pixel), two neighbours with ~1e-10, so a pair is never noise; a single exact 1.0 is left as it is (it may be).
NO_DATA_MIN_RUN = 2


@dataclass(frozen=True)
class MaskBand:
    """One masked band: air wavelengths ``start``-``end`` [Å], each side padded by ``pad`` [Å]."""

    kind: str  # "telluric" or "chromospheric": why it is masked
    start: float
    end: float
    pad: float

    def record(self) -> dict:
        return {"kind": self.kind, "start": self.start, "end": self.end, "pad": self.pad}


#: input mask name (the training config's ``input_mask``) -> its bands
INPUT_MASKS: dict[str, tuple[MaskBand, ...]] = {
    "model-invalid": tuple(MaskBand("telluric", lo, hi, TELLURIC_PAD) for lo, hi in TELLURIC_BANDS_AIR)
    + tuple(MaskBand("chromospheric", lo, hi, LSF_REACH) for lo, hi in CHROMOSPHERIC_CORES_AIR),
    # the telluric bands alone: the H-alpha core stays (on synthetic spectra it carries T_eff information at low S/N)
    "telluric": tuple(MaskBand("telluric", lo, hi, TELLURIC_PAD) for lo, hi in TELLURIC_BANDS_AIR),
}
_DESCRIPTIONS = {
    "model-invalid": (
        "telluric O2 gamma band padded for |v_topo| <= 150 km/s plus the line-spread function, and the chromospheric "
        "H-alpha core padded for the line-spread function; masked pixels are set to the fill before the network "
        "sees the spectrum, and left out of the re-simulation chi2 (telluric H2O lines are not masked: no line list)"),
    "telluric": (
        "telluric O2 gamma band padded for |v_topo| <= 150 km/s plus the line-spread function; masked pixels are set "
        "to the fill before the network sees the spectrum, and left out of the re-simulation chi2 (telluric H2O "
        "lines are not masked: no line list)"),
}


def band_mask(wave_air: np.ndarray, bands: tuple[tuple[float, float], ...] = MODEL_INVALID_BANDS_AIR,
              pad: float = 1.0) -> np.ndarray:
    """True for the pixels of ``wave_air`` within ``pad`` Å of one of ``bands``."""
    wave_air = np.asarray(wave_air, dtype=float)
    out = np.zeros(wave_air.shape, dtype=bool)
    for lo, hi in bands:
        out |= (wave_air > lo - pad) & (wave_air < hi + pad)
    return out


def mask_sha256(mask: np.ndarray) -> str:
    """sha256 of a mask as one byte (0 or 1) per pixel, in pixel order: what a manifest records."""
    return hashlib.sha256(np.asarray(mask, dtype=bool).astype(np.uint8).tobytes()).hexdigest()


def _union(wave_air: np.ndarray, bands: tuple[MaskBand, ...]) -> np.ndarray:
    out = np.zeros(np.shape(wave_air), dtype=bool)
    for band in bands:
        out |= band_mask(wave_air, ((band.start, band.end),), band.pad)
    return out


def input_mask(wave_air: np.ndarray, name: str = "model-invalid") -> tuple[np.ndarray, dict]:
    """(mask (P,) bool, True = the network never sees the pixel; the manifest's description of it) for the pixels
    ``wave_air`` (air, Å). The description is JSON-able: name, bands with their pads, fill, pixel count, number of
    masked pixels, sha256 of the mask (:func:`mask_sha256`), the velocity the telluric pad covers."""
    if name not in INPUT_MASKS:
        raise ValueError(f"input mask {name!r} is not defined; known: {', '.join(INPUT_MASKS)} (or none)")
    wave_air = np.asarray(wave_air, dtype=float)
    bands = INPUT_MASKS[name]
    mask = _union(wave_air, bands)
    record = {"name": name, "bands": [b.record() for b in bands],
              "fill": {"rule": FILL_RULE, "value": INPUT_FILL}, "n_pixels": int(wave_air.size),
              "n_masked": int(mask.sum()), "sha256": mask_sha256(mask),
              "telluric_velocity_kms": TELLURIC_VELOCITY_KMS, "description": _DESCRIPTIONS[name]}
    return mask, record


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def mask_from_record(record: object, wave_air: np.ndarray) -> tuple[np.ndarray, float]:
    """(mask, fill value) that a recorded ``input_mask`` description stands for on the pixels ``wave_air``: the mask
    recomputed from the recorded bands and pads, checked against the recorded pixel count, number of masked pixels
    and sha256. ValueError, one line naming the field, for anything else (the runtime applies only a mask it can
    recompute exactly)."""
    if not isinstance(record, dict):
        raise ValueError(f"input_mask must be an object, got {record!r:.80}")
    bands = record.get("bands")
    if not isinstance(bands, list) or not bands:
        raise ValueError(f"input_mask.bands must list the masked bands, got {bands!r:.80}")
    parsed = []
    for i, band in enumerate(bands):
        if not isinstance(band, dict) or not isinstance(band.get("kind"), str) \
                or not all(_finite(band.get(k)) for k in ("start", "end", "pad")):
            raise ValueError(f"input_mask.bands[{i}] must be {{kind: text, start, end, pad: numbers (A)}}, got "
                             f"{band!r:.80}")
        if not (band["start"] < band["end"] and band["pad"] >= 0):
            raise ValueError(f"input_mask.bands[{i}]: start {band['start']} must be below end {band['end']} and pad "
                             f"{band['pad']} >= 0")
        parsed.append(MaskBand(band["kind"], float(band["start"]), float(band["end"]), float(band["pad"])))
    fill = record.get("fill")
    if not isinstance(fill, dict) or fill.get("rule") != FILL_RULE or not _finite(fill.get("value")):
        raise ValueError(f"input_mask.fill must be {{\"rule\": {FILL_RULE!r}, \"value\": a finite number}}, got "
                         f"{fill!r:.80}")
    wave_air = np.asarray(wave_air, dtype=float)
    n_pixels = record.get("n_pixels")
    if not isinstance(n_pixels, int) or isinstance(n_pixels, bool) or n_pixels != wave_air.size:
        raise ValueError(f"input_mask.n_pixels is {n_pixels!r}; the pixel grid has {wave_air.size}")
    mask = _union(wave_air, tuple(parsed))
    if record.get("n_masked") != int(mask.sum()):
        raise ValueError(f"input_mask.n_masked is {record.get('n_masked')!r}; its bands mask {int(mask.sum())} of "
                         "the pixel grid's pixels")
    if record.get("sha256") != mask_sha256(mask):
        raise ValueError(f"input_mask.sha256 {str(record.get('sha256'))[:16]}... differs from the "
                         f"{mask_sha256(mask)[:16]}... of the mask its bands make on the pixel grid")
    return mask, float(fill["value"])


def fill_masked(flux: np.ndarray, mask: np.ndarray, fill: float = INPUT_FILL, in_place: bool = False) -> np.ndarray:
    """``flux`` (..., P) with the pixels of ``mask`` (P,) set to ``fill``, in ``flux``'s dtype: the one rule by which
    masked pixels reach no network (training statistics, the stream's workers, the runtime). A copy, unless
    ``in_place`` (for an array of the caller's own making)."""
    out = flux if in_place else np.array(flux, copy=True)
    out[..., mask] = fill
    return out


def no_data_pixels(flux: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """(N, P) True where a spectrum (rows of ``flux``) has no data: runs of at least :data:`NO_DATA_MIN_RUN` pixels
    exactly equal to :data:`NO_DATA_FILL` (``spectra ingest``'s fill), outside ``exclude`` (P,) (the input mask,
    whose pixels never reach the network anyway).

    Why it matters: a stretch of exact continuum is not "no information" to a network trained on complete spectra
    but "no lines here". On the held-out set, the HARPS detector gap (5303-5338 Å, 659 pixels) filled with 1.0 took
    [Mg/Fe] from 0.04 to 0.19 dex at S/N 250 and its 68 % coverage to 0.09; ``runtime.inference`` replaces such
    pixels by the model's expectation instead (``runtime.inference.fill_no_data``)."""
    values = np.atleast_2d(np.asarray(flux))
    equal = values == np.asarray(NO_DATA_FILL, dtype=values.dtype)
    if exclude is not None:
        equal &= ~np.asarray(exclude, dtype=bool)
    out = np.zeros_like(equal)
    rows = np.flatnonzero(equal.any(axis=1))  # most survey rows hold no exact fill value at all
    if rows.size:
        # a pixel is in a run of >= NO_DATA_MIN_RUN when a window of that many pixels containing it is all equal;
        # each window's all-equal test is a difference of a cumulative sum
        run = NO_DATA_MIN_RUN
        counts = np.cumsum(np.pad(equal[rows], ((0, 0), (1, 0))), axis=1, dtype=np.int32)
        full = (counts[:, run:] - counts[:, :-run]) == run  # (n, P - run + 1): the window starting at each pixel
        covered = np.zeros((rows.size, equal.shape[1]), dtype=bool)
        for k in range(run):  # the pixels each all-equal window covers
            covered[:, k:k + full.shape[1]] |= full
        out[rows] = covered
    return out
