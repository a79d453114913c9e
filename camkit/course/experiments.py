"""The course's training experiments: the MNIST homework, the CIFAR-10 tutorial and its variants,
on the real data sets or offline stand-ins. The loop itself (loaders, step, `fit`) is in
`camkit.course.loop`."""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from camkit.core.choices import CourseDataset, choice
from camkit.core.device import default_device
from camkit.core.files import ensure_writable_dir
from camkit.course.loop import fit, make_loader, make_stepper, small_batch_threads
from camkit.course.nets import CifarNet, MnistNet, n_parameters, variant1, variant2
from camkit.data.folders import FASHION_CLASSES, Normalizer, load_digits28, load_fashion_mnist
from camkit.errors import CamkitError

DATASETS = ("mnist", "cifar10", "fashion-mnist", "digits")
CIFAR_CLASSES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MNIST_STATS = ((0.1307,), (0.3081,))
CIFAR_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


# ---------------------------------------------------------------- data

@dataclass
class CourseData:
    """Train/test images as uint8 (N, C, H, W) tensors, with a line saying what they are."""
    name: str
    description: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: list[str]


def _torchvision_dataset(name: str, data_dir: Path, train: bool):
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.CIFAR10
    try:
        return cls(root=str(data_dir), train=train, download=True)
    except Exception as e:  # offline: URLError, RuntimeError "Dataset not found"...
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CamkitError(f"{name} is not in '{data_dir}' and could not be downloaded ({reason}); "
                          "offline alternatives: --dataset fashion-mnist or --dataset digits") from None


def load_course_data(dataset: str, data_dir: str | Path | None = None, cifar_shape: bool = False,
                     limit: int | None = None, test_limit: int | None = None, seed: int = 0) -> CourseData:
    """MNIST / CIFAR-10 through torchvision (downloaded when online, or found in data_dir), or an
    offline stand-in: Fashion-MNIST IDX files or scikit-learn's digits. With `cifar_shape`, a
    1x28x28 set becomes 3x32x32 (pad 2, repeat the channel) so the CIFAR nets accept it."""
    dataset = choice(CourseDataset, dataset, "dataset")
    root = Path(data_dir) if data_dir else Path.home() / ".cache" / "camkit" / "datasets"
    if dataset in ("mnist", "cifar10"):
        train, test = _torchvision_dataset(dataset, root, True), _torchvision_dataset(dataset, root, False)
        if dataset == "mnist":
            tx, ty, vx, vy = train.data[:, None], train.targets, test.data[:, None], test.targets
            classes = [str(i) for i in range(10)]
        else:
            tx, vx = (torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous() for d in (train, test))
            ty, vy = torch.tensor(train.targets), torch.tensor(test.targets)
            classes = CIFAR_CLASSES
        description = f"{dataset} (torchvision, {root})"
    elif dataset == "fashion-mnist":
        (a, b), (c, d) = load_fashion_mnist(data_dir, True), load_fashion_mnist(data_dir, False)
        tx, ty, vx, vy = (torch.from_numpy(v) for v in (a[:, None], b, c[:, None], d))
        classes, description = FASHION_CLASSES, "fashion-mnist (IDX files, offline stand-in)"
    else:
        images, labels = load_digits28()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        cut = int(len(order) * 0.8)
        x, y = torch.from_numpy(images)[:, None], torch.from_numpy(labels)
        tx, ty, vx, vy = x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]
        classes = [str(i) for i in range(10)]
        description = "digits (scikit-learn 8x8 digits scaled to 28x28, offline stand-in)"
    if limit:
        tx, ty = tx[:limit], ty[:limit]
    if test_limit:
        vx, vy = vx[:test_limit], vy[:test_limit]
    if cifar_shape and tx.shape[1] == 1:
        tx, vx = (F.pad(v, (2, 2, 2, 2)).repeat(1, 3, 1, 1) for v in (tx, vx))
        description += ", padded to 32x32 and repeated to 3 channels for the CIFAR nets"
    return CourseData(dataset, description, tx.contiguous(), ty.long(), vx.contiguous(), vy.long(), classes)


@dataclass
class EpochRow:
    epoch: int
    train_loss: float
    train_accuracy: float
    valid_loss: float
    valid_accuracy: float


@dataclass
class MnistResult:
    data: str
    epochs: list[EpochRow]
    seconds: float
    figures: list[str] = field(default_factory=list)


