"""Faithfulness metrics on hand-built maps and a hand-built model, with values worked out by hand."""

import math

import pytest
import torch
from torch import nn

from camkit.faithfulness.metrics import _auc, deletion_insertion, point_in_box, pointing_game


def sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


class TopLeftModel(nn.Module):
    """logits = [4 * x[0, 0, 0], 0]: only the top-left pixel matters, P(class 0) = sigmoid(4 x00)."""

    def forward(self, x):
        a = 4 * x[:, 0, 0, 0]
        return torch.stack([a, torch.zeros_like(a)], 1)


X = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])          # (1, 1, 2, 2)
TOP_LEFT_FIRST = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # the map ranks the top-left pixel first
TOP_LEFT_LAST = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])   # ... and last


@pytest.mark.parametrize("xy,box,inside", [
    ((0, 0), (0, 0, 1, 1), True), ((1, 0), (0, 0, 1, 1), False), ((0, 1), (0, 0, 1, 1), False),
    ((5, 7), (5, 7, 9, 9), True), ((8, 8), (5, 7, 9, 9), True), ((9, 8), (5, 7, 9, 9), False),
])
def test_point_in_box_is_half_open(xy, box, inside):
    assert point_in_box(xy, box) is inside


def test_pointing_game_is_the_fraction_of_hits():
    pairs = [((1, 1), (0, 0, 2, 2)), ((3, 3), (0, 0, 2, 2)), ((0, 0), (0, 0, 1, 1))]
    assert pointing_game(pairs) == pytest.approx(2 / 3)
    assert math.isnan(pointing_game([]))


def test_auc_is_the_trapezoid_rule_on_unit_interval():
    curves = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 1.0], [1.0, 1.0, 1.0]])
    assert _auc(curves).tolist() == pytest.approx([0.25, 0.5, 1.0])


def test_deletion_curve_drops_at_once_when_the_map_ranks_the_evidence_first():
    model, target = TopLeftModel(), torch.tensor([0])
    d_first, _, curve_first, _ = deletion_insertion(model, X, TOP_LEFT_FIRST, target, steps=4, blur_kernel=3)
    d_last, _, curve_last, _ = deletion_insertion(model, X, TOP_LEFT_LAST, target, steps=4, blur_kernel=3)
    s4 = sig(4)
    assert curve_first[0].tolist() == pytest.approx([s4, 0.5, 0.5, 0.5, 0.5])
    assert curve_last[0].tolist() == pytest.approx([s4, s4, s4, s4, 0.5])
    assert float(d_first) == pytest.approx(((s4 + 0.5) / 2 + 1.5) / 4)
    assert float(d_last) == pytest.approx((3 * s4 + (s4 + 0.5) / 2) / 4)


def test_insertion_curve_rises_at_once_when_the_map_ranks_the_evidence_first():
    """The start is a 3x3 replicate-padded box blur: the top-left pixel becomes 4/9."""
    model, target = TopLeftModel(), torch.tensor([0])
    _, i_first, _, curve_first = deletion_insertion(model, X, TOP_LEFT_FIRST, target, steps=4, blur_kernel=3)
    _, i_last, _, curve_last = deletion_insertion(model, X, TOP_LEFT_LAST, target, steps=4, blur_kernel=3)
    blurred, s4 = sig(16 / 9), sig(4)
    assert curve_first[0].tolist() == pytest.approx([blurred, s4, s4, s4, s4])
    assert curve_last[0].tolist() == pytest.approx([blurred, blurred, blurred, blurred, s4])
    assert float(i_first) == pytest.approx(((blurred + s4) / 2 + 3 * s4) / 4)
    assert float(i_last) == pytest.approx((3 * blurred + (blurred + s4) / 2) / 4)


def test_the_run_level_names_moved_to_evaluate_still_import_from_metrics():
    """`from camkit.faithfulness.metrics import evaluate_run` (the path before camkit.evaluate) gives the
    same objects; a name neither module has is still an AttributeError."""
    import camkit.evaluate
    import camkit.faithfulness.metrics
    from camkit.faithfulness.metrics import (DEFAULT_METHODS, evaluate, evaluate_run, rank_methods, read_boxes,
                                             run_images)

    moved = (DEFAULT_METHODS, evaluate, evaluate_run, rank_methods, read_boxes, run_images)
    assert moved == tuple(getattr(camkit.evaluate, n) for n in ("DEFAULT_METHODS", "evaluate", "evaluate_run",
                                                                "rank_methods", "read_boxes", "run_images"))
    with pytest.raises(AttributeError, match="has no attribute 'cam_eval'"):
        camkit.faithfulness.metrics.cam_eval  # noqa: B018 - new in camkit.evaluate, never in metrics


