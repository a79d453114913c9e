"""Class activation maps: exact CAM and the Grad-CAM family over one base class.

The base class owns the hook on the target layer (removed by its context manager, even on
errors) and the normalisation; each method only says how to weight the layer's channels.
Gradients are taken only from the target layer up (`torch.autograd.grad` w.r.t. the
activation), the part of the network below the layer runs without recording a graph, so a
Grad-CAM costs about one forward pass plus a backward through the head.

    with GradCAM(model) as cam:
        maps = cam(x)                    # (B, h, w) in [0, 1], on x's device
    explain("runs/demo", ["photo.jpg"], out="cams")   # overlays, .npy, cams.jsonl, index.html
"""

from __future__ import annotations

import html
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit.errors import CamkitError

EPS = 1e-8
Target = int | Sequence[int] | Tensor | None


def cam_linear(model: nn.Module) -> nn.Linear | None:
    """The bias-free Linear of a GAP -> Flatten -> Linear head (camkit's CAM head), if any."""
    head = model[-1] if isinstance(model, nn.Sequential) and len(model) else None
    if isinstance(head, nn.Sequential) and len(head) == 3:
        pool, flat, fc = head
        if (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))
                and isinstance(flat, nn.Flatten) and isinstance(fc, nn.Linear) and fc.bias is None):
            return fc
    return None