def run_mnist(dataset: str = "mnist", data_dir=None, epochs: int = 19, bs: int = 32, lr: float = 0.001,
              seed: int = 0, loader: str = "tensor", limit: int | None = None, test_limit: int | None = None,
              out: str | Path | None = None, quiet: bool = False,
              fast: bool = True, workers: int = 0) -> MnistResult:
    """The homework: MnistNet, NLL loss, SGD(lr), `fit` per epoch for training and validation.
    `fast=False` takes the course's own step (see `camkit.course.loop`); `workers` are the
    DataLoader processes of the torchvision loader."""
    log = printer(quiet)
    if epochs < 1 or bs < 1:
        raise CamkitError("--epochs and --bs must be at least 1")
    data = load_course_data(dataset, data_dir, limit=limit, test_limit=test_limit, seed=seed)
    if data.train_x.shape[1] != 1 or data.train_x.shape[-1] != 28:
        raise CamkitError(f"the MNIST net needs 1x28x28 images; {dataset} is not (try fashion-mnist or digits)")
    device = default_device()
    log(f"data: {data.description}; {len(data.train_y)} train / {len(data.test_y)} test images")
    torch.manual_seed(seed)
    model = MnistNet().to(device)
    optimizer = make_stepper(model, lambda params: torch.optim.SGD(params, lr=lr), fast)
    g = torch.Generator().manual_seed(seed)
    train_dl = make_loader(loader, data.train_x, data.train_y, bs, True, MNIST_STATS, g, device=device, workers=workers)
    valid_dl = make_loader(loader, data.test_x, data.test_y, bs, False, MNIST_STATS, device=device, workers=workers)
    rows = []
    start = time.perf_counter()
    with small_batch_threads(fast, bs, data.train_x.shape[1:], device):
        for epoch in range(epochs):
            row = [epoch]
            for phase, dl in (("training", train_dl), ("validation", valid_dl)):
                loss, acc, _ = fit(model, dl, F.nll_loss, optimizer, phase, device=device)
                n = len(dl.dataset)
                log(f"{phase} loss is {loss:5.2} and {phase} accuracy is {round(acc * n)}/{n}{acc * 100:10.4}")
                row += [loss, acc]
            rows.append(EpochRow(*row))
    seconds = time.perf_counter() - start
    result = MnistResult(data.description, rows, round(seconds, 2))
    if out:
        out = Path(out)
        ensure_writable_dir(out)
        result.figures = [str(p) for p in (plot_curves(rows, out / "mnist_curves.png"),
                                           plot_samples(data.train_x[:8], data.train_y[:8], data.classes,
                                                        MNIST_STATS, out / "mnist_samples.png"))]
    return result


def plot_curves(rows: list[EpochRow], path: Path) -> Path:
    """Loss and accuracy per epoch: training as dots, validation as a line (as the course draws)."""
    from camkit.core.plots import _save, plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    e = [r.epoch + 1 for r in rows]
    a1.plot(e, [r.train_loss for r in rows], "bo", label="training loss")
    a1.plot(e, [r.valid_loss for r in rows], "r", label="validation loss")
    a2.plot(e, [r.train_accuracy for r in rows], "bo", label="train accuracy")
    a2.plot(e, [r.valid_accuracy for r in rows], "r", label="val accuracy")
    for a in (a1, a2):
        a.set_xlabel("epoch")
        a.legend()
    return _save(fig, path)


def unnormalise(x: Tensor, stats) -> Tensor:
    """image * std + mean — the inverse of Normalize. (The course's plot_img computes
    mean * image + std, which is wrong.)"""
    return Normalizer(stats, x.shape[-3]).invert(x)


def plot_samples(images: Tensor, labels: Tensor, classes: list[str], stats, path: Path) -> Path:
    """A row of training images with labels, shown after normalise -> unnormalise round trip."""
    from camkit.core.plots import _save, plt

    c = images.shape[1]
    normalised = Normalizer(stats, c)(images)
    fig, axes = plt.subplots(1, len(images), figsize=(1.6 * len(images), 2))
    for ax, img, lab in zip(np.atleast_1d(axes), normalised, labels):
        shown = unnormalise(img, stats).permute(1, 2, 0).numpy()
        ax.imshow(shown[..., 0] if c == 1 else shown, cmap="gray" if c == 1 else None)
        ax.set_title(classes[int(lab)], fontsize=9)
        ax.axis("off")
    return _save(fig, path)


# ---------------------------------------------------------------- CIFAR tutorial and variants

VARIANT_NAMES = {0: "baseline (tutorial net)", 1: "arch 1: 4 conv 32", 2: "arch 2: BN modules + GAP",
                 3: "Adam", 4: "augmentation", 5: "BatchNorm after convs", 6: "dropout 0.1 after fc2",
                 7: "Xavier FC init", 8: "NLL loss (log_softmax)", 9: "L2 (weight decay 5e-4)"}


