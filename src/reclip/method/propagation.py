"""Label propagation of ReCLIP (docs/method.md, steps 1-2) on a sparse k-NN graph.

Pipeline of :func:`label_propagation`:

1. Projection: ``B = U[:, 1:r]`` from the SVD of the class embeddings (D x C), so
   ``P = B B^T`` removes the direction shared by all classes (see :func:`projection`).
2. Nodes: the C class embeddings followed by the N image features, projected and
   L2-normalised. Since ``B`` has orthonormal columns, ``(x P) . (y P) = (x B) . (y B)``,
   so the graph is built on the (r-1)-dimensional coordinates ``x B`` directly.
3. Graph: each node keeps its top-k neighbours (self excluded) with affinity
   ``(cos + 1) / 2`` (with ``image_edges="full"`` the cosine of two images is that of
   their full features, see :func:`_full_image_edge_neighbours`); ``W = (A + A^T) / 2``;
   ``Wn = D^-1/2 W D^-1/2`` with D the row sums of W. Everything is sparse: memory
   O((N + C) k).
4. Solve ``(I - alpha Wn) F = Y`` (Y one-hot on the class nodes) by conjugate gradient
   on blocks of classes at once, each class column with its own step sizes and
   stopping rule, exactly like one ``scipy.sparse.linalg.cg(A, y, rtol=tol,
   maxiter=max_iter)`` per class (the authors' reference). The nodes are solved in
   reverse Cuthill-McKee order, so neighbours sit close in memory (3x faster sparse
   products at N = 1M), and the scores are put back in node order afterwards.
5. Labels, confidences and centroids from F.

Degenerate graphs. With C = 2 the projection space is 1-D, so every node becomes +e, -e or
0: same-sign nodes have affinity 1, opposite-sign nodes 0, zero nodes 1/2 to all (a node
whose projection has norm <= ``ZERO_NORM_RTOL`` times its input norm becomes the zero
vector); the two class nodes have opposite signs (unless their embeddings are parallel), so
an image takes the class on its side of the hyperplane orthogonal to e, provided its graph
component reaches a class node. Tied neighbours are kept by smaller index
(:mod:`reclip.method.knn`), so the result is the same from every backend. Nodes whose kept
edges all have affinity 0 have degree 0: their rows of Wn are zero (no NaN/inf), and an image
with no path to a class node gets an all-zero score row, label 0 and confidence 0.
"""
from __future__ import annotations

import functools
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import reverse_cuthill_mckee
import torch
import torch.nn.functional as nnf

from reclip.errors import ReclipError
from reclip.method.knn import Neighbours, best_first, check_knn_options, knn_search
from reclip.runtime import map_single_threaded, torch_threads

logger = logging.getLogger(__name__)

ArrayLike = torch.Tensor | np.ndarray

#: A projected node whose norm is at most this fraction of its input norm is a zero node.
ZERO_NORM_RTOL = 1e-6
#: Class columns solved together: as many as keep one (n x block) float32 CG array within one
#: core's L2 cache, read from sysfs (:func:`core_cache_bytes`; CORE_CACHE_FALLBACK where it is
#: not reported), so the sparse product's scattered row reads stay in that core's cache, but at
#: least MIN_CG_BLOCK and at most MAX_CG_BLOCK. Measured at N = 51,000 on a Xeon with 2 MiB
#: of L2 per core, one thread, per 1,000 columns: 16 columns 10.1 s, 32 12.1 s, 64 15.3 s,
#: 256 18.8 s, 1,000 24.9 s (load 10); on the AMD EPYC 32-64 columns 4.0 s, 1,000 9.6 s.
CORE_CACHE_FALLBACK = 1 << 20
MIN_CG_BLOCK = 8
MAX_CG_BLOCK = 1024
#: Where image-image similarities are taken (``label_propagation``'s ``image_edges``).
IMAGE_EDGES = ("projected", "full")
#: Rows per chunk when reducing over N x D or N x C arrays.
_ROW_CHUNK = 1 << 16


