"""Every camkit CAM method that pytorch-grad-cam or torchcam also implements, on the same
model, layer, input and target: the maps agree (correlation >= 0.99; exact where the maths
is). Maps are compared at the input's resolution for pytorch-grad-cam (which upsamples) and
at the layer's for torchcam. Random weights: the identities do not need training."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camkit.cam import METHODS, ISCAM, SSCAM, ScoreCAM, SmoothGradCAMpp, make_cam, normalise

pgc = pytest.importorskip("pytorch_grad_cam")
torchcam = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

warnings.filterwarnings("ignore")
TARGETS = [1, 3, 0]


def tiny_cnn() -> nn.Sequential:
    """A small CNN (16 channels at 8 x 8 for 32 px): score / ablation methods run K passes."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    for m in net.modules():  # non-trivial BatchNorm statistics, so FullGrad's folded bias is tested
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


@pytest.fixture(scope="module")
def resnet():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


@pytest.fixture(scope="module")
def x128():
    torch.manual_seed(1)
    return torch.randn(3, 3, 128, 128)


@pytest.fixture(scope="module")
def x32():
    torch.manual_seed(2)
    return torch.randn(3, 3, 32, 32)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """The smallest per-image Pearson correlation of two batches of maps."""
    a, b = torch.as_tensor(a).flatten(1).double(), torch.as_tensor(b).flatten(1).double()
    return min(float(torch.corrcoef(torch.stack([u, v]))[0, 1]) for u, v in zip(a, b))


def up(maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def run_pgc(cls, model, layer, x, targets=TARGETS, **call):
    with cls(model=model, target_layers=[layer]) as extractor:
        return torch.from_numpy(extractor(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets],
                                          **call))


def run_torchcam(cls, model, layer, x, targets=TARGETS, seed=None, **kw):
    with cls(model, target_layer=layer, input_shape=tuple(x.shape[1:]), **kw) as extractor:
        if seed is not None:
            torch.manual_seed(seed)
        with torch.enable_grad():
            scores = model(x)
        return normalise(F.relu(extractor(targets, scores, normalized=False)[0].detach()))


PGC = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
       "hirescam": "HiResCAM"}
EIGEN = {"eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM"}
TORCHCAM = {"gradcam": "GradCAM", "gradcam++": "GradCAMpp", "xgradcam": "XGradCAM", "layercam": "LayerCAM"}


@pytest.mark.parametrize("method", list(PGC))
def test_gradient_methods_match_pytorch_grad_cam_on_resnet18_layer4(resnet, x128, method):
    theirs = run_pgc(getattr(pgc, PGC[method]), resnet, resnet.layer4, x128)
    ours = make_cam(method, resnet, "layer4")(x128, TARGETS)
    # Grad-CAM++: pytorch-grad-cam adds 1e-6 to alpha's denominator, the size of g^2 on a random net
    assert corr(up(ours, x128), theirs) >= (0.998 if method == "gradcam++" else 0.99999)


def best_sign(model, method, layer, x, **kw) -> torch.Tensor:
    """camkit's signed map and its negative, ReLU'd: pytorch-grad-cam keeps whatever sign its
    SVD gives the first component; camkit makes the larger end positive."""
    s = make_cam(method, model, layer, signed=True, **kw)(x, TARGETS)
    return torch.stack([up(F.relu(s), x), up(F.relu(-s), x)], 1)


def corr_up_to_sign(both: torch.Tensor, theirs: torch.Tensor) -> float:
    return min(max(corr(b[None, 0], t[None]), corr(b[None, 1], t[None])) for b, t in zip(both, theirs))


@pytest.mark.parametrize("method", list(EIGEN))
def test_eigen_methods_match_pytorch_grad_cam_up_to_the_components_sign(resnet, x128, method):
    theirs = run_pgc(getattr(pgc, EIGEN[method]), resnet, resnet.layer4, x128)
    assert corr_up_to_sign(best_sign(resnet, method, "layer4", x128), theirs) >= 0.99999


