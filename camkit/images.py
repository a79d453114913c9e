"""Reading any PIL-readable image into RGB the same way everywhere (train, cam, verify)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from camkit.errors import CamkitError
from camkit.files import IMAGE_SUFFIXES, open_regular

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
