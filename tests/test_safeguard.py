"""The label-free safeguard and calibration of ReCLIP runs (reclip/method/safeguard.py)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import reclip
from reclip.method import reclip as loop
from reclip.method.propagation import PropagationResult
from reclip.method.run import SafeguardWarning
from reclip.method.safeguard import decide, fit_temperature, head_agreement



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


def test_decision_keeps_the_adapted_predictions_above_the_threshold():
    logits = torch.randn(50, 3) * 10
    assert decide(logits, 0.8, 0.5, calibrate=True).kept == "adapted"
    low = decide(logits, 0.4, 0.5, calibrate=False)
    assert low.kept == "zero-shot" and low.temperature == 1.0 and "below the safeguard's 50%" in low.reason


def run(domain: Path, **settings):
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    return reclip.ReCLIP(model, epochs=2, k=10, workers=0, **settings).fit(dataset, ["a photo of a {}."])


def test_good_pseudo_labels_keep_the_adapted_predictions_with_calibrated_confidence(domain):
    result = run(domain, safeguard=reclip.ReclipConfig().safeguard)
    guard = result.metrics["safeguard"]
    assert guard["kept"] == "adapted" and result.metrics["final"]["top1"] > result.metrics["zero_shot"]["top1"]
    # the mean confidence is the heads' agreement
    assert result.predictions.confidence.mean().item() == pytest.approx(guard["agreement"], abs=1e-3)
    assert all("head_agreement" in e for e in result.history)


def test_random_pseudo_labels_fall_back_to_zero_shot(domain, monkeypatch, tmp_path):
    propagate = loop.label_propagation
    generator = torch.Generator().manual_seed(0)

    def random_labels(features, nodes, **kwargs):
        """Label propagation whose labels are noise: pseudo labels known to be bad."""
        result = propagate(features, nodes, **kwargs)
        labels = torch.randint(0, len(nodes), (len(features),), generator=generator)
        return PropagationResult(**{**result.__dict__, "labels": labels})

    monkeypatch.setattr(loop, "label_propagation", random_labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = reclip.load_model("tiny", device="cpu")
        dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
        result = reclip.ReCLIP(model, epochs=3, k=10, lr_t=0.05, lr_v=0.5, safeguard=0.95, workers=0).fit(
            dataset, ["a photo of a {}."], out=tmp_path / "out")
    guard = result.metrics["safeguard"]
    assert guard["kept"] == "zero-shot" and guard["agreement"] < 0.95
    assert [str(w.message) for w in caught if w.category is SafeguardWarning] == [f"safeguard: {guard['reason']}"]
    assert torch.equal(result.predictions.probs, result.zero_shot.probs)
    assert result.metrics["final"] == result.metrics["zero_shot"] and "final_adapted" in result.metrics
    # the saved adapter predicts what the run kept
    adapted = reclip.Adapter.load(tmp_path / "out").apply(reclip.load_model("tiny", device="cpu"))
    assert torch.equal(adapted.predict(dataset, workers=0).probs, result.zero_shot.probs)
