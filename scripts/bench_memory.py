"""Peak memory of drawing a CAM on a huge image: camkit vs torchcam's `overlay_mask`, one run.

    python scripts/bench_memory.py [--side 9400]

A `--side` x `--side` PNG (a few hundred KB: flat grey with one bright block) is decoded the
same way in every measurement (camkit's guarded `open_rgb`), then a 4x4 map is drawn over it:
- torchcam 0.5 `overlay_mask(img, mask)`: the anchor, drawn at the image's full resolution;
- camkit `render.overlay(img, map)`: capped at 2048 px on the longer side, float32;
- `camkit cam huge.png --model RUN` end to end (a tiny run trained first), for the whole command.
Each runs in a fresh process; the figure is that process's peak resident memory (ru_maxrss)
minus the peak after decoding alone, i.e. what drawing adds. Prints a table and the ratio
torchcam / camkit (goal: the drawing costs a bounded amount, independent of the image size).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

STEP = r"""
import json, resource, sys
import numpy as np, torch
from camkit.core.images import open_rgb
img = open_rgb(sys.argv[2])
decoded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cam_map = torch.rand(4, 4)
if sys.argv[1] == "camkit":
    from camkit.core.render import overlay
    heat, over = overlay(img, cam_map)
    size = over.size
elif sys.argv[1] == "torchcam":
    from PIL import Image
    from torchcam.utils import overlay_mask
    over = overlay_mask(img, Image.fromarray(cam_map.numpy(), mode="F"), alpha=0.5)
    size = over.size
else:
    size = img.size
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"decoded_mb": decoded / 1024, "peak_mb": peak / 1024, "size": size}))
"""


def measure(kind: str, image: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", STEP, kind, str(image)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def whole_command(image: Path, tmp: Path) -> float:
    """Peak RSS (MB) of `camkit cam` on the huge image, in its own process."""
    from camkit.data.folders import make_canvas_folder
    from camkit.train.loop import train

    make_canvas_folder(tmp / "data", ["trouser", "bag"], 12, canvas=32, item_range=(12, 16))
    train(tmp / "data", arch="resnet18", epochs=1, size=32, bs=8, out=tmp / "run", pretrained=False, quiet=True)
    code = ("import resource, sys; from camkit.explain import cam; "
            f"cam([{str(image)!r}], model={str(tmp / 'run')!r}, out={str(tmp / 'cams')!r}, quiet=True); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=9400)
    a = p.parse_args()
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pixels = np.full((a.side, a.side), 90, np.uint8)
        pixels[a.side // 10:a.side // 5, a.side // 2:a.side * 3 // 4] = 255
        image = tmp / "huge.png"
        Image.fromarray(pixels).save(image)
        del pixels
        rows = {kind: measure(kind, image) for kind in ("decode only", "torchcam", "camkit")}
        command_mb = whole_command(image, tmp)
    base = rows["decode only"]["peak_mb"]
    print(f"{a.side}x{a.side} PNG; decoded RGB = {a.side * a.side * 3 / 2**20:.0f} MB")
    print(f"{'drawing':<34} {'output size':>14} {'peak MB':>9} {'added by drawing':>17}")
    for kind, r in rows.items():
        print(f"{kind:<34} {'x'.join(map(str, r['size'])):>14} {r['peak_mb']:>9.0f} {r['peak_mb'] - base:>17.0f}")
    print(f"{'camkit cam (whole command)':<34} {'':>14} {command_mb:>9.0f}")
    added = {k: max(1.0, rows[k]["peak_mb"] - base) for k in ("torchcam", "camkit")}
    print(f"ratio torchcam / camkit (memory added by drawing): {added['torchcam'] / added['camkit']:.1f}x")


if __name__ == "__main__":
    main()
