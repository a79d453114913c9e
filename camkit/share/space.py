"""`camkit app RUN --export-space DIR`: a folder that is a ready Hugging Face Space running the
same app as `camkit app` (push it to a Space with the Gradio SDK, or run `python app.py`).

    DIR/app.py            launches camkit.app on the model below
    DIR/requirements.txt  camkit's own dependencies and the Gradio it was exported with
    DIR/README.md         the Space header (sdk: gradio, sdk_version, app_file) and a model card
    DIR/model/            the run's weights (plain tensors) and model.json without the local data path
    DIR/examples/         a few of the run's held-out images, re-encoded as example-N.png
                          without metadata (no EXIF, no text chunks)
    DIR/camkit/           camkit's code as installed (Python files, py.typed, licence notes),
                          so the Space needs nothing that is not on PyPI

With `engine="onnx"` (`--engine onnx`) the Space is light: DIR/model/ holds the run as one ONNX
graph (model.onnx, its sidecar, explainer.json), app.py serves it with camkit.share.ortlite (numpy,
Pillow, onnxruntime: the same Explain tab, exact CAM only) and requirements.txt names
onnxruntime, numpy, pillow and gradio, no torch, no fastai.

The folder is assembled in a temporary folder beside DIR and renamed into place at the end, so
a failed export leaves no half-made Space; an existing DIR is never written into.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from fnmatch import fnmatch
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camkit.app import held_out_examples, launch as app_launch, require_gradio, verdict_banner
from camkit.core.choices import CamEngine, choice
from camkit.core.files import TMP_PREFIX, WRITE_ERRNOS, ensure_writable_dir, os_error_line, refuse_inside_class_folder
from camkit.core.images import open_rgb
from camkit.errors import CamkitError
from camkit.export.onnx import export_onnx, read_sidecar
from camkit.share.ortlite import EXPLAINER, GRAPH, LiteApp
from camkit.share.web import explainer_config
from camkit.train.run import export_model, read_info, read_verdict

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

_APP_PY = '''"""A camkit app as a {kind}Hugging Face Space{how} (written by
`camkit app RUN --export-space DIR{option}`).

`python app.py` serves it on http://127.0.0.1:7860; Spaces set GRADIO_SERVER_NAME=0.0.0.0.
"""
import os
import sys
from pathlib import Path

from {module} import launch

HERE = Path(__file__).resolve().parent
try:
    launch(HERE / "model", host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), examples=HERE / "examples")
except KeyboardInterrupt:   # Ctrl-C: stopped, no traceback, exit 130 as `camkit app`
    sys.exit(130)
'''
# the Space's app.py per engine: the same launcher, camkit.app's (torch) or camkit.share.ortlite's
APP_PY = {"torch": _APP_PY.format(kind="", how="", option="", module="camkit.app"),
          "onnx": _APP_PY.format(kind="light ", how=", on onnxruntime without torch", option=" --engine onnx",
                                 module="camkit.share.ortlite")}
# what camkit.share.ortlite imports, and its floor: onnxruntime 1.17 runs opset 17 with uint8 input on
# every platform the Space may build on; numpy and Pillow as camkit itself takes them
LITE_REQUIREMENTS = ("onnxruntime>=1.17", "numpy", "pillow")
LITE_CARD = ("It runs the model as one ONNX graph on onnxruntime (the logits and every class's exact CAM): "
             "no torch, no fastai.")


def lite_requirements() -> list[str]:
    """The light Space's requirements: onnxruntime, numpy, Pillow and the running Gradio."""
    return [*LITE_REQUIREMENTS, f"gradio=={require_gradio().__version__}"]


def write_lite_model(run: str | Path, dest: Path) -> Path:
    """`dest`/model.onnx and its sidecar (camkit.export.onnx, checked against torch before it is
    written) and explainer.json (camkit.share.web.explainer_config): all camkit.share.ortlite reads."""
    dest.mkdir()
    graph = export_onnx(run, dest / GRAPH).path
    (dest / EXPLAINER).write_text(json.dumps(explainer_config(run, read_sidecar(graph))), encoding="utf-8")
    return dest


def serve_run(run: str | Path, port: int = 7860, host: str = "127.0.0.1", **options: Any) -> None:
    """`camkit app RUN --engine onnx`: the run exported now (checked against torch) into a
    temporary folder and served as the light Space serves it, with the run's held-out images
    as examples; the folder is removed when the app stops (here, not in camkit.share.ortlite, which
    the light Space imports without torch and which this module already builds on)."""
    with tempfile.TemporaryDirectory(prefix="camkit-lite-") as tmp:
        app = LiteApp(write_lite_model(run, Path(tmp) / "model"), examples=held_out_examples(run))
        app_launch(app, port=port, host=host, block=True, **options)


def requirements() -> list[str]:
    """camkit's core dependencies (as installed camkit declares them) and the running Gradio,
    pinned to the version the Space header names."""
    gr = require_gradio()
    try:
        declared = metadata.requires("camkit") or []
    except metadata.PackageNotFoundError:
        raise CamkitError("camkit is not installed as a package (pip install camkit) so its "
                          "requirements cannot be written") from None
    core = [r.split(";")[0].strip() for r in declared if "extra ==" not in r]
    return [*core, f"gradio=={gr.__version__}"]


