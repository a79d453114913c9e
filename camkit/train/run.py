"""The run folder `camkit train` writes: its format, its one reader and its one writer.

    RUN/model.pth      weights as plain tensors (loaded with weights_only=True: nothing unpickled)
    RUN/model.json     arch, head, stride, dilate, classes, size, normalisation, data root,
                       confusion, summary, the resolved training options (spec) and the
                       training verdict; written last: a run without it is incomplete
    RUN/history.csv    one row per epoch (frozen and unfrozen epochs of fine_tune alike)
    RUN/valid.json     per held-out image: file (relative to the data root), label, pred, prob, loss
    RUN/loss.png, RUN/confusion.png
    RUN/lr_find.csv    fastai's lr_find curve (lr, loss), when trained with --lr auto
    RUN/cam_eval.json  faithfulness per CAM method (`camkit cam-eval`), merged per method
    RUN/cam_trust.json faithfulness without boxes (`camkit cam-eval RUN`): per method and class,
                       the sanity check, and the classes recognised by the absence of the others

Everything read from these files is validated here, so a malformed or hostile run folder is a
one-line CamkitError, and every path read from them stays inside its folder. A new run is
written into a staging folder inside RUN and swapped in only once complete, so a retrain that
fails leaves the previous run whole, and camkit never writes into a folder it did not create
a run in.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from camkit.core.choices import EvalSplit, Head, values
from camkit.core.device import resolve_device
from camkit.core.files import (TMP_PREFIX, atomic_write, confined, ensure_writable_dir, move_aside, parse_json,
                               read_text, remove_if_empty)
from camkit.core.images import open_rgb, resize_square
from camkit.data.folders import Normalizer
from camkit.errors import CamkitError
from camkit.train.models import StateMismatch, read_state_dict, rebuild
from camkit.train.spec import ModelSpec
from camkit.train.verdict import TrainingVerdict, Verdict, confusion_matrix, judge

MODEL_FORMAT = "camkit-model/2"
READABLE_FORMATS = ("camkit-model/1", MODEL_FORMAT)   # /1: paths in valid.json relative to the cwd
META, WEIGHTS, HISTORY, VALID, CAM_EVAL = "model.json", "model.pth", "history.csv", "valid.json", "cam_eval.json"
LR_FIND = "lr_find.csv"
LOSS_PLOT, CONFUSION_PLOT = "loss.png", "confusion.png"
STAGING = ".camkit-staging"
CAM_TRUST = "cam_trust.json"


# ---------------------------------------------------------------- model.json

@dataclass(frozen=True)
class RunInfo:
    """model.json, validated: what is needed to rebuild, feed and describe the model."""
    arch: str
    head: str
    stride: int
    classes: list[str]
    size: int
    stats: tuple[list[float], list[float]]
    pretrained: bool = False
    complete: bool = False
    epochs_planned: int = 0
    confusion: list[list[int]] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    data_root: str | None = None
    format: str = MODEL_FORMAT
    resize: str = "squish"   # how images reach size x size: squish (camkit train) or crop (fastai's Resize)
    world_size: int = 1      # processes that trained it (data-parallel under torchrun / accelerate)
    dilate: bool = False     # a lower stride made by dilation (camkit.train.spec.ModelSpec)
    verdict: dict | None = None   # camkit.train.verdict.Verdict.to_json() (runs before it: recomputed)
    spec: dict = field(default_factory=dict)   # the resolved training options (camkit.train.spec.TrainSpec)

    def to_json(self) -> dict:
        return {"format": self.format, **{k: v for k, v in asdict(self).items() if k != "format"}}

    @classmethod
    def describe(cls, model: ModelSpec, **fields: Any) -> RunInfo:
        """A new run's model.json (`camkit train` and a notebook's export_run alike): the network
        from its camkit.train.spec.ModelSpec, the rest as given."""
        return cls(arch=model.arch, head=model.head, stride=model.stride, dilate=model.dilate, **fields)

    @classmethod
    def from_json(cls, meta: Any, where: Path) -> "RunInfo":
        """Check every field's type; a file camkit did not write is refused in one sentence."""
        if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
            raise CamkitError(f"'{where}' is not a camkit model description (format {MODEL_FORMAT})")

        def need(key: str, check: Callable[[Any], bool], what: str, default: Any = ...) -> Any:
            if key not in meta and default is not ...:
                return default
            value = meta.get(key)
            if not check(value):
                raise CamkitError(f"'{where}': field '{key}' must be {what}")
            return value

        classes = need("classes", lambda v: isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str) for c in v)
                       and len(set(v)) == len(v), "a list of at least two distinct class names")
        stats = need("stats", lambda v: isinstance(v, list) and len(v) == 2 and all(
            isinstance(s, list) and len(s) == 3 and all(_finite(x) for x in s) for s in v) and 0 not in v[1],
            "[[3 means], [3 non-zero stds]]")
        return cls(
            arch=need("arch", lambda v: isinstance(v, str) and v != "", "an architecture name"),
            head=need("head", lambda v: v in values(Head), "'cam' or 'fastai'"),
            stride=need("stride", lambda v: v in (8, 16, 32), "8, 16 or 32", 32),
            classes=list(classes), size=need("size", lambda v: isinstance(v, int) and 8 <= v <= 4096,
                                             "an image side between 8 and 4096"),
            stats=(list(stats[0]), list(stats[1])),
            pretrained=bool(meta.get("pretrained", False)), complete=meta.get("complete") is True,
            epochs_planned=need("epochs_planned", lambda v: isinstance(v, int), "an integer", 0),
            confusion=need("confusion", lambda v: _matrix(v, len(classes)), "a square matrix of counts", []),
            summary=need("summary", lambda v: isinstance(v, dict), "an object", {}),
            data_root=need("data_root", lambda v: v is None or isinstance(v, str), "a folder path", None),
            format=meta["format"], resize=need("resize", lambda v: v in ("squish", "crop"), "'squish' or 'crop'", "squish"),
            world_size=need("world_size", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                            "a positive integer", 1),
            dilate=need("dilate", lambda v: isinstance(v, bool), "true or false", False),
            verdict=need("verdict", lambda v: v is None or isinstance(v, dict), "an object", None),
            spec=need("spec", lambda v: isinstance(v, dict), "an object", {}))

    @property
    def model_spec(self):
        """The network as camkit.train.spec describes it (checked again: model.json may be anyone's)."""
        return ModelSpec.parse(self.arch, self.head, self.stride, self.dilate)


