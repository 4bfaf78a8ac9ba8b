"""The model bundle: the contract between training and deployment (numpy + onnxruntime only).

A bundle is a folder::

    feature_extractor.onnx   flux [B, P] float32, snr [B, 1] float32  ->  features [B, F]
    inverse_flow.onnx        z [N, D] float32, features [N, F] float32 ->  x [N, D], log_jac_det [N]
    wavelength.npy           the pixel grid (air, Å) the model was trained on
    manifest.json            everything needed to turn x into physical parameters (below)

``x`` is the network's standardised target space; physical value = inverse_transform(x * x_std + x_mean)
with the per-parameter transform (identity or log10). ``log_jac_det`` = log|det dx/dz|, so
log p(x | spectrum) = log N(z; 0, I) - log_jac_det.

``export`` writes bundles with :func:`write_manifest` (so writer and reader cannot drift apart);
``runtime`` reads them with :func:`load_bundle`, which validates everything it can before a survey
starts and names the file and field of any problem.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "GRAPHS",
    "HOISTED",
    "Bundle",
    "BundleError",
    "Manifest",
    "load_bundle",
    "sha256_file",
    "write_manifest",
]

FORMAT_VERSION = "cinn4most-bundle/1"
#: graph file -> (input names, output names)
GRAPHS = {
    "feature_extractor": ("feature_extractor.onnx", ("flux", "snr"), ("features",)),
    "inverse_flow": ("inverse_flow.onnx", ("z", "features"), ("x", "log_jac_det")),
}
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
#: optional faster graphs (``export.hoisted``): file names
HOISTED = {"projection": "condition_projection.onnx", "flow": "hoisted_flow.onnx"}
_REQUIRED = ("format_version", "parameters", "x_mean", "x_std", "pixel_grid", "snr_convention", "n_features",
             "n_params", "graphs", "opset", "provenance")


class BundleError(ValueError):
    """A model bundle is missing, malformed, or does not fit the data it is asked to process."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    def bias_correction(self) -> dict | None:
        return self.raw.get("bias_correction")

    def to_physical(self, x: np.ndarray) -> np.ndarray:
        """Standardised network outputs (..., D) -> physical units."""
        net = np.asarray(x, dtype=float) * self.x_std + self.x_mean
        out = np.empty_like(net)
        for j, transform in enumerate(self.transforms):
            out[..., j] = 10.0 ** net[..., j] if transform == "log10" else net[..., j]
        return out


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    wavelength: np.ndarray
    sha256: str  # hash of the manifest + graphs: identifies the model in catalogues

    def graph_path(self, key: str) -> Path:
        return self.path / GRAPHS[key][0]

    @property
    def has_hoisted(self) -> bool:
        extra = self.manifest.raw.get("extra_graphs") or {}
        return "hoisted_flow" in extra and all((self.path / f).is_file() for f in HOISTED.values())

    def check_wavelength(self, wavelength: np.ndarray, source: str) -> None:
        """Raise a :class:`BundleError` unless ``wavelength`` is the bundle's pixel grid."""
        wavelength = np.asarray(wavelength, dtype=float)
        if wavelength.shape != self.wavelength.shape:
            raise BundleError(f"{source}: flux has {wavelength.size} pixels; the model in {self.path} expects "
                              f"{self.wavelength.size} ({self.manifest.raw['pixel_grid']['definition']})")
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


def write_manifest(path: str | Path, manifest: dict) -> Path:
    """Validate and write ``manifest.json`` (used by ``export``)."""
    _validate(manifest, Path(path) / "manifest.json")
    out = Path(path) / "manifest.json"
    out.write_text(json.dumps(manifest, indent=2))
    return out


def _validate(raw: dict, where: Path) -> None:
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise BundleError(f"{where}: missing field(s) {', '.join(missing)}")
    if raw["format_version"] != FORMAT_VERSION:
        raise BundleError(f"{where}: format_version is {raw['format_version']!r}; this software reads "
                          f"{FORMAT_VERSION!r}. Re-export the model with a matching version of `export`.")
    d = raw["n_params"]
    if len(raw["parameters"]) != d or len(raw["x_mean"]) != d or len(raw["x_std"]) != d:
        raise BundleError(f"{where}: parameters, x_mean and x_std must all have n_params = {d} entries")
    for p in raw["parameters"]:
        for key in ("name", "unit", "transform", "lower", "upper"):
            if key not in p:
                raise BundleError(f"{where}: parameter entry {p.get('name', p)} lacks {key!r}")
        if p["transform"] not in ("identity", "log10"):
            raise BundleError(f"{where}: parameter {p['name']} has unknown transform {p['transform']!r}")
    for key, (filename, inputs, outputs) in GRAPHS.items():
        graph = raw["graphs"].get(key)
        if graph is None:
            raise BundleError(f"{where}: graphs lacks {key!r}")
        if tuple(graph["inputs"]) != inputs or tuple(graph["outputs"]) != outputs or graph["file"] != filename:
            raise BundleError(f"{where}: graph {key} must be {filename} with inputs {inputs} and outputs {outputs}")


def load_bundle(path: str | Path, check_graphs: bool = True) -> Bundle:
    """Read and validate a bundle folder. With ``check_graphs`` the ONNX graphs' input and output names
    and shapes are checked against the manifest (needs onnxruntime)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"model bundle {path} is not a folder (make one with `export onnx`)")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise BundleError(f"{path}: manifest.json is missing; not a model bundle")
    try:
        raw = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from None
    _validate(raw, manifest_path)
    manifest = Manifest(raw)
    for key, (filename, _, _) in GRAPHS.items():
        if not (path / filename).is_file():
            raise BundleError(f"{path}: {filename} ({key} graph) is missing")
    wave_path = path / "wavelength.npy"
    if not wave_path.is_file():
        raise BundleError(f"{path}: wavelength.npy (the model's pixel grid) is missing")
    wavelength = np.load(wave_path)
    if wavelength.size != manifest.n_pixels:
        raise BundleError(f"{wave_path}: {wavelength.size} pixels, manifest says {manifest.n_pixels}")
    h = hashlib.sha256(manifest_path.read_bytes())
    for filename, _, _ in GRAPHS.values():
        h.update(sha256_file(path / filename).encode())
    bundle = Bundle(path, manifest, wavelength, h.hexdigest())
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
