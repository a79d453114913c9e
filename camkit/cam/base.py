"""The CAM base class: hooks, one pass, the target's gradient, combine, post-process.

The base owns the hooks on the target layers (removed by its context manager, even on
errors), the target (a callable, `camkit.cam.targets`), the layout of token / channels-last
layers, and what every method shares: eigen-smoothing (first principal component of the
weighted activations, pytorch-grad-cam's `eigen_smooth`), test-time augmentation
(`aug_smooth`: horizontal flip x brightness 0.9, 1, 1.1, maps flipped back and averaged),
fusion of several layers (torchcam's `fuse_cams`: each normalised map upsampled to the
finest, element-wise max) and the final ReLU + min-max, or for `signed` maps no ReLU and
a scale by the largest magnitude to [-1, 1] (evidence for > 0, against < 0).

Gradients are taken only from the lowest target layer up (`torch.autograd.grad` w.r.t. the
activation); the network below runs without recording a graph, so a Grad-CAM costs about one
forward pass plus a backward through the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit.cam.layers import Layout, candidates, find_layer, get_layer, layout_of, prefix_tokens, split_layers
from camkit.cam.targets import OutputTarget, as_target
from camkit.core.geometry import Grid, grid_for, probe, regrid
from camkit.errors import CamkitError

EPS = 1e-8
Target = OutputTarget | Callable | int | Sequence[int] | Tensor | None
AUGMENTATIONS = [(False, 1.0), (False, 0.9), (False, 1.1), (True, 0.9), (True, 1.0), (True, 1.1)]


def normalise(maps: Tensor) -> Tensor:
    """Per-map min-max to [0, 1]; a flat map becomes all zeros, never NaN."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return (maps - lo[:, None, None]) / (hi - lo + EPS)[:, None, None]


def scale_signed(maps: Tensor) -> Tensor:
    """Per-map m / max|m| to [-1, 1], the sign kept (0 stays 0): for diverging colormaps."""
    return maps / (maps.flatten(1).abs().max(1).values + EPS)[:, None, None]


def first_component(weighted: Tensor) -> Tensor:
    """(B, K, h, w) -> (B, h, w): each image's positions (h*w rows, K columns), centred, projected
    on their first principal component (pytorch-grad-cam's `get_2d_projection`), the sign of the
    component chosen so that the larger magnitude is positive (Seg-Eigen-CAM's eq. 13)."""
    b, k, h, w = weighted.shape
    rows = weighted.nan_to_num().flatten(2).transpose(1, 2)
    rows = rows - rows.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(rows.double(), full_matrices=False)
    proj = (rows.double() @ vh[:, 0, :, None])[..., 0].float()
    flip = proj.max(1).values.abs() < proj.min(1).values.abs()
    return torch.where(flip[:, None], -proj, proj).view(b, h, w)


def finest(maps: list[Tensor]) -> int:
    """Index of the map with the most cells."""
    return max(range(len(maps)), key=lambda k: maps[k].shape[-2] * maps[k].shape[-1])


def to_finest(maps: list[Tensor], grids: Sequence[Grid] | None = None) -> list[Tensor]:
    """Maps of several layers, each upsampled (bilinear) to the finest one's cells: between cell
    centres as `grids` place them (camkit.core.geometry), else as footprints."""
    top = finest(maps)
    size = maps[top].shape[-2:]
    if grids is None:
        return [m if m.shape[-2:] == size else
                F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] for m in maps]
    return [m if k == top else regrid(m, grids[k], grids[top], tuple(size)) for k, m in enumerate(maps)]


def fuse(maps: list[Tensor], grids: Sequence[Grid] | None = None) -> Tensor:
    """Maps of several layers -> one: upsampled to the finest, element-wise max (torchcam)."""
    return maps[0] if len(maps) == 1 else torch.stack(to_finest(maps, grids)).max(0).values


@dataclass(frozen=True)
class CamOutput:
    """What one call of an extractor computed, returned by `explain` (torchcam's
    `PredictionExplanation`): the maps (B, h, w) in [0, 1], or [-1, 1] when signed; the logits
    (B, classes) of the (first) pass, fp32; the class each map explains (B,); the bound target
    (a contrast's other class is `target.other`); and where the maps' cells look in the input
    (camkit.core.geometry; None when unknown)."""
    maps: Tensor
    logits: Tensor
    targets: Tensor
    target: OutputTarget
    grid: Grid | None


