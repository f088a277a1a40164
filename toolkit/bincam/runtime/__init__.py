"""The serving runtime: ONNX Runtime sessions and NumPy CAMs. Never imports torch."""
