"""``load_dataset``: one entry point for class folders, flat folders, CSV/TSV lists and benchmarks.

Every form becomes an ``ImageDataset`` whose items are ``(image, index, label)``; an
image that cannot be decoded comes back as None (with one warning naming the file, once per
dataset however many DataLoader workers and passes read it) so a long run is not lost to one
bad file, and ``collate`` drops it from the batch and reports its index. With ``strict`` it
raises ``UnreadableImage`` instead, with a one-line message also when raised in a worker.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from reclip.data.benchmarks import BENCHMARKS, benchmark_root, canonical_name, load_benchmark
from reclip.data.images import (
    IMAGE_EXTENSIONS,
    FileImages,
    Source,
    UnreadableImage,
    class_source,
    name_key,
    scan_images,
)
from reclip.data.webdataset import CLASSNAMES_FILE, WDS_PREFIX, check_labels, wds_source
from reclip.data.prompts import benchmark_templates, check_classnames, get_classnames, read_classnames
from reclip.errors import ArgumentError, ReclipError
from reclip.fingerprint import stat_key

ClassNames = list[list[str]]
ClassNamesArg = str | os.PathLike[str] | Sequence[str | Sequence[str]] | None  # a file or a list
Item = tuple[Any, int, int]  # (image or None, index, label)

_TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_OTHER_DELIMITERS = (";", "\t", ",", "|")  # tried, in order, when a table has one column under its own
_DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "'|'"}
UNREADABLE = "unreadable images"  # the kind of skipped entry that failed to decode
_NEED_CLASSNAMES = "pass --classnames FILE (one class name per line)"


class SkippedImageWarning(UserWarning):
    """An unreadable image was skipped (its item's image is None)."""


class ImageDataset(Dataset):
    """Images with optional labels and the class names they refer to.

    Attributes: ``name`` (benchmark name or folder/file name), ``spec`` (what was
    passed to ``load_dataset``), ``root`` (resolved folder or file), ``split``,
    ``classnames`` (one list of synonyms per class, display name first), ``labels``
    (int64, one per image, -1 where unknown), ``paths`` (image files, or None when the
    images are stored in archives or arrays), ``templates`` (the benchmark's prompt
    templates, or None), ``transform`` (applied to each RGB PIL image) and ``strict``
    (raise on unreadable images instead of skipping them).
    """

    def __init__(
        self,
        source: Source,
        classnames: ClassNames,
        *,
        name: str,
        spec: str,
        root: str,
        split: str,
        templates: list[str] | None = None,
        transform: Callable[[Any], Any] | None = None,
        strict: bool = False,
    ) -> None:
        if len(source.labels) != len(source.images):
            raise ValueError(f"{len(source.images)} images but {len(source.labels)} labels")
        self.name = name
        self.spec = spec
        self.root = root
        self.split = split
        self.classnames = classnames
        self.labels = np.asarray(source.labels, dtype=np.int64)
        self.paths = source.paths
        self.templates = templates
        self.transform = transform
        self.strict = strict
        self._images = source.images
        self._files = list(source.files)
        # which images were reported unreadable, in shared memory so that DataLoader worker
        # processes (fresh copies on every pass) report each image once in all
        self._warned = torch.zeros(len(self.labels), dtype=torch.bool).share_memory_()
        self._selection = ""  # set by subset(): which images of the full dataset these are
        self.unlisted = dict(source.unlisted)  # entries of the data not among the images, by kind

    @property
    def is_subset(self) -> bool:
        """True for a dataset made by ``subset`` (or ``random_subset``)."""
        return bool(self._selection)

    def skipped_counts(self, unreadable: Sequence[int]) -> dict[str, Any]:
        """``{"skipped": total, "skipped_by_kind": {kind: count}}``: every entry of the data that
        was not read: the ``unreadable`` image indices of a pass, and what loading left out
        (broken links, unreadable folders, images outside the class folders...). A subset
        counts only its own unreadable images."""
        kinds = {**self.unlisted, **({UNREADABLE: len(unreadable)} if len(unreadable) else {})}
        return {"skipped": sum(kinds.values()), "skipped_by_kind": kinds}

    @property
    def has_labels(self) -> bool:
        """True when at least one image has a known label."""
        return bool((self.labels >= 0).any())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Item:
        """``(transformed image, index, label)``; the image is None when it cannot be read."""
        label = int(self.labels[index])
        try:
            image = self._images[index]
        except UnreadableImage as exc:
            if self.strict:
                raise
            self._warn_once(index, exc)
            return None, index, label
        return (self.transform(image) if self.transform is not None else image), index, label

    def subset(self, indices: Sequence[int]) -> "ImageDataset":
        """The images at ``indices`` (in that order) as a dataset of their own, indexed from 0."""
        idx = _positions(indices, len(self))
        source = Source(images=_Selection(self._images, idx), labels=self.labels[idx],
                        classnames=self.classnames,
                        paths=[self.paths[i] for i in idx] if self.paths is not None else None,
                        files=self._files)
        sub = ImageDataset(source, self.classnames, name=self.name, spec=self.spec, root=self.root,
                           split=self.split, templates=self.templates, transform=self.transform,
                           strict=self.strict)
        sub.unlisted = {}
        sub._selection = hashlib.sha256(self._selection.encode() + idx.tobytes()).hexdigest()[:16]
        return sub

    def fingerprint(self) -> str:
        """A stable hash of what the images are: name, resolved root, split, size, labels and
        each file's ``fingerprint.stat_key`` (and the selection, for a subset); how the spec was
        typed does not matter.

        Use it to key cached image features (together with the model and its transform).
        """
        digest = hashlib.sha256(json.dumps([self.name, self.root, self.split, len(self), self._selection]).encode())
        digest.update(self.labels.tobytes())  # the cache stores labels: the same files under other class names differ
        for file in self._files:
            try:
                digest.update(f"{file}\0{stat_key(os.stat(file))}\n".encode())
            except OSError:
                digest.update(f"{file}\0missing\n".encode())
        return digest.hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, images={len(self)}, "
            f"classes={len(self.classnames)}, labelled={int((self.labels >= 0).sum())})"
        )

    def _warn_once(self, index: int, exc: UnreadableImage) -> None:
        if not self._warned[index]:
            self._warned[index] = True
            warnings.warn(f"skipping unreadable image: {exc}", SkippedImageWarning, stacklevel=3)


