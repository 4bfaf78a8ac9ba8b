"""``spectra ingest``: observed spectra (FITS, ASCII) → a Zarr survey that ``runtime process`` reads.

Per spectrum (:func:`prepare`): read (``spectra.observed.readers``) → air wavelengths (``wavegrid``) → rough
pseudo-continuum → radial velocity by cross-correlation with our synthetic templates, or ``--rv``
(``spectra.observed.rv``) → rest frame → Gaussian resolution matching to the training resolution
(``spectra.observed.prepare``) → flux-conserving rebin onto the HR pixels → pseudo-continuum normalisation on
those pixels (``spectra.forward.continuum``) → S/N per Å from the error column, or DER_SNR.

Pixels without data (window edges beyond the spectrum, inter-order or detector gaps, which merged
echelle products often fill with runs of exact zeros: :func:`mask_no_data`) are set to exactly 1
(``spectra.contracts.masks.NO_DATA_FILL``), the normalised continuum, and the row is flagged PARTIAL_COVERAGE with
its covered fraction recorded. The value is a marker, not an estimate: to a network trained on complete spectra a
stretch of continuum means "no lines here", so ``runtime`` finds such runs again
(``spectra.contracts.masks.no_data_pixels``) and replaces them by the model's expectation before its final pass
(``runtime.inference``). A file that cannot be read, or a spectrum that cannot be
prepared, becomes a row of NaN flux flagged READ_FAILED with the reason: a batch never stops.

Output layout: that of ``spectra.stores.survey`` (``flux``, ``snr``, ``source_id``, ``wavelength``) plus one
provenance array per item: ``file``, ``object``, ``instrument``, ``rv``, ``rv_error``, ``rv_source``,
``rv_template``, ``input_resolution``, ``snr_source``, ``coverage``, ``ingest_flags``, ``message``, ``ra``,
``dec`` and ``mjd`` (from the header; NaN when it states none), and
``input_index`` (the row's file in the command's list). Rows are committed whole files at a time; an
interrupted run continues with ``--resume``.

A folder among the inputs stands for the spectrum files directly inside it (:func:`expand_inputs`: by suffix, in
name order). A run that stops before it has committed a row (an error, Ctrl-C) removes the survey it created: an
empty survey holds nothing to resume and would only make the retry refuse its output as existing. A run that stops
later keeps its committed rows for ``--resume``, and its error carries a note saying so.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from ..contracts.flags import CCF_PEAK_LIMIT, CONTINUUM_EXCESS_LIMIT, RV_ERROR_LIMIT, IngestFlag
from ..contracts.masks import NO_DATA_FILL
from ..contracts.streams import check_index
from ..contracts.survey import check_flux_chunk
from ..forward.continuum import ContinuumOptions, normalise, pseudo_continuum
from ..stores.survey import SURVEY_FORMAT
from ..wavegrid import HR_WINDOWS, WavelengthGrid, hr_grid, vacuum_to_air
from .prepare import MIN_RESOLUTION, TRAINING_RESOLUTION, match_resolution, resample_to_grid, snr_per_angstrom
from .readers import ObservedSpectrum, SpectrumReadError, read_spectra
from .rv import RVTemplates, default_templates, doppler_to_rest, measure_rv

__all__ = ["SPECTRUM_SUFFIXES", "IngestFlag", "IngestOptions", "PreparedSpectrum", "expand_inputs", "ingest",
           "prepare", "read_options_table"]

MARGIN = 15.0  # Å kept beyond the HR windows: RV shifts up to ~400 km/s and convolution wings
#: the files a folder argument stands for: what ``spectra.observed.readers`` reads (FITS by content; ASCII, also
#: gzipped). Not .csv: the ``--table`` of per-file settings often sits in the same folder.
SPECTRUM_SUFFIXES = (".fits", ".fit", ".fts", ".txt", ".dat", ".asc", ".txt.gz", ".dat.gz", ".asc.gz")


#: what each flag means, for the row's ``message`` (every set flag gets a note)
FLAG_NOTES = {
    IngestFlag.LOW_RESOLUTION: "input R {resolution:.0f} is below {min_resolution:.0f}: lines broader than the "
                               "model's, cannot be matched",
    IngestFlag.RESOLUTION_UNKNOWN: "resolving power unknown ({resolution_source}): give --resolution or a row in "
                                   "--table",
    IngestFlag.PARTIAL_COVERAGE: "{missing:.1f} % of the model's pixels had no data and were set to the continuum",
    IngestFlag.RV_UNCERTAIN: "RV uncertain: {rv_source}, error {rv_error:.2g} km/s",
    IngestFlag.SNR_ESTIMATED: "no error column: S/N {snr:.0f} per A estimated with DER_SNR",
    IngestFlag.UNIT_INFERRED: "wavelength unit not stated: inferred from the range",
    IngestFlag.MEDIUM_ASSUMED: "air/vacuum not stated: air assumed (give --medium)",
    IngestFlag.CONTINUUM_POOR: "pseudo-continuum fit poor: {continuum_excess:.1%} of the pixels lie above "
                               "1 + 3 sigma + 1 % after normalisation",
}


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
    resolution_source: str = ""
    snr_source: str = ""
    coverage: float = 0.0
    continuum_method: str = ""
    continuum_excess: float = float("nan")
    flags: int = 0
    message: str = ""
    ra: float = float("nan")  # deg, from the input's header (``spectra.observed.readers.sky_and_time``)
    dec: float = float("nan")  # deg
    mjd: float = float("nan")  # observation date


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


FITTED = "pseudo-continuum fitted"


def failed(source: str, message: str, n_pixels: int, flags: int = 0, **known) -> PreparedSpectrum:
    return PreparedSpectrum(flux=np.full(n_pixels, np.nan, dtype=np.float32), snr=float("nan"), source=source,
                            flags=int(IngestFlag.READ_FAILED) | flags, message=message, **known)


def already_normalised(flux: np.ndarray, block: int = 800, tolerance: float = 0.03) -> bool:
    """True if the spectrum (finite pixels on the HR grid) is already continuum-normalised: in every 40 Å block
    with data, the 95th percentile (the upper envelope, robust to noise) lies within ``tolerance`` of 1.
    Recorded in ``continuum_method``; such input is pseudo-continuum normalised like any other (:func:`prepare`).
    (Until session 19 it was kept as it was: a true-continuum row in a pseudo-continuum survey.)"""
    good = flux[np.isfinite(flux)]
    if good.size < block:
        return False
    for start in range(0, good.size - block // 2, block):
        part = good[start:start + block]
        if part.size >= block // 2 and abs(np.percentile(part, 95) - 1.0) > tolerance:
            return False
    return True


def continuum_excess(normalised: np.ndarray, covered: np.ndarray, snr_per_pixel: float) -> float:
    """Fraction of covered pixels above 1 + 3 sigma + 1 %: near zero for a good continuum (noise puts 0.13 %
    there), large where the pseudo-continuum sits below the true one (cool giants, broad features)."""
    sigma = 1.0 / snr_per_pixel if np.isfinite(snr_per_pixel) and snr_per_pixel > 0 else 0.0
    values = normalised[covered]
    return float(np.mean(values > 1.0 + 3.0 * sigma + 0.01)) if values.size else float("nan")


def describe_flags(flags: IngestFlag, **values) -> str:
    """The row's ``message``: one note per flag set (:data:`FLAG_NOTES`)."""
    notes = []
    for flag, text in FLAG_NOTES.items():
        if flags & flag:
            try:
                notes.append(text.format(**values))
            except (KeyError, ValueError):
                notes.append(flag.name)
    return "; ".join(notes)


