"""Named benchmarks: where their data lives and how to read their standard splits.

``BENCHMARKS`` maps each canonical name to a ``Benchmark``: the 22 of the ReCLIP paper
plus Fashion-MNIST. Most are read through torchvision's dataset classes (the same
classes clip_benchmark's ``build_dataset`` wraps; we call them directly so that a missing
dataset never triggers clip_benchmark's shell downloads (wget, kaggle) and a failed
download is reported, not retried). MNIST and Fashion-MNIST are read from IDX files with
``reclip.data.idx``, so a plain folder of the four IDX files (such as Debian's
``dataset-fashion-mnist``) works offline. RESISC45, AID and Caltech101 are read from the
class folders of their distributions, labelled by the folder names shipped in
``reclip.data.prompts`` (so a missing class folder never shifts the labels); FER2013 from
the challenge's ``fer2013.csv`` or from class folders; Birdsnap from its archive's lists
and downloaded images; ImageNet from ``val/<wnid>/`` folders. Where the authors used a
standard partition that torchvision does not read (SUN397's ``Testing_01.txt``,
FER2013's PublicTest rows), the loader reads it.

A loader returns a ``Source``; when the data is absent (and cannot be downloaded) it
raises ``DataMissing``, which ``load_benchmark`` turns into a one-line ``ReclipError``
naming the expected layout.
"""
from __future__ import annotations

import csv
import importlib.util
import os
import socket
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torchvision.datasets as tvd
from PIL import Image

from reclip.data.idx import read_idx
from reclip.data.images import (
    ArrayImages,
    FileImages,
    Source,
    UnreadableImage,
    describe_error,
    name_key,
    scan_class_folders,
    to_rgb,
    walk_images,
)
from reclip.data.prompts import ALIASES, benchmark_prompts, normalize_name
from reclip.errors import ArgumentError, ReclipError
from reclip.paths import data_home, system_data_roots

DOWNLOAD_TIMEOUT_S = 30.0  # per network operation, so an unreachable host fails fast

Loader = Callable[[Path, str, bool], Source]  # (root, split, download) -> Source
T = TypeVar("T")

DOWNLOAD_HINT = (
    "run once with internet access to download it there, "
    "or copy the data there (pick the folder with {arg} or the RECLIP_DATA variable)"
)


class DataMissing(Exception):
    """The benchmark's data is not at ``expected`` and could not be downloaded."""

    def __init__(self, expected: Path, reason: str) -> None:
        super().__init__(f"{expected}: {reason}")
        self.expected = expected
        self.reason = reason


@dataclass(frozen=True)
class Benchmark:
    """How to load one named benchmark.

    ``splits`` are the accepted split names, the standard evaluation split first.
    ``hint`` tells the user how to get the data; ``requires`` are optional packages the
    loader imports. Folders where an operating-system package installs a benchmark are
    listed in ``reclip.paths``.
    """

    load: Loader
    splits: tuple[str, ...] = ("test", "train")
    hint: str = DOWNLOAD_HINT
    requires: tuple[str, ...] = ()


# --- torchvision datasets ------------------------------------------------------------

def _split_kwarg(split: str) -> dict[str, Any]:
    return {"split": split}


def _train_kwarg(split: str) -> dict[str, Any]:
    return {"train": split == "train"}


def _no_split(split: str) -> dict[str, Any]:
    return {}


def _spaces(name: str) -> str:
    return name.replace("_", " ")


def _sun397_name(name: str) -> str:
    return name.replace("_", " ").replace("/", " ")  # "apartment_building/outdoor"


def _targets(dataset: Any) -> np.ndarray:
    """The labels of a torchvision dataset, read from its index (no image is decoded)."""
    for attribute in ("targets", "labels", "_labels", "y"):
        if hasattr(dataset, attribute):
            return np.asarray(getattr(dataset, attribute), dtype=np.int64)
    return np.array([label for _, label in dataset._samples], dtype=np.int64)  # GTSRB, cars, SST2


