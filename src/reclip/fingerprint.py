"""Content fingerprints that key caches and checkpoints: a file or folder by what it holds,
a model by its weights and current state."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .models.base import DualEncoder

EDGE_BYTES = 1 << 20  # hash the first and the last MB of each file, with its identity and times
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".model", ".txt")


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's ``stat_key`` and first and last MB: changes whenever the file is
    rewritten, without reading gigabytes of weights."""
    path = Path(path)
    stat = path.stat()
    h = hashlib.sha256(stat_key(stat).encode())
    with open(path, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        if stat.st_size > 2 * EDGE_BYTES:
            f.seek(-EDGE_BYTES, os.SEEK_END)
            h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


def stat_key(stat: os.stat_result) -> str:
    """What proves a file unchanged without reading it: size, modification time, and the inode
    and its change time, which no copy (``cp -p``, ``rsync -t``) and no write can keep."""
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}:{stat.st_ctime_ns}"


def folder_fingerprint(folder: str | os.PathLike[str]) -> str:
    """``file_fingerprint`` of every weights or configuration file below ``folder``."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES:
            h.update(f"{path.relative_to(folder)}\0{file_fingerprint(path)}\n".encode())
    return h.hexdigest()


def weights_fingerprint(model: DualEncoder) -> str:
    """What the model's weights are: the content of a local weights file or folder, else the
    spec and tag (a hub tag names fixed weights)."""
    for text in (model.pretrained, model.spec.split(":", 1)[-1]):
        if text and Path(text).expanduser().is_file():
            return "file:" + file_fingerprint(Path(text).expanduser())
        if text and Path(text).expanduser().is_dir():
            return "folder:" + folder_fingerprint(Path(text).expanduser())
    return f"name:{model.spec}|{model.pretrained}"


def tensors_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors' names, dtypes and values."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def image_state_fingerprint(model: DualEncoder) -> str:
    """The image tower's current norm affines (an adapted tower embeds differently) and the
    dtype and device kind its features are computed with."""
    param = next(model.module.parameters())
    return f"{param.dtype}|{param.device.type}|" + tensors_fingerprint(model.named_image_norm_parameters())
