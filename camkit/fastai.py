"""camkit in a fastai notebook: any `Learner`, CAMs inline, top losses with heatmaps, safe export.

    from fastai.vision.all import *
    import camkit.fastai                           # adds learn.cam, learn.show_cam, learn.export_run
    dls = ImageDataLoaders.from_folder(path, valid_pct=0.2, seed=42, item_tfms=Resize(224))
    learn = vision_learner(dls, resnet34, metrics=error_rate)   # or camkit.fastai.cam_learner(dls, resnet34)
    learn.fine_tune(1)
    learn.show_cam()                               # original | overlay, prediction and probability
    CAMInterpretation.from_learner(learn).plot_top_losses(4)    # maps of the predicted and the actual class
    learn.export_run("runs/exam")                  # tensors + JSON: camkit cam / report work on it

Following fastai's own conventions: behaviour added to `Learner` with fastcore's `@patch`,
an `Interpretation` subclass, `show_*` / `plot_*` names that draw with matplotlib and return
the figure. Maps are computed through the Learner's own DataLoaders (its resize and
normalisation), and drawn on the image as the model saw it.
"""

from __future__ import annotations

import warnings
from os import PathLike
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from fastai.interpret import ClassificationInterpretation
from fastai.learner import Learner
from fastcore.basics import patch
from PIL import Image
from torch import nn

from camkit.cam import BaseCAM, cam_linear, make_cam
from camkit.core.files import refuse_inside_class_folder
from camkit.core.images import list_images, open_or_skip, to_rgb
from camkit.core.render import DIVERGING, Style, plot_cams, plot_top_losses
from camkit.data.folders import IMAGENET_STATS
from camkit.errors import CamkitError
from camkit.explain import CamBatch, Decoded, Explanations, explain_batch, resolve_target
from camkit.train.history import EpochHistory
from camkit.train.models import build_model, rebuild
from camkit.train.run import HeldOut, RunContents, RunInfo, check_out, discard_out, held_out, save_run
from camkit.train.spec import ModelSpec
from camkit.train.verdict import TrainingVerdict, Verdict, judge, verdict_line


def _keep_every_epoch() -> None:
    """Learners made from now on record every epoch of every fit in `learn.epoch_history`
    (fastai's Recorder keeps only the last fit, and `get_preds` replaces even that), so
    `export_run` has the whole history whatever was run in between."""
    from fastai.learner import defaults

    if EpochHistory not in list(defaults.callbacks):
        defaults.callbacks = [*defaults.callbacks, EpochHistory]


_keep_every_epoch()


# ---------------------------------------------------------------- a Learner with camkit's CAM head

def cam_learner(dls, arch, stride: int | None = None, pretrained: bool = True, normalize: bool = True,
                dilate: bool | None = None, **kwargs: Any) -> Learner:
    """`vision_learner` with camkit's CAM head (GAP -> Linear without bias: exact CAM) and
    `camkit train`'s output stride (None: 16 for a torchvision ResNet, else 32; `dilate` makes
    it by dilation, camkit.train.spec.ModelSpec), for any fastai image DataLoaders.

    `arch` is a torchvision constructor (`resnet34`) or a name ("resnet34", or a timm name). The
    model is built once and handed to `Learner` with the arch's splitter; with pretrained
    weights the body is frozen and ImageNet normalisation is added to `dls`, as
    `vision_learner` does. Other keyword arguments go to `Learner` (metrics, loss_func, ...)."""
    spec = ModelSpec.parse(arch, "cam", stride, dilate, pretrained=pretrained)
    built = build_model(spec, dls.c, pretrained=pretrained)
    if normalize and built.pretrained:
        _add_imagenet_norm(dls)
    learn = Learner(dls, built.model, splitter=built.splitter, **kwargs)
    if built.pretrained:
        learn.freeze()
    learn.arch, learn.pretrained, learn.camkit_spec = spec.arch, built.pretrained, spec
    return learn


