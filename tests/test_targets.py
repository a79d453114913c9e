"""Callable targets: a class, the contrast of two classes (exact for the CAM head), a sigmoid
output, a regression output, pytorch-grad-cam style callables; signed maps."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camkit.cam import CAM, GradCAM, ScoreCAM, make_cam, normalise, scale_signed
from camkit.cam.targets import ClassTarget, ContrastTarget, FunctionTarget, RegressionTarget, SigmoidTarget, as_target
from camkit.errors import CamkitError
from camkit.train.models import cam_head


def cam_model(n_out: int = 3) -> nn.Sequential:
    """A small CNN body (12 channels, 8 x 8 at 32 px) with camkit's CAM head."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(12, 12, 3, stride=2, padding=1), nn.ReLU())
    return nn.Sequential(body, cam_head(12, n_out)).eval()


@pytest.fixture(scope="module")
def model():
    return cam_model()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(3)
    return torch.randn(4, 3, 32, 32)


def contrast_by_hand(model, x, a, b):
    with torch.no_grad():
        acts = model[0](x)
    w = model[1][2].weight
    return ((w[a] - w[b])[None, :, None, None] * acts).sum(1)


def test_contrast_exact_cam_is_the_difference_of_the_head_weights(model, x):
    by_hand = contrast_by_hand(model, x, 0, 2)
    assert torch.allclose(CAM(model)(x, ContrastTarget(0, 2)), normalise(F.relu(by_hand)), atol=1e-5)
    assert torch.allclose(CAM(model, signed=True)(x, ContrastTarget(0, 2)), scale_signed(by_hand), atol=1e-5)


def test_contrast_gradient_is_the_exact_map_for_the_cam_head(model, x):
    """d(z_a - z_b)/dA_k = (w_ak - w_bk) / hw: Grad-CAM of the contrast = the exact contrast map."""
    t = ContrastTarget(1, 0)
    assert torch.allclose(GradCAM(model, signed=True)(x, t), CAM(model, signed=True)(x, t), atol=1e-5)


def test_swapping_the_contrast_negates_the_signed_map(model, x):
    ab = CAM(model, signed=True)(x, ContrastTarget(0, 1))
    ba = CAM(model, signed=True)(x, ContrastTarget(1, 0))
    assert torch.allclose(ab, -ba, atol=1e-6) and ab.min() < 0 < ab.max()


def test_default_contrast_is_prediction_against_the_runner_up(model, x):
    extractor = CAM(model)
    extractor(x, ContrastTarget())
    logits = extractor.logits
    assert torch.equal(extractor.target.index, logits.argmax(1))
    assert torch.equal(extractor.target.other, logits.topk(2, 1).indices[:, 1])
    assert torch.equal(extractor.targets, logits.argmax(1))


def test_sigmoid_target_only_rescales_the_gradient(model, x):
    """d sigmoid(z_c)/dA = sigmoid'(z_c) dz_c/dA, a positive factor per image: the same map."""
    assert torch.allclose(GradCAM(model)(x, SigmoidTarget(2)), GradCAM(model)(x, 2), atol=1e-5)


def test_exact_cam_refuses_a_non_linear_target(model, x):
    with pytest.raises(CamkitError, match="exact CAM explains a class or a contrast.*gradcam"):
        CAM(model)(x, SigmoidTarget(1))


def test_regression_output_is_explained_by_its_value():
    """A one-output regression model: the map of that output, never an argmax."""
    reg = cam_model(n_out=1)
    x = torch.randn(2, 3, 32, 32)
    w = reg[1][2].weight[0]
    with torch.no_grad():
        acts = reg[0](x)
    assert torch.allclose(CAM(reg, signed=True)(x, RegressionTarget()),
                          scale_signed((w[None, :, None, None] * acts).sum(1)), atol=1e-5)
    assert torch.allclose(GradCAM(reg)(x, RegressionTarget()), CAM(reg)(x, RegressionTarget()), atol=1e-5)


def test_pytorch_grad_cam_style_callables_are_accepted(model, x):
    pgc_targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    per_image = [pgc_targets.ClassifierOutputTarget(c) for c in (2, 0, 1, 1)]
    assert torch.allclose(GradCAM(model)(x, per_image), GradCAM(model)(x, [2, 0, 1, 1]), atol=1e-6)
    assert torch.allclose(GradCAM(model)(x, lambda out: out[:, 1]), GradCAM(model)(x, 1), atol=1e-6)
    assert isinstance(as_target(lambda out: out[:, 1]), FunctionTarget)


def test_scorecam_reads_a_contrast_and_a_callable_per_masked_row(model, x):
    contrast = ScoreCAM(model, score="logit")(x[:2], ContrastTarget(0, 1))
    assert contrast.shape == (2, 8, 8) and torch.isfinite(contrast).all()
    assert torch.allclose(ScoreCAM(model, score="logit")(x[:2], lambda out: out[:, 2]),
                          ScoreCAM(model, score="logit")(x[:2], 2), atol=1e-6)


@pytest.mark.parametrize("target, message", [
    (ContrastTarget(1, 1), "two different classes"),
    (ClassTarget(7), "out of range 0..2"),
    (ContrastTarget(0, 9), "contrast class index out of range"),
    ([0, 1], "2 targets for a batch of 4 images"),
])
def test_bad_targets_are_one_clear_error(model, x, target, message):
    with pytest.raises(CamkitError, match=message):
        GradCAM(model)(x, target)


def test_signed_map_keeps_evidence_against(model, x):
    signed = make_cam("gradcam", model, signed=True)(x, ContrastTarget(0, 1))
    assert signed.min() >= -1 and signed.max() <= 1
    assert torch.allclose(signed.flatten(1).abs().max(1).values, torch.ones(len(x)), atol=1e-5)
