"""Where torch computes: one rule for training and inference, below both."""

from __future__ import annotations

import platform

import torch

__all__ = ["resolve_device", "cpu_bfloat16"]


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU. Asking for CUDA without it is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} was asked for but CUDA is not available here; use 'auto' or 'cpu'"
        )
    return torch.device(device)


def cpu_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively: on x86 AVX512-BF16 or AMX, elsewhere what
    oneDNN reports. On x86 oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``)
    is also true on AVX512 CPUs without either, where it emulates bfloat16: a smoke U-Net step
    there took 1.5 times its float32 time (``benchmarks/bench_precision.py``)."""
    try:
        if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86"):
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
