"""Faithfulness of saliency maps: pointing game, RISE-style deletion / insertion AUC, ROAD,
Average Drop / Increase in Confidence, the model-randomisation sanity check, and the box-free
absence-of-evidence signal (a class recognised by what is missing rather than what is there).

Formulas in, numbers out: `evaluate` (boxes) and `evaluate_run` (no boxes) apply them to a
run's images; `camkit.report` only reads the saved numbers. The perturbation metrics forward
all their perturbed images together (`target_probs`, through `scoring_model`'s BatchNorm-folded
twin), `evaluate_run` scores methods whose maps are numerically equal once (`same_maps`) and
ROAD's imputations are solved once per distinct mask (`Imputer`); the numbers equal the
per-image, per-step loops' within float tolerance (tests/test_metrics.py keeps those loops)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise, zip_longest
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit.choices import value
from camkit.errors import CamkitError
from camkit.files import confined, parse_json, read_text
from camkit.geometry import Grid, upsample

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


# ---------------------------------------------------------------- batched scoring

SCORE_BATCH = 112   # perturbed images per forward pass (resnet18 @ 128 px: 1.4x the rate of batch 28 here)
SAME_MAPS_ATOL = 1e-6   # two methods' [0, 1] maps closer than this everywhere are the same maps


def scoring_model(model: nn.Module, x: Tensor) -> Callable[[Tensor], Tensor]:
    """A faster twin of `model` for the metrics' many forward passes: BatchNorm folded into the
    convolutions before it (torch.fx's `fuse`) and channels-last weights and inputs (1.7x on
    resnet18 @ 128 px, batch 112, on a 2-core CPU; scripts/bench_cam_eval.py). Its logits on
    `x` are checked against the model's (within 1e-4 of their largest magnitude); a model fx
    cannot trace, or a mismatch, is used as it is. Maps are never taken from the twin."""
    from torch.fx.experimental.optimization import fuse

    try:
        twin = fuse(model.eval()).to(memory_format=torch.channels_last)
    except Exception:  # noqa: BLE001 - any untraceable model just runs as it is
        return model

    def score(batch: Tensor) -> Tensor:
        return twin(batch.contiguous(memory_format=torch.channels_last))

    with torch.no_grad():
        want, got = model(x), score(x)
    return score if torch.allclose(got, want, rtol=0, atol=1e-4 * float(want.abs().max().clamp_min(1))) else model


@torch.no_grad()
def target_probs(score: Callable[[Tensor], Tensor], pieces: Iterable[Tensor], target: Tensor,
                 batch: int = SCORE_BATCH) -> Tensor:
    """P(target | piece) for perturbed copies (b, C, H, W) of the same b images, forwarded
    `batch` images at a time across pieces (one pass per piece was the slow part of every
    metric): (len(pieces), b)."""
    out: list[Tensor] = []
    queue: list[Tensor] = []

    def flush() -> None:
        logits = score(torch.cat(queue))
        out.append(logits.softmax(1)[torch.arange(len(logits)), target.repeat(len(queue))].float())
        queue.clear()

    for piece in pieces:
        queue.append(piece)
        if len(queue) * len(target) >= batch:
            flush()
    if queue:
        flush()
    return torch.cat(out).view(-1, len(target)) if out else torch.empty(0, len(target))


def _auc(curve: Tensor) -> Tensor:
    """Trapezoid area under curves (B, steps+1) sampled evenly on [0, 1]."""
    return ((curve[:, 1:] + curve[:, :-1]) / 2).mean(1)


def _blur(x: Tensor, kernel: int) -> Tensor:
    """Box blur of side `kernel`, edges replicated: insertion's starting image."""
    pad = kernel // 2
    return F.avg_pool2d(F.pad(x, (pad,) * 4, mode="replicate"), kernel, stride=1)


class Ends(NamedTuple):
    """P(target | x), P(target | zeros) and P(target | blurred x): the curves' ends, which no
    map changes, so one evaluation of several methods computes them once."""
    x: Tensor
    zeros: Tensor
    blurred: Tensor


