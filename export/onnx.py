"""Export a trained run to a model bundle (two ONNX graphs + wavelength grid + manifest).

The graphs are traced from the PyTorch model with the TorchScript-based exporter (``dynamo=False``;
FrEIA's reverse pass exports cleanly with it) at a chosen opset, with a dynamic batch axis: the two standard
graphs, the hoisted pair (``export.hoisted``) and the posterior summary (``export.summary``). The
manifest is written through ``runtime.bundle.write_manifest`` so the reader's validation applies.
A run trained with an input mask (``spectra.contracts.masks``) gets the manifest entry ``input_mask`` copied from its
``run.json``, checked against the bundle's pixels and against the mask the model (and so its feature graph) applies;
a run without one gets no entry.
``--precision int8 fp16 bf16`` then adds verified reduced-precision variants (``export.variants``).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from runtime.bundle import bias_correction_from, hash_files, write_manifest
from spectra.common.hashing import sha256_file
from spectra.contracts.density import LOG_DENSITY
from spectra.contracts.manifest import FORMAT_VERSION, GRAPHS, HOISTED, SNR_UNIT, SUMMARY
from spectra.contracts.masks import input_mask, mask_from_record
from spectra.contracts.streams import scheme as random_stream_scheme
from spectra.forward.degrade import snr_per_pixel
from spectra.wavegrid import wavelength_sha256
from training.fit import load_run, recorded_schema
from training.model import CINN

from .summary import export_summary
from .weights import half_weights

__all__ = ["DEFAULT_OPSET", "export_bundle"]

DEFAULT_OPSET = 17


class FeatureGraph(nn.Module):
    def __init__(self, model: CINN):
        super().__init__()
        self.model = model

    def forward(self, flux: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
        return self.model.features(flux, snr)


class InverseFlowGraph(nn.Module):
    def __init__(self, model: CINN):
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, log_jac_det = self.model.reverse(z, features)
        return x, log_jac_det.reshape(-1)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def export_graphs(model: CINN, out: Path, opset: int) -> None:
    model = model.float().eval()
    b = 2
    flux = torch.ones(b, model.n_pixels)
    snr = torch.full((b, 1), 100.0)
    with torch.no_grad():
        features = model.features(flux, snr)
    z = torch.zeros(b, model.n_params)
    specs = [
        (FeatureGraph(model), (flux, snr), "feature_extractor"),
        (InverseFlowGraph(model), (z, features), "inverse_flow"),
    ]
    for module, args, key in specs:
        filename, inputs, outputs = GRAPHS[key]
        dynamic = {name: {0: "batch"} for name in (*inputs, *outputs)}
        torch.onnx.export(module, args, str(out / filename), input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)
    # the PCA basis (most of the feature graph's bytes) in half the file when its values are float16 values already
    # (lossless, so a lower size threshold than the emulator's rounding export; ``training.stream.pca_basis`` rounds
    # the basis so since session 22)
    half_weights(out / GRAPHS["feature_extractor"][0], min_size=1 << 16, exact_only=True)


def export_hoisted(model: CINN, out: Path, opset: int) -> dict:
    """The two extra graphs of ``export.hoisted`` (condition term of the subnets computed once per spectrum)."""
    from .hoisted import hoisted_modules

    projection, flow = hoisted_modules(model.float().eval())
    features = torch.zeros(2, model.n_features)
    with torch.no_grad():
        cond = projection(features)
    z = torch.zeros(2, 3, model.n_params)
    torch.onnx.export(projection, (features,), str(out / HOISTED["projection"]), input_names=["features"],
                      output_names=["cond_proj"], dynamic_axes={"features": {0: "batch"}, "cond_proj": {0: "batch"}},
                      opset_version=opset, dynamo=False)
    torch.onnx.export(flow, (z, cond), str(out / HOISTED["flow"]), input_names=["z", "cond_proj"],
                      output_names=["x", "log_jac_det"],
                      dynamic_axes={"z": {0: "batch", 1: "samples"}, "cond_proj": {0: "batch"},
                                    "x": {0: "batch", 1: "samples"}, "log_jac_det": {0: "batch", 1: "samples"}},
                      opset_version=opset, dynamo=False)
    return {
        "condition_projection": {"file": HOISTED["projection"], "inputs": ["features"], "outputs": ["cond_proj"],
                                 "description": "W_c c + b of every subnet's first layer, once per spectrum"},
        "hoisted_flow": {"file": HOISTED["flow"], "inputs": ["z", "cond_proj"], "outputs": ["x", "log_jac_det"],
                         "description": "inverse flow on z [B, S, D] with the per-spectrum projections [B, K] "
                                        "broadcast over the S samples; same x and log_jac_det as inverse_flow"},
    }


def input_mask_entry(model: CINN, config, meta: dict, wavelength: np.ndarray, run: Path) -> dict | None:
    """The manifest's ``input_mask`` entry: the run's recorded description (recomputed from its config on the bundle's
    pixels for a run whose run.json lacks it), checked to describe exactly the mask and fill the model applies on
    these pixels. None for a model without a mask. ValueError, one line, when they disagree."""
    if not config.input_mask:
        return None
    record = meta.get("input_mask") or input_mask(wavelength, config.input_mask)[1]
    try:
        mask, fill = mask_from_record(record, wavelength)
    except ValueError as exc:
        raise ValueError(f"{run}: the recorded input mask does not fit the bundle's pixel grid: {exc}") from None
    if not np.array_equal(mask, model.input_mask.numpy()) or fill != float(model.input_fill):
        raise ValueError(f"{run}: run.json's input_mask ({record.get('n_masked')} pixels, fill {fill}) is not the mask "
                         f"the model applies ({int(model.input_mask.sum())} pixels, fill {float(model.input_fill)})")
    return record


def export_bundle(run: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, precisions: tuple[str, ...] = (),
                  bias_correction: str | None = None, overwrite: bool = False, grid: str | Path | None = None,
                  log=print) -> Path:
    """Write the bundle for ``run`` into ``out``; returns ``out``.

    ``bias_correction``: None (the default) stores none; a path stores coefficients fitted with ``catalog
    calibrate``; ``"paper"`` stores Table B.3 of the paper. Not stored unless asked: Table B.3 was fitted to the
    paper's NLTE network, and stored by default it made ``runtime process --bias-correction`` apply another
    network's correction to this one. Stored coefficients are applied only on request at runtime. Parameters, bounds,
    transforms, S/N range and continuum convention are copied from the run's recorded schema, never from the
    live ``spectra.schema``. An existing bundle at ``out`` is replaced only with ``overwrite``.
    ``precisions``: reduced-precision variants to add and verify (``export.variants``) on ``grid`` (default: the
    run's training grid).
    """
    run, out = Path(run), Path(out)
    model, config, meta = load_run(run)
    trained_for = recorded_schema(run, meta, model.n_params,
                                  "the bundle describes what the network was really trained for")
    names = [p["name"] for p in trained_for["parameters"]]
    grid_path = Path(meta.get("grid", ""))
    if grid_path.is_file():
        from spectra.stores.gridstore import GridReader

        with GridReader(grid_path) as reader:  # training.data reads the HR pixels of a grid with a margin
            wavelength, definition = reader.hr_wavelength, reader.hr_definition
        grid_sha = sha256_file(grid_path)
    else:
        from spectra.wavegrid import hr_grid

        standard = hr_grid()  # not `grid`: that is the argument the variants are verified on
        if standard.size != model.n_pixels:
            raise ValueError(f"the training grid {grid_path} is gone and the model's {model.n_pixels} pixels "
                             "are not the standard HR grid: cannot record the pixel grid")
        wavelength, definition = standard.wave, standard.definition
        grid_sha = ("none: trained on a fresh emulated stream" if meta.get("stream")
                    else "unavailable (grid file missing at export)")
    mask_entry = input_mask_entry(model, config, meta, wavelength, run)  # before anything is written
    _prepare_output(out, overwrite)
    export_graphs(model, out, opset)
    np.save(out / "wavelength.npy", wavelength)
    pixel = float(np.median(np.diff(wavelength)))
    correction = bias_correction_from(bias_correction, names) if bias_correction else None
    manifest = {
        "format_version": FORMAT_VERSION,
        "parameters": trained_for["parameters"],
        "continuum": trained_for["continuum"],
        "x_mean": model.x_mean.tolist(),
        "x_std": model.x_std.tolist(),
        "pixel_grid": {
            "definition": definition, "n_pixels": int(wavelength.size), "medium": "air", "unit": "Angstrom",
            "first": float(wavelength[0]), "last": float(wavelength[-1]), "pixel_width": pixel,
            "sha256": wavelength_sha256(wavelength),
            "file": "wavelength.npy",
        },
        "flux_convention": "continuum-normalised, radial-velocity corrected (rest frame), on the pixel grid above",
        **({"input_mask": mask_entry} if mask_entry else {}),
        "snr_convention": {
            "unit": SNR_UNIT,
            "definition": "mean S/N per Angstrom; on pixels of width w A the per-pixel S/N is S/N * sqrt(w)",
            "per_pixel_factor": float(snr_per_pixel(1.0, pixel)),
            "trained_range": list(trained_for["snr_range"]),
            "trained_values": trained_for["snr_values"],
        },
        "n_features": int(model.n_features),
        "n_params": int(model.n_params),
        "graphs": {key: {"file": f, "inputs": list(i), "outputs": list(o), "batch_axis": 0}
                   for key, (f, i, o) in GRAPHS.items()},
        "log_density": LOG_DENSITY,
        "random_streams": random_stream_scheme(),
        "opset": opset,
        "bias_correction": correction,
        "provenance": {
            "training_run": str(run.resolve()), "config": json.loads(config.to_json()), "epoch": meta.get("epoch"),
            "grid": str(grid_path), "grid_sha256": grid_sha, "grid_attrs": meta.get("grid_attrs", {}),
            "software": {p: _version(p) for p in ("cinn4most", "torch", "FrEIA", "onnx", "onnxruntime", "numpy")},
            "python": platform.python_version(), "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    }
    manifest["extra_graphs"] = export_hoisted(model, out, opset)
    manifest["extra_graphs"]["posterior_summary"] = export_summary(manifest, out / SUMMARY, opset)
    manifest["files"] = hash_files(out, manifest)
    write_manifest(out, manifest)
    if precisions:
        from .variants import quantize_bundle

        quantize_bundle(out, list(precisions), grid=grid, log=log)
    return out


#: what ``export onnx`` writes into a bundle folder (it may replace these, and nothing else)
_BUNDLE_FILES = ("manifest.json", "wavelength.npy", "*.onnx")


def _prepare_output(out: Path, overwrite: bool) -> None:
    """Create ``out``; an existing bundle is replaced only with ``overwrite``; a folder holding anything else
    is refused (export never deletes or replaces files it did not write)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "manifest.json").is_file():
            raise FileExistsError(f"{out} is a folder with other files in it and not a model bundle; choose an "
                                  "empty or new --out")
        if not overwrite:
            raise FileExistsError(f"{out} holds a model bundle; add --overwrite to replace it")
        for pattern in _BUNDLE_FILES:
            for file in out.glob(pattern):
                file.unlink()
    out.mkdir(parents=True, exist_ok=True)