def _add_imagenet_norm(dls) -> None:
    from fastai.vision.augment import Normalize

    if not any(isinstance(t, Normalize) for t in dls.after_batch.fs):
        dls.add_tfms([Normalize.from_stats(*IMAGENET_STATS)], "after_batch")


# ---------------------------------------------------------------- learn.cam

TAKES = "learn.cam takes image files or folders, PIL images, uint8 pixels, a TensorImage batch or a DataLoader"
NOT_IMAGES = ("fastai.tabular", "fastai.text", "fastai.collab")  # fastai's families whose inputs are not images


def _classes(learn: Learner) -> list[str]:
    vocab = getattr(learn.dls, "vocab", None)
    if vocab is None:
        raise CamkitError("this Learner's DataLoaders have no classes (dls.vocab): camkit explains classifiers")
    return [str(c) for c in vocab]


def _require_images(learn: Learner) -> None:
    """Refuse, in one sentence, a Learner whose items are not one image each (tabular, text,
    collaborative filtering): its calls would otherwise fail deep in pandas or torch."""
    dls, n_inp = learn.dls, getattr(learn.dls, "n_inp", 1)
    if n_inp != 1 or type(dls).__module__.startswith(NOT_IMAGES):
        raise CamkitError(f"camkit explains image classifiers, and this Learner's data is {type(dls).__name__} "
                          f"({n_inp} input{'s' if n_inp != 1 else ''} an item), not images")


def _require_items(learn: Learner, ds_idx: int = 1) -> None:
    """Refuse a Learner whose DataLoader `ds_idx` is missing or empty (what learn.export /
    load_learner leave: the transforms without the data) before anything is computed on it."""
    loaders = list(getattr(learn.dls, "loaders", []))
    try:
        empty = ds_idx >= len(loaders) or len(loaders[ds_idx].dataset) == 0
    except TypeError:  # an iterable dataset: its size is not known before it is read
        empty = False
    if empty:
        kind = {0: "training", 1: "validation"}.get(ds_idx, f"DataLoader {ds_idx}")
        raise CamkitError(f"this Learner has no {kind} images (a Learner from load_learner keeps none): "
                          "give the images, or set learn.dls to DataLoaders over the data")


