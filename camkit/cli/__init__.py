"""The `camkit` command: a thin typed layer over the library functions of the same names.

Each command parses typed options (choices are Enums, so `--help` lists them and a typo fails
at parse time), calls one library function, and prints its result. Errors are not handled
here: the one boundary in `_boundary.Boundary` turns them into one line and an exit code.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from camkit import __version__
from camkit.choices import Aug, CleanSplit, Engine, Head, Method, Precision, TrainLoader
from camkit.cli._boundary import Boundary
from camkit.cli._options import DataRootOpt, JsonOpt, ModelOpt, SeedOpt, emit, finite, split_list, stdout_for
from camkit.cli.calc import calc_app
from camkit.cli.course import course_app

app = typer.Typer(cls=Boundary, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fastai transfer learning with Class Activation Maps.")
app.add_typer(calc_app, name="calc")
app.add_typer(course_app, name="course")


def _version(show: bool) -> None:
    if show:
        print(f"camkit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print camkit's version and exit")] = False) -> None:
    """fastai transfer learning with Class Activation Maps."""


@app.command()
def crawl(
    keywords: Annotated[List[str], typer.Argument(help="one class folder per keyword, e.g. cats dogs")],
    max_num: Annotated[int, typer.Option(help="images wanted per keyword (a rerun continues to this)")] = 100,
    out: Annotated[Path, typer.Option(help="dataset folder")] = Path("data/images"),
    engine: Annotated[Engine, typer.Option(help="search engine (auto falls back when one finds nothing)")] = Engine.auto,
    endpoint: Annotated[Optional[str], typer.Option(help="replace the engine's scheme and host (mirror, test server)")] = None,
    threads: Annotated[int, typer.Option(help="download threads")] = 8,
    min_size: Annotated[int, typer.Option(help="reject images whose shorter side is smaller")] = 64,
    max_side: Annotated[int, typer.Option(help="resize so the longer side is at most this (0: keep)")] = 512,
    max_bytes: Annotated[str, typer.Option(help="reject files larger than this (streamed, stops early)")] = "20MB",
    license: Annotated[Optional[str], typer.Option(help="creativecommons|publicdomain|commercial|noncommercial")] = None,
    allow_private: Annotated[bool, typer.Option(help="allow image URLs on private/loopback addresses")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to connect, and to wait for each piece of a response")] = 10.0,
    file_timeout: Annotated[Optional[float], typer.Option(help="seconds for a whole download, redirects and "
                                                          "retries included (default 3 x --timeout)")] = None,
    idle_timeout: Annotated[float, typer.Option(help="stop a keyword after this long without any result")] = 60.0,
    total_timeout: Annotated[float, typer.Option(help="stop a keyword after this long in all")] = 3600.0,
    as_json: JsonOpt = False,
):
    """Search images for each keyword into verified, deduplicated class folders."""
    from camkit.crawl import crawl as crawl_fn

    with stdout_for(as_json):
        summaries = crawl_fn(keywords, max_num=max_num, out=out, engine=engine.value, endpoint=endpoint,
                             threads=threads, min_size=min_size, max_side=max_side or None, max_bytes=max_bytes,
                             license=license, allow_private=allow_private, timeout=timeout, file_timeout=file_timeout,
                             idle_timeout=idle_timeout, total_timeout=total_timeout, quiet=as_json)
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
    folder: Annotated[Path, typer.Argument(help="class-per-folder dataset")],
    min_size: Annotated[int, typer.Option(help="reject images whose shorter side is smaller")] = 64,
    as_json: JsonOpt = False,
):
    """The crawl's checks and dedup on an existing folder; rejects go to FOLDER/_rejected/."""
    from camkit.crawl import verify as verify_fn

    summary = verify_fn(folder, min_size=min_size)
    if as_json:
        emit(asdict(summary))
        return
    reasons = ", ".join(f"{k} {v}" for k, v in summary.rejected.items()) or "none"
    print(f"checked {summary.checked}, kept {summary.kept}; moved to {folder / '_rejected'}: {reasons}")


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="one sub-folder of images per class")],
    arch: Annotated[str, typer.Option(help="torchvision resnet name, or a timm name when timm is installed")] = "resnet34",
    epochs: Annotated[int, typer.Option(help="epochs (after the frozen one(s) when fine-tuning)")] = 4,
    size: Annotated[int, typer.Option(help="image side in pixels (images are squished to a square)")] = 224,
    bs: Annotated[int, typer.Option(help="batch size (at least 2)")] = 64,
    valid_pct: Annotated[float, typer.Option(help="fraction held out for validation")] = 0.2,
    seed: SeedOpt = 0,
    out: Annotated[Optional[Path], typer.Option(help="run folder (default runs/<data folder name>)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate (default 2e-3 fine-tune, 3e-3 scratch)")] = None,
    head: Annotated[Head, typer.Option(help="cam: GAP -> Linear, exact CAM; fastai: fastai's head")] = Head.cam,
    pretrained: Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained",
                                                       help="ImageNet weights (default: when they can be loaded)")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="local torchvision state_dict to start from")] = None,
    stride: Annotated[int, typer.Option(help="ResNet output stride: 32, 16 or 8 (finer CAM maps)")] = 32,
    freeze_epochs: Annotated[int, typer.Option(help="frozen-body epochs when fine-tuning pretrained weights")] = 1,
    precision: Annotated[Precision, typer.Option(help="auto: bf16 where the hardware has it")] = Precision.auto,
    loader: Annotated[TrainLoader, typer.Option(help="tensor: decode once (fast); fastai: ImageDataLoaders as the "
                                                "course builds them")] = TrainLoader.tensor,
    aug: Annotated[Aug, typer.Option(help="training augmentation: fastai's aug_transforms, a flip, or none")] = Aug.fastai,
    overwrite: Annotated[bool, typer.Option(help="replace a run already in --out (kept until the new one is complete)")] = False,
    as_json: JsonOpt = False,
):
    """Train a classifier on an image folder and save it in a safe format."""
    from camkit.train import train as train_fn

    with stdout_for(as_json):
        result = train_fn(data_dir, arch=arch, epochs=epochs, size=size, bs=bs, valid_pct=valid_pct, seed=seed,
                          out=out, lr=lr, head=head.value, pretrained=pretrained, weights=weights, stride=stride,
                          freeze_epochs=freeze_epochs, precision=precision.value, loader=loader.value, aug=aug.value,
                          overwrite=overwrite, quiet=as_json)
    if as_json:
        emit({k: v for k, v in result.to_dict().items() if k != "history"})
    else:
        print(f"valid accuracy {result.valid_accuracy:.2%} on {result.n_valid} images; "
              f"{result.images_per_sec:.1f} images/s on {result.device} ({result.precision}); saved to {result.out}")


