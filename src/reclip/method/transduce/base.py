"""The ``Transducer`` interface: what label propagation and TransCLIP both are.

A transducer takes the N x D image features of a whole target and a C x D classifier
(class embeddings) and returns a ``Transduction``: N x C probabilities for every image at
once. Label propagation labels ReCLIP's pseudo labels and judges its safeguard; both
training-free modes are a transducer applied to the frozen features.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class Transduction:
    """``probs`` N x C (rows sum to 1), ``labels`` (N,) the class of each image, ``centroids``
    C x D class centroids of the features (None when the method has none) and ``info``: what
    metrics.json records about the run (k, timings, ...)."""

    probs: torch.Tensor
    labels: torch.Tensor
    centroids: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Transducer(Protocol):
    """Features N x D and classifier C x D in, a ``Transduction`` out. ``first_template``: the
    classifier it expects is the first template's alone rather than the prompt ensemble's."""

    name: str
    first_template: bool

    def __call__(self, features: torch.Tensor, classifier: torch.Tensor) -> Transduction:
        ...
