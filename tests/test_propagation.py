"""Tests of the sparse label-propagation engine against the dense reference (docs/method.md, steps 1-2)."""
from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse.linalg
import torch

from reclip import PropagationResult, label_propagation, projection
from reclip.errors import ReclipError
from reclip.method import knn as knn_module
from reclip.method import propagation as propagation_module
from reclip.method.knn import knn_search
from reclip.method.propagation import conjugate_gradient, normalised_adjacency

sys.path.insert(0, str(Path(__file__).parent))
import dense_reference


def clustered(
    num_images: int = 300, num_classes: int = 5, dim: int = 32, noise: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit class embeddings sharing one direction, images noisy around their class.

    Returns (images N x D float32, classes C x D float32, true labels (N,)).
    """
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(dim)
    shared /= np.linalg.norm(shared)
    own = rng.standard_normal((num_classes, dim)) / np.sqrt(dim)
    classes = 0.8 * shared + own
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    truth = rng.integers(0, num_classes, num_images)
    images = classes[truth] + noise * rng.standard_normal((num_images, dim)) / np.sqrt(dim)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    return images.astype(np.float32), classes.astype(np.float32), truth


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return clustered()


@pytest.fixture(scope="module")
def reference_adjacency(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    images, classes, _ = data
    return dense_reference.normalised_adjacency(images, classes, k=10)


# --- projection ---------------------------------------------------------------------


@pytest.mark.parametrize(("num_classes", "dim", "cut_dim", "rank"), [(5, 32, None, 4), (5, 32, 3, 2), (40, 16, None, 15)])
def test_projection_is_orthogonal_projector(num_classes: int, dim: int, cut_dim: int | None, rank: int) -> None:
    _, classes, _ = clustered(num_images=1, num_classes=num_classes, dim=dim)
    basis = projection(classes, cut_dim=cut_dim).double()
    assert basis.shape == (dim, rank)
    p = basis @ basis.T
    torch.testing.assert_close(p @ p, p, atol=1e-6, rtol=0)
    torch.testing.assert_close(p, p.T, atol=1e-7, rtol=0)
    assert torch.linalg.matrix_rank(p, atol=1e-5) == rank
    first = torch.from_numpy(np.linalg.svd(classes.T.astype(np.float64), full_matrices=False)[0][:, 0])
    assert float((p @ first).norm()) < 1e-6
    np.testing.assert_allclose(p.numpy(), dense_reference.projector(classes, cut_dim), atol=1e-6)


def test_projection_rejects_degenerate_rank() -> None:
    _, classes, _ = clustered(num_images=1)
    with pytest.raises(ReclipError, match="cut_dim"):
        projection(classes, cut_dim=1)
    with pytest.raises(ReclipError, match="at least 2"):
        projection(classes[:1])


# --- graph and solver against the dense reference ----------------------------------------


def test_graph_matches_dense_reference(data, reference_adjacency: np.ndarray) -> None:
    images, classes, _ = data
    unit_classes = torch.nn.functional.normalize(torch.from_numpy(classes), dim=1)
    nodes = torch.cat([unit_classes, torch.from_numpy(images)]) @ projection(unit_classes)
    nodes = torch.nn.functional.normalize(nodes, dim=1)
    neighbours = knn_search(nodes, 10)
    sparse = normalised_adjacency(neighbours.indices, neighbours.similarities).to_dense().numpy()
    np.testing.assert_allclose(sparse, reference_adjacency, atol=1e-6)
    assert np.all(np.diag(sparse) == 0)


def test_block_cg_equals_scipy_cg_per_column(reference_adjacency: np.ndarray) -> None:
    """Each column keeps its own steps and stops on scipy's rule, whatever its neighbours do."""
    system = np.eye(len(reference_adjacency)) - 0.99 * reference_adjacency
    rng = np.random.default_rng(1)
    rhs = rng.standard_normal((len(system), 6)) * np.array([1.0, 1e-3, 10.0, 1.0, 1.0, 0.0])
    rhs[:, 3] = 0.0
    rhs[7, 3] = 1.0  # a one-hot column, like the class nodes
    matrix = torch.from_numpy(system)
    result = conjugate_gradient(lambda p: matrix @ p, torch.from_numpy(rhs), max_iter=35, tol=1e-4)
    for j in range(rhs.shape[1]):
        steps: list[np.ndarray] = []
        expected, info = scipy.sparse.linalg.cg(system, rhs[:, j], rtol=1e-4, maxiter=35, callback=steps.append)
        np.testing.assert_allclose(result.solution[:, j].numpy(), expected, atol=1e-12, rtol=0)
        assert int(result.iterations[j]) == len(steps)
        if info == 0:
            assert result.converged[j]
    assert result.iterations[5] == 0 and result.converged[5]
    assert (result.iterations[:5] < 35).any() and (result.iterations == 35).any()


def test_converged_solution_matches_dense_direct_solve(data, reference_adjacency: np.ndarray) -> None:
    images, classes, _ = data
    result = label_propagation(images, classes, k=10, max_iter=1000, tol=1e-7)
    full = dense_reference.solve_direct(reference_adjacency, len(classes))
    np.testing.assert_allclose(result.scores.numpy(), full[len(classes):], atol=1e-4, rtol=0)
    assert torch.equal(result.labels, torch.from_numpy(full[len(classes):].argmax(1)))
    expected_centroids = dense_reference.centroids(images, classes, full.argmax(1))
    np.testing.assert_allclose(result.centroids.numpy(), expected_centroids, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_full_space_image_edges_match_dense_reference(data, reference_adjacency: np.ndarray, backend: str) -> None:
    images, classes, _ = data
    # images in a space where their projection hides part of what tells them apart
    adjacency = dense_reference.normalised_adjacency(images, classes, k=10, cut_dim=3, image_edges="full")
    assert not np.allclose(adjacency, dense_reference.normalised_adjacency(images, classes, k=10, cut_dim=3))
    result = label_propagation(images, classes, k=10, cut_dim=3, image_edges="full", knn_backend=backend,
                               max_iter=1000, tol=1e-7)
    full = dense_reference.solve_direct(adjacency, len(classes))
    np.testing.assert_allclose(result.scores.numpy(), full[len(classes):], atol=1e-4, rtol=0)
    assert result.knn_backend.endswith("(full-space image edges)")
    with pytest.raises(ReclipError, match="image_edges must be one of projected, full"):
        label_propagation(images, classes, image_edges="images")


def test_twenty_iterations_match_per_class_cg(data, reference_adjacency: np.ndarray) -> None:
    images, classes, _ = data
    result = label_propagation(images, classes, k=10)
    full = dense_reference.solve_cg(reference_adjacency, len(classes), max_iter=20, tol=1e-6)
    agreement = (result.labels.numpy() == full[len(classes):].argmax(1)).mean()
    assert agreement >= 0.995
    np.testing.assert_allclose(result.scores.numpy(), full[len(classes):], atol=1e-4, rtol=0)
    assert result.iterations == 20 and result.converged == 0  # truncation is exercised


def test_cut_dim_smaller_than_num_classes(data) -> None:
    images, classes, _ = data
    result = label_propagation(images, classes, k=10, cut_dim=3, max_iter=1000, tol=1e-7)
    adjacency = dense_reference.normalised_adjacency(images, classes, k=10, cut_dim=3)
    full = dense_reference.solve_direct(adjacency, len(classes))
    np.testing.assert_allclose(result.scores.numpy(), full[len(classes):], atol=1e-4, rtol=0)


def test_unprojected_numpy_float64_inputs(data) -> None:
    images, classes, _ = data
    result = label_propagation(images.astype(np.float64), classes.astype(np.float64), k=10, project=False)
    adjacency = dense_reference.normalised_adjacency(images, classes, k=10, project=False)
    full = dense_reference.solve_cg(adjacency, len(classes))
    np.testing.assert_allclose(result.scores.numpy(), full[len(classes):], atol=1e-4, rtol=0)


def test_blocks_of_classes_give_the_same_answer(data, monkeypatch: pytest.MonkeyPatch) -> None:
    images, classes, _ = data
    whole = label_propagation(images, classes, k=10)
    monkeypatch.setattr(propagation_module, "MIN_CG_BLOCK", 2)
    monkeypatch.setattr(propagation_module, "MAX_CG_BLOCK", 2)
    blocked = label_propagation(images, classes, k=10)
    torch.testing.assert_close(blocked.scores, whole.scores, atol=1e-5, rtol=0)


# --- result contents ----------------------------------------------------------------------


def test_result_types_shapes_and_confidence(data) -> None:
    images, classes, truth = data
    result = label_propagation(torch.from_numpy(images), torch.from_numpy(classes), k=10)
    assert isinstance(result, PropagationResult)
    assert result.labels.dtype == torch.int64 and result.labels.shape == (300,)
    assert result.scores.dtype == torch.float32 and result.scores.shape == (300, 5)
    assert result.centroids.shape == (5, 32)
    torch.testing.assert_close(result.centroids.norm(dim=1), torch.ones(5))
    assert (result.labels.numpy() == truth).mean() > 0.9
    prob = result.scores.clamp(min=0)
    prob = prob / prob.sum(1, keepdim=True)
    expected = 1 + (prob * prob.clamp(min=1e-30).log()).sum(1) / np.log(5)
    torch.testing.assert_close(result.confidence, expected, atol=1e-5, rtol=0)
    assert set(result.timings) == {"graph", "knn", "solve", "total"}
    assert result.knn_recall is None and result.k == 10
    again = label_propagation(images, classes, k=10)
    assert torch.equal(again.scores, result.scores)


# --- k-NN backends ----------------------------------------------------------------------------


def unit_points(num_points: int, dim: int, seed: int = 0) -> torch.Tensor:
    """(n x d) random unit rows: distinct similarities, so exact neighbours are unique."""
    return torch.nn.functional.normalize(torch.randn(num_points, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_approximate_knn_calibrates_ivf_and_reports_recall(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    images, classes, _ = clustered(num_images=3000, num_classes=50)
    exact = label_propagation(images, classes, k=10)
    with caplog.at_level(logging.INFO, logger="reclip.method.knn"):
        approx = label_propagation(images, classes, k=10, knn="approx", knn_backend=backend)
    assert "calibration recall" in caplog.text and approx.knn_backend.startswith(f"{backend}-ivf nprobe=")
    assert approx.knn_recall is not None and approx.knn_recall >= 0.95
    assert f"recall@10 on 1000 sampled queries: {approx.knn_recall:.4f}" in caplog.text
    assert (approx.labels == exact.labels).float().mean() >= 0.97


def test_approximate_knn_with_full_space_image_edges() -> None:
    images, classes, _ = clustered(num_images=3000, num_classes=50)
    exact = label_propagation(images, classes, k=10, image_edges="full")
    approx = label_propagation(images, classes, k=10, image_edges="full", knn="approx", knn_backend="torch")
    assert approx.knn_backend.startswith("torch-ivf nprobe=") and approx.knn_backend.endswith("(full-space image edges)")
    assert approx.knn_recall is not None and approx.knn_recall >= 0.95
    assert (approx.labels == exact.labels).float().mean() >= 0.96  # 0.966-0.975 over seeds 0-2 at recall 0.96-0.97


def test_both_ivf_backends_scan_the_same_lists() -> None:
    images, classes, _ = clustered(num_images=3000, num_classes=50)
    nodes = torch.nn.functional.normalize(torch.from_numpy(np.concatenate([classes, images])), dim=1)
    by_torch = knn_search(nodes, 10, "approx", "torch")
    by_faiss = knn_search(nodes, 10, "approx", "faiss")
    assert by_torch.backend.split("-", 1)[1] == by_faiss.backend.split("-", 1)[1]  # same nprobe and lists
    assert torch.equal(by_torch.similarities, by_faiss.similarities)
    assert torch.equal(by_torch.indices, by_faiss.indices)


def test_torch_ivf_bound_pass_keeps_every_neighbour_of_the_probed_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    images, classes, _ = clustered(num_images=3000, num_classes=50)
    nodes = torch.nn.functional.normalize(torch.from_numpy(np.concatenate([classes, images])), dim=1)
    by_faiss = knn_search(nodes, 10, "approx", "faiss")
    scanned = []
    scan = knn_module.TorchIVF._scan
    monkeypatch.setattr(knn_module.TorchIVF, "_scan", lambda *args: scanned.extend(args[-1:]) or scan(*args))
    monkeypatch.setattr(knn_module, "IVF_BOUND_POINTS_PER_WIDTH", 0.05)  # the bound from 1 list
    by_torch = knn_search(nodes, 10, "approx", "torch")
    bounds = [bound for bound in scanned if bound is not None]  # the second pass's
    assert bounds and torch.isfinite(torch.cat(bounds)).float().mean() > 0.5  # most queries had a finite bound
    assert by_torch.backend.split("-", 1)[1] == by_faiss.backend.split("-", 1)[1]
    assert torch.equal(by_torch.indices, by_faiss.indices)


def test_approximate_knn_falls_back_to_exact_when_ivf_cannot_help(data, caplog: pytest.LogCaptureFixture) -> None:
    images, classes, _ = data  # 305 nodes: 7 lists, probing 1 of them misses the recall target
    exact = label_propagation(images, classes, k=10)
    with caplog.at_level(logging.INFO, logger="reclip.method.knn"):
        approx = label_propagation(images, classes, k=10, knn="approx")
    assert "using exact search" in caplog.text and approx.knn_backend.endswith(" (ivf fallback)")
    assert approx.knn_recall == 1.0 and exact.knn_backend in ("torch", "faiss-flat")
    torch.testing.assert_close(approx.scores, exact.scores)


def test_exact_backends_find_the_same_neighbours() -> None:
    points = unit_points(2000, 48)
    by_torch = knn_search(points, 15, "exact", "torch")
    by_faiss = knn_search(points, 15, "exact", "faiss")
    assert (by_torch.backend, by_faiss.backend) == ("torch", "faiss-flat")
    assert torch.equal(by_torch.indices, by_faiss.indices) and torch.equal(by_torch.similarities, by_faiss.similarities)
    dense = points.double() @ points.double().T
    dense.fill_diagonal_(-torch.inf)
    reference = dense.topk(15, dim=1)
    assert torch.equal(by_torch.indices, reference.indices)
    assert torch.equal(by_torch.similarities, reference.values.float())


def test_ivf_raises_nprobe_when_the_measured_recall_falls_short(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    images, classes, _ = clustered(num_images=3000, num_classes=50)
    nodes = torch.nn.functional.normalize(torch.from_numpy(np.concatenate([classes, images])), dim=1)
    curve = knn_module._calibration_curve
    optimistic = lambda *args: (curve(*args) + 0.06).clamp(max=1.0)  # noqa: E731 - first nprobe falls short
    monkeypatch.setattr(knn_module, "_calibration_curve", optimistic)
    with caplog.at_level(logging.INFO, logger="reclip.method.knn"):
        found = knn_search(nodes, 10, "approx", "torch")
    assert "raising nprobe" in caplog.text and found.backend.startswith("torch-ivf nprobe=")
    assert found.recall >= 0.95
    assert found.recall == knn_module.neighbour_recall(nodes, found.indices, caplog.text.count("raising nprobe") * knn_module.STEP_UP_SEED_STRIDE)


def test_ties_go_to_the_smaller_index_whatever_the_candidates_order() -> None:
    idx = torch.tensor([[7, 3, 5, 1], [2, 9, 4, 6]])
    sims = torch.tensor([[0.5, 0.5, 0.9, -torch.inf], [0.1, 0.3, 0.3, 0.3]])
    best_idx, best_sims = knn_module.best_first(idx, sims, 3)
    assert best_idx.tolist() == [[5, 3, 7], [4, 6, 9]]
    assert best_sims.tolist() == [[0.8999999761581421, 0.5, 0.5], [0.30000001192092896] * 3]


# --- edge cases -------------------------------------------------------------------------------


def test_k_larger_than_graph_is_clipped_with_warning() -> None:
    images, classes, _ = clustered(num_images=5, num_classes=3)
    with pytest.warns(UserWarning, match="exceeds"):
        result = label_propagation(images, classes, k=20)
    assert result.k == 7
    assert torch.isfinite(result.scores).all()


@pytest.mark.parametrize("knn", ["exact", "approx"])
def test_duplicate_points(knn: str) -> None:
    images, classes, truth = clustered(num_images=40, num_classes=4)
    images, truth = np.repeat(images, 4, axis=0), np.repeat(truth, 4)  # self ties with 3 copies
    nodes = torch.nn.functional.normalize(torch.from_numpy(np.concatenate([classes, images])), dim=1)
    neighbours = knn_search(nodes, 10, knn)
    assert not (neighbours.indices == torch.arange(len(nodes))[:, None]).any()
    assert all(len(set(row)) == 10 for row in neighbours.indices.tolist())
    result = label_propagation(images, classes, k=10, knn=knn)
    assert torch.isfinite(result.scores).all()
    groups = result.labels.view(40, 4)
    assert (groups == groups[:, :1]).all()
    if knn == "exact":  # IVF (1 of 4 lists, recall ~0.97 on these 164 nodes) labels ~85% right
        assert (result.labels.numpy() == truth).mean() > 0.9
    else:
        assert result.knn_recall >= 0.95


def test_zero_degree_nodes_have_zero_rows() -> None:
    # node 0's only neighbour is antipodal (affinity 0) and nobody points back to it
    indices = torch.tensor([[1], [2], [1]])
    similarities = torch.tensor([[-1.0], [1.0], [1.0]])
    dense = normalised_adjacency(indices, similarities).to_dense()
    assert torch.isfinite(dense).all() and (dense[0] == 0).all() and (dense[:, 0] == 0).all()

    axis = np.eye(4, dtype=np.float32)[0]
    classes = np.stack([-axis, -axis])
    images = np.stack([axis] + [-axis] * 10)  # image 0 is antipodal to every other node
    result = label_propagation(images, classes, k=3, project=False)
    for tensor in (result.scores, result.confidence, result.centroids):
        assert torch.isfinite(tensor).all()
    assert (result.scores[0] == 0).all() and result.labels[0] == 0 and result.confidence[0] == 0


def test_two_classes_one_dimensional_projection() -> None:
    images, classes, _ = clustered(num_images=60, num_classes=2, dim=16)
    direction = projection(classes)[:, 0].numpy()
    images[0] -= (images[0] @ direction) * direction  # projects to zero
    result = label_propagation(images, classes, k=5)
    for tensor in (result.scores, result.confidence, result.centroids):
        assert torch.isfinite(tensor).all()
    coordinate = images @ direction
    side = np.sign(np.where(np.abs(coordinate) < 1e-6, 0.0, coordinate))
    assert side[0] == 0
    class_side = np.sign(classes @ direction)
    assert class_side[0] == -class_side[1]
    reached = (result.scores.abs().sum(1) > 0).numpy() & (side != 0)
    expected = np.where(side == class_side[0], 0, 1)
    assert reached.sum() > 50
    assert (result.labels.numpy()[reached] == expected[reached]).all()


def test_more_classes_than_dimensions() -> None:
    images, classes, _ = clustered(num_images=200, num_classes=40, dim=16)
    result = label_propagation(images, classes, k=10)
    assert torch.isfinite(result.scores).all()
    assert result.scores.shape == (200, 40) and result.centroids.shape == (40, 16)
    assert 0 <= int(result.labels.min()) and int(result.labels.max()) < 40


@pytest.mark.parametrize(
    ("images", "classes", "message"),
    [
        (np.full((4, 8), np.nan, dtype=np.float32), np.ones((3, 8)), "image_features contains NaN or inf"),
        (np.ones((4, 8)), np.array([[np.inf] * 8, [1.0] * 8]), "class_embeddings contains NaN or inf"),
        (np.ones((4, 8)), np.ones((3, 6)), "D=8 but class_embeddings have D=6"),
        (np.ones((4, 8)), np.ones((1, 8)), "at least 2 classes"),
        (np.ones(8), np.ones((3, 8)), "2-D"),
    ],
)
def test_invalid_inputs_raise_reclip_error(images: np.ndarray, classes: np.ndarray, message: str) -> None:
    with pytest.raises(ReclipError, match=message):
        label_propagation(images, classes)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"k": 0}, "k must"),
        ({"alpha": 1.0}, "alpha"),
        ({"max_iter": 0}, "max_iter"),
        ({"knn": "ivf"}, "knn must"),
        ({"knn_backend": "blas"}, r"knn_backend must be one of \('torch', 'faiss'\)"),
    ],
)
def test_invalid_options_raise_reclip_error(data, option: dict, message: str) -> None:
    images, classes, _ = data
    with pytest.raises(ReclipError, match=message):
        label_propagation(images, classes, **option)


def test_the_default_settings() -> None:
    # docs/method.md, step 2: k = 20 neighbours, alpha = 0.99, 20 CG iterations (the authors' values)
    defaults = {name: p.default for name, p in inspect.signature(label_propagation).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"k": 20, "alpha": 0.99, "cut_dim": None, "project": True, "max_iter": 20, "tol": 1e-6,
                        "knn": "exact", "knn_backend": None, "image_edges": "projected", "device": None}


def test_the_smallest_valid_options_are_accepted(data) -> None:
    images, classes, _ = data
    for option in ({"k": 1}, {"max_iter": 1}, {"tol": 0.0}, {"cut_dim": 2}):
        assert torch.isfinite(label_propagation(images[:40], classes, **option).scores).all()
    assert projection(classes, cut_dim=2).shape == (32, 1)
    with pytest.raises(ReclipError, match="alpha"):
        label_propagation(images[:40], classes, alpha=0.0)


def test_confidence_by_value_whatever_the_scores_mass() -> None:
    # 1 - H(p) / log C of the scores normalised per row; a row without mass has confidence 0
    scores = torch.tensor([[0.4, 0.1], [0.0, 0.0], [1.0, 0.0], [3.0, 1.0]])

    def confidence(p: np.ndarray) -> float:
        return 1 + (p * np.log(p)).sum() / np.log(2)

    expected = [confidence(np.array([0.8, 0.2])), 0.0, 1.0, confidence(np.array([0.75, 0.25]))]
    assert propagation_module._confidence(scores).tolist() == pytest.approx(expected, abs=1e-6)


def test_the_timings_add_up(data) -> None:
    images, classes, _ = data
    timings = label_propagation(images, classes, k=10).timings
    assert min(timings.values()) >= 0 and timings["knn"] <= timings["graph"]
    assert timings["total"] == pytest.approx(timings["graph"] + timings["solve"], abs=1e-6)


def test_normalised_adjacency_by_value_for_small_degrees() -> None:
    # nodes 0 and 1 point at each other with affinity (−0.5 + 1) / 2 = 0.25; node 2 has no edge
    indices = torch.tensor([[1], [0], [-1]])
    similarities = torch.tensor([[-0.5], [-0.5], [0.0]])
    dense = normalised_adjacency(indices, similarities).to_dense()
    torch.testing.assert_close(dense, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("image_edges", ["projected", "full"])
def test_chunks_of_rows_give_the_same_graph(data, image_edges: str, monkeypatch: pytest.MonkeyPatch) -> None:
    images, classes, _ = data
    whole = label_propagation(images, classes, k=10, image_edges=image_edges)
    monkeypatch.setattr(propagation_module, "_ROW_CHUNK", 7)  # 305 nodes in 44 chunks, classes split off
    chunked = label_propagation(images, classes, k=10, image_edges=image_edges)
    assert torch.equal(chunked.scores, whole.scores) and torch.equal(chunked.centroids, whole.centroids)


def test_a_feature_with_no_projection_becomes_a_zero_row() -> None:
    features = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    basis = torch.tensor([[1.0], [0.0], [0.0]])
    coordinates = propagation_module._graph_coordinates(features, basis)
    assert torch.equal(coordinates, torch.tensor([[1.0], [0.0]]))
