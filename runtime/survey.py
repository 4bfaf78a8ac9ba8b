"""Survey readers: what ``runtime process`` reads its spectra through (numpy + zarr only).

Two kinds stand behind one interface, so the runtime cannot tell them apart:

* :class:`ZarrSurvey`: the layout of ``spectra survey`` / ``spectra ingest`` / ``spectra merge``;
* a simulated survey (``spectra simulate``): a small JSON file naming a grid; every row is generated when it
  is read, from (seed, source_id) only, so a 4-million-row survey needs no 400 GB of disk. Its reader lives
  in ``spectra.simulated`` and is imported only when such a file is given (deployment machines never need it).

Reading survives damage: :meth:`SurveyReader.read_rows` reads a block; a block that cannot be read or decoded
is retried one storage chunk at a time, and chunks that still fail come back as rows of NaN flux with their
``source_id`` when that can be read (else -1) and a message naming the chunk (:class:`RowBlock.failures`).
:meth:`SurveyReader.fingerprint` identifies the content (shapes, array metadata, source ids, S/N), not the
path, for ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["PROVENANCE_ARRAYS", "RowBlock", "SurveyReader", "ZarrSurvey", "open_survey"]

#: per-row arrays an ingested survey may have that the catalogue carries (``catalog.schema.PROVENANCE_COLUMNS``)
PROVENANCE_ARRAYS = ("file", "object", "instrument", "rv", "rv_error", "input_resolution", "coverage")
SIMULATED_FORMAT = "cinn4most-simulated-survey/1"


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


class ZarrSurvey(SurveyReader):
    """A Zarr survey store (``spectra survey`` layout)."""

    REQUIRED = ("flux", "snr", "source_id", "wavelength")

    def __init__(self, path: str | Path):
        import zarr

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"survey {self.path} not found")
        try:
            self.root = zarr.open_group(str(self.path), mode="r")
        except Exception as exc:  # zarr raises several types for non-stores
            raise ValueError(f"{self.path}: not a readable Zarr survey ({exc})") from None
        missing = [k for k in self.REQUIRED if k not in self.root]
        if missing:
            raise ValueError(f"{self.path}: missing array(s) {', '.join(missing)}; expected the `spectra survey` "
                             "layout")
        flux = self.root["flux"]
        if flux.ndim != 2:
            raise ValueError(f"{self.path}/flux: shape {flux.shape}, expected (spectra, pixels)")
        self.n = int(flux.shape[0])
        for key in ("snr", "source_id"):
            if self.root[key].shape != (self.n,):
                raise ValueError(f"{self.path}/{key}: shape {self.root[key].shape}, expected ({self.n},) to match "
                                 "flux")
        self.chunk = int(flux.chunks[0])
        self.wavelength = self.root["wavelength"][:]
        self.attrs = dict(self.root.attrs)
        self.extra = [name for name in ("ingest_flags", *PROVENANCE_ARRAYS) if name in self.root]

    def has(self, name: str) -> bool:
        return name in self.root

    def _missing_chunks(self, start: int, stop: int) -> list[int]:
        """Flux chunks of rows [start, stop) whose file is absent from a local store (Zarr would silently return
        the fill value for them)."""
        flux = self.root["flux"]
        base = Path(str(getattr(flux.store, "root", ""))) / flux.path
        if not base.is_dir():
            return []
        encode = flux.metadata.chunk_key_encoding.encode_chunk_key
        step = int((flux.shards or flux.chunks)[0])  # one file per shard, or per chunk without sharding
        missing = []
        for i in range(start // step, (stop - 1) // step + 1):
            if not (base / encode((i, 0))).exists():
                missing.append(i)
        return missing

    def _read(self, start: int, stop: int) -> RowBlock:
        missing = self._missing_chunks(start, stop)
        if missing:
            raise FileNotFoundError(f"flux chunk file(s) {missing} missing")
        extra = {name: self.root[name][start:stop] for name in self.extra}
        return RowBlock(start, stop, self.root["flux"][start:stop].astype(np.float32),
                        self.root["snr"][start:stop].astype(np.float64),
                        self.root["source_id"][start:stop].astype(np.int64), extra)

    def read_rows(self, start: int, stop: int) -> RowBlock:
        try:
            return self._read(start, stop)
        except Exception:
            pass
        pieces = []
        for a in range(start - start % self.chunk, stop, self.chunk):
            a, b = max(a, start), min(a + self.chunk, stop)
            try:
                pieces.append(self._read(a, b))
            except Exception as exc:
                pieces.append(self._failed(a, b, exc))
        return _concatenate(pieces, start, stop)

    def _failed(self, a: int, b: int, exc: Exception) -> RowBlock:
        try:
            ids = self.root["source_id"][a:b].astype(np.int64)
        except Exception:
            ids = np.full(b - a, -1, dtype=np.int64)
        message = (f"survey chunk {a // self.chunk} (rows {a}-{b - 1}) of {self.path} could not be read: "
                   f"{type(exc).__name__}: {str(exc)[:200]}")
        extra = {}
        for name in self.extra:
            dtype = self.root[name].dtype
            extra[name] = np.full(b - a, "" if dtype.kind in "OTU" else (0 if dtype.kind in "iu" else np.nan),
                                  dtype=np.dtypes.StringDType() if dtype.kind in "OTU" else dtype)
        return RowBlock(a, b, np.full((b - a, self.wavelength.size), np.nan, dtype=np.float32),
                        np.full(b - a, np.nan), ids, extra, [(a, b, message)])

    def source_ids(self) -> tuple[np.ndarray, list[str]]:
        """All source ids (-1 where a chunk cannot be read) and the messages of unreadable chunks."""
        arr = self.root["source_id"]
        step = int(arr.chunks[0])
        ids, problems = np.full(self.n, -1, dtype=np.int64), []
        for a in range(0, self.n, step):
            b = min(a + step, self.n)
            try:
                ids[a:b] = arr[a:b]
            except Exception as exc:
                problems.append(f"source_id rows {a}-{b - 1}: {type(exc).__name__}: {str(exc)[:200]}")
        return ids, problems

    def fingerprint(self) -> str:
        """sha256 of the arrays' metadata (shapes, chunking, codecs), the group's attributes, and the source_id
        and snr values (chunks that cannot be read enter as their failure)."""
        h = hashlib.sha256()
        for name in sorted(k for k, _ in self.root.arrays()):
            h.update(name.encode())
            h.update(json.dumps(self.root[name].metadata.to_dict(), sort_keys=True, default=str).encode())
        h.update(json.dumps(self.attrs, sort_keys=True, default=str).encode())
        for key in ("source_id", "snr"):
            arr = self.root[key]
            step = int(arr.chunks[0])
            for a in range(0, self.n, step):
                try:
                    h.update(np.ascontiguousarray(arr[a:a + step]).tobytes())
                except Exception:
                    h.update(f"unreadable {key} {a}".encode())
        return h.hexdigest()


def _concatenate(pieces: list[RowBlock], start: int, stop: int) -> RowBlock:
    extra = {k: np.concatenate([p.extra[k] for p in pieces]) for k in pieces[0].extra}
    return RowBlock(start, stop, np.concatenate([p.flux for p in pieces]), np.concatenate([p.snr for p in pieces]),
                    np.concatenate([p.source_id for p in pieces]), extra, [f for p in pieces for f in p.failures])


def open_survey(path: str | Path) -> SurveyReader:
    """The reader for ``path``: a simulated-survey JSON file, or a Zarr survey store."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".json":
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from None
        if not isinstance(spec, dict) or spec.get("format") != SIMULATED_FORMAT:
            raise ValueError(f"{path}: not a simulated survey (format {SIMULATED_FORMAT!r}; make one with "
                             "`spectra simulate`)")
        from spectra.simulated import SimulatedSurvey  # only for simulated input: needs the grid and h5py

        return SimulatedSurvey(path, spec)
    return ZarrSurvey(path)
