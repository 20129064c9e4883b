"""Dense reference of ReCLIP label propagation, written directly from docs/method.md, steps 1-2.

Everything is a dense numpy array: the projector P (D x D) and the (N+C) x (N+C)
graph, in float64 by default. Only for small N (memory O((N+C)^2)). Used by the tests
and by the benchmark's dense comparison.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import cg


def projector(class_embeddings: np.ndarray, cut_dim: int | None = None) -> np.ndarray:
    """P = U[:, 1:r] U[:, 1:r]^T (D x D) from the reduced SVD of T = class_embeddings^T (D x C)."""
    t = np.asarray(class_embeddings, dtype=np.float64).T
    dim, num_classes = t.shape
    rank = min(num_classes, dim, dim if cut_dim is None else cut_dim)
    u, _, _ = np.linalg.svd(t, full_matrices=False)
    basis = u[:, 1:rank]
    return basis @ basis.T


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm; zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def normalised_adjacency(
    image_features: np.ndarray,
    class_embeddings: np.ndarray,
    *,
    k: int,
    cut_dim: int | None = None,
    project: bool = True,
    image_edges: str = "projected",
) -> np.ndarray:
    """Dense Wn ((N+C) x (N+C)): nodes = classes then images, projected and unit-norm.

    a_ij = (x_i . x_j + 1) / 2 without self loops, top-k per row kept,
    W = (A_topk + A_topk^T) / 2, Wn = D^-1/2 W D^-1/2 (zero-degree rows stay zero).
    With ``image_edges="full"`` the image-image block of a uses the unprojected unit features.
    """
    classes = _unit_rows(np.asarray(class_embeddings, dtype=np.float64))
    images = _unit_rows(np.asarray(image_features, dtype=np.float64))
    nodes = np.concatenate([classes, images])
    if project:
        nodes = nodes @ projector(classes, cut_dim)
    nodes = _unit_rows(nodes)
    affinity = (nodes @ nodes.T + 1.0) / 2.0
    if image_edges == "full":
        c = len(classes)
        affinity[c:, c:] = (images @ images.T + 1.0) / 2.0
    np.fill_diagonal(affinity, -np.inf)
    top = np.argpartition(-affinity, k - 1, axis=1)[:, :k]
    rows = np.arange(len(nodes))[:, None]
    kept = np.zeros_like(affinity)
    kept[rows, top] = affinity[rows, top]
    del affinity
    weights = (kept + kept.T) / 2.0
    degree = weights.sum(axis=1)
    inv_sqrt = np.divide(1.0, np.sqrt(degree), out=np.zeros_like(degree), where=degree > 0)
    return inv_sqrt[:, None] * weights * inv_sqrt[None, :]


def _system(adjacency: np.ndarray, alpha: float) -> np.ndarray:
    """I - alpha Wn."""
    system = -alpha * adjacency
    system[np.diag_indices_from(system)] += 1.0
    return system


def solve_cg(
    adjacency: np.ndarray, num_classes: int, *, alpha: float = 0.99, max_iter: int = 20, tol: float = 1e-6
) -> np.ndarray:
    """F ((N+C) x C): one scipy CG per class on (I - alpha Wn) f = y_c, as the authors do."""
    system = _system(adjacency, alpha)
    scores = np.zeros((len(adjacency), num_classes), dtype=adjacency.dtype)
    for c in range(num_classes):
        rhs = np.zeros(len(adjacency), dtype=adjacency.dtype)
        rhs[c] = 1.0
        scores[:, c], _ = cg(system, rhs, rtol=tol, maxiter=max_iter)
    return scores


def solve_direct(adjacency: np.ndarray, num_classes: int, *, alpha: float = 0.99) -> np.ndarray:
    """F ((N+C) x C) = (I - alpha Wn)^-1 Y by a dense direct solve (converged answer)."""
    rhs = np.zeros((len(adjacency), num_classes), dtype=adjacency.dtype)
    rhs[np.arange(num_classes), np.arange(num_classes)] = 1.0
    return np.linalg.solve(_system(adjacency, alpha), rhs)


def centroids(
    image_features: np.ndarray, class_embeddings: np.ndarray, predictions: np.ndarray
) -> np.ndarray:
    """(C x D) L2-normalised mean of the unit, unprojected features of the nodes of each class.

    predictions: ((N+C),) predicted class of every node, class nodes first. A class
    that no node predicts keeps its class embedding.
    """
    classes = _unit_rows(np.asarray(class_embeddings, dtype=np.float64))
    nodes = np.concatenate([classes, _unit_rows(np.asarray(image_features, dtype=np.float64))])
    sums = np.zeros_like(classes)
    np.add.at(sums, predictions, nodes)
    empty = np.bincount(predictions, minlength=len(classes)) == 0
    sums[empty] = classes[empty]
    return _unit_rows(sums)
