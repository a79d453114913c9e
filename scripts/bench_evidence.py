"""Does each class's map point at its own object? Per-class pointing game for training recipes
on two-class Fashion-MNIST canvas sets with known boxes, the truth about "recognised by the
absence of the other" (the confidence kept when the object's own box is removed) and the
box-free signal the report's trust section uses (camkit.faithfulness.metrics.absence_of_evidence).

    python scripts/bench_evidence.py [--pairs shirt,ankle-boot sandal,bag] [--recipes plain@32,counterfactual@16]
                                     [--canvas 128] [--per-class 250] [--epochs 12]
    python scripts/bench_evidence.py --train-timing 4 --pairs sandal,bag --recipes plain@32,plain@16,counterfactual@16

Items from the full Fashion-MNIST training set (the Debian package's IDX files) are pasted at
random places on noisy canvases (camkit.data.folders.make_canvas_folder); 20 % of each class is held
out and only held-out images are scored. Every run is `camkit train`'s defaults (CAM head,
fastai augmentation) with --arch resnet18 --no-pretrained --size CANVAS, and the recipe and
output stride named in the row (RECIPE@STRIDE; `plain@32` is the default before issue 20).
Pointing reads each map where its cells look (camkit.core.geometry), its peak between cell centres
(camkit.core.render.peak_xy). The anchor is the first setting:
`--train-timing` trains each setting for a few epochs on the first pair, interleaved, best of 3,
and prints train seconds / the anchor's (goal: <= 2x).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

warnings.filterwarnings("ignore")


def object_removed_retained(run: Path, boxes_json: Path, margin: int = 2) -> dict[str, float]:
    """The truth the box-free signal is checked against: per class, the confidence its correctly
    classified held-out images keep when the object's own box (+ margin) is removed with ROAD's
    imputation. Near 1: the class is decided without its object, i.e. by the other's absence."""
    import torch

    from camkit.faithfulness.metrics import impute_linear
    from camkit.train.run import load, read_valid

    boxes, root = json.loads(boxes_json.read_text()), boxes_json.parent.resolve()
    loaded, g, kept = load(run), torch.Generator().manual_seed(0), {}
    for v in read_valid(run):
        x, c = loaded.preprocess([v.file]), loaded.classes.index(v.label)
        with torch.no_grad():
            p = loaded.model(x).softmax(1)[0]
        if int(p.argmax()) != c:
            continue
        x0, y0, x1, y1 = boxes[v.file.resolve().relative_to(root).as_posix()]
        removed = torch.zeros(x.shape[-2:], dtype=torch.bool)
        removed[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin] = True
        with torch.no_grad():
            q = loaded.model(impute_linear(x[0], removed, 0.01, g)[None]).softmax(1)[0, c]
        kept.setdefault(v.label, []).append(min(1.0, float(q / p[c])))
    return {k: round(sum(v) / len(v), 3) for k, v in kept.items()}


def step_timing(recipes: list[str], canvas: int, rounds: int = 3, steps: int = 4) -> dict[str, float]:
    """Seconds per training step (recipe batch + forward + backward + SGD step, resnet18 at
    `canvas` px, batch 32 of random images), best of `rounds`, recipes interleaved so that a
    busy CPU slows them alike."""
    import time

    import torch

    from camkit.train.evidence import get_recipe, make_batch, recipe_loss
    from camkit.train.models import build_model

    x, y = torch.randn(32, 3, canvas, canvas), torch.arange(32) % 2
    best = {r: float("inf") for r in recipes}
    for _ in range(rounds):
        for name in recipes:
            torch.manual_seed(0)
            model = build_model("resnet18", 2, pretrained=False).model
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            loss_fn = recipe_loss(name) or torch.nn.CrossEntropyLoss()
            g = torch.Generator().manual_seed(0)
            start = time.perf_counter()
            for _ in range(steps):
                bx, bt = make_batch(x, y, 2, get_recipe(name), g) if not get_recipe(name).plain else (x, y)
                loss = loss_fn(model(bx), bt)
                opt.zero_grad()
                loss.backward()
                opt.step()
            best[name] = min(best[name], (time.perf_counter() - start) / steps)
    return best


