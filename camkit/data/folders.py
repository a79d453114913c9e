"""Image folders decoded once into tensors, offline datasets, and the canvas builder.

Decoding and resizing every image once (instead of on every epoch, as a per-item fastai
pipeline does) is what makes camkit's training loop faster than the hand-written recipe.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from camkit.core.choices import Aug, choice
from camkit.core.files import is_camkit_output
from camkit.core.images import is_dataset_image, open_rgb, resize_square
from camkit.data.cache import cache_key, decode_cached, release_rows
from camkit.errors import CamkitError
from camkit.resources import SAMPLE, resource

FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


# ---------------------------------------------------------------- offline datasets

def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
            if zero != 0 or dtype_code != 0x08:
                raise CamkitError(f"{path}: not an unsigned-byte IDX file")
            shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
            data = np.frombuffer(bytearray(f.read()), dtype=np.uint8)  # writable: torch.from_numpy warns on read-only
    except (OSError, struct.error, EOFError) as e:
        raise CamkitError(f"{path}: unreadable IDX file ({e})") from None
    if data.size != int(np.prod(shape)):
        raise CamkitError(f"{path}: truncated IDX file ({data.size} of {int(np.prod(shape))} bytes)")
    return data.reshape(shape)


def find_fashion_mnist(data_dir: str | Path | None = None) -> Path | None:
    """The folder holding Fashion-MNIST IDX files: `data_dir` if given, else the Debian package's."""
    for d in [Path(data_dir)] if data_dir else [FASHION_SYSTEM_DIR]:
        if any((d / n).exists() for n in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")):
            return d
    return None


def load_fashion_mnist(data_dir: str | Path | None = None, train: bool = True
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images (N, 28, 28) uint8 and labels (N,) from IDX files."""
    root = find_fashion_mnist(data_dir)
    if root is None:
        raise CamkitError("Fashion-MNIST IDX files not found (install the Debian package "
                          "'dataset-fashion-mnist' or pass --data-dir); "
                          "alternatives: --dataset digits")
    prefix = "train" if train else "t10k"

    def pick(stem: str) -> Path:
        for suffix in (".gz", ""):
            if (root / f"{prefix}-{stem}{suffix}").exists():
                return root / f"{prefix}-{stem}{suffix}"
        raise CamkitError(f"{root}: missing {prefix}-{stem}")

    return read_idx(pick("images-idx3-ubyte")), read_idx(pick("labels-idx1-ubyte")).astype(np.int64)


def load_digits28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits scaled to 28x28 uint8, MNIST-like (white on black)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    big = torch.nn.functional.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    big = torch.nn.functional.pad(big, (4, 4, 4, 4))
    return (big[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy(), d.target.astype(np.int64)


def load_shipped_sample() -> tuple[np.ndarray, np.ndarray]:
    """The Fashion-MNIST sample shipped inside camkit (camkit/resources/, MIT licence, Zalando
    Research); a folder named by CAMKIT_DATA that holds a fashion_mnist_sample.npz overrides it."""
    override = os.environ.get("CAMKIT_DATA")
    source = Path(override) / SAMPLE if override else resource(SAMPLE)
    if not source.is_file():
        raise CamkitError(f"CAMKIT_DATA='{override}' holds no {SAMPLE} (unset it to use the sample shipped "
                          "with camkit)" if override else
                          f"camkit's shipped sample '{source}' is missing: this camkit install is incomplete "
                          "(reinstall camkit)")
    with source.open("rb") as f, np.load(f) as z:
        return z["images"], z["labels"].astype(np.int64)


# ---------------------------------------------------------------- canvases with known boxes

def make_canvas_folder(out: str | Path, classes: list[str], n_per_class: int, canvas: int = 96,
                       item_range: tuple[int, int] = (28, 40), noise: float = 24.0, seed: int = 0,
                       source: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, list[int]]:
    """Paste Fashion-MNIST items at random places on noisy grey canvases, one folder per class.

    Writes `out/CLASS/NNNN.png` and `out/boxes.json` ({relative path: [x0, y0, x1, y1]}, the
    item's tight box), so the class is decidable only from the item and a heatmap can be scored
    by whether its peak falls inside the box. Returns the boxes."""
    from PIL import Image

    images, labels = source if source is not None else load_shipped_sample()
    unknown = [c for c in classes if c not in FASHION_CLASSES]
    if unknown:
        raise CamkitError(f"unknown Fashion-MNIST class {unknown[0]!r}; choose from {', '.join(FASHION_CLASSES)}")
    rng = np.random.default_rng(seed)
    out = Path(out)
    boxes: dict[str, list[int]] = {}
    for cls in classes:
        pool = np.flatnonzero(labels == FASHION_CLASSES.index(cls))
        if len(pool) < n_per_class:
            raise CamkitError(f"only {len(pool)} '{cls}' items available, {n_per_class} asked")
        (out / cls).mkdir(parents=True, exist_ok=True)
        for i, idx in enumerate(rng.permutation(pool)[:n_per_class]):
            side = int(rng.integers(item_range[0], item_range[1] + 1))
            item = np.asarray(Image.fromarray(images[idx]).resize((side, side), Image.BILINEAR),
                              dtype=np.float32)
            x0, y0 = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
            base = rng.normal(90.0, noise, size=(canvas, canvas)).astype(np.float32)
            alpha = item / 255.0
            region = base[y0:y0 + side, x0:x0 + side]
            base[y0:y0 + side, x0:x0 + side] = region * (1 - alpha) + 255.0 * alpha * 0.9 + item * 0.1
            tint = rng.uniform(0.85, 1.15, size=3).astype(np.float32)
            rgb = np.clip(base[..., None] * tint, 0, 255).astype(np.uint8)
            rel = f"{cls}/{i:04d}.png"
            Image.fromarray(rgb).save(out / rel)
            ys, xs = np.nonzero(alpha > 0.1)
            boxes[rel] = [x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1] \
                if len(xs) else [x0, y0, x0 + side, y0 + side]
    (out / "boxes.json").write_text(json.dumps(boxes, indent=1))
    return boxes


# ---------------------------------------------------------------- image folders as tensors

@dataclass
class FolderData:
    """An image folder decoded once: `images` (N, 3, S, S) uint8, `labels` (N,), class names,
    the files kept (same order) and the files skipped with the reason."""
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    files: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    mapped: bool = False             # images is a memory map on disk (camkit.data.cache): index, never copy whole
    decoded: int | None = None       # files this load decoded (0: all came from the cache)

    def split(self, valid_pct: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded random split into (train indices, valid indices), stratified per class so that
        every class is in both sets (a class needs two images)."""
        g = torch.Generator().manual_seed(seed)
        train, valid = [], []
        for c in range(len(self.classes)):
            idx = torch.nonzero(self.labels == c).flatten()
            if valid_pct > 0 and len(idx) < 2:
                raise CamkitError(f"class '{self.classes[c]}' has {len(idx)} readable image(s); at least 2 are "
                                  "needed (one to train on, one to validate)")
            idx = idx[torch.randperm(len(idx), generator=g)]
            n_valid = min(len(idx) - 1, max(1, int(round(len(idx) * valid_pct)))) if valid_pct > 0 else 0
            valid.append(idx[:n_valid])
            train.append(idx[n_valid:])
        return torch.cat(train).sort().values, torch.cat(valid).sort().values


def scan_class_folders(root: str | Path) -> tuple[list[str], list[list[Path]]]:
    """Class names (sorted sub-folder names) and their image files; errors on fewer than two
    classes or an empty class. Folders that are not classes are skipped with a warning naming
    them: hidden or `_`-prefixed ones (`_rejected/`), and camkit's own outputs (a run or CAM
    folder written inside the dataset)."""
    root = Path(root)
    if not root.exists():
        raise CamkitError(f"data folder '{root}' does not exist")
    if not root.is_dir():
        raise CamkitError(f"data folder '{root}' is not a folder")
    dirs = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.name.startswith((".", "_")):
            warnings.warn(f"skipping folder '{d.name}' (names starting with '.' or '_' are not classes)", stacklevel=3)
        elif is_camkit_output(d):
            warnings.warn(f"skipping folder '{d.name}': it holds camkit output, not a class", stacklevel=3)
        elif not d.resolve().is_relative_to(root.resolve()):
            warnings.warn(f"skipping folder '{d.name}': a link leading outside the data folder", stacklevel=3)
        else:
            dirs.append(d)
    files = [sorted(f for f in d.rglob("*") if is_dataset_image(f, root)) for d in dirs]
    if len(dirs) < 2:
        raise CamkitError(f"data folder '{root}' needs at least two class sub-folders, found {len(dirs)}")
    for d, fs in zip(dirs, files):
        if not fs:
            raise CamkitError(f"class folder '{d}' has no images")
    return [d.name for d in dirs], files


def decode_folder(root: str | Path, read: Callable[[Path], Any], workers: int | None = None
                  ) -> tuple[list[str], list[tuple[Path, int, Any]], list[tuple[Path, str]]]:
    """`read` every image of a class-per-folder dataset with camkit's guarded decode, in
    threads: (classes, [(file, class index, what read returned)], skipped files with the reason).
    Unreadable files are skipped with a warning naming them; a class left empty is an error."""
    classes, per_class = scan_class_folders(root)
    items = [(f, c) for c, fs in enumerate(per_class) for f in fs]

    def attempt(item: tuple[Path, int]) -> Any:
        try:
            return read(item[0])
        except CamkitError as e:
            return e

    with ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 2) * 2)) as pool:
        results = list(pool.map(attempt, items))
    return _kept(classes, items, results)


