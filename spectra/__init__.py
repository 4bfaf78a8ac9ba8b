"""spectra: everything about spectra, from a parameter vector to a survey store.

At the top, what every stage agrees on: ``schema`` (parameters), ``wavegrid`` (wavelength grids) and ``prior``; the
command line (``cli``) and quick-look ``plots``. Sub-packages by job: ``contracts`` (the contracts every package
shares), ``common`` (generic helpers of every command), ``synth`` (synthesis of training grids), ``forward`` (the
forward model, 4MOST-ification), ``stores`` (grid and survey stores, the survey reader) and ``observed`` (observed
spectra -> the training's form).

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
