"""Device selection and mixed precision.

``precision='auto'``: bf16 autocast on CPUs with native bf16 (oneDNN) and on GPUs with bf16,
fp16 + GradScaler on older GPUs, fp32 otherwise. fp16 is never used on CPU (it is ~100x slower).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from medbalance.errors import ConfigError

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def select_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return dev


def cpu_bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - old torch / non-x86
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Return the concrete precision ('fp32' | 'bf16' | 'fp16') for a device."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"unknown precision {precision!r}; allowed: auto, bf16, fp16, fp32")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu":
            return "bf16" if cpu_bf16_supported() else "fp32"
        return "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("fp16 is not supported on CPU (it is ~100x slower than fp32); use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_supported():
        raise ConfigError("bf16 requested but this CPU has no native bf16 support; use fp32")
    return precision


def autocast(device: torch.device, precision: str):
    """Context manager for the forward pass in the given (resolved) precision."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
