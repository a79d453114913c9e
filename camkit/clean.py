"""Find and fix label noise in a run's dataset: rank every image by how suspicious its label
is, review the worst on an offline page, then apply (and undo) the decisions made there.

    suspects = rank("runs/pets")                     # every image, most suspicious first
    write_page(suspects, "runs/pets", "clean.html")  # thumbnails, CAM overlays, keep/delete/relabel
    apply("runs/pets", "decisions.json")             # moves only: DATA/_rejected/cleaned/, DATA/CLASS/
    undo("runs/pets")                                # every move logged in DATA/clean.jsonl, reversed

Without folds, the score is the loss under the folder's label (what fastai's `top_losses` sorts
by) under the run's own model, training images included: noise the model memorised looks clean
to it. With `folds=K` (camkit.train.folds) every image is scored by a model trained without it, and
cleanlab ranks and counts: `cleanlab.rank.get_label_quality_scores` (self-confidence, the
out-of-sample probability of the folder's label), `cleanlab.filter.find_label_issues`
(confident learning: how many images are likely mislabelled), and the fold model's
out-of-distribution score (cleanlab's OutOfDistribution on its features) for off-topic images,
which a two-class model often places confidently in the folder's class. Image-quality and
train/valid leakage checks come from camkit.data.quality. `save_ranking` writes an out-of-sample
ranking to RUN/clean_ranking.json (`clean --folds` does), where the app's Clean tab reads it
back (`read_ranking`). Nothing is ever deleted: a 'delete' moves
the file under `_rejected/cleaned/`, every move is one line of `clean.jsonl`, and `undo` moves
files back.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from camkit.core.choices import CleanSplit, choice, values
from camkit.core.distributed import gather, in_group, joined, shard
from camkit.core.files import (append_json_line, atomic_write, confined, ensure_writable_dir, free_name, move_aside,
                               parse_json, read_text, real_folder, refuse_inside_class_folder)
from camkit.core.images import REJECTED, is_dataset_image, open_rgb
from camkit.core.render import Style, fit_for_drawing, overlay, png_data_uri
from camkit.crawl.ledger import note_move
from camkit.crawl.verify import PHASH_THRESHOLD, phash
from camkit.data.folders import scan_class_folders
from camkit.data.quality import findings, leaks, measure, twin_elsewhere
from camkit.errors import CamkitError
from camkit.explain import explain
from camkit.predict import iter_scores
from camkit.train.folds import out_of_sample
from camkit.train.run import LoadedModel, as_loaded, data_root, read_info, read_valid, warn_if_unusable
from camkit.train.verdict import MARGIN

CLEAN_LOG = "clean.jsonl"
CLEANED = "cleaned"            # DATA/_rejected/cleaned/<rel>: where 'delete' moves a file
CONFIDENT = 0.6                # below this max probability an image is "low confidence"
OFF_TOPIC_ENTROPY = 0.9        # normalised entropy above this: no class fits ("off-topic?")
# A near-duplicate across classes is reported as a reason but adds nothing to the score: on
# scripts/bench_clean.py the crawl's pHash rule flags 24 of 632 canvases (18 of them clean, twins
# only by their shared noisy background), and a +1.0 bonus cut the recall of injected noise in
# the top 15 % from 90.6 % to 85.9 %.
DUPLICATE_BONUS = 0.0
# cleanlab Datalab's feature-outlier rule (OutlierIssueManager, threshold 0.37037): an image is
# an outlier when its kNN distance exceeds Q3 + (1 / 0.37037 - 1) x IQR of all the distances
OUTLIER_IQR = 1 / 0.37037 - 1
MARGIN_POINTS = 15             # camkit.train.verdict.MARGIN, in points, for the weak-folds warning


@dataclass
class Suspect:
    """One scored image: its label (the class folder), the model's prediction and probability,
    the loss under the label, why it looks suspicious ("" when nothing does) and the score
    the ranking sorts by (the loss, plus DUPLICATE_BONUS for a near-duplicate across classes;
    with folds, `suspicion` of the out-of-sample scores). With folds also: the fold the image
    was held out in, cleanlab's label quality and OOD score; always: image-quality findings."""
    image: Path
    rel: str
    label: str
    pred: str
    prob: float
    loss: float
    reason: str
    score: float
    fold: int | None = None
    label_quality: float | None = None
    ood: float | None = None
    quality: tuple[str, ...] = ()

    def record(self) -> dict:
        """The `--json` line."""
        out = {"image": str(self.image.resolve()), "label": self.label, "pred": self.pred,
               "prob": round(self.prob, 6), "loss": round(self.loss, 6), "reason": self.reason,
               "score": round(self.score, 6), "quality": list(self.quality)}
        if self.fold is not None:
            out.update(fold=self.fold, label_quality=round(float(self.label_quality), 6), ood=round(float(self.ood), 6))
        return out


