"""Decode once: ReCLIP trains without augmentation, so every epoch sees the same pixels.

The model's eval transform is split at ``ToTensor``: the part before it (decode, convert,
resize, crop) runs once per image per run and its result is kept as uint8 in a memory-mapped
file; the part after it (scale to [0, 1], ``Normalize``) runs on each batch. A transform that
cannot be split (a Hugging Face image processor) is simply applied on every pass.

The file is allocated whole before the first write, so a temporary folder without room fails
at once with one line naming it (and the file is removed), never with a crash mid-pass.
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

from ..errors import ReclipError
from ..paths import pixel_cache_dir
from ..progress import progress
from .datasets import ImageDataset, collate

log = logging.getLogger(__name__)


def split_transform(transform: Any) -> tuple[Callable, Callable] | None:
    """(PIL -> uint8 C x H x W, float C x H x W in [0, 1] -> model input) or None.

    Works for a ``transforms.Compose`` whose ``ToTensor`` is followed only by ``Normalize``.
    """
    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, transforms.Compose) or steps is None:
        return None
    cut = [i for i, t in enumerate(steps) if isinstance(t, transforms.ToTensor)]
    if len(cut) != 1 or not all(isinstance(t, transforms.Normalize) for t in steps[cut[0] + 1:]):
        return None
    before = transforms.Compose(steps[: cut[0]] + [transforms.PILToTensor()])
    after = transforms.Compose(steps[cut[0] + 1:])
    return before, after


class DecodedImages(Dataset):
    """Items ``(image, index, label)`` like ``ImageDataset``'s, for the images at ``indices``,
    served from a uint8 cache filled by one decoding pass.

    ``decode_images_per_s`` records the speed of that pass (the input pipeline alone).
    """

    def __init__(self, dataset: ImageDataset, indices: list[int], batch_size: int, workers: int) -> None:
        before, self._after = split_transform(dataset.transform)
        decoding = copy.copy(dataset)  # the same images, with only the decode-side half of the transform
        decoding.transform = before
        self._row = {index: row for row, index in enumerate(indices)}
        self._labels = dataset.labels
        self._pixels: np.ndarray | None = None
        self.skipped: set[int] = set()
        start = time.perf_counter()
        loader = DataLoader(Subset(decoding, indices), batch_size=batch_size, num_workers=workers,
                            collate_fn=collate)
        try:
            self._file = tempfile.NamedTemporaryFile(prefix="reclip-pixels-", suffix=".u8", dir=pixel_cache_dir())
        except OSError as exc:
            raise _no_room(0, exc) from None
        for images, idx, _, skipped in progress(loader, "decode images once"):
            self.skipped.update(skipped)
            if len(idx) == 0:
                continue
            if self._pixels is None:  # the crop size is known once the first image is decoded
                self._pixels = self._allocate((len(indices), *images.shape[1:]))
            rows = [self._row[int(i)] for i in idx]
            self._pixels[rows] = images.numpy()
        seconds = time.perf_counter() - start
        self.decode_images_per_s = len(indices) / seconds if seconds > 0 else float("inf")
        log.info("decoded %d images once at %.1f images/s", len(indices), self.decode_images_per_s)

    def _allocate(self, shape: tuple[int, ...]) -> np.memmap:
        """The whole uint8 cache, its disk blocks reserved now (a sparse file would crash the
        process with SIGBUS when the folder fills up during the pass)."""
        size = int(np.prod(shape))
        try:
            os.posix_fallocate(self._file.fileno(), 0, size)
        except OSError as exc:
            self._file.close()  # removes the file
            raise _no_room(size, exc) from None
        return np.memmap(self._file.name, dtype=np.uint8, mode="r+", shape=shape)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int]:
        label = int(self._labels[index])
        if index in self.skipped or self._pixels is None:
            return None, index, label
        pixels = torch.from_numpy(np.array(self._pixels[self._row[index]]))
        return self._after(pixels.float().div_(255)), index, label


def _no_room(size: int, exc: OSError) -> ReclipError:
    need = f" ({size / 2**20:.0f} MB)" if size else ""
    return ReclipError(f"cannot write the decoded-pixel cache{need} in {pixel_cache_dir()} ({exc.strerror}); free "
                       "space there or set TMPDIR to a folder with room")
