"""The Python API: from a spectrum file to catalogue rows and posteriors in a notebook.

::

    from runtime import load_model, prepare, read_spectrum

    spectrum = prepare(read_spectrum("star.fits"))        # RV, resolution, HR pixels, pseudo-continuum, S/N
    model = load_model()                                  # the packaged default model (or load_model("bundle/"))
    row = model.infer(spectrum, samples=4096)             # astropy Table, exactly the catalogue's columns and flags
    post = model.posterior(spectrum)                      # samples (physical units) and log densities
    post.corner(["teff", "logg", "fe_h"]).savefig("star.png")

``Model.infer`` runs :func:`runtime.inference.catalogue_rows`, the computation ``runtime process`` runs for every
survey row (flux and S/N checks, the trained S/N range and ``snr_cap``, the re-simulation check, the bias
correction, the flags), so a notebook and a survey run give the same row for the same spectrum, seed and source id:
a spectrum's posterior depends on (seed, source_id) only. ``read_spectrum`` and ``prepare`` are ``spectra
ingest``'s reader and preparation (``spectra.observed.readers``, ``spectra.observed.ingest``), one spectrum at a time.

Bad input is a one-line ``ValueError`` naming the argument and what was expected.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from catalog.schema import PROVENANCE_COLUMNS, Column, catalogue_columns
from spectra.contracts.quantiles import QUANTILES
from spectra.contracts.streams import check_index, check_seed
from spectra.contracts.streams import scheme as random_stream_scheme

from .bundle import Bundle, load_bundle
from .inference import InferenceSettings, catalogue_rows, check_samples, network_input, validate_flux
from .intervals import rescale_about

if TYPE_CHECKING:
    from astropy.table import Table
    from matplotlib.figure import Figure

    from spectra.observed.ingest import PreparedSpectrum
    from spectra.observed.readers import ObservedSpectrum

    from .resim import Resimulator
    from .sampler import OnnxPosterior

__all__ = ["Model", "Posterior", "load_model", "prepare", "read_spectrum"]

#: PreparedSpectrum attribute behind each carried catalogue column (``catalog.schema.PROVENANCE_COLUMNS``)
_PREPARED_ATTRIBUTES = {"file": "source", "object": "object", "instrument": "instrument", "rv": "rv",
                        "rv_error": "rv_error", "input_resolution": "input_resolution", "coverage": "coverage",
                        "ra": "ra", "dec": "dec", "mjd": "mjd", "message": "message"}


def read_spectrum(path: str | Path, row: int | None = None, fmt: str | None = None,
                  wave_unit: str | None = None) -> ObservedSpectrum:
    """One spectrum from a FITS or ASCII file, as ``spectra ingest`` reads it (``spectra.observed.readers``: format by
    content, units, air/vacuum, object, instrument, resolving power, RA/Dec/MJD from the header). A file holding several
    spectra (a 4MOST L1 table) needs ``row``. Nothing is resampled or normalised yet: that is :func:`prepare`."""
    from spectra.observed.readers import read_spectra

    spectra = read_spectra(path, fmt, wave_unit)
    if row is None:
        if len(spectra) > 1:
            raise ValueError(f"{path} holds {len(spectra)} spectra: give row= (0 to {len(spectra) - 1})")
        row = 0
    if isinstance(row, bool) or not isinstance(row, int | np.integer) or not 0 <= row < len(spectra):
        raise ValueError(f"row: {row!r}, expected an integer from 0 to {len(spectra) - 1} ({path} holds "
                         f"{len(spectra)} spectra)")
    return spectra[int(row)]


def prepare(spectrum: ObservedSpectrum | tuple, *, rv: float | None = None, resolution: float | None = None,
            medium: str | None = None, snr: float | None = None) -> PreparedSpectrum:
    """A spectrum on the model's pixels, as ``spectra ingest`` prepares it: air wavelengths, radial velocity (by
    cross-correlation unless ``rv`` km/s is given) and shift to rest, resolution matched to the training spectra,
    flux-conserving rebinning onto the HR pixels, pseudo-continuum normalisation, S/N per Å (error column, else
    DER_SNR, or ``snr``). Returns ``spectra.observed.ingest.PreparedSpectrum``: ``flux``, ``snr``, ``flags`` (ingest
    bits), ``message`` (a note per flag), RV, coverage, RA/Dec/MJD.

    ``spectrum``: what :func:`read_spectrum` returns, or arrays ``(wave, flux)`` / ``(wave, flux, ivar)`` with the
    wavelength in Å (``medium`` air unless told; arrays carry no resolving power, so give ``resolution``). A
    spectrum that cannot be prepared raises ValueError with the reason ``spectra ingest`` would record."""
    from spectra.observed.ingest import IngestFlag, IngestOptions
    from spectra.observed.ingest import prepare as ingest_prepare

    if medium not in (None, "air", "vacuum"):
        raise ValueError(f"medium: {medium!r}, expected 'air' or 'vacuum'")
    observed = spectrum if not isinstance(spectrum, tuple | list) else _from_arrays(spectrum, medium)
    result = ingest_prepare(observed, IngestOptions(medium=medium, rv=rv, resolution=resolution, snr=snr))
    if result.flags & IngestFlag.READ_FAILED:
        raise ValueError(f"{result.source}: {result.message}")
    return result


def _from_arrays(arrays: tuple | list, medium: str | None) -> ObservedSpectrum:
    """An ``ObservedSpectrum`` from (wave, flux[, ivar]), checked as the readers check a file's arrays."""
    from spectra.observed.readers import ObservedSpectrum, _check_arrays

    if len(arrays) not in (2, 3):
        raise ValueError(f"spectrum: a tuple of {len(arrays)} arrays, expected (wave, flux) or (wave, flux, ivar)")
    error = None
    if len(arrays) == 3:
        ivar = np.asarray(arrays[2], dtype=float)
        error = np.where(ivar > 0, 1.0 / np.sqrt(np.where(ivar > 0, ivar, 1.0)), np.nan)
    wave, flux, error = _check_arrays("spectrum", arrays[0], arrays[1], error, "arrays")
    return ObservedSpectrum(wave=wave, flux=flux, error=error, source="arrays", medium=medium or "air",
                            medium_from_header=medium is not None, resolution_source="arrays do not state it")


