"""Faithfulness of saliency maps: pointing game and RISE-style deletion / insertion AUC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit.choices import value
from camkit.errors import CamkitError
from camkit.files import confined

DEFAULT_METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam")


def point_in_box(xy: Sequence[int], box: Sequence[float]) -> bool:
    """Whether pixel (x, y) lies in [x0, x1) x [y0, y1)."""
    x, y = xy
    x0, y0, x1, y1 = box
    return x0 <= x < x1 and y0 <= y < y1


def pointing_game(pairs: Sequence[tuple[Sequence[int], Sequence[float]]]) -> float:
    """Fraction of (peak_xy, box) pairs whose peak falls inside the box (Zhang et al. 2016)."""
    if not pairs:
        return float("nan")
    return sum(point_in_box(p, b) for p, b in pairs) / len(pairs)


def _auc(curve: Tensor) -> Tensor:
    """Trapezoid area under curves (B, steps+1) sampled evenly on [0, 1]."""
    return ((curve[:, 1:] + curve[:, :-1]) / 2).mean(1)


@torch.no_grad()
def deletion_insertion(model: nn.Module, x: Tensor, maps: Tensor, target: Tensor, steps: int = 16,
                       blur_kernel: int = 11) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RISE-style curves (Petsiuk et al. 2018) for a batch: returns (deletion AUC, insertion
    AUC, deletion curve, insertion curve), each per image.

    Deletion removes the most salient pixels first (replaced by zero, the dataset mean after
    normalisation) and a faithful map makes the target's probability drop fast (low AUC).
    Insertion adds them to a blurred copy and a faithful map makes it rise fast (high AUC)."""
    b, _, h, w = x.shape
    saliency = F.interpolate(maps[:, None].float(), size=(h, w), mode="bilinear", align_corners=False).flatten(1)
    order = saliency.argsort(1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(b, -1))
    rank = rank.view(b, 1, h, w)
    pad = blur_kernel // 2
    blurred = F.avg_pool2d(F.pad(x, (pad,) * 4, mode="replicate"), blur_kernel, stride=1)
    zeros = torch.zeros_like(x)
    deletion, insertion = [], []
    idx = torch.arange(b, device=x.device)
    for s in range(steps + 1):
        k = round(s * h * w / steps)
        top = rank < k
        for source, base, curve in ((x, zeros, deletion), (blurred, x, insertion)):
            # deletion: salient pixels -> zeros; insertion: salient pixels <- original over blur
            mixed = torch.where(top, base, source)
            curve.append(model(mixed).softmax(1)[idx, target])
    deletion_curve, insertion_curve = torch.stack(deletion, 1), torch.stack(insertion, 1)
    return _auc(deletion_curve), _auc(insertion_curve), deletion_curve, insertion_curve


def read_boxes(boxes_json: str | Path) -> dict[str, list[float]]:
    """{relative image path: [x0, y0, x1, y1]} from a boxes file, validated."""
    boxes_json = Path(boxes_json)
    try:
        boxes = json.loads(boxes_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CamkitError(f"boxes file '{boxes_json}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError):
        raise CamkitError(f"boxes file '{boxes_json}' is not valid JSON") from None
    if not isinstance(boxes, dict) or not all(
            isinstance(v, list) and len(v) == 4 and all(isinstance(c, (int, float)) for c in v) for v in boxes.values()):
        raise CamkitError(f"boxes file '{boxes_json}' must map image paths to [x0, y0, x1, y1]")
    return boxes


def evaluate(model_dir, boxes_json, methods: Sequence[str] = DEFAULT_METHODS, image_root=None, steps: int = 16,
             bs: int = 32, limit: int | None = None, valid_only: bool = False) -> dict[str, dict]:
    """Score each CAM method on images with known boxes: pointing game, deletion and insertion
    AUC (mean over images). `boxes_json` maps image paths relative to `image_root` (default:
    the JSON's folder) to [x0, y0, x1, y1] in original-image pixels. The target is the true class
    when the image's folder names one, else the prediction. `valid_only` keeps the images the
    run held out for validation (valid.json), so training images do not flatter the scores."""
    from camkit.cam import make_cam
    from camkit.run import load, read_valid

    from camkit.cam import METHODS

    methods = [value(m) for m in methods]
    if not methods:
        raise CamkitError("no CAM method to evaluate; e.g. --methods cam,gradcam")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CamkitError(f"unknown method '{unknown[0]}'; choose from {', '.join(METHODS)}")
    if steps < 1 or bs < 1:
        raise CamkitError(f"--steps and --bs must be at least 1, not {steps} and {bs}")
    root = Path(image_root) if image_root else Path(boxes_json).parent
    items = sorted(read_boxes(boxes_json).items())
    files = [confined(root, rel, "boxes file entry") for rel, _ in items]
    if valid_only:
        held_out = {str(v.file.resolve()) for v in read_valid(model_dir)}
        if not held_out:
            raise CamkitError(f"'{model_dir}' has no valid.json to take the held-out images from")
        kept = [(it, f) for it, f in zip(items, files) if str(f.resolve()) in held_out]
        items, files = [it for it, _ in kept], [f for _, f in kept]
    items, files = items[:limit], files[:limit]
    if not items:
        raise CamkitError("no images to evaluate")
    loaded = load(model_dir)
    labels = [Path(rel).parts[0] if len(Path(rel).parts) > 1 else None for rel, _ in items]
    targets = [loaded.classes.index(lab) if lab in loaded.classes else None for lab in labels]
    boxes = {str(f): box for f, (_, box) in zip(files, items)}
    return {m: _score(loaded, make_cam(m, loaded.model), files, targets, boxes, steps, bs) for m in methods}


def _score(loaded, extractor, files: list[Path], targets: list[int | None], boxes: dict[str, list[float]],
           steps: int, bs: int) -> dict:
    """One method's mean pointing game, deletion and insertion AUC over `files`."""
    from camkit.explain import iter_explain

    pairs, dels, ins, correct = [], [], [], 0
    for batch in iter_explain(loaded, files, extractor, targets, bs, named={str(f) for f in files}):
        for r in batch.results:
            pairs.append((r.peak_xy, boxes[str(r.image)]))
            correct += int(r.probs.argmax()) == r.target
        d, i, _, _ = deletion_insertion(loaded.model, batch.x, batch.maps, batch.targets, steps=steps)
        dels += d.tolist()
        ins += i.tolist()
    n = max(1, len(pairs))
    return {"images": len(pairs), "accuracy": round(correct / n, 4), "pointing_game": round(pointing_game(pairs), 4),
            "deletion_auc": round(sum(dels) / n, 4), "insertion_auc": round(sum(ins) / n, 4)}
