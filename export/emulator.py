"""Export a trained spectral emulator (``training.emulator``) to ONNX with a manifest, and check the parity.

The folder gets ``emulator.onnx`` (input ``labels`` [B, 25] float32 in physical units, in the order of
``inputs``; output ``flux`` [B, P] float32, unrotated), ``wavelength.npy`` and ``emulator.json``: inputs, units,
bounds, transforms, the pixel grid's sha256, the training grids, the measured errors when an
``emulator_errors.json`` is given, and the sha256 of every file, as in the model bundle's manifest.

An emulator trained on grids stored with a wavelength margin (``spectra.wavegrid.hr_grid(margin)``) outputs the
margin too (``training.emulator``: its output is rotated before use, and the rotation needs it). The manifest's
``output`` therefore also records ``margin`` [Å] and ``hr_pixel_grid_sha256``, the hash of the 4MOST HR pixels
among its output pixels: what ``export attach-emulator`` compares with a bundle's pixel grid, which is always the HR
one (margin 0 and the full grid's hash for an emulator without a margin, or on pixels that are no HR grid at all).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from spectra import schema
from spectra.common.hashing import sha256_file
from spectra.contracts.manifest import EMULATOR
from spectra.wavegrid import wavelength_sha256
from training.emulator import EMULATOR_INPUTS, load_emulator

from .resim import output_pixels
from .weights import half_weights

__all__ = ["EMULATOR_FORMAT", "export_emulator", "onnx_parity"]

EMULATOR_FORMAT = "cinn4most-emulator/1"


def export_emulator(run: str | Path, out: str | Path, errors: str | Path | None = None, opset: int = 17,
                    overwrite: bool = False, weights: str = "fp32") -> Path:
    """Write the emulator of ``run`` into the folder ``out``; returns it. ``weights="fp16"`` stores the large
    weight matrices in half precision (``half_weights``; the output layer is 512 x 25 200 values)."""
    model, record, wave = load_emulator(run)
    out = Path(out)
    if out.exists() and not (out / "emulator.json").is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out} is a folder with other files in it; choose a new --out")
    if (out / "emulator.json").is_file() and not overwrite:
        raise FileExistsError(f"{out} holds an exported emulator; add --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, len(EMULATOR_INPUTS))
    torch.onnx.export(model, (example,), str(out / EMULATOR), input_names=["labels"], output_names=["flux"],
                      dynamic_axes={"labels": {0: "batch"}, "flux": {0: "batch"}}, opset_version=opset, dynamo=False)
    if weights == "fp16":
        half_weights(out / EMULATOR)
    elif weights != "fp32":
        raise ValueError(f"weights must be fp32 or fp16, got {weights!r}")
    np.save(out / "wavelength.npy", wave)
    manifest = {
        "format": EMULATOR_FORMAT,
        "inputs": [{k: schema.parameter(n).as_dict()[k] for k in ("name", "unit", "transform", "lower", "upper")}
                   for n in EMULATOR_INPUTS],
        "output": {"name": "flux", "rotation": "none: apply v_broad with spectra.forward.rotation.Rotator",
                   "continuum": "true continuum (synthesis)", "n_pixels": int(wave.size),
                   "pixel_grid_sha256": wavelength_sha256(wave), **output_pixels(wave)},
        "training": {k: record[k] for k in ("grids", "n_train", "n_val", "val_rms_median", "config", "parameters",
                                             "cpu_seconds")},
        "errors": None,
        "opset": opset,
        "weights": "float32" if weights == "fp32" else "large weight matrices stored as float16, computed in float32",
    }
    if errors:
        table = json.loads(Path(errors).read_text())
        manifest["errors"] = {k: v for k, v in table.items() if k != "rms"}
    manifest["files"] = {name: sha256_file(out / name) for name in (EMULATOR, "wavelength.npy")}
    (out / "emulator.json").write_text(json.dumps(manifest, indent=1))
    return out


def onnx_parity(run: str | Path, exported: str | Path, labels: np.ndarray) -> float:
    """Largest |ONNX Runtime - PyTorch| flux difference for ``labels`` (N, 25)."""
    import onnxruntime as ort

    model, _, _ = load_emulator(run)
    with torch.no_grad():
        expected = model(torch.from_numpy(labels.astype(np.float32))).numpy()
    session = ort.InferenceSession(str(Path(exported) / EMULATOR), providers=["CPUExecutionProvider"])
    got = session.run(None, {"labels": labels.astype(np.float32)})[0]
    return float(np.max(np.abs(got - expected)))
