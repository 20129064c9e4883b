"""Offline targets from Fashion-MNIST's test split: contents, determinism, atomicity, loading."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reclip.bench import targets
from reclip.bench.targets import ensure_target, load_target, target_files
from reclip.errors import ReclipError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file of uint8 values."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def generated_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Fashion-MNIST test split: 16 textured 28 x 28 images per class."""
    folder = tmp_path_factory.mktemp("fashion-mnist")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 16)
    images = rng.integers(0, 120, size=(len(labels), 28, 28))
    for i, label in enumerate(labels):
        images[i, 2 * label:2 * label + 8, 4:24] += 130  # a class-specific bright band
    write_idx(folder / "t10k-images-idx3-ubyte", images)
    write_idx(folder / "t10k-labels-idx1-ubyte", labels)
    return folder


@pytest.fixture(scope="module")
def source(generated_source: Path) -> Path:
    """Debian's Fashion-MNIST when installed, else the generated split."""
    return DEBIAN if (DEBIAN / "t10k-images-idx3-ubyte.gz").is_file() else generated_source


def manifest(folder: Path) -> dict:
    return json.loads((folder / targets.MANIFEST_FILE).read_text())


def labels(folder: Path) -> list[str]:
    return [row.split(",")[1] for row in target_files(folder).table.read_text().splitlines()]


def pixels(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64)
                     for p in sorted((folder / "images").glob("*.png"))])


def test_clean_target_is_class_balanced_and_loads_with_all_ten_names(tmp_path: Path, source: Path) -> None:
    data = load_target("clean", n=40, root=tmp_path, source_root=source)
    assert data.name == "clean" and len(data) == 40
    assert [names[0] for names in data.classnames] == FASHION_NAMES
    assert np.bincount(data.labels, minlength=10).tolist() == [4] * 10
    image = data[0][0]
    assert image.size == (targets.IMAGE_SIZE, targets.IMAGE_SIZE) and image.mode == "RGB"


def test_subset_target_has_three_classes_but_names_all_ten(tmp_path: Path, source: Path) -> None:
    data = load_target("subset-3", n=40, root=tmp_path, source_root=source)
    counts = np.bincount(data.labels, minlength=10)
    assert len(data.classnames) == 10
    assert sorted(counts[counts > 0].tolist()) == [13, 13, 14] and (counts > 0).sum() == 3


def test_longtail_target_follows_the_exponential_profile(tmp_path: Path, source: Path) -> None:
    data = load_target("longtail-10", n=40, root=tmp_path, source_root=source)
    counts = np.bincount(data.labels, minlength=10)
    # 40 * 10^(-j/9) / sum_j 10^(-j/9), rounded by largest remainders
    assert sorted(counts.tolist(), reverse=True) == [10, 8, 6, 4, 3, 3, 2, 2, 1, 1]


def test_corruptions_change_the_pixels_of_the_clean_images(tmp_path: Path, source: Path) -> None:
    clean = ensure_target("clean", n=20, seed=3, root=tmp_path, source_root=source)
    noisy = ensure_target("gaussian_noise-5", n=20, seed=3, root=tmp_path, source_root=source)
    flat = ensure_target("contrast-4", n=20, seed=3, root=tmp_path, source_root=source)
    assert manifest(noisy)["source_indices"] == manifest(clean)["source_indices"] == manifest(flat)["source_indices"]
    assert labels(noisy) == labels(clean) == labels(flat)
    assert np.abs(pixels(noisy) - pixels(clean)).mean() > 20
    assert pixels(flat).std() < pixels(clean).std() / 3