def prepare(obs: ObservedSpectrum, options: IngestOptions | None = None, grid: WavelengthGrid | None = None,
            templates: RVTemplates | None = None) -> PreparedSpectrum:
    """One observed spectrum → HR pixels, rest frame, training resolution, pseudo-continuum normalised."""
    options = options or IngestOptions()
    grid = grid or hr_grid()
    flags = IngestFlag(0)
    sky = {"ra": obs.ra, "dec": obs.dec, "mjd": obs.mjd}  # carried on failed rows too: they name the observation
    if obs.unit_inferred and not options.wave_unit:
        flags |= IngestFlag.UNIT_INFERRED
    medium = options.medium or obs.medium
    if not options.medium and not obs.medium_from_header:
        flags |= IngestFlag.MEDIUM_ASSUMED
    wave = vacuum_to_air(obs.wave) if medium == "vacuum" else obs.wave.astype(float)
    keep = _near_windows(wave)
    if keep.sum() < 100:
        return failed(obs.source, f"the spectrum ({wave[0]:.0f}-{wave[-1]:.0f} A) does not reach the 4MOST HR "
                                  f"windows", grid.size, **sky)
    wave, flux = wave[keep], mask_no_data(obs.flux[keep].astype(float))
    error = obs.error[keep].astype(float) if obs.error is not None else None

    rough = normalise(wave, flux, options.continuum)
    if options.rv is not None:
        rv, rv_error, rv_source, rv_template = float(options.rv), 0.0, "given", ""
    else:
        try:
            result = measure_rv(wave, rough, templates, max_kms=options.max_rv)
            rv, rv_error, rv_source, rv_template = result.rv, result.error, "cross-correlation", result.template
            if not (rv_error <= RV_ERROR_LIMIT) or result.peak < CCF_PEAK_LIMIT:
                flags |= IngestFlag.RV_UNCERTAIN
        except ValueError as exc:
            rv, rv_error, rv_source, rv_template = 0.0, float("nan"), f"failed: {exc}", ""
            flags |= IngestFlag.RV_UNCERTAIN
    wave = doppler_to_rest(wave, rv)

    resolution = options.resolution or obs.resolution
    resolution_source = "given (--resolution or --table)" if options.resolution else obs.resolution_source
    if resolution is None:
        note = describe_flags(IngestFlag.RESOLUTION_UNKNOWN, resolution_source=resolution_source)
        return failed(obs.source, note, grid.size, int(IngestFlag.RESOLUTION_UNKNOWN), object=obs.object,
                      instrument=obs.instrument, resolution_source=resolution_source, **sky)
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
        return failed(obs.source, f"only {100 * coverage:.1f} % of the HR pixels have data", grid.size, **sky)
    # Every row of the survey is pseudo-continuum normalised (its continuum_kind), as the training spectra of pseudo
    # models were: normalised to their true continuum by the synthesis, then divided by the fitted pseudo-continuum.
    # Input already normalised by its provider gets the same fit (it moves it by up to ~3 % near Mg b, as it moved
    # the training spectra); `continuum_method` records that it was normalised already.
    continuum = pseudo_continuum(grid.wave, pixels, options.continuum)
    normalised = np.where(covered, pixels / continuum, NO_DATA_FILL)
    method = f"{FITTED} (input already normalised)" if already_normalised(pixels) else FITTED
    if not np.isfinite(normalised).all():
        # a whole window without data has no continuum either: fill it too
        normalised = np.where(np.isfinite(normalised), normalised, NO_DATA_FILL)
    excess = continuum_excess(normalised, covered, snr * np.sqrt(grid.step))
    if excess > CONTINUUM_EXCESS_LIMIT:
        flags |= IngestFlag.CONTINUUM_POOR
    if coverage < 0.999:
        flags |= IngestFlag.PARTIAL_COVERAGE
    message = describe_flags(flags, resolution=resolution, min_resolution=MIN_RESOLUTION,
                             resolution_source=resolution_source, missing=100 * (1 - coverage), rv_source=rv_source,
                             rv_error=rv_error, snr=snr, continuum_excess=excess)
    return PreparedSpectrum(
        flux=normalised.astype(np.float32), snr=snr, source=obs.source, object=obs.object,
        instrument=obs.instrument, rv=rv, rv_error=rv_error, rv_source=rv_source, rv_template=rv_template,
        input_resolution=float(resolution), resolution_source=resolution_source, snr_source=snr_source,
        coverage=coverage, continuum_method=method, continuum_excess=excess, flags=int(flags), message=message,
        **sky)


