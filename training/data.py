"""Training data: a lazy view of a grid file, the split by base spectrum, noise augmentation on the fly.

* **Split** (paper Sect. 2.1): the finished rows of the grid (the base spectra) are permuted with a
  fixed seed and cut 75 / 20 / 5 % into train / test / validation. Noisy copies are made on the fly
  from a base spectrum of one split only, so no star is on both sides; the rotated copies of one star made by
  ``spectra rotate-grid`` (rows ``c * base_rows + k``) are split together.
* **Noise**: each time a spectrum is drawn it gets fresh noise (``spectra.forward.degrade.add_noise``, paper
  Eq. 1 with S/N per Å) at an S/N drawn from the paper's 19 values (``snr_mode="paper"``) or
  log-uniformly in 10-1000 (``"continuous"``, the paper's stated next step). The network is given
  the S/N used for the noise.
* **Input mask**: the pixels of the config's ``input_mask`` (``spectra.contracts.masks``) are set to the fill by the
  model itself (``training.model.CINN.features``), so the batches here carry every pixel; the flux statistics are
  taken on masked draws (``flux_statistics(input_mask=...)``), so that a masked pixel standardises to exactly 0.
* **Standardisation**: targets are transformed (log10 T_eff, log10 v_broad, from ``spectra.schema``)
  and standardised with the training rows' mean and std; flux and log10 S/N with the mean and std
  of noisy training draws (the augmented training set, as in the paper).
* **Laziness**: rows are read from the HDF5 file per batch; grids smaller than ``cache_bytes`` are
  held in memory once (a 500-spectrum grid is 50 MB; the paper's is ~3 GB noiseless).
* **Pixels**: always the 4MOST HR pixels. Nothing is rotated here (the grid's spectra are used as stored: rotated
  grids come from ``spectra rotate-grid`` or ``training emulate-grid``); a grid stored with a wavelength margin
  (``spectra.wavegrid.hr_grid(margin)``) is cropped to the HR pixels as it is read
  (``spectra.stores.gridstore.GridReader.hr_flux``), the margin being of use only to a rotation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spectra import schema
from spectra.contracts.masks import INPUT_FILL, fill_masked
from spectra.contracts.parameters import to_network
from spectra.forward.degrade import add_noise
from spectra.stores.gridstore import GridReader
from spectra.stores.survey import PAPER_SNR

__all__ = ["SNR_RANGE", "GridData", "Split", "draw_snr", "split_rows"]

SNR_RANGE = (10.0, 1000.0)


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in ("train", "test", "val"):
            raise KeyError(f"unknown split {name!r}; choose train, test or val")
        return getattr(self, name)


def split_rows(rows: np.ndarray, fractions: tuple[float, float, float], seed: int) -> Split:
    """Permute base-spectrum rows with ``seed`` and cut them into train / test / validation."""
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions {fractions} must be >= 0 and sum to 1")
    rows = np.random.default_rng(seed).permutation(np.asarray(rows))
    n_train = round(fractions[0] * rows.size)
    n_test = round(fractions[1] * rows.size)
    return Split(np.sort(rows[:n_train]), np.sort(rows[n_train:n_train + n_test]), np.sort(rows[n_train + n_test:]))


def draw_snr(rng: np.random.Generator, n: int, mode: str) -> np.ndarray:
    if mode == "paper":
        return rng.choice(np.asarray(PAPER_SNR, dtype=float), size=n)
    if mode == "continuous":
        return np.exp(rng.uniform(np.log(SNR_RANGE[0]), np.log(SNR_RANGE[1]), size=n))
    raise ValueError(f"snr_mode must be 'paper' or 'continuous', got {mode!r}")


class GridData:
    """Targets, split and noisy batches from a grid file (see the module docstring).

    ``targets``: the parameters learned or evaluated, entries with at least "name" and "transform" (a run's recorded
    ``schema["parameters"]``, so that an evaluation reads and transforms what the run was trained for even after
    ``spectra.schema`` changed); default: the live ``spectra.schema`` targets, what a new training run is for.
    """

    def __init__(self, grid_path: str | Path, fractions=(0.75, 0.20, 0.05), split_seed: int = 0,
                 cache_bytes: int = 4 << 30, targets: Sequence[dict] | None = None):
        self.path = Path(grid_path)
        self.reader = GridReader(self.path)
        self.targets = list(targets) if targets is not None else [p.as_dict() for p in schema.TARGETS]
        names = self.reader.label_names
        missing = [t["name"] for t in self.targets if t["name"] not in names]
        if missing:
            raise ValueError(f"{self.path}: labels lack target(s) {missing}")
        self.target_names = [t["name"] for t in self.targets]
        self._columns = [names.index(n) for n in self.target_names]
        done = np.flatnonzero(self.reader.done)
        if done.size < 10:
            raise ValueError(f"{self.path}: only {done.size} finished spectra; training needs at least 10")
        self.rows = done
        base = int(self.reader.attrs.get("base_rows", 0) or 0)
        if base:  # rotated copies of one base spectrum (spectra rotate-grid) stay on one side of the split
            groups = split_rows(np.arange(base), fractions, split_seed)
            self.split = Split(*(done[np.isin(done % base, getattr(groups, k))] for k in ("train", "test", "val")))
        else:
            self.split = split_rows(done, fractions, split_seed)
        self.wavelength = self.reader.hr_wavelength
        self.pixel = float(np.median(np.diff(self.wavelength)))
        self.labels = self.reader.labels[:, self._columns]  # physical units, all rows
        transformed = self.transform(self.labels[self.split.train])
        self.x_mean, self.x_std = transformed.mean(axis=0), transformed.std(axis=0) + 1e-8
        flux_bytes = self.reader.flux.size * 4
        self._cache = self.reader.hr_flux() if flux_bytes <= cache_bytes else None
        self.grid_attrs = self.reader.attrs

    @property
    def n_pixels(self) -> int:
        return self.wavelength.size

    @property
    def n_params(self) -> int:
        return len(self.target_names)

    def transform(self, labels: np.ndarray) -> np.ndarray:
        """Physical targets (N, D) -> network space before standardisation (log10 where the targets say)."""
        return np.column_stack([to_network(labels[:, j], t["transform"]) for j, t in enumerate(self.targets)])

    def standardise(self, labels: np.ndarray) -> np.ndarray:
        return (self.transform(labels) - self.x_mean) / self.x_std

    def flux(self, rows: np.ndarray) -> np.ndarray:
        """Noiseless flux of grid rows (any order, repeats allowed) on the HR pixels, float64."""
        rows = np.asarray(rows)
        if self._cache is not None:
            return self._cache[rows].astype(float)
        return self.reader.hr_flux(rows).astype(float)

    def noisy_batch(self, rows: np.ndarray, rng: np.random.Generator, snr_mode: str,
                    snr: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(noisy flux (B, P) float32, S/N per Å (B, 1) float32, standardised targets (B, 13) float32)."""
        clean = self.flux(rows)
        if snr is None:
            snr = draw_snr(rng, len(rows), snr_mode)
        noisy = add_noise(clean, snr, self.pixel, rng)
        x = self.standardise(self.labels[rows])
        return noisy.astype(np.float32), snr.reshape(-1, 1).astype(np.float32), x.astype(np.float32)

    def flux_statistics(self, snr_mode: str, seed: int, n_draws: int = 4096, input_mask: np.ndarray | None = None,
                        fill: float = INPUT_FILL) -> dict[str, np.ndarray]:
        """Mean/std of noisy training flux and of log10 S/N (the augmented training set), with the pixels of
        ``input_mask`` set to ``fill`` as the network will see them."""
        rng = np.random.default_rng([seed, 7919])
        total = np.zeros(self.n_pixels)
        total_sq = np.zeros(self.n_pixels)
        log_snr = []
        done = 0
        while done < n_draws:
            b = min(512, n_draws - done)
            rows = rng.choice(self.split.train, size=b)
            flux, snr, _ = self.noisy_batch(rows, rng, snr_mode)
            if input_mask is not None:
                flux = fill_masked(flux, input_mask, fill)
            total += flux.sum(axis=0, dtype=float)
            total_sq += (flux.astype(float) ** 2).sum(axis=0)
            log_snr.append(np.log10(snr[:, 0]))
            done += b
        mean = total / n_draws
        std = np.sqrt(np.maximum(total_sq / n_draws - mean**2, 0.0))
        log_snr = np.concatenate(log_snr)
        return {"flux_mean": mean, "flux_std": np.maximum(std, 1e-3),
                "log_snr_mean": np.array([log_snr.mean()]), "log_snr_std": np.array([log_snr.std() + 1e-8]),
                "x_mean": self.x_mean, "x_std": self.x_std}

    def close(self) -> None:
        self.reader.close()
