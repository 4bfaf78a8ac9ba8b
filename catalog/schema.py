"""The catalogue schema: columns, units, descriptions and flag bits, defined once.

One row per input spectrum, in input order. Column names follow what survey astronomers read
(SDSS-V Astra, GALAH, Gaia): ``teff``, ``logg``, ``fe_h``, ``mg_fe``, ... hold the **MAP** (highest-
density valid posterior sample); ``<p>_p2_5``, ``<p>_p16``, ``<p>_p50``, ``<p>_p84``, ``<p>_p97_5`` are
quantiles of the valid samples; ``<p>_corr`` is the MAP after the T_eff-linear bias correction of the
paper's Eq. B.1, present only when a run applied one (the ``bias_correction`` attribute says which).

Flags (``flags`` bitmask; bits set by ``runtime process``):

=====  ===================  ======================================================================
bit    name                 meaning
=====  ===================  ======================================================================
1      HIGH_REJECTION       f_reject > 0.5: more than half the samples fell outside the training
                            bounds; treat the estimate with caution (paper Sect. 3.5)
2      ALL_REJECTED         no valid sample: estimates are NaN
4      INVALID_FLUX         flux has NaN/inf, negative or all-zero values, is constant, or has
                            missing pixels (e.g. a short row padded with NaN): not processed
8      INVALID_SNR          S/N missing, non-finite or <= 0: not processed
16     SNR_OUT_OF_RANGE     S/N outside the range the model was trained on (manifest)
32     METAL_POOR           MAP [Fe/H] <= -2.5: abundances are poorly constrained (paper Sect. 4.2)
64     INGEST_FLAGGED       ``spectra ingest`` flagged the input spectrum (low or unknown resolution,
                            partial coverage, uncertain RV, estimated S/N...): the ``ingest_flags``
                            column holds its bits (``spectra.ingest.IngestFlag``)
=====  ===================  ======================================================================

``flag_bad`` = INVALID_FLUX | INVALID_SNR | ALL_REJECTED (no usable estimate);
``flag_warn`` = any flag set.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

import numpy as np

__all__ = ["BAD", "QUANTILE_SUFFIXES", "Column", "Flag", "catalogue_columns"]


class Flag(IntFlag):
    HIGH_REJECTION = 1
    ALL_REJECTED = 2
    INVALID_FLUX = 4
    INVALID_SNR = 8
    SNR_OUT_OF_RANGE = 16
    METAL_POOR = 32
    INGEST_FLAGGED = 64


BAD = Flag.INVALID_FLUX | Flag.INVALID_SNR | Flag.ALL_REJECTED
FLAG_DESCRIPTIONS = {
    Flag.HIGH_REJECTION: "f_reject > 0.5 (more than half of the samples outside the training bounds)",
    Flag.ALL_REJECTED: "no posterior sample inside the training bounds; estimates are NaN",
    Flag.INVALID_FLUX: "flux has NaN/inf, negative, all-zero, constant or missing pixels; not processed",
    Flag.INVALID_SNR: "S/N missing, non-finite or <= 0; not processed",
    Flag.SNR_OUT_OF_RANGE: "S/N outside the model's trained range",
    Flag.METAL_POOR: "MAP [Fe/H] <= -2.5: abundances poorly constrained",
    Flag.INGEST_FLAGGED: "the ingestion of the observed spectrum flagged it (see ingest_flags)",
}
#: (column suffix, quantile)
QUANTILE_SUFFIXES = (("_p2_5", 0.025), ("_p16", 0.16), ("_p50", 0.5), ("_p84", 0.84), ("_p97_5", 0.975))


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    unit: str
    description: str
    fill: float | int


def catalogue_columns(parameters: list[dict], corrected: list[str] = ()) -> list[Column]:
    """All columns for the bundle's ``parameters`` (manifest entries), in catalogue order."""
    cols = [
        Column("source_id", "int64", "", "identifier of the input spectrum", -1),
        Column("snr", "float32", "", "S/N per Angstrom of the input spectrum", np.nan),
    ]
    for p in parameters:
        unit = p["unit"]
        cols.append(Column(p["name"], "float32", unit, f"{p['label']}: MAP (highest-density valid sample)", np.nan))
        for suffix, q in QUANTILE_SUFFIXES:
            cols.append(Column(p["name"] + suffix, "float32", unit, f"{p['label']}: {100 * q:g} % quantile", np.nan))
        if p["name"] in corrected:
            cols.append(Column(p["name"] + "_corr", "float32", unit,
                               f"{p['label']}: MAP after the T_eff-linear bias correction (Eq. B.1)", np.nan))
    cols += [
        Column("f_reject", "float32", "", "fraction of posterior samples outside the training bounds", np.nan),
        Column("n_valid", "int32", "", "number of posterior samples inside the training bounds", 0),
        Column("ingest_flags", "int32", "", "bitmask set by `spectra ingest` (0 for synthetic surveys)", 0),
        Column("flags", "int32", "", "bitmask: " + "; ".join(f"{int(f)} {f.name}" for f in Flag), 0),
        Column("flag_warn", "bool", "", "any flag set", False),
        Column("flag_bad", "bool", "", "no usable estimate (invalid input or all samples rejected)", False),
    ]
    return cols
