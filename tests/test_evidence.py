"""Training recipes (camkit.train.evidence): the batch transforms and the loss by hand, and a tiny
training under a recipe end to end."""

import json
import math

import pytest
import torch

from camkit.errors import CamkitError
from camkit.train.evidence import (RECIPES, EvidenceLoss, get_recipe, make_batch, mosaic, patch_shuffle, random_erase,
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
    from camkit.train.evidence import with_recipe

    loaders = object()
    assert recipe_loss("plain") is None and get_recipe("plain").plain
    assert with_recipe(loaders, "plain", 2) is loaders   # the default recipe changes nothing in training
    with pytest.raises(CamkitError, match="--recipe must be one of"):
        get_recipe("magic")


def test_training_under_a_recipe_saves_an_ordinary_run(canvas_dir, tmp_path):
    from camkit.train.run import load
    from camkit.train.loop import train

    out = tmp_path / "run"
    r = train(canvas_dir, arch="resnet18", epochs=1, size=32, bs=16, out=out, pretrained=False, stride=8,
              aug="flip", quiet=True, recipe="negatives")
    assert r.recipe == "negatives" and math.isfinite(r.valid_loss) and 0 <= r.valid_accuracy <= 1
    assert json.loads((out / "model.json").read_text())["summary"]["recipe"] == "negatives"
    loaded = load(out)
    assert loaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)   # still K logits: the neither logit is fixed


def test_an_unknown_recipe_fails_before_anything_is_written(canvas_dir, tmp_path):
    from camkit.train.loop import train

    with pytest.raises(CamkitError, match="--recipe"):
        train(canvas_dir, out=tmp_path / "run", recipe="magic")
    assert not (tmp_path / "run").exists()


def test_a_negatives_folder_is_read_squished_and_skips_unreadable_files(tmp_path):
    from PIL import Image

    from camkit.train.evidence import load_negatives

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
    from camkit.train.evidence import load_negatives

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


# ---------------------------------------------------------------- counterfactual negatives

def test_neither_probs_are_a_softmax_with_a_fixed_zero_logit():
    from camkit.train.evidence import neither_probs

    p = neither_probs(torch.tensor([[0.0, 0.0], [math.log(2.0), 0.0]]))
    assert p.flatten().tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 4, 1 / 4])


def test_erasing_evidence_replaces_the_maps_top_area_by_the_image_rolled_by_half():
    from camkit.train.evidence import erase_evidence

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0], maps[1, 3, 2] = 1.0, 1.0                      # one hot cell per image
    out = erase_evidence(x, maps, area=0.25)
    rolled = torch.roll(x, shifts=(4, 4), dims=(-2, -1))
    changed = (out != x).any(1)
    for k in range(2):
        assert int(changed[k].sum()) == 16                          # exactly a quarter of 64 pixels
        assert torch.equal(out[k][:, changed[k]], rolled[k][:, changed[k]])
    assert changed[0, 0, 0] and not changed[0, 7, 7]                # where the map was hot, not elsewhere
    assert changed[1, 7, 5] and not changed[1, 0, 0]


class _Stub:
    """What a fastai callback reads of its Learner during one training step."""

    def __init__(self, x, y, pred, training=True):
        self.xb, self.yb, self.pred, self.training = (x,), (y,), pred, training


def test_counterfactuals_are_erased_copies_whose_target_is_neither_by_how_much_the_erasure_cost():
    from camkit.train.evidence import Counterfactuals, neither_probs

    cb = Counterfactuals(fraction=0.5, area=0.25)
    cb.fc = torch.nn.Linear(3, 2, bias=False)
    x1, y1 = torch.randn(4, 3, 8, 8), torch.eye(2)[torch.tensor([0, 1, 0, 1])]
    pred1 = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])
    cb.learn = _Stub(x1, y1, pred1)
    cb.before_batch()
    cb.features = torch.randn(4, 3, 2, 2)
    cb.after_pred()                                             # step 1: nothing pending, two made
    erased, cls, before = cb.pending
    assert erased.shape == (2, 3, 8, 8) and before.tolist() == pytest.approx(
        [float(neither_probs(pred1)[i, c]) for i, c in zip(_rows(erased, x1), cls.tolist())])
    x2, y2 = torch.randn(4, 3, 8, 8), torch.eye(2)[torch.tensor([1, 1, 0, 0])]
    cb.learn = _Stub(x2, y2, None)
    cb.before_batch()
    assert cb.learn.xb[0].shape == (6, 3, 8, 8) and torch.equal(cb.learn.xb[0][4:], erased)
    after_logits = torch.stack([torch.full((2,), -5.0), 10 * (2 * torch.eye(2)[cls[1]] - 1)])  # gone / kept
    cb.learn.pred = torch.cat([torch.zeros(4, 2), after_logits])
    cb.features = torch.randn(6, 3, 2, 2)
    cb.after_pred()
    targets = cb.learn.yb[0]
    assert targets.shape == (6, 2) and torch.equal(targets[:4], y2)
    u = (before - neither_probs(after_logits)[torch.arange(2), cls]).clamp(0, 1)
    assert u[0] > 0.5 and u[1] == 0
    assert targets[4:].flatten().tolist() == pytest.approx((torch.eye(2)[cls] * (1 - u)[:, None]).flatten().tolist())


def _rows(erased: torch.Tensor, x: torch.Tensor) -> list[int]:
    """Which image of `x` each erased copy came from (the pixels left in place match)."""
    return [int(((x - e).abs() < 1e-6).flatten(1).sum(1).argmax()) for e in erased]


def test_counterfactuals_do_nothing_during_validation():
    from camkit.train.evidence import Counterfactuals

    cb = Counterfactuals(fraction=0.5, area=0.25)
    cb.learn = _Stub(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), torch.zeros(2, 2), training=False)
    cb.pending = (torch.zeros(1, 3, 8, 8), torch.tensor([0]), torch.tensor([0.5]))
    cb.before_batch()
    cb.after_pred()
    assert cb.learn.xb[0].shape == (2, 3, 8, 8) and cb.learn.yb[0].tolist() == [0, 1]


def test_training_under_the_counterfactual_recipe_saves_an_ordinary_run_and_removes_its_hook(canvas_dir,
                                                                                           tmp_path, monkeypatch):
    import importlib

    module = importlib.import_module("camkit.train.loop")
    made, original = [], module.recipe_callbacks
    monkeypatch.setattr(module, "recipe_callbacks", lambda *a, **k: made.extend(original(*a, **k)) or made)
    r = module.train(canvas_dir, arch="resnet18", epochs=1, size=32, bs=16, out=tmp_path / "run", pretrained=False,
              stride=8, aug="flip", quiet=True, recipe="counterfactual")
    assert r.recipe == "counterfactual" and math.isfinite(r.valid_loss)
    assert len(made) == 1 and made[0].handle is None and made[0].pending is None


def test_the_counterfactual_recipe_needs_the_cam_head(canvas_dir, tmp_path):
    from camkit.train.loop import train

    with pytest.raises(CamkitError, match="needs camkit's CAM head"):
        train(canvas_dir, arch="resnet18", epochs=1, size=32, bs=16, out=tmp_path / "run", pretrained=False,
              head="fastai", quiet=True, recipe="counterfactual")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("head,expected", [("cam", "counterfactual"), ("fastai", "plain")])
def test_the_auto_recipe_is_counterfactual_for_the_cam_head_only(head, expected):
    assert get_recipe("auto", head).name == expected
    assert get_recipe("mosaic", head).name == "mosaic"   # a named recipe is kept whatever the head
