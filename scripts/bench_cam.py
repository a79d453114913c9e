"""camkit CAM speed vs pytorch-grad-cam and torchcam, same model, layer and images, one run.

    python scripts/bench_cam.py [--size 128] [--batch 80] [--arch resnet34] [--repeats 3]

The model is camkit's resnet34 with the CAM head (weights do not change the cost). Every
method explains the same batch for its predicted classes at the body's output layer. Prints
images/s per method (best of --repeats) and the goal ratios:
camkit cam / forward (goal >= 0.8), camkit gradcam / pytorch-grad-cam (goal >= 3),
camkit gradcam / torchcam (goal >= 1).
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def best_rates(fns: dict, n_images: int, repeats: int) -> dict[str, float]:
    """Images/s per entry, best of `repeats`, the entries interleaved so that a noisy machine
    slows all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: n_images / t for name, t in best.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=80)
    p.add_argument("--arch", default="resnet34")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()

    from camkit.cam import CAM, GradCAM
    from camkit.models import build_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model, _, _ = build_model(a.arch, 10, "cam", pretrained=False)
    model = model.to(device).eval()
    x = torch.randn(a.batch, 3, a.size, a.size, device=device)
    layer = model[0]
    with torch.no_grad():
        pred = model(x).argmax(1)
    fns = {}

    def forward():
        with torch.no_grad():
            model(x)

    def bf16(fn):
        def run():
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                fn()
        return run

    cam, gradcam = CAM(model), GradCAM(model)
    fns["forward only"] = forward
    fns["camkit cam"] = lambda: cam(x)
    fns["camkit gradcam"] = lambda: gradcam(x)
    fns["camkit cam, bf16"] = bf16(lambda: cam(x))
    fns["camkit gradcam, bf16"] = bf16(lambda: gradcam(x))
    try:
        from pytorch_grad_cam import GradCAM as PGCGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(int(c)) for c in pred]
        pgc = PGCGradCAM(model=model, target_layers=[layer])
        fns["pytorch-grad-cam gradcam"] = lambda: pgc(input_tensor=x, targets=targets)
    except ImportError:
        print("pytorch-grad-cam not installed: pip install grad-cam")
    try:
        from torchcam.methods import GradCAM as TCGradCAM

        def torchcam_run():
            with TCGradCAM(model, target_layer="0") as extractor:
                scores = model(x)
                extractor(pred.tolist(), scores)

        fns["torchcam gradcam"] = torchcam_run
    except ImportError:
        print("torchcam not installed: pip install torchcam")
    rates = best_rates(fns, a.batch, a.repeats)
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{a.arch}, batch {a.batch} at {a.size}px, {name}, {platform.machine()}")
    for k, v in rates.items():
        print(f"{k:<26} {v:>8.1f} img/s")
    print(f"ratio camkit cam / forward:              {rates['camkit cam'] / rates['forward only']:.2f}x (goal >= 0.8)")
    for ours in ("camkit gradcam", "camkit gradcam, bf16"):
        if "pytorch-grad-cam gradcam" in rates:
            print(f"ratio {ours} / pytorch-grad-cam: {rates[ours] / rates['pytorch-grad-cam gradcam']:.2f}x (goal >= 3)")
        if "torchcam gradcam" in rates:
            print(f"ratio {ours} / torchcam:         {rates[ours] / rates['torchcam gradcam']:.2f}x (goal >= 1)")


if __name__ == "__main__":
    main()
