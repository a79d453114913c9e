"""Training recipes (camkit.evidence): the batch transforms and the loss by hand, and a tiny
training under a recipe end to end."""

import json
import math

import pytest
import torch

from camkit.errors import CamkitError
from camkit.evidence import (RECIPES, EvidenceLoss, get_recipe, make_batch, mosaic, patch_shuffle, random_erase,
                             recipe_loss)


def tiles(x: torch.Tensor, t: int) -> list[list[float]]:
    """The t x t tiles of one (1, H, W) image as sorted flat lists."""
    _, h, w = x.shape
    corners = [(r, c) for r in range(0, h - t + 1, t) for c in range(0, w - t + 1, t)]
    return sorted(x[:, r:r + t, c:c + t].flatten().tolist() for r, c in corners)


def test_patch_shuffle_permutes_whole_tiles_and_leaves_the_remainder():
    x = torch.arange(25.0).view(1, 1, 5, 5)
    out = patch_shuffle(x, 2, torch.Generator().manual_seed(3))
    assert tiles(out[0, :, :4, :4], 2) == tiles(x[0, :, :4, :4], 2)
    assert torch.equal(out[0, 0, 4], x[0, 0, 4]) and torch.equal(out[0, 0, :, 4], x[0, 0, :, 4])
    assert not torch.equal(out, x)  # seed 3 moves at least one tile


def test_patch_shuffle_rejects_a_grid_finer_than_the_image():
    with pytest.raises(CamkitError, match="too small"):
        patch_shuffle(torch.zeros(1, 3, 3, 3), 4, torch.Generator())


@pytest.mark.parametrize("union", [False, True])
def test_mosaic_tiles_four_half_size_images_and_shares_their_targets(union):
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()  # image k is constant k
    y = torch.eye(2)[torch.tensor([0, 0, 1, 1])]
    g = torch.Generator().manual_seed(0)
    pick = torch.randint(0, 4, (1, 4), generator=torch.Generator().manual_seed(0))[0]
    out, t = mosaic(x, y, 1, g, union=union)
    quads = [out[0, 0, :4, :4], out[0, 0, :4, 4:], out[0, 0, 4:, :4], out[0, 0, 4:, 4:]]
    assert [float(q.mean()) for q in quads] == pytest.approx(pick.float().tolist())
    assert all(float(q.std()) < 1e-6 for q in quads)
    present = y[pick]
    assert t[0].tolist() == pytest.approx((present.amax(0) if union else present.mean(0)).tolist())


def test_random_erasing_replaces_one_rectangle_per_image_with_probability_one():
    x = torch.zeros(6, 3, 20, 20)
    out = random_erase(x, 1.0, torch.Generator().manual_seed(0))
    for k in range(6):
        changed = (out[k] != 0).any(0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert 0.02 * 400 * 0.5 <= area <= 0.33 * 400 * 1.5   # one rectangle of 2 .. 33 % (rounded)
    assert torch.equal(random_erase(x, 0.0, torch.Generator()), x)


def test_a_recipe_batch_appends_negatives_with_zero_targets_and_mosaics():
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    bx, bt = make_batch(x, y, 2, RECIPES["mosaic"], torch.Generator().manual_seed(0))
    assert bx.shape == (12, 3, 16, 16) and bt.shape == (12, 2)
    assert torch.equal(bx[:8], x) and torch.equal(bt[:8], torch.eye(2)[y])
    assert bt[8:10].abs().sum() == 0                     # two negatives: "neither"
    assert torch.allclose(bt[10:].sum(1), torch.ones(2))  # mosaics: shares of the classes present


def lse(*v: float) -> float:
    return math.log(sum(math.exp(a) for a in v))


@pytest.mark.parametrize("target,expected", [
    ([0.0, 0.0], lse(1, -2, 0)),                                  # a negative: the zero logit should win
    ([1.0, 0.0], lse(1, -2, 0) - 1),                              # -log softmax_a over [1, -2, 0]
    ([0.5, 0.5], lse(1, -2, 0) - 0.5 * (1 - 2)),                  # a mosaic with both classes
])
def test_the_neither_loss_is_cross_entropy_with_a_fixed_zero_logit(target, expected):
    loss = EvidenceLoss("softmax", neither=True)(torch.tensor([[1.0, -2.0]]), torch.tensor([target]))
    assert float(loss) == pytest.approx(expected)


def test_the_bce_loss_sums_per_class_binary_cross_entropy():
    loss = EvidenceLoss("bce", neither=True)(torch.tensor([[1.0, -2.0]]), torch.tensor([[1.0, 0.0]]))
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2)))