@dataclass(frozen=True)
class Estimate:
    """How many images to review: cleanlab's confident-learning count of likely mislabelled
    images (`find_label_issues` on the out-of-sample probabilities) plus the images that are
    outliers to their fold model's training features (off-topic), without counting one twice."""
    to_review: int
    mislabelled: int
    off_topic: int
    folds: int
    epochs: int
    seconds: float
    accuracy: float = math.nan     # the fold models' out-of-sample accuracy on the folder labels
    baseline: float = math.nan     # always answering the larger class

    @property
    def weak(self) -> bool:
        """The fold models do not beat the constant answer by camkit.train.verdict's MARGIN: their
        ranking and count say little (label noise itself lowers this accuracy, by at most the
        noise rate)."""
        return not self.accuracy >= self.baseline + MARGIN

    def warning(self) -> str:
        return (f"the fold models' out-of-sample accuracy {self.accuracy:.0%} is not {MARGIN_POINTS} points above "
                f"always answering the larger class ({self.baseline:.0%}): the ranking and the estimate say little; "
                "train a stronger run (pretrained weights, more epochs) before trusting them")

    def record(self) -> dict:
        return {"estimate": {"to_review": self.to_review, "mislabelled": self.mislabelled,
                             "off_topic": self.off_topic, "folds": self.folds, "epochs_per_fold": self.epochs,
                             "seconds": round(self.seconds, 1), "accuracy": round(self.accuracy, 4),
                             "baseline": round(self.baseline, 4), "weak": self.weak}}


class Ranking(list):
    """The suspects, most suspicious first (a list), with the out-of-sample estimate of how
    many to review (`estimate`, None without folds)."""
    estimate: Estimate | None = None


# ---------------------------------------------------------------- ranking

def dataset_files(root: Path, classes: list[str], split: str, valid: set[Path]) -> list[tuple[Path, str]]:
    """(file, label) for every image under a class folder the run knows, restricted to `split`.
    A class folder the run was not trained on is skipped with a warning (no loss to compute)."""
    names, per_class = scan_class_folders(root)
    out = []
    for name, files in zip(names, per_class):
        if name not in classes:
            warnings.warn(f"skipping folder '{name}': not one of the run's classes", stacklevel=3)
            continue
        out += [(f, name) for f in files
                if split == "all" or (f.resolve() in valid) == (split == "valid")]
    if not out:
        raise CamkitError(f"no images of the run's classes in '{root}' for split '{split}'")
    return out


def near_duplicates(hashes: list[int], labels: list[str], threshold: int = PHASH_THRESHOLD) -> np.ndarray:
    """For each image, whether an image of another label lies within `threshold` bits of its
    64-bit pHash (the crawl's near-duplicate rule)."""
    return twin_elsewhere(hashes, labels, threshold)


def reasons(probs: np.ndarray, label: int, duplicate: bool) -> str:
    """Why one image looks suspicious, from its softmax row: "; "-joined, "" when nothing does."""
    p = np.clip(probs, 1e-12, 1.0)
    entropy = float(-(p * np.log(p)).sum() / math.log(len(p)))
    top = int(probs.argmax())
    why = []
    if top != label and probs[top] >= CONFIDENT:
        why.append("mislabelled?")
    if entropy > OFF_TOPIC_ENTROPY:
        why.append("off-topic?")
    elif probs[top] < CONFIDENT:
        why.append("low confidence")
    if duplicate:
        why.append("near-duplicate across classes")
    return "; ".join(why)


@in_group
def rank(run: str | Path | LoadedModel, data: str | Path | None = None, split: str = "all", bs: int = 64,
         device: str | None = None, folds: int | None = None, fold_epochs: int | None = None,
         cache: str | Path | None = None) -> Ranking:
    """Score every image of the run's dataset (training images included) and sort them, most
    suspicious first. `data` overrides the data root recorded in the run. Under torchrun each
    rank scores its block of the images; every rank then ranks the whole gathered set.

    `folds` K: K models on the run's recipe score every image out of sample (camkit.train.folds;
    `fold_epochs` overrides the run's epochs per fold, `cache` is camkit.data.cache's folder), and
    the ranking is `suspicion` of cleanlab's label quality and the OOD score, with the
    estimate of how many images to review. Every image also gets the camkit.data.quality findings
    (blank, tiny content, extreme aspect, a near-twin across the run's train / valid split)."""
    split = choice(CleanSplit, split, "split")
    loaded = as_loaded(run, device)
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise CamkitError(f"--folds must be at least 2 (each image held out once), not {folds}")
    root = data_root(loaded.path, loaded.info, data)
    valid = {r.file.resolve() for r in read_valid(loaded.path, loaded.info, root)}
    items = dataset_files(root, loaded.classes, "all", valid)
    if folds is not None:
        from camkit.train.folds import check_folds

        check_folds(folds, {c: sum(label == c for _, label in items) for c in loaded.classes})
    warn_if_unusable(loaded)
    labels = dict(items)
    files, rows, extras = [], [], []
    part = shard(len(items))
    for batch in iter_scores(loaded, [f for f, _ in items[part.start:part.stop]], bs, also=_hash_and_measure):
        files += batch.files
        rows.append(batch.logits.double().log_softmax(1).numpy())  # exact losses where softmax underflows
        extras += batch.extras
    files, rows, extras = gather(files), gather(rows), gather(extras)
    if not rows:
        raise CamkitError(f"no readable images in '{root}'")
    log_probs = np.concatenate(rows)
    hashes = [h for h, _ in extras]
    dup = near_duplicates(hashes, [labels[f] for f in files])
    leak = leaks(hashes, [f.resolve() in valid for f in files])
    out = Ranking(_suspect(f, root, labels[f], loaded.classes, lp, d) for f, lp, d in zip(files, log_probs, dup))
    for s, (_, m), leaked in zip(out, extras, leak):
        s.quality = findings(m) + (("near-duplicate across train/valid",) if leaked else ())
    if folds is not None:
        out.estimate = _out_of_sample(out, loaded, root, folds, fold_epochs, cache)
    keep = [s for s in out if split == "all" or (s.image.resolve() in valid) == (split == "valid")]
    if not keep:
        raise CamkitError(f"no images of the run's classes in '{root}' for split '{split}'")
    ranked = Ranking(sorted(keep, key=lambda s: -s.score))
    ranked.estimate = out.estimate
    return ranked


