"""Seeded random subsets of a dataset (quick runs, and the same subset every time)."""
from __future__ import annotations

import numpy as np

from ..checks import dataset_argument, seed as check_seed, whole_number
from .datasets import ImageDataset


def random_subset(dataset: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """``n`` images of ``dataset`` drawn without replacement by ``seed``, in dataset order
    (the whole dataset when it has ``n`` images or fewer). The same (dataset, n, seed) always
    gives the same subset, so the feature cache serves it again."""
    if not isinstance(dataset, ImageDataset):
        dataset_argument(dataset)  # the one-line refusal of anything else
    n = whole_number(n, "n", minimum=1)
    seed = check_seed(seed)
    if n >= len(dataset):
        return dataset
    chosen = np.random.default_rng(seed).choice(len(dataset), n, replace=False)
    return dataset.subset(np.sort(chosen))
