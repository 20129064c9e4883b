"""The label-free safeguard and calibration of ReCLIP runs (reclip/method/safeguard.py)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import reclip
from reclip.method import reclip as loop
from reclip.method import run as run_module
from reclip.method.propagation import PropagationResult, label_propagation
from reclip.metrics import scores_to_probabilities
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
    logits = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) * 10
    high = decide(logits, 0.8, 0.5, confidence_target=0.6)
    assert high.kept == "adapted" and high.confidence_target == 0.6
    assert (logits / high.temperature).softmax(-1).max(-1).values.mean().item() == pytest.approx(0.6, abs=1e-4)
    low = decide(logits, 0.4, 0.5, confidence_target=None)
    assert low.kept == "zero-shot" and low.temperature == 1.0 and "below the safeguard's 50%" in low.reason


def run(domain: Path, **settings):
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    return reclip.ReCLIP(model, epochs=2, k=10, workers=0, **settings).fit(dataset, ["a photo of a {}."])


def test_good_pseudo_labels_keep_the_adapted_predictions_with_calibrated_confidence(domain):
    result = run(domain, safeguard=reclip.ReclipConfig().safeguard)
    guard = result.metrics["safeguard"]
    assert guard["kept"] == "adapted" and result.metrics["final"]["top1"] > result.metrics["zero_shot"]["top1"]
    # the mean confidence is label propagation's on the final V graph
    assert result.predictions.confidence.mean().item() == pytest.approx(guard["confidence_target"], abs=1e-3)
    assert all("head_agreement" in e for e in result.history)


def test_calibration_target_is_label_propagations_mean_confidence(domain, monkeypatch):
    """The target is the mean largest probability of label propagation on V's final features
    and class nodes, as the transductive predictions normalise them."""
    seen = {}
    confidence = loop.propagation_confidence

    def spy(config, f_v, heads, num_classes, device):
        seen.update(f_v=f_v.clone(), nodes=heads.t_original.clone(), config=config)
        seen["target"] = confidence(config, f_v, heads, num_classes, device)
        return seen["target"]

    monkeypatch.setattr(run_module, "propagation_confidence", spy)
    result = run(domain, safeguard=0.0)
    c = seen["config"]
    lp = label_propagation(seen["f_v"], seen["nodes"], k=c.k, alpha=c.alpha, image_edges=c.image_edges)
    expected = scores_to_probabilities(lp.scores).max(-1).values.mean().item()
    assert c.v_graph == "text" and result.metrics["safeguard"]["confidence_target"] == pytest.approx(expected)
    assert result.predictions.confidence.mean().item() == pytest.approx(expected, abs=1e-3)


def test_no_calibration_keeps_the_raw_confidences(domain):
    result = run(domain, safeguard=0.0, calibrate=False)
    guard = result.metrics["safeguard"]
    assert guard["temperature"] == 1.0 and guard["confidence_target"] is None


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
