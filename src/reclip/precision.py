"""The precision ReCLIP's training and V's re-encoding run in: bf16 where the hardware has it.

bf16 autocast on CUDA GPUs that support it and on CPUs with native bf16 matrix units
(AMX or AVX512-BF16); float32 elsewhere, where emulated bf16 would be slower than float32.
The norm parameters and the SGD master weights stay float32 either way. Frozen features
(zero-shot, label propagation alone, T's inputs) are always computed in float32.

Measured on 2 cores of a Xeon with AMX (EfficientNet-Lite0, 224 px, batch 64, channels_last):
float32 forward 31 images/s, train step 13; bf16 forward 52, train step 20.

``RECLIP_BF16`` in the environment overrides the choice: ``on`` (bf16 autocast on every
CUDA or CPU device, emulated and slow where it is not native: how the tests exercise the
bf16 path on any CPU), ``off`` (float32 everywhere) or ``auto`` (the default, as above).
"""
from __future__ import annotations

import os

import torch

from .errors import ReclipError

BF16_ENV = "RECLIP_BF16"
BF16_CHOICES = ("auto", "on", "off")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bf16 matrix products natively (faster than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        # private helpers of torch.cpu; a torch without them gets float32
        checks = (getattr(cpu, "_is_amx_tile_supported", None), getattr(cpu, "_is_avx512_bf16_supported", None))
        return any(check is not None and check() for check in checks)
    return False


def uses_bf16(device: torch.device | str) -> bool:
    """Whether training and V's re-encoding on ``device`` run under bf16 autocast: where it is
    native, unless ``RECLIP_BF16`` forces it ``on`` or ``off``."""
    choice = os.environ.get(BF16_ENV, "auto").strip().lower() or "auto"
    if choice not in BF16_CHOICES:
        raise ReclipError(f"{BF16_ENV} must be one of {', '.join(BF16_CHOICES)}, got {choice!r}")
    device = torch.device(device)
    if choice == "auto":
        return native_bf16(device)
    return choice == "on" and device.type in ("cuda", "cpu")


def autocast(device: torch.device | str) -> torch.autocast:
    """bf16 autocast on ``device`` when :func:`uses_bf16` says so, a no-op context otherwise."""
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=uses_bf16(device))


def full_precision(device: torch.device | str) -> torch.autocast:
    """Autocast switched off: float32 products (logits) even inside an autocast region."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)
