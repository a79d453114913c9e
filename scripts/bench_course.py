"""camkit's course loop vs the course's own, one run: the CIFAR tutorial net at batch 4, the
deeper variant-2 net at batch 128, and the whole variant grid's wall time.

    python scripts/bench_course.py [--dataset fashion-mnist|digits] [--limit 12000] [--grid-limit 2000]

"course loop" = the tutorial as written: a torchvision Dataset of PIL images with ToTensor +
Normalize per sample, DataLoader(batch_size=4, shuffle=True, num_workers=2), the optimizer over
the model's tensors, torch's default thread count. Also shown without the worker processes.
"camkit loop" = the dataset as one uint8 tensor normalised per chunk, batches by indexing, one
flat optimizer call per step, one intra-op thread for tiny CPU batches. Both see the same
batches in the same order: the loaders give equal losses to the bit under the same step, while
camkit's step rounds differently in the last bit (the point where the two trajectories part by
more than 1e-5 is printed). The model step alone on one fixed batch is the ceiling of any loop on
this machine. Each loop runs `--repeat` times, interleaved, and the fastest counts: this machine's
noise is +-15 % from one epoch to the next.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch

warnings.filterwarnings("ignore")

COURSE, NO_WORKERS, CAMKIT_LOADER, CAMKIT = ("course loop (tutorial: 2 DataLoader workers)",
                                             "course loop without workers", "camkit loader, course step",
                                             "camkit loop")
LOOPS = {  # name: (loader, camkit step, torchvision workers)
    COURSE: ("torchvision", False, 2),
    NO_WORKERS: ("torchvision", False, 0),
    CAMKIT_LOADER: ("tensor", False, 0),
    CAMKIT: ("tensor", True, 0),
}


def run_loop(name: str, variant: int, data, bs: int):
    from camkit.course import experiments as ex

    loader, fast, workers = LOOPS[name]
    return ex.run_cifar(variant, data=data, epochs=1, bs=bs, loader=loader, fast=fast, workers=workers,
                        quiet=True)


def best_of(repeat: int, names, variant: int, data, bs: int):
    """{name: (fastest steps/s, its result)} over `repeat` interleaved runs of each loop."""
    best = {}
    for _ in range(repeat):
        for name in names:
            r = run_loop(name, variant, data, bs)
            speed = len(r.step_losses) / r.train_seconds
            if name not in best or speed > best[name][0]:
                best[name] = (speed, r)
    return best


def step_only_ms(fast: bool, n: int = 2000) -> float:
    """The tutorial net's forward + backward + SGD step on one fixed batch of 4, no data at all."""
    import torch.nn.functional as F

    from camkit.course.loop import make_stepper, small_batch_threads
    from camkit.course.nets import CifarNet

    torch.manual_seed(0)
    model = CifarNet()
    opt = make_stepper(model, lambda ps: torch.optim.SGD(ps, lr=0.001, momentum=0.9), fast)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with small_batch_threads(fast, 4, x.shape[1:], torch.device("cpu")):
        for i in range(n + 200):
            if i == 200:
                start = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return (time.perf_counter() - start) / n * 1e3


