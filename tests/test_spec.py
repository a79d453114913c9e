"""camkit.train.spec: options checked once, before any image is read; adaptive batch size and epochs."""

from __future__ import annotations

import pytest

from camkit.errors import CamkitError
from camkit.train.spec import ModelSpec, TrainSpec, adaptive_bs, adaptive_epochs, parse_lr


@pytest.mark.parametrize("options,message", [
    ({"arch": "resnet-34"}, "did you mean resnet34"),
    ({"arch": "resnet18", "head": "CAM"}, "--head must be one of cam, fastai"),
    ({"arch": "resnet18", "stride": 12}, "--stride must be 32, 16 or 8"),
    ({"arch": "densenet121", "stride": 16}, "torchvision ResNet-family"),
    ({"arch": "resnet18", "stride": 32, "dilate": True}, "give --stride 16 or 8"),
    ({"arch": "resnet18", "bs": 1}, "--bs must be at least 2"),
    ({"arch": "resnet18", "epochs": 0}, "--epochs must be at least 1"),
    ({"arch": "resnet18", "valid_pct": 1.0}, "--valid-pct must be between 0 and 1"),
    ({"arch": "resnet18", "lr": "fast"}, "--lr must be a positive number or 'auto'"),
    ({"arch": "resnet18", "lr": -1}, "--lr must be a positive number"),
    ({"arch": "resnet18", "recipe": "magic"}, "--recipe must be one of"),
    ({"arch": "resnet18", "aug": "lots"}, "--aug must be one of"),
    ({"arch": "resnet18", "precision": "fp8"}, "--precision must be one of"),
    ({"arch": "resnet18", "weights": "no/such.pth"}, "weights file 'no/such.pth' does not exist"),
])
def test_a_bad_option_is_one_sentence(options, message):
    with pytest.raises(CamkitError, match=message):
        TrainSpec.parse(**options)


def test_bad_options_fail_before_the_data_folder_is_read(tmp_path, monkeypatch):
    import camkit.train.loop as train_module

    monkeypatch.setattr(train_module, "load_folder", lambda *a, **k: pytest.fail("decoded before checking"))
    with pytest.raises(CamkitError, match="did you mean resnet34"):
        train_module.train(tmp_path / "missing", arch="resnet-34", out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_resolved_values_are_recorded_once():
    spec = TrainSpec.parse("resnet18", lr="auto", recipe="auto", pretrained=False)
    assert spec.model == ModelSpec("resnet18", "torchvision", "cam", 16, False)
    assert spec.recipe == "counterfactual" and spec.lr == "auto"
    resolved = spec.for_data(108, pretrained=False)
    assert (resolved.bs, resolved.epochs) == (16, 40)
    assert resolved.to_json()["stride"] == 16 and resolved.to_json()["bs"] == 16


@pytest.mark.parametrize("options,dilate", [({"pretrained": False}, False), ({}, True), ({"pretrained": True}, True),
                                            ({"pretrained": False, "dilate": True}, True),
                                            ({"dilate": False}, False), ({"stride": 32}, False)])
def test_a_lower_stride_is_made_by_dilation_when_pretrained_weights_are_loaded(options, dilate, tmp_path):
    assert TrainSpec.parse("resnet18", **options).model.dilate is dilate


def test_explicit_options_win_over_the_adaptive_ones():
    spec = TrainSpec.parse("resnet18", bs=64, epochs=3).for_data(108, pretrained=False)
    assert (spec.bs, spec.epochs) == (64, 3)


@pytest.mark.parametrize("n_train,bs", [(5, 8), (60, 8), (96, 16), (108, 16), (200, 32), (400, 64), (10_000, 64)])
def test_adaptive_batch_size_gives_enough_steps_an_epoch(n_train, bs):
    assert adaptive_bs(n_train) == bs
    assert bs == 8 or n_train // bs >= 6


@pytest.mark.parametrize("n_train,bs,pretrained,epochs", [
    (108, 16, False, 40), (108, 16, True, 10), (10_000, 64, False, 4), (10_000, 64, True, 4), (5, 8, False, 60)])
def test_adaptive_epochs_give_enough_steps_in_all(n_train, bs, pretrained, epochs):
    assert adaptive_epochs(n_train, bs, pretrained) == epochs


def test_lr_accepts_a_number_written_as_text():
    assert parse_lr("3e-3") == 0.003 and parse_lr("auto") == "auto" and parse_lr(None) is None


def test_a_timm_arch_resolves_to_timm_and_keeps_its_native_stride():
    pytest.importorskip("timm")
    spec = ModelSpec.parse("resnet10t")
    assert (spec.source, spec.stride) == ("timm", 32)


def test_dilated_stride_16_features_equal_stride_32_on_the_even_cells():
    """Atrous convolution keeps what each kernel sees: the stride-32 features are the dilated
    stride-16 ones at every other cell, exactly (BasicBlocks, which torchvision's own
    replace_stride_with_dilation refuses)."""
    import torch

    from camkit.train.models import build_model

    torch.manual_seed(0)
    native = build_model("resnet18", 2, pretrained=False, stride=32).model.eval()
    dilated = build_model("resnet18", 2, pretrained=False, stride=16, dilate=True).model.eval()
    skipped = build_model("resnet18", 2, pretrained=False, stride=16, dilate=False).model.eval()
    dilated.load_state_dict(native.state_dict())
    skipped.load_state_dict(native.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b, c = native[0](x), dilated[0](x), skipped[0](x)
    assert a.shape[-1] == 2 and b.shape[-1] == 4
    assert torch.equal(b[..., ::2, ::2], a)
    assert not torch.allclose(c[..., ::2, ::2], a)   # without dilation kernels see a smaller neighbourhood
