"""The model bundle: the contract between training and deployment (numpy + onnxruntime only).

A bundle is a folder::

    feature_extractor.onnx   flux [B, P] float32, snr [B, 1] float32  ->  features [B, F]
    inverse_flow.onnx        z [N, D] float32, features [N, F] float32 ->  x [N, D], log_jac_det [N]
    wavelength.npy           the pixel grid (air, Å) the model was trained on
    manifest.json            everything needed to turn x into physical parameters (below), and the
                             sha256 of every other file of the bundle (``files``)

``x`` is the network's standardised target space; physical value = inverse_transform(x * x_std + x_mean)
with the per-parameter transform (identity or log10). ``log_jac_det`` = log|det dx/dz|, so
log p(x | spectrum) = log N(z; 0, I) - log_jac_det.

``random_streams`` (optional; ``{"version": 2, "scheme": "..."}`` from ``spectra.contracts.streams.scheme``) records how
the exporting software seeds per-spectrum draws (survey noise and latent z, each its own tagged stream):
provenance, since which draws a catalogue used is decided by the runtime that makes it, and recorded there too.
Bundles exported before the field existed (the shipped ``runtime/default_bundle`` among them) lack it and stay
valid: the graphs do not depend on it.

``input_mask`` (optional; ``spectra.contracts.masks.input_mask``) records the pixels the network never sees (telluric
O₂, the Hα core): the bands with their pads, the fill (``{"rule": "constant", "value": 1.0}``), the pixel count, the
number of masked pixels and the sha256 of the mask. Loading recomputes the mask from the recorded bands on the
bundle's ``wavelength.npy`` and refuses, in one line, an entry that does not describe it; the runtime then sets those
pixels to the fill before the feature extractor (:meth:`Bundle.mask_input`), leaves them out of the input checks
(:meth:`Bundle.used_pixels`) and out of the re-simulation chi2 (``runtime.resim``). Bundles exported before the field
existed (``runtime/default_bundle``) lack it: no mask, every pixel used, as before.

``interval_calibration`` (optional; ``runtime.intervals``): per-parameter factors, at a list of S/N values, by which
the reported quantiles' distances from the median are multiplied so that the 68 % intervals hold 68 % of the truths;
``{"snr": [increasing S/N], "scale": {parameter: [factor per S/N]}, ...}`` with every parameter present. Bundles
without it report the flow's quantiles as they are.

``export`` writes bundles with :func:`write_manifest` (so writer and reader cannot drift apart);
``runtime`` reads them with :func:`load_bundle`, which validates everything it can before a survey
starts and names the file and field of any problem.

Integrity: the manifest lists every graph and data file with its sha256, and loading refuses a listed
file that is missing or differs, and a model file (``.onnx``, ``.npy``...) that is not listed. The bundle's
identity (:attr:`Bundle.sha256`, recorded in catalogues and checked on ``--resume``) is the hash of the
manifest together with those file hashes, so no graph the sampler may run can change unnoticed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

import numpy as np

from spectra.common.hashing import sha256_file
from spectra.contracts import manifest as layout
from spectra.contracts.conventions import CONTINUUM_KINDS, HR_PIXEL
from spectra.contracts.manifest import FORMAT_VERSION, GRAPHS, HOISTED, REQUIRED, SNR_UNIT, SUMMARY, VARIANTS
from spectra.contracts.masks import fill_masked, mask_from_record
from spectra.contracts.parameters import TRANSFORMS, to_physical
from spectra.contracts.quantiles import check_levels

from .intervals import SCALE_LIMITS, IntervalCalibration

__all__ = [
    "VARIANT_TOLERANCE",
    "VARIANT_WORST_TOLERANCE",
    "Bundle",
    "BundleError",
    "Manifest",
    "hash_files",
    "load_bundle",
    "write_manifest",
]

#: Ksoll et al. (2026) Table B.3: X_corrected = X - (a * T_eff + b), fitted on 72 benchmark spectra
#: ([Fe/H] >= -2.5) for their NLTE Turbospectrum-trained network. Data, applied only when asked for.
PAPER_BIAS_CORRECTION = {
    "source": "Ksoll et al. 2026, Table B.3 (Eq. B.1), NLTE network, 72 benchmark spectra with [Fe/H] >= -2.5",
    "teff_parameter": "teff",
    "coefficients": {
        "teff": {"a": -0.096, "b": 492.389},
        "logg": {"a": -2.139e-4, "b": 1.082},
        "fe_h": {"a": -3.209e-5, "b": 0.143},
        "mg_fe": {"a": -2.479e-5, "b": 0.077},
        "ca_fe": {"a": -4.095e-5, "b": 0.209},
        "li_fe": {"a": -5.254e-4, "b": 2.779},
    },
}
#: a reduced-precision variant against fp32, differences in units of the fp32 posterior's 68 % half-width
#: (``runtime.precision.within_tolerance``): the largest accepted 99th percentile of its quantile differences and
#: 95th percentile of its MAP differences ...
VARIANT_TOLERANCE = 0.05
#: ... and the largest accepted single quantile difference. Not the 0.05 above: at 4096 samples an fp32 quantile's
#: own Monte-Carlo error is 0.02-0.04 half-widths (p16/p84 to p2.5/p97.5), and a second fp32 latent stream moves the
#: same quantiles by a median of 0.03, a 99th percentile of 0.22 and up to 1.2 (session 21); a maximum over
#: thousands of differences then measures where one order statistic falls more than the variant's arithmetic
VARIANT_WORST_TOLERANCE = 0.10
#: largest manifest accepted (the shipped one is 13 kB): a manifest is parsed whole, so its size bounds memory
MAX_MANIFEST_BYTES = 1 << 20
#: deepest nesting of objects/lists accepted in a manifest (the format uses 4)
MAX_MANIFEST_DEPTH = 16
class BundleError(ValueError):
    """A model bundle is missing, malformed, or does not fit the data it is asked to process."""


@dataclass
class Manifest:
    """Parsed ``manifest.json`` (see :func:`write_manifest` for the fields)."""

    raw: dict
    names: list[str] = field(init=False)
    units: list[str] = field(init=False)
    transforms: list[str] = field(init=False)
    lower: np.ndarray = field(init=False)
    upper: np.ndarray = field(init=False)
    x_mean: np.ndarray = field(init=False)
    x_std: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        params = self.raw["parameters"]
        self.names = [p["name"] for p in params]
        self.units = [p["unit"] for p in params]
        self.transforms = [p["transform"] for p in params]
        self.lower = np.array([p["lower"] for p in params], dtype=float)
        self.upper = np.array([p["upper"] for p in params], dtype=float)
        self.x_mean = np.asarray(self.raw["x_mean"], dtype=float)
        self.x_std = np.asarray(self.raw["x_std"], dtype=float)

    @property
    def n_params(self) -> int:
        return int(self.raw["n_params"])

    @property
    def n_features(self) -> int:
        return int(self.raw["n_features"])

    @property
    def n_pixels(self) -> int:
        return int(self.raw["pixel_grid"]["n_pixels"])

    @property
    def continuum(self) -> str:
        """``true`` or ``pseudo``: how the training spectra were normalised (``spectra.forward.continuum``)."""
        return str(self.raw.get("continuum", "true"))

    @property
    def snr_range(self) -> tuple[float, float]:
        low, high = self.raw["snr_convention"]["trained_range"]
        return float(low), float(high)

    @property
    def bias_correction(self) -> dict | None:
        return self.raw.get("bias_correction")

    @property
    def interval_calibration(self) -> IntervalCalibration | None:
        """The quantiles' rescaling (``runtime.intervals``), None when the bundle carries none."""
        return IntervalCalibration.from_manifest(self.raw.get("interval_calibration"), self.names)

    def calibrated_quantiles(self, quantiles: np.ndarray, snr: np.ndarray) -> np.ndarray:
        """Quantiles (N, Q, D) as the catalogue reports them at the S/N (N,) the posteriors were conditioned on:
        rescaled by the bundle's interval calibration within the training bounds, or unchanged without one."""
        calibration = self.interval_calibration
        return quantiles if calibration is None else calibration.apply(quantiles, snr, self.lower, self.upper)

    @property
    def random_streams(self) -> dict | None:
        """The exporting software's random-stream scheme (``spectra.contracts.streams.scheme``), None for bundles
        exported before it was recorded (they used scheme version 1: one untagged stream per spectrum)."""
        return self.raw.get("random_streams")

    @property
    def precisions(self) -> dict[str, dict]:
        """Reduced-precision variants: {name: {files, verification, ...}} (fp32 is always there, not listed)."""
        return dict(self.raw.get("precisions") or {})

    @property
    def engine_precisions(self) -> dict[str, dict[str, dict]]:
        """Precisions other engines reach by a hint on the fp32 graphs, each with its verification against
        onnxruntime fp32: {engine: {precision: {verification, verified_on, ...}}} (``export quantize --engine``)."""
        return {engine: dict(v) for engine, v in (self.raw.get("engine_precisions") or {}).items()}

    def to_physical(self, x: np.ndarray) -> np.ndarray:
        """Standardised network outputs (..., D) -> physical units (``spectra.contracts.parameters``)."""
        return to_physical(x, self.x_mean, self.x_std, self.transforms)


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    wavelength: np.ndarray
    sha256: str  # hash of the manifest + graphs: identifies the model in catalogues
    #: (P,) True for the pixels the network never sees (the manifest's ``input_mask``), None: every pixel is used
    input_mask: np.ndarray | None = None
    #: the value masked pixels are given (the manifest's ``input_mask.fill.value``)
    input_fill: float = 1.0

    def mask_input(self, flux: np.ndarray) -> np.ndarray:
        """``flux`` (..., P) with the masked pixels set to the recorded fill (a copy, ``flux``'s dtype): what every
        spectrum goes through before the feature extractor (``runtime.sampler.OnnxPosterior.features``). ``flux``
        itself, untouched, for a bundle without a mask."""
        if self.input_mask is None:
            return flux
        return fill_masked(flux, self.input_mask, self.input_fill)

    def used_pixels(self, flux: np.ndarray) -> np.ndarray:
        """``flux`` (N, P) without its masked pixels: what the input checks (``runtime.inference.validate_flux``) look
        at, so that a spectrum is judged on the pixels the network uses. ``flux`` itself without a mask."""
        return flux if self.input_mask is None else flux[:, ~self.input_mask]

    def graph_path(self, key: str) -> Path:
        return self.path / GRAPHS[key][0]

    @property
    def emulator(self) -> dict | None:
        """The manifest's emulator entry (re-simulation check), or None."""
        return self.manifest.raw.get("emulator")

    @property
    def has_summary_graph(self) -> bool:
        return SUMMARY in self.manifest.raw.get("files", {})

    @property
    def has_hoisted(self) -> bool:
        extra = self.manifest.raw.get("extra_graphs") or {}
        return "hoisted_flow" in extra and all((self.path / f).is_file() for f in HOISTED.values())

    def check_wavelength(self, wavelength: np.ndarray, source: str) -> None:
        """Raise a :class:`BundleError` unless ``wavelength`` is the bundle's pixel grid."""
        wavelength = np.asarray(wavelength, dtype=float)
        if wavelength.shape != self.wavelength.shape:
            grid = self.manifest.raw["pixel_grid"].get("definition", "its pixel grid")
            raise BundleError(f"{source}: flux has {wavelength.size} pixels; the model in {self.path} expects "
                              f"{self.wavelength.size} ({grid})")
        worst = float(np.max(np.abs(wavelength - self.wavelength)))
        if worst > 1e-4:
            raise BundleError(f"{source}: wavelength grid differs from the model's by up to {worst:.4g} A; "
                              "resample the spectra to the model's pixel grid first")


