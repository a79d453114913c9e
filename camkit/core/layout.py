"""The layout vocabulary shared by the model builder and the CAM package: how a layer's output
maps onto the image (`Layout`, `layout_of`, `prefix_tokens`) and which Linear is a CAM head's
(`cam_linear`).

A CAM needs a (B, K, h, w) activation. CNN bodies give one directly; transformers do not:
a ViT / DeiT block gives tokens (B, N, K) — class / distillation tokens first, then the
h x w patch grid row by row — and timm's Swin stages and ConvNeXt's MLP give channels-last
(B, h, w, K). `Layout` says which of these an output is, judged from its shape and the
input's size (an output is spatial when its grid is the input divided by one stride:
h = ceil(H / s), w = ceil(W / s)), and turns it (and its gradient, the same way) into
channels-first; the dropped prefix tokens carry no place in the image.

It sits below both camkit.train.models (whose CAM head pools any layout) and camkit.cam (which reads
any layer), as timm keeps its layout words in timm/layers/format.py: building or loading a
model does not import the CAM package. camkit.cam.layers re-exports every name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

MAX_PREFIX = 8  # class, distillation and register tokens: at most this many are looked for


@dataclass(frozen=True)
class Layout:
    """How one layer's output maps onto the image: 'nchw', 'nhwc' or 'tokens' (with
    `prefix` leading tokens dropped and the rest read as an h x w grid)."""
    kind: str
    h: int
    w: int
    prefix: int = 0

    def to_cf(self, t: Tensor) -> Tensor:
        """(B, K, h, w) view of an output (or of its gradient) in this layout."""
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        return t[:, self.prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], self.h, self.w)

    def channel_dim(self) -> int:
        return 1 if self.kind == "nchw" else -1

    def zero_channels(self, raw: Tensor, channels: Tensor) -> Tensor:
        """Copies of one image's output (1, ...) with channel channels[j] set to 0 in copy j
        over the image's positions (prefix tokens kept): Ablation-CAM's ablated activations."""
        out = raw.expand(len(channels), *raw.shape[1:]).clone()
        rows = torch.arange(len(channels), device=raw.device)
        if self.kind == "nchw":
            out[rows, channels] = 0
        elif self.kind == "nhwc":
            out.permute(0, 3, 1, 2)[rows, channels] = 0
        else:
            out[:, self.prefix:].transpose(1, 2)[rows, channels] = 0
        return out


def _grid(h: int, w: int, size: tuple[int, int]) -> bool:
    """True when an h x w grid is the input H x W divided by one stride s >= 1."""
    H, W = size
    if not (0 < h <= H and 0 < w <= W):
        return False
    s = max(1, round(H / h))
    return h in (math.ceil(H / s), H // s) and w in (math.ceil(W / s), W // s) and h * w > 1


def layout_of(shape: Sequence[int], size: tuple[int, int], prefix: int | None = None) -> Layout | None:
    """The layout of an output of `shape` for an input of `size` (H, W), or None when it is
    not a spatial map. `prefix` is the model's declared number of leading tokens (timm's
    `num_prefix_tokens`); when unknown, 0..MAX_PREFIX are tried."""
    if len(shape) == 4:
        if _grid(shape[2], shape[3], size):
            return Layout("nchw", shape[2], shape[3])
        if _grid(shape[1], shape[2], size):
            return Layout("nhwc", shape[1], shape[2])
        return None
    if len(shape) == 3:
        n, H, W = shape[1], *size
        for p in ([prefix] if prefix is not None else range(MAX_PREFIX + 1)):
            cells = n - p
            if cells < 2:
                continue
            h = round(math.sqrt(cells * H / W))
            if h and cells % h == 0 and _grid(h, cells // h, size):
                return Layout("tokens", h, cells // h, p)
    return None


def prefix_tokens(model: nn.Module) -> int | None:
    """timm's declared number of class / distillation / register tokens, if any module says."""
    for m in model.modules():
        p = getattr(m, "num_prefix_tokens", None)
        if isinstance(p, int):
            return p
    return None


def cam_linear(model: nn.Module) -> nn.Linear | None:
    """The bias-free Linear of a GAP -> Flatten -> Linear head (camkit's CAM head), if any."""
    head = model[-1] if isinstance(model, nn.Sequential) and len(model) else None
    if isinstance(head, nn.Sequential) and len(head) == 3:
        pool, flat, fc = head
        if (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))
                and isinstance(flat, nn.Flatten) and isinstance(fc, nn.Linear) and fc.bias is None):
            return fc
    return None
