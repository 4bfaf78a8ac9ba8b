"""Catalogue rows from spectra: the one computation behind ``runtime process`` and the Python API (``runtime.api``).

Given spectra already on the model's pixels (flux, S/N per Å, source ids) and the ONNX Runtime sessions of a
bundle, :func:`catalogue_rows` returns every catalogue column of those rows: input checks and their flags
(INVALID_FLUX, INVALID_SNR, READ_FAILED, the trained S/N range and ``snr_cap``), the posterior summaries (MAP,
quantiles, symmetric errors ``e_<p>``, rejection), the re-simulation check, the bias correction, the flags that
follow from the result (HIGH_REJECTION, ALL_REJECTED, METAL_POOR, POOR_FIT) and the carried ingestion columns.

The bundle's input mask (manifest ``input_mask``): the masked pixels (telluric O₂, the Hα core) are not checked
(:func:`validate_flux` sees ``Bundle.used_pixels``), are set to the fill before the feature extractor
(``runtime.sampler.OnnxPosterior.features``) and are left out of the re-simulation check (``runtime.resim``), so
whatever a spectrum holds there (telluric absorption, or the NaN of a pipeline that blanks tellurics) changes no
column.

Pixels without data (``spectra ingest``'s fill, runs of exactly 1.0 outside the input mask:
``spectra.contracts.masks.no_data_pixels``) are not shown to the network as they are: a stretch of continuum reads
as "no lines here" and, in the HARPS detector gap, biased [Mg/Fe] by 0.15 dex. When the bundle carries an emulator
(``resim``), :func:`fill_no_data` replaces them by the model's expectation at the MAP and draws the posterior again,
:data:`NO_DATA_PASSES` times (flag NO_DATA_FILLED); the re-simulation check leaves them out.

Why one function: the checks used to live inside ``runtime.pipeline.compute_chunk``, so anyone calling the sampler
directly got unflagged, uncapped, unchecked numbers. Now a survey task (reading and writing around it) and a
notebook (``Model.infer``) run the same code, and give the same rows for the same (seed, source_id).

Rows are independent: a row's values depend on its own flux, S/N, source id and the settings only, never on which
other rows share the call (the sampler's latent draws come from (seed, source_id)), so blocks can be concatenated.
No torch, no Dask here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from catalog.schema import PROVENANCE_COLUMNS
from spectra.contracts import quantiles
from spectra.contracts.flags import BAD, HIGH_REJECTION_FRACTION, METAL_POOR_FEH, Flag
from spectra.contracts.masks import NO_DATA_FILL, no_data_pixels

from .bundle import BundleError
from .posterior import PosteriorSummary, summarize

if TYPE_CHECKING:
    from .bundle import Manifest
    from .resim import Resimulator
    from .sampler import OnnxPosterior

__all__ = ["MIN_SAMPLES", "NO_DATA_PASSES", "InferenceSettings", "bias_corrected", "catalogue_rows", "check_samples",
           "fill_no_data", "network_input", "validate_flux"]

#: fewest posterior samples per spectrum a run accepts. The catalogue's quantiles (2.5 to 97.5 %) are read off the
#: samples: with 1 sample p16 = p84 = MAP, with 3 they are the neighbours of the median. At 32 each quantile has
#: samples on both sides (the 2.5 % one lies between the two lowest) and the 16/84 % ones carry a sampling error of
#: about 0.27 sigma (1.5 sigma / sqrt(n) for a Gaussian): coarse but meaningful, for quick checks; the default
#: 4096 brings it to 0.02 sigma. (The tests' and benchmarks' quick runs use 32 to 256.)
MIN_SAMPLES = 32
#: how often a spectrum with pixels without data is drawn again with them filled at the latest MAP. Measured on the
#: HARPS Sun (its detector gap) and on held-out spectra with that gap: the second pass moves the MAP by a tenth of
#: the first (T_eff 71 K, then 11 K, then 1 K), so two passes, three posteriors in all, for such rows only
NO_DATA_PASSES = 2
#: the stages whose seconds :func:`catalogue_rows` adds to a ``timings`` dict
TIMED_STAGES = ("network", "summary", "resim", "other")
_PROVENANCE_DTYPES = {c.name: c.dtype for c in PROVENANCE_COLUMNS}


@dataclass(frozen=True)
class InferenceSettings:
    """What decides a row's values besides its spectrum (``runtime process`` options, ``Model.infer`` arguments)."""

    seed: int = 0
    samples: int = 4096
    batch: int = 16  # spectra per flow call; results do not depend on it
    snr_cap: bool = False  # S/N above the trained range -> the trained maximum (flag SNR_CAPPED)
    bias_correction: bool = False  # add <p>_corr columns from the manifest's coefficients
    continuum_mismatch: bool = False  # the input is normalised unlike the training spectra: flag every row


