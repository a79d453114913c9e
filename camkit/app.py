"""`camkit app`: a trained run behind a small Gradio web app, the last step of the fastai course
(put the model where others can try it), with the heatmap that says why.

    app = CamApp("runs/pets")                          # compute: no gradio needed
    answer = app.explain("photo.jpg", method="gradcam", alpha=0.4)
    answer.probs, answer.overlay                       # {class: p}, a PIL image
    launch("runs/pets")                                # the web app on http://127.0.0.1:7860

The tab "Explain" takes an upload, a pasted image or a webcam shot and shows the class
probabilities and the CAM overlay, with controls for method, target class, alpha and colormap;
example images come from the run's own validation set. The tab "Clean" (when the run's
dataset is on this machine) shows the out-of-sample ranking `camkit clean --folds` saved
(with its estimate of how many to review), else ranks the dataset in sample with
`camkit.clean.rank`, shows the most suspicious images with their maps, and saves each keep / delete / relabel decision to a file
as it is made; applying them moves files only, logged and undoable (`camkit.clean`).

Security model: every image that reaches the model (an upload, a pasted `data:` URL, a
webcam shot) is capped at 25 MB and decoded by camkit's guarded decoder with a lower pixel cap
than the CLI's (a decompression bomb becomes a message in the app); a URL is never fetched.
The app binds 127.0.0.1 unless told otherwise and never opens a public share link unless
asked. The Clean tab, which moves the owner's files, is served on a loopback bind only: on a
public one (`--share`, `--host 0.0.0.0`) it is left out, endpoints included, unless
`allow_remote_clean` comes with a login (`auth`). No absolute path of the machine appears in
the page, its config or a message. Uploads and drawings live in one app-owned temporary
folder, kept under TEMP_BUDGET and removed when the app closes.
Computing lives in `CamApp` and `Cleaner`; `build` only wires them to Gradio components.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import functools
import ipaddress
import os
import shutil
import socket
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camkit.errors import CamkitError
# camkit.train.run (torch) is imported where a run is loaded: the light Space (camkit.share.ortlite) serves
# this module's Explain tab on onnxruntime, without torch
if TYPE_CHECKING:
    from camkit.train.run import LoadedModel
from camkit.train.verdict import Verdict

APP_MAX_PIXELS = 64_000_000     # a 50-megapixel phone photo passes; ~190 MB as RGB at most
MAX_UPLOAD = "25mb"            # refused by the server before any decoding
MAX_UPLOAD_BYTES = 25 * 1000 ** 2     # the same cap in bytes (Gradio's "mb" is 10**6), for pasted data: URLs
TEMP_BUDGET = 256 * 2 ** 20    # bytes of uploads and drawings kept in the app's temporary folder
TEMP_KEEP = 8                  # the newest files of that folder are never pruned (an upload being explained)
DELETE_CACHE = (600, 3600)     # Gradio's own sweep: every 10 min, its files older than an hour
COLORMAPS = ("jet", "turbo", "viridis", "inferno", "magma", "plasma", "gray", "RdBu_r")
CLEAN_SHOWN = 48               # suspects shown (with maps) in the cleaner tab
INSTALL = "pip install 'camkit[app]'"
DECISIONS = "clean-decisions.json"   # DATA/clean-decisions.json: the cleaner tab's decisions, as made


def require_gradio():
    """The gradio module, or one sentence saying how to install it (it is an optional extra)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # no calls home from an offline machine
    try:
        import gradio
    except ImportError:
        raise CamkitError(f"camkit app needs gradio, an optional extra: {INSTALL}") from None
    return gradio


# ---------------------------------------------------------------- computing

@dataclass(frozen=True)
class Answer:
    """What the app shows for one image: class probabilities, the overlay and a caption."""
    probs: dict[str, float]
    overlay: Any          # PIL image, drawn at most `max_side` pixels on its longest side
    caption: str


