"""Catalogue storage: a sharded Zarr v3 store written a shard per task, and exports to Parquet and FITS.

Built for survey scale (4 million rows): the number of files grows with the number of *shards*, not with
rows x columns. Columns of one type share a 2-D array (``values_f4`` (N, n_float) float32, ``values_f8``,
``values_i4``, ``values_i8``, ``values_b1``; text columns one 1-D array each, ``text_<name>``), each stored with Zarr's
sharding codec: one shard file per ``shard_rows`` rows (inner chunks of 1024 rows for reading). A task of
``runtime process`` computes exactly one shard's rows and writes each array's shard once, whole, so two tasks
never touch the same file (a partial shard write would rewrite the shard). ``_done`` (n_shards,) has one
element per file; element k is set *after* shard k is written: the resume marker.

A 4 M-row catalogue at 16 384 rows per shard is 245 shards x ~5 arrays, about 1 500 files. Column names,
units, descriptions and their place in the blocks are in the group attributes (``column_meta``); readers use
:meth:`CatalogueStore.column` or :meth:`CatalogueStore.read_rows`, never the raw arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from spectra.common.scratch import scratch_name, written_atomically
from spectra.contracts.flags import FLAGS, INGEST_FLAGS, flag_records

from .schema import Column

__all__ = ["CATALOG_FORMAT", "CatalogueStore", "check_export_target", "export_fits", "export_format", "export_parquet",
           "provenance", "read_table", "shard_layout"]

CATALOG_FORMAT = "cinn4most-catalogue/2"
INNER_ROWS = 1024  # rows per inner chunk of a shard (the unit of reading)
#: stored block per column type (float64 only for what float32 cannot hold: RA/Dec to 0.05", MJD to the second)
_BLOCKS = {"float32": "values_f4", "float64": "values_f8", "int32": "values_i4", "int64": "values_i8",
           "bool": "values_b1"}


def shard_layout(rows: int) -> tuple[int, int]:
    """(rows per shard = rows per task, rows per inner chunk) for a requested task size: shards larger than
    2 048 rows are rounded up to a multiple of :data:`INNER_ROWS` (the sharding codec needs whole chunks)."""
    if rows < 1:
        raise ValueError(f"rows per task must be >= 1, got {rows}")
    if rows <= 2 * INNER_ROWS:
        return rows, rows
    return -(-rows // INNER_ROWS) * INNER_ROWS, INNER_ROWS


class CatalogueStore:
    """Create, reopen, write (a shard at a time) and read a Zarr catalogue."""

    def __init__(self, root: zarr.Group, path: Path):
        self.root, self.path = root, path
        self.columns = list(root.attrs["columns"])
        self.meta: dict[str, dict] = dict(root.attrs["column_meta"])
        self.chunk = int(root.attrs["chunk"])
        self.n_rows = int(root.attrs["n_rows"])

    @classmethod
    def create(cls, path: str | Path, n_rows: int, chunk: int, columns: list[Column], attrs: dict) -> CatalogueStore:
        """A new catalogue of ``n_rows`` rows in shards of ``chunk`` rows (see :func:`shard_layout`)."""
        path = Path(path)
        if not path.parent.exists():
            raise FileNotFoundError(f"cannot write catalogue {path}: folder {path.parent} does not exist")
        shard, inner = shard_layout(chunk)
        meta: dict[str, dict] = {}
        blocks: dict[str, list[Column]] = {}
        for col in columns:
            if col.dtype == "str":
                meta[col.name] = {"array": f"text_{col.name}", "index": None}
            else:
                name = _BLOCKS[col.dtype]
                blocks.setdefault(name, []).append(col)
                meta[col.name] = {"array": name, "index": len(blocks[name]) - 1}
            meta[col.name].update(dtype=col.dtype, unit=col.unit, description=col.description,
                                  fill=None if isinstance(col.fill, float) and np.isnan(col.fill) else col.fill)
        root = zarr.open_group(str(path), mode="w-")
        for name, cols in blocks.items():
            width = len(cols)
            fill = cols[0].fill if all(_same_fill(c.fill, cols[0].fill) for c in cols) else 0
            kwargs = dict(shape=(n_rows, width), chunks=(inner, width), dtype=cols[0].dtype, fill_value=fill)
            if shard != inner:
                kwargs["shards"] = (shard, width)
            arr = root.create_array(name, **kwargs)
            arr.attrs["columns"] = [c.name for c in cols]
        for col in columns:
            if col.dtype == "str":
                kwargs = dict(shape=(n_rows,), chunks=(inner,), dtype=np.dtypes.StringDType(), fill_value="")
                if shard != inner:
                    kwargs["shards"] = (shard,)
                root.create_array(f"text_{col.name}", **kwargs)
        n_chunks = -(-n_rows // shard)
        root.create_array("_done", shape=(n_chunks,), chunks=(1,), dtype=bool, fill_value=False)
        root.attrs.update({**attrs, "format": CATALOG_FORMAT, "columns": [c.name for c in columns], "chunk": shard,
                           "inner_chunk": inner, "column_meta": meta, "n_rows": n_rows,
                           "flag_bits": {f.name: f.bit for f in FLAGS},
                           "flag_descriptions": {f.name: f.description for f in FLAGS},
                           "flag_table": flag_records("flags"), "ingest_flag_table": flag_records("ingest_flags")})
        return cls(root, path)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> CatalogueStore:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"catalogue {path} not found")
        try:
            root = zarr.open_group(str(path), mode=mode)
        except Exception as exc:  # zarr raises several types for non-stores
            raise ValueError(f"{path}: not a readable Zarr catalogue ({exc})") from None
        found = root.attrs.get("format")
        if found != CATALOG_FORMAT:
            hint = " (made by an earlier version: re-run `runtime process`)" if str(found).startswith(
                "cinn4most-catalogue/") else ""
            raise ValueError(f"{path}: format is {found!r}, expected {CATALOG_FORMAT!r}{hint}")
        return cls(root, path)

    @property
    def attrs(self) -> dict:
        return dict(self.root.attrs)

    @property
    def n_chunks(self) -> int:
        return self.root["_done"].shape[0]

    def done(self) -> np.ndarray:
        return self.root["_done"][:]

    def done_rows(self) -> np.ndarray:
        """True for rows whose shard is finished."""
        rows = np.zeros(self.n_rows, dtype=bool)
        for k in np.flatnonzero(self.done()):
            a, b = self.chunk_bounds(int(k))
            rows[a:b] = True
        return rows

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        return k * self.chunk, min((k + 1) * self.chunk, self.n_rows)

    def column_info(self, name: str) -> dict:
        """dtype, unit and description of a column."""
        return self.meta[name]

    def arrays(self) -> dict[str, list[str]]:
        """Stored array -> the columns it holds (for checks)."""
        out: dict[str, list[str]] = {}
        for name in self.columns:
            out.setdefault(self.meta[name]["array"], []).append(name)
        return out

    def write_chunk(self, k: int, values: dict[str, np.ndarray]) -> None:
        """Write shard k's rows of every column (each array's shard once, whole), then its done marker."""
        start, stop = self.chunk_bounds(k)
        missing = set(self.columns) - set(values)
        if missing:
            raise ValueError(f"chunk {k}: values for column(s) {sorted(missing)} missing")
        for array, names in self.arrays().items():
            if array.startswith("text_"):
                self.root[array][start:stop] = np.asarray(values[names[0]], dtype=np.dtypes.StringDType())
            else:
                dtype = self.root[array].dtype
                self.root[array][start:stop, :] = np.stack([np.asarray(values[n], dtype=dtype) for n in names], axis=1)
        self.root["_done"][k] = True

    def read_rows(self, start: int, stop: int, columns: list[str] | None = None) -> dict[str, np.ndarray]:
        """Rows [start, stop) of ``columns`` (default: all), one read per stored array."""
        wanted = columns or self.columns
        out: dict[str, np.ndarray] = {}
        for array, names in self.arrays().items():
            names = [n for n in names if n in wanted]
            if not names:
                continue
            if array.startswith("text_"):
                out[names[0]] = self.root[array][start:stop]
                continue
            block = self.root[array][start:stop, :]
            for name in names:  # copies: a view would keep the whole block alive
                out[name] = np.ascontiguousarray(block[:, self.meta[name]["index"]])
        return {name: out[name] for name in wanted}

    def column(self, name: str) -> np.ndarray:
        """One whole column (its block is read in pieces of a shard, so memory stays one column)."""
        if name not in self.meta:
            raise KeyError(f"{self.path}: no column {name!r}")
        return self.read_columns([name])[name]

    def read_columns(self, names: list[str]) -> dict[str, np.ndarray]:
        """Whole columns ``names``, read in one pass over the shards (each stored block is decompressed once,
        whatever the number of columns taken from it)."""
        unknown = [n for n in names if n not in self.meta]
        if unknown:
            raise KeyError(f"{self.path}: no column(s) {', '.join(unknown)}")
        parts = [self.read_rows(a, b, names) for a, b in self.row_blocks()]
        return {n: np.concatenate([p[n] for p in parts]) if parts else np.empty(0) for n in names}

    def row_blocks(self, rows: int | None = None):
        """(start, stop) pairs covering the catalogue in blocks of ``rows`` (default: one shard)."""
        step = rows or self.chunk
        return [(a, min(a + step, self.n_rows)) for a in range(0, self.n_rows, step)]


def _same_fill(a, b) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b)) or a == b


def _export_blocks(store: CatalogueStore, path, complete_only: bool) -> list[tuple[int, int]]:
    """Row blocks to export: every shard, or (``complete_only``) the finished ones; an unfinished catalogue is
    refused otherwise."""
    done = store.done()
    if not done.all() and not complete_only:
        missing = int(sum(b - a for a, b in (store.chunk_bounds(int(k)) for k in np.flatnonzero(~done))))
        raise ValueError(f"{path}: unfinished catalogue ({missing} of {store.n_rows} rows not processed yet); "
                         "complete it with `runtime process --resume`, or export the finished rows only "
                         "with --complete-only")
    return [store.chunk_bounds(int(k)) for k in np.flatnonzero(done)]


def _text_as_str(values: np.ndarray) -> np.ndarray:
    return np.asarray(values.tolist(), dtype=str) if values.dtype.kind in "OT" else values


def read_table(path: str | Path, complete_only: bool = False):
    """The catalogue as an astropy Table with units and descriptions, in memory (for small catalogues and
    interactive use; the exports stream instead)."""
    from astropy.table import Table

    store = CatalogueStore.open(path)
    blocks = _export_blocks(store, path, complete_only)
    parts = [store.read_rows(a, b) for a, b in blocks]
    table = Table()
    for name in store.columns:
        values = np.concatenate([p[name] for p in parts]) if parts else np.empty(0)
        table[name] = _text_as_str(values)
        info = store.column_info(name)
        if info["unit"]:
            table[name].unit = info["unit"]
        table[name].description = info["description"]
    table.meta.update(provenance(store))
    table.meta["rows_exported"] = int(sum(b - a for a, b in blocks))
    table.meta["rows_total"] = store.n_rows
    return table


def provenance(store: CatalogueStore) -> dict[str, str | int | float | bool]:
    """The run's attributes as flat key -> value (lists and dicts as JSON): nothing is cut."""
    import json

    out = {}
    for key, value in store.attrs.items():
        if key in ("columns", "column_meta", "flag_bits", "flag_descriptions", "flag_table", "ingest_flag_table"):
            continue
        out[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    return out


EXPORT_SUFFIXES = {"parquet": (".parquet", ".pq"), "fits": (".fits", ".fit", ".fits.gz", ".fit.gz"),
                   "parquet-dataset": ("",)}
#: file suffixes no dataset folder may carry (they name a file format)
_FILE_SUFFIXES = (".parquet", ".pq", ".fits", ".fit", ".gz", ".zarr")


def export_format(out: str | Path, fmt: str | None = None) -> str:
    """The export format: ``fmt`` when given (:func:`check_export_target` then checks that the suffix agrees), else
    the one the ``out`` suffix names, so that ``--out c.fits`` needs no ``--format fits``. A name without a known
    suffix is refused: it could be a misspelt file name as well as a dataset folder, which must be asked for."""
    if fmt is not None:
        return fmt
    name = Path(out).name.lower()
    for candidate in ("parquet", "fits"):
        if name.endswith(EXPORT_SUFFIXES[candidate]):
            return candidate
    known = ", ".join(EXPORT_SUFFIXES["parquet"] + EXPORT_SUFFIXES["fits"])
    raise ValueError(f"{out}: cannot tell the export format from the name: end it in {known}, or give --format "
                     "(--format parquet-dataset for a folder of Parquet part files)")


def check_export_target(out: str | Path, fmt: str, overwrite: bool = False) -> Path:
    """The output's suffix must match ``fmt``; an existing output is replaced only with ``overwrite``."""
    from spectra.common.outputs import claim_output

    out = Path(out)
    if fmt not in EXPORT_SUFFIXES:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(EXPORT_SUFFIXES)}")
    if fmt == "parquet-dataset":
        if out.suffix.lower() in _FILE_SUFFIXES:
            raise ValueError(f"{out}: a parquet-dataset export is a folder; give a name without a file suffix")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"cannot write parquet-dataset {out}: folder {out.parent} does not exist")
        if (out.exists() or out.is_symlink()) and overwrite and (
                out.is_symlink() or not out.is_dir() or not (out / "_cinn4most_dataset").is_file()):
            raise FileExistsError(f"{out} exists and is not a dataset exported by catalog export; refusing to "
                                  "delete it even with --overwrite")
        if (out.exists() or out.is_symlink()) and not overwrite:
            raise FileExistsError(f"{out} exists: add --overwrite to replace it, or choose another output")
        return out  # an old dataset of ours is replaced only once the new one is complete (written_atomically)
    if not out.name.lower().endswith(EXPORT_SUFFIXES[fmt]):
        raise ValueError(f"{out}: a {fmt} export needs a file name ending in {' or '.join(EXPORT_SUFFIXES[fmt])}")
    if overwrite and (out.is_symlink() or out.is_dir()):
        raise FileExistsError(f"{out} is a {'symlink' if out.is_symlink() else 'folder'}; --overwrite replaces "
                              "files only (choose another output)")
    if overwrite and out.is_file():  # replaced by the rename of the finished export, not deleted before it
        return out
    return claim_output(out, f"{fmt} file")


