"""camkit's defaults under transfer learning, against vanilla fastai, on real two-class clip-art sets
(issue 29 section 4).

    python scripts/bench_transfer.py [--sets vehicles-sports clothing-music tools-office] [--seeds 0 1]
        [--settings camkit-defaults,stride32,plain,dilate16,fastai-vanilla,scratch-defaults]
        [--weights ~/.cache/camkit/standin-resnet18.pth] [--size 128] [--canvas] [--out rows.json]

Each set (tests/realdata.py: openclipart-png subcategories, 60-150 images a class) is served by
the loopback Openverse-format engine and crawled with camkit's own crawler once, then reused
(under --root). Each setting is a function of the set, the seed and the body weights (the
stand-in of scripts/pretrain_standin.py: no ImageNet weights can be downloaded here):

  camkit-defaults   train(data, arch="resnet18", weights=W, size=128, seed=s), every other option
                    camkit's default (CAM head, counterfactual recipe, stride 16, adaptive bs/epochs)
  stride32          the same with stride=32
  plain             the same with recipe="plain"
  dilate16          the same with stride=16, dilate=True (torchvision's replace_stride_with_dilation)
  fastai-vanilla    the course's recipe: from_folder's DataBlock (Resize(128) by crop, aug_transforms,
                    bs 64) on camkit's own split of the same files, vision_learner(dls, resnet18,
                    pretrained=False) with the stand-in body loaded into learn.model[0] and
                    ImageNet normalisation (what vision_learner adds for a pretrained body),
                    fine_tune(4)
  fastai-adaptive-bs  (not run by default) the same at the batch size camkit's defaults pick for
                    these images (camkit.train.spec.adaptive_bs), to tell the batch size from the recipe
  scratch-defaults  train(data, arch="resnet18", pretrained=False, size=128, seed=s): camkit's
                    defaults from scratch
  scratch-e12       (canvas set only) the same with epochs=12, the issue's command

Per row: accuracy on camkit's held-out 20 % (the same files for every setting), the majority
baseline (always answering the larger held-out class), per-class accuracy, the box-free trust
signals of `camkit cam-eval RUN` (camkit.faithfulness.metrics.evaluate_run with Grad-CAM, the one method both
heads have: per class the confidence kept without the map's top 20 %, and the classes flagged as
recognised by the other's absence; the fastai learner is scored through learn.export_run), the
run's training verdict (model.json), and train seconds (fitting only; decoding and scoring
excluded). Then per-setting means and the ratio of train time to the first setting.
`--canvas` adds two Fashion-MNIST classes on noisy 128-px canvases (200 a class, built by
scripts/bench_evidence.py's `dataset`), from scratch, with the pointing game from their boxes.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

DEFAULT_WEIGHTS = Path.home() / ".cache" / "camkit" / "standin-resnet18.pth"
TRUST_METHODS = ("gradcam",)


@dataclass(frozen=True)
class Setting:
    name: str
    fit: Callable[[Path, int, Path | None, Path, int], float]   # (data, seed, weights, out, size) -> train s
    pretrained: bool = True
    canvas: bool = False          # the canvas set's (from scratch) rather than the real sets'

    def unavailable(self) -> str | None:
        if self.name == "dilate16" and "dilate" not in inspect.signature(_train().train).parameters:
            return "camkit.train.loop.train has no `dilate` option yet"
        return None


def _train():
    import camkit.train.loop

    return camkit.train.loop


def camkit_fit(**options) -> Callable:
    def fit(data: Path, seed: int, weights: Path | None, out: Path, size: int) -> float:
        kw = dict(arch="resnet18", size=size, quiet=True, seed=seed, out=out, overwrite=True, **options)
        if options.get("pretrained", True):
            kw["weights"] = weights
        return float(_train().train(data, **kw).train_seconds)
    return fit


def fastai_fit(bs: int | None = 64) -> Callable:
    """vision_learner + fine_tune(4) on camkit's split at batch size `bs` (None: the one camkit
    would choose for these training images, camkit.train.spec.adaptive_bs)."""
    def fit(data: Path, seed: int, weights: Path | None, out: Path, size: int) -> float:
        return fastai_vanilla(data, seed, weights, out, size, bs)
    return fit


def fastai_vanilla(data: Path, seed: int, weights: Path | None, out: Path, size: int, bs: int | None = 64) -> float:
    """vision_learner + fine_tune(4) on camkit's split; the learner exported as a camkit run at `out`."""
    import torch
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        FuncSplitter,
        ImageBlock,
        Normalize,
        Resize,
        accuracy,
        aug_transforms,
        get_image_files,
        imagenet_stats,
        parent_label,
        resnet18,
        vision_learner,
    )

    import camkit.fastai  # noqa: F401  learn.export_run
    from camkit.data.folders import scan_class_folders

    classes, _ = scan_class_folders(data)
    valid = {str(f.resolve()) for f in camkit_valid_files(data, seed)}
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=parent_label,
                       get_items=lambda p: get_image_files(p, folders=classes),
                       splitter=FuncSplitter(lambda f: str(Path(f).resolve()) in valid),
                       item_tfms=Resize(size), batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)])
    if bs is None:
        from camkit.train.spec import adaptive_bs

        bs = adaptive_bs(sum(1 for f in get_image_files(data, folders=classes) if str(f.resolve()) not in valid))
    dls = dblock.dataloaders(data, path=data, bs=bs)
    assert {str(Path(f).resolve()) for f in dls.valid.items} == valid, "fastai's split is not camkit's"
    torch.manual_seed(seed)
    learn = vision_learner(dls, resnet18, pretrained=False, metrics=accuracy)
    load_body(learn.model[0], weights)
    learn.pretrained = True           # the body is pretrained; export_run records it
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(4)
    seconds = time.perf_counter() - start
    learn.export_run(out, overwrite=True)
    (out / "bench_fit.json").write_text(json.dumps({"bs": bs}))    # what model.json does not record
    return seconds