class CamApp:
    """A loaded run and its CAM extractors (made once per method, on first use). One lock
    serialises the passes: the extractors hook the shared model, so two requests at once
    would read each other's activations."""

    def __init__(self, run: str | Path | LoadedModel, device: str | None = None, max_side: int = 768):
        from camkit.train.run import as_loaded

        self.loaded = as_loaded(run, device)
        self.max_side = max_side
        self._extractors: dict[str, Any] = {}
        self.lock = threading.Lock()

    @property
    def classes(self) -> list[str]:
        return self.loaded.classes

    @functools.cached_property
    def verdict(self) -> Verdict | None:
        """The run's training verdict (model.json's, or recomputed for an older run)."""
        from camkit.train.run import read_verdict

        return read_verdict(self.loaded.path, self.loaded.info)

    @functools.cached_property
    def _methods(self) -> list[str]:
        import torch

        from camkit.cam import METHODS, make_cam

        probe = torch.zeros(1, 3, self.loaded.size, self.loaded.size, device=self.loaded.device)
        default = make_cam(None, self.loaded.model, None, probe).name
        return [default, *(m for m in METHODS if m != default and (m != "cam" or default == "cam"))]

    def methods(self) -> list[str]:
        """The methods this run can serve, camkit's default for it first: exact `cam` only where
        the head allows it and the body's output is larger than 1 x 1 at the run's size."""
        return list(self._methods)

    def targets(self) -> list[str]:
        """pred, each class, and contrast ("why the prediction and not the runner-up")."""
        return ["pred", *self.classes, "contrast"]

    def _extractor(self, method: str, signed: bool):
        from camkit.explain import prepare

        if (method, signed) not in self._extractors:
            self._extractors[method, signed] = prepare(self.loaded, method, None, 1, "fp32", None, signed=signed)[1]
        return self._extractors[method, signed]

    def explain(self, image: str | Path, method: str | None = None, target: str = "pred", alpha: float = 0.5,
                colormap: str = "jet", signed: bool = False) -> Answer:
        """Probabilities and CAM overlay of one image file (the app's uploads are files).
        `signed` keeps evidence against the target (drawn with a diverging colormap when the
        colormap is left at jet)."""
        from camkit.explain import Decoded, explain_batch, resolve_target
        from camkit.core.render import DIVERGING, Style, fit_for_drawing, overlay

        style = Style(alpha, DIVERGING if signed and colormap == "jet" else colormap, self.max_side, signed)
        method = method or self.methods()[0]
        if method not in self.methods():
            raise CamkitError(f"method '{method}' is not available for this run; choose from {', '.join(self.methods())}")
        picture = open_upload(image)
        item = Decoded(0, "image", picture.size, self.loaded.square(picture))
        with self.lock, self._extractor(method, signed) as extractor:
            batch = explain_batch(extractor, self.loaded.batch([item.square]), [item],
                                  resolve_target(target, self.classes), self.classes, "fp32", self.loaded.size)
        r = batch.results[0]
        drawn = overlay(readable(fit_for_drawing(picture, self.max_side)), r.map, style, r.grid)[1]
        probs = {c: round(float(p), 6) for c, p in zip(self.classes, r.probs)}
        versus = "" if r.versus is None else f" and not **{self.classes[r.versus]}**"
        caption = (f"**{r.pred}** ({r.prob:.1%}); heatmap: {method} for class "
                   f"**{self.classes[r.target]}**{versus}, peak at x={r.peak_xy[0]}, y={r.peak_xy[1]}"
                   + ("; red: evidence for, blue: against" if signed else ""))
        return Answer(probs, drawn, caption)

    def examples(self, per_class: int = 2) -> list[str]:
        return held_out_examples(self.loaded.path, per_class)


def held_out_examples(run: str | Path, per_class: int = 2) -> list[str]:
    """Up to `per_class` of the run's held-out images per class that still exist (the app's
    example row, the Space's examples/); none when valid.json is missing or unreadable."""
    from camkit.train.run import read_valid

    try:
        records = read_valid(run)
    except CamkitError:
        return []
    out: dict[str, list[str]] = {}
    for r in records:
        if r.file.is_file() and len(out.setdefault(r.label, [])) < per_class:
            out[r.label].append(str(r.file))
    return [f for files in out.values() for f in files]


def readable(picture, side: int = 256):
    """A picture smaller than `side` scaled up (bicubic) so that its overlay is legible."""
    from PIL import Image

    scale = side / max(picture.size)
    if scale <= 1:
        return picture
    return picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.BICUBIC)


