"""The explainer without torch: a run's exported graph (camkit.export.onnx) served with numpy, Pillow
and onnxruntime alone. `camkit app RUN --export-space DIR --engine onnx` writes a Space that runs
this, whose requirements are onnxruntime, numpy, pillow and gradio (docs/benchmarks.md gives
their install size and cold start against the torch Space).

    app = LiteApp("space/model")            # model.onnx, model.onnx.json, explainer.json
    answer = app.explain("photo.jpg", target="pred", alpha=0.4)
    launch("space/model")                    # camkit.app's own Explain tab, on this engine

`LiteApp` has the face of camkit.app's `CamApp` (classes, verdict, methods, targets, explain,
examples), so the app's Gradio wiring, guarded uploads and launch serve it unchanged. The graph
gives every class's raw map W_c . A; what is drawn is post-processed as camkit.cam does it
(ReLU and min-max to [0, 1]; signed: m / max|m|; a contrast "a and not b" is map_a - map_b),
upsampled between cell centres on the sidecar's grid (camkit.core.geometry, in numpy) and coloured
through the colormap tables written at export (camkit.share.web.explainer_config), so neither torch
nor matplotlib is imported.
"""

from __future__ import annotations

import base64
import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camkit.app import Answer, launch as app_launch, open_upload, readable
from camkit.errors import CamkitError
from camkit.export.onnx import read_sidecar, session
from camkit.train.verdict import Verdict

GRAPH = "model.onnx"
EXPLAINER = "explainer.json"   # camkit.share.web.explainer_config: title, verdict, colormap tables
EPS = 1e-8                     # camkit.cam.base.EPS
DIVERGING = "RdBu_r"           # camkit.core.render.DIVERGING: the signed map's default colormap


@dataclass(frozen=True)
class LiteInfo:
    """What camkit.app reads off `app.loaded.info`."""
    arch: str
    head: str
    data_root: None = None     # no dataset on a Space: no Clean tab


@dataclass(frozen=True)
class LiteModel:
    """What camkit.app reads off `app.loaded`."""
    path: Path
    info: LiteInfo
    size: int
    classes: list[str]


def cam_map(maps: np.ndarray, target: int, versus: int | None = None, signed: bool = False) -> np.ndarray:
    """(C, h, w) raw maps -> the drawn (h, w) map of class `target` (and not `versus`):
    ReLU then min-max to [0, 1], or signed m / max|m| in [-1, 1] (camkit.cam.base)."""
    m = maps[target].astype(np.float32) - (0 if versus is None else maps[versus].astype(np.float32))
    if signed:
        return m / (np.abs(m).max() + EPS)
    m = np.maximum(m, 0)
    return (m - m.min()) / (m.max() - m.min() + EPS)


def _cells(n: int, cells: int, grid: dict, axis: int) -> np.ndarray:
    """Fractional cell index of each of `n` drawn pixels along an axis: the grid resized to the
    drawing (camkit.core.geometry.Grid.resized), clamped to the outermost cell centres."""
    r = n / grid["size"][axis]
    stride, offset = grid["stride"][axis] * r, (grid["offset"][axis] + 0.5) * r - 0.5
    if cells == 1:
        return np.zeros(n, dtype=np.float32)
    return np.clip((np.arange(n, dtype=np.float32) - offset) / stride, 0, cells - 1)


