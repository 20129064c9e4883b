"""Batched image-feature extraction with an on-disk cache.

The cache is keyed by the content of the weights, the image tower's current norm affines,
the dataset, the transform and the precision, so a second zero-shot run, or an adaptation run
after a zero-shot run, skips extraction, while overwritten weights or an adapted model never
get another model's features. Calibration statistics that a model derives from the target
images (the bridge model's centring vector) are cached with them. A damaged cache entry is a
miss: it is recomputed and rewritten.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Subset

from . import __version__, distributed, runtime
from .data.datasets import ImageDataset, collate
from .fingerprint import image_state_fingerprint, tensors_fingerprint, weights_fingerprint
from .errors import ReclipError
from .io import atomic_path, temporary_sibling
from .models.base import DualEncoder
from .paths import CACHE_ENV, feature_cache_dir
from .progress import progress

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Features of the readable images of a dataset, in dataset order.

    ``features`` N x D (L2-normalised, float32, CPU), ``indices`` (N,) dataset indices,
    ``labels`` (N,) with -1 where unknown, ``skipped`` the indices of unreadable images.
    """

    features: torch.Tensor
    indices: torch.Tensor
    labels: torch.Tensor
    skipped: list[int]
    from_cache: bool = False
    seconds: float = 0.0  # wall time of the extraction (0 when read from the cache)


def default_workers() -> int:
    return runtime.budget()[1]


