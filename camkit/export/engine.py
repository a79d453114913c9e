"""Which engine computes exact CAM: camkit's torch model, or ONNX Runtime running the graph
`camkit export RUN --onnx` wrote (camkit.export.onnx). Both give the same `CamResult`s, so overlays,
`.npy` maps and `cams.jsonl` are identical in format and equal in value to ~1e-5.

    graph = OrtGraph.open("runs/pets/model.onnx")        # checks the sidecar and the graph's hash
    logits, probs, maps = graph.run(uint8_nchw)          # numpy in, numpy out (no torch needed)
    with OnnxCAM(graph) as cam:                          # camkit's CAM interface over it
        maps = cam(torch.from_numpy(uint8_nchw))         # (B, h, w) in [0, 1], as camkit.cam.CAM

`choose_engine` decides, from what is asked, which one runs:

- `torch`: always possible; the only engine for gradient methods, other layers, smoothing, a
  fastai head, a GPU.
- `onnx`: exact CAM (or predictions) on the CPU; uses RUN/model.onnx when it was exported from
  the run's current weights, else exports the graph in memory (checked against torch, ~5 s).
- `auto` (the default): ONNX Runtime when the run has an up-to-date exported graph, the
  request is exact CAM / a prediction at fp32 on the CPU and onnxruntime is installed; torch
  otherwise. At bf16 (asked for, or `--precision auto` on a CPU with native bf16) it takes the
  INT8 graph RUN/model.int8.onnx when one passed its gate, else torch's bf16 path: on such a
  CPU torch bf16 is as fast as ORT fp32 at batch 1 and faster at batch 32 (docs/benchmarks.md),
  so fp32 ORT is picked only where it is the fastest of the engines that pass the parity gate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from camkit.core.choices import CamEngine as Engine
from camkit.errors import CamkitError
from camkit.export.onnx import (DEFAULT_OPSET, GRAPH, INPUT, INSTALL_HINT, INT8_GRAPH, OUTPUTS, Sidecar, TOLERANCE,
                                check_parity, graph_bytes, map_size, parity_images, read_sidecar, require_onnx,
                                run_grid, session, sha256)

if TYPE_CHECKING:
    from torch import Tensor

    from camkit.cam import CamOutput
    from camkit.core.geometry import Grid
    from camkit.train.run import LoadedModel


# ---------------------------------------------------------------- the graph, torch-free

class OrtGraph:
    """An exported explainer graph in an onnxruntime CPU session, with its sidecar: uint8
    (B, 3, S, S) images in, (logits, probs, maps) out, all numpy."""

    def __init__(self, sess, sidecar: Sidecar, path: Path | None = None):
        self.session, self.sidecar, self.path = sess, sidecar, path
        self.uint8 = sess.get_inputs()[0].type == "tensor(uint8)"

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None) -> OrtGraph:
        """The graph at `path` and its `<path>.json`; refused when the graph is not the one the
        sidecar describes (its SHA-256), so an edited or half-copied pair is never run."""
        require_onnx("the ONNX Runtime engine")
        path = Path(path)
        if not path.is_file():
            raise CamkitError(f"ONNX graph '{path}' does not exist")
        meta = read_sidecar(path)
        if sha256(path) != meta.graph_sha256:
            raise CamkitError(f"'{path}' is not the graph its sidecar describes (hash differs); export it again")
        return cls(session(path, threads), meta, path)

    @property
    def classes(self) -> list[str]:
        return self.sidecar.classes

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits, probs, maps) for uint8 (B, 3, S, S) RGB images (the run's `square`s)."""
        images = np.ascontiguousarray(images)
        feed = images if self.uint8 else images.astype(np.float32) / 255
        logits, probs, maps = self.session.run(list(OUTPUTS), {INPUT: feed})
        return logits, probs, maps


# ---------------------------------------------------------------- camkit's CAM interface over it

class OnnxCAM:
    """Exact CAM computed by an OrtGraph, with the interface `camkit.explain` uses of a CAM
    extractor (`with`, `explain(x, target)` -> camkit.cam.CamOutput, `cam(x, target)` -> maps,
    `name`; and, as camkit.cam.BaseCAM, the last call's `logits`, `targets`, `target`): the
    target's map is the same linear combination of the graph's class maps as `camkit.cam.CAM`
    makes of the features (coefficients `target.cam_weights(I)`: one-hot for a class, e_a - e_b
    for a contrast), post-processed as CAM does (ReLU, min-max, min-max; signed: m / max|m|).
    `x` is the uint8 batch `feed` makes, not a normalised one: the graph normalises."""

    name = "cam"
    needs_grad = False
    engine = Engine.onnx

    def __init__(self, graph: OrtGraph, signed: bool = False):
        self.graph, self.signed = graph, signed
        self.logits: Tensor | None = None
        self.targets: Tensor | None = None
        self.target = None
        self.grid: Grid | None = self._grid()

    def _grid(self) -> Grid:
        from camkit.core.geometry import Grid

        g = self.graph.sidecar.grid
        return Grid(tuple(g["stride"]), tuple(g["offset"]), tuple(g["size"]))

    def __enter__(self) -> OnnxCAM:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def feed(self, squares: list[np.ndarray]) -> Tensor:
        """S x S x 3 uint8 arrays -> the graph's (B, 3, S, S) uint8 input."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(np.stack(squares).transpose(0, 3, 1, 2)))

    def __call__(self, x: Tensor, target=None) -> Tensor:
        return self.explain(x, target).maps

    def explain(self, x: Tensor, target=None) -> CamOutput:
        """The maps of `target` for the uint8 batch `x`, with the logits, the classes explained,
        the bound target and the graph's grid (as camkit.cam.BaseCAM.explain)."""
        import torch
        import torch.nn.functional as F

        from camkit.cam import CamOutput, normalise, scale_signed
        from camkit.cam.targets import as_target

        if x.dtype != torch.uint8:
            raise CamkitError("the ONNX engine takes the uint8 images OnnxCAM.feed makes (the graph normalises "
                              "them itself), not a normalised batch")
        logits, _, maps = self.graph.run(x.cpu().numpy())
        self.logits = torch.from_numpy(logits).float()
        t = as_target(target)
        bound = t if getattr(t, "bound", False) else t.bind(self.logits)
        coef = bound.cam_weights(torch.eye(logits.shape[1]))
        raw = torch.einsum("bc,bchw->bhw", coef, torch.from_numpy(maps).float())
        self.target, self.targets = bound, bound.index
        out = scale_signed(raw) if self.signed else normalise(normalise(F.relu(raw)))
        return CamOutput(out, self.logits, self.targets, bound, self.grid)


