"""Wavelength grids and the air/vacuum convention.

Conventions (one place, used everywhere):

* **All grids we store are in air wavelengths** (Å), as observed spectra and the 4MOST pipeline
  products are. Line lists may be in vacuum (VALD) or air (MOOG-style lists); ``linelists``
  converts everything to vacuum for PySME, and ``synthesis`` converts the synthetic spectrum's
  wavelength axis back to air before any resampling.
* Air <-> vacuum uses the IAU standard formula of Morton (2000, ApJS 130, 403; Ciddor 1996
  dispersion), in the form VALD documents; the inverse is N. Piskunov's fit, also from VALD.
  The round trip is exact to < 1e-5 Å over 3000-10000 Å.

The **4MOST HR pixel grid** (``hr_grid``): two windows, green [5160, 5730) Å and red
[6100, 6790) Å (air), pixels of exactly 0.05 Å whose centres sit at ``start + (i + 0.5) * 0.05``,
i.e. pixel edges on the round window limits. That gives 11 400 + 13 800 = 25 200 pixels. The
paper quotes 25 197 bins: its grid came from the 4FS ETC, whose exact arm edges are not
published; ours differs from it by 3 pixels at the window ends.

The **working grid** (``working_grid``): the paper's intermediate product, R = 80 000 spectra
on 0.025 Å pixels (air), covering each HR window padded by ``WORKING_PAD`` Å so that later
convolutions (rotation up to 100 km/s = 2.2 Å, R = 20 000) have no edge effects inside the windows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .contracts.conventions import HR_PIXEL

__all__ = [
    "GRID_MARGIN",
    "HR_PIXEL",
    "HR_WINDOWS",
    "WORKING_PAD",
    "WORKING_PIXEL",
    "WavelengthGrid",
    "air_to_vacuum",
    "hr_grid",
    "hr_grid_of",
    "hr_pixels",
    "vacuum_to_air",
    "wavelength_sha256",
    "working_grid",
]

#: 4MOST HR windows used by the network (air, Å): (name, start, end), end exclusive.
HR_WINDOWS: tuple[tuple[str, float, float], ...] = (("green", 5160.0, 5730.0), ("red", 6100.0, 6790.0))
WORKING_PIXEL = 0.025  # Å
WORKING_PAD = 5.0  # Å on each side of each window
#: Å of spectrum stored beyond each HR window edge in synthesised grids (rotation at 100 km/s reaches 2.2 Å)
GRID_MARGIN = 2.0
WORKING_RESOLUTION = 80_000
HR_RESOLUTION = 20_000


def vacuum_to_air(wave_vac: np.ndarray | float) -> np.ndarray:
    """Vacuum -> air wavelength (Å), Morton (2000) / VALD. Valid above 2000 Å."""
    wave_vac = np.asarray(wave_vac, dtype=float)
    s2 = (1e4 / wave_vac) ** 2
    n = 1.0 + 0.0000834254 + 0.02406147 / (130.0 - s2) + 0.00015998 / (38.9 - s2)
    return wave_vac / n


def air_to_vacuum(wave_air: np.ndarray | float) -> np.ndarray:
    """Air -> vacuum wavelength (Å), N. Piskunov's inverse of Morton (2000), as used by VALD."""
    wave_air = np.asarray(wave_air, dtype=float)
    s2 = (1e4 / wave_air) ** 2
    n = (
        1.0
        + 0.00008336624212083
        + 0.02408926869968 / (130.1065924522 - s2)
        + 0.0001599740894897 / (38.92568793293 - s2)
    )
    return wave_air * n


def wavelength_sha256(wave: np.ndarray) -> str:
    """Hash of pixel centres rounded to 1e-6 Å: identifies a pixel grid in grid files and model bundles."""
    return hashlib.sha256(np.round(np.asarray(wave, dtype=float), 6).astype("<f8").tobytes()).hexdigest()


@dataclass(frozen=True)
class WavelengthGrid:
    """A piecewise-uniform wavelength grid (air, Å) made of named windows.

    ``segments[k]`` is the slice of ``wave`` belonging to window ``k``.
    """

    name: str
    wave: np.ndarray
    segments: tuple[slice, ...]
    window_names: tuple[str, ...]
    step: float
    definition: str

    @property
    def size(self) -> int:
        return self.wave.size

    def window(self, name: str) -> slice:
        return self.segments[self.window_names.index(name)]

    def sha256(self) -> str:
        return wavelength_sha256(self.wave)


