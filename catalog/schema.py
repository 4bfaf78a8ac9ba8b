"""The catalogue schema: columns, units, descriptions and flag bits, defined once.

One row per input spectrum, in input order. Column names follow what survey astronomers read
(SDSS-V Astra, GALAH, Gaia): ``teff``, ``logg``, ``fe_h``, ``mg_fe``, ... hold the **MAP** (highest-
density valid posterior sample); ``<p>_p2_5``, ``<p>_p16``, ``<p>_p50``, ``<p>_p84``, ``<p>_p97_5`` are
quantiles of the valid samples, spread about the median by the bundle's interval calibration where it has one
(``runtime.intervals``; the catalogue's ``bundle_sha256`` names the bundle); ``<p>_corr`` is the MAP after the
T_eff-linear bias correction of the paper's Eq. B.1, present only when a run applied one (the ``bias_correction``
attribute says which).

Flags (``flags`` bitmask, set by ``runtime process``; ``ingest_flags``, set by ``spectra ingest``) are defined
once, in ``spectra.contracts.flags`` (bit, name, threshold, description); the runtime, the catalogue attributes,
the Parquet and FITS exports, ``catalog check``, ``catalog flags`` and the README tables are all made from it.
The quantile columns' suffixes come from ``spectra.contracts.quantiles``.

``flag_bad`` = INVALID_FLUX | INVALID_SNR | ALL_REJECTED | READ_FAILED (no usable estimate);
``flag_warn`` = any flag set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spectra.contracts.quantiles import QUANTILE_LEVELS

__all__ = [
    "PROVENANCE_COLUMNS",
    "RESIM_COLUMNS",
    "Column",
    "catalogue_columns",
]


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    unit: str
    description: str
    fill: float | int


#: what ``spectra ingest`` knew about each observed spectrum, carried into the catalogue when the survey has it
PROVENANCE_COLUMNS: tuple[Column, ...] = (
    Column("file", "str", "", "input file (with [row] for multi-spectrum files)", ""),
    Column("object", "str", "", "object name from the file's header or fibre table", ""),
    Column("instrument", "str", "", "instrument from the file's header", ""),
    Column("rv", "float32", "km/s", "radial velocity removed at ingestion", np.nan),
    Column("rv_error", "float32", "km/s", "uncertainty of rv", np.nan),
    Column("input_resolution", "float32", "", "resolving power of the input spectrum (see its source in the survey)",
           np.nan),
    Column("coverage", "float32", "", "fraction of the model's pixels with data in the input spectrum", np.nan),
    Column("ra", "float64", "deg", "right ascension from the file's header (RA; NaN when it states none)", np.nan),
    Column("dec", "float64", "deg", "declination from the file's header (DEC; NaN when it states none)", np.nan),
    Column("mjd", "float64", "d", "modified Julian date of the observation (MJD-OBS or DATE-OBS; NaN when absent)",
           np.nan),
    Column("message", "str", "", "what `spectra ingest` noted about the spectrum (one note per ingest flag, or why "
           "it could not be read)", ""),
)


#: the re-simulation check (``runtime.resim``), present when the bundle carries an emulator
RESIM_COLUMNS: tuple[Column, ...] = (
    Column("chi2_resim", "float32", "", "reduced chi^2 of the input against the model spectrum re-simulated at the "
           "MAP (emulator, rotated by the MAP v_broad), noise from the S/N plus the emulator's error", np.nan),
    Column("resim_rms", "float32", "", "rms of input minus re-simulated spectrum (continuum units)", np.nan),
)


def catalogue_columns(parameters: list[dict], corrected: list[str] = (), provenance: list[str] = (),
                      resim: bool = False) -> list[Column]:
    """All columns for the bundle's ``parameters`` (manifest entries), in catalogue order; ``provenance``: the
    names of :data:`PROVENANCE_COLUMNS` the survey provides; ``resim``: add :data:`RESIM_COLUMNS`."""
    cols = [
        Column("source_id", "int64", "", "identifier of the input spectrum", -1),
        Column("snr", "float32", "", "S/N per Angstrom of the input spectrum", np.nan),
    ]
    cols += [c for c in PROVENANCE_COLUMNS if c.name in provenance]
    for p in parameters:
        unit = p["unit"]
        cols.append(Column(p["name"], "float32", unit, f"{p['label']}: MAP (highest-density valid sample)", np.nan))
        for q in QUANTILE_LEVELS:
            cols.append(Column(p["name"] + q.suffix, "float32", unit, f"{p['label']}: {100 * q.level:g} % quantile "
                               "(of the valid samples; with the bundle's interval calibration, if any)", np.nan))
        cols.append(Column("e_" + p["name"], "float32", unit, f"{p['label']}: symmetric error, half the 16-84 % "
                           "width ((p84 - p16) / 2; the interval itself need not be symmetric about the MAP)", np.nan))
        if p["name"] in corrected:
            cols.append(Column(p["name"] + "_corr", "float32", unit,
                               f"{p['label']}: MAP after the T_eff-linear bias correction (Eq. B.1)", np.nan))
    cols += list(RESIM_COLUMNS) if resim else []
    cols += [
        Column("f_reject", "float32", "", "fraction of posterior samples outside the training bounds", np.nan),
        Column("n_valid", "int32", "", "number of posterior samples inside the training bounds", 0),
        Column("ingest_flags", "int32", "", "bitmask set by `spectra ingest` (0 for synthetic surveys)", 0),
        Column("flags", "int32", "", "bitmask of FLAGS (see the flag table)", 0),
        Column("flag_warn", "bool", "", "any flag set", False),
        Column("flag_bad", "bool", "", "no usable estimate (invalid input or all samples rejected)", False),
    ]
    return cols
