"""The prompt-ensemble classifier and the report metrics against formulas written out by hand."""
from __future__ import annotations

import pytest
import torch
from torch.nn.functional import normalize

import reclip
from reclip.method.zeroshot import class_embeddings, ensemble_classifiers
from reclip.metrics import classification_metrics, scores_to_probabilities


@pytest.fixture(scope="module")
def tiny():
    return reclip.load_model("tiny", device="cpu")


def test_classifier_is_normalised_mean_of_normalised_prompts_over_templates_and_synonyms(tiny):
    classes, templates = [["cat", "kitty"], ["dog"]], ["a photo of a {}.", "{} {{literally}}"]
    with torch.no_grad():
        got = class_embeddings(tiny, classes, templates)
        expected = []
        for names in classes:
            prompts = [t.replace("{}", n) for t in templates for n in names]
            emb = normalize(tiny.module.encode_text(tiny.tokenize(prompts)).float(), dim=-1)
            expected.append(normalize(emb.mean(0), dim=0))
        full, first = ensemble_classifiers(tiny, classes, templates)
        first_only = class_embeddings(tiny, classes, templates[:1])
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(full, got)
    torch.testing.assert_close(first, first_only, atol=1e-6, rtol=1e-5)


def test_metrics_match_hand_computation():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    labels = torch.tensor([0, 1, 1, -1])  # the last image has no label and is ignored
    m = classification_metrics(probs, labels, n_bins=10)
    assert m["top1"] == pytest.approx(2 / 3)
    assert m["mean_per_class_recall"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["top5"] == 1.0
    # bins: 0.9 (correct), 0.6 (wrong), 0.7 (correct), one image each
    assert m["ece"] == pytest.approx((abs(0.9 - 1) + abs(0.6 - 0) + abs(0.7 - 1)) / 3)
    assert classification_metrics(probs, torch.full((4,), -1)) == {}


def test_scores_to_probabilities():
    p = scores_to_probabilities(torch.tensor([[2.0, -1.0, 2.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(p, torch.tensor([[0.5, 0.0, 0.5], [1 / 3, 1 / 3, 1 / 3]]))
