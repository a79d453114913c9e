import gc
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camkit.cam import CAM, METHODS, GradCAM, make_cam, normalise
from camkit.errors import CamkitError
from camkit.explain import cam, explain
from camkit.train.run import load


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load(tiny_run)


@pytest.fixture(scope="module")
def batch(loaded, canvas_dir):
    files = sorted(canvas_dir.glob("*/*.png"))[::10]
    return loaded.preprocess(files)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_normalised_maps(loaded, batch, method):
    batch = batch[:2] if method in ("scorecam", "sscam", "iscam", "ablationcam") else batch  # 512 passes each
    with METHODS[method](loaded.model) as extractor:
        extractor.num_samples = 1  # the noisy methods: one sample runs their code path
        maps = extractor(batch)
    assert maps.shape == ((len(batch), 32, 32) if method == "fullgrad" else (len(batch), 4, 4))
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert torch.allclose(maps.flatten(1).max(1).values, torch.ones(len(batch)), atol=1e-4)


def test_exact_cam_equals_gradcam_for_gap_linear_head(loaded, batch):
    """With logits = W . GAP(A), dy_c/dA_k = w_ck / hw, so Grad-CAM = ReLU(CAM) / hw."""
    assert torch.allclose(CAM(loaded.model)(batch), GradCAM(loaded.model)(batch), atol=1e-5)


def test_exact_cam_is_the_weighted_sum_of_channels(loaded, batch):
    with torch.no_grad():
        acts = loaded.model[0](batch)
        pred = loaded.model(batch).argmax(1)
    w = loaded.model[1][2].weight[pred]
    expected = normalise(torch.relu((w[:, :, None, None] * acts).sum(1)))
    assert torch.allclose(CAM(loaded.model)(batch), expected, atol=1e-5)


def test_gradcam_matches_torchcam(loaded, batch):
    torchcam = pytest.importorskip("torchcam.methods")
    target = 1
    ours = GradCAM(loaded.model, layer="0.7")(batch, target)
    with torchcam.GradCAM(loaded.model, target_layer="0.7") as extractor:
        with torch.enable_grad():
            scores = loaded.model(batch)
            theirs = extractor([target] * len(batch), scores)[0]
    assert torch.allclose(ours, normalise(theirs), atol=1e-4)


def test_no_hooks_or_tensors_accumulate_over_200_calls(loaded, batch):
    def hooks():
        return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in loaded.model.modules())

    def tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    # one 16-px crop: the same hooks and graph on every call at an eighth of the two 32-px images'
    # forward and backward work (a leak is per call, not per pixel)
    x = batch[:1, :, 8:24, 8:24].contiguous()
    GradCAM(loaded.model)(x)
    before = tensors()
    extractor = GradCAM(loaded.model)
    for _ in range(100):
        extractor(x)
    with GradCAM(loaded.model) as ctx:
        for _ in range(100):
            ctx(x)
    assert hooks() == 0
    assert tensors() <= before + 5


def test_hooks_are_removed_when_the_forward_fails(loaded):
    with pytest.raises(RuntimeError):
        with GradCAM(loaded.model, layer="0.7") as extractor:
            extractor(torch.zeros(1, 5, 32, 32))
    assert all(not m._forward_hooks for m in loaded.model.modules())