# summary keys model.json already holds as fields of its own
_IN_INFO = ("arch", "head", "stride", "dilate", "pretrained", "classes", "confusion", "verdict", "history")


def run_summary(result: dict) -> dict:
    """A training's numbers as model.json's summary keeps them: without what RunInfo holds."""
    return {k: v for k, v in result.items() if k not in _IN_INFO}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _matrix(v: Any, n: int) -> bool:
    return v == [] or (isinstance(v, list) and len(v) == n and all(
        isinstance(r, list) and len(r) == n and all(isinstance(c, int) and c >= 0 for c in r) for r in v))


def _read_json(path: Path, what: str) -> Any:
    try:
        return parse_json(read_text(path, what))
    except FileNotFoundError:
        raise CamkitError(f"'{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CamkitError(f"'{path}' is not valid JSON ({what})") from None
    except OSError as e:
        raise CamkitError(f"'{path}' cannot be read ({e.strerror or e})") from None


def check_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CamkitError(f"run folder '{run_dir}' does not exist")
    return run_dir


def read_info(run_dir: str | Path) -> RunInfo:
    """model.json of a run, validated."""
    run_dir = check_run_dir(run_dir)
    if not (run_dir / META).is_file():
        raise CamkitError(f"'{run_dir}' is not a camkit run (no {META})")
    return RunInfo.from_json(_read_json(run_dir / META, "a camkit model description"), run_dir / META)


# ---------------------------------------------------------------- the model

@dataclass
class LoadedModel:
    """An eval-mode model with what is needed to feed it and name its outputs."""
    model: nn.Sequential
    info: RunInfo
    path: Path

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: list) -> torch.Tensor:
        """PIL images (any mode) or paths -> normalised (B, 3, S, S) batch on the model's device."""
        return self.batch([self.square(open_rgb(im) if isinstance(im, (str, Path)) else im) for im in images])

    def square(self, image) -> np.ndarray:
        """A PIL image as the model sees it: RGB, squished to S x S, HWC uint8."""
        return resize_square(image if image.mode == "RGB" else image.convert("RGB"), self.size, self.info.resize)

    def batch(self, squares: list[np.ndarray]) -> torch.Tensor:
        """S x S uint8 arrays -> normalised (B, 3, S, S) batch on the model's device."""
        x = torch.from_numpy(np.stack(squares)).permute(0, 3, 1, 2).to(self.device)
        return Normalizer(self.info.stats, device=self.device)(x)


