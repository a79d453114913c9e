"""Faithfulness metrics on hand-built maps and a hand-built model, with values worked out by hand."""

import math

import pytest
import torch
from torch import nn

from camkit.metrics import _auc, deletion_insertion, point_in_box, pointing_game


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


def test_evaluate_scores_the_exact_cam_of_a_run(tiny_run, canvas_dir):
    """On the tiny run's held-out canvases: every number in range, one row per method, and the
    exact CAM equals Grad-CAM for a GAP -> Linear head, so their pointing games are equal."""
    from camkit.metrics import evaluate

    res = evaluate(tiny_run, canvas_dir / "boxes.json", ["cam", "gradcam"], valid_only=True, steps=4)
    assert set(res) == {"cam", "gradcam"} and res["cam"]["images"] == 16
    assert res["cam"]["pointing_game"] == res["gradcam"]["pointing_game"]
    for r in res.values():
        assert 0 <= r["pointing_game"] <= 1 and 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1
