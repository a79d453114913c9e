"""What a CAM explains: a callable target read on the model's output, as pytorch-grad-cam's
`ClassifierOutputTarget(3)` — a class, the contrast of two classes, a sigmoid (multi-label)
output, a regression output, or any function of the output.

A target works on a whole batch: `target(out, rows)` gives one score per row of `out`
(B', n_outputs), where `rows[j]` is the image row j belongs to (masked passes of Score-CAM
run many rows per image; by default row j is image j). `bind(out)` fills what depends on
the prediction (the predicted class, the runner-up) from the first, unmasked pass, so every
later pass explains the same thing. `index` is the output each image's map is about (the
class a result is named after). Exact CAM reads the head's weights instead of gradients:
`cam_weights(W)` gives the channel weights whose map equals the target's score exactly when
the head is GAP -> Linear without bias (z = W . GAP(A), so a linear target's map is linear).

    ClassTarget(3)                 # z_3 (None: each image's predicted class)
    ContrastTarget(0, 1)           # z_0 - z_1: "why 0 and not 1"; CAM head: (w_0 - w_1) . A exactly
    SigmoidTarget(2)               # sigmoid(z_2), a multi-label output's probability
    RegressionTarget(0)            # the raw value of output 0 (a 1-D output: the value itself)
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from camkit.errors import CamkitError

Spec = int | Sequence[int | None] | Tensor | None


def _rows(out: Tensor, rows: Tensor | None) -> Tensor:
    return torch.arange(len(out), device=out.device) if rows is None else rows.to(out.device)


def _indices(spec: Spec, n: int, default: Tensor, n_out: int, what: str = "target") -> Tensor:
    """One output index per image from an int, a sequence (None: the default's entry) or a
    tensor; checked against the number of outputs."""
    if spec is None:
        t = default
    elif isinstance(spec, int):
        t = torch.full((n,), spec, dtype=torch.long, device=default.device)
    else:
        if isinstance(spec, Sequence) and any(v is None for v in spec):
            spec = [int(d) if v is None else v for v, d in zip(spec, default.tolist())]
        t = torch.as_tensor(spec, dtype=torch.long, device=default.device).flatten()
        if len(t) != n:
            raise CamkitError(f"{len(t)} targets for a batch of {n} images")
    if len(t) and (t.min() < 0 or t.max() >= n_out):
        raise CamkitError(f"{what} class index out of range 0..{n_out - 1}")
    return t


class OutputTarget:
    """Base: subclasses give `score(out, index_rows)`; `index` is bound per image."""
    classwise = True   # a score over class logits (Score-CAM may read it on probabilities)
    linear = True      # a linear function of the logits (exact CAM can explain it)
    bound = False      # index filled for a batch by `bind`

    def __init__(self, index: Spec = None):
        self.spec = index
        self.index: Tensor | None = None

    def bind(self, out: Tensor) -> "OutputTarget":
        """A copy with `index` filled for this batch (None: each image's argmax)."""
        out = out.reshape(len(out), -1)
        bound = object.__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound.index = _indices(self.spec, len(out), out.argmax(1), out.shape[1])
        bound.bound = True
        return bound

    def __call__(self, out: Tensor, rows: Tensor | None = None) -> Tensor:
        if self.index is None:
            raise CamkitError("a target must be bound to a batch (target.bind(logits)) before it is read")
        out = out.reshape(len(out), -1)
        return self.score(out, _rows(out, rows))

    def score(self, out: Tensor, rows: Tensor) -> Tensor:
        return out.gather(1, self.index.to(out.device)[rows][:, None])[:, 0]

    def cam_weights(self, weight: Tensor) -> Tensor:
        """(B, K) channel weights of exact CAM for the head's (classes, K) weight matrix."""
        if not self.linear:
            raise CamkitError(f"exact CAM explains a class or a contrast of classes, not a "
                              f"{type(self).__name__}; use --method gradcam")
        return weight[self.index.to(weight.device)]


class ClassTarget(OutputTarget):
    """The logit z_c of class c (an int, one per image, or None: the predicted class)."""


class ContrastTarget(OutputTarget):
    """z_a - z_b: "why a and not b" (FinerCAM's contrast in pytorch-grad-cam and torchcam).
    a None: each image's predicted class; b None: the most likely other class (with two
    classes, the other one). For the CAM head the map is exactly (w_a - w_b) . A_k."""

    def __init__(self, a: Spec = None, b: Spec = None):
        super().__init__(a)
        self.other_spec, self.other = b, None

    def bind(self, out: Tensor) -> "ContrastTarget":
        bound = super().bind(out)
        out = out.reshape(len(out), -1)
        if out.shape[1] < 2:
            raise CamkitError("a contrast needs at least two classes")
        runner_up = out.scatter(1, bound.index[:, None], float("-inf")).argmax(1)
        bound.other = _indices(self.other_spec, len(out), runner_up, out.shape[1], "contrast")
        if (bound.other == bound.index).any():
            raise CamkitError("a contrast needs two different classes")
        return bound

    def score(self, out: Tensor, rows: Tensor) -> Tensor:
        other = self.other.to(out.device)[rows][:, None]
        return super().score(out, rows) - out.gather(1, other)[:, 0]

    def cam_weights(self, weight: Tensor) -> Tensor:
        return weight[self.index.to(weight.device)] - weight[self.other.to(weight.device)]


class SigmoidTarget(OutputTarget):
    """sigmoid(z_c): the probability of label c in a multi-label (per-class sigmoid) model."""
    linear = False

    def score(self, out: Tensor, rows: Tensor) -> Tensor:
        return torch.sigmoid(super().score(out, rows))


class RegressionTarget(OutputTarget):
    """The raw value of output `output` of a regression model (0 by default; a 1-D output is
    read as one column). Never the argmax: every image explains the same output."""
    classwise = False

    def __init__(self, output: int = 0):
        super().__init__(output)


class FunctionTarget(OutputTarget):
    """Any callable `fn(out) -> (B,)` scores (pytorch-grad-cam style, on the whole batch),
    or a list of per-image callables each reading its image's output row."""
    classwise = False
    linear = False

    def __init__(self, fn: Callable[[Tensor], Tensor] | Sequence[Callable[[Tensor], Tensor]]):
        super().__init__(None)
        self.fn = fn

    def score(self, out: Tensor, rows: Tensor) -> Tensor:
        if callable(self.fn):
            if len(torch.unique(rows)) != len(rows):  # masked passes: rows repeat an image
                return torch.stack([self.fn(out[j:j + 1]).reshape(-1)[0] for j in range(len(out))])
            return self.fn(out).reshape(-1)
        return torch.stack([self.fn[int(i)](out[j]).reshape(()) for j, i in enumerate(rows)])


def as_target(target: "OutputTarget | Callable | Spec") -> OutputTarget:
    """A target from what a caller may pass: None (each prediction), a class index, one per
    image, an OutputTarget, a callable or a list of per-image callables."""
    if isinstance(target, OutputTarget):
        return target
    if callable(target) and not isinstance(target, Tensor):
        return FunctionTarget(target)
    if isinstance(target, Sequence) and target and all(callable(t) for t in target):
        return FunctionTarget(list(target))
    return ClassTarget(target)
