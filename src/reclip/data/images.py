"""Finding image files and decoding them robustly into RGB PIL images.

Everything a dataset reads goes through ``to_rgb``, so grey, palette, transparent,
CMYK and 16-bit images all reach the model as 8-bit RGB. A file that cannot be
decoded raises ``UnreadableImage`` (a ``ReclipError`` naming the file); the dataset
decides whether to skip it or stop.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from reclip.errors import ReclipError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
_DEEP_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_UINT16_TO_UINT8 = 257.0  # 65535 / 255


class UnreadableImage(ReclipError):
    """An image file (or stored image) that cannot be decoded."""


class ImageSource(Protocol):
    """Indexable images: ``source[i]`` is an RGB PIL image or raises ``UnreadableImage``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Image.Image: ...


@dataclass
class Source:
    """What a loader found: the images, their labels and what is known about classes.

    ``labels`` index ``classnames`` (-1 where unknown); each class is a list of synonyms,
    the display name first. ``classnames`` is None when the data itself does not name
    its classes (a flat folder, integer CSV labels).
    ``files`` are the files the images are read from, for fingerprinting.
    """

    images: ImageSource
    labels: np.ndarray
    classnames: list[list[str]] | None
    paths: list[str] | None = None
    files: Sequence[str] = field(default_factory=list)


class FileImages:
    """Images stored one per file."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:
        return open_image(self.paths[index])


class ArrayImages:
    """Images stored in one uint8 array of shape N x H x W (grey) or N x H x W x 3."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int) -> Image.Image:
        return to_rgb(Image.fromarray(self.array[index]))


def is_image_file(path: Path) -> bool:
    """True for a visible file with a common image extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[str]:
    """Every image file below ``folder`` (recursively, skipping hidden folders), sorted."""
    found: list[str] = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(parent, f) for f in files if is_image_file(Path(f)))
    return sorted(found)


def scan_class_folders(folder: Path) -> Source | None:
    """Read ``folder/<class>/**/<image>``: one class per sub-folder, in sorted order.

    Class names are the folder names with ``_`` shown as a space. Returns None when no
    sub-folder holds an image (the folder is flat or empty).
    """
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [list_images(sub) for sub in subfolders]
    if not any(per_class):
        return None
    paths = [path for images in per_class for path in images]
    labels = np.repeat(np.arange(len(per_class), dtype=np.int64), [len(images) for images in per_class])
    names = [[sub.name.replace("_", " ")] for sub in subfolders]
    return Source(FileImages(paths), labels, names, paths=paths, files=paths)


def open_image(path: str | Path) -> Image.Image:
    """Decode an image file completely and return it as RGB; raise ``UnreadableImage`` if it fails."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so truncated files fail here and not later
            return to_rgb(image)
    # Decoders for untrusted files raise many types (OSError, SyntaxError, ValueError,
    # DecompressionBombError, ...): any failure means this one file is unusable.
    except Exception as exc:
        raise UnreadableImage(f"cannot read image {path} ({describe_error(exc)}); replace or delete the file") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    16-bit and 32-bit grey is scaled to 8 bits, transparency is composited on white,
    palette, CMYK, grey and 1-bit images are converted.
    """
    if image.mode in _DEEP_MODES:
        image = _to_8bit_grey(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _ALPHA_MODES:
        background = Image.new("RGBA", image.size, _WHITE)
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    """Map a 16-bit, 32-bit integer or float grey image onto 0..255 ('L').

    ``I;16*`` images use the full 16-bit range. For ``I`` and ``F`` the container does
    not say the range: values above 255 are taken as 16-bit, floats up to 1.0 as 0..1,
    anything else as 8-bit.
    """
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max(initial=0.0))
    if image.mode.startswith("I;16") or peak > 255:
        values = values / _UINT16_TO_UINT8
    elif image.mode == "F" and peak <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def describe_error(exc: BaseException) -> str:
    """An exception as one short line: 'TypeName: message'."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
