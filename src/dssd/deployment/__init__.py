"""A trained checkpoint outside training: rebuilding it with its test data (``inference``), the
``Detector`` API (``detector``), and ONNX / TorchScript export with the exported file's runner
(``export``)."""
