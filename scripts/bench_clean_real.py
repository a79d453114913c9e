"""camkit clean on real crawled-like noise: in-sample loss vs K-fold out-of-sample scores vs
cleanlab's default ranking fed the same out-of-sample probabilities.

    python scripts/bench_clean_real.py [--sets vehicles-sports,clothing-music,tools-office] [--seeds 0,1]
        [--folds 4] [--fold-epochs N] [--size 112] [--weights ~/.cache/camkit/standin-resnet18.pth]
        [--rows rows.json]

Each set is two openclipart classes (tests/realdata.py's allow-listed SETS, converted to RGB at
most --size px). Noise is injected per seed as a crawl makes it: 10 % of each class's images
moved into the other class's folder (the other class's picture under the wrong label), then
off-topic images (5 % of the set) from categories no set uses (shapes, signs and symbols,
computer, science, buildings, plants) dropped into the two folders. A run is trained on the
noisy folder with camkit's defaults and the stand-in pretrained body (scripts/pretrain_standin.py);
then three rankings of every image:

  in-sample      camkit.clean.rank(run): the loss under the run's own model (before issue 30)
  cleanlab       cleanlab.rank.get_label_quality_scores (self-confidence), K-fold probabilities
  camkit-folds   camkit.clean.rank(run, folds=K): cleanlab's label quality and the fold
                 models' OOD score (camkit.clean.suspicion)

and prints recall of the injected images in the top 15 %, AUROC (injected vs clean), the
estimated count to review against the true count (camkit-folds; cleanlab: find_label_issues
alone), and minutes. --rows keeps every image's scores (for analysis on the development set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
warnings.filterwarnings("ignore")

OFF_TOPIC = ("shapes", "signs_and_symbols", "computer", "science", "buildings", "plants")
DEFAULT_WEIGHTS = Path.home() / ".cache" / "camkit" / "standin-resnet18.pth"
TOP = 0.15


def off_topic_pool(exclude: set[str], seed: int) -> list[Path]:
    """PNGs of the unrelated categories, shuffled by `seed`, without any content of the sets."""
    from realdata import ClipClass, digest

    files = [f for c in OFF_TOPIC for f in ClipClass(c, c).all_files()]
    random.Random(f"off-{seed}").shuffle(files)
    return [f for f in files[:400] if digest(f) not in exclude]


def convert(src: Path, dst: Path, size: int) -> bool:
    """src through camkit's guarded decode (alpha on white), at most `size` px a side; False when
    camkit refuses it (the sets hold one 623-megapixel PNG)."""
    from PIL import Image

    from camkit.errors import CamkitError
    from camkit.core.images import open_rgb

    try:
        rgb = open_rgb(src)
    except CamkitError:
        return False
    rgb.thumbnail((size, size), Image.LANCZOS)
    rgb.save(dst)
    return True


def clean_set(name: str, out: Path, size: int) -> Path:
    """Set `name` converted into `out/<class>/`, exact twins dropped (realdata.distinct)."""
    from realdata import distinct, set_files

    for cls, paths in distinct(set_files(name)).items():
        (out / cls).mkdir(parents=True)
        kept = 0
        for path in paths:
            kept += convert(path, out / cls / f"{kept:04d}.png", size)
    return out


def noisy_set(name: str, root: Path, seed: int, size: int, flip: float = 0.10, off: float = 0.05) -> set[str]:
    """The set copied into `root`, then `flip` of each class moved to the other class's folder
    and `off` x the set's size of off-topic images dropped in. Returns the injected files."""
    from realdata import SETS, digest

    clean_set(name, root, size)
    rng = random.Random(f"{name}-noise-{seed}")
    classes = [c.name for c in SETS[name]]
    files = {c: sorted((root / c).glob("*.png")) for c in classes}
    injected = set()
    for c, other in (classes, classes[::-1]):
        for f in rng.sample(files[c], round(flip * len(files[c]))):
            dst = root / other / f"flip-{f.name}"
            f.rename(dst)
            injected.add(dst.relative_to(root).as_posix())
    n_off = round(off * sum(len(v) for v in files.values()))
    exclude = {digest(f) for c in SETS[name] for f in c.all_files()}
    placed = 0
    for src in off_topic_pool(exclude, seed):
        if placed == n_off:
            break
        dst = root / classes[placed % 2] / f"off-{placed:03d}.png"
        if convert(src, dst, size):
            injected.add(dst.relative_to(root).as_posix())
            placed += 1
    return injected


def recall_at(order: list[str], injected: set[str], top: float = TOP) -> float:
    return len(set(order[: round(len(order) * top)]) & injected) / len(injected)


def auroc(scores: dict[str, float], injected: set[str]) -> float:
    from sklearn.metrics import roc_auc_score

    keys = sorted(scores)
    return float(roc_auc_score([k in injected for k in keys], [scores[k] for k in keys]))


