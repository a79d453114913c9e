"""camkit inside a fastai notebook: the exam's code, then CAMs, top losses and export, on a
`vision_learner` with fastai's default head and on a `cam_learner`."""

import json

import pytest
import torch
from PIL import Image

from camkit.errors import CamkitError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def dls(canvas_dir):
    from fastai.vision.all import ImageDataLoaders, Resize

    return ImageDataLoaders.from_folder(canvas_dir, valid_pct=0.2, seed=42, item_tfms=Resize(32), bs=16,
                                        num_workers=0)


def _fit(learn):
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(1)
    return learn


@pytest.fixture(scope="module")
def exam_learner(dls):
    """The exam's code as written (offline: pretrained=False), fastai's default head."""
    import camkit.fastai  # noqa: F401  (adds learn.cam, show_cam, export_run)
    from fastai.vision.all import error_rate, resnet18, vision_learner

    torch.manual_seed(0)
    return _fit(vision_learner(dls, resnet18, pretrained=False, metrics=error_rate))


@pytest.fixture(scope="module")
def cam_learner(dls):
    from fastai.vision.all import error_rate, resnet18

    from camkit.fastai import cam_learner as make

    torch.manual_seed(0)
    return _fit(make(dls, resnet18, stride=8, pretrained=False, metrics=error_rate))


@pytest.fixture(params=["exam", "cam"])
def learner(request):
    return request.getfixturevalue(f"{request.param}_learner")


def test_cam_learner_has_the_cam_head_and_its_stride(cam_learner, exam_learner):
    from camkit.cam import cam_linear

    assert cam_linear(cam_learner.model) is not None and cam_linear(exam_learner.model) is None
    res = cam_learner.cam()
    assert res[0].method == "cam" and res[0].map.shape == (4, 4)  # stride 8 at 32 px
    assert exam_learner.cam()[0].method == "gradcam"  # fastai's head: a gradient method, as the CLI picks


def test_learn_cam_defaults_to_the_validation_set_with_file_names(learner, dls):
    res = learner.cam()
    assert len(res) == len(dls.valid_ds)
    assert [str(r.image) for r in res] == [str(p) for p in dls.valid.items]
    probs, _ = learner.get_preds(dl=dls.valid)
    assert [r.pred for r in res] == [dls.vocab[int(i)] for i in probs.argmax(1)]
    assert all(torch.isfinite(r.map).all() and r.map.max() <= 1 for r in res)


def test_every_kind_of_input_gives_the_same_answers(cam_learner, dls):
    from camkit.core.images import open_rgb

    files = list(dls.valid.items)[:4]
    by_path = cam_learner.cam(files)
    by_pil = cam_learner.cam([open_rgb(f) for f in files])
    batch = dls.test_dl(files).one_batch()[0]
    by_batch = cam_learner.cam(batch)
    by_dl = cam_learner.cam(dls.test_dl(files))
    for other in (by_pil, by_batch, by_dl):
        assert [r.pred for r in other] == [r.pred for r in by_path]
        assert all(torch.allclose(a.map, b.map, atol=1e-5) for a, b in zip(by_path, other))
    assert by_pil[0].image == "image 0" and by_path[0].image == files[0]


def test_exact_cam_on_the_learner_is_the_weighted_sum_of_channels(cam_learner, dls):
    from camkit.cam import normalise

    x = dls.test_dl(list(dls.valid.items)[:4]).one_batch()[0]
    res = cam_learner.cam(x)
    model = cam_learner.model.eval()
    with torch.no_grad():
        acts = model[0](x)
        pred = model(x).argmax(1)
    w = model[1][2].weight[pred]
    expected = normalise(torch.relu((w[:, :, None, None] * acts).sum(1)))
    assert torch.allclose(torch.stack([r.map for r in res]), expected.cpu(), atol=1e-5)


def test_target_can_be_a_class_name(cam_learner, dls):
    files = list(dls.valid.items)[:3]
    res = cam_learner.cam(files, target="bag")
    assert all(r.classes[r.target] == "bag" for r in res)
    with pytest.raises(CamkitError, match="unknown class 'cat'"):
        cam_learner.cam(files, target="cat")