def _count(name: str, value: Any) -> int:
    """A count the user gives (bs, n, k): a whole number of at least 1, refused otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CamkitError(f"{name} must be a whole number of at least 1, not {value}")
    return int(value)


def _pictures(learn: Learner, x: torch.Tensor) -> list[Image.Image]:
    """The batch as the model saw it (resized, normalisation undone), as PIL images."""
    from fastai.torch_core import TensorImage

    decoded = learn.dls.valid.after_batch.decode(TensorImage(x.detach()))
    arrays = torch.as_tensor(decoded).clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a if a.shape[-1] == 3 else a[..., 0]) for a in arrays]


def _batches(learn: Learner, items: Any, bs: int) -> Iterator[tuple[torch.Tensor, list[Path | str]]]:
    """(normalised batch, names) from paths or folders, PIL images, uint8 pixels, a float
    TensorImage batch or a DataLoader. Files are read with camkit's guarded decode (EXIF, modes,
    pixel cap); an unreadable file found in a folder is skipped with a warning, as the CLI
    does, and the count of skipped files is said at the end (one named directly is an error)."""
    from fastai.data.load import DataLoader

    if isinstance(items, (torch.Tensor, np.ndarray)):
        items = _tensor_input(learn, torch.as_tensor(items))
        if isinstance(items, torch.Tensor):  # a float batch: the model's input as it is
            yield items.to(learn.dls.device), [f"image {i}" for i in range(len(items))]
            return
    if isinstance(items, DataLoader):
        given = False
        for start, b in _numbered(items):
            given = True
            yield b[0], [f"image {start + i}" for i in range(len(b[0]))]
        if not given:
            raise CamkitError("the DataLoader gives no images")
        return
    entries, named = _entries(items)
    skipped = 0
    for start in range(0, len(entries), bs):
        chunk = [(i, e, open_or_skip(e, named) if isinstance(e, Path) else e)
                 for i, e in enumerate(entries[start:start + bs], start)]
        kept = [(i, e, im) for i, e, im in chunk if im is not None]
        skipped += len(chunk) - len(kept)
        if kept:  # the chunk as one batch, whatever the DataLoaders' own batch size
            x = learn.dls.test_dl([im for _, _, im in kept], bs=len(kept)).one_batch()[0]
            yield x, [e if isinstance(e, Path) else f"image {i}" for i, e, _ in kept]
    if skipped:
        warnings.warn(f"learn.cam skipped {skipped} of {len(entries)} images (unreadable, named above)", stacklevel=3)


def _entries(items: Any) -> tuple[list[Path | Image.Image], set[str]]:
    """Image files (folders expanded in place), PIL images and uint8 pixels turned into PIL
    images, in input order; and the files named directly (an error when unreadable)."""
    if isinstance(items, (str, PathLike, Image.Image)):
        items = [items]
    elif not hasattr(items, "__iter__"):
        raise CamkitError(f"{TAKES}, not {type(items).__name__}")
    items = list(items)
    if not items:
        raise CamkitError("no images given to learn.cam")
    entries: list[Path | Image.Image] = []
    for item in items:
        if isinstance(item, (str, PathLike)):
            entries.extend(list_images([item]))
        elif isinstance(item, Image.Image):
            entries.append(to_rgb(item))
        elif isinstance(item, (torch.Tensor, np.ndarray)) and torch.as_tensor(item).dtype == torch.uint8:
            entries.extend(_pixel_images(torch.as_tensor(item), one=True))
        else:
            raise CamkitError(f"{TAKES}, not {type(item).__name__}")
    if not entries:
        raise CamkitError("no images found in " + ", ".join(f"'{p}'" for p in items))
    return entries, {str(Path(p)) for p in items if isinstance(p, (str, PathLike)) and not Path(p).is_dir()}


def _tensor_input(learn: Learner, t: torch.Tensor) -> torch.Tensor | list[Image.Image]:
    """A tensor given to learn.cam: uint8 is pixels (turned into PIL images, then resized and
    normalised by the Learner as files are); a float tensor is the model's input as the
    DataLoaders make it, (B, C, H, W) or one (C, H, W) image, with the model's channels."""
    if t.dtype == torch.uint8:
        return _pixel_images(t, one=t.dim() < 4)
    if not t.is_floating_point():
        raise CamkitError(f"pixels must be uint8 (0-255), or a float batch as the Learner's DataLoaders make it, "
                          f"not {t.dtype}")
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise CamkitError(f"a float batch must be (B, C, H, W), or one (C, H, W) image, not {tuple(t.shape)}")
    if len(t) == 0:
        raise CamkitError("the batch holds no images")
    want = _in_channels(learn.model)
    if want is not None and t.shape[1] != want:
        raise CamkitError(f"a float batch is the model's input as the DataLoaders make it (resized, normalised), so "
                          f"it needs {want} channels, not {t.shape[1]}; give uint8 pixels, PIL images or files to have "
                          "them converted")
    return t


CHANNELS = (1, 3, 4)  # grayscale, RGB, RGBA


