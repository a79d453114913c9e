"""Explain image files with a trained run: compute results that carry their maps, save them
as a separate call, read a saved CAM folder back.

    results = explain("runs/pets", ["photo.jpg"], method="gradcam")   # computes, writes nothing
    results[0].map, results[0].pred, results[0].peak_xy
    results.save("cams")                                               # overlays, .npy, cams.jsonl, index.html
    cam(["photos/"], model="runs/pets", out="cams")                    # what `camkit cam` runs: the same,
                                                                       # saved batch by batch (one decode per image)

A CAM folder: per image `NNNNN_NAME_heatmap.png`, `NNNNN_NAME_overlay.png`, `NNNNN_NAME.npy` (the
map at the layer's resolution), one line per image in `cams.jsonl` and `index.html`, written
last. camkit never replaces a file it did not write: in a folder without its `.camkit-cams`
marker, a file of any name it would write stops the command before any work.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from camkit.cam import BaseCAM, get_layer, make_cam, split_layers
from camkit.cam.targets import ContrastTarget, OutputTarget
from camkit.core.choices import value
from camkit.core.device import autocast, resolve_precision
from camkit.core.distributed import gather, in_group, main_first, rank_world, shard
from camkit.core.files import (atomic_write, confined, ensure_writable_dir, os_error_line, parse_json, read_text,
                               refuse_inside_class_folder, remove_if_empty)
from camkit.core.geometry import Grid
from camkit.core.images import Decoded, ImageFiles, decoded_batches, open_rgb
from camkit.core.render import (DIVERGING, Style, figure_png, fit_for_drawing, gallery_html, overlay, peak_xy,
                                plot_cams, to_numpy)
from camkit.errors import CamkitError
from camkit.export.engine import Engine, OnnxCAM, choose_engine, open_graph
from camkit.train.run import LoadedModel, as_loaded, warn_if_unusable

CAMS_JSONL, GALLERY, MARKER = "cams.jsonl", "index.html", ".camkit-cams"


@dataclass
class Explanation:
    """One line of cams.jsonl: the image, the prediction, the map's target and peak, and the
    files saved for it (relative to the CAM folder; None until saved)."""
    image: str
    pred: str
    prob: float
    target: str
    method: str
    peak_xy: list[int]
    heatmap: str | None = None
    overlay: str | None = None
    map: str | None = None


@dataclass
class CamResult:
    """One explained image: the normalised map (h, w) at the layer's resolution, the class
    probabilities, and the size of the image the map is laid over; `picture` is a
    drawing-sized copy of that image (kept while saving, or for an image given in memory).
    `image` is the file's path, or a label such as 'image 3' for an image given in memory."""
    index: int
    image: Path | str
    size: tuple[int, int]
    map: Tensor
    probs: Tensor
    target: int
    classes: list[str]
    method: str
    model_size: int | tuple[int, int]
    picture: object = field(default=None, repr=False)
    versus: int | None = None  # a contrast's other class: the map answers "why target and not versus"
    grid: Grid | None = None   # where the map's cells look in the model's input (camkit.core.geometry)

    @property
    def pred(self) -> str:
        return self.classes[int(self.probs.argmax())]

    @property
    def prob(self) -> float:
        return round(float(self.probs.max()), 5)

    @property
    def peak_xy(self) -> list[int]:
        return peak_xy(self.map, self.model_size, *self.size, grid=self.grid)

    def _repr_png_(self) -> bytes:
        return figure_png(plot_cams([self], ncols=1))

    def record(self) -> Explanation:
        image = str(self.image.resolve()) if isinstance(self.image, Path) else self.image
        target = self.classes[self.target] + ("" if self.versus is None else f" vs {self.classes[self.versus]}")
        return Explanation(image=image, pred=self.pred, prob=self.prob, target=target,
                           method=self.method, peak_xy=self.peak_xy)


@dataclass
class CamBatch:
    """One model pass: its results and the tensors a metric needs (input, maps, targets)."""
    results: list[CamResult]
    x: Tensor
    maps: Tensor
    targets: Tensor
    grid: Grid | None = None


class Explanations(list):
    """The results of `explain`, in input order; `.save(out)` writes the CAM folder."""

    def save(self, out: str | Path, style: Style = Style()) -> list[Explanation]:
        writer = CamWriter(out, [stem(r.image, r.index) for r in self], style)
        return writer.write_all([self])

    def _repr_png_(self) -> bytes | None:
        """Jupyter shows the results inline (the first 12) as the last expression of a cell."""
        return figure_png(plot_cams(self[:12])) if len(self) else None

    def __getitem__(self, item):
        got = super().__getitem__(item)
        return Explanations(got) if isinstance(item, slice) else got


# ---------------------------------------------------------------- computing