def load(run_dir: str | Path, device: str | torch.device | None = None) -> LoadedModel:
    """Load a run saved by `train` (model.json + model.pth), tensors only — no unpickling."""
    info = read_info(run_dir)
    run_dir = Path(run_dir)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise CamkitError(f"'{run_dir}' is not a camkit run (no {WEIGHTS})")
    state = read_state_dict(weights, "weights")
    try:
        model = rebuild(info.model_spec, len(info.classes), state)
    except StateMismatch as e:
        raise CamkitError(f"'{weights}' does not match {info.arch} ({e})") from None
    if not info.complete:
        warnings.warn(f"'{run_dir}' holds an incomplete run (training was interrupted)", stacklevel=2)
    return LoadedModel(model.to(resolve_device(device)).eval(), info, run_dir)


def as_loaded(run: str | Path | LoadedModel, device: str | torch.device | None = None) -> LoadedModel:
    """`run` itself when it is already loaded (a caller that loads once and calls many times,
    the app, a notebook), else the run folder loaded onto `device`."""
    return run if isinstance(run, LoadedModel) else load(run, device=device)


def warn_if_unusable(loaded: LoadedModel) -> None:
    """Warn, once the command's own checks have passed and before any map or prediction is
    made, that an unusable run's outputs explain nothing (a TrainingVerdict warning)."""
    verdict = read_verdict(loaded.path, loaded.info)
    if verdict is not None and not verdict.usable:
        warnings.warn(TrainingVerdict(f"'{loaded.path}' holds a model whose training verdict is {verdict.headline}; "
                                      "its maps and predictions explain nothing"), stacklevel=3)


# ---------------------------------------------------------------- history, validation, evaluation

def read_verdict(run_dir: str | Path, info: RunInfo | None = None) -> Verdict | None:
    """The run's training verdict: model.json's, or (a run written before verdicts, a notebook
    export) recomputed from its confusion matrix and history; None without a confusion matrix."""
    info = info or read_info(run_dir)
    saved = Verdict.from_json(info.verdict) if info.verdict is not None else None
    if saved is not None or not info.confusion:
        return saved
    counts = info.summary.get("train_counts")
    counts = counts if isinstance(counts, list) and all(isinstance(c, int) for c in counts) else None
    return judge(info.confusion, info.classes, read_history(run_dir), counts, info.pretrained)


def read_history(run_dir: str | Path) -> list[dict]:
    """history.csv as rows of numbers ([] when absent); a malformed file is an error."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    try:
        rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))
        return [{k: int(v) if k == "epoch" else (v if k == "phase" else float(v)) for k, v in r.items()}
                for r in rows]
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error):
        raise CamkitError(f"'{path}' is not a camkit history (one row of numbers per epoch)") from None


@dataclass(frozen=True)
class ValidRecord:
    """One held-out image: where it is now, its label and the saved model's prediction."""
    file: Path
    label: str
    pred: str
    prob: float
    loss: float


