"""The course's small calculators, each returning the formula, the numbers put in, and the result.

Layer expressions for `params` are parsed with `ast` against an allow-list of torch.nn layer
names and literal arguments, and built on the `meta` device (no memory): never `eval`.
"""

from __future__ import annotations

import ast
import inspect
import math
import re
from dataclasses import dataclass, field

from camkit.errors import CamkitError


@dataclass
class Answer:
    formula: str
    substituted: str
    result: dict
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"formula:     {self.formula}", f"substituted: {self.substituted}"]
        lines += [f"{k}: {v}" for k, v in self.result.items()]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def parse_shape(text: str) -> tuple[int, int, int]:
    """'32x32x3' (H x W x C) -> (32, 32, 3)."""
    parts = re.split(r"[x×, ]+", text.strip().lower())
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CamkitError(f"--input must look like 32x32x3 (height x width x channels), not '{text}'")
    h, w, c = map(int, parts)
    if min(h, w, c) < 1:
        raise CamkitError(f"--input sizes must be positive, not '{text}'")
    return h, w, c


def _out_side(side: int, kernel: int, stride: int, pad: int, what: str, notes: list[str]) -> int:
    if kernel < 1 or stride < 1 or pad < 0:
        raise CamkitError(f"{what}: kernel and stride must be >= 1 and padding >= 0")
    span = side - kernel + 2 * pad
    if span < 0:
        raise CamkitError(f"{what}: a {kernel}x{kernel} kernel does not fit a side of {side} with padding {pad}")
    if span % stride:
        notes.append(f"{what}: ({side} - {kernel} + 2*{pad}) / {stride} is not whole; PyTorch floors it")
    return span // stride + 1


def conv(input: str, filters: int, kernel: int, stride: int = 1, pad: int = 0, bias: bool = True) -> Answer:
    """Output size (W - K + 2P) / S + 1 and parameters (K*K*C_in + bias) * filters."""
    h, w, c = parse_shape(input)
    if filters < 1:
        raise CamkitError(f"--filters must be at least 1, not {filters}")
    notes: list[str] = []
    oh = _out_side(h, kernel, stride, pad, "conv", notes)
    ow = _out_side(w, kernel, stride, pad, "conv", notes) if w != h else oh
    params = (kernel * kernel * c + int(bias)) * filters
    return Answer(
        formula="out = (W - K + 2P) / S + 1;  params = (K*K*C_in + 1) * filters" if bias else
        "out = (W - K + 2P) / S + 1;  params = K*K*C_in * filters",
        substituted=f"out = ({w} - {kernel} + 2*{pad}) / {stride} + 1 = {ow};  params = "
                    f"({kernel}*{kernel}*{c}{' + 1' if bias else ''}) * {filters} = {params}",
        result={"output": f"{oh}x{ow}x{filters}", "output_shape": [oh, ow, filters], "parameters": params},
        notes=notes)


def pool(input: str, kernel: int, stride: int | None = None, pad: int = 0) -> Answer:
    """Pooling output size (W - K + 2P) / S + 1 (S defaults to K); no parameters."""
    h, w, c = parse_shape(input)
    stride = stride or kernel
    notes: list[str] = []
    oh, ow = _out_side(h, kernel, stride, pad, "pool", notes), _out_side(w, kernel, stride, pad, "pool", notes)
    return Answer("out = (W - K + 2P) / S + 1;  params = 0",
                  f"out = ({w} - {kernel} + 2*{pad}) / {stride} + 1 = {ow}",
                  {"output": f"{oh}x{ow}x{c}", "output_shape": [oh, ow, c], "parameters": 0}, notes)


_LAYER = re.compile(r"^(conv(?P<f>\d+)k(?P<k>\d+)(?:s(?P<s>\d+))?(?:p(?P<p>\d+))?"
                    r"|pool(?P<pk>\d+)(?:s(?P<ps>\d+))?)$")


def chain(input: str, layers: str) -> Answer:
    """Shapes through 'conv6k5,pool2,conv16k5,pool2' (conv{filters}k{kernel}[s{stride}][p{pad}],
    pool{kernel}[s{stride}]) and the flatten size an nn.Linear after them needs."""
    h, w, c = parse_shape(input)
    shape = f"{h}x{w}x{c}"
    steps, total, notes = [], 0, []
    for token in [t.strip().lower() for t in layers.split(",") if t.strip()]:
        m = _LAYER.match(token)
        if not m:
            raise CamkitError(f"layer '{token}' must look like conv32k3p1, conv16k5s2 or pool2")
        if m["f"]:
            a = conv(shape, int(m["f"]), int(m["k"]), int(m["s"] or 1), int(m["p"] or 0))
        else:
            a = pool(shape, int(m["pk"]), int(m["ps"]) if m["ps"] else None)
        notes += a.notes
        shape = a.result["output"]
        total += a.result["parameters"]
        steps.append(f"{token} -> {shape} ({a.result['parameters']} params)")
    if not steps:
        raise CamkitError("--layers is empty")
    oh, ow, oc = parse_shape(shape)
    return Answer("each layer: out = (W - K + 2P) / S + 1;  flatten = C * H * W",
                  "; ".join(steps) + f"; flatten = {oc}*{oh}*{ow}",
                  {"output": shape, "flatten": oc * oh * ow, "parameters": total, "layers": steps}, notes)


def _numbers(values, what: str) -> list[float]:
    if isinstance(values, str):
        values = [v for v in re.split(r"[,\s]+", values.strip()) if v]
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise CamkitError(f"{what} must be numbers, got {values!r}") from None
    if not out:
        raise CamkitError(f"{what} is empty")
    if not all(math.isfinite(v) for v in out):
        raise CamkitError(f"{what} must be finite numbers")
    return out


