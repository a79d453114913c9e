"""Hostile notebook calls (issue 26 item 16): every wrong input to the notebook layer (learn.cam,
show_cam, export_run, verdict, CAMInterpretation) and to the library calls it shares with the CLI
(explain, cam, predict) is one CamkitError sentence, as the CLI gives; what is unambiguous (uint8
pixels, grayscale, RGBA, an unreadable file inside a folder, a Learner restored with learn.load)
works as a file on disk would. The Learner is never fitted: what is checked here is the input."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.errors import CamkitError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def dls(canvas_dir):
    """The canvas set at 32 px with a batch of 8: a learn.cam chunk (16) is larger than it."""
    from fastai.vision.all import ImageDataLoaders, Resize

    return ImageDataLoaders.from_folder(canvas_dir, valid_pct=0.2, seed=42, item_tfms=Resize(32), bs=8,
                                        num_workers=0)


@pytest.fixture(scope="module")
def learn(dls):
    """camkit's CAM head on resnet18 at stride 8, unfitted: the smallest Learner with real maps."""
    from fastai.vision.all import resnet18

    from camkit.fastai import cam_learner

    torch.manual_seed(0)
    return cam_learner(dls, resnet18, stride=8, pretrained=False)


@pytest.fixture(scope="module")
def files(dls):
    return list(dls.valid.items)[:3]


@pytest.fixture(scope="module")
def interp(learn, files):
    """Top losses over 3 labelled validation images (few rows to draw)."""
    from camkit.fastai import CAMInterpretation

    with learn.no_bar():
        return CAMInterpretation.from_learner(learn, dl=learn.dls.test_dl(files, with_labels=True))


@pytest.fixture(scope="module")
def tabular():
    """A tabular Learner (fastai's adult-style frame, 40 rows): no images at all."""
    import pandas as pd
    from fastai.tabular.all import Categorify, Normalize, TabularDataLoaders, tabular_learner

    import camkit.fastai  # noqa: F401

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.random(40), "job": rng.choice(["a", "b"], 40), "y": rng.choice(["p", "q"], 40)})
    tab = TabularDataLoaders.from_df(frame, cat_names=["job"], cont_names=["age"], y_names="y",
                                     procs=[Categorify, Normalize], bs=8, num_workers=0)
    return tabular_learner(tab)


def _mode(layout: str) -> str:
    return "RGBA" if "RGBA" in layout else "L" if "L" in layout else "RGB"


@pytest.fixture(scope="module")
def as_pil(learn, files):
    """learn.cam of the first file opened as a PIL image in each mode, through camkit's decode."""
    from camkit.core.images import to_rgb

    return {mode: learn.cam([to_rgb(Image.open(files[0]).convert(mode))])[0] for mode in ("L", "RGB", "RGBA")}


def _pixels(files, layout: str):
    """The first file's pixels as a uint8 tensor in `layout` (channels from the letters: L, RGB, RGBA)."""
    img = Image.open(files[0]).convert(_mode(layout))
    hwc = torch.from_numpy(np.asarray(img).copy())
    if hwc.dim() == 2:
        hwc = hwc[..., None]
    return {"HW-L": hwc[..., 0], "HWC-RGB": hwc, "CHW-RGB": hwc.permute(2, 0, 1),
            "BCHW-RGB": hwc.permute(2, 0, 1)[None], "BHWC-RGBA": hwc[None], "CHW-L": hwc.permute(2, 0, 1),
            "numpy-HWC-RGB": hwc.numpy()}[layout]


# ---------------------------------------------------------------- learn.cam: what it is given

