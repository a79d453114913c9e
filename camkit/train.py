"""Train a classifier on a class-per-folder image dataset and save it as a run folder.

`train(...)` is what `camkit train` runs, and reads as its recipe: check the output folder,
decode the data once, split it, build the model once, wrap it in fastai's `Learner` (as fastai's
own `cnn_learner` is model + `Learner` + `freeze`), fit, evaluate, save. With pretrained
weights the fit is fastai's `fine_tune` (frozen body first); from scratch it is
`fit_one_cycle`. The default head is the CAM head (GAP -> Linear without bias), which makes
the class activation map exact: map_c = sum_k w_ck A_k.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from torch import nn

import fastai.callback.fp16  # noqa: F401,E402  (Learner.to_fp16 / to_bf16)
import fastai.callback.schedule  # noqa: F401,E402  (Learner.fit_one_cycle / fine_tune)
from camkit.choices import value
from camkit.data import IMAGENET_STATS, FolderData, TensorBatches, decode_folder, load_folder
from camkit.device import resolve_device, resolve_precision
from camkit.distributed import ddp_callback, in_group, joined, launch, local_device, main_first, on_main, rank_world
from camkit.errors import CamkitError
from camkit.evidence import get_recipe, load_negatives, recipe_callbacks, recipe_loss, with_recipe
from camkit.images import open_rgb
from camkit.models import BuiltModel, build_model, default_stride
from camkit.run import MODEL_FORMAT, RunContents, RunInfo, check_out, discard_out, save_run


@dataclass
class TrainResult:
    """What `camkit train --json` prints (without the history) and model.json's summary."""
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
    world_size: int = 1          # processes that trained it (torchrun / accelerate launch)
    recipe: str = "plain"

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- callbacks

class CPUAutocast(Callback):
    """fastai's MixedPrecision is CUDA-only; this is its bf16 counterpart for the CPU (bf16 has
    fp32's range, so no loss scaling is needed)."""
    order = 10

    ctx = None

    def before_batch(self):
        self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
        self.ctx.__enter__()

    def after_loss(self):
        if self.ctx is not None:
            self.ctx.__exit__(None, None, None)
            self.ctx = None

    # fastai skips after_batch / after_fit when the forward pass raises (its _with_events has no
    # finally), so `fit` also calls release() on every way out: an error or Ctrl-C mid-batch must
    # not leave bf16 autocast on for the rest of the process (it made the next run's summary
    # disagree with its own history by one image)
    release = after_cancel_batch = after_batch = after_fit = after_loss


class Diverged(CamkitError):
    """The loss became NaN or infinite: the weights are garbage and must not be saved."""


class EpochHistory(Callback):
    """Every epoch of every fit (fine_tune runs two) as one row: epoch, phase (frozen body or
    all), and the Recorder's losses and metrics. fastai's Recorder keeps only the last fit, and
    a later `get_preds` or `validate` replaces even that; these rows stay."""
    order = 60  # after fastai's Recorder, which fills recorder.values at after_epoch

    def __init__(self):
        self.rows: list[dict] = []
        self.trained = False

    def after_train(self):
        self.trained = True  # a fit's training phase ran (get_preds / validate end epochs too)

    def after_epoch(self):
        if not self.trained:
            return
        self.trained = False
        names = self.learn.recorder.metric_names[1:-1]
        row = {"epoch": len(self.rows), "phase": "frozen" if self._frozen() else "all"}
        row.update({n: round(float(v), 6) for n, v in zip(names, self.learn.recorder.values[-1])})
        self.rows.append(row)

    def _frozen(self) -> bool:
        return len(self.learn.opt.param_groups) > 1 and self.learn.opt.frozen_idx > 0


