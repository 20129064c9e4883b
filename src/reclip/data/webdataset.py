"""WebDataset shards as a dataset: ``wds:/path/{000000..000099}.tar``.

Layout as clip_benchmark writes it: each sample is ``<key>.jpg`` / ``.png`` / ``.webp`` (the
image) plus ``<key>.cls`` (the class index as text) inside plain tar shards, with
``classnames.txt`` (and optionally ``zeroshot_classification_templates.txt``) beside the
shards or one folder up. Nothing is unpacked: one scan of the tar headers records where each
image's bytes start, and images are then read by seeking into the shard, which gives the
random access that shuffled training needs (webdataset's own readers only stream).
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from braceexpand import braceexpand
from PIL import Image

from reclip.data.images import Source, UnreadableImage, describe_error, to_rgb
from reclip.data.prompts import read_classnames, read_templates
from reclip.errors import ReclipError

WDS_PREFIX = "wds:"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CLASSNAMES_FILE = "classnames.txt"
_TEMPLATES = "zeroshot_classification_templates.txt"


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
                with Image.open(io.BytesIO(f.read(size))) as image:
                    image.load()
                    return to_rgb(image)
        except Exception as exc:
            raise UnreadableImage(f"cannot read image {name} in {shard} ({describe_error(exc)}); "
                                  "rewrite that shard") from exc


def shard_paths(spec: str) -> list[Path]:
    """The shard files named by ``wds:PATTERN`` (brace ranges expanded); all must exist."""
    paths = [Path(p).expanduser() for p in braceexpand(spec[len(WDS_PREFIX):])]
    missing = [p for p in paths if not p.is_file()]
    if not paths or missing:
        raise ReclipError(f"webdataset shard {missing[0] if missing else spec} does not exist; "
                          "pass wds:/path/{000000..000009}.tar naming existing .tar files")
    return paths


def _scan(shard: Path) -> tuple[dict[str, tuple[str, int, int]], dict[str, int]]:
    """(key -> (member name, data offset, size) of its image, key -> class index) of one shard."""
    images, classes = {}, {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, dot, ext = member.name.rpartition(".")
                if not dot:
                    continue
                if "." + ext.lower() in _IMAGE_SUFFIXES:
                    images[key] = (member.name, member.offset_data, member.size)
                elif ext == "cls":
                    classes[key] = int(tar.extractfile(member).read().decode().strip())
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise ReclipError(f"cannot read webdataset shard {shard} ({describe_error(exc)}); "
                          "shards must be uncompressed .tar files") from exc
    return images, classes


def _beside(shards: list[Path], name: str) -> Path | None:
    for folder in (shards[0].parent, shards[0].parent.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def wds_source(spec: str) -> tuple[Source, list[list[str]] | None, list[str] | None, str]:
    """(source, class names from classnames.txt or None, templates or None, root folder)."""
    shards = shard_paths(spec)
    members, labels = [], []
    for shard in shards:
        images, classes = _scan(shard)
        for key in sorted(images):
            name, offset, size = images[key]
            members.append((str(shard), name, offset, size))
            labels.append(classes.get(key, -1))
    if not members:
        raise ReclipError(f"no images (.jpg/.png/.webp) in the shards of {spec}")
    names_file, templates_file = _beside(shards, CLASSNAMES_FILE), _beside(shards, _TEMPLATES)
    names = read_classnames(names_file) if names_file else None
    templates = read_templates(templates_file) if templates_file else None
    source = Source(images=TarImages(members), labels=np.array(labels, dtype=np.int64), classnames=names,
                    files=[str(s) for s in shards])
    return source, names, templates, str(shards[0].parent)
