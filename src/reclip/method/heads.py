"""The classification heads of ReCLIP, shared by training and inference (docs/method.md, "The loop").

T's head is the frozen image tower's features against T's first-template text embeddings;
V's head is V's image features against V's centroid classifier. ReCLIP predicts with their
fusion (``head_fusion``): the paper's average ``0.5 * (logits_T + logits_V)``, or each head's
logits first divided by its own temperature, fitted without labels so that the head's mean
confidence equals label propagation's on the frozen model, and their log-probabilities
averaged (docs/method.md, "Heads fused by what they know"); a single-branch mode predicts
with its own head.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..models.base import DualEncoder
from .safeguard import fit_temperature
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


@dataclass(frozen=True)
class Fusion:
    """How ``combine`` fuses T's and V's logits: ``rule`` (``ReclipConfig.head_fusion``) and, for
    ``calibrated``, each head's temperature (T's, V's). An adapter stores it (``as_dict``)."""

    rule: str = "average"
    temperature_t: float = 1.0
    temperature_v: float = 1.0

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def fit_fusion(logits_t: torch.Tensor, logits_v: torch.Tensor, rule: str, confidence: float | None) -> Fusion:
    """The ``Fusion`` of ``rule`` for T's and V's N x C logits: for ``calibrated``, each head's
    temperature makes its mean largest probability equal ``confidence`` (label propagation's
    mean confidence on the frozen model, ``safeguard.confidence_target``); ``average`` has none."""
    if rule == "average":
        return Fusion(rule)
    if confidence is None:
        raise ValueError("the calibrated fusion needs a confidence target")
    return Fusion(rule, fit_temperature(logits_t, confidence), fit_temperature(logits_v, confidence))


def fuse(logits_t: torch.Tensor, logits_v: torch.Tensor, mode: str, rule: str,
         confidence: float | None) -> tuple[torch.Tensor, Fusion]:
    """(N x C prediction logits of ``mode``, the ``Fusion`` behind them) from T's and V's N x C
    logits: ``rule``'s fusion (``fit_fusion`` at ``confidence``) for ``reclip``, one branch's
    head otherwise."""
    fusion = fit_fusion(logits_t, logits_v, rule, confidence) if mode == "reclip" else Fusion()
    return combine(logits_t, logits_v, mode, fusion), fusion


def combined_logits(f_frozen: torch.Tensor, f_v: torch.Tensor, t_classifier: torch.Tensor,
                    v_classifier: torch.Tensor, mode: str, fusion: Fusion = Fusion()) -> torch.Tensor:
    """N x C float32 prediction logits of ``mode``'s head (``combine``) from ``f_frozen`` (N x D,
    the frozen tower's features, T's) and ``f_v`` (N x D, V's) against the C x D classifiers."""
    return combine(*head_logits(f_frozen, f_v, t_classifier, v_classifier), mode, fusion)


def combine(logits_t: torch.Tensor, logits_v: torch.Tensor, mode: str, fusion: Fusion = Fusion()) -> torch.Tensor:
    """The N x C prediction logits of ``mode`` from T's and V's N x C logits: a branch's own for
    ``t-only`` / ``v-only``; for ``reclip`` the paper's ``0.5 * (logits_T + logits_V)``
    (``fusion.rule == "average"``) or ``0.5 * (log_softmax(logits_T / tau_T) +
    log_softmax(logits_V / tau_V))`` (``"calibrated"``, the temperatures of ``fusion``)."""
    if mode != "reclip":
        return {"v-only": logits_v, "t-only": logits_t}[mode]
    if fusion.rule == "average":
        return 0.5 * (logits_t + logits_v)
    return 0.5 * ((logits_t.float() / fusion.temperature_t).log_softmax(dim=-1)
                  + (logits_v.float() / fusion.temperature_v).log_softmax(dim=-1))


def text_heads(model: DualEncoder, classnames: list[list[str]], templates: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(first-template C x D, full-template C x D) float32 embeddings of the current text tower, on CPU."""
    with torch.inference_mode():
        full, short = ensemble_classifiers(model, classnames, templates)
    return short.float().cpu(), full.float().cpu()