def bias_correction_from(source: str | Path, names: list[str]) -> dict:
    """Coefficients for a manifest: ``"paper"`` (Table B.3) or a JSON file (``catalog calibrate``), checked
    against the bundle's parameter ``names``; marked as not applied by default."""
    if str(source) == "paper":
        correction = dict(PAPER_BIAS_CORRECTION)
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"bias-correction coefficients {path} not found")
        try:
            correction = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BundleError(f"{path}: not JSON ({exc})") from None
        where = str(path)
        coefficients = correction.get("coefficients") if isinstance(correction, dict) else None
        if not isinstance(coefficients, dict) or not coefficients:
            raise BundleError(f"{where}: expected an object with 'coefficients': {{parameter: {{a, b}}}}")
        for name, c in coefficients.items():
            if name not in names:
                raise BundleError(f"{where}: coefficient for {name!r}, which is not a parameter of this bundle")
            if not all(isinstance(c.get(k), (int, float)) for k in ("a", "b")):
                raise BundleError(f"{where}: coefficients[{name!r}] needs numeric 'a' and 'b'")
        if correction.get("teff_parameter", "teff") not in names:
            raise BundleError(f"{where}: teff_parameter {correction.get('teff_parameter')!r} is not a parameter")
        correction.setdefault("source", where)
    return {**correction, "applied_by_default": False}