def _pixel_images(t: torch.Tensor, one: bool) -> list[Image.Image]:
    """uint8 pixels as RGB images: (H, W) grayscale, or (H, W, C) / (C, H, W) with C 1, 3 or 4
    (`one` image, else a batch of them); grayscale is replicated and alpha laid on white, as
    camkit's decode of a file does (camkit.core.images.to_rgb). Channels first or last is read
    from which of the two axes is 1, 3 or 4; when both or neither are, it is refused."""
    shape = tuple(t.shape)
    if one and t.dim() == 2:
        t = t[..., None]
    t = t[None] if one else t
    if t.dim() != 4:
        raise CamkitError(f"uint8 pixels must be (H, W), (H, W, C), (C, H, W) or a batch of them, not {shape}")
    first, last = t.shape[1] in CHANNELS, t.shape[-1] in CHANNELS
    if first == last:
        raise CamkitError(f"cannot tell which axis holds the channels of uint8 pixels {shape}: give (H, W, C) or "
                          "(C, H, W) with C 1, 3 or 4")
    if len(t) == 0:
        raise CamkitError("the batch holds no images")
    arrays = (t.permute(0, 2, 3, 1) if first else t).cpu().numpy()
    return [to_rgb(Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)) for a in arrays]


def _in_channels(model: nn.Module) -> int | None:
    """The channels the model's first convolution takes (None: it has none)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


def _numbered(dl) -> Iterator[tuple[int, tuple]]:
    start = 0
    for b in dl:
        if not isinstance(b[0], torch.Tensor) or b[0].dim() != 4:
            raise CamkitError("the DataLoader does not give image batches (B, C, H, W)")
        yield start, b
        start += len(b[0])


def learner_batches(learn: Learner, items: Any, extractor: BaseCAM, target: Any = "pred",
                    bs: int = 16) -> Iterator[CamBatch]:
    """CAM batches for `items` through the Learner's DataLoaders (see `Learner.cam`)."""
    _require_images(learn)
    bs = _count("bs", bs)
    classes = _classes(learn)
    tgt = resolve_target(target, classes)
    learn.model.eval()
    with extractor:
        for x, names in _batches(learn, items, bs):
            pictures = _pictures(learn, x)
            decoded = [Decoded(i, n, p.size, None, p) for i, (n, p) in enumerate(zip(names, pictures))]
            yield explain_batch(extractor, x, decoded, tgt, classes)


@patch
def cam(self: Learner, items: Any = None, method: str | None = None, target: Any = "pred",
        layer: str | None = None, bs: int = 16, **options) -> Explanations:
    """Class activation maps for `items`: image files or folders, PIL images, uint8 pixels
    ((H, W), (H, W, C), (C, H, W) or a batch; C 1, 3 or 4), a float TensorImage batch as the
    DataLoaders make it, or a DataLoader (default: the validation set). An unreadable file
    found in a folder is skipped with a warning, as the CLI does. Returns the same results as
    `camkit.explain.explain`: image, prediction, probability, target and map per item, each
    with the picture the model saw; they render inline as the last expression of a cell.
    `method` None picks exact CAM for camkit's CAM head, else Grad-CAM. `target`: 'pred', a
    class name or index, 'contrast' or a camkit.cam.targets target (ContrastTarget(a, b) ...);
    `options`: signed, aug_smooth, eigen_smooth (camkit.cam.make_cam)."""
    _require_images(self)
    extractor = make_cam(method, self.model, layer, **options)
    items = _first_items(self, None) if items is None else items
    return Explanations(r for b in learner_batches(self, items, extractor, target, bs) for r in b.results)


@patch
def show_cam(self: Learner, items: Any = None, method: str | None = None, target: Any = "pred",
             n: int = 9, ncols: int = 3, alpha: float = 0.5, layer: str | None = None, signed: bool = False,
             **options):
    """A grid of original | overlay with the predicted class and probability as titles; with no
    items, the first `n` images of the validation set. Returns the matplotlib figure. `signed`
    draws evidence for (red) and against (blue) with a diverging colormap."""
    n, ncols = _count("n", n), _count("ncols", ncols)
    _require_images(self)
    if items is None:
        items = _first_items(self, n)
    results = self.cam(items, method=method, target=target, layer=layer, signed=signed, **options)[:n]
    style = Style(alpha=alpha, colormap=DIVERGING, signed=True) if signed else Style(alpha=alpha)
    return plot_cams(results, ncols=ncols, style=style)


