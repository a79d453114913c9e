"""camkit app: the compute behind the app, the Gradio server through gradio_client and a real
browser, the cleaner tab's decisions, and the exported Hugging Face Space started with
`python app.py`."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from camkit.errors import CamkitError
from helpers import free_port, served, snapshot

gradio = pytest.importorskip("gradio", reason="camkit[app] (gradio) is not installed")
from gradio_client import Client, handle_file  # noqa: E402

from camkit.app import APP_MAX_PIXELS, CamApp, Cleaner  # noqa: E402


@pytest.fixture(scope="module")
def camapp(tiny_run):
    return CamApp(tiny_run)


@pytest.fixture(scope="module")
def served_data(canvas_dir, tmp_path_factory):
    """A private copy of the dataset for the served cleaner tab (its decisions land there)."""
    root = tmp_path_factory.mktemp("served") / "data"
    shutil.copytree(canvas_dir, root)
    return root


@pytest.fixture(scope="module")
def server(tiny_run, served_data):
    """The app of the shared tiny run, served on a free loopback port for this module."""
    with served(tiny_run, served_data) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


@pytest.fixture
def bomb(tmp_path):
    path = tmp_path / "bomb.png"
    side = int(APP_MAX_PIXELS ** 0.5) + 100
    Image.new("1", (side, side)).save(path)   # a few kB on disk, over the cap decoded
    return path


# ---------------------------------------------------------------- compute (no server)

def test_explain_gives_probabilities_and_an_overlay(camapp, canvas_dir):
    image = canvas_dir / "bag" / "0000.png"
    answer = camapp.explain(image, "gradcam", "bag", 0.4, "viridis")
    assert set(answer.probs) == {"bag", "trouser"} and abs(sum(answer.probs.values()) - 1) < 1e-4
    assert min(answer.overlay.size) >= 256       # a 32-px canvas is scaled up to be legible
    assert "gradcam for class **bag**" in answer.caption


def test_overlay_changes_with_alpha(camapp, canvas_dir):
    image = canvas_dir / "trouser" / "0001.png"
    none = camapp.explain(image, "cam", "pred", 0.0, "jet").overlay
    full = camapp.explain(image, "cam", "pred", 1.0, "jet").overlay
    picture = Image.open(image).convert("RGB").resize(none.size, Image.BICUBIC)
    assert list(none.getdata()) == list(picture.getdata())       # alpha 0: the image itself
    assert list(full.getdata()) != list(none.getdata())


def test_contrast_is_signed_and_names_both_classes(camapp, canvas_dir):
    image = canvas_dir / "bag" / "0002.png"
    answer = camapp.explain(image, "cam", "contrast", 1.0, "jet", signed=True)
    pred = max(answer.probs, key=answer.probs.get)
    other = ({"bag", "trouser"} - {pred}).pop()
    assert f"class **{pred}** and not **{other}**" in answer.caption and "evidence for" in answer.caption
    plain = camapp.explain(image, "cam", "pred", 1.0, "jet")
    assert list(answer.overlay.getdata()) != list(plain.overlay.getdata())


def test_methods_offer_exact_cam_only_for_the_cam_head(camapp, tiny_fastai_run):
    assert camapp.methods()[0] == "cam"
    assert "cam" not in CamApp(tiny_fastai_run).methods()
    assert CamApp(tiny_fastai_run).methods()[0] == "gradcam"


def test_examples_are_held_out_images_of_each_class(camapp, tiny_run):
    from camkit.train.run import read_valid

    held_out = {str(r.file) for r in read_valid(tiny_run)}
    examples = camapp.examples(per_class=2)
    assert len(examples) == 4 and set(examples) <= held_out
    assert {os.path.basename(os.path.dirname(e)) for e in examples} == {"bag", "trouser"}


@pytest.mark.parametrize("content, message", [(b"not an image at all", "not a readable image"),
                                              (None, "too large")])
def test_bad_uploads_are_one_sentence(camapp, tmp_path, bomb, content, message):
    path = bomb if content is None else tmp_path / "upload.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CamkitError, match=message) as info:
        camapp.explain(path)
    assert str(tmp_path) not in str(info.value)           # the upload is named, not its server path


def test_unknown_method_is_refused(camapp, canvas_dir):
    with pytest.raises(CamkitError, match="not available"):
        camapp.explain(canvas_dir / "bag" / "0000.png", "nosuchcam")


# ---------------------------------------------------------------- the cleaner tab

def test_cleaner_saves_each_decision_and_applies_and_undoes(tiny_run, canvas_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(canvas_dir, data)
    before = snapshot(data)
    cleaner = Cleaner(CamApp(tiny_run), data)
    shown = cleaner.rank(shown=5)
    assert len(shown) == 5 and all(i.suspect.rel in i.caption for i in shown)
    assert shown[0].suspect.loss >= shown[-1].suspect.loss
    first, second = shown[0].suspect.rel, shown[1].suspect.rel
    other = "trouser" if second.startswith("bag/") else "bag"
    cleaner.decide(first, "delete")
    cleaner.decide(second, f"relabel:{other}")
    saved = json.loads((data / "clean-decisions.json").read_text())
    assert saved["decisions"] == {first: "delete", second: f"relabel:{other}"}   # on disk at once
    assert "2 file(s) moved" in cleaner.apply()
    assert not (data / first).exists() and (data / "_rejected" / "cleaned" / first).is_file()
    assert not (data / "clean-decisions.json").exists()            # archived beside, not lost
    assert len(list(data.glob("clean-decisions.applied-*.json"))) == 1
    with pytest.raises(CamkitError, match="no longer in the data folder"):
        cleaner.decide(first, "keep")                              # shown before the apply, moved since
    assert "2 file(s) moved back" in cleaner.undo()
    after = snapshot(data)
    assert {k: v for k, v in after.items() if k in before} == before


def test_cleaner_reloads_decisions_made_earlier(tiny_run, canvas_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(canvas_dir, data)
    cleaner = Cleaner(CamApp(tiny_run), data)
    shown = cleaner.rank(shown=3)
    cleaner.decide(shown[2].suspect.rel, "delete")
    again = Cleaner(CamApp(tiny_run), data)
    shown = again.rank(shown=3)
    assert again.details(shown[2])[3] == "delete" and again.details(shown[0])[3] == "keep"


def test_cleaner_shows_the_saved_out_of_sample_ranking_with_its_estimate(run_copy, canvas_dir, tmp_path):
    """`clean --folds` saved a ranking (built here directly: no fold training): the tab shows it
    in its order with the estimate and the weak-model warning; a file moved since is left out;
    for another data folder, or a tampered file, the tab ranks in sample and says how to get
    out-of-sample scores."""
    from camkit.clean import RANKING, Estimate, Ranking, Suspect, save_ranking

    data = tmp_path / "data"
    shutil.copytree(canvas_dir, data)
    rels = ["trouser/0003.png", "bag/0001.png", "bag/0002.png"]
    ranking = Ranking(Suspect(data / r, r, r.split("/")[0], "bag", 0.8, 1.6, "mislabelled?", 0.9 - i / 10, fold=i,
                              label_quality=0.2, ood=0.6, quality=("blank",) if i else ()) for i, r in enumerate(rels))
    ranking.estimate = Estimate(3, 2, 1, 3, 2, 30.0, accuracy=0.55, baseline=0.5)   # weak: not 15 points above
    save_ranking(ranking, run_copy, data)
    app = CamApp(run_copy)
    cleaner = Cleaner(app, data)
    shown, note = cleaner.review(shown=2)
    assert [i.suspect.rel for i in shown] == rels[:2] and shown[0].overlay is not None
    assert "About **3** images to review" in note and "out-of-sample from 3 folds" in note
    assert "out-of-sample accuracy 55% is not 15 points above" in note
    assert "2 image(s) with an image-quality or leakage finding" in note
    assert "held out in fold 0: label quality 0.200, OOD 0.600" in cleaner.details(shown[0])[2]
    (data / rels[0]).rename(data / "bag" / "moved.png")                           # relabelled since the ranking
    shown, note = cleaner.review(shown=5)
    assert [i.suspect.rel for i in shown] == rels[1:] and "1 ranked image(s) moved or removed" in note
    assert "blank" in cleaner.details(shown[0])[2]
    assert Cleaner(app, canvas_dir)._saved()[0] is None                          # another data root: not used
    (run_copy / RANKING).write_text(json.dumps({"format": "camkit-clean-ranking/1", "data_root": str(data)}))
    shown, note = cleaner.review(shown=2)                                         # tampered: in sample, said
    assert "In-sample ranking" in note and "camkit clean RUN --folds 3" in note and "About" not in note
    assert "RUN/clean_ranking.json was not used" in note and str(tmp_path) not in note
    assert len(shown) == 2 and shown[0].suspect.fold is None


@pytest.mark.parametrize("rel", ["../outside.png", "/etc/hostname", "bag/no-such.png"])
def test_cleaner_decides_only_for_files_inside_the_data_folder(camapp, served_data, rel):
    (served_data.parent / "outside.png").write_bytes((served_data / "bag" / "0000.png").read_bytes())
    cleaner = Cleaner(camapp, served_data)
    with pytest.raises(CamkitError, match="no longer in the data folder"):
        cleaner.decide(rel, "delete")
    assert rel not in cleaner.decisions.decisions


# ---------------------------------------------------------------- the server

def test_server_answers_through_gradio_client(client, canvas_dir):
    label, overlay, caption = client.predict(handle_file(str(canvas_dir / "bag" / "0002.png")), "gradcam",
                                             "trouser", 0.5, "jet", False, api_name="/explain")
    assert label["label"] in ("bag", "trouser")
    assert abs(sum(c["confidence"] for c in label["confidences"]) - 1) < 1e-3
    assert Image.open(overlay).size[0] >= 256 and "class **trouser**" in caption


@pytest.mark.parametrize("bad, message", [("bomb", "too large"), ("junk", "junk.png: not a readable image")])
def test_a_bad_upload_is_a_message_and_the_server_keeps_serving(client, bomb, canvas_dir, tmp_path, bad, message):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG but not really")
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(str(bomb if bad == "bomb" else junk)), "gradcam", "pred", 0.5, "jet", False,
                       api_name="/explain")
    label, _, _ = client.predict(handle_file(str(canvas_dir / "bag" / "0000.png")), "cam", "pred", 0.5, "jet", False,
                                 api_name="/explain")
    assert label["label"] in ("bag", "trouser")


def test_server_binds_loopback_only(server):
    port = int(server.rstrip("/").rsplit(":", 1)[1])
    listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
    if listening:
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening


def test_app_answers_in_a_real_browser(browser, server, canvas_dir, tmp_path):
    """Upload an image in headless Chromium: the overlay image and the probabilities appear."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    wait = WebDriverWait(browser, 60)
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#camkit-input input[type=file]"))
    upload.send_keys(str(canvas_dir / "bag" / "0003.png"))
    overlay = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#camkit-overlay img"))
    wait.until(lambda d: overlay.get_attribute("naturalWidth") not in (None, "0"))
    assert int(overlay.get_attribute("naturalWidth")) >= 256
    probs = wait.until(lambda d: d.find_element(By.ID, "camkit-probs").text or None)
    assert "bag" in probs and "trouser" in probs


