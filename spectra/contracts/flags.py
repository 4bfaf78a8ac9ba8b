"""Both flag tables: the catalogue's ``flags`` bits and ``spectra ingest``'s ``ingest_flags`` bits.

Two bit spaces, on purpose: ``ingest_flags`` is written by ``spectra ingest`` into the survey and copied
unchanged into the catalogue, ``flags`` is set by ``runtime process`` (its INGEST_FLAGGED bit says "look at
``ingest_flags``"). So the same name can have different bits: READ_FAILED is bit value 1 in ``ingest_flags`` (the
file could not be read) and 512 in ``flags`` (the survey's rows could not be read). Every place that writes or
decodes a flag (the runtime, ingestion, the catalogue attributes, the Parquet metadata, the FITS ``FLAGS`` and
``INGEST_FLAGS`` tables, ``catalog check``, ``catalog show``, ``catalog flags`` and the README tables) reads these
tables; thresholds are constants here and are formatted into the descriptions, never restated in their text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

__all__ = [
    "BAD",
    "CCF_PEAK_LIMIT",
    "CONTINUUM_EXCESS_LIMIT",
    "FLAGS",
    "HIGH_REJECTION_FRACTION",
    "INGEST_FLAGS",
    "METAL_POOR_FEH",
    "MIN_RESOLUTION_FRACTION",
    "RV_ERROR_LIMIT",
    "TABLES",
    "Flag",
    "FlagInfo",
    "IngestFlag",
    "decode",
    "flag_records",
    "flags_markdown",
]


@dataclass(frozen=True)
class FlagInfo:
    """One bit of a flag column with what it means: the single definition everything else reads."""

    bit: int
    name: str
    threshold: float | None
    description: str


def _info(flag: IntFlag, threshold: float | None, description: str) -> FlagInfo:
    return FlagInfo(int(flag), str(flag.name), threshold, description)


class Flag(IntFlag):
    """Bits of the ``flags`` column; what each means is in :data:`FLAGS`."""

    HIGH_REJECTION = 1
    ALL_REJECTED = 2
    INVALID_FLUX = 4
    INVALID_SNR = 8
    SNR_OUT_OF_RANGE = 16
    METAL_POOR = 32
    INGEST_FLAGGED = 64
    CONTINUUM_MISMATCH = 128
    SNR_CAPPED = 256
    READ_FAILED = 512
    POOR_FIT = 1024
    NO_DATA_FILLED = 2048


class IngestFlag(IntFlag):
    """Bits of the ``ingest_flags`` survey array and catalogue column; what each means is in :data:`INGEST_FLAGS`."""

    READ_FAILED = 1
    LOW_RESOLUTION = 2
    RESOLUTION_UNKNOWN = 4
    PARTIAL_COVERAGE = 8
    RV_UNCERTAIN = 16
    SNR_ESTIMATED = 32
    UNIT_INFERRED = 64
    MEDIUM_ASSUMED = 128
    CONTINUUM_POOR = 256


# ---- the catalogue's ``flags`` (set by ``runtime process``) ----

#: HIGH_REJECTION above this fraction of posterior samples outside the training bounds
HIGH_REJECTION_FRACTION = 0.5
#: METAL_POOR at or below this MAP [Fe/H]
METAL_POOR_FEH = -2.5

FLAGS: tuple[FlagInfo, ...] = (
    _info(Flag.HIGH_REJECTION, HIGH_REJECTION_FRACTION,
          f"f_reject > {HIGH_REJECTION_FRACTION:g}: more than half of the posterior samples fell outside the "
          "training bounds"),
    _info(Flag.ALL_REJECTED, None, "no posterior sample inside the training bounds: estimates are NaN"),
    _info(Flag.INVALID_FLUX, None,
          "flux has NaN/inf, negative or zero median, is constant, or has missing pixels: not processed"),
    _info(Flag.INVALID_SNR, None, "S/N missing, non-finite or <= 0: not processed"),
    _info(Flag.SNR_OUT_OF_RANGE, None, "S/N per Angstrom outside the range the model was trained on"),
    _info(Flag.METAL_POOR, METAL_POOR_FEH,
          f"MAP [Fe/H] <= {METAL_POOR_FEH:g}: abundances are poorly constrained"),
    _info(Flag.INGEST_FLAGGED, None,
          "`spectra ingest` flagged the observed spectrum; the ingest_flags column holds its bits"),
    _info(Flag.CONTINUUM_MISMATCH, None,
          "the survey is normalised differently (true vs pseudo-continuum) from the model's training spectra"),
    _info(Flag.SNR_CAPPED, None,
          "S/N above the trained range was capped at its maximum for inference (--snr-cap)"),
    _info(Flag.READ_FAILED, None,
          "the survey rows could not be read or decoded (damaged chunk): not processed; the catalogue's "
          "read_failures attribute names the chunk"),
    _info(Flag.POOR_FIT, None,
          "chi2_resim above the bundle's calibrated threshold (its manifest, emulator.poor_fit_chi2; the "
          "catalogue's poor_fit_chi2 attribute): the spectrum re-simulated at the MAP does not match the input"),
    _info(Flag.NO_DATA_FILLED, None,
          "the spectrum has pixels without data (runs of exactly 1.0, `spectra ingest`'s fill for detector and order "
          "gaps, outside the input mask): they were replaced by the bundle's emulator at the MAP, continuum-matched, "
          "and the posterior drawn again (twice), and they are left out of chi2_resim; the posterior is slightly "
          "narrower than the data alone allow where the gap held information"),
)

#: no usable estimate (``flag_bad``)
BAD = Flag.INVALID_FLUX | Flag.INVALID_SNR | Flag.ALL_REJECTED | Flag.READ_FAILED


# ---- ``spectra ingest``'s ``ingest_flags`` ----

#: LOW_RESOLUTION below this fraction of the training resolution (``spectra.observed.prepare.MIN_RESOLUTION``)
MIN_RESOLUTION_FRACTION = 0.97
#: RV_UNCERTAIN above this RV error [km/s] ...
RV_ERROR_LIMIT = 1.0
#: ... or below this cross-correlation peak
CCF_PEAK_LIMIT = 0.15
#: CONTINUUM_POOR above this fraction of pixels over 1 + 3 sigma + 1 % (noise alone puts 0.13 % there)
CONTINUUM_EXCESS_LIMIT = 0.02

INGEST_FLAGS: tuple[FlagInfo, ...] = (
    _info(IngestFlag.READ_FAILED, None, "file or spectrum unusable: flux is NaN, the survey's message says why"),
    _info(IngestFlag.LOW_RESOLUTION, MIN_RESOLUTION_FRACTION,
          f"input R below {MIN_RESOLUTION_FRACTION:g} x the training resolution: cannot be matched to it"),
    _info(IngestFlag.RESOLUTION_UNKNOWN, None, "no R in the header and none given: not matched"),
    _info(IngestFlag.PARTIAL_COVERAGE, None,
          "some of the model's pixels had no data and were set to the continuum (see coverage)"),
    _info(IngestFlag.RV_UNCERTAIN, RV_ERROR_LIMIT,
          f"RV error > {RV_ERROR_LIMIT:g} km/s, weak cross-correlation peak (< {CCF_PEAK_LIMIT:g}), or no RV "
          "could be measured"),
    _info(IngestFlag.SNR_ESTIMATED, None, "no error column: S/N estimated with DER_SNR"),
    _info(IngestFlag.UNIT_INFERRED, None, "wavelength unit inferred from the range"),
    _info(IngestFlag.MEDIUM_ASSUMED, None, "air/vacuum not stated in the file: air assumed"),
    _info(IngestFlag.CONTINUUM_POOR, CONTINUUM_EXCESS_LIMIT,
          f"more than {100 * CONTINUUM_EXCESS_LIMIT:g} % of the pixels lie above 1 + 3 sigma + 1 % after "
          "normalisation: the pseudo-continuum fit failed"),
)


#: the flag columns and their tables, in the catalogue's column names
TABLES: dict[str, tuple[FlagInfo, ...]] = {"flags": FLAGS, "ingest_flags": INGEST_FLAGS}


def decode(value: int, column: str = "flags") -> list[str]:
    """Names of the bits set in ``value`` of the flag ``column`` (``flags`` or ``ingest_flags``), in bit order."""
    return [f.name for f in TABLES[column] if int(value) & f.bit]


def flags_markdown(column: str = "flags") -> str:
    """The flag table of ``column`` in Markdown (``catalog flags``; the README's tables are this text)."""
    rows = ["| bit | name | threshold | meaning |", "|---|---|---|---|"]
    for f in TABLES[column]:
        threshold = "" if f.threshold is None else f"{f.threshold:g}"
        rows.append(f"| {f.bit} | {f.name} | {threshold} | {f.description} |")
    return "\n".join(rows)


def flag_records(column: str = "flags") -> list[dict]:
    """The flag table of ``column`` as plain records (catalogue attributes, Parquet metadata, the FITS tables)."""
    return [{"bit": f.bit, "name": f.name, "threshold": f.threshold, "description": f.description}
            for f in TABLES[column]]