def _first_items(learn: Learner, n: int | None) -> Any:
    """The first n items of the validation set as files when it has them (names in the
    results), else its batches (n None: all)."""
    _require_items(learn)
    dl = learn.dls.valid
    items = getattr(dl, "items", None)
    if items is not None and len(items) and isinstance(items[0], (str, Path)):
        return [Path(p) for p in list(items)[:n]]
    return dl if n is None else dl.one_batch()[0][:n]


# ---------------------------------------------------------------- top losses with maps

class CAMInterpretation(ClassificationInterpretation):
    """fastai's ClassificationInterpretation (confusion matrix, most_confused, top_losses) whose
    `plot_top_losses` shows, for each image, the map of the predicted class and the map of the
    actual class: where the model looked for what it said, and for what it should have said.
    `from_learner(learn, ds_idx=0)` scores the training set (crawled data is cleaned on both)."""

    @classmethod
    def from_learner(cls, learn: Learner, ds_idx: int = 1, dl=None, act=None) -> CAMInterpretation:
        """fastai's `from_learner`, refusing in one sentence what it would fail on deep inside:
        a Learner that is not for images, a `ds_idx` that names no DataLoader, no images."""
        _require_images(learn)
        if dl is None:
            n = len(learn.dls.loaders)
            if isinstance(ds_idx, bool) or not isinstance(ds_idx, int) or not 0 <= ds_idx < n:
                raise CamkitError(f"ds_idx {ds_idx!r} is not one of this Learner's {n} DataLoaders "
                                  "(0: the training set, 1: the validation set)")
            _require_items(learn, ds_idx)
        elif len(dl.dataset) == 0:
            raise CamkitError("the DataLoader given to CAMInterpretation.from_learner holds no images")
        return super().from_learner(learn, ds_idx, dl, act)

    def plot_top_losses(self, k: int = 9, largest: bool = True, cam: bool = True, method: str | None = None,
                        alpha: float = 0.5, **kwargs: Any):
        """k rows: image | map of the prediction | map of the actual class, titled with both
        classes, the probability and the loss. Returns the figure (`cam=False`: fastai's plot,
        which also takes a list of positions for `k`). A k beyond the images scored shows them
        all, with a warning that says so (fastai's own would stop with a torch error)."""
        if not cam and isinstance(k, (list, tuple, range)):
            return super().plot_top_losses(k, largest, **kwargs)
        k = self._shown(k)
        if not cam:
            return super().plot_top_losses(k, largest, **kwargs)

        losses, idx = self.top_losses(k, largest)
        inps, _, targs, _, _ = self[idx]
        x = inps[0] if isinstance(inps, (tuple, list)) else inps
        extractor = make_cam(method, self.learn.model)
        actual = [int(t) for t in (targs[0] if isinstance(targs, (tuple, list)) else targs)]
        by_pred = next(learner_batches(self.learn, x, extractor, "pred", len(x))).results
        by_truth = next(_batches_for_targets(self.learn, x, extractor, actual)).results
        return plot_top_losses(by_pred, by_truth, losses.tolist(), Style(alpha=alpha))

    def _shown(self, k: Any) -> int:
        """k, at least 1, at most the number of images scored (with a warning when cut)."""
        k, n = _count("k", k), len(self.losses)
        if k > n:
            warnings.warn(f"only {n} images were scored: showing all {n}", stacklevel=3)
        return min(k, n)

    @property
    def verdict(self) -> Verdict:
        """The training verdict on the scored images (camkit.train.verdict): accuracy against always
        answering the larger class (fastai's confusion matrix), and the Learner's loss history.
        Read it before the maps: the maps of an unusable model explain nothing."""
        return judge(self.confusion_matrix().tolist(), _classes(self.learn), _history(self.learn),
                     _train_counts(self.learn), bool(getattr(self.learn, "pretrained", False)))