def find_layer(model: nn.Module, x: Tensor) -> str:
    """Name of the module whose output is the last 4-D activation with spatial size > 1."""
    seen: list[str] = []
    names = {m: n for n, m in model.named_modules() if n}
    handles = [m.register_forward_hook(
        lambda mod, _i, out: seen.append(names[mod])
        if isinstance(out, Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1 else None)
        for m in names]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise CamkitError("the model has no 4-D activation with spatial size > 1 to explain")
    return seen[-1]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or not name:
        convs = [n for n, m in modules.items() if n and isinstance(m, (nn.Conv2d, nn.Sequential))]
        raise CamkitError(f"unknown layer '{name}'; candidates: {', '.join(convs[-12:])}")
    return modules[name]


def normalise(maps: Tensor) -> Tensor:
    """Per-map min-max to [0, 1]; a flat map becomes all zeros, never NaN."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return (maps - lo[:, None, None]) / (hi - lo + EPS)[:, None, None]


class BaseCAM:
    """Hooks `layer` (found automatically when None) and turns channel weights into maps.

    Subclasses implement `weights(acts, grads, logits, target)` returning (B, K) channel
    weights or (B, K, h, w) element-wise weights; `needs_grad` says whether `grads` is used."""

    needs_grad = True
    name = "base"

    def __init__(self, model: nn.Module, layer: str | None = None):
        self.model = model
        self.layer_name = layer
        self._handle = None
        self._entered = False
        self._capture = False
        self.acts: Tensor | None = None
        self.logits: Tensor | None = None

    # -- hook lifetime: registered on first call, kept while inside `with`, always removed
    def __enter__(self) -> "BaseCAM":
        self._entered = True
        return self

    def __exit__(self, *exc) -> None:
        self._entered = False
        self._remove()

    def _register(self, x: Tensor) -> None:
        if self.layer_name is None:
            self.layer_name = find_layer(self.model, x)
        self._handle = get_layer(self.model, self.layer_name).register_forward_hook(self._hook)

    def _remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, _module, _inputs, output: Tensor) -> Tensor | None:
        if not self._capture:  # masked passes (Score-CAM), or the layer run twice in one pass
            return None
        self._capture = False
        # A fresh leaf: gradients stop here (nothing below is recorded), and the clone handed
        # on means an in-place op downstream (ReLU(inplace=True)) cannot alter what we saved.
        self.acts = output.detach().requires_grad_(self.needs_grad)
        torch.set_grad_enabled(self.needs_grad)
        return self.acts.clone()

    # -- the maps
    def weights(self, acts: Tensor, grads: Tensor | None, logits: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor, target: Target = None) -> Tensor:
        """Normalised maps (B, h, w) for `target` (None: the predicted class; an int, or one
        class index per image). The logits of the same pass are kept in `self.logits`."""
        grad_mode = torch.is_grad_enabled()
        try:
            if self._handle is None:
                self._register(x)
            self.acts, self._capture = None, True
            with torch.no_grad():  # the hook switches recording on from the target layer up
                logits = self.model(x)
            acts = self.acts
            if acts is None:
                raise CamkitError(f"layer '{self.layer_name}' was not run by the model's forward pass")
            target_t = self._target(target, logits)
            grads = None
            if self.needs_grad:
                with torch.enable_grad():  # also when the caller is inside torch.no_grad()
                    score = logits.gather(1, target_t[:, None]).sum()
                    grads, = torch.autograd.grad(score, acts)
            # combine in fp32 even when the pass ran under the caller's bf16 autocast
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                maps = self._combine(acts.detach().float(), None if grads is None else grads.float(),
                                     logits.detach().float(), target_t)
                self.logits = logits.detach().float()
                return normalise(F.relu(maps))
        finally:
            torch.set_grad_enabled(grad_mode)
            self._capture, self.acts = False, None
            if not self._entered:
                self._remove()

    def _combine(self, acts: Tensor, grads: Tensor | None, logits: Tensor, target: Tensor) -> Tensor:
        w = self.weights(acts, grads, logits, target)
        if w.dim() == 2:
            return torch.einsum("bk,bkhw->bhw", w.to(acts.dtype), acts)
        return (w * acts).sum(1)

    @staticmethod
    def _target(target: Target, logits: Tensor) -> Tensor:
        n, c = logits.shape
        if target is None:
            t = logits.argmax(1)
        elif isinstance(target, int):
            t = torch.full((n,), target, dtype=torch.long, device=logits.device)
        else:
            t = torch.as_tensor(target, dtype=torch.long, device=logits.device).flatten()
            if len(t) != n:
                raise CamkitError(f"{len(t)} targets for a batch of {n} images")
        if len(t) and (t.min() < 0 or t.max() >= c):
            raise CamkitError(f"target class index out of range 0..{c - 1}")
        return t


class CAM(BaseCAM):
    """Exact CAM (Zhou et al. 2016): map_c = sum_k w_ck A_k with the head's own weights.
    Needs a GAP -> Linear(bias=False) head; one forward pass, no gradients."""

    needs_grad = False
    name = "cam"

    def __init__(self, model: nn.Module, layer: str | None = None):
        self.fc = cam_linear(model)
        if self.fc is None:
            raise CamkitError("exact CAM needs camkit's CAM head (GAP -> Linear without bias); "
                              "use --method gradcam for this model")
        super().__init__(model, layer if layer is not None else "0" if isinstance(model, nn.Sequential) else None)

    def weights(self, acts, grads, logits, target):
        return self.fc.weight[target]


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): w_k = mean over h, w of d y_c / d A_k."""
    name = "gradcam"

    def weights(self, acts, grads, logits, target):
        return grads.mean(dim=(2, 3))


class GradCAMpp(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018): w_k = sum_hw alpha_khw relu(g_khw) with
    alpha = g^2 / (2 g^2 + sum_hw A g^3)."""
    name = "gradcam++"

    def weights(self, acts, grads, logits, target):
        g2 = grads.pow(2)
        denom = 2 * g2 + (g2 * grads * acts).sum(dim=(2, 3), keepdim=True)
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        return (alpha * F.relu(grads)).sum(dim=(2, 3))


class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al. 2020): w_k = sum_hw g A / sum_hw A."""
    name = "xgradcam"

    def weights(self, acts, grads, logits, target):
        return (grads * acts).sum(dim=(2, 3)) / (acts.sum(dim=(2, 3)) + EPS)


class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al. 2021): element-wise weights relu(g_khw)."""
    name = "layercam"

    def weights(self, acts, grads, logits, target):
        return F.relu(grads)


class ScoreCAM(BaseCAM):
    """Score-CAM (Wang et al. 2020): each channel, upsampled and min-max scaled, masks the
    input; its weight is the target's softmax score on the masked input (softmax over channels).
    One extra forward per channel, in batches of `batch_size`."""

    needs_grad = False
    name = "scorecam"
    batch_size = 64

    def __init__(self, model: nn.Module, layer: str | None = None):
        super().__init__(model, layer)
        self._input: Tensor | None = None

    def __call__(self, x: Tensor, target: Target = None) -> Tensor:
        self._input = x
        try:
            return super().__call__(x, target)
        finally:
            self._input = None

    def weights(self, acts, grads, logits, target):
        x = self._input
        b, k = acts.shape[:2]
        masks = normalise(F.interpolate(acts, size=x.shape[-2:], mode="bilinear", align_corners=False)
                          .flatten(0, 1)).view(b, k, 1, *x.shape[-2:])
        scores = torch.empty(b, k, device=acts.device)
        with torch.no_grad():
            for i in range(b):
                for s in range(0, k, self.batch_size):
                    m = masks[i, s:s + self.batch_size]
                    out = self.model(x[i:i + 1] * m).softmax(1)
                    scores[i, s:s + self.batch_size] = out[:, target[i]]
        return scores.softmax(1)


METHODS: dict[str, type[BaseCAM]] = {c.name: c for c in (CAM, GradCAM, GradCAMpp, XGradCAM, LayerCAM, ScoreCAM)}


def make_cam(method: str | None, model: nn.Module, layer: str | None = None) -> BaseCAM:
    """The CAM extractor by name; None picks exact `cam` when the head allows, else `gradcam`."""
    if method is None:
        method = "cam" if cam_linear(model) is not None and layer is None else "gradcam"
    if method not in METHODS:
        raise CamkitError(f"unknown method '{method}'; choose from {', '.join(METHODS)}")
    return METHODS[method](model, layer)


# ---------------------------------------------------------------- images, overlays, gallery

def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, h, w) maps -> (B, H, W), bilinear."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def peak_xy(cam_map: Tensor, model_size: int, width: int, height: int) -> list[int]:
    """[x, y] of the map's maximum in original-image pixels (the model saw a squished square)."""
    fine = upsample(cam_map[None], (model_size, model_size))[0]
    iy, ix = divmod(int(fine.flatten().argmax()), model_size)
    return [min(width - 1, int((ix + 0.5) * width / model_size)),
            min(height - 1, int((iy + 0.5) * height / model_size))]