class EpochLog(EpochHistory):
    """EpochHistory, plus one line per epoch on stderr when `verbose` (never a progress bar:
    logs stay small when redirected). A non-finite loss cancels the whole training, not only
    the current fit (fastai's TerminateOnNaNCallback cancels one fit, and fine_tune would
    start its second)."""

    def __init__(self, total_epochs: int, verbose: bool):
        super().__init__()
        self.total, self.verbose = total_epochs, verbose
        self.diverged: str | None = None

    def before_fit(self):
        if self.diverged:
            raise CancelFitException

    def after_batch(self):
        if self.training and not torch.isfinite(self.learn.loss):
            self.diverged = f"the loss became {float(self.learn.loss)} in epoch {len(self.rows) + 1}"
            raise CancelFitException

    def after_epoch(self):
        before = len(self.rows)
        super().after_epoch()
        if len(self.rows) == before:
            return
        row = self.rows[-1]
        if self.verbose:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float))
            print(f"epoch {len(self.rows)}/{self.total} ({row['phase']}): {shown}", file=sys.stderr, flush=True)
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:  # weights went non-finite in the last step: the validation shows it
            self.diverged = f"{bad[0]} became {row[bad[0]]} in epoch {len(self.rows)}"
            raise CancelFitException



# ---------------------------------------------------------------- the recipe

@in_group
def train(data_dir: str | Path, arch: str = "resnet34", epochs: int = 4, size: int = 224, bs: int = 64,
          valid_pct: float = 0.2, seed: int = 0, out: str | Path | None = None, lr: float | None = None,
          head: str = "cam", pretrained: bool | None = None, weights: str | Path | None = None,
          stride: int | None = None, freeze_epochs: int = 1, aug: str = "fastai", loader: str = "tensor",
          overwrite: bool = False, device: str | None = None, precision: str = "auto", quiet: bool = False,
          data: FolderData | None = None, recipe: str = "auto", cache: str | Path | None = None,
          negatives: str | Path | None = None) -> TrainResult:
    """Fine-tune (or train from scratch) `arch` on a class-per-folder dataset and save the run.

    `loader` tensor: decode and resize (squish) every image once, then batches come from one
    uint8 tensor; fastai: fastai's own `ImageDataLoaders` (Resize by centre crop, per-item
    decoding) over the same checked files. `aug`: fastai's `aug_transforms` on training
    batches, a horizontal flip, or none. `precision` auto: bf16 autocast where the hardware
    has it (CUDA, or a CPU with AVX512-BF16 / AMX), fp16 on older GPUs, fp32 otherwise.
    `recipe` (camkit.evidence): what training batches add so that each class is found by its
    own evidence; auto (the default) is counterfactual with the CAM head (each step also trains
    on copies whose own map region is erased, as "neither"), plain (cross-entropy alone) with
    fastai's. `stride` None: 16 for a torchvision ResNet with the CAM head, else 32.
    `negatives`: a folder of images of neither class, a hidden "neither" in every batch.
    `quiet` drops the per-epoch lines on stderr. `cache`: a folder for camkit.cache's decoded
    images (memory-mapped, reused by the next run). Under torchrun / accelerate launch each
    rank trains on its shard with gradients all-reduced, and only rank 0 writes (see
    camkit.distributed)."""
    _check_options(epochs, size, bs, valid_pct, freeze_epochs, lr)
    aug, loader, recipe = value(aug), value(loader), get_recipe(recipe, head)
    stride = default_stride(arch, head) if stride is None else stride
    neg = load_negatives(negatives, size) if negatives is not None else None
    dev = local_device(resolve_device(device))
    precision = resolve_precision(precision, dev)
    data_dir = Path(data_dir)
    out = Path(out) if out else Path("runs") / (data_dir.resolve().name or "run")
    _check_out_not_in_data(out, data_dir)
    created = on_main(lambda: check_out(out, overwrite))
    try:
        if loader == "fastai":
            dls, split = fastai_loaders(data_dir, size, bs, valid_pct, seed, aug, dev)
        else:
            dls, split = make_loaders(data or _load(data_dir, size, cache), bs, valid_pct, seed, aug, dev, precision)
        dls = with_recipe(dls, recipe, len(split.classes), seed, neg)
        torch.manual_seed(seed)  # before the model is built: the random init is part of the run
        built = build_model(arch, len(split.classes), head, pretrained, weights, stride)
        learn = make_learner(dls, built, out, precision)
        learn.loss_func = recipe_loss(recipe, neg is not None) or learn.loss_func
        learn.add_cbs(recipe_callbacks(recipe, seed))
        log, seconds, complete = fit(learn, built.pretrained, epochs, freeze_epochs, lr,
                                      verbose=not quiet and launch().main)
        preds = predict(learn, dls.valid)
        result = summarize(out, arch, head, stride, built.pretrained, split, dev, precision, log.rows, seconds, preds)
        result.recipe = recipe.name + (" + negatives folder" if neg is not None else "")
        contents = run_contents(result, learn.model, split, data_dir, size, preds, complete,
                                epochs + (freeze_epochs if built.pretrained else 0))
        on_main(lambda: _save(out, contents, overwrite, complete))
    except BaseException:
        discard_out(out, created)
        raise
    return result