def _batches_for_targets(learn: Learner, x: torch.Tensor, extractor: BaseCAM, targets: list[int]) -> Iterator[CamBatch]:
    classes = _classes(learn)
    with extractor:
        pictures = _pictures(learn, x)
        decoded = [Decoded(i, f"image {i}", p.size, None, p) for i, p in enumerate(pictures)]
        yield explain_batch(extractor, x.to(learn.dls.device), decoded, targets, classes)


# ---------------------------------------------------------------- export in camkit's safe format

@patch
def export_run(self: Learner, path: str | Path, overwrite: bool = False) -> Path:
    """Write the Learner as a camkit run folder (model.pth tensors + model.json, history,
    held-out predictions, figures): never a pickle, so `camkit cam / report / cam-eval` and
    `camkit.train.run.load` work on a notebook-trained model. Refuses a non-empty folder that is not
    a run (and an existing run unless `overwrite`), and a model camkit cannot rebuild."""
    _require_images(self)
    _require_items(self)
    path = Path(path)
    refuse_inside_class_folder(path, (getattr(getattr(self, "dls", None), "path", None),), "export_run path")
    created = check_out(path, overwrite)  # before the predictions pass, as train does
    try:
        contents = run_contents(self)
        save_run(path, contents, overwrite)
    except BaseException:
        discard_out(path, created)
        raise
    if contents.info.verdict["status"] != "ok":
        warnings.warn(TrainingVerdict(verdict_line(contents.info.verdict, path)), stacklevel=2)
    return path


@patch
def export_onnx(self: Learner, path: str | Path, opset: int = 17, int8: bool = False):
    """The Learner as camkit's ONNX explainer at `path` (camkit.export.onnx.export_onnx: uint8 images
    in, normalised inside; logits, probs and every class's exact CAM out), with its sidecar
    `path.json`, checked against torch on the validation images before it is written. Needs
    camkit's CAM head (`cam_learner`). Returns the OnnxExport."""
    import tempfile

    from camkit.export.onnx import export_onnx, require_onnx

    require_onnx()
    if cam_linear(self.model) is None:
        raise CamkitError("learn.export_onnx needs camkit's CAM head (cam_learner): with fastai's head the maps "
                          "need gradients, which a forward graph cannot carry")
    with tempfile.TemporaryDirectory(prefix="camkit-onnx-") as tmp:   # the run format is what export reads
        return export_onnx(self.export_run(Path(tmp) / "run"), path, opset, int8)


@patch
def verdict(self: Learner) -> Verdict:
    """The training verdict of this Learner on its validation set (camkit.train.verdict): whether it
    beats always answering the larger class and whether its losses behaved. `export_run`
    saves it in model.json and warns when it is not ok."""
    _require_images(self)
    _require_items(self)
    _, held, summary = _evaluation(self)
    return judge(held.confusion, _classes(self), _history(self), summary.get("train_counts"),
                 bool(getattr(self, "pretrained", False)))


def run_contents(learn: Learner):
    """What `export_run` writes, checked first: the arch rebuilt by camkit must take the
    Learner's weights exactly."""
    spec = _describe(learn)
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu() for k, v in learn.model.state_dict().items()}
    classes = _classes(learn)
    try:
        rebuild(spec, len(classes), state)
    except CamkitError as e:   # camkit.train.models.StateMismatch, or an arch camkit cannot build
        raise CamkitError(f"this Learner's model is not one camkit can rebuild as {spec.arch} with the {spec.head} "
                          f"head ({str(e).splitlines()[0][:120]})") from None
    size, resize = _input_size(learn)
    history, held, summary = _evaluation(learn)
    pretrained = bool(getattr(learn, "pretrained", False))
    verdict = judge(held.confusion, classes, history, summary.get("train_counts"), pretrained)
    info = RunInfo.describe(spec, classes=classes, size=size, stats=_stats(learn), pretrained=pretrained, complete=True,
                            epochs_planned=len(history), confusion=held.confusion, summary=summary,
                            data_root=str(Path(learn.dls.path).resolve()), resize=resize, verdict=verdict.to_json(),
                            spec=spec.to_json())
    return RunContents(info, state, history, held.rows)


