"""The 22 benchmarks of the ReCLIP paper, read from generated files in each one's on-disk layout.

Each builder writes a tiny copy of a benchmark in the layout its distribution (or
torchvision) uses: a few small images, for a few classes where the layout allows, but
every file that names the classes complete. Nothing is downloaded. Where torchvision
checks its files against the real archives' MD5 sums (CIFAR, STL-10, Flowers102), the
expected sums are set to those of the generated files; everything else is torchvision's
own reading code.
"""
from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torchvision.datasets as tvd
from PIL import Image

import reclip
from reclip.cli.main import main
from reclip.data.prompts import benchmark_prompts, get_templates, shipped_benchmarks

# name: (classes in the paper, templates in the authors' list, the authors' first template)
PAPER: dict[str, tuple[int, int, str]] = {
    "cifar10": (10, 18, "a photo of a {}."),
    "cifar100": (100, 18, "a photo of a {}."),
    "imagenet": (1000, 81, "a photo of a {}."),
    "caltech101": (101, 34, "a photo of a {}."),
    "dtd": (47, 8, "a photo of a {} texture."),
    "eurosat": (10, 3, "a centered satellite photo of {}."),
    "fgvc_aircraft": (100, 2, "a photo of a {}, a type of aircraft."),
    "food101": (101, 1, "a photo of {}, a type of food."),
    "flowers102": (102, 1, "a photo of a {}, a type of flower."),
    "oxford_pets": (37, 1, "a photo of a {}, a type of pet."),
    "stanford_cars": (196, 8, "a photo of a {}."),
    "sun397": (397, 2, "a photo of a {}."),
    "mnist": (10, 1, 'a photo of the number: "{}".'),
    "gtsrb": (43, 3, 'a zoomed in photo of a "{}" traffic sign.'),
    "stl10": (10, 2, "a photo of a {}."),
    "country211": (211, 5, "a photo i took in {}."),
    "pcam": (2, 1, "this is a medical image of {}"),
    "renderedsst2": (2, 1, "a {} review of a movie."),
    "birdsnap": (500, 1, "a photo of a {}, a type of bird."),
    "fer2013": (7, 6, "a photo of a {} looking face."),
    "resisc45": (45, 18, "satellite imagery of {}."),
    "aid": (30, 18, "satellite imagery of {}."),
}

Builder = Callable[[Path, pytest.MonkeyPatch], int]  # writes the layout below root, returns the image count
BUILDERS: dict[str, Builder] = {}
SIZE = 8

# Most builders write a few of the classes' folders; the loader warns that such data is partial.
pytestmark = pytest.mark.filterwarnings("ignore:.*accuracy is not comparable")


def builder(name: str) -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        return fn

    return register


def image(path: Path, k: int, size: int = SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (40 * k % 256, 90 * k % 256, 15 * k % 256)).save(path, format="PNG")


def pixels(n: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def class_folders(folder: Path, names: list[str], per_class: int = 2, ext: str = ".jpg") -> int:
    for c, name in enumerate(names):
        for i in range(per_class):
            image(folder / name / f"{i}{ext}", c * per_class + i)
    return len(names) * per_class


def shipped(name: str) -> list[str]:
    prompts = benchmark_prompts(name)
    assert prompts is not None
    return [synonyms[0] for synonyms in prompts.classnames]


def folders(name: str) -> list[str]:
    prompts = benchmark_prompts(name)
    assert prompts is not None and prompts.folders is not None
    return prompts.folders


# --- torchvision layouts -------------------------------------------------------------

def _cifar(root: Path, monkeypatch: pytest.MonkeyPatch, cls: type, folder: str, files: dict[str, str],
           label_key: str, meta_key: str, classes: int) -> int:
    base = root / folder
    base.mkdir(parents=True)
    n = 6
    for filename in files.values():
        with open(base / filename, "wb") as f:
            pickle.dump({"data": pixels(n, (3072,)), label_key: [i % classes for i in range(n)]}, f)
    with open(base / cls.meta["filename"], "wb") as f:
        pickle.dump({meta_key: [f"class{c}" for c in range(classes)]}, f)
    for role in ("train", "test"):
        listed = [[filename, md5(base / filename)] for key, filename in files.items() if key.startswith(role)]
        monkeypatch.setattr(cls, f"{role}_list", listed)
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(base / cls.meta["filename"])})
    return n


@builder("cifar10")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    files = {"test": "test_batch", **{f"train{i}": f"data_batch_{i}" for i in range(1, 6)}}
    return _cifar(root, mp, tvd.CIFAR10, "cifar-10-batches-py", files, "labels", "label_names", 10)


