"""Where a feature map's cells look in the image: the grid geometry every upsampled map needs.

A CNN with "same" padding (kernel k, padding (k - 1) / 2, stride 2: ResNet, VGG's convs,
EfficientNet, MobileNet) maps output index i onto input index 2i, so after total stride s
cell i of a map is centred on input pixel s * i: the receptive field of cell 0 is centred on
pixel 0, not on pixel (s - 1) / 2. Plain bilinear resizing of an h x w map to the image
(`align_corners=False`, what torchcam and pytorch-grad-cam do) puts cell i at the centre of
its footprint, s * i + (s - 1) / 2, which draws every ResNet heatmap (s - 1) / 2 pixels too far
down and right: 15.5 px at stride 32 (7 % of a 224-px image), enough to move the peak of a map
off a flat object (tests/test_geometry.py measures the true centre by the receptive field's
gradient support). Patch grids (ViT, Swin, ConvNeXt stems: kernel = stride, no padding) are
centred on their footprints, and there the two agree.

`probe(model, size)` finds the geometry of every resolution the model's convolutions and
poolings produce, from their kernel / stride / padding / dilation, in one forward pass on the
meta device (no arithmetic, no memory, the weights and BatchNorm statistics untouched). Per
axis, input index j at image pixel S j + O and an op (k, s, p, d) give output index i at
S (s i + (k - 1) d / 2 - p) + O. A resolution no convolution or pooling produced (a transformer's
patch merging, a token grid) gets its footprint, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Pair = tuple[float, float]


@dataclass(frozen=True)
class Grid:
    """Cell (i, j) of a map is centred on pixel (stride[0] i + offset[0], stride[1] j + offset[1])
    of an image of `size` (height, width) pixels."""
    stride: Pair
    offset: Pair
    size: tuple[int, int]

    @classmethod
    def footprint(cls, cells: tuple[int, int], size: tuple[int, int]) -> "Grid":
        """Each cell centred on its share of the image (what plain bilinear resizing assumes)."""
        s = tuple(n / c for n, c in zip(size, cells))
        return cls(s, tuple((v - 1) / 2 for v in s), tuple(size))

    def resized(self, size: tuple[int, int]) -> "Grid":
        """The same grid on a copy of the image resized (bilinearly) to `size`: pixel v of the
        copy sits at (v + 0.5) n / n' - 0.5 of the original."""
        if tuple(size) == self.size:
            return self
        r = tuple(new / old for new, old in zip(size, self.size))
        return Grid(tuple(s * f for s, f in zip(self.stride, r)),
                    tuple((o + 0.5) * f - 0.5 for o, f in zip(self.offset, r)), tuple(size))


def upsample(maps: Tensor, size: tuple[int, int], grid: Grid | None = None) -> Tensor:
    """(B, h, w) maps -> (B, H, W), bilinear between cell centres as `grid` places them (resized
    to `size` when it describes another size), constant beyond the outermost centres. Without a
    grid, cells sit on their footprints (torch's `align_corners=False` resize)."""
    size = tuple(size)
    grid = grid.resized(size) if grid is not None else None
    if grid is None or grid == Grid.footprint(tuple(maps.shape[-2:]), size):
        return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return sample(maps, grid, torch.arange(size[0], dtype=torch.float32), torch.arange(size[1], dtype=torch.float32))


def regrid(maps: Tensor, grid: Grid, onto: Grid, cells: tuple[int, int]) -> Tensor:
    """Maps on `grid` read at the cell centres of another grid of the same image (`cells` of
    them): a coarse layer's map laid on a finer layer's cells before the two are fused."""
    return sample(maps, grid, *(onto.stride[a] * torch.arange(cells[a], dtype=torch.float32) + onto.offset[a]
                                for a in (0, 1)))


def sample(maps: Tensor, grid: Grid, rows: Tensor, cols: Tensor) -> Tensor:
    """(B, h, w) maps on `grid`, read bilinearly at image pixel coordinates `rows` x `cols`
    -> (B, len(rows), len(cols)); beyond the outermost cell centres the edge value holds."""
    h, w = maps.shape[-2:]
    ys = _normalised((rows - grid.offset[0]) / grid.stride[0], h)
    xs = _normalised((cols - grid.offset[1]) / grid.stride[1], w)
    where = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).to(maps.device)
    return F.grid_sample(maps[:, None].float(), where.expand(len(maps), -1, -1, -1), mode="bilinear",
                         padding_mode="border", align_corners=True)[:, 0]


def _normalised(index: Tensor, cells: int) -> Tensor:
    """Fractional cell indices -> grid_sample's [-1, 1] (align_corners: -1 and 1 are the first and
    last cell centres)."""
    return torch.zeros_like(index) if cells == 1 else 2 * index / (cells - 1) - 1


# ---------------------------------------------------------------- finding the geometry

_OPS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _compose(before: tuple[Pair, Pair], op: nn.Module) -> tuple[Pair, Pair] | None:
    """Stride and offset after `op`, given those of its input; None for padding given as a
    string ('same' on a stride-1 conv keeps the geometry, as resolution unchanged already does)."""
    if isinstance(op.padding, str):
        return None
    (stride, offset) = before
    k, s, p = _pair(op.kernel_size), _pair(op.stride), _pair(op.padding)
    d = _pair(getattr(op, "dilation", 1))
    return (tuple(S * si for S, si in zip(stride, s)),
            tuple(S * ((ki - 1) * di / 2 - pi) + O for S, O, ki, di, pi in zip(stride, offset, k, d, p)))


def probe(model: nn.Module, size: tuple[int, int], channels: int = 3) -> dict[tuple[int, int], Grid]:
    """The grid of every resolution a Conv2d / MaxPool2d / AvgPool2d of `model` produces for an
    input of `size`, the first op to reach a resolution defining it (a residual shortcut reaches
    it the same way). Run on the meta device; {} when the model cannot run there."""
    from torch.func import functional_call

    table: dict[tuple[int, int], tuple[Pair, Pair]] = {tuple(size): ((1.0, 1.0), (0.0, 0.0))}

    def hook(op, inputs, out):
        x = inputs[0] if inputs else None
        if not (isinstance(x, Tensor) and isinstance(out, Tensor) and x.dim() == 4 and out.dim() == 4):
            return
        src, dst = tuple(x.shape[-2:]), tuple(out.shape[-2:])
        if src in table and dst not in table:
            after = _compose(table[src], op)
            if after is not None:
                table[dst] = after

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _OPS)]
    meta = {k: torch.empty_like(v, device="meta") for k, v in chain(model.named_parameters(), model.named_buffers())}
    try:
        with torch.no_grad():
            functional_call(model, meta, (torch.empty(1, channels, *size, device="meta"),))
    except Exception:  # an op without a meta kernel: every map keeps its footprint
        return {}
    finally:
        for h in handles:
            h.remove()
    return {res: Grid(stride, offset, tuple(size)) for res, (stride, offset) in table.items() if res != tuple(size)}


def grid_for(table: dict[tuple[int, int], Grid], cells: tuple[int, int], size: tuple[int, int]) -> Grid:
    """The probed grid of a map with `cells`, or its footprint when no op produced that resolution."""
    return table.get(tuple(cells)) or Grid.footprint(tuple(cells), tuple(size))