_PROVENANCE = (("file", str, "source"), ("object", str, "object"), ("instrument", str, "instrument"),
               ("rv", "f8", "rv"), ("rv_error", "f8", "rv_error"), ("rv_source", str, "rv_source"),
               ("rv_template", str, "rv_template"), ("input_resolution", "f8", "input_resolution"),
               ("resolution_source", str, "resolution_source"), ("snr_source", str, "snr_source"),
               ("coverage", "f4", "coverage"), ("continuum_method", str, "continuum_method"),
               ("continuum_excess", "f4", "continuum_excess"),
               ("ingest_flags", "i4", "flags"), ("message", str, "message"), ("ra", "f8", "ra"), ("dec", "f8", "dec"),
               ("mjd", "f8", "mjd"))


@dataclass
class IngestReport:
    output: Path
    n_spectra: int
    n_failed: int
    flag_counts: dict[str, int]
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) of the first failed rows


#: failed rows whose file and reason the report carries (the survey's ``message`` array has them all)
REPORTED_FAILURES = 20


def is_spectrum_file(path: Path) -> bool:
    """A file a folder argument stands for: a visible regular file with one of :data:`SPECTRUM_SUFFIXES`."""
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and name.endswith(SPECTRUM_SUFFIXES)


def expand_inputs(paths: list[str | Path]) -> tuple[list[str | Path], dict[str, int]]:
    """The input list with each folder replaced by the spectrum files directly inside it, in name order (not
    recursive: a folder of products often holds sub-folders of other things); (files, {folder: count}).

    A folder used to reach the readers as a file and stop the run with "Is a directory"; a folder without spectrum
    files is a one-line error that names the suffixes looked for. Files are kept as given (their names are part
    of the survey's identity for ``--resume``), whatever their suffix (the readers decide by content).
    """
    files: list[str | Path] = []
    folders: dict[str, int] = {}
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            files.append(given)
            continue
        inside = sorted(p for p in path.iterdir() if is_spectrum_file(p))
        if not inside:
            raise ValueError(f"{path} is a folder without spectrum files ({', '.join(SPECTRUM_SUFFIXES)}) directly "
                             "inside it; give the files, e.g. DIR/*.fits")
        files.extend(inside)
        folders[str(path)] = len(inside)
    return files, folders


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
                raise ValueError(f"{out} was started with another list of input files or other options: give "
                                 "that command again with --resume to complete it, replace it with --overwrite "
                                 "(instead of --resume), or choose another --out")
            committed = int(self.root.attrs.get("committed", 0))
            self._add_missing_arrays(committed)
            for name in self.ROW_ARRAYS:
                shape = self.root[name].shape
                self.root[name].resize((committed, *shape[1:]))
            self.next_id = first_id + committed
            self.next_file = int(self.root["input_index"][committed - 1]) + 1 if committed else 0
            return
        self.root = zarr.open_group(str(out), mode="w-")
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

    def _add_missing_arrays(self, committed: int) -> None:
        """Provenance arrays a survey begun by an earlier version lacks (``ra``, ``dec``, ``mjd``), created for its
        committed rows as 'unknown' (NaN, ""), so that ``--resume`` completes it with every array one row per
        spectrum."""
        for name, dtype, _ in _PROVENANCE:
            if name in self.root:
                continue
            text = dtype is str
            self.root.create_array(name, shape=(committed,), chunks=(self.chunk,),
                                   dtype=np.dtypes.StringDType() if text else dtype,
                                   fill_value="" if text else (0 if np.dtype(dtype).kind == "i" else np.nan))

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
        check_index(self.next_id + len(rows) - 1, "--first-id plus the number of spectra")
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


