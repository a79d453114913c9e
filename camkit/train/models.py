"""The model, built once: a torchvision or timm backbone cut to its body, an optional lower
output stride, and a head — camkit's CAM head (GAP -> Linear without bias, for which the class
activation map is exact: map_c = sum_k w_ck A_k) or fastai's default head.

Layered as fastai's `vision/learner.py` is: backbone -> `create_body` -> head, with fastai's
per-architecture table (`model_meta`) for where to cut and how to split parameter groups.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn

from camkit.core.choices import Head
from camkit.core.layout import layout_of  # the layout rules CAM uses for any layer
from camkit.errors import CamkitError
from camkit.train.spec import ModelSpec


def cam_head(n_features: int, n_classes: int) -> nn.Sequential:
    """GAP -> Flatten -> Linear(bias=False): the head for which CAM is exact."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(n_features, n_classes, bias=False))


def _torchvision_constructor(arch: str) -> Callable[..., nn.Module]:
    import torchvision.models as tvm

    return getattr(tvm, arch)


def _set_output_stride(body: nn.Module, spec: ModelSpec) -> None:
    """Lower a ResNet body's output stride (32 -> 16 -> 8) in its last one or two stages: the
    stage's strided convs get stride 1, so the maps CAM reads get 2x or 4x finer and the weights
    keep their shapes (pretrained ones still fit). With `spec.dilate`, every 3 x 3 conv after
    that point is dilated by the stride removed (DeepLab's atrous ResNet, torchvision's
    `replace_stride_with_dilation`, which only Bottleneck blocks accept), so each kernel sees the
    same neighbourhood of the image as before; without it, kernels see a 2x smaller one."""
    if spec.stride == 32:
        return
    stages = [m for m in body.children() if isinstance(m, nn.Sequential)]
    if len(stages) < 4:
        raise CamkitError(f"--stride {spec.stride} needs a ResNet body with four stages; '{spec.arch}' has {len(stages)}")
    dilation = 1
    for stage in stages[-(2 if spec.stride == 8 else 1):]:
        for m in stage.modules():
            if not isinstance(m, nn.Conv2d):
                continue
            if m.stride == (2, 2):
                m.stride = (1, 1)
                if spec.dilate and m.kernel_size[0] > 1:
                    _dilate(m, dilation)
            elif spec.dilate and m.kernel_size[0] > 1:
                _dilate(m, dilation * 2)
        dilation *= 2 if spec.dilate else 1


