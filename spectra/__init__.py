"""spectra: parameter schema, wavelength grids, atmospheres, synthesis, 4MOST-ification and grid I/O."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cinn4most")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+src"
