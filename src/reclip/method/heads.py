"""The classification heads of ReCLIP, shared by training and inference (docs/method.md, "The loop").

T's head is the frozen image tower's features against T's first-template text embeddings;
V's head is V's image features against V's classifier: its label-propagation centroids (the
paper's), a linear head trained on its pseudo labels (``linear_head``), or the two blended at
calibrated temperatures (``blend_head``; docs/method.md, "V's trained head"). ReCLIP predicts
with their fusion (``head_fusion``): the paper's average ``0.5 * (logits_T + logits_V)``; each head's logits first divided by its own temperature,
fitted without labels so that the head's mean confidence equals label propagation's on the
frozen model, and their log-probabilities averaged (docs/method.md, "Heads fused by what they
know"); or V's head alone. A single-branch mode predicts with its own head.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..models.base import DualEncoder
from ..runtime import torch_threads
from .safeguard import fit_temperature
from .zeroshot import LOGIT_SCALE, ensemble_classifiers


@dataclass
class Heads:
    """Everything the combined classifier needs besides the tower weights.

    ``v_classifier`` C x D (V's classifier: centroids, linear head or their blend), ``t_classifier`` C x D (first-template text
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
    mean confidence on the frozen model, ``safeguard.confidence_target``); ``average`` and ``v`` have none."""
    if rule in ("average", "v"):
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


#: L-BFGS iterations at most for ``linear_head`` (it stops earlier once the gradient is below LINEAR_HEAD_TOLERANCE)
LINEAR_HEAD_ITERATIONS = 500
LINEAR_HEAD_TOLERANCE = 1e-7


def linear_head(features: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """V's linear head: the C x D classifier ``W`` of the multinomial logistic regression, without
    intercept, of the ``targets`` on the n x D ``features``, with scikit-learn's default L2 strength
    (C = 1):

        minimise  mean_i CE(f_i W^T, q_i) + ||W||^2 / (2 n)

    where ``q_i`` is the one-hot row of label ``targets[i]`` (hard targets: (n,) class indices) or
    ``targets[i]`` itself (soft targets: n x C rows summing to 1, e.g. label propagation's
    probabilities), from ``W = 0`` by L-BFGS (strong Wolfe line search) in float64 on one thread, so
    the result does not depend on the thread count (nor on an enclosing inference mode). A class
    without any label gets a row pointing away from the images. Returns ``W / LOGIT_SCALE``
    (float32, CPU), so that V's logits, ``LOGIT_SCALE * f @ classifier.T`` like every head's, are
    ``f @ W.T``."""
    n = len(features)
    if n == 0:
        raise ValueError("linear_head needs at least one labelled feature")
    if targets.dim() == 2 and tuple(targets.shape) != (n, num_classes):
        raise ValueError(f"soft targets must be {n} x {num_classes}; got {tuple(targets.shape)}")
    l2 = 1.0 / n
    with torch_threads(1), torch.inference_mode(False), torch.no_grad():
        x = features.detach().cpu().double().clone()  # a normal tensor even if made under inference mode
        q = (torch.nn.functional.one_hot(targets.cpu().clone(), num_classes) if targets.dim() == 1
             else targets.detach().cpu().clone()).double()
        weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)

        def objective() -> torch.Tensor:
            log_p = (x @ weight.T).log_softmax(dim=-1)
            weight.grad = (log_p.exp() - q).T @ x / n + l2 * weight
            return -(q * log_p).sum() / n + 0.5 * l2 * (weight * weight).sum()

        optimizer = torch.optim.LBFGS([weight], lr=1.0, max_iter=LINEAR_HEAD_ITERATIONS, history_size=20,
                                      tolerance_grad=LINEAR_HEAD_TOLERANCE, tolerance_change=1e-12,
                                      line_search_fn="strong_wolfe")
        optimizer.step(objective)
    return (weight / LOGIT_SCALE).float()


def blend_head(features: torch.Tensor, centroids: torch.Tensor, linear: torch.Tensor,
               confidence: float) -> torch.Tensor:
    """V's blended classifier, C x D: ``(centroids / tau_c + linear / tau_l) / 2``, each ``tau`` the
    temperature (``fit_temperature``) at which that C x D classifier's head on the N x D ``features``
    (``LOGIT_SCALE * f @ W.T``) has mean largest probability ``confidence`` (label propagation's, a
    label-free estimate of the accuracy). Its logits are the mean of the two calibrated heads' logits,
    so its softmax is that of the mean of their log-probabilities, as the ``calibrated`` fusion does
    for T and V: the centroids (blind to class shares) and the linear head (which learns them from the
    pseudo labels) each count by what they are sure of, not by the spread of their logits."""
    f, centroids, linear = features.float().cpu(), centroids.float().cpu(), linear.float().cpu()
    tau_c = fit_temperature(LOGIT_SCALE * f @ centroids.T, confidence)
    tau_l = fit_temperature(LOGIT_SCALE * f @ linear.T, confidence)
    return 0.5 * (centroids / tau_c + linear / tau_l)


def combine(logits_t: torch.Tensor, logits_v: torch.Tensor, mode: str, fusion: Fusion = Fusion()) -> torch.Tensor:
    """The N x C prediction logits of ``mode`` from T's and V's N x C logits: a branch's own for
    ``t-only`` / ``v-only``; for ``reclip`` the paper's ``0.5 * (logits_T + logits_V)``
    (``fusion.rule == "average"``), ``0.5 * (log_softmax(logits_T / tau_T) +
    log_softmax(logits_V / tau_V))`` (``"calibrated"``, the temperatures of ``fusion``) or V's
    own (``"v"``)."""
    if mode != "reclip":
        return {"v-only": logits_v, "t-only": logits_t}[mode]
    if fusion.rule == "v":
        return logits_v
    if fusion.rule == "average":
        return 0.5 * (logits_t + logits_v)
    return 0.5 * ((logits_t.float() / fusion.temperature_t).log_softmax(dim=-1)
                  + (logits_v.float() / fusion.temperature_v).log_softmax(dim=-1))


def text_heads(model: DualEncoder, classnames: list[list[str]], templates: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(first-template C x D, full-template C x D) float32 embeddings of the current text tower, on CPU."""
    with torch.inference_mode():
        full, short = ensemble_classifiers(model, classnames, templates)
    return short.float().cpu(), full.float().cpu()