def _describe(learn: Learner) -> ModelSpec:
    """The Learner's network as a ModelSpec: cam_learner's own, else read off the model."""
    spec = getattr(learn, "camkit_spec", None)
    if isinstance(spec, ModelSpec):
        return spec
    arch = getattr(learn, "arch", None)
    if arch is None:
        raise CamkitError("cannot tell this Learner's architecture (learn.arch); build it with vision_learner "
                          "or camkit.fastai.cam_learner")
    return ModelSpec.parse(arch, "cam" if cam_linear(learn.model) is not None else "fastai", 32)


def _input_size(learn: Learner) -> tuple[int, str]:
    """The side the model is fed and how images are brought to it (fastai's Resize: crop or squish)."""
    resize = next((t for t in learn.dls.after_item.fs if type(t).__name__ == "Resize"), None)
    if resize is not None:
        h, w = resize.size
        method = str(resize.method)
        if h != w or method not in ("crop", "squish"):
            raise CamkitError(f"export needs a square Resize by crop or squish, not {resize.size} by {method}")
        return int(h), method
    x = learn.dls.valid.one_batch()[0]
    if x.shape[-1] != x.shape[-2]:
        raise CamkitError(f"export needs square inputs, not {tuple(x.shape[-2:])}")
    return int(x.shape[-1]), "squish"


def _stats(learn: Learner) -> tuple[list[float], list[float]]:
    from fastai.vision.augment import Normalize

    norm = next((t for t in learn.dls.after_batch.fs if isinstance(t, Normalize)), None)
    if norm is None:
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return ([float(v) for v in norm.mean.flatten()], [float(v) for v in norm.std.flatten()])


def _history(learn: Learner) -> list[dict]:
    """Every epoch, from `learn.epoch_history` (Learners made after `import camkit.fastai`);
    else the last fit's epochs from fastai's Recorder — which a later `get_preds` or `validate`
    replaces with one validation row, so only rows with a number for every metric name count."""
    kept = getattr(learn, "epoch_history", None)
    if kept is not None and kept.rows:
        return list(kept.rows)
    recorder = getattr(learn, "recorder", None)
    names = list(getattr(recorder, "metric_names", [])[1:-1])  # none before the first fit (learn.load)
    rows = [list(v) for v in getattr(recorder, "values", [])]
    if not names or not rows or any(len(r) != len(names) or None in r for r in rows):
        return []
    return [{"epoch": i, "phase": "all", **{n: round(float(v), 6) for n, v in zip(names, r)}}
            for i, r in enumerate(rows)]


def _train_counts(learn: Learner) -> list[int] | None:
    """Training images per class, from the labels alone (no image decoded); None when the
    DataLoaders do not keep labels as fastai's Datasets do."""
    try:
        labels = [int(y) for y in learn.dls.train_ds.tls[1]]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return [labels.count(i) for i in range(len(_classes(learn)))]


def _evaluation(learn: Learner) -> tuple[list[dict], HeldOut, dict]:
    """History (the last fit's, from fastai's Recorder), held-out predictions (camkit.train.run.held_out,
    as `camkit train` keeps them) and summary."""
    history = _history(learn)
    with learn.no_bar():
        probs, targets, losses = learn.get_preds(dl=learn.dls.valid.new(shuffle=False, drop_last=False),
                                                 with_loss=True)
    items = list(getattr(learn.dls.valid, "items", []))
    held = held_out(items, targets, probs, losses, _classes(learn), Path(learn.dls.path))
    summary = {"n_train": len(learn.dls.train_ds), "n_valid": len(learn.dls.valid_ds),
               "train_counts": _train_counts(learn),
               "epochs": len(history), "device": str(learn.dls.device), "valid_accuracy": held.accuracy,
               "valid_loss": held.loss, "source": "fastai Learner"}
    return history, held, summary
