"""camkit crawl vs a plain icrawler script against the same loopback engine, each timed as a whole
process, as a user runs it (start-up included), at several latencies.

    python scripts/bench_crawl.py [--keywords 2] [--images 150] [--latency 0.02 0.1] [--threads 4]
                                  [--per-host 6] [--repeat 2] [--in-process]
                                  [--camkit-tree DIR]

The server (tests/fake_engine.py, 127.0.0.1 only, in this process) answers in Bing's result format
and adds the latency to every request. For each latency, --keywords classes of --images distinct
JPEGs (320 x 240) each are crawled by
- `python -m camkit.cli crawl KW1 KW2 ... --endpoint URL --engine bing --threads T` (what the
  `camkit` command runs), which also verifies, deduplicates and logs every file and keeps to its
  per-host limit (every image is on one host here: min(threads, --per-host) downloads at once);
- `python -c SCRIPT`: the icrawler script a user would write, one `BingImageCrawler(...).crawl`
  per keyword with the same thread count, its feeder pointed at the engine (the script imports
  icrawler and nothing else).
The two alternate (camkit, icrawler, camkit, ...) --repeat times per latency; the wall time of
each whole process counts, and the median of each. Prints images/s and the ratio
camkit / icrawler per latency, with the load average (the machine may be shared).
--in-process times the two crawls as library calls in this process instead (the figures of
earlier sections of docs/benchmarks.md): start-up is then left out.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_engine import FakeEngine, encode, smooth_image  # noqa: E402

# the plain-icrawler script a user would write: argv = endpoint, out, threads, max_num, keywords...
ICRAWLER_SCRIPT = """
import logging, sys
from icrawler.builtin import BingImageCrawler
from icrawler.builtin.bing import BingFeeder

endpoint, out, threads, max_num, keywords = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]

class LocalBingFeeder(BingFeeder):
    def feed(self, keyword, offset, max_num, filters=None):
        for i in range(offset, offset + max_num, 20):
            self.out_queue.put(f"{endpoint}/images/async?q={keyword}&first={i}")

for keyword in keywords:
    crawler = BingImageCrawler(feeder_cls=LocalBingFeeder, downloader_threads=threads, log_level=logging.CRITICAL,
                               storage={"root_dir": f"{out}/{keyword}"})
    crawler.crawl(keyword, max_num=max_num)
"""


def saved_files(out: Path) -> int:
    """Image files written under out (the manifest and hidden temp files are not images)."""
    return sum(1 for p in out.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def icrawler_process(endpoint: str, keywords: list[str], n: int, threads: int, out: Path) -> int:
    subprocess.run([sys.executable, "-c", ICRAWLER_SCRIPT, endpoint, str(out), str(threads), str(n), *keywords],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return saved_files(out)


def camkit_process(endpoint: str, keywords: list[str], n: int, threads: int, out: Path, per_host: int,
                   tree: Path | None = None) -> int:
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
    subprocess.run([sys.executable, "-m", "camkit.cli", "crawl", *keywords, "--max-num", str(n), "--out", str(out),
                    "--endpoint", endpoint, "--engine", "bing", "--threads", str(threads), "--per-host", str(per_host),
                    "--min-size", "32"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return saved_files(out)


def icrawler_call(endpoint: str, keywords: list[str], n: int, threads: int, out: Path) -> int:
    from icrawler.builtin import BingImageCrawler
    from icrawler.builtin.bing import BingFeeder

    class LocalBingFeeder(BingFeeder):
        def feed(self, keyword, offset, max_num, filters=None):
            for i in range(offset, offset + max_num, 20):
                self.out_queue.put(f"{endpoint}/images/async?q={keyword}&first={i}")

    for keyword in keywords:
        crawler = BingImageCrawler(feeder_cls=LocalBingFeeder, downloader_threads=threads,
                                   log_level=logging.CRITICAL, storage={"root_dir": str(out / keyword)})
        crawler.crawl(keyword, max_num=n)
    return saved_files(out)


def camkit_call(endpoint: str, keywords: list[str], n: int, threads: int, out: Path, per_host: int) -> int:
    from camkit.crawl import crawl

    summaries = crawl(keywords, max_num=n, out=out, endpoint=endpoint, engine="bing", threads=threads,
                      per_host=per_host, min_size=32, quiet=True)
    return sum(s.saved for s in summaries)


def one_latency(latency: float, a: argparse.Namespace) -> dict[str, list[tuple[int, float]]]:
    """name -> [(saved, seconds)] of each interleaved run at this latency."""
    keywords = [f"class{k}" for k in range(a.keywords)]
    ours, theirs = (camkit_call, icrawler_call) if a.in_process else (camkit_process, icrawler_process)
    tree = {"tree": a.camkit_tree} if a.camkit_tree else {}
    crawlers = {"camkit crawl": lambda *args: ours(*args, per_host=a.per_host, **tree), "icrawler": theirs}
    runs: dict[str, list[tuple[int, float]]] = {name: [] for name in crawlers}
    with FakeEngine(latency=latency, page_size=20) as engine:
        for k, keyword in enumerate(keywords):
            engine.result(keyword, *[engine.add(f"/{keyword}/{i}.jpg", encode(smooth_image(10_000 * (k + 1) + i,
                                                                                            (320, 240))))
                                     for i in range(a.images)])
        for _ in range(a.repeat):
            for name, fn in crawlers.items():
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    saved = fn(engine.endpoint, keywords, a.images, a.threads, Path(tmp) / "out")
                    runs[name].append((saved, time.perf_counter() - start))
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keywords", type=int, default=2, help="classes crawled in one command")
    p.add_argument("--images", type=int, default=150, help="images per class")
    p.add_argument("--latency", type=float, nargs="+", default=[0.02, 0.1], help="seconds added to every request")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--per-host", type=int, default=6, help="camkit's per-host limit (its default: 6)")
    p.add_argument("--repeat", type=int, default=2, help="interleaved runs per latency; the median counts")
    p.add_argument("--in-process", action="store_true", help="library calls in this process (no start-up)")
    p.add_argument("--camkit-tree", type=Path, help="a checkout of another camkit revision to time (its PYTHONPATH; "
                   "e.g. a `git worktree`), whole processes only")
    a = p.parse_args()
    how = "library calls in one process" if a.in_process else "whole processes"
    print(f"{a.keywords} x {a.images} JPEGs (320x240), {a.threads} threads, camkit per-host limit {a.per_host}, "
          f"{how}, median of {a.repeat} interleaved runs")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print(f"{'latency':>8} {'crawler':<14} {'saved':>6} {'seconds':>8} {'images/s':>9} {'ratio':>6}")
    for latency in a.latency:
        rows = {name: (statistics.median(s for s, _ in runs), statistics.median(t for _, t in runs))
                for name, runs in one_latency(latency, a).items()}
        rate = {name: saved / secs for name, (saved, secs) in rows.items()}
        for name, (saved, secs) in rows.items():
            ratio = f"{rate[name] / rate['icrawler']:5.2f}x" if name != "icrawler" else ""
            print(f"{latency * 1000:>6.0f}ms {name:<14} {saved:>6.0f} {secs:>8.2f} {rate[name]:>9.1f} {ratio:>6}",
                  flush=True)
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
