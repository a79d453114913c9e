"""Which layer a CAM reads, and how its output becomes a channels-first map.

How a layer's output maps onto the image (tokens, channels-last or channels-first: `Layout`,
`layout_of`, `prefix_tokens`, `cam_linear`) lives in camkit.core.layout, below camkit.train.models too, and
is re-exported here; this module finds and names the layers.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from camkit.core.layout import MAX_PREFIX, Layout, cam_linear, layout_of, prefix_tokens  # noqa: F401  (re-exported)
from camkit.errors import CamkitError


def _outputs(model: nn.Module, x: Tensor, grad: bool) -> tuple[list[str], dict[str, Tensor], Tensor]:
    """One pass recording every named module's output (first call only), in completion order."""
    seen: dict[str, Tensor] = {}
    names = {m: n for n, m in model.named_modules() if n}

    def hook(mod, _i, out):
        if isinstance(out, Tensor) and names[mod] not in seen:
            seen[names[mod]] = out
    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.set_grad_enabled(grad):  # the input records the graph even with frozen weights
            logits = model(x[:1].detach().clone().requires_grad_(grad))
    finally:
        for h in handles:
            h.remove()
    return list(seen), seen, logits


def spatial_layers(model: nn.Module, x: Tensor) -> list[str]:
    """Names of the modules whose output is a spatial map (channels-first, channels-last or
    patch tokens) for input `x`, in the order the forward pass completes them: the layers a
    CAM can explain."""
    order, outs, _ = _outputs(model, x, grad=False)
    prefix = prefix_tokens(model)
    return [n for n in order if layout_of(outs[n].shape, tuple(x.shape[-2:]), prefix) is not None]


def find_layer(model: nn.Module, x: Tensor) -> str:
    """The layer a CAM reads by default: the last spatial one (CNNs: the body's output). For
    token and channels-last layers, the last one of the model's final width whose image
    positions reach the output: a ViT that reads its class token ignores the last block's
    patch tokens (their gradient is 0), so the map is read where they still count."""
    order, outs, logits = _outputs(model, x, grad=True)
    prefix, size = prefix_tokens(model), tuple(x.shape[-2:])
    spatial = [(n, layout_of(outs[n].shape, size, prefix)) for n in order]
    spatial = [(n, lay) for n, lay in spatial if lay is not None]
    if not spatial:
        raise CamkitError("the model has no 4-D activation with spatial size > 1 (channels first or last) "
                          "and no patch tokens to explain")
    if spatial[-1][1].kind == "nchw" or not logits.requires_grad:
        return spatial[-1][0]
    width = outs[spatial[-1][0]].shape[-1]
    tokens = [(n, lay) for n, lay in spatial if lay.kind != "nchw" and outs[n].shape[-1] == width]
    grads = torch.autograd.grad(logits.max(1).values.sum(), [outs[n] for n, _ in tokens], allow_unused=True)
    for (n, lay), g in zip(reversed(tokens), reversed(grads)):
        if g is not None and lay.to_cf(g).abs().sum() > 0:
            return n
    return spatial[-1][0]


def get_layer(model: nn.Module, name: str, x: Tensor | None = None) -> nn.Module:
    """The module called `name`; an unknown one is refused with the spatial candidates
    (found by one forward pass of `x` when given)."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        raise CamkitError(f"unknown layer '{name}'; {candidates(model, x)}")
    return modules[name]


def candidates(model: nn.Module, x: Tensor | None) -> str:
    names = spatial_layers(model, x) if x is not None else \
        [n for n, m in model.named_modules() if n and isinstance(m, nn.Conv2d)]
    return "candidates: " + ", ".join(names[-12:]) + " (the layers with spatial maps)"


def split_layers(layer: str | Sequence[str] | None) -> list[str] | None:
    """'a,b' or ['a', 'b'] -> ['a', 'b'] (several layers are fused); None stays None."""
    if layer is None:
        return None
    names = [n.strip() for part in ([layer] if isinstance(layer, str) else layer) for n in part.split(",")]
    if not all(names):
        raise CamkitError(f"empty layer name in '{layer}'")
    return list(dict.fromkeys(names))