def _arrow_schema(store: CatalogueStore, blocks: list[tuple[int, int]]):
    """The Parquet schema: per-field unit/description metadata (pyarrow, pandas), the provenance and flag tables
    as schema metadata, and astropy's own header (:func:`_astropy_metadata`), without which ``Table.read`` loses
    every unit and description."""
    import json

    import pyarrow as pa

    types = {"float32": pa.float32(), "float64": pa.float64(), "int32": pa.int32(), "int64": pa.int64(),
             "bool": pa.bool_(), "str": pa.string()}
    fields = []
    for name in store.columns:
        info = store.column_info(name)
        fields.append(pa.field(name, types[info["dtype"]], metadata={
            b"unit": str(info["unit"] or "").encode(), b"description": str(info["description"]).encode()}))
    rows = int(sum(b - a for a, b in blocks))
    record = provenance(store)
    metadata = {k.encode(): str(v).encode() for k, v in record.items()}
    metadata[b"flag_table"] = json.dumps(flag_records("flags")).encode()
    metadata[b"ingest_flag_table"] = json.dumps(flag_records("ingest_flags")).encode()
    metadata[b"rows_exported"] = str(rows).encode()
    metadata[b"rows_total"] = str(store.n_rows).encode()
    metadata.update(_astropy_metadata(store, record, _text_lengths(store, blocks, len), rows))
    return pa.schema(fields, metadata=metadata)


