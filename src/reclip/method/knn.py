"""k-nearest-neighbour search by inner product, for the label-propagation graph.

All functions take L2-normalised points ``x`` (n x d float32), so inner products are
cosine similarities. Every search excludes the query itself, also when duplicates of
the query tie with it (the query's own index is removed explicitly, not assumed to
come first).

Methods:

- ``"exact"``: blocked ``torch`` matmul + top-k (block size from free memory; on the
  GPU for CUDA tensors) or FAISS ``IndexFlatIP``. Searching all points, torch computes
  each inner product once (:func:`self_search`: half the FLOPs).
- ``"approx"``: an inverted file (IVF) with about ``4 sqrt(n)`` lists whose centroids
  come from spherical k-means by torch matmul. Each query scans the ``nprobe`` lists
  nearest to it, either by torch (``"torch"``: the queries probing a list are searched
  together by one matmul per list, in two passes: a bound from each query's first
  lists, then a scan keeping what reaches it; see :func:`_ivf_torch_search`) or by FAISS ``IndexIVFFlat`` on the same
  lists (``"faiss"``: FAISS's per-query scan). ``nprobe`` is calibrated on a seeded
  sample of queries drawn independently of the k-means training points (training
  points sit closer to their centroids, so they overstate the recall): the smallest
  value whose recall reaches ``RECALL_TARGET`` plus ``CALIBRATION_MARGIN``. The recall
  reported is measured on a second, independent sample (see :func:`neighbour_recall`);
  when it falls short of ``RECALL_TARGET``, all points are searched again with
  ``IVF_STEP_UP`` times the nprobe and the recall measured on a fresh sample (at most
  ``IVF_ATTEMPTS`` searches). If nprobe would exceed ``IVF_MAX_PROBE_FRACTION`` of the
  lists (e.g. few points per class), exact search is used instead, with a warning in
  the log.

Backends: ``backend=None`` picks, per process, whichever of torch and FAISS is faster
on the data at hand: both search the same seeded sample of ``PROBE_FRACTION`` of the
queries (at least ``PROBE_MIN_QUERIES``), the faster one keeps its results and
searches the rest, and its name is cached for that method and data shape. Exact torch
search of the rest runs :func:`self_search` on all points, which computes each inner
product once for two rows: its probe does self_search's work per inner product for
the probe queries (:func:`_strip_probe`), and half of that time is compared. On CUDA
tensors or without FAISS, torch runs without a probe. ``backend="torch"`` or
``"faiss"`` forces one.
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from reclip.errors import ReclipError

try:  # faiss is a declared dependency; the torch paths keep everything working without it
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned, search_preassigned
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    faiss = None

logger = logging.getLogger(__name__)

KNN_METHODS = ("exact", "approx")
KNN_BACKENDS = ("torch", "faiss")

#: IVF: lists per sqrt(n), k-means training points per list and iterations, largest
#: fraction of the lists probed before falling back to exact search.
IVF_LISTS_PER_SQRT_N = 4
IVF_TRAIN_POINTS_PER_LIST = 32
KMEANS_ITERATIONS = 10
IVF_MAX_PROBE_FRACTION = 0.25
#: Recall the nprobe calibration aims for, and the margin added on the calibration sample.
RECALL_TARGET = 0.95
CALIBRATION_MARGIN = 0.015
#: Most IVF searches of all points; each next one probes IVF_STEP_UP times as many lists.
IVF_ATTEMPTS = 3
IVF_STEP_UP = 1.5

#: Queries per reported recall sample and per calibration sample (per-query recall varies
#: a lot on clustered data: 1,000 calibration queries picked nprobe 10 or 13 by seed).
RECALL_SAMPLE = 1000
CALIBRATION_SAMPLE = 2000
RECALL_SEED = 0
CALIBRATION_SEED = 1
PROBE_SEED = 2
KMEANS_SEED = 3
#: Seed of the recall sample after each IVF step-up (RECALL_SEED + STEP_UP_SEED_STRIDE * attempt).
STEP_UP_SEED_STRIDE = 10
#: Share of the queries both backends search when choosing one, at least PROBE_MIN_QUERIES:
#: FAISS's flat search is up to 3x slower per query in batches of a few hundred queries
#: than in batches of thousands, so smaller probes would misjudge it.
PROBE_FRACTION = 0.02
PROBE_MIN_QUERIES = 2048
#: Queries each backend searches untimed before its probe.
PROBE_WARMUP_QUERIES = 8
#: Share of each exact backend's probe time compared (see :func:`_strip_probe`).
EXACT_SHARES = {"torch": 0.5, "faiss": 1.0}

#: Largest similarity block of the torch search, in elements (CPU: 256 MiB, sized to
#: stay cache-friendly; CUDA: 1 GiB), and the share of free memory it may take.
_CPU_BLOCK_ELEMENTS = 1 << 26
_CUDA_BLOCK_ELEMENTS = 1 << 28
_FREE_MEMORY_SHARE = 0.25
#: Largest strip of :func:`self_search`, in elements (1 GiB): ranking a strip's columns
#: has a fixed cost per column, so strips should be tall.
_SELF_BLOCK_ELEMENTS = 1 << 28
#: Rows per group whose column maxima :func:`_top_of_columns` ranks first.
_COLUMN_GROUP = 16
#: Candidate sets a row of :func:`self_search` collects from earlier strips before they
#: are merged into one (bounds their memory to about n x width x this).
_MAX_PENDING = 8
#: Bytes of the per-chunk candidate buffer of the torch IVF search.
_IVF_BUFFER_BYTES = 1 << 30
#: Points (in multiples of the width) the first pass of the torch IVF search scans per
#: query to bound its width-th similarity (at N = 200k: 4.1 s per 20k queries with
#: about 450 points, 4.7 s with 220, 4.9 s with 1,800), and the slack below that bound
#: still kept (the two passes' products may round differently).
IVF_BOUND_POINTS_PER_WIDTH = 16
_BOUND_SLACK = 1e-4

Result = tuple[torch.Tensor, torch.Tensor]
Searcher = Callable[[torch.Tensor], Result]

#: Backend chosen by a probe, per (method, device type, n, d, width), for this process.
_CHOSEN: dict[tuple[str, str, int, int, int], str] = {}


@dataclass(frozen=True)
class Neighbours:
    """The k nearest neighbours of every point, self excluded.

    Attributes:
        indices: (n x k) int64 CPU tensor; -1 where the backend found fewer than k
            neighbours (possible with approximate search only).
        similarities: (n x k) float32 CPU tensor of inner products, 0 where indices is -1.
        recall: neighbour recall of approximate search (None for exact search).
        backend: what searched: ``"torch"``, ``"faiss-flat"``, ``"torch-ivf
            nprobe=P/L"``, ``"faiss-ivf nprobe=P/L"``, or when IVF fell back to exact
            search ``"torch (ivf fallback)"`` / ``"faiss-flat (ivf fallback)"``.
        probe_seconds: seconds each backend took on the probe sample, when this call
            chose its backend by a probe; empty when forced, cached or the only one.
    """

    indices: torch.Tensor
    similarities: torch.Tensor
    recall: float | None
    backend: str
    probe_seconds: dict[str, float] = field(default_factory=dict)


def knn_search(x: torch.Tensor, k: int, method: str = "exact", backend: str | None = None) -> Neighbours:
    """Find the k nearest neighbours (largest inner product) of every row of ``x``.

    Args:
        x: (n x d) float32 points, L2-normalised (rows may be zero), CPU or CUDA.
        k: neighbours per point, 1 <= k <= n - 1.
        method: ``"exact"`` or ``"approx"`` (see the module docstring).
        backend: ``"torch"``, ``"faiss"`` or None (the faster one, by a probe).

    Returns:
        :class:`Neighbours` with (n x k) CPU tensors; for ``"approx"`` the recall is
        also logged.
    """
    check_knn_options(method, backend)
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, n - 1] = [1, {n - 1}], got {k}")
    start = time.perf_counter()
    if method == "exact":
        name, (idx, sims), probe = _fastest(_exact_searchers(x, k + 1, backend), ("exact", x, k + 1), EXACT_SHARES)
        idx, sims = _drop_self(idx, sims, torch.arange(n), k)
        return Neighbours(idx, sims, None, "faiss-flat" if name == "faiss" else "torch", probe)
    (idx, sims), name, probe, recall = _ivf_search(x, k, backend)
    logger.info("approximate k-NN search (%s) on %d points (d=%d): %.2fs",
                name, n, x.shape[1], time.perf_counter() - start)
    return Neighbours(idx, sims, recall, name, probe)


def check_knn_options(method: str, backend: str | None) -> None:
    """Raise ReclipError for an unknown ``knn`` method or ``knn_backend``, or FAISS forced but missing."""
    if method not in KNN_METHODS:
        raise ReclipError(f"knn must be one of {KNN_METHODS}, got {method!r}")
    if backend is not None and backend not in KNN_BACKENDS:
        raise ReclipError(f"knn_backend must be one of {KNN_BACKENDS} or None (fastest, by a probe), got {backend!r}")
    if backend == "faiss" and faiss is None:
        raise ReclipError("knn_backend='faiss' needs FAISS: pip install faiss-cpu (or use knn_backend='torch')")


def exact_search(queries: torch.Tensor, database: torch.Tensor, k: int) -> Result:
    """Exact top-k inner-product search by blocked torch matmul (the query itself is NOT excluded).

    Memory: one (block x n) similarity block, sized by :func:`_block_rows`.

    Args:
        queries: (q x d) float32; database: (n x d) float32, same device; k <= n.

    Returns:
        (indices, similarities): (q x k) int64 and float32 CPU tensors, best first.
    """
    rows = _block_rows(database)
    block = database.new_empty(min(rows, queries.shape[0]), database.shape[0])
    parts = []
    for chunk in queries.split(rows):
        sims = torch.mm(chunk, database.T, out=block[: chunk.shape[0]])
        parts.append(torch.topk(sims, k, dim=1))
    idx = torch.cat([p.indices for p in parts]).cpu()
    sims = torch.cat([p.values for p in parts]).cpu()
    return idx, sims


def self_search(x: torch.Tensor, width: int) -> Result:
    """Exact top-``width`` of every row of ``x`` among all rows of ``x`` (self included).

    Computes each inner product once, half the FLOPs of ``exact_search(x, x, width)``:
    the block of b rows starting at s is multiplied with ``x[s:]``, a (b x (n - s))
    strip of the upper triangle of ``x x^T``. The strip's rows give the block its
    top-``width`` over columns s and later, merged with the candidates earlier strips
    gave it; the strip's later columns give every later row its top-``width`` among
    the b rows (see :func:`_top_of_columns`). Memory: the strip, sized by
    :func:`_block_rows`, plus at most ``_MAX_PENDING + 1`` candidate sets per row.

    Args:
        x: (n x d) float32, CPU or CUDA; width: 1 <= width <= n.

    Returns:
        (indices, similarities): (n x width) int64 and float32 CPU tensors, best first.
    """
    n = x.shape[0]
    rows = _strip_rows(x)
    starts = range(0, n, rows)
    strip = x.new_empty(rows * n)
    pending: list[list[Result]] = [[] for _ in starts]
    parts = []
    for block, start in enumerate(starts):
        height = min(rows, n - start)
        sims = torch.mm(x[start : start + height], x[start:].T, out=strip[: height * (n - start)].view(height, -1))
        if start + height < n:
            idx, values = _top_of_columns(sims[:, height:], width)
            for later, (part_idx, part_values) in enumerate(zip(idx.split(rows), values.split(rows)), block + 1):
                pending[later].append((part_idx + start, part_values))
                if len(pending[later]) > _MAX_PENDING:
                    pending[later] = [_merge(pending[later], width)]
        top = torch.topk(sims, min(width, n - start), dim=1)
        parts.append(_merge([*pending[block], (top.indices + start, top.values)], width))
        pending[block] = []
    return torch.cat([p[0] for p in parts]).cpu(), torch.cat([p[1] for p in parts]).cpu()


def _strip_rows(x: torch.Tensor) -> int:
    """Rows per strip of :func:`self_search` on ``x`` (n x d): from free memory, a multiple of ``_COLUMN_GROUP`` below n."""
    return min(x.shape[0], max(_COLUMN_GROUP, _block_rows(x, _SELF_BLOCK_ELEMENTS) // _COLUMN_GROUP * _COLUMN_GROUP))


def _strip_probe(x: torch.Tensor, ids: torch.Tensor, width: int) -> Result:
    """Exact top-``width`` of the rows ``x[ids]`` (q x d) among all rows of ``x``, doing :func:`self_search`'s work.

    The queries are multiplied with all points in strips of self_search's height, and
    each strip's columns are ranked as well (result unused), so the time per inner
    product is self_search's; self_search computes each inner product once for two
    rows, so half this time is its cost for these queries.

    Returns:
        (q x width) int64 and float32 CPU tensors, best first.
    """
    parts = []
    for chunk in ids.to(x.device).split(_strip_rows(x)):
        sims = x[chunk] @ x.T
        ranked = chunk.shape[0] // _COLUMN_GROUP * _COLUMN_GROUP
        if ranked:
            _top_of_columns(sims[:ranked], width)
        parts.append(torch.topk(sims, width, dim=1))
    return torch.cat([p.indices for p in parts]).cpu(), torch.cat([p.values for p in parts]).cpu()


def _top_of_columns(sims: torch.Tensor, width: int) -> Result:
    """Top-``width`` of every column of ``sims`` (b x w, b a multiple of ``_COLUMN_GROUP``).

    Returns (w x min(width, b)) row ids and values, best first.

    ``torch.topk`` along the columns, or on a transposed copy, costs about as much as
    the matmul the symmetric search saves. Instead, the rows are grouped by
    ``_COLUMN_GROUP`` and each group's column maximum taken (a fast vectorised pass):
    the top ``width`` of a column lie in its ``width`` groups with the largest maxima,
    so only those groups' entries are gathered and ranked. With at most ``width``
    groups, the columns are ranked directly.
    """
    height, columns = sims.shape
    if height // _COLUMN_GROUP <= width:
        top = torch.topk(sims.T.contiguous(), min(width, height), dim=1)
        return top.indices, top.values
    maxima = sims.view(-1, _COLUMN_GROUP, columns).amax(1).T.contiguous()
    groups = torch.topk(maxima, width, dim=1, sorted=False).indices
    rows = (groups[:, :, None] * _COLUMN_GROUP + torch.arange(_COLUMN_GROUP, device=sims.device)).flatten(1)
    top = torch.topk(sims.T.gather(1, rows), width, dim=1)
    return rows.gather(1, top.indices), top.values


def _merge(found: list[Result], width: int) -> Result:
    """Best ``width`` (or fewer, if fewer given) of m rows' candidate sets, each (m x w_i), best first."""
    idx = torch.cat([indices for indices, _ in found], dim=1)
    sims = torch.cat([similarities for _, similarities in found], dim=1)
    top = torch.topk(sims, min(width, sims.shape[1]), dim=1)
    return idx.gather(1, top.indices), top.values