def test_generation_is_deterministic_under_the_seed(tmp_path: Path, source: Path) -> None:
    first = ensure_target("gaussian_noise-5", n=12, seed=1, root=tmp_path / "a", source_root=source)
    again = ensure_target("gaussian_noise-5", n=12, seed=1, root=tmp_path / "b", source_root=source)
    other = ensure_target("gaussian_noise-5", n=12, seed=2, root=tmp_path / "c", source_root=source)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file() and p.name != targets.MANIFEST_FILE)
    assert len(files) == 14  # 12 images, the table, the class names
    assert all((first / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert manifest(other)["source_indices"] != manifest(first)["source_indices"]


def test_an_existing_target_is_reused(tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = ensure_target("subset-2", n=6, root=tmp_path, source_root=source)

    def fail(*args: object) -> None:
        raise AssertionError("regenerated an existing target")

    monkeypatch.setattr(targets, "_generate", fail)
    assert ensure_target("subset-2", n=6, root=tmp_path, source_root=source) == folder


def test_an_interrupted_generation_leaves_nothing_behind(tmp_path: Path, source: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(targets, "write_csv", interrupt)
        with pytest.raises(KeyboardInterrupt):
            ensure_target("clean", n=10, root=tmp_path, source_root=source)
    assert list(tmp_path.iterdir()) == []
    folder = ensure_target("clean", n=10, root=tmp_path, source_root=source)
    assert len(list((folder / "images").iterdir())) == 10


def test_default_root_is_below_the_data_home(tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECLIP_DATA", str(tmp_path))
    folder = ensure_target("subset-1", n=3, seed=5, source_root=source)
    assert folder == tmp_path / targets.TARGETS_FOLDER / "subset-1-n3-seed5"


@pytest.mark.parametrize("name, n, match", [
    ("blurry", 10, "unknown target"),
    ("gaussian_noise-6", 10, "unknown target"),
    ("subset-10", 10, "1-9"),
    ("longtail-0.5", 10, "at least 1"),
    ("clean", 0, "n must be"),
    ("subset-3", 2, "n >= 3"),
    ("longtail-100", 200, "smaller n"),
])
def test_bad_requests_raise_one_line_errors(tmp_path: Path, generated_source: Path, name: str, n: int,
                                            match: str) -> None:
    with pytest.raises(ReclipError, match=match):
        ensure_target(name, n=n, root=tmp_path, source_root=generated_source)
    assert not any(tmp_path.iterdir())


def test_dev_targets_come_from_the_train_split(tmp_path: Path, generated_source: Path) -> None:
    rng = np.random.default_rng(1)
    train_labels = np.repeat(np.arange(10), 8)
    write_idx(generated_source / "train-images-idx3-ubyte", rng.integers(0, 255, size=(len(train_labels), 28, 28)))
    write_idx(generated_source / "train-labels-idx1-ubyte", train_labels)
    dev = ensure_target("train-subset-4", n=20, root=tmp_path, source_root=generated_source)
    test = ensure_target("subset-4", n=20, root=tmp_path, source_root=generated_source)
    assert manifest(dev)["split"] == "train" and manifest(test)["split"] == "test"
    assert len(set(labels(dev)[1:])) == 4 and manifest(dev)["source_indices"] != manifest(test)["source_indices"]
    dev = targets.DEV_TARGETS + targets.HARD_DEV_TARGETS
    assert set(dev).isdisjoint(targets.OFFLINE_TARGETS)
    assert all(targets.parse_target(name).split == "train" for name in dev)


def test_samples_are_disjoint_and_corruptions_stay_paired_with_their_clean_sample(tmp_path: Path,
                                                                                  source: Path) -> None:
    drawn = {s: manifest(ensure_target("clean", n=30, root=tmp_path, source_root=source, sample=s)) for s in range(3)}
    assert drawn[0] == manifest(ensure_target("clean", n=30, root=tmp_path, source_root=source))  # sample 0 as before
    sets = [set(drawn[s]["source_indices"]) for s in range(3)]
    assert all(len(x) == 30 for x in sets) and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    noisy = manifest(ensure_target("gaussian_noise-5", n=30, root=tmp_path, source_root=source, sample=1))
    assert noisy["source_indices"] == drawn[1]["source_indices"] and noisy["sample"] == 1
    # the same request gives the same sample
    again = targets.select_images(targets.parse_target("clean"), load_source_labels(source), 30, 0, 2)[1]
    assert again.tolist() == drawn[2]["source_indices"]


def test_subset_samples_draw_their_classes_again_from_what_is_left(generated_source: Path) -> None:
    labels = load_source_labels(generated_source)  # 16 images per class
    spec = targets.parse_target("subset-3")
    picked = [targets.select_images(spec, labels, 30, 0, s) for s in range(3)]  # 10 per class: no class twice
    classes = [set(counts) for counts, _ in picked]
    assert all(len(c) == 3 for c in classes) and not (classes[0] & classes[1] or classes[1] & classes[2]
                                                      or classes[0] & classes[2])
    with pytest.raises(ReclipError, match="fewer samples"):
        targets.select_images(spec, labels, 30, 0, 3)  # a 4th disjoint set of 3 classes cannot exist


def load_source_labels(source: Path) -> np.ndarray:
    from reclip.data.datasets import load_dataset

    return load_dataset(targets.SOURCE, root=source, split=targets.SPLIT).labels
