"""A trained checkpoint outside training: rebuilt with its test data (``inference``), the
``Detector`` API (``detector``), and ONNX / TorchScript export and its runner (``export``)."""
