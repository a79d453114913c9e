"""The `camkit` command: a thin typed layer over the library functions of the same names.

Each command parses typed options (choices are Enums, so `--help` lists them and a typo fails
at parse time), calls one library function, and prints its result. Errors are not handled
here: the one boundary in `_boundary.Boundary` turns them into one line and an exit code.

Each command imports its library function inside its body, for start-up time: at the top sit
only typer and the light option and choice modules, so `--help`, `--version`, an argument error,
`crawl`, `verify` and `credits` never load torch or fastai (tests/test_cli.py checks the modules;
scripts/bench_startup.py times every command as a whole process).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from camkit.cli._boundary import Boundary
from camkit.cli._options import DataRootOpt, EngineOpt, JsonOpt, ModelOpt, SeedOpt, emit, finite, split_list, stdout_for
from camkit.cli.calc import calc_app
from camkit.cli.course import course_app
from camkit.cli.crawl import register as register_crawl_commands
from camkit.cli.export import register as register_export_command
from camkit.core.choices import Aug, CamEngine, CleanSplit, EvalSplit, Head, Method, Precision, Recipe, TrainLoader
from camkit.errors import CamkitError
from camkit.version import __version__

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


register_crawl_commands(app)  # crawl, verify, credits (camkit/cli/crawl.py)
register_export_command(app)  # export (camkit/cli/export.py)


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="one sub-folder of images per class")],
    arch: Annotated[str, typer.Option(help="torchvision resnet name, or a timm name when timm is installed")] = "resnet34",
    epochs: Annotated[Optional[int], typer.Option(help="epochs (after the frozen one(s) when fine-tuning); default: "
                                                  "enough optimizer steps for the dataset's size")] = None,
    size: Annotated[int, typer.Option(help="image side in pixels (images are squished to a square)")] = 224,
    bs: Annotated[Optional[int], typer.Option(help="batch size (at least 2); default: the largest of 8-64 giving "
                                              "6 steps an epoch")] = None,
    valid_pct: Annotated[float, typer.Option(help="fraction held out for validation")] = 0.2,
    seed: SeedOpt = 0,
    out: Annotated[Optional[Path], typer.Option(help="run folder (default runs/<data folder name>)")] = None,
    lr: Annotated[Optional[str], typer.Option(help="learning rate, or 'auto' for fastai's lr_find (default 2e-3 "
                                              "fine-tune, 3e-3 scratch)")] = None,
    head: Annotated[Head, typer.Option(help="cam: GAP -> Linear, exact CAM; fastai: fastai's head")] = Head.cam,
    pretrained: Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained",
                                                       help="ImageNet weights (default: when they can be loaded)")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="local torchvision state_dict to start from")] = None,
    stride: Annotated[Optional[int], typer.Option(help="ResNet output stride: 32, 16 or 8 (finer CAM maps; default "
                                                  "16 for a torchvision ResNet with the CAM head, else 32)")] = None,
    dilate: Annotated[Optional[bool], typer.Option("--dilate/--no-dilate", help="make a lower --stride by dilating "
                                                   "the later convs (keeps what pretrained kernels see)")] = None,
    freeze_epochs: Annotated[int, typer.Option(help="frozen-body epochs when fine-tuning pretrained weights")] = 1,
    precision: Annotated[Precision, typer.Option(help="auto: bf16 where the hardware has it")] = Precision.auto,
    loader: Annotated[TrainLoader, typer.Option(help="tensor: decode once (fast); fastai: ImageDataLoaders as the "
                                                "course builds them")] = TrainLoader.tensor,
    aug: Annotated[Aug, typer.Option(help="training augmentation: fastai's aug_transforms, a flip, or none")] = Aug.fastai,
    overwrite: Annotated[bool, typer.Option(help="replace a run already in --out (kept until the new one is complete)")] = False,
    cache: Annotated[Optional[Path], typer.Option(help="folder for the decoded images (memory-mapped; the next run "
                                                  "decodes only new or changed files)")] = None,
    recipe: Annotated[Recipe, typer.Option(help="what training batches add so that each class's map finds its own "
                                           "evidence (auto: counterfactual with the CAM head; see "
                                           "camkit.train.evidence)")] = Recipe.auto,
    negatives: Annotated[Optional[Path], typer.Option(help="folder of images of neither class (e.g. a generic "
                                                      "crawl): a hidden 'neither' in every batch")] = None,
    ddp_timeout: Annotated[Optional[float], typer.Option(help="under torchrun / accelerate launch: seconds a process "
                                                         "waits for the others before stopping with an error "
                                                         "(default: CAMKIT_DDP_TIMEOUT, else 1800)")] = None,
    as_json: JsonOpt = False,
):
    """Train a classifier on an image folder and save it in a safe format (several processes under torchrun)."""
    from camkit.core.distributed import group_for
    from camkit.train.loop import train as train_fn

    with stdout_for(as_json), group_for(timeout=ddp_timeout):
        result = train_fn(data_dir, arch=arch, epochs=epochs, size=size, bs=bs, valid_pct=valid_pct, seed=seed,
                          out=out, lr=lr, head=head.value, pretrained=pretrained, weights=weights, stride=stride,
                          dilate=dilate,
                          freeze_epochs=freeze_epochs, precision=precision.value, loader=loader.value, aug=aug.value,
                          overwrite=overwrite, quiet=as_json, cache=cache, recipe=recipe.value,
                          negatives=negatives)
    if not main_rank():
        return  # under torchrun / accelerate launch, rank 0 reports
    if as_json:
        emit({k: v for k, v in result.to_dict().items() if k != "history"})
    else:
        v = result.verdict
        print(f"valid accuracy {result.valid_accuracy:.2%} on {result.n_valid} images (always answering "
              f"'{v['baseline_class']}': {v['baseline']:.2%}); verdict {v['status']}; {result.epochs} epochs at bs "
              f"{result.bs}, lr {result.lr:.2g}; {result.images_per_sec:.1f} images/s on {result.device} "
              f"({result.precision}); saved to {result.out}")


def _list_methods(value: bool) -> None:
    """`camkit cam --list-methods`: one line per method, then exit (before any other option is read)."""
    if not value:
        return
    from camkit.cam import describe_methods

    print(f"{'method':<16} {'paper':<44} {'peers':<28} needs")
    for name, paper, needs, peers in describe_methods():
        print(f"{name:<16} {paper[:44]:<44} {peers:<28} {needs}")
    raise typer.Exit()


@app.command()
def cam(
    images: Annotated[List[Path], typer.Argument(help="image files or folders (searched recursively)")],
    model: ModelOpt,
    method: Annotated[Optional[Method], typer.Option(metavar="METHOD", help=", ".join(m.value for m in Method)
                                                     + " (default: cam when the head allows, else gradcam; "
                                                     "--list-methods: what each needs)")] = None,
    target: Annotated[str, typer.Option(help="'pred', a class name, or 'contrast': why the prediction and not "
                                        "the most likely other class")] = "pred",
    out: Annotated[Path, typer.Option(help="output folder (empty, or one camkit wrote)")] = Path("cams"),
    layer: Annotated[Optional[str], typer.Option(help="module name to explain (default: last spatial layer; "
                                                 "a,b fuses several)")] = None,
    alpha: Annotated[float, typer.Option(help="heatmap opacity in the overlay")] = 0.5,
    colormap: Annotated[Optional[str], typer.Option(help="matplotlib colormap (default jet; RdBu_r with "
                                                    "--signed)")] = None,
    signed: Annotated[bool, typer.Option("--signed", help="keep evidence against (blue) beside evidence for "
                                         "(red): maps in [-1, 1]")] = False,
    aug_smooth: Annotated[bool, typer.Option("--aug-smooth", help="average the maps of 6 flipped / rescaled "
                                             "copies (6x the passes)")] = False,
    eigen_smooth: Annotated[bool, typer.Option("--eigen-smooth", help="first principal component of the "
                                               "weighted activations")] = False,
    bs: Annotated[int, typer.Option(help="batch size")] = 32,
    precision: Annotated[Precision, typer.Option(help="fp32, bf16 (faster on CPUs with native bf16) or auto")] = Precision.fp32,
    engine: EngineOpt = CamEngine.auto,
    as_json: Annotated[bool, typer.Option("--json", help="print the cams.jsonl lines")] = False,
    list_methods: Annotated[bool, typer.Option("--list-methods", is_eager=True, callback=_list_methods,
                                               help="list the methods, what each needs and the peers that have it")] = False,
):
    """Heatmaps of where the model looked: overlays, raw maps, cams.jsonl and index.html."""
    from camkit.explain import cam as cam_fn

    with stdout_for(as_json):
        results = cam_fn(images, model=model, method=method.value if method else None, target=target, out=out,
                         layer=layer, alpha=alpha, colormap=colormap, bs=bs, precision=precision.value, quiet=as_json,
                         signed=signed, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, engine=engine.value)
    if not main_rank():
        return  # under torchrun / accelerate launch, rank 0 reports
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
    path: Annotated[Optional[Path], typer.Argument(help="a run folder (faithfulness without boxes, on its own images), "
                                                   "or boxes.json: {relative/path.png: [x0, y0, x1, y1]} with --model")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="run folder written by camkit train")] = None,
    methods: Annotated[Optional[List[str]], typer.Option(help="methods, repeated or comma-separated "
                                                          "(default cam,gradcam,gradcam++,xgradcam,layercam)")] = None,
    image_root: Annotated[Optional[Path], typer.Option(help="folder the box paths are relative to (default: boxes.json's)")] = None,
    steps: Annotated[int, typer.Option(help="deletion/insertion steps")] = 16,
    limit: Annotated[Optional[int], typer.Option(help="score only the first N images")] = None,
    valid_only: Annotated[bool, typer.Option("--valid-only", help="with boxes: only the run's held-out images")] = False,
    split: Annotated[EvalSplit, typer.Option(help="without boxes: the run's held-out (valid) or training images")] = EvalSplit.valid,
    as_json: JsonOpt = False,
):
    """Faithfulness per method. With boxes: pointing game and deletion / insertion AUC (merged into
    RUN/cam_eval.json). Without: deletion / insertion, ROAD, Average Drop / Increase in Confidence,
    the randomisation sanity check, per method and class, and the classes recognised by the absence
    of the others (RUN/cam_trust.json)."""
    from camkit.evaluate import DEFAULT_METHODS
    from camkit.evaluate import cam_eval as cam_eval_fn

    names = split_list(methods, "--methods") if methods else list(DEFAULT_METHODS)
    boxes, run = _eval_inputs(path, model)
    with stdout_for(as_json):
        done = cam_eval_fn(run, boxes, names, split=split.value, image_root=image_root, steps=steps, limit=limit,
                           valid_only=valid_only)
    if as_json:
        emit(done.result)
    elif boxes is None:
        _print_trust(done.result, done.path, done.saved)
    else:
        _print_boxed(done.result, done.path, done.kept)


def _print_boxed(results: dict, path: Path, kept: tuple[str, ...]) -> None:
    """One row per method: pointing game, deletion and insertion AUC; then the methods kept."""
    print(f"{'method':<11} {'images':>6} {'pointing':>9} {'deletion':>9} {'insertion':>10}")
    for name, r in results.items():
        print(f"{name:<11} {r['images']:>6} {r['pointing_game']:>9.3f} {r['deletion_auc']:>9.3f} {r['insertion_auc']:>10.3f}")
    if kept:
        print(f"not saved over a larger earlier evaluation in {path}: {', '.join(kept)}")


def _eval_inputs(path: Optional[Path], model: Optional[Path]) -> tuple[Optional[Path], Path]:
    """(boxes file or None, run folder) from `cam-eval PATH [--model RUN]`."""
    if path is not None and path.is_dir():
        if model is not None and model.resolve() != path.resolve():
            raise CamkitError(f"'{path}' is a run folder and --model names another; give one run")
        return None, path
    if path is not None:
        if model is None:
            raise CamkitError("a boxes file needs --model RUN (or give a run folder alone: camkit cam-eval RUN)")
        return path, model
    if model is None:
        raise CamkitError("give a run folder: camkit cam-eval RUN (or camkit cam-eval BOXES.json --model RUN)")
    return None, model


def _print_trust(result: dict, path: Path, saved: bool) -> None:
    """The trust table (`camkit.evaluate.trust_table`: methods ranked, each overall then per
    class) with the box-free faithfulness numbers, then the warnings."""
    from camkit.evaluate import trust_table

    print(f"{result['images']} {result['split']} images, no boxes; deletion: lower is better, the rest higher "
          f"(drop and retained: lower); sanity: rank correlation after re-initialising head / last stage")
    print(f"{'method':<11} {'class':<14} {'images':>6} {'acc':>6} {'deletion':>8} {'insertion':>9} {'ROAD':>7} "
          f"{'drop %':>7} {'incr %':>7} {'retained':>8} {'sanity':>13}")
    for row in trust_table(result):
        c, verdict = row.scores, ("pass" if row.sanity_passed else "FAIL") if row.rank is not None else ""
        sanity = f"{c['sanity_head']:.2f}/{c['sanity_last_stage']:.2f} {verdict}".rstrip()
        print(f"{row.method:<11} {row.cls:<14} {c['images']:>6} {c['accuracy']:>6.3f} {c['deletion_auc']:>8.3f} "
              f"{c['insertion_auc']:>9.3f} {c['road']:>7.3f} {100 * c['average_drop']:>7.1f} "
              f"{100 * c['increase_in_confidence']:>7.1f} {c['retained_confidence']:>8.3f} {sanity:>13}")
    for name, twin in result.get("same_maps", {}).items():
        print(f"{name} = {twin} (same maps): scored once")
    for cls in result["absence"]["flagged"]:
        print(f"warning: '{cls}' is recognised by the absence of the other class(es), not by evidence of its own: "
              f"its images keep {result['absence']['per_class'][cls]['score']:.0%} of their confidence with the "
              f"top 20% of every map removed, so its heatmaps point at background")
    if not saved:
        print(f"not saved over a larger earlier evaluation of the same split in {path}")
    else:
        print(f"saved to {path}")


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
    print(f"training verdict: {result.verdict}")
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
    import camkit.report as report_mod

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
    engine: EngineOpt = CamEngine.auto,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON line per image: image, pred, prob, probs")] = False,
):
    """Class and probabilities per image, batched (what `camkit cam` computes, without maps)."""
    from camkit.predict import predict as predict_fn

    with stdout_for(as_json):
        results = predict_fn(images, model=model, top_k=top_k, bs=bs, engine=engine.value)
    for r in results if main_rank() else []:
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
    folds: Annotated[int, typer.Option(help="score every image with a model trained without it, K models on the "
                                            "run's recipe (0: the run's own model, fast but blind to memorised "
                                            "noise; each fold costs about one training)")] = 3,
    fold_epochs: Annotated[Optional[int], typer.Option(help="epochs per fold model (default: the run's)")] = None,
):
    """Rank the run's images by how suspicious their label is; review them on an offline page; --apply / --undo."""
    import camkit.clean as clean_mod
    from camkit.errors import CamkitError

    if folds == 1 or folds < 0:
        raise CamkitError(f"--folds must be 0 (the run's own model) or at least 2, not {folds}")
    if fold_epochs is not None and fold_epochs < 1:
        raise CamkitError(f"--fold-epochs must be at least 1, not {fold_epochs}")

    if apply is not None and undo:
        raise CamkitError("--apply and --undo cannot be used together")
    if (apply is not None or undo) and _launched():
        raise CamkitError("--apply and --undo move files: run them in one process, not under a launcher")
    if apply is not None or undo:
        moves = clean_mod.apply(run_dir, apply, data) if apply is not None else clean_mod.undo(run_dir, data)
        for m in moves:
            print(json.dumps(m) if as_json else f"{m['action']}: {m['from']} -> {m['to']}")
        if not as_json:
            print(f"{len(moves)} file(s) moved; log: {clean_mod.data_root(run_dir, None, data) / clean_mod.CLEAN_LOG}")
        return
    page = None if as_json and out is None else clean_mod.check_page(out or run_dir / "clean.html", top)
    with stdout_for(as_json):
        suspects = clean_mod.rank(run_dir, data=data, split=split.value, folds=folds or None, fold_epochs=fold_epochs)
        if not main_rank():
            return  # under torchrun / accelerate launch, rank 0 writes the page and reports
        if page is not None:
            page = clean_mod.write_page(suspects, run_dir, page, top, data)
        saved = _save_ranking(clean_mod, suspects, run_dir, data, split.value)
    if as_json:
        if suspects.estimate is not None:
            print(json.dumps(suspects.estimate.record()))
        for s in suspects:
            print(json.dumps(finite(s.record()), allow_nan=False))
        return
    for s in suspects[:10]:
        why = "; ".join(filter(None, [s.reason, *s.quality]))
        print(f"{s.loss:7.3f}  {s.rel}: label {s.label}, predicted {s.pred} ({s.prob:.1%}) {why}")
    print(f"{len(suspects)} images ranked; {clean_mod.summary_line(suspects)}review page: {page}"
          + (f"; out-of-sample ranking saved for the app's Clean tab: {saved}" if saved else ""))


