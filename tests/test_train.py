import csv
from pathlib import Path
import json
import urllib.error

import pytest
import torch
import numpy as np
from PIL import Image

from camkit.errors import CamkitError
from camkit.train.loop import train
from camkit.train.models import build_model
from camkit.train.run import load, read_valid
from camkit.train.spec import TrainSpec


def test_run_folder_is_complete_and_safe(tiny_run, canvas_dir):
    meta = json.loads((tiny_run / "model.json").read_text())
    assert meta["format"] == "camkit-model/2" and meta["data_root"] == str(canvas_dir.resolve())
    assert meta["arch"] == "resnet18" and meta["head"] == "cam" and meta["stride"] == 8
    assert meta["classes"] == ["bag", "trouser"] and meta["size"] == 32 and meta["complete"] is True
    state = torch.load(tiny_run / "model.pth", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    rows = list(csv.DictReader(open(tiny_run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"train_loss", "valid_loss", "accuracy"} <= set(rows[0])
    for png in ("loss.png", "confusion.png"):
        assert Image.open(tiny_run / png).size[0] > 100
    assert sum(map(sum, meta["confusion"])) == meta["summary"]["n_valid"] == 16


def test_loaded_model_reproduces_saved_validation_predictions(tiny_run):
    loaded = load(tiny_run)
    valid = read_valid(tiny_run)
    x = loaded.preprocess([v.file for v in valid])
    with torch.no_grad():
        probs = loaded.model(x).softmax(1)
    assert [loaded.classes[i] for i in probs.argmax(1)] == [v.pred for v in valid]
    assert probs.max(1).values.tolist() == pytest.approx([v.prob for v in valid], abs=1e-4)


def test_cam_head_is_gap_linear_without_bias():
    model, loaded, _ = build_model("resnet18", 3, "cam", pretrained=False)
    pool, flat, fc = model[1]
    assert isinstance(pool, torch.nn.AdaptiveAvgPool2d) and fc.bias is None and fc.out_features == 3
    assert not loaded


@pytest.mark.parametrize("stride,side", [(32, 2), (16, 4), (8, 8)])
def test_output_stride_sets_map_resolution(stride, side):
    model, _, _ = build_model("resnet18", 2, pretrained=False, stride=stride)
    assert model[0](torch.zeros(1, 3, 64, 64)).shape[-1] == side


def test_offline_default_warns_and_trains_from_scratch(monkeypatch):
    def no_network(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.warns(UserWarning, match="training from scratch"):
        _, loaded, _ = build_model("resnet18", 2, pretrained=None)
    assert not loaded
    with pytest.raises(CamkitError, match="--no-pretrained"):
        build_model("resnet18", 2, pretrained=True)


def test_weights_file_is_loaded_without_unpickling(tmp_path):
    import torchvision

    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model, loaded, _ = build_model("resnet18", 2, weights=tmp_path / "r18.pth")
    assert loaded
    assert torch.equal(model[0][0].weight, source.conv1.weight)
    torch.save({"not": object()}, tmp_path / "evil.pth")
    with pytest.raises(CamkitError, match="not a plain tensor state_dict"):
        build_model("resnet18", 2, weights=tmp_path / "evil.pth")


def test_existing_run_is_not_overwritten_silently(canvas_dir, tiny_run):
    with pytest.raises(CamkitError, match="already holds a run"):
        train(canvas_dir, arch="resnet18", epochs=1, size=32, out=tiny_run, pretrained=False)
    assert json.loads((tiny_run / "model.json").read_text())["complete"]


def _folder(tmp_path, spec):
    for cls, n in spec.items():
        (tmp_path / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(tmp_path / cls / f"{i}.png")
    return tmp_path


@pytest.mark.parametrize("setup,args,message", [
    (lambda p: p / "nope", [], "does not exist"),
    (lambda p: _folder(p, {"a": 3}), [], "at least two class sub-folders"),
    (lambda p: _folder(p, {"a": 3, "b": 0}), [], "has no images"),
    (lambda p: _folder(p, {"a": 3, "b": 3}), ["--arch", "nosuchnet"], "unknown arch 'nosuchnet'"),
    (lambda p: _folder(p, {"a": 3, "b": 3}), ["--valid-pct", "1.5"], "--valid-pct must be between 0 and 1"),
    (lambda p: _folder(p, {"a": 3, "b": 3}), ["--head", "mlp"], "Invalid value for '--head'"),
    (lambda p: _folder(p, {"a": 3, "b": 3}), ["--precision", "fp16"], "fp16 needs a GPU"),
    (lambda p: _folder(p, {"a": 3, "b": 3}), ["--precision", "fp8"], "'fp8' is not one of 'auto', 'fp32', 'bf16', 'fp16'"),
    (lambda p: _folder(p, {"a": 3, "b": 3}), ["--out", "/proc/camkit-run"], "cannot write to output folder"),
])
def test_bad_train_input_is_one_line_error(tmp_path, cli, setup, args, message):
    data = setup(tmp_path)
    code, out, err = cli("train", data, "--epochs", "1", "--size", "16", "--no-pretrained", *args)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_corrupt_image_is_skipped_with_warning(tmp_path, cli):
    data = _folder(tmp_path / "d", {"a": 4, "b": 4})
    (data / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "b" / "notes.png").write_text("hello")
    code, out, err = cli("train", data, "--epochs", "1", "--size", "16", "--bs", "4", "--arch", "resnet18",
                         "--no-pretrained", "--out", tmp_path / "run", "--json")
    assert code == 0, err
    assert "broken.jpg" in err and "notes.png" in err
    summary = json.loads(out)
    assert summary["n_train"] + summary["n_valid"] == 8 and len(summary["skipped"]) == 2
    assert summary["classes"] == ["a", "b"] and summary["epochs"] == 1 and summary["images_per_sec"] > 0


def test_precision_auto_follows_the_hardware(monkeypatch):
    import camkit.core.device as t

    cpu = torch.device("cpu")
    monkeypatch.setattr(t, "cpu_supports_bf16", lambda: True)
    assert t.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(t, "cpu_supports_bf16", lambda: False)
    assert t.resolve_precision("auto", cpu) == "fp32" and t.resolve_precision("bf16", cpu) == "bf16"


def test_bf16_training_on_cpu_learns(canvas_dir, tmp_path):
    r = train(canvas_dir, arch="resnet18", epochs=2, size=32, bs=16, out=tmp_path / "r", pretrained=False,
              stride=8, precision="bf16", quiet=True)
    assert r.precision == "bf16" and r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    saved = torch.load(tmp_path / "r" / "model.pth", weights_only=True)
    assert all(v.dtype == torch.float32 for v in saved.values() if v.is_floating_point())  # saved as fp32
    assert not torch.is_autocast_cpu_enabled()  # the callback never leaves autocast on


def test_timm_names_work_when_timm_is_installed(canvas_dir, tmp_path):
    pytest.importorskip("timm")
    r = train(canvas_dir, arch="resnet10t", epochs=1, size=32, bs=16, out=tmp_path / "t", pretrained=False,
              quiet=True)
    assert r.arch == "resnet10t"
    assert load(tmp_path / "t").model[0].__class__.__name__ == "TimmGrid"   # a CNN's grid, served by the CAM head


def test_tensor_batches_flip_some_images_and_keep_the_rest(canvas_dir):
    """aug='flip' mirrors images: every batch image equals its source or the source mirrored,
    and both occur; aug='none' returns the sources unchanged."""
    from camkit.data.folders import Normalizer, TensorBatches, load_folder

    data = load_folder(canvas_dir, 16)
    norm = Normalizer(([0.5] * 3, [0.25] * 3))
    flipped = plain = 0
    for augment in (True, False):
        dl = TensorBatches(data.images, torch.arange(len(data.labels)), 16, shuffle=True,
                           aug="flip" if augment else "none", stats=norm.stats, seed=1)
        for x, idx in dl:
            src = norm(data.images[idx])
            same = (x == src).flatten(1).all(1)
            mirrored = (x == src.flip(-1)).flatten(1).all(1)
            assert (same | mirrored).all()
            if augment:
                flipped += int((mirrored & ~same).sum())
                plain += int((same & ~mirrored).sum())
            else:
                assert same.all()
    assert flipped > 10 and plain > 10


@pytest.fixture(scope="module")
def pretrained_run(canvas_dir, tmp_path_factory):
    """The path real users take online: a torchvision state_dict (here a local file), fine_tune
    with one frozen epoch and one unfrozen epoch."""
    import torchvision

    tmp = tmp_path_factory.mktemp("pre")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp / "r18.pth")
    result = train(canvas_dir, arch="resnet18", epochs=1, size=32, bs=16, out=tmp / "run", weights=tmp / "r18.pth",
                   freeze_epochs=1, quiet=True)
    return result, tmp / "run"


def test_fine_tune_history_has_the_frozen_and_the_unfrozen_epoch(pretrained_run):
    result, run = pretrained_run
    meta = json.loads((run / "model.json").read_text())
    assert result.pretrained and meta["epochs_planned"] == 2 and result.epochs == 2
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [(int(r["epoch"]), r["phase"]) for r in rows] == [(0, "frozen"), (1, "all")]
    assert [h["phase"] for h in result.history] == ["frozen", "all"]


def test_summary_accuracy_and_loss_are_the_last_epochs(pretrained_run, tiny_run):
    """One number: the summary is computed through the Learner as its validation is."""
    for result in (pretrained_run[0], json.loads((tiny_run / "model.json").read_text())["summary"]):
        summary = result if isinstance(result, dict) else result.to_dict()
        last = summary.get("history") or list(csv.DictReader(open(Path(summary["out"]) / "history.csv")))
        assert summary["valid_accuracy"] == pytest.approx(float(last[-1]["accuracy"]), abs=1e-4)
        assert summary["valid_loss"] == pytest.approx(float(last[-1]["valid_loss"]), abs=1e-3)


def test_throughput_counts_every_epoch(pretrained_run):
    r = pretrained_run[0]
    assert r.images_per_sec == pytest.approx(2 * (r.n_train + r.n_valid) / r.train_seconds, rel=0.01)


def test_frozen_epoch_leaves_the_body_unchanged(canvas_dir, tmp_path):
    """The splitter handed to the Learner is the arch's own: after `freeze` (what fine_tune's
    frozen epoch runs) an epoch changes the head but none of the body's conv weights."""
    import torchvision

    from camkit.data.folders import load_folder
    from camkit.train.models import build_model
    from camkit.train.loop import make_learner, make_loaders

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")

    data = load_folder(canvas_dir, 32)
    built = build_model("resnet18", 2, weights=tmp_path / "r18.pth")
    body_before = [p.detach().clone() for p in built.model[0].parameters()]
    head_before = built.model[1][2].weight.detach().clone()
    dls, _ = make_loaders(data, *data.split(0.2, 0), TrainSpec.parse("resnet18", bs=16, aug="none"),
                          torch.device("cpu"), "fp32")
    learn = make_learner(dls, built, tmp_path, "fp32")
    learn.freeze()
    learn.fit_one_cycle(1, 1e-3)
    convs = [(a, b) for a, b in zip(body_before, built.model[0].parameters()) if a.dim() == 4]
    assert convs and all(torch.equal(a, b) for a, b in convs)  # BatchNorm stays trainable, as in fastai
    assert not torch.equal(head_before, built.model[1][2].weight)


def test_fastai_augmentation_changes_training_batches_only(canvas_dir):
    """aug='fastai' runs fastai's aug_transforms on the uint8 batches: training images change
    beyond a mirror (rotation, zoom, warp, lighting), values stay in the normalised range of
    [0, 1] images, and validation batches are the plain images."""
    from camkit.data.folders import Normalizer, TensorBatches, load_folder

    data = load_folder(canvas_dir, 16)
    torch.manual_seed(0)
    norm = Normalizer(([0.5] * 3, [0.25] * 3))
    train_dl = TensorBatches(data.images, torch.arange(len(data.labels)), 16, shuffle=True, aug="fastai",
                             stats=norm.stats)
    x, idx = next(iter(train_dl))
    src = norm(data.images[idx])
    same, mirrored = ((x - src).abs().flatten(1).max(1).values < 1e-4), ((x - src.flip(-1)).abs().flatten(1).max(1).values < 1e-4)
    assert not (same | mirrored).any()
    assert x.min() >= (0 - 0.5) / 0.25 - 1e-4 and x.max() <= (1 - 0.5) / 0.25 + 1e-4
    valid = TensorBatches(data.images, torch.arange(len(data.labels)), 16, shuffle=False, aug="none", stats=norm.stats)
    v, vidx = next(iter(valid))
    assert torch.equal(v, norm(data.images[vidx]))


@pytest.mark.parametrize("loader,aug", [("fastai", "fastai"), ("tensor", "fastai"), ("fastai", "none")])
def test_both_loaders_train_and_save_a_run_camkit_can_use(canvas_dir, tmp_path, cli, loader, aug):
    r = train(canvas_dir, arch="resnet18", epochs=1, size=32, bs=16, out=tmp_path / "r", pretrained=False,
              loader=loader, aug=aug, quiet=True)
    meta = json.loads((tmp_path / "r" / "model.json").read_text())
    assert meta["resize"] == ("crop" if loader == "fastai" else "squish")
    assert r.n_train + r.n_valid == 80 and r.n_valid == len(read_valid(tmp_path / "r"))
    assert r.valid_accuracy == pytest.approx(r.history[-1]["accuracy"], abs=1e-4)
    code, _, err = cli("cam", canvas_dir / "bag", "--model", tmp_path / "r", "--out", tmp_path / "c", "--json")
    assert code == 0, err


def test_device_order_is_cuda_then_apple_gpu_then_cpu(monkeypatch):
    import camkit.core.device as d

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert d.default_device().type == "mps"
    assert d.resolve_precision("auto", torch.device("mps")) == "fp32"
    with pytest.raises(CamkitError, match="not supported on Apple GPUs"):
        d.resolve_precision("bf16", torch.device("mps"))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert d.default_device().type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert d.default_device().type == "cuda"


def test_an_error_in_the_forward_pass_leaves_autocast_off(canvas_dir, tmp_path):
    """fastai skips after_batch when the model raises; bf16 autocast must still be switched off,
    or every later pass in the process runs in bf16."""
    from fastai.vision.all import DataLoaders  # noqa: F401  (fastai's Learner below)

    from camkit.data.folders import load_folder
    from camkit.train.loop import fit, make_learner, make_loaders

    class Broken(torch.nn.Module):
        def forward(self, x):
            assert torch.is_autocast_cpu_enabled()   # inside the batch, bf16 is on
            raise CamkitError("broken model")

    built = build_model("resnet18", 2, "cam", False)
    built.model[1] = torch.nn.Sequential(Broken())
    data = load_folder(canvas_dir, 16)
    dls, _ = make_loaders(data, *data.split(0.2, 0), TrainSpec.parse("resnet18", bs=16, aug="none"),
                          torch.device("cpu"), "bf16")
    learn = make_learner(dls, built, tmp_path, "bf16")
    with pytest.raises(CamkitError, match="broken model"):
        fit(learn, False, 1, 0, 3e-3, verbose=False)
    assert not torch.is_autocast_cpu_enabled()


@pytest.mark.parametrize("arch,head,expected", [("resnet18", "cam", 16), ("resnext50_32x4d", "cam", 16),
                                                ("resnet18", "fastai", 32), ("densenet121", "cam", 32),
                                                ("vit_tiny_patch16_224", "cam", 32)])
def test_the_default_stride_is_16_for_a_torchvision_resnet_with_the_cam_head(arch, head, expected):
    from camkit.train.spec import ModelSpec

    assert ModelSpec.parse(arch, head).stride == expected


def _noise_folder(root, counts: dict[str, int], side: int = 20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("counts,status,code", [({"a": 3, "b": 2}, "unusable", "few_valid"),
                                                ({"a": 3, "b": 60}, "unusable", "below_baseline")])
def test_tiny_or_lopsided_data_ends_with_a_verdict_not_a_silent_model(cli, tmp_path, counts, status, code):
    """5 images in all, or 3 against 60: the run is saved with a verdict that says why not."""
    data = _noise_folder(tmp_path / "data", counts)
    code_, out, err = cli("train", data, "--arch", "resnet18", "--no-pretrained", "--size", "16", "--epochs", "1",
                          "--out", tmp_path / "run", "--json")
    assert code_ == 0, err
    verdict = json.loads(out)["verdict"]
    assert verdict["status"] == status and code in [f["code"] for f in verdict["findings"]]
    assert f"warning: training verdict {status}:" in err and "Traceback" not in err
    assert json.loads((tmp_path / "run" / "model.json").read_text())["verdict"] == verdict


def test_a_class_of_one_image_is_one_line_before_training(cli, tmp_path):
    data = _noise_folder(tmp_path / "data", {"a": 1, "b": 20})
    code, out, err = cli("train", data, "--arch", "resnet18", "--no-pretrained", "--size", "16", "--out", tmp_path / "r")
    assert code == 2 and err.strip() == ("error: class 'a' has 1 readable image(s); at least 2 are needed "
                                         "(one to train on, one to validate)")
    assert not (tmp_path / "r").exists()


def test_lr_auto_saves_the_curve_and_uses_the_suggestion(canvas_dir, tmp_path):
    from camkit.train.run import read_info

    r = train(canvas_dir, arch="resnet18", epochs=1, size=16, out=tmp_path / "r", pretrained=False, lr="auto",
              quiet=True, aug="none")
    curve = (tmp_path / "r" / "lr_find.csv").read_text().splitlines()
    assert curve[0] == "lr,loss" and len(curve) > 10
    lrs = [float(line.split(",")[0]) for line in curve[1:]]
    assert r.lr_source == "lr_find" and min(lrs) <= r.lr <= max(lrs) and r.lr != 3e-3
    info = read_info(tmp_path / "r")
    assert info.spec["lr"] == "auto" and info.summary["lr"] == r.lr


def test_lr_auto_whose_search_fails_falls_back_with_a_finding(canvas_dir, tmp_path, monkeypatch):
    from collections import namedtuple

    from fastai.learner import Learner

    suggestion = namedtuple("SuggestedLRs", ["valley"])   # what lr_find returns, with a NaN curve's valley
    monkeypatch.setattr(Learner, "lr_find", lambda self, **k: suggestion(valley=float("nan")))
    r = train(canvas_dir, arch="resnet18", epochs=1, size=16, out=tmp_path / "r", pretrained=False, lr="auto",
              quiet=True, aug="none")
    finding = next(f for f in r.verdict["findings"] if f["code"] == "lr_find_failed")
    assert r.lr == 3e-3 and r.lr_source == "default"
    assert finding["message"] == "the learning-rate search failed (it suggested nan); the default 0.003 was used"
    assert not (tmp_path / "r" / "lr_find.csv").exists()


def test_the_batch_size_adapts_to_the_data_and_is_recorded(canvas_dir, tmp_path):
    r = train(canvas_dir, arch="resnet18", epochs=1, size=16, out=tmp_path / "r", pretrained=False, quiet=True,
              aug="none")
    assert r.n_train == 64 and r.bs == 8   # 64 // 16 < 6 steps: 8, the smallest of the range
    assert json.loads((tmp_path / "r" / "model.json").read_text())["spec"]["bs"] == 8
