"""Maps in, images out: upsample, peak, colourise, overlay, gallery. Nothing here runs a model.

Memory is bounded by design: heatmaps and overlays are drawn at most `Style.max_side` pixels
on their longer side (2048 by default), in float32, so a 9400 x 9400 image costs a few tens of
MB to draw instead of gigabytes. `peak_xy` is still given in the original image's pixels.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image
from torch import Tensor

from camkit.core.geometry import Grid, upsample
from camkit.core.images import open_rgb
from camkit.core.plots import plt, returned
from camkit.errors import CamkitError

MAX_SIDE = 2048
DIVERGING = "RdBu_r"  # signed maps: red = evidence for the target, blue = evidence against, white = none


@dataclass(frozen=True)
class Style:
    """How maps are drawn; checked once, when made (bad values fail before any work)."""
    alpha: float = 0.5          # heatmap opacity in the overlay
    colormap: str = "jet"       # any matplotlib colormap name
    max_side: int = MAX_SIDE    # longest side of drawn images, in pixels
    signed: bool = False        # maps in [-1, 1] (evidence for / against): 0 drawn at the colormap's middle

    def __post_init__(self) -> None:
        import matplotlib

        if not 0 <= self.alpha <= 1:
            raise CamkitError(f"--alpha must be between 0 and 1, not {self.alpha}")
        if self.colormap not in matplotlib.colormaps:
            raise CamkitError(f"unknown colormap '{self.colormap}'; e.g. jet, viridis, inferno, turbo")
        if self.max_side < 16:
            raise CamkitError(f"the drawing size must be at least 16 pixels, not {self.max_side}")


def peak_xy(cam_map: Tensor, model_size: int | tuple[int, int], width: int, height: int,
            grid: Grid | None = None) -> list[int]:
    """[x, y] of the map's maximum in the pixels of a width x height image that the model saw
    squished to `model_size` (a side, or (height, width)). The highest cell, moved along each axis
    to the vertex of the parabola through it and its two neighbours (at most half a cell: a
    sub-cell peak, as keypoint heatmaps are read), placed where `grid` says the cells look
    (camkit.core.geometry; None: on their footprints). A bilinearly upsampled map peaks exactly on a
    cell centre, so its argmax could only ever name the grid's nodes."""
    mh, mw = (model_size, model_size) if isinstance(model_size, int) else model_size
    cells = cam_map.detach().float().cpu()
    h, w = cells.shape[-2:]
    grid = (grid or Grid.footprint((h, w), (mh, mw))).resized((mh, mw))
    cy, cx = divmod(int(cells.flatten().argmax()), w)
    y = grid.stride[0] * (cy + vertex(cells[:, cx], cy)) + grid.offset[0]
    x = grid.stride[1] * (cx + vertex(cells[cy, :], cx)) + grid.offset[1]
    return [min(width - 1, max(0, int((x + 0.5) * width / mw))), min(height - 1, max(0, int((y + 0.5) * height / mh)))]


def vertex(values: Tensor, i: int) -> float:
    """Offset of the vertex of the parabola through values[i - 1 .. i + 1] from i, in (-0.5, 0.5):
    0.5 (a - c) / (a - 2b + c); 0 at an edge, on a plateau or where the three are not a peak."""
    if i == 0 or i == len(values) - 1:
        return 0.0
    a, b, c = (float(v) for v in values[i - 1:i + 2])
    curvature = a - 2 * b + c
    if not curvature < 0:
        return 0.0
    return max(-0.5, min(0.5, 0.5 * (a - c) / curvature))


def colorize(heat: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 through the colormap's lookup table (no float64 copy)."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise CamkitError(f"unknown colormap '{colormap}'") from None
    return cmap(np.clip(heat.astype(np.float32, copy=False), 0, 1), bytes=True)[..., :3]


def display_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) scaled down so the longer side is at most `max_side` (never up)."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_for_drawing(image, max_side: int = MAX_SIDE):
    """The image in RGB, no larger than `max_side` on its longer side (box-reduced first, so a
    huge image is never copied at full size)."""
    size = display_size(*image.size, max_side)
    image = image if image.mode == "RGB" else image.convert("RGB")
    return image if size == image.size else image.resize(size, Image.BILINEAR, reducing_gap=2.0)


def overlay(image, cam_map: Tensor, style: Style = Style(), grid: Grid | None = None):
    """The heatmap laid over the image: returns (heatmap, overlay) PIL images, drawn at the
    image's resolution capped to `style.max_side`: overlay = (1 - alpha) image + alpha heat.
    `grid`: where the map's cells look in the model's input (camkit.core.geometry), resized with it."""
    base = fit_for_drawing(image, style.max_side)
    w, h = base.size
    heat = upsample(cam_map[None].detach().cpu(), (h, w), grid)[0].numpy()
    colored = colorize((heat + 1) / 2 if style.signed else heat, style.colormap)
    blended = np.asarray(base, dtype=np.float32) * (1 - style.alpha) + colored.astype(np.float32) * style.alpha
    return Image.fromarray(colored), Image.fromarray(blended.round().astype(np.uint8))


