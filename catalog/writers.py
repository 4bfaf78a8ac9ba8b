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

__all__ = ["CATALOG_FORMAT", "CatalogueStore", "export_fits", "export_parquet", "read_table"]

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


def read_table(path: str | Path):
    """The catalogue as an astropy Table with units and descriptions (all rows)."""
    from astropy.table import Table

    store = CatalogueStore.open(path)
    table = Table()
    for name in store.columns:
        arr = store.root[name]
        table[name] = arr[:]
        unit = arr.attrs.get("unit", "")
        if unit:
            table[name].unit = unit
        table[name].description = arr.attrs.get("description", "")
    table.meta.update({k: v for k, v in store.attrs.items() if isinstance(v, (str, int, float, bool))})
    return table


def export_parquet(path: str | Path, out: str | Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = read_table(path)
    fields, arrays = [], []
    for name in table.colnames:
        col = table[name]
        meta = {b"unit": str(col.unit or "").encode(), b"description": (col.description or "").encode()}
        arrays.append(pa.array(np.asarray(col)))
        fields.append(pa.field(name, arrays[-1].type, metadata=meta))
    schema = pa.schema(fields, metadata={k.encode(): str(v).encode() for k, v in table.meta.items()})
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), str(out))
    return Path(out)


def export_fits(path: str | Path, out: str | Path) -> Path:
    """FITS binary table with TUNITn (``dex`` written as the conventional string, which FITS does not
    define), TCOMMn descriptions, and the run's provenance as HIERARCH header cards."""
    import warnings

    from astropy.io import fits
    from astropy.io.fits.verify import VerifyWarning

    table = read_table(path)
    dex = [name for name in table.colnames if str(table[name].unit or "") == "dex"]
    for name in dex:
        table[name].unit = None
    meta = dict(table.meta)
    table.meta.clear()
    hdu = fits.BinTableHDU(table, name="CATALOGUE")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        for i, name in enumerate(table.colnames, start=1):
            if name in dex:
                hdu.header[f"TUNIT{i}"] = "dex"
            hdu.header[f"TCOMM{i}"] = (table[name].description or "")[:68]
        for key, value in meta.items():
            hdu.header[f"HIERARCH {key}"] = str(value)[: max(0, 66 - len(key))]
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(str(out), overwrite=True)
    return Path(out)
