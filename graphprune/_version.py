"""The package version: one place, read by the package, the ONNX manifest and pyproject.toml."""

__version__ = "0.1.0"