# ---------------------------------------------------------------- ROAD's imputation, by hand

def test_imputed_pixel_is_the_weighted_mean_of_its_eight_neighbours():
    """Centre of a 3x3 image whose only non-zero pixel is a corner: weight 1/12 of a total 1."""
    from camkit.faithfulness.metrics import impute_linear

    x = torch.tensor([[[1.0, 0, 0], [0, 99, 0], [0, 0, 0]]])
    removed = torch.tensor([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    out = impute_linear(x, removed, noise=0)
    assert float(out[0, 1, 1]) == pytest.approx(1 / 12)
    assert torch.equal(out[~removed[None]], x[~removed[None]])


def test_a_corner_pixel_averages_only_the_neighbours_inside_the_image():
    """(6/6 + 12/6 + 24/12) / (1/6 + 1/6 + 1/12) = 5 / (5/12) = 12."""
    from camkit.faithfulness.metrics import impute_linear

    x = torch.tensor([[[-7.0, 6, 0], [12, 24, 0], [0, 0, 0]]])
    removed = torch.zeros(3, 3, dtype=torch.bool)
    removed[0, 0] = True
    assert float(impute_linear(x, removed, noise=0)[0, 0, 0]) == pytest.approx(12.0)


def test_removed_neighbours_are_solved_jointly():
    """A 1x4 row [2, ?, ?, 8]: v1 = (2 + v2) / 2 and v2 = (v1 + 8) / 2, so v1 = 4 and v2 = 6."""
    from camkit.faithfulness.metrics import impute_linear

    x = torch.tensor([[[2.0, -1, -1, 8]]])
    out = impute_linear(x, torch.tensor([[False, True, True, False]]), noise=0)
    assert out[0, 0].tolist() == pytest.approx([2, 4, 6, 8])


def test_imputation_equals_pytorch_grad_cams_noisy_linear_imputer():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    from camkit.faithfulness.metrics import impute_linear

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 7, 9, generator=g)
    removed = torch.rand(7, 9, generator=g) < 0.4
    theirs = NoisyLinearImputer(noise=0.0)(x, (~removed).float())
    assert torch.allclose(impute_linear(x, removed, noise=0), theirs, atol=1e-5)


def tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


def test_road_equals_pytorch_grad_cams_road_combined(monkeypatch):
    """Same model, maps and targets, both imputers without noise: the same per-image score."""
    from pytorch_grad_cam.metrics import road as anchor
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from camkit.faithfulness.metrics import road

    monkeypatch.setattr(anchor.NoisyLinearImputer.__init__, "__defaults__", (0.0, anchor.neighbors_weights))
    model, g = tiny_classifier(), torch.Generator().manual_seed(1)
    x, maps = torch.randn(2, 3, 12, 12, generator=g), torch.rand(2, 12, 12, generator=g)
    target = torch.tensor([0, 2])
    theirs = anchor.ROADCombined()(x, maps.numpy(), [ClassifierOutputSoftmaxTarget(int(t)) for t in target], model)
    ours = road(model, x, maps, target, noise=0)
    assert ours.combined.tolist() == pytest.approx(theirs.tolist(), abs=1e-5)
    assert ours.combined.tolist() == pytest.approx(((ours.lerf - ours.morf) / 2).tolist())


def test_retained_confidence_is_the_morf_probability_over_the_base_one():
    from camkit.faithfulness.metrics import RoadResult, retained_confidence

    z = torch.zeros(2)
    r = RoadResult(z, z, z, torch.tensor([0.8, 0.5]), torch.tensor([[0.7, 0.4], [0.6, 0.1]]))
    assert retained_confidence(r, percentiles=(20, 80), at=80).tolist() == pytest.approx([0.5, 0.2])
    assert retained_confidence(r, percentiles=(20, 80), at=20).tolist() == pytest.approx([0.875, 1.0])  # clamped


# ---------------------------------------------------------------- Average Drop / Increase in Confidence

@pytest.mark.parametrize("maps,target,drop,increase", [
    (TOP_LEFT_FIRST, 0, 0.0, 0.0),                              # x * map keeps the top-left pixel: O = Y
    (TOP_LEFT_LAST, 0, (sig(4) - 0.5) / sig(4), 0.0),            # it zeroes it: O = sigmoid(0) = 1/2
    (TOP_LEFT_LAST, 1, 0.0, 1.0),                               # class 1 rises from 1 - sigmoid(4) to 1/2
])
def test_average_drop_and_increase_by_hand(maps, target, drop, increase):
    from camkit.faithfulness.metrics import average_drop_increase

    d, i = average_drop_increase(TopLeftModel(), X, maps, torch.tensor([target]))
    assert float(d) == pytest.approx(drop) and float(i) == increase


# ---------------------------------------------------------------- sanity check

@pytest.mark.parametrize("b,expected", [
    ([0.0, 1, 2, 3], 1.0), ([3.0, 2, 1, 0], -1.0), ([5.0, 5, 5, 5], 0.0),
    ([0.0, 0, 1, 2], math.sqrt(0.9)),                            # ties share rank 1.5
])
def test_rank_correlation_by_hand(b, expected):
    from camkit.faithfulness.metrics import rank_correlation

    a = torch.tensor([[[0.0, 1], [2, 3]]])
    assert float(rank_correlation(a, torch.tensor(b).view(1, 2, 2))) == pytest.approx(expected)


def cam_net() -> nn.Sequential:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()))
    return nn.Sequential(body, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2, bias=False)))


