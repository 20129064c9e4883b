"""Offline evaluation targets built from Fashion-MNIST's TEST split, and dev targets built
from its TRAIN split (``train-`` names) for choosing defaults.

Target names:

- ``clean``: a class-balanced seeded sample of the test images.
- ``<corruption>-<severity>``: the same images as ``clean`` (same n and seed) with one
  ImageNet-C corruption (Hendrycks & Dietterich, 2019) applied by the ``imagecorruptions``
  module (PyPI ``imagecorruptions-imaug``: the maintained fork of ``imagecorruptions``,
  which no longer imports on setuptools >= 81), e.g. ``gaussian_noise-5``; any of its 19
  corruptions, severity 1-5. Each image gets its own seed, so a target is reproducible.
- ``subset-<m>``: StatA's setting: only m of the 10 classes are present (chosen with the
  seed), n/m images each, while all 10 class names are given.
- ``longtail-<r>``: every class present with an exponential profile: class at rank j
  (0 = head) gets a share proportional to ``r ** (-j / 9)``, so head / tail = r (the
  CIFAR-10-LT profile of Cao et al., 2019); the class order is a seeded permutation.
- ``train-<any of the above>``: the same built from the TRAIN split: dev targets, on which
  thresholds and defaults are chosen (``DEV_TARGETS``), never the reported test targets.

Every image is upscaled from 28 to ``IMAGE_SIZE`` = 96 px (bicubic) before any corruption:
ImageNet-C's parameters are in pixels of a 224 px image, so applied at 28 px a blur radius
or a JPEG block would cover several garment-pixels and erase the object, while at 96 px one
Fashion-MNIST pixel spans ~3.4 px and the corruptions act at the scale of 1-3 of them (STL-10,
a standard CLIP benchmark, is 96 px too). The models resize to their own input size anyway,
and 96 px keeps a 2,000-image target at a few MB. Clean images are upscaled the same way, so
corrupted and clean targets differ only by the corruption.

Samples: ``sample`` s = 0, 1, ... draws independent image sets of the same target, disjoint
from one another: sample s draws with its own seeded generator from the source images that
samples 0..s-1 did not take (its class subset or long-tail class order is drawn again, until
every class has the images it needs). Sample 0 is the target as it always was. A corrupted
target's sample s corrupts the images of ``clean``'s sample s, so the two stay paired.

A target is generated on first use into ``root/<name>-n<n>-seed<seed>[-sample<s>]/`` (root: argument,
else ``data_home()/fashion_mnist_targets``; no suffix for sample 0): ``images/*.png``, ``<name>.csv`` (``path,label``
rows, integer labels), ``classnames.txt`` (all 10 names) and ``target.json`` (what was
built). It is written into a hidden temporary folder renamed into place at the end, so an
interrupted generation never leaves a partial target. Read it with :func:`load_target`, or
``files = target_files(folder); load_dataset(files.table, classnames=files.classnames)``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from reclip.data.datasets import ImageDataset, load_dataset
from reclip.errors import ReclipError
from reclip.io import write_csv, write_json
from reclip.paths import data_home

SOURCE = "fashion-mnist"
SPLIT = "test"
NUM_CLASSES = 10
IMAGE_SIZE = 96
DEFAULT_N = 2000
TARGETS_FOLDER = "fashion_mnist_targets"
CLASSNAMES_FILE = "classnames.txt"
MANIFEST_FILE = "target.json"

#: The default offline suite: clean, four corruption types (noise, blur, digital contrast
#: and compression) at severity 3-5, a 3-of-10-classes subset and a 100:1 long tail.
OFFLINE_TARGETS: tuple[str, ...] = (
    "clean",
    "gaussian_noise-5",
    "defocus_blur-3",
    "contrast-4",
    "jpeg_compression-5",
    "subset-3",
    "longtail-100",
)
#: Dev targets (train split; other corruptions and proportions than the offline suite's).
DEV_TARGETS: tuple[str, ...] = (
    "train-clean",
    "train-shot_noise-5",
    "train-motion_blur-3",
    "train-fog-4",
    "train-subset-4",
    "train-longtail-50",
)
#: More dev targets (train split) with the other ImageNet-C corruptions at severity 3-5, where
#: adaptation is most at risk: the safeguard's signal is studied on DEV_TARGETS + these.
HARD_DEV_TARGETS: tuple[str, ...] = (
    "train-impulse_noise-5",
    "train-speckle_noise-5",
    "train-pixelate-5",
    "train-zoom_blur-5",
    "train-elastic_transform-5",
    "train-snow-5",
    "train-spatter-5",
    "train-brightness-5",
    "train-shot_noise-3",
    "train-impulse_noise-3",
)
DEV_PREFIX = "train-"

_CORRUPTION_NAME = re.compile(r"^([a-z_]+)-([1-5])$")
_SUBSET_NAME = re.compile(r"^subset-(\d+)$")
_LONGTAIL_NAME = re.compile(r"^longtail-(\d+(?:\.\d+)?)$")
_INSTALL_HINT = "install it with: pip install 'reclip-vlm[bench]'"
#: Tries at a class subset / long-tail order whose counts fit the images earlier samples left.
MAX_DRAWS = 10_000


@dataclass(frozen=True)
class TargetSpec:
    """A parsed target name: ``kind`` is clean, corruption, subset or longtail.

    ``corruption``/``severity`` for corruptions, ``classes`` (present) for subsets,
    ``imbalance`` (head / tail) for long tails.
    """

    name: str
    kind: str
    split: str = SPLIT
    corruption: str | None = None
    severity: int | None = None
    classes: int | None = None
    imbalance: float | None = None


class TargetFiles(NamedTuple):
    """What ``load_dataset`` reads: ``load_dataset(files.table, classnames=files.classnames)``."""

    table: Path
    classnames: Path


def parse_target(name: str) -> TargetSpec:
    """The spec of a target name (see the module docstring); ``ReclipError`` if it is not one."""
    if name.startswith(DEV_PREFIX):
        return replace(parse_target(name[len(DEV_PREFIX):]), name=name, split="train")
    if name == "clean":
        return TargetSpec(name, "clean")
    if match := _SUBSET_NAME.match(name):
        classes = int(match.group(1))
        if not 1 <= classes < NUM_CLASSES:
            raise ReclipError(f"target {name}: the number of classes present must be 1-{NUM_CLASSES - 1}")
        return TargetSpec(name, "subset", classes=classes)
    if match := _LONGTAIL_NAME.match(name):
        imbalance = float(match.group(1))
        if imbalance < 1:
            raise ReclipError(f"target {name}: the imbalance ratio (head / tail) must be at least 1")
        return TargetSpec(name, "longtail", imbalance=imbalance)
    if (match := _CORRUPTION_NAME.match(name)) and match.group(1) in corruption_names():
        return TargetSpec(name, "corruption", corruption=match.group(1), severity=int(match.group(2)))
    raise ReclipError(
        f"unknown target {name!r}; use clean, subset-<m>, longtail-<ratio> or <corruption>-<1..5> "
        f"with a corruption from: {', '.join(corruption_names())}"
    )


def corruption_names() -> list[str]:
    """Every corruption the ``imagecorruptions`` module offers (the 15 ImageNet-C ones and 4 extra)."""
    return _imagecorruptions().get_corruption_names("all")


def target_files(folder: str | os.PathLike[str]) -> TargetFiles:
    """The table and class-names file of a generated target folder."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    if manifest is None:
        raise ReclipError(f"{folder} is not a generated target (no readable {MANIFEST_FILE}); use ensure_target")
    return TargetFiles(folder / f"{manifest['name']}.csv", folder / CLASSNAMES_FILE)