def test_inplace_relu_after_the_layer_does_not_change_the_map():
    torch.manual_seed(0)

    def net(inplace):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=inplace),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    a, b = net(True), net(False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(GradCAM(a, layer="0")(x, 0), GradCAM(b, layer="0")(x, 0), atol=1e-6)


def test_works_inside_no_grad_and_with_frozen_weights(loaded, batch):
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            maps = GradCAM(loaded.model)(batch)
        assert maps.shape[0] == len(batch) and torch.isfinite(maps).all() and maps.max() == 1
        assert torch.is_grad_enabled()  # the caller's grad mode is restored
    finally:
        for p in loaded.model.parameters():
            p.requires_grad_(True)


def test_flat_map_is_zero_not_nan():
    assert torch.equal(normalise(torch.ones(2, 3, 3)), torch.zeros(2, 3, 3))


def test_per_image_targets(loaded, batch):
    t = torch.tensor([0, 1] * (len(batch) // 2))
    maps = GradCAM(loaded.model)(batch, t)
    for i in (0, 1):
        assert torch.allclose(maps[i], GradCAM(loaded.model)(batch[i:i + 1], int(t[i]))[0], atol=1e-5)


def test_explain_returns_the_calls_maps_logits_targets_and_grid(loaded, batch):
    """The result object holds what the attributes a notebook reads after a call hold; the
    logits are the (first, unaugmented) pass's, with and without aug_smooth; `cam(x)` is its maps."""
    import dataclasses

    from camkit.cam import CamOutput

    batch = batch[:2]
    extractor = GradCAM(loaded.model)
    with torch.no_grad():
        logits = loaded.model(batch)
    for aug_smooth in (False, True):   # one extractor: the layer's geometry is probed once
        extractor.aug_smooth = aug_smooth
        out = extractor.explain(batch, 1)
        assert isinstance(out, CamOutput) and out.maps.shape == (len(batch), 4, 4)
        assert out.logits is extractor.logits and out.targets is extractor.targets and out.target is extractor.target
        assert out.grid == extractor.grid and out.grid is not None
        assert torch.allclose(out.logits, logits, atol=1e-5) and out.targets.tolist() == [1] * len(batch)
        assert aug_smooth or torch.allclose(extractor(batch, 1), out.maps, atol=1e-6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.maps = out.maps * 0


def test_default_method_follows_the_head(loaded, tiny_fastai_run):
    assert make_cam(None, loaded.model).name == "cam"
    assert make_cam(None, load(tiny_fastai_run).model).name == "gradcam"
    with pytest.raises(CamkitError, match="CAM head"):
        CAM(load(tiny_fastai_run).model)


def test_unknown_layer_lists_candidates(loaded, batch):
    with pytest.raises(CamkitError, match="unknown layer 'nope'; candidates: .*0.7") as e:
        GradCAM(loaded.model, layer="nope")(batch)
    offered = str(e.value).split("candidates: ")[1].split(" (")[0].split(", ")
    assert "0.7" in offered and not any(name.startswith("1") for name in offered)  # never the head


@pytest.mark.parametrize("layer", ["1", "1.2", "1.1"])
def test_non_spatial_layer_is_a_user_error(loaded, batch, layer):
    """The head's pooling, flatten and linear layers give no (B, K, h, w) map to explain."""
    with pytest.raises(CamkitError, match=f"layer '{layer}' outputs shape .* not a spatial map"):
        GradCAM(loaded.model, layer=layer)(batch)


def _odd_images(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 60), 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray((rng.integers(0, 65535, (40, 60))).astype(np.uint16)).save(folder / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.fromarray(rgb).save(folder / "rotated.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(folder / "huge.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return folder


def test_explain_handles_every_image_mode_and_maps_back_to_original_size(tiny_run, tmp_path):
    images = _odd_images(tmp_path / "imgs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = cam([images], model=tiny_run, out=tmp_path / "cams", bs=3, quiet=True)
    assert any("broken.png" in str(w.message) for w in caught)
    sizes = {"rgb": (60, 40), "gray": (60, 40), "rgba": (60, 40), "palette": (60, 40), "deep16": (60, 40),
             "rotated": (40, 60), "huge": (2000, 1500)}
    assert sorted(r.image.split("/")[-1].split(".")[0] for r in results) == sorted(sizes)
    for r in results:
        w, h = sizes[r.image.split("/")[-1].split(".")[0]]
        assert Image.open(tmp_path / "cams" / r.overlay).size == (w, h)
        assert 0 <= r.peak_xy[0] < w and 0 <= r.peak_xy[1] < h
        assert np.load(tmp_path / "cams" / r.map).shape == (4, 4)
    lines = [json.loads(line) for line in (tmp_path / "cams" / "cams.jsonl").read_text().splitlines()]
    assert [line["image"] for line in lines] == [r.image for r in results]
    page = (tmp_path / "cams" / "index.html").read_text()
    assert all(r.overlay in page for r in results)


def test_peak_is_reported_in_original_pixel_coordinates(tiny_run, canvas_dir, tmp_path):
    """The same image at 4x its size must give a 4x peak (within one model pixel)."""
    src = sorted(canvas_dir.glob("bag/*.png"))[0]
    Image.open(src).resize((128, 128), Image.NEAREST).save(tmp_path / "big.png")
    small, big = explain(tiny_run, [src, tmp_path / "big.png"])
    assert abs(big.peak_xy[0] - 4 * small.peak_xy[0]) <= 4 and abs(big.peak_xy[1] - 4 * small.peak_xy[1]) <= 4


def test_cam_cli_json_and_errors(tiny_run, canvas_dir, tmp_path, cli):
    img = sorted(canvas_dir.glob("bag/*.png"))[0]
    code, out, err = cli("cam", img, "--model", tiny_run, "--out", tmp_path / "c", "--json", "--target", "trouser")
    assert code == 0, err
    line = json.loads(out.splitlines()[0])
    assert line["target"] == "trouser" and line["method"] == "cam" and len(line["peak_xy"]) == 2
    for args, message in [
        ((img, "--model", tmp_path / "none"), "does not exist"),
        ((img, "--model", canvas_dir), "is not a camkit run"),
        ((img, "--model", tiny_run, "--target", "cat"), "unknown class 'cat'; classes: bag, trouser"),
        ((img, "--model", tiny_run, "--layer", "nope"), "unknown layer 'nope'"),
        ((img, "--model", tiny_run, "--method", "magic"), "Invalid value for '--method': 'magic' is not one of 'cam'"),
        ((tmp_path / "missing.png", "--model", tiny_run), "does not exist"),
    ]:
        code, out, err = cli("cam", *args, "--out", tmp_path / "c2")
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)
    (tmp_path / "bad.jpg").write_text("<html>")
    code, out, err = cli("cam", tmp_path / "bad.jpg", "--model", tiny_run, "--out", tmp_path / "c3")
    assert code == 2 and "not a readable image" in err


def test_model_file_that_is_not_camkits_is_refused(tiny_run, tmp_path):
    import shutil

    fake = tmp_path / "fake"
    shutil.copytree(tiny_run, fake)
    (fake / "model.pth").write_bytes(b"garbage")
    with pytest.raises(CamkitError, match="not a plain tensor state_dict"):
        load(fake)


def test_bf16_maps_agree_with_fp32(loaded, batch):
    fp32 = GradCAM(loaded.model)(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = GradCAM(loaded.model)(batch)
    assert bf16.dtype == torch.float32
    assert (fp32 - bf16).abs().mean() < 0.05
    assert (fp32.flatten(1).argmax(1) == bf16.flatten(1).argmax(1)).float().mean() >= 0.75


def test_cam_cli_contrast_signed_fused_and_smoothed(tiny_run, canvas_dir, tmp_path, cli):
    """--target contrast names both classes; --signed saves maps in [-1, 1] with negative values
    drawn in the diverging colormap; --layer a,b fuses; --aug-smooth / --eigen-smooth run."""
    img = sorted(canvas_dir.glob("bag/*.png"))[0]
    code, out, err = cli("cam", img, "--model", tiny_run, "--out", tmp_path / "c", "--json", "--target", "contrast",
                         "--signed")
    assert code == 0, err
    line = json.loads(out.splitlines()[0])
    assert line["target"] in ("bag vs trouser", "trouser vs bag") and line["target"].startswith(line["pred"])
    saved = np.load(tmp_path / "c" / line["map"])
    assert saved.min() >= -1 and abs(np.abs(saved).max() - 1) < 1e-4  # scaled by max |m|, sign kept
    code, out, err = cli("cam", img, "--model", tiny_run, "--out", tmp_path / "d", "--json", "--method", "gradcam",
                         "--layer", "0.6,0.7", "--aug-smooth", "--eigen-smooth")
    assert code == 0, err
    assert np.load(tmp_path / "d" / json.loads(out.splitlines()[0])["map"]).shape == (4, 4)


def test_cam_cli_lists_methods_without_a_model(cli):
    code, out, err = cli("cam", "--list-methods")
    assert code == 0, err
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == list(METHODS) and "torchcam" in out and "pytorch-grad-cam" in out


def test_explain_api_takes_a_target_object(tiny_run, canvas_dir):
    from camkit.cam.targets import ContrastTarget

    img = sorted(canvas_dir.glob("bag/*.png"))[0]
    a, = explain(tiny_run, [img], target=ContrastTarget(0, 1), signed=True)
    b, = explain(tiny_run, [img], target=ContrastTarget(1, 0), signed=True)
    assert a.record().target == "bag vs trouser" and torch.allclose(a.map, -b.map, atol=1e-5)


def test_signed_maps_are_drawn_diverging():
    from camkit.core.render import DIVERGING, Style, overlay

    heat, _ = overlay(Image.new("RGB", (8, 8)), torch.tensor([[-1.0, 0.0], [0.0, 1.0]]),
                      Style(colormap=DIVERGING, signed=True))
    px = np.asarray(heat)
    assert px[0, 0, 2] > 2 * px[0, 0, 0]         # evidence against: blue
    assert px[-1, -1, 0] > 2 * px[-1, -1, 2]     # evidence for: red
    none, _ = overlay(Image.new("RGB", (8, 8)), torch.zeros(2, 2), Style(colormap=DIVERGING, signed=True))
    assert np.asarray(none).min() > 230                # no evidence either way: white


@pytest.mark.parametrize("confusion,warned", [([[4, 4], [4, 4]], True), ([[8, 0], [0, 8]], False)])
def test_explaining_with_an_unusable_run_warns_once_its_checks_pass(run_copy, canvas_dir, cli, confusion, warned):
    from helpers import with_verdict

    with_verdict(run_copy, confusion)
    img = sorted(canvas_dir.glob("bag/*.png"))[0]
    code, out, err = cli("cam", img, "--model", run_copy, "--out", run_copy.parent / "c")
    assert code == 0 and ("its maps and predictions explain nothing" in err) == warned
    code, out, err = cli("cam", img, "--model", run_copy, "--target", "cat", "--out", run_copy.parent / "c2")
    assert code == 2 and err.count("\n") == 1    # a bad option: its one line, no verdict before it