def upsample(cells: np.ndarray, grid: dict, size: tuple[int, int]) -> np.ndarray:
    """(h, w) map -> (H, W), bilinear between cell centres where `grid` places them, constant
    beyond the outermost ones (camkit.core.geometry.upsample, without torch)."""
    h, w = cells.shape
    ys, xs = _cells(size[0], h, grid, 0), _cells(size[1], w, grid, 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = cells[y0][:, x0] * (1 - fx) + cells[y0][:, x1] * fx
    bottom = cells[y1][:, x0] * (1 - fx) + cells[y1][:, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def colorize(heat: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 through an (N, 3) colormap table: row
    min(N - 1, floor(v N)), matplotlib's rule (camkit.core.render.colorize)."""
    n = np.float32(len(table))
    index = np.minimum(len(table) - 1, (np.clip(heat.astype(np.float32), 0, 1) * n).astype(np.intp))
    return table[index]


def fit_for_drawing(picture, max_side: int):
    """The picture no larger than `max_side` on its longer side (camkit.core.render.fit_for_drawing)."""
    from PIL import Image

    scale = min(1.0, max_side / max(picture.size))
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture if size == picture.size else picture.resize(size, Image.BILINEAR, reducing_gap=2.0)


def blend(picture, heat: np.ndarray, table: np.ndarray, alpha: float):
    """overlay = (1 - alpha) picture + alpha colormap(heat) (camkit.core.render.overlay)."""
    from PIL import Image

    colored = colorize(heat, table).astype(np.float32)
    mixed = np.asarray(picture, dtype=np.float32) * (1 - alpha) + colored * alpha
    return Image.fromarray(mixed.round().astype(np.uint8))


class LiteApp:
    """An exported graph behind camkit.app's face (see the module docstring). One onnxruntime
    session; its `run` is thread-safe, the lock only keeps one request's work at a time, as the
    torch app does."""

    def __init__(self, folder: str | Path, max_side: int = 768, threads: int | None = None,
                 examples: list[str] | None = None):
        folder = Path(folder)
        self.sidecar = read_sidecar(folder / GRAPH)
        if self.sidecar.input_dtype != "uint8":
            raise CamkitError(f"'{folder / GRAPH}' takes float input; export it again with uint8 input")
        try:
            self.config = json.loads((folder / EXPLAINER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CamkitError(f"'{folder}' has no readable {EXPLAINER}: export it again with "
                              "camkit app RUN --export-space DIR --engine onnx") from None
        self.tables = {name: np.frombuffer(base64.b64decode(t), dtype=np.uint8).reshape(-1, 3)
                       for name, t in self.config["colormaps"].items()}
        self.session = session(folder / GRAPH, threads)
        self.loaded = LiteModel(folder, LiteInfo(self.config.get("arch", ""), self.config.get("head", "cam")),
                                self.sidecar.size, list(self.sidecar.classes))
        self.max_side = max_side
        self._examples = list(examples or [])
        self.lock = threading.Lock()

    @property
    def classes(self) -> list[str]:
        return self.loaded.classes

    @functools.cached_property
    def verdict(self):
        saved = self.config.get("verdict_json")
        return None if saved is None else Verdict.from_json(saved)

    def methods(self) -> list[str]:
        return ["cam"]   # the graph's maps are the exact CAM; gradient methods need torch

    def targets(self) -> list[str]:
        return ["pred", *self.classes, "contrast"]

    def examples(self, per_class: int = 2) -> list[str]:
        """The example images it was given (a Space passes its examples/ folder to launch)."""
        return list(self._examples)

    def predict(self, square: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One S x S x 3 uint8 square -> (probs (C,), raw maps (C, h, w))."""
        feed = np.ascontiguousarray(square.transpose(2, 0, 1)[None])
        _, probs, maps = self.session.run(["logits", "probs", "maps"], {"image": feed})
        return probs[0], maps[0]

    def _target(self, target: str, probs: np.ndarray) -> tuple[int, int | None]:
        order = np.argsort(-probs, kind="stable")
        if target in ("pred", None, ""):
            return int(order[0]), None
        if target == "contrast":
            return int(order[0]), int(order[1])
        if target not in self.classes:
            raise CamkitError(f"unknown class '{target}'; choose from {', '.join(self.targets())}")
        return self.classes.index(target), None

    def explain(self, image: str | Path, method: str | None = None, target: str = "pred", alpha: float = 0.5,
                colormap: str = "jet", signed: bool = False):
        """Probabilities and CAM overlay of one image file, as camkit.app.CamApp.explain."""
        from camkit.core.images import resize_square

        if method not in (None, "cam"):
            raise CamkitError(f"method '{method}' is not available for this run; choose from cam")
        if not 0 <= alpha <= 1:
            raise CamkitError(f"--alpha must be between 0 and 1, not {alpha}")
        colormap = DIVERGING if signed and colormap == "jet" else colormap
        if colormap not in self.tables:
            raise CamkitError(f"unknown colormap '{colormap}'; choose from {', '.join(self.tables)}")
        picture = open_upload(image)
        with self.lock:
            probs, maps = self.predict(resize_square(picture, self.sidecar.size, self.sidecar.resize))
        k, versus = self._target(target, probs)
        cells = cam_map(maps, k, versus, signed)
        base = readable(fit_for_drawing(picture, self.max_side))
        heat = upsample(cells, self.sidecar.grid, (base.height, base.width))
        drawn = blend(base, (heat + 1) / 2 if signed else heat, self.tables[colormap], alpha)
        pred = int(np.argmax(probs))
        against = "" if versus is None else f" and not **{self.classes[versus]}**"
        caption = (f"**{self.classes[pred]}** ({probs[pred]:.1%}); heatmap: cam for class **{self.classes[k]}**"
                   f"{against} (onnxruntime)" + ("; red: evidence for, blue: against" if signed else ""))
        return Answer({c: round(float(p), 6) for c, p in zip(self.classes, probs)}, drawn, caption)


def launch(folder: str | Path, port: int = 7860, host: str = "127.0.0.1", examples: str | Path | None = None,
           block: bool = True, **options: Any) -> Any:
    """Serve the graph in `folder` with camkit.app's launch (its guards, limits and Explain tab;
    `options`: share, auth)."""
    return app_launch(LiteApp(folder), port=port, host=host, examples=examples, block=block, **options)