def test_the_header_says_the_training_verdict_in_a_real_browser(browser, server, camapp):
    """Said before any map: the run's verdict (the shared tiny run does not beat its baseline)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    text = WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "camkit-verdict").text or None)
    assert f"Training verdict: {camapp.verdict.status}" in text and camapp.verdict.reason[:40] in text
    if not camapp.verdict.usable:
        assert "The maps of an unusable model explain nothing" in text


def test_cleaner_tab_saves_a_click_in_a_real_browser(browser, server, served_data):
    """Rank, pick the most suspicious image, click 'delete': the decision is on disk."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    wait = WebDriverWait(browser, 90)
    tab = wait.until(lambda d: next((b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                                     if b.text.strip() == "Clean"), None))
    tab.click()
    wait.until(lambda d: d.find_element(By.ID, "camkit-rank")).click()
    thumbs = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#camkit-suspects button img") or None)
    thumbs[0].click()
    choice = wait.until(lambda d: next((lab for lab in d.find_elements(By.CSS_SELECTOR, "#camkit-decision label")
                                        if lab.text.strip() == "delete"), None))
    choice.click()
    status = wait.until(lambda d: d.find_element(By.ID, "camkit-status").text or None)
    assert status.startswith("saved:")
    saved = json.loads((served_data / "clean-decisions.json").read_text())
    assert list(saved["decisions"].values()) == ["delete"]
    assert (served_data / next(iter(saved["decisions"]))).is_file()      # decided, nothing moved yet


