"""How many CPU threads a process uses: torch's intra-op threads and data-loader workers,
chosen together so that they never exceed the cores this process may run on.

The cores are those of ``os.sched_getaffinity`` (a container's or ``taskset``'s limit, not
the machine's count), shared evenly by the ranks torchrun starts on this machine
(``LOCAL_WORLD_SIZE``). Oversubscribing them costs far more than it gains: on 2 cores at a
load of 4-5, a cached 500-image ``reclip adapt`` epoch took 0.3 to 25 s with torch's default
threads plus a loader worker, 2.2 s in all with one thread (issue 24).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Most data-loader workers chosen by default, and cores per default worker.
MAX_DEFAULT_WORKERS = 4
CORES_PER_WORKER = 4


def cores() -> int:
    """CPU cores this process may use: its affinity set, shared by the local torchrun ranks."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, allowed // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def budget(threads: int | None = None, workers: int | None = None) -> tuple[int, int]:
    """(intra-op threads, data-loader workers) whose sum is at most :func:`cores` when either
    is left None: by default one worker per ``CORES_PER_WORKER`` cores (none on 1-3 cores,
    where decoding in the main process costs less than a core taken from the products), at
    most ``MAX_DEFAULT_WORKERS``, and the threads take the rest. Both given: used as given."""
    available = cores()
    if workers is None:
        workers = min(MAX_DEFAULT_WORKERS, available // CORES_PER_WORKER)
        if threads is not None:
            workers = min(workers, max(0, available - threads))
    if threads is None:
        threads = max(1, available - workers)
    return threads, workers


def apply(threads: int | None = None, workers: int | None = None) -> int:
    """Set torch's intra-op threads from :func:`budget`; returns the data-loader workers to use."""
    threads, workers = budget(threads, workers)
    if threads + workers > cores():
        log.warning("%d threads + %d data-loader workers exceed the %d cores this process may use",
                    threads, workers, cores())
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return workers


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the body with ``count`` torch CPU threads, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def map_single_threaded(function: Callable[..., T], items: Sequence) -> list[T]:
    """``[function(item) for item in items]``, one item per Python thread (as many as torch's
    threads), torch single-threaded inside: thousands of small multi-threaded torch ops each
    wait at a barrier for a thread the scheduler paused (15x slower on 2 shared cores at load
    6, and the label-propagation solve 5x with one busy neighbour), these never wait."""
    with ThreadPoolExecutor(max(1, min(torch.get_num_threads(), len(items)))) as pool, torch_threads(1):
        return list(pool.map(function, items))