@pytest.mark.parametrize("items, message", [
    (5, "learn.cam takes image files or folders.*not int"),
    ([5, 6], "learn.cam takes image files or folders.*not int"),
    ([], "no images given"),
    (torch.zeros(0, 3, 32, 32), "the batch holds no images"),
    (torch.rand(2, 1, 32, 32), "needs 3 channels, not 1"),
    (torch.rand(2, 4, 32, 32), "needs 3 channels, not 4"),
    (torch.rand(32, 32), "a float batch must be .B, C, H, W."),
    (torch.zeros(2, 3, 32, 32, dtype=torch.int64), "pixels must be uint8"),
    (torch.zeros(2, 3, 4, 3, dtype=torch.uint8), "cannot tell which axis holds the channels"),
])
def test_a_wrong_input_is_one_sentence(learn, items, message):
    with pytest.raises(CamkitError, match=message):
        learn.cam(items)


@pytest.mark.parametrize("bs", [0, -1, 2.5])
def test_a_batch_size_below_one_is_refused_not_an_empty_answer(learn, files, bs):
    with pytest.raises(CamkitError, match=f"bs must be a whole number of at least 1, not {bs}"):
        learn.cam(files, bs=bs)


def test_an_empty_folder_says_so(learn, tmp_path):
    with pytest.raises(CamkitError, match="no images found in"):
        learn.cam(tmp_path)


def test_an_empty_dataloader_is_refused(learn, dls):
    with pytest.raises(CamkitError, match="the DataLoader gives no images"):
        learn.cam(dls.new_empty().valid)


@pytest.mark.parametrize("layout", ["HW-L", "HWC-RGB", "CHW-RGB", "BCHW-RGB", "BHWC-RGBA", "CHW-L",
                                    "numpy-HWC-RGB"])
def test_uint8_pixels_are_read_as_the_file_would_be(learn, files, as_pil, layout):
    """Pixels are unambiguous: grayscale replicated, alpha laid on white (camkit's decode of a
    file), then the Learner's own resize and normalisation, as for a PIL image."""
    got, want = learn.cam(_pixels(files, layout)), as_pil[_mode(layout)]
    assert len(got) == 1 and got[0].pred == want.pred
    assert torch.allclose(got[0].map, want.map, atol=1e-5) and torch.allclose(got[0].probs, want.probs)


def test_a_single_float_image_is_a_batch_of_one(learn, dls, files):
    x = dls.test_dl(files).one_batch()[0]
    one, batch = learn.cam(x[0]), learn.cam(x)
    assert len(one) == 1 and torch.allclose(one[0].map, batch[0].map, atol=1e-5)


def test_more_files_than_the_dataloaders_batch_keep_every_file(learn, dls):
    """learn.cam's chunk (bs 16) is larger than the DataLoaders' batch (8): all 16 are explained."""
    items = list(dls.valid.items)
    res = learn.cam(items, bs=16)
    assert [str(r.image) for r in res] == [str(p) for p in items]


