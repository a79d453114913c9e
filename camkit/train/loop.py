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
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from torch import nn

import fastai.callback.fp16  # noqa: F401,E402  (Learner.to_fp16 / to_bf16)
import fastai.callback.schedule  # noqa: F401,E402  (Learner.fit_one_cycle / fine_tune)
from camkit.core.device import resolve_device, resolve_precision
from camkit.core.distributed import (ddp_callback, in_group, joined, launch, local_device, main_first, on_main,
                                     rank_world)
from camkit.core.files import refuse_inside_class_folder
from camkit.core.images import open_rgb
from camkit.data.folders import IMAGENET_STATS, FolderData, TensorBatches, decode_folder, load_folder
from camkit.errors import CamkitError, Interrupted
from camkit.train.evidence import get_recipe, load_negatives, recipe_callbacks, recipe_loss, with_recipe
from camkit.train.history import EpochHistory  # noqa: F401  (re-exported: its old path)
from camkit.train.models import BuiltModel, build_model
from camkit.train.run import (META, HeldOut, RunContents, RunInfo, check_out, discard_out, held_out, run_summary,
                              save_run)
from camkit.train.spec import TrainSpec
from camkit.train.verdict import Finding, TrainingVerdict, confusion_matrix, judge, verdict_line  # noqa: F401


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
    dilate: bool = False         # the lower stride made by dilation
    bs: int = 0                  # the batch size used (adapted to the data unless given)
    lr: float = 0.0              # the learning rate used
    lr_source: str = "default"   # default, given, or lr_find
    train_counts: list[int] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    verdict: dict = field(default_factory=dict)   # camkit.train.verdict.Verdict.to_json()

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
def train(data_dir: str | Path, arch: str = "resnet34", epochs: int | None = None, size: int = 224,
          bs: int | None = None, valid_pct: float = 0.2, seed: int = 0, out: str | Path | None = None,
          lr: float | str | None = None, head: str = "cam", pretrained: bool | None = None,
          weights: str | Path | None = None, stride: int | None = None, dilate: bool | None = None,
          freeze_epochs: int = 1, aug: str = "fastai", loader: str = "tensor", overwrite: bool = False,
          device: str | None = None, precision: str = "auto", quiet: bool = False, data: FolderData | None = None,
          recipe: str = "auto", cache: str | Path | None = None, negatives: str | Path | None = None,
          spec: TrainSpec | None = None) -> TrainResult:
    """Fine-tune (or train from scratch) `arch` on a class-per-folder dataset and save the run.

    Every option is checked into a `camkit.train.spec.TrainSpec` before any image is read (or pass
    `spec` itself). `bs` / `epochs` None adapt to the dataset (camkit.train.spec: enough optimizer
    steps an epoch for BatchNorm, enough steps in all); `lr` None is 2e-3 fine-tuning, 3e-3
    from scratch, 'auto' is fastai's `lr_find` (its valley), the curve saved with the run.
    `loader` tensor: decode and resize (squish) every image once, then batches come from one
    uint8 tensor; fastai: fastai's own `ImageDataLoaders` (Resize by centre crop, per-item
    decoding) over the same checked files. `aug`: fastai's `aug_transforms` on training
    batches, a horizontal flip, or none. `precision` auto: bf16 autocast where the hardware
    has it (CUDA, or a CPU with AVX512-BF16 / AMX), fp16 on older GPUs, fp32 otherwise.
    `recipe` (camkit.train.evidence): what training batches add so that each class is found by its
    own evidence; auto is counterfactual with the CAM head, plain with fastai's. `stride` None:
    16 for a torchvision ResNet with the CAM head, else 32; `dilate`: made by dilation
    (camkit.train.spec.ModelSpec). `negatives`: a folder of images of neither class, a hidden
    "neither" in every batch. `quiet` drops the per-epoch lines on stderr. `cache`: a folder for
    camkit.data.cache's decoded images. Under torchrun / accelerate launch each rank trains on its
    shard with gradients all-reduced, and only rank 0 writes (see camkit.core.distributed).

    The result carries the training verdict (camkit.train.verdict: does the model beat always
    answering the larger class, did its losses behave); one that is not ok is also warned
    about (a TrainingVerdict warning: one line on the CLI's stderr)."""
    spec = spec or TrainSpec.parse(arch=arch, head=head, stride=stride, dilate=dilate, size=size, valid_pct=valid_pct,
                                   seed=seed, bs=bs, epochs=epochs, freeze_epochs=freeze_epochs, lr=lr,
                                   pretrained=pretrained, weights=weights, recipe=recipe, loader=loader, aug=aug,
                                   precision=precision)
    if spec.lr == "auto" and joined():
        raise CamkitError("--lr auto searches in one process; give a number for --lr under torchrun / accelerate")
    neg = load_negatives(negatives, spec.size) if negatives is not None else None
    dev = local_device(resolve_device(device))
    resolved_precision = resolve_precision(spec.precision, dev)
    data_dir = Path(data_dir)
    out = Path(out) if out else Path("runs") / (data_dir.resolve().name or "run")
    _check_out_not_in_data(out, data_dir)
    created = on_main(lambda: check_out(out, overwrite))
    try:
        result, contents, complete = _fit_and_judge(data_dir, out, spec, dev, resolved_precision, neg, data, cache,
                                                    verbose=not quiet and launch().main)
        on_main(lambda: _save(out, contents, overwrite, complete))
    except BaseException:
        discard_out(out, created)
        raise
    if launch().main and result.verdict["status"] != "ok":
        warnings.warn(TrainingVerdict(verdict_line(result.verdict, out)), stacklevel=3)  # past in_group
    return result


