"""Readers for observed spectra: 4MOST L1-style FITS tables, ESO Phase 3 1D spectra, 1D FITS images
with a wavelength WCS, and 2-3 column ASCII. Each returns :class:`ObservedSpectrum` objects with the
wavelength in Å (medium recorded, not converted) and whatever the file says about the object,
instrument, resolving power and radial velocity.

The format is chosen by content (:func:`detect_format`), never by file name alone; ``fmt=`` forces one.
Every problem raises :class:`SpectrumReadError` naming the file and what was wrong: a batch ingestion
catches it per file and flags that row (``spectra.observed.ingest``).

Units: a FITS unit keyword (``TUNIT``/``CUNIT1``, or ``CTYPE1 = 'ANGSTROM'``) decides; without one, the
wavelength range decides (3000-25000 → Å, 300-2500 → nm, 0.3-2.5 → µm) and the spectrum records that the
unit was inferred. A range that fits none of those is an error: we never guess at random.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .instruments import Headers, header_text, resolution_from_header

__all__ = [
    "FORMATS",
    "ObservedSpectrum",
    "SpectrumReadError",
    "detect_format",
    "read_spectra",
    "sky_and_time",
    "write_fourmost_l1",
]

FORMATS = ("4most-l1", "eso-phase3", "fits-1d", "ascii")
_UNITS_TO_ANGSTROM = {"angstrom": 1.0, "angstroms": 1.0, "a": 1.0, "aa": 1.0, "0.1 nm": 1.0, "nm": 10.0,
                      "nanometer": 10.0, "nanometers": 10.0, "nanometres": 10.0,
                      "microns": 1e4, "um": 1e4, "micron": 1e4, "micrometer": 1e4, "m": 1e10}


class SpectrumReadError(ValueError):
    """A file cannot be read as a spectrum; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


@dataclass
class ObservedSpectrum:
    """One spectrum as read from a file (nothing resampled, shifted or normalised yet)."""

    wave: np.ndarray  # Å
    flux: np.ndarray
    error: np.ndarray | None
    source: str  # file, with [row] for multi-spectrum files
    medium: str = "air"  # air | vacuum
    medium_from_header: bool = False
    unit_inferred: bool = False
    object: str = ""
    instrument: str = ""
    resolution: float | None = None
    resolution_source: str = ""  # "header SPEC_RES", "instrument table: HARPS HAM", or why it is unknown
    header_rv: float | None = None  # km/s, when the file states the star's RV
    meta: dict = field(default_factory=dict)
    ra: float = float("nan")  # deg, from the header or fibre table (NaN: not stated)
    dec: float = float("nan")  # deg
    mjd: float = float("nan")  # modified Julian date of the observation (MJD-OBS, else DATE-OBS)


# ---------------------------------------------------------------------------------------------- helpers
def _unit_factor(path, unit: str | None, wave: np.ndarray, what: str) -> tuple[float, bool]:
    """Multiply by the returned factor to get Å; second value: inferred from the range?"""
    if unit:
        key = unit.strip().lower().replace("ångström", "angstrom")
        if key in _UNITS_TO_ANGSTROM:
            return _UNITS_TO_ANGSTROM[key], False
        if key not in ("linear", "pixel", "lambda", "wavelength", ""):
            raise SpectrumReadError(path, f"{what}: wavelength unit {unit!r} is not one of Angstrom, nm, um, m")
    finite = wave[np.isfinite(wave)]
    if finite.size == 0:
        raise SpectrumReadError(path, f"{what}: no finite wavelengths")
    lo, hi = float(finite.min()), float(finite.max())
    for factor, (a, b) in ((1.0, (3000.0, 25000.0)), (10.0, (300.0, 2500.0)), (1e4, (0.3, 2.5))):
        if a <= lo and hi <= b:
            return factor, True
    raise SpectrumReadError(path, f"{what}: cannot determine the wavelength unit (no unit keyword; range "
                                  f"{lo:g}-{hi:g} is not Angstrom, nm or um); give --wave-unit")


