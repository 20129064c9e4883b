"""k-nearest-neighbour search by inner product, for the label-propagation graph.

Points ``x`` are L2-normalised (n x d float32), so inner products are cosine similarities.
A search excludes each point itself, also when duplicates of it tie with it.

A :class:`Backend` proposes each query's top-``width`` candidates:

- ``"exact"``: ``torch`` (blocked matmul + top-k; on the GPU for CUDA tensors) or
  FAISS ``IndexFlatIP`` (``faiss``);
- ``"approx"``: an inverted file (IVF) of about ``4 sqrt(n)`` lists from spherical k-means,
  scanned on the same lists by ``torch`` (the queries probing a list are searched together
  by one matmul per list, see :func:`_ivf_torch_search`) or by FAISS ``IndexIVFFlat``.
  nprobe is the smallest whose recall on a seeded calibration sample reaches
  ``RECALL_TARGET + CALIBRATION_MARGIN``; the recall is then measured on an independent
  sample and nprobe raised ``IVF_STEP_UP``-fold while it falls short (at most
  ``IVF_ATTEMPTS`` searches). If nprobe would exceed ``IVF_MAX_PROBE_FRACTION`` of the
  lists, exact search runs instead (logged as a warning).

The result depends on the points, k and the method only, never on the backend, the thread
count or the machine's load (:func:`_settle`): the similarities kept are recomputed in one
fixed way (float64 products and sums, rounded to float32), neighbours are ranked by
(similarity descending, index ascending), and a query whose last candidate comes within
the backends' rounding (``MARGIN_PER_DIM * d``) of its k-th neighbour is searched again
with ``WIDEN`` times the width until no unseen candidate can enter (all tied duplicates
are then seen). ``backend=None`` is torch, by rule: it needs no copy of the points and runs
on the GPU, and its IVF scan took 354 s at 1M x 100 where FAISS's took over 600 s
(benchmarks/README.md); FAISS runs when forced.
"""
from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from reclip.errors import ReclipError

try:  # faiss is a declared dependency; torch does everything without it
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned, search_preassigned
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    faiss = None

logger = logging.getLogger(__name__)

KNN_METHODS = ("exact", "approx")
KNN_BACKENDS = ("torch", "faiss")
#: IVF lists per sqrt(n), k-means training points per list and iterations; most lists probed.
IVF_LISTS_PER_SQRT_N = 4
IVF_TRAIN_POINTS_PER_LIST = 32
KMEANS_ITERATIONS = 10
IVF_MAX_PROBE_FRACTION = 0.25
#: Recall aimed at, margin added on the calibration sample, searches and nprobe step after a shortfall.
RECALL_TARGET = 0.95
CALIBRATION_MARGIN = 0.015
IVF_ATTEMPTS = 3
IVF_STEP_UP = 1.5
#: Queries of the recall and calibration samples and their seeds (the recall sample of
#: attempt a is drawn with RECALL_SEED + STEP_UP_SEED_STRIDE * a).
RECALL_SAMPLE = 1000
CALIBRATION_SAMPLE = 2000
RECALL_SEED, CALIBRATION_SEED, KMEANS_SEED = 0, 1, 3
STEP_UP_SEED_STRIDE = 10
#: Candidates proposed beyond k + 1, and the width factor of a repeated search.
SLACK = 8
WIDEN = 4
#: Bound on |backend similarity - exact similarity| per dimension (float32 sums of d products <= 1).
MARGIN_PER_DIM = 2.0**-23
#: Elements of a similarity block (CPU: 64M, CUDA: 256M) and of a settling chunk.
_CPU_BLOCK, _CUDA_BLOCK, _SETTLE_CHUNK = 1 << 26, 1 << 28, 1 << 22
#: Torch IVF: bytes of a chunk's first-pass buffer; points per width in the first pass
#: (measured at 200k: 220 points 4.7 s, 450 4.1 s, 1,800 4.9 s); slack below the bound.
_IVF_BUFFER_BYTES = 1 << 30
IVF_BOUND_POINTS_PER_WIDTH = 16
_BOUND_SLACK = 1e-4

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