def load_body(body, weights: Path) -> None:
    """A torchvision resnet state_dict into fastai's create_body (children conv1, bn1, relu,
    maxpool, layer1..4 -> indices 0..7), every tensor or an error."""
    import torch

    order = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    state = torch.load(weights, map_location="cpu", weights_only=True)
    mapped = {f"{order.index(k.split('.')[0])}.{k.split('.', 1)[1]}": v for k, v in state.items()
              if not k.startswith("fc.")}
    body.load_state_dict(mapped, strict=True)


SETTINGS = {s.name: s for s in [
    Setting("camkit-defaults", camkit_fit()),
    Setting("stride32", camkit_fit(stride=32)),
    Setting("plain", camkit_fit(recipe="plain")),
    Setting("dilate16", camkit_fit(stride=16, dilate=True)),
    Setting("fastai-vanilla", fastai_fit(64)),
    Setting("fastai-adaptive-bs", fastai_fit(None)),
    Setting("scratch-defaults", camkit_fit(pretrained=False), pretrained=False),
    Setting("scratch-e12", camkit_fit(pretrained=False, epochs=12), pretrained=False, canvas=True),
]}
REAL_DEFAULT = "camkit-defaults,stride32,plain,dilate16,fastai-vanilla,scratch-defaults"
CANVAS_DEFAULT = "scratch-defaults,scratch-e12"

_valid_cache: dict[tuple[str, int], list[Path]] = {}


def camkit_valid_files(data: Path, seed: int) -> list[Path]:
    """The held-out files of camkit's split (FolderData.split(0.2, seed)) of `data`."""
    from camkit.data.folders import load_folder

    key = (str(data.resolve()), seed)
    if key not in _valid_cache:
        folder = load_folder(data, 8)
        _, valid_idx = folder.split(0.2, seed)
        _valid_cache[key] = [folder.files[i] for i in valid_idx.tolist()]
    return _valid_cache[key]


