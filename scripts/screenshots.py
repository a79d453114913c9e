"""Screenshots for the docs, taken in headless Chromium (Debian chromium + chromium-driver):
the app's Explain tab after an upload, its Clean tab after ranking, and the offline cleaner page.

    .venv/bin/camkit demo --out demo           # a run to show (any run works)
    .venv/bin/python scripts/screenshots.py demo/run --out docs

The app is served on a free loopback port for the time of the shots; the cleaner page is
written to a temporary folder. Nothing in the run's dataset is changed.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
from pathlib import Path


def chromium():
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--allow-file-access-from-files", "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")),
                            options=options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shoot_app(driver, run: Path, out: Path) -> list[Path]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from camkit.app import CamApp, launch

    example = CamApp(run).examples(per_class=1)[0]
    port = free_port()
    blocks = launch(run, port=port, block=False)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#camkit-input input[type=file]")).send_keys(example)
        img = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#camkit-overlay img"))
        wait.until(lambda d: img.get_attribute("naturalWidth") not in (None, "0"))
        driver.save_screenshot(str(out / "app.png"))
        shots = [out / "app.png"]
        tab = next((b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == "Clean"),
                   None)
        if tab is not None:
            tab.click()
            wait.until(lambda d: d.find_element(By.ID, "camkit-rank")).click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#camkit-suspects button img") or None)
            driver.save_screenshot(str(out / "app-clean.png"))
            shots.append(out / "app-clean.png")
        return shots
    finally:
        blocks.close()


def shoot_clean_page(driver, run: Path, out: Path) -> Path:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from camkit.clean import rank, write_page

    with tempfile.TemporaryDirectory() as tmp:
        page = write_page(rank(run), run, Path(tmp) / "clean.html", top=12)
        driver.get(page.resolve().as_uri())
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        driver.save_screenshot(str(out / "clean-page.png"))
    return out / "clean-page.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder (e.g. demo/run from `camkit demo`)")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    driver = chromium()
    try:
        for shot in [*shoot_app(driver, args.run, args.out), shoot_clean_page(driver, args.run, args.out)]:
            print(shot)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