def colorize(heat: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 via a matplotlib colormap."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise CamkitError(f"unknown colormap '{colormap}'") from None
    return (cmap(np.clip(heat, 0, 1))[..., :3] * 255).astype(np.uint8)


def overlay(image, cam_map: Tensor, alpha: float = 0.5, colormap: str = "jet"):
    """The heatmap mapped back onto the original image at its own resolution:
    returns (heatmap PIL image, overlay PIL image)."""
    from PIL import Image

    if not 0 <= alpha <= 1:
        raise CamkitError(f"--alpha must be between 0 and 1, not {alpha}")
    w, h = image.size
    heat = upsample(cam_map[None].cpu(), (h, w))[0].numpy()
    colored = colorize(heat, colormap)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (base * (1 - alpha) + colored.astype(np.float32) * alpha).round().astype(np.uint8)
    return Image.fromarray(colored), Image.fromarray(blended)


@dataclass
class Explanation:
    """One line of cams.jsonl."""
    image: str
    pred: str
    prob: float
    target: str
    method: str
    peak_xy: list[int]
    heatmap: str | None = None
    overlay: str | None = None
    map: str | None = None


def _safe_stem(path: Path, index: int) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in path.stem).lstrip(".")
    return f"{index:05d}_{stem[:60] or 'image'}"