@app.command()
def cam(
    images: Annotated[List[Path], typer.Argument(help="image files or folders (searched recursively)")],
    model: ModelOpt,
    method: Annotated[Optional[Method], typer.Option(help="default: cam when the head allows, else gradcam")] = None,
    target: Annotated[str, typer.Option(help="'pred' or a class name")] = "pred",
    out: Annotated[Path, typer.Option(help="output folder (empty, or one camkit wrote)")] = Path("cams"),
    layer: Annotated[Optional[str], typer.Option(help="module name to explain (default: last spatial layer)")] = None,
    alpha: Annotated[float, typer.Option(help="heatmap opacity in the overlay")] = 0.5,
    colormap: Annotated[str, typer.Option(help="matplotlib colormap")] = "jet",
    bs: Annotated[int, typer.Option(help="batch size")] = 32,
    precision: Annotated[Precision, typer.Option(help="fp32, bf16 (faster on CPUs with native bf16) or auto")] = Precision.fp32,
    as_json: Annotated[bool, typer.Option("--json", help="print the cams.jsonl lines")] = False,
):
    """Heatmaps of where the model looked: overlays, raw maps, cams.jsonl and index.html."""
    from camkit.explain import cam as cam_fn

    with stdout_for(as_json):
        results = cam_fn(images, model=model, method=method.value if method else None, target=target, out=out,
                         layer=layer, alpha=alpha, colormap=colormap, bs=bs, precision=precision.value, quiet=as_json)
    if as_json:
        for r in results:
            print(json.dumps(finite(asdict(r)), allow_nan=False))
        return
    for r in results:
        print(f"{r.image}: {r.pred} ({r.prob:.1%}), peak at {r.peak_xy}")
    print(f"{len(results)} images explained with {results[0].method if results else '-'}; "
          f"gallery: {out / 'index.html'}")


