"""The method's formulas pinned by value on small fixed inputs (hand-computed or a dense
reference): a change to any of them fails here, whatever the end-to-end runs still do."""
from __future__ import annotations

import pytest
import torch

import reclip
from reclip.method.adapter import Adapter, AdaptedModel
from reclip.method.heads import combine, combined_logits, head_logits
from reclip.method.safeguard import confidence_target, decide, estimated_gain, fit_temperature, judge_run
from reclip.method.selftrain import agreement_mask

# two images, two classes, 2-d features: T's head prefers class 0 a little on image 0, V's head
# prefers class 1 a lot; image 1 the other way round
F_FROZEN = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
F_V = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
T_CLASSIFIER = torch.tensor([[0.8, 0.6], [0.6, 0.8]])
V_CLASSIFIER = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_head_logits_are_100_times_the_dot_products():
    logits_t, logits_v = head_logits(F_FROZEN, F_V, T_CLASSIFIER, V_CLASSIFIER)
    torch.testing.assert_close(logits_t, torch.tensor([[80.0, 60.0], [60.0, 80.0]]))
    torch.testing.assert_close(logits_v, torch.tensor([[60.0, 80.0], [100.0, 0.0]]))


def test_combined_head_is_the_average_of_t_and_v():
    combined = combined_logits(F_FROZEN, F_V, T_CLASSIFIER, V_CLASSIFIER, "reclip")
    # 0.5 * ([80, 60] + [60, 80]) and 0.5 * ([60, 80] + [100, 0])
    torch.testing.assert_close(combined, torch.tensor([[70.0, 70.0], [80.0, 40.0]]))
    # each branch alone predicts otherwise than the average on one image
    assert combined_logits(F_FROZEN, F_V, T_CLASSIFIER, V_CLASSIFIER, "t-only").argmax(-1).tolist() == [0, 1]
    assert combined_logits(F_FROZEN, F_V, T_CLASSIFIER, V_CLASSIFIER, "v-only").argmax(-1).tolist() == [1, 0]


def test_single_branch_modes_use_their_own_head():
    t, v = torch.tensor([[1.0, 2.0]]), torch.tensor([[5.0, -1.0]])
    assert combine(t, v, "t-only") is t and combine(t, v, "v-only") is v
    torch.testing.assert_close(combine(t, v, "reclip"), torch.tensor([[3.0, 0.5]]))


def test_agreement_filter_keeps_the_samples_whose_pseudo_labels_agree():
    pseudo_t, pseudo_v = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 2, 2, 1])
    assert agreement_mask(pseudo_t, pseudo_v, True).tolist() == [True, False, True, False]
    assert agreement_mask(pseudo_t, pseudo_v, False).tolist() == [True] * 4


def test_estimated_gain_by_hand():
    posterior = torch.tensor([[0.6, 0.4], [0.1, 0.9], [0.5, 0.5]])
    # (0.4 - 0.6) + (0.9 - 0.1) + (0.5 - 0.5), over 3 images
    assert estimated_gain(posterior, torch.tensor([1, 1, 0]), torch.tensor([0, 0, 1])) == pytest.approx(0.2)


def test_confidence_target_is_the_mean_largest_probability():
    assert confidence_target(torch.tensor([[0.6, 0.4], [0.1, 0.9]])) == pytest.approx(0.75)


@pytest.mark.parametrize(("agreement", "gain", "kept"), [
    (0.5, 0.1, "adapted"),     # agreement exactly at the threshold keeps the adapted predictions
    (0.49, 0.1, "zero-shot"),  # just below falls back
    (0.9, 0.0, "zero-shot"),   # a gain exactly at min_gain falls back
    (0.9, 0.01, "adapted"),
    (0.9, -0.5, "zero-shot"),
])
def test_safeguard_decision_at_its_thresholds(agreement, gain, kept):
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert decide(logits, agreement, 0.5, gain, 0.0, None).kept == kept


def test_temperature_by_hand():
    # two classes, logits (d, 0): the confidence is sigmoid(d / T); sigmoid(ln 3) = 0.75
    logits = torch.tensor([[2.0 * torch.log(torch.tensor(3.0)).item(), 0.0]])
    assert fit_temperature(logits, 0.75) == pytest.approx(2.0, rel=1e-5)
    # a colder target needs a larger temperature
    assert fit_temperature(logits, 0.6) > 2.0 > fit_temperature(logits, 0.9)


