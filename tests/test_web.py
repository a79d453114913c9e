"""camkit.share.web: the static page, opened from file:// in headless Chromium (no flag that loosens
file:// access), against camkit's own Python numbers for the same picture."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camkit.errors import CamkitError
from camkit.share.web import colormap_table, export_web

pytest.importorskip("onnxruntime", reason="camkit export --web needs camkit[onnx]")


@dataclass(frozen=True)
class Page:
    folder: Path
    page: Path
    printed: dict


@pytest.fixture(scope="module")
def page(tiny_run, tmp_path_factory):
    """`camkit export RUN --web DIR --json`, through the CLI."""
    from typer.testing import CliRunner

    from camkit.cli import app

    out = tmp_path_factory.mktemp("web") / "page"
    result = CliRunner().invoke(app, ["export", str(tiny_run), "--web", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)["web"]
    return Page(Path(printed["folder"]), Path(printed["page"]), printed)


@pytest.fixture(scope="module")
def chromium(page):
    """Chromium with the network log on and a fake webcam; the page loaded and its model ready."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("headless browser tests need Debian's chromium and chromium-driver (scripts/test.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900",
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    driver.set_script_timeout(120)
    try:
        driver.get(page.page.as_uri())
        assert driver.execute_async_script(
            "const done = arguments[0]; window.camkitPage.ready.then(() => done('ready'), e => done(String(e)))") == "ready"
        yield driver
    finally:
        driver.quit()


def _upload(driver, path):
    """Pick `path` in the page's file input; wait until the page has answered."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("window.camkitPage.done = false")
    driver.find_element("id", "file").send_keys(str(path))
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return window.camkitPage.done"))


@pytest.fixture(scope="module")
def picture(canvas_dir, tmp_path_factory):
    """A canvas item stretched to 45 x 29 px: not square, not the run's size, so the squish matters."""
    path = tmp_path_factory.mktemp("pic") / "bag.png"
    Image.open(canvas_dir / "bag" / "0003.png").convert("RGB").resize((45, 29), Image.BICUBIC).save(path)
    return path


@pytest.fixture(scope="module")
def answer(chromium, picture):
    _upload(chromium, picture)
    return chromium.execute_script(
        "const l = window.camkitPage.last; return {probs: l.probs, target: l.target, map: l.map, h: l.h, w: l.w,"
        " input: Array.from(l.input), H: l.heat.H, W: l.heat.W, heat: Array.from(l.heat.values)}")


@pytest.fixture(scope="module")
def python_side(tiny_run, picture, page):
    """camkit's numbers for the picture: its square (camkit.core.images), then camkit's torch model
    (probabilities, and the maps W . A its CAM combines) and the grid the page was given."""
    from camkit.export.onnx import torch_outputs
    from camkit.core.images import open_rgb, resize_square
    from camkit.train.run import load

    loaded = load(tiny_run, device="cpu")
    square = resize_square(open_rgb(picture), loaded.size)
    _, probs, maps = torch_outputs(loaded, square.transpose(2, 0, 1)[None].copy())
    config = json.loads((page.folder / "model.js").read_text().split("window.CAMKIT_CONFIG = ", 1)[1].rstrip(";\n"))
    return square, probs[0], maps[0], config["grid"]


def test_page_squishes_the_picture_as_camkit_does(answer, python_side):
    square, *_ = python_side
    assert np.array_equal(np.array(answer["input"], dtype=np.uint8), square.ravel())


def test_page_composites_transparency_on_white_as_camkit_does(chromium, answer, tmp_path):
    from camkit.core.images import open_rgb, resize_square

    pixels = np.random.default_rng(0).integers(0, 256, (29, 45, 4), dtype=np.uint8)   # every alpha level
    Image.fromarray(pixels, "RGBA").save(tmp_path / "clear.png")
    _upload(chromium, tmp_path / "clear.png")
    got = chromium.execute_script("return Array.from(window.camkitPage.last.input)")
    assert np.array_equal(np.array(got, dtype=np.uint8), resize_square(open_rgb(tmp_path / "clear.png"), 32).ravel())


def test_page_probabilities_and_map_equal_pythons(answer, python_side):
    _, probs, maps, _ = python_side
    assert np.allclose(answer["probs"], probs, atol=1e-5)       # torch's, in the browser
    k = int(np.argmax(probs))
    assert answer["target"] == k
    m = np.maximum(maps[k], 0)                                   # camkit.cam: ReLU, then min-max
    m = (m - m.min()) / (m.max() - m.min() + 1e-8)
    assert (answer["h"], answer["w"]) == m.shape and m.max() == 1.0
    assert np.allclose(np.reshape(answer["map"], m.shape), m, atol=1e-4)


