"""The explainer as one ONNX graph: logits, probabilities and every class's exact CAM in one
forward pass, checked against torch before it is written, with the sidecar JSON that says how
to feed it and where its maps' cells look. This module owns the sidecar format.

    result = export_onnx("runs/pets")                  # RUN/model.onnx + RUN/model.onnx.json
    result.max_abs_diff                                # against camkit's torch model, on real images
    export_onnx("runs/pets", int8=True)                # RUN/model.int8.onnx, written only if it passes its gate

The graph (opset 17 by default, batch dimension dynamic):

    image   uint8 (B, 3, S, S), RGB, NCHW: the run's `square` of an image (squished or cropped to
            S x S as the run was trained), not normalised. The graph normalises it itself:
            x = image / 255 * (1 / std) - mean / std, camkit's `Normalizer` folded into one
            multiply-add. With `float_input=True` the input is float32 in [0, 1] instead.
    logits  float32 (B, C): W . GAP(A), the CAM head (A = the body's last features, (B, K, h, w)).
    probs   float32 (B, C): softmax(logits).
    maps    float32 (B, C, h, w): map_c = W_c . A, the 1 x 1 convolution of the features by the head's
            weights: the raw exact CAM of every class (the head has no bias, so the mean of map_c
            over its h x w cells is logit c). A linear target's map is the same combination of
            these maps (a contrast "a not b" is maps[a] - maps[b]).

What camkit draws is post-processed as `camkit.cam.CAM` does it: ReLU, then min-max to [0, 1]
per map (or, signed, m / max|m|); cell (i, j) is centred on image pixel (stride * i + offset)
given by the sidecar's `grid` (camkit.core.geometry), not on the centre of its footprint.

Only a run with camkit's CAM head can be exported: with fastai's head the maps need gradients,
which no forward graph carries.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camkit.core.files import atomic_write, parse_json, read_text
from camkit.errors import CamkitError
from camkit.version import __version__

if TYPE_CHECKING:
    import torch
    from torch import nn

    from camkit.train.run import LoadedModel

SIDECAR_FORMAT = "camkit-onnx/1"
GRAPH, INT8_GRAPH = "model.onnx", "model.int8.onnx"   # the default names inside a run folder
INPUT, OUTPUTS = "image", ("logits", "probs", "maps")
DEFAULT_OPSET = 17
TOLERANCE = 1e-4         # parity: max |ORT - torch| / max(1, max |torch|), logits and maps alike
INT8_MIN_CORRELATION = 0.99   # INT8 gate: every held-out image's map correlates this well with fp32's
INT8_MAX_ACCURACY_DROP = 0.005   # INT8 gate: held-out accuracy within half a point of fp32's
INSTALL_HINT = "pip install 'camkit[onnx]'"


# ---------------------------------------------------------------- the optional extra

def require_onnx(what: str = "ONNX export") -> None:
    """Refuse in one sentence, with the install line, when onnx / onnxruntime are missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise CamkitError(f"{what} needs {' and '.join(missing)}: {INSTALL_HINT}")


# ---------------------------------------------------------------- results and the sidecar

@dataclass(frozen=True)
class Parity:
    """The exported graph against camkit's torch model on the same images: max absolute
    differences, and whether they are within `tolerance` (relative to max(1, max |torch|))."""
    images: int
    logits: float
    probs: float
    maps: float
    tolerance: float
    scale: float          # max(1, max |torch logits or maps|): what the tolerance is relative to

    @property
    def max_abs_diff(self) -> float:
        return max(self.logits, self.maps)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance * self.scale