def store_bias_correction(bundle_path: str | Path, source: str | Path) -> dict:
    """Put coefficients into an existing bundle's manifest (the graphs are untouched)."""
    bundle = load_bundle(bundle_path, check_graphs=False)
    raw = dict(bundle.manifest.raw)
    raw["bias_correction"] = bias_correction_from(source, bundle.manifest.names)
    write_manifest(bundle_path, raw)
    return raw["bias_correction"]


def listed_files(raw: dict) -> list[str]:
    """Every file a manifest refers to: the graphs, the extra graphs, the precision variants and the pixel grid."""
    names = [g["file"] for g in raw.get("graphs", {}).values()]
    names += [g["file"] for g in (raw.get("extra_graphs") or {}).values()]
    names += [f for v in (raw.get("precisions") or {}).values() if isinstance(v, dict)
              for f in (v.get("files") or {}).values()]
    if isinstance(raw.get("emulator"), dict) and "file" in raw["emulator"]:
        names.append(raw["emulator"]["file"])
    names.append(raw.get("pixel_grid", {}).get("file", "wavelength.npy"))
    return names


def hash_files(path: str | Path, raw: dict) -> dict[str, str]:
    """``files`` entry of a manifest: sha256 of every file it refers to (``export`` calls this last)."""
    return {name: sha256_file(Path(path) / name) for name in listed_files(raw)}


