"""Faithfulness of saliency maps: pointing game and RISE-style deletion / insertion AUC."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def evaluate(model_dir, boxes_json, methods: Sequence[str] = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam"),
             image_root=None, steps: int = 16, bs: int = 32, limit: int | None = None,
             valid_only: bool = False) -> dict[str, dict]:
    """Score each CAM method on images with known boxes: pointing game, deletion and insertion
    AUC (mean over images). `boxes_json` maps image paths relative to `image_root` (default:
    the JSON's folder) to [x0, y0, x1, y1] in original-image pixels. The target is the true class
    when the image's folder names one, else the prediction. `valid_only` keeps the images the
    run held out for validation (valid.json), so training images do not flatter the scores."""
    import json
    from pathlib import Path

    from camkit.cam import make_cam, peak_xy
    from camkit.errors import CamkitError
    from camkit.images import open_rgb
    from camkit.train import load

    boxes_json = Path(boxes_json)
    try:
        boxes = json.loads(boxes_json.read_text())
    except FileNotFoundError:
        raise CamkitError(f"boxes file '{boxes_json}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CamkitError(f"boxes file '{boxes_json}' is not valid JSON") from None
    if not isinstance(boxes, dict) or not all(isinstance(v, list) and len(v) == 4 for v in boxes.values()):
        raise CamkitError(f"boxes file '{boxes_json}' must map image paths to [x0, y0, x1, y1]")
    root = Path(image_root) if image_root else boxes_json.parent
    items = sorted(boxes.items())
    if valid_only:
        valid_json = Path(model_dir) / "valid.json"
        if not valid_json.exists():
            raise CamkitError(f"'{model_dir}' has no valid.json to take the held-out images from")
        held_out = {str(Path(v["file"]).resolve()) for v in json.loads(valid_json.read_text())}
        items = [(rel, box) for rel, box in items if str((root / rel).resolve()) in held_out]
    items = items[:limit]
    if not items:
        raise CamkitError("no images to evaluate")
    loaded = load(model_dir)
    results: dict[str, dict] = {}
    for method in methods:
        extractor = make_cam(method, loaded.model)
        hits, dels, ins, correct = [], [], [], 0
        with extractor:
            for start in range(0, len(items), bs):
                chunk = items[start:start + bs]
                images = [open_rgb(root / rel) for rel, _ in chunk]
                x = loaded.preprocess(images)
                labels = [Path(rel).parts[0] if len(Path(rel).parts) > 1 else None for rel, _ in chunk]
                with torch.no_grad():
                    pred = loaded.model(x).argmax(1)
                target = torch.tensor([loaded.classes.index(lab) if lab in loaded.classes else int(p)
                                       for lab, p in zip(labels, pred)], device=x.device)
                correct += int((pred == target).sum())
                maps = extractor(x, target)
                for m, img, (_, box) in zip(maps, images, chunk):
                    hits.append(point_in_box(peak_xy(m, loaded.size, *img.size), box))
                d, i, _, _ = deletion_insertion(loaded.model, x, maps, target, steps=steps)
                dels += d.tolist()
                ins += i.tolist()
        results[method] = {"images": len(hits), "accuracy": round(correct / max(1, len(hits)), 4),
                           "pointing_game": round(sum(hits) / max(1, len(hits)), 4),
                           "deletion_auc": round(sum(dels) / max(1, len(dels)), 4),
                           "insertion_auc": round(sum(ins) / max(1, len(ins)), 4)}
    return results