def check_samples(samples: object, option: str = "--samples") -> int:
    """``samples`` as an int >= :data:`MIN_SAMPLES`, or a one-line error saying why fewer are refused."""
    if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < MIN_SAMPLES:
        raise ValueError(f"{option} must be >= {MIN_SAMPLES}, got {samples}: the catalogue's quantiles "
                         f"(2.5 to 97.5 %) and 68 % intervals are estimated from the samples, and fewer leave the "
                         "tails a sample or two (default 4096)")
    return int(samples)


def validate_flux(flux: np.ndarray) -> np.ndarray:
    """True for rows usable as input. Individual negative pixels are legitimate noise at low S/N;
    a row is invalid if any pixel is NaN/inf (also: a short row padded with NaN), its median is <= 0
    (negative or zero spectra), or it is constant.

    "median > 0" is decided by counting positive pixels (more than half positive, or exactly half for an even
    count and then the mean of the two middle values), the same answer as ``np.median`` at a tenth of its cost.
    """
    finite = np.isfinite(flux).all(axis=1)
    safe = np.where(np.isfinite(flux), flux, 0.0)
    p = safe.shape[1]
    positive = np.count_nonzero(safe > 0, axis=1)
    median_positive = positive > p // 2
    if p % 2 == 0:
        tie = np.flatnonzero(positive == p // 2)  # middle pair straddles 0: decide with the real median
        if tie.size:
            median_positive[tie] = np.median(safe[tie], axis=1) > 0
    return finite & median_positive & (np.ptp(safe, axis=1) > 0)


def bias_corrected(maps: np.ndarray, manifest: Manifest, requested: bool) -> dict[str, np.ndarray]:
    """Paper Eq. B.1, X - (a * T_eff + b) with the MAP T_eff, for the parameters the manifest has coefficients for;
    {} unless ``requested``; never silently nothing when requested (one line naming the bundle)."""
    correction = manifest.bias_correction
    if not requested:
        return {}
    if not correction:
        raise BundleError(f"{manifest.raw.get('provenance', {}).get('training_run', 'bundle')}: --bias-correction "
                          "requested but the manifest holds no coefficients")
    teff = maps[:, manifest.names.index(correction.get("teff_parameter", "teff"))]
    return {name: maps[:, manifest.names.index(name)] - (c["a"] * teff + c["b"])
            for name, c in correction["coefficients"].items() if name in manifest.names}


def _input_flags(flux: np.ndarray, snr: np.ndarray, failed: np.ndarray, ingest_flags: np.ndarray,
                 snr_range: tuple[float, float], settings: InferenceSettings) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """(flags, S/N used for inference, rows usable) from the input alone (``flux``: the pixels the network uses)."""
    lo_snr, hi_snr = snr_range
    flags = np.zeros(flux.shape[0], dtype=np.int32)
    ok_flux, ok_snr = validate_flux(flux), np.isfinite(snr) & (snr > 0)
    flags[~ok_flux & ~failed] |= Flag.INVALID_FLUX
    flags[~ok_snr & ~failed] |= Flag.INVALID_SNR
    flags[failed] |= Flag.READ_FAILED
    snr_used = snr.copy()
    if settings.snr_cap:
        capped = ok_snr & (snr > hi_snr)
        snr_used[capped] = hi_snr
        flags[capped] |= Flag.SNR_CAPPED
    flags[ok_snr & ((snr_used < lo_snr) | (snr_used > hi_snr))] |= Flag.SNR_OUT_OF_RANGE
    if settings.continuum_mismatch:
        flags |= Flag.CONTINUUM_MISMATCH
    flags[ingest_flags != 0] |= Flag.INGEST_FLAGGED
    return flags, snr_used, np.flatnonzero(ok_flux & ok_snr & ~failed)


def _summaries(posterior: OnnxPosterior, flux: np.ndarray, snr: np.ndarray, ids: np.ndarray,
               settings: InferenceSettings, timings: dict[str, float]) -> PosteriorSummary:
    """Posterior summaries of the given rows: on the device when the summary graph runs there, else sampled and
    summarised by numpy here (the timings split network and summary either way)."""
    t = time.perf_counter()
    if posterior.summary_on_device:  # flow and summary on the device: only summaries come back
        summary = posterior.posterior(flux, snr.reshape(-1, 1), ids, settings.seed, settings.samples)
        timings["network"] += time.perf_counter() - t
        return summary
    samples, log_density = posterior.sample(flux, snr.reshape(-1, 1), ids, settings.seed, settings.samples)
    timings["network"] += time.perf_counter() - t
    t = time.perf_counter()
    manifest = posterior.manifest
    summary = summarize(samples, log_density, manifest.lower, manifest.upper)
    timings["summary"] += time.perf_counter() - t
    return summary


def catalogue_rows(posterior: OnnxPosterior, flux: np.ndarray, snr: np.ndarray, source_id: np.ndarray,
                   settings: InferenceSettings, *, resim: Resimulator | None = None, failed: np.ndarray | None = None,
                   ingest_flags: np.ndarray | None = None, provenance: dict[str, np.ndarray] | None = None,
                   timings: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Every catalogue column (name -> array of N values) for N spectra on the model's pixels.

    ``flux`` (N, P), ``snr`` (N,) per Å, ``source_id`` (N,) non-negative ids (a row's draws depend on (seed, id));
    ``resim``: the bundle's re-simulation check, or None for no ``chi2_resim``/``resim_rms`` columns; ``failed``:
    rows whose data could not be read (READ_FAILED); ``ingest_flags``: ``spectra ingest``'s bits per row;
    ``provenance``: ingestion columns to carry (names of ``catalog.schema.PROVENANCE_COLUMNS``); ``timings``: a dict
    whose ``network``, ``summary``, ``resim`` and ``other`` seconds are increased.
    """
    clock = time.perf_counter
    start = clock()
    timings = timings if timings is not None else dict.fromkeys(TIMED_STAGES, 0.0)
    manifest = posterior.manifest
    n, d = flux.shape[0], manifest.n_params
    failed = np.zeros(n, dtype=bool) if failed is None else np.asarray(failed, dtype=bool)
    ingest = np.zeros(n, dtype=np.int32) if ingest_flags is None else np.asarray(ingest_flags).astype(np.int32)
    flags, snr_used, usable = _input_flags(posterior.bundle.used_pixels(flux), snr, failed, ingest,
                                           manifest.snr_range, settings)
    maps, quants = np.full((n, d), np.nan), np.full((n, len(quantiles.QUANTILES), d), np.nan)
    n_valid, f_reject = np.zeros(n, dtype=np.int32), np.full(n, np.nan)
    chi2, resim_rms = np.full(n, np.nan), np.full(n, np.nan)
    timings["other"] += clock() - start
    # pixels without data: found for the rows to process, filled only where an emulator can fill them
    holes = no_data_pixels(flux[usable], posterior.bundle.input_mask) if resim is not None else None
    for b in range(0, usable.size, settings.batch):
        rows = usable[b:b + settings.batch]
        block = flux[rows]
        summary = _summaries(posterior, block, snr_used[rows], source_id[rows], settings, timings)
        if resim is not None and holes is not None and holes[b:b + settings.batch].any():
            block = np.where(holes[b:b + settings.batch], np.float32(np.nan), block)  # no data: NaN from here on
            summary, filled, _ = fill_no_data(posterior, resim, block, snr_used[rows], source_id[rows], settings,
                                              summary, timings)
            flags[rows[filled]] |= Flag.NO_DATA_FILLED
        maps[rows], quants[rows] = summary.map, manifest.calibrated_quantiles(summary.quantiles, snr_used[rows])
        n_valid[rows], f_reject[rows] = summary.n_valid, summary.f_reject
        if resim is not None:
            t = clock()
            fitted = np.isfinite(summary.map).all(axis=1)
            if fitted.any():
                chi2[rows[fitted]], resim_rms[rows[fitted]] = resim.check(block[fitted], snr_used[rows[fitted]],
                                                                          summary.map[fitted])
            timings["resim"] += clock() - t
    t = clock()
    flags |= _result_flags(manifest, maps, n_valid, f_reject, chi2, resim)
    values: dict[str, np.ndarray] = {"source_id": np.asarray(source_id, dtype=np.int64),
                                     "snr": np.asarray(snr).astype(np.float32)}
    for name, column in (provenance or {}).items():
        column = np.asarray(column)
        values[name] = column if column.dtype.kind in "OTU" else column.astype(_PROVENANCE_DTYPES.get(name,
                                                                                                      "float32"))
    values.update(_estimate_columns(manifest, maps, quants))
    for name, corrected in bias_corrected(maps, manifest, settings.bias_correction).items():
        values[name + "_corr"] = corrected.astype(np.float32)
    if resim is not None:
        values.update(chi2_resim=chi2.astype(np.float32), resim_rms=resim_rms.astype(np.float32))
    values.update(f_reject=f_reject.astype(np.float32), n_valid=n_valid, ingest_flags=ingest, flags=flags,
                  flag_warn=flags != 0, flag_bad=(flags & int(BAD)) != 0)
    timings["other"] += clock() - t
    return values


def fill_no_data(posterior: OnnxPosterior, resim: Resimulator, flux: np.ndarray, snr: np.ndarray, ids: np.ndarray,
                 settings: InferenceSettings, summary: PosteriorSummary,
                 timings: dict[str, float]) -> tuple[PosteriorSummary, np.ndarray, np.ndarray]:
    """(the summary after filling, indices of the rows filled, the flux (N, P) the last pass saw) for spectra
    ``flux`` (N, P) whose NaN pixels have no data, given their first ``summary``.

    :data:`NO_DATA_PASSES` times: the NaN pixels of each row with some get the emulator's spectrum at the row's
    current MAP, matched to the row's own continuum (``Resimulator.expected_flux``), and the row's posterior is drawn
    again from the same latent draws (seed, source_id): a fixed point in which the gap holds what the estimate
    predicts, so it pulls the estimate nowhere. A row without a MAP yet (every sample outside the training bounds, as
    a wide gap of continuum can cause) starts from its samples' median, clipped into the bounds. The fill is
    noiseless: adding noise at the row's S/N changed no measured σ or coverage (held-out set, HARPS and UVES gaps)."""
    clock = time.perf_counter
    manifest = posterior.manifest
    gaps = ~np.isfinite(flux)
    rows = np.flatnonzero(gaps.any(axis=1))
    estimate = np.array(summary.map[rows], dtype=np.float32)
    unknown = np.flatnonzero(~np.isfinite(estimate).all(axis=1))
    if unknown.size:  # every sample outside the bounds: start from their median, clipped into the bounds
        t = clock()
        first = np.where(gaps[rows[unknown]], np.float32(NO_DATA_FILL), flux[rows[unknown]])  # the input as first drawn
        samples, _ = posterior.sample(first, snr[rows[unknown]].reshape(-1, 1), ids[rows[unknown]], settings.seed,
                                      settings.samples)
        estimate[unknown] = np.clip(np.nanmedian(samples, axis=1), manifest.lower, manifest.upper)
        timings["network"] += clock() - t
    out = PosteriorSummary(summary.map.copy(), summary.quantiles.copy(), summary.n_valid.copy(),
                           summary.f_reject.copy())
    seen = np.array(flux, dtype=np.float32)
    for _ in range(NO_DATA_PASSES):
        t = clock()
        expected = resim.expected_flux(flux[rows], estimate)
        filled = np.where(gaps[rows], expected, flux[rows]).astype(np.float32)
        seen[rows] = filled
        timings["resim"] += clock() - t
        again = _summaries(posterior, filled, snr[rows], ids[rows], settings, timings)
        out.map[rows], out.quantiles[rows] = again.map, again.quantiles
        out.n_valid[rows], out.f_reject[rows] = again.n_valid, again.f_reject
        found = np.isfinite(again.map).all(axis=1)
        estimate[found] = again.map[found]  # a row that lost its MAP keeps filling from its last one
    return out, rows, seen


def network_input(posterior: OnnxPosterior, resim: Resimulator | None, flux: np.ndarray, snr: np.ndarray,
                  ids: np.ndarray, settings: InferenceSettings) -> np.ndarray:
    """``flux`` (N, P) as the last posterior :func:`catalogue_rows` draws for it sees it: pixels without data filled
    by :func:`fill_no_data` when ``resim`` is given, else unchanged (``runtime.api.Model.posterior``: the samples of
    the row ``infer`` summarises)."""
    if resim is None:
        return flux
    holes = no_data_pixels(flux, posterior.bundle.input_mask)
    if not holes.any():
        return flux
    timings = dict.fromkeys(TIMED_STAGES, 0.0)
    first = _summaries(posterior, flux, snr, ids, settings, timings)  # as catalogue_rows: the input as it came
    return fill_no_data(posterior, resim, np.where(holes, np.float32(np.nan), flux), snr, ids, settings, first,
                        timings)[2]


def _result_flags(manifest: Manifest, maps: np.ndarray, n_valid: np.ndarray, f_reject: np.ndarray,
                  chi2: np.ndarray, resim: Resimulator | None) -> np.ndarray:
    """The flags that follow from the posterior and the re-simulation check."""
    flags = np.zeros(maps.shape[0], dtype=np.int32)
    processed = np.isfinite(f_reject)
    flags[processed & (f_reject > HIGH_REJECTION_FRACTION)] |= Flag.HIGH_REJECTION
    flags[processed & (n_valid == 0)] |= Flag.ALL_REJECTED
    if "fe_h" in manifest.names:
        feh = maps[:, manifest.names.index("fe_h")]
        flags[np.isfinite(feh) & (feh <= METAL_POOR_FEH)] |= Flag.METAL_POOR
    if resim is not None and resim.threshold is not None:
        flags[np.isfinite(chi2) & (chi2 > resim.threshold)] |= Flag.POOR_FIT
    return flags


def _estimate_columns(manifest: Manifest, maps: np.ndarray, quants: np.ndarray) -> dict[str, np.ndarray]:
    """Per parameter: MAP, quantiles and ``e_<p>`` = half the 16-84 % width (float32, as stored)."""
    values = {}
    q16, q84 = quantiles.index("p16"), quantiles.index("p84")
    for j, name in enumerate(manifest.names):
        values[name] = maps[:, j].astype(np.float32)
        for qi, level in enumerate(quantiles.QUANTILE_LEVELS):
            values[name + level.suffix] = quants[:, qi, j].astype(np.float32)
        values["e_" + name] = (0.5 * (quants[:, q84, j] - quants[:, q16, j])).astype(np.float32)
    return values
