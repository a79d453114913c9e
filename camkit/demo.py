"""`camkit demo`: the whole pipeline offline, on data shipped in the repository.

Fashion-MNIST items (two classes) are pasted at random places on noisy 64-px canvases, so
the label is decidable only from the item and a good heatmap must find it. A ResNet-18 with
output stride 8 (8x8 maps instead of 2x2) is trained from scratch with the CAM head, then the
held-out images are explained with exact CAM and scored by the pointing game.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from camkit.errors import CamkitError

DEMO_CLASSES = ("trouser", "bag")
MIN_ACCURACY = 0.90


@dataclass
class DemoResult:
    images: str
    run: str
    cams: str
    report: str | None
    valid_accuracy: float
    pointing_game: float
    train_seconds: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def demo(out: str | Path = "demo", classes: tuple[str, ...] = DEMO_CLASSES, n_per_class: int = 200,
         canvas: int = 64, arch: str = "resnet18", stride: int = 8, epochs: int = 5, bs: int = 32,
         seed: int = 0, quiet: bool = False) -> DemoResult:
    """Build the dataset, train, explain the held-out images, score the maps, write a report."""
    from camkit.data import make_canvas_folder
    from camkit.explain import cam
    from camkit.metrics import pointing_game
    from camkit.report import report
    from camkit.run import read_valid
    from camkit.train import train

    out = Path(out)
    images = out / "images"
    if images.exists():
        if not (images / "boxes.json").exists():
            raise CamkitError(f"'{images}' exists and is not a camkit demo dataset; choose another --out")
        shutil.rmtree(images)  # the demo's own generated canvases (boxes.json marks them)
    boxes = make_canvas_folder(images, list(classes), n_per_class, canvas=canvas,
                               item_range=(canvas * 5 // 16, canvas * 15 // 32), seed=seed)
    result = train(images, arch=arch, epochs=epochs, size=canvas, bs=bs, seed=seed, out=out / "run",
                   pretrained=False, stride=stride, overwrite=True, quiet=quiet)
    cams_dir = out / "cams"
    explanations = cam([v.file for v in read_valid(out / "run")], model=out / "run", out=cams_dir, quiet=quiet)
    hits = pointing_game([(e.peak_xy, boxes[Path(e.image).relative_to(images.resolve()).as_posix()])
                          for e in explanations])
    report_path = report(out / "run", cams=cams_dir)
    res = DemoResult(images=str(images), run=str(out / "run"), cams=str(cams_dir), report=str(report_path),
                     valid_accuracy=result.valid_accuracy, pointing_game=round(hits, 4),
                     train_seconds=result.train_seconds)
    if result.valid_accuracy < MIN_ACCURACY:
        raise CamkitError(f"demo reached only {result.valid_accuracy:.1%} held-out accuracy "
                          f"(expected at least {MIN_ACCURACY:.0%}); outputs are in '{out}'")
    return res