def open_upload(path: str | Path):
    """An uploaded file as RGB through camkit's guarded decode, capped at APP_MAX_PIXELS."""
    from camkit.core.images import open_rgb

    if path is None or str(path) == "":
        raise CamkitError("no image: upload, paste or take a picture first")
    try:
        return open_rgb(path, max_pixels=APP_MAX_PIXELS)
    except CamkitError as e:   # name the upload, not the server's temporary copy of it
        raise CamkitError(str(e).replace(str(path), Path(path).name)) from None


@dataclass(frozen=True)
class Shown:
    """One suspect as a session saw it: the ranking's entry and its two pictures. A session
    keeps its own list (the app's gr.State), so another tab's re-ranking never changes what a
    click here refers to; the decision is keyed by the file (`suspect.rel`), not by position."""
    suspect: Any
    original: Any
    overlay: Any

    @property
    def caption(self) -> str:
        s = self.suspect
        return f"{s.rel} · {s.label} → {s.pred} {s.prob:.0%}"


class Cleaner:
    """The cleaner tab's compute: the ranking of the run's dataset with its suspects' pictures,
    and the decisions file they are saved to as they are made (`camkit clean --apply` reads
    it). It holds no list of suspects: each call names its file by path relative to the data
    root, so sessions (browser tabs) never mix. One lock orders the writes of the decisions
    file against Apply and Undo."""

    def __init__(self, app: CamApp, data: str | Path | None = None):
        from camkit.clean import DecisionFile
        from camkit.train.run import data_root

        self.app = app
        self.root = data_root(app.loaded.path, app.loaded.info, data)
        self.decisions = DecisionFile(self.root / DECISIONS, app.loaded.path, self.root)
        self.lock = threading.Lock()

    @staticmethod
    def available(app: CamApp, data: str | Path | None = None) -> bool:
        from camkit.train.run import data_root

        root = data_root(app.loaded.path, app.loaded.info, data)
        return app.loaded.info.data_root is not None and root.is_dir()

    def rank(self, shown: int = CLEAN_SHOWN) -> list[Shown]:
        """Rank the dataset; the `shown` most suspicious images with their pictures."""
        return self.review(shown)[0]

    def review(self, shown: int = CLEAN_SHOWN) -> tuple[list[Shown], str]:
        """The `shown` most suspicious images with their pictures, and the line said above them:
        `camkit clean --folds`'s saved out-of-sample ranking (RUN/clean_ranking.json) when it
        ranked this data folder, its moved or removed images dropped; else the run's own model
        ranks in sample (training K fold models on a click would take minutes). The line also
        counts the images with an image-quality or leakage finding (camkit.data.quality)."""
        from camkit.clean import overlay_pictures, rank

        saved, note = self._saved()
        with self.app.lock:
            ranking = saved.ranking if saved else rank(self.app.loaded, self.root)
            suspects = ranking[:shown]
            pictures = overlay_pictures(self.app.loaded, suspects, side=256)
        flagged = sum(bool(s.quality) for s in ranking)
        if flagged:
            note += f" {flagged} image(s) with an image-quality or leakage finding."
        return [Shown(s, *p) for s, p in zip(suspects, pictures)], note

    def _saved(self):
        """(the saved ranking or None, the line that says which ranking is shown)."""
        from camkit.clean import RANKING, read_ranking
        from camkit.train.folds import DEFAULT_FOLDS

        hint = (f"In-sample ranking by the run's own model, which may have memorised mislabelled images: "
                f"`camkit clean RUN --folds {DEFAULT_FOLDS}` gives out-of-sample scores and an estimate of how "
                "many to review.")
        try:
            saved = read_ranking(self.app.loaded.path, self.root, self.app.classes)
        except CamkitError as e:
            return None, f"{hint} (RUN/{RANKING} was not used: {self.private(str(e))})"
        if saved is None:
            return None, hint
        return saved, saved_note(saved)

    def choices(self) -> list[str]:
        return ["keep", "delete", *(f"relabel:{c}" for c in self.app.classes)]

    def details(self, item: Shown) -> tuple[Any, Any, str, str]:
        """(original, overlay, description, current decision) of one shown suspect."""
        from camkit.clean import evidence

        s = item.suspect
        why = evidence(s)
        text = (f"**{s.rel}**: label **{s.label}**, predicted **{s.pred}** ({s.prob:.1%}), loss {s.loss:.3f}"
                + (f"; {why}" if why != "-" else ""))
        return item.original, item.overlay, text, self.decisions.get(s.rel)

    def decide(self, rel: str, action: str) -> str:
        """Save the decision for the file `rel` (relative to the data root) at once, atomically;
        returns a status line. A file an Apply has moved since it was shown is refused."""
        if action not in self.choices():
            raise CamkitError(f"'{action}' is not a decision; choose from {', '.join(self.choices())}")
        with self.lock:
            if not self._in_data(rel):
                raise CamkitError(f"'{rel}' is no longer in the data folder (an Apply moved it?): rank again")
            self.decisions.set(rel, action)
            return f"saved: {rel} → {action} ({self.decisions.count()} decisions in {DECISIONS})"

    def _in_data(self, rel: str) -> bool:
        """Whether `rel` names a regular file inside the data root (never outside it)."""
        path = Path(rel)
        if path.is_absolute() or ".." in path.parts:
            return False
        full = self.root / path
        return full.is_file() and full.resolve().is_relative_to(self.root.resolve())

    def apply(self) -> str:
        from camkit.clean import apply

        with self.lock:
            moves = apply(self.app.loaded.path, self.decisions.path, self.root)
            self.decisions.archive()
        return f"{len(moves)} file(s) moved (logged in clean.jsonl; Undo moves them back)"

    def undo(self) -> str:
        from camkit.clean import undo

        with self.lock:
            return f"{len(undo(self.app.loaded.path, self.root))} file(s) moved back"

    def private(self, message: str) -> str:
        """`message` with the machine's paths of the data folder and the run replaced by
        DATA and RUN: what the page shows never names a folder of the owner's machine."""
        for path, name in ((self.root, "DATA"), (self.app.loaded.path, "RUN")):
            for form in {str(path.resolve()), str(path)}:
                message = message.replace(form, name)
        return message