def _save_ranking(clean_mod, suspects, run_dir: Path, data: Optional[Path], split: str) -> Optional[Path]:
    """RUN/clean_ranking.json after --folds (None without); a refused write is one warning line,
    not an error: the page and the printed ranking, minutes of fold training, are already out."""
    if suspects.estimate is None:
        return None
    try:
        return clean_mod.save_ranking(suspects, run_dir, data, split)
    except OSError as e:
        print(f"warning: the ranking was not saved to {run_dir / clean_mod.RANKING} ({e.strerror or e})",
              file=sys.stderr)
        return None


@app.command("app")
def app_command(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by camkit train")],
    port: Annotated[int, typer.Option(help="port to serve on")] = 7860,
    host: Annotated[str, typer.Option(help="IPv4 address to bind: 127.0.0.1 serves this machine only; "
                                           "0.0.0.0 every network this machine is on")] = "127.0.0.1",
    share: Annotated[bool, typer.Option("--share", help="also ask Gradio for a public *.gradio.live link")] = False,
    data: DataRootOpt = None,
    auth_file: Annotated[Optional[Path], typer.Option("--auth-file", help="ask every visitor for a login: a file "
                                                      "of user:password lines (kept out of shell history)")] = None,
    allow_remote_clean: Annotated[bool, typer.Option("--allow-remote-clean", help="serve the Clean tab (it moves "
                                                     "your files) on a public address or share link too; needs "
                                                     "--auth-file")] = False,
    export_space: Annotated[Optional[Path], typer.Option("--export-space", help="write a Hugging Face Space "
                                                         "folder (app.py, requirements.txt, model, README) instead of serving")] = None,
    engine: Annotated[CamEngine, typer.Option(help="onnx: the run as one ONNX graph on onnxruntime, exact CAM only "
                                              "(with --export-space: the light Space, no torch, no fastai); "
                                              "torch or auto: the full app")] = CamEngine.auto,
):
    """Serve the run as a web app: upload / paste / webcam -> prediction and CAM overlay, plus the cleaner
    (on this machine only, unless --allow-remote-clean with --auth-file)."""
    if export_space is not None:
        from camkit.share.space import export_space as export

        folder = export(run_dir, export_space, engine=engine)
        print(f"Space written to {folder}; try it with: cd {folder} && python app.py")
        return
    if engine == CamEngine.onnx:   # the light app on this machine: exact CAM on onnxruntime, no Clean tab
        from camkit.app import check_host, read_auth, require_gradio
        from camkit.share.space import serve_run

        require_gradio()
        check_host(host, port)
        print(f"camkit app (onnxruntime) on http://{host}:{port} (Ctrl-C stops it)", flush=True)
        serve_run(run_dir, port=port, host=host, share=share,
                  auth=read_auth(auth_file) if auth_file is not None else None)
        return
    from camkit.app import check_host, clean_tab_allowed, launch, read_auth, require_gradio

    require_gradio()   # the install hint before the model is loaded
    check_host(host, port)
    auth = read_auth(auth_file) if auth_file is not None else None
    if not clean_tab_allowed(host, share, allow_remote_clean, auth):
        print("the Clean tab is left out on a public address (--allow-remote-clean with --auth-file serves it)",
              file=sys.stderr)
    print(f"camkit app on http://{host}:{port} (Ctrl-C stops it)", flush=True)
    launch(run_dir, port=port, host=host, share=share, data=data, allow_remote_clean=allow_remote_clean, auth=auth)


