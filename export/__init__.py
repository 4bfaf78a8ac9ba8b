"""export: trained cINN -> self-describing ONNX model bundle."""
