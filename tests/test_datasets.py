"""Tests for the data layer: folders, CSV lists, odd images, IDX files and benchmarks."""
from __future__ import annotations

import gzip
import pickle
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import PILToTensor

from reclip import ImageDataset, ReclipError, load_dataset
from reclip.data.benchmarks import benchmark_root, canonical_name
from reclip.data.datasets import SkippedImageWarning, collate
from reclip.data.idx import read_idx

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="Debian dataset-fashion-mnist not installed"
)


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_idx(path: Path, array: np.ndarray, type_code: int) -> Path:
    """An IDX file of ``array`` (already in the big-endian dtype of ``type_code``)."""
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


# --- class folders, flat folders and class names -----------------------------------------

def test_class_folders_give_sorted_classes_and_labels(make_image_folder):
    root = make_image_folder({"golden_retriever": 2, "cat": 3})
    (root / "cat" / "nested").mkdir()
    Image.new("L", (8, 8)).save(root / "cat" / "nested" / "deep.JPG")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"")

    ds = load_dataset(str(root), transform=PILToTensor())

    assert isinstance(ds, ImageDataset)
    assert ds.name == "images" and ds.spec == str(root) and ds.root == str(root.resolve())
    assert ds.classnames == [["cat"], ["golden retriever"]]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert ds.has_labels and len(ds) == 6 and len(ds.paths) == 6
    assert ds.templates is None
    image, index, label = ds[5]
    assert image.shape == (3, 8, 8) and index == 5 and label == 1


def test_flat_folder_with_classnames_file_is_unlabelled(make_image_folder, tmp_path):
    root = make_image_folder(3)
    names = write_lines(tmp_path / "names.txt", "# animals", "cat|kitty", "", "dog")

    ds = load_dataset(root, classnames=names)

    assert ds.classnames == [["cat", "kitty"], ["dog"]]
    assert ds.labels.tolist() == [-1, -1, -1] and not ds.has_labels
    assert ds[0][0].mode == "RGB"


def test_flat_folder_without_classnames_asks_for_them(make_image_folder):
    with pytest.raises(ReclipError, match="--classnames FILE"):
        load_dataset(make_image_folder(2))


def test_classnames_are_matched_to_folders_by_name_or_synonym(make_image_folder):
    root = make_image_folder({"cat": 1, "dog": 2})
    ds = load_dataset(root, classnames=[["puppy", "dog"], "bird", "Cat"])
    assert ds.classnames == [["puppy", "dog"], ["bird"], ["Cat"]]
    assert ds.labels.tolist() == [2, 0, 0]


def test_classnames_replace_folder_names_by_position(make_image_folder):
    ds = load_dataset(make_image_folder({"c0": 1, "c1": 1}), classnames=["a cat", "a dog"])
    assert ds.classnames == [["a cat"], ["a dog"]] and ds.labels.tolist() == [0, 1]


def test_classnames_count_must_match_class_folders(make_image_folder, tmp_path):
    root = make_image_folder({"c0": 1, "c1": 1})
    names = write_lines(tmp_path / "names.txt", "x", "y", "z")
    with pytest.raises(ReclipError, match=r"names\.txt lists 3 classes but folder .* has 2 class folders"):
        load_dataset(root, classnames=names)


def test_empty_classnames_file_is_an_error(make_image_folder, tmp_path):
    names = write_lines(tmp_path / "names.txt", "# nothing here", "")
    with pytest.raises(ReclipError, match="lists no classes"):
        load_dataset(make_image_folder(1), classnames=names)


# --- CSV and TSV lists ---------------------------------------------------------------------

def test_csv_with_integer_labels_and_classnames(make_image_folder, tmp_path):
    make_image_folder(3)
    table = write_lines(
        tmp_path / "list.csv", "path,label", "images/img0.png,1", "images/img1.png,0", "images/img2.png,"
    )

    ds = load_dataset(table, classnames=["cat", "dog"])

    assert ds.labels.tolist() == [1, 0, -1]
    assert ds.paths == [str(tmp_path / "images" / f"img{i}.png") for i in range(3)]
    assert ds.name == "list" and ds[0][0].size == (8, 8)


def test_tsv_with_class_name_labels_uses_sorted_names(make_image_folder, tmp_path):
    make_image_folder(3)
    table = write_lines(tmp_path / "list.tsv", "images/img0.png\tdog", "images/img1.png\tcat", "images/img2.png\tdog")

    ds = load_dataset(table)

    assert ds.classnames == [["cat"], ["dog"]]
    assert ds.labels.tolist() == [1, 0, 1]


