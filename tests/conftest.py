"""Shared fixtures: a tiny canvas dataset and a tiny trained run, built once per session."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def canvas_dir(tmp_path_factory) -> Path:
    """40 trouser + 40 bag items on 32-px noisy canvases, with boxes.json."""
    from camkit.data.folders import make_canvas_folder

    root = tmp_path_factory.mktemp("canvas")
    make_canvas_folder(root, ["trouser", "bag"], 40, canvas=32, item_range=(12, 16), seed=1)
    return root


@pytest.fixture(scope="session")
def tiny_run(canvas_dir, tmp_path_factory) -> Path:
    """A resnet18 (output stride 8) with the CAM head, 2 epochs at 32 px."""
    from camkit.train.loop import train

    out = tmp_path_factory.mktemp("run") / "run"
    train(canvas_dir, arch="resnet18", epochs=2, size=32, bs=16, out=out, pretrained=False,
          stride=8, aug="flip", quiet=True)
    return out


@pytest.fixture(scope="session")
def tiny_fastai_run(canvas_dir, tmp_path_factory) -> Path:
    """The same data with fastai's default head (no exact CAM)."""
    from camkit.train.loop import train

    out = tmp_path_factory.mktemp("run_fastai") / "run"
    train(canvas_dir, arch="resnet18", epochs=1, size=32, bs=16, out=out, pretrained=False,
          head="fastai", aug="flip", quiet=True)
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """The tiny run copied, so that what a test writes into it does not reach the shared fixture."""
    import shutil

    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.fixture
def cli():
    """Invoke the typer app in-process; returns (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from camkit.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(a) for a in args])
        return result.exit_code, result.stdout, result.stderr

    return invoke


# ---------------------------------------------------------------- crawler tests (shared by
# tests/test_crawl.py and tests/test_crawl_hostile.py)

@pytest.fixture
def engine():
    """A loopback search engine (tests/fake_engine.py) on a free port of 127.0.0.1."""
    from fake_engine import FakeEngine

    with FakeEngine() as e:
        yield e


# ---------------------------------------------------------------- real-browser tests (test_app.py,
# test_clean.py): headless Chromium driven by selenium, skipped with the reason when missing

@pytest.fixture(scope="session")
def browser_downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="session")
def browser(browser_downloads):
    """A headless Chromium (Debian's chromium + chromium-driver) with downloads into a temp folder."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("headless browser tests need Debian's chromium and chromium-driver (scripts/test.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(browser_downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
