"""Finding image files and decoding them robustly into upright RGB PIL images.

Folder walks visit each real folder and file once, however symbolic links loop. Everything
a dataset reads goes through ``to_rgb``, so grey, palette, transparent, CMYK and 16-bit
images all reach the model as 8-bit RGB; images read from files are first turned as their
EXIF orientation says (phone photos). A file that cannot be decoded raises
``UnreadableImage`` (a ``ReclipError`` naming the file); the dataset decides whether to
skip it or stop.
"""
from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
from PIL import Image, ImageOps

from reclip.errors import ReclipError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
_DEEP_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_UINT16_TO_UINT8 = 257.0  # 65535 / 255
_WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):"  # torch's ExceptionWrapper.reraise
_REPEATED = "links leading to a folder or file already visited"


class UnreadableImage(ReclipError):
    """An image file (or stored image) that cannot be decoded.

    Raised in a DataLoader worker, it reaches the main process re-made by torch from a
    message holding the worker's whole traceback; the message is then cut back to the
    original one line (the traceback's last line, without the class name).
    """

    def __init__(self, message: str) -> None:
        if _WORKER_TRACEBACK in message:
            last = message.rstrip().rsplit("\n", 1)[-1]
            message = last.removeprefix(f"{type(self).__module__}.{type(self).__qualname__}: ")
        super().__init__(message)


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
    ``files`` are the files the images are read from, for fingerprinting; ``unlisted`` counts
    the entries of the data that were found but are not among the images (broken links...), by kind.
    """

    images: ImageSource
    labels: np.ndarray
    classnames: list[list[str]] | None
    paths: list[str] | None = None
    files: Sequence[str] = field(default_factory=list)
    unlisted: dict[str, int] = field(default_factory=dict)  # entries found but not read, by kind


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


def name_key(name: str) -> str:
    """The form in which class names compare: case, '_' versus space and repeated spaces ignored."""
    return " ".join(name.replace("_", " ").split()).casefold()


def walk_images(folder: Path) -> dict[str, list[str]]:
    """Every image file below ``folder``, grouped by the top-level sub-folder that holds it.

    Keys are the names of ``folder``'s visible sub-folders (one entry each, possibly empty)
    and ``""`` for the images directly in ``folder``; each list is sorted. Hidden files and
    folders are skipped. Each real folder and file is visited once: plain entries first,
    symbolic links after them, so a link never takes images from the folder that holds
    them. A link to a folder or file already visited (a loop such as ``ln -s . again``, or
    a second link to one place), a broken link and an unreadable sub-folder are skipped and
    reported in one warning. Raises ``ReclipError`` when ``folder`` itself cannot be read.
    """
    return scan_images(folder)[0]


def scan_images(folder: Path) -> tuple[dict[str, list[str]], dict[str, int]]:
    """``walk_images(folder)`` and how many entries it skipped, by kind ("broken links",
    "unreadable folders", links to places already visited); kinds with none are left out."""
    walk = _Walk(folder)
    walk.run()
    walk.warn()
    skipped = {what: len(paths) for what, paths in walk.skipped.items() if paths}
    return {key: sorted(paths) for key, paths in walk.found.items()}, skipped


def scan_class_folders(folder: Path) -> Source | None:
    """Read ``folder/<class>/**/<image>``: one class per sub-folder, in sorted order.

    Class names are the folder names with ``_`` shown as a space. Returns None when no
    sub-folder holds an image (the folder is flat or empty).
    """
    return class_source(folder, walk_images(folder))


def class_source(folder: Path, found: dict[str, list[str]]) -> Source | None:
    """The labelled images of ``walk_images(folder)``'s result, or None when no sub-folder holds an image.

    Raises ``ReclipError`` when two class folders differ only by case, '_' or spaces.
    """
    subfolders = sorted(key for key in found if key)
    if not any(found[key] for key in subfolders):
        return None
    first: dict[str, str] = {}
    for sub in subfolders:
        other = first.setdefault(name_key(sub), sub)
        if other != sub:
            raise ReclipError(
                f"class folders '{other}' and '{sub}' in {folder} differ only by case, '_' or spaces, "
                "so they would name the same class; merge them or rename one"
            )
    paths = [path for sub in subfolders for path in found[sub]]
    labels = np.repeat(np.arange(len(subfolders), dtype=np.int64), [len(found[sub]) for sub in subfolders])
    names = [[sub.replace("_", " ")] for sub in subfolders]
    return Source(FileImages(paths), labels, names, paths=paths, files=paths)


class _Walk:
    """One visit of a folder tree for ``walk_images``.

    Plain folders are listed depth-first; symbolic links are queued and followed only when
    no plain folder is left. Every folder listed (or queued to be) has its real path in
    ``_dirs``, so a link whose target is there, or whose target file lies in such a folder,
    leads somewhere already visited.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.found: dict[str, list[str]] = {"": []}
        self._dirs: set[str] = set()
        self._linked_files: set[str] = set()
        self._plain: list[tuple[str | None, str, str]] = []  # (key, path, real path) of folders to list
        self._links: deque[tuple[str | None, str]] = deque()  # (key, path) of links to follow
        self.skipped: dict[str, list[str]] = {_REPEATED: [], "broken links": [], "unreadable folders": []}
        real = os.path.realpath(root)
        self._dirs.add(real)
        try:
            with os.scandir(root) as entries:
                top = sorted(entries, key=lambda entry: entry.name)
        except OSError as exc:
            raise ReclipError(
                f"cannot read folder {root} ({describe_error(exc)}); check that it exists and is readable"
            ) from exc
        for entry in top:
            self._enter(None, entry, real)

    def run(self) -> None:
        while self._plain or self._links:
            if self._plain:
                key, path, real = self._plain.pop()
                for entry in self._list(path):
                    self._enter(key, entry, real)
            else:
                self._follow(*self._links.popleft())

    def warn(self) -> None:
        parts = [f"{len(paths)} {what} (such as {paths[0]})" for what, paths in self.skipped.items() if paths]
        if parts:
            warnings.warn(f"{self.root}: skipped {', '.join(parts)}", stacklevel=3)

    def _list(self, path: str) -> list[os.DirEntry]:
        try:
            with os.scandir(path) as entries:
                return sorted(entries, key=lambda entry: entry.name)
        except OSError:  # a sub-folder we may not read: reported by warn(), the rest of the tree is used
            self.skipped["unreadable folders"].append(path)
            return []

    def _enter(self, key: str | None, entry: os.DirEntry, real_parent: str) -> None:
        """Visit one entry of a folder; ``key`` is its top-level folder, None for ``root``'s own entries."""
        if entry.name.startswith("."):
            return
        is_dir = entry.is_dir()
        if not is_dir and not is_image_file(Path(entry.name)):
            return
        if entry.is_symlink():
            self._links.append((key, entry.path))
        elif is_dir:
            self._add_dir(entry.name if key is None else key, entry.path, os.path.join(real_parent, entry.name))
        elif self._linked_files and os.path.join(real_parent, entry.name) in self._linked_files:
            self.skipped[_REPEATED].append(entry.path)
        else:
            self.found["" if key is None else key].append(entry.path)

    def _follow(self, key: str | None, path: str) -> None:
        real = os.path.realpath(path)
        if os.path.isdir(real):
            self._add_dir(os.path.basename(path) if key is None else key, path, real)
        elif not os.path.isfile(real):
            self.skipped["broken links"].append(path)
        elif real in self._linked_files or (os.path.dirname(real) in self._dirs and is_image_file(Path(real))):
            self.skipped[_REPEATED].append(path)
        else:
            self._linked_files.add(real)
            self.found["" if key is None else key].append(path)

    def _add_dir(self, key: str, path: str, real: str) -> None:
        if real in self._dirs:
            self.skipped[_REPEATED].append(path)
            return
        self._dirs.add(real)
        self.found.setdefault(key, [])
        self._plain.append((key, path, real))


def open_image(path: str | Path) -> Image.Image:
    """Decode an image file completely and return it upright (EXIF orientation applied) as RGB.

    Raises ``UnreadableImage`` naming the file if it cannot be decoded.
    """
    return decode_image(path, str(path), "replace or delete the file")


def decode_image(file: str | Path | BinaryIO, name: str, fix: str) -> Image.Image:
    """Decode an image (a path or a binary file object) completely, turned upright as its EXIF
    orientation says, as RGB; raise ``UnreadableImage`` with ``name`` and ``fix`` if it fails."""
    try:
        with Image.open(file) as image:
            image.load()  # decode now, so truncated files fail here and not later
            ImageOps.exif_transpose(image, in_place=True)
            return to_rgb(image)
    # Decoders for untrusted files raise many types (OSError, SyntaxError, ValueError,
    # DecompressionBombError, ...): any failure means this one image is unusable.
    except Exception as exc:
        raise UnreadableImage(f"cannot read image {name} ({describe_error(exc)}); {fix}") from exc


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
