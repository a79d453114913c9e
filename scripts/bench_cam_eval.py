"""`camkit cam-eval RUN` (the box-free faithfulness table) before and after issue 28's batching,
on the same run, in one process, interleaved, with the numbers compared.

    python scripts/bench_cam_eval.py [--limit 40] [--methods cam,gradcam,gradcam++,xgradcam,layercam]
                                     [--repeat 1] [--steps 16] [--root /tmp/camkit-bench-cam-eval]
                                     [--baseline COMMIT]

The anchor is camkit's own previous `camkit/faithfulness/metrics.py`, read from git (`--baseline`, default
the last commit before the batched path) into a temporary module: per method, per image batch,
two forward passes per deletion / insertion step, one per ROAD percentile and one sparse solve
per image and percentile. The new path takes every method's maps once per batch, scores
methods whose maps are equal once (`same_maps`), computes the probabilities no map changes
once, forwards the perturbations of all steps together (through onnxruntime when it is
installed and agrees with torch, camkit.faithfulness.scoring; else a BatchNorm-folded, channels-last twin of
the model), and shares ROAD's solves between equal masks, factorising them on a thread pool
(camkit.faithfulness.imputation).

The run: a resnet18 @ 128 px trained for 3 epochs (`camkit.train.loop.train`, the clip-art stand-in
weights when ~/.cache/camkit/standin-resnet18.pth exists, else from scratch) on the real-image
set 'vehicles-sports' of tests/realdata.py (openclipart-png; 21 % held out, 28 validation
images), built once under --root and reused. Each repeat runs the old then the new evaluation
(`evaluate_run(run, methods, limit=...)`); the table gives each one's seconds, the best of each
and their ratio, the largest difference between any two saved numbers, and the load average.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "f4f00a3bd1c3170e5eed987dcee7883697dc24c6"   # camkit/faithfulness/metrics.py before the batched path
STANDIN = Path.home() / ".cache" / "camkit" / "standin-resnet18.pth"


def build_run(root: Path) -> Path:
    """The benchmark's run (trained once, then reused)."""
    sys.path.insert(0, str(REPO / "tests"))
    from realdata import available, copy_set

    from camkit.train.loop import train

    run = root / "run"
    if (run / "model.pth").is_file():
        return run
    if not available("vehicles-sports"):
        sys.exit("openclipart-png is not installed (apt-get install openclipart-png)")
    data = copy_set("vehicles-sports", root / "vehicles-sports", size=256)
    weights = {"weights": STANDIN} if STANDIN.is_file() else {"pretrained": False}
    train(data, arch="resnet18", size=128, epochs=3, valid_pct=0.21, seed=0, out=run, overwrite=True, quiet=True,
          **weights)
    return run


def with_image_files(source: str) -> str:
    """The baseline calls `iter_explain(loaded, files, ..., named=...)`, from before
    camkit.core.images.ImageFiles carried the named-files policy (28dda5c): the same call, in today's
    form (named files: an unreadable one is an error, as `named` said). Same images, same maps."""
    import inspect
    import re

    from camkit.explain import iter_explain

    if "named" in inspect.signature(iter_explain).parameters:
        return source
    source = re.sub(r", named=(\{str\(f\) for f in files\}|named)\)", ")", source)
    source = source.replace("iter_explain(loaded, files,", "iter_explain(loaded, _ImageFiles.required(files),")
    return source + "\n\nfrom camkit.core.images import ImageFiles as _ImageFiles  # noqa: E402\n"


def baseline_module(commit: str, root: Path):
    """camkit/faithfulness/metrics.py as of `commit`, imported as a module of its own."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:camkit/faithfulness/metrics.py"], capture_output=True,
                            text=True, check=True).stdout
    source = with_image_files(source)
    path = root / f"metrics_{commit[:8]}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"metrics_{commit[:8]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def largest_difference(a: dict, b: dict) -> float:
    """The largest absolute difference between two results' numbers (per method and class)."""
    worst = 0.0
    for m, r in a["methods"].items():
        for group, other in [(r, b["methods"][m]), *((c, b["methods"][m]["per_class"][n])
                                                     for n, c in r["per_class"].items())]:
            for k, v in group.items():
                if isinstance(v, float) and math.isfinite(v):
                    worst = max(worst, abs(v - other[k]))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--methods", default="cam,gradcam,gradcam++,xgradcam,layercam")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--root", type=Path, default=Path("/tmp/camkit-bench-cam-eval"))
    ap.add_argument("--baseline", default=BASELINE)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    args.root.mkdir(parents=True, exist_ok=True)
    import camkit.faithfulness.metrics as new

    run = build_run(args.root)
    old = baseline_module(args.baseline, args.root)
    methods = args.methods.split(",")
    times: dict[str, list[float]] = {"old": [], "new": []}
    results = {}
    print(f"run {run}, methods {','.join(methods)}, --limit {args.limit}, steps {args.steps}, "
          f"load average before {os.getloadavg()[0]:.1f}", flush=True)
    for rep in range(args.repeat):
        for name, module in (("old", old), ("new", new)):
            t = time.perf_counter()
            results[name] = module.evaluate_run(run, methods, steps=args.steps, limit=args.limit)
            times[name].append(time.perf_counter() - t)
            print(f"  repeat {rep + 1} {name}: {times[name][-1]:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    best_old, best_new = min(times["old"]), min(times["new"])
    print(f"{'path':<5} {'images':>6} {'best s':>8}  all s")
    for name in ("old", "new"):
        print(f"{name:<5} {results[name]['images']:>6} {min(times[name]):>8.1f}  "
              + " ".join(f"{t:.1f}" for t in times[name]))
    print(f"same maps found: {results['new'].get('same_maps', {})}")
    print(f"largest difference of any number: {largest_difference(results['old'], results['new']):.2e}")
    print(f"speed-up old / new: {best_old / best_new:.2f}x (load average after {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
