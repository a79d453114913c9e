"""A STAND-IN for ImageNet weights, which cannot be downloaded on this machine: a torchvision
resnet18 (or resnet34) pretrained on openclipart-png clip art, to measure camkit's defaults
under transfer learning (issue 29, scripts/bench_transfer.py). It is not ImageNet: ~3,200
clip-art images of ~50 classes at 112 px, 14 epochs on a CPU. Results measured with it say
how the settings compare with *a* pretrained body, not what ImageNet weights would give.

    python scripts/pretrain_standin.py [--arch resnet18] [--size 112] [--epochs 14] [--threads N] [--out FILE]
    camkit train DATA --arch resnet18 --weights ~/.cache/camkit/standin-resnet18.pth

Classes: every folder of the allowed openclipart categories with its own PNGs (tests/realdata.py
`pretraining_classes`: at most 200 images a class, at least 20), except the folders of the
two-class evaluation sets (`realdata.SETS`), and anywhere any image with the content or file name
of one of theirs, so no image the benchmark evaluates on was seen here. Images are decoded once
(alpha composited on white, squished to SIZE x SIZE as camkit does) into one uint8 tensor, cached
beside the output. Training: SGD with Nesterov momentum, one-cycle learning rate, label
smoothing 0.1, random resized crops (scale 0.35-1) and horizontal flips, bf16 autocast where
the CPU has it, ImageNet's normalisation (what camkit and fastai apply to pretrained bodies);
10 % of each class is held out and scored after the last epoch.

Output: a plain state_dict with torchvision's key names (`fc` sized for these classes; camkit's
--weights and fastai's body load everything but `fc`), written atomically, and FILE.json beside
it: classes and image counts, held-out accuracy, epochs, size, wall time and the command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

DEFAULT_OUT = Path.home() / ".cache" / "camkit" / "standin-resnet18.pth"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def decode(args: tuple[str, int]) -> np.ndarray | None:
    """One PNG -> size x size x 3 uint8 (camkit's own RGB conversion: alpha on white), or None
    when camkit would refuse it (pixel count) or it cannot be read."""
    from PIL import Image

    from camkit.core.images import MAX_PIXELS, resize_square, to_rgb

    path, size = args
    Image.MAX_IMAGE_PIXELS = None  # the count is checked here, against camkit's own limit
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                return None
            img.draft("RGB", (size * 2, size * 2))
            return resize_square(to_rgb(img), size)
    except (OSError, ValueError, SyntaxError):
        return None


def load_images(size: int, cache: Path, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(N, 3, S, S) uint8, labels, class names; decoded once, then read from `cache`."""
    from realdata import pretraining_classes

    classes = pretraining_classes(seed=seed)
    key = {"size": size, "seed": seed, "files": {c: [f.name for f in fs] for c, fs in classes.items()}}
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if json.loads(bytes(saved["key"].tolist()).decode()) == key:
            return saved["images"], saved["labels"], list(classes)
    items = [(str(f), size) for fs in classes.values() for f in fs]
    labels = [i for i, fs in enumerate(classes.values()) for _ in fs]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        decoded = list(pool.map(decode, items, chunksize=16))
    kept = [k for k, a in enumerate(decoded) if a is not None]
    images = torch.from_numpy(np.stack([decoded[k] for k in kept])).permute(0, 3, 1, 2).contiguous()
    labels_t = torch.tensor([labels[k] for k in kept])
    print(f"decoded {len(kept)} of {len(items)} images in {time.perf_counter() - start:.0f} s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save({"images": images, "labels": labels_t,
                "key": torch.tensor(list(json.dumps(key).encode()), dtype=torch.uint8)}, tmp)
    tmp.replace(cache)
    return images, labels_t, list(classes)


def split(labels: torch.Tensor, valid_pct: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified: `valid_pct` of each class held out (at least one)."""
    g = torch.Generator().manual_seed(seed)
    train, valid = [], []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = max(1, round(len(idx) * valid_pct))
        valid.append(idx[:n])
        train.append(idx[n:])
    return torch.cat(train), torch.cat(valid)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random resized crop (area 35-100 %, aspect 3/4-4/3) back to the input size, and a
    horizontal flip for half: uint8 in, float 0-1 out."""
    n, _, h, w = x.shape
    out = torch.empty(n, 3, h, w)
    for k in range(n):
        area = h * w * float(torch.empty(1).uniform_(0.35, 1.0, generator=g))
        ratio = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)))
        ch, cw = min(h, round(math.sqrt(area / ratio))), min(w, round(math.sqrt(area * ratio)))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
        crop = x[k:k + 1, :, top:top + ch, left:left + cw].float() / 255
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        out[k] = crop[0].flip(-1) if bool(torch.rand(1, generator=g) < 0.5) else crop[0]
    return out


