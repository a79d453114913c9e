"""Every training option parsed and validated once, before any image is read, into frozen specs.

    ModelSpec   what builds the network and what a run folder records of it: arch (resolved
                once to torchvision or timm), head, output stride and how it is made
    TrainSpec   ModelSpec + how it is fitted: size, split, batch size, epochs, learning rate,
                recipe, loader, augmentation, precision

`camkit train`, `camkit.train.loop.train`, `camkit.fastai.cam_learner` and `camkit.train.run.load` all go
through these, so a typo (`--arch resnet-34`, `--head CAM`, `--stride 12`) fails in one line
before the dataset is decoded, and a default (the stride) is the same everywhere.

The batch size and the number of epochs adapt to the dataset when they are not given
(`TrainSpec.for_data`): a crawl of ~100 images per class at fastai's usual batch of 64 gets one
or two optimizer steps an epoch, and BatchNorm's running statistics (momentum 0.1) are then
far from the batch statistics the weights were trained under, so the validation loss explodes
(issue 29: 6 -> 15,172 at bs 64; 0.43 at bs 16 on the same 108 images). The rule: the largest
power of two that gives at least `MIN_STEPS_PER_EPOCH` steps an epoch (between 8 and 64), and
enough epochs for `MIN_STEPS` optimizer steps in all (fewer when fine-tuning pretrained
weights). Options given explicitly always win.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from camkit.core.choices import Aug, Head, Precision, Recipe, TrainLoader, choice
from camkit.errors import CamkitError

STRIDES = (8, 16, 32)
STRIDE_FAMILIES = ("resnet", "resnext", "wide_resnet")
MIN_STEPS_PER_EPOCH = 6          # an epoch of fewer steps leaves BatchNorm's running stats behind
BS_RANGE = (8, 64)               # BatchNorm needs a few images per batch; 64 is fastai's default
MIN_STEPS = {"scratch": 240, "pretrained": 60}   # optimizer steps in all (epochs after the frozen ones)
MAX_EPOCHS = {"scratch": 60, "pretrained": 20}
DEFAULT_EPOCHS = 4               # camkit train's and fastai's fine_tune's usual count: a floor
DEFAULT_LR = {"scratch": 3e-3, "pretrained": 2e-3}


# ---------------------------------------------------------------- the architecture

def _torchvision_names() -> set[str]:
    import torchvision.models as tvm

    return set(tvm.list_models(module=tvm))


def _timm_names() -> set[str]:
    try:
        import timm
    except ImportError:
        return set()
    return set(timm.list_models())


def resolve_arch(arch: Any) -> tuple[str, str]:
    """(name, source) for an arch given as a name or a constructor: source 'torchvision' or
    'timm' (torchvision first, as fastai does). An unknown name fails with the closest names."""
    name = arch if isinstance(arch, str) else getattr(arch, "__name__", None)
    if not isinstance(name, str) or not name:
        raise CamkitError(f"--arch must be an architecture name such as resnet34, not {arch!r}")
    tv = _torchvision_names()
    if name in tv:
        return name, "torchvision"
    timm = _timm_names()
    if name in timm:
        return name, "timm"
    close = difflib.get_close_matches(name.lower().replace("-", "").replace("_", ""),
                                      sorted(tv | {n.replace("_", "") for n in tv}), n=3, cutoff=0.6)
    names = list(dict.fromkeys(_tv_name(c, tv) for c in close))   # best match first
    hint = f" (did you mean {', '.join(names)}?)" if names else ""
    extra = "" if timm else " (timm names work when timm is installed)"
    raise CamkitError(f"unknown arch '{name}'{hint}; use a torchvision name such as resnet18, resnet34, "
                      f"resnet50{extra}")


def _tv_name(close: str, names: set[str]) -> str:
    """A fuzzy match (underscores dropped) back to the torchvision name it came from."""
    return close if close in names else next((n for n in sorted(names) if n.replace("_", "") == close), close)


# ---------------------------------------------------------------- the model

@dataclass(frozen=True)
class ModelSpec:
    """The network as a run records it (model.json: arch, head, stride, dilate).

    `stride` is the body's output stride: 32 is the native one; 16 or 8 give 2x / 4x finer
    maps, for torchvision ResNets only. `dilate` says how: True keeps what each kernel sees
    (the stage's first conv loses its stride and every later 3 x 3 conv of the stage is dilated,
    DeepLab's "atrous" ResNet), False only removes the stride (kernels then see a 2x smaller
    neighbourhood than they were pretrained on)."""
    arch: str
    source: str = "torchvision"
    head: str = "cam"
    stride: int = 32
    dilate: bool = False

    @classmethod
    def parse(cls, arch: Any, head: Any = "cam", stride: int | None = None, dilate: bool | None = None,
              pretrained: bool = False) -> "ModelSpec":
        """Check the network options; `pretrained` (weights will be loaded) only sets the
        default of `dilate`."""
        name, source = resolve_arch(arch)
        head = choice(Head, head, "head")
        if stride is None:
            stride = default_stride(name, source, head)
        if stride not in STRIDES:
            raise CamkitError(f"--stride must be 32, 16 or 8, not {stride}")
        if stride != 32 and not (source == "torchvision" and name.startswith(STRIDE_FAMILIES)):
            raise CamkitError(f"--stride {stride} is supported for torchvision ResNet-family archs, not '{name}'")
        if dilate and stride == 32:
            raise CamkitError("--dilate makes a lower output stride by dilation: give --stride 16 or 8 with it")
        return cls(name, source, head, stride, bool(dilate) if dilate is not None else default_dilate(stride, pretrained))

    def to_json(self) -> dict:
        return {"arch": self.arch, "head": self.head, "stride": self.stride, "dilate": self.dilate}


def default_stride(arch: str, source: str = "torchvision", head: str = "cam") -> int:
    """16 for a torchvision ResNet with the CAM head (a 224-px image gets 14 x 14 maps instead of
    7 x 7, fine enough for each class's peak to land on its object, issue 20), else 32."""
    return 16 if head == "cam" and source == "torchvision" and arch.startswith(STRIDE_FAMILIES) else 32


def default_dilate(stride: int, pretrained: bool) -> bool:
    """How a lower stride is made when `dilate` is not given: by dilation when pretrained weights
    are loaded (it keeps what their kernels were trained to see; on three real two-class sets
    with a pretrained body it scored 2 points above the strided stride 16 on average,
    docs/benchmarks.md#issue-29), by stride alone from scratch (the recipe issue 20 tuned)."""
    return stride < 32 and pretrained


# ---------------------------------------------------------------- training

@dataclass(frozen=True)
class TrainSpec:
    """Every option of a training, validated; `bs`, `epochs` None until `for_data` resolves them
    from the number of training images, `lr` None (the default for the regime), a number, or
    'auto' (fastai's `lr_find`)."""
    model: ModelSpec
    size: int = 224
    valid_pct: float = 0.2
    seed: int = 0
    bs: int | None = None
    epochs: int | None = None
    freeze_epochs: int = 1
    lr: float | str | None = None
    pretrained: bool | None = None
    weights: Path | None = None
    recipe: str = "auto"
    loader: str = "tensor"
    aug: str = "fastai"
    precision: str = "auto"

    @classmethod
    def parse(cls, arch: Any = "resnet34", head: Any = "cam", stride: int | None = None, dilate: bool | None = None,
              size: int = 224, valid_pct: float = 0.2, seed: int = 0, bs: int | None = None,
              epochs: int | None = None, freeze_epochs: int = 1, lr: float | str | None = None,
              pretrained: bool | None = None, weights: str | Path | None = None, recipe: Any = "auto",
              loader: Any = "tensor", aug: Any = "fastai", precision: Any = "auto") -> "TrainSpec":
        """Check every option; raise one CamkitError for the first that is wrong."""
        model = ModelSpec.parse(arch, head, stride, dilate, pretrained=weights is not None or pretrained is not False)
        if not (isinstance(valid_pct, (int, float)) and 0 < valid_pct < 1):
            raise CamkitError(f"--valid-pct must be between 0 and 1 (exclusive), not {valid_pct}")
        for name, given, low in (("epochs", epochs, 1), ("size", size, 8), ("bs", bs, 2),
                                 ("freeze-epochs", freeze_epochs, 0)):
            if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < low):
                why = " (BatchNorm needs two images per batch)" if name == "bs" else ""
                raise CamkitError(f"--{name} must be at least {low}{why}, not {given}")
        if weights is not None and pretrained is False:
            raise CamkitError("--weights loads pretrained weights: it cannot be combined with --no-pretrained")
        if weights is not None and not Path(weights).is_file():
            raise CamkitError(f"weights file '{weights}' does not exist")
        recipe = recipe_name(recipe, model.head)
        return cls(model=model, size=size, valid_pct=float(valid_pct), seed=seed, bs=bs, epochs=epochs,
                   freeze_epochs=freeze_epochs, lr=parse_lr(lr), pretrained=pretrained,
                   weights=Path(weights) if weights is not None else None, recipe=recipe,
                   loader=choice(TrainLoader, loader, "loader"), aug=choice(Aug, aug, "aug"),
                   precision=choice(Precision, precision, "precision"))

    def for_data(self, n_train: int, pretrained: bool) -> "TrainSpec":
        """The spec with `bs` and `epochs` resolved for `n_train` training images (per process)."""
        bs = min(self.bs if self.bs is not None else adaptive_bs(n_train), max(n_train, 2))  # a batch is at most the data
        epochs = self.epochs if self.epochs is not None else adaptive_epochs(n_train, bs, pretrained)
        return replace(self, bs=bs, epochs=epochs)

    def base_lr(self, pretrained: bool) -> float:
        """The learning rate when none was found or given."""
        return self.lr if isinstance(self.lr, float) else DEFAULT_LR["pretrained" if pretrained else "scratch"]

    def to_json(self) -> dict:
        """The resolved options, as model.json's `spec` records them."""
        out = {k: v for k, v in asdict(self).items() if k != "model"}
        out["weights"] = str(self.weights) if self.weights is not None else None
        return {**self.model.to_json(), **out}