def _build(name: str, step: float, pad: float, centred: bool, definition: str) -> WavelengthGrid:
    pieces, segments, start_index = [], [], 0
    for _, lo, hi in HR_WINDOWS:
        lo, hi = lo - pad, hi + pad
        n = round((hi - lo) / step)
        offset = 0.5 if centred else 0.0
        pieces.append(lo + (np.arange(n) + offset) * step)
        segments.append(slice(start_index, start_index + n))
        start_index += n
    return WavelengthGrid(
        name=name,
        wave=np.concatenate(pieces),
        segments=tuple(segments),
        window_names=tuple(w[0] for w in HR_WINDOWS),
        step=step,
        definition=definition,
    )


def hr_grid(margin: float = 0.0) -> WavelengthGrid:
    """The 4MOST HR pixel grid the network works on (25 200 pixels, air).

    ``margin`` [Å, a multiple of the 0.05 Å pixel] extends each window on both sides with more pixels of the same
    spacing (the HR pixels are an exact subset, :func:`hr_pixels`): synthesised grids are stored with
    :data:`GRID_MARGIN` so that rotation applied later on the fly sees real spectrum beyond each window edge.
    """
    steps = margin / HR_PIXEL
    if margin < 0 or abs(steps - round(steps)) > 1e-9:
        raise ValueError(f"HR grid margin must be a non-negative multiple of {HR_PIXEL} A, got {margin}")
    if margin == 0:
        return _build("4MOST-HR-green+red", HR_PIXEL, 0.0, True,
                      "air wavelengths; windows [5160,5730) and [6100,6790) A; 0.05 A pixels, centres at "
                      "start+(i+0.5)*0.05")
    return _build(f"4MOST-HR-green+red+margin{margin:g}A", HR_PIXEL, margin, True,
                  f"air wavelengths; windows [5160,5730) and [6100,6790) A each extended by {margin:g} A on both "
                  "sides; 0.05 A pixels, centres at start+(i+0.5)*0.05")


def hr_grid_of(wave: np.ndarray) -> WavelengthGrid:
    """The HR grid (with whatever margin) whose pixels are ``wave``; ValueError if it is not one."""
    wave = np.asarray(wave, dtype=float)
    margin = round(float(HR_WINDOWS[0][1] + HR_PIXEL / 2 - wave[0]) / HR_PIXEL) * HR_PIXEL if wave.size else -1.0
    try:
        grid = hr_grid(round(margin, 6))
    except ValueError:
        grid = None
    if grid is None or grid.sha256() != wavelength_sha256(wave):
        raise ValueError(f"a wavelength array of {wave.size} pixels from {wave[:1]} A is not the 4MOST HR grid "
                         "(with or without a margin)")
    return grid


def hr_pixels(grid: WavelengthGrid) -> np.ndarray:
    """Indices of the 4MOST HR pixels (``hr_grid()``) within ``grid`` (an HR grid with a margin)."""
    hr = hr_grid()
    index = np.rint((hr.wave[:, None] - grid.wave[None, [s.start for s in grid.segments]]) / HR_PIXEL)
    out = np.empty(hr.size, dtype=np.int64)
    for k, (s_hr, s_grid) in enumerate(zip(hr.segments, grid.segments, strict=True)):
        out[s_hr] = s_grid.start + index[s_hr, k].astype(np.int64)
    if not np.allclose(grid.wave[out], hr.wave, atol=1e-6):
        raise ValueError(f"{grid.name} does not contain the 4MOST HR pixels")
    return out


def working_grid() -> WavelengthGrid:
    """The R = 80 000, 0.025 Å working grid (air), each window padded by ``WORKING_PAD`` Å."""
    return _build(
        "R80000-0.025A",
        WORKING_PIXEL,
        WORKING_PAD,
        False,
        f"air wavelengths; windows padded by {WORKING_PAD} A; 0.025 A pixels at start+i*0.025",
    )