def conv_pool_kernels_ms(n: int = 2000) -> float:
    """The tutorial net's convolution and max-pool kernels of one batch-4 training step, called
    directly (no autograd, no Python module code), on one thread: a lower bound for any eager
    step on this CPU, whatever the loop around it."""
    aten = torch.ops.aten
    torch.manual_seed(0)
    x, w1, b1 = torch.randn(4, 3, 32, 32), torch.randn(6, 3, 5, 5), torch.randn(6)
    w2, b2 = torch.randn(16, 6, 5, 5), torch.randn(16)
    conv = ([1, 1], [0, 0], [1, 1], False, [0, 0], 1)
    c1 = aten.convolution(x, w1, b1, *conv)
    p1, i1 = aten.max_pool2d_with_indices(c1, [2, 2], [2, 2])
    c2 = aten.convolution(p1, w2, b2, *conv)
    p2, i2 = aten.max_pool2d_with_indices(c2, [2, 2], [2, 2])
    kernels = [
        lambda: aten.convolution(x, w1, b1, *conv),
        lambda: aten.max_pool2d_with_indices(c1, [2, 2], [2, 2]),
        lambda: aten.convolution(p1, w2, b2, *conv),
        lambda: aten.max_pool2d_with_indices(c2, [2, 2], [2, 2]),
        lambda: aten.max_pool2d_with_indices_backward(p2, c2, [2, 2], [2, 2], [0, 0], [1, 1], False, i2),
        lambda: aten.convolution_backward(c2, p1, w2, [16], *conv, [True, True, True]),
        lambda: aten.max_pool2d_with_indices_backward(p1, c1, [2, 2], [2, 2], [0, 0], [1, 1], False, i1),
        lambda: aten.convolution_backward(c1, x, w1, [6], *conv, [False, True, True]),
    ]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for k in kernels:
            k()
        start = time.perf_counter()
        for _ in range(n):
            for k in kernels:
                k()
        return (time.perf_counter() - start) / n * 1e3
    finally:
        torch.set_num_threads(before)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=None, help="default: fashion-mnist when installed, else digits")
    p.add_argument("--limit", type=int, default=12000, help="training images for the batch-4 epoch")
    p.add_argument("--grid-limit", type=int, default=2000, help="training images per variant in the grid")
    p.add_argument("--repeat", type=int, default=2, help="runs of each loop; the fastest counts")
    a = p.parse_args()
    from camkit.course import experiments as ex
    from camkit.data.folders import find_fashion_mnist

    dataset = a.dataset or ("fashion-mnist" if find_fashion_mnist() else "digits")
    data = ex.load_course_data(dataset, cifar_shape=True, limit=a.limit, test_limit=1000)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"CPU, {torch.get_num_threads()} threads default"
    print(f"data: {data.description}, {len(data.train_y)} training images; {device}, {platform.machine()}")
    print(f"{'tutorial net, batch 4, 1 epoch':<46} {'steps/s':>8} {'acc %':>6}")
    best = best_of(a.repeat, LOOPS, 0, data, 4)
    speed = {name: v for name, (v, _) in best.items()}
    runs = {name: r for name, (_, r) in best.items()}
    for name in LOOPS:
        print(f"{name:<46} {speed[name]:>8.1f} {runs[name].accuracy:>6.1f}")
    if not torch.cuda.is_available():
        for fast in (False, True):
            ms = step_only_ms(fast)
            print(f"{'model step alone, ' + ('camkit' if fast else 'course') + ' step':<46} {1e3 / ms:>8.1f}"
                  f"        ({ms:.3f} ms per step)")
        ms = conv_pool_kernels_ms()
        print(f"{'conv + pool kernels alone, 1 thread':<46} {1e3 / ms:>8.1f}        ({ms:.3f} ms per step: "
              f"no loop can pass this)")
    course, no_workers, ours = speed[COURSE], speed[NO_WORKERS], speed[CAMKIT]
    print(f"ratio camkit / course: {ours / course:.2f}x (goal >= 5); against the course loop without workers "
          f"{ours / no_workers:.2f}x")
    loaders = max(abs(x - y) for x, y in zip(runs[COURSE].step_losses, runs[CAMKIT_LOADER].step_losses))
    apart = [abs(x - y) > 1e-5 for x, y in zip(runs[COURSE].step_losses, runs[CAMKIT].step_losses)]
    steps = (f"within 1e-5 for the first {apart.index(True)} steps, then apart by float rounding" if any(apart)
             else f"within 1e-5 over all {len(apart)} steps")
    print(f"losses, course loader vs camkit loader under the course step: max difference {loaders:.1e} over "
          f"{len(apart)} steps; course step vs camkit step: {steps}")

    deep = ex.load_course_data(dataset, cifar_shape=True, limit=min(a.limit, 6000), test_limit=1000)
    deep_best = best_of(a.repeat, (COURSE, CAMKIT), 2, deep, 128)
    c2, o2 = deep_best[COURSE][0] * 128, deep_best[CAMKIT][0] * 128
    print(f"variant 2 net, batch 128: course {c2:.0f} img/s, camkit {o2:.0f} img/s, ratio {o2 / c2:.2f}x")

    grid = ex.load_course_data(dataset, cifar_shape=True, limit=a.grid_limit, test_limit=500)
    for name in (COURSE, CAMKIT):
        start = time.perf_counter()
        for v in range(10):
            run_loop(name, v, grid, 4)
        print(f"variant grid (baseline + 9, 1 epoch of {a.grid_limit} images, batch 4), {name}: "
              f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