def test_eigen_sign_makes_the_larger_end_positive(resnet, x128):
    s = make_cam("eigencam", resnet, "layer4", signed=True)(x128)
    assert (s.flatten(1).max(1).values >= s.flatten(1).min(1).values.abs()).all()


@pytest.mark.parametrize("method", list(TORCHCAM))
def test_gradient_methods_match_torchcam_on_resnet18_layer4(resnet, x128, method):
    theirs = run_torchcam(getattr(torchcam, TORCHCAM[method]), resnet, "layer4", x128)
    ours = make_cam(method, resnet, "layer4")(x128, TARGETS)
    if method == "gradcam++":  # torchcam sums A_ab g_ab^3 where the paper (eq. 19) has sum(A) g_ij^3
        assert corr(ours, theirs) >= 0.98
    else:
        assert torch.allclose(ours, theirs, atol=1e-4)


def test_exact_cam_matches_torchcam(x32):
    net = tiny_cnn()
    net[-1].bias = None  # exact CAM's head: GAP -> Linear without bias
    model = nn.Sequential(net[:9], net[9:])
    theirs = run_torchcam(torchcam.CAM, model, "0", x32, fc_layer=model[1][2])
    assert torch.allclose(make_cam("cam", model)(x32, TARGETS), theirs, atol=1e-5)


@pytest.mark.parametrize("peer", ["pytorch-grad-cam", "torchcam"])
def test_scorecam_reading_logits_matches_both_peers(x32, peer):
    net = tiny_cnn()
    ours = ScoreCAM(net, "8", score="logit")(x32, TARGETS)
    if peer == "torchcam":
        assert corr(ours, run_torchcam(torchcam.ScoreCAM, net, "8", x32)) >= 0.9999
    else:
        assert corr(up(ours, x32), run_pgc(pgc.ScoreCAM, net, net[8], x32)) >= 0.99


def test_scorecam_default_follows_the_paper_softmax_probability(x32):
    """The paper (§3.2, Algorithm 1): the target's post-softmax probability on each masked input,
    then a softmax over channels; computed here by hand, one channel at a time."""
    net = tiny_cnn()
    net[-1].weight.data *= 30  # logits of a trained net's size: probabilities and logits part ways
    with torch.no_grad():
        acts = net[:9](x32)
        maps = []
        for i, t in enumerate(TARGETS):
            s = []
            for k in range(acts.shape[1]):
                a = acts[i, k]
                m = F.interpolate(((a - a.min()) / (a.max() - a.min() + 1e-8))[None, None], size=(32, 32),
                                  mode="bilinear", align_corners=False)
                s.append(net(x32[i:i + 1] * m).softmax(1)[0, t])
            maps.append((torch.stack(s).softmax(0)[:, None, None] * acts[i]).sum(0))
    expected = normalise(F.relu(torch.stack(maps)))
    ours = ScoreCAM(net, "8")(x32, TARGETS)
    assert torch.allclose(ours, expected, atol=1e-5)
    assert not torch.allclose(ours, ScoreCAM(net, "8", score="logit")(x32, TARGETS), atol=1e-3)


def test_sscam_matches_torchcam_with_the_same_noise(x32):
    net = tiny_cnn()
    theirs = run_torchcam(torchcam.SSCAM, net, "8", x32, seed=5, num_samples=4)
    ours = SSCAM(net, "8", score="logit")
    ours.num_samples = 4
    torch.manual_seed(5)
    assert corr(ours(x32, TARGETS), theirs) >= 0.9999


