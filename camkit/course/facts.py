"""The exam's ten true/false statements, each settled by a computation run here, offline.

Every `*_fact` function measures something and returns a `Fact` whose verdict is computed from
that measurement, never written down: change the input (`dropout_fact(p=0.1)`, the logits, the
layer, the activation, the loss) and the verdict follows the evidence. The course's answer key
is F, T, T, T, F, T, T, F, F, T; the tests compare against it.

Statements 1-4 are about the course's fastai snippet

    dls = ImageDataLoaders.from_folder(untar_data(URLs.MNIST_SAMPLE))
    lrnr = vision_learner(dls, resnet34, metrics=error_rate)
    lrnr.fine_tune(1)
    X, y = dls.one_batch()
    lrnr.model(X[0].reshape(1,3,28,28))   # TensorBase([[ 3.4148, -5.0356]], device='cuda:0', ...)

which `measure_snippet` rebuilds on MNIST_SAMPLE when fastai has it unpacked, else on a small
stand-in folder of 28x28 greyscale PNGs from the shipped Fashion-MNIST sample (nothing is
downloaded, nothing is trained). Statements 5-10 are about PyTorch layers.

    >>> dropout_fact(p=0.9).verdict        # ~90 % zeroed, not 10 %
    False
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from camkit.core.files import ensure_writable_dir
from camkit.course.calc import params, softmax
from camkit.errors import CamkitError

KEY = {1: False, 2: True, 3: True, 4: True, 5: False, 6: True, 7: True, 8: False, 9: False, 10: True}
COURSE_PRINTOUT = "TensorBase([[ 3.4148, -5.0356]], device='cuda:0', grad_fn=<AliasBackward0>)"
COURSE_LOGITS = (3.4148, -5.0356)
STATEMENTS = {
    1: "X is stored as grayscale, shape (n, 1, 28, 28).",
    2: "The loss must be CrossEntropyLoss (the model gives two raw outputs).",
    3: "The code is transfer learning with resnet34.",
    4: "The model and X[0] are on the GPU.",
    5: "Softmax of [3.4148, -5.0356] gives values near [0, 1].",
    6: "Linear(1, 1, bias=True) has 2 trainable parameters.",
    7: "Linear(4, 1, bias=False) and Conv2d(1, 1, (2, 2), bias=False) have the same number of parameters.",
    8: "Sequential(Linear(1, K), Linear(K, 1)) approximates any continuous 1-D function for large K.",
    9: "Dropout(0.9) zeroes 10 % of its inputs.",
    10: "With y ~ Bernoulli(sigmoid(w0 + w1 x)), Sequential(Linear(1, 1), Sigmoid()) + BCELoss gives a "
        "loss convex in (w0, w1).",
}
STAND_IN_CLASSES = ("trouser", "bag")


@dataclass(frozen=True)
class Fact:
    """One statement, the verdict the computation reached, and what it measured."""
    n: int
    statement: str
    verdict: bool
    evidence: str
    figures: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- statements 1-4: the fastai snippet

@dataclass(frozen=True)
class Snippet:
    """What the course's snippet produces, measured: the batch, the loss fastai chose, the model."""
    source: str
    file_mode: str            # PIL mode of the image files on disk ('L' = greyscale)
    x_shape: tuple[int, ...]
    channels_equal: bool      # the 3 channels carry the same greyscale values
    reshape_ok: bool          # whether X[0].reshape(1, 3, 28, 28) works
    loss_func: object
    n_classes: int
    out_width: int            # model(X[0:1]).shape[-1]
    arch: str
    body_params: int
    x_device: str
    model_device: str


def mnist_sample_dir() -> Path | None:
    """fastai's unpacked MNIST_SAMPLE (`untar_data`'s destination) if it is there; never downloads."""
    from fastai.data.external import URLs

    root = URLs.path(URLs.MNIST_SAMPLE, c_key="data").with_suffix("")
    return root if (root / "train").is_dir() and (root / "valid").is_dir() else None


