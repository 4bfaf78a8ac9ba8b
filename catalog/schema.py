"""The catalogue schema: columns, units, descriptions and flag bits, defined once.

One row per input spectrum, in input order. Column names follow what survey astronomers read
(SDSS-V Astra, GALAH, Gaia): ``teff``, ``logg``, ``fe_h``, ``mg_fe``, ... hold the **MAP** (highest-
density valid posterior sample); ``<p>_p2_5``, ``<p>_p16``, ``<p>_p50``, ``<p>_p84``, ``<p>_p97_5`` are
quantiles of the valid samples; ``<p>_corr`` is the MAP after the T_eff-linear bias correction of the
paper's Eq. B.1, present only when a run applied one (the ``bias_correction`` attribute says which).

Flags (``flags`` bitmask, set by ``runtime process``) are defined once, in :data:`FLAGS` (bit, name,
threshold, description); the runtime, the catalogue attributes, the Parquet and FITS exports, ``catalog
check``, ``catalog flags`` and the README table are all made from it.

``flag_bad`` = INVALID_FLUX | INVALID_SNR | ALL_REJECTED | READ_FAILED (no usable estimate);
``flag_warn`` = any flag set.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

import numpy as np

__all__ = [
    "BAD",
    "FLAGS",
    "PROVENANCE_COLUMNS",
    "QUANTILE_SUFFIXES",
    "RESIM_COLUMNS",
    "Column",
    "Flag",
    "FlagInfo",
    "catalogue_columns",
    "flags_markdown",
    "flags_table",
]


@dataclass(frozen=True)
class FlagInfo:
    """One bit of the ``flags`` column: the single definition everything else reads."""

    bit: int
    name: str
    threshold: float | None
    description: str


#: thresholds the runtime applies (also part of :data:`FLAGS`)
HIGH_REJECTION_FRACTION = 0.5
METAL_POOR_FEH = -2.5

FLAGS: tuple[FlagInfo, ...] = (
    FlagInfo(1, "HIGH_REJECTION", HIGH_REJECTION_FRACTION,
             "f_reject > 0.5: more than half of the posterior samples fell outside the training bounds"),
    FlagInfo(2, "ALL_REJECTED", None, "no posterior sample inside the training bounds: estimates are NaN"),
    FlagInfo(4, "INVALID_FLUX", None,
             "flux has NaN/inf, negative or zero median, is constant, or has missing pixels: not processed"),
    FlagInfo(8, "INVALID_SNR", None, "S/N missing, non-finite or <= 0: not processed"),
    FlagInfo(16, "SNR_OUT_OF_RANGE", None, "S/N per Angstrom outside the range the model was trained on"),
    FlagInfo(32, "METAL_POOR", METAL_POOR_FEH, "MAP [Fe/H] <= -2.5: abundances are poorly constrained"),
    FlagInfo(64, "INGEST_FLAGGED", None,
             "`spectra ingest` flagged the observed spectrum; the ingest_flags column holds its bits"),
    FlagInfo(128, "CONTINUUM_MISMATCH", None,
             "the survey is normalised differently (true vs pseudo-continuum) from the model's training spectra"),
    FlagInfo(256, "SNR_CAPPED", None,
             "S/N above the trained range was capped at its maximum for inference (--snr-cap)"),
    FlagInfo(512, "READ_FAILED", None,
             "the survey rows could not be read or decoded (damaged chunk): not processed; the catalogue's "
             "read_failures attribute names the chunk"),
    FlagInfo(1024, "POOR_FIT", None,
             "chi2_resim above the bundle's calibrated threshold (its manifest, emulator.poor_fit_chi2; the "
             "catalogue's poor_fit_chi2 attribute): the spectrum re-simulated at the MAP does not match the input"),
)

Flag = IntFlag("Flag", {f.name: f.bit for f in FLAGS})
Flag.__doc__ = "Bits of the ``flags`` column (from :data:`FLAGS`)."
BAD = Flag.INVALID_FLUX | Flag.INVALID_SNR | Flag.ALL_REJECTED | Flag.READ_FAILED
FLAG_DESCRIPTIONS = {Flag[f.name]: f.description for f in FLAGS}


def flags_markdown() -> str:
    """The flag table in Markdown (``catalog flags``; the README's table is this text)."""
    rows = ["| bit | name | threshold | meaning |", "|---|---|---|---|"]
    for f in FLAGS:
        threshold = "" if f.threshold is None else f"{f.threshold:g}"
        rows.append(f"| {f.bit} | {f.name} | {threshold} | {f.description} |")
    return "\n".join(rows)


def flags_table() -> list[dict]:
    """The flag table as plain records (catalogue attributes, Parquet metadata, the FITS FLAGS HDU)."""
    return [{"bit": f.bit, "name": f.name, "threshold": f.threshold, "description": f.description} for f in FLAGS]


#: (column suffix, quantile)
QUANTILE_SUFFIXES = (("_p2_5", 0.025), ("_p16", 0.16), ("_p50", 0.5), ("_p84", 0.84), ("_p97_5", 0.975))


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
        for suffix, q in QUANTILE_SUFFIXES:
            cols.append(Column(p["name"] + suffix, "float32", unit, f"{p['label']}: {100 * q:g} % quantile", np.nan))
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
