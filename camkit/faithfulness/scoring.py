"""The perturbation metrics' forward passes through ONNX Runtime, when it is installed and agrees
with torch: the model (normalised images in, logits out) exported once per evaluation with a
dynamic batch, its logits on real images checked against torch's before any is used.

    score = ort_scorer(model, x)      # None: no onnxruntime, an unexportable model, or a mismatch
    logits = score(batch)             # a (B, C) float32 tensor, like model(batch)

Why: a `camkit cam-eval` spends most of its time forwarding perturbed copies of its images
(deletion / insertion steps, ROAD's imputations) SCORE_BATCH at a time; onnxruntime's CPU
provider ran resnet18 @ 128 px at batch 112 1.4x faster than torch's BatchNorm-folded
channels-last twin here (scripts/bench_cam_eval.py; docs/benchmarks.md). The maps are never
taken from this graph, only the probabilities of perturbed images.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from camkit.export.engine import onnx_available
from camkit.export.onnx import DEFAULT_OPSET, session

PARITY = 1e-4   # largest |ORT - torch| logit accepted, relative to the largest |logit| (at least 1)


def model_graph(model: nn.Module, x: Tensor, opset: int = DEFAULT_OPSET) -> bytes:
    """`model` (input like x, output logits) as ONNX bytes with a dynamic batch dimension."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # the exporter's deprecation and tracer notes are not the user's
        torch.onnx.export(model.eval(), (x[:1],), buf, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    return buf.getvalue()


def agrees(got: Tensor, want: Tensor, tolerance: float = PARITY) -> bool:
    """Whether two logit tensors match within `tolerance` of the larger's magnitude (at least 1)."""
    return got.shape == want.shape and bool((got - want).abs().max() <= tolerance * float(want.abs().max().clamp_min(1)))


def ort_scorer(model: nn.Module, x: Tensor, threads: int | None = None) -> Callable[[Tensor], Tensor] | None:
    """A function batch -> logits running `model` in onnxruntime, or None when onnxruntime (or
    onnx) is missing, `x` is not on the CPU, torch cannot export the model, or the graph's
    logits on `x` differ from the model's by more than PARITY (the caller then uses torch).
    `threads`: onnxruntime's intra-op threads (default: torch's)."""
    if x.device.type != "cpu" or not onnx_available():
        return None
    try:
        sess = session(model_graph(model, x), threads=threads or torch.get_num_threads())
    except Exception:  # noqa: BLE001 - any model the exporter or onnxruntime cannot take runs in torch
        return None

    def score(batch: Tensor) -> Tensor:
        feed = np.ascontiguousarray(batch.detach().cpu().float().numpy())
        return torch.from_numpy(sess.run(None, {"x": feed})[0])

    with torch.no_grad():
        want = model(x).float()
    try:
        got = score(x)
    except Exception:  # noqa: BLE001 - a graph onnxruntime loads but cannot run
        return None
    return score if agrees(got, want, PARITY) else None