def main_rank() -> bool:
    """Whether this process prints results: always, except on ranks other than 0 of a launcher."""
    from camkit.core.distributed import launch

    return launch().main


def _launched() -> bool:
    if "WORLD_SIZE" not in os.environ:   # no launcher: answered without importing torch (camkit --version, --help)
        return False
    from camkit.core.distributed import launch

    return launch().active


def main() -> None:
    """Console entry point (the boundary turns every error into one line and an exit code).

    A process started by torchrun / accelerate launch leaves with `os._exit` once its output
    is flushed: its work is done and the group left (camkit.core.distributed), but gloo's worker
    threads can still abort it during interpreter finalisation ("terminate called without an
    active exception", exit -6, after everything was written: 1 launch in ~10 on 2 CPUs; see
    pytorch/pytorch#179291), which a launcher reports as a failed run.

    A malformed launcher variable (RANK=abc) is not an error here, outside the boundary: a
    command that runs as one of several processes (train, cam, predict, clean) reads
    the launch first and says so in one line, exit 2, before any work; `--version`, `--help`
    and the commands that never read the launch (crawl, credits, calc) answer as usual."""
    try:
        launched = _launched()
    except CamkitError:
        launched = False   # no group can be joined, so there are no gloo threads to outlive
    if not launched:
        app()
        return
    code: int = 0
    try:
        app()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