# ---------------------------------------------------------------- the CLI

def test_app_without_gradio_says_how_to_install(cli, tiny_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)
    code, _, err = cli("app", tiny_run)
    assert code == 2 and "pip install 'camkit[app]'" in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [(["--port", "0"], "--port"), (["--port", "70000"], "--port"),
                                           (["--host", ""], "--host")])
def test_bad_app_options_are_one_line_errors(cli, tiny_run, args, message):
    code, _, err = cli("app", tiny_run, *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_app_of_a_missing_run_is_one_line(cli, tmp_path):
    code, _, err = cli("app", tmp_path / "nope")
    assert code == 2 and "does not exist" in err


# ---------------------------------------------------------------- the Space

@pytest.fixture(scope="module")
def space(tiny_run, tmp_path_factory):
    from camkit.share.space import export_space

    return export_space(tiny_run, tmp_path_factory.mktemp("spaces") / "space")


def test_space_holds_the_app_the_model_and_the_header(space):
    assert {p.name for p in space.iterdir()} == {"app.py", "requirements.txt", "README.md", "model", "examples",
                                                 "camkit"}
    header = space.joinpath("README.md").read_text().split("---")[1]
    assert 'sdk: "gradio"' in header and f'sdk_version: "{gradio.__version__}"' in header
    assert 'app_file: "app.py"' in header
    reqs = space.joinpath("requirements.txt").read_text().split()
    assert f"gradio=={gradio.__version__}" in reqs and any(r.startswith("fastai") for r in reqs)
    assert len(list((space / "examples").iterdir())) == 4


def test_space_model_has_no_local_paths(space, tiny_run):
    meta = json.loads((space / "model" / "model.json").read_text())
    assert meta["data_root"] is None and "out" not in meta["summary"]
    assert str(tiny_run.parent) not in json.dumps(meta)
    assert (space / "model" / "model.pth").read_bytes() == (tiny_run / "model.pth").read_bytes()


def test_space_is_never_written_into_an_existing_folder(cli, tiny_run, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    code, _, err = cli("app", tiny_run, "--export-space", tmp_path / "mine")
    assert code == 2 and "already exists" in err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".camkit-tmp-")]