def neighbour_recall(x: torch.Tensor, indices: torch.Tensor, seed: int = RECALL_SEED) -> float:
    """Tie-aware recall of approximate neighbours on a seeded sample of queries.

    For ``RECALL_SAMPLE`` queries drawn with ``seed``, a returned neighbour counts as
    correct when its similarity to the query is at least the k-th exact similarity
    (self excluded) minus 1e-6; missing neighbours (-1) count as wrong. Without ties
    this is the usual |approx ∩ exact| / k.

    Args:
        x: (n x d) points that were searched; indices: (n x k) approximate neighbours.

    Returns:
        Mean recall over the sampled queries, in [0, 1].
    """
    sample = _sample(x.shape[0], RECALL_SAMPLE, seed)
    queries = x[sample.to(x.device)]
    _, exact = _drop_self(*exact_search(queries, x, indices.shape[1] + 1), sample, indices.shape[1])
    found = indices[sample]
    found_sims = torch.linalg.vecdot(x[found.clamp(min=0).to(x.device)], queries[:, None, :]).cpu()
    hits = (found >= 0) & (found_sims >= exact[:, -1:] - 1e-6)
    return float(hits.float().mean())


def _fastest(
    searchers: dict[str, Searcher], key: tuple[str, torch.Tensor, int], shares: dict[str, float] | None = None
) -> tuple[str, Result, dict[str, float]]:
    """Search every query with the fastest of ``searchers``, probing them if needed.

    ``key`` is (method, points, width); the choice is cached per method, device, shape
    and width. A probe runs every searcher on the same seeded sample of queries; the
    fastest keeps its results and searches the remaining queries. ``shares``: the
    share of a searcher's probe time that its search of all queries costs per query
    (default 1).

    Returns:
        (name, (indices, similarities) of all n queries, probe seconds per searcher,
        times its share).
    """
    method, x, width = key
    n = x.shape[0]
    cache_key = (method, x.device.type, n, x.shape[1], width)
    everyone = torch.arange(n)
    if len(searchers) == 1 or cache_key in _CHOSEN:
        name = next(iter(searchers)) if len(searchers) == 1 else _CHOSEN[cache_key]
        return name, searchers[name](everyone), {}
    probe = _sample(n, max(PROBE_MIN_QUERIES, round(PROBE_FRACTION * n)), PROBE_SEED)
    seconds, found = {}, {}
    for name, search in searchers.items():
        search(probe[:PROBE_WARMUP_QUERIES])  # one-time costs (thread pools, index build) are not timed
        start = time.perf_counter()
        found[name] = search(probe)
        seconds[name] = (time.perf_counter() - start) * (shares or {}).get(name, 1.0)
    name = min(seconds, key=seconds.__getitem__)
    _CHOSEN[cache_key] = name
    logger.info("%s k-NN backend probe on %d of %d queries: %s -> %s", method, len(probe), n,
                ", ".join(f"{b} {s:.2f}s" for b, s in seconds.items()), name)
    rest = torch.ones(n, dtype=torch.bool)
    rest[probe] = False
    rest_ids = everyone[rest]
    idx = torch.empty(n, width, dtype=torch.int64)
    sims = torch.empty(n, width)
    idx[probe], sims[probe] = found[name]
    if len(rest_ids):
        idx[rest_ids], sims[rest_ids] = searchers[name](rest_ids)
    return name, (idx, sims), seconds