def _pcam_targets(dataset: tvd.PCAM) -> np.ndarray:
    """PCAM keeps its labels in an HDF5 file; read them all at once."""
    targets_file = dataset._base_folder / dataset._FILES[dataset._split]["targets"][0]
    with dataset.h5py.File(targets_file) as targets:
        return np.asarray(targets["y"][:, 0, 0, 0], dtype=np.int64)


def _image_paths(dataset: Any) -> list[str] | None:
    """The per-item image files of a torchvision dataset, when it lists them."""
    if hasattr(dataset, "_image_files"):
        return [str(p) for p in dataset._image_files]
    samples = getattr(dataset, "samples", None) or getattr(dataset, "_samples", None)
    return None if samples is None else [str(path) for path, _ in samples]


class TorchvisionImages:
    """The images of a torchvision dataset built without a transform."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Image.Image:
        try:
            image = self.dataset[index][0]
        # Any decoding failure makes this one item unusable (see images.open_image).
        except Exception as exc:
            raise UnreadableImage(
                f"cannot read item {index} of {type(self.dataset).__name__} in {self.dataset.root} "
                f"({describe_error(exc)}); "
                "re-download the dataset"
            ) from exc
        return to_rgb(image)


def _torchvision(
    cls: type,
    location: str,
    splits: tuple[str, ...] = ("test", "train"),
    split_kwargs: Callable[[str], dict[str, Any]] = _split_kwarg,
    tidy: Callable[[str], str] = _spaces,
    targets: Callable[[Any], np.ndarray] = _targets,
    hint: str = DOWNLOAD_HINT,
    requires: tuple[str, ...] = (),
    **fixed: Any,
) -> Benchmark:
    """A benchmark read by torchvision's ``cls``; its files sit in ``root/location``."""

    def load(root: Path, split: str, download: bool) -> Source:
        dataset = _build(
            lambda dl: cls(str(root), download=dl, **split_kwargs(split), **fixed), root / location, download
        )
        paths = _image_paths(dataset)
        classes = getattr(dataset, "classes", None)
        return Source(
            images=TorchvisionImages(dataset) if paths is None else FileImages(paths),
            labels=targets(dataset),
            classnames=None if classes is None else [[tidy(str(c))] for c in classes],
            paths=paths,
            files=paths if paths is not None else _files_below(root / location),
        )

    return Benchmark(load, splits, hint, requires=requires)


def _build(make: Callable[[bool], T], expected: Path, download: bool) -> T:
    """``make(download=False)``; if the data is absent, ``make(download=True)`` when allowed."""
    try:
        return make(False)
    except (RuntimeError, OSError) as exc:  # torchvision: "Dataset not found or corrupted"
        if not download:
            raise DataMissing(expected, "not there and download=False") from exc
    try:
        with _network_timeout(DOWNLOAD_TIMEOUT_S):
            return make(True)
    # URLError and timeouts are OSErrors; torchvision raises RuntimeError on a bad
    # checksum and ValueError where the download is no longer offered (StanfordCars).
    except (OSError, RuntimeError, ValueError) as exc:
        raise DataMissing(expected, f"download failed: {describe_error(exc)}") from exc


@contextmanager
def _network_timeout(seconds: float) -> Iterator[None]:
    """Make every socket operation in the block give up after ``seconds``."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _files_below(folder: Path) -> list[str]:
    """Every file below ``folder``, sorted (for fingerprints of datasets without per-image files)."""
    return sorted(os.path.join(parent, f) for parent, _, files in os.walk(folder) for f in files)


# --- MNIST-style IDX files -----------------------------------------------------------

_IDX_PREFIX = {"test": "t10k", "train": "train"}


def _find_idx(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files of ``split`` in ``folder``, gzipped or not."""
    prefix = _IDX_PREFIX[split]
    found = []
    for kind, dims in (("images", 3), ("labels", 1)):
        candidates = [folder / f"{prefix}-{kind}{sep}idx{dims}-ubyte{gz}" for sep in "-." for gz in ("", ".gz")]
        match = next((p for p in candidates if p.is_file()), None)
        if match is None:
            return None
        found.append(match)
    return found[0], found[1]