def _positions(indices: Sequence[int], size: int) -> np.ndarray:
    """``indices`` as an int64 array, each a whole number in [0, size)."""
    if isinstance(indices, (str, bytes)) or not isinstance(indices, (Sequence, np.ndarray, torch.Tensor)):
        raise ArgumentError("indices", f"must be a list of image positions; got {type(indices).__name__}")
    idx = np.asarray(indices)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise ArgumentError("indices", f"must be a flat list of whole numbers; got dtype {idx.dtype} and shape "
                                       f"{idx.shape}")
    bad = idx[(idx < 0) | (idx >= size)]
    if len(bad):
        raise ArgumentError("indices", f"holds {int(bad[0])}, outside the dataset's {size} images (0..{size - 1})")
    return idx.astype(np.int64)


class _Selection(Sequence):
    """The images of a source at chosen positions (lazy: nothing is decoded here)."""

    def __init__(self, images: Sequence[Any], indices: np.ndarray) -> None:
        self._images, self._indices = images, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> Any:
        return self._images[int(self._indices[i])]


def collate(batch: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """DataLoader ``collate_fn`` that drops unreadable images.

    Returns ``(images B x C x H x W, indices (B,), labels (B,), skipped)`` where
    ``skipped`` lists the dataset indices whose image was None. ``images`` has shape
    (0, 0, 0, 0) when every image of the batch was skipped.
    """
    kept = [item for item in batch if item[0] is not None]
    images = torch.stack([image for image, _, _ in kept]) if kept else torch.empty(0, 0, 0, 0)
    indices = torch.tensor([index for _, index, _ in kept], dtype=torch.long)
    labels = torch.tensor([label for _, _, label in kept], dtype=torch.long)
    return images, indices, labels, [index for image, index, _ in batch if image is None]


def load_dataset(
    spec: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    split: str = "test",
    transform: Callable[[Any], Any] | None = None,
    classnames: ClassNamesArg = None,
    strict: bool = False,
    *,
    download: bool = True,
) -> ImageDataset:
    """Load images from a folder, a CSV/TSV list or a named benchmark.

    ``spec`` forms:

    - a folder with one sub-folder per class (sorted order gives the label index; folders
      whose names differ only by case, ``_`` or spaces are refused). Each real folder and
      file is read once, however symbolic links loop (see ``images.walk_images``);
    - a flat folder of images, with ``classnames`` (labels are then all -1);
    - a ``.csv``/``.tsv`` file of ``path[,label]`` rows (optional header; relative paths
      are relative to the file; a label is a class index or a class name; empty = unknown);
    - ``wds:/path/{000000..000099}.tar``: WebDataset shards (image + ``.cls`` per sample,
      ``classnames.txt`` beside them), read in place; a shard cut short gives a warning
      naming it (an error when ``strict``);
    - a benchmark name such as ``cifar10`` or ``fashion-mnist`` (case, ``-`` and ``_`` do
      not matter), read from ``root`` (default ``$RECLIP_DATA/<name>`` or
      ``~/.cache/reclip/datasets/<name>``), downloaded there when ``download`` is True and
      the data is missing. A bare benchmark name always means the benchmark; write
      ``./cifar10`` for a local folder of that name.

    ``classnames`` (a class-names file or a list; an entry may be a list of synonyms)
    replaces the class names found in the data. It is matched by name when every found
    class appears in it, else by position (the counts must then be equal).
    ``root`` is only used for benchmarks; ``split`` only selects a benchmark split.
    Raises ``ReclipError`` with a one-line message for any problem the user can fix.
    """
    if not isinstance(spec, (str, os.PathLike)) or not os.fspath(spec).strip():
        raise ArgumentError("spec", f"must be a folder, a CSV/TSV file or a benchmark name; got {spec!r}")
    if transform is not None and not callable(transform):
        raise ArgumentError("transform", f"must be callable (such as model.preprocess) or None; got {transform!r}")
    for name, flag in (("strict", strict), ("download", download)):
        if not isinstance(flag, bool):
            raise ArgumentError(name, f"must be True or False; got {flag!r}")
    if not isinstance(split, str):
        raise ArgumentError("split", f"must be a split name such as 'test'; got {split!r}")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ArgumentError("root", f"must be a folder path or None; got {root!r}")
    given = _given_classnames(classnames)
    text = os.fspath(spec)
    if text.startswith(WDS_PREFIX):
        return _webdataset(text, given, transform, strict)
    name = None if isinstance(spec, os.PathLike) or _looks_like_path(text) else canonical_name(text)
    if name is not None:
        folder = benchmark_root(name, root)
        source, names = _benchmark_source(name, folder, split, given, download)
        return ImageDataset(
            source, names, name=name, spec=text, root=str(folder), split=split,
            templates=benchmark_templates(name), transform=transform, strict=strict,
        )
    # absolute from here on, so that a later os.chdir cannot make the images unreachable
    path = Path(os.path.abspath(Path(text).expanduser()))
    if path.is_dir():
        source, names = _folder_source(path, given)
    elif path.is_file() and path.suffix.lower() in _TABLE_DELIMITERS:
        source, names = _table_source(path, given)
    else:
        raise _bad_spec(text, path)
    resolved = path.resolve()
    return ImageDataset(
        source, names, name=resolved.stem if resolved.is_file() else resolved.name, spec=text,
        root=str(resolved), split=split, transform=transform, strict=strict,
    )


def _webdataset(spec: str, given: GivenClasses | None, transform: Callable[[Any], Any] | None,
                strict: bool) -> ImageDataset:
    source, names, templates, root = wds_source(spec, strict)
    if names is None:
        if given is None:
            raise ReclipError(f"no {CLASSNAMES_FILE} beside the shards of {spec}; {_NEED_CLASSNAMES}")
        check_labels(source, len(given.names), given.origin)
    found = f"the shards of {spec} have {len(names or [])} classes in {CLASSNAMES_FILE}"
    source, names = _attach_classnames(source, given, found, by_position=True)
    return ImageDataset(source, names, name=Path(root).name, spec=spec, root=root, split="",
                        templates=templates, transform=transform, strict=strict)


# --- class names given by the user ------------------------------------------------------

class GivenClasses(NamedTuple):
    """Class names and where they come from ("class-names file X", "adapter Y"), for messages;
    ``load_dataset(classnames=GivenClasses(...))`` names that origin in its errors."""

    names: ClassNames
    origin: str


def _given_classnames(classnames: ClassNamesArg) -> GivenClasses | None:
    """The user's class names (file or list) with a description of where they came from."""
    if classnames is None:
        return None
    if isinstance(classnames, GivenClasses):
        return GivenClasses(check_classnames(classnames.names), classnames.origin)
    if isinstance(classnames, (str, os.PathLike)):
        return GivenClasses(read_classnames(classnames), f"class-names file {os.fspath(classnames)}")
    return GivenClasses(check_classnames(classnames), "the classnames list")


def _attach_classnames(
    source: Source, given: GivenClasses | None, found: str, by_position: bool
) -> tuple[Source, ClassNames]:
    """The final class list, with ``source.labels`` re-indexed into it when needed.

    ``found`` describes the classes of the data for messages ("folder X has 3 class
    folders"). Given names replace found ones by name, or else by position when
    ``by_position`` and the counts agree.
    """
    if given is None:
        assert source.classnames is not None  # callers ask for class names before this
        return source, source.classnames
    if source.classnames is None:
        top = int(source.labels.max(initial=-1))
        if top >= len(given.names):
            raise ReclipError(
                f"{found} uses label {top} but {given.origin} lists {len(given.names)} classes "
                "(labels count from 0); give one class per label"
            )
        return source, given.names
    mapping = _map_by_name(source.classnames, given.names)
    if (mapping >= 0).all():
        labels = np.where(source.labels >= 0, mapping[source.labels], -1)
        return replace(source, labels=labels), given.names
    if by_position and len(source.classnames) == len(given.names):
        return source, given.names
    missing = source.classnames[int(np.argmin(mapping))][0]
    raise ReclipError(
        f"{given.origin} lists {len(given.names)} classes but {found}, and it does not name '{missing}'; "
        "give one name per class of the data (synonyms separated by |)"
    )


def _map_by_name(found: ClassNames, given: ClassNames) -> np.ndarray:
    """For each found class, the index of the given class sharing one of its names, or -1."""
    index: dict[str, int] = {}
    for i, synonyms in enumerate(given):
        for synonym in synonyms:
            index.setdefault(name_key(synonym), i)
    return np.array(
        [next((index[name_key(s)] for s in synonyms if name_key(s) in index), -1) for synonyms in found],
        dtype=np.int64,
    )


# --- the forms of spec ------------------------------------------------------------------

def _benchmark_source(
    name: str, folder: Path, split: str, given: GivenClasses | None, download: bool
) -> tuple[Source, ClassNames]:
    """A benchmark's data, named by the class names shipped in reclip/data/resources where there are some."""
    source = load_benchmark(name, folder, split, download)
    shipped = get_classnames(name)
    if shipped is not None:
        if source.classnames is not None and len(source.classnames) != len(shipped):
            raise ReclipError(
                f"the {name} data at {folder} has {len(source.classnames)} classes but {name} has {len(shipped)}; "
                "check that the data is complete"
            )
        source = replace(source, classnames=shipped)
    if source.classnames is None:
        raise ReclipError(f"the {name} data at {folder} does not name its classes; {_NEED_CLASSNAMES}")
    return _attach_classnames(source, given, f"benchmark {name} has {len(source.classnames)} classes", by_position=True)


def _folder_source(folder: Path, given: GivenClasses | None) -> tuple[Source, ClassNames]:
    """Class sub-folders, or a flat folder of unlabelled images (which needs class names)."""
    found, unlisted = scan_images(folder)
    source = class_source(folder, found)
    if source is not None:
        if found[""]:
            warnings.warn(f"{folder}: ignoring {len(found[''])} images outside the class sub-folders", stacklevel=3)
            unlisted["images outside the class folders"] = len(found[""])
        described = f"folder {folder} has {len(source.classnames or [])} class folders"
        source, names = _attach_classnames(source, given, described, by_position=True)
        return replace(source, unlisted=unlisted), names
    paths = found[""]
    if not paths:
        raise ReclipError(
            f"folder {folder} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "pass a folder of images, with one sub-folder per class if they are labelled"
        )
    if given is None:
        raise ReclipError(f"folder {folder} has no class sub-folders, so its classes are unknown; {_NEED_CLASSNAMES}")
    unlabelled = np.full(len(paths), -1, dtype=np.int64)
    return Source(FileImages(paths), unlabelled, None, paths=paths, files=paths, unlisted=unlisted), given.names


def _table_source(table: Path, given: GivenClasses | None) -> tuple[Source, ClassNames]:
    """A CSV/TSV list of ``path[,label]`` rows; labels are all indices, all names or absent.

    Strict: a row with more than two fields (an unquoted delimiter in a path), an image listed
    twice, labels mixing indices and names, a number that is no whole index, and two label
    names differing only by case are refused with one line naming the line of the file.
    """
    rows = _read_rows(table)
    paths = [os.path.abspath(_resolve(table.parent, cells[0].strip())) for _, cells in rows]
    first_line: dict[str, int] = {}
    for (line, _), path in zip(rows, paths):
        earlier = first_line.setdefault(path, line)
        if earlier != line:
            raise ReclipError(f"{table} lists {path} twice (lines {earlier} and {line}); list each image once")
    cells = [cells[1].strip() if len(cells) > 1 else "" for _, cells in rows]
    kinds = [_label_kind(cell) for cell in cells]
    for (line, _), cell, kind in zip(rows, cells, kinds):
        if kind == "number":
            raise ReclipError(f"{table} line {line}: label '{cell}' is neither a class index (0, 1, ...) nor a "
                              "class name; write a whole index or a name")
        if kind == "index" and int(cell) < -1:
            raise ReclipError(f"{table} line {line}: label {cell} is negative; class indices count from 0 "
                              "(-1 or an empty label means unknown)")
    written = [kind for kind in kinds if kind]
    if "name" in written and "index" in written:
        odd = "index" if written.count("index") <= written.count("name") else "name"
        line, cell = next((line, cell) for (line, _), cell, kind in zip(rows, cells, kinds) if kind == odd)
        raise ReclipError(f"{table} line {line}: label '{cell}' is a class {odd} but other lines give class "
                          f"{'names' if odd == 'index' else 'indices'}; use names or indices, not both")
    if "name" in written:
        names = sorted({cell for cell in cells if cell})
        _refuse_spellings(table, names, rows, cells)
        position = {name: i for i, name in enumerate(names)}
        labels = np.array([position[cell] if cell else -1 for cell in cells], dtype=np.int64)
        source = Source(FileImages(paths), labels, [[n] for n in names], paths=paths, files=paths)
        return _attach_classnames(source, given, f"{table} uses {len(names)} label names", by_position=False)
    if given is None:
        kind = "integer labels" if written else "no labels"
        raise ReclipError(f"{table} has {kind}, so its class names are unknown; {_NEED_CLASSNAMES}")
    labels = np.array([max(int(cell), -1) if cell else -1 for cell in cells], dtype=np.int64)
    for (line, _), label in zip(rows, labels):
        if label >= len(given.names):
            raise ReclipError(f"{table} line {line} uses label {label} but {given.origin} lists "
                              f"{len(given.names)} classes (labels count from 0); give one class per label")
    source = Source(FileImages(paths), labels, None, paths=paths, files=paths)
    return _attach_classnames(source, given, str(table), by_position=False)


def _refuse_spellings(table: Path, names: list[str], rows: list[tuple[int, list[str]]], cells: list[str]) -> None:
    """Refuse two label names that differ only by case, '_' or spaces (they would be two classes)."""
    first: dict[str, str] = {}
    for name in names:
        other = first.setdefault(name_key(name), name)
        if other != name:
            lines = [next(line for (line, _), cell in zip(rows, cells) if cell == n) for n in (other, name)]
            raise ReclipError(f"{table}: labels '{other}' (line {lines[0]}) and '{name}' (line {lines[1]}) differ "
                              "only by case, '_' or spaces; spell each class one way")


def _read_rows(table: Path) -> list[tuple[int, list[str]]]:
    """The non-empty rows of a CSV/TSV file as (line number, cells), without its header row
    if it has one. A ``.csv`` file whose rows all have one field under commas but two under
    a semicolon, tab or '|' is read with that delimiter."""
    try:
        text = table.read_text(encoding="utf-8-sig")
        own = _TABLE_DELIMITERS[table.suffix.lower()]
        rows = _parse(text, own)
        if all(len(cells) == 1 for _, cells in rows):
            for other in _OTHER_DELIMITERS:
                parsed = _parse(text, other) if other != own else rows
                if all(len(cells) <= 2 for _, cells in parsed) and \
                        sum(len(cells) == 2 for _, cells in parsed) * 2 >= len(parsed) > 0:
                    own, rows = other, parsed
                    break
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReclipError(f"cannot read {table} ({exc}); pass a UTF-8 CSV/TSV file of path[,label] rows") from exc
    if rows and _is_header(rows[0][1], table.parent):
        rows = rows[1:]
    if not rows:
        raise ReclipError(f"{table} lists no images; write one 'path[,label]' row per image")
    for line, cells in rows:
        if len(cells) > 2:
            raise ReclipError(
                f"{table} line {line} has {len(cells)} fields {cells}, not path[,label]; a path holding a "
                f"{_DELIMITER_NAMES[own]} must be quoted, as in \"c{own} d.png\"{own}bird")
        if not cells[0].strip():
            raise ReclipError(f"{table} line {line} has no path; write one 'path[,label]' row per image")
    return rows


def _parse(text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of the rows of ``text`` holding a non-blank cell."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    return [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]


def _is_header(row: list[str], base: Path) -> bool:
    """A first row is a header when its first cell is neither an image name nor an existing file."""
    first = row[0].strip()
    return Path(first).suffix.lower() not in IMAGE_EXTENSIONS and not _resolve(base, first).is_file()


def _resolve(base: Path, path: str) -> Path:
    """``path`` with ``~`` expanded, relative paths taken from ``base``."""
    return base / Path(path).expanduser()


def _label_kind(text: str) -> str:
    """"" (no label), "index" (a whole number), "number" (another number) or "name"."""
    if not text:
        return ""
    try:
        int(text)
        return "index"
    except ValueError:
        pass
    try:
        float(text)
        return "number"
    except ValueError:
        return "name"


def _looks_like_path(text: str) -> bool:
    """True when ``text`` cannot be a benchmark name (it has a folder part or a file suffix)."""
    return any(sep in text for sep in {"/", os.sep}) or text.startswith((".", "~")) or Path(text).suffix != ""


def _bad_spec(text: str, path: Path) -> ReclipError:
    """The error for a spec that is no readable folder, no CSV/TSV file and no benchmark."""
    if path.is_file():
        return ReclipError(
            f"dataset path {path} is a file but not a .csv/.tsv list; pass a folder of images or a CSV file"
        )
    if _looks_like_path(text):
        return ReclipError(
            f"dataset path {path} does not exist; "
            "pass a folder of images, a CSV file or a benchmark name such as cifar10"
        )
    return ReclipError(
        f"unknown dataset '{text}': no such folder or file, and not a benchmark name; "
        f"benchmarks: {', '.join(sorted(BENCHMARKS))}"
    )