def test_iscam_matches_torchcam_with_its_cumulative_scaling(x32):
    """torchcam scales the masks by the running sum of i/N; the paper (camkit's default) by i/N."""
    net = tiny_cnn()
    theirs = run_torchcam(torchcam.ISCAM, net, "8", x32, num_samples=3)
    ours = ISCAM(net, "8", score="logit")
    ours.num_samples, ours.cumulative = 3, True
    assert corr(ours(x32, TARGETS), theirs) >= 0.9999
    ours.cumulative = False
    assert ours.coefficients() == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_smooth_gradcampp_matches_torchcam_with_the_same_noise(resnet, x128):
    theirs = run_torchcam(torchcam.SmoothGradCAMpp, resnet, "layer4", x128, seed=7)
    torch.manual_seed(7)
    ours = SmoothGradCAMpp(resnet, "layer4")(x128, TARGETS)
    assert corr(ours, theirs) >= 0.99  # the Grad-CAM++ alpha differs as above


def test_ablationcam_matches_pytorch_grad_cam(x32):
    net = tiny_cnn()
    theirs = run_pgc(pgc.AblationCAM, net, net[8], x32)  # layer 8 is a ReLU: ablating to 0 as the paper
    assert corr(up(make_cam("ablationcam", net, "8")(x32, TARGETS), x32), theirs) >= 0.9999


def test_fullgrad_matches_pytorch_grad_cam(x32):
    net = tiny_cnn()
    theirs = run_pgc(pgc.FullGrad, net, net[8], x32)
    assert corr(make_cam("fullgrad", net)(x32, TARGETS), theirs) >= 0.999


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_eigen_smooth_matches_pytorch_grad_cam(resnet, x128, x32, method):
    if method == "scorecam":
        model, layer, x, kw = tiny_cnn(), "8", x32, {"score": "logit"}
        theirs = run_pgc(pgc.ScoreCAM, model, model[8], x, eigen_smooth=True)
    else:
        model, layer, x, kw = resnet, "layer4", x128, {}
        theirs = run_pgc(pgc.GradCAM, model, model.layer4, x, eigen_smooth=True)
    both = best_sign(model, method, layer, x, eigen_smooth=True, **kw)
    assert corr_up_to_sign(both, theirs) >= (0.99 if method == "scorecam" else 0.99999)


def test_aug_smooth_matches_pytorch_grad_cam(resnet, x128):
    theirs = run_pgc(pgc.GradCAM, resnet, resnet.layer4, x128, aug_smooth=True)
    ours = make_cam("gradcam", resnet, "layer4", aug_smooth=True)(x128, TARGETS)
    assert corr(up(ours, x128), theirs) >= 0.99


def test_layer_fusion_matches_torchcam_on_footprints_and_differs_by_the_grid_only(resnet, x128, monkeypatch):
    """torchcam resizes layer4's map onto layer3's cells as footprints; camkit lays it where its
    cells look (camkit.core.geometry): the same fusion once camkit is given footprints too."""
    import camkit.cam.base as base

    with torchcam.GradCAM(resnet, target_layer=["layer3", "layer4"], input_shape=(3, 128, 128)) as extractor:
        with torch.enable_grad():
            scores = resnet(x128)
        maps = extractor(TARGETS, scores)
        theirs = normalise(extractor.fuse_cams(maps))
    ours = make_cam("gradcam", resnet, "layer3,layer4")(x128, TARGETS)
    assert ours.shape == (3, 8, 8) and not torch.allclose(ours, theirs, atol=1e-2)
    monkeypatch.setattr(base, "probe", lambda *a, **k: {})
    footprints = make_cam("gradcam", resnet, "layer3,layer4")(x128, TARGETS)
    assert torch.allclose(footprints, theirs, atol=1e-4)


def test_every_method_is_cross_checked_or_has_no_peer():
    checked = set(PGC) | set(EIGEN) | set(TORCHCAM) | {"cam", "scorecam", "sscam", "iscam", "smoothgradcam++", "ablationcam",
                                          "fullgrad"}
    assert set(METHODS) == checked
    assert all(METHODS[m].peers for m in METHODS)
