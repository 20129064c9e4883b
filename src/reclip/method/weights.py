"""Named tensors in and out of a model and of reclip's safetensors files (adapters, checkpoints)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

from torch import nn

from ..errors import ReclipError
from ..models.base import DualEncoder


def snapshot(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies of named parameters (or buffers)."""
    return {k: p.detach().float().cpu().clone() for k, p in params.items()}


def load_into(params: dict[str, torch.Tensor], values: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``values`` into the model's ``params`` in place (names and shapes must match)."""
    missing = set(values) - set(params)
    if missing:
        raise ReclipError(f"{what} does not fit this model ({len(missing)} unknown parameters, "
                          f"e.g. {sorted(missing)[0]}); pass the --model/--pretrained it was made with")
    with torch.no_grad():
        for k, v in values.items():
            if params[k].shape != v.shape:
                raise ReclipError(f"{what} does not fit this model: {k} has shape {tuple(v.shape)}, "
                                  f"the model's is {tuple(params[k].shape)}")
            params[k].copy_(v.to(params[k].device, params[k].dtype))


@contextlib.contextmanager
def image_norms(model: DualEncoder, values: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily put ``values`` into the image tower's norm affines and BatchNorm statistics
    (V's tower, ``named_image_norm_state``), then restore."""
    params = model.named_image_norm_state()
    original = snapshot(params)
    load_into(params, values, "adapter")
    try:
        yield
    finally:
        load_into(params, original, "adapter")


def blend_statistics(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                     weight: float) -> dict[str, torch.Tensor]:
    """BatchNorm running statistics blended with the target's share ``weight`` (w):
    ``(1 - w) source + w target`` for every mean and variance (Schneider et al., NeurIPS 2020,
    with w = n / (N + n): N the prior strength of the source, n the target's images)."""
    return {k: (1.0 - weight) * source[k].float() + weight * target[k].float() for k in source}


@contextlib.contextmanager
def estimating_statistics(modules: list[nn.Module]) -> Iterator[None]:
    """Every BatchNorm layer inside ``modules`` re-estimates its running statistics from zero as
    plain averages over the batches run inside (train mode, momentum None; AdaBN's estimate);
    afterwards back in eval mode with its momentum, holding the estimate."""
    layers = [m for root in modules for m in root.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train(True)
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(layers, saved):
            m.train(False)
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def read_safetensors(path: Path, what: str, fix: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(reclip JSON metadata, tensors) of a file reclip wrote; a damaged, empty or foreign
    file is a one-line ``ReclipError`` naming ``what`` and ``fix``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("reclip")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReclipError(f"{path} is not a readable reclip {what} ({reason}); {fix}") from None
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise ReclipError(f"{path} has no reclip metadata, so it is not a reclip {what}; {fix}")
    return meta, tensors