def softmax(values) -> Answer:
    """softmax(z)_i = exp(z_i - max z) / sum_j exp(z_j - max z): shifting by the max changes
    nothing mathematically and keeps exp from overflowing."""
    z = _numbers(values, "values")
    top = max(z)
    exps = [math.exp(v - top) for v in z]
    total = sum(exps)
    probs = [e / total for e in exps]
    return Answer("softmax(z)_i = exp(z_i - max z) / sum_j exp(z_j - max z)",
                  f"max z = {top:g}; exp(z - max) = [{', '.join(f'{e:.4f}' for e in exps)}]; sum = {total:.4f}",
                  {"softmax": [round(p, 6) for p in probs], "sum": round(sum(probs), 6),
                   "argmax": probs.index(max(probs))})


def loss(pred, target) -> Answer:
    """MSE (mean and the 1/2-sum convention), categorical and binary cross-entropy, NLL."""
    p, t = _numbers(pred, "--pred"), _numbers(target, "--target")
    if len(p) != len(t):
        raise CamkitError(f"--pred has {len(p)} values and --target {len(t)}")
    if not all(0 <= v <= 1 for v in p):
        raise CamkitError("--pred must be probabilities in [0, 1]")
    if not all(0 <= v <= 1 for v in t):
        raise CamkitError("--target must be in [0, 1] (one-hot or probabilities)")
    notes = []
    if abs(sum(p) - 1) > 1e-6:
        notes.append(f"--pred sums to {sum(p):.6g}, not 1: not a distribution, the categorical "
                     "cross-entropy and NLL treat it as one anyway")
    n = len(p)

    def log(v: float) -> float:
        return math.log(v) if v > 0 else -math.inf

    sq = [(a - b) ** 2 for a, b in zip(p, t)]
    mse = sum(sq) / n
    half_sum = sum(sq) / 2
    ce = -sum(b * log(a) for a, b in zip(p, t) if b)
    bce = -sum((b * log(a) if b else 0.0) + ((1 - b) * log(1 - a) if b < 1 else 0.0) for a, b in zip(p, t))
    k = t.index(max(t))
    nll = -log(p[k])
    return Answer(
        "MSE = (1/n) sum (p - t)^2;  SSE/2 = (1/2) sum (p - t)^2;  CE = -sum t log p;  "
        "BCE = -sum [t log p + (1 - t) log(1 - p)];  NLL = -log p[target class]",
        f"sum (p - t)^2 = {' + '.join(f'{v:.6g}' for v in sq)} = {sum(sq):.6g}; n = {n}; "
        f"target class = {k}, p = {p[k]:g}",
        {"mse": round(mse, 6), "half_sum_squared_error": round(half_sum, 6),
         "cross_entropy": round(ce, 6), "binary_cross_entropy_sum": round(bce, 6),
         "nll": round(nll, 6)}, notes)


PARAM_LAYERS = ("Linear", "Bilinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                "ConvTranspose3d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm",
                "InstanceNorm2d", "Embedding", "RNN", "LSTM", "GRU", "PReLU", "MaxPool2d", "AvgPool2d",
                "AdaptiveAvgPool2d", "ReLU", "Sigmoid", "Tanh", "Dropout", "Flatten", "Identity", "Softmax")


def _parse_layer(expr: str):
    try:
        node = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        raise CamkitError(f"'{expr}' is not a layer expression like Linear(4, 1, bias=False)") from None
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
            and func.value.id == "nn" else func.id if isinstance(func, ast.Name) else None
        if name in PARAM_LAYERS:
            try:
                args = [ast.literal_eval(a) for a in node.args]
                kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
            except ValueError:
                raise CamkitError(f"'{expr}': arguments must be literals (numbers, tuples, True/False)") from None
            if len(kwargs) != len(node.keywords):
                raise CamkitError(f"'{expr}': **kwargs are not allowed")
            return name, args, kwargs
    raise CamkitError(f"'{expr}' is not an allowed layer; allowed: {', '.join(PARAM_LAYERS)}")


def params(*expressions: str) -> Answer:
    """Trainable parameter count of each torch.nn layer expression."""
    from torch import nn

    if not expressions:
        raise CamkitError("give at least one layer expression, e.g. \"Linear(4,1,bias=False)\"")
    counts, parts = {}, []
    for expr in expressions:
        name, args, kwargs = _parse_layer(expr)
        cls = getattr(nn, name)
        if "device" in inspect.signature(cls.__init__).parameters:
            kwargs = {**kwargs, "device": "meta"}  # shapes only, no memory
        try:
            layer = cls(*args, **kwargs)
        except Exception as e:  # noqa: BLE001  any constructor failure means the arguments are invalid
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CamkitError(f"'{expr}': invalid arguments ({reason})") from None
        shapes = [tuple(p.shape) for p in layer.parameters() if p.requires_grad]
        counts[expr] = sum(math.prod(s) for s in shapes)
        parts.append(f"{expr}: " + (" + ".join("*".join(map(str, s)) or "1" for s in shapes) or "0")
                     + f" = {counts[expr]}")
    notes = []
    if len(counts) > 1:
        same = len(set(counts.values())) == 1
        notes.append("all have the same number of parameters" if same else "the counts differ")
    return Answer("params = sum over weight tensors of the product of their shape",
                  "; ".join(parts), {"parameters": counts}, notes)
