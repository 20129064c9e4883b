"""Stage 1 of a run: the frozen model's view of the target (docs/method.md, step 0).

The frozen image tower's features (through the feature cache), the prompt-ensemble text
classifier and the zero-shot logits: every later stage starts from these, and none of them
changes during a run.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.datasets import ImageDataset
from ..errors import ReclipError
from ..features import Features, extract_features
from ..models.base import DualEncoder
from ..predictions import Predictions
from .zeroshot import ensemble_classifiers, zero_shot_logits


@dataclass
class FrozenView:
    """``features``: the frozen image tower's ``Features`` (N x D, dataset indices, labels,
    skipped images); ``classifier``: C x D float32 prompt-ensemble text embeddings (CPU);
    ``first_template_classifier``: C x D, the same from the first template alone (TransCLIP's
    authors build their zero-shot probabilities from it); ``zero_shot_logits``: N x C,
    ``100 * features @ classifier.T``; ``dataset`` they describe."""

    features: Features
    classifier: torch.Tensor
    first_template_classifier: torch.Tensor
    zero_shot_logits: torch.Tensor
    dataset: ImageDataset

    @property
    def n(self) -> int:
        return len(self.features.indices)

    def predictions(self, probs: torch.Tensor) -> Predictions:
        """``Predictions`` of the N x C class probabilities ``probs`` (rows in this view's order)."""
        f = self.features
        return Predictions(f.indices, probs, self.dataset.classnames, self.dataset.paths, f.labels, f.skipped)

    @property
    def zero_shot(self) -> Predictions:
        return self.predictions(self.zero_shot_logits.softmax(dim=-1))


def frozen_view(model: DualEncoder, dataset: ImageDataset, templates: list[str], *, batch_size: int,
                workers: int | None, cache: bool) -> FrozenView:
    """The ``FrozenView`` of ``dataset`` under ``model`` with the prompt ``templates``; refuses a
    dataset with no readable image."""
    features = extract_features(model, dataset, batch_size=batch_size, workers=workers, use_cache=cache)
    if len(features.indices) == 0:
        raise ReclipError(f"no readable image in {dataset.spec}; every file failed to decode")
    with torch.inference_mode():
        classifier, first = (c.float().cpu() for c in ensemble_classifiers(model, dataset.classnames, templates))
    return FrozenView(features, classifier, first, zero_shot_logits(features.features, classifier), dataset)