@dataclass(frozen=True)
class PropagationResult:
    """Output of :func:`label_propagation`; all tensors are on the CPU.

    Attributes:
        labels: (N,) int64 pseudo label of each image, ``argmax_c scores[i, c]``
            (0 for an all-zero row, i.e. an image not connected to any class node).
        scores: (N x C) float32 propagated values ``F[C + i, c]`` of the image nodes.
        confidence: (N,) float32 in [0, 1]: ``1 - H(p) / log C`` where ``p`` is the
            score row with negatives clamped to 0, normalised to sum 1, and H the
            entropy; 1 means all mass on one class, 0 a uniform or all-zero row.
        centroids: (C x D) float32 L2-normalised mean of the unprojected, L2-normalised
            features of all nodes (class nodes included) predicted as each class; a
            class that no node predicts keeps its own class embedding.
        k: neighbours per node actually used (k clipped to N + C - 1).
        knn: ``"exact"`` or ``"approx"``.
        knn_backend: the search actually run (see :class:`reclip.method.knn.Neighbours`).
        knn_recall: neighbour recall of approximate search, None for exact search.
        iterations: most CG iterations run by any class column.
        converged: number of class columns whose residual reached ``tol``.
        timings: seconds per stage: ``graph`` (projection + k-NN + adjacency),
            ``knn`` (search incl. recall measurement), ``solve``, ``total``.
    """

    labels: torch.Tensor
    scores: torch.Tensor
    confidence: torch.Tensor
    centroids: torch.Tensor
    k: int
    knn: str
    knn_backend: str
    knn_recall: float | None
    iterations: int
    converged: int
    timings: dict[str, float]


@dataclass(frozen=True)
class CGResult:
    """Output of :func:`conjugate_gradient` for an (n x m) right-hand side.

    Attributes:
        solution: (n x m) solution, same dtype and device as the right-hand side.
        iterations: (m,) int64 CPU, CG updates applied to each column.
        converged: (m,) bool CPU, whether each column's final residual norm is
            below ``tol * ||b||`` (always True for a zero column).
    """

    solution: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor


def projection(class_embeddings: ArrayLike, cut_dim: int | None = None) -> torch.Tensor:
    """Basis of the projection space of docs/method.md step 1, in factored form.

    With ``T`` the (D x C) matrix of class embeddings (the rows of
    ``class_embeddings``, used as given, no centring) and ``T = U S V^T`` its reduced
    SVD, returns ``B = U[:, 1:r]``: the projector is ``P = B B^T`` (D x D, symmetric,
    idempotent, rank r-1, orthogonal to the first left singular vector, i.e. the
    direction shared by all classes). ``r = min(C, D, cut_dim)``; ``cut_dim``
    defaults to D.

    Args:
        class_embeddings: (C x D) class embeddings, C >= 2.
        cut_dim: number of leading singular directions considered (>= 2), or None.

    Returns:
        B: (D x (r-1)) float32 CPU tensor with orthonormal columns.
    """
    classes = _as_matrix(class_embeddings, "class_embeddings").cpu()
    num_classes, dim = classes.shape
    if num_classes < 2:
        raise ReclipError(f"the projection needs at least 2 class embeddings, got {num_classes}")
    if cut_dim is not None and cut_dim < 2:
        raise ReclipError(f"cut_dim must be at least 2 (or None for D), got {cut_dim}")
    rank = min(num_classes, dim, dim if cut_dim is None else cut_dim)
    with torch_threads(1):
        left, _, _ = torch.linalg.svd(classes.double().T, full_matrices=False)
    return left[:, 1:rank].float().contiguous()