def readme(run: Path, gradio_version: str, engine: str = "torch") -> str:
    """The Space's README: YAML header (values JSON-quoted, which YAML reads as strings) and a
    short model card from model.json."""
    info = read_info(run)
    title = " vs ".join(info.classes)[:60] if len(info.classes) <= 4 else f"{len(info.classes)}-class CAM classifier"
    header = {"title": title, "emoji": "🔥", "colorFrom": "indigo", "colorTo": "red", "sdk": "gradio",
              "sdk_version": gradio_version, "app_file": "app.py", "pinned": False}
    lines = ["---", *(f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in header.items()), "---", ""]
    acc = info.summary.get("valid_accuracy")
    lines += [f"# {title}", "",
              f"A {info.arch} ({'pretrained, ' if info.pretrained else ''}{info.head} head, {info.size}-px input) "
              f"trained with camkit on {len(info.classes)} classes: "
              + ", ".join(info.classes) + "."
              + (f" Held-out accuracy: {acc:.1%}." if isinstance(acc, (int, float)) else ""), "",
              *_verdict_lines(run, info),
              "Upload, paste or take a picture: the app shows the class probabilities and a class activation "
              "map of where the model looked.", "",
              *([LITE_CARD, ""] if engine == "onnx" else []),
              "Run it locally: `pip install -r requirements.txt && python app.py`, then open http://127.0.0.1:7860.",
              "", "If the training images were crawled, credit their authors: `camkit credits DATA` lists them.", ""]
    return "\n".join(lines)


def _verdict_lines(run: Path, info) -> list[str]:
    """The training verdict on the model card, in the app's own words, before anything else a
    visitor reads."""
    verdict = read_verdict(run, info)
    return [] if verdict is None else [verdict_banner(verdict), ""]


def _copy_examples(run: Path, dest: Path, per_class: int) -> int:
    files = held_out_examples(run, per_class)
    dest.mkdir()
    for i, f in enumerate(files):
        pixels_only(f, dest / f"example-{i}.png")
    return len(files)


def pixels_only(src: Path, dest: Path) -> None:
    """`src` re-encoded as a PNG of its pixels alone (as the model sees them: EXIF orientation
    applied, RGB): a public Space must not carry the author's EXIF (GPS, camera, software
    paths) or PNG text chunks, which a byte-for-byte copy would."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.asarray(open_rgb(src))).save(dest)


# What of the package a Space needs: the code and the licence notes. The demo's 1 MB
# Fashion-MNIST sample stays out (the app never reads it; a Space is a git repository).
SPACE_FILES = ("*.py", "py.typed", "*.md")


def _copy_package(dest: Path) -> None:
    """The camkit package this process imported, read through importlib.resources (an installed
    wheel's site-packages/camkit, or the folder an editable install points at), into
    dest/camkit: its packages' SPACE_FILES, no caches, no stray folders."""
    def copy(package: Traversable, to: Path) -> None:
        to.mkdir()
        for item in package.iterdir():
            if item.name.startswith(TMP_PREFIX):
                continue
            if item.is_dir() and item.joinpath("__init__.py").is_file():
                copy(item, to / item.name)
            elif item.is_file() and any(fnmatch(item.name, p) for p in SPACE_FILES):
                (to / item.name).write_bytes(item.read_bytes())

    copy(resources.files("camkit"), dest / "camkit")


def export_space(run: str | Path, out: str | Path, examples_per_class: int = 2,
                 engine: str | CamEngine = "torch") -> Path:
    """Write the Space folder `out` (which must not exist yet) for the run; returns it.
    `engine="onnx"`: the light Space (APP_PY['onnx']), no torch, no fastai; "torch" or "auto"
    (`camkit app`'s default): the full app."""
    engine = "onnx" if choice(CamEngine, engine, "engine") == CamEngine.onnx.value else "torch"
    run, out = Path(run), Path(out)
    if out.is_symlink():
        raise CamkitError(f"'{out}' is a symbolic link{'' if out.exists() else ' to nothing'}; "
                          "--export-space writes a new folder: name one that does not exist")
    if out.exists():
        raise CamkitError(f"'{out}' already exists; --export-space writes a new folder")
    reqs = requirements() if engine == "torch" else lite_requirements()
    refuse_inside_class_folder(out, (read_info(run).data_root,), "--export-space")
    created = ensure_writable_dir(out.parent, "Space's parent folder")
    staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}space-", dir=out.parent))
    try:
        if engine == "torch":
            export_model(run, staging / "model")
        else:
            write_lite_model(run, staging / "model")
        _copy_examples(run, staging / "examples", examples_per_class)
        _copy_package(staging)
        (staging / "app.py").write_text(APP_PY[engine], encoding="utf-8")
        (staging / "requirements.txt").write_text("\n".join(reqs) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(readme(run, reqs[-1].split("==")[1], engine), encoding="utf-8")
        staging.rename(out)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)   # our own temporary folder, never a user's file
        if created is not None:
            from camkit.core.files import remove_if_empty
            remove_if_empty(out.parent, created)
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            raise CamkitError(os_error_line(e, f"the Space '{out}'")) from None
        raise
    return out
