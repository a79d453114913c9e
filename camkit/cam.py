"""Class activation maps: exact CAM and the Grad-CAM family over one base class.

The base class owns the hook on the target layer (removed by its context manager, even on
errors) and the normalisation; each method only says how to weight the layer's channels.
Gradients are taken only from the target layer up (`torch.autograd.grad` w.r.t. the
activation), the part of the network below the layer runs without recording a graph, so a
Grad-CAM costs about one forward pass plus a backward through the head.

    with GradCAM(model) as cam:
        maps = cam(x)                    # (B, h, w) in [0, 1], on x's device

Tensors in, maps out: nothing here reads files or draws (`camkit.explain` turns image files
into results, `camkit.render` draws them).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit.choices import value
from camkit.errors import CamkitError

EPS = 1e-8
Target = int | Sequence[int] | Tensor | None


def cam_linear(model: nn.Module) -> nn.Linear | None:
    """The bias-free Linear of a GAP -> Flatten -> Linear head (camkit's CAM head), if any."""
    head = model[-1] if isinstance(model, nn.Sequential) and len(model) else None
    if isinstance(head, nn.Sequential) and len(head) == 3:
        pool, flat, fc = head
        if (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))
                and isinstance(flat, nn.Flatten) and isinstance(fc, nn.Linear) and fc.bias is None):
            return fc
    return None


def spatial_layers(model: nn.Module, x: Tensor) -> list[str]:
    """Names of the modules whose output is a 4-D activation with spatial size > 1, in the
    order the forward pass runs them: the layers a CAM can explain."""
    seen: list[str] = []
    names = {m: n for n, m in model.named_modules() if n}
    handles = [m.register_forward_hook(
        lambda mod, _i, out: seen.append(names[mod])
        if isinstance(out, Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1 else None)
        for m in names]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(seen))


def find_layer(model: nn.Module, x: Tensor) -> str:
    """Name of the module whose output is the last 4-D activation with spatial size > 1."""
    seen = spatial_layers(model, x)
    if not seen:
        raise CamkitError("the model has no 4-D activation with spatial size > 1 to explain")
    return seen[-1]


def get_layer(model: nn.Module, name: str, x: Tensor | None = None) -> nn.Module:
    """The module called `name`; an unknown or non-spatial one is refused with the spatial
    candidates (found by one forward pass of `x` when given)."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        raise CamkitError(f"unknown layer '{name}'; {_candidates(model, x)}")
    return modules[name]


def _candidates(model: nn.Module, x: Tensor | None) -> str:
    names = spatial_layers(model, x) if x is not None else \
        [n for n, m in model.named_modules() if n and isinstance(m, nn.Conv2d)]
    return "candidates: " + ", ".join(names[-12:]) + " (the layers with spatial maps)"


def normalise(maps: Tensor) -> Tensor:
    """Per-map min-max to [0, 1]; a flat map becomes all zeros, never NaN."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return (maps - lo[:, None, None]) / (hi - lo + EPS)[:, None, None]