def saved_note(saved) -> str:
    """The line above a saved out-of-sample ranking (camkit.clean.SavedRanking): the estimate,
    the weak-model warning when the fold models do not beat the larger class, and what has
    changed in the data folder since."""
    e = saved.ranking.estimate
    line = (f"About **{e.to_review}** images to review ({e.mislabelled} likely mislabelled, {e.off_topic} "
            f"off-topic), out-of-sample from {e.folds} folds (`camkit clean --folds`, {saved.date}"
            + ("" if saved.split == "all" else f", {saved.split} images only") + ").")
    if saved.dropped:
        line += (f" {saved.dropped} ranked image(s) moved or removed since are left out; run "
                 f"`camkit clean RUN --folds {e.folds}` again to rank the folder as it is now.")
    if e.weak:
        line += f" **Warning:** {e.warning()}."
    return line


# ---------------------------------------------------------------- the Gradio app

def _guard(fn, private=None):
    """Run `fn`, turning camkit's one-sentence errors into a message shown in the app
    (through `private`, which takes the machine's paths out of it, when given)."""
    gr = require_gradio()

    @functools.wraps(fn)   # Gradio reads the signature (an event argument is injected by its type)
    def call(*args):
        try:
            return fn(*args)
        except CamkitError as e:
            raise gr.Error(private(str(e)) if private else str(e), print_exception=False) from None
    return call


def verdict_banner(verdict: Verdict | None) -> str:
    """The training verdict as the app's second line (Markdown): said before any map is shown."""
    if verdict is None:
        return "**Training verdict: unknown** (this run has no held-out evaluation)."
    text = f"**Training verdict: {verdict.status}** — {verdict.reason}."
    if not verdict.usable:
        text += " The maps of an unusable model explain nothing: retrain before reading them."
    return text


def build(app: CamApp, cleaner: Cleaner | None = None, examples: list[str] | None = None):
    """The Gradio Blocks: an Explain tab and, with a `cleaner`, a Clean tab. Gradio's own
    cache sweep (DELETE_CACHE) runs beside camkit's budget (`prune_temp`)."""
    gr = require_gradio()
    title = " vs ".join(app.classes) if len(app.classes) <= 4 else f"{len(app.classes)} classes"
    with gr.Blocks(title=f"camkit: {title}", analytics_enabled=False, delete_cache=DELETE_CACHE) as blocks:
        gr.Markdown(f"# camkit: {title}\n{app.loaded.info.arch}, {app.loaded.info.head} head, "
                    f"{app.loaded.size}-px input. Upload, paste or take a picture: the model's answer and "
                    "the heatmap of where it looked.")
        gr.Markdown(verdict_banner(app.verdict), elem_id="camkit-verdict")
        with gr.Tab("Explain"):
            _explain_tab(gr, app, examples if examples is not None else app.examples())
        if cleaner is not None:
            with gr.Tab("Clean"):
                _clean_tab(gr, cleaner)
    return blocks