def _astropy_metadata(store: CatalogueStore, record: dict, text_lengths: dict[str, int],
                      rows: int) -> dict[bytes, bytes]:
    """The schema keys astropy's Parquet reader takes a table's description from, as ``Table.write`` makes them:
    ``table_meta_yaml`` (astropy's serialized header of a 0-row table of the same columns: dtypes, units,
    descriptions, and the run's provenance ``record`` as table meta, as :func:`read_table` gives it) and
    ``table::len::<name>`` per text column (its longest value: without it astropy warns and measures every row)."""
    from astropy.table import Table
    from astropy.table.meta import get_yaml_from_table

    model = Table(meta={**record, "rows_exported": rows, "rows_total": store.n_rows})
    for name in store.columns:
        info = store.column_info(name)
        dtype = f"U{text_lengths[name]}" if info["dtype"] == "str" else info["dtype"]
        model[name] = np.zeros(0, dtype=dtype)
        if info["unit"]:
            model[name].unit = info["unit"]
        model[name].description = info["description"]
    metadata = {b"table_meta_yaml": "\n".join(get_yaml_from_table(model)).encode()}
    metadata.update({f"table::len::{name}".encode(): str(n).encode() for name, n in text_lengths.items()})
    return metadata


def _arrow_batch(store: CatalogueStore, schema, a: int, b: int):
    import pyarrow as pa

    values = store.read_rows(a, b)
    arrays = [pa.array(_text_as_str(values[f.name]), type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def export_parquet(path: str | Path, out: str | Path, overwrite: bool = False, complete_only: bool = False,
                   dataset: bool = False, rows_per_file: int = 1_000_000) -> Path:
    """Parquet, streamed a shard at a time (one row group each): memory does not grow with the catalogue.

    Each field's unit and description are in its metadata; the run's provenance and the flag table in the
    schema metadata, with astropy's serialized header beside them (``Table.read(out)`` keeps units, descriptions
    and provenance; it reads a dataset's part files one at a time). ``dataset``: a folder of part files
    (``part-00000.parquet``, at most ``rows_per_file`` rows each) that ``pyarrow.dataset``, ``pandas.read_parquet``
    and ``dask.dataframe.read_parquet`` read as one.
    """
    import pyarrow.parquet as pq

    out = check_export_target(out, "parquet-dataset" if dataset else "parquet", overwrite)
    store = CatalogueStore.open(path)
    blocks = _export_blocks(store, path, complete_only)
    schema = _arrow_schema(store, blocks)
    if dataset:
        with written_atomically(out, folder=True) as tmp:
            part, rows_in_part, writer = 0, 0, None
            try:
                for a, b in blocks:
                    if writer is None or rows_in_part >= rows_per_file:
                        if writer is not None:
                            writer.close()
                        writer = pq.ParquetWriter(str(tmp / f"part-{part:05d}.parquet"), schema)
                        part, rows_in_part = part + 1, 0
                    writer.write_table(_arrow_batch(store, schema, a, b))
                    rows_in_part += b - a
            finally:
                if writer is not None:
                    writer.close()
            (tmp / "_cinn4most_dataset").write_text(f"exported from {Path(path).resolve()}\n")
        return out
    with written_atomically(out) as tmp, pq.ParquetWriter(str(tmp), schema) as writer:
        for a, b in blocks:
            writer.write_table(_arrow_batch(store, schema, a, b))
    return out


def _fits_text(value) -> bytes:
    """FITS text is ASCII: other characters are written as Python escapes (``é`` -> ``\\xe9``, ``☉`` ->
    ``\\u2609``), which ``codecs.decode(text, "unicode_escape")`` undoes; Parquet keeps the UTF-8 text."""
    return str(value).encode("ascii", "backslashreplace")


_FITS_FORMATS = {"float32": (">f4", "E"), "float64": (">f8", "D"), "int32": (">i4", "J"), "int64": (">i8", "K"),
                 "bool": ("S1", "L")}


def export_fits(path: str | Path, out: str | Path, overwrite: bool = False, complete_only: bool = False) -> Path:
    """FITS, streamed a shard at a time: the catalogue table (TUNITn where FITS defines the unit, TCOMMn
    descriptions), a PROVENANCE table (every run attribute, full length), and FLAGS and INGEST_FLAGS tables (bit,
    name, threshold, description of ``flags`` and ``ingest_flags``). Memory does not grow with the catalogue. An
    ``out`` ending in ``.gz`` is the same file gzip-compressed (astropy, TOPCAT and fitsio read it as it is).

    ``dex`` is not a FITS unit (astropy would warn on every read), so dex columns carry no TUNIT and say
    "[dex]" in their description; a COMMENT card lists them. The catalogue is the first table (HDU 1), but a
    file of four tables makes ``astropy.table.Table.read`` warn unless told which one: read it with
    ``Table.read(out, hdu="CATALOGUE")`` (units and descriptions kept: the header carries astropy's serialized
    column metadata).
    """
    out = check_export_target(out, "fits", overwrite)
    store = CatalogueStore.open(path)
    blocks = _export_blocks(store, path, complete_only)
    with written_atomically(out) as tmp:
        if out.name.lower().endswith(".gz"):
            _write_gzipped_fits(store, blocks, out, tmp)
        else:
            _write_fits(store, blocks, tmp)
    return out


def _write_gzipped_fits(store: CatalogueStore, blocks: list[tuple[int, int]], out: Path, target: Path) -> None:
    """The FITS file gzip-compressed into ``target``: written plain to a scratch file of ours first (the FITS writer
    appends HDUs to a plain file), then streamed through gzip (memory stays one buffer) and removed."""
    import gzip
    import shutil

    plain = scratch_name(out, "fits")
    try:
        _write_fits(store, blocks, plain)
        with open(plain, "rb") as src, gzip.open(target, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    finally:
        plain.unlink(missing_ok=True)


def _text_lengths(store: CatalogueStore, blocks: list[tuple[int, int]], length) -> dict[str, int]:
    """Each text column's longest value as ``length`` measures it (at least 1), in one pass over the text arrays:
    FITS fields and astropy's string columns are fixed-width, and the export streams, so widths come first."""
    names = [n for n in store.columns if store.column_info(n)["dtype"] == "str"]
    widths = dict.fromkeys(names, 1)
    for a, b in blocks if names else ():
        for name, values in store.read_rows(a, b, names).items():
            widths[name] = max(widths[name], max((length(str(v)) for v in values), default=0))
    return widths


def _text_widths(store: CatalogueStore, blocks: list[tuple[int, int]]) -> dict[str, int]:
    """Width of each text column's FITS field: its longest ASCII-escaped value (at least 1)."""
    return _text_lengths(store, blocks, lambda v: len(_fits_text(v)))


def _write_fits(store: CatalogueStore, blocks: list[tuple[int, int]], target: Path) -> None:
    """The four-table FITS file of :func:`export_fits` at ``target`` (uncompressed): the CATALOGUE header is
    astropy's (from a one-row model table), its rows are streamed a shard at a time, then the three small tables."""
    from astropy.io import fits
    from astropy.table import Table

    n_out = int(sum(b - a for a, b in blocks))
    meta = provenance(store)
    meta.update(rows_exported=n_out, rows_total=store.n_rows)
    model, row_dtype = _fits_model(store, _text_widths(store, blocks), meta, n_out)
    model.write(str(target), format="fits", overwrite=True)
    header = fits.getheader(target, 1)
    header["NAXIS2"] = n_out
    for i, name in enumerate(store.columns, start=1):  # FITS-native readers (TOPCAT, fitsio) read TCOMMn
        header[f"TCOMM{i}"] = model[name].description or ""
    with open(target, "wb") as fh:
        fh.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
        fh.write(header.tostring().encode("ascii"))
        written = 0
        for a, b in blocks:
            rows = _fits_rows(store, store.read_rows(a, b), row_dtype)
            fh.write(rows.tobytes())
            written += rows.nbytes
        fh.write(b"\0" * (-written % 2880))
    keys = sorted(meta)
    values = [_fits_text(meta[k]).decode() for k in keys]
    fits.append(str(target), Table({"key": keys, "value": values}).as_array(),
                fits.Header([("EXTNAME", "PROVENANCE")]))
    for extname, table in (("FLAGS", FLAGS), ("INGEST_FLAGS", INGEST_FLAGS)):
        flags = Table({"bit": [f.bit for f in table], "name": [f.name for f in table],
                       "threshold": [np.nan if f.threshold is None else f.threshold for f in table],
                       "description": [f.description for f in table]})
        fits.append(str(target), flags.as_array(), fits.Header([("EXTNAME", extname)]))


def _fits_model(store: CatalogueStore, widths: dict[str, int], meta: dict, n_out: int):
    """(one-row astropy Table whose FITS header is the CATALOGUE header, numpy dtype of one FITS row)."""
    from astropy.table import Table

    model = Table()
    dex = []
    dtypes = []
    for name in store.columns:
        info = store.column_info(name)
        if info["dtype"] == "str":
            model[name] = np.zeros(1, dtype=f"S{widths[name]}")
            dtypes.append((name, f"S{widths[name]}"))
        else:
            model[name] = np.zeros(1, dtype=info["dtype"])
            dtypes.append((name, _FITS_FORMATS[info["dtype"]][0]))
        description = str(info["description"])
        if info["unit"] == "dex":
            description += " [dex]"
            dex.append(name)
        elif info["unit"]:
            model[name].unit = info["unit"]
        model[name].description = description
    model.meta.update({"EXTNAME": "CATALOGUE", "FORMAT": meta.get("format", ""), "BUNDLE": meta.get(
        "bundle_sha256", ""), "NROWS": n_out, "COMMENT": [
        "Columns in dex (no FITS unit): " + ", ".join(dex),
        "Text columns are ASCII: other characters as Python escapes (\\xe9, \\u2609); Parquet keeps UTF-8",
        "Run provenance: PROVENANCE extension; flag bits: FLAGS (flags), INGEST_FLAGS (ingest_flags)",
        "Several tables: read this one with astropy's Table.read(path, hdu='CATALOGUE')"]})
    for f in FLAGS:
        model.meta[f"FLAG{f.bit.bit_length() - 1}"] = f.name
    return model, np.dtype(dtypes)


def _fits_rows(store: CatalogueStore, values: dict[str, np.ndarray], row_dtype: np.dtype) -> np.ndarray:
    """One block of catalogue rows as big-endian FITS binary-table records."""
    rows = np.zeros(len(values[store.columns[0]]), dtype=row_dtype)
    for name in store.columns:
        kind = store.column_info(name)["dtype"]
        if kind == "bool":
            rows[name] = np.where(values[name], b"T", b"F")
        elif kind == "str":
            rows[name] = [_fits_text(v) for v in values[name]]
        else:
            rows[name] = values[name]
    return rows