def normalize(x01: torch.Tensor) -> torch.Tensor:
    return ((x01 - MEAN) / STD).contiguous(memory_format=torch.channels_last)


def idle_cores() -> int:
    """Cores the 1-minute load average leaves idle, at least 1. Oversubscribing busy cores costs
    far more than it gains: on this 2-core machine with other trainings running, a 32-image
    resnet18 step at 128 px took 15-21 s with 2 threads and 2.5 s with 1."""
    cores = os.cpu_count() or 1
    return max(1, min(cores, cores - round(os.getloadavg()[0])))


def bf16_ok() -> bool:
    """bf16 autocast where the CPU computes it natively (5x fp32 on this AVX512-BF16 CPU)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, amp: bool) -> float:
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        for i in range(0, len(images), 128):
            x = normalize(images[i:i + 128].float() / 255)
            correct += int((model(x).argmax(1) == labels[i:i + 128]).sum())
    return correct / max(1, len(images))


def train(model, images, labels, train_idx, valid_idx, a) -> tuple[list[dict], float]:
    g = torch.Generator().manual_seed(a.seed)
    steps = a.epochs * (len(train_idx) // a.bs)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0}],
                          lr=a.lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=0.2)
    amp = bf16_ok() and not a.fp32
    history, start = [], time.perf_counter()
    for epoch in range(a.epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        losses = []
        for i in range(0, len(order) - a.bs + 1, a.bs):
            idx = order[i:i + a.bs]
            x = normalize(augment(images[idx], g))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        row = {"epoch": epoch, "train_loss": round(sum(losses) / len(losses), 4),
               "seconds": round(time.perf_counter() - start)}
        if epoch == a.epochs - 1 or (a.eval_every and (epoch + 1) % a.eval_every == 0):
            row["valid_accuracy"] = round(evaluate(model, images[valid_idx], labels[valid_idx], amp), 4)
        history.append(row)
        print(json.dumps(row), flush=True)
    return history, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34"])
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--valid-pct", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=4, help="also score the held-out images every N epochs")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores the 1-minute "
                   "load average leaves idle, at least 1)")
    p.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT} (with the arch's name)")
    a = p.parse_args()
    import torchvision
    from realdata import OPENCLIPART, SETS, available

    if not available():
        sys.exit(f"openclipart-png is not installed under {OPENCLIPART} (apt-get install openclipart-png)")
    out = (a.out or DEFAULT_OUT.with_name(f"standin-{a.arch}.pth")).expanduser()
    torch.set_num_threads(a.threads or idle_cores())
    wall = time.perf_counter()
    images, labels, classes = load_images(a.size, out.with_name(f"standin-data-{a.size}-seed{a.seed}.pt"), a.seed)
    train_idx, valid_idx = split(labels, a.valid_pct, a.seed)
    print(f"{len(classes)} classes, {len(images)} images ({len(train_idx)} train, {len(valid_idx)} held out), "
          f"{a.arch} at {a.size} px, {a.epochs} epochs", flush=True)
    torch.manual_seed(a.seed)
    model = getattr(torchvision.models, a.arch)(num_classes=len(classes)).to(memory_format=torch.channels_last)
    history, seconds = train(model, images, labels, train_idx, valid_idx, a)
    state = {k: v.detach().float().contiguous() if v.is_floating_point() else v.detach()
             for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(out)
    counts = {c: int((labels == i).sum()) for i, c in enumerate(classes)}
    meta = {"what": "a STAND-IN for ImageNet weights: torchvision " + a.arch + " pretrained on openclipart-png "
                    "clip art (scripts/pretrain_standin.py); not ImageNet",
            "arch": a.arch, "size": a.size, "epochs": a.epochs, "bs": a.bs, "lr": a.lr, "weight_decay": a.wd,
            "seed": a.seed, "bf16": bf16_ok() and not a.fp32, "classes": counts, "n_classes": len(classes),
            "n_images": len(images), "n_train": len(train_idx), "n_valid": len(valid_idx),
            "valid_accuracy": history[-1]["valid_accuracy"], "train_seconds": round(seconds),
            "wall_seconds": round(time.perf_counter() - wall), "history": history,
            "excluded_sets": {n: [c.folder for c in pair] for n, pair in SETS.items()},
            "normalisation": "ImageNet mean/std", "torch": torch.__version__, "torchvision": torchvision.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M"), "cpu_threads": torch.get_num_threads(),
            "command": " ".join(["python", *sys.argv])}
    tmp = out.with_name(out.name + ".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(out.with_name(out.name + ".json"))
    print(f"held-out accuracy {meta['valid_accuracy']:.3f} over {len(valid_idx)} images; train {seconds:.0f} s, "
          f"wall {meta['wall_seconds']} s; saved {out} and {out.name}.json", flush=True)


if __name__ == "__main__":
    main()