def settings(spec: str, default_stride: int) -> list[tuple[str, int]]:
    """'plain@32,counterfactual@16' -> [('plain', 32), ('counterfactual', 16)]."""
    out = []
    for item in spec.split(","):
        name, _, stride = item.partition("@")
        out.append((name, int(stride) if stride else default_stride))
    return out


def train_timing(images: Path, runs: list[tuple[str, int]], canvas: int, epochs: int, root: Path,
                 rounds: int = 3) -> dict[tuple[str, int], float]:
    """Best-of-`rounds` train seconds of each (recipe, stride) for `epochs` epochs on `images`,
    settings interleaved so that a busy machine slows them alike."""
    from camkit.train.loop import train

    best = {r: float("inf") for r in runs}
    for _ in range(rounds):
        for recipe, stride in runs:
            r = train(images, arch="resnet18", epochs=epochs, size=canvas, bs=32, out=root / "timing-run",
                      pretrained=False, stride=stride, seed=0, recipe=recipe, overwrite=True, quiet=True)
            best[(recipe, stride)] = min(best[(recipe, stride)], r.train_seconds)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+", default=["shirt,ankle-boot", "sandal,bag"])
    p.add_argument("--recipes", default="plain,negatives,mosaic,bce")
    p.add_argument("--canvas", type=int, default=128)
    p.add_argument("--per-class", type=int, default=250)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--stride", type=int, default=32, help="for recipes named without @STRIDE")
    p.add_argument("--weights", default=None, help="a local torchvision state_dict to start from (pretrained)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--absence-limit", type=int, default=40, help="held-out images for the box-free signal")
    p.add_argument("--out", default=None, help="keep datasets and runs here")
    p.add_argument("--jsonl", default=None, help="append one JSON line per row here")
    p.add_argument("--negatives-from", default=None, help="comma-separated Fashion-MNIST classes: canvases of "
                   "them (40 each, a stand-in for a generic third crawl) are passed as --negatives")
    p.add_argument("--reuse", action="store_true", help="score runs already in --out instead of training them "
                   "again (their train seconds are the ones recorded in their model.json)")
    p.add_argument("--step-timing", action="store_true", help="only time one training step per recipe "
                   "(interleaved, best of 3) and print the ratio to plain")
    p.add_argument("--train-timing", type=int, default=0, metavar="EPOCHS", help="only time EPOCHS epochs of "
                   "training per setting on the first pair (interleaved, best of 3), ratio to the first")
    a = p.parse_args()
    if a.step_timing:
        best = step_timing(a.recipes.split(","), a.canvas)
        for name, sec in best.items():
            print(f"{name:<10} {sec:.3f} s/step  {sec / best[a.recipes.split(',')[0]]:.2f}x {a.recipes.split(',')[0]}")
        return

    from camkit.data.folders import load_fashion_mnist

    source = load_fashion_mnist()
    root = Path(a.out or tempfile.mkdtemp(prefix="camkit-evidence-"))
    runs = settings(a.recipes, a.stride)
    if a.train_timing:
        images = dataset(root, a.pairs[0].split(","), a, source)
        best = train_timing(images, runs, a.canvas, a.train_timing, root)
        for (recipe, stride), sec in best.items():
            print(f"{recipe}@{stride:<4} {sec:7.1f} s  {sec / best[runs[0]]:.2f}x {runs[0][0]}@{runs[0][1]}")
        return
    print(f"{'pair':<18} {'recipe@stride':<20} {'acc':>5} {'pointing A / B':>15} {'object-removed A / B':>21} "
          f"{'box-free A / B':>15} {'flagged':>9} {'train s':>8}", flush=True)
    for pair in a.pairs:
        classes = pair.split(",")
        images = dataset(root, classes, a, source)
        negatives, tag = None, ""
        if a.negatives_from:
            negatives, tag = negatives_folder(root, a, source), "+neg"
        for recipe, stride in runs:
            run = root / (f"run-{'-'.join(classes)}-{a.canvas}-{recipe}{tag}-s{stride}{'-pre' if a.weights else ''}"
                          + (f"-seed{a.seed}" if a.seed else ""))
            row = score(run, images, classes, recipe, stride, tag, negatives, a)
            if a.jsonl:
                with open(a.jsonl, "a") as f:
                    f.write(json.dumps({"pair": pair, **row}) + "\n")