@dataclass(frozen=True)
class Int8Gate:
    """An INT8 graph against the fp32 one on the run's held-out images: the Pearson correlation
    of each image's map (of the class fp32 predicts) with fp32's, and the accuracies."""
    images: int
    min_correlation: float
    mean_correlation: float
    accuracy_fp32: float
    accuracy_int8: float
    agreement: float       # fraction of images where both predict the same class
    mode: str              # 'static' (QDQ, calibrated on training images) or 'dynamic'

    @property
    def passed(self) -> bool:
        return (self.min_correlation >= INT8_MIN_CORRELATION
                and self.accuracy_fp32 - self.accuracy_int8 <= INT8_MAX_ACCURACY_DROP + 1e-12)

    def describe(self) -> str:
        return (f"map correlation with fp32 min {self.min_correlation:.4f} (mean {self.mean_correlation:.4f}, "
                f"needs >= {INT8_MIN_CORRELATION}), held-out accuracy {self.accuracy_int8:.1%} vs fp32 "
                f"{self.accuracy_fp32:.1%} (may drop at most {100 * INT8_MAX_ACCURACY_DROP:.1f} points) "
                f"on {self.images} images")


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote: the graph, its sidecar and the checks it passed."""
    path: Path
    sidecar: Path
    opset: int
    int8: bool
    input_dtype: str
    parity: Parity
    gate: Int8Gate | None
    map_size: tuple[int, int]
    seconds: float

    @property
    def max_abs_diff(self) -> float:
        """Largest |ORT - torch| over logits and maps (for an INT8 graph: of its fp32 source)."""
        return self.parity.max_abs_diff


def sidecar_path(graph: str | Path) -> Path:
    """`<file>.json` beside the graph."""
    graph = Path(graph)
    return graph.with_name(graph.name + ".json")


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Sidecar:
    """`<graph>.json`, validated: what a consumer (camkit's ORT engine, the Space, the web page)
    needs to feed the graph and draw its maps. `weights_sha256` is the run's model.pth the graph
    was made from: a retrained run makes the graph stale, and the engine then ignores it."""
    classes: list[str]
    size: int
    resize: str
    input_dtype: str
    mean: list[float]
    std: list[float]
    map_size: tuple[int, int]
    grid: dict
    opset: int
    int8: bool
    graph_sha256: str
    weights_sha256: str
    arch: str = ""
    parity: dict | None = None
    int8_gate: dict | None = None
    camkit: str = __version__

    def to_json(self) -> dict:
        return {
            "format": SIDECAR_FORMAT, "camkit": self.camkit, "arch": self.arch, "classes": self.classes,
            "size": self.size, "resize": self.resize,
            "input": {"name": INPUT, "dtype": self.input_dtype, "layout": "NCHW", "channels": "RGB",
                      "range": [0, 255] if self.input_dtype == "uint8" else [0.0, 1.0],
                      "normalised_in_graph": True},
            "mean": self.mean, "std": self.std,
            "outputs": {"logits": ["batch", len(self.classes)], "probs": ["batch", len(self.classes)],
                        "maps": ["batch", len(self.classes), *self.map_size]},
            "map_size": list(self.map_size), "grid": self.grid,
            "post": "a class's map is maps[b, c] (raw exact CAM, logit c = its mean); camkit draws it after "
                    "ReLU and min-max to [0, 1], cell (i, j) centred on pixel (grid.stride * (i, j) + grid.offset)",
            "opset": self.opset, "int8": self.int8, "graph_sha256": self.graph_sha256,
            "weights_sha256": self.weights_sha256, "parity": self.parity, "int8_gate": self.int8_gate}

    @classmethod
    def from_json(cls, data: Any, where: Path) -> Sidecar:
        """Every field checked: a sidecar may come from anywhere (a download, a shared run)."""
        def bad(field: str) -> CamkitError:
            return CamkitError(f"'{where}' is not a camkit ONNX sidecar (field '{field}')")

        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            raise bad("format")
        classes, size, inp = data.get("classes"), data.get("size"), data.get("input")
        if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
            raise bad("classes")
        if not (isinstance(size, int) and 8 <= size <= 4096):
            raise bad("size")
        if not (isinstance(inp, dict) and inp.get("dtype") in ("uint8", "float32")):
            raise bad("input")
        stats = [data.get("mean"), data.get("std")]
        if not all(isinstance(s, list) and len(s) == 3 and all(isinstance(v, (int, float)) for v in s) for s in stats):
            raise bad("mean/std")
        grid, msize = data.get("grid"), data.get("map_size")
        if not (isinstance(grid, dict) and all(_pair(grid.get(k)) for k in ("stride", "offset", "size"))):
            raise bad("grid")
        if not (_pair(msize) and all(isinstance(v, int) and v > 0 for v in msize)):
            raise bad("map_size")
        for key in ("graph_sha256", "weights_sha256"):
            if not isinstance(data.get(key), str):
                raise bad(key)
        return cls(classes=list(classes), size=size, resize=data.get("resize") if data.get("resize") in
                   ("squish", "crop") else "squish", input_dtype=inp["dtype"], mean=[float(v) for v in stats[0]],
                   std=[float(v) for v in stats[1]], map_size=(msize[0], msize[1]), grid=grid,
                   opset=int(data.get("opset") or 0), int8=data.get("int8") is True,
                   graph_sha256=data["graph_sha256"], weights_sha256=data["weights_sha256"],
                   arch=str(data.get("arch", "")), parity=data.get("parity"), int8_gate=data.get("int8_gate"),
                   camkit=str(data.get("camkit", "")))


def _pair(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)


def read_sidecar(graph: str | Path) -> Sidecar:
    """The validated sidecar of `graph` (`<graph>.json`)."""
    path = sidecar_path(graph)
    if not path.is_file():
        raise CamkitError(f"'{graph}' has no sidecar '{path.name}': export it with camkit export RUN --onnx")
    try:
        data = parse_json(read_text(path, "an ONNX sidecar"))
    except json.JSONDecodeError:
        raise CamkitError(f"'{path}' is not JSON") from None
    return Sidecar.from_json(data, path)


# ---------------------------------------------------------------- the graph

def _explainer_module(loaded: LoadedModel, float_input: bool) -> nn.Module:
    """body -> (logits, probs, maps), input normalised inside (see the module docstring)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from camkit.cam import cam_linear

    fc = cam_linear(loaded.model)
    if fc is None:
        raise CamkitError(f"'{loaded.path}' has fastai's head, whose maps need gradients, which a forward "
                          "graph cannot carry: only runs trained with --head cam can be exported")
    mean, std = (torch.tensor(s, dtype=torch.float32).view(1, 3, 1, 1) for s in loaded.info.stats)
    full = 1.0 if float_input else 255.0

    class Explainer(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = loaded.model[0]
            self.register_buffer("scale", 1 / (full * std))
            self.register_buffer("shift", mean / std)
            self.register_buffer("weight", fc.weight.detach().float().clone())

        def forward(self, image: torch.Tensor):
            x = image.float() * self.scale - self.shift
            a = self.body(x)
            logits = a.mean((2, 3)) @ self.weight.t()
            maps = F.conv2d(a, self.weight[:, :, None, None])
            return logits, logits.softmax(1), maps

    return Explainer().eval()


def graph_bytes(loaded: LoadedModel, opset: int = DEFAULT_OPSET, float_input: bool = False) -> bytes:
    """The fp32 graph as ONNX bytes (torch's TorchScript exporter: no onnxscript needed)."""
    import warnings

    import torch

    require_onnx()
    module = _explainer_module(loaded, float_input).cpu()
    s = loaded.size
    dummy = (torch.rand(1, 3, s, s) if float_input else torch.randint(0, 256, (1, 3, s, s), dtype=torch.uint8))
    buf = io.BytesIO()
    axes = {INPUT: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUTS}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # the exporter's deprecation and tracer notes are not the user's
        try:
            torch.onnx.export(module, (dummy,), buf, input_names=[INPUT], output_names=list(OUTPUTS),
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
        except Exception as e:  # noqa: BLE001  an arch or opset the exporter cannot express
            raise CamkitError(f"torch could not export '{loaded.info.arch}' at opset {opset} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None
    return buf.getvalue()


def session(model: bytes | str | Path, threads: int | None = None):
    """An onnxruntime CPU session (all graph optimisations; `threads` intra-op threads, default
    onnxruntime's own choice, one per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- checking it

def parity_images(loaded: LoadedModel, n: int = 8, seed: int = 0) -> np.ndarray:
    """(B, 3, S, S) uint8: up to `n` of the run's held-out images as the run feeds them, and two
    images of seeded noise (so the check also runs on a run whose images have moved)."""
    squares = [np.ascontiguousarray(loaded.square(im).transpose(2, 0, 1)) for im in heldout(loaded, n)[0]]
    noise = np.random.default_rng(seed).integers(0, 256, (2, 3, loaded.size, loaded.size), dtype=np.uint8)
    return np.concatenate([np.stack(squares), noise]) if squares else noise


def heldout(loaded: LoadedModel, limit: int | None = None) -> tuple[list, list[int]]:
    """The run's held-out images (decoded PIL images) and their label indices; unreadable or
    moved files are skipped."""
    from camkit.core.images import open_or_skip
    from camkit.train.run import read_valid

    try:
        records = read_valid(loaded.path, loaded.info)
    except CamkitError:
        return [], []
    images, labels = [], []
    for r in records:
        if limit is not None and len(images) >= limit:
            break
        if not r.file.is_file():
            continue
        im = open_or_skip(r.file, set())
        if im is not None:
            images.append(im)
            labels.append(loaded.classes.index(r.label))
    return images, labels


def torch_outputs(loaded: LoadedModel, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """camkit's own torch path on uint8 images: (logits, probs, maps) with maps = W . A read
    through the CAM extractor's hook (what `camkit cam --method cam` combines)."""
    import torch

    from camkit.cam import cam_linear

    fc = cam_linear(loaded.model)
    with torch.no_grad():
        x = loaded.batch(list(images.transpose(0, 2, 3, 1)))
        a = loaded.model[0](x).float()
        logits = loaded.model[1](a).float()
        maps = torch.einsum("ck,bkhw->bchw", fc.weight.float(), a)
    return logits.cpu().numpy(), logits.softmax(1).cpu().numpy(), maps.cpu().numpy()


def check_parity(sess, loaded: LoadedModel, images: np.ndarray, tolerance: float = TOLERANCE) -> Parity:
    """Run the graph and torch on the same images; max absolute differences per output."""
    feed = images if sess.get_inputs()[0].type == "tensor(uint8)" else images.astype(np.float32) / 255
    got = sess.run(list(OUTPUTS), {INPUT: feed})
    want = torch_outputs(loaded, images)
    diffs = [float(np.abs(g - w).max()) for g, w in zip(got, want)]
    scale = max(1.0, float(np.abs(want[0]).max()), float(np.abs(want[2]).max()))
    return Parity(len(images), diffs[0], diffs[1], diffs[2], tolerance, scale)


# ---------------------------------------------------------------- INT8

class _Calibration:
    """onnxruntime's CalibrationDataReader over the run's training images (uint8 batches)."""

    def __init__(self, batches: list[np.ndarray]):
        self.batches = iter(batches)

    def get_next(self) -> dict | None:
        b = next(self.batches, None)
        return None if b is None else {INPUT: b}

    def rewind(self) -> None:  # pragma: no cover  (only some onnxruntime versions call it)
        pass


def training_images(loaded: LoadedModel, limit: int = 64, seed: int = 0) -> np.ndarray:
    """Up to `limit` of the run's training images (its data folder minus valid.json's files),
    fed as the run feeds them: the calibration set of static quantization."""
    from camkit.core.images import list_images, open_or_skip
    from camkit.train.run import data_root, read_valid

    root = data_root(loaded.path, loaded.info)
    held = {r.file.resolve() for r in read_valid(loaded.path, loaded.info)} if root.is_dir() else set()
    files = [f for f in (list_images(root) if root.is_dir() else []) if f.resolve() not in held]
    order = np.random.default_rng(seed).permutation(len(files))[:limit]
    squares = []
    for i in sorted(order):
        im = open_or_skip(files[i], set())
        if im is not None:
            squares.append(loaded.square(im).transpose(2, 0, 1))
    if not squares:
        raise CamkitError(f"--int8 calibrates on the run's training images, and none were found in '{root}' "
                          "(has the data folder moved?)")
    return np.ascontiguousarray(np.stack(squares))


def quantize(fp32: bytes, mode: str, calibration: np.ndarray | None, folder: Path) -> bytes:
    """INT8 graph bytes: 'static' = QDQ, per-channel weights, activations calibrated (MinMax) on
    `calibration`; 'dynamic' = weights int8, activations quantised per batch at run time. The
    head (the maps' 1 x 1 conv, the logits' MatMul, the softmax) stays fp32: it is a sliver of
    the time and the maps are what the gate checks."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, pre, dst = folder / "fp32.onnx", folder / "pre.onnx", folder / "int8.onnx"
    src.write_bytes(fp32)
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    model = onnx.load(str(pre))
    head = _head_nodes(model)
    if mode == "dynamic":
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, nodes_to_exclude=head)
    else:
        batches = [calibration[i:i + 8] for i in range(0, len(calibration), 8)]
        quantize_static(str(pre), str(dst), _Calibration(batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=head)
    return dst.read_bytes()


def _head_nodes(model) -> list[str]:
    """Names of the nodes that make the three outputs from the body's features."""
    producers = {o: n for n in model.graph.node for o in n.output}
    head, todo = [], list(OUTPUTS)
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.name in head or node.op_type not in ("Conv", "MatMul", "Gemm", "Softmax",
                                                                      "Transpose", "ReduceMean", "Unsqueeze"):
            continue
        head.append(node.name)
        todo.extend(node.input)
    return head


def int8_gate(fp32_sess, int8_sess, images: np.ndarray, labels: Sequence[int], mode: str) -> Int8Gate:
    """Compare the INT8 graph with fp32 on held-out images (see Int8Gate)."""
    corr, pred32, pred8 = [], [], []
    for i in range(0, len(images), 16):
        b = images[i:i + 16]
        l32, _, m32 = fp32_sess.run(list(OUTPUTS), {INPUT: b})
        l8, _, m8 = int8_sess.run(list(OUTPUTS), {INPUT: b})
        cls = l32.argmax(1)
        for k, c in enumerate(cls):
            corr.append(_pearson(m32[k, c], m8[k, c]))
        pred32.extend(cls.tolist())
        pred8.extend(l8.argmax(1).tolist())
    labels = np.asarray(labels)
    return Int8Gate(len(images), float(min(corr)), float(np.mean(corr)), float(np.mean(np.asarray(pred32) == labels)),
                    float(np.mean(np.asarray(pred8) == labels)), float(np.mean(np.asarray(pred32) == pred8)), mode)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps; two flat maps agree (1), one flat map does not (0)."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    if den == 0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float((a * b).sum() / den)


# ---------------------------------------------------------------- the one entry point

@dataclass(frozen=True)
class ExportOptions:
    """What `export_onnx` makes, checked before any work."""
    opset: int = DEFAULT_OPSET
    int8: bool = False
    int8_mode: str = "static"
    float_input: bool = False
    tolerance: float = TOLERANCE

    def __post_init__(self):
        if not 13 <= self.opset <= 21:
            raise CamkitError(f"--opset must be between 13 and 21, not {self.opset}")
        if self.int8_mode not in ("static", "dynamic"):
            raise CamkitError(f"INT8 mode must be 'static' or 'dynamic', not '{self.int8_mode}'")
        if self.int8 and self.float_input:
            raise CamkitError("an INT8 graph takes uint8 images; drop float_input")
        if not self.tolerance > 0:
            raise CamkitError(f"the parity tolerance must be positive, not {self.tolerance}")


def export_onnx(run: str | Path | LoadedModel, out: str | Path | None = None, opset: int = DEFAULT_OPSET,
                int8: bool = False, *, int8_mode: str = "static", float_input: bool = False,
                tolerance: float = TOLERANCE, calibration: int = 64) -> OnnxExport:
    """Export a CAM-head run as one ONNX graph (see the module docstring) with its sidecar
    `<out>.json`. Default `out`: RUN/model.onnx (RUN/model.int8.onnx with `int8`). The graph
    is compared with camkit's torch model on the run's held-out images and seeded noise, and
    not written when any logit or map differs by more than `tolerance` x max(1, max |value|).
    With `int8`, the quantised graph is also gated against the fp32 one (Int8Gate) on the
    held-out images and refused, with its figures, when it fails. Both files are written
    atomically, the sidecar last: a graph without a sidecar is not a finished export."""

    from camkit.train.run import as_loaded

    options = ExportOptions(opset, int8, int8_mode, float_input, tolerance)
    require_onnx()
    start = time.perf_counter()
    loaded = as_loaded(run, "cpu")
    _explainer_module(loaded, float_input)   # refuses a fastai head before any work
    out = Path(out) if out is not None else loaded.path / (INT8_GRAPH if int8 else GRAPH)
    if out.is_dir():
        raise CamkitError(f"--out '{out}' is a folder; give the .onnx file to write")
    if not out.parent.is_dir():
        raise CamkitError(f"the folder of --out '{out}' does not exist")
    if out.exists() and not sidecar_path(out).is_file():
        raise CamkitError(f"'{out}' exists and was not written by camkit export (no sidecar); "
                          "choose another --out")
    fp32 = graph_bytes(loaded, options.opset, options.float_input)
    fp32_sess = session(fp32)
    parity = check_parity(fp32_sess, loaded, parity_images(loaded), options.tolerance)
    if not parity.passed:
        raise CamkitError(f"the exported graph differs from torch by {parity.max_abs_diff:.3g} (tolerance "
                          f"{options.tolerance:g} x {parity.scale:.3g}); not written")
    data, gate = fp32, None
    if options.int8:
        data, gate = _int8(loaded, fp32, fp32_sess, options, calibration)
    meta = _sidecar(loaded, options, parity, gate)
    _write(out, data, meta)
    return OnnxExport(out, sidecar_path(out), options.opset, options.int8, meta.input_dtype, parity, gate,
                      meta.map_size, time.perf_counter() - start)


def _int8(loaded: LoadedModel, fp32: bytes, fp32_sess, options: ExportOptions, calibration: int
          ) -> tuple[bytes, Int8Gate]:
    """Quantise, then gate on the held-out images; refuse with the figures when it fails."""
    import tempfile

    images, labels = heldout(loaded)
    if not images:
        raise CamkitError("--int8 is checked on the run's held-out images (valid.json), and none could be read")
    calib = training_images(loaded, calibration) if options.int8_mode == "static" else None
    with tempfile.TemporaryDirectory(prefix="camkit-int8-") as tmp:
        data = quantize(fp32, options.int8_mode, calib, Path(tmp))
    held = np.ascontiguousarray(np.stack([loaded.square(im).transpose(2, 0, 1) for im in images]))
    gate = int8_gate(fp32_sess, session(data), held, labels, options.int8_mode)
    if not gate.passed:
        raise CamkitError(f"the INT8 graph fails its gate ({gate.describe()}); not written")
    return data, gate


def map_size(loaded: LoadedModel) -> tuple[int, int]:
    """(h, w) of the body's last features at the run's size: the maps' resolution."""
    import torch

    with torch.no_grad():
        a = loaded.model[0](torch.zeros(1, 3, loaded.size, loaded.size, device=loaded.device))
    return int(a.shape[-2]), int(a.shape[-1])


def run_grid(loaded: LoadedModel, cells: tuple[int, int] | None = None) -> dict:
    """Where the maps' cells look in the S x S input (camkit.core.geometry), as JSON."""
    from camkit.core.geometry import grid_for, probe

    size = (loaded.size, loaded.size)
    g = grid_for(probe(loaded.model, size), cells or map_size(loaded), size)
    return {"stride": [float(v) for v in g.stride], "offset": [float(v) for v in g.offset], "size": list(g.size)}


def _sidecar(loaded: LoadedModel, options: ExportOptions, parity: Parity, gate: Int8Gate | None) -> Sidecar:
    """The sidecar of a graph exported from `loaded` (its graph hash is filled in by `_write`)."""
    from camkit.train.run import WEIGHTS

    cells = map_size(loaded)
    mean, std = loaded.info.stats
    return Sidecar(classes=list(loaded.classes), size=loaded.size, resize=loaded.info.resize,
                   input_dtype="float32" if options.float_input else "uint8", mean=list(mean), std=list(std),
                   map_size=cells, grid=run_grid(loaded, cells), opset=options.opset, int8=options.int8,
                   graph_sha256="", weights_sha256=sha256(loaded.path / WEIGHTS), arch=loaded.info.arch,
                   parity={**asdict(parity), "max_abs_diff": parity.max_abs_diff},
                   int8_gate=None if gate is None else {**asdict(gate), "passed": gate.passed})


def _write(out: Path, data: bytes, meta: Sidecar) -> None:
    """The graph, then its sidecar (with the graph's hash), each atomically; the stale sidecar
    of an earlier export goes first, so a kill in between leaves no pair that looks complete."""
    side = sidecar_path(out)
    try:
        if side.exists():
            read_sidecar(out)   # only ever replace camkit's own sidecar
            side.unlink()
        atomic_write(out, data)
        atomic_write(side, json.dumps(replace(meta, graph_sha256=hashlib.sha256(data).hexdigest()).to_json(),
                                      indent=1))
    except OSError as e:
        raise CamkitError(f"cannot write '{out}' ({e.strerror or e})") from None