@builder("cifar100")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    files = {"test": "test", "train": "train"}
    return _cifar(root, mp, tvd.CIFAR100, "cifar-100-python", files, "fine_labels", "fine_label_names", 100)


@builder("stl10")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    n = 4
    for prefix in ("test", "train"):
        pixels(n, (3, 96, 96)).tofile(base / f"{prefix}_X.bin")
        (np.arange(n, dtype=np.uint8) + 1).tofile(base / f"{prefix}_y.bin")
    pixels(1, (3, 96, 96)).tofile(base / "unlabeled_X.bin")
    (base / "class_names.txt").write_text("\n".join(shipped("stl10")) + "\n")
    for role, names in (("train", ["train_X.bin", "train_y.bin", "unlabeled_X.bin"]),
                        ("test", ["test_X.bin", "test_y.bin"])):
        mp.setattr(tvd.STL10, f"{role}_list", [[f, md5(base / f)] for f in names])
    return n


@builder("flowers102")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    base = root / "flowers-102"
    ids = [1, 2, 3]
    for i in ids:
        image(base / "jpg" / f"image_{i:05d}.jpg", i)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([1, 50, 102])})
    scipy.io.savemat(base / "setid.mat", {"trnid": np.array([1]), "valid": np.array([2]), "tstid": np.array(ids)})
    files = {"image": ("102flowers.tgz", ""), "label": ("imagelabels.mat", md5(base / "imagelabels.mat")),
             "setid": ("setid.mat", md5(base / "setid.mat"))}
    mp.setattr(tvd.Flowers102, "_file_dict", files)
    return len(ids)


@builder("dtd")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    base = root / "dtd" / "dtd"
    names = shipped("dtd")  # DTD's folders carry the class names; torchvision derives the classes from the list
    lines = []
    for c, name in enumerate(names):
        image(base / "images" / name / f"{name}_0001.jpg", c)
        lines.append(f"{name}/{name}_0001.jpg")
    (base / "labels").mkdir(parents=True)
    (base / "labels" / "test1.txt").write_text("\n".join(lines) + "\n")
    return len(names)


@builder("eurosat")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    names = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
             "PermanentCrop", "Residential", "River", "SeaLake"]
    return class_folders(root / "eurosat" / "2750", names, per_class=1)


@builder("gtsrb")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    base = root / "gtsrb"
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, label in enumerate([0, 14, 42]):
        image(base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm", i)
        rows.append(f"{i:05d}.ppm;8;8;0;0;8;8;{label}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return 3


@builder("food101")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    base = root / "food-101"
    names = [n.replace(" ", "_") for n in shipped("food101")]
    test = {name: [] for name in names}
    for c, name in enumerate(names[:3]):
        image(base / "images" / name / f"{c}.jpg", c)
        test[name].append(f"{name}/{c}")
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "test.json").write_text(json.dumps(test))
    (base / "meta" / "classes.txt").write_text("\n".join(names) + "\n")
    return 3


@builder("oxford_pets")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    base = root / "oxford-iiit-pet"
    lines = []
    for c, name in enumerate(shipped("oxford_pets")):  # torchvision derives the classes from the list
        image_id = f"{name.replace(' ', '_')}_1"
        image(base / "images" / f"{image_id}.jpg", c)
        lines.append(f"{image_id} {c + 1} 1 1")
    (base / "annotations").mkdir(parents=True)
    (base / "annotations" / "test.txt").write_text("\n".join(lines) + "\n")
    return len(lines)


@builder("fgvc_aircraft")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = shipped("fgvc_aircraft")
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    lines = []
    for i, variant in enumerate([variants[0], variants[73], variants[99]]):
        image(data / "images" / f"{1000 + i}.jpg", i)
        lines.append(f"{1000 + i} {variant}")
    (data / "images_variant_test.txt").write_text("\n".join(lines) + "\n")
    return 3


@builder("stanford_cars")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat",
                     {"class_names": np.array(shipped("stanford_cars"), dtype=object)})
    fnames = ["00001.jpg", "00002.jpg", "00003.jpg"]
    for i, fname in enumerate(fnames):
        image(base / "cars_test" / fname, i)
    annotations = np.array([(fname, c) for fname, c in zip(fnames, [1, 100, 196])],
                           dtype=[("fname", object), ("class", np.int64)])
    scipy.io.savemat(base / "cars_test_annos_withlabels.mat", {"annotations": annotations})
    return 3


@builder("country211")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    # ImageFolder wants an image in every class folder; the real folders are ISO country codes.
    return class_folders(root / "country211" / "test", [f"C{c:03d}" for c in range(211)], per_class=1)


