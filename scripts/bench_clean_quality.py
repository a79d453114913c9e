"""The thresholds of camkit.data.quality, measured: the measures of real clip art (openclipart-png,
tests/realdata.py's allowed categories) against generated bad images.

    python scripts/bench_clean_quality.py [--n 1500] [--seed 0]

Prints, per measure, the real images' percentiles (0.1, 0.2, 1, 5, 50 %), the share of real
images each threshold flags (false findings: a clip-art set is clean of these problems,
bar the odd banner), and the range of the generated bad images (all of which must be flagged):
blank images in 8 colours, near-constant noise (grey-level std 0.3-1.5), a 1-6 px dot on
200-400 px transparent canvases, drawings with aspect 1:6 to 1:12. cleanvision's own defaults
are shown beside (its low-information check: entropy < 3 bits; odd aspect: < 0.35).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def bad_images(rng: np.random.Generator) -> dict[str, list[Image.Image]]:
    blank = [Image.new("RGB", (120, 90), tuple(int(v) for v in rng.integers(0, 256, 3))) for _ in range(8)]
    noisy = [Image.fromarray(np.clip(rng.normal(rng.uniform(30, 220), s, (96, 96, 3)), 0, 255).astype(np.uint8))
             for s in np.linspace(0.3, 1.5, 8)]
    tiny = []
    for side, dot in zip(np.linspace(200, 400, 8).astype(int), np.linspace(1, 6, 8).astype(int)):
        img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        x, y = (int(v) for v in rng.integers(10, side - 10, 2))
        ImageDraw.Draw(img).rectangle([x, y, x + dot, y + dot], fill=(200, 30, 30, 255))
        tiny.append(img)
    wide = []
    for r in np.linspace(6, 12, 8):
        img = Image.new("RGB", (int(60 * r), 60), "white")
        ImageDraw.Draw(img).rectangle([10, 10, int(60 * r) - 10, 50], fill=(20, 90, 160))
        wide.append(img if rng.random() < 0.5 else img.rotate(90, expand=True))
    return {"blank": blank, "near-constant": noisy, "tiny content": tiny, "extreme aspect": wide}


def decoded(img: Image.Image, tmp: Path):
    from camkit.core.images import open_rgb

    img.save(tmp / "x.png")
    return open_rgb(tmp / "x.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from realdata import CATEGORIES, ClipClass

    from camkit.data import quality
    from camkit.errors import CamkitError
    from camkit.core.images import open_rgb

    files = [f for c in CATEGORIES for f in ClipClass(c, c).all_files()]
    random.Random(a.seed).shuffle(files)
    real, entropy = [], []
    for f in files[: a.n]:
        try:
            img = open_rgb(f)
        except CamkitError:
            continue
        real.append(quality.measure(img))
        entropy.append(img.convert("L").entropy())
    spread, aspect, content = (np.array([getattr(m, k) for m in real]) for k in ("spread", "aspect", "content"))
    print(f"# bench_clean_quality: {len(real)} openclipart images of the allowed categories (seed {a.seed})")
    for name, v, thr in (("spread", spread, quality.MIN_SPREAD), ("aspect", aspect, quality.MIN_ASPECT),
                         ("content", content, quality.MIN_CONTENT)):
        pct = np.percentile(v, [0.1, 0.2, 1, 5, 50])
        print(f"{name:8} real percentiles 0.1/0.2/1/5/50 %: {' / '.join(f'{x:.4g}' for x in pct)}; "
              f"threshold {thr}: flags {(v < thr).mean():.2%} of the real images")
    print(f"cleanvision defaults on the same images: low information (entropy < 3 bits) flags "
          f"{(np.array(entropy) < 3).mean():.1%}, odd aspect (< 0.35) flags {(aspect < 0.35).mean():.2%}")
    rng = np.random.default_rng(a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        for kind, images in bad_images(rng).items():
            ms = [quality.measure(decoded(im, Path(tmp))) for im in images]
            found = [quality.findings(m) for m in ms]
            print(f"generated {kind:15}: spread {min(m.spread for m in ms):.3g}-{max(m.spread for m in ms):.3g}, "
                  f"aspect {min(m.aspect for m in ms):.3g}-{max(m.aspect for m in ms):.3g}, content "
                  f"{min(m.content for m in ms):.3g}-{max(m.content for m in ms):.3g}; flagged "
                  f"{sum(bool(f) for f in found)}/{len(found)}")


if __name__ == "__main__":
    main()