def test_show_cam_draws_pairs_with_titles(learner):
    fig = learner.show_cam(n=4, ncols=2)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 8
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert len(titles) == 4 and all(t.split()[0] in ("bag", "trouser") and t.split()[1].endswith("%") for t in titles)


def test_top_losses_show_the_predicted_and_the_actual_class(learner):
    from camkit.fastai import CAMInterpretation

    interp = CAMInterpretation.from_learner(learner)
    losses, idx = interp.top_losses(4)
    fig = interp.plot_top_losses(4)
    rows = [fig.axes[i:i + 3] for i in range(0, 12, 3)]
    assert len(fig.axes) == 12
    for (a, b, c), loss in zip(rows, losses.tolist()):
        assert f"loss {loss:.2f}" in a.get_title(loc="left")
        assert b.get_title().startswith("why ") and c.get_title().startswith("evidence for ")
    assert isinstance(interp.most_confused(), list)  # fastai's own methods still work


def test_results_render_inline(cam_learner):
    res = cam_learner.cam()[:3]
    assert res._repr_png_().startswith(b"\x89PNG") and res[0]._repr_png_().startswith(b"\x89PNG")


@pytest.mark.parametrize("name", ["exam", "cam"])
def test_export_run_works_with_camkit_commands(request, name, tmp_path, cli, dls, tiny_run):
    from camkit.train.run import load

    learn = request.getfixturevalue(f"{name}_learner")
    out = learn.export_run(tmp_path / "run")
    # one writer (camkit.train.run.held_out, RunInfo.describe) for camkit train's run and this export
    exported, trained = ([json.loads((d / f).read_text()) for f in ("valid.json", "model.json")] for d in (out, tiny_run))
    assert exported[0] and {tuple(r) for r in exported[0]} == {tuple(r) for r in trained[0]} == {
        ("file", "label", "pred", "prob", "loss")}
    assert list(exported[1]) == list(trained[1])
    files = list(dls.valid.items)
    loaded = load(out)
    with torch.no_grad():
        ours = loaded.model(loaded.preprocess(files)).softmax(1)
    theirs, _ = learn.get_preds(dl=dls.test_dl(files))
    assert (ours - theirs).abs().max() < 1e-4
    code, _, err = cli("cam", files[0], "--model", out, "--out", tmp_path / "cams")
    assert code == 0, err
    code, _, err = cli("report", out)
    assert code == 0, err
    assert "Top losses" in (out / "report.html").read_text()


def test_export_matches_fastais_centre_crop_on_non_square_images(exam_learner, dls, tmp_path):
    from camkit.train.run import load

    wide = []
    for i, f in enumerate(list(dls.valid.items)[:4]):
        img = Image.open(f).convert("RGB")
        canvas = Image.new("RGB", (48, 32), (90, 90, 90))
        canvas.paste(img.resize((32, 32)), (8 * (i % 3), 0))
        canvas.save(tmp_path / f"wide{i}.png")
        wide.append(tmp_path / f"wide{i}.png")
    loaded = load(exam_learner.export_run(tmp_path / "run"))
    assert loaded.info.resize == "crop"
    with torch.no_grad():
        ours = loaded.model(loaded.preprocess(wide)).softmax(1)
    theirs, _ = exam_learner.get_preds(dl=dls.test_dl(wide))
    assert (ours - theirs).abs().max() < 2e-2  # PIL vs fastai's crop-then-resize: same pixels, rounding apart


def test_export_never_writes_into_a_folder_that_is_not_a_run(cam_learner, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(CamkitError, match="holds no camkit run"):
        cam_learner.export_run(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_model_without_spatial_activations_is_a_clear_error(dls):
    from fastai.vision.all import Learner
    from torch import nn

    import camkit.fastai  # noqa: F401

    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)))
    with pytest.raises(CamkitError, match="no 4-D activation"):
        learn.cam(list(dls.valid.items)[:2])


def test_a_dataloader_of_non_images_is_a_clear_error(cam_learner):
    from fastai.data.load import DataLoader

    with pytest.raises(CamkitError, match="does not give image batches"):
        cam_learner.cam(DataLoader(list(range(8)), bs=4))
    with pytest.raises(CamkitError, match="learn.cam takes image files"):
        cam_learner.cam([1, 2, 3])