@builder("pcam")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    h5py = pytest.importorskip("h5py")  # PCam's optional dependency (benchmark "requires")
    base = root / "pcam"
    base.mkdir(parents=True)
    n = 4
    with h5py.File(base / "camelyonpatch_level_2_split_test_x.h5", "w") as f:
        f["x"] = pixels(n, (96, 96, 3))
    with h5py.File(base / "camelyonpatch_level_2_split_test_y.h5", "w") as f:
        f["y"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
    return n


@builder("renderedsst2")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    return class_folders(root / "rendered-sst2" / "test", ["negative", "positive"], ext=".png")


@builder("sun397")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    base = root / "SUN397"
    classes = [f"/{n[0]}/{n.replace(' ', '_')}" for n in shipped("sun397")]
    classes[8] = "/a/apartment_building/outdoor"  # the real name of 'apartment building outdoor'
    base.mkdir(parents=True)
    (base / "ClassName.txt").write_text("\n".join(classes) + "\n")
    for i, path in enumerate([classes[0], classes[8], classes[8], classes[396]]):
        image(base / path.lstrip("/") / f"sun_{i}.jpg", i)
    listed = [f"{classes[0]}/sun_0.jpg", f"{classes[8]}/sun_2.jpg", f"{classes[396]}/sun_3.jpg"]
    (base / "Testing_01.txt").write_text("\n".join(listed) + "\n")  # the official partition 1
    return len(listed)


@builder("mnist")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    n = 5
    root.mkdir(parents=True)
    images = pixels(n, (28, 28))
    (root / "t10k-images-idx3-ubyte").write_bytes(
        np.array([0x803, n, 28, 28], dtype=">u4").tobytes() + images.tobytes())
    (root / "t10k-labels-idx1-ubyte").write_bytes(
        np.array([0x801, n], dtype=">u4").tobytes() + np.arange(n, dtype=np.uint8).tobytes())
    return n


# --- class folders, lists and archives of the distributions --------------------------------

@builder("imagenet")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    # Every class folder must be there: the labels are the sorted WordNet ids.
    return class_folders(root / "val", [f"n{c:08d}" for c in range(1000)], per_class=1)


@builder("caltech101")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    base = root / "caltech101" / "101_ObjectCategories"
    image(base / "BACKGROUND_Google" / "image_0001.jpg", 0)  # in the archive, not a class
    return class_folders(base, [folders("caltech101")[i] for i in (0, 1, 100)])


@builder("fer2013")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    return class_folders(root / "test", ["happy", "neutral", "angry"])


@builder("resisc45")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    return class_folders(root / "NWPU-RESISC45", ["airplane", "sea_ice", "wetland"])


@builder("aid")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    return class_folders(root / "AID", ["Airport", "BareLand", "Viaduct"])


@builder("birdsnap")
def _(root: Path, mp: pytest.MonkeyPatch) -> int:
    # species.txt spells names with apostrophes and hyphens; its dir column is lower case.
    species = ["id\tcommon\tscientific\tdir"]
    for i, name in enumerate(shipped("birdsnap"), start=1):
        common = {"Allens Hummingbird": "Allen's Hummingbird", "Black and white Warbler": "Black-and-white Warbler"}
        species.append(f"{i}\t{common.get(name, name)}\tGenus species{i}\t{name.replace(' ', '_').lower()}")
    root.mkdir(parents=True)
    (root / "species.txt").write_text("\n".join(species) + "\n")
    listed = ["Allens_Hummingbird/1.jpg", "Black_and_white_Warbler/2.jpg", "Zone_tailed_Hawk/3.jpg",
              "Zone_tailed_Hawk/4.jpg"]  # the last one's URL is dead: not downloaded
    (root / "test_images.txt").write_text("path\n" + "\n".join(listed) + "\n")
    for i, path in enumerate(listed[:3]):
        image(root / "download" / "images" / path, i)
    return 3


# --- tests ---------------------------------------------------------------------------------

def test_every_paper_benchmark_ships_its_lists():
    assert shipped_benchmarks() == sorted(PAPER)
    assert sorted(BUILDERS) == sorted(PAPER)
    for name, (classes, templates, first) in PAPER.items():
        prompts = benchmark_prompts(name)
        assert prompts is not None and "ReCLIP_WACV" in prompts.source and "Apache-2.0" in prompts.source
        assert (len(prompts.classnames), len(prompts.templates), prompts.templates[0]) == (classes, templates, first)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_benchmark_reads_its_layout(name, tmp_path, monkeypatch):
    root = tmp_path / name
    count = BUILDERS[name](root, monkeypatch)
    dataset = reclip.load_dataset(name, root=root, download=False)
    classes, templates, first = PAPER[name]
    assert len(dataset.classnames) == classes
    assert dataset.templates == get_templates(name) and len(dataset.templates) == templates
    assert dataset.templates[0] == first
    assert len(dataset) == count and ((dataset.labels >= 0) & (dataset.labels < classes)).all()
    picture, index, label = dataset[len(dataset) - 1]
    assert picture.mode == "RGB" and index == len(dataset) - 1 and label == dataset.labels[-1]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fer2013", {"angry": 2, "happy|smiling": 2, "neutral|bored": 2}),
        ("caltech101", {"human face": 2, "ID photo": 2, "yin and yang symbol": 2}),
        ("aid", {"Airport": 2, "Bare Land": 2, "Viaduct": 2}),
        ("birdsnap", {"Allens Hummingbird": 1, "Black and white Warbler": 1, "Zone tailed Hawk": 1}),
    ],
)
def test_labels_follow_the_shipped_class_names(name, expected, tmp_path, monkeypatch):
    """Labels index the full class list, whichever class folders are present."""
    BUILDERS[name](tmp_path / name, monkeypatch)
    dataset = reclip.load_dataset(name, root=tmp_path / name, download=False)
    found = {"|".join(dataset.classnames[label]): int(n) for label, n in zip(*np.unique(dataset.labels, return_counts=True))}
    assert found == expected