def _dilate(conv: nn.Conv2d, dilation: int) -> None:
    """Dilate a 'same'-padded conv, keeping it 'same' (padding = dilation * (k - 1) / 2)."""
    k = conv.kernel_size[0]
    conv.dilation, conv.padding = (dilation, dilation), (dilation * (k - 1) // 2,) * 2


def _make_backbone(spec: ModelSpec, pretrained: bool | None, weights: str | Path | None
                   ) -> tuple[nn.Module, bool, Callable | None, int | None]:
    """Build the torchvision/timm model; returns (model, weights_loaded, fastai splitter, cut).

    pretrained None: try ImageNet weights, warn and start from scratch when they cannot be
    fetched; True: insist (error offline); False: random init."""
    from fastai.vision.learner import model_meta

    arch = spec.arch
    if spec.source == "timm":
        import timm

        model, options = _timm_create(arch)
        loaded = False
        if weights is None and pretrained is not False:
            try:
                model = timm.create_model(arch, pretrained=True, num_classes=0, **options)
                loaded = True
            except Exception as e:  # offline, hub error: same handling as torchvision below
                _no_weights(arch, pretrained, e)
        splitter, cut = None, None
    else:
        fn = _torchvision_constructor(arch)
        model = fn(weights=None)
        loaded = False
        if weights is None and pretrained is not False:
            try:
                model = fn(weights="DEFAULT")
                loaded = True
            except Exception as e:
                _no_weights(arch, pretrained, e)
        meta = model_meta.get(fn, {})
        splitter, cut = meta.get("split"), meta.get("cut")
    if weights is not None:
        _load_state_dict_file(model, weights)
        loaded = True
    return model, loaded, splitter, cut


TIMM_OPTIONS = ({"global_pool": "", "dynamic_img_size": True}, {"global_pool": ""}, {"dynamic_img_size": True}, {})


def _timm_create(arch: str) -> tuple[nn.Module, dict]:
    """A random-weight timm model without its classifier, and the options it accepted: any input
    size for transformers that allow it (`dynamic_img_size`: camkit trains at --size, not the
    arch's 224), no pooling where the arch allows none (a distilled DeiT insists on its own)."""
    import timm

    for options in TIMM_OPTIONS:
        try:
            return timm.create_model(arch, pretrained=False, num_classes=0, **options), options
        except (TypeError, AssertionError):
            continue
    raise CamkitError(f"timm could not build '{arch}' without its classifier")


class TimmGrid(nn.Module):
    """A timm model's features as a channels-first (B, K, h, w) grid, whatever the arch gives:
    patch tokens (ViT, DeiT: the class / distillation tokens dropped, the rest laid on the
    patch grid), channels-last maps (Swin) or channels-first ones (ConvNeXt, EfficientNet).
    The CAM head's GAP over this grid is the mean over patch tokens, so exact CAM holds."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.prefix = getattr(model, "num_prefix_tokens", None)
        self.kind: str | None = None    # the layout seen at the probe: nchw, nhwc or tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)
        layout = layout_of(features.shape, tuple(x.shape[-2:]), self.prefix)
        if layout is None and self.kind == "nchw" and features.dim() == 4:
            return features   # a CNN whose map is 1 x 1 at this size: still channels-first (CAM falls back)
        if layout is not None:
            self.kind = self.kind or layout.kind
        if layout is None:
            raise CamkitError(f"the features of shape {tuple(features.shape)} are not a spatial map that camkit's "
                              "CAM head can pool; use --head fastai")
        return layout.to_cf(features)


def _timm_body(backbone: nn.Module, arch: str, head: Head, loaded: bool) -> nn.Module:
    """TimmGrid when the arch's features form a spatial grid (checked on one 64-px probe);
    otherwise fastai's TimmBody, which only fastai's head can serve."""
    from fastai.vision.learner import TimmBody

    grid, was = TimmGrid(backbone), backbone.training
    try:
        backbone.eval()  # the probe must not move BatchNorm's running statistics
        with torch.no_grad():
            grid(torch.zeros(1, 3, 64, 64))
        return grid
    except CamkitError:
        if head is Head.cam:
            raise CamkitError(f"arch '{arch}' gives no spatial feature map for camkit's CAM head (GAP -> Linear); "
                              "use --head fastai") from None
    except Exception:  # noqa: BLE001  an arch that cannot run at 64 px: judged at training size instead
        return grid
    finally:
        backbone.train(was)
    return TimmBody(backbone, pretrained=loaded)


def _no_weights(arch: str, pretrained: bool | None, error: Exception) -> None:
    reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
    if pretrained:
        raise CamkitError(f"pretrained weights for '{arch}' could not be loaded ({reason}); "
                          "pass --weights FILE or --no-pretrained")
    warnings.warn(f"pretrained weights for '{arch}' could not be loaded ({reason}); training from scratch",
                  stacklevel=3)


def read_state_dict(path: str | Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    """A state_dict of plain tensors, read with `weights_only=True`: a file someone else made
    (a download, a shared run) is never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise CamkitError(f"{what} '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  any failure to read it as tensors is the file's fault
        raise CamkitError(f"{what} '{path}' is not a plain tensor state_dict ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CamkitError(f"{what} '{path}' does not hold a state_dict of tensors")
    return state


def _load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    state = read_state_dict(path)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own and not k.startswith(("fc.", "classifier.", "head."))}
    missing = [k for k in own if k not in state and not k.startswith(("fc.", "classifier.", "head."))]
    if missing or any(state[k].shape != own[k].shape for k in state):
        raise CamkitError(f"weights file '{path}' does not fit this arch "
                          f"({len(missing)} missing tensors, e.g. {missing[:1]})")
    model.load_state_dict(state, strict=False)


class BuiltModel(NamedTuple):
    """The model and what fastai's Learner needs beside it."""
    model: nn.Sequential
    pretrained: bool                   # pretrained weights were loaded (ImageNet or --weights)
    splitter: Callable                 # parameter groups for freeze / discriminative lr


def build_model(arch: str | ModelSpec, n_classes: int, head: str | Head = "cam", pretrained: bool | None = None,
                weights: str | Path | None = None, stride: int = 32, dilate: bool = False) -> BuiltModel:
    """nn.Sequential(body, head), built once, as fastai's `create_cnn_model` lays it out
    (`create_body` -> head), with camkit's CAM head and output stride; the splitter is the
    arch's own from fastai's `model_meta` (fastai's `default_split` otherwise). `arch` is a
    ModelSpec, or a name checked into one with `head`, `stride` and `dilate`."""
    from fastai.vision.learner import add_head, create_body, default_split, num_features_model

    spec = arch if isinstance(arch, ModelSpec) else ModelSpec.parse(arch, head, stride, dilate)
    backbone, loaded, splitter, cut = _make_backbone(spec, pretrained, weights)
    if spec.source == "timm":
        body = _timm_body(backbone, spec.arch, Head(spec.head), loaded)
        n_features = backbone.num_features
    else:
        body = create_body(backbone, 3, loaded, cut)
        n_features = num_features_model(body)
    _set_output_stride(body, spec)
    custom = cam_head(n_features, n_classes) if spec.head == Head.cam.value else None
    model = add_head(body, n_features, n_classes, head=custom)
    return BuiltModel(model, loaded, splitter or default_split)


class StateMismatch(CamkitError):
    """Saved weights that the network rebuilt from its description does not take exactly; the
    message is torch's first line about it."""


def rebuild(spec: ModelSpec, n_classes: int, state: dict[str, torch.Tensor]) -> nn.Sequential:
    """The network `spec` describes, built with no weights downloaded, holding `state` exactly
    (strict: every tensor present and of its shape): how a run is loaded and how a notebook's
    model is checked before it is exported as one. Raises StateMismatch otherwise."""
    model = build_model(spec, n_classes, pretrained=False).model
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, ValueError) as e:
        raise StateMismatch((str(e).splitlines() or [type(e).__name__])[0][:120]) from None
    return model