def _hash_and_measure(image) -> tuple:
    """What the ranking needs of each decoded image besides the model's scores, in one decode."""
    return phash(image), measure(image)


def suspicion(label_quality: np.ndarray, ood: np.ndarray) -> np.ndarray:
    """The out-of-sample ranking score, higher first: the larger of 1 - label quality
    (cleanlab's self-confidence: the held-out probability of the folder's label; a swapped
    label) and 1 - the OOD score (far from every training image of the fold model: off-topic)."""
    return np.maximum(1.0 - label_quality, 1.0 - ood)


def outliers(ood: np.ndarray) -> np.ndarray:
    """Which images are off-topic by cleanlab Datalab's feature-outlier rule, applied to the
    normalised kNN distance d / t = -log(OOD score): above Q3 + OUTLIER_IQR x IQR."""
    d = -np.log(np.clip(ood, 1e-300, 1.0))
    q1, q3 = np.percentile(d, [25, 75])
    return d > q3 + OUTLIER_IQR * (q3 - q1)


def _out_of_sample(suspects: list[Suspect], loaded: LoadedModel, root: Path, folds: int,
                   epochs: int | None, cache: str | Path | None) -> Estimate:
    """Re-score `suspects` in place with K-fold out-of-sample probabilities (camkit.train.folds) and
    cleanlab's label quality, label issues and OOD outliers; returns the estimate to review."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if joined():
        raise CamkitError("--folds trains its models in one process; run it without a launcher")
    scores = out_of_sample(loaded, root, folds, epochs, cache)
    quality = get_label_quality_scores(scores.labels, scores.probs)
    issues = find_label_issues(scores.labels, scores.probs)
    far = outliers(scores.ood)
    score = suspicion(quality, scores.ood)
    where = {f.resolve(): i for i, f in enumerate(scores.files)}
    classes = loaded.classes
    for s in suspects:
        i = where.get(s.image.resolve())
        if i is None:   # decoded by the model's loader but not by the folds' (cannot happen with one decode)
            s.score = 0.0
            continue
        k, probs = int(scores.labels[i]), scores.probs[i]
        top = int(probs.argmax())
        why = (["mislabelled?"] if issues[i] else []) + (["off-topic?"] if far[i] else [])
        rest = [r for r in s.reason.split("; ") if r.startswith("near-duplicate")]
        s.pred, s.prob, s.loss = classes[top], float(probs[top]), float(-np.log(max(probs[k], 1e-300)))
        s.fold, s.label_quality, s.ood, s.score = int(scores.fold[i]), float(quality[i]), float(scores.ood[i]), \
            float(score[i])
        s.reason = "; ".join(why + rest)
    accuracy = float((scores.probs.argmax(1) == scores.labels).mean())
    baseline = float(np.bincount(scores.labels).max() / len(scores.labels))
    estimate = Estimate(int((issues | far).sum()), int(issues.sum()), int(far.sum()), folds, scores.epochs,
                        scores.seconds, accuracy, baseline)
    if estimate.weak:
        warnings.warn(estimate.warning(), stacklevel=3)
    return estimate


def _suspect(path: Path, root: Path, label: str, classes: list[str], log_probs: np.ndarray, dup: bool) -> Suspect:
    """One image's Suspect from its log-softmax row (the loss is the cross-entropy under the label)."""
    k = classes.index(label)
    loss = abs(float(log_probs[k]))
    probs = np.exp(log_probs)
    top = int(probs.argmax())
    return Suspect(path, path.relative_to(root).as_posix(), label, classes[top], float(probs[top]), loss,
                   reasons(probs, k, bool(dup)), loss + (DUPLICATE_BONUS if dup else 0.0))


# ---------------------------------------------------------------- the saved out-of-sample ranking

RANKING = "clean_ranking.json"   # RUN/clean_ranking.json: `clean --folds`'s ranking, for the app's Clean tab
RANKING_VERSION = 1
_ESTIMATE_FIELDS = ("to_review", "mislabelled", "off_topic", "folds", "epochs", "seconds", "accuracy", "baseline")


