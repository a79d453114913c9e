"""The decode cache against the in-memory decode: peak RSS as the dataset grows, loader
throughput, and the second run's data preparation.

    python scripts/bench_cache.py [--sizes 1000 4000 16000] [--px 224] [--root /tmp/camkit-bench-cache]
                                  [--repeat 3] [--memory-max 16000]

Synthetic JPEGs (--source-px square, default 512: the crawl's default --max-side; two
classes, smooth random content) are written once under --root (never into the repository)
and reused by later runs. Every point runs in a fresh
process, which reports its peak resident memory (ru_maxrss, file-backed mapped pages
included) and the same after imports alone:
- memory:  `load_folder(data, px)` (the anchor: camkit's in-memory decode, np.stack +
           permute().contiguous()), then one shuffled pass of batches of 64 (gather + normalise);
- cold:    `load_folder(data, px, cache=DIR)` into an empty cache folder, then the same pass;
- warm:    the same call again (nothing to decode), then the same pass.
The warm prep time is the fastest of --repeat warm points, interleaved with the memory points
(memory, warm, memory, warm, ...), since other work on the machine makes single runs noisy.
Throughput (images/s of the pass) is compared inside each warm point: the pass over the
memory map against the same pass over a copy of it in memory (what the in-memory path
batches from), alternated 3 times after the RSS figure is taken; best of each, best over the
warm points. (Across processes the in-memory path's rate varied by +-30 % with the
allocator's and page cache's state left by its decoding, so that figure is in the raw output
only.)
Goals (issue #18): peak RSS of the cached path at 4x the images <= 1.3x that at 1x; warm
pass >= 0.9x the in-memory pass; cold prep / warm prep >= 10x.

    python scripts/bench_cache.py --integrity [--sizes 1000 4000] [--anchor fd37836]

The price of the cache's integrity checks (issue 26 item 10: crc32 of the whole data file
taken while writing, inode + ctime in each file's stamp, the key's flock, the temp-file sweep),
in one process against the anchor, camkit/data/cache.py as it was at --anchor (16 sampled rows'
crc32, (path, size, mtime) stamps, no lock), loaded from git: cold builds and warm opens of
the same files, interleaved (anchor, new, anchor, new, ...), best of --repeat each; then what a
copied cache pays once, the full crc32 read at its first open, and the open after it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

POINT = r"""
import json, resource, sys, time
import torch
from camkit.data.folders import TensorBatches, load_folder
torch.set_num_threads(2)
mode, data, px, cache, REPEAT = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = rss()
t = time.perf_counter()
fd = load_folder(data, px) if mode == "memory" else load_folder(data, px, cache=cache)
prep = time.perf_counter() - t
prep_rss = rss()
if fd.mapped:
    dl = TensorBatches(fd.images, fd.labels, 64, shuffle=True, rows=torch.arange(len(fd.labels)))
else:
    dl = TensorBatches(fd.images, fd.labels, 64, shuffle=True)
def rate(loader):
    t, n = time.perf_counter(), 0
    for x, y in loader:
        n += len(y)
    return n / (time.perf_counter() - t)
first = rate(dl)
out = {"mode": mode, "n": len(fd.labels), "decoded": fd.decoded, "prep_s": prep, "imgs_per_s": first,
       "base_mb": base, "prep_peak_mb": prep_rss, "peak_mb": rss()}
if mode == "warm":  # the same pass from a copy in memory, interleaved in this process (after the RSS figure)
    copy = fd.images.clone()
    mapped, memory = [first], []
    for _ in range(REPEAT):
        memory.append(rate(TensorBatches(copy, fd.labels, 64, shuffle=True)))
        mapped.append(rate(dl))
    out.update(mapped_imgs_per_s=max(mapped), memory_imgs_per_s=max(memory))
