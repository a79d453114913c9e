"""Where a map's cells look (camkit.core.geometry): the probed grid against each cell's true receptive
field, the upsampling it drives, and its use by the extractors, the drawings and the metrics."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camkit.core.geometry import Grid, grid_for, probe, regrid, upsample


def receptive_centre(body: nn.Module, size: int, cell: int) -> float:
    """The row at the middle of the input rows that cell (cell, cell) of `body`'s output depends
    on: the support of its gradient, with all weights made positive so no ReLU hides a pixel."""
    body = body.eval()
    with torch.no_grad():
        for p in body.parameters():
            p.abs_()
        for m in body.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1)
    x = torch.rand(1, 3, size, size, requires_grad=True)
    body(x)[0, :, cell, cell].sum().backward()
    rows = torch.nonzero(x.grad[0].abs().sum((0, 2)) > 0).flatten()
    return (int(rows.min()) + int(rows.max())) / 2


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_a_resnets_cells_are_centred_where_their_receptive_fields_are(stride):
    from camkit.train.models import build_model

    body = build_model("resnet18", 2, pretrained=False, stride=stride).model[0]
    size = 640  # large enough that the middle cell's receptive field (435 px at stride 32) fits inside
    grid = grid_for(probe(body, (size, size)), (size // stride,) * 2, (size, size))
    cell = size // stride // 2
    assert grid.stride == (stride, stride)
    assert grid.stride[0] * cell + grid.offset[0] == receptive_centre(body, size, cell) == stride * cell
    # what plain bilinear resizing assumes instead: half a cell further down and right
    assert Grid.footprint((size // stride,) * 2, (size, size)).offset[0] - grid.offset[0] == (stride - 1) / 2


def test_patch_grids_and_unknown_ops_keep_their_footprints():
    patchify = nn.Sequential(nn.Conv2d(3, 8, 16, stride=16), nn.ReLU())
    grid = grid_for(probe(patchify, (64, 64)), (4, 4), (64, 64))
    assert grid == Grid.footprint((4, 4), (64, 64)) == Grid((16, 16), (7.5, 7.5), (64, 64))
    pooled = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(4))  # no kernel to read
    assert grid_for(probe(pooled, (64, 64)), (4, 4), (64, 64)) == Grid.footprint((4, 4), (64, 64))


def test_a_model_that_cannot_run_on_the_meta_device_gets_footprints():
    class Numpy(nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.numpy())

    assert probe(Numpy(), (8, 8)) == {}


def test_upsampling_on_a_footprint_grid_is_torchs_bilinear_resize():
    maps = torch.rand(2, 4, 5)
    expected = F.interpolate(maps[:, None], size=(32, 40), mode="bilinear", align_corners=False)[:, 0]
    assert torch.equal(upsample(maps, (32, 40)), expected)
    # the general path (a grid of another size, resized) lands on the same values
    half = Grid.footprint((4, 5), (16, 20))
    assert torch.allclose(upsample(maps, (32, 40), half), expected, atol=1e-5)


def test_upsampling_puts_each_cells_value_on_its_centre_and_holds_it_beyond_the_edge():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    up = upsample(maps, (64, 64), Grid((32, 32), (0, 0), (64, 64)))[0]
    assert up[0, 0] == 0 and up[0, 32] == 1 and up[32, 0] == 2 and up[32, 32] == 3
    assert up[0, 16] == pytest.approx(0.5) and up[16, 16] == pytest.approx(1.5)
    assert torch.all(up[40:, 40:] == 3)               # beyond the last centre: the edge value
    assert int(up.argmax()) == 32 * 64 + 32           # the peak sits on the cell's centre, not 15.5 px on


def test_resizing_a_grid_follows_a_bilinear_resize_of_the_image():
    grid = Grid((32, 32), (0, 0), (128, 128))
    big = grid.resized((256, 512))
    assert big.stride == (64, 128) and big.offset == (0.5, 1.5)   # pixel v of the copy: (v + .5) n / n' - .5
    assert grid.resized((128, 128)) is grid


def test_regridding_a_coarse_map_onto_a_finer_layers_cells():
    coarse = torch.tensor([[[0.0, 4.0]]]).expand(1, 2, 2)
    out = regrid(coarse, Grid((32, 32), (0, 0), (64, 64)), Grid((16, 16), (0, 0), (64, 64)), (4, 4))
    assert out[0, 0].tolist() == pytest.approx([0.0, 2.0, 4.0, 4.0])


def test_extractors_report_their_maps_grid_and_fused_layers_are_aligned_on_it():
    from camkit.cam import make_cam
    from camkit.train.models import build_model

    model = build_model("resnet18", 2, pretrained=False).model.eval()
    x = torch.randn(1, 3, 64, 64)
    one = make_cam("gradcam", model)
    one(x)
    assert one.grid == Grid((32, 32), (0, 0), (64, 64))
    fused = make_cam("gradcam", model, layer="0.6,0.7")
    assert fused(x).shape == (1, 4, 4) and fused.grid == Grid((16, 16), (0, 0), (64, 64))


def test_a_peak_and_a_drawing_use_the_maps_grid():
    import numpy as np
    from PIL import Image

    from camkit.core.render import Style, overlay, peak_xy

    cam_map = torch.zeros(2, 2)
    cam_map[1, 1] = 1.0
    grid = Grid((32, 32), (0, 0), (64, 64))
    assert peak_xy(cam_map, 64, 64, 64, grid) == [32, 32]       # on the cell's centre
    assert peak_xy(cam_map, 64, 64, 64) == [48, 48]             # footprints: 15.5 px further on
    heat, _ = overlay(Image.new("RGB", (128, 128)), cam_map, Style(colormap="gray"), grid)
    grey = np.asarray(heat)[..., 0].astype(int)
    assert grey[65:, 65:].min() == grey.max() == 255            # full from the centre (64.5 px in the copy) on
    assert grey[32, 32] < 100 and grey[0, 0] == 0


def test_a_peak_moves_between_cell_centres_toward_the_stronger_neighbour():
    from camkit.core.render import peak_xy, vertex

    assert vertex(torch.tensor([0.0, 1.0, 0.0]), 1) == 0                # symmetric: on the centre
    assert vertex(torch.tensor([0.0, 1.0, 1.0]), 1) == 0.5               # a plateau's middle: half a cell
    assert vertex(torch.tensor([0.5, 1.0, 0.0]), 1) == pytest.approx(-1 / 6)  # 0.5 (a - c) / (a - 2b + c): left
    assert vertex(torch.tensor([1.0, 0.5]), 0) == 0                      # an edge cell stays
    cam_map = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.6], [0.0, 0.0, 0.0]])
    grid = Grid((16, 16), (0, 0), (48, 48))
    x, y = peak_xy(cam_map, 48, 48, 48, grid)
    assert y == 16 and 16 < x < 24                                       # right of the centre, less than half a cell
    assert x == int(16 * (1 + 0.5 * (0 - 0.6) / (0 - 2 + 0.6)) + 0.5)


def test_aug_smoothed_maps_mix_flipped_passes_and_sit_on_their_footprints():
    from camkit.cam import make_cam
    from camkit.train.models import build_model

    model = build_model("resnet18", 2, pretrained=False).model.eval()
    extractor = make_cam("gradcam", model, aug_smooth=True)
    extractor(torch.randn(1, 3, 64, 64))
    assert extractor.grid == Grid.footprint((2, 2), (64, 64))
