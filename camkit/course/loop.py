"""The course's training loop, and camkit's faster one with the same numbers.

Two loaders with the same batch order for a given seed:
- `torchvision`: the course's own — a Dataset of PIL images, per-sample ToTensor + Normalize,
  a DataLoader (with the tutorial's worker processes), kept so results can be checked against
  the course;
- `tensor` (default): the dataset decoded once as a uint8 tensor (on the GPU when there is one),
  normalised and augmented per chunk, batches taken by indexing. Same numbers, far less Python.

And two ways to take a step: the course's (the optimizer over every weight tensor, torch's own
thread count) and camkit's fast one (`FlatOptimizer`: one weight buffer stepped in one call;
`small_batch_threads`: one intra-op thread for tiny CPU batches), with the same losses up to
last-bit rounding.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit.data.folders import Normalizer
from camkit.errors import CamkitError

# ---------------------------------------------------------------- loaders


class TensorLoader:
    """Batches straight from a uint8 tensor: index, scale, normalise (and augment) per chunk.

    Shuffling consumes the generator exactly as torch's DataLoader + RandomSampler do (the
    iterator's base-seed draw, `randperm(n)`, and the sampler's trailing empty `randperm`), so
    with the same seed the batch order equals the course's DataLoader."""

    def __init__(self, x: Tensor, y: Tensor, bs: int, shuffle: bool, stats, generator: torch.Generator | None = None,
                 augment: bool = False, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.bs, self.shuffle, self.augment = bs, shuffle, augment
        self.generator = generator or torch.Generator()
        self.normalizer = Normalizer(stats, x.shape[1], self.device)
        self.dataset = x  # len(loader.dataset), as the course prints

    def __len__(self) -> int:
        return (len(self.y) + self.bs - 1) // self.bs

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.y)
        if self.shuffle:
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # DataLoader's _base_seed
            order = torch.randperm(n, generator=self.generator)
            torch.randperm(n, generator=self.generator)  # RandomSampler's trailing draw
        else:
            order = torch.arange(n)
        # normalise whole chunks at once: fewer, larger ops than one normalisation per batch
        chunk = self.bs * 256
        for start in range(0, n, chunk):
            idx = order[start:start + chunk].to(self.device)
            xs = self.normalizer(self.x[idx])
            ys = self.y[idx]
            if self.augment:
                xs = augment_batch(xs, self.generator)
            for i in range(0, len(idx), self.bs):
                yield xs[i:i + self.bs], ys[i:i + self.bs]


def augment_batch(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random crop with zero padding + horizontal flip, per image, vectorised."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
    out = padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out).contiguous()


class PILDataset(torch.utils.data.Dataset):
    """The course's Dataset: one PIL image per item, run through the transform pipeline.
    Module-level so DataLoader workers can pickle it where processes are spawned (macOS)."""

    def __init__(self, x: Tensor, y: Tensor, transform: Callable):
        self.arrays, self.labels, self.transform = x.permute(0, 2, 3, 1).numpy(), y.tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        a = self.arrays[i]
        return self.transform(Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)), self.labels[i]


def torchvision_loader(x: Tensor, y: Tensor, bs: int, shuffle: bool, stats, generator: torch.Generator | None = None,
                       augment: bool = False, workers: int = 0) -> torch.utils.data.DataLoader:
    """The course's pipeline: PIL images, per-sample transforms, torch DataLoader (the CIFAR
    tutorial runs it with `num_workers=2`)."""
    import torchvision.transforms as T

    steps = [T.RandomCrop(x.shape[-1], padding=4), T.RandomHorizontalFlip()] if augment else []
    c = x.shape[1]
    transform = T.Compose(steps + [T.ToTensor(), T.Normalize(stats[0][:c], stats[1][:c])])
    return torch.utils.data.DataLoader(PILDataset(x, y, transform), batch_size=bs, shuffle=shuffle,
                                       generator=generator, num_workers=workers)


