"""LSTM inference service: ONNX Runtime behind FastAPI."""
