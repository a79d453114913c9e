"""camkit clean's ranking vs a random ranking on a folder with injected label noise, one run.

    python scripts/bench_clean.py [--per-class 150] [--noise 0.10] [--epochs 5] [--size 64] [--top 0.15] [--bs 16]

Builds Fashion-MNIST canvases (4 classes), then injects label noise so that `--noise` of the
final folder is noise: half swapped (an image moved into another class's folder), half
off-topic (canvases of a fifth class, and canvases with no item at all, dropped into the class
folders). Trains camkit on the noisy folder (resnet18 from scratch, output stride 8, flip
augmentation), ranks every image with `camkit.clean.rank(split="all")` and prints the share of
injected images in the top `--top` of the ranking (the issue's goal: >= 90 % in the top 15 %)
against a random ranking (expected recall = `--top`). fastai's `top_losses` covers only the
validation set, so it is not a like-for-like anchor here; the random ranking is.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

CLASSES = ["trouser", "pullover", "sneaker", "bag"]
OFF_TOPIC_CLASS = "dress"


def blank_canvases(out: Path, n: int, side: int, seed: int) -> list[Path]:
    """Grey noise canvases without any item (the crawl's 'nothing there' off-topic case)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        grey = rng.normal(90.0, 24.0, size=(side, side, 1)) * rng.uniform(0.85, 1.15, size=3)
        files.append(out / f"blank{i:04d}.png")
        Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).save(files[-1])
    return files


def inject(root: Path, scratch: Path, n_swap: int, n_off: int, side: int, seed: int) -> set[str]:
    """Move `n_swap` images into another class's folder and drop `n_off` off-topic canvases
    into the class folders. Returns the injected files (relative to `root`)."""
    from camkit.data.folders import make_canvas_folder

    rng = np.random.default_rng(seed)
    injected: set[str] = set()
    files = sorted(root.glob("*/*.png"))
    for n, k in enumerate(rng.choice(len(files), n_swap, replace=False)):
        src = files[k]
        dst = rng.choice([c for c in CLASSES if c != src.parent.name])
        src.rename(root / dst / f"n{n:04d}.png")
        injected.add(f"{dst}/n{n:04d}.png")
    make_canvas_folder(scratch, [OFF_TOPIC_CLASS], n_off - n_off // 2, canvas=side, item_range=(side * 3 // 8, side // 2 + 8),
                       seed=seed + 1)
    off = sorted((scratch / OFF_TOPIC_CLASS).glob("*.png")) + blank_canvases(scratch / "blank", n_off // 2, side, seed)
    for n, src in enumerate(off):
        dst = CLASSES[n % len(CLASSES)]
        src.rename(root / dst / f"o{n:04d}.png")
        injected.add(f"{dst}/o{n:04d}.png")
    return injected


def recall(order: list[str], injected: set[str], top: float) -> float:
    """Share of the injected images among the first `top` of `order`."""
    head = set(order[: int(round(len(order) * top))])
    return len(head & injected) / len(injected)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=150)
    p.add_argument("--noise", type=float, default=0.10)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--top", type=float, default=0.15)
    p.add_argument("--bs", type=int, default=16, help="batch size (16: 4x the optimizer steps of the default 64)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    import torch

    from camkit.clean import rank
    from camkit.data.folders import make_canvas_folder
    from camkit.train.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        root, scratch = Path(tmp) / "noisy", Path(tmp) / "scratch"
        item = (a.size * 3 // 8, a.size // 2 + 8)
        make_canvas_folder(root, CLASSES, a.per_class, canvas=a.size, item_range=item, seed=a.seed)
        clean_n = a.per_class * len(CLASSES)
        k = int(round(a.noise * clean_n / (2 - a.noise)))  # 2k / (clean_n + k) = noise
        injected = inject(root, scratch, k, k, a.size, a.seed)
        t0 = time.perf_counter()
        result = train(root, arch="resnet18", epochs=a.epochs, size=a.size, stride=8, pretrained=False,
                       aug="flip", seed=a.seed, bs=a.bs, out=Path(tmp) / "run", quiet=True)
        t1 = time.perf_counter()
        suspects = rank(Path(tmp) / "run", split="all")
        t2 = time.perf_counter()
        order = [s.rel for s in suspects]
        rng = np.random.default_rng(a.seed)
        random_mean = float(np.mean([recall(list(rng.permutation(order)), injected, a.top) for _ in range(200)]))
        ours = recall(order, injected, a.top)
        swapped = {r for r in injected if Path(r).name.startswith("n")}
        print(f"# bench_clean  {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
              f"torch {torch.__version__}")
        print(f"folder: {len(order)} images, {len(injected)} injected ({len(injected) / len(order):.1%}: "
              f"{len(swapped)} swapped, {len(injected) - len(swapped)} off-topic); "
              f"valid accuracy on the noisy labels {result.valid_accuracy:.1%}")
        print(f"train {t1 - t0:.0f} s, rank {t2 - t1:.1f} s ({len(order) / (t2 - t1):.0f} images/s)")
        print(f"{'ranking':<24} {'recall@top' + format(a.top, '.0%'):>14}")
        print(f"{'camkit clean (loss)':<24} {ours:>14.1%}")
        print(f"{'  swapped only':<24} {recall(order, swapped, a.top):>14.1%}")
        print(f"{'  off-topic only':<24} {recall(order, injected - swapped, a.top):>14.1%}")
        print(f"{'random (mean of 200)':<24} {random_mean:>14.1%}   (expected {a.top:.0%})")
        print(f"ratio camkit / random: {ours / a.top:.1f}x; goal recall >= 90 %: {'met' if ours >= 0.9 else 'NOT met'}")


if __name__ == "__main__":
    main()
