"""The metrics' forward passes in onnxruntime: used when its logits agree with torch's, else torch."""

import pytest
import torch
from torch import nn

import camkit.faithfulness.scoring
from camkit.faithfulness.metrics import ORT_MIN_IMAGES, scoring_model
from camkit.faithfulness.scoring import ort_scorer

pytest.importorskip("onnxruntime")


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).eval()


def is_ort(score) -> bool:
    return score.__qualname__.startswith("ort_scorer.")


def test_the_onnx_scorer_gives_torchs_logits_at_any_batch():
    model, x = tiny(), torch.randn(ORT_MIN_IMAGES, 3, 12, 12)
    score = scoring_model(model, x)
    assert is_ort(score)
    assert not is_ort(scoring_model(model, x[:ORT_MIN_IMAGES - 1]))   # too few images to pay for the export
    batch = torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(score(batch), model(batch), atol=1e-5)


def test_without_onnxruntime_or_on_a_mismatch_the_torch_twin_scores(monkeypatch):
    model, x = tiny(), torch.randn(ORT_MIN_IMAGES, 3, 12, 12)
    monkeypatch.setattr(camkit.faithfulness.scoring, "onnx_available", lambda: False)
    assert ort_scorer(model, x) is None
    monkeypatch.undo()
    monkeypatch.setattr(camkit.faithfulness.scoring, "PARITY", -1.0)   # no graph can agree: the parity check refuses it
    assert ort_scorer(model, x) is None
    score = scoring_model(model, x)
    assert not is_ort(score)
    with torch.no_grad():
        assert torch.allclose(score(x), model(x), atol=1e-5)
