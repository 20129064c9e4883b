"""``Predictions``: what a run or an adapted model says about each image, and predictions.csv."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .io import write_csv
from .metrics import classification_metrics

CSV_HEADER = ("index", "path", "pred", "pred_name", "confidence")


@dataclass
class Predictions:
    """Class probabilities of N scored images.

    ``indices`` (N,) dataset indices of the readable images, ``probs`` N x C (rows sum to 1),
    ``classnames`` C lists of synonyms (display name first), ``paths`` the dataset's file per
    index (None when the images live in arrays or archives), ``labels`` (N,) ground truth
    with -1 where unknown (used only for metrics), ``skipped`` dataset indices of unreadable
    images.
    """

    indices: torch.Tensor
    probs: torch.Tensor
    classnames: list[list[str]]
    paths: list[str] | None
    labels: torch.Tensor
    skipped: list[int]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def pred(self) -> torch.Tensor:
        """(N,) predicted class indices."""
        return self.probs.argmax(dim=-1)

    @property
    def confidence(self) -> torch.Tensor:
        """(N,) probability of the predicted class."""
        return self.probs.max(dim=-1).values

    @property
    def pred_names(self) -> list[str]:
        """Display name of each predicted class."""
        return [self.classnames[c][0] for c in self.pred.tolist()]

    @property
    def image_paths(self) -> list[str]:
        """File of each scored image ("" when the dataset has no files)."""
        return [self.paths[i] if self.paths else "" for i in self.indices.tolist()]

    def metrics(self) -> dict[str, float]:
        """top1, top5, mean_per_class_recall and ece against the known labels ({} without labels)."""
        return classification_metrics(self.probs, self.labels)

    def save_csv(self, path: str | Path) -> None:
        """Write ``index,path,pred,pred_name,confidence`` rows, atomically."""
        rows = [(int(i), p, int(c), name, f"{float(conf):.6f}")
                for i, p, c, name, conf in zip(self.indices.tolist(), self.image_paths, self.pred.tolist(),
                                               self.pred_names, self.confidence.tolist())]
        write_csv(path, CSV_HEADER, rows)