def guard_upload(gr, image) -> None:
    """Make the gr.Image `image` hand every input to camkit's guarded decoder as a file of at
    most MAX_UPLOAD_BYTES: an uploaded file's path as it is (the server capped its size), a
    pasted `data:` URL written out by `save_pasted` (capped before decoding), a URL never
    fetched, and no other path: a request may name any file of the machine (a FileData without
    its "meta" skips Gradio's upload-folder check), so only the app's own folder is read.
    Gradio's own preprocessing would open the file with PIL first (a pasted decompression bomb
    decoded whole, past both caps) and download a URL of any size. BodyCap bounds the request
    that carries a pasted image.
    (Instance overrides, not a subclass: Gradio writes a .pyi file beside the module of
    every Component subclass.)"""
    from gradio_client.utils import is_http_url_like

    move = image.async_move_resource_to_block_cache

    async def local_only(path):
        if path is not None and is_http_url_like(str(path)):
            raise gr.Error("a URL is not fetched: upload or paste the image itself", print_exception=False)
        return await move(path)

    def guarded(payload):
        if payload is None:
            return None
        try:
            if (payload.url or "").startswith("data:"):
                return str(save_pasted(payload.url, app_temp_dir()))
            if payload.path and _inside(payload.path, app_temp_dir()):
                return str(payload.path)
        except CamkitError as e:
            raise gr.Error(str(e), print_exception=False) from None
        raise gr.Error("not an uploaded image: upload, paste or take a picture", print_exception=False)

    image.async_move_resource_to_block_cache = local_only
    image.preprocess = guarded


class BodyCap:
    """ASGI middleware: a request body larger than a pasted image at the upload cap (base64
    and JSON around it) is refused with 413 before it is read, so that a huge `data:` URL is
    never held in memory; Gradio's upload route has its own cap (max_file_size) and is left
    to it. The cap is read per request (MAX_UPLOAD_BYTES)."""

    def __init__(self, app):
        self.app = app

    @staticmethod
    def limit() -> int:
        return MAX_UPLOAD_BYTES * 4 // 3 + 1_000_000

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].rstrip("/").endswith("/upload"):
            return await self.app(scope, receive, send)
        limit = self.limit()
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await self._refuse(send, limit)
        seen = 0

        async def counted():   # a body sent without its length: cut at the cap
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            return {"type": "http.disconnect"} if seen > limit else message
        return await self.app(scope, counted, send)

    @staticmethod
    async def _refuse(send, limit: int) -> None:
        body = f'{{"detail": "request larger than the app\'s {limit // 1000 ** 2} MB cap"}}'.encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _inside(path: str, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def save_pasted(url: str, folder: Path, limit: int | None = None) -> Path:
    """A pasted image (`data:[type][;base64],DATA`) written to a new file in `folder`, for the
    guarded decoder to open as it opens an upload; refused when over `limit` bytes (default
    MAX_UPLOAD_BYTES, the upload cap), judged from the text's length before decoding."""
    limit = MAX_UPLOAD_BYTES if limit is None else limit
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise CamkitError("pasted image: not a base64 data: URL")
    if len(data) * 3 // 4 > limit + 2:
        raise CamkitError(f"pasted image: larger than the app's {limit // 1000 ** 2} MB cap")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise CamkitError("pasted image: not valid base64") from None
    if len(raw) > limit:
        raise CamkitError(f"pasted image: larger than the app's {limit // 1000 ** 2} MB cap")
    path = folder / f"pasted-{uuid.uuid4().hex[:12]}" / "pasted image"
    path.parent.mkdir()
    path.write_bytes(raw)
    return path


def _explain_tab(gr, app: CamApp, examples: list[str]) -> None:
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="filepath", sources=["upload", "clipboard", "webcam"], label="image",
                             elem_id="camkit-input")
            guard_upload(gr, image)
            method = gr.Dropdown(app.methods(), value=app.methods()[0], label="method")
            target = gr.Dropdown(app.targets(), value="pred",
                                 label="explain class (pred: the predicted one; contrast: why it and not the runner-up)")
            signed = gr.Checkbox(False, label="signed map: evidence for and against")
            alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="heatmap opacity")
            colormap = gr.Dropdown(list(COLORMAPS), value="jet", label="colormap")
            button = gr.Button("Explain", variant="primary", elem_id="camkit-explain")
        with gr.Column():
            probs = gr.Label(num_top_classes=min(5, len(app.classes)), label="prediction", elem_id="camkit-probs")
            drawn = gr.Image(type="pil", format="png", label="CAM overlay", interactive=False,
                             elem_id="camkit-overlay")
            caption = gr.Markdown(elem_id="camkit-caption")
    if examples:
        gr.Examples(examples, inputs=image, label="examples from the run's data")

    def run(path, method, target, alpha, colormap, signed):
        prune_temp(app_temp_dir())
        a = app.explain(path, method, target, alpha, colormap, signed)
        return a.probs, a.overlay, a.caption

    inputs, outputs = [image, method, target, alpha, colormap, signed], [probs, drawn, caption]
    button.click(_guard(run), inputs, outputs, api_name="explain", concurrency_limit=1)
    image.upload(_guard(run), inputs, outputs, api_name=False, concurrency_limit=1)