def read_options_table(path: str | Path, base: IngestOptions) -> dict[str, IngestOptions]:
    """Per-file options from a CSV with a ``file`` column and any of ``resolution``, ``rv`` (km/s), ``medium``
    (air/vacuum), ``snr``; empty cells keep ``base``. Keys are the file names as written in the table."""
    import csv
    from dataclasses import replace

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--table {path} not found")
    out = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "file" not in reader.fieldnames:
            raise ValueError(f"{path}: expected a header row with a 'file' column (and resolution, rv, medium, snr)")
        unknown = set(reader.fieldnames) - {"file", "resolution", "rv", "medium", "snr"}
        if unknown:
            raise ValueError(f"{path}: unknown column(s) {', '.join(sorted(unknown))}; "
                             "known: file, resolution, rv, medium, snr")
        for line, row in enumerate(reader, start=2):
            changes = {}
            for key in ("resolution", "rv", "snr"):
                text = (row.get(key) or "").strip()
                if text:
                    try:
                        changes[key] = float(text)
                    except ValueError:
                        raise ValueError(f"{path}, line {line}: {key} {text!r} is not a number") from None
            medium = (row.get("medium") or "").strip().lower()
            if medium:
                if medium not in ("air", "vacuum"):
                    raise ValueError(f"{path}, line {line}: medium {medium!r} must be air or vacuum")
                changes["medium"] = medium
            out[row["file"].strip()] = replace(base, **changes)
    return out