class BaseCAM:
    """Hooks `layer` (found automatically when None) and turns channel weights into maps.

    Subclasses implement `weights(x, acts, grads, logits, target)` returning (B, K) channel
    weights or (B, K, h, w) element-wise weights; `needs_grad` says whether `grads` is used.
    The input `x` is passed too (pytorch-grad-cam's `get_cam_weights(input_tensor, ...)`), so a
    method that re-runs the model on masked inputs (Score-CAM) needs no state of its own."""

    needs_grad = True
    name = "base"

    def __init__(self, model: nn.Module, layer: str | None = None):
        self.model = model
        self.layer_name = layer
        self._handle = None
        self._entered = False
        self._capture = False
        self.acts: Tensor | None = None
        self.logits: Tensor | None = None
        self.targets: Tensor | None = None

    # -- hook lifetime: registered on first call, kept while inside `with`, always removed
    def __enter__(self) -> "BaseCAM":
        self._entered = True
        return self

    def __exit__(self, *exc) -> None:
        self._entered = False
        self._remove()

    def _register(self, x: Tensor) -> None:
        if self.layer_name is None:
            self.layer_name = find_layer(self.model, x)
        self._handle = get_layer(self.model, self.layer_name, x).register_forward_hook(self._hook)

    def _remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, _module, _inputs, output: Tensor) -> Tensor | None:
        if not self._capture:  # masked passes (Score-CAM), or the layer run twice in one pass
            return None
        self._capture = False
        # A fresh leaf: gradients stop here (nothing below is recorded), and the clone handed
        # on means an in-place op downstream (ReLU(inplace=True)) cannot alter what we saved.
        self.acts = output.detach().requires_grad_(self.needs_grad)
        torch.set_grad_enabled(self.needs_grad)
        return self.acts.clone()

    # -- the maps
    def weights(self, x: Tensor, acts: Tensor, grads: Tensor | None, logits: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor, target: Target = None) -> Tensor:
        """Normalised maps (B, h, w) for `target` (None: the predicted class; an int, or one
        class index per image, None for that image's prediction). The logits of the same pass
        and the targets used are kept in `self.logits` and `self.targets`."""
        grad_mode = torch.is_grad_enabled()
        try:
            if self._handle is None:
                self._register(x)
            self.acts, self._capture = None, True
            with torch.no_grad():  # the hook switches recording on from the target layer up
                logits = self.model(x)
            acts = self.acts
            if acts is None:
                raise CamkitError(f"layer '{self.layer_name}' was not run by the model's forward pass")
            if acts.dim() != 4 or acts.shape[-1] * acts.shape[-2] <= 1:
                raise CamkitError(f"layer '{self.layer_name}' outputs shape {tuple(acts.shape)}, not a spatial "
                                  f"map (B, K, h, w) (for the body's output: larger images or --stride 8); "
                                  f"{_candidates(self.model, x)}")
            target_t = self._target(target, logits)
            grads = None
            if self.needs_grad:
                with torch.enable_grad():  # also when the caller is inside torch.no_grad()
                    score = logits.gather(1, target_t[:, None]).sum()
                    grads, = torch.autograd.grad(score, acts)
            # combine in fp32 even when the pass ran under the caller's bf16 autocast
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                maps = self._combine(x, acts.detach().float(), None if grads is None else grads.float(),
                                     logits.detach().float(), target_t)
                self.logits, self.targets = logits.detach().float(), target_t
                return normalise(F.relu(maps))
        finally:
            torch.set_grad_enabled(grad_mode)
            self._capture, self.acts = False, None
            if not self._entered:
                self._remove()

    def _combine(self, x: Tensor, acts: Tensor, grads: Tensor | None, logits: Tensor, target: Tensor) -> Tensor:
        w = self.weights(x, acts, grads, logits, target)
        if w.dim() == 2:
            return torch.einsum("bk,bkhw->bhw", w.to(acts.dtype), acts)
        return (w * acts).sum(1)

    @staticmethod
    def _target(target: Target, logits: Tensor) -> Tensor:
        n, c = logits.shape
        if target is None:
            t = logits.argmax(1)
        elif isinstance(target, int):
            t = torch.full((n,), target, dtype=torch.long, device=logits.device)
        else:
            if isinstance(target, Sequence) and any(v is None for v in target):  # None: that image's prediction
                pred = logits.argmax(1).tolist()
                target = [p if v is None else v for v, p in zip(target, pred)]
            t = torch.as_tensor(target, dtype=torch.long, device=logits.device).flatten()
            if len(t) != n:
                raise CamkitError(f"{len(t)} targets for a batch of {n} images")
        if len(t) and (t.min() < 0 or t.max() >= c):
            raise CamkitError(f"target class index out of range 0..{c - 1}")
        return t