def ensure_target(
    name: str,
    n: int = DEFAULT_N,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    source_root: str | os.PathLike[str] | None = None,
    sample: int = 0,
) -> Path:
    """The folder of target ``name`` with ``n`` images, ``seed`` and ``sample``, generated if missing.

    Args:
        name: a target name (see the module docstring and ``OFFLINE_TARGETS``).
        n: images in the target.
        seed: selects the images, the classes (subset, long-tail order) and the corruption noise.
        root: folder holding the targets (default ``data_home()/fashion_mnist_targets``).
        source_root: folder of the Fashion-MNIST IDX files (default: where
            ``load_dataset("fashion-mnist")`` finds them, e.g. Debian's
            /usr/share/datasets/fashion-mnist).
        sample: which of the disjoint image sets (0, 1, ...; see the module docstring).

    Returns:
        The target folder (see the module docstring for its layout).
    """
    spec = parse_target(name)
    if n < 1:
        raise ReclipError(f"n must be at least 1, got {n}")
    if sample < 0:
        raise ReclipError(f"sample must be 0 or more, got {sample}")
    base = Path(root).expanduser() if root is not None else data_home() / TARGETS_FOLDER
    folder = base / (f"{name}-n{n}-seed{seed}" + (f"-sample{sample}" if sample else ""))
    if _read_manifest(folder) is not None:
        return folder
    base.mkdir(parents=True, exist_ok=True)
    with _staging_folder(base, folder.name) as staging:
        _generate(spec, n, seed, sample, source_root, staging)
        try:
            staging.rename(folder)
        except OSError as exc:  # another process may have finished the same target first
            if _read_manifest(folder) is None:
                raise ReclipError(f"cannot create target folder {folder} ({exc}); "
                                  "delete it if it is left from an older version") from exc
    return folder


