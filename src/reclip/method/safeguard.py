"""Label-free checks at the end of a ReCLIP run: keep the adapted predictions or fall back
to zero-shot, and calibrate the confidences (docs/method.md, "Safeguard and calibration").

Two signals; either one keeps the zero-shot predictions, and the run says so. Both are means
over the N images, so each is tested with its standard error at the one-sided confidence
``safeguard_level`` (z its normal quantile), which makes a threshold mean the same at 300
images as at 20,000 (docs/method.md, "A safeguard that holds at every size"):

- Head agreement a: the share of images on which ReCLIP-T's head and ReCLIP-V's head predict
  the same class. The two heads look at different features (frozen vs adapted image tower)
  and are trained on the labels they agree on; when their pseudo labels are poor they drift
  apart (as two independently trained models do, Jiang et al., ICLR 2022). The run falls
  back when a is below ``safeguard`` beyond its noise: a + z sqrt(a (1 - a) / N) < safeguard.
- Estimated gain g: label propagation's probabilities on the frozen model (N x C,
  ``reclip.frozen_posterior``: the transductive predictions, which training cannot bend) taken
  as soft labels, the expected top-1 of the adapted predictions minus that of the zero-shot
  ones, the mean of a per-image difference with standard deviation s. The run falls back
  unless g is above ``safeguard_gain`` beyond its noise: g - z s / sqrt(N) > safeguard_gain.

Calibration: the adapted predictions get a temperature chosen so that their mean confidence
equals the mean confidence of those same probabilities, a label-free estimate of the
accuracy: an over-confident head is cooled down without any label.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

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


def gain_per_image(posterior: torch.Tensor, predicted: torch.Tensor, zero_shot: torch.Tensor) -> torch.Tensor:
    """(N,) ``posterior[i, predicted_i] - posterior[i, zero_shot_i]``: how much likelier image i's
    (N,) ``predicted`` class is right than its (N,) ``zero_shot`` class under the N x C ``posterior``."""
    rows = torch.arange(len(posterior))
    return (posterior[rows, predicted] - posterior[rows, zero_shot]).float()


def estimated_gain(posterior: torch.Tensor, predicted: torch.Tensor, zero_shot: torch.Tensor) -> float:
    """Expected top-1 of the (N,) ``predicted`` classes minus that of the (N,) ``zero_shot``
    ones when each image's class is drawn from its row of the N x C ``posterior``:
    the mean of ``gain_per_image``, in [-1, 1]."""
    return gain_per_image(posterior, predicted, zero_shot).mean().item()


def bounds(agreement: float, gain: float, gain_sd: float, n: int, level: float) -> tuple[float, float]:
    """(upper bound of the head ``agreement``, lower bound of the estimated ``gain``), each one-sided
    at confidence ``level`` for a mean over ``n`` images: ``agreement + z sqrt(agreement (1 -
    agreement) / n)`` and ``gain - z gain_sd / sqrt(n)``, z the normal quantile of ``level``
    (0.5: z = 0, the values themselves)."""
    z = NormalDist().inv_cdf(level)
    return (agreement + z * (agreement * (1.0 - agreement) / n) ** 0.5,
            gain - z * gain_sd / n ** 0.5)


@dataclass
class Decision:
    """What the safeguard chose: ``kept`` ("adapted" or "zero-shot"), both signals, their
    thresholds, and their one-sided bounds at confidence ``level`` over ``n`` images
    (``agreement`` / ``threshold`` / ``agreement_bound``, ``estimated_gain`` / ``min_gain`` /
    ``gain_bound``), the ``temperature`` applied to the adapted logits, the mean confidence it
    aims for (``confidence_target``, None without calibration) and a one-line ``reason``."""

    kept: str
    agreement: float
    threshold: float
    estimated_gain: float
    min_gain: float
    temperature: float
    confidence_target: float | None
    reason: str
    n: int
    level: float
    agreement_bound: float
    gain_bound: float

    def as_dict(self) -> dict:
        return {"kept": self.kept, "agreement": self.agreement, "threshold": self.threshold,
                "estimated_gain": self.estimated_gain, "min_gain": self.min_gain, "temperature": self.temperature,
                "confidence_target": self.confidence_target, "reason": self.reason, "n": self.n,
                "level": self.level, "agreement_bound": self.agreement_bound, "gain_bound": self.gain_bound}


def keeps_adapted(agreement: float, threshold: float, gain: float, min_gain: float, *, gain_sd: float = 0.0,
                  n: int = 1, level: float = 0.5) -> bool:
    """The safeguard's rule on ``n`` images: keep the adapted predictions unless the heads'
    ``agreement`` is below ``threshold`` beyond its noise (its upper bound at ``level`` below
    it), or the estimated ``gain`` (per-image standard deviation ``gain_sd``) is not above
    ``min_gain`` beyond its noise (its lower bound at most ``min_gain``; -1: this check off).
    ``bounds`` gives both bounds; at ``level`` 0.5 they are the values themselves."""
    high, low = bounds(agreement, gain, gain_sd, n, level)
    return high >= threshold and (min_gain <= -1 or low > min_gain)


def decide(logits: torch.Tensor, agreement: float, threshold: float, gain: float, min_gain: float,
           confidence_target: float | None, *, gain_sd: float = 0.0, n: int = 1, level: float = 0.5) -> Decision:
    """Keep the adapted N x C ``logits`` or fall back, by ``keeps_adapted`` (same arguments);
    calibrate them to the mean confidence ``confidence_target`` (None: temperature 1)."""
    temperature = fit_temperature(logits, confidence_target) if confidence_target is not None else 1.0
    high, low = bounds(agreement, gain, gain_sd, n, level)
    signals = (f"T and V agree on {100 * agreement:.1f}% of the images (at most {100 * high:.1f}% at "
               f"{100 * level:g}% confidence over {n}; safeguard {100 * threshold:.0f}%), estimated top-1 gain "
               f"over zero-shot {100 * gain:+.2f} points (at least {100 * low:+.2f}; safeguard above "
               f"{100 * min_gain:+.2f})")
    kept = keeps_adapted(agreement, threshold, gain, min_gain, gain_sd=gain_sd, n=n, level=level)
    if not kept:
        why = ("their pseudo labels were too poor to trust" if high < threshold
               else "label propagation rates the zero-shot predictions at least as likely right, within its noise")
        signals = f"{signals}: {why}, so the zero-shot predictions are kept"
    return Decision("adapted" if kept else "zero-shot", agreement, threshold, gain, min_gain, temperature,
                    confidence_target, signals, n, level, high, low)


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
    classes, under ``settings`` (``safeguard``, ``safeguard_gain``, ``safeguard_level``,
    ``calibrate``: the config's safeguard stage)."""
    gains = gain_per_image(posterior, logits.argmax(dim=-1), zero_shot)
    target = confidence_target(posterior) if settings["calibrate"] else None
    return decide(logits, agreement, settings["safeguard"], gains.mean().item(), settings["safeguard_gain"], target,
                  gain_sd=gains.std().item() if len(gains) > 1 else 0.0, n=len(gains),
                  level=settings["safeguard_level"])


def confidence_target(posterior: torch.Tensor) -> float:
    """The calibration's target: the mean largest probability of the N x C ``posterior``."""
    return posterior.max(dim=-1).values.mean().item()
