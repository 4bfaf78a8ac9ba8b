"""``spectra ingest``: observed spectra (FITS, ASCII) → a Zarr survey that ``runtime process`` reads.

Per spectrum (:func:`prepare`): read (``spectra.readers``) → air wavelengths (``wavegrid``) → rough
pseudo-continuum → radial velocity by cross-correlation with our synthetic templates, or ``--rv``
(``spectra.rv``) → rest frame → Gaussian resolution matching to the training resolution
(``spectra.prepare``) → flux-conserving rebin onto the HR pixels → pseudo-continuum normalisation on
those pixels (``spectra.continuum``) → S/N per Å from the error column, or DER_SNR.

Pixels without data (window edges beyond the spectrum, inter-order or detector gaps, which merged
echelle products often fill with runs of exact zeros: :func:`mask_no_data`) are set to 1,
the normalised continuum: the network was trained on complete spectra and a continuum pixel carries no
line information, so this is the least-biased fill it knows. Such rows are flagged PARTIAL_COVERAGE
and their covered fraction recorded. A file that cannot be read, or a spectrum that cannot be
prepared, becomes a row of NaN flux flagged READ_FAILED with the reason: a batch never stops.

Output layout: that of ``spectra.survey`` (``flux``, ``snr``, ``source_id``, ``wavelength``) plus one
provenance array per item: ``file``, ``object``, ``instrument``, ``rv``, ``rv_error``, ``rv_source``,
``rv_template``, ``input_resolution``, ``snr_source``, ``coverage``, ``ingest_flags`` and ``message``, and
``input_index`` (the row's file in the command's list). Rows are committed whole files at a time; an
interrupted run continues with ``--resume``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from enum import IntFlag
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from .continuum import ContinuumOptions, normalise, pseudo_continuum
from .prepare import MIN_RESOLUTION, TRAINING_RESOLUTION, match_resolution, resample_to_grid, snr_per_angstrom
from .readers import ObservedSpectrum, SpectrumReadError, read_spectra
from .rv import RVTemplates, default_templates, doppler_to_rest, measure_rv
from .survey import SURVEY_FORMAT
from .wavegrid import HR_WINDOWS, WavelengthGrid, hr_grid, vacuum_to_air

__all__ = ["IngestFlag", "IngestOptions", "PreparedSpectrum", "ingest", "prepare"]

MARGIN = 15.0  # Å kept beyond the HR windows: RV shifts up to ~400 km/s and convolution wings


class IngestFlag(IntFlag):
    READ_FAILED = 1  # file or spectrum unusable: flux is NaN, see ``message``
    LOW_RESOLUTION = 2  # input R below MIN_RESOLUTION: cannot be matched to the training resolution
    RESOLUTION_UNKNOWN = 4  # no R in the header and none given: not matched
    PARTIAL_COVERAGE = 8  # some HR pixels had no data and were set to the continuum (see ``coverage``)
    RV_UNCERTAIN = 16  # RV error > 1 km/s, weak CCF peak (< 0.15), or no RV could be measured
    SNR_ESTIMATED = 32  # no error column: S/N from DER_SNR
    UNIT_INFERRED = 64  # wavelength unit inferred from the range
    MEDIUM_ASSUMED = 128  # air/vacuum not stated in the file: air assumed


@dataclass(frozen=True)
class IngestOptions:
    fmt: str | None = None
    wave_unit: str | None = None
    medium: str | None = None  # force "air" or "vacuum"
    rv: float | None = None  # km/s: skip the cross-correlation
    resolution: float | None = None  # input resolving power when the file does not give it (or to override)
    snr: float | None = None  # S/N per Å to use instead of the measured one
    continuum: ContinuumOptions = field(default_factory=ContinuumOptions)
    max_rv: float = 400.0


@dataclass
class PreparedSpectrum:
    flux: np.ndarray
    snr: float
    source: str
    object: str = ""
    instrument: str = ""
    rv: float = float("nan")
    rv_error: float = float("nan")
    rv_source: str = ""
    rv_template: str = ""
    input_resolution: float = float("nan")
    snr_source: str = ""
    coverage: float = 0.0
    flags: int = 0
    message: str = ""


def _near_windows(wave: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    keep = np.zeros(wave.size, dtype=bool)
    for _, lo, hi in HR_WINDOWS:
        keep |= (wave >= lo - margin) & (wave <= hi + margin)
    return keep


def mask_no_data(flux: np.ndarray, min_run: int = 3) -> np.ndarray:
    """NaN for pixels without data: NaN/inf, and runs of at least ``min_run`` exact zeros (merged echelle
    spectra fill detector gaps with 0, e.g. HARPS between its two CCDs at ~5303-5338 Å)."""
    out = np.where(np.isfinite(flux), flux, np.nan)
    zero = np.concatenate([[False], out == 0.0, [False]]).astype(np.int8)
    starts, stops = np.flatnonzero(np.diff(zero) == 1), np.flatnonzero(np.diff(zero) == -1)
    for a, b in zip(starts, stops, strict=True):
        if b - a >= min_run:
            out[a:b] = np.nan
    return out


def failed(source: str, message: str, n_pixels: int) -> PreparedSpectrum:
    return PreparedSpectrum(flux=np.full(n_pixels, np.nan, dtype=np.float32), snr=float("nan"), source=source,
                            flags=int(IngestFlag.READ_FAILED), message=message)


def prepare(obs: ObservedSpectrum, options: IngestOptions | None = None, grid: WavelengthGrid | None = None,
            templates: RVTemplates | None = None) -> PreparedSpectrum:
    """One observed spectrum → HR pixels, rest frame, training resolution, pseudo-continuum normalised."""
    options = options or IngestOptions()
    grid = grid or hr_grid()
    flags = IngestFlag(0)
    if obs.unit_inferred and not options.wave_unit:
        flags |= IngestFlag.UNIT_INFERRED
    medium = options.medium or obs.medium
    if not options.medium and not obs.medium_from_header:
        flags |= IngestFlag.MEDIUM_ASSUMED
    wave = vacuum_to_air(obs.wave) if medium == "vacuum" else obs.wave.astype(float)
    keep = _near_windows(wave)
    if keep.sum() < 100:
        return failed(obs.source, f"the spectrum ({wave[0]:.0f}-{wave[-1]:.0f} A) does not reach the 4MOST HR "
                                  f"windows", grid.size)
    wave, flux = wave[keep], mask_no_data(obs.flux[keep].astype(float))
    error = obs.error[keep].astype(float) if obs.error is not None else None

    rough = normalise(wave, flux, options.continuum)
    if options.rv is not None:
        rv, rv_error, rv_source, rv_template = float(options.rv), 0.0, "given", ""
    else:
        try:
            result = measure_rv(wave, rough, templates, max_kms=options.max_rv)
            rv, rv_error, rv_source, rv_template = result.rv, result.error, "cross-correlation", result.template
            if not (rv_error <= 1.0) or result.peak < 0.15:
                flags |= IngestFlag.RV_UNCERTAIN
        except ValueError as exc:
            rv, rv_error, rv_source, rv_template = 0.0, float("nan"), f"failed: {exc}", ""
            flags |= IngestFlag.RV_UNCERTAIN
    wave = doppler_to_rest(wave, rv)

    resolution = options.resolution or obs.resolution
    if resolution is None:
        flags |= IngestFlag.RESOLUTION_UNKNOWN
        matched = flux
    else:
        if resolution < MIN_RESOLUTION:
            flags |= IngestFlag.LOW_RESOLUTION
        matched = match_resolution(wave, flux, resolution, TRAINING_RESOLUTION)

    windows = [(lo, hi) for _, lo, hi in HR_WINDOWS]
    if options.snr is not None:
        snr, snr_source = float(options.snr), "given"
    else:
        snr, snr_source = snr_per_angstrom(wave, flux, error, windows)
        if snr_source == "DER_SNR":
            flags |= IngestFlag.SNR_ESTIMATED

    pixels = resample_to_grid(wave, matched, grid)
    covered = np.isfinite(pixels)
    coverage = float(covered.mean())
    if coverage < 0.05:
        return failed(obs.source, f"only {100 * coverage:.1f} % of the HR pixels have data", grid.size)
    continuum = pseudo_continuum(grid.wave, pixels, options.continuum)
    normalised = np.where(covered, pixels / continuum, 1.0)
    if not np.isfinite(normalised).all():
        # a whole window without data has no continuum either: fill it too
        normalised = np.where(np.isfinite(normalised), normalised, 1.0)
    if coverage < 0.999:
        flags |= IngestFlag.PARTIAL_COVERAGE
    return PreparedSpectrum(
        flux=normalised.astype(np.float32), snr=snr, source=obs.source, object=obs.object,
        instrument=obs.instrument, rv=rv, rv_error=rv_error, rv_source=rv_source, rv_template=rv_template,
        input_resolution=float(resolution) if resolution else float("nan"), snr_source=snr_source,
        coverage=coverage, flags=int(flags))


_PROVENANCE = (("file", str, "source"), ("object", str, "object"), ("instrument", str, "instrument"),
               ("rv", "f8", "rv"), ("rv_error", "f8", "rv_error"), ("rv_source", str, "rv_source"),
               ("rv_template", str, "rv_template"), ("input_resolution", "f8", "input_resolution"),
               ("snr_source", str, "snr_source"), ("coverage", "f4", "coverage"),
               ("ingest_flags", "i4", "flags"), ("message", str, "message"))


@dataclass
class IngestReport:
    output: Path
    n_spectra: int
    n_failed: int
    flag_counts: dict[str, int]


class _SurveyWriter:
    """Appends prepared spectra to a Zarr survey, whole input files at a time.

    ``committed`` (a group attribute) counts the rows whose every array is written; it is updated after
    each flush. Reopening with ``resume`` truncates the arrays to it, so a run killed in the middle of a
    flush loses only that flush's rows, which are redone.
    """

    ROW_ARRAYS = ("flux", "snr", "source_id", "input_index", *(name for name, _, _ in _PROVENANCE))

    def __init__(self, out: Path, grid: WavelengthGrid, chunk: int, attrs: dict, first_id: int, resume: bool):
        self.chunk, self.buffer = chunk, []
        if resume and out.exists():
            self.root = zarr.open_group(str(out), mode="r+")
            if self.root.attrs.get("inputs_sha256") != attrs["inputs_sha256"]:
                raise ValueError(f"{out}: --resume with another list of input files or other options; "
                                 "give the same command, or drop --resume to start again")
            committed = int(self.root.attrs.get("committed", 0))
            for name in self.ROW_ARRAYS:
                shape = self.root[name].shape
                self.root[name].resize((committed, *shape[1:]))
            self.next_id = first_id + committed
            self.next_file = int(self.root["input_index"][committed - 1]) + 1 if committed else 0
            return
        self.root = zarr.open_group(str(out), mode="w")
        self.next_id, self.next_file = first_id, 0
        self.root.create_array("flux", shape=(0, grid.size), chunks=(chunk, grid.size), dtype="f4")
        self.root.create_array("snr", shape=(0,), chunks=(chunk,), dtype="f4")
        self.root.create_array("source_id", shape=(0,), chunks=(chunk,), dtype="i8")
        self.root.create_array("input_index", shape=(0,), chunks=(chunk,), dtype="i8")
        for name, dtype, _ in _PROVENANCE:
            self.root.create_array(name, shape=(0,), chunks=(chunk,), dtype=dtype)
        self.root.create_array("wavelength", data=grid.wave)
        self.root["wavelength"].attrs.update(medium="air", unit="Angstrom", sha256=grid.sha256())
        self.root["flux"].attrs["unit"] = "pseudo-continuum normalised"
        self.root["snr"].attrs["unit"] = "per Angstrom"
        self.root["input_index"].attrs["description"] = "position of the row's file in the ingest command's list"
        self.root["ingest_flags"].attrs["bits"] = {f.name: int(f) for f in IngestFlag}
        self.root.attrs.update({**attrs, "committed": 0})

    @property
    def n_rows(self) -> int:
        return int(self.root.attrs["committed"])

    def add_file(self, file_index: int, spectra: list[PreparedSpectrum]) -> None:
        self.buffer.extend((file_index, s) for s in spectra)
        if len(self.buffer) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        index = np.array([i for i, _ in self.buffer], dtype="i8")
        rows = [r for _, r in self.buffer]
        self.root["flux"].append(np.stack([r.flux for r in rows]))
        self.root["snr"].append(np.array([r.snr for r in rows], dtype="f4"))
        self.root["source_id"].append(np.arange(self.next_id, self.next_id + len(rows), dtype="i8"))
        self.root["input_index"].append(index)
        for name, dtype, attr in _PROVENANCE:
            values = [getattr(r, attr) for r in rows]
            self.root[name].append(np.array(values, dtype=dtype if dtype is not str else np.dtypes.StringDType()))
        self.next_id += len(rows)
        self.root.attrs["committed"] = self.n_rows + len(rows)
        self.buffer = []


def ingest(files: list[str | Path], out: str | Path, options: IngestOptions | None = None, chunk: int = 256,
           first_id: int = 0, progress: bool = True, per_file: dict[str, IngestOptions] | None = None,
           resume: bool = False) -> IngestReport:
    """Ingest ``files`` (each may hold several spectra) into a survey at ``out``.

    ``per_file`` maps a file (as given) to the options for that file (e.g. the resolving power of an
    ASCII spectrum whose header cannot say it); the others use ``options``. ``resume`` continues an
    interrupted run of the same command after its last fully written file.
    """
    import hashlib
    import json

    options = options or IngestOptions()
    per_file = {str(k): v for k, v in (per_file or {}).items()}
    out, grid = Path(out), hr_grid()
    templates = default_templates()
    settings = {"ingest_options": asdict(options), "per_file_options": {k: asdict(v) for k, v in per_file.items()},
                "first_id": first_id}
    inputs = json.dumps({"files": [str(f) for f in files], **settings}, sort_keys=True, default=str)
    attrs = {
        "format": SURVEY_FORMAT,
        "kind": "observed",
        **settings,
        "inputs_sha256": hashlib.sha256(inputs.encode()).hexdigest(),
        "n_inputs": len(files),
        "continuum": options.continuum.describe(),
        "continuum_kind": "pseudo",
        "training_resolution": TRAINING_RESOLUTION,
        "missing_pixels": "set to 1 (continuum); rows flagged PARTIAL_COVERAGE",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    writer = _SurveyWriter(out, grid, chunk, attrs, first_id, resume)
    counts = {f.name: 0 for f in IngestFlag}
    todo = range(writer.next_file, len(files))
    for k in tqdm(todo, desc="ingest", unit="file", disable=not progress):
        path = files[k]
        file_options = per_file.get(str(path), options)
        try:
            spectra = read_spectra(path, file_options.fmt, file_options.wave_unit)
        except SpectrumReadError as exc:
            prepared = [failed(str(path), exc.problem, grid.size)]
        else:
            prepared = []
            for obs in spectra:
                try:
                    prepared.append(prepare(obs, file_options, grid, templates))
                except (ValueError, FloatingPointError) as exc:  # one odd spectrum never stops a batch
                    prepared.append(failed(obs.source, f"preparation failed: {exc}", grid.size))
        writer.add_file(k, prepared)
    writer.flush()
    flags = writer.root["ingest_flags"][:]
    for f in IngestFlag:
        counts[f.name] = int(np.count_nonzero(flags & f))
    writer.root.attrs["n_spectra"] = writer.n_rows
    return IngestReport(out, writer.n_rows, counts[IngestFlag.READ_FAILED.name], counts)
