"""Catalogue storage: a columnar Zarr store written by region, and exports to Parquet and FITS.

Zarr layout: one 1-D array per column (``catalog.schema``), all chunked alike along the rows, plus
``_done`` (n_chunks,) whose element k is set *after* chunk k's rows are written: the resume marker
(a chunk file's existence is not one, since all-fill chunks are never written). Attributes carry the
column units/descriptions, the flag table and the run's provenance. Tasks write disjoint, chunk-aligned
regions, so any number of workers can write concurrently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from .schema import FLAGS, Column, flags_table

__all__ = ["CATALOG_FORMAT", "CatalogueStore", "check_export_target", "export_fits", "export_parquet", "provenance",
           "read_table"]

CATALOG_FORMAT = "cinn4most-catalogue/1"


class CatalogueStore:
    """Create, reopen and write a Zarr catalogue."""

    def __init__(self, root: zarr.Group, path: Path):
        self.root, self.path = root, path
        self.columns = list(root.attrs["columns"])
        self.chunk = int(root.attrs["chunk"])
        self.n_rows = int(root.attrs["n_rows"])

    @classmethod
    def create(cls, path: str | Path, n_rows: int, chunk: int, columns: list[Column], attrs: dict) -> CatalogueStore:
        path = Path(path)
        if not path.parent.exists():
            raise FileNotFoundError(f"cannot write catalogue {path}: folder {path.parent} does not exist")
        root = zarr.open_group(str(path), mode="w-")
        for col in columns:
            dtype = np.dtypes.StringDType() if col.dtype == "str" else col.dtype
            arr = root.create_array(col.name, shape=(n_rows,), chunks=(chunk,), dtype=dtype, fill_value=col.fill)
            arr.attrs.update(unit=col.unit, description=col.description)
        n_chunks = -(-n_rows // chunk)
        root.create_array("_done", shape=(n_chunks,), chunks=(1,), dtype=bool, fill_value=False)
        root.attrs.update({**attrs, "format": CATALOG_FORMAT, "columns": [c.name for c in columns], "chunk": chunk,
                           "n_rows": n_rows, "flag_bits": {f.name: f.bit for f in FLAGS},
                           "flag_descriptions": {f.name: f.description for f in FLAGS},
                           "flag_table": flags_table()})
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
        if root.attrs.get("format") != CATALOG_FORMAT:
            raise ValueError(f"{path}: format is {root.attrs.get('format')!r}, expected {CATALOG_FORMAT!r}")
        return cls(root, path)

    @property
    def attrs(self) -> dict:
        return dict(self.root.attrs)

    @property
    def n_chunks(self) -> int:
        return self.root["_done"].shape[0]

    def done(self) -> np.ndarray:
        return self.root["_done"][:]

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        return k * self.chunk, min((k + 1) * self.chunk, self.n_rows)

    def write_chunk(self, k: int, values: dict[str, np.ndarray]) -> None:
        """Write chunk k's rows for every column, then its done marker."""
        start, stop = self.chunk_bounds(k)
        missing = set(self.columns) - set(values)
        if missing:
            raise ValueError(f"chunk {k}: values for column(s) {sorted(missing)} missing")
        for name in self.columns:
            self.root[name][start:stop] = values[name]
        self.root["_done"][k] = True

    def column(self, name: str) -> np.ndarray:
        return self.root[name][:]


def read_table(path: str | Path, complete_only: bool = False):
    """The catalogue as an astropy Table with units and descriptions.

    An unfinished catalogue (chunks not marked done: an interrupted run) is refused unless ``complete_only``,
    which keeps only the rows of finished chunks (the table's ``meta['rows_exported']`` says how many).
    """
    from astropy.table import Table

    store = CatalogueStore.open(path)
    done = store.done()
    rows = np.ones(store.n_rows, dtype=bool)
    if not done.all():
        missing = int(sum(b - a for a, b in (store.chunk_bounds(int(k)) for k in np.flatnonzero(~done))))
        if not complete_only:
            raise ValueError(f"{path}: unfinished catalogue ({missing} of {store.n_rows} rows not processed yet); "
                             "complete it with `runtime process --resume`, or export the finished rows only "
                             "with --complete-only")
        for k in np.flatnonzero(~done):
            a, b = store.chunk_bounds(int(k))
            rows[a:b] = False
    table = Table()
    for name in store.columns:
        arr = store.root[name]
        values = arr[:][rows]
        if values.dtype.kind in "OT":  # variable-length strings -> fixed-width for FITS and astropy
            values = np.asarray(values.tolist(), dtype=str)
        table[name] = values
        unit = arr.attrs.get("unit", "")
        if unit:
            table[name].unit = unit
        table[name].description = arr.attrs.get("description", "")
    table.meta.update(provenance(store))
    table.meta["rows_exported"] = int(rows.sum())
    table.meta["rows_total"] = store.n_rows
    return table