def ranking_doc(ranking: Ranking, root: Path, split: str = "all") -> dict:
    """The JSON document of an out-of-sample ranking (pure): the data root it ranked, the
    folds, the date, the estimate, and per image, most suspicious first, its path relative to
    the root, label, prediction, scores, fold, label quality, OOD score and reasons."""
    estimate = ranking.estimate
    if estimate is None:
        raise CamkitError("only an out-of-sample ranking (--folds) is saved")
    images = [{"rel": s.rel, "label": s.label, "pred": s.pred, "prob": s.prob, "loss": s.loss, "score": s.score,
               "fold": s.fold, "label_quality": s.label_quality, "ood": s.ood, "reason": s.reason,
               "quality": list(s.quality)} for s in ranking]
    return {"format": f"camkit-clean-ranking/{RANKING_VERSION}", "data_root": str(Path(root).resolve()),
            "folds": estimate.folds, "split": split, "date": _now(),
            "estimate": {k: getattr(estimate, k) for k in _ESTIMATE_FIELDS}, "images": images}


def save_ranking(ranking: Ranking, run: str | Path, data: str | Path | None = None, split: str = "all") -> Path:
    """Write `clean --folds`'s ranking to RUN/clean_ranking.json, atomically, so that the app's
    Clean tab shows the out-of-sample scores and the estimate without training K models on a
    click. Returns the path."""
    run = Path(run)
    root = data_root(run, None, data)
    doc = ranking_doc(ranking, root, split)
    return atomic_write(run / RANKING, json.dumps(doc, indent=1, allow_nan=False))


@dataclass(frozen=True)
class SavedRanking:
    """RUN/clean_ranking.json read back for the current data: the images still where they were
    ranked (`ranking`, with its estimate), how many were dropped (moved or gone since), the
    split and the date it was made."""
    ranking: Ranking
    dropped: int
    split: str
    date: str


def _number(v: object, low: float = -math.inf, high: float = math.inf) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high


def _saved_estimate(doc: dict, path: Path) -> Estimate:
    e = doc.get("estimate")
    if not (isinstance(e, dict) and all(_number(e.get(k), 0) for k in _ESTIMATE_FIELDS)
            and all(isinstance(e[k], int) for k in _ESTIMATE_FIELDS[:5]) and e["folds"] == doc.get("folds")
            and e["folds"] >= 2 and e["accuracy"] <= 1 and e["baseline"] <= 1):
        raise CamkitError(f"'{path}' has a malformed estimate")
    return Estimate(*(e[k] for k in _ESTIMATE_FIELDS))


def _saved_suspect(r: object, root: Path, classes: list[str], folds: int, path: Path) -> Suspect:
    """One image of the saved ranking, every field checked and its path confined to `root`."""
    ok = (isinstance(r, dict) and isinstance(r.get("rel"), str) and r.get("label") in classes
          and r.get("pred") in classes and Path(r["rel"]).parts[:1] == (r["label"],)
          and _number(r.get("prob"), 0, 1) and _number(r.get("loss"), 0) and _number(r.get("score"))
          and isinstance(r.get("fold"), int) and not isinstance(r["fold"], bool) and 0 <= r["fold"] < folds
          and _number(r.get("label_quality"), 0, 1) and _number(r.get("ood"), 0, 1)
          and isinstance(r.get("reason"), str) and len(r["reason"]) <= 500 and isinstance(r.get("quality"), list)
          and all(isinstance(q, str) and len(q) <= 200 for q in r["quality"]))
    if not ok:
        raise CamkitError(f"'{path}' has a malformed image record: {str(r)[:80]}")
    file = confined(root, r["rel"], f"'{path}' image")
    return Suspect(file, r["rel"], r["label"], r["pred"], float(r["prob"]), float(r["loss"]), r["reason"],
                   float(r["score"]), r["fold"], float(r["label_quality"]), float(r["ood"]), tuple(r["quality"]))


def read_ranking(run: str | Path, root: Path, classes: list[str]) -> SavedRanking | None:
    """RUN/clean_ranking.json for the data root `root`: None when there is none or when it
    ranked another data folder; the images no longer at their ranked path (moved by an apply,
    removed) dropped. A file camkit did not write is refused in one sentence (parsed with
    parse_json, every field checked, every path confined to `root`)."""
    path = Path(run) / RANKING
    if not path.is_file():
        return None
    doc = _read_doc(path, "saved ranking")
    if not (isinstance(doc, dict) and doc.get("format") == f"camkit-clean-ranking/{RANKING_VERSION}"
            and isinstance(doc.get("data_root"), str) and isinstance(doc.get("images"), list)
            and doc.get("split") in values(CleanSplit) and isinstance(doc.get("date"), str)):
        raise CamkitError(f"'{path}' is not a camkit saved ranking ({RANKING_VERSION})")
    if "\x00" in doc["data_root"] or Path(doc["data_root"]).resolve() != Path(root).resolve():
        return None
    estimate = _saved_estimate(doc, path)
    suspects = [_saved_suspect(r, Path(root), classes, estimate.folds, path) for r in doc["images"]]
    kept = Ranking(s for s in suspects if s.image.is_file())
    kept.estimate = estimate
    return SavedRanking(kept, len(suspects) - len(kept), doc["split"], doc["date"][:40])