def stand_in_folder(root: str | Path, classes: tuple[str, str] = STAND_IN_CLASSES, n_train: int = 40,
                    n_valid: int = 10) -> Path:
    """MNIST_SAMPLE's layout (train/CLASS, valid/CLASS, 28x28 greyscale PNGs) from the shipped
    Fashion-MNIST sample: `n_train` + `n_valid` images per class. n_train * 2 must reach the
    snippet's batch size (64) because fastai drops the last incomplete training batch."""
    from PIL import Image

    from camkit.data.folders import FASHION_CLASSES, load_shipped_sample

    images, labels = load_shipped_sample()
    root = Path(root)
    for cls in classes:
        idx = (labels == FASHION_CLASSES.index(cls)).nonzero()[0]
        for split, picked in (("train", idx[:n_train]), ("valid", idx[n_train:n_train + n_valid])):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i, k in enumerate(picked):
                Image.fromarray(images[k]).save(root / split / cls / f"{i:03d}.png")
    return root


@contextlib.contextmanager
def snippet_folder() -> Iterator[tuple[Path, str]]:
    """(folder, description): MNIST_SAMPLE when unpacked, else a stand-in in a temp folder."""
    found = mnist_sample_dir()
    if found:
        yield found, f"fastai's MNIST_SAMPLE at {found}"
        return
    with tempfile.TemporaryDirectory(prefix="camkit-facts-") as tmp:
        yield stand_in_folder(tmp), ("a stand-in for MNIST_SAMPLE (not downloaded here): 28x28 greyscale PNGs "
                                     f"of Fashion-MNIST {' and '.join(STAND_IN_CLASSES)} from camkit's data/, "
                                     "in MNIST_SAMPLE's train/ and valid/ layout")


def measure_snippet(root: str | Path, source: str = "", arch: str = "resnet34", greyscale: bool = False,
                    multi_label: bool = False, seed: int = 0) -> Snippet:
    """Run the snippet on `root` without training: `ImageDataLoaders.from_folder`, `vision_learner`
    (pretrained=False: no download; the architecture and loss are the same), `dls.one_batch()`,
    and the model on X[0]. `greyscale` loads with PILImageBW and `multi_label` makes the target a
    MultiCategoryBlock: the two changes that would make statements 1 and 2 come out the other way."""
    import fastai.vision.all as fv
    from PIL import Image

    torch.manual_seed(seed)
    img_cls = fv.PILImageBW if greyscale else fv.PILImage
    if multi_label:
        block = fv.DataBlock(blocks=(fv.ImageBlock(img_cls), fv.MultiCategoryBlock), get_items=fv.get_image_files,
                             splitter=fv.GrandparentSplitter(), get_y=lambda p: [fv.parent_label(p)])
        dls = block.dataloaders(root, bs=64, num_workers=0)
    else:
        dls = fv.ImageDataLoaders.from_folder(root, img_cls=img_cls, bs=64, num_workers=0)
    learn = fv.vision_learner(dls, getattr(fv, arch), pretrained=False, metrics=fv.error_rate,
                              n_in=1 if greyscale else 3)
    x, _ = dls.one_batch()
    model = learn.model.to(dls.device).eval()  # fine_tune would have moved it there
    with torch.no_grad():
        out = model(x[:1])
    with Image.open(fv.get_image_files(root)[0]) as first:
        mode = first.mode
    return Snippet(
        source=source or str(root), file_mode=mode, x_shape=tuple(x.shape),
        channels_equal=bool(x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])),
        reshape_ok=x[0].numel() == 3 * 28 * 28, loss_func=learn.loss_func, n_classes=dls.c,
        out_width=out.shape[-1], arch=arch, body_params=_count(learn.model[0]),
        x_device=str(x.device), model_device=str(next(model.parameters()).device))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def torchvision_body_params(arch: str) -> int:
    """Parameters of torchvision's `arch` without its final fc layer: what fastai keeps as the body.
    Built on the meta device: shapes only, no memory, no weights."""
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(weights=None)
    return _count(model) - _count(model.fc)


def greyscale_fact(s: Snippet) -> Fact:
    """1: the batch's shape, read from `dls.one_batch()`."""
    grey = tuple(s.x_shape[1:]) == (1, 28, 28)
    evidence = (f"on {s.source}: the files are PIL mode '{s.file_mode}'"
                f"{' (greyscale)' if s.file_mode == 'L' else ''}, yet dls.one_batch() gives X.shape = "
                f"{s.x_shape}: fastai's PILImage opens every image as RGB"
                + (", the 3 channels identical" if s.channels_equal else "")
                + f". X[0] has {math.prod(s.x_shape[1:])} values, so X[0].reshape(1,3,28,28) "
                + ("works, as in the course" if s.reshape_ok else "fails (it needs 3*28*28 = 2352)")
                + "; a (1,28,28) image has 784 and that reshape would raise.")
    return Fact(1, STATEMENTS[1], grey, evidence)


