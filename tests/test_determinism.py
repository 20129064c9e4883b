"""Results that depend on the inputs and settings only: bf16 switch, k-NN backends and threads."""
from __future__ import annotations

import pytest
import torch

from reclip import label_propagation, precision
from reclip.errors import ReclipError


@pytest.mark.parametrize("value, expected", [("on", True), ("off", False), ("auto", None), ("", None)])
def test_reclip_bf16_forces_the_autocast_choice(monkeypatch, value, expected):
    monkeypatch.setenv(precision.BF16_ENV, value)
    want = precision.native_bf16("cpu") if expected is None else expected
    assert precision.uses_bf16("cpu") is want
    with precision.autocast("cpu"):
        product = torch.ones(4, 4) @ torch.ones(4, 4)
    assert product.dtype == (torch.bfloat16 if want else torch.float32)


def test_reclip_bf16_rejects_an_unknown_value(monkeypatch):
    monkeypatch.setenv(precision.BF16_ENV, "maybe")
    with pytest.raises(ReclipError, match="RECLIP_BF16 must be one of auto, on, off"):
        precision.uses_bf16("cpu")


def tied_points(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images 600 x 32, classes 6 x 32): 60 distinct images, each repeated 10 times, and
    some of those nearly repeated (a 1e-7 nudge): every image ties with 9 others at k = 10."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.nn.functional.normalize(torch.randn(6, 32, generator=g) + 2.0, dim=1)
    base = classes[torch.arange(60) % 6] + 0.6 * torch.randn(60, 32, generator=g)
    images = base.repeat_interleave(10, dim=0)
    images[::7] += 1e-7 * torch.randn(images[::7].shape, generator=g)
    return images, classes


def _propagate(threads: int, **kw):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return label_propagation(*tied_points(), k=10, **kw)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("image_edges", ["projected", "full"])
def test_tied_neighbours_give_bit_identical_results_from_every_backend_and_thread_count(image_edges):
    runs = {(backend, threads): _propagate(threads, knn_backend=backend, image_edges=image_edges)
            for backend in (None, "torch", "faiss") for threads in (1, 2)}
    first = runs[(None, 1)]
    assert first.knn_backend.startswith("torch")
    for key, run in runs.items():
        assert torch.equal(run.labels, first.labels), key
        assert torch.equal(run.scores, first.scores), key
        assert torch.equal(run.confidence, first.confidence), key
        assert torch.equal(run.centroids, first.centroids), key
    # the ties are real: duplicates share labels and the graph kept the lower-index copies
    groups = first.labels.view(60, 10)
    assert (groups == groups[:, :1]).all()


def test_approximate_search_is_the_same_from_both_backends_and_thread_counts():
    images, classes = tied_points()
    images = images.repeat(6, 1)  # 3,600 images: enough lists for IVF to run
    runs = []
    for backend in ("torch", "faiss"):
        for threads in (1, 2):
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                runs.append(label_propagation(images, classes, k=10, knn="approx", knn_backend=backend))
            finally:
                torch.set_num_threads(previous)
    assert "ivf nprobe=" in runs[0].knn_backend and "fallback" not in runs[0].knn_backend
    for run in runs[1:]:
        assert torch.equal(run.labels, runs[0].labels) and torch.equal(run.scores, runs[0].scores)
