"""One factory that turns a model spec (and optional weights) into a ``DualEncoder``.

Specs:
- ``tiny``: seeded random 2-layer open_clip model (tests, smoke runs; no weights)
- ``bridge``: EfficientNet-Lite0 + MiniLM joined by a linear map (pretrained, ships in packages);
  ``bridge-lite1`` / ``bridge-lite2``: the same with the EfficientNet-Lite1 / Lite2 image tower
- an open_clip architecture (``ViT-B-32``, ``ViT-L-14``, ``RN50``, ``ViT-B-16-SigLIP``, ...) with
  ``pretrained`` a tag (``openai``, ``laion2b_s34b_b79k``, ...) or a local weights file
- ``hf-hub:org/repo`` or ``local-dir:/path``: open_clip's own schemas
- ``hf:org/repo`` or ``hf:/path/to/folder``: a transformers CLIP / SigLIP model
"""
from __future__ import annotations

import torch

from ..errors import ArgumentError, ReclipError
from .base import DualEncoder


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device that exists on this machine, else a one-line error."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ReclipError(f"device {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ReclipError(f"device {device!r}: no CUDA GPU is visible on this machine; use cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ReclipError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif parsed.type != "cpu":
        raise ReclipError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return parsed


#: the bridge model with the EfficientNet-Lite0 (``bridge``), Lite1 or Lite2 image tower
BRIDGE_SPECS = ("bridge", "bridge-lite1", "bridge-lite2")


def check_model(spec: str, pretrained: str | None = None) -> None:
    """What ``load_model`` checks before any weights are read or downloaded: a known ``spec``
    and, for an open_clip architecture, a known ``pretrained`` tag or an existing file. The
    commands call it before they read the dataset, and load the model after."""
    if spec.startswith("hf:"):
        if pretrained:
            raise ArgumentError("pretrained", "{arg}: not used with hf: models, whose weights come from the hub id "
                                "or folder; leave it out", pretrained)
    elif spec not in (*BRIDGE_SPECS, "tiny") and not spec.startswith(("hf-hub:", "local-dir:")):
        from .open_clip_backend import check_pretrained, open_clip_arch
        arch = open_clip_arch(spec)
        if arch is None:
            raise ReclipError(
                f"unknown model '{spec}'; use tiny, bridge (or bridge-lite1, bridge-lite2), an open_clip architecture such as "
                "ViT-B-32, ViT-L-14 or RN50 (see open_clip.list_models()), hf:org/repo or "
                "hf:/path/to/folder")
        if pretrained is not None:
            check_pretrained(arch, pretrained)


def load_model(spec: str, pretrained: str | None = None,
               device: str | torch.device | None = None) -> DualEncoder:
    """Build the dual encoder named by ``spec`` on ``device`` (default: CUDA when available), in eval mode."""
    device = check_device(device or default_device())
    check_model(spec, pretrained)
    if spec in BRIDGE_SPECS:
        from .bridge import build_bridge
        model: DualEncoder = build_bridge(device, spec)
    elif spec.startswith("hf:"):
        from .hf_backend import build_hf
        model = build_hf(spec[3:], device)
    else:
        from .open_clip_backend import build_open_clip
        model = build_open_clip(spec, pretrained, device)
    # cuDNN's and oneDNN's fast convolution kernels want NHWC (EfficientNet-Lite0 on 2 CPU
    # cores: 15 -> 31 images/s forward). Only convolutional towers: a ViT's one patch
    # embedding conv gains nothing, and transformers' towers have none.
    for tower in model.image_modules():
        if sum(isinstance(m, torch.nn.Conv2d) for m in tower.modules()) > 1:
            tower.to(memory_format=torch.channels_last)
    return model.eval()
