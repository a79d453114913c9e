"""Run-level evaluation of CAM methods: `cam_eval(run)` computes and saves what `camkit cam-eval`
shows, and `trust_table` lays out its rows for the command and the report alike.

    done = cam_eval("runs/pets")                   # no boxes: RUN/cam_trust.json
    done = cam_eval("runs/pets", "boxes.json")     # boxes: merged into RUN/cam_eval.json
    rank_methods(done.result)                      # most trustworthy first

This module reads runs, decodes their images (`camkit.explain.iter_explain`), takes the maps
(`camkit.cam`) and applies `camkit.faithfulness.metrics`' formulas to them; then the policy over the
numbers: per-method and per-class means, the sanity verdict, the absence-of-evidence signal
and the ranking. It never draws: `camkit.report` reads the saved result."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

from torch import Tensor, nn

from camkit.cam import check_method, make_cam
from camkit.core.choices import EvalSplit, choice, value
from camkit.core.files import confined, parse_json, read_text
from camkit.core.images import ImageFiles
from camkit.data.folders import scan_class_folders
from camkit.errors import CamkitError
from camkit.explain import iter_explain
from camkit.faithfulness.metrics import (ABSENCE_AT, ROAD_PERCENTILES, deletion_insertion, pointing_game,
                                         randomised_copies, scoring_model, trust_rows_many)
from camkit.train.run import (CAM_EVAL, CAM_TRUST, RunInfo, data_root, load, read_info, read_valid, save_cam_eval,
                              save_cam_trust)

DEFAULT_METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam")
SANITY_MAX = 0.5       # a map "changed" when its rank correlation with the trained model's is below this
ABSENCE_MIN = 0.75     # flag a class whose confidence keeps >= 75 % with the top 20 % of its map gone ...
ABSENCE_GAP = 0.4      # ... and 0.4 more than another class keeps (validated in scripts/bench_evidence.py)
TRUST_KEYS = ("deletion_auc", "insertion_auc", "road", "road_morf", "road_lerf", "average_drop",
              "increase_in_confidence", "retained_confidence", "sanity_head", "sanity_last_stage")


# ---------------------------------------------------------------- computing and saving

@dataclass(frozen=True)
class CamEval:
    """What `cam_eval` computed and where it went."""
    result: dict               # evaluate_run's result (no boxes) or evaluate's {method: scores} (boxes)
    path: Path                 # RUN/cam_trust.json (no boxes) or RUN/cam_eval.json (boxes)
    saved: bool                # False: an earlier evaluation of the same split over more images was kept
    kept: tuple[str, ...] = ()   # boxes: the methods whose earlier result over more images was kept


def cam_eval(run: str | Path, boxes: str | Path | None = None, methods: Sequence[str] = DEFAULT_METHODS, *,
             split: str = "valid", image_root: str | Path | None = None, steps: int = 16,
             limit: int | None = None, valid_only: bool = False, bs: int = 32) -> CamEval:
    """`camkit cam-eval` as a library call: evaluate the run's CAM methods and save the result.
    Without `boxes`: `evaluate_run` on the run's `split` images, saved to RUN/cam_trust.json
    unless it holds the same split over more images. With `boxes`: `evaluate`, merged per method
    into RUN/cam_eval.json, where an earlier result over more images is kept (`image_root` and
    `valid_only` apply here only)."""
    run = Path(run)
    if boxes is None:
        result = evaluate_run(run, methods, split=split, steps=steps, limit=limit, bs=bs)
        return CamEval(result, run / CAM_TRUST, save_cam_trust(run, result))
    results = evaluate(run, boxes, methods, image_root=image_root, steps=steps, bs=bs, limit=limit,
                       valid_only=valid_only)
    return CamEval(results, run / CAM_EVAL, True, tuple(save_cam_eval(run, results)))


def _check_methods(methods: Sequence[str]) -> list[str]:
    """The methods' names, each known (`camkit.cam.check_method`), at least one."""
    if not methods:
        raise CamkitError("no CAM method to evaluate; e.g. --methods cam,gradcam")
    return [check_method(m) for m in methods]


def _check_sizes(steps: int, bs: int, limit: int | None = None) -> None:
    """--steps and --bs (and --limit, when given) at least 1."""
    if steps < 1 or bs < 1:
        raise CamkitError(f"--steps and --bs must be at least 1, not {steps} and {bs}")
    if limit is not None and limit < 1:
        raise CamkitError(f"--limit must be at least 1, not {limit}")


# ---------------------------------------------------------------- with boxes

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
    methods = _check_methods(methods)
    _check_sizes(steps, bs)
    root = Path(image_root) if image_root else Path(boxes_json).parent
    items = sorted(read_boxes(boxes_json).items())
    files = [confined(root, rel, "boxes file entry") for rel, _ in items]
    loaded = load(model_dir)
    if valid_only:
        held_out = {str(v.file.resolve()) for v in read_valid(model_dir, loaded.info)}
        if not held_out:
            raise CamkitError(f"'{model_dir}' has no valid.json to take the held-out images from")
        kept = [(it, f) for it, f in zip(items, files) if str(f.resolve()) in held_out]
        items, files = [it for it, _ in kept], [f for _, f in kept]
    items, files = items[:limit], files[:limit]
    if not items:
        raise CamkitError("no images to evaluate")
    labels = [Path(rel).parts[0] if len(Path(rel).parts) > 1 else None for rel, _ in items]
    targets = [loaded.classes.index(lab) if lab in loaded.classes else None for lab in labels]
    boxes = {str(f): box for f, (_, box) in zip(files, items)}
    return {m: _score(loaded, make_cam(m, loaded.model), files, targets, boxes, steps, bs) for m in methods}