def build_variant(v: int, n_classes: int, lr: float = 0.001, momentum: float = 0.9):
    """(model, optimizer factory, loss function, augment) for variant v (0 = the tutorial)."""
    if v not in VARIANT_NAMES:
        raise CamkitError(f"unknown variant {v}; choose from 1-9 (0 is the baseline)")
    model = {1: lambda: variant1(n_classes), 2: lambda: variant2(n_classes),
             5: lambda: CifarNet(n_classes, batchnorm=True), 6: lambda: CifarNet(n_classes, dropout=0.1),
             7: lambda: CifarNet(n_classes, xavier=True),
             8: lambda: CifarNet(n_classes, log_softmax=True)}.get(v, lambda: CifarNet(n_classes))()
    if v == 3:
        def make_opt(params):
            return torch.optim.Adam(params)
    else:
        def make_opt(params):
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=5e-4 if v == 9 else 0.0)
    loss_fn = F.nll_loss if v == 8 else F.cross_entropy
    return model, make_opt, loss_fn, v == 4


@dataclass
class CifarResult:
    variant: int
    name: str
    data: str
    accuracy: float
    per_class: dict[str, float]
    final_train_loss: float
    parameters: int
    train_seconds: float
    step_losses: list[float]
    ground_truth: list[str] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)


def run_cifar(variant: int = 0, dataset: str = "cifar10", data_dir=None, epochs: int = 5, bs: int = 4,
              lr: float = 0.001, seed: int = 0, loader: str = "tensor", limit: int | None = None,
              test_limit: int | None = None, log_every: int = 1000, quiet: bool = False,
              data: CourseData | None = None, fast: bool = True, workers: int = 2) -> CifarResult:
    """The tutorial loop (printing the running loss every `log_every` mini-batches), then the
    test accuracy overall and per class, for the baseline or a variant. `fast=False` takes the
    course's own step (see `camkit.course.loop`); `workers` are the DataLoader processes of the
    torchvision loader (the tutorial's 2)."""
    log = printer(quiet)
    if epochs < 1 or bs < 1:
        raise CamkitError("--epochs and --bs must be at least 1")
    data = data or load_course_data(dataset, data_dir, cifar_shape=True, limit=limit, test_limit=test_limit,
                                    seed=seed)
    device = default_device()
    torch.manual_seed(seed)
    model, make_opt, loss_fn, augment = build_variant(variant, len(data.classes), lr)
    model = model.to(device)
    optimizer = make_stepper(model, make_opt, fast)
    g = torch.Generator().manual_seed(seed)
    train_dl = make_loader(loader, data.train_x, data.train_y, bs, True, CIFAR_STATS, g, augment=augment,
                           device=device, workers=workers)
    test_dl = make_loader(loader, data.test_x, data.test_y, 256 if loader == "tensor" else bs, False,
                          CIFAR_STATS, device=device, workers=workers)
    losses: list[float] = []
    start = time.perf_counter()
    with small_batch_threads(fast, bs, data.train_x.shape[1:], device):
        for epoch in range(epochs):
            _, _, step = fit(model, train_dl, loss_fn, optimizer, "training", log_every, epoch, log, device)
            losses += step
    seconds = time.perf_counter() - start
    log("Finished Training")
    model.eval()
    preds = []
    with torch.no_grad():
        for x, _ in test_dl:
            preds.append(model(x.to(device)).argmax(1).cpu())
    pred = torch.cat(preds)
    truth = data.test_y.cpu()
    per_class = {c: round(float((pred[truth == i] == i).float().mean()) * 100, 1) if (truth == i).any() else float("nan")
                 for i, c in enumerate(data.classes)}
    result = CifarResult(variant, VARIANT_NAMES[variant], data.description,
                         round(float((pred == truth).float().mean()) * 100, 2), per_class,
                         round(float(np.mean(losses[-min(len(losses), 1000):])), 4), n_parameters(model),
                         round(seconds, 2), losses,
                         [data.classes[int(t)] for t in truth[:4]], [data.classes[int(p)] for p in pred[:4]])
    log("GroundTruth: " + " ".join(f"{c:5s}" for c in result.ground_truth))
    log("Predicted:   " + " ".join(f"{c:5s}" for c in result.predicted))
    log(f"Accuracy of the network on the {len(truth)} test images: {result.accuracy:.0f} %")
    for c, acc in per_class.items():
        log(f"Accuracy for class: {c:5s} is {acc:.1f} %")
    return result


