"""Where and how camkit computes: the GPU when there is one, else the CPU, and which
floating-point precision the hardware runs fastest without losing the result.

Training, CAM and the course loops ask this module, never each other, a hardware question.
"""

from __future__ import annotations

from pathlib import Path

import torch

from camkit.core.choices import Precision, choice
from camkit.errors import CamkitError


def default_device() -> torch.device:
    """CUDA when there is one, else an Apple GPU (MPS, as fastai chooses), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as a torch.device (None: the default); a name torch does not know is a user error."""
    if device is None:
        return default_device()
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise CamkitError(f"unknown device '{device}'; use cpu, cuda or cuda:N") from None


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where bf16 autocast
    roughly halves a ResNet training step; elsewhere bf16 on CPU is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str | Precision, device: torch.device) -> str:
    """The concrete precision ('fp32', 'bf16' or 'fp16') for `precision` on `device`."""
    precision = Precision(choice(Precision, precision, "precision"))
    if precision is not Precision.auto:
        if device.type == "cpu" and precision is Precision.fp16:
            raise CamkitError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
        if device.type == "mps" and precision is not Precision.fp32:
            raise CamkitError(f"--precision {precision.value} is not supported on Apple GPUs (mps); use fp32")
        return precision.value
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":  # mixed precision on MPS is not what fastai's callbacks support
        return "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (a no-op context for fp32)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")