def _clean_tab(gr, cleaner: Cleaner) -> None:
    gr.Markdown("Rank every image of the run's data folder by how suspicious its label is, then decide. "
                f"Each decision is saved at once to `{DECISIONS}` in that folder; **Apply** moves files "
                "(never deletes: 'delete' goes to `_rejected/cleaned/`), logged, and **Undo** moves them back.")
    rank_button = gr.Button("Rank the dataset", elem_id="camkit-rank")
    note = gr.Markdown(elem_id="camkit-ranking-note")   # the estimate (out of sample) or how to get one
    gallery = gr.Gallery(label="most suspicious first (overlay of the predicted class)", columns=6,
                         allow_preview=False, elem_id="camkit-suspects")
    with gr.Row():
        original = gr.Image(type="pil", label="image", interactive=False)
        drawn = gr.Image(type="pil", label="CAM", interactive=False)
        with gr.Column():
            details = gr.Markdown(elem_id="camkit-details")
            decision = gr.Radio(cleaner.choices(), label="decision", elem_id="camkit-decision")
            status = gr.Markdown(elem_id="camkit-status")
    with gr.Row():
        apply_button = gr.Button("Apply decisions", variant="stop")
        undo_button = gr.Button("Undo applied moves")
    shown = gr.State([])       # this session's suspects, as its gallery shows them
    selected = gr.State(None)  # the file (relative to the data root) this session has open

    def rank():
        prune_temp(app_temp_dir())
        items, line = cleaner.review()
        return [(i.overlay, i.caption) for i in items], items, None, line

    def pick(items, evt):
        if evt.index is None or not 0 <= evt.index < len(items):
            raise CamkitError("rank the dataset first")
        return (items[evt.index].suspect.rel, *cleaner.details(items[evt.index]))
    pick.__annotations__ = {"evt": gr.SelectData}   # the class itself: Gradio injects the event by its type

    def decide(rel, action):
        if rel is None or action is None:
            return "select an image first"
        return cleaner.decide(rel, action)

    private = cleaner.private
    rank_button.click(_guard(rank, private), None, [gallery, shown, selected, note], concurrency_limit=1)
    gallery.select(_guard(pick, private), shown, [selected, original, drawn, details, decision])
    decision.input(_guard(decide, private), [selected, decision], status)
    apply_button.click(_guard(cleaner.apply, private), None, status, concurrency_limit=1)
    undo_button.click(_guard(cleaner.undo, private), None, status, concurrency_limit=1)


# ---------------------------------------------------------------- where the app may serve, and how

def is_loopback(host: str) -> bool:
    """Whether `host` serves this machine only (127.0.0.0/8, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_auth(path: str | Path) -> list[tuple[str, str]]:
    """The logins of an auth file: one `user:password` a line (blank lines and # comments
    skipped). A file, not an option's value, so that the password stays out of shell history
    and `ps`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CamkitError(f"--auth-file '{path}' cannot be read ({getattr(e, 'strerror', None) or e})") from None
    logins = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise CamkitError(f"--auth-file '{path}' line {n}: expected user:password")
        logins.append((user, password))
    if not logins:
        raise CamkitError(f"--auth-file '{path}' holds no user:password line")
    return logins