def write_manifest(path: str | Path, manifest: dict) -> Path:
    """Validate and write ``manifest.json`` (used by ``export``); the file hashes must be current."""
    out = Path(path) / "manifest.json"
    _validate(manifest, out)
    _check_files(Path(path), manifest, out)
    if manifest.get("input_mask") is not None:
        grid = Path(path) / manifest["pixel_grid"].get("file", "wavelength.npy")
        _input_mask(manifest, np.load(grid, allow_pickle=False), out)
    out.write_text(json.dumps(manifest, indent=2))
    return out


def _is_number(value: object) -> TypeGuard[int | float]:
    """A finite int or float, not a bool (JSON true would pass ``isinstance(value, int)``)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(raw: dict, key: str, where: Path) -> int:
    value = raw[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BundleError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def _number_list(raw: dict, key: str, n: int, where: Path, positive: bool = False) -> None:
    values = raw[key]
    if not isinstance(values, list) or len(values) != n:
        raise BundleError(f"{where}: {key} must be a list of n_params = {n} numbers, got {values!r:.80}")
    for i, v in enumerate(values):
        if not _is_number(v):
            raise BundleError(f"{where}: {key}[{i}] = {v!r} is not a finite number")
        if positive and v <= 0:
            raise BundleError(f"{where}: {key}[{i}] = {v!r} must be > 0 (a standard deviation)")


def _plain_filename(name, where: Path, field: str) -> str:
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise BundleError(f"{where}: {field} must be a file name inside the bundle, got {name!r}")
    return name


def _validate(raw: dict, where: Path) -> None:
    """Every manifest field the runtime relies on, one clear error each."""
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: expected a JSON object")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise BundleError(f"{where}: missing field(s) {', '.join(missing)}")
    if raw["format_version"] != FORMAT_VERSION:
        raise BundleError(f"{where}: format_version is {raw['format_version']!r}; this software reads "
                          f"{FORMAT_VERSION!r}. Re-export the model with a matching version of `export`.")
    if not isinstance(raw["provenance"], dict):
        raise BundleError(f"{where}: provenance must be an object")
    d = _positive_int(raw, "n_params", where)
    _positive_int(raw, "n_features", where)
    if not isinstance(raw["parameters"], list) or len(raw["parameters"]) != d:
        raise BundleError(f"{where}: parameters must list n_params = {d} entries")
    _number_list(raw, "x_mean", d, where)
    _number_list(raw, "x_std", d, where, positive=True)
    seen = set()
    for i, p in enumerate(raw["parameters"]):
        if not isinstance(p, dict):
            raise BundleError(f"{where}: parameters[{i}] must be an object")
        for key in ("name", "unit", "transform", "lower", "upper"):
            if key not in p:
                raise BundleError(f"{where}: parameter entry {p.get('name', i)} lacks {key!r}")
        name = p["name"]
        if not isinstance(name, str) or not name or name in seen:
            raise BundleError(f"{where}: parameters[{i}].name {name!r} must be a non-empty, unique string")
        seen.add(name)
        if not isinstance(p["unit"], str):
            raise BundleError(f"{where}: parameter {name}: unit must be text, got {p['unit']!r}")
        if p["transform"] not in TRANSFORMS:
            raise BundleError(f"{where}: parameter {name} has unknown transform {p['transform']!r} "
                              f"(known: {', '.join(TRANSFORMS)})")
        for key in ("lower", "upper"):
            if not _is_number(p[key]):
                raise BundleError(f"{where}: parameter {name}: {key} = {p[key]!r} is not a finite number")
        if not p["lower"] < p["upper"]:
            raise BundleError(f"{where}: parameter {name}: lower bound {p['lower']!r} is not below the upper "
                              f"bound {p['upper']!r}")
        if p["transform"] == "log10" and p["lower"] <= 0:
            raise BundleError(f"{where}: parameter {name} is log10-transformed but its lower bound {p['lower']!r} "
                              "is not positive")
    grid = raw["pixel_grid"]
    if not isinstance(grid, dict):
        raise BundleError(f"{where}: pixel_grid must be an object")
    if "n_pixels" not in grid:
        raise BundleError(f"{where}: missing field pixel_grid.n_pixels")
    _positive_int(grid, "n_pixels", where)
    _plain_filename(grid.get("file", "wavelength.npy"), where, "pixel_grid.file")
    width = grid.get("pixel_width", 1.0)
    if not _is_number(width) or width <= 0:
        raise BundleError(f"{where}: pixel_grid.pixel_width must be a positive number (A), got {width!r}")
    snr = raw["snr_convention"]
    if not isinstance(snr, dict) or snr.get("unit") != SNR_UNIT:
        raise BundleError(f"{where}: snr_convention.unit must be {SNR_UNIT!r}, got {snr!r:.80}")
    factor = snr.get("per_pixel_factor")
    if not _is_number(factor) or factor <= 0:
        raise BundleError(f"{where}: snr_convention.per_pixel_factor must be a positive number, got {factor!r}")
    trained = snr.get("trained_range")
    if (not isinstance(trained, list) or len(trained) != 2 or not all(_is_number(v) for v in trained)
            or not 0 < trained[0] < trained[1]):
        raise BundleError(f"{where}: snr_convention.trained_range must be [low, high] with 0 < low < high, "
                          f"got {trained!r}")
    if raw.get("continuum", "true") not in CONTINUUM_KINDS:
        raise BundleError(f"{where}: continuum must be one of {CONTINUUM_KINDS}, got {raw.get('continuum')!r}")
    if not isinstance(raw["graphs"], dict):
        raise BundleError(f"{where}: graphs must be an object")
    for key, (filename, inputs, outputs) in GRAPHS.items():
        graph = raw["graphs"].get(key)
        if graph is None:
            raise BundleError(f"{where}: graphs lacks {key!r}")
        if (not isinstance(graph, dict) or not isinstance(graph.get("inputs"), list)
                or not isinstance(graph.get("outputs"), list) or tuple(graph["inputs"]) != inputs
                or tuple(graph["outputs"]) != outputs or graph.get("file") != filename):
            raise BundleError(f"{where}: graph {key} must be {filename} with inputs {inputs} and outputs {outputs}")
    extra = raw.get("extra_graphs") or {}
    if not isinstance(extra, dict):
        raise BundleError(f"{where}: extra_graphs must be an object")
    for key, graph in extra.items():
        if not isinstance(graph, dict):
            raise BundleError(f"{where}: extra_graphs.{key} must be an object")
        _plain_filename(graph.get("file"), where, f"extra_graphs.{key}.file")
    files = raw.get("files")
    if "posterior_summary" in extra or (isinstance(files, dict) and SUMMARY in files):
        # the summary graph bakes its quantile levels in; its output fills the catalogue's columns by position
        try:
            summary = extra.get("posterior_summary")
            check_levels(summary.get("quantiles") if isinstance(summary, dict) else None,
                         f"{where}: extra_graphs.posterior_summary")
        except ValueError as exc:
            raise BundleError(str(exc)) from None
    _validate_precisions(raw.get("precisions"), where)
    _validate_engine_precisions(raw.get("engine_precisions"), where)
    _validate_emulator(raw.get("emulator"), where)
    _validate_random_streams(raw.get("random_streams"), where)
    _validate_interval_calibration(raw.get("interval_calibration"), seen, where)
    files = raw["files"]
    if not isinstance(files, dict):
        raise BundleError(f"{where}: files must map file name -> sha256")
    for name in listed_files(raw):
        digest = files.get(name)
        if not isinstance(digest, str) or len(digest) != 64:
            raise BundleError(f"{where}: files has no sha256 for {name}; re-export the bundle")
    for name in files:
        _plain_filename(name, where, "files key")
    correction = raw.get("bias_correction")
    if correction is not None:
        coefficients = correction.get("coefficients") if isinstance(correction, dict) else None
        if not isinstance(coefficients, dict):
            raise BundleError(f"{where}: bias_correction.coefficients must be an object")
        for name, c in coefficients.items():
            if name not in seen:
                raise BundleError(f"{where}: bias_correction for {name!r}, which is not a parameter")
            if not isinstance(c, dict) or not all(_is_number(c.get(k)) for k in ("a", "b")):
                raise BundleError(f"{where}: bias_correction.coefficients[{name!r}] needs finite numbers a and b")


def _validate_interval_calibration(entry, names, where: Path) -> None:
    """``interval_calibration``: increasing positive ``snr`` values and, for every parameter, one factor per value
    within ``runtime.intervals.SCALE_LIMITS``."""
    if entry is None:
        return
    if not isinstance(entry, dict):
        raise BundleError(f"{where}: interval_calibration must be an object or null")
    snr = entry.get("snr")
    if not (isinstance(snr, list) and snr and all(_is_number(v) and v > 0 for v in snr)
            and all(a < b for a, b in itertools.pairwise(snr))):
        raise BundleError(f"{where}: interval_calibration.snr must be a non-empty list of increasing S/N values > 0")
    scale = entry.get("scale")
    if not isinstance(scale, dict) or set(scale) != set(names):
        raise BundleError(f"{where}: interval_calibration.scale must give a list of factors for every parameter "
                          f"({', '.join(sorted(names))})")
    low, high = SCALE_LIMITS
    for name, values in scale.items():
        if not (isinstance(values, list) and len(values) == len(snr)
                and all(_is_number(v) and low <= v <= high for v in values)):
            raise BundleError(f"{where}: interval_calibration.scale[{name!r}] must be {len(snr)} numbers in "
                              f"{low}-{high}, one per S/N value")


def _validate_precisions(precisions, where: Path) -> None:
    """``precisions``: {name: {files: {graph key: file}, verification: {...} or null, ...}} (``export quantize``)."""
    if precisions is None:
        return
    if not isinstance(precisions, dict):
        raise BundleError(f"{where}: precisions must be an object")
    for name, variant in precisions.items():
        if name not in VARIANTS:
            raise BundleError(f"{where}: precisions.{name}: unknown precision (known: {', '.join(VARIANTS)})")
        if not isinstance(variant, dict) or not isinstance(variant.get("files"), dict) or not variant["files"]:
            raise BundleError(f"{where}: precisions.{name}.files must map graph -> file")
        for key, file in variant["files"].items():
            _plain_filename(file, where, f"precisions.{name}.files.{key}")
        check = variant.get("verification")
        if check is not None and not _is_check(check):
            raise BundleError(f"{where}: precisions.{name}.verification needs finite quantile_error, map_error "
                              "and tolerance (and a quantile_error_p99 between 0 and quantile_error where recorded)")


def _is_check(check) -> bool:
    """A verification record (``export.variants.variant_errors``): finite errors and the tolerance they met (and,
    since session 22, a finite 99th percentile of the quantile errors: ``runtime.precision``'s rule)."""
    return (isinstance(check, dict) and all(_is_number(check.get(k)) for k in ("quantile_error", "map_error",
                                                                               "tolerance"))
            and ("quantile_error_p99" not in check
                 or (_is_number(check["quantile_error_p99"])
                     and 0 <= check["quantile_error_p99"] <= check["quantile_error"])))


def _validate_engine_precisions(entries, where: Path) -> None:
    """``engine_precisions``: {engine: {precision: {verification: {...}, ...}}} (``export quantize --engine``)."""
    if entries is None:
        return
    if not isinstance(entries, dict):
        raise BundleError(f"{where}: engine_precisions must be an object")
    for engine, by_precision in entries.items():
        known = layout.ENGINE_PRECISIONS.get(engine)
        if known is None:
            raise BundleError(f"{where}: engine_precisions.{engine}: unknown engine (known: "
                              f"{', '.join(layout.ENGINE_PRECISIONS)})")
        if not isinstance(by_precision, dict):
            raise BundleError(f"{where}: engine_precisions.{engine} must be an object")
        for name, entry in by_precision.items():
            if name not in known:
                raise BundleError(f"{where}: engine_precisions.{engine}.{name}: {engine} runs {', '.join(known)}")
            check = entry.get("verification") if isinstance(entry, dict) else None
            if not _is_check(check):
                raise BundleError(f"{where}: engine_precisions.{engine}.{name}.verification needs finite "
                                  "quantile_error, map_error and tolerance (and a quantile_error_p99 between 0 and "
                                  "quantile_error where recorded)")


def _validate_emulator(emulator, where: Path) -> None:
    """``emulator``: the spectral model for the re-simulation check (``export attach-emulator``)."""
    if emulator is None:
        return
    if not isinstance(emulator, dict):
        raise BundleError(f"{where}: emulator must be an object")
    _plain_filename(emulator.get("file"), where, "emulator.file")
    inputs, fill = emulator.get("inputs"), emulator.get("fill", {})
    if not isinstance(inputs, list) or not inputs or not all(isinstance(n, str) for n in inputs):
        raise BundleError(f"{where}: emulator.inputs must list the emulator's input label names")
    if not isinstance(fill, dict) or not all(isinstance(v, list) and len(v) == 4 and all(_is_number(x) for x in v)
                                             for v in fill.values()):
        raise BundleError(f"{where}: emulator.fill must map label -> [slope, offset, low, high]")
    for key in ("model_error",):
        if not _is_number(emulator.get(key)) or emulator[key] < 0:
            raise BundleError(f"{where}: emulator.{key} must be a number >= 0, got {emulator.get(key)!r}")
    threshold = emulator.get("poor_fit_chi2")
    if threshold is not None and (not _is_number(threshold) or threshold <= 0):
        raise BundleError(f"{where}: emulator.poor_fit_chi2 must be a positive number or null, got {threshold!r}")
    margin = emulator.get("margin", 0.0)  # absent in bundles whose emulator outputs the bundle's own pixels
    if not _is_number(margin) or margin < 0 or abs(margin / HR_PIXEL - round(margin / HR_PIXEL)) > 1e-9:
        raise BundleError(f"{where}: emulator.margin must be a number >= 0 A, a multiple of the {HR_PIXEL} A pixel "
                          f"(the HR grid margin of the emulator's output, spectra.wavegrid.hr_grid), got {margin!r}")


def _validate_random_streams(streams, where: Path) -> None:
    """Optional (older bundles lack it); when present, a version number and the scheme's description."""
    if streams is None:
        return
    if (not isinstance(streams, dict) or isinstance(streams.get("version"), bool)
            or not isinstance(streams.get("version"), int) or streams["version"] < 1
            or not isinstance(streams.get("scheme"), str) or not streams["scheme"]):
        raise BundleError(f"{where}: random_streams must be {{\"version\": int >= 1, \"scheme\": text}}, got "
                          f"{streams!r:.120}")


def _input_mask(raw: dict, wavelength: np.ndarray, where: Path) -> tuple[np.ndarray | None, float]:
    """(mask, fill) of the manifest's ``input_mask`` recomputed on the bundle's pixels (``spectra.contracts.masks``),
    (None, 1.0) without one; a one-line :class:`BundleError` for an entry that does not describe those pixels."""
    record = raw.get("input_mask")
    if record is None:
        return None, 1.0
    try:
        return mask_from_record(record, wavelength)
    except ValueError as exc:
        raise BundleError(f"{where}: {exc}; the model's input mask is unknown (re-export the bundle)") from None


def _bundle_contents(path: Path) -> list[str]:
    """Names of the regular files in the bundle folder; refuses anything else in it.

    Why so strict: ONNX Runtime resolves a graph's external-data references to any file inside the graph's
    folder, whatever its name or suffix (``weights``, ``sub/w.bin``), and follows symlinks. Only bytes the
    identity covers may be loadable, so a bundle holds exactly its manifest and the files the manifest lists
    with their sha256: no subfolders, symlinks, devices, pipes, or unlisted files of any name.
    """
    names = []
    for entry in sorted(path.iterdir()):
        if entry.is_symlink():
            raise BundleError(f"{entry}: a symlink in a model bundle (it could point at bytes the bundle's identity "
                              "does not cover); copy the file in instead")
        if entry.is_dir():
            raise BundleError(f"{entry}: a folder in a model bundle (a graph could load external data from it "
                              "unhashed); a bundle is one flat folder of the files its manifest lists")
        if not entry.is_file():
            raise BundleError(f"{entry}: not a regular file (a bundle holds only its manifest and listed files)")
        names.append(entry.name)
    return names


def _check_files(path: Path, raw: dict, where: Path) -> dict[str, str]:
    """Each listed file exists with its recorded sha256; nothing else lies beside them (:func:`_bundle_contents`)."""
    recorded: dict[str, str] = raw["files"]
    present = _bundle_contents(path)
    unlisted = [name for name in present if name != "manifest.json" and name not in recorded]
    if unlisted:
        raise BundleError(f"{path}: {', '.join(unlisted[:5])}{' ...' if len(unlisted) > 5 else ''} not listed in "
                          "manifest.json; a bundle holds only the files its manifest lists with their sha256 (ONNX "
                          "Runtime could load any of them as external weights): remove them or re-export")
    hashes = {}
    for name, digest in recorded.items():
        file = path / name
        if name not in present:
            raise BundleError(f"{path}: {name} is listed in manifest.json but missing")
        found = sha256_file(file)
        if found != digest:
            raise BundleError(f"{file}: sha256 {found[:16]}... differs from the {digest[:16]}... recorded in "
                              "manifest.json; the file was changed after export (re-export the bundle)")
        hashes[name] = found
    return hashes


def _read_manifest_bytes(manifest_path: Path) -> bytes:
    """The manifest's bytes, refusing a special file or one above :data:`MAX_MANIFEST_BYTES` before reading it."""
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: not a regular file")
    size = manifest_path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path}: {size} bytes; a manifest is at most {MAX_MANIFEST_BYTES} bytes "
                          "(not a bundle made by `export`)")
    with open(manifest_path, "rb") as fh:
        data = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:  # grew since stat
        raise BundleError(f"{manifest_path}: more than {MAX_MANIFEST_BYTES} bytes")
    return data