def label_propagation(image_features: ArrayLike, class_embeddings: ArrayLike, *, k: int = 20, alpha: float = 0.99,
                      cut_dim: int | None = None, project: bool = True, max_iter: int = 20, tol: float = 1e-6,
                      knn: str = "exact", knn_backend: str | None = None, image_edges: str = "projected",
                      device: str | torch.device | None = None) -> PropagationResult:
    """Pseudo labels of N images by label propagation from C class nodes (docs/method.md,
    steps 1-2; the module docstring gives the pipeline and the degenerate graphs).

    Args:
        image_features: (N x D) image features, torch tensor or numpy array.
        class_embeddings: (C x D) class embeddings (C >= 2), same D.
        k: neighbours per node; clipped (with a warning) to N + C - 1.
        alpha: propagation weight in (0, 1).
        cut_dim: see :func:`projection` (the authors used 250 when C > 500).
        project: build the graph on projected features (False: only L2-normalise).
        max_iter, tol: CG iterations per class (the authors used 20) and stopping rule,
            ``||r|| < tol * ||y||`` (scipy's ``rtol``).
        knn: ``"exact"`` or ``"approx"`` (IVF with nprobe calibrated to a recall target;
            recall measured on a sample, logged and returned): :mod:`reclip.method.knn`.
        knn_backend: ``"torch"`` or ``"faiss"``; None: torch. Every backend gives the
            same graph and so the same result.
        image_edges: ``"projected"`` (every similarity in the projection space, the
            paper's graph) or ``"full"``: two images compare by the cosine of their full
            features; similarities involving a class node stay in the projection space.
        device: where projection, torch k-NN search and the solve run; None: the
            device of ``image_features`` if it is a tensor, else the CPU.

    Returns :class:`PropagationResult` (CPU tensors); raises ``ReclipError`` on NaN/inf
    inputs, mismatched D, fewer than 2 classes, or invalid options.
    """
    start = time.perf_counter()
    images, classes, k = _checked_inputs(image_features, class_embeddings, k=k, alpha=alpha, max_iter=max_iter,
                                         tol=tol, knn=knn, knn_backend=knn_backend, image_edges=image_edges,
                                         device=device)
    graph = _graph(images, classes, k, cut_dim, project, knn, knn_backend, image_edges)
    graph_done = time.perf_counter()
    scores, iterations, converged = _propagate(graph.adjacency, graph.position[:len(classes)], alpha=alpha,
                                               max_iter=max_iter, tol=tol)
    scores = scores[graph.position]
    predictions = scores.argmax(dim=1)
    done = time.perf_counter()
    timings = {"graph": graph_done - start, "knn": graph.knn_seconds, "solve": done - graph_done, "total": done - start}
    logger.info("label propagation N=%d C=%d k=%d knn=%s (%s): graph %.2fs (k-NN %.2fs), solve %.2fs, total %.2fs",
                len(images), len(classes), k, knn, graph.backend, timings["graph"], graph.knn_seconds,
                timings["solve"], timings["total"])
    return PropagationResult(labels=predictions[len(classes):], scores=scores[len(classes):],
                             confidence=_confidence(scores[len(classes):]),
                             centroids=_centroids(classes, images, predictions.to(images.device)), k=k, knn=knn,
                             knn_backend=graph.backend, knn_recall=graph.recall, iterations=int(iterations.max()),
                             converged=int(converged.sum()), timings=timings)