def loss_fact(s: Snippet) -> Fact:
    """2: the loss fastai picked for the target, and the model's output width."""
    inner = getattr(s.loss_func, "func", s.loss_func)
    cross_entropy = isinstance(inner, nn.CrossEntropyLoss)
    raw = any(not 0 <= v <= 1 for v in COURSE_LOGITS) or abs(sum(COURSE_LOGITS) - 1) > 1e-3
    verdict = cross_entropy and s.out_width == s.n_classes == 2
    evidence = (f"vision_learner chose loss_func = {s.loss_func} ({type(s.loss_func).__name__}) for a "
                f"{s.n_classes}-class target; the model gives {s.out_width} outputs per image. "
                f"The course's {list(COURSE_LOGITS)} "
                + ("are raw scores (not in [0, 1], not summing to 1), which CrossEntropyLoss turns into "
                   "probabilities itself (log-softmax + NLL)." if raw else "look like probabilities."))
    return Fact(2, STATEMENTS[2], verdict, evidence)


def transfer_fact(s: Snippet, arch: str = "resnet34", pretrained: bool | None = None) -> Fact:
    """3: transfer learning = starting from pretrained weights. The snippet passes no `pretrained`,
    so vision_learner's default decides; the body's parameter count identifies the architecture."""
    from fastai.vision.all import Learner, vision_learner

    default = inspect.signature(vision_learner).parameters["pretrained"].default
    used = default if pretrained is None else pretrained
    expected = torchvision_body_params(arch)
    freeze = inspect.signature(Learner.fine_tune).parameters["freeze_epochs"].default
    verdict = bool(used) and s.body_params == expected
    evidence = (f"vision_learner's default pretrained = {default} "
                + ("and the snippet passes none, so it loads ImageNet weights" if pretrained is None else
                   f"but pretrained={pretrained} is passed")
                + f"; the learner's body ({s.arch}) has {s.body_params:,} parameters, torchvision's {arch} "
                f"without its fc has {expected:,}; fine_tune(1) trains the new head with the body frozen for "
                f"freeze_epochs = {freeze}, then everything (built here with pretrained=False: no download).")
    return Fact(3, STATEMENTS[3], verdict, evidence)


def printed_device(printout: str) -> str:
    """The device a printed tensor says it is on: PyTorch prints `device=` only off the CPU."""
    m = re.search(r"device='([^']+)'", printout)
    return m.group(1) if m else "cpu"


def gpu_fact(printout: str = COURSE_PRINTOUT, s: Snippet | None = None) -> Fact:
    """4: decided by the course's printout, the only record of the machine it ran on."""
    device = printed_device(printout)
    cpu_repr = repr(torch.tensor([list(COURSE_LOGITS)]))
    evidence = (f"the course printed {printout}, i.e. the output is on {device}; a CPU tensor prints no "
                f"device (here: {cpu_repr}), and a module refuses inputs on another device, so the model "
                f"and X[0] were both on {device}. This machine: torch.cuda.is_available() = "
                f"{torch.cuda.is_available()}"
                + (f"; dls.one_batch() puts X on {s.x_device} and the model is on {s.model_device}." if s else "."))
    return Fact(4, STATEMENTS[4], device.startswith("cuda"), evidence)


# ---------------------------------------------------------------- statements 5-7, 9: single layers

def softmax_fact(logits: tuple[float, ...] = COURSE_LOGITS, near: tuple[float, ...] = (0.0, 1.0),
                 tol: float = 0.05) -> Fact:
    """5: softmax(z)_i = exp(z_i - max z) / sum_j exp(z_j - max z), compared with `near`."""
    probs = softmax(list(logits)).result["softmax"]
    verdict = all(abs(p - t) <= tol for p, t in zip(probs, near))
    evidence = (f"softmax({list(logits)}) = [{', '.join(f'{p:.5f}' for p in probs)}] "
                f"(within {tol} of {list(near)}: {verdict}); the larger logit gets the larger probability.")
    return Fact(5, STATEMENTS[5], verdict, evidence)


