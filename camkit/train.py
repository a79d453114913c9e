"""Train a classifier on a class-per-folder image dataset and save it in a safe format.

`train(...)` is what `camkit train` runs; `load(...)` gives back an eval-mode model with its
classes and preprocessing, from plain tensors only (`torch.load(weights_only=True)`).
The default head is the CAM head (GAP -> Linear without bias), which makes the class
activation map exact: map_c = sum_k w_ck * A_k.
"""

from __future__ import annotations

import csv
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from camkit.data import IMAGENET_STATS, FolderData, TensorBatches, load_folder
from camkit.device import default_device
from camkit.errors import CamkitError
from camkit.images import open_rgb, resize_square

MODEL_FORMAT = "camkit-model/1"
HEADS = ("cam", "fastai")


# ---------------------------------------------------------------- models

def cam_head(n_features: int, n_classes: int) -> nn.Sequential:
    """GAP -> Flatten -> Linear(bias=False): the head for which CAM is exact."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(n_features, n_classes, bias=False))


def _torchvision_constructor(arch: str) -> Callable[..., nn.Module] | None:
    import torchvision.models as tvm

    fn = getattr(tvm, arch, None)
    return fn if callable(fn) and arch in tvm.list_models(module=tvm) else None


def _timm_available(arch: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return arch in timm.list_models()


def _set_output_stride(body: nn.Module, stride: int, arch: str) -> None:
    """Lower a ResNet body's output stride (32 -> 16 -> 8) by giving the first block of the
    last one or two stages stride 1. The weights keep their shapes (pretrained ones still fit);
    the maps CAM reads get 2x or 4x finer."""
    if stride == 32:
        return
    if stride not in (16, 8):
        raise CamkitError(f"--stride must be 32, 16 or 8, not {stride}")
    stages = [m for m in body.children() if isinstance(m, nn.Sequential)]
    if not arch.startswith(("resnet", "resnext", "wide_resnet")) or len(stages) < 4:
        raise CamkitError(f"--stride {stride} is supported for ResNet-family archs, not '{arch}'")
    for stage in stages[-(2 if stride == 8 else 1):]:
        for m in stage[0].modules():
            if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                m.stride = (1, 1)


def _make_backbone(arch: str, pretrained: bool | None, weights: str | Path | None
                   ) -> tuple[nn.Module, bool, Callable | None, int | None]:
    """Build the torchvision/timm model; returns (model, weights_loaded, fastai splitter, cut).

    pretrained None: try ImageNet weights, warn and start from scratch when they cannot be
    fetched; True: insist (error offline); False: random init."""
    from fastai.vision.learner import model_meta

    fn = _torchvision_constructor(arch)
    if fn is None and not _timm_available(arch):
        raise CamkitError(f"unknown arch '{arch}'; use a torchvision name such as resnet18, resnet34, "
                          "resnet50 (timm names work when timm is installed)")
    if fn is None:
        import timm

        model = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="")
        loaded = False
        if weights is None and pretrained is not False:
            try:
                model = timm.create_model(arch, pretrained=True, num_classes=0, global_pool="")
                loaded = True
            except Exception as e:  # offline, hub error: same handling as torchvision below
                _no_weights(arch, pretrained, e)
        splitter, cut = None, None
    else:
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


def _no_weights(arch: str, pretrained: bool | None, error: Exception) -> None:
    reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
    if pretrained:
        raise CamkitError(f"pretrained weights for '{arch}' could not be loaded ({reason}); "
                          "pass --weights FILE or --no-pretrained")
    warnings.warn(f"pretrained weights for '{arch}' could not be loaded ({reason}); training from scratch",
                  stacklevel=3)


def _load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise CamkitError(f"weights file '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CamkitError(f"weights file '{path}' is not a plain tensor state_dict ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise CamkitError(f"weights file '{path}' does not hold a state_dict")
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own and not k.startswith(("fc.", "classifier.", "head."))}
    missing = [k for k in own if k not in state and not k.startswith(("fc.", "classifier.", "head."))]
    if missing or any(state[k].shape != own[k].shape for k in state):
        raise CamkitError(f"weights file '{path}' does not fit this arch "
                          f"({len(missing)} missing tensors, e.g. {missing[:1]})")
    model.load_state_dict(state, strict=False)


def build_model(arch: str, n_classes: int, head: str = "cam", pretrained: bool | None = None,
                weights: str | Path | None = None, stride: int = 32
                ) -> tuple[nn.Sequential, bool, Callable | None]:
    """nn.Sequential(body, head) as fastai's vision_learner builds it; returns
    (model, pretrained weights loaded, splitter)."""
    from fastai.vision.learner import add_head, create_body, num_features_model

    if head not in HEADS:
        raise CamkitError(f"--head must be one of {', '.join(HEADS)}, not '{head}'")
    backbone, loaded, splitter, cut = _make_backbone(arch, pretrained, weights)
    if _torchvision_constructor(arch) is None:
        from fastai.vision.learner import TimmBody

        body = TimmBody(backbone, pretrained=loaded)
        n_features = backbone.num_features
    else:
        body = create_body(backbone, 3, loaded, cut)
        n_features = num_features_model(body)
    _set_output_stride(body, stride, arch)
    custom = cam_head(n_features, n_classes) if head == "cam" else None
    model = add_head(body, n_features, n_classes, head=custom)
    return model, loaded, splitter


# ---------------------------------------------------------------- saved runs

@dataclass
class LoadedModel:
    """An eval-mode model with what is needed to feed it and name its outputs."""
    model: nn.Sequential
    classes: list[str]
    size: int
    stats: tuple[list[float], list[float]]
    meta: dict
    path: Path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: list) -> torch.Tensor:
        """PIL images (any mode) or paths -> normalised (B, 3, S, S) batch on the model's device."""
        arrays = [resize_square(open_rgb(im) if isinstance(im, (str, Path)) else im.convert("RGB"), self.size)
                  for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(self.device)
        mean = torch.tensor(self.stats[0], device=self.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.stats[1], device=self.device).view(1, 3, 1, 1) * 255
        return (x.float() - mean) / std


def load(model_dir: str | Path, device: str | torch.device | None = None) -> LoadedModel:
    """Load a run saved by `train` (model.json + model.pth), tensors only — no unpickling."""
    model_dir = Path(model_dir)
    meta_path, weights_path = model_dir / "model.json", model_dir / "model.pth"
    if not model_dir.is_dir():
        raise CamkitError(f"model folder '{model_dir}' does not exist")
    if not meta_path.is_file() or not weights_path.is_file():
        raise CamkitError(f"'{model_dir}' is not a camkit run (needs model.json and model.pth)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CamkitError(f"'{meta_path}' is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise CamkitError(f"'{meta_path}' is not a camkit model description (format {MODEL_FORMAT})")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CamkitError(f"'{weights_path}' is not a plain tensor state_dict ({type(e).__name__})") from None
    model, _, _ = build_model(meta["arch"], len(meta["classes"]), meta["head"], pretrained=False,
                              stride=meta.get("stride", 32))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CamkitError(f"'{weights_path}' does not match {meta['arch']} "
                          f"({str(e).splitlines()[0][:120]})") from None
    if not meta.get("complete", False):
        warnings.warn(f"'{model_dir}' holds an incomplete run (training was interrupted)", stacklevel=2)
    device = torch.device(device) if device else default_device()
    model = model.to(device).eval()
    stats = (list(meta["stats"][0]), list(meta["stats"][1]))
    return LoadedModel(model, list(meta["classes"]), int(meta["size"]), stats, meta, model_dir)


# ---------------------------------------------------------------- training

@dataclass
class TrainResult:
    """What `camkit train --json` prints."""
    out: str
    arch: str
    head: str
    stride: int
    pretrained: bool
    classes: list[str]
    n_train: int
    n_valid: int
    epochs: int
    device: str
    precision: str
    train_seconds: float
    images_per_sec: float
    valid_accuracy: float
    valid_loss: float
    skipped: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where bf16 autocast
    roughly halves a ResNet training step; elsewhere bf16 on CPU is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise CamkitError(f"--precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
    if precision != "auto":
        if device.type == "cpu" and precision == "fp16":
            raise CamkitError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def _cpu_autocast_callback():
    """fastai's MixedPrecision is CUDA-only; this is its bf16 counterpart for the CPU (bf16 has
    fp32's range, so no loss scaling is needed)."""
    from fastai.callback.core import Callback

    class CPUAutocast(Callback):
        order = 10

        def before_batch(self):
            self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
            self.ctx.__enter__()

        def after_loss(self):
            self.ctx.__exit__(None, None, None)

        after_cancel_batch = after_loss

    return CPUAutocast()


def _prepare_out(out: Path, overwrite: bool) -> None:
    if (out / "model.json").exists() and not overwrite:
        raise CamkitError(f"'{out}' already holds a run; pass --overwrite or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".camkit-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CamkitError(f"cannot write to output folder '{out}' ({e.strerror or e})") from None
    # an older run's completion marker must not survive a new run in the same folder
    (out / "model.json").unlink(missing_ok=True)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _predict(model: nn.Module, dl: TensorBatches) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and targets over a loader, in eval mode."""
    model.eval()
    probs, targets = [], []
    with torch.no_grad():
        for x, y in dl:
            with torch.autocast(dl.device.type, enabled=dl.device.type == "cuda"):
                logits = model(x)
            probs.append(logits.float().softmax(1).cpu())
            targets.append(y.cpu())
    return torch.cat(probs), torch.cat(targets)


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Rows: actual class, columns: predicted class."""
    return torch.bincount(targets * n_classes + preds, minlength=n_classes ** 2).view(n_classes, n_classes)


def train(data_dir: str | Path, arch: str = "resnet34", epochs: int = 4, size: int = 224, bs: int = 64,
          valid_pct: float = 0.2, seed: int = 0, out: str | Path | None = None, lr: float | None = None,
          head: str = "cam", pretrained: bool | None = None, weights: str | Path | None = None,
          stride: int = 32, freeze_epochs: int = 1, augment: bool = True, overwrite: bool = False,
          device: str | None = None, precision: str = "auto", quiet: bool = False,
          data: FolderData | None = None) -> TrainResult:
    """Fine-tune (or train from scratch) `arch` on a class-per-folder dataset.

    With pretrained weights: fastai's `fine_tune` (frozen body for `freeze_epochs`, then all
    layers). From scratch: `fit_one_cycle` for `epochs` (freezing a random body would waste
    epochs). Writes model.pth + model.json, history.csv, loss.png, confusion.png to `out`.
    `precision` auto: bf16 autocast where the hardware has it (CUDA, or a CPU with AVX512-BF16 /
    AMX), fp16 on older GPUs, fp32 otherwise."""
    import fastai.callback.fp16  # noqa: F401  (Learner.to_fp16 / to_bf16)
    import fastai.callback.schedule  # noqa: F401  (Learner.fit_one_cycle / fine_tune)
    from fastai.data.core import DataLoaders
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy
    from fastai.vision.learner import vision_learner

    if not 0 < valid_pct < 1:
        raise CamkitError(f"--valid-pct must be between 0 and 1 (exclusive), not {valid_pct}")
    for name, value in (("epochs", epochs), ("size", size), ("bs", bs)):
        if value < 1:
            raise CamkitError(f"--{name} must be at least 1, not {value}")
    dev = torch.device(device) if device else default_device()
    precision = resolve_precision(precision, dev)
    data_dir = Path(data_dir)
    out = Path(out) if out else Path("runs") / (data_dir.resolve().name or "run")
    data = data or load_folder(data_dir, size)
    torch.manual_seed(seed)  # before the model is built: the random init is part of the run
    model, loaded, splitter = build_model(arch, len(data.classes), head, pretrained, weights, stride)
    _prepare_out(out, overwrite)

    train_idx, valid_idx = data.split(valid_pct, seed)
    if len(train_idx) == 0:
        raise CamkitError(f"no training images left after a {valid_pct:.0%} validation split")
    stats = IMAGENET_STATS
    # channels_last pays off on GPUs and with bf16 on CPU (resnet34 step 512 -> 442 ms); in
    # fp32 on CPU (oneDNN) it measured 14% slower
    channels_last = dev.type == "cuda" or precision == "bf16"
    train_dl = TensorBatches(data.images[train_idx], data.labels[train_idx], min(bs, len(train_idx)),
                             shuffle=True, stats=stats, augment=augment, seed=seed, channels_last=channels_last)
    valid_dl = TensorBatches(data.images[valid_idx], data.labels[valid_idx], bs, shuffle=False, stats=stats,
                             channels_last=channels_last)
    dls = DataLoaders(train_dl, valid_dl, path=out, device=dev)
    # vision_learner over the model built above (body as the "arch", identity cut, our head):
    # fastai's Learner, splitter, freezing and fine_tune, with camkit's CAM head and stride
    learn = vision_learner(dls, lambda pretrained=False: model[0], n_out=len(data.classes), pretrained=False,
                           normalize=False, custom_head=model[1], splitter=splitter,
                           loss_func=CrossEntropyLossFlat(), metrics=[accuracy], cut=lambda m: m,
                           path=out, model_dir=".")
    learn.model = model.to(dev)
    if channels_last:
        learn.model = learn.model.to(memory_format=torch.channels_last)
    if dev.type == "cuda" and precision != "fp32":
        learn = learn.to_bf16() if precision == "bf16" else learn.to_fp16()
    elif precision == "bf16":
        learn.add_cb(_cpu_autocast_callback())
    if quiet:
        from fastai.callback.progress import ProgressCallback

        learn.remove_cb(ProgressCallback)
        learn.logger = lambda *a, **k: None

    total_epochs = epochs + (freeze_epochs if loaded else 0)
    start = time.perf_counter()
    complete = False
    try:
        if loaded:
            if splitter is not None:
                learn.freeze()
            learn.fine_tune(epochs, base_lr=lr or 2e-3, freeze_epochs=freeze_epochs)
        else:
            learn.fit_one_cycle(epochs, lr or 3e-3)
        complete = True
    except KeyboardInterrupt:
        pass
    seconds = time.perf_counter() - start

    history = _history(learn)
    probs, targets = _predict(learn.model, valid_dl)
    preds = probs.argmax(1)
    valid_loss = float(nn.functional.nll_loss(probs.clamp_min(1e-12).log(), targets))
    n_seen = len(history) * (len(train_idx) + len(valid_idx))
    result = TrainResult(
        out=str(out), arch=arch, head=head, stride=stride, pretrained=loaded, classes=data.classes,
        n_train=len(train_idx), n_valid=len(valid_idx), epochs=len(history), device=str(dev), precision=precision,
        train_seconds=round(seconds, 3), images_per_sec=round(n_seen / seconds, 2) if seconds else 0.0,
        valid_accuracy=round(float((preds == targets).float().mean()), 4), valid_loss=round(valid_loss, 4),
        skipped=[f"{p}: {why}" for p, why in data.skipped], history=history)
    model = learn.model.float().to(memory_format=torch.contiguous_format)
    _save_run(out, model, result, data, size, stats, valid_idx, probs, complete, total_epochs)
    if not complete:
        raise CamkitError(f"training interrupted after {len(history)} of {total_epochs} epochs; "
                          f"the partial run in '{out}' is marked incomplete")
    return result


def _history(learn) -> list[dict]:
    names = [n for n in learn.recorder.metric_names[1:-1]]
    rows = []
    for epoch, values in enumerate(learn.recorder.values):
        row = {"epoch": epoch}
        row.update({n: round(float(v), 6) for n, v in zip(names, values)})
        rows.append(row)
    return rows


def _save_run(out: Path, model: nn.Module, result: TrainResult, data: FolderData, size: int,
              stats: tuple[list[float], list[float]], valid_idx: torch.Tensor, probs: torch.Tensor,
              complete: bool, total_epochs: int) -> None:
    """Weights, figures and tables first; model.json (the completion marker) last."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(out / "model.pth", lambda p: torch.save(state, p))
    with open(out / "history.csv", "w", newline="") as f:
        if result.history:
            writer = csv.DictWriter(f, fieldnames=list(result.history[0]))
            writer.writeheader()
            writer.writerows(result.history)
    valid = [{"file": str(data.files[int(i)]), "label": data.classes[int(data.labels[int(i)])],
              "pred": data.classes[int(p.argmax())], "prob": round(float(p.max()), 5),
              "loss": round(float(-p[int(data.labels[int(i)])].clamp_min(1e-12).log()), 5)}
             for i, p in zip(valid_idx, probs)]
    (out / "valid.json").write_text(json.dumps(valid, indent=1))
    preds = probs.argmax(1)
    targets = data.labels[valid_idx]
    cm = confusion_matrix(preds, targets, len(data.classes))
    from camkit.plots import plot_confusion, plot_losses

    plot_losses(result.history, out / "loss.png")
    plot_confusion(cm.numpy(), data.classes, out / "confusion.png")
    meta = {"format": MODEL_FORMAT, "arch": result.arch, "head": result.head, "stride": result.stride,
            "classes": data.classes, "size": size, "stats": [list(stats[0]), list(stats[1])],
            "pretrained": result.pretrained, "complete": complete, "epochs_planned": total_epochs,
            "confusion": cm.tolist(), "summary": {k: v for k, v in result.to_dict().items() if k != "history"}}
    _atomic_write(out / "model.json", lambda p: p.write_text(json.dumps(meta, indent=1)))
