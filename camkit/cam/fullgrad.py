"""FullGrad (Srinivas & Fleuret 2019): the input-gradient term plus every layer's bias-gradient
term, each made positive and scaled, summed at the input's resolution.

    map = psi(|x * dS/dx|) + sum_layers sum_channels psi(|b_c * dS/dz_c|)

with psi a per-channel min-max then bilinear upsampling to the input, z a layer's output and
b its bias (a BatchNorm's folded bias b - mean * gamma / sqrt(var + eps)), as pytorch-grad-cam
computes it. It needs the bias of every layer that has one: a model with biased layers whose
term it cannot place on the image (LayerNorm, token Linear layers: transformers) is refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit.cam.base import BaseCAM, normalise
from camkit.cam.targets import OutputTarget
from camkit.errors import CamkitError

SPATIAL = (nn.Conv2d, nn.BatchNorm2d)
NON_SPATIAL_OK = (nn.Linear, nn.BatchNorm1d)  # the head's: no place in the image, 0 map term


def _bias(layer: nn.Module) -> Tensor:
    if isinstance(layer, nn.BatchNorm2d):
        return layer.bias - layer.running_mean * layer.weight / torch.sqrt(layer.running_var + layer.eps)
    return layer.bias


def _scaled_sum(t: Tensor, size) -> Tensor:
    """sum_c psi(t_c): per-(image, channel) min-max of |t|, summed over channels, upsampled to
    `size`; (B, H, W). Bilinear upsampling is linear, so summing before upsampling gives the
    same map as pytorch-grad-cam's upsample-then-sum with one upsampling instead of K."""
    b, k = t.shape[:2]
    t = normalise(t.abs().flatten(0, 1)).view(b, k, *t.shape[2:]).sum(1, keepdim=True)
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0]


class FullGrad(BaseCAM):
    """FullGrad (Srinivas & Fleuret 2019): every Conv2d / BatchNorm2d bias and the input (`layer`
    is ignored); one forward and one backward through the whole network."""
    name = "fullgrad"
    needs = "every layer's bias-gradients (CNNs of Conv2d/BatchNorm2d); one full forward + backward"
    peers = ("pytorch-grad-cam",)

    def __init__(self, model: nn.Module, layer=None, **options):
        if options.get("eigen_smooth"):
            raise CamkitError("fullgrad sums its own terms: --eigen-smooth does not apply")
        self.bias_layers = [m for m in model.modules() if isinstance(m, SPATIAL) and m.bias is not None]
        other = sorted({type(m).__name__ for m in model.modules() if not isinstance(m, SPATIAL + NON_SPATIAL_OK)
                        and isinstance(getattr(m, "bias", None), Tensor)})
        if not self.bias_layers or other:
            raise CamkitError("fullgrad needs the bias-gradients of every layer, and this model has biased "
                              f"layers it cannot place on the image ({', '.join(other) or 'no Conv2d/BatchNorm2d bias'}); "
                              "use --method gradcam")
        super().__init__(model, "fullgrad", **options)

    def _register(self, x: Tensor) -> None:  # its own hooks, set for each pass
        pass

    def _remove(self) -> None:
        pass

    def _raw_maps(self, x: Tensor, target: OutputTarget) -> list[Tensor]:
        outs: list[Tensor] = []
        handles = [m.register_forward_hook(lambda _m, _i, o: outs.append(o)) for m in self.bias_layers]
        try:
            with torch.enable_grad():
                xg = x.detach().clone().requires_grad_(True)
                logits = self.model(xg)
                bound = target if getattr(target, "bound", False) else target.bind(logits.detach().float())
                grads = torch.autograd.grad(bound(logits).sum(), [xg] + outs, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        self.logits, self.target, self.targets = logits.detach().float(), bound, bound.index
        size = x.shape[-2:]
        with torch.no_grad():
            total = _scaled_sum((grads[0] * x).float(), size)
            for layer, g in zip(self.bias_layers, grads[1:]):
                if g is not None:
                    total += _scaled_sum(_bias(layer).float()[None, :, None, None] * g.float(), size)
        return [total]
