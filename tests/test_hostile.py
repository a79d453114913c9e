"""Hostile and careless input, command by command (the crawler's are in test_crawl_hostile.py).

Every case: one line on stderr, exit 2 (never 1, never a traceback), nothing of the user's
deleted or overwritten, no half-written result that looks complete, no empty folder left behind.
"""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from camkit.errors import CamkitError
from helpers import snapshot

TRAIN = ("--epochs", "1", "--size", "16", "--bs", "8", "--arch", "resnet18", "--no-pretrained")


def one_line(code, err, message):
    """Exit 2 and one error line, the last on stderr (progress lines may come before it)."""
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and message in errors[0], err
    assert "Traceback" not in err


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (16, 16), (i * 40, 100 if cls == "a" else 0, 0)).save(root / cls / f"{i}.png")
    return root


# ---------------------------------------------------------------- train: never clobber, never half-save

@pytest.mark.parametrize("user_files", [["model.pth"], ["history.csv", "loss.png"], ["notes.txt"],
                                        ["valid.json", "sub/deep.txt"], ["model.json", "model.pth"]])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_train_refuses_a_folder_that_is_not_a_run(cli, data, tmp_path, user_files, overwrite):
    out = tmp_path / "mine"
    for name in user_files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(f"the user's {name}")
    before = snapshot(out)
    code, _, err = cli("train", data, *TRAIN, "--out", out, *overwrite)
    one_line(code, err, "was not written by camkit" if "model.json" in user_files else "holds no camkit run")
    assert snapshot(out) == before


@pytest.mark.parametrize("failure,message", [("crash", "simulated failure"), ("diverge", "training diverged"),
                                             ("disk", "cannot write the run")])
def test_a_failed_retrain_leaves_the_previous_run_whole(cli, data, tmp_path, monkeypatch, failure, message):
    out = tmp_path / "run"
    code, _, err = cli("train", data, *TRAIN, "--out", out)
    assert code == 0, err
    before = snapshot(out)
    args = ("--lr", "1e6") if failure == "diverge" else ()
    if failure == "crash":
        import camkit.train.loop as t

        def crash(*a, **k):
            raise CamkitError("simulated failure after the fit")

        monkeypatch.setattr(t, "predict", crash)
    elif failure == "disk":  # the staged write itself fails, half-way through the run's files
        import camkit.core.plots as plots

        def full(*a, **k):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(plots, "plot_confusion", full)
    code, _, err = cli("train", data, *TRAIN, "--out", out, "--overwrite", *args)
    one_line(code, err, message)
    assert snapshot(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".camkit")]


def test_a_diverging_run_saves_nothing(cli, data, tmp_path):
    out = tmp_path / "new"
    code, _, err = cli("train", data, *TRAIN, "--out", out, "--lr", "1e6")
    one_line(code, err, "training diverged")
    assert not out.exists()  # the folder this command created is removed again, being empty


@pytest.mark.parametrize("lr", ["nan", "inf", "-1", "0"])
def test_learning_rate_must_be_a_positive_number(cli, data, tmp_path, lr):
    code, _, err = cli("train", data, *TRAIN, "--out", tmp_path / "r", "--lr", lr)
    one_line(code, err, "--lr must be a positive number")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("bs", ["1", "0"])
def test_batch_of_one_is_a_user_error(cli, data, tmp_path, bs):
    code, _, err = cli("train", data, "--epochs", "1", "--size", "16", "--no-pretrained", "--bs", bs,
                       "--out", tmp_path / "r")
    one_line(code, err, "--bs must be at least 2")


def test_training_inside_the_dataset_is_refused_and_outputs_there_are_not_classes(cli, data, tmp_path, monkeypatch):
    monkeypatch.chdir(data)
    code, _, err = cli("train", ".", *TRAIN)  # the default --out runs/<name> lands inside the data
    one_line(code, err, "is inside the data folder")
    assert not (data / "runs").exists()
    run = data / "runs" / "old"
    run.mkdir(parents=True)
    (run / "model.json").write_text("{}")
    (data / "_notes").mkdir()
    (data / "_notes" / "x.png").write_bytes((data / "a" / "0.png").read_bytes())
    code, out, err = cli("train", ".", *TRAIN, "--out", tmp_path / "r", "--json")
    assert code == 0, err
    assert "skipping folder 'runs': it holds camkit output" in err and "skipping folder '_notes'" in err
    assert json.loads(out)["classes"] == ["a", "b"]


def test_json_output_is_only_json_even_when_libraries_print(cli, data, tmp_path, monkeypatch):
    import camkit.train.models as models

    real = models._make_backbone

    def noisy(*a, **k):
        print('Downloading: "https://download.pytorch.org/models/resnet18.pth"')
        return real(*a, **k)

    monkeypatch.setattr(models, "_make_backbone", noisy)
    code, out, err = cli("train", data, *TRAIN, "--out", tmp_path / "r", "--json")
    assert code == 0, err
    assert json.loads(out)["arch"] == "resnet18" and "Downloading" in err


def test_json_has_no_nan_or_infinity():
    from camkit.cli._options import finite

    assert json.dumps(finite({"a": float("nan"), "b": [1.0, float("inf")], "c": "x"}), allow_nan=False) \
        == '{"a": null, "b": [1.0, null], "c": "x"}'


# ---------------------------------------------------------------- run files someone else wrote