def clean_tab_allowed(host: str, share: bool, allow_remote_clean: bool, auth) -> bool:
    """Whether the Clean tab (it moves the owner's files) is served: always on a loopback bind
    without a share link; on a public one only when asked for, with a login."""
    if is_loopback(host) and not share:
        return True
    if allow_remote_clean and not auth:
        raise CamkitError("--allow-remote-clean needs --auth-file: the Clean tab moves your files, so a "
                          "public app serves it only behind a login")
    return allow_remote_clean


def check_host(host: str, port: int) -> None:
    """Refuse, in one sentence and before the model is loaded, an address the app cannot bind:
    a bad port, an empty, unknown or IPv6 host, an address not of this machine, a port in use."""
    if not 0 < port < 65536:
        raise CamkitError(f"--port must be between 1 and 65535, not {port}")
    if not host:
        raise CamkitError("--host is empty (127.0.0.1 serves this machine only)")
    if ":" in host:   # Gradio builds its URLs as http://HOST:PORT, which an IPv6 address breaks
        raise CamkitError(f"--host '{host}': the app serves IPv4 only; 127.0.0.1 serves this machine only, "
                          "0.0.0.0 every network it is on")
    try:
        address = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    except (socket.gaierror, UnicodeError):
        raise CamkitError(f"--host '{host}' is not an address or a name this machine can resolve") from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:   # as uvicorn binds: SO_REUSEADDR
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            raise CamkitError(_bind_error(host, port, e)) from None


def _bind_error(host: str, port: int, e: OSError) -> str:
    import errno

    if e.errno == errno.EADDRINUSE:
        return f"port {port} is already in use on {host}: stop what serves there or choose another --port"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"--host '{host}' is not an address of this machine"
    if e.errno == errno.EACCES:
        return f"port {port} needs privileges on this machine: choose one above 1023"
    return f"cannot serve on {host}:{port} ({e.strerror or e})"


# ---------------------------------------------------------------- the app's temporary folder

_temp: dict[str, Any] = {"dir": None, "open": 0, "user": None}
_temp_lock = threading.Lock()


def app_temp_dir() -> Path:
    """The folder this process's apps keep uploads, pasted images and drawings in: a new
    camkit-app-* folder (under GRADIO_TEMP_DIR when the user set it, else the system's temp),
    made Gradio's cache folder. Process-wide because Gradio reads GRADIO_TEMP_DIR at every
    request; removed when the last app closes, or at exit."""
    with _temp_lock:
        if _temp["dir"] is None or not _temp["dir"].is_dir():
            if _temp["dir"] is None:
                _temp["user"] = os.environ.get("GRADIO_TEMP_DIR")
            folder = Path(tempfile.mkdtemp(prefix="camkit-app-", dir=_temp["user"]))
            atexit.register(shutil.rmtree, folder, True)
            _temp["dir"] = folder
            os.environ["GRADIO_TEMP_DIR"] = str(folder)
        return _temp["dir"]


def _release_temp() -> None:
    """One app closed: the folder goes with the last one."""
    with _temp_lock:
        _temp["open"] = max(0, _temp["open"] - 1)
        if _temp["open"] == 0 and _temp["dir"] is not None:
            shutil.rmtree(_temp["dir"], ignore_errors=True)
            _temp["dir"] = None
            if _temp["user"] is None:
                os.environ.pop("GRADIO_TEMP_DIR", None)
            else:
                os.environ["GRADIO_TEMP_DIR"] = _temp["user"]


def prune_temp(folder: Path, budget: int | None = None, keep: int | None = None) -> int:
    """Delete the oldest files of the app's temporary folder until it holds at most `budget`
    bytes (TEMP_BUDGET), never touching its `keep` (TEMP_KEEP) newest: the upload being
    explained and the drawings just served. Returns the bytes left."""
    budget = TEMP_BUDGET if budget is None else budget
    keep = TEMP_KEEP if keep is None else keep
    files = []
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                st = path.stat()
                files.append((st.st_mtime, st.st_size, path))
        except OSError:   # gone meanwhile (Gradio's own sweep)
            continue
    files.sort(key=lambda f: f[0], reverse=True)
    total = 0
    for n, (_, size, path) in enumerate(files):
        if n >= keep and total + size > budget:
            path.unlink(missing_ok=True)
            try:
                path.parent.rmdir()   # Gradio's one-file hash folder, when now empty
            except OSError:
                pass
        else:
            total += size
    return total


