"""Generated target domains for end-to-end tests of the tiny model.

The tiny model is randomly initialised, so no real class name means anything to it. To get a
domain where zero-shot is imperfect but better than chance and the images cluster (the
situation ReCLIP is made for), each class gets as prototype the random image (out of a pool)
that the tiny model's zero-shot head assigns to that class by the widest margin. Images
are noisy copies of their class prototype, so noise makes zero-shot err.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

NAMES = ("ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen")


def _prototypes(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """count x size x size x 3 smooth random images (upsampled 4 x 4 colour grids)."""
    grids = rng.integers(0, 256, (count, 4, 4, 3)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR)) for g in grids])


def make_clustered_folder(root: Path, model, classes: int = 4, per_class: int = 25, noise: float = 60.0,
                          seed: int = 0, size: int = 32, pool_size: int = 300,
                          templates: tuple[str, ...] = ("a photo of a {}.",)) -> Path:
    """Write ``root/<class name>/<i>.png`` and return ``root``; ``model`` is the tiny model."""
    from reclip.method.zeroshot import class_embeddings

    rng = np.random.default_rng(seed)
    pool = _prototypes(rng, pool_size, size)
    with torch.inference_mode():
        f = model.encode_image(torch.stack([model.preprocess(Image.fromarray(p)) for p in pool]))
        t = class_embeddings(model, [[n] for n in NAMES[:classes]], templates)
    logits = f @ t.T
    margin = torch.stack([logits[:, c] - torch.cat([logits[:, :c], logits[:, c + 1:]], 1).amax(1)
                          for c in range(classes)], 1)
    proto_of_name = margin.argmax(0).tolist()
    protos = pool
    for c, name in enumerate(NAMES[:classes]):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = protos[proto_of_name[c]] + rng.normal(0, noise, protos[0].shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root