def data_root(run_dir: str | Path, info: RunInfo | None = None, override: str | Path | None = None) -> Path:
    """The dataset the run was trained on: `override`, else the one recorded in model.json
    (runs of format /1 stored paths relative to the working directory)."""
    if override is not None:
        return Path(override)
    info = info or read_info(run_dir)
    return Path(info.data_root) if info.data_root else Path.cwd()


def read_valid(run_dir: str | Path, info: RunInfo | None = None,
               root: str | Path | None = None) -> list[ValidRecord]:
    """valid.json with every file confined to the data root ([] when absent)."""
    run_dir = check_run_dir(run_dir)
    path = run_dir / VALID
    if not path.is_file():
        return []
    info = info or read_info(run_dir)
    root = data_root(run_dir, info, root)
    records = _read_json(path, "validation predictions")
    if not isinstance(records, list):
        raise CamkitError(f"'{path}' must be a list of records")
    out = []
    for r in records:
        if not (isinstance(r, dict) and r.get("label") in info.classes and r.get("pred") in info.classes
                and _finite(r.get("prob")) and _finite(r.get("loss"))):
            raise CamkitError(f"'{path}' has a malformed record: {str(r)[:80]}")
        out.append(ValidRecord(confined(root, r.get("file"), f"'{path}' entry"), r["label"], r["pred"],
                               float(r["prob"]), float(r["loss"])))
    return out


def read_cam_eval(run_dir: str | Path) -> dict[str, dict]:
    path = Path(run_dir) / CAM_EVAL
    if not path.is_file():
        return {}
    data = _read_json(path, "CAM evaluation")
    if not isinstance(data, dict) or not all(_scores(v) and all(_scores(c) for c in v.get("per_class", {}).values())
                                             for v in data.values()):
        raise CamkitError(f"'{path}' must map method names to results (images and scores as numbers)")
    return data


def _scores(v: Any, flags: tuple[str, ...] = ()) -> bool:
    """A result: images (int) and scores as finite numbers (NaN allowed: a score with no image
    to average over), optional per_class results of the same shape, and `flags` as booleans."""
    return isinstance(v, dict) and isinstance(v.get("images"), int) and all(
        (isinstance(x, dict) and all(_scores(c) for c in x.values())) if k == "per_class"
        else isinstance(x, bool) if k in flags
        else (isinstance(x, float) and math.isnan(x)) or _finite(x)
        for k, x in v.items() if k != "images")


def read_cam_trust(run_dir: str | Path) -> dict | None:
    """RUN/cam_trust.json (`camkit cam-eval RUN` without boxes), validated; None when absent."""
    path = Path(run_dir) / CAM_TRUST
    if not path.is_file():
        return None
    data = _read_json(path, "CAM evaluation without boxes")
    absence = data.get("absence") if isinstance(data, dict) else None
    if not (isinstance(data, dict) and data.get("split") in values(EvalSplit) and isinstance(data.get("images"), int)
            and isinstance(data.get("methods"), dict)
            and all(_scores(v, ("sanity_passed",)) for v in data["methods"].values())
            and isinstance(absence, dict) and isinstance(absence.get("flagged"), list)
            and all(isinstance(c, str) for c in absence["flagged"]) and isinstance(absence.get("per_class"), dict)
            and all(isinstance(v, dict) and _finite(v.get("score")) and isinstance(v.get("method"), str)
                    for v in absence["per_class"].values())):
        raise CamkitError(f"'{path}' is not a camkit evaluation (split, images, methods, absence)")
    return data


def save_cam_trust(run_dir: str | Path, result: dict) -> bool:
    """Write RUN/cam_trust.json atomically, unless it holds an evaluation of the same split over
    more images (a quick `--limit` check never replaces a full one); returns whether it was
    written. NaN (a class with no correctly classified image) is written as JSON's NaN, which
    Python's json reads back."""
    saved = read_cam_trust(run_dir)
    if saved and saved["split"] == result["split"] and saved["images"] > result["images"]:
        return False
    atomic_write(Path(run_dir) / CAM_TRUST, json.dumps(result, indent=1))
    return True