def test_missing_class_folders_are_reported(tmp_path, monkeypatch):
    BUILDERS["resisc45"](tmp_path / "r", monkeypatch)
    with pytest.warns(UserWarning, match="images for 3 of its 45 classes"):
        reclip.load_dataset("resisc45", root=tmp_path / "r", download=False)


def test_sun397_partition_and_its_absence(tmp_path, monkeypatch):
    BUILDERS["sun397"](tmp_path, monkeypatch)
    partition = reclip.load_dataset("sun397", root=tmp_path, download=False)
    assert partition.labels.tolist() == [0, 8, 396]
    assert partition.classnames[8] == ["apartment building outdoor"]
    (tmp_path / "SUN397" / "Testing_01.txt").unlink()
    with pytest.warns(UserWarning, match="using all 4 images"):
        everything = reclip.load_dataset("sun397", root=tmp_path, download=False)
    assert sorted(everything.labels.tolist()) == [0, 8, 8, 396]
    with pytest.raises(reclip.ReclipError, match="Training_01.txt"):
        reclip.load_dataset("sun397", root=tmp_path, split="train", download=False)


def test_fer2013_csv_gives_the_authors_public_test_rows(tmp_path):
    rows = [(3, "Training"), (0, "PublicTest"), (3, "PublicTest"), (6, "PublicTest"), (1, "PrivateTest")]
    grey = " ".join(["7"] * 48 * 48)
    (tmp_path / "fer2013.csv").write_text(
        "emotion,pixels,Usage\n" + "".join(f'{label},"{grey}",{usage}\n' for label, usage in rows))
    dataset = reclip.load_dataset("fer2013", root=tmp_path, download=False)
    assert [dataset.classnames[label][0] for label in dataset.labels] == ["angry", "happy", "neutral"]
    assert dataset.classnames[3] == ["happy", "smiling"] and dataset[0][0].size == (48, 48)
    assert reclip.load_dataset("fer2013", root=tmp_path, split="train", download=False).labels.tolist() == [3]


def test_unknown_class_folder_is_refused(tmp_path):
    class_folders(tmp_path / "AID", ["Airport", "Spaceport"])
    with pytest.raises(reclip.ReclipError, match=r"no aid class \(Spaceport\)"):
        reclip.load_dataset("aid", root=tmp_path, download=False)


@pytest.mark.parametrize(("name", "layout"), [("birdsnap", "species.txt, test_images.txt and download/images"),
                                              ("aid", "Airport/, BareLand/")])
def test_absent_data_names_the_layout(name, layout, tmp_path):
    with pytest.raises(reclip.ReclipError, match=f"benchmark {name} .*not found.*{layout}") as error:
        reclip.load_dataset(name, root=tmp_path / "nothing", download=False)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["fer2013", "birdsnap", "aid", "mnist"])
def test_cli_zeroshot_on_generated_layout(name, tmp_path, monkeypatch):
    root = tmp_path / name
    BUILDERS[name](root, monkeypatch)
    out = tmp_path / "out"
    assert main(["zeroshot", "--model", "tiny", "--dataset", name, "--data-root", str(root), "--out", str(out)]) == 0
    assert any(out.iterdir())