def explain(model_dir, images: Sequence[str | Path] | str | Path, method: str | None = None,
            target: str = "pred", out: str | Path | None = "cams", layer: str | None = None,
            alpha: float = 0.5, colormap: str = "jet", bs: int = 32, device: str | None = None,
            precision: str = "fp32", progress: bool = False) -> list[Explanation]:
    """Explain images (files or folders, recursively) with a model saved by `camkit train`.

    Writes per image `NAME_overlay.png`, `NAME_heatmap.png`, `NAME.npy` (the map at the layer's
    resolution), one line per image in `cams.jsonl`, and `index.html` into `out` (None: write
    nothing, just return). Unreadable files are skipped with a warning when they came from a
    folder; a single unreadable named file is an error. `precision` "bf16" (or "auto" where the
    hardware has native bf16) runs the passes under bf16 autocast, about twice as fast on such
    CPUs; maps are combined and normalised in fp32 either way."""
    from camkit.images import list_images, open_rgb
    from camkit.train import LoadedModel, load, resolve_precision

    loaded = model_dir if isinstance(model_dir, LoadedModel) else load(model_dir, device=device)
    precision = resolve_precision(precision, loaded.device)
    if precision == "fp16":
        raise CamkitError("--precision fp16 is not supported for CAM; use bf16 or fp32")
    if bs < 1:
        raise CamkitError(f"--bs must be at least 1, not {bs}")
    if not 0 <= alpha <= 1:
        raise CamkitError(f"--alpha must be between 0 and 1, not {alpha}")
    colorize(np.zeros((1, 1)), colormap)  # validate before any work
    if target != "pred" and target not in loaded.classes:
        raise CamkitError(f"unknown class '{target}'; classes: {', '.join(loaded.classes)}")
    inputs = [images] if isinstance(images, (str, Path)) else list(images)
    named_files = {str(Path(p)) for p in inputs if not Path(p).is_dir()}
    files = list_images(inputs)
    if not files:
        raise CamkitError("no images found in " + ", ".join(map(str, inputs)))
    if layer is not None:
        get_layer(loaded.model, layer)  # fail before any work
    extractor = make_cam(method, loaded.model, layer)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CamkitError(f"cannot create output folder '{out_dir}' ({e.strerror or e})") from None
    results: list[Explanation] = []
    batches = range(0, len(files), bs)
    if progress:
        from fastprogress.fastprogress import progress_bar

        batches = progress_bar(batches)
    with extractor:
        for start in batches:
            batch_files, batch_images = [], []
            for f in files[start:start + bs]:
                try:
                    batch_images.append(open_rgb(f))
                    batch_files.append(f)
                except CamkitError as e:
                    if str(f) in named_files:
                        raise
                    warnings.warn(f"skipping {e}", stacklevel=2)
            if not batch_files:
                continue
            x = loaded.preprocess(batch_images)
            tgt = None if target == "pred" else loaded.classes.index(target)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                maps = extractor(x, tgt)
            probs = extractor.logits.float().softmax(1)
            for i, (f, img) in enumerate(zip(batch_files, batch_images)):
                p = probs[i]
                t = int(p.argmax()) if tgt is None else tgt
                rec = Explanation(image=str(f), pred=loaded.classes[int(p.argmax())], prob=round(float(p.max()), 5),
                                  target=loaded.classes[t], method=extractor.name,
                                  peak_xy=peak_xy(maps[i], loaded.size, *img.size))
                if out_dir is not None:
                    stem = _safe_stem(f, start + i)
                    heat, over = overlay(img, maps[i], alpha, colormap)
                    heat.save(out_dir / f"{stem}_heatmap.png")
                    over.save(out_dir / f"{stem}_overlay.png")
                    np.save(out_dir / f"{stem}.npy", maps[i].float().cpu().numpy())
                    rec.heatmap, rec.overlay, rec.map = f"{stem}_heatmap.png", f"{stem}_overlay.png", f"{stem}.npy"
                results.append(rec)
    if out_dir is not None:
        write_outputs(out_dir, results)
    return results


def write_outputs(out_dir: Path, results: list[Explanation]) -> None:
    """cams.jsonl and the index.html gallery (relative links: opens from disk, no server)."""
    from dataclasses import asdict

    tmp = out_dir / ".cams.jsonl.tmp"
    tmp.write_text("".join(json.dumps(asdict(r)) + "\n" for r in results))
    tmp.replace(out_dir / "cams.jsonl")
    rows = []
    for r in results:
        original = Path(r.image).resolve().as_uri()
        rows.append(
            f"<figure><div class='row'><img src='{html.escape(original)}' alt='original'>"
            f"<img src='{html.escape(r.heatmap or '')}' alt='heatmap'><img src='{html.escape(r.overlay or '')}' alt='overlay'></div>"
            f"<figcaption>{html.escape(Path(r.image).name)} — predicted <b>{html.escape(r.pred)}</b> "
            f"({r.prob:.1%}); map for {html.escape(r.target)} by {html.escape(r.method)}</figcaption></figure>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>camkit CAM gallery</title><style>"
            "body{font-family:sans-serif;margin:1.5em;background:#fafafa}figure{display:inline-block;margin:.6em;"
            "background:#fff;padding:.5em;border:1px solid #ddd}.row img{height:160px;margin-right:4px;"
            "image-rendering:auto}figcaption{font-size:13px;max-width:500px}</style></head><body>"
            f"<h1>CAM gallery</h1><p>{len(results)} images: original | heatmap | overlay</p>"
            + "".join(rows) + "</body></html>")
    (out_dir / "index.html").write_text(page)