def test_csv_name_labels_map_onto_classnames_synonyms(make_image_folder, tmp_path):
    make_image_folder(2)
    names = write_lines(tmp_path / "names.txt", "bird", "cat|kitty", "dog")
    table = write_lines(tmp_path / "list.csv", "images/img0.png,kitty", "images/img1.png,dog")
    assert load_dataset(table, classnames=names).labels.tolist() == [1, 2]


def test_csv_label_name_missing_from_classnames_is_an_error(make_image_folder, tmp_path):
    make_image_folder(2)
    table = write_lines(tmp_path / "list.csv", "images/img0.png,cat", "images/img1.png,horse")
    with pytest.raises(ReclipError, match="does not name 'horse'"):
        load_dataset(table, classnames=["cat", "dog"])


def test_csv_integer_label_beyond_classnames_is_an_error(make_image_folder, tmp_path):
    make_image_folder(1)
    table = write_lines(tmp_path / "list.csv", "images/img0.png,5")
    with pytest.raises(ReclipError, match="uses label 5 but the classnames list lists 2 classes"):
        load_dataset(table, classnames=["cat", "dog"])


@pytest.mark.parametrize("rows", [["images/img0.png,1"], ["images/img0.png"]])
def test_csv_without_class_names_asks_for_them(make_image_folder, tmp_path, rows):
    make_image_folder(1)
    with pytest.raises(ReclipError, match="--classnames FILE"):
        load_dataset(write_lines(tmp_path / "list.csv", *rows))


def test_empty_csv_is_an_error(tmp_path):
    with pytest.raises(ReclipError, match="lists no images"):
        load_dataset(write_lines(tmp_path / "list.csv", "path,label"))


# --- odd and broken images -----------------------------------------------------------------

def _palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    if transparent:
        image.info["transparency"] = 1
    return image


ODD_IMAGES = {  # name: (image, file extension, expected RGB pixel)
    "grey": (Image.new("L", (4, 4), 100), ".png", (100, 100, 100)),
    "bilevel": (Image.new("1", (4, 4), 1), ".bmp", (255, 255, 255)),
    "palette": (_palette_image(transparent=False), ".png", (10, 20, 30)),
    "palette-transparent": (_palette_image(transparent=True), ".gif", (255, 255, 255)),
    "rgba-transparent": (Image.new("RGBA", (4, 4), (255, 0, 0, 0)), ".png", (255, 255, 255)),
    "rgba-opaque": (Image.new("RGBA", (4, 4), (255, 0, 0, 255)), ".tif", (255, 0, 0)),
    "la-transparent": (Image.new("LA", (4, 4), (0, 0)), ".png", (255, 255, 255)),
    "cmyk": (Image.new("CMYK", (4, 4), (0, 0, 0, 0)), ".tiff", (255, 255, 255)),
    "16-bit": (Image.fromarray(np.full((4, 4), 100 * 257, dtype=np.uint16)), ".png", (100, 100, 100)),
    "32-bit": (Image.fromarray(np.full((4, 4), 100 * 257, dtype=np.int32)), ".tif", (100, 100, 100)),
    "float": (Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)), ".tif", (128, 128, 128)),
    "greyscale-ppm": (Image.new("L", (4, 4), 7), ".pgm", (7, 7, 7)),
}


@pytest.mark.parametrize("kind", sorted(ODD_IMAGES))
def test_odd_image_modes_become_rgb(tmp_path, kind):
    image, ext, expected = ODD_IMAGES[kind]
    (tmp_path / "odd").mkdir()
    image.save(tmp_path / "odd" / f"image{ext}")

    loaded = load_dataset(tmp_path / "odd", classnames=["thing"])[0][0]

    assert loaded.mode == "RGB" and loaded.size == (4, 4)
    assert loaded.getpixel((0, 0)) == expected


