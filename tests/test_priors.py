"""The label-free class-proportion estimate (Saerens et al. 2002) and the mass normalisation
that moves posteriors to it (reclip.method.priors), on generated data with known proportions."""
from __future__ import annotations

import math

import pytest
import torch

from reclip.method.priors import estimate_priors, match_priors

MEANS = torch.tensor([0.0, 2.0, 4.0, 6.0])


def bayes_posterior(proportions: list[float], n: int = 20000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N x 4 posteriors under a uniform prior, (N,) classes) of points drawn from four unit
    Gaussians on a line (means 0, 2, 4, 6) in the given class ``proportions``."""
    generator = torch.Generator().manual_seed(seed)
    classes = torch.multinomial(torch.tensor(proportions), n, replacement=True, generator=generator)
    x = MEANS[classes] + torch.randn(n, generator=generator)
    return (-0.5 * (x[:, None] - MEANS) ** 2).softmax(dim=1), classes


def test_em_recovers_known_proportions_and_drives_an_absent_class_to_zero():
    truth = [0.6, 0.3, 0.1, 0.0]
    posterior, classes = bayes_posterior(truth)
    drawn = torch.bincount(classes, minlength=4).double() / len(classes)
    estimate = estimate_priors(posterior)
    assert estimate.sum().item() == pytest.approx(1.0)
    assert estimate[:3].tolist() == pytest.approx(drawn[:3].tolist(), abs=0.015)
    assert estimate[3].item() < 0.005  # the posterior alone gives it 2.3%
    assert posterior.mean(dim=0)[3].item() > 0.02


def test_em_starts_from_and_divides_by_the_source_prior():
    posterior = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    one_step = estimate_priors(posterior, iterations=1)
    assert one_step.tolist() == pytest.approx(posterior.double().mean(dim=0).tolist())
    # made under prior (0.8, 0.2): a step re-weights each row by (0.5/0.8, 0.5/0.2) before averaging
    source = torch.tensor([0.8, 0.2])
    step = estimate_priors(posterior, source_prior=source, iterations=1)
    assert step.tolist() == pytest.approx(posterior.double().mean(dim=0).tolist())  # pi_0 = source: weights 1
    two = estimate_priors(posterior, source_prior=source, iterations=2)
    weights = step.double() / source.double()
    adjusted = posterior.double() * weights
    expected = (adjusted / adjusted.sum(dim=1, keepdim=True)).mean(dim=0)
    assert two.tolist() == pytest.approx(expected.tolist(), abs=1e-12)


def test_em_is_a_fixed_point_of_its_own_correction():
    posterior, _ = bayes_posterior([0.5, 0.25, 0.15, 0.1], n=4000, seed=1)
    prior = estimate_priors(posterior)
    adjusted = posterior.double() * prior * 4
    assert (adjusted / adjusted.sum(dim=1, keepdim=True)).mean(dim=0).tolist() == pytest.approx(prior.tolist(),
                                                                                                abs=1e-6)


def test_mass_normalisation_meets_the_given_proportions_by_one_weight_per_class():
    posterior, _ = bayes_posterior([0.25, 0.25, 0.25, 0.25], n=5000, seed=2)
    target = torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64)
    moved = match_priors(posterior, target)
    assert moved.double().mean(dim=0).tolist() == pytest.approx(target.tolist(), abs=1e-4)
    assert moved.sum(dim=1).tolist() == pytest.approx([1.0] * len(moved), abs=1e-5)
    # one weight per class: the ratio moved / posterior is the same in every row, up to the row's normaliser
    ratio = moved[:, :3].double() / posterior[:, :3].double()
    per_class = ratio / ratio[:, :1]
    assert (per_class - per_class[0]).abs().max().item() < 1e-3


def test_mass_normalisation_to_the_posterior_own_mean_changes_nothing():
    posterior, _ = bayes_posterior([0.4, 0.3, 0.2, 0.1], n=3000, seed=3)
    moved = match_priors(posterior, posterior.double().mean(dim=0))
    torch.testing.assert_close(moved, posterior, atol=1e-5, rtol=0)


def test_two_class_value_by_hand():
    # posteriors (0.9, 0.1), (0.4, 0.6): EM's fixed point solves pi = mean_i pi p_i / (pi p_i + (1 - pi) q_i)
    posterior = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    pi = estimate_priors(posterior)[0].item()
    f = lambda a: 0.5 * (a * 0.9 / (a * 0.9 + (1 - a) * 0.1) + a * 0.4 / (a * 0.4 + (1 - a) * 0.6))  # noqa: E731
    assert f(pi) == pytest.approx(pi, abs=1e-6)
    assert 0.5 < pi < 1 and not math.isclose(pi, 0.65, abs_tol=1e-3)


def test_balanced_labels_are_the_argmax_after_em_and_mass_normalisation():
    from reclip.method.priors import balanced_labels

    posterior, _ = bayes_posterior([0.7, 0.2, 0.1, 0.0], n=3000, seed=4)
    expected = match_priors(posterior, estimate_priors(posterior)).argmax(dim=-1)
    assert torch.equal(balanced_labels(posterior), expected)
    assert int((balanced_labels(posterior) == 3).sum()) < int((posterior.argmax(dim=-1) == 3).sum())


def test_class_balance_switch_in_the_loop():
    from reclip.method.config import ReclipConfig, profile_for
    from reclip.method.heads import Heads
    from reclip.method.priors import balanced_labels
    from reclip.method.propagation import class_centroids, label_propagation
    from reclip.method.selftrain import branch_pseudo_labels
    from reclip.method.transduce.peers import LabelPropagation

    generator = torch.Generator().manual_seed(5)
    classes = torch.nn.functional.normalize(torch.randn(4, 16, generator=generator), dim=1)
    sizes = [60, 25, 10, 5]
    images = torch.cat([classes[c] + 0.6 * torch.randn(n, 16, generator=generator) for c, n in enumerate(sizes)])
    images = torch.nn.functional.normalize(images, dim=1)
    settings = {"k": 8, "alpha": 0.95, "cut_dim": None, "project": True, "knn": "exact", "knn_backend": None,
                "image_edges": "full"}
    lp = label_propagation(images, classes, **settings)
    heads = lambda: Heads(v_classifier=classes.clone(), t_classifier=classes.clone(), t_full=classes.clone(),  # noqa: E731
                          t_original=classes.clone())
    for balance in ("off", "estimated"):
        config = ReclipConfig(class_balance=balance, v_head="centroids").resolve(profile_for(False, "batchnorm"))
        h = heads()
        labels_t, labels_v, _ = branch_pseudo_labels(config, images, images, h, LabelPropagation(settings))
        if balance == "off":  # the paper's: label propagation's own labels and centroids
            assert torch.equal(labels_t, lp.labels) and torch.equal(labels_v, lp.labels)
            torch.testing.assert_close(h.v_classifier, lp.centroids)
            torch.testing.assert_close(class_centroids(classes, images, lp.labels), lp.centroids)
        else:
            probs = LabelPropagation(settings)(images, classes).probs
            assert torch.equal(labels_t, balanced_labels(probs)) and torch.equal(labels_v, labels_t)
            torch.testing.assert_close(h.v_classifier, class_centroids(classes, images, labels_v))
