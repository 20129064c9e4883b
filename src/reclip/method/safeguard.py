"""Label-free checks at the end of a ReCLIP run: keep the adapted predictions or fall back
to zero-shot, and calibrate the confidences (docs/method.md, "Safeguard and calibration").

Two signals; either one keeps the zero-shot predictions, and the run says so.

- Head agreement: the share of images on which ReCLIP-T's head and ReCLIP-V's head predict
  the same class. The two heads look at different features (frozen vs adapted image tower)
  and are trained on the labels they agree on; when their pseudo labels are poor they drift
  apart (as two independently trained models do, Jiang et al., ICLR 2022). Below
  ``safeguard`` the run falls back.
- Estimated gain: label propagation's probabilities on the frozen model (N x C,
  ``reclip.frozen_posterior``: the transductive predictions, which training cannot bend) taken
  as soft labels, the expected top-1 of the adapted predictions minus that of the zero-shot
  ones. At or below ``safeguard_gain`` the run falls back.

Calibration: the adapted predictions get a temperature chosen so that their mean confidence
equals the mean confidence of those same probabilities, a label-free estimate of the
accuracy: an over-confident head is cooled down without any label.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .transduce.base import Transducer

TEMPERATURE_RANGE = (1e-2, 1e3)


def head_agreement(f_frozen: torch.Tensor, f_v: torch.Tensor, t_classifier: torch.Tensor,
                   v_classifier: torch.Tensor) -> float:
    """Share of the N images where T's head (``f_frozen`` N x D against ``t_classifier`` C x D)
    and V's head (``f_v`` against ``v_classifier``) predict the same class."""
    t = (f_frozen.float() @ t_classifier.float().T).argmax(-1)
    v = (f_v.float() @ v_classifier.float().T).argmax(-1)
    return (t == v).float().mean().item()


def fit_temperature(logits: torch.Tensor, target: float, iterations: int = 60) -> float:
    """Temperature T with mean_i max_c softmax(logits_i / T) = ``target`` (N x C logits),
    by bisection on log T (the mean confidence falls as T grows). Clipped to
    ``TEMPERATURE_RANGE`` when the target is out of reach."""
    c = logits.shape[1]
    target = min(max(target, 1.0 / c + 1e-6), 1.0 - 1e-6)
    low, high = (torch.tensor(t).log() for t in TEMPERATURE_RANGE)

    def confidence(log_t: torch.Tensor) -> float:
        return (logits.float() / log_t.exp()).softmax(-1).max(-1).values.mean().item()

    for _ in range(iterations):
        mid = (low + high) / 2
        if confidence(mid) > target:
            low = mid
        else:
            high = mid
    return float(((low + high) / 2).exp())


def estimated_gain(posterior: torch.Tensor, predicted: torch.Tensor, zero_shot: torch.Tensor) -> float:
    """Expected top-1 of the (N,) ``predicted`` classes minus that of the (N,) ``zero_shot``
    ones when each image's class is drawn from its row of the N x C ``posterior``:
    ``mean_i posterior[i, predicted_i] - posterior[i, zero_shot_i]``, in [-1, 1]."""
    rows = torch.arange(len(posterior))
    return (posterior[rows, predicted] - posterior[rows, zero_shot]).float().mean().item()


@dataclass
class Decision:
    """What the safeguard chose: ``kept`` ("adapted" or "zero-shot"), both signals and their
    thresholds (``agreement`` / ``threshold``, ``estimated_gain`` / ``min_gain``), the
    ``temperature`` applied to the adapted logits, the mean confidence it aims for
    (``confidence_target``, None without calibration) and a one-line ``reason``."""

    kept: str
    agreement: float
    threshold: float
    estimated_gain: float
    min_gain: float
    temperature: float
    confidence_target: float | None
    reason: str

    def as_dict(self) -> dict:
        return {"kept": self.kept, "agreement": self.agreement, "threshold": self.threshold,
                "estimated_gain": self.estimated_gain, "min_gain": self.min_gain, "temperature": self.temperature,
                "confidence_target": self.confidence_target, "reason": self.reason}


def keeps_adapted(agreement: float, threshold: float, gain: float, min_gain: float) -> bool:
    """The safeguard's rule: keep the adapted predictions when the heads agree on at least
    ``threshold`` of the images and the estimated ``gain`` is above ``min_gain`` (-1: that check off)."""
    return agreement >= threshold and (min_gain <= -1 or gain > min_gain)


def decide(logits: torch.Tensor, agreement: float, threshold: float, gain: float, min_gain: float,
           confidence_target: float | None) -> Decision:
    """Keep the adapted N x C ``logits`` unless the heads' final ``agreement`` is below
    ``threshold`` or the ``gain`` estimated by label propagation is at most ``min_gain`` (-1: never);
    calibrate them to the mean confidence ``confidence_target`` (None: temperature 1)."""
    temperature = fit_temperature(logits, confidence_target) if confidence_target is not None else 1.0
    signals = (f"T and V agree on {100 * agreement:.1f}% of the images (safeguard {100 * threshold:.0f}%), "
               f"estimated top-1 gain over zero-shot {100 * gain:+.2f} points (safeguard above {100 * min_gain:+.2f})")
    if not keeps_adapted(agreement, threshold, gain, min_gain):
        why = ("their pseudo labels were too poor to trust" if agreement < threshold
               else "label propagation rates the zero-shot predictions at least as likely right")
        return Decision("zero-shot", agreement, threshold, gain, min_gain, temperature, confidence_target,
                        f"{signals}: {why}, so the zero-shot predictions are kept")
    return Decision("adapted", agreement, threshold, gain, min_gain, temperature, confidence_target, signals)


class SafeguardWarning(UserWarning):
    """The safeguard kept the zero-shot predictions of a ReCLIP run."""


def frozen_posterior(judge: Transducer, f_frozen: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """N x C probabilities of the safeguard's ``judge`` (label propagation with the run's
    settings) on the frozen model: the frozen N x D features with its C x D zero-shot
    ``classifier`` (full-template text embeddings) as class nodes; they are the transductive
    mode's predictions. Training cannot bend them, so the estimated gain and the
    calibration's target read them."""
    return judge(f_frozen, classifier).probs


def judge_run(logits: torch.Tensor, agreement: float, posterior: torch.Tensor, zero_shot: torch.Tensor,
              settings: dict) -> Decision:
    """The safeguard's ``Decision`` on a finished ReCLIP run: its N x C prediction ``logits``, the
    heads' final ``agreement``, the judge's N x C ``posterior`` and the (N,) ``zero_shot``
    classes, under ``settings`` (``safeguard``, ``safeguard_gain``, ``calibrate``: the
    config's safeguard stage)."""
    gain = estimated_gain(posterior, logits.argmax(dim=-1), zero_shot)
    target = confidence_target(posterior) if settings["calibrate"] else None
    return decide(logits, agreement, settings["safeguard"], gain, settings["safeguard_gain"], target)


def confidence_target(posterior: torch.Tensor) -> float:
    """The calibration's target: the mean largest probability of the N x C ``posterior``."""
    return posterior.max(dim=-1).values.mean().item()