def recipe_name(recipe: Any, head: str) -> str:
    """The training recipe named (camkit.train.evidence.RECIPES), `auto` resolved for the head: the
    counterfactual recipe with camkit's CAM head (it reads the head's weights), plain with fastai's."""
    name = choice(Recipe, recipe, "recipe")
    if name == "auto":
        return "counterfactual" if head == "cam" else "plain"
    return name


def parse_lr(lr: Any) -> float | str | None:
    """None, 'auto' (fastai's lr_find) or a positive number (also given as a string: the CLI)."""
    if lr is None or lr == "auto":
        return lr
    try:
        number = float(lr)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(lr, bool) or not (math.isfinite(number) and number > 0):
        raise CamkitError(f"--lr must be a positive number or 'auto', not {lr}")
    return number


def adaptive_bs(n_train: int) -> int:
    """The largest power of two within BS_RANGE that gives MIN_STEPS_PER_EPOCH steps an epoch
    (the smallest of the range when even that cannot): 108 images -> 16, 400 -> 64."""
    low, high = BS_RANGE
    bs = high
    while bs > low and n_train // bs < MIN_STEPS_PER_EPOCH:
        bs //= 2
    return bs


def adaptive_epochs(n_train: int, bs: int, pretrained: bool) -> int:
    """At least DEFAULT_EPOCHS, and enough for MIN_STEPS optimizer steps, at most MAX_EPOCHS:
    from scratch, 108 images at bs 16 (6 steps an epoch) -> 40 epochs; fine-tuning -> 10."""
    regime = "pretrained" if pretrained else "scratch"
    steps = max(1, n_train // bs)
    return min(MAX_EPOCHS[regime], max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS[regime] / steps)))