def test_an_unreadable_file_in_a_folder_is_skipped_and_counted(learn, files, tmp_path):
    """As the CLI does: a broken file found in a folder is skipped with a warning line, and
    the call says how many it skipped; a broken file named directly is an error."""
    import shutil

    for i, f in enumerate(files):
        shutil.copy(f, tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = learn.cam(tmp_path)
    said = [str(w.message) for w in caught]
    assert sorted(r.image.name for r in res) == ["0.png", "1.png", "2.png"]
    assert any("broken.png" in s for s in said) and any("skipped 1 of 4 images" in s for s in said)
    with pytest.raises(CamkitError, match="broken.png"):
        learn.cam(tmp_path / "broken.png")


def test_show_cam_refuses_a_count_below_one(learn):
    with pytest.raises(CamkitError, match="n must be a whole number of at least 1, not 0"):
        learn.show_cam(n=0)


def test_a_learner_without_validation_images_says_so(learn, dls):
    """What learn.export() / load_learner leave: DataLoaders with no items."""
    from camkit.fastai import CAMInterpretation

    empty = type(learn)(dls.new_empty(), learn.model)
    for call in (empty.cam, lambda: empty.export_run("never"), empty.verdict,
                 lambda: CAMInterpretation.from_learner(empty)):
        with pytest.raises(CamkitError, match="no validation images"):
            call()


# ---------------------------------------------------------------- top losses

@pytest.mark.parametrize("k", [0, -3])
def test_top_losses_below_one_is_refused(interp, k):
    with pytest.raises(CamkitError, match=f"k must be a whole number of at least 1, not {k}"):
        interp.plot_top_losses(k)


def test_more_top_losses_than_images_shows_them_all_with_a_note(interp):
    n = len(interp.losses)
    with pytest.warns(UserWarning, match=f"only {n} images were scored: showing all {n}"):
        fig = interp.plot_top_losses(1000)
    assert len(fig.axes) == 3 * n


@pytest.mark.parametrize("ds_idx, message", [(5, "ds_idx 5 is not one of this Learner's 2 DataLoaders"),
                                             ("valid", "ds_idx 'valid' is not one of")])
def test_a_bad_ds_idx_is_one_sentence(learn, ds_idx, message):
    from camkit.fastai import CAMInterpretation

    with pytest.raises(CamkitError, match=message):
        CAMInterpretation.from_learner(learn, ds_idx=ds_idx)


# ---------------------------------------------------------------- a Learner that is not for images

@pytest.mark.parametrize("call", ["cam", "show_cam", "interpretation", "export_run", "verdict"])
def test_a_tabular_learner_is_refused_by_every_call(tabular, call, tmp_path):
    from camkit.fastai import CAMInterpretation

    calls = {"cam": tabular.cam, "show_cam": tabular.show_cam, "verdict": tabular.verdict,
             "interpretation": lambda: CAMInterpretation.from_learner(tabular),
             "export_run": lambda: tabular.export_run(tmp_path / "run")}
    with pytest.raises(CamkitError, match="explains image classifiers.*TabularDataLoaders"):
        calls[call]()
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- export of a Learner that never fitted here

def test_export_of_a_learner_restored_with_load_works(dls, tmp_path):
    """learn.save / learn.load (or no fit at all) leave fastai's Recorder without metric names:
    the export validates the model and writes a run with no epochs, its weights exact."""
    from fastai.vision.all import resnet18

    from camkit.fastai import cam_learner
    from camkit.train.run import load

    saved, restored = (cam_learner(dls, resnet18, stride=8, pretrained=False, path=tmp_path) for _ in range(2))
    saved.save("weights")  # into tmp_path/models, not the data folder
    restored.load("weights")
    out = restored.export_run(tmp_path / "run")
    loaded, state = load(out), saved.model.state_dict()
    assert loaded.info.epochs_planned == 0 and loaded.info.summary["n_valid"] == len(dls.valid_ds)
    assert all(torch.equal(v.float(), state[k].float()) for k, v in loaded.model.state_dict().items())


# ---------------------------------------------------------------- the library calls

@pytest.mark.parametrize("images, message", [(5, "images must be file or folder paths, not int"),
                                             ([3.5], "images must be file or folder paths, not float"),
                                             ([], "no images given")])
@pytest.mark.parametrize("call", ["explain", "cam", "predict"])
def test_library_calls_refuse_what_is_not_a_path(tiny_run, tmp_path, call, images, message):
    from camkit.explain import cam, explain
    from camkit.predict import predict

    run = {"explain": lambda: explain(tiny_run, images), "predict": lambda: predict(images, tiny_run),
           "cam": lambda: cam(images, model=tiny_run, out=tmp_path / "cams", quiet=True)}
    with pytest.raises(CamkitError, match=message):
        run[call]()
    assert not (tmp_path / "cams").exists()


@pytest.mark.parametrize("images, kwargs, message", [(5, {}, "not int"), ([], {}, "no images given"),
                                                     (None, {"bs": 0}, "bs must be a whole number")])
def test_learn_cam_refuses_bad_images_as_explain_does(learn, files, images, kwargs, message):
    with pytest.raises(CamkitError, match=message):
        learn.cam(files if images is None else images, **kwargs)