class BaseCAM:
    """Hooks `layer` (found automatically when None; 'a,b' or a list fuses several) and turns
    channel weights into maps.

    Subclasses implement `weights(x, acts, grads, logits, target)` returning (B, K) channel
    weights or (B, K, h, w) element-wise weights (acts and grads channels-first, fp32);
    `needs_grad` says whether `grads` is used. The input `x` is passed too (pytorch-grad-cam's
    `get_cam_weights(input_tensor, ...)`), so a method that re-runs the model on masked inputs
    (Score-CAM) needs no state of its own. `needs` is what `camkit cam --list-methods` says."""

    needs_grad = True
    name = "base"
    needs = "gradients: one forward + one backward from the layer up"
    peers: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, layer: str | Sequence[str] | None = None, *, signed: bool = False,
                 aug_smooth: bool = False, eigen_smooth: bool = False):
        self.model = model
        self.layers = split_layers(layer)
        self.signed, self.aug_smooth, self.eigen_smooth = signed, aug_smooth, eigen_smooth
        self._handles: list = []
        self._entered = False
        self._capture: set[str] = set()
        self._raw: dict[str, Tensor] = {}
        self.layer: str | None = None      # the layer being combined (for methods that re-run it)
        self.layout: Layout | None = None
        self.logits: Tensor | None = None
        self.targets: Tensor | None = None
        self.target: OutputTarget | None = None
        self.grid: Grid | None = None      # where the last maps' cells look in the input (camkit.core.geometry)
        self._grids: dict[tuple, dict] = {}   # (channels, height, width) -> probe's table
        self._table: dict = {}
        self._size: tuple[int, int] = (0, 0)

    @property
    def layer_name(self) -> str | None:
        return ",".join(self.layers) if self.layers else None

    # -- hook lifetime: registered on first call, kept while inside `with`, always removed
    def __enter__(self) -> "BaseCAM":
        self._entered = True
        return self

    def __exit__(self, *exc) -> None:
        self._entered = False
        self._remove()

    def _register(self, x: Tensor) -> None:
        if self.layers is None:
            self.layers = [find_layer(self.model, x)]
        modules = [get_layer(self.model, n, x) for n in self.layers]
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in zip(self.layers, modules)]

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            if name not in self._capture or not isinstance(output, Tensor):
                return None  # masked passes (Score-CAM), or the layer run twice in one pass
            self._capture.discard(name)
            if torch.is_grad_enabled():  # a higher layer: already in the recorded graph
                self._raw[name] = output
                return output.clone()
            # The lowest layer: a fresh leaf (nothing below is recorded); the clone handed on
            # means an in-place op downstream (ReLU(inplace=True)) cannot alter what we saved.
            self._raw[name] = output.detach().requires_grad_(self.needs_grad)
            torch.set_grad_enabled(self.needs_grad)
            return self._raw[name].clone()
        return hook

    # -- the maps
    def weights(self, x: Tensor, acts: Tensor, grads: Tensor | None, logits: Tensor, target: OutputTarget) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor, target: Target = None) -> Tensor:
        """Maps (B, h, w) for `target`: `explain(x, target).maps`. The rest of the call's output
        stays readable on the extractor until the next call (`self.logits`, `self.targets`,
        `self.target`, `self.grid`)."""
        return self.explain(x, target).maps

    def explain(self, x: Tensor, target: Target = None) -> CamOutput:
        """Maps (B, h, w) for `target` (None: each image's predicted class; a class index, one per
        image, or a callable target from camkit.cam.targets), in [0, 1], or [-1, 1] when `signed`,
        returned with the logits of the (first) pass, the classes explained, the bound target
        and the maps' grid.

            with GradCAM(model, "layer4") as cam:
                out = cam.explain(x)           # out.maps, out.logits.softmax(1), out.targets
        """
        maps = self._maps(x, target)
        return CamOutput(maps, self.logits, self.targets, self.target, self.grid)

    def _maps(self, x: Tensor, target: Target) -> Tensor:
        grad_mode = torch.is_grad_enabled()
        try:
            self._size = tuple(x.shape[-2:])
            key = (x.shape[1], *self._size)
            if key not in self._grids:  # once per input size: a pass on the meta device
                self._grids[key] = probe(self.model, self._size, x.shape[1])
            self._table = self._grids[key]
            if not self._handles:
                self._register(x)
            if not self.aug_smooth:
                return self._post(self._raw_maps(x, as_target(target)))
            return self._augmented(x, as_target(target))
        finally:
            torch.set_grad_enabled(grad_mode)
            self._capture, self._raw = set(), {}
            if not self._entered:
                self._remove()

    def _augmented(self, x: Tensor, target: OutputTarget) -> Tensor:
        """Mean of the post-processed maps of 6 flipped / rescaled copies (the first, the input
        itself, binds the target), each flipped back; post-processed again."""
        total = None
        for flip, factor in AUGMENTATIONS:
            xa = (x.flip(-1) if flip else x) * factor
            maps = self._post(self._raw_maps(xa, target if total is None else self.target))
            maps = maps.flip(-1) if flip else maps
            total = maps if total is None else total + maps
            if flip is False and factor == 1.0:
                logits, targets = self.logits, self.targets
        self.logits, self.targets = logits, targets
        # a flipped pass's cell i, flipped back, looks at s*i + (s - 1), the unflipped one's at s*i
        # (camkit.core.geometry): their mean is centred on the footprints, s*i + (s - 1) / 2
        self.grid = Grid.footprint(tuple(total.shape[-2:]), self._size)
        return scale_signed(total) if self.signed else normalise(total)

    def _post(self, maps: list[Tensor]) -> Tensor:
        """ReLU + min-max per layer, then fused by the max; signed: scaled by max |m| per layer,
        fused by the mean (a max would drop the evidence against), scaled again."""
        grids = [grid_for(self._table, tuple(m.shape[-2:]), self._size) for m in maps]
        self.grid = grids[finest(maps)]
        if not self.signed:
            return normalise(fuse([normalise(F.relu(m)) for m in maps], grids))
        scaled = [scale_signed(m) for m in maps]
        return scaled[0] if len(scaled) == 1 else scale_signed(torch.stack(to_finest(scaled, grids)).mean(0))

    def _raw_maps(self, x: Tensor, target: OutputTarget) -> list[Tensor]:
        """One pass: the un-normalised map of every layer (B, h, w), fp32."""
        self._raw, self._capture = {}, set(self.layers)
        with torch.no_grad():  # the hook switches recording on from the lowest target layer up
            logits = self.model(x)
        missing = [n for n in self.layers if n not in self._raw]
        if missing:
            raise CamkitError(f"layer '{missing[0]}' was not run by the model's forward pass")
        raws = [self._raw[n] for n in self.layers]
        layouts = [self._layout(n, r, x) for n, r in zip(self.layers, raws)]
        bound = target if getattr(target, "bound", False) else target.bind(logits.detach().float())
        grads: Sequence[Tensor | None] = [None] * len(raws)
        if self.needs_grad:
            with torch.enable_grad():  # also when the caller is inside torch.no_grad()
                score = bound(logits).sum()
                grads = torch.autograd.grad(score, raws, allow_unused=True) if score.requires_grad else grads
        # combine in fp32 even when the pass ran under the caller's bf16 autocast
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            self.logits, self.target = logits.detach().float(), bound
            self.targets = bound.index
            maps = []
            for name, raw, lay, g in zip(self.layers, raws, layouts, grads):
                self.layer, self.layout = name, lay
                acts = lay.to_cf(raw.detach()).float()
                g = torch.zeros_like(acts) if g is None and self.needs_grad else g
                maps.append(self.combine(x, acts, None if g is None else lay.to_cf(g).float(), self.logits, bound))
            return maps

    def _layout(self, name: str, raw: Tensor, x: Tensor) -> Layout:
        lay = layout_of(raw.shape, tuple(x.shape[-2:]), prefix_tokens(self.model))
        if lay is None:
            raise CamkitError(f"layer '{name}' outputs shape {tuple(raw.shape)}, not a spatial map (B, K, h, w), "
                              f"channels-last map or patch tokens (for the body's output: larger images or "
                              f"--stride 8); {candidates(self.model, x)}")
        return lay

    def combine(self, x: Tensor, acts: Tensor, grads: Tensor | None, logits: Tensor, target: OutputTarget) -> Tensor:
        """Weighted activations summed over channels (or their first principal component)."""
        w = self.weights(x, acts, grads, logits, target)
        weighted = w[:, :, None, None] * acts if w.dim() == 2 else w * acts
        return first_component(weighted) if self.eigen_smooth else weighted.sum(1)

    def run_layer_module(self) -> nn.Module:
        return get_layer(self.model, self.layer)
