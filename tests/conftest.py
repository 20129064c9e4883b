"""Shared pytest fixtures."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture
def make_image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory that writes small solid-colour RGB images below ``tmp_path``.

    ``make_image_folder({"cat": 2, "dog": 3})`` makes ``images/cat/img0.png`` ... (one
    sub-folder per class); ``make_image_folder(4)`` makes a flat folder of 4 images;
    ``make_image_folder(0)`` an empty folder. Keyword arguments: ``name`` (folder name
    below ``tmp_path``), ``ext`` (file extension, also selects the format) and ``size``.
    Every image gets a different colour. Returns the folder.
    """
    colours = itertools.count(1)

    def make(layout: Mapping[str, int] | int, name: str = "images", ext: str = ".png", size: int = 8) -> Path:
        root = tmp_path / name
        groups = {"": layout} if isinstance(layout, int) else layout
        for class_name, count in groups.items():
            folder = root / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                k = next(colours)
                Image.new("RGB", (size, size), (37 * k % 256, 91 * k % 256, 13 * k % 256)).save(folder / f"img{i}{ext}")
        return root

    return make


@pytest.fixture(scope="session")
def domain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated target for the tiny model: 4 classes x 25 noisy copies of a prototype
    (zero-shot near chance, clear clusters; see synthetic.py)."""
    import reclip
    from synthetic import make_clustered_folder

    model = reclip.load_model("tiny", device="cpu")
    return make_clustered_folder(tmp_path_factory.mktemp("domain") / "images", model, noise=40.0, seed=0)


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A feature cache of the test's own (use with ``pytestmark = pytest.mark.usefixtures(...)``)."""
    monkeypatch.setenv("RECLIP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