# ---------------------------------------------------------------- scoring a run folder

def score(run: Path, data: Path, seed: int, boxes: Path | None) -> dict:
    """Accuracy, baseline and per-class accuracy from model.json's confusion matrix (rows: true
    class), the verdict, and the box-free trust signals (and pointing, with boxes)."""
    from camkit.faithfulness.metrics import evaluate, evaluate_run

    info = json.loads((run / "model.json").read_text())
    classes, cm = info["classes"], info["confusion"]
    held = [sum(r) for r in cm]
    valid_names = {v["file"] for v in json.loads((run / "valid.json").read_text())}
    expected = {f.resolve().relative_to(data.resolve()).as_posix() for f in camkit_valid_files(data, seed)}
    row = {"classes": classes, "n_valid": sum(held), "same_split": valid_names == expected,
           "accuracy": round(sum(cm[i][i] for i in range(len(cm))) / max(1, sum(held)), 4),
           "baseline": round(max(held) / max(1, sum(held)), 4),
           "class_accuracy": {c: round(cm[i][i] / held[i], 4) if held[i] else math.nan for i, c in enumerate(classes)},
           "verdict": _verdict(info), "epochs": info.get("summary", {}).get("epochs"),
           "bs": info.get("summary", {}).get("bs") or info.get("spec", {}).get("bs")}
    if (run / "bench_fit.json").is_file():
        row.update(json.loads((run / "bench_fit.json").read_text()))
    try:
        trust = evaluate_run(run, TRUST_METHODS, steps=1, percentiles=(80,))
        row["kept"] = {c: trust["absence"]["per_class"].get(c, {}).get("score", math.nan) for c in classes}
        row["flagged"] = trust["absence"]["flagged"]
        row["sanity_passed"] = all(m["sanity_passed"] for m in trust["methods"].values())
    except Exception as e:  # noqa: BLE001  a row without trust numbers still has its accuracy
        row["kept"], row["flagged"], row["sanity_passed"] = None, None, None
        row["trust_error"] = f"{type(e).__name__}: {e}"
    if boxes is not None:
        boxed = evaluate(run, boxes, ["cam"], valid_only=True, steps=4)["cam"]["per_class"]
        row["pointing"] = {c: boxed[c]["pointing_game"] for c in classes if c in boxed}
    return row


def _verdict(info: dict) -> str | None:
    v = info.get("verdict")
    if not isinstance(v, dict):
        return None
    codes = [f.get("code") for f in v.get("findings", [])]
    return v.get("status", "?") + (f" ({', '.join(codes)})" if codes else "")


# ---------------------------------------------------------------- datasets

def real_set(name: str, root: Path) -> Path:
    from realdata import counts, crawl_set

    start = time.perf_counter()
    out = crawl_set(name, root / "sets" / name)
    print(f"# {name}: crawled through the loopback engine in {time.perf_counter() - start:.0f} s (0 s: reused), "
          f"{_described(out)}; per class: {json.dumps(counts(out))}", flush=True)
    return out


def _described(data: Path) -> str:
    """Class order of the per-class columns (camkit's: sorted folder names) and image counts."""
    from camkit.data.folders import scan_class_folders

    classes, files = scan_class_folders(data)
    return "classes " + " / ".join(f"{c} ({len(f)})" for c, f in zip(classes, files))


def canvas_set(pair: str, root: Path, per_class: int, canvas: int) -> Path:
    from bench_evidence import dataset

    from camkit.data.folders import load_fashion_mnist

    data = dataset(root / "sets", pair.split(","), SimpleNamespace(canvas=canvas, per_class=per_class, seed=0),
                   load_fashion_mnist())
    print(f"# canvas:{pair}: {canvas}-px noisy canvases (scripts/bench_evidence.py), {_described(data)}", flush=True)
    return data


