"""Start-up of every camkit command as a user's shell runs it: whole processes, wall time, CPU
time and peak memory, against anchors and against earlier revisions of camkit, interleaved.

    python scripts/bench_startup.py [--repeat 5] [--rev e279818^ --rev HEAD~3] [--run RUN] [--root DIR]

Each row is one command line, `python -m camkit.cli ...` (what the `camkit` script runs), with
PYTHONPATH set to the checkout being timed: this one ("now") and, per --rev, a `git worktree` of
that revision under --root (so earlier code is timed with the same interpreter and packages).
Anchors in the same loop: `python -c pass` (the interpreter alone), `import icrawler` (what a
plain-icrawler script pays before its first request), `import torch` and `import torch,
fastai.vision.learner` (the floor of a command that loads a model). The inputs are built once
under --root: a small crawled folder (4 JPEGs in 2 classes, from the loopback engine of
tests/fake_engine.py, with its manifest) for verify and credits, and a tiny trained run
(resnet18, 32 px, 1 epoch, or --run) for cam and predict. Every round runs every row once, in
the same order, so the machine's load falls on all of them alike; the median of --repeat
rounds counts. A command that fails (an old revision that cannot read today's run) is shown as
failed, not timed. Prints the load average before and after, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ANCHORS = {
    "python -c pass": ["-c", "pass"],
    "import icrawler": ["-c", "import icrawler"],
    "import torch": ["-c", "import torch"],
    "import torch, fastai.vision.learner": ["-c", "import torch, fastai.vision.learner"],
}


def commands(data: Path, run: Path, image: Path, out: Path) -> dict[str, list[str]]:
    """name -> arguments after `camkit`."""
    return {
        "--help": ["--help"],
        "--version": ["--version"],
        "crawl --help": ["crawl", "--help"],
        "train --bogus 1 (error)": ["train", "--bogus", "1"],
        "cam x.jpg (no --model: error)": ["cam", "x.jpg"],
        "verify DATA": ["verify", str(data), "--min-size", "32"],
        "credits DATA": ["credits", str(data)],
        "predict one.png -m RUN": ["predict", str(image), "-m", str(run)],
        "cam one.png -m RUN": ["cam", str(image), "-m", str(run), "--out", str(out)],
    }


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, int]:
    """(wall s, user+sys CPU s, peak RSS MB, exit code) of one whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode


def worktree(rev: str, root: Path) -> Path:
    """A checkout of `rev` under root (made once per commit; `git worktree` shares this repository)."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    path = root / f"tree-{sha}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=REPO, check=True,
                       capture_output=True)
    return path


def crawled_folder(root: Path) -> Path:
    """4 JPEGs in 2 classes with their manifest, crawled once from the loopback engine (in a
    child process, so that this one stays small: a child's peak RSS starts from its parent's)."""
    data = root / "data"
    if (data / "manifest.jsonl").exists():
        return data
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r})\n"
            "from fake_engine import FakeEngine, encode, smooth_image\nfrom camkit.crawl import crawl\n"
            "with FakeEngine() as engine:\n"
            "    for k, keyword in enumerate(['cats', 'dogs']):\n"
            "        engine.result(keyword, *[engine.add(f'/{keyword}/{i}.jpg', encode(smooth_image(500 + 10 * k + i)))"
            " for i in range(2)])\n"
            f"    crawl(['cats', 'dogs'], max_num=2, out={str(data)!r}, endpoint=engine.endpoint, engine='bing', "
            "min_size=32, quiet=True)\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    return data


def tiny_run(root: Path) -> Path:
    """A resnet18 with the CAM head, 1 epoch at 32 px on 2 x 12 canvases (made once)."""
    run = root / "run"
    if (run / "model.json").exists():
        return run
    code = ("from camkit.data.folders import make_canvas_folder; from camkit.train.loop import train\n"
            f"make_canvas_folder({str(root / 'canvas')!r}, ['trouser', 'bag'], 12, canvas=32, item_range=(12, 16), seed=1)\n"
            f"train({str(root / 'canvas')!r}, arch='resnet18', epochs=1, size=32, bs=8, out={str(run)!r}, "
            "pretrained=False, aug='flip', quiet=True)")
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5, help="rounds; the median counts")
    p.add_argument("--rev", action="append", default=[], help="an earlier revision to time too (repeatable)")
    p.add_argument("--run", type=Path, help="a run folder for cam and predict (default: a tiny one made once)")
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "camkit-bench-startup")
    p.add_argument("--only", action="append", default=[], help="time only the commands whose name has this text")
    a = p.parse_args()
    a.root.mkdir(parents=True, exist_ok=True)
    data, run = crawled_folder(a.root), a.run or tiny_run(a.root)
    image = next((data / "cats").iterdir())
    trees = {"now": REPO, **{rev: worktree(rev, a.root) for rev in a.rev}}
    py = sys.executable
    rows: dict[tuple[str, str], list[tuple[float, float, float, int]]] = {}
    cmds = {k: v for k, v in commands(data, run, image, a.root / "cams").items()
            if not a.only or any(o in k for o in a.only)}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    for _ in range(a.repeat):
        for name, args in ANCHORS.items():
            rows.setdefault(("anchor", name), []).append(timed([py, *args], dict(os.environ)))
        for name, args in cmds.items():
            for label, tree in trees.items():
                env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "100"}
                rows.setdefault((label, name), []).append(timed([py, "-m", "camkit.cli", *args], env))
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"median of {a.repeat} interleaved rounds; python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"{'command':<36} {'camkit':<14} {'wall s':>7} {'cpu s':>6} {'RSS MB':>7} {'vs now':>7}")
    order = [("anchor", name) for name in ANCHORS] + [(label, name) for name in cmds for label in trees]
    for label, name in order:
        samples = rows[(label, name)]
        wall, cpu, rss = (statistics.median(s[i] for s in samples) for i in range(3))
        failed = sorted({s[3] for s in samples} - {0, 2})   # 2: the argument errors timed on purpose
        shown = f"{label} exit {failed[0]}" if failed else label
        ratio = "" if label in ("now", "anchor") else f"{wall / statistics.median(s[0] for s in rows[('now', name)]):6.2f}x"
        print(f"{name:<36} {shown:<14} {wall:>7.2f} {cpu:>6.2f} {rss:>7.0f} {ratio:>7}")

if __name__ == "__main__":
    main()
