"""Survey readers: what ``runtime process`` reads its spectra through (numpy + zarr only).

Two kinds stand behind one interface, so the runtime cannot tell them apart:

* :class:`ZarrSurvey`: the layout of ``spectra survey`` / ``spectra ingest`` / ``spectra merge``;
* a simulated survey (``spectra simulate``): a small JSON file naming a grid; every row is generated when it
  is read, from (seed, source_id) only, so a 4-million-row survey needs no 400 GB of disk. Its reader lives
  in ``spectra.stores.simulated`` and is imported only when such a file is given (deployment machines never need it).

Reading survives damage: :meth:`SurveyReader.read_rows` reads a block; a block that cannot be read or decoded
is retried one storage chunk at a time, and chunks that still fail come back as rows of NaN flux with their
``source_id`` when that can be read (else -1) and a message naming the chunk (:class:`RowBlock.failures`).
:meth:`SurveyReader.fingerprint` identifies the content (shapes, array metadata, source ids, S/N), not the
path, for ``--resume``.

Memory is bounded by design, not by what a store's metadata claims. Zarr decodes a whole stored chunk to return
any row of it, so opening a store (before anything is read or allocated per row) refuses

* a chunk (or a shard's inner chunk, or a shard's index) of any array above :data:`MAX_CHUNK_BYTES` uncompressed;
* more than :data:`MAX_ROWS` rows, arrays whose lengths disagree with ``flux``, a ``wavelength`` that is not one
  value per pixel, and (local stores) a ``source_id`` that declares more chunks than it has files on disk;
* arrays that are not Zarr v3 or use a compressor other than zstd, gzip or blosc;

and its arrays decode through checked zstd/gzip/blosc codecs (:func:`_bounded_codecs`): a stored chunk whose
compressed stream declares (or, for gzip, yields) more bytes than its chunk shape holds is a failed chunk, never an
allocation of what the stream claims (a 62 kB zstd frame can claim 10 GB);

and :meth:`ZarrSurvey.source_ids` refuses a stored identifier outside [0, 2**63) (-1 is only the reader's own
marker for a chunk it could not read): identifiers seed each spectrum's random streams (``spectra.contracts.streams``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..contracts.survey import (
    MAX_CHUNK_BYTES,
    MAX_ROWS,
    MAX_SOURCE_ID,
    PROVENANCE_ARRAYS,
    SIMULATED_FORMAT,
    RowBlock,
    SurveyReader,
)

__all__ = ["ZarrSurvey", "open_survey"]

_SHARD_INDEX_BYTES = 16  # per inner chunk: offset and length, uint64 each
#: codecs whose decoded size is bounded (the compressors by :func:`_bounded_codecs`); others are refused
_KNOWN_CODECS = frozenset({"bytes", "zstd", "gzip", "blosc", "crc32c", "sharding_indexed", "transpose", "vlen-utf8",
                           "vlen-bytes"})
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class ZarrSurvey(SurveyReader):
    """A Zarr survey store (``spectra survey`` layout)."""

    REQUIRED = ("flux", "snr", "source_id", "wavelength")

    def __init__(self, path: str | Path):
        import zarr

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"survey {self.path} not found")
        try:
            with zarr.config.set(_bounded_codecs()):  # the arrays keep the checked codecs they are opened with
                self.root = zarr.open_group(str(self.path), mode="r")
                self.arrays = dict(self.root.arrays())
        except Exception as exc:  # zarr raises several types for non-stores
            raise ValueError(f"{self.path}: not a readable Zarr survey ({exc})") from None
        missing = [k for k in self.REQUIRED if k not in self.arrays]
        if missing:
            raise ValueError(f"{self.path}: missing array(s) {', '.join(missing)}; expected the `spectra survey` "
                             "layout")
        self.extra = [name for name in ("ingest_flags", *PROVENANCE_ARRAYS) if name in self.arrays]
        self.check_limits()
        self.chunk = int(self.arrays["flux"].chunks[0])
        self.wavelength = np.asarray(self.arrays["wavelength"][:])
        self.attrs = dict(self.root.attrs)

    def check_limits(self) -> None:
        """Refuse, from metadata and a count of files only, a store that reading would make cost more memory or
        time than its data justify (see the module docstring); sets ``n``. Nothing per row is read or allocated."""
        flux = self.arrays["flux"]
        if flux.ndim != 2:
            raise ValueError(f"{self.path}/flux: shape {flux.shape}, expected (spectra, pixels)")
        self.n = int(flux.shape[0])
        if self.n > MAX_ROWS:
            raise ValueError(f"{self.path}/flux: declares {self.n} rows, more than the {MAX_ROWS} a survey may hold "
                             "(spectra.contracts.survey.MAX_ROWS); split it into several surveys")
        for key in ("snr", "source_id", *self.extra):
            if self.arrays[key].shape != (self.n,):
                raise ValueError(f"{self.path}/{key}: shape {self.arrays[key].shape}, expected ({self.n},) to match "
                                 "flux")
        pixels = int(flux.shape[1])
        if self.arrays["wavelength"].shape != (pixels,):
            raise ValueError(f"{self.path}/wavelength: shape {self.arrays['wavelength'].shape}, expected ({pixels},) "
                             "(one value per flux pixel)")
        if self.arrays["source_id"].dtype.kind not in "iu":
            raise ValueError(f"{self.path}/source_id: data type {self.arrays['source_id'].dtype}, expected integers")
        for name, array in self.arrays.items():
            _check_codecs(array, f"{self.path}/{name}")
            _check_chunk_bytes(array, f"{self.path}/{name}")
        _check_wavelength_bytes(self.arrays["wavelength"], f"{self.path}/wavelength")
        self._check_stored_ids()

    def _check_stored_ids(self) -> None:
        """Refuse a local store whose ``source_id`` metadata declares more chunk files than the folder holds: the
        row count is then a claim of the metadata, not of the data (Zarr would read absent chunks as zeros)."""
        arr = self.arrays["source_id"]
        folder = _local_folder(arr)
        if folder is None or self.n == 0:
            return
        per_file = int((arr.shards or arr.chunks)[0])
        expected = -(-self.n // per_file)
        # Zarr does not write a chunk equal to the fill value: at most one (the single id 0) may be absent.
        stored = _count_files(folder, enough=expected - 1)
        if stored < expected - 1:
            raise ValueError(f"{self.path}/source_id: declares {self.n} rows in {expected} chunk file(s) of "
                             f"{per_file} rows but {stored} are stored; the metadata does not match the data")

    def has(self, name: str) -> bool:
        return name in self.arrays

    def _missing_chunks(self, start: int, stop: int) -> list[int]:
        """Flux chunks of rows [start, stop) whose file is absent from a local store (Zarr would silently return
        the fill value for them)."""
        flux = self.arrays["flux"]
        base = _local_folder(flux)
        if base is None:
            return []
        metadata: Any = flux.metadata  # Zarr v3 (v2 arrays are refused on opening: _check_codecs)
        encode = metadata.chunk_key_encoding.encode_chunk_key
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
        extra = {name: np.asarray(self.arrays[name][start:stop]) for name in self.extra}
        return RowBlock(start, stop, np.asarray(self.arrays["flux"][start:stop], dtype=np.float32),
                        np.asarray(self.arrays["snr"][start:stop], dtype=np.float64),
                        np.asarray(self.arrays["source_id"][start:stop], dtype=np.int64), extra)

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
            ids = np.asarray(self.arrays["source_id"][a:b], dtype=np.int64)
        except Exception:
            ids = np.full(b - a, -1, dtype=np.int64)
        message = (f"survey chunk {a // self.chunk} (rows {a}-{b - 1}) of {self.path} could not be read: "
                   f"{type(exc).__name__}: {str(exc)[:200]}")
        extra = {}
        for name in self.extra:
            dtype = self.arrays[name].dtype
            extra[name] = np.full(b - a, "" if dtype.kind in "OTU" else (0 if dtype.kind in "iu" else np.nan),
                                  dtype=np.dtypes.StringDType() if dtype.kind in "OTU" else dtype)
        return RowBlock(a, b, np.full((b - a, self.wavelength.size), np.nan, dtype=np.float32),
                        np.full(b - a, np.nan), ids, extra, [(a, b, message)])

    def source_ids(self) -> tuple[np.ndarray, list[str]]:
        """All source ids (-1 where a chunk cannot be read) and the messages of unreadable chunks.

        Raises ValueError at the first stored id outside [0, 2**63): ids seed the rows' random streams, so such a
        survey would fail in the middle of a run (``runtime process`` calls this before creating its catalogue)."""
        arr = self.arrays["source_id"]
        step = int(arr.chunks[0])
        ids, problems = np.full(self.n, -1, dtype=np.int64), []
        for a in range(0, self.n, step):
            b = min(a + step, self.n)
            try:
                values = np.asarray(arr[a:b])
            except Exception as exc:
                problems.append(f"source_id rows {a}-{b - 1}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            self._check_id_range(values, a)
            ids[a:b] = values
        return ids, problems

    def _check_id_range(self, values: np.ndarray, first_row: int) -> None:
        """Refuse ids outside [0, 2**63) (a stored -1 too: -1 is only this reader's mark of an unreadable chunk)."""
        bad = np.flatnonzero((values < 0) | (values > MAX_SOURCE_ID))
        if bad.size:
            raise ValueError(f"{self.path}/source_id: row {first_row + int(bad[0])} holds {values[bad[0]]}, "
                             f"expected an integer in [0, 2**63) ({bad.size} such row(s) in rows {first_row}-"
                             f"{first_row + values.size - 1})")

    def fingerprint(self) -> str:
        """sha256 of the arrays' metadata (shapes, chunking, codecs), the group's attributes, and the source_id
        and snr values (chunks that cannot be read enter as their failure)."""
        h = hashlib.sha256()
        for name in sorted(self.arrays):
            h.update(name.encode())
            h.update(json.dumps(self.arrays[name].metadata.to_dict(), sort_keys=True, default=str).encode())
        h.update(json.dumps(self.attrs, sort_keys=True, default=str).encode())
        for key in ("source_id", "snr"):
            arr = self.arrays[key]
            step = int(arr.chunks[0])
            for a in range(0, self.n, step):
                try:
                    h.update(np.ascontiguousarray(arr[a:a + step]).tobytes())
                except Exception:
                    h.update(f"unreadable {key} {a}".encode())
        return h.hexdigest()


def _local_folder(array) -> Path | None:
    """The folder of ``array`` in a local store, or None (other stores: nothing to count)."""
    root = getattr(array.store, "root", None)
    if root is None:
        return None
    folder = Path(str(root)) / array.path
    return folder if folder.is_dir() else None


def _count_files(folder: Path, enough: int) -> int:
    """Chunk files under ``folder`` (not its metadata), counting no further than ``enough``: the cost is bounded by
    what the store holds and by what its metadata claims, whichever is smaller."""
    count, todo = 0, [str(folder)]
    while todo and count < enough:
        with os.scandir(todo.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    todo.append(entry.path)
                elif entry.name != "zarr.json" and not entry.name.startswith("."):
                    count += 1
                    if count >= enough:
                        return count
    return count


def _codec_names(codecs: list) -> list[str]:
    """Names of a v3 codec list, with those nested in sharding codecs."""
    names = []
    for codec in codecs:
        names.append(str(codec.get("name")) if isinstance(codec, dict) else str(codec))
        config = (codec.get("configuration") or {}) if isinstance(codec, dict) else {}
        names += _codec_names(list(config.get("codecs", ())) + list(config.get("index_codecs", ())))
    return names


def _check_codecs(array, name: str) -> None:
    """Refuse arrays the checked codecs do not cover: Zarr v2 arrays, and compressors other than zstd/gzip/blosc."""
    meta = array.metadata.to_dict()
    if meta.get("zarr_format") != 3:
        raise ValueError(f"{name}: Zarr format {meta.get('zarr_format')}, expected 3 (what spectra survey, ingest and "
                         "merge write)")
    unknown = sorted(set(_codec_names(list(meta.get("codecs", ())))) - _KNOWN_CODECS)
    if unknown:
        raise ValueError(f"{name}: codec(s) {', '.join(map(str, unknown))}, whose decoded size cannot be bounded "
                         "before decoding; expected zstd (the default), gzip or blosc")


def _decoded_limit(spec) -> int:
    """The bytes a chunk of ``spec`` decodes to (variable-length strings: at most :data:`MAX_CHUNK_BYTES`)."""
    native = spec.dtype.to_native_dtype()
    if native.kind in "OT":
        return MAX_CHUNK_BYTES
    return math.prod(int(n) for n in spec.shape) * native.itemsize


def _zstd_declared_size(head: bytes) -> int | None:
    """The decoded size a zstd frame header declares, or None (no size, or not a zstd frame)."""
    if len(head) < 5 or head[:4] != _ZSTD_MAGIC:
        return None
    single, size_flag = head[4] >> 5 & 1, head[4] >> 6
    start = 5 + (1 - single) + (0, 1, 2, 4)[head[4] & 3]  # window descriptor, dictionary id
    width = (single, 2, 4, 8)[size_flag]
    if width == 0 or len(head) < start + width:
        return None
    value = int.from_bytes(head[start:start + width], "little")
    return value + 256 if width == 2 else value


def _gzip_size_within(data: bytes, limit: int) -> bool:
    """True if the gzip/zlib stream ``data`` decodes to at most ``limit`` bytes (at most ``limit`` + 1 are made)."""
    try:
        return len(zlib.decompressobj(32 + zlib.MAX_WBITS).decompress(data, limit + 1)) <= limit
    except zlib.error:
        return True  # damaged: the codec's own decoding fails the chunk


def _refuse_stream(kind: str, declared: int | str, limit: int, spec) -> None:
    raise ValueError(f"a {kind} stream that decodes to {declared} bytes, more than the {limit} of a chunk of shape "
                     f"{tuple(spec.shape)}")


@cache
def _bounded_codecs() -> dict[str, str]:
    """Register zstd, gzip and blosc codecs that check a chunk's decoded size before decoding it; returns the zarr
    configuration that selects them (used while a survey's arrays are opened, so nothing else is affected).

    Why: the decoders allocate what the compressed stream declares (zstd, blosc) or produce whatever it expands to
    (gzip), whatever the array's chunk shape; a hostile chunk file of a few kB could take gigabytes."""
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec
    from zarr.registry import register_codec

    class BoundedZstd(ZstdCodec):
        def _decode_sync(self, chunk_bytes, chunk_spec):
            limit = _decoded_limit(chunk_spec)
            declared = _zstd_declared_size(chunk_bytes.as_numpy_array()[:18].tobytes())
            if declared is None or declared > limit:
                _refuse_stream("zstd", "an undeclared number of" if declared is None else declared, limit, chunk_spec)
            return super()._decode_sync(chunk_bytes, chunk_spec)

    class BoundedGzip(GzipCodec):
        def _decode_sync(self, chunk_bytes, chunk_spec):
            limit = _decoded_limit(chunk_spec)
            if not _gzip_size_within(chunk_bytes.as_numpy_array().tobytes(), limit):
                _refuse_stream("gzip", "more than that", limit, chunk_spec)
            return super()._decode_sync(chunk_bytes, chunk_spec)

    class BoundedBlosc(BloscCodec):
        def _decode_sync(self, chunk_bytes, chunk_spec):
            limit = _decoded_limit(chunk_spec)
            head = chunk_bytes.as_numpy_array()[:16].tobytes()
            declared = int.from_bytes(head[4:8], "little") if len(head) == 16 else limit + 1
            if declared > limit:
                _refuse_stream("blosc", declared, limit, chunk_spec)
            return super()._decode_sync(chunk_bytes, chunk_spec)

    config = {}
    for key, cls in (("zstd", BoundedZstd), ("gzip", BoundedGzip), ("blosc", BoundedBlosc)):
        qualname = f"spectra.stores.survey_reader.Bounded{key.capitalize()}"
        register_codec(key, cls, qualname=qualname)
        config[f"codecs.{key}"] = qualname
    return config


def _chunk_bytes(array) -> int:
    """Bytes one stored chunk (a shard's inner chunk) of ``array`` decodes to (variable-length strings: their
    fixed part)."""
    return math.prod(int(c) for c in array.chunks) * max(int(array.dtype.itemsize), 1)


def _check_chunk_bytes(array, name: str) -> None:
    """Refuse chunks or shard indexes above :data:`MAX_CHUNK_BYTES` (the one-line error names the array)."""
    limit = f"the {MAX_CHUNK_BYTES // 2**20} MiB limit (spectra.contracts.survey.MAX_CHUNK_BYTES)"
    size = _chunk_bytes(array)
    if size > MAX_CHUNK_BYTES:
        raise ValueError(f"{name}: chunks of shape {tuple(array.chunks)} ({array.dtype}) decode to "
                         f"{size / 2**20:.0f} MiB each, above {limit}; write the survey with fewer rows per "
                         "chunk (--chunk of spectra survey, ingest or merge)")
    if array.shards is not None:
        inner = math.prod(-(-int(s) // int(c)) for s, c in zip(array.shards, array.chunks, strict=True))
        if inner * _SHARD_INDEX_BYTES > MAX_CHUNK_BYTES:
            raise ValueError(f"{name}: shards of shape {tuple(array.shards)} hold {inner} chunks of shape "
                             f"{tuple(array.chunks)}, an index of {inner * _SHARD_INDEX_BYTES / 2**20:.0f} MiB, "
                             f"above {limit}")


def _check_wavelength_bytes(array, name: str) -> None:
    """The wavelength array is read whole: refuse one above :data:`MAX_CHUNK_BYTES`."""
    size = math.prod(int(n) for n in array.shape) * max(int(array.dtype.itemsize), 1)
    if size > MAX_CHUNK_BYTES:
        raise ValueError(f"{name}: shape {array.shape} is {size / 2**20:.0f} MiB, above the "
                         f"{MAX_CHUNK_BYTES // 2**20} MiB limit (spectra.contracts.survey.MAX_CHUNK_BYTES)")


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
        from .simulated import SimulatedSurvey  # only for simulated input: needs the grid and h5py

        return SimulatedSurvey(path, spec)
    return ZarrSurvey(path)
