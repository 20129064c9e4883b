"""V's linear head and its blend with the centroids (docs/method.md, "V's trained head"): the
regularised logistic regression by value, trained on the pseudo labels both branches agree on,
the blend by value, both resolved from V's tower, and the prediction made with V's head alone by
default."""
from __future__ import annotations

import pytest
import torch

import reclip
from reclip.method.config import profile_for
from reclip.method.heads import Fusion, Heads, blend_head, combine, fuse, linear_head
from reclip.method.safeguard import confidence_target
from reclip.method.selftrain import branch_pseudo_labels
from reclip.method.transduce.peers import LabelPropagation
from reclip.method.zeroshot import LOGIT_SCALE

SETTINGS = {"k": 8, "alpha": 0.95, "cut_dim": None, "project": True, "knn": "exact", "knn_backend": None,
            "image_edges": "full"}


def mixture(seed: int = 3, sizes: tuple[int, ...] = (40, 30, 20), dim: int = 12) -> tuple[torch.Tensor, torch.Tensor,
                                                                                           torch.Tensor]:
    """(class directions C x D, unit image features N x D, their classes (N,)): a seeded mixture."""
    generator = torch.Generator().manual_seed(seed)
    classes = torch.nn.functional.normalize(torch.randn(len(sizes), dim, generator=generator), dim=1)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    images = torch.nn.functional.normalize(classes[labels] + 0.7 * torch.randn(len(labels), dim, generator=generator),
                                           dim=1)
    return classes, images, labels


