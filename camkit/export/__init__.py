"""The explainer outside camkit's torch model: `onnx` (logits, probabilities and every class's
exact CAM as one ONNX graph, its sidecar and INT8 copy) and `engine` (which engine computes
exact CAM for `cam`, `predict` and `cam-eval`: the torch model or ONNX Runtime on that graph).

`camkit.export.X` still names what the flat `camkit.export` module held (`camkit.export.export_onnx`
is `camkit.export.onnx.export_onnx`), imported on first use.
"""

from camkit.core.lazy import forwarding

__getattr__ = forwarding(__name__, "camkit.export.onnx")
