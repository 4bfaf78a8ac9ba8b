"""The HDF5 grid store: noiseless 4MOST HR spectra with their labels and provenance.

Layout (h5py)::

    /wavelength          (P,)   float64  air, Å; attrs: medium, unit, definition, sha256
    /flux                (N, P) float32  continuum-normalised, noiseless, 4MOST-ified; chunked by row
    /labels              (N, K) float64  attrs: names, units, transforms (``schema`` order)
    /atmosphere_method   (N,)   str      how each row's atmosphere was made (``atmospheres``)
    /synthesis_seconds   (N,)   float32  engine time per row (performance bookkeeping)
    /done                (N,)   bool     resume marker, set *after* a row's data is written
    attrs: format, engine, engine_version, linelist_sha256, atmosphere_source, prior, seed, ...

Unrotated grids may be stored with a wavelength margin beyond the HR windows (``spectra.wavegrid.hr_grid(margin)``),
which rotation needs; :attr:`GridReader.hr_index`, :attr:`GridReader.hr_wavelength` and :meth:`GridReader.hr_flux`
give readers that want the 4MOST HR pixels only those (``spectra.forward.margin``).

A row counts only once ``done`` is true, so an interrupted writer loses at most the rows in
flight, never a half-written one. Each finished row is also journaled first to
``<out>.journal/<row>.npz`` (written to a temporary name, then renamed: atomic). Should a writer be
killed in the middle of an HDF5 write and leave the file unreadable, reopening moves it aside and
rebuilds it from the journal; the journal is removed once every row is done.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from .. import schema
from ..forward.margin import crop, hr_index
from ..wavegrid import WavelengthGrid, hr_grid

__all__ = ["FORMAT", "GridReader", "GridWriter", "ProvenanceMismatchError"]

FORMAT = "cinn4most-grid/1"
_METHOD_DTYPE = h5py.string_dtype("utf-8")


class ProvenanceMismatchError(ValueError):
    """An existing grid file was made with different settings than the ones requested."""


class GridWriter:
    """Create or reopen a grid file and write rows one at a time (in any order)."""

    #: attributes that must match when resuming into an existing file
    IDENTITY_KEYS = ("format", "n", "seed", "wavelength_sha256", "linelist_sha256", "engine", "prior", "rotation")

    def __init__(self, path: str | Path, n: int, grid: WavelengthGrid, attrs: Mapping[str, object]):
        self.path = Path(path)
        self.grid = grid
        self.journal = self.path.with_name(self.path.name + ".journal")
        identity = {"format": FORMAT, "n": n, "wavelength_sha256": grid.sha256(), **attrs}
        if self.path.exists():
            self._file = self._reopen(identity)
        else:
            self._file = self._create(n, identity)
        self._done = self._file["done"][:]
        self._replay_journal()

    def _create(self, n: int, identity: Mapping[str, object]) -> h5py.File:
        parent = self.path.parent
        if not parent.exists():
            raise FileNotFoundError(f"cannot write {self.path}: folder {parent} does not exist")
        try:
            f = h5py.File(self.path, "w")
        except OSError as exc:
            raise PermissionError(f"cannot create grid file {self.path}: {exc}") from None
        p = self.grid.size
        wave = f.create_dataset("wavelength", data=self.grid.wave)
        wave.attrs.update(medium="air", unit="Angstrom", definition=self.grid.definition,
                          sha256=self.grid.sha256(), name=self.grid.name)
        f.create_dataset("flux", shape=(n, p), dtype="f4", chunks=(1, p), fillvalue=np.nan)
        labels = f.create_dataset("labels", shape=(n, len(schema.ALL_LABELS)), dtype="f8", fillvalue=np.nan)
        labels.attrs["names"] = schema.label_names()
        labels.attrs["units"] = [q.unit for q in schema.ALL_LABELS]
        labels.attrs["transforms"] = [q.transform for q in schema.ALL_LABELS]
        labels.attrs["n_targets"] = len(schema.TARGETS)
        f.create_dataset("atmosphere_method", shape=(n,), dtype=_METHOD_DTYPE)
        f.create_dataset("synthesis_seconds", shape=(n,), dtype="f4", fillvalue=np.nan)
        f.create_dataset("done", shape=(n,), dtype=bool, fillvalue=False)
        f.attrs.update({k: v for k, v in identity.items()})
        f.attrs["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        f.flush()
        return f

    def _reopen(self, identity: Mapping[str, object]) -> h5py.File:
        try:
            f = h5py.File(self.path, "r+")
        except OSError as exc:
            if not self.journal.is_dir():
                raise ProvenanceMismatchError(f"{self.path} exists but cannot be reopened to resume ({exc}); "
                                              "remove it or choose another --out") from None
            # Killed mid-write: keep the damaged file for inspection, rebuild from the journal.
            aside = self.path.with_name(self.path.name + f".damaged-{dt.datetime.now():%Y%m%dT%H%M%S}")
            self.path.rename(aside)
            return self._create(int(identity["n"]), identity)
        for key in self.IDENTITY_KEYS:
            found = _attr(f, key)
            if key == "rotation" and found is None:  # grids from before unrotated storage existed
                found = "applied"
            if key in identity and found != identity[key]:
                f.close()
                raise ProvenanceMismatchError(
                    f"{self.path} exists with {key} = {found!r}, but this run has {identity[key]!r}; "
                    "resume only with the same settings, or choose another --out"
                )
        return f

    @property
    def done(self) -> np.ndarray:
        return self._done.copy()

    def _replay_journal(self) -> None:
        if not self.journal.is_dir():
            return
        for entry in sorted(self.journal.glob("*.npz")):
            index = int(entry.stem)
            if index < self._done.size and not self._done[index]:
                with np.load(entry) as row:
                    self._write_hdf5(index, row["flux"], row["labels"], str(row["method"]), float(row["seconds"]))

    def write_row(self, index: int, flux: np.ndarray, labels: np.ndarray, method: str, seconds: float) -> None:
        if flux.shape != (self.grid.size,):
            raise ValueError(f"row {index}: flux has {flux.size} pixels; the grid has {self.grid.size}")
        self.journal.mkdir(exist_ok=True)
        tmp = self.journal / f"{index:09d}.partial"
        with open(tmp, "wb") as fh:
            np.savez(fh, flux=flux.astype(np.float32), labels=labels, method=np.array(method), seconds=seconds)
        os.replace(tmp, self.journal / f"{index:09d}.npz")
        self._write_hdf5(index, flux, labels, method, seconds)

    def _write_hdf5(self, index: int, flux: np.ndarray, labels: np.ndarray, method: str, seconds: float) -> None:
        f = self._file
        f["flux"][index] = flux.astype(np.float32)
        f["labels"][index] = labels
        f["atmosphere_method"][index] = method
        f["synthesis_seconds"][index] = seconds
        f.flush()
        f["done"][index] = True  # marker last: a row is complete only once this is on disk
        f.flush()
        self._done[index] = True

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
            if self._done.all() and self.journal.is_dir():
                shutil.rmtree(self.journal)

    def __enter__(self) -> GridWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _attr(f: h5py.File, key: str):
    value = f.attrs.get(key)
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    return value


class GridReader:
    """Lazy reader of a grid file: nothing but attributes is read until asked for."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"grid file {self.path} not found")
        try:
            # locking=False: a grid may be inspected while its writer is still running
            self._file = h5py.File(self.path, "r", locking=False)
        except OSError as exc:
            raise ValueError(f"{self.path} is not a readable HDF5 grid ({exc})") from None
        missing = [k for k in ("wavelength", "flux", "labels", "done") if k not in self._file]
        if missing:
            raise ValueError(f"{self.path}: not a grid store, missing dataset(s) {', '.join('/' + m for m in missing)}")
        self.label_names = [str(n) for n in self._file["labels"].attrs["names"]]

    @property
    def attrs(self) -> dict:
        return {k: _attr(self._file, k) for k in self._file.attrs}

    @property
    def wavelength(self) -> np.ndarray:
        return self._file["wavelength"][:]

    @property
    def n(self) -> int:
        return self._file["flux"].shape[0]

    @property
    def done(self) -> np.ndarray:
        return self._file["done"][:]

    @property
    def flux(self) -> h5py.Dataset:
        """Flux on the stored pixels (with the margin, if the grid has one); :meth:`hr_flux` for the HR pixels."""
        return self._file["flux"]

    @functools.cached_property
    def hr_index(self) -> np.ndarray | None:
        """Indices of the HR pixels among the stored ones; None when the grid has no margin (nothing to crop).
        Worked out once per reader: the pixel grid of a file never changes."""
        return hr_index(self.wavelength)

    @property
    def hr_wavelength(self) -> np.ndarray:
        """Wavelengths of the pixels :meth:`hr_flux` returns (the stored ones when there is no margin)."""
        return crop(self.wavelength, self.hr_index)

    @property
    def hr_definition(self) -> str:
        """How the pixels of :attr:`hr_wavelength` are defined: the stored grid's words, the HR grid's if cropped."""
        if self.hr_index is not None:
            return hr_grid().definition
        return str(_attr(self._file["wavelength"], "definition") or "")

    def hr_flux(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Stored flux (float32) of ``rows`` (any order, repeats allowed; None: every row) on the HR pixels, for
        readers that do not rotate: a margin is only of use to a rotation, which must see it (``hr_rotator``)."""
        if rows is None:
            flux = self.flux[:]
        else:
            unique, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)  # h5py: increasing
            flux = self.flux[unique, :][inverse]
        return crop(flux, self.hr_index)

    @property
    def labels(self) -> np.ndarray:
        return self._file["labels"][:]

    @property
    def atmosphere_method(self) -> np.ndarray:
        return np.array([m.decode() if isinstance(m, bytes) else str(m) for m in self._file["atmosphere_method"][:]])

    @property
    def synthesis_seconds(self) -> np.ndarray:
        return self._file["synthesis_seconds"][:]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> GridReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
