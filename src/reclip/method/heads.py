"""The classification heads of ReCLIP, shared by training and inference (docs/method.md, "The loop").

T's head is the frozen image tower's features against T's first-template text embeddings;
V's head is V's image features against V's centroid classifier. ReCLIP predicts with their
average, ``0.5 * (logits_T + logits_V)``; a single-branch mode with its own head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.base import DualEncoder
from .zeroshot import LOGIT_SCALE, ensemble_classifiers


@dataclass
class Heads:
    """Everything the combined classifier needs besides the tower weights.

    ``v_classifier`` C x D (V's centroids), ``t_classifier`` C x D (first-template text
    embeddings of the current text tower), ``t_full`` C x D (full-template embeddings:
    T's projection and class nodes), ``t_original`` C x D (the frozen model's full-template
    embeddings: V's projection and class nodes for the whole run).
    """

    v_classifier: torch.Tensor
    t_classifier: torch.Tensor
    t_full: torch.Tensor
    t_original: torch.Tensor


def head_logits(f_frozen: torch.Tensor, f_v: torch.Tensor, t_classifier: torch.Tensor,
                v_classifier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T's, V's) N x C float32 logits: ``f_frozen`` (N x D, the frozen tower's features) against
    ``t_classifier`` (C x D) and ``f_v`` (N x D, V's features) against ``v_classifier``, scaled by 100."""
    return (LOGIT_SCALE * f_frozen.float() @ t_classifier.float().T,
            LOGIT_SCALE * f_v.float() @ v_classifier.float().T)


def combined_logits(f_frozen: torch.Tensor, f_v: torch.Tensor, t_classifier: torch.Tensor,
                    v_classifier: torch.Tensor, mode: str) -> torch.Tensor:
    """N x C float32 prediction logits: 0.5 * (logits_T + logits_V) for ReCLIP, one branch otherwise.

    ``f_frozen`` N x D frozen-tower features (T's), ``f_v`` N x D V's, classifiers C x D.
    """
    return combine(*head_logits(f_frozen, f_v, t_classifier, v_classifier), mode)


def combine(logits_t: torch.Tensor, logits_v: torch.Tensor, mode: str) -> torch.Tensor:
    """The prediction head of ``mode`` from T's and V's N x C logits: their average
    ``0.5 * (logits_T + logits_V)`` for ReCLIP, a branch's own for ``t-only`` / ``v-only``."""
    return {"reclip": 0.5 * (logits_t + logits_v), "v-only": logits_v, "t-only": logits_t}[mode]


def text_heads(model: DualEncoder, classnames: list[list[str]], templates: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(first-template C x D, full-template C x D) float32 embeddings of the current text tower, on CPU."""
    with torch.inference_mode():
        full, short = ensemble_classifiers(model, classnames, templates)
    return short.float().cpu(), full.float().cpu()
