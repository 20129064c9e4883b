"""Classification metrics for reports: top-1/top-5, mean per-class recall and calibration (ECE)."""
from __future__ import annotations

import torch


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15) -> dict[str, float]:
    """Metrics of N x C ``logits`` (already temperature-scaled) against ``labels`` (N,).

    Images with label -1 (unknown) are ignored; with no known label, returns ``{}``.
    ECE uses ``n_bins`` equal-width bins of the softmax confidence of the predicted class.
    """
    known = labels >= 0
    if not bool(known.any()):
        return {}
    logits, labels = logits[known].float(), labels[known].long()
    probs = logits.softmax(dim=-1)
    conf, pred = probs.max(dim=-1)
    correct = (pred == labels).float()
    top5 = logits.topk(min(5, logits.shape[1]), dim=-1).indices.eq(labels[:, None]).any(dim=-1).float()

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