def _options_for(path, per_file: dict[str, IngestOptions], default: IngestOptions) -> IngestOptions:
    """A file's options: by the path as given, its resolved path, or its name."""
    for key in (str(path), str(Path(path).resolve()), Path(path).name):
        if key in per_file:
            return per_file[key]
    return default


def ingest(files: list[str | Path], out: str | Path, options: IngestOptions | None = None, chunk: int = 256,
           first_id: int = 0, progress: bool = True, per_file: dict[str, IngestOptions] | None = None,
           resume: bool = False, overwrite: bool = False) -> IngestReport:
    """Ingest ``files`` (each may hold several spectra; a folder stands for the spectrum files inside it,
    :func:`expand_inputs`) into a survey at ``out``.

    ``per_file`` maps a file (as given) to the options for that file (e.g. the resolving power of an
    ASCII spectrum whose header cannot say it); the others use ``options``. ``resume`` continues an
    interrupted run of the same command after its last fully written file. An existing ``out`` is refused
    unless ``resume`` or ``overwrite`` (and only a survey is ever replaced: ``spectra.common.outputs``); input paths
    that do not exist are refused before anything is written. A run that fails before committing a row removes
    the survey it created (nothing to resume, and it would block the retry); a later failure keeps the committed
    rows and adds a note to the exception saying that ``--resume`` continues.
    """
    from ..common.outputs import claim_output, is_our_store

    if chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {chunk}")
    check_flux_chunk(chunk, hr_grid().size)
    first_id = check_index(first_id, "--first-id")
    if not files:
        raise ValueError("no input files given")
    missing = [str(f) for f in files if not Path(f).exists()]
    if missing:
        raise FileNotFoundError(f"input file(s) not found: {', '.join(missing[:10])}"
                                + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    files = expand_inputs(files)[0]
    out = Path(out)
    if out.resolve() in {Path(f).resolve() for f in files} or any(
            out.resolve() in Path(f).resolve().parents for f in files):
        raise ValueError(f"--out {out} is (or holds) one of the input files; choose a new output path")
    claim_output(out, "survey", (SURVEY_FORMAT,), overwrite=overwrite, resume=resume)
    if resume and out.exists() and not is_our_store(out, (SURVEY_FORMAT,)):
        raise ValueError(f"{out} is not a survey; --resume continues an unfinished `spectra ingest` survey")
    options = options or IngestOptions()
    per_file = {str(k): v for k, v in (per_file or {}).items()}
    attrs = _survey_attrs(files, options, per_file, first_id)
    created_here = not out.exists()
    writer = None
    try:
        writer = _SurveyWriter(out, hr_grid(), chunk, attrs, first_id, resume)
        _ingest_files(writer, files, options, per_file, progress)
        writer.flush()
    except BaseException as exc:
        _after_failure(exc, out, writer, created_here)
        raise
    return _report(writer, out)


def _survey_attrs(files: list[str | Path], options: IngestOptions, per_file: dict[str, IngestOptions],
                  first_id: int) -> dict:
    """The new survey's attributes; ``inputs_sha256`` is what ``--resume`` compares (the same files, in the same
    order, with the same options)."""
    import hashlib
    import json

    settings = {"ingest_options": asdict(options), "per_file_options": {k: asdict(v) for k, v in per_file.items()},
                "first_id": first_id}
    inputs = json.dumps({"files": [str(f) for f in files], **settings}, sort_keys=True, default=str)
    return {
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


def _ingest_files(writer: _SurveyWriter, files: list[str | Path], options: IngestOptions,
                  per_file: dict[str, IngestOptions], progress: bool) -> None:
    """Read and prepare the files not yet in the survey, one whole file at a time; a file or spectrum that fails
    (unreadable too: a permission, a broken link) becomes a READ_FAILED row with its reason (a batch never stops for
    one bad file; only errors writing the survey stop it)."""
    grid, templates = hr_grid(), default_templates()
    for k in tqdm(range(writer.next_file, len(files)), desc="ingest", unit="file", disable=not progress):
        path = files[k]
        file_options = _options_for(path, per_file, options)
        try:
            spectra = read_spectra(path, file_options.fmt, file_options.wave_unit)
        except SpectrumReadError as exc:
            prepared = [failed(str(path), exc.problem, grid.size)]
        except OSError as exc:  # unreadable input (permissions, a broken link, a failing disk): this file only
            prepared = [failed(str(path), f"cannot read the file: {exc.strerror or exc}", grid.size)]
        else:
            prepared = []
            for obs in spectra:
                try:
                    prepared.append(prepare(obs, file_options, grid, templates))
                except (ValueError, FloatingPointError) as exc:  # one odd spectrum never stops a batch
                    prepared.append(failed(obs.source, f"preparation failed: {exc}", grid.size))
        writer.add_file(k, prepared)


def _after_failure(exc: BaseException, out: Path, writer: _SurveyWriter | None, created_here: bool) -> None:
    """A stopped run: remove the survey it created if no row was committed (it holds nothing to resume, and its
    name would make the retry refuse the output as existing); otherwise say how to continue."""
    committed = writer.n_rows if writer is not None and _readable(writer) else 0
    if created_here and committed == 0:
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out, ignore_errors=True)
        return
    if committed and not isinstance(exc, KeyboardInterrupt):
        exc.add_note(f"{out} keeps the {committed} spectra committed before the error; once it is fixed, re-run "
                     "the same command with --resume to continue")


def _readable(writer: _SurveyWriter) -> bool:
    """Whether the survey's ``committed`` attribute can still be read (a failing disk may refuse even that)."""
    try:
        writer.n_rows  # noqa: B018
    except (OSError, KeyError, ValueError):
        return False
    return True


def _report(writer: _SurveyWriter, out: Path) -> IngestReport:
    """Flag counts over the whole survey (a resumed run's earlier rows included), and the file and reason of the
    first :data:`REPORTED_FAILURES` failed rows."""
    flags = writer.root["ingest_flags"][:]
    counts = {f.name: int(np.count_nonzero(flags & f)) for f in IngestFlag}
    writer.root.attrs["n_spectra"] = writer.n_rows
    rows = np.flatnonzero(flags & IngestFlag.READ_FAILED)[:REPORTED_FAILURES]
    failures = [(str(writer.root["file"][int(i)]), str(writer.root["message"][int(i)])) for i in rows]
    return IngestReport(out, writer.n_rows, counts[IngestFlag.READ_FAILED.name], counts, failures)