def _folder_with_broken_images(make_image_folder) -> Path:
    root = make_image_folder({"a": 2, "b": 2})
    (root / "a" / "garbage.png").write_bytes(b"definitely not a png")
    good = (root / "b" / "img0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    return root


def test_unreadable_images_are_skipped_with_one_warning_each(make_image_folder):
    ds = load_dataset(_folder_with_broken_images(make_image_folder), transform=PILToTensor())
    broken = [i for i, p in enumerate(ds.paths) if Path(p).stem in ("garbage", "truncated")]

    with pytest.warns(SkippedImageWarning) as caught:
        batches = list(DataLoader(ds, batch_size=4, collate_fn=collate))
        ds[broken[0]]  # a second read of a bad file does not warn again

    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert "garbage.png" in messages[0] and "truncated.png" in messages[1]
    skipped = [i for *_, s in batches for i in s]
    assert skipped == broken
    assert sum(len(images) for images, *_ in batches) == len(ds) - 2
    images, indices, labels, _ = batches[0]
    assert images.shape[1:] == (3, 8, 8) and indices.dtype == labels.dtype == torch.long


def test_strict_mode_raises_on_unreadable_image(make_image_folder):
    ds = load_dataset(_folder_with_broken_images(make_image_folder), strict=True)
    broken = next(i for i, p in enumerate(ds.paths) if "garbage" in p)
    with pytest.raises(ReclipError, match=r"garbage\.png"):
        ds[broken]


def test_collate_reports_a_batch_of_only_broken_images():
    images, indices, labels, skipped = collate([(None, 3, 1), (None, 4, -1)])
    assert images.shape == (0, 0, 0, 0) and indices.numel() == labels.numel() == 0
    assert skipped == [3, 4]


def test_dataset_and_collate_pickle_for_dataloader_workers(make_image_folder):
    ds = load_dataset(make_image_folder({"a": 1}), transform=PILToTensor())
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[0][0], ds[0][0])
    assert pickle.loads(pickle.dumps(collate)) is collate


# --- fingerprints --------------------------------------------------------------------------

def test_fingerprint_is_stable_and_follows_the_files(make_image_folder):
    root = make_image_folder({"a": 2})
    first = load_dataset(root).fingerprint()
    assert load_dataset(root).fingerprint() == first
    assert load_dataset(root, split="train").fingerprint() != first
    Image.new("RGB", (16, 16)).save(root / "a" / "img0.png")
    assert load_dataset(root).fingerprint() != first


# --- user errors -----------------------------------------------------------------------------

def test_missing_path_is_an_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ReclipError, match=r"dataset path .*nowhere does not exist; pass a folder of images"):
        load_dataset(str(missing))


def test_unknown_benchmark_name_lists_valid_names():
    with pytest.raises(ReclipError, match=r"unknown dataset 'cifar11'.*cifar10.*fashion_mnist"):
        load_dataset("cifar11")


def test_empty_folder_is_an_error(make_image_folder):
    with pytest.raises(ReclipError, match="contains no images"):
        load_dataset(make_image_folder(0))


def test_file_that_is_not_a_list_is_an_error(tmp_path):
    with pytest.raises(ReclipError, match=r"not a \.csv/\.tsv list"):
        load_dataset(write_lines(tmp_path / "list.txt", "a.png"))


def test_error_messages_are_one_line(tmp_path):
    with pytest.raises(ReclipError) as error:
        load_dataset("cifar10", root=tmp_path, download=False)
    assert "\n" not in str(error.value)


# --- IDX files and MNIST-style benchmarks ------------------------------------------------------

@pytest.mark.parametrize("name", ["raw-idx1-ubyte", "packed-idx3-ubyte.gz"])
def test_read_idx_plain_and_gzipped(tmp_path, name):
    array = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    values = read_idx(write_idx(tmp_path / name, array, 0x0C))
    assert values.shape == (2, 3, 4) and values.dtype == np.int32 and values.tolist() == array.tolist()


def test_read_idx_rejects_bad_and_truncated_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01")
    with pytest.raises(ReclipError, match="bad magic number"):
        read_idx(tmp_path / "bad")
    good = write_idx(tmp_path / "good", np.zeros((10, 2, 2), dtype=np.uint8), 0x08).read_bytes()
    (tmp_path / "short").write_bytes(good[:-5])
    with pytest.raises(ReclipError, match="truncated"):
        read_idx(tmp_path / "short")


@needs_fashion_mnist
def test_read_idx_on_debian_fashion_mnist():
    images = read_idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10


