"""export: export a trained model to an ONNX bundle."""