def _idx(cls: type[tvd.MNIST]) -> Benchmark:
    """MNIST-style IDX files in ``root`` or in torchvision's ``root/<Class>/raw``."""

    def load(root: Path, split: str, download: bool) -> Source:
        raw = root / cls.__name__ / "raw"
        files = _find_idx(root, split) or _find_idx(raw, split)
        if files is None:
            _build(lambda dl: cls(str(root), train=split == "train", download=dl), raw, download)
            files = _find_idx(raw, split)
        if files is None:
            raise DataMissing(raw, f"no {_IDX_PREFIX[split]}-images/labels IDX files")
        images, labels = (read_idx(f) for f in files)
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise ReclipError(
                f"{files[0]} and {files[1]} do not match ({images.shape} vs {labels.shape}); re-download them"
            )
        return Source(
            images=ArrayImages(images),
            labels=labels.astype(np.int64),
            classnames=[[str(c)] for c in cls.classes],
            files=[str(f) for f in files],
        )

    return Benchmark(load, ("test", "train"))


# --- class folders without automatic download ------------------------------------------

def _class_folders(split_dirs: Mapping[str, str], hint: str) -> Benchmark:
    """Images in ``root/<split dir>/<class>/``, classes in sorted folder order."""

    def load(root: Path, split: str, download: bool) -> Source:
        folder = root / split_dirs[split]
        if not folder.is_dir():
            raise DataMissing(folder, "no such folder")
        source = scan_class_folders(folder)
        if source is None:
            raise DataMissing(folder, "no class sub-folders with images")
        return source

    return Benchmark(load, tuple(split_dirs), hint)


# --- class folders named by the shipped folder list ---------------------------------------

def _named_folders(name: str, split_dirs: Mapping[str, tuple[str, ...]], hint: str) -> Benchmark:
    """Class folders of ``name`` in the first existing ``root/<candidate>`` of the split."""

    def load(root: Path, split: str, download: bool) -> Source:
        candidates = [root / sub for sub in split_dirs[split]]
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:
            raise DataMissing(candidates[0], "no such folder")
        return read_named_folders(name, folder)

    return Benchmark(load, tuple(split_dirs), hint)


def _caltech101() -> Benchmark:
    """Caltech101 as the authors read it (torchvision's: 101 classes, no background, whole dataset)."""

    def load(root: Path, split: str, download: bool) -> Source:
        folder = root / "caltech101" / "101_ObjectCategories"
        if not folder.is_dir():
            _build(lambda dl: tvd.Caltech101(str(root), target_type="category", download=dl), folder, download)
        return read_named_folders("caltech101", folder, ignore=frozenset({"BACKGROUND_Google"}))

    return Benchmark(load, WHOLE_DATASET)


def read_named_folders(name: str, folder: Path, ignore: frozenset[str] = frozenset()) -> Source:
    """Images in ``folder/<class folder>/``, labelled by benchmark ``name``'s shipped folder names.

    Folder names match ignoring case, '_' and spaces. A class without a folder keeps its
    label index (with a warning: the result is then not the full benchmark); a folder
    that is no class of ``name`` raises ``ReclipError``; folders in ``ignore`` are skipped.
    """
    prompts = benchmark_prompts(name)
    assert prompts is not None and prompts.folders is not None, f"{name} ships no folder names"
    expected = prompts.folders
    index = {name_key(f): i for i, f in enumerate(expected)}
    found = {sub: paths for sub, paths in walk_images(folder).items() if sub and sub not in ignore}
    unknown = sorted(sub for sub in found if name_key(sub) not in index)
    if unknown:
        raise ReclipError(
            f"{folder} has folders that are no {name} class ({', '.join(unknown[:3])}); "
            f"point root at the folder of the {len(expected)} class folders ({expected[0]}/, {expected[1]}/, ...)"
        )
    present = sorted((index[name_key(sub)], sub) for sub, paths in found.items() if paths)
    if not present:
        raise DataMissing(folder, f"no class folders with images ({expected[0]}/, {expected[1]}/, ...)")
    if len(present) < len(expected):
        warnings.warn(
            f"{name}: {folder} has images for {len(present)} of its {len(expected)} classes; "
            "accuracy is not comparable with the full benchmark",
            stacklevel=2,
        )
    paths = [path for _, sub in present for path in found[sub]]
    labels = np.repeat([label for label, _ in present], [len(found[sub]) for _, sub in present]).astype(np.int64)
    return Source(FileImages(paths), labels, [[f] for f in expected], paths=paths, files=paths)


