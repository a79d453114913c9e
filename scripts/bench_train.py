"""camkit train vs the vanilla fastai recipe, same folder, epochs, size and batch, one run.

    python scripts/bench_train.py [--n 200] [--size 96] [--epochs 4] [--bs 32] [--arch resnet34]

Vanilla: ImageDataLoaders.from_folder(item_tfms=Resize, batch_tfms=aug_transforms) +
vision_learner(arch, pretrained=False) + fine_tune(epochs - 1) (fine_tune adds a frozen epoch,
so both run `epochs` epochs). camkit: camkit.train.train(...) with the same arguments.
Throughput = images seen (train + valid, every epoch) / seconds of fitting (fit + validation,
as fastai's own loop times it); camkit's wall time including decoding the folder once and
writing the run folder is shown too. Error on the same seeded 20% split. Prints a table and
the ratio camkit / vanilla.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")


def vanilla(folder: Path, arch: str, size: int, bs: int, epochs: int, seed: int) -> tuple[float, float, float]:
    from fastai.vision.all import (ImageDataLoaders, Resize, aug_transforms, error_rate, models,
                                   vision_learner)

    dls = ImageDataLoaders.from_folder(folder, valid_pct=0.2, seed=seed, item_tfms=Resize(size),
                                       batch_tfms=aug_transforms(), bs=bs, num_workers=0)
    learn = vision_learner(dls, getattr(models, arch), pretrained=False, metrics=error_rate)
    with learn.no_bar(), learn.no_logging():
        start = time.perf_counter()
        learn.fine_tune(epochs - 1, freeze_epochs=1)
        seconds = time.perf_counter() - start
    n = len(dls.train_ds) + len(dls.valid_ds)
    return n * epochs / seconds, n * epochs / seconds, float(learn.recorder.values[-1][2])


def camkit(folder: Path, arch: str, size: int, bs: int, epochs: int, seed: int) -> tuple[float, float, float]:
    from camkit.train import train

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        r = train(folder, arch=arch, epochs=epochs, size=size, bs=bs, seed=seed, out=Path(out) / "run",
                  pretrained=False, quiet=True)
        wall = time.perf_counter() - start  # includes decoding the folder and saving the run
    return r.images_per_sec, (r.n_train + r.n_valid) * epochs / wall, 1 - r.valid_accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="images per class")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--arch", default="resnet34")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from camkit.data import make_canvas_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_canvas_folder(folder, ["trouser", "bag"], a.n, canvas=a.size,
                           item_range=(a.size * 5 // 16, a.size * 15 // 32), seed=a.seed)
        (folder / "boxes.json").unlink()
        rows = {}
        for name, fn in (("fastai vanilla", vanilla), ("camkit", camkit)):
            torch.manual_seed(a.seed)
            rows[name] = fn(folder, a.arch, a.size, a.bs, a.epochs, a.seed)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{torch.get_num_threads()} threads"
    print(f"{a.arch}, {2 * a.n} images of {a.size}px, {a.epochs} epochs, bs {a.bs}, {device}, {platform.machine()}")
    print(f"{'pipeline':<16} {'images/s':>9} {'incl. setup':>12} {'valid error':>12}")
    for name, (ips, wall_ips, err) in rows.items():
        print(f"{name:<16} {ips:>9.1f} {wall_ips:>12.1f} {err:>12.3f}")
    print(f"ratio camkit / vanilla: {rows['camkit'][0] / rows['fastai vanilla'][0]:.2f}x")


if __name__ == "__main__":
    main()