def test_learn_cam_takes_files_as_explain_takes_them_for_a_run(cam_learner, dls):
    files = list(dls.valid.items)[:3]
    res = cam_learner.cam(files, target="bag")
    assert [r.classes[r.target] for r in res] == ["bag"] * 3 and res[0].image == files[0]


def test_explain_and_cam_refuse_a_learner_and_name_learn_cam(cam_learner, dls, tmp_path):
    """camkit.explain never imports the notebook layer: a Learner is sent to learn.cam."""
    from camkit.explain import cam, explain

    files = list(dls.valid.items)[:2]
    with pytest.raises(CamkitError, match=r"not a fastai Learner: call learn\.cam\(images, \.\.\.\)"):
        explain(cam_learner, files)
    with pytest.raises(CamkitError, match=r"call learn\.cam"):
        cam(files, model=cam_learner, out=tmp_path / "cams", quiet=True)
    assert not (tmp_path / "cams").exists()


def test_export_keeps_every_epoch_even_after_an_interpretation(dls, tmp_path):
    """fastai's Recorder forgets the epochs once get_preds runs; learn.epoch_history does not."""
    import camkit.fastai  # noqa: F401
    from fastai.vision.all import error_rate, resnet18, vision_learner

    learn = _fit(vision_learner(dls, resnet18, pretrained=False, metrics=error_rate))  # fine_tune: 2 epochs
    learn.get_preds()
    out = learn.export_run(tmp_path / "run")
    rows = (out / "history.csv").read_text().splitlines()
    assert len(rows) == 3 and [r.split(",")[1] for r in rows[1:]] == ["frozen", "all"]


def test_show_functions_return_closed_figures(cam_learner):
    import matplotlib.pyplot as plt

    fig = cam_learner.show_cam(n=2, ncols=2)
    assert fig.number not in plt.get_fignums() and len([a for a in fig.axes if a.images]) == 4


def test_export_of_a_model_camkit_cannot_rebuild_leaves_no_folder(dls, tmp_path):
    from fastai.vision.all import Learner
    from torch import nn

    import camkit.fastai  # noqa: F401

    learn = Learner(dls, nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)))
    learn.arch = "resnet18"
    with pytest.raises(CamkitError, match="not one camkit can rebuild"):
        learn.export_run(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()


def test_cam_learner_defaults_to_train_s_stride(dls):
    from fastai.vision.all import resnet18

    from camkit.fastai import cam_learner as make

    learn = make(dls, resnet18, pretrained=False)
    assert learn.camkit_spec.stride == 16 and learn.model[0](torch.zeros(1, 3, 32, 32)).shape[-1] == 2


def test_the_verdict_is_returned_in_a_notebook_and_saved_by_export(cam_learner, tmp_path):
    import json
    import warnings

    from camkit.fastai import CAMInterpretation
    from camkit.train.verdict import TrainingVerdict

    verdict = cam_learner.verdict()
    interp = CAMInterpretation.from_learner(cam_learner)
    assert interp.verdict.accuracy == verdict.accuracy and verdict.n_valid == len(cam_learner.dls.valid_ds)
    assert verdict.baseline == max(sum(r) for r in _confusion(cam_learner)) / verdict.n_valid
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cam_learner.export_run(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "model.json").read_text())["verdict"]
    assert saved["status"] == verdict.status and saved["accuracy"] == verdict.accuracy
    assert any(issubclass(w.category, TrainingVerdict) for w in caught) == (verdict.status != "ok")


def _confusion(learn) -> list[list[int]]:
    from camkit.train.verdict import confusion_matrix

    probs, targets = learn.get_preds()
    return confusion_matrix(probs.argmax(1), targets.long(), len(learn.dls.vocab)).tolist()


def test_export_onnx_writes_the_cam_learners_explainer_and_refuses_fastais_head(cam_learner, exam_learner, tmp_path):
    pytest.importorskip("onnxruntime")
    from camkit.export.onnx import read_sidecar

    result = cam_learner.export_onnx(tmp_path / "learn.onnx")
    assert result.parity.passed and result.map_size == (4, 4)
    assert read_sidecar(result.path).classes == list(cam_learner.dls.vocab)
    with pytest.raises(CamkitError, match="CAM head"):
        exam_learner.export_onnx(tmp_path / "other.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learn.onnx", "learn.onnx.json"]