def _check_arrays(path, wave: np.ndarray, flux: np.ndarray, error: np.ndarray | None, what: str):
    """Shapes, monotonic wavelengths (decreasing ones are flipped), some finite positive flux."""
    wave, flux = np.asarray(wave, dtype=float).ravel(), np.asarray(flux, dtype=float).ravel()
    if wave.size != flux.size:
        raise SpectrumReadError(path, f"{what}: {wave.size} wavelengths but {flux.size} flux values")
    if wave.size < 10:
        raise SpectrumReadError(path, f"{what}: only {wave.size} pixels")
    if error is not None:
        error = np.asarray(error, dtype=float).ravel()
        if error.size != wave.size:
            raise SpectrumReadError(path, f"{what}: {error.size} error values for {wave.size} pixels")
    keep = np.isfinite(wave)
    wave, flux = wave[keep], flux[keep]
    error = error[keep] if error is not None else None
    step = np.diff(wave)
    if np.all(step <= 0):
        wave, flux = wave[::-1], flux[::-1]
        error = error[::-1] if error is not None else None
        step = np.diff(wave)
    if np.any(step == 0) and np.all(step >= 0):
        # repeated wavelengths at the joins of merged orders/segments: average the repeated pixels
        wave, inverse, counts = np.unique(wave, return_inverse=True, return_counts=True)
        flux = np.bincount(inverse, weights=flux) / counts
        if error is not None:
            error = np.sqrt(np.bincount(inverse, weights=error**2)) / counts
        step = np.diff(wave)
    if not np.all(step > 0):
        bad = int(np.flatnonzero(step <= 0)[0])
        raise SpectrumReadError(path, f"{what}: wavelengths are not monotonic (pixel {bad}: {wave[bad]:.4f} -> "
                                      f"{wave[bad + 1]:.4f})")
    good = np.isfinite(flux)
    if not good.any():
        raise SpectrumReadError(path, f"{what}: the flux is NaN/inf everywhere")
    if np.median(flux[good]) <= 0:
        raise SpectrumReadError(path, f"{what}: the flux is negative or zero (median {np.median(flux[good]):.3g})")
    return wave, flux, error


def _number(header, *keys: str) -> float | None:
    for key in keys:
        value = header.get(key)
        try:
            if value is not None and np.isfinite(float(value)) and float(value) > -9999:
                return float(value)
        except (TypeError, ValueError):
            continue
    return None


_OBJECT_KEYS = ("OBJECT", "ESO OBS TARG NAME", "TARGNAME", "TARGET", "OBJNAME")
#: how far into a file :func:`_utf8_primary_value` looks for the primary header's END card
_RAW_HEADER_LIMIT = 2880 * 200


def _utf8_primary_value(path: Path, keys: tuple[str, ...]) -> str:
    """The first of ``keys`` in the primary header, read from the raw cards as UTF-8 text ("" if none).

    Why: FITS headers are ASCII by the standard, but object names with accents or symbols do reach files as
    UTF-8 bytes; astropy then replaces each byte by "?". Names are provenance a user searches by, so they are
    kept as written (the catalogue is UTF-8; its FITS export writes an ASCII-safe form and says so).
    """
    with open(path, "rb") as fh:
        raw = fh.read(_RAW_HEADER_LIMIT)
    found: dict[str, str] = {}
    for start in range(0, len(raw) - 79, 80):
        card = raw[start:start + 80]
        name = card[:8].decode("ascii", "replace").strip()
        if name == "END":
            break
        if name == "HIERARCH":
            name, _, rest = card[9:].partition(b"=")
            name, value = name.decode("ascii", "replace").strip(), rest
        elif card[8:10] == b"= ":
            value = card[10:]
        else:
            continue
        value = value.strip()
        if value.startswith(b"'"):
            text = value[1:].split(b"' /")[0].split(b"'/")[0].rstrip(b"'").replace(b"''", b"'")
            found.setdefault(name, text.decode("utf-8", "replace").strip())
    return next((found[k] for k in keys if found.get(k)), "")


def _object_name(path: Path, header) -> str:
    """The object name from the header, with UTF-8 restored where astropy replaced non-ASCII bytes by "?"."""
    name = header_text(header, *_OBJECT_KEYS)
    if "?" in name:
        name = _utf8_primary_value(path, _OBJECT_KEYS) or name
    return name
_INSTRUMENT_KEYS = ("INSTRUME", "INSTRUMENT", "ESO INS ID")
_RA_KEYS = ("RA", "RA_OBJ", "OBJRA", "RA_TARG")
_DEC_KEYS = ("DEC", "DEC_OBJ", "OBJDEC", "DEC_TARG")