def load_target(
    name: str,
    n: int = DEFAULT_N,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    source_root: str | os.PathLike[str] | None = None,
    transform: Callable[[Any], Any] | None = None,
    sample: int = 0,
) -> ImageDataset:
    """``ensure_target`` then ``load_dataset`` on it: an ``ImageDataset`` named ``name`` with all 10 classes."""
    files = target_files(ensure_target(name, n=n, seed=seed, root=root, source_root=source_root, sample=sample))
    return load_dataset(files.table, transform=transform, classnames=files.classnames)


# --- generation ---------------------------------------------------------------------------

def _generate(spec: TargetSpec, n: int, seed: int, sample: int, source_root: str | os.PathLike[str] | None,
              out: Path) -> None:
    """Write the target's images, table, class names and manifest into ``out``."""
    start = time.perf_counter()
    source = load_dataset(SOURCE, root=source_root, split=spec.split)
    if len(source.classnames) != NUM_CLASSES:
        raise ReclipError(f"the {SOURCE} data at {source.root} has {len(source.classnames)} classes, "
                          f"expected {NUM_CLASSES}; check the data")
    counts, indices = select_images(spec, source.labels, n, seed, sample)

    images = out / "images"
    images.mkdir()
    rows = []
    for position, index in enumerate(indices):
        grey = np.asarray(source[int(index)][0].convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))
        pixels = grey if spec.kind != "corruption" else _corrupt(grey, spec, seed, int(index))
        file = f"images/{position:05d}.png"
        Image.fromarray(pixels).save(out / file)
        rows.append((file, int(source.labels[index])))
    write_csv(out / f"{spec.name}.csv", ("path", "label"), rows)
    (out / CLASSNAMES_FILE).write_text("".join(f"{' | '.join(c)}\n" for c in source.classnames), encoding="utf-8")
    write_json(out / MANIFEST_FILE, {
        "name": spec.name, "n": n, "seed": seed, "sample": sample, "source": SOURCE, "split": spec.split, "source_root": source.root,
        "image_size": IMAGE_SIZE, "corruption": spec.corruption, "severity": spec.severity,
        "class_counts": {source.classnames[c][0]: int(k) for c, k in counts.items()},
        "source_indices": [int(i) for i in indices], "seconds": round(time.perf_counter() - start, 2),
    })