def resolve_target(target: "str | int | OutputTarget | None", classes: list[str]) -> "int | OutputTarget | None":
    """'pred' (or None) -> None; a class name or index -> its index; 'contrast' -> "why the
    prediction and not the most likely other class" (camkit.cam.targets.ContrastTarget); a target
    object or callable (camkit.cam.targets) is used as it is."""
    if target in (None, "pred"):
        return None
    if isinstance(target, (list, tuple)):  # one per image
        return [resolve_target(t, classes) for t in target]
    if target == "contrast":
        return ContrastTarget()
    if isinstance(target, OutputTarget) or callable(target):
        return target
    if isinstance(target, int) and 0 <= target < len(classes):
        return target
    if target in classes:
        return classes.index(target)
    raise CamkitError(f"unknown class '{target}'; classes: {', '.join(classes)}")


def iter_explain(loaded: LoadedModel, files: ImageFiles | Sequence[Path], extractor: BaseCAM,
                 targets: Sequence[int | None] | int | None = None, bs: int = 32, precision: str = "fp32",
                 max_side: int | None = None, part: range | None = None) -> Iterator[CamBatch]:
    """Decode, batch and explain `files` (camkit.core.images.decoded_batches: an unreadable file is
    skipped or refused as `files` says; targets: None = prediction, an index, or one per file).
    With `max_side`, each result keeps a drawing-sized copy of its image for saving. `part`:
    only these positions of `files` (a rank's shard; results keep their index in `files`)."""
    feed = getattr(extractor, "feed", loaded.batch)  # the ONNX engine takes uint8, torch normalised
    keep = (lambda image: fit_for_drawing(image, max_side)) if max_side else None
    with extractor:
        for batch in decoded_batches(files, loaded.square, feed, bs, part, keep):
            yield explain_batch(extractor, batch.x, batch.items, targets, loaded.classes, precision, loaded.size)


def explain_batch(extractor: BaseCAM, x: Tensor, items: list[Decoded], targets: Sequence[int | None] | int | None,
                  classes: list[str], precision: str = "fp32", model_size: int | tuple[int, int] | None = None
                  ) -> CamBatch:
    """One pass over a prepared batch `x` (one Decoded per row, its `kept` the picture to draw
    on; targets indexed by Decoded.index when a sequence). `model_size` is the input side the
    map is scaled to for peak_xy (default: x's own height and width)."""
    if isinstance(targets, OutputTarget) or callable(targets):  # one target object for the batch
        wanted = targets
    else:
        wanted = [targets[d.index] if isinstance(targets, Sequence) else targets for d in items]
        wanted = wanted if any(t is not None for t in wanted) else None
    with autocast(x.device, precision):
        out = extractor.explain(x, wanted)
    probs, tgt = out.logits.softmax(1).cpu(), out.targets
    other = getattr(out.target, "other", None)
    size = model_size or (x.shape[-2], x.shape[-1])
    results = [CamResult(d.index, d.path, d.size, out.maps[k].detach().float().cpu(), probs[k], int(tgt[k]), classes,
                         extractor.name, size, d.kept, None if other is None else int(other[k]), out.grid)
               for k, d in enumerate(items)]
    return CamBatch(results, x, out.maps, tgt, out.grid)


def refuse_learner(model: object) -> None:
    """A fastai `Learner` (known by its `dls` and `model`, without importing fastai, which is
    heavy and sits above this module) is refused with the call that serves it: `learn.cam`."""
    if not isinstance(model, (str, PathLike, LoadedModel)) and hasattr(model, "dls") and hasattr(model, "model"):
        raise CamkitError("explain and cam take a run folder or a loaded run, not a fastai Learner: "
                          "call learn.cam(images, ...) after `import camkit.fastai`")


def prepare(model: str | Path | LoadedModel, method: str | None, layer: str | None, bs: int,
            precision: str, device: str | None, engine: str = "torch", **options) -> tuple[LoadedModel, BaseCAM, str]:
    """Load the run and make the extractor, checking every option before any image is read
    (`options`: signed, aug_smooth, eigen_smooth, for camkit.cam.make_cam). `engine` 'onnx' or
    'auto' may give exact CAM by ONNX Runtime (camkit.export.engine.OnnxCAM, which takes the uint8
    batch its `feed` makes; the precision returned is then the graph's own, 'fp32')."""
    refuse_learner(model)
    loaded = as_loaded(model, device)
    precision = resolve_precision(precision, loaded.device)
    if precision == "fp16":
        raise CamkitError("--precision fp16 is not supported for CAM; use bf16 or fp32")
    if bs < 1:
        raise CamkitError(f"--bs must be at least 1, not {bs}")
    probe = torch.zeros(1, 3, loaded.size, loaded.size, device=loaded.device)
    for name in split_layers(layer) or []:  # 'a,b': several layers, fused
        get_layer(loaded.model, name, probe)
    extractor = make_cam(method, loaded.model, layer, probe, **options)
    return (loaded, *_engine(engine, loaded, extractor, layer, precision, options))