def test_judge_run_reads_gain_and_target_from_the_posterior():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])  # predicts [0, 1]
    posterior = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    settings = {"safeguard": 0.5, "safeguard_gain": 0.0, "safeguard_level": 0.5, "calibrate": True}
    decision = judge_run(logits, 0.8, posterior, torch.tensor([1, 1]), settings)
    # gain: (0.9 - 0.1 + 0.7 - 0.7) / 2; target: (0.9 + 0.7) / 2
    assert decision.kept == "adapted" and decision.estimated_gain == pytest.approx(0.4)
    assert decision.confidence_target == pytest.approx(0.8)
    assert (logits / decision.temperature).softmax(-1).max(-1).values.mean().item() == pytest.approx(0.8, abs=1e-5)


def test_adapted_model_divides_the_combined_logits_by_the_temperature():
    adapter = Adapter(image_norms={}, text_norms={}, v_classifier=V_CLASSIFIER, t_classifier=T_CLASSIFIER,
                      extra_state={}, meta={"mode": "reclip", "temperature": 4.0, "classnames": [["a"], ["b"]]})
    logits = AdaptedModel(reclip.load_model("tiny", device="cpu"), adapter).logits(F_FROZEN, F_V)
    torch.testing.assert_close(logits, torch.tensor([[17.5, 17.5], [20.0, 10.0]]))


def test_temperature_saturates_at_both_ends_of_its_range():
    logits = torch.tensor([[4.0, 0.0], [0.0, 3.0]])
    # a target out of [1/C, 1] is clipped just inside it; one out of reach saturates the range
    assert fit_temperature(logits, 1.5) == pytest.approx(fit_temperature(logits, 1 - 1e-6), rel=1e-4)
    assert (logits / fit_temperature(logits, 1.5)).softmax(-1).max(-1).values.mean().item() > 0.9999
    assert fit_temperature(logits, 0.2) == pytest.approx(1e3, rel=1e-3)
    # logits too flat to reach 0.9 even at the coldest temperature: 0.01 / 0.01 gives sigmoid(1) = 0.73
    assert fit_temperature(torch.tensor([[0.01, 0.0]]), 0.9) == pytest.approx(1e-2, rel=1e-3)


def test_decision_record_and_calibration_switch():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    decision = decide(logits, 0.7, 0.5, 0.1, 0.0, None)
    assert decision.as_dict() == {"kept": "adapted", "agreement": 0.7, "threshold": 0.5, "estimated_gain": 0.1,
                                  "min_gain": 0.0, "temperature": 1.0, "confidence_target": None,
                                  "reason": decision.reason, "n": 1, "level": 0.5, "agreement_bound": 0.7,
                                  "gain_bound": 0.1}
    assert decision.reason.startswith("T and V agree on 70.0% of the images")
    fallback = decide(logits, 0.4, 0.5, 0.1, 0.0, 0.8)
    assert fallback.reason.endswith(", so the zero-shot predictions are kept")
    assert {k: v for k, v in fallback.as_dict().items() if k not in ("reason", "temperature")} == {
        "kept": "zero-shot", "agreement": 0.4, "threshold": 0.5, "estimated_gain": 0.1, "min_gain": 0.0,
        "confidence_target": 0.8, "n": 1, "level": 0.5, "agreement_bound": 0.4, "gain_bound": 0.1}
    settings = {"safeguard": 0.5, "safeguard_gain": 0.0, "safeguard_level": 0.5, "calibrate": False}
    posterior = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    off = judge_run(logits, 0.8, posterior, torch.tensor([1, 1]), settings)
    assert off.confidence_target is None and off.temperature == 1.0


def test_frozen_posterior_is_the_judges_probabilities():
    from reclip.method.safeguard import frozen_posterior
    from reclip.method.transduce.base import Transduction

    probs = torch.tensor([[0.25, 0.75]])
    assert frozen_posterior(lambda f, c: Transduction(probs, probs.argmax(-1)), F_FROZEN[:1], T_CLASSIFIER) is probs


def test_text_heads_are_the_first_template_and_the_full_ensemble():
    from reclip.method.heads import text_heads
    from reclip.method.zeroshot import ensemble_classifiers

    model = reclip.load_model("tiny", device="cpu")
    classnames, templates = [["cat"], ["dog"]], ["a photo of a {}.", "art of a {}."]
    short, full = text_heads(model, classnames, templates)
    with torch.inference_mode():
        expected_full, expected_short = ensemble_classifiers(model, classnames, templates)
    assert short.dtype == full.dtype == torch.float32 and short.device.type == "cpu"
    torch.testing.assert_close(short, expected_short.float())
    torch.testing.assert_close(full, expected_full.float())
    assert not torch.allclose(short, full)