@pytest.mark.parametrize("edit,message", [
    (lambda m: m.pop("classes"), "field 'classes'"),
    (lambda m: m.update(classes="bag"), "field 'classes'"),
    (lambda m: m.update(classes=["bag", "bag"]), "field 'classes'"),
    (lambda m: m.update(size="32"), "field 'size'"),
    (lambda m: m.update(size=10 ** 9), "field 'size'"),
    (lambda m: m.update(stats=[[0.5, 0.5], [1, 1, 1]]), "field 'stats'"),
    (lambda m: m.update(stats=[[0.5] * 3, [0, 0, 0]]), "field 'stats'"),
    (lambda m: m.update(arch=""), "field 'arch'"),
    (lambda m: m.update(head="mlp"), "field 'head'"),
    (lambda m: m.update(stride=7), "field 'stride'"),
    (lambda m: m.update(format="camkit-model/9"), "is not a camkit model description"),
    (lambda m: m.clear(), "is not a camkit model description"),
])
def test_malformed_model_json_is_a_user_error(cli, run_copy, canvas_dir, tmp_path, edit, message):
    meta = json.loads((run_copy / "model.json").read_text())
    edit(meta)
    (run_copy / "model.json").write_text(json.dumps(meta))
    img = sorted(canvas_dir.glob("bag/*.png"))[0]
    code, _, err = cli("cam", img, "--model", run_copy, "--out", tmp_path / "c")
    one_line(code, err, message)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '"text"'])
def test_model_json_that_is_not_an_object_is_a_user_error(cli, run_copy, tmp_path, content):
    (run_copy / "model.json").write_text(content)
    code, _, err = cli("report", run_copy)
    one_line(code, err, "model.json")


@pytest.mark.parametrize("hostile", ["../outside.png", "/etc/hostname", "a/../../outside.png", "link/x.png", ""])
def test_valid_json_paths_stay_inside_the_data_root(cli, run_copy, tmp_path, hostile):
    meta = json.loads((run_copy / "model.json").read_text())
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path, target_is_directory=True)
    meta["data_root"] = str(root)
    (run_copy / "model.json").write_text(json.dumps(meta))
    record = {"file": hostile, "label": meta["classes"][0], "pred": meta["classes"][0], "prob": 0.9, "loss": 0.1}
    (run_copy / "valid.json").write_text(json.dumps([record]))
    code, _, err = cli("report", run_copy)
    one_line(code, err, "valid.json' entry")
    assert "leaves its folder" in err or "is not a relative file name" in err


@pytest.mark.parametrize("name,content,message", [
    ("valid.json", "{}", "must be a list"),
    ("valid.json", '[{"file": "a.png"}]', "malformed record"),
    ("valid.json", "[oops", "not valid JSON"),
    ("history.csv", "epoch,train_loss\nx,y\n", "not a camkit history"),
])
def test_malformed_run_files_are_user_errors_for_report(cli, run_copy, name, content, message):
    (run_copy / name).write_text(content)
    code, _, err = cli("report", run_copy)
    one_line(code, err, message)


@pytest.mark.parametrize("field", ["overlay", "heatmap", "map"])
@pytest.mark.parametrize("hostile", ["../../secret.png", "/etc/hostname"])
def test_cams_jsonl_paths_stay_inside_their_folder(cli, run_copy, field, hostile):
    (run_copy / "cams").mkdir()
    rec = {"image": "/x.png", "pred": "bag", "prob": 0.5, "target": "bag", "method": "cam", "peak_xy": [0, 0],
           field: hostile}
    (run_copy / "cams" / "cams.jsonl").write_text(json.dumps(rec) + "\n")
    code, _, err = cli("report", run_copy)
    one_line(code, err, "leaves its folder")


def test_report_does_not_depend_on_the_working_folder(tiny_run, tmp_path, monkeypatch):
    from camkit.report import build

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    page = build(run).read_text()
    assert page.count("class='strip'") == 2 and "no longer under" not in page


def test_report_says_when_the_dataset_moved_and_takes_its_new_place(tiny_run, canvas_dir, tmp_path):
    from camkit.report import build

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    meta = json.loads((run / "model.json").read_text())
    meta["data_root"] = str(tmp_path / "moved-away")
    (run / "model.json").write_text(json.dumps(meta))
    assert "are no longer under" in build(run).read_text()
    page = build(run, data_root=canvas_dir).read_text()
    assert "no longer under" not in page and page.count("class='strip'") == 2


@pytest.mark.parametrize("target", ["/proc/camkit-report.html", "/proc/nope/r.html"])
def test_unwritable_report_target_is_a_user_error(tiny_run, target):
    from camkit.report import build

    with pytest.raises(CamkitError, match="cannot write the report"):
        build(tiny_run, out=target)


# ---------------------------------------------------------------- cam: the user's files stay theirs

@pytest.mark.parametrize("theirs", ["index.html", "cams.jsonl", "00000_0000_overlay.png"])
def test_cam_never_replaces_a_users_file(cli, tiny_run, canvas_dir, tmp_path, theirs):
    out = tmp_path / "mine"
    out.mkdir()
    (out / theirs).write_text("the user's own")
    img = sorted(canvas_dir.glob("bag/*.png"))[0]
    code, _, err = cli("cam", img, "--model", tiny_run, "--out", out)
    one_line(code, err, "was not written by camkit")
    assert (out / theirs).read_text() == "the user's own" and len(list(out.iterdir())) == 1


def test_cam_may_rewrite_its_own_folder_and_write_beside_other_files(cli, tiny_run, canvas_dir, tmp_path):
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"the user's photo")
    img = sorted(canvas_dir.glob("bag/*.png"))[0]
    for _ in range(2):
        code, _, err = cli("cam", img, "--model", tiny_run, "--out", out)
        assert code == 0, err
    assert (out / "holiday.jpg").read_bytes() == b"the user's photo" and (out / "cams.jsonl").exists()


@pytest.mark.parametrize("args,message", [
    (("--out", "/proc/camkit-cams"), "cannot write to output folder"),
    (("--layer", "1.2"), "not a spatial map"),
    (("--alpha", "1.5"), "--alpha must be between 0 and 1"),
    (("--colormap", "rainbowz"), "unknown colormap"),
    (("--bs", "0"), "--bs must be at least 1"),
])
def test_cam_bad_options_leave_no_folder(cli, tiny_run, canvas_dir, tmp_path, args, message):
    img = sorted(canvas_dir.glob("bag/*.png"))[0]
    out = ["--out", tmp_path / "c"] if "--out" not in args else []
    code, _, err = cli("cam", img, "--model", tiny_run, *out, *args)
    one_line(code, err, message)
    assert not (tmp_path / "c").exists()