def make_loader(kind: str, *args, workers: int = 0, device: str | torch.device = "cpu", **kwargs):
    """`tensor` or `torchvision` loader; `workers` only concerns the torchvision one."""
    if workers < 0:
        raise CamkitError(f"--workers must be 0 or more, not {workers}")
    if kind == "tensor":
        return TensorLoader(*args, device=device, **kwargs)
    if kind == "torchvision":
        return torchvision_loader(*args, workers=workers, **kwargs)
    raise CamkitError(f"--loader must be tensor or torchvision, not '{kind}'")


# ---------------------------------------------------------------- the step


class FlatOptimizer:
    """A torch optimizer stepping all of a model's weights as one flat tensor.

    The model's parameters become views into one buffer and their gradients views into a second,
    so an elementwise optimizer (SGD with momentum or weight decay, Adam...) updates every weight
    in one call instead of one small call per tensor, and zeroing the gradients is one fill.
    The arithmetic per weight is the same; only the last bit can differ where torch's scalar
    tail loop rounds a multiply-add that its vector loop fuses (losses within 1e-6 of stepping
    tensor by tensor over 200 steps). Build it after moving the model to its device."""

    def __init__(self, model: nn.Module, make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]):
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise CamkitError("the model has no trainable parameters")
        self.param = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
        self.param.grad = torch.zeros_like(self.param)
        offset = 0
        for p in params:
            n = p.numel()
            p.data = self.param.data[offset:offset + n].view_as(p)
            p.grad = self.param.grad[offset:offset + n].view_as(p)
            offset += n
        self.optimizer = make_optimizer([self.param])

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero in place whatever `set_to_none` says: the model's gradients are views of this
        buffer, and autograd accumulates into them in place."""
        self.param.grad.zero_()

    def step(self) -> None:
        self.optimizer.step()


@contextlib.contextmanager
def small_batch_threads(enabled: bool, bs: int, image_shape, device: torch.device):
    """One intra-op thread for tiny CPU batches: at batch 4 waking a second OpenMP thread per op
    costs more than it saves (1.78 -> 1.35 ms per tutorial-net step on a quiet 2-core machine,
    4x-10x under CPU contention). Thread counts change float reduction order, so give both
    loaders the same policy when comparing their losses."""
    tiny = enabled and device.type == "cpu" and bs * int(np.prod(image_shape)) < 65536
    before = torch.get_num_threads()
    if tiny:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_stepper(model: nn.Module, make_optimizer: Callable, fast: bool):
    """camkit's flat one-call step when `fast`, else the optimizer over the model's tensors as
    the course builds it."""
    return FlatOptimizer(model, make_optimizer) if fast else make_optimizer(model.parameters())


def fit(model: nn.Module, loader, loss_fn: Callable, optimizer=None, phase: str = "training",
        log_every: int = 0, epoch: int = 0, log: Callable[[str], None] = print,
        device: torch.device | str = "cpu") -> tuple[float, float, list[float]]:
    """One pass over `loader` as the course writes it: training (optimizer steps) or validation
    (no gradients). Returns (mean loss, accuracy, per-step losses). The running sums are taken
    once at the end, not per step: fewer tiny ops on the hot path."""
    training = phase == "training"
    model.train(training)
    losses, outputs, targets, sizes = [], [], [], []
    running = 0.0
    with torch.set_grad_enabled(training):
        for i, (x, y) in enumerate(loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            loss = loss_fn(out, y)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            losses.append(loss.detach())
            outputs.append(out.detach())
            targets.append(y)
            sizes.append(len(y))
            if log_every:
                running += float(losses[-1])
                if (i + 1) % log_every == 0:
                    log(f"[{epoch + 1}, {i + 1:5d}] loss: {running / log_every:.3f}")
                    running = 0.0
    if not losses:
        return 0.0, 0.0, []
    step_losses = torch.stack(losses).float()
    seen = sum(sizes)
    total = float((step_losses.double() * torch.tensor(sizes, dtype=torch.float64, device=step_losses.device)).sum())
    correct = int((torch.cat(outputs).argmax(1) == torch.cat(targets)).sum())
    return total / seen, correct / seen, step_losses.tolist()
