"""Put a spectral emulator into a model bundle for the re-simulation check, and calibrate its POOR_FIT threshold.

``python -m export attach-emulator --bundle B --emulator EMU`` copies ``EMU/emulator.onnx`` (from ``export
emulator``) into the bundle and records in the manifest (``emulator``): its inputs in order, how the inputs the
cINN does not infer are filled (the prior's [Fe/H] trends, ``spectra.prior.label_trends``), and its model error
(the per-spectrum rms median on held-out PySME spectra from ``training emulator-evaluate``, else its validation
rms), which ``runtime.resim`` adds to the noise. The pixel grids must agree.

``python -m export calibrate-poor-fit --bundle B --catalog C`` sets ``emulator.poor_fit_chi2`` to a high
percentile (default 99) of ``chi2_resim`` in a catalogue of held-out synthetic spectra processed with that
bundle: on spectra the model describes, that fraction of rows stays unflagged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from runtime.bundle import hash_files, load_bundle, write_manifest
from spectra.common.hashing import sha256_file
from spectra.contracts.manifest import EMULATOR
from spectra.prior import label_trends
from spectra.wavegrid import wavelength_sha256

__all__ = ["attach_emulator", "calibrate_poor_fit"]



def attach_emulator(bundle_path: str | Path, emulator_dir: str | Path, overwrite: bool = False) -> dict:
    """Copy the exported emulator into the bundle and describe it in the manifest; returns the entry."""
    bundle_path, emulator_dir = Path(bundle_path), Path(emulator_dir)
    bundle = load_bundle(bundle_path, check_graphs=False)
    record_path = emulator_dir / "emulator.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} not found: export the emulator first (python -m export emulator)")
    record = json.loads(record_path.read_text())
    for name, digest in record.get("files", {}).items():
        if sha256_file(emulator_dir / name) != digest:
            raise ValueError(f"{emulator_dir / name}: sha256 differs from {record_path}; re-export the emulator")
    if record["output"]["pixel_grid_sha256"] != wavelength_sha256(bundle.wavelength):
        raise ValueError(f"{emulator_dir}: the emulator's pixel grid is not the bundle's")
    if bundle.emulator and not overwrite:
        raise FileExistsError(f"{bundle_path} already carries an emulator; add --overwrite to replace it")
    inputs = [entry["name"] for entry in record["inputs"]]
    trends = label_trends()
    fill = {name: trends[name] for name in inputs if name not in bundle.manifest.names}
    unknown = [n for n in inputs if n not in bundle.manifest.names and n not in fill]
    if unknown:
        raise ValueError(f"{emulator_dir}: inputs {unknown} are neither inferred by the bundle nor have a prior trend")
    errors = record.get("errors") or {}
    model_error = errors.get("rms_median", record["training"].get("val_rms_median"))
    entry = {"file": EMULATOR, "inputs": inputs, "fill": fill, "model_error": float(model_error),
             "model_error_source": "per-spectrum rms median on held-out PySME spectra" if "rms_median" in errors
             else "validation rms median during training (no held-out evaluation recorded)",
             "continuum": record["output"]["continuum"], "rotation": record["output"]["rotation"],
             "training": record["training"], "errors": errors or None, "poor_fit_chi2": None,
             "poor_fit_calibration": None}
    shutil.copyfile(emulator_dir / EMULATOR, bundle_path / EMULATOR)
    raw = dict(bundle.manifest.raw)
    raw["emulator"] = entry
    raw["files"] = hash_files(bundle_path, raw)
    write_manifest(bundle_path, raw)
    return entry


def calibrate_poor_fit(bundle_path: str | Path, catalog: str | Path, percentile: float = 99.0) -> dict:
    """Set the bundle's POOR_FIT threshold from ``chi2_resim`` of a catalogue of held-out synthetic spectra."""
    from catalog.writers import CatalogueStore

    bundle_path = Path(bundle_path)
    bundle = load_bundle(bundle_path, check_graphs=False)
    if not bundle.emulator:
        raise ValueError(f"{bundle_path} carries no emulator (export attach-emulator first)")
    store = CatalogueStore.open(catalog)
    if store.attrs.get("bundle_sha256") not in (None, bundle.sha256):
        raise ValueError(f"{catalog} was made with another bundle ({store.attrs.get('bundle_sha256', '')[:16]}...)")
    if "chi2_resim" not in store.columns:
        raise ValueError(f"{catalog} has no chi2_resim column: process held-out spectra with this bundle first")
    chi2 = store.column("chi2_resim")
    chi2 = chi2[np.isfinite(chi2)]
    if chi2.size < 20:
        raise ValueError(f"{catalog}: only {chi2.size} rows with chi2_resim; calibrate on at least 20")
    snr = store.column("snr")
    threshold = float(np.percentile(chi2, percentile))
    raw = dict(bundle.manifest.raw)
    raw["emulator"] = {**raw["emulator"], "poor_fit_chi2": threshold, "poor_fit_calibration": {
        "catalog": str(Path(catalog).resolve()), "rows": int(chi2.size), "percentile": percentile,
        "chi2_median": float(np.median(chi2)), "snr_values": [float(v) for v in np.unique(snr[np.isfinite(snr)])][:20],
        "survey": store.attrs.get("input")}}
    raw["files"] = hash_files(bundle_path, raw)
    write_manifest(bundle_path, raw)
    return raw["emulator"]
