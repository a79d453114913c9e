"""camkit.train.verdict: a training verdict from the numbers every run keeps, exact on hand-made cases."""

from __future__ import annotations

import math

import pytest

from camkit.train.verdict import Verdict, confusion_matrix, judge


def rows(train: list[float], valid: list[float]) -> list[dict]:
    return [{"epoch": i, "phase": "all", "train_loss": t, "valid_loss": v} for i, (t, v) in enumerate(zip(train, valid))]


GOOD = rows([1.2, 0.8, 0.5, 0.3], [0.9, 0.6, 0.45, 0.4])
CLASSES = ["cats", "dogs"]


def codes(v: Verdict) -> list[str]:
    return [f.code for f in v.findings]


def test_a_model_that_learnt_is_ok():
    v = judge([[14, 2], [1, 11]], CLASSES, GOOD, [64, 48], pretrained=True)
    assert v.status == "ok" and v.usable and v.findings == ()
    assert v.accuracy == round(25 / 28, 4) and v.baseline == round(16 / 28, 4) and v.baseline_class == "cats"
    assert v.headline.startswith("usable: accuracy 89% on 28 held-out images")


def test_worse_than_always_answering_the_larger_class_is_unusable():
    """The issue's case: accuracy 0.43 where always answering the larger class gives 0.57."""
    v = judge([[6, 10], [6, 6]], CLASSES, GOOD, [64, 48], pretrained=True)
    assert v.status == "unusable" and not v.usable and codes(v)[0] == "below_baseline"
    assert v.accuracy == round(12 / 28, 4) and v.baseline == round(16 / 28, 4)
    assert "not better than always answering 'cats' (57%)" in v.headline


def test_a_few_points_above_the_baseline_is_a_warning():
    v = judge([[14, 2], [7, 5]], CLASSES, GOOD, [64, 48], pretrained=True)   # 19/28 = 68 % vs 57 %
    assert v.status == "warning" and "near_baseline" in codes(v) and v.usable


def test_an_exploded_validation_loss_is_unusable():
    """The issue's run: valid loss 6 -> 15,172 -> 32.5 while the train loss rose."""
    history = rows([1.44, 2.0, 3.79], [6.0, 15172.0, 32.5])
    v = judge([[16, 0], [11, 1]], CLASSES, history, [64, 44])
    assert v.status == "unusable"
    assert codes(v) == ["near_baseline", "unstable", "not_learning", "low_recall:dogs", "few_images"]
    assert "exploded to 1.52e+04 in epoch 2" in v.findings[1].message
    assert v.findings[2].message == "the training loss did not fall (1.44 -> 3.79)"


def test_a_final_validation_loss_ten_times_its_best_is_divergence():
    history = rows([1.0, 0.7, 0.5, 0.4], [0.5, 0.45, 3.0, 6.0])
    v = judge([[14, 2], [1, 11]], CLASSES, history, [64, 48], pretrained=True)
    assert "diverged" in codes(v) and v.status == "unusable"


def test_a_spike_not_recovered_from_is_a_warning():
    history = rows([1.0, 0.7, 0.5, 0.4], [0.6, 9.0, 1.5, 1.2])
    v = judge([[14, 2], [1, 11]], CLASSES, history, [64, 48], pretrained=True)
    assert codes(v) == ["unstable"] and v.status == "warning"
    assert v.findings[0].message == "the validation loss exploded to 9 in epoch 2 and ended at 1.2, above its best (0.6)"


def test_a_spike_fully_recovered_from_is_not_held_against_the_model():
    """One-cycle's peak learning rate: the loss spikes mid-training and ends at its best."""
    history = rows([1.0, 0.7, 0.5, 0.4], [0.6, 9.0, 0.5, 0.45])
    v = judge([[14, 2], [1, 11]], CLASSES, history, [64, 48], pretrained=True)
    assert v.status == "ok" and codes(v) == []


def test_small_losses_do_not_count_as_explosions():
    """0.01 -> 0.2 is 20x, but both are good losses (below ln 2)."""
    history = rows([0.3, 0.1, 0.05, 0.02], [0.05, 0.01, 0.2, 0.15])
    v = judge([[16, 0], [0, 12]], CLASSES, history, [64, 48], pretrained=True)
    assert "diverged" not in codes(v) and "unstable" not in codes(v)


def test_overfitting_is_named():
    history = rows([1.0, 0.6, 0.3, 0.1], [0.5, 0.4, 0.7, 0.9])
    v = judge([[14, 2], [1, 11]], CLASSES, history, [64, 48], pretrained=True)
    assert codes(v) == ["overfitting"] and "rose from 0.4 (epoch 2) to 0.9" in v.findings[0].message


def test_a_class_rarely_recognised_is_named_and_listed():
    v = judge([[40, 0], [6, 4]], CLASSES, GOOD, [160, 40], pretrained=True)
    assert v.low_recall_classes() == ["dogs"] and "only 4 of 10 held-out images" in v.findings[-1].message


@pytest.mark.parametrize("pretrained,counts,flagged", [(False, [40, 40], True), (False, [60, 60], False),
                                                        (True, [9, 60], True), (True, [12, 60], False)])
def test_few_training_images_per_class_are_named(pretrained, counts, flagged):
    v = judge([[14, 2], [1, 11]], CLASSES, GOOD, counts, pretrained=pretrained)
    assert ("few_images" in codes(v)) == flagged


def test_no_held_out_image_is_unusable():
    v = judge([[0, 0], [0, 0]], CLASSES, GOOD, [3, 3])
    assert v.status == "unusable" and codes(v)[0] == "no_validation"


def test_the_verdict_survives_json_and_a_malformed_one_reads_as_none():
    v = judge([[6, 10], [6, 6]], CLASSES, GOOD, [64, 48])
    assert Verdict.from_json(v.to_json()) == v
    assert Verdict.from_json({"status": "great"}) is None and Verdict.from_json([1]) is None
    bad = {**v.to_json(), "status": "splendid"}
    assert Verdict.from_json(bad) is None


def test_non_finite_losses_are_ignored_not_trusted():
    history = rows([1.0, math.nan, 0.5], [0.6, math.inf, 0.4])
    v = judge([[14, 2], [1, 11]], CLASSES, history, [64, 48], pretrained=True)
    assert "diverged" not in codes(v)


def test_the_confusion_matrix_counts_actual_by_predicted_and_train_still_exports_it():
    import torch

    import camkit.train.loop

    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 1, 0, 1, 2, 2])
    cm = confusion_matrix(preds, targets, 3).tolist()
    assert cm == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]  # row: actual, column: predicted; class 3 never seen
    assert confusion_matrix(torch.tensor([1]), torch.tensor([1]), 3).tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert camkit.train.loop.confusion_matrix is confusion_matrix
