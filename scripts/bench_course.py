"""camkit's course loop vs the course's own, one run: the CIFAR tutorial net at batch 4, the
deeper variant-2 net at batch 128, and the whole variant grid's wall time.

    python scripts/bench_course.py [--dataset fashion-mnist|digits] [--limit 12000] [--grid-limit 2000]

"course loop" = torchvision Dataset of PIL images + ToTensor/Normalize per sample + DataLoader,
torch's default thread count (what the course's notebook runs). "camkit loop" = the dataset as
one uint8 tensor, normalised per chunk, batches by indexing, one intra-op thread for tiny CPU
batches. Both see the same batches in the same order (the loss trajectories are equal; checked
here too). Also shown: the course loop forced to one thread, to separate the two effects.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def steps_per_second(variant: int, data, bs: int, loader: str, threads: int | None = None):
    """The course's loop is the torchvision loader with torch's own thread count; camkit's is
    the tensor loader with its small-batch thread policy."""
    from camkit.course import experiments as ex

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        r = ex.run_cifar(variant, data=data, epochs=1, bs=bs, loader=loader, log=lambda s: None,
                         tune_threads=loader == "tensor")
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return len(r.step_losses) / r.train_seconds, r, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=None, help="default: fashion-mnist when installed, else digits")
    p.add_argument("--limit", type=int, default=12000, help="training images for the batch-4 epoch")
    p.add_argument("--grid-limit", type=int, default=2000, help="training images per variant in the grid")
    a = p.parse_args()
    from camkit.course import experiments as ex
    from camkit.data import find_fashion_mnist

    dataset = a.dataset or ("fashion-mnist" if find_fashion_mnist() else "digits")
    data = ex.load_course_data(dataset, cifar_shape=True, limit=a.limit, test_limit=1000)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"CPU, {torch.get_num_threads()} threads default"
    print(f"data: {data.description}, {len(data.train_y)} training images; {device}, {platform.machine()}")
    print(f"{'tutorial net, batch 4, 1 epoch':<40} {'steps/s':>8} {'acc %':>6}")
    course, rc, _ = steps_per_second(0, data, 4, "torchvision")
    course1, _, _ = steps_per_second(0, data, 4, "torchvision", threads=1)
    ours, ro, _ = steps_per_second(0, data, 4, "tensor")
    for name, v, r in (("course loop", course, rc), ("course loop, 1 thread", course1, None), ("camkit loop", ours, ro)):
        print(f"{name:<40} {v:>8.1f} {r.accuracy if r else float('nan'):>6.1f}")
    same = max(abs(x - y) for x, y in zip(rc.step_losses[:300], ro.step_losses[:300]))
    print(f"ratio camkit / course: {ours / course:.2f}x (goal >= 5); max loss difference over the first "
          f"300 steps {same:.1e} (later steps drift apart by float rounding, as any two runs would)")

    deep = ex.load_course_data(dataset, cifar_shape=True, limit=min(a.limit, 6000), test_limit=1000)
    c2, _, _ = steps_per_second(2, deep, 128, "torchvision")
    o2, _, _ = steps_per_second(2, deep, 128, "tensor")
    print(f"variant 2 net, batch 128: course {c2 * 128:.0f} img/s, camkit {o2 * 128:.0f} img/s, ratio {o2 / c2:.2f}x")

    grid = ex.load_course_data(dataset, cifar_shape=True, limit=a.grid_limit, test_limit=500)
    for loader in ("torchvision", "tensor"):
        start = time.perf_counter()
        for v in range(10):
            ex.run_cifar(v, data=grid, epochs=1, bs=4, loader=loader, log=lambda s: None,
                         tune_threads=loader == "tensor")
        print(f"variant grid (baseline + 9, 1 epoch of {a.grid_limit} images, batch 4), {loader} loader: "
              f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
