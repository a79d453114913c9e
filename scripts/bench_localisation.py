"""Pointing game per CAM method on a localisation set with known boxes, for models trained by
`camkit train` from scratch at output stride 32 (the default) and 8.

    python scripts/bench_localisation.py [--canvas 96] [--per-class 250] [--epochs 8]

Fashion-MNIST items (shipped sample, 4 classes) are pasted at random places on noisy canvases;
the box is the item's tight box. Only held-out images are scored. Chance level is the mean box
area / canvas area (printed). Score-CAM runs on the first --scorecam-limit images (it costs one
forward per channel).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--canvas", type=int, default=96)
    p.add_argument("--per-class", type=int, default=250)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--strides", default="32,8")
    p.add_argument("--classes", default="trouser,bag,sneaker,dress")
    p.add_argument("--scorecam-limit", type=int, default=40)
    p.add_argument("--out", default=None, help="keep the dataset and runs here")
    a = p.parse_args()

    from camkit.data.folders import make_canvas_folder
    from camkit.faithfulness.metrics import evaluate
    from camkit.train.run import save_cam_eval
    from camkit.train.loop import train

    root = Path(a.out or tempfile.mkdtemp(prefix="camkit-loc-"))
    images = root / "images"
    boxes = make_canvas_folder(images, a.classes.split(","), a.per_class, canvas=a.canvas,
                               item_range=(a.canvas * 5 // 16, a.canvas * 15 // 32), seed=0)
    chance = sum((b[2] - b[0]) * (b[3] - b[1]) for b in boxes.values()) / len(boxes) / a.canvas ** 2
    print(f"{len(boxes)} canvases of {a.canvas}px, {len(a.classes.split(','))} classes; "
          f"chance pointing = {chance:.3f}")
    for stride in map(int, a.strides.split(",")):
        start = time.perf_counter()
        run = root / f"run-s{stride}"
        r = train(images, arch=a.arch, epochs=a.epochs, size=a.canvas, bs=32, out=run, pretrained=False,
                  stride=stride, overwrite=True, quiet=True)
        print(f"\n{a.arch} stride {stride}: valid accuracy {r.valid_accuracy:.3f} ({r.n_valid} images), "
              f"trained in {time.perf_counter() - start:.0f} s")
        res = evaluate(run, images / "boxes.json", ["cam", "gradcam", "gradcam++", "xgradcam", "layercam"],
                       valid_only=True)
        res.update(evaluate(run, images / "boxes.json", ["scorecam"], valid_only=True, limit=a.scorecam_limit))
        save_cam_eval(run, res)
        print(f"{'method':<11} {'images':>6} {'pointing':>9} {'deletion':>9} {'insertion':>10}")
        for name, m in res.items():
            print(f"{name:<11} {m['images']:>6} {m['pointing_game']:>9.3f} {m['deletion_auc']:>9.3f} "
                  f"{m['insertion_auc']:>10.3f}")


if __name__ == "__main__":
    main()