class CAM(BaseCAM):
    """Exact CAM (Zhou et al. 2016): map_c = sum_k w_ck A_k with the head's own weights.
    Needs a GAP -> Linear(bias=False) head; one forward pass, no gradients."""

    needs_grad = False
    name = "cam"

    def __init__(self, model: nn.Module, layer: str | None = None):
        self.fc = cam_linear(model)
        if self.fc is None:
            raise CamkitError("exact CAM needs camkit's CAM head (GAP -> Linear without bias); "
                              "use --method gradcam for this model")
        super().__init__(model, layer if layer is not None else "0" if isinstance(model, nn.Sequential) else None)

    def weights(self, x, acts, grads, logits, target):
        if acts.shape[1] != self.fc.in_features:
            raise CamkitError(f"exact CAM reads the head's weights, which fit the layer feeding it "
                              f"({self.fc.in_features} channels); layer '{self.layer_name}' has {acts.shape[1]}: "
                              "use --method gradcam for another layer")
        return self.fc.weight[target]


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): w_k = mean over h, w of d y_c / d A_k."""
    name = "gradcam"

    def weights(self, x, acts, grads, logits, target):
        return grads.mean(dim=(2, 3))


class GradCAMpp(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018): w_k = sum_hw alpha_khw relu(g_khw) with
    alpha = g^2 / (2 g^2 + sum_hw A g^3)."""
    name = "gradcam++"

    def weights(self, x, acts, grads, logits, target):
        g2 = grads.pow(2)
        denom = 2 * g2 + (g2 * grads * acts).sum(dim=(2, 3), keepdim=True)
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        return (alpha * F.relu(grads)).sum(dim=(2, 3))


class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al. 2020): w_k = sum_hw g A / sum_hw A."""
    name = "xgradcam"

    def weights(self, x, acts, grads, logits, target):
        return (grads * acts).sum(dim=(2, 3)) / (acts.sum(dim=(2, 3)) + EPS)


class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al. 2021): element-wise weights relu(g_khw)."""
    name = "layercam"

    def weights(self, x, acts, grads, logits, target):
        return F.relu(grads)


class ScoreCAM(BaseCAM):
    """Score-CAM (Wang et al. 2020): each channel, upsampled and min-max scaled, masks the
    input; its weight is the target's softmax score on the masked input (softmax over channels).
    One extra forward per channel, in batches of `batch_size`."""

    needs_grad = False
    name = "scorecam"
    batch_size = 64

    def weights(self, x, acts, grads, logits, target):
        b, k = acts.shape[:2]
        masks = normalise(F.interpolate(acts, size=x.shape[-2:], mode="bilinear", align_corners=False)
                          .flatten(0, 1)).view(b, k, 1, *x.shape[-2:])
        scores = torch.empty(b, k, device=acts.device)
        with torch.no_grad():
            for i in range(b):
                for s in range(0, k, self.batch_size):
                    m = masks[i, s:s + self.batch_size]
                    out = self.model(x[i:i + 1] * m).softmax(1)
                    scores[i, s:s + self.batch_size] = out[:, target[i]]
        return scores.softmax(1)


METHODS: dict[str, type[BaseCAM]] = {c.name: c for c in (CAM, GradCAM, GradCAMpp, XGradCAM, LayerCAM, ScoreCAM)}



def make_cam(method: str | None, model: nn.Module, layer: str | None = None, probe: Tensor | None = None) -> BaseCAM:
    """The CAM extractor by name; None picks exact `cam` when the head allows, else `gradcam`
    (also when a `probe` input shows that the body's output is 1 x 1 at that size: exact CAM
    would have nothing to localise, Grad-CAM then reads the last spatial layer)."""
    if method is None:
        exact = cam_linear(model) is not None and layer is None
        if exact and probe is not None and "0" not in spatial_layers(model, probe):
            exact = False
        method = "cam" if exact else "gradcam"
    method = value(method)
    if method not in METHODS:
        raise CamkitError(f"unknown method '{method}'; choose from {', '.join(METHODS)}")
    return METHODS[method](model, layer)
