"""Label propagation and TransCLIP as ``Transducer``s (their algorithms live in
``method/propagation.py`` and ``method/transclip.py``)."""
from __future__ import annotations

import torch

from ...metrics import scores_to_probabilities
from ..propagation import label_propagation
from ..transclip import transclip
from .base import Transduction


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))


class LabelPropagation:
    """Label propagation (docs/method.md, steps 1-2) with fixed ``settings`` (the keyword
    arguments of ``label_propagation``: k, alpha, cut_dim, project, knn, knn_backend,
    image_edges) on ``device``. Probabilities are the propagated scores normalised per row.

    A call on the same features and classifier as the previous one returns the previous
    answer (the frozen model's graph at epoch 0 is both T's and the safeguard's)."""

    name = "propagation"
    first_template = False

    def __init__(self, settings: dict, device: torch.device | str | None = None) -> None:
        self.settings, self.device = settings, device
        self._last: tuple[torch.Tensor, torch.Tensor, Transduction] | None = None

    def __call__(self, features: torch.Tensor, classifier: torch.Tensor) -> Transduction:
        if self._last is not None and _same(self._last[0], features) and _same(self._last[1], classifier):
            return self._last[2]
        lp = label_propagation(features, classifier, **self.settings, device=self.device)
        result = Transduction(scores_to_probabilities(lp.scores), lp.labels, lp.centroids,
                              {"k": lp.k, "knn_backend": lp.knn_backend, "knn_recall": lp.knn_recall,
                               "timings": lp.timings})
        self._last = (features, classifier, result)
        return result


class TransCLIP:
    """The published TransCLIP with ``k`` neighbours and ``knn`` search on ``device``; like the
    authors' code, it reads the first template's classifier."""

    name = "transclip"
    first_template = True

    def __init__(self, k: int, knn: str, device: torch.device | str | None = None) -> None:
        self.k, self.knn, self.device = k, knn, device

    def __call__(self, features: torch.Tensor, classifier: torch.Tensor) -> Transduction:
        result = transclip(features, classifier=classifier, k=self.k, knn=self.knn, device=self.device)
        info = {"k": result.k, "knn_backend": result.knn_backend, "timings": result.timings}
        return Transduction(result.probs.float(), result.labels, None, info)