# ---------------------------------------------------------------- serving

def prepare(run: str | Path | LoadedModel, host: str = "127.0.0.1", share: bool = False,
            data: str | Path | None = None, examples: str | Path | None = None, device: str | None = None,
            allow_remote_clean: bool = False, auth=None):
    """The Blocks `launch` serves on `host` (with `share`), built before anything is bound:
    the Clean tab only where `clean_tab_allowed` says so."""
    app_temp_dir()   # before any component: Gradio reads its cache folder when one is made
    app = run if hasattr(run, "explain") else CamApp(run, device=device)   # a ready app: camkit.share.ortlite's
    cleaning = (isinstance(app, CamApp) and Cleaner.available(app, data)
                and clean_tab_allowed(host, share, allow_remote_clean, auth))
    shown = _example_files(examples) if examples is not None else None
    return build(app, Cleaner(app, data) if cleaning else None, shown)


def launch(run: str | Path | LoadedModel, port: int = 7860, host: str = "127.0.0.1", share: bool = False,
           data: str | Path | None = None, examples: str | Path | None = None, device: str | None = None,
           block: bool = True, allow_remote_clean: bool = False, auth: list[tuple[str, str]] | None = None):
    """`camkit app`: serve the run on http://host:port (127.0.0.1: this machine only). `share`
    asks Gradio for a public link; `examples` is a folder of example images (default: the
    run's held-out images); `auth` the logins (user, password) asked of every visitor. The
    Clean tab is served on a public bind only with `allow_remote_clean` and `auth`. With
    `block=False` returns the running Blocks (tests, notebooks); its close() also removes the
    app's temporary folder once no other app of this process serves."""
    require_gradio()
    from starlette.middleware import Middleware

    check_host(host, port)
    clean_tab_allowed(host, share, allow_remote_clean, auth)   # refused before the model is loaded
    blocks = prepare(run, host, share, data, examples, device, allow_remote_clean, auth)
    blocks.queue(default_concurrency_limit=1)
    with _temp_lock:
        _temp["open"] += 1
    _close_with_temp(blocks)
    try:
        blocks.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD,
                      prevent_thread_lock=True, ssr_mode=False, quiet=not block, show_error=True,
                      footer_links=["api"], auth=auth, app_kwargs={"middleware": [Middleware(BodyCap)]})
    except OSError as e:   # Gradio's "Cannot find empty port": lost a race since check_host
        _close_quietly(blocks)
        raise CamkitError(f"cannot serve on {host}:{port} (in use, or not an address of this machine)") from e
    except BaseException:
        _close_quietly(blocks)
        raise
    if block:
        serve(blocks)
    return blocks


def _close_quietly(blocks) -> None:
    """Close Blocks whose launch failed (its server may never have started)."""
    try:
        blocks.close()
    except Exception:  # noqa: BLE001, S110  the launch's own error is the one to report
        pass


def _close_with_temp(blocks) -> None:
    """Make `blocks.close()` also release the app's temporary folder, once."""
    close = blocks.close
    done = threading.Event()

    def close_and_release(*args, **kwargs):
        try:
            return close(*args, **kwargs)
        finally:
            if not done.is_set():
                done.set()
                _release_temp()
    blocks.close = close_and_release


def serve(blocks) -> None:
    """Wait while the app serves, and close it however the wait ends. Gradio's own wait
    swallows Ctrl-C and returns, so `camkit app` exited 0; here the KeyboardInterrupt goes on
    to the CLI's boundary (exit 130, 'error: interrupted')."""
    import time

    try:
        while blocks.is_running:
            time.sleep(0.1)
    finally:
        blocks.close()


def _example_files(folder: str | Path) -> list[str]:
    from camkit.core.images import list_images

    folder = Path(folder)
    return [str(p) for p in list_images(folder)] if folder.is_dir() else []
