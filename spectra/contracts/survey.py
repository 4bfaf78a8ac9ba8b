"""What a survey is to the runtime: the row blocks a reader returns, the reader interface, and the limits that
writers (``spectra survey``/``ingest``/``merge``/``simulate``) and the reader (``spectra.stores.survey_reader``) share.

Two kinds of survey stand behind :class:`SurveyReader`: Zarr stores (``spectra.stores.survey_reader.ZarrSurvey``) and
simulated surveys generated on reading (``spectra.stores.simulated``). Defining the interface here, below both, is what
lets the runtime open a simulated survey without ``spectra`` importing the runtime back (an import cycle before).
A writer checks its chunks against :data:`MAX_CHUNK_BYTES` with :func:`check_flux_chunk` so that nothing it
writes is refused on reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["MAX_CHUNK_BYTES", "MAX_ROWS", "MAX_SOURCE_ID", "PROVENANCE_ARRAYS", "SIMULATED_FORMAT", "RowBlock",
           "SurveyReader", "check_flux_chunk"]

#: per-row arrays an ingested survey may have that the catalogue carries (``catalog.schema.PROVENANCE_COLUMNS``)
PROVENANCE_ARRAYS = ("file", "object", "instrument", "rv", "rv_error", "input_resolution", "coverage", "ra", "dec",
                     "mjd", "message")
SIMULATED_FORMAT = "cinn4most-simulated-survey/1"
#: the most bytes one stored chunk of a survey array (a shard's inner chunk) may decode to, and the most a shard's
#: index may take: reading any row decodes its whole chunk, so this bounds the memory of one read (256 rows of
#: 25 200 float32 pixels are 26 MB; 256 MiB allows up to 2 663 such rows per chunk)
MAX_CHUNK_BYTES = 256 * 2**20
#: the most rows a survey may declare: ``source_ids()`` holds 8 bytes per row (8 GiB here)
MAX_ROWS = 2**30
#: source ids are non-negative int64 values
MAX_SOURCE_ID = 2**63 - 1

@dataclass
class RowBlock:
    """Rows [start, stop) of a survey: flux (n, P) float32, snr (n,), source_id (n,), the ingestion arrays the
    survey has, and the chunks that could not be read ((first row, last row + 1, message))."""

    start: int
    stop: int
    flux: np.ndarray
    snr: np.ndarray
    source_id: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    failures: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def failed(self) -> np.ndarray:
        """True for rows whose data could not be read."""
        mask = np.zeros(self.stop - self.start, dtype=bool)
        for a, b, _ in self.failures:
            mask[a - self.start:b - self.start] = True
        return mask


class SurveyReader:
    """Interface: ``path``, ``n``, ``chunk`` (rows per storage chunk), ``wavelength``, ``attrs``, ``has(name)``,
    ``read_rows(start, stop)``, ``source_ids()``, ``fingerprint()``."""

    path: Path
    n: int
    chunk: int
    wavelength: np.ndarray
    attrs: dict

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def read_rows(self, start: int, stop: int) -> RowBlock:
        raise NotImplementedError

    def source_ids(self) -> tuple[np.ndarray, list[str]]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError


def check_flux_chunk(rows: int, pixels: int, option: str = "--chunk") -> None:
    """Refuse, when a survey is written, a flux chunk of ``rows`` x ``pixels`` float32 that ``runtime process``
    would refuse to read (:data:`MAX_CHUNK_BYTES`)."""
    size = int(rows) * int(pixels) * 4
    if size > MAX_CHUNK_BYTES:
        most = MAX_CHUNK_BYTES // (4 * int(pixels))
        raise ValueError(f"{option} {rows}: a flux chunk of {rows} x {pixels} float32 is {size / 2**20:.0f} MiB, "
                         f"above the {MAX_CHUNK_BYTES // 2**20} MiB that runtime process reads "
                         f"(spectra.contracts.survey.MAX_CHUNK_BYTES); use at most {most} rows per chunk")