print(json.dumps(out))
"""


def make_data(root: Path, n: int, side: int) -> Path:
    """n synthetic JPEGs in two class folders (written once; a complete folder is reused)."""
    import numpy as np
    from PIL import Image

    folder = root / f"data-{n}-{side}"
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # the bench's own half-written folder
    rng = np.random.default_rng(n)
    for i in range(n):
        cls = "a" if i % 2 else "b"
        (folder / cls).mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
        small[..., 0 if cls == "a" else 2] //= 2
        Image.fromarray(small).resize((side, side), Image.BILINEAR).save(folder / cls / f"{i:06d}.jpg", quality=85)
    done.write_text(str(n))
    return folder


def point(mode: str, data: Path, px: int, cache: Path, repeat: int = 3) -> dict:
    out = subprocess.run([sys.executable, "-c", POINT, mode, str(data), str(px), str(cache), str(repeat)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{mode} point failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_size(root: Path, n: int, px: int, repeat: int, with_memory: bool, source_px: int) -> dict:
    data = make_data(root, n, source_px)
    cache = root / f"cache-{n}-{px}"
    shutil.rmtree(cache, ignore_errors=True)  # the bench's own cache: the cold point starts empty
    cold = point("cold", data, px, cache)
    runs: dict[str, list[dict]] = {"memory": [], "warm": []}
    for _ in range(repeat):
        for mode in (("memory", "warm") if with_memory else ("warm",)):
            runs[mode].append(point(mode, data, px, cache))
    best = {m: max(r, key=lambda p: p["imgs_per_s"]) for m, r in runs.items() if r}
    peak = {m: max(p["peak_mb"] for p in r) for m, r in runs.items() if r}
    warm_prep = min(p["prep_s"] for p in runs["warm"])
    return {"n": n, "cold": cold, "best": best, "peak": peak, "warm_prep": warm_prep, "warm_runs": runs["warm"]}


def load_anchor(commit: str):
    """camkit/data/cache.py as it was at `commit`, imported as its own module (it needs only
    camkit.core.files and camkit.errors, which kept what it uses)."""
    import importlib.util
    import tempfile

    source = subprocess.run(["git", "show", f"{commit}:camkit/data/cache.py"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parent.parent).stdout
    path = Path(tempfile.mkdtemp(prefix="camkit-anchor-")) / "cache_anchor.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("cache_anchor", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def bench_integrity(root: Path, n: int, px: int, repeat: int, source_px: int, anchor) -> dict:
    """Cold build and warm open, anchor vs now, interleaved; then a copied cache's first open."""
    import time

    import camkit.data.cache as now
    from camkit.data.folders import scan_class_folders
    from camkit.core.images import open_rgb, resize_square

    data = make_data(root, n, source_px)
    files = [f for fs in scan_class_folders(data)[1] for f in fs]

    def decode(f):
        return resize_square(open_rgb(f), px).transpose(2, 0, 1)

    def timed(module, folder: Path) -> float:
        t = time.perf_counter()
        rows = module.decode_cached(folder, "k", files, (3, px, px), decode)
        elapsed = time.perf_counter() - t
        assert len(rows.images) == len(files)
        return elapsed

    times: dict[str, list[float]] = {k: [] for k in ("anchor cold", "now cold", "anchor warm", "now warm")}
    for i in range(repeat):
        for name, module in (("anchor", anchor), ("now", now)):
            folder = root / f"integrity-{name}-{n}-{px}"
            shutil.rmtree(folder, ignore_errors=True)   # the bench's own cache folder
            times[f"{name} cold"].append(timed(module, folder))
    for i in range(repeat * 3):
        for name, module in (("anchor", anchor), ("now", now)):
            times[f"{name} warm"].append(timed(module, root / f"integrity-{name}-{n}-{px}"))
    copy = root / f"integrity-copy-{n}-{px}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root / f"integrity-now-{n}-{px}", copy)
    first_copy = timed(now, copy)
    best = {k: min(v) for k, v in times.items()}
    return {"n": n, **best, "copy first open": first_copy, "copy next open": timed(now, copy),
            "MB": n * 3 * px * px / 2 ** 20}


