"""camkit CAM speed vs pytorch-grad-cam and torchcam, a row per method against each peer that
has it: same model, layer, images and targets, one run, interleaved.

    python scripts/bench_cam.py [--size 128] [--batch 80] [--arch resnet34] [--repeats 3]
                                [--score-size 64] [--score-batch 2] [--samples 2] [--only gradcam,...]
    python scripts/bench_cam.py --engines [--repeats 5] [--archs resnet18,resnet34] [--threads N]

The model is camkit's resnet34 with the CAM head, random weights (weights do not change the
cost); every method explains its images for their predicted classes at the body's output
(layer "0"). Gradient methods use --batch images at --size px; the methods that re-run the
model once per channel (score, ablation, SS/IS) use --score-batch images at --score-size px,
and the noisy ones --samples noise samples in every library. Prints images/s (best of
--repeats) per library and camkit's ratio to each peer (goal: >= 1 everywhere), then the
exact-CAM and Grad-CAM goals of the earlier table.

`--engines` (issue 28): exact CAM of the predicted class by camkit's ONNX Runtime engine
(camkit.export.engine.OnnxCAM over the exported graph, fp32, static-INT8 QDQ as `--int8` makes it, and
dynamic INT8 for comparison) against torchcam's
CAM, pytorch-grad-cam's Grad-CAM and camkit's torch engine in fp32 and bf16 autocast, at batch
1 @ 224 px and batch 32 @ 128 px, for each arch; every contender starts from the same uint8
images (normalisation included), ORT gets as many threads as torch. Random weights (cost only;
the INT8 graph is calibrated on noise here, so its gate is not applied: speed only). Goals:
ORT fp32 >= 2x torchcam's CAM at both settings; INT8 >= 1.5x camkit's bf16 torch path.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch

warnings.filterwarnings("ignore")

PGC = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
       "hirescam": "HiResCAM", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM",
       "ablationcam": "AblationCAM", "fullgrad": "FullGrad"}
TORCHCAM = {"cam": "CAM", "gradcam": "GradCAM", "gradcam++": "GradCAMpp", "xgradcam": "XGradCAM",
            "layercam": "LayerCAM", "scorecam": "ScoreCAM", "sscam": "SSCAM", "iscam": "ISCAM",
            "smoothgradcam++": "SmoothGradCAMpp"}
PER_CHANNEL = {"scorecam", "sscam", "iscam", "ablationcam"}


def best_seconds(fns: dict, repeats: int, settle: bool = False) -> dict[str, float]:
    """Seconds per entry, best of `repeats`, the entries interleaved so that a noisy machine
    slows all of them alike.

    `settle`: one untimed call of an entry right before its timed one. A thread pool keeps
    spinning for a while after its call returns (onnxruntime's intra-op pool, torch's OpenMP
    team), so without it the entry timed next shares the cores with the previous entry's idle
    spinners: measured here, torch's CAM at batch 1 right after ORT ran at 16 img/s, and 38 alone.
    The untimed call lets the previous pool go to sleep and wakes this one's, as a user running
    one engine over many batches sees it."""
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if settle:
                fn()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def contenders(method: str, model, x: torch.Tensor, pred: list[int], samples: int) -> dict:
    """camkit's and each peer's call for one method on the same inputs."""
    from camkit.cam import make_cam

    fns = {}
    ours = make_cam(method, model, None if method == "fullgrad" else "0")
    if hasattr(ours, "num_samples") and method != "smoothgradcam++":
        ours.num_samples = samples
    if method == "scorecam" or method in ("sscam", "iscam"):
        ours.score = "logit"  # the peers' score (camkit's default follows the paper: same cost)
    fns["camkit"] = lambda: ours(x, pred)
    try:
        import tqdm

        tqdm.tqdm = lambda iterable, *_a, **_k: iterable  # pytorch-grad-cam's progress bars, not timed
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        if method in PGC:
            theirs = getattr(pgc, PGC[method])(model=model, target_layers=[] if method == "fullgrad" else [model[0]])
            targets = [ClassifierOutputTarget(c) for c in pred]
            fns["pytorch-grad-cam"] = lambda: theirs(input_tensor=x, targets=targets)
    except ImportError:
        print("pytorch-grad-cam not installed: pip install grad-cam")
    try:
        import torchcam.methods as tc

        if method in TORCHCAM:
            kw = {"num_samples": samples} if method in ("sscam", "iscam") else {}
            cls = getattr(tc, TORCHCAM[method])

            def torchcam_run():
                with cls(model, target_layer="0", input_shape=tuple(x.shape[1:]), **kw) as extractor:
                    with torch.set_grad_enabled(method != "cam"):
                        scores = model(x)
                    extractor(pred, scores)

            fns["torchcam"] = torchcam_run
    except ImportError:
        print("torchcam not installed: pip install torchcam")
    return fns


def _loaded(arch: str, size: int, classes: int = 10):
    """A random-weight CAM-head model as camkit.train.run.load gives one (no run folder needed)."""
    from pathlib import Path

    from camkit.train.models import build_model
    from camkit.train.run import LoadedModel, RunInfo

    torch.manual_seed(0)
    model = build_model(arch, classes, "cam", pretrained=False).model.eval()
    info = RunInfo(arch=arch, head="cam", stride=16, classes=[f"c{i}" for i in range(classes)], size=size,
                   stats=([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    return LoadedModel(model, info, Path("."))


def engine_contenders(arch: str, batch: int, size: int, folder) -> tuple[dict, int]:
    """Each engine's / peer's exact CAM (Grad-CAM for pytorch-grad-cam) of the predicted class,
    from the same uint8 batch; also returns the batch size."""
    import numpy as np

    from camkit.cam import make_cam
    from camkit.export.engine import OnnxCAM, OrtGraph
    from camkit.export.onnx import graph_bytes, quantize, session

    loaded = _loaded(arch, size)
    model, threads = loaded.model, torch.get_num_threads()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, 3, size, size), dtype=np.uint8))
    calib = np.random.default_rng(1).integers(0, 256, (16, 3, size, size), dtype=np.uint8)
    fp32 = graph_bytes(loaded)
    graphs = {"ORT fp32": fp32, "ORT INT8": quantize(fp32, "static", calib, folder),
              "ORT INT8 dynamic": quantize(fp32, "dynamic", None, folder)}
    meta = {"grid": {"stride": [16.0, 16.0], "offset": [0.0, 0.0], "size": [size, size]}}
    fns = {}
    for name, data in graphs.items():
        cam = OnnxCAM(OrtGraph(session(data, threads), type("Meta", (), meta)()))
        fns[name] = (lambda c: lambda: c(images))(cam)
    batch_of = lambda: loaded.batch(list(images.numpy().transpose(0, 2, 3, 1)))  # noqa: E731  normalise, as camkit
    exact = make_cam("cam", model)

    def camkit_torch(precision):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                exact(batch_of())
        return run
    fns["camkit torch fp32"], fns["camkit torch bf16"] = camkit_torch("fp32"), camkit_torch("bf16")
    import torchcam.methods as tc

    def torchcam_cam():
        x = batch_of()
        with tc.CAM(model, target_layer="0", input_shape=tuple(x.shape[1:])) as extractor, torch.no_grad():
            scores = model(x)
            extractor(scores.argmax(1).tolist(), scores)
    fns["torchcam CAM"] = torchcam_cam
    import pytorch_grad_cam as pgc
    import tqdm
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    tqdm.tqdm = lambda iterable, *_a, **_k: iterable
    grad = pgc.GradCAM(model=model, target_layers=[model[0]])

    def pgc_gradcam():
        x = batch_of()
        with torch.no_grad():
            pred = model(x).argmax(1).tolist()   # pytorch-grad-cam needs the targets: one more pass, as its users run
        grad(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in pred])
    fns["pytorch-grad-cam Grad-CAM"] = pgc_gradcam
    return fns, batch


def model_gflops(arch: str, size: int) -> float:
    """Forward GFLOP per image of the CAM-head model at `size` px (torch's flop counter: 2 per
    multiply-add of convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _loaded(arch, size).model
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def engines(a) -> None:
    """The issue-28 table: images/s per engine, the goals' ratios, and the fp32 GFLOP/s each
    engine's convolutions reach (what 2x torchcam would ask of the CPU)."""
    import os
    import tempfile

    print(f"CPU, {torch.get_num_threads()} threads, {platform.machine()}; load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())} (machine shared); best of {a.repeats}, interleaved")
    for arch in a.archs.split(","):
        for batch, size in ((1, 224), (32, 128)):
            with tempfile.TemporaryDirectory() as tmp:
                from pathlib import Path

                fns, n = engine_contenders(arch, batch, size, Path(tmp))
                rate = {k: n / v for k, v in best_seconds(fns, a.repeats, settle=True).items()}
            print(f"{arch} batch {batch} @ {size}px: " + ", ".join(f"{k} {v:.1f}" for k, v in rate.items()) + " img/s")
            print(f"  ORT fp32 / torchcam CAM {rate['ORT fp32'] / rate['torchcam CAM']:.2f}x (goal >= 2); "
                  f"INT8 / camkit bf16 {rate['ORT INT8'] / rate['camkit torch bf16']:.2f}x (goal >= 1.5); "
                  f"ORT fp32 / camkit fp32 {rate['ORT fp32'] / rate['camkit torch fp32']:.2f}x; "
                  f"ORT fp32 / camkit bf16 {rate['ORT fp32'] / rate['camkit torch bf16']:.2f}x", flush=True)
            flops = model_gflops(arch, size)
            print(f"  fp32 GFLOP/s ({flops:.2f} GFLOP/img): ORT {rate['ORT fp32'] * flops:.0f}, torchcam "
                  f"{rate['torchcam CAM'] * flops:.0f}; 2x torchcam needs {2 * rate['torchcam CAM'] * flops:.0f}", flush=True)


def end_to_end(a) -> None:
    """`camkit cam DIR` as a user runs it (decode + maps + overlays + cams.jsonl), torch vs ONNX
    engine, on --e2e-images noisy 640 x 480 JPEGs with a random resnet18 run at 224 px; then
    where the ONNX run's time goes (cProfile, cumulative seconds per stage)."""
    import cProfile
    import json
    import os
    import pstats
    import shutil
    import tempfile
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from camkit.explain import cam
    from camkit.export.onnx import export_onnx
    from camkit.train.run import META, WEIGHTS

    root = Path(tempfile.mkdtemp(prefix="camkit-e2e-"))
    try:
        loaded = _loaded("resnet18", 224)
        run = root / "run"
        run.mkdir()
        torch.save(loaded.model.state_dict(), run / WEIGHTS)
        (run / META).write_text(json.dumps({**loaded.info.to_json(), "complete": True}))
        export_onnx(run)
        rng, images = np.random.default_rng(0), root / "images"
        images.mkdir()
        for i in range(a.e2e_images):
            Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(images / f"img{i:03d}.jpg")
        runs = {e: (lambda e=e: cam([images], run, out=root / f"cams-{e}", engine=e, quiet=True)) for e in ("torch", "onnx")}
        rate = {k: a.e2e_images / v for k, v in best_seconds(runs, a.repeats).items()}
        print(f"camkit cam DIR, {a.e2e_images} images 640x480 -> resnet18 @ 224 (load average "
              f"{os.getloadavg()[0]:.1f}): torch {rate['torch']:.1f} img/s, onnx {rate['onnx']:.1f} img/s, "
              f"{rate['onnx'] / rate['torch']:.2f}x")
        profile = cProfile.Profile()
        profile.runcall(runs["onnx"])
        stats = pstats.Stats(profile).stats
        stages = {"decode + resize": "_decode", "ONNX Runtime maps": "__call__", "draw + save overlays": "write"}
        total = max(v[3] for v in stats.values())
        for label, fn in stages.items():
            secs = max((v[3] for (path, _, name), v in stats.items() if name == fn and "camkit" in path), default=0.0)
            print(f"  {label:<22} {secs:6.2f} s cumulative (of {total:.2f} s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=80)
    p.add_argument("--arch", default="resnet34")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--score-size", type=int, default=64)
    p.add_argument("--score-batch", type=int, default=2)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated methods (default: all)")
    p.add_argument("--engines", action="store_true", help="the ONNX Runtime engine table (issue 28)")
    p.add_argument("--archs", default="resnet18,resnet34", help="with --engines: the archs")
    p.add_argument("--threads", type=int, default=0, help="torch and ORT threads (default: torch's own); 1 is "
                   "the least distorted by other work on a shared machine (no thread pool to wait for)")
    p.add_argument("--e2e-images", type=int, default=0, help="time `camkit cam DIR` end to end on N images, "
                   "torch vs onnx engine, and name where the time goes")
    a = p.parse_args()
    if a.e2e_images:
        end_to_end(a)
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.engines:
        engines(a)
        return

    from camkit.cam import METHODS
    from camkit.train.models import build_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = build_model(a.arch, 10, "cam", pretrained=False).model.to(device).eval()
    big = torch.randn(a.batch, 3, a.size, a.size, device=device)
    small = torch.randn(a.score_batch, 3, a.score_size, a.score_size, device=device)
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{a.arch}, layer 0 (layer4), {name}, {platform.machine()}; gradient methods: batch {a.batch} at "
          f"{a.size}px; per-channel methods: batch {a.score_batch} at {a.score_size}px; {a.samples} noise samples")
    print(f"{'method':<16} {'camkit img/s':>12} {'pytorch-grad-cam':>17} {'torchcam':>9}   ratios (camkit / peer)")
    methods = [m for m in METHODS if not a.only or m in a.only.split(",")]
    for method in methods:
        x = small if method in PER_CHANNEL else big
        with torch.no_grad():
            pred = model(x).argmax(1).tolist()
        fns = contenders(method, model, x, pred, a.samples)
        rate = {k: len(x) / v for k, v in best_seconds(fns, a.repeats).items()}
        ratios = ", ".join(f"{rate['camkit'] / rate[peer]:.2f}x {peer}" for peer in ("pytorch-grad-cam", "torchcam")
                           if peer in rate)
        print(f"{method:<16} {rate['camkit']:>12.2f} {rate.get('pytorch-grad-cam', float('nan')):>17.2f} "
              f"{rate.get('torchcam', float('nan')):>9.2f}   {ratios}", flush=True)
    if "cam" in methods:  # the earlier goals: exact CAM costs a forward pass; bf16 autocast
        from camkit.cam import make_cam

        exact, grad = make_cam("cam", model), make_cam("gradcam", model)

        def forward():
            with torch.no_grad():
                model(big)

        def bf16(fn):
            def run():
                with torch.autocast(big.device.type, dtype=torch.bfloat16):
                    fn()
            return run
        rate = {k: len(big) / v for k, v in best_seconds(
            {"forward": forward, "cam": lambda: exact(big), "cam bf16": bf16(lambda: exact(big)),
             "gradcam bf16": bf16(lambda: grad(big))}, a.repeats).items()}
        print(f"forward only {rate['forward']:.1f} img/s; camkit cam / forward {rate['cam'] / rate['forward']:.2f}x "
              f"(goal >= 0.8); bf16 autocast: cam {rate['cam bf16']:.1f}, gradcam {rate['gradcam bf16']:.1f} img/s")


if __name__ == "__main__":
    main()
