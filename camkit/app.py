"""`camkit app`: a trained run behind a small Gradio web app, the last step of the fastai course
(put the model where others can try it), with the heatmap that says why.

    app = CamApp("runs/pets")                          # compute: no gradio needed
    answer = app.explain("photo.jpg", method="gradcam", alpha=0.4)
    answer.probs, answer.overlay                       # {class: p}, a PIL image
    launch("runs/pets")                                # the web app on http://127.0.0.1:7860

The tab "Explain" takes an upload, a pasted image or a webcam shot and shows the class
probabilities and the CAM overlay, with controls for method, target class, alpha and colormap;
example images come from the run's own validation set. The tab "Clean" (when the run's
dataset is on this machine) ranks the dataset with `camkit.clean.rank`, shows the most
suspicious images with their maps, and saves each keep / delete / relabel decision to a file
as it is made; applying them moves files only, logged and undoable (`camkit.clean`).

Uploads are decoded by camkit's guarded decoder with a lower pixel cap than the CLI's (a
decompression bomb becomes a message in the app), the upload size is capped by the server,
it binds 127.0.0.1 unless told otherwise and never opens a public share link unless asked.
Computing lives in `CamApp` and `Cleaner`; `build` only wires them to Gradio components.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camkit.errors import CamkitError
# camkit.run (torch) is imported where a run is loaded: the light Space (camkit.ortlite) serves
# this module's Explain tab on onnxruntime, without torch
if TYPE_CHECKING:
    from camkit.run import LoadedModel
from camkit.verdict import Verdict

APP_MAX_PIXELS = 64_000_000     # a 50-megapixel phone photo passes; ~190 MB as RGB at most
MAX_UPLOAD = "25mb"            # refused by the server before any decoding
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
        from camkit.run import LoadedModel, load

        self.loaded = run if isinstance(run, LoadedModel) else load(run, device=device)
        self.max_side = max_side
        self._extractors: dict[str, Any] = {}
        self.lock = threading.Lock()

    @property
    def classes(self) -> list[str]:
        return self.loaded.classes

    @functools.cached_property
    def verdict(self) -> Verdict | None:
        """The run's training verdict (model.json's, or recomputed for an older run)."""
        from camkit.run import read_verdict

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
        from camkit.render import DIVERGING, Style, fit_for_drawing, overlay

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
    from camkit.run import read_valid

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
    from camkit.images import open_rgb

    if path is None or str(path) == "":
        raise CamkitError("no image: upload, paste or take a picture first")
    try:
        return open_rgb(path, max_pixels=APP_MAX_PIXELS)
    except CamkitError as e:   # name the upload, not the server's temporary copy of it
        raise CamkitError(str(e).replace(str(path), Path(path).name)) from None


class Cleaner:
    """The cleaner tab's state: the ranking of the run's dataset, its suspects' pictures and
    the decisions file they are saved to as they are made (`camkit clean --apply` reads it)."""

    def __init__(self, app: CamApp, data: str | Path | None = None):
        from camkit.clean import DecisionFile
        from camkit.run import data_root

        self.app = app
        self.root = data_root(app.loaded.path, app.loaded.info, data)
        self.decisions = DecisionFile(self.root / DECISIONS, app.loaded.path, self.root)
        self.suspects: list = []
        self.pictures: list[tuple[Any, Any]] = []

    @staticmethod
    def available(app: CamApp, data: str | Path | None = None) -> bool:
        from camkit.run import data_root

        root = data_root(app.loaded.path, app.loaded.info, data)
        return app.loaded.info.data_root is not None and root.is_dir()

    def rank(self, shown: int = CLEAN_SHOWN) -> list[tuple[Any, str]]:
        """Rank the dataset; (overlay, caption) for the `shown` most suspicious images."""
        from camkit.clean import overlay_pictures, rank

        with self.app.lock:
            self.suspects = rank(self.app.loaded, self.root)[:shown]
            self.pictures = overlay_pictures(self.app.loaded, self.suspects, side=256)
        return [(o, f"{s.rel} · {s.label} → {s.pred} {s.prob:.0%}") for s, (_, o) in zip(self.suspects, self.pictures)]

    def choices(self) -> list[str]:
        return ["keep", "delete", *(f"relabel:{c}" for c in self.app.classes)]

    def details(self, index: int) -> tuple[Any, Any, str, str]:
        """(original, overlay, description, current decision) of suspect `index`."""
        s = self.suspects[index]
        text = (f"**{s.rel}**: label **{s.label}**, predicted **{s.pred}** ({s.prob:.1%}), loss {s.loss:.3f}"
                + (f"; {s.reason}" if s.reason else ""))
        return (*self.pictures[index], text, self.decisions.get(s.rel))

    def decide(self, index: int, action: str) -> str:
        """Save one decision at once (atomically); returns a status line."""
        s = self.suspects[index]
        self.decisions.set(s.rel, action)
        return f"saved: {s.rel} → {action} ({self.decisions.count()} decisions in {self.decisions.path})"

    def apply(self) -> str:
        from camkit.clean import apply

        moves = apply(self.app.loaded.path, self.decisions.path, self.root)
        self.decisions.archive()
        return f"{len(moves)} file(s) moved (logged in {self.root / 'clean.jsonl'}; Undo moves them back)"

    def undo(self) -> str:
        from camkit.clean import undo

        return f"{len(undo(self.app.loaded.path, self.root))} file(s) moved back"


# ---------------------------------------------------------------- the Gradio app

def _guard(fn):
    """Run `fn`, turning camkit's one-sentence errors into a message shown in the app."""
    gr = require_gradio()

    def call(*args):
        try:
            return fn(*args)
        except CamkitError as e:
            raise gr.Error(str(e), print_exception=False) from None
    call.__name__ = fn.__name__
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
    """The Gradio Blocks: an Explain tab and, with a `cleaner`, a Clean tab."""
    gr = require_gradio()
    title = " vs ".join(app.classes) if len(app.classes) <= 4 else f"{len(app.classes)} classes"
    with gr.Blocks(title=f"camkit: {title}", analytics_enabled=False) as blocks:
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
    """Make the gr.Image `image` hand an uploaded file's path straight to camkit's guarded
    decoder. Gradio's own preprocessing opens the file with PIL first, so a corrupt file or a
    decompression bomb would fail there, as a stack trace in the log and a 'could not
    preprocess' message. (An instance override, not a subclass: Gradio writes a .pyi file
    beside the module of every Component subclass.)"""
    preprocess = image.preprocess

    def guarded(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        try:
            return preprocess(payload)
        except Exception as e:  # noqa: BLE001  whatever PIL says about a pasted image: one line
            raise gr.Error(f"not a readable image ({type(e).__name__})", print_exception=False) from None

    image.preprocess = guarded


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
        a = app.explain(path, method, target, alpha, colormap, signed)
        return a.probs, a.overlay, a.caption

    inputs, outputs = [image, method, target, alpha, colormap, signed], [probs, drawn, caption]
    button.click(_guard(run), inputs, outputs, api_name="explain", concurrency_limit=1)
    image.upload(_guard(run), inputs, outputs, api_name=False, concurrency_limit=1)


def _clean_tab(gr, cleaner: Cleaner) -> None:
    gr.Markdown(f"Rank every image of `{cleaner.root}` by how suspicious its label is, then decide. Each "
                f"decision is saved at once to `{cleaner.decisions.path}`; **Apply** moves files (never "
                "deletes: 'delete' goes to `_rejected/cleaned/`), logged, and **Undo** moves them back.")
    rank_button = gr.Button("Rank the dataset", elem_id="camkit-rank")
    gallery = gr.Gallery(label="most suspicious first (overlay of the predicted class)", columns=6,
                         allow_preview=False, elem_id="camkit-suspects")
    with gr.Row():
        original = gr.Image(type="pil", label="image", interactive=False)
        drawn = gr.Image(type="pil", label="CAM", interactive=False)
        with gr.Column():
            details = gr.Markdown()
            decision = gr.Radio(cleaner.choices(), label="decision", elem_id="camkit-decision")
            status = gr.Markdown(elem_id="camkit-status")
    with gr.Row():
        apply_button = gr.Button("Apply decisions", variant="stop")
        undo_button = gr.Button("Undo applied moves")
    selected = gr.State(None)

    def pick(evt):
        return (evt.index, *cleaner.details(evt.index))
    pick.__annotations__ = {"evt": gr.SelectData}   # the class itself: Gradio injects the event by its type

    def decide(index, action):
        if index is None or action is None:
            return "select an image first"
        return cleaner.decide(index, action)

    rank_button.click(_guard(cleaner.rank), None, gallery, concurrency_limit=1)
    gallery.select(pick, None, [selected, original, drawn, details, decision])
    decision.input(_guard(decide), [selected, decision], status)
    apply_button.click(_guard(cleaner.apply), None, status, concurrency_limit=1)
    undo_button.click(_guard(cleaner.undo), None, status, concurrency_limit=1)


def check_host(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise CamkitError(f"--port must be between 1 and 65535, not {port}")
    if not host:
        raise CamkitError("--host is empty (127.0.0.1 serves this machine only)")


def launch(run: str | Path | LoadedModel, port: int = 7860, host: str = "127.0.0.1", share: bool = False,
           data: str | Path | None = None, examples: str | Path | None = None, device: str | None = None,
           block: bool = True):
    """`camkit app`: serve the run on http://host:port (127.0.0.1: this machine only). `share`
    asks Gradio for a public link; `examples` is a folder of example images (default: the
    run's held-out images). With `block=False` returns the running Blocks (tests, notebooks)."""
    gr = require_gradio()
    check_host(host, port)
    app = run if hasattr(run, "explain") else CamApp(run, device=device)   # a ready app: camkit.ortlite's
    cleaner = Cleaner(app, data) if isinstance(app, CamApp) and Cleaner.available(app, data) else None
    shown = _example_files(examples) if examples is not None else None
    blocks = build(app, cleaner, shown)
    blocks.queue(default_concurrency_limit=1)
    blocks.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD,
                  prevent_thread_lock=True, ssr_mode=False, quiet=not block, show_error=True,
                  footer_links=["api"])
    if block:
        serve(blocks)
    return blocks


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
    from camkit.images import list_images

    folder = Path(folder)
    return [str(p) for p in list_images(folder)] if folder.is_dir() else []