def _read_doc(path: Path, what: str) -> Any:
    """A JSON file of camkit's (`what`: saved ranking, decisions file) parsed, or one sentence
    saying it cannot be read, whatever the reason (missing, not UTF-8, not JSON)."""
    try:
        return parse_json(read_text(path, f"a {what}"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CamkitError(f"'{path}' is not a readable {what} ({type(e).__name__})") from None


# ---------------------------------------------------------------- decisions

def _decisions_doc(path: Path) -> dict:
    """The decisions file's JSON object, refused in one line unless it is one (version 1)."""
    doc = _read_doc(path, "decisions file")
    if not (isinstance(doc, dict) and doc.get("version") == 1 and isinstance(doc.get("decisions"), dict)):
        raise CamkitError(f"'{path}' is not a camkit decisions file (version 1 with a 'decisions' object)")
    return doc


def _check_made_for(doc: dict, path: Path, run: Path, root: Path) -> None:
    """Refuse a decisions file the page or the app saved for another run or another data folder:
    its names would pick other files, or another model's classes. A file written by hand, with
    neither field, is taken as it is."""
    for field, what, here in (("run", "run", run), ("data_root", "data folder", root)):
        made = doc.get(field)
        if made is None:
            continue
        if not (isinstance(made, str) and made and "\x00" not in made and Path(made).resolve() == here.resolve()):
            raise CamkitError(f"'{path}' was made for the {what} {str(made)[:200]!r}, not '{here.resolve()}'; "
                              "nothing was moved")


def _check_action(path: Path, rel: str, action: object, classes: list[str]) -> None:
    if not (action == "delete" or (isinstance(action, str) and action.startswith("relabel:")
                                   and action[len("relabel:"):] in classes)):
        raise CamkitError(f"'{path}' entry '{rel}': unknown action {str(action)[:60]!r} "
                          f"(keep, delete or relabel:CLASS with CLASS one of {', '.join(classes)})")


def _is_gone(path: Path, rel: str, file: Path, root: Path, classes: list[str]) -> bool:
    """Whether an entry's file is gone (moved away since the decision: skipped, not refused);
    an entry outside the class folders, or naming something that is not an image, is refused."""
    if len(Path(rel).parts) >= 2 and Path(rel).parts[0] in classes:
        if not os.path.lexists(file):
            return True
        if file.is_file() and is_dataset_image(file, root):
            return False
    raise CamkitError(f"'{path}' entry '{rel}' is not an image of the dataset '{root}'")


def read_decisions(path: str | Path, run: str | Path, root: Path, classes: list[str],
                   applied: set[Path] | frozenset = frozenset()) -> list[tuple[str, Path, str]]:
    """decisions.json as [(rel, file, action)], every entry checked before anything moves: a
    path confined to the data root naming an image in a class folder, an action that is
    keep, delete or relabel:CLASS with CLASS one of the run's classes, the file made for this
    run and data folder. 'keep' entries (checked only for their path) and relabels to the
    image's own class are dropped (nothing to do); so is a file gone from its place, with one
    warning line each, or one in all for those moved by an earlier apply (`applied`)."""
    path = Path(path)
    doc = _decisions_doc(path)
    _check_made_for(doc, path, Path(run), root)
    todo, seen, earlier = [], set(), 0
    for rel, action in doc["decisions"].items():
        file = confined(root, rel, f"'{path}' entry")
        if file.resolve() in seen:
            raise CamkitError(f"'{path}' names the file of entry '{rel}' twice")
        seen.add(file.resolve())
        if action == "keep":
            continue
        _check_action(path, rel, action, classes)
        if not _is_gone(path, rel, file, root, classes):
            if action != f"relabel:{Path(rel).parts[0]}":
                todo.append((rel, file, action))
        elif file.resolve() in applied:
            earlier += 1
        else:
            warnings.warn(f"'{rel}' is not in '{root}' (moved or removed since the decision); skipped", stacklevel=3)
    if earlier:
        entries = "1 entry" if earlier == 1 else f"{earlier} entries"
        warnings.warn(f"{entries} of '{path}' carried out by an earlier apply ({root / CLEAN_LOG}): skipped",
                      stacklevel=3)
    return todo


class DecisionFile:
    """A decisions.json kept on disk and rewritten atomically at every decision (the app's
    cleaner tab saves as the user clicks; `apply` reads the same format as the page's download:
    {"version": 1, "run": ..., "data_root": ..., "decisions": {rel: action}})."""

    def __init__(self, path: str | Path, run: str | Path, root: Path):
        self.path, self.run, self.root = Path(path), Path(run), root
        self.decisions: dict[str, str] = {}
        if self.path.is_file():
            self.decisions = self._read()

    def _read(self) -> dict[str, str]:
        try:
            doc = parse_json(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        if not (isinstance(doc, dict) and isinstance(doc.get("decisions"), dict)
                and all(isinstance(v, str) for v in doc["decisions"].values())):
            aside = move_aside(self.path, self.path.with_name(self.path.name + ".unreadable"))
            warnings.warn(f"'{self.path}' was not a decisions file; moved aside to '{aside}'", stacklevel=3)
            return {}
        return dict(doc["decisions"])

    def get(self, rel: str) -> str:
        return self.decisions.get(rel, "keep")

    def count(self) -> int:
        return sum(a != "keep" for a in self.decisions.values())

    def set(self, rel: str, action: str) -> None:
        self.decisions[rel] = action
        doc = {"version": 1, "run": str(self.run.resolve()), "data_root": str(self.root.resolve()),
               "decisions": self.decisions}
        atomic_write(self.path, json.dumps(doc, indent=1))

    def archive(self) -> Path | None:
        """After an apply: the file moved aside (kept, timestamped), the decisions forgotten."""
        self.decisions = {}
        if not self.path.is_file():
            return None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        return move_aside(self.path, self.path.with_name(f"{self.path.stem}.applied-{stamp}.json"))


def _destination(root: Path, rel: str, action: str) -> Path:
    """Where a decision moves its file: DATA/_rejected/cleaned/<rel> for 'delete',
    DATA/CLASS/<name> for 'relabel:CLASS' (a free name beside it when taken, at the move)."""
    folder = f"{REJECTED}/{CLEANED}/{Path(rel).parent.as_posix()}" if action == "delete" else action[len("relabel:"):]
    return root / folder / Path(rel).name


def check_destinations(root: Path, destinations: list[Path]) -> None:
    """Refuse unless every folder a file is about to be moved into is a real folder inside the
    data root (`real_folder`): all checked before the first move, so a refusal moves nothing."""
    for dest in destinations:
        try:
            real_folder(root, dest.parent.relative_to(root).as_posix(), "destination folder")
        except CamkitError as e:
            raise CamkitError(f"{e}; nothing was moved") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _manifest_status(action: str) -> str:
    return {"delete": "cleaned", "undo": "restored"}.get(action, "relabelled")


def _finish(root: Path, record: dict) -> dict:
    """A move that has happened: told to the crawl manifest (when there is one; the ledger writes
    it), then marked done in the log. Returns the done record."""
    note_move(root, _manifest_status(record["action"]), record["to"], record["from"], record["time"])
    done = {**record, "state": DONE}
    append_json_line(root / CLEAN_LOG, done)
    return done


def _logged_move(root: Path, entry: dict, dest: Path) -> dict:
    """Move DATA/<entry['from']> to `dest` (a free name beside it when taken), write-ahead: the
    record naming the exact target is logged 'pending' first, the file renamed, then the record
    marked 'done'. A kill anywhere leaves the file in one of two places the log names, and
    `reconcile` tells which. A failure is one sentence; earlier moves stay logged (undoable)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        record = {**entry, "to": free_name(dest).relative_to(root).as_posix(), "time": _now()}
        append_json_line(root / CLEAN_LOG, {**record, "state": PENDING})
        os.replace(root / record["from"], root / record["to"])
    except OSError as e:
        raise CamkitError(f"cannot move '{root / entry['from']}' to '{dest}' ({e.strerror or e}); the moves "
                          f"before it are logged in {root / CLEAN_LOG}") from None
    return _finish(root, record)


def apply(run: str | Path, decisions: str | Path, data: str | Path | None = None) -> list[dict]:
    """Carry out a decisions.json: 'delete' moves the file to DATA/_rejected/cleaned/<rel>,
    'relabel:CLASS' to DATA/CLASS/<name> (a free name when taken); each move is logged in
    DATA/clean.jsonl before it is made and, when the data root has a crawl manifest, there
    too. A re-run after an interrupted apply skips what the log says it already moved.
    Returns the moves."""
    info = read_info(run)
    root = data_root(run, info, data)
    log = reconcile(root)
    applied = {(root / r["from"]).resolve() for r in in_effect(log)}
    todo = read_decisions(decisions, run, root, info.classes, applied)
    destinations = [_destination(root, rel, action) for rel, _, action in todo]
    check_destinations(root, destinations)
    n = _next_id(log)
    return [_logged_move(root, {"id": n + i, "from": file.relative_to(root).as_posix(), "action": action}, dest)
            for i, ((_, file, action), dest) in enumerate(zip(todo, destinations))]


# ---------------------------------------------------------------- the log, undo

PENDING, DONE, VOID = "pending", "done", "void"   # a record's state; lines before write-ahead have none: done


def read_log(root: Path) -> list[dict]:
    """DATA/clean.jsonl ([] when absent); a line cut by a kill is skipped, and every path in it
    is confined to the data root before anything is moved."""
    path = root / CLEAN_LOG
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(read_text(path, "a clean log", errors="replace").splitlines(), 1):
        try:
            rec = parse_json(line)
        except json.JSONDecodeError:
            continue
        if not (isinstance(rec, dict) and isinstance(rec.get("id"), int)):
            raise CamkitError(f"'{path}' line {number} is not a camkit clean record")
        for key in ("from", "to"):
            confined(root, rec.get(key), f"'{path}' line {number}")
        records.append(rec)
    return records


def _latest(log: list[dict]) -> list[dict]:
    """Each move's last record (pending, then done or void), in the order the moves began."""
    return list({r["id"]: r for r in log}.values())


def _next_id(log: list[dict]) -> int:
    return max((r["id"] for r in log), default=-1) + 1


def reconcile(root: Path) -> list[dict]:
    """Settle every move logged 'pending' and never marked done (killed or interrupted between
    the two lines) by where its file is: at its target, the move happened (done, and told to
    the manifest); not there, it never did (void). Run first by apply and undo, while the
    file's place is still the whole story. Returns the log, settled."""
    for rec in _latest(read_log(root)):
        if rec.get("state") == PENDING:
            if os.path.lexists(root / rec["to"]):
                _finish(root, rec)
            else:
                append_json_line(root / CLEAN_LOG, {**rec, "state": VOID})
    return read_log(root)


def in_effect(log: list[dict]) -> list[dict]:
    """The moves the log says were made by an apply and not undone, oldest first."""
    latest = [r for r in _latest(log) if r.get("state", DONE) == DONE]
    undone = {r.get("undoes") for r in latest if r.get("action") == "undo"}
    return [r for r in latest if r.get("action") != "undo" and r["id"] not in undone]


def undo(run: str | Path, data: str | Path | None = None) -> list[dict]:
    """Move back every file that clean.jsonl records as moved and not yet undone, newest first
    (to a free name beside the original should that name be taken now), each undo logged
    write-ahead like the moves. A moved file that is no longer there is skipped with a
    warning. Returns the undo records."""
    root = data_root(run, None, data)
    log = reconcile(root)
    moves = in_effect(log)
    check_destinations(root, [root / r["from"] for r in moves])
    done, n = [], _next_id(log)
    for rec in reversed(moves):
        if not (root / rec["to"]).is_file():
            warnings.warn(f"cannot undo the move of '{rec['from']}': '{rec['to']}' is gone", stacklevel=2)
            continue
        entry = {"id": n, "action": "undo", "undoes": rec["id"], "from": rec["to"]}
        done.append(_logged_move(root, entry, root / rec["from"]))
        n += 1
    return done


# ---------------------------------------------------------------- the review page

TOP = 60
PAGE_MARK = "<meta name='generator' content='camkit-clean'>"
STYLE = ("body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:middle}"
         "img{height:112px;image-rendering:auto}.rel{max-width:260px;word-break:break-all}"
         "tr.delete{background:#fdd}tr.relabel{background:#ffd}")
# Decisions live in localStorage under a key naming the run and data root (read from the body's
# data attributes, never from text spliced into the script: file names are untrusted).
SCRIPT = """
(function(){
var b=document.body, key='camkit-clean:'+b.dataset.run+':'+b.dataset.root;
function load(){try{return JSON.parse(localStorage.getItem(key))||{}}catch(e){return {}}}
function save(d){localStorage.setItem(key,JSON.stringify(d))}
function show(row,v){row.className=v==='delete'?'delete':(v&&v.indexOf('relabel:')===0?'relabel':'');
 row.querySelectorAll('input[type=radio]').forEach(function(r){r.checked=(r.value===(v&&v.indexOf('relabel:')===0?'relabel':v||'keep'))});
 var s=row.querySelector('select');if(v&&v.indexOf('relabel:')===0){s.value=v.slice(8)}}
function read(row){var r=row.querySelector('input[type=radio]:checked');if(!r)return 'keep';
 return r.value==='relabel'?'relabel:'+row.querySelector('select').value:r.value}
var d=load();
document.querySelectorAll('tr[data-rel]').forEach(function(row){
 show(row,d[row.dataset.rel]);
 row.addEventListener('change',function(ev){var s=row.querySelector('select');
 if(ev.target.tagName==='SELECT'){row.querySelector('input[value=relabel]').checked=true}
 else if(ev.target.value==='relabel'&&!s.value){s.selectedIndex=1}
 var dd=load();dd[row.dataset.rel]=read(row);save(dd);show(row,dd[row.dataset.rel])});});
document.getElementById('download').addEventListener('click',function(){
 var doc={version:1,run:b.dataset.run,data_root:b.dataset.root,decisions:load()};
 var a=document.createElement('a');
 a.href=URL.createObjectURL(new Blob([JSON.stringify(doc,null,1)],{type:'application/json'}));
 a.download='decisions.json';document.body.appendChild(a);a.click();a.remove();});
document.getElementById('reset').addEventListener('click',function(){localStorage.removeItem(key);location.reload()});
b.setAttribute('data-ready','1');
})();
"""


def overlay_pictures(loaded: LoadedModel, suspects: list[Suspect], side: int = 160) -> list[tuple]:
    """(original, CAM overlay) PIL images per suspect, at most `side` pixels, the map of the
    predicted class drawn by camkit.explain and camkit.core.render (maps computed once, in batches)."""
    if not suspects:
        return []
    style = Style(max_side=side)
    out = []
    for r in explain(loaded, [s.image for s in suspects]):
        picture = fit_for_drawing(open_rgb(r.image), side)
        out.append((picture, overlay(picture, r.map, style, r.grid)[1]))
    return out


def overlays(loaded: LoadedModel, suspects: list[Suspect], side: int = 160) -> list[tuple[str, str]]:
    """(original, CAM overlay) data URIs per suspect, for the offline page."""
    return [(png_data_uri(a), png_data_uri(b)) for a, b in overlay_pictures(loaded, suspects, side)]


def _row(i: int, s: Suspect, uris: tuple[str, str], classes: list[str]) -> str:
    """One table row: pictures, texts (escaped) and the keep / delete / relabel controls."""
    import html

    e = html.escape
    name = f"d{i}"
    # a placeholder first, so that choosing the only other class of a two-class run is a change
    options = "<option value='' disabled selected>class…</option>" + "".join(
        f"<option value='{e(c)}'>{e(c)}</option>" for c in classes if c != s.label)
    controls = (f"<label><input type='radio' name='{name}' value='keep' checked> keep</label> "
                f"<label><input type='radio' name='{name}' value='delete'> delete</label> "
                f"<label><input type='radio' name='{name}' value='relabel'> relabel to</label> "
                f"<select>{options}</select>")
    return (f"<tr data-rel='{e(s.rel)}'><td><img src='{uris[0]}' alt='original'></td>"
            f"<td><img src='{uris[1]}' alt='CAM overlay'></td><td class='rel'>{e(s.rel)}</td>"
            f"<td>{e(s.label)}</td><td>{e(s.pred)}</td><td>{s.prob:.1%}</td><td>{s.loss:.3f}</td>"
            f"<td>{e(evidence(s))}</td><td>{controls}</td></tr>")


def evidence(s: Suspect) -> str:
    """The reason cell (the page, the app): the reasons, the quality findings, and the
    out-of-sample scores."""
    scores = [] if s.fold is None else [f"held out in fold {s.fold}: label quality {s.label_quality:.3f}, OOD {s.ood:.3f}"]
    return "; ".join(filter(None, [s.reason, *s.quality, *scores])) or "-"


def summary_line(ranking: list[Suspect]) -> str:
    """The estimate to review and the quality findings in one sentence ("" when there is
    neither), for the page, the app and the CLI: ends with '; ' when not empty."""
    estimate = getattr(ranking, "estimate", None)
    parts = []
    if estimate is not None:
        parts.append(f"about {estimate.to_review} to review by cleanlab's estimate ({estimate.mislabelled} likely "
                     f"mislabelled, {estimate.off_topic} off-topic; {estimate.folds}-fold out-of-sample scores)")
        if estimate.weak:
            parts.append("WARNING: " + estimate.warning())
    flagged = sum(bool(s.quality) for s in ranking)
    if flagged:
        parts.append(f"{flagged} with an image-quality or leakage finding")
    return "".join(p + "; " for p in parts)


def page_html(suspects: list[Suspect], uris: list[tuple[str, str]], classes: list[str], run: str, root: str,
              summary: str = "") -> str:
    """The whole review page (pure: data in, text out); `summary` is `summary_line` of the
    whole ranking."""
    import html

    e = html.escape
    head = "".join(f"<th>{h}</th>" for h in ("image", "CAM (predicted class)", "file", "label", "prediction",
                                             "probability", "loss", "reason", "decision"))
    rows = "".join(_row(i, s, u, classes) for i, (s, u) in enumerate(zip(suspects, uris)))
    estimate = f"<p id='estimate'>{e(summary.rstrip('; '))}.</p>" if summary else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'>{PAGE_MARK}<title>camkit clean</title>"
            f"<style>{STYLE}</style></head><body data-run='{e(run)}' data-root='{e(root)}'>"
            f"<h1>camkit clean: the {len(suspects)} most suspicious images</h1>{estimate}"
            f"<p>run {e(run)}, data {e(root)}. Decisions are kept in this browser; "
            "<button id='download'>Download decisions</button> <button id='reset'>Forget decisions</button> "
            "then run <code>camkit clean RUN --apply decisions.json</code> (files are moved, never deleted; "
            "<code>--undo</code> moves them back).</p>"
            f"<table><tr>{head}</tr>{rows}</table><script>{SCRIPT}</script></body></html>")


def check_page(out: str | Path, top: int) -> Path:
    """Refuse a page option before any work: `top` below 1, or an `out` that is a folder or a
    file this module did not write (a user's page is never replaced)."""
    if top < 1:
        raise CamkitError(f"--top must be at least 1, not {top}")

    out = Path(out)
    if out.is_dir() or (out.exists() and PAGE_MARK not in read_text(out, "a page", errors="replace")[:400]):
        raise CamkitError(f"'{out}' exists and was not written by camkit clean; choose another --out")
    refuse_inside_class_folder(out.parent)   # by the folder's shape, before the ranking (write_page knows the root)
    return out


def write_page(suspects: list[Suspect], run: str | Path | LoadedModel, out: str | Path, top: int = TOP,
               data: str | Path | None = None) -> Path:
    """The offline review page of the `top` most suspicious images, written atomically to
    `out`. A file at `out` that this function did not write is never replaced."""
    out = check_page(out, top)
    loaded = as_loaded(run)
    root = str(data_root(loaded.path, loaded.info, data).resolve())
    refuse_inside_class_folder(out.parent, (root,))
    chosen = suspects[:top]
    ensure_writable_dir(out.parent, "page folder")
    text = page_html(chosen, overlays(loaded, chosen), loaded.classes, str(loaded.path.resolve()), root,
                     summary_line(suspects))
    return atomic_write(out, text)