@app.command("cam-eval")
def cam_eval(
    boxes: Annotated[Path, typer.Argument(help="boxes.json: {relative/path.png: [x0, y0, x1, y1]}")],
    model: ModelOpt,
    methods: Annotated[Optional[List[str]], typer.Option(help="methods, repeated or comma-separated "
                                                          "(default cam,gradcam,gradcam++,xgradcam,layercam)")] = None,
    image_root: Annotated[Optional[Path], typer.Option(help="folder the box paths are relative to (default: boxes.json's)")] = None,
    steps: Annotated[int, typer.Option(help="deletion/insertion steps")] = 16,
    limit: Annotated[Optional[int], typer.Option(help="score only the first N images")] = None,
    valid_only: Annotated[bool, typer.Option("--valid-only", help="only the run's held-out images")] = False,
    as_json: JsonOpt = False,
):
    """Faithfulness per method: pointing game and deletion / insertion AUC (merged into RUN/cam_eval.json)."""
    from camkit.metrics import DEFAULT_METHODS, evaluate
    from camkit.run import save_cam_eval

    names = split_list(methods, "--methods") if methods else list(DEFAULT_METHODS)
    with stdout_for(as_json):
        results = evaluate(model, boxes, names, image_root=image_root, steps=steps, limit=limit,
                           valid_only=valid_only)
        kept = save_cam_eval(model, results)
    if as_json:
        emit(results)
        return
    print(f"{'method':<11} {'images':>6} {'pointing':>9} {'deletion':>9} {'insertion':>10}")
    for name, r in results.items():
        print(f"{name:<11} {r['images']:>6} {r['pointing_game']:>9.3f} {r['deletion_auc']:>9.3f} {r['insertion_auc']:>10.3f}")
    if kept:
        print(f"not saved over a larger earlier evaluation in {model / 'cam_eval.json'}: {', '.join(kept)}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="where the dataset, run, CAMs and report go")] = Path("demo"),
    epochs: Annotated[int, typer.Option(help="training epochs")] = 5,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
):
    """The whole pipeline offline on shipped Fashion-MNIST items: data, train, CAM, report."""
    from camkit.demo import demo as demo_fn

    with stdout_for(as_json):
        result = demo_fn(out=out, epochs=epochs, seed=seed, quiet=as_json)
    if as_json:
        emit(result.to_dict())
        return
    print(f"held-out accuracy: {result.valid_accuracy:.1%} (trained in {result.train_seconds:.0f} s)")
    print(f"exact-CAM pointing game on held-out images: {result.pointing_game:.1%}")
    print(f"dataset: {result.images}\nmodel:   {result.run}\nCAMs:    {result.cams}/index.html")
    print(f"report:  {result.report}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by camkit train")],
    cams: Annotated[Optional[Path], typer.Option(help="a camkit cam output folder to include (default RUN/cams)")] = None,
    data: DataRootOpt = None,
    open_browser: Annotated[bool, typer.Option("--open", help="open the page in the default browser")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the numbers behind the page")] = False,
):
    """One self-contained HTML page for a run: data, training, evaluation, CAMs."""
    from camkit import report as report_mod

    with stdout_for(as_json):
        path = report_mod.report(run_dir, cams=cams, data_root=data)
    if as_json:
        emit({"report": str(path), **report_mod.summarize(run_dir, data_root=data)})
    else:
        print(f"report: {path}")
    if open_browser:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


@app.command()
def predict(
    images: Annotated[List[Path], typer.Argument(help="image files or folders (searched recursively)")],
    model: ModelOpt,
    top_k: Annotated[int, typer.Option(help="most probable classes to list per image")] = 2,
    bs: Annotated[int, typer.Option(help="batch size")] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON line per image: image, pred, prob, probs")] = False,
):
    """Class and probabilities per image, batched (what `camkit cam` computes, without maps)."""
    from camkit.predict import predict as predict_fn

    with stdout_for(as_json):
        results = predict_fn(images, model=model, top_k=top_k, bs=bs)
    for r in results:
        if as_json:
            print(json.dumps(finite({"image": r.image, "pred": r.pred, "prob": r.prob, "probs": r.probs}),
                             allow_nan=False))
        else:
            print(f"{r.image}: {r.pred} ({r.prob:.1%}), " + ", ".join(f"{c} {p:.1%}" for c, p in r.top))


@app.command()
def clean(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by camkit train")],
    data: DataRootOpt = None,
    split: Annotated[CleanSplit, typer.Option(help="images to score (valid: those in the run's valid.json)")] = CleanSplit.all,
    out: Annotated[Optional[Path], typer.Option(help="review page (default RUN/clean.html; with --json only if given)")] = None,
    top: Annotated[int, typer.Option(help="suspects shown on the page, with CAM overlays")] = 60,
    apply: Annotated[Optional[Path], typer.Option("--apply", help="carry out a decisions.json saved from the page")] = None,
    undo: Annotated[bool, typer.Option("--undo", help="move back the files moved by --apply (DATA/clean.jsonl)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the ranking (or the moves): one JSON line each")] = False,
):
    """Rank the run's images by how suspicious their label is; review them on an offline page; --apply / --undo."""
    from camkit import clean as clean_mod
    from camkit.errors import CamkitError

    if apply is not None and undo:
        raise CamkitError("--apply and --undo cannot be used together")
    if apply is not None or undo:
        moves = clean_mod.apply(run_dir, apply, data) if apply is not None else clean_mod.undo(run_dir, data)
        for m in moves:
            print(json.dumps(m) if as_json else f"{m['action']}: {m['from']} -> {m['to']}")
        if not as_json:
            print(f"{len(moves)} file(s) moved; log: {clean_mod.data_root(run_dir, None, data) / clean_mod.CLEAN_LOG}")
        return
    page = None if as_json and out is None else clean_mod.check_page(out or run_dir / "clean.html", top)
    with stdout_for(as_json):
        suspects = clean_mod.rank(run_dir, data=data, split=split.value)
        if page is not None:
            page = clean_mod.write_page(suspects, run_dir, page, top, data)
    if as_json:
        for s in suspects:
            print(json.dumps(finite(s.record()), allow_nan=False))
        return
    for s in suspects[:10]:
        print(f"{s.loss:7.3f}  {s.rel}: label {s.label}, predicted {s.pred} ({s.prob:.1%}) {s.reason}")
    print(f"{len(suspects)} images ranked; review page: {page}")


def main() -> None:
    """Console entry point (the boundary turns every error into one line and an exit code)."""
    app()


if __name__ == "__main__":
    main()
