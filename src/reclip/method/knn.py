"""k-nearest-neighbour search by inner product, for the label-propagation graph.

Points ``x`` are L2-normalised (n x d float32), so inner products are cosine similarities.
A point is never its own neighbour, also when duplicates of it tie with it.

A :class:`Backend` only proposes each query's top-``width`` candidates. ``"exact"``:
``TorchFlat`` (blocked matmul + top-k, on the GPU for CUDA tensors) or FAISS ``IndexFlatIP``.
``"approx"``: an inverted file of about ``4 sqrt(n)`` lists (FAISS spherical k-means) scanned
by ``TorchIVF`` or by FAISS ``IndexIVFFlat`` on the same lists with the same probes; nprobe is
the smallest whose recall on a seeded calibration sample reaches ``RECALL_TARGET +
CALIBRATION_MARGIN``, the recall is then measured on another sample and nprobe raised
``IVF_STEP_UP``-fold while it falls short (at most ``IVF_ATTEMPTS`` searches); beyond
``IVF_MAX_PROBE_FRACTION`` of the lists, exact search runs instead (with a warning).
``backend=None`` is torch, by rule: no copy of the points, the GPU, and an IVF scan 3-5x faster
than FAISS's on the same lists (benchmarks/README.md).

The neighbours kept never depend on what proposed them (:func:`_settle`): their similarities
are recomputed in float64 and rounded to float32, ranked by (similarity descending, index
ascending), and a query whose last candidate comes within the backends' rounding
(``MARGIN_PER_DIM * d``) of its k-th neighbour is searched again ``WIDEN`` times wider, until
no unseen candidate can enter (all tied duplicates are then seen).
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import faiss
from faiss.contrib.ivf_tools import add_preassigned, search_preassigned
import numpy as np
import torch

from reclip.errors import ReclipError
from reclip.runtime import map_single_threaded

logger = logging.getLogger(__name__)

KNN_METHODS = ("exact", "approx")
KNN_BACKENDS = ("torch", "faiss")
#: IVF lists per sqrt(n), k-means training points per list and iterations; most lists probed.
IVF_LISTS_PER_SQRT_N, IVF_TRAIN_POINTS_PER_LIST, KMEANS_ITERATIONS = 4, 32, 10
IVF_MAX_PROBE_FRACTION = 0.25
#: Recall aimed at, margin added on the calibration sample, searches and nprobe step after a shortfall.
RECALL_TARGET, CALIBRATION_MARGIN, IVF_ATTEMPTS, IVF_STEP_UP = 0.95, 0.015, 3, 1.5
#: Queries of the recall and calibration samples and the seeds (the recall sample of attempt a
#: is drawn with RECALL_SEED + STEP_UP_SEED_STRIDE * a).
RECALL_SAMPLE, CALIBRATION_SAMPLE = 1000, 2000
RECALL_SEED, CALIBRATION_SEED, KMEANS_SEED, STEP_UP_SEED_STRIDE = 0, 1, 3, 10
#: Candidates proposed beyond k + 1, and the width factor of a repeated search.
SLACK, WIDEN = 8, 4
#: Bound on |backend similarity - exact similarity| per dimension (float32 sums of d products <= 1).
MARGIN_PER_DIM = 2.0**-23
#: Elements of a similarity block (CPU: 64M, CUDA: 256M) and of a settling chunk.
_CPU_BLOCK, _CUDA_BLOCK, _SETTLE_CHUNK = 1 << 26, 1 << 28, 1 << 22
#: Torch IVF: bytes of a chunk's first-pass buffer; points per width in the first pass
#: (measured at 200k: 220 points 4.7 s, 450 4.1 s, 1,800 4.9 s); slack below the bound.
_IVF_BUFFER_BYTES, IVF_BOUND_POINTS_PER_WIDTH, _BOUND_SLACK = 1 << 30, 16, 1e-4

Result = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Neighbours:
    """The k nearest neighbours of every point, self excluded, ties by smaller index.

    indices: (n x k) int64 CPU (-1 where approximate search found fewer than k);
    similarities: (n x k) float32 CPU, 0 where indices is -1; recall: measured recall of
    approximate search (None for exact); backend: what searched (``"torch"``,
    ``"faiss-flat"``, ``"torch-ivf nprobe=P/L"``, ``"faiss-ivf nprobe=P/L"``, or with
    `` (ivf fallback)`` when IVF gave way to exact search).
    """

    indices: torch.Tensor
    similarities: torch.Tensor
    recall: float | None
    backend: str


class Backend:
    """Proposes candidates: ``search(ids, width)`` -> (q x width) indices (-1 for none) and
    similarities of the rows ``x[ids]`` to their best candidates (themselves included), best first."""

    name: str

    def search(self, ids: torch.Tensor, width: int) -> Result:
        raise NotImplementedError


class TorchFlat(Backend):
    name = "torch"

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def search(self, ids: torch.Tensor, width: int) -> Result:
        rows = max(1, (_CUDA_BLOCK if self.x.is_cuda else _CPU_BLOCK) // self.x.shape[0])
        tops = [torch.topk(self.x[part] @ self.x.T, width, dim=1) for part in ids.to(self.x.device).split(rows)]
        return torch.cat([t.indices for t in tops]).cpu(), torch.cat([t.values for t in tops]).cpu()


class FaissFlat(Backend):
    name = "faiss-flat"

    def __init__(self, x: torch.Tensor) -> None:
        self.data = _numpy(x)
        self.index = faiss.IndexFlatIP(x.shape[1])
        self.index.add(self.data)

    def search(self, ids: torch.Tensor, width: int) -> Result:
        sims, idx = self.index.search(self.data[ids.numpy()], width)
        return torch.from_numpy(idx), torch.from_numpy(sims)


class TorchIVF(Backend):
    """Point i in list ``lists[i]``; query i scans the lists ``probes[i]`` (n x nprobe) by one
    matmul per list (of the queries probing it), one list per CPU thread, in two passes: each
    query's first lists (about ``IVF_BOUND_POINTS_PER_WIDTH * width`` points) bound its
    width-th similarity from below, then every probed list keeps what reaches the bound (a
    compare instead of a top-k per (query, list), which cost 3x the matmul)."""

    name = "torch-ivf"

    def __init__(self, x: torch.Tensor, lists: torch.Tensor, probes: torch.Tensor, num_lists: int) -> None:
        self.x, self.probes = x, probes.to(x.device)
        self.order = torch.argsort(lists.to(x.device), stable=True)
        self.offsets = [0, *torch.bincount(lists, minlength=num_lists).cumsum(0).tolist()]
        self.points = x[self.order]

    def search(self, ids: torch.Tensor, width: int) -> Result:
        nprobe = self.probes.shape[1]
        first = min(nprobe, math.ceil(IVF_BOUND_POINTS_PER_WIDTH * width * (len(self.offsets) - 1) / len(self.x)))
        parts = []
        for part in ids.to(self.x.device).split(max(1, _IVF_BUFFER_BYTES // (nprobe * width * 12))):
            idx, sims = self._scan(part, self.probes[part, :first], width, None)
            if first < nprobe:
                idx, sims = self._scan(part, self.probes[part], width, sims[:, -1] - _BOUND_SLACK)
            parts.append((idx.cpu(), sims.cpu()))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _scan(self, ids: torch.Tensor, probes: torch.Tensor, width: int, bound: torch.Tensor | None) -> Result:
        """Top-``width`` of each query ``x[ids]`` among the points of its (q x p) ``probes``
        lists: of each list's top-``width`` (``bound`` None), or of the points at or above
        its ``bound`` (q,)."""
        queries, slots = self.x[ids], torch.argsort(probes.flatten(), stable=True)  # slots by list
        counts = torch.bincount(probes.flatten(), minlength=len(self.offsets) - 1).tolist()
        firsts = [0, *itertools.accumulate(counts)]

        def scan(lst: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            begin, end = self.offsets[lst], self.offsets[lst + 1]
            rows = slots[firsts[lst]: firsts[lst + 1]] // probes.shape[1]
            sims = queries[rows] @ self.points[begin:end].T
            if bound is None:
                top = torch.topk(sims, min(width, end - begin), dim=1).indices
                hit_row = torch.arange(len(rows), device=sims.device).repeat_interleave(top.shape[1])
                hit_col = top.flatten()
            else:
                hit_row, hit_col = (sims >= bound[rows, None]).nonzero(as_tuple=True)
            return rows[hit_row], self.order[begin + hit_col], sims[hit_row, hit_col]

        busy = [lst for lst, count in enumerate(counts) if count and self.offsets[lst + 1] > self.offsets[lst]]
        found = [scan(lst) for lst in busy] if self.x.is_cuda else map_single_threaded(scan, busy)
        query, point, sim = (torch.cat(column) for column in zip(*found)) if found else (ids[:0],) * 3
        return _best_per_query(query, point, sim, len(ids), width)


class FaissIVF(Backend):
    """FAISS ``IndexIVFFlat`` holding the same lists as :class:`TorchIVF`, searched with the same probes."""

    name = "faiss-ivf"

    def __init__(self, x: torch.Tensor, lists: torch.Tensor, probes: torch.Tensor, centroids: np.ndarray) -> None:
        self.data, self.probes = _numpy(x), probes.cpu().numpy()
        self.quantizer = faiss.IndexFlatIP(x.shape[1])
        self.quantizer.add(centroids)
        self.index = faiss.IndexIVFFlat(self.quantizer, x.shape[1], len(centroids), faiss.METRIC_INNER_PRODUCT)
        add_preassigned(self.index, self.data, lists.cpu().numpy())
        self.index.nprobe = probes.shape[1]

    def search(self, ids: torch.Tensor, width: int) -> Result:
        sims, idx = search_preassigned(self.index, self.data[ids.numpy()], width, self.probes[ids.numpy()])
        return torch.from_numpy(idx), torch.from_numpy(sims)


def knn_search(x: torch.Tensor, k: int, method: str = "exact", backend: str | None = None) -> Neighbours:
    """The k nearest neighbours (largest inner product) of every row of the (n x d) ``x``,
    L2-normalised rows (zero rows allowed), CPU or CUDA; 1 <= k <= n - 1. ``backend``:
    ``"torch"``, ``"faiss"`` or None (torch). Same result from every backend."""
    check_knn_options(method, backend)
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, n - 1] = [1, {n - 1}], got {k}")
    faiss.omp_set_num_threads(torch.get_num_threads())  # within reclip.runtime's budget
    if method == "exact":
        found = FaissFlat(x) if backend == "faiss" else TorchFlat(x)
        return Neighbours(*_settle(x, torch.arange(n), k, found), None, found.name)
    return _ivf_search(x, k, backend)


def check_knn_options(method: str, backend: str | None) -> None:
    """Raise ReclipError for an unknown ``knn`` method or ``knn_backend``."""
    if method not in KNN_METHODS:
        raise ReclipError(f"knn must be one of {KNN_METHODS}, got {method!r}")
    if backend is not None and backend not in KNN_BACKENDS:
        raise ReclipError(f"knn_backend must be one of {KNN_BACKENDS} or None (torch), got {backend!r}")


def _settle(x: torch.Tensor, ids: torch.Tensor, k: int, backend: Backend) -> Result:
    """(q x k) neighbours of the rows ``x[ids]`` among the backend's candidates, self excluded:
    exact similarities, ties by smaller index, the same whatever proposed them (module docstring)."""
    n = x.shape[0]
    out_idx = torch.full((len(ids), k), -1, dtype=torch.int64)
    out_sims = torch.zeros(len(ids), k)
    margin = MARGIN_PER_DIM * x.shape[1]
    todo, width = torch.arange(len(ids)), min(n, k + 1 + SLACK)
    while len(todo):
        unsettled = []
        for part in todo.split(max(1, _CPU_BLOCK // width)):
            proposed, proposed_sims = backend.search(ids[part], width)
            idx, sims = _ranked(x, ids[part], proposed, k)
            # every candidate seen, or an unseen one has at most the last proposed similarity
            done = (proposed[:, -1] < 0) | (width >= n) | (proposed_sims[:, -1] + margin < sims[:, -1])
            out_idx[part[done]], out_sims[part[done]] = idx[done], sims[done]
            unsettled.append(part[~done])
        todo, width = torch.cat(unsettled), min(n, width * WIDEN)
    return out_idx, out_sims.masked_fill(out_idx < 0, 0.0)


def _ranked(x: torch.Tensor, ids: torch.Tensor, idx: torch.Tensor, k: int) -> Result:
    """Best k of each row's candidates (q x w indices, w > k, -1 for none), self dropped, by
    exact similarity (:func:`best_first`); -1 and -inf where fewer than k."""
    sims = _exact_similarities(x, ids, idx).masked_fill((idx == ids[:, None]) | (idx < 0), -torch.inf)
    idx, sims = best_first(idx, sims, k)
    return idx.masked_fill(sims == -torch.inf, -1), sims


def best_first(idx: torch.Tensor, sims: torch.Tensor, k: int) -> Result:
    """The best min(k, w) of each row's (q x w) candidates ``idx`` (distinct, >= 0 where
    ``sims`` is finite), by similarity descending, then index ascending."""
    by_index = idx.masked_fill(sims == -torch.inf, torch.iinfo(torch.int64).max).argsort(dim=1)
    idx, sims = idx.gather(1, by_index), sims.gather(1, by_index)
    best = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]
    return idx.gather(1, best), sims.gather(1, best)


def _best_per_query(query: torch.Tensor, point: torch.Tensor, sim: torch.Tensor, num_queries: int,
                    width: int) -> Result:
    """(num_queries x width) best ``point``s of each query by ``sim`` descending, from the (m,)
    triples (query, point, sim); -1 and -inf where a query has fewer than ``width``."""
    counts = torch.bincount(query, minlength=num_queries)
    rank = torch.arange(width, device=query.device)
    present = rank < counts[:, None]
    if not len(query):
        return torch.where(present, 0, -1), torch.where(present, 0.0, -torch.inf)
    order = torch.argsort(sim, descending=True, stable=True)
    order = order[torch.argsort(query[order], stable=True)]  # by query, best first within each
    picked = order[((counts.cumsum(0) - counts)[:, None] + rank).clamp(max=len(order) - 1)]
    return torch.where(present, point[picked], -1), torch.where(present, sim[picked], -torch.inf)


def _exact_similarities(x: torch.Tensor, ids: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(q x w) float32 inner products of ``x[ids]`` with ``x[idx]``, from float64 products and
    sums (so no summation order or thread count changes the rounded value)."""
    out = torch.empty(idx.shape)
    rows = max(1, _SETTLE_CHUNK // max(1, idx.shape[1] * x.shape[1]))
    for part in range(0, len(ids), rows):
        q = x[ids[part: part + rows].to(x.device)].double()
        p = x[idx[part: part + rows].clamp(min=0).to(x.device)].double()
        out[part: part + rows] = torch.bmm(p, q[:, :, None])[:, :, 0].float().cpu()
    return out


def neighbour_recall(x: torch.Tensor, indices: torch.Tensor, seed: int = RECALL_SEED) -> float:
    """Tie-aware recall of the (n x k) approximate ``indices`` on ``RECALL_SAMPLE`` queries
    drawn with ``seed``: a neighbour counts when its similarity is at least the query's k-th
    exact one minus 1e-6; -1 counts as wrong. Without ties, |approx ∩ exact| / k."""
    sample = _sample(x.shape[0], RECALL_SAMPLE, seed)
    _, exact = _settle(x, sample, indices.shape[1], TorchFlat(x))
    found = indices[sample]
    found_sims = _exact_similarities(x, sample, found)
    recall = float(((found >= 0) & (found_sims >= exact[:, -1:] - 1e-6)).float().mean())
    logger.info("approximate k-NN recall@%d on %d sampled queries: %.4f", indices.shape[1], len(sample), recall)
    return recall


def _ivf_search(x: torch.Tensor, k: int, backend: str | None) -> Neighbours:
    """Approximate search (module docstring): calibrated nprobe, measured recall, step-ups, fallback."""
    n = x.shape[0]
    num_lists = max(1, min(round(IVF_LISTS_PER_SQRT_N * n**0.5), n // 39))
    centroids = _kmeans(x, num_lists)
    curve = _calibration_curve(x, centroids, k)
    nprobe, lists = int(torch.searchsorted(curve, RECALL_TARGET + CALIBRATION_MARGIN)), None
    for attempt in range(IVF_ATTEMPTS):
        if nprobe > max(1, int(IVF_MAX_PROBE_FRACTION * num_lists)):
            logger.warning("IVF cannot reach recall %.2f probing <= %.0f%% of its lists; using exact search",
                           RECALL_TARGET, 100 * IVF_MAX_PROBE_FRACTION)
            found = FaissFlat(x) if backend == "faiss" else TorchFlat(x)
            idx, sims = _settle(x, torch.arange(n), k, found)
            return Neighbours(idx, sims, neighbour_recall(x, idx), f"{found.name} (ivf fallback)")
        logger.info("IVF nprobe=%d/%d: calibration recall %.4f", nprobe, num_lists, float(curve[nprobe]))
        probes = _nearest_lists(x, centroids, nprobe)
        lists = probes[:, 0].contiguous() if lists is None else lists
        ivf = FaissIVF(x, lists, probes, centroids) if backend == "faiss" else TorchIVF(x, lists, probes, num_lists)
        idx, sims = _settle(x, torch.arange(n), k, ivf)
        recall = neighbour_recall(x, idx, RECALL_SEED + STEP_UP_SEED_STRIDE * attempt)
        if recall >= RECALL_TARGET or attempt + 1 == IVF_ATTEMPTS:
            return Neighbours(idx, sims, recall, f"{ivf.name} nprobe={nprobe}/{num_lists}")
        logger.warning("IVF recall %.4f < %.2f at nprobe=%d; raising nprobe", recall, RECALL_TARGET, nprobe)
        nprobe = math.ceil(IVF_STEP_UP * nprobe)
    raise AssertionError("unreachable")


def _kmeans(x: torch.Tensor, num_lists: int) -> np.ndarray:
    """(L x d) float32 unit centroids: FAISS spherical k-means on a seeded sample of ``x``."""
    train = _numpy(x[_sample(x.shape[0], num_lists * IVF_TRAIN_POINTS_PER_LIST, KMEANS_SEED).to(x.device)])
    kmeans = faiss.Kmeans(x.shape[1], num_lists, niter=KMEANS_ITERATIONS, spherical=True, seed=KMEANS_SEED,
                          min_points_per_centroid=1, max_points_per_centroid=IVF_TRAIN_POINTS_PER_LIST)
    kmeans.train(train)
    return kmeans.centroids


def _nearest_lists(points: torch.Tensor, centroids: np.ndarray, count: int) -> torch.Tensor:
    """(m x count) int64 CPU ids of the centroids with the largest inner product to each point, best first."""
    return torch.from_numpy(faiss.knn(_numpy(points), centroids, count, metric=faiss.METRIC_INNER_PRODUCT)[1])


def _calibration_curve(x: torch.Tensor, centroids: np.ndarray, k: int) -> torch.Tensor:
    """(L + 1,) recall@k of IVF search at every nprobe 0..L on the calibration sample: an
    exact neighbour is found at nprobe p when its list is among the query's p nearest."""
    num_lists = len(centroids)
    sample = _sample(x.shape[0], CALIBRATION_SAMPLE, CALIBRATION_SEED)
    true, _ = _settle(x, sample, k, TorchFlat(x))
    ranking = _nearest_lists(x[sample.to(x.device)], centroids, num_lists)
    rank_of_list = torch.empty_like(ranking).scatter_(1, ranking, torch.arange(num_lists).expand_as(ranking))
    lists = _nearest_lists(x[true.flatten().to(x.device)], centroids, 1).view_as(true)
    needed = rank_of_list.gather(1, lists) + 1
    return torch.bincount(needed.flatten(), minlength=num_lists + 1).cumsum(0) / needed.numel()


def _numpy(x: torch.Tensor) -> np.ndarray:
    """``x`` as a C-contiguous float32 CPU array (no copy when it already is one)."""
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)


def _sample(n: int, size: int, seed: int) -> torch.Tensor:
    """(s,) int64: min(size, n) distinct ids drawn with ``seed``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(size, n)]