def _score(loaded, extractor, files: list[Path], targets: list[int | None], boxes: dict[str, list[float]],
           steps: int, bs: int) -> dict:
    """One method's mean pointing game, deletion and insertion AUC over `files`."""
    pairs, dels, ins, hits, cls = [], [], [], [], []
    for batch in iter_explain(loaded, ImageFiles.required(files), extractor, targets, bs):
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

def run_images(model_dir, split: str = "valid", info: RunInfo | None = None) -> tuple[list[Path], list[int]]:
    """The run's own images and their class indices: the held-out ones (valid.json), or the
    training ones (the data root's class folders minus the held-out files), interleaved class
    by class so that a `limit` keeps every class. `info`: the run's model.json if already read."""
    split = choice(EvalSplit, split, "split")
    info = info or read_info(model_dir)
    valid = read_valid(model_dir, info)
    if split == EvalSplit.valid:
        if not valid:
            raise CamkitError(f"'{model_dir}' has no valid.json: give a boxes file, or --split train")
        pairs = [(v.file, info.classes.index(v.label)) for v in valid]
    else:
        root = data_root(model_dir, info)
        held = {str(v.file.resolve()) for v in valid}
        names, per_class = scan_class_folders(root)
        pairs = [(f, info.classes.index(n)) for n, fs in zip(names, per_class) if n in info.classes
                 for f in fs if str(f.resolve()) not in held]
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
    classes. `percentiles`: ROAD's (they must include 80, where the absence signal is read).
    model.json is read once (the loaded model's, handed to `run_images`)."""
    methods = _check_methods(methods)
    if ABSENCE_AT not in percentiles:
        raise CamkitError(f"the ROAD percentiles must include {ABSENCE_AT}")
    _check_sizes(steps, bs, limit)
    split = value(split)
    loaded = load(model_dir)
    files, targets = run_images(model_dir, split, loaded.info)
    files, targets = files[:limit], targets[:limit]
    if not files:
        raise CamkitError("no images to evaluate")
    copies = randomised_copies(loaded.model, seed)
    results, twins = _trust_all(loaded, methods, copies, files, targets, steps, bs, seed, tuple(percentiles))
    return {"split": split, "images": len(files), "methods": results, "same_maps": twins,
            "absence": absence_of_evidence(results, loaded.classes)}


def _trust_all(loaded, methods: list[str], copies: list[tuple[str, nn.Module]], files: list[Path],
               targets: list[int], steps: int, bs: int, seed: int, percentiles: tuple[float, ...]
               ) -> tuple[dict[str, dict], dict[str, str]]:
    """Every method's per-image numbers over `files`, averaged per method and per class, and
    {method: the earlier method whose maps it equals on every image}. Images are decoded once;
    each batch's maps are taken with every method (on the model and its randomised copies), and
    the perturbation metrics run once per distinct set of maps (`trust_rows_many`)."""
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    same: dict[str, str | None] = {}
    score = None
    first, *others = methods
    for batch in iter_explain(loaded, ImageFiles.required(files), make_cam(first, loaded.model), targets, bs):
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
    return {m: make_cam(m, model)(x, targets) for m in methods}


# ---------------------------------------------------------------- policy over the numbers

def summarize_trust(rows: list[dict], classes: Sequence[str]) -> dict:
    """Per-image rows (`camkit.faithfulness.metrics.trust_rows`) -> the method's means, its sanity verdict
    (both rank correlations below SANITY_MAX) and the same means per class."""
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


@dataclass(frozen=True)
class TrustRow:
    """One row of the trust table: a method's overall numbers (`rank` set) or one class's."""
    rank: int | None           # the method's place in `rank_methods` on its overall row, else None
    method: str
    same_as: str | None        # the earlier method whose maps this one's equal ("same maps"), if any
    cls: str                   # "all" on the overall row, else the class
    scores: dict               # images, accuracy and the TRUST_KEYS means
    sanity_passed: bool        # the method's sanity verdict


def trust_table(result: dict) -> list[TrustRow]:
    """The trust table of an `evaluate_run` result, as `camkit cam-eval` prints it and the report
    shows it: per method in `rank_methods` order, its overall row, then one row per class."""
    same = result.get("same_maps", {})
    rows = []
    for rank, m in enumerate(rank_methods(result), 1):
        r = result["methods"][m]
        rows.append(TrustRow(rank, m, same.get(m), "all", r, r["sanity_passed"]))
        rows += [TrustRow(None, m, same.get(m), cls, c, r["sanity_passed"]) for cls, c in r["per_class"].items()]
    return rows