def test_class_indices_get_plain_cross_entropy_per_item_when_fastai_asks():
    loss = EvidenceLoss("bce", neither=True, reduction="none")
    out = loss(torch.tensor([[1.0, -2.0], [0.0, 0.0]]), torch.tensor([1, 0]))
    assert out.tolist() == pytest.approx([lse(1, -2) + 2, math.log(2)])


def test_plain_keeps_fastais_loss_and_loaders_and_unknown_recipes_are_errors():
    from camkit.evidence import with_recipe

    loaders = object()
    assert recipe_loss("plain") is None and get_recipe("plain").plain
    assert with_recipe(loaders, "plain", 2) is loaders   # the default recipe changes nothing in training
    with pytest.raises(CamkitError, match="--recipe must be one of"):
        get_recipe("magic")


def test_training_under_a_recipe_saves_an_ordinary_run(canvas_dir, tmp_path):
    from camkit.run import load
    from camkit.train import train

    out = tmp_path / "run"
    r = train(canvas_dir, arch="resnet18", epochs=1, size=32, bs=16, out=out, pretrained=False, stride=8,
              aug="flip", quiet=True, recipe="negatives")
    assert r.recipe == "negatives" and math.isfinite(r.valid_loss) and 0 <= r.valid_accuracy <= 1
    assert json.loads((out / "model.json").read_text())["summary"]["recipe"] == "negatives"
    loaded = load(out)
    assert loaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)   # still K logits: the neither logit is fixed


def test_an_unknown_recipe_fails_before_anything_is_written(canvas_dir, tmp_path):
    from camkit.train import train

    with pytest.raises(CamkitError, match="--recipe"):
        train(canvas_dir, out=tmp_path / "run", recipe="magic")
    assert not (tmp_path / "run").exists()


def test_a_negatives_folder_is_read_squished_and_skips_unreadable_files(tmp_path):
    from PIL import Image

    from camkit.evidence import load_negatives

    (tmp_path / "a").mkdir()
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "a" / "wide.png")
    Image.new("L", (8, 8), 128).save(tmp_path / "grey.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="broken.png"):
        neg = load_negatives(tmp_path, 16)
    assert neg.shape == (2, 3, 16, 16) and neg.dtype == torch.uint8
    assert sorted(int(v) for v in neg[:, 0, 0, 0]) == [128, 255]


@pytest.mark.parametrize("make,message", [(False, "is not a folder"), (True, "holds no readable image")])
def test_a_missing_or_empty_negatives_folder_is_an_error(tmp_path, make, message):
    from camkit.evidence import load_negatives

    folder = tmp_path / "neg"
    if make:
        folder.mkdir()
    with pytest.raises(CamkitError, match=message):
        load_negatives(folder, 16)


def test_extra_negatives_join_the_batch_as_neither_under_a_plain_recipe():
    x, y, extra = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 1, 0]), torch.randn(2, 3, 8, 8)
    bx, bt = make_batch(x, y, 2, RECIPES["plain"], torch.Generator(), extra)
    assert torch.equal(bx[4:], extra) and bt[4:].abs().sum() == 0 and bt.shape == (6, 2)
    assert recipe_loss("plain", negatives=True).neither