def run_variants(only: list[int] | None = None, dataset: str = "cifar10", data_dir=None, epochs: int = 5,
                 bs: int = 4, seed: int = 0, loader: str = "tensor", limit: int | None = None,
                 test_limit: int | None = None, out: str | Path = "variants",
                 quiet: bool = False, fast: bool = True, workers: int = 2) -> list[CifarResult]:
    """The baseline and each chosen variant with the same data, seed and epochs; writes the
    comparison as variants.md / variants.csv, a bar chart and overlaid loss curves."""
    log = printer(quiet)
    chosen = sorted(set(only or range(1, 10)))
    bad = [v for v in chosen if v not in range(1, 10)]
    if bad:
        raise CamkitError(f"unknown variant {bad[0]}; choose from 1-9")
    data = load_course_data(dataset, data_dir, cifar_shape=True, limit=limit, test_limit=test_limit, seed=seed)
    log(f"data: {data.description}")
    results = []
    grid_start = time.perf_counter()
    for v in [0] + chosen:
        log(f"--- {VARIANT_NAMES[v]}")
        results.append(run_cifar(v, epochs=epochs, bs=bs, seed=seed, loader=loader, data=data,
                                 quiet=True, fast=fast, workers=workers))
        log(f"accuracy {results[-1].accuracy:.2f} %, final loss {results[-1].final_train_loss:.4f}, "
            f"{results[-1].train_seconds:.1f} s")
    write_comparison(results, Path(out), time.perf_counter() - grid_start)
    return results


def cifar_tutorial(dataset: str = "cifar10", data_dir=None, epochs: int = 5, bs: int = 4, lr: float = 0.001,
                   seed: int = 0, loader: str = "tensor", limit: int | None = None, test_limit: int | None = None,
                   log_every: int = 1000, out: str | Path = "course-cifar", quiet: bool = False, fast: bool = True,
                   workers: int = 2) -> tuple[CifarResult, Path]:
    """What `camkit course cifar` runs: the tutorial's sample images (written to `out`), then
    its training loop and test accuracy. Returns (result, the sample figure)."""
    data = load_course_data(dataset, data_dir, True, limit, test_limit, seed)
    printer(quiet)(f"data: {data.description}")
    out = Path(out)
    ensure_writable_dir(out)
    grid = plot_samples(data.train_x[:8], data.train_y[:8], data.classes, CIFAR_STATS, out / "cifar_samples.png")
    result = run_cifar(0, epochs=epochs, bs=bs, lr=lr, seed=seed, loader=loader, log_every=log_every, quiet=quiet,
                       data=data, fast=fast, workers=workers)
    return result, grid


def printer(quiet: bool) -> Callable[[str], None]:
    """The course's prints (its results, on stdout), or nothing when `quiet`."""
    return (lambda s: None) if quiet else print


def write_comparison(results: list[CifarResult], out: Path, grid_seconds: float) -> None:
    from camkit.core.plots import _save, plt

    ensure_writable_dir(out)
    classes = list(results[0].per_class)
    header = ["variant", "name", "accuracy", "final_train_loss", "parameters", "train_seconds"] + classes
    rows = [[r.variant, r.name, r.accuracy, r.final_train_loss, r.parameters, r.train_seconds]
            + [r.per_class[c] for c in classes] for r in results]
    with open(out / "variants.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    base = results[0]
    lines = [f"Data: {base.data}. Grid wall time {grid_seconds:.1f} s.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    same = [r for r in results[1:] if r.step_losses == base.step_losses]
    if any(r.variant == 8 for r in results):
        v8 = next(r for r in results if r.variant == 8)
        diff = max(abs(a - b) for a, b in zip(v8.step_losses, base.step_losses))
        lines += ["", "Variant 8 is mathematically the baseline: CrossEntropyLoss(x) = NLLLoss(log_softmax(x)). "
                  f"Largest per-step loss difference from the baseline: {diff:.2e}"
                  + (" (identical)." if diff == 0 else " (floating-point rounding only).")]
    if same:
        lines.append("Identical to the baseline step for step: " + ", ".join(r.name for r in same))
    (out / "variants.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar([str(r.variant) for r in results], [r.accuracy for r in results])
    ax.set_xticks(range(len(results)), [r.name for r in results], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    _save(fig, out / "variants_accuracy.png")
    fig, ax = plt.subplots(figsize=(8, 4))
    for r in results:
        k = max(1, len(r.step_losses) // 100)
        smooth = np.convolve(r.step_losses, np.ones(k) / k, mode="valid")
        ax.plot(smooth, label=r.name, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average)")
    ax.legend(fontsize=7)
    _save(fig, out / "variants_loss.png")


def result_dict(r) -> dict:
    d = asdict(r)
    d.pop("step_losses", None)
    return d