def gallery_html(rows: Iterable[dict]) -> str:
    """An offline page of original | heatmap | overlay per image. Each row: image (path of the
    original), heatmap and overlay (file names relative to the page), pred, prob, target,
    method. Every text is escaped."""
    figures = []
    for r in rows:
        original = Path(r["image"]).resolve().as_uri()
        figures.append(
            f"<figure><div class='row'><img src='{html.escape(original)}' alt='original'>"
            f"<img src='{html.escape(r.get('heatmap') or '')}' alt='heatmap'>"
            f"<img src='{html.escape(r.get('overlay') or '')}' alt='overlay'></div>"
            f"<figcaption>{html.escape(Path(r['image']).name)} — predicted <b>{html.escape(r['pred'])}</b> "
            f"({r['prob']:.1%}); map for {html.escape(r['target'])} by {html.escape(r['method'])}</figcaption>"
            "</figure>")
    return ("<!doctype html><html><head><meta charset='utf-8'><meta name='generator' content='camkit'>"
            "<title>camkit CAM gallery</title><style>"
            "body{font-family:sans-serif;margin:1.5em;background:#fafafa}figure{display:inline-block;margin:.6em;"
            "background:#fff;padding:.5em;border:1px solid #ddd}.row img{height:160px;margin-right:4px;"
            "image-rendering:auto}figcaption{font-size:13px;max-width:500px}</style></head><body>"
            f"<h1>CAM gallery</h1><p>{len(figures)} images: original | heatmap | overlay</p>"
            + "".join(figures) + "</body></html>")


def picture_of(result, max_side: int = MAX_SIDE):
    """The image a result's map is laid over: its kept picture, else its file read again."""
    return result.picture if result.picture is not None else fit_for_drawing(open_rgb(result.image), max_side)


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards): what Jupyter shows inline."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=80)
    finally:
        plt.close(fig)
    return buf.getvalue()


def png_data_uri(image: Image.Image | str | Path) -> str:
    """A PIL image, or an image file, as a PNG data URI, so that a page opens from disk with no
    network (the report, the clean page). A file is decoded and encoded again, never copied as
    bytes: a run folder's `loss.png` that links to some other file cannot carry that file's
    contents into a page meant to be shared."""
    buf = io.BytesIO()
    (open_rgb(image) if isinstance(image, (str, Path)) else image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plot_cams(results, ncols: int = 3, style: Style = Style()):
    """A matplotlib grid: for each result, its picture | the overlay, titled with the predicted
    class and probability (and the map's target when it is not the prediction)."""
    n = len(results)
    if not n:
        raise CamkitError("no images to show")
    rows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(rows, 2 * ncols, figsize=(3.2 * ncols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, r in enumerate(results):
        a, b = axes[i // ncols, 2 * (i % ncols)], axes[i // ncols, 2 * (i % ncols) + 1]
        picture = picture_of(r, style.max_side)
        a.imshow(picture)
        b.imshow(overlay(picture, r.map, style, r.grid)[1])
        target = r.classes[r.target]
        a.set_title(f"{r.pred} {r.prob:.0%}" + (f" (map: {target})" if target != r.pred else ""), fontsize=9, loc="left")
    fig.tight_layout()
    return returned(fig)


def plot_top_losses(by_pred, by_truth, losses: list[float], style: Style = Style()):
    """One row per image: the picture | map of the predicted class | map of the actual class."""
    fig, axes = plt.subplots(len(by_pred), 3, figsize=(7.5, 2.6 * len(by_pred)), squeeze=False)
    for row, (p, t, loss) in zip(axes, zip(by_pred, by_truth, losses)):
        row[0].imshow(p.picture)
        row[0].set_title(f"predicted {p.pred} ({p.prob:.0%}), actual {t.classes[t.target]}, loss {loss:.2f}",
                         fontsize=8, loc="left")
        row[1].imshow(overlay(p.picture, p.map, style, p.grid)[1])
        row[1].set_title(f"why {p.pred}", fontsize=8)
        row[2].imshow(overlay(t.picture, t.map, style, t.grid)[1])
        row[2].set_title(f"evidence for {t.classes[t.target]}", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return returned(fig)


def to_numpy(cam_map: Tensor) -> np.ndarray:
    """A map as a float32 array (what the .npy files hold)."""
    return cam_map.detach().float().cpu().numpy()

