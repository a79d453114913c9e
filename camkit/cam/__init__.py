"""Class activation maps: exact CAM, the Grad-CAM family, the score / ablation methods,
Eigen-CAM and FullGrad, over one base class. Tensors in, maps out: nothing here reads files or
draws (`camkit.explain` turns image files into results, `camkit.core.render` draws them).

    with GradCAM(model) as cam:
        maps = cam(x)                                  # (B, h, w) in [0, 1], on x's device
        maps = cam(x, ContrastTarget(0, 1))            # "why class 0 and not 1"

    make_cam("gradcam", vit, layer="blocks.10,blocks.11", aug_smooth=True)

Modules: `layers` (which layer, token / channels-last layouts), `base` (hooks, targets,
smoothing, fusion), `gradient`, `score`, `fullgrad` (the methods); targets in `camkit.cam.targets`.
"""

from __future__ import annotations

from torch import Tensor, nn

from camkit.cam.base import EPS, BaseCAM, CamOutput, Target, first_component, fuse, normalise, scale_signed
from camkit.cam.fullgrad import FullGrad
from camkit.cam.gradient import (CAM, EigenCAM, EigenGradCAM, GradCAM, GradCAMpp, HiResCAM, LayerCAM, SmoothGradCAMpp,
                                 XGradCAM)
from camkit.cam.layers import Layout, cam_linear, find_layer, get_layer, layout_of, spatial_layers, split_layers
from camkit.cam.score import ISCAM, SSCAM, AblationCAM, ScoreCAM
from camkit.core.choices import value
from camkit.errors import CamkitError

__all__ = ["EPS", "BaseCAM", "CamOutput", "Target", "CAM", "GradCAM", "GradCAMpp", "XGradCAM", "LayerCAM",
           "HiResCAM", "SmoothGradCAMpp", "EigenCAM", "EigenGradCAM", "ScoreCAM", "SSCAM", "ISCAM", "AblationCAM",
           "FullGrad", "METHODS", "make_cam", "check_method", "describe_methods", "normalise", "scale_signed",
           "first_component", "fuse", "Layout", "cam_linear", "find_layer", "get_layer", "layout_of", "spatial_layers",
           "split_layers"]

METHODS: dict[str, type[BaseCAM]] = {c.name: c for c in (
    CAM, GradCAM, GradCAMpp, XGradCAM, LayerCAM, ScoreCAM, HiResCAM, EigenCAM, EigenGradCAM, AblationCAM,
    SSCAM, ISCAM, SmoothGradCAMpp, FullGrad)}


def describe_methods() -> list[tuple[str, str, str, str]]:
    """(name, paper line, what it needs, peers that have it) per method: `--list-methods`."""
    return [(name, (cls.__doc__ or "").split(":")[0].strip(), cls.needs, ", ".join(cls.peers) or "-")
            for name, cls in METHODS.items()]


def make_cam(method: str | None, model: nn.Module, layer: str | list[str] | None = None,
             probe: Tensor | None = None, **options) -> BaseCAM:
    """The CAM extractor by name (options: signed, aug_smooth, eigen_smooth); None picks exact
    `cam` when the head allows, else `gradcam` (also when a `probe` input shows that the body's
    output is 1 x 1 at that size: exact CAM would have nothing to localise, Grad-CAM then reads
    the last spatial layer)."""
    if method is None:
        exact = cam_linear(model) is not None and layer is None
        if exact and probe is not None and "0" not in spatial_layers(model, probe):
            exact = False
        method = "cam" if exact else "gradcam"
    return METHODS[check_method(method)](model, layer, **options)


def check_method(method: str) -> str:
    """A CAM method's name (an Enum member or its value), checked against METHODS: the one
    "unknown method" message of `make_cam` and `camkit cam-eval`'s up-front check."""
    method = value(method)
    if method not in METHODS:
        raise CamkitError(f"unknown method '{method}'; choose from {', '.join(METHODS)}")
    return method