@needs_fashion_mnist
def test_fashion_mnist_from_debian_folder():
    ds = load_dataset("fashion-mnist", root=str(FASHION_MNIST))

    assert ds.name == "fashion_mnist" and len(ds) == 10000
    assert np.bincount(ds.labels).tolist() == [1000] * 10
    assert [c[0] for c in ds.classnames][:2] == ["T-shirt/top", "Trouser"]
    image, _, label = ds[0]
    assert image.mode == "RGB" and image.size == (28, 28)
    assert label == int(read_idx(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")[0])
    assert len(load_dataset("Fashion_MNIST", root=FASHION_MNIST, split="train")) == 60000


def test_mnist_from_torchvision_layout_uses_the_shipped_prompts(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte", np.full((3, 28, 28), 200, dtype=np.uint8), 0x08)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([7, 0, 7], dtype=np.uint8), 0x08)

    ds = load_dataset("MNIST", root=tmp_path)

    assert ds.labels.tolist() == [7, 0, 7] and len(ds.classnames) == 10
    assert ds.templates and all("{}" in t for t in ds.templates)
    assert ds[1][0].getpixel((0, 0)) == (200, 200, 200)


# --- benchmarks --------------------------------------------------------------------------------

def test_benchmark_names_are_normalised():
    assert canonical_name("Fashion-MNIST") == canonical_name("fashion_mnist") == "fashion_mnist"
    assert canonical_name("pets") == "oxford_pets" and canonical_name("flowers-102") == "flowers102"
    assert canonical_name("no-such-set") is None


def test_default_benchmark_root_follows_reclip_data(monkeypatch, tmp_path):
    monkeypatch.setenv("RECLIP_DATA", str(tmp_path))
    assert benchmark_root("cifar10") == tmp_path.resolve() / "cifar10"


def test_missing_benchmark_without_download_names_its_location(tmp_path):
    with pytest.raises(ReclipError, match=rf"cifar10 \(test split\) not found at {tmp_path}/cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path, download=False)


@pytest.mark.parametrize("name", ["cifar10", "fashion-mnist", "dtd"])
def test_failed_download_is_reported_quickly(tmp_path, monkeypatch, name):
    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    start = time.monotonic()
    with pytest.raises(ReclipError, match=rf"not found at {tmp_path}.*download failed"):
        load_dataset(name, root=tmp_path)
    assert time.monotonic() - start < 30


def test_benchmark_split_must_exist(tmp_path):
    with pytest.raises(ReclipError, match="has no split 'dev'; use one of: test, train"):
        load_dataset("cifar10", root=tmp_path, split="dev")


def test_folder_benchmark_uses_the_shipped_class_names(make_image_folder, tmp_path):
    emotions = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    make_image_folder({emotion: 1 for emotion in emotions}, name="fer/test")

    ds = load_dataset("fer2013", root=tmp_path / "fer")

    assert len(ds) == 7 and ds.labels.tolist() == list(range(7))
    assert ds.classnames[0] == ["angry"] and len(ds.classnames) == 7
    assert ds.templates and all("{}" in t for t in ds.templates)


def test_benchmark_with_wrong_class_count_is_an_error(make_image_folder, tmp_path):
    make_image_folder({"n01440764": 1, "n01443537": 1}, name="imagenet/val")
    with pytest.raises(ReclipError, match="has 2 classes but imagenet has 1000"):
        load_dataset("imagenet", root=tmp_path / "imagenet")


def test_classnames_count_must_match_benchmark_classes(make_image_folder, tmp_path):
    emotions = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    make_image_folder({emotion: 1 for emotion in emotions}, name="fer/test")
    with pytest.raises(ReclipError, match="lists 2 classes but benchmark fer2013 has 7 classes"):
        load_dataset("fer2013", root=tmp_path / "fer", classnames=["x", "y"])


def test_good_images_load_without_warnings(make_image_folder):
    """Loading good data emits no warnings at all."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(make_image_folder({"a": 2}))
        [ds[i] for i in range(len(ds))]


def test_torchvision_benchmark_from_local_files(make_image_folder, tmp_path):
    make_image_folder({"negative": 2, "positive": 1}, name="sst/rendered-sst2/test")

    ds = load_dataset("rendered-sst2", root=tmp_path / "sst")

    assert ds.name == "renderedsst2" and ds.classnames == [["negative"], ["positive"]]
    assert ds.labels.tolist() == [0, 0, 1] and len(ds.paths) == 3
    assert ds.templates == ["a {} review of a movie."]
    assert ds[2][0].mode == "RGB"


def test_torchvision_benchmark_gets_the_shipped_class_names(make_image_folder, tmp_path):
    make_image_folder({f"Class{i}": 1 for i in range(10)}, name="eurosat/eurosat/2750", ext=".jpg")

    ds = load_dataset("EuroSAT", root=tmp_path / "eurosat")

    assert len(ds) == 10 and ds.labels.tolist() == list(range(10))
    assert ds.classnames[0] == ["annual crop land"]