class FaissFlat(TorchFlat):
    name = "faiss-flat"

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__(x)
        faiss.omp_set_num_threads(torch.get_num_threads())  # within reclip.runtime's budget
        self.data = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        self.index = faiss.IndexFlatIP(self.data.shape[1])
        self.index.add(self.data)

    def search(self, ids: torch.Tensor, width: int) -> Result:
        sims, idx = self.index.search(self.data[ids.numpy()], width)
        return torch.from_numpy(idx), torch.from_numpy(sims)


def knn_search(x: torch.Tensor, k: int, method: str = "exact", backend: str | None = None) -> Neighbours:
    """The k nearest neighbours (largest inner product) of every row of the (n x d) ``x``,
    L2-normalised rows (zero rows allowed), CPU or CUDA; 1 <= k <= n - 1. ``backend``:
    ``"torch"``, ``"faiss"`` or None (torch). Same result from every backend."""
    check_knn_options(method, backend)
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, n - 1] = [1, {n - 1}], got {k}")
    if method == "exact":
        found = _exact_backend(x, backend)
        return Neighbours(*_settle(x, torch.arange(n), k, found), None, found.name)
    return _ivf_search(x, k, backend)


def check_knn_options(method: str, backend: str | None) -> None:
    """Raise ReclipError for an unknown ``knn`` method or ``knn_backend``, or FAISS forced but missing."""
    if method not in KNN_METHODS:
        raise ReclipError(f"knn must be one of {KNN_METHODS}, got {method!r}")
    if backend is not None and backend not in KNN_BACKENDS:
        raise ReclipError(f"knn_backend must be one of {KNN_BACKENDS} or None (torch), got {backend!r}")
    if backend == "faiss" and faiss is None:
        raise ReclipError("knn_backend='faiss' needs FAISS: pip install faiss-cpu (or use knn_backend='torch')")


def _exact_backend(x: torch.Tensor, backend: str | None) -> Backend:
    return FaissFlat(x) if backend == "faiss" else TorchFlat(x)


def _settle(x: torch.Tensor, ids: torch.Tensor, k: int, backend: Backend) -> Result:
    """(q x k) neighbours of the rows ``x[ids]`` among the backend's candidates, self excluded:
    exact similarities, ties by smaller index, the same whatever proposed them (module docstring)."""
    n = x.shape[0]
    out_idx = torch.full((len(ids), k), -1, dtype=torch.int64)
    out_sims = torch.zeros(len(ids), k)
    margin = MARGIN_PER_DIM * x.shape[1]
    todo, width = torch.arange(len(ids)), min(n, k + 1 + SLACK)
    while len(todo):
        rows_per_search = max(1, _CPU_BLOCK // width)
        unsettled = []
        for part in todo.split(rows_per_search):
            proposed, proposed_sims = backend.search(ids[part], width)
            idx, sims = _ranked(x, ids[part], proposed, k)
            # every candidate seen, or an unseen one has at most the last proposed similarity
            done = (proposed[:, -1] < 0) | (width >= n)
            done |= proposed_sims[:, -1] + margin < sims[:, -1]
            out_idx[part[done]], out_sims[part[done]] = idx[done], sims[done]
            unsettled.append(part[~done])
        todo, width = torch.cat(unsettled), min(n, width * WIDEN)
    return out_idx, out_sims.masked_fill(out_idx < 0, 0.0)


def _ranked(x: torch.Tensor, ids: torch.Tensor, idx: torch.Tensor, k: int) -> Result:
    """Best k of each row's candidates (q x w indices, -1 for none), self dropped, by exact
    similarity (:func:`best_first`); -1 and -inf where fewer than k."""
    sims = _exact_similarities(x, ids, idx).masked_fill((idx == ids[:, None]) | (idx < 0), -torch.inf)
    idx, sims = best_first(idx, sims, k)
    if idx.shape[1] < k:
        idx = torch.cat([idx, idx.new_full((len(idx), k - idx.shape[1]), -1)], dim=1)
        sims = torch.cat([sims, sims.new_full((len(sims), k - sims.shape[1]), -torch.inf)], dim=1)
    return idx.masked_fill(sims == -torch.inf, -1), sims


def best_first(idx: torch.Tensor, sims: torch.Tensor, k: int) -> Result:
    """The best min(k, w) of each row's (q x w) candidates ``idx`` (distinct, >= 0 where
    ``sims`` is finite), by similarity descending, then index ascending."""
    by_index = idx.masked_fill(sims == -torch.inf, torch.iinfo(torch.int64).max).argsort(dim=1)
    idx, sims = idx.gather(1, by_index), sims.gather(1, by_index)
    best = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]
    return idx.gather(1, best), sims.gather(1, best)


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
    return float(((found >= 0) & (found_sims >= exact[:, -1:] - 1e-6)).float().mean())


