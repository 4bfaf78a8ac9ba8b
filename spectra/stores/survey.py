"""Noisy survey spectra in Zarr: the runtime's input format.

``make_survey`` turns a grid (noiseless spectra) into a survey: each base spectrum is observed at
each requested S/N per Å with the noise of paper Eq. 1 (see ``degrade``). Layout (Zarr v3)::

    flux        (N, P) float32, chunks (chunk, P)   continuum-normalised, noisy
    snr         (N,)   float32                       S/N per Å used for the noise
    source_id   (N,)   int64                         unique id (base_index * n_snr + k)
    base_index  (N,)   int64                         row of the grid the spectrum came from
    wavelength  (P,)   float64                       air, Å
    truth       (N, K) float64, attrs names          labels where known (synthetic surveys)
    attrs: format, noise model, seed, random_streams, S/N spec, grid provenance

The noise of a spectrum is drawn from its noise stream ``SeedSequence([seed, source_id, NOISE])`` and a
log-uniform S/N from its row stream (``spectra.contracts.streams``): it does not depend on chunking, and it is
independent of the posterior's latent draws for the same (seed, source_id), which have a stream of their own. Written
chunk by chunk: the grid is never loaded whole.

Pixels: a survey holds the 4MOST HR pixels, those a model bundle works on. A grid stored with a wavelength margin
(``spectra.wavegrid.hr_grid(margin)``) is cropped to them (``GridReader.hr_flux``): the margin is only of use to a
rotation, and ``make_survey`` rotates nothing (it uses the grid's flux as stored, rotated or not, as before).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from ..contracts.streams import NOISE, ROW, check_seed, scheme, stream_rng
from ..contracts.survey import check_flux_chunk
from ..forward.continuum import ContinuumOptions, normalise
from ..forward.degrade import add_noise
from ..wavegrid import wavelength_sha256
from .gridstore import GridReader

__all__ = ["PAPER_SNR", "SURVEY_FORMAT", "SnrSpec", "make_survey", "parse_snr"]

#: The paper's 19 discrete S/N values per Å (Sect. 2.1).
PAPER_SNR = (10, 12, 14, 16, 18, 20, 23, 26, 30, 35, 40, 45, 50, 80, 100, 130, 180, 250, 1000)
SURVEY_FORMAT = "cinn4most-survey/1"


@dataclass(frozen=True)
class SnrSpec:
    """Which S/N values a survey uses: a list of fixed values, or a log-uniform range per spectrum."""

    values: tuple[float, ...] = ()
    low: float | None = None
    high: float | None = None

    @property
    def per_base(self) -> int:
        return len(self.values) if self.values else 1

    def describe(self) -> str:
        if self.values:
            return "fixed:" + ",".join(f"{v:g}" for v in self.values)
        return f"log-uniform:{self.low:g}-{self.high:g}"

    def draw(self, k: int, rng: np.random.Generator) -> float:
        if self.values:
            return float(self.values[k])
        return float(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))


def parse_snr(text: str) -> SnrSpec:
    """``250``, ``50,100,250``, ``paper`` (the 19 values) or ``10-1000`` (log-uniform per spectrum)."""
    text = str(text).strip().lower()
    try:
        if text == "paper":
            return SnrSpec(values=tuple(float(v) for v in PAPER_SNR))
        if "-" in text.lstrip("-"):
            low, high = (float(x) for x in text.split("-"))
            if not 0 < low < high:
                raise ValueError
            return SnrSpec(low=low, high=high)
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--snr {text!r}: expected a number, a comma list, 'paper' or a range LOW-HIGH") from None
    if any(not (v > 0 and np.isfinite(v)) for v in values):
        raise ValueError(f"--snr {text!r}: S/N values must be positive")
    return SnrSpec(values=values)


def make_survey(grid_path: str | Path, snr: SnrSpec, out: str | Path, seed: int = 0, chunk: int = 256,
                progress: bool = True, continuum: ContinuumOptions | None = None, overwrite: bool = False) -> Path:
    """Write a noisy Zarr survey from a grid; returns the output path.

    ``continuum``: if given, each noisy spectrum is divided by its fitted pseudo-continuum
    (``spectra.forward.continuum``), as observed spectra are at ingestion; otherwise spectra keep the true
    continuum normalisation of the synthesis. Recorded in the ``continuum`` attribute. An existing ``out``
    is replaced only with ``overwrite`` and only if it is a survey (``spectra.common.outputs``).
    """
    from ..common.outputs import claim_output

    out = Path(out)
    if chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {chunk}")
    seed = check_seed(seed, "--seed")
    if not Path(grid_path).is_file():
        raise FileNotFoundError(f"grid {grid_path} not found")
    with GridReader(grid_path) as grid:
        base_rows = np.flatnonzero(grid.done)
        if base_rows.size == 0:
            raise ValueError(f"{grid_path}: the grid has no finished rows")
        wave = grid.hr_wavelength  # the stored pixels, less a margin if the grid has one
        check_flux_chunk(chunk, wave.size)  # a survey runtime process would refuse is not written
        claim_output(out, "survey", (SURVEY_FORMAT,), overwrite=overwrite)
        pixel = float(np.median(np.diff(wave)))
        labels = grid.labels
        n_snr = snr.per_base
        n = base_rows.size * n_snr
        root = zarr.open_group(str(out), mode="w")
        flux = root.create_array("flux", shape=(n, wave.size), chunks=(chunk, wave.size), dtype="f4")
        snr_arr = root.create_array("snr", shape=(n,), chunks=(chunk,), dtype="f4")
        sid = root.create_array("source_id", shape=(n,), chunks=(chunk,), dtype="i8")
        base = root.create_array("base_index", shape=(n,), chunks=(chunk,), dtype="i8")
        truth = root.create_array("truth", shape=(n, labels.shape[1]), chunks=(chunk, labels.shape[1]), dtype="f8")
        root.create_array("wavelength", data=wave)
        root["wavelength"].attrs.update(medium="air", unit="Angstrom", sha256=grid.attrs.get("wavelength_sha256", "")
                                        if grid.hr_index is None else wavelength_sha256(wave))
        if grid.hr_index is not None:
            root["wavelength"].attrs["cropped"] = f"the 4MOST HR pixels of a grid stored on {grid.wavelength.size}"
        truth.attrs["names"] = grid.label_names
        flux.attrs["unit"] = "pseudo-continuum normalised" if continuum else "continuum-normalised"
        snr_arr.attrs["unit"] = "per Angstrom"
        root.attrs.update(
            format=SURVEY_FORMAT,
            noise_model="Gaussian, sigma_i = f_i / (S/N_A * sqrt(pixel_width_A)) (Ksoll+2026 Eq. 1, per-A S/N)",
            snr=snr.describe(),
            continuum=continuum.describe() if continuum else "true continuum (synthesis)",
            continuum_kind="pseudo" if continuum else "true",
            seed=seed,
            random_streams=scheme(),
            grid=str(Path(grid_path).resolve()),
            grid_attrs={k: v for k, v in grid.attrs.items() if isinstance(v, (str, int, float, bool))},
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        bar = tqdm(total=n, desc=f"survey {out.name}", unit="spec", disable=not progress)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            rows = np.arange(start, stop)
            grid_rows = base_rows[rows // n_snr]
            clean = grid.hr_flux(grid_rows)
            ids = grid_rows * n_snr + rows % n_snr
            noisy = np.empty_like(clean)
            snrs = np.empty(rows.size)
            for j, (source_id, k) in enumerate(zip(ids, rows % n_snr, strict=True)):
                snrs[j] = snr.draw(int(k), stream_rng(seed, source_id, ROW))
                noisy[j] = add_noise(clean[j].astype(float), snrs[j], pixel, stream_rng(seed, source_id, NOISE))
                if continuum is not None:
                    noisy[j] = normalise(wave, noisy[j], continuum)
            flux[start:stop] = noisy
            snr_arr[start:stop] = snrs
            sid[start:stop] = ids
            base[start:stop] = grid_rows
            truth[start:stop] = labels[grid_rows]
            bar.update(stop - start)
        bar.close()
    return out