def row(method: str, set_name: str, seed: int, scores: dict[str, float], injected: set[str], estimate: int | None,
        minutes: float) -> dict:
    order = sorted(scores, key=lambda k: -scores[k])
    flips = {k for k in injected if Path(k).name.startswith("flip-")}
    return {"method": method, "set": set_name, "seed": seed, "n": len(order), "noise": len(injected),
            "recall": recall_at(order, injected), "recall_flip": recall_at(order, flips),
            "recall_off": recall_at(order, injected - flips), "auroc": auroc(scores, injected),
            "cap": min(1.0, round(len(order) * TOP) / len(injected)), "estimate": estimate, "minutes": minutes}


def run_set(set_name: str, seed: int, a, tmp: Path) -> tuple[list[dict], list[dict]]:
    from camkit.clean import rank
    from camkit.train.loop import train

    root = tmp / f"{set_name}-s{seed}" / "data"
    injected = noisy_set(set_name, root, seed, a.size)
    run = root.parent / "run"
    t0 = time.perf_counter()
    train(root, arch="resnet18", weights=a.weights, size=a.size, seed=seed, out=run, quiet=True, epochs=a.epochs,
          recipe=a.recipe)
    t1 = time.perf_counter()
    inside = rank(run)
    t2 = time.perf_counter()
    folds = rank(run, folds=a.folds, fold_epochs=a.fold_epochs)
    t3 = time.perf_counter()
    train_min, in_min, fold_min = (t1 - t0) / 60, (t2 - t1) / 60, (t3 - t2) / 60
    lq = {s.rel: s.label_quality for s in folds}
    cl_count = folds.estimate.mislabelled   # cleanlab's find_label_issues alone, same probabilities
    rows = [row("in-sample", set_name, seed, {s.rel: s.score for s in inside}, injected, None, train_min + in_min),
            row("cleanlab", set_name, seed, {k: 1 - v for k, v in lq.items()}, injected, cl_count,
                train_min + fold_min),
            row("camkit-folds", set_name, seed, {s.rel: s.score for s in folds}, injected,
                folds.estimate.to_review, train_min + fold_min)]
    detail = [{"set": set_name, "seed": seed, "rel": s.rel, "injected": s.rel in injected, "in_sample_loss":
               next(x.score for x in inside if x.rel == s.rel), "label_quality": s.label_quality, "ood": s.ood,
               "fold": s.fold, "reason": s.reason, "quality": list(s.quality)} for s in folds]
    return rows, detail


def fmt(r: dict) -> str:
    est = f"{r['estimate']}/{r['noise']}" if r["estimate"] is not None else f"-/{r['noise']}"
    return (f"| {r['method']} | {r['set']} | {r['seed']} | {r['recall']:.1%} ({r['recall_flip']:.0%} / "
            f"{r['recall_off']:.0%}) | {r['auroc']:.3f} | {est} | {r['minutes']:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default="vehicles-sports,clothing-music,tools-office")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--fold-epochs", type=int, default=None, help="epochs per fold (default: the run's)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=None, help="the run's epochs after the frozen one (default: adaptive)")
    p.add_argument("--recipe", default="auto", help="the run's recipe (camkit train --recipe)")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--rows", type=Path, default=None, help="write every image's scores here (JSON)")
    a = p.parse_args()
    a.weights = a.weights.expanduser()
    if not a.weights.is_file():
        sys.exit(f"no stand-in weights at {a.weights} (run scripts/pretrain_standin.py)")
    import torch

    print(f"# bench_clean_real  {platform.machine()}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}, "
          f"folds {a.folds}, epochs {a.epochs or 'adaptive'}, fold epochs {a.fold_epochs or 'the run s'}, "
          f"size {a.size}, recipe {a.recipe}", flush=True)
    print("| method | set | seed | recall@15 % (swapped / off-topic) | AUROC | estimated/true | minutes |")
    print("|---|---|---|---|---|---|---|", flush=True)
    rows, detail = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for set_name in a.sets.split(","):
            for seed in (int(s) for s in a.seeds.split(",")):
                got, more = run_set(set_name, seed, a, Path(tmp))
                rows += got
                detail += more
                for r in got:
                    print(fmt(r), flush=True)
    for method in ("in-sample", "cleanlab", "camkit-folds"):
        mine = [r for r in rows if r["method"] == method]
        print(f"{method}: mean recall@15 % {np.mean([r['recall'] for r in mine]):.1%}, min "
              f"{min(r['recall'] for r in mine):.1%}, mean AUROC {np.mean([r['auroc'] for r in mine]):.3f}")
    print(f"load average at the end: {os.getloadavg()}")
    if a.rows:
        a.rows.write_text(json.dumps({"rows": rows, "images": detail}, indent=1))


if __name__ == "__main__":
    main()
