"""Classification metrics for reports: top-1/top-5, mean per-class recall and calibration (ECE)."""
from __future__ import annotations

import torch


def scores_to_probabilities(scores: torch.Tensor) -> torch.Tensor:
    """N x C non-negative scores (label propagation's) -> rows summing to 1; an all-zero row
    becomes uniform."""
    mass = scores.float().clamp(min=0)
    total = mass.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, mass / total.clamp(min=1e-30), torch.full_like(mass, 1 / mass.shape[1]))


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15) -> dict[str, float]:
    """Metrics of N x C class probabilities against ``labels`` (N,).

    Images with label -1 (unknown) are ignored; with no known label, returns ``{}``.
    ECE uses ``n_bins`` equal-width bins of the probability of the predicted class.
    """
    known = labels >= 0
    if not bool(known.any()):
        return {}
    probs, labels = probs[known].float(), labels[known].long()
    conf, pred = probs.max(dim=-1)
    correct = (pred == labels).float()
    top5 = probs.topk(min(5, probs.shape[1]), dim=-1).indices.eq(labels[:, None]).any(dim=-1).float()

    present = labels.unique()
    recalls = torch.stack([correct[labels == c].mean() for c in present])

    bins = torch.clamp((conf * n_bins).long(), max=n_bins - 1)
    ece = torch.zeros(())
    for b in bins.unique():
        in_bin = bins == b
        ece += in_bin.float().mean() * (conf[in_bin].mean() - correct[in_bin].mean()).abs()
    return {
        "top1": correct.mean().item(),
        "top5": top5.mean().item(),
        "mean_per_class_recall": recalls.mean().item(),
        "ece": ece.item(),
    }
