"""runtime: model bundles, ONNX Runtime posterior sampling and (next) survey processing; no torch here."""