def _angle(value, hours: bool) -> float:
    """Degrees from a header value: a number of degrees, or sexagesimal text ('12:34:56.7', RA in hours); NaN
    for anything else (a position is provenance: an odd keyword must not fail the spectrum)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    parts = str(value).replace(" ", ":").split(":")
    try:
        sign = -1.0 if parts[0].strip().startswith("-") else 1.0
        number = sum(abs(float(part)) / 60.0**k for k, part in enumerate(parts))
    except ValueError:
        return float("nan")
    return sign * number * (15.0 if hours else 1.0)


def sky_and_time(header, fibre: dict | None = None) -> dict[str, float]:
    """``ra``, ``dec`` (deg) and ``mjd`` of a spectrum: a fibre table's RA/DEC first (one per target in a 4MOST
    file), else the header's RA/DEC keywords; MJD-OBS, else DATE-OBS converted. NaN for what is not stated, so
    the survey and the catalogue say 'unknown' rather than 0."""
    fibre = fibre or {}
    ra = next((fibre[k] for k in _RA_KEYS if k in fibre), None)
    dec = next((fibre[k] for k in _DEC_KEYS if k in fibre), None)
    ra = ra if ra is not None else next((header.get(k) for k in _RA_KEYS if header.get(k) is not None), None)
    dec = dec if dec is not None else next((header.get(k) for k in _DEC_KEYS if header.get(k) is not None), None)
    mjd = _number(header, "MJD-OBS", "MJD_OBS", "MJD")
    if mjd is None and header_text(header, "DATE-OBS"):
        from astropy.time import Time

        try:
            mjd = float(Time(header_text(header, "DATE-OBS"), format="isot", scale="utc").mjd)
        except ValueError:
            mjd = None
    ra_deg = float("nan") if ra is None else _angle(ra, hours=isinstance(ra, str) and ":" in ra)
    dec_deg = float("nan") if dec is None else _angle(dec, hours=False)
    return {"ra": ra_deg if 0.0 <= ra_deg < 360.0 else float("nan"),
            "dec": dec_deg if -90.0 <= dec_deg <= 90.0 else float("nan"),
            "mjd": float("nan") if mjd is None else float(mjd)}


def _iraf_unit(header) -> str:
    """The wavelength unit of IRAF's ``WAT1_001 = 'wtype=linear label=Wavelength units=Angstroms'``."""
    import re

    match = re.search(r"units=(\S+)", header_text(header, "WAT1_001"))
    return match.group(1) if match else ""


def _medium(header, ctype: str = "") -> tuple[str, bool]:
    """(medium, stated in the file?) from CTYPE1 (AWAV = air, WAVE = vacuum) or an AIRORVAC-like keyword."""
    ctype = ctype.upper()
    if ctype.startswith("AWAV"):
        return "air", True
    if ctype.startswith("WAVE"):
        return "vacuum", True
    flag = header_text(header, "AIRORVAC", "VACUUM", "WAVEMED", "MEDIUM").lower()
    if flag.startswith("vac") or flag in ("t", "true"):
        return "vacuum", True
    if flag.startswith("air") or flag in ("f", "false"):
        return "air", True
    return "air", False