def _check_options(epochs: int, size: int, bs: int, valid_pct: float, freeze_epochs: int,
                   lr: float | None) -> None:
    if not 0 < valid_pct < 1:
        raise CamkitError(f"--valid-pct must be between 0 and 1 (exclusive), not {valid_pct}")
    for name, given, low in (("epochs", epochs, 1), ("size", size, 8), ("bs", bs, 2), ("freeze-epochs", freeze_epochs, 0)):
        if given < low:
            why = " (BatchNorm needs two images per batch)" if name == "bs" else ""
            raise CamkitError(f"--{name} must be at least {low}{why}, not {given}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise CamkitError(f"--lr must be a positive number, not {lr}")


def _load(data_dir: Path, size: int, cache: str | Path | None) -> FolderData:
    """The folder decoded: into memory, or through the cache (built by rank 0 first, the other
    ranks then only open it)."""
    if cache is None:
        return load_folder(data_dir, size)
    return main_first(lambda: load_folder(data_dir, size, cache=cache))


@dataclass
class Split:
    """What the run keeps of its data: the classes, how many images trained, and the held-out
    files with their labels, in the order the validation loader gives them."""
    classes: list[str]
    n_train: int
    valid_files: list[Path]
    valid_labels: torch.Tensor
    skipped: list[tuple[Path, str]]
    resize: str                 # how images reached size x size: squish or crop


def _check_out_not_in_data(out: Path, data_dir: Path) -> None:
    """A run inside the dataset would be taken as a class by the next training."""
    if data_dir.is_dir() and out.resolve().is_relative_to(data_dir.resolve()):
        raise CamkitError(f"--out '{out}' is inside the data folder '{data_dir}'; the next training would "
                          "take it as a class: choose an --out outside it")


def _split(data: FolderData, valid_pct: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    train_idx, valid_idx = data.split(valid_pct, seed)
    if len(train_idx) < 2:
        raise CamkitError(f"{len(train_idx)} training image(s) left after a {valid_pct:.0%} validation split; "
                          "at least 2 are needed")
    return train_idx, valid_idx


def make_loaders(data: FolderData, bs: int, valid_pct: float, seed: int, aug: str, device: torch.device,
                 precision: str) -> tuple[DataLoaders, Split]:
    """Batches from the decoded tensor: augmented (training), normalised and moved in one go.
    A memory-mapped dataset is indexed by rows, never copied whole; in a process group each
    rank trains on its shard (every rank validates on the whole held-out set)."""
    train_idx, valid_idx = _split(data, valid_pct, seed)
    rank, world = rank_world()
    if len(train_idx) // world < 2:
        raise CamkitError(f"{len(train_idx)} training images cannot be shared by {world} processes "
                          "(each needs at least 2)")
    # channels_last pays off on GPUs and with bf16 on CPU (resnet34 step 512 -> 442 ms); in
    # fp32 on CPU (oneDNN) it measured 14% slower
    channels_last = device.type == "cuda" or precision == "bf16"
    def subset(idx: torch.Tensor) -> dict:
        return ({"images": data.images, "rows": idx} if data.mapped else {"images": data.images[idx]})

    train_dl = TensorBatches(labels=data.labels[train_idx], bs=min(bs, len(train_idx) // world), shuffle=True,
                             stats=IMAGENET_STATS, aug=aug, seed=seed, channels_last=channels_last,
                             rank=rank, world=world, **subset(train_idx))
    valid_dl = TensorBatches(labels=data.labels[valid_idx], bs=bs, shuffle=False,
                             stats=IMAGENET_STATS, channels_last=channels_last, **subset(valid_idx))
    split = Split(data.classes, len(train_idx), [data.files[int(i)] for i in valid_idx], data.labels[valid_idx],
                  data.skipped, "squish")
    return DataLoaders(train_dl, valid_dl, device=device), split


def fastai_loaders(data_dir: Path, size: int, bs: int, valid_pct: float, seed: int, aug: str,
                   device: torch.device) -> tuple[DataLoaders, Split]:
    """fastai's `ImageDataLoaders` as the course builds them — `valid_pct`, `seed`,
    `item_tfms=Resize(size)`, `batch_tfms=aug_transforms()` — over the files camkit checked
    (class folders only, hidden and unreadable files skipped with a warning), with ImageNet
    normalisation as `vision_learner` adds it."""
    from fastai.vision.augment import Flip, Normalize, Resize, aug_transforms
    from fastai.vision.data import ImageDataLoaders

    if joined():
        raise CamkitError("--loader fastai trains in one process; use --loader tensor under torchrun / accelerate")

    classes, kept, skipped = decode_folder(data_dir, lambda f: open_rgb(f).size)
    files, labels = [f for f, _, _ in kept], [classes[c] for _, c, _ in kept]
    batch_tfms = {"fastai": aug_transforms(), "flip": [Flip()], "none": []}[aug]
    dls = ImageDataLoaders.from_lists(data_dir, files, labels, valid_pct=valid_pct, seed=seed,
                                      item_tfms=Resize(size), batch_tfms=[*batch_tfms, Normalize.from_stats(*IMAGENET_STATS)],
                                      bs=bs, num_workers=0, device=device)
    if len(dls.train_ds) < 2 or len(dls.vocab) != len(classes):
        raise CamkitError(f"{len(dls.train_ds)} training images in {len(dls.vocab)} classes after the split; "
                          "each class needs images in training")
    label_of = dict(zip(files, labels))
    valid_files = [Path(item[0]) for item in dls.valid.items]  # from_lists items are (file, label)
    split = Split(list(dls.vocab), len(dls.train_ds), valid_files,
                  torch.tensor([dls.vocab.o2i[label_of[f]] for f in valid_files]), skipped, "crop")
    return dls, split


def make_learner(dls: DataLoaders, built: BuiltModel, out: Path, precision: str) -> Learner:
    """fastai's Learner over the model built once (fastai's `cnn_learner` is model + Learner +
    freeze; `fine_tune` freezes by itself), with the precision's callbacks and no progress bar."""
    from fastai.callback.progress import ProgressCallback

    model = built.model.to(dls.device)
    if dls.device.type == "cuda" or precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=[accuracy], splitter=built.splitter,
                    path=out, model_dir=".")
    if dls.device.type == "cuda" and precision != "fp32":
        learn = learn.to_bf16() if precision == "bf16" else learn.to_fp16()
    elif precision == "bf16":
        learn.add_cb(CPUAutocast())
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *a, **k: None  # camkit's EpochLog prints one line per epoch instead
    if joined():
        learn.add_cb(ddp_callback(dls.device))
    return learn


def fit(learn: Learner, pretrained: bool, epochs: int, freeze_epochs: int, lr: float | None,
        verbose: bool = True) -> tuple[EpochLog, float, bool]:
    """fine_tune with pretrained weights (frozen body first), fit_one_cycle from scratch (freezing
    a random body would waste epochs). Returns (epoch log, seconds, completed); Ctrl-C ends
    the fit early and is reported as not completed."""
    total = epochs + (freeze_epochs if pretrained else 0)
    log = EpochLog(total, verbose)
    start, complete = time.perf_counter(), False
    try:
        with learn.added_cbs(log):
            if pretrained:
                learn.fine_tune(epochs, base_lr=lr or 2e-3, freeze_epochs=freeze_epochs)
            else:
                learn.fit_one_cycle(epochs, lr or 3e-3)
        complete = True
    except KeyboardInterrupt:
        pass
    finally:
        for cb in learn.cbs:  # CPUAutocast's autocast, a recipe's hooks
            if callable(getattr(type(cb), "release", None)):
                cb.release()
    if log.diverged:
        raise Diverged(f"training diverged: {log.diverged}; nothing was saved (try a lower --lr)")
    return log, time.perf_counter() - start, complete


@dataclass
class Predictions:
    """Per held-out image: softmax probabilities, target, and the loss fastai computed."""
    probs: torch.Tensor
    targets: torch.Tensor
    losses: torch.Tensor


def predict(learn: Learner, dl: TensorBatches) -> Predictions:
    """Predictions over `dl` through the Learner itself (the same precision callbacks and loss
    as the epochs' validation, so the summary equals the last history row)."""
    probs, targets, losses = learn.get_preds(dl=dl, with_loss=True)
    return Predictions(probs.float().cpu(), targets.cpu(), losses.float().cpu())


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Rows: actual class, columns: predicted class."""
    return torch.bincount(targets * n_classes + preds, minlength=n_classes ** 2).view(n_classes, n_classes)


def summarize(out: Path, arch: str, head: str, stride: int, pretrained: bool, split: Split, device: torch.device,
              precision: str, history: list[dict], seconds: float, preds: Predictions) -> TrainResult:
    """The numbers of the run; throughput = images seen in every epoch run / fitting seconds."""
    n_valid = len(split.valid_files)
    n_seen = len(history) * (split.n_train + n_valid)
    return TrainResult(
        out=str(out), arch=arch, head=str(value(head)), stride=stride, pretrained=pretrained,
        classes=split.classes, n_train=split.n_train, n_valid=n_valid, epochs=len(history),
        device=str(device), precision=precision, train_seconds=round(seconds, 3),
        images_per_sec=round(n_seen / seconds, 2) if seconds else 0.0,
        valid_accuracy=round(float((preds.probs.argmax(1) == preds.targets).float().mean()), 4),
        valid_loss=round(float(preds.losses.mean()), 4), skipped=[f"{p}: {why}" for p, why in split.skipped],
        history=history, world_size=rank_world()[1])


def run_contents(result: TrainResult, model: nn.Module, split: Split, data_dir: Path, size: int,
                 preds: Predictions, complete: bool, epochs_planned: int) -> RunContents:
    """What the run folder holds: fp32 contiguous weights, history, held-out predictions with
    paths relative to the data root (so reading the run does not depend on the working folder;
    the folder scan keeps only files inside it)."""
    root = data_dir.resolve()
    classes, labels = split.classes, split.valid_labels
    valid = [{"file": f.resolve().relative_to(root).as_posix(), "label": classes[int(y)],
              "pred": classes[int(p.argmax())], "prob": round(float(p.max()), 5), "loss": round(float(loss), 5)}
             for f, y, p, loss in zip(split.valid_files, labels, preds.probs, preds.losses)
             if f.resolve().is_relative_to(root)]
    cm = confusion_matrix(preds.probs.argmax(1), labels, len(classes))
    info = RunInfo(arch=result.arch, head=result.head, stride=result.stride, classes=classes, size=size,
                   stats=(list(IMAGENET_STATS[0]), list(IMAGENET_STATS[1])), pretrained=result.pretrained,
                   complete=complete, epochs_planned=epochs_planned, confusion=cm.tolist(),
                   summary={k: v for k, v in result.to_dict().items() if k != "history"},
                   data_root=str(root), format=MODEL_FORMAT, resize=split.resize, world_size=result.world_size)
    state = model.float().to(memory_format=torch.contiguous_format).state_dict()
    return RunContents(info, state, result.history, valid)


def _save(out: Path, contents: RunContents, overwrite: bool, complete: bool) -> None:
    """Save a finished run; an interrupted one only where it replaces no complete run."""
    done, planned = len(contents.history), contents.info.epochs_planned
    if complete:
        save_run(out, contents, overwrite)
        return
    if (out / "model.json").exists():
        raise CamkitError(f"training interrupted after {done} of {planned} epochs; the previous run in "
                          f"'{out}' is unchanged")
    save_run(out, contents, overwrite)
    raise CamkitError(f"training interrupted after {done} of {planned} epochs; the partial run in '{out}' "
                      "is marked incomplete")
