"""Image-quality and leakage checks a crawled dataset needs, besides label noise: blank or
near-constant images, extreme aspect ratios, tiny effective content (a mostly transparent PNG,
composited on white, is a small drawing in a large empty frame), and near-duplicates across the
train / validation split (a leak: the validation score then measures memory).

    measures = measure(image)               # one decoded RGB image -> Measures
    findings(measures)                      # ('near-constant', 'odd aspect ratio', ...)
    leaks(hashes, in_valid)                 # bool per image: a near-twin on the other side of the split

The measures follow cleanvision's definitions (cleanvision/issue_managers/image_property.py):
the aspect score is min(w / h, h / w), as its `calc_aspect_ratio`; the grey-level spread is
the standard deviation of the greyscale pixels (its low-information check uses the histogram's
entropy, which clip art on white fails: 68 % of 1,499 openclipart images measured below its
3-bit threshold). cleanvision itself is not a dependency: it adds three packages (ImageHash,
PyWavelets, tabulate), decodes every image again through its own loader, and has neither a
content-area nor a cross-split check. The thresholds are measured (scripts/bench_clean_quality.py,
docs/benchmarks.md, issue 30) on 1,499 openclipart images of the allowed categories against 32
generated bad images: every bad image is flagged; of the real ones, the spread threshold flags
1.5 % and the content threshold 2.0 % (overlapping); the first 13 inspected were fully transparent
PNGs (blank once composited on white, as the model sees them) and drawings covering 0.2 % of
their frame,
and the aspect threshold 0.07 % (cleanvision's 0.35 would flag 1.1 %: banners and borders).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from camkit.crawl import PHASH_THRESHOLD

SIDE = 64                   # measures are taken on a thumbnail at most this many pixels a side
MIN_SPREAD = 2.0            # grey-level std (0-255) below this: blank or near-constant
MIN_ASPECT = 0.2            # min(w / h, h / w) below this: an extreme aspect ratio (a banner, a strip)
MIN_CONTENT = 0.005         # share of pixels unlike the border colour below this: tiny content
BACKGROUND_TOLERANCE = 24   # a pixel within this of the border's median colour (every channel) is background


@dataclass(frozen=True)
class Measures:
    """One image's quality measures: grey-level standard deviation, aspect score
    min(w / h, h / w), and the share of pixels that differ from the border colour."""
    spread: float
    aspect: float
    content: float


def measure(image: Image.Image) -> Measures:
    """The measures of a decoded RGB image (camkit.core.images.open_rgb: alpha composited on white),
    taken on a thumbnail (the size ratio from the full image)."""
    w, h = image.size
    small = image.copy()
    small.thumbnail((SIDE, SIDE))
    a = np.asarray(small.convert("RGB"), dtype=np.int16)
    grey = np.asarray(small.convert("L"), dtype=np.float64)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    background = np.median(border, axis=0)
    content = float((np.abs(a - background).max(-1) > BACKGROUND_TOLERANCE).mean())
    return Measures(float(grey.std()), min(w / h, h / w), content)


def findings(m: Measures) -> tuple[str, ...]:
    """What is wrong with an image by its measures (empty when nothing is)."""
    out = []
    if m.content < MIN_CONTENT and m.content > 0:   # something drawn, in a corner of an empty frame
        out.append("tiny content")
    elif m.spread < MIN_SPREAD or m.content == 0:
        out.append("blank or near-constant")
    if m.aspect < MIN_ASPECT:
        out.append("extreme aspect ratio")
    return tuple(out)


def twin_elsewhere(hashes: list[int], groups: list, threshold: int | None = None) -> np.ndarray:
    """For each image, whether an image of another group (another label, the other side of a
    split) lies within `threshold` bits of its 64-bit pHash (the crawl's near-duplicate rule,
    default PHASH_THRESHOLD), computed in row blocks to bound memory."""
    threshold = PHASH_THRESHOLD if threshold is None else threshold
    h = np.array(hashes, dtype=np.uint64)
    group = np.unique(np.array(groups), return_inverse=True)[1]
    found = np.zeros(len(h), dtype=bool)
    for start in range(0, len(h), 256):
        xor = h[start:start + 256, None] ^ h[None, :]
        bits = np.unpackbits(xor.view(np.uint8).reshape(*xor.shape, 8), axis=-1).sum(-1)
        other = group[start:start + 256, None] != group[None, :]
        found[start:start + 256] = ((bits <= threshold) & other).any(1)
    return found


def leaks(hashes: list[int], in_valid: list[bool], threshold: int | None = None) -> np.ndarray:
    """For each image, whether a near-duplicate lies on the other side of the train /
    validation split (`twin_elsewhere` with the split as the groups)."""
    return twin_elsewhere(hashes, [bool(v) for v in in_valid], threshold)
