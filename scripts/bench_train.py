"""camkit train vs the vanilla fastai recipe, same folder, epochs, size, batch and augmentation.

    python scripts/bench_train.py [--n 200] [--size 96] [--epochs 4] [--bs 32] [--arch resnet34] [--repeat 3]

Vanilla: ImageDataLoaders.from_folder(item_tfms=Resize, batch_tfms=aug_transforms) +
vision_learner(arch, pretrained=False) + fine_tune(epochs - 1) (fine_tune adds a frozen epoch,
so both run `epochs` epochs). camkit: camkit.train.loop.train(...) with the same arguments and
fastai's aug_transforms on, once with its fast loader (decoded once, `--loader tensor`) and
once with fastai's (`--loader fastai`). Throughput = images seen (train + valid, every epoch) /
seconds of fitting (fit + validation, as fastai's own loop times it); camkit's wall time
including decoding the folder once and writing the run folder is shown too. The three
pipelines run --repeat times, interleaved (so that a noisy machine slows all of them alike),
and the best of each counts. Prints a table and the ratios camkit / vanilla (goal >= 1.5x for
the fast loader with aug_transforms on).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

warnings.filterwarnings("ignore")


def vanilla(folder: Path, a) -> tuple[float, float, float]:
    from fastai.vision.all import (ImageDataLoaders, Resize, aug_transforms, error_rate, models,
                                   vision_learner)

    torch.manual_seed(a.seed)
    dls = ImageDataLoaders.from_folder(folder, valid_pct=0.2, seed=a.seed, item_tfms=Resize(a.size),
                                       batch_tfms=aug_transforms(), bs=a.bs, num_workers=0)
    learn = vision_learner(dls, getattr(models, a.arch), pretrained=False, metrics=error_rate)
    with learn.no_bar(), learn.no_logging():
        start = time.perf_counter()
        learn.fine_tune(a.epochs - 1, freeze_epochs=1)
        seconds = time.perf_counter() - start
    n = len(dls.train_ds) + len(dls.valid_ds)
    return n * a.epochs / seconds, n * a.epochs / seconds, float(learn.recorder.values[-1][2])


def camkit(loader: str) -> Callable:
    def run(folder: Path, a) -> tuple[float, float, float]:
        from camkit.train.loop import train

        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            r = train(folder, arch=a.arch, epochs=a.epochs, size=a.size, bs=a.bs, seed=a.seed, out=Path(out) / "run",
                      pretrained=False, quiet=True, loader=loader, aug="fastai")
            wall = time.perf_counter() - start  # includes decoding the folder and saving the run
        return r.images_per_sec, (r.n_train + r.n_valid) * a.epochs / wall, 1 - r.valid_accuracy
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="images per class")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--arch", default="resnet34")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="interleaved runs per pipeline; the best counts")
    a = p.parse_args()
    from camkit.data.folders import make_canvas_folder

    pipelines = {"fastai vanilla": vanilla, "camkit (tensor loader)": camkit("tensor"),
                 "camkit (fastai loader)": camkit("fastai")}
    best: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_canvas_folder(folder, ["trouser", "bag"], a.n, canvas=a.size,
                           item_range=(a.size * 5 // 16, a.size * 15 // 32), seed=a.seed)
        (folder / "boxes.json").unlink()
        for _ in range(a.repeat):
            for name, fn in pipelines.items():
                row = fn(folder, a)
                if name not in best or row[0] > best[name][0]:
                    best[name] = row
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{torch.get_num_threads()} threads"
    print(f"{a.arch}, {2 * a.n} images of {a.size}px, {a.epochs} epochs, bs {a.bs}, aug_transforms on, "
          f"best of {a.repeat} interleaved, {device}, {platform.machine()}")
    print(f"{'pipeline':<24} {'images/s':>9} {'incl. setup':>12} {'valid error':>12}")
    for name, (ips, wall_ips, err) in best.items():
        print(f"{name:<24} {ips:>9.1f} {wall_ips:>12.1f} {err:>12.3f}")
    for name in list(best)[1:]:
        print(f"ratio {name} / vanilla: {best[name][0] / best['fastai vanilla'][0]:.2f}x"
              + (" (goal >= 1.5x)" if "tensor" in name else ""))


if __name__ == "__main__":
    main()