# --- FER2013 --------------------------------------------------------------------------------

FER2013_CSV = "fer2013.csv"
_FER2013_USAGE = {"test": "PublicTest", "train": "Training"}  # the authors test on the public test rows
_FER2013_SIDE = 48


def _load_fer2013(root: Path, split: str, download: bool) -> Source:
    """The challenge's ``fer2013.csv`` (emotion, pixels, Usage) when present, else the class folders."""
    table = next((p for p in (root / FER2013_CSV, root / "fer2013" / FER2013_CSV) if p.is_file()), None)
    if table is None:
        if not (root / split).is_dir():
            raise DataMissing(root, f"no {FER2013_CSV} and no {split}/ folder")
        return read_named_folders("fer2013", root / split)
    usage = _FER2013_USAGE[split]
    pixels, labels = [], []
    try:
        with table.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                row = {key.strip(): value for key, value in row.items()}  # icml_face_data.csv pads its header
                if row["Usage"].strip() == usage:
                    labels.append(int(row["emotion"]))
                    pixels.append(np.array(row["pixels"].split(), dtype=np.uint8))
    except (OSError, KeyError, ValueError, csv.Error) as exc:
        raise ReclipError(f"cannot read {table} ({describe_error(exc)}); re-download fer2013.csv") from exc
    if not labels or any(p.size != _FER2013_SIDE**2 for p in pixels):
        raise ReclipError(f"{table} has no {usage} rows of {_FER2013_SIDE}x{_FER2013_SIDE} pixels; re-download it")
    images = np.stack(pixels).reshape(-1, _FER2013_SIDE, _FER2013_SIDE)
    return Source(ArrayImages(images), np.asarray(labels, dtype=np.int64), None, files=[str(table)])


# --- SUN397 ----------------------------------------------------------------------------------

SUN397_PARTITION = {"test": "Testing_01.txt", "train": "Training_01.txt"}  # the authors' (and CLIP's) split


def _load_sun397(root: Path, split: str, download: bool) -> Source:
    """SUN397 through torchvision; split = its official partition 1, or (test, no partition file) every image."""
    data = root / "SUN397"
    dataset = _build(lambda dl: tvd.SUN397(str(root), download=dl), data, download)
    classnames = [[_sun397_name(c)] for c in dataset.classes]
    partition = next((p / SUN397_PARTITION[split] for p in (data, root) if (p / SUN397_PARTITION[split]).is_file()),
                     None)
    if partition is None:
        if split != "test":
            raise DataMissing(data / SUN397_PARTITION[split], "no such file")
        warnings.warn(
            f"sun397: no {SUN397_PARTITION['test']} in {data}; using all {len(dataset)} images "
            "(the authors test on the official partition 1: unpack Partitions.zip into that folder)",
            stacklevel=2,
        )
        paths = [str(p) for p in dataset._image_files]
        return Source(FileImages(paths), _targets(dataset), classnames, paths=paths, files=paths)
    listed = [line.strip().lstrip("/") for line in _read_text(partition).splitlines() if line.strip()]
    try:  # "a/apartment_building/outdoor/sun_x.jpg" is class "apartment_building/outdoor"
        labels = np.array([dataset.class_to_idx["/".join(Path(line).parts[1:-1])] for line in listed], dtype=np.int64)
    except KeyError as exc:
        raise ReclipError(f"{partition} lists a class that ClassName.txt lacks ({exc}); re-download both") from exc
    paths = [str(data / line) for line in listed]
    return Source(FileImages(paths), labels, classnames, paths=paths, files=paths)


# --- Birdsnap ------------------------------------------------------------------------------