def provenance(store: CatalogueStore) -> dict[str, str | int | float | bool]:
    """The run's attributes as flat key -> value (lists and dicts as JSON): nothing is cut."""
    import json

    out = {}
    for key, value in store.attrs.items():
        if key in ("columns", "flag_bits", "flag_descriptions", "flag_table"):
            continue
        out[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    return out


EXPORT_SUFFIXES = {"parquet": (".parquet", ".pq"), "fits": (".fits", ".fit", ".fits.gz")}


def check_export_target(out: str | Path, fmt: str, overwrite: bool = False) -> Path:
    """The output's suffix must match ``fmt``; an existing file is replaced only with ``overwrite``."""
    from catalog.outputs import claim_output

    out = Path(out)
    if fmt not in EXPORT_SUFFIXES:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(EXPORT_SUFFIXES)}")
    if not out.name.lower().endswith(EXPORT_SUFFIXES[fmt]):
        raise ValueError(f"{out}: a {fmt} export needs a file name ending in {' or '.join(EXPORT_SUFFIXES[fmt])}")
    return claim_output(out, f"{fmt} file", overwrite=overwrite)


def export_parquet(path: str | Path, out: str | Path, overwrite: bool = False, complete_only: bool = False) -> Path:
    """Parquet with each column's unit and description in its field metadata and the run's provenance and flag
    table in the schema metadata."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = check_export_target(out, "parquet", overwrite)
    table = read_table(path, complete_only)
    fields, arrays = [], []
    for name in table.colnames:
        col = table[name]
        meta = {b"unit": str(col.unit or "").encode(), b"description": (col.description or "").encode()}
        arrays.append(pa.array(np.asarray(col)))
        fields.append(pa.field(name, arrays[-1].type, metadata=meta))
    metadata = {k.encode(): str(v).encode() for k, v in table.meta.items()}
    metadata[b"flag_table"] = json.dumps(flags_table()).encode()
    schema = pa.schema(fields, metadata=metadata)
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), str(out))
    return out


def export_fits(path: str | Path, out: str | Path, overwrite: bool = False, complete_only: bool = False) -> Path:
    """FITS: the catalogue table (TUNITn where FITS defines the unit, TCOMMn descriptions), a PROVENANCE table
    (every run attribute, full length) and a FLAGS table (bit, name, threshold, description).

    ``dex`` is not a FITS unit (astropy would warn on every read), so dex columns carry no TUNIT and say
    "[dex]" in their description; the header's DEXCOLS card lists them. Reads cleanly with
    ``astropy.table.Table.read`` (descriptions and units kept).
    """
    from astropy.io import fits
    from astropy.table import Table

    out = check_export_target(out, "fits", overwrite)
    table = read_table(path, complete_only)
    meta = dict(table.meta)
    table.meta.clear()
    dex = []
    for name in table.colnames:
        if str(table[name].unit or "") == "dex":
            table[name].unit = None
            table[name].description = f"{table[name].description} [dex]"
            dex.append(name)
    table.meta["EXTNAME"] = "CATALOGUE"
    table.meta["FORMAT"] = meta.get("format", "")
    table.meta["BUNDLE"] = meta.get("bundle_sha256", "")
    table.meta["NROWS"] = meta.get("rows_exported", len(table))
    table.meta["COMMENT"] = ["Columns in dex (no FITS unit): " + ", ".join(dex),
                             "Run provenance: PROVENANCE extension; flag bits: FLAGS extension"]
    for f in FLAGS:
        table.meta[f"FLAG{f.bit.bit_length() - 1}"] = f.name
    keys = sorted(meta)
    provenance_hdu = fits.BinTableHDU(Table({"key": keys, "value": [str(meta[k]) for k in keys]}),
                                      name="PROVENANCE")
    flags = Table({"bit": [f.bit for f in FLAGS], "name": [f.name for f in FLAGS],
                   "threshold": [np.nan if f.threshold is None else f.threshold for f in FLAGS],
                   "description": [f.description for f in FLAGS]})
    tmp = out.with_name(out.name + ".partial")
    table.write(str(tmp), format="fits", overwrite=True)  # astropy keeps descriptions in its COMMENT block
    with fits.open(tmp) as written:
        catalogue_hdu = written[1].copy()
    catalogue_hdu.name = "CATALOGUE"
    for i, name in enumerate(table.colnames, start=1):  # FITS-native readers (TOPCAT, fitsio) read TCOMMn
        catalogue_hdu.header[f"TCOMM{i}"] = table[name].description or ""
    hdus = fits.HDUList([fits.PrimaryHDU(), catalogue_hdu, provenance_hdu, fits.BinTableHDU(flags, name="FLAGS")])
    hdus.writeto(str(tmp), overwrite=True)
    tmp.replace(out)
    return out