def dataset(root: Path, classes: list[str], a, source) -> Path:
    """The pair's canvas set with boxes (made once, kept under --out)."""
    from camkit.data.folders import make_canvas_folder

    images = root / f"{'-'.join(classes)}-{a.canvas}"
    if not (images / "boxes.json").exists():
        make_canvas_folder(images, classes, a.per_class, canvas=a.canvas,
                           item_range=(a.canvas * 5 // 16, a.canvas * 15 // 32), seed=a.seed, source=source)
    return images


def negatives_folder(root: Path, a, source) -> Path:
    """Canvases of --negatives-from classes (40 each), a stand-in for a generic third crawl."""
    from camkit.data.folders import make_canvas_folder

    folder = root / f"negatives-{a.negatives_from.replace(',', '-')}-{a.canvas}"
    if not folder.is_dir():
        make_canvas_folder(folder, a.negatives_from.split(","), 40, canvas=a.canvas,
                           item_range=(a.canvas * 5 // 16, a.canvas * 15 // 32), seed=a.seed + 1, source=source)
    return folder


def score(run: Path, images: Path, classes: list[str], recipe: str, stride: int, tag: str,
          negatives: Path | None, a) -> dict:
    """Train (or, with --reuse, read) one run, print its row and return it."""
    from camkit.faithfulness.metrics import evaluate, evaluate_run
    from camkit.train.run import read_info
    from camkit.train.loop import train

    if a.reuse and (run / "model.json").is_file():
        summary = read_info(run).summary
        r = SimpleNamespace(valid_accuracy=summary["valid_accuracy"], train_seconds=summary["train_seconds"])
    else:
        r = train(images, arch="resnet18", epochs=a.epochs, size=a.canvas, bs=32, out=run,
                  pretrained=bool(a.weights), weights=a.weights, stride=stride, seed=a.seed,
                  recipe=recipe, overwrite=True, quiet=True, negatives=negatives)
    boxed = evaluate(run, images / "boxes.json", ["cam"], valid_only=True, steps=4)["cam"]["per_class"]
    truth = object_removed_retained(run, images / "boxes.json")
    free = evaluate_run(run, ["cam"], steps=1, limit=a.absence_limit, percentiles=(80,))["absence"]
    point = " / ".join(f"{boxed[c]['pointing_game']:.2f}" for c in classes)
    removed = " / ".join(f"{truth.get(c, float('nan')):.3f}" for c in classes)
    signal = " / ".join(f"{free['per_class'].get(c, {}).get('score', float('nan')):.3f}" for c in classes)
    print(f"{','.join(classes):<18} {f'{recipe}{tag}@{stride}':<20} {r.valid_accuracy:>5.2f} {point:>15} {removed:>21} "
          f"{signal:>15} {','.join(free['flagged']) or '-':>9} {r.train_seconds:>8.0f}", flush=True)
    return {"recipe": recipe + tag, "canvas": a.canvas, "stride": stride, "epochs": a.epochs, "seed": a.seed,
            "pretrained": bool(a.weights), "accuracy": r.valid_accuracy,
            "pointing": {c: boxed[c]["pointing_game"] for c in classes},
            "object_removed_retained": truth, "absence": free, "train_seconds": r.train_seconds}


if __name__ == "__main__":
    main()