def params_fact(expr: str = "Linear(1, 1, bias=True)", claimed: int = 2) -> Fact:
    """6: trainable parameters of one layer, counted from its weight tensors."""
    a = params(expr)
    count = a.result["parameters"][expr]
    return Fact(6, STATEMENTS[6], count == claimed, f"{a.substituted} (claimed {claimed}).")


def same_params_fact(a: str = "Linear(4, 1, bias=False)", b: str = "Conv2d(1, 1, (2, 2), bias=False)") -> Fact:
    """7: two layers' parameter counts, compared."""
    ans = params(a, b)
    counts = ans.result["parameters"]
    return Fact(7, STATEMENTS[7], counts[a] == counts[b], f"{ans.substituted}.")


def dropout_output(p: float, n: int = 1_000_000, seed: int = 0) -> tuple[float, float]:
    """(fraction zeroed, value of the survivors) of Dropout(p) in training mode on `n` ones:
    expected p and 1 / (1 - p), the scaling that keeps the mean at 1."""
    torch.manual_seed(seed)
    out = nn.Dropout(p).train()(torch.ones(n))
    kept = out[out != 0]
    return float((out == 0).float().mean()), float(kept[0]) if len(kept) else math.nan


def dropout_fact(p: float = 0.9, claimed: float = 0.10, n: int = 1_000_000, tol: float = 0.01) -> Fact:
    """9: the fraction Dropout(p) zeroes, measured, against the claimed fraction."""
    zeroed, scale = dropout_output(p, n)
    identity = torch.equal(nn.Dropout(p).eval()(torch.ones(n)), torch.ones(n))
    evidence = (f"Dropout({p}) in training mode on {n:,} ones zeroed {zeroed:.2%} (claimed {claimed:.0%}) and "
                f"scaled the rest to {scale:.4g} = 1/(1-{p}); in eval mode it "
                + ("is the identity." if identity else "still changes its input."))
    return Fact(9, STATEMENTS[9], abs(zeroed - claimed) <= tol, evidence)


# ---------------------------------------------------------------- statement 8: linear-linear approximation