# ---------------------------------------------------------------- choosing

@dataclass(frozen=True)
class EngineChoice:
    """The engine that will run, and why (said by `--json` and tests)."""
    engine: Engine
    graph: Path | None
    reason: str


def graph_for(run_dir: str | Path, name: str = GRAPH) -> Path | None:
    """RUN/<name> when it has a sidecar and was exported from the run's current model.pth
    (a retrained run's old graph is stale and ignored); None otherwise."""
    from camkit.train.run import WEIGHTS

    path = Path(run_dir) / name
    if not (path.is_file() and (Path(run_dir) / WEIGHTS).is_file()):
        return None
    try:
        meta = read_sidecar(path)
    except CamkitError:
        return None
    if meta.int8 != (name == INT8_GRAPH) or meta.weights_sha256 != sha256(Path(run_dir) / WEIGHTS):
        return None
    return path


def onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def choose_engine(engine: str | Engine, loaded: LoadedModel, exact: bool, precision: str = "fp32",
                  why_not: str | None = None) -> EngineChoice:
    """Which engine runs a request on `loaded` (see the module docstring). `exact`: the request
    is exact CAM or a plain prediction; `why_not`: what else rules ONNX out (a smoothing option,
    another layer), said when `onnx` was asked for explicitly. `precision` is resolved."""
    try:
        engine = Engine(engine)
    except ValueError:
        raise CamkitError(f"--engine must be auto, torch or onnx, not '{engine}'") from None
    if engine is Engine.torch:
        return EngineChoice(Engine.torch, None, "asked for")
    from camkit.cam import cam_linear

    obstacle = why_not
    if obstacle is None and not exact:
        obstacle = "the ONNX engine computes exact CAM only (--method cam); gradient methods need torch"
    if obstacle is None and cam_linear(loaded.model) is None:
        obstacle = "this run has fastai's head, whose maps need gradients: only --engine torch can explain it"
    if obstacle is None and loaded.device.type != "cpu":
        obstacle = f"the ONNX engine runs on the CPU and the model is on {loaded.device.type}"
    if engine is Engine.onnx:
        if obstacle:
            raise CamkitError(f"--engine onnx: {obstacle}")
        require_onnx("--engine onnx")
        if precision != "fp32":
            int8 = graph_for(loaded.path, INT8_GRAPH)
            if int8 is None:
                raise CamkitError(f"--engine onnx runs an fp32 graph, or the run's INT8 one (camkit export RUN "
                                  f"--onnx --int8), and '{loaded.path}' has none for --precision {precision}")
            return EngineChoice(Engine.onnx, int8, f"the run's INT8 graph, for --precision {precision}")
        return EngineChoice(Engine.onnx, graph_for(loaded.path), "asked for")
    if obstacle or not onnx_available():
        return EngineChoice(Engine.torch, None, obstacle or f"onnxruntime is not installed ({_hint()})")
    if precision == "fp32":
        graph = graph_for(loaded.path)
        return (EngineChoice(Engine.onnx, graph, "the run's exported graph, fastest at fp32") if graph else
                EngineChoice(Engine.torch, None, "the run has no exported graph (camkit export RUN --onnx)"))
    int8 = graph_for(loaded.path, INT8_GRAPH)
    return (EngineChoice(Engine.onnx, int8, "the run's gated INT8 graph, fastest on this CPU") if int8 else
            EngineChoice(Engine.torch, None, f"torch at {precision} (no INT8 graph: camkit export RUN --onnx --int8)"))


def _hint() -> str:
    return INSTALL_HINT


def open_graph(choice: EngineChoice, loaded: LoadedModel, threads: int | None = None) -> OrtGraph:
    """The OrtGraph of an ONNX choice: its file, or the graph exported now, in memory, from
    `loaded` (checked against torch as `camkit export` checks it; nothing written)."""
    if choice.graph is not None:
        return OrtGraph.open(choice.graph, threads)
    data = graph_bytes(loaded)
    sess = session(data, threads)
    parity = check_parity(sess, loaded, parity_images(loaded, n=2))
    if not parity.passed:
        raise CamkitError(f"the graph exported for --engine onnx differs from torch by {parity.max_abs_diff:.3g} "
                          f"(tolerance {TOLERANCE:g} x {parity.scale:.3g}); use --engine torch")
    mean, std = loaded.info.stats
    cells = map_size(loaded)
    meta = Sidecar(classes=list(loaded.classes), size=loaded.size, resize=loaded.info.resize, input_dtype="uint8",
                   mean=list(mean), std=list(std), map_size=cells, grid=run_grid(loaded, cells), opset=DEFAULT_OPSET,
                   int8=False,
                   graph_sha256=hashlib.sha256(data).hexdigest(), weights_sha256="", arch=loaded.info.arch)
    return OrtGraph(sess, meta)