def curve_ends(score: Callable[[Tensor], Tensor], x: Tensor, target: Tensor, blur_kernel: int = 11) -> Ends:
    """The probabilities every map's deletion / insertion curve starts and ends at."""
    p = target_probs(score, (x, torch.zeros_like(x), _blur(x, blur_kernel)), target)
    return Ends(p[0], p[1], p[2])


@torch.no_grad()
def deletion_insertion(model: nn.Module | Callable[[Tensor], Tensor], x: Tensor, maps: Tensor, target: Tensor,
                       steps: int = 16, blur_kernel: int = 11, grid: Grid | None = None, ends: Ends | None = None
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RISE-style curves (Petsiuk et al. 2018) for a batch: returns (deletion AUC, insertion
    AUC, deletion curve, insertion curve), each per image.

    Deletion removes the most salient pixels first (replaced by zero, the dataset mean after
    normalisation) and a faithful map makes the target's probability drop fast (low AUC).
    Insertion adds them to a blurred copy and a faithful map makes it rise fast (high AUC).
    Step s keeps the top round(s * H * W / steps) pixels; step 0 and the last step do not
    depend on the map (`ends`, computed here when not given); the steps between are forwarded
    together, SCORE_BATCH images at a time."""
    b, _, h, w = x.shape
    saliency = upsample(maps, (h, w), grid).flatten(1)
    order = saliency.argsort(1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(b, -1))
    rank = rank.view(b, 1, h, w)
    blurred, zeros = _blur(x, blur_kernel), torch.zeros_like(x)
    ends = ends or curve_ends(model, x, target, blur_kernel)
    tops = [rank < round(s * h * w / steps) for s in range(1, steps)]
    # deletion: salient pixels -> zeros; insertion: salient pixels <- original over the blur
    inner = target_probs(model, [torch.where(t, zeros, x) for t in tops] + [torch.where(t, x, blurred) for t in tops],
                         target)
    deletion_curve = torch.stack([ends.x, *inner[:steps - 1], ends.zeros], 1)
    insertion_curve = torch.stack([ends.blurred, *inner[steps - 1:], ends.x], 1)
    return _auc(deletion_curve), _auc(insertion_curve), deletion_curve, insertion_curve


# ---------------------------------------------------------------- ROAD (Rong et al. 2022)

# the 8 neighbours' weights of ROAD's noisy linear imputation (pytorch-grad-cam metrics/road.py)
NEIGHBOURS = ((1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12),
              (0, -1, 1 / 6), (-1, -1, 1 / 12), (1, 0, 1 / 6), (-1, 0, 1 / 6))
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
SOLVE_UNKNOWNS = 250_000   # unknowns per batch of systems built together (bounds their memory)


def solve_imputations(images: np.ndarray, removed: np.ndarray) -> list[np.ndarray]:
    """The noise-free linear imputation of K images at once: images (K, C, H, W) float64,
    removed (K, H, W) bool; returns each image's removed pixels' values (C, n_k). Every removed
    pixel is the weighted mean of its in-image neighbours, v_i = sum_j w_ij v_j / sum_j w_ij
    (weights 1/6 side, 1/12 diagonal; removed neighbours are unknowns too): the K systems are
    built together, as one block-diagonal sparse matrix, and each block factorised on its own
    (one SuperLU call on the whole matrix was 5x slower than the blocks one by one). The
    negated matrix is symmetric and diagonally dominant (an M-matrix), so the factorisation
    needs no pivoting and a symmetric ordering (SuperLU's MMD on A + A^T): 1.5-5x faster than
    `spsolve`'s default here, the same values to 1e-10."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import splu

    k, c, h, w = images.shape
    gone = removed.reshape(-1)
    unknown = np.flatnonzero(gone)
    counts = removed.reshape(k, -1).sum(1)
    if len(unknown) == 0:
        return [np.zeros((c, 0)) for _ in range(k)]
    values = images.transpose(1, 0, 2, 3).reshape(c, -1)
    var = np.full(gone.size, -1)
    var[unknown] = np.arange(len(unknown))
    r, q = (unknown % (h * w)) // w, unknown % w
    rows, cols, vals = [np.arange(len(unknown))], [np.arange(len(unknown))], []
    diag, rhs = np.zeros(len(unknown)), np.zeros((len(unknown), c))
    for dr, dq, wt in NEIGHBOURS:
        rr, qq = r + dr, q + dq
        ok = (rr >= 0) & (rr < h) & (qq >= 0) & (qq < w)
        nb = unknown[ok] + dr * w + dq
        diag[ok] += wt
        known = ~gone[nb]
        rhs[np.flatnonzero(ok)[known]] -= wt * values[:, nb[known]].T
        rows.append(np.flatnonzero(ok)[~known])
        cols.append(var[nb[~known]])
        vals.append(np.full((~known).sum(), wt))
    vals.insert(0, -diag)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(len(unknown), len(unknown))).tocsc()
    ends = np.concatenate([[0], np.cumsum(counts)])
    return [np.zeros((c, 0)) if lo == hi else
            splu(a[lo:hi, lo:hi].tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0,
                 options={"SymmetricMode": True}).solve(rhs[lo:hi]).T for lo, hi in pairwise(ends)]


def impute_linear(x: Tensor, removed: Tensor, noise: float = 0.01, generator: torch.Generator | None = None
                  ) -> Tensor:
    """ROAD's noisy linear imputation of one image x (C, H, W): every removed pixel (removed:
    (H, W) bool) becomes the weighted mean of its in-image neighbours, v_i = sum_j w_ij v_j /
    sum_j w_ij (weights 1/6 side, 1/12 diagonal), solved jointly as one sparse linear system
    (removed neighbours are unknowns too; `solve_imputations`), plus N(0, noise^2). The removed
    region carries no shape of its own, so a model cannot read the removal mask itself (the
    "debias" of ROAD)."""
    gone = removed.cpu().numpy().astype(bool)
    if not gone.any():
        return x.clone()
    solved = solve_imputations(x.detach().cpu().double().numpy()[None], gone[None])[0]
    return _filled(x, gone, _noisy(torch.from_numpy(solved).to(x.dtype), noise, generator))


def _noisy(solved: Tensor, noise: float, generator: torch.Generator | None) -> Tensor:
    """Imputed values plus N(0, noise^2), drawn from `generator` in the order the images come."""
    return solved + noise * torch.randn(solved.shape, generator=generator, dtype=solved.dtype) if noise else solved


def _filled(x: Tensor, gone: np.ndarray, solved: Tensor) -> Tensor:
    """x (C, H, W) with its removed pixels (gone, (H, W) bool) replaced by `solved` (C, n)."""
    c, h, w = x.shape
    out = x.detach().cpu().reshape(c, -1).clone()
    out[:, torch.from_numpy(np.flatnonzero(gone.reshape(-1)))] = solved
    return out.reshape(c, h, w).to(x.device)


class Imputer:
    """ROAD's noise-free imputations of one batch's images, kept by (image, mask): methods whose
    masks are equal (the same maps, or the same pixels removed at some percentile) share one
    solve; new masks are built together (`solve_imputations`), SOLVE_UNKNOWNS unknowns at a time."""

    def __init__(self, x: Tensor):
        self.x = x
        self.images = x.detach().cpu().double().numpy()
        self.kept: dict[tuple[int, bytes], Tensor] = {}

    def solve(self, masks: list[tuple[int, np.ndarray]]) -> list[Tensor]:
        """Float values of each (image index, removed (H, W) bool) mask's removed pixels (C, n)."""
        keys = [(i, np.packbits(m).tobytes()) for i, m in masks]
        todo = list({k: (i, m) for k, (i, m) in zip(keys, masks) if k not in self.kept}.items())
        while todo:
            part, size = [], 0
            while todo and (not part or size + todo[0][1][1].sum() <= SOLVE_UNKNOWNS):
                part.append(todo.pop(0))
                size += part[-1][1][1].sum()
            solved = solve_imputations(self.images[[i for _, (i, _) in part]], np.stack([m for _, (_, m) in part]))
            for (key, _), values in zip(part, solved):
                self.kept[key] = torch.from_numpy(np.ascontiguousarray(values)).to(self.x.dtype)
        return [self.kept[k] for k in keys]


class RoadResult(NamedTuple):
    """Per image: ROAD's most-relevant-first and least-relevant-first scores (mean change of the
    target's probability over the percentiles), their combination (lerf - morf) / 2 (higher is
    more faithful), the unperturbed probability and the probability after removing the top
    (100 - p) % for each percentile p (B, len(percentiles))."""
    morf: Tensor
    lerf: Tensor
    combined: Tensor
    base: Tensor
    morf_probs: Tensor


@torch.no_grad()
def road(model: nn.Module | Callable[[Tensor], Tensor], x: Tensor, maps: Tensor, target: Tensor,
         percentiles: Sequence[float] = ROAD_PERCENTILES, noise: float = 0.01, seed: int = 0,
         grid: Grid | None = None, base: Tensor | None = None, imputer: Imputer | None = None) -> RoadResult:
    """ROAD (remove and debias, Rong et al. 2022), as pytorch-grad-cam's `ROADCombined`: for each
    percentile p, MoRF removes the pixels whose map value is >= the map's p-th percentile (the
    top 100 - p %), LeRF those whose value is <= its (100 - p)-th (the bottom 100 - p %), each
    imputed by `impute_linear`; a score is P(target | perturbed) - P(target | x), averaged over
    p. A faithful map makes MoRF negative and LeRF near 0: combined = (lerf - morf) / 2.
    The noise is drawn image by image, MoRF then LeRF, percentile by percentile, from one
    generator seeded with `seed`; the solves go through `imputer` (shared between methods of
    one batch) and the perturbed images are forwarded together. `base`: P(target | x) if known."""
    b, _, h, w = x.shape
    saliency = upsample(maps, (h, w), grid)
    base = target_probs(model, [x], target)[0] if base is None else base
    imputer = imputer or Imputer(x)
    masks = []
    for sign in (1.0, -1.0):     # MoRF, then LeRF
        ranked = sign * saliency
        for p in percentiles:
            threshold = torch.quantile(ranked.flatten(1), p / 100, dim=1)
            masks += [(i, m) for i, m in enumerate((ranked >= threshold[:, None, None]).cpu().numpy())]
    g = torch.Generator().manual_seed(seed)
    filled = [x[i].clone() if not m.any() else _filled(x[i], m, _noisy(v, noise, g))
              for (i, m), v in zip(masks, imputer.solve(masks))]
    probs = target_probs(model, [torch.stack(filled[k:k + b]) for k in range(0, len(filled), b)], target)
    morf_probs, lerf_probs = probs[:len(percentiles)].T, probs[len(percentiles):].T
    morf, lerf = morf_probs.mean(1) - base, lerf_probs.mean(1) - base
    return RoadResult(morf.cpu(), lerf.cpu(), ((lerf - morf) / 2).cpu(), base.cpu(), morf_probs.cpu())


# ---------------------------------------------------------------- Average Drop / Increase

@torch.no_grad()
def average_drop_increase(model: nn.Module | Callable[[Tensor], Tensor], x: Tensor, maps: Tensor, target: Tensor,
                          grid: Grid | None = None, base: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Grad-CAM++'s (Chattopadhay et al. 2018) per-image terms: the input is multiplied by its
    map (min-max scaled to [0, 1], upsampled; multiplying the normalised input, as
    pytorch-grad-cam's `CamMultImageConfidenceChange`, sends masked pixels to the dataset
    mean), Y = P(target | x) (`base` if known), O = P(target | x * map). Returns (drop,
    increase): drop = max(0, Y - O) / Y (Average Drop is its mean), increase = 1[O > Y]
    (Increase in Confidence is its mean). A map that keeps the evidence keeps the confidence:
    low drop."""
    b, _, h, w = x.shape
    m = upsample(maps, (h, w), grid)[:, None]
    flat = m.flatten(1)
    lo, hi = flat.min(1).values.view(b, 1, 1, 1), flat.max(1).values.view(b, 1, 1, 1)
    m = (m - lo) / (hi - lo).clamp_min(1e-8)
    y = target_probs(model, [x], target)[0] if base is None else base
    o = target_probs(model, [x * m], target)[0]
    return ((y - o).clamp_min(0) / y.clamp_min(1e-12)).cpu(), (o > y).float().cpu()


# ---------------------------------------------------------------- sanity check (Adebayo et al. 2018)

def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rank correlation of each pair of maps (B, h, w), ties given their average rank;
    0 where either map is constant (a map that became flat has changed completely)."""
    from scipy.stats import rankdata

    ra = torch.from_numpy(rankdata(a.flatten(1).double().cpu().numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.flatten(1).double().cpu().numpy(), axis=1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.norm(dim=1) * rb.norm(dim=1))
    return torch.where(den > 0, (ra * rb).sum(1) / den.clamp_min(1e-12), torch.zeros_like(den)).float()


RANDOMISED = ("head", "last stage")


def randomised_copies(model: nn.Sequential, seed: int = 0) -> list[tuple[str, nn.Module]]:
    """Cascading randomisation: a copy with the head re-initialised, then one with the head and
    the body's last stage (its last child that has parameters) re-initialised, each module
    through its own `reset_parameters` under a fixed seed."""
    import copy

    out, current = [], model
    for name in RANDOMISED:
        current = copy.deepcopy(current)
        stages = [m for m in current[0].children() if any(True for _ in m.parameters())]
        part = current[-1] if name == "head" else stages[-1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in part.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                if hasattr(m, "reset_running_stats"):
                    m.reset_running_stats()
        out.append((name, current.eval()))
    return out


# ---------------------------------------------------------------- absence of evidence

def retained_confidence(road_result: RoadResult, percentiles: Sequence[float] = ROAD_PERCENTILES,
                        at: float = 80) -> Tensor:
    """P(target | top (100 - at) % of the map removed) / P(target | x), per image, from ROAD's
    MoRF pass (clamped to [0, 1]). Near 1 means the place the map points at was not needed:
    the class is still recognised with it gone."""
    k = list(percentiles).index(at)
    return (road_result.morf_probs[:, k] / road_result.base.clamp_min(1e-12)).clamp(0, 1)


def read_boxes(boxes_json: str | Path) -> dict[str, list[float]]:
    """{relative image path: [x0, y0, x1, y1]} from a boxes file, validated."""
    boxes_json = Path(boxes_json)
    try:
        boxes = parse_json(read_text(boxes_json, "a boxes file"))
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

    methods = _check_methods(methods)
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

    pairs, dels, ins, hits, cls = [], [], [], [], []
    for batch in iter_explain(loaded, files, extractor, targets, bs, named={str(f) for f in files}):
        for r in batch.results:
            pairs.append((r.peak_xy, boxes[str(r.image)]))
            hits.append(int(r.probs.argmax()) == r.target)
            cls.append(r.target)
        d, i, _, _ = deletion_insertion(loaded.model, batch.x, batch.maps, batch.targets, steps=steps, grid=batch.grid)
        dels += d.tolist()
        ins += i.tolist()
    out = _summary(pairs, hits, dels, ins)
    out["per_class"] = {name: _summary(*([v for v, t in zip(vs, cls) if t == c] for vs in (pairs, hits, dels, ins)))
                        for c, name in enumerate(loaded.classes) if c in cls}
    return out


def _summary(pairs: list, hits: list[bool], dels: list[float], ins: list[float]) -> dict:
    """Mean accuracy, pointing game, deletion and insertion AUC of one group of images."""
    n = max(1, len(pairs))
    return {"images": len(pairs), "accuracy": round(sum(hits) / n, 4), "pointing_game": round(pointing_game(pairs), 4),
            "deletion_auc": round(sum(dels) / n, 4), "insertion_auc": round(sum(ins) / n, 4)}


# ---------------------------------------------------------------- faithfulness without boxes

SANITY_MAX = 0.5       # a map "changed" when its rank correlation with the trained model's is below this
ABSENCE_AT = 80        # the absence signal removes the top 100 - 80 = 20 % of the map
ABSENCE_MIN = 0.75     # flag a class whose confidence keeps >= 75 % with that region gone ...
ABSENCE_GAP = 0.4      # ... and 0.4 more than another class keeps (validated in scripts/bench_evidence.py)
TRUST_KEYS = ("deletion_auc", "insertion_auc", "road", "road_morf", "road_lerf", "average_drop",
              "increase_in_confidence", "retained_confidence", "sanity_head", "sanity_last_stage")


def run_images(model_dir, split: str = "valid") -> tuple[list[Path], list[int]]:
    """The run's own images and their class indices: the held-out ones (valid.json), or the
    training ones (the data root's class folders minus the held-out files), interleaved class
    by class so that a `limit` keeps every class."""
    from camkit.data import scan_class_folders
    from camkit.run import data_root, read_info, read_valid

    info = read_info(model_dir)
    valid = read_valid(model_dir, info)
    if split == "valid":
        if not valid:
            raise CamkitError(f"'{model_dir}' has no valid.json: give a boxes file, or --split train")
        pairs = [(v.file, info.classes.index(v.label)) for v in valid]
    elif split == "train":
        root = data_root(model_dir, info)
        held = {str(v.file.resolve()) for v in valid}
        names, per_class = scan_class_folders(root)
        pairs = [(f, info.classes.index(n)) for n, fs in zip(names, per_class) if n in info.classes
                 for f in fs if str(f.resolve()) not in held]
    else:
        raise CamkitError(f"--split must be valid or train, not '{split}'")
    if not pairs:
        raise CamkitError(f"no {split} images to evaluate for '{model_dir}'")
    by_class = [[p for p in pairs if p[1] == c] for c in range(len(info.classes))]
    ordered = [p for group in zip_longest(*by_class) for p in group if p is not None]
    return [f for f, _ in ordered], [c for _, c in ordered]


def evaluate_run(model_dir, methods: Sequence[str] = DEFAULT_METHODS, split: str = "valid", steps: int = 16,
                 limit: int | None = None, bs: int = 32, seed: int = 0,
                 percentiles: Sequence[float] = ROAD_PERCENTILES) -> dict:
    """Faithfulness of each CAM method on the run's own images, no boxes needed: deletion /
    insertion AUC, ROAD, Average Drop / Increase in Confidence, the randomisation sanity check
    (rank correlation of the maps with those of copies whose head, then also last stage, were
    re-initialised) and the confidence retained when the top 20 % of the map is removed, per
    method and per class; then `absence` (see `absence_of_evidence`). Targets are the true
    classes. `percentiles`: ROAD's (they must include 80, where the absence signal is read)."""
    from camkit.run import load

    methods = _check_methods(methods)
    if ABSENCE_AT not in percentiles:
        raise CamkitError(f"the ROAD percentiles must include {ABSENCE_AT}")
    if steps < 1 or bs < 1:
        raise CamkitError(f"--steps and --bs must be at least 1, not {steps} and {bs}")
    if limit is not None and limit < 1:
        raise CamkitError(f"--limit must be at least 1, not {limit}")
    split = value(split)
    files, targets = run_images(model_dir, split)
    files, targets = files[:limit], targets[:limit]
    if not files:
        raise CamkitError("no images to evaluate")
    loaded = load(model_dir)
    copies = randomised_copies(loaded.model, seed)
    results, twins = _trust_all(loaded, methods, copies, files, targets, steps, bs, seed, tuple(percentiles))
    return {"split": split, "images": len(files), "methods": results, "same_maps": twins,
            "absence": absence_of_evidence(results, loaded.classes)}


def _check_methods(methods: Sequence[str]) -> list[str]:
    from camkit.cam import METHODS

    methods = [value(m) for m in methods]
    if not methods:
        raise CamkitError("no CAM method to evaluate; e.g. --methods cam,gradcam")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CamkitError(f"unknown method '{unknown[0]}'; choose from {', '.join(METHODS)}")
    return methods


def _trust_all(loaded, methods: list[str], copies: list[tuple[str, nn.Module]], files: list[Path],
               targets: list[int], steps: int, bs: int, seed: int, percentiles: tuple[float, ...]
               ) -> tuple[dict[str, dict], dict[str, str]]:
    """Every method's per-image numbers over `files`, averaged per method and per class, and
    {method: the earlier method whose maps it equals on every image}. Images are decoded once;
    each batch's maps are taken with every method (on the model and its randomised copies), and
    the perturbation metrics run once per distinct set of maps (`trust_rows_many`)."""
    from camkit.cam import make_cam
    from camkit.explain import iter_explain

    rows: dict[str, list[dict]] = {m: [] for m in methods}
    same: dict[str, str | None] = {}
    score = None
    first, *others = methods
    for batch in iter_explain(loaded, files, make_cam(first, loaded.model), targets, bs, named={str(f) for f in files}):
        maps = {first: batch.maps, **_more_maps(loaded.model, others, batch.x, [int(t) for t in batch.targets])}
        score = score or scoring_model(loaded.model, batch.x)
        found, twins = trust_rows_many(loaded.model, maps, copies, batch.x, batch.targets, steps, seed, percentiles,
                                       batch.grid, score)
        for m in methods:
            rows[m] += found[m]
            same[m] = twins.get(m) if same.get(m, twins.get(m)) == twins.get(m) else None
    return ({m: summarize_trust(rows[m], loaded.classes) for m in methods},
            {m: twin for m, twin in same.items() if twin is not None})


def _more_maps(model: nn.Module, methods: list[str], x: Tensor, targets: list[int]) -> dict[str, Tensor]:
    """Each method's maps of batch x for `targets`, as `iter_explain` takes them."""
    from camkit.cam import make_cam

    return {m: make_cam(m, model)(x, targets) for m in methods}


def same_maps(maps: dict[str, Sequence[Tensor]], atol: float = SAME_MAPS_ATOL) -> dict[str, str]:
    """{method: the first earlier method whose maps equal its own}: each method's maps (one
    tensor per model: trained, then each randomised copy) compared numerically, within `atol`
    everywhere (maps are in [0, 1]). On a CAM head, Grad-CAM and XGrad-CAM equal the exact CAM
    this way; they are found, never assumed."""
    twins: dict[str, str] = {}
    names = list(maps)
    for k, m in enumerate(names):
        for rep in names[:k]:
            if rep not in twins and all(a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=0, atol=atol)
                                        for a, b in zip(maps[m], maps[rep], strict=True)):
                twins[m] = rep
                break
    return twins


def trust_rows(model: nn.Module, method: str, copies: list[tuple[str, nn.Module]], x: Tensor, maps: Tensor,
               target: Tensor, steps: int = 16, seed: int = 0,
               percentiles: Sequence[float] = ROAD_PERCENTILES, grid: Grid | None = None) -> list[dict]:
    """Every box-free number of one batch, one dict per image (see `trust_rows_many`)."""
    return trust_rows_many(model, {method: maps}, copies, x, target, steps, seed, percentiles, grid)[0][method]


def _copy_maps(method: str, copies: list[tuple[str, nn.Module]], x: Tensor, target: Tensor) -> list[Tensor]:
    from camkit.cam import make_cam

    return [make_cam(method, c)(x, target).cpu() for _, c in copies]


def trust_rows_many(model: nn.Module, maps: dict[str, Tensor], copies: list[tuple[str, nn.Module]], x: Tensor,
                    target: Tensor, steps: int = 16, seed: int = 0, percentiles: Sequence[float] = ROAD_PERCENTILES,
                    grid: Grid | None = None, score: Callable[[Tensor], Tensor] | None = None
                    ) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Every box-free number of one batch for several methods' maps, one dict per image and
    method: its class, whether the model gets it right, deletion / insertion AUC, ROAD, the
    Average Drop / Increase terms, the confidence retained without the map's top 20 % (correct
    images only, else None) and the rank correlation of its map with each randomised copy's map
    for the same target. Methods whose maps are the same on the model and on every copy
    (`same_maps`) are scored once and share the rows (returned as the second value); the
    probabilities no map changes are computed once, ROAD's solves are shared where masks are
    equal, and the forward passes go through `score` (default `scoring_model`)."""
    score = score or scoring_model(model, x)
    copied = {m: _copy_maps(m, copies, x, target) for m in maps}
    twins = same_maps({m: [maps[m].cpu(), *copied[m]] for m in maps})
    ends, imputer = curve_ends(score, x, target), Imputer(x)
    with torch.no_grad():
        correct = (score(x).argmax(1) == target).cpu()
    out = {}
    for m in (m for m in maps if m not in twins):
        d, i, _, _ = deletion_insertion(score, x, maps[m], target, steps=steps, grid=grid, ends=ends)
        rr = road(score, x, maps[m], target, percentiles, seed=seed, grid=grid, base=ends.x, imputer=imputer)
        drop, inc = average_drop_increase(score, x, maps[m], target, grid, base=ends.x)
        sims = [rank_correlation(maps[m].cpu(), c) for c in copied[m]]
        kept = retained_confidence(rr, percentiles, at=ABSENCE_AT)
        out[m] = [{"class": int(target[k]), "correct": bool(correct[k]), "deletion_auc": float(d[k]),
                   "insertion_auc": float(i[k]), "road": float(rr.combined[k]), "road_morf": float(rr.morf[k]),
                   "road_lerf": float(rr.lerf[k]), "average_drop": float(drop[k]),
                   "increase_in_confidence": float(inc[k]),
                   "retained_confidence": float(kept[k]) if correct[k] else None,
                   "sanity_head": float(sims[0][k]), "sanity_last_stage": float(sims[1][k])} for k in range(len(x))]
    return {m: [dict(r) for r in out[twins.get(m, m)]] for m in maps}, twins


def summarize_trust(rows: list[dict], classes: Sequence[str]) -> dict:
    """Per-image rows (`trust_rows`) -> the method's means, its sanity verdict (both rank
    correlations below SANITY_MAX) and the same means per class."""
    out = _trust_means(rows)
    out["sanity_passed"] = bool(max(out["sanity_head"], out["sanity_last_stage"]) < SANITY_MAX)
    out["per_class"] = {name: _trust_means([r for r in rows if r["class"] == c])
                        for c, name in enumerate(classes) if any(r["class"] == c for r in rows)}
    return out


def _trust_means(rows: list[dict]) -> dict:
    """Images, accuracy and the mean of every TRUST_KEYS number (retained confidence over the
    correctly classified images only; NaN when there are none)."""
    out = {"images": len(rows), "accuracy": round(sum(r["correct"] for r in rows) / max(1, len(rows)), 4)}
    for key in TRUST_KEYS:
        vals = [r[key] for r in rows if r[key] is not None]
        out[key] = round(sum(vals) / len(vals), 4) if vals else float("nan")
    return out


def absence_of_evidence(results: dict[str, dict], classes: Sequence[str]) -> dict:
    """The box-free signal of a class recognised by the absence of the others. For each class,
    the confidence its correctly classified images keep when the top 20 % of the map is removed
    (ROAD imputation), taken for the method whose removal hurts most (the lowest): if even the
    most faithful map's region can go without the class dropping, nothing in the image is that
    class's evidence. `flagged`: the classes keeping >= ABSENCE_MIN (validated on boxed sets in
    scripts/bench_evidence.py against removing the object itself, where boxes are known) and
    >= ABSENCE_GAP above the class that keeps least: a class that keeps its confidence while
    another loses it is decided by that other class's object."""
    per_class = {}
    for name in classes:
        scores = [(r["per_class"][name]["retained_confidence"], m) for m, r in results.items()
                  if name in r.get("per_class", {}) and math.isfinite(r["per_class"][name]["retained_confidence"])]
        if scores:
            score, method = min(scores)
            per_class[name] = {"score": round(score, 4), "method": method}
    low = min((v["score"] for v in per_class.values()), default=math.nan)
    flagged = [n for n, v in per_class.items() if v["score"] >= ABSENCE_MIN and v["score"] - low >= ABSENCE_GAP]
    return {"threshold": ABSENCE_MIN, "gap": ABSENCE_GAP, "per_class": per_class, "flagged": flagged}


def rank_methods(result: dict) -> list[str]:
    """Methods of an `evaluate_run` result, most trustworthy first: those that pass the sanity
    check before those that fail it (their maps do not depend on what the model learnt), then by
    ROAD (higher: removing what the map points at costs the class more than removing the
    rest), NaN last."""
    def key(name: str) -> tuple:
        r = result["methods"][name]
        road_ = r["road"] if math.isfinite(r["road"]) else -math.inf
        return (not r["sanity_passed"], -road_, name)

    return sorted(result["methods"], key=key)