BIRDSNAP_LAYOUT = "species.txt, test_images.txt and download/images/<Species_Folder>/*.jpg"
_BIRDSNAP_IMAGE_DIRS = ("download/images", "images")


def _load_birdsnap(root: Path, split: str, download: bool) -> Source:
    """The test images of Birdsnap that are present (its images are fetched from URLs, some dead)."""
    species_file, test_list = root / "species.txt", root / "test_images.txt"
    image_dir = next((root / d for d in _BIRDSNAP_IMAGE_DIRS if (root / d).is_dir()), None)
    if not species_file.is_file() or not test_list.is_file() or image_dir is None:
        raise DataMissing(root, f"expected {BIRDSNAP_LAYOUT}")
    labels_of = _birdsnap_folders(species_file)
    listed = [line.strip() for line in _read_text(test_list).splitlines()[1:] if line.strip()]  # after the header
    paths, labels = [], []
    for relative in listed:
        species = relative.split("/")[0].casefold()
        if species not in labels_of:
            raise ReclipError(f"{test_list} lists {relative}, whose folder is not in {species_file}; re-download both")
        if (image_dir / relative).is_file():
            paths.append(str(image_dir / relative))
            labels.append(labels_of[species])
    if not paths:
        raise DataMissing(image_dir, f"none of the {len(listed)} images of test_images.txt is there")
    return Source(FileImages(paths), np.asarray(labels, dtype=np.int64), None, paths=paths, files=paths)


def _birdsnap_folders(species_file: Path) -> dict[str, int]:
    """Image folder (case-folded) -> label, from species.txt's ``common`` and ``dir`` columns.

    Labels follow the shipped class list; names match without apostrophes and hyphens
    ("Allen's Hummingbird" is "Allens Hummingbird").
    """
    prompts = benchmark_prompts("birdsnap")
    assert prompts is not None
    label_of = {_bird_key(synonyms[0]): i for i, synonyms in enumerate(prompts.classnames)}
    rows = list(csv.DictReader(_read_text(species_file).splitlines(), delimiter="\t"))
    if not rows or not {"common", "dir"} <= set(rows[0]):
        raise ReclipError(f"{species_file} has no 'common' and 'dir' columns; re-download the Birdsnap archive")
    folders = {}
    for row in rows:
        key = _bird_key(row["common"])
        if key not in label_of:
            raise ReclipError(f"{species_file} names '{row['common']}', which is no Birdsnap class; re-download it")
        folders[row["dir"].strip().casefold()] = label_of[key]
    return folders


def _bird_key(name: str) -> str:
    return name_key(name.replace("'", "").replace("-", " "))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReclipError(f"cannot read {path} ({describe_error(exc)}); re-download it") from exc


# --- the registry ----------------------------------------------------------------------

WHOLE_DATASET = ("test",)  # no official split: "test" is the whole dataset, as in clip_benchmark

