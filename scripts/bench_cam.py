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


def best_rate(fn, n_images: int, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return n_images / min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=80)
    p.add_argument("--arch", default="resnet34")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()

    from camkit.cam import CAM, GradCAM
    from camkit.train import build_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model, _, _ = build_model(a.arch, 10, "cam", pretrained=False)
    model = model.to(device).eval()
    x = torch.randn(a.batch, 3, a.size, a.size, device=device)
    layer = model[0]
    with torch.no_grad():
        pred = model(x).argmax(1)
    rates: dict[str, float] = {}

    def forward():
        with torch.no_grad():
            model(x)

    rates["forward only"] = best_rate(forward, a.batch, a.repeats)
    with CAM(model) as cam:
        rates["camkit cam"] = best_rate(lambda: cam(x), a.batch, a.repeats)
    with GradCAM(model) as gradcam:
        rates["camkit gradcam"] = best_rate(lambda: gradcam(x), a.batch, a.repeats)
    try:
        from pytorch_grad_cam import GradCAM as PGCGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(int(c)) for c in pred]
        with PGCGradCAM(model=model, target_layers=[layer]) as pgc:
            rates["pytorch-grad-cam gradcam"] = best_rate(lambda: pgc(input_tensor=x, targets=targets),
                                                          a.batch, a.repeats)
    except ImportError:
        print("pytorch-grad-cam not installed: pip install grad-cam")
    try:
        from torchcam.methods import GradCAM as TCGradCAM

        def torchcam_run():
            with TCGradCAM(model, target_layer="0") as extractor:
                scores = model(x)
                extractor(pred.tolist(), scores)

        rates["torchcam gradcam"] = best_rate(torchcam_run, a.batch, a.repeats)
    except ImportError:
        print("torchcam not installed: pip install torchcam")
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{a.arch}, batch {a.batch} at {a.size}px, {name}, {platform.machine()}")
    for k, v in rates.items():
        print(f"{k:<26} {v:>8.1f} img/s")
    print(f"ratio camkit cam / forward:              {rates['camkit cam'] / rates['forward only']:.2f}x (goal >= 0.8)")
    if "pytorch-grad-cam gradcam" in rates:
        print(f"ratio camkit gradcam / pytorch-grad-cam: "
              f"{rates['camkit gradcam'] / rates['pytorch-grad-cam gradcam']:.2f}x (goal >= 3)")
    if "torchcam gradcam" in rates:
        print(f"ratio camkit gradcam / torchcam:         "
              f"{rates['camkit gradcam'] / rates['torchcam gradcam']:.2f}x (goal >= 1)")


if __name__ == "__main__":
    main()