def objective(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    """The dense reference: mean cross-entropy of x W^T plus l2 / 2 ||W||^2, float64."""
    return torch.nn.functional.cross_entropy(x @ weight.T, y) + 0.5 * l2 * (weight * weight).sum()


def gradient_at(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    w = weight.detach().double().requires_grad_(True)
    objective(w, x.double(), y, l2).backward()
    return w.grad


def test_linear_head_minimises_the_regularised_cross_entropy():
    _, x, y = mixture()
    n = len(x)
    head = linear_head(x, y, 4)  # class 3 has no label
    assert head.shape == (4, x.shape[1]) and head.dtype == torch.float32
    weight = head.double() * LOGIT_SCALE  # the head is stored divided by the logit scale
    assert gradient_at(weight, x, y, 1.0 / n).abs().max() < 1e-5  # stationary: the minimum of a convex objective
    # another strength, or an intercept, would not be stationary here: the formula is pinned
    assert gradient_at(weight, x, y, 0.5 / n).abs().max() > 1e-3
    assert weight[3] @ x.double().mean(dim=0) < 0  # the unlabelled class points away from the images
    # V's logits, LOGIT_SCALE * f @ head.T, are the regression's f @ W.T
    torch.testing.assert_close(LOGIT_SCALE * x @ head.T, (x.double() @ weight.T).float(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least one"):
        linear_head(x[:0], y[:0], 4)


def test_linear_head_converges_on_features_that_share_a_direction():
    """Features as a CLIP tower gives them (one common direction, mean cosine about 0.67) make the
    regression ill-conditioned: L-BFGS must run to its tolerance, not stop after a few steps."""
    generator = torch.Generator().manual_seed(0)
    n, dim, num_classes = 1000, 128, 10
    common = torch.nn.functional.normalize(torch.randn(dim, generator=generator), dim=0)
    directions = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=generator), dim=1)
    y = torch.arange(n) % num_classes
    x = torch.nn.functional.normalize(3 * common + 0.6 * directions[y]
                                      + 2 * torch.randn(n, dim, generator=generator) / dim ** 0.5, dim=1)
    assert (x @ x.T).mean() > 0.6
    weight = linear_head(x, y, num_classes).double() * LOGIT_SCALE
    assert gradient_at(weight, x, y, 1.0 / n).abs().max() < 1e-6  # 20 L-BFGS steps leave about 4e-6


def test_linear_head_on_soft_targets_minimises_their_cross_entropy():
    _, x, y = mixture()
    n = len(x)
    generator = torch.Generator().manual_seed(5)
    soft = torch.softmax(2.0 * torch.randn(n, 4, generator=generator), dim=1)  # rows summing to 1
    head = linear_head(x, soft, 4)
    weight = head.double() * LOGIT_SCALE
    # the dense reference: cross_entropy with probability targets is mean_i -sum_c q_ic log p_ic
    assert gradient_at(weight, x, soft.double(), 1.0 / n).abs().max() < 1e-5
    assert gradient_at(weight, x, y, 1.0 / n).abs().max() > 1e-3  # not the hard labels' minimum
    # one-hot rows are the hard labels, to the bit
    assert torch.equal(linear_head(x, torch.nn.functional.one_hot(y, 4).float(), 4), linear_head(x, y, 4))
    with pytest.raises(ValueError, match="soft targets must be 90 x 4"):
        linear_head(x, soft[:, :3], 4)


def test_linear_head_fits_the_classes_and_ignores_inference_mode():
    _, x, y = mixture(sizes=(50, 50, 50))
    with torch.inference_mode():
        head = linear_head(x, y, 3)
    assert torch.equal(head, linear_head(x, y, 3))
    accuracy = ((x @ head.T).argmax(dim=1) == y).float().mean().item()
    assert accuracy > 0.8  # the classes overlap (noise 0.7 in 12 dimensions)


def test_v_head_and_prediction_follow_the_tower():
    config = reclip.ReclipConfig()
    assert (config.v_head, config.head_fusion) == ("auto", "auto")
    batchnorm = config.for_model(False, "batchnorm")  # the bridge: V's tower frozen
    assert (batchnorm.v_tower, batchnorm.v_head, batchnorm.head_fusion) == ("frozen", "blend", "v")
    layernorm = config.for_model(True, "layernorm")  # CLIP ViTs: the paper
    assert (layernorm.v_tower, layernorm.v_head, layernorm.head_fusion) == ("train", "centroids", "average")
    frozen = reclip.ReclipConfig(v_tower="frozen").for_model(True, "layernorm")
    assert (frozen.v_head, frozen.head_fusion) == ("blend", "v")
    linear = reclip.ReclipConfig(v_head="linear").for_model(False, "batchnorm")
    assert (linear.v_head, linear.head_fusion) == ("linear", "v")
    paper = reclip.ReclipConfig(v_head="centroids", head_fusion="average").for_model(False, "batchnorm")
    assert (paper.v_tower, paper.v_head, paper.head_fusion) == ("frozen", "centroids", "average")
    mixed = reclip.ReclipConfig(head_fusion="calibrated").for_model(False, "batchnorm")
    assert (mixed.v_head, mixed.head_fusion) == ("blend", "calibrated")
    with pytest.raises(reclip.ConfigError, match="v_head"):
        reclip.ReclipConfig(v_head="mlp")
    with pytest.raises(reclip.ConfigError, match="v_head"):
        reclip.ReclipConfig(mode="t-only", v_head="linear")


def test_v_only_fusion_is_v_head_exactly():
    t, v = torch.tensor([[2.0, 0.0], [1.0, 3.0]]), torch.tensor([[0.0, 1.0], [4.0, -2.0]])
    assert torch.equal(combine(t, v, "reclip", Fusion("v")), v)
    logits, fusion = fuse(t, v, "reclip", "v", None)
    assert fusion == Fusion("v") and torch.equal(logits, v)


def test_blend_head_by_value():
    # one image, two classes: the centroids' logits 100 * (0.3, 0.1) = (30, 10), the linear head's (4, 6)
    f = torch.tensor([[1.0, 0.0]])
    centroids, linear = torch.tensor([[0.3, 0.0], [0.1, 0.0]]), torch.tensor([[0.04, 0.0], [0.06, 0.0]])
    # at confidence 0.75 each head's temperature makes its top probability 3/4: a logit gap of ln 3
    tau_c, tau_l = 20.0 / torch.log(torch.tensor(3.0)), 2.0 / torch.log(torch.tensor(3.0))
    blended = blend_head(f, centroids, linear, 0.75)
    torch.testing.assert_close(blended, 0.5 * (centroids / tau_c + linear / tau_l), rtol=1e-4, atol=1e-6)
    # by hand: calibrated logits (1.5, 0.5) ln 3 and (2, 3) ln 3; they disagree equally surely, so the
    # blend, their mean, is undecided: (1.75, 1.75) ln 3
    torch.testing.assert_close(LOGIT_SCALE * f @ blended.T, torch.full((1, 2), 1.75 * 1.0986123), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("agreement_filter", [True, False])
def test_v_head_is_trained_on_the_agreed_pseudo_labels(agreement_filter):
    classes, images, _ = mixture()
    # T's class nodes moved away from the original text embeddings, so T's and V's labels differ
    t_full = torch.nn.functional.normalize(classes + 0.9 * classes.roll(1, dims=0), dim=1)
    heads = Heads(v_classifier=classes.clone(), t_classifier=t_full.clone(), t_full=t_full, t_original=classes.clone())
    config = reclip.ReclipConfig(agreement_filter=agreement_filter, v_head="linear").resolve(
        profile_for(False, "batchnorm"))
    labels_t, labels_v, _ = branch_pseudo_labels(config, images, images, heads, LabelPropagation(SETTINGS))
    agree = labels_t == labels_v
    assert 0 < int(agree.sum()) < len(agree)
    keep = agree if agreement_filter else torch.ones_like(agree)
    torch.testing.assert_close(heads.v_classifier, linear_head(images[keep], labels_v[keep], len(classes)))
    if agreement_filter:  # the disagreeing images change the head
        assert not torch.allclose(heads.v_classifier, linear_head(images, labels_v, len(classes)))


def test_v_head_on_the_posterior_is_fitted_to_v_propagations_probabilities():
    classes, images, _ = mixture()
    t_full = torch.nn.functional.normalize(classes + 0.9 * classes.roll(1, dims=0), dim=1)
    heads = Heads(v_classifier=classes.clone(), t_classifier=t_full.clone(), t_full=t_full, t_original=classes.clone())
    config = reclip.ReclipConfig(v_head="linear", v_head_targets="posterior").resolve(profile_for(False, "batchnorm"))
    labels_t, labels_v, _ = branch_pseudo_labels(config, images, images, heads, LabelPropagation(SETTINGS))
    lp_v = LabelPropagation(SETTINGS)(images, classes)
    torch.testing.assert_close(heads.v_classifier, linear_head(images, lp_v.probs, len(classes)))
    agree = labels_t == labels_v
    assert not torch.allclose(heads.v_classifier, linear_head(images[agree], labels_v[agree], len(classes)))
    with pytest.raises(reclip.ConfigError, match="v_head_targets"):
        reclip.ReclipConfig(v_head_targets="all")
    # never silently ignored: the centroid head has no linear part to fit
    with pytest.raises(reclip.ConfigError, match="v_head_targets.*centroids here"):
        reclip.ReclipConfig(v_head="centroids", v_head_targets="posterior")
    with pytest.raises(reclip.ConfigError, match="v_head_targets.*centroids here"):
        reclip.ReclipConfig(v_head_targets="posterior").for_model(True, "layernorm")
    assert reclip.ReclipConfig(v_head_targets="posterior").for_model(True, "batchnorm").v_head == "blend"


def test_v_blend_in_the_loop_is_its_centroids_and_linear_head_at_label_propagations_confidence():
    classes, images, _ = mixture()
    t_full = torch.nn.functional.normalize(classes + 0.9 * classes.roll(1, dims=0), dim=1)
    # V's graph on its own classifier, which differs from the text embeddings: V's propagation (whose
    # centroids and confidence the blend takes) is then not the frozen model's
    v_nodes = torch.nn.functional.normalize(classes + 0.5 * classes.roll(-1, dims=0), dim=1)
    heads = Heads(v_classifier=v_nodes.clone(), t_classifier=t_full.clone(), t_full=t_full, t_original=classes.clone())
    config = reclip.ReclipConfig(v_graph="centroids").resolve(profile_for(False, "batchnorm"))
    assert config.v_head == "blend"
    labels_t, labels_v, _ = branch_pseudo_labels(config, images, images, heads, LabelPropagation(SETTINGS))
    lp_v = LabelPropagation(SETTINGS)(images, v_nodes)
    frozen = LabelPropagation(SETTINGS)(images, classes)
    assert abs(confidence_target(lp_v.probs) - confidence_target(frozen.probs)) > 1e-3
    agree = labels_t == labels_v
    expected = blend_head(images, lp_v.centroids.float(), linear_head(images[agree], labels_v[agree], len(classes)),
                          confidence_target(lp_v.probs))
    torch.testing.assert_close(heads.v_classifier, expected)
