"""The browser page (`camkit export RUN --web DIR`) against onnxruntime in Python on the same graph:
how fast a picture and webcam frames are explained in headless Chromium.

    python scripts/bench_web.py [--run RUN] [--seconds 10] [--root DIR]

The page is exported once under --root for the run (default: the resnet18 at 128 px that
scripts/bench_space.py trains). In Chromium (headless, one WebAssembly thread, as file:// allows)
the page explains a picture --repeat times (decode, squish, graph, overlay drawn) and then the
fake webcam for --seconds, reporting the frames per second the page shows. The anchor, in the
same run: onnxruntime's Python CPU session on the same graph with one intra-op thread
(batch 1), and the same with onnxruntime's default threads. Prints the load average: the
machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def browser():
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")),
                              options=options)
    driver.set_script_timeout(300)
    return driver


def page_times(driver, index: Path, picture: Path, repeat: int, seconds: float) -> tuple[float, list[float], float]:
    """(seconds to load the page and its model, per-picture seconds, webcam frames per second)."""
    start = time.perf_counter()
    driver.get(index.as_uri())
    driver.execute_async_script("const done = arguments[0]; window.camkitPage.ready.then(done, done)")
    load = time.perf_counter() - start
    data = picture.read_bytes()
    per = driver.execute_async_script("""
        const [bytes, n, done] = arguments;
        const file = new File([new Uint8Array(bytes)], 'picture.png', {type: 'image/png'});
        (async () => { const t = [];
          for (let i = 0; i < n; i++) { const s = performance.now(); await window.camkitPage.explainFile(file);
                                         t.push([(performance.now() - s) / 1000, window.camkitPage.timing]); }
          done(t); })();""", list(data), repeat)
    parts = {k: statistics.median(t[1][k] for t in per) for k in per[0][1]}
    print("page, one picture, median ms: " + ", ".join(f"{k} {v:.0f}" for k, v in parts.items()))
    per = [t[0] for t in per]
    driver.find_element("id", "webcam").click()
    time.sleep(seconds)
    fps = driver.execute_script("return window.camkitPage.fps")
    driver.find_element("id", "webcam").click()
    return load, per, fps


def python_times(graph: Path, size: int, repeat: int, threads: int | None) -> list[float]:
    import numpy as np

    from camkit.export.onnx import session

    sess = session(graph, threads)
    x = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
    sess.run(None, {"image": x})
    out = []
    for _ in range(repeat):
        s = time.perf_counter()
        sess.run(None, {"image": x})
        out.append(time.perf_counter() - s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path)
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "camkit-bench-space")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    from camkit.export.onnx import export_onnx
    from camkit.train.run import read_info, read_valid
    from camkit.share.web import export_web

    run = args.run or args.root / "run"
    page = args.root / "web"
    if not page.is_dir():
        done = export_web(run, page)
        print(f"page: {done.folder_bytes / 1e6:.1f} MB in {page}")
    graph = export_onnx(run, args.root / "bench-web.onnx").path
    size = read_info(run).size
    picture = read_valid(run)[0].file
    driver = browser()
    try:
        load, per, fps = page_times(driver, page / "index.html", picture, args.repeat, args.seconds)
    finally:
        driver.quit()
    one = python_times(graph, size, args.repeat, 1)
    default = python_times(graph, size, args.repeat, None)
    print(f"page load with its model: {load:.2f} s")
    print(f"page, one picture (decode, squish, graph, overlay): median {statistics.median(per) * 1000:.0f} ms")
    print(f"page, webcam: {fps:.1f} frames per second")
    print(f"onnxruntime in Python, graph only, batch 1: 1 thread {statistics.median(one) * 1000:.0f} ms, "
          f"default threads {statistics.median(default) * 1000:.0f} ms")
    print(f"page per picture / Python 1 thread: {statistics.median(per) / statistics.median(one):.2f}x")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