def test_randomised_copies_cascade_head_then_last_stage():
    from camkit.faithfulness.metrics import randomised_copies

    model = cam_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (n1, head), (n2, stage) = randomised_copies(model)
    assert (n1, n2) == ("head", "last stage")
    w = "1.2.weight"
    assert not torch.equal(head.state_dict()[w], before[w]) and torch.equal(stage.state_dict()[w], head.state_dict()[w])
    for k in ("0.0.weight", "0.1.weight", "0.3.0.weight"):
        assert torch.equal(head.state_dict()[k], before[k])
    assert torch.equal(stage.state_dict()["0.0.weight"], before["0.0.weight"])
    assert not torch.equal(stage.state_dict()["0.3.0.weight"], before["0.3.0.weight"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model itself is untouched


# ---------------------------------------------------------------- the batched path equals the per-image one

@torch.no_grad()
def _reference_deletion_insertion(model, x, maps, target, steps):
    """The per-step loop `deletion_insertion` replaced: two forward passes per step."""
    import torch.nn.functional as F

    from camkit.core.geometry import upsample

    b, _, h, w = x.shape
    order = upsample(maps, (h, w)).flatten(1).argsort(1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w).expand(b, -1))
    rank = rank.view(b, 1, h, w)
    blurred = F.avg_pool2d(F.pad(x, (5,) * 4, mode="replicate"), 11, stride=1)
    curves = ([], [])
    for s in range(steps + 1):
        top = rank < round(s * h * w / steps)
        for (source, base), curve in zip(((x, torch.zeros_like(x)), (blurred, x)), curves):
            curve.append(model(torch.where(top, base, source)).softmax(1)[torch.arange(b), target])
    return [_auc(torch.stack(cv, 1)).tolist() for cv in curves]


@torch.no_grad()
def _reference_road(model, x, maps, target, percentiles, seed=0):
    """The per-image, per-percentile loop `road` replaced: one imputation solve per image."""
    from camkit.core.geometry import upsample
    from camkit.faithfulness.metrics import impute_linear

    b, _, h, w = x.shape
    saliency, idx = upsample(maps, (h, w)), torch.arange(b)
    base = model(x).softmax(1)[idx, target]
    g, scores = torch.Generator().manual_seed(seed), []
    for sign in (1.0, -1.0):
        probs = []
        for p in percentiles:
            ranked = sign * saliency
            removed = ranked >= torch.quantile(ranked.flatten(1), p / 100, dim=1)[:, None, None]
            batch = torch.stack([impute_linear(x[i], removed[i], 0.01, g) for i in range(b)])
            probs.append(model(batch).softmax(1)[idx, target])
        scores.append(torch.stack(probs, 1).mean(1) - base)
    return scores  # morf, lerf per image


METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam")


def test_the_batched_trust_rows_equal_the_per_image_path_for_every_method():
    """Five methods' maps of six 20 px images through `trust_rows_many` (perturbations of all
    steps forwarded together through the BatchNorm-folded twin, ROAD's solves block-diagonal
    and shared between equal masks, identical maps scored once) give the numbers of the
    per-image, per-step, per-method loops within float tolerance."""
    from camkit.cam import make_cam
    from camkit.faithfulness.metrics import randomised_copies, rank_correlation, trust_rows_many

    model, g = cam_net(), torch.Generator().manual_seed(3)
    x, target = torch.randn(6, 3, 20, 20, generator=g), torch.tensor([0, 1, 0, 1, 1, 0])
    maps = {m: make_cam(m, model)(x, target.tolist()) for m in METHODS}
    copies = randomised_copies(model)
    rows, twins = trust_rows_many(model, maps, copies, x, target, steps=5, percentiles=(20, 50, 80))
    assert twins == {"gradcam": "cam", "xgradcam": "cam"}   # a GAP -> Linear head: found, not assumed
    assert not torch.allclose(maps["layercam"], maps["cam"], atol=1e-3)
    for m in METHODS:
        deletion, insertion = _reference_deletion_insertion(model, x, maps[m], target, steps=5)
        morf, lerf = _reference_road(model, x, maps[m], target, (20, 50, 80))
        assert len(rows[m]) == 6
        assert [r["deletion_auc"] for r in rows[m]] == pytest.approx(deletion, abs=1e-5), m
        assert [r["insertion_auc"] for r in rows[m]] == pytest.approx(insertion, abs=1e-5), m
        assert [r["road_morf"] for r in rows[m]] == pytest.approx(morf.tolist(), abs=1e-5), m
        assert [r["road_lerf"] for r in rows[m]] == pytest.approx(lerf.tolist(), abs=1e-5), m
        sims = [rank_correlation(maps[m], make_cam(m, c)(x, target)) for _, c in copies]
        assert [r["sanity_head"] for r in rows[m]] == pytest.approx(sims[0].tolist(), abs=1e-6), m
        assert [r["sanity_last_stage"] for r in rows[m]] == pytest.approx(sims[1].tolist(), abs=1e-6), m
        drop, increase = _reference_average_drop(model, x, maps[m], target)
        assert [r["average_drop"] for r in rows[m]] == pytest.approx(drop, abs=1e-5), m
        assert [r["increase_in_confidence"] for r in rows[m]] == increase, m
        assert [r["correct"] for r in rows[m]] == (model(x).argmax(1) == target).tolist()


@torch.no_grad()
def _reference_average_drop(model, x, maps, target):
    from camkit.core.geometry import upsample

    m = upsample(maps, x.shape[-2:])[:, None]
    lo, hi = m.amin((1, 2, 3), keepdim=True), m.amax((1, 2, 3), keepdim=True)
    y, o = (model(v).softmax(1)[torch.arange(len(x)), target] for v in (x, x * (m - lo) / (hi - lo).clamp_min(1e-8)))
    return ((y - o).clamp_min(0) / y).tolist(), (o > y).float().tolist()


def test_imputer_solves_each_distinct_mask_once():
    """Two identical masks of the same image share one solve; the joint block-diagonal solve of
    several images equals one solve per image."""
    from camkit.faithfulness.metrics import Imputer, impute_linear

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 9, 11, generator=g)
    masks = [(i, (torch.rand(9, 11, generator=g) < 0.5).numpy()) for i in range(3)]
    imputer = Imputer(x)
    solved = imputer.solve(masks + [masks[1]])
    assert len(imputer.kept) == 3 and solved[3] is solved[1]
    for (i, m), v in zip(masks, solved):
        alone = impute_linear(x[i], torch.from_numpy(m), noise=0)
        assert torch.allclose(alone[:, torch.from_numpy(m)], v, atol=1e-6)
