"""Quick-look plots of grid and survey spectra (matplotlib, written to PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_spectra"]


def _describe(names: list[str], labels: np.ndarray) -> str:
    value = dict(zip(names, labels, strict=True))
    return (f"T_eff {value['teff']:.0f} K, log g {value['logg']:.2f}, [Fe/H] {value['fe_h']:+.2f}, "
            f"v_broad {value['vbroad']:.1f} km/s")


def plot_spectra(wave: np.ndarray, fluxes: np.ndarray, captions: list[str], out: str | Path,
                 zoom: tuple[float, float] | None = None, title: str = "") -> Path:
    """One panel per HR window (or one zoomed panel), spectra offset vertically with captions."""
    windows = [zoom] if zoom else [(5160.0, 5730.0), (6100.0, 6790.0)]
    fig, axes = plt.subplots(len(windows), 1, figsize=(12, 3.2 * len(windows) + 0.8 * len(captions)), squeeze=False)
    for ax, (lo, hi) in zip(axes[:, 0], windows, strict=True):
        sel = (wave >= lo) & (wave <= hi)
        for k, (flux, caption) in enumerate(zip(fluxes, captions, strict=True)):
            offset = 0.6 * k
            ax.plot(wave[sel], flux[sel] + offset, lw=0.6)
            ax.text(lo, 1.05 + offset, caption, fontsize=8)
        ax.set_xlim(lo, hi)
        ax.set_xlabel("air wavelength [Å]")
        ax.set_ylabel("normalised flux + offset")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_grid_rows(grid_path: str | Path, rows: list[int], out: str | Path, zoom=None) -> Path:
    from .stores.gridstore import GridReader

    with GridReader(grid_path) as grid:
        bad = [r for r in rows if not 0 <= r < grid.n]
        if bad:
            raise ValueError(f"{grid_path}: rows {bad} do not exist (the grid has {grid.n})")
        # the HR pixels, as a survey made from the grid has them (a margin is only there for the rotation)
        fluxes = grid.hr_flux(np.asarray(rows, dtype=np.int64))
        labels = grid.labels
        captions = [f"row {r}: " + _describe(grid.label_names, labels[r]) for r in rows]
        return plot_spectra(grid.hr_wavelength, fluxes, captions, out, zoom, f"{Path(grid_path).name} (noiseless)")


def plot_survey_rows(survey_path: str | Path, rows: list[int], out: str | Path, zoom=None) -> Path:
    import zarr

    root = zarr.open_group(str(survey_path), mode="r")
    n = root["flux"].shape[0]
    bad = [r for r in rows if not 0 <= r < n]
    if bad:
        raise ValueError(f"{survey_path}: rows {bad} do not exist (the survey has {n})")
    fluxes = np.array([root["flux"][r] for r in rows])
    snr, ids = root["snr"][:], root["source_id"][:]
    captions = [f"source_id {ids[r]}: S/N {snr[r]:.0f} per Å" for r in rows]
    return plot_spectra(root["wavelength"][:], fluxes, captions, out, zoom, f"{Path(survey_path).name}")
