"""The label-free safeguard and calibration of ReCLIP runs (reclip/method/safeguard.py)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import reclip
from reclip.method.propagation import label_propagation
from reclip.method.run import Stages
from reclip.method.safeguard import (SafeguardWarning, confidence_target, decide, estimated_gain, fit_temperature,
                                      frozen_posterior, head_agreement)
from reclip.method.transduce.base import Transduction
from reclip.method.transduce.peers import LabelPropagation
from reclip.metrics import scores_to_probabilities



pytestmark = pytest.mark.usefixtures("private_cache")


def test_temperature_matches_the_target_confidence():
    logits = torch.randn(500, 7, generator=torch.Generator().manual_seed(0)) * 6
    for target in (0.3, 0.55, 0.9):
        t = fit_temperature(logits, target)
        assert (logits / t).softmax(-1).max(-1).values.mean().item() == pytest.approx(target, abs=1e-4)
    # out of reach: uniform confidence is 1/7; the temperature saturates instead of failing
    assert fit_temperature(logits, 0.01) == pytest.approx(1e3, rel=1e-3)


def test_head_agreement_counts_matching_predictions():
    f = torch.eye(4)
    t = torch.eye(4)
    v = torch.eye(4)[[0, 1, 3, 2]]  # V swaps the last two classes
    assert head_agreement(f, f, t, v) == 0.5
    # 5 images, 3 classes: T predicts 0 1 0 1 2 on the frozen features, V 0 1 0 1 0 on its own
    f_frozen = torch.eye(3)[[0, 1, 0, 1, 2]]
    f_v = torch.eye(3)[[0, 1, 0, 1, 0]]
    assert head_agreement(f_frozen, f_v, torch.eye(3), torch.eye(3)) == pytest.approx(0.8)


def test_confidence_target_is_the_mean_largest_probability():
    posterior = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]])
    assert confidence_target(posterior) == pytest.approx((0.9 + 0.6 + 0.5) / 3)


def test_the_judges_posterior_is_label_propagation_on_the_frozen_model():
    generator = torch.Generator().manual_seed(1)
    features = torch.nn.functional.normalize(torch.randn(40, 6, generator=generator), dim=1)
    classifier = torch.nn.functional.normalize(torch.randn(3, 6, generator=generator), dim=1)
    settings = {"k": 5, "alpha": 0.9, "cut_dim": None, "project": True, "knn": "exact", "knn_backend": None,
                "image_edges": "projected"}
    posterior = frozen_posterior(LabelPropagation(settings), features, classifier)
    lp = label_propagation(features, classifier, **settings)
    assert torch.equal(posterior, scores_to_probabilities(lp.scores))


def test_decision_keeps_the_adapted_predictions_above_the_threshold():
    logits = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) * 10
    high = decide(logits, 0.8, 0.5, gain=0.05, min_gain=0.0, confidence_target=0.6)
    assert high.kept == "adapted" and high.confidence_target == 0.6
    assert (logits / high.temperature).softmax(-1).max(-1).values.mean().item() == pytest.approx(0.6, abs=1e-4)
    low = decide(logits, 0.4, 0.5, gain=0.05, min_gain=0.0, confidence_target=None)
    assert low.kept == "zero-shot" and low.temperature == 1.0 and "too poor to trust" in low.reason


def test_decision_falls_back_when_no_gain_is_estimated():
    logits = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) * 10
    for gain in (0.0, -0.02):
        d = decide(logits, 0.8, 0.5, gain=gain, min_gain=0.0, confidence_target=None)
        assert d.kept == "zero-shot" and "at least as likely right" in d.reason and d.estimated_gain == gain
    assert decide(logits, 0.8, 0.5, gain=1e-4, min_gain=0.0, confidence_target=None).kept == "adapted"
    # -1 turns the check off, even at the lowest possible gain
    assert decide(logits, 0.8, 0.5, gain=-1.0, min_gain=-1.0, confidence_target=None).kept == "adapted"


def test_estimated_gain_is_the_expected_top1_difference_under_the_posterior():
    posterior = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.5, 0.0]])
    predicted, zero_shot = torch.tensor([0, 2, 1]), torch.tensor([1, 2, 2])
    # (0.7 - 0.2) + (0.8 - 0.8) + (0.5 - 0.0), over 3 images
    assert estimated_gain(posterior, predicted, zero_shot) == pytest.approx(1.0 / 3)
    assert estimated_gain(posterior, zero_shot, zero_shot) == 0.0


def run(domain: Path, stages: Stages | None = None, **settings):
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    training = {"epochs": 2} if settings.get("mode", "reclip") == "reclip" else {}
    return reclip.ReCLIP(model, k=10, workers=0, stages=stages, **training, **settings).fit(dataset,
                                                                                          ["a photo of a {}."])


class Spy:
    """A transducer that records what it was given and answers as ``inner``."""

    name = "spy"

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def __call__(self, features, classifier):
        self.calls.append((features.clone(), classifier.clone()))
        return self.inner(features, classifier)


def test_good_pseudo_labels_keep_the_adapted_predictions_with_calibrated_confidence(domain):
    result = run(domain, safeguard=reclip.ReclipConfig().safeguard)
    guard = result.metrics["safeguard"]
    assert guard["kept"] == "adapted" and result.metrics["final"]["top1"] > result.metrics["zero_shot"]["top1"]
    # the mean confidence is label propagation's on the frozen model
    assert result.predictions.confidence.mean().item() == pytest.approx(guard["confidence_target"], abs=1e-3)
    assert guard["estimated_gain"] > 0 and all("head_agreement" in e and "estimated_gain" in e for e in result.history)


def test_calibration_target_is_label_propagations_mean_confidence(domain, monkeypatch):
    """The target is the mean largest probability of label propagation on the frozen model,
    normalised as the transductive predictions are; the estimated gain reads the same."""
    config = reclip.ReclipConfig(k=10).for_model(contrastive=True)
    judge = Spy(LabelPropagation(config.propagation_settings(4)))
    result = run(domain, Stages(judge=judge), safeguard=0.0)
    assert len(judge.calls) == 1
    features, nodes = judge.calls[0]
    lp = label_propagation(features, nodes, k=config.k, alpha=config.alpha, image_edges=config.image_edges)
    probs = scores_to_probabilities(lp.scores)
    expected = probs.max(-1).values.mean().item()
    guard = result.metrics["safeguard"]
    # the judge is the frozen model: the transductive predictions of the same target
    transductive = run(domain, mode="transductive").predictions.probs
    assert torch.allclose(probs, transductive, atol=1e-6)
    assert guard["confidence_target"] == pytest.approx(expected)
    assert result.predictions.confidence.mean().item() == pytest.approx(expected, abs=1e-3)
    # the estimated gain reads the same probabilities: adapted vs zero-shot predictions
    rows = torch.arange(len(probs))
    gain = (probs[rows, result.predictions.pred] - probs[rows, result.zero_shot.pred]).mean().item()
    assert guard["estimated_gain"] == pytest.approx(gain, abs=1e-6)


def test_no_calibration_keeps_the_raw_confidences(domain):
    result = run(domain, safeguard=0.0, calibrate=False)
    guard = result.metrics["safeguard"]
    assert guard["temperature"] == 1.0 and guard["confidence_target"] is None


class RandomLabels:
    """Label propagation whose labels (and so V's centroids) are noise: pseudo labels known to be
    bad. Its probabilities stay the real ones."""

    name = "random"

    def __init__(self, config) -> None:
        self.propagate = LabelPropagation(config.propagation_settings(4))
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, features, nodes):
        result = self.propagate(features, nodes)
        labels = torch.randint(0, len(nodes), (len(features),), generator=self.generator)
        sums = torch.zeros(len(nodes), features.shape[1]).index_add_(0, labels, features.float().cpu())
        return Transduction(result.probs, labels, torch.nn.functional.normalize(sums, dim=1), result.info)


def test_random_pseudo_labels_fall_back_to_zero_shot(domain, tmp_path):
    stages = Stages(pseudo_labels=RandomLabels(reclip.ReclipConfig(k=10).for_model(contrastive=True)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = reclip.load_model("tiny", device="cpu")
        dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
        result = reclip.ReCLIP(model, epochs=3, k=10, lr_t=0.05, lr_v=0.5, safeguard=0.95, safeguard_gain=-1.0,
                               workers=0, stages=stages).fit(dataset, ["a photo of a {}."], out=tmp_path / "out")
    guard = result.metrics["safeguard"]
    assert guard["kept"] == "zero-shot" and guard["agreement"] < 0.95
    assert [str(w.message) for w in caught if w.category is SafeguardWarning] == [f"safeguard: {guard['reason']}"]
    assert torch.equal(result.predictions.probs, result.zero_shot.probs)
    assert result.metrics["final"] == result.metrics["zero_shot"] and "final_adapted" in result.metrics
    # the saved adapter predicts what the run kept
    adapted = reclip.Adapter.load(tmp_path / "out").apply(reclip.load_model("tiny", device="cpu"))
    assert torch.equal(adapted.predict(dataset, workers=0).probs, result.zero_shot.probs)


def test_a_judge_that_rates_zero_shot_right_falls_back_to_zero_shot(domain):
    """When label propagation on the frozen model puts all its mass on the zero-shot classes,
    any adapted prediction that differs has a negative estimated gain: the run keeps zero-shot
    through that check alone (head agreement off), says why, and records the signal per epoch.
    (The tiny model's zero-shot is near chance, so no real adaptation here is worse than it.)"""
    def zero_shot_judge(f_frozen, classifier):
        labels = (f_frozen @ classifier.T).argmax(-1)
        return Transduction(torch.nn.functional.one_hot(labels, len(classifier)).float(), labels)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(domain, Stages(judge=zero_shot_judge), safeguard=0.0)
    guard = result.metrics["safeguard"]
    assert guard["kept"] == "zero-shot" and guard["estimated_gain"] < 0 and "at least as likely right" in guard["reason"]
    assert torch.equal(result.predictions.probs, result.zero_shot.probs) and "final_adapted" in result.metrics
    assert [str(w.message) for w in caught if w.category is SafeguardWarning] == [f"safeguard: {guard['reason']}"]
    assert all("estimated_gain" in e for e in result.history) and result.history[-1]["estimated_gain"] <= 0