def save_cam_eval(run_dir: str | Path, results: dict[str, dict]) -> list[str]:
    """Merge `results` into RUN/cam_eval.json per method. A method's saved result is replaced
    only by one over at least as many images (a quick `--limit` check never overwrites a full
    evaluation). Returns the methods kept from before instead of replaced."""
    saved = read_cam_eval(run_dir)
    kept = [m for m, r in results.items() if saved.get(m, {}).get("images", 0) > r.get("images", 0)]
    merged = {**saved, **{m: r for m, r in results.items() if m not in kept}}
    atomic_write(Path(run_dir) / CAM_EVAL, json.dumps(merged, indent=1))
    return kept


# ---------------------------------------------------------------- writing a run

@dataclass
class RunContents:
    """Everything a finished (or interrupted) training puts in a run folder."""
    info: RunInfo
    state: dict[str, torch.Tensor]
    history: list[dict]
    valid: list[dict]        # {file (relative to the data root), label, pred, prob, loss}
    lr_curve: list[tuple[float, float]] = field(default_factory=list)   # lr_find's (lr, loss), when run


@dataclass(frozen=True)
class HeldOut:
    """A model's predictions on the held-out images as a run keeps them: valid.json's rows, and
    the accuracy, mean loss and confusion matrix its summary and verdict read."""
    rows: list[dict]              # {file (relative to the data root), label, pred, prob, loss}
    accuracy: float
    loss: float | None            # None: no held-out image
    confusion: list[list[int]]    # rows: actual class, columns: predicted class


def held_out(files: Sequence, targets: torch.Tensor, probs: torch.Tensor, losses: torch.Tensor,
             classes: list[str], root: Path) -> HeldOut:
    """The held-out predictions of `camkit train` and of a notebook's export_run, written once:
    a row per item that is a file inside `root` (its path relative to it, so reading the run
    does not depend on the working folder; any other item gets no row), prob and loss to 5
    decimals; accuracy = mean(argmax p = target) and the mean loss to 4 (0.0 and None with no
    image)."""
    root = root.resolve()
    rows = []
    for f, y, p, loss in zip(files, targets, probs, losses):
        path = Path(f).resolve() if isinstance(f, (str, Path)) else None
        if path is not None and path.is_relative_to(root):
            rows.append({"file": path.relative_to(root).as_posix(), "label": classes[int(y)],
                         "pred": classes[int(p.argmax())], "prob": round(float(p.max()), 5),
                         "loss": round(float(loss), 5)})
    pred = probs.argmax(1)
    accuracy = round(float((pred == targets).float().mean()), 4) if len(targets) else 0.0
    loss = round(float(losses.mean()), 4) if len(losses) else None
    return HeldOut(rows, accuracy, loss, confusion_matrix(pred, targets.long(), len(classes)).tolist())


def _own_entries(folder: Path) -> bool:
    """Whether every entry of `folder` is camkit's own temp or staging file."""
    return all(p.name.startswith((TMP_PREFIX, STAGING)) for p in folder.iterdir())


def check_out(out: Path, overwrite: bool) -> Path | None:
    """Refuse an output folder before any work: one that holds a run (unless `overwrite`), or
    one that holds anything camkit did not write there (always; a model.json that is not
    camkit's is the user's). Returns the topmost folder created now, or None."""
    if out.exists() and not out.is_dir():
        raise CamkitError(f"--out '{out}' is a file, not a folder")
    if out.is_dir():
        if (out / META).exists():
            try:
                read_info(out)
            except CamkitError:
                raise CamkitError(f"'{out / META}' was not written by camkit; camkit does not write over files "
                                  "it did not write: choose another --out") from None
            if not overwrite:
                raise CamkitError(f"'{out}' already holds a run; pass --overwrite or choose another --out")
        elif not _own_entries(out):
            raise CamkitError(f"'{out}' is not empty and holds no camkit run; camkit does not write over "
                              "files it did not write: choose another --out")
    return ensure_writable_dir(out)