def _fit_and_judge(data_dir: Path, out: Path, spec: TrainSpec, dev: torch.device, precision: str, neg,
                   data: FolderData | None, cache, verbose: bool) -> tuple[TrainResult, RunContents, bool]:
    """Decode, build the model once, resolve the adaptive options, fit, evaluate and judge."""
    if spec.loader == "fastai":
        listing = fastai_files(data_dir)
        classes, n_train = listing.classes, len(listing.files) - int(spec.valid_pct * len(listing.files))
    else:
        data = data or _load(data_dir, spec.size, cache)
        train_idx, valid_idx = _split(data, spec.valid_pct, spec.seed)
        classes, n_train = data.classes, len(train_idx)
    torch.manual_seed(spec.seed)  # before the model is built: the random init is part of the run
    built = build_model(spec.model, len(classes), pretrained=spec.pretrained, weights=spec.weights)
    spec = spec.for_data(n_train // rank_world()[1], built.pretrained)
    if spec.loader == "fastai":
        dls, split = fastai_loaders(listing, spec, dev)
    else:
        dls, split = make_loaders(data, train_idx, valid_idx, spec, dev, precision)
    recipe = get_recipe(spec.recipe)
    dls = with_recipe(dls, recipe, len(split.classes), spec.seed, neg)
    learn = make_learner(dls, built, out, precision)
    learn.loss_func = recipe_loss(recipe, neg is not None) or learn.loss_func
    learn.add_cbs(recipe_callbacks(recipe, spec.seed))
    fallback = spec.base_lr(built.pretrained)
    search = find_lr(learn, built.pretrained, fallback) if spec.lr == "auto" else None
    lr = search.lr if search else fallback
    log, seconds, complete = fit(learn, built.pretrained, spec.epochs, spec.freeze_epochs, lr, verbose=verbose)
    preds = predict(learn, dls.valid)
    held = held_out(split.valid_files, preds.targets, preds.probs, preds.losses, split.classes, data_dir)
    notes = search.notes if search else ()
    result = summarize(out, spec, built.pretrained, split, dev, precision, log.rows, seconds, held, lr, notes)
    result.recipe = recipe.name + (" + negatives folder" if neg is not None else "")
    contents = run_contents(result, spec, learn.model, split, data_dir, held, complete,
                            spec.epochs + (spec.freeze_epochs if built.pretrained else 0),
                            search.curve if search else [])
    return result, contents, complete


def _load(data_dir: Path, size: int, cache: str | Path | None) -> FolderData:
    """The folder decoded: into memory, or through the cache (built by rank 0 first, the other
    ranks then only open it)."""
    if cache is None:
        return load_folder(data_dir, size)
    return main_first(lambda: load_folder(data_dir, size, cache=cache))


@dataclass
class Split:
    """What the run keeps of its data: the classes, the training images per class, and the
    held-out files with their labels, in the order the validation loader gives them."""
    classes: list[str]
    train_counts: list[int]
    valid_files: list[Path]
    valid_labels: torch.Tensor
    skipped: list[tuple[Path, str]]
    resize: str                 # how images reached size x size: squish or crop

    @property
    def n_train(self) -> int:
        return sum(self.train_counts)


def _check_out_not_in_data(out: Path, data_dir: Path) -> None:
    """A run inside the dataset would be taken as a class by the next training; inside a class
    folder of another dataset it would make that class skipped (files.refuse_inside_class_folder)."""
    if data_dir.is_dir() and out.resolve().is_relative_to(data_dir.resolve()):
        raise CamkitError(f"--out '{out}' is inside the data folder '{data_dir}'; the next training would "
                          "take it as a class: choose an --out outside it")
    refuse_inside_class_folder(out)


def _split(data: FolderData, valid_pct: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    train_idx, valid_idx = data.split(valid_pct, seed)
    if len(train_idx) < 2:
        raise CamkitError(f"{len(train_idx)} training image(s) left after a {valid_pct:.0%} validation split; "
                          "at least 2 are needed")
    return train_idx, valid_idx


def make_loaders(data: FolderData, train_idx: torch.Tensor, valid_idx: torch.Tensor, spec: TrainSpec,
                 device: torch.device, precision: str) -> tuple[DataLoaders, Split]:
    """Batches from the decoded tensor: augmented (training), normalised and moved in one go.
    A memory-mapped dataset is indexed by rows, never copied whole; in a process group each
    rank trains on its shard (every rank validates on the whole held-out set). `spec.bs` is
    resolved (TrainSpec.for_data)."""
    rank, world = rank_world()
    if len(train_idx) // world < 2:
        raise CamkitError(f"{len(train_idx)} training images cannot be shared by {world} processes "
                          "(each needs at least 2)")
    # channels_last pays off on GPUs and with bf16 on CPU (resnet34 step 512 -> 442 ms); in
    # fp32 on CPU (oneDNN) it measured 14% slower
    channels_last = device.type == "cuda" or precision == "bf16"
    def subset(idx: torch.Tensor) -> dict:
        return ({"images": data.images, "rows": idx} if data.mapped else {"images": data.images[idx]})

    train_dl = TensorBatches(labels=data.labels[train_idx], bs=min(spec.bs, len(train_idx) // world), shuffle=True,
                             stats=IMAGENET_STATS, aug=spec.aug, seed=spec.seed, channels_last=channels_last,
                             rank=rank, world=world, **subset(train_idx))
    valid_dl = TensorBatches(labels=data.labels[valid_idx], bs=spec.bs, shuffle=False,
                             stats=IMAGENET_STATS, channels_last=channels_last, **subset(valid_idx))
    counts = torch.bincount(data.labels[train_idx], minlength=len(data.classes)).tolist()
    split = Split(data.classes, counts, [data.files[int(i)] for i in valid_idx], data.labels[valid_idx],
                  data.skipped, "squish")
    return DataLoaders(train_dl, valid_dl, device=device), split


class Listing(NamedTuple):
    """A class-per-folder dataset's checked files, for fastai's own loaders."""
    root: Path
    classes: list[str]
    files: list[Path]
    labels: list[str]
    skipped: list[tuple[Path, str]]


def fastai_files(data_dir: Path) -> Listing:
    """The files camkit checked (class folders only, hidden and unreadable files skipped with a
    warning), as fastai's loaders take them."""
    if joined():
        raise CamkitError("--loader fastai trains in one process; use --loader tensor under torchrun / accelerate")
    classes, kept, skipped = decode_folder(data_dir, lambda f: open_rgb(f).size)
    return Listing(data_dir, classes, [f for f, _, _ in kept], [classes[c] for _, c, _ in kept], skipped)


def fastai_loaders(listing: Listing, spec: TrainSpec, device: torch.device) -> tuple[DataLoaders, Split]:
    """fastai's `ImageDataLoaders` as the course builds them — `valid_pct`, `seed`,
    `item_tfms=Resize(size)`, `batch_tfms=aug_transforms()` — with ImageNet normalisation as
    `vision_learner` adds it."""
    from fastai.vision.augment import Flip, Normalize, Resize, aug_transforms
    from fastai.vision.data import ImageDataLoaders

    batch_tfms = {"fastai": aug_transforms(), "flip": [Flip()], "none": []}[spec.aug]
    dls = ImageDataLoaders.from_lists(listing.root, listing.files, listing.labels, valid_pct=spec.valid_pct,
                                      seed=spec.seed, item_tfms=Resize(spec.size),
                                      batch_tfms=[*batch_tfms, Normalize.from_stats(*IMAGENET_STATS)],
                                      bs=spec.bs, num_workers=0, device=device)
    if len(dls.train_ds) < 2 or len(dls.vocab) != len(listing.classes):
        raise CamkitError(f"{len(dls.train_ds)} training images in {len(dls.vocab)} classes after the split; "
                          "each class needs images in training")
    label_of = dict(zip(listing.files, listing.labels))
    valid_files = [Path(item[0]) for item in dls.valid.items]  # from_lists items are (file, label)
    train_labels = [label_of[Path(item[0])] for item in dls.train.items]
    split = Split(list(dls.vocab), [train_labels.count(c) for c in dls.vocab], valid_files,
                  torch.tensor([dls.vocab.o2i[label_of[f]] for f in valid_files]), listing.skipped, "crop")
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


def fit(learn: Learner, pretrained: bool, epochs: int, freeze_epochs: int, lr: float,
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
                learn.fine_tune(epochs, base_lr=lr, freeze_epochs=freeze_epochs)
            else:
                learn.fit_one_cycle(epochs, lr)
        complete = True
    except KeyboardInterrupt:
        pass
    finally:
        _release(learn)
    if log.diverged:
        raise Diverged(f"training diverged: {log.diverged}; nothing was saved (try a lower --lr)")
    return log, time.perf_counter() - start, complete


def _release(learn: Learner) -> None:
    """Undo what callbacks leave on when a fit ends early (CPUAutocast's autocast, a recipe's hooks)."""
    for cb in learn.cbs:
        if callable(getattr(type(cb), "release", None)):
            cb.release()


class LRSearch(NamedTuple):
    """fastai's lr_find as camkit ran it: the learning rate used, the (lr, loss) curve, and a
    finding when the search failed and the default was used instead."""
    lr: float
    curve: list[tuple[float, float]]
    notes: tuple[Finding, ...]


def find_lr(learn: Learner, pretrained: bool, fallback: float) -> LRSearch:
    """fastai's `lr_find` (exponentially rising lr over at most 100 steps, stopped when the loss
    diverges; the suggestion is its `valley`: the middle of the longest descent of the smoothed
    loss), run on the model as it will first be trained (body frozen when fine-tuning). A
    failed search (a non-finite curve, no valley) falls back to `fallback`, with a finding."""
    from fastai.callback.schedule import valley

    if pretrained:
        learn.freeze()
    lr, curve, why = fallback, [], None
    try:
        suggestion = learn.lr_find(suggest_funcs=(valley,), show_plot=False)
        recorder = getattr(learn, "recorder", None)
        curve = [(float(a), float(b)) for a, b in zip(getattr(recorder, "lrs", []), getattr(recorder, "losses", []))]
        found = float(suggestion.valley)
        if math.isfinite(found) and found > 0:
            lr = found
        else:
            why = f"it suggested {found}"
    except (RuntimeError, ValueError, IndexError, ZeroDivisionError) as e:  # a NaN curve has no valley
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else 'no curve'}"
    finally:
        _release(learn)
    curve = [(a, b) for a, b in curve if math.isfinite(a) and math.isfinite(b)]
    notes = () if why is None else (Finding(
        "lr_find_failed", "warn", f"the learning-rate search failed ({why}); the default {fallback:g} was used",
        "give --lr a number"),)
    return LRSearch(lr, curve, notes)


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


def summarize(out: Path, spec: TrainSpec, pretrained: bool, split: Split, device: torch.device, precision: str,
              history: list[dict], seconds: float, held: HeldOut, lr: float,
              notes: tuple[Finding, ...] = ()) -> TrainResult:
    """The numbers of the run and its verdict; throughput = images seen in every epoch run /
    fitting seconds."""
    n_valid = len(split.valid_files)
    n_seen = len(history) * (split.n_train + n_valid)
    verdict = judge(held.confusion, split.classes, history, split.train_counts, pretrained, notes)
    return TrainResult(
        out=str(out), arch=spec.model.arch, head=spec.model.head, stride=spec.model.stride, pretrained=pretrained,
        classes=split.classes, n_train=split.n_train, n_valid=n_valid, epochs=len(history),
        device=str(device), precision=precision, train_seconds=round(seconds, 3),
        images_per_sec=round(n_seen / seconds, 2) if seconds else 0.0,
        valid_accuracy=held.accuracy, valid_loss=held.loss, skipped=[f"{p}: {why}" for p, why in split.skipped],
        history=history, world_size=rank_world()[1], dilate=spec.model.dilate, bs=spec.bs, lr=lr,
        lr_source="lr_find" if spec.lr == "auto" and not notes else "given" if isinstance(spec.lr, float) else "default",
        train_counts=split.train_counts, confusion=held.confusion, verdict=verdict.to_json())


def run_contents(result: TrainResult, spec: TrainSpec, model: nn.Module, split: Split, data_dir: Path,
                 held: HeldOut, complete: bool, epochs_planned: int,
                 lr_curve: list[tuple[float, float]]) -> RunContents:
    """What the run folder holds: fp32 contiguous weights, history, held-out predictions
    (camkit.train.run.held_out: paths relative to the data root), the verdict and the resolved options."""
    info = RunInfo.describe(spec.model, classes=split.classes, size=spec.size,
                            stats=(list(IMAGENET_STATS[0]), list(IMAGENET_STATS[1])), pretrained=result.pretrained,
                            complete=complete, epochs_planned=epochs_planned, confusion=result.confusion,
                            summary=run_summary(result.to_dict()), data_root=str(data_dir.resolve()),
                            resize=split.resize, world_size=result.world_size, verdict=result.verdict,
                            spec=spec.to_json())
    state = model.float().to(memory_format=torch.contiguous_format).state_dict()
    return RunContents(info, state, result.history, held.rows, lr_curve)


def _save(out: Path, contents: RunContents, overwrite: bool, complete: bool) -> None:
    """Save a finished run; an interrupted one only where it replaces no complete run."""
    done, planned = len(contents.history), contents.info.epochs_planned
    if complete:
        save_run(out, contents, overwrite)
        return
    if (out / META).exists():
        raise Interrupted(f"training interrupted after {done} of {planned} epochs; the previous run in "
                          f"'{out}' is unchanged")
    save_run(out, contents, overwrite)
    raise Interrupted(f"training interrupted after {done} of {planned} epochs; the partial run in '{out}' "
                      "is marked incomplete")