def _kept(classes: list[str], items: list[tuple[Path, int]], results: list[Any]
          ) -> tuple[list[str], list[tuple[Path, int, Any]], list[tuple[Path, str]]]:
    """Split decode results into kept and skipped (a CamkitError is a skip, warned once per
    file); a class left without readable images is an error."""
    kept = [(f, c, r) for (f, c), r in zip(items, results) if not isinstance(r, CamkitError)]
    skipped = [(f, str(r)) for (f, _), r in zip(items, results) if isinstance(r, CamkitError)]
    for path, why in skipped:
        warnings.warn(f"skipping {path}: {why}", stacklevel=3)
    counts = np.bincount([c for _, c, _ in kept], minlength=len(classes))
    for name, n in zip(classes, counts):
        if n == 0:
            raise CamkitError(f"class '{name}' has no readable images")
    return classes, kept, skipped


def load_folder(root: str | Path, size: int, workers: int | None = None,
                cache: str | Path | None = None) -> FolderData:
    """Decode every image of a class-per-folder dataset once, squished to size x size: into
    memory, or with `cache` (a folder) into camkit.data.cache's memory-mapped file there, which a
    later call reuses (decoding only the files added or changed since)."""
    if cache is not None:
        return _load_cached(root, size, Path(cache), workers)
    classes, kept, skipped = decode_folder(root, lambda f: resize_square(open_rgb(f), size), workers)
    images = torch.from_numpy(np.stack([a for _, _, a in kept])).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([c for _, c, _ in kept], dtype=torch.long)
    return FolderData(images, labels, classes, [f for f, _, _ in kept], skipped, decoded=len(kept) + len(skipped))


