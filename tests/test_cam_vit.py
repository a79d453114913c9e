"""CAM on transformers and channels-last bodies: the target layer found and laid on the patch
grid (ViT / DeiT: prefix tokens dropped; Swin: channels-last to channels-first), every method
runs on a ViT, and camkit's own timm models carry the exact-CAM head over tokens."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camkit.cam import CAM, METHODS, GradCAM, find_layer, first_component, layout_of, make_cam, normalise
from camkit.errors import CamkitError

timm = pytest.importorskip("timm")
warnings.filterwarnings("ignore")


def tiny_vit(**kw) -> nn.Module:
    """A 2-block ViT on 32-px images, 8-px patches (a 4 x 4 grid), 16 channels."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3,
                             **kw).eval()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def test_vit_tiny_at_224_gives_the_14x14_patch_grid_not_the_token_sequence():
    """The issue's example: pytorch-grad-cam's reshape recipe and camkit agree on 14 x 14."""
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3).eval()
    maps = make_cam("gradcam", vit)(torch.randn(1, 3, 224, 224))
    assert maps.shape == (1, 14, 14)


def test_vit_layer_is_the_last_whose_patch_tokens_reach_the_class_token(x):
    """The class token is read after the last block, so its patch tokens have gradient 0; the
    last block's norm1 (pytorch-grad-cam's recommendation) is the last layer that counts."""
    vit = tiny_vit()
    assert find_layer(vit, x) == "blocks.1.norm1"
    assert find_layer(tiny_vit(global_pool="avg", class_token=False), x) == "norm"


def test_vit_gradcam_matches_pytorch_grad_cam_with_its_reshape_transform(x):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    vit = tiny_vit()

    def reshape(t):  # pytorch-grad-cam's README recipe for ViT
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    with pgc.GradCAM(model=vit, target_layers=[vit.blocks[-1].norm1], reshape_transform=reshape) as extractor:
        theirs = torch.from_numpy(extractor(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in (0, 2)]))
    ours = F.interpolate(GradCAM(vit)(x, [0, 2])[:, None], size=(32, 32), mode="bilinear")[:, 0]
    for a, b in zip(ours, theirs):
        assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] >= 0.9999


def test_deit_drops_both_class_and_distillation_tokens():
    assert layout_of((2, 2 + 16, 8), (32, 32), prefix=2).prefix == 2
    deit = timm.create_model("deit_tiny_distilled_patch16_224", img_size=64, num_classes=3).eval()
    assert make_cam("gradcam", deit)(torch.randn(1, 3, 64, 64)).shape == (1, 4, 4)


def test_swin_channels_last_stage_is_read_channels_first():
    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=2, embed_dim=8,
                             depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    name = find_layer(swin, x)
    acts = {}
    handle = dict(swin.named_modules())[name].register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    swin(x)
    handle.remove()
    assert acts["a"].shape[1:3] == (2, 2)  # (B, h, w, C): channels last
    by_hand = normalise(F.relu(first_component(acts["a"].detach().permute(0, 3, 1, 2))))
    assert torch.allclose(make_cam("eigencam", swin, name)(x), by_hand, atol=1e-5)


def test_layer_override_still_works_on_a_vit(x):
    assert make_cam("gradcam", tiny_vit(), "blocks.0")(x).shape == (2, 4, 4)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("cam", "fullgrad")])
def test_every_method_runs_on_a_vit(x, method):
    extractor = make_cam(method, tiny_vit())
    extractor.num_samples = 2  # the noisy methods: two samples are enough to run the code path
    maps = extractor(x, [0, 2])
    assert maps.shape == (2, 4, 4) and torch.isfinite(maps).all()
    assert torch.allclose(maps.flatten(1).max(1).values, torch.ones(2), atol=1e-4)


def test_fullgrad_refuses_a_transformer_and_names_the_alternative(x):
    with pytest.raises(CamkitError, match="fullgrad needs the bias-gradients of every layer.*LayerNorm.*gradcam"):
        make_cam("fullgrad", tiny_vit())


def test_camkit_vit_has_the_exact_cam_head_over_patch_tokens(x):
    """z = W . mean over patch tokens, so CAM = (w_c . token) on the grid and Grad-CAM = CAM / hw."""
    from camkit.train.models import build_model

    model = build_model("vit_tiny_patch16_224", 2, "cam", pretrained=False).model.eval()
    x64 = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model[0].model.forward_features(x64)[:, 1:]
        pred = model(x64).argmax(1)
        z = (tokens.mean(1) @ model[1][2].weight.T)
    assert torch.allclose(model(x64), z, atol=1e-4)
    by_hand = normalise(F.relu((tokens @ model[1][2].weight[pred].T).diagonal(dim1=0, dim2=2).permute(1, 0)
                               .reshape(2, 4, 4)))
    assert torch.allclose(CAM(model)(x64), by_hand, atol=1e-4)
    assert torch.allclose(CAM(model)(x64), GradCAM(model)(x64), atol=1e-4)


def test_an_arch_without_a_spatial_map_asks_for_the_fastai_head():
    from camkit.core.choices import Head
    from camkit.train.models import _timm_body

    class Pooled(nn.Module):
        default_cfg: dict = {}

        def forward_features(self, x):
            return x.mean((2, 3))

    with pytest.raises(CamkitError, match="arch 'pooled' gives no spatial feature map.*--head fastai"):
        _timm_body(Pooled(), "pooled", Head.cam, False)
    assert type(_timm_body(Pooled(), "pooled", Head.fastai, False)).__name__ == "TimmBody"


def test_train_a_timm_vit_then_explain_it_with_exact_cam(canvas_dir, tmp_path):
    """`camkit train --arch vit_tiny_patch16_224`: the CAM head over patch tokens, saved and
    loaded back; `camkit cam` then uses exact CAM on the 2 x 2 patch grid of a 32-px input."""
    from camkit.explain import explain
    from camkit.train.loop import train

    out = tmp_path / "vit"
    train(canvas_dir, arch="vit_tiny_patch16_224", epochs=1, size=32, bs=16, out=out, pretrained=False,
          aug="flip", quiet=True)
    results = explain(out, sorted(canvas_dir.glob("*/*.png"))[:3])
    assert [r.method for r in results] == ["cam"] * 3 and results[0].map.shape == (2, 2)
