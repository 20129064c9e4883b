"""WebDataset shards as a dataset: ``wds:/path/{000000..000099}.tar``.

Layout as clip_benchmark writes it: each sample is ``<key>.jpg`` / ``.png`` / ``.webp`` (the
image) plus ``<key>.cls`` (the class index as text) inside plain tar shards, with
``classnames.txt`` (and optionally ``zeroshot_classification_templates.txt``) beside the
shards or one folder up. Nothing is unpacked: one scan of the tar headers records where each
image's bytes start, and images are then read by seeking into the shard, which gives the
random access that shuffled training needs (webdataset's own readers only stream).

A shard that stops without the tar end-of-archive marker (a copy or download cut at a member
boundary, or a damaged header) has lost samples that nothing else would notice: it gives a
warning naming the shard and the number of images read from it, and an error with ``strict``.
A ``.cls`` that is not a non-negative integer, or names a class beyond the class list, is an
error naming the shard and sample.
"""
from __future__ import annotations

import io
import os
import tarfile
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from braceexpand import UnbalancedBracesError, braceexpand
from PIL import Image

from reclip.data.images import Source, UnreadableImage, decode_image, describe_error
from reclip.data.prompts import read_classnames, read_templates
from reclip.errors import ReclipError

WDS_PREFIX = "wds:"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CLASSNAMES_FILE = "classnames.txt"
_TEMPLATES = "zeroshot_classification_templates.txt"
_END_MARKER = 2 * tarfile.BLOCKSIZE  # a tar ends with two zero blocks


class TarImages:
    """Images stored inside tar shards, read by (shard, offset, size)."""

    def __init__(self, members: list[tuple[str, str, int, int]]) -> None:
        self.members = members  # (shard path, member name, data offset, size)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, index: int) -> Image.Image:
        shard, name, offset, size = self.members[index]
        try:
            with open(shard, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as exc:
            raise UnreadableImage(f"cannot read image {name} in {shard} ({describe_error(exc)}); "
                                  "check that the shard is still there and readable") from exc
        return decode_image(io.BytesIO(data), f"{name} in {shard}", "rewrite that shard")


def shard_paths(spec: str) -> list[Path]:
    """The shard files named by ``wds:PATTERN`` (brace ranges expanded); all must exist."""
    try:
        paths = [Path(p).expanduser() for p in braceexpand(spec[len(WDS_PREFIX):])]
    except UnbalancedBracesError as exc:
        raise ReclipError(f"webdataset spec {spec} has unbalanced braces; "
                          "write wds:/path/{000000..000009}.tar") from exc
    missing = [p for p in paths if not p.is_file()]
    if not paths or missing:
        raise ReclipError(f"webdataset shard {missing[0] if missing else spec} does not exist; "
                          "pass wds:/path/{000000..000009}.tar naming existing .tar files")
    return paths


class _Shard(NamedTuple):
    """What one scan of a shard found."""

    images: dict[str, tuple[str, int, int]]  # key -> (member name, data offset, size) of its image
    classes: dict[str, int]  # key -> class index from its .cls member
    cut_at: int | None  # where the tar data stops without an end-of-archive marker (None: complete)


def _scan(shard: Path) -> _Shard:
    """The samples of one shard, and whether it is cut short.

    tarfile stops quietly at a missing, cut or damaged header, so completeness is checked
    here: a complete tar has its end-of-archive marker (two zero blocks) right after the
    last member. A last member whose data runs past the end of the file is dropped (tarfile
    would raise on it).
    """
    images, classes = {}, {}
    end = 0
    try:
        with open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            size = os.fstat(f.fileno()).st_size
            for member in tar:
                if member.offset_data + member.size > size:  # the file stops inside this member's data
                    end = size
                    break
                end = member.offset_data + _blocks(member.size)
                key, dot, ext = member.name.rpartition(".")
                if member.isfile() and dot:
                    if "." + ext.lower() in _IMAGE_SUFFIXES:
                        images[key] = (member.name, member.offset_data, member.size)
                    elif ext == "cls":
                        classes[key] = _class_index(tar.extractfile(member).read(), shard, member.name)
                if end > size:  # its padding is cut: nothing follows
                    break
            f.seek(min(end, size))
            complete = end <= size and f.read(_END_MARKER) == bytes(_END_MARKER)
    except (tarfile.TarError, OSError) as exc:
        raise ReclipError(f"cannot read webdataset shard {shard} ({describe_error(exc)}); "
                          "shards must be uncompressed .tar files") from exc
    return _Shard(images, classes, None if complete else min(end, size))


def _blocks(size: int) -> int:
    """``size`` rounded up to whole tar blocks."""
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _class_index(data: bytes, shard: Path, member: str) -> int:
    text = data.decode("utf-8", errors="replace").strip()
    if not text.isdecimal():
        raise ReclipError(f"webdataset shard {shard}: {member} holds {text[:20]!r}, not a class index; "
                          "each .cls member must hold one integer from 0")
    return int(text)


def check_labels(source: Source, num_classes: int, origin: str) -> None:
    """Raise ``ReclipError`` naming the shard and sample of the first label >= ``num_classes``
    in a source made by ``wds_source``; ``origin`` says where the class count comes from."""
    assert isinstance(source.images, TarImages)
    beyond = np.flatnonzero(source.labels >= num_classes)
    if len(beyond):
        shard, name, _, _ = source.images.members[beyond[0]]
        raise ReclipError(
            f"webdataset shard {shard}: sample {name.rpartition('.')[0]} has class {source.labels[beyond[0]]} but "
            f"{origin} lists {num_classes} classes (indices 0..{num_classes - 1}); fix its .cls or the class list"
        )


def _beside(shards: list[Path], name: str) -> Path | None:
    for folder in (shards[0].parent, shards[0].parent.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def wds_source(spec: str, strict: bool = False) -> tuple[Source, list[list[str]] | None, list[str] | None, str]:
    """(source, class names from classnames.txt or None, templates or None, root folder).

    A shard cut short (a copy or download interrupted) is reported with a warning naming
    it and the samples read from it, or raises ``ReclipError`` when ``strict``.
    """
    shards = [Path(os.path.abspath(shard)) for shard in shard_paths(spec)]  # immune to a later os.chdir
    members, labels = [], []
    for shard in shards:
        found = _scan(shard)
        if found.cut_at is not None:
            _report_cut(shard, found, strict)
        for key in sorted(found.images):
            name, offset, size = found.images[key]
            members.append((str(shard), name, offset, size))
            labels.append(found.classes.get(key, -1))
    if not members:
        raise ReclipError(f"no images (.jpg/.png/.webp) in the shards of {spec}")
    names_file, templates_file = _beside(shards, CLASSNAMES_FILE), _beside(shards, _TEMPLATES)
    names = read_classnames(names_file) if names_file else None
    templates = read_templates(templates_file) if templates_file else None
    source = Source(images=TarImages(members), labels=np.array(labels, dtype=np.int64), classnames=names,
                    files=[str(s) for s in shards])
    if names is not None:
        check_labels(source, len(names), str(names_file))
    return source, names, templates, str(shards[0].parent)


def _report_cut(shard: Path, found: _Shard, strict: bool) -> None:
    problem = (f"webdataset shard {shard} is cut short or damaged: its tar data stops at byte {found.cut_at} "
               f"without an end-of-archive marker, after {len(found.images)} images")
    if strict:
        raise ReclipError(f"{problem}; copy or download it again")
    warnings.warn(f"{problem}; the samples after them are missing (copy or download it again; "
                  "--strict makes this an error)", stacklevel=3)
