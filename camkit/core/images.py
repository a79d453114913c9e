"""Reading any PIL-readable image into RGB the same way everywhere (train, cam, verify), and
the one decode-and-batch path of `predict`, `explain` and `cam-eval` (`ImageFiles`,
`decoded_batches`)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, BinaryIO, Callable, Generic, Iterable, Iterator, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from camkit.core.files import IMAGE_SUFFIXES, open_regular
from camkit.errors import CamkitError

REJECTED = "_rejected"  # where the crawl and verify move images aside (never deleted)
# Refuse images that would take more than ~1 GB as RGB; Pillow's own bomb check is per-format.
MAX_PIXELS = 300_000_000
# Refuse image files larger than an uncompressed 8-bit RGBA bitmap at MAX_PIXELS before reading
# them: no image within the pixel cap needs more (a 3 GB non-image was read whole, 4.1 GB peak).
MAX_IMAGE_BYTES = 4 * MAX_PIXELS


class ImageRejected(CamkitError):
    """Bytes that are not a complete image; `reason` is a short code for logs and manifests:
    too_many_pixels, not_an_image, truncated or corrupt."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def decode(data: bytes | BinaryIO, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Fully decode image bytes or an open binary file (no EXIF rotation, original mode),
    refusing pixel counts over `max_pixels` before decoding and turning Pillow's
    decompression-bomb checks into a refusal. A file is read as the decoder goes: a file that is
    no image is refused after its first bytes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
            if img.width * img.height > max_pixels:
                raise ImageRejected("too_many_pixels", f"{img.width}x{img.height} pixels is too large")
            img.load()
            return img
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("too_many_pixels", str(e)) from None
    except UnidentifiedImageError as e:
        raise ImageRejected("not_an_image", "not a readable image (no known image format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise ImageRejected(reason, f"not a readable image ({type(e).__name__}: {e})") from None


def open_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image as RGB: EXIF orientation applied, alpha composited on white,
    palette expanded and 16-bit greyscale scaled (not clipped) to 8 bits; more than
    `max_pixels` pixels is refused before decoding, and so is a file that is not a regular file
    (a FIFO, a device) or holds more than MAX_IMAGE_BYTES, before it is read.

    Raises CamkitError for anything that is not a complete, decodable image."""
    path = Path(path)
    if path.is_dir():
        raise CamkitError(f"'{path}' is a folder, not an image")
    try:
        with open_regular(path, MAX_IMAGE_BYTES, "an image") as f:
            return to_rgb(ImageOps.exif_transpose(decode(f, max_pixels)))
    except FileNotFoundError:
        raise CamkitError(f"image '{path}' does not exist") from None
    except ImageRejected as e:
        raise CamkitError(f"{path}: {e}") from None
    except OSError as e:
        raise CamkitError(f"{path}: cannot be read ({e.strerror or e})") from None


def open_or_skip(path: Path, named: set[str] | frozenset[str]) -> Image.Image | None:
    """`open_rgb`, for a file that may have come from a folder: a file the user named is an
    error when unreadable; one found in a folder is skipped with a warning (None)."""
    try:
        return open_rgb(path)
    except CamkitError as e:
        if str(path) in named:
            raise
        warnings.warn(f"skipping {e}", stacklevel=3)
        return None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB without losing the picture."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def resize_square(img: Image.Image, size: int, method: str = "squish") -> np.ndarray:
    """size x size HWC uint8: `squish` (camkit's: no crop, every original pixel maps back
    linearly) or `crop` (fastai's Resize at inference: the centre square, then resized)."""
    if method == "crop":
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def is_dataset_image(path: Path, root: Path) -> bool:
    """An image file found under `root`: an image suffix, nothing hidden on the way (camkit's
    `.camkit-tmp-` files, editors' files), not under camkit's `_rejected/`, and not a link
    leading outside `root` (results must name files inside the folder they came from)."""
    parts = path.relative_to(root).parts
    return (path.suffix.lower() in IMAGE_SUFFIXES and REJECTED not in parts
            and not any(p.startswith(".") for p in parts) and path.is_file()
            and path.resolve().is_relative_to(root.resolve()))


def list_images(paths: list[str | Path] | str | Path, recursive: bool = True) -> list[Path]:
    """Expand files and folders into a sorted list of image files (folders recursively,
    skipping hidden files, such as camkit's temp files, and camkit's own `_rejected` folders)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            found.extend(sorted(f for f in p.glob(pattern) if is_dataset_image(f, p)))
        elif p.exists():
            found.append(p)
        else:
            raise CamkitError(f"'{p}' does not exist")
    return found


# ---------------------------------------------------------------- files in, decoded batches out

X = TypeVar("X")


@dataclass(frozen=True)
class ImageFiles:
    """The image files of one request, in order, and what an unreadable one means, decided once
    where the list is made: a file in `named` (given directly by the user) is an error, any
    other (found in a folder) is skipped with a warning. `ImageFiles(paths)` skips every
    unreadable file; `ImageFiles.required(paths)` refuses any."""
    paths: tuple[Path, ...]
    named: frozenset[str] = frozenset()

    @classmethod
    def collect(cls, images: Sequence[str | PathLike] | str | PathLike) -> ImageFiles:
        """Files and folders (searched recursively) as given to explain, cam or predict; those
        named directly must be readable. Anything but paths (an int, an array), or none at
        all, is one sentence."""
        inputs = [images] if isinstance(images, (str, Path)) or not isinstance(images, Iterable) else list(images)
        wrong = next((p for p in inputs if not isinstance(p, (str, PathLike))), None)
        if wrong is not None:
            raise CamkitError(f"images must be file or folder paths, not {type(wrong).__name__}")
        if not inputs:
            raise CamkitError("no images given")
        files = list_images(inputs)
        if not files:
            raise CamkitError("no images found in " + ", ".join(map(str, inputs)))
        return cls(tuple(files), frozenset(str(Path(p)) for p in inputs if not Path(p).is_dir()))

    @classmethod
    def required(cls, paths: Iterable[Path]) -> ImageFiles:
        """Every file must be readable (a run's own list, where a missing image is an error)."""
        paths = tuple(paths)
        return cls(paths, frozenset(map(str, paths)))

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Path]:
        return iter(self.paths)

    def __getitem__(self, index: int) -> Path:
        return self.paths[index]

    def read(self, index: int) -> Image.Image | None:
        """The index-th file as RGB (open_rgb), or None with a `skipping ...` warning when it is
        unreadable and was not named."""
        return open_or_skip(self.paths[index], self.named)


@dataclass
class Decoded:
    """What is kept of one decoded image: its position in the request, its original size (w, h),
    the model's S x S input and what the caller's `keep` made of it (a drawing-sized copy, a
    hash). The full-resolution decode is dropped at once, so a batch of huge images costs a
    batch of small ones."""
    index: int
    path: Path | str
    size: tuple[int, int]
    square: np.ndarray | None
    kept: Any = None


@dataclass
class DecodedBatch(Generic[X]):
    """The readable images of one chunk of the request and `x`, their model input (one row each,
    what the caller's `feed` made of the squares)."""
    items: list[Decoded]
    x: X


def decoded_batches(files: ImageFiles | Sequence[Path], square: Callable[[Image.Image], np.ndarray],
                    feed: Callable[[list[np.ndarray]], X], bs: int, part: range | None = None,
                    keep: Callable[[Image.Image], Any] | None = None) -> Iterator[DecodedBatch[X]]:
    """Decode `files` chunk by chunk (bs at a time, memory bounded by the chunk), skipping or
    refusing unreadable files as `files` says (a plain sequence: skipping, as ImageFiles(paths)),
    and yield each chunk's readable images with `feed`(their squares). `part`: only these
    positions (a rank's shard; items keep their index in `files`). A chunk with no readable
    image yields nothing."""
    files = files if isinstance(files, ImageFiles) else ImageFiles(tuple(files))
    span = part if part is not None else range(len(files))
    for start in range(span.start, span.stop, bs):
        items = [d for d in (_decode(files, i, square, keep) for i in range(start, min(start + bs, span.stop)))
                 if d is not None]
        if items:
            yield DecodedBatch(items, feed([d.square for d in items]))


def _decode(files: ImageFiles, index: int, square: Callable[[Image.Image], np.ndarray],
            keep: Callable[[Image.Image], Any] | None) -> Decoded | None:
    """One file, or None when it is skipped (ImageFiles.read has warned)."""
    image = files.read(index)
    if image is None:
        return None
    return Decoded(index, files[index], image.size, square(image), keep(image) if keep else None)
