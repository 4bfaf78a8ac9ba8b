"""Compact, committable copies of synthesised grids: float16 flux, gzip, in shards.

PySME costs seconds per spectrum, and nothing outside the repository survives a session, so every grid we
synthesise is kept in the repository in this form and grown by later sessions. ``spectra pack-grid`` writes the
finished rows of a grid (``spectra.stores.gridstore`` layout) as shard files of at most ``rows_per_shard`` rows (250,
about 4 MB: no single large binary in the repository)::

    <name>-0000.h5 ...   /flux (n, P) float16 (gzip 9 + shuffle, one row per chunk), /labels (n, K) float64,
                         /row (n,) index in the source grid, /atmosphere_method (n,), /synthesis_seconds (n,),
                         /wavelength (P,); attrs: the source grid's provenance, ``packed_from``, ``flux_precision``

Storage error: float16 flux near the continuum is exact to 2.4e-4 (half its spacing below 1) and 1e-4 in the
median, below the per-pixel noise at S/N 1000 per Å (4.5e-3) and well below the emulator's goal (1e-3).
About 15 kB per spectrum. ``spectra unpack-grid`` rebuilds an ordinary grid file (float32) for training.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .. import schema
from ..common.scratch import written_atomically
from ..wavegrid import hr_grid_of
from .gridstore import GridReader, GridWriter

__all__ = ["FLUX_PRECISION", "pack_grid", "packed_shards", "unpack_grid"]

FLUX_PRECISION = "float16: |error| <= 2.4e-4 for flux <= 1 (median 1e-4)"
_FORMAT = "cinn4most-gridpack/1"


def pack_grid(grid_path: str | Path, out_dir: str | Path, name: str, rows_per_shard: int = 250) -> list[Path]:
    """Write the finished rows of ``grid_path`` as shards ``out_dir/<name>-NNNN.h5``; returns their paths.

    Re-packing the same grid rewrites its shards (they are ours: they carry ``format`` and ``packed_from``);
    a shard file of another origin is never replaced.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with GridReader(grid_path) as grid:
        rows = np.flatnonzero(grid.done)
        if rows.size == 0:
            raise ValueError(f"{grid_path}: no finished rows to pack")
        attrs = {k: v for k, v in grid.attrs.items() if isinstance(v, (str, int, float, bool, np.integer,
                                                                         np.floating, np.bool_))}
        labels, methods, seconds = grid.labels, grid.atmosphere_method, grid.synthesis_seconds
        for k, start in enumerate(range(0, rows.size, rows_per_shard)):
            part = rows[start:start + rows_per_shard]
            path = out_dir / f"{name}-{k:04d}.h5"
            if path.exists():
                with h5py.File(path, "r") as old:
                    if old.attrs.get("format") != _FORMAT:
                        raise FileExistsError(f"{path} exists and is not a packed grid shard; not replacing it")
            with written_atomically(path) as tmp, h5py.File(tmp, "w") as f:
                flux = np.stack([grid.flux[int(i), :] for i in part]).astype(np.float16)
                f.create_dataset("flux", data=flux, chunks=(1, flux.shape[1]), compression="gzip",
                                 compression_opts=9, shuffle=True)
                f.create_dataset("labels", data=labels[part])
                f["labels"].attrs["names"] = grid.label_names
                f.create_dataset("row", data=part.astype(np.int64))
                f.create_dataset("atmosphere_method", data=np.asarray(methods[part], dtype=object),
                                 dtype=h5py.string_dtype("utf-8"))
                f.create_dataset("synthesis_seconds", data=np.asarray(seconds[part], dtype=np.float32))
                f.create_dataset("wavelength", data=grid.wavelength)
                f.attrs.update(attrs)
                f.attrs.update(format=_FORMAT, packed_from=str(Path(grid_path).name), n_source_rows=grid.n,
                               flux_precision=FLUX_PRECISION, shard=k)
            written.append(path)
    return written


def packed_shards(paths: list[str | Path]) -> list[Path]:
    """Shard files from files and folders (a folder contributes its ``*.h5``), sorted."""
    out = []
    for p in map(Path, paths):
        out += sorted(p.glob("*.h5")) if p.is_dir() else [p]
    if not out:
        raise FileNotFoundError(f"no packed grid shards in {', '.join(map(str, paths))}")
    return out


def unpack_grid(shards: list[str | Path], out: str | Path) -> Path:
    """Rebuild an ordinary grid file (``spectra.stores.gridstore``) from shards of one packed grid (same seed and
    engine); rows keep their source order, so a Sobol-prefix grid stays one."""
    files = packed_shards(shards)
    parts = []
    for path in files:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != _FORMAT:
                raise ValueError(f"{path}: not a packed grid shard (format {f.attrs.get('format')!r})")
            parts.append((path, dict(f.attrs), f["row"][:]))
            if path == files[0]:
                grid = hr_grid_of(f["wavelength"][:])
    keys = ("seed", "engine", "linelist_sha256", "prior", "rotation", "hr_grid")
    first = parts[0][1]
    for path, attrs, _ in parts[1:]:
        for key in keys:
            if attrs.get(key) != first.get(key):
                raise ValueError(f"{path}: {key} = {attrs.get(key)!r}, {files[0]} has {first.get(key)!r}; "
                                 "unpack shards of one grid at a time")
    n = int(max(rows.max() for _, _, rows in parts)) + 1
    attrs = {k: v for k, v in first.items() if k not in ("format", "n", "wavelength_sha256", "created", "shard",
                                                          "packed_from", "n_source_rows", "flux_precision")}
    attrs["unpacked_from"] = ", ".join(sorted({str(a.get("packed_from")) for _, a, _ in parts}))
    with GridWriter(out, n, grid, attrs) as writer:
        for path, _, rows in parts:
            with h5py.File(path, "r") as f:
                names = [str(x) for x in f["labels"].attrs["names"]]
                if names != schema.label_names():
                    raise ValueError(f"{path}: label names differ from this version's schema")
                flux, labels = f["flux"], f["labels"][:]
                methods = f["atmosphere_method"].asstr()[:]
                seconds = f["synthesis_seconds"][:]
                for j, row in enumerate(rows):
                    if not writer.done[row]:
                        writer.write_row(int(row), flux[j].astype(np.float32), labels[j], str(methods[j]),
                                         float(seconds[j]))
    return Path(out)
