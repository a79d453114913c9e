"""`camkit export RUN --web DIR`: the run's explainer as a static page that runs in the browser.

    DIR/index.html      drop or pick an image (or start the webcam): the class probabilities and the
                        CAM overlay, the class to explain, the opacity and the colormap to choose
    DIR/camkit-web.js   the page: camkit's preprocessing (Pillow's bilinear squish, bit for bit),
                        the graph through onnxruntime-web, the map drawn on the sidecar's grid
    DIR/model.js        the ONNX graph (camkit.export.onnx: logits, probs and every class's exact CAM)
                        as base64, and the page's config (classes, size, grid, colormap tables)
    DIR/ort-bundle.js   onnxruntime-web's ES module (wasm build) as a string
    DIR/ort-wasm.js     its WebAssembly as base64
    DIR/LICENSE-onnxruntime-web.txt

No server: browsers refuse `fetch()` and module scripts from file://, so everything arrives
through classic <script> tags, which they load from file:// as from any static host. The runtime
is imported from a blob: URL and handed its WebAssembly as bytes, so it fetches nothing; the
page's Content-Security-Policy allows no connection outside the folder (tests/test_web.py
checks the requests Chromium makes). The price is size: base64 is 4/3 of the bytes (the runtime
is 19.8 MB in the folder, a resnet18 graph about 60 MB; `int8` makes the graph 4x smaller).

onnxruntime-web 1.31.1 (MIT, npm registry) ships inside camkit (camkit/resources/web/: the wasm
build's bundle, 77 KB, and its WebAssembly, 14.8 MB, about 3.8 MB compressed in the wheel), so
an offline machine or a pip install without npm exports the same page. Its single-threaded
WebAssembly runs where the page cannot be cross-origin isolated (file://, most static hosts).
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from camkit.app import COLORMAPS, verdict_banner
from camkit.core.files import TMP_PREFIX, ensure_writable_dir
from camkit.errors import CamkitError

ORT_WEB_VERSION = "1.31.1"
ORT_BUNDLE, ORT_WASM = "ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm"
ORT_LICENSE = "LICENSE-onnxruntime-web.txt"
PAGE_FILES = ("index.html", "camkit-web.js")


@dataclass(frozen=True)
class WebExport:
    """What `export_web` wrote: the folder, its page, and the checks the graph passed."""
    folder: Path
    page: Path
    graph_bytes: int
    folder_bytes: int
    max_abs_diff: float


def web_resource(name: str):
    """A file of camkit/resources/web/ (the page and the vendored onnxruntime-web)."""
    return resources.files("camkit.resources") / "web" / name


def colormap_table(name: str):
    """(N, 3) uint8: the colormap's lookup table, which `camkit.core.render.colorize` reads through
    matplotlib; value v in [0, 1] is drawn as row min(N - 1, floor(v N)), as matplotlib does."""
    import matplotlib
    import numpy as np

    if name not in matplotlib.colormaps:
        raise CamkitError(f"unknown colormap '{name}'; e.g. jet, viridis, inferno, turbo")
    cmap = matplotlib.colormaps[name]
    return cmap(np.arange(cmap.N), bytes=True)[:, :3]


def unsigned_colormaps() -> tuple[str, ...]:
    """camkit.app's colormaps but the diverging one: the page draws unsigned maps, in [0, 1]."""
    from camkit.core.render import DIVERGING

    return tuple(c for c in COLORMAPS if c != DIVERGING)


def explainer_config(run: str | Path, sidecar, colormaps: tuple[str, ...] | None = None) -> dict:
    """What a torch-free consumer of the graph needs beyond its sidecar: the title, the training
    verdict (in words, and as model.json holds it) and the tables of camkit.app's colormaps
    (base64 of N x 3 bytes), so that neither the page nor the light Space needs matplotlib.
    Shared by the page (model.js) and the light Space (model/explainer.json, camkit.share.ortlite)."""
    from camkit.export.onnx import INPUT, OUTPUTS
    from camkit.train.run import read_info, read_verdict

    info = read_info(run)
    verdict = read_verdict(run, info)
    classes = sidecar.classes
    title = " vs ".join(classes)[:60] if len(classes) <= 4 else f"{len(classes)} classes"
    return {"title": title, "arch": info.arch, "head": info.head, "classes": classes, "size": sidecar.size,
            "resize": sidecar.resize, "input": INPUT, "outputs": {name: name for name in OUTPUTS},
            "grid": sidecar.grid, "map_size": list(sidecar.map_size),
            "verdict": verdict_banner(verdict).replace("**", ""),
            "verdict_json": None if verdict is None else verdict.to_json(),
            "colormaps": {c: base64.b64encode(colormap_table(c).tobytes()).decode() for c in colormaps or COLORMAPS}}


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def _script(variable: str, value: str) -> str:
    """A classic script that sets window.<variable> (JSON-quoted: safe for any text)."""
    return f"window.{variable} = {json.dumps(value)};\n"


def _write_page(folder: Path, graph: bytes, config: dict) -> None:
    """The page's files into `folder` (see the module docstring)."""
    for name in PAGE_FILES:
        (folder / name).write_bytes(web_resource(name).read_bytes())
    (folder / ORT_LICENSE).write_bytes(web_resource(ORT_LICENSE).read_bytes())
    (folder / "ort-bundle.js").write_text(_script("CAMKIT_ORT", web_resource(ORT_BUNDLE).read_text("utf-8")),
                                          encoding="utf-8")
    wasm = base64.b64encode(web_resource(ORT_WASM).read_bytes()).decode()
    (folder / "ort-wasm.js").write_text(_script("CAMKIT_WASM", wasm), encoding="utf-8")
    (folder / "model.js").write_text(
        _script("CAMKIT_MODEL", base64.b64encode(graph).decode())
        + f"window.CAMKIT_CONFIG = {json.dumps(config, ensure_ascii=True)};\n", encoding="utf-8")


def export_web(run: str | Path, out: str | Path, *, int8: bool = False, opset: int | None = None) -> WebExport:
    """Write the static page folder `out` (which must not exist yet) for a CAM-head run: the
    graph is exported with `camkit.export.onnx.export_onnx` (checked against torch, refused above
    its tolerance) into a temporary folder and embedded. Assembled beside `out` and renamed into
    place at the end: a failed export leaves no half-made page."""
    from camkit.export.onnx import DEFAULT_OPSET, export_onnx, read_sidecar

    run, out = Path(run), Path(out)
    if out.is_symlink() or out.exists():
        raise CamkitError(f"'{out}' already exists; --web writes a new folder")
    created = ensure_writable_dir(out.parent, "page's parent folder")
    staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}web-", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="camkit-web-") as tmp:
            done = export_onnx(run, Path(tmp) / "model.onnx", opset or DEFAULT_OPSET, int8)
            graph = done.path.read_bytes()
            config = explainer_config(run, read_sidecar(done.path), unsigned_colormaps())
        _write_page(staging, graph, config)
        staging.chmod(0o777 & ~_umask())   # mkdtemp's 0700 would hide the page from a static host
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)   # our own temporary folder, never a user's file
        if created is not None:
            from camkit.core.files import remove_if_empty
            remove_if_empty(out.parent, created)
        raise
    size = sum(f.stat().st_size for f in out.iterdir())
    return WebExport(out, out / "index.html", len(graph), size, done.max_abs_diff)