def select_images(spec: TargetSpec, labels: np.ndarray, n: int, seed: int,
                  sample: int = 0) -> tuple[dict[int, int], np.ndarray]:
    """(class -> count, source indices) of sample ``sample`` of target ``spec``; ``labels`` (M,) of the split.

    Samples are drawn in order 0..sample, each from the images the earlier ones left, with
    generator ``(seed, key)`` for sample 0 and ``(seed, key, s)`` for sample s.
    """
    key = zlib.crc32(_selection_key(spec).encode())
    taken = np.zeros(len(labels), dtype=bool)
    for s in range(sample + 1):
        rng = np.random.default_rng([seed, key] if s == 0 else [seed, key, s])
        free = np.bincount(labels[~taken], minlength=NUM_CLASSES)
        for _ in range(MAX_DRAWS):
            counts = _class_counts(spec, n, rng)
            if all(count <= free[c] for c, count in counts.items()):
                break
        else:
            worst = max(counts, key=lambda c: counts[c] - free[c])
            raise ReclipError(f"target {spec.name} needs {counts[worst]} images of class {worst} but its split "
                              f"has {free[worst]} left for sample {s}; use a smaller n or fewer samples")
        indices = _sample(np.where(taken, -1, labels), counts, rng, spec.name)
        taken[indices] = True
    return counts, indices


def _selection_key(spec: TargetSpec) -> str:
    """Corrupted targets select the images of ``clean`` (of their split); every other target
    selects its own."""
    if spec.kind == "corruption":
        return "clean" if spec.split == SPLIT else DEV_PREFIX + "clean"
    return spec.name


def _class_counts(spec: TargetSpec, n: int, rng: np.random.Generator) -> dict[int, int]:
    """Images per class (class index -> count, only classes present), summing to n."""
    if spec.kind == "longtail":
        order = rng.permutation(NUM_CLASSES)
        shares = spec.imbalance ** (-np.arange(NUM_CLASSES) / (NUM_CLASSES - 1))
        if n < NUM_CLASSES:
            raise ReclipError(f"target {spec.name} needs n >= {NUM_CLASSES} (one image per class), got {n}")
        return dict(zip(order.tolist(), _apportion(n, shares, minimum=1)))
    present = NUM_CLASSES if spec.classes is None else spec.classes
    if n < present:
        raise ReclipError(f"target {spec.name} needs n >= {present} (one image per class present), got {n}")
    chosen = np.sort(rng.choice(NUM_CLASSES, present, replace=False))
    return dict(zip(chosen.tolist(), _apportion(n, np.ones(present), minimum=1)))


def _apportion(total: int, shares: np.ndarray, minimum: int) -> list[int]:
    """Integer counts proportional to ``shares`` (largest-remainder rounding) summing to ``total``.

    Counts below ``minimum`` are raised to it, the difference taken from the largest counts.
    """
    exact = total * shares / shares.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    deficit = np.maximum(minimum - counts, 0)
    counts += deficit
    for _ in range(int(deficit.sum())):
        counts[np.argmax(counts)] -= 1
    return counts.tolist()


def _sample(labels: np.ndarray, counts: dict[int, int], rng: np.random.Generator, name: str) -> np.ndarray:
    """Source indices: ``counts[c]`` distinct images of each class c, in a seeded shuffled order."""
    picked = []
    for c, count in counts.items():
        pool = np.flatnonzero(labels == c)
        if count > len(pool):
            raise ReclipError(f"target {name} needs {count} images of class {c} but its split has "
                              f"{len(pool)}; use a smaller n")
        picked.append(rng.choice(pool, count, replace=False))
    return rng.permutation(np.concatenate(picked))


def _corrupt(grey: np.ndarray, spec: TargetSpec, seed: int, index: int) -> np.ndarray:
    """(H x W x 3) uint8 corrupted copy of a (H x W) grey image; the noise is seeded by (seed, index)."""
    corruptions = _imagecorruptions()
    with _numpy_global_seed(np.random.SeedSequence([seed, index]).generate_state(1)[0]):
        return np.asarray(corruptions.corrupt(grey, corruption_name=spec.corruption, severity=spec.severity),
                          dtype=np.uint8)


@contextmanager
def _numpy_global_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global generator (``imagecorruptions`` draws from it), restoring it afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _imagecorruptions() -> Any:
    try:
        import imagecorruptions
    except ImportError as exc:
        raise ReclipError(f"corrupted targets need the imagecorruptions module; {_INSTALL_HINT}") from exc
    return imagecorruptions


@contextmanager
def _staging_folder(base: Path, name: str) -> Iterator[Path]:
    """A hidden temporary folder in ``base``, removed afterwards unless it was renamed away."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=base))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
