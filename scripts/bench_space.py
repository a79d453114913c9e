"""The light Space (`--engine onnx`) against today's Space (torch + fastai): cold start and the
install size of their requirements.

    python scripts/bench_space.py [--repeat 3] [--run RUN] [--root DIR] [--reports DIR]

Cold start: `python app.py` in each exported Space folder, as a Space starts it, until its
first answer to /explain (gradio_client, one example image): process start, imports, model
load, server up, one explanation. The two Spaces alternate (light, today's, light, ...), so the
machine's load falls on both alike; the median of --repeat rounds counts, with the first
answer's probabilities compared. The run is a resnet18 at 128 px trained for one epoch on a
small canvas set (or --run). Memory: the app process's peak RSS up to its first answer.

Install size: with --reports, the `pip install --dry-run --ignore-installed --report` JSON of
each Space's requirements (light.json, full.json) and a folder `wheels/` with every wheel they
name: the number of packages and the sum of their wheel sizes.

Prints the load average before and after: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def make_run(root: Path) -> Path:
    from camkit.data.folders import make_canvas_folder
    from camkit.train.loop import train

    data, run = root / "data", root / "run"
    if not run.is_dir():
        make_canvas_folder(data, ["trouser", "bag"], 30, canvas=128, item_range=(48, 64), seed=1)
        train(data, arch="resnet18", epochs=1, size=128, bs=16, out=run, pretrained=False, quiet=True)
    return run


def cold_start(space: Path, example: Path) -> tuple[float, float, dict]:
    """Seconds from `python app.py` to its first /explain answer, the app process's peak RSS
    until then (MB, VmHWM), and the answer."""
    from gradio_client import Client, handle_file
    from helpers import free_port

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "PYTHONPATH": "", "GRADIO_ANALYTICS_ENABLED": "False"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{space}/app.py exited")
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # noqa: BLE001  not listening yet
                time.sleep(0.2)
        label, _, _ = client.predict(handle_file(str(example)), "cam", "pred", 0.5, "jet", False,
                                     api_name="/explain")
        seconds = time.perf_counter() - start
        peak = _peak_rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return seconds, peak, {c["label"]: c["confidence"] for c in label["confidences"]}


def _peak_rss(pid: int) -> float:
    """VmHWM of a running process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def install_size(report: Path, wheels: Path) -> tuple[int, float]:
    """(packages, MB of wheels) of a pip --report: each wheel found in `wheels/` or at its file:// URL."""
    items = json.loads(report.read_text())["install"]
    total = 0
    for item in items:
        url = item["download_info"]["url"]
        local = Path(urllib.parse.unquote(url[7:])) if url.startswith("file://") else \
            wheels / urllib.parse.unquote(url.rsplit("/", 1)[1])
        if not local.is_file():
            raise SystemExit(f"missing wheel {local.name} (pip download it into {wheels})")
        total += local.stat().st_size
    return len(items), total / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "camkit-bench-space")
    ap.add_argument("--reports", type=Path)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    from camkit.share.space import export_space

    args.root.mkdir(parents=True, exist_ok=True)
    run = args.run or make_run(args.root)
    spaces = {}
    for engine in ("onnx", "torch"):
        spaces[engine] = args.root / f"space-{engine}"
        if not spaces[engine].is_dir():
            export_space(run, spaces[engine], engine=engine)
    example = next((spaces["onnx"] / "examples").iterdir())
    times: dict[str, list[float]] = {"onnx": [], "torch": []}
    answers = {}
    for _ in range(args.repeat):
        for engine in ("onnx", "torch"):
            seconds, peak, answers[engine] = cold_start(spaces[engine], example)
            times[engine].append(seconds)
            print(f"{engine:5s} cold start {seconds:6.2f} s, peak RSS {peak:.0f} MB")
    light, full = statistics.median(times["onnx"]), statistics.median(times["torch"])
    diff = max(abs(answers["onnx"][c] - answers["torch"][c]) for c in answers["torch"])
    print(f"\ncold start to the first answer, median of {args.repeat}: light {light:.2f} s, today's {full:.2f} s, "
          f"ratio {full / light:.2f}x; probabilities differ by at most {diff:.1e}")
    for engine, space in spaces.items():
        on_disk = sum(f.stat().st_size for f in space.rglob("*") if f.is_file()) / 1e6
        print(f"{engine:5s} Space folder: {on_disk:.1f} MB; requirements: "
              + ", ".join((space / "requirements.txt").read_text().split()))
    if args.reports:
        for name in ("light", "full"):
            n, mb = install_size(args.reports / f"{name}.json", args.reports / "wheels")
            print(f"{name:5s} requirements: {n} packages, {mb:,.0f} MB of wheels")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
