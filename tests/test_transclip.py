"""The published TransCLIP: against a dense float64 reference of its updates, and on clusters."""
from __future__ import annotations

import functools
import inspect

import numpy as np
import pytest
import torch

import reclip.method.transclip as transclip_module
from reclip.errors import ReclipError
from reclip.method.knn import knn_search
from reclip.method.transclip import transclip, zero_shot_probs


def dense_transclip(feats: np.ndarray, probs: np.ndarray, *, k: int, lambda_: float, iterations: int,
                    z_steps: int, init_confident: int, temperature: float = 50.0) -> np.ndarray:
    """The published updates written out densely (N x N graph, N x C x D differences), one loop per sum."""
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    n, d = f.shape
    c_count = probs.shape[1]
    sims = f @ f.T
    w = np.zeros((n, n))  # w[i, j] = f_i . f_j for the k nearest j != i of i; not symmetrised
    for i in range(n):
        others = [j for j in np.argsort(-sims[i], kind="stable") if j != i][:k]
        w[i, others] = sims[i, others]
    mu = np.zeros((c_count, d))
    for c in range(c_count):  # normalise(sum of y_ic f_i over the init_confident most confident for c)
        top = np.argsort(-probs[:, c], kind="stable")[:init_confident]
        total = sum(probs[i, c] * f[i] for i in top)
        mu[c] = total / np.linalg.norm(total)
    var = np.full(d, 1.0 / d)
    z = probs.copy()
    for t in range(iterations + 1):
        log_p = np.array([[-0.5 * np.sum((f[i] - mu[c]) ** 2 / var) for c in range(c_count)] for i in range(n)])
        for _ in range(z_steps):
            neighbour = np.array([sum((w[j, i] + w[i, j]) * z[j] for j in range(n)) for i in range(n)])
            exponent = (log_p + temperature / (2 * k) * neighbour) / temperature
            unnormalised = probs**lambda_ * np.exp(exponent - exponent.max(axis=1, keepdims=True))
            z = unnormalised / unnormalised.sum(axis=1, keepdims=True)
        if t == iterations:
            break
        mu = (z.T @ f) / z.sum(axis=0)[:, None]
        mu /= np.linalg.norm(mu, axis=1, keepdims=True)
        var = (z[:, :, None] * (f[:, None, :] - mu[None, :, :]) ** 2).sum(axis=(0, 1)) / n
    return z