def test_an_unreadable_named_image_leaves_no_folder(cli, tiny_run, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    code, _, err = cli("cam", tmp_path / "bad.png", "--model", tiny_run, "--out", tmp_path / "c")
    one_line(code, err, "not a readable image")
    assert not (tmp_path / "c").exists()


def test_a_huge_image_is_drawn_at_a_capped_size(tiny_run, tmp_path):
    """9400 x 9400 pixels (a small PNG): the overlay is capped at 2048 px, the peak is still in
    original pixels, and the map file keeps the layer's resolution."""
    from camkit.explain import cam
    from camkit.core.render import MAX_SIDE

    side = 9400
    img = np.full((side, side), 90, np.uint8)
    img[100:1500, 7000:9000] = 255
    Image.fromarray(img).save(tmp_path / "huge.png")
    assert (tmp_path / "huge.png").stat().st_size < 1_000_000
    (rec,) = cam([tmp_path / "huge.png"], model=tiny_run, out=tmp_path / "c", quiet=True)
    assert Image.open(tmp_path / "c" / rec.overlay).size == (MAX_SIDE, MAX_SIDE)
    saved = np.load(tmp_path / "c" / rec.map)
    assert saved.shape == (4, 4) and saved.dtype == np.float32
    iy, ix = np.unravel_index(saved.argmax(), saved.shape)  # the peak's map cell, in original pixels
    cell = side / 4
    assert ix * cell - cell / 2 <= rec.peak_xy[0] <= (ix + 1) * cell + cell / 2
    assert iy * cell - cell / 2 <= rec.peak_xy[1] <= (iy + 1) * cell + cell / 2


# ---------------------------------------------------------------- cam-eval: never lose a saved evaluation

@pytest.mark.parametrize("methods,message", [(",", "--methods is empty"), (" , ", "--methods is empty"),
                                             ("cam,magic", "unknown method 'magic'")])
def test_cam_eval_without_methods_writes_nothing(cli, run_copy, canvas_dir, methods, message):
    code, _, err = cli("cam-eval", canvas_dir / "boxes.json", "--model", run_copy, "--methods", methods)
    one_line(code, err, message)
    assert not (run_copy / "cam_eval.json").exists()


def test_cam_eval_steps_must_be_positive(cli, run_copy, canvas_dir):
    code, _, err = cli("cam-eval", canvas_dir / "boxes.json", "--model", run_copy, "--steps", "0")
    one_line(code, err, "--steps and --bs must be at least 1")


def test_a_subset_evaluation_never_replaces_a_larger_one(cli, run_copy, canvas_dir):
    base = ("cam-eval", canvas_dir / "boxes.json", "--model", run_copy, "--steps", "2", "--valid-only")
    assert cli(*base, "--methods", "cam")[0] == 0
    full = json.loads((run_copy / "cam_eval.json").read_text())
    code, out, _ = cli(*base, "--limit", "2", "--methods", "gradcam")  # a method not saved yet: saved
    assert code == 0 and "not saved over" not in out
    code, out, _ = cli(*base, "--limit", "2", "--methods", "cam,gradcam")  # cam's 16 images stay
    assert code == 0 and out.splitlines()[-1].endswith("cam_eval.json: cam")
    saved = json.loads((run_copy / "cam_eval.json").read_text())
    assert saved["cam"] == full["cam"] and saved["gradcam"]["images"] == 2


@pytest.mark.parametrize("hostile", ["../outside.png", "/etc/hostname"])
def test_boxes_paths_stay_inside_the_image_root(cli, run_copy, tmp_path, hostile):
    (tmp_path / "boxes.json").write_text(json.dumps({hostile: [0, 0, 1, 1]}))
    code, _, err = cli("cam-eval", tmp_path / "boxes.json", "--model", run_copy)
    one_line(code, err, "leaves its folder")


# ---------------------------------------------------------------- course and calc

def test_regression_plot_into_a_new_folder(cli, tmp_path):
    code, _, err = cli("course", "regression", "--plot", tmp_path / "new" / "deeper" / "fit.png")
    assert code == 0, err
    assert (tmp_path / "new" / "deeper" / "fit.png").stat().st_size > 1000


@pytest.mark.parametrize("expr", ["GroupNorm(0,0)", "GroupNorm(3,4)", "Linear(-1,2)", "Conv2d(1,1,-3)",
                                  "Linear(10**9,1)", "Dropout(2.0)"])
def test_calc_params_rejects_impossible_layers(cli, expr):
    code, _, err = cli("calc", "params", expr)
    one_line(code, err, expr)


def test_no_traceback_on_an_unwritable_course_folder(cli):
    code, _, err = cli("course", "mnist", "--dataset", "digits", "--epochs", "1", "--limit", "64",
                       "--test-limit", "32", "--out", "/proc/camkit-course")
    one_line(code, err, "cannot write")


def test_a_retrain_keeps_the_users_files_beside_the_run(cli, data, tmp_path):
    """camkit's temp files have their own prefix; a user's '.tmp-' or '.x.tmp' files, notes and
    CAM folders beside a run survive a retrain with --overwrite."""
    out = tmp_path / "run"
    assert cli("train", data, *TRAIN, "--out", out)[0] == 0
    mine = {".tmp-notes.txt": "mine", ".model.json.tmp": "mine too", "notes.md": "my notes"}
    for name, text in mine.items():
        (out / name).write_text(text)
    code, _, err = cli("train", data, *TRAIN, "--out", out, "--overwrite", "--seed", "1")
    assert code == 0, err
    assert all((out / n).read_text() == t for n, t in mine.items())


def test_hidden_and_temp_files_are_neither_trained_on_nor_explained(cli, data, tmp_path, tiny_run):
    from camkit.core.images import list_images

    shutil.copy(data / "a" / "0.png", data / "a" / ".camkit-tmp-1234-000007.png")  # a killed crawl's leftover
    (data / "b" / ".thumbs").mkdir()
    shutil.copy(data / "b" / "0.png", data / "b" / ".thumbs" / "0.png")
    code, out, err = cli("train", data, *TRAIN, "--out", tmp_path / "r", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["n_train"] + summary["n_valid"] == 12
    assert len(list_images([data])) == 12


# ---------------------------------------------------------------- found by the review of this change

def test_a_class_folder_linking_outside_the_dataset_is_skipped(cli, data, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "c"
    shutil.copytree(data / "a", elsewhere)
    (data / "c").symlink_to(elsewhere, target_is_directory=True)
    (data / "b" / "outside.png").symlink_to(elsewhere / "0.png")
    code, out, err = cli("train", data, *TRAIN, "--out", tmp_path / "r", "--json")
    assert code == 0, err
    assert "skipping folder 'c': a link leading outside the data folder" in err
    summary = json.loads(out)
    assert summary["classes"] == ["a", "b"] and summary["n_train"] + summary["n_valid"] == 12


def test_a_class_with_one_image_is_a_user_error(cli, data, tmp_path):
    for f in sorted((data / "b").iterdir())[1:]:
        f.unlink()
    code, _, err = cli("train", data, *TRAIN, "--out", tmp_path / "r")
    one_line(code, err, "class 'b' has 1 readable image(s); at least 2 are needed")


def test_a_retrain_moves_the_old_evaluation_aside(cli, data, tmp_path):
    out = tmp_path / "run"
    assert cli("train", data, *TRAIN, "--out", out)[0] == 0
    (out / "cam_eval.json").write_text(json.dumps({"cam": {"images": 9, "pointing_game": 1.0}}))
    assert cli("train", data, *TRAIN, "--out", out, "--overwrite")[0] == 0
    assert not (out / "cam_eval.json").exists()
    assert json.loads((out / "cam_eval.previous.json").read_text())["cam"]["images"] == 9


def test_a_cam_run_that_fails_part_way_does_not_look_complete(cli, tiny_run, canvas_dir, tmp_path):
    out = tmp_path / "c"
    good = sorted(canvas_dir.glob("bag/*.png"))[:2]
    assert cli("cam", *good, "--model", tiny_run, "--out", out)[0] == 0
    (tmp_path / "zz-broken.png").write_bytes(b"\x89PNG broken")
    code, _, err = cli("cam", *good, tmp_path / "zz-broken.png", "--model", tiny_run, "--out", out)
    one_line(code, err, "not a readable image")
    assert not (out / "cams.jsonl").exists() and not (out / "index.html").exists()


def test_report_embeds_images_only_never_a_linked_file(run_copy, tmp_path):
    from camkit.report import build

    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-TOKEN")
    (run_copy / "loss.png").unlink()
    (run_copy / "loss.png").symlink_to(secret)
    page = build(run_copy).read_text()
    assert "loss.png is not a readable image" in page
    import base64
    import re

    blobs = [base64.b64decode(b) for b in re.findall(r"base64,([A-Za-z0-9+/=]+)", page)]
    assert not any(b"TOP-SECRET-TOKEN" in b for b in blobs)


def test_report_escapes_a_hostile_summary(run_copy):
    from camkit.report import build

    meta = json.loads((run_copy / "model.json").read_text())
    meta["summary"].update(n_train="<script>alert(1)</script>", valid_accuracy="high", skipped="x",
                           arch="<img src=x onerror=alert(1)>")
    (run_copy / "model.json").write_text(json.dumps(meta))
    page = build(run_copy).read_text()
    assert "<script>alert" not in page and "<img src=x" not in page and "&lt;script&gt;" in page


@pytest.mark.parametrize("layer,message", [("0.6", "use --method gradcam for another layer"),
                                           ("1.0", "not a spatial map")])
def test_exact_cam_on_a_layer_it_cannot_read(cli, tiny_run, canvas_dir, tmp_path, layer, message):
    img = sorted(canvas_dir.glob("bag/*.png"))[0]
    code, _, err = cli("cam", img, "--model", tiny_run, "--method", "cam", "--layer", layer, "--out", tmp_path / "c")
    one_line(code, err, message)


def test_the_demo_never_removes_a_users_boxes_folder(tmp_path):
    from camkit.demo import demo

    images = tmp_path / "demo" / "images"
    (images / "mine").mkdir(parents=True)
    (images / "boxes.json").write_text("{}")
    (images / "mine" / "photo.jpg").write_bytes(b"the user's")
    with pytest.raises(CamkitError, match="is not a camkit demo dataset"):
        demo(out=tmp_path / "demo", quiet=True)
    assert (images / "mine" / "photo.jpg").read_bytes() == b"the user's"


def test_a_failed_command_removes_only_the_empty_folders_it_made(cli, data, tmp_path):
    out = tmp_path / "new" / "deeper" / "run"
    code, _, err = cli("train", data, *TRAIN, "--out", out, "--lr", "1e6")
    one_line(code, err, "training diverged")
    assert not (tmp_path / "new").exists() and tmp_path.exists()


# ---------------------------------------------------------------- a malformed launcher environment

def camkit_process(*args, env: dict | None = None, timeout: float = 120, **kw):
    """`python -m camkit ARGS` as a user runs it, in its own process: (exit code, stdout, stderr)."""
    import os
    import subprocess
    import sys

    full = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "CAMKIT_DEBUG")}
    done = subprocess.run([sys.executable, "-m", "camkit", *map(str, args)], env={**full, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, **kw)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("env,name", [({"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
                                      ({"WORLD_SIZE": "2", "RANK": "0x"}, "RANK='0x'")])
def test_a_malformed_launcher_variable_is_one_line_and_version_still_answers(tmp_path, env, name):
    from camkit import __version__

    code, out, err = camkit_process("--version", env=env)
    assert (code, out, err) == (0, f"camkit {__version__}\n", "")
    code, out, err = camkit_process("predict", tmp_path / "x.png", "--model", tmp_path / "run", env=env)
    one_line(code, err, f"environment variable {name} is not an integer")


# ---------------------------------------------------------------- JSON nested deeper than any parser should follow

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("target", ["model.json", "valid.json", "decisions"])
def test_deeply_nested_json_is_a_one_line_refusal(cli, run_copy, canvas_dir, tmp_path, target):
    if target == "decisions":
        data = shutil.copytree(canvas_dir, tmp_path / "data")
        before = snapshot(data)
        (tmp_path / "d.json").write_text(DEEP)
        code, _, err = cli("clean", run_copy, "--data", data, "--apply", tmp_path / "d.json")
        assert snapshot(data) == before
    else:
        (run_copy / target).write_text(DEEP)
        code, _, err = cli("report", run_copy)
    one_line(code, err, "not a readable decisions file" if target == "decisions" else "is not valid JSON")


def test_a_deeply_nested_manifest_line_is_skipped_like_any_unreadable_line(cli, tmp_path):
    """A manifest line that is not JSON (a kill can cut one) is not a record: the others count."""
    from fake_engine import encode, smooth_image

    out = tmp_path / "crawl"
    (out / "cats").mkdir(parents=True)
    (out / "cats" / "000001.jpg").write_bytes(encode(smooth_image(700)))
    record = {"keyword": "cats", "slug": "cats", "engine": "bing", "url": "http://a.test/1.jpg", "status": "ok",
              "file": "cats/000001.jpg", "sha256": "ab", "phash": "00ff", "license": "CC0 1.0"}
    (out / "manifest.jsonl").write_text(DEEP + "\n" + json.dumps(record) + "\n")
    code, out_text, err = cli("credits", out)
    assert code == 0 and err == "", err
    assert out_text.rstrip().splitlines()[-1] == "1 CC0 1.0"


# ---------------------------------------------------------------- files that are not files, or far too large

@pytest.mark.parametrize("command", ["predict", "clean --apply", "cam-eval"])
def test_a_fifo_named_on_the_command_line_is_refused_at_once(tiny_run, canvas_dir, tmp_path, command):
    import os
    import time

    fifo = tmp_path / ("x.png" if command == "predict" else "x.json")
    os.mkfifo(fifo)   # nothing ever writes to it: reading it would wait forever
    args = {"predict": ("predict", fifo, "--model", tiny_run),
            "clean --apply": ("clean", tiny_run, "--data", canvas_dir, "--apply", fifo),
            "cam-eval": ("cam-eval", fifo, "--model", tiny_run)}[command]
    start = time.monotonic()
    code, _, err = camkit_process(*args, timeout=60)
    one_line(code, err, f"'{fifo}' is not a regular file")
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_named_as_an_image_is_refused_before_any_read(device):
    from camkit.core.images import open_rgb

    with pytest.raises(CamkitError, match=f"'{device}' is not a regular file") as caught:
        open_rgb(device)
    assert "\n" not in str(caught.value)


def test_an_image_over_the_size_cap_is_refused_unread(tmp_path):
    from camkit.core.images import MAX_IMAGE_BYTES

    big = tmp_path / "big.png"
    with open(big, "wb") as f:   # sparse: no disk used
        f.truncate(MAX_IMAGE_BYTES + 1)
    assert _refusal_peak(big, "over camkit's limit of 1.2 GB for an image") < 1_000_000


def _refusal_peak(path, message: str) -> int:
    """Peak bytes Python allocated while open_rgb refused `path` with `message`."""
    import tracemalloc

    from camkit.core.images import open_rgb

    tracemalloc.start()
    try:
        with pytest.raises(CamkitError, match=message):
            open_rgb(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_file_that_is_no_image_is_refused_without_being_read_whole(tmp_path):
    junk = tmp_path / "junk.png"
    with open(junk, "wb") as f:   # 400 MB of zeros, sparse
        f.truncate(400_000_000)
    assert _refusal_peak(junk, "not a readable image") < 16_000_000


# ---------------------------------------------------------------- Ctrl-C: exit 130, one line, whatever was running

def interrupted_after(args: list, ready: str, serving: int | None = None, timeout: float = 240):
    """Start `python -m camkit ARGS`, send SIGINT once a line it prints starts with `ready` (and,
    with `serving`, 2 s after that loopback port answers), and return (exit code, its stderr)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import threading
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "CAMKIT_DEBUG")}
    proc = subprocess.Popen([sys.executable, "-m", "camkit", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen, lines = threading.Event(), {"out": [], "err": []}

    def watch(stream, name):
        for line in stream:
            lines[name].append(line)
            if line.startswith(ready):
                seen.set()

    threads = [threading.Thread(target=watch, args=(s, n), daemon=True)
               for s, n in ((proc.stdout, "out"), (proc.stderr, "err"))]
    for t in threads:
        t.start()
    try:
        assert seen.wait(timeout), "".join(lines["err"])
        deadline = time.monotonic() + timeout
        while serving is not None:
            try:
                socket.create_connection(("127.0.0.1", serving), timeout=1).close()
                time.sleep(2)   # past the launch, into serving (a Ctrl-C during start-up always exited 130)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "".join(lines["err"])
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    for t in threads:
        t.join(5)
    return code, "".join(lines["err"])


def test_ctrl_c_after_an_epoch_exits_130_and_keeps_the_partial_run(data, tmp_path):
    out = tmp_path / "run"
    code, err = interrupted_after(["train", data, "--epochs", "400", "--size", "16", "--bs", "4", "--arch", "resnet18",
                                   "--no-pretrained", "--out", out], ready="epoch 1/")
    assert code == 130, err
    last = err.splitlines()[-1]
    assert last.startswith("error: training interrupted after ") and last.endswith(
        f" of 400 epochs; the partial run in '{out}' is marked incomplete"), err
    assert "Traceback" not in err and (out / "model.json").is_file()


def test_ctrl_c_stops_the_serving_app_with_exit_130(tiny_run):
    pytest.importorskip("gradio", reason="camkit[app] (gradio) is not installed")
    from helpers import free_port

    port = free_port()
    code, err = interrupted_after(["app", tiny_run, "--port", port], ready="camkit app on http://", serving=port)
    assert code == 130 and err.splitlines()[-1] == "error: interrupted", err
    assert "Traceback" not in err


# ---------------------------------------------------------------- clean --apply / --undo: every move stays inside DATA

@pytest.fixture
def canvas(canvas_dir, tmp_path):
    """A private copy of the shared canvas dataset (classes bag and trouser) for moves."""
    return shutil.copytree(canvas_dir, tmp_path / "data")


def decisions_for(path, run, root, decisions: dict):
    """A decisions file as the review page downloads it, made for `run` over `root`."""
    path.write_text(json.dumps({"version": 1, "run": str(run.resolve()), "data_root": str(root.resolve()),
                                "decisions": decisions}))
    return path


@pytest.mark.parametrize("link, points, action", [
    ("_rejected", "outside", "delete"), ("_rejected/cleaned", "outside", "delete"),
    ("_rejected/cleaned/bag", "outside", "delete"), ("_rejected/cleaned", "inside", "delete"),
    ("trouser", "outside", "relabel:trouser"), ("trouser", "inside", "relabel:trouser")])
def test_apply_refuses_a_destination_through_a_symlink(cli, tiny_run, canvas, tmp_path, link, points, action):
    """A folder on the way to a destination swapped for a link (out of DATA, or elsewhere in it)
    would carry the user's files where the log does not say: refused before anything moves."""
    elsewhere = tmp_path / "elsewhere" if points == "outside" else canvas / "_store"
    if link == "trouser":
        shutil.move(canvas / "trouser", elsewhere)
    else:
        elsewhere.mkdir()
        (canvas / link).parent.mkdir(parents=True, exist_ok=True)
    (canvas / link).symlink_to(elsewhere, target_is_directory=True)
    before, outside = snapshot(canvas), snapshot(elsewhere)
    d = decisions_for(tmp_path / "d.json", tiny_run, canvas, {"bag/0000.png": action})
    code, _, err = cli("clean", tiny_run, "--data", canvas, "--apply", d)
    one_line(code, err, "symbolic link")
    assert snapshot(canvas) == before and snapshot(elsewhere) == outside and not (canvas / "clean.jsonl").exists()


def test_undo_refuses_to_move_back_through_a_symlink(cli, tiny_run, canvas, tmp_path):
    """A class folder swapped for a link after an apply: undo moves nothing, says why in one line."""
    d = decisions_for(tmp_path / "d.json", tiny_run, canvas, {"bag/0000.png": "delete"})
    assert cli("clean", tiny_run, "--data", canvas, "--apply", d)[0] == 0
    shutil.move(canvas / "bag", canvas / "_store")
    (canvas / "bag").symlink_to(canvas / "_store", target_is_directory=True)
    before = snapshot(canvas)
    code, _, err = cli("clean", tiny_run, "--data", canvas, "--undo")
    one_line(code, err, "symbolic link")
    assert snapshot(canvas) == before


# ---------------------------------------------------------------- clean --apply / --undo: a kill loses nothing

# `python -c KILLER SIGNAL before|after DATA camkit-args...`: the camkit command, with os.replace
# sending SIGNAL to its own process at the first move of a file under DATA, just before or just
# after the move (the window between a move and its log line).
KILLER = """
import os, signal, sys
sig, when, root = getattr(signal, sys.argv[1]), sys.argv[2], os.path.realpath(sys.argv[3])
real = os.replace

def replace(src, dst, *args, **kw):
    if os.path.realpath(src).startswith(root + os.sep):
        if when == "before":
            os.kill(os.getpid(), sig)
        real(src, dst, *args, **kw)
        os.kill(os.getpid(), sig)
    return real(src, dst, *args, **kw)

os.replace = replace
sys.argv = ["camkit", *sys.argv[4:]]
from camkit.cli import main
main()
"""


def killed_at_a_move(sig: str, when: str, root, *args) -> int:
    """Exit status of `camkit ARGS` killed by `sig` at its first move of a file under `root`."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "CAMKIT_DEBUG")}
    done = subprocess.run([sys.executable, "-c", KILLER, sig, when, *map(str, (root, *args))], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    return done.returncode


CLEAN_DECISIONS = {"bag/0000.png": "delete", "bag/0001.png": "relabel:trouser", "trouser/0002.png": "delete"}


@pytest.mark.parametrize("sig, when", [("SIGKILL", "after"), ("SIGKILL", "before"), ("SIGINT", "after")])
def test_an_apply_killed_at_a_move_is_undone_whole_or_completed_by_a_rerun(cli, tiny_run, canvas, tmp_path, sig, when):
    """kill -9 or Ctrl-C just before or after the first move: --undo restores every file, and a
    re-run of the same --apply completes (each decision carried out once), then undoes whole."""
    before = snapshot(canvas)
    d = decisions_for(tmp_path / "d.json", tiny_run, canvas, CLEAN_DECISIONS)
    code = killed_at_a_move(sig, when, canvas, "clean", tiny_run, "--data", canvas, "--apply", d)
    assert code == (-9 if sig == "SIGKILL" else 130)
    killed = shutil.copytree(canvas, tmp_path / "killed")

    code, _, err = cli("clean", tiny_run, "--data", killed, "--undo")
    assert code == 0 and "Traceback" not in err, err
    assert {k: v for k, v in snapshot(killed).items() if k != "clean.jsonl"} == before

    code, _, err = cli("clean", tiny_run, "--data", canvas, "--apply", d)
    assert code == 0 and "Traceback" not in err, err
    after = snapshot(canvas)
    assert not set(CLEAN_DECISIONS) & set(after)
    assert after["_rejected/cleaned/bag/0000.png"] == before["bag/0000.png"]
    assert after["trouser/0001-1.png"] == before["bag/0001.png"]
    assert after["_rejected/cleaned/trouser/0002.png"] == before["trouser/0002.png"]
    assert len(after) == len(before) + 1   # the log; nothing copied twice, nothing lost
    code, _, err = cli("clean", tiny_run, "--data", canvas, "--undo")
    assert code == 0, err
    assert {k: v for k, v in snapshot(canvas).items() if k != "clean.jsonl"} == before


def test_a_log_line_cut_by_a_crash_does_not_swallow_the_next_move(cli, tiny_run, canvas, tmp_path):
    """A last line cut short (a crash mid-write) is ended before the next record, which would
    otherwise be glued to it, unreadable, and its move never undone."""
    before = snapshot(canvas)
    (canvas / "clean.jsonl").write_text('{"id": 0, "from": "bag/00')
    d = decisions_for(tmp_path / "d.json", tiny_run, canvas, {"bag/0000.png": "delete"})
    assert cli("clean", tiny_run, "--data", canvas, "--apply", d)[0] == 0
    code, _, err = cli("clean", tiny_run, "--data", canvas, "--undo")
    assert code == 0, err
    assert {k: v for k, v in snapshot(canvas).items() if k != "clean.jsonl"} == before


# ---------------------------------------------------------------- clean --apply: stale and foreign decisions files

def test_a_gone_file_set_to_keep_does_not_block_the_apply(cli, tiny_run, canvas, tmp_path):
    d = decisions_for(tmp_path / "d.json", tiny_run, canvas, {"bag/gone.png": "keep", "bag/0000.png": "delete"})
    code, _, err = cli("clean", tiny_run, "--data", canvas, "--apply", d)
    assert code == 0 and "Traceback" not in err, err
    assert (canvas / "_rejected/cleaned/bag/0000.png").is_file() and not (canvas / "bag/0000.png").exists()


def test_a_gone_file_to_be_moved_is_reported_in_one_line_and_the_others_applied(cli, tiny_run, canvas, tmp_path):
    """A file moved away by the user (or a stale entry after an earlier apply): one warning
    line naming it, and every other decision still carried out."""
    shutil.move(canvas / "bag/0001.png", tmp_path / "taken-by-the-user.png")
    d = decisions_for(tmp_path / "d.json", tiny_run, canvas, {
        "bag/0000.png": "delete", "bag/0001.png": "relabel:trouser", "trouser/0002.png": "delete"})
    code, _, err = cli("clean", tiny_run, "--data", canvas, "--apply", d)
    assert code == 0 and "Traceback" not in err, err
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "'bag/0001.png'" in warned[0] and "skipped" in warned[0], err
    assert (canvas / "_rejected/cleaned/bag/0000.png").is_file()
    assert (canvas / "_rejected/cleaned/trouser/0002.png").is_file()


@pytest.mark.parametrize("field", ["run", "data_root"])
def test_decisions_made_for_another_run_or_dataset_are_refused(cli, tiny_run, canvas, canvas_dir, tmp_path, field):
    """The page and the app record the run and data folder a decisions file was made for; one
    made for another is refused in one line (its names would pick other files), nothing moved."""
    other = {"run": tmp_path / "another-run", "data_root": canvas_dir}[field]
    made_for = {"run": (other, canvas), "data_root": (tiny_run, other)}[field]
    d = decisions_for(tmp_path / "d.json", *made_for, {"bag/0000.png": "delete"})
    before = snapshot(canvas)
    code, _, err = cli("clean", tiny_run, "--data", canvas, "--apply", d)
    one_line(code, err, f"was made for the {'run' if field == 'run' else 'data folder'} '{other.resolve()}'")
    assert snapshot(canvas) == before and not (canvas / "clean.jsonl").exists()


# ---------------------------------------------------------------- no writer puts its output in a class folder (issue 26 item 9)

@pytest.fixture
def run_on_canvas(run_copy, canvas):
    """The tiny run, its model.json pointing at the private `canvas` copy as its data root."""
    meta = json.loads((run_copy / "model.json").read_text())
    (run_copy / "model.json").write_text(json.dumps({**meta, "data_root": str(canvas.resolve())}))
    return run_copy


@pytest.mark.parametrize("writer", ["cam --out", "app --export-space", "clean --out", "train --out", "crawl --out",
                                    "demo --out"])
def test_no_writer_puts_output_inside_a_class_folder(cli, run_on_canvas, canvas, writer):
    """cams.jsonl or model.json in DATA/bag made the next training skip the whole class (a
    warning only), a Space's examples of every class were taken as bags: each is one line, exit
    2, nothing written into the dataset."""
    before = snapshot(canvas)
    target = canvas / "bag" / "out"
    args = {"cam --out": ("cam", canvas / "trouser", "--model", run_on_canvas, "--out", target),
            "app --export-space": ("app", run_on_canvas, "--export-space", target),
            "clean --out": ("clean", run_on_canvas, "--top", "2", "--out", target / "clean.html"),
            "train --out": ("train", canvas.parent / "elsewhere", *TRAIN, "--out", target),
            # refused before any request: the engine's address is never reached
            "crawl --out": ("crawl", "cats", "--engine", "openverse", "--endpoint", "openverse=http://127.0.0.1:9",
                            "--out", target),
            "demo --out": ("demo", "--out", target)}[writer]
    if writer == "train --out":   # another dataset, so that only the class-folder rule can refuse it
        shutil.copytree(canvas, canvas.parent / "elsewhere")
    code, _, err = cli(*args)
    one_line(code, err, f"is inside the class folder 'bag' of the dataset '{canvas.resolve()}'")
    assert snapshot(canvas) == before and not target.exists()


def test_export_run_refuses_a_class_folder_of_the_learners_data(canvas):
    """A fastai Learner over DATA (never fitted: the guard comes before any prediction)."""
    from fastai.vision.all import ImageDataLoaders, Learner, Resize
    from torch import nn

    import camkit.fastai  # noqa: F401  (adds export_run)

    dls = ImageDataLoaders.from_folder(canvas, valid_pct=0.25, item_tfms=Resize(16), bs=8, num_workers=0)
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)))
    before = snapshot(canvas)
    with pytest.raises(CamkitError, match="export_run path .* is inside the class folder 'trouser'"):
        learn.export_run(canvas / "trouser" / "run")
    assert snapshot(canvas) == before


def test_a_dataset_is_recognised_by_its_shape_and_its_known_root(tmp_path, canvas):
    from camkit.core.files import class_folder_of

    # by shape: every visible sub-folder holds images; camkit outputs, '_' folders and new names are no class
    assert class_folder_of(canvas / "bag" / "cams" / "deep") == (canvas.resolve() / "bag", canvas.resolve())
    assert class_folder_of(canvas / "bag") == (canvas.resolve() / "bag", canvas.resolve())
    (canvas / "run").mkdir()
    (canvas / "run" / "model.json").write_text("{}")
    for allowed in (canvas / "new" / "x", canvas / "_rejected" / "x", canvas / "run" / "cams", canvas, tmp_path):
        assert class_folder_of(allowed) is None, allowed
    # a home folder: pictures in some sub-folders, none in Documents, is not a dataset
    home = tmp_path / "home"
    for name in ("Pictures", "Downloads", "Documents"):
        (home / name).mkdir(parents=True)
    for name in ("Pictures", "Downloads"):
        Image.new("RGB", (4, 4)).save(home / name / "photo.png")
    (home / "Documents" / "cv.txt").write_text("me")
    assert class_folder_of(home / "Pictures" / "cams") is None
    # a known root: a class whose images sit one level down counts too
    (home / "Documents" / "scans").mkdir()
    Image.new("RGB", (4, 4)).save(home / "Documents" / "scans" / "page.png")
    assert class_folder_of(home / "Documents" / "cams") is None
    assert class_folder_of(home / "Documents" / "cams", roots=[home]) == (home.resolve() / "Documents", home.resolve())


def test_export_space_at_a_dangling_symlink_is_one_line(cli, tiny_run, tmp_path):
    (tmp_path / "space").symlink_to(tmp_path / "nowhere")
    code, _, err = cli("app", tiny_run, "--export-space", tmp_path / "space")
    one_line(code, err, f"'{tmp_path / 'space'}' is a symbolic link to nothing")
    assert not (tmp_path / "nowhere").exists() and (tmp_path / "space").is_symlink()


# ---------------------------------------------------------------- the environment refuses a write (issue 26 item 15)

def _refuse(code: int, filename: str | None = None):
    import os as _os

    def refused(*args, **kwargs):
        raise OSError(code, _os.strerror(code), *([filename] if filename else []))
    return refused


@pytest.mark.parametrize("case", ["train --cache", "cam --out", "app --export-space", "space permissions"])
def test_a_full_disk_or_refused_permission_is_one_line_not_an_internal_error(cli, data, tiny_run, canvas_dir,
                                                                             tmp_path, monkeypatch, case):
    """Disk full (ENOSPC) or a quota (EDQUOT) while writing, a permission refused: one line
    naming what was being written (or the file refused), exit 2 (it was exit 1, 'internal
    error OSError'), nothing half-written left."""
    import errno

    import camkit.data.cache
    import camkit.explain
    import camkit.core.files
    import camkit.share.space

    target = tmp_path / "out"
    patch, code, args, message = {
        "train --cache": ((camkit.data.cache._Crc32Sink, "write"), errno.ENOSPC,
                          ("train", data, *TRAIN, "--cache", target),
                          f"no space left on device writing the decode cache in '{target}'"),
        "cam --out": ((camkit.explain, "atomic_write"), errno.ENOSPC,
                      ("cam", canvas_dir / "bag" / "0000.png", "--model", tiny_run, "--out", target),
                      f"no space left on device writing CAMs to '{target}'"),
        "app --export-space": ((camkit.share.space, "pixels_only"), errno.EDQUOT,
                               ("app", tiny_run, "--export-space", target),
                               f"disk quota exceeded writing the Space '{target}'"),
        "space permissions": ((camkit.share.space, "_copy_package"), errno.EACCES,  # no wrapper: the boundary's line
                              ("app", tiny_run, "--export-space", target),
                              f"permission denied at '{tmp_path / 'camkit' / 'files.py'}'"),
    }[case]
    monkeypatch.setattr(*patch, _refuse(code, str(tmp_path / "camkit" / "files.py") if code == errno.EACCES else None))
    status, _, err = cli(*args)
    one_line(status, err, message)
    left = [p.name for p in target.rglob("*")] if target.exists() else []
    assert not [n for n in left if n.endswith((".u8", ".json", ".png", ".html"))], left


def test_only_the_environments_refusals_are_said_in_words():
    import errno

    from camkit.cli._boundary import error_code

    assert error_code(OSError(errno.EACCES, "Permission denied", "/data/x")) == (
        "permission denied at '/data/x' (check the permissions or choose another folder)", 2)
    assert error_code(OSError(errno.EROFS, "Read-only file system", "/mnt/x")) == (
        "read-only file system at '/mnt/x' (choose a writable folder)", 2)
    assert error_code(OSError(errno.ENOSPC, "No space left on device"))[1] == 2
    line, code = error_code(FileNotFoundError(errno.ENOENT, "No such file or directory", "x"))
    assert code == 1 and line.startswith("internal error FileNotFoundError")   # a bug stays a bug