# ---------------------------------------------------------------- the table

def fmt_pair(d: dict | None, classes: list[str], spec: str = ".2f") -> str:
    if not d:
        return "n/a"
    return " / ".join("nan" if not isinstance(d.get(c), (int, float)) or math.isnan(d.get(c))
                      else format(d[c], spec) for c in classes)


HEADER = (f"{'set':<16} {'setting':<18} {'seed':>4} {'acc':>5} {'base':>5} {'acc per class':>13} "
          f"{'kept w/o top 20%':>16} {'flagged':>10} {'ep':>3} {'bs':>3} {'train s':>7}  verdict")


def line(r: dict) -> str:
    if "error" in r:
        return f"{r['set']:<16} {r['setting']:<18} {r['seed']:>4} error: {r['error']}"
    c = r["classes"]
    flagged = ",".join(r["flagged"]) if r["flagged"] else ("-" if r["flagged"] is not None else "n/a")
    extra = f"  pointing {fmt_pair(r['pointing'], c)}" if r.get("pointing") else ""
    return (f"{r['set']:<16} {r['setting']:<18} {r['seed']:>4} {r['accuracy']:>5.2f} {r['baseline']:>5.2f} "
            f"{fmt_pair(r['class_accuracy'], c):>13} {fmt_pair(r['kept'], c, '.3f'):>16} {flagged:>10} "
            f"{r['epochs'] or '?':>3} {r['bs'] or '?':>3} {r['train_seconds']:>7.0f}  {r['verdict'] or '-'}{extra}")


def means(rows: list[dict], order: list[str]) -> list[str]:
    """Per setting over its rows: accuracy, points above the baseline, the weaker class's
    accuracy, the larger 'kept' of the two classes, flagged rows, train seconds and the ratio to
    the first setting's (over the sets and seeds both ran)."""
    ok = [r for r in rows if "error" not in r]
    head = (f"{'setting':<18} {'rows':>4} {'acc':>5} {'acc-base':>8} {'min class acc':>13} {'max kept':>8} "
            f"{'flagged':>7} {'train s':>7} {'x first':>7}")
    out = [head]
    first = next((s for s in order if any(r["setting"] == s for r in ok)), None)
    base_t = {(r["set"], r["seed"]): r["train_seconds"] for r in ok if r["setting"] == first}
    for s in order:
        rs = [r for r in ok if r["setting"] == s]
        if not rs:
            continue
        kept = [max(v for v in r["kept"].values() if not math.isnan(v)) for r in rs
                if r["kept"] and any(not math.isnan(v) for v in r["kept"].values())]
        paired = [(r["train_seconds"], base_t[(r["set"], r["seed"])]) for r in rs if (r["set"], r["seed"]) in base_t]
        ratio = sum(a for a, _ in paired) / sum(b for _, b in paired) if paired else math.nan
        out.append(f"{s:<18} {len(rs):>4} {statistics.mean(r['accuracy'] for r in rs):>5.3f} "
                   f"{100 * statistics.mean(r['accuracy'] - r['baseline'] for r in rs):>+8.1f} "
                   f"{statistics.mean(min(r['class_accuracy'].values()) for r in rs):>13.3f} "
                   f"{statistics.mean(kept) if kept else math.nan:>8.3f} "
                   f"{sum(bool(r['flagged']) for r in rs):>7} {statistics.mean(r['train_seconds'] for r in rs):>7.0f} "
                   f"{ratio:>7.2f}")
    return out


# ---------------------------------------------------------------- main