def _nesting_depth(value) -> int:
    """Deepest nesting of lists and objects in parsed JSON (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_MANIFEST_DEPTH:
                children = item.values() if isinstance(item, dict) else item
                stack.extend((child, depth + 1) for child in children)
    return deepest


def _parse_manifest(data: bytes, manifest_path: Path) -> dict:
    """JSON object from the manifest's bytes; one-line errors for bad text, encoding and nesting."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{manifest_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise BundleError(f"{manifest_path}: nested deeper than {MAX_MANIFEST_DEPTH} levels") from None
    if _nesting_depth(raw) > MAX_MANIFEST_DEPTH:
        raise BundleError(f"{manifest_path}: nested deeper than {MAX_MANIFEST_DEPTH} levels")
    if not isinstance(raw, dict):
        raise BundleError(f"{manifest_path}: expected a JSON object")
    return raw


def load_bundle(path: str | Path, check_graphs: bool = True, expected_sha256: str | None = None) -> Bundle:
    """Read and validate a bundle folder: manifest fields, every file against its recorded sha256, and (with
    ``check_graphs``) the ONNX graphs' input and output names and shapes (needs onnxruntime).
    ``expected_sha256``: refuse a bundle whose identity is not this one (workers check the driver's bundle)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"model bundle {path} is not a folder (make one with `export onnx`)")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise BundleError(f"{path}: manifest.json is missing; not a model bundle")
    manifest_bytes = _read_manifest_bytes(manifest_path)
    raw = _parse_manifest(manifest_bytes, manifest_path)
    _validate(raw, manifest_path)
    for key, (filename, _, _) in GRAPHS.items():
        if not (path / filename).is_file():
            raise BundleError(f"{path}: {filename} ({key} graph) is missing")
    hashes = _check_files(path, raw, manifest_path)
    manifest = Manifest(raw)
    wave_path = path / raw["pixel_grid"].get("file", "wavelength.npy")
    wavelength = np.load(wave_path, allow_pickle=False)
    if wavelength.shape != (manifest.n_pixels,) or not np.all(np.isfinite(wavelength)) or not np.all(
            np.diff(wavelength) > 0):
        raise BundleError(f"{wave_path}: expected {manifest.n_pixels} increasing finite wavelengths "
                          f"(manifest pixel_grid.n_pixels), got shape {wavelength.shape}")
    h = hashlib.sha256(manifest_bytes)
    for name in sorted(hashes):
        h.update(f"{name}:{hashes[name]}".encode())
    mask, fill = _input_mask(raw, wavelength, manifest_path)
    bundle = Bundle(path, manifest, wavelength, h.hexdigest(), mask, fill)
    if expected_sha256 is not None and bundle.sha256 != expected_sha256:
        raise BundleError(f"{path}: the bundle changed during the run (identity {bundle.sha256[:16]}..., the run "
                          f"started with {expected_sha256[:16]}...)")
    if check_graphs:
        _check_graph_signatures(bundle)
    return bundle


def _check_graph_signatures(bundle: Bundle) -> None:
    import onnxruntime as ort

    m = bundle.manifest
    expected_dims = {"flux": m.n_pixels, "snr": 1, "features": m.n_features, "z": m.n_params, "x": m.n_params}
    for filename, inputs, outputs in GRAPHS.values():
        graph = bundle.path / filename
        try:
            sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{graph}: not a loadable ONNX graph ({exc})") from None
        found_in = tuple(i.name for i in sess.get_inputs())
        found_out = tuple(o.name for o in sess.get_outputs())
        if found_in != inputs or found_out != outputs:
            raise BundleError(f"{graph}: inputs {found_in} / outputs {found_out}; expected {inputs} / {outputs}")
        for arg in [*sess.get_inputs(), *sess.get_outputs()]:
            want = expected_dims.get(arg.name)
            if want is not None and len(arg.shape) == 2 and isinstance(arg.shape[1], int) and arg.shape[1] != want:
                raise BundleError(f"{graph}: {arg.name} has width {arg.shape[1]}; the manifest implies {want}")