def _load_cached(root: str | Path, size: int, cache: Path, workers: int | None) -> FolderData:
    """load_folder through the decode cache: the images tensor wraps the memory map (rows in
    the order of the folder scan), so resident memory does not grow with the dataset."""
    classes, per_class = scan_class_folders(root)
    items = [(f, c) for c, fs in enumerate(per_class) for f in fs]
    rows = decode_cached(cache, cache_key(Path(root).resolve(), size, "squish"), [f for f, _ in items],
                         (3, size, size), lambda f: resize_square(open_rgb(f), size).transpose(2, 0, 1), workers)
    classes, kept, skipped = _kept(classes, items, [CamkitError(e) if e else None for e in rows.errors])
    labels = torch.tensor([c for _, c, _ in kept], dtype=torch.long)
    return FolderData(torch.from_numpy(rows.images), labels, classes, [f for f, _, _ in kept], skipped,
                      mapped=True, decoded=rows.decoded)


class Normalizer:
    """uint8 images -> (x / 255 - mean) / std per channel: torchvision's ToTensor + Normalize,
    written once for every loader, `preprocess` and the course's plots. `invert` undoes it
    (x * std + mean, clamped to [0, 1])."""

    def __init__(self, stats: tuple[list[float], list[float]], channels: int = 3,
                 device: torch.device | str = "cpu"):
        self.stats = (list(stats[0][:channels]), list(stats[1][:channels]))
        self.mean = torch.tensor(self.stats[0], device=device).view(1, channels, 1, 1)
        self.std = torch.tensor(self.stats[1], device=device).view(1, channels, 1, 1)

    def to(self, device: torch.device | str) -> "Normalizer":
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # in place on a fresh float copy (never on the caller's tensor): one allocation per batch
        return self.standardize(x.to(torch.float32, copy=True).div_(255))

    def standardize(self, x01: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std, in place, for images already in [0, 1]."""
        return x01.sub_(self.mean).div_(self.std)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = (t.view(-1, 1, 1) for t in (self.mean, self.std)) if x.dim() == 3 else (self.mean, self.std)
        return (x * std + mean).clamp(0, 1)


class TensorBatches:
    """A fastai-compatible DataLoader over uint8 image tensors: batches are augmented (`aug`:
    none, a horizontal flip, or fastai's own `aug_transforms` — flip, rotate, zoom, warp,
    lighting — run on the whole batch on its device), normalised and converted to
    channels_last in one go. fastai's random draws use torch's global generator, seeded by
    `train` before the run.

    `rows` (optional): the row of `images` for each label, for images that stay where they
    are (a memory map from camkit.data.cache: each batch is gathered from it, then moved), instead
    of a copied subset. `rank` / `world`: in data-parallel training, every rank draws the same
    seeded permutation and takes every world-th item from its rank on (n // world items
    each, so every rank runs the same number of steps, as DistributedSampler(drop_last=True))."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, bs: int, shuffle: bool,
                 stats: tuple[list[float], list[float]] = IMAGENET_STATS, aug: str = "none",
                 seed: int = 0, device: torch.device | str = "cpu", channels_last: bool = False,
                 rows: torch.Tensor | None = None, rank: int = 0, world: int = 1):
        aug = choice(Aug, aug, "aug")
        self.images, self.labels, self.rows = images, labels, rows
        self.rank, self.world = rank, world
        self.bs, self.shuffle, self.aug = bs, shuffle, aug
        self.fastai_tfms = _fastai_augmentations() if aug == "fastai" else []
        self.normalizer = Normalizer(stats)
        self.generator = torch.Generator().manual_seed(seed)
        self.channels_last = channels_last
        self.device = torch.device("cpu")
        self.to(device)

    # fastai's Learner reads these
    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def dataset(self) -> "TensorBatches":
        return self

    def __len__(self) -> int:
        return (self.n + self.bs - 1) // self.bs if not self.shuffle else max(1, self._per_rank() // self.bs)

    def _per_rank(self) -> int:
        return self.n // self.world if self.shuffle else self.n

    def to(self, device: torch.device | str) -> "TensorBatches":
        self.device = torch.device(device)
        if self.rows is None:  # a memory map stays on the host; its batches move
            self.images = self.images.to(self.device)
        self.labels = self.labels.to(self.device)
        self.normalizer.to(self.device)
        return self

    def to_detach(self, b: Any, cpu: bool = True, gather: bool = True) -> Any:
        """fastai's hook for a loader's outputs (losses, metrics, predictions): detached, never
        gathered across ranks, since every rank validates the whole held-out set and the
        training loss is averaged by camkit.core.distributed's callback (fastai gathers whenever
        WORLD_SIZE is set, assuming its own sharded validation)."""
        from fastai.torch_core import to_detach

        return to_detach(b, cpu, gather=False)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images of positions `idx`, on the loader's device."""
        if self.rows is None:
            return self.images[idx]
        rows = self.rows[idx.cpu()]
        batch = self.images[rows]
        # a cache's map: unmap the pages just read, so resident memory stays that of a batch
        release_rows(self.images.data_ptr(), self.images[0].numel(), rows.tolist())
        return batch.to(self.device, non_blocking=True)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> augmented (as chosen), normalised float batch."""
        if self.fastai_tfms:
            from fastai.torch_core import TensorImage

            x = TensorImage(x.float().div_(255))
            for tfm in self.fastai_tfms:
                x = tfm(x, split_idx=0)  # split 0: the training-time draw
            x = self.normalizer.standardize(torch.Tensor(x).clamp_(0, 1))
        else:
            x = self.normalizer(x)
            if self.aug == "flip":
                flip = (torch.rand(len(x), generator=self.generator) < 0.5).to(self.device)
                x[flip] = x[flip].flip(-1)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=self.generator).to(self.device)
            order = order[self.rank::self.world][:self._per_rank()]
            order = order[: len(self) * self.bs] if len(order) >= self.bs else order
        else:
            order = torch.arange(self.n, device=self.device)
        for start in range(0, len(order), self.bs):
            idx = order[start:start + self.bs]
            yield self.prepare(self.gather(idx)), self.labels[idx]


def _fastai_augmentations() -> list:
    """fastai's default `aug_transforms()`: the transforms its DataBlocks run on training batches."""
    from fastai.vision.augment import aug_transforms

    return aug_transforms()