BENCHMARKS: dict[str, Benchmark] = {
    "cifar10": _torchvision(tvd.CIFAR10, "cifar-10-batches-py", split_kwargs=_train_kwarg),
    "cifar100": _torchvision(tvd.CIFAR100, "cifar-100-python", split_kwargs=_train_kwarg),
    "mnist": _idx(tvd.MNIST),
    "fashion_mnist": _idx(tvd.FashionMNIST),
    "stl10": _torchvision(tvd.STL10, "stl10_binary", ("test", "train", "unlabeled")),
    "dtd": _torchvision(tvd.DTD, "dtd", ("test", "train", "val")),
    "eurosat": _torchvision(tvd.EuroSAT, "eurosat", WHOLE_DATASET, _no_split),
    "gtsrb": _torchvision(tvd.GTSRB, "gtsrb"),
    "food101": _torchvision(tvd.Food101, "food-101"),
    "flowers102": _torchvision(tvd.Flowers102, "flowers-102", ("test", "train", "val")),
    "oxford_pets": _torchvision(tvd.OxfordIIITPet, "oxford-iiit-pet", ("test", "trainval")),
    "fgvc_aircraft": _torchvision(
        tvd.FGVCAircraft, "fgvc-aircraft-2013b", ("test", "train", "val", "trainval"), annotation_level="variant"
    ),
    "stanford_cars": _torchvision(
        tvd.StanfordCars,
        "stanford_cars",
        hint="its official download is gone: get the Stanford Cars archive with its devkit (e.g. from Kaggle) "
        "and unpack it there",
    ),
    "country211": _torchvision(tvd.Country211, "country211", ("test", "train", "valid")),
    "pcam": _torchvision(tvd.PCAM, "pcam", ("test", "train", "val"), targets=_pcam_targets, requires=("h5py",)),
    "renderedsst2": _torchvision(tvd.RenderedSST2, "rendered-sst2", ("test", "train", "val")),
    "sun397": Benchmark(
        _load_sun397,
        ("test", "train"),
        hint="run once with internet access to download it there, or unpack SUN397.tar.gz there (SUN397/a/abbey/...), "
        "and unpack the official Partitions.zip into SUN397/ (Testing_01.txt, Training_01.txt)",
    ),
    "caltech101": _caltech101(),
    "fer2013": Benchmark(
        _load_fer2013,
        ("test", "train"),
        hint="put the challenge's fer2013.csv there (the authors' test set: its PublicTest rows), or unzip "
        "https://www.kaggle.com/datasets/msambare/fer2013 there (test/<emotion>/*.jpg, train/<emotion>/*.jpg)",
    ),
    "resisc45": _named_folders(
        "resisc45",
        {"test": ("NWPU-RESISC45", ".")},
        hint="download NWPU-RESISC45 and unpack it there: one folder per class "
        "(airplane/, airport/, ...), optionally inside NWPU-RESISC45/",
    ),
    "aid": _named_folders(
        "aid",
        {"test": ("AID", ".")},
        hint="download AID (https://captain-whu.github.io/AID/) and unpack it there: one folder per class "
        "(Airport/, BareLand/, ...), optionally inside AID/",
    ),
    "birdsnap": Benchmark(
        _load_birdsnap,
        ("test",),
        hint="download the Birdsnap archive (https://thomasberg.org/), run its get_birdsnap.py and use its folder "
        f"as the root: {BIRDSNAP_LAYOUT}",
    ),
    "imagenet": _class_folders(
        {"test": "val", "val": "val", "train": "train"},
        hint="put the ILSVRC2012 images there as val/<wnid>/*.JPEG "
        "(1000 class folders, e.g. as prepared by torchvision's ImageNet)",
    ),
}

_BY_NORMALIZED_NAME: dict[str, str] = {
    normalize_name(spelling): name
    for spelling, name in [*((n, n) for n in BENCHMARKS), *ALIASES.items()]
}


def canonical_name(name: str) -> str | None:
    """The registry name for any spelling of a benchmark ('Fashion-MNIST' -> 'fashion_mnist'), or None."""
    return _BY_NORMALIZED_NAME.get(normalize_name(name))


def benchmark_root(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """``root`` if given; else the default folder, or a system folder that exists when the default does not."""
    if root is not None:
        return Path(root).expanduser().resolve()
    default = data_home() / name
    candidates = [default, *system_data_roots(name)]
    return next((p for p in candidates if p.is_dir()), default).resolve()


def load_benchmark(name: str, root: Path, split: str, download: bool = True) -> Source:
    """Read split ``split`` of the registered benchmark ``name`` from ``root``.

    Raises ``ReclipError`` (one line, naming the expected location and how to get the
    data) when the split is unknown, the data is missing or a package is not installed.
    """
    benchmark = BENCHMARKS[name]
    if split not in benchmark.splits:
        raise ReclipError(f"benchmark {name} has no split '{split}'; use one of: {', '.join(benchmark.splits)}")
    for package in benchmark.requires:
        if importlib.util.find_spec(package) is None:
            raise ReclipError(f"benchmark {name} needs the {package} package; install it with: pip install {package}")
    try:
        return benchmark.load(root, split, download)
    except DataMissing as exc:
        raise ArgumentError(
            "root", f"benchmark {name} ({split} split) not found at {exc.expected} ({exc.reason}); {benchmark.hint}",
            "/path/to/folder") from exc
