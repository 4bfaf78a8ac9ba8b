"""Put a spectral emulator into a model bundle for the re-simulation check, and calibrate its POOR_FIT threshold.

``python -m export attach-emulator --bundle B --emulator EMU`` copies ``EMU/emulator.onnx`` (from ``export
emulator``) into the bundle and records in the manifest (``emulator``): its inputs in order, how the inputs the
cINN does not infer are filled (the prior's [Fe/H] trends, ``spectra.prior.label_trends``), and its model error
(the per-spectrum rms median on held-out PySME spectra from ``training emulator-evaluate``, else its validation
rms), which ``runtime.resim`` adds to the noise. The pixel grids must agree: the emulator's output pixels are the
bundle's, or the bundle's are the 4MOST HR pixels of the emulator's HR grid with a margin (an emulator trained on
grids stored with one, ``spectra.wavegrid.hr_grid(margin)``, outputs the margin so that the rotation sees real
spectrum beyond the window edges). The margin is then recorded as ``emulator.margin`` [Å] and ``runtime.resim``
rotates on it and crops to the bundle's pixels; without a margin the entry has no such key, as before.

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
from spectra.forward.margin import crop, hr_index
from spectra.prior import label_trends
from spectra.wavegrid import HR_PIXEL, hr_grid, wavelength_sha256

__all__ = ["attach_emulator", "calibrate_poor_fit", "output_pixels"]


def output_pixels(wave: np.ndarray) -> dict:
    """``{"margin": Å, "hr_pixel_grid_sha256": ...}`` of an emulator whose output pixels are ``wave``, as ``export
    emulator`` records them: the margin of the HR grid they are (0 for the HR grid itself and for pixels that are no
    HR grid), and the hash of the HR pixels among them (of all of them when there is nothing to crop, as
    ``spectra.forward.margin.hr_index`` decides for every reader of grid flux)."""
    wave = np.asarray(wave, dtype=float)
    index = hr_index(wave)
    hr = crop(wave, index)
    # an HR grid with a margin starts ``margin`` before its first HR pixel (hr_index checked that it is one)
    margin = 0.0 if index is None else round(round((hr[0] - wave[0]) / HR_PIXEL) * HR_PIXEL, 6)
    return {"margin": margin, "hr_pixel_grid_sha256": wavelength_sha256(hr)}


def _emulator_margin(record: dict, emulator_dir: Path, bundle_wavelength: np.ndarray) -> float:
    """The margin [Å] of the emulator's output pixels around the bundle's pixel grid: 0 when they are the bundle's,
    > 0 when the bundle's pixels are the HR pixels of ``hr_grid(margin)`` and the emulator outputs that grid.
    Emulators exported before margins were recorded get them from their (hash-checked) ``wavelength.npy``.
    ValueError, one line, for any other pair of grids."""
    output, target = record["output"], wavelength_sha256(bundle_wavelength)
    if output["pixel_grid_sha256"] == target:
        return 0.0
    pixels = {k: output[k] for k in ("margin", "hr_pixel_grid_sha256") if k in output}
    if len(pixels) < 2 and (emulator_dir / "wavelength.npy").is_file():
        pixels = output_pixels(np.load(emulator_dir / "wavelength.npy", allow_pickle=False))
    margin = pixels.get("margin", 0.0)
    if not isinstance(margin, int | float) or isinstance(margin, bool) or margin <= 0 \
            or pixels.get("hr_pixel_grid_sha256") != target:
        raise ValueError(f"{emulator_dir}: the emulator's pixel grid is not the bundle's, nor an HR grid with a margin "
                         f"around it (emulator: {output.get('n_pixels')} pixels, margin {margin!r} A; bundle: "
                         f"{bundle_wavelength.size} pixels)")
    try:
        consistent = hr_grid(float(margin)).sha256() == output["pixel_grid_sha256"]
    except ValueError:  # not a multiple of the pixel
        consistent = False
    if not consistent:
        raise ValueError(f"{emulator_dir}: emulator.json records a {margin!r} A margin, but the emulator's "
                         f"{output.get('n_pixels')} pixels are not the HR grid with that margin; re-export it")
    return float(margin)


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
    margin = _emulator_margin(record, emulator_dir, bundle.wavelength)
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
    if margin:  # no key without a margin: such bundles stay byte for byte what they were
        entry["margin"] = margin
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
