"""reclip: label-free, source-free adaptation of CLIP-style models (ReCLIP, WACV 2024).

Public API (imported lazily so ``import reclip`` stays fast):

- ``load_model(spec, pretrained=None, device=None)`` -> ``DualEncoder``
- ``load_dataset(spec, root=None, split="test", transform=None, ...)`` -> ``ImageDataset``;
  ``random_subset(dataset, n, seed=0)``
- ``ReCLIP(model, ReclipConfig(...)).fit(dataset, out=None, resume=False)`` -> ``ReclipResult``
  (``predictions``, ``zero_shot``, ``adapter``, ``metrics`` (metrics.json), typed ``info``,
  ``final_metrics``, ``safeguard``, ``logits`` of every head, ``history``, ``save(out)``);
  ``ReCLIP(model, config, stages=Stages(...))`` replaces a stage's ``Transducer`` (features +
  classifier in, ``Transduction`` out); ``ModelProfile``: the settings a kind of model declares
- ``Adapter.load(path).apply(model)`` -> ``AdaptedModel`` (``predict(dataset)`` -> ``Predictions``)
- ``label_propagation(image_features, class_embeddings, ...)`` -> ``PropagationResult``;
  ``projection(class_embeddings, cut_dim=None)``; ``transclip(image_features, classifier=...)``
- ``write_report(run_dir)``: rebuild report.html / report.png of a finished run
- ``Callback`` (hooks into ``fit``), ``ReclipError`` (every error a user can fix), its
  subclass ``ArgumentError`` (fixed by passing another ``param``; its message names it as a
  Python argument, ``render`` as a flag) and that one's subclass ``ConfigError`` (a bad
  ``ReclipConfig`` setting)

The method, step by step, is in docs/method.md.
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
    "random_subset": "reclip.data.sampling",
    "ReCLIP": "reclip.method.run",
    "ReclipResult": "reclip.method.result",
    "Stages": "reclip.method.run",
    "Transducer": "reclip.method.transduce.base",
    "Transduction": "reclip.method.transduce.base",
    "ModelProfile": "reclip.method.config",
    "ReclipConfig": "reclip.method.config",
    "ConfigError": "reclip.method.config",
    "Predictions": "reclip.predictions",
    "Callback": "reclip.method.callbacks",
    "label_propagation": "reclip.method.propagation",
    "projection": "reclip.method.propagation",
    "transclip": "reclip.method.transclip",
    "PropagationResult": "reclip.method.propagation",
    "Adapter": "reclip.method.adapter",
    "AdaptedModel": "reclip.method.adapter",
    "ReclipError": "reclip.errors",
    "ArgumentError": "reclip.errors",
    "write_report": "reclip.report",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'reclip' has no attribute {name!r}")
