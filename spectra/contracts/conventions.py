"""Conventions every package must agree on: continuum normalisation, the v_broad prior, the software version.

*Continuum.* A grid, survey or model is normalised either by the true (synthesised) continuum or by a fitted
pseudo-continuum (``spectra.forward.continuum``: a clipped cubic spline with knots every :data:`KNOT_SPACING` Å). The
two must not be mixed between training and use; :func:`continuum_kind` reads which one a file's attributes record.
The re-simulation check matches a model spectrum to the input's continuum on the same scale.

*v_broad prior.* Log-uniform from 1 km/s to :data:`VBROAD_MAX`, capped at :data:`VBROAD_MAX_METAL_POOR` below
[Fe/H] = :data:`VBROAD_CAP_FEH` (metal-poor stars are old and rotate slowly): the grid prior, the fresh rotations
of the training stream and imported grids (``spectra import-tsfitpy --vbroad prior``) all draw from
:func:`vbroad_from_uniform`.

*Version.* :func:`software_version`, the installed package's version, recorded in grids, runs and catalogues.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import numpy as np

__all__ = [
    "CONTINUUM_KINDS",
    "HR_PIXEL",
    "KNOT_SPACING",
    "PSEUDO_CONTINUUM",
    "VBROAD_CAP_FEH",
    "VBROAD_MAX",
    "VBROAD_MAX_METAL_POOR",
    "continuum_kind",
    "software_version",
    "vbroad_from_uniform",
    "vbroad_max",
]

#: continuum conventions a grid, survey or model can have
CONTINUUM_KINDS: tuple[str, ...] = ("true", "pseudo")
#: how a pseudo-continuum normalisation is described in attributes (``continuum``, ``flux.unit``): the prefix
#: :func:`continuum_kind` recognises
PSEUDO_CONTINUUM = "pseudo-continuum"
#: Å, the 4MOST HR pixel of every grid, survey and bundle (``spectra.wavegrid`` builds the grids from it; a margin
#: beyond the windows is a whole number of pixels, which the bundle checks of an emulator's)
HR_PIXEL = 0.05

#: Å between the pseudo-continuum spline's knots; also the scale of the re-simulation check's continuum match
KNOT_SPACING = 40.0

#: km/s, the largest v_broad of the prior (the training bound of ``vbroad``)
VBROAD_MAX = 100.0
#: km/s, the largest v_broad of the prior for metal-poor stars ...
VBROAD_MAX_METAL_POOR = 30.0
#: ... those with [Fe/H] at or below this
VBROAD_CAP_FEH = -2.0


def continuum_kind(attrs: Mapping) -> str:
    """``pseudo`` or ``true``: how the spectra of a grid or survey with these attributes are normalised.

    Surveys record ``continuum_kind``; grids from ``normalise-grid``, surveys made with ``--continuum pseudo``
    and ingested spectra record a ``continuum`` description starting with "pseudo-continuum"; synthetic
    spectra without one are divided by the true (synthesised) continuum.
    """
    if attrs.get("continuum_kind") in CONTINUUM_KINDS:
        return str(attrs["continuum_kind"])
    text = str(attrs.get("continuum", "") or "")
    return "pseudo" if text.startswith("pseudo") else "true"


def vbroad_max(feh: np.ndarray | float) -> np.ndarray:
    """The prior's largest v_broad [km/s] at [Fe/H] ``feh``: :data:`VBROAD_MAX`, :data:`VBROAD_MAX_METAL_POOR`
    at or below :data:`VBROAD_CAP_FEH`."""
    return np.where(np.asarray(feh) > VBROAD_CAP_FEH, VBROAD_MAX, VBROAD_MAX_METAL_POOR)


def vbroad_from_uniform(u: np.ndarray | float, feh: np.ndarray | float) -> np.ndarray:
    """v_broad [km/s] for uniform deviates ``u`` in [0, 1): log-uniform from 1 km/s to :func:`vbroad_max`."""
    return 10.0 ** (np.log10(vbroad_max(feh)) * np.asarray(u))


@cache
def software_version() -> str:
    """The installed cinn4most version, ``0.0.0+src`` when running from a source tree. Looked up on first use
    (importlib.metadata scans the installed distributions), so importing this module costs nothing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cinn4most")
    except PackageNotFoundError:
        return "0.0.0+src"
