"""Seeded random subsets of a dataset (quick runs, and the same subset every time)."""
from __future__ import annotations

import numpy as np

from ..errors import ReclipError
from .datasets import ImageDataset


def random_subset(dataset: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """``n`` images of ``dataset`` drawn without replacement by ``seed``, in dataset order
    (the whole dataset when it has ``n`` images or fewer). The same (dataset, n, seed) always
    gives the same subset, so the feature cache serves it again."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ReclipError(f"max_images must be a positive whole number; got {n!r}")
    if n >= len(dataset):
        return dataset
    chosen = np.random.default_rng(seed).choice(len(dataset), n, replace=False)
    return dataset.subset(np.sort(chosen))