def test_exported_space_starts_with_python_app_py(space, canvas_dir):
    """`python app.py` in the folder, with camkit imported from the folder's own copy."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "PYTHONPATH": "", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        client = _connect(f"http://127.0.0.1:{port}/", proc)
        label, overlay, _ = client.predict(handle_file(str(canvas_dir / "trouser" / "0000.png")), "cam", "pred",
                                           0.5, "jet", False, api_name="/explain")
        assert label["label"] in ("bag", "trouser") and os.path.isfile(overlay)
        probe = "import camkit; print(camkit.__file__)"
        where = subprocess.run([sys.executable, "-c", probe], cwd=space, env=env, capture_output=True, text=True)
        assert where.stdout.strip().startswith(str(space))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _connect(url: str, proc, seconds: int = 120) -> Client:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("python app.py exited: " + proc.stdout.read()[-2000:])
        try:
            return Client(url, verbose=False)
        except Exception:  # noqa: BLE001  not listening yet
            time.sleep(1)
    pytest.fail(f"python app.py did not answer on {url} within {seconds} s")


def test_serving_writes_nothing_into_the_package(server):
    import camkit

    package = os.path.dirname(camkit.__file__)
    assert not [f for f in os.listdir(package) if f.endswith(".pyi")]


def test_space_examples_carry_pixels_but_no_metadata(run_copy, canvas_dir, tmp_path):
    """EXIF (camera, software path) and PNG text chunks of the author's images stay home."""
    from PIL import Image, PngImagePlugin

    from camkit.train.run import read_valid
    from camkit.share.space import export_space

    data = Path(shutil.copytree(canvas_dir, tmp_path / "data"))
    meta = json.loads((run_copy / "model.json").read_text())
    meta["data_root"] = str(data)
    (run_copy / "model.json").write_text(json.dumps(meta))
    exif = Image.Exif()
    exif[0x010F], exif[0x0131] = "Alice's camera", "/home/alice/secret-tool"
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "/home/alice/holiday")
    for record in read_valid(run_copy):
        Image.open(record.file).convert("RGB").save(record.file, exif=exif, pnginfo=text)
    space = export_space(run_copy, tmp_path / "space")
    examples = sorted((space / "examples").iterdir())
    assert len(examples) == 4 and all(p.suffix == ".png" for p in examples)
    for p in examples:
        assert b"alice" not in p.read_bytes().lower()
        with Image.open(p) as im:
            assert not im.info.get("exif") and not getattr(im, "text", {}) and im.mode == "RGB"