def load_model(bundle: str | Path | None = None, *, precision: str = "auto", device: str = "auto",
               engine: str = "auto", threads: int = 0, force_precision: bool = False) -> Model:
    """A model bundle ready to infer: ``bundle`` None is the packaged default model (``runtime.packaged``).
    ``precision``, ``device`` and ``engine`` as ``runtime process --precision/--device/--engine`` (auto: the verified
    reduced-precision variant where one fits the device, else fp32; CUDA if present, else the CPU, said on stderr
    when a GPU seems present but unusable; OpenVINO bf16 on CPUs with bf16 units, see ``runtime.precision``)."""
    from .packaged import default_bundle
    from .precision import choose_engine
    from .sessions import resolve_providers

    path = Path(bundle) if bundle is not None else default_bundle()
    loaded = load_bundle(path)
    resolved, _ = resolve_providers(device, notify=lambda message: print(f"load_model: {message}", file=sys.stderr))
    engine, chosen = choose_engine(loaded, engine, precision, resolved, force_precision)
    return Model(loaded, resolved, chosen, threads, force_precision and chosen != "fp32", engine)


@dataclass
class Posterior:
    """One spectrum's posterior samples (physical units, the model's parameter order) and their log densities
    (network space: log N(z; 0, I) - log|det dx/dz|, the density the MAP maximises; log10 for T_eff and v_broad).
    ``valid``: samples inside the training bounds, the ones the catalogue's MAP and quantiles use.
    ``interval_scale`` (D,): the bundle's interval calibration at this S/N (``runtime.intervals``; ones without
    one): :meth:`quantiles` and :meth:`corner` spread the valid samples about their median by it, within the
    training ``bounds``, as the catalogue does; ``samples`` are the flow's own draws."""

    names: tuple[str, ...]
    units: tuple[str, ...]
    labels: tuple[str, ...]
    samples: np.ndarray  # (S, D)
    log_density: np.ndarray  # (S,)
    valid: np.ndarray  # (S,) bool
    source_id: int
    seed: int
    snr: float  # the S/N the posterior was conditioned on (capped with snr_cap)
    interval_scale: np.ndarray  # (D,)
    bounds: tuple[np.ndarray, np.ndarray]  # the training bounds (lower, upper), (D,) each: what `valid` means

    def _index(self, params: Sequence[str] | None) -> list[int]:
        params = list(self.names if params is None else params)
        unknown = [p for p in params if p not in self.names]
        if unknown:
            raise ValueError(f"params: unknown parameter(s) {', '.join(unknown)}; expected some of "
                             f"{', '.join(self.names)}")
        return [self.names.index(p) for p in params]

    @property
    def map(self) -> np.ndarray:
        """(D,) the valid sample of highest density (the catalogue's MAP); NaN when no sample is valid."""
        if not self.valid.any():
            return np.full(len(self.names), np.nan)
        return self.samples[np.argmax(np.where(self.valid, self.log_density, -np.inf))]

    def quantiles(self, levels: Sequence[float] = QUANTILES) -> np.ndarray:
        """(len(levels), D) quantiles over the valid samples (numpy's linear rule, as the catalogue; by default the
        catalogue's levels, ``spectra.contracts.quantiles.QUANTILES``)."""
        if not self.valid.any():
            return np.full((len(levels), len(self.names)), np.nan)
        valid = self.samples[self.valid]
        return self._calibrated(np.quantile(valid, list(levels), axis=0), valid)

    def calibrated_samples(self) -> np.ndarray:
        """(n_valid, D) the valid samples spread about their median by ``interval_scale`` (the flow's own valid
        samples when it is all ones), kept within the training bounds: what :meth:`corner` draws."""
        valid = self.samples[self.valid]
        return self._calibrated(valid, valid) if valid.size else valid

    def _calibrated(self, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """``values`` (…, D) rescaled about the median of ``valid`` as the catalogue's quantiles are."""
        if np.all(self.interval_scale == 1):
            return values
        return rescale_about(values, np.quantile(valid, 0.5, axis=0), self.interval_scale, *self.bounds)

    def table(self) -> Table:
        """The samples as an astropy Table (one column per parameter with its unit, ``log_density``, ``valid``)."""
        from astropy.table import Table

        table = Table()
        for j, (name, unit) in enumerate(zip(self.names, self.units, strict=True)):
            table[name] = self.samples[:, j]
            table[name].unit = unit or None
        table["log_density"] = self.log_density
        table["valid"] = self.valid
        table.meta.update(source_id=self.source_id, seed=self.seed, snr=self.snr)
        return table

    def corner(self, params: Sequence[str] | None = None, truth: Sequence[float] | None = None) -> Figure:
        """Corner plot of the valid samples of ``params`` (default: all), MAP marked (and ``truth`` if given, in the
        order of ``params``): a matplotlib Figure (``catalog.plots.corner_figure``)."""
        from catalog.plots import axis_text, corner_figure

        index = self._index(params)
        marks = {"MAP": self.map[index]}
        if truth is not None:
            marks["truth"] = np.asarray(truth, dtype=float)
        return corner_figure(self.calibrated_samples()[:, index],
                             [axis_text(self.labels[j], self.units[j]) for j in index], marks,
                             f"source_id {self.source_id}, seed {self.seed}, S/N {self.snr:.0f}: "
                             f"{int(self.valid.sum())} of {self.valid.size} samples inside the training bounds")


class Model:
    """A loaded bundle with its ONNX Runtime sessions (made on first use, one set per sample count: the count sizes
    the flow's calls, so a row's numbers match ``runtime process --samples`` exactly). Use :func:`load_model`."""

    def __init__(self, bundle: Bundle, device: str, precision: str, threads: int = 0, force_precision: bool = False,
                 engine: str = "onnxruntime"):
        self.bundle, self.device, self.precision, self.engine = bundle, device, precision, engine
        self.threads, self.force_precision = threads, force_precision
        self.batch = 16 if device == "cpu" else 256  # runtime process's default --batch
        self._sessions: dict[int, OnnxPosterior] = {}
        self._resim: Resimulator | None = None

    def __repr__(self) -> str:
        return (f"Model({str(self.bundle.path)!r}, {len(self.names)} parameters, device {self.device}, engine "
                f"{self.engine}, precision {self.precision}, sha256 {self.bundle.sha256[:12]})")

    @property
    def names(self) -> list[str]:
        """Parameter names, in the catalogue's order."""
        return list(self.bundle.manifest.names)

    @property
    def n_pixels(self) -> int:
        return self.bundle.manifest.n_pixels

    @property
    def wavelength(self) -> np.ndarray:
        """The model's pixels (Å, air): what :func:`prepare` puts a spectrum on."""
        return self.bundle.wavelength

    def columns(self, bias_correction: bool = False, resim: bool = True, provenance: Sequence[str] = ()
                ) -> list[Column]:
        """The catalogue columns ``infer`` returns (``catalog.schema.catalogue_columns`` for this bundle)."""
        manifest = self.bundle.manifest
        corrected = list((manifest.bias_correction or {}).get("coefficients", {})) if bias_correction else []
        return catalogue_columns(manifest.raw["parameters"], corrected, list(provenance),
                                 resim=resim and bool(self.bundle.emulator))

    def _posterior(self, samples: int) -> OnnxPosterior:
        from .sampler import OnnxPosterior

        if samples not in self._sessions:
            self._sessions[samples] = OnnxPosterior(
                self.bundle, device=self.device, threads=self.threads, max_rows=self.batch * samples,
                precision=self.precision, force_precision=self.force_precision, n_samples=samples, engine=self.engine)
        return self._sessions[samples]

    def _resimulator(self) -> Resimulator | None:
        from .resim import Resimulator

        if self._resim is None and self.bundle.emulator:
            self._resim = Resimulator(self.bundle, threads=self.threads)
        return self._resim

    def infer(self, flux: Any, snr: Any = None, source_id: Any = None, *, seed: int = 0, samples: int = 4096,
              resim: bool = True, bias_correction: bool = False, snr_cap: bool = False, ingest_flags: Any = None,
              provenance: dict[str, Any] | None = None, continuum: str | None = None) -> Table:
        """Catalogue rows for N spectra: an astropy Table whose columns are exactly the catalogue's (names, units,
        descriptions of ``catalog.schema``), flags included, computed as ``runtime process`` computes them.

        ``flux``: (N, P) or (P,) on the model's pixels, or what :func:`prepare` returns (one or a list; then the
        S/N, ingest flags and ingestion columns come from it). ``snr``: per Å, one value or N. ``source_id``: N
        distinct non-negative integers (default 0..N-1); with ``seed`` they fix the posterior draws. A row with
        invalid flux or S/N is flagged (INVALID_FLUX, INVALID_SNR) and gets NaN estimates, as in a survey run.
        ``resim``: the re-simulation check (``chi2_resim``, ``resim_rms``, POOR_FIT) when the bundle has an
        emulator, and with it the filling of pixels without data (``runtime.inference.fill_no_data``,
        NO_DATA_FILLED). ``continuum``: 'true' or 'pseudo', how the flux is normalised; rows are flagged
        CONTINUUM_MISMATCH when it differs from the model's (default: prepared spectra 'pseudo', else unchecked).
        """
        from astropy.table import Table

        flux, snr, ingest_flags, provenance, continuum = _unpack_prepared(flux, snr, ingest_flags, provenance,
                                                                          continuum)
        flux, snr, ids = self._inputs(flux, snr, source_id)
        settings = InferenceSettings(seed=check_seed(seed, "seed"), samples=check_samples(samples, "samples"),
                                     batch=self.batch, snr_cap=snr_cap, bias_correction=bias_correction,
                                     continuum_mismatch=continuum is not None
                                     and continuum != self.bundle.manifest.continuum)
        carried = _provenance(provenance, flux.shape[0])
        if ingest_flags is not None:
            ingest_flags = _per_row(ingest_flags, flux.shape[0], "ingest_flags").astype(np.int32)
        values = catalogue_rows(self._posterior(settings.samples), flux, snr, ids, settings,
                                resim=self._resimulator() if resim else None, ingest_flags=ingest_flags,
                                provenance=carried)
        table = Table()
        for column in self.columns(bias_correction, resim, list(carried)):
            data = values[column.name]
            text = column.dtype == "str"  # numpy StringDType (Zarr's) does not cast to fixed width: via a list
            table[column.name] = np.asarray(np.asarray(data).tolist(), dtype=str) if text else data.astype(
                column.dtype)
            table[column.name].unit = column.unit or None
            table[column.name].description = column.description
        table.meta.update(bundle=str(self.bundle.path), bundle_sha256=self.bundle.sha256, seed=settings.seed,
                          samples=settings.samples, precision=self.precision, engine=self.engine, device=self.device,
                          snr_cap=snr_cap, random_streams=random_stream_scheme()["version"])
        return table

    def posterior(self, flux: Any, snr: Any = None, source_id: int = 0, *, seed: int = 0, samples: int = 4096,
                  snr_cap: bool = False, resim: bool = True) -> Posterior:
        """The posterior samples and log densities of one spectrum (the draws ``infer`` summarises for the same
        seed, source id and ``resim``: with the bundle's emulator, pixels without data are filled as ``infer``
        fills them). Unlike ``infer``, invalid flux or S/N is an error here: there is nothing to sample."""
        flux, snr, _, _, _ = _unpack_prepared(flux, snr, None, None, None)
        flux, snr, ids = self._inputs(flux, snr, [source_id] if np.ndim(source_id) == 0 else source_id)
        if flux.shape[0] != 1:
            raise ValueError(f"flux: {flux.shape[0]} spectra, posterior() takes one (infer() takes many)")
        if not validate_flux(self.bundle.used_pixels(flux))[0]:  # as catalogue_rows: masked pixels unchecked
            raise ValueError("flux: NaN/inf pixels, a median <= 0 or a constant spectrum; expected a continuum-"
                             "normalised spectrum with finite values on every pixel (runtime.api.prepare)")
        if not (np.isfinite(snr[0]) and snr[0] > 0):
            raise ValueError(f"snr: {snr[0]}, expected a finite S/N per Angstrom > 0")
        samples = check_samples(samples, "samples")
        seed = check_seed(seed, "seed")
        high = self.bundle.manifest.snr_range[1]
        used = min(float(snr[0]), high) if snr_cap else float(snr[0])
        sampler = self._posterior(samples)
        settings = InferenceSettings(seed=seed, samples=samples, batch=self.batch, snr_cap=snr_cap)
        if resim:  # pixels without data filled as infer fills them (runtime.inference.fill_no_data)
            flux = network_input(sampler, self._resimulator(), flux, np.array([used]), ids, settings)
        draws, log_density = sampler.sample(flux, np.array([[used]]), ids, seed, samples)
        manifest = self.bundle.manifest
        valid = np.all((draws[0] >= manifest.lower) & (draws[0] <= manifest.upper), axis=1) & np.isfinite(
            log_density[0])
        labels = tuple(p.get("label", p["name"]) for p in manifest.raw["parameters"])
        calibration = manifest.interval_calibration
        scale = np.ones(manifest.n_params) if calibration is None else calibration.factors(np.array([used]))[0]
        return Posterior(tuple(manifest.names), tuple(manifest.units), labels, draws[0], log_density[0], valid,
                         int(ids[0]), seed, used, scale, (manifest.lower, manifest.upper))

    def _inputs(self, flux: Any, snr: Any, source_id: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(flux (N, P) float32, snr (N,) float64, source ids (N,) int64), or one line naming what is wrong."""
        flux = np.asarray(flux, dtype=np.float32)
        if flux.ndim == 1:
            flux = flux[None, :]
        if flux.ndim != 2 or flux.shape[1] != self.n_pixels:
            got = f"{flux.shape[-1]} pixels per spectrum" if flux.ndim == 2 else f"shape {flux.shape}"
            raise ValueError(f"flux: {got}, expected {self.n_pixels} pixels per spectrum (the model's pixel grid, "
                             "Model.wavelength; put a spectrum on it with runtime.api.prepare)")
        n = flux.shape[0]
        if snr is None:
            raise ValueError("snr: missing; expected the S/N per Angstrom of each spectrum (prepare() measures it)")
        snr = _per_row(snr, n, "snr").astype(np.float64)
        ids = np.arange(n, dtype=np.int64) if source_id is None else _per_row(source_id, n, "source_id")
        if ids.dtype.kind not in "iu":
            raise ValueError(f"source_id: {ids.dtype} values, expected integers in [0, 2**63)")
        for value in ids:
            check_index(int(value), "source_id")
        if np.unique(ids).size != ids.size:
            raise ValueError("source_id: repeated values; expected distinct ids (a spectrum's draws are keyed by "
                             "(seed, source_id), so repeated ids would share them)")
        return flux, snr, ids.astype(np.int64)


def _per_row(values: Any, n: int, what: str) -> np.ndarray:
    """``values`` as an (n,) array: a scalar repeated, or exactly n values."""
    array = np.asarray(values)
    if array.ndim == 0:
        return np.full(n, array.item(), dtype=array.dtype)
    array = array.reshape(-1) if array.ndim == 2 and 1 in array.shape else array
    if array.shape != (n,):
        raise ValueError(f"{what}: {array.size} value(s) of shape {array.shape}, expected one or {n} (one per "
                         "spectrum)")
    return array


def _provenance(provenance: dict[str, Any] | None, n: int) -> dict[str, np.ndarray]:
    """Ingestion columns to carry, checked: known names (``PROVENANCE_COLUMNS``), one value per row; in the
    catalogue's order."""
    provenance = provenance or {}
    known = [c.name for c in PROVENANCE_COLUMNS]
    unknown = [name for name in provenance if name not in known]
    if unknown:
        raise ValueError(f"provenance: unknown column(s) {', '.join(unknown)}; expected some of {', '.join(known)}")
    return {name: _per_row(provenance[name], n, f"provenance[{name!r}]") for name in known if name in provenance}


def _unpack_prepared(flux: Any, snr: Any, ingest_flags: Any, provenance: dict[str, Any] | None,
                     continuum: str | None) -> tuple[Any, Any, Any, dict[str, Any] | None, str | None]:
    """Prepared spectra (one or a list) -> flux, S/N, ingest flags, ingestion columns and 'pseudo' continuum; other
    input passes through unchanged."""
    from spectra.observed.ingest import PreparedSpectrum

    items = [flux] if isinstance(flux, PreparedSpectrum) else flux
    if not (isinstance(items, list | tuple) and items and all(isinstance(s, PreparedSpectrum) for s in items)):
        return flux, snr, ingest_flags, provenance, continuum
    if snr is not None:
        raise ValueError("snr: given together with prepared spectra, which carry their own S/N; give one of them")
    columns = {name: [getattr(s, attribute) for s in items] for name, attribute in _PREPARED_ATTRIBUTES.items()}
    return (np.stack([s.flux for s in items]), np.array([s.snr for s in items]),
            np.array([s.flags for s in items]) if ingest_flags is None else ingest_flags,
            columns if provenance is None else provenance, continuum or "pseudo")