def _candidates(x: torch.Tensor, backend: str | None) -> tuple[str, ...]:
    """Backends a search may use: the forced one, torch alone on CUDA or without FAISS, else both."""
    if backend is not None:
        return (backend,)
    return ("torch",) if faiss is None or x.is_cuda else KNN_BACKENDS


def _exact_searchers(x: torch.Tensor, width: int, backend: str | None) -> dict[str, Searcher]:
    """Exact searchers of query ids (rows of ``x``) against all of ``x``, top-``width`` each.

    Torch runs :func:`self_search` of all rows when asked for most of them, else
    :func:`_strip_probe` (it is asked for few only when probed).
    """

    def with_torch(ids: torch.Tensor) -> Result:
        if 2 * len(ids) > x.shape[0]:  # most rows: search all of them, each pair once
            idx, sims = self_search(x, width)
            return idx[ids], sims[ids]
        return _strip_probe(x, ids, width)

    index: list = []  # the FAISS index, built on first use

    def with_faiss(ids: torch.Tensor) -> Result:
        data = _as_faiss_array(x)
        if not index:
            index.append(faiss.IndexFlatIP(data.shape[1]))
            index[0].add(data)
        sims, idx = index[0].search(data[ids.numpy()], width)
        return torch.from_numpy(idx), torch.from_numpy(sims)

    searchers = {"torch": with_torch, "faiss": with_faiss}
    return {name: searchers[name] for name in _candidates(x, backend)}