def _checked_inputs(image_features: ArrayLike, class_embeddings: ArrayLike, *, k: int, alpha: float, max_iter: int,
                    tol: float, knn: str, knn_backend: str | None, image_edges: str,
                    device: str | torch.device | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(N x D images, C x D L2-normalised classes, on ``device``; k clipped to the nodes), or
    ``ReclipError`` naming the bad input or option."""
    _check_options(k=k, alpha=alpha, max_iter=max_iter, tol=tol)
    check_knn_options(knn, knn_backend)
    if image_edges not in IMAGE_EDGES:
        raise ReclipError(f"image_edges must be one of {', '.join(IMAGE_EDGES)}; got {image_edges!r}")
    if device is None:
        device = image_features.device if isinstance(image_features, torch.Tensor) else "cpu"
    images = _as_matrix(image_features, "image_features").to(device)
    classes = nnf.normalize(_as_matrix(class_embeddings, "class_embeddings").to(device), dim=1)
    if images.shape[1] != classes.shape[1]:
        raise ReclipError(f"image_features have D={images.shape[1]} but class_embeddings have D={classes.shape[1]}; "
                          "both must come from the same model")
    if len(classes) < 2:
        raise ReclipError(f"label propagation needs at least 2 classes, got {len(classes)}")
    others = len(images) + len(classes) - 1
    if k > others:
        warnings.warn(f"k={k} exceeds the {others} other nodes; using k={others}", stacklevel=3)
        k = others
    return images, classes, k


@dataclass
class _Graph:
    """The normalised graph ``Wn`` as a torch CSR ``adjacency`` in reverse Cuthill-McKee
    order, ``position`` of each node (classes first) in that order, the k-NN ``backend``
    that ran, its ``recall`` (approximate search) and ``knn_seconds``."""

    adjacency: torch.Tensor
    position: torch.Tensor
    backend: str
    recall: float | None
    knn_seconds: float


def _graph(images: torch.Tensor, classes: torch.Tensor, k: int, cut_dim: int | None, project: bool, knn: str,
           knn_backend: str | None, image_edges: str) -> _Graph:
    """Steps 1-3 of the module docstring: projection, nodes, the sparse normalised k-NN graph."""
    basis = projection(classes, cut_dim).to(images.device) if project else None
    nodes = torch.cat([_graph_coordinates(classes, basis), _graph_coordinates(images, basis)])
    knn_start = time.perf_counter()
    if image_edges == "full":
        neighbours = _full_image_edge_neighbours(nodes, _graph_coordinates(images, None), k, knn, knn_backend)
    else:
        neighbours = knn_search(nodes, k, knn, knn_backend)
    knn_seconds = time.perf_counter() - knn_start
    del nodes
    weights = _normalised_weights(neighbours.indices, neighbours.similarities)
    order = reverse_cuthill_mckee(weights, symmetric_mode=True)
    weights = weights[order][:, order]
    weights.sort_indices()
    position = torch.empty(weights.shape[0], dtype=torch.int64)
    position[torch.from_numpy(order.astype(np.int64))] = torch.arange(weights.shape[0])
    return _Graph(_as_torch_csr(weights).to(images.device), position, neighbours.backend, neighbours.recall,
                  knn_seconds)


def _full_image_edge_neighbours(nodes: torch.Tensor, images: torch.Tensor, k: int, knn: str,
                                knn_backend: str | None) -> Neighbours:
    """Top-k neighbours of the (C + N) ``nodes`` (graph coordinates, class nodes first) when
    image-image similarities come from the N x D unit ``images`` instead.

    The images' own k nearest images come from :func:`knn_search` on ``images``; each image's
    row is the top k of those and of its similarities to the C class nodes; each class node's
    row is its top k of all other nodes in graph coordinates.
    """
    num_classes = len(nodes) - len(images)
    classes, projected = nodes[:num_classes], nodes[num_classes:]
    among_images = knn_search(images, min(k, len(images) - 1), knn, knn_backend)
    image_idx = torch.where(among_images.indices >= 0, among_images.indices + num_classes, -1).to(nodes.device)
    image_sims = torch.where(among_images.indices >= 0, among_images.similarities, -torch.inf).to(nodes.device)
    class_top = min(k, num_classes)
    rows_idx, rows_sims = [], []
    for rows in _row_chunks(len(images)):
        sims = _product(projected[rows], classes.T)
        idx, sims = best_first(torch.arange(num_classes, device=nodes.device).expand_as(sims), sims, class_top)
        top_idx_rows, top_sims_rows = best_first(torch.cat([idx, image_idx[rows]], dim=1),
                                                 torch.cat([sims, image_sims[rows]], dim=1), k)
        rows_idx.append(top_idx_rows)
        rows_sims.append(top_sims_rows)
    top_sims = torch.empty(num_classes, 0, device=nodes.device)
    top_idx = torch.empty(num_classes, 0, dtype=torch.int64, device=nodes.device)
    for cols in _row_chunks(len(nodes)):
        sims = _product(classes, nodes[cols].T)
        own = torch.arange(min(cols.start, num_classes), min(cols.stop, num_classes), device=nodes.device)
        sims[own, own - cols.start] = -torch.inf  # no self loops
        columns = torch.arange(cols.start, cols.stop, device=nodes.device).expand_as(sims)
        top_idx, top_sims = best_first(torch.cat([top_idx, columns], dim=1), torch.cat([top_sims, sims], dim=1), k)
    indices = torch.cat([top_idx] + rows_idx).cpu()
    similarities = torch.cat([top_sims] + rows_sims).cpu()
    missing = torch.isinf(similarities)
    return Neighbours(indices.masked_fill(missing, -1), similarities.masked_fill(missing, 0.0).float(),
                      among_images.recall, f"{among_images.backend} (full-space image edges)")


def normalised_adjacency(indices: torch.Tensor, similarities: torch.Tensor) -> torch.Tensor:
    """Sparse ``Wn = D^-1/2 W D^-1/2`` of the symmetrised k-NN affinity graph.

    ``A[i, j] = (similarities[i, t] + 1) / 2`` for ``j = indices[i, t]`` (clamped to
    [0, 1]; entries with index -1 are skipped), ``W = (A + A^T) / 2``, D the row sums
    of W; rows and columns of zero-degree nodes are zero.

    Args:
        indices: (n x k) int64 neighbour indices, self excluded, -1 for none.
        similarities: (n x k) float32 cosine similarities.

    Returns:
        (n x n) float32 sparse CSR tensor on the CPU (int32 indices when they fit).
    """
    return _as_torch_csr(_normalised_weights(indices, similarities))


def _normalised_weights(indices: torch.Tensor, similarities: torch.Tensor) -> sp.csr_array:
    """:func:`normalised_adjacency` as an (n x n) float32 scipy CSR array with sorted indices."""
    n, k = indices.shape
    valid = (indices >= 0).numpy()
    rows = np.repeat(np.arange(n), k).reshape(n, k)[valid]
    cols = indices.numpy()[valid]
    values = ((similarities.numpy()[valid] + 1.0) / 2.0).clip(0.0, 1.0).astype(np.float32)
    affinity = sp.csr_array((values, (rows, cols)), shape=(n, n))
    weights = ((affinity + affinity.T) * np.float32(0.5)).tocsr()
    degree = np.asarray(weights.sum(axis=1, dtype=np.float64)).ravel()
    inv_sqrt = np.divide(1.0, np.sqrt(degree), out=np.zeros_like(degree), where=degree > 0)
    scale = sp.diags_array(inv_sqrt.astype(np.float32))
    normalised = (scale @ weights @ scale).tocsr()
    normalised.sort_indices()
    return normalised


def _as_torch_csr(normalised: sp.csr_array) -> torch.Tensor:
    """(n x n) scipy CSR array -> float32 torch sparse CSR tensor on the CPU."""
    n = normalised.shape[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(
            torch.from_numpy(normalised.indptr),
            torch.from_numpy(normalised.indices.astype(normalised.indptr.dtype, copy=False)),
            torch.from_numpy(normalised.data.astype(np.float32, copy=False)),
            size=(n, n),
            check_invariants=False,
        )


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, *, max_iter: int, tol: float
) -> CGResult:
    """Conjugate gradient on every column of ``rhs`` at once, each with its own steps.

    Column j follows ``scipy.sparse.linalg.cg(A, rhs[:, j], rtol=tol, atol=0,
    maxiter=max_iter)`` exactly: x0 = 0; before each iteration the column stops for
    good once ``||r_j|| < tol * ||rhs_j||`` (a zero column stays zero); steps
    ``alpha_j = rho_j / (p_j . A p_j)``, ``beta_j = rho_j / rho_prev_j``. The one
    deviation: a column whose residual is exactly 0 also stops (with ``tol=0`` scipy
    would divide 0 by 0 there and return NaN).

    Args:
        matvec: ``P -> A @ P`` for (n x m) P, A symmetric positive definite (n x n).
        rhs: (n x m) right-hand sides (any float dtype, any device).
        max_iter: at most this many iterations; tol: relative residual tolerance.

    Returns:
        :class:`CGResult`.
    """
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = torch.zeros_like(rhs)
    rho = torch.linalg.vecdot(residual, residual, dim=0)
    rhs_norm = rho.sqrt()
    threshold = tol * rhs_norm
    active = rhs_norm > 0
    rho_prev = torch.ones_like(rho)
    iterations = torch.zeros(rhs.shape[1], dtype=torch.int64, device=rhs.device)
    zero = torch.zeros((), dtype=rhs.dtype, device=rhs.device)
    for _ in range(max_iter):
        active &= (rho.sqrt() >= threshold) & (rho > 0)
        if not bool(active.any()):
            break
        direction.mul_(torch.where(active, rho / rho_prev, zero)).add_(residual)
        product = matvec(direction)
        step = torch.where(active, rho / torch.linalg.vecdot(direction, product, dim=0), zero)
        solution.addcmul_(direction, step)
        residual.addcmul_(product, step, value=-1.0)
        rho_prev = torch.where(active, rho, rho_prev)
        rho = torch.linalg.vecdot(residual, residual, dim=0)
        iterations += active
    converged = (rho.sqrt() < threshold) | (rhs_norm == 0)
    return CGResult(solution, iterations.cpu(), converged.cpu())


def _propagate(
    adjacency: torch.Tensor, seeds: torch.Tensor, *, alpha: float, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve ``(I - alpha Wn) F = Y`` with ``Y[seeds[c], c] = 1`` and 0 elsewhere.

    Classes are solved in blocks of about equal width (see ``MIN_CG_BLOCK``). On the CPU the
    blocks are spread over one Python thread per torch thread, each running torch
    single-threaded: the thousands of small parallel regions of a multi-threaded solve each
    waited for a descheduled thread when another process shared the cores (the solve took 5x
    its idle time at N = 50k, C = 1,000 with one busy process on 2 cores). Each column's
    arithmetic is the same at any thread count, so the result is too.

    Args:
        adjacency: (n x n) sparse CSR ``Wn`` on the compute device.
        seeds: (C,) int64 node of each class.

    Returns:
        F: (n x C) float32 CPU; iterations and converged flags: (C,) per class.
    """
    num_nodes, num_classes = adjacency.shape[0], seeds.shape[0]
    device = adjacency.device
    widest = max(MIN_CG_BLOCK, min(MAX_CG_BLOCK, core_cache_bytes() // (4 * num_nodes)))
    block = math.ceil(num_classes / math.ceil(num_classes / widest))
    scores = torch.empty(num_nodes, num_classes)
    iterations = torch.empty(num_classes, dtype=torch.int64)
    converged = torch.empty(num_classes, dtype=torch.bool)

    def solve(first: int) -> None:
        columns = torch.arange(first, min(first + block, num_classes))
        rhs = torch.zeros(num_nodes, len(columns), device=device)
        rhs[seeds[columns].to(device), torch.arange(len(columns), device=device)] = 1.0
        result = conjugate_gradient(lambda p: torch.addmm(p, adjacency, p, alpha=-alpha), rhs,
                                    max_iter=max_iter, tol=tol)
        scores[:, columns] = result.solution.cpu()
        iterations[columns] = result.iterations
        converged[columns] = result.converged

    firsts = range(0, num_classes, block)
    if device.type != "cpu":
        for first in firsts:
            solve(first)
    else:  # one block per thread, each single-threaded: no thread ever waits for another
        map_single_threaded(solve, firsts)
    return scores, iterations, converged


@functools.cache
def core_cache_bytes() -> int:
    """Bytes of the L2 cache of the first CPU core, from sysfs; ``CORE_CACHE_FALLBACK`` if unreported."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2" and (index / "type").read_text().strip() != "Instruction":
                size = (index / "size").read_text().strip().upper()
                units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
                return int(size.rstrip("KMG")) * units.get(size[-1], 1)
        except (OSError, ValueError):
            break
    return CORE_CACHE_FALLBACK


def _graph_coordinates(features: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """(m x D) features -> (m x d) unit rows whose inner products are those of the nodes.

    With a basis B (D x (r-1)) these are ``x B / ||x B||``; rows whose projected norm is
    at most ``ZERO_NORM_RTOL * ||x||`` become zero. Without a basis: ``x / ||x||``.
    """
    coords = features if basis is None else _product(features, basis)
    norms = torch.linalg.vector_norm(coords, dim=1, keepdim=True)
    input_norms = norms if basis is None else torch.linalg.vector_norm(features, dim=1, keepdim=True)
    keep = norms > ZERO_NORM_RTOL * input_norms
    return torch.where(keep, coords / torch.where(keep, norms, 1.0), 0.0).contiguous()


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in float32, computed in float64: how many threads share the sums (and in which
    order they add) cannot change the rounded result, so the graph is the same at any thread count."""
    b = b.double()
    return torch.cat([(a[rows].double() @ b).float() for rows in _row_chunks(a.shape[0])])


def class_centroids(classes: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(C x D) centroids as :func:`label_propagation` makes them, for given (N,) ``labels`` of the
    (N x D) ``images``, each of the (C x D) ``classes`` nodes counted in its own class."""
    nodes = torch.arange(classes.shape[0], device=labels.device)
    return _centroids(classes, images, torch.cat([nodes, labels]).to(images.device))


def _centroids(classes: torch.Tensor, images: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """(C x D) L2-normalised sums of the unit-norm features of the nodes of each class.

    Args:
        classes: (C x D) unit class embeddings; images: (N x D) image features;
        predictions: (C + N,) predicted class of every node, class nodes first.
    """
    num_classes = classes.shape[0]
    sums = torch.zeros_like(classes).index_add_(0, predictions[:num_classes], classes)
    for rows in _row_chunks(images.shape[0]):
        sums.index_add_(0, predictions[num_classes:][rows], nnf.normalize(images[rows], dim=1))
    empty = torch.bincount(predictions, minlength=num_classes) == 0
    sums[empty] = classes[empty]
    return nnf.normalize(sums, dim=1).cpu()


def _confidence(scores: torch.Tensor) -> torch.Tensor:
    """(N,) ``1 - H(p) / log C`` of each (N x C) score row (see :class:`PropagationResult`)."""
    out = torch.empty(scores.shape[0])
    for rows in _row_chunks(scores.shape[0]):
        mass = scores[rows].clamp(min=0.0)
        total = mass.sum(dim=1, keepdim=True)
        prob = mass / total.clamp(min=torch.finfo(mass.dtype).tiny)
        entropy = -torch.xlogy(prob, prob).sum(dim=1)
        out[rows] = torch.where(total.squeeze(1) > 0, 1.0 - entropy / math.log(scores.shape[1]), 0.0)
    return out.clamp(0.0, 1.0)


def _row_chunks(num_rows: int) -> Iterator[slice]:
    """Slices covering ``range(num_rows)`` in chunks of ``_ROW_CHUNK`` rows."""
    for first in range(0, num_rows, _ROW_CHUNK):
        yield slice(first, min(first + _ROW_CHUNK, num_rows))


def _as_matrix(values: ArrayLike, name: str) -> torch.Tensor:
    """A non-empty, finite 2-D float32 tensor (same device as a tensor input) or ReclipError."""
    tensor = torch.as_tensor(values.detach() if isinstance(values, torch.Tensor) else np.asarray(values))
    if tensor.dim() != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ReclipError(f"{name} must be a non-empty 2-D array (rows x D), got shape {tuple(tensor.shape)}")
    tensor = tensor.to(torch.float32)
    low, high = torch.aminmax(tensor)
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        raise ReclipError(f"{name} contains NaN or inf values; remove or fix those rows first")
    return tensor


def _check_options(*, k: int, alpha: float, max_iter: int, tol: float) -> None:
    """Raise ReclipError for an invalid scalar option of :func:`label_propagation`."""
    if k < 1:
        raise ReclipError(f"k must be at least 1, got {k}")
    if not 0.0 < alpha < 1.0:
        raise ReclipError(f"alpha must be in (0, 1), got {alpha}")
    if max_iter < 1:
        raise ReclipError(f"max_iter must be at least 1, got {max_iter}")
    if not tol >= 0.0:
        raise ReclipError(f"tol must be >= 0, got {tol}")