def _engine(engine: str, loaded: LoadedModel, extractor: BaseCAM, layer: str | None, precision: str,
            options: dict) -> tuple[BaseCAM, str]:
    """The torch extractor, or exact CAM by ONNX Runtime when camkit.export.engine chooses it."""
    if value(engine) == "torch":
        return extractor, precision
    why_not = ("--layer" if layer is not None else "--aug-smooth" if options.get("aug_smooth") else
               "--eigen-smooth" if options.get("eigen_smooth") else None)
    choice = choose_engine(engine, loaded, extractor.name == "cam", precision,
                           None if why_not is None else f"{why_not} needs the torch engine")
    if choice.engine is not Engine.onnx:
        return extractor, precision
    return OnnxCAM(open_graph(choice, loaded), signed=options.get("signed", False)), "fp32"


def explain(model: str | Path | LoadedModel, images: Sequence[str | Path] | str | Path, method: str | None = None,
            target: "str | int | OutputTarget" = "pred", layer: str | None = None, bs: int = 32,
            device: str | None = None, precision: str = "fp32", signed: bool = False, aug_smooth: bool = False,
            eigen_smooth: bool = False, engine: str = "auto") -> Explanations:
    """Explain images (files or folders, recursively) with a run saved by `camkit train` (a
    fastai `Learner` is refused with a pointer to `learn.cam`, the notebook layer's twin, so this
    module never imports fastai): computes and returns the results, writes nothing. `precision`
    "bf16" (or "auto" where the hardware has native bf16) runs the passes under bf16 autocast, about twice as fast on such CPUs; maps are combined
    and normalised in fp32 either way. `target`: 'pred', a class name or index, 'contrast' (the
    prediction against the most likely other class) or a camkit.cam.targets target; `signed` keeps
    the evidence against (maps in [-1, 1]); `layer` 'a,b' fuses layers. `engine`: 'torch',
    'onnx' (ONNX Runtime, exact CAM) or 'auto' (camkit.export.engine.choose_engine)."""
    options = dict(signed=signed, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
    loaded, extractor, precision = prepare(model, method, layer, bs, precision, device, engine, **options)
    tgt = resolve_target(target, loaded.classes)
    files = ImageFiles.collect(images)
    warn_if_unusable(loaded)
    return Explanations(r for b in iter_explain(loaded, files, extractor, tgt, bs, precision) for r in b.results)


@in_group
def cam(images: Sequence[str | Path] | str | Path, model: str | Path | LoadedModel, method: str | None = None,
        target: "str | int | OutputTarget" = "pred", out: str | Path = "cams", layer: str | None = None,
        alpha: float = 0.5, colormap: str | None = None, bs: int = 32, device: str | None = None,
        precision: str = "fp32", quiet: bool = False, signed: bool = False, aug_smooth: bool = False,
        eigen_smooth: bool = False, engine: str = "auto") -> list[Explanation]:
    """What `camkit cam` runs: explain and save into `out`, batch by batch (each image decoded
    once, memory bounded by the batch). Returns the cams.jsonl records. Unless `quiet`, a line
    per tenth of the work goes to stderr. Under torchrun / accelerate launch each rank explains
    and draws its contiguous block of the images, and rank 0 writes cams.jsonl and index.html
    in input order: the folder equals a single process's. `engine` as for `explain`."""
    style = Style(alpha, colormap or (DIVERGING if signed else "jet"), signed=signed)
    loaded, extractor, precision = prepare(model, method, layer, bs, precision, device, engine, signed=signed,
                                           aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
    tgt = resolve_target(target, loaded.classes)
    files = ImageFiles.collect(images)
    warn_if_unusable(loaded)
    writer = main_first(lambda: CamWriter(out, [stem(f, i) for i, f in enumerate(files)], style,
                                          data_roots=(loaded.info.data_root,)))
    part = shard(len(files))
    batches = iter_explain(loaded, files, extractor, tgt, bs, precision, max_side=style.max_side, part=part)
    quiet = quiet or rank_world()[0] != 0  # progress once: rank 0's share
    return writer.write_all(batches if quiet else _with_progress(batches, len(part), bs))


def _with_progress(batches: Iterable[CamBatch], n: int, bs: int) -> Iterator[CamBatch]:
    """One line per tenth of the work on stderr (never a repainted bar: logs stay small)."""
    import sys

    total, step, done = (n + bs - 1) // bs, max(1, ((n + bs - 1) // bs) // 10), 0
    for done, batch in enumerate(batches, 1):
        if done % step == 0 or done == total:
            print(f"explained {min(done * bs, n)}/{n} images", file=sys.stderr, flush=True)
        yield batch


# ---------------------------------------------------------------- saving and reading

def stem(path: Path, index: int) -> str:
    """A safe, unique file stem for the index-th input: letters, digits, - _ . only."""
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in path.stem).lstrip(".")
    return f"{index:05d}_{name[:60] or 'image'}"


class CamWriter:
    """Writes a CAM folder. Refuses, before any work, a folder holding files of the same names
    that camkit did not write (no `.camkit-cams` marker): a user's index.html is never replaced;
    and a folder inside a dataset's class folder (`data_roots`: the datasets known to the caller,
    see files.class_folder_of), which the next training would skip."""

    def __init__(self, out: str | Path, stems: Sequence[str], style: Style = Style(),
                 data_roots: Sequence[str | Path | None] = ()):
        self.out, self.style = Path(out), style
        refuse_inside_class_folder(self.out, data_roots)
        if self.out.exists() and not self.out.is_dir():
            raise CamkitError(f"--out '{self.out}' is a file, not a folder")
        if self.out.is_dir() and not (self.out / MARKER).exists():
            planned = [CAMS_JSONL, GALLERY] + [f"{name}{s}" for name in stems
                                               for s in ("_heatmap.png", "_overlay.png", ".npy")]
            clash = next((n for n in planned if (self.out / n).exists()), None)
            if clash:
                raise CamkitError(f"'{self.out / clash}' exists and was not written by camkit; "
                                  "choose another --out")
        self.created = ensure_writable_dir(self.out, "output folder")

    def write_all(self, batches: Iterable[CamBatch | list[CamResult]]) -> list[Explanation]:
        """Every result's files, then cams.jsonl and index.html. An earlier camkit index in the
        folder is removed first, so a run that fails part-way never looks complete."""
        records: list[Explanation] = []
        try:
            for name in (CAMS_JSONL, GALLERY):
                if (self.out / MARKER).exists():
                    (self.out / name).unlink(missing_ok=True)
            atomic_write(self.out / MARKER, "camkit CAM folder\n")
            for batch in batches:
                for r in batch.results if isinstance(batch, CamBatch) else batch:
                    records.append(self.write(r))
                    r.picture = None  # drawn: let it go
            records = gather(records)  # the ranks' blocks in rank order: input order
            if rank_world()[0] == 0:
                atomic_write(self.out / CAMS_JSONL, "".join(json.dumps(asdict(e)) + "\n" for e in records))
                atomic_write(self.out / GALLERY, gallery_html(asdict(e) for e in records))
        except BaseException as e:
            if self.created is not None and not records:
                (self.out / MARKER).unlink(missing_ok=True)
                remove_if_empty(self.out, self.created)
            if isinstance(e, OSError):
                raise CamkitError(os_error_line(e, f"CAMs to '{self.out}'")
                                  or f"cannot write CAMs to '{self.out}' ({e.strerror or e})") from None
            raise
        return records

    def write(self, r: CamResult) -> Explanation:
        """heatmap, overlay (capped resolution) and the raw map of one result."""
        picture = r.picture if r.picture is not None else fit_for_drawing(open_rgb(r.image), self.style.max_side)
        heat, over = overlay(picture, r.map, self.style, r.grid)
        name = stem(r.image, r.index)
        e = r.record()
        e.heatmap, e.overlay, e.map = f"{name}_heatmap.png", f"{name}_overlay.png", f"{name}.npy"
        atomic_write(self.out / e.heatmap, lambda p: heat.save(p, format="PNG"))
        atomic_write(self.out / e.overlay, lambda p: over.save(p, format="PNG"))
        atomic_write(self.out / e.map, lambda p: np.save(p, to_numpy(r.map)))
        return e


def read_cams(folder: str | Path) -> list[Explanation]:
    """cams.jsonl of a CAM folder ([] when absent), every saved file confined to the folder."""
    folder = Path(folder)
    path = folder / CAMS_JSONL
    if not path.is_file():
        return []
    records = []
    for n, line in enumerate(read_text(path, "a CAM index", errors="replace").splitlines(), 1):
        try:
            e = Explanation(**parse_json(line))
        except (json.JSONDecodeError, TypeError):
            raise CamkitError(f"'{path}' line {n} is not a camkit CAM record") from None
        if not _well_formed(e):
            raise CamkitError(f"'{path}' line {n} is not a camkit CAM record (a field has the wrong type)")
        for name in (e.heatmap, e.overlay, e.map):
            if name is not None:
                confined(folder, name, f"'{path}' line {n}")
        records.append(e)
    return records


def _well_formed(e: Explanation) -> bool:
    texts = (e.image, e.pred, e.target, e.method)
    return (all(isinstance(t, str) for t in texts) and isinstance(e.prob, (int, float)) and not isinstance(e.prob, bool)
            and isinstance(e.peak_xy, list) and len(e.peak_xy) == 2 and all(isinstance(v, int) for v in e.peak_xy))
