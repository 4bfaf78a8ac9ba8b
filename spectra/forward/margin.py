"""Grids stored with a wavelength margin: which stored pixels are the 4MOST HR ones.

Unrotated grids are synthesised on ``spectra.wavegrid.hr_grid(GRID_MARGIN)``, each HR window extended by 2 Å on
both sides, so that rotation applied later on the fly (``spectra.forward.rotation``) sees real spectrum beyond
the window edges instead of a repeated edge value. Everything after the rotation (noise, continuum
normalisation, the network, a bundle's pixel grid) works on the 25 200 HR pixels, so every reader of grid flux
crops: after rotating where it rotates, at once where it does not. This module is the one place that says what
to crop, so that all readers agree and grids without a margin pass through untouched (bit-identical).
"""

from __future__ import annotations

import numpy as np

from ..wavegrid import hr_grid, hr_grid_of, hr_pixels

__all__ = ["crop", "hr_index"]


def hr_index(wave: np.ndarray) -> np.ndarray | None:
    """Indices of the 4MOST HR pixels among stored pixels ``wave``; None when there is nothing to crop.

    None for the HR grid itself and for pixels that are no HR grid at all: such grids are used as stored, as
    before margins existed (readers that need the HR grid check that themselves, e.g. by rotating on it).
    """
    try:
        grid = hr_grid_of(wave)
    except ValueError:
        return None
    return None if grid.size == hr_grid().size else hr_pixels(grid)


def crop(flux: np.ndarray, index: np.ndarray | None) -> np.ndarray:
    """``flux`` (..., P stored) on the HR pixels; ``flux`` itself, not a copy, when ``index`` is None (no margin)."""
    return flux if index is None else flux[..., index]
