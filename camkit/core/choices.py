"""The named choices of camkit's options, as `str` Enums: the CLI lists them in `--help` and
rejects a typo at parse time, and the library accepts either the Enum or its string and checks
it with `choice` (the Enum's own lookup) rather than a list of its own.

Kept free of heavy imports (no torch), so that building the CLI stays fast; tests check that
each Enum matches the registry it names (CAM methods, crawl engines, course datasets).
"""

from __future__ import annotations

from enum import Enum

from camkit.errors import CamkitError


class Precision(str, Enum):
    """`auto` picks bf16 where the hardware has it natively (CUDA, or a CPU with AVX512-BF16 /
    AMX), fp16 on older GPUs, fp32 otherwise."""
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Head(str, Enum):
    cam = "cam"         # GAP -> Flatten -> Linear(bias=False): exact CAM
    fastai = "fastai"   # fastai's create_head (pooling concat, BN, dropout, two Linear)


class Method(str, Enum):
    """CAM methods (camkit.cam.METHODS)."""
    cam = "cam"
    gradcam = "gradcam"
    gradcampp = "gradcam++"
    xgradcam = "xgradcam"
    layercam = "layercam"
    scorecam = "scorecam"
    hirescam = "hirescam"
    eigencam = "eigencam"
    eigengradcam = "eigengradcam"
    ablationcam = "ablationcam"
    sscam = "sscam"
    iscam = "iscam"
    smoothgradcampp = "smoothgradcam++"
    fullgrad = "fullgrad"


class CamEngine(str, Enum):
    """What computes exact CAM and predictions (camkit.export.engine): auto picks ONNX Runtime where the
    run has an exported graph and it is the fastest engine passing the parity gate, else torch."""
    auto = "auto"
    torch = "torch"
    onnx = "onnx"


class Engine(str, Enum):
    """Image search engines (camkit.crawl.ENGINES); auto tries them in order."""
    auto = "auto"
    bing = "bing"
    baidu = "baidu"
    flickr = "flickr"
    google = "google"
    openverse = "openverse"
    wikimedia = "wikimedia"
    ddg = "ddg"          # optional: pip install 'camkit[ddg]'


class License(str, Enum):
    """Licence classes for `camkit crawl --license` (camkit.crawl.licenses.LICENSE_CLASSES)."""
    creativecommons = "creativecommons"   # any Creative Commons licence or public domain
    publicdomain = "publicdomain"         # CC0 or the Public Domain Mark
    commercial = "commercial"             # allows commercial use
    modification = "modification"         # allows adaptations
    noncommercial = "noncommercial"       # allows non-commercial use (every CC licence)


class CreditsFormat(str, Enum):
    markdown = "markdown"
    csv = "csv"


class TrainLoader(str, Enum):
    tensor = "tensor"  # camkit's: every image decoded once into a uint8 tensor (squished)
    fastai = "fastai"  # fastai's ImageDataLoaders: Resize by centre crop, decoded per item


class Aug(str, Enum):
    """Training-batch augmentation."""
    fastai = "fastai"  # fastai's aug_transforms: flip, rotate, zoom, warp, lighting
    flip = "flip"      # a horizontal flip only
    none = "none"


class Recipe(str, Enum):
    """How the CAM head is trained so that each class is found by its own evidence
    (camkit.train.evidence.RECIPES)."""
    auto = "auto"            # counterfactual with the CAM head, plain with fastai's
    plain = "plain"          # cross-entropy on the images as they are
    negatives = "negatives"  # + patch-shuffled copies as a hidden "neither" (a fixed zero logit)
    mosaic = "mosaic"        # + negatives + 2x2 mosaics of whole images, both classes' targets
    bce = "bce"              # per-class sigmoid (multi-label BCE) + negatives + mosaics
    erasing = "erasing"      # random erasing of one rectangle per image
    counterfactual = "counterfactual"  # + each image with its own class's map region erased, as "neither"


class EvalSplit(str, Enum):
    """Which of the run's images `camkit cam-eval` scores when no boxes are given."""
    valid = "valid"
    train = "train"


class CleanSplit(str, Enum):
    """Which images `camkit clean` scores: all, training only, or the run's held-out set."""
    all = "all"
    train = "train"
    valid = "valid"


class Loader(str, Enum):
    tensor = "tensor"            # camkit's: batches sliced from one uint8 tensor
    torchvision = "torchvision"  # the course's Dataset + DataLoader


class CourseDataset(str, Enum):
    mnist = "mnist"
    fashion_mnist = "fashion-mnist"
    digits = "digits"
    cifar10 = "cifar10"


def value(choice: str | Enum | None) -> str | None:
    """The plain string of a choice given as an Enum or a string."""
    return getattr(choice, "value", choice)


def values(enum: type[Enum]) -> tuple[str, ...]:
    """The plain strings of an Enum's choices, in their order (what a file may hold)."""
    return tuple(e.value for e in enum)


def choice(enum: type[Enum], given: str | Enum, option: str) -> str:
    """The plain string of `given` (an Enum or a string) when it is one of `enum`'s choices: the
    Enum's own lookup, so the library refuses what the CLI's parser refuses, in one sentence
    naming the option `--option` and the choices."""
    try:
        return enum(value(given)).value
    except ValueError:
        raise CamkitError(f"--{option} must be one of {', '.join(values(enum))}, not '{value(given)}'") from None
