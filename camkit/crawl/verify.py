"""Is this a clean, new image? The in-flight checks of a download (full decode, pixel cap,
minimum size, resize), the hashes that find twins (pixel sha256, perceptual hash), the one
"duplicate / near duplicate / ambiguous" rule, and `verify()` for a folder already on disk."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from camkit.core.files import FileRefused, move_aside, read_bounded
from camkit.core.images import MAX_IMAGE_BYTES, REJECTED, ImageRejected, decode, is_dataset_image, to_rgb
from camkit.crawl.policy import Rejected
from camkit.errors import CamkitError

MAX_PIXELS = 50_000_000          # 50 MP: decodes fine, a 20000x20000 bomb does not pass
PHASH_THRESHOLD = 6              # Hamming distance (of 64 bits) for "near duplicate"


# ---------------------------------------------------------------- hashing

def pixel_sha256(img: Image.Image) -> str:
    """sha256 of the size and the decoded pixels: the same picture saved twice is one hash."""
    return hashlib.sha256(f"{img.size}".encode() + img.tobytes()).hexdigest()


_DCT = None


def phash(img: Image.Image) -> int:
    """64-bit perceptual hash: the signs of the 8x8 lowest DCT frequencies of a 32x32 grey
    thumbnail against their median (robust to resizing and recompression)."""
    global _DCT
    if _DCT is None:
        n = np.arange(32)
        _DCT = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 64)
    grey = np.asarray(img.convert("L").resize((32, 32), Image.LANCZOS), dtype=np.float64)
    low = (_DCT @ grey @ _DCT.T)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


# ---------------------------------------------------------------- one file

@dataclass
class Verified:
    image: Image.Image       # RGB, orientation applied, resized to max_side
    data: bytes              # what is written to disk
    ext: str
    sha256: str
    phash: int
    width: int
    height: int


def verify_bytes(data: bytes, min_size: int = 64, max_side: int | None = 512,
                 max_pixels: int = MAX_PIXELS) -> Verified:
    """Full decode and checks; raises Rejected('reason') for anything not a clean image."""
    try:
        img = decode(data, max_pixels)
    except ImageRejected as e:
        raise Rejected(e.reason) from None
    fmt = (img.format or "").upper()
    if min(img.size) < min_size:
        raise Rejected("too_small")
    img = to_rgb(ImageOps.exif_transpose(img))
    resized = bool(max_side and max(img.size) > max_side)
    if resized:
        img.thumbnail((max_side, max_side), Image.LANCZOS)
    if fmt == "JPEG" and not resized:
        out, ext = data, "jpg"       # keep the original bytes: no recompression loss
    else:
        buf = io.BytesIO()
        if fmt == "JPEG":
            img.save(buf, "JPEG", quality=92)
            ext = "jpg"
        else:
            img.save(buf, "PNG")
            ext = "png"
        out = buf.getvalue()
    return Verified(img, out, ext, pixel_sha256(img), phash(img), img.width, img.height)


# ---------------------------------------------------------------- twins

class HashIndex:
    """Exact (sha256 of pixels) and perceptual (pHash within a Hamming threshold) lookup of the
    images kept so far (by path relative to the dataset, `class/name`), plus the hashes of
    images set aside as ambiguous."""

    def __init__(self, threshold: int = PHASH_THRESHOLD):
        self.threshold = threshold
        self.files: dict[str, tuple[str, int]] = {}     # rel -> (sha256, phash)
        self.by_sha: dict[str, str] = {}                # sha256 -> rel
        self.ambiguous: list[tuple[str, int]] = []

    def add(self, rel: str, sha: str, ph: int) -> None:
        self.files[rel] = (sha, ph)
        self.by_sha[sha] = rel

    def remove(self, rel: str) -> tuple[str, int]:
        sha, ph = self.files.pop(rel)
        self.by_sha.pop(sha, None)
        return sha, ph

    def set_aside(self, rel: str) -> tuple[str, int]:
        """Forget a kept image and refuse its twins from now on: it is ambiguous."""
        sha, ph = self.remove(rel)
        self.ambiguous.append((sha, ph))
        return sha, ph

    def match(self, sha: str, ph: int) -> tuple[str | None, str | None]:
        """('ambiguous', None), ('duplicate', rel), ('near_duplicate', rel) or (None, None)."""
        if any(s == sha or hamming(p, ph) <= self.threshold for s, p in self.ambiguous):
            return "ambiguous", None
        if sha in self.by_sha:
            return "duplicate", self.by_sha[sha]
        near = next((rel for rel, (_, p) in self.files.items() if hamming(p, ph) <= self.threshold), None)
        return ("near_duplicate", near) if near else (None, None)

    def judge(self, cls: str, sha: str, ph: int) -> tuple[str | None, str | None]:
        """The one dedup rule, for the crawl and `verify` alike: (status, twin to move aside).

        No twin: (None, None), keep it. A twin in the same class: ('duplicate' or
        'near_duplicate', None), refuse the newcomer. A twin in another class: the picture
        belongs to neither, so both go: ('ambiguous', twin), and the twin is set aside here.
        A twin of an image already set aside: ('ambiguous', None)."""
        kind, twin = self.match(sha, ph)
        if twin is not None and twin.split("/")[0] != cls:
            self.set_aside(twin)
            return "ambiguous", twin
        return kind, None


# ---------------------------------------------------------------- a folder on disk

@dataclass
class VerifySummary:
    folder: str
    checked: int
    kept: int
    rejected: dict[str, int]


def verify(folder: str | Path, min_size: int = 64, phash_threshold: int = PHASH_THRESHOLD) -> VerifySummary:
    """The crawl's checks and dedup on a class-per-folder dataset already on disk. Rejects are
    moved to `folder/_rejected/<reason>/<class>/` (never deleted, and never over an earlier
    reject of the same name: that one is kept and the new one gets `name-1.ext`); a log goes to
    verify.jsonl."""
    root = Path(folder)
    classes = _class_folders(root)
    index = HashIndex(phash_threshold)
    moves: dict[Path, str] = {}
    seen: list[tuple[Path, str]] = []
    for cls in classes:
        for path in sorted(f for f in cls.rglob("*") if is_dataset_image(f, root)):
            rel = str(path.relative_to(root))
            seen.append((path, rel))
            reason = _check_file(root, path, cls.name, index, min_size, moves)
            if reason:
                moves[path] = reason
    # logged once all are checked: an image kept at first may be moved aside as ambiguous later
    log = [{"file": rel, "status": moves.get(path, "ok")} for path, rel in seen]
    rejected: dict[str, int] = {}
    for path, reason in moves.items():  # never over an earlier reject of the same name
        move_aside(path, root / REJECTED / reason / path.relative_to(root))
        rejected[reason] = rejected.get(reason, 0) + 1
    with open(root / "verify.jsonl", "a", encoding="utf-8") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in log)
    return VerifySummary(str(root), len(seen), len(seen) - sum(rejected.values()), dict(sorted(rejected.items())))


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise CamkitError(f"folder '{root}' does not exist")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "_"))
                     and d.resolve().is_relative_to(root.resolve()))
    if not classes:
        raise CamkitError(f"folder '{root}' has no class sub-folders")
    return classes


def _check_file(root: Path, path: Path, cls: str, index: HashIndex, min_size: int, moves: dict[Path, str]) -> str | None:
    """The reason to move one file aside (None: keep it); a twin in another class is marked too."""
    try:
        v = verify_bytes(read_bounded(path, MAX_IMAGE_BYTES, "an image"), min_size, max_side=None)
    except Rejected as e:
        return str(e)
    except FileRefused as e:   # too_large (a FIFO or device is no dataset image: never listed)
        return e.reason
    except OSError:
        return "unreadable"
    except Exception:  # noqa: BLE001  as in the crawl: this file's problem, not the command's
        return "error"
    kind, twin = index.judge(cls, v.sha256, v.phash)
    if twin is not None:
        moves[root / twin] = "ambiguous"
    if kind is None:
        index.add(str(path.relative_to(root)), v.sha256, v.phash)
    return kind