def make_loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    """A deterministic (unshuffled) loader whose batches are ``collate``'s 4-tuples."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate, persistent_workers=False)


def _cache_key(model: DualEncoder, dataset: ImageDataset, calibrate: bool) -> str:
    transform = re.sub(r" at 0x[0-9a-f]+", "", repr(dataset.transform))
    key = {
        "model": model.spec, "weights": weights_fingerprint(model), "image_state": image_state_fingerprint(model),
        "dataset": dataset.fingerprint(), "transform": transform, "reclip": __version__,
        # Calibrated statistics are an output of the run (cached below); otherwise they are an input.
        "target_state": "calibrated" if calibrate else tensors_fingerprint(model.extra_state()),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


Encoder = Callable[[torch.Tensor], torch.Tensor]  # B x C x H x W images (on device) -> B x K


@torch.inference_mode()
def encode_loader(encode: Encoder, device: torch.device, loader: DataLoader, desc: str = "features") -> Features:
    """Run ``encode`` over every batch; unreadable images are skipped (and listed)."""
    feats, idx, labels, skipped = [], [], [], []
    for images, indices, labs, skip in progress(loader, desc):
        skipped += skip
        if len(indices):
            feats.append(encode(images.to(device, non_blocking=True)).float().cpu())
            idx.append(indices)
            labels.append(labs)
    if not feats:
        return Features(torch.empty(0, 0), torch.empty(0, dtype=torch.long),
                        torch.empty(0, dtype=torch.long), skipped)
    return Features(torch.cat(feats), torch.cat(idx), torch.cat(labels), skipped)


def encode_dataset(encode: Encoder, device: torch.device, dataset: Dataset, positions: list[int], *,
                   batch_size: int, workers: int, desc: str) -> Features:
    """``encode`` applied to the images at ``positions``: K-dim rows in index order, on every rank.

    Under torchrun each rank encodes its shard and the shards are gathered.
    """
    loader = make_loader(Subset(dataset, distributed.shard(positions)), batch_size, workers)
    local = encode_loader(encode, device, loader, desc=desc)
    if distributed.world() == 1:
        return local
    dim = torch.tensor([local.features.shape[1] if len(local.indices) else 0])
    dim = int(torch.cat(distributed.gather_rows(dim)).max())
    feats = local.features if len(local.indices) else torch.empty(0, dim)
    indices = torch.cat(distributed.gather_rows(local.indices))
    order = indices.argsort()
    skipped = torch.cat(distributed.gather_rows(torch.tensor(local.skipped, dtype=torch.long)))
    if len(indices.unique()) != len(indices) or len(indices) + len(skipped) != len(positions):
        raise RuntimeError(f"sharding error: {len(indices)} features and {len(skipped)} skipped images "
                           f"gathered for {len(positions)} images")
    return Features(torch.cat(distributed.gather_rows(feats))[order], indices[order],
                    torch.cat(distributed.gather_rows(local.labels))[order], sorted(skipped.tolist()))


def extract_features(model: DualEncoder, dataset: ImageDataset, *, batch_size: int = 64,
                     workers: int | None = None, use_cache: bool = True,
                     calibrate: bool = True) -> Features:
    """Image features of every readable image of ``dataset`` under the frozen ``model``.

    With ``calibrate`` and a model that needs target statistics, they are fitted on this
    dataset in the same pass (and restored from the cache on a hit); without it, the model's
    current statistics are used (as ``predict`` does with an adapter's).
    """
    workers = default_workers() if workers is None else workers
    path = feature_cache_dir() / f"{_cache_key(model, dataset, calibrate)}.safetensors"
    cached = _read_cache(path) if use_cache else None
    writable = use_cache and cached is None and distributed.is_main() and _cache_writable(path.parent)
    if distributed.all_agree(cached is not None):
        state = {k[len("state."):]: v for k, v in cached.items() if k.startswith("state.")}
        if calibrate and model.needs_calibration:
            model.load_extra_state(state)
        log.info("image features loaded from cache %s", path)
        return Features(cached["features"], cached["indices"], cached["labels"], cached["skipped"].tolist(),
                        from_cache=True)

    start = time.perf_counter()
    positions = list(range(len(dataset)))
    if calibrate and model.needs_calibration:
        # one pass: the trunk outputs of all images fit the target statistics (identically on
        # every rank, since all ranks hold all of them), then the head finishes the embedding
        out = encode_dataset(model.image_trunk, model.device, dataset, positions, batch_size=batch_size,
                             workers=workers, desc=f"features {dataset.name}")
        model.fit_target(out.features)
        with torch.inference_mode():
            out.features = torch.cat([
                model.encode_head(chunk.to(model.device)).cpu() for chunk in out.features.split(4096)])
    else:
        out = encode_dataset(model.encode_image, model.device, dataset, positions, batch_size=batch_size,
                             workers=workers, desc=f"features {dataset.name}")
    out.seconds = time.perf_counter() - start
    if writable and len(out.indices):
        blob = {"features": out.features.contiguous(), "indices": out.indices, "labels": out.labels,
                "skipped": torch.tensor(out.skipped, dtype=torch.long)}
        blob.update({f"state.{k}": v.detach().cpu().contiguous() for k, v in model.extra_state().items()})
        try:
            with atomic_path(path) as tmp:
                save_file(blob, str(tmp))
        except ReclipError as exc:  # the disk filled up meanwhile: the features are still good
            warnings.warn(f"feature cache not written: {exc}", RuntimeWarning, stacklevel=2)
    return out


def _cache_writable(folder: Path) -> bool:
    """True when a cache entry can be written in ``folder``; else one warning, and the run goes
    on without writing the cache (checked before the extraction, not after it)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temporary_sibling(folder / "probe").unlink()
        return True
    except OSError as exc:
        warnings.warn(f"the feature cache {folder} is not writable ({exc.strerror}); running without it "
                      f"(set {CACHE_ENV} to a writable folder, or pass --no-cache)", RuntimeWarning, stacklevel=3)
        return False


CACHE_KEYS = ("features", "indices", "labels", "skipped")


def _read_cache(path: Path) -> dict[str, torch.Tensor] | None:
    """A cache entry, or None when it is missing or damaged (then it is rewritten)."""
    if not os.path.isfile(path):  # False, not an error, in a folder we may not read
        return None
    try:
        blob = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        log.warning("ignoring damaged feature cache entry %s (%s)", path, exc)
        return None
    if any(k not in blob for k in CACHE_KEYS) or blob["features"].ndim != 2 or \
            len(blob["features"]) != len(blob["indices"]) or len(blob["labels"]) != len(blob["indices"]):
        log.warning("ignoring malformed feature cache entry %s", path)
        return None
    return blob
