"""The model bundle's layout: format version, file names, required manifest fields, the S/N unit.

``export`` writes bundles and ``runtime.bundle`` reads and validates them (``write_manifest`` / ``load_bundle``,
one validator for both directions); the names both sides must spell the same way are defined here, so that an
exporter and a reader of the same software cannot disagree on a file name or a field.
"""

from __future__ import annotations

__all__ = ["EMULATOR", "ENGINES", "ENGINE_PRECISIONS", "FORMAT_VERSION", "GRAPHS", "HOISTED", "REQUIRED", "SNR_UNIT",
           "SUMMARY", "VARIANTS"]

#: the manifest's ``format_version``; a reader refuses any other
FORMAT_VERSION = "cinn4most-bundle/2"
#: the two graphs every bundle has: key -> (file, input names, output names)
GRAPHS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "feature_extractor": ("feature_extractor.onnx", ("flux", "snr"), ("features",)),
    "inverse_flow": ("inverse_flow.onnx", ("z", "features"), ("x", "log_jac_det")),
}
#: optional faster graphs (``export.hoisted``): role -> file
HOISTED: dict[str, str] = {"projection": "condition_projection.onnx", "flow": "hoisted_flow.onnx"}
#: the posterior summary as a graph (``export.summary``); its manifest entry records the quantile levels
SUMMARY = "posterior_summary.onnx"
#: the spectral emulator of the re-simulation check (``export attach-emulator``)
EMULATOR = "emulator.onnx"
#: reduced-precision variants of the hoisted flow a bundle may carry (``export quantize``); fp32 is the reference
VARIANTS: tuple[str, ...] = ("int8", "fp16", "bf16")
#: the CPU inference engines a bundle's graphs run on (``runtime.engines``); onnxruntime is the reference
ENGINES: tuple[str, ...] = ("onnxruntime", "openvino")
#: precisions an engine reaches through its own precision hint on the fp32 graphs (no variant file), each verified
#: against onnxruntime fp32 and recorded in the manifest's ``engine_precisions.<engine>.<precision>``
ENGINE_PRECISIONS: dict[str, tuple[str, ...]] = {"openvino": ("bf16",)}
#: fields every manifest has
REQUIRED: tuple[str, ...] = ("format_version", "parameters", "x_mean", "x_std", "pixel_grid", "snr_convention",
                             "n_features", "n_params", "graphs", "opset", "provenance", "files")
#: ``snr_convention.unit``: the S/N a bundle's feature extractor takes
SNR_UNIT = "per Angstrom"