def main_integrity(args) -> None:
    anchor = load_anchor(args.anchor)
    results = [bench_integrity(args.root, n, args.px, args.repeat, args.source_px, anchor) for n in args.sizes]
    print(f"\nintegrity checks vs the cache at {args.anchor}: {args.source_px}-px JPEGs decoded to {args.px} px, "
          f"best of {args.repeat} cold / {args.repeat * 3} warm, interleaved")
    print(f"{'images':>7} {'MB':>6} | {'cold anchor':>11} {'cold now':>9} {'ratio':>6} | {'warm anchor':>11} "
          f"{'warm now':>9} {'ratio':>6} | {'copy 1st open':>13} {'copy next':>9}")
    for r in results:
        print(f"{r['n']:>7} {r['MB']:>6.0f} | {r['anchor cold']:>10.2f}s {r['now cold']:>8.2f}s "
              f"{r['now cold'] / r['anchor cold']:>6.2f} | {r['anchor warm']:>10.3f}s {r['now warm']:>8.3f}s "
              f"{r['now warm'] / r['anchor warm']:>6.2f} | {r['copy first open']:>12.3f}s {r['copy next open']:>8.3f}s")
    print("raw:", json.dumps(results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    ap.add_argument("--px", type=int, default=224)
    ap.add_argument("--root", type=Path, default=Path("/tmp/camkit-bench-cache"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--source-px", type=int, default=512, help="side of the synthetic JPEGs")
    ap.add_argument("--memory-max", type=int, default=16000, help="skip the in-memory anchor above this many images")
    ap.add_argument("--integrity", action="store_true", help="the price of the integrity checks against --anchor")
    ap.add_argument("--anchor", default="fd37836", help="commit whose camkit/data/cache.py is the --integrity anchor")
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    if args.integrity:
        return main_integrity(args)
    results = [bench_size(args.root, n, args.px, args.repeat, n <= args.memory_max, args.source_px)
               for n in args.sizes]
    print(f"\n{args.source_px}-px JPEGs decoded to {args.px} px, {args.repeat} interleaved runs per mode "
          "(highest peak RSS, fastest warm prep)")
    print(f"{'images':>7} {'decoded MB':>10} | {'memory peak':>11} {'cold peak':>9} {'warm peak':>9} MB | "
          f"{'memory img/s':>12} {'mapped img/s':>12} {'ratio':>6} | {'cold prep':>9} {'warm prep':>9} {'speed-up':>8}")
    for r in results:
        n, cold, best, peak = r["n"], r["cold"], r["best"], r["peak"]
        warm = best["warm"]
        mapped = max(p["mapped_imgs_per_s"] for p in r["warm_runs"])
        memory = max(p["memory_imgs_per_s"] for p in r["warm_runs"])
        print(f"{n:>7} {n * 3 * args.px ** 2 / 2 ** 20:>10.0f} | {peak.get('memory', float('nan')):>11.0f} "
              f"{cold['peak_mb']:>9.0f} {peak['warm']:>9.0f}    | "
              f"{memory:>12.0f} {mapped:>12.0f} {mapped / memory:>6.2f} | "
              f"{cold['prep_s']:>8.2f}s {r['warm_prep']:>8.2f}s {cold['prep_s'] / r['warm_prep']:>7.1f}x")
        assert warm["decoded"] == 0, "the warm point decoded images"
    base = results[0]
    for r in results[1:]:
        growth = max(r["cold"]["peak_mb"], r["peak"]["warm"]) / max(base["cold"]["peak_mb"], base["peak"]["warm"])
        print(f"cached peak RSS at {r['n'] / base['n']:.0f}x the images: {growth:.2f}x that at {base['n']} "
              f"(goal <= 1.3x at 4x)")
    print("raw:", json.dumps(results))


if __name__ == "__main__":
    main()
