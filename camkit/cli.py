"""The `camkit` command: a thin typed layer over the library functions of the same names."""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import typer

from camkit.errors import CamkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fastai transfer learning with Class Activation Maps.")


def _one_line_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*upsampling.*")


def run(fn, *args, **kwargs):
    """Call a library function; a CamkitError or Ctrl-C becomes one line on stderr, exit != 0."""
    _one_line_warnings()
    try:
        return fn(*args, **kwargs)
    except CamkitError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as e:  # a bug, not bad input: still one line, the traceback on request
        if os.environ.get("CAMKIT_DEBUG"):
            raise
        print(f"error: internal error {type(e).__name__}: {e} (set CAMKIT_DEBUG=1 for the traceback)",
              file=sys.stderr)
        raise typer.Exit(1) from None


def emit(data) -> None:
    print(json.dumps(data, indent=1, default=str))


@app.command()
def crawl(
    keywords: List[str] = typer.Argument(..., help="one class folder per keyword, e.g. cats dogs"),
    max_num: int = typer.Option(100, help="images wanted per keyword (a rerun continues to this)"),
    out: Path = typer.Option(Path("data/images"), help="dataset folder"),
    engine: str = typer.Option("auto", help="auto|bing|baidu|flickr|google (auto falls back when one finds nothing)"),
    endpoint: Optional[str] = typer.Option(None, help="replace the engine's scheme and host (mirror, test server)"),
    threads: int = typer.Option(8, help="download threads"),
    min_size: int = typer.Option(64, help="reject images whose shorter side is smaller"),
    max_side: int = typer.Option(512, help="resize so the longer side is at most this (0: keep)"),
    max_bytes: str = typer.Option("20MB", help="reject files larger than this (streamed, stops early)"),
    license: Optional[str] = typer.Option(None, help="creativecommons|publicdomain|commercial|noncommercial"),
    allow_private: bool = typer.Option(False, help="allow image URLs on private/loopback addresses"),
    timeout: float = typer.Option(10.0, help="seconds per request"),
    idle_timeout: float = typer.Option(60.0, help="stop a keyword after this long without any result"),
    total_timeout: float = typer.Option(3600.0, help="stop a keyword after this long in all"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Search images for each keyword into verified, deduplicated class folders."""
    from camkit.crawl import crawl as crawl_fn

    summaries = run(crawl_fn, keywords, max_num=max_num, out=out, engine=engine, endpoint=endpoint,
                    threads=threads, min_size=min_size, max_side=max_side or None, max_bytes=max_bytes,
                    license=license, allow_private=allow_private, timeout=timeout, idle_timeout=idle_timeout,
                    total_timeout=total_timeout, progress=not as_json)
    if as_json:
        emit([asdict(s) for s in summaries])
        return
    print(f"{'keyword':<20} {'requested':>9} {'saved':>6}  rejected by reason")
    for s in summaries:
        reasons = ", ".join(f"{k} {v}" for k, v in s.rejected.items()) or "-"
        print(f"{s.keyword:<20} {s.requested:>9} {s.saved:>6}  {reasons}"
              + (f"  (stopped: {s.timed_out} timeout)" if s.timed_out else ""))
    print(f"manifest: {out / 'manifest.jsonl'}")


@app.command()
def verify(
    folder: Path = typer.Argument(..., help="class-per-folder dataset"),
    min_size: int = typer.Option(64, help="reject images whose shorter side is smaller"),
    as_json: bool = typer.Option(False, "--json"),
):
    """The crawl's checks and dedup on an existing folder; rejects go to FOLDER/_rejected/."""
    from camkit.crawl import verify as verify_fn

    summary = run(verify_fn, folder, min_size=min_size)
    if as_json:
        emit(asdict(summary))
        return
    reasons = ", ".join(f"{k} {v}" for k, v in summary.rejected.items()) or "none"
    print(f"checked {summary.checked}, kept {summary.kept}; moved to {folder / '_rejected'}: {reasons}")


@app.command()
def train(
    data_dir: Path = typer.Argument(..., help="one sub-folder of images per class"),
    arch: str = typer.Option("resnet34", help="torchvision resnet name, or a timm name when timm is installed"),
    epochs: int = typer.Option(4, help="epochs (after the frozen one(s) when fine-tuning)"),
    size: int = typer.Option(224, help="image side in pixels (images are squished to a square)"),
    bs: int = typer.Option(64, help="batch size"),
    valid_pct: float = typer.Option(0.2, help="fraction held out for validation"),
    seed: int = typer.Option(0, help="seed for the split, init and batch order"),
    out: Optional[Path] = typer.Option(None, help="run folder (default runs/<data folder name>)"),
    lr: Optional[float] = typer.Option(None, help="learning rate (default 2e-3 fine-tune, 3e-3 scratch)"),
    head: str = typer.Option("cam", help="cam (GAP -> Linear, exact CAM) or fastai"),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained",
                                              help="ImageNet weights (default: when they can be loaded)"),
    weights: Optional[Path] = typer.Option(None, help="local torchvision state_dict to start from"),
    stride: int = typer.Option(32, help="ResNet output stride: 32, 16 or 8 (finer CAM maps)"),
    freeze_epochs: int = typer.Option(1, help="frozen-body epochs when fine-tuning pretrained weights"),
    precision: str = typer.Option("auto", help="auto|fp32|bf16|fp16 (auto: bf16 where the hardware has it)"),
    overwrite: bool = typer.Option(False, help="replace a run already in --out"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary only"),
):
    """Train a classifier on an image folder and save it in a safe format."""
    from camkit.train import train as train_fn

    result = run(train_fn, data_dir, arch=arch, epochs=epochs, size=size, bs=bs, valid_pct=valid_pct,
                 seed=seed, out=out, lr=lr, head=head, pretrained=pretrained, weights=weights, stride=stride,
                 freeze_epochs=freeze_epochs, precision=precision, overwrite=overwrite, quiet=as_json)
    summary = {k: v for k, v in result.to_dict().items() if k != "history"}
    if as_json:
        emit(summary)
    else:
        print(f"valid accuracy {result.valid_accuracy:.2%} on {result.n_valid} images; "
              f"{result.images_per_sec:.1f} images/s on {result.device} ({result.precision}); saved to {result.out}")


@app.command()
def cam(
    images: List[Path] = typer.Argument(..., help="image files or folders (searched recursively)"),
    model: Path = typer.Option(..., "--model", "-m", help="run folder written by camkit train"),
    method: Optional[str] = typer.Option(None, help="cam|gradcam|gradcam++|xgradcam|layercam|scorecam "
                                                    "(default: cam when the head allows, else gradcam)"),
    target: str = typer.Option("pred", help="'pred' or a class name"),
    out: Path = typer.Option(Path("cams"), help="output folder"),
    layer: Optional[str] = typer.Option(None, help="module name to explain (default: last spatial layer)"),
    alpha: float = typer.Option(0.5, help="heatmap opacity in the overlay"),
    colormap: str = typer.Option("jet", help="matplotlib colormap"),
    bs: int = typer.Option(32, help="batch size"),
    precision: str = typer.Option("fp32", help="fp32, bf16 (faster on CPUs with native bf16) or auto"),
    as_json: bool = typer.Option(False, "--json", help="print the cams.jsonl lines"),
):
    """Heatmaps of where the model looked: overlays, raw maps, cams.jsonl and index.html."""
    from camkit.cam import explain

    results = run(explain, model, images, method=method, target=target, out=out, layer=layer, alpha=alpha,
                  colormap=colormap, bs=bs, precision=precision, progress=not as_json)
    if as_json:
        for r in results:
            print(json.dumps(asdict(r)))
    else:
        for r in results:
            print(f"{r.image}: {r.pred} ({r.prob:.1%}), peak at {r.peak_xy}")
        print(f"{len(results)} images explained with {results[0].method if results else '-'}; "
              f"gallery: {out / 'index.html'}")


@app.command("cam-eval")
def cam_eval(
    boxes: Path = typer.Argument(..., help="boxes.json: {relative/path.png: [x0, y0, x1, y1]}"),
    model: Path = typer.Option(..., "--model", "-m", help="run folder written by camkit train"),
    methods: str = typer.Option("cam,gradcam,gradcam++,xgradcam,layercam", help="comma-separated methods"),
    image_root: Optional[Path] = typer.Option(None, help="folder the box paths are relative to (default: boxes.json's)"),
    steps: int = typer.Option(16, help="deletion/insertion steps"),
    limit: Optional[int] = typer.Option(None, help="score only the first N images"),
    valid_only: bool = typer.Option(False, "--valid-only", help="only the run's held-out images"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Faithfulness per method: pointing game and deletion / insertion AUC (saved to RUN/cam_eval.json)."""
    from camkit.metrics import evaluate

    names = [m.strip() for m in methods.split(",") if m.strip()]
    results = run(evaluate, model, boxes, names, image_root=image_root, steps=steps, limit=limit,
                  valid_only=valid_only)
    (model / "cam_eval.json").write_text(json.dumps(results, indent=1))
    if as_json:
        emit(results)
        return
    print(f"{'method':<11} {'images':>6} {'pointing':>9} {'deletion':>9} {'insertion':>10}")
    for name, r in results.items():
        print(f"{name:<11} {r['images']:>6} {r['pointing_game']:>9.3f} {r['deletion_auc']:>9.3f} {r['insertion_auc']:>10.3f}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), help="where the dataset, run, CAMs and report go"),
    epochs: int = typer.Option(5, help="training epochs"),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json"),
):
    """The whole pipeline offline on shipped Fashion-MNIST items: data, train, CAM, report."""
    from camkit.demo import demo as demo_fn

    result = run(demo_fn, out=out, epochs=epochs, seed=seed, quiet=as_json)
    if as_json:
        emit(result.to_dict())
        return
    print(f"held-out accuracy: {result.valid_accuracy:.1%} (trained in {result.train_seconds:.0f} s)")
    print(f"exact-CAM pointing game on held-out images: {result.pointing_game:.1%}")
    print(f"dataset: {result.images}\nmodel:   {result.run}\nCAMs:    {result.cams}/index.html")
    if result.report:
        print(f"report:  {result.report}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="run folder written by camkit train"),
    cams: Optional[Path] = typer.Option(None, help="a camkit cam output folder to include (default RUN/cams)"),
    open_browser: bool = typer.Option(False, "--open", help="open the page in the default browser"),
    as_json: bool = typer.Option(False, "--json", help="print the numbers behind the page"),
):
    """One self-contained HTML page for a run: data, training, evaluation, CAMs."""
    from camkit import report as report_mod

    path = run(report_mod.build, run_dir, cams_dir=cams)
    if as_json:
        emit({"report": str(path), **run(report_mod.summarize, run_dir)})
    else:
        print(f"report: {path}")
    if open_browser:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


calc_app = typer.Typer(no_args_is_help=True, help="The course's calculators: formula, numbers, result.")
course_app = typer.Typer(no_args_is_help=True, help="Course companions reproduced exactly.")
STEP_OPTION = typer.Option(True, "--fast-step/--course-step",
                           help="camkit's step (one flat optimizer call, one thread for tiny CPU batches) "
                           "or the course's own, to time against it")
TUTORIAL_WORKERS_OPTION = typer.Option(2, help="DataLoader worker processes for --loader torchvision "
                                       "(the tutorial's 2)")
app.add_typer(calc_app, name="calc")
app.add_typer(course_app, name="course")


def _answer(answer, as_json: bool) -> None:
    emit(asdict(answer)) if as_json else print(answer.text())


@calc_app.command("conv")
def calc_conv(
    input: str = typer.Option(..., help="H x W x C, e.g. 32x32x3"),
    filters: int = typer.Option(1, help="number of filters (output channels)"),
    kernel: int = typer.Option(3, help="kernel side K"),
    stride: int = typer.Option(1, help="stride S"),
    pad: int = typer.Option(0, help="zero padding P"),
    bias: bool = typer.Option(True, help="count one bias per filter"),
    layers: Optional[str] = typer.Option(None, help="a chain instead, e.g. 'conv6k5,pool2,conv16k5,pool2'"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Convolution output size and parameters (or a whole chain with --layers)."""
    from camkit.course import calc

    if layers:
        _answer(run(calc.chain, input, layers), as_json)
    else:
        _answer(run(calc.conv, input, filters, kernel, stride, pad, bias), as_json)


@calc_app.command("pool")
def calc_pool(
    input: str = typer.Option(..., help="H x W x C"),
    kernel: int = typer.Option(2, help="pooling window K"),
    stride: Optional[int] = typer.Option(None, help="stride (default: K)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Pooling output size."""
    from camkit.course import calc

    _answer(run(calc.pool, input, kernel, stride), as_json)


@calc_app.command("softmax")
def calc_softmax(values: List[str] = typer.Argument(..., help="scores, e.g. 0.4 2.0 0.001 0.32"),
                 as_json: bool = typer.Option(False, "--json")):
    """Numerically stable softmax."""
    from camkit.course import calc

    _answer(run(calc.softmax, values), as_json)


@calc_app.command("loss")
def calc_loss(pred: str = typer.Option(..., help="probabilities, comma-separated"),
              target: str = typer.Option(..., help="one-hot or probabilities, comma-separated"),
              as_json: bool = typer.Option(False, "--json")):
    """MSE, cross-entropy (categorical and binary) and NLL of a prediction."""
    from camkit.course import calc

    _answer(run(calc.loss, pred, target), as_json)


@calc_app.command("params")
def calc_params(layers: List[str] = typer.Argument(..., help='e.g. "Linear(4,1,bias=False)"'),
                as_json: bool = typer.Option(False, "--json")):
    """Trainable parameters of torch.nn layer expressions (parsed safely, never eval'd)."""
    from camkit.course import calc

    _answer(run(calc.params, *layers), as_json)


@course_app.command("regression")
def course_regression(
    seed: int = typer.Option(7676), n: int = typer.Option(100, help="data points"),
    intercept: float = typer.Option(2.5), slope: float = typer.Option(4.0),
    noise: float = typer.Option(0.5, help="noise standard deviation"),
    init: str = typer.Option("-5.0,10.0", help="initial weight: intercept,slope"),
    schedule: str = typer.Option("adam:0.1:5,sgd:0.2:10", help="OPTIMIZER:LR:STEPS phases, in order"),
    plot: Optional[Path] = typer.Option(None, help="write the fit and loss figure here (PNG)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """The exam's regression trace: Adam, then SGD continuing from it, step by step."""
    from camkit.course import regression

    try:
        w0, w1 = (float(v) for v in init.split(","))
    except ValueError:
        print(f"error: --init must be two numbers like -5.0,10.0, not '{init}'", file=sys.stderr)
        raise typer.Exit(2) from None
    t = run(regression.trace, seed, n, intercept, slope, noise, (w0, w1), schedule)
    if plot:
        run(regression.plot, t, plot)
    if as_json:
        emit([asdict(s) for s in t.steps])
    else:
        print(regression.render(t))


@course_app.command("lenet")
def course_lenet(seed: int = typer.Option(0), lr: float = typer.Option(0.01),
                 as_json: bool = typer.Option(False, "--json")):
    """The LeNet autograd walkthrough; manual SGD and optim.SGD are checked to agree."""
    from camkit.course.lenet import walkthrough

    w = run(walkthrough, seed, lr)
    if as_json:
        emit(asdict(w))
        return
    print(w.network)
    print(f"len(list(net.parameters())) = {w.n_params}")
    print(f"params[0].size() = torch.Size({w.first_param_size})")
    print(f"output = {w.output}")
    print(f"MSE loss = {w.loss:.6f}")
    print(f"conv1.bias.grad before backward = {w.bias_grad_before}")
    print(f"conv1.bias.grad after backward = {w.bias_grad_after}")
    print(f"manual f.data.sub_(f.grad * {w.lr}) vs optim.SGD(lr={w.lr}): max |difference| = "
          f"{w.max_abs_difference:.2e} (asserted <= 1e-6; last-bit rounding only)")


@course_app.command("mnist")
def course_mnist(
    dataset: str = typer.Option("mnist", help="mnist|fashion-mnist|digits (cifar10 does not fit this net)"),
    data_dir: Optional[Path] = typer.Option(None, help="where the dataset files are (or go when downloading)"),
    epochs: int = typer.Option(19), bs: int = typer.Option(32), lr: float = typer.Option(0.001),
    seed: int = typer.Option(0), loader: str = typer.Option("tensor", help="tensor (fast) or torchvision (course)"),
    fast: bool = STEP_OPTION,
    workers: int = typer.Option(0, help="DataLoader worker processes for --loader torchvision"),
    limit: Optional[int] = typer.Option(None, help="use only the first N training images"),
    test_limit: Optional[int] = typer.Option(None, help="use only the first N test images"),
    out: Path = typer.Option(Path("course-mnist"), help="where the figures go"),
    as_json: bool = typer.Option(False, "--json"),
):
    """The MNIST homework: per-epoch fit for training and validation, curves, sample images."""
    from camkit.course.experiments import run_mnist

    result = run(run_mnist, dataset, data_dir, epochs, bs, lr, seed, loader, limit, test_limit, out,
                 log=(lambda s: None) if as_json else print, fast=fast, workers=workers)
    if as_json:
        emit(asdict(result))
    else:
        print(f"figures: {', '.join(result.figures)}")


@course_app.command("cifar")
def course_cifar(
    dataset: str = typer.Option("cifar10", help="cifar10|fashion-mnist|digits (1-channel sets padded to 3x32x32)"),
    data_dir: Optional[Path] = typer.Option(None),
    epochs: int = typer.Option(5), bs: int = typer.Option(4), lr: float = typer.Option(0.001),
    seed: int = typer.Option(0), loader: str = typer.Option("tensor", help="tensor (fast) or torchvision (course)"),
    fast: bool = STEP_OPTION,
    workers: int = TUTORIAL_WORKERS_OPTION,
    limit: Optional[int] = typer.Option(None), test_limit: Optional[int] = typer.Option(None),
    log_every: int = typer.Option(1000, help="print the running loss every N mini-batches"),
    out: Path = typer.Option(Path("course-cifar"), help="where the figures go"),
    as_json: bool = typer.Option(False, "--json"),
):
    """The CIFAR-10 tutorial classifier: training log, test accuracy overall and per class."""
    from camkit.course.experiments import (CIFAR_STATS, load_course_data, plot_samples, result_dict,
                                           run_cifar)

    data = run(load_course_data, dataset, data_dir, True, limit, test_limit, seed)
    quiet = (lambda s: None) if as_json else print
    quiet(f"data: {data.description}")
    out.mkdir(parents=True, exist_ok=True)
    grid = plot_samples(data.train_x[:8], data.train_y[:8], data.classes, CIFAR_STATS, out / "cifar_samples.png")
    result = run(run_cifar, 0, epochs=epochs, bs=bs, lr=lr, seed=seed, loader=loader, log_every=log_every,
                 log=quiet, data=data, fast=fast, workers=workers)
    if as_json:
        emit({**result_dict(result), "figures": [str(grid)]})
    else:
        print(f"training images: {grid}")


@course_app.command("variants")
def course_variants(
    only: Optional[str] = typer.Option(None, help="comma-separated subset of 1-9 (default: all)"),
    dataset: str = typer.Option("cifar10"), data_dir: Optional[Path] = typer.Option(None),
    epochs: int = typer.Option(5), bs: int = typer.Option(4), seed: int = typer.Option(0),
    loader: str = typer.Option("tensor", help="tensor (fast) or torchvision (course)"),
    fast: bool = STEP_OPTION,
    workers: int = TUTORIAL_WORKERS_OPTION,
    limit: Optional[int] = typer.Option(None), test_limit: Optional[int] = typer.Option(None),
    out: Path = typer.Option(Path("course-variants"), help="variants.md/.csv and the figures go here"),
    as_json: bool = typer.Option(False, "--json"),
):
    """The nine variants against the tutorial baseline: table, bar chart, loss curves."""
    from camkit.course.experiments import result_dict, run_variants

    try:
        chosen = [int(v) for v in only.split(",")] if only else None
    except ValueError:
        print(f"error: --only must be comma-separated numbers 1-9, not '{only}'", file=sys.stderr)
        raise typer.Exit(2) from None
    results = run(run_variants, chosen, dataset, data_dir, epochs, bs, seed, loader, limit, test_limit, out,
                  log=(lambda s: None) if as_json else print, fast=fast, workers=workers)
    if as_json:
        emit([result_dict(r) for r in results])
    else:
        print((out / "variants.md").read_text())


def main() -> None:
    """Console entry point: usage errors too become one line on stderr (exit 2)."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        print("error: interrupted", file=sys.stderr)
        code = 130
    except Exception as e:  # click's UsageError family: bad or missing options and arguments
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        print(f"error: {message}", file=sys.stderr)
        code = getattr(e, "exit_code", 2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