@dataclass(frozen=True)
class _InvertedFile:
    """Points of ``x`` grouped by their nearest centroid.

    Attributes:
        centroids: (L x d) unit centroids; assignment: (n,) int64 list of each point;
        order: (n,) int64 point ids sorted by list; offsets: (L + 1,) list boundaries
        in ``order`` (Python ints); points: (n x d) ``x[order]``.
    """

    centroids: torch.Tensor
    assignment: torch.Tensor
    order: torch.Tensor
    offsets: list[int]
    points: torch.Tensor


def _ivf_search(x: torch.Tensor, k: int, backend: str | None) -> tuple[Result, str, dict[str, float], float]:
    """Approximate k nearest neighbours of every row of ``x`` among the rows of ``x``, self excluded.

    Searches with the nprobe the calibration gives, measures the recall on a seeded
    sample and, while it falls short of ``RECALL_TARGET``, searches again with
    ``IVF_STEP_UP`` times the nprobe (recall measured on a fresh sample each time), at
    most ``IVF_ATTEMPTS`` times; exact search when nprobe would exceed
    ``IVF_MAX_PROBE_FRACTION`` of the lists.

    Returns:
        ((indices, similarities) as (n x k) CPU tensors, backend name, probe seconds,
        recall measured on the last sample).
    """
    n = x.shape[0]
    num_lists = max(1, min(round(IVF_LISTS_PER_SQRT_N * n**0.5), n // 39))
    centroids = _kmeans(x, num_lists)
    curve = _calibration_curve(x, centroids, k)
    nprobe = int(torch.searchsorted(curve, RECALL_TARGET + CALIBRATION_MARGIN))
    ivf = None
    for attempt in range(IVF_ATTEMPTS):
        if nprobe > max(1, int(IVF_MAX_PROBE_FRACTION * num_lists)):
            return _ivf_fallback(x, k, backend)
        logger.info("IVF nprobe=%d/%d: calibration recall %.4f", nprobe, num_lists, float(curve[min(nprobe, num_lists)]))
        probes = _nearest_lists(x, centroids, nprobe)
        ivf = ivf or _inverted_file(x, centroids, probes[:, 0].contiguous())
        searchers = {
            "torch": functools.partial(_ivf_torch_search, x, ivf, probes, width=k + 1),
            "faiss": _ivf_faiss_searcher(x, ivf, probes, k + 1),
        }
        name, found, probe = _fastest(
            {b: searchers[b] for b in _candidates(x, backend)}, (f"approx nprobe={nprobe}", x, k + 1)
        )
        idx, sims = _drop_self(*found, torch.arange(n), k)
        recall = _logged_recall(x, idx, RECALL_SEED + STEP_UP_SEED_STRIDE * attempt)
        if recall >= RECALL_TARGET or attempt + 1 == IVF_ATTEMPTS:
            break
        logger.warning("IVF recall %.4f < %.2f at nprobe=%d; raising nprobe", recall, RECALL_TARGET, nprobe)
        nprobe = math.ceil(IVF_STEP_UP * nprobe)
    return (idx, sims), f"{name}-ivf nprobe={nprobe}/{num_lists}", probe, recall


def _ivf_fallback(x: torch.Tensor, k: int, backend: str | None) -> tuple[Result, str, dict[str, float], float]:
    """Exact search in place of IVF, logged as a warning; same return value as :func:`_ivf_search`."""
    logger.warning("IVF cannot reach recall %.2f probing <= %.0f%% of its lists; using exact search",
                   RECALL_TARGET, 100 * IVF_MAX_PROBE_FRACTION)
    name, found, probe = _fastest(_exact_searchers(x, k + 1, backend), ("exact", x, k + 1), EXACT_SHARES)
    idx, sims = _drop_self(*found, torch.arange(x.shape[0]), k)
    recall = _logged_recall(x, idx, RECALL_SEED)
    return (idx, sims), f"{'faiss-flat' if name == 'faiss' else 'torch'} (ivf fallback)", probe, recall


def _logged_recall(x: torch.Tensor, indices: torch.Tensor, seed: int) -> float:
    """:func:`neighbour_recall` of (n x k) ``indices`` on the sample drawn with ``seed``, logged."""
    recall = neighbour_recall(x, indices, seed)
    logger.info("approximate k-NN recall@%d on %d sampled queries: %.4f",
                indices.shape[1], min(RECALL_SAMPLE, x.shape[0]), recall)
    return recall


def _kmeans(x: torch.Tensor, num_lists: int) -> torch.Tensor:
    """(L x d) unit centroids: spherical k-means, ``KMEANS_ITERATIONS`` on a seeded sample of ``x``."""
    n = x.shape[0]
    train = x[_sample(n, num_lists * IVF_TRAIN_POINTS_PER_LIST, KMEANS_SEED).to(x.device)]
    centroids = train[:num_lists].clone()
    for _ in range(KMEANS_ITERATIONS):
        assignment = _nearest_lists(train, centroids, 1).squeeze(1)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, train)
        filled = torch.bincount(assignment, minlength=num_lists) > 0
        centroids = torch.where(filled[:, None], torch.nn.functional.normalize(sums, dim=1), centroids)
    return centroids


def _inverted_file(x: torch.Tensor, centroids: torch.Tensor, assignment: torch.Tensor) -> _InvertedFile:
    """Every point of ``x`` in the list of its nearest centroid, ``assignment`` (n,)."""
    num_lists = centroids.shape[0]
    order = torch.argsort(assignment, stable=True)
    sizes = torch.bincount(assignment, minlength=num_lists)
    offsets = [0, *torch.cumsum(sizes, 0).tolist()]
    return _InvertedFile(centroids, assignment, order, offsets, x[order])


def _nearest_lists(points: torch.Tensor, centroids: torch.Tensor, count: int) -> torch.Tensor:
    """(m x count) int64 ids of the centroids with the largest inner product to each point, best first."""
    rows = _block_rows(centroids)
    return torch.cat([torch.topk(block @ centroids.T, count, dim=1).indices for block in points.split(rows)])


def _calibration_curve(x: torch.Tensor, centroids: torch.Tensor, k: int) -> torch.Tensor:
    """(L + 1,) recall@k of IVF search at every nprobe 0..L, on the calibration sample.

    A query's exact neighbour is found at nprobe p when its list is among the query's
    p nearest lists (every probed list is scanned exactly), so one exact search of the
    sample gives the recall IVF search of the sample has at every p.
    """
    num_lists = centroids.shape[0]
    sample = _sample(x.shape[0], CALIBRATION_SAMPLE, CALIBRATION_SEED)
    queries = x[sample.to(x.device)]
    true, _ = _drop_self(*exact_search(queries, x, k + 1), sample, k)
    ranking = _nearest_lists(queries, centroids, num_lists).cpu()
    rank_of_list = torch.empty_like(ranking).scatter_(1, ranking, torch.arange(num_lists).expand_as(ranking))
    lists = _nearest_lists(x[true.flatten().to(x.device)], centroids, 1).cpu().view_as(true)
    needed = rank_of_list.gather(1, lists) + 1  # (s x k) nprobe that finds each exact neighbour
    return torch.bincount(needed.flatten(), minlength=num_lists + 1).cumsum(0) / needed.numel()


def _ivf_torch_search(x: torch.Tensor, ivf: _InvertedFile, probes: torch.Tensor, ids: torch.Tensor, width: int) -> Result:
    """Top-``width`` of the queries ``x[ids]`` among the points of their probed lists, by torch.

    Queries are taken in chunks whose first-pass buffer (q x nprobe x width) fits
    ``_IVF_BUFFER_BYTES``. Within a chunk, two passes, each searching every list once
    by one matmul of all the chunk's queries probing it against its points:

    1. every query's first lists (about ``IVF_BOUND_POINTS_PER_WIDTH * width`` points)
       give its top-``width`` there (top-k per list, then per query); the last of
       those similarities is a lower bound of the query's final width-th similarity;
    2. all ``nprobe`` lists are scanned keeping only the similarities at or above that
       bound (minus ``_BOUND_SLACK``, for rounding): a compare instead of a top-k per
       (query, list), which on the CPU cost 3x the matmul. Each query's best ``width``
       of those are its result, the same as a top-k over all its probed points.

    On the CPU the lists are spread over one Python thread per torch thread, each
    running torch single-threaded: on a busy machine, thousands of small
    multi-threaded products each wait milliseconds for a descheduled thread
    (measured: 15x slower on 2 shared cores at load 6).

    Args:
        probes: (n x nprobe) lists probed by every point; ids: (q,) query ids.

    Returns:
        (q x width) int64 indices (-1 where fewer candidates) and float32 similarities, CPU.
    """
    nprobe = probes.shape[1]
    first = min(nprobe, math.ceil(IVF_BOUND_POINTS_PER_WIDTH * width * (len(ivf.offsets) - 1) / x.shape[0]))
    chunk = max(1, _IVF_BUFFER_BYTES // (nprobe * width * 12))
    parts = []
    for part in ids.split(chunk):
        lists = probes[part.to(probes.device)]
        idx, sims = _ivf_top_per_list(x, ivf, lists[:, :first].contiguous(), part, width)
        if first < nprobe:
            idx, sims = _ivf_above(x, ivf, lists, part, sims[:, -1] - _BOUND_SLACK, width)
        parts.append((idx.cpu(), sims.cpu()))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _ivf_top_per_list(x: torch.Tensor, ivf: _InvertedFile, probes: torch.Tensor, ids: torch.Tensor, width: int) -> Result:
    """Pass 1 of :func:`_ivf_torch_search`: top-``width`` of each query in each probed list, then overall.

    Args:
        probes: (q x p) lists probed by the queries ``x[ids]``.

    Returns:
        (q x width) indices (-1 where fewer candidates) and similarities (-inf there).
    """
    num_queries, nprobe = probes.shape
    queries = x[ids.to(x.device)]
    sims = torch.full((num_queries * nprobe, width), -torch.inf, device=x.device)
    idx = torch.full((num_queries * nprobe, width), -1, dtype=torch.int64, device=x.device)
    slots, firsts, busy = _slots_by_list(ivf, probes)

    def search_list(lst: int) -> None:
        begin, end = ivf.offsets[lst], ivf.offsets[lst + 1]
        rows = slots[firsts[lst] : firsts[lst + 1]]
        top = torch.topk(queries[rows // nprobe] @ ivf.points[begin:end].T, min(width, end - begin), dim=1)
        sims[rows, : top.values.shape[1]] = top.values
        idx[rows, : top.values.shape[1]] = ivf.order[begin + top.indices]

    _for_each_list(x, search_list, busy)
    best = torch.topk(sims.view(num_queries, -1), width, dim=1)
    return idx.view(num_queries, -1).gather(1, best.indices), best.values


def _ivf_above(
    x: torch.Tensor, ivf: _InvertedFile, probes: torch.Tensor, ids: torch.Tensor, bound: torch.Tensor, width: int
) -> Result:
    """Pass 2 of :func:`_ivf_torch_search`: top-``width`` of each query among its probed points at or above ``bound``.

    Args:
        probes: (q x nprobe) lists probed by the queries ``x[ids]``; bound: (q,) their
            lower bounds (-inf: every probed point is a candidate).

    Returns:
        (q x width) indices (-1 where fewer candidates) and similarities (-inf there).
    """
    num_queries, nprobe = probes.shape
    queries = x[ids.to(x.device)]
    slots, firsts, busy = _slots_by_list(ivf, probes)
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = [None] * (len(ivf.offsets) - 1)  # type: ignore[list-item]

    def scan_list(lst: int) -> None:
        begin, end = ivf.offsets[lst], ivf.offsets[lst + 1]
        rows = slots[firsts[lst] : firsts[lst + 1]] // nprobe
        sims = queries[rows] @ ivf.points[begin:end].T
        hit_row, hit_col = (sims >= bound[rows, None]).nonzero(as_tuple=True)
        found[lst] = (rows[hit_row], ivf.order[begin + hit_col], sims[hit_row, hit_col])

    _for_each_list(x, scan_list, busy)
    missing = (torch.full((num_queries, width), -1, device=x.device), torch.full((num_queries, width), -torch.inf, device=x.device))
    if not busy:
        return missing
    query, point, sim = (torch.cat(column) for column in zip(*(found[lst] for lst in busy)))
    if not len(query):
        return missing
    order = torch.argsort(sim, descending=True, stable=True)
    order = order[torch.argsort(query[order], stable=True)]  # by query, best first within each
    counts = torch.bincount(query, minlength=num_queries)
    rank = torch.arange(width, device=x.device)
    picked = order[((torch.cumsum(counts, 0) - counts)[:, None] + rank).clamp(max=len(order) - 1)]
    present = rank < counts[:, None]
    return torch.where(present, point[picked], -1), torch.where(present, sim[picked], -torch.inf)


def _slots_by_list(ivf: _InvertedFile, probes: torch.Tensor) -> tuple[torch.Tensor, list[int], list[int]]:
    """The (query, probe) slots of (q x p) ``probes`` grouped by list.

    Returns:
        slots: (q p,) flat slot ids sorted by list (slot // p is the query row);
        firsts: (L + 1,) where each list's slots start; busy: non-empty lists probed by
        at least one slot.
    """
    flat = probes.flatten()
    slots = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=len(ivf.offsets) - 1).tolist()
    busy = [lst for lst, count in enumerate(counts) if count and ivf.offsets[lst + 1] > ivf.offsets[lst]]
    return slots, [0, *itertools.accumulate(counts)], busy


def _for_each_list(x: torch.Tensor, function: Callable[[int], None], lists: list[int]) -> None:
    """Call ``function`` on every list: in order on CUDA, else one list per CPU thread, torch single-threaded."""
    if x.is_cuda:
        for lst in lists:
            function(lst)
        return
    workers = torch.get_num_threads()
    with torch_threads(1), ThreadPoolExecutor(workers) as pool:
        list(pool.map(function, lists))


def _ivf_faiss_searcher(x: torch.Tensor, ivf: _InvertedFile, probes: torch.Tensor, width: int) -> Searcher:
    """Searcher of query ids by FAISS ``IndexIVFFlat`` on the lists of ``ivf`` (built on first use)."""
    state: dict[str, object] = {}

    def search(ids: torch.Tensor) -> Result:
        if not state:
            data = _as_faiss_array(x)
            quantizer = faiss.IndexFlatIP(data.shape[1])
            quantizer.add(_as_faiss_array(ivf.centroids))
            index = faiss.IndexIVFFlat(quantizer, data.shape[1], quantizer.ntotal, faiss.METRIC_INNER_PRODUCT)
            add_preassigned(index, data, ivf.assignment.cpu().numpy())
            index.nprobe = probes.shape[1]
            state.update(data=data, quantizer=quantizer, index=index)
        lists = probes[ids.to(probes.device)].cpu().numpy()
        sims, idx = search_preassigned(state["index"], state["data"][ids.numpy()], width, lists)
        return torch.from_numpy(idx), torch.from_numpy(sims)

    return search


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the body with ``count`` torch CPU threads, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _block_rows(database: torch.Tensor, cap: int | None = None) -> int:
    """Query rows per similarity block against ``database`` (n x d), from free memory.

    ``cap``: most elements per block (default ``_CPU_BLOCK_ELEMENTS``, or
    ``_CUDA_BLOCK_ELEMENTS`` on CUDA).
    """
    if database.is_cuda:
        free = torch.cuda.mem_get_info(database.device)[0]
        cap = cap or _CUDA_BLOCK_ELEMENTS
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        cap = cap or _CPU_BLOCK_ELEMENTS
    elements = min(cap, int(_FREE_MEMORY_SHARE * free) // 4)
    return max(1, elements // max(1, database.shape[0]))


def _drop_self(idx: torch.Tensor, sims: torch.Tensor, query_ids: torch.Tensor, k: int) -> Result:
    """Remove the query's own index from (q x (k+1)) search results, keeping k per row.

    The query's own index is removed wherever it appears; rows where it does not
    appear (duplicates outranked it) lose their last column instead. Missing results
    (-1) get similarity 0.

    Returns:
        (indices, similarities): (q x k) int64 and float32 tensors.
    """
    drop = idx == query_ids[:, None]
    drop[:, -1] |= ~drop.any(dim=1)
    keep = ~drop
    out_idx = idx[keep].view(-1, k)
    out_sims = sims[keep].view(-1, k).masked_fill(out_idx < 0, 0.0)
    return out_idx, out_sims


def _sample(n: int, size: int, seed: int) -> torch.Tensor:
    """(s,) int64: min(size, n) distinct ids drawn with ``seed``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(size, n)]


def _as_faiss_array(x: torch.Tensor) -> np.ndarray:
    """(n x d) tensor -> C-contiguous float32 numpy array on the CPU (no copy if possible)."""
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
