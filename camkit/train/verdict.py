"""The training verdict: whether a trained model is worth looking at, said first and in plain words.

A model trained on ~100 crawled images per class can end no better than always answering the
larger class, with a validation loss that exploded, and still produce maps that look like
explanations. The verdict is computed from what every run keeps (the confusion matrix of the
held-out images, the per-epoch history, the training images per class), saved in model.json,
printed as warnings, and shown at the top of the report, in the app and in a notebook. Pure:
numbers in, a `Verdict` out.

    baseline      = the held-out share of the most frequent held-out class: the accuracy of the
                    best constant answer on these very images
    useless       accuracy <= baseline
    weak          accuracy < baseline + MARGIN (15 points)
    diverged      final validation loss > 10 x max(best, 0.1) and > ln(K)
    unstable      some epoch's validation loss > 10 x max(best before it, 0.1) and > ln(K), and
                  the final one still > 1.5 x max(best, 0.1) (a spike fully recovered from is
                  the peak of the one-cycle learning rate: 4 of 4 canvas runs at 96-99 %)
    not learning  last training loss >= 0.95 x the first (at least 3 epochs)
    overfitting   validation loss ended >= 1.5 x its best (and > 0.1 above it) while the training
                  loss kept falling
    low recall    a class with < 50 % of its held-out images recognised
    few images    fewer than 10 training images in a class (fewer than 50 from scratch)
    few held out  fewer than 10 held-out images (one image is > 10 points of accuracy)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

MARGIN = 0.15            # points above the constant answer a usable model should reach
EXPLODE = 10.0           # a validation loss this many times its best has exploded
LOSS_FLOOR = 0.1         # losses below this are all "good": ratios against them mean nothing
OVERFIT = 1.5
LOW_RECALL = 0.5
FEW_IMAGES = {"pretrained": 10, "scratch": 50}
FEW_VALID = 10

STATUSES = ("ok", "warning", "unusable")


def confusion_matrix(preds: Tensor, targets: Tensor, n_classes: int) -> Tensor:
    """Counts of (actual, predicted) pairs from two integer tensors: rows actual class, columns
    predicted class; cm[a, p] = #{i : targets[i] = a and preds[i] = p}, one bincount of
    targets * n_classes + preds. The matrix `judge` reads (as a list)."""
    return (targets * n_classes + preds).bincount(minlength=n_classes ** 2).view(n_classes, n_classes)

@dataclass(frozen=True)
class Finding:
    """One thing wrong with the training: a code, `fail` (the model should not be used) or
    `warn`, what happened and what to try."""
    code: str
    severity: str
    message: str
    advice: str

    def line(self) -> str:
        return f"{self.message}; {self.advice}"


@dataclass(frozen=True)
class Verdict:
    """Whether the run is usable, its accuracy against the constant answer, and why not."""
    status: str                       # ok, warning or unusable
    accuracy: float
    baseline: float
    baseline_class: str
    n_valid: int
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def usable(self) -> bool:
        return self.status != "unusable"

    @property
    def reason(self) -> str:
        """The first reason (a failure before a warning) with the accuracy against always
        answering the larger class; for a usable model, that accuracy alone."""
        vs = (f"accuracy {self.accuracy:.0%} on {self.n_valid} held-out images, where always answering "
              f"'{self.baseline_class}' scores {self.baseline:.0%}")
        if not self.findings:
            return vs
        first = sorted(self.findings, key=lambda f: f.severity != "fail")[0]
        return first.message if first.code in ("below_baseline", "near_baseline") else f"{first.message} ({vs})"

    @property
    def headline(self) -> str:
        """One sentence: the status ('usable' for ok) and the reason."""
        return f"{'usable' if self.status == 'ok' else self.status}: {self.reason}"

    def low_recall_classes(self) -> list[str]:
        return [f.code.split(":", 1)[1] for f in self.findings if f.code.startswith("low_recall:")]

    def to_json(self) -> dict:
        return {"status": self.status, "usable": self.usable, "headline": self.headline,
                "accuracy": self.accuracy, "baseline": self.baseline, "baseline_class": self.baseline_class,
                "n_valid": self.n_valid, "findings": [asdict(f) for f in self.findings]}

    @classmethod
    def from_json(cls, data: Any) -> "Verdict | None":
        """A verdict read back from model.json; None when absent or malformed (it is then
        recomputed from the run's numbers)."""
        try:
            findings = tuple(Finding(str(f["code"]), str(f["severity"]), str(f["message"]), str(f["advice"]))
                             for f in data["findings"])
            verdict = cls(str(data["status"]), float(data["accuracy"]), float(data["baseline"]),
                          str(data["baseline_class"]), int(data["n_valid"]), findings)
        except (TypeError, KeyError, ValueError):
            return None
        return verdict if verdict.status in STATUSES else None


def judge(confusion: list[list[int]], classes: list[str], history: list[dict],
          train_counts: list[int] | None = None, pretrained: bool = False,
          notes: tuple[Finding, ...] = ()) -> Verdict:
    """The verdict of a run from its held-out confusion matrix (rows: actual class), its
    per-epoch history (train_loss, valid_loss) and its training images per class; `notes` are
    findings made during training (e.g. a learning-rate search that failed)."""
    totals = [sum(row) for row in confusion]
    n = sum(totals)
    correct = sum(confusion[i][i] for i in range(len(confusion)))
    accuracy = correct / n if n else 0.0
    top = max(range(len(classes)), key=lambda i: totals[i]) if n else 0
    baseline = totals[top] / n if n else 0.0
    findings = [*_accuracy(accuracy, baseline, classes[top], n, pretrained),
                *_losses(history, len(classes)),
                *_recall(confusion, classes, totals),
                *_images(train_counts, classes, pretrained), *notes]
    status = ("unusable" if any(f.severity == "fail" for f in findings)
              else "warning" if findings else "ok")
    return Verdict(status, round(accuracy, 4), round(baseline, 4), classes[top], n, tuple(findings))


def _accuracy(accuracy: float, baseline: float, constant: str, n: int, pretrained: bool) -> list[Finding]:
    more = ("train longer (--epochs), start from pretrained weights (--weights or --pretrained)"
            if not pretrained else "train longer (--epochs), add images")
    if n == 0:
        return [Finding("no_validation", "fail", "no held-out image was scored", "use a larger --valid-pct or more images")]
    few = ([Finding("few_valid", "warn", f"accuracy was measured on only {n} held-out images",
                    f"one image more or less changes it by {100 / n:.0f} points: add images or raise --valid-pct")]
           if n < FEW_VALID else [])
    if accuracy <= baseline:
        return [Finding("below_baseline", "fail",
                        f"accuracy {accuracy:.0%} is not better than always answering '{constant}' ({baseline:.0%})",
                        f"the model has learnt nothing usable and its maps explain nothing: {more}, "
                        "or check the images of each class"), *few]
    if accuracy < baseline + MARGIN:
        return [Finding("near_baseline", "warn",
                        f"accuracy {accuracy:.0%} is only {100 * (accuracy - baseline):.0f} points above always "
                        f"answering '{constant}' ({baseline:.0%})", f"read its maps with care: {more}"), *few]
    return few


def _losses(history: list[dict], n_classes: int) -> list[Finding]:
    valid = [r["valid_loss"] for r in history if _number(r.get("valid_loss"))]
    train = [r["train_loss"] for r in history if _number(r.get("train_loss"))]
    chance = math.log(max(n_classes, 2))
    out = []
    if valid:
        best = min(valid)
        final = valid[-1]
        if final > EXPLODE * max(best, LOSS_FLOOR) and final > chance:
            out.append(Finding("diverged", "fail",
                               f"the validation loss ended at {final:.3g}, {final / max(best, LOSS_FLOOR):.0f}x its best "
                               f"({best:.3g})", "training diverged: try a lower --lr, or --lr auto"))
        else:
            spikes = [(i, v) for i, v in enumerate(valid)
                      if i and v > EXPLODE * max(min(valid[:i]), LOSS_FLOOR) and v > chance]
            if spikes and final > OVERFIT * max(best, LOSS_FLOOR):   # a spike fully recovered from is one-cycle's peak lr
                i, v = spikes[0]
                out.append(Finding("unstable", "warn",
                                   f"the validation loss exploded to {v:.3g} in epoch {i + 1} and ended at "
                                   f"{final:.3g}, above its best ({best:.3g})",
                                   "training was unstable: try a lower --lr or a smaller --bs"))
    if len(train) >= 3 and train[-1] >= 0.95 * train[0]:
        out.append(Finding("not_learning", "fail",
                           f"the training loss did not fall ({train[0]:.3g} -> {train[-1]:.3g})",
                           "try --lr auto, a lower --lr, or more epochs"))
    elif valid and len(valid) >= 3 and not out:
        best_i = min(range(len(valid)), key=valid.__getitem__)
        if (valid[-1] >= OVERFIT * valid[best_i] and valid[-1] - valid[best_i] > LOSS_FLOOR
                and len(train) == len(valid) and train[-1] < train[best_i]):
            out.append(Finding("overfitting", "warn",
                               f"the validation loss rose from {valid[best_i]:.3g} (epoch {best_i + 1}) to "
                               f"{valid[-1]:.3g} while the training loss kept falling",
                               "overfitting: fewer --epochs, more images, or pretrained weights"))
    return out


def _recall(confusion: list[list[int]], classes: list[str], totals: list[int]) -> list[Finding]:
    out = []
    for i, name in enumerate(classes):
        if totals[i] and confusion[i][i] / totals[i] < LOW_RECALL:
            out.append(Finding(f"low_recall:{name}", "warn",
                               f"class '{name}': only {confusion[i][i]} of {totals[i]} held-out images recognised",
                               f"its maps show what the model takes for '{name}', not the class: "
                               "add or check its images"))
    return out


def _images(train_counts: list[int] | None, classes: list[str], pretrained: bool) -> list[Finding]:
    if not train_counts:
        return []
    need = FEW_IMAGES["pretrained" if pretrained else "scratch"]
    few = [(c, n) for c, n in zip(classes, train_counts) if n < need]
    if not few:
        return []
    listed = ", ".join(f"'{c}' {n}" for c, n in few)
    regime = "fine-tuning" if pretrained else "training from scratch"
    return [Finding("few_images", "warn", f"few training images for {regime} ({listed}; {need} or more per class "
                    "advised)", "add images" + ("" if pretrained else ", or start from pretrained weights"))]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class TrainingVerdict(UserWarning):
    """Warned for a run whose verdict is not ok (the CLI prints it as one `warning:` line)."""


def verdict_line(verdict: dict, where: str | Path) -> str:
    """A saved verdict (`Verdict.to_json()`) as one line: status, every reason, what to try first."""
    findings = verdict["findings"]
    advice = next((f["advice"] for f in findings if f["severity"] == "fail"), findings[0]["advice"] if findings else "")
    reasons = "; ".join(f["message"] for f in findings)
    return f"training verdict {verdict['status']}: {reasons}. What to try: {advice} (in {where}/model.json)"