def run_one(setting: Setting, set_name: str, data: Path, seed: int, a, boxes: Path | None) -> dict:
    run = a.root / "runs" / f"{set_name}-{setting.name}-seed{seed}"
    saved = run / "bench_row.json"
    if a.reuse and saved.is_file():
        return json.loads(saved.read_text())
    row = {"set": set_name, "setting": setting.name, "seed": seed, "size": a.size, "run": str(run)}
    try:
        row["train_seconds"] = round(setting.fit(data, seed, a.weights if setting.pretrained else None, run, a.size), 2)
        row.update(score(run, data, seed, boxes))
    except Exception as e:  # noqa: BLE001  one failed setting must not end the benchmark
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if "error" not in row:
        saved.write_text(json.dumps(row, indent=1))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=["vehicles-sports", "clothing-music", "tools-office"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--settings", default=REAL_DEFAULT, help="for the real sets, comma-separated")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="the stand-in body (pretrain_standin.py)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--canvas", action="store_true", help="also the Fashion-MNIST canvas set, from scratch")
    p.add_argument("--canvas-pair", default="coat,bag", help="two Fashion-MNIST classes (not the three pairs "
                   "issue 20 tuned on: sandal,bag shirt,ankle-boot pullover,sneaker)")
    p.add_argument("--canvas-settings", default=CANVAS_DEFAULT)
    p.add_argument("--canvas-per-class", type=int, default=200)
    p.add_argument("--root", type=Path, default=Path("/tmp/camkit-bench-transfer"), help="sets and runs go here")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's; on busy cores 1 is "
                   "much faster, see scripts/pretrain_standin.py idle_cores)")
    p.add_argument("--reuse", action="store_true", help="rows already scored under --root are read, not rerun")
    p.add_argument("--out", type=Path, default=None, help="the raw rows as JSON (rewritten after every row)")
    a = p.parse_args()
    a.weights = a.weights.expanduser()
    command = shlex.join(["python", "scripts/bench_transfer.py", *sys.argv[1:]])
    import torch
    from realdata import OPENCLIPART, available

    if a.threads:
        torch.set_num_threads(a.threads)

    print(f"# {command}\n# {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, weights {a.weights}", flush=True)
    plans: list[tuple[str, Path, list[Setting], Path | None]] = []
    real = _settings(a.settings, a.weights)
    if a.sets and real:
        if not available():
            sys.exit(f"openclipart-png is not installed under {OPENCLIPART} (apt-get install openclipart-png)")
        plans += [(name, real_set(name, a.root), real, None) for name in a.sets]
    if a.canvas:
        data = canvas_set(a.canvas_pair, a.root, a.canvas_per_class, a.size)
        plans.append((f"canvas:{a.canvas_pair}", data, _settings(a.canvas_settings, a.weights), data / "boxes.json"))
    rows: list[dict] = []
    print(HEADER, flush=True)
    for set_name, data, settings, boxes in plans:
        for seed in a.seeds:
            for setting in settings:
                row = run_one(setting, set_name, data, seed, a, boxes)
                rows.append(row)
                print(line(row), flush=True)
                if a.out:
                    a.out.write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    order = list(dict.fromkeys(r["setting"] for r in rows))
    real_rows = [r for r in rows if not r["set"].startswith("canvas:")]
    for title, group in (("real sets", real_rows), ("canvas", [r for r in rows if r["set"].startswith("canvas:")])):
        if group:
            print(f"\nmeans over the {title} ({len({r['set'] for r in group})} sets x {len(a.seeds)} seeds)")
            print("\n".join(means(group, [s for s in order if any(r['setting'] == s for r in group)])))


def _settings(spec: str, weights: Path) -> list[Setting]:
    chosen = []
    for name in filter(None, spec.split(",")):
        if name not in SETTINGS:
            sys.exit(f"unknown setting '{name}'; choose from {', '.join(SETTINGS)}")
        s = SETTINGS[name]
        why = s.unavailable() or (f"no stand-in weights at {weights} (run scripts/pretrain_standin.py)"
                                  if s.pretrained and not weights.is_file() else None)
        if why:
            print(f"# skipping {name}: {why}", flush=True)
            continue
        chosen.append(s)
    return chosen


if __name__ == "__main__":
    main()
