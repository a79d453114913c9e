"""camkit crawl vs icrawler's BingImageCrawler against the same loopback engine, in one process.

    python scripts/bench_crawl.py [--images 400] [--latency 0.02] [--threads 8] [--per-host 6] [--repeat 1]

The server (tests/fake_engine.py, 127.0.0.1 only) answers in Bing's result format and adds
--latency seconds to every request. icrawler is pointed at it by swapping its feeder's base
URL; camkit by --endpoint. Both download the same --images distinct JPEGs with the same thread
count; camkit also verifies, deduplicates and logs every file, and keeps to its per-host limit
(default 6 downloads at a time per host: here every image is on one host, so camkit runs 6
downloads at once to icrawler's 8). With --repeat N the two crawlers run N times interleaved and
the best of each counts. Prints images/s and the ratio.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_engine import FakeEngine, encode, smooth_image  # noqa: E402


def run_icrawler(endpoint: str, keyword: str, n: int, threads: int, out: Path) -> int:
    from icrawler.builtin import BingImageCrawler
    from icrawler.builtin.bing import BingFeeder

    class LocalBingFeeder(BingFeeder):
        def feed(self, keyword, offset, max_num, filters=None):
            for i in range(offset, offset + max_num, 20):
                self.out_queue.put(f"{endpoint}/images/async?q={keyword}&first={i}")

    crawler = BingImageCrawler(feeder_cls=LocalBingFeeder, downloader_threads=threads, log_level=logging.CRITICAL,
                               storage={"root_dir": str(out)})
    crawler.crawl(keyword, max_num=n)
    return sum(1 for _ in out.iterdir())


def run_camkit(endpoint: str, keyword: str, n: int, threads: int, out: Path, per_host: int = 6) -> int:
    from camkit.crawl import crawl

    [summary] = crawl([keyword], max_num=n, out=out, endpoint=endpoint, threads=threads, per_host=per_host, quiet=True)
    return summary.saved


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--latency", type=float, default=0.02)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--per-host", type=int, default=6, help="camkit's per-host limit (its default: 6)")
    p.add_argument("--repeat", type=int, default=1, help="interleaved runs; the best of each counts")
    a = p.parse_args()
    crawlers = {"icrawler BingImageCrawler": run_icrawler,
                "camkit crawl": lambda *args: run_camkit(*args, per_host=a.per_host)}
    rows: dict[str, tuple[int, float]] = {}
    with FakeEngine(latency=a.latency, page_size=20) as engine:
        urls = [engine.add(f"/img/{i}.jpg", encode(smooth_image(10_000 + i, (320, 240)))) for i in range(a.images)]
        engine.result("cats", *urls)
        for _ in range(a.repeat):
            for name, fn in crawlers.items():
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    saved = fn(engine.endpoint, "cats", a.images, a.threads, Path(tmp) / "out")
                    secs = time.perf_counter() - start
                if name not in rows or saved / secs > rows[name][0] / rows[name][1]:
                    rows[name] = (saved, secs)
    print(f"{a.images} JPEGs (320x240), {a.latency * 1000:.0f} ms latency per request, {a.threads} threads, "
          f"camkit per-host limit {a.per_host}, best of {a.repeat}")
    print(f"{'crawler':<28} {'saved':>6} {'seconds':>8} {'images/s':>9}")
    for name, (saved, secs) in rows.items():
        print(f"{name:<28} {saved:>6} {secs:>8.2f} {saved / secs:>9.1f}")
    ours, theirs = rows["camkit crawl"], rows["icrawler BingImageCrawler"]
    print(f"ratio camkit / icrawler: {(ours[0] / ours[1]) / (theirs[0] / theirs[1]):.2f}x (goal >= 2.0)")


if __name__ == "__main__":
    main()
