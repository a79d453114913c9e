"""Exact CAM and the gradient / activation methods: each says only how to weight channels.

Formulas with A the layer's activation (B, K, h, w), g = d score / d A, score the target's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from camkit.cam.base import EPS, BaseCAM, first_component
from camkit.cam.layers import cam_linear
from camkit.errors import CamkitError


class CAM(BaseCAM):
    """Exact CAM (Zhou et al. 2016): map = sum_k w_k A_k with the head's own weights (for a
    contrast, w_a - w_b). Needs a GAP -> Linear(bias=False) head; one forward, no gradients."""

    needs_grad = False
    name = "cam"
    needs = "camkit's CAM head (GAP -> Linear without bias); one forward pass, no gradients"
    peers = ("torchcam",)

    def __init__(self, model: nn.Module, layer=None, **options):
        self.fc = cam_linear(model)
        if self.fc is None:
            raise CamkitError("exact CAM needs camkit's CAM head (GAP -> Linear without bias); "
                              "use --method gradcam for this model")
        super().__init__(model, layer if layer is not None else "0" if isinstance(model, nn.Sequential) else None,
                         **options)

    def weights(self, x, acts, grads, logits, target):
        if acts.shape[1] != self.fc.in_features:
            raise CamkitError(f"exact CAM reads the head's weights, which fit the layer feeding it "
                              f"({self.fc.in_features} channels); layer '{self.layer}' has {acts.shape[1]}: "
                              "use --method gradcam for another layer")
        return target.cam_weights(self.fc.weight.float())


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): w_k = mean over h, w of g_k."""
    name = "gradcam"
    peers = ("pytorch-grad-cam", "torchcam")

    def weights(self, x, acts, grads, logits, target):
        return grads.mean(dim=(2, 3))


class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin 2020): map = sum_k g_k * A_k element-wise (faithful to the
    score for a GAP head: the map sums to h*w times the score's linear part)."""
    name = "hirescam"
    peers = ("pytorch-grad-cam",)

    def weights(self, x, acts, grads, logits, target):
        return grads


class GradCAMpp(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018): w_k = sum_ij alpha_kij relu(g_kij) with
    alpha_kij = g_kij^2 / (2 g_kij^2 + (sum_ab A_kab) g_kij^3), the paper's eq. 19 (the third
    derivative is taken at ij; pytorch-grad-cam's form; torchcam sums A_ab g_ab^3 instead)."""
    name = "gradcam++"
    peers = ("pytorch-grad-cam", "torchcam")

    def weights(self, x, acts, grads, logits, target):
        return plusplus(acts, grads.pow(2), grads.pow(3), grads)


def plusplus(acts, g2, g3, grads):
    """Grad-CAM++'s weights from (averaged) g^2, g^3 and the gradient whose ReLU is weighted."""
    denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    return (alpha * F.relu(grads)).sum(dim=(2, 3))


class SmoothGradCAMpp(BaseCAM):
    """Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++ with g^2 and g^3 averaged over
    `num_samples` inputs with Gaussian noise (std `std`), as torchcam computes it (the ReLU'd
    gradient of the last noisy pass, the activations of the clean one)."""
    name = "smoothgradcam++"
    needs = "gradients: 1 + num_samples (4) forward + backward passes"
    peers = ("torchcam",)
    num_samples, std = 4, 0.3

    def weights(self, x, acts, grads, logits, target):
        g2, g3 = torch.zeros_like(acts), torch.zeros_like(acts)
        noise = torch.distributions.normal.Normal(0, self.std)
        module, last = self.run_layer_module(), None
        for _ in range(self.num_samples):
            last = self._layer_grad(module, x + noise.sample(x.size()).to(x.device), target)
            g2 += last.pow(2)
            g3 += last.pow(3)
        return plusplus(acts, g2 / self.num_samples, g3 / self.num_samples, last)

    def _layer_grad(self, module: nn.Module, x, target):
        """d score / d A at this layer for input x (channels-first)."""
        saved = {}

        def hook(_m, _i, out):
            saved["a"] = out
        handle = module.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                out = self.model(x.requires_grad_(True))
                g, = torch.autograd.grad(target(out).sum(), saved["a"], allow_unused=True)
        finally:
            handle.remove()
        return torch.zeros_like(self.layout.to_cf(saved["a"])).float() if g is None else self.layout.to_cf(g).float()


class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al. 2020): w_k = sum_hw g A / sum_hw A."""
    name = "xgradcam"
    peers = ("pytorch-grad-cam", "torchcam")

    def weights(self, x, acts, grads, logits, target):
        return (grads * acts).sum(dim=(2, 3)) / (acts.sum(dim=(2, 3)) + EPS)


class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al. 2021): element-wise weights relu(g_khw)."""
    name = "layercam"
    peers = ("pytorch-grad-cam", "torchcam")

    def weights(self, x, acts, grads, logits, target):
        return F.relu(grads)


class EigenCAM(BaseCAM):
    """Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of the activations
    (positions x channels, centred); class-agnostic: no gradients, the target is not used."""
    needs_grad = False
    name = "eigencam"
    needs = "activations only (class-agnostic); one forward pass"
    peers = ("pytorch-grad-cam",)

    def combine(self, x, acts, grads, logits, target):
        return first_component(acts)


class EigenGradCAM(BaseCAM):
    """Eigen-Grad-CAM (pytorch-grad-cam): the first principal component of g * A."""
    name = "eigengradcam"
    peers = ("pytorch-grad-cam",)

    def combine(self, x, acts, grads, logits, target):
        return first_component(grads * acts)