HIDDEN: dict[str, Callable[[], nn.Module] | None] = {"none": None, "relu": nn.ReLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class Approximation:
    """MSE of Linear(1,K) -> [hidden] -> Linear(K,1) fitted to y = x^2 on [-2, 2], per width K."""
    hidden: str
    widths: tuple[int, ...]
    mse: tuple[float, ...]
    line_mse: float           # the least-squares straight line's
    line_gap: float           # max |net(x) - (a x + b)| of the widest net, (a, b) its collapsed line


def approximate(hidden: str = "none", widths: tuple[int, ...] = (1, 4, 16, 64), steps: int = 400, lr: float = 0.02,
                seed: int = 0) -> Approximation:
    """Fit each width with full-batch Adam and compare with the best straight line. Without an
    activation W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2) is itself a line, so no K can beat it."""
    if hidden not in HIDDEN:
        raise CamkitError(f"hidden activation must be one of {', '.join(HIDDEN)}, not '{hidden}'")
    x = torch.linspace(-2, 2, 201)[:, None]
    y = x ** 2
    design = torch.cat([torch.ones_like(x), x], 1)
    line = torch.linalg.lstsq(design, y).solution
    line_mse = float(((design @ line - y) ** 2).mean())
    mse, net = [], None
    for k in widths:
        torch.manual_seed(seed)
        act = HIDDEN[hidden]
        net = nn.Sequential(nn.Linear(1, k), *([act()] if act else []), nn.Linear(k, 1))
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            torch.mean((net(x) - y) ** 2).backward()
            opt.step()
        with torch.no_grad():
            mse.append(float(torch.mean((net(x) - y) ** 2)))
    return Approximation(hidden, tuple(widths), tuple(mse), line_mse, _line_gap(net, x))


def _line_gap(net: nn.Sequential, x: torch.Tensor) -> float:
    """max |net(x) - (a x + b)| with a = W2 W1, b = W2 b1 + b2: zero when the net is one line."""
    first, last = net[0], net[-1]
    with torch.no_grad():
        a = last.weight @ first.weight
        b = last.weight @ first.bias + last.bias
        return float((net(x) - (x @ a.T + b)).abs().max())


def approximation_fact(hidden: str = "none", plot: str | Path | None = None, ratio: float = 0.5) -> Fact:
    """8: approximates = the widest net's MSE falls below `ratio` times the best line's; the other
    net (ReLU for the statement's, none otherwise) is fitted alongside for contrast."""
    main = approximate(hidden)
    other = approximate("relu" if hidden == "none" else "none")
    verdict = main.mse[-1] < ratio * main.line_mse
    fmt = lambda a: ", ".join(f"K={k}: {m:.4g}" for k, m in zip(a.widths, a.mse))  # noqa: E731
    linear = main if hidden == "none" else other
    evidence = (f"fitting y = x^2 on [-2, 2] (best straight line MSE {main.line_mse:.4f}): "
                f"hidden={main.hidden}: {fmt(main)}; hidden={other.hidden}: {fmt(other)}. Without an activation "
                f"the K={linear.widths[-1]} net equals its collapsed line (W2 W1) x + (W2 b1 + b2) to "
                f"{linear.line_gap:.1e}: a composition of linear maps is linear.")
    figures = [str(_plot_approximation([main, other], Path(plot) / "fact8-approximation.png"))] if plot else []
    return Fact(8, STATEMENTS[8], verdict, evidence, figures)


def _plot_approximation(runs: list[Approximation], path: Path) -> Path:
    from camkit.core.plots import _save, plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for a in runs:
        ax.plot(a.widths, a.mse, "o-", label=f"Linear(1,K) -> {a.hidden} -> Linear(K,1)")
    ax.axhline(runs[0].line_mse, color="k", ls="--", label="best straight line")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden width K")
    ax.set_ylabel("MSE fitting y = x^2 on [-2, 2]")
    ax.legend(fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------- statement 10: convexity

LOSSES: dict[str, Callable[[], nn.Module]] = {"bce": nn.BCELoss, "mse": nn.MSELoss}


@dataclass(frozen=True)
class Convexity:
    """Smallest Hessian eigenvalue of the mean loss over a (w0, w1) grid, and where it is."""
    loss: str
    min_eigenvalue: float
    at: tuple[float, float]
    points: int


def logistic_data(n: int = 200, w: tuple[float, float] = (0.5, -1.5), seed: int = 0):
    """x ~ N(0, 1), y ~ Bernoulli(sigmoid(w0 + w1 x)), float64 for exact second derivatives."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x, torch.bernoulli(torch.sigmoid(w[0] + w[1] * x), generator=g)


def loss_of_weights(loss: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """w = (w0, w1) -> loss(Sequential(Linear(1,1), Sigmoid())(x), y), the course's model itself
    with its bias set to w0 and weight to w1."""
    from torch.func import functional_call

    if loss not in LOSSES:
        raise CamkitError(f"loss must be one of {', '.join(LOSSES)}, not '{loss}'")
    model = nn.Sequential(nn.Linear(1, 1), nn.Sigmoid()).double()
    fn = LOSSES[loss]()
    return lambda w: fn(functional_call(model, {"0.bias": w[:1], "0.weight": w[1:].reshape(1, 1)}, (x,)), y)


def convexity(loss: str = "bce", span: float = 4.0, grid: int = 11) -> Convexity:
    """A twice-differentiable function is convex iff its Hessian is positive semi-definite
    everywhere; checked at grid x grid points of [-span, span]^2 with autograd's exact Hessian."""
    x, y = logistic_data()
    f = loss_of_weights(loss, x, y)
    values = torch.linspace(-span, span, grid, dtype=torch.float64)
    worst, at = math.inf, (0.0, 0.0)
    for w0 in values:
        for w1 in values:
            h = torch.autograd.functional.hessian(f, torch.stack([w0, w1]))
            smallest = float(torch.linalg.eigvalsh(h)[0])
            if smallest < worst:
                worst, at = smallest, (round(float(w0), 6) + 0.0, round(float(w1), 6) + 0.0)
    return Convexity(loss, worst, at, grid * grid)


def convexity_fact(loss: str = "bce", plot: str | Path | None = None, tol: float = 1e-6) -> Fact:
    """10: convex = no Hessian eigenvalue below -`tol` anywhere on the grid."""
    c = convexity(loss)
    verdict = c.min_eigenvalue >= -tol
    evidence = (f"mean {loss.upper()} of Sequential(Linear(1,1), Sigmoid()) on 200 points drawn with "
                f"(w0, w1) = (0.5, -1.5): the smallest Hessian eigenvalue over {c.points} grid points in "
                f"[-4, 4]^2 is {c.min_eigenvalue:.3g} at (w0, w1) = ({c.at[0]:g}, {c.at[1]:g}) "
                + ("(never negative: convex; per point the BCE of sigmoid(z) is log(1 + exp(-z)) or "
                   "log(1 + exp(z)), convex in z = w0 + w1 x, which is linear in the weights)." if verdict else
                   "(negative: not convex there)."))
    figures = [str(_plot_surface(loss, Path(plot) / f"fact10-{loss}-surface.png"))] if plot else []
    return Fact(10, STATEMENTS[10], verdict, evidence, figures)


def _plot_surface(loss: str, path: Path, span: float = 4.0, grid: int = 41) -> Path:
    from camkit.core.plots import _save, plt

    f = loss_of_weights(loss, *logistic_data())
    values = torch.linspace(-span, span, grid, dtype=torch.float64)
    with torch.no_grad():
        z = torch.tensor([[float(f(torch.stack([w0, w1]))) for w0 in values] for w1 in values])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cs = ax.contourf(values.numpy(), values.numpy(), z.numpy(), levels=30, cmap="viridis")
    fig.colorbar(cs, ax=ax, label=f"mean {loss.upper()}")
    ax.plot([0.5], [-1.5], "r*", markersize=12, label="true (w0, w1)")
    ax.set_xlabel("w0 (bias)")
    ax.set_ylabel("w1 (weight)")
    ax.legend(loc="upper right")
    ax.set_title(f"{loss.upper()} loss surface of Linear(1,1) + Sigmoid")
    return _save(fig, path)


# ---------------------------------------------------------------- all ten

def check_numbers(only: list[int] | None) -> list[int]:
    """The statements to settle, in order; numbers outside 1-10 are a user error."""
    if not only:
        return list(STATEMENTS)
    bad = [n for n in only if n not in STATEMENTS]
    if bad:
        raise CamkitError(f"--only takes statement numbers 1-10, not {bad[0]}")
    return sorted(set(only))


def facts(only: list[int] | None = None, plot: str | Path | None = None, quiet: bool = True) -> list[Fact]:
    """Settle the chosen statements (default all ten); figures for 8 and 10 go into `plot`. The
    fastai snippet (statements 1-4) is built once and only when one of them is asked. Unless
    `quiet`, each fact is printed as soon as it is settled."""
    chosen = check_numbers(only)
    if plot and {8, 10} & set(chosen):  # the statements with figures
        ensure_writable_dir(Path(plot), "folder for --plot")
    out: list[Fact] = []

    def settle(fact: Fact) -> None:
        out.append(fact)
        if not quiet:
            print(render([fact]) + "\n", flush=True)

    if any(n <= 4 for n in chosen):
        with snippet_folder() as (root, source):
            s = measure_snippet(root, source)
        for n, fn in ((1, greyscale_fact), (2, loss_fact), (3, transfer_fact)):
            if n in chosen:
                settle(fn(s))
        if 4 in chosen:
            settle(gpu_fact(COURSE_PRINTOUT, s))
    later: dict[int, Callable[[], Fact]] = {
        5: softmax_fact, 6: params_fact, 7: same_params_fact, 8: lambda: approximation_fact(plot=plot),
        9: dropout_fact, 10: lambda: convexity_fact(plot=plot)}
    for n in chosen:
        if n in later:
            settle(later[n]())
    return out


def render(items: list[Fact], width: int = 100) -> str:
    """Each statement, its verdict in capitals, and the evidence wrapped under it."""
    blocks = []
    for f in items:
        evidence = textwrap.fill(f.evidence, width, initial_indent="   evidence: ", subsequent_indent=" " * 13,
                                 break_on_hyphens=False)
        lines = [f"{f.n:>2}. {f.statement}", f"   verdict:  {'TRUE' if f.verdict else 'FALSE'}", evidence]
        lines += [f"   figure:   {p}" for p in f.figures]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
