"""Simulated surveys: any number of noisy spectra generated on the fly from a grid, for survey-scale runs.

A survey of 4 million spectra x 25 200 pixels is 400 GB, more than our machines hold. ``spectra simulate``
writes a small JSON file instead::

    {"format": "cinn4most-simulated-survey/1", "grid": "/abs/grid.h5", "grid_sha256": "...", "n": 4000000,
     "snr": "fixed:10,...,1000", "seed": 0, "chunk": 4096, "random_streams": {"version": 2, ...}}

and :class:`SimulatedSurvey` (read through ``spectra.stores.survey_reader.open_survey``, the same interface as a Zarr
survey) generates row i when it is read: ``source_id`` = i; from its row stream ``SeedSequence([seed, i, ROW])``
(``spectra.contracts.streams``) it picks the base spectrum among the grid's finished rows, then the S/N (the fixed
values in turn by ``i``, or a log-uniform draw); from its noise stream ``SeedSequence([seed, i, NOISE])`` it adds
Gaussian noise of ``spectra.forward.degrade.noise_sigma`` (paper Eq. 1), drawn in float32 (half the cost of float64; a
simulated survey is for scale, ``spectra survey`` for accuracy). A row therefore depends on (seed, source_id)
only: any reader, chunking or worker count sees the same spectra; and the posterior's latent draws for the same
(seed, source_id) come from a third stream, so they are not this noise shifted by a few elements.

The rows a description denotes depend on the stream scheme, so the description records it
(``random_streams``) and a description without it (written before scheme version 2) is refused rather than
read as different spectra under the same name: write it again with ``spectra simulate``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..common.hashing import sha256_file
from ..contracts.streams import NOISE, ROW, check_seed, scheme, stream_rng
from ..contracts.survey import MAX_ROWS, SIMULATED_FORMAT, RowBlock, SurveyReader
from ..forward.degrade import noise_sigma
from .gridstore import GridReader
from .survey import SnrSpec, parse_snr

__all__ = ["SimulatedSurvey", "write_simulated_survey"]

_GRIDS: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def write_simulated_survey(grid: str | Path, n: int, snr: str, out: str | Path, seed: int = 0, chunk: int = 4096,
                           overwrite: bool = False) -> Path:
    """The JSON description of an ``n``-row simulated survey of ``grid`` at ``snr`` (``parse_snr`` syntax)."""
    from ..common.outputs import claim_output

    grid, out = Path(grid).resolve(), Path(out)
    if n < 1 or chunk < 1:
        raise ValueError(f"--n and --chunk must be >= 1, got {n} and {chunk}")
    if n > MAX_ROWS:
        raise ValueError(f"--n {n}: more than the {MAX_ROWS} rows a survey may hold "
                         "(spectra.contracts.survey.MAX_ROWS)")
    if out.suffix.lower() != ".json":
        raise ValueError(f"{out}: a simulated survey is a .json file")
    spec = parse_snr(snr)
    seed = check_seed(seed, "--seed")
    with GridReader(grid) as reader:
        if not reader.done.any():
            raise ValueError(f"{grid}: the grid has no finished rows")
    claim_output(out, "simulated survey", overwrite=overwrite)
    description = {"format": SIMULATED_FORMAT, "grid": str(grid), "grid_sha256": sha256_file(grid), "n": int(n),
                   "snr": spec.describe(), "seed": int(seed), "chunk": int(chunk),
                   "noise_model": "Gaussian, sigma_i = f_i / (S/N_A * sqrt(pixel_width_A)) (Ksoll+2026 Eq. 1)",
                   "continuum": "true continuum (synthesis)", "continuum_kind": "true",
                   "random_streams": scheme()}
    out.write_text(json.dumps(description, indent=1))
    return out


def _snr_spec(text: str) -> SnrSpec:
    kind, _, values = text.partition(":")
    if kind == "fixed":
        return SnrSpec(values=tuple(float(v) for v in values.split(",")))
    low, high = (float(v) for v in values.split("-"))
    return SnrSpec(low=low, high=high)


def _checked_numbers(path: Path, spec: dict) -> tuple[int, int, int]:
    """(n, chunk, seed) of a description, refused out of range before anything is sized by them (``source_ids``
    allocates n ids; the seed seeds every row's streams)."""
    values = {}
    for key, low, high in (("n", 0, MAX_ROWS), ("chunk", 1, 2**31), ("seed", 0, 2**32 - 1)):
        value = spec[key]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{path}: {key} {value!r}, expected an integer in [{low}, {high}]")
        values[key] = value
    return values["n"], values["chunk"], values["seed"]


class SimulatedSurvey(SurveyReader):
    """Rows generated from a grid on reading (see the module docstring)."""

    def __init__(self, path: str | Path, spec: dict):
        self.path = Path(path)
        for key in ("grid", "grid_sha256", "n", "snr", "seed", "chunk"):
            if key not in spec:
                raise ValueError(f"{self.path}: simulated survey lacks {key!r}")
        streams = spec.get("random_streams")
        if streams != scheme():
            made = "before random streams were recorded (version 1)" if streams is None else f"with {streams!r}"
            raise ValueError(f"{self.path}: described {made}; this software generates rows with random-stream "
                             f"scheme version {scheme()['version']}, which gives other spectra: write the description "
                             "again with `spectra simulate`")
        self.spec = spec
        self.grid_path = Path(spec["grid"])
        if not self.grid_path.is_file():
            raise FileNotFoundError(f"{self.path}: its grid {self.grid_path} is not there")
        self.n, self.chunk, self.seed = _checked_numbers(self.path, spec)
        self.snr = _snr_spec(spec["snr"])
        self.flux, self.labels, self.base_rows, self.wavelength = self._grid()
        self.pixel = float(np.median(np.diff(self.wavelength)))
        self.attrs = {k: v for k, v in spec.items() if k != "format"} | {"kind": "simulated"}

    def _grid(self):
        key = str(self.grid_path)
        if key not in _GRIDS:  # once per process: the grid's finished rows in memory (small grids)
            if sha256_file(self.grid_path) != self.spec["grid_sha256"]:
                raise ValueError(f"{self.path}: the grid {self.grid_path} changed since the survey was described")
            with GridReader(self.grid_path) as grid:
                rows = np.flatnonzero(grid.done)
                # the HR pixels a bundle works on: a margin (grids stored for rotation) is cropped, nothing rotated
                flux = grid.hr_flux(rows).astype(np.float32)
                _GRIDS[key] = (flux, grid.labels[rows], rows, grid.hr_wavelength)
        return _GRIDS[key]

    def has(self, name: str) -> bool:
        return name in ("flux", "snr", "source_id", "wavelength", "truth", "base_index")

    def _base(self, source_id: int) -> tuple[int, np.random.Generator]:
        """The row's base spectrum (index into the finished rows) and its row stream, positioned for the S/N."""
        rng = stream_rng(self.seed, source_id, ROW)
        return int(rng.integers(self.base_rows.size)), rng

    def draw(self, source_id: int) -> tuple[int, float, np.ndarray]:
        """(base index into the grid's finished rows, S/N per Å, noisy flux) of one row."""
        base, rng = self._base(source_id)
        snr = self.snr.draw(int(source_id) % self.snr.per_base, rng)
        clean = self.flux[base]
        sigma = noise_sigma(clean, snr, self.pixel).astype(np.float32)
        noise = stream_rng(self.seed, source_id, NOISE).standard_normal(clean.size, dtype=np.float32)
        return base, snr, clean + sigma * noise

    def read_rows(self, start: int, stop: int) -> RowBlock:
        if not 0 <= start <= stop <= self.n:
            raise IndexError(f"rows {start}-{stop} outside the survey's {self.n}")
        flux = np.empty((stop - start, self.wavelength.size), dtype=np.float32)
        snr = np.empty(stop - start)
        for j, sid in enumerate(range(start, stop)):
            _, snr[j], flux[j] = self.draw(sid)
        return RowBlock(start, stop, flux, snr, np.arange(start, stop, dtype=np.int64))

    def truth(self, start: int, stop: int) -> np.ndarray:
        """Labels (rows, K) of the base spectra of rows [start, stop)."""
        return np.stack([self.labels[self._base(sid)[0]] for sid in range(start, stop)])

    def source_ids(self) -> tuple[np.ndarray, list[str]]:
        return np.arange(self.n, dtype=np.int64), []

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode()).hexdigest()
