"""camkit's version, the one place it is written: the package metadata reads it (pyproject's
dynamic version), `camkit --version` prints it, and the crawler's user agent and the ONNX
sidecar carry it. A module of its own so that those importers never import the package face
(`camkit/__init__.py`) from below."""

__version__ = "0.1.0"