def test_page_draws_the_map_where_camkit_geometry_places_its_cells(answer, python_side):
    import torch

    from camkit.core.geometry import Grid, upsample

    *_, g = python_side
    grid = Grid(tuple(g["stride"]), tuple(g["offset"]), tuple(g["size"]))
    cells = torch.tensor(answer["map"], dtype=torch.float32).view(1, answer["h"], answer["w"])
    want = upsample(cells, (answer["H"], answer["W"]), grid)[0].numpy()
    assert grid != Grid.footprint((answer["h"], answer["w"]), tuple(g["size"]))   # not plain resizing
    assert np.allclose(np.reshape(answer["heat"], want.shape), want, atol=1e-5)


def test_a_file_that_is_no_image_gives_a_message(chromium, answer, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not pixels")
    _upload(chromium, fake)
    status = chromium.find_element("id", "status")
    assert status.text == "notes.png: not a readable image (no known image format)"
    assert status.get_attribute("class") == "error"
    assert chromium.execute_script("return window.camkitPage.last") is None


def test_webcam_frames_are_explained_live_with_frames_per_second(chromium, answer):
    from selenium.webdriver.support.ui import WebDriverWait

    chromium.find_element("id", "webcam").click()                # Chromium's fake camera
    try:
        fps = WebDriverWait(chromium, 60).until(lambda d: d.execute_script("return window.camkitPage.fps"))
        assert fps > 0 and chromium.find_element("id", "fps").text.endswith("frames per second")
        last = chromium.execute_script("return window.camkitPage.last")
        assert len(last["probs"]) == 2 and abs(sum(last["probs"]) - 1) < 1e-5
    finally:
        chromium.find_element("id", "webcam").click()


def test_page_requests_nothing_outside_its_folder(chromium, answer, page):
    urls = {json.loads(e["message"])["message"]["params"]["request"]["url"]
            for e in chromium.get_log("performance")
            if json.loads(e["message"])["message"]["method"] == "Network.requestWillBeSent"}
    inside = page.folder.as_uri() + "/"
    assert {u for u in urls if u.startswith(inside)} >= {inside + f for f in ("index.html", "model.js", "ort-wasm.js")}
    assert all(u.startswith((inside, "blob:", "data:")) for u in urls), sorted(urls)


def test_cli_writes_the_page_and_says_what_it_wrote(page):
    files = {f.name: f.stat().st_size for f in page.folder.iterdir()}
    assert set(files) == {"index.html", "camkit-web.js", "model.js", "ort-bundle.js", "ort-wasm.js",
                          "LICENSE-onnxruntime-web.txt"}
    assert page.printed["folder_bytes"] == sum(files.values()) and page.printed["max_abs_diff"] < 1e-3
    assert files["model.js"] > page.printed["graph_bytes"] * 4 / 3      # the graph, as base64


def test_cli_refuses_an_existing_folder_in_one_line(tiny_run, tmp_path, cli):
    (tmp_path / "page").mkdir()
    code, _, err = cli("export", tiny_run, "--web", tmp_path / "page")
    assert code == 2 and err.strip() == f"error: --web '{tmp_path / 'page'}' already exists; --web writes a new folder"


def test_export_refuses_an_existing_folder(tiny_run, tmp_path):
    (tmp_path / "page").mkdir()
    with pytest.raises(CamkitError, match="already exists"):
        export_web(tiny_run, tmp_path / "page")
    assert list((tmp_path / "page").iterdir()) == []


def test_page_offers_the_apps_colormaps_but_the_diverging_one(page):
    from camkit.app import COLORMAPS
    from camkit.core.render import DIVERGING

    config = json.loads((page.folder / "model.js").read_text().split("window.CAMKIT_CONFIG = ", 1)[1].rstrip(";\n"))
    assert list(config["colormaps"]) == [c for c in COLORMAPS if c != DIVERGING]


def test_colormap_tables_match_camkits_colorize():
    from camkit.core.render import colorize

    heat = np.linspace(0, 1, 1001, dtype=np.float32)
    table = colormap_table("jet")
    index = np.minimum(len(table) - 1, (heat * len(table)).astype(int))
    assert np.array_equal(table[index], colorize(heat[None], "jet")[0])