def _ivf_search(x: torch.Tensor, k: int, backend: str | None) -> Neighbours:
    """Approximate search (module docstring): calibrated nprobe, measured recall, step-ups, fallback."""
    n = x.shape[0]
    num_lists = max(1, min(round(IVF_LISTS_PER_SQRT_N * n**0.5), n // 39))
    centroids = _kmeans(x, num_lists)
    curve = _calibration_curve(x, centroids, k)
    nprobe = int(torch.searchsorted(curve, RECALL_TARGET + CALIBRATION_MARGIN))
    lists = None
    for attempt in range(IVF_ATTEMPTS):
        if nprobe > max(1, int(IVF_MAX_PROBE_FRACTION * num_lists)):
            logger.warning("IVF cannot reach recall %.2f probing <= %.0f%% of its lists; using exact search",
                           RECALL_TARGET, 100 * IVF_MAX_PROBE_FRACTION)
            found = _exact_backend(x, backend)
            idx, sims = _settle(x, torch.arange(n), k, found)
            return Neighbours(idx, sims, _logged_recall(x, idx, RECALL_SEED), f"{found.name} (ivf fallback)")
        logger.info("IVF nprobe=%d/%d: calibration recall %.4f", nprobe, num_lists, float(curve[min(nprobe, num_lists)]))
        probes = _nearest_lists(x, centroids, nprobe)
        lists = probes[:, 0].contiguous() if lists is None else lists
        ivf = (FaissIVF if backend == "faiss" else TorchIVF)(x, centroids, lists, probes)
        idx, sims = _settle(x, torch.arange(n), k, ivf)
        recall = _logged_recall(x, idx, RECALL_SEED + STEP_UP_SEED_STRIDE * attempt)
        if recall >= RECALL_TARGET or attempt + 1 == IVF_ATTEMPTS:
            return Neighbours(idx, sims, recall, f"{ivf.name} nprobe={nprobe}/{num_lists}")
        logger.warning("IVF recall %.4f < %.2f at nprobe=%d; raising nprobe", recall, RECALL_TARGET, nprobe)
        nprobe = math.ceil(IVF_STEP_UP * nprobe)
    raise AssertionError("unreachable")


def _logged_recall(x: torch.Tensor, indices: torch.Tensor, seed: int) -> float:
    recall = neighbour_recall(x, indices, seed)
    logger.info("approximate k-NN recall@%d on %d sampled queries: %.4f", indices.shape[1],
                min(RECALL_SAMPLE, x.shape[0]), recall)
    return recall


def _kmeans(x: torch.Tensor, num_lists: int) -> torch.Tensor:
    """(L x d) unit centroids: spherical k-means, ``KMEANS_ITERATIONS`` on a seeded sample of ``x``."""
    train = x[_sample(x.shape[0], num_lists * IVF_TRAIN_POINTS_PER_LIST, KMEANS_SEED).to(x.device)]
    centroids = train[:num_lists].clone()
    for _ in range(KMEANS_ITERATIONS):
        assignment = _nearest_lists(train, centroids, 1).squeeze(1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, train)
        filled = torch.bincount(assignment, minlength=num_lists) > 0
        centroids = torch.where(filled[:, None], torch.nn.functional.normalize(sums, dim=1), centroids)
    return centroids


def _nearest_lists(points: torch.Tensor, centroids: torch.Tensor, count: int) -> torch.Tensor:
    """(m x count) int64 ids of the centroids with the largest inner product to each point, best first."""
    rows = max(1, _CPU_BLOCK // centroids.shape[0])
    return torch.cat([torch.topk(block @ centroids.T, count, dim=1).indices for block in points.split(rows)])


def _calibration_curve(x: torch.Tensor, centroids: torch.Tensor, k: int) -> torch.Tensor:
    """(L + 1,) recall@k of IVF search at every nprobe 0..L on the calibration sample: an
    exact neighbour is found at nprobe p when its list is among the query's p nearest."""
    num_lists = centroids.shape[0]
    sample = _sample(x.shape[0], CALIBRATION_SAMPLE, CALIBRATION_SEED)
    true, _ = _settle(x, sample, k, TorchFlat(x))
    ranking = _nearest_lists(x[sample.to(x.device)], centroids, num_lists).cpu()
    rank_of_list = torch.empty_like(ranking).scatter_(1, ranking, torch.arange(num_lists).expand_as(ranking))
    lists = _nearest_lists(x[true.flatten().to(x.device)], centroids, 1).cpu().view_as(true)
    needed = rank_of_list.gather(1, lists) + 1
    return torch.bincount(needed.flatten(), minlength=num_lists + 1).cumsum(0) / needed.numel()


class TorchIVF(Backend):
    """Every point in the list of its nearest centroid; a query scans its ``probes`` lists."""

    def __init__(self, x: torch.Tensor, centroids: torch.Tensor, lists: torch.Tensor, probes: torch.Tensor) -> None:
        self.x, self.centroids, self.lists, self.probes = x, centroids, lists, probes
        self.order = torch.argsort(lists, stable=True)
        self.offsets = [0, *torch.cumsum(torch.bincount(lists, minlength=len(centroids)), 0).tolist()]
        self.points = x[self.order]
        self.name = "torch-ivf"

    def search(self, ids: torch.Tensor, width: int) -> Result:
        return _ivf_torch_search(self, ids, width)


class FaissIVF(TorchIVF):
    """FAISS ``IndexIVFFlat`` on the same lists, searched with the same probes."""

    def __init__(self, x: torch.Tensor, centroids: torch.Tensor, lists: torch.Tensor, probes: torch.Tensor) -> None:
        super().__init__(x, centroids, lists, probes)
        faiss.omp_set_num_threads(torch.get_num_threads())
        self.data = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        quantizer = faiss.IndexFlatIP(x.shape[1])
        quantizer.add(np.ascontiguousarray(centroids.cpu().numpy(), dtype=np.float32))
        self.index = faiss.IndexIVFFlat(quantizer, x.shape[1], len(centroids), faiss.METRIC_INNER_PRODUCT)
        add_preassigned(self.index, self.data, lists.cpu().numpy())
        self.index.nprobe = probes.shape[1]
        self.quantizer, self.name = quantizer, "faiss-ivf"

    def search(self, ids: torch.Tensor, width: int) -> Result:
        sims, idx = search_preassigned(self.index, self.data[ids.numpy()], width, self.probes[ids].cpu().numpy())
        return torch.from_numpy(idx), torch.from_numpy(sims)


def _ivf_torch_search(ivf: TorchIVF, ids: torch.Tensor, width: int) -> Result:
    """Top-``width`` of the queries ``x[ids]`` among the points of their probed lists, in chunks
    whose first pass fits ``_IVF_BUFFER_BYTES``, in two passes of one matmul per list (of the
    chunk's queries probing it against its points): each query's first lists (about
    ``IVF_BOUND_POINTS_PER_WIDTH * width`` points) give its top-``width`` there, whose last
    similarity bounds its final width-th from below; then all probed lists are scanned keeping
    what reaches the bound (less ``_BOUND_SLACK``): a compare instead of a top-k per (query,
    list), which cost 3x the matmul on the CPU."""
    x, nprobe = ivf.x, ivf.probes.shape[1]
    first = min(nprobe, math.ceil(IVF_BOUND_POINTS_PER_WIDTH * width * (len(ivf.offsets) - 1) / x.shape[0]))
    parts = []
    for part in ids.split(max(1, _IVF_BUFFER_BYTES // (nprobe * width * 12))):
        lists = ivf.probes[part.to(ivf.probes.device)]
        idx, sims = _ivf_scan(ivf, lists[:, :first].contiguous(), part, width, None)
        if first < nprobe:
            idx, sims = _ivf_scan(ivf, lists, part, width, sims[:, -1] - _BOUND_SLACK)
        parts.append((idx.cpu(), sims.cpu()))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _ivf_scan(ivf: TorchIVF, probes: torch.Tensor, ids: torch.Tensor, width: int, bound: torch.Tensor | None) -> Result:
    """Top-``width`` of each query ``x[ids]`` among the points of its (q x p) ``probes`` lists:
    of each list's top-``width`` (``bound`` None) or of the points at or above its ``bound``
    (q,). -1 and -inf where a query has fewer candidates."""
    num_queries, nprobe = probes.shape
    device = ivf.x.device
    queries = ivf.x[ids.to(device)]
    flat = probes.flatten()
    slots = torch.argsort(flat, stable=True)  # (query, probe) slots by list
    counts = torch.bincount(flat, minlength=len(ivf.offsets) - 1).tolist()
    firsts = [0, *itertools.accumulate(counts)]
    busy = [lst for lst, count in enumerate(counts) if count and ivf.offsets[lst + 1] > ivf.offsets[lst]]
    found: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def scan(lst: int) -> None:
        begin, end = ivf.offsets[lst], ivf.offsets[lst + 1]
        rows = slots[firsts[lst]: firsts[lst + 1]] // nprobe
        sims = queries[rows] @ ivf.points[begin:end].T
        if bound is None:
            top = torch.topk(sims, min(width, end - begin), dim=1)
            found[lst] = (rows[:, None].expand_as(top.indices).flatten(), ivf.order[begin + top.indices].flatten(),
                          top.values.flatten())
        else:
            hit_row, hit_col = (sims >= bound[rows, None]).nonzero(as_tuple=True)
            found[lst] = (rows[hit_row], ivf.order[begin + hit_col], sims[hit_row, hit_col])

    _for_each_list(ivf.x, scan, busy)
    query, point, sim = (torch.cat(column) for column in zip(*(found[lst] for lst in busy))) if busy else (
        torch.empty(0, dtype=torch.int64, device=device),) * 3
    if not len(query):
        return (torch.full((num_queries, width), -1, device=device),
                torch.full((num_queries, width), -torch.inf, device=device))
    order = torch.argsort(sim, descending=True, stable=True)
    order = order[torch.argsort(query[order], stable=True)]  # by query, best first within each
    counts_per_query = torch.bincount(query, minlength=num_queries)
    rank = torch.arange(width, device=device)
    picked = order[((torch.cumsum(counts_per_query, 0) - counts_per_query)[:, None] + rank).clamp(max=len(order) - 1)]
    present = rank < counts_per_query[:, None]
    return torch.where(present, point[picked], -1), torch.where(present, sim[picked], -torch.inf)


def _for_each_list(x: torch.Tensor, function: Callable[[int], None], lists: list[int]) -> None:
    """Call ``function`` on every list: in order on CUDA, else one list per CPU thread with
    torch single-threaded (thousands of small multi-threaded products each wait for a
    descheduled thread on a busy machine: 15x slower on 2 shared cores at load 6)."""
    if x.is_cuda:
        for lst in lists:
            function(lst)
        return
    with ThreadPoolExecutor(torch.get_num_threads()) as pool, torch_threads(1):
        list(pool.map(function, lists))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the body with ``count`` torch CPU threads, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _sample(n: int, size: int, seed: int) -> torch.Tensor:
    """(s,) int64: min(size, n) distinct ids drawn with ``seed``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(size, n)]