def clusters(n_per_class: int = 30, num_classes: int = 4, dim: int = 16, spread: float = 0.25, seed: int = 0):
    """Well-separated Gaussian clusters around random unit centres: (features, labels, centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(num_classes), n_per_class)
    feats = centres[labels] + spread * rng.normal(size=(len(labels), dim)) / np.sqrt(dim)
    return feats, labels, centres


def noisy_zero_shot(labels: np.ndarray, num_classes: int, wrong: float, seed: int = 0) -> np.ndarray:
    """Soft zero-shot probabilities whose argmax is a wrong class for a fraction ``wrong`` of the images."""
    rng = np.random.default_rng(seed)
    guess = labels.copy()
    flip = rng.random(len(labels)) < wrong
    guess[flip] = (labels[flip] + rng.integers(1, num_classes, flip.sum())) % num_classes
    logits = rng.normal(scale=0.3, size=(len(labels), num_classes))
    logits[np.arange(len(labels)), guess] += 1.0
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("options", [
    dict(k=3, lambda_=1.0, iterations=10, z_steps=5, init_confident=8),
    dict(k=5, lambda_=0.5, iterations=3, z_steps=2, init_confident=4),
    dict(k=3, lambda_=1.0, iterations=2, z_steps=1, init_confident=8, temperature=1.0),
    dict(k=3, lambda_=1.0, iterations=0, z_steps=1, init_confident=8),  # one z-step: far from converged
])
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_matches_dense_reference_in_float64(options: dict, backend: str, monkeypatch) -> None:
    # whichever k-NN backend finds the neighbours, the graph's weights are float64 products
    monkeypatch.setattr(transclip_module, "knn_search", functools.partial(knn_search, backend=backend))
    feats, labels, _ = clusters(n_per_class=12, num_classes=3, dim=8, spread=0.8)
    probs = noisy_zero_shot(labels, 3, wrong=0.3)
    expected = dense_transclip(feats, probs, **options)
    kwargs = {("entropy_weight" if key == "temperature" else key): v for key, v in options.items()}
    result = transclip(torch.from_numpy(feats), torch.from_numpy(probs), **kwargs)
    assert result.probs.dtype == torch.float64
    np.testing.assert_allclose(result.probs.numpy(), expected, rtol=0, atol=1e-9)
    assert torch.equal(result.labels, torch.from_numpy(expected.argmax(axis=1)))


def test_the_published_defaults() -> None:
    # Zanella et al.'s zero-shot setting: k = 3, lambda = 1, 10 iterations of 5 z-steps, the 8 most
    # confident images per class for the first means, temperature 50
    defaults = {name: p.default for name, p in inspect.signature(transclip).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"zero_shot": None, "classifier": None, "k": 3, "lambda_": 1.0, "iterations": 10,
                        "z_steps": 5, "init_confident": 8, "entropy_weight": 50.0, "knn": "exact", "device": None}


def test_fewer_images_than_first_means_and_neighbours() -> None:
    # 5 images in 16 dimensions: each first mean sums all 5 images (not 8), k = 10 becomes 4
    feats, labels, _ = clusters(n_per_class=1, num_classes=5, dim=16, spread=0.8, seed=5)
    probs = noisy_zero_shot(labels, 5, wrong=0.4, seed=5)
    expected = dense_transclip(feats, probs, k=4, lambda_=1.0, iterations=2, z_steps=2, init_confident=8)
    result = transclip(torch.from_numpy(feats), torch.from_numpy(probs), k=10, iterations=2, z_steps=2)
    assert result.k == 4
    np.testing.assert_allclose(result.probs.numpy(), expected, rtol=0, atol=1e-9)
    two = transclip(torch.from_numpy(feats[:2]), torch.from_numpy(probs[:2]))  # the fewest it takes
    assert two.k == 1 and two.probs.shape == (2, 5)


def test_an_image_that_is_no_ones_neighbour() -> None:
    # the last image is far from the others, so with k = 1 no image picks it: the graph stays N x N
    feats, labels, _ = clusters(n_per_class=3, num_classes=2, dim=8, spread=0.3, seed=6)
    feats = np.vstack([feats, -feats.mean(axis=0)])
    probs = noisy_zero_shot(np.append(labels, 0), 2, wrong=0.0, seed=6)
    expected = dense_transclip(feats, probs, k=1, lambda_=1.0, iterations=2, z_steps=2, init_confident=8)
    result = transclip(torch.from_numpy(feats), torch.from_numpy(probs), k=1, iterations=2, z_steps=2)
    np.testing.assert_allclose(result.probs.numpy(), expected, rtol=0, atol=1e-9)


def test_the_shared_variance_sums_over_chunks_of_images(monkeypatch) -> None:
    # chunks of 7 images (3 classes x 8 dimensions each) instead of one: the same answer as the reference
    monkeypatch.setattr(transclip_module, "VARIANCE_CHUNK_ELEMENTS", 7 * 3 * 8)
    feats, labels, _ = clusters(n_per_class=12, num_classes=3, dim=8, spread=0.8)
    probs = noisy_zero_shot(labels, 3, wrong=0.3)
    options = dict(k=3, lambda_=1.0, iterations=3, z_steps=2, init_confident=8)
    result = transclip(torch.from_numpy(feats), torch.from_numpy(probs), **options)
    np.testing.assert_allclose(result.probs.numpy(), dense_transclip(feats, probs, **options), rtol=0, atol=1e-9)


def test_the_result_records_the_search_and_the_times() -> None:
    feats, labels, _ = clusters(n_per_class=12, num_classes=3, dim=8, spread=0.8)
    result = transclip(torch.from_numpy(feats), torch.from_numpy(noisy_zero_shot(labels, 3, wrong=0.3)))
    assert isinstance(result.knn_backend, str) and result.knn_backend
    times = result.timings
    assert min(times.values()) >= 0 and times["total"] == pytest.approx(times["knn"] + times["solve"], abs=1e-6)


def test_float32_agrees_with_the_reference_on_a_seeded_mixture() -> None:
    # the goal: the same class on >= 99% of the images and probabilities within 1e-3
    feats, labels, _ = clusters(n_per_class=40, num_classes=5, dim=12, spread=1.2, seed=1)
    probs = noisy_zero_shot(labels, 5, wrong=0.4, seed=1)
    expected = dense_transclip(feats, probs, k=3, lambda_=1.0, iterations=10, z_steps=5, init_confident=8)
    result = transclip(torch.from_numpy(feats).float(), torch.from_numpy(probs).float())
    assert result.probs.dtype == torch.float32
    assert (result.labels.numpy() == expected.argmax(axis=1)).mean() >= 0.99
    assert np.abs(result.probs.numpy() - expected).max() <= 1e-3


def test_the_temperature_matters() -> None:
    # the 1/50 temperature changes the answer, so the reference pins it (the symmetric neighbour
    # term is pinned by the dense test above: the synthetic k-NN graphs are not symmetric)
    feats, labels, _ = clusters(n_per_class=12, num_classes=3, dim=8, spread=0.8, seed=4)
    probs = noisy_zero_shot(labels, 3, wrong=0.3, seed=4)
    options = dict(k=3, lambda_=1.0, iterations=10, z_steps=5, init_confident=8)
    expected = dense_transclip(feats, probs, **options)
    untempered = transclip(torch.from_numpy(feats), torch.from_numpy(probs), entropy_weight=1.0, **options)
    assert np.abs(untempered.probs.numpy() - expected).max() > 0.05


def test_fixes_noisy_zero_shot_labels_on_separated_clusters() -> None:
    # 64 dimensions: the mixture term, divided by the temperature 50, needs CLIP-like widths to count
    feats, labels, _ = clusters(dim=64)
    probs = noisy_zero_shot(labels, 4, wrong=0.35)
    assert (probs.argmax(axis=1) == labels).mean() < 0.7
    result = transclip(torch.from_numpy(feats).float(), torch.from_numpy(probs).float())
    assert (result.labels.numpy() == labels).mean() == 1.0
    np.testing.assert_allclose(result.probs.sum(dim=1).numpy(), 1.0, atol=1e-5)
    assert result.means.shape == (4, 64) and result.variance.shape == (64,)


def test_classifier_gives_the_same_result_as_its_zero_shot_probabilities() -> None:
    feats, labels, centres = clusters(seed=2)
    f = torch.from_numpy(feats).float()
    classifier = torch.from_numpy(centres).float()
    from_classifier = transclip(f, classifier=classifier)
    from_probs = transclip(f, zero_shot_probs(torch.nn.functional.normalize(f, dim=1), classifier))
    torch.testing.assert_close(from_classifier.probs, from_probs.probs)


def test_a_strong_text_term_keeps_the_zero_shot_labels() -> None:
    feats, labels, _ = clusters(seed=3)
    probs = torch.from_numpy(noisy_zero_shot(labels, 4, wrong=0.35, seed=3))
    result = transclip(torch.from_numpy(feats), probs, lambda_=1e4)
    assert torch.equal(result.labels, probs.argmax(dim=1))


def test_k_is_clipped_to_the_other_images() -> None:
    feats, labels, _ = clusters(n_per_class=2, num_classes=2, dim=4)
    result = transclip(torch.from_numpy(feats), torch.from_numpy(noisy_zero_shot(labels, 2, wrong=0.0)), k=50)
    assert result.k == 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "exactly one of"),
    (dict(zero_shot=torch.full((6, 2), 0.5), classifier=torch.ones(2, 4)), "exactly one of"),
    (dict(zero_shot=torch.full((5, 2), 0.5)), "N=6"),
    (dict(zero_shot=torch.ones(6, 2)), "probabilities"),
    (dict(zero_shot=torch.tensor([[1.5, -0.5]] * 6)), "probabilities"),  # rows sum to 1, one entry < 0
    (dict(classifier=torch.ones(2, 3)), "D=4"),
    (dict(zero_shot=torch.full((6, 2), 0.5), lambda_=0.0), "lambda_"),
    (dict(zero_shot=torch.full((6, 2), 0.5), knn="fast"), "knn"),
    (dict(zero_shot=torch.full((6, 2), 0.5), k=0), "k must be at least 1, got 0"),
    (dict(zero_shot=torch.ones(6, 1)), "at least 2 classes, got 1"),
])
def test_bad_inputs_raise_one_line_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ReclipError, match=match):
        transclip(torch.rand(6, 4), **kwargs)


def test_one_image_or_flat_features_are_refused() -> None:
    with pytest.raises(ReclipError, match="at least 2 images, got 1"):
        transclip(torch.rand(1, 4), torch.full((1, 2), 0.5))
    with pytest.raises(ReclipError, match="image_features must be a 2-D"):
        transclip(torch.rand(4), torch.full((4, 2), 0.5))


def test_nan_features_are_rejected() -> None:
    feats = torch.rand(6, 4)
    feats[2, 1] = float("nan")
    with pytest.raises(ReclipError, match="NaN"):
        transclip(feats, torch.full((6, 2), 0.5))


def test_the_transclip_mode_takes_y_from_the_first_template(tmp_path, private_cache) -> None:
    import sys
    from pathlib import Path

    import reclip
    from reclip.features import extract_features
    from reclip.method.zeroshot import ensemble_classifiers

    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic import make_clustered_folder

    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(make_clustered_folder(tmp_path / "d", model, per_class=10, seed=5)))
    dataset.transform = model.preprocess
    templates = ["a photo of a {}.", "a drawing of a {}.", "{} in the wild."]
    result = reclip.ReCLIP(model, reclip.ReclipConfig(mode="transclip", workers=0)).fit(dataset, templates)
    frozen = extract_features(model, dataset, workers=0)
    with torch.inference_mode():
        ensemble, first = ensemble_classifiers(model, dataset.classnames, templates)
    expected = transclip(frozen.features, classifier=first.float())
    torch.testing.assert_close(result.predictions.probs, expected.probs.float())
    assert not torch.allclose(transclip(frozen.features, classifier=ensemble.float()).probs, expected.probs)