def save_run(out: Path, contents: RunContents, overwrite: bool) -> None:
    """Write the run into a staging folder inside `out`, then swap its files in with model.json
    last. A previous run in `out` is untouched until the new one is completely written; during
    the swap itself (a few renames) the folder has no model.json, so a kill there leaves a run
    marked incomplete, never a mix that looks complete. The previous run's cam_eval.json
    describes the old weights: it is moved aside to cam_eval.previous.json."""
    check_out(out, overwrite)
    staging = out / f"{STAGING}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)  # camkit's own leftover from a killed process
    try:
        staging.mkdir()
        names = _write_files(staging, contents)
        (out / META).unlink(missing_ok=True)  # the old run stops looking complete before the swap
        for name in names:
            os.replace(staging / name, out / name)
        if (out / CAM_EVAL).exists():
            move_aside(out / CAM_EVAL, out / "cam_eval.previous.json")
        if (out / CAM_TRUST).exists():
            move_aside(out / CAM_TRUST, out / "cam_trust.previous.json")
        if LR_FIND not in names and (out / LR_FIND).exists():   # the previous training's search
            move_aside(out / LR_FIND, out / "lr_find.previous.csv")
        os.replace(staging / META, out / META)
    except OSError as e:
        raise CamkitError(f"cannot write the run to '{out}' ({e.strerror or e})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_files(folder: Path, c: RunContents) -> list[str]:
    """The run's files into `folder`, model.json last; returns the names written before it."""
    from camkit.core.plots import plot_confusion, plot_losses

    torch.save({k: v.detach().cpu().contiguous() for k, v in c.state.items()}, folder / WEIGHTS)
    with open(folder / HISTORY, "w", newline="", encoding="utf-8") as f:
        if c.history:
            writer = csv.DictWriter(f, fieldnames=list(c.history[0]))
            writer.writeheader()
            writer.writerows(c.history)
    (folder / VALID).write_text(json.dumps(c.valid, indent=1), encoding="utf-8")
    plot_losses(c.history, folder / LOSS_PLOT)
    plot_confusion(np.array(c.info.confusion), c.info.classes, folder / CONFUSION_PLOT)
    names = [WEIGHTS, HISTORY, VALID, LOSS_PLOT, CONFUSION_PLOT]
    if c.lr_curve:
        with open(folder / LR_FIND, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("lr", "loss"), *c.lr_curve])
        names.append(LR_FIND)
    (folder / META).write_text(json.dumps(c.info.to_json(), indent=1), encoding="utf-8")
    return names


def export_model(run_dir: str | Path, dest: str | Path) -> Path:
    """Copy what is needed to use the run elsewhere (a Hugging Face Space, a colleague) into
    the new folder `dest`: the weights and model.json, whose local paths are dropped (the
    data root, the run folder, skipped files: paths of the author's machine have no place in a
    public copy). The weights are checked to
    be plain tensors first, so nothing pickled is passed on."""
    info = read_info(run_dir)
    weights = Path(run_dir) / WEIGHTS
    read_state_dict(weights, "weights")
    dest = Path(dest)
    if dest.exists():
        raise CamkitError(f"'{dest}' already exists; the model is copied into a new folder")
    dest.mkdir(parents=True)
    shutil.copyfile(weights, dest / WEIGHTS)
    private = ("out", "skipped")    # local paths: the run folder, files skipped in the dataset
    public = {**info.to_json(), "data_root": None,
              "summary": {k: v for k, v in info.summary.items() if k not in private}}
    atomic_write(dest / META, json.dumps(public, indent=1))
    return dest


def discard_out(out: Path, created: Path | None) -> None:
    """After a failed command: remove the output folders this command created, while empty."""
    if created is not None:
        remove_if_empty(out, created)