# ---------------------------------------------------------------------------------------------- detection
def _is_fits(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(9) == b"SIMPLE  ="


def detect_format(path: str | Path) -> str:
    """Which reader fits this file (by content)."""
    path = Path(path)
    if not path.exists():
        raise SpectrumReadError(path, "no such file")
    if path.stat().st_size == 0:
        raise SpectrumReadError(path, "the file is empty")
    if not _is_fits(path):
        return "ascii"
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            names = [h.name.upper() for h in hdul]
            primary = hdul[0].header
            tables = [h for h in hdul[1:] if isinstance(h, fits.BinTableHDU)]
            for hdu in tables:
                cols = {c.upper() for c in hdu.columns.names}
                if "WAVE" in cols and "FLUX" in cols:
                    if "ERR_FLUX" in cols and ("FIBINFO" in names or header_text(primary, "INSTRUME").upper()
                                                .startswith("4MOST")):
                        return "4most-l1"
                    return "eso-phase3"
            if primary.get("NAXIS", 0) >= 1 and hdul[0].data is not None:
                return "fits-1d"
            found = "; ".join(f"HDU {h.name or '?'} columns {', '.join(h.columns.names)}" for h in tables)
    except (OSError, TypeError, ValueError) as exc:  # astropy raises TypeError on truncated data
        raise SpectrumReadError(path, f"not a readable FITS file, truncated or corrupt ({exc})") from None
    raise SpectrumReadError(path, "FITS file without a spectrum: no 1D image and no table with both WAVE and FLUX "
                                  f"columns ({found or 'no tables'})")


# ---------------------------------------------------------------------------------------------- readers
def _table_spectra(path: Path, fmt: str, wave_unit: str | None) -> list[ObservedSpectrum]:
    """4MOST L1-style and ESO Phase 3: arrays in table rows (one row per spectrum)."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        primary = hdul[0].header
        table = next((h for h in hdul[1:] if isinstance(h, fits.BinTableHDU)
                      and {"WAVE", "FLUX"} <= {c.upper() for c in h.columns.names}), None)
        if table is None:
            raise SpectrumReadError(path, "no binary table with WAVE and FLUX columns")
        header = Headers(table.header, primary)
        cols = {c.upper(): c for c in table.columns.names}
        err_col = next((cols[c] for c in ("ERR_FLUX", "ERR", "ERROR", "SIGMA") if c in cols), None)
        if fmt == "4most-l1" and err_col is None:
            raise SpectrumReadError(path, "4MOST L1 table has no ERR_FLUX column")
        unit = wave_unit or table.columns[cols["WAVE"]].unit
        fibres = hdul["FIBINFO"].data if "FIBINFO" in [h.name.upper() for h in hdul] else None
        data = table.data
        if len(data) == 0:
            raise SpectrumReadError(path, "the spectrum table has no rows")
        instrument = header_text(header, *_INSTRUMENT_KEYS) or ("4MOST-HR" if fmt == "4most-l1" else "")
        resolution, resolution_source = resolution_from_header(header, instrument)
        out = []
        for i, row in enumerate(data):
            what = f"row {i}" if len(data) > 1 else "spectrum"
            wave = np.asarray(row[cols["WAVE"]], dtype=float)
            factor, inferred = _unit_factor(path, unit, wave, f"{what} column WAVE")
            error = np.asarray(row[err_col], dtype=float) if err_col else None
            wave, flux, error = _check_arrays(path, wave * factor, row[cols["FLUX"]], error, what)
            name = _object_name(path, header)
            meta = {"format": fmt, "row": i}
            fib = {}
            if fibres is not None and i < len(fibres):
                fib = {k.upper(): fibres[k][i] for k in fibres.columns.names}
                name = str(fib.get("OBJ_NAME", fib.get("OBJECT", name))).strip()
                meta.update({k.lower(): (v.item() if hasattr(v, "item") else str(v)) for k, v in fib.items()})
            medium, stated = _medium(header, header_text(header, "CTYPE1"))
            if "SPECSYS" in header:
                meta["specsys"] = str(header["SPECSYS"])
            out.append(ObservedSpectrum(
                wave=wave, flux=flux, error=error, source=f"{path}[{i}]" if len(data) > 1 else str(path),
                medium=medium, medium_from_header=stated, unit_inferred=inferred, object=name,
                instrument=instrument, resolution=resolution, resolution_source=resolution_source,
                header_rv=_number(header, "RV", "VRAD", "ESO DRS CCF RVC"), meta=meta, **sky_and_time(header, fib)))
        return out


def _wcs_wavelength(path: Path, header, n: int, wave_unit: str | None) -> tuple[np.ndarray, bool, str]:
    crval = _number(header, "CRVAL1")
    cdelt = _number(header, "CDELT1", "CD1_1")
    if crval is None or cdelt is None:
        raise SpectrumReadError(path, "1D FITS image without a wavelength WCS (CRVAL1 and CDELT1/CD1_1)")
    crpix = _number(header, "CRPIX1") or 1.0
    coord = crval + (np.arange(n) + 1.0 - crpix) * cdelt
    ctype = header_text(header, "CTYPE1").upper()
    log_sampled = ctype.endswith("-LOG") or header.get("DC-FLAG") == 1
    if log_sampled:
        coord = np.exp(coord) if ctype.endswith("-LOG") else 10.0 ** coord
    unit = wave_unit or header_text(header, "CUNIT1") or _iraf_unit(header) or (
        "angstrom" if ctype.startswith("ANGSTROM") else "")
    factor, inferred = _unit_factor(path, unit, coord, "WCS axis 1")
    return coord * factor, inferred, "log-linear" if log_sampled else "linear"


def _image_spectrum(path: Path, wave_unit: str | None) -> list[ObservedSpectrum]:
    from astropy.io import fits

    with fits.open(path) as hdul:
        header = Headers(hdul[0].header)
        data = hdul[0].data
        if data is None or data.ndim != 1:
            shape = None if data is None else data.shape
            raise SpectrumReadError(path, f"expected a 1D flux array in the primary HDU, got shape {shape}")
        wave, inferred, sampling = _wcs_wavelength(path, header, data.size, wave_unit)
        error = None
        for hdu in hdul[1:]:
            if hdu.name.upper() in ("ERR", "ERROR", "SIGMA", "ERR_FLUX") and hdu.data is not None:
                error = np.asarray(hdu.data, dtype=float)
        wave, flux, error = _check_arrays(path, wave, data, error, "primary HDU")
        instrument = header_text(header, *_INSTRUMENT_KEYS)
        resolution, resolution_source = resolution_from_header(header, instrument)
        medium, stated = _medium(header, header_text(header, "CTYPE1"))
        return [ObservedSpectrum(
            wave=wave, flux=flux, error=error, source=str(path), medium=medium, medium_from_header=stated,
            unit_inferred=inferred, object=_object_name(path, header), instrument=instrument,
            resolution=resolution, resolution_source=resolution_source, header_rv=None,
            meta={"format": "fits-1d", "wcs": sampling, "bunit": header_text(header, "BUNIT"),
                  "berv": _number(header, "ESO DRS BERV")}, **sky_and_time(header))]


def _ascii_spectrum(path: Path, wave_unit: str | None) -> list[ObservedSpectrum]:
    try:
        table = np.loadtxt(path, comments=("#", "%", "!"), ndmin=2)
    except ValueError as exc:
        raise SpectrumReadError(path, f"ASCII spectrum: not 2-3 numeric columns ({exc})") from None
    if table.shape[1] not in (2, 3):
        raise SpectrumReadError(path, f"ASCII spectrum: expected 2 or 3 columns (wave, flux[, error]), "
                                      f"found {table.shape[1]}")
    factor, inferred = _unit_factor(path, wave_unit, table[:, 0], "column 1 (wavelength)")
    error = table[:, 2] if table.shape[1] == 3 else None
    wave, flux, error = _check_arrays(path, table[:, 0] * factor, table[:, 1], error, "spectrum")
    return [ObservedSpectrum(wave=wave, flux=flux, error=error, source=str(path), unit_inferred=inferred,
                             object=path.stem, resolution_source="ASCII files do not state it",
                             meta={"format": "ascii"})]


def read_spectra(path: str | Path, fmt: str | None = None, wave_unit: str | None = None) -> list[ObservedSpectrum]:
    """All spectra in one file. ``fmt`` forces a reader (one of ``FORMATS``); ``wave_unit`` overrides units."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise SpectrumReadError(path, f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    try:
        if fmt in ("4most-l1", "eso-phase3"):
            return _table_spectra(path, fmt, wave_unit)
        if fmt == "fits-1d":
            return _image_spectrum(path, wave_unit)
        return _ascii_spectrum(path, wave_unit)
    except SpectrumReadError:
        raise
    except (OSError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise SpectrumReadError(path, f"cannot read as {fmt}: {exc}") from None


def write_fourmost_l1(path: str | Path, spectra: list[dict], instrument: str = "4MOST-HR",
                      resolution: float = 20_000.0) -> Path:
    """Write a 4MOST L1-style file: table ``SPECTRUM`` (one row per spectrum: WAVE, FLUX, ERR_FLUX arrays,
    Å, air) and table ``FIBINFO`` (OBJ_NAME, TARGET_ID, FIBRE_ID). Each dict gives wave, flux, error,
    name and optionally target_id. No real 4MOST L1 data exist yet; this mirrors the announced layout
    (arrays in rows as in ESO Phase 3) so that the reader and the tests have a concrete file."""
    from astropy.io import fits

    n = {len(s["wave"]) for s in spectra}
    if len(n) != 1:
        raise ValueError("all spectra in one L1 file share one pixel count")
    npix = n.pop()
    cols = [fits.Column(name=k, format=f"{npix}E", unit=u, array=np.array([s[a] for s in spectra], dtype=np.float32))
            for k, a, u in (("WAVE", "wave", "Angstrom"), ("FLUX", "flux", ""), ("ERR_FLUX", "error", ""))]
    spec = fits.BinTableHDU.from_columns(cols, name="SPECTRUM")
    spec.header["CTYPE1"] = ("AWAV", "air wavelengths")
    spec.header["SPEC_RES"] = (resolution, "resolving power")
    fib = fits.BinTableHDU.from_columns([
        fits.Column(name="OBJ_NAME", format="32A", array=[s["name"] for s in spectra]),
        fits.Column(name="TARGET_ID", format="K", array=[s.get("target_id", i) for i, s in enumerate(spectra)]),
        fits.Column(name="FIBRE_ID", format="J", array=np.arange(len(spectra))),
    ], name="FIBINFO")
    primary = fits.PrimaryHDU()
    primary.header["INSTRUME"] = instrument
    primary.header["ORIGIN"] = "cinn4most spectra.observed.readers.write_fourmost_l1 (4MOST L1-style example)"
    fits.HDUList([primary, spec, fib]).writeto(path, overwrite=True)
    return Path(path)
