"""spectra: parameter schema, wavelength grids, atmospheres, synthesis, 4MOST-ification and grid I/O.

Importing the package runs nothing: ``spectra.contracts`` (the bottom layer every package imports) lives inside
it, so this file stays empty of work. ``spectra.__version__`` is the one version
(``spectra.contracts.conventions.software_version``), looked up when first asked for.
"""

from __future__ import annotations


def __getattr__(name: str) -> str:
    if name == "__version__":
        from .contracts.conventions import software_version

        return software_version()
    raise AttributeError(f"module 'spectra' has no attribute {name!r}")
