"""Faithfulness of saliency maps: pointing game, RISE-style deletion / insertion AUC, ROAD,
Average Drop / Increase in Confidence, the model-randomisation sanity check, and the confidence
retained without the map's top 20 % that the box-free absence-of-evidence signal reads.

Formulas only: tensors and arrays in, numbers out; nothing here reads a run, decodes an image
or reads a file. `camkit.evaluate` applies them to a run's images (`evaluate` with boxes,
`evaluate_run` without, `cam_eval` computes and saves) and holds the policy over the numbers;
its names are still importable from here. The perturbation metrics forward all their perturbed
images together (`target_probs`, through `scoring_model`'s BatchNorm-folded twin),
`trust_rows_many` scores methods whose maps are numerically equal once (`same_maps`) and ROAD's
imputations are solved once per distinct mask (`Imputer`); the numbers equal the per-image,
per-step loops' within float tolerance (tests/test_metrics.py keeps those loops)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from importlib import import_module
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit.cam import make_cam
from camkit.cam.base import normalise
from camkit.core.geometry import Grid, upsample
from camkit.faithfulness.imputation import NEIGHBOURS, solve_imputations  # noqa: F401 - ROAD's systems, still importable here
from camkit.faithfulness.scoring import ort_scorer

# run-level names that moved to camkit.evaluate; `from camkit.faithfulness.metrics import evaluate_run` still works
_MOVED = frozenset({"DEFAULT_METHODS", "SANITY_MAX", "ABSENCE_MIN", "ABSENCE_GAP", "TRUST_KEYS", "read_boxes",
                    "evaluate", "run_images", "evaluate_run", "summarize_trust", "absence_of_evidence",
                    "rank_methods"})


def __getattr__(name: str) -> Any:
    """A name that moved to camkit.evaluate, imported from there on first use (PEP 562): that
    module imports this one, so importing it here at the top would make a circle."""
    if name in _MOVED:
        return getattr(import_module("camkit.evaluate"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
# the ONNX export and session (1-4 s here) pay for themselves from about 5 images a batch (~150
# perturbed copies each, 1.4x faster): below ORT_MIN_IMAGES the torch twin scores
ORT_MIN_IMAGES = 8


def scoring_model(model: nn.Module, x: Tensor, onnx: bool = True) -> Callable[[Tensor], Tensor]:
    """A faster twin of `model` for the metrics' many forward passes: with onnxruntime installed
    (and `onnx`, and x of ORT_MIN_IMAGES or more), the model exported to ONNX and run there
    (`camkit.faithfulness.scoring.ort_scorer`: 1.4x the torch twin at batch 112 here); else, or when its
    logits disagree, BatchNorm folded into the convolutions before it (torch.fx's `fuse`) and
    channels-last weights and inputs (1.7x eager on resnet18 @ 128 px, batch 112, on a 2-core
    CPU; scripts/bench_cam_eval.py). Either twin's logits on `x` are checked against the
    model's (within 1e-4 of their largest magnitude); a model neither can take, or a mismatch,
    is used as it is. Maps are never taken from the twin."""
    from torch.fx.experimental.optimization import fuse

    ort = ort_scorer(model, x) if onnx and len(x) >= ORT_MIN_IMAGES else None
    if ort is not None:
        return ort
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

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
SOLVE_UNKNOWNS = 250_000   # unknowns per batch of systems built together (bounds their memory)


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

    def filled(self, masks: list[tuple[int, np.ndarray]], noise: float = 0.01,
               generator: torch.Generator | None = None) -> Tensor:
        """The images of `masks` (image index, removed (H, W) bool) with their removed pixels
        imputed plus N(0, noise^2), drawn mask by mask in order from `generator` (as
        `impute_linear` draws them): (len(masks), C, H, W) on the CPU, written in one masked
        assignment rather than one clone per mask."""
        values = self.solve(masks)
        out = self.x.detach().cpu()[[i for i, _ in masks]].clone()
        gone = torch.from_numpy(np.stack([m for _, m in masks]))
        noisy = [_noisy(v, noise, generator).T for (_, m), v in zip(masks, values) if m.any()]
        if noisy:
            out.permute(0, 2, 3, 1)[gone] = torch.cat(noisy)
        return out


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
        qs = torch.tensor([p / 100 for p in percentiles], dtype=ranked.dtype, device=ranked.device)
        for threshold in torch.quantile(ranked.flatten(1), qs, dim=1):   # one sort for every percentile
            masks += [(i, m) for i, m in enumerate((ranked >= threshold[:, None, None]).cpu().numpy())]
    filled = imputer.filled(masks, noise, torch.Generator().manual_seed(seed)).to(x.device)
    probs = target_probs(model, filled.split(b), target)
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
    m = normalise(upsample(maps, x.shape[-2:], grid))[:, None]
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


# ---------------------------------------------------------------- one batch, every box-free number

ABSENCE_AT = 80        # the absence signal removes the top 100 - 80 = 20 % of the map


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
