"""reclip: label-free, source-free adaptation of CLIP-style models (ReCLIP, WACV 2024).

Public API (imported lazily so ``import reclip`` stays fast):

- ``load_model(spec, pretrained=None, device=None)`` -> ``DualEncoder``
- ``load_dataset(spec, root=None, split="test", transform=None, ...)`` -> ``ImageDataset``
- ``label_propagation(image_features, class_embeddings, ...)`` -> ``PropagationResult``
- ``projection(class_embeddings, cut_dim=None)``
- ``Adapter`` (``Adapter.load(path).apply(model)``)
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "reclip.models.factory",
    "DualEncoder": "reclip.models.base",
    "load_dataset": "reclip.data.datasets",
    "ImageDataset": "reclip.data.datasets",
    "label_propagation": "reclip.method.propagation",
    "projection": "reclip.method.propagation",
    "PropagationResult": "reclip.method.propagation",
    "Adapter": "reclip.method.adapter",
    "ReclipError": "reclip.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'reclip' has no attribute {name!r}")
